//! SSE, SSE2, SSE3, SSSE3, SSE4.1, SSE4.2, AES-NI and PCLMULQDQ instructions, and CRC32
//! (legacy encodings only: the MMX-register forms that share these mnemonics are left
//! unimplemented, and VEX/EVEX forms have their own `V...` mnemonics).
//!
//! - Data movement, logic and the common integer lane operations are written inline with the
//!   64-bit builder operations, working on the two halves of a register as SWAR words, so
//!   compiled code runs them without leaving the block (the memcpy/strlen-class fast path).
//!   XMM registers are not cached by either builder: every access is a
//!   `load_state`/`store_state` of one half.
//! - Everything else (floating point, the other integer operations, shuffles, string compares,
//!   AES, carry-less multiply, CRC32) goes through [`Helper::SseHost`] (`host.rs`): the host
//!   runs the very same instruction on a private context under the guest's MXCSR
//!   (`helpers::host_exec`), so results, NaN propagation, signed zeros, DAZ/FTZ, rounding and
//!   MXCSR flags are bit-exact against this CPU. Unmasked SIMD floating-point exceptions trap
//!   on the host as in the guest and raise #XM (#UD when CR4.OSXMMEXCPT is clear) with the
//!   destination unchanged and the flags the hardware recorded.
//!
//! Every instruction here but CRC32 first checks that SSE is usable: #UD if CR0.EM is set or
//! CR4.OSFXSR is clear, #NM if CR0.TS is set. Legacy 16-byte memory operands must be 16-byte
//! aligned (#GP(0)) except for MOVUPS/MOVUPD/MOVDQU/LDDQU and PCMPxSTRx.

mod host;
mod lanes;
mod pure_ops;
mod vex;

use super::*;
use lanes::lane_handler;

use iced_x86::{Code, Mnemonic};
use krr_runtime::arch::{cr0, cr4};
use krr_runtime::vector;

/// MXCSR bits LDMXCSR accepts.
const MXCSR_VALID: u64 = krr_runtime::cpuid::MXCSR_MASK as u64;

/// Byte offset of `cpu.scratch[2]`: the r/m operand handed to [`Helper::SseHost`].
const SCRATCH_OPERAND: i32 = offsets::SCRATCH + 16;

type Handler<B> = fn(&mut B) -> R<()>;

pub fn execute<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    // The string MOVSD/CMPSD share their mnemonics with the SSE2 scalar instructions: hand any
    // string form that reaches this module back to the string code.
    if matches!(insn.code(), Code::Movsd_m32_m32 | Code::Cmpsd_m32_m32) {
        return super::string::execute(b);
    }
    if insn.mnemonic() == Mnemonic::Movnti {
        // A GPR store with a non-temporal hint; not subject to the SSE state checks.
        let size = op_size(&insn, 0);
        let v = read_op(b, 1, size)?;
        return write_op(b, 0, size, v);
    }
    if insn.encoding() == iced_x86::EncodingKind::VEX {
        // The inline VEX forms (`classify::inline_vex`); the others are system instructions.
        return vex::execute(b);
    }
    if let Some(h) = pure_ops::handler::<B>(&insn) {
        return h(b);
    }
    let Some(h) = handler::<B>(&insn) else {
        // Everything else runs on the host (anything the host lacks is refused there: #UD;
        // MMX forms never come here: `system::x87` runs them).
        return host::host(b);
    };
    check_available(b)?;
    h(b)
}

