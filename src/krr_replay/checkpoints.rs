//! Checkpoint verification (krr-spec 6) against the recording's `checkpoint-<cpu>`, as more
//! of the replay driver.

use super::driver::{Driver, End};
use krr_runtime::arch::rflags;
use krr_runtime::gpr::RCX;

impl Driver {
    /// Compare the state with the checkpoints due at KRR count `count` (the state after
    /// `count` kernel instructions, as KVM sampled it when its counter overflowed): RIP, CR0
    /// and CR2-CR4 (not at `entry_SYSCALL_64`, whose first instructions switch CR3), the GPRs,
    /// segment selectors and bases; RFLAGS without OF and RF only counted, as KRR only logs
    /// it. A checkpoint at a REP string instruction with another RCX is skipped (KRR's rule).
    pub(super) fn verify_checkpoints(&mut self, count: u64) -> Option<End> {
        while let Some(cp) = self.checkpoints.get(self.next_checkpoint).copied() {
            if cp.inst_cnt > count {
                return None;
            }
            self.next_checkpoint += 1;
            if cp.inst_cnt < count {
                self.checkpoint_tally.missed += 1;
                continue;
            }
            let rip = self.core.cpu().rip;
            let mut bytes = [0u8; 15];
            let bitness = krr_jit::mode::code_bitness(self.core.cpu());
            let at_rep = self.core.fetch_code(rip, &mut bytes).is_ok_and(|n| {
                let insn = iced_x86::Decoder::with_ip(bitness, &bytes[..n], rip, 0).decode();
                krr_jit::sem::is_rep_string(&insn)
            });
            let c = self.core.cpu();
            if at_rep && c.gpr[RCX] != cp.regs[RCX] {
                self.checkpoint_tally.skipped += 1;
                continue;
            }
            let mut diffs = Vec::new();
            if c.rip != cp.rip {
                diffs.push(format!("RIP {:#x}, recorded {:#x}", c.rip, cp.rip));
            }
            for (i, (&now, &then)) in c.gpr.iter().zip(&cp.regs).enumerate() {
                if now != then {
                    diffs.push(format!(
                        "{} {now:#x}, recorded {then:#x}",
                        krr_runtime::gpr::NAMES[i]
                    ));
                }
            }
            let entry = self.traps.entry_syscall;
            let near_entry = entry.is_some_and(|e| c.rip == e || c.rip == e + 3);
            if !near_entry {
                for (i, now) in [(0, c.cr0), (2, c.cr2), (3, c.cr3), (4, c.cr4)] {
                    if now != cp.cr[i] {
                        diffs.push(format!("CR{i} {now:#x}, recorded {:#x}", cp.cr[i]));
                    }
                }
            }
            // QEMU's order ES CS SS DS FS GS is krr's.
            for (i, s) in cp.segs.iter().enumerate() {
                let now = c.seg[i];
                if now.selector as u32 != s.selector || now.base != s.base {
                    diffs.push(format!(
                        "segment {i} {:#x}/{:#x}, recorded {:#x}/{:#x}",
                        now.selector, now.base, s.selector, s.base
                    ));
                }
            }
            if diffs.is_empty() {
                self.checkpoint_tally.passed += 1;
                let ignore = rflags::OF | rflags::RF;
                if (c.rflags_value() ^ cp.eflags) & !ignore & !rflags::FIXED1 != 0 {
                    self.checkpoint_tally.flags_differ += 1;
                }
                continue;
            }
            let msg = format!(
                "checkpoint-{} record {} at count {} (RIP {:#x}): {}",
                self.current,
                self.next_checkpoint,
                cp.inst_cnt,
                cp.rip,
                diffs.join(", ")
            );
            return Some(self.diverge(None, msg));
        }
        None
    }
}
