//! The jump cache: a direct-mapped table from (linear RIP, block mode) to a block and its
//! compiled code, so a hot dispatch needs no page walk. The dispatcher fills and
//! invalidates it; compiled code reads it too (its inline lookups for indirect and
//! cross-page exits), which is why the entry layout, the slot hash and the key format live
//! here, where both can import them without importing each other.

use crate::block_id::BlockId;
use krr_runtime::CpuState;

/// Entries in the jump cache (a power of two, a multiple of the 4096-entry segment).
pub(crate) const JUMP_CACHE: usize = 16384;

/// A jump-cache entry. Compiled code reads these too (the compiler's inline lookups), hence
/// the fixed layout and size (a power of two).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct JumpEntry {
    /// Linear RIP of the block's first instruction.
    pub rip: u64,
    /// [`JumpCache::key`] when filled: entries from before a full flush miss.
    pub key: u32,
    pub id: BlockId,
    /// The block's compiled code, 0 while it is interpreted.
    pub code: u64,
    /// Physical address of `rip` when filled: after a full flush, an entry whose RIP still
    /// translates there is the same block again. [`STRADDLES`] is added for a block whose
    /// last instruction straddles into the next page (that page's mapping must be checked
    /// too, so such an entry is never taken again this way).
    phys: u64,
}

const STRADDLES: u64 = 1 << 63;

impl JumpEntry {
    const EMPTY: JumpEntry = JumpEntry {
        rip: u64::MAX,
        key: 0,
        id: BlockId::NONE,
        code: 0,
        phys: u64::MAX,
    };
}

/// The jump-cache slot of a linear RIP.
#[inline]
pub(crate) fn jump_slot(rip: u64) -> usize {
    (rip as usize ^ (rip >> 12) as usize) & (JUMP_CACHE - 1)
}

/// The 4096-entry segment of the jump cache that holds every slot of the linear page at
/// `page`: the slot's low 12 bits are the page offset XOR the page number's, which cover all
/// values, and the bits above depend on the page number only.
fn jump_segment(page: u64) -> usize {
    jump_slot(page & !0xfff) / 4096
}

const _: () = assert!(JUMP_CACHE.is_multiple_of(4096) && JUMP_CACHE / 4096 <= 32);

const _: () = assert!(krr_runtime::mmu::SPACE_KEY_LIMIT <= 1 << 25);
/// Set in every key, so that `cpu.tlb.jump_key == 0` (a flush the dispatcher has not seen
/// yet) matches no entry.
const JUMP_KEY_VALID: u32 = 1 << 31;
/// The mode's bits in a key.
const JUMP_MODE_MASK: u32 = crate::mode::MODE_BITS;

/// What [`JumpCache::sync`] found changed since the previous dispatch.
pub(crate) struct SyncChanges {
    /// The address space (its key) changed.
    pub switched: bool,
    /// Pages were flushed, the TLB was flushed, or the key counter wrapped.
    pub other: bool,
}

impl SyncChanges {
    pub(crate) fn any(&self) -> bool {
        self.switched || self.other
    }
}

/// The jump cache and the TLB state it was last brought in line with.
pub(crate) struct JumpCache {
    /// Direct-mapped (linear RIP, mode) -> block. Entries are tagged with the address-space
    /// key they were made under (`cpu.tlb.space`): after a flush or a switch, the others
    /// miss. Never reallocated: compiled code holds its address.
    entries: Box<[JumpEntry]>,
    /// `cpu.tlb.space` as of the last dispatch (below 2^25: the mode takes the low 6 bits of
    /// a key and [`JUMP_KEY_VALID`] the top one).
    space: u32,
    /// `cpu.tlb.space_wraps` as of the last dispatch.
    space_wraps: u64,
}

impl JumpCache {
    pub(crate) fn new() -> JumpCache {
        JumpCache {
            entries: vec![JumpEntry::EMPTY; JUMP_CACHE].into_boxed_slice(),
            space: 0,
            space_wraps: 0,
        }
    }

    /// Where the entries are, for compiled code (`JUMP_CACHE` of them, never moved).
    pub(crate) fn as_ptr(&self) -> *const JumpEntry {
        self.entries.as_ptr()
    }

    /// Bring the jump cache in line with the TLB (flushes, address-space switches, INVLPG)
    /// before a lookup; compiled code may then use it again. Says what changed since the
    /// last call.
    #[inline]
    pub(crate) fn sync(&mut self, cpu: &mut CpuState) -> SyncChanges {
        let wrapped = cpu.exec.tlb.space_wraps != self.space_wraps;
        if wrapped {
            // The key counter wrapped: old entries could match new keys.
            self.space_wraps = cpu.exec.tlb.space_wraps;
            self.entries.fill(JumpEntry::EMPTY);
        }
        let switched = cpu.exec.tlb.space as u32 != self.space;
        if switched {
            self.space = cpu.exec.tlb.space as u32;
        }
        let pages_flushed = cpu.exec.tlb.page_flush_count != 0;
        if pages_flushed {
            self.flush_pages(cpu);
        }
        // A flush the dispatcher has not seen zeroed the key.
        let key_reset = cpu.exec.tlb.jump_key != self.key(0) as u64;
        cpu.exec.tlb.jump_key = self.key(0) as u64;
        SyncChanges {
            switched,
            other: wrapped || pages_flushed || key_reset,
        }
    }

    /// The jump-cache key of `mode` now: the address space and the mode.
    #[inline]
    fn key(&self, mode: u32) -> u32 {
        JUMP_KEY_VALID | (self.space << 6) | mode
    }

