//! The replay of a KRR recording (krr-spec 3): the kernel runs in krr's engine from the
//! snapshot, in multi-instruction blocks; the driver acts only where the recording says
//! something happens:
//! - budgets stop the engine where KRR's count reaches an interrupt's (within one, 3.3), and
//!   a REP string instruction pauses at the recorded RCX (`Engine::set_rep_pause`), where
//!   the interrupt is matched on (RIP, RCX, count) and injected;
//! - stop addresses at the trap points (3.7) write copy_from_user, get_user and PTE data into
//!   guest memory before the kernel reads it (3.6) and consume exceptions at their handlers;
//! - every return to user mode stops the engine, and the next event (SYSCALL, INTERRUPT or
//!   EXCEPTION) is substituted for what user mode did (3.4);
//! - the bus (`bus.rs`) serves port inputs, RDTSC and RDSEED values, KRR's hypercalls and the
//!   ring.

mod rewind;

use super::bus::{Divergence, ReplayBus};
use crate::krr_rec::events::{Event, KvmRegs};
use crate::krr_rec::layout::ty;
use crate::vmlinux::traps::{TrapPoint, TrapPoints};
use krr_jit::{Engine, Exit};
use krr_runtime::arch::{pushes_error_code, rflags, vector};
use krr_runtime::cpu::{seg, Segment};
use krr_runtime::gpr::RCX;
use krr_runtime::Core;

/// Instructions per engine run when no event is near (the progress bar moves between runs).
const CHUNK: u64 = 5_000_000;
/// Kernel instructions a vCPU may run while another vCPU's event waits (multi-vCPU): far
/// more than any stretch between exec-lock releases (the kernel releases it at every return
/// to user mode, before idling and around its wait loops).
const LOCK_HOLD_LIMIT: u64 = 1 << 30;

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every event was replayed.
    Finished,
    Diverged(Divergence),
    /// `--stop-at`: before the instruction with this KRR count.
    Stopped(u64),
    /// A debugger's stop ([`Driver::pause_at`], [`Driver::set_breakpoints`], watchpoints):
    /// [`Driver::run`] goes on from here when called again.
    Paused(Pause),
}

/// Why a replay paused for a debugger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The position [`Driver::pause_at`] names was reached.
    Reached,
    /// Before the instruction at a breakpoint address.
    Breakpoint(u64),
    /// Right after an instruction that accessed a watched range.
    Watch(krr_runtime::watch::WatchHit),
}

/// The instruction log's line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// krr's native replay lines: count, RIP, bytes, AT&T disassembly, registers.
    Native,
    /// KRR's (its QEMU's) three items per instruction (krr-spec 6): `Regs: ...`,
    /// `[cpu C]0x.., inst_cnt=`, `IN: log tb, ...` and the disassembly.
    KrrQemu,
}

/// `--log-bound start=N1,end=N2` / `-replay-log-bound`: instructions whose KRR count
/// (counting themselves, as KRR's log does) lies in [start, end) are logged before they run.
/// krr takes `end` as documented; KRR's own replayer stores it as the start (its
/// `set_log_bound`, krr-spec 10.13), which `qemu_args` notes when it sees one.
pub struct InsnLog {
    pub start: u64,
    pub end: u64,
    pub format: LogFormat,
    pub out: Box<dyn std::io::Write>,
    /// The last instruction logged (vCPU, instruction number, RIP): the replay comes back to
    /// an instruction it stopped before (a trap point, an event at its boundary) and logs it
    /// once, as KRR logs it once (KRR logs each iteration of a REP string instruction).
    pub last: Option<(i32, u64, u64)>,
}

/// A copy_from_user or get_user write whose user page was not mapped yet: retried at
/// PF_EXEC_END, after the kernel's own fault mapped it (3.6).
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) event: usize,
    pub(super) va: u64,
    pub(super) data: Vec<u8>,
}

/// A vCPU that does not hold the exec lock: frozen where it gave the lock up (krr-spec 5).
#[derive(Clone)]
struct Parked {
    arch: krr_runtime::ArchState,
    delta: i64,
    cached_spin: u64,
    spin_source: Option<usize>,
    skip_sync: bool,
    count_source: super::bus::CountSource,
    /// Its `checkpoint-<cpu>` and the next one due.
    checkpoints: std::sync::Arc<Vec<crate::krr_rec::checkpoint::Checkpoint>>,
    next_checkpoint: usize,
}

