//! The local APIC of one CPU (Intel SDM vol. 3 ch. 11): xAPIC MMIO and x2APIC MSR register
//! interfaces, IA32_APIC_BASE, interrupt acceptance and priority, the LVT, IPIs and the timer
//! (one-shot, periodic, TSC-deadline).
//!
//! # Interface for the machine
//!
//! The model is pure: it knows nothing of the CPU state or the bus. Every entry point that
//! depends on time takes the machine's virtual time in nanoseconds.
//!
//! * IA32_APIC_BASE (MSR 0x1b): [`LocalApic::apic_base`], [`LocalApic::set_apic_base`]
//!   (`Err` = #GP). When the APIC is hardware-disabled (EN = 0) the machine should also clear
//!   CPUID.01H:EDX.APIC, as the processor does.
//! * xAPIC registers: route a 4-byte access at physical address `a` to
//!   [`LocalApic::mmio_read`] / [`LocalApic::mmio_write`] with `a - base` when
//!   [`LocalApic::mmio_base`] is `Some(base)` (xAPIC mode only; in x2APIC mode and when
//!   disabled the page is not decoded). The SDM leaves narrower, wider and misaligned
//!   accesses undefined; here an offset that is not 16-byte aligned reads 0 and ignores
//!   writes, and the machine should do the same for accesses of a size other than 4 bytes
//!   (as QEMU does).
//! * x2APIC registers: RDMSR/WRMSR 0x800-0x8ff go to [`LocalApic::msr_read`] /
//!   [`LocalApic::msr_write`] (`Err` = #GP); IA32_TSC_DEADLINE (0x6e0) to
//!   [`LocalApic::tsc_deadline_read`] / [`LocalApic::tsc_deadline_write`]. MOV CR8 uses
//!   [`LocalApic::cr8`] / [`LocalApic::set_cr8`].
//! * Time: the timer runs on the APIC bus clock, taken as 1 GHz (one clock per ns of virtual
//!   time before the divider), and the TSC counts one per ns, so TSC values and `now_ns`
//!   are the same number. [`LocalApic::next_event_ns`] says when the timer fires next;
//!   [`LocalApic::advance`] fires everything due (every register access advances first, so
//!   reads are exact at any nanosecond).
//! * Interrupts in: [`LocalApic::accept`] for a message the machine has routed here (it
//!   decides with [`LocalApic::matches_destination`], which works for any number of APICs);
//!   [`LocalApic::set_lint0`] / [`LocalApic::set_lint1`] for the LINT pins (LINT0 = the
//!   8259's INTR, LINT1 = the NMI line on a PC).
//! * Interrupts out: [`LocalApic::pending`] (NMI, ExtINT or a fixed vector);
//!   [`LocalApic::take_nmi`] when the CPU takes an NMI; [`LocalApic::acknowledge`] is the
//!   INTA cycle (`None` = an ExtINT: the 8259 supplies the vector). [`LocalApic::take_init`]
//!   and [`LocalApic::take_sipi`] report INIT and start-up requests for the machine to act on
//!   (an INIT resets this APIC through [`LocalApic::init_reset`]).
//! * Messages from the APIC to the rest of the system: after every register write the
//!   machine drains [`LocalApic::take_outputs`]: IPIs for other APICs and EOI broadcasts of
//!   level-triggered vectors for the IO-APICs.
//!
//! # What is modelled
//!
//! * Registers: ID (read-only, as on Nehalem and later), version [`regs::VERSION_VALUE`]
//!   (0x50014: version 0x14, six LVTs, no EOI-broadcast suppression), TPR, APR and RRD (read
//!   0: not implemented since the Pentium 4), PPR (from TPR and the highest ISR vector), EOI,
//!   LDR and DFR (flat and cluster models; in x2APIC mode LDR is derived from the ID), SVR
//!   (spurious vector, software enable; the focus-check bit is stored and has no effect),
//!   ISR/TMR/IRR, ESR (errors collect internally and become readable at the next ESR write),
//!   ICR (xAPIC low/high; one 64-bit MSR in x2APIC mode), SELF IPI (x2APIC), the six LVTs,
//!   timer initial/current count and divide configuration.
//! * Reserved xAPIC registers in 0x000-0x3ff read 0, ignore writes and set ESR bit 7;
//!   writes to read-only registers are ignored. In x2APIC mode every rule of SDM 11.12 is a
//!   #GP: reserved or xAPIC-only registers, writes to read-only and reads of write-only
//!   registers, reserved bits, non-zero EOI and ESR writes.
//! * IA32_APIC_BASE: EN, EXTD, the read-only BSP bit, relocation, reserved bits (including
//!   those at and above MAXPHYADDR, and EXTD without x2APIC support), the legal transitions
//!   disabled <-> xAPIC <-> x2APIC (x2APIC -> xAPIC, disabled -> x2APIC and EN = 0 with
//!   EXTD = 1 are #GP). Disabling resets every register but the ID.
//! * Acceptance: fixed and lowest-priority messages set IRR (and TMR when level-triggered);
//!   vectors 0-15 are refused with a receive-illegal-vector error. NMI, INIT, start-up and
//!   ExtINT are latched for the machine. Delivery to the CPU: NMI first, then ExtINT, then
//!   the highest IRR vector whose priority class is above the PPR's; acknowledging moves it
//!   to ISR (or returns the spurious vector when nothing qualifies any more); EOI retires the
//!   highest ISR vector.
//! * LVT: masks, delivery modes (fixed, SMI, NMI, INIT, ExtINT where the SDM allows them),
//!   LINT polarity, edge and level triggering (level only for fixed delivery on LINT0, with
//!   remote IRR cleared by the EOI; ExtINT is level-sensitive: pending while the pin is
//!   asserted). The error LVT fires when an error bit is newly set.
//! * Software disable (SVR bit 8 = 0): every LVT is masked and cannot be unmasked; IRR and
//!   ISR are held and still dispensed, and messages are still accepted (the SDM's acceptance
//!   flow has no enable check; QEMU and KVM drop fixed interrupts instead). Hardware disable
//!   (EN = 0): no register interface, no messages accepted, the timer stops, LINT0 is the
//!   CPU's INTR input and LINT1 its NMI input ([`LocalApic::passes_pic_through`]).
//! * IPIs: the destination shorthands; a message addressed to this APIC (shorthand self or
//!   all, or a matching destination) is accepted directly, and every IPI that can reach
//!   another APIC is handed to the machine. INIT level de-assert is not sent (Pentium 4 and
//!   later do not support it). IPIs are always edge-triggered; delivery status is always idle.
//! * Timer: exact counting in closed form, see `timer.rs`. Mode changes into or out of
//!   TSC-deadline mode disarm the timer; a periodic timer reloads at its exact expiry times.
//!
//! # Left out
//!
//! * Lowest-priority arbitration and focus processors: the machine chooses among APICs.
//! * SMI (logged and dropped), the CMCI LVT, EOI-broadcast suppression, the checksum and
//!   accept errors of the P6 APIC bus, the redirectable-IPI error (lowest-priority IPIs are
//!   sent like fixed ones).
//! * A thermal sensor and performance counters: their LVTs are complete registers, and a
//!   source the machine adds later fires them with [`LocalApic::signal_lvt`].
//! * The power-on state is the SDM's (LVTs masked, software-disabled). Firmware normally
//!   programs virtual-wire mode (LINT0 ExtINT, LINT1 NMI, SVR enabled) before the OS runs; a
//!   machine that boots Linux directly with an MADT must do that itself, or the 8259's
//!   interrupts never reach the CPU until Linux's own APIC setup.

