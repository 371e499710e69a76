//! The SSE integer lane operations (SWAR arithmetic on the two 64-bit halves of a register),
//! shuffles, unpacks and shifts.

use super::*;

/// The integer-lane, shuffle and shift instructions (see `handler`).
pub(super) fn lane_handler<B: Builder>(insn: &Instruction) -> Option<Handler<B>> {
    use Mnemonic as M;
    let h: Handler<B> = match insn.mnemonic() {
        // ---- integer lanes ----
        M::Paddb => |b| lanewise(b, |b, x, y| padd(b, x, y, 8)),
        M::Paddw => |b| lanewise(b, |b, x, y| padd(b, x, y, 16)),
        M::Paddd => |b| lanewise(b, |b, x, y| padd(b, x, y, 32)),
        M::Paddq => |b| lanewise(b, |b, x, y| b.add(x, y)),
        M::Psubb => |b| lanewise(b, |b, x, y| psub(b, x, y, 8)),
        M::Psubw => |b| lanewise(b, |b, x, y| psub(b, x, y, 16)),
        M::Psubd => |b| lanewise(b, |b, x, y| psub(b, x, y, 32)),
        M::Psubq => |b| lanewise(b, |b, x, y| b.sub(x, y)),
        M::Pcmpeqb => |b| lanewise(b, |b, x, y| pcmpeq(b, x, y, 8)),
        M::Pcmpeqw => |b| lanewise(b, |b, x, y| pcmpeq(b, x, y, 16)),
        M::Pcmpeqd => |b| lanewise(b, |b, x, y| pcmpeq(b, x, y, 32)),
        M::Pcmpeqq => |b| lanewise(b, |b, x, y| pcmpeq(b, x, y, 64)),
        M::Pcmpgtb => |b| lanewise(b, |b, x, y| pcmpgt(b, x, y, 8)),
        M::Pcmpgtw => |b| lanewise(b, |b, x, y| pcmpgt(b, x, y, 16)),
        M::Pcmpgtd => |b| lanewise(b, |b, x, y| pcmpgt(b, x, y, 32)),
        M::Pminub => |b| lanewise(b, |b, x, y| min_max_ub(b, x, y, false)),
        M::Pmaxub => |b| lanewise(b, |b, x, y| min_max_ub(b, x, y, true)),
        M::Pmovmskb => |b| {
            let insn = *b.insn();
            let (lo, hi) = get(b, xreg(&insn, 1));
            let l = byte_msbs(b, lo);
            let h = byte_msbs(b, hi);
            let k = b.c(8);
            let h = b.shl(h, k);
            let v = b.or(l, h);
            write_reg(b, insn.op0_register(), v);
            Ok(())
        },
        M::Movmskps => |b| {
            let insn = *b.insn();
            let (lo, hi) = get(b, xreg(&insn, 1));
            let mut v = b.c(0);
            for (i, (half, bit)) in [(lo, 31), (lo, 63), (hi, 31), (hi, 63)]
                .into_iter()
                .enumerate()
            {
                let k = b.c(bit);
                let s = b.shr(half, k);
                let s = b.zext(s, 1);
                let k = b.c(i as u64);
                let s = b.shl(s, k);
                v = b.or(v, s);
            }
            write_reg(b, insn.op0_register(), v);
            Ok(())
        },
        M::Movmskpd => |b| {
            let insn = *b.insn();
            let (lo, hi) = get(b, xreg(&insn, 1));
            let k = b.c(63);
            let l = b.shr(lo, k);
            let h = b.shr(hi, k);
            let one = b.c(1);
            let h = b.shl(h, one);
            let v = b.or(l, h);
            write_reg(b, insn.op0_register(), v);
            Ok(())
        },

        // ---- shuffles and unpacks ----
        M::Pshufd => |b| {
            let imm = b.insn().immediate(2);
            whole(b, true, |b, _, x| {
                let d: [B::V; 4] = std::array::from_fn(|i| dword(b, x, (imm >> (2 * i)) & 3));
                [join32(b, d[0], d[1]), join32(b, d[2], d[3])]
            })
        },
        M::Shufps => |b| {
            let imm = b.insn().immediate(2);
            whole(b, true, |b, a, x| {
                let d0 = dword(b, a, imm & 3);
                let d1 = dword(b, a, (imm >> 2) & 3);
                let d2 = dword(b, x, (imm >> 4) & 3);
                let d3 = dword(b, x, (imm >> 6) & 3);
                [join32(b, d0, d1), join32(b, d2, d3)]
            })
        },
        M::Shufpd => |b| {
            let imm = b.insn().immediate(2);
            whole(b, true, |_, a, x| {
                [a[(imm & 1) as usize], x[((imm >> 1) & 1) as usize]]
            })
        },
        M::Pshuflw => |b| {
            let imm = b.insn().immediate(2);
            whole(b, true, |b, _, x| [shuffle_words(b, x[0], imm), x[1]])
        },
        M::Pshufhw => |b| {
            let imm = b.insn().immediate(2);
            whole(b, true, |b, _, x| [x[0], shuffle_words(b, x[1], imm)])
        },
        M::Punpcklbw => |b| whole(b, true, |b, a, x| unpack(b, a[0], x[0], 8)),
        M::Punpckhbw => |b| whole(b, true, |b, a, x| unpack(b, a[1], x[1], 8)),
        M::Punpcklwd => |b| whole(b, true, |b, a, x| unpack(b, a[0], x[0], 16)),
        M::Punpckhwd => |b| whole(b, true, |b, a, x| unpack(b, a[1], x[1], 16)),
        M::Punpckldq => |b| whole(b, true, |b, a, x| unpack(b, a[0], x[0], 32)),
        M::Punpckhdq => |b| whole(b, true, |b, a, x| unpack(b, a[1], x[1], 32)),
        M::Punpcklqdq => |b| whole(b, true, |_, a, x| [a[0], x[0]]),
        M::Punpckhqdq => |b| whole(b, true, |_, a, x| [a[1], x[1]]),

        // ---- shifts ----
        M::Psllw => |b| shift(b, 16, Shift::Left),
        M::Pslld => |b| shift(b, 32, Shift::Left),
        M::Psllq => |b| shift(b, 64, Shift::Left),
        M::Psrlw => |b| shift(b, 16, Shift::Right),
        M::Psrld => |b| shift(b, 32, Shift::Right),
        M::Psrlq => |b| shift(b, 64, Shift::Right),
        M::Psraw => |b| shift(b, 16, Shift::Arith),
        M::Psrad => |b| shift(b, 32, Shift::Arith),
        M::Pslldq => |b| byte_shift(b, true),
        M::Psrldq => |b| byte_shift(b, false),

        _ => return None,
    };
    Some(h)
}

