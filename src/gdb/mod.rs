//! `krr replay TRACE --gdb PORT`: a gdb remote stub on the replay (the `gdbstub` crate speaks
//! the protocol). gdb reads registers and memory at guest virtual addresses, sets
//! breakpoints (engine stop addresses, never 0xCC in guest memory: the replay must not
//! change), steps and continues; writes are refused, since a replay that gdb changed would
//! no longer be the recording. The replay pauses before the first instruction.

pub mod arch;
mod exec;
pub mod session;

use crate::timeline::Timeline;
use arch::KrrX86_64;
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{self, BlockingEventLoop};
use gdbstub::stub::{GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use krr_runtime::watch::{self, WatchHit, WatchRange};
use session::Session;
use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    Continue,
    Step,
    ReverseStep,
    ReverseContinue,
}

/// How much history the stub keeps: a snapshot every `interval` instructions, at most
/// `budget` bytes of them (the whole RAM once included).
#[derive(Clone, Copy, Debug)]
pub struct History {
    pub interval: u64,
    pub budget: u64,
}

/// The replay as gdb's target.
pub struct GdbTarget<'a, S: Session> {
    session: &'a mut S,
    /// gdb's breakpoints (software and hardware alike) and `--break`'s.
    breaks: BTreeSet<u64>,
    fixed_breaks: Vec<u64>,
    resume: Resume,
    /// Paused at a stop address: the next run executes the instruction there first.
    at_breakpoint: bool,
    /// The replay's end, once reached: matched (true) or diverged.
    pub ended: Option<bool>,
    /// Snapshots for going backwards.
    timeline: Timeline<S>,
    /// The furthest instruction count reached: console output before it has been shown.
    high_water: u64,
    /// gdb's watchpoints, by physical range.
    watches: Vec<WatchRange>,
}

impl<'a, S: Session> GdbTarget<'a, S> {
    /// The (guest-physical address, length) pieces of `len` bytes at virtual `addr` under
    /// the current page tables: a debugger's walk, with no permission checks and no
    /// accessed/dirty updates. `None` if unmapped (or under 32-bit paging, not walked yet).
    fn translate(&self, addr: u64, len: usize) -> Option<Vec<(u64, usize)>> {
        let core = self.session.core();
        let cpu = core.cpu();
        let mem = core.mem();
        if cpu.cr0 & (1 << 31) == 0 {
            return Some(vec![(addr, len)]);
        }
        if cpu.efer & (1 << 10) == 0 {
            return None;
        }
        crate::krr_replay::virt::pieces(|pa| mem.read_u64(pa).ok(), cpu.cr3, addr, len)
    }

    pub fn new(session: &'a mut S, history: History) -> Self {
        // `--break`'s addresses stay breakpoints whatever gdb sets.
        let fixed_breaks = session.fixed_breakpoints();
        let timeline = Timeline::new(session, history.interval, history.budget);
        GdbTarget {
            high_water: session.position(),
            watches: Vec::new(),
            timeline,
            session,
            breaks: BTreeSet::new(),
            fixed_breaks,
            resume: Resume::Continue,
            at_breakpoint: false,
            ended: None,
        }
    }

    fn apply_breakpoints(&mut self) {
        let all: Vec<u64> = self
            .breaks
            .iter()
            .copied()
            .chain(self.fixed_breaks.iter().copied())
            .collect();
        self.session.set_breakpoints(all);
    }
}

enum Stop {
    Stepped,
    Breakpoint,
    Interrupted,
    /// The trace's end (true) or a divergence (false).
    Ended(bool),
    /// Going backwards reached the start of history.
    HistoryStart,
    /// Right after an instruction that accessed a watched range.
    Watch(WatchHit),
}

fn refuse(what: &str) {
    eprintln!("krr: gdb asked to write {what}: refused (a replay must follow its recording)");
}

impl<S: Session> Target for GdbTarget<'_, S> {
    type Arch = KrrX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, KrrX86_64, String> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }

    fn guard_rail_implicit_sw_breakpoints(&self) -> bool {
        // Breakpoints are the engine's stop addresses; gdb never writes 0xCC.
        true
    }
}

