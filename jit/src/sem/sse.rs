//! SSE/SSE2 instructions.

use super::*;

pub fn execute<B: Builder>(b: &mut B) -> R<()> {
    Err(b.unimplemented())
}

/// The [`Helper::Sse`] entry: complex SSE operations on XMM registers in the CPU state.
pub fn sse_helper(cpu: &mut krr_runtime::CpuState, args: [u64; 3]) -> u64 {
    let _ = (cpu, args);
    unreachable!("no SSE helper operations are defined yet")
}
