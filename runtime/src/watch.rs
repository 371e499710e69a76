//! A debugger's watchpoints (gdb's `watch`, `rwatch`, `awatch`) on guest-physical ranges.
//! Their pages never enter the TLB, so every access to them takes the MMU's slow path, where
//! an access to a watched range ends the instruction like a precise fault (vector
//! [`RESTART_VECTOR`], nothing done); the engine then runs that one instruction again with
//! `stepping` set, which records the hit and lets it complete, and stops after it. Pages
//! without a watchpoint keep their speed. Accesses the CPU makes itself (interrupt frames,
//! descriptor tables, page walks) are not watched, as with hardware breakpoints.

/// The "vector" of the restart: no CPU exception has it with `software` clear.
pub const RESTART_VECTOR: u8 = 0xff;

pub mod kind {
    pub const WRITE: u8 = 1;
    pub const READ: u8 = 2;
    pub const ACCESS: u8 = 3;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchRange {
    pub phys: u64,
    pub len: u64,
    /// [`kind`]: what accesses it watches.
    pub kind: u8,
    /// The address the debugger gave (reported back at a hit).
    pub addr: u64,
}

/// A watchpoint hit: the debugger's address and whether the access was a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchHit {
    pub addr: u64,
    pub write: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Watch {
    pub ranges: Vec<WatchRange>,
    /// Physical page numbers that hold a watched byte, sorted.
    pages: Vec<u64>,
    /// Re-running the instruction that touched a watched range: record, do not restart.
    pub stepping: bool,
    /// The hit of the instruction just re-run.
    pub hit: Option<WatchHit>,
    /// The CPU's own accesses (descriptor tables, interrupt frames) are under way: not
    /// watched.
    pub implicit: bool,
}

impl Watch {
    pub fn set(&mut self, ranges: Vec<WatchRange>) {
        let mut pages: Vec<u64> = ranges
            .iter()
            .filter(|r| r.len > 0)
            .flat_map(|r| (r.phys >> 12)..=((r.phys + r.len - 1) >> 12))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        self.pages = pages;
        self.ranges = ranges;
    }

    pub fn page_watched(&self, page: u64) -> bool {
        !self.pages.is_empty() && self.pages.binary_search(&page).is_ok()
    }

    /// The watchpoint an access of `len` bytes at `phys` hits.
    pub fn check(&self, phys: u64, len: u64, write: bool) -> Option<WatchRange> {
        let want = if write { kind::WRITE } else { kind::READ };
        self.ranges
            .iter()
            .copied()
            .find(|r| r.kind & want != 0 && phys < r.phys + r.len && r.phys < phys + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_kinds() {
        let mut w = Watch::default();
        w.set(vec![
            WatchRange {
                phys: 0x1ffc,
                len: 8,
                kind: kind::WRITE,
                addr: 0xffff_0000_0000_1ffc,
            },
            WatchRange {
                phys: 0x5000,
                len: 4,
                kind: kind::READ,
                addr: 0x5000,
            },
        ]);
        assert!(w.page_watched(1) && w.page_watched(2) && w.page_watched(5));
        assert!(!w.page_watched(3));
        assert_eq!(
            w.check(0x2000, 1, true).unwrap().addr,
            0xffff_0000_0000_1ffc
        );
        assert!(
            w.check(0x2000, 1, false).is_none(),
            "a write watch ignores reads"
        );
        assert!(w.check(0x2004, 4, true).is_none());
        assert!(w.check(0x5002, 8, false).is_some());
        assert!(w.check(0x5002, 8, true).is_none());
    }
}
