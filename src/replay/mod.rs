//! The replayer: load a trace's snapshot and run the engine with every input taken from the
//! trace. No device models: port and MMIO reads, RDTSC and RDRAND come from synchronous
//! events (checked against the instruction asking for them), interrupts and checkpoints are
//! asynchronous events the engine is stopped at with an instruction budget, so blocks stay
//! multi-instruction and still end exactly where the next event is due.

mod bus;
pub mod parallel;
mod rewind;
mod segments;

pub use segments::{segments, Segment, SnapshotTaker};

use crate::report;
use crate::symbols::SymbolTable;
use crate::trace::{state, Event, EventCounts, EventData, EventStream, TraceError, TraceReader};
use bus::ReplayBus;
use indicatif::ProgressBar;
use krr_jit::{Engine, EngineConfig, Exit};
use krr_runtime::cpuid::CpuidTable;
use krr_runtime::Core;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub engine: EngineConfig,
    /// Write the console bytes the guest sent to the serial port.
    pub console: bool,
    /// Log every instruction in `[start, end)` with its registers.
    pub log_bound: Option<(u64, u64)>,
    pub log_file: Option<std::path::PathBuf>,
    /// End the replay before this instruction and report the state.
    pub stop_at: Option<u64>,
    /// Do not compare the checkpoints' RAM hashes (for measuring their cost).
    pub skip_ram_check: bool,
    /// Check the incremental RAM digest against one computed from scratch at every
    /// checkpoint (`KRR_VERIFY_RAM_DIGEST=1`; slow, for tests of the dirty-page tracking).
    pub verify_ram_digest: bool,
    /// Kernel symbols: addresses in reports and the instruction log are named after them.
    pub symbols: Option<std::sync::Arc<SymbolTable>>,
    /// Stop before the first instruction executed at one of these linear addresses
    /// (`--break`; engine stop addresses, so the rest of the replay runs at full speed).
    pub breaks: Vec<u64>,
    /// Decode the events on the main thread only, with no read-ahead thread (parallel replay:
    /// its threads keep every core busy already, and a segment's read-ahead would decode
    /// chunks past the segment's end).
    pub no_read_ahead: bool,
}

/// Where replay left the recorded path.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// Index of the trace event that did not match (or that was due next).
    pub event_index: u64,
    pub icount: u64,
    pub rip: u64,
    pub what: String,
    /// Registers at the divergent point, when known.
    pub regs: Option<([u64; 16], u64)>,
    /// The divergent instruction's bytes and disassembly.
    pub insn: String,
    /// ` (function+0xoff)` of the RIP, when symbols are known.
    pub function: String,
}

#[derive(Debug)]
pub enum Verdict {
    Matched,
    Diverged(Box<Divergence>),
    /// `--stop-at` reached.
    Stopped,
    /// A `--break` address reached (the instruction there has not run).
    Breakpoint(u64),
    /// `--segment K`: the segment ended in the state of the snapshot at its end.
    SegmentMatched(Segment),
}

pub struct ReplayOutcome {
    pub verdict: Verdict,
    pub counts: EventCounts,
    pub icount: u64,
    pub rip: u64,
    pub regs_hash: u64,
    pub ram_hash: u64,
    pub seconds: f64,
    pub blocks_compiled: u64,
    /// Blocks installed from the code cache instead of compiled.
    pub blocks_cached: u64,
    pub code_bytes: u64,
    pub compile_seconds: f64,
    /// Guest RAM the host held at the end (resident pages of the RAM mapping), and its size.
    pub ram_resident: u64,
    pub ram_size: u64,
    /// Register line and next instruction at the end (for `--stop-at` and divergences).
    pub state_dump: String,
    /// ` (function+0xoff)` of the breakpoint reached, when symbols are known.
    pub breakpoint_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Fatal(String),
}

/// Instructions per engine run at most, so a debugger's interrupt is noticed promptly.
const RUN_SLICE: u64 = 50_000_000;

