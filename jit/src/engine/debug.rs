//! The dispatcher's checked mode: debug exceptions (#DB) from RFLAGS.TF single-stepping and
//! the DR0-DR3 breakpoints, and the resume flag RF.
//!
//! Whenever TF or RF is set, a breakpoint is enabled in DR7, or a #DB trap is pending, the
//! dispatcher runs one instruction at a time in the interpreter ([`Engine::debug_visit`])
//! instead of blocks; otherwise nothing here runs, and neither blocks nor compiled code check
//! anything per instruction. Everything that can enter the mode (POPF, IRETQ, SYSRET, MOV DR,
//! event delivery) returns to the dispatcher right after itself, so the switch happens at
//! the first boundary where it matters, in every tier.
//!
//! At each instruction boundary, in the order of SDM Vol. 3A 6.9 ("Priority Among Concurrent
//! Events"):
//! 1. a #DB trap due from the previous instruction (single-step, data breakpoint) is delivered,
//!    unless the boundary follows MOV SS (the trap then waits one more instruction);
//! 2. the instruction budget and the driver's requests are honoured (external interrupts are
//!    the driver's business, after the trap: `Engine::interrupts_enabled` says no while one is
//!    pending);
//! 3. an instruction breakpoint at RIP raises a #DB fault, unless RF is set or the boundary
//!    follows MOV SS;
//! 4. RF is cleared and the instruction runs; if it retires, a #DB trap follows it for TF
//!    (TF as it was before the instruction, so the instruction that sets TF is not trapped
//!    and one that clears it is; SYSCALL and SYSRET use TF as they leave it, as hardware
//!    does) and for the data breakpoints its accesses hit (the MMU's checked path records
//!    them in `cpu.db_hits`). An instruction that raises an exception or interrupt gets no
//!    trap (the delivery clears TF; a pending trap from before is delivered afterwards, at
//!    the handler's first instruction).
//!
//! DR6 gets B0-B3 of the breakpoints that caused the #DB (replacing the old ones) and BS for a
//! single step; DR7.GD is cleared for the handler.
//!
//! Not modelled: a REP string instruction is one step (the trap comes after its last
//! iteration, not after each one), HLT with TF set traps at once instead of halting first,
//! I/O breakpoints (DR7 R/W = 10 with CR4.DE) never trigger, and breakpoints on the
//! CPU's own implicit accesses (descriptor tables, interrupt frames) are not seen.

use super::{Engine, Exit};
use iced_x86::Mnemonic;
use krr_runtime::debugreg::{dr6, dr7};
use krr_runtime::{rflags, vector, CpuState, ExceptionRecord};

/// Must this boundary be handled by [`Engine::debug_visit`]?
#[inline]
pub(super) fn checked_mode(cpu: &CpuState) -> bool {
    cpu.rflags & (rflags::TF | rflags::RF) != 0
        || cpu.dr[7] & dr7::ENABLE_MASK != 0
        || cpu.pending_db != 0
}

/// Raise #DB with DR6 bits `bits` (B0-B3, BS): a trap (RIP past the retired instruction) or a
/// fault (an instruction breakpoint, RIP at the instruction).
fn raise_db(cpu: &mut CpuState, bits: u64, trap: bool) -> Exit {
    cpu.dr[6] = (cpu.dr[6] & !dr6::B_MASK) | bits | dr6::FIXED1;
    cpu.dr[7] &= !dr7::GD;
    cpu.exec.exception = ExceptionRecord::fault(vector::DB, None);
    Exit::Exception {
        trap,
        unimplemented: false,
    }
}

impl Engine {
    /// One dispatcher visit in the checked mode: at most one instruction, and the #DB
    /// exceptions around it (see the module documentation). `None`: go on dispatching.
    pub(super) fn debug_visit(&mut self, cpu: &mut CpuState) -> Option<Exit> {
        self.stats.checked_visits += 1;
        let inhibited = cpu.db_inhibit_at == cpu.icount;
        if cpu.pending_db != 0 && !inhibited {
            let bits = std::mem::take(&mut cpu.pending_db);
            return Some(raise_db(cpu, bits, true));
        }
        if cpu.icount >= cpu.exec.icount_limit {
            return Some(Exit::Budget);
        }
        self.sync_translations(cpu);
        if cpu.exec.has_bus()
            && krr_runtime::bus::with_bus(cpu, |bus, cpu| bus.wants_exit(cpu)).unwrap_or(false)
        {
            return Some(Exit::BusRequest);
        }
        if cpu.rflags & rflags::RF == 0 && !inhibited && cpu.dr[7] & dr7::ENABLE_MASK != 0 {
            let hits = krr_runtime::debugreg::exec_hits(cpu, cpu.rip);
            if hits != 0 {
                return Some(raise_db(cpu, hits, false));
            }
        }
        if let Some(exit) = self.stop_at_rip(cpu) {
            return Some(exit);
        }
        let id = match self.lookup(cpu) {
            Ok(id) => id,
            Err(exit) => return Some(exit),
        };
        let mnemonic = self.entries[id].block.insns[0].mnemonic();
        let tf_before = cpu.rflags & rflags::TF != 0;
        let rf = cpu.rflags & rflags::RF;
        cpu.rflags &= !rflags::RF;
        cpu.exec.db_hits = 0;
        let next = cpu.icount + 1;
        let limit = std::mem::replace(&mut cpu.exec.icount_limit, next);
        let exit = self.interpret_block(cpu, id);
        cpu.exec.icount_limit = limit;
        if cpu.exec.smc_count != 0 {
            self.handle_code_writes(cpu);
        }
        let hits = std::mem::take(&mut cpu.exec.db_hits);
        match exit {
            // Retired (`Budget`: the block has more instructions than the one allowed).
            None | Some(Exit::Budget) | Some(Exit::Halt) => {}
            Some(Exit::Unbacked { .. }) => {
                // Nothing ran.
                cpu.rflags |= rf;
                return exit;
            }
            // An exception or software interrupt: no trap for this instruction. Its delivery
            // starts a new context: a trap held by a MOV SS shadow comes before the handler's
            // first instruction.
            Some(other) => {
                cpu.db_inhibit_at = u64::MAX;
                return Some(other);
            }
        }
        // SYSCALL and SYSRET trap by TF as they leave it (SYSRET setting TF also leaves a
        // pending trap, for when it ran outside this mode).
        let stepped = match mnemonic {
            Mnemonic::Syscall | Mnemonic::Sysret | Mnemonic::Sysretq => {
                cpu.rflags & rflags::TF != 0
            }
            _ => tf_before,
        };
        let bits = hits | if stepped { dr6::BS } else { 0 } | cpu.pending_db;
        if cpu.db_inhibit_at == cpu.icount {
            // MOV SS: the trap waits until the next instruction has completed.
            cpu.pending_db = bits;
            return exit.filter(|e| *e == Exit::Halt);
        }
        cpu.pending_db = 0;
        if bits != 0 {
            return Some(raise_db(cpu, bits, true));
        }
        exit.filter(|e| *e == Exit::Halt)
    }
}
