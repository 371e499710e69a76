//! Values for the x87 and MMX forms: 80-bit extended values of every class (zeros,
//! denormals, pseudo-denormals, unnormals, infinities, pseudo-infinities and pseudo-NaNs,
//! signalling and quiet NaNs, the real indefinite, huge and tiny normals, integers at the
//! conversion boundaries, rounding ties), integer and packed-BCD memory operands, and random
//! x87 states (TOP, tags, control word with precision and rounding control and sometimes
//! unmasked exceptions, status word with C0-C3 and sticky flags, sometimes a pending exception).

use super::super::rng::Rng;
use super::values::{random_f32, random_f64};
use krr_runtime::X87State;

/// An 80-bit extended value in a 16-byte slot.
pub(super) fn ext(sign: bool, exp: u16, mant: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&mant.to_le_bytes());
    b[8..10].copy_from_slice(&((exp & 0x7fff) | (sign as u16) << 15).to_le_bytes());
    b
}

/// A double converted exactly to extended precision.
pub(super) fn ext_of_f64(bits: u64) -> [u8; 16] {
    let sign = bits >> 63 != 0;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    match exp {
        0 if frac == 0 => ext(sign, 0, 0),
        0 => {
            // A double denormal is a normal extended value.
            let shift = frac.leading_zeros() as i32;
            ext(sign, (16383 - 1022 - (shift - 11)) as u16, frac << shift)
        }
        0x7ff => ext(sign, 0x7fff, 1 << 63 | frac << 11),
        _ => ext(sign, (exp - 1023 + 16383) as u16, 1 << 63 | frac << 11),
    }
}

/// An integer as an exact extended value.
pub(super) fn ext_of_int(v: i128) -> [u8; 16] {
    if v == 0 {
        return ext(false, 0, 0);
    }
    let m = v.unsigned_abs();
    let bits = 128 - m.leading_zeros();
    // Integers up to 2^64 are exact; larger ones are truncated (still a valid value).
    let mant = if bits > 64 {
        (m >> (bits - 64)) as u64
    } else {
        (m << (64 - bits)) as u64
    };
    ext(v < 0, (16383 + bits - 1) as u16, mant)
}

/// A random extended value, biased towards the edges.
pub(super) fn random_ext(rng: &mut Rng) -> [u8; 16] {
    let sign = rng.chance(1, 2);
    let frac = rng.next_u64() & !(1 << 63);
    match rng.below(24) {
        0..=5 => ext(
            sign,
            (16383 + rng.range_i64(-70, 70)) as u16,
            1 << 63 | frac,
        ),
        6 | 7 => ext_of_f64(random_f64(rng)),
        8 => ext(sign, 0, 0),
        9 => ext(sign, 0, frac.max(1) >> rng.below(63)), // denormal
        10 => ext(sign, 0, 1 << 63 | frac),              // pseudo-denormal
        11 => ext(sign, 1 + rng.below(0x7ffe) as u16, frac >> rng.below(63)), // unnormal
        12 => ext(sign, 0x7fff, 1 << 63),                // infinity
        13 => ext(sign, 0x7fff, frac >> rng.below(64)),  // pseudo-infinity / pseudo-NaN
        14 => ext(sign, 0x7fff, 1 << 63 | (frac & !(1 << 62)).max(1)), // SNaN
        15 => ext(sign, 0x7fff, 3 << 62 | frac),         // QNaN
        16 => ext(true, 0x7fff, 3 << 62),                // real indefinite
        17 => ext(sign, 0x7ffe - rng.below(64) as u16, 1 << 63 | frac), // huge
        18 => ext(sign, 1 + rng.below(64) as u16, 1 << 63 | frac), // tiny
        19 => ext_of_int(boundary_int(rng)),
        20 => {
            // A tie or near-tie: k + 1/2 (+- an ulp).
            let k = rng.range_i64(-100, 100) as i128;
            let mut v = ext_of_int(2 * k + 1);
            let e = u16::from_le_bytes([v[8], v[9]]);
            v[8..10].copy_from_slice(&(e.wrapping_sub(1)).to_le_bytes());
            let m = u64::from_le_bytes(v[..8].try_into().expect("8"));
            let m = match rng.below(3) {
                0 => m.wrapping_add(1),
                1 => m.wrapping_sub(1),
                _ => m,
            };
            v[..8].copy_from_slice(&(m | 1 << 63).to_le_bytes());
            v
        }
        21 => ext_of_int(rng.range_i64(-20, 20) as i128),
        22 => ext(
            sign,
            0x3fff + rng.below(3) as u16,
            1 << 63 | frac >> rng.below(64),
        ),
        _ => ext_of_f64(random_f32_as_f64(rng)),
    }
}

