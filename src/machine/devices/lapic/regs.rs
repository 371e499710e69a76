//! Register offsets, MSR numbers and bit fields of the local APIC (SDM vol. 3 ch. 11, tables
//! 11-1 and 11-6). One numbering serves both interfaces: an xAPIC register at MMIO offset `o`
//! is x2APIC MSR `X2APIC_MSR_BASE + (o >> 4)`.

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// First x2APIC register MSR (offset 0 of the xAPIC page).
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last MSR of the x2APIC range.
pub const X2APIC_MSR_LAST: u32 = 0x8ff;

/// IA32_APIC_BASE: this is the bootstrap processor (read-only here).
pub const BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE: x2APIC mode enable (EXTD).
pub const BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE: APIC global enable (EN).
pub const BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE: the page-aligned base address field starts at bit 12.
pub const BASE_ADDR_SHIFT: u32 = 12;
/// The architectural default base address.
pub const DEFAULT_BASE: u64 = 0xfee0_0000;
/// Size of the xAPIC MMIO page.
pub const MMIO_SIZE: u64 = 0x1000;

// Register offsets in the xAPIC page (x2APIC MSR = 0x800 + offset / 16).
/// Local APIC ID (xAPIC: bits 31:24; x2APIC: the 32-bit ID).
pub const APIC_ID: u32 = 0x020;
/// Version register.
pub const APIC_VERSION: u32 = 0x030;
/// Task priority register.
pub const APIC_TPR: u32 = 0x080;
/// Arbitration priority register (xAPIC only; not implemented by Pentium 4 and later).
pub const APIC_APR: u32 = 0x090;
/// Processor priority register.
pub const APIC_PPR: u32 = 0x0a0;
/// End of interrupt (write-only).
pub const APIC_EOI: u32 = 0x0b0;
/// Remote read register (xAPIC only; not implemented by Pentium 4 and later).
pub const APIC_RRD: u32 = 0x0c0;
/// Logical destination register.
pub const APIC_LDR: u32 = 0x0d0;
/// Destination format register (xAPIC only).
pub const APIC_DFR: u32 = 0x0e0;
/// Spurious-interrupt vector register.
pub const APIC_SVR: u32 = 0x0f0;
/// In-service register, 8 registers of 32 vectors each.
pub const APIC_ISR: u32 = 0x100;
/// Trigger mode register, 8 registers.
pub const APIC_TMR: u32 = 0x180;
/// Interrupt request register, 8 registers.
pub const APIC_IRR: u32 = 0x200;
/// Error status register.
pub const APIC_ESR: u32 = 0x280;
/// LVT corrected machine-check interrupt (absent: the version register reports 6 LVTs).
pub const APIC_LVT_CMCI: u32 = 0x2f0;
/// Interrupt command register, low half (xAPIC) / the whole 64-bit ICR (x2APIC MSR 0x830).
pub const APIC_ICR_LOW: u32 = 0x300;
/// Interrupt command register, high half (xAPIC only).
pub const APIC_ICR_HIGH: u32 = 0x310;
/// LVT timer.
pub const APIC_LVT_TIMER: u32 = 0x320;
/// LVT thermal sensor.
pub const APIC_LVT_THERMAL: u32 = 0x330;
/// LVT performance monitoring counters.
pub const APIC_LVT_PMC: u32 = 0x340;
/// LVT LINT0.
pub const APIC_LVT_LINT0: u32 = 0x350;
/// LVT LINT1.
pub const APIC_LVT_LINT1: u32 = 0x360;
/// LVT error.
pub const APIC_LVT_ERROR: u32 = 0x370;
/// Timer initial count.
pub const APIC_TIMER_INITIAL: u32 = 0x380;
/// Timer current count (read-only).
pub const APIC_TIMER_CURRENT: u32 = 0x390;
/// Timer divide configuration.
pub const APIC_TIMER_DIVIDE: u32 = 0x3e0;
/// SELF IPI (x2APIC only, write-only; MSR 0x83f).
pub const APIC_SELF_IPI: u32 = 0x3f0;

/// Each of ISR, TMR and IRR is this many 32-bit registers, 16 bytes apart.
pub const VECTOR_REGS: u32 = 8;
/// Distance between two registers in the xAPIC page.
pub const REG_STRIDE: u32 = 0x10;

/// Version register value: version 0x14 (an integrated xAPIC, as QEMU reports), max LVT
/// entry 5 (six LVTs: timer, thermal, PMC, LINT0, LINT1, error; no CMCI), bit 24 clear (no
/// EOI-broadcast suppression).
pub const VERSION_VALUE: u32 = 0x0005_0014;

/// TPR/PPR: the priority class is bits 7:4.
pub const PRIORITY_CLASS_MASK: u8 = 0xf0;

/// SVR: the spurious vector.
pub const SVR_VECTOR: u32 = 0xff;
/// SVR: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// SVR: focus processor checking disabled (stored; only matters for lowest-priority
/// arbitration among several APICs, which this model leaves to the machine).
pub const SVR_FOCUS_DISABLED: u32 = 1 << 9;
/// SVR bits software can write (bit 12, EOI-broadcast suppression, is not supported).
pub const SVR_WRITABLE: u32 = SVR_VECTOR | SVR_ENABLE | SVR_FOCUS_DISABLED;
/// SVR value after reset.
pub const SVR_RESET: u32 = 0xff;

