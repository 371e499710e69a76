//! krr as a library: the machine (devices, Linux boot) the `krr` binary drives, and the
//! built-in system guest of `krr demo`.
pub mod demo_guest;
pub mod machine;
