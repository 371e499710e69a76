//! The VEX-encoded vector forms (AVX, AVX2, FMA3, F16C and the VEX forms of SSE..SSE4.2,
//! AES-NI and PCLMULQDQ): which are covered, the alignment their memory operands need, and
//! their tuning: random YMM upper halves in every register (compared after the run), masks
//! for the masked moves (empty, full, one element, random: only selected elements fault),
//! and the legacy twin's SIMD tuning (MXCSR, floating-point edge lanes, strings).

use super::super::rng::Rng;
use super::ctx::Ctx;
use iced_x86::{Code, EncodingKind, Instruction, Mnemonic as M, OpCodeOperandKind as K};

/// Operand kinds that make a VEX form a vector one (BMI1/BMI2 have none of them).
fn is_vector_kind(k: K) -> bool {
    matches!(
        k,
        K::xmm_reg
            | K::xmm_rm
            | K::xmm_vvvv
            | K::xmm_is4
            | K::xmm_or_mem
            | K::ymm_reg
            | K::ymm_rm
            | K::ymm_vvvv
            | K::ymm_is4
            | K::ymm_or_mem
            | K::mem_vsib32x
            | K::mem_vsib32y
            | K::mem_vsib64x
            | K::mem_vsib64y
    )
}

/// A 64-bit-mode VEX form on vector state.
pub(super) fn is_vex_vector(code: Code) -> bool {
    let info = code.op_code();
    info.is_instruction()
        && info.mode64()
        && info.encoding() == EncodingKind::VEX
        && (matches!(
            code.mnemonic(),
            M::Vzeroupper | M::Vzeroall | M::Vldmxcsr | M::Vstmxcsr
        ) || info.op_kinds().iter().any(|k| is_vector_kind(*k)))
}

/// The operand kinds of VEX forms the generator fills (besides the legacy ones).
pub(super) fn supported_vex_kind(k: K) -> bool {
    matches!(
        k,
        K::xmm_vvvv
            | K::xmm_is4
            | K::ymm_reg
            | K::ymm_rm
            | K::ymm_vvvv
            | K::ymm_is4
            | K::ymm_or_mem
    )
}

/// Why a VEX vector form is not covered (checked before the generic reasons).
pub(super) fn vex_exclusion(code: Code) -> Option<&'static str> {
    if !super::forms::host_supports(code) {
        // FMA4, XOP's VPERMIL2PS/PD, AVX-VNNI, VAES, GFNI, ...: no krr model reports them.
        return Some("not supported by this CPU");
    }
    let info = code.op_code();
    if info.op_kinds().iter().any(|k| {
        matches!(
            k,
            K::mem_vsib32x | K::mem_vsib32y | K::mem_vsib64x | K::mem_vsib64y
        )
    }) {
        return Some("VSIB gather (checked against the host in jit/tests/avx.rs)");
    }
    None
}

/// Forms whose memory operand must be aligned to its size (#GP otherwise): the aligned and
/// non-temporal moves. Every other VEX memory operand may be unaligned.
pub(super) fn vex_alignment(code: Code, size: u64) -> u64 {
    if matches!(
        code.mnemonic(),
        M::Vmovaps
            | M::Vmovapd
            | M::Vmovdqa
            | M::Vmovntps
            | M::Vmovntpd
            | M::Vmovntdq
            | M::Vmovntdqa
    ) {
        size
    } else {
        1
    }
}

/// The legacy mnemonic a VEX mnemonic shares its tuning with (VPCMPESTRI -> PCMPESTRI, ...).
pub(super) fn legacy_twin(mn: M) -> M {
    match mn {
        M::Vpcmpestri => M::Pcmpestri,
        M::Vpcmpestri64 => M::Pcmpestri64,
        M::Vpcmpestrm => M::Pcmpestrm,
        M::Vpcmpestrm64 => M::Pcmpestrm64,
        M::Vpcmpistri => M::Pcmpistri,
        M::Vpcmpistrm => M::Pcmpistrm,
        M::Vldmxcsr => M::Ldmxcsr,
        M::Vblendvps => M::Blendvps,
        M::Vblendvpd => M::Blendvpd,
        other => other,
    }
}

/// A mask register's value: every element selected, none, one, or random; `elem` bytes.
fn mask_value(rng: &mut Rng, elem: usize) -> [u8; 32] {
    let n = 32 / elem;
    let choice = rng.below(4);
    let one = rng.below(n as u64) as usize;
    let mut m = [0u8; 32];
    for i in 0..n {
        let on = match choice {
            0 => true,
            1 => false,
            2 => i == one,
            _ => rng.chance(1, 2),
        };
        if on {
            m[i * elem + elem - 1] = 0x80 | rng.below(0x80) as u8;
        }
    }
    m
}

/// Tunes a VEX vector form (see the module documentation).
pub(super) fn tune(ctx: &mut Ctx, ins: &mut Instruction, rng: &mut Rng) {
    if !is_vex_vector(ins.code()) {
        return;
    }
    for x in ctx.st.ymm_hi.iter_mut() {
        *x = if rng.chance(1, 8) {
            0
        } else {
            (rng.next_u64() as u128) << 64 | rng.next_u64() as u128
        };
    }
    if matches!(
        ins.mnemonic(),
        M::Vmaskmovps | M::Vmaskmovpd | M::Vpmaskmovd | M::Vpmaskmovq
    ) {
        let elem = if matches!(ins.mnemonic(), M::Vmaskmovps | M::Vpmaskmovd) {
            4
        } else {
            8
        };
        let mask = ins.op1_register();
        let n = mask.number();
        let m = mask_value(rng, elem);
        ctx.st.xmm[n] = u128::from_le_bytes(m[..16].try_into().expect("16 bytes"));
        ctx.st.ymm_hi[n] = u128::from_le_bytes(m[16..].try_into().expect("16 bytes"));
    }
}
