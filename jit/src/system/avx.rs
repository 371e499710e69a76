//! The VEX-encoded vector instructions (AVX, AVX2, FMA3, F16C, and the VEX forms of SSE..
//! SSE4.2, AES-NI and PCLMULQDQ), run on the CPU state. All but a few run on the host, the
//! reference: the stub (`avx_stub.rs`) gets the guest's sixteen YMM registers, its memory
//! operand read through the guest's MMU into a buffer, GPR operands in r8/r9 and the guest's
//! MXCSR; the results come back whole (register, GPR, flags, the bytes to store, MXCSR's
//! flags), and a store is written before anything is committed, so a faulting instruction
//! changes nothing. An unmasked SIMD exception traps on the host and becomes #XM (#UD
//! without CR4.OSXMMEXCPT) with the state unchanged but MXCSR's flags.
//!
//! Written here instead: VZEROUPPER/VZEROALL, VLDMXCSR/VSTMXCSR, the masked moves
//! (VMASKMOVPS/PD, VPMASKMOVD/Q: only the selected elements are read or written, so only
//! they fault: measured on this host, a store writes nothing when any selected element
//! faults, and the fault's address is the first inaccessible byte of the first faulting
//! selected element), and the gathers (VGATHER*, VPGATHER*: one read per selected element
//! through the MMU, in element order; each completed element clears its mask element, so a
//! fault leaves the partial progress the SDM describes, and the instruction restarts from
//! there).

use super::avx_stub::{run, stub, YmmCtx, MEM_MAX};
use super::*;
use crate::helpers::host_exec::raise_xm;
use iced_x86::MemorySize;
use krr_runtime::arch::xcr0;
use krr_runtime::cpuid::MXCSR_MASK;

/// The checks every VEX instruction makes first: #UD unless CR4.OSXSAVE and XCR0 enables
/// SSE and AVX state, then #NM with CR0.TS (SDM Vol. 2 2.8, exception classes).
fn vex_check(cpu: &CpuState) -> Option<SysResult> {
    if cpu.cr4 & cr4::OSXSAVE == 0 || cpu.xcr0 & (xcr0::SSE | xcr0::AVX) != xcr0::SSE | xcr0::AVX {
        return Some(ud());
    }
    if cpu.cr0 & cr0::TS != 0 {
        return Some(SysResult::Fault(fault(vector::NM, None)));
    }
    None
}

/// #SS(0) for a non-canonical address through the stack segment (RSP/RBP base or an SS
/// override); other non-canonical addresses fault in the MMU (#GP(0)).
fn stack_canonical(insn: &Instruction, a: u64) -> Option<SysResult> {
    let ss = match insn.segment_prefix() {
        Register::None => matches!(
            insn.memory_base(),
            Register::RSP | Register::RBP | Register::ESP | Register::EBP
        ),
        s => s == Register::SS,
    };
    (ss && !mmu::is_canonical(a)).then(|| SysResult::Fault(fault(vector::SS, Some(0))))
}

/// Memory operands that must be aligned to their size (#GP(0) otherwise): the aligned moves
/// and the non-temporal ones (SDM Vol. 2 Table 2-18, exception class 1).
fn needs_alignment(m: M) -> bool {
    matches!(
        m,
        M::Vmovaps
            | M::Vmovapd
            | M::Vmovdqa
            | M::Vmovntps
            | M::Vmovntpd
            | M::Vmovntdq
            | M::Vmovntdqa
    )
}

pub(super) fn ymm_of(r: Register) -> usize {
    if r.is_ymm() {
        r.number() - Register::YMM0.number()
    } else {
        r.number() - Register::XMM0.number()
    }
}

pub(super) fn load_ymm(cpu: &CpuState, r: usize) -> [u64; 4] {
    [
        cpu.xmm[r][0],
        cpu.xmm[r][1],
        cpu.ymm_hi[r][0],
        cpu.ymm_hi[r][1],
    ]
}

pub(super) fn store_ymm(cpu: &mut CpuState, r: usize, v: [u64; 4]) {
    cpu.xmm[r] = [v[0], v[1]];
    cpu.ymm_hi[r] = [v[2], v[3]];
}

