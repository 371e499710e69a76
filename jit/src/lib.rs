//! krr execution engine: iced-x86 decoding, x86 semantics written once over a [`sem::Builder`],
//! a precise interpreter and a Cranelift JIT that both run those semantics, the block cache
//! and the dispatcher.
pub mod block;
mod block_id;
pub mod code_cache;
mod compile;
mod cpuid_gate;
pub mod engine;
mod exec_mem;
pub mod helpers;
pub mod interp;
mod jump_cache;
pub mod mode;
pub mod sem;
pub mod snippet;
pub mod system;

pub use engine::{Engine, EngineConfig, EngineError, EngineStats, Exit, TierPolicy};
pub use krr_runtime::Profile;
