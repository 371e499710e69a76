//! What gdb drives: a replay that moves forward to a position, pauses at breakpoints and
//! watchpoints, and can be put back to a snapshot ([`Rewind`]). Two replays are: a krr
//! trace's ([`TraceSession`], over [`Replayer`]) and a KRR recording's ([`Driver`]).

use crate::krr_replay::driver::{Driver, End, Pause as DriverPause};
use crate::replay::{Advance, Replayer, Run, Verdict};
use crate::timeline::Rewind;
use indicatif::ProgressBar;
use krr_runtime::watch::{WatchHit, WatchRange};
use std::io::Write;

/// Why [`Session::advance`] returned.
#[derive(Debug)]
pub enum Pause {
    /// The position reached the target.
    Reached,
    /// Before the instruction at a breakpoint address.
    Breakpoint,
    /// gdb's interrupt request (between engine runs).
    Interrupted,
    /// Right after an instruction that accessed a watched range.
    Watch(WatchHit),
    /// The recording's end (`true`), or a divergence (`false`, reported on stderr).
    Ended(bool),
}

pub trait Session: Rewind {
    /// Replay until the position reaches `target`, a breakpoint or watchpoint, the end or a
    /// divergence; `interrupted` is asked between engine runs.
    fn advance(
        &mut self,
        target: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Pause, String>;
    /// gdb's breakpoints (`--break`'s stay too).
    fn set_breakpoints(&mut self, addrs: Vec<u64>);
    /// Breakpoints given on the command line.
    fn fixed_breakpoints(&self) -> Vec<u64>;
    fn set_watchpoints(&mut self, ranges: Vec<WatchRange>);
    /// Paused at a breakpoint: the next [`Session::advance`] executes the instruction there.
    fn step_past_breakpoint(&mut self);
    /// The recording's events around this point, (index, description, already replayed).
    fn events_around(
        &mut self,
        before: usize,
        after: usize,
    ) -> Result<Vec<(u64, String, bool)>, String>;
    /// Hold the guest's console output back (a stretch already shown) or not.
    fn set_quiet(&mut self, quiet: bool);
    /// What `monitor icount` says besides krr's count (KRR's count, the vCPU).
    fn position_notes(&self) -> Vec<String>;
}

/// A krr trace's replay under gdb.
pub struct TraceSession {
    pub replayer: Replayer,
    pub run: Run,
    /// The replay's end, once reached.
    pub ended: Option<Verdict>,
    bar: ProgressBar,
    held_console: Option<Option<Box<dyn Write>>>,
}

impl TraceSession {
    pub fn new(replayer: Replayer, run: Run) -> TraceSession {
        TraceSession {
            replayer,
            run,
            ended: None,
            bar: ProgressBar::hidden(),
            held_console: None,
        }
    }
}

impl Rewind for TraceSession {
    type Saved = <Replayer as Rewind>::Saved;
    fn position(&self) -> u64 {
        self.replayer.position()
    }
    fn save(&self) -> Self::Saved {
        self.replayer.save()
    }
    fn saved_bytes(saved: &Self::Saved) -> u64 {
        Replayer::saved_bytes(saved)
    }
    fn restore(&mut self, saved: &Self::Saved) {
        self.replayer.restore(saved);
        self.ended = None;
    }
    fn core(&self) -> &krr_runtime::Core {
        &self.replayer.core
    }
    fn core_mut(&mut self) -> &mut krr_runtime::Core {
        &mut self.replayer.core
    }
    fn ram_rewritten(&mut self, gpa: u64, len: u64) {
        self.replayer.ram_rewritten(gpa, len);
    }
}

impl Session for TraceSession {
    fn advance(
        &mut self,
        target: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Pause, String> {
        if let Some(v) = &self.ended {
            return Ok(Pause::Ended(matches!(v, Verdict::Matched)));
        }
        let advance = self
            .replayer
            .advance(&mut self.run, target, &self.bar, interrupted)
            .map_err(|e| e.to_string())?;
        Ok(match advance {
            Advance::Reached => Pause::Reached,
            Advance::Breakpoint(_) => Pause::Breakpoint,
            Advance::Interrupted => Pause::Interrupted,
            Advance::Watch(hit) => Pause::Watch(hit),
            Advance::Ended(v) => {
                let matched = matches!(v, Verdict::Matched);
                if let Verdict::Diverged(d) = &v {
                    eprintln!(
                        "krr: the replay diverged at event {} (instruction {}, RIP {:#x}{}): {}",
                        d.event_index, d.icount, d.rip, d.function, d.what
                    );
                }
                self.ended = Some(v);
                Pause::Ended(matched)
            }
        })
    }

    fn set_breakpoints(&mut self, addrs: Vec<u64>) {
        self.replayer.set_breakpoints(addrs);
    }

    fn fixed_breakpoints(&self) -> Vec<u64> {
        self.replayer.options().breaks.clone()
    }

    fn set_watchpoints(&mut self, ranges: Vec<WatchRange>) {
        self.replayer.set_watchpoints(ranges);
    }

    fn step_past_breakpoint(&mut self) {
        self.replayer.step_past_breakpoint();
    }

    fn events_around(
        &mut self,
        before: usize,
        after: usize,
    ) -> Result<Vec<(u64, String, bool)>, String> {
        self.replayer
            .events_around(before, after)
            .map_err(|e| e.to_string())
    }

    fn set_quiet(&mut self, quiet: bool) {
        match (quiet, self.held_console.is_some()) {
            (true, false) => self.held_console = Some(self.replayer.take_console()),
            (false, true) => {
                let console = self.held_console.take().flatten();
                self.replayer.set_console(console);
            }
            _ => {}
        }
    }

    fn position_notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Instructions a KRR replay runs between looks at gdb's interrupt request.
const KRR_SLICE: u64 = 50_000_000;

impl Session for Driver {
    fn advance(
        &mut self,
        target: u64,
        interrupted: &mut dyn FnMut() -> bool,
    ) -> Result<Pause, String> {
        loop {
            if self.position() >= target {
                return Ok(Pause::Reached);
            }
            if interrupted() {
                return Ok(Pause::Interrupted);
            }
            self.pause_at = Some(target.min(self.position().saturating_add(KRR_SLICE)));
            let end = self.run(&mut |_| {});
            self.pause_at = None;
            match end? {
                End::Paused(DriverPause::Reached) => {}
                End::Paused(DriverPause::Breakpoint(_)) => return Ok(Pause::Breakpoint),
                End::Paused(DriverPause::Watch(hit)) => return Ok(Pause::Watch(hit)),
                End::Finished => return Ok(Pause::Ended(true)),
                End::Diverged(d) => {
                    let c = self.core.cpu();
                    eprintln!(
                        "krr: the replay diverged at instruction {} (KRR count {}), RIP {:#x}: {}",
                        self.position(),
                        self.bus.count(c),
                        c.rip,
                        d.message
                    );
                    return Ok(Pause::Ended(false));
                }
                End::Stopped(_) => return Ok(Pause::Reached),
            }
        }
    }

    fn set_breakpoints(&mut self, addrs: Vec<u64>) {
        Driver::set_breakpoints(self, addrs);
    }

    fn fixed_breakpoints(&self) -> Vec<u64> {
        Vec::new()
    }

    fn set_watchpoints(&mut self, ranges: Vec<WatchRange>) {
        self.core.set_watchpoints(ranges);
    }

    fn step_past_breakpoint(&mut self) {
        self.pass_breakpoint_here();
    }

    fn events_around(
        &mut self,
        before: usize,
        after: usize,
    ) -> Result<Vec<(u64, String, bool)>, String> {
        let q = &self.bus.queue;
        let head = q.head().map_or(q.len(), |(i, _)| i);
        let first = head.saturating_sub(before);
        let last = (head + after).min(q.len());
        Ok((first..last)
            .map(|i| {
                let e = q.event(i);
                (
                    i as u64 + 1,
                    format!("{e} (file offset {})", q.offset(i)),
                    i < head,
                )
            })
            .collect())
    }

    fn set_quiet(&mut self, _quiet: bool) {
        // The console of a KRR replay is collected and shown at its end.
    }

    fn position_notes(&self) -> Vec<String> {
        let c = self.core.cpu();
        vec![format!(
            "KRR count {} on vCPU {} ({} of its own instructions)",
            self.bus.count(c),
            self.current,
            c.icount
        )]
    }
}
