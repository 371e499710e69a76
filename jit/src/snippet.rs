//! Run a short piece of user-mode (CPL3, 64-bit) code in the engine from a given architectural
//! state: the engine side of the differential tests against the host CPU and of the benchmarks.
//!
//! The snippet's code is mapped read+execute at `code_addr` and followed by an INT3; each
//! region is mapped read+write(+no-execute) at its page-aligned address, everything else is
//! unmapped. The run ends at the INT3 after the code (reported as [`Outcome::Completed`]), at
//! the first exception (reported with its vector, error code and faulting RIP), or after
//! `max_instructions`.

/// Which execution tier runs the snippet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The precise interpreter only.
    Interpreter,
    /// Cranelift-compiled multi-instruction blocks from the first execution (no interpreter).
    Jit,
    /// Cranelift-compiled blocks of one instruction each.
    JitSingleStep,
    /// The default tiered engine: interpreter first, compiled after the hot threshold.
    Tiered,
}

/// User-visible architectural state compared between the engine and the host CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ArchState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub xmm: [u128; 16],
    pub mxcsr: u32,
    pub fs_base: u64,
    pub gs_base: u64,
}

/// A page-aligned memory region given to the snippet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Snippet {
    pub code_addr: u64,
    pub code: Vec<u8>,
    pub regions: Vec<Region>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the INT3 placed after the code; `rip` is just past that INT3, as natively.
    Completed,
    /// An exception was raised at `rip` (the faulting instruction).
    Exception { vector: u8, error_code: Option<u32>, address: u64, rip: u64 },
    /// `max_instructions` retired first.
    OutOfBudget,
}

#[derive(Clone, Debug)]
pub struct SnippetResult {
    pub state: ArchState,
    /// Final contents of each region, in the order given.
    pub regions: Vec<Region>,
    pub outcome: Outcome,
    /// Instructions retired (the INT3 not included).
    pub instructions: u64,
}
