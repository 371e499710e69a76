//! Rust functions called by both tiers: the interpreter calls them directly, compiled code
//! through the `extern "C"` entry points in [`compiled`] taking the `*mut CpuState` first. They
//! report failure through `cpu.helper_status` (or their return value for the store helpers).
//!
//! This module does not depend on the interpreter (the interpreter calls it); only the entry
//! points for compiled code do.

mod compiled;
mod sse;

pub use compiled::*;
pub use sse::sse_helper;

use crate::sem::Helper;
use crate::system::{self, Outcome};
use iced_x86::Instruction;
use krr_runtime::gpr::{RAX, RBX, RCX, RDX};
use krr_runtime::{mmu, vector, CpuState, ExceptionRecord};

pub const OK: u64 = 0;
/// An exception was raised (`cpu.exception`).
pub const FAULT: u64 = 1;
/// An access hit no RAM (`cpu.unbacked_phys`).
pub const UNBACKED: u64 = 2;
/// HLT retired (from `krr_interpret`, or from [`system`] for HLT itself).
pub const HALT: u64 = 3;
/// A trap was raised (`cpu.exception`): the instruction retires and the exception is reported
/// with the next RIP (only from [`system`]: INT n, INTO, INT1).
pub const TRAP: u64 = 4;

pub(crate) fn fault_status(cpu: &mut CpuState, f: mmu::MemFault) -> u64 {
    let s = match f {
        mmu::MemFault::Exception => FAULT,
        mmu::MemFault::Unbacked { phys } => {
            cpu.exec.unbacked_phys = phys;
            UNBACKED
        }
    };
    cpu.exec.helper_status = s;
    s
}

fn raise(cpu: &mut CpuState, vector: u8, error_code: Option<u32>) -> u64 {
    cpu.exec.exception = ExceptionRecord {
        vector,
        has_error_code: error_code.is_some(),
        software: false,
        error_code: error_code.unwrap_or(0),
        address: 0,
    };
    cpu.exec.helper_status = FAULT;
    0
}

/// Run a [`Helper`] that needs no instruction: all but [`Helper::Interpret`],
/// [`Helper::System`] (see [`system`]) and [`Helper::MaterializeFlags`] (compiled code's own
/// request, answered by its entry point).
pub fn run(cpu: &mut CpuState, h: Helper, args: [u64; 3]) -> u64 {
    match h {
        Helper::Interpret | Helper::System | Helper::MaterializeFlags => {
            unreachable!("{h:?} is not run through helpers::run")
        }
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
        Helper::Sse => sse_helper(cpu, args),
        Helper::Pdep => pdep(args[0], args[1]),
        Helper::Pext => pext(args[0], args[1]),
    }
}

/// [`Helper::System`]: run the system instruction `insn` on the CPU state. `args` = [linear
/// address of the memory operand, RFLAGS before the instruction, 1 if it has a memory operand].
/// Returns the RIP execution continues at; a fault, trap, HLT or an access to unbacked memory
/// is reported in `cpu.helper_status` ([`FAULT`], [`TRAP`], [`HALT`], [`UNBACKED`]), the
/// exception in `cpu.exception`.
pub fn system(cpu: &mut CpuState, insn: &Instruction, args: [u64; 3]) -> u64 {
    let [addr, flags, has_memory] = args;
    let addr = (has_memory != 0).then_some(addr);
    let (status, next) = match system::execute(cpu, insn, addr, flags) {
        Outcome::Done(next) => (OK, next.unwrap_or(insn.next_ip())),
        // INT n and INTO: software interrupts, reported as traps past the instruction.
        Outcome::Fault(e) if e.software => {
            cpu.exec.exception = e;
            (TRAP, 0)
        }
        Outcome::Fault(e) => {
            cpu.exec.exception = e;
            (FAULT, 0)
        }
        Outcome::Trap(e) => {
            cpu.exec.exception = e;
            (TRAP, 0)
        }
        Outcome::Unbacked(phys) => {
            cpu.exec.unbacked_phys = phys;
            (UNBACKED, 0)
        }
        Outcome::Halt => (HALT, 0),
    };
    cpu.exec.helper_status = status;
    next
}

/// PDEP: deposit the low bits of `x` at the positions of the set bits of `m`.
pub fn pdep(x: u64, mut m: u64) -> u64 {
    let mut r = 0;
    let mut k = 0;
    while m != 0 {
        let low = m & m.wrapping_neg();
        if x >> k & 1 != 0 {
            r |= low;
        }
        k += 1;
        m &= m - 1;
    }
    r
}

/// PEXT: gather the bits of `x` at the positions of the set bits of `m` into the low bits.
pub fn pext(x: u64, mut m: u64) -> u64 {
    let mut r = 0;
    let mut k = 0;
    while m != 0 {
        let low = m & m.wrapping_neg();
        if x & low != 0 {
            r |= 1 << k;
        }
        k += 1;
        m &= m - 1;
    }
    r
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

pub fn helper_id(h: Helper) -> u64 {
    match h {
        // Not called through `krr_helper`: compiled code hands the whole instruction to
        // `krr_interpret` for these.
        Helper::Interpret | Helper::System => 0,
        Helper::MaterializeFlags => 1,
        Helper::Cpuid => 2,
        Helper::Div => 3,
        Helper::Idiv => 4,
        Helper::Sse => 5,
        Helper::Pdep => 6,
        Helper::Pext => 7,
    }
}
