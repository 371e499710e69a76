//! Random values: edge-biased GPR and operand values, shift counts, float edge values, XMM
//! contents and memory region contents.

use super::super::rng::Rng;

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
pub(super) fn random_sized(rng: &mut Rng, bytes: u64) -> u64 {
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
pub(super) fn count_edge(rng: &mut Rng) -> u64 {
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

pub(super) fn random_f64(rng: &mut Rng) -> u64 {
    if rng.chance(1, 4) {
        // A "normal" random double of moderate magnitude.
        let exp = (1023 + rng.range_i64(-40, 70)) as u64;
        return (rng.next_u64() & 0x800f_ffff_ffff_ffff) | (exp << 52);
    }
    rng.pick(&F64_EDGES)
}

pub(super) fn random_f32(rng: &mut Rng) -> u32 {
    if rng.chance(1, 4) {
        let exp = (127 + rng.range_i64(-20, 40)) as u32;
        return (rng.next_u64() as u32 & 0x807f_ffff) | (exp << 23);
    }
    rng.pick(&F32_EDGES)
}

pub(super) fn random_xmm(rng: &mut Rng) -> u128 {
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

pub(super) fn random_region(rng: &mut Rng, len: u64) -> Vec<u8> {
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

/// `v`'s low `bits` bits, sign-extended.
pub(super) fn sign_extend(v: u64, bits: u64) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}
