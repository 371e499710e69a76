//! String instructions (MOVS/STOS/LODS/CMPS/SCAS, with or without REP/REPE/REPNE): element
//! counts, RSI/RDI placed so every repetition stays inside a region (or, for a deliberate
//! fault, runs off one part-way), and comparisons steered to terminate at interesting places.

use super::super::compare::DF;
use super::super::rng::Rng;
use super::ctx::Ctx;
use super::forms::{string_info, StrOp};
use super::layout::layout;
use iced_x86::{Code, Instruction, Register, RepPrefixKind};

/// What the helpers share about the string instruction being generated.
struct Shape {
    op: StrOp,
    /// Element size in bytes.
    esize: u64,
    /// 32-bit address size (RSI/RDI/RCX used as ESI/EDI/ECX).
    addr32: bool,
    /// Number of elements the instruction processes.
    count: u64,
}

impl Shape {
    fn amask(&self) -> u64 {
        if self.addr32 {
            0xffff_ffffu64
        } else {
            u64::MAX
        }
    }

    /// Bytes covered by all the elements.
    fn span(&self) -> u64 {
        self.count.max(1) * self.esize
    }
}

pub(super) fn gen_string(code: Code, ctx: &mut Ctx, rng: &mut Rng) -> Option<Instruction> {
    let (op, esize) = string_info(code)?;
    let addr32 = rng.chance(1, 8);
    let asz = if addr32 { 32 } else { 64 };
    let rep = match op {
        StrOp::Movs | StrOp::Stos | StrOp::Lods => {
            rng.pick(&[RepPrefixKind::None, RepPrefixKind::Repe])
        }
        _ => rng.pick(&[
            RepPrefixKind::None,
            RepPrefixKind::Repe,
            RepPrefixKind::Repne,
        ]),
    };
    let ins = string_insn(code, asz, rep)?;
    let mut shape = Shape {
        op,
        esize,
        addr32,
        count: 0,
    };
    shape.count = element_count(ctx, rng, &shape, rep)?;
    let pointers = place_pointers(ctx, rng, &shape)?;
    steer_comparison(ctx, rng, &shape, &pointers);
    Some(ins)
}

/// The instruction for string form `code` with address size `asz` and prefix `rep`.
fn string_insn(code: Code, asz: u32, rep: RepPrefixKind) -> Option<Instruction> {
    use Code as C;
    match code {
        C::Movsb_m8_m8 => Instruction::with_movsb(asz, Register::None, rep),
        C::Movsw_m16_m16 => Instruction::with_movsw(asz, Register::None, rep),
        C::Movsd_m32_m32 => Instruction::with_movsd(asz, Register::None, rep),
        C::Movsq_m64_m64 => Instruction::with_movsq(asz, Register::None, rep),
        C::Stosb_m8_AL => Instruction::with_stosb(asz, rep),
        C::Stosw_m16_AX => Instruction::with_stosw(asz, rep),
        C::Stosd_m32_EAX => Instruction::with_stosd(asz, rep),
        C::Stosq_m64_RAX => Instruction::with_stosq(asz, rep),
        C::Lodsb_AL_m8 => Instruction::with_lodsb(asz, Register::None, rep),
        C::Lodsw_AX_m16 => Instruction::with_lodsw(asz, Register::None, rep),
        C::Lodsd_EAX_m32 => Instruction::with_lodsd(asz, Register::None, rep),
        C::Lodsq_RAX_m64 => Instruction::with_lodsq(asz, Register::None, rep),
        C::Cmpsb_m8_m8 => Instruction::with_cmpsb(asz, Register::None, rep),
        C::Cmpsw_m16_m16 => Instruction::with_cmpsw(asz, Register::None, rep),
        C::Cmpsd_m32_m32 => Instruction::with_cmpsd(asz, Register::None, rep),
        C::Cmpsq_m64_m64 => Instruction::with_cmpsq(asz, Register::None, rep),
        C::Scasb_AL_m8 => Instruction::with_scasb(asz, rep),
        C::Scasw_AX_m16 => Instruction::with_scasw(asz, rep),
        C::Scasd_EAX_m32 => Instruction::with_scasd(asz, rep),
        _ => Instruction::with_scasq(asz, rep),
    }
    .ok()
}

/// `v` as the full register value: with a 32-bit address size, random upper bits (ignored).
fn with_upper(rng: &mut Rng, addr32: bool, v: u64) -> u64 {
    if addr32 {
        (rng.next_u64() << 32) | v
    } else {
        v
    }
}

/// The element count (RCX, locked here unless an earlier block instruction set it), or `None`
/// if an inherited count is too large.
fn element_count(ctx: &mut Ctx, rng: &mut Rng, shape: &Shape, rep: RepPrefixKind) -> Option<u64> {
    if rep == RepPrefixKind::None {
        return Some(1);
    }
    if ctx.is_locked(Register::RCX) {
        let c = ctx.reg(Register::RCX) & shape.amask();
        if c > 64 {
            return None;
        }
        return Some(c);
    }
    let (a, b) = (rng.below(9), rng.below(33));
    // Now and then a long run (fast-string paths), at most 1 KiB (not in blocks, whose
    // pointers need room for the drift of several string instructions).
    let long = if ctx.block {
        a
    } else {
        rng.below(1024 / shape.esize + 1)
    };
    let c = rng.pick(&[0, 1, 2, 3, a, a, b, b, long]);
    let full = with_upper(rng, shape.addr32, c);
    ctx.lock(Register::RCX, full);
    Some(c)
}

