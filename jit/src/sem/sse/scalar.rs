//! Scalar floating point: the semantics store the operands where [`Helper::Sse`] finds them and
//! call it; the helper runs the host instruction.

use super::*;
use crate::sem::flags::concrete;

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

    pub fn from_id(v: u64) -> Option<SseOp> {
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
pub(super) fn scalar_src<B: Builder>(b: &mut B, i: u32, size: u32) -> R<B::V> {
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
pub(super) fn scalar_arith<B: Builder>(b: &mut B, op: SseOp) -> R<()> {
    let insn = *b.insn();
    let src = scalar_src(b, 1, op.src_size())?;
    let o = b.c(op as u64);
    let d = b.c(xreg(&insn, 0) as u64);
    b.call(Helper::Sse, [o, d, src])?;
    Ok(())
}

/// (U)COMISS/(U)COMISD: ZF, PF, CF from the comparison, OF, SF, AF cleared.
pub(super) fn compare<B: Builder>(b: &mut B, op: SseOp) -> R<()> {
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
pub(super) fn int_to_float<B: Builder>(b: &mut B, op32: SseOp, op64: SseOp) -> R<()> {
    let insn = *b.insn();
    let size = op_size(&insn, 1);
    let v = read_op(b, 1, size)?;
    let o = b.c(if size == 8 { op64 } else { op32 } as u64);
    let d = b.c(xreg(&insn, 0) as u64);
    b.call(Helper::Sse, [o, d, v])?;
    Ok(())
}

/// CVTTSD2SI/CVTTSS2SI r32|r64, xmm/m64|m32.
pub(super) fn float_to_int<B: Builder>(b: &mut B, op32: SseOp, op64: SseOp) -> R<()> {
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