fn random_f32_as_f64(rng: &mut Rng) -> u64 {
    (f32::from_bits(random_f32(rng)) as f64).to_bits()
}

/// Integers at the edges of the 16-, 32- and 64-bit conversions (and beyond).
pub(super) fn boundary_int(rng: &mut Rng) -> i128 {
    let bits = rng.pick(&[15u32, 16, 31, 32, 63, 64]);
    let base = 1i128 << bits;
    let v = base + rng.range_i64(-2, 2) as i128;
    if rng.chance(1, 2) {
        -v
    } else {
        v
    }
}

/// A value in one of the ranges a transcendental or scaling form is defined on or near.
pub(super) fn ranged_ext(rng: &mut Rng, lo: f64, hi: f64) -> [u8; 16] {
    let x = lo + (hi - lo) * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let mut v = ext_of_f64(x.to_bits());
    // Random low mantissa bits below the double's precision.
    if v[9] & 0x7f != 0 || v[8] != 0 {
        v[0] = rng.next_u64() as u8;
    }
    v
}

/// A signed integer memory operand of `bytes` bytes: edges and random values.
pub(super) fn random_int(rng: &mut Rng, bytes: u64) -> u64 {
    let bits = bytes * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let v = match rng.below(6) {
        0 => rng.pick(&[0, 1, u64::MAX, 1 << (bits - 1), (1 << (bits - 1)) - 1]),
        1 => rng.range_i64(-1000, 1000) as u64,
        2 => (1u64 << rng.below(bits)).wrapping_add(rng.range_i64(-1, 1) as u64),
        _ => rng.next_u64(),
    };
    v & mask
}

/// A packed-BCD operand: 18 digits and a sign byte (now and then invalid digits or sign
/// bits).
pub(super) fn random_bcd(rng: &mut Rng) -> [u8; 10] {
    let mut b = [0u8; 10];
    let digits = rng.below(19);
    for (i, byte) in b.iter_mut().take(9).enumerate() {
        let digit = |rng: &mut Rng, n: u64| if n < digits { rng.below(10) } else { 0 };
        let lo = digit(rng, 2 * i as u64);
        let hi = digit(rng, 2 * i as u64 + 1);
        *byte = (lo | hi << 4) as u8;
    }
    if rng.chance(1, 12) {
        b[rng.below(9) as usize] |= (0xa + rng.below(6) as u8) << 4; // an invalid digit
    }
    b[9] = if rng.chance(1, 2) { 0x80 } else { 0 };
    if rng.chance(1, 12) {
        b[9] |= rng.below(0x80) as u8;
    }
    b
}

/// A 64-bit MMX value.
pub(super) fn random_mmx(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0..=3 => rng.next_u64(),
        4 => rng.pick(&[0, u64::MAX, 0x8000_8000_8000_8000, 0x7fff_7fff_7fff_7fff]),
        5 => random_f32(rng) as u64 | (random_f32(rng) as u64) << 32,
        6 => 0x0101_0101_0101_0101 * rng.below(256),
        _ => rng.next_u64() & 0x00ff_00ff_8f8f_0f0f,
    }
}

/// A random control word: mostly all exceptions masked, sometimes some unmasked; every
/// precision and rounding control.
pub(super) fn random_fcw(rng: &mut Rng) -> u16 {
    let mut cw = 0x003fu16 | 0x40;
    if rng.chance(1, 4) {
        cw &= !(rng.below(64) as u16);
    }
    cw |= (rng.pick(&[3u16, 3, 2, 0, 1])) << 8;
    cw |= (rng.below(4) as u16) << 10;
    if rng.chance(1, 4) {
        cw |= 1 << 12; // infinity control (ignored)
    }
    cw
}

/// Sets FSW.ES and B from the flags and masks: pending only if an unmasked flag is set.
pub(super) fn with_summary(fsw: u16, fcw: u16) -> u16 {
    let pending = fsw & !fcw & 0x3f != 0;
    (fsw & !0x8080) | if pending { 0x8080 } else { 0 }
}