/// The vCPU an event names, for the events whose `id` is meaningful (the others always say 0
/// and follow the owner, krr-spec 5).
fn owner_of(e: &Event) -> Option<usize> {
    let id = match e {
        Event::Interrupt(i) => i.id,
        Event::Exception(x) => x.id,
        Event::Syscall(x) => x.id,
        Event::IoIn(x) => x.id,
        Event::InstSync(n) | Event::Release(n) => n.id,
        _ => return None,
    };
    usize::try_from(id).ok()
}

pub struct Driver {
    pub core: Core,
    pub engine: Engine,
    pub bus: ReplayBus,
    pub traps: TrapPoints,
    pub(super) pending: Option<Pending>,
    /// A user-mode #GP substituted and already consumed (krr-spec open question 5): its
    /// handler's GP_EXEC trap must not consume another event.
    pub(super) user_gp_injected: bool,
    /// Interrupts whose recorded registers differed from the replay's where it injected them
    /// (KRR loads the recorded ones; krr does too and counts it).
    pub corrected_interrupts: u64,
    pub trap_hits: u64,
    pub log: Option<InsnLog>,
    /// Stop before the instruction with this KRR count.
    pub stop_at: Option<u64>,
    /// The recording's `checkpoint-<cpu>` of the replayed vCPU, by count, and the
    /// verification's tally.
    pub checkpoints: std::sync::Arc<Vec<crate::krr_rec::checkpoint::Checkpoint>>,
    pub(super) next_checkpoint: usize,
    pub checkpoint_tally: CheckpointTally,
    /// The other vCPUs of a multi-vCPU recording (`None` for the one in `core`).
    parked: Vec<Option<Parked>>,
    /// The vCPU in `core`, and the exec-lock owner (`None` before the first event chose one).
    pub current: usize,
    owner: Option<usize>,
    pub handovers: u64,
    /// The recording has RELEASE events (the agent's debug mode records one at every
    /// release of the exec lock): each LOCK_RELEASE must then consume the releasing vCPU's.
    pub(super) release_events: bool,
    /// The running vCPU's instruction count when it took the exec lock.
    lock_taken_at: u64,
    /// e1000 and NVMe DMA, placed by count (`dma.rs`).
    pub dma_streams: Vec<super::dma::Stream>,
    /// Pause when [`Driver::position`] reaches this (a debugger's target).
    pub pause_at: Option<u64>,
    /// A debugger's breakpoints (`rewind.rs`).
    breaks: std::collections::HashSet<u64>,
    /// The breakpoint arrival already reported, (position, RIP): going on passes it.
    passed_break: Option<(u64, u64)>,
}

/// How the checkpoints went (krr-spec 6): compared and equal, missed (the count was passed
/// without stopping there: not expected in krr, whose budgets stop exactly), skipped (a REP
/// with another RCX), and RFLAGS-only differences (KRR only logs those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointTally {
    pub passed: u64,
    pub missed: u64,
    pub skipped: u64,
    pub flags_differ: u64,
}

/// The 16 general-purpose registers of `r` in krr's order (RAX RCX RDX RBX RSP RBP RSI RDI
/// R8-R15).
fn gprs(r: &KvmRegs) -> [u64; 16] {
    let mut g = [0u64; 16];
    g[0] = r.rax;
    g[1] = r.rcx;
    g[2] = r.rdx;
    g[3] = r.rbx;
    g[4] = r.rsp;
    g[5] = r.rbp;
    g[6] = r.rsi;
    g[7] = r.rdi;
    g[8..].copy_from_slice(&r.r);
    g
}

fn is_user_address(a: u64) -> bool {
    a < 0x8000_0000_0000_0000
}

/// A #DB event of kernel code: KVM injected it and filled its count (the guest records #DB
/// only from user mode, without a count).
fn kernel_debug_trap(e: &crate::krr_rec::events::Exception) -> bool {
    e.exception_index == vector::DB as i32 && !is_user_address(e.regs.rip) && e.inst_cnt != 0
}

impl Driver {
    /// A replay of vCPU 0 in `core`; `others` are the other vCPUs' states (multi-vCPU
    /// recordings), parked until they own the exec lock.
    pub fn new(
        core: Core,
        mut engine: Engine,
        bus: ReplayBus,
        traps: TrapPoints,
        others: Vec<krr_runtime::ArchState>,
    ) -> Driver {
        let mut parked = vec![None];
        parked.extend(others.into_iter().map(|arch| {
            Some(Parked {
                arch,
                delta: 0,
                cached_spin: 0,
                spin_source: None,
                skip_sync: false,
                count_source: Default::default(),
                checkpoints: Default::default(),
                next_checkpoint: 0,
            })
        }));
        engine.set_stop_addresses(traps.iter().map(|(_, a)| a));
        engine.set_stop_at_user_mode(true);
        let release_events = bus.queue.find(|e| matches!(e, Event::Release(_))).is_some();
        Driver {
            core,
            engine,
            bus,
            traps,
            pending: None,
            user_gp_injected: false,
            corrected_interrupts: 0,
            trap_hits: 0,
            log: None,
            stop_at: None,
            checkpoints: Default::default(),
            next_checkpoint: 0,
            checkpoint_tally: CheckpointTally::default(),
            parked,
            current: 0,
            owner: None,
            handovers: 0,
            release_events,
            lock_taken_at: 0,
            dma_streams: Vec::new(),
            pause_at: None,
            breaks: Default::default(),
            passed_break: None,
        }
    }