fn handler<B: Builder>(insn: &Instruction) -> Option<Handler<B>> {
    use Mnemonic as M;
    let h: Handler<B> = match insn.mnemonic() {
        // ---- data movement ----
        M::Movaps | M::Movapd | M::Movdqa | M::Movntps | M::Movntpd | M::Movntdq => {
            |b| mov128(b, true)
        }
        M::Movups | M::Movupd | M::Movdqu | M::Lddqu => |b| mov128(b, false),
        M::Movntdqa => |b| mov128(b, true),
        M::Maskmovdqu => maskmovdqu,
        M::Movd | M::Movq => movd_movq,
        M::Movss => |b| mov_scalar(b, 4),
        M::Movsd => |b| mov_scalar(b, 8),
        M::Movlps | M::Movlpd => |b| mov_half(b, 0),
        M::Movhps | M::Movhpd => |b| mov_half(b, 1),
        M::Movhlps => |b| {
            let insn = *b.insn();
            let v = b.load_state(offsets::xmm(xreg(&insn, 1), 1));
            b.store_state(offsets::xmm(xreg(&insn, 0), 0), v);
            Ok(())
        },
        M::Movlhps => |b| {
            let insn = *b.insn();
            let v = b.load_state(offsets::xmm(xreg(&insn, 1), 0));
            b.store_state(offsets::xmm(xreg(&insn, 0), 1), v);
            Ok(())
        },
        M::Ldmxcsr => |b| {
            let a = access_address(b)?;
            let v = b.load(a, 4)?;
            let m = b.c(!MXCSR_VALID);
            let r = b.and(v, m);
            let z = b.c(0);
            let bad = b.icmp(Cmp::Ne, r, z);
            b.raise_if(bad, vector::GP, Some(0))?;
            b.store_state(offsets::MXCSR, v);
            Ok(())
        },
        M::Stmxcsr => |b| {
            let v = b.load_state(offsets::MXCSR);
            let v = b.zext(v, 32);
            let a = access_address(b)?;
            b.store(a, v, 4)
        },

        // ---- logic ----
        M::Pxor | M::Xorps | M::Xorpd => |b| lanewise(b, |b, x, y| b.xor(x, y)),
        M::Por | M::Orps | M::Orpd => |b| lanewise(b, |b, x, y| b.or(x, y)),
        M::Pand | M::Andps | M::Andpd => |b| lanewise(b, |b, x, y| b.and(x, y)),
        M::Pandn | M::Andnps | M::Andnpd => |b| {
            lanewise(b, |b, x, y| {
                let n = b.not(x);
                b.and(n, y)
            })
        },

        _ => return lane_handler(insn),
    };
    Some(h)
}

/// #UD if CR0.EM is set or CR4.OSFXSR clear, #NM if CR0.TS is set.
pub(super) fn check_available<B: Builder>(b: &mut B) -> R<()> {
    let cr0 = b.load_state(offsets::CR0);
    let cr4 = b.load_state(offsets::CR4);
    let em = b.c(cr0::EM);
    let em = b.and(cr0, em);
    let fx = b.c(cr4::OSFXSR);
    let on = b.and(cr4, fx);
    let off = b.xor(on, fx);
    let u = b.or(em, off);
    let z = b.c(0);
    let ud = b.icmp(Cmp::Ne, u, z);
    b.raise_if(ud, vector::UD, None)?;
    let ts = b.c(cr0::TS);
    let ts = b.and(cr0, ts);
    let nm = b.icmp(Cmp::Ne, ts, z);
    b.raise_if(nm, vector::NM, None)
}

// ---- operand access ----