impl<S: Session> SingleThreadBase for GdbTarget<'_, S> {
    fn read_registers(&mut self, regs: &mut arch::Regs) -> TargetResult<(), Self> {
        *regs = arch::regs_of(self.session.core().cpu());
        Ok(())
    }

    fn write_registers(&mut self, _regs: &arch::Regs) -> TargetResult<(), Self> {
        refuse("registers");
        Err(TargetError::NonFatal)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let pieces = self
            .translate(start, data.len())
            .ok_or(TargetError::Errno(14))?;
        let mem = self.session.core().mem();
        let mut done = 0;
        for (pa, n) in pieces {
            if mem.read(pa, &mut data[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        if done == 0 && !data.is_empty() {
            return Err(TargetError::Errno(14));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, _start: u64, _data: &[u8]) -> TargetResult<(), Self> {
        refuse("memory");
        Err(TargetError::NonFatal)
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl<S: Session> SingleThreadResume for GdbTarget<'_, S> {
    fn resume(&mut self, signal: Option<Signal>) -> Result<(), String> {
        if signal.is_some() {
            return Err("krr cannot deliver a signal to a replay".into());
        }
        self.resume = Resume::Continue;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl<S: Session> ReverseStep<()> for GdbTarget<'_, S> {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), String> {
        self.resume = Resume::ReverseStep;
        Ok(())
    }
}

impl<S: Session> ReverseCont<()> for GdbTarget<'_, S> {
    fn reverse_cont(&mut self) -> Result<(), String> {
        self.resume = Resume::ReverseContinue;
        Ok(())
    }
}

impl<S: Session> SingleThreadSingleStep for GdbTarget<'_, S> {
    fn step(&mut self, signal: Option<Signal>) -> Result<(), String> {
        if signal.is_some() {
            return Err("krr cannot deliver a signal to a replay".into());
        }
        self.resume = Resume::Step;
        Ok(())
    }
}

impl<S: Session> Breakpoints for GdbTarget<'_, S> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

impl<S: Session> HwWatchpoint for GdbTarget<'_, S> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let kind = match kind {
            WatchKind::Write => watch::kind::WRITE,
            WatchKind::Read => watch::kind::READ,
            WatchKind::ReadWrite => watch::kind::ACCESS,
        };
        // Watched by physical address, through the page tables as they are now.
        let Some(pieces) = self.translate(addr, len as usize) else {
            eprintln!("krr: watchpoint at {addr:#x}: not mapped now");
            return Ok(false);
        };
        for (phys, n) in pieces {
            self.watches.push(WatchRange {
                phys,
                len: n as u64,
                kind,
                addr,
            });
        }
        self.session.set_watchpoints(self.watches.clone());
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        _len: u64,
        _kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let before = self.watches.len();
        self.watches.retain(|w| w.addr != addr);
        self.session.set_watchpoints(self.watches.clone());
        Ok(self.watches.len() != before)
    }
}

impl<S: Session> SwBreakpoint for GdbTarget<'_, S> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.breaks.insert(addr) {
            self.apply_breakpoints();
        }
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let had = self.breaks.remove(&addr);
        if had {
            self.apply_breakpoints();
        }
        Ok(had)
    }
}

impl<S: Session> HwBreakpoint for GdbTarget<'_, S> {
    fn add_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.add_sw_breakpoint(addr, kind)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, kind: usize) -> TargetResult<bool, Self> {
        self.remove_sw_breakpoint(addr, kind)
    }
}

impl<S: Session> MonitorCmd for GdbTarget<'_, S> {
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), String> {
        let cmd = String::from_utf8_lossy(cmd);
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let num = |w: &str| {
            w.strip_prefix("0x")
                .map_or_else(|| w.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        };
        match words.as_slice() {
            ["icount"] => {
                outputln!(out, "icount {}", self.session.position());
                for note in self.session.position_notes() {
                    outputln!(out, "{note}");
                }
            }
            ["events"] => match self.session.events_around(4, 4) {
                Ok(list) => {
                    outputln!(out, "at instruction {}:", self.session.position());
                    for (i, e, consumed) in list {
                        let mark = if consumed { " " } else { ">" };
                        outputln!(out, "{mark} event {i}: {e}");
                    }
                }
                Err(e) => outputln!(out, "cannot read the trace: {e}"),
            },
            ["phys", addr, len] => match (num(addr), num(len)) {
                (Some(addr), Some(len)) if len <= 4096 => {
                    let mut bytes = vec![0u8; len as usize];
                    match self.session.core().mem().read(addr, &mut bytes).ok() {
                        Some(()) => {
                            for (i, row) in bytes.chunks(16).enumerate() {
                                let hex: Vec<String> =
                                    row.iter().map(|b| format!("{b:02x}")).collect();
                                outputln!(out, "{:#x}: {}", addr + 16 * i as u64, hex.join(" "));
                            }
                        }
                        None => outputln!(out, "no guest RAM at {addr:#x}..+{len:#x}"),
                    }
                }
                _ => outputln!(out, "usage: monitor phys ADDR LEN (LEN at most 4096)"),
            },
            ["goto", n] => match num(n) {
                Some(n) => match self.go_to(n) {
                    Ok(()) => outputln!(
                        out,
                        "icount {} (gdb's register cache is stale: run `flushregs`)",
                        self.session.position()
                    ),
                    Err(e) => outputln!(out, "{e}"),
                },
                None => outputln!(out, "usage: monitor goto N"),
            },
            ["history"] => outputln!(
                out,
                "history from instruction {}: {} snapshots, {} MiB (every {} instructions, at most {} MiB)",
                self.timeline.start(),
                self.timeline.snapshot_count(),
                self.timeline.bytes() >> 20,
                self.timeline.interval,
                self.timeline.budget >> 20
            ),
            [] | ["help"] => {
                outputln!(out, "krr monitor commands:");
                outputln!(
                    out,
                    "  icount          instructions executed so far (the next one's number)"
                );
                outputln!(
                    out,
                    "  events          the trace's events just before and after this point"
                );
                outputln!(
                    out,
                    "  phys ADDR LEN   guest-physical memory (LEN at most 4096)"
                );
                outputln!(
                    out,
                    "  goto N          run forward to instruction N (through breakpoints)"
                );
                outputln!(out, "  help            this list");
            }
            _ => outputln!(out, "unknown command `{cmd}` (monitor help lists them)"),
        }
        Ok(())
    }
}

