//! Random test cases per iced-x86 [`Code`] (one encoding form), for running natively and in
//! the engine from the same state.
//!
//! Memory layout (fixed, only contents change; see [`layout`]): the code lives in the page at
//! [`CODE_PAGE`] (sometimes straddling into the next page), three read/write regions follow at
//! [`DATA0`], [`DATA1`] and [`STACK`] with unmapped gaps between them. Every memory operand is
//! aimed, through random-but-controlled base/index/displacement values, inside a region (or,
//! in roughly one case in [`GenOptions::fault_one_in`], deliberately at an unmapped or
//! non-canonical address). Generated instructions are encoded with iced-x86 and decoded back to
//! check that the bytes are the requested form; their memory accesses are recomputed from the
//! final state and checked to be inside the regions.
//!
//! Initial states: GPRs mix uniform random and edge values (0, 1, -1, sign boundaries, powers
//! of two...), RFLAGS has random CF/PF/AF/ZF/SF/OF/DF plus IF and bit 1, XMM registers mix
//! random bits and float edge values (zeros, denormals, infinities, NaNs, integer-conversion
//! boundaries), MXCSR is 0x1f80. Per-form tuning ([`builtin_hook`], [`GenOptions::hooks`])
//! steers DIV/IDIV to mostly valid quotients, shift counts to masking edges, CMPXCHG to equal
//! comparands half the time, and so on. Control transfers are followed by a filler whose
//! execution shows in R11, and only target the filler or the end of the code (or, rarely,
//! unmapped/non-canonical addresses).

use super::compare::{flag_effect, x86_flags, CF, DF, OF, PF, TF};
use super::rng::Rng;
use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, Encoder, EncodingKind, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpCodeOperandKind as K, OpKind, Register,
    RepPrefixKind,
};
use krr_jit::snippet::{Region, Snippet, UserState};

/// The code page (code may straddle into the following page).
pub const CODE_PAGE: u64 = 0x1000_0000;
/// General data region (two pages, so accesses can straddle a page boundary inside it).
pub const DATA0: u64 = 0x2000_0000;
pub const DATA0_LEN: u64 = 0x2000;
/// Second data region (string destinations, second operands).
pub const DATA1: u64 = 0x2100_0000;
pub const DATA1_LEN: u64 = 0x1000;
/// The stack region.
pub const STACK: u64 = 0x2200_0000;
pub const STACK_LEN: u64 = 0x2000;

pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// The regions every generated snippet gets: `(address, length)`.
pub fn layout() -> [(u64, u64); 3] {
    [(DATA0, DATA0_LEN), (DATA1, DATA1_LEN), (STACK, STACK_LEN)]
}

/// `lea r11, [r11+1]`: the filler placed after control transfers; it does not touch the
/// flags, so whether it ran (branch not taken) shows in R11 only.
const FILLER: [u8; 4] = [0x4d, 0x8d, 0x5b, 0x01];

// ---------------------------------------------------------------------------------------------
// The covered forms.

use Mnemonic as M;

/// Mnemonics whose 64-bit-mode forms are covered.
const MNEMONICS: &[Mnemonic] = &[
    // Data movement.
    M::Mov,
    M::Movzx,
    M::Movsx,
    M::Movsxd,
    M::Movbe,
    M::Lea,
    M::Xchg,
    M::Cmpxchg,
    M::Cmpxchg8b,
    M::Cmpxchg16b,
    M::Xadd,
    M::Bswap,
    M::Push,
    M::Pop,
    M::Pushf,
    M::Pushfq,
    M::Popf,
    M::Popfq,
    // Arithmetic and logic.
    M::Add,
    M::Adc,
    M::Sub,
    M::Sbb,
    M::And,
    M::Or,
    M::Xor,
    M::Cmp,
    M::Test,
    M::Inc,
    M::Dec,
    M::Neg,
    M::Not,
    M::Shl,
    M::Sal,
    M::Shr,
    M::Sar,
    M::Rol,
    M::Ror,
    M::Rcl,
    M::Rcr,
    M::Shld,
    M::Shrd,
    M::Mul,
    M::Imul,
    M::Div,
    M::Idiv,
    M::Bt,
    M::Bts,
    M::Btr,
    M::Btc,
    M::Bsf,
    M::Bsr,
    M::Popcnt,
    M::Lzcnt,
    M::Tzcnt,
    M::Andn,
    M::Bextr,
    M::Blsi,
    M::Blsmsk,
    M::Blsr,
    M::Bzhi,
    M::Pdep,
    M::Pext,
    M::Rorx,
    M::Sarx,
    M::Shlx,
    M::Shrx,
    M::Mulx,
    M::Adcx,
    M::Adox,
    // Condition codes.
    M::Seto,
    M::Setno,
    M::Setb,
    M::Setae,
    M::Sete,
    M::Setne,
    M::Setbe,
    M::Seta,
    M::Sets,
    M::Setns,
    M::Setp,
    M::Setnp,
    M::Setl,
    M::Setge,
    M::Setle,
    M::Setg,
    M::Cmovo,
    M::Cmovno,
    M::Cmovb,
    M::Cmovae,
    M::Cmove,
    M::Cmovne,
    M::Cmovbe,
    M::Cmova,
    M::Cmovs,
    M::Cmovns,
    M::Cmovp,
    M::Cmovnp,
    M::Cmovl,
    M::Cmovge,
    M::Cmovle,
    M::Cmovg,
    // Control transfer.
    M::Jo,
    M::Jno,
    M::Jb,
    M::Jae,
    M::Je,
    M::Jne,
    M::Jbe,
    M::Ja,
    M::Js,
    M::Jns,
    M::Jp,
    M::Jnp,
    M::Jl,
    M::Jge,
    M::Jle,
    M::Jg,
    M::Jmp,
    M::Call,
    M::Ret,
    M::Loop,
    M::Loope,
    M::Loopne,
    M::Jrcxz,
    M::Jecxz,
    // Conversions and flag operations.
    M::Cbw,
    M::Cwde,
    M::Cdqe,
    M::Cwd,
    M::Cdq,
    M::Cqo,
    M::Clc,
    M::Stc,
    M::Cmc,
    M::Cld,
    M::Std,
    M::Lahf,
    M::Sahf,
    // Strings.
    M::Movsb,
    M::Movsw,
    M::Movsd,
    M::Movsq,
    M::Stosb,
    M::Stosw,
    M::Stosd,
    M::Stosq,
    M::Lodsb,
    M::Lodsw,
    M::Lodsd,
    M::Lodsq,
    M::Cmpsb,
    M::Cmpsw,
    M::Cmpsd,
    M::Cmpsq,
    M::Scasb,
    M::Scasw,
    M::Scasd,
    M::Scasq,
    // Misc.
    M::Enter,
    M::Leave,
    M::Nop,
    M::Endbr64,
    M::Pause,
    M::Lfence,
    M::Mfence,
    M::Sfence,
    // SSE/SSE2.
    M::Movd,
    M::Movq,
    M::Movdqa,
    M::Movdqu,
    M::Movaps,
    M::Movups,
    M::Movss,
    M::Pxor,
    M::Por,
    M::Pand,
    M::Pandn,
    M::Pcmpeqb,
    M::Pcmpeqw,
    M::Pcmpeqd,
    M::Pcmpeqq,
    M::Pcmpgtb,
    M::Pcmpgtw,
    M::Pcmpgtd,
    M::Pmovmskb,
    M::Paddb,
    M::Paddw,
    M::Paddd,
    M::Paddq,
    M::Psubb,
    M::Psubw,
    M::Psubd,
    M::Psubq,
    M::Pshufd,
    M::Pshuflw,
    M::Pshufhw,
    M::Punpcklbw,
    M::Punpcklwd,
    M::Punpckldq,
    M::Punpcklqdq,
    M::Punpckhbw,
    M::Punpckhwd,
    M::Punpckhdq,
    M::Punpckhqdq,
    M::Psllw,
    M::Pslld,
    M::Psllq,
    M::Psrlw,
    M::Psrld,
    M::Psrlq,
    M::Psraw,
    M::Psrad,
    M::Pslldq,
    M::Psrldq,
    M::Pminub,
    M::Pmaxub,
    M::Xorps,
    M::Andps,
    M::Ucomiss,
    M::Comiss,
    M::Ucomisd,
    M::Comisd,
    M::Cvtsi2sd,
    M::Cvttsd2si,
    M::Addsd,
    M::Subsd,
    M::Mulsd,
    M::Divsd,
];

/// The BMI1/BMI2 forms, the only VEX-encoded ones covered.
const BMI_VEX: &[Mnemonic] = &[
    M::Andn,
    M::Bextr,
    M::Blsi,
    M::Blsmsk,
    M::Blsr,
    M::Bzhi,
    M::Pdep,
    M::Pext,
    M::Rorx,
    M::Sarx,
    M::Shlx,
    M::Shrx,
    M::Mulx,
];

/// Mnemonics that may take a LOCK prefix with a memory destination.
const LOCKABLE: &[Mnemonic] = &[
    M::Add,
    M::Adc,
    M::Sub,
    M::Sbb,
    M::And,
    M::Or,
    M::Xor,
    M::Inc,
    M::Dec,
    M::Neg,
    M::Not,
    M::Xchg,
    M::Cmpxchg,
    M::Xadd,
    M::Bts,
    M::Btr,
    M::Btc,
    M::Cmpxchg8b,
    M::Cmpxchg16b,
];

const STACK_USERS: &[Mnemonic] = &[
    M::Push,
    M::Pop,
    M::Pushf,
    M::Pushfq,
    M::Popf,
    M::Popfq,
    M::Call,
    M::Ret,
    M::Enter,
    M::Leave,
];

pub fn is_control(mn: Mnemonic) -> bool {
    matches!(
        mn,
        M::Jo
            | M::Jno
            | M::Jb
            | M::Jae
            | M::Je
            | M::Jne
            | M::Jbe
            | M::Ja
            | M::Js
            | M::Jns
            | M::Jp
            | M::Jnp
            | M::Jl
            | M::Jge
            | M::Jle
            | M::Jg
            | M::Jmp
            | M::Call
            | M::Ret
            | M::Loop
            | M::Loope
            | M::Loopne
            | M::Jrcxz
            | M::Jecxz
    )
}

