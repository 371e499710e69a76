//! The engine options `run`, `record` and `replay` share.

use clap::Args;
use krr_jit::{EngineConfig, TierPolicy};

#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// One instruction per block (precise mode); results are identical to the default.
    #[arg(long)]
    pub singlestep: bool,
    /// Interpreter only (no JIT).
    #[arg(long)]
    pub interpret: bool,
    /// Executions of a block before it is compiled.
    #[arg(long, default_value_t = EngineConfig::default().hot_threshold)]
    pub hot_threshold: u32,
    /// Compile on the dispatcher's thread instead of a second one (no second core free).
    #[arg(long)]
    pub no_background_compile: bool,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        let d = EngineConfig::default();
        EngineConfig {
            policy: if self.interpret {
                TierPolicy::Interpret
            } else {
                TierPolicy::Tiered
            },
            max_block_insns: if self.singlestep {
                1
            } else {
                d.max_block_insns
            },
            hot_threshold: self.hot_threshold,
            background_compile: !self.no_background_compile,
            ..d
        }
    }
}