/// XMM register number of (register) operand `i`.
pub(super) fn xreg(insn: &Instruction, i: u32) -> usize {
    let r = insn.op_register(i);
    debug_assert!(r.is_xmm(), "operand {i} of {insn} is not an XMM register");
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

pub(super) fn get<B: Builder>(b: &mut B, r: usize) -> (B::V, B::V) {
    let lo = b.load_state(offsets::xmm(r, 0));
    let hi = b.load_state(offsets::xmm(r, 1));
    (lo, hi)
}

pub(super) fn put<B: Builder>(b: &mut B, r: usize, lo: B::V, hi: B::V) {
    b.store_state(offsets::xmm(r, 0), lo);
    b.store_state(offsets::xmm(r, 1), hi);
}

/// The memory operand's linear address; #GP(0) unless 16-byte aligned when `align`.
pub(super) fn mem_addr<B: Builder>(b: &mut B, align: bool) -> R<B::V> {
    let a = effective_address(b);
    if align {
        let m = b.c(15);
        let low = b.and(a, m);
        let z = b.c(0);
        let bad = b.icmp(Cmp::Ne, low, z);
        b.raise_if(bad, vector::GP, Some(0))?;
    }
    stack_check(b, a)?;
    Ok(a)
}

/// 128-bit operand `i`: an XMM register or m128 (which must be aligned when `align`).
pub(super) fn read128<B: Builder>(b: &mut B, i: u32, align: bool) -> R<(B::V, B::V)> {
    let insn = *b.insn();
    if insn.op_kind(i) == OpKind::Memory {
        let a = mem_addr(b, align)?;
        b.load128(a)
    } else {
        Ok(get(b, xreg(&insn, i)))
    }
}

/// `op xmm, xmm/m128`: dst = f(dst, src) computed on whole registers as [low, high].
pub(super) fn whole<B: Builder>(
    b: &mut B,
    align: bool,
    f: impl FnOnce(&mut B, [B::V; 2], [B::V; 2]) -> [B::V; 2],
) -> R<()> {
    let insn = *b.insn();
    let (xl, xh) = read128(b, 1, align)?;
    let d = xreg(&insn, 0);
    let (al, ah) = get(b, d);
    let [lo, hi] = f(b, [al, ah], [xl, xh]);
    put(b, d, lo, hi);
    Ok(())
}

/// `op xmm, xmm/m128` (aligned) whose halves are independent: dst.h = f(dst.h, src.h).
pub(super) fn lanewise<B: Builder>(b: &mut B, f: impl Fn(&mut B, B::V, B::V) -> B::V) -> R<()> {
    whole(b, true, |b, a, x| {
        let lo = f(b, a[0], x[0]);
        let hi = f(b, a[1], x[1]);
        [lo, hi]
    })
}

// ---- data movement ----

/// MOVAPS/MOVUPS/MOVDQA/... in both directions, and the non-temporal stores.
pub(super) fn mov128<B: Builder>(b: &mut B, align: bool) -> R<()> {
    let insn = *b.insn();
    if insn.op0_kind() == OpKind::Memory {
        let (lo, hi) = get(b, xreg(&insn, 1));
        let a = mem_addr(b, align)?;
        b.store128(a, lo, hi)
    } else {
        let (lo, hi) = read128(b, 1, align)?;
        put(b, xreg(&insn, 0), lo, hi);
        Ok(())
    }
}

/// MOVD/MOVQ between XMM registers, GPRs and memory.
pub(super) fn movd_movq<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    match insn.code() {
        // 66 0F 6E / 66 REX.W 0F 6E: zero-extend into the whole register.
        Code::Movd_xmm_rm32 | Code::Movq_xmm_rm64 => {
            let size = if insn.code() == Code::Movd_xmm_rm32 {
                4
            } else {
                8
            };
            let v = read_op(b, 1, size)?;
            let z = b.c(0);
            put(b, xreg(&insn, 0), v, z);
            Ok(())
        }
        // 66 0F 7E / 66 REX.W 0F 7E.
        Code::Movd_rm32_xmm | Code::Movq_rm64_xmm => {
            let size = if insn.code() == Code::Movd_rm32_xmm {
                4
            } else {
                8
            };
            let v = b.load_state(offsets::xmm(xreg(&insn, 1), 0));
            let v = b.zext(v, bits(size));
            write_op(b, 0, size, v)
        }
        // F3 0F 7E: low quadword, upper one zeroed.
        Code::Movq_xmm_xmmm64 => {
            let v = if insn.op1_kind() == OpKind::Memory {
                let a = access_address(b)?;
                b.load(a, 8)?
            } else {
                b.load_state(offsets::xmm(xreg(&insn, 1), 0))
            };
            let z = b.c(0);
            put(b, xreg(&insn, 0), v, z);
            Ok(())
        }
        // 66 0F D6: the register form zeroes the upper quadword too.
        Code::Movq_xmmm64_xmm => {
            let v = b.load_state(offsets::xmm(xreg(&insn, 1), 0));
            if insn.op0_kind() == OpKind::Memory {
                let a = access_address(b)?;
                b.store(a, v, 8)
            } else {
                let z = b.c(0);
                put(b, xreg(&insn, 0), v, z);
                Ok(())
            }
        }
        _ => Err(b.unimplemented()),
    }
}

