//! The dispatcher: finds or decodes the block at RIP, runs it in the interpreter or as compiled
//! code, tiers hot blocks up to Cranelift, and chains compiled blocks to each other.
//!
//! # What counts as one instruction
//!
//! `cpu.icount` counts retired instructions. An instruction that faults does not retire (the
//! exception is delivered with RIP at it and the count unchanged); a trap (INT3, INTO) retires
//! before it is reported. A REP string instruction retires once when its last iteration
//! completes, however many iterations it runs (KRR's definition). The engine never retires
//! instruction number `cpu.icount_limit`: [`Engine::run`] returns [`Exit::Budget`] with
//! `cpu.icount == cpu.icount_limit` and RIP at the next instruction.

use crate::block::{self, Block, FetchError};
use crate::clif::{CompiledBlock, Jit};
use crate::interp::{Interp, StepResult};
use iced_x86::Instruction;
use krr_runtime::{mmu, CpuState};
use rustc_hash::FxHashMap as HashMap;
use std::time::Duration;

mod debug;

/// When blocks get compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierPolicy {
    /// Never: the precise interpreter runs everything.
    Interpret,
    /// Every block on its first execution.
    CompileAll,
    /// After `hot_threshold` executions, compiled in batches.
    Tiered,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub policy: TierPolicy,
    /// Instructions per block at most (1 = single-step).
    pub max_block_insns: usize,
    pub hot_threshold: u32,
    /// Blocks compiled together (one finalize per batch).
    pub batch: usize,
    /// Deliver exceptions through the guest's IDT and keep running (a whole machine), instead
    /// of returning them to the caller (user-mode snippets).
    pub deliver_exceptions: bool,
    /// Tiered: generate code on a second thread while the interpreter goes on (the result is
    /// the same; only when a block starts running compiled code changes).
    pub background_compile: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: TierPolicy::Tiered,
            max_block_insns: 64,
            hot_threshold: 1000,
            batch: 16,
            deliver_exceptions: false,
            background_compile: true,
        }
    }
}

/// Why [`Engine::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `cpu.icount` reached `cpu.icount_limit`.
    Budget,
    /// `cpu.exception` was raised at `cpu.rip` (for a trap, RIP is past the instruction).
    Exception { trap: bool, unimplemented: bool },
    /// An access (or code fetch) hit physical memory with no RAM behind it.
    Unbacked { phys: u64 },
    /// HLT retired; `cpu.rip` is past it.
    Halt,
    /// An exception during the delivery of a double fault: the machine shuts down.
    TripleFault { first: u8, second: u8 },
    /// The bus asked the engine to return (`Bus::wants_exit`).
    BusRequest,
}

#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub blocks_decoded: u64,
    pub blocks_compiled: u64,
    pub compile_time: Duration,
    pub code_bytes: u64,
    pub interpreted_insns: u64,
    pub unimplemented: u64,
    /// Blocks discarded because the guest wrote their code.
    pub blocks_invalidated: u64,
    /// Dispatcher visits in the checked mode (single-step, breakpoints, RF; engine::debug).
    pub checked_visits: u64,
    /// Returns from compiled code or the interpreter to the dispatcher.
    pub dispatches: u64,
    /// Dispatches whose jump-cache lookup missed (a page walk and a block-map lookup).
    pub jump_cache_misses: u64,
    /// Changes of the address-space key (TLB flushes, CR3 loads).
    pub space_switches: u64,
    /// Misses resolved by finding the entry's RIP still mapped to its block's address.
    pub jump_cache_revalidations: u64,
}

impl EngineStats {
    /// One line on where dispatch time goes, for `RUST_LOG=info`.
    pub fn dispatch_summary(&self) -> String {
        format!(
            "{} dispatches, {} jump-cache misses ({} revalidated), {} address-space switches, {} blocks decoded, {} invalidated, {} instructions interpreted",
            self.dispatches,
            self.jump_cache_misses,
            self.jump_cache_revalidations,
            self.space_switches,
            self.blocks_decoded,
            self.blocks_invalidated,
            self.interpreted_insns
        )
    }
}

