//! Memory operand placement: addressing forms and register values that aim an access inside a
//! region (or, for a deliberate fault, outside), the stack pointer, and the free addressing
//! forms of LEA and NOP.

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::layout::{layout, DATA0, DATA0_LEN, DATA1, DATA1_LEN, STACK, STACK_LEN};
use super::regs::gpr_of_size;
use iced_x86::{Instruction, Register};

/// Points RSP into the stack region (unless already done), far enough from both ends for any
/// generated stack operation; with a pending deliberate fault, right at an end instead.
pub(super) fn ensure_stack(ctx: &mut Ctx, rng: &mut Rng) {
    if ctx.is_locked(Register::RSP) {
        return;
    }
    if ctx.fault_pending && !ctx.block && rng.chance(1, 2) {
        ctx.fault_pending = false;
        ctx.cur_fault = true;
        let rsp = if rng.chance(1, 2) {
            STACK + rng.below(8)
        } else {
            STACK + STACK_LEN - rng.below(8)
        };
        ctx.lock(Register::RSP, rsp);
        return;
    }
    let off = 0x800 + rng.below(0x1000);
    ctx.lock(
        Register::RSP,
        STACK + if rng.chance(1, 10) { off } else { off & !7 },
    );
}

/// An addressing form for an explicit memory operand.
#[derive(Clone, Copy, Debug)]
pub(super) struct MemPlan {
    base: Register,
    index: Register,
    scale: u32,
    disp: u64,
    displ_size: u32,
    /// The address accessed.
    pub(super) addr: u64,
}

impl MemPlan {
    /// No base register (or RIP, with `target` as the absolute address iced-x86 wants) and no
    /// index: the displacement is the address.
    fn direct(base: Register, target: u64, displ_size: u32) -> MemPlan {
        MemPlan {
            base,
            index: Register::None,
            scale: 1,
            disp: target,
            displ_size,
            addr: target,
        }
    }

    pub(super) fn apply(&self, ins: &mut Instruction) {
        ins.set_memory_base(self.base);
        ins.set_memory_index(self.index);
        ins.set_memory_index_scale(self.scale);
        ins.set_memory_displacement64(self.disp);
        ins.set_memory_displ_size(self.displ_size);
        ins.set_segment_prefix(Register::None);
    }
}

/// The value of index register `index`: its current value if locked, else a small one
/// (locked by the caller).
fn index_value(ctx: &Ctx, rng: &mut Rng, index: Register, amask: u64) -> u64 {
    if ctx.is_locked(index) {
        return ctx.addr_value(index) & amask;
    }
    let v = match rng.below(4) {
        0 => 0,
        1 => rng.range_i64(-64, 64) as u64,
        2 => rng.range_i64(-0x1000, 0x1000) as u64,
        _ => u64::MAX,
    };
    v & amask
}

/// Picks the address to access: inside a region, or (for a pending deliberate fault) outside.
pub(super) fn pick_target(ctx: &mut Ctx, rng: &mut Rng, size: u64, align: u64) -> u64 {
    if ctx.fault_pending {
        ctx.fault_pending = false;
        ctx.cur_fault = true;
        return fault_target(rng, size);
    }
    let r = match rng.below(20) {
        0..=11 => 0,
        12..=16 => 1,
        _ => 2,
    };
    let (base, len) = layout()[r];
    let lo = ctx.margin;
    let hi = len - size - ctx.margin;
    let natural = size.next_power_of_two().clamp(1, 16);
    let mut off = match rng.below(10) {
        0..=5 => rng.range_i64(lo as i64, hi as i64) as u64 & !(natural - 1),
        6 | 7 => rng.range_i64(lo as i64, hi as i64) as u64,
        // Straddling the page boundary inside the region (or near the region's end).
        8 => (0x1000u64.min(len - size)).saturating_sub(rng.below(size.max(2))),
        _ => {
            if rng.chance(1, 2) {
                lo + rng.below(16)
            } else {
                hi - rng.below(16)
            }
        }
    };
    off = off.clamp(lo, hi);
    if align > 1 {
        off &= !(align - 1);
        if rng.chance(1, 16) {
            // Deliberately misaligned: #GP natively.
            off = (off + 1 + rng.below(align - 1)).min(hi);
        }
    }
    base + off
}

/// An address outside the regions: unmapped, crossing into or out of a region, kernel half
/// (still a page fault) or non-canonical (#GP, or #SS with an RSP/RBP base).
fn fault_target(rng: &mut Rng, size: u64) -> u64 {
    let cross = |rng: &mut Rng| 1 + rng.below(size.max(2) - 1);
    match rng.below(8) {
        0 => DATA0 + DATA0_LEN + rng.below(64),
        1 if size > 1 => DATA0 + DATA0_LEN - cross(rng),
        2 if size > 1 => DATA1 - cross(rng),
        3 => 0x2400_0000 + rng.below(0x100_0000),
        4 => STACK + STACK_LEN + rng.below(32),
        5 => 0xffff_8000_0000_0000 + rng.below(1 << 40),
        6 => 0x0000_8000_0000_0000 + rng.below(1 << 46),
        _ => DATA1 + DATA1_LEN + rng.below(0x1000),
    }
}

