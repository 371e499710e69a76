//! The software TLB: direct-mapped, [`TLB_ENTRIES`] entries per MMU index (0 = supervisor,
//! 1 = user; 2 and 3 are the same with checks, see [`crate::mmu::mmu_index`]) and per access
//! kind (read, write). An entry maps one 4 KiB linear page to host memory: `tag` is the page's
//! linear address with the address space's data key in its low 12 bits (or [`TLB_INVALID`]),
//! and `addend` is what to add to a linear address to get the host address. Compiled code does
//! the lookup inline (one compare of the tag with `page | data_key`); [`crate::mmu`] fills
//! entries on a miss.
//!
//! Address spaces: every set of translations the architecture lets the CPU use together (one
//! PCID's, or without PCIDs those since the last CR3 load) has a key, [`Tlb::space`]; its low
//! 12 bits are [`Tlb::data_key`], in every tag filled under it. A CR3 load that must
//! invalidate gives the space a fresh key, so the older entries never match again; a CR3 load
//! of a PCID with bit 63 set brings back that PCID's key, and with it its entries. Entries of
//! global pages (PTE.G with CR4.PGE) are re-tagged with the new key at every switch, so they
//! survive CR3 loads and single-context INVPCID (SDM 4.10.2.4, 4.10.4.1). The engine tags its
//! own linear-address lookups (the jump cache) with the same key.
//!
//! Nothing here knows about the CPU state or the page walker.

pub const TLB_BITS: u32 = 10;
pub const TLB_ENTRIES: usize = 1 << TLB_BITS;
/// Never matches: its low 12 bits are not a data key (see [`DATA_KEY_MASK`]).
pub const TLB_INVALID: u64 = u64::MAX;
/// The bits of a tag (and of a key) that hold the data key. Data keys run from 1 to 0xffe:
/// 0xfff would let [`TLB_INVALID`] match the top page.
pub const DATA_KEY_MASK: u64 = 0xfff;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlbEntry {
    pub tag: u64,
    pub addend: u64,
}

/// Entries in the sets that are filled (supervisor and user, read and write).
const FILLED_ENTRIES: usize = 2 * 2 * TLB_ENTRIES;

#[repr(C)]
pub struct Tlb {
    /// `[mmu_idx][access]` where access 0 = read, 1 = write. The checked indices 2 and 3 are
    /// never filled: every access through them misses and takes the slow path.
    pub sets: [[[TlbEntry; TLB_ENTRIES]; 2]; 4],
    /// `space`'s low 12 bits: the low bits of every tag the current address space may use.
    /// Compiled code reads it for its probe.
    pub data_key: u64,
    /// Key of the translations the current address space may use: the engine tags its
    /// linear-address lookups with it. It changes when those translations are invalidated
    /// (a flushing CR3 load, CR0/CR4/EFER changes) or another address space becomes current;
    /// with PCIDs, a non-flushing CR3 load of a PCID seen before brings its key back, and with
    /// it the lookups made under it (the architecture lets that PCID's translations survive).
    /// Keys are below [`SPACE_KEY_LIMIT`], and their low 12 bits are never 0 nor 0xfff.
    pub space: u64,
    /// Counts wraps of the key counter: lookups made before one must all go.
    pub space_wraps: u64,
    /// Pages flushed one at a time (INVLPG) since the engine last looked: it drops only the
    /// lookups on those pages (under every key). More than fit count as a full flush.
    pub page_flushes: [u64; PAGE_FLUSHES],
    pub page_flush_count: u64,
    /// The key compiled code expects in the engine's jump cache (its mode bits added), set
    /// by the engine's dispatcher once its lookups agree with this TLB; 0 after any flush or
    /// switch until then, so compiled code never follows a lookup made under an older mapping.
    pub jump_key: u64,
    /// Accesses that missed the TLB and took the slow path (statistics).
    pub misses: u64,
    /// Which entries (bit `(mmu_idx * 2 + write) * TLB_ENTRIES + index`) were filled from a
    /// global page: re-tagged at every switch of address space.
    globals: [u64; FILLED_ENTRIES / 64],
    /// Which supervisor entries (bit `write * TLB_ENTRIES + index`) map a user page under
    /// CR4.SMAP: filled while RFLAGS.AC was set (else the access faults), dropped once it is
    /// clear ([`Tlb::drop_smap_user`]), since SMAP is checked at every access.
    smap_user: [u64; 2 * TLB_ENTRIES / 64],
    pub smap_user_any: bool,
    /// A linear range (`addr` under `mask`) holding every large page an entry was filled
    /// from, or `addr` [`TLB_INVALID`] when none: an entry holds 4 KiB of a large page, and
    /// INVLPG of any address in that page must drop them all, so INVLPG in this range flushes
    /// everything (the widening is QEMU's).
    large_addr: u64,
    large_mask: u64,
    /// The key of each PCID's translations; a key below `stale_below` is no longer valid.
    pcid_space: [u64; 4096],
    stale_below: u64,
    last_space: u64,
}

