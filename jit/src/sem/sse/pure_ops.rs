//! The integer SIMD instructions of CRC and crypto code, written without the general host path:
//! PALIGNR inline (a constant funnel shift of the two registers), PSHUFB, PCLMULQDQ, the AES
//! rounds and CRC32 as calls of pure host functions ([`Builder::pure`], `helpers::pure`), which
//! compiled code makes straight from the block. AESKEYGENASSIST (key expansion only) stays on
//! the general host path.

use super::*;
use crate::helpers::pure::Pure;

/// The handler for `insn` if it is one of this module's and the host has it.
pub(super) fn handler<B: Builder>(insn: &Instruction) -> Option<Handler<B>> {
    use Mnemonic as M;
    let (need, h): (Pure, Handler<B>) = match insn.mnemonic() {
        M::Palignr => return Some(palignr),
        M::Pshufb => (Pure::Pshufb, |b| pure_whole(b, Pure::Pshufb)),
        M::Pclmulqdq => (Pure::Clmul, pclmulqdq),
        M::Aesenc => (Pure::AesEnc, |b| pure_whole(b, Pure::AesEnc)),
        M::Aesenclast => (Pure::AesEncLast, |b| pure_whole(b, Pure::AesEncLast)),
        M::Aesdec => (Pure::AesDec, |b| pure_whole(b, Pure::AesDec)),
        M::Aesdeclast => (Pure::AesDecLast, |b| pure_whole(b, Pure::AesDecLast)),
        M::Aesimc => (Pure::AesImc, |b| pure_whole(b, Pure::AesImc)),
        M::Crc32 => (crc32_op(insn)?, crc32),
        _ => return None,
    };
    need.func().map(|_| h)
}

fn crc32_op(insn: &Instruction) -> Option<Pure> {
    Some(match op_size(insn, 1) {
        1 => Pure::Crc32x8,
        2 => Pure::Crc32x16,
        4 => Pure::Crc32x32,
        8 => Pure::Crc32x64,
        _ => return None,
    })
}

fn func(p: Pure) -> crate::helpers::pure::PureFn {
    p.func()
        .unwrap_or_else(|| unreachable!("{p:?}: `handler` checked the host has it"))
}

/// `op xmm1, xmm2/m128`: xmm1 = f(xmm1, xmm2/m128) on the host.
fn pure_whole<B: Builder>(b: &mut B, p: Pure) -> R<()> {
    check_available(b)?;
    let f = func(p);
    whole(b, true, |b, a, x| {
        let (lo, hi) = b.pure(f, [a[0], a[1], x[0], x[1]]);
        [lo, hi]
    })
}

/// PCLMULQDQ xmm1, xmm2/m128, imm8: imm8 bit 0 picks xmm1's quadword, bit 4 the source's.
fn pclmulqdq<B: Builder>(b: &mut B) -> R<()> {
    check_available(b)?;
    let imm = b.insn().immediate8();
    let f = func(Pure::Clmul);
    whole(b, true, |b, a, x| {
        let y = a[(imm & 1) as usize];
        let z = x[((imm >> 4) & 1) as usize];
        let zero = b.c(0);
        let (lo, hi) = b.pure(f, [y, zero, z, zero]);
        [lo, hi]
    })
}

/// PALIGNR xmm1, xmm2/m128, imm8: the low 128 bits of (xmm1:xmm2) >> (imm8 * 8), zero beyond
/// 256 bits.
fn palignr<B: Builder>(b: &mut B) -> R<()> {
    check_available(b)?;
    let shift = b.insn().immediate8() as u32 * 8;
    whole(b, true, |b, a, x| {
        // The 256-bit concatenation as quadwords, lowest first: the source, then xmm1.
        let words = [x[0], x[1], a[0], a[1]];
        let (k, r) = ((shift / 64) as usize, shift % 64);
        let word = |b: &mut B, j: usize| words.get(j).copied().unwrap_or_else(|| b.c(0));
        let mut out = [b.c(0), b.c(0)];
        for (i, o) in out.iter_mut().enumerate() {
            let low = word(b, k + i);
            *o = if r == 0 {
                low
            } else {
                let high = word(b, k + i + 1);
                let rc = b.c(r as u64);
                let lc = b.c(64 - r as u64);
                let l = b.shr(low, rc);
                let h = b.shl(high, lc);
                b.or(l, h)
            };
        }
        out
    })
}

/// CRC32 r32/r64, r/m8/16/32/64: CRC-32C of the source bytes into the low 32 bits of the
/// destination (zero-extended). Not an SSE-state instruction: no CR0/CR4 checks.
fn crc32<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let p = crc32_op(&insn).unwrap_or_else(|| unreachable!("`handler` checked the size"));
    let size = op_size(&insn, 1);
    let v = read_op(b, 1, size)?;
    let acc = read_reg(b, insn.op0_register());
    let zero = b.c(0);
    let (r, _) = b.pure(func(p), [acc, zero, v, zero]);
    write_reg(b, insn.op0_register(), r);
    Ok(())
}
