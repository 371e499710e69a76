//! String instructions (MOVS, STOS, LODS, CMPS, SCAS) and their REP forms.
//!
//! One iteration is ordinary semantics. A REP-prefixed instruction counts as one instruction
//! however many iterations it runs (KRR's definition); its loop is the builder's
//! [`Builder::repeat_while`] (a compiler may instead hand the whole instruction over, see
//! [`super::is_rep_string`]). A
//! fault in iteration k leaves RCX/RSI/RDI as they were at the start of that iteration, as
//! hardware does, because each completed iteration is committed.

use super::flags::{cond, FlagKind, FlagState};
use super::*;
use iced_x86::{ConditionCode, Mnemonic as M, OpKind};
use krr_runtime::gpr::{RAX, RCX, RDI, RSI};

fn element_size(m: M) -> u32 {
    match m {
        M::Movsb | M::Stosb | M::Lodsb | M::Cmpsb | M::Scasb => 1,
        M::Movsw | M::Stosw | M::Lodsw | M::Cmpsw | M::Scasw => 2,
        M::Movsd | M::Stosd | M::Lodsd | M::Cmpsd | M::Scasd => 4,
        _ => 8,
    }
}

/// 16-bit addressing (compatibility mode with 0x67, or 16-bit code): SI/DI/CX.
fn addr16(insn: &Instruction) -> bool {
    (0..insn.op_count()).any(|i| {
        matches!(
            insn.op_kind(i),
            OpKind::MemorySegSI | OpKind::MemoryESDI | OpKind::MemorySegDI
        )
    })
}

/// 32-bit addressing (0x67 prefix in 64-bit mode, the default in compatibility mode):
/// RSI/RDI/RCX are used as ESI/EDI/ECX.
fn addr32(insn: &Instruction) -> bool {
    (0..insn.op_count()).any(|i| {
        matches!(
            insn.op_kind(i),
            OpKind::MemorySegESI | OpKind::MemoryESEDI | OpKind::MemorySegEDI
        )
    })
}

/// What every iteration of the instruction needs, decoded once.
#[derive(Clone, Copy)]
struct StringOp<V> {
    mnemonic: M,
    size: u32,
    a32: bool,
    src_seg: Register,
    /// +size or -size by RFLAGS.DF (which the iterations do not change).
    delta: V,
}

impl<V: Copy> StringOp<V> {
    fn new<B: Builder<V = V>>(b: &mut B, insn: &Instruction) -> Self {
        let mnemonic = insn.mnemonic();
        let size = element_size(mnemonic);
        let df = b.load_state(krr_runtime::offsets::RFLAGS);
        let m = b.c(krr_runtime::rflags::DF);
        let df = b.and(df, m);
        let zero = b.c(0);
        let down = b.icmp(Cmp::Ne, df, zero);
        let up_v = b.c(size as u64);
        let down_v = b.c((size as u64).wrapping_neg());
        let delta = b.select(down, down_v, up_v);
        StringOp {
            mnemonic,
            size,
            a32: addr32(insn),
            src_seg: insn.memory_segment(),
            delta,
        }
    }
}

/// The destination's linear address: RDI (EDI), plus ES's base in compatibility mode.
fn destination<B: Builder>(b: &mut B, a32: bool) -> B::V {
    let d = index(b, RDI, a32);
    segment_base(b, Register::ES, d)
}

fn index<B: Builder>(b: &mut B, r: usize, a32: bool) -> B::V {
    let v = b.get_gpr(r);
    if a32 {
        b.zext(v, 32)
    } else {
        v
    }
}

fn advance<B: Builder>(b: &mut B, r: usize, op: &StringOp<B::V>) {
    let v = b.get_gpr(r);
    let n = b.add(v, op.delta);
    let n = if op.a32 { b.zext(n, 32) } else { n };
    b.set_gpr(r, n);
}

/// One iteration, without the REP loop.
#[inline(always)]
fn iteration<B: Builder>(b: &mut B, op: &StringOp<B::V>) -> R<()> {
    let (size, a32, src_seg) = (op.size, op.a32, op.src_seg);
    match op.mnemonic {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => {
            let s = index(b, RSI, a32);
            let s = segment_base(b, src_seg, s);
            let v = b.load(s, size)?;
            let d = destination(b, a32);
            b.store(d, v, size)?;
            advance(b, RSI, op);
            advance(b, RDI, op);
        }
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => {
            let v = b.get_gpr(RAX);
            let d = destination(b, a32);
            b.store(d, v, size)?;
            advance(b, RDI, op);
        }
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => {
            let s = index(b, RSI, a32);
            let s = segment_base(b, src_seg, s);
            let v = b.load(s, size)?;
            write_gpr(b, RAX, size, v);
            advance(b, RSI, op);
        }
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => {
            let s = index(b, RSI, a32);
            let s = segment_base(b, src_seg, s);
            let x = b.load(s, size)?;
            let d = destination(b, a32);
            let y = b.load(d, size)?;
            set_sub_flags(b, x, y, size);
            advance(b, RSI, op);
            advance(b, RDI, op);
        }
        _ => {
            let a = b.get_gpr(RAX);
            let x = b.zext(a, bits(size));
            let d = destination(b, a32);
            let y = b.load(d, size)?;
            set_sub_flags(b, x, y, size);
            advance(b, RDI, op);
        }
    }
    Ok(())
}

fn set_sub_flags<B: Builder>(b: &mut B, x: B::V, y: B::V, size: u32) {
    let r = b.sub(x, y);
    let r = b.zext(r, bits(size));
    let zero = b.c(0);
    b.set_flags(FlagState::new(FlagKind::Sub, size, r, x, y, zero));
}

pub fn execute<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    if addr16(&insn) {
        // SI/DI/CX wrap at 64 KiB and leave the registers' upper bits: not modelled.
        return Err(b.unimplemented());
    }
    let op = StringOp::new(b, &insn);
    if !(insn.has_rep_prefix() || insn.has_repne_prefix()) {
        return iteration(b, &op);
    }
    let a32 = op.a32;
    let compares = matches!(
        insn.mnemonic(),
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq | M::Scasb | M::Scasw | M::Scasd | M::Scasq
    );
    // REPE continues while equal, REPNE while not equal.
    let want = if insn.has_repe_prefix() {
        ConditionCode::e
    } else {
        ConditionCode::ne
    };
    // The bulk path adds no DS/ES base and does not wrap at 4 GiB: 64-bit mode only.
    let bulk = (!is_compat(&insn)
        && matches!(
            insn.mnemonic(),
            M::Movsb | M::Movsw | M::Movsd | M::Movsq | M::Stosb | M::Stosw | M::Stosd | M::Stosq
        ))
    .then_some(BulkString {
        store_only: matches!(insn.mnemonic(), M::Stosb | M::Stosw | M::Stosd | M::Stosq),
        size: op.size,
        a32,
        src_seg: op.src_seg,
    });
    let mut first = true;
    b.repeat_while(
        |b| {
            let count = index(b, RCX, a32);
            let zero = b.c(0);
            b.icmp(Cmp::Ne, count, zero)
        },
        |b| {
            b.rep_pause_point(std::mem::take(&mut first), a32)?;
            if let Some(bulk) = bulk {
                b.bulk_string(bulk);
            }
            iteration(b, &op)?;
            let count = index(b, RCX, a32);
            let one = b.c(1);
            let n = b.sub(count, one);
            let n = if a32 { b.zext(n, 32) } else { n };
            b.set_gpr(RCX, n);
            b.commit();
            Ok(if compares {
                cond(b, want)
            } else {
                b.bconst(true)
            })
        },
    )
}
