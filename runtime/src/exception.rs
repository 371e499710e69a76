//! The exception record both execution tiers raise exceptions through
//! ([`crate::CpuState::exception`]).

use crate::arch::vector;

/// A raised exception.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionRecord {
    pub vector: u8,
    pub has_error_code: bool,
    /// Raised by INT n / INT3 / INTO: a trap (RIP past the instruction) subject to the gate's
    /// DPL check.
    pub software: bool,
    pub error_code: u32,
    /// The faulting linear address for #PF (also written to CR2 on delivery).
    pub address: u64,
}

impl ExceptionRecord {
    /// A CPU-raised exception `vector`, with an error code if `error_code` is given.
    pub fn fault(vector: u8, error_code: Option<u32>) -> ExceptionRecord {
        ExceptionRecord {
            vector,
            has_error_code: error_code.is_some(),
            software: false,
            error_code: error_code.unwrap_or(0),
            address: 0,
        }
    }

    /// A page fault at linear `address` (CR2 on delivery) with `error_code`.
    pub fn page_fault(error_code: u32, address: u64) -> ExceptionRecord {
        ExceptionRecord {
            address,
            ..ExceptionRecord::fault(vector::PF, Some(error_code))
        }
    }

    /// A software interrupt (INT n, INT3, INTO) to `vector`: a trap without error code,
    /// subject to the gate's DPL check.
    pub fn software(vector: u8) -> ExceptionRecord {
        ExceptionRecord {
            software: true,
            ..ExceptionRecord::fault(vector, None)
        }
    }

    /// The error code if the record has one.
    pub fn error_code(&self) -> Option<u32> {
        self.has_error_code.then_some(self.error_code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_match_the_literals_they_replace() {
        assert_eq!(
            ExceptionRecord::fault(vector::GP, Some(0x18)),
            ExceptionRecord {
                vector: 13,
                has_error_code: true,
                software: false,
                error_code: 0x18,
                address: 0,
            }
        );
        assert_eq!(
            ExceptionRecord::fault(vector::UD, None),
            ExceptionRecord {
                vector: 6,
                ..Default::default()
            }
        );
        assert_eq!(
            ExceptionRecord::page_fault(7, 0xdead_b000),
            ExceptionRecord {
                vector: 14,
                has_error_code: true,
                software: false,
                error_code: 7,
                address: 0xdead_b000,
            }
        );
        let int = ExceptionRecord::software(0x80);
        assert_eq!(
            (int.vector, int.software, int.has_error_code),
            (0x80, true, false)
        );
        assert_eq!(int.error_code(), None);
        assert_eq!(ExceptionRecord::fault(8, Some(0)).error_code(), Some(0));
    }
}
