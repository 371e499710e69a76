//! What kind of instruction this is, for the router and the backends: the system
//! instructions (run on the CPU state by `Helper::System`), REP string instructions (which a
//! backend may hand over whole), and the MOV forms that stay in these semantics.

use super::*;
use iced_x86::{Mnemonic, OpKind};

/// MOV between GPRs, memory and immediates (not segment, control or debug registers).
pub(super) fn is_gpr_form(insn: &Instruction) -> bool {
    debug_assert_eq!(insn.op_count(), 2);
    let gpr_or_not_reg = |k: OpKind, r: Register| k != OpKind::Register || is_gpr(r);
    gpr_or_not_reg(insn.op0_kind(), insn.op0_register())
        && gpr_or_not_reg(insn.op1_kind(), insn.op1_register())
}

/// JMP/CALL m16:16/32/64.
pub(super) fn is_far_indirect(insn: &Instruction) -> bool {
    insn.op0_kind() == OpKind::Memory
        && matches!(
            insn.memory_size(),
            iced_x86::MemorySize::SegPtr16
                | iced_x86::MemorySize::SegPtr32
                | iced_x86::MemorySize::SegPtr64
        )
}

/// MOVSD/CMPSD, the SSE2 scalar instructions, share their mnemonics with the string ones.
pub(super) fn is_sse_movsd(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Movsd | Mnemonic::Cmpsd)
        && !matches!(
            insn.code(),
            iced_x86::Code::Movsd_m32_m32 | iced_x86::Code::Cmpsd_m32_m32
        )
}

/// Is `insn` a system instruction, run on the CPU state by `crate::system` rather than
/// expressed in these semantics (control and segment registers, MSRs, far transfers, ...)?
pub fn is_system_instruction(insn: &Instruction) -> bool {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Retf => true,
        M::Jmp | M::Call => is_far_indirect(insn),
        _ => is_system_only(insn),
    }
}

/// The system instructions other than the far transfers (see [`is_system_instruction`]).
pub(super) fn is_system_only(insn: &Instruction) -> bool {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Mov => (0..insn.op_count()).any(|i| {
            insn.op_kind(i) == OpKind::Register && {
                let r = insn.op_register(i);
                r.is_cr() || r.is_dr() || r.is_segment_register()
            }
        }),
        M::Push | M::Pop => {
            insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register()
        }
        m => matches!(
            m,
            M::Hlt
                | M::Cli
                | M::Sti
                | M::Lgdt
                | M::Lidt
                | M::Sgdt
                | M::Sidt
                | M::Lldt
                | M::Sldt
                | M::Ltr
                | M::Str
                | M::Lmsw
                | M::Smsw
                | M::Clts
                | M::Invlpg
                | M::Invpcid
                | M::Wbinvd
                | M::Invd
                | M::Wbnoinvd
                | M::Clflush
                | M::Clflushopt
                | M::Clwb
                | M::Rdmsr
                | M::Wrmsr
                | M::Rdtsc
                | M::Rdtscp
                | M::Rdpmc
                | M::Rdrand
                | M::Rdseed
                | M::Rdpid
                | M::Syscall
                | M::Sysret
                | M::Sysretq
                | M::Iretq
                | M::Iretd
                | M::Iret
                | M::Swapgs
                | M::Rdfsbase
                | M::Rdgsbase
                | M::Wrfsbase
                | M::Wrgsbase
                | M::Xgetbv
                | M::Xsetbv
                | M::Fxsave
                | M::Fxsave64
                | M::Fxrstor
                | M::Fxrstor64
                | M::Xsave
                | M::Xsave64
                | M::Xsaveopt
                | M::Xsaveopt64
                | M::Xrstor
                | M::Xrstor64
                | M::Fninit
                | M::Fnstcw
                | M::Fldcw
                | M::Fnstsw
                | M::Fnclex
                | M::Wait
                | M::Clac
                | M::Stac
                | M::In
                | M::Out
                | M::Insb
                | M::Insw
                | M::Insd
                | M::Outsb
                | M::Outsw
                | M::Outsd
                | M::Int
                | M::Int1
                | M::Into
                | M::Lsl
                | M::Lar
                | M::Verr
                | M::Verw
        ),
    }
}

/// A REP/REPNE-prefixed string instruction (MOVS, STOS, LODS, CMPS, SCAS): one instruction
/// however many iterations it runs. A backend may prefer to hand these over whole.
pub fn is_rep_string(insn: &Instruction) -> bool {
    use Mnemonic as M;
    (insn.has_rep_prefix() || insn.has_repne_prefix())
        && matches!(
            insn.mnemonic(),
            M::Movsb
                | M::Movsw
                | M::Movsd
                | M::Movsq
                | M::Stosb
                | M::Stosw
                | M::Stosd
                | M::Stosq
                | M::Lodsb
                | M::Lodsw
                | M::Lodsd
                | M::Lodsq
                | M::Cmpsb
                | M::Cmpsw
                | M::Cmpsd
                | M::Cmpsq
                | M::Scasb
                | M::Scasw
                | M::Scasd
                | M::Scasq
        )
        && !is_sse_movsd(insn)
}