struct ReplayLoop<S>(std::marker::PhantomData<S>);

impl<'a, S: Session> BlockingEventLoop for ReplayLoop<&'a mut S> {
    type Target = GdbTarget<'a, S>;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u64>;

    #[allow(clippy::type_complexity)]
    fn wait_for_stop_reason(
        target: &mut GdbTarget<'a, S>,
        conn: &mut TcpStream,
    ) -> Result<
        run_blocking::Event<SingleThreadStopReason<u64>>,
        run_blocking::WaitForStopReasonError<String, std::io::Error>,
    > {
        let mut incoming = false;
        let stop = {
            let mut poll = || {
                incoming = conn.peek().map(|b| b.is_some()).unwrap_or(true);
                incoming
            };
            target
                .go(&mut poll)
                .map_err(run_blocking::WaitForStopReasonError::Target)?
        };
        Ok(match stop {
            Stop::Interrupted => run_blocking::Event::IncomingData(
                conn.read()
                    .map_err(run_blocking::WaitForStopReasonError::Connection)?,
            ),
            Stop::Stepped => run_blocking::Event::TargetStopped(SingleThreadStopReason::DoneStep),
            Stop::Breakpoint => {
                run_blocking::Event::TargetStopped(SingleThreadStopReason::SwBreak(()))
            }
            Stop::Ended(true) => {
                run_blocking::Event::TargetStopped(SingleThreadStopReason::Exited(0))
            }
            Stop::Ended(false) => {
                run_blocking::Event::TargetStopped(SingleThreadStopReason::Signal(Signal::SIGTRAP))
            }
            Stop::Watch(hit) => run_blocking::Event::TargetStopped(SingleThreadStopReason::Watch {
                tid: (),
                kind: if hit.write {
                    WatchKind::Write
                } else {
                    WatchKind::Read
                },
                addr: hit.addr,
            }),
            Stop::HistoryStart => {
                run_blocking::Event::TargetStopped(SingleThreadStopReason::ReplayLog {
                    tid: None,
                    pos: ReplayLogPosition::Begin,
                })
            }
        })
    }

    fn on_interrupt(
        _target: &mut GdbTarget<'a, S>,
    ) -> Result<Option<SingleThreadStopReason<u64>>, String> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

/// Serve one gdb connection on 127.0.0.1:`port` until gdb detaches or kills it, or the
/// replay ends; gives back how the replay ended (`None`: not reached; `Some(true)`: matched).
pub fn serve<S: Session>(
    session: &mut S,
    port: u16,
    history: History,
) -> Result<Option<bool>, String> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("--gdb {port}: cannot listen on 127.0.0.1:{port}: {e}"))?;
    eprintln!("krr: waiting for gdb on 127.0.0.1:{port} (gdb VMLINUX -ex 'target remote :{port}')");
    let (stream, peer) = listener
        .accept()
        .map_err(|e| format!("--gdb {port}: accept: {e}"))?;
    let _ = stream.set_nodelay(true);
    eprintln!("krr: gdb connected from {peer}; the replay waits before its first instruction");
    let mut target = GdbTarget::new(session, history);
    target.apply_breakpoints();
    let reason = GdbStub::new(stream)
        .run_blocking::<ReplayLoop<&mut S>>(&mut target)
        .map_err(|e| format!("gdb session: {e}"))?;
    eprintln!("krr: gdb session ended ({reason:?})");
    Ok(target.ended)
}