/// Places RSI and/or RDI (locking them) and returns the used pointers, source first.
fn place_pointers(ctx: &mut Ctx, rng: &mut Rng, shape: &Shape) -> Option<Vec<u64>> {
    let (op, esize, count) = (shape.op, shape.esize, shape.count);
    let amask = shape.amask();
    // Room on both sides, whatever DF is when the instruction runs (blocks may change it),
    // plus slack for the pointer drift of earlier string instructions in a block.
    let span = shape.span();
    let slack = if ctx.block { 0x400 } else { 0 };
    let mut fault = ctx.fault_pending && !ctx.block && count > 1 && rng.chance(2, 3);
    let uses_src = matches!(op, StrOp::Movs | StrOp::Lods | StrOp::Cmps);
    let uses_dst = matches!(op, StrOp::Movs | StrOp::Stos | StrOp::Cmps | StrOp::Scas);
    let df = ctx.st.rflags & DF != 0;
    let mut pointers = Vec::new();
    for (reg, used, region) in [
        (Register::RSI, uses_src, 0usize),
        (Register::RDI, uses_dst, 1usize),
    ] {
        if !used {
            continue;
        }
        if ctx.is_locked(reg) {
            // Set by an earlier instruction of the block: usable if well inside a region.
            let v = ctx.reg(reg) & amask;
            ctx.locate(v.wrapping_sub(span + slack), 2 * (span + slack) + esize)?;
            pointers.push(v);
            continue;
        }
        let region = if rng.chance(1, 5) { 0 } else { region };
        let (rbase, rlen) = layout()[region];
        let mut v = if fault && (reg == Register::RDI || !uses_dst) {
            // Run off the end of the region part-way through the repetition.
            fault = false;
            ctx.fault_pending = false;
            ctx.cur_fault = true;
            let k = 1 + rng.below(count - 1);
            if df {
                rbase + (k - 1) * esize
            } else {
                rbase + rlen - k * esize
            }
        } else {
            let lo = span + slack;
            let hi = rlen.checked_sub(span + slack + esize)?;
            if hi < lo {
                return None;
            }
            rbase + rng.range_i64(lo as i64, hi as i64) as u64
        };
        if rng.chance(7, 10) && !ctx.cur_fault {
            v &= !(esize - 1);
        }
        // MOVS/CMPS sometimes with overlapping source and destination.
        if reg == Register::RDI && uses_src && rng.chance(1, 6) && !ctx.cur_fault {
            if let Some(&src) = pointers.first() {
                let cand = src.wrapping_add(rng.range_i64(-16, 16) as u64);
                if ctx
                    .locate(cand.wrapping_sub(span + slack), 2 * (span + slack) + esize)
                    .is_some()
                {
                    v = cand;
                }
            }
        }
        let full = with_upper(rng, shape.addr32, v);
        ctx.lock(reg, full);
        pointers.push(v);
    }
    Some(pointers)
}

/// Makes REPE/REPNE comparisons terminate at interesting places: CMPS compares a copy of the
/// source (sometimes with one bit flipped), SCAS scans elements equal or unequal to the
/// accumulator.
fn steer_comparison(ctx: &mut Ctx, rng: &mut Rng, shape: &Shape, pointers: &[u64]) {
    let (esize, count, span) = (shape.esize, shape.count, shape.span());
    let df = ctx.st.rflags & DF != 0;
    let range = |p: u64| if df { p.wrapping_sub(span - esize) } else { p };
    match shape.op {
        StrOp::Cmps if !ctx.cur_fault => {
            let (src, dst) = (pointers[0], pointers[1]);
            if let Some(data) = ctx.read_mem(range(src), span) {
                let mut data = data;
                if rng.chance(1, 2) {
                    let i = rng.below(span) as usize;
                    data[i] ^= 1 << rng.below(8);
                }
                ctx.write_mem(range(dst), &data);
            }
        }
        StrOp::Scas if !ctx.cur_fault => {
            let dst = pointers[0];
            let acc = ctx.st.gpr[0].to_le_bytes();
            let mut data = Vec::with_capacity(span as usize);
            let special = rng.below(count.max(1));
            let mode = rng.below(3);
            for e in 0..count.max(1) {
                let equal = match mode {
                    0 => e != special,
                    1 => e == special,
                    _ => rng.chance(1, 2),
                };
                for &byte in &acc[..esize as usize] {
                    data.push(if equal {
                        byte
                    } else {
                        byte ^ (1 << rng.below(8))
                    });
                }
            }
            ctx.write_mem(range(dst), &data);
        }
        _ => {}
    }
}
