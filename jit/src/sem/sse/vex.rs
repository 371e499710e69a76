//! The VEX forms memcpy/strlen-class code lives on, written inline (SWAR on the four
//! quadwords of a YMM register, like the legacy forms in `mod.rs`/`lanes.rs`), so compiled
//! code runs them without leaving the block: VMOVDQU/VMOVDQA/VMOVUPS/VMOVAPS/VMOVUPD/VMOVAPD,
//! VPXOR/VPOR/VPAND/VPANDN and their PS/PD twins, VPCMPEQB/W/D/Q, VPMINUB/VPMAXUB,
//! VPADD*/VPSUB*, VPMOVMSKB, VPTEST, VPBROADCASTB and VZEROUPPER. Which forms come here is
//! `classify::inline_vex`; every other VEX instruction runs on the host (`system::avx`).
//!
//! As there: #UD unless CR4.OSXSAVE and XCR0 enables SSE and AVX state, #NM with CR0.TS;
//! VEX.128 forms zero bits 255:128 of their destination; only the aligned moves need
//! alignment (16 or 32 bytes, #GP(0)); a 32-byte store is probed whole before its first
//! byte is written.

use super::lanes::{byte_msbs, min_max_ub, padd, pcmpeq, psub};
use super::*;
use crate::sem::flags::concrete;
use krr_runtime::arch::{rflags, xcr0};

/// A YMM register's four quadwords (a VEX.128 value has zeros in 2 and 3).
type Y<V> = [V; 4];

pub(super) fn execute<B: Builder>(b: &mut B) -> R<()> {
    use Mnemonic as M;
    vex_check(b)?;
    let insn = *b.insn();
    match insn.mnemonic() {
        M::Vmovdqu | M::Vmovups | M::Vmovupd => mov(b, false),
        M::Vmovdqa | M::Vmovaps | M::Vmovapd => mov(b, true),
        M::Vpxor | M::Vxorps | M::Vxorpd => lanewise3(b, |b, x, y| b.xor(x, y)),
        M::Vpor | M::Vorps | M::Vorpd => lanewise3(b, |b, x, y| b.or(x, y)),
        M::Vpand | M::Vandps | M::Vandpd => lanewise3(b, |b, x, y| b.and(x, y)),
        M::Vpandn | M::Vandnps | M::Vandnpd => lanewise3(b, |b, x, y| {
            let n = b.not(x);
            b.and(n, y)
        }),
        M::Vpcmpeqb => lanewise3(b, |b, x, y| pcmpeq(b, x, y, 8)),
        M::Vpcmpeqw => lanewise3(b, |b, x, y| pcmpeq(b, x, y, 16)),
        M::Vpcmpeqd => lanewise3(b, |b, x, y| pcmpeq(b, x, y, 32)),
        M::Vpcmpeqq => lanewise3(b, |b, x, y| pcmpeq(b, x, y, 64)),
        M::Vpminub => lanewise3(b, |b, x, y| min_max_ub(b, x, y, false)),
        M::Vpmaxub => lanewise3(b, |b, x, y| min_max_ub(b, x, y, true)),
        M::Vpaddb => lanewise3(b, |b, x, y| padd(b, x, y, 8)),
        M::Vpaddw => lanewise3(b, |b, x, y| padd(b, x, y, 16)),
        M::Vpaddd => lanewise3(b, |b, x, y| padd(b, x, y, 32)),
        M::Vpaddq => lanewise3(b, |b, x, y| b.add(x, y)),
        M::Vpsubb => lanewise3(b, |b, x, y| psub(b, x, y, 8)),
        M::Vpsubw => lanewise3(b, |b, x, y| psub(b, x, y, 16)),
        M::Vpsubd => lanewise3(b, |b, x, y| psub(b, x, y, 32)),
        M::Vpsubq => lanewise3(b, |b, x, y| b.sub(x, y)),
        M::Vpmovmskb => pmovmskb(b),
        M::Vptest => ptest(b),
        M::Vpbroadcastb => broadcast_b(b),
        M::Vzeroupper => {
            let z = b.c(0);
            for r in 0..16 {
                b.store_state(offsets::ymm(r, 2), z);
                b.store_state(offsets::ymm(r, 3), z);
            }
            Ok(())
        }
        _ => Err(b.unimplemented()),
    }
}

