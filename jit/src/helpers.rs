//! Rust functions called by both tiers: the interpreter calls them directly, compiled code
//! through `extern "C"` entry points taking the `*mut CpuState` first. They report failure
//! through `cpu.helper_status` (or their return value for the store helpers).

use crate::interp;
use crate::sem::Helper;
use iced_x86::Instruction;
use krr_runtime::gpr::{RAX, RBX, RCX, RDX};
use krr_runtime::{mmu, vector, CpuState, ExceptionRecord};

pub const OK: u64 = 0;
/// An exception was raised (`cpu.exception`).
pub const FAULT: u64 = 1;
/// An access hit no RAM (`cpu.unbacked_phys`).
pub const UNBACKED: u64 = 2;
/// HLT retired (only from `krr_interpret`).
pub const HALT: u64 = 3;

fn fault_status(cpu: &mut CpuState, f: mmu::MemFault) -> u64 {
    let s = match f {
        mmu::MemFault::Exception => FAULT,
        mmu::MemFault::Unbacked { phys } => {
            cpu.unbacked_phys = phys;
            UNBACKED
        }
    };
    cpu.helper_status = s;
    s
}

fn raise(cpu: &mut CpuState, vector: u8, error_code: Option<u32>) -> u64 {
    cpu.exception = ExceptionRecord {
        vector,
        has_error_code: error_code.is_some(),
        software: false,
        error_code: error_code.unwrap_or(0),
        address: 0,
    };
    cpu.helper_status = FAULT;
    0
}

/// Run a [`Helper`] other than [`Helper::Interpret`].
pub fn run(cpu: &mut CpuState, h: Helper, args: [u64; 3]) -> u64 {
    match h {
        Helper::Interpret => unreachable!("Interpret needs the instruction"),
        Helper::MaterializeFlags => interp::materialize_flags(cpu),
        Helper::Cpuid => {
            let [a, b, c, d] = cpu
                .cpuid
                .query(cpu.gpr[RAX] as u32, cpu.gpr[RCX] as u32, cpu.cr4);
            cpu.gpr[RAX] = a as u64;
            cpu.gpr[RBX] = b as u64;
            cpu.gpr[RCX] = c as u64;
            cpu.gpr[RDX] = d as u64;
            0
        }
        Helper::Div => divide(cpu, args[0] as u32, args[1], false),
        Helper::Idiv => divide(cpu, args[0] as u32, args[1], true),
        Helper::Sse => crate::sem::sse_helper(cpu, args),
    }
}

/// DIV/IDIV of RDX:RAX (or the narrower pair) by `src`; #DE on zero or overflow.
fn divide(cpu: &mut CpuState, size: u32, src: u64, signed: bool) -> u64 {
    let bits = size * 8;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let (lo, hi) = if size == 1 {
        (cpu.gpr[RAX] & 0xff, (cpu.gpr[RAX] >> 8) & 0xff)
    } else {
        (cpu.gpr[RAX] & mask, cpu.gpr[RDX] & mask)
    };
    let dividend = ((hi as u128) << bits) | lo as u128;
    let divisor = src & mask;
    if divisor == 0 {
        return raise(cpu, vector::DE, None);
    }
    let (q, r) = if signed {
        let sh = 128 - 2 * bits;
        let n = ((dividend << sh) as i128) >> sh;
        let d = ((divisor as i128) << (128 - bits)) >> (128 - bits);
        let q = n.wrapping_div(d);
        let r = n.wrapping_rem(d);
        let lim = 1i128 << (bits - 1);
        if q >= lim || q < -lim || (n == i128::MIN && d == -1) {
            return raise(cpu, vector::DE, None);
        }
        (q as u64 & mask, r as u64 & mask)
    } else {
        let q = dividend / divisor as u128;
        if q > mask as u128 {
            return raise(cpu, vector::DE, None);
        }
        (q as u64, (dividend % divisor as u128) as u64)
    };
    match size {
        1 => cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xffff) | (r << 8) | q,
        2 => {
            cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xffff) | q;
            cpu.gpr[RDX] = (cpu.gpr[RDX] & !0xffff) | r;
        }
        _ => {
            cpu.gpr[RAX] = q;
            cpu.gpr[RDX] = r;
        }
    }
    0
}

