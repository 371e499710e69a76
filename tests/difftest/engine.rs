//! The single place where the differential tests call the engine.

use krr_jit::snippet::{Snippet, SnippetResult, Tier, UserState};

/// Instruction budget per engine run (REP strings and LOOPs in the generated cases stay far
/// below this).
pub const MAX_INSTRUCTIONS: u64 = 100_000;

/// Runs the snippet in the engine; a panic in the engine is reported as an error.
pub fn run(snippet: &Snippet, state: &UserState, tier: Tier) -> Result<SnippetResult, String> {
    let call = || krr_jit::snippet::run_snippet(snippet, state, tier, MAX_INSTRUCTIONS);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".to_string());
        Err(format!("engine panicked: {msg}"))
    })
}
