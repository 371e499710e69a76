//! The PC/AT pair of 8259A programmable interrupt controllers (master at ports 0x20/0x21,
//! slave at 0xA0/0xA1, slave INT wired to master IR2) and the PIIX-style edge/level control
//! registers (ELCR) at 0x4D0/0x4D1.
//!
//! # Interface for the machine
//!
//! The machine owns one [`PicPair`] and calls it directly (it is not a [`super::PortDevice`]:
//! the CPU needs [`PicPair::pending`] and [`PicPair::acknowledge`], and the PIC has no notion
//! of time):
//!
//! * port IO: [`PicPair::read`] / [`PicPair::write`] with the absolute port number, for
//!   [`MASTER_CMD`], [`MASTER_DATA`], [`SLAVE_CMD`], [`SLAVE_DATA`], [`ELCR_MASTER`],
//!   [`ELCR_SLAVE`] ([`PicPair::PORTS`] lists them). All registers are 8 bits wide; the bus
//!   splits wider accesses into byte accesses.
//! * [`PicPair::update`] with the current ISA [`IrqLines`] after anything that may have changed
//!   them (a device access, a device's `advance`). The PIC samples levels: an edge-triggered
//!   line latches its IRR bit when it is seen high after having been seen low.
//! * at an instruction boundary with IF=1: if [`PicPair::pending`] (the master's INTR output),
//!   call [`PicPair::acknowledge`] (the two INTA cycles) and deliver the returned vector.
//!
//! # Edge detection from sampled levels
//!
//! The PIC only sees the line levels it is given. A line that is asserted and deasserted
//! between two calls of `update` is not seen at all. This is sufficient in this machine
//! because devices hold their lines asserted until the guest acknowledges the condition at the
//! device (UART, RTC, i8042, ...), and the PIT's OUT0 transitions are reported as timer events
//! (its `next_event_ns`), so the machine samples between the falling and the rising edge of
//! every OUT0 pulse. Bit 2 of [`IrqLines`] is ignored: on the AT the ISA bus's IRQ2 pin is
//! routed to IRQ9, and the master's IR2 input is the slave's INT output.
//!
//! # What is modelled
//!
//! * ICW1-ICW4: vector base (8086 vectors: ICW2 bits 7-3 | IR number), single/cascade mode,
//!   ICW3 (the master treats IR2 as the cascade input when ICW3 bit 2 is set; the slave's ID
//!   is stored but not checked), ICW4 auto-EOI and special fully nested mode, ICW1 LTIM (all
//!   inputs level-triggered). ICW1 clears IMR, ISR, IRR, the lowest-priority rotation, special
//!   mask mode and the poll request, selects IRR for reads, and resets edge sensing: an input
//!   that is high during initialisation must go low and high again to raise a request.
//! * OCW1 (IMR read/write), OCW2 (non-specific EOI, specific EOI, rotate on non-specific EOI,
//!   rotate on specific EOI, set priority, rotate in auto-EOI mode set/clear), OCW3 (read
//!   IRR/ISR select, poll command, special mask mode).
//! * Priority resolution with rotation (IRQ0 highest after initialisation), in-service
//!   blocking of equal and lower priorities (except in special mask mode), special fully
//!   nested mode on the master.
//! * Edge-triggered inputs (rising edge latches IRR; the bit stays set until acknowledged even
//!   if the line falls, as in QEMU) and level-triggered inputs per ELCR or LTIM (IRR follows
//!   the line; acknowledging does not clear it).
//! * Spurious interrupts: an INTA with no request gives the master's IR7 vector without
//!   setting ISR; a cascade INTA where the slave no longer has a request gives the slave's IR7
//!   vector (IRQ15), with the master's ISR bit 2 set (Linux then EOIs the master).
//! * ELCR: 0x4D0 (IRQ0-7) and 0x4D1 (IRQ8-15), with the PIIX reserved bits (IRQ0, 1, 2, 8, 13)
//!   forced to edge.
//!
//! # Left out
//!
//! * 8080/8085 mode (ICW4 bit 0 = 0) and buffered mode (ICW4 bits 2-3): always 8086 vectors.
//! * The ICW1 ADI bit and ICW2 bits 2-0 (8080 only).
//! * Slave ID matching on the cascade bus (the slave always answers the master's IR2 INTA).
//! * Polling the master when the winner is the cascade input does not poll the slave: the
//!   poll byte reports IR2 (Linux never polls).
//! * Power-on state: the real chip is undefined until ICW1; this model starts with all lines
//!   masked (IMR = 0xFF) and vector base 0, so nothing is delivered before the guest
//!   initialises it.

use super::IrqLines;