struct Entry {
    block: Block,
    compiled: Option<CompiledBlock>,
    queued: bool,
    /// False once the guest overwrote the block's code.
    valid: bool,
    /// Exit slots of other blocks that jump straight to this one.
    incoming: Vec<*mut u64>,
    /// The physical bytes of the block's code: [start, end) on its first page and, when its
    /// last instruction straddles into the next page, on that one (else empty).
    code_bytes: [[u64; 2]; 2],
}

impl Entry {
    fn straddles(&self) -> bool {
        self.code_bytes[1][1] != 0
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.code_bytes.iter().any(|&[s, e]| s < end && start < e)
    }
}

pub(crate) const JUMP_CACHE: usize = 16384;

/// A jump-cache entry. Compiled code reads these too (clif's inline lookups), hence the
/// fixed layout and size (a power of two).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct JumpEntry {
    /// Linear RIP of the block's first instruction.
    pub rip: u64,
    /// [`Engine::jump_key`] when filled: entries from before a full flush miss.
    pub key: u32,
    pub id: u32,
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
        id: NO_ENTRY,
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

#[cfg(test)]
mod jump_cache_tests {
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
}

pub struct Engine {
    pub config: EngineConfig,
    entries: Vec<Entry>,
    by_phys: HashMap<(u64, u32), usize>,
    /// Direct-mapped (linear RIP, mode) -> block, so a hot dispatch needs no page walk.
    /// Entries are tagged with the address-space key they were made under
    /// (`cpu.tlb.space`): after a flush or a switch, the others miss. Never reallocated:
    /// compiled code holds its address.
    jump_cache: Box<[JumpEntry]>,
    /// `cpu.tlb.space` as of the last dispatch (below 2^28: the mode takes the low 3 bits of
    /// a key and [`JUMP_KEY_VALID`] the top one).
    jump_space: u32,
    /// `cpu.tlb.space_wraps` as of the last dispatch.
    space_wraps: u64,
    jit: Option<Jit>,
    pending: Vec<usize>,
    pub stats: EngineStats,
    logged_unimplemented: std::collections::HashSet<u64>,
    /// Physical page number -> blocks with code on that page.
    page_blocks: HashMap<u64, Vec<usize>>,
    /// The interpreter's undo records, allocated once.
    undo: crate::interp::Undo,
}

const NO_ENTRY: u32 = u32::MAX;
const _: () = assert!(krr_runtime::mmu::SPACE_KEY_LIMIT <= 1 << 28);
/// Set in every key, so that `cpu.tlb.jump_key == 0` (a flush the dispatcher has not seen
/// yet) matches no entry.
const JUMP_KEY_VALID: u32 = 1 << 31;
/// The mode's bits in a key.
const JUMP_MODE_MASK: u32 = 7;

