//! One vocabulary for how an instruction, a helper call or a compiled block ended, shared by
//! compiled code (the `u64` a compiled block returns), the helpers (the status word
//! `CpuState::exec.helper_status`), the interpreter (the result of a step) and the dispatcher,
//! which turns it into the engine's public exit.
//!
//! The outcome itself carries no payload; what goes with it is in the CPU state: the exception
//! record of [`Outcome::Fault`] and [`Outcome::Trap`] in `cpu.exec.exception`, the physical
//! address of [`Outcome::Unbacked`] in `cpu.exec.unbacked_phys`.

/// How an operation ended.
#[repr(u64)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Completed normally; execution continues (RIP at the next instruction). Zero, so
    /// compiled code tests a status word for "anything else" with a branch on non-zero.
    #[default]
    Continue = 0,
    /// An architectural exception was raised before the instruction retired;
    /// `cpu.exec.exception` describes it and RIP is at the instruction.
    Fault = 1,
    /// An access hit a physical address with no RAM behind it; `cpu.exec.unbacked_phys`
    /// holds it and nothing was changed (RIP at the instruction).
    Unbacked = 2,
    /// HLT retired: the CPU waits for an interrupt (RIP past it).
    Halt = 3,
    /// The instruction retired and raised an exception reported after it (INT n, INT3, INTO,
    /// INT1): `cpu.exec.exception` describes it and RIP is past the instruction.
    Trap = 4,
    /// A compiled block did not fit in the instruction budget: nothing of it ran (only ever
    /// returned by compiled code, never a helper status).
    Budget = 5,
}

impl Outcome {
    /// The status word compiled code and helpers exchange.
    pub const fn as_u64(self) -> u64 {
        self as u64
    }

    /// The outcome a status word encodes, `None` for a value no outcome has.
    pub const fn from_u64(v: u64) -> Option<Outcome> {
        Some(match v {
            0 => Outcome::Continue,
            1 => Outcome::Fault,
            2 => Outcome::Unbacked,
            3 => Outcome::Halt,
            4 => Outcome::Trap,
            5 => Outcome::Budget,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for (v, o) in [
            (0, Outcome::Continue),
            (1, Outcome::Fault),
            (2, Outcome::Unbacked),
            (3, Outcome::Halt),
            (4, Outcome::Trap),
            (5, Outcome::Budget),
        ] {
            assert_eq!(o.as_u64(), v);
            assert_eq!(Outcome::from_u64(v), Some(o));
        }
        assert_eq!(Outcome::from_u64(6), None);
        assert_eq!(Outcome::from_u64(u64::MAX), None);
        assert_eq!(Outcome::default(), Outcome::Continue);
    }
}
