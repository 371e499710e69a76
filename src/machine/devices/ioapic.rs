//! The IO-APIC: an Intel 82093AA-style I/O Advanced Programmable Interrupt Controller as the
//! ICH southbridges integrate it and QEMU models it (version 0x20, with the EOI register; 24
//! input pins), at [`IOAPIC_BASE`] (0xFEC00000).
//!
//! # Interface for the machine
//!
//! The model is pure: it knows nothing of the CPU or of time. It turns input-pin levels and
//! register accesses into [`InterruptMessage`]s, which the machine hands to the local APIC.
//!
//! * MMIO: [`IoApic::mmio_read`] / [`IoApic::mmio_write`] with the offset from
//!   [`IOAPIC_BASE`] (the window is [`IOAPIC_SIZE`] bytes). A write can send messages (an
//!   unmasked level-triggered entry whose line is asserted, an EOI that re-arms one).
//! * ISA lines: [`IoApic::update_isa`] with the machine's [`IrqLines`] after anything that may
//!   have changed them (as for the 8259 pair: both controllers see every ISA line and the guest
//!   masks the one it does not use). [`gsi_for_isa_irq`] is the wiring, the same the MADT
//!   declares: IRQ0 (the PIT) on pin 2 (the interrupt source override every PC firmware
//!   declares), IRQ1 and IRQ3-15 on the pin of their number. The ISA IRQ2 line is the 8259
//!   cascade and reaches no pin (as [`super::pic`] ignores it).
//! * [`IoApic::set_pic_intr`]: the master 8259's INTR output, wired to pin 0 as on ICH boards
//!   (the "virtual wire through the IO-APIC": an ExtINT entry on pin 0, which Linux's timer
//!   check may program).
//! * [`IoApic::set_irq`]: any pin by number (pins 16-23 are where PCI interrupt lines land on
//!   ICH boards; nothing drives them yet).
//! * [`IoApic::eoi`]: the local APIC's EOI broadcast for a level-triggered vector (the EOI
//!   register at [`OFFSET_EOI`] does the same).
//!
//! Levels given to `set_irq`, `update_isa` and `set_pic_intr` are electrical: high or low. The
//! entry's polarity bit says which one asserts the input: ISA lines and INTR are active high
//! ([`IrqLines`] bit set = high); PCI lines are active low, and pins 16-23 float high (pulled
//! up, [`IDLE_HIGH_PINS`]) until something drives them, so that an active-low entry there does
//! not see a permanent request.
//!
//! # What is modelled
//!
//! * Direct registers: IOREGSEL at [`OFFSET_IOREGSEL`] (8 bits; any access size: a read gives
//!   the index zero-extended, a write keeps the low 8 bits), IOWIN at [`OFFSET_IOWIN`] (32-bit
//!   accesses only), EOI at [`OFFSET_EOI`] (32-bit writes only; the low 8 bits are the vector,
//!   as the ICH datasheet says; reads give 0). Other sizes at IOWIN/EOI and every other offset
//!   in the window read 0 and ignore writes, with a warning (QEMU does the same for the sizes;
//!   it aliases the registers every 256 bytes of its window, this model does not).
//! * Indirect registers: ID ([`REG_ID`], bits 27:24 writable, 0 after reset), VER
//!   ([`REG_VER`]: version 0x20, maximum redirection entry 23, read-only), ARB ([`REG_ARB`]:
//!   reads the ID in bits 27:24 as QEMU does, read-only), and the redirection table
//!   ([`REG_REDTBL`] + 2 * pin: low half, + 1: high half). Other indices read 0 and ignore
//!   writes (logged).
//! * Redirection entries: vector, delivery mode (fixed, lowest priority, SMI, NMI, INIT,
//!   ExtINT), destination mode and destination (bits 63:56), polarity, trigger mode, mask.
//!   Delivery status (bit 12) and remote IRR (bit 14) are read-only. Delivery status always
//!   reads 0: a message is handed over at once, the APIC bus is never busy. Bits 55:17 are
//!   stored and read back (as QEMU; the datasheet calls them reserved).
//! * Edge-triggered entries send one message per assertion (inactive-to-active transition of
//!   the input) while unmasked. An edge seen while the entry is masked is lost: the 82093AA
//!   datasheet says it is neither delivered nor held pending, and QEMU ignores it likewise
//!   (`ioapic_set_irq`: "we must ignore edge requests if the input pin is masked"). Writing an
//!   entry as edge-triggered clears its remote IRR (QEMU does it, and Linux's EOI emulation for
//!   IO-APICs without an EOI register relies on it).
//! * Level-triggered entries send while the input is asserted, the entry unmasked and remote
//!   IRR clear, then set remote IRR. An EOI for the entry's vector clears remote IRR and sends
//!   again at once if the input is still asserted. A level input asserted while masked sends
//!   when unmasked. An entry write re-evaluates its entry (e.g. a switch from edge to level
//!   while the line is asserted sends).
//! * NMI, SMI, INIT and ExtINT entries are edge-triggered whatever their trigger bit says (the
//!   datasheet: NMI and INIT are "treated as edge", ExtINT "requires an edge trigger mode");
//!   the bit still reads back as written. The message's vector is the entry's (an ExtINT
//!   message's receiver takes the vector from the 8259 instead).
//! * Entries with the reserved delivery modes 011 and 110 send nothing (logged).
//!
//! # Left out
//!
//! * QEMU's throttle of a level interrupt that is EOIed and re-asserted 10000 times in a row
//!   (it delays the next delivery by 10 ms of virtual time; this model has no time).
//! * Interrupt remapping (the remappable entry format) and QEMU's 16-bit "extended
//!   destination ID" in bits 63:48: the destination is bits 63:56.
//! * The APIC serial bus of the 82093AA (arbitration, the ARB register's own arbitration ID),
//!   the pin assertion register (VER bit 15 reads 0), the ICH's boot configuration register.
//! * A second IO-APIC.