/// Block mode bit: CPL3 code running with alignment checking (CR0.AM, RFLAGS.AC).
pub const MODE_ALIGNMENT_CHECK: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot set up the Cranelift JIT: {0}")]
    Jit(String),
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let jump_cache = vec![JumpEntry::EMPTY; JUMP_CACHE].into_boxed_slice();
        let jit = match config.policy {
            TierPolicy::Interpret => None,
            _ => Some(Jit::new(jump_cache.as_ptr()).map_err(EngineError::Jit)?),
        };
        Ok(Engine {
            config,
            entries: Vec::new(),
            by_phys: HashMap::default(),
            jump_cache,
            jump_space: 0,
            space_wraps: 0,
            jit,
            pending: Vec::new(),
            stats: EngineStats::default(),
            logged_unimplemented: Default::default(),
            page_blocks: HashMap::default(),
            undo: crate::interp::Undo::new(),
        })
    }

    /// The translation mode: the CPL, plus [`MODE_ALIGNMENT_CHECK`] while data accesses are
    /// alignment-checked (their compiled code uses the checked MMU index).
    fn mode(cpu: &CpuState) -> u32 {
        cpu.cpl() as u32
            | if krr_runtime::debugreg::alignment_checked(cpu) {
                MODE_ALIGNMENT_CHECK
            } else {
                0
            }
    }

    /// Bring the jump cache in line with the TLB (flushes, address-space switches, INVLPG)
    /// before a lookup; compiled code may then use it again.
    #[inline]
    fn sync_translations(&mut self, cpu: &mut CpuState) {
        if cpu.tlb.space_wraps != self.space_wraps {
            // The key counter wrapped: old entries could match new keys.
            self.space_wraps = cpu.tlb.space_wraps;
            self.jump_cache.fill(JumpEntry::EMPTY);
        }
        if cpu.tlb.space as u32 != self.jump_space {
            self.jump_space = cpu.tlb.space as u32;
            self.stats.space_switches += 1;
        }
        if cpu.tlb.page_flush_count != 0 {
            self.flush_jump_cache_pages(cpu);
        }
        cpu.tlb.jump_key = self.jump_key(0) as u64;
    }

    /// The jump-cache key of `mode` now: the address space and the mode.
    #[inline]
    fn jump_key(&self, mode: u32) -> u32 {
        JUMP_KEY_VALID | (self.jump_space << 3) | mode
    }

    /// Forget the lookups on pages flushed one at a time (INVLPG). A block on the page before
    /// may end with an instruction straddling into a flushed page: those go too.
    #[inline(never)]
    fn flush_jump_cache_pages(&mut self, cpu: &mut CpuState) {
        let n = cpu.tlb.page_flush_count as usize;
        cpu.tlb.page_flush_count = 0;
        let pages = &cpu.tlb.page_flushes[..n];
        // Only the segments where entries of those pages (or of the pages before) can be.
        let mut segments = 0u32;
        for &p in pages {
            segments |= 1 << jump_segment(p);
            segments |= 1 << jump_segment(p.wrapping_sub(0x1000));
        }
        for (i, segment) in self.jump_cache.chunks_mut(4096).enumerate() {
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

    #[inline]
    fn lookup(&mut self, cpu: &mut CpuState) -> Result<usize, Exit> {
        let rip = cpu.rip;
        let mode = Self::mode(cpu);
        let slot = jump_slot(rip);
        let e = &self.jump_cache[slot];
        if e.rip == rip && e.key == self.jump_key(mode) && e.id != NO_ENTRY {
            return Ok(e.id as usize);
        }
        self.lookup_slow(cpu, slot)
    }

    /// A jump-cache miss: translate RIP, find or decode the block, fill the jump cache.
    #[inline(never)]
    fn lookup_slow(&mut self, cpu: &mut CpuState, slot: usize) -> Result<usize, Exit> {
        self.stats.jump_cache_misses += 1;
        let rip = cpu.rip;
        let mode = Self::mode(cpu);
        let user = mode & 3 == 3;
        let phys = match mmu::translate(cpu, rip, mmu::Access::Execute, user) {
            Ok(t) => t.phys,
            Err(e) => {
                cpu.exception = e;
                return Err(Exit::Exception {
                    trap: false,
                    unimplemented: false,
                });
            }
        };
        let key = self.jump_key(mode);
        let e = &mut self.jump_cache[slot];
        if e.rip == rip && e.id != NO_ENTRY && e.key & JUMP_MODE_MASK == mode && e.phys == phys {
            // Filled before a flush and still mapped the same way, on one page: the same
            // block. (Entries of discarded blocks are cleared, so the block is still valid.)
            e.key = key;
            self.stats.jump_cache_revalidations += 1;
            return Ok(e.id as usize);
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
                let block = match block::decode(cpu, mode, self.config.max_block_insns) {
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
                let id = self.entries.len();
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
                        cpu.tlb.flush_writes();
                    }
                    let list = self.page_blocks.entry(page).or_default();
                    if list.last() != Some(&id) {
                        list.push(id);
                    }
                }
                self.entries.push(Entry {
                    block,
                    compiled: None,
                    queued: false,
                    valid: true,
                    incoming: Vec::new(),
                    code_bytes,
                });
                self.by_phys.insert((phys, mode), id);
                id
            }
        };
        let e = &self.entries[id];
        self.jump_cache[slot] = JumpEntry {
            rip,
            key: self.jump_key(mode),
            id: id as u32,
            code: e.compiled.as_ref().map_or(0, |c| c.code as u64),
            phys: phys | if e.straddles() { STRADDLES } else { 0 },
        };
        Ok(id)
    }

    /// For a block whose last instruction straddles into the next page: does that page still
    /// map to where the block's bytes were read from?
    fn second_page_unchanged(&self, cpu: &mut CpuState, id: usize, user: bool) -> bool {
        let e = &self.entries[id];
        if !e.straddles() {
            return true;
        }
        let last = e.block.start.wrapping_add(e.block.len as u64 - 1);
        mmu::translate(cpu, last, mmu::Access::Execute, user)
            .is_ok_and(|t| t.phys & !0xfff == e.code_bytes[1][0])
    }

    /// Run with `bus` serving port IO, MMIO and the nondeterministic inputs.
    pub fn run_with_bus(&mut self, cpu: &mut CpuState, bus: &mut dyn krr_runtime::Bus) -> Exit {
        // SAFETY: the pointer is only used while this call runs (through `bus::with_bus`) and is
        // cleared before it returns, so extending its lifetime to 'static is never observable.
        let ptr: std::ptr::NonNull<dyn krr_runtime::Bus> = unsafe {
            std::mem::transmute::<
                std::ptr::NonNull<dyn krr_runtime::Bus + '_>,
                std::ptr::NonNull<dyn krr_runtime::Bus>,
            >(std::ptr::NonNull::from(bus))
        };
        cpu.bus = Some(ptr);
        let exit = self.run(cpu);
        cpu.bus = None;
        exit
    }

    /// Can an external interrupt be taken at this instruction boundary?
    pub fn interrupts_enabled(cpu: &CpuState) -> bool {
        cpu.rflags & krr_runtime::rflags::IF != 0
            && cpu.irq_shadow_at != cpu.icount
            // A debug trap due at this boundary comes first.
            && cpu.pending_db == 0
    }

    /// Deliver external interrupt `vector` now (the caller checked `interrupts_enabled`).
    pub fn inject_interrupt(&mut self, cpu: &mut CpuState, vector: u8) -> Result<(), Exit> {
        self.deliver(
            cpu,
            vector,
            krr_runtime::interrupt::EventKind::External,
            None,
            cpu.rip,
        )
    }

    fn deliver(
        &mut self,
        cpu: &mut CpuState,
        vector: u8,
        kind: krr_runtime::interrupt::EventKind,
        error_code: Option<u32>,
        return_rip: u64,
    ) -> Result<(), Exit> {
        let arith = crate::interp::materialize_flags(cpu);
        let flags = (cpu.rflags & !krr_runtime::rflags::ARITH) | arith;
        let fault_rip = if kind == krr_runtime::interrupt::EventKind::Software {
            cpu.trap_rip
        } else {
            return_rip
        };
        match krr_runtime::interrupt::deliver(
            cpu, vector, kind, error_code, flags, return_rip, fault_rip,
        ) {
            Ok(replaced) => {
                if replaced {
                    // The INT faulted during its delivery: it did not retire after all.
                    cpu.icount -= 1;
                }
                Ok(())
            }
            Err(krr_runtime::interrupt::DeliveryError::TripleFault { first, second }) => {
                Err(Exit::TripleFault { first, second })
            }
            Err(krr_runtime::interrupt::DeliveryError::Unbacked(phys)) => {
                Err(Exit::Unbacked { phys })
            }
        }
    }

    /// Run until the instruction budget, an exception or an access the driver must handle.
    pub fn run(&mut self, cpu: &mut CpuState) -> Exit {
        loop {
            let exit = self.run_until_event(cpu);
            match exit {
                Exit::Exception { .. } if self.config.deliver_exceptions => {
                    let e = cpu.exception;
                    let kind = if e.software {
                        krr_runtime::interrupt::EventKind::Software
                    } else {
                        krr_runtime::interrupt::EventKind::Exception
                    };
                    let code = e.has_error_code.then_some(e.error_code);
                    if let Err(exit) = self.deliver(cpu, e.vector, kind, code, cpu.rip) {
                        return exit;
                    }
                }
                other => return other,
            }
        }
    }

    fn run_until_event(&mut self, cpu: &mut CpuState) -> Exit {
        loop {
            self.stats.dispatches += 1;
            // Looking for finished compilations costs a channel poll: not at every dispatch.
            if self.stats.dispatches.is_multiple_of(64)
                && self.jit.as_ref().is_some_and(|j| j.in_flight() > 0)
            {
                self.install_background(false);
            }
            if debug::checked_mode(cpu) {
                // Single-stepping, breakpoints or RF: one instruction at a time (engine::debug).
                match self.debug_visit(cpu) {
                    Some(exit) => return exit,
                    None => continue,
                }
            }
            if cpu.icount >= cpu.icount_limit {
                return Exit::Budget;
            }
            self.sync_translations(cpu);
            if cpu.bus.is_some()
                && krr_runtime::bus::with_bus(cpu, |bus, cpu| bus.wants_exit(cpu)).unwrap_or(false)
            {
                return Exit::BusRequest;
            }
            let id = match self.lookup(cpu) {
                Ok(id) => id,
                Err(exit) => return exit,
            };
            if cpu.irq_shadow_at == cpu.icount && cpu.icount + 1 < cpu.icount_limit {
                // The instruction after STI / MOV SS: interrupts become deliverable right
                // after it. Run exactly that one instruction, then come back here (where the
                // bus is asked about pending interrupts), so every tier takes an interrupt at
                // the same boundary as the hardware does.
                let limit = std::mem::replace(&mut cpu.icount_limit, cpu.icount + 1);
                let exit = self.interpret_block(cpu, id);
                cpu.icount_limit = limit;
                if cpu.smc_count != 0 {
                    self.handle_code_writes(cpu);
                }
                match exit {
                    None | Some(Exit::Budget) => continue,
                    Some(other) => return other,
                }
            }
            if self.entries[id].compiled.is_none() {
                self.maybe_compile(id);
            }
            let exit = if self.entries[id].compiled.is_some() {
                self.run_compiled(cpu, id)
            } else {
                self.interpret_block(cpu, id)
            };
            if cpu.smc_count != 0 {
                self.handle_code_writes(cpu);
            }
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Count an execution of block `id` (not yet compiled) and compile it if the policy says so.
    #[inline]
    fn maybe_compile(&mut self, id: usize) {
        let e = &mut self.entries[id];
        e.block.exec_count = e.block.exec_count.saturating_add(1);
        match self.config.policy {
            TierPolicy::Interpret => {}
            TierPolicy::CompileAll => self.compile(&[id]),
            TierPolicy::Tiered if self.config.background_compile => {
                if e.block.exec_count >= self.config.hot_threshold && !e.queued {
                    e.queued = true;
                    if let Some(jit) = self.jit.as_mut() {
                        let t0 = std::time::Instant::now();
                        jit.submit(id as u64, &self.entries[id].block);
                        self.stats.compile_time += t0.elapsed();
                    }
                }
            }
            TierPolicy::Tiered => {
                if e.block.exec_count >= self.config.hot_threshold {
                    self.tier_up(id);
                }
            }
        }
    }

    /// Install the blocks the compile thread finished (`wait`: all of them, now).
    fn install_background(&mut self, wait: bool) {
        let Some(jit) = self.jit.as_mut() else { return };
        let (done, time) = jit.collect(self.config.batch, wait);
        self.stats.compile_time += time;
        for d in done {
            let e = &mut self.entries[d.tag as usize];
            e.queued = false;
            if e.valid {
                self.stats.blocks_compiled += 1;
                self.stats.code_bytes += d.block.code_size as u64;
                let code = d.block.code as u64;
                e.compiled = Some(d.block);
                self.publish_code(d.tag as usize, code);
            }
        }
    }

    /// Wait for the compile thread and install everything it was given (tests and
    /// benchmarks that want a fully compiled steady state).
    pub fn finish_compiling(&mut self) {
        self.install_background(true);
    }

    /// A block reached the hot threshold: queue it, and compile the queue once it is full or
    /// once a queued block is clearly hot.
    #[inline(never)]
    fn tier_up(&mut self, id: usize) {
        let e = &mut self.entries[id];
        let n = e.block.exec_count;
        if !e.queued {
            e.queued = true;
            self.pending.push(id);
        }
        if self.pending.len() >= self.config.batch
            || n >= self.config.hot_threshold.saturating_mul(4)
        {
            let batch = std::mem::take(&mut self.pending);
            self.compile(&batch);
        }
    }

    fn compile(&mut self, ids: &[usize]) {
        let ids: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| self.entries[i].valid)
            .collect();
        let ids = &ids[..];
        let Some(jit) = self.jit.as_mut() else { return };
        let t0 = std::time::Instant::now();
        let blocks: Vec<&Block> = ids.iter().map(|&i| &self.entries[i].block).collect();
        let compiled = jit.compile(&blocks);
        self.stats.compile_time += t0.elapsed();
        for (&i, c) in ids.iter().zip(compiled) {
            self.stats.blocks_compiled += 1;
            self.stats.code_bytes += c.code_size as u64;
            let code = c.code as u64;
            self.entries[i].compiled = Some(c);
            self.entries[i].queued = false;
            self.publish_code(i, code);
        }
    }

    /// Block `id` was just compiled: its jump-cache entry, if any, now leads to the code.
    fn publish_code(&mut self, id: usize, code: u64) {
        let e = &mut self.jump_cache[jump_slot(self.entries[id].block.start)];
        if e.id == id as u32 {
            e.code = code;
        }
    }

    fn run_compiled(&mut self, cpu: &mut CpuState, id: usize) -> Option<Exit> {
        let jit = self.jit.as_ref().expect("compiled blocks imply a JIT");
        let code = self.entries[id]
            .compiled
            .as_ref()
            .expect("checked by caller")
            .code;
        cpu.exit_slot = 0;
        cpu.helper_status = crate::helpers::OK;
        let unimpl_before = cpu.unimplemented_count;
        let reason = jit.enter(cpu, code);
        match reason {
            crate::clif::EXIT_NORMAL => {
                if cpu.exit_slot != 0 {
                    self.link(cpu);
                }
                None
            }
            crate::clif::EXIT_BUDGET => {
                // Not enough budget for the whole block: finish instruction by instruction.
                let id = match self.lookup(cpu) {
                    Ok(id) => id,
                    Err(exit) => return Some(exit),
                };
                self.interpret_block(cpu, id)
            }
            _ => {
                if cpu.helper_status == crate::helpers::HALT {
                    cpu.helper_status = crate::helpers::OK;
                    return Some(Exit::Halt);
                }
                if cpu.helper_status == crate::helpers::UNBACKED {
                    cpu.helper_status = crate::helpers::OK;
                    return Some(Exit::Unbacked {
                        phys: cpu.unbacked_phys,
                    });
                }
                let unimplemented = cpu.unimplemented_count != unimpl_before;
                if unimplemented {
                    self.log_unimplemented(cpu);
                }
                let v = cpu.exception.vector;
                let trap = v == krr_runtime::vector::BP || v == krr_runtime::vector::OF;
                Some(Exit::Exception {
                    trap,
                    unimplemented,
                })
            }
        }
    }

    /// Point the exit slot compiled code just left through at the block for the new RIP, so the
    /// next time that exit jumps straight there.
    fn link(&mut self, cpu: &mut CpuState) {
        let slot = cpu.exit_slot as *mut u64;
        cpu.exit_slot = 0;
        // Link only within a page, as QEMU does in system mode: the jump's linear target then
        // lies on the source block's own page, whose mapping is the one the source was found
        // through, so no address-space change can make the link stale. Cross-page jumps go
        // through the jump cache, which is flushed with the TLB.
        if cpu.exit_from & !0xfff != cpu.rip & !0xfff {
            return;
        }
        let Ok(target) = self.lookup(cpu) else { return };
        if self.entries[target].compiled.is_none() {
            self.maybe_compile(target);
        }
        if cpu.smc_count != 0 {
            // Do not link while stale blocks may still be around.
            return;
        }
        if let Some(c) = &self.entries[target].compiled {
            // SAFETY: `slot` is the address of an exit slot owned by a CompiledBlock of this
            // engine (compiled code stores only such addresses); no compiled code runs now.
            unsafe { *slot = c.code as u64 };
            self.entries[target].incoming.push(slot);
        }
    }

    fn interpret_block(&mut self, cpu: &mut CpuState, id: usize) -> Option<Exit> {
        let block = &self.entries[id].block;
        let (insns, mems) = (&block.insns[..], &block.mem[..]);
        // The budget is known up front: run at most `n` instructions.
        let room = cpu.icount_limit.saturating_sub(cpu.icount);
        let n = if room < insns.len() as u64 {
            room as usize
        } else {
            insns.len()
        };
        let icount_before = cpu.icount;
        cpu.helper_status = crate::helpers::OK;
        let mut it = Interp::new(cpu, &mut self.undo);
        let mut end = None;
        for (i, (insn, mem)) in insns[..n].iter().zip(&mems[..n]).enumerate() {
            match it.step(insn, mem) {
                StepResult::Retired => {
                    // A taken branch can only be the block's last instruction, but a retired
                    // instruction may also have been interrupted mid-way (REP): follow RIP. A
                    // write to translated code ends the block so the next instruction is
                    // decoded afresh.
                    let cpu = it.cpu();
                    if cpu.rip != insn.next_ip() || cpu.smc_count != 0 {
                        end = Some((i, StepResult::Retired));
                        break;
                    }
                }
                other => {
                    end = Some((i, other));
                    break;
                }
            }
        }
        // Every instruction that retired (traps and HLT included) counted in `cpu.icount`.
        self.stats.interpreted_insns += cpu.icount - icount_before;
        match end {
            None if n < insns.len() => Some(Exit::Budget),
            None | Some((_, StepResult::Retired)) => None,
            Some((i, r)) => Some(self.step_exit(cpu, id, i, r)),
        }
    }

    /// The exit for an interpreted instruction that did not simply retire.
    #[cold]
    fn step_exit(&mut self, cpu: &mut CpuState, id: usize, i: usize, r: StepResult) -> Exit {
        match r {
            StepResult::Retired => unreachable!("retired instructions do not exit"),
            StepResult::Exception {
                trap,
                unimplemented,
            } => {
                if unimplemented {
                    let insn = self.entries[id].block.insns[i];
                    self.note_unimplemented(cpu, &insn);
                }
                Exit::Exception {
                    trap,
                    unimplemented,
                }
            }
            StepResult::Unbacked => Exit::Unbacked {
                phys: cpu.unbacked_phys,
            },
            StepResult::Halt => Exit::Halt,
        }
    }

    /// Compiled code hit an unimplemented instruction at RIP: decode it for the log.
    fn log_unimplemented(&mut self, cpu: &mut CpuState) {
        if self.logged_unimplemented.contains(&cpu.rip) {
            self.stats.unimplemented += 1;
            return;
        }
        let mut bytes = [0u8; block::MAX_INSN_LEN];
        let n = mmu::fetch_code(cpu, cpu.rip, &mut bytes).unwrap_or(0);
        let mut d = iced_x86::Decoder::with_ip(64, &bytes[..n], cpu.rip, 0);
        let insn = d.decode();
        self.note_unimplemented(cpu, &insn);
    }

    /// Count an unimplemented instruction (at RIP) and log it the first time.
    fn note_unimplemented(&mut self, cpu: &mut CpuState, insn: &Instruction) {
        self.stats.unimplemented += 1;
        if self.logged_unimplemented.insert(cpu.rip) {
            log::warn!(
                "unimplemented instruction `{}` ({}) at RIP {:#x}, instruction {}: raising #UD",
                insn,
                hex_bytes(cpu, insn),
                cpu.rip,
                cpu.icount
            );
        }
    }

    /// The guest (or a DMA write the driver reports through [`Engine::notify_write`]) wrote
    /// pages holding translated code: discard the blocks whose bytes were written and unlink
    /// every jump to them. Other blocks on those pages stay (the kernel patches single
    /// instructions in pages full of hot code; data may share a page with code). A page with
    /// no block left stops being a code page, so its writes take the fast path again.
    fn handle_code_writes(&mut self, cpu: &mut CpuState) {
        let n = cpu.smc_count as usize;
        cpu.smc_count = 0;
        if n > cpu.smc_writes.len() {
            // Too many to tell apart: every block goes.
            let pages: Vec<u64> = self.page_blocks.keys().copied().collect();
            for page in pages {
                cpu.set_code_page(page, false);
                for id in self.page_blocks.remove(&page).unwrap_or_default() {
                    self.invalidate(id);
                }
            }
            return;
        }
        let writes = cpu.smc_writes;
        for &[start, end] in &writes[..n] {
            for page in (start >> 12)..=((end - 1) >> 12) {
                let Some(list) = self.page_blocks.remove(&page) else {
                    continue;
                };
                let (doomed, kept): (Vec<usize>, Vec<usize>) = list
                    .into_iter()
                    .filter(|&id| self.entries[id].valid)
                    .partition(|&id| self.entries[id].overlaps(start, end));
                for id in doomed {
                    self.invalidate(id);
                }
                if kept.is_empty() {
                    cpu.set_code_page(page, false);
                } else {
                    self.page_blocks.insert(page, kept);
                }
            }
        }
    }

    fn invalidate(&mut self, id: usize) {
        let e = &mut self.entries[id];
        if !e.valid {
            return;
        }
        e.valid = false;
        e.queued = false;
        for slot in e.incoming.drain(..) {
            // SAFETY: `slot` was recorded by `link` and points into a CompiledBlock this engine
            // keeps alive; no compiled code runs now.
            unsafe { *slot = 0 };
        }
        let key = (e.block.phys, e.block.mode);
        if self.by_phys.get(&key) == Some(&id) {
            self.by_phys.remove(&key);
        }
        // A block is only ever entered in the jump cache at its start's slot.
        let c = &mut self.jump_cache[jump_slot(e.block.start)];
        if c.id == id as u32 {
            *c = JumpEntry::EMPTY;
        }
        self.stats.blocks_invalidated += 1;
    }

    /// The driver wrote guest physical memory behind the CPU's back (DMA, loading an image):
    /// drop translations of the pages it touched.
    pub fn notify_write(&mut self, cpu: &mut CpuState, phys: u64, len: u64) {
        if len == 0 {
            return;
        }
        for page in (phys >> 12)..=((phys + len - 1) >> 12) {
            if cpu.is_code_page(page) {
                let start = phys.max(page << 12);
                let end = (phys + len).min((page + 1) << 12);
                mmu::note_code_write(cpu, start, end - start);
            }
        }
        if cpu.smc_count != 0 {
            self.handle_code_writes(cpu);
        }
    }

    /// Number of decoded blocks.
    pub fn block_count(&self) -> usize {
        self.entries.len()
    }
}

/// The instruction's bytes as hex, read back from guest memory.
pub fn hex_bytes(cpu: &mut CpuState, insn: &Instruction) -> String {
    let mut bytes = [0u8; block::MAX_INSN_LEN];
    let n = mmu::fetch_code(cpu, insn.ip(), &mut bytes[..insn.len()]).unwrap_or(0);
    bytes[..n]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
