//! Instructions of extensions the guest's CPU model does not report behave as on a CPU without
//! them: #UD (QEMU's TCG does the same), except the encodings older CPUs execute as other
//! instructions: LZCNT runs as BSR without LZCNT (ABM), TZCNT as BSF without BMI1 (their F3
//! prefix is then ignored, SDM LZCNT/TZCNT). Applied once per instruction when a block is
//! decoded, so translated code pays nothing.

use iced_x86::{Code, CpuidFeature as F, Instruction};
use krr_runtime::cpuid::CpuidTable;

/// Where a feature's CPUID bit is: (leaf, subleaf, register 0..3 = EAX..EDX, bit).
fn feature_bit(f: F) -> Option<(u32, u32, usize, u32)> {
    const EAX: usize = 0;
    const EBX: usize = 1;
    const ECX: usize = 2;
    const EDX: usize = 3;
    Some(match f {
        F::TSC => (1, 0, EDX, 4),
        F::MSR => (1, 0, EDX, 5),
        F::CX8 => (1, 0, EDX, 8),
        F::SEP => (1, 0, EDX, 11),
        F::CMOV => (1, 0, EDX, 15),
        F::CLFSH => (1, 0, EDX, 19),
        F::MMX => (1, 0, EDX, 23),
        F::FXSR => (1, 0, EDX, 24),
        F::SSE => (1, 0, EDX, 25),
        F::SSE2 => (1, 0, EDX, 26),
        F::SSE3 => (1, 0, ECX, 0),
        F::PCLMULQDQ => (1, 0, ECX, 1),
        F::MONITOR => (1, 0, ECX, 3),
        F::SSSE3 => (1, 0, ECX, 9),
        F::FMA => (1, 0, ECX, 12),
        F::CMPXCHG16B => (1, 0, ECX, 13),
        F::SSE4_1 => (1, 0, ECX, 19),
        F::SSE4_2 => (1, 0, ECX, 20),
        F::MOVBE => (1, 0, ECX, 22),
        F::POPCNT => (1, 0, ECX, 23),
        F::AES => (1, 0, ECX, 25),
        F::XSAVE => (1, 0, ECX, 26),
        F::AVX => (1, 0, ECX, 28),
        F::F16C => (1, 0, ECX, 29),
        F::RDRAND => (1, 0, ECX, 30),
        F::FSGSBASE => (7, 0, EBX, 0),
        F::BMI1 => (7, 0, EBX, 3),
        F::AVX2 => (7, 0, EBX, 5),
        F::BMI2 => (7, 0, EBX, 8),
        F::INVPCID => (7, 0, EBX, 10),
        F::RDSEED => (7, 0, EBX, 18),
        F::ADX => (7, 0, EBX, 19),
        F::SMAP => (7, 0, EBX, 20),
        F::CLFLUSHOPT => (7, 0, EBX, 23),
        F::CLWB => (7, 0, EBX, 24),
        F::SHA => (7, 0, EBX, 29),
        F::RDPID => (7, 0, ECX, 22),
        F::XSAVEOPT => (0xd, 1, EAX, 0),
        F::XSAVEC => (0xd, 1, EAX, 1),
        F::XSAVES => (0xd, 1, EAX, 3),
        F::LZCNT => (0x8000_0001, 0, ECX, 5),
        F::RDTSCP => (0x8000_0001, 0, EDX, 27),
        _ => return None,
    })
}

fn reports(table: &CpuidTable, f: F) -> bool {
    match feature_bit(f) {
        Some((leaf, subleaf, reg, bit)) => table.lookup(leaf, subleaf)[reg] >> bit & 1 == 1,
        None => true,
    }
}

/// What `insn` is on a CPU reporting `table`: unchanged, the older instruction its encoding
/// means there, or `Code::INVALID` (#UD; length and address kept).
pub fn apply(table: &CpuidTable, insn: &mut Instruction) {
    let older = match insn.code() {
        Code::Lzcnt_r16_rm16 => Some((F::LZCNT, Code::Bsr_r16_rm16)),
        Code::Lzcnt_r32_rm32 => Some((F::LZCNT, Code::Bsr_r32_rm32)),
        Code::Lzcnt_r64_rm64 => Some((F::LZCNT, Code::Bsr_r64_rm64)),
        Code::Tzcnt_r16_rm16 => Some((F::BMI1, Code::Bsf_r16_rm16)),
        Code::Tzcnt_r32_rm32 => Some((F::BMI1, Code::Bsf_r32_rm32)),
        Code::Tzcnt_r64_rm64 => Some((F::BMI1, Code::Bsf_r64_rm64)),
        _ => None,
    };
    if let Some((feature, code)) = older {
        if !reports(table, feature) {
            insn.set_code(code);
        }
        return;
    }
    if !insn.cpuid_features().iter().all(|&f| reports(table, f)) {
        insn.set_code(Code::INVALID);
    }
}