use super::apic_bus::{DeliveryMode, DestinationMode, InterruptMessage};
use super::IrqLines;

/// The IO-APIC's physical address (the default every PC firmware uses).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Size of the MMIO window decoded.
pub const IOAPIC_SIZE: u64 = 0x1000;
/// Number of input pins (and redirection entries).
pub const NUM_PINS: usize = 24;
/// The version VER reports: a PCI 2.2 compliant IO(x)APIC, which has the EOI register.
pub const VERSION: u32 = 0x20;

/// Direct register: the index of the indirect register IOWIN accesses.
pub const OFFSET_IOREGSEL: u64 = 0x00;
/// Direct register: the window onto the indirect register IOREGSEL selects.
pub const OFFSET_IOWIN: u64 = 0x10;
/// Direct register: EOI (write the vector of a level-triggered interrupt).
pub const OFFSET_EOI: u64 = 0x40;

/// Indirect register: IO-APIC ID.
pub const REG_ID: u8 = 0x00;
/// Indirect register: version and maximum redirection entry.
pub const REG_VER: u8 = 0x01;
/// Indirect register: arbitration ID.
pub const REG_ARB: u8 = 0x02;
/// Indirect register: the first redirection-table register (pin 0, low half); pin n's low
/// half is `REG_REDTBL + 2n`, its high half `REG_REDTBL + 2n + 1`.
pub const REG_REDTBL: u8 = 0x10;
/// The last redirection-table register (pin 23, high half).
pub const REG_REDTBL_LAST: u8 = REG_REDTBL + 2 * NUM_PINS as u8 - 1;

/// ID / ARB registers: the ID's position and width (bits 27:24).
pub const ID_SHIFT: u32 = 24;
pub const ID_MASK: u32 = 0xf;
/// VER register: the maximum redirection entry's position (bits 23:16).
pub const VER_MAX_ENTRY_SHIFT: u32 = 16;
/// What VER reads.
pub const VER_VALUE: u32 = VERSION | ((NUM_PINS as u32 - 1) << VER_MAX_ENTRY_SHIFT);

/// Redirection entry: interrupt vector (bits 7:0).
pub const RTE_VECTOR: u64 = 0xff;
/// Redirection entry: delivery mode (bits 10:8).
pub const RTE_DELIVERY_SHIFT: u32 = 8;
pub const RTE_DELIVERY_MASK: u64 = 7 << RTE_DELIVERY_SHIFT;
/// Delivery-mode field values (shifted into place).
pub const RTE_DM_FIXED: u64 = 0 << RTE_DELIVERY_SHIFT;
pub const RTE_DM_LOWEST: u64 = 1 << RTE_DELIVERY_SHIFT;
pub const RTE_DM_SMI: u64 = 2 << RTE_DELIVERY_SHIFT;
pub const RTE_DM_NMI: u64 = 4 << RTE_DELIVERY_SHIFT;
pub const RTE_DM_INIT: u64 = 5 << RTE_DELIVERY_SHIFT;
pub const RTE_DM_EXTINT: u64 = 7 << RTE_DELIVERY_SHIFT;
/// Redirection entry: logical destination mode (0 = physical).
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// Redirection entry: delivery status, read-only (1 = send pending; always 0 here).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// Redirection entry: input polarity active low (0 = active high).
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
/// Redirection entry: remote IRR, read-only (a level interrupt was accepted, no EOI yet).
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// Redirection entry: level-triggered (0 = edge).
pub const RTE_LEVEL: u64 = 1 << 15;
/// Redirection entry: masked.
pub const RTE_MASKED: u64 = 1 << 16;
/// Redirection entry: destination (bits 63:56).
pub const RTE_DEST_SHIFT: u32 = 56;
/// The bits a register write cannot change.
pub const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;
/// Every entry after reset: masked, everything else 0.
pub const RTE_RESET: u64 = RTE_MASKED;

/// The pin the master 8259's INTR output drives.
pub const PIC_INTR_PIN: u8 = 0;
/// The pin ISA IRQ0 (the PIT) drives: the MADT's interrupt source override IRQ0 -> GSI 2.
pub const ISA_IRQ0_PIN: u8 = 2;
/// The ISA line with no pin: IRQ2, the 8259 cascade.
pub const ISA_CASCADE_IRQ: u8 = 2;
/// Number of ISA IRQ lines.
pub const ISA_IRQS: u8 = 16;
/// Pins that read high while nothing drives them: 16-23, the PCI interrupt pins (active-low
/// open-drain lines with pull-ups).
pub const IDLE_HIGH_PINS: u32 = 0x00ff_0000;

/// The IO-APIC pin (= GSI, the IO-APIC's GSI base is 0) ISA `irq` drives, as the MADT declares
/// it: IRQ0 -> 2 (override), IRQ2 -> none (the cascade line; pin 2 is IRQ0's), others identity.
/// `None` also for `irq` >= 16.
pub fn gsi_for_isa_irq(irq: u8) -> Option<u8> {
    match irq {
        0 => Some(ISA_IRQ0_PIN),
        ISA_CASCADE_IRQ => None,
        1..ISA_IRQS => Some(irq),
        _ => None,
    }
}

