//! The operands of a non-string instruction: registers by operand kind, immediates, the
//! explicit memory operand (placed through [`super::memory`]), a LOCK prefix, and the stack
//! and frame pointers of the forms that use them.

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::forms::{is_bt_mem_reg, LOCKABLE, STACK_USERS};
use super::imm::{gen_imm, imm_op_kind};
use super::layout::{DATA0, STACK};
use super::memory::{ensure_stack, plan_memory, random_address};
use super::regs::{gpr_bit, gpr_of_size, xmm};
use super::values::random_sized;
use iced_x86::{
    Code, Instruction, InstructionInfoFactory, Mnemonic as M, OpCodeOperandKind as K, OpKind,
    Register,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum RegClass {
    G8,
    G16,
    G32,
    G64,
    Xmm,
    Ymm,
}

fn reg_class(k: K) -> Option<RegClass> {
    Some(match k {
        K::r8_or_mem | K::r8_reg | K::r8_opcode => RegClass::G8,
        K::r16_or_mem | K::r16_reg | K::r16_rm | K::r16_opcode => RegClass::G16,
        K::r32_or_mem | K::r32_reg | K::r32_rm | K::r32_opcode | K::r32_vvvv => RegClass::G32,
        K::r64_or_mem | K::r64_reg | K::r64_rm | K::r64_opcode | K::r64_vvvv => RegClass::G64,
        K::xmm_or_mem | K::xmm_reg | K::xmm_rm | K::xmm_vvvv | K::xmm_is4 => RegClass::Xmm,
        K::ymm_or_mem | K::ymm_reg | K::ymm_rm | K::ymm_vvvv | K::ymm_is4 => RegClass::Ymm,
        _ => return None,
    })
}

fn pick_reg(class: RegClass, rng: &mut Rng) -> Register {
    let i = rng.below(16) as usize;
    match class {
        RegClass::G8 if rng.chance(1, 5) => {
            rng.pick(&[Register::AH, Register::CH, Register::DH, Register::BH])
        }
        RegClass::G8 => gpr_of_size(i, 1),
        RegClass::G16 => gpr_of_size(i, 2),
        RegClass::G32 => gpr_of_size(i, 4),
        RegClass::G64 => gpr_of_size(i, 8),
        RegClass::Xmm => xmm(i),
        RegClass::Ymm => Register::try_from(Register::YMM0 as usize + i).expect("register"),
    }
}

fn fixed_reg(k: K) -> Option<Register> {
    Some(match k {
        K::al => Register::AL,
        K::cl => Register::CL,
        K::ax => Register::AX,
        K::eax => Register::EAX,
        K::rax => Register::RAX,
        _ => return None,
    })
}

/// Required alignment of the explicit memory operand (misalignment faults natively).
fn required_alignment(code: Code, size: u64) -> u64 {
    let mn = code.mnemonic();
    if super::vex::is_vex_vector(code) {
        return super::vex::vex_alignment(code, size);
    }
    if mn == M::Cmpxchg16b {
        return 16;
    }
    let is_sse = code
        .op_code()
        .op_kinds()
        .iter()
        .any(|k| matches!(k, K::xmm_reg | K::xmm_or_mem | K::xmm_rm));
    if is_sse && size == 16 && !matches!(mn, M::Movups | M::Movdqu) {
        return 16;
    }
    1
}

/// Builds the operands of a non-string, non-control instruction.
pub(super) fn gen_operands(
    code: Code,
    ctx: &mut Ctx,
    rng: &mut Rng,
    ip: u64,
) -> Option<Instruction> {
    let info = code.op_code();
    let mn = code.mnemonic();
    let mut ins = Instruction::default();
    ins.set_code(code);
    let mut mem_op: Option<(u32, K)> = None;
    let mut fixed = 0u16;
    let mut prev_was_imm = false;
    for i in 0..info.op_count() {
        let k = info.op_kind(i);
        let as_mem = match k {
            K::mem | K::mem_offs => true,
            K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::xmm_or_mem
            | K::ymm_or_mem => rng.chance(1, 2),
            _ => false,
        };
        let is_imm = imm_op_kind(k, prev_was_imm).is_some();
        if as_mem {
            ins.set_op_kind(i, OpKind::Memory);
            mem_op = Some((i, k));
        } else if let Some(class) = reg_class(k) {
            ins.set_op_kind(i, OpKind::Register);
            ins.set_op_register(i, pick_reg(class, rng));
        } else if let Some(reg) = fixed_reg(k) {
            ins.set_op_kind(i, OpKind::Register);
            ins.set_op_register(i, reg);
            fixed |= gpr_bit(reg);
        } else if let Some(kind) = imm_op_kind(k, prev_was_imm) {
            ins.set_op_kind(i, kind);
            ins.set_immediate_u64(i, gen_imm(code, i, k, rng));
        } else {
            return None;
        }
        prev_was_imm = is_imm;
    }
    if LOCKABLE.contains(&mn) && matches!(mem_op, Some((0, _))) && rng.chance(1, 2) {
        ins.set_has_lock_prefix(true);
    }
    if STACK_USERS.contains(&mn) {
        ensure_stack(ctx, rng);
    }
    match mn {
        // RBP: the frame whose display ENTER copies (level > 1 reads [rbp-8], ...).
        M::Enter if !ctx.is_locked(Register::RBP) => {
            ctx.lock(Register::RBP, STACK + 0x1000 + rng.below(0x100) * 8);
        }
        M::Leave if !ctx.is_locked(Register::RBP) => {
            let off = 0x200 + rng.below(0x1c00);
            ctx.lock(
                Register::RBP,
                STACK + if rng.chance(1, 10) { off } else { off & !7 },
            );
        }
        _ => {}
    }
    if let Some((_, kind)) = mem_op {
        if matches!(mn, M::Lea | M::Nop) {
            random_address(&mut ins, rng, ip);
        } else {
            let mut size = ins.memory_size().size() as u64;
            if code == Code::Movsxd_r16_rm16 {
                // This CPU (AMD) reads 32 bits for MOVSXD r16, m16 (seen as a page fault one
                // byte further than iced-x86's 16 bits), so place it as a 32-bit access and
                // plant no deliberate faults on it, which would straddle differently.
                size = 4;
                ctx.fault_pending = false;
            }
            let align = required_alignment(code, size);
            let mut avoid = fixed | ctx.clobbered;
            // Registers the instruction uses besides its address: always avoid the implicit
            // ones (computed with a register-free placeholder address); explicit register
            // operands may double as the base now and then.
            let mut probe = ins;
            probe.set_memory_base(Register::None);
            probe.set_memory_index(Register::None);
            probe.set_memory_displacement64(DATA0);
            probe.set_memory_displ_size(8);
            let mut explicit = 0u16;
            for i in 0..ins.op_count() {
                if ins.op_kind(i) == OpKind::Register {
                    explicit |= gpr_bit(ins.op_register(i));
                }
            }
            let mut used = 0u16;
            for r in InstructionInfoFactory::new().info(&probe).used_registers() {
                used |= gpr_bit(r.register());
            }
            avoid |= if rng.chance(1, 3) {
                used & !explicit
            } else {
                used
            };
            if is_bt_mem_reg(&ins) {
                avoid |= gpr_bit(ins.op_register(1));
                ctx.margin = 40;
            }
            let plan = plan_memory(
                ctx,
                rng,
                size,
                align,
                avoid & !ctx.locked_usable(),
                kind == K::mem_offs,
            )?;
            plan.apply(&mut ins);
            ctx.mem_addr = Some(plan.addr);
            if !ctx.cur_fault && size <= 8 && rng.chance(1, 2) {
                let v = random_sized(rng, size);
                ctx.write_mem(plan.addr, &v.to_le_bytes()[..size as usize]);
            }
        }
    }
    Some(ins)
}
