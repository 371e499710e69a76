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
        let t = read_op(b, 0, near_size(insn))?;
        branch_target_canonical(b, t)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
pub(super) fn call<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = near_size(insn);
    let ret = b.c(truncate(insn.next_ip(), size));
    if is_near_branch(insn) {
        push(b, ret, size)?;
        b.flow(Flow::Direct(insn.near_branch_target()), None);
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        let t = read_op(b, 0, size)?;
        branch_target_canonical(b, t)?;
        push(b, ret, size)?;
        b.flow(Flow::Indirect(t), None);
    } else {
        return Err(b.unimplemented());
    }
    Ok(())
}

#[inline(never)]
pub(super) fn ret<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let (t, nsp) = pop(b, near_size(insn))?;
    branch_target_canonical(b, t)?;
    let extra = if insn.op_count() == 1 {
        insn.immediate(0)
    } else {
        0
    };
    let nsp = if extra != 0 {
        let k = b.c(extra);
        let moved = b.add(nsp, k);
        stack_pointer(b, nsp, moved)
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
    // The counter follows the address size: the 0x67 forms count in ECX in 64-bit mode (and
    // the write zero-extends into RCX), in CX or ECX in compatibility mode.
    use iced_x86::Code as C;
    let width = match insn.code() {
        C::Loop_rel8_64_ECX
        | C::Loope_rel8_64_ECX
        | C::Loopne_rel8_64_ECX
        | C::Jecxz_rel8_64
        | C::Loop_rel8_16_ECX
        | C::Loop_rel8_32_ECX
        | C::Loope_rel8_16_ECX
        | C::Loope_rel8_32_ECX
        | C::Loopne_rel8_16_ECX
        | C::Loopne_rel8_32_ECX
        | C::Jecxz_rel8_16
        | C::Jecxz_rel8_32 => 32,
        C::Loop_rel8_16_CX
        | C::Loop_rel8_32_CX
        | C::Loope_rel8_16_CX
        | C::Loope_rel8_32_CX
        | C::Loopne_rel8_16_CX
        | C::Loopne_rel8_32_CX
        | C::Jcxz_rel8_16
        | C::Jcxz_rel8_32 => 16,
        _ => 64,
    };
    let rcx = b.get_gpr(RCX);
    let zero = b.c(0);
    let c = if matches!(insn.mnemonic(), M::Jrcxz | M::Jecxz | M::Jcxz) {
        let v = b.zext(rcx, width);
        b.icmp(Cmp::Eq, v, zero)
    } else {
        let one = b.c(1);
        let n = b.sub(rcx, one);
        let n = b.zext(n, width);
        write_gpr(b, RCX, width / 8, n);
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

/// The operand size of a near JMP/CALL/RET: 8 in 64-bit mode (as before: the 0x66 forms are
/// taken as 64-bit there), 4 or 2 in compatibility mode.
fn near_size(insn: &Instruction) -> u32 {
    use iced_x86::Code as C;
    if !is_compat(insn) {
        return 8;
    }
    match insn.code() {
        C::Jmp_rm16 | C::Call_rm16 | C::Call_rel16 | C::Retnw | C::Retnw_imm16 => 2,
        _ => 4,
    }
}

pub(super) fn is_near_branch(insn: &Instruction) -> bool {
    matches!(
        insn.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}