/// Single-page flushes remembered before they turn into a full one.
pub const PAGE_FLUSHES: usize = 8;

/// Address-space keys stay below this (the engine packs them with 6 mode bits into 32).
pub const SPACE_KEY_LIMIT: u64 = 1 << 25;

const _: () = assert!(SPACE_KEY_LIMIT.is_multiple_of(DATA_KEY_MASK + 1));

pub const TLB_SET_BYTES: usize = TLB_ENTRIES * std::mem::size_of::<TlbEntry>();

impl Tlb {
    pub fn new() -> Tlb {
        Tlb {
            sets: [[[TlbEntry {
                tag: TLB_INVALID,
                addend: 0,
            }; TLB_ENTRIES]; 2]; 4],
            data_key: 1,
            space: 1,
            space_wraps: 0,
            page_flushes: [0; PAGE_FLUSHES],
            page_flush_count: 0,
            jump_key: 0,
            misses: 0,
            globals: [0; FILLED_ENTRIES / 64],
            smap_user: [0; 2 * TLB_ENTRIES / 64],
            smap_user_any: false,
            large_addr: TLB_INVALID,
            large_mask: 0,
            pcid_space: [0; 4096],
            stale_below: 1,
            last_space: 1,
        }
    }

    /// The host address of `size` bytes at `linear` when the entry for (`mmu_idx`, `write`)
    /// maps them, as compiled code's inline probe finds it (the page of the last byte must
    /// match, so page-crossing accesses miss).
    #[inline]
    pub fn lookup(&self, mmu_idx: usize, write: bool, linear: u64, size: u64) -> Option<u64> {
        let e = &self.sets[mmu_idx][write as usize][tlb_index(linear)];
        let page = linear.wrapping_add(size - 1) & !0xfff;
        (e.tag == page | self.data_key).then(|| linear.wrapping_add(e.addend))
    }

