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

use crate::block::{self, Block};
use crate::block_id::BlockId;
use crate::compile::{CompiledBlock, Jit};
use crate::interp::Interp;
use crate::jump_cache::JumpCache;
use crate::mode;
use iced_x86::Instruction;
use krr_runtime::{mmu, Core, CpuState, Outcome};
use rustc_hash::FxHashMap as HashMap;
use std::ops::{Index, IndexMut};
use std::time::Duration;

mod config;
mod debug;
mod lookup;
mod perf_map;
mod stops;

pub use config::{EngineConfig, TierPolicy};

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
    /// RIP reached a stop address ([`Engine::set_stop_addresses`]); the instruction there has
    /// not executed ([`Engine::resume_past_stop`] lets it).
    Stop { rip: u64 },
    /// The next instruction is at CPL3 and the engine was asked to stop there
    /// ([`Engine::set_stop_at_user_mode`]); nothing of it has run.
    UserMode,
}

#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    pub blocks_decoded: u64,
    pub blocks_compiled: u64,
    /// Blocks installed from the code cache (not compiled).
    pub blocks_cached: u64,
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
    /// Data accesses that missed the software TLB (slow-path calls), as of the last return
    /// from the engine.
    pub tlb_misses: u64,
}

impl EngineStats {
    /// Count a block whose code was just installed.
    fn count_installed(&mut self, c: &CompiledBlock) {
        if c.from_cache {
            self.blocks_cached += 1;
        } else {
            self.blocks_compiled += 1;
        }
        self.code_bytes += c.code_size as u64;
    }