/// Whether `entry` takes level-triggered semantics (remote IRR, re-delivery at EOI): its
/// trigger bit says level and its delivery mode is one the datasheet lets be level-triggered.
fn is_level(entry: u64) -> bool {
    let fixed_or_lowest = matches!(entry & RTE_DELIVERY_MASK, RTE_DM_FIXED | RTE_DM_LOWEST);
    entry & RTE_LEVEL != 0 && fixed_or_lowest
}

/// The message `entry` sends, or `None` for a reserved delivery mode (011 and 110: 110 is the
/// ICR's start-up IPI, which a redirection entry cannot send).
fn message_for(pin: usize, entry: u64) -> Option<InterruptMessage> {
    let bits = ((entry & RTE_DELIVERY_MASK) >> RTE_DELIVERY_SHIFT) as u32;
    let delivery = match DeliveryMode::from_bits(bits) {
        Some(DeliveryMode::StartUp) | None => {
            log::warn!("IO-APIC: pin {pin} has reserved delivery mode {bits:#05b}; not sent");
            return None;
        }
        Some(mode) => mode,
    };
    Some(InterruptMessage {
        vector: (entry & RTE_VECTOR) as u8,
        delivery,
        destination_mode: if entry & RTE_DEST_LOGICAL != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        },
        destination: (entry >> RTE_DEST_SHIFT) as u32,
        level_triggered: is_level(entry),
    })
}

/// The IO-APIC. See the module documentation for how the machine drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// ID register (4 bits).
    id: u8,
    /// IOREGSEL: the indirect register IOWIN accesses.
    ioregsel: u8,
    /// Redirection table.
    entries: [u64; NUM_PINS],
    /// Electrical level of each input (bit n = pin n high). Not register state: reset keeps it.
    levels: u32,
}

impl Default for IoApic {
    fn default() -> Self {
        Self::new()
    }
}

impl IoApic {
    /// Power-on state: as after [`IoApic::reset`], with every input at its idle level.
    pub fn new() -> Self {
        IoApic {
            id: 0,
            ioregsel: 0,
            entries: [RTE_RESET; NUM_PINS],
            levels: IDLE_HIGH_PINS,
        }
    }

    /// Reset: every entry masked (0x0001_0000), ID 0, IOREGSEL 0. The input levels are the
    /// devices', so they stay.
    pub fn reset(&mut self) {
        self.id = 0;
        self.ioregsel = 0;
        self.entries = [RTE_RESET; NUM_PINS];
    }

    /// The ID register's ID field.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Redirection entry `pin` as the guest reads it.
    pub fn entry(&self, pin: u8) -> u64 {
        self.entries[usize::from(pin)]
    }

    /// A read of `size` bytes at `offset` from [`IOAPIC_BASE`].
    pub fn mmio_read(&self, offset: u64, size: u8) -> u32 {
        match offset {
            OFFSET_IOREGSEL => u32::from(self.ioregsel),
            OFFSET_IOWIN if size == 4 => self.read_register(self.ioregsel),
            OFFSET_EOI if size == 4 => {
                log::debug!("IO-APIC: read of the write-only EOI register (reads 0)");
                0
            }
            _ => {
                log::warn!("IO-APIC: {size}-byte read at offset {offset:#x} not decoded (reads 0)");
                0
            }
        }
    }

