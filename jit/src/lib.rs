//! krr execution engine.
pub mod snippet;