    /// One line on where dispatch time goes, for `RUST_LOG=info`.
    pub fn dispatch_summary(&self) -> String {
        format!(
            "{} dispatches, {} jump-cache misses ({} revalidated), {} address-space switches, {} TLB misses, {} blocks decoded, {} invalidated, {} instructions interpreted",
            self.dispatches,
            self.jump_cache_misses,
            self.jump_cache_revalidations,
            self.space_switches,
            self.tlb_misses,
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
    /// It starts at a stop address (`engine::stops`): never compiled or chained to.
    stop: bool,
    /// The block that last followed this one when it ran interpreted, on the same page.
    successor: lookup::Successor,
}

impl Entry {
    fn straddles(&self) -> bool {
        self.code_bytes[1][1] != 0
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.code_bytes.iter().any(|&[s, e]| s < end && start < e)
    }
}

/// The decoded blocks, indexed by [`BlockId`]. Blocks are never removed (a discarded one
/// stays, marked invalid), so an id stays valid for the engine's lifetime.
#[derive(Default)]
struct BlockTable(Vec<Entry>);

impl BlockTable {
    /// The id the next block pushed gets.
    fn next_id(&self) -> BlockId {
        BlockId::from_index(self.0.len())
    }

    fn push(&mut self, entry: Entry) {
        self.0.push(entry);
    }

    /// Every id handed out so far.
    fn ids(&self) -> impl Iterator<Item = BlockId> {
        (0..self.0.len()).map(BlockId::from_index)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

impl Index<BlockId> for BlockTable {
    type Output = Entry;

    #[inline]
    fn index(&self, id: BlockId) -> &Entry {
        &self.0[id.index()]
    }
}

impl IndexMut<BlockId> for BlockTable {
    #[inline]
    fn index_mut(&mut self, id: BlockId) -> &mut Entry {
        &mut self.0[id.index()]
    }
}

pub struct Engine {
    pub config: EngineConfig,
    entries: BlockTable,
    by_phys: HashMap<(u64, u32), BlockId>,
    /// (linear RIP, mode) -> block, so a hot dispatch needs no page walk.
    jump_cache: JumpCache,
    jit: Option<Jit>,
    pending: Vec<BlockId>,
    pub stats: EngineStats,
    logged_unimplemented: std::collections::HashSet<u64>,
    /// Physical page number -> blocks with code on that page.
    page_blocks: HashMap<u64, Vec<BlockId>>,
    /// The interpreter's undo records, allocated once.
    undo: crate::interp::Undo,
    stops: stops::Stops,
    perf_map: perf_map::PerfMap,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot set up the Cranelift JIT: {0}")]
    Jit(String),
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        let jump_cache = JumpCache::new();
        let jit = match config.policy {
            TierPolicy::Interpret => None,
            _ => Some(Jit::new(jump_cache.as_ptr(), config.code_cache).map_err(EngineError::Jit)?),
        };
        Ok(Engine {
            config,
            entries: BlockTable::default(),
            by_phys: HashMap::default(),
            jump_cache,
            jit,
            pending: Vec::new(),
            stats: EngineStats::default(),
            logged_unimplemented: Default::default(),
            page_blocks: HashMap::default(),
            perf_map: perf_map::PerfMap::from_env(),
            undo: crate::interp::Undo::new(),
            stops: stops::Stops::default(),
        })
    }

    /// Run with `bus` serving port IO, MMIO and the nondeterministic inputs.
    pub fn run_with_bus(&mut self, core: &mut Core, bus: &mut dyn krr_runtime::Bus) -> Exit {
        // SAFETY: the engine reads and writes the state's fields; it never moves or replaces it.
        let cpu = unsafe { core.state_mut() };
        krr_runtime::bus::attached(cpu, bus, |cpu| self.run_state(cpu))
    }

    /// Can an external interrupt be taken at this instruction boundary?
    pub fn interrupts_enabled(cpu: &CpuState) -> bool {
        cpu.rflags & krr_runtime::rflags::IF != 0
            && cpu.irq_shadow_at != cpu.icount
            // A debug trap due at this boundary comes first.
            && cpu.pending_db == 0
    }

    /// Whether an NMI can be delivered at this boundary: not while an earlier NMI's handler
    /// runs (until IRET), nor in the STI / MOV SS shadow (SDM 6.8.3: MOV SS blocks NMIs too;
    /// whether STI does is model-specific, and treating both alike keeps one rule), nor
    /// before a debug trap due here.
    pub fn nmi_deliverable(cpu: &CpuState) -> bool {
        cpu.nmi_blocked == 0 && cpu.irq_shadow_at != cpu.icount && cpu.pending_db == 0
    }

    /// Deliver an NMI now through IDT vector 2 (the caller checked `nmi_deliverable`); NMIs
    /// stay blocked until the next IRET.
    pub fn inject_nmi(&mut self, core: &mut Core) -> Result<(), Exit> {
        // SAFETY: as in `run_with_bus`.
        let cpu = unsafe { core.state_mut() };
        cpu.nmi_blocked = 1;
        self.deliver(
            cpu,
            krr_runtime::arch::vector::NMI,
            krr_runtime::interrupt::EventKind::External,
            None,
            cpu.rip,
        )
    }

    /// Deliver exception `vector` now as a fault at RIP (error code `code` when the vector
    /// pushes one; `cr2`, the faulting address a #PF loads into CR2): a driver substituting
    /// a recorded exception (KRR's user-mode #PF).
    pub fn inject_exception(
        &mut self,
        core: &mut Core,
        vector: u8,
        code: Option<u32>,
        cr2: Option<u64>,
    ) -> Result<(), Exit> {
        // SAFETY: as in `run_with_bus`.
        let cpu = unsafe { core.state_mut() };
        if let Some(a) = cr2 {
            cpu.exec.exception.address = a;
        }
        self.deliver(
            cpu,
            vector,
            krr_runtime::interrupt::EventKind::Exception,
            code,
            cpu.rip,
        )
    }

    /// Pause the REP string instruction at linear `rip` before the iteration that starts with
    /// RCX = `rcx` (`None`: no pause): [`Engine::run`] returns [`Exit::Budget`] there with the
    /// instruction not retired, as a hardware interrupt between iterations finds it.
    /// `CpuState::exec.rep_paused_midway` then says whether iterations of it had run.
    pub fn set_rep_pause(core: &mut Core, pause: Option<(u64, u64)>) {
        // SAFETY: as in `run_with_bus`; only the pause fields change.
        let cpu = unsafe { core.state_mut() };
        (cpu.exec.rep_pause_rip, cpu.exec.rep_pause_rcx) =
            pause.unwrap_or((krr_runtime::NO_REP_PAUSE, 0));
    }

    /// Deliver external interrupt `vector` now (the caller checked `interrupts_enabled`).
    pub fn inject_interrupt(&mut self, core: &mut Core, vector: u8) -> Result<(), Exit> {
        // SAFETY: as in `run_with_bus`.
        let cpu = unsafe { core.state_mut() };
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
        cpu.exec.profile = self.config.profile;
        let arith = crate::interp::materialize_flags(cpu);
        let flags = (cpu.rflags & !krr_runtime::rflags::ARITH) | arith;
        let fault_rip = if kind == krr_runtime::interrupt::EventKind::Software {
            cpu.exec.trap_rip
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
    pub fn run(&mut self, core: &mut Core) -> Exit {
        // SAFETY: as in `run_with_bus`.
        self.run_state(unsafe { core.state_mut() })
    }

    fn run_state(&mut self, cpu: &mut CpuState) -> Exit {
        // The interpreter (also when compiled code hands it an instruction), the system
        // instructions and event delivery read the profile from the state.
        cpu.exec.profile = self.config.profile;
        loop {
            let mut exit = self.run_until_event(cpu);
            self.stats.tlb_misses = cpu.exec.tlb.misses;
            if matches!(exit, Exit::Exception { .. }) && watch_restart(cpu) {
                exit = self.rerun_watched(cpu);
                if cpu.exec.watch.hit.is_some() && exit == Exit::Budget {
                    return Exit::Budget;
                }
            }
            match exit {
                Exit::Exception { .. } if self.config.deliver_exceptions => {
                    let e = cpu.exec.exception;
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

    /// An instruction touched a watched range (`krr_runtime::watch`) and ended before doing
    /// anything: run it again, alone, recording the hit, and let it complete. `Exit::Budget`
    /// with `cpu.exec.watch.hit` set: the driver's watchpoint stop, right after it.
    fn rerun_watched(&mut self, cpu: &mut CpuState) -> Exit {
        cpu.exec.watch.stepping = true;
        cpu.exec.watch.hit = None;
        let next = cpu.icount + 1;
        let limit = std::mem::replace(&mut cpu.exec.icount_limit, next);
        let exit = self.run_until_event(cpu);
        cpu.exec.icount_limit = limit;
        cpu.exec.watch.stepping = false;
        exit
    }

    fn run_until_event(&mut self, cpu: &mut CpuState) -> Exit {
        // The block interpreted in the previous round, if it ended normally.
        let mut interpreted: Option<BlockId> = None;
        loop {
            let from = interpreted.take();
            self.stats.dispatches += 1;
            // RFLAGS.AC is clear: supervisor entries of user pages made under SMAP with AC set
            // must go (instructions that change AC end their block, so this is in time).
            if cpu.exec.tlb.smap_user_any && cpu.rflags & krr_runtime::rflags::AC == 0 {
                cpu.exec.tlb.drop_smap_user();
            }
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
            if cpu.icount >= cpu.exec.icount_limit {
                return Exit::Budget;
            }
            let translations_changed = self.sync_translations(cpu);
            if cpu.exec.has_bus()
                && krr_runtime::bus::with_bus(cpu, |bus, cpu| bus.wants_exit(cpu)).unwrap_or(false)
            {
                return Exit::BusRequest;
            }
            let from = from.filter(|_| !translations_changed);
            let id = match from.and_then(|f| self.linked_successor(cpu, f)) {
                Some(id) => id,
                None => {
                    let id = match self.lookup(cpu) {
                        Ok(id) => id,
                        Err(exit) => return exit,
                    };
                    if let Some(f) = from {
                        self.set_successor(cpu, f, id);
                    }
                    id
                }
            };
            if self.entries[id].stop {
                if let Some(exit) = self.stop_here(cpu) {
                    return exit;
                }
            }
            if self.stops.user_mode && self.entries[id].block.mode & 3 == 3 {
                return Exit::UserMode;
            }
            if cpu.irq_shadow_at == cpu.icount && cpu.icount + 1 < cpu.exec.icount_limit {
                // The instruction after STI / MOV SS: interrupts become deliverable right
                // after it. Run exactly that one instruction, then come back here (where the
                // bus is asked about pending interrupts), so every tier takes an interrupt at
                // the same boundary as the hardware does.
                let next = cpu.icount + 1;
                let limit = std::mem::replace(&mut cpu.exec.icount_limit, next);
                let exit = self.interpret_block(cpu, id);
                cpu.exec.icount_limit = limit;
                if cpu.exec.smc_count != 0 {
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
                let exit = self.interpret_block(cpu, id);
                interpreted = Some(id);
                exit
            };
            if cpu.exec.smc_count != 0 {
                self.handle_code_writes(cpu);
            }
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Count an execution of block `id` (not yet compiled) and compile it if the policy says so.
    #[inline]
    fn maybe_compile(&mut self, id: BlockId) {
        let e = &mut self.entries[id];
        if e.stop {
            return;
        }
        e.block.exec_count = e.block.exec_count.saturating_add(1);
        match self.config.policy {
            TierPolicy::Interpret => {}
            TierPolicy::CompileAll => self.compile(&[id]),
            TierPolicy::Tiered if self.config.background_compile => {
                if e.block.exec_count >= self.config.hot_threshold && !e.queued {
                    e.queued = true;
                    let b = &e.block;
                    log::trace!("compile {:#x} mode {:#x} len {}", b.start, b.mode, b.len);
                    if let Some(jit) = self.jit.as_mut() {
                        let t0 = std::time::Instant::now();
                        jit.submit(id, &self.entries[id].block);
                        self.stats.compile_time += t0.elapsed();
                    }
                } else if e.block.exec_count == self.config.cached_threshold && !e.queued {
                    // Code from the code cache costs nothing to compile: take it earlier.
                    if let Some(jit) = self.jit.as_mut() {
                        if jit.submit_cached(id, &self.entries[id].block) {
                            self.entries[id].queued = true;
                        }
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
            let e = &mut self.entries[d.block_id];
            e.queued = false;
            if e.valid {
                self.stats.count_installed(&d.block);
                let code = d.block.code as u64;
                e.compiled = Some(d.block);
                self.publish_code(d.block_id, code);
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
    fn tier_up(&mut self, id: BlockId) {
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

    fn compile(&mut self, ids: &[BlockId]) {
        let ids: Vec<BlockId> = ids
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
            self.stats.count_installed(&c);
            let code = c.code as u64;
            self.entries[i].compiled = Some(c);
            self.entries[i].queued = false;
            self.publish_code(i, code);
        }
    }

    /// Block `id` was just compiled: its jump-cache entry, if any, now leads to the code.
    fn publish_code(&mut self, id: BlockId, code: u64) {
        let e = &self.entries[id];
        let start = e.block.start;
        if let Some(c) = &e.compiled {
            self.perf_map.name(c.code, c.code_size, start, e.block.mode);
        }
        self.jump_cache.publish_code(start, id, code);
    }

    fn run_compiled(&mut self, cpu: &mut CpuState, id: BlockId) -> Option<Exit> {
        let jit = self.jit.as_ref().expect("compiled blocks imply a JIT");
        let code = self.entries[id]
            .compiled
            .as_ref()
            .expect("checked by caller")
            .code;
        cpu.exec.exit_slot = 0;
        cpu.exec.helper_status = Outcome::Continue;
        let unimpl_before = cpu.exec.unimplemented_count;
        let returned = jit.enter(cpu, code);
        let returned = Outcome::from_u64(returned)
            .unwrap_or_else(|| unreachable!("compiled code returned {returned}, not an Outcome"));
        // A block leaves through its fault exit when a helper failed; the helper's status word
        // then says how (it may also be `Unbacked`, `Halt` or `Trap`).
        let outcome = match std::mem::take(&mut cpu.exec.helper_status) {
            Outcome::Continue => returned,
            // The interpreter paused a REP instruction (rep_pause_rip): RIP is at it.
            Outcome::Budget => return Some(Exit::Budget),
            status => status,
        };
        match outcome {
            Outcome::Continue => {
                if cpu.exec.exit_slot != 0 {
                    self.link(cpu);
                }
                None
            }
            Outcome::Budget => {
                // Not enough budget for the whole block: finish instruction by instruction.
                let id = match self.lookup(cpu) {
                    Ok(id) => id,
                    Err(exit) => return Some(exit),
                };
                self.interpret_block(cpu, id)
            }
            other => self.outcome_exit(cpu, other, unimpl_before, None),
        }
    }

    /// Point the exit slot compiled code just left through at the block for the new RIP, so the
    /// next time that exit jumps straight there.
    fn link(&mut self, cpu: &mut CpuState) {
        let slot = cpu.exec.exit_slot as *mut u64;
        cpu.exec.exit_slot = 0;
        // Link only within a page, as QEMU does in system mode: the jump's linear target then
        // lies on the source block's own page, whose mapping is the one the source was found
        // through, so no address-space change can make the link stale. Cross-page jumps go
        // through the jump cache, which is flushed with the TLB.
        if cpu.exec.exit_from & !0xfff != cpu.rip & !0xfff {
            return;
        }
        let Ok(target) = self.lookup(cpu) else { return };
        if self.entries[target].compiled.is_none() {
            self.maybe_compile(target);
        }
        if cpu.exec.smc_count != 0 {
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

    fn interpret_block(&mut self, cpu: &mut CpuState, id: BlockId) -> Option<Exit> {
        let block = &self.entries[id].block;
        let (insns, mems) = (&block.insns[..], &block.mem[..]);
        // The budget is known up front: run at most `n` instructions.
        let room = cpu.exec.icount_limit.saturating_sub(cpu.icount);
        let n = if room < insns.len() as u64 {
            room as usize
        } else {
            insns.len()
        };
        let icount_before = cpu.icount;
        let unimpl_before = cpu.exec.unimplemented_count;
        cpu.exec.helper_status = Outcome::Continue;
        let mut it = Interp::new(cpu, &mut self.undo);
        let mut end = None;
        for (i, (insn, mem)) in insns[..n].iter().zip(&mems[..n]).enumerate() {
            match it.step(insn, mem) {
                Outcome::Continue => {
                    // A taken branch can only be the block's last instruction, but a retired
                    // instruction may also have been interrupted mid-way (REP): follow RIP. A
                    // write to translated code ends the block so the next instruction is
                    // decoded afresh.
                    let cpu = it.cpu();
                    if cpu.rip != insn.next_ip() || cpu.exec.smc_count != 0 {
                        end = Some((i, Outcome::Continue));
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
            None | Some((_, Outcome::Continue)) => None,
            Some((i, outcome)) => {
                let insn = self.entries[id].block.insns[i];
                self.outcome_exit(cpu, outcome, unimpl_before, Some(insn))
            }
        }
    }

    /// What [`Engine::run`] reports for how an interpreted instruction or a compiled block
    /// ended (`None`: go on dispatching), the same for both tiers: a trap is
    /// [`Outcome::Trap`], and an exception is of an unimplemented instruction when
    /// `cpu.exec.unimplemented_count` moved past `unimpl_before`. `insn` is the instruction
    /// when the interpreter ran it (compiled code's is decoded again at RIP for the log).
    #[cold]
    fn outcome_exit(
        &mut self,
        cpu: &mut CpuState,
        outcome: Outcome,
        unimpl_before: u64,
        insn: Option<Instruction>,
    ) -> Option<Exit> {
        match outcome {
            Outcome::Continue => None,
            Outcome::Budget => Some(Exit::Budget),
            Outcome::Halt => Some(Exit::Halt),
            Outcome::Unbacked => Some(Exit::Unbacked {
                phys: cpu.exec.unbacked_phys,
            }),
            Outcome::Fault | Outcome::Trap => {
                let unimplemented = cpu.exec.unimplemented_count != unimpl_before;
                if unimplemented {
                    match insn {
                        Some(insn) => self.note_unimplemented(cpu, &insn),
                        None => self.log_unimplemented(cpu),
                    }
                }
                Some(Exit::Exception {
                    trap: outcome == Outcome::Trap,
                    unimplemented,
                })
            }
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
        let bitness = mode::bitness(mode::current(cpu));
        let mut d = iced_x86::Decoder::with_ip(bitness, &bytes[..n], cpu.rip, 0);
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
        let n = cpu.exec.smc_ranges();
        cpu.exec.smc_count = 0;
        if n > cpu.exec.smc_writes.len() {
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
        let writes = cpu.exec.smc_writes;
        for &[start, end] in &writes[..n] {
            for page in (start >> 12)..=((end - 1) >> 12) {
                let Some(list) = self.page_blocks.remove(&page) else {
                    continue;
                };
                let (doomed, kept): (Vec<BlockId>, Vec<BlockId>) = list
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

    fn invalidate(&mut self, id: BlockId) {
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
        self.jump_cache.remove(e.block.start, id);
        self.stats.blocks_invalidated += 1;
    }

    /// The driver wrote guest physical memory behind the CPU's back (DMA, loading an image):
    /// drop translations of the pages it touched.
    pub fn notify_write(&mut self, core: &mut Core, phys: u64, len: u64) {
        if len == 0 {
            return;
        }
        // SAFETY: as in `run_with_bus`.
        let cpu = unsafe { core.state_mut() };
        for page in (phys >> 12)..=((phys + len - 1) >> 12) {
            if cpu.is_code_page(page) {
                let start = phys.max(page << 12);
                let end = (phys + len).min((page + 1) << 12);
                mmu::note_code_write(cpu, start, end - start);
            }
        }
        if cpu.exec.smc_count != 0 {
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

/// The exception is the MMU's watchpoint restart, not a CPU exception.
fn watch_restart(cpu: &CpuState) -> bool {
    let e = &cpu.exec.exception;
    e.vector == krr_runtime::watch::RESTART_VECTOR && !e.software
}