    pub(super) fn smp(&self) -> bool {
        self.parked.len() > 1
    }

    /// The recording's vCPUs.
    pub fn vcpus(&self) -> usize {
        self.parked.len()
    }

    /// vCPU `v`'s state and KRR count, whether it runs or is parked.
    pub fn vcpu_state(&self, v: usize) -> Option<(&krr_runtime::ArchState, u64)> {
        if v == self.current {
            let a = self.core.arch();
            return Some((a, (a.icount as i64 + self.bus.delta) as u64));
        }
        let p = self.parked.get(v)?.as_ref()?;
        Some((&p.arch, (p.arch.icount as i64 + p.delta) as u64))
    }

    /// The checkpoint records of every vCPU.
    pub fn checkpoint_records(&self) -> usize {
        self.checkpoints.len()
            + self
                .parked
                .iter()
                .flatten()
                .map(|p| p.checkpoints.len())
                .sum::<usize>()
    }

    /// vCPU `v`'s `checkpoint-<v>` records (sorted by count here).
    pub fn set_checkpoints(
        &mut self,
        v: usize,
        mut cps: Vec<crate::krr_rec::checkpoint::Checkpoint>,
    ) -> Result<(), String> {
        cps.sort_by_key(|c| c.inst_cnt);
        if v == self.current {
            self.checkpoints = std::sync::Arc::new(cps);
            self.next_checkpoint = 0;
            return Ok(());
        }
        let p = self
            .parked
            .get_mut(v)
            .and_then(Option::as_mut)
            .ok_or_else(|| format!("checkpoint-{v}: the recording has no vCPU {v}"))?;
        p.checkpoints = std::sync::Arc::new(cps);
        p.next_checkpoint = 0;
        Ok(())
    }

    /// After the last event: run vCPU `v` on to its return to user mode (no input is left to
    /// read), with the exec lock's spin patch at RR_LOCK_ACQUIRE_RET (the last entry event's
    /// spin count, cached when it was replayed).
    pub fn run_to_user_mode(&mut self, v: usize) -> Result<(), String> {
        self.switch_vcpu(v)?;
        loop {
            self.core.set_icount_limit(u64::MAX);
            Engine::set_rep_pause(&mut self.core, None);
            match self.run_engine()? {
                Exit::UserMode => return Ok(()),
                Exit::Stop { rip } => {
                    if self.traps.at(rip) == Some(TrapPoint::LockAcquireRet) {
                        self.trap_action(TrapPoint::LockAcquireRet);
                    }
                    self.engine.resume_past_stop(self.core.cpu());
                }
                Exit::Budget | Exit::BusRequest | Exit::Halt => {}
                failed => return Err(self.failure(failed)),
            }
            if let Some(d) = &self.bus.divergence {
                return Err(d.message.clone());
            }
        }
    }

    /// Give vCPU `v` the exec lock and the core (after the replay: to run it on).
    pub fn switch_vcpu(&mut self, v: usize) -> Result<(), String> {
        self.owner = Some(v);
        self.switch_to(v)
    }

    /// Put vCPU `to` in the core (the exec lock passed to it); the running one is parked
    /// where it stands, with its count and cached spin.
    fn switch_to(&mut self, to: usize) -> Result<(), String> {
        if to == self.current {
            return Ok(());
        }
        let incoming = self
            .parked
            .get_mut(to)
            .and_then(Option::take)
            .ok_or_else(|| {
                format!("an event names vCPU {to}, which the recording does not have")
            })?;
        let out = Parked {
            arch: std::mem::replace(self.core.arch_mut(), incoming.arch),
            delta: std::mem::replace(&mut self.bus.delta, incoming.delta),
            cached_spin: std::mem::replace(&mut self.bus.cached_spin, incoming.cached_spin),
            spin_source: std::mem::replace(&mut self.bus.spin_source, incoming.spin_source),
            skip_sync: std::mem::replace(&mut self.bus.skip_sync, incoming.skip_sync),
            count_source: std::mem::replace(&mut self.bus.count_source, incoming.count_source),
            checkpoints: std::mem::replace(&mut self.checkpoints, incoming.checkpoints),
            next_checkpoint: std::mem::replace(&mut self.next_checkpoint, incoming.next_checkpoint),
        };
        self.parked[self.current] = Some(out);
        self.current = to;
        self.bus.vcpu = to as i32;
        self.bus.devices.current = to;
        self.core.flush_tlb();
        self.handovers += 1;
        self.lock_taken_at = self.core.cpu().icount;
        Ok(())
    }

