//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, POPCNT/LZCNT/TZCNT and the BMI1/BMI2 group
//! (ANDN, BEXTR, BLS*, BZHI, PDEP/PEXT, RORX, SARX/SHLX/SHRX, MULX).

use super::flags::{concrete, FlagKind, FlagState};
use super::*;
use super::{flagops::*, shift::*};
use iced_x86::{Mnemonic, OpKind};
use krr_runtime::gpr::RDX;
use krr_runtime::rflags;

#[inline(never)]
pub(super) fn bit_test<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let writes = insn.mnemonic() != Mnemonic::Bt;
    let offset_is_reg = insn.op1_kind() == OpKind::Register;
    let raw = read_op(b, 1, size)?;
    let wm = b.c(w as u64 - 1);
    let bit = b.and(raw, wm);
    let (addr, x) = if insn.op0_kind() == OpKind::Memory {
        let a = if offset_is_reg {
            // A register offset addresses a bit string: move by whole operands.
            let s = b.sext(raw, w);
            let k = b.c(w.trailing_zeros() as u64);
            let q = b.sar(s, k);
            let ks = b.c(size.trailing_zeros() as u64);
            let d = b.shl(q, ks);
            access_address_moved(b, d)?
        } else {
            access_address(b)?
        };
        (Some(a), b.load(a, size)?)
    } else {
        (None, read_reg(b, insn.op0_register()))
    };
    let one = b.c(1);
    let m = b.shl(one, bit);
    let t = b.and(x, m);
    let zero = b.c(0);
    let c = b.icmp(Cmp::Ne, t, zero);
    if writes {
        let v = match insn.mnemonic() {
            Mnemonic::Bts => b.or(x, m),
            Mnemonic::Btr => {
                let nm = b.not(m);
                b.and(x, nm)
            }
            _ => b.xor(x, m),
        };
        match addr {
            Some(a) => b.store(a, v, size)?,
            None => write_reg(b, insn.op0_register(), v),
        }
    }
    set_one_flag(b, rflags::CF, c);
    Ok(())
}

#[inline(never)]
pub(super) fn bit_scan<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let src = read_op(b, 1, size)?;
    let zero = b.c(0);
    let is_zero = b.icmp(Cmp::Eq, src, zero);
    let idx = if insn.mnemonic() == Mnemonic::Bsf {
        b.ctz(src)
    } else {
        let l = b.clz(src);
        let k = b.c(63);
        b.sub(k, l)
    };
    // A zero source leaves the destination unchanged, all 64 bits of it (as AMD documents
    // and this host does): no 32-bit zero extension either.
    let r = insn.op0_register();
    let (gi, _) = gpr_of(r);
    let old = b.get_gpr(gi);
    if let Some((v, flags)) = profile::bit_scan(b, size, is_zero, idx, old) {
        b.set_gpr(gi, v);
        let st = concrete(b, flags);
        b.set_flags(st);
        return Ok(());
    }
    write_reg(b, r, idx);
    let merged = b.get_gpr(gi);
    let v = b.select(is_zero, old, merged);
    b.set_gpr(gi, v);
    set_one_flag(b, rflags::ZF, is_zero);
    Ok(())
}