mod access;
pub mod regs;
mod timer;
mod vectors;

#[cfg(test)]
mod tests;

pub use timer::TimerMode;

use super::apic_bus::{DeliveryMode, DestinationMode, InterruptMessage};
use regs::*;
use timer::Timer;
use vectors::VectorSet;

/// Why a register or MSR access raises #GP(0). Every variant is the same fault for the CPU;
/// the variant says why (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicFault {
    /// An x2APIC MSR while the APIC is not in x2APIC mode.
    NotX2apic,
    /// A reserved register, or one that exists only in xAPIC mode.
    ReservedRegister,
    /// A write to a read-only register.
    ReadOnly,
    /// A read of a write-only register (EOI, SELF IPI).
    WriteOnly,
    /// Reserved bits set, including a non-zero EOI or ESR write.
    ReservedBits,
    /// An IA32_APIC_BASE write the mode state machine forbids.
    IllegalTransition,
}

/// The APIC's mode, from IA32_APIC_BASE EN and EXTD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: hardware-disabled.
    Disabled,
    /// EN = 1, EXTD = 0: the MMIO interface.
    XApic,
    /// EN = 1, EXTD = 1: the MSR interface.
    X2Apic,
}

/// What the APIC asks of the CPU, in the order it should be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingInterrupt {
    /// A non-maskable interrupt (take it with [`LocalApic::take_nmi`]).
    Nmi,
    /// An external interrupt: the 8259 supplies the vector (after [`LocalApic::acknowledge`]).
    ExtInt,
    /// A fixed interrupt with this vector (taken by [`LocalApic::acknowledge`]).
    Fixed(u8),
}

