//! The local APIC timer's counting, in closed form over virtual time.
//!
//! The timer is clocked by the APIC bus clock, which here runs at 1 GHz: one clock per
//! nanosecond of the machine's virtual time, before the divider. The divider's phase starts
//! at the initial-count write (the first decrement comes `divisor` ns after it). The counter
//! is never stepped: a run is (time of a tick boundary, count at that time), and the current
//! count, the next expiry and the number of missed periods are computed exactly from it.
//!
//! TSC-deadline mode compares against the TSC, which also counts one per nanosecond here.

use super::regs::{LVT_TIMER_MODE_SHIFT, TIMER_DIVIDE_WRITABLE};

/// The LVT timer mode (bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerMode {
    /// 00: count down once from the initial count.
    OneShot,
    /// 01: count down, reload from the initial count at zero.
    Periodic,
    /// 10: fire when the TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
    /// 11: reserved; counts as one-shot here.
    Reserved,
}

impl TimerMode {
    /// The mode selected by an LVT timer value.
    pub fn from_lvt(lvt: u32) -> TimerMode {
        match (lvt >> LVT_TIMER_MODE_SHIFT) & 3 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    fn periodic(self) -> bool {
        self == TimerMode::Periodic
    }
}

/// A count-down in progress: the counter held `count` (at least 1) at `base_ns`, a tick
/// boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    base_ns: u64,
    count: u32,
}

