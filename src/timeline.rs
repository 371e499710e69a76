//! Snapshots of a replay in memory, for going backwards (DESIGN.md section 8): the base (the
//! whole RAM once, where history starts) and, every `interval` instructions, the replay's
//! state but RAM (CPU, the driver's cursors, what [`Rewind::save`] gives) and only the RAM
//! pages that changed since the previous snapshot (found by the page hashes the RAM digest
//! keeps up to date). Going back to instruction N restores the latest snapshot at or before N
//! and replays forward to N. When the snapshots outgrow the memory budget, the oldest one is
//! folded into the base: history then starts later. One timeline serves krr traces and KRR
//! recordings (each replayer says what its state is).

use krr_runtime::Core;

const PAGE: usize = 4096;

/// A replay that can be put back to a saved point.
pub trait Rewind {
    /// Everything but guest RAM that the replay needs to go on from a point.
    type Saved: Clone;
    /// The timeline's position: krr's own count of retired instructions (all vCPUs').
    fn position(&self) -> u64;
    fn save(&self) -> Self::Saved;
    /// Approximate heap bytes of a saved state (for the memory budget).
    fn saved_bytes(saved: &Self::Saved) -> u64;
    /// Put back everything but RAM (the timeline has restored RAM already).
    fn restore(&mut self, saved: &Self::Saved);
    fn core(&self) -> &Core;
    fn core_mut(&mut self) -> &mut Core;
    /// Guest-physical `[gpa, gpa + len)` was rewritten behind the engine's back.
    fn ram_rewritten(&mut self, gpa: u64, len: u64);
}

struct Point<S> {
    position: u64,
    saved: S,
}

struct Snap<S> {
    point: Point<S>,
    /// Pages changed since the previous snapshot: (mapping index, hash, contents).
    pages: Vec<(usize, u64, Box<[u8]>)>,
}

pub struct Timeline<R: Rewind> {
    pub interval: u64,
    /// Bytes the snapshots may hold (base included).
    pub budget: u64,
    base: Point<R::Saved>,
    base_ram: Vec<u8>,
    base_hashes: Vec<u64>,
    snaps: Vec<Snap<R::Saved>>,
    /// Page hashes as of the latest snapshot.
    last_hashes: Vec<u64>,
    bytes: u64,
}

fn point<R: Rewind>(r: &R) -> Point<R::Saved> {
    Point {
        position: r.position(),
        saved: r.save(),
    }
}

impl<R: Rewind> Timeline<R> {
    /// Start history here (a full copy of RAM).
    pub fn new(r: &mut R, interval: u64, budget: u64) -> Timeline<R> {
        r.core_mut().ram_hash();
        let mem = r.core().mem();
        let mut base_ram = Vec::with_capacity(mem.size() as usize);
        for (_, bytes) in mem.window_bytes() {
            base_ram.extend_from_slice(bytes);
        }
        let hashes = mem.page_hashes().to_vec();
        let base = point(r);
        let bytes = base_ram.len() as u64 + 8 * hashes.len() as u64 + R::saved_bytes(&base.saved);
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
        self.base.position
    }

    /// The newest snapshot's position.
    pub fn newest(&self) -> u64 {
        self.snaps
            .last()
            .map_or(self.base.position, |s| s.point.position)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn snapshot_count(&self) -> usize {
        self.snaps.len() + 1
    }

    /// The next position at which [`Timeline::take`] wants a snapshot.
    pub fn next_due(&self) -> u64 {
        self.newest().saturating_add(self.interval)
    }

    fn snap_bytes(s: &Snap<R::Saved>) -> u64 {
        (s.pages.len() * (PAGE + 32)) as u64 + R::saved_bytes(&s.point.saved)
    }

    /// Take a snapshot here if the replay is past the newest one.
    pub fn take(&mut self, r: &mut R) {
        if r.position() <= self.newest() {
            return;
        }
        r.core_mut().ram_hash();
        let mem = r.core().mem();
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
        let snap = Snap {
            point: point(r),
            pages,
        };
        self.bytes += Self::snap_bytes(&snap);
        self.snaps.push(snap);
        while self.bytes > self.budget && self.snaps.len() > 1 {
            self.fold_oldest();
        }
    }

    /// The oldest snapshot becomes the base.
    fn fold_oldest(&mut self) {
        let s = self.snaps.remove(0);
        self.bytes -= Self::snap_bytes(&s);
        self.bytes -= R::saved_bytes(&self.base.saved);
        self.bytes += R::saved_bytes(&s.point.saved);
        for (i, h, data) in s.pages {
            self.base_ram[i * PAGE..(i + 1) * PAGE].copy_from_slice(&data);
            self.base_hashes[i] = h;
        }
        self.base = s.point;
    }

    /// The position of the latest snapshot at or before `n`.
    pub fn latest_at_or_before(&self, n: u64) -> u64 {
        let k = self.snaps.partition_point(|s| s.point.position <= n);
        if k == 0 {
            self.base.position
        } else {
            self.snaps[k - 1].point.position
        }
    }

    /// Put the replay back at the latest snapshot at or before position `n` (not before
    /// history's start); returns its position.
    pub fn restore_before(&self, r: &mut R, n: u64) -> u64 {
        let k = self.snaps.partition_point(|s| s.point.position <= n);
        // Snapshots 0..k apply; the state is the last of them or the base.
        let point = if k == 0 {
            &self.base
        } else {
            &self.snaps[k - 1].point
        };
        let mut hashes = self.base_hashes.clone();
        let mut content: Vec<Option<&[u8]>> = vec![None; hashes.len()];
        for s in &self.snaps[..k] {
            for (i, h, data) in &s.pages {
                hashes[*i] = *h;
                content[*i] = Some(data);
            }
        }
        r.core_mut().ram_hash();
        let now = r.core().mem().page_hashes().to_vec();
        let mut restored = Vec::new();
        for (i, (&want, &have)) in hashes.iter().zip(&now).enumerate() {
            if want != have {
                let data = content[i].unwrap_or(&self.base_ram[i * PAGE..(i + 1) * PAGE]);
                let gpa = r.core().mem().page_gpa(i);
                r.core_mut().mem_mut().write(gpa, data).expect("a RAM page");
                restored.push(gpa);
            }
        }
        for gpa in restored {
            // Translated code on those pages is stale.
            r.ram_rewritten(gpa, PAGE as u64);
        }
        r.restore(&point.saved);
        r.core_mut().flush_tlb();
        point.position
    }
}