/// Run a VEX vector instruction. `addr` is its memory operand's linear address (for VSIB
/// operands the address without the vector index, unused: the gathers compute their own).
pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    if let Some(f) = vex_check(cpu) {
        return f;
    }
    match insn.mnemonic() {
        M::Vzeroupper => {
            cpu.ymm_hi = [[0; 2]; 16];
            SysResult::Done(None)
        }
        M::Vzeroall => {
            cpu.ymm_hi = [[0; 2]; 16];
            cpu.xmm = [[0; 2]; 16];
            SysResult::Done(None)
        }
        M::Vldmxcsr => {
            let mut b = [0u8; 4];
            trym!(read_mem(cpu, addr.expect("m32"), &mut b));
            let v = u32::from_le_bytes(b);
            if v & !MXCSR_MASK != 0 {
                return gp0();
            }
            cpu.mxcsr = v;
            SysResult::Done(None)
        }
        M::Vstmxcsr => {
            let v = cpu.mxcsr;
            trym!(write_mem(cpu, addr.expect("m32"), &v.to_le_bytes()));
            SysResult::Done(None)
        }
        M::Vmaskmovdqu => byte_masked_store(cpu, insn),
        M::Vmaskmovps | M::Vmaskmovpd | M::Vpmaskmovd | M::Vpmaskmovq => {
            masked_move(cpu, insn, addr.expect("memory operand"))
        }
        M::Vgatherdps
        | M::Vgatherdpd
        | M::Vgatherqps
        | M::Vgatherqpd
        | M::Vpgatherdd
        | M::Vpgatherdq
        | M::Vpgatherqd
        | M::Vpgatherqq => super::avx_gather::gather(cpu, insn),
        _ => on_host(cpu, insn, addr),
    }
}

/// VMASKMOVDQU: the selected bytes (bit 7 of the mask's byte) of the source stored at
/// [rDI], as MASKMOVDQU (`sem/sse`): this host faults like a 16-byte store whatever the mask,
/// so the whole window is probed first; then one byte store per selected byte, in order.
fn byte_masked_store(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let offset = if insn.op0_kind() == OpKind::MemorySegEDI {
        cpu.gpr[RDI] & 0xffff_ffff
    } else {
        cpu.gpr[RDI]
    };
    let addr = match insn.segment_prefix() {
        Register::FS => cpu.seg[seg::FS].base.wrapping_add(offset),
        Register::GS => cpu.seg[seg::GS].base.wrapping_add(offset),
        _ => offset,
    };
    let data = bytes_of(load_ymm(cpu, ymm_of(insn.op1_register())));
    let mask = bytes_of(load_ymm(cpu, ymm_of(insn.op2_register())));
    trym!(probe_write(cpu, addr, 16));
    for i in (0..16).filter(|&i| mask[i] & 0x80 != 0) {
        trym!(write_mem(cpu, addr.wrapping_add(i as u64), &data[i..i + 1]));
    }
    SysResult::Done(None)
}

