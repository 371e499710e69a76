//! Moving the replay as gdb asks: forwards (taking the timeline's snapshots on the way, and
//! keeping the console quiet over stretches already shown) and backwards (restore the latest
//! snapshot before the goal, replay forward to it).

use super::{GdbTarget, Resume, Stop};
use crate::replay::{Advance, Verdict};

impl GdbTarget {
    /// Run as gdb asked: one instruction, until a breakpoint, the end or `interrupted`, or
    /// the same backwards.
    pub(super) fn go(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stop, String> {
        match self.resume {
            Resume::ReverseStep => return self.reverse_step(),
            Resume::ReverseContinue => return self.reverse_continue(),
            Resume::Step | Resume::Continue => {}
        }
        if let Some(v) = &self.ended {
            return Ok(Stop::Ended(matches!(v, Verdict::Matched)));
        }
        if self.at_breakpoint {
            self.replayer.step_past_breakpoint();
            self.at_breakpoint = false;
        }
        let start = self.replayer.icount();
        let target = match self.resume {
            Resume::Step => start + 1,
            _ => u64::MAX,
        };
        loop {
            let icount = self.replayer.icount();
            let due = self.timeline.next_due().max(icount + 1);
            let mut to = target.min(due);
            // Output already shown before a step back is not shown again.
            let quiet = icount < self.high_water;
            if quiet {
                to = to.min(self.high_water);
            }
            let console = if quiet {
                self.replayer.take_console()
            } else {
                None
            };
            let advance = self
                .replayer
                .advance(&mut self.run, to, &self.bar, interrupted);
            if quiet {
                self.replayer.set_console(console);
            }
            let advance = advance.map_err(|e| e.to_string())?;
            let now = self.replayer.icount();
            self.high_water = self.high_water.max(now);
            match advance {
                Advance::Reached => {
                    if now >= self.timeline.next_due() {
                        self.timeline.take(&mut self.replayer);
                    }
                    if now >= target {
                        return Ok(Stop::Stepped);
                    }
                }
                Advance::Breakpoint(_) => {
                    self.at_breakpoint = true;
                    return Ok(if self.resume == Resume::Step && now > start {
                        Stop::Stepped
                    } else {
                        Stop::Breakpoint
                    });
                }
                Advance::Interrupted => return Ok(Stop::Interrupted),
                Advance::Watch(hit) => return Ok(Stop::Watch(hit)),
                Advance::Ended(v) => {
                    let matched = matches!(v, Verdict::Matched);
                    if let Verdict::Diverged(d) = &v {
                        eprintln!(
                            "krr: the replay diverged at event {} (instruction {}, RIP {:#x}{}): {}",
                            d.event_index, d.icount, d.rip, d.function, d.what
                        );
                    }
                    self.ended = Some(v);
                    return Ok(Stop::Ended(matched));
                }
            }
        }
    }

    /// Run forward to instruction `n` through breakpoints and watchpoints, quietly, telling
    /// `pause` of each (at the instruction count where it paused); false if the replay ended
    /// first.
    fn forward_to(&mut self, n: u64, pause: &mut dyn FnMut(u64, &Advance)) -> Result<bool, String> {
        let console = self.replayer.take_console();
        let result = (|| {
            while self.replayer.icount() < n {
                if self.at_breakpoint {
                    self.replayer.step_past_breakpoint();
                    self.at_breakpoint = false;
                }
                let advance = self
                    .replayer
                    .advance(&mut self.run, n, &self.bar, &mut || false)
                    .map_err(|e| e.to_string())?;
                match advance {
                    Advance::Breakpoint(_) => self.at_breakpoint = true,
                    Advance::Ended(v) => {
                        self.ended = Some(v);
                        return Ok(false);
                    }
                    Advance::Reached | Advance::Interrupted | Advance::Watch(_) => {}
                }
                pause(self.replayer.icount(), &advance);
            }
            Ok(true)
        })();
        self.replayer.set_console(console);
        result
    }

    /// Be at instruction `n` (backwards or forwards), as if the replay had stopped there.
    pub(super) fn seek(&mut self, n: u64) -> Result<(), String> {
        // Backwards, or far enough forwards that a snapshot saves replaying.
        let now = self.replayer.icount();
        if n < now || self.timeline.latest_at_or_before(n) > now {
            self.timeline.restore_before(&mut self.replayer, n);
            self.ended = None;
            self.at_breakpoint = false;
        }
        if n > self.high_water {
            // New ground: take snapshots on the way, as a forward run does.
            while self.replayer.icount() < n && self.ended.is_none() {
                let step = self.timeline.next_due().min(n);
                self.forward_to(step, &mut |_, _| {})?;
                self.high_water = self.high_water.max(self.replayer.icount());
                if self.replayer.icount() >= self.timeline.next_due() {
                    self.timeline.take(&mut self.replayer);
                }
            }
        } else {
            self.forward_to(n, &mut |_, _| {})?;
        }
        // Landing on a breakpoint: the next run executes that instruction first.
        let rip = self.replayer.core.cpu().rip;
        self.at_breakpoint = self.breaks.contains(&rip) || self.fixed_breaks.contains(&rip);
        if self.ended.is_some() {
            return Err(format!(
                "the replay ended at instruction {}",
                self.replayer.icount()
            ));
        }
        Ok(())
    }

    fn reverse_step(&mut self) -> Result<Stop, String> {
        let now = self.replayer.icount();
        if now <= self.timeline.start() {
            return Ok(Stop::HistoryStart);
        }
        self.seek(now - 1)?;
        Ok(Stop::Stepped)
    }

    /// Back to the latest breakpoint arrival or watchpoint hit before the current
    /// instruction, or to the start of history.
    fn reverse_continue(&mut self) -> Result<Stop, String> {
        let now = self.replayer.icount();
        let mut upper = now;
        loop {
            if upper <= self.timeline.start() {
                self.seek(self.timeline.start())?;
                return Ok(Stop::HistoryStart);
            }
            let from = self.timeline.restore_before(&mut self.replayer, upper - 1);
            self.ended = None;
            self.at_breakpoint = false;
            // Every arrival at a breakpoint or watchpoint in [from, upper): the last one
            // before `now` is the answer.
            let mut last = None;
            self.forward_to(upper, &mut |at, advance| match advance {
                Advance::Breakpoint(_) if at < now => last = Some((at, None)),
                // Backwards, a watchpoint stops before the instruction that made the access
                // (the value as it was), as gdb expects of reverse execution.
                Advance::Watch(hit) if at - 1 < now => last = Some((at - 1, Some(*hit))),
                _ => {}
            })?;
            match last {
                Some((n, None)) => {
                    self.seek(n)?;
                    self.at_breakpoint = true;
                    return Ok(Stop::Breakpoint);
                }
                Some((n, Some(hit))) => {
                    self.seek(n)?;
                    return Ok(Stop::Watch(hit));
                }
                None => {}
            }
            upper = from;
        }
    }

    /// `monitor goto N`.
    pub(super) fn go_to(&mut self, n: u64) -> Result<(), String> {
        if n < self.timeline.start() {
            return Err(format!(
                "instruction {n} is before the start of history (instruction {}): the snapshots outgrew --snapshot-mem",
                self.timeline.start()
            ));
        }
        self.seek(n)
    }
}
