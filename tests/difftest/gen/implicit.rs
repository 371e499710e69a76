//! Forms whose memory operand is implicit rather than a ModRM operand: XLAT's
//! `[seg: rBX + zero-extended AL]` and MASKMOVDQU's `[seg: rDI]`, each with a 64- or 32-bit
//! address size (67 prefix: EBX + AL wrapping at 4 GiB, EDI) and now and then a segment
//! override: FS or GS with a base (the offset then often small, so EBX + AL wraps), the
//! 64-bit-mode no-ops ES/CS/DS, and SS (with canonical addresses only: see below). The address
//! registers and the segment base are placed so the access lands in a region or, for a
//! deliberate fault, where [`pick_target`] says. MASKMOVDQU's mask register gets patterns
//! that matter at a page boundary: no byte, all bytes, the first or last bytes only, one byte.

use super::super::rng::Rng;
use super::ctx::Ctx;
use super::memory::pick_target;
use super::regs::xmm;
use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Register};

/// Highest segment base given to FS/GS (the native runner sets it with `PTRACE_SETREGS`,
/// which refuses bases at or above the user address limit).
const MAX_SEG_BASE: u64 = 0x7fff_0000_0000;

pub(super) fn is_implicit_mem(code: Code) -> bool {
    matches!(
        code,
        Code::Xlat_m8 | Code::Maskmovdqu_rDI_xmm_xmm | Code::VEX_Vmaskmovdqu_rDI_xmm_xmm
    )
}

fn pick_segment(rng: &mut Rng) -> Register {
    match rng.below(12) {
        0 | 1 => Register::FS,
        2 | 3 => Register::GS,
        4 => rng.pick(&[Register::ES, Register::CS, Register::SS, Register::DS]),
        _ => Register::None,
    }
}

/// Builds an XLAT or MASKMOVDQU accessing a region (or a deliberate fault target).
pub(super) fn gen_implicit(
    code: Code,
    ctx: &mut Ctx,
    rng: &mut Rng,
    ip: u64,
) -> Option<Instruction> {
    let xlat = code == Code::Xlat_m8;
    let size = if xlat { 1 } else { 16 };
    let pointer = if xlat { Register::RBX } else { Register::RDI };
    let mut seg = pick_segment(rng);
    let (target, addr32) = if ctx.is_locked(pointer) {
        // Set by an earlier instruction of the block: the access goes where it points (plus
        // AL), if that is inside a region.
        if matches!(seg, Register::FS | Register::GS) && !ctx.seg_locked(seg) {
            seg = Register::None;
        }
        let base = ctx.reg(seg);
        let addr32 = rng.chance(1, 3);
        let amask = if addr32 { 0xffff_ffff } else { u64::MAX };
        let al = if xlat { lock_al(ctx, rng) } else { 0 };
        let offset = ctx.reg(pointer).wrapping_add(al) & amask;
        let target = base.wrapping_add(offset);
        if base != 0 && !canonical(offset) {
            return None;
        }
        ctx.locate(target, size)?;
        if !xlat {
            // String instructions earlier in the block move RDI (by less than this).
            ctx.locate(target.wrapping_sub(0x400), size + 0x800)?;
        }
        (target, addr32)
    } else {
        let target = pick_target(ctx, rng, size, 1);
        if seg == Register::SS && !canonical(target) {
            // krr raises #SS here as the SDM says; this host (AMD) raises #SS by the base
            // register (RSP/RBP) and #GP for an SS override on another: not generated.
            seg = Register::DS;
        }
        let base = match seg {
            Register::FS | Register::GS if ctx.seg_locked(seg) => ctx.reg(seg),
            Register::FS | Register::GS => new_base(rng, target),
            _ => 0,
        };
        let offset = target.wrapping_sub(base);
        if base != 0 {
            // This host (AMD) raises #GP for a non-canonical offset even when base + offset is
            // canonical, where krr checks only the linear address: not generated.
            if !canonical(offset) {
                return None;
            }
            ctx.set_seg_base(seg, base);
        }
        // A 32-bit address size reaches the target only through an offset below 4 GiB, added
        // to a base that does not wrap past it.
        let addr32 = offset < 1 << 32 && base <= target && rng.chance(1, 3);
        let amask = if addr32 { 0xffff_ffff } else { u64::MAX };
        let al = if xlat { lock_al(ctx, rng) } else { 0 };
        let mut v = offset.wrapping_sub(al) & amask;
        if addr32 {
            v |= rng.next_u64() << 32;
        }
        ctx.lock(pointer, v);
        (target, addr32)
    };
    let mut ins = if xlat {
        let bytes: &[u8] = if addr32 { &[0x67, 0xd7] } else { &[0xd7] };
        Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode()
    } else {
        let (data, mask) = (xmm(rng.below(16) as usize), xmm(rng.below(16) as usize));
        let sel = mask_pattern(rng);
        let mut m = ctx.xmm(mask);
        for i in 0..16 {
            let byte = (m >> (8 * i)) as u8;
            let byte = if sel & (1 << i) != 0 {
                byte | 0x80
            } else {
                byte & 0x7f
            };
            m = (m & !(0xffu128 << (8 * i))) | (byte as u128) << (8 * i);
        }
        ctx.set_xmm(mask, m);
        let asz = if addr32 { 32 } else { 64 };
        if code == Code::VEX_Vmaskmovdqu_rDI_xmm_xmm {
            Instruction::with_vmaskmovdqu(asz, data, mask, Register::None).ok()?
        } else {
            Instruction::with_maskmovdqu(asz, data, mask, Register::None).ok()?
        }
    };
    ins.set_segment_prefix(seg);
    ctx.mem_addr = Some(target);
    Some(ins)
}

/// AL, XLAT's table index: its value if pinned, else an edge or random byte (then pinned).
fn lock_al(ctx: &mut Ctx, rng: &mut Rng) -> u64 {
    if ctx.is_locked(Register::RAX) {
        return ctx.reg(Register::AL);
    }
    let any = rng.below(0x100);
    let al = rng.pick(&[0, 0xff, 0x80, any, any]);
    ctx.lock(Register::AL, al);
    al
}

fn canonical(a: u64) -> bool {
    ((a << 16) as i64 >> 16) as u64 == a
}

/// A new FS/GS base for an access at `target`.
fn new_base(rng: &mut Rng, target: u64) -> u64 {
    if target >= MAX_SEG_BASE || rng.chance(1, 4) {
        rng.below(MAX_SEG_BASE.min(target).max(1))
    } else if rng.chance(1, 3) {
        // A small offset (EBX + AL wraps at 4 GiB when AL exceeds it).
        target - rng.below(0x100).min(target)
    } else if rng.chance(1, 4) && target + 0x1_0000 < MAX_SEG_BASE {
        // Above the target: a 64-bit offset that wraps around.
        target + rng.below(0x1_0000)
    } else {
        target - rng.below(0x1_0000_0000).min(target)
    }
}

/// Which of the 16 bytes MASKMOVDQU stores (bit i: byte i).
fn mask_pattern(rng: &mut Rng) -> u16 {
    let k = rng.below(16) as u32;
    match rng.below(8) {
        0 => 0,
        1 => 0xffff,
        // The first k bytes (before a page boundary) or the last ones (after it).
        2 => (1u16 << k) - 1,
        3 => !((1u16 << k) - 1),
        4 => 1 << k,
        _ => rng.next_u64() as u16,
    }
}