/// The six local vector table entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lvt {
    Timer,
    Thermal,
    PerfCounter,
    Lint0,
    Lint1,
    Error,
}

impl Lvt {
    pub const ALL: [Lvt; 6] = [
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::PerfCounter,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The register's offset in the xAPIC page.
    pub fn offset(self) -> u32 {
        APIC_LVT_TIMER + REG_STRIDE * self as u32
    }

    fn from_offset(offset: u32) -> Option<Lvt> {
        Lvt::ALL.into_iter().find(|lvt| lvt.offset() == offset)
    }

    /// The bits software can write (the delivery-status and remote-IRR bits are read-only).
    fn writable(self, tsc_deadline: bool) -> u32 {
        let base = LVT_VECTOR | LVT_MASKED;
        match self {
            Lvt::Timer if tsc_deadline => base | LVT_TIMER_PERIODIC | LVT_TIMER_TSC_DEADLINE,
            Lvt::Timer => base | LVT_TIMER_PERIODIC,
            Lvt::Thermal | Lvt::PerfCounter => base | LVT_DELIVERY_MASK,
            Lvt::Lint0 | Lvt::Lint1 => base | LVT_DELIVERY_MASK | LVT_ACTIVE_LOW | LVT_LEVEL,
            Lvt::Error => base,
        }
    }

    /// Bits that read back but that software cannot change.
    fn read_only(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => LVT_DELIVERY_STATUS | LVT_REMOTE_IRR,
            _ => LVT_DELIVERY_STATUS,
        }
    }

    /// The delivery mode of an entry, `None` for one the SDM does not allow on this LVT.
    fn delivery(self, value: u32) -> Option<DeliveryMode> {
        let mode = (value & LVT_DELIVERY_MASK) >> LVT_DELIVERY_SHIFT;
        match (self, mode) {
            (Lvt::Timer | Lvt::Error, _) => Some(DeliveryMode::Fixed),
            (_, DM_FIXED) => Some(DeliveryMode::Fixed),
            (_, DM_SMI) => Some(DeliveryMode::Smi),
            (_, DM_NMI) => Some(DeliveryMode::Nmi),
            (Lvt::Lint0 | Lvt::Lint1, DM_INIT) => Some(DeliveryMode::Init),
            (Lvt::Lint0 | Lvt::Lint1, DM_EXTINT) => Some(DeliveryMode::ExtInt),
            _ => None,
        }
    }
}

/// The ICR's destination shorthand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// The destination field selects the APICs.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

impl Shorthand {
    fn from_icr(low: u32) -> Shorthand {
        match (low >> ICR_SHORTHAND_SHIFT) & 3 {
            ICR_SHORTHAND_NONE => Shorthand::None,
            ICR_SHORTHAND_SELF => Shorthand::SelfOnly,
            ICR_SHORTHAND_ALL => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        }
    }
}

/// An IPI for the other APICs. The sender has already taken its own share: the machine
/// delivers it to every *other* APIC that the shorthand includes or, with
/// [`Shorthand::None`], whose [`LocalApic::matches_destination`] is true. A lowest-priority
/// IPI the sender accepted itself (`sender_accepted`) needs no other recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub message: InterruptMessage,
    pub shorthand: Shorthand,
    pub sender_accepted: bool,
}

