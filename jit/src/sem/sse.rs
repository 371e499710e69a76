//! SSE/SSE2 instructions (legacy encodings only: the MMX-register forms that share these
//! mnemonics are left unimplemented, and VEX/EVEX forms have their own `V...` mnemonics).
//!
//! - Data movement, logic and the integer lane operations are written inline with the 64-bit
//!   builder operations, working on the two halves of a register as SWAR words, so compiled
//!   code runs them without leaving the block. XMM registers are not cached by either builder:
//!   every access is a `load_state`/`store_state` of one half.
//! - Floating point goes through [`Helper::Sse`]: [`sse_helper`] runs the very same host
//!   instruction (the host is x86-64) with the guest's rounding control, DAZ and FTZ and all
//!   exceptions masked, then folds the exception flags it raised into the guest MXCSR. Results,
//!   NaN propagation, signed zeros, denormal handling and flags are thus bit-exact.
//!
//! Unmasked SIMD floating-point exceptions raise #XM (#UD when CR4.OSXMMEXCPT is clear) and
//! leave the destination unchanged. Approximation: the flags recorded in MXCSR are those a
//! fully masked execution raises (restricted to the pre-computation ones, IE/DE/ZE, when one of
//! those is unmasked); hardware may record a different subset of the post-computation flags
//! when OE/UE/PE are unmasked.
//!
//! Every instruction here first checks that SSE is usable: #UD if CR0.EM is set or CR4.OSFXSR
//! is clear, #NM if CR0.TS is set.

use super::flags::concrete;
use super::*;
use iced_x86::{Code, Mnemonic};
use krr_runtime::{vector, CpuState, ExceptionRecord};
use std::mem::offset_of;

const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;

/// MXCSR bits LDMXCSR accepts (the guest CPUID does not offer AMD's misaligned-SSE mode bit).
const MXCSR_VALID: u64 = 0xffff;

/// [`Helper::Sse`] source operand meaning "the operand the semantics stored in
/// `cpu.scratch[2..4]`" (a memory operand).
const SCRATCH_SRC: u64 = 16;
/// Byte offset of `cpu.scratch[2]`.
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
    let mmx = (0..insn.op_count())
        .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_mm());
    let handler = if mmx { None } else { handler::<B>(&insn) };
    let Some(h) = handler else {
        return Err(b.unimplemented());
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
        M::Movups | M::Movupd | M::Movdqu => |b| mov128(b, false),
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

        // ---- floating point (through the helper) ----
        M::Addsd => |b| scalar_arith(b, SseOp::Addsd),
        M::Subsd => |b| scalar_arith(b, SseOp::Subsd),
        M::Mulsd => |b| scalar_arith(b, SseOp::Mulsd),
        M::Divsd => |b| scalar_arith(b, SseOp::Divsd),
        M::Addss => |b| scalar_arith(b, SseOp::Addss),
        M::Subss => |b| scalar_arith(b, SseOp::Subss),
        M::Mulss => |b| scalar_arith(b, SseOp::Mulss),
        M::Divss => |b| scalar_arith(b, SseOp::Divss),
        M::Ucomisd => |b| compare(b, SseOp::Ucomisd),
        M::Comisd => |b| compare(b, SseOp::Comisd),
        M::Ucomiss => |b| compare(b, SseOp::Ucomiss),
        M::Comiss => |b| compare(b, SseOp::Comiss),
        M::Cvtsi2sd => |b| int_to_float(b, SseOp::Cvtsi2sd32, SseOp::Cvtsi2sd64),
        M::Cvtsi2ss => |b| int_to_float(b, SseOp::Cvtsi2ss32, SseOp::Cvtsi2ss64),
        M::Cvttsd2si => |b| float_to_int(b, SseOp::Cvttsd2si32, SseOp::Cvttsd2si64),
        M::Cvttss2si => |b| float_to_int(b, SseOp::Cvttss2si32, SseOp::Cvttss2si64),
        _ => return None,
    };
    Some(h)
}