/// Why [`Replayer::advance`] returned.
#[derive(Debug)]
pub enum Advance {
    /// The instruction count reached the target.
    Reached,
    /// A breakpoint address: the instruction there has not run.
    Breakpoint(u64),
    /// The caller's interrupt request (between engine runs).
    Interrupted,
    /// The instruction just executed touched a watchpoint ([`Replayer::set_watchpoints`]).
    Watch(krr_runtime::watch::WatchHit),
    /// The trace ended, or the replay left it.
    Ended(Verdict),
}

/// A replay in progress: what [`Replayer::advance`] keeps between calls.
pub struct Run {
    t0: Instant,
    log: Option<Box<dyn Write>>,
    stalls: u32,
    last_draw: Instant,
}

/// Everything replay needs, loaded from a trace.
pub struct Replayer {
    /// The CPU and guest RAM being replayed.
    pub core: Core,
    pub engine: Engine,
    bus: ReplayBus,
    end_icount: u64,
    end_regs_hash: u64,
    end_ram_hash: u64,
    options: ReplayOptions,
}

impl Replayer {
    /// Open and check the whole trace (framing, checksums, index) and load its snapshot.
    pub fn open(path: &Path, options: ReplayOptions) -> Result<Replayer, ReplayError> {
        let mut reader = TraceReader::open(path)?;
        let info = reader.info.clone();
        let snapshot = reader.snapshot()?;
        let setup =
            |what: &str, e: String| ReplayError::Setup(format!("{}: {what}: {e}", reader.path()));
        let mut core = Core::new(info.mem_bytes).map_err(|e| setup("guest RAM", e.to_string()))?;
        let cpuid = CpuidTable::from_entries(&info.cpuid)
            .ok_or_else(|| setup("CPU model", "too many CPUID entries".into()))?;
        // Instructions of these extensions run as host instructions: without them here the
        // replay could not execute what the recording did.
        let lacks = crate::cpu_model::host_lacks(&cpuid);
        if !lacks.is_empty() {
            return Err(setup(
                "CPU model",
                format!(
                    "the recording's CPU reports {}, which krr executes with host instructions this host lacks",
                    lacks.join(" ")
                ),
            ));
        }
        *core.cpuid_mut() = cpuid;
        state::decode_ram(core.mem_mut(), &snapshot.ram_image)
            .map_err(|e| setup("snapshot RAM image", e))?;
        state::decode_cpu(core.arch_mut(), &snapshot.cpu_image)
            .map_err(|e| setup("snapshot CPU image", e))?;
        core.flush_tlb();
        let engine = Engine::new(EngineConfig {
            deliver_exceptions: true,
            ..options.engine
        })
        .map_err(|e| setup("engine", e.to_string()))?;
        let end = reader.end.clone();
        let console: Option<Box<dyn Write>> = if options.console {
            Some(Box::new(std::io::stdout()))
        } else {
            None
        };
        Ok(Replayer {
            core,
            engine,
            bus: ReplayBus {
                stream: if options.no_read_ahead {
                    EventStream::without_read_ahead(reader)
                } else {
                    EventStream::new(reader)
                },
                console,
                counts: EventCounts::default(),
                divergence: None,
                error: None,
            },
            end_icount: end.icount,
            end_regs_hash: end.regs_hash,
            end_ram_hash: end.ram_hash,
            options,
        })
    }

    pub fn set_console(&mut self, out: Option<Box<dyn Write>>) {
        self.bus.console = out;
    }

    /// The console output, taken away (a debugger re-executing a stretch it has shown).
    pub fn take_console(&mut self) -> Option<Box<dyn Write>> {
        self.bus.console.take()
    }

    pub fn total_instructions(&self) -> u64 {
        self.end_icount
    }

    pub fn total_events(&self) -> u64 {
        self.bus.stream.reader().end.counts.total()
    }

    fn diverge_here(&mut self, what: String) -> Divergence {
        Divergence {
            event_index: self.bus.stream.position,
            icount: self.core.cpu().icount,
            rip: self.core.cpu().rip,
            what,
            regs: Some((self.core.cpu().gpr, self.core.cpu().rflags_value())),
            insn: String::new(),
            function: String::new(),
        }
    }

