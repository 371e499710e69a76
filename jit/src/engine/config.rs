//! How an [`super::Engine`] runs: tiering, block size, exceptions, profile, code cache.

/// When blocks get compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierPolicy {
    /// Never: the precise interpreter runs everything.
    Interpret,
    /// Every block on its first execution.
    CompileAll,
    /// After `hot_threshold` executions, compiled in batches.
    Tiered,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub policy: TierPolicy,
    /// Instructions per block at most (1 = single-step).
    pub max_block_insns: usize,
    pub hot_threshold: u32,
    /// Blocks compiled together (one finalize per batch).
    pub batch: usize,
    /// Deliver exceptions through the guest's IDT and keep running (a whole machine), instead
    /// of returning them to the caller (user-mode snippets).
    pub deliver_exceptions: bool,
    /// Tiered: generate code on a second thread while the interpreter goes on (the result is
    /// the same; only when a block starts running compiled code changes).
    pub background_compile: bool,
    /// Whose results for undefined flags and quirks the engine gives (`docs/PROFILES.md`).
    /// Fixed for the engine's life: decoded and compiled blocks have it baked in.
    pub profile: krr_runtime::Profile,
    /// Raise #UD for instructions of extensions the CPU model does not report (as a CPU
    /// without them does). Off for replaying a kernel whose feature choices were made on
    /// another CPU (KRR recordings: the recording host's CPUID is not in the recording).
    pub cpuid_gate: bool,
    /// The persistent code cache's directory (`code_cache`): compiled blocks are taken from
    /// there and added to it. `None` (the default): off.
    pub code_cache: Option<&'static std::path::Path>,
    /// Tiered with background compilation: executions after which a block is installed
    /// from the code cache if it is there (it still compiles at `hot_threshold` if not).
    /// 1, its first: on the Debian boot replay 1, 3, 10, 20 and 100 measured within the
    /// noise of each other except 100 (slower), all far faster than 1000.
    pub cached_threshold: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: TierPolicy::Tiered,
            max_block_insns: 64,
            hot_threshold: 1000,
            batch: 16,
            deliver_exceptions: false,
            background_compile: true,
            profile: krr_runtime::Profile::Host,
            cpuid_gate: true,
            code_cache: None,
            cached_threshold: 1,
        }
    }
}
