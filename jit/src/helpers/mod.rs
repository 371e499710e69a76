//! Rust functions called by both tiers: the interpreter calls them directly, compiled code
//! through the `extern "C"` entry points in [`compiled`] taking the `*mut CpuState` first. They
//! report failure as an [`Outcome`] in `cpu.helper_status` (and, for the store helpers, as
//! their return value).
//!
//! This module does not depend on the interpreter (the interpreter calls it); only the entry
//! points for compiled code do.

mod compiled;
pub mod host_exec;
pub mod pure;

pub use compiled::*;

use crate::sem::Helper;
use crate::system::{self, SysResult};
use iced_x86::Instruction;
use krr_runtime::gpr::{RAX, RBX, RCX, RDX};
use krr_runtime::{mmu, vector, CpuState, ExceptionRecord, Outcome};

/// The helpers compiled code calls through `krr_helper`, in the order of their ids: the one
/// table both directions ([`Helper::id`], [`Helper::from_id`]) are derived from.
/// [`Helper::Interpret`] and [`Helper::System`] are not in it: compiled code hands the whole
/// instruction to `krr_interpret` for those.
const HELPERS: [Helper; 6] = [
    Helper::Cpuid,
    Helper::Div,
    Helper::Idiv,
    Helper::SseHost,
    Helper::Pdep,
    Helper::Pext,
];

impl Helper {
    /// The id compiled code passes to `krr_helper` for this helper: its index in [`HELPERS`].
    pub fn id(self) -> u64 {
        HELPERS
            .iter()
            .position(|&h| h == self)
            .unwrap_or_else(|| unreachable!("{self:?} is not called through krr_helper"))
            as u64
    }

    /// The helper with id `id` (see [`Helper::id`]).
    pub fn from_id(id: u64) -> Option<Helper> {
        HELPERS.get(usize::try_from(id).ok()?).copied()
    }
}

/// Report a failed memory access in the status word (and the unbacked address in the state).
pub(crate) fn fault_status(cpu: &mut CpuState, f: mmu::MemFault) -> Outcome {
    let s = match f {
        mmu::MemFault::Exception => Outcome::Fault,
        mmu::MemFault::Unbacked { phys } => {
            cpu.exec.unbacked_phys = phys;
            Outcome::Unbacked
        }
    };
    cpu.exec.helper_status = s;
    s
}

fn raise(cpu: &mut CpuState, vector: u8, error_code: Option<u32>) -> u64 {
    cpu.exec.exception = ExceptionRecord::fault(vector, error_code);
    cpu.exec.helper_status = Outcome::Fault;
    0
}

/// Run a [`Helper`] that needs no instruction: all but [`Helper::Interpret`] and
/// [`Helper::System`] (see [`system`]).
pub fn run(cpu: &mut CpuState, h: Helper, args: [u64; 3]) -> u64 {
    match h {
        Helper::Interpret | Helper::System => {
            unreachable!("{h:?} is not run through helpers::run")
        }
        Helper::Cpuid => {
            krr_runtime::bus::with_bus(cpu, |bus, cpu| bus.model_answered(cpu, "CPUID"));
            let [a, b, c, d] =
                cpu.cpuid
                    .query(cpu.gpr[RAX] as u32, cpu.gpr[RCX] as u32, cpu.cr4, cpu.xcr0);
            cpu.gpr[RAX] = a as u64;
            cpu.gpr[RBX] = b as u64;
            cpu.gpr[RCX] = c as u64;
            cpu.gpr[RDX] = d as u64;
            0
        }
        Helper::Div => divide(cpu, args[0] as u32, args[1], false),
        Helper::Idiv => divide(cpu, args[0] as u32, args[1], true),
        Helper::SseHost => host_exec::sse_host_helper(cpu, args),
        Helper::Pdep => pdep(args[0], args[1]),
        Helper::Pext => pext(args[0], args[1]),
    }
}

/// [`Helper::System`]: run the system instruction `insn` on the CPU state. `args` = [linear
/// address of the memory operand, RFLAGS before the instruction, 1 if it has a memory operand].
/// Returns the RIP execution continues at. This is the one place a [`SysResult`] becomes an
/// [`Outcome`]: a fault, trap (INT n, INTO, INT1), HLT or an access to unbacked memory is
/// reported in `cpu.helper_status`, its payload written where [`Outcome`] says.
pub fn system(cpu: &mut CpuState, insn: &Instruction, args: [u64; 3]) -> u64 {
    let [addr, flags, has_memory] = args;
    let addr = (has_memory != 0).then_some(addr);
    let (status, next) = match system::execute(cpu, insn, addr, flags) {
        SysResult::Done(next) => (Outcome::Continue, next.unwrap_or(insn.next_ip())),
        // INT n and INTO: software interrupts, reported as traps past the instruction.
        SysResult::Fault(e) if e.software => {
            cpu.exec.exception = e;
            (Outcome::Trap, 0)
        }
        SysResult::Fault(e) => {
            cpu.exec.exception = e;
            (Outcome::Fault, 0)
        }
        SysResult::Trap(e) => {
            cpu.exec.exception = e;
            (Outcome::Trap, 0)
        }
        SysResult::Unbacked(phys) => {
            cpu.exec.unbacked_phys = phys;
            (Outcome::Unbacked, 0)
        }
        SysResult::Halt => (Outcome::Halt, 0),
    };
    cpu.exec.helper_status = status;
    // The bus may want the engine back before the next instruction: the budget ends here
    // (every tier checks it before the next block, chained or not).
    if krr_runtime::bus::with_bus(cpu, |bus, cpu| bus.stop_after_instruction(cpu)) == Some(true) {
        cpu.exec.icount_limit = cpu.exec.icount_limit.min(cpu.icount + 1);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_ids_round_trip() {
        for (i, &h) in HELPERS.iter().enumerate() {
            assert_eq!(h.id(), i as u64);
            assert_eq!(Helper::from_id(h.id()), Some(h));
        }
        assert_eq!(Helper::from_id(HELPERS.len() as u64), None);
        assert_eq!(Helper::from_id(u64::MAX), None);
    }
}
