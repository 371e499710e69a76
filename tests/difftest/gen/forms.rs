//! The covered forms: the mnemonic tables, which forms are excluded and why (encoding,
//! operand kinds, host CPU features), which may appear in blocks, and predicates on forms
//! (control transfers, string operations, BT with a register bit offset into memory).

use iced_x86::{
    Code, CpuidFeature, EncodingKind, Instruction, Mnemonic, OpCodeOperandKind as K, OpKind,
};

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
    M::Xlatb,
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
    // SSE/SSE2 (the rest), SSE3, SSSE3, SSE4.1, SSE4.2 (CRC32 too), AES-NI, PCLMULQDQ.
    M::Addpd,
    M::Addps,
    M::Addss,
    M::Addsubpd,
    M::Addsubps,
    M::Aesdec,
    M::Aesdeclast,
    M::Aesenc,
    M::Aesenclast,
    M::Aesimc,
    M::Aeskeygenassist,
    M::Andnpd,
    M::Andnps,
    M::Andpd,
    M::Blendpd,
    M::Blendps,
    M::Blendvpd,
    M::Blendvps,
    M::Cmppd,
    M::Cmpps,
    M::Cmpss,
    M::Crc32,
    M::Cvtdq2pd,
    M::Cvtdq2ps,
    M::Cvtpd2dq,
    M::Cvtpd2ps,
    M::Cvtps2dq,
    M::Cvtps2pd,
    M::Cvtsd2si,
    M::Cvtsd2ss,
    M::Cvtsi2ss,
    M::Cvtss2sd,
    M::Cvtss2si,
    M::Cvttpd2dq,
    M::Cvttps2dq,
    M::Cvttss2si,
    M::Divpd,
    M::Divps,
    M::Divss,
    M::Dppd,
    M::Dpps,
    M::Extractps,
    M::Haddpd,
    M::Haddps,
    M::Hsubpd,
    M::Hsubps,
    M::Insertps,
    M::Lddqu,
    M::Ldmxcsr,
    M::Stmxcsr,
    M::Maskmovdqu,
    M::Maxpd,
    M::Maxps,
    M::Maxsd,
    M::Maxss,
    M::Minpd,
    M::Minps,
    M::Minsd,
    M::Minss,
    M::Movapd,
    M::Movddup,
    M::Movhlps,
    M::Movhpd,
    M::Movhps,
    M::Movlhps,
    M::Movlpd,
    M::Movlps,
    M::Movmskpd,
    M::Movmskps,
    M::Movntdq,
    M::Movntdqa,
    M::Movnti,
    M::Movntpd,
    M::Movntps,
    M::Movshdup,
    M::Movsldup,
    M::Movupd,
    M::Mpsadbw,
    M::Mulpd,
    M::Mulps,
    M::Mulss,
    M::Orpd,
    M::Orps,
    M::Pabsb,
    M::Pabsd,
    M::Pabsw,
    M::Packssdw,
    M::Packsswb,
    M::Packusdw,
    M::Packuswb,
    M::Paddsb,
    M::Paddsw,
    M::Paddusb,
    M::Paddusw,
    M::Palignr,
    M::Pavgb,
    M::Pavgw,
    M::Pblendvb,
    M::Pblendw,
    M::Pclmulqdq,
    M::Pcmpestri,
    M::Pcmpestri64,
    M::Pcmpestrm,
    M::Pcmpestrm64,
    M::Pcmpgtq,
    M::Pcmpistri,
    M::Pcmpistrm,
    M::Pextrb,
    M::Pextrd,
    M::Pextrq,
    M::Pextrw,
    M::Phaddd,
    M::Phaddsw,
    M::Phaddw,
    M::Phminposuw,
    M::Phsubd,
    M::Phsubsw,
    M::Phsubw,
    M::Pinsrb,
    M::Pinsrd,
    M::Pinsrq,
    M::Pinsrw,
    M::Pmaddubsw,
    M::Pmaddwd,
    M::Pmaxsb,
    M::Pmaxsd,
    M::Pmaxsw,
    M::Pmaxud,
    M::Pmaxuw,
    M::Pminsb,
    M::Pminsd,
    M::Pminsw,
    M::Pminud,
    M::Pminuw,
    M::Pmovsxbd,
    M::Pmovsxbq,
    M::Pmovsxbw,
    M::Pmovsxdq,
    M::Pmovsxwd,
    M::Pmovsxwq,
    M::Pmovzxbd,
    M::Pmovzxbq,
    M::Pmovzxbw,
    M::Pmovzxdq,
    M::Pmovzxwd,
    M::Pmovzxwq,
    M::Pmuldq,
    M::Pmulhrsw,
    M::Pmulhuw,
    M::Pmulhw,
    M::Pmulld,
    M::Pmullw,
    M::Pmuludq,
    M::Psadbw,
    M::Pshufb,
    M::Psignb,
    M::Psignd,
    M::Psignw,
    M::Psubsb,
    M::Psubsw,
    M::Psubusb,
    M::Psubusw,
    M::Ptest,
    M::Rcpps,
    M::Rcpss,
    M::Roundpd,
    M::Roundps,
    M::Roundsd,
    M::Roundss,
    M::Rsqrtps,
    M::Rsqrtss,
    M::Shufpd,
    M::Shufps,
    M::Sqrtpd,
    M::Sqrtps,
    M::Sqrtsd,
    M::Sqrtss,
    M::Unpckhpd,
    M::Unpckhps,
    M::Unpcklpd,
    M::Unpcklps,
    M::Xorpd,
    M::Subpd,
    M::Subps,
    M::Subss,
    M::Prefetchnta,
    M::Prefetcht0,
    M::Prefetcht1,
    M::Prefetcht2,
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
pub(super) const LOCKABLE: &[Mnemonic] = &[
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

/// Mnemonics whose forms push or pop: RSP must point into the stack region.
pub(super) const STACK_USERS: &[Mnemonic] = &[
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

pub(super) fn is_string(code: Code) -> bool {
    string_info(code).is_some()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StrOp {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
}

/// The string operation and element size of a string-instruction form.
pub(super) fn string_info(code: Code) -> Option<(StrOp, u64)> {
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
            | K::seg_rBX_al
            | K::seg_rDI
            | K::br64_1
            | K::br64_4
    )
}

/// Why `code` is not covered, or `None` if it is.
pub fn exclusion_reason(code: Code) -> Option<&'static str> {
    if super::x87::is_x87_or_mmx(code) {
        return super::x87::exclusion(code);
    }
    let mn = code.mnemonic();
    let vex_vector = super::vex::is_vex_vector(code);
    if vex_vector {
        if let Some(why) = super::vex::vex_exclusion(code) {
            return Some(why);
        }
    } else if !MNEMONICS.contains(&mn) {
        return Some("mnemonic not in the covered set");
    }
    let info = code.op_code();
    if !info.is_instruction() || !info.mode64() {
        return Some("not valid in 64-bit mode");
    }
    match info.encoding() {
        EncodingKind::Legacy => {}
        EncodingKind::VEX if BMI_VEX.contains(&mn) || vex_vector => {}
        _ => return Some("VEX/EVEX/XOP/3DNow! encoding"),
    }
    if !info
        .op_kinds()
        .iter()
        .all(|k| supported_kind(*k) || (vex_vector && super::vex::supported_vex_kind(*k)))
    {
        return Some("operand kind not generated (MMX, segment/control/debug register, far or 16/32-bit branch)");
    }
    if matches!(mn, M::Jmp | M::Call) && info.op_kind(0) == K::mem {
        return Some("far indirect transfer");
    }
    if is_control(mn) && info.operand_size() == 16 {
        return Some("16-bit operand-size control transfer (Intel and AMD differ)");
    }
    if !host_supports(code) {
        return Some("not supported by this CPU");
    }
    None
}

/// The legacy-encoded (non-VEX) 64-bit-mode forms of SSE..SSE4.2, AES-NI, PCLMULQDQ, CRC32,
/// POPCNT, MOVBE and XLAT that are not covered, with the reason.
pub fn uncovered_legacy_simd() -> Vec<(Code, &'static str)> {
    use CpuidFeature as F;
    const FEATURES: &[CpuidFeature] = &[
        F::SSE,
        F::SSE2,
        F::SSE3,
        F::SSSE3,
        F::SSE4_1,
        F::SSE4_2,
        F::AES,
        F::PCLMULQDQ,
        F::POPCNT,
        F::MOVBE,
    ];
    Code::values()
        .filter(|c| {
            let op = c.op_code();
            op.is_instruction() && op.mode64() && op.encoding() == EncodingKind::Legacy
        })
        .filter(|&c| {
            let mut ins = Instruction::default();
            ins.set_code(c);
            ins.cpuid_features().iter().any(|f| FEATURES.contains(f))
                || matches!(c.mnemonic(), M::Crc32 | M::Xlatb)
        })
        .filter_map(|c| exclusion_reason(c).map(|why| (c, why)))
        .collect()
}

/// The 64-bit-mode VEX vector forms (AVX, AVX2, FMA, F16C, VEX SSE/AES/PCLMULQDQ) that are
/// not covered, with the reason.
pub fn uncovered_vex() -> Vec<(Code, &'static str)> {
    Code::values()
        .filter(|&c| super::vex::is_vex_vector(c))
        .filter_map(|c| exclusion_reason(c).map(|why| (c, why)))
        .collect()
}

/// The covered VEX vector forms.
pub fn covered_vex() -> Vec<Code> {
    Code::values()
        .filter(|&c| super::vex::is_vex_vector(c) && exclusion_reason(c).is_none())
        .collect()
}

/// All covered forms, in `Code` order.
pub fn covered_codes() -> Vec<Code> {
    Code::values()
        .filter(|c| exclusion_reason(*c).is_none())
        .collect()
}

pub(super) fn host_supports(code: Code) -> bool {
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
        F::AES => is_x86_feature_detected!("aes"),
        F::PCLMULQDQ => is_x86_feature_detected!("pclmulqdq"),
        F::LZCNT => is_x86_feature_detected!("lzcnt"),
        F::BMI1 => is_x86_feature_detected!("bmi1"),
        F::BMI2 => is_x86_feature_detected!("bmi2"),
        F::ADX => is_x86_feature_detected!("adx"),
        F::MOVBE => is_x86_feature_detected!("movbe"),
        F::AVX => is_x86_feature_detected!("avx"),
        F::AVX2 => is_x86_feature_detected!("avx2"),
        F::FMA => is_x86_feature_detected!("fma"),
        F::F16C => is_x86_feature_detected!("f16c"),
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

/// BT/BTS/BTR/BTC with a memory destination and a register bit offset (the offset moves the
/// accessed element).
pub(super) fn is_bt_mem_reg(ins: &Instruction) -> bool {
    matches!(ins.mnemonic(), M::Bt | M::Bts | M::Btr | M::Btc)
        && ins.op_kind(0) == OpKind::Memory
        && ins.op_kind(1) == OpKind::Register
}
