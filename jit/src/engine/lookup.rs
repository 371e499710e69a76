//! Finding the block for RIP: the successor link an interpreted block left, the jump cache,
//! then a page walk and the block map (decoding the block if it is new).

use super::{Engine, Entry, Exit};
use crate::block::{self, FetchError};
use crate::block_id::BlockId;
use crate::jump_cache::jump_slot;
use crate::mode;
use krr_runtime::{mmu, CpuState};

/// An interpreted block's link to the block that ran after it, so the dispatcher can skip
/// the jump-cache lookup (a cache miss per block in single-step mode) when it comes again.
/// Kept only within a page, like compiled code's exit links: the source block was found
/// through its page's current mapping, so the same linear page leads to the same physical one.
#[derive(Clone, Copy)]
pub(super) struct Successor {
    rip: u64,
    mode: u32,
    id: BlockId,
}

impl Successor {
    pub(super) const NONE: Successor = Successor {
        rip: u64::MAX,
        mode: 0,
        id: BlockId::NONE,
    };
}

impl Engine {
    /// Bring the jump cache in line with the TLB (flushes, address-space switches, INVLPG)
    /// before a lookup; compiled code may then use it again.
    #[inline]
    /// Returns whether any translation changed since the last dispatch (then no successor
    /// link may be followed).
    pub(super) fn sync_translations(&mut self, cpu: &mut CpuState) -> bool {
        let changes = self.jump_cache.sync(cpu);
        if changes.switched {
            self.stats.space_switches += 1;
        }
        changes.any()
    }

    /// The block block `from` (interpreted just now) links to, if it is the one for RIP now.
    #[inline]
    pub(super) fn linked_successor(&self, cpu: &CpuState, from: BlockId) -> Option<BlockId> {
        let link = self.entries[from].successor;
        (link.rip == cpu.rip && link.mode == mode::current(cpu) && self.entries[link.id].valid)
            .then_some(link.id)
    }

    /// Remember that block `to` ran after the interpreted block `from`, when a link may say so
    /// (same page, `to` entirely on it).
    pub(super) fn set_successor(&mut self, cpu: &CpuState, from: BlockId, to: BlockId) {
        let target = &self.entries[to];
        if target.straddles()
            || target.block.start & !0xfff != self.entries[from].block.start & !0xfff
        {
            return;
        }
        self.entries[from].successor = Successor {
            rip: cpu.rip,
            mode: mode::current(cpu),
            id: to,
        };
    }

    #[inline]
    pub(super) fn lookup(&mut self, cpu: &mut CpuState) -> Result<BlockId, Exit> {
        let rip = cpu.rip;
        let mode = mode::current(cpu);
        let slot = jump_slot(rip);
        if let Some(id) = self.jump_cache.get(slot, rip, mode) {
            return Ok(id);
        }
        self.lookup_slow(cpu, slot)
    }

    /// A jump-cache miss: translate RIP, find or decode the block, fill the jump cache.
    #[inline(never)]
    fn lookup_slow(&mut self, cpu: &mut CpuState, slot: usize) -> Result<BlockId, Exit> {
        self.stats.jump_cache_misses += 1;
        let rip = cpu.rip;
        let mode = mode::current(cpu);
        let user = mode & 3 == 3;
        let phys = match mmu::translate(cpu, rip, mmu::Access::Execute, user) {
            Ok(t) => t.phys,
            Err(e) => {
                cpu.exec.exception = e;
                return Err(Exit::Exception {
                    trap: false,
                    unimplemented: false,
                });
            }
        };
        if let Some(id) = self.jump_cache.revalidate(slot, rip, mode, phys) {
            self.stats.jump_cache_revalidations += 1;
            return Ok(id);
        }
        let id = match self.by_phys.get(&(phys, mode)) {
            Some(&id)
                if self.entries[id].valid
                    && self.entries[id].block.start == rip
                    && self.second_page_unchanged(cpu, id, user) =>
            {
                id
            }
            _ => {
                let block = match block::decode(
                    cpu,
                    mode,
                    self.config.profile,
                    self.config.max_block_insns,
                    &self.stops.addrs,
                    self.config.cpuid_gate,
                ) {
                    Ok(b) => b,
                    Err(FetchError::Fault) => {
                        return Err(Exit::Exception {
                            trap: false,
                            unimplemented: false,
                        })
                    }
                    Err(FetchError::Unbacked { phys }) => return Err(Exit::Unbacked { phys }),
                };
                self.stats.blocks_decoded += 1;
                let id = self.entries.next_id();
                // The pages the code lies on (the last instruction may straddle into the next).
                let last = rip.wrapping_add(block.len as u64 - 1);
                let last_phys = mmu::translate(cpu, last, mmu::Access::Execute, user)
                    .map(|t| t.phys)
                    .unwrap_or(phys);
                let first_end = (phys + block.len as u64).min((phys | 0xfff) + 1);
                let code_bytes = if last_phys >> 12 == phys >> 12 {
                    [[phys, first_end], [0, 0]]
                } else {
                    [[phys, first_end], [last_phys & !0xfff, last_phys + 1]]
                };
                for page in [phys >> 12, last_phys >> 12] {
                    if !cpu.is_code_page(page) {
                        cpu.set_code_page(page, true);
                        // Writes to this page must now take the slow path.
                        cpu.exec.tlb.flush_writes();
                    }
                    let list = self.page_blocks.entry(page).or_default();
                    if list.last() != Some(&id) {
                        list.push(id);
                    }
                }
                let stop = self.stops.addrs.contains(&rip);
                self.entries.push(Entry {
                    block,
                    compiled: None,
                    queued: false,
                    valid: true,
                    incoming: Vec::new(),
                    code_bytes,
                    stop,
                    successor: Successor::NONE,
                });
                self.by_phys.insert((phys, mode), id);
                id
            }
        };
        let e = &self.entries[id];
        let code = e.compiled.as_ref().map_or(0, |c| c.code as u64);
        self.jump_cache
            .fill(rip, mode, phys, e.straddles(), id, code);
        Ok(id)
    }

    /// For a block whose last instruction straddles into the next page: does that page still
    /// map to where the block's bytes were read from?
    fn second_page_unchanged(&self, cpu: &mut CpuState, id: BlockId, user: bool) -> bool {
        let e = &self.entries[id];
        if !e.straddles() {
            return true;
        }
        let last = e.block.start.wrapping_add(e.block.len as u64 - 1);
        mmu::translate(cpu, last, mmu::Access::Execute, user)
            .is_ok_and(|t| t.phys & !0xfff == e.code_bytes[1][0])
    }
}
