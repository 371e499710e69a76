//! Control transfers: relative branches, LOOPcc and JrCXZ with steered counts, indirect
//! JMP/CALL and RET with their target in a register, memory or on the stack; each followed by
//! [`FILLER`].

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::forms::STACK_USERS;
use super::insn::{accesses_ok, encode_checked};
use super::memory::ensure_stack;
use super::operands::gen_operands;
use super::tuning::builtin_hook;
use super::values::random_gpr;
use iced_x86::{
    Code, Decoder, DecoderOptions, Instruction, Mnemonic as M, OpCodeOperandKind as K, OpKind,
    Register,
};

/// `lea r11, [r11+1]`: the filler placed after control transfers; it does not touch the
/// flags, so whether it ran (branch not taken) shows in R11 only.
const FILLER: [u8; 4] = [0x4d, 0x8d, 0x5b, 0x01];

/// The code for a control-transfer form: the transfer followed by [`FILLER`]; targets are the
/// end of the code (the final INT3), the filler, or (rarely) unmapped/non-canonical addresses.
/// LOOPcc sometimes runs backwards over the filler a few times.
pub(super) fn gen_control(
    code: Code,
    ctx: &mut Ctx,
    rng: &mut Rng,
    code_addr: u64,
) -> Option<Vec<u8>> {
    let mn = code.mnemonic();
    let info = code.op_code();
    if STACK_USERS.contains(&mn) {
        ensure_stack(ctx, rng);
    }
    let is_rel = matches!(info.op_kind(0), K::br64_1 | K::br64_4);
    let ecx_only = info.address_size() == 32;
    let set_count = |ctx: &mut Ctx, rng: &mut Rng, v: u64| {
        let full = if ecx_only {
            (rng.next_u64() << 32) | (v & 0xffff_ffff)
        } else {
            v
        };
        ctx.lock(Register::RCX, full);
    };
    if is_rel {
        let backward = matches!(mn, M::Loop | M::Loope | M::Loopne) && rng.chance(1, 3);
        if backward {
            let n = 1 + rng.below(12);
            set_count(ctx, rng, n);
            let ins = Instruction::with_branch(code, code_addr).ok()?;
            let bytes = encode_checked(&ins, code_addr + FILLER.len() as u64)?;
            return Some([&FILLER[..], &bytes].concat());
        }
        match mn {
            M::Jrcxz | M::Jecxz => {
                let v = if rng.chance(1, 2) { 0 } else { random_gpr(rng) };
                set_count(ctx, rng, v);
            }
            M::Loop | M::Loope | M::Loopne => {
                let r = random_gpr(rng);
                let v = rng.pick(&[0, 1, 2, r]);
                set_count(ctx, rng, v);
            }
            _ => {}
        }
        // Branch lengths do not depend on the target: encode once to learn it.
        let probe = Instruction::with_branch(code, code_addr + 2).ok()?;
        let len = encode_checked(&probe, code_addr)?.len() as u64;
        let filler = code_addr + len;
        let end = filler + FILLER.len() as u64;
        let target = if rng.chance(4, 5) { end } else { filler };
        let ins = Instruction::with_branch(code, target).ok()?;
        let bytes = encode_checked(&ins, code_addr)?;
        return Some([&bytes[..], &FILLER[..]].concat());
    }

    // Indirect JMP/CALL and RET: the target lives in a register, in memory or on the stack.
    let mut ins = if mn == M::Ret {
        let mut ins = Instruction::default();
        ins.set_code(code);
        if info.op_count() == 1 {
            ins.set_op0_kind(OpKind::Immediate16);
            let r = rng.below(0x100) as u16;
            ins.set_immediate16(rng.pick(&[0, 8, 16, r, 0xfff8]));
        }
        ins
    } else {
        gen_operands(code, ctx, rng, code_addr)?
    };
    let probe = encode_checked(&ins, code_addr)?;
    let filler = code_addr + probe.len() as u64;
    let end = filler + FILLER.len() as u64;
    let target = match rng.below(24) {
        0 if ctx.fault_pending => 0x2480_0000 + rng.below(0x1000),
        1 if ctx.fault_pending => 0x0000_8000_0000_0000 + rng.below(1 << 40),
        2..=17 => end,
        _ => filler,
    };
    if mn == M::Ret {
        let rsp = ctx.reg(Register::RSP);
        if !ctx.write_mem(rsp, &target.to_le_bytes()) {
            // RSP was deliberately placed at the edge of the stack: the pop faults.
            if !ctx.cur_fault {
                return None;
            }
        }
    } else if ins.op_kind(0) == OpKind::Register {
        if !ctx.set_reg(ins.op_register(0), target) {
            return None;
        }
    } else if !ctx.write_mem(ctx.mem_addr?, &target.to_le_bytes()) && !ctx.cur_fault {
        // (With a deliberately unmapped operand the load faults instead.)
        return None;
    }
    builtin_hook(ctx, &mut ins, rng);
    let bytes = encode_checked(&ins, code_addr)?;
    let decoded = Decoder::with_ip(64, &bytes, code_addr, DecoderOptions::NONE).decode();
    if !ctx.cur_fault && !accesses_ok(ctx, &decoded) {
        return None;
    }
    Some([&bytes[..], &FILLER[..]].concat())
}