    /// The next asynchronous event's instruction count (sync events before it are left for
    /// the bus).
    /// What changes when replay advances: instruction count, RIP, RCX (REP iterations) and
    /// the trace position.
    fn progress_mark(&self) -> (u64, u64, u64, u64) {
        let cpu = self.core.cpu();
        (
            cpu.icount,
            cpu.rip,
            cpu.gpr[krr_runtime::gpr::RCX],
            self.bus.stream.position,
        )
    }

    fn next_async(&mut self) -> Result<Option<u64>, TraceError> {
        let mut k = 0;
        loop {
            match self.bus.stream.peek(k)? {
                None => return Ok(None),
                Some(e) if e.kind().is_async() => return Ok(Some(e.icount)),
                Some(_) => k += 1,
            }
        }
    }

    /// Handle the asynchronous events due at the current instruction count.
    fn take_async_events(&mut self) -> Result<Option<Divergence>, ReplayError> {
        loop {
            let e: Event = match self.bus.stream.peek(0)? {
                Some(e) if e.kind().is_async() && e.icount <= self.core.arch_mut().icount => {
                    e.clone()
                }
                _ => return Ok(None),
            };
            if e.icount < self.core.cpu().icount || e.rip != self.core.cpu().rip {
                return Ok(Some(self.diverge_here(format!(
                    "the trace has {e}, replay is at instruction {} RIP {:#x}",
                    self.core.cpu().icount,
                    self.core.cpu().rip
                ))));
            }
            match &e.data {
                &EventData::Checkpoint {
                    regs_hash,
                    ram_hash,
                } => {
                    let h = state::regs_hash(self.core.cpu());
                    if h != regs_hash {
                        return Ok(Some(self.diverge_here(format!(
                            "checkpoint at instruction {}: CPU state hash {h:016x}, recorded {regs_hash:016x}",
                            e.icount
                        ))));
                    }
                    if !self.options.skip_ram_check {
                        let h = self.core.ram_hash();
                        if self.options.verify_ram_digest {
                            let full = self.core.mem().full_digest();
                            if full != h {
                                return Err(ReplayError::Fatal(format!(
                                    "internal error: at the checkpoint at instruction {}, the incremental RAM digest is {h:016x} but RAM hashes to {full:016x} (a write did not mark its page)",
                                    e.icount
                                )));
                            }
                        }
                        if h != ram_hash {
                            return Ok(Some(self.diverge_here(format!(
                                "checkpoint at instruction {}: RAM hash {h:016x}, recorded {ram_hash:016x} (guest RAM differs; the previous checkpoint's matched)",
                                e.icount
                            ))));
                        }
                    }
                }
                &EventData::Interrupt { vector, rcx } => {
                    let now_rcx = self.core.cpu().gpr[krr_runtime::gpr::RCX];
                    if now_rcx != rcx {
                        return Ok(Some(self.diverge_here(format!(
                            "the trace has {e}, replay has RCX {now_rcx:#x} there"
                        ))));
                    }
                    if let Err(exit) = self.engine.inject_interrupt(&mut self.core, vector) {
                        return Err(self.fatal(exit));
                    }
                }
                &EventData::Nmi { rcx } => {
                    let now_rcx = self.core.cpu().gpr[krr_runtime::gpr::RCX];
                    if now_rcx != rcx {
                        return Ok(Some(self.diverge_here(format!(
                            "the trace has {e}, replay has RCX {now_rcx:#x} there"
                        ))));
                    }
                    if !Engine::nmi_deliverable(self.core.cpu()) {
                        return Ok(Some(self.diverge_here(format!(
                            "the trace has {e}, but NMIs are blocked there"
                        ))));
                    }
                    if let Err(exit) = self.engine.inject_nmi(&mut self.core) {
                        return Err(self.fatal(exit));
                    }
                }
                EventData::DmaWrite { phys, data } => {
                    let end = phys.checked_add(data.len() as u64);
                    if data.is_empty() || end.is_none_or(|end| end > self.core.mem().size()) {
                        return Err(ReplayError::Fatal(format!(
                            "event {}: {e} lies outside guest RAM ({:#x} bytes)",
                            self.bus.stream.position,
                            self.core.mem().size()
                        )));
                    }
                    self.core
                        .mem_mut()
                        .write(*phys, data)
                        .map_err(|err| ReplayError::Fatal(err.to_string()))?;
                    // The device may have overwritten translated code.
                    self.engine
                        .notify_write(&mut self.core, *phys, data.len() as u64);
                }
                _ => unreachable!("only asynchronous events are taken here"),
            }
            self.bus.stream.next_event()?;
            self.bus.counts.add(e.kind());
        }
    }

