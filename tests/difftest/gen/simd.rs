//! Value tuning for the SSE..SSE4.2, AES-NI, PCLMULQDQ and CRC32 forms: MXCSR with varied
//! rounding, DAZ, FTZ, sticky flags and now and then unmasked exceptions; floating-point lanes
//! of edge values (denormals, SNaN/QNaN, infinities, signed zeros, rounding boundaries) in
//! every XMM and memory operand of a floating-point form; strings with embedded zeros and
//! lengths around the edges for PCMPESTRx/PCMPISTRx.

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::values::{random_f32, random_f64};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};

/// Whether `ins` uses an XMM register or is one of the SIMD-class forms tuned here.
fn is_simd(ins: &Instruction) -> bool {
    (0..ins.op_count()).any(|i| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            r.is_xmm() || r.is_ymm()
        }
    })
}

/// Lane width in bits of a floating-point form's source, or `None` for other forms.
fn fp_lanes(mn: M) -> Option<u32> {
    let name = format!("{mn:?}").to_ascii_lowercase();
    // VEX forms tune like their legacy twins (VADDPS like ADDPS).
    let name = match name.strip_prefix('v') {
        Some(rest) if name != "vzeroupper" && name != "vzeroall" => rest.to_string(),
        _ => name,
    };
    let int_first = name.starts_with('p') && !name.starts_with("pcmp");
    if name.starts_with("cvt") {
        let src = name.trim_start_matches("cvtt").trim_start_matches("cvt");
        return Some(if src.starts_with("pd") || src.starts_with("sd") {
            64
        } else {
            32
        });
    }
    if int_first || name.starts_with("pcmp") || name.starts_with("aes") {
        return None;
    }
    if name.ends_with("pd") || name.ends_with("sd") || name == "movddup" {
        Some(64)
    } else if name.ends_with("ps") || name.ends_with("ss") || name.contains("dup") {
        Some(32)
    } else {
        None
    }
}

/// A 128-bit value of floating-point lanes of `w` bits (edge-biased, some lanes random).
fn fp_value(rng: &mut Rng, w: u32) -> u128 {
    let mut v = 0u128;
    if w == 64 {
        for i in 0..2 {
            let l = if rng.chance(1, 6) {
                rng.next_u64()
            } else {
                random_f64(rng)
            };
            v |= (l as u128) << (64 * i);
        }
    } else {
        for i in 0..4 {
            let l = if rng.chance(1, 6) {
                rng.next_u64() as u32
            } else {
                random_f32(rng)
            };
            v |= (l as u128) << (32 * i);
        }
    }
    v
}

/// A random MXCSR: rounding, DAZ, FTZ, sticky flags, sometimes unmasked exceptions.
fn random_mxcsr(rng: &mut Rng) -> u32 {
    let mut m = 0x1f80u32;
    if rng.chance(1, 2) {
        m = (m & !0x6000) | (rng.below(4) as u32) << 13;
    }
    if rng.chance(1, 3) {
        m |= 0x40; // DAZ
    }
    if rng.chance(1, 3) {
        m |= 0x8000; // FTZ
    }
    if rng.chance(1, 4) {
        m |= rng.below(64) as u32;
    }
    if rng.chance(1, 8) {
        m &= !((rng.below(64) as u32) << 7);
    }
    m
}

/// A string operand for PCMPxSTRx: bytes or words from a small alphabet (so that matches
/// and ranges hit), with a zero element somewhere half the time.
fn string_value(rng: &mut Rng, words: bool) -> u128 {
    let n = if words { 8 } else { 16 };
    let w = if words { 16 } else { 8 };
    let mut v = 0u128;
    for i in 0..n {
        let e: u128 = match rng.below(8) {
            0 => 0,
            1 => rng.next_u64() as u128 & ((1 << w) - 1),
            2 => rng.pick(&[0x7f, 0x80, 0xff, 0x7fff, 0x8000, 0xffff]) as u128 & ((1 << w) - 1),
            _ => rng.pick(&[0x41, 0x42, 0x43, 0x61, 0x62, 0x30, 0x39]) as u128,
        };
        v |= e << (w * i);
    }
    if rng.chance(1, 2) {
        let at = rng.below(n);
        v &= !(((1u128 << w) - 1) << (w * at));
    }
    v
}

/// A length for PCMPESTRx's EAX/EDX (RAX/RDX with REX.W): mostly around the element count.
fn string_length(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0..=2 => rng.range_i64(-20, 20) as u64,
        3 => rng.pick(&[
            16,
            8,
            17,
            9,
            0,
            u64::MAX,
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fff0,
        ]),
        4 => rng.next_u64(),
        _ => (rng.next_u64() & !0xffff_ffff) | rng.below(20),
    }
}

/// Tunes the operands of a SIMD form (see the module documentation).
pub(super) fn tune(ctx: &mut Ctx, ins: &mut Instruction, rng: &mut Rng) {
    let mn = super::vex::legacy_twin(ins.mnemonic());
    if mn == M::Ldmxcsr && rng.chance(7, 8) {
        // Mostly a valid MXCSR (reserved bits set raise #GP).
        let v = random_mxcsr(rng);
        ctx.set_operand_value(ins, 0, v as u128);
        return;
    }
    if !is_simd(ins) && mn != M::Crc32 {
        return;
    }
    if rng.chance(2, 3) {
        ctx.st.mxcsr = random_mxcsr(rng);
    }
    let string = matches!(
        mn,
        M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64 | M::Pcmpistri | M::Pcmpistrm
    );
    if string {
        let imm = (0..ins.op_count())
            .find(|&i| ins.op_kind(i) == OpKind::Immediate8)
            .map_or(0, |i| ins.immediate(i));
        for op in 0..2 {
            if rng.chance(4, 5) {
                let v = string_value(rng, imm & 1 != 0);
                ctx.set_operand_value(ins, op, v);
            }
        }
        if matches!(
            mn,
            M::Pcmpestri | M::Pcmpestri64 | M::Pcmpestrm | M::Pcmpestrm64
        ) {
            for r in [Register::RAX, Register::RDX] {
                if rng.chance(4, 5) {
                    ctx.set_reg(r, string_length(rng));
                }
            }
        }
        return;
    }
    if let Some(w) = fp_lanes(mn) {
        for op in 0..ins.op_count() {
            let k = ins.op_kind(op);
            let xmm = k == OpKind::Register && {
                let r = ins.op_register(op);
                r.is_xmm() || r.is_ymm()
            };
            if (xmm || k == OpKind::Memory) && rng.chance(3, 4) {
                let v = fp_value(rng, w);
                ctx.set_operand_value(ins, op, v);
            }
        }
        // BLENDVPS/BLENDVPD's implicit XMM0 selects lanes by their sign.
        if matches!(mn, M::Blendvps | M::Blendvpd) && rng.chance(1, 2) {
            ctx.set_xmm(Register::XMM0, fp_value(rng, 32));
        }
    }
}