    /// The exec-lock gate (krr-spec 3.2 step 1): before the first owner, the head event's
    /// vCPU takes the lock.
    fn gate(&mut self) -> Result<(), String> {
        if self.owner.is_some() || !self.smp() {
            return Ok(());
        }
        let to = self.bus.queue.head().and_then(|(_, e)| owner_of(e));
        if let Some(to) = to {
            self.owner = Some(to);
            self.switch_to(to)?;
        }
        Ok(())
    }

    pub(super) fn diverge(&mut self, event: Option<usize>, message: String) -> End {
        self.bus.diverge(event, message);
        End::Diverged(self.bus.divergence.clone().expect("just set"))
    }

    /// Replay to the end of the recording or the first divergence; `progress` gets the
    /// number of events replayed after each engine run.
    pub fn run(&mut self, progress: &mut dyn FnMut(u64)) -> Result<End, String> {
        loop {
            if let Some(d) = self.bus.divergence.clone() {
                return Ok(End::Diverged(d));
            }
            let to_pause = self.pause_at.map(|p| p.saturating_sub(self.position()));
            if to_pause == Some(0) {
                return Ok(End::Paused(Pause::Reached));
            }
            self.gate()?;
            let Some((head, event)) = self.bus.queue.head() else {
                return Ok(End::Finished);
            };
            let event = event.clone();
            let cpu = self.core.cpu();
            let icount = cpu.icount;
            // Where to stop next: at count n-1 of a kernel interrupt (the first boundary
            // where it may match), else after a chunk; one instruction at a time for the
            // last event when the bus consumes it, so the replay ends right after it.
            let mut limit = icount + CHUNK;
            let mut pause = None;
            let mine = owner_of(&event).is_none_or(|v| v == self.current);
            if !mine {
                // Another vCPU's event waits for this one to give the exec lock up (at
                // LOCK_RELEASE or its return to user mode); a kernel that never does has
                // left the recording.
                let held = self.core.cpu().icount - self.lock_taken_at;
                if held > LOCK_HOLD_LIMIT {
                    let msg = format!(
                        "vCPU {} has run {held} instructions without giving the exec lock up while the next event is vCPU {}'s",
                        self.current,
                        owner_of(&event).unwrap_or(0)
                    );
                    return Ok(self.diverge(Some(head), msg));
                }
            }
            match &event {
                Event::Interrupt(i) if mine && !is_user_address(i.rip) => {
                    let first = i.inst_cnt.saturating_sub(1) as i64 - self.bus.delta;
                    limit = limit.min((first.max(icount as i64)) as u64);
                    pause = Some((i.rip, i.regs.rcx));
                }
                Event::Exception(e) if mine && kernel_debug_trap(e) => {
                    let at = e.inst_cnt as i64 - self.bus.delta;
                    limit = limit.min((at.max(icount as i64)) as u64);
                }
                _ => {}
            }
            // An MMIO read consumed as the last event cannot end the budget from inside the
            // load (system instructions can: `Bus::stop_after_instruction`).
            if self.bus.queue.remaining() == 1 && event.type_number() == ty::MMIO {
                limit = icount + 1;
            }
            let count = self.bus.count(self.core.cpu());
            let user = self.core.cpu().cpl() == 3;
            if let Some(t) = self.place_dma(user)? {
                if t > count {
                    limit = limit.min(icount + (t - count));
                }
            }
            // The running vCPU's `checkpoint-<cpu>` (each vCPU's are swapped in with it).
            {
                if let Some(end) = self.verify_checkpoints(count) {
                    return Ok(end);
                }
                if let Some(cp) = self.checkpoints.get(self.next_checkpoint) {
                    limit = limit.min(icount + (cp.inst_cnt - count));
                }
            }
            if let Some(at) = self.stop_at {
                if count >= at {
                    return Ok(End::Stopped(count));
                }
                limit = limit.min(icount + (at - count));
            }
            if let Some(l) = &self.log {
                // The next instruction counts itself as count + 1.
                if count + 1 >= l.start && count + 1 < l.end {
                    limit = icount + 1;
                    self.log_instruction()?;
                } else if count + 1 < l.start {
                    limit = limit.min(icount + (l.start - count - 1));
                }
            }
            if let Some(n) = to_pause {
                limit = limit.min(icount + n);
            }
            if limit == icount {
                // Check the interrupt here before running anything; if it is not due at this
                // boundary, run one instruction and look again.
                if let Some(end) = self.at_budget(head, &event)? {
                    return Ok(end);
                }
                if self.bus.queue.head().map(|h| h.0) != Some(head)
                    || self.core.cpu().icount != icount
                {
                    continue;
                }
                limit = icount + 1;
            }
            self.core.set_icount_limit(limit);
            Engine::set_rep_pause(&mut self.core, pause);
            let exit = self.run_engine()?;
            progress(self.bus.queue.replayed_count() as u64);
            let mut end = match exit {
                Exit::Budget => {
                    // A checkpoint due here is the state before an interrupt injected at this
                    // boundary (KVM's counter exit came first).
                    let count = self.bus.count(self.core.cpu());
                    match self.verify_checkpoints(count) {
                        Some(end) => Some(end),
                        None => self.at_budget(head, &event)?,
                    }
                }
                Exit::Stop { rip } => self.at_trap(rip)?,
                Exit::UserMode => self.at_user_mode()?,
                Exit::Halt | Exit::BusRequest => None,
                failed => return Err(self.failure(failed)),
            };
            if let Some(hit) = self.core.take_watch_hit() {
                end = end.or(Some(End::Paused(Pause::Watch(hit))));
            }
            if let Some(end) = end {
                return Ok(end);
            }
        }
    }