// ---- SWAR lane arithmetic on 64-bit halves ----

/// The most significant bit of every `w`-bit lane.
pub(super) fn lane_msb(w: u32) -> u64 {
    match w {
        8 => 0x8080_8080_8080_8080,
        16 => 0x8000_8000_8000_8000,
        32 => 0x8000_0000_8000_0000,
        _ => 1 << 63,
    }
}

/// The least significant bit of every `w`-bit lane.
pub(super) fn lane_lsb(w: u32) -> u64 {
    lane_msb(w) >> (w - 1)
}

/// Lane-wise wrapping addition.
pub(super) fn padd<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let l = b.c(!lane_msb(w));
    // Add the low bits of each lane (no carry can leave a lane), then fix the top bits.
    let xl = b.and(x, l);
    let yl = b.and(y, l);
    let s = b.add(xl, yl);
    let t = b.xor(x, y);
    let t = b.and(t, h);
    b.xor(s, t)
}

/// Lane-wise wrapping subtraction.
pub(super) fn psub<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let l = b.c(!lane_msb(w));
    // (x | H) - (y & L) never borrows across lanes; its top bits say "no borrow from below".
    let xh = b.or(x, h);
    let yl = b.and(y, l);
    let d = b.sub(xh, yl);
    let ny = b.not(y);
    let t = b.xor(x, ny);
    let t = b.and(t, h);
    b.xor(d, t)
}

/// Top bit of each lane set where that lane of `x` is zero, all other bits clear.
pub(super) fn zero_lanes<B: Builder>(b: &mut B, x: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let l = b.c(!lane_msb(w));
    let xl = b.and(x, l);
    let t = b.add(xl, l);
    let t = b.or(t, x);
    let n = b.not(t);
    b.and(n, h)
}

/// Top bit of each lane set where x >= y (unsigned), all other bits clear.
pub(super) fn uge_lanes<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let l = b.c(!lane_msb(w));
    // Top bit of (x | H) - (y & L): low bits of x >= low bits of y.
    let xh = b.or(x, h);
    let yl = b.and(y, l);
    let d = b.sub(xh, yl);
    // Decided by the top bits where they differ, else by the low bits.
    let ny = b.not(y);
    let gt_top = b.and(x, ny);
    let diff = b.xor(x, y);
    let same = b.not(diff);
    let low = b.and(same, d);
    let r = b.or(gt_top, low);
    b.and(r, h)
}

