//! System instructions: everything that works directly on the [`CpuState`] rather than through
//! the semantics' [`Builder`](crate::sem::Builder): control and debug registers, MSRs,
//! descriptor tables and segment loads, XSAVE/FXSAVE and x87 control, far transfers and
//! privilege changes, port IO and the nondeterministic inputs.
//!
//! They are rare and change how later code must be translated, so they always end a block.
//! Both tiers reach them through one path: the semantics' router emits a call of
//! [`Helper::System`](crate::sem::Helper::System) with the memory operand's address and RFLAGS;
//! the interpreter's `call` passes it to `helpers::system`, which runs [`execute`]. Compiled code
//! hands the whole instruction to the interpreter, which then takes the same path. The code here
//! performs every check before its first write, so a faulting instruction changes nothing.

use crate::sem::{gpr_of, read_reg_value, system_family, write_reg_value, FlagOp, SystemFamily};
use iced_x86::{Instruction, Mnemonic as M, OpKind, Register};
use krr_runtime::arch::{cr0, cr4, efer};
use krr_runtime::debugreg::{self, dr6, dr7};
use krr_runtime::desc::{self, DescFault};
use krr_runtime::gpr::{RAX, RCX, RDI, RDX, RSI, RSP};
use krr_runtime::{bus, mmu, rflags, seg, vector, CpuState, ExceptionRecord, Segment};

/// Does the engine run `insn` here (and so end blocks after it)?
pub fn handles(insn: &Instruction) -> bool {
    crate::sem::is_system_instruction(insn)
}

/// Run a system instruction on the CPU state. `addr` is the linear address of its memory
/// operand (if it has one), `flags` RFLAGS before it, with the arithmetic flags materialised.
pub fn execute(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>, flags: u64) -> SysResult {
    match system_family(insn) {
        Some(SystemFamily::Control) => control::execute(cpu, insn, addr, flags),
        Some(SystemFamily::Segments) => segments::execute(cpu, insn, addr, flags),
        Some(SystemFamily::Msr) => msr::execute(cpu, insn),
        Some(SystemFamily::Inputs) => inputs::execute(cpu, insn),
        Some(SystemFamily::Privilege) => far::execute(cpu, insn, flags),
        Some(SystemFamily::FarTransfer) => far::far_transfer(cpu, insn, addr),
        Some(SystemFamily::ExtendedState) => xsave::execute(cpu, insn, addr),
        Some(SystemFamily::PortIo) => io::port_io(cpu, insn),
        Some(SystemFamily::X87) => x87::execute(cpu, insn, addr),
        Some(SystemFamily::Compat) => compat::execute(cpu, insn, addr, flags),
        Some(SystemFamily::Avx) => avx::execute(cpu, insn, addr),
        None => {
            log::warn!(
                "system instruction `{insn}` at RIP {:#x} is not implemented: raising #UD",
                insn.ip()
            );
            cpu.exec.unimplemented_count += 1;
            ud()
        }
    }
}

/// How a system instruction run on the CPU state ended, with its payload. Only
/// `helpers::system` turns it into the runtime's [`krr_runtime::Outcome`] (writing the payload
/// into the CPU state).
pub enum SysResult {
    /// Retired; continue at the given RIP (or the next instruction).
    Done(Option<u64>),
    /// A fault (or, with `software` set, the trap of INT n / INTO): nothing changed.
    Fault(ExceptionRecord),
    /// A trap that is not a software interrupt (INT1): reported past the instruction, which
    /// retires, without the gate DPL check.
    Trap(ExceptionRecord),
    /// An access hit a physical address with no RAM: nothing changed.
    Unbacked(u64),
    /// HLT retired.
    Halt,
}

fn gp0() -> SysResult {
    SysResult::Fault(fault(vector::GP, Some(0)))
}

fn ud() -> SysResult {
    SysResult::Fault(fault(vector::UD, None))
}

fn fault(v: u8, code: Option<u32>) -> ExceptionRecord {
    ExceptionRecord::fault(v, code)
}

impl From<DescFault> for SysResult {
    fn from(f: DescFault) -> SysResult {
        match f {
            DescFault::Exception(e) => SysResult::Fault(e),
            DescFault::Unbacked(p) => SysResult::Unbacked(p),
        }
    }
}

/// `?` for descriptor-table results inside functions returning `SysResult`.
macro_rules! tryd {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(f) => return SysResult::from(f),
        }
    };
}