/// A random x87 state: `valid` registers from TOP up hold values (the rest are empty, or
/// now and then random tags), FCW random, FSW with random condition codes and sticky flags;
/// one case in `pending_one_in` keeps an unmasked flag set (the next waiting instruction
/// takes #MF).
pub(super) fn random_x87(rng: &mut Rng, pending_one_in: u64) -> X87State {
    let top = if rng.chance(1, 3) {
        0
    } else {
        rng.below(8) as u16
    };
    let valid = match rng.below(6) {
        0 => 0,
        1 => 8,
        _ => 1 + rng.below(7),
    };
    let mut tags = 0u8;
    for i in 0..valid {
        tags |= 1 << ((top as u64 + i) & 7);
    }
    if rng.chance(1, 8) {
        tags = rng.below(256) as u8;
    }
    let mut st = [[0u8; 16]; 8];
    for s in st.iter_mut() {
        *s = if rng.chance(1, 8) {
            let mut v = ext(false, rng.below(0x8000) as u16, rng.next_u64());
            v[9] |= (rng.chance(1, 2) as u8) << 7;
            v
        } else {
            random_ext(rng)
        };
    }
    let fcw = random_fcw(rng);
    let mut fsw = (top << 11) | (rng.below(16) as u16 & 0x7) << 8 | (rng.below(2) as u16) << 14;
    if rng.chance(1, 3) {
        fsw |= rng.below(128) as u16;
    }
    if !rng.chance(1, pending_one_in.max(1)) {
        fsw &= !(!fcw & 0x3f);
    } else {
        fsw |= 1 << rng.below(6);
    }
    let fsw = with_summary(fsw, fcw);
    X87State {
        fcw,
        fsw,
        ftw: tags,
        // krr's pointers: the host's FXSAVE shows them only with an exception pending (see
        // `compare_x87`), so they start at zero unless one is.
        fop: if fsw & 0x80 != 0 {
            rng.below(0x800) as u16
        } else {
            0
        },
        fip: if fsw & 0x80 != 0 {
            rng.next_u64() & 0x7fff_ffff_ffff
        } else {
            0
        },
        fdp: if fsw & 0x80 != 0 {
            rng.next_u64() & 0x7fff_ffff_ffff
        } else {
            0
        },
        st,
    }
}

/// The full (2-bit) tag of an extended value: 0 valid, 1 zero, 2 special.
fn full_tag(v: &[u8; 16]) -> u16 {
    let exp = u16::from_le_bytes([v[8], v[9]]) & 0x7fff;
    let mant = u64::from_le_bytes(v[..8].try_into().expect("8"));
    match exp {
        0 if mant == 0 => 1,
        0 | 0x7fff => 2,
        _ if mant >> 63 == 0 => 2,
        _ => 0,
    }
}

/// An FLDENV/FRSTOR image (`len` 14, 28, 94 or 108 bytes) of a random state: the 16-bit or
/// 32-bit protected-mode layout, the full tag word (now and then inconsistent with the
/// contents), the pointers, and for FRSTOR the registers in stack order.
pub(super) fn env_image(rng: &mut Rng, len: usize) -> Vec<u8> {
    let x = random_x87(rng, 6);
    let top = (x.fsw >> 11) & 7;
    let mut tw = 0u16;
    for phys in 0..8 {
        let tag = if x.ftw & (1 << phys) == 0 {
            3
        } else {
            let st = (phys + 8 - top) & 7;
            full_tag(&x.st[st as usize])
        };
        tw |= tag << (2 * phys);
    }
    if rng.chance(1, 10) {
        tw = rng.next_u64() as u16;
    }
    let mut b = vec![0u8; len];
    let wide = len == 28 || len == 108;
    let words: [u32; 7] = [
        x.fcw as u32 | if rng.chance(1, 4) { 0xffff_0000 } else { 0 },
        x.fsw as u32,
        tw as u32,
        rng.next_u64() as u32,
        0x33 | (rng.below(0x800) as u32) << 16,
        rng.next_u64() as u32,
        rng.below(0x10000) as u32,
    ];
    let env = if wide { 28 } else { 14 };
    for (i, w) in words.iter().enumerate() {
        if wide {
            b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        } else {
            b[2 * i..2 * i + 2].copy_from_slice(&(*w as u16).to_le_bytes());
        }
    }
    if len > env {
        for i in 0..8 {
            b[env + 10 * i..env + 10 * i + 10].copy_from_slice(&x.st[i][..10]);
        }
    }
    b
}