/// Turn lane top bits (as the functions above return) into all-ones / all-zeros lanes.
pub(super) fn expand<B: Builder>(b: &mut B, m: B::V, w: u32) -> B::V {
    let k = b.c(w as u64 - 1);
    let ones = b.shr(m, k);
    let below = b.sub(m, ones);
    b.or(m, below)
}

pub(super) fn pcmpeq<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let d = b.xor(x, y);
    let z = zero_lanes(b, d, w);
    expand(b, z, w)
}

/// Signed greater-than: x > y  <=>  not (y ^ H) >=u (x ^ H).
pub(super) fn pcmpgt<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let xs = b.xor(x, h);
    let ys = b.xor(y, h);
    let ge = uge_lanes(b, ys, xs, w);
    let gt = b.xor(ge, h);
    expand(b, gt, w)
}

pub(super) fn min_max_ub<B: Builder>(b: &mut B, x: B::V, y: B::V, max: bool) -> B::V {
    let ge = uge_lanes(b, x, y, 8);
    let m = expand(b, ge, 8);
    let nm = b.not(m);
    let (a, c) = if max { (x, y) } else { (y, x) };
    let a = b.and(a, m);
    let c = b.and(c, nm);
    b.or(a, c)
}

/// The top bits of the eight bytes of `v`, as bits 0-7.
pub(super) fn byte_msbs<B: Builder>(b: &mut B, v: B::V) -> B::V {
    let h = b.c(lane_msb(8));
    let m = b.and(v, h);
    // Bit 8i+7 times 2^(7(7-i)) lands on bit 56+i; no two partial products collide.
    let magic = b.c(0x0002_0408_1020_4081);
    let p = b.mul(m, magic);
    let k = b.c(56);
    b.shr(p, k)
}

/// Dword `k` (0-3) of a register given as [low, high], zero-extended.
pub(super) fn dword<B: Builder>(b: &mut B, v: [B::V; 2], k: u64) -> B::V {
    let h = v[(k >> 1) as usize & 1];
    if k & 1 == 0 {
        b.zext(h, 32)
    } else {
        let s = b.c(32);
        b.shr(h, s)
    }
}

/// `lo | hi << 32` for zero-extended dwords.
pub(super) fn join32<B: Builder>(b: &mut B, lo: B::V, hi: B::V) -> B::V {
    let s = b.c(32);
    let h = b.shl(hi, s);
    b.or(lo, h)
}

/// PSHUFLW/PSHUFHW on one quadword.
pub(super) fn shuffle_words<B: Builder>(b: &mut B, q: B::V, imm: u64) -> B::V {
    let mut r = b.c(0);
    for i in 0..4 {
        let sel = (imm >> (2 * i)) & 3;
        let k = b.c(16 * sel);
        let w = b.shr(q, k);
        let w = b.zext(w, 16);
        let k = b.c(16 * i);
        let w = b.shl(w, k);
        r = b.or(r, w);
    }
    r
}

/// Spread the `w`-bit lanes of the zero-extended dword `v` to every other `w`-bit lane.
pub(super) fn spread<B: Builder>(b: &mut B, v: B::V, w: u32) -> B::V {
    let k = b.c(16);
    let s = b.shl(v, k);
    let v = b.or(v, s);
    let m = b.c(0x0000_ffff_0000_ffff);
    let v = b.and(v, m);
    if w == 16 {
        return v;
    }
    let k = b.c(8);
    let s = b.shl(v, k);
    let v = b.or(v, s);
    let m = b.c(0x00ff_00ff_00ff_00ff);
    b.and(v, m)
}

