//! Instructions on RFLAGS itself: PUSHF/POPF, LAHF/SAHF, CLC/STC/CMC, CLD/STD, SETcc, and the
//! RFLAGS read other instructions share.

use super::flags::{concrete, cond, materialize};
use super::*;
use iced_x86::Mnemonic;
use krr_runtime::gpr::RSP;
use krr_runtime::rflags;

#[inline(never)]
pub(super) fn pushf<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = match insn.mnemonic() {
        M::Pushf => 2,
        M::Pushfd => 4,
        _ => 8,
    };
    let f = read_rflags(b);
    let m = b.c(!(rflags::RF | rflags::VM));
    let f = b.and(f, m);
    push(b, f, size)
}

#[inline(never)]
pub(super) fn setcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let c = cond(b, insn.condition_code());
    let v = b.b2v(c);
    write_op(b, 0, 1, v)
}

#[inline(never)]
pub(super) fn carry_flag<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let f = current_flags(b);
    let m = b.c(rflags::CF);
    let f = match insn.mnemonic() {
        M::Clc => {
            let nm = b.not(m);
            b.and(f, nm)
        }
        M::Stc => b.or(f, m),
        _ => b.xor(f, m),
    };
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

#[inline(never)]
pub(super) fn direction_flag<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let f = b.load_state(krr_runtime::offsets::RFLAGS);
    let m = b.c(rflags::DF);
    let f = if insn.mnemonic() == M::Std {
        b.or(f, m)
    } else {
        let nm = b.not(m);
        b.and(f, nm)
    };
    b.store_state(krr_runtime::offsets::RFLAGS, f);
    Ok(())
}

#[inline(never)]
pub(super) fn lahf<B: Builder>(b: &mut B) -> R<()> {
    let f = current_flags(b);
    let m = b.c(rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF);
    let f = b.and(f, m);
    let two = b.c(2);
    let f = b.or(f, two);
    write_reg(b, Register::AH, f);
    Ok(())
}

#[inline(never)]
pub(super) fn sahf<B: Builder>(b: &mut B) -> R<()> {
    let ah = read_reg(b, Register::AH);
    let m = b.c(rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF);
    let ah = b.and(ah, m);
    let f = current_flags(b);
    let keep = b.c(rflags::OF);
    let f = b.and(f, keep);
    let f = b.or(f, ah);
    let st = concrete(b, f);
    b.set_flags(st);
    Ok(())
}

/// The six arithmetic flags as RFLAGS bits.
pub fn current_flags<B: Builder>(b: &mut B) -> B::V {
    let f = b.flags();
    materialize(b, &f)
}

/// Replace one arithmetic flag (`mask` has one bit) with `value`, keeping the others.
pub(super) fn set_one_flag<B: Builder>(b: &mut B, mask: u64, value: B::B) {
    let old = current_flags(b);
    let keep = b.c(!mask);
    let f = b.and(old, keep);
    let v = b.b2v(value);
    let k = b.c(mask.trailing_zeros() as u64);
    let v = b.shl(v, k);
    let f = b.or(f, v);
    let st = concrete(b, f);
    b.set_flags(st);
}

/// The whole RFLAGS value.
pub fn read_rflags<B: Builder>(b: &mut B) -> B::V {
    let arith = current_flags(b);
    let sys = b.load_state(krr_runtime::offsets::RFLAGS);
    let m = b.c(!rflags::ARITH);
    let sys = b.and(sys, m);
    b.or(sys, arith)
}

#[inline(never)]
pub(super) fn popf<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = match insn.mnemonic() {
        Mnemonic::Popf => 2,
        Mnemonic::Popfd => 4,
        _ => 8,
    };
    let (v, nsp) = pop(b, size)?;
    b.set_gpr(RSP, nsp);
    let old = b.load_state(krr_runtime::offsets::RFLAGS);
    // Which bits POPF may change depends on CPL and IOPL; the CS descriptor is in the state.
    let attrs_off = krr_runtime::offsets::SEG
        + krr_runtime::offsets::SEG_SIZE * krr_runtime::seg::CS as i32
        + 2;
    let cs_attrs = b.load_state(attrs_off - 2);
    let k = b.c(16 + 5);
    let cpl = b.shr(cs_attrs, k);
    let three = b.c(3);
    let cpl = b.and(cpl, three);
    let mut changeable =
        rflags::ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::AC | rflags::ID;
    if size == 2 {
        changeable &= 0xffff;
    }
    let base_mask = b.c(changeable);
    let zero = b.c(0);
    let is_cpl0 = b.icmp(Cmp::Eq, cpl, zero);
    let iopl_mask = b.c(if size == 2 {
        rflags::IOPL & 0xffff
    } else {
        rflags::IOPL
    });
    let extra0 = b.select(is_cpl0, iopl_mask, zero);
    let k12 = b.c(12);
    let iopl = b.shr(old, k12);
    let iopl = b.and(iopl, three);
    let le = b.icmp(Cmp::Ule, cpl, iopl);
    let ifm = b.c(rflags::IF);
    let extra1 = b.select(le, ifm, zero);
    let mask = b.or(base_mask, extra0);
    let mask = b.or(mask, extra1);
    let nmask = b.not(mask);
    let keep = b.and(old, nmask);
    let set = b.and(v, mask);
    let new = b.or(keep, set);
    let fixed = b.c(rflags::FIXED1);
    let new = b.or(new, fixed);
    let st = concrete(b, new);
    b.set_flags(st);
    let sysm = b.c(!rflags::ARITH);
    let sys = b.and(new, sysm);
    b.store_state(krr_runtime::offsets::RFLAGS, sys);
    // POPF may set IF: leave through the dispatcher, which checks for a deliverable interrupt
    // before the next block in every tier (compiled code would otherwise chain past it, and
    // the interrupt would land at a tier-dependent instruction).
    let next = b.c(insn.next_ip());
    b.flow(Flow::Jump(next), None);
    Ok(())
}
