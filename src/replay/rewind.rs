//! What a debugger's timeline (`crate::timeline`) saves of a krr trace's replay: the CPU,
//! the event stream's place and the event counts.

use super::Replayer;
use crate::timeline::Rewind;
use crate::trace::{EventCounts, StreamMark};
use krr_runtime::{ArchState, Core};

#[derive(Clone)]
pub struct Saved {
    arch: ArchState,
    stream: StreamMark,
    counts: EventCounts,
}

impl Rewind for Replayer {
    type Saved = Saved;

    fn position(&self) -> u64 {
        self.icount()
    }

    fn save(&self) -> Saved {
        Saved {
            arch: self.core.cpu().arch.clone(),
            stream: self.bus.stream.mark(),
            counts: self.bus.counts.clone(),
        }
    }

    fn saved_bytes(saved: &Saved) -> u64 {
        std::mem::size_of::<Saved>() as u64 + saved.stream.approx_bytes()
    }

    fn restore(&mut self, saved: &Saved) {
        *self.core.arch_mut() = saved.arch.clone();
        self.engine.forget_resume();
        self.bus.stream.restore(&saved.stream);
        self.bus.counts = saved.counts.clone();
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn ram_rewritten(&mut self, gpa: u64, len: u64) {
        self.engine.notify_write(&mut self.core, gpa, len);
    }
}
