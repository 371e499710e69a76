//! NOT, shifts and rotates: SHL/SHR/SAR, ROL/ROR, RCL/RCR, SHLD/SHRD, with the x86 rules for
//! a zero count (flags unchanged) and a count of one (OF defined).

use super::flagops::*;
use super::flags::{concrete, materialize, FlagKind, FlagState};
use super::*;
use iced_x86::Mnemonic;
use krr_runtime::rflags;

#[inline(never)]
pub(super) fn not<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let res = b.not(x);
    let res = b.zext(res, bits(size));
    write_rmw(b, addr, size, res)
}

/// The shift count: masked to 6 bits for 64-bit operands, 5 otherwise.
pub(super) fn shift_count<B: Builder>(b: &mut B, size: u32) -> R<B::V> {
    let insn = *b.insn();
    let c = if insn.op_count() < 2 {
        b.c(1)
    } else {
        read_op(b, 1, 1)?
    };
    let m = b.c(if size == 8 { 63 } else { 31 });
    Ok(b.and(c, m))
}

/// Replace the flags with `new` unless `count` is zero (x86 shifts by 0 leave flags alone).
pub(super) fn set_flags_unless_zero_count<B: Builder>(
    b: &mut B,
    count: B::V,
    new: FlagState<B::V>,
) {
    match b.const_of(count) {
        Some(0) => {}
        Some(_) => b.set_flags(new),
        None => {
            let old = b.flags();
            let old_bits = materialize(b, &old);
            let new_bits = materialize(b, &new);
            let zero = b.c(0);
            let is_zero = b.icmp(Cmp::Eq, count, zero);
            let bits = b.select(is_zero, old_bits, new_bits);
            let st = concrete(b, bits);
            b.set_flags(st);
        }
    }
}

#[inline(never)]
pub(super) fn shift<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    let w = bits(size);
    let (res, kind) = match insn.mnemonic() {
        Mnemonic::Shl | Mnemonic::Sal => (b.shl(x, n), FlagKind::Shl),
        Mnemonic::Shr => (b.shr(x, n), FlagKind::Shr),
        _ => {
            let s = b.sext(x, w);
            (b.sar(s, n), FlagKind::Sar)
        }
    };
    let res = b.zext(res, w);
    write_rmw(b, addr, size, res)?;
    let st = match profile::shift_flags(b, kind, size, res, x, n) {
        Some(bits) => concrete(b, bits),
        None => {
            let zero = b.c(0);
            FlagState::new(kind, size, res, x, n, zero)
        }
    };
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

/// Flags with CF and OF replaced, the rest kept.
pub(super) fn with_cf_of<B: Builder>(b: &mut B, old: B::V, c: B::B, o: B::B) -> B::V {
    let keep = b.c(!(rflags::CF | rflags::OF));
    let f = b.and(old, keep);
    let c = b.b2v(c);
    let o = b.b2v(o);
    let k = b.c(11);
    let o = b.shl(o, k);
    let f = b.or(f, c);
    b.or(f, o)
}

pub(super) fn bit_of<B: Builder>(b: &mut B, v: B::V, bit: u32) -> B::B {
    let k = b.c(bit as u64);
    let s = b.shr(v, k);
    let one = b.c(1);
    let s = b.and(s, one);
    let zero = b.c(0);
    b.icmp(Cmp::Ne, s, zero)
}