    /// Cache the translation of `page` (4 KiB aligned) for (`mmu_idx` 0 or 1, `write`) under
    /// the current key; `global` for a global page, `smap_user` for a user page a supervisor
    /// access reached through RFLAGS.AC under CR4.SMAP, `page_shift` the size of the page it
    /// is part of (12, 21 or 30).
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &mut self,
        mmu_idx: usize,
        write: bool,
        page: u64,
        addend: u64,
        global: bool,
        smap_user: bool,
        page_shift: u32,
    ) {
        debug_assert!(mmu_idx < 2 && page & 0xfff == 0);
        let idx = tlb_index(page);
        self.sets[mmu_idx][write as usize][idx] = TlbEntry {
            tag: page | self.data_key,
            addend,
        };
        let bit = (mmu_idx * 2 + write as usize) * TLB_ENTRIES + idx;
        if global {
            self.globals[bit / 64] |= 1 << (bit % 64);
        } else {
            self.globals[bit / 64] &= !(1 << (bit % 64));
        }
        if mmu_idx == 0 {
            let bit = write as usize * TLB_ENTRIES + idx;
            if smap_user {
                self.smap_user[bit / 64] |= 1 << (bit % 64);
                self.smap_user_any = true;
            } else {
                self.smap_user[bit / 64] &= !(1 << (bit % 64));
            }
        }
        if page_shift > 12 {
            let mask = !((1u64 << page_shift) - 1);
            if self.large_addr == TLB_INVALID {
                self.large_addr = page & mask;
                self.large_mask = mask;
            } else {
                let mut mask = self.large_mask & mask;
                while (self.large_addr ^ page) & mask != 0 {
                    mask <<= 1;
                }
                self.large_addr &= mask;
                self.large_mask = mask;
            }
        }
    }

    /// A key no other translations have. When the data keys of the current round are used
    /// up, every entry goes and every older key becomes stale (the next round's data keys are
    /// the same), so only call it for the key about to become current.
    fn fresh_space(&mut self) -> u64 {
        self.last_space += 1;
        if self.last_space & DATA_KEY_MASK == DATA_KEY_MASK {
            self.clear_entries();
            // Skip low bits 0xfff and 0.
            self.last_space += 2;
            if self.last_space >= SPACE_KEY_LIMIT {
                self.space_wraps += 1;
                self.last_space = 1;
                self.pcid_space = [0; 4096];
            }
            self.stale_below = self.last_space;
            self.page_flush_count = 0;
        }
        self.last_space
    }

    /// Make `key` the current one: the global entries move to it, the engine's lookups wait
    /// for its dispatcher.
    fn switch_to(&mut self, key: u64) {
        self.jump_key = 0;
        let (old, new) = (self.data_key, key & DATA_KEY_MASK);
        self.space = key;
        self.data_key = new;
        if old == new {
            return;
        }
        for w in 0..self.globals.len() {
            let mut bits = self.globals[w];
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let i = w * 64 + b;
                let set = i / TLB_ENTRIES;
                let e = &mut self.sets[set / 2][set % 2][i % TLB_ENTRIES];
                if e.tag != TLB_INVALID && e.tag & DATA_KEY_MASK == old {
                    e.tag = (e.tag & !DATA_KEY_MASK) | new;
                } else {
                    // Dropped or refilled since.
                    self.globals[w] &= !(1 << b);
                }
            }
        }
    }

    /// Drop the supervisor entries of user pages filled under CR4.SMAP with RFLAGS.AC set:
    /// the engine calls it when AC is clear (only instructions that end a block change AC).
    pub fn drop_smap_user(&mut self) {
        self.smap_user_any = false;
        for w in 0..self.smap_user.len() {
            let mut bits = std::mem::take(&mut self.smap_user[w]);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                self.sets[0][i / TLB_ENTRIES][i % TLB_ENTRIES].tag = TLB_INVALID;
            }
        }
    }

    /// Drop every entry, global ones included.
    fn clear_entries(&mut self) {
        self.jump_key = 0;
        for e in self.sets[..2].iter_mut().flatten().flatten() {
            e.tag = TLB_INVALID;
        }
        self.globals = [0; FILLED_ENTRIES / 64];
        self.large_addr = TLB_INVALID;
    }

    /// Invalidate every translation of every address space, global ones included (CR0,
    /// CR4, EFER changes, INVPCID all-context with globals).
    pub fn flush(&mut self) {
        self.clear_entries();
        self.every_space_afresh();
    }

    /// Invalidate the non-global translations of every address space (INVPCID all-context
    /// except globals): every key stale (pending single-page flushes included), the current
    /// space starts with a fresh one.
    pub fn flush_non_global(&mut self) {
        self.every_space_afresh();
    }

    fn every_space_afresh(&mut self) {
        self.page_flush_count = 0;
        let key = self.fresh_space();
        self.stale_below = key;
        self.switch_to(key);
    }

    /// A CR3 load. Without PCIDs (`pcid` None) it invalidates the address space's non-global
    /// translations; with one, only when `flush` (bit 63 of the source clear), and otherwise
    /// that PCID's earlier translations stay usable. Global translations stay.
    pub fn load_cr3(&mut self, pcid: Option<u16>, flush: bool) {
        let key = match pcid {
            None => self.fresh_space(),
            Some(p) => {
                let p = p as usize & 0xfff;
                if flush || self.pcid_space[p] < self.stale_below {
                    self.pcid_space[p] = self.fresh_space();
                }
                self.pcid_space[p]
            }
        };
        self.switch_to(key);
    }

    /// Invalidate one PCID's non-global translations (INVPCID single-context); `current`
    /// says it is the current one.
    pub fn flush_pcid(&mut self, pcid: u16, current: bool) {
        let p = pcid as usize & 0xfff;
        if current {
            self.pcid_space[p] = self.fresh_space();
            self.switch_to(self.pcid_space[p]);
        } else {
            // Stale: its next load gets a fresh key.
            self.pcid_space[p] = 0;
        }
    }

    /// Drop every write entry (a page just started holding translated code, or the RAM
    /// digest wants every write to mark its page again).
    pub fn flush_writes(&mut self) {
        for idx in 0..2 {
            for e in self.sets[idx][1].iter_mut() {
                e.tag = TLB_INVALID;
            }
        }
    }

    /// INVLPG (and INVPCID individual-address): drop one page's translations, of every
    /// address space and global ones too (more than INVPCID requires). In a large page, the
    /// whole TLB goes.
    pub fn flush_page(&mut self, linear: u64) {
        if self.large_addr != TLB_INVALID && linear & self.large_mask == self.large_addr {
            self.flush();
            return;
        }
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
            if set[idx].tag & !DATA_KEY_MASK == page {
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
