//! A debugger on a KRR replay: its position on the timeline (krr's own count of retired
//! instructions, summed over the vCPUs, since KRR's count is reset at interrupts, port inputs
//! and INST_SYNC), its breakpoints, and what a snapshot of it holds besides RAM (the driver's
//! whole state: the event list's cursor, DMA cursors, the ring's host side, the exec-lock
//! owner, parked vCPUs, pending deferrals), so a replay can go on exactly from any snapshot.

use super::{CheckpointTally, Driver, End, Parked, Pause, Pending};
use crate::krr_rec::checkpoint::Checkpoint;
use crate::krr_replay::bus::ReplayBus;
use crate::krr_replay::dma::Stream;
use crate::timeline::Rewind;
use krr_runtime::{ArchState, Core};
use std::sync::Arc;

impl Driver {
    /// Instructions retired so far by all vCPUs (krr's count).
    pub fn position(&self) -> u64 {
        self.core.cpu().icount
            + self
                .parked
                .iter()
                .flatten()
                .map(|p| p.arch.icount)
                .sum::<u64>()
    }

    /// A debugger's breakpoints from now on (linear addresses; engine stop addresses beside
    /// the trap points).
    pub fn set_breakpoints(&mut self, addrs: impl IntoIterator<Item = u64>) {
        self.breaks = addrs.into_iter().collect();
        let stops = self
            .traps
            .iter()
            .map(|(_, a)| a)
            .chain(self.breaks.iter().copied());
        self.engine.set_stop_addresses(stops.collect::<Vec<_>>());
    }

    /// The replay stands at a breakpoint (a restored snapshot, `monitor goto`): going on
    /// executes the instruction there instead of reporting it again.
    pub fn pass_breakpoint_here(&mut self) {
        self.passed_break = Some((self.position(), self.core.cpu().rip));
    }

    /// At a stop address: the pause for a debugger's breakpoint there, unless this arrival
    /// was reported already.
    pub(super) fn at_breakpoint(&mut self, rip: u64) -> Option<End> {
        if !self.breaks.contains(&rip) {
            return None;
        }
        let here = (self.position(), rip);
        if self.passed_break == Some(here) {
            return None;
        }
        self.passed_break = Some(here);
        Some(End::Paused(Pause::Breakpoint(rip)))
    }
}

/// The driver's state but RAM.
#[derive(Clone)]
pub struct Saved {
    arch: ArchState,
    bus: ReplayBus,
    pending: Option<Pending>,
    user_gp_injected: bool,
    corrected_interrupts: u64,
    trap_hits: u64,
    checkpoints: Arc<Vec<Checkpoint>>,
    next_checkpoint: usize,
    checkpoint_tally: CheckpointTally,
    parked: Vec<Option<Parked>>,
    current: usize,
    owner: Option<usize>,
    handovers: u64,
    lock_taken_at: u64,
    dma_streams: Vec<Stream>,
    /// The engine's pending pass of a trap point already acted on.
    stop_resume: Option<(u64, u64)>,
    passed_break: Option<(u64, u64)>,
}

impl Rewind for Driver {
    type Saved = Saved;

    fn position(&self) -> u64 {
        Driver::position(self)
    }

    fn save(&self) -> Saved {
        Saved {
            arch: self.core.arch().clone(),
            bus: self.bus.clone(),
            pending: self.pending.clone(),
            user_gp_injected: self.user_gp_injected,
            corrected_interrupts: self.corrected_interrupts,
            trap_hits: self.trap_hits,
            checkpoints: self.checkpoints.clone(),
            next_checkpoint: self.next_checkpoint,
            checkpoint_tally: self.checkpoint_tally,
            parked: self.parked.clone(),
            current: self.current,
            owner: self.owner,
            handovers: self.handovers,
            lock_taken_at: self.lock_taken_at,
            dma_streams: self.dma_streams.clone(),
            stop_resume: self.engine.pending_resume(),
            passed_break: self.passed_break,
        }
    }

    fn saved_bytes(s: &Saved) -> u64 {
        // The event list is shared; its taken flags, the console and the pending DMA are not.
        let bus = s.bus.queue.len() as u64
            + s.bus.devices.console.len() as u64
            + s.bus
                .pending_dma
                .iter()
                .map(|(_, d)| d.len() as u64)
                .sum::<u64>();
        std::mem::size_of::<Saved>() as u64
            + bus
            + (s.parked.len() * std::mem::size_of::<Option<Parked>>()) as u64
    }

    fn restore(&mut self, s: &Saved) {
        let s = s.clone();
        *self.core.arch_mut() = s.arch;
        self.bus = s.bus;
        self.pending = s.pending;
        self.user_gp_injected = s.user_gp_injected;
        self.corrected_interrupts = s.corrected_interrupts;
        self.trap_hits = s.trap_hits;
        self.checkpoints = s.checkpoints;
        self.next_checkpoint = s.next_checkpoint;
        self.checkpoint_tally = s.checkpoint_tally;
        self.parked = s.parked;
        self.current = s.current;
        self.owner = s.owner;
        self.handovers = s.handovers;
        self.lock_taken_at = s.lock_taken_at;
        self.dma_streams = s.dma_streams;
        self.engine.set_pending_resume(s.stop_resume);
        self.passed_break = s.passed_break;
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
