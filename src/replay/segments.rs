//! A trace's segments: the stretches between its delta snapshots (`trace::delta`). A replay
//! can start at a snapshot (`start_at_snapshot`) and is checked where it reaches one
//! (`check_snapshot`): the instruction count, the events consumed, the CPU state hash and the
//! RAM hash must be the snapshot's. `krr replay --save-snapshots N` takes them during one
//! sequential replay (`SnapshotTaker`) for a trace recorded without them.

use super::{Divergence, ReplayError, Replayer};
use crate::trace::delta::{self, DeltaSnapshot};
use crate::trace::{state, TraceReader};

/// Segment `index` runs from instruction `start` (the trace's start, or snapshot `index - 1`)
/// to `end` (snapshot `index`, or the end of the recording for the last one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub index: usize,
    pub start: u64,
    pub end: u64,
    /// The snapshot at its end (`None`: the recording's end).
    pub end_snapshot: Option<usize>,
}

/// The segments of the trace `reader` has open, in order (one, the whole trace, without
/// snapshots): read from its index and its initial snapshot's CPU image, without loading the
/// machine.
pub fn segments(reader: &mut TraceReader) -> Result<Vec<Segment>, ReplayError> {
    let mut cpu = krr_runtime::ArchState::flat64();
    state::decode_cpu(&mut cpu, &reader.snapshot()?.cpu_image)
        .map_err(|e| ReplayError::Setup(format!("{}: snapshot CPU image: {e}", reader.path())))?;
    let mut out = Vec::new();
    let mut start = cpu.icount;
    for (k, d) in reader.deltas.iter().enumerate() {
        out.push(Segment {
            index: k,
            start,
            end: d.icount,
            end_snapshot: Some(k),
        });
        start = d.icount;
    }
    out.push(Segment {
        index: reader.deltas.len(),
        start,
        end: reader.end.icount,
        end_snapshot: None,
    });
    Ok(out)
}

impl Replayer {
    /// Put the replay, still at the trace's start, at delta snapshot `k`: its pages and those
    /// of every snapshot before it, its CPU state, its place in the event stream; the state
    /// must hash as the snapshot says.
    pub fn start_at_snapshot(&mut self, k: usize) -> Result<(), ReplayError> {
        if self.bus.stream.position != 0 {
            return Err(ReplayError::Setup(
                "a replay starts at a snapshot only from the trace's start".into(),
            ));
        }
        let path = self.bus.stream.reader().path().to_string();
        let bad = |j: usize, what: String| {
            ReplayError::Setup(format!("{path}: delta snapshot {j}: {what}"))
        };
        let mut last = None;
        for j in 0..=k {
            let d = self.bus.stream.reader_mut().delta(j)?;
            state::decode_ram(self.core.mem_mut(), &d.ram_image).map_err(|e| bad(j, e))?;
            last = Some(d);
        }
        let d: DeltaSnapshot = last.expect("k + 1 snapshots read");
        state::decode_cpu(self.core.arch_mut(), &d.cpu_image).map_err(|e| bad(k, e))?;
        if self.core.cpu().icount != d.icount {
            return Err(bad(
                k,
                format!(
                    "its CPU image is at instruction {}, its header says {}",
                    self.core.cpu().icount,
                    d.icount
                ),
            ));
        }
        self.core.flush_tlb();
        self.bus.stream.seek(d.events)?;
        self.bus.counts = d.counts.clone();
        let (regs, ram) = (state::regs_hash(self.core.cpu()), self.core.ram_hash());
        if regs != d.regs_hash || ram != d.ram_hash {
            return Err(bad(
                k,
                format!("the state it rebuilds hashes to registers {regs:016x} RAM {ram:016x}, it records {:016x} and {:016x} (damaged)", d.regs_hash, d.ram_hash),
            ));
        }
        Ok(())
    }

    /// At delta snapshot `k`'s instruction count: the replay's state against it.
    pub fn check_snapshot(&mut self, k: usize) -> Result<Option<Divergence>, ReplayError> {
        let d = self.bus.stream.reader_mut().delta(k)?;
        let (icount, events) = (self.core.cpu().icount, self.bus.stream.position);
        let regs = state::regs_hash(self.core.cpu());
        let ram = self.core.ram_hash();
        let what = if icount != d.icount || events != d.events {
            format!(
                "snapshot {k} is at instruction {} after {} events; the replay is at instruction {icount} after {events}",
                d.icount, d.events
            )
        } else if regs != d.regs_hash {
            format!(
                "snapshot {k} at instruction {icount}: CPU state hash {regs:016x}, recorded {:016x}",
                d.regs_hash
            )
        } else if ram != d.ram_hash {
            format!(
                "snapshot {k} at instruction {icount}: RAM hash {ram:016x}, recorded {:016x}",
                d.ram_hash
            )
        } else {
            return Ok(None);
        };
        Ok(Some(self.diverge_here(what)))
    }
}

/// Takes delta snapshots during a sequential replay (`krr replay --save-snapshots N`).
pub struct SnapshotTaker {
    pub interval: u64,
    writer: delta::Writer,
    pub taken: Vec<DeltaSnapshot>,
}

impl SnapshotTaker {
    /// For `r`, at the trace's start.
    pub fn new(r: &mut Replayer, interval: u64) -> SnapshotTaker {
        SnapshotTaker {
            interval: interval.max(1),
            writer: delta::Writer::new(&mut r.core),
            taken: Vec::new(),
        }
    }

    /// The next instruction count at which a snapshot is due.
    pub fn next_due(&self, r: &Replayer) -> u64 {
        (r.icount() / self.interval + 1) * self.interval
    }

    /// A snapshot here.
    pub fn take(&mut self, r: &mut Replayer) -> Result<(), ReplayError> {
        let events = r.bus.stream.position;
        let counts = r.bus.counts.clone();
        let d = self
            .writer
            .take(&mut r.core, events, &counts)
            .map_err(ReplayError::Fatal)?;
        self.taken.push(d);
        Ok(())
    }
}
