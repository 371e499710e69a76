//! The PC's interrupt wiring: the 8259 pair, the IO-APIC and the CPU's local APIC, and the
//! paths between them.
//!
//! * The 16 ISA lines go to the 8259 pair and to IO-APIC pins (IRQ0 on pin 2); the 8259's
//!   INTR output goes to the local APIC's LINT0 and to IO-APIC pin 0.
//! * IO-APIC messages go to the local APIC when it is addressed; the local APIC's EOI of a
//!   level-triggered vector goes back to the IO-APIC (remote IRR).
//! * The CPU takes what the local APIC presents: a fixed vector, or an ExtINT whose vector the
//!   8259 gives (virtual-wire mode, and `nolapic` kernels); a hardware-disabled local APIC
//!   passes the 8259's INTR straight through.
//!
//! IA32_APIC_BASE is CPU state (the engine validates its writes, a trace's CPU image holds
//! it); the local APIC model follows it through [`Interrupts::sync_apic_base`] before it is
//! used. Nothing here runs on replay: what the guest reads from these chips and the vectors
//! the CPU takes are trace events.

use super::devices::apic_bus::InterruptMessage;
use super::devices::ioapic::{IoApic, IOAPIC_BASE, IOAPIC_SIZE};
use super::devices::lapic::regs::{APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_SVR, MMIO_SIZE};
use super::devices::lapic::{ApicOutput, LocalApic, LocalApicConfig, PendingInterrupt};
use super::devices::pic::PicPair;
use super::devices::IrqLines;
use krr_runtime::arch::msr;

/// The interrupt controllers of a one-CPU PC.
pub struct Interrupts {
    pub pic: PicPair,
    pub ioapic: IoApic,
    pub lapic: LocalApic,
    /// The IA32_APIC_BASE value the local APIC model last took.
    apic_base: u64,
}

/// LVT delivery mode ExtINT, unmasked (virtual wire through LINT0).
const LVT_EXTINT: u32 = 0x700;
/// LVT delivery mode NMI, unmasked.
const LVT_NMI: u32 = 0x400;
/// SVR: software-enabled, spurious vector 0xff.
const SVR_ENABLED: u32 = 0x1ff;

impl Interrupts {
    /// The controllers as firmware leaves them before the OS runs: the 8259s and the IO-APIC
    /// at reset (every entry masked), the local APIC in virtual-wire mode (software-enabled,
    /// LINT0 ExtINT, LINT1 NMI), so the 8259's interrupts reach the CPU before, and without,
    /// the kernel's own APIC set-up, as the MP specification's BIOS leaves it.
    pub fn new(config: LocalApicConfig, apic_base: u64) -> Interrupts {
        let mut lapic = LocalApic::new(config);
        for (offset, value) in [
            (APIC_SVR, SVR_ENABLED),
            (APIC_LVT_LINT0, LVT_EXTINT),
            (APIC_LVT_LINT1, LVT_NMI),
        ] {
            lapic.mmio_write(offset, value, 0);
        }
        let mut i = Interrupts {
            pic: PicPair::new(),
            ioapic: IoApic::new(),
            apic_base: lapic.apic_base(),
            lapic,
        };
        i.sync_apic_base(apic_base);
        i
    }

    /// Follow the CPU's IA32_APIC_BASE (moved page, enable and disable, x2APIC mode).
    pub fn sync_apic_base(&mut self, apic_base: u64) {
        if apic_base == self.apic_base {
            return;
        }
        if let Err(e) = self.lapic.set_apic_base(apic_base) {
            // The engine checked the write with the same rules; a mismatch is a model bug.
            log::warn!("local APIC refused IA32_APIC_BASE {apic_base:#x} the CPU took: {e:?}");
        }
        self.apic_base = apic_base;
        self.route_pic_output();
    }

    /// The ISA lines changed (or may have): sample them into the 8259s and the IO-APIC.
    pub fn update(&mut self, lines: IrqLines) {
        self.pic.update(lines);
        let msgs = self.ioapic.update_isa(lines);
        self.deliver(msgs);
        self.route_pic_output();
    }

    /// The 8259's INTR output to LINT0 and IO-APIC pin 0 (after any 8259 state change).
    pub fn route_pic_output(&mut self) {
        let intr = self.pic.pending();
        self.lapic.set_lint0(intr);
        let msgs = self.ioapic.set_pic_intr(intr);
        self.deliver(msgs);
    }