    fn fatal(&mut self, exit: Exit) -> ReplayError {
        let (icount, rip) = (self.core.cpu().icount, self.core.cpu().rip);
        let (bytes, text) = report::describe_insn(&mut self.core, rip);
        ReplayError::Fatal(match exit {
            Exit::TripleFault { first, second } => format!(
                "triple fault at instruction {icount} RIP {rip:#x} ({bytes}: {text}): #{first} then #{second} while delivering it"
            ),
            Exit::Unbacked { phys } => format!(
                "access to physical address {phys:#x} with no RAM at instruction {icount} RIP {rip:#x} ({bytes}: {text})"
            ),
            other => format!("engine stopped with {other:?} at instruction {icount} RIP {rip:#x}"),
        })
    }

    fn log_instruction(&mut self, log: &mut dyn Write) -> Result<(), ReplayError> {
        let rip = self.core.cpu().rip;
        let (bytes, text) = report::describe_insn(&mut self.core, rip);
        let regs = report::regs_line(self.core.cpu());
        let at = match self
            .options
            .symbols
            .as_deref()
            .and_then(|t| t.describe(rip))
        {
            Some(name) => format!(" <{name}>"),
            None => String::new(),
        };
        writeln!(
            log,
            "{} {rip:#018x}{at} [{bytes}] {text} | {regs}",
            self.core.cpu().icount
        )
        .map_err(|e| ReplayError::Setup(format!("cannot write the instruction log: {e}")))
    }