/// Master command port (ICW1, OCW2, OCW3 writes; IRR/ISR/poll reads).
pub const MASTER_CMD: u16 = 0x20;
/// Master data port (ICW2-ICW4, OCW1 = IMR).
pub const MASTER_DATA: u16 = 0x21;
/// Slave command port.
pub const SLAVE_CMD: u16 = 0xa0;
/// Slave data port.
pub const SLAVE_DATA: u16 = 0xa1;
/// Edge/level control register for IRQ0-7.
pub const ELCR_MASTER: u16 = 0x4d0;
/// Edge/level control register for IRQ8-15.
pub const ELCR_SLAVE: u16 = 0x4d1;

/// The master input the slave's INT output is wired to.
pub const CASCADE_IRQ: u8 = 2;
/// The IR line whose vector a controller supplies on a spurious INTA.
pub const SPURIOUS_IR: u8 = 7;

/// Command port write with this bit set is ICW1.
pub const ICW1_INIT: u8 = 0x10;
/// ICW1: ICW4 will be written.
pub const ICW1_IC4: u8 = 0x01;
/// ICW1: single controller (no ICW3).
pub const ICW1_SNGL: u8 = 0x02;
/// ICW1: call address interval 4 (8080 only; ignored).
pub const ICW1_ADI: u8 = 0x04;
/// ICW1: level-triggered mode for all inputs.
pub const ICW1_LTIM: u8 = 0x08;
/// ICW2: the bits of the vector base used in 8086 mode.
pub const ICW2_VECTOR_MASK: u8 = 0xf8;
/// ICW4: 8086/8088 mode (8080 mode is not modelled).
pub const ICW4_8086: u8 = 0x01;
/// ICW4: automatic end of interrupt.
pub const ICW4_AEOI: u8 = 0x02;
/// ICW4: buffered mode master/slave select (ignored).
pub const ICW4_BUF_MS: u8 = 0x04;
/// ICW4: buffered mode (ignored).
pub const ICW4_BUF: u8 = 0x08;
/// ICW4: special fully nested mode.
pub const ICW4_SFNM: u8 = 0x10;

/// Command port write with this bit set (and [`ICW1_INIT`] clear) is OCW3, else OCW2.
pub const OCW3_SELECT: u8 = 0x08;
/// OCW3: read register: 1 = ISR, 0 = IRR (when [`OCW3_RR`] is set).
pub const OCW3_RIS: u8 = 0x01;
/// OCW3: read register command.
pub const OCW3_RR: u8 = 0x02;
/// OCW3: poll command.
pub const OCW3_POLL: u8 = 0x04;
/// OCW3: special mask mode value (when [`OCW3_ESMM`] is set).
pub const OCW3_SMM: u8 = 0x20;
/// OCW3: enable special mask mode change.
pub const OCW3_ESMM: u8 = 0x40;
/// OCW3 value Linux writes to read ISR.
pub const OCW3_READ_ISR: u8 = OCW3_SELECT | OCW3_RR | OCW3_RIS;
/// OCW3 value Linux writes to read IRR.
pub const OCW3_READ_IRR: u8 = OCW3_SELECT | OCW3_RR;

/// OCW2: the IR level field.
pub const OCW2_LEVEL_MASK: u8 = 0x07;
/// OCW2: the command field (R, SL, EOI bits) is `value >> OCW2_CMD_SHIFT`.
pub const OCW2_CMD_SHIFT: u8 = 5;
/// OCW2 command: rotate in automatic EOI mode (clear).
pub const OCW2_ROTATE_AEOI_CLEAR: u8 = 0;
/// OCW2 command: non-specific EOI.
pub const OCW2_EOI: u8 = 1;
/// OCW2 command: no operation.
pub const OCW2_NOP: u8 = 2;
/// OCW2 command: specific EOI (level in bits 2-0).
pub const OCW2_SPECIFIC_EOI: u8 = 3;
/// OCW2 command: rotate in automatic EOI mode (set).
pub const OCW2_ROTATE_AEOI_SET: u8 = 4;
/// OCW2 command: rotate on non-specific EOI.
pub const OCW2_ROTATE_EOI: u8 = 5;
/// OCW2 command: set priority (the level becomes the lowest priority).
pub const OCW2_SET_PRIORITY: u8 = 6;
/// OCW2 command: rotate on specific EOI.
pub const OCW2_ROTATE_SPECIFIC_EOI: u8 = 7;

/// Poll byte: an interrupt was pending (bits 2-0 = its level).
pub const POLL_INT: u8 = 0x80;

/// ELCR bits that can be set on the master (IRQ0, 1, 2 are always edge on PIIX).
pub const ELCR_MASTER_WRITABLE: u8 = 0xf8;
/// ELCR bits that can be set on the slave (IRQ8 and IRQ13 are always edge on PIIX).
pub const ELCR_SLAVE_WRITABLE: u8 = 0xde;

