//! The x87 forms (escape opcodes D8-DF, FWAIT) and the forms on MMX registers (MMX, their SSE
//! and SSSE3 relatives, EMMS, the MMX<->XMM moves and conversions): which are covered, and
//! their operands and initial state. Every case starts from a random x87 state
//! ([`random_x87`]): its ST/MM registers, TOP and tags, FCW (precision, rounding, sometimes
//! unmasked exceptions) and FSW (sometimes a pending exception, so the instruction takes
//! #MF). Memory operands are placed like the other forms' (random addressing, now and then a
//! deliberate fault) and filled by their kind: floats, integers at the conversion boundaries,
//! packed BCD, environment and state images, control words; the operands of the
//! transcendental and scaling forms mostly lie in the ranges they are defined on.

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::memory::plan_memory;
use super::regs::{gpr_bit, gpr_of_size, xmm};
use super::values::{random_f32, random_f64};
use super::x87_values::{
    env_image, ext, ext_of_int, random_bcd, random_ext, random_fcw, random_int, random_mmx,
    random_x87, ranged_ext,
};
use iced_x86::{
    Code, CpuidFeature as F, EncodingKind, Instruction, MemorySize, Mnemonic as M,
    OpCodeOperandKind as K, OpCodeTableKind, OpKind, Register,
};

/// Whether `code` is an x87 form (D8-DF, FWAIT) or uses an MMX register (3DNow! included).
pub fn is_x87_or_mmx(code: Code) -> bool {
    let op = code.op_code();
    // Register forms are two-byte opcodes (D8 C0+i is 0xD8C0).
    let first = if op.op_code_len() == 2 {
        op.op_code() >> 8
    } else {
        op.op_code()
    };
    let escape = op.encoding() == EncodingKind::Legacy
        && op.table() == OpCodeTableKind::Normal
        && (0xd8..=0xdf).contains(&first);
    escape
        || matches!(code, Code::Wait | Code::Emms | Code::Femms)
        || op.encoding() == EncodingKind::D3NOW
        || (op.encoding() == EncodingKind::Legacy
            && op
                .op_kinds()
                .iter()
                .any(|k| matches!(k, K::mm_reg | K::mm_rm | K::mm_or_mem)))
}

/// Whether `code` is an x87 form (not MMX).
pub fn is_x87(code: Code) -> bool {
    is_x87_or_mmx(code)
        && code != Code::Emms
        && code != Code::Femms
        && code.op_code().encoding() == EncodingKind::Legacy
        && !code
            .op_code()
            .op_kinds()
            .iter()
            .any(|k| matches!(k, K::mm_reg | K::mm_rm | K::mm_or_mem))
}

/// Why an x87 or MMX form is not covered (`None`: covered). Only for [`is_x87_or_mmx`] forms.
pub fn exclusion(code: Code) -> Option<&'static str> {
    let op = code.op_code();
    if !op.is_instruction() || !op.mode64() {
        return Some("not valid in 64-bit mode");
    }
    if op.encoding() == EncodingKind::D3NOW || code == Code::Femms {
        return Some("3DNow!: #UD by design");
    }
    if op.fwait() {
        // FSTENV, FSTCW, FINIT, FSAVE, ...: FWAIT then the no-wait form, decoded (and run)
        // as those two instructions, both covered.
        return Some("FWAIT + a no-wait form (two instructions, both covered)");
    }
    if code.mnemonic() == M::Maskmovq {
        return Some("MASKMOVQ: #UD by design (not implemented)");
    }
    let mut ins = Instruction::default();
    ins.set_code(code);
    let host = ins.cpuid_features().iter().all(|f| match f {
        F::FPU | F::FPU287 | F::FPU387 | F::INTEL8086 | F::INTEL386 => true,
        F::CMOV => std::arch::x86_64::__cpuid(1).edx & (1 << 15) != 0,
        F::MMX => is_x86_feature_detected!("mmx"),
        F::SSE => is_x86_feature_detected!("sse"),
        F::SSE2 => is_x86_feature_detected!("sse2"),
        F::SSE3 => is_x86_feature_detected!("sse3"),
        F::SSSE3 => is_x86_feature_detected!("ssse3"),
        _ => false,
    });
    if !host {
        return Some("not supported by this CPU");
    }
    if !op.op_kinds().iter().all(|k| operand(*k).is_some()) {
        return Some("operand kind not generated");
    }
    None
}

/// The operand kinds of the x87 and MMX forms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operand {
    Fixed(Register),
    Sti,
    Mm,
    Xmm,
    Gpr(usize),
    Imm8,
    /// Memory only, or register (`Some`) or memory.
    Mem(Option<&'static Operand>),
}

