//! Guest memory accesses in compiled code: an inline lookup in the software TLB (index, tag
//! compare against the page of the access's last byte with the address space's data key in
//! its low bits, add the host addend) on the fast path, and a cold call to the MMU's slow path, whose faults leave through the
//! instruction's fault exit, on a miss.

use super::Lower;
use crate::compile::state_flags;
use crate::sem::R;
use cranelift_codegen::ir::{condcodes::IntCC, types, BlockArg, InstBuilder, MemFlagsData, Value};
use krr_runtime::{mmu, offsets};

/// Flags of a guest memory access: the TLB said the address is mapped, so it cannot trap.
fn guest_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl Lower<'_> {
    /// Inline TLB lookup: returns (hit condition, entry address).
    fn tlb_probe(&mut self, addr: Value, size: u32, write: bool) -> (Value, Value) {
        // Entries are 16 bytes: the entry's byte offset is ((addr >> 12) & (N - 1)) << 4.
        const _: () = assert!(std::mem::size_of::<mmu::TlbEntry>() == 16);
        let idx = self.fb.ins().ushr_imm_u(addr, 8);
        let idx = self
            .fb
            .ins()
            .band_imm_s(idx, ((mmu::TLB_ENTRIES - 1) << 4) as i64);
        let base = offsets::TLB + mmu::tlb_set_offset(self.mmu_idx as usize, write) as i32;
        let entry = self.fb.ins().iadd(self.cpu, idx);
        let entry = self.fb.ins().iadd_imm_s(entry, base as i64);
        let tag = self.fb.ins().load(types::I64, state_flags(), entry, 0);
        let last = self.add_const(addr, size as i64 - 1);
        let page = self.fb.ins().band_imm_s(last, !0xfffi64);
        // The current address space's data key, in the low 12 bits of every tag it may use
        // (an OR with a memory operand).
        let key = self.state_load(offsets::TLB_DATA_KEY);
        let page = self.fb.ins().bor(page, key);
        let hit = self.fb.ins().icmp(IntCC::Equal, tag, page);
        (hit, entry)
    }

    /// `v + k`, folding into `v`'s own constant addend when `v` is `x + constant` (the
    /// backend's address-mode matching folds only one constant).
    fn add_const(&mut self, v: Value, k: i64) -> Value {
        if k == 0 {
            return v;
        }
        if let Some(inst) = self.fb.func.dfg.value_def(v).inst() {
            if self.fb.func.dfg.insts[inst].opcode() == cranelift_codegen::ir::Opcode::Iadd {
                let [x, y] = *self.fb.func.dfg.inst_args(inst) else {
                    unreachable!("iadd has two arguments")
                };
                for (base, c) in [(x, y), (y, x)] {
                    if let Some(&c) = self.consts.get(&c) {
                        return self.fb.ins().iadd_imm_s(base, (c as i64).wrapping_add(k));
                    }
                }
            }
        }
        self.fb.ins().iadd_imm_s(v, k)
    }

    /// Fill `slow`, the cold path of a store-like access that missed the TLB: the position
    /// synced, `f` called with (CPU, address, [value,] size | MMU index << 8), a fault leaving
    /// through the instruction's fault exit, else on to `join`, where code generation goes on.
    fn store_slow_path(
        &mut self,
        slow: cranelift_codegen::ir::Block,
        f: crate::compile::reloc::Sym,
        addr: Value,
        value: Option<Value>,
        size: u32,
        join: cranelift_codegen::ir::Block,
    ) {
        self.fb.set_cold_block(slow);
        self.fb.switch_to_block(slow);
        self.sync_position();
        let arg = self
            .fb
            .ins()
            .iconst(types::I64, (size as u64 | (self.mmu_idx << 8)) as i64);
        let mut args = vec![self.cpu, addr];
        args.extend(value);
        args.push(arg);
        let status = self.call_fn(f, &args);
        let exit = self.fault_exit();
        self.fb.ins().brif(status, exit, &[], join, &[]);
        self.fb.switch_to_block(join);
    }

    /// A guest load of `size` bytes (zero-extended) at linear `addr`.
    pub(super) fn emit_load(&mut self, addr: Value, size: u32) -> R<Value> {
        let (hit, entry) = self.tlb_probe(addr, size, false);
        let fast = self.fb.create_block();
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        let v = self.fb.append_block_param(join, types::I64);
        self.fb.ins().brif(hit, fast, &[], slow, &[]);
        self.fb.switch_to_block(fast);
        let addend = self.fb.ins().load(types::I64, state_flags(), entry, 8);
        let host = self.fb.ins().iadd(addr, addend);
        let x = match size {
            1 => self.fb.ins().uload8(types::I64, guest_flags(), host, 0),
            2 => self.fb.ins().uload16(types::I64, guest_flags(), host, 0),
            4 => self.fb.ins().uload32(guest_flags(), host, 0),
            _ => self.fb.ins().load(types::I64, guest_flags(), host, 0),
        };
        self.fb.ins().jump(join, &[BlockArg::Value(x)]);
        self.fb.set_cold_block(slow);
        self.fb.switch_to_block(slow);
        self.sync_position();
        let sz = self.fb.ins().iconst(types::I64, size as i64);
        let mi = self.fb.ins().iconst(types::I64, self.mmu_idx as i64);
        let cpu = self.cpu;
        let y = self.call_fn(self.refs.helpers.load, &[cpu, addr, sz, mi]);
        let status = self.state_load(offsets::HELPER_STATUS);
        let exit = self.fault_exit();
        let ok = self.fb.create_block();
        self.fb.ins().brif(status, exit, &[], ok, &[]);
        self.fb.switch_to_block(ok);
        self.fb.ins().jump(join, &[BlockArg::Value(y)]);
        self.fb.switch_to_block(join);
        Ok(v)
    }

    /// A guest store of `v`'s low `size` bytes at linear `addr`.
    pub(super) fn emit_store(&mut self, addr: Value, v: Value, size: u32) -> R<()> {
        self.ctx.stored = true;
        self.block_stores = true;
        let (hit, entry) = self.tlb_probe(addr, size, true);
        let fast = self.fb.create_block();
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        self.fb.ins().brif(hit, fast, &[], slow, &[]);
        self.fb.switch_to_block(fast);
        let addend = self.fb.ins().load(types::I64, state_flags(), entry, 8);
        let host = self.fb.ins().iadd(addr, addend);
        match size {
            1 => self.fb.ins().istore8(guest_flags(), v, host, 0),
            2 => self.fb.ins().istore16(guest_flags(), v, host, 0),
            4 => self.fb.ins().istore32(guest_flags(), v, host, 0),
            _ => self.fb.ins().store(guest_flags(), v, host, 0),
        };
        self.fb.ins().jump(join, &[]);
        let f = self.refs.helpers.store;
        self.store_slow_path(slow, f, addr, Some(v), size, join);
        Ok(())
    }

    /// A guest store that happens only if `cond` holds (a branch around [`Lower::emit_store`]).
    pub(super) fn emit_store_if(&mut self, cond: Value, addr: Value, v: Value, size: u32) -> R<()> {
        let store = self.fb.create_block();
        let cont = self.fb.create_block();
        self.fb.ins().brif(cond, store, &[], cont, &[]);
        self.fb.switch_to_block(store);
        self.emit_store(addr, v, size)?;
        self.fb.ins().jump(cont, &[]);
        self.fb.switch_to_block(cont);
        Ok(())
    }

    /// Check that `size` bytes at `addr` are writable (faulting as a store would), writing
    /// nothing.
    pub(super) fn emit_probe_write(&mut self, addr: Value, size: u32) -> R<()> {
        let (hit, _) = self.tlb_probe(addr, size, true);
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        self.fb.ins().brif(hit, join, &[], slow, &[]);
        let f = self.refs.helpers.probe_write;
        self.store_slow_path(slow, f, addr, None, size, join);
        Ok(())
    }

    /// A 16-byte guest load at `addr`: (low, high) halves.
    pub(super) fn emit_load128(&mut self, addr: Value) -> R<(Value, Value)> {
        let (hit, entry) = self.tlb_probe(addr, 16, false);
        let fast = self.fb.create_block();
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        let lo = self.fb.append_block_param(join, types::I64);
        let hi = self.fb.append_block_param(join, types::I64);
        self.fb.ins().brif(hit, fast, &[], slow, &[]);
        self.fb.switch_to_block(fast);
        let addend = self.fb.ins().load(types::I64, state_flags(), entry, 8);
        let host = self.fb.ins().iadd(addr, addend);
        let a = self.fb.ins().load(types::I64, guest_flags(), host, 0);
        let b = self.fb.ins().load(types::I64, guest_flags(), host, 8);
        self.fb
            .ins()
            .jump(join, &[BlockArg::Value(a), BlockArg::Value(b)]);
        self.fb.set_cold_block(slow);
        self.fb.switch_to_block(slow);
        self.sync_position();
        let mi = self.fb.ins().iconst(types::I64, self.mmu_idx as i64);
        let cpu = self.cpu;
        let status = self.call_fn(self.refs.helpers.load128, &[cpu, addr, mi]);
        let exit = self.fault_exit();
        let ok = self.fb.create_block();
        self.fb.ins().brif(status, exit, &[], ok, &[]);
        self.fb.switch_to_block(ok);
        let a = self.state_load(offsets::SCRATCH);
        let b = self.state_load(offsets::SCRATCH + 8);
        self.fb
            .ins()
            .jump(join, &[BlockArg::Value(a), BlockArg::Value(b)]);
        self.fb.switch_to_block(join);
        Ok((lo, hi))
    }

    /// A 16-byte guest store of `lo` and `hi` at `addr`.
    pub(super) fn emit_store128(&mut self, addr: Value, lo: Value, hi: Value) -> R<()> {
        self.ctx.stored = true;
        self.block_stores = true;
        let (hit, entry) = self.tlb_probe(addr, 16, true);
        let fast = self.fb.create_block();
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        self.fb.ins().brif(hit, fast, &[], slow, &[]);
        self.fb.switch_to_block(fast);
        let addend = self.fb.ins().load(types::I64, state_flags(), entry, 8);
        let host = self.fb.ins().iadd(addr, addend);
        self.fb.ins().store(guest_flags(), lo, host, 0);
        self.fb.ins().store(guest_flags(), hi, host, 8);
        self.fb.ins().jump(join, &[]);
        self.fb.set_cold_block(slow);
        self.fb.switch_to_block(slow);
        self.sync_position();
        self.state_store(offsets::SCRATCH, lo);
        self.state_store(offsets::SCRATCH + 8, hi);
        let mi = self.fb.ins().iconst(types::I64, self.mmu_idx as i64);
        let cpu = self.cpu;
        let status = self.call_fn(self.refs.helpers.store128, &[cpu, addr, mi]);
        let exit = self.fault_exit();
        self.fb.ins().brif(status, exit, &[], join, &[]);
        self.fb.switch_to_block(join);
        Ok(())
    }
}