/// The general case: the instruction runs in its stub (see the module documentation).
fn on_host(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    // Only explicit operands can be moved into the stub's buffer and registers.
    let plain = (0..insn.op_count()).all(|i| {
        matches!(
            insn.op_kind(i),
            OpKind::Register | OpKind::Memory | OpKind::Immediate8
        )
    });
    let Some(code) = stub(insn).filter(|_| plain) else {
        log::warn!(
            "VEX instruction `{insn}` at RIP {:#x} cannot run on the host: raising #UD",
            insn.ip()
        );
        cpu.exec.unimplemented_count += 1;
        return ud();
    };
    let mut ctx = YmmCtx {
        mxcsr: cpu.mxcsr & !0x3f,
        rax: cpu.gpr[RAX],
        rcx: cpu.gpr[RCX],
        rdx: cpu.gpr[RDX],
        ..Default::default()
    };
    for r in 0..16 {
        ctx.ymm[r] = load_ymm(cpu, r);
    }
    let mut store = None;
    let mut gpr_dst = None;
    for i in 0..insn.op_count() {
        match insn.op_kind(i) {
            OpKind::Register if insn.op_register(i).is_gpr() => {
                let r = insn.op_register(i);
                if i == 0 {
                    gpr_dst = Some(r);
                    ctx.r8 = reg_value(cpu, r);
                } else {
                    ctx.r9 = reg_value(cpu, r);
                }
            }
            OpKind::Memory => {
                let a = addr.expect("memory operand");
                let size = (insn.memory_size().size()).min(MEM_MAX);
                if needs_alignment(insn.mnemonic()) && !a.is_multiple_of(size as u64) {
                    return gp0();
                }
                if let Some(f) = stack_canonical(insn, a) {
                    return f;
                }
                if i == 0 {
                    store = Some((a, size));
                } else {
                    trym!(read_mem(cpu, a, &mut ctx.mem[..size]));
                }
            }
            _ => {}
        }
    }
    if run(code, &mut ctx) {
        cpu.mxcsr |= ctx.mxcsr_out & 0x3f;
        raise_xm(cpu);
        return SysResult::Fault(cpu.exec.exception);
    }
    if let Some((a, size)) = store {
        let bytes = ctx.mem;
        trym!(write_mem(cpu, a, &bytes[..size]));
    }
    cpu.mxcsr |= ctx.mxcsr_out & 0x3f;
    for r in 0..16 {
        store_ymm(cpu, r, ctx.ymm[r]);
    }
    if let Some(r) = gpr_dst {
        set_reg(cpu, r, ctx.r8);
    }
    if insn.rflags_modified() != 0 {
        set_arith(cpu, ctx.rflags);
    }
    if matches!(
        insn.mnemonic(),
        M::Vpcmpestri | M::Vpcmpestri64 | M::Vpcmpistri
    ) {
        cpu.gpr[RCX] = ctx.rcx & 0xffff_ffff;
    }
    SysResult::Done(None)
}

/// VMASKMOVPS/PD and VPMASKMOVD/Q (see the module documentation). Loads: `dst, mask, m`;
/// stores: `m, mask, src`.
fn masked_move(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> SysResult {
    let wide = insn.op0_register().is_ymm() || insn.op2_register().is_ymm();
    let elem = match insn.memory_size() {
        MemorySize::Packed128_Float32
        | MemorySize::Packed256_Float32
        | MemorySize::Packed128_Int32
        | MemorySize::Packed256_Int32
        | MemorySize::Packed128_UInt32
        | MemorySize::Packed256_UInt32 => 4,
        _ => 8,
    };
    let count = if wide { 32 } else { 16 } / elem;
    let mask_reg = ymm_of(insn.op1_register());
    let mask = bytes_of(load_ymm(cpu, mask_reg));
    let selected = |i: usize| mask[i * elem + elem - 1] & 0x80 != 0;
    if insn.op0_kind() == OpKind::Memory {
        let src = bytes_of(load_ymm(cpu, ymm_of(insn.op2_register())));
        // Every selected element is checked before the first is written: a fault writes
        // nothing (this host).
        for i in (0..count).filter(|&i| selected(i)) {
            let a = addr.wrapping_add((i * elem) as u64);
            if let Some(f) = stack_canonical(insn, a) {
                return f;
            }
            trym!(probe_write(cpu, a, elem as u64));
        }
        for i in (0..count).filter(|&i| selected(i)) {
            let a = addr.wrapping_add((i * elem) as u64);
            trym!(write_mem(cpu, a, &src[i * elem..(i + 1) * elem]));
        }
    } else {
        let mut out = [0u8; 32];
        for i in (0..count).filter(|&i| selected(i)) {
            let a = addr.wrapping_add((i * elem) as u64);
            if let Some(f) = stack_canonical(insn, a) {
                return f;
            }
            trym!(read_mem(cpu, a, &mut out[i * elem..(i + 1) * elem]));
        }
        // VEX.128 zeroes bits 255:128 (`out` is zero there).
        store_ymm(cpu, ymm_of(insn.op0_register()), words_of(&out));
    }
    SysResult::Done(None)
}

/// A YMM register's 32 bytes in memory order.
pub(super) fn bytes_of(v: [u64; 4]) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, q) in v.iter().enumerate() {
        b[8 * i..8 * i + 8].copy_from_slice(&q.to_le_bytes());
    }
    b
}

/// 32 bytes in memory order as a YMM register's quadwords.
pub(super) fn words_of(b: &[u8; 32]) -> [u64; 4] {
    std::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8 bytes")))
}
