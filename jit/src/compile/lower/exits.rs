//! The ways out of a compiled block: chained exits to the next block (through an exit slot
//! or the jump cache, as a tail call), returns to the dispatcher, the cold fault exits that
//! restore the state as of an instruction's start, and the self-loop back edge.

use super::Lower;
use crate::compile::reloc::Sym;
use crate::compile::{state_flags, PASSED_GPRS, PASSED_MASK};
use crate::jump_cache::{jump_slot, JumpEntry, JUMP_CACHE};
use crate::sem::{Builder, FlagState, Flow};
use cranelift_codegen::ir::{condcodes::IntCC, types, BlockArg, InstBuilder, Value};
use krr_runtime::{offsets, CpuState, ExceptionRecord, Outcome};
use std::mem::offset_of;

/// A fault exit whose body is still to be emitted (at the end of the function): the state
/// to restore when the instruction `index` (at `rip`) faults.
pub(super) struct PendingExit {
    block: cranelift_codegen::ir::Block,
    snapshot: Vec<(usize, Value)>,
    flags: Option<FlagState<Value>>,
    rip: u64,
    index: u32,
}

impl Lower<'_> {
    /// Compile a block that branches to itself as a real loop: the registers in `regs` (the
    /// ones it uses) stay in host registers across iterations and only the budget is checked
    /// on the back edge. Any other register it writes after all is stored on the back edge.
    pub(super) fn begin_self_loop(&mut self, start: u64, regs: u16) {
        for r in 0..16 {
            if regs & (1 << r) != 0 && self.loaded & (1 << r) == 0 {
                let v = self.state_load(offsets::gpr(r));
                self.fb.def_var(self.regs[r], v);
            }
        }
        let header = self.fb.create_block();
        let icount = self.fb.append_block_param(header, types::I64);
        let entry_icount = self.icount;
        self.fb.ins().jump(header, &[BlockArg::Value(entry_icount)]);
        self.fb.switch_to_block(header);
        self.icount = icount;
        // Every kept register may differ from the state after an iteration: all are dirty.
        self.loaded = regs;
        self.dirty = regs;
        self.loop_regs = regs;
        self.flags = None;
        self.flags_dirty = false;
        self.loop_header = Some((header, start));
    }

    /// The back edge of a self-loop, or an ordinary chained exit.
    fn exit_to(&mut self, target: u64, retired: u32, slot: u8) {
        if let Some((header, start)) = self.loop_header {
            if target == start {
                let next = self.fb.ins().iadd_imm_s(self.icount, retired as i64);
                // The header starts with the registers it does not keep in the state.
                self.flush_regs_except(self.loop_regs);
                // The header starts with flags in the state.
                if self.flags_dirty {
                    if let Some(f) = self.flags {
                        self.store_flags_state(&f);
                    }
                }
                let limit = self.state_load(offsets::ICOUNT_LIMIT);
                let end = self.fb.ins().iadd_imm_s(next, retired as i64);
                let fits = self
                    .fb
                    .ins()
                    .icmp(IntCC::UnsignedLessThanOrEqual, end, limit);
                let out = self.fb.create_block();
                self.fb
                    .ins()
                    .brif(fits, header, &[BlockArg::Value(next)], out, &[]);
                self.fb.switch_to_block(out);
                self.flush_regs();
                let rip = self.fb.ins().iconst(types::I64, start as i64);
                self.state_store(offsets::RIP, rip);
                self.state_store(offsets::ICOUNT, next);
                let z = self.fb.ins().iconst(types::I64, 0);
                self.state_store(offsets::EXIT_SLOT, z);
                self.return_outcome(Outcome::Continue);
                return;
            }
        }
        self.flush_except(PASSED_MASK);
        self.chain_exit(target, retired, slot);
    }

    /// Leave compiled code, returning `outcome` to the dispatcher.
    pub(super) fn return_outcome(&mut self, outcome: Outcome) {
        let code = self.fb.ins().iconst(types::I64, outcome.as_u64() as i64);
        self.fb.ins().return_(&[code]);
    }

    /// The cold block that leaves with the state as of the current instruction's start. Its
    /// body is emitted at the end of the function (Cranelift wants the current block filled
    /// before switching away).
    pub(super) fn fault_exit(&mut self) -> cranelift_codegen::ir::Block {
        if let Some(b) = self.ctx.fault_exit {
            return b;
        }
        let b = self.fb.create_block();
        self.fb.set_cold_block(b);
        self.pending_exits.push(PendingExit {
            block: b,
            snapshot: self.ctx.snapshot.clone(),
            flags: if self.ctx.flags_dirty {
                self.ctx.flags
            } else {
                None
            },
            rip: self.insn.ip(),
            index: self.ctx.index,
        });
        self.ctx.fault_exit = Some(b);
        b
    }

    pub(super) fn emit_pending_exits(&mut self) {
        for e in std::mem::take(&mut self.pending_exits) {
            self.fb.switch_to_block(e.block);
            for &(r, v) in &e.snapshot {
                self.state_store(offsets::gpr(r), v);
            }
            if let Some(f) = e.flags {
                self.store_flags_state(&f);
            }
            let rip = self.fb.ins().iconst(types::I64, e.rip as i64);
            self.state_store(offsets::RIP, rip);
            self.store_icount(e.index);
            self.return_outcome(Outcome::Fault);
        }
    }

    pub(super) fn store_exception(&mut self, vector: u8, error_code: Option<u32>, software: bool) {
        let base = offset_of!(CpuState, exec.exception) as i32;
        // `software` is stored separately below.
        let rec = ExceptionRecord::fault(vector, error_code);
        let v = self.fb.ins().iconst(types::I8, rec.vector as i64);
        self.fb.ins().store(
            state_flags(),
            v,
            self.cpu,
            base + offset_of!(ExceptionRecord, vector) as i32,
        );
        let sw = self.fb.ins().iconst(types::I8, software as i64);
        self.fb.ins().store(
            state_flags(),
            sw,
            self.cpu,
            base + offset_of!(ExceptionRecord, software) as i32,
        );
        let h = self.fb.ins().iconst(types::I8, rec.has_error_code as i64);
        self.fb.ins().store(
            state_flags(),
            h,
            self.cpu,
            base + offset_of!(ExceptionRecord, has_error_code) as i32,
        );
        let e = self.fb.ins().iconst(types::I32, rec.error_code as i64);
        self.fb.ins().store(
            state_flags(),
            e,
            self.cpu,
            base + offset_of!(ExceptionRecord, error_code) as i32,
        );
        let z = self.fb.ins().iconst(types::I64, 0);
        self.fb.ins().store(
            state_flags(),
            z,
            self.cpu,
            base + offset_of!(ExceptionRecord, address) as i32,
        );
    }

    /// Continue in a fresh block after an unconditional exit, so nothing more lands in a
    /// filled block.
    pub(super) fn dead_end(&mut self) {
        let b = self.fb.create_block();
        self.fb.switch_to_block(b);
        self.terminated = true;
    }

    pub(super) fn check_status_after_call(&mut self, status: Value) {
        let exit = self.fault_exit();
        let cont = self.fb.create_block();
        self.fb.ins().brif(status, exit, &[], cont, &[]);
        self.fb.switch_to_block(cont);
    }

    pub(super) fn emit_flow(&mut self, flow: Flow<Value>, cond: Option<Value>, retired: u32) {
        match flow {
            Flow::Jump(t) => {
                self.flush();
                self.state_store(offsets::RIP, t);
                self.store_icount(retired);
                let z = self.fb.ins().iconst(types::I64, 0);
                self.state_store(offsets::EXIT_SLOT, z);
                self.return_outcome(Outcome::Continue);
            }
            Flow::Indirect(t) => {
                self.flush_except(PASSED_MASK);
                self.lookup_exit(t, retired);
            }
            Flow::Direct(t) => self.exit_to(t, retired, 0),
            Flow::Branch { taken, not_taken } => {
                let c = cond.expect("a branch has a condition");
                let loops_back = self
                    .loop_header
                    .is_some_and(|(_, start)| taken == start || not_taken == start);
                if !loops_back {
                    // Both sides leave the block: write the registers and flags back once,
                    // before branching, instead of on each side.
                    self.flush_except(PASSED_MASK);
                    self.dirty &= PASSED_MASK;
                    self.flags_dirty = false;
                }
                let tb = self.fb.create_block();
                let nb = self.fb.create_block();
                self.fb.ins().brif(c, tb, &[], nb, &[]);
                // Both sides start from the same compile-time state.
                let (dirty, loaded, flags, flags_dirty) =
                    (self.dirty, self.loaded, self.flags, self.flags_dirty);
                self.fb.switch_to_block(tb);
                self.exit_to(taken, retired, 0);
                (self.dirty, self.loaded, self.flags, self.flags_dirty) =
                    (dirty, loaded, flags, flags_dirty);
                self.fb.switch_to_block(nb);
                self.exit_to(not_taken, retired, 1);
            }
        }
    }

    /// After an instruction that wrote memory: if it wrote a page holding translated code,
    /// leave (with that instruction retired) so the dispatcher invalidates stale blocks before
    /// the next instruction runs.
    pub(super) fn smc_check(&mut self, next_rip: u64, retired: u32) {
        let n = self.state_load(offsets::SMC_COUNT);
        let out = self.fb.create_block();
        let cont = self.fb.create_block();
        self.fb.ins().brif(n, out, &[], cont, &[]);
        self.fb.set_cold_block(out);
        self.fb.switch_to_block(out);
        let (dirty, loaded, flags, flags_dirty) =
            (self.dirty, self.loaded, self.flags, self.flags_dirty);
        self.flush();
        let rip = self.fb.ins().iconst(types::I64, next_rip as i64);
        self.state_store(offsets::RIP, rip);
        self.store_icount(retired);
        let z = self.fb.ins().iconst(types::I64, 0);
        self.state_store(offsets::EXIT_SLOT, z);
        self.return_outcome(Outcome::Continue);
        (self.dirty, self.loaded, self.flags, self.flags_dirty) =
            (dirty, loaded, flags, flags_dirty);
        self.fb.switch_to_block(cont);
    }

    /// Leave towards a constant target: tail-call it through its slot when linked, else
    /// return to the dispatcher with the slot's address so it can link it.
    fn chain_exit(&mut self, target: u64, retired: u32, slot: u8) {
        if target & !0xfff != self.block_start & !0xfff {
            // Links stay within a page (see the engine's `link`): look other pages up.
            let t = self.iconst(target);
            self.lookup_exit(t, retired);
            return;
        }
        let args = self.next_block_args(retired);
        let slot_addr = self.sym(Sym::Slot(slot), 0);
        let f = self.fb.ins().load(types::I64, state_flags(), slot_addr, 0);
        let linked = self.fb.ins().icmp_imm_u(IntCC::NotEqual, f, 0);
        self.tail_call_if(linked, f, &args);
        let rip = self.fb.ins().iconst(types::I64, target as i64);
        self.state_store(offsets::RIP, rip);
        self.state_store(offsets::ICOUNT, args[1]);
        self.state_store(offsets::EXIT_SLOT, slot_addr);
        let from = self.fb.ins().iconst(types::I64, self.block_start as i64);
        self.state_store(offsets::EXIT_FROM, from);
        self.return_outcome(Outcome::Continue);
    }

    /// The arguments of a tail call to the next block: the CPU, the instruction count after
    /// `retired` instructions of this block, the passed registers.
    fn next_block_args(&mut self, retired: u32) -> Vec<Value> {
        let icount = self.fb.ins().iadd_imm_s(self.icount, retired as i64);
        let mut args = vec![self.cpu, icount];
        for r in PASSED_GPRS {
            let v = self.get_gpr(r);
            args.push(v);
        }
        args
    }

    /// Tail-call `code` with `args` if `cond` holds (and, after a store, no translated code
    /// was written: the target may be stale); otherwise go on, in a new block, with the
    /// passed registers written back for a return to the dispatcher.
    fn tail_call_if(&mut self, cond: Value, code: Value, args: &[Value]) {
        let cond = if self.ctx.stored {
            let n = self.state_load(offsets::SMC_COUNT);
            let clean = self.fb.ins().icmp_imm_u(IntCC::Equal, n, 0);
            self.fb.ins().band(cond, clean)
        } else {
            cond
        };
        let go = self.fb.create_block();
        let back = self.fb.create_block();
        self.fb.ins().brif(cond, go, &[], back, &[]);
        self.fb.switch_to_block(go);
        self.fb
            .ins()
            .return_call_indirect(self.refs.block_sig, code, args);
        self.fb.switch_to_block(back);
        for (&r, &v) in PASSED_GPRS.iter().zip(&args[2..]) {
            if self.dirty & (1 << r) != 0 {
                self.state_store(offsets::gpr(r), v);
            }
        }
    }

    /// Leave towards `target` (registers but the passed ones already flushed): tail-call its
    /// code when the jump cache has it for this mode and the current mapping, else return to
    /// the dispatcher with RIP there.
    fn lookup_exit(&mut self, target: Value, retired: u32) {
        const _: () = assert!(std::mem::size_of::<JumpEntry>() == 32);
        let args = self.next_block_args(retired);
        let entry = match self.const_of(target) {
            Some(t) => self.sym(Sym::JumpCache, 32 * jump_slot(t) as i64),
            None => {
                let hi = self.fb.ins().ushr_imm_u(target, 12);
                let h = self.fb.ins().bxor(target, hi);
                let idx = self.fb.ins().band_imm_s(h, (JUMP_CACHE - 1) as i64);
                let off = self.fb.ins().ishl_imm_u(idx, 5);
                let base = self.sym(Sym::JumpCache, 0);
                self.fb.ins().iadd(off, base)
            }
        };
        let rip_off = offset_of!(JumpEntry, rip) as i32;
        let key_off = offset_of!(JumpEntry, key) as i32;
        let code_off = offset_of!(JumpEntry, code) as i32;
        let rip = self
            .fb
            .ins()
            .load(types::I64, state_flags(), entry, rip_off);
        let key = self.fb.ins().uload32(state_flags(), entry, key_off);
        let code = self
            .fb
            .ins()
            .load(types::I64, state_flags(), entry, code_off);
        let current = self.state_load(offsets::TLB_JUMP_KEY);
        let expected = self.fb.ins().bor_imm_u(current, self.block_mode as i64);
        let same_rip = self.fb.ins().icmp(IntCC::Equal, rip, target);
        let same_key = self.fb.ins().icmp(IntCC::Equal, key, expected);
        let compiled = self.fb.ins().icmp_imm_u(IntCC::NotEqual, code, 0);
        let hit = self.fb.ins().band(same_rip, same_key);
        let go_cond = self.fb.ins().band(hit, compiled);
        self.tail_call_if(go_cond, code, &args);
        self.state_store(offsets::RIP, target);
        self.state_store(offsets::ICOUNT, args[1]);
        let z = self.fb.ins().iconst(types::I64, 0);
        self.state_store(offsets::EXIT_SLOT, z);
        self.return_outcome(Outcome::Continue);
    }
}