    /// Replay to the end of the trace (or `--stop-at`).
    /// Where `--log-bound` writes: the `-D` file, or stderr.
    fn open_log(&self) -> Result<Option<Box<dyn Write>>, ReplayError> {
        Ok(match (&self.options.log_bound, &self.options.log_file) {
            (Some(_), Some(path)) => Some(Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| {
                    ReplayError::Setup(format!("cannot create {}: {e}", path.display()))
                })?,
            ))),
            (Some(_), None) => Some(Box::new(std::io::stderr())),
            _ => None,
        })
    }

    fn draw_progress(&self, bar: &ProgressBar, t0: Instant) {
        bar.set_position(self.core.cpu().icount);
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{} events, {:.0} MIPS",
            self.bus.counts.total(),
            self.core.cpu().icount as f64 / secs / 1e6
        ));
    }

    /// Replay to the end of the trace, `--stop-at` or a `--break` address.
    pub fn run(&mut self, bar: &ProgressBar) -> Result<ReplayOutcome, ReplayError> {
        let mut run = self.start()?;
        let stop_at = self.options.stop_at.unwrap_or(u64::MAX);
        let verdict = match self.advance(&mut run, stop_at, bar, &mut || false)? {
            Advance::Ended(v) => v,
            Advance::Reached => Verdict::Stopped,
            Advance::Breakpoint(rip) => Verdict::Breakpoint(rip),
            Advance::Interrupted | Advance::Watch(_) => {
                unreachable!("nothing interrupts a plain run, which sets no watchpoints")
            }
        };
        self.finish(run, verdict, bar)
    }

    /// Begin a replay that [`Replayer::advance`] moves forward (a debugger's session).
    pub fn start(&mut self) -> Result<Run, ReplayError> {
        if !self.options.breaks.is_empty() {
            self.engine
                .set_stop_addresses(self.options.breaks.iter().copied());
        }
        Ok(Run {
            t0: Instant::now(),
            log: self.open_log()?,
            stalls: 0,
            last_draw: Instant::now(),
        })
    }

    /// The trace being replayed.
    pub fn trace_reader(&self) -> &crate::trace::TraceReader {
        self.bus.stream.reader()
    }

    pub fn options(&self) -> &ReplayOptions {
        &self.options
    }

    /// The trace's events around the current point: up to `before` consumed ones and
    /// `after` coming ones, as (index, description, consumed).
    pub fn events_around(
        &mut self,
        before: usize,
        after: usize,
    ) -> Result<Vec<(u64, String, bool)>, ReplayError> {
        let stream = &mut self.bus.stream;
        let pos = stream.position;
        let recent: Vec<String> = stream.recent().map(|e| e.to_string()).collect();
        let skip = recent.len().saturating_sub(before);
        let first = pos - recent.len() as u64;
        let mut out: Vec<(u64, String, bool)> = recent
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(|(i, e)| (first + i as u64, e, true))
            .collect();
        for k in 0..after {
            match stream.peek(k)? {
                Some(e) => out.push((pos + k as u64, e.to_string(), false)),
                None => break,
            }
        }
        Ok(out)
    }

    /// `len` bytes of guest-physical memory at `addr`, if RAM holds them all.
    pub fn read_phys(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.core.mem().read(addr, &mut buf).ok()?;
        Some(buf)
    }

    /// Instruction count of the next instruction.
    pub fn icount(&self) -> u64 {
        self.core.cpu().icount
    }

    /// The breakpoint addresses (engine stop addresses) from now on: the replay pauses
    /// before the first instruction at one of them.
    pub fn set_breakpoints(&mut self, addrs: impl IntoIterator<Item = u64>) {
        self.engine.set_stop_addresses(addrs);
    }

    /// Watchpoints (guest-physical ranges) from now on: the replay pauses right after an
    /// instruction that accesses one as it asks.
    pub fn set_watchpoints(&mut self, ranges: Vec<krr_runtime::watch::WatchRange>) {
        self.core.set_watchpoints(ranges);
    }

    /// After a pause at a breakpoint: the next [`Replayer::advance`] executes the
    /// instruction there instead of pausing again.
    pub fn step_past_breakpoint(&mut self) {
        self.engine.resume_past_stop(self.core.cpu());
    }

    /// Replay until the instruction count reaches `target` (the instruction numbered
    /// `target` has not run), a breakpoint, the end of the trace or a divergence;
    /// `interrupted` is asked between engine runs (a debugger's Ctrl-C).
    pub fn advance(
        &mut self,
        run: &mut Run,
        target: u64,
        bar: &ProgressBar,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Advance, ReplayError> {
        let (log_start, log_end) = self.options.log_bound.unwrap_or((u64::MAX, u64::MAX));
        let t0 = run.t0;
        let verdict = loop {
            if let Some(err) = self.bus.error.take() {
                return Err(err.into());
            }
            if let Some(d) = self.bus.divergence.take() {
                break Verdict::Diverged(Box::new(d));
            }
            if let Some(d) = self.take_async_events()? {
                break Verdict::Diverged(Box::new(d));
            }
            let icount = self.core.cpu().icount;
            if icount >= target {
                return Ok(Advance::Reached);
            }
            if interrupted() {
                return Ok(Advance::Interrupted);
            }
            let next_async = self.next_async()?;
            if icount >= self.end_icount {
                if let Some(e) = self.bus.stream.peek(0)? {
                    let e = e.clone();
                    break Verdict::Diverged(Box::new(self.diverge_here(format!(
                        "the recording ended at instruction {}, but the trace still has {e}",
                        self.end_icount
                    ))));
                }
                break Verdict::Matched;
            }
            let logging = run.log.is_some() && icount >= log_start && icount < log_end;
            let mut limit = next_async
                .unwrap_or(u64::MAX)
                .min(self.end_icount)
                .min(target)
                // Between engine runs a debugger's Ctrl-C is noticed.
                .min(icount.saturating_add(RUN_SLICE));
            if logging {
                limit = limit.min(icount + 1);
                if let Some(l) = run.log.as_mut() {
                    self.log_instruction(l.as_mut())?;
                }
            } else if run.log.is_some() && icount < log_start {
                limit = limit.min(log_start);
            }
            self.core.set_icount_limit(limit);
            let before = self.progress_mark();
            let exit = self.engine.run_with_bus(&mut self.core, &mut self.bus);
            if let Some(hit) = self.core.take_watch_hit() {
                return Ok(Advance::Watch(hit));
            }
            match exit {
                Exit::Budget | Exit::BusRequest => {}
                Exit::Halt => {
                    // A halted CPU waits for the next interrupt, which must be due now.
                    if self.bus.divergence.is_none()
                        && next_async != Some(self.core.cpu().icount)
                        && self.core.cpu().icount < self.end_icount
                    {
                        let due = match next_async {
                            Some(n) => format!("the next asynchronous event is at instruction {n}"),
                            None => "the trace has no more interrupts".to_string(),
                        };
                        break Verdict::Diverged(Box::new(self.diverge_here(format!(
                            "the guest halted at instruction {} RIP {:#x}; {due}",
                            self.core.cpu().icount,
                            self.core.cpu().rip
                        ))));
                    }
                }
                Exit::Stop { rip } => return Ok(Advance::Breakpoint(rip)),
                other => return Err(self.fatal(other)),
            }
            // No instruction, no event and no REP iteration: the next event can never be
            // reached (a trace that is well-formed but inconsistent).
            run.stalls = if self.progress_mark() == before {
                run.stalls + 1
            } else {
                0
            };
            if run.stalls >= 3 && self.bus.divergence.is_none() {
                let next = match self.bus.stream.peek(0)? {
                    Some(e) => format!("the next event is {e}"),
                    None => "the trace has no more events".to_string(),
                };
                break Verdict::Diverged(Box::new(self.diverge_here(format!(
                    "replay cannot advance at instruction {} RIP {:#x}: {next}",
                    self.core.cpu().icount,
                    self.core.cpu().rip
                ))));
            }
            if run.last_draw.elapsed().as_millis() >= 200 {
                run.last_draw = Instant::now();
                self.draw_progress(bar, t0);
            }
        };
        Ok(Advance::Ended(verdict))
    }

    /// End a replay: flush the log and console, check the final state against the trace's
    /// (a `Matched` verdict becomes a divergence when it differs) and describe the end.
    pub fn finish(
        &mut self,
        mut run: Run,
        verdict: Verdict,
        bar: &ProgressBar,
    ) -> Result<ReplayOutcome, ReplayError> {
        let mut log = run.log.take();
        bar.set_position(self.core.cpu().icount);
        if let Some(l) = log.as_mut() {
            l.flush().map_err(|e| {
                ReplayError::Setup(format!("cannot write the instruction log: {e}"))
            })?;
        }
        if let Some(out) = &mut self.bus.console {
            let _ = out.flush();
        }
        let seconds = run.t0.elapsed().as_secs_f64();
        let regs_hash = state::regs_hash(self.core.cpu());
        let ram_hash = self.core.ram_hash();
        let verdict = match verdict {
            Verdict::Matched
                if regs_hash != self.end_regs_hash || ram_hash != self.end_ram_hash =>
            {
                let what = format!(
                    "final state: registers hash {regs_hash:016x} (recorded {:016x}), RAM hash {ram_hash:016x} (recorded {:016x})",
                    self.end_regs_hash, self.end_ram_hash
                );
                Verdict::Diverged(Box::new(self.diverge_here(what)))
            }
            v => v,
        };
        let symbols = self.options.symbols.clone();
        let symbols = symbols.as_deref();
        let verdict = match verdict {
            Verdict::Diverged(mut d) => {
                let (bytes, text) = report::describe_insn(&mut self.core, d.rip);
                d.insn = format!("[{bytes}] {text}");
                d.function = SymbolTable::suffix(symbols, d.rip);
                Verdict::Diverged(d)
            }
            v => v,
        };
        let rip = self.core.cpu().rip;
        let (bytes, text) = report::describe_insn(&mut self.core, rip);
        let regs = report::regs_line(self.core.cpu());
        let state_dump = format!(
            "next instruction {} RIP {rip:#x}{}: [{bytes}] {text}\n{regs}",
            self.core.cpu().icount,
            SymbolTable::suffix(symbols, rip)
        );
        let breakpoint_name = match verdict {
            Verdict::Breakpoint(at) => SymbolTable::suffix(symbols, at),
            _ => String::new(),
        };
        let stats = &self.engine.stats;
        log::info!("engine: {}", stats.dispatch_summary());
        Ok(ReplayOutcome {
            verdict,
            counts: self.bus.counts.clone(),
            icount: self.core.cpu().icount,
            rip,
            regs_hash,
            ram_hash,
            seconds,
            blocks_compiled: stats.blocks_compiled,
            blocks_cached: stats.blocks_cached,
            code_bytes: stats.code_bytes,
            compile_seconds: stats.compile_time.as_secs_f64(),
            ram_resident: self.core.mem().resident_bytes(),
            ram_size: self.core.mem().size(),
            state_dump,
            breakpoint_name,
        })
    }
}

