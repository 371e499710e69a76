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

/// Far JMP/CALL: through memory, or direct (ptr16:16/32, compatibility mode only).
pub(super) fn is_far(insn: &Instruction) -> bool {
    is_far_indirect(insn) || matches!(insn.op0_kind(), OpKind::FarBranch16 | OpKind::FarBranch32)
}

/// MOVSD/CMPSD, the SSE2 scalar instructions, share their mnemonics with the string ones.
fn is_sse_movsd(insn: &Instruction) -> bool {
    matches!(insn.mnemonic(), Mnemonic::Movsd | Mnemonic::Cmpsd)
        && !matches!(
            insn.code(),
            iced_x86::Code::Movsd_m32_m32 | iced_x86::Code::Cmpsd_m32_m32
        )
}

/// Which part of `crate::system` runs a system instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemFamily {
    /// HLT, CLI/STI, CLAC/STAC, LMSW/CLTS, MOV to and from CR/DR and segment registers, TLB and
    /// cache maintenance.
    Control,
    /// Descriptor tables, PUSH/POP of segment registers, LSL/LAR/VERR/VERW.
    Segments,
    /// RDMSR/WRMSR and the FS/GS base instructions.
    Msr,
    /// RDTSC/RDTSCP, RDPMC, RDRAND/RDSEED, RDPID.
    Inputs,
    /// SYSCALL/SYSRET, IRET, SWAPGS, INT n/INTO/INT1.
    Privilege,
    /// Far RET, and far JMP/CALL through memory.
    FarTransfer,
    /// XGETBV/XSETBV, FXSAVE/FXRSTOR, XSAVE*/XRSTOR, x87 control.
    ExtendedState,
    /// IN/OUT/INS/OUTS.
    PortIo,
    /// The other x87 instructions (escape opcodes D8-DF) and the MMX ones, run by the host.
    X87,
    /// Instructions only compatibility mode has: PUSHA/POPA, the BCD adjustments, SALC,
    /// BOUND, ARPL, LDS/LES, direct far JMP/CALL; and SYSENTER/SYSEXIT.
    Compat,
    /// The VEX-encoded vector instructions (AVX, AVX2, FMA, F16C), run by the host.
    Avx,
}

/// Is `insn` a system instruction, run on the CPU state by `crate::system` rather than
/// expressed in these semantics (control and segment registers, MSRs, far transfers, ...)?
pub fn is_system_instruction(insn: &Instruction) -> bool {
    system_family(insn).is_some()
}

/// The system instructions other than the far transfers (see [`is_system_instruction`]).
pub(super) fn is_system_only(insn: &Instruction) -> bool {
    system_family(insn).is_some_and(|f| f != SystemFamily::FarTransfer)
}

/// The family of a system instruction, `None` for any other (the one list of them).
pub fn system_family(insn: &Instruction) -> Option<SystemFamily> {
    use Mnemonic as M;
    use SystemFamily as F;
    let segment_reg =
        |i: u32| insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_segment_register();
    Some(match insn.mnemonic() {
        M::Mov => {
            let system_reg = (0..insn.op_count()).any(|i| {
                insn.op_kind(i) == OpKind::Register && {
                    let r = insn.op_register(i);
                    r.is_cr() || r.is_dr() || r.is_segment_register()
                }
            });
            return system_reg.then_some(F::Control);
        }
        M::Push | M::Pop => return segment_reg(0).then_some(F::Segments),
        M::Retf => F::FarTransfer,
        M::Jmp | M::Call => return is_far(insn).then_some(F::FarTransfer),
        M::Hlt
        | M::Cli
        | M::Sti
        | M::Clac
        | M::Stac
        | M::Lmsw
        | M::Clts
        | M::Invlpg
        | M::Invpcid
        | M::Wbinvd
        | M::Invd
        | M::Wbnoinvd
        | M::Clflush
        | M::Clflushopt
        | M::Clwb => F::Control,
        M::Lgdt
        | M::Lidt
        | M::Sgdt
        | M::Sidt
        | M::Sldt
        | M::Str
        | M::Smsw
        | M::Lldt
        | M::Ltr
        | M::Lsl
        | M::Lar
        | M::Verr
        | M::Verw => F::Segments,
        M::Rdmsr | M::Wrmsr | M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => F::Msr,
        M::Rdtsc | M::Rdtscp | M::Rdpmc | M::Rdrand | M::Rdseed | M::Rdpid | M::Vmcall => F::Inputs,
        M::Syscall
        | M::Sysret
        | M::Sysretq
        | M::Iretq
        | M::Iretd
        | M::Iret
        | M::Swapgs
        | M::Int
        | M::Into
        | M::Int1 => F::Privilege,
        M::Xgetbv
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
        | M::Xsavec
        | M::Xsavec64
        | M::Xsaves
        | M::Xsaves64
        | M::Xrstors
        | M::Xrstors64
        | M::Fninit
        | M::Fnstcw
        | M::Fnstsw
        | M::Fnclex
        | M::Wait => F::ExtendedState,
        M::Pusha
        | M::Pushad
        | M::Popa
        | M::Popad
        | M::Daa
        | M::Das
        | M::Aaa
        | M::Aas
        | M::Aam
        | M::Aad
        | M::Salc
        | M::Bound
        | M::Arpl
        | M::Lds
        | M::Les
        | M::Sysenter
        | M::Sysexit
        | M::Sysexitq => F::Compat,
        M::In | M::Out | M::Insb | M::Insw | M::Insd | M::Outsb | M::Outsw | M::Outsd => F::PortIo,
        _ if is_x87_escape(insn) || uses_mmx(insn) => F::X87,
        _ if is_vex_vector(insn) && !inline_vex(insn) => F::Avx,
        _ => return None,
    })
}

