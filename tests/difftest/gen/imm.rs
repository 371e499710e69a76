//! Immediate operands: their iced-x86 operand kinds and edge-biased random values (shift and
//! bit counts at the masking edges, ENTER's sizes and nesting levels).

use super::super::rng::Rng;
use super::values::{count_edge, random_gpr};
use iced_x86::{Code, Mnemonic as M, OpCodeOperandKind as K, OpKind};

/// A random immediate for operand `i` (of kind `k`) of `code`.
pub(super) fn gen_imm(code: Code, i: u32, k: K, rng: &mut Rng) -> u64 {
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

pub(super) fn imm_op_kind(k: K, prev_was_imm: bool) -> Option<OpKind> {
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