    /// Messages to the one local APIC, when addressed to it.
    fn deliver(&mut self, msgs: Vec<InterruptMessage>) {
        for m in msgs {
            if self
                .lapic
                .matches_destination(m.destination_mode, m.destination)
            {
                self.lapic.accept(&m);
            } else {
                log::debug!("interrupt message {m:?} addresses no CPU");
            }
        }
        self.take_lapic_outputs();
    }

    /// EOI broadcasts to the IO-APIC; IPIs to other CPUs (there are none: the sender took
    /// its own share already).
    fn take_lapic_outputs(&mut self) {
        for out in self.lapic.take_outputs() {
            match out {
                ApicOutput::EoiBroadcast(vector) => {
                    let msgs = self.ioapic.eoi(vector);
                    self.deliver(msgs);
                }
                ApicOutput::Ipi(ipi) => {
                    log::debug!("IPI {ipi:?}: no other CPU");
                }
            }
        }
    }

    /// An NMI waits for the CPU (an NMI message or self-IPI the guest sent, an IO-APIC entry
    /// or LVT entry with NMI delivery; nothing on this PC drives LINT1): taken whatever
    /// RFLAGS.IF says, when NMIs are not blocked.
    pub fn nmi_pending(&self) -> bool {
        self.lapic.pending() == Some(PendingInterrupt::Nmi)
    }

