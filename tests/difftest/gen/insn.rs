//! One instruction: generate its operands (or string form, or implicit memory operand), apply the per-form tuning and
//! hooks, encode it, and check the encoding and the memory accesses.

use super::super::rng::Rng;
use super::ctx::{Ctx, GenOptions};
use super::forms::{is_bt_mem_reg, is_string};
use super::implicit::{gen_implicit, is_implicit_mem};
use super::operands::gen_operands;
use super::string::gen_string;
use super::tuning::builtin_hook;
use super::values::sign_extend;
use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, Instruction, InstructionInfoFactory, OpAccess, OpKind,
};

/// Generates one instruction of form `code` at `ip`, adjusting `ctx`; returns its bytes and
/// the decoded instruction, or `None` if this attempt failed (the caller retries).
pub(super) fn gen_insn(
    code: Code,
    ctx: &mut Ctx,
    rng: &mut Rng,
    ip: u64,
    opts: &GenOptions,
) -> Option<(Vec<u8>, Instruction)> {
    ctx.mem_addr = None;
    ctx.cur_fault = false;
    ctx.margin = 0;
    let mut ins = if is_string(code) {
        gen_string(code, ctx, rng)?
    } else if is_implicit_mem(code) {
        gen_implicit(code, ctx, rng, ip)?
    } else if super::x87::is_x87_or_mmx(code) {
        super::x87::gen_x87(code, ctx, rng)?
    } else {
        gen_operands(code, ctx, rng, ip)?
    };
    builtin_hook(ctx, &mut ins, rng);
    for (c, hook) in &opts.hooks {
        if *c == code {
            hook(ctx, &mut ins, rng);
        }
    }
    let bytes = encode_checked(&ins, ip)?;
    let decoded = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE).decode();
    if !ctx.cur_fault && !accesses_ok(ctx, &decoded) {
        return None;
    }
    Some((bytes, decoded))
}

/// Encodes `ins` at `ip` and checks that decoding the bytes gives back the same form.
pub(super) fn encode_checked(ins: &Instruction, ip: u64) -> Option<Vec<u8>> {
    let mut encoder = Encoder::new(64);
    encoder.encode(ins, ip).ok()?;
    let bytes = encoder.take_buffer();
    let d = Decoder::with_ip(64, &bytes, ip, DecoderOptions::NONE).decode();
    if d.code() != ins.code() || d.len() != bytes.len() {
        return None;
    }
    for i in 0..ins.op_count() {
        if d.op_kind(i) != ins.op_kind(i) {
            return None;
        }
        if ins.op_kind(i) == OpKind::Register && d.op_register(i) != ins.op_register(i) {
            return None;
        }
        if ins.op_kind(i) == OpKind::Memory
            && (d.memory_base() != ins.memory_base() || d.memory_index() != ins.memory_index())
        {
            return None;
        }
    }
    if d.has_lock_prefix() != ins.has_lock_prefix()
        || d.has_rep_prefix() != ins.has_rep_prefix()
        || d.has_repne_prefix() != ins.has_repne_prefix()
    {
        return None;
    }
    Some(bytes)
}

/// Checks that every memory access of `ins` (computed from the initial state) is inside a
/// region. Accesses of unknown size (REP strings) are checked by [`gen_string`] instead.
pub(super) fn accesses_ok(ctx: &Ctx, ins: &Instruction) -> bool {
    let mut info = InstructionInfoFactory::new();
    for m in info.info(ins).used_memory() {
        if m.access() == OpAccess::NoMemAccess {
            continue;
        }
        let size = m.memory_size().size() as u64;
        if size == 0 {
            continue;
        }
        let Some(mut va) = m.virtual_address(0, |r, _, _| Some(ctx.addr_value(r))) else {
            return false;
        };
        if is_bt_mem_reg(ins) {
            // The register bit offset selects the element: base + (offset >> log2(bits)) * bytes.
            let bits = size * 8;
            let off = sign_extend(ctx.reg(ins.op_register(1)), bits);
            va = va.wrapping_add(((off >> bits.trailing_zeros()) * size as i64) as u64);
        }
        if ctx.locate(va, size).is_none() {
            return false;
        }
    }
    true
}
