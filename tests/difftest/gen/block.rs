//! Multi-instruction blocks: straight-line sequences of block-eligible forms sharing one
//! initial state, with no instruction depending on a pointer register or flag that an earlier
//! one changed or left undefined.

use super::super::compare::{flag_effect, x86_flags};
use super::super::rng::Rng;
use super::cases::{pick_code_addr, MAX_ATTEMPTS};
use super::ctx::{Ctx, GenOptions};
use super::forms::{block_eligible, is_string};
use super::insn::gen_insn;
use super::regs::{gpr_bit, RSP_BIT};
use iced_x86::{
    Code, Instruction, InstructionInfoFactory, Mnemonic as M, OpAccess, OpKind, Register,
};
use krr_jit::snippet::{Snippet, UserState};

/// A block of `len` random instructions drawn from `pool` (forms that cannot appear in blocks
/// are skipped, see [`block_eligible`]), straight-line, sharing one initial state. Registers
/// used to address memory are never written by an earlier instruction of the block, and no
/// instruction reads a flag an earlier one left undefined.
pub fn block_case(
    pool: &[Code],
    rng: &mut Rng,
    len: usize,
    opts: &GenOptions,
) -> (Snippet, UserState) {
    let eligible: Vec<Code> = pool
        .iter()
        .copied()
        .filter(|c| block_eligible(*c))
        .collect();
    assert!(!eligible.is_empty(), "no block-eligible forms in the pool");
    'outer: for _ in 0..MAX_ATTEMPTS {
        let mut ctx = Ctx::new(rng, true);
        ctx.fault_pending = rng.below(opts.fault_one_in.max(1)) == 0;
        let code_addr = pick_code_addr(rng);
        let mut code = Vec::new();
        let mut poisoned = 0u64;
        for _ in 0..len {
            let mut placed = false;
            for _ in 0..40 {
                let candidate = rng.pick(&eligible);
                let saved = ctx.clone();
                let ip = code_addr + code.len() as u64;
                let Some((bytes, ins)) = gen_insn(candidate, &mut ctx, rng, ip, opts) else {
                    ctx = saved;
                    continue;
                };
                let effect = flag_effect(&ins, None);
                let reads = x86_flags(ins.rflags_read());
                if reads & poisoned != 0 || pointer_regs(&ins) & saved.clobbered != 0 {
                    ctx = saved;
                    continue;
                }
                poisoned = (poisoned & !effect.defined) | effect.undefined;
                ctx.clobbered |= clobbers(&ins);
                ctx.rsp_delta += ins.stack_pointer_increment() as i64;
                code.extend_from_slice(&bytes);
                placed = true;
                break;
            }
            if !placed {
                continue 'outer;
            }
        }
        return ctx.into_snippet(code_addr, code);
    }
    panic!("could not generate a block from the pool");
}

/// Registers the instruction uses as pointers or counts (memory bases and indexes, the stack
/// pointer, string registers) or whose values its generation tuned (DIV's dividend).
fn pointer_regs(ins: &Instruction) -> u16 {
    let mut info = InstructionInfoFactory::new();
    let mut bits = 0;
    for m in info.info(ins).used_memory() {
        if m.access() != OpAccess::NoMemAccess {
            bits |= gpr_bit(m.base()) | gpr_bit(m.index());
        }
    }
    if is_string(ins.code()) && (ins.has_rep_prefix() || ins.has_repne_prefix()) {
        bits |= gpr_bit(Register::RCX);
    }
    if matches!(ins.mnemonic(), M::Div | M::Idiv) {
        bits |= gpr_bit(Register::RAX) | gpr_bit(Register::RDX);
    }
    bits
}

/// GPRs the instruction writes, except the bounded pointer updates that keep later pointer
/// uses valid (RSP by stack operations, RSI/RDI/RCX by string operations).
fn clobbers(ins: &Instruction) -> u16 {
    let mut info = InstructionInfoFactory::new();
    let mut explicit = 0u16;
    for i in 0..ins.op_count() {
        if ins.op_kind(i) == OpKind::Register {
            explicit |= gpr_bit(ins.op_register(i));
        }
    }
    let mut bits = 0;
    for r in info.info(ins).used_registers() {
        if matches!(
            r.access(),
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        ) {
            bits |= gpr_bit(r.register());
        }
    }
    if explicit & RSP_BIT == 0 {
        bits &= !RSP_BIT;
    }
    if is_string(ins.code()) {
        bits &= !(gpr_bit(Register::RSI) | gpr_bit(Register::RDI) | gpr_bit(Register::RCX));
    }
    bits
}
