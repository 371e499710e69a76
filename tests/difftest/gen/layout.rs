//! The fixed memory layout of every generated snippet: the code page, the read/write regions
//! and their lengths, and the initial MXCSR.

/// The code page (code may straddle into the following page).
pub const CODE_PAGE: u64 = 0x1000_0000;
/// General data region (two pages, so accesses can straddle a page boundary inside it).
pub const DATA0: u64 = 0x2000_0000;
pub const DATA0_LEN: u64 = 0x2000;
/// Second data region (string destinations, second operands).
pub const DATA1: u64 = 0x2100_0000;
pub const DATA1_LEN: u64 = 0x1000;
/// The stack region.
pub const STACK: u64 = 0x2200_0000;
pub const STACK_LEN: u64 = 0x2000;

pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// The regions every generated snippet gets: `(address, length)`.
pub fn layout() -> [(u64, u64); 3] {
    [(DATA0, DATA0_LEN), (DATA1, DATA1_LEN), (STACK, STACK_LEN)]
}