/// Chooses an addressing form and register values so the operand accesses `size` bytes at an
/// address chosen by [`pick_target`]. `avoid`: GPRs that must not serve as base or index.
pub(super) fn plan_memory(
    ctx: &mut Ctx,
    rng: &mut Rng,
    size: u64,
    align: u64,
    avoid: u16,
    moffs: bool,
) -> Option<MemPlan> {
    let target = pick_target(ctx, rng, size, align);
    let fits_i32 = |v: i64| v >= i32::MIN as i64 && v <= i32::MAX as i64;
    if moffs {
        return Some(MemPlan::direct(Register::None, target, 8));
    }
    let low = target < 0x8000_0000;
    let addr32 = low && rng.chance(1, 10);
    let amask = if addr32 { 0xffff_ffffu64 } else { u64::MAX };
    let regsize = if addr32 { 4 } else { 8 };
    let mode = rng.below(100);
    if low && !addr32 && mode < 10 {
        return Some(MemPlan::direct(Register::RIP, target, 8));
    }
    if low && mode < 15 {
        return Some(MemPlan::direct(Register::None, target, regsize as u32));
    }
    let candidates: Vec<usize> = (0..16).filter(|i| avoid & (1 << i) == 0).collect();
    if candidates.is_empty() {
        return None;
    }
    let base_i = (mode < 85).then(|| rng.pick(&candidates));
    let want_index = mode >= 55;
    let index_i = if want_index {
        let c: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| i != 4 && Some(i) != base_i)
            .collect();
        if c.is_empty() {
            return None;
        }
        Some(rng.pick(&c))
    } else {
        None
    };
    let scale = if index_i.is_some() {
        rng.pick(&[1u64, 2, 4, 8])
    } else {
        1
    };
    let base = base_i.map_or(Register::None, |i| gpr_of_size(i, regsize));
    let index = index_i.map_or(Register::None, |i| gpr_of_size(i, regsize));
    let idx_val = if index_i.is_some() {
        index_value(ctx, rng, index, amask)
    } else {
        0
    };
    let scaled = idx_val.wrapping_mul(scale) & amask;
    let disp: u64;
    match base_i {
        Some(_) if ctx.is_locked(base) => {
            let b = ctx.addr_value(base) & amask;
            let raw = target.wrapping_sub(b).wrapping_sub(scaled) & amask;
            disp = raw;
            if !addr32 && !fits_i32(disp as i64) {
                return None;
            }
        }
        Some(_) => {
            let d: i64 = match rng.below(4) {
                0 => 0,
                1 => rng.range_i64(-128, 127),
                2 => rng.range_i64(-0x10000, 0x10000),
                _ => rng.range_i64(i32::MIN as i64, i32::MAX as i64),
            };
            disp = if addr32 { d as u64 & amask } else { d as u64 };
            let b = target.wrapping_sub(disp).wrapping_sub(scaled) & amask;
            let full = if addr32 {
                (rng.next_u64() << 32) | b
            } else {
                b
            };
            ctx.lock(gpr_of_size(base_i.unwrap(), 8), full);
        }
        None => {
            let raw = target.wrapping_sub(scaled) & amask;
            if !addr32 && !fits_i32(raw as i64) {
                return None;
            }
            disp = raw;
        }
    }
    if let Some(i) = index_i {
        if !ctx.is_locked(index) {
            let full = if addr32 {
                (rng.next_u64() << 32) | idx_val
            } else {
                idx_val
            };
            ctx.lock(gpr_of_size(i, 8), full);
        }
    }
    let displ_size = if base_i.is_none() {
        regsize as u32
    } else if disp == 0 && rng.chance(1, 2) {
        0
    } else if rng.chance(1, 4) {
        regsize as u32
    } else {
        1
    };
    // 32-bit displacements are sign-extended in 64-bit addressing; iced wants them as i64.
    let disp = if addr32 { disp } else { disp as i64 as u64 };
    Some(MemPlan {
        base,
        index,
        scale: scale as u32,
        disp,
        displ_size,
        addr: target,
    })
}

/// A random addressing form for LEA and NOP (no access): registers keep their random values.
pub(super) fn random_address(ins: &mut Instruction, rng: &mut Rng, ip: u64) {
    let addr32 = rng.chance(1, 6);
    let regsize = if addr32 { 4 } else { 8 };
    let mode = rng.below(10);
    let mut plan = MemPlan {
        base: Register::None,
        index: Register::None,
        scale: 1,
        disp: 0,
        displ_size: 0,
        addr: 0,
    };
    if mode == 0 && !addr32 {
        plan.base = Register::RIP;
        plan.disp = ip.wrapping_add(rng.range_i64(-0x7000_0000, 0x7000_0000) as u64);
        plan.displ_size = 8;
    } else {
        if mode != 1 {
            plan.base = gpr_of_size(rng.below(16) as usize, regsize);
        }
        if mode == 1 || rng.chance(1, 2) {
            let i = rng.pick(&[0usize, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
            plan.index = gpr_of_size(i, regsize);
            plan.scale = rng.pick(&[1, 2, 4, 8]);
        }
        let d = match rng.below(3) {
            0 => 0,
            1 => rng.range_i64(-128, 127),
            _ => rng.range_i64(i32::MIN as i64, i32::MAX as i64),
        };
        plan.disp = if addr32 {
            d as u64 & 0xffff_ffff
        } else {
            d as u64
        };
        plan.displ_size = if plan.base == Register::None {
            regsize as u32
        } else if d == 0 && rng.chance(1, 2) {
            0
        } else {
            1
        };
    }
    plan.apply(ins);
}