/// #UD unless CR4.OSXSAVE is set and XCR0 enables SSE and AVX state; then #NM if CR0.TS.
fn vex_check<B: Builder>(b: &mut B) -> R<()> {
    let cr4 = b.load_state(offsets::CR4);
    let xcr = b.load_state(offsets::XCR0);
    let osx_bit = b.c(cr4::OSXSAVE);
    let osx = b.and(cr4, osx_bit);
    let off = b.xor(osx, osx_bit);
    let need = b.c(xcr0::SSE | xcr0::AVX);
    let have = b.and(xcr, need);
    let missing = b.xor(have, need);
    let bad = b.or(missing, off);
    let z = b.c(0);
    let ud = b.icmp(Cmp::Ne, bad, z);
    b.raise_if(ud, vector::UD, None)?;
    let cr0 = b.load_state(offsets::CR0);
    let ts = b.c(cr0::TS);
    let ts = b.and(cr0, ts);
    let nm = b.icmp(Cmp::Ne, ts, z);
    b.raise_if(nm, vector::NM, None)
}

/// YMM (or XMM) register number of operand `i`.
fn yreg(insn: &Instruction, i: u32) -> usize {
    insn.op_register(i).number()
}

fn wide(insn: &Instruction) -> bool {
    (0..insn.op_count())
        .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_ymm())
        || insn.memory_size().size() == 32
}

fn get_y<B: Builder>(b: &mut B, r: usize, wide: bool) -> Y<B::V> {
    let q0 = b.load_state(offsets::ymm(r, 0));
    let q1 = b.load_state(offsets::ymm(r, 1));
    if wide {
        let q2 = b.load_state(offsets::ymm(r, 2));
        let q3 = b.load_state(offsets::ymm(r, 3));
        [q0, q1, q2, q3]
    } else {
        let z = b.c(0);
        [q0, q1, z, z]
    }
}

/// Write a destination register: all 256 bits (VEX.128 values carry zeros above 127).
fn put_y<B: Builder>(b: &mut B, r: usize, v: Y<B::V>) {
    for (q, x) in v.into_iter().enumerate() {
        b.store_state(offsets::ymm(r, q), x);
    }
}

/// The memory operand's address: #GP(0) unless aligned to its size when `align`.
fn address<B: Builder>(b: &mut B, align: bool) -> R<B::V> {
    let a = effective_address(b);
    if align {
        let size = b.insn().memory_size().size() as u64;
        let m = b.c(size - 1);
        let low = b.and(a, m);
        let z = b.c(0);
        let bad = b.icmp(Cmp::Ne, low, z);
        b.raise_if(bad, vector::GP, Some(0))?;
    }
    stack_check(b, a)?;
    Ok(a)
}

fn load_y<B: Builder>(b: &mut B, a: B::V, wide: bool) -> R<Y<B::V>> {
    let (q0, q1) = b.load128(a)?;
    if wide {
        let k = b.c(16);
        let a2 = b.add(a, k);
        let (q2, q3) = b.load128(a2)?;
        Ok([q0, q1, q2, q3])
    } else {
        let z = b.c(0);
        Ok([q0, q1, z, z])
    }
}

/// Operand `i`: a register or the memory operand (aligned when `align`).
fn read_y<B: Builder>(b: &mut B, i: u32, wide: bool, align: bool) -> R<Y<B::V>> {
    let insn = *b.insn();
    if insn.op_kind(i) == OpKind::Memory {
        let a = address(b, align)?;
        load_y(b, a, wide)
    } else {
        Ok(get_y(b, yreg(&insn, i), wide))
    }
}

