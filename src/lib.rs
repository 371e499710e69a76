//! krr as a library: the machine (devices, Linux boot), the built-in demo guest, the trace
//! format, the recorder and the replayer that the `krr` binary drives.
pub mod cpu_model;
pub mod demo_guest;
pub mod gdb;
pub mod krr_rec;
pub mod krr_replay;
pub mod machine;
pub mod qemu_args;
pub mod record;
pub mod replay;
pub mod report;
pub mod symbols;
pub mod timeline;
pub mod trace;
pub mod vmlinux;