/// Interleave the `w`-bit lanes of the quadwords `a` and `x` (a first) into a register.
pub(super) fn unpack<B: Builder>(b: &mut B, a: B::V, x: B::V, w: u32) -> [B::V; 2] {
    let mut out = [a, x];
    for (i, o) in out.iter_mut().enumerate() {
        let da = dword(b, [a, a], i as u64);
        let dx = dword(b, [x, x], i as u64);
        *o = if w == 32 {
            join32(b, da, dx)
        } else {
            let sa = spread(b, da, w);
            let sx = spread(b, dx, w);
            let k = b.c(w as u64);
            let sx = b.shl(sx, k);
            b.or(sa, sx)
        };
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shift {
    Left,
    Right,
    Arith,
}

/// PSLL/PSRL/PSRA with an imm8 count or the low quadword of xmm/m128 as the count.
pub(super) fn shift<B: Builder>(b: &mut B, w: u32, kind: Shift) -> R<()> {
    let insn = *b.insn();
    let count = if insn.op1_kind() == OpKind::Register || insn.op1_kind() == OpKind::Memory {
        read128(b, 1, true)?.0
    } else {
        b.c(insn.immediate(1) & 0xff)
    };
    let d = xreg(&insn, 0);
    let (lo, hi) = get(b, d);
    let lo = shift_lanes(b, lo, count, w, kind);
    let hi = shift_lanes(b, hi, count, w, kind);
    put(b, d, lo, hi);
    Ok(())
}

pub(super) fn shift_lanes<B: Builder>(
    b: &mut B,
    v: B::V,
    count: B::V,
    w: u32,
    kind: Shift,
) -> B::V {
    let all = if w == 64 { u64::MAX } else { (1u64 << w) - 1 };
    let rep = lane_lsb(w);
    if let Some(n) = b.const_of(count) {
        if n >= w as u64 && kind != Shift::Arith {
            return b.c(0);
        }
        let n = n.min(w as u64 - 1);
        let k = b.c(n);
        return match kind {
            Shift::Left => {
                let s = b.shl(v, k);
                let m = b.c(((all << n) & all).wrapping_mul(rep));
                b.and(s, m)
            }
            Shift::Right => {
                let s = b.shr(v, k);
                let m = b.c((all >> n).wrapping_mul(rep));
                b.and(s, m)
            }
            Shift::Arith => {
                let s = b.shr(v, k);
                let keep = (all >> n).wrapping_mul(rep);
                let m = b.c(keep);
                let s = b.and(s, m);
                let h = b.c(lane_msb(w));
                let sign = b.and(v, h);
                let sign = expand(b, sign, w);
                let fill = b.c(!keep);
                let fill = b.and(sign, fill);
                b.or(s, fill)
            }
        };
    }
    // A count known only at run time (the xmm/m128 forms in compiled code).
    let wm1 = b.c(w as u64 - 1);
    let big = b.icmp(Cmp::Ugt, count, wm1);
    let allv = b.c(all);
    let repv = b.c(rep);
    let zero = b.c(0);
    match kind {
        Shift::Left => {
            let s = b.shl(v, count);
            let m = b.shl(allv, count);
            let m = b.and(m, allv);
            let m = b.mul(m, repv);
            let r = b.and(s, m);
            b.select(big, zero, r)
        }
        Shift::Right => {
            let s = b.shr(v, count);
            let m = b.shr(allv, count);
            let m = b.mul(m, repv);
            let r = b.and(s, m);
            b.select(big, zero, r)
        }
        Shift::Arith => {
            let n = b.select(big, wm1, count);
            let s = b.shr(v, n);
            let keep = b.shr(allv, n);
            let keep = b.mul(keep, repv);
            let s = b.and(s, keep);
            let h = b.c(lane_msb(w));
            let sign = b.and(v, h);
            let sign = expand(b, sign, w);
            let fill = b.not(keep);
            let fill = b.and(sign, fill);
            b.or(s, fill)
        }
    }
}

/// PSLLDQ/PSRLDQ: shift the whole register by imm8 bytes (16 or more clears it).
pub(super) fn byte_shift<B: Builder>(b: &mut B, left: bool) -> R<()> {
    let insn = *b.insn();
    let n = (insn.immediate(1) & 0xff).min(16) * 8;
    let d = xreg(&insn, 0);
    let (lo, hi) = get(b, d);
    let z = b.c(0);
    let (lo, hi) = match (n, left) {
        (0, _) => (lo, hi),
        (128, _) => (z, z),
        (64.., true) => {
            let k = b.c(n - 64);
            (z, b.shl(lo, k))
        }
        (64.., false) => {
            let k = b.c(n - 64);
            (b.shr(hi, k), z)
        }
        (_, true) => {
            let k = b.c(n);
            let back = b.c(64 - n);
            let carry = b.shr(lo, back);
            let h = b.shl(hi, k);
            let h = b.or(h, carry);
            (b.shl(lo, k), h)
        }
        (_, false) => {
            let k = b.c(n);
            let back = b.c(64 - n);
            let carry = b.shl(hi, back);
            let l = b.shr(lo, k);
            let l = b.or(l, carry);
            (l, b.shr(hi, k))
        }
    };
    put(b, d, lo, hi);
    Ok(())
}