/// Where a controller is in its initialisation sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    /// Initialised: data port writes are OCW1.
    Ready,
    /// ICW1 written, ICW2 (vector base) next.
    Icw2,
    /// ICW3 (cascade configuration) next.
    Icw3,
    /// ICW4 (mode) next.
    Icw4,
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Input levels at the last sample (edge detection).
    last_level: u8,
    /// Edge/level control register (1 = level).
    elcr: u8,
    /// Which ELCR bits may be set.
    elcr_writable: u8,
    /// ICW2: vector base (bits 7-3 used).
    vector_base: u8,
    /// ICW3: on the master the IR lines with a slave; on the slave its ID.
    icw3: u8,
    init_step: InitStep,
    /// ICW1 IC4: ICW4 expected.
    icw4_expected: bool,
    /// ICW1 SNGL: no slave, no ICW3.
    single: bool,
    /// ICW1 LTIM: every input is level-triggered.
    level_all: bool,
    /// ICW4 AEOI.
    auto_eoi: bool,
    /// ICW4 SFNM.
    special_fully_nested: bool,
    /// OCW2 rotate in auto-EOI mode.
    rotate_on_auto_eoi: bool,
    /// The IR level with the highest priority (0 after initialisation).
    highest_priority: u8,
    /// OCW3: reads of the command port return ISR (else IRR).
    read_isr: bool,
    /// OCW3: the next read is a poll.
    poll: bool,
    /// OCW3: special mask mode.
    special_mask: bool,
    /// This is the master (affects special fully nested mode).
    is_master: bool,
}

impl Chip {
    fn new(is_master: bool) -> Self {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0xff,
            last_level: 0,
            elcr: 0,
            elcr_writable: if is_master {
                ELCR_MASTER_WRITABLE
            } else {
                ELCR_SLAVE_WRITABLE
            },
            vector_base: 0,
            icw3: if is_master {
                1 << CASCADE_IRQ
            } else {
                CASCADE_IRQ
            },
            init_step: InitStep::Ready,
            icw4_expected: false,
            single: false,
            level_all: false,
            auto_eoi: false,
            special_fully_nested: false,
            rotate_on_auto_eoi: false,
            highest_priority: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            is_master,
        }
    }

    /// Inputs that are level-triggered.
    fn level_mask(&self) -> u8 {
        if self.level_all {
            0xff
        } else {
            self.elcr
        }
    }

    /// Sample the input levels: latch rising edges of edge-triggered inputs, copy the levels of
    /// level-triggered ones.
    fn sample(&mut self, levels: u8) {
        let level = self.level_mask();
        let rising = levels & !self.last_level;
        self.irr = ((self.irr | rising) & !level) | (levels & level);
        self.last_level = levels;
    }

    /// The IR line of highest priority in `mask`, as (priority rank, line); rank 0 is the
    /// highest priority.
    fn highest(&self, mask: u8) -> Option<(u8, u8)> {
        (0..8u8)
            .map(|rank| (rank, (rank + self.highest_priority) & 7))
            .find(|&(_, line)| mask & (1 << line) != 0)
    }

    /// The line this controller would interrupt with now (its INT output), if any.
    fn requested(&self) -> Option<u8> {
        let (rank, line) = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            in_service &= !self.icw3;
        }
        match self.highest(in_service) {
            Some((service_rank, _)) if service_rank <= rank => None,
            _ => Some(line),
        }
    }

    /// The INTA cycles for `line`: set ISR (or auto-EOI), clear an edge request.
    fn intack(&mut self, line: u8) {
        let bit = 1 << line;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.highest_priority = (line + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
    }

    fn vector(&self, line: u8) -> u8 {
        (self.vector_base & ICW2_VECTOR_MASK) | (line & 7)
    }

    /// Whether IR `line` of this (master) controller has a slave behind it.
    fn has_slave_on(&self, line: u8) -> bool {
        !self.single && self.icw3 & (1 << line) != 0
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.ocw3(value);
        } else {
            self.ocw2(value);
        }
    }

    fn icw1(&mut self, value: u8) {
        if value & ICW1_ADI != 0 {
            log::debug!("8259: ICW1 ADI ignored (8080 mode only)");
        }
        self.irr = 0;
        self.isr = 0;
        self.imr = 0;
        self.highest_priority = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.auto_eoi = false;
        self.rotate_on_auto_eoi = false;
        self.special_fully_nested = false;
        self.icw4_expected = value & ICW1_IC4 != 0;
        self.single = value & ICW1_SNGL != 0;
        self.level_all = value & ICW1_LTIM != 0;
        self.init_step = InitStep::Icw2;
        // Edge sensing is reset: `last_level` keeps the current levels, so an input that is
        // high now must go low and high again before it raises an edge request.
    }

    fn ocw2(&mut self, value: u8) {
        let level = value & OCW2_LEVEL_MASK;
        match value >> OCW2_CMD_SHIFT {
            OCW2_ROTATE_AEOI_CLEAR => self.rotate_on_auto_eoi = false,
            OCW2_ROTATE_AEOI_SET => self.rotate_on_auto_eoi = true,
            cmd @ (OCW2_EOI | OCW2_ROTATE_EOI) => {
                if let Some((_, line)) = self.highest(self.isr) {
                    self.isr &= !(1 << line);
                    if cmd == OCW2_ROTATE_EOI {
                        self.highest_priority = (line + 1) & 7;
                    }
                }
            }
            OCW2_SPECIFIC_EOI => self.isr &= !(1 << level),
            OCW2_ROTATE_SPECIFIC_EOI => {
                self.isr &= !(1 << level);
                self.highest_priority = (level + 1) & 7;
            }
            OCW2_SET_PRIORITY => self.highest_priority = (level + 1) & 7,
            _ => {} // OCW2_NOP
        }
    }

    fn ocw3(&mut self, value: u8) {
        if value & OCW3_POLL != 0 {
            self.poll = true;
        }
        if value & OCW3_RR != 0 {
            self.read_isr = value & OCW3_RIS != 0;
        }
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init_step {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                if value & !ICW2_VECTOR_MASK != 0 {
                    log::debug!("8259: ICW2 low bits {value:#04x} ignored (8086 mode)");
                }
                self.vector_base = value & ICW2_VECTOR_MASK;
                self.init_step = if !self.single {
                    InitStep::Icw3
                } else if self.icw4_expected {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                self.init_step = if self.icw4_expected {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                if value & ICW4_8086 == 0 {
                    log::warn!("8259: ICW4 selects 8080 mode, not modelled; using 8086 vectors");
                }
                if value & (ICW4_BUF | ICW4_BUF_MS) != 0 {
                    log::debug!("8259: ICW4 buffered mode ignored");
                }
                self.auto_eoi = value & ICW4_AEOI != 0;
                self.special_fully_nested = value & ICW4_SFNM != 0;
                self.init_step = InitStep::Ready;
            }
        }
    }

    /// A read of the command port: poll byte, ISR or IRR.
    fn read_command(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        if self.read_isr {
            self.isr
        } else {
            self.irr
        }
    }

    /// A read of the data port: poll byte or IMR.
    fn read_data(&mut self) -> u8 {
        if self.poll {
            return self.poll_read();
        }
        self.imr
    }

    /// The poll command's read: acknowledge the highest request, if any.
    fn poll_read(&mut self) -> u8 {
        self.poll = false;
        match self.requested() {
            Some(line) => {
                self.intack(line);
                POLL_INT | line
            }
            None => 0,
        }
    }
}