/// VMOVDQU/VMOVDQA and the PS/PD moves: loads, stores and register moves.
fn mov<B: Builder>(b: &mut B, align: bool) -> R<()> {
    let insn = *b.insn();
    let w = wide(&insn);
    if insn.op0_kind() == OpKind::Memory {
        let v = get_y(b, yreg(&insn, 1), w);
        let a = address(b, align)?;
        if w {
            // Nothing is written unless all 32 bytes can be.
            b.probe_write(a, 32)?;
            b.store128(a, v[0], v[1])?;
            let k = b.c(16);
            let a2 = b.add(a, k);
            b.store128(a2, v[2], v[3])
        } else {
            b.store128(a, v[0], v[1])
        }
    } else {
        let v = read_y(b, 1, w, align)?;
        put_y(b, yreg(&insn, 0), v);
        Ok(())
    }
}

/// `op dst, src1, src2/mem` whose quadwords are independent: dst.q = f(src1.q, src2.q).
fn lanewise3<B: Builder>(b: &mut B, f: impl Fn(&mut B, B::V, B::V) -> B::V) -> R<()> {
    let insn = *b.insn();
    let w = wide(&insn);
    let y = read_y(b, 2, w, false)?;
    let x = get_y(b, yreg(&insn, 1), w);
    let n = if w { 4 } else { 2 };
    let mut out = x;
    for q in 0..n {
        out[q] = f(b, x[q], y[q]);
    }
    put_y(b, yreg(&insn, 0), out);
    Ok(())
}

/// VPMOVMSKB r32/r64, xmm/ymm: the bytes' top bits.
fn pmovmskb<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let w = wide(&insn);
    let v = get_y(b, yreg(&insn, 1), w);
    let n = if w { 4 } else { 2 };
    let mut m = b.c(0);
    for (q, x) in v.into_iter().take(n).enumerate() {
        let bits = byte_msbs(b, x);
        let k = b.c(8 * q as u64);
        let bits = b.shl(bits, k);
        m = b.or(m, bits);
    }
    write_reg(b, insn.op0_register(), m);
    Ok(())
}

/// VPTEST: ZF = (src1 AND src2) == 0, CF = (NOT src1 AND src2) == 0, AF/OF/PF/SF clear.
fn ptest<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let w = wide(&insn);
    let y = read_y(b, 1, w, false)?;
    let x = get_y(b, yreg(&insn, 0), w);
    let mut and = b.c(0);
    let mut andn = b.c(0);
    for q in 0..if w { 4 } else { 2 } {
        let a = b.and(x[q], y[q]);
        and = b.or(and, a);
        let nx = b.not(x[q]);
        let c = b.and(nx, y[q]);
        andn = b.or(andn, c);
    }
    let z = b.c(0);
    let zf = b.icmp(Cmp::Eq, and, z);
    let cf = b.icmp(Cmp::Eq, andn, z);
    let zf_bit = b.c(rflags::ZF);
    let cf_bit = b.c(rflags::CF);
    let zf = b.select(zf, zf_bit, z);
    let cf = b.select(cf, cf_bit, z);
    let bits = b.or(zf, cf);
    let st = concrete(b, bits);
    b.set_flags(st);
    Ok(())
}

/// VPBROADCASTB xmm/ymm, xmm/m8: the low byte in every byte.
fn broadcast_b<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let w = insn.op0_register().is_ymm();
    let byte = if insn.op1_kind() == OpKind::Memory {
        let a = address(b, false)?;
        b.load(a, 1)?
    } else {
        let v = b.load_state(offsets::ymm(yreg(&insn, 1), 0));
        b.zext(v, 8)
    };
    let ones = b.c(0x0101_0101_0101_0101);
    let v = b.mul(byte, ones);
    let z = b.c(0);
    let out = if w { [v, v, v, v] } else { [v, v, z, z] };
    put_y(b, yreg(&insn, 0), out);
    Ok(())
}