/// #UD if CR0.EM is set or CR4.OSFXSR clear, #NM if CR0.TS is set.
fn check_available<B: Builder>(b: &mut B) -> R<()> {
    let cr0 = b.load_state(offset_of!(CpuState, cr0) as i32);
    let cr4 = b.load_state(offset_of!(CpuState, cr4) as i32);
    let em = b.c(CR0_EM);
    let em = b.and(cr0, em);
    let fx = b.c(CR4_OSFXSR);
    let on = b.and(cr4, fx);
    let off = b.xor(on, fx);
    let u = b.or(em, off);
    let z = b.c(0);
    let ud = b.icmp(Cmp::Ne, u, z);
    b.raise_if(ud, vector::UD, None)?;
    let ts = b.c(CR0_TS);
    let ts = b.and(cr0, ts);
    let nm = b.icmp(Cmp::Ne, ts, z);
    b.raise_if(nm, vector::NM, None)
}

// ---- operand access ----

/// XMM register number of (register) operand `i`.
fn xreg(insn: &Instruction, i: u32) -> usize {
    let r = insn.op_register(i);
    debug_assert!(r.is_xmm(), "operand {i} of {insn} is not an XMM register");
    (r as usize).wrapping_sub(Register::XMM0 as usize) & 15
}

fn get<B: Builder>(b: &mut B, r: usize) -> (B::V, B::V) {
    let lo = b.load_state(offsets::xmm(r, 0));
    let hi = b.load_state(offsets::xmm(r, 1));
    (lo, hi)
}

fn put<B: Builder>(b: &mut B, r: usize, lo: B::V, hi: B::V) {
    b.store_state(offsets::xmm(r, 0), lo);
    b.store_state(offsets::xmm(r, 1), hi);
}