#[inline(never)]
pub(super) fn rotate<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    let wm = b.c(w as u64 - 1);
    let r = b.and(n, wm);
    let wv = b.c(w as u64);
    let back = b.sub(wv, r);
    let left = insn.mnemonic() == Mnemonic::Rol;
    let (p, q) = if left {
        (b.shl(x, r), b.shr(x, back))
    } else {
        (b.shr(x, r), b.shl(x, back))
    };
    let res = b.or(p, q);
    let res = b.zext(res, w);
    write_rmw(b, addr, size, res)?;
    let old = current_flags(b);
    let (c, o) = if left {
        let c = bit_of(b, res, 0);
        let m = bit_of(b, res, w - 1);
        (c, b.bxor(m, c))
    } else {
        let c = bit_of(b, res, w - 1);
        let m2 = bit_of(b, res, w - 2);
        (c, b.bxor(c, m2))
    };
    let o = profile::rotate_of(b, insn, w, x, old, None).unwrap_or(o);
    let new = with_cf_of(b, old, c, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

#[inline(never)]
pub(super) fn rotate_through_carry<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let n = shift_count(b, size)?;
    // Rotation is over w+1 bits (the operand and CF).
    let r = if w < 32 {
        let m = b.c(w as u64 + 1);
        // n < 32, so n mod (w+1) by repeated subtraction twice at most for w=8 (n<=31<36).
        let mut r = n;
        for _ in 0..3 {
            let ge = b.icmp(Cmp::Uge, r, m);
            let d = b.sub(r, m);
            r = b.select(ge, d, r);
        }
        r
    } else {
        n
    };
    let old = current_flags(b);
    let one = b.c(1);
    let cin = b.and(old, one);
    let left = insn.mnemonic() == Mnemonic::Rcl;
    let wv = b.c(w as u64);
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, r, zero);
    // Work on the (w+1)-bit value; for w = 64 through split shifts that stay below 64.
    let (res, cout) = if left {
        // res = x << r | cin << (r-1) | x >> (w+1-r)
        let rm1 = b.sub(r, one);
        let p = b.shl(x, r);
        let q = b.shl(cin, rm1);
        let x1 = b.shr(x, one);
        let back = b.sub(wv, r);
        let s = b.shr(x1, back);
        let res = b.or(p, q);
        let res = b.or(res, s);
        let co = b.shr(x, back);
        let co = b.and(co, one);
        (res, co)
    } else {
        // res = x >> r | cin << (w-r) | x << (w+1-r)
        let p = b.shr(x, r);
        let back = b.sub(wv, r);
        let q = b.shl(cin, back);
        let x1 = b.shl(x, one);
        let s = b.shl(x1, back);
        let res = b.or(p, q);
        let res = b.or(res, s);
        let rm1 = b.sub(r, one);
        let co = b.shr(x, rm1);
        let co = b.and(co, one);
        (res, co)
    };
    let res = b.zext(res, w);
    let res = b.select(is_zero, x, res);
    let cout = b.select(is_zero, cin, cout);
    write_rmw(b, addr, size, res)?;
    let c = b.icmp(Cmp::Ne, cout, zero);
    let o = if left {
        let m = bit_of(b, res, w - 1);
        b.bxor(m, c)
    } else {
        let m = bit_of(b, res, w - 1);
        let m2 = bit_of(b, res, w - 2);
        b.bxor(m, m2)
    };
    let o = profile::rotate_of(b, insn, w, x, old, Some(is_zero)).unwrap_or(o);
    let new = with_cf_of(b, old, c, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}

/// Flags from a result for operations that set SF/ZF/PF from it and CF/OF explicitly.
pub(super) fn result_flags<B: Builder>(b: &mut B, res: B::V, size: u32, c: B::B, o: B::B) -> B::V {
    let zero = b.c(0);
    let st = FlagState::new(FlagKind::Logic, size, res, zero, zero, zero);
    let base = materialize(b, &st);
    with_cf_of(b, base, c, o)
}

#[inline(never)]
pub(super) fn double_shift<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, x) = read_rmw(b, size)?;
    let y = read_op(b, 1, size)?;
    let n = {
        let c = read_op(b, 2, 1)?;
        let m = b.c(if size == 8 { 63 } else { 31 });
        b.and(c, m)
    };
    let left = insn.mnemonic() == Mnemonic::Shld;
    let one = b.c(1);
    let (res, c) = if w == 16 {
        // Counts above 16 are architecturally undefined; model the 48-bit pattern x:y:x that
        // hardware shifts through.
        let k16 = b.c(16);
        let k32 = b.c(32);
        let hi = b.shl(x, k32);
        let mid = b.shl(y, k16);
        let cat = b.or(hi, mid);
        let cat = b.or(cat, x);
        if left {
            let sh = b.shl(cat, n);
            let res = b.shr(sh, k32);
            let k48 = b.c(48);
            let back = b.sub(k48, n);
            let cbit = b.shr(cat, back);
            let cbit = b.and(cbit, one);
            (b.zext(res, 16), cbit)
        } else {
            let sh = b.shr(cat, n);
            let res = b.zext(sh, 16);
            let nm1 = b.sub(n, one);
            let cbit = b.shr(cat, nm1);
            let cbit = b.and(cbit, one);
            (res, cbit)
        }
    } else {
        let wv = b.c(w as u64);
        let back = b.sub(wv, n);
        let (p, q) = if left {
            (b.shl(x, n), b.shr(y, back))
        } else {
            (b.shr(x, n), b.shl(y, back))
        };
        // With n = 0 `back` = w: for w = 64 the shift wraps to 0, so mask that term out.
        let zero = b.c(0);
        let nz = b.icmp(Cmp::Ne, n, zero);
        let q = b.select(nz, q, zero);
        let res = b.or(p, q);
        let res = b.zext(res, w);
        let cbit = if left {
            let s = b.shr(x, back);
            b.and(s, one)
        } else {
            let nm1 = b.sub(n, one);
            let s = b.shr(x, nm1);
            b.and(s, one)
        };
        (res, cbit)
    };
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, n, zero);
    let res = b.select(is_zero, x, res);
    write_rmw(b, addr, size, res)?;
    let cflag = b.icmp(Cmp::Ne, c, zero);
    let s_old = bit_of(b, x, w - 1);
    let s_new = bit_of(b, res, w - 1);
    let o = b.bxor(s_old, s_new);
    let o = profile::double_shift_of(b, left, w, x, res, n).unwrap_or(o);
    let new = result_flags(b, res, size, cflag, o);
    let st = concrete(b, new);
    set_flags_unless_zero_count(b, n, st);
    Ok(())
}