/// A message from this APIC to the rest of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicOutput {
    /// An interprocessor interrupt from an ICR write.
    Ipi(Ipi),
    /// A level-triggered vector was retired by an EOI write: the IO-APICs clear remote IRR
    /// for it.
    EoiBroadcast(u8),
}

/// What the CPU model tells the APIC about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalApicConfig {
    /// The initial (x2)APIC ID; the xAPIC ID is its low 8 bits.
    pub apic_id: u32,
    /// IA32_APIC_BASE.BSP.
    pub bsp: bool,
    /// MAXPHYADDR (CPUID 0x80000008 EAX bits 7:0): base bits at and above it are reserved.
    pub max_phys_addr: u8,
    /// CPUID.01H:ECX.x2APIC: EXTD may be set.
    pub x2apic: bool,
    /// CPUID.01H:ECX.TSC_Deadline: LVT timer mode 10 is available.
    pub tsc_deadline: bool,
}

/// One local APIC. See the module documentation for how the machine drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalApic {
    config: LocalApicConfig,
    /// IA32_APIC_BASE.
    base: u64,
    tpr: u8,
    /// xAPIC LDR (bits 31:24).
    ldr: u32,
    /// DFR model (bits 31:28; the rest reads as ones).
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// Errors detected since the last ESR write.
    esr_pending: u32,
    /// The ESR as software reads it (latched by the last ESR write).
    esr: u32,
    icr_low: u32,
    /// xAPIC: the ICR high register (destination in bits 31:24); x2APIC: the destination.
    icr_high: u32,
    lvt: [u32; 6],
    timer: Timer,
    /// LINT0/LINT1 input levels as driven (before polarity).
    lint_level: [bool; 2],
    nmi: bool,
    init: bool,
    sipi: Option<u8>,
    /// An ExtINT message waits for its INTA cycle.
    extint: bool,
    outputs: Vec<ApicOutput>,
}