/// The master/slave 8259A pair with its ELCRs. See the module documentation for how the
/// machine drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PicPair {
    master: Chip,
    slave: Chip,
    /// The ISA line levels last given to [`PicPair::update`].
    lines: IrqLines,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    /// Every port the pair decodes.
    pub const PORTS: [u16; 6] = [
        MASTER_CMD,
        MASTER_DATA,
        SLAVE_CMD,
        SLAVE_DATA,
        ELCR_MASTER,
        ELCR_SLAVE,
    ];

    /// Power-on state: uninitialised, all lines masked, all edge-triggered.
    pub fn new() -> Self {
        PicPair {
            master: Chip::new(true),
            slave: Chip::new(false),
            lines: IrqLines::default(),
        }
    }

    /// Sample the ISA interrupt lines (bit n = IRQn). Call after anything that may have
    /// changed them.
    pub fn update(&mut self, lines: IrqLines) {
        self.lines = lines;
        self.propagate();
    }

    /// Re-sample the inputs from the stored line levels and feed the slave's INT output into
    /// the master's IR2.
    fn propagate(&mut self) {
        let [low, high] = self.lines.0.to_le_bytes();
        self.slave.sample(high);
        let slave_int = u8::from(self.slave.requested().is_some());
        self.master
            .sample((low & !(1 << CASCADE_IRQ)) | (slave_int << CASCADE_IRQ));
    }

    /// The master's INTR output: an interrupt should be delivered if the CPU accepts one.
    pub fn pending(&self) -> bool {
        self.master.requested().is_some()
    }

    /// The INTA cycles: returns the vector, sets ISR (unless auto-EOI) and clears the IRR bit
    /// of an edge-triggered request. With no request it returns the master's IR7 vector
    /// (spurious IRQ7) without touching ISR; a cascade acknowledge the slave cannot answer
    /// returns the slave's IR7 vector (spurious IRQ15).
    pub fn acknowledge(&mut self) -> u8 {
        let vector = match self.master.requested() {
            Some(line) => {
                let vector = if self.master.has_slave_on(line) {
                    match self.slave.requested() {
                        Some(slave_line) => {
                            self.slave.intack(slave_line);
                            self.slave.vector(slave_line)
                        }
                        None => self.slave.vector(SPURIOUS_IR),
                    }
                } else {
                    self.master.vector(line)
                };
                self.master.intack(line);
                vector
            }
            None => self.master.vector(SPURIOUS_IR),
        };
        self.propagate();
        vector
    }

    /// A byte read from `port` (one of [`PicPair::PORTS`]; others read 0xFF).
    pub fn read(&mut self, port: u16) -> u8 {
        let value = match port {
            MASTER_CMD => self.master.read_command(),
            MASTER_DATA => self.master.read_data(),
            SLAVE_CMD => self.slave.read_command(),
            SLAVE_DATA => self.slave.read_data(),
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => return 0xff,
        };
        // A poll read may have acknowledged a request.
        self.propagate();
        value
    }

    /// A byte write to `port` (one of [`PicPair::PORTS`]; others are ignored).
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            MASTER_CMD => self.master.write_command(value),
            MASTER_DATA => self.master.write_data(value),
            SLAVE_CMD => self.slave.write_command(value),
            SLAVE_DATA => self.slave.write_data(value),
            ELCR_MASTER => self.master.elcr = value & self.master.elcr_writable,
            ELCR_SLAVE => self.slave.elcr = value & self.slave.elcr_writable,
            _ => return,
        }
        self.propagate();
    }

    /// IRR of both controllers (bit n = IRQn; bit 2 is the cascade input).
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.master.irr, self.slave.irr])
    }

    /// ISR of both controllers (bit n = IRQn).
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.master.isr, self.slave.isr])
    }

    /// IMR of both controllers (bit n = IRQn).
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.master.imr, self.slave.imr])
    }

    /// ELCR of both controllers (bit n = IRQn is level-triggered).
    pub fn elcr(&self) -> u16 {
        u16::from_le_bytes([self.master.elcr, self.slave.elcr])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's IRQ0 vector (ISA_IRQ_VECTOR(0)).
    const BASE: u8 = 0x30;

    fn lines(irqs: &[u8]) -> IrqLines {
        let mut l = IrqLines::default();
        for &irq in irqs {
            l.set(irq, true);
        }
        l
    }

    /// What Linux does at boot: probe_8259A, then init_8259A(0), then unmask the cascade.
    fn linux_init() -> PicPair {
        let mut pic = PicPair::new();
        // probe_8259A
        pic.write(SLAVE_DATA, 0xff);
        pic.write(MASTER_DATA, !(1 << CASCADE_IRQ));
        assert_eq!(pic.read(MASTER_DATA), 0xfb);
        // init_8259A(0)
        pic.write(MASTER_DATA, 0xff);
        pic.write(MASTER_CMD, 0x11); // ICW1: edge, cascade, ICW4
        pic.write(MASTER_DATA, BASE); // ICW2
        pic.write(MASTER_DATA, 1 << CASCADE_IRQ); // ICW3: slave on IR2
        pic.write(MASTER_DATA, 0x01); // ICW4: 8086, normal EOI
        pic.write(SLAVE_CMD, 0x11);
        pic.write(SLAVE_DATA, BASE + 8);
        pic.write(SLAVE_DATA, CASCADE_IRQ); // slave ID 2
        pic.write(SLAVE_DATA, 0x01);
        pic.write(MASTER_DATA, 0xff); // restore cached masks
        pic.write(SLAVE_DATA, 0xff);
        // request_irq(2, cascade) unmasks IRQ2
        pic.write(MASTER_DATA, 0xfb);
        pic
    }

    /// Linux's mask_and_ack_8259A followed by the unmask after the handler.
    fn linux_mask_and_ack(pic: &mut PicPair, irq: u8, masks: &mut u16) {
        *masks |= 1 << irq;
        if irq & 8 != 0 {
            pic.read(SLAVE_DATA);
            pic.write(SLAVE_DATA, (*masks >> 8) as u8);
            pic.write(SLAVE_CMD, 0x60 + (irq & 7));
            pic.write(MASTER_CMD, 0x60 + CASCADE_IRQ);
        } else {
            pic.read(MASTER_DATA);
            pic.write(MASTER_DATA, *masks as u8);
            pic.write(MASTER_CMD, 0x60 + irq);
        }
    }

    fn linux_unmask(pic: &mut PicPair, irq: u8, masks: &mut u16) {
        *masks &= !(1 << irq);
        if irq & 8 != 0 {
            pic.write(SLAVE_DATA, (*masks >> 8) as u8);
        } else {
            pic.write(MASTER_DATA, *masks as u8);
        }
    }

    /// i8259A_irq_real: is `irq` in service?
    fn linux_in_service(pic: &mut PicPair, irq: u8) -> bool {
        let (cmd, bit) = if irq < 8 {
            (MASTER_CMD, irq)
        } else {
            (SLAVE_CMD, irq - 8)
        };
        pic.write(cmd, OCW3_READ_ISR);
        let value = pic.read(cmd) & (1 << bit) != 0;
        pic.write(cmd, OCW3_READ_IRR);
        value
    }

    #[test]
    fn init_sequence_sets_vectors_and_masks() {
        let mut pic = linux_init();
        assert_eq!(pic.imr(), 0xfffb);
        assert_eq!(pic.read(MASTER_DATA), 0xfb);
        assert_eq!(pic.read(SLAVE_DATA), 0xff);
        assert!(!pic.pending());
        // Everything masked: a request latches in IRR but does not interrupt.
        pic.update(lines(&[0]));
        assert!(!pic.pending());
        assert_eq!(pic.read(MASTER_CMD), 0x01, "IRR read by default");
        pic.write(MASTER_DATA, 0xfa);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), BASE);
    }

    #[test]
    fn power_on_state_delivers_nothing() {
        let mut pic = PicPair::new();
        pic.update(IrqLines(0xffff));
        assert!(!pic.pending());
        assert_eq!(pic.imr(), 0xffff);
    }

    #[test]
    fn irq0_edge_acknowledge_eoi() {
        let mut pic = linux_init();
        let mut masks: u16 = 0xfffa;
        pic.write(MASTER_DATA, masks as u8);
        pic.update(lines(&[0]));
        assert!(pic.pending());
        assert_eq!(pic.irr() & 1, 1);
        assert_eq!(pic.acknowledge(), 0x30);
        assert_eq!(pic.isr(), 0x0001);
        assert_eq!(pic.irr() & 1, 0, "edge request cleared by INTA");
        assert!(!pic.pending());
        assert!(linux_in_service(&mut pic, 0));
        linux_mask_and_ack(&mut pic, 0, &mut masks);
        assert_eq!(pic.isr(), 0);
        linux_unmask(&mut pic, 0, &mut masks);
        // The line is still high: no new edge, no new interrupt.
        pic.update(lines(&[0]));
        assert!(!pic.pending());
        // Low then high again: a new edge.
        pic.update(lines(&[]));
        assert!(!pic.pending());
        pic.update(lines(&[0]));
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x30);
    }

    #[test]
    fn edge_request_survives_line_falling_before_ack() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0xfa);
        pic.update(lines(&[0]));
        pic.update(lines(&[]));
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x30);
    }

    #[test]
    fn masking_holds_request_until_unmasked() {
        let mut pic = linux_init();
        pic.update(lines(&[4]));
        assert!(!pic.pending());
        assert_eq!(pic.irr() & 0x10, 0x10);
        pic.update(lines(&[]));
        pic.write(MASTER_DATA, 0xeb);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn fixed_priority_and_nesting() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        pic.update(lines(&[1, 4]));
        assert_eq!(pic.acknowledge(), 0x31);
        // IRQ4 is lower priority than IRQ1 in service.
        assert!(!pic.pending());
        // IRQ0 is higher: it nests.
        pic.update(lines(&[0, 1, 4]));
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x30);
        assert_eq!(pic.isr(), 0x0003);
        // Non-specific EOI ends the highest-priority in-service level (IRQ0).
        pic.write(MASTER_CMD, 0x20);
        assert_eq!(pic.isr(), 0x0002);
        assert!(!pic.pending());
        pic.write(MASTER_CMD, 0x20);
        assert_eq!(pic.isr(), 0);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn cascade_irq8_through_irq2() {
        let mut pic = linux_init();
        let mut masks: u16 = 0xfefb;
        pic.write(SLAVE_DATA, (masks >> 8) as u8);
        pic.update(lines(&[8]));
        assert!(pic.pending());
        assert_eq!(
            pic.irr() & 0x0104,
            0x0104,
            "slave IR0 and master IR2 requested"
        );
        assert_eq!(pic.acknowledge(), 0x38);
        assert_eq!(pic.isr(), 0x0104);
        assert!(linux_in_service(&mut pic, 8));
        linux_mask_and_ack(&mut pic, 8, &mut masks);
        assert_eq!(pic.isr(), 0);
        linux_unmask(&mut pic, 8, &mut masks);
        pic.update(lines(&[]));
        assert!(!pic.pending());
        // A second slave line while the first is in service waits for the slave's EOI.
        pic.write(SLAVE_DATA, 0x00);
        pic.update(lines(&[12]));
        assert_eq!(pic.acknowledge(), 0x3c);
        pic.update(lines(&[12, 9]));
        // IRQ9 is higher priority than IRQ12 on the slave, but IR2 is in service on the master.
        assert!(!pic.pending());
        pic.write(SLAVE_CMD, 0x64);
        pic.write(MASTER_CMD, 0x62);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x39);
    }

    #[test]
    fn master_irq_outranks_slave() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        pic.write(SLAVE_DATA, 0x00);
        pic.update(lines(&[3, 8]));
        // IR2 (the slave) beats IR3.
        assert_eq!(pic.acknowledge(), 0x38);
        pic.update(lines(&[1, 3, 8]));
        assert_eq!(pic.acknowledge(), 0x31);
    }

    #[test]
    fn spurious_irq7() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        assert!(!pic.pending());
        assert_eq!(pic.acknowledge(), 0x37);
        assert_eq!(pic.isr(), 0);
        assert!(
            !linux_in_service(&mut pic, 7),
            "Linux sees IRQ7 as spurious"
        );
    }

    #[test]
    fn spurious_irq15_when_slave_request_goes_away() {
        let mut pic = linux_init();
        pic.write(SLAVE_DATA, 0x00);
        pic.update(lines(&[11]));
        assert!(pic.pending());
        // The guest masks the slave line after the slave raised INT (master IR2 latched).
        pic.write(SLAVE_DATA, 0x08);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x3f);
        assert_eq!(pic.isr(), 0x0004, "master IR2 in service, slave nothing");
        assert!(!linux_in_service(&mut pic, 15));
        // Linux EOIs the master's cascade line for a spurious IRQ15.
        pic.write(MASTER_CMD, 0x60 + CASCADE_IRQ);
        assert_eq!(pic.isr(), 0);
    }

    #[test]
    fn level_triggered_line_per_elcr() {
        let mut pic = linux_init();
        pic.write(ELCR_SLAVE, 0xff);
        assert_eq!(pic.read(ELCR_SLAVE), ELCR_SLAVE_WRITABLE);
        pic.write(ELCR_MASTER, 0xff);
        assert_eq!(pic.read(ELCR_MASTER), ELCR_MASTER_WRITABLE);
        assert_eq!(pic.elcr(), 0xdef8);
        pic.write(ELCR_MASTER, 0x20);
        pic.write(ELCR_SLAVE, 0x00);
        pic.write(MASTER_DATA, 0x00);
        pic.update(lines(&[5]));
        assert_eq!(pic.acknowledge(), 0x35);
        assert_eq!(pic.irr() & 0x20, 0x20, "level request stays in IRR");
        pic.write(MASTER_CMD, 0x65);
        // Still asserted: interrupts again after the EOI.
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x35);
        pic.write(MASTER_CMD, 0x65);
        pic.update(lines(&[]));
        assert!(!pic.pending());
        assert_eq!(pic.irr(), 0);
    }

    #[test]
    fn level_request_withdrawn_before_ack_is_spurious() {
        let mut pic = linux_init();
        pic.write(ELCR_MASTER, 0x20);
        pic.write(MASTER_DATA, 0x00);
        pic.update(lines(&[5]));
        assert!(pic.pending());
        pic.update(lines(&[]));
        assert!(!pic.pending());
        assert_eq!(pic.acknowledge(), 0x37);
    }

    #[test]
    fn ltim_makes_every_input_level_triggered() {
        let mut pic = PicPair::new();
        pic.write(MASTER_CMD, 0x11 | ICW1_LTIM);
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x01);
        pic.update(lines(&[0]));
        assert_eq!(pic.acknowledge(), 0x08);
        assert_eq!(pic.irr() & 1, 1);
    }

    #[test]
    fn auto_eoi() {
        let mut pic = PicPair::new();
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, BASE);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, ICW4_8086 | ICW4_AEOI);
        pic.write(MASTER_DATA, 0x00);
        pic.update(lines(&[3]));
        assert_eq!(pic.acknowledge(), 0x33);
        assert_eq!(pic.isr(), 0);
        pic.update(lines(&[3, 4]));
        assert_eq!(pic.acknowledge(), 0x34);
    }

    #[test]
    fn single_mode_skips_icw3_and_ir2_is_a_plain_line() {
        let mut pic = PicPair::new();
        pic.write(MASTER_CMD, ICW1_INIT | ICW1_SNGL | ICW1_IC4);
        pic.write(MASTER_DATA, 0x50);
        pic.write(MASTER_DATA, 0x01); // ICW4 (no ICW3 in single mode)
        pic.write(MASTER_DATA, 0x00); // OCW1
        assert_eq!(pic.imr() & 0xff, 0);
        // A slave request reaches IR2, but without cascade the master supplies its own vector.
        pic.write(SLAVE_CMD, 0x11);
        pic.write(SLAVE_DATA, 0x70);
        pic.write(SLAVE_DATA, 0x02);
        pic.write(SLAVE_DATA, 0x01);
        pic.update(lines(&[10]));
        assert_eq!(pic.acknowledge(), 0x52, "no cascade in single mode");
    }

    #[test]
    fn icw1_resets_edge_sense() {
        let mut pic = linux_init();
        pic.update(lines(&[1]));
        // Re-initialise while IRQ1 is held high.
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, BASE);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, 0x01);
        assert_eq!(pic.imr() & 0xff, 0, "ICW1 clears IMR");
        assert_eq!(pic.irr(), 0);
        pic.update(lines(&[1]));
        assert!(!pic.pending(), "needs a new low-to-high transition");
        pic.update(lines(&[]));
        pic.update(lines(&[1]));
        assert_eq!(pic.acknowledge(), 0x31);
    }

    #[test]
    fn isa_irq2_line_is_ignored() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        pic.write(SLAVE_DATA, 0x00);
        pic.update(lines(&[2]));
        assert!(!pic.pending());
    }

    #[test]
    fn poll_mode() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        pic.write(MASTER_CMD, OCW3_SELECT | OCW3_POLL);
        assert_eq!(pic.read(MASTER_CMD), 0, "nothing pending");
        pic.update(lines(&[6]));
        pic.write(MASTER_CMD, OCW3_SELECT | OCW3_POLL);
        assert_eq!(pic.read(MASTER_CMD), POLL_INT | 6);
        assert_eq!(pic.isr(), 0x40);
        // The poll is one-shot: the next read is IRR again.
        assert_eq!(pic.read(MASTER_CMD), 0);
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_through() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        pic.update(lines(&[3]));
        assert_eq!(pic.acknowledge(), 0x33);
        pic.update(lines(&[3, 5]));
        assert!(!pic.pending());
        // Mask IRQ3 (in service) and enter special mask mode.
        pic.write(MASTER_DATA, 0x08);
        pic.write(MASTER_CMD, OCW3_SELECT | OCW3_ESMM | OCW3_SMM);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x35);
        pic.write(MASTER_CMD, OCW3_SELECT | OCW3_ESMM);
        assert_eq!(pic.isr(), 0x28);
    }

    #[test]
    fn rotation() {
        let mut pic = linux_init();
        pic.write(MASTER_DATA, 0x00);
        // Set priority: IRQ4 lowest, so IRQ5 highest.
        pic.write(MASTER_CMD, 0xc4);
        pic.update(lines(&[1, 6]));
        assert_eq!(pic.acknowledge(), 0x36);
        // Rotate on non-specific EOI: IRQ6 becomes lowest, IRQ7 highest.
        pic.write(MASTER_CMD, 0xa0);
        assert_eq!(pic.isr(), 0);
        assert_eq!(pic.acknowledge(), 0x31);
        // Rotate on specific EOI of IRQ1: IRQ2 highest.
        pic.write(MASTER_CMD, 0xe1);
        pic.update(lines(&[0, 3]));
        assert_eq!(pic.acknowledge(), 0x33);
    }

    #[test]
    fn rotate_in_auto_eoi() {
        let mut pic = PicPair::new();
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, BASE);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, ICW4_8086 | ICW4_AEOI);
        pic.write(MASTER_DATA, 0x00);
        pic.write(MASTER_CMD, 0x80); // rotate in AEOI set
        pic.update(lines(&[0, 1]));
        assert_eq!(pic.acknowledge(), 0x30);
        pic.update(lines(&[1]));
        pic.update(lines(&[0, 1]));
        // IRQ0 is now lowest: IRQ1 first even though IRQ0 is requested again.
        assert_eq!(pic.acknowledge(), 0x31);
        assert_eq!(pic.acknowledge(), 0x30);
    }

    #[test]
    fn special_fully_nested_master_accepts_second_slave_irq() {
        let mut pic = PicPair::new();
        pic.write(MASTER_CMD, 0x11);
        pic.write(MASTER_DATA, BASE);
        pic.write(MASTER_DATA, 0x04);
        pic.write(MASTER_DATA, ICW4_8086 | ICW4_SFNM);
        pic.write(MASTER_DATA, 0x00);
        pic.write(SLAVE_CMD, 0x11);
        pic.write(SLAVE_DATA, BASE + 8);
        pic.write(SLAVE_DATA, 0x02);
        pic.write(SLAVE_DATA, 0x01);
        pic.write(SLAVE_DATA, 0x00);
        pic.update(lines(&[12]));
        assert_eq!(pic.acknowledge(), 0x3c);
        // A higher-priority slave request while IR2 is in service on the master.
        pic.update(lines(&[12, 9]));
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x39);
    }

    #[test]
    fn unknown_ports() {
        let mut pic = linux_init();
        let before = pic.clone();
        pic.write(0x22, 0x55);
        assert_eq!(pic.read(0x22), 0xff);
        assert_eq!(pic, before);
    }
}