    /// The one-line error for an exit the replay cannot go on from.
    fn failure(&self, exit: Exit) -> String {
        let c = self.core.cpu();
        let at = format!("at RIP {:#x}, instruction {}", c.rip, c.icount);
        match exit {
            Exit::Exception { unimplemented, .. } => {
                let what = if unimplemented {
                    "an instruction krr does not implement"
                } else {
                    "an exception"
                };
                format!("{what} (vector {}) {at}", c.exec.exception.vector)
            }
            Exit::TripleFault { first, second } => {
                format!("the guest triple-faulted (vector {first} then {second}) {at}")
            }
            Exit::Unbacked { phys } => format!(
                "an access to {phys:#x}, where the recording has no RAM (a code fetch, a page walk or a device access across a page) {at}"
            ),
            other => format!("{other:?} {at}"),
        }
    }

    /// Run one instruction, without a REP pause: a REP that reached the recorded RCX at
    /// another count, or the instruction at LOCK_RELEASE before the hand-over.
    fn run_one(&mut self) -> Result<Exit, String> {
        let next = self.core.cpu().icount + 1;
        self.core.set_icount_limit(next);
        Engine::set_rep_pause(&mut self.core, None);
        self.run_engine()
    }

    /// One engine run, with the ring's and DMA's pending host-side writes made before it and
    /// after it (a bus callback queues them inside an instruction and ends the budget there).
    pub(super) fn run_engine(&mut self) -> Result<Exit, String> {
        self.bus.flush_ring(self.core.mem_mut())?;
        self.apply_dma()?;
        let exit = self.engine.run_with_bus(&mut self.core, &mut self.bus);
        if self.engine.stats.unimplemented > 0 {
            // The engine delivered #UD for it (and logged the instruction and its RIP); the
            // recorded kernel ran it, so the replay cannot be right from here.
            return Err(format!(
                "the replayed kernel executed an instruction krr does not implement (logged above with its RIP); stopped at instruction {}",
                self.core.cpu().icount
            ));
        }
        self.bus.flush_ring(self.core.mem_mut())?;
        self.apply_dma()?;
        Ok(exit)
    }

    /// Write the e1000/NVMe entries due now (`user`: at a user-mode boundary); the nearest
    /// count at which another falls due on this vCPU.
    fn place_dma(&mut self, user: bool) -> Result<Option<u64>, String> {
        let count = self.bus.count(self.core.cpu());
        let replayed = self.bus.queue.replayed_count() as u64;
        let mut target: Option<u64> = None;
        for st in &mut self.dma_streams {
            let writes = st.take_due(self.current, count, replayed, user);
            self.bus.pending_dma.extend(writes);
            if let Some(t) = st.target(self.current) {
                target = Some(target.map_or(t, |x| x.min(t)));
            }
        }
        self.apply_dma()?;
        Ok(target)
    }