/// xAPIC ID register: the ID is in bits 31:24.
pub const XAPIC_ID_SHIFT: u32 = 24;
/// xAPIC LDR: the logical ID is bits 31:24.
pub const LDR_XAPIC_MASK: u32 = 0xff00_0000;
/// DFR: the model field (bits 31:28); bits 27:0 read as ones.
pub const DFR_MODEL_MASK: u32 = 0xf000_0000;
/// DFR bits that always read as one.
pub const DFR_ONES: u32 = 0x0fff_ffff;
/// DFR model: flat.
pub const DFR_MODEL_FLAT: u32 = 0xf000_0000;
/// DFR model: cluster.
pub const DFR_MODEL_CLUSTER: u32 = 0x0000_0000;

/// ESR: send checksum error (P6/Pentium APIC bus only; never set here).
pub const ESR_SEND_CHECKSUM: u32 = 1 << 0;
/// ESR: receive checksum error (never set here).
pub const ESR_RECV_CHECKSUM: u32 = 1 << 1;
/// ESR: send accept error (never set here).
pub const ESR_SEND_ACCEPT: u32 = 1 << 2;
/// ESR: receive accept error (never set here).
pub const ESR_RECV_ACCEPT: u32 = 1 << 3;
/// ESR: redirectable IPI (never set: lowest-priority IPIs are sent).
pub const ESR_REDIRECTABLE_IPI: u32 = 1 << 4;
/// ESR: an IPI with a vector 0-15 was sent.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
/// ESR: an interrupt with a vector 0-15 was received or generated locally.
pub const ESR_RECV_ILLEGAL_VECTOR: u32 = 1 << 6;
/// ESR: an access to a reserved register of the xAPIC page.
pub const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

/// LVT and ICR: the vector.
pub const LVT_VECTOR: u32 = 0xff;
/// LVT and ICR: delivery mode field, bits 10:8.
pub const LVT_DELIVERY_SHIFT: u32 = 8;
/// LVT and ICR: delivery mode field mask (before shifting).
pub const LVT_DELIVERY_MASK: u32 = 0x7 << LVT_DELIVERY_SHIFT;
/// LVT and ICR: delivery status (send pending; always 0 here, delivery is immediate).
pub const LVT_DELIVERY_STATUS: u32 = 1 << 12;
/// LVT LINT0/1: input pin polarity (1 = active low).
pub const LVT_ACTIVE_LOW: u32 = 1 << 13;
/// LVT LINT0/1: remote IRR (read-only; fixed level-triggered interrupts).
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
/// LVT LINT0/1: trigger mode (1 = level).
pub const LVT_LEVEL: u32 = 1 << 15;
/// LVT: mask.
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: mode field, bits 18:17.
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;
/// LVT timer: periodic mode bit (mode 01).
pub const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// LVT timer: TSC-deadline mode bit (mode 10).
pub const LVT_TIMER_TSC_DEADLINE: u32 = 1 << 18;
/// LVT value after reset: everything zero but the mask.
pub const LVT_RESET: u32 = LVT_MASKED;

/// Delivery mode field values (LVT and ICR bits 10:8).
pub const DM_FIXED: u32 = 0;
pub const DM_LOWEST_PRIORITY: u32 = 1;
pub const DM_SMI: u32 = 2;
pub const DM_NMI: u32 = 4;
pub const DM_INIT: u32 = 5;
pub const DM_STARTUP: u32 = 6;
pub const DM_EXTINT: u32 = 7;

/// ICR: destination mode (1 = logical).
pub const ICR_LOGICAL: u32 = 1 << 11;
/// ICR: level (1 = assert; 0 with level trigger and INIT = INIT level de-assert).
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR: trigger mode (1 = level; only meaningful for INIT level de-assert).
pub const ICR_LEVEL: u32 = 1 << 15;
/// ICR: destination shorthand field, bits 19:18.
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
/// ICR shorthand: none (use the destination field).
pub const ICR_SHORTHAND_NONE: u32 = 0;
/// ICR shorthand: self.
pub const ICR_SHORTHAND_SELF: u32 = 1;
/// ICR shorthand: all including self.
pub const ICR_SHORTHAND_ALL: u32 = 2;
/// ICR shorthand: all excluding self.
pub const ICR_SHORTHAND_OTHERS: u32 = 3;
/// ICR low bits software can write (vector, delivery mode, destination mode, level,
/// trigger, shorthand).
pub const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// xAPIC ICR high: the destination is bits 31:24.
pub const ICR_HIGH_DEST_SHIFT: u32 = 24;
/// xAPIC ICR high bits software can write.
pub const ICR_HIGH_WRITABLE: u32 = 0xff00_0000;
/// x2APIC ICR: low-half bits that are reserved (#GP when set): 13, 17:16, 31:20.
pub const X2APIC_ICR_RESERVED: u32 = 0xfff3_2000;

/// Divide configuration: the divider is encoded in bits 3, 1 and 0.
pub const TIMER_DIVIDE_WRITABLE: u32 = 0b1011;

/// x2APIC SELF IPI: only the vector may be written.
pub const SELF_IPI_WRITABLE: u32 = 0xff;

/// Broadcast destination in xAPIC mode (physical and logical).
pub const XAPIC_BROADCAST: u32 = 0xff;
/// Broadcast destination in x2APIC mode.
pub const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// Vectors 0-15 are illegal for fixed and lowest-priority interrupts.
pub const FIRST_LEGAL_VECTOR: u8 = 16;

/// The x2APIC MSR of the register at xAPIC offset `offset`.
pub const fn x2apic_msr(offset: u32) -> u32 {
    X2APIC_MSR_BASE + (offset >> 4)
}