#[inline(never)]
pub(super) fn bit_count<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let w = bits(size);
    let src = read_op(b, 1, size)?;
    let zero = b.c(0);
    let src_zero = b.icmp(Cmp::Eq, src, zero);
    let res = match insn.mnemonic() {
        Mnemonic::Popcnt => b.popcnt(src),
        Mnemonic::Lzcnt => {
            let l = b.clz(src);
            let k = b.c(64 - w as u64);
            b.sub(l, k)
        }
        _ => {
            let t = b.ctz(src);
            let wv = b.c(w as u64);
            b.select(src_zero, wv, t)
        }
    };
    write_op(b, 0, size, res)?;
    let f = if insn.mnemonic() == Mnemonic::Popcnt {
        let z = b.b2v(src_zero);
        let k6 = b.c(6);
        b.shl(z, k6)
    } else {
        let c = b.b2v(src_zero);
        let rz = b.icmp(Cmp::Eq, res, zero);
        let z = b.b2v(rz);
        let k6 = b.c(6);
        let z = b.shl(z, k6);
        let cz = b.or(c, z);
        match profile::count_zeros_flags(b, cz) {
            Some(f) => f,
            None => {
                let old = current_flags(b);
                let keep = b.c(!(rflags::CF | rflags::ZF));
                let f = b.and(old, keep);
                b.or(f, cz)
            }
        }
    };
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn bmi<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = op_size(insn, 0);
    let w = bits(size);
    let zero = b.c(0);
    let one = b.c(1);
    let logic = |_: &mut B, r: B::V| FlagState::new(FlagKind::Logic, size, r, zero, zero, zero);
    match insn.mnemonic() {
        M::Andn => {
            let x = read_op(b, 1, size)?;
            let y = read_op(b, 2, size)?;
            let nx = b.not(x);
            let r = b.and(nx, y);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let st = logic(b, r);
            b.set_flags(st);
        }
        M::Bextr => {
            let x = read_op(b, 1, size)?;
            let ctl = read_op(b, 2, size)?;
            let ff = b.c(0xff);
            let start = b.and(ctl, ff);
            let k8 = b.c(8);
            let len = b.shr(ctl, k8);
            let len = b.and(len, ff);
            let wv = b.c(w as u64);
            let s = b.shr(x, start);
            let start_big = b.icmp(Cmp::Uge, start, wv);
            let s = b.select(start_big, zero, s);
            let mask = b.shl(one, len);
            let mask = b.sub(mask, one);
            let len_big = b.icmp(Cmp::Uge, len, wv);
            let all = b.c(u64::MAX);
            let mask = b.select(len_big, all, mask);
            let r = b.and(s, mask);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let st = logic(b, r);
            b.set_flags(st);
        }
        M::Blsi | M::Blsmsk | M::Blsr => {
            let x = read_op(b, 1, size)?;
            let r = match insn.mnemonic() {
                M::Blsi => {
                    let n = b.sub(zero, x);
                    b.and(n, x)
                }
                M::Blsmsk => {
                    let d = b.sub(x, one);
                    b.xor(d, x)
                }
                _ => {
                    let d = b.sub(x, one);
                    b.and(d, x)
                }
            };
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let c = if insn.mnemonic() == M::Blsi {
                b.icmp(Cmp::Ne, x, zero)
            } else {
                b.icmp(Cmp::Eq, x, zero)
            };
            let f = b.bconst(false);
            let bits_v = result_flags(b, r, size, c, f);
            let st = concrete(b, bits_v);
            b.set_flags(st);
        }
        M::Bzhi => {
            let x = read_op(b, 1, size)?;
            let idx = read_op(b, 2, size)?;
            let ff = b.c(0xff);
            let n = b.and(idx, ff);
            let wv = b.c(w as u64);
            let big = b.icmp(Cmp::Uge, n, wv);
            let mask = b.shl(one, n);
            let mask = b.sub(mask, one);
            let m = b.and(x, mask);
            let r = b.select(big, x, m);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
            let wm1 = b.c(w as u64 - 1);
            let c = b.icmp(Cmp::Ugt, n, wm1);
            let f = b.bconst(false);
            let bits_v = result_flags(b, r, size, c, f);
            let st = concrete(b, bits_v);
            b.set_flags(st);
        }
        M::Pdep | M::Pext => {
            let x = read_op(b, 1, size)?;
            let m = read_op(b, 2, size)?;
            let h = if insn.mnemonic() == M::Pdep {
                Helper::Pdep
            } else {
                Helper::Pext
            };
            let r = b.call(h, [x, m, zero])?;
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        M::Rorx => {
            let x = read_op(b, 1, size)?;
            let n = insn.immediate(2) & (w as u64 - 1);
            let nv = b.c(n);
            let back = b.c((w as u64 - n) % 64);
            let p = b.shr(x, nv);
            let q = b.shl(x, back);
            let q = if n == 0 { zero } else { q };
            let r = b.or(p, q);
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        M::Sarx | M::Shlx | M::Shrx => {
            let x = read_op(b, 1, size)?;
            let c = read_op(b, 2, size)?;
            let m = b.c(w as u64 - 1);
            let n = b.and(c, m);
            let r = match insn.mnemonic() {
                M::Sarx => {
                    let s = b.sext(x, w);
                    b.sar(s, n)
                }
                M::Shlx => b.shl(x, n),
                _ => b.shr(x, n),
            };
            let r = b.zext(r, w);
            write_op(b, 0, size, r)?;
        }
        _ => {
            // MULX: op0 = high half, op1 = low half, op2 = source; RDX is the other factor.
            let src = read_op(b, 2, size)?;
            let d = b.get_gpr(RDX);
            let d = b.zext(d, w);
            let (lo, hi) = if size == 8 {
                (b.mul(d, src), b.umulh(d, src))
            } else {
                let p = b.mul(d, src);
                let k = b.c(32);
                (b.zext(p, 32), b.shr(p, k))
            };
            write_op(b, 1, size, lo)?;
            write_op(b, 0, size, hi)?;
        }
    }
    Ok(())
}