fn cr0(cpu: &CpuState) -> u64 {
    cpu.cr0
}

/// A general-purpose register (any width), zero-extended.
fn reg_value(cpu: &CpuState, r: Register) -> u64 {
    read_reg_value(&cpu.gpr, r)
}

/// Write a general-purpose register with the x86-64 merge rules.
fn set_reg(cpu: &mut CpuState, r: Register, v: u64) {
    write_reg_value(&mut cpu.gpr, r, v);
}

fn read_mem(cpu: &mut CpuState, addr: u64, buf: &mut [u8]) -> Result<(), SysResult> {
    let idx = mmu::mmu_index(cpu);
    mmu::load_bytes(cpu, addr, buf, idx).map_err(|f| mem_sys(cpu, f))
}

fn write_mem(cpu: &mut CpuState, addr: u64, data: &[u8]) -> Result<(), SysResult> {
    let idx = mmu::mmu_index(cpu);
    mmu::store_bytes(cpu, addr, data, idx).map_err(|f| mem_sys(cpu, f))
}

/// Translate `[addr, addr + len)` for a write at the current privilege, faulting as the store
/// would, without storing (the caller stores once it has the value).
fn probe_write(cpu: &mut CpuState, addr: u64, len: u64) -> Result<(), SysResult> {
    let user = mmu::is_user_index(mmu::mmu_index(cpu));
    let last = addr.wrapping_add(len - 1);
    // A range crossing into a page that faults faults at that page's first byte.
    let second = if last >> 12 != addr >> 12 {
        last & !0xfff
    } else {
        addr
    };
    for a in [addr, second] {
        if let Err(e) = mmu::translate(cpu, a, mmu::Access::Write, user) {
            cpu.exec.exception = e;
            return Err(SysResult::Fault(e));
        }
    }
    Ok(())
}

fn mem_sys(cpu: &CpuState, f: mmu::MemFault) -> SysResult {
    match f {
        mmu::MemFault::Exception => SysResult::Fault(cpu.exec.exception),
        mmu::MemFault::Unbacked { phys } => SysResult::Unbacked(phys),
    }
}

macro_rules! trym {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return s,
        }
    };
}

/// The stack's address size in bytes: 8 in 64-bit mode, 4 or 2 (SS.B) in compatibility mode.
fn stack_width(cpu: &CpuState) -> u64 {
    crate::mode::stack_bytes(crate::mode::code_bits(cpu)) as u64
}

/// The linear address of the stack location `sp` (RSP arithmetic already done): itself in
/// 64-bit mode; in compatibility mode wrapped to the stack's width, plus SS's base, wrapped
/// at 4 GiB.
fn stack_linear(cpu: &CpuState, sp: u64) -> u64 {
    match stack_width(cpu) {
        8 => sp,
        w => {
            let off = sp & (u64::MAX >> (64 - 8 * w));
            off.wrapping_add(cpu.seg[seg::SS].base) & 0xffff_ffff
        }
    }
}

/// The new RSP after moving the stack pointer from `old` to `new`: in compatibility mode
/// only ESP (zero-extended, as every 32-bit register write) or SP changes.
fn stack_pointer(cpu: &CpuState, old: u64, new: u64) -> u64 {
    match stack_width(cpu) {
        8 => new,
        4 => new & 0xffff_ffff,
        _ => (old & !0xffff) | (new & 0xffff),
    }
}

/// Is the CPU in compatibility mode (a code segment without the L bit)?
fn in_compat_mode(cpu: &CpuState) -> bool {
    crate::mode::code_bits(cpu) != 0
}

/// Set the six arithmetic flags to concrete bits.
fn set_arith(cpu: &mut CpuState, bits: u64) {
    cpu.cc_op = FlagOp::CONCRETE.encode();
    cpu.cc_res = bits & rflags::ARITH;
}

/// Write a whole RFLAGS value (arithmetic bits into the lazy state).
fn set_rflags(cpu: &mut CpuState, v: u64) {
    set_arith(cpu, v);
    cpu.rflags = (v & !rflags::ARITH) | rflags::FIXED1;
}

// The families come after the macros above, which they use.
mod avx;
mod avx_gather;
mod avx_stub;
mod compat;
mod control;
mod far;
mod inputs;
mod io;
mod msr;
mod segments;
mod x87;
mod xsave;