    /// Write the DMA data the bus released into guest-physical memory.
    fn apply_dma(&mut self) -> Result<(), String> {
        for (gpa, data) in std::mem::take(&mut self.bus.pending_dma) {
            self.core
                .mem_mut()
                .write(gpa, &data)
                .map_err(|e| format!("DMA of {} bytes to {gpa:#x}: {e}", data.len()))?;
            self.engine
                .notify_write(&mut self.core, gpa, data.len() as u64);
        }
        Ok(())
    }

    fn log_instruction(&mut self) -> Result<(), String> {
        let rip = self.core.cpu().rip;
        let key = (self.bus.vcpu, self.core.cpu().icount, rip);
        match &mut self.log {
            Some(l) if l.last == Some(key) => return Ok(()),
            Some(l) => l.last = Some(key),
            None => {}
        }
        let count = self.bus.count(self.core.cpu()) + 1;
        let (bytes, text) = crate::report::describe_insn(&mut self.core, rip);
        let c = self.core.cpu();
        let line = match self.log.as_ref().map(|l| l.format) {
            Some(LogFormat::KrrQemu) => {
                let g = &c.gpr;
                let mut regs = format!(
                    "Regs: eflags={:#x}, rax={:#x},rbx={:#x},rcx={:#x},rdx={:#x},rsi={:#x},rdi={:#x},rbp={:#x},rsp={:#x}",
                    c.rflags_value(), g[0], g[3], g[1], g[2], g[6], g[7], g[5], g[4]
                );
                for (i, v) in g[8..].iter().enumerate() {
                    regs.push_str(&format!(",r{}={v:#x}", i + 8));
                }
                let size = bytes.split(' ').filter(|b| !b.is_empty()).count();
                format!(
                    "{regs}, gs.base={:#x}, gs_kernel={:#x}, cr2={:#x}\n[cpu {}]{rip:#x}, inst_cnt={count}\nIN: log tb, size={size}, icount=1\n{rip:#x}:  {bytes}  {text}\n",
                    c.seg[seg::GS].base, c.kernel_gs_base, c.cr2, self.bus.vcpu
                )
            }
            _ => format!(
                "{count} {rip:#018x} [{bytes}] {text} | {}\n",
                crate::report::regs_line(c)
            ),
        };
        if let Some(l) = &mut self.log {
            l.out
                .write_all(line.as_bytes())
                .map_err(|e| format!("cannot write the instruction log: {e}"))?;
        }
        Ok(())
    }

    /// Inject the kernel interrupt at the head if this boundary matches it; otherwise decide
    /// whether to go on or report that it was missed.
    fn at_budget(&mut self, head: usize, event: &Event) -> Result<Option<End>, String> {
        if let Event::Exception(e) = event {
            if kernel_debug_trap(e) && owner_of(event).unwrap_or(0) == self.current {
                return self.at_debug_trap(head, e);
            }
        }
        let Event::Interrupt(i) = event else {
            return Ok(None);
        };
        if is_user_address(i.rip) || owner_of(event).unwrap_or(0) != self.current {
            return Ok(None);
        }
        let c = self.core.cpu();
        let paused = c.exec.rep_pause_rip == c.rip
            && c.gpr[RCX] == i.regs.rcx
            && c.icount < c.exec.icount_limit;
        let midway = paused && c.exec.rep_paused_midway;
        let count = self.bus.count(c) + midway as u64;
        let n = i.inst_cnt;
        if c.rip == i.rip && c.gpr[RCX] == i.regs.rcx && (count + 1 == n || count == n) {
            self.inject_interrupt(head)?;
            return Ok(None);
        }
        if count >= n {
            let msg = format!(
                "interrupt vector {:#x} recorded at RIP {:#x} RCX {:#x} count {n} was not met: the replay is at RIP {:#x} RCX {:#x} count {count}{}",
                i.vector,
                i.rip,
                i.regs.rcx,
                c.rip,
                c.gpr[RCX],
                self.bus.count_note()
            );
            return Ok(Some(self.diverge(Some(head), msg)));
        }
        if paused {
            // The REP reached the recorded RCX at another count: let it finish, then look again.
            return match self.run_one()? {
                Exit::Budget | Exit::Halt | Exit::BusRequest => Ok(None),
                Exit::Stop { rip } => self.at_trap(rip),
                Exit::UserMode => self.at_user_mode(),
                failed => Err(self.failure(failed)),
            };
        }
        Ok(None)
    }