// ---- entry points for compiled code ----
//
// SAFETY (all of them): compiled code passes the `*mut CpuState` it was entered with, which the
// engine keeps alive and exclusively borrowed for the whole run of compiled code.

/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_load_slow(
    cpu: *mut CpuState,
    addr: u64,
    size: u64,
    mmu_idx: u64,
) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    match mmu::load_slow(cpu, addr, size as usize, mmu_idx as usize) {
        Ok(v) => v,
        Err(f) => {
            fault_status(cpu, f);
            0
        }
    }
}

/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_store_slow(
    cpu: *mut CpuState,
    addr: u64,
    value: u64,
    size_and_mmu: u64,
) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let size = (size_and_mmu & 0xff) as usize;
    let mmu_idx = (size_and_mmu >> 8) as usize;
    match mmu::store_slow(cpu, addr, value, size, mmu_idx) {
        Ok(()) => OK,
        Err(f) => fault_status(cpu, f),
    }
}

/// The fault a store would raise, without storing: OK or the fault status.
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_probe_write(cpu: *mut CpuState, addr: u64, size_and_mmu: u64) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let size = (size_and_mmu & 0xff) as usize;
    let mmu_idx = (size_and_mmu >> 8) as usize;
    match mmu::probe_write(cpu, addr, size, mmu_idx) {
        Ok(()) => OK,
        Err(f) => fault_status(cpu, f),
    }
}

/// 16-byte load into `cpu.scratch[0..2]`.
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_load128(cpu: *mut CpuState, addr: u64, mmu_idx: u64) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let mut buf = [0u8; 16];
    match mmu::load_bytes(cpu, addr, &mut buf, mmu_idx as usize) {
        Ok(()) => {
            cpu.scratch[0] = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            cpu.scratch[1] = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
            OK
        }
        Err(f) => fault_status(cpu, f),
    }
}

/// 16-byte store from `cpu.scratch[0..2]`.
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_store128(cpu: *mut CpuState, addr: u64, mmu_idx: u64) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&cpu.scratch[0].to_le_bytes());
    buf[8..].copy_from_slice(&cpu.scratch[1].to_le_bytes());
    match mmu::store_bytes(cpu, addr, &buf, mmu_idx as usize) {
        Ok(()) => OK,
        Err(f) => fault_status(cpu, f),
    }
}

/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_helper(
    cpu: *mut CpuState,
    helper: u64,
    a: u64,
    b: u64,
    c: u64,
) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let h = match helper {
        1 => Helper::MaterializeFlags,
        2 => Helper::Cpuid,
        3 => Helper::Div,
        4 => Helper::Idiv,
        5 => Helper::Sse,
        _ => unreachable!("compiled code passes only helper ids it got from helper_id"),
    };
    run(cpu, h, [a, b, c])
}

pub fn helper_id(h: Helper) -> u64 {
    match h {
        Helper::Interpret => 0,
        Helper::MaterializeFlags => 1,
        Helper::Cpuid => 2,
        Helper::Div => 3,
        Helper::Idiv => 4,
        Helper::Sse => 5,
    }
}

/// Interpret one whole instruction for compiled code. The state is written back before the
/// call; on return `cpu.rip`/`cpu.icount` are updated as the interpreter does. Returns
/// [`OK`] when it retired, else the status (the exception is in `cpu.exception`).
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_interpret(cpu: *mut CpuState, insn: *const Instruction) -> u64 {
    // SAFETY: see the section comment; `insn` points into the block's decoded instructions,
    // which live as long as the compiled code that references them.
    let (cpu, insn) = unsafe { (&mut *cpu, &*insn) };
    match interp::step(cpu, insn) {
        interp::StepResult::Retired => OK,
        interp::StepResult::Exception { .. } => {
            cpu.helper_status = FAULT;
            FAULT
        }
        interp::StepResult::Unbacked => {
            cpu.helper_status = UNBACKED;
            UNBACKED
        }
        interp::StepResult::Halt => {
            cpu.helper_status = HALT;
            HALT
        }
    }
}