fn operand(k: K) -> Option<Operand> {
    Some(match k {
        K::st0 => Operand::Fixed(Register::ST0),
        K::ax => Operand::Fixed(Register::AX),
        K::sti_opcode => Operand::Sti,
        K::mm_reg | K::mm_rm => Operand::Mm,
        K::xmm_reg | K::xmm_rm => Operand::Xmm,
        K::r32_reg | K::r32_rm => Operand::Gpr(4),
        K::r64_reg | K::r64_rm => Operand::Gpr(8),
        K::imm8 => Operand::Imm8,
        K::mem => Operand::Mem(None),
        K::mm_or_mem => Operand::Mem(Some(&Operand::Mm)),
        K::xmm_or_mem => Operand::Mem(Some(&Operand::Xmm)),
        K::r32_or_mem => Operand::Mem(Some(&Operand::Gpr(4))),
        K::r64_or_mem => Operand::Mem(Some(&Operand::Gpr(8))),
        _ => return None,
    })
}

fn reg_n(first: Register, n: u64) -> Register {
    Register::try_from(first as usize + n as usize).expect("register")
}

fn set_reg_op(ins: &mut Instruction, i: u32, op: Operand, rng: &mut Rng) {
    let reg = match op {
        Operand::Fixed(r) => r,
        Operand::Sti => reg_n(Register::ST0, rng.below(8)),
        Operand::Mm => reg_n(Register::MM0, rng.below(8)),
        Operand::Xmm => xmm(rng.below(16) as usize),
        Operand::Gpr(size) => gpr_of_size(rng.below(16) as usize, size),
        _ => unreachable!("not a register operand"),
    };
    ins.set_op_kind(i, OpKind::Register);
    ins.set_op_register(i, reg);
}

/// One x87 or MMX instruction of form `code` with its operands, initial x87 state and
/// memory contents.
pub(super) fn gen_x87(code: Code, ctx: &mut Ctx, rng: &mut Rng) -> Option<Instruction> {
    let info = code.op_code();
    let mut ins = Instruction::default();
    ins.set_code(code);
    let mut mem = false;
    let mut explicit = 0u16;
    for i in 0..info.op_count() {
        let op = operand(info.op_kind(i))?;
        match op {
            Operand::Imm8 => {
                ins.set_op_kind(i, OpKind::Immediate8);
                ins.set_immediate8(rng.next_u64() as u8);
            }
            Operand::Mem(reg) => match reg {
                Some(r) if rng.chance(1, 2) => set_reg_op(&mut ins, i, *r, rng),
                _ => {
                    ins.set_op_kind(i, OpKind::Memory);
                    mem = true;
                }
            },
            _ => set_reg_op(&mut ins, i, op, rng),
        }
        if ins.op_kind(i) == OpKind::Register {
            explicit |= gpr_bit(ins.op_register(i));
        }
    }
    // A block keeps the random state its first x87 or MMX instruction chose.
    if !ctx.block || ctx.st.x87 == krr_runtime::X87State::default() {
        ctx.st.x87 = random_x87(rng, if is_x87(code) { 10 } else { 16 });
    }
    tune_registers(ctx, &ins, rng);
    if mem {
        let size = ins.memory_size().size() as u64;
        let align = if size == 16 { 16 } else { 1 };
        let avoid = (explicit | ctx.clobbered) & !ctx.locked_usable();
        let plan = plan_memory(ctx, rng, size, align, avoid, false)?;
        plan.apply(&mut ins);
        ctx.mem_addr = Some(plan.addr);
        if !ctx.cur_fault {
            let bytes = memory_value(&ins, rng);
            ctx.write_mem(plan.addr, &bytes[..size as usize]);
        }
    }
    for i in 0..ins.op_count() {
        if ins.op_kind(i) == OpKind::Register && ins.op_register(i).is_gpr() {
            let r = ins.op_register(i);
            ctx.set_reg(r, random_int(rng, r.size() as u64));
        }
    }
    Some(ins)
}