    /// A #DB that KVM injected in kernel mode, at its recorded count (krr-spec 3.2 step 4):
    /// DR6 from the event, the count resynchronised, the recorded registers loaded, the
    /// exception delivered, and the host's ring append re-created.
    fn at_debug_trap(
        &mut self,
        head: usize,
        e: &crate::krr_rec::events::Exception,
    ) -> Result<Option<End>, String> {
        let count = self.bus.count(self.core.cpu());
        if count < e.inst_cnt {
            return Ok(None);
        }
        if count > e.inst_cnt {
            let c = self.core.cpu();
            let msg = format!(
                "debug exception recorded at count {} (RIP {:#x}) was passed: the replay is at count {count}, RIP {:#x}",
                e.inst_cnt, e.regs.rip, c.rip
            );
            return Ok(Some(self.diverge(Some(head), msg)));
        }
        let a = self.core.arch_mut();
        a.gpr = gprs(&e.regs);
        a.rip = e.regs.rip;
        a.set_rflags_value(e.regs.rflags);
        a.dr[6] = e.cr2 ^ 0xffff_0ff0;
        let cpu = self.core.cpu();
        self.bus.resync(cpu, e.inst_cnt);
        self.bus.count_source.synced(head);
        self.engine
            .inject_exception(&mut self.core, vector::DB, None, None)
            .map_err(|x| format!("delivering {}: {x:?}", self.bus.queue.describe(head)))?;
        self.bus.append_recorded(head);
        self.bus.queue.take(head);
        Ok(None)
    }

    /// Deliver the INTERRUPT event `i` now (krr-spec 3.5 `rr_do_replay_intno`): the recorded
    /// registers are loaded, the vector delivered through the IDT whatever IF says, the count
    /// set to the recorded one, and the host's ring append re-created.
    fn inject_interrupt(&mut self, idx: usize) -> Result<(), String> {
        let Event::Interrupt(i) = self.bus.queue.event(idx).clone() else {
            unreachable!()
        };
        if !(32..=255).contains(&i.vector) {
            // The older guest patch's SMP interrupts (`from` = 3) leave the vector stale
            // (krr-spec open question 7): not replayable.
            return Err(format!(
                "{}: interrupt vector {} is not an external-interrupt vector (a recording by the older KRR guest patch, whose SMP interrupt events lack vector and registers?)",
                self.bus.queue.describe(idx),
                i.vector
            ));
        }
        let regs = gprs(&i.regs);
        let arch = self.core.arch_mut();
        if arch.gpr != regs && !is_user_address(i.rip) {
            self.corrected_interrupts += 1;
            log::debug!(
                "{}: registers differ at injection; the recorded ones are loaded",
                self.bus.queue.describe(idx)
            );
        }
        arch.gpr = regs;
        if is_user_address(i.rip) {
            arch.rip = i.rip;
        }
        self.bus.cache_spin(i.spin_count, idx);
        // KRR's count at the injection is the recorded one; a REP interrupted between
        // iterations counts again when it resumes, so krr's single retirement of it stays
        // aligned (see ARCHITECTURE.md, "KRR recordings").
        let cpu = self.core.cpu();
        self.bus.resync(cpu, i.inst_cnt);
        self.bus.count_source.synced(idx);
        Engine::set_rep_pause(&mut self.core, None);
        self.engine
            .inject_interrupt(&mut self.core, i.vector as u8)
            .map_err(|e| {
                format!(
                    "delivering interrupt vector {:#x} of {} failed: {e:?}",
                    i.vector,
                    self.bus.queue.describe(idx)
                )
            })?;
        if i.from == 0 {
            self.bus.append_recorded(idx);
        } else if self.bus.ring.is_some() {
            let payload = self.bus.queue.payload(idx).to_vec();
            self.bus.ring_ops.push(super::ring::RingOp::InterruptSlot(
                i.id.max(0) as u32,
                payload,
            ));
        }
        self.bus.queue.take(idx);
        Ok(())
    }