/// The memory operand's linear address; #GP(0) unless 16-byte aligned when `align`.
fn mem_addr<B: Builder>(b: &mut B, align: bool) -> R<B::V> {
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
fn read128<B: Builder>(b: &mut B, i: u32, align: bool) -> R<(B::V, B::V)> {
    let insn = *b.insn();
    if insn.op_kind(i) == OpKind::Memory {
        let a = mem_addr(b, align)?;
        b.load128(a)
    } else {
        Ok(get(b, xreg(&insn, i)))
    }
}

/// `op xmm, xmm/m128`: dst = f(dst, src) computed on whole registers as [low, high].
fn whole<B: Builder>(
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
fn lanewise<B: Builder>(b: &mut B, f: impl Fn(&mut B, B::V, B::V) -> B::V) -> R<()> {
    whole(b, true, |b, a, x| {
        let lo = f(b, a[0], x[0]);
        let hi = f(b, a[1], x[1]);
        [lo, hi]
    })
}

// ---- data movement ----

/// MOVAPS/MOVUPS/MOVDQA/... in both directions, and the non-temporal stores.
fn mov128<B: Builder>(b: &mut B, align: bool) -> R<()> {
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
fn movd_movq<B: Builder>(b: &mut B) -> R<()> {
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
fn mov_scalar<B: Builder>(b: &mut B, size: u32) -> R<()> {
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
fn mov_half<B: Builder>(b: &mut B, half: usize) -> R<()> {
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

// ---- SWAR lane arithmetic on 64-bit halves ----

/// The most significant bit of every `w`-bit lane.
fn lane_msb(w: u32) -> u64 {
    match w {
        8 => 0x8080_8080_8080_8080,
        16 => 0x8000_8000_8000_8000,
        32 => 0x8000_0000_8000_0000,
        _ => 1 << 63,
    }
}

/// The least significant bit of every `w`-bit lane.
fn lane_lsb(w: u32) -> u64 {
    lane_msb(w) >> (w - 1)
}

/// Lane-wise wrapping addition.
fn padd<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
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
fn psub<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
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
fn zero_lanes<B: Builder>(b: &mut B, x: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let l = b.c(!lane_msb(w));
    let xl = b.and(x, l);
    let t = b.add(xl, l);
    let t = b.or(t, x);
    let n = b.not(t);
    b.and(n, h)
}

/// Top bit of each lane set where x >= y (unsigned), all other bits clear.
fn uge_lanes<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
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
fn expand<B: Builder>(b: &mut B, m: B::V, w: u32) -> B::V {
    let k = b.c(w as u64 - 1);
    let ones = b.shr(m, k);
    let below = b.sub(m, ones);
    b.or(m, below)
}

fn pcmpeq<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let d = b.xor(x, y);
    let z = zero_lanes(b, d, w);
    expand(b, z, w)
}

/// Signed greater-than: x > y  <=>  not (y ^ H) >=u (x ^ H).
fn pcmpgt<B: Builder>(b: &mut B, x: B::V, y: B::V, w: u32) -> B::V {
    let h = b.c(lane_msb(w));
    let xs = b.xor(x, h);
    let ys = b.xor(y, h);
    let ge = uge_lanes(b, ys, xs, w);
    let gt = b.xor(ge, h);
    expand(b, gt, w)
}

fn min_max_ub<B: Builder>(b: &mut B, x: B::V, y: B::V, max: bool) -> B::V {
    let ge = uge_lanes(b, x, y, 8);
    let m = expand(b, ge, 8);
    let nm = b.not(m);
    let (a, c) = if max { (x, y) } else { (y, x) };
    let a = b.and(a, m);
    let c = b.and(c, nm);
    b.or(a, c)
}

/// The top bits of the eight bytes of `v`, as bits 0-7.
fn byte_msbs<B: Builder>(b: &mut B, v: B::V) -> B::V {
    let h = b.c(lane_msb(8));
    let m = b.and(v, h);
    // Bit 8i+7 times 2^(7(7-i)) lands on bit 56+i; no two partial products collide.
    let magic = b.c(0x0002_0408_1020_4081);
    let p = b.mul(m, magic);
    let k = b.c(56);
    b.shr(p, k)
}

/// Dword `k` (0-3) of a register given as [low, high], zero-extended.
fn dword<B: Builder>(b: &mut B, v: [B::V; 2], k: u64) -> B::V {
    let h = v[(k >> 1) as usize & 1];
    if k & 1 == 0 {
        b.zext(h, 32)
    } else {
        let s = b.c(32);
        b.shr(h, s)
    }
}

/// `lo | hi << 32` for zero-extended dwords.
fn join32<B: Builder>(b: &mut B, lo: B::V, hi: B::V) -> B::V {
    let s = b.c(32);
    let h = b.shl(hi, s);
    b.or(lo, h)
}

/// PSHUFLW/PSHUFHW on one quadword.
fn shuffle_words<B: Builder>(b: &mut B, q: B::V, imm: u64) -> B::V {
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
fn spread<B: Builder>(b: &mut B, v: B::V, w: u32) -> B::V {
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
fn unpack<B: Builder>(b: &mut B, a: B::V, x: B::V, w: u32) -> [B::V; 2] {
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
enum Shift {
    Left,
    Right,
    Arith,
}

/// PSLL/PSRL/PSRA with an imm8 count or the low quadword of xmm/m128 as the count.
fn shift<B: Builder>(b: &mut B, w: u32, kind: Shift) -> R<()> {
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

fn shift_lanes<B: Builder>(b: &mut B, v: B::V, count: B::V, w: u32, kind: Shift) -> B::V {
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
fn byte_shift<B: Builder>(b: &mut B, left: bool) -> R<()> {
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

// ---- floating point through the helper ----

/// Operations of [`Helper::Sse`] (its first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SseOp {
    Addsd = 1,
    Subsd,
    Mulsd,
    Divsd,
    Addss,
    Subss,
    Mulss,
    Divss,
    Ucomisd,
    Comisd,
    Ucomiss,
    Comiss,
    Cvtsi2sd32,
    Cvtsi2sd64,
    Cvtsi2ss32,
    Cvtsi2ss64,
    Cvttsd2si32,
    Cvttsd2si64,
    Cvttss2si32,
    Cvttss2si64,
}

impl SseOp {
    const ALL: [SseOp; 20] = [
        SseOp::Addsd,
        SseOp::Subsd,
        SseOp::Mulsd,
        SseOp::Divsd,
        SseOp::Addss,
        SseOp::Subss,
        SseOp::Mulss,
        SseOp::Divss,
        SseOp::Ucomisd,
        SseOp::Comisd,
        SseOp::Ucomiss,
        SseOp::Comiss,
        SseOp::Cvtsi2sd32,
        SseOp::Cvtsi2sd64,
        SseOp::Cvtsi2ss32,
        SseOp::Cvtsi2ss64,
        SseOp::Cvttsd2si32,
        SseOp::Cvttsd2si64,
        SseOp::Cvttss2si32,
        SseOp::Cvttss2si64,
    ];

    fn from_id(v: u64) -> Option<SseOp> {
        SseOp::ALL.into_iter().find(|&o| o as u64 == v)
    }

    /// Size in bytes of the floating-point source operand.
    fn src_size(self) -> u32 {
        use SseOp::*;
        match self {
            Addss | Subss | Mulss | Divss | Ucomiss | Comiss | Cvttss2si32 | Cvttss2si64 => 4,
            _ => 8,
        }
    }
}

/// The floating-point source operand `i` for the helper: its XMM number, or [`SCRATCH_SRC`]
/// after storing a memory operand (`size` bytes, no alignment requirement) in the scratch slot.
fn scalar_src<B: Builder>(b: &mut B, i: u32, size: u32) -> R<B::V> {
    let insn = *b.insn();
    if insn.op_kind(i) == OpKind::Memory {
        let a = access_address(b)?;
        let v = b.load(a, size)?;
        b.store_state(SCRATCH_OPERAND, v);
        Ok(b.c(SCRATCH_SRC))
    } else {
        Ok(b.c(xreg(&insn, i) as u64))
    }
}

/// ADDSD/SUBSD/MULSD/DIVSD and the SS forms: `op xmm, xmm/m64|m32`.
fn scalar_arith<B: Builder>(b: &mut B, op: SseOp) -> R<()> {
    let insn = *b.insn();
    let src = scalar_src(b, 1, op.src_size())?;
    let o = b.c(op as u64);
    let d = b.c(xreg(&insn, 0) as u64);
    b.call(Helper::Sse, [o, d, src])?;
    Ok(())
}

/// (U)COMISS/(U)COMISD: ZF, PF, CF from the comparison, OF, SF, AF cleared.
fn compare<B: Builder>(b: &mut B, op: SseOp) -> R<()> {
    let insn = *b.insn();
    let src = scalar_src(b, 1, op.src_size())?;
    let o = b.c(op as u64);
    let d = b.c(xreg(&insn, 0) as u64);
    let bits = b.call(Helper::Sse, [o, d, src])?;
    let st = concrete(b, bits);
    b.set_flags(st);
    Ok(())
}

/// CVTSI2SD/CVTSI2SS xmm, r/m32|r/m64.
fn int_to_float<B: Builder>(b: &mut B, op32: SseOp, op64: SseOp) -> R<()> {
    let insn = *b.insn();
    let size = op_size(&insn, 1);
    let v = read_op(b, 1, size)?;
    let o = b.c(if size == 8 { op64 } else { op32 } as u64);
    let d = b.c(xreg(&insn, 0) as u64);
    b.call(Helper::Sse, [o, d, v])?;
    Ok(())
}

/// CVTTSD2SI/CVTTSS2SI r32|r64, xmm/m64|m32.
fn float_to_int<B: Builder>(b: &mut B, op32: SseOp, op64: SseOp) -> R<()> {
    let insn = *b.insn();
    let op = if insn.op0_register().size() == 8 {
        op64
    } else {
        op32
    };
    let src = scalar_src(b, 1, op.src_size())?;
    let o = b.c(op as u64);
    let z = b.c(0);
    let v = b.call(Helper::Sse, [o, z, src])?;
    write_reg(b, insn.op0_register(), v);
    Ok(())
}

/// The [`Helper::Sse`] entry: `args` = [operation ([`SseOp`]), destination XMM number, source
/// (XMM number, [`SCRATCH_SRC`], or the integer for CVTSI2S*)]. Writes the destination XMM
/// register and MXCSR's flags in `cpu`; returns the integer result of CVTT*2SI or the RFLAGS
/// bits of a comparison (0 otherwise). An unmasked exception is raised with the destination
/// left unchanged.
pub fn sse_helper(cpu: &mut CpuState, args: [u64; 3]) -> u64 {
    use SseOp::*;
    let [op, dst, src] = args;
    let Some(op) = SseOp::from_id(op) else {
        unreachable!("SSE helper operation {op} is not generated by the semantics")
    };
    let dst = (dst & 15) as usize;
    let source = |cpu: &CpuState| {
        if src == SCRATCH_SRC {
            [cpu.scratch[2], cpu.scratch[3]]
        } else {
            cpu.xmm[(src & 15) as usize]
        }
    };
    let mx = cpu.mxcsr;
    let d = cpu.xmm[dst];
    // (new destination value if written, value returned, exception flags raised)
    let (result, ret, flags) = match op {
        Addsd | Subsd | Mulsd | Divsd | Addss | Subss | Mulss | Divss => {
            let (r, f) = host::arith(op, mx, d, source(cpu));
            (Some(r), 0, f)
        }
        Ucomisd | Comisd | Ucomiss | Comiss => {
            let (bits, f) = host::compare(op, mx, d, source(cpu));
            (None, bits, f)
        }
        Cvtsi2sd32 | Cvtsi2sd64 | Cvtsi2ss32 | Cvtsi2ss64 => {
            let (r, f) = host::from_int(op, mx, d, src);
            (Some(r), 0, f)
        }
        Cvttsd2si32 | Cvttsd2si64 | Cvttss2si32 | Cvttss2si64 => {
            let (v, f) = host::to_int(op, mx, source(cpu));
            (None, v, f)
        }
    };
    let unmasked = flags & !(mx >> 7) & 0x3f;
    if unmasked != 0 {
        const PRE: u32 = 0x1 | 0x2 | 0x4; // IE, DE, ZE
        let recorded = if unmasked & PRE != 0 {
            flags & PRE
        } else {
            flags
        };
        cpu.mxcsr |= recorded;
        let vector = if cpu.cr4 & CR4_OSXMMEXCPT != 0 {
            vector::XM
        } else {
            vector::UD
        };
        cpu.exception = ExceptionRecord {
            software: false,
            vector,
            has_error_code: false,
            error_code: 0,
            address: 0,
        };
        cpu.helper_status = crate::helpers::FAULT;
        return 0;
    }
    cpu.mxcsr |= flags;
    if let Some(r) = result {
        cpu.xmm[dst] = r;
    }
    ret
}

/// The host instructions behind [`sse_helper`].
mod host {
    use super::SseOp::{self, *};
    use std::arch::asm;
    use std::ptr::{addr_of, addr_of_mut};

    /// The host MXCSR for a guest operation: the guest's rounding control, FTZ and DAZ, all
    /// exceptions masked and no flag set.
    fn host_mxcsr(guest: u32) -> u32 {
        (guest & 0xe040) | 0x1f80
    }

    /// Run `$insn` (on xmm0 = destination, xmm1 = source; `{v}` = an integer input, `{r}` an
    /// integer output) under the guest's MXCSR; returns the exception flags it raised.
    macro_rules! under_mxcsr {
        ($mx:expr, $d:ident, $s:ident, [$($insn:literal),*] $(, $($op:tt)*)?) => {{
            let new = host_mxcsr($mx);
            let mut saved = 0u32;
            let mut after = 0u32;
            // SAFETY: the code reads and writes only the locals whose addresses it is given and
            // the xmm0/xmm1 it declares clobbered; it restores the host MXCSR it saved.
            unsafe {
                asm!(
                    "stmxcsr [{saved}]",
                    "ldmxcsr [{new}]",
                    "movdqu xmm0, [{d}]",
                    "movdqu xmm1, [{s}]",
                    $($insn,)*
                    "movdqu [{d}], xmm0",
                    "stmxcsr [{after}]",
                    "ldmxcsr [{saved}]",
                    saved = in(reg) addr_of_mut!(saved),
                    new = in(reg) addr_of!(new),
                    after = in(reg) addr_of_mut!(after),
                    d = in(reg) $d.as_mut_ptr(),
                    s = in(reg) $s.as_ptr(),
                    out("xmm0") _,
                    out("xmm1") _,
                    $($($op)*,)?
                    options(nostack),
                );
            }
            after & 0x3f
        }};
    }

    pub fn arith(op: SseOp, mx: u32, d: [u64; 2], s: [u64; 2]) -> ([u64; 2], u32) {
        let mut d = d;
        let f = match op {
            Addsd => under_mxcsr!(mx, d, s, ["addsd xmm0, xmm1"]),
            Subsd => under_mxcsr!(mx, d, s, ["subsd xmm0, xmm1"]),
            Mulsd => under_mxcsr!(mx, d, s, ["mulsd xmm0, xmm1"]),
            Divsd => under_mxcsr!(mx, d, s, ["divsd xmm0, xmm1"]),
            Addss => under_mxcsr!(mx, d, s, ["addss xmm0, xmm1"]),
            Subss => under_mxcsr!(mx, d, s, ["subss xmm0, xmm1"]),
            Mulss => under_mxcsr!(mx, d, s, ["mulss xmm0, xmm1"]),
            Divss => under_mxcsr!(mx, d, s, ["divss xmm0, xmm1"]),
            _ => unreachable!("{op:?} is not an arithmetic operation"),
        };
        (d, f)
    }

    /// Returns the RFLAGS bits (ZF, PF, CF) and the exception flags.
    pub fn compare(op: SseOp, mx: u32, d: [u64; 2], s: [u64; 2]) -> (u64, u32) {
        let mut d = d;
        let (mut z, mut p, mut c) = (0u8, 0u8, 0u8);
        let f = match op {
            Ucomisd => under_mxcsr!(mx, d, s, ["ucomisd xmm0, xmm1", "setz {z}", "setp {p}",
                "setc {c}"], z = out(reg_byte) z, p = out(reg_byte) p, c = out(reg_byte) c),
            Comisd => under_mxcsr!(mx, d, s, ["comisd xmm0, xmm1", "setz {z}", "setp {p}",
                "setc {c}"], z = out(reg_byte) z, p = out(reg_byte) p, c = out(reg_byte) c),
            Ucomiss => under_mxcsr!(mx, d, s, ["ucomiss xmm0, xmm1", "setz {z}", "setp {p}",
                "setc {c}"], z = out(reg_byte) z, p = out(reg_byte) p, c = out(reg_byte) c),
            Comiss => under_mxcsr!(mx, d, s, ["comiss xmm0, xmm1", "setz {z}", "setp {p}",
                "setc {c}"], z = out(reg_byte) z, p = out(reg_byte) p, c = out(reg_byte) c),
            _ => unreachable!("{op:?} is not a comparison"),
        };
        let bits = (z as u64) << 6 | (p as u64) << 2 | c as u64;
        (bits, f)
    }

    /// CVTSI2SD/CVTSI2SS of the integer `v` into the destination register `d`.
    pub fn from_int(op: SseOp, mx: u32, d: [u64; 2], v: u64) -> ([u64; 2], u32) {
        let mut d = d;
        let s = [0u64; 2];
        let f = match op {
            Cvtsi2sd32 => under_mxcsr!(mx, d, s, ["cvtsi2sd xmm0, {v:e}"], v = in(reg) v),
            Cvtsi2sd64 => under_mxcsr!(mx, d, s, ["cvtsi2sd xmm0, {v}"], v = in(reg) v),
            Cvtsi2ss32 => under_mxcsr!(mx, d, s, ["cvtsi2ss xmm0, {v:e}"], v = in(reg) v),
            Cvtsi2ss64 => under_mxcsr!(mx, d, s, ["cvtsi2ss xmm0, {v}"], v = in(reg) v),
            _ => unreachable!("{op:?} is not an integer conversion"),
        };
        (d, f)
    }

    /// CVTTSD2SI/CVTTSS2SI of the source's low element; the 32-bit forms zero-extend.
    pub fn to_int(op: SseOp, mx: u32, s: [u64; 2]) -> (u64, u32) {
        let mut d = [0u64; 2];
        let mut r = 0u64;
        let f = match op {
            Cvttsd2si32 => under_mxcsr!(mx, d, s, ["cvttsd2si {r:e}, xmm1"], r = out(reg) r),
            Cvttsd2si64 => under_mxcsr!(mx, d, s, ["cvttsd2si {r}, xmm1"], r = out(reg) r),
            Cvttss2si32 => under_mxcsr!(mx, d, s, ["cvttss2si {r:e}, xmm1"], r = out(reg) r),
            Cvttss2si64 => under_mxcsr!(mx, d, s, ["cvttss2si {r}, xmm1"], r = out(reg) r),
            _ => unreachable!("{op:?} is not a truncating conversion"),
        };
        let r = match op {
            Cvttsd2si32 | Cvttss2si32 => r & 0xffff_ffff,
            _ => r,
        };
        (r, f)
    }
}