impl LocalApic {
    /// A local APIC in its power-on state (see [`LocalApic::reset`]).
    pub fn new(config: LocalApicConfig) -> Self {
        let mut apic = LocalApic {
            config,
            base: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: VectorSet::default(),
            tmr: VectorSet::default(),
            irr: VectorSet::default(),
            esr_pending: 0,
            esr: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_RESET; 6],
            timer: Timer::new(),
            lint_level: [false; 2],
            nmi: false,
            init: false,
            sipi: None,
            extint: false,
            outputs: Vec::new(),
        };
        apic.reset();
        apic
    }

    /// Power-on / RESET: xAPIC mode at 0xfee00000 (EN, and BSP if configured), the ID from
    /// the configuration, LVTs masked, SVR 0xff (software-disabled), DFR all ones, everything
    /// else 0.
    pub fn reset(&mut self) {
        let bsp = if self.config.bsp { BASE_BSP } else { 0 };
        self.base = DEFAULT_BASE | BASE_EN | bsp;
        self.reset_registers();
    }

    /// INIT: every register to its power-on value except the ID; IA32_APIC_BASE (and so the
    /// mode) is kept.
    pub fn init_reset(&mut self) {
        self.reset_registers();
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = DFR_MODEL_FLAT;
        self.svr = SVR_RESET;
        self.isr = VectorSet::default();
        self.tmr = VectorSet::default();
        self.irr = VectorSet::default();
        self.esr_pending = 0;
        self.esr = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_RESET; 6];
        self.timer = Timer::new();
        self.nmi = false;
        self.init = false;
        self.sipi = None;
        self.extint = false;
    }

    pub fn config(&self) -> &LocalApicConfig {
        &self.config
    }

    /// The (x2)APIC ID.
    pub fn id(&self) -> u32 {
        self.config.apic_id
    }

    pub fn mode(&self) -> ApicMode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    fn hw_enabled(&self) -> bool {
        self.base & BASE_EN != 0
    }

    /// EN = 1 and SVR bit 8 = 1.
    pub fn software_enabled(&self) -> bool {
        self.hw_enabled() && self.svr & SVR_ENABLE != 0
    }

    /// The APIC is hardware-disabled: the 8259's INTR reaches the CPU directly (and LINT1 is
    /// the NMI pin). The machine may then bypass the APIC for 8259 interrupts.
    pub fn passes_pic_through(&self) -> bool {
        !self.hw_enabled()
    }

    /// IA32_APIC_BASE as RDMSR returns it.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// Base-address bits: 12 up to MAXPHYADDR - 1.
    fn base_address_mask(&self) -> u64 {
        let phys = match self.config.max_phys_addr {
            64.. => u64::MAX,
            bits => (1u64 << bits) - 1,
        };
        phys & !(MMIO_SIZE - 1)
    }

    /// WRMSR IA32_APIC_BASE. The BSP bit is read-only (a written value is ignored).
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), ApicFault> {
        use krr_runtime::arch::apic_base::{check_write, WriteFault};
        check_write(
            self.base,
            value,
            u32::from(self.config.max_phys_addr),
            self.config.x2apic,
        )
        .map_err(|e| match e {
            WriteFault::ReservedBits => ApicFault::ReservedBits,
            WriteFault::IllegalTransition => ApicFault::IllegalTransition,
        })?;
        let old = self.mode();
        self.base = (value & !BASE_BSP) | (self.base & BASE_BSP);
        let new = self.mode();
        match (old, new) {
            (ApicMode::XApic | ApicMode::X2Apic, ApicMode::Disabled) => self.reset_registers(),
            // The x2APIC ID and LDR come from the ID; the 32-bit destination starts at 0.
            (ApicMode::XApic, ApicMode::X2Apic) => self.icr_high = 0,
            _ => {}
        }
        Ok(())
    }

    /// Where the xAPIC register page is: `Some` only in xAPIC mode.
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.base & self.base_address_mask())
    }

    /// The x2APIC LDR: cluster (ID bits 19:4) in bits 31:16, one bit for ID bits 3:0.
    fn x2apic_ldr(&self) -> u32 {
        let id = self.config.apic_id;
        ((id >> 4) << 16) | (1 << (id & 0xf))
    }

    /// Whether a message with this destination addresses this APIC, in the current mode:
    /// xAPIC physical (8-bit ID, 0xff broadcast), xAPIC logical (flat: any common LDR bit;
    /// cluster: same cluster in bits 7:4 and a common member bit; 0xff broadcast), x2APIC
    /// physical (32-bit ID) and logical (cluster in bits 31:16, member bits 15:0), with
    /// 0xffffffff broadcast. In xAPIC mode only bits 7:0 of `destination` count. A
    /// hardware-disabled APIC matches nothing.
    pub fn matches_destination(&self, mode: DestinationMode, destination: u32) -> bool {
        match self.mode() {
            ApicMode::Disabled => false,
            ApicMode::X2Apic => {
                if destination == X2APIC_BROADCAST {
                    return true;
                }
                match mode {
                    DestinationMode::Physical => destination == self.config.apic_id,
                    DestinationMode::Logical => {
                        let ldr = self.x2apic_ldr();
                        destination >> 16 == ldr >> 16 && destination & ldr & 0xffff != 0
                    }
                }
            }
            ApicMode::XApic => {
                let dest = destination & 0xff;
                if dest == XAPIC_BROADCAST {
                    return true;
                }
                let logical = self.ldr >> 24;
                match (mode, self.dfr & DFR_MODEL_MASK) {
                    (DestinationMode::Physical, _) => dest == self.config.apic_id & 0xff,
                    (DestinationMode::Logical, DFR_MODEL_FLAT) => logical & dest != 0,
                    (DestinationMode::Logical, DFR_MODEL_CLUSTER) => {
                        logical >> 4 == dest >> 4 && logical & dest & 0xf != 0
                    }
                    // Other DFR models are undefined: nothing matches.
                    (DestinationMode::Logical, _) => false,
                }
            }
        }
    }

    /// Accept a message the machine routed to this APIC. Fixed and lowest-priority set IRR
    /// (and TMR if level-triggered, else clear it); NMI, INIT, start-up and ExtINT are latched
    /// for the machine; SMI is logged and dropped. A hardware-disabled APIC accepts nothing.
    pub fn accept(&mut self, msg: &InterruptMessage) {
        if !self.hw_enabled() {
            log::debug!(
                "local APIC {}: disabled, message {msg:?} dropped",
                self.id()
            );
            return;
        }
        match msg.delivery {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                self.raise_fixed(msg.vector, msg.level_triggered);
            }
            DeliveryMode::Nmi => self.nmi = true,
            DeliveryMode::Init => self.init = true,
            DeliveryMode::StartUp => self.sipi = Some(msg.vector),
            DeliveryMode::ExtInt => self.extint = true,
            DeliveryMode::Smi => log::debug!("local APIC {}: SMI not modelled", self.id()),
        }
    }

    /// Put `vector` into IRR, with its TMR bit per the trigger mode. Vectors 0-15 are refused
    /// with a receive-illegal-vector error.
    fn raise_fixed(&mut self, vector: u8, level: bool) -> bool {
        if vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_RECV_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector);
        if level {
            self.tmr.set(vector);
        } else {
            self.tmr.clear(vector);
        }
        true
    }

    /// Record errors. Newly set bits raise the error LVT (an error it causes itself is
    /// already set, so this ends).
    fn error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        if new != 0 {
            self.deliver_lvt(Lvt::Error);
        }
    }

    /// Fire a local interrupt source through its LVT entry (masked entries deliver nothing).
    fn deliver_lvt(&mut self, lvt: Lvt) {
        let value = self.lvt[lvt.index()];
        if value & LVT_MASKED != 0 {
            return;
        }
        match lvt.delivery(value) {
            Some(DeliveryMode::Fixed) => {
                self.raise_fixed((value & LVT_VECTOR) as u8, false);
            }
            Some(DeliveryMode::Nmi) => self.nmi = true,
            Some(DeliveryMode::Init) => self.init = true,
            Some(DeliveryMode::ExtInt) => self.extint = true,
            Some(DeliveryMode::Smi) => log::debug!("local APIC: SMI from {lvt:?} not modelled"),
            _ => log::warn!("local APIC: {lvt:?} entry {value:#x} has a reserved delivery mode"),
        }
    }

    /// A local interrupt source outside the APIC (thermal sensor, performance counter
    /// overflow) signals its LVT entry. For LINT0/LINT1 this is one edge.
    pub fn signal_lvt(&mut self, lvt: Lvt) {
        if self.hw_enabled() {
            self.deliver_lvt(lvt);
        }
    }

    /// Drive the LINT0 input (on a PC: the 8259's INTR).
    pub fn set_lint0(&mut self, level: bool) {
        self.set_lint(0, level);
    }

    /// Drive the LINT1 input (on a PC: the NMI line).
    pub fn set_lint1(&mut self, level: bool) {
        self.set_lint(1, level);
    }

    fn lint(pin: usize) -> Lvt {
        [Lvt::Lint0, Lvt::Lint1][pin]
    }

    /// The pin's level after the LVT's polarity.
    fn lint_asserted(&self, pin: usize) -> bool {
        let active_low = self.lvt[Self::lint(pin).index()] & LVT_ACTIVE_LOW != 0;
        self.lint_level[pin] != active_low
    }

    fn set_lint(&mut self, pin: usize, level: bool) {
        if !self.hw_enabled() {
            // No APIC: LINT0 is INTR (read by `pending`), LINT1 is the edge-triggered NMI pin.
            if pin == 1 && level && !self.lint_level[1] {
                self.nmi = true;
            }
            self.lint_level[pin] = level;
            return;
        }
        let was = self.lint_asserted(pin);
        self.lint_level[pin] = level;
        let lvt = Self::lint(pin);
        if self.lint_level_fixed(pin) {
            self.lint_level_request(pin);
        } else if self.lint_asserted(pin)
            && !was
            && lvt.delivery(self.lvt[lvt.index()]) != Some(DeliveryMode::ExtInt)
        {
            // Edge-triggered fixed, NMI, SMI, INIT; ExtINT is level-sensitive (`pending`).
            self.deliver_lvt(lvt);
        }
    }

    /// A level-triggered fixed LINT entry. Only LINT0: the SDM does not support level
    /// triggering on LINT1, which is treated as edge-triggered.
    fn lint_level_fixed(&self, pin: usize) -> bool {
        let value = self.lvt[Self::lint(pin).index()];
        pin == 0 && value & LVT_LEVEL != 0 && value & LVT_DELIVERY_MASK == DM_FIXED
    }

    /// Request a level-triggered LINT interrupt while the pin is asserted, once until its EOI
    /// (remote IRR).
    fn lint_level_request(&mut self, pin: usize) {
        let index = Self::lint(pin).index();
        let value = self.lvt[index];
        if value & (LVT_MASKED | LVT_REMOTE_IRR) != 0 || !self.lint_asserted(pin) {
            return;
        }
        if self.raise_fixed((value & LVT_VECTOR) as u8, true) {
            self.lvt[index] |= LVT_REMOTE_IRR;
        }
    }

    /// An ExtINT is requested: by a message, or by an unmasked ExtINT LINT pin while it is
    /// asserted (by LINT0 itself when the APIC is hardware-disabled).
    fn extint_requested(&self) -> bool {
        if !self.hw_enabled() {
            return self.lint_level[0];
        }
        self.extint
            || (0..2).any(|pin| {
                let lvt = Self::lint(pin);
                let value = self.lvt[lvt.index()];
                value & LVT_MASKED == 0
                    && lvt.delivery(value) == Some(DeliveryMode::ExtInt)
                    && self.lint_asserted(pin)
            })
    }

    /// The processor priority: TPR, or the class of the highest in-service vector if that is
    /// higher.
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr & PRIORITY_CLASS_MASK >= isrv & PRIORITY_CLASS_MASK {
            self.tpr
        } else {
            isrv & PRIORITY_CLASS_MASK
        }
    }

    /// The highest IRR vector if its priority class is above the PPR's.
    fn deliverable_fixed(&self) -> Option<u8> {
        if !self.hw_enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (vector & PRIORITY_CLASS_MASK > self.ppr() & PRIORITY_CLASS_MASK).then_some(vector)
    }

    /// What the APIC asks of the CPU: an NMI (regardless of RFLAGS.IF), else an ExtINT or a
    /// fixed vector (only taken with IF = 1).
    pub fn pending(&self) -> Option<PendingInterrupt> {
        if self.nmi {
            return Some(PendingInterrupt::Nmi);
        }
        self.pending_maskable()
    }

    /// The maskable part of [`LocalApic::pending`], for when NMIs are blocked.
    pub fn pending_maskable(&self) -> Option<PendingInterrupt> {
        if self.extint_requested() {
            return Some(PendingInterrupt::ExtInt);
        }
        self.deliverable_fixed().map(PendingInterrupt::Fixed)
    }

    /// The CPU takes the pending NMI. Returns whether there was one.
    pub fn take_nmi(&mut self) -> bool {
        std::mem::take(&mut self.nmi)
    }

    /// An INIT was received (the machine resets the CPU and calls
    /// [`LocalApic::init_reset`]). Returns whether there was one.
    pub fn take_init(&mut self) -> bool {
        std::mem::take(&mut self.init)
    }

    /// A start-up IPI's vector, if one was received.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.sipi.take()
    }

    /// The interrupt-acknowledge cycle. `None`: the interrupt is an ExtINT (or the APIC is
    /// hardware-disabled) and the 8259 supplies the vector. Otherwise the highest deliverable
    /// IRR vector moves to ISR and is returned; if none qualifies any more (the TPR was raised
    /// after `pending`), the spurious vector is returned and ISR is untouched.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if self.extint_requested() {
            self.extint = false;
            return None;
        }
        if !self.hw_enabled() {
            return None;
        }
        match self.deliverable_fixed() {
            Some(vector) => {
                self.irr.clear(vector);
                self.isr.set(vector);
                Some(vector)
            }
            None => Some((self.svr & SVR_VECTOR) as u8),
        }
    }

    /// End of interrupt: retire the highest in-service vector. Returns it if it was
    /// level-triggered (TMR set), for the IO-APICs' EOI broadcast.
    pub fn eoi(&mut self) -> Option<u8> {
        let vector = self.isr.highest()?;
        self.isr.clear(vector);
        if !self.tmr.get(vector) {
            return None;
        }
        let lint0 = Lvt::Lint0.index();
        if self.lint_level_fixed(0) && (self.lvt[lint0] & LVT_VECTOR) as u8 == vector {
            self.lvt[lint0] &= !LVT_REMOTE_IRR;
            self.lint_level_request(0);
        }
        Some(vector)
    }

    /// The task priority register (CR8 is its bits 7:4).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    pub fn set_tpr(&mut self, value: u8) {
        self.tpr = value;
    }

    /// MOV from CR8: TPR bits 7:4.
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// MOV to CR8: TPR bits 7:4 = value, bits 3:0 = 0; value bits 63:4 are reserved (#GP).
    pub fn set_cr8(&mut self, value: u64) -> Result<(), ApicFault> {
        if value > 0xf {
            return Err(ApicFault::ReservedBits);
        }
        self.tpr = (value as u8) << 4;
        Ok(())
    }

    /// IRR, ISR and TMR, eight 32-bit words each (for reports and tests).
    pub fn irr(&self) -> [u32; 8] {
        self.irr.words()
    }

    pub fn isr(&self) -> [u32; 8] {
        self.isr.words()
    }

    pub fn tmr(&self) -> [u32; 8] {
        self.tmr.words()
    }

    /// The LVT timer's mode.
    pub fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[Lvt::Timer.index()])
    }

    /// When the timer fires next (ns of virtual time), also when its LVT is masked (a
    /// masked expiry still stops a one-shot count and clears a deadline).
    pub fn next_event_ns(&self) -> Option<u64> {
        if !self.hw_enabled() {
            return None;
        }
        self.timer.next_expiry(self.timer_mode())
    }

    /// Bring the timer up to `now_ns`: an expiry at or before it sets the timer vector in
    /// IRR (unless masked). Periods missed since the last call merge into one interrupt.
    pub fn advance(&mut self, now_ns: u64) {
        if self.hw_enabled() && self.timer.expire(self.timer_mode(), now_ns) {
            self.deliver_lvt(Lvt::Timer);
        }
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline, 0 when disarmed or not in TSC-deadline
    /// mode.
    pub fn tsc_deadline_read(&self) -> u64 {
        self.timer.deadline(self.timer_mode())
    }

    /// WRMSR IA32_TSC_DEADLINE at TSC `now_tsc` (= ns here). Ignored outside TSC-deadline
    /// mode; 0 disarms; a deadline already reached fires at once.
    pub fn tsc_deadline_write(&mut self, value: u64, now_tsc: u64) {
        self.advance(now_tsc);
        if self.timer.write_deadline(self.timer_mode(), value, now_tsc) {
            self.deliver_lvt(Lvt::Timer);
        }
    }

    /// Messages for the rest of the system since the last call, in order.
    pub fn take_outputs(&mut self) -> Vec<ApicOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// Send the IPI described by an ICR write (`low` as written, `destination` in the
    /// current mode's width).
    fn send_ipi(&mut self, low: u32, destination: u32) {
        let vector = (low & LVT_VECTOR) as u8;
        let Some(delivery) = DeliveryMode::from_bits(low >> LVT_DELIVERY_SHIFT) else {
            log::warn!(
                "local APIC {}: ICR delivery mode 011 is reserved",
                self.id()
            );
            return;
        };
        if delivery == DeliveryMode::Init && low & ICR_LEVEL != 0 && low & ICR_ASSERT == 0 {
            log::debug!("local APIC {}: INIT level de-assert not sent", self.id());
            return;
        }
        let fixed = matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority);
        if fixed && vector < FIRST_LEGAL_VECTOR {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
        }
        let destination_mode = if low & ICR_LOGICAL != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        };
        let message = InterruptMessage {
            vector,
            delivery,
            destination_mode,
            destination,
            level_triggered: false,
        };
        let shorthand = Shorthand::from_icr(low);
        let to_self = match shorthand {
            Shorthand::None => self.matches_destination(destination_mode, destination),
            Shorthand::SelfOnly | Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => false,
        };
        if to_self {
            self.accept(&message);
        }
        if shorthand != Shorthand::SelfOnly {
            self.outputs.push(ApicOutput::Ipi(Ipi {
                message,
                shorthand,
                sender_accepted: to_self,
            }));
        }
    }
}