/// Is `insn` a VEX instruction on vector state (so not BMI1/BMI2, whose VEX forms work on
/// GPRs only)?
pub fn is_vex_vector(insn: &Instruction) -> bool {
    use iced_x86::OpCodeOperandKind as K;
    let oc = insn.op_code();
    oc.encoding() == iced_x86::EncodingKind::VEX
        && (matches!(
            insn.mnemonic(),
            Mnemonic::Vzeroupper | Mnemonic::Vzeroall | Mnemonic::Vldmxcsr | Mnemonic::Vstmxcsr
        ) || oc.op_kinds().iter().any(|k| {
            matches!(
                k,
                K::xmm_reg
                    | K::xmm_rm
                    | K::xmm_vvvv
                    | K::xmm_is4
                    | K::xmm_is5
                    | K::xmm_or_mem
                    | K::ymm_reg
                    | K::ymm_rm
                    | K::ymm_vvvv
                    | K::ymm_is4
                    | K::ymm_is5
                    | K::ymm_or_mem
                    | K::mem_vsib32x
                    | K::mem_vsib32y
                    | K::mem_vsib64x
                    | K::mem_vsib64y
            )
        }))
}

/// The VEX forms the semantics write inline (`sse/vex.rs`): the moves, logic and integer
/// operations memcpy/strlen-class code runs, and VZEROUPPER.
pub fn inline_vex(insn: &Instruction) -> bool {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Vmovdqu
        | M::Vmovdqa
        | M::Vmovups
        | M::Vmovaps
        | M::Vmovupd
        | M::Vmovapd
        | M::Vpxor
        | M::Vpor
        | M::Vpand
        | M::Vpandn
        | M::Vxorps
        | M::Vxorpd
        | M::Vorps
        | M::Vorpd
        | M::Vandps
        | M::Vandpd
        | M::Vandnps
        | M::Vandnpd
        | M::Vpcmpeqb
        | M::Vpcmpeqw
        | M::Vpcmpeqd
        | M::Vpcmpeqq
        | M::Vpminub
        | M::Vpmaxub
        | M::Vpaddb
        | M::Vpaddw
        | M::Vpaddd
        | M::Vpaddq
        | M::Vpsubb
        | M::Vpsubw
        | M::Vpsubd
        | M::Vpsubq
        | M::Vpmovmskb
        | M::Vptest
        | M::Vzeroupper => true,
        // The register and m8 forms (EVEX's are not VEX).
        M::Vpbroadcastb => true,
        _ => false,
    }
}

/// An instruction on the MMX registers (or EMMS): they alias the x87 registers.
fn uses_mmx(insn: &Instruction) -> bool {
    use iced_x86::OpCodeOperandKind as K;
    insn.mnemonic() == Mnemonic::Emms
        || insn
            .op_code()
            .op_kinds()
            .iter()
            .any(|k| matches!(k, K::mm_reg | K::mm_rm | K::mm_or_mem))
}

/// An x87 escape opcode (D8-DF) instruction.
pub fn is_x87_escape(insn: &Instruction) -> bool {
    let oc = insn.op_code();
    // Register forms have the ModRM byte in the opcode (e.g. 0xd8c0 for FADD ST0, ST(i)).
    let first = if oc.op_code_len() == 2 {
        oc.op_code() >> 8
    } else {
        oc.op_code()
    };
    oc.encoding() == iced_x86::EncodingKind::Legacy
        && oc.table() == iced_x86::OpCodeTableKind::Normal
        && (0xd8..=0xdf).contains(&first)
}

/// A REP/REPNE-prefixed string instruction (MOVS, STOS, LODS, CMPS, SCAS): one instruction
/// however many iterations it runs. A backend may prefer to hand these over whole.
pub fn is_rep_string(insn: &Instruction) -> bool {
    (insn.has_rep_prefix() || insn.has_repne_prefix()) && is_string(insn)
}

/// A string instruction (MOVS, STOS, LODS, CMPS, SCAS), with or without a REP prefix (not
/// the SSE2 MOVSD/CMPSD that share two of the mnemonics).
pub(super) fn is_string(insn: &Instruction) -> bool {
    use Mnemonic as M;
    matches!(
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
    ) && !is_sse_movsd(insn)
}
