//! krr as a library: the machine (devices, Linux boot) the `krr` binary drives.
pub mod machine;
