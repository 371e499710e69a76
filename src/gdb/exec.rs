//! Moving the replay as gdb asks: forwards (taking the timeline's snapshots on the way, and
//! keeping the console quiet over stretches already shown) and backwards (restore the latest
//! snapshot before the goal, replay forward to it).

use super::session::{Pause, Session};
use super::{GdbTarget, Resume, Stop};

impl<S: Session> GdbTarget<'_, S> {
    /// Run as gdb asked: one instruction, until a breakpoint, the end or `interrupted`, or
    /// the same backwards.
    pub(super) fn go(&mut self, interrupted: &mut dyn FnMut() -> bool) -> Result<Stop, String> {
        match self.resume {
            Resume::ReverseStep => return self.reverse_step(),
            Resume::ReverseContinue => return self.reverse_continue(),
            Resume::Step | Resume::Continue => {}
        }
        if let Some(matched) = self.ended {
            return Ok(Stop::Ended(matched));
        }
        if self.at_breakpoint {
            self.session.step_past_breakpoint();
            self.at_breakpoint = false;
        }
        let start = self.session.position();
        let target = match self.resume {
            Resume::Step => start + 1,
            _ => u64::MAX,
        };
        loop {
            let icount = self.session.position();
            let due = self.timeline.next_due().max(icount + 1);
            let mut to = target.min(due);
            // Output already shown before a step back is not shown again.
            let quiet = icount < self.high_water;
            if quiet {
                to = to.min(self.high_water);
            }
            self.session.set_quiet(quiet);
            let pause = self.session.advance(to, interrupted);
            self.session.set_quiet(false);
            let pause = pause?;
            let now = self.session.position();
            self.high_water = self.high_water.max(now);
            match pause {
                Pause::Reached => {
                    if now >= self.timeline.next_due() {
                        self.timeline.take(self.session);
                    }
                    if now >= target {
                        return Ok(Stop::Stepped);
                    }
                }
                Pause::Breakpoint => {
                    self.at_breakpoint = true;
                    return Ok(if self.resume == Resume::Step && now > start {
                        Stop::Stepped
                    } else {
                        Stop::Breakpoint
                    });
                }
                Pause::Interrupted => return Ok(Stop::Interrupted),
                Pause::Watch(hit) => return Ok(Stop::Watch(hit)),
                Pause::Ended(matched) => {
                    self.ended = Some(matched);
                    return Ok(Stop::Ended(matched));
                }
            }
        }
    }

    /// Run forward to instruction `n` through breakpoints and watchpoints, quietly, telling
    /// `pause` of each (at the instruction count where it paused); false if the replay ended
    /// first.
    fn forward_to(&mut self, n: u64, pause: &mut dyn FnMut(u64, &Pause)) -> Result<bool, String> {
        self.session.set_quiet(true);
        let result = (|| {
            while self.session.position() < n {
                if self.at_breakpoint {
                    self.session.step_past_breakpoint();
                    self.at_breakpoint = false;
                }
                let advance = self.session.advance(n, &mut || false)?;
                match advance {
                    Pause::Breakpoint => self.at_breakpoint = true,
                    Pause::Ended(matched) => {
                        self.ended = Some(matched);
                        return Ok(false);
                    }
                    Pause::Reached | Pause::Interrupted | Pause::Watch(_) => {}
                }
                pause(self.session.position(), &advance);
            }
            Ok(true)
        })();
        self.session.set_quiet(false);
        result
    }

    /// Be at instruction `n` (backwards or forwards), as if the replay had stopped there.
    pub(super) fn seek(&mut self, n: u64) -> Result<(), String> {
        // Backwards, or far enough forwards that a snapshot saves replaying.
        let now = self.session.position();
        if n < now || self.timeline.latest_at_or_before(n) > now {
            self.timeline.restore_before(self.session, n);
            self.ended = None;
            self.at_breakpoint = false;
        }
        if n > self.high_water {
            // New ground: take snapshots on the way, as a forward run does.
            while self.session.position() < n && self.ended.is_none() {
                let step = self.timeline.next_due().min(n);
                self.forward_to(step, &mut |_, _| {})?;
                self.high_water = self.high_water.max(self.session.position());
                if self.session.position() >= self.timeline.next_due() {
                    self.timeline.take(self.session);
                }
            }
        } else {
            self.forward_to(n, &mut |_, _| {})?;
        }
        // Landing on a breakpoint: the next run executes that instruction first.
        let rip = self.session.core().cpu().rip;
        self.at_breakpoint = self.breaks.contains(&rip) || self.fixed_breaks.contains(&rip);
        if self.ended.is_some() {
            return Err(format!(
                "the replay ended at instruction {}",
                self.session.position()
            ));
        }
        Ok(())
    }

    fn reverse_step(&mut self) -> Result<Stop, String> {
        let now = self.session.position();
        if now <= self.timeline.start() {
            return Ok(Stop::HistoryStart);
        }
        self.seek(now - 1)?;
        Ok(Stop::Stepped)
    }

    /// Back to the latest breakpoint arrival or watchpoint hit before the current
    /// instruction, or to the start of history.
    fn reverse_continue(&mut self) -> Result<Stop, String> {
        let now = self.session.position();
        let mut upper = now;
        loop {
            if upper <= self.timeline.start() {
                self.seek(self.timeline.start())?;
                return Ok(Stop::HistoryStart);
            }
            let from = self.timeline.restore_before(self.session, upper - 1);
            self.ended = None;
            self.at_breakpoint = false;
            // Every arrival at a breakpoint or watchpoint in [from, upper): the last one
            // before `now` is the answer.
            let mut last = None;
            self.forward_to(upper, &mut |at, advance| match advance {
                Pause::Breakpoint if at < now => last = Some((at, None)),
                // Backwards, a watchpoint stops before the instruction that made the access
                // (the value as it was), as gdb expects of reverse execution.
                Pause::Watch(hit) if at - 1 < now => last = Some((at - 1, Some(*hit))),
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
