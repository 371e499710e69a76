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
    /// Neither use nor fill the persistent code cache.
    #[arg(long)]
    pub no_code_cache: bool,
    /// The code cache's directory (default: `$KRR_CODE_CACHE`, `off` for none, else
    /// `$XDG_CACHE_HOME/krr`, else `~/.cache/krr`).
    #[arg(long, value_name = "DIR", conflicts_with = "no_code_cache")]
    pub code_cache: Option<std::path::PathBuf>,
}

impl EngineArgs {
    /// The code cache's directory, if it is on. Kept for the process's life (a command
    /// makes one or two engine configurations).
    fn code_cache_dir(&self) -> Option<&'static std::path::Path> {
        if self.no_code_cache {
            return None;
        }
        let dir = self
            .code_cache
            .clone()
            .or_else(krr_jit::code_cache::default_dir)?;
        Some(Box::leak(dir.into_boxed_path()))
    }

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
            code_cache: self.code_cache_dir(),
            ..d
        }
    }
}