    /// The CPU takes the pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        self.lapic.take_nmi()
    }

    /// A maskable interrupt waits for the CPU (taken when RFLAGS.IF = 1).
    pub fn pending(&self) -> bool {
        if self.lapic.passes_pic_through() {
            return self.pic.pending();
        }
        match self.lapic.pending_maskable() {
            Some(PendingInterrupt::ExtInt) => self.pic.pending(),
            Some(_) => true,
            None => false,
        }
    }

    /// The CPU's interrupt-acknowledge cycle: the vector to deliver, if one is still there.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if self.lapic.passes_pic_through() {
            return self.pic.pending().then(|| self.pic.acknowledge());
        }
        let vector = match self.lapic.acknowledge() {
            Some(v) => Some(v),
            None => self.pic.pending().then(|| self.pic.acknowledge()),
        };
        self.route_pic_output();
        vector
    }

    /// A physical address one of the controllers decodes, read with `size` bytes.
    pub fn mmio_read(&mut self, phys: u64, size: u8, now_ns: u64) -> Option<u64> {
        if let Some(offset) = self.lapic_offset(phys) {
            return Some(match size {
                4 => self.lapic.mmio_read(offset, now_ns) as u64,
                // The SDM leaves other sizes undefined; they read 0 (as in QEMU).
                _ => 0,
            });
        }
        let offset = self.ioapic_offset(phys)?;
        Some(self.ioapic.mmio_read(offset, size) as u64)
    }

    /// A write to a physical address the controllers decode: `false` if none does.
    pub fn mmio_write(&mut self, phys: u64, size: u8, value: u64, now_ns: u64) -> bool {
        if let Some(offset) = self.lapic_offset(phys) {
            if size == 4 {
                self.lapic.mmio_write(offset, value as u32, now_ns);
                self.take_lapic_outputs();
            } else {
                log::debug!("local APIC: {size}-byte write at {offset:#x} ignored");
            }
            return true;
        }
        let Some(offset) = self.ioapic_offset(phys) else {
            return false;
        };
        let msgs = self.ioapic.mmio_write(offset, size, value as u32);
        self.deliver(msgs);
        true
    }

    fn lapic_offset(&self, phys: u64) -> Option<u32> {
        let base = self.lapic.mmio_base()?;
        (phys >= base && phys < base + MMIO_SIZE).then(|| (phys - base) as u32)
    }

    fn ioapic_offset(&self, phys: u64) -> Option<u64> {
        (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_SIZE)
            .contains(&phys)
            .then(|| phys - IOAPIC_BASE)
    }

    /// RDMSR of a device MSR (x2APIC registers, IA32_TSC_DEADLINE): `None` is #GP.
    pub fn msr_read(&mut self, index: u32, now_ns: u64) -> Option<u64> {
        if index == msr::TSC_DEADLINE {
            // A deadline that has passed reads 0: fire it first.
            self.lapic.advance(now_ns);
            return Some(self.lapic.tsc_deadline_read());
        }
        self.lapic.msr_read(index, now_ns).ok()
    }

    /// WRMSR of a device MSR: `false` is #GP.
    pub fn msr_write(&mut self, index: u32, value: u64, now_ns: u64) -> bool {
        let ok = if index == msr::TSC_DEADLINE {
            self.lapic.tsc_deadline_write(value, now_ns);
            true
        } else {
            self.lapic.msr_write(index, value, now_ns).is_ok()
        };
        self.take_lapic_outputs();
        ok
    }

    /// MOV from CR8: the TPR's bits 7:4 (`None` while the APIC is hardware-disabled: CR8 is
    /// then the CPU's own register).
    pub fn cr8_read(&self) -> Option<u64> {
        (!self.lapic.passes_pic_through()).then(|| self.lapic.cr8())
    }

    /// MOV to CR8: the TPR's bits 7:4 (a hardware-disabled APIC ignores it).
    pub fn cr8_write(&mut self, value: u64) -> bool {
        if self.lapic.passes_pic_through() {
            return false;
        }
        self.lapic.set_cr8(value).is_ok()
    }

    /// When the local APIC timer fires next.
    pub fn next_event_ns(&self) -> Option<u64> {
        self.lapic.next_event_ns()
    }

    /// Fire what is due by `now_ns`.
    pub fn advance(&mut self, now_ns: u64) {
        self.lapic.advance(now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::devices::ioapic::{
        OFFSET_IOREGSEL, OFFSET_IOWIN, REG_REDTBL, RTE_LEVEL, RTE_REMOTE_IRR,
    };
    use crate::machine::devices::lapic::regs::{
        APIC_EOI, APIC_TPR, BASE_BSP, BASE_EN, DEFAULT_BASE,
    };
    use crate::machine::devices::pic::{MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA};

    const BASE: u64 = DEFAULT_BASE | BASE_EN | BASE_BSP;

    fn machine() -> Interrupts {
        Interrupts::new(
            LocalApicConfig {
                apic_id: 0,
                bsp: true,
                max_phys_addr: 40,
                x2apic: true,
                tsc_deadline: true,
            },
            BASE,
        )
    }

    /// Linux's 8259 set-up: vectors 0x30-0x3f, all unmasked.
    fn init_pic(i: &mut Interrupts) {
        for (port, v) in [
            (MASTER_CMD, 0x11),
            (MASTER_DATA, 0x30),
            (MASTER_DATA, 4),
            (MASTER_DATA, 1),
            (SLAVE_CMD, 0x11),
            (SLAVE_DATA, 0x38),
            (SLAVE_DATA, 2),
            (SLAVE_DATA, 1),
            (MASTER_DATA, 0),
            (SLAVE_DATA, 0),
        ] {
            i.pic.write(port, v);
        }
        i.route_pic_output();
    }

    fn lines(irqs: &[u8]) -> IrqLines {
        let mut l = IrqLines::default();
        for &irq in irqs {
            l.set(irq, true);
        }
        l
    }

    fn program_pin(i: &mut Interrupts, pin: u8, low: u32) {
        let io = |off: u64| IOAPIC_BASE + off;
        i.mmio_write(io(OFFSET_IOREGSEL), 4, (REG_REDTBL + 2 * pin + 1) as u64, 0);
        i.mmio_write(io(OFFSET_IOWIN), 4, 0, 0); // destination APIC 0
        i.mmio_write(io(OFFSET_IOREGSEL), 4, (REG_REDTBL + 2 * pin) as u64, 0);
        i.mmio_write(io(OFFSET_IOWIN), 4, low as u64, 0);
    }

    fn entry_low(i: &mut Interrupts, pin: u8) -> u64 {
        i.mmio_write(
            IOAPIC_BASE + OFFSET_IOREGSEL,
            4,
            (REG_REDTBL + 2 * pin) as u64,
            0,
        );
        i.mmio_read(IOAPIC_BASE + OFFSET_IOWIN, 4, 0).unwrap()
    }

    fn eoi(i: &mut Interrupts) {
        assert!(i.mmio_write(DEFAULT_BASE + APIC_EOI as u64, 4, 0, 0));
    }

    /// Before the kernel touches the APIC (and with `nolapic`), the 8259's interrupts reach
    /// the CPU through LINT0 in ExtINT mode, the vector coming from the 8259.
    #[test]
    fn virtual_wire_delivers_the_8259s_vector() {
        let mut i = machine();
        init_pic(&mut i);
        assert!(!i.pending());
        i.update(lines(&[0]));
        assert!(i.pending());
        assert_eq!(i.acknowledge(), Some(0x30));
        assert!(!i.pending(), "in service at the 8259");
    }

    /// A hardware-disabled local APIC passes the 8259's INTR straight to the CPU.
    #[test]
    fn a_disabled_local_apic_passes_the_8259_through() {
        let mut i = machine();
        init_pic(&mut i);
        i.sync_apic_base(BASE & !BASE_EN);
        assert!(i.lapic.passes_pic_through());
        i.update(lines(&[4]));
        assert_eq!(i.acknowledge(), Some(0x34));
        assert_eq!(i.mmio_read(DEFAULT_BASE + APIC_TPR as u64, 4, 0), None);
    }

    /// An ISA line routed through the IO-APIC (IRQ0 on pin 2) arrives as its programmed vector
    /// and is retired by the local APIC's EOI.
    #[test]
    fn ioapic_routes_an_isa_irq_to_its_vector() {
        let mut i = machine();
        init_pic(&mut i);
        // Linux masks the 8259 once it uses the IO-APIC.
        i.pic.write(MASTER_DATA, 0xff);
        i.pic.write(SLAVE_DATA, 0xff);
        program_pin(&mut i, 2, 0xec);
        i.update(lines(&[0]));
        assert!(i.pending());
        assert_eq!(i.acknowledge(), Some(0xec));
        assert!(!i.pending());
        eoi(&mut i);
        // A new edge, a new interrupt.
        i.update(lines(&[]));
        i.update(lines(&[0]));
        assert_eq!(i.acknowledge(), Some(0xec));
    }

    /// A level-triggered pin: remote IRR holds it until the local APIC's EOI of its vector
    /// reaches the IO-APIC, which then sends again while the line is still asserted.
    #[test]
    fn level_triggered_eoi_reaches_the_ioapic() {
        let mut i = machine();
        program_pin(&mut i, 9, 0x41 | RTE_LEVEL as u32);
        i.update(lines(&[9]));
        assert_eq!(i.acknowledge(), Some(0x41));
        assert_ne!(entry_low(&mut i, 9) & RTE_REMOTE_IRR, 0);
        eoi(&mut i);
        // Still asserted: delivered again, remote IRR set again.
        assert!(i.pending());
        assert_eq!(i.acknowledge(), Some(0x41));
        i.update(lines(&[]));
        eoi(&mut i);
        assert_eq!(entry_low(&mut i, 9) & RTE_REMOTE_IRR, 0);
        assert!(!i.pending());
    }

    /// CR8 and the xAPIC TPR register are one register; a raised TPR holds back lower
    /// priority classes.
    #[test]
    fn cr8_is_the_tpr() {
        let mut i = machine();
        let tpr = DEFAULT_BASE + APIC_TPR as u64;
        i.mmio_write(tpr, 4, 0x5a, 0);
        assert_eq!(i.cr8_read(), Some(5));
        assert!(i.cr8_write(9));
        assert_eq!(i.mmio_read(tpr, 4, 0), Some(0x90));
        program_pin(&mut i, 4, 0x81);
        i.update(lines(&[4]));
        assert!(!i.pending(), "class 8 is below TPR class 9");
        assert!(i.cr8_write(0));
        assert_eq!(i.acknowledge(), Some(0x81));
        // Hardware-disabled: CR8 is the CPU's own.
        i.sync_apic_base(BASE & !BASE_EN);
        assert_eq!(i.cr8_read(), None);
    }

    /// An NMI the guest sends itself (ICR, shorthand self, NMI delivery) and one an IO-APIC
    /// entry with NMI delivery sends are pending for the CPU apart from maskable interrupts,
    /// once each.
    #[test]
    fn nmis_reach_the_cpu() {
        use crate::machine::devices::ioapic::RTE_DM_NMI;
        use crate::machine::devices::lapic::regs::{
            APIC_ICR_LOW, DM_NMI, ICR_SHORTHAND_SELF, ICR_SHORTHAND_SHIFT,
        };
        let mut i = machine();
        assert!(!i.nmi_pending());
        let icr = ICR_SHORTHAND_SELF << ICR_SHORTHAND_SHIFT | DM_NMI << 8;
        assert!(i.mmio_write(DEFAULT_BASE + APIC_ICR_LOW as u64, 4, icr as u64, 0));
        assert!(i.nmi_pending());
        assert!(!i.pending(), "an NMI is not a maskable interrupt");
        assert!(i.take_nmi());
        assert!(!i.nmi_pending());
        program_pin(&mut i, 5, RTE_DM_NMI as u32);
        i.update(lines(&[5]));
        assert!(i.nmi_pending());
        assert!(i.take_nmi());
        assert!(!i.take_nmi());
    }
}
