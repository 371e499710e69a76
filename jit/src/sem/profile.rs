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
/// KrrCompat and Intel: SHL/SAL's OF is 0 unless the count is 1 (KRR's TCG does that for an
/// immediate count; for a count in CL it reads a stale count, which krr does not model: the
/// same rule as for an immediate). SHR and SAR are the host's: OF = MSB of the original
/// operand for SHR whatever the count, 0 for SAR, AF = 0 for all three.
pub(super) fn shift_flags<B: Builder>(
    b: &mut B,
    kind: FlagKind,
    size: u32,
    res: B::V,
    x: B::V,
    count: B::V,
) -> Option<B::V> {
    if b.profile() == Profile::Host || kind != FlagKind::Shl {
        return None;
    }
    let zero = b.c(0);
    let lazy = FlagState::new(kind, size, res, x, count, zero);
    let bits = materialize(b, &lazy);
    let m = b.c(!rflags::OF);
    let without_of = b.and(bits, m);
    let one = b.c(1);
    let is_one = b.icmp(Cmp::Eq, count, one);
    Some(b.select(is_one, bits, without_of))
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
/// - Intel: the destination as on the host; CF = OF = AF = 0, PF and SF from the value the
///   destination holds afterwards, ZF = (source == 0) as the SDM defines it.
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
    let result = b.zext(merged, w);
    let zero = b.c(0);
    let zf_from = match profile {
        Profile::KrrCompat => {
            let o = b.zext(old, w);
            b.icmp(Cmp::Eq, o, zero)
        }
        _ => src_zero,
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
