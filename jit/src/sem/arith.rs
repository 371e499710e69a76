//! Integer arithmetic: ADD/SUB/logic ALU forms, INC/DEC/NEG, MUL/IMUL/DIV/IDIV, ADCX/ADOX,
//! XADD and the compare-exchanges.

use super::flags::{cf, concrete, FlagKind, FlagState};
use super::*;
use super::{flagops::*, shift::*};
use iced_x86::Mnemonic;
use krr_runtime::gpr::{RAX, RCX, RDX};
use krr_runtime::{rflags, vector};

#[inline(never)]
pub(super) fn xadd<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, dst) = read_rmw(b, size)?;
    let src = read_op(b, 1, size)?;
    let sum = b.add(dst, src);
    let sum = b.zext(sum, bits(size));
    write_rmw(b, addr, size, sum)?;
    write_op(b, 1, size, dst)?;
    let z = b.c(0);
    b.set_flags(FlagState::new(FlagKind::Add, size, sum, dst, src, z));
    if addr.is_none() {
        // xadd r, r with the same register: the sum wins.
        write_op(b, 0, size, sum)?;
    }
    Ok(())
}

#[inline(never)]
pub(super) fn inc_dec<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let one = b.c(1);
    let (res, kind) = if insn.mnemonic() == M::Inc {
        (b.add(x, one), FlagKind::Inc)
    } else {
        (b.sub(x, one), FlagKind::Dec)
    };
    let res = b.zext(res, bits(size));
    let f = b.flags();
    let carry = cf(b, &f);
    let carry = b.b2v(carry);
    write_rmw(b, addr, size, res)?;
    b.set_flags(FlagState::new(kind, size, res, x, one, carry));
    Ok(())
}

#[inline(never)]
pub(super) fn neg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let (addr, x) = read_rmw(b, size)?;
    let zero = b.c(0);
    let res = b.sub(zero, x);
    let res = b.zext(res, bits(size));
    write_rmw(b, addr, size, res)?;
    b.set_flags(FlagState::new(FlagKind::Sub, size, res, zero, x, zero));
    Ok(())
}

#[inline(never)]
pub(super) fn div<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let src = read_op(b, 0, size)?;
    let s = b.c(size as u64);
    let z = b.c(0);
    let h = if insn.mnemonic() == M::Div {
        Helper::Div
    } else {
        Helper::Idiv
    };
    b.call(h, [s, src, z])?;
    Ok(())
}

