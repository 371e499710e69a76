//! The behaviour profiles' rules in the semantics (`docs/PROFILES.md` has each rule with its
//! source): flag results the architecture leaves undefined, and KRR's replay quirks. Written
//! once over a [`Builder`], so the interpreter and compiled code give the same results; the
//! profile is a constant of the block being translated ([`Builder::profile`]), so the host
//! profile's code is what it was before profiles existed.
//!
//! The lazy-flags encoding is not profile-dependent: where a profile differs from the host's
//! lazy reading, the instruction records concrete flags.

use super::flags::{materialize, FlagKind, FlagState};
use super::*;
use krr_runtime::{rflags, Profile};

/// The flags of MUL/IMUL (every form), given the host's flags `host` (SF/ZF/PF from the low
/// result, AF = 0, CF = OF = overflow). KrrCompat and Intel clear ZF.
pub(super) fn mul_flags<B: Builder>(b: &mut B, host: B::V) -> B::V {
    match b.profile() {
        Profile::Host => host,
        Profile::KrrCompat | Profile::Intel => {
            let m = b.c(!rflags::ZF);
            b.and(host, m)
        }
    }
}

/// The flags of SHL/SAL/SHR/SAR by a non-zero (masked) `count` of `x` giving `res` (the caller
/// keeps the flags when the count is zero), or `None` for the host's lazy state.
///
/// Only SHL/SAL's OF differs: KrrCompat makes it 0 unless the count is 1 (KRR's TCG does that
/// for an immediate count; for a count in CL it reads a stale count, which krr does not model:
/// the same rule as for an immediate); Intel computes it as for the first one-bit step, MSB(x)
/// XOR bit w-2 of x, whatever the count. SHR and SAR are the host's in every profile: OF = MSB
/// of the original operand for SHR, 0 for SAR; AF = 0 for all three.
pub(super) fn shift_flags<B: Builder>(
    b: &mut B,
    kind: FlagKind,
    size: u32,
    res: B::V,
    x: B::V,
    count: B::V,
) -> Option<B::V> {
    let profile = b.profile();
    if profile == Profile::Host || kind != FlagKind::Shl {
        return None;
    }
    let zero = b.c(0);
    let lazy = FlagState::new(kind, size, res, x, count, zero);
    let all = materialize(b, &lazy);
    let m = b.c(!rflags::OF);
    let without_of = b.and(all, m);
    Some(match profile {
        Profile::KrrCompat => {
            let one = b.c(1);
            let is_one = b.icmp(Cmp::Eq, count, one);
            b.select(is_one, all, without_of)
        }
        _ => {
            let w = bits(size);
            let o = first_step_left_of(b, x, w);
            with_of(b, without_of, o)
        }
    })
}

/// OF of a one-bit left shift or rotate of the `w`-bit `x`: its two top bits differ.
fn first_step_left_of<B: Builder>(b: &mut B, x: B::V, w: u32) -> B::B {
    let k = b.c(w as u64 - 2);
    let t = b.shr(x, k);
    let three = b.c(3);
    let t = b.and(t, three);
    let one = b.c(1);
    let two = b.c(2);
    let a = b.icmp(Cmp::Eq, t, one);
    let c = b.icmp(Cmp::Eq, t, two);
    b.bor(a, c)
}

/// `flags` (OF clear) with OF = `o`.
fn with_of<B: Builder>(b: &mut B, flags: B::V, o: B::B) -> B::V {
    let v = b.b2v(o);
    let k = b.c(rflags::OF.trailing_zeros() as u64);
    let v = b.shl(v, k);
    b.or(flags, v)
}

/// OF of ROL/ROR/RCL/RCR in the Intel profile, or `None` for the host's (the last one-bit
/// step's). Intel's is the first step's: ROL and RCL MSB(x) XOR bit w-2 of x, ROR MSB(x) XOR
/// bit 0 of x, RCR the old CF XOR MSB(x). ROL/ROR of a register by an immediate above 1 leave
/// OF as it was, and so do RCL/RCR by a multiple of w+1 (`no_rotation`). `old` is RFLAGS'
/// arithmetic bits before the instruction.
pub(super) fn rotate_of<B: Builder>(
    b: &mut B,
    insn: &Instruction,
    w: u32,
    x: B::V,
    old: B::V,
    no_rotation: Option<B::B>,
) -> Option<B::B> {
    if b.profile() != Profile::Intel {
        return None;
    }
    let old_of = flag(b, old, rflags::OF);
    let first = first_step_rotate_of(b, insn, w, x, old, old_of);
    Some(match no_rotation {
        Some(none) => {
            let keep = b.band(none, old_of);
            let moved = b.bnot(none);
            let first = b.band(moved, first);
            b.bor(keep, first)
        }
        None => first,
    })
}

/// Is `mask`'s flag set in the RFLAGS bits `v`?
fn flag<B: Builder>(b: &mut B, v: B::V, mask: u64) -> B::B {
    let m = b.c(mask);
    let t = b.and(v, m);
    let zero = b.c(0);
    b.icmp(Cmp::Ne, t, zero)
}

