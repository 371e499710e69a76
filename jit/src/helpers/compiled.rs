//! The `extern "C"` entry points compiled code calls: memory slow paths, the helper call and
//! whole-instruction interpretation. They take the `*mut CpuState` compiled code was entered
//! with first and report failure as an [`Outcome`] in `cpu.helper_status` (and as their
//! return value where they have no other).

use super::{fault_status, run};
use crate::interp;
use crate::sem::Helper;
use iced_x86::Instruction;
use krr_runtime::{mmu, CpuState, Outcome};

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
        Ok(()) => Outcome::Continue.as_u64(),
        Err(f) => fault_status(cpu, f).as_u64(),
    }
}

/// The fault a store would raise, without storing: `Continue` or the failure's outcome.
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_probe_write(cpu: *mut CpuState, addr: u64, size_and_mmu: u64) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let size = (size_and_mmu & 0xff) as usize;
    let mmu_idx = (size_and_mmu >> 8) as usize;
    match mmu::probe_write(cpu, addr, size, mmu_idx) {
        Ok(()) => Outcome::Continue.as_u64(),
        Err(f) => fault_status(cpu, f).as_u64(),
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
            cpu.exec.scratch[0] = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            cpu.exec.scratch[1] = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
            Outcome::Continue.as_u64()
        }
        Err(f) => fault_status(cpu, f).as_u64(),
    }
}

/// 16-byte store from `cpu.scratch[0..2]`.
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_store128(cpu: *mut CpuState, addr: u64, mmu_idx: u64) -> u64 {
    // SAFETY: see the section comment.
    let cpu = unsafe { &mut *cpu };
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&cpu.exec.scratch[0].to_le_bytes());
    buf[8..].copy_from_slice(&cpu.exec.scratch[1].to_le_bytes());
    match mmu::store_bytes(cpu, addr, &buf, mmu_idx as usize) {
        Ok(()) => Outcome::Continue.as_u64(),
        Err(f) => fault_status(cpu, f).as_u64(),
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
    let h = Helper::from_id(helper)
        .unwrap_or_else(|| unreachable!("compiled code passes only ids from Helper::id"));
    run(cpu, h, [a, b, c])
}

/// Interpret one whole instruction for compiled code. The state is written back before the
/// call; on return `cpu.rip`/`cpu.icount` are updated as the interpreter does. Returns how it
/// ended, also left in `cpu.helper_status` ([`Outcome::Continue`] when it retired; the
/// payload of any other outcome is in the CPU state).
/// # Safety
/// `cpu` must be the live CPU state compiled code was entered with.
pub unsafe extern "C" fn krr_interpret(cpu: *mut CpuState, insn: *const Instruction) -> u64 {
    // SAFETY: see the section comment; `insn` points into the block's decoded instructions,
    // which live as long as the compiled code that references them.
    let (cpu, insn) = unsafe { (&mut *cpu, &*insn) };
    let outcome = interp::step(cpu, insn);
    cpu.exec.helper_status = outcome;
    outcome.as_u64()
}
