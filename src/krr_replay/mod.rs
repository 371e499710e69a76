//! Replaying KRR's recordings (issue 15), piece by piece: `cpu.rs` turns a snapshot's vCPU
//! into krr's architectural state. The driver (trap points, user-mode substitution, event
//! matching) builds on it, on `krr_rec` (the files), `vmlinux` (the trap points) and the
//! engine's stops.

pub mod cpu;
pub mod virt;
