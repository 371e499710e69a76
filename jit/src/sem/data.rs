//! Data movement: MOV/MOVZX/MOVSX/MOVBE/LEA, XLAT, XCHG, BSWAP, CMOVcc, PUSH/POP, ENTER/LEAVE, the
//! RAX/RDX sign extensions, and CPUID.

use super::classify::is_gpr_form;
use super::flags::cond;
use super::*;
use iced_x86::{Mnemonic, OpKind};
use krr_runtime::gpr::{RAX, RBP, RDX, RSP};

#[inline(never)]
pub(super) fn mov<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if !is_gpr_form(insn) {
        // Control, debug and segment registers.
        return super::system::system(b, insn);
    }
    let size = op_size(insn, 0);
    let v = read_op(b, 1, size)?;
    write_op(b, 0, size, v)
}

#[inline(never)]
pub(super) fn movzx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let v = read_op(b, 1, op_size(insn, 1))?;
    write_op(b, 0, op_size(insn, 0), v)
}

#[inline(never)]
pub(super) fn movsx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let src_size = op_size(insn, 1);
    let v = read_op(b, 1, src_size)?;
    let v = b.sext(v, bits(src_size));
    let size = op_size(insn, 0);
    let v = b.zext(v, bits(size));
    write_op(b, 0, size, v)
}

#[inline(never)]
pub(super) fn movbe<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let v = read_op(b, 1, size)?;
    let v = byte_swap(b, v, size);
    write_op(b, 0, size, v)
}

/// XLAT: AL := the byte at rBX + zero-extended AL (a 256-byte table lookup). The sum wraps with
/// the address size; an FS or GS override adds its base; an SS override checks the stack's
/// canonical rule (#SS(0)).
#[inline(never)]
pub(super) fn xlat<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let m = b.mem_operand();
    let table = b.get_gpr(krr_runtime::gpr::RBX);
    let rax = b.get_gpr(krr_runtime::gpr::RAX);
    let index = b.zext(rax, 8);
    let a = b.add(table, index);
    let a = wrap_address_size(b, m, a);
    let a = segment_base(b, insn.memory_segment(), a);
    if m.flags & MemOperand::SS != 0 {
        stack_canonical(b, a)?;
    }
    let v = b.load(a, 1)?;
    write_reg(b, Register::AL, v);
    Ok(())
}

#[inline(never)]
pub(super) fn lea<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let a = offset_address(b);
    let size = op_size(insn, 0);
    let a = b.zext(a, bits(size));
    write_op(b, 0, size, a)
}

#[inline(never)]
pub(super) fn xchg<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let x = read_op(b, 0, size)?;
    let y = read_op(b, 1, size)?;
    // Memory first so a fault leaves the registers untouched.
    if insn.op0_kind() == OpKind::Memory {
        write_op(b, 0, size, y)?;
        write_op(b, 1, size, x)
    } else {
        write_op(b, 1, size, x)?;
        write_op(b, 0, size, y)
    }
}

#[inline(never)]
pub(super) fn bswap<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let v = read_op(b, 0, size)?;
    let v = if size == 2 {
        b.c(0)
    } else {
        byte_swap(b, v, size)
    };
    write_op(b, 0, size, v)
}

#[inline(never)]
pub(super) fn push_insn<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let size = if is_compat(insn) {
        // PUSH imm8 pushes the operand size, sign-extended.
        (-insn.stack_pointer_increment()) as u32
    } else if insn.op0_kind() == OpKind::Register || insn.op0_kind() == OpKind::Memory {
        size
    } else if insn.op0_kind() == OpKind::Immediate8to16 || insn.op0_kind() == OpKind::Immediate16 {
        2
    } else {
        8
    };
    if insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register() {
        return super::system::system(b, insn);
    }
    let v = match insn.op0_kind() {
        OpKind::Register | OpKind::Memory => read_op(b, 0, size)?,
        _ => b.c(truncate(insn.immediate(0), size)),
    };
    push(b, v, size)
}

#[inline(never)]
pub(super) fn pop_insn<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    if insn.op0_kind() == OpKind::Register && insn.op0_register().is_segment_register() {
        return super::system::system(b, insn);
    }
    let size = op_size(insn, 0);
    let (v, nsp) = pop(b, size)?;
    // The destination address is computed with the incremented RSP.
    b.set_gpr(RSP, nsp);
    write_op(b, 0, size, v)
}

