//! Readers of the files of a recording made by KRR (krr-spec.md sections 1-2): the snapshot
//! (a QEMU migration stream), `kernel_rr.log`, the DMA and network logs and the
//! `checkpoint-<cpu>` files. Every error names the file, the byte offset and, where there is
//! one, the event index ([`KrrError`]); no input makes a reader panic or allocate more than
//! the file holds.

pub mod checkpoint;
pub mod dma;
pub mod error;
pub mod events;
pub mod json;
pub mod layout;
pub mod le;
pub mod migration;
pub mod recording;

pub use error::{KrrError, Location};
pub use events::{Event, KrrLog};
pub use migration::Snapshot;
pub use recording::Recording;
