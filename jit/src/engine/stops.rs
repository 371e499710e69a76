//! Stop addresses: linear addresses where [`Engine::run`] returns [`Exit::Stop`] before the
//! instruction there executes, so a driver can act first (KRR's trap points, debugger
//! breakpoints). They cost nothing elsewhere: blocks are cut so that a stop address only ever
//! starts one, and such a block is never compiled, chained to or found by compiled code's
//! jump-cache probe, so every arrival there passes through the dispatcher, which checks one
//! flag of the block it looked up. Changing the set discards every translation (rare: set
//! at start-up, or when a debugger adds a breakpoint).

use super::{Engine, Exit};
use krr_runtime::CpuState;
use std::collections::HashSet;

#[derive(Default)]
pub(super) struct Stops {
    pub(super) addrs: HashSet<u64>,
    /// The stop the driver has handled: (RIP, instruction count) where execution goes on
    /// without stopping again.
    resume: Option<(u64, u64)>,
    /// Stop before any instruction at CPL3 ([`Engine::set_stop_at_user_mode`]).
    pub(super) user_mode: bool,
}

impl Stops {
    /// At a stop address: stop, unless the driver resumed exactly here.
    fn should_stop(&mut self, cpu: &CpuState) -> bool {
        if self.resume == Some((cpu.rip, cpu.icount)) {
            self.resume = None;
            false
        } else {
            true
        }
    }
}

impl Engine {
    /// Stop before executing any instruction at one of `addrs` (linear addresses, in every
    /// mode). Replaces the previous set and discards every translation.
    pub fn set_stop_addresses(&mut self, addrs: impl IntoIterator<Item = u64>) {
        self.stops.addrs = addrs.into_iter().collect();
        self.stops.resume = None;
        for id in self.entries.ids() {
            self.invalidate(id);
        }
    }

    /// Stop with [`Exit::UserMode`] whenever execution is about to continue at CPL3 (KRR
    /// recordings replay the kernel only: the driver substitutes what user mode did).
    /// Reaching CPL3 always passes through the dispatcher (IRETQ, SYSRET and event delivery
    /// end blocks), so this costs one flag test per dispatch.
    pub fn set_stop_at_user_mode(&mut self, on: bool) {
        self.stops.user_mode = on;
    }

    /// The stop addresses in force.
    pub fn stop_addresses(&self) -> &HashSet<u64> {
        &self.stops.addrs
    }

    /// After an [`Exit::Stop`]: the next run executes the instruction at the stop (RIP and
    /// instruction count as now) instead of stopping there again.
    pub fn resume_past_stop(&mut self, cpu: &CpuState) {
        self.stops.resume = Some((cpu.rip, cpu.icount));
    }

    /// Forget a pending [`Engine::resume_past_stop`] (the state it was for is gone, e.g. a
    /// debugger restored an earlier snapshot).
    pub fn forget_resume(&mut self) {
        self.stops.resume = None;
    }

    /// The pending [`Engine::resume_past_stop`], (RIP, instruction count), for a snapshot of
    /// the replay; [`Engine::set_pending_resume`] puts it back.
    pub fn pending_resume(&self) -> Option<(u64, u64)> {
        self.stops.resume
    }

    pub fn set_pending_resume(&mut self, resume: Option<(u64, u64)>) {
        self.stops.resume = resume;
    }

    /// The dispatcher's check, for a block that starts at a stop address.
    pub(super) fn stop_here(&mut self, cpu: &CpuState) -> Option<Exit> {
        self.stops
            .should_stop(cpu)
            .then_some(Exit::Stop { rip: cpu.rip })
    }

    /// The checked mode's check (it runs instruction by instruction, without block flags).
    pub(super) fn stop_at_rip(&mut self, cpu: &CpuState) -> Option<Exit> {
        if self.stops.user_mode && cpu.cpl() == 3 {
            return Some(Exit::UserMode);
        }
        if self.stops.addrs.contains(&cpu.rip) {
            self.stop_here(cpu)
        } else {
            None
        }
    }
}