/// The timer's registers and counting state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Initial count register.
    initial: u32,
    /// Divide configuration register (bits 3, 1, 0).
    divide: u32,
    /// The count-down, if the counter is running (one-shot and periodic modes).
    run: Option<Run>,
    /// IA32_TSC_DEADLINE (TSC-deadline mode; 0 = disarmed).
    deadline: u64,
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer {
    /// Reset state: stopped, divide by 2, no deadline.
    pub fn new() -> Self {
        Timer {
            initial: 0,
            divide: 0,
            run: None,
            deadline: 0,
        }
    }

    pub fn initial(&self) -> u32 {
        self.initial
    }

    pub fn divide(&self) -> u32 {
        self.divide
    }

    /// log2 of the divisor: 000 = 2, 001 = 4, 010 = 8, 011 = 16, 100 = 32, 101 = 64,
    /// 110 = 128, 111 = 1 (the value is bits 3, 1, 0).
    fn shift(&self) -> u32 {
        let code = ((self.divide >> 1) & 4) | (self.divide & 3);
        (code + 1) & 7
    }

    /// A write of the initial-count register: restarts the count-down (0 stops the timer).
    /// Ignored in TSC-deadline mode.
    pub fn write_initial(&mut self, value: u32, mode: TimerMode, now_ns: u64) {
        if mode == TimerMode::TscDeadline {
            return;
        }
        self.initial = value;
        self.run = (value != 0).then_some(Run {
            base_ns: now_ns,
            count: value,
        });
    }

    /// A write of the divide configuration register. A running count keeps its value and
    /// continues with the new divisor from the last completed tick.
    pub fn write_divide(&mut self, value: u32, now_ns: u64) {
        let shift = self.shift();
        if let Some(run) = &mut self.run {
            // The caller has expired due runs, so fewer than `count` ticks have passed.
            let ticks = (now_ns.saturating_sub(run.base_ns) >> shift).min(u64::from(run.count) - 1);
            run.base_ns += ticks << shift;
            run.count -= ticks as u32;
        }
        self.divide = value & TIMER_DIVIDE_WRITABLE;
    }

    /// The current-count register.
    pub fn current(&self, mode: TimerMode, now_ns: u64) -> u32 {
        if mode == TimerMode::TscDeadline {
            return 0;
        }
        let Some(run) = self.run else { return 0 };
        let ticks = now_ns.saturating_sub(run.base_ns) >> self.shift();
        if ticks < u64::from(run.count) {
            run.count - ticks as u32
        } else if mode.periodic() && self.initial != 0 {
            // Reloaded at zero: the reload is instantaneous, so zero is never read.
            let into_period = (ticks - u64::from(run.count)) % u64::from(self.initial);
            self.initial - into_period as u32
        } else {
            0
        }
    }

    /// When the timer next expires, in ns (TSC-deadline: the deadline).
    pub fn next_expiry(&self, mode: TimerMode) -> Option<u64> {
        if mode == TimerMode::TscDeadline {
            return (self.deadline != 0).then_some(self.deadline);
        }
        let run = self.run?;
        Some(run.base_ns + (u64::from(run.count) << self.shift()))
    }

    /// Expire the timer if it is due at `now_ns`. Returns whether it expired (once or more:
    /// missed periods merge into one interrupt, as the IRR bit would). A periodic timer
    /// reloads at its exact expiry times, so lateness never shifts later periods.
    pub fn expire(&mut self, mode: TimerMode, now_ns: u64) -> bool {
        let Some(at) = self.next_expiry(mode) else {
            return false;
        };
        if at > now_ns {
            return false;
        }
        match mode {
            TimerMode::TscDeadline => self.deadline = 0,
            TimerMode::Periodic if self.initial != 0 => {
                let period = u64::from(self.initial) << self.shift();
                let last = at + (now_ns - at) / period * period;
                self.run = Some(Run {
                    base_ns: last,
                    count: self.initial,
                });
            }
            _ => self.run = None,
        }
        true
    }

    /// The LVT timer mode changed from `old` to `new`: a transition into or out of
    /// TSC-deadline mode disarms the timer (initial count and deadline become 0). One-shot
    /// and periodic switch without disturbing the count.
    pub fn mode_changed(&mut self, old: TimerMode, new: TimerMode) {
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            self.initial = 0;
            self.run = None;
            self.deadline = 0;
        }
    }

    /// IA32_TSC_DEADLINE as RDMSR sees it: 0 outside TSC-deadline mode.
    pub fn deadline(&self, mode: TimerMode) -> u64 {
        if mode == TimerMode::TscDeadline {
            self.deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: ignored outside TSC-deadline mode; 0 disarms. Returns true
    /// when the deadline is already reached (the timer fires now and disarms).
    pub fn write_deadline(&mut self, mode: TimerMode, value: u64, now_ns: u64) -> bool {
        if mode != TimerMode::TscDeadline {
            return false;
        }
        if value != 0 && value <= now_ns {
            self.deadline = 0;
            return true;
        }
        self.deadline = value;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIV_16: u32 = 0b0011;
    const DIV_1: u32 = 0b1011;

    #[test]
    fn divide_encodings() {
        let mut t = Timer::new();
        let expect = [(0b0000, 1), (0b0001, 2), (0b0010, 3), (0b0011, 4)];
        let expect_high = [(0b1000, 5), (0b1001, 6), (0b1010, 7), (0b1011, 0)];
        for (value, shift) in expect.into_iter().chain(expect_high) {
            t.write_divide(value, 0);
            assert_eq!(t.shift(), shift, "divide {value:#06b}");
        }
        t.write_divide(0xffff_fff4, 0);
        assert_eq!(t.divide(), 0, "bit 2 and bits above 3 are not stored");
    }

    #[test]
    fn one_shot_counts_and_stops() {
        let mut t = Timer::new();
        t.write_divide(DIV_16, 0);
        t.write_initial(10, TimerMode::OneShot, 1000);
        assert_eq!(t.current(TimerMode::OneShot, 1000), 10);
        assert_eq!(t.current(TimerMode::OneShot, 1015), 10);
        assert_eq!(t.current(TimerMode::OneShot, 1016), 9);
        assert_eq!(t.next_expiry(TimerMode::OneShot), Some(1160));
        assert!(!t.expire(TimerMode::OneShot, 1159));
        assert_eq!(t.current(TimerMode::OneShot, 1159), 1);
        assert!(t.expire(TimerMode::OneShot, 1160));
        assert_eq!(t.current(TimerMode::OneShot, 1160), 0);
        assert_eq!(t.next_expiry(TimerMode::OneShot), None);
        assert_eq!(
            t.initial(),
            10,
            "the initial count register keeps its value"
        );
    }

    #[test]
    fn periodic_late_expiry_keeps_phase() {
        let mut t = Timer::new();
        t.write_divide(DIV_1, 0);
        t.write_initial(100, TimerMode::Periodic, 0);
        assert!(t.expire(TimerMode::Periodic, 350));
        assert_eq!(t.next_expiry(TimerMode::Periodic), Some(400));
        assert_eq!(t.current(TimerMode::Periodic, 350), 50);
    }

    #[test]
    fn divide_change_mid_count_keeps_count() {
        let mut t = Timer::new();
        t.write_divide(DIV_1, 0);
        t.write_initial(100, TimerMode::OneShot, 0);
        t.write_divide(DIV_16, 40);
        assert_eq!(t.current(TimerMode::OneShot, 40), 60);
        assert_eq!(t.current(TimerMode::OneShot, 56), 59);
        assert_eq!(t.next_expiry(TimerMode::OneShot), Some(40 + 60 * 16));
    }
}