    /// Forget the lookups on pages flushed one at a time (INVLPG). A block on the page before
    /// may end with an instruction straddling into a flushed page: those go too.
    #[inline(never)]
    fn flush_pages(&mut self, cpu: &mut CpuState) {
        let n = cpu.exec.tlb.page_flush_count as usize;
        cpu.exec.tlb.page_flush_count = 0;
        let pages = &cpu.exec.tlb.page_flushes[..n];
        // Only the segments where entries of those pages (or of the pages before) can be.
        let mut segments = 0u32;
        for &p in pages {
            segments |= 1 << jump_segment(p);
            segments |= 1 << jump_segment(p.wrapping_sub(0x1000));
        }
        for (i, segment) in self.entries.chunks_mut(4096).enumerate() {
            if segments & (1 << i) == 0 {
                continue;
            }
            for e in segment {
                let page = e.rip & !0xfff;
                if pages
                    .iter()
                    .any(|&p| page == p || page.wrapping_add(0x1000) == p)
                {
                    *e = JumpEntry::EMPTY;
                }
            }
        }
    }

    /// The block at `rip` in `mode`, if entry `slot` (`jump_slot(rip)`) has it under the
    /// current key.
    #[inline]
    pub(crate) fn get(&self, slot: usize, rip: u64, mode: u32) -> Option<BlockId> {
        let e = &self.entries[slot];
        if e.rip == rip && e.key == self.key(mode) && e.id != BlockId::NONE {
            return Some(e.id);
        }
        None
    }

    /// After a miss on `slot`: an entry for `rip` and `mode` filled before a flush whose RIP
    /// still translates to `phys` is the same block; it is taken again under the current key.
    #[inline]
    pub(crate) fn revalidate(
        &mut self,
        slot: usize,
        rip: u64,
        mode: u32,
        phys: u64,
    ) -> Option<BlockId> {
        let key = self.key(mode);
        let e = &mut self.entries[slot];
        if e.rip == rip && e.id != BlockId::NONE && e.key & JUMP_MODE_MASK == mode && e.phys == phys
        {
            // Filled before a flush and still mapped the same way, on one page: the same
            // block. (Entries of discarded blocks are cleared, so the block is still valid.)
            e.key = key;
            return Some(e.id);
        }
        None
    }

    /// Enter block `id` (at `rip`, in `mode`, its first byte at `phys`; `straddles` when its
    /// last instruction reaches into the next page) in its slot, with its code if compiled.
    pub(crate) fn fill(
        &mut self,
        rip: u64,
        mode: u32,
        phys: u64,
        straddles: bool,
        id: BlockId,
        code: u64,
    ) {
        self.entries[jump_slot(rip)] = JumpEntry {
            rip,
            key: self.key(mode),
            id,
            code,
            phys: phys | if straddles { STRADDLES } else { 0 },
        };
    }

    /// Block `id`, starting at linear `start`, was just compiled: its entry, if any, now
    /// leads to the code.
    pub(crate) fn publish_code(&mut self, start: u64, id: BlockId, code: u64) {
        let e = &mut self.entries[jump_slot(start)];
        if e.id == id {
            e.code = code;
        }
    }

    /// Block `id`, starting at linear `start`, was discarded: drop its entry, if any.
    pub(crate) fn remove(&mut self, start: u64, id: BlockId) {
        // A block is only ever entered in the jump cache at its start's slot.
        let e = &mut self.entries[jump_slot(start)];
        if e.id == id {
            *e = JumpEntry::EMPTY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_of_a_page_is_in_its_segment() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = x & 0x0000_ffff_ffff_f000;
            let segment = jump_segment(page);
            for offset in [0u64, 1, 0x7ff, 0x800, 0xfff, x & 0xfff] {
                assert_eq!(
                    jump_slot(page + offset) / 4096,
                    segment,
                    "{page:#x}+{offset:#x}"
                );
            }
        }
    }

    #[test]
    fn entries_hit_under_their_mode_until_removed() {
        let mut cache = JumpCache::new();
        let (rip, id) = (0xffff_8000_0012_3456, BlockId::from_index(7));
        assert_eq!(cache.get(jump_slot(rip), rip, 0), None);
        cache.fill(rip, 0, 0x12_3456, false, id, 0);
        assert_eq!(cache.get(jump_slot(rip), rip, 0), Some(id));
        assert_eq!(cache.get(jump_slot(rip), rip, 3), None);
        cache.publish_code(rip, id, 0x1000);
        assert_eq!(cache.entries[jump_slot(rip)].code, 0x1000);
        cache.remove(rip, BlockId::from_index(8));
        assert_eq!(cache.get(jump_slot(rip), rip, 0), Some(id));
        cache.remove(rip, id);
        assert_eq!(cache.get(jump_slot(rip), rip, 0), None);
    }

    #[test]
    fn revalidation_needs_the_same_mode_and_one_page() {
        let mut cache = JumpCache::new();
        let (rip, id) = (0x40_1000, BlockId::from_index(1));
        let slot = jump_slot(rip);
        cache.fill(rip, 3, 0x9000, false, id, 0);
        cache.space = 5; // an address-space switch: the entry's key is stale
        assert_eq!(cache.get(slot, rip, 3), None);
        assert_eq!(cache.revalidate(slot, rip, 0, 0x9000), None);
        assert_eq!(cache.revalidate(slot, rip, 3, 0xa000), None);
        assert_eq!(cache.revalidate(slot, rip, 3, 0x9000), Some(id));
        assert_eq!(cache.get(slot, rip, 3), Some(id));
        let (far, other) = (0x40_2ffe, BlockId::from_index(2));
        cache.fill(far, 3, 0xbffe, true, other, 0);
        cache.space = 6;
        assert_eq!(cache.revalidate(jump_slot(far), far, 3, 0xbffe), None);
    }
}
