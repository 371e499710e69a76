//! One vocabulary for how an instruction, a helper call or a compiled block ended, shared by
//! compiled code (as the `u64` in `CpuState::helper_status`), the helpers and the interpreter.
//! The values are today's helper status codes (the jit's `helpers::OK`, `FAULT`, `UNBACKED`,
//! `HALT`), so existing compiled code and this type agree.

/// How an operation ended.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed normally; execution continues.
    Continue = 0,
    /// An architectural exception was raised; `CpuState::exception` describes it.
    Fault = 1,
    /// An access hit a physical address with no RAM behind it; `CpuState::unbacked_phys`
    /// holds it and nothing was changed.
    Unbacked = 2,
    /// HLT retired: the CPU waits for an interrupt.
    Halt = 3,
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
        ] {
            assert_eq!(o.as_u64(), v);
            assert_eq!(Outcome::from_u64(v), Some(o));
        }
        assert_eq!(Outcome::from_u64(4), None);
        assert_eq!(Outcome::from_u64(u64::MAX), None);
    }
}
