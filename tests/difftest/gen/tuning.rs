//! Built-in per-form value tuning, run after operand generation: DIV/IDIV towards valid
//! quotients, shift and bit counts towards masking edges, CMPXCHG towards equal comparands,
//! POPF without TF, float operands towards edge values, and so on.

use super::super::compare::{operand_bits, TF};
use super::super::rng::Rng;
use super::ctx::Ctx;
use super::forms::{is_bt_mem_reg, is_string};
use super::values::{count_edge, random_f32, random_f64, random_sized, sign_extend};
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind, Register};

/// Tunes the values of `ins`'s operands for its mnemonic (see the module documentation).
pub(super) fn builtin_hook(ctx: &mut Ctx, ins: &mut Instruction, rng: &mut Rng) {
    super::vex::tune(ctx, ins, rng);
    super::simd::tune(ctx, ins, rng);
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
    let bits = operand_bits(ins) as u64;
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
