//! Architectural constants of x86-64 in one place: RFLAGS, CR0, CR4, EFER, XCR0, DR6 and DR7
//! bits, page-table entry and #PF error-code bits, MSR numbers and exception vectors (Intel SDM volume 3). Only facts the manual defines live
//! here; what the engine implements of them is decided elsewhere.

/// RFLAGS bits (SDM 3.4.3).
pub mod rflags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic status flags, kept in lazy form (see [`crate::CpuState::cc_op`]).
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
    /// Bits software may change with POPF at CPL0 (others are reserved or read-only).
    pub const WRITABLE: u64 = ARITH | TF | IF | DF | IOPL | NT | RF | AC | ID | VIF | VIP;
}

/// CR0 bits (SDM 2.5).
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits (SDM 2.5).
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const MCE: u64 = 1 << 6;
    pub const PGE: u64 = 1 << 7;
    pub const PCE: u64 = 1 << 8;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const UMIP: u64 = 1 << 11;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
}

/// IA32_EFER bits (SDM 2.2.1).
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// XCR0 (XFEATURE_ENABLED_MASK) state-component bits (SDM Vol. 1 13.3).
pub mod xcr0 {
    pub const X87: u64 = 1 << 0;
    pub const SSE: u64 = 1 << 1;
    pub const AVX: u64 = 1 << 2;
}

/// DR6 bits (SDM 17.2.3).
pub mod dr6 {
    /// B0-B3: breakpoint n was hit.
    pub const B_MASK: u64 = 0xf;
    /// BD: a debug-register access with DR7.GD set.
    pub const BD: u64 = 1 << 13;
    /// BS: single step (RFLAGS.TF).
    pub const BS: u64 = 1 << 14;
    /// BT: task switch (never set by this model).
    pub const BT: u64 = 1 << 15;
    /// The bits that read as 1 (reserved, and BLD/RTM, which this model does not support).
    pub const FIXED1: u64 = 0xffff_0ff0;
}

/// DR7 bits (SDM 17.2.4).
pub mod dr7 {
    /// L0/G0 ... L3/G3.
    pub const ENABLE_MASK: u64 = 0xff;
    /// GD: general detect (MOV DR faults with #DB).
    pub const GD: u64 = 1 << 13;
    /// Bit 10 reads as 1.
    pub const FIXED1: u64 = 1 << 10;
    /// Bits that must be 0 (11, 12, 14, 15; 32-63 fault on a write).
    pub const RESERVED0: u64 = (1 << 11) | (1 << 12) | (1 << 14) | (1 << 15);
}

/// MXCSR (SDM Vol. 1 10.2.3).
pub mod mxcsr {
    /// The power-up and reset value: all SIMD floating-point exceptions masked, round to
    /// nearest.
    pub const INIT: u32 = 0x1f80;
}

/// Page-table entry bits of 4-level paging (SDM Tables 4-15 to 4-20).
pub mod pte {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    /// PS: the entry maps a large page (1 GiB in a PDPTE, 2 MiB in a PDE).
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
    /// The physical-address field (MAXPHYADDR 52).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
}

/// #PF error-code bits (SDM 4.7).
pub mod pf_error {
    pub const P: u32 = 1 << 0;
    pub const W: u32 = 1 << 1;
    pub const U: u32 = 1 << 2;
    pub const RSVD: u32 = 1 << 3;
    pub const I: u32 = 1 << 4;
}

/// Model-specific register numbers (SDM volume 4).
pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const SPEC_CTRL: u32 = 0x48;
    pub const PRED_CMD: u32 = 0x49;
    pub const UCODE_REV: u32 = 0x8b;
    pub const MTRRCAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    /// IA32_XSS: the supervisor state components XSAVES/XRSTORS manage (none in krr: 0).
    pub const XSS: u32 = 0xda0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
    /// IA32_TSC_DEADLINE: the local APIC timer's deadline.
    pub const TSC_DEADLINE: u32 = 0x6e0;
    /// The x2APIC registers (local APIC register offset / 16, plus 0x800).
    pub const X2APIC_FIRST: u32 = 0x800;
    pub const X2APIC_LAST: u32 = 0x8ff;

    /// Not an MSR: the index under which MSR Read / MSR Write trace events record MOV from /
    /// to CR8, the local APIC's TPR[7:4] (no architectural MSR has it).
    pub const CR8_EVENT: u32 = 0x4b52_0008;

    /// MSRs that belong to a device outside the CPU core (the local APIC): the engine hands
    /// their reads and writes to the bus, where a recorder logs them and a replayer answers
    /// from the trace.
    pub fn is_device_msr(index: u32) -> bool {
        index == TSC_DEADLINE || (X2APIC_FIRST..=X2APIC_LAST).contains(&index)
    }
}

/// IA32_APIC_BASE bits (SDM 11.4.4, 11.12.1).
pub mod apic_base {
    /// This is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (with EN).
    pub const EXTD: u64 = 1 << 10;
    /// The local APIC is enabled.
    pub const EN: u64 = 1 << 11;
    /// The xAPIC page's physical address (bits 12 up to MAXPHYADDR).
    pub const BASE: u64 = !0xfff;

    /// Why a write of IA32_APIC_BASE is refused (#GP(0) either way).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum WriteFault {
        /// The low byte, bit 9, bits at and above MAXPHYADDR, or EXTD without x2APIC.
        ReservedBits,
        /// "EXTD without EN", x2APIC -> xAPIC, or disabled -> x2APIC.
        IllegalTransition,
    }

    /// The SDM's rules (11.12.5) for replacing IA32_APIC_BASE `current` by `new` on a CPU
    /// with `max_phys_addr` physical-address bits that does (`x2apic`) or does not report
    /// x2APIC: the one check the CPU and the local APIC model both apply.
    pub fn check_write(
        current: u64,
        new: u64,
        max_phys_addr: u32,
        x2apic: bool,
    ) -> Result<(), WriteFault> {
        let phys_mask = 1u64.checked_shl(max_phys_addr).map_or(u64::MAX, |m| m - 1);
        let mut writable = (BASE & phys_mask) | BSP | EN;
        if x2apic {
            writable |= EXTD;
        }
        if new & !writable != 0 {
            return Err(WriteFault::ReservedBits);
        }
        let mode = |b: u64| (b & EN != 0, b & EXTD != 0);
        match (mode(current), mode(new)) {
            (_, (false, true)) | ((true, true), (true, false)) | ((false, false), (true, true)) => {
                Err(WriteFault::IllegalTransition)
            }
            _ => Ok(()),
        }
    }
}

/// Architectural exception vectors (SDM Table 6-1).
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const MC: u8 = 18;
    pub const XM: u8 = 19;
    pub const VE: u8 = 20;
    pub const CP: u8 = 21;
}

/// Does delivering exception `vector` push an error code (SDM Table 6-1)? #DF, #TS, #NP, #SS,
/// #GP, #PF, #AC and #CP do (the engine never raises #CP).
pub fn pushes_error_code(vector: u8) -> bool {
    matches!(
        vector,
        vector::DF
            | vector::TS
            | vector::NP
            | vector::SS
            | vector::GP
            | vector::PF
            | vector::AC
            | vector::CP
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_vectors() {
        let with: Vec<u8> = (0..=255).filter(|&v| pushes_error_code(v)).collect();
        assert_eq!(with, [8, 10, 11, 12, 13, 14, 17, 21]);
    }

    #[test]
    fn arith_flags_mask() {
        assert_eq!(rflags::ARITH, 0x8d5);
    }
}