fn first_step_rotate_of<B: Builder>(
    b: &mut B,
    insn: &Instruction,
    w: u32,
    x: B::V,
    old: B::V,
    old_of: B::B,
) -> B::B {
    use iced_x86::{Mnemonic as M, OpKind};
    let mnemonic = insn.mnemonic();
    if matches!(mnemonic, M::Rol | M::Ror)
        && insn.op0_kind() == OpKind::Register
        && insn.op1_kind() == OpKind::Immediate8
        && insn.immediate8() & if w == 64 { 63 } else { 31 } > 1
    {
        return old_of;
    }
    let k = b.c(w as u64 - 1);
    let top = b.shr(x, k);
    let one = b.c(1);
    let top = b.and(top, one);
    let zero = b.c(0);
    let msb = b.icmp(Cmp::Ne, top, zero);
    match mnemonic {
        M::Rol | M::Rcl => first_step_left_of(b, x, w),
        M::Ror => {
            let low = b.and(x, one);
            let low = b.icmp(Cmp::Ne, low, zero);
            b.bxor(msb, low)
        }
        _ => {
            let cin = flag(b, old, rflags::CF);
            b.bxor(cin, msb)
        }
    }
}

/// OF of SHLD/SHRD in the Intel profile, or `None` for the host's (MSB(x) XOR MSB(res)):
/// the first one-bit step's, MSB(x) XOR bit w-2 of x for SHLD, MSB(x) XOR the bit shifted in
/// first (bit w - n of the result, n taken mod w) for SHRD. `n` is the masked count.
pub(super) fn double_shift_of<B: Builder>(
    b: &mut B,
    left: bool,
    w: u32,
    x: B::V,
    res: B::V,
    n: B::V,
) -> Option<B::B> {
    if b.profile() != Profile::Intel {
        return None;
    }
    if left {
        return Some(first_step_left_of(b, x, w));
    }
    let one = b.c(1);
    let k = b.c(w as u64 - 1);
    let top = b.shr(x, k);
    let top = b.and(top, one);
    let wm = b.c(w as u64 - 1);
    let nm = b.and(n, wm);
    let wv = b.c(w as u64);
    let back = b.sub(wv, nm);
    let r = b.zext(res, w);
    // (n = 0 makes `back` = w, but then the caller keeps the old flags.)
    let inb = b.shr(r, back);
    let inb = b.and(inb, one);
    let x = b.xor(top, inb);
    let zero = b.c(0);
    Some(b.icmp(Cmp::Ne, x, zero))
}

/// TZCNT/LZCNT in the Intel profile: the flags besides CF and ZF (which the caller computes),
/// OF, SF, AF and PF, are cleared; `None` for the host's (kept as they were).
pub(super) fn count_zeros_flags<B: Builder>(b: &mut B, cf_zf: B::V) -> Option<B::V> {
    (b.profile() == Profile::Intel).then_some(cf_zf)
}

/// BSF/BSR (not TZCNT/LZCNT) in KrrCompat and Intel: the destination register's new value and
/// the new arithmetic flags, or `None` for the host's (destination unchanged, all 64 bits, when
/// the source is zero; only ZF written).
///
/// `idx` is the bit index (meaningless for a zero source), `old` the whole destination
/// register before, `size` the operand size.
/// - KrrCompat (KRR's `CC_OP_BSR`): the value written is the index, or the old register when
///   the source is zero, written at the operand size (so a 32-bit form clears bits 63:32 even
///   then); CF = OF = AF = 0, PF and SF from that value, ZF = (old destination at the operand
///   size == 0).
/// - Intel: the destination as on the host (unchanged, all 64 bits, for a zero source: the
///   SDM's newer text); CF = OF = AF = SF = 0, PF from the index (from 0 for a zero source),
///   ZF = (source == 0) as the SDM defines it.
pub(super) fn bit_scan<B: Builder>(
    b: &mut B,
    size: u32,
    src_zero: B::B,
    idx: B::V,
    old: B::V,
) -> Option<(B::V, B::V)> {
    let profile = b.profile();
    if profile == Profile::Host {
        return None;
    }
    let w = bits(size);
    let merged = match (profile, size) {
        // A 16-bit destination keeps bits 63:16 whatever happens.
        (_, 2) => {
            let keep = b.c(!0xffff);
            let hi = b.and(old, keep);
            let v = b.select(src_zero, old, idx);
            let lo = b.zext(v, 16);
            b.or(hi, lo)
        }
        // A 32-bit write zero-extends: the index, and in KRR the old value too.
        (Profile::KrrCompat, 4) => {
            let v = b.select(src_zero, old, idx);
            b.zext(v, 32)
        }
        (_, 4) => {
            let z = b.zext(idx, 32);
            b.select(src_zero, old, z)
        }
        _ => b.select(src_zero, old, idx),
    };
    let zero = b.c(0);
    let (result, zf_from) = match profile {
        Profile::KrrCompat => {
            let o = b.zext(old, w);
            (b.zext(merged, w), b.icmp(Cmp::Eq, o, zero))
        }
        // An index is below 64: SF = 0 and PF from it.
        _ => (b.select(src_zero, zero, idx), src_zero),
    };
    // Logic flags of the result: CF = OF = AF = 0, PF/SF/ZF from it; then ZF replaced.
    let logic = FlagState::new(FlagKind::Logic, size, result, zero, zero, zero);
    let f = materialize(b, &logic);
    let m = b.c(!rflags::ZF);
    let f = b.and(f, m);
    let z = b.b2v(zf_from);
    let k = b.c(rflags::ZF.trailing_zeros() as u64);
    let z = b.shl(z, k);
    let f = b.or(f, z);
    Some((merged, f))
}
