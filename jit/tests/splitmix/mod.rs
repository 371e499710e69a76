//! splitmix64: deterministic operands for the engine's tests, without a dependency.
#![allow(dead_code)]

pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An operand for a `bits`-wide operation: mostly in range, biased towards the edges (0, 1,
/// the sign bit, all ones, nibble carries) and small shift counts.
pub fn edge_operand(rng: &mut SplitMix, bits: u32) -> u64 {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let top = 1u64 << (bits - 1);
    let r = rng.next();
    match r % 10 {
        0 => 0,
        1 => 1,
        2 => top,
        3 => top - 1,
        4 => mask,
        5 => r >> 8 & 0x1f,
        6 => (r >> 8) % (2 * bits as u64 + 2),
        7 => rng.next(),
        _ => rng.next() & mask,
    }
}
