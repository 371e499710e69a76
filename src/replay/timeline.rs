//! Snapshots of a replay in memory, for going backwards (DESIGN.md section 8): the base (the
//! whole RAM once, where history starts) and, every `interval` instructions, the CPU state,
//! the event stream's place and counts and only the RAM pages that changed since the
//! previous snapshot (found by the page hashes the RAM digest keeps up to date). Going back
//! to instruction N restores the latest snapshot at or before N and replays forward to N.
//! When the snapshots outgrow the memory budget, the oldest one is folded into the base:
//! history then starts later.

use super::Replayer;
use crate::trace::{EventCounts, StreamMark};
use krr_runtime::ArchState;

const PAGE: usize = 4096;

/// Everything but RAM that the replay needs to go on from a point.
#[derive(Clone)]
struct State {
    icount: u64,
    arch: ArchState,
    stream: StreamMark,
    counts: EventCounts,
}

struct Snap {
    state: State,
    /// Pages changed since the previous snapshot: (mapping index, hash, contents).
    pages: Vec<(usize, u64, Box<[u8]>)>,
}

pub struct Timeline {
    pub interval: u64,
    /// Bytes the snapshots may hold (base included).
    pub budget: u64,
    base: State,
    base_ram: Vec<u8>,
    base_hashes: Vec<u64>,
    snaps: Vec<Snap>,
    /// Page hashes as of the latest snapshot.
    last_hashes: Vec<u64>,
    bytes: u64,
}

impl Replayer {
    fn state(&self) -> State {
        State {
            icount: self.core.cpu().icount,
            arch: self.core.cpu().arch.clone(),
            stream: self.bus.stream.mark(),
            counts: self.bus.counts.clone(),
        }
    }
}

impl Timeline {
    /// Start history here (a full copy of RAM).
    pub fn new(r: &mut Replayer, interval: u64, budget: u64) -> Timeline {
        r.core.ram_hash();
        let mem = r.core.mem();
        let mut base_ram = Vec::with_capacity(mem.size() as usize);
        for (_, bytes) in mem.window_bytes() {
            base_ram.extend_from_slice(bytes);
        }
        let hashes = mem.page_hashes().to_vec();
        let base = r.state();
        let bytes = base_ram.len() as u64 + 8 * hashes.len() as u64 + base.stream.approx_bytes();
        Timeline {
            interval: interval.max(1),
            budget,
            base,
            base_ram,
            base_hashes: hashes.clone(),
            snaps: Vec::new(),
            last_hashes: hashes,
            bytes,
        }
    }

    /// Where history starts (nothing before it can be reached).
    pub fn start(&self) -> u64 {
        self.base.icount
    }

    /// The newest snapshot's instruction count.
    pub fn newest(&self) -> u64 {
        self.snaps
            .last()
            .map_or(self.base.icount, |s| s.state.icount)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn snapshot_count(&self) -> usize {
        self.snaps.len() + 1
    }

    /// The next instruction count at which [`Timeline::take`] wants a snapshot.
    pub fn next_due(&self) -> u64 {
        self.newest().saturating_add(self.interval)
    }

    /// Take a snapshot here if the replay is past the newest one.
    pub fn take(&mut self, r: &mut Replayer) {
        if r.icount() <= self.newest() {
            return;
        }
        r.core.ram_hash();
        let mem = r.core.mem();
        let mut pages = Vec::new();
        for (i, (&now, last)) in mem
            .page_hashes()
            .iter()
            .zip(self.last_hashes.iter_mut())
            .enumerate()
        {
            if now != *last {
                *last = now;
                let mut buf = vec![0u8; PAGE].into_boxed_slice();
                mem.read(mem.page_gpa(i), &mut buf).expect("a RAM page");
                pages.push((i, now, buf));
            }
        }
        let state = r.state();
        self.bytes += (pages.len() * (PAGE + 32)) as u64 + state.stream.approx_bytes();
        self.snaps.push(Snap { state, pages });
        while self.bytes > self.budget && self.snaps.len() > 1 {
            self.fold_oldest();
        }
    }

    /// The oldest snapshot becomes the base.
    fn fold_oldest(&mut self) {
        let s = self.snaps.remove(0);
        self.bytes -= (s.pages.len() * (PAGE + 32)) as u64 + s.state.stream.approx_bytes();
        self.bytes -= self.base.stream.approx_bytes();
        self.bytes += s.state.stream.approx_bytes();
        for (i, h, data) in s.pages {
            self.base_ram[i * PAGE..(i + 1) * PAGE].copy_from_slice(&data);
            self.base_hashes[i] = h;
        }
        self.base = s.state;
    }

    /// The instruction count of the latest snapshot at or before `n`.
    pub fn latest_at_or_before(&self, n: u64) -> u64 {
        let k = self.snaps.partition_point(|s| s.state.icount <= n);
        if k == 0 {
            self.base.icount
        } else {
            self.snaps[k - 1].state.icount
        }
    }

    /// Put the replay back at the latest snapshot at or before instruction `n` (not before
    /// history's start); returns its instruction count.
    pub fn restore_before(&self, r: &mut Replayer, n: u64) -> u64 {
        let k = self.snaps.partition_point(|s| s.state.icount <= n);
        // Snapshots 0..k apply; the state is the last of them or the base.
        let state = if k == 0 {
            &self.base
        } else {
            &self.snaps[k - 1].state
        };
        let mut hashes = self.base_hashes.clone();
        let mut content: Vec<Option<&[u8]>> = vec![None; hashes.len()];
        for s in &self.snaps[..k] {
            for (i, h, data) in &s.pages {
                hashes[*i] = *h;
                content[*i] = Some(data);
            }
        }
        r.core.ram_hash();
        let now = r.core.mem().page_hashes().to_vec();
        let mut restored = Vec::new();
        for (i, (&want, &have)) in hashes.iter().zip(&now).enumerate() {
            if want != have {
                let data = content[i].unwrap_or(&self.base_ram[i * PAGE..(i + 1) * PAGE]);
                let gpa = r.core.mem().page_gpa(i);
                r.core.mem_mut().write(gpa, data).expect("a RAM page");
                restored.push(gpa);
            }
        }
        for gpa in restored {
            // Translated code on those pages is stale.
            r.engine.notify_write(&mut r.core, gpa, PAGE as u64);
        }
        *r.core.arch_mut() = state.arch.clone();
        r.core.flush_tlb();
        r.engine.forget_resume();
        r.bus.stream.restore(&state.stream);
        r.bus.counts = state.counts.clone();
        state.icount
    }
}
