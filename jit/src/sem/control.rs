//! Near control transfers: Jcc, JMP, CALL, RET, LOOP/LOOPcc and JRCXZ.

use super::flags::{self, cond};
use super::*;
use iced_x86::{Mnemonic, OpKind};
use krr_runtime::gpr::{RCX, RSP};

#[inline(never)]
pub(super) fn jcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let c = cond(b, insn.condition_code());
    b.flow(
        Flow::Branch {
            taken: insn.near_branch_target(),
            not_taken: insn.next_ip(),
        },
        Some(c),
    );
    Ok(())
}

#[inline(never)]
pub(super) fn jmp<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if is_near_branch(insn) {
        b.flow(Flow::Direct(insn.near_branch_target()), None);
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        let t = read_op(b, 0, 8)?;
        branch_target_canonical(b, t)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
pub(super) fn call<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let ret = b.c(insn.next_ip());
    if is_near_branch(insn) {
        push(b, ret, 8)?;
        b.flow(Flow::Direct(insn.near_branch_target()), None);
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        let t = read_op(b, 0, 8)?;
        branch_target_canonical(b, t)?;
        push(b, ret, 8)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
pub(super) fn ret<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let (t, nsp) = pop(b, 8)?;
    branch_target_canonical(b, t)?;
    let extra = if insn.op_count() == 1 {
        insn.immediate(0)
    } else {
        0
    };
    let nsp = if extra != 0 {
        let k = b.c(extra);
        b.add(nsp, k)
    } else {
        nsp
    };
    b.set_gpr(RSP, nsp);
    b.flow(Flow::Indirect(t), None);
    Ok(())
}

#[inline(never)]
pub(super) fn loop_jrcxz<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    // The 0x67 forms count in ECX (and the write zero-extends into RCX).
    let wide = !matches!(
        insn.code(),
        iced_x86::Code::Loop_rel8_64_ECX
            | iced_x86::Code::Loope_rel8_64_ECX
            | iced_x86::Code::Loopne_rel8_64_ECX
            | iced_x86::Code::Jecxz_rel8_64
    );
    let width = if wide { 64 } else { 32 };
    let rcx = b.get_gpr(RCX);
    let zero = b.c(0);
    let c = if matches!(insn.mnemonic(), M::Jrcxz | M::Jecxz) {
        let v = b.zext(rcx, width);
        b.icmp(Cmp::Eq, v, zero)
    } else {
        let one = b.c(1);
        let n = b.sub(rcx, one);
        let n = b.zext(n, width);
        b.set_gpr(RCX, n);
        let nz = b.icmp(Cmp::Ne, n, zero);
        match insn.mnemonic() {
            M::Loope => {
                let f = b.flags();
                let z = flags::zf(b, &f);
                b.band(nz, z)
            }
            M::Loopne => {
                let f = b.flags();
                let z = flags::zf(b, &f);
                let nzf = b.bnot(z);
                b.band(nz, nzf)
            }
            _ => nz,
        }
    };
    b.flow(
        Flow::Branch {
            taken: insn.near_branch_target(),
            not_taken: insn.next_ip(),
        },
        Some(c),
    );
    Ok(())
}

pub(super) fn is_near_branch(insn: &Instruction) -> bool {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}