    /// The engine is about to run user code: substitute the next event for it (3.4).
    fn at_user_mode(&mut self) -> Result<Option<End>, String> {
        self.place_dma(true)?;
        let Some((idx, event)) = self.bus.queue.head() else {
            return Ok(Some(End::Finished));
        };
        if let Some(to) = owner_of(event).filter(|&v| v != self.current && self.smp()) {
            // This vCPU left the kernel (its lock is free); the event is another vCPU's.
            self.owner = Some(to);
            self.switch_to(to)?;
            return Ok(None);
        }
        match event.clone() {
            Event::Syscall(s) => {
                let regs = gprs(&s.regs);
                let a = self.core.arch_mut();
                a.gpr = regs;
                let flags = a.rflags_value();
                let sel = ((a.star >> 32) & 0xfffc) as u16;
                a.seg[seg::CS] = Segment::flat(sel, Segment::CODE64_DPL0);
                a.seg[seg::SS] = Segment::flat(sel + 8, Segment::DATA_DPL0);
                let sfmask = a.sfmask;
                a.set_rflags_value(flags & !sfmask & !rflags::RF);
                a.rip = a.lstar;
                self.bus.cache_spin(s.spin_count, idx);
                self.bus.queue.take(idx);
                self.core.flush_tlb();
                Ok(None)
            }
            Event::Interrupt(i) if is_user_address(i.rip) => {
                self.inject_interrupt(idx)?;
                Ok(None)
            }
            Event::Interrupt(i) => {
                // A kernel-mode interrupt not met before the kernel left: the recording's
                // kernel took it, this one did not.
                let c = self.core.cpu();
                let msg = format!(
                    "the kernel returned to user mode at RIP {:#x} (count {}) before the interrupt recorded at RIP {:#x} count {}{}",
                    c.rip,
                    self.bus.count(c),
                    i.rip,
                    i.inst_cnt,
                    self.bus.count_note()
                );
                Ok(Some(self.diverge(Some(idx), msg)))
            }
            Event::Exception(e) => {
                let v = e.exception_index as u8;
                let a = self.core.arch_mut();
                a.gpr = gprs(&e.regs);
                a.rip = e.regs.rip;
                a.set_rflags_value(e.regs.rflags);
                match v {
                    vector::PF => a.cr2 = e.cr2,
                    vector::DB => a.dr[6] = e.cr2 ^ 0xffff_0ff0,
                    _ => {}
                }
                self.bus.cache_spin(e.spin_count, idx);
                let code = pushes_error_code(v).then_some(e.error_code as u32);
                let cr2 = (v == vector::PF).then_some(e.cr2);
                self.engine
                    .inject_exception(&mut self.core, v, code, cr2)
                    .map_err(|x| {
                        format!(
                            "delivering exception {v} of {} failed: {x:?}",
                            self.bus.queue.describe(idx)
                        )
                    })?;
                if v != vector::PF {
                    if v == vector::DB {
                        self.bus.append_recorded(idx);
                    }
                    self.user_gp_injected = v == vector::GP;
                    self.bus.queue.take(idx);
                }
                Ok(None)
            }
            other => {
                let c = self.core.cpu();
                let msg = format!(
                    "the kernel returned to user mode at RIP {:#x} (count {}), but the next event is {other}",
                    c.rip,
                    self.bus.count(c)
                );
                Ok(Some(self.diverge(Some(idx), msg)))
            }
        }
    }

    /// A trap point (3.5-3.7): act, then let the instruction there run.
    fn at_trap(&mut self, rip: u64) -> Result<Option<End>, String> {
        if let Some(end) = self.at_breakpoint(rip) {
            return Ok(Some(end));
        }
        if self.traps.at(rip).is_none() {
            // A debugger's breakpoint, already reported: go on.
            self.engine.resume_past_stop(self.core.cpu());
            return Ok(None);
        }
        self.trap_hits += 1;
        // The interrupt check comes first at every boundary (3.2).
        if let Some((head, Event::Interrupt(i))) = self.bus.queue.head() {
            let (n, irip, ircx) = (i.inst_cnt, i.rip, i.regs.rcx);
            let mine = usize::try_from(i.id).unwrap_or(0) == self.current;
            let c = self.core.cpu();
            let count = self.bus.count(c);
            if mine && c.rip == irip && c.gpr[RCX] == ircx && (count + 1 == n || count == n) {
                self.inject_interrupt(head)?;
                return Ok(None);
            }
        }
        let point = self.traps.at(rip);
        let end = match point {
            Some(point) => self.trap_action(point),
            None => None,
        };
        self.engine.resume_past_stop(self.core.cpu());
        if end.is_none() && point == Some(TrapPoint::LockRelease) && self.smp() {
            return self.release();
        }
        Ok(end)
    }

    /// LOCK_RELEASE (krr-spec 5): when the next event belongs to another vCPU, the lock
    /// passes to it once the releasing vCPU has run the instruction at the trap point.
    fn release(&mut self) -> Result<Option<End>, String> {
        let next = self.bus.queue.head().and_then(|(_, e)| owner_of(e));
        let Some(to) = next.filter(|&v| v != self.current) else {
            return Ok(None);
        };
        match self.run_one()? {
            Exit::Budget | Exit::BusRequest | Exit::Halt | Exit::UserMode | Exit::Stop { .. } => {}
            failed => return Err(self.failure(failed)),
        }
        self.owner = Some(to);
        self.switch_to(to)?;
        Ok(None)
    }
}