/// MOVSS/MOVSD: loads zero the rest of the register, register moves merge the low element.
pub(super) fn mov_scalar<B: Builder>(b: &mut B, size: u32) -> R<()> {
    let insn = *b.insn();
    if insn.op0_kind() == OpKind::Memory {
        let v = b.load_state(offsets::xmm(xreg(&insn, 1), 0));
        let v = b.zext(v, bits(size));
        let a = access_address(b)?;
        return b.store(a, v, size);
    }
    let d = xreg(&insn, 0);
    if insn.op1_kind() == OpKind::Memory {
        let a = access_address(b)?;
        let v = b.load(a, size)?;
        let z = b.c(0);
        put(b, d, v, z);
        return Ok(());
    }
    let v = b.load_state(offsets::xmm(xreg(&insn, 1), 0));
    let v = if size == 8 {
        v
    } else {
        let old = b.load_state(offsets::xmm(d, 0));
        let keep = b.c(!0xffff_ffffu64);
        let old = b.and(old, keep);
        let v = b.zext(v, 32);
        b.or(old, v)
    };
    b.store_state(offsets::xmm(d, 0), v);
    Ok(())
}

/// MOVLPS/MOVLPD (half 0) and MOVHPS/MOVHPD (half 1): one quadword to or from memory.
pub(super) fn mov_half<B: Builder>(b: &mut B, half: usize) -> R<()> {
    let insn = *b.insn();
    if insn.op0_kind() == OpKind::Memory {
        let v = b.load_state(offsets::xmm(xreg(&insn, 1), half));
        let a = access_address(b)?;
        b.store(a, v, 8)
    } else if insn.op1_kind() == OpKind::Memory {
        let a = access_address(b)?;
        let v = b.load(a, 8)?;
        b.store_state(offsets::xmm(xreg(&insn, 0), half), v);
        Ok(())
    } else {
        Err(b.unimplemented())
    }
}

/// MASKMOVDQU: store the bytes of operand 1 whose byte in operand 2 has its top bit set to
/// [rDI] (DS or the override segment; [EDI] with a 67 prefix), as one byte store per selected
/// byte in address order: nothing is read and no other byte is written, so MMIO sees only the
/// selected bytes. Faults are those of a 16-byte store whatever the mask, as on the reference
/// host (an AMD EPYC, `jit/tests/system.rs` `maskmovdqu_*`): a window reaching into an
/// unmapped or read-only page faults at the first such byte even with an all-zero mask or
/// with mask bits only in the accessible page, and then nothing is written. The non-temporal
/// hint has no guest-visible effect.
pub(super) fn maskmovdqu<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    let rdi = b.get_gpr(krr_runtime::gpr::RDI);
    let a = if insn.op0_kind() == OpKind::MemorySegEDI {
        b.zext(rdi, 32)
    } else {
        rdi
    };
    let a = segment_base(b, insn.memory_segment(), a);
    stack_check(b, a)?;
    b.probe_write(a, 16)?;
    let (dl, dh) = get(b, xreg(&insn, 1));
    let (ml, mh) = get(b, xreg(&insn, 2));
    for (half, (d, m)) in [(dl, ml), (dh, mh)].into_iter().enumerate() {
        for i in 0..8u64 {
            let bit = b.c(0x80 << (8 * i));
            let sel = b.and(m, bit);
            let z = b.c(0);
            let selected = b.icmp(Cmp::Ne, sel, z);
            let shift = b.c(8 * i);
            let byte = b.shr(d, shift);
            // Just the byte: a bus store gets the value as given.
            let byte = b.zext(byte, 8);
            let off = b.c(8 * half as u64 + i);
            let at = b.add(a, off);
            b.store_if(selected, at, byte, 1)?;
        }
    }
    Ok(())
}