#[inline(never)]
pub(super) fn adcx_adox<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let dst = read_op(b, 0, size)?;
    let src = read_op(b, 1, size)?;
    let old = current_flags(b);
    let bit = if insn.mnemonic() == M::Adcx {
        rflags::CF
    } else {
        rflags::OF
    };
    let m = b.c(bit);
    let cin = b.and(old, m);
    let zero = b.c(0);
    let cin = b.icmp(Cmp::Ne, cin, zero);
    let cin = b.b2v(cin);
    let s = b.add(dst, src);
    let s = b.add(s, cin);
    let res = b.zext(s, bits(size));
    let tmp = FlagState::new(FlagKind::Adc, size, res, dst, src, cin);
    let cout = cf(b, &tmp);
    let cout = b.b2v(cout);
    let k = b.c(bit.trailing_zeros() as u64);
    let cout = b.shl(cout, k);
    let keep = b.c(!bit);
    let f = b.and(old, keep);
    let f = b.or(f, cout);
    let st = concrete(b, f);
    write_op(b, 0, size, res)?;
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn alu2<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let writes = !matches!(insn.mnemonic(), M::Cmp | M::Test);
    let (addr, x) = if writes {
        read_rmw(b, size)?
    } else {
        (None, read_op(b, 0, size)?)
    };
    let y = read_op(b, 1, size)?;
    let zero = b.c(0);
    let (res, st) = match insn.mnemonic() {
        M::Add => {
            let r = b.add(x, y);
            let r = b.zext(r, bits(size));
            (r, FlagState::new(FlagKind::Add, size, r, x, y, zero))
        }
        M::Adc | M::Sbb => {
            let f = b.flags();
            let c = cf(b, &f);
            let c = b.b2v(c);
            let (r, kind) = if insn.mnemonic() == M::Adc {
                let r = b.add(x, y);
                (b.add(r, c), FlagKind::Adc)
            } else {
                let r = b.sub(x, y);
                (b.sub(r, c), FlagKind::Sbb)
            };
            let r = b.zext(r, bits(size));
            (r, FlagState::new(kind, size, r, x, y, c))
        }
        M::Sub | M::Cmp => {
            let r = b.sub(x, y);
            let r = b.zext(r, bits(size));
            (r, FlagState::new(FlagKind::Sub, size, r, x, y, zero))
        }
        M::And | M::Test => {
            let r = b.and(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
        M::Or => {
            let r = b.or(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
        _ => {
            let r = b.xor(x, y);
            (
                r,
                FlagState::new(FlagKind::Logic, size, r, zero, zero, zero),
            )
        }
    };
    if writes {
        write_rmw(b, addr, size, res)?;
    }
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn mul_wide<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let src = read_op(b, 0, size)?;
    let a = b.get_gpr(RAX);
    let a = b.zext(a, w);
    let signed = insn.mnemonic() == Mnemonic::Imul;
    let (lo, hi, overflow) = if size == 8 {
        let lo = b.mul(a, src);
        let hi = if signed {
            b.smulh(a, src)
        } else {
            b.umulh(a, src)
        };
        let ov = if signed {
            let k = b.c(63);
            let sign = b.sar(lo, k);
            b.icmp(Cmp::Ne, hi, sign)
        } else {
            let zero = b.c(0);
            b.icmp(Cmp::Ne, hi, zero)
        };
        (lo, hi, ov)
    } else {
        let (x, y) = if signed {
            (b.sext(a, w), b.sext(src, w))
        } else {
            (a, src)
        };
        let p = b.mul(x, y);
        let lo = b.zext(p, w);
        let k = b.c(w as u64);
        let hi = b.shr(p, k);
        let hi = b.zext(hi, w);
        let ov = if signed {
            let e = b.sext(p, w);
            b.icmp(Cmp::Ne, e, p)
        } else {
            let zero = b.c(0);
            b.icmp(Cmp::Ne, hi, zero)
        };
        (lo, hi, ov)
    };
    if size == 1 {
        let k = b.c(8);
        let h = b.shl(hi, k);
        let ax = b.or(h, lo);
        write_reg(b, Register::AX, ax);
    } else {
        write_gpr(b, RAX, size, lo);
        write_gpr(b, RDX, size, hi);
    }
    let new = result_flags(b, lo, size, overflow, overflow);
    let new = profile::mul_flags(b, new);
    let st = concrete(b, new);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn imul_truncating<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (x, y) = if insn.op_count() == 3 {
        (read_op(b, 1, size)?, b.c(truncate(insn.immediate(2), size)))
    } else {
        (read_op(b, 0, size)?, read_op(b, 1, size)?)
    };
    let xs = b.sext(x, w);
    let ys = b.sext(y, w);
    let p = b.mul(xs, ys);
    let lo = b.zext(p, w);
    let overflow = if size == 8 {
        let hi = b.smulh(xs, ys);
        let k = b.c(63);
        let sign = b.sar(p, k);
        b.icmp(Cmp::Ne, hi, sign)
    } else {
        let e = b.sext(p, w);
        b.icmp(Cmp::Ne, e, p)
    };
    write_op(b, 0, size, lo)?;
    let new = result_flags(b, lo, size, overflow, overflow);
    let new = profile::mul_flags(b, new);
    let st = concrete(b, new);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn cmpxchg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let (addr, dst) = read_rmw(b, size)?;
    let src = read_op(b, 1, size)?;
    let acc = b.get_gpr(RAX);
    let acc = b.zext(acc, w);
    let eq = b.icmp(Cmp::Eq, acc, dst);
    let zero = b.c(0);
    match addr {
        Some(a) => {
            // The destination is always written (with its old value when unequal).
            let v = b.select(eq, src, dst);
            b.store(a, v, size)?;
        }
        None => {
            let r = insn.op0_register();
            let (idx, _) = gpr_of(r);
            let old = b.get_gpr(idx);
            write_reg(b, r, src);
            let merged = b.get_gpr(idx);
            let v = b.select(eq, merged, old);
            b.set_gpr(idx, v);
        }
    }
    // The accumulator is written only when unequal.
    let old_rax = b.get_gpr(RAX);
    write_gpr(b, RAX, size, dst);
    let merged = b.get_gpr(RAX);
    let v = b.select(eq, old_rax, merged);
    b.set_gpr(RAX, v);
    let res = b.sub(acc, dst);
    let res = b.zext(res, w);
    b.set_flags(FlagState::new(FlagKind::Sub, size, res, acc, dst, zero));
    Ok(())
}

#[inline(never)]
pub(super) fn cmpxchg_double<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let wide = insn.mnemonic() == Mnemonic::Cmpxchg16b;
    let a = effective_address(b);
    let zero = b.c(0);
    let (eq, lo, hi) = if wide {
        let m = b.c(15);
        let mis = b.and(a, m);
        let bad = b.icmp(Cmp::Ne, mis, zero);
        b.raise_if(bad, vector::GP, Some(0))?;
        stack_check(b, a)?;
        let (lo, hi) = b.load128(a)?;
        let rax = b.get_gpr(RAX);
        let rdx = b.get_gpr(RDX);
        let e1 = b.icmp(Cmp::Eq, lo, rax);
        let e2 = b.icmp(Cmp::Eq, hi, rdx);
        let eq = b.band(e1, e2);
        let rbx = b.get_gpr(krr_runtime::gpr::RBX);
        let rcx = b.get_gpr(RCX);
        let nlo = b.select(eq, rbx, lo);
        let nhi = b.select(eq, rcx, hi);
        b.store128(a, nlo, nhi)?;
        (eq, lo, hi)
    } else {
        stack_check(b, a)?;
        let v = b.load(a, 8)?;
        let rax = b.get_gpr(RAX);
        let rax = b.zext(rax, 32);
        let rdx = b.get_gpr(RDX);
        let k = b.c(32);
        let rdx = b.shl(rdx, k);
        let expect = b.or(rdx, rax);
        let eq = b.icmp(Cmp::Eq, v, expect);
        let rbx = b.get_gpr(krr_runtime::gpr::RBX);
        let rbx = b.zext(rbx, 32);
        let rcx = b.get_gpr(RCX);
        let rcx = b.shl(rcx, k);
        let new = b.or(rcx, rbx);
        let nv = b.select(eq, new, v);
        b.store(a, nv, 8)?;
        let lo = b.zext(v, 32);
        let hi = b.shr(v, k);
        (eq, lo, hi)
    };
    let old_rax = b.get_gpr(RAX);
    let old_rdx = b.get_gpr(RDX);
    let rax = b.select(eq, old_rax, lo);
    let rdx = b.select(eq, old_rdx, hi);
    b.set_gpr(RAX, rax);
    b.set_gpr(RDX, rdx);
    set_one_flag(b, rflags::ZF, eq);
    Ok(())
}