/// The contents of the memory operand of `ins`, by its kind (at least its size).
fn memory_value(ins: &Instruction, rng: &mut Rng) -> Vec<u8> {
    let size = ins.memory_size().size();
    let mut b = vec![0u8; size.max(16)];
    let mn = ins.mnemonic();
    match ins.memory_size() {
        MemorySize::Float32 => b[..4].copy_from_slice(&random_f32(rng).to_le_bytes()),
        MemorySize::Float64 => b[..8].copy_from_slice(&random_f64(rng).to_le_bytes()),
        MemorySize::Float80 => b[..10].copy_from_slice(&random_ext(rng)[..10]),
        MemorySize::Bcd => b[..10].copy_from_slice(&random_bcd(rng)),
        MemorySize::FpuEnv14
        | MemorySize::FpuEnv28
        | MemorySize::FpuState94
        | MemorySize::FpuState108 => {
            if matches!(mn, M::Fldenv | M::Frstor) {
                b[..size].copy_from_slice(&env_image(rng, size));
            } else {
                rng.fill(&mut b);
            }
        }
        _ if mn == M::Fldcw => b[..2].copy_from_slice(&random_fcw(rng).to_le_bytes()),
        MemorySize::Int16 | MemorySize::Int32 | MemorySize::Int64 => {
            b[..8].copy_from_slice(&random_int(rng, size as u64).to_le_bytes())
        }
        _ if is_x87(ins.code()) => rng.fill(&mut b),
        _ => {
            for chunk in b.chunks_mut(8) {
                chunk.copy_from_slice(&random_mmx(rng).to_le_bytes());
            }
            if format!("{mn:?}").starts_with("Cvt") {
                for chunk in b.chunks_mut(8) {
                    let v = if ins.memory_size().element_size() == 8 {
                        random_f64(rng)
                    } else {
                        random_f32(rng) as u64 | (random_f32(rng) as u64) << 32
                    };
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    b
}

/// Makes ST(i) valid with the value `v`: the FXSAVE image holds the registers in stack
/// order, the abridged tag word by physical register (TOP + i).
fn set_st(ctx: &mut Ctx, i: u64, v: [u8; 16]) {
    let p = (((ctx.st.x87.fsw >> 11) & 7) as u64 + i) & 7;
    ctx.st.x87.st[i as usize] = v;
    ctx.st.x87.ftw |= 1 << p;
}

/// Steers ST0/ST1 (and MMX registers) towards the values each form is interesting for.
fn tune_registers(ctx: &mut Ctx, ins: &Instruction, rng: &mut Rng) {
    let mn = ins.mnemonic();
    if !is_x87(ins.code()) {
        // MMX: the registers hold 64-bit integers, their exponent bits random.
        for i in 0..8 {
            if rng.chance(3, 4) {
                ctx.st.x87.st[i][..8].copy_from_slice(&random_mmx(rng).to_le_bytes());
            }
        }
        return;
    }
    // Mostly in range: the rest keeps random_x87's edge values.
    if !rng.chance(3, 4) {
        return;
    }
    let r = |rng: &mut Rng, lo, hi| ranged_ext(rng, lo, hi);
    match mn {
        M::F2xm1 => set_st(ctx, 0, r(rng, -1.0, 1.0)),
        M::Fyl2xp1 => {
            set_st(ctx, 0, r(rng, -0.29, 0.29));
            set_st(ctx, 1, random_ext(rng));
        }
        M::Fyl2x => {
            set_st(ctx, 0, r(rng, 0.0, 1e6));
            set_st(ctx, 1, random_ext(rng));
        }
        M::Fsin | M::Fcos | M::Fsincos | M::Fptan => {
            let lim = rng.pick(&[4.0, 100.0, 1e6, 1.8e19]);
            set_st(ctx, 0, r(rng, -lim, lim));
        }
        M::Fpatan => {
            set_st(ctx, 0, r(rng, -10.0, 10.0));
            set_st(ctx, 1, r(rng, -10.0, 10.0));
        }
        M::Fscale => {
            set_st(ctx, 0, random_ext(rng));
            set_st(ctx, 1, r(rng, -70.0, 70.0));
        }
        M::Fprem | M::Fprem1 => {
            set_st(ctx, 0, r(rng, -1e30, 1e30));
            set_st(ctx, 1, r(rng, -100.0, 100.0));
        }
        M::Fsqrt | M::Frndint | M::Fxtract => set_st(ctx, 0, random_ext(rng)),
        M::Fist | M::Fistp | M::Fisttp | M::Fbstp => {
            let v = match rng.below(3) {
                0 => ext_of_int(super::x87_values::boundary_int(rng)),
                1 => r(rng, -70000.0, 70000.0),
                _ => ext(
                    rng.chance(1, 2),
                    16383 + 50 + rng.below(16) as u16,
                    1 << 63 | rng.next_u64(),
                ),
            };
            set_st(ctx, 0, v);
        }
        _ => {}
    }
}
