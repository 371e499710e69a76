//! krr runtime: the CPU state compiled code addresses by offset, guest physical memory,
//! the software TLB and the exception record shared by both execution tiers.
//!
//! Nothing here knows about Cranelift or iced-x86: the jit crate drives this state, the
//! drivers (run, record, replay) own it.
//!
//! Modules, leaves first: [`arch`] (architectural constants), [`lazy_flags`], [`exception`],
//! [`outcome`], [`profile`], [`tlb`], [`ram_windows`], [`memory`], [`cpuid`] import nothing
//! from the CPU; [`cpu`] is the state; [`debugreg`], [`mmu`] (page walker, TLB slow paths),
//! [`desc`] and [`interrupt`] work on it; [`bus`] is the driver's side.

pub mod arch;
pub mod bus;
pub mod core;
pub mod cpu;
pub mod cpuid;
pub mod debugreg;
pub mod desc;
pub mod exception;
pub mod host_isa;
pub mod interrupt;
pub mod lazy_flags;
pub mod memory;
pub mod mmu;
pub mod outcome;
pub mod profile;
pub mod ram_windows;
pub mod tlb;
pub mod watch;

pub use crate::core::Core;
pub use bus::Bus;
pub use cpu::*;
pub use memory::{GuestMemory, MemoryError};
pub use mmu::*;
pub use outcome::Outcome;
pub use profile::Profile;
pub use ram_windows::{RamWindow, RamWindows};