fn is_string(code: Code) -> bool {
    string_info(code).is_some()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StrOp {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// The string operation and element size of a string-instruction form.
fn string_info(code: Code) -> Option<(StrOp, u64)> {
    use Code as C;
    Some(match code {
        C::Movsb_m8_m8 => (StrOp::Movs, 1),
        C::Movsw_m16_m16 => (StrOp::Movs, 2),
        C::Movsd_m32_m32 => (StrOp::Movs, 4),
        C::Movsq_m64_m64 => (StrOp::Movs, 8),
        C::Stosb_m8_AL => (StrOp::Stos, 1),
        C::Stosw_m16_AX => (StrOp::Stos, 2),
        C::Stosd_m32_EAX => (StrOp::Stos, 4),
        C::Stosq_m64_RAX => (StrOp::Stos, 8),
        C::Lodsb_AL_m8 => (StrOp::Lods, 1),
        C::Lodsw_AX_m16 => (StrOp::Lods, 2),
        C::Lodsd_EAX_m32 => (StrOp::Lods, 4),
        C::Lodsq_RAX_m64 => (StrOp::Lods, 8),
        C::Cmpsb_m8_m8 => (StrOp::Cmps, 1),
        C::Cmpsw_m16_m16 => (StrOp::Cmps, 2),
        C::Cmpsd_m32_m32 => (StrOp::Cmps, 4),
        C::Cmpsq_m64_m64 => (StrOp::Cmps, 8),
        C::Scasb_AL_m8 => (StrOp::Scas, 1),
        C::Scasw_AX_m16 => (StrOp::Scas, 2),
        C::Scasd_EAX_m32 => (StrOp::Scas, 4),
        C::Scasq_RAX_m64 => (StrOp::Scas, 8),
        _ => return None,
    })
}

/// Operand kinds the generator knows how to fill.
fn supported_kind(k: K) -> bool {
    matches!(
        k,
        K::mem_offs
            | K::mem
            | K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::xmm_or_mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_rm
            | K::r16_opcode
            | K::r32_reg
            | K::r32_rm
            | K::r32_opcode
            | K::r32_vvvv
            | K::r64_reg
            | K::r64_rm
            | K::r64_opcode
            | K::r64_vvvv
            | K::xmm_reg
            | K::xmm_rm
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
            | K::seg_rSI
            | K::es_rDI
            | K::br64_1
            | K::br64_4
    )
}

/// Why `code` is not covered, or `None` if it is.
pub fn exclusion_reason(code: Code) -> Option<&'static str> {
    let mn = code.mnemonic();
    if !MNEMONICS.contains(&mn) {
        return Some("mnemonic not in the covered set");
    }
    let info = code.op_code();
    if !info.is_instruction() || !info.mode64() {
        return Some("not valid in 64-bit mode");
    }
    match info.encoding() {
        EncodingKind::Legacy => {}
        EncodingKind::VEX if BMI_VEX.contains(&mn) => {}
        _ => return Some("VEX/EVEX/XOP/3DNow! encoding"),
    }
    if !info.op_kinds().iter().all(|k| supported_kind(*k)) {
        return Some("operand kind not generated (MMX, segment/control/debug register, far or 16/32-bit branch)");
    }
    if matches!(mn, M::Jmp | M::Call) && info.op_kind(0) == K::mem {
        return Some("far indirect transfer");
    }
    if is_control(mn) && info.operand_size() == 16 {
        return Some("16-bit operand-size control transfer (Intel and AMD differ)");
    }
    if code == Code::Cmpsd_xmm_xmmm64_imm8 {
        return Some("SSE CMPSD not in the covered set");
    }
    if !host_supports(code) {
        return Some("not supported by this CPU");
    }
    None
}

/// All covered forms, in `Code` order.
pub fn covered_codes() -> Vec<Code> {
    Code::values()
        .filter(|c| exclusion_reason(*c).is_none())
        .collect()
}

fn host_supports(code: Code) -> bool {
    let mut ins = Instruction::default();
    ins.set_code(code);
    ins.cpuid_features().iter().all(|f| {
        // ENDBR64 sits in the hint-NOP space: a NOP on CPUs without CET-IBT.
        feature_ok(*f) || (*f == CpuidFeature::CET_IBT && code == Code::Endbr64)
    })
}

fn feature_ok(f: CpuidFeature) -> bool {
    use CpuidFeature as F;
    let leaf1 = std::arch::x86_64::__cpuid(1);
    match f {
        F::INTEL8086
        | F::INTEL186
        | F::INTEL286
        | F::INTEL386
        | F::INTEL486
        | F::X64
        | F::CPUID
        | F::MULTIBYTENOP
        | F::PAUSE => true,
        F::CMOV => leaf1.edx & (1 << 15) != 0,
        F::CX8 => leaf1.edx & (1 << 8) != 0,
        F::CMPXCHG16B => is_x86_feature_detected!("cmpxchg16b"),
        F::SSE => is_x86_feature_detected!("sse"),
        F::SSE2 => is_x86_feature_detected!("sse2"),
        F::SSE3 => is_x86_feature_detected!("sse3"),
        F::SSSE3 => is_x86_feature_detected!("ssse3"),
        F::SSE4_1 => is_x86_feature_detected!("sse4.1"),
        F::SSE4_2 => is_x86_feature_detected!("sse4.2"),
        F::POPCNT => is_x86_feature_detected!("popcnt"),
        F::LZCNT => is_x86_feature_detected!("lzcnt"),
        F::BMI1 => is_x86_feature_detected!("bmi1"),
        F::BMI2 => is_x86_feature_detected!("bmi2"),
        F::ADX => is_x86_feature_detected!("adx"),
        F::MOVBE => is_x86_feature_detected!("movbe"),
        _ => false,
    }
}

/// Forms that may appear inside multi-instruction blocks: no control transfers, nothing that
/// can set TF (POPF), nothing whose result is architecturally undefined.
pub fn block_eligible(code: Code) -> bool {
    let mn = code.mnemonic();
    if is_control(mn)
        || matches!(mn, M::Enter | M::Leave | M::Popf | M::Popfq)
        || code == Code::Bswap_r16
    {
        return false;
    }
    !(matches!(mn, M::Shld | M::Shrd) && code.op_code().operand_size() == 16)
}

// ---------------------------------------------------------------------------------------------
// Registers and values.

const GPR64: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

const RSP_BIT: u16 = 1 << 4;

fn gpr_index(reg: Register) -> Option<usize> {
    let full = reg.full_register();
    GPR64.iter().position(|r| *r == full)
}

fn gpr_bit(reg: Register) -> u16 {
    gpr_index(reg).map_or(0, |i| 1 << i)
}

/// The `i`-th GPR (x86 numbering) with the given size in bytes.
fn gpr_of_size(i: usize, size: usize) -> Register {
    let base = match size {
        1 => Register::AL,
        2 => Register::AX,
        4 => Register::EAX,
        _ => Register::RAX,
    };
    if size == 1 && i >= 4 {
        // AL..BL, then SPL..R15L after the four high-byte registers.
        return Register::try_from(Register::SPL as usize + i - 4).expect("register");
    }
    Register::try_from(base as usize + i).expect("register")
}

fn xmm(i: usize) -> Register {
    Register::try_from(Register::XMM0 as usize + i).expect("register")
}

/// Value of a register (or of a segment base, as iced-x86's address calculation wants it)
/// in `st`.
pub fn read_reg(st: &UserState, reg: Register) -> u64 {
    match reg {
        Register::ES | Register::CS | Register::SS | Register::DS => return 0,
        Register::FS => return st.fs_base,
        Register::GS => return st.gs_base,
        Register::RIP => return st.rip,
        _ => {}
    }
    let Some(i) = gpr_index(reg) else { return 0 };
    let v = st.gpr[i];
    if matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        return (v >> 8) & 0xff;
    }
    match reg.size() {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

/// Writes `value` into the bits of `reg` (a GPR of any size), leaving the other bits alone.
fn write_reg_bits(st: &mut UserState, reg: Register, value: u64) {
    let Some(i) = gpr_index(reg) else { return };
    let (mask, shift) = if matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    ) {
        (0xffu64, 8)
    } else {
        match reg.size() {
            1 => (0xff, 0),
            2 => (0xffff, 0),
            4 => (0xffff_ffff, 0),
            _ => (u64::MAX, 0),
        }
    };
    st.gpr[i] = (st.gpr[i] & !(mask << shift)) | ((value & mask) << shift);
}

const EDGE64: [u64; 16] = [
    0,
    1,
    u64::MAX,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff,
    0x8000,
    0xffff,
    0x7f,
    0x80,
    0xff,
    0x100,
];

/// A GPR-sized value: a mix of uniformly random and edge values.
pub fn random_gpr(rng: &mut Rng) -> u64 {
    match rng.below(16) {
        0..=4 => rng.next_u64(),
        5 => 0,
        6 => 1,
        7 => u64::MAX,
        8 | 9 => rng.pick(&EDGE64),
        10 => rng.below(64),
        11 => {
            (rng.next_u64() & !0xffff_ffff)
                | rng.pick(&[0, 0xffff_ffff, 0x8000_0000, 0x7fff_ffff, 1])
        }
        12 => rng.next_u64() & 0xff,
        13 => rng.next_u64() & 0xffff_ffff,
        14 => rng.range_i64(-64, -1) as u64,
        _ => {
            let bit = 1u64 << rng.below(64);
            rng.pick(&[bit, !bit, bit.wrapping_sub(1), bit.wrapping_neg()])
        }
    }
}

/// A value for an operand of `bytes` bytes (1..=8), edge-biased.
fn random_sized(rng: &mut Rng, bytes: u64) -> u64 {
    let bits = bytes * 8;
    let mask = if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let v = match rng.below(8) {
        0..=3 => rng.next_u64(),
        4 => 0,
        5 => mask,
        6 => 1u64 << (bits - 1),
        _ => (1u64 << (bits - 1)) - 1,
    };
    v & mask
}

/// Shift/rotate counts, including the masking edges.
fn count_edge(rng: &mut Rng) -> u64 {
    if rng.chance(1, 5) {
        return rng.below(256);
    }
    rng.pick(&[
        0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 255,
    ])
}

const F64_EDGES: [u64; 30] = [
    0x0000_0000_0000_0000, // 0.0
    0x8000_0000_0000_0000, // -0.0
    0x3ff0_0000_0000_0000, // 1.0
    0xbff0_0000_0000_0000, // -1.0
    0x3fe0_0000_0000_0000, // 0.5
    0x3ff8_0000_0000_0000, // 1.5
    0x4004_0000_0000_0000, // 2.5
    0xc004_0000_0000_0000, // -2.5
    0x3fb9_9999_9999_999a, // 0.1
    0x7fef_ffff_ffff_ffff, // MAX
    0xffef_ffff_ffff_ffff, // MIN
    0x0010_0000_0000_0000, // MIN_POSITIVE
    0x0000_0000_0000_0001, // smallest denormal
    0x000f_ffff_ffff_ffff, // largest denormal
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // -inf
    0x7ff8_0000_0000_0000, // qNaN
    0xfff8_0000_0000_0000, // -qNaN (default NaN)
    0x7ff0_0000_0000_0001, // sNaN
    0x7ff8_0000_dead_beef, // qNaN with payload
    0x41df_ffff_ffc0_0000, // 2147483647.0
    0x41e0_0000_0000_0000, // 2147483648.0
    0xc1e0_0000_0000_0000, // -2147483648.0
    0xc1e0_0000_0020_0000, // -2147483649.0
    0x41df_ffff_ffe0_0000, // 2147483647.5
    0x43e0_0000_0000_0000, // 2^63
    0xc3e0_0000_0000_0000, // -2^63
    0x41f0_0000_0000_0000, // 2^32
    0x3fdf_ffff_ffff_ffff, // 0.49999999999999994
    0x3ff0_0000_0000_0001, // 1.0000000000000002
];

const F32_EDGES: [u32; 20] = [
    0x0000_0000,
    0x8000_0000,
    0x3f80_0000,
    0xbf80_0000,
    0x3f00_0000,
    0x3fc0_0000,
    0x7f7f_ffff,
    0xff7f_ffff,
    0x0080_0000,
    0x0000_0001,
    0x007f_ffff,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_0000,
    0x7f80_0001,
    0x7fc0_beef,
    0x4f00_0000,
    0xcf00_0000,
    0x3dcc_cccd,
];

fn random_f64(rng: &mut Rng) -> u64 {
    if rng.chance(1, 4) {
        // A "normal" random double of moderate magnitude.
        let exp = (1023 + rng.range_i64(-40, 70)) as u64;
        return (rng.next_u64() & 0x800f_ffff_ffff_ffff) | (exp << 52);
    }
    rng.pick(&F64_EDGES)
}

fn random_f32(rng: &mut Rng) -> u32 {
    if rng.chance(1, 4) {
        let exp = (127 + rng.range_i64(-20, 40)) as u32;
        return (rng.next_u64() as u32 & 0x807f_ffff) | (exp << 23);
    }
    rng.pick(&F32_EDGES)
}

fn random_xmm(rng: &mut Rng) -> u128 {
    let mut half = || -> u64 {
        match rng.below(10) {
            0..=3 => rng.next_u64(),
            4 | 5 => random_f64(rng),
            6 | 7 => random_f32(rng) as u64 | (random_f32(rng) as u64) << 32,
            8 => 0,
            _ => rng.pick(&[
                u64::MAX,
                1,
                0x8000_0000_8000_0000,
                0x00ff_00ff_00ff_00ff,
                0x7f7f_7f7f_7f7f_7f7f,
            ]),
        }
    };
    half() as u128 | (half() as u128) << 64
}

fn random_region(rng: &mut Rng, len: u64) -> Vec<u8> {
    let mut data = vec![0u8; len as usize];
    rng.fill(&mut data);
    // Sprinkle edge patterns over some 64-byte lines.
    for line in data.chunks_mut(64) {
        match rng.below(12) {
            0 => line.fill(0),
            1 => line.fill(0xff),
            2 => {
                let v = rng.pick(&EDGE64).to_le_bytes();
                for (i, b) in line.iter_mut().enumerate() {
                    *b = v[i % 8];
                }
            }
            _ => {}
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------
// Generation context.

/// Per-Code hook run after the built-in generation, before encoding: may change register and
/// memory values (through [`Ctx`]) and immediates (through the instruction). For example, to
/// make every 64-bit DIV divide by zero:
///
/// ```ignore
/// fn zero_divisor(ctx: &mut Ctx, ins: &mut Instruction, _: &mut Rng) {
///     ctx.set_operand_value(ins, 0, 0);
/// }
/// let opts = GenOptions { hooks: vec![(Code::Div_rm64, zero_divisor)], ..GenOptions::default() };
/// let cases = cases_for_with(Code::Div_rm64, &mut rng, 10, &opts);
/// ```
///
/// Registers used as addresses or counts are locked ([`Ctx::set_reg`] refuses them). Hooks do
/// not run for relative branches.
pub type Hook = fn(&mut Ctx, &mut Instruction, &mut Rng);

/// Generation knobs.
#[derive(Clone)]
pub struct GenOptions {
    /// About one case (or block) in this many deliberately accesses unmapped or non-canonical
    /// memory (or transfers control there).
    pub fault_one_in: u64,
    /// Extra per-Code hooks, run after the built-in ones.
    pub hooks: Vec<(Code, Hook)>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            fault_one_in: 24,
            hooks: Vec::new(),
        }
    }
}

/// The state of one case under construction. Hooks use its methods to tune values.
#[derive(Clone)]
pub struct Ctx {
    /// The initial state being built.
    pub st: UserState,
    /// The regions, in [`layout`] order.
    pub regions: Vec<Region>,
    /// GPRs (bit per x86 register number) whose values are pinned: address registers, string
    /// counts, the stack pointer. [`Ctx::set_reg`] refuses to change them.
    pub locked: u16,
    /// Generating an instruction inside a multi-instruction block.
    pub block: bool,
    /// Address of the current instruction's explicit memory operand, if any.
    pub mem_addr: Option<u64>,
    /// A deliberate fault may still be planted in this case.
    fault_pending: bool,
    /// The current instruction got the deliberate fault (its accesses are not checked).
    cur_fault: bool,
    /// Blocks: GPRs written by earlier instructions (other than the bounded updates of RSP by
    /// stack operations and of RSI/RDI/RCX by string operations); their initial values are not
    /// what later instructions see.
    clobbered: u16,
    /// Blocks: change of RSP by the earlier instructions.
    rsp_delta: i64,
    /// Bytes that must be inside the region before and after the memory operand.
    margin: u64,
}

impl Ctx {
    fn new(rng: &mut Rng, block: bool) -> Ctx {
        let mut st = UserState::default();
        for g in st.gpr.iter_mut() {
            *g = random_gpr(rng);
        }
        st.rflags = 0x202;
        for f in [CF, PF, 1 << 4, 1 << 6, 1 << 7, OF, DF] {
            if rng.chance(1, 2) {
                st.rflags |= f;
            }
        }
        for x in st.xmm.iter_mut() {
            *x = random_xmm(rng);
        }
        st.mxcsr = MXCSR_DEFAULT;
        let regions = layout()
            .iter()
            .map(|&(addr, len)| Region {
                addr,
                data: random_region(rng, len),
            })
            .collect();
        let mut ctx = Ctx {
            st,
            regions,
            locked: 0,
            block,
            mem_addr: None,
            fault_pending: false,
            cur_fault: false,
            clobbered: 0,
            rsp_delta: 0,
            margin: 0,
        };
        if block {
            // A valid stack pointer for the whole block, far from both ends of the stack.
            ctx.lock(Register::RSP, STACK + 0xc00 + rng.below(0x80) * 8);
        }
        ctx
    }

    pub fn reg(&self, reg: Register) -> u64 {
        read_reg(&self.st, reg)
    }

    /// Sets the bits of `reg` unless its GPR is locked; returns whether it did.
    pub fn set_reg(&mut self, reg: Register, value: u64) -> bool {
        if self.locked & gpr_bit(reg) != 0 {
            return false;
        }
        write_reg_bits(&mut self.st, reg, value);
        true
    }

    fn lock(&mut self, reg: Register, value: u64) {
        write_reg_bits(&mut self.st, reg, value);
        self.locked |= gpr_bit(reg);
    }

    fn is_locked(&self, reg: Register) -> bool {
        self.locked & gpr_bit(reg) != 0
    }

    pub fn xmm(&self, reg: Register) -> u128 {
        self.st.xmm[reg as usize - Register::XMM0 as usize]
    }

    pub fn set_xmm(&mut self, reg: Register, value: u128) {
        self.st.xmm[reg as usize - Register::XMM0 as usize] = value;
    }

    /// Region index and offset if `[addr, addr+len)` lies inside one region.
    fn locate(&self, addr: u64, len: u64) -> Option<(usize, usize)> {
        self.regions.iter().enumerate().find_map(|(i, r)| {
            let off = addr.checked_sub(r.addr)?;
            (off.checked_add(len)? <= r.data.len() as u64).then_some((i, off as usize))
        })
    }

    pub fn read_mem(&self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let (i, off) = self.locate(addr, len)?;
        Some(self.regions[i].data[off..off + len as usize].to_vec())
    }

    /// Writes initial memory; returns false (writing nothing) unless it is all inside a region.
    pub fn write_mem(&mut self, addr: u64, data: &[u8]) -> bool {
        let Some((i, off)) = self.locate(addr, data.len() as u64) else {
            return false;
        };
        self.regions[i].data[off..off + data.len()].copy_from_slice(data);
        true
    }

    /// Value of operand `op` of `ins` (registers, the explicit memory operand, immediates).
    pub fn operand_value(&self, ins: &Instruction, op: u32) -> Option<u128> {
        match ins.op_kind(op) {
            OpKind::Register => {
                let reg = ins.op_register(op);
                if reg.is_xmm() {
                    Some(self.xmm(reg))
                } else {
                    Some(self.reg(reg) as u128)
                }
            }
            OpKind::Memory => {
                let size = ins.memory_size().size() as u64;
                let bytes = self.read_mem(self.mem_addr?, size)?;
                let mut v = [0u8; 16];
                v[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
                Some(u128::from_le_bytes(v))
            }
            OpKind::Immediate8
            | OpKind::Immediate8_2nd
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Some(ins.immediate(op) as u128),
            _ => None,
        }
    }

    /// Sets the value of register or memory operand `op`; returns whether it could.
    pub fn set_operand_value(&mut self, ins: &Instruction, op: u32, value: u128) -> bool {
        match ins.op_kind(op) {
            OpKind::Register => {
                let reg = ins.op_register(op);
                if reg.is_xmm() {
                    self.set_xmm(reg, value);
                    true
                } else {
                    self.set_reg(reg, value as u64)
                }
            }
            OpKind::Memory => {
                let Some(addr) = self.mem_addr else {
                    return false;
                };
                let size = (ins.memory_size().size()).min(16);
                self.write_mem(addr, &value.to_le_bytes()[..size])
            }
            _ => false,
        }
    }

    /// Value the CPU will use for `reg` when forming an address: RSP includes the drift caused
    /// by earlier stack operations of the block.
    fn addr_value(&self, reg: Register) -> u64 {
        let v = self.reg(reg);
        if reg.full_register() == Register::RSP {
            let v = v.wrapping_add(self.rsp_delta as u64);
            return if reg.size() == 4 { v & 0xffff_ffff } else { v };
        }
        v
    }

    fn into_snippet(self, code_addr: u64, code: Vec<u8>) -> (Snippet, UserState) {
        let mut st = self.st;
        st.rip = code_addr;
        (
            Snippet {
                code_addr,
                code,
                regions: self.regions,
            },
            st,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points.

/// `n` random cases for `code`: snippets of this one instruction (control transfers get a
/// small fixed sequence around them) with their initial states.
pub fn cases_for(code: Code, rng: &mut Rng, n: usize) -> Vec<(Snippet, UserState)> {
    cases_for_with(code, rng, n, &GenOptions::default())
}

pub fn cases_for_with(
    code: Code,
    rng: &mut Rng,
    n: usize,
    opts: &GenOptions,
) -> Vec<(Snippet, UserState)> {
    (0..n).map(|_| single_case(code, rng, opts)).collect()
}

const MAX_ATTEMPTS: usize = 500;

fn single_case(code: Code, rng: &mut Rng, opts: &GenOptions) -> (Snippet, UserState) {
    for _ in 0..MAX_ATTEMPTS {
        let mut ctx = Ctx::new(rng, false);
        ctx.fault_pending = rng.below(opts.fault_one_in.max(1)) == 0;
        let code_addr = pick_code_addr(rng);
        let bytes = if is_control(code.mnemonic()) {
            gen_control(code, &mut ctx, rng, code_addr)
        } else {
            gen_insn(code, &mut ctx, rng, code_addr, opts).map(|(b, _)| b)
        };
        if let Some(bytes) = bytes {
            return ctx.into_snippet(code_addr, bytes);
        }
    }
    panic!("could not generate a valid case for {code:?}");
}

/// A block of `len` random instructions drawn from `pool` (forms that cannot appear in blocks
/// are skipped, see [`block_eligible`]), straight-line, sharing one initial state. Registers
/// used to address memory are never written by an earlier instruction of the block, and no
/// instruction reads a flag an earlier one left undefined.
pub fn block_case(
    pool: &[Code],
    rng: &mut Rng,
    len: usize,
    opts: &GenOptions,
) -> (Snippet, UserState) {
    let eligible: Vec<Code> = pool
        .iter()
        .copied()
        .filter(|c| block_eligible(*c))
        .collect();
    assert!(!eligible.is_empty(), "no block-eligible forms in the pool");
    'outer: for _ in 0..MAX_ATTEMPTS {
        let mut ctx = Ctx::new(rng, true);
        ctx.fault_pending = rng.below(opts.fault_one_in.max(1)) == 0;
        let code_addr = pick_code_addr(rng);
        let mut code = Vec::new();
        let mut poisoned = 0u64;
        for _ in 0..len {
            let mut placed = false;
            for _ in 0..40 {
                let candidate = rng.pick(&eligible);
                let saved = ctx.clone();
                let ip = code_addr + code.len() as u64;
                let Some((bytes, ins)) = gen_insn(candidate, &mut ctx, rng, ip, opts) else {
                    ctx = saved;
                    continue;
                };
                let effect = flag_effect(&ins, None);
                let reads = x86_flags(ins.rflags_read());
                if reads & poisoned != 0 || pointer_regs(&ins) & saved.clobbered != 0 {
                    ctx = saved;
                    continue;
                }
                poisoned = (poisoned & !effect.defined) | effect.undefined;
                ctx.clobbered |= clobbers(&ins);
                ctx.rsp_delta += ins.stack_pointer_increment() as i64;
                code.extend_from_slice(&bytes);
                placed = true;
                break;
            }
            if !placed {
                continue 'outer;
            }
        }
        return ctx.into_snippet(code_addr, code);
    }
    panic!("could not generate a block from the pool");
}

fn pick_code_addr(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => CODE_PAGE,
        // Close to the end of the page: the code often straddles into the next page.
        1 => CODE_PAGE + 0x1000 - 1 - rng.below(12),
        _ => CODE_PAGE + rng.below(0xf00),
    }
}

/// Registers the instruction uses as pointers or counts (memory bases and indexes, the stack
/// pointer, string registers) or whose values its generation tuned (DIV's dividend).
fn pointer_regs(ins: &Instruction) -> u16 {
    let mut info = InstructionInfoFactory::new();
    let mut bits = 0;
    for m in info.info(ins).used_memory() {
        if m.access() != OpAccess::NoMemAccess {
            bits |= gpr_bit(m.base()) | gpr_bit(m.index());
        }
    }
    if is_string(ins.code()) && (ins.has_rep_prefix() || ins.has_repne_prefix()) {
        bits |= gpr_bit(Register::RCX);
    }
    if matches!(ins.mnemonic(), M::Div | M::Idiv) {
        bits |= gpr_bit(Register::RAX) | gpr_bit(Register::RDX);
    }
    bits
}

/// GPRs the instruction writes, except the bounded pointer updates that keep later pointer
/// uses valid (RSP by stack operations, RSI/RDI/RCX by string operations).
fn clobbers(ins: &Instruction) -> u16 {
    let mut info = InstructionInfoFactory::new();
    let mut explicit = 0u16;
    for i in 0..ins.op_count() {
        if ins.op_kind(i) == OpKind::Register {
            explicit |= gpr_bit(ins.op_register(i));
        }
    }
    let mut bits = 0;
    for r in info.info(ins).used_registers() {
        if matches!(
            r.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        ) {
            bits |= gpr_bit(r.register());
        }
    }
    if explicit & RSP_BIT == 0 {
        bits &= !RSP_BIT;
    }
    if is_string(ins.code()) {
        bits &= !(gpr_bit(Register::RSI) | gpr_bit(Register::RDI) | gpr_bit(Register::RCX));
    }
    bits
}

// ---------------------------------------------------------------------------------------------
// One instruction.

/// Generates one instruction of form `code` at `ip`, adjusting `ctx`; returns its bytes and
/// the decoded instruction, or `None` if this attempt failed (the caller retries).
fn gen_insn(
    code: Code,
    ctx: &mut Ctx,
    rng: &mut Rng,
    ip: u64,
    opts: &GenOptions,
) -> Option<(Vec<u8>, Instruction)> {
    ctx.mem_addr = None;
    ctx.cur_fault = false;
    ctx.margin = 0;
    let mut ins = if is_string(code) {
        gen_string(code, ctx, rng)?
    } else {
        gen_operands(code, ctx, rng, ip)?
    };
    builtin_hook(ctx, &mut ins, rng);
    for (c, hook) in &opts.hooks {
        if *c == code {
            hook(ctx, &mut ins, rng);
        }
    }
    let bytes = encode_checked(&ins, ip)?;
    let decoded = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE).decode();
    if !ctx.cur_fault && !accesses_ok(ctx, &decoded) {
        return None;
    }
    Some((bytes, decoded))
}

/// Encodes `ins` at `ip` and checks that decoding the bytes gives back the same form.
fn encode_checked(ins: &Instruction, ip: u64) -> Option<Vec<u8>> {
    let mut encoder = Encoder::new(64);
    encoder.encode(ins, ip).ok()?;
    let bytes = encoder.take_buffer();
    let d = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE).decode();
    if d.code() != ins.code() || d.len() != bytes.len() {
        return None;
    }
    for i in 0..ins.op_count() {
        if d.op_kind(i) != ins.op_kind(i) {
            return None;
        }
        if ins.op_kind(i) == OpKind::Register && d.op_register(i) != ins.op_register(i) {
            return None;
        }
        if ins.op_kind(i) == OpKind::Memory
            && (d.memory_base() != ins.memory_base() || d.memory_index() != ins.memory_index())
        {
            return None;
        }
    }
    if d.has_lock_prefix() != ins.has_lock_prefix()
        || d.has_rep_prefix() != ins.has_rep_prefix()
        || d.has_repne_prefix() != ins.has_repne_prefix()
    {
        return None;
    }
    Some(bytes)
}

/// Checks that every memory access of `ins` (computed from the initial state) is inside a
/// region. Accesses of unknown size (REP strings) are checked by [`gen_string`] instead.
fn accesses_ok(ctx: &Ctx, ins: &Instruction) -> bool {
    let mut info = InstructionInfoFactory::new();
    for m in info.info(ins).used_memory() {
        if m.access() == OpAccess::NoMemAccess {
            continue;
        }
        let size = m.memory_size().size() as u64;
        if size == 0 {
            continue;
        }
        let Some(mut va) = m.virtual_address(0, |r, _, _| Some(ctx.addr_value(r))) else {
            return false;
        };
        if is_bt_mem_reg(ins) {
            // The register bit offset selects the element: base + (offset >> log2(bits)) * bytes.
            let bits = size * 8;
            let off = sign_extend(ctx.reg(ins.op_register(1)), bits);
            va = va.wrapping_add(((off >> bits.trailing_zeros()) * size as i64) as u64);
        }
        if ctx.locate(va, size).is_none() {
            return false;
        }
    }
    true
}

fn sign_extend(v: u64, bits: u64) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

fn is_bt_mem_reg(ins: &Instruction) -> bool {
    matches!(ins.mnemonic(), M::Bt | M::Bts | M::Btr | M::Btc)
        && ins.op_kind(0) == OpKind::Memory
        && ins.op_kind(1) == OpKind::Register
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RegClass {
    G8,
    G16,
    G32,
    G64,
    Xmm,
}

fn reg_class(k: K) -> Option<RegClass> {
    Some(match k {
        K::r8_or_mem | K::r8_reg | K::r8_opcode => RegClass::G8,
        K::r16_or_mem | K::r16_reg | K::r16_rm | K::r16_opcode => RegClass::G16,
        K::r32_or_mem | K::r32_reg | K::r32_rm | K::r32_opcode | K::r32_vvvv => RegClass::G32,
        K::r64_or_mem | K::r64_reg | K::r64_rm | K::r64_opcode | K::r64_vvvv => RegClass::G64,
        K::xmm_or_mem | K::xmm_reg | K::xmm_rm => RegClass::Xmm,
        _ => return None,
    })
}

fn pick_reg(class: RegClass, rng: &mut Rng) -> Register {
    let i = rng.below(16) as usize;
    match class {
        RegClass::G8 if rng.chance(1, 5) => {
            rng.pick(&[Register::AH, Register::CH, Register::DH, Register::BH])
        }
        RegClass::G8 => gpr_of_size(i, 1),
        RegClass::G16 => gpr_of_size(i, 2),
        RegClass::G32 => gpr_of_size(i, 4),
        RegClass::G64 => gpr_of_size(i, 8),
        RegClass::Xmm => xmm(i),
    }
}

fn fixed_reg(k: K) -> Option<Register> {
    Some(match k {
        K::al => Register::AL,
        K::cl => Register::CL,
        K::ax => Register::AX,
        K::eax => Register::EAX,
        K::rax => Register::RAX,
        _ => return None,
    })
}

/// A random immediate for operand `i` (of kind `k`) of `code`.
fn gen_imm(code: Code, i: u32, k: K, rng: &mut Rng) -> u64 {
    let mn = code.mnemonic();
    match mn {
        M::Enter if i == 0 => {
            let (a, b) = (rng.below(0x100), rng.below(0x400));
            return rng.pick(&[0, 8, 16, 24, a, b]);
        }
        M::Enter => {
            let (a, b) = (rng.below(8), 32 + rng.below(4));
            return rng.pick(&[0, 0, 0, 1, 1, 2, 3, a, 31, b]);
        }
        M::Shl
        | M::Sal
        | M::Shr
        | M::Sar
        | M::Rol
        | M::Ror
        | M::Rcl
        | M::Rcr
        | M::Shld
        | M::Shrd
        | M::Rorx
        | M::Bt
        | M::Bts
        | M::Btr
        | M::Btc
        | M::Psllw
        | M::Pslld
        | M::Psllq
        | M::Psrlw
        | M::Psrld
        | M::Psrlq
        | M::Psraw
        | M::Psrad
        | M::Pslldq
        | M::Psrldq
            if rng.chance(2, 3) =>
        {
            return count_edge(rng)
        }
        _ => {}
    }
    let small = |rng: &mut Rng| rng.range_i64(-4, 4) as u64;
    match k {
        K::imm8_const_1 => 1,
        K::imm8 => {
            if rng.chance(1, 2) {
                rng.below(256)
            } else {
                rng.pick(&[0, 1, 2, 0x7f, 0x80, 0x81, 0xfe, 0xff, 0x10, 0x40])
            }
        }
        K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => match rng.below(4) {
            0 => small(rng),
            1 => rng.pick(&[127, -128i64 as u64, -1i64 as u64]),
            _ => rng.below(256) as u8 as i8 as i64 as u64,
        },
        K::imm16 => match rng.below(3) {
            0 => rng.pick(&[0, 1, 0x7fff, 0x8000, 0xffff]),
            _ => rng.below(0x10000),
        },
        K::imm32 | K::imm32sex64 => match rng.below(4) {
            0 => small(rng) as u32 as u64,
            1 => rng.pick(&[0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xff, 0x80]),
            _ => rng.next_u64() & 0xffff_ffff,
        },
        _ => random_gpr(rng),
    }
}

fn imm_op_kind(k: K, prev_was_imm: bool) -> Option<OpKind> {
    Some(match k {
        K::imm8 if prev_was_imm => OpKind::Immediate8_2nd,
        K::imm8 | K::imm8_const_1 => OpKind::Immediate8,
        K::imm8sex16 => OpKind::Immediate8to16,
        K::imm8sex32 => OpKind::Immediate8to32,
        K::imm8sex64 => OpKind::Immediate8to64,
        K::imm16 => OpKind::Immediate16,
        K::imm32 => OpKind::Immediate32,
        K::imm32sex64 => OpKind::Immediate32to64,
        K::imm64 => OpKind::Immediate64,
        _ => return None,
    })
}

/// Required alignment of the explicit memory operand (misalignment faults natively).
fn required_alignment(code: Code, size: u64) -> u64 {
    let mn = code.mnemonic();
    if mn == M::Cmpxchg16b {
        return 16;
    }
    let is_sse = code
        .op_code()
        .op_kinds()
        .iter()
        .any(|k| matches!(k, K::xmm_reg | K::xmm_or_mem | K::xmm_rm));
    if is_sse && size == 16 && !matches!(mn, M::Movups | M::Movdqu) {
        return 16;
    }
    1
}

/// Builds the operands of a non-string, non-control instruction.
fn gen_operands(code: Code, ctx: &mut Ctx, rng: &mut Rng, ip: u64) -> Option<Instruction> {
    let info = code.op_code();
    let mn = code.mnemonic();
    let mut ins = Instruction::default();
    ins.set_code(code);
    let mut mem_op: Option<(u32, K)> = None;
    let mut fixed = 0u16;
    let mut prev_was_imm = false;
    for i in 0..info.op_count() {
        let k = info.op_kind(i);
        let as_mem = match k {
            K::mem | K::mem_offs => true,
            K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem | K::xmm_or_mem => {
                rng.chance(1, 2)
            }
            _ => false,
        };
        let is_imm = imm_op_kind(k, prev_was_imm).is_some();
        if as_mem {
            ins.set_op_kind(i, OpKind::Memory);
            mem_op = Some((i, k));
        } else if let Some(class) = reg_class(k) {
            ins.set_op_kind(i, OpKind::Register);
            ins.set_op_register(i, pick_reg(class, rng));
        } else if let Some(reg) = fixed_reg(k) {
            ins.set_op_kind(i, OpKind::Register);
            ins.set_op_register(i, reg);
            fixed |= gpr_bit(reg);
        } else if let Some(kind) = imm_op_kind(k, prev_was_imm) {
            ins.set_op_kind(i, kind);
            ins.set_immediate_u64(i, gen_imm(code, i, k, rng));
        } else {
            return None;
        }
        prev_was_imm = is_imm;
    }
    if LOCKABLE.contains(&mn) && matches!(mem_op, Some((0, _))) && rng.chance(1, 2) {
        ins.set_has_lock_prefix(true);
    }
    if STACK_USERS.contains(&mn) {
        ensure_stack(ctx, rng);
    }
    match mn {
        // RBP: the frame whose display ENTER copies (level > 1 reads [rbp-8], ...).
        M::Enter if !ctx.is_locked(Register::RBP) => {
            ctx.lock(Register::RBP, STACK + 0x1000 + rng.below(0x100) * 8);
        }
        M::Leave if !ctx.is_locked(Register::RBP) => {
            let off = 0x200 + rng.below(0x1c00);
            ctx.lock(
                Register::RBP,
                STACK + if rng.chance(1, 10) { off } else { off & !7 },
            );
        }
        _ => {}
    }
    if let Some((_, kind)) = mem_op {
        if matches!(mn, M::Lea | M::Nop) {
            random_address(&mut ins, rng, ip);
        } else {
            let mut size = ins.memory_size().size() as u64;
            if code == Code::Movsxd_r16_rm16 {
                // This CPU (AMD) reads 32 bits for MOVSXD r16, m16 (seen as a page fault one
                // byte further than iced-x86's 16 bits), so place it as a 32-bit access and
                // plant no deliberate faults on it, which would straddle differently.
                size = 4;
                ctx.fault_pending = false;
            }
            let align = required_alignment(code, size);
            let mut avoid = fixed | ctx.clobbered;
            // Registers the instruction uses besides its address: always avoid the implicit
            // ones (computed with a register-free placeholder address); explicit register
            // operands may double as the base now and then.
            let mut probe = ins;
            probe.set_memory_base(Register::None);
            probe.set_memory_index(Register::None);
            probe.set_memory_displacement64(DATA0);
            probe.set_memory_displ_size(8);
            let mut explicit = 0u16;
            for i in 0..ins.op_count() {
                if ins.op_kind(i) == OpKind::Register {
                    explicit |= gpr_bit(ins.op_register(i));
                }
            }
            let mut used = 0u16;
            for r in InstructionInfoFactory::new().info(&probe).used_registers() {
                used |= gpr_bit(r.register());
            }
            avoid |= if rng.chance(1, 3) {
                used & !explicit
            } else {
                used
            };
            if is_bt_mem_reg(&ins) {
                avoid |= gpr_bit(ins.op_register(1));
                ctx.margin = 40;
            }
            let plan = plan_memory(
                ctx,
                rng,
                size,
                align,
                avoid & !ctx.locked_usable(),
                kind == K::mem_offs,
            )?;
            plan.apply(&mut ins);
            ctx.mem_addr = Some(plan.addr);
            if !ctx.cur_fault && size <= 8 && rng.chance(1, 2) {
                let v = random_sized(rng, size);
                ctx.write_mem(plan.addr, &v.to_le_bytes()[..size as usize]);
            }
        }
    }
    Some(ins)
}

impl Ctx {
    /// Locked registers that stay usable as a base or index (their value is known): all
    /// locked ones except those clobbered earlier in the block.
    fn locked_usable(&self) -> u16 {
        self.locked & !self.clobbered
    }
}

/// Points RSP into the stack region (unless already done), far enough from both ends for any
/// generated stack operation; with a pending deliberate fault, right at an end instead.
fn ensure_stack(ctx: &mut Ctx, rng: &mut Rng) {
    if ctx.is_locked(Register::RSP) {
        return;
    }
    if ctx.fault_pending && !ctx.block && rng.chance(1, 2) {
        ctx.fault_pending = false;
        ctx.cur_fault = true;
        let rsp = if rng.chance(1, 2) {
            STACK + rng.below(8)
        } else {
            STACK + STACK_LEN - rng.below(8)
        };
        ctx.lock(Register::RSP, rsp);
        return;
    }
    let off = 0x800 + rng.below(0x1000);
    ctx.lock(
        Register::RSP,
        STACK + if rng.chance(1, 10) { off } else { off & !7 },
    );
}

/// An addressing form for an explicit memory operand.
#[derive(Clone, Copy, Debug)]
struct MemPlan {
    base: Register,
    index: Register,
    scale: u32,
    disp: u64,
    displ_size: u32,
    /// The address accessed.
    addr: u64,
}

impl MemPlan {
    fn apply(&self, ins: &mut Instruction) {
        ins.set_memory_base(self.base);
        ins.set_memory_index(self.index);
        ins.set_memory_index_scale(self.scale);
        ins.set_memory_displacement64(self.disp);
        ins.set_memory_displ_size(self.displ_size);
        ins.set_segment_prefix(Register::None);
    }
}

/// Picks the address to access: inside a region, or (for a pending deliberate fault) outside.
fn pick_target(ctx: &mut Ctx, rng: &mut Rng, size: u64, align: u64) -> u64 {
    if ctx.fault_pending {
        ctx.fault_pending = false;
        ctx.cur_fault = true;
        return fault_target(rng, size);
    }
    let r = match rng.below(20) {
        0..=11 => 0,
        12..=16 => 1,
        _ => 2,
    };
    let (base, len) = layout()[r];
    let lo = ctx.margin;
    let hi = len - size - ctx.margin;
    let natural = size.next_power_of_two().clamp(1, 16);
    let mut off = match rng.below(10) {
        0..=5 => rng.range_i64(lo as i64, hi as i64) as u64 & !(natural - 1),
        6 | 7 => rng.range_i64(lo as i64, hi as i64) as u64,
        // Straddling the page boundary inside the region (or near the region's end).
        8 => (0x1000u64.min(len - size)).saturating_sub(rng.below(size.max(2))),
        _ => {
            if rng.chance(1, 2) {
                lo + rng.below(16)
            } else {
                hi - rng.below(16)
            }
        }
    };
    off = off.clamp(lo, hi);
    if align > 1 {
        off &= !(align - 1);
        if rng.chance(1, 16) {
            // Deliberately misaligned: #GP natively.
            off = (off + 1 + rng.below(align - 1)).min(hi);
        }
    }
    base + off
}

/// An address outside the regions: unmapped, crossing into or out of a region, kernel half
/// (still a page fault) or non-canonical (#GP, or #SS with an RSP/RBP base).
fn fault_target(rng: &mut Rng, size: u64) -> u64 {
    let cross = |rng: &mut Rng| 1 + rng.below(size.max(2) - 1);
    match rng.below(8) {
        0 => DATA0 + DATA0_LEN + rng.below(64),
        1 if size > 1 => DATA0 + DATA0_LEN - cross(rng),
        2 if size > 1 => DATA1 - cross(rng),
        3 => 0x2400_0000 + rng.below(0x100_0000),
        4 => STACK + STACK_LEN + rng.below(32),
        5 => 0xffff_8000_0000_0000 + rng.below(1 << 40),
        6 => 0x0000_8000_0000_0000 + rng.below(1 << 46),
        _ => DATA1 + DATA1_LEN + rng.below(0x1000),
    }
}

/// Chooses an addressing form and register values so the operand accesses `size` bytes at an
/// address chosen by [`pick_target`]. `avoid`: GPRs that must not serve as base or index.
fn plan_memory(
    ctx: &mut Ctx,
    rng: &mut Rng,
    size: u64,
    align: u64,
    avoid: u16,
    moffs: bool,
) -> Option<MemPlan> {
    let target = pick_target(ctx, rng, size, align);
    let fits_i32 = |v: i64| v >= i32::MIN as i64 && v <= i32::MAX as i64;
    if moffs {
        return Some(MemPlan {
            base: Register::None,
            index: Register::None,
            scale: 1,
            disp: target,
            displ_size: 8,
            addr: target,
        });
    }
    let low = target < 0x8000_0000;
    let addr32 = low && rng.chance(1, 10);
    let amask = if addr32 { 0xffff_ffffu64 } else { u64::MAX };
    let regsize = if addr32 { 4 } else { 8 };
    let mode = rng.below(100);
    if low && !addr32 && mode < 10 {
        return Some(MemPlan {
            base: Register::RIP,
            index: Register::None,
            scale: 1,
            disp: target,
            displ_size: 8,
            addr: target,
        });
    }
    if low && mode < 15 {
        return Some(MemPlan {
            base: Register::None,
            index: Register::None,
            scale: 1,
            disp: target,
            displ_size: regsize as u32,
            addr: target,
        });
    }
    let candidates: Vec<usize> = (0..16).filter(|i| avoid & (1 << i) == 0).collect();
    if candidates.is_empty() {
        return None;
    }
    let base_i = (mode < 85).then(|| rng.pick(&candidates));
    let want_index = mode >= 55;
    let index_i = if want_index {
        let c: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| i != 4 && Some(i) != base_i)
            .collect();
        if c.is_empty() {
            return None;
        }
        Some(rng.pick(&c))
    } else {
        None
    };
    let scale = if index_i.is_some() {
        rng.pick(&[1u64, 2, 4, 8])
    } else {
        1
    };
    let base = base_i.map_or(Register::None, |i| gpr_of_size(i, regsize));
    let index = index_i.map_or(Register::None, |i| gpr_of_size(i, regsize));
    let mut idx_val = 0u64;
    if index_i.is_some() {
        idx_val = if ctx.is_locked(index) {
            ctx.addr_value(index) & amask
        } else {
            let v = match rng.below(4) {
                0 => 0,
                1 => rng.range_i64(-64, 64) as u64,
                2 => rng.range_i64(-0x1000, 0x1000) as u64,
                _ => u64::MAX,
            };
            v & amask
        };
    }
    let scaled = idx_val.wrapping_mul(scale) & amask;
    let disp: u64;
    match base_i {
        Some(_) if ctx.is_locked(base) => {
            let b = ctx.addr_value(base) & amask;
            let raw = target.wrapping_sub(b).wrapping_sub(scaled) & amask;
            disp = raw;
            if !addr32 && !fits_i32(disp as i64) {
                return None;
            }
        }
        Some(_) => {
            let d: i64 = match rng.below(4) {
                0 => 0,
                1 => rng.range_i64(-128, 127),
                2 => rng.range_i64(-0x10000, 0x10000),
                _ => rng.range_i64(i32::MIN as i64, i32::MAX as i64),
            };
            disp = if addr32 { d as u64 & amask } else { d as u64 };
            let b = target.wrapping_sub(disp).wrapping_sub(scaled) & amask;
            let full = if addr32 {
                (rng.next_u64() << 32) | b
            } else {
                b
            };
            ctx.lock(gpr_of_size(base_i.unwrap(), 8), full);
        }
        None => {
            let raw = target.wrapping_sub(scaled) & amask;
            if !addr32 && !fits_i32(raw as i64) {
                return None;
            }
            disp = raw;
        }
    }
    if let Some(i) = index_i {
        if !ctx.is_locked(index) {
            let full = if addr32 {
                (rng.next_u64() << 32) | idx_val
            } else {
                idx_val
            };
            ctx.lock(gpr_of_size(i, 8), full);
        }
    }
    let displ_size = if base_i.is_none() {
        regsize as u32
    } else if disp == 0 && rng.chance(1, 2) {
        0
    } else if rng.chance(1, 4) {
        regsize as u32
    } else {
        1
    };
    // 32-bit displacements are sign-extended in 64-bit addressing; iced wants them as i64.
    let disp = if addr32 { disp } else { disp as i64 as u64 };
    Some(MemPlan {
        base,
        index,
        scale: scale as u32,
        disp,
        displ_size,
        addr: target,
    })
}

/// A random addressing form for LEA and NOP (no access): registers keep their random values.
fn random_address(ins: &mut Instruction, rng: &mut Rng, ip: u64) {
    let addr32 = rng.chance(1, 6);
    let regsize = if addr32 { 4 } else { 8 };
    let mode = rng.below(10);
    let mut plan = MemPlan {
        base: Register::None,
        index: Register::None,
        scale: 1,
        disp: 0,
        displ_size: 0,
        addr: 0,
    };
    if mode == 0 && !addr32 {
        plan.base = Register::RIP;
        plan.disp = ip.wrapping_add(rng.range_i64(-0x7000_0000, 0x7000_0000) as u64);
        plan.displ_size = 8;
    } else {
        if mode != 1 {
            plan.base = gpr_of_size(rng.below(16) as usize, regsize);
        }
        if mode == 1 || rng.chance(1, 2) {
            let i = rng.pick(&[0usize, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
            plan.index = gpr_of_size(i, regsize);
            plan.scale = rng.pick(&[1, 2, 4, 8]);
        }
        let d = match rng.below(3) {
            0 => 0,
            1 => rng.range_i64(-128, 127),
            _ => rng.range_i64(i32::MIN as i64, i32::MAX as i64),
        };
        plan.disp = if addr32 {
            d as u64 & 0xffff_ffff
        } else {
            d as u64
        };
        plan.displ_size = if plan.base == Register::None {
            regsize as u32
        } else if d == 0 && rng.chance(1, 2) {
            0
        } else {
            1
        };
    }
    plan.apply(ins);
}

// ---------------------------------------------------------------------------------------------
// String instructions.

fn gen_string(code: Code, ctx: &mut Ctx, rng: &mut Rng) -> Option<Instruction> {
    let (op, esize) = string_info(code)?;
    let addr32 = rng.chance(1, 8);
    let asz = if addr32 { 32 } else { 64 };
    let amask = if addr32 { 0xffff_ffffu64 } else { u64::MAX };
    let rep = match op {
        StrOp::Movs | StrOp::Stos | StrOp::Lods => {
            rng.pick(&[RepPrefixKind::None, RepPrefixKind::Repe])
        }
        _ => rng.pick(&[
            RepPrefixKind::None,
            RepPrefixKind::Repe,
            RepPrefixKind::Repne,
        ]),
    };
    use Code as C;
    let ins = match code {
        C::Movsb_m8_m8 => Instruction::with_movsb(asz, Register::None, rep),
        C::Movsw_m16_m16 => Instruction::with_movsw(asz, Register::None, rep),
        C::Movsd_m32_m32 => Instruction::with_movsd(asz, Register::None, rep),
        C::Movsq_m64_m64 => Instruction::with_movsq(asz, Register::None, rep),
        C::Stosb_m8_AL => Instruction::with_stosb(asz, rep),
        C::Stosw_m16_AX => Instruction::with_stosw(asz, rep),
        C::Stosd_m32_EAX => Instruction::with_stosd(asz, rep),
        C::Stosq_m64_RAX => Instruction::with_stosq(asz, rep),
        C::Lodsb_AL_m8 => Instruction::with_lodsb(asz, Register::None, rep),
        C::Lodsw_AX_m16 => Instruction::with_lodsw(asz, Register::None, rep),
        C::Lodsd_EAX_m32 => Instruction::with_lodsd(asz, Register::None, rep),
        C::Lodsq_RAX_m64 => Instruction::with_lodsq(asz, Register::None, rep),
        C::Cmpsb_m8_m8 => Instruction::with_cmpsb(asz, Register::None, rep),
        C::Cmpsw_m16_m16 => Instruction::with_cmpsw(asz, Register::None, rep),
        C::Cmpsd_m32_m32 => Instruction::with_cmpsd(asz, Register::None, rep),
        C::Cmpsq_m64_m64 => Instruction::with_cmpsq(asz, Register::None, rep),
        C::Scasb_AL_m8 => Instruction::with_scasb(asz, rep),
        C::Scasw_AX_m16 => Instruction::with_scasw(asz, rep),
        C::Scasd_EAX_m32 => Instruction::with_scasd(asz, rep),
        _ => Instruction::with_scasq(asz, rep),
    }
    .ok()?;
    let with_upper = |rng: &mut Rng, v: u64| {
        if addr32 {
            (rng.next_u64() << 32) | v
        } else {
            v
        }
    };

    // Element count.
    let count = if rep == RepPrefixKind::None {
        1
    } else if ctx.is_locked(Register::RCX) {
        let c = ctx.reg(Register::RCX) & amask;
        if c > 64 {
            return None;
        }
        c
    } else {
        let (a, b) = (rng.below(9), rng.below(33));
        // Now and then a long run (fast-string paths), at most 1 KiB (not in blocks, whose
        // pointers need room for the drift of several string instructions).
        let long = if ctx.block {
            a
        } else {
            rng.below(1024 / esize + 1)
        };
        let c = rng.pick(&[0, 1, 2, 3, a, a, b, b, long]);
        let full = with_upper(rng, c);
        ctx.lock(Register::RCX, full);
        c
    };
    // Room on both sides, whatever DF is when the instruction runs (blocks may change it),
    // plus slack for the pointer drift of earlier string instructions in a block.
    let span = count.max(1) * esize;
    let slack = if ctx.block { 0x400 } else { 0 };
    let mut fault = ctx.fault_pending && !ctx.block && count > 1 && rng.chance(2, 3);
    let uses_src = matches!(op, StrOp::Movs | StrOp::Lods | StrOp::Cmps);
    let uses_dst = matches!(op, StrOp::Movs | StrOp::Stos | StrOp::Cmps | StrOp::Scas);
    let df = ctx.st.rflags & DF != 0;
    let mut pointers = Vec::new();
    for (reg, used, region) in [
        (Register::RSI, uses_src, 0usize),
        (Register::RDI, uses_dst, 1usize),
    ] {
        if !used {
            continue;
        }
        if ctx.is_locked(reg) {
            // Set by an earlier instruction of the block: usable if well inside a region.
            let v = ctx.reg(reg) & amask;
            ctx.locate(v.wrapping_sub(span + slack), 2 * (span + slack) + esize)?;
            pointers.push(v);
            continue;
        }
        let region = if rng.chance(1, 5) { 0 } else { region };
        let (rbase, rlen) = layout()[region];
        let mut v = if fault && (reg == Register::RDI || !uses_dst) {
            // Run off the end of the region part-way through the repetition.
            fault = false;
            ctx.fault_pending = false;
            ctx.cur_fault = true;
            let k = 1 + rng.below(count - 1);
            if df {
                rbase + (k - 1) * esize
            } else {
                rbase + rlen - k * esize
            }
        } else {
            let lo = span + slack;
            let hi = rlen.checked_sub(span + slack + esize)?;
            if hi < lo {
                return None;
            }
            rbase + rng.range_i64(lo as i64, hi as i64) as u64
        };
        if rng.chance(7, 10) && !ctx.cur_fault {
            v &= !(esize - 1);
        }
        // MOVS/CMPS sometimes with overlapping source and destination.
        if reg == Register::RDI && uses_src && rng.chance(1, 6) && !ctx.cur_fault {
            if let Some(&src) = pointers.first() {
                let cand = src.wrapping_add(rng.range_i64(-16, 16) as u64);
                if ctx
                    .locate(cand.wrapping_sub(span + slack), 2 * (span + slack) + esize)
                    .is_some()
                {
                    v = cand;
                }
            }
        }
        let full = with_upper(rng, v);
        ctx.lock(reg, full);
        pointers.push(v);
    }

    // Make REPE/REPNE comparisons terminate at interesting places.
    let range = |p: u64| if df { p.wrapping_sub(span - esize) } else { p };
    match op {
        StrOp::Cmps if !ctx.cur_fault => {
            let (src, dst) = (pointers[0], pointers[1]);
            if let Some(data) = ctx.read_mem(range(src), span) {
                let mut data = data;
                if rng.chance(1, 2) {
                    let i = rng.below(span) as usize;
                    data[i] ^= 1 << rng.below(8);
                }
                ctx.write_mem(range(dst), &data);
            }
        }
        StrOp::Scas if !ctx.cur_fault => {
            let dst = pointers[0];
            let acc = ctx.st.gpr[0].to_le_bytes();
            let mut data = Vec::with_capacity(span as usize);
            let special = rng.below(count.max(1));
            let mode = rng.below(3);
            for e in 0..count.max(1) {
                let equal = match mode {
                    0 => e != special,
                    1 => e == special,
                    _ => rng.chance(1, 2),
                };
                for &byte in &acc[..esize as usize] {
                    data.push(if equal {
                        byte
                    } else {
                        byte ^ (1 << rng.below(8))
                    });
                }
            }
            ctx.write_mem(range(dst), &data);
        }
        _ => {}
    }
    Some(ins)
}

// ---------------------------------------------------------------------------------------------
// Control transfers.

/// The code for a control-transfer form: the transfer followed by [`FILLER`]; targets are the
/// end of the code (the final INT3), the filler, or (rarely) unmapped/non-canonical addresses.
/// LOOPcc sometimes runs backwards over the filler a few times.
fn gen_control(code: Code, ctx: &mut Ctx, rng: &mut Rng, code_addr: u64) -> Option<Vec<u8>> {
    let mn = code.mnemonic();
    let info = code.op_code();
    if STACK_USERS.contains(&mn) {
        ensure_stack(ctx, rng);
    }
    let is_rel = matches!(info.op_kind(0), K::br64_1 | K::br64_4);
    let ecx_only = info.address_size() == 32;
    let set_count = |ctx: &mut Ctx, rng: &mut Rng, v: u64| {
        let full = if ecx_only {
            (rng.next_u64() << 32) | (v & 0xffff_ffff)
        } else {
            v
        };
        ctx.lock(Register::RCX, full);
    };
    if is_rel {
        let backward = matches!(mn, M::Loop | M::Loope | M::Loopne) && rng.chance(1, 3);
        if backward {
            let n = 1 + rng.below(12);
            set_count(ctx, rng, n);
            let ins = Instruction::with_branch(code, code_addr).ok()?;
            let bytes = encode_checked(&ins, code_addr + FILLER.len() as u64)?;
            return Some([&FILLER[..], &bytes].concat());
        }
        match mn {
            M::Jrcxz | M::Jecxz => {
                let v = if rng.chance(1, 2) { 0 } else { random_gpr(rng) };
                set_count(ctx, rng, v);
            }
            M::Loop | M::Loope | M::Loopne => {
                let r = random_gpr(rng);
                let v = rng.pick(&[0, 1, 2, r]);
                set_count(ctx, rng, v);
            }
            _ => {}
        }
        // Branch lengths do not depend on the target: encode once to learn it.
        let probe = Instruction::with_branch(code, code_addr + 2).ok()?;
        let len = encode_checked(&probe, code_addr)?.len() as u64;
        let filler = code_addr + len;
        let end = filler + FILLER.len() as u64;
        let target = if rng.chance(4, 5) { end } else { filler };
        let ins = Instruction::with_branch(code, target).ok()?;
        let bytes = encode_checked(&ins, code_addr)?;
        return Some([&bytes[..], &FILLER[..]].concat());
    }

    // Indirect JMP/CALL and RET: the target lives in a register, in memory or on the stack.
    let mut ins = if mn == M::Ret {
        let mut ins = Instruction::default();
        ins.set_code(code);
        if info.op_count() == 1 {
            ins.set_op0_kind(OpKind::Immediate16);
            let r = rng.below(0x100) as u16;
            ins.set_immediate16(rng.pick(&[0, 8, 16, r, 0xfff8]));
        }
        ins
    } else {
        gen_operands(code, ctx, rng, code_addr)?
    };
    let probe = encode_checked(&ins, code_addr)?;
    let filler = code_addr + probe.len() as u64;
    let end = filler + FILLER.len() as u64;
    let target = match rng.below(24) {
        0 if ctx.fault_pending => 0x2480_0000 + rng.below(0x1000),
        1 if ctx.fault_pending => 0x0000_8000_0000_0000 + rng.below(1 << 40),
        2..=17 => end,
        _ => filler,
    };
    if mn == M::Ret {
        let rsp = ctx.reg(Register::RSP);
        if !ctx.write_mem(rsp, &target.to_le_bytes()) {
            // RSP was deliberately placed at the edge of the stack: the pop faults.
            if !ctx.cur_fault {
                return None;
            }
        }
    } else if ins.op_kind(0) == OpKind::Register {
        if !ctx.set_reg(ins.op_register(0), target) {
            return None;
        }
    } else if !ctx.write_mem(ctx.mem_addr?, &target.to_le_bytes()) && !ctx.cur_fault {
        // (With a deliberately unmapped operand the load faults instead.)
        return None;
    }
    builtin_hook(ctx, &mut ins, rng);
    let bytes = encode_checked(&ins, code_addr)?;
    let decoded = Decoder::with_ip(64, &bytes, code_addr, DecoderOptions::NONE).decode();
    if !ctx.cur_fault && !accesses_ok(ctx, &decoded) {
        return None;
    }
    Some([&bytes[..], &FILLER[..]].concat())
}

// ---------------------------------------------------------------------------------------------
// Built-in per-form value tuning.

fn builtin_hook(ctx: &mut Ctx, ins: &mut Instruction, rng: &mut Rng) {
    let mn = ins.mnemonic();
    let last = ins.op_count().saturating_sub(1);
    match mn {
        M::Div | M::Idiv => hook_div(ctx, ins, rng, mn == M::Idiv),
        M::Shl
        | M::Sal
        | M::Shr
        | M::Sar
        | M::Rol
        | M::Ror
        | M::Rcl
        | M::Rcr
        | M::Shld
        | M::Shrd
            if ins.op_kind(last) == OpKind::Register && ins.op_register(last) == Register::CL =>
        {
            ctx.set_reg(Register::CL, count_edge(rng));
        }
        M::Bt | M::Bts | M::Btr | M::Btc if is_bt_mem_reg(ins) => {
            let v = rng.range_i64(-200, 200) as u64;
            ctx.set_reg(ins.op_register(1), v);
        }
        M::Bsf | M::Bsr | M::Lzcnt | M::Tzcnt | M::Popcnt => match rng.below(8) {
            0 | 1 => {
                ctx.set_operand_value(ins, 1, 0);
            }
            2 => {
                let bits = ins.op_register(0).size() as u64 * 8;
                ctx.set_operand_value(ins, 1, 1u128 << rng.below(bits));
            }
            _ => {}
        },
        M::Cmpxchg if rng.chance(1, 2) => {
            if let Some(v) = ctx.operand_value(ins, 0) {
                let acc = match ins.op_register(1).size() {
                    1 => Register::AL,
                    2 => Register::AX,
                    4 => Register::EAX,
                    _ => Register::RAX,
                };
                ctx.set_reg(acc, v as u64);
            }
        }
        M::Cmpxchg8b | M::Cmpxchg16b if rng.chance(1, 2) => {
            if let Some(v) = ctx.operand_value(ins, 0) {
                if mn == M::Cmpxchg8b {
                    ctx.set_reg(Register::EAX, v as u64 & 0xffff_ffff);
                    ctx.set_reg(Register::EDX, (v >> 32) as u64 & 0xffff_ffff);
                } else {
                    ctx.set_reg(Register::RAX, v as u64);
                    ctx.set_reg(Register::RDX, (v >> 64) as u64);
                }
            }
        }
        M::Popf | M::Popfq => {
            // Never TF: a trap after the next instruction would end the run early.
            let mut v = rng.next_u64() & !TF;
            if rng.chance(3, 4) {
                v &= !(1 << 18); // AC
            }
            let size = if ins.code() == Code::Popfw { 2 } else { 8 };
            let rsp = ctx.reg(Register::RSP);
            ctx.write_mem(rsp, &v.to_le_bytes()[..size]);
        }
        M::Bextr => {
            let start = count_edge(rng) & 0xff;
            let len = count_edge(rng) & 0xff;
            let upper = rng.next_u64() & !0xffff;
            ctx.set_operand_value(ins, 2, (upper | start | len << 8) as u128);
        }
        M::Bzhi | M::Sarx | M::Shlx | M::Shrx => {
            let upper = if rng.chance(1, 3) {
                rng.next_u64() & !0xff
            } else {
                0
            };
            ctx.set_operand_value(ins, 2, (upper | count_edge(rng)) as u128);
        }
        M::Psllw | M::Pslld | M::Psllq | M::Psrlw | M::Psrld | M::Psrlq | M::Psraw | M::Psrad
            if ins.op_count() == 2
                && matches!(ins.op_kind(1), OpKind::Register | OpKind::Memory) =>
        {
            let low = match rng.below(4) {
                0 => rng.below(18),
                1 => rng.pick(&[15, 16, 31, 32, 63, 64, 65, 0x1_0000_0001, u64::MAX]),
                2 => rng.below(256),
                _ => rng.next_u64(),
            };
            let high = if rng.chance(1, 2) { 0 } else { rng.next_u64() };
            ctx.set_operand_value(ins, 1, (high as u128) << 64 | low as u128);
        }
        M::Ucomiss | M::Comiss | M::Movss => {
            for op in 0..2 {
                if rng.chance(3, 5) {
                    set_low_lane(ctx, ins, op, random_f32(rng) as u64, 4);
                }
            }
        }
        M::Ucomisd | M::Comisd | M::Addsd | M::Subsd | M::Mulsd | M::Divsd | M::Cvttsd2si => {
            for op in 0..2 {
                if rng.chance(3, 5) {
                    set_low_lane(ctx, ins, op, random_f64(rng), 8);
                }
            }
        }
        M::Movsd if !is_string(ins.code()) => {
            for op in 0..2 {
                if rng.chance(1, 2) {
                    set_low_lane(ctx, ins, op, random_f64(rng), 8);
                }
            }
        }
        _ => {}
    }
}

/// Replaces the low `bytes` of an XMM or memory operand with `value`.
fn set_low_lane(ctx: &mut Ctx, ins: &Instruction, op: u32, value: u64, bytes: u32) {
    let is_xmm = ins.op_kind(op) == OpKind::Register && ins.op_register(op).is_xmm();
    if !is_xmm && ins.op_kind(op) != OpKind::Memory {
        return;
    }
    let Some(old) = ctx.operand_value(ins, op) else {
        return;
    };
    let mask = (1u128 << (bytes * 8)) - 1;
    ctx.set_operand_value(ins, op, (old & !mask) | (value as u128 & mask));
}

/// DIV/IDIV: mostly a valid division (quotient in range), sometimes a zero divisor, a random
/// dividend (usually overflowing) or, for IDIV, MIN / -1.
fn hook_div(ctx: &mut Ctx, ins: &Instruction, rng: &mut Rng, signed: bool) {
    let bits = super::compare::operand_bits(ins) as u64;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    // Dividend registers: AX for 8-bit, rDX:rAX otherwise.
    let (lo_reg, hi_reg) = match bits {
        8 => (Register::AX, None),
        16 => (Register::AX, Some(Register::DX)),
        32 => (Register::EAX, Some(Register::EDX)),
        _ => (Register::RAX, Some(Register::RDX)),
    };
    // A divisor register that is part of the dividend would be overwritten: leave it random.
    if ins.op_kind(0) == OpKind::Register {
        let full = ins.op_register(0).full_register();
        if full == Register::RAX || full == Register::RDX {
            return;
        }
    }
    let set_dividend = |ctx: &mut Ctx, v: u128| {
        if bits == 8 {
            ctx.set_reg(lo_reg, v as u64 & 0xffff);
        } else {
            ctx.set_reg(lo_reg, v as u64 & mask);
            ctx.set_reg(hi_reg.expect("hi"), (v >> bits) as u64 & mask);
        }
    };
    match rng.below(16) {
        0 => {
            ctx.set_operand_value(ins, 0, 0);
        }
        1 => {}
        2 if signed => {
            ctx.set_operand_value(ins, 0, mask as u128);
            set_dividend(ctx, 1u128 << (2 * bits - 1));
        }
        _ => {
            let divisor = loop {
                let d = random_sized(rng, bits / 8);
                if d != 0 {
                    break d;
                }
            };
            if !ctx.set_operand_value(ins, 0, divisor as u128) {
                return;
            }
            let dividend: u128 = if signed {
                let d = sign_extend(divisor, bits) as i128;
                let half = 1i128 << (bits - 1);
                let q = rng.range_i64(-(half.min(1 << 62) as i64), (half - 1).min(1 << 62) as i64)
                    as i128;
                let q = if rng.chance(1, 4) {
                    rng.pick(&[0, 1, -1, half - 1, -half])
                } else {
                    q
                };
                let prod = q * d;
                let rmax = d.unsigned_abs() as i128 - 1;
                let r = if rmax == 0 {
                    0
                } else {
                    rng.range_i64(0, rmax.min(i64::MAX as i128) as i64) as i128
                };
                let r = if prod < 0 || (prod == 0 && rng.chance(1, 2)) {
                    -r
                } else {
                    r
                };
                let v = prod + r;
                // Two's complement in 2*bits bits.
                (v as u128) & (u128::MAX >> (128 - 2 * bits))
            } else {
                let q = if rng.chance(1, 4) {
                    rng.pick(&[0, 1, mask])
                } else {
                    random_sized(rng, bits / 8)
                };
                let r = rng.next_u64() % divisor;
                q as u128 * divisor as u128 + r as u128
            };
            set_dividend(ctx, dividend);
        }
    }
}