impl ReplayOutcome {
    /// The summary people read: time, one line per event kind, totals, hashes, verdict.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "Replay executed in {:.3} seconds\n=== Event Stats ===\n",
            self.seconds
        );
        for l in self.counts.lines() {
            s.push_str(&l);
            s.push('\n');
        }
        s.push_str(&format!("Instructions: {}\n", self.icount));
        s.push_str(&format!(
            "Guest MIPS: {:.1}\n",
            self.icount as f64 / self.seconds.max(1e-9) / 1e6
        ));
        s.push_str(&format!(
            "Engine: {} blocks compiled, {} code bytes, {:.2} s compiling, {} blocks from the code cache\n",
            self.blocks_compiled, self.code_bytes, self.compile_seconds, self.blocks_cached
        ));
        s.push_str(&format!(
            "Guest RAM: {} MiB resident of {} MiB\n",
            self.ram_resident >> 20,
            self.ram_size >> 20
        ));
        s.push_str(&format!(
            "Final state hash: registers {:016x} RAM {:016x}\n",
            self.regs_hash, self.ram_hash
        ));
        match &self.verdict {
            Verdict::Matched => s.push_str("Verdict: matched\n"),
            Verdict::Stopped => {
                s.push_str(&format!(
                    "Verdict: stopped before instruction {} as asked\n",
                    self.icount
                ));
                s.push_str(&self.state_dump);
                s.push('\n');
            }
            Verdict::SegmentMatched(seg) => {
                s.push_str(&format!(
                    "Verdict: segment {} (instructions {} to {}) matched the trace's snapshot at its end\n",
                    seg.index, seg.start, seg.end
                ));
            }
            Verdict::Breakpoint(rip) => {
                s.push_str(&format!(
                    "Verdict: stopped at breakpoint {rip:#x}{} before instruction {}\n",
                    self.breakpoint_name, self.icount
                ));
                s.push_str(&self.state_dump);
                s.push('\n');
            }
            Verdict::Diverged(d) => {
                s.push_str(&format!(
                    "Verdict: diverged at event {} (instruction {}, RIP {:#x}{}): {}\n",
                    d.event_index, d.icount, d.rip, d.function, d.what
                ));
                s.push_str(&format!("instruction there: {}\n", d.insn));
                if let Some((regs, flags)) = &d.regs {
                    s.push_str(&format!(
                        "registers there: {}\n",
                        report::regs_line_with(regs, *flags)
                    ));
                }
                s.push_str(&self.state_dump);
                s.push('\n');
            }
        }
        s
    }
}