    /// A write of `size` bytes at `offset` from [`IOAPIC_BASE`]; returns the messages it sent.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u32) -> Vec<InterruptMessage> {
        let mut out = Vec::new();
        match offset {
            OFFSET_IOREGSEL => self.ioregsel = value as u8,
            OFFSET_IOWIN if size == 4 => self.write_register(self.ioregsel, value, &mut out),
            OFFSET_EOI if size == 4 => self.eoi_into(value as u8, &mut out),
            _ => log::warn!(
                "IO-APIC: {size}-byte write of {value:#x} at offset {offset:#x} not decoded \
                 (ignored)"
            ),
        }
        out
    }

    /// The indirect register `index`.
    fn read_register(&self, index: u8) -> u32 {
        match index {
            REG_ID | REG_ARB => u32::from(self.id) << ID_SHIFT,
            REG_VER => VER_VALUE,
            REG_REDTBL..=REG_REDTBL_LAST => {
                let entry = self.entries[usize::from((index - REG_REDTBL) / 2)];
                if index & 1 != 0 {
                    (entry >> 32) as u32
                } else {
                    entry as u32
                }
            }
            _ => {
                log::debug!("IO-APIC: read of indirect register {index:#x} (none; reads 0)");
                0
            }
        }
    }

    fn write_register(&mut self, index: u8, value: u32, out: &mut Vec<InterruptMessage>) {
        match index {
            REG_ID => self.id = ((value >> ID_SHIFT) & ID_MASK) as u8,
            REG_VER | REG_ARB => {
                log::debug!("IO-APIC: write of {value:#x} to read-only register {index:#x}")
            }
            REG_REDTBL..=REG_REDTBL_LAST => {
                let pin = usize::from((index - REG_REDTBL) / 2);
                let old = self.entries[pin];
                let mut entry = if index & 1 != 0 {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                } else {
                    (old & !0xffff_ffff) | u64::from(value)
                };
                entry = (entry & !RTE_READ_ONLY) | (old & RTE_READ_ONLY);
                // Remote IRR means nothing for an edge entry; clearing it is how IO-APICs
                // without an EOI register get their level entries EOIed (Linux flips the
                // entry to edge and back).
                if entry & RTE_LEVEL == 0 {
                    entry &= !RTE_REMOTE_IRR;
                }
                self.entries[pin] = entry;
                self.service_level(pin, out);
            }
            _ => log::debug!("IO-APIC: write of {value:#x} to indirect register {index:#x} (none)"),
        }
    }

    /// Whether pin `pin`'s input is asserted under its entry's polarity.
    fn asserted(&self, pin: usize) -> bool {
        let high = self.levels & (1 << pin) != 0;
        high != (self.entries[pin] & RTE_ACTIVE_LOW != 0)
    }

    /// Send pin `pin`'s message if it is a level entry that should interrupt now (unmasked,
    /// input asserted, remote IRR clear), and set remote IRR.
    fn service_level(&mut self, pin: usize, out: &mut Vec<InterruptMessage>) {
        let entry = self.entries[pin];
        if !is_level(entry) || entry & (RTE_MASKED | RTE_REMOTE_IRR) != 0 || !self.asserted(pin) {
            return;
        }
        if let Some(message) = message_for(pin, entry) {
            self.entries[pin] |= RTE_REMOTE_IRR;
            out.push(message);
        }
    }

    /// Drive pin `pin` to the electrical level `high`.
    fn drive(&mut self, pin: usize, high: bool, out: &mut Vec<InterruptMessage>) {
        let was_asserted = self.asserted(pin);
        if high {
            self.levels |= 1 << pin;
        } else {
            self.levels &= !(1 << pin);
        }
        let entry = self.entries[pin];
        if is_level(entry) {
            self.service_level(pin, out);
        } else if !was_asserted && self.asserted(pin) && entry & RTE_MASKED == 0 {
            out.extend(message_for(pin, entry));
        }
    }

    /// Set input pin `pin` (0-23) to the electrical level `high`; returns the messages sent.
    /// Panics for a pin that does not exist (a wiring error in the machine).
    pub fn set_irq(&mut self, pin: u8, high: bool) -> Vec<InterruptMessage> {
        assert!(usize::from(pin) < NUM_PINS, "IO-APIC has no pin {pin}");
        let mut out = Vec::new();
        self.drive(usize::from(pin), high, &mut out);
        out
    }

    /// Apply the 16 ISA lines (bit n = IRQn high) to their pins ([`gsi_for_isa_irq`]); returns
    /// the messages sent, in IRQ order.
    pub fn update_isa(&mut self, lines: IrqLines) -> Vec<InterruptMessage> {
        let mut out = Vec::new();
        for irq in 0..ISA_IRQS {
            if let Some(pin) = gsi_for_isa_irq(irq) {
                self.drive(usize::from(pin), lines.get(irq), &mut out);
            }
        }
        out
    }

    /// The master 8259's INTR output (high = requesting), on pin 0.
    pub fn set_pic_intr(&mut self, high: bool) -> Vec<InterruptMessage> {
        self.set_irq(PIC_INTR_PIN, high)
    }

    /// An EOI for `vector` (the local APIC's broadcast after a level-triggered interrupt, or a
    /// write of the EOI register): clears remote IRR of every level entry with that vector and
    /// sends again for those whose input is still asserted and that are unmasked.
    pub fn eoi(&mut self, vector: u8) -> Vec<InterruptMessage> {
        let mut out = Vec::new();
        self.eoi_into(vector, &mut out);
        out
    }

    fn eoi_into(&mut self, vector: u8, out: &mut Vec<InterruptMessage>) {
        for pin in 0..NUM_PINS {
            let entry = self.entries[pin];
            if entry & RTE_VECTOR == u64::from(vector) && entry & RTE_LEVEL != 0 {
                self.entries[pin] &= !RTE_REMOTE_IRR;
                self.service_level(pin, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's flat logical destination for CPU 0 (apic_flat: logical mode, 1 << cpu).
    const CPU0_LOGICAL: u64 = 1 << RTE_DEST_SHIFT;

    /// io_apic_read: the index, then the data window (32-bit accesses).
    fn read_reg(io: &mut IoApic, reg: u8) -> u32 {
        assert!(io.mmio_write(OFFSET_IOREGSEL, 4, reg.into()).is_empty());
        io.mmio_read(OFFSET_IOWIN, 4)
    }

    /// io_apic_write.
    fn write_reg(io: &mut IoApic, reg: u8, value: u32) -> Vec<InterruptMessage> {
        assert!(io.mmio_write(OFFSET_IOREGSEL, 4, reg.into()).is_empty());
        io.mmio_write(OFFSET_IOWIN, 4, value)
    }

    /// __ioapic_read_entry: low half, then high half.
    fn read_entry(io: &mut IoApic, pin: u8) -> u64 {
        let low = read_reg(io, REG_REDTBL + 2 * pin);
        let high = read_reg(io, REG_REDTBL + 2 * pin + 1);
        u64::from(low) | (u64::from(high) << 32)
    }

    /// __ioapic_write_entry: the high half first, so the entry is complete when the low half
    /// (with the mask bit) lands.
    fn write_entry(io: &mut IoApic, pin: u8, entry: u64) -> Vec<InterruptMessage> {
        let mut sent = write_reg(io, REG_REDTBL + 2 * pin + 1, (entry >> 32) as u32);
        sent.extend(write_reg(io, REG_REDTBL + 2 * pin, entry as u32));
        sent
    }

    /// ioapic_mask_entry: the low half (masked) first, then the high half.
    fn mask_entry(io: &mut IoApic, pin: u8) {
        assert!(write_reg(io, REG_REDTBL + 2 * pin, RTE_MASKED as u32).is_empty());
        assert!(write_reg(io, REG_REDTBL + 2 * pin + 1, 0).is_empty());
    }

    /// io_apic_modify_irq: rewrite the low half only (mask / unmask).
    fn set_masked(io: &mut IoApic, pin: u8, masked: bool) -> Vec<InterruptMessage> {
        let low = read_reg(io, REG_REDTBL + 2 * pin) & !(RTE_MASKED as u32);
        let low = low | if masked { RTE_MASKED as u32 } else { 0 };
        write_reg(io, REG_REDTBL + 2 * pin, low)
    }

    /// io_apic_eoi: the EOI register (version 0x20 and later).
    fn eoi_register(io: &mut IoApic, vector: u8) -> Vec<InterruptMessage> {
        io.mmio_write(OFFSET_EOI, 4, vector.into())
    }

    /// What Linux does to a new IO-APIC: mp_register_ioapic (bad_ioapic_register reads ID,
    /// VER, ARB; the version and the number of entries), then clear_IO_APIC on every pin.
    fn linux_init() -> IoApic {
        let mut io = IoApic::new();
        assert_eq!(read_reg(&mut io, REG_ID), 0);
        let ver = read_reg(&mut io, REG_VER);
        assert_eq!(ver & 0xff, 0x20, "version: has the EOI register");
        assert_eq!((ver >> VER_MAX_ENTRY_SHIFT) & 0xff, 23, "24 entries");
        assert_eq!(read_reg(&mut io, REG_ARB), 0);
        for pin in 0..NUM_PINS as u8 {
            let entry = read_entry(&mut io, pin);
            assert_ne!(entry & RTE_MASKED, 0, "masked after reset");
            assert_eq!(entry & RTE_REMOTE_IRR, 0);
            mask_entry(&mut io, pin);
            assert_eq!(read_entry(&mut io, pin), RTE_MASKED);
        }
        io
    }

    fn isa(irqs: &[u8]) -> IrqLines {
        let mut l = IrqLines::default();
        for &irq in irqs {
            l.set(irq, true);
        }
        l
    }

    fn fixed(vector: u8, level: bool, logical: bool, dest: u32) -> InterruptMessage {
        InterruptMessage {
            vector,
            delivery: DeliveryMode::Fixed,
            destination_mode: if logical {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            destination: dest,
            level_triggered: level,
        }
    }

    #[test]
    fn reset_state_and_version() {
        let mut io = IoApic::new();
        assert_eq!(read_reg(&mut io, REG_VER), 0x0017_0020);
        for pin in 0..NUM_PINS as u8 {
            assert_eq!(read_entry(&mut io, pin), 0x0001_0000);
        }
        // Nothing is delivered while everything is masked.
        assert!(io.update_isa(IrqLines(0xffff)).is_empty());
        assert!(io.set_pic_intr(true).is_empty());
        assert!(io.set_irq(20, false).is_empty());
        // Reset after programming: masked again, ID 0, levels kept.
        write_reg(&mut io, REG_ID, 5 << ID_SHIFT);
        write_entry(&mut io, 4, 0x41);
        io.reset();
        assert_eq!(io.id(), 0);
        assert_eq!(io.entry(4), RTE_RESET);
        assert_eq!(io.mmio_read(OFFSET_IOREGSEL, 4), 0);
    }

    #[test]
    fn id_register_and_read_only_registers() {
        let mut io = linux_init();
        // resume_ioapic_id / io_apic_unique_id: read-modify-write of the ID field.
        let reg = read_reg(&mut io, REG_ID);
        write_reg(&mut io, REG_ID, reg | (3 << ID_SHIFT) | 0xf0ff_ffff);
        assert_eq!(read_reg(&mut io, REG_ID), 3 << ID_SHIFT, "only bits 27:24");
        assert_eq!(io.id(), 3);
        assert_eq!(read_reg(&mut io, REG_ARB), 3 << ID_SHIFT);
        write_reg(&mut io, REG_VER, 0);
        write_reg(&mut io, REG_ARB, 0);
        assert_eq!(read_reg(&mut io, REG_VER), VER_VALUE);
        assert_eq!(read_reg(&mut io, REG_ARB), 3 << ID_SHIFT);
        // Linux's print_IO_APIC reads register 3 on version 0x20: none here.
        assert_eq!(read_reg(&mut io, 3), 0);
        assert!(write_reg(&mut io, 0x40, 0xffff_ffff).is_empty());
        assert_eq!(read_reg(&mut io, 0x40), 0);
    }

    #[test]
    fn ioregsel_and_undecoded_accesses() {
        let mut io = linux_init();
        io.mmio_write(OFFSET_IOREGSEL, 1, 0x1234_5611);
        assert_eq!(io.mmio_read(OFFSET_IOREGSEL, 4), 0x11, "8-bit index");
        assert_eq!(io.mmio_read(OFFSET_IOREGSEL, 1), 0x11);
        // IOWIN only answers 32-bit accesses.
        assert_eq!(io.mmio_read(OFFSET_IOWIN, 4), 0);
        assert_eq!(io.mmio_read(OFFSET_IOWIN, 2), 0);
        io.mmio_write(OFFSET_IOREGSEL, 4, REG_VER.into());
        assert_eq!(io.mmio_read(OFFSET_IOWIN, 1), 0);
        assert_eq!(io.mmio_read(OFFSET_IOWIN, 8), 0);
        assert_eq!(io.mmio_read(OFFSET_IOWIN, 4), VER_VALUE);
        let before = io.clone();
        io.mmio_write(OFFSET_IOREGSEL, 4, REG_ID.into());
        io.mmio_write(OFFSET_IOWIN, 1, 0x0f00_0000);
        io.mmio_write(OFFSET_IOWIN + 4, 4, 0x0f00_0000);
        io.mmio_write(0x20, 4, 0x0f00_0000);
        io.mmio_write(0x110, 4, 0x0f00_0000);
        assert_eq!(io.id(), 0, "no alias of IOWIN, no byte write");
        assert_eq!(io.entries, before.entries);
        // Undecoded offsets read 0, the EOI register is write-only.
        for offset in [0x01, 0x04, 0x14, 0x20, 0x30, 0x44, 0x100, 0x110, 0xffc] {
            assert_eq!(io.mmio_read(offset, 4), 0, "offset {offset:#x}");
        }
        assert_eq!(io.mmio_read(OFFSET_EOI, 4), 0);
    }

    #[test]
    fn entry_halves_are_independent_32_bit_registers() {
        let mut io = linux_init();
        let entry = (0xab << RTE_DEST_SHIFT) | RTE_MASKED | RTE_LEVEL | RTE_DEST_LOGICAL | 0x51;
        write_entry(&mut io, 7, entry);
        assert_eq!(read_entry(&mut io, 7), entry);
        assert_eq!(read_reg(&mut io, REG_REDTBL + 15), 0xab00_0000);
        assert_eq!(read_reg(&mut io, REG_REDTBL + 14), entry as u32);
        // Writing the high half leaves the low half alone, and the reverse.
        write_reg(&mut io, REG_REDTBL + 15, 0x0300_0000);
        assert_eq!(
            read_entry(&mut io, 7),
            (entry & 0xffff_ffff) | (3 << RTE_DEST_SHIFT)
        );
        write_reg(&mut io, REG_REDTBL + 14, RTE_MASKED as u32 | 0x52);
        assert_eq!(
            read_entry(&mut io, 7),
            (3 << RTE_DEST_SHIFT) | RTE_MASKED | 0x52
        );
        // The last register is pin 23's high half; neighbours are untouched.
        write_reg(&mut io, REG_REDTBL_LAST, 0xff00_0000);
        assert_eq!(io.entry(23), (0xff << RTE_DEST_SHIFT) | RTE_MASKED);
        assert_eq!(io.entry(22), RTE_MASKED);
        assert_eq!(io.entry(6), RTE_MASKED);
        assert_eq!(io.entry(8), RTE_MASKED);
    }

    #[test]
    fn delivery_status_and_remote_irr_are_read_only() {
        let mut io = linux_init();
        let ro = (RTE_DELIVERY_STATUS | RTE_REMOTE_IRR) as u32;
        write_reg(
            &mut io,
            REG_REDTBL + 2 * 5,
            RTE_MASKED as u32 | RTE_LEVEL as u32 | ro | 0x35,
        );
        assert_eq!(io.entry(5), RTE_MASKED | RTE_LEVEL | 0x35, "cannot be set");
        // A delivered level interrupt sets remote IRR; writing 0 there does not clear it.
        write_entry(&mut io, 5, RTE_LEVEL | 0x35);
        assert_eq!(io.update_isa(isa(&[5])).len(), 1);
        assert_eq!(io.entry(5), RTE_LEVEL | RTE_REMOTE_IRR | 0x35);
        write_reg(&mut io, REG_REDTBL + 2 * 5, RTE_LEVEL as u32 | 0x35);
        assert_eq!(io.entry(5) & RTE_REMOTE_IRR, RTE_REMOTE_IRR);
        assert_eq!(io.entry(5) & RTE_DELIVERY_STATUS, 0, "never pending");
    }

    #[test]
    fn edge_irq0_through_pin2() {
        let mut io = linux_init();
        // mp_setup_entry for the timer: fixed, logical, edge, active high, unmasked.
        let entry = CPU0_LOGICAL | RTE_DEST_LOGICAL | 0x30;
        assert!(write_entry(&mut io, ISA_IRQ0_PIN, entry).is_empty());
        let msg = fixed(0x30, false, true, 1);
        assert_eq!(io.update_isa(isa(&[0])), vec![msg]);
        // Held high: no new edge. Low, then high again: one more.
        assert!(io.update_isa(isa(&[0])).is_empty());
        assert!(io.update_isa(isa(&[])).is_empty());
        assert_eq!(io.update_isa(isa(&[0])), vec![msg]);
        assert_eq!(
            io.entry(ISA_IRQ0_PIN) & RTE_REMOTE_IRR,
            0,
            "no remote IRR for edge"
        );
        // IRQ0 does not reach pin 0, and the IRQ2 line reaches nothing.
        write_entry(&mut io, 0, 0x20);
        assert!(io.update_isa(isa(&[])).is_empty());
        assert_eq!(io.update_isa(isa(&[0, 2])).len(), 1);
        assert!(io.update_isa(isa(&[2])).is_empty());
    }

    #[test]
    fn isa_irq_to_pin_mapping() {
        assert_eq!(gsi_for_isa_irq(0), Some(2));
        assert_eq!(gsi_for_isa_irq(1), Some(1));
        assert_eq!(gsi_for_isa_irq(2), None);
        for irq in 3..16 {
            assert_eq!(gsi_for_isa_irq(irq), Some(irq));
        }
        assert_eq!(gsi_for_isa_irq(16), None);
        // Every ISA line on its own pin with vector 0x30 + pin: each lands where mapped.
        let mut io = linux_init();
        for pin in 0..16 {
            write_entry(&mut io, pin, u64::from(0x30 + pin));
        }
        for irq in 0..16u8 {
            let sent = io.update_isa(isa(&[irq]));
            match gsi_for_isa_irq(irq) {
                Some(pin) => assert_eq!(sent, vec![fixed(0x30 + pin, false, false, 0)]),
                None => assert!(sent.is_empty()),
            }
            io.update_isa(isa(&[]));
        }
    }

    #[test]
    fn edge_while_masked_is_lost() {
        let mut io = linux_init();
        write_entry(&mut io, 4, RTE_MASKED | 0x34);
        assert!(io.update_isa(isa(&[4])).is_empty());
        assert!(io.update_isa(isa(&[])).is_empty());
        // Unmasking does not bring it back (82093AA and QEMU).
        assert!(set_masked(&mut io, 4, false).is_empty());
        // Masked while the line is high, unmasked, still high: no edge, nothing.
        io.update_isa(isa(&[4]));
        set_masked(&mut io, 4, true);
        io.update_isa(isa(&[]));
        io.update_isa(isa(&[4]));
        assert!(set_masked(&mut io, 4, false).is_empty());
        assert!(io.update_isa(isa(&[4])).is_empty());
        // The next edge is delivered.
        io.update_isa(isa(&[]));
        assert_eq!(io.update_isa(isa(&[4])), vec![fixed(0x34, false, false, 0)]);
    }

    #[test]
    fn level_remote_irr_and_eoi_register() {
        let mut io = linux_init();
        // The SCI: IRQ9, level, active high (the MADT's override), masked at setup as Linux
        // does for level entries, unmasked by request_irq.
        let entry = CPU0_LOGICAL | RTE_DEST_LOGICAL | RTE_LEVEL | 0x39;
        assert!(write_entry(&mut io, 9, entry | RTE_MASKED).is_empty());
        assert!(set_masked(&mut io, 9, false).is_empty());
        let msg = fixed(0x39, true, true, 1);
        assert_eq!(io.update_isa(isa(&[9])), vec![msg]);
        assert_ne!(read_entry(&mut io, 9) & RTE_REMOTE_IRR, 0);
        // Still high, remote IRR set: nothing more.
        assert!(io.update_isa(isa(&[9])).is_empty());
        // The handler did not quiet the device: the EOI re-sends at once.
        assert_eq!(eoi_register(&mut io, 0x39), vec![msg]);
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        // The device drops the line; remote IRR stays until the EOI, which sends nothing.
        assert!(io.update_isa(isa(&[])).is_empty());
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        assert!(eoi_register(&mut io, 0x39).is_empty());
        assert_eq!(read_entry(&mut io, 9), entry);
        // EOI of another vector changes nothing; the upper bits of the EOI register are
        // ignored.
        assert_eq!(io.update_isa(isa(&[9])), vec![msg]);
        assert!(eoi_register(&mut io, 0x3a).is_empty());
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        io.update_isa(isa(&[]));
        assert!(io.mmio_write(OFFSET_EOI, 4, 0x100 | 0x39).is_empty());
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        // A byte write is not an EOI.
        io.update_isa(isa(&[9]));
        assert!(io.mmio_write(OFFSET_EOI, 1, 0x39).is_empty());
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
    }

    #[test]
    fn local_apic_eoi_broadcast_clears_every_entry_with_the_vector() {
        let mut io = linux_init();
        // Two level entries sharing a vector, one edge entry with it too.
        write_entry(&mut io, 10, RTE_LEVEL | 0x50);
        write_entry(&mut io, 11, RTE_LEVEL | 0x50);
        write_entry(&mut io, 12, 0x50);
        let sent = io.update_isa(isa(&[10, 11]));
        assert_eq!(sent, vec![fixed(0x50, true, false, 0); 2]);
        io.update_isa(isa(&[11]));
        // Pin 11 is still asserted: sent again; pin 10 is clear and quiet.
        assert_eq!(io.eoi(0x50), vec![fixed(0x50, true, false, 0)]);
        assert_eq!(io.entry(10) & RTE_REMOTE_IRR, 0);
        assert_ne!(io.entry(11) & RTE_REMOTE_IRR, 0);
        assert_eq!(io.entry(12), 0x50);
    }

    #[test]
    fn level_asserted_while_masked_sends_on_unmask() {
        let mut io = linux_init();
        write_entry(&mut io, 9, RTE_MASKED | RTE_LEVEL | 0x39);
        assert!(io.update_isa(isa(&[9])).is_empty());
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        assert_eq!(
            set_masked(&mut io, 9, false),
            vec![fixed(0x39, true, false, 0)]
        );
        // Masked with remote IRR set: the EOI clears it but sends nothing until unmasked.
        set_masked(&mut io, 9, true);
        assert!(io.eoi(0x39).is_empty());
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        assert_eq!(
            set_masked(&mut io, 9, false),
            vec![fixed(0x39, true, false, 0)]
        );
        // A line that went low while masked sends nothing on unmask.
        set_masked(&mut io, 9, true);
        io.eoi(0x39);
        io.update_isa(isa(&[]));
        assert!(set_masked(&mut io, 9, false).is_empty());
    }

    #[test]
    fn switching_to_level_while_asserted_sends() {
        let mut io = linux_init();
        write_entry(&mut io, 3, 0x33);
        assert_eq!(io.update_isa(isa(&[3])).len(), 1);
        let sent = write_entry(&mut io, 3, RTE_LEVEL | 0x33);
        assert_eq!(sent, vec![fixed(0x33, true, false, 0)]);
    }

    #[test]
    fn edge_write_clears_remote_irr_for_pre_0x20_eoi_emulation() {
        let mut io = linux_init();
        write_entry(&mut io, 9, RTE_LEVEL | 0x39);
        io.update_isa(isa(&[9]));
        io.update_isa(isa(&[]));
        assert_ne!(io.entry(9) & RTE_REMOTE_IRR, 0);
        // __eoi_ioapic_pin for version < 0x20: masked + edge, then the old entry back.
        let old = read_entry(&mut io, 9);
        write_entry(&mut io, 9, (old & !RTE_LEVEL) | RTE_MASKED);
        assert_eq!(io.entry(9) & RTE_REMOTE_IRR, 0);
        assert!(write_entry(&mut io, 9, old & !RTE_REMOTE_IRR).is_empty());
        assert_eq!(io.entry(9), RTE_LEVEL | 0x39);
    }

    #[test]
    fn clear_io_apic_pin_with_remote_irr_set() {
        // clear_IO_APIC_pin (kexec or a firmware-left entry): mask, see remote IRR, make it
        // level, EOI through the register, mask the entry; remote IRR must be gone.
        let mut io = linux_init();
        write_entry(&mut io, 11, RTE_LEVEL | 0x4b);
        io.update_isa(isa(&[11]));
        let mut entry = read_entry(&mut io, 11);
        entry |= RTE_MASKED;
        write_entry(&mut io, 11, entry);
        let entry = read_entry(&mut io, 11);
        assert_ne!(entry & RTE_REMOTE_IRR, 0);
        assert_ne!(entry & RTE_LEVEL, 0);
        assert!(
            eoi_register(&mut io, (entry & RTE_VECTOR) as u8).is_empty(),
            "masked"
        );
        mask_entry(&mut io, 11);
        assert_eq!(read_entry(&mut io, 11), RTE_MASKED);
    }

    #[test]
    fn active_low_polarity() {
        let mut io = linux_init();
        // A PCI-style line on pin 16: level, active low. It idles high: nothing on unmask.
        let entry = RTE_LEVEL | RTE_ACTIVE_LOW | 0x60;
        assert!(write_entry(&mut io, 16, entry).is_empty());
        assert!(io.set_irq(16, true).is_empty());
        // Pulled low: asserted.
        let msg = fixed(0x60, true, false, 0);
        assert_eq!(io.set_irq(16, false), vec![msg]);
        io.set_irq(16, true);
        assert!(io.eoi(0x60).is_empty());
        // An active-low edge entry: the falling edge is the assertion.
        write_entry(&mut io, 17, RTE_ACTIVE_LOW | 0x61);
        assert!(io.set_irq(17, true).is_empty());
        assert_eq!(io.set_irq(17, false), vec![fixed(0x61, false, false, 0)]);
        assert!(io.set_irq(17, true).is_empty());
        // An ISA line programmed active low by mistake: idle low means asserted.
        let sent = write_entry(&mut io, 5, RTE_LEVEL | RTE_ACTIVE_LOW | 0x35);
        assert_eq!(sent, vec![fixed(0x35, true, false, 0)]);
    }

    #[test]
    fn extint_entry_on_pin0_follows_the_pic_intr() {
        let mut io = linux_init();
        // Virtual wire through the IO-APIC: pin 0 ExtINT, edge, unmasked, to APIC 0.
        assert!(write_entry(&mut io, PIC_INTR_PIN, RTE_DM_EXTINT).is_empty());
        let msg = InterruptMessage {
            vector: 0,
            delivery: DeliveryMode::ExtInt,
            destination_mode: DestinationMode::Physical,
            destination: 0,
            level_triggered: false,
        };
        assert_eq!(io.set_pic_intr(true), vec![msg]);
        assert!(io.set_pic_intr(true).is_empty());
        io.set_pic_intr(false);
        // Programmed level, ExtINT is still edge: no remote IRR, one message per edge.
        write_entry(&mut io, PIC_INTR_PIN, RTE_DM_EXTINT | RTE_LEVEL);
        assert_eq!(io.set_pic_intr(true), vec![msg]);
        assert_eq!(io.entry(PIC_INTR_PIN) & RTE_REMOTE_IRR, 0);
        // The ISA lines do not drive pin 0.
        io.set_pic_intr(false);
        assert!(io.update_isa(IrqLines(0xffff)).is_empty());
    }

    #[test]
    fn nmi_smi_init_and_lowest_priority_messages() {
        let mut io = linux_init();
        let cases = [
            (RTE_DM_NMI, DeliveryMode::Nmi),
            (RTE_DM_SMI, DeliveryMode::Smi),
            (RTE_DM_INIT, DeliveryMode::Init),
            (RTE_DM_LOWEST, DeliveryMode::LowestPriority),
        ];
        for (pin, (mode, delivery)) in (1u8..).zip(cases) {
            let dest = 0x0f << RTE_DEST_SHIFT;
            write_entry(
                &mut io,
                pin,
                dest | RTE_DEST_LOGICAL | RTE_LEVEL | mode | 0x77,
            );
            let sent = io.set_irq(pin, true);
            let level = delivery == DeliveryMode::LowestPriority;
            let msg = InterruptMessage {
                vector: 0x77,
                delivery,
                destination_mode: DestinationMode::Logical,
                destination: 0x0f,
                level_triggered: level,
            };
            assert_eq!(sent, vec![msg], "{delivery:?}");
            assert_eq!(io.entry(pin) & RTE_REMOTE_IRR != 0, level, "{delivery:?}");
        }
    }

    #[test]
    fn reserved_delivery_modes_send_nothing() {
        let mut io = linux_init();
        write_entry(&mut io, 6, 3 << RTE_DELIVERY_SHIFT | 0x36);
        write_entry(&mut io, 7, 6 << RTE_DELIVERY_SHIFT | RTE_LEVEL | 0x37);
        assert!(io.update_isa(isa(&[6, 7])).is_empty());
        assert_eq!(io.entry(7) & RTE_REMOTE_IRR, 0);
    }

    #[test]
    #[should_panic(expected = "no pin 24")]
    fn pin_out_of_range_panics() {
        IoApic::new().set_irq(24, true);
    }
}
