//! Replaying KRR's recordings (issue 15): `load.rs` sets a replay up from the recording's
//! files and the vmlinux (`cpu.rs`: the snapshot's vCPU as krr's state; `virt.rs`: page
//! walks over snapshot or replay memory), `driver.rs` runs it (interrupt placement, trap
//! points, user-mode substitution), `bus.rs` serves the kernel's inputs from the events
//! (`queue.rs`), the ring (`ring.rs`) and small device models (`devices.rs`), and `stats.rs`
//! prints KRR's `=== Event Stats ===` block. `dma.rs` places e1000 and NVMe DMA by count; `trap_actions.rs` and `checkpoints.rs` hold
//! more of the driver (the trap points' actions, checkpoint verification).

pub mod bus;
mod checkpoints;
pub mod cpu;
pub mod devices;
pub mod dma;
pub mod driver;
pub mod load;
pub mod queue;
pub mod ring;
pub mod stats;
mod trap_actions;
pub mod virt;
