//! The software TLB: direct-mapped, [`TLB_ENTRIES`] entries per MMU index (0 = supervisor,
//! 1 = user; 2 and 3 are the same with checks, see [`crate::mmu::mmu_index`]) and per access
//! kind (read, write). An entry maps one 4 KiB linear page to host memory: `tag` is the page's
//! linear address (or [`TLB_INVALID`]) and `addend` is what to add to a linear address to get
//! the host address. Compiled code does the lookup inline; [`crate::mmu`] fills entries on a
//! miss. Besides the entries, the TLB keeps the address-space keys the engine tags its own
//! linear-address lookups (the jump cache) with.
//!
//! Nothing here knows about the CPU state or the page walker.

pub const TLB_BITS: u32 = 8;
pub const TLB_ENTRIES: usize = 1 << TLB_BITS;
pub const TLB_INVALID: u64 = u64::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlbEntry {
    pub tag: u64,
    pub addend: u64,
}

#[repr(C)]
pub struct Tlb {
    /// `[mmu_idx][access]` where access 0 = read, 1 = write. The checked indices 2 and 3 are
    /// never filled: every access through them misses and takes the slow path.
    pub sets: [[[TlbEntry; TLB_ENTRIES]; 2]; 4],
    /// Key of the translations the current address space may use: the engine tags its
    /// linear-address lookups with it. It changes when those translations are invalidated
    /// (a flushing CR3 load, CR0/CR4/EFER changes) or another address space becomes current;
    /// with PCIDs, a non-flushing CR3 load of a PCID seen before brings its key back, and with
    /// it the lookups made under it (the architecture lets that PCID's translations survive).
    /// Keys are below [`SPACE_KEY_LIMIT`].
    pub space: u64,
    /// Counts wraps of the key counter: lookups made before one must all go.
    pub space_wraps: u64,
    /// Pages flushed one at a time (INVLPG) since the engine last looked: it drops only the
    /// lookups on those pages (under every key). More than fit count as a full flush.
    pub page_flushes: [u64; PAGE_FLUSHES],
    pub page_flush_count: u64,
    /// The key compiled code expects in the engine's jump cache (its mode bits added), set
    /// by the engine's dispatcher once its lookups agree with this TLB; 0 after any flush
    /// until then, so compiled code never follows a lookup made under an older mapping.
    pub jump_key: u64,
    /// Accesses that missed the TLB and took the slow path (statistics).
    pub misses: u64,
    /// The key of each PCID's translations; a key below `stale_below` is no longer valid.
    pcid_space: [u64; 4096],
    stale_below: u64,
    last_space: u64,
}

/// Single-page flushes remembered before they turn into a full one.
pub const PAGE_FLUSHES: usize = 8;

/// Address-space keys stay below this (the engine packs them with mode bits into 32).
pub const SPACE_KEY_LIMIT: u64 = 1 << 28;

pub const TLB_SET_BYTES: usize = TLB_ENTRIES * std::mem::size_of::<TlbEntry>();

impl Tlb {
    pub fn new() -> Tlb {
        Tlb {
            sets: [[[TlbEntry {
                tag: TLB_INVALID,
                addend: 0,
            }; TLB_ENTRIES]; 2]; 4],
            space: 1,
            space_wraps: 0,
            page_flushes: [0; PAGE_FLUSHES],
            page_flush_count: 0,
            jump_key: 0,
            misses: 0,
            pcid_space: [0; 4096],
            stale_below: 1,
            last_space: 1,
        }
    }

    fn fresh_space(&mut self) -> u64 {
        if self.last_space + 1 >= SPACE_KEY_LIMIT {
            self.space_wraps += 1;
            self.last_space = 0;
            self.pcid_space = [0; 4096];
            self.stale_below = 1;
        }
        self.last_space += 1;
        self.last_space
    }

    /// Drop the cached translations of the data accesses (not tagged by address space).
    fn clear_entries(&mut self) {
        self.jump_key = 0;
        for e in self.sets[..2].iter_mut().flatten().flatten() {
            e.tag = TLB_INVALID;
        }
    }

    /// Invalidate every translation of every address space (CR0, CR4, EFER changes).
    pub fn flush(&mut self) {
        self.clear_entries();
        self.every_space_afresh();
    }

    /// Make every address space's key stale (pending single-page flushes included) and start
    /// the current one with a fresh key.
    fn every_space_afresh(&mut self) {
        self.page_flush_count = 0;
        self.space = self.fresh_space();
        self.stale_below = self.space;
    }

    /// A CR3 load. Without PCIDs (`pcid` None) it invalidates the address space's
    /// translations; with one, only when `flush` (bit 63 of the source clear), and otherwise
    /// that PCID's earlier translations stay usable.
    pub fn load_cr3(&mut self, pcid: Option<u16>, flush: bool) {
        self.clear_entries();
        self.space = match pcid {
            None => self.fresh_space(),
            Some(p) => {
                let p = p as usize & 0xfff;
                if flush || self.pcid_space[p] < self.stale_below {
                    self.pcid_space[p] = self.fresh_space();
                }
                self.pcid_space[p]
            }
        };
    }

    /// Invalidate one PCID's translations (INVPCID single-context); `current` says it is
    /// the current one.
    pub fn flush_pcid(&mut self, pcid: u16, current: bool) {
        let p = pcid as usize & 0xfff;
        self.pcid_space[p] = self.fresh_space();
        if current {
            self.clear_entries();
            self.space = self.pcid_space[p];
        }
    }

    /// Drop every write entry (a page just started holding translated code).
    pub fn flush_writes(&mut self) {
        for idx in 0..2 {
            for e in self.sets[idx][1].iter_mut() {
                e.tag = TLB_INVALID;
            }
        }
    }

    /// INVLPG: drop one page's translations (of every address space: more than required).
    pub fn flush_page(&mut self, linear: u64) {
        let idx = tlb_index(linear);
        let page = linear & !0xfff;
        self.jump_key = 0;
        match self.page_flushes.get_mut(self.page_flush_count as usize) {
            Some(slot) => {
                *slot = page;
                self.page_flush_count += 1;
            }
            // Too many to track one by one.
            None => self.every_space_afresh(),
        }
        for set in self.sets[..2].iter_mut().flatten() {
            if set[idx].tag == page {
                set[idx].tag = TLB_INVALID;
            }
        }
    }
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb::new()
    }
}

pub fn tlb_index(linear: u64) -> usize {
    ((linear >> 12) as usize) & (TLB_ENTRIES - 1)
}

/// Byte offset of entry set `(mmu_idx, access)` inside [`Tlb`].
pub fn tlb_set_offset(mmu_idx: usize, write: bool) -> usize {
    (mmu_idx * 2 + write as usize) * TLB_SET_BYTES
}
