//! The AVX2 gathers (VGATHERDPS/DPD/QPS/QPD, VPGATHERDD/DQ/QD/QQ): one read per element whose
//! mask element has its top bit set, in element order, through the guest's MMU. Each read
//! element goes to the destination and clears its mask element; a fault leaves that partial
//! progress (dest and mask as far as they got) and the instruction restarts from there, as
//! the SDM describes. On completion the whole mask is zero and the destination's bits above
//! the gathered elements (and above 127 for VEX.128) are zero.

use super::avx::{bytes_of, load_ymm, store_ymm, words_of, ymm_of};
use super::*;

pub(super) fn gather(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let dst = ymm_of(insn.op0_register());
    let mask_reg = ymm_of(insn.op2_register());
    let index_reg = insn.memory_index();
    let index = ymm_of(index_reg);
    if dst == mask_reg || dst == index || mask_reg == index {
        return ud();
    }
    let (data, index_size) = match insn.mnemonic() {
        M::Vgatherdps | M::Vpgatherdd => (4, 4),
        M::Vgatherdpd | M::Vpgatherdq => (8, 4),
        M::Vgatherqps | M::Vpgatherqd => (4, 8),
        _ => (8, 8),
    };
    let wide = insn.op0_register().is_ymm() || index_reg.is_ymm();
    let count = if wide { 32 } else { 16 } / data.max(index_size);
    let base_reg = insn.memory_base();
    let addr32 = base_reg.size() == 4;
    let base = if base_reg == Register::None {
        0
    } else {
        reg_value(cpu, base_reg)
    };
    let seg_base = match insn.segment_prefix() {
        Register::FS => cpu.seg[seg::FS].base,
        Register::GS => cpu.seg[seg::GS].base,
        _ => 0,
    };
    let scale = insn.memory_index_scale() as u64;
    let disp = insn.memory_displacement64();
    let indices = bytes_of(load_ymm(cpu, index));
    let mut out = bytes_of(load_ymm(cpu, dst));
    let mut mask = bytes_of(load_ymm(cpu, mask_reg));
    for i in 0..count {
        if mask[i * data + data - 1] & 0x80 == 0 {
            continue;
        }
        let idx = if index_size == 4 {
            i32::from_le_bytes(indices[4 * i..4 * i + 4].try_into().expect("4 bytes")) as i64 as u64
        } else {
            u64::from_le_bytes(indices[8 * i..8 * i + 8].try_into().expect("8 bytes"))
        };
        let mut ea = base
            .wrapping_add(disp)
            .wrapping_add(idx.wrapping_mul(scale));
        if addr32 {
            ea &= 0xffff_ffff;
        }
        let a = seg_base.wrapping_add(ea);
        let mut elem = [0u8; 8];
        if let Err(s) = read_mem(cpu, a, &mut elem[..data]) {
            // The elements gathered so far stay gathered.
            store_ymm(cpu, dst, words_of(&out));
            store_ymm(cpu, mask_reg, words_of(&mask));
            return s;
        }
        out[i * data..(i + 1) * data].copy_from_slice(&elem[..data]);
        mask[i * data..(i + 1) * data].fill(0);
    }
    let used = count * data;
    out[used..].fill(0);
    store_ymm(cpu, dst, words_of(&out));
    store_ymm(cpu, mask_reg, [0; 4]);
    SysResult::Done(None)
}