#[inline(never)]
pub(super) fn cmovcc<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let size = op_size(insn, 0);
    let src = read_op(b, 1, size)?;
    let dst = read_op(b, 0, size)?;
    let c = cond(b, insn.condition_code());
    let v = b.select(c, src, dst);
    write_op(b, 0, size, v)
}

#[inline(never)]
pub(super) fn sign_extend_rax<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = match insn.mnemonic() {
        M::Cbw => 1,
        M::Cwde => 2,
        _ => 4,
    };
    let a = b.get_gpr(RAX);
    let v = b.sext(a, bits(size));
    write_gpr(b, RAX, 2 * size, v);
    Ok(())
}

#[inline(never)]
pub(super) fn sign_extend_into_rdx<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    use Mnemonic as M;
    let size = match insn.mnemonic() {
        M::Cwd => 2,
        M::Cdq => 4,
        _ => 8,
    };
    let a = b.get_gpr(RAX);
    let a = b.sext(a, bits(size));
    let k = b.c(63);
    let v = b.sar(a, k);
    write_gpr(b, RDX, size, v);
    Ok(())
}

#[inline(never)]
pub(super) fn leave<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    // LEAVEW pops 2 bytes into BP only, LEAVED 4 into EBP.
    let size = match insn.code() {
        iced_x86::Code::Leavew => 2,
        iced_x86::Code::Leaved => 4,
        _ => 8,
    };
    // RSP := RBP (ESP := EBP or SP := BP with a compatibility-mode stack), then the pop.
    let sp = b.get_gpr(RSP);
    let bp = b.get_gpr(RBP);
    let a = stack_address(b, bp)?;
    let v = b.load(a, size)?;
    let k = b.c(size as u64);
    let nsp = b.add(bp, k);
    let nsp = stack_pointer(b, sp, nsp);
    b.set_gpr(RSP, nsp);
    write_gpr(b, RBP, size, v);
    Ok(())
}

#[inline(never)]
pub(super) fn cpuid<B: Builder>(b: &mut B) -> R<()> {
    let z = b.c(0);
    b.call(Helper::Cpuid, [z, z, z])?;
    Ok(())
}

pub(super) fn byte_swap<B: Builder>(b: &mut B, v: B::V, size: u32) -> B::V {
    let s = b.bswap(v);
    if size == 8 {
        s
    } else {
        let k = b.c(64 - bits(size) as u64);
        b.shr(s, k)
    }
}

#[inline(never)]
pub(super) fn enter<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    let alloc = insn.immediate(0) & 0xffff;
    let level = insn.immediate(1) & 31;
    // ENTERW pushes 2-byte frame pointers and writes BP only, ENTERD 4-byte ones into EBP.
    let size: u32 = match insn.code() {
        iced_x86::Code::Enterw_imm16_imm8 => 2,
        iced_x86::Code::Enterd_imm16_imm8 => 4,
        _ => 8,
    };
    let rbp = b.get_gpr(RBP);
    let sp0 = b.get_gpr(RSP);
    let step = b.c(size as u64);
    // All stores go below the original RSP; registers change only after they all succeeded.
    let mut sp = b.sub(sp0, step);
    let a = stack_address(b, sp)?;
    b.store(a, rbp, size)?;
    // The frame pointer is the stack's offset (ESP/SP-wide with a compatibility-mode stack).
    let frame = stack_pointer(b, sp0, sp);
    if level > 0 {
        let mut bp = rbp;
        for _ in 1..level {
            bp = b.sub(bp, step);
            let a = stack_address(b, bp)?;
            let v = b.load(a, size)?;
            sp = b.sub(sp, step);
            let a = stack_address(b, sp)?;
            b.store(a, v, size)?;
        }
        sp = b.sub(sp, step);
        let a = stack_address(b, sp)?;
        b.store(a, frame, size)?;
    }
    let a = b.c(alloc);
    let sp = b.sub(sp, a);
    // A write at the final stack pointer must be possible too (SDM ENTER: "#PF ... if a write
    // using the final value of the stack pointer ... would cause a page fault").
    let a = stack_address(b, sp)?;
    b.probe_write(a, size)?;
    write_gpr(b, RBP, size, frame);
    let sp = stack_pointer(b, sp0, sp);
    b.set_gpr(RSP, sp);
    Ok(())
}
