//! Lowering: a [`Builder`] whose values are Cranelift SSA values, so running the shared
//! semantics over a block emits that block's IR. This file holds the lowering state
//! ([`Lower`]: registers in variables, lazy flags, the current instruction's fault context),
//! the block prologue and instruction loop ([`lower_block`]) and the `Builder` methods;
//! the ways out of a block are in `exits`, guest memory accesses (inline TLB paths) in
//! `memory`.

mod exits;
mod incoming_flags;
mod memory;

use super::reloc::{sym_value, Sym};
use super::shims::{pure_signature, shim_signature, HelperSyms, HELPER_SYMS};
use super::{state_flags, PASSED_GPRS, PASSED_MASK};
use crate::block::Block;

use crate::mode::MODE_ALIGNMENT_CHECK;
use crate::sem::{self, flags::FlagOp, Abort, Builder, Cmp, FlagState, Flow, Helper, R};
use cranelift_codegen::ir::{
    condcodes::{CondCode, IntCC},
    types, InstBuilder, SigRef, Signature, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use exits::PendingExit;
use iced_x86::Instruction;
use krr_runtime::{offsets, Outcome};
use std::collections::HashMap;

struct Refs {
    helpers: HelperSyms,
    /// The shims' signature (`preserve_all`, the CPU pointer only).
    shim_sig: SigRef,
    /// Pure host functions' signature (System V, four `i64` in, two out).
    pure_sig: SigRef,
    block_sig: SigRef,
}

/// Per-instruction context for fault exits.
struct InsnCtx {
    index: u32,
    /// Dirty registers and their values when the instruction started.
    snapshot: Vec<(usize, Value)>,
    flags: Option<FlagState<Value>>,
    flags_dirty: bool,
    fault_exit: Option<cranelift_codegen::ir::Block>,
    written: u16,
    /// The instruction wrote guest memory (it may have modified translated code).
    stored: bool,
}

/// The state of lowering one block.
struct Lower<'a> {
    pending_exits: Vec<PendingExit>,
    fb: FunctionBuilder<'a>,
    refs: Refs,
    cpu: Value,
    icount: Value,
    insn: Instruction,
    regs: [Variable; 16],
    loaded: u16,
    dirty: u16,
    flags: Option<FlagState<Value>>,
    flags_dirty: bool,
    consts: HashMap<Value, u64>,
    mmu_idx: u64,
    ctx: InsnCtx,
    flow: Option<(Flow<Value>, Option<Value>)>,
    terminated: bool,
    loop_header: Option<(cranelift_codegen::ir::Block, u64)>,
    /// In a self-loop: the registers its instructions use, kept in variables around the loop.
    loop_regs: u16,
    /// Some instruction of the block wrote memory.
    block_stores: bool,
    block_start: u64,
    block_mode: u32,
    /// The block's behaviour profile, a constant of its code.
    profile: krr_runtime::Profile,
}

/// Lower `block` into `fb`'s function: blocks call the helpers through their shims and
/// their successors with signature `block_sig`. Every process-specific address (shims, exit
/// slots, jump cache, decoded instructions, pure functions) is a [`Sym`], relocated when the
/// code is installed.
pub(super) fn lower_block(
    mut fb: FunctionBuilder<'_>,
    block_sig: &Signature,
    block: &Block,
    target: cranelift_codegen::isa::TargetFrontendConfig,
) {
    let refs = Refs {
        helpers: HELPER_SYMS,
        shim_sig: fb.import_signature(shim_signature()),
        pure_sig: fb.import_signature(pure_signature()),
        block_sig: fb.import_signature(block_sig.clone()),
    };
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    let cpu = fb.block_params(entry)[0];
    let icount = fb.block_params(entry)[1];
    let passed: Vec<Value> = fb.block_params(entry)[2..].to_vec();
    budget_check(&mut fb, block, cpu, icount, &passed);
    let regs: [Variable; 16] = std::array::from_fn(|_| fb.declare_var(types::I64));
    // The passed registers arrive in host registers; the state's copies are stale.
    for (&r, &v) in PASSED_GPRS.iter().zip(&passed) {
        fb.def_var(regs[r], v);
    }
    // User code uses MMU index 1, with alignment checking the checked index 3 (every access
    // takes the slow path, which raises #AC).
    let mmu_idx = ((block.mode & 3) == 3) as u64
        | if block.mode & MODE_ALIGNMENT_CHECK != 0 {
            2
        } else {
            0
        };
    let mut l = Lower {
        pending_exits: Vec::new(),
        fb,
        refs,
        cpu,
        icount,
        insn: Instruction::default(),
        regs,
        loaded: PASSED_MASK,
        dirty: PASSED_MASK,
        flags: None,
        flags_dirty: false,
        consts: HashMap::new(),
        mmu_idx,
        ctx: InsnCtx {
            index: 0,
            snapshot: Vec::new(),
            flags: None,
            flags_dirty: false,
            fault_exit: None,
            written: 0,
            stored: false,
        },
        flow: None,
        terminated: false,
        loop_header: None,
        loop_regs: 0,
        block_stores: false,
        block_start: block.start,
        block_mode: block.mode,
        profile: block.profile,
    };
    if is_self_loop(block) {
        l.begin_self_loop(block.start, gprs_used(block) | PASSED_MASK);
    }
    for (i, insn) in block.insns.iter().enumerate() {
        l.begin_insn(i as u32, insn);
        let r = if sem::is_rep_string(insn) {
            // A REP loop runs in the interpreter, which counts it as one instruction.
            let z = l.iconst(0);
            l.call(Helper::Interpret, [z, z, z]).map(|_| ())
        } else {
            sem::instruction(&mut l)
        };
        if r.is_err() && l.terminated {
            break;
        }
        if let Some((flow, cond)) = l.flow.take() {
            l.emit_flow(flow, cond, i as u32 + 1);
            l.terminated = true;
            break;
        }
        if l.ctx.stored && i + 1 < block.insns.len() {
            l.smc_check(insn.next_ip(), i as u32 + 1);
        }
    }
    if !l.terminated {
        let last = block.insns.last().expect("blocks are never empty");
        l.emit_flow(Flow::Direct(last.next_ip()), None, block.insns.len() as u32);
    }
    l.emit_pending_exits();
    l.fb.seal_all_blocks();
    l.fb.finalize(target);
}

/// The block prologue: if the whole block does not fit in the instruction budget, return
/// [`Outcome::Budget`] before executing anything (the dispatcher then interprets up to the
/// limit); code generation goes on in the block's body.
fn budget_check(
    fb: &mut FunctionBuilder<'_>,
    block: &Block,
    cpu: Value,
    icount: Value,
    passed: &[Value],
) {
    let limit = fb
        .ins()
        .load(types::I64, state_flags(), cpu, offsets::ICOUNT_LIMIT);
    let n = block.insns.len() as i64;
    let end = fb.ins().iadd_imm_s(icount, n);
    let over = fb.ins().icmp(IntCC::UnsignedGreaterThan, end, limit);
    let budget_exit = fb.create_block();
    let body = fb.create_block();
    fb.ins().brif(over, budget_exit, &[], body, &[]);
    fb.set_cold_block(budget_exit);
    fb.switch_to_block(budget_exit);
    // Entered by a tail call, so RIP and the count are only in registers: store them.
    let start = fb.ins().iconst(types::I64, block.start as i64);
    fb.ins().store(state_flags(), start, cpu, offsets::RIP);
    fb.ins().store(state_flags(), icount, cpu, offsets::ICOUNT);
    for (&r, &v) in PASSED_GPRS.iter().zip(passed) {
        fb.ins().store(state_flags(), v, cpu, offsets::gpr(r));
    }
    let code = fb.ins().iconst(types::I64, Outcome::Budget.as_u64() as i64);
    fb.ins().return_(&[code]);
    fb.switch_to_block(body);
}

/// The general-purpose registers the block's instructions read or write (as iced reports
/// them: explicit, implicit and address registers), one bit per register number.
fn gprs_used(block: &Block) -> u16 {
    let mut info = iced_x86::InstructionInfoFactory::new();
    let mut mask = 0u16;
    for insn in &block.insns {
        for r in info.info(insn).used_registers() {
            let reg = r.register();
            if reg.is_gpr() {
                mask |= 1 << reg.full_register().number();
            }
        }
    }
    mask
}

/// Does the block end with a direct branch back to its own start (a tight loop)?
fn is_self_loop(block: &Block) -> bool {
    let last = block.insns.last().expect("blocks are never empty");
    matches!(
        last.op0_kind(),
        iced_x86::OpKind::NearBranch64
            | iced_x86::OpKind::NearBranch32
            | iced_x86::OpKind::NearBranch16
    ) && last.near_branch_target() == block.start
        && !matches!(last.mnemonic(), iced_x86::Mnemonic::Call)
}

impl Lower<'_> {
    fn begin_insn(&mut self, index: u32, insn: &Instruction) {
        self.insn = *insn;
        let mut snapshot = Vec::new();
        for r in 0..16 {
            if self.dirty & (1 << r) != 0 {
                let v = self.fb.use_var(self.regs[r]);
                snapshot.push((r, v));
            }
        }
        self.ctx = InsnCtx {
            index,
            snapshot,
            flags: self.flags,
            flags_dirty: self.flags_dirty,
            fault_exit: None,
            written: 0,
            stored: false,
        };
    }

    fn iconst(&mut self, v: u64) -> Value {
        let x = self.fb.ins().iconst(types::I64, v as i64);
        self.consts.insert(x, v);
        x
    }

    fn state_load(&mut self, off: i32) -> Value {
        self.fb.ins().load(types::I64, state_flags(), self.cpu, off)
    }

    fn state_store(&mut self, off: i32, v: Value) {
        self.fb.ins().store(state_flags(), v, self.cpu, off);
    }

    /// Store the lazy flags: only the operands the operation's flag formulas read.
    fn store_flags_state(&mut self, f: &FlagState<Value>) {
        use crate::sem::FlagKind as K;
        let op = self.fb.ins().iconst(types::I64, f.op.encode() as i64);
        self.state_store(offsets::CC_OP, op);
        self.state_store(offsets::CC_RES, f.res);
        if matches!(
            f.op.kind,
            K::Add | K::Adc | K::Sub | K::Sbb | K::Shl | K::Shr | K::Sar
        ) {
            self.state_store(offsets::CC_A, f.a);
            self.state_store(offsets::CC_B, f.b);
        }
        if matches!(f.op.kind, K::Adc | K::Sbb | K::Inc | K::Dec) {
            self.state_store(offsets::CC_AUX, f.aux);
        }
    }

    fn flush_regs(&mut self) {
        self.flush_regs_except(0);
    }

    fn flush_regs_except(&mut self, keep: u16) {
        for r in 0..16 {
            if self.dirty & !keep & (1 << r) != 0 {
                let v = self.fb.use_var(self.regs[r]);
                self.state_store(offsets::gpr(r), v);
            }
        }
    }

    /// Write back every dirty register and the flags (at an exit or before a helper call).
    fn flush(&mut self) {
        self.flush_except(0);
    }

    /// [`Lower::flush`] but for the registers in `keep` (passed to the next block instead).
    fn flush_except(&mut self, keep: u16) {
        self.flush_regs_except(keep);
        if self.flags_dirty {
            if let Some(f) = self.flags {
                self.store_flags_state(&f);
            }
        }
    }

    /// After a helper that may have changed any state: forget cached registers and flags.
    fn forget(&mut self) {
        self.loaded = 0;
        self.dirty = 0;
        self.flags = None;
        self.flags_dirty = false;
        if self.loop_header.is_some() {
            // Inside a loop the kept variables must be defined on the back edge: reload them.
            for r in 0..16 {
                if self.loop_regs & (1 << r) != 0 {
                    let v = self.state_load(offsets::gpr(r));
                    self.fb.def_var(self.regs[r], v);
                }
            }
            self.loaded = self.loop_regs;
            self.dirty = self.loop_regs;
        }
    }

    /// Write the current instruction's RIP and instruction count to the state before a slow
    /// path that may reach the bus (MMIO): devices and the recorder see the exact position.
    fn sync_position(&mut self) {
        let rip = self.fb.ins().iconst(types::I64, self.insn.ip() as i64);
        self.state_store(offsets::RIP, rip);
        self.store_icount(self.ctx.index);
    }

    fn store_icount(&mut self, retired: u32) {
        let v = self.fb.ins().iadd_imm_s(self.icount, retired as i64);
        self.state_store(offsets::ICOUNT, v);
    }

    /// A process-specific address plus `offset` (relocated at installation).
    fn sym(&mut self, sym: Sym, offset: i64) -> Value {
        sym_value(&mut self.fb, sym, offset)
    }

    /// Call a helper through its register-preserving shim `shim`; returns the helper's
    /// result.
    fn call_fn(&mut self, shim: Sym, args: &[Value]) -> Value {
        debug_assert!(args[0] == self.cpu && args.len() <= 5);
        for (i, &a) in args[1..].iter().enumerate() {
            self.state_store(offsets::HELPER_ARGS + 8 * i as i32, a);
        }
        let cpu = self.cpu;
        let callee = self.sym(shim, 0);
        self.fb
            .ins()
            .call_indirect(self.refs.shim_sig, callee, &[cpu]);
        self.state_load(offsets::HELPER_VALUE)
    }

    fn const2(&self, a: Value, b: Value) -> Option<(u64, u64)> {
        Some((*self.consts.get(&a)?, *self.consts.get(&b)?))
    }
}

impl Builder for Lower<'_> {
    type V = Value;
    type B = Value;

    fn insn(&self) -> &Instruction {
        &self.insn
    }
    fn profile(&self) -> krr_runtime::Profile {
        self.profile
    }
    fn mode(&self) -> u32 {
        self.block_mode
    }
    fn c(&mut self, v: u64) -> Value {
        self.iconst(v)
    }
    fn add(&mut self, a: Value, b: Value) -> Value {
        if let Some((x, y)) = self.const2(a, b) {
            return self.iconst(x.wrapping_add(y));
        }
        if self.consts.get(&b) == Some(&0) {
            return a;
        }
        if self.consts.get(&a) == Some(&0) {
            return b;
        }
        self.fb.ins().iadd(a, b)
    }
    fn sub(&mut self, a: Value, b: Value) -> Value {
        if let Some((x, y)) = self.const2(a, b) {
            return self.iconst(x.wrapping_sub(y));
        }
        self.fb.ins().isub(a, b)
    }
    fn mul(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().imul(a, b)
    }
    fn umulh(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().umulhi(a, b)
    }
    fn smulh(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().smulhi(a, b)
    }
    fn and(&mut self, a: Value, b: Value) -> Value {
        if let Some((x, y)) = self.const2(a, b) {
            return self.iconst(x & y);
        }
        self.fb.ins().band(a, b)
    }
    fn or(&mut self, a: Value, b: Value) -> Value {
        if let Some((x, y)) = self.const2(a, b) {
            return self.iconst(x | y);
        }
        if self.consts.get(&b) == Some(&0) {
            return a;
        }
        if self.consts.get(&a) == Some(&0) {
            return b;
        }
        self.fb.ins().bor(a, b)
    }
    fn xor(&mut self, a: Value, b: Value) -> Value {
        if let Some((x, y)) = self.const2(a, b) {
            return self.iconst(x ^ y);
        }
        self.fb.ins().bxor(a, b)
    }
    fn not(&mut self, a: Value) -> Value {
        if let Some(&x) = self.consts.get(&a) {
            return self.iconst(!x);
        }
        self.fb.ins().bnot(a)
    }
    fn shl(&mut self, a: Value, n: Value) -> Value {
        if let Some((x, y)) = self.const2(a, n) {
            return self.iconst(x << (y & 63));
        }
        if self.consts.get(&n) == Some(&0) {
            return a;
        }
        self.fb.ins().ishl(a, n)
    }
    fn shr(&mut self, a: Value, n: Value) -> Value {
        if let Some((x, y)) = self.const2(a, n) {
            return self.iconst(x >> (y & 63));
        }
        if self.consts.get(&n) == Some(&0) {
            return a;
        }
        self.fb.ins().ushr(a, n)
    }
    fn sar(&mut self, a: Value, n: Value) -> Value {
        if let Some((x, y)) = self.const2(a, n) {
            return self.iconst(((x as i64) >> (y & 63)) as u64);
        }
        self.fb.ins().sshr(a, n)
    }
    fn rotl(&mut self, a: Value, n: Value) -> Value {
        self.fb.ins().rotl(a, n)
    }
    fn rotr(&mut self, a: Value, n: Value) -> Value {
        self.fb.ins().rotr(a, n)
    }
    fn popcnt(&mut self, a: Value) -> Value {
        if let Some(&x) = self.consts.get(&a) {
            return self.iconst(x.count_ones() as u64);
        }
        self.fb.ins().popcnt(a)
    }
    fn clz(&mut self, a: Value) -> Value {
        self.fb.ins().clz(a)
    }
    fn ctz(&mut self, a: Value) -> Value {
        self.fb.ins().ctz(a)
    }
    fn bswap(&mut self, a: Value) -> Value {
        self.fb.ins().bswap(a)
    }
    fn sext(&mut self, a: Value, bits: u32) -> Value {
        if bits >= 64 {
            return a;
        }
        if let Some(&x) = self.consts.get(&a) {
            return self.iconst((((x << (64 - bits)) as i64) >> (64 - bits)) as u64);
        }
        let t = match bits {
            8 => types::I8,
            16 => types::I16,
            32 => types::I32,
            _ => {
                let s = self.fb.ins().ishl_imm_u(a, 64 - bits as i64);
                return self.fb.ins().sshr_imm_u(s, 64 - bits as i64);
            }
        };
        let r = self.fb.ins().ireduce(t, a);
        self.fb.ins().sextend(types::I64, r)
    }
    fn zext(&mut self, a: Value, bits: u32) -> Value {
        if bits >= 64 {
            return a;
        }
        let mask = (1u64 << bits) - 1;
        if let Some(&x) = self.consts.get(&a) {
            return self.iconst(x & mask);
        }
        if bits == 32 {
            // The 32-bit mask is no sign-extended immediate: `and` would load it from the
            // constant pool; a 32-bit move zero-extends in one instruction. A value that is
            // such a move already needs nothing.
            if let Some(inst) = self.fb.func.dfg.value_def(a).inst() {
                if self.fb.func.dfg.insts[inst].opcode() == cranelift_codegen::ir::Opcode::Uextend {
                    let arg = self.fb.func.dfg.inst_args(inst)[0];
                    if self.fb.func.dfg.value_type(arg).bits() <= 32 {
                        return a;
                    }
                }
            }
            let low = self.fb.ins().ireduce(types::I32, a);
            return self.fb.ins().uextend(types::I64, low);
        }
        self.fb.ins().band_imm_s(a, mask as i64)
    }
    fn icmp(&mut self, cc: Cmp, a: Value, b: Value) -> Value {
        let cc = match cc {
            Cmp::Eq => IntCC::Equal,
            Cmp::Ne => IntCC::NotEqual,
            Cmp::Ult => IntCC::UnsignedLessThan,
            Cmp::Ule => IntCC::UnsignedLessThanOrEqual,
            Cmp::Ugt => IntCC::UnsignedGreaterThan,
            Cmp::Uge => IntCC::UnsignedGreaterThanOrEqual,
            Cmp::Slt => IntCC::SignedLessThan,
            Cmp::Sle => IntCC::SignedLessThanOrEqual,
            Cmp::Sgt => IntCC::SignedGreaterThan,
            Cmp::Sge => IntCC::SignedGreaterThanOrEqual,
        };
        self.fb.ins().icmp(cc, a, b)
    }
    fn bconst(&mut self, v: bool) -> Value {
        self.fb.ins().iconst(types::I8, v as i64)
    }
    fn band(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().band(a, b)
    }
    fn bor(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().bor(a, b)
    }
    fn bxor(&mut self, a: Value, b: Value) -> Value {
        self.fb.ins().bxor(a, b)
    }
    fn bnot(&mut self, a: Value) -> Value {
        // The negation of a comparison is the inverse comparison (one compare-and-branch
        // instead of compare, set, invert and test).
        if let Some(inst) = self.fb.func.dfg.value_def(a).inst() {
            if let cranelift_codegen::ir::InstructionData::IntCompare { cond, args, .. } =
                self.fb.func.dfg.insts[inst]
            {
                return self.fb.ins().icmp(cond.complement(), args[0], args[1]);
            }
        }
        self.fb.ins().bxor_imm_s(a, 1)
    }
    fn b2v(&mut self, a: Value) -> Value {
        self.fb.ins().uextend(types::I64, a)
    }
    fn select(&mut self, c: Value, t: Value, f: Value) -> Value {
        self.fb.ins().select(c, t, f)
    }
    fn get_gpr(&mut self, r: usize) -> Value {
        if self.loaded & (1 << r) == 0 {
            let v = self.state_load(offsets::gpr(r));
            self.fb.def_var(self.regs[r], v);
            self.loaded |= 1 << r;
            return v;
        }
        self.fb.use_var(self.regs[r])
    }
    fn set_gpr(&mut self, r: usize, v: Value) {
        self.fb.def_var(self.regs[r], v);
        self.loaded |= 1 << r;
        self.dirty |= 1 << r;
        self.ctx.written |= 1 << r;
    }
    fn load_state(&mut self, offset: i32) -> Value {
        self.state_load(offset)
    }
    fn store_state(&mut self, offset: i32, v: Value) {
        self.state_store(offset, v);
    }
    fn flags(&mut self) -> FlagState<Value> {
        if let Some(f) = self.flags {
            return f;
        }
        // Flags an earlier block set: read the lazy state with the runtime's code, a plain
        // call (it reads only its arguments), and leave the state concrete.
        let op = self.state_load(offsets::CC_OP);
        let aux = self.state_load(offsets::CC_AUX);
        let carry = self.fb.ins().band_imm_u(aux, 1);
        let carry = self.fb.ins().ishl_imm_u(carry, 8);
        let op_aux = self.fb.ins().bor(op, carry);
        let res = self.state_load(offsets::CC_RES);
        let a = self.state_load(offsets::CC_A);
        let b = self.state_load(offsets::CC_B);
        let read = crate::helpers::pure::Pure::ArithFlags
            .func()
            .expect("available on every host");
        let (bits, _) = self.pure(read, [op_aux, res, a, b]);
        let concrete = self.iconst(FlagOp::CONCRETE.encode());
        self.state_store(offsets::CC_OP, concrete);
        self.state_store(offsets::CC_RES, bits);
        let z = self.iconst(0);
        let f = FlagState {
            op: FlagOp::CONCRETE,
            res: bits,
            a: z,
            b: z,
            aux: z,
        };
        // The state now holds exactly these concrete flags.
        self.flags = Some(f);
        self.flags_dirty = false;
        if !self.ctx.flags_dirty {
            self.ctx.flags = Some(f);
        }
        f
    }
    fn incoming_cond(&mut self, cc: iced_x86::ConditionCode) -> Option<Value> {
        if self.flags.is_some() {
            return None;
        }
        Some(self.cond_of_state_flags(cc))
    }
    fn set_flags(&mut self, f: FlagState<Value>) {
        self.flags = Some(f);
        self.flags_dirty = true;
    }
    fn load(&mut self, addr: Value, size: u32) -> R<Value> {
        self.emit_load(addr, size)
    }
    fn store(&mut self, addr: Value, v: Value, size: u32) -> R<()> {
        self.emit_store(addr, v, size)
    }
    fn store_if(&mut self, cond: Value, addr: Value, v: Value, size: u32) -> R<()> {
        self.emit_store_if(cond, addr, v, size)
    }
    fn probe_write(&mut self, addr: Value, size: u32) -> R<()> {
        self.emit_probe_write(addr, size)
    }
    fn load128(&mut self, addr: Value) -> R<(Value, Value)> {
        self.emit_load128(addr)
    }
    fn store128(&mut self, addr: Value, lo: Value, hi: Value) -> R<()> {
        self.emit_store128(addr, lo, hi)
    }
    fn const_of(&self, v: Value) -> Option<u64> {
        self.consts.get(&v).copied()
    }
    fn repeat_while<T, F>(&mut self, _test: T, _body: F) -> R<()>
    where
        T: FnMut(&mut Self) -> Value,
        F: FnMut(&mut Self) -> R<Value>,
    {
        unreachable!("REP string instructions are handed to the interpreter (sem::is_rep_string)")
    }
    fn raise(&mut self, vector: u8, error_code: Option<u32>) -> Abort {
        self.store_exception(vector, error_code, false);
        let exit = self.fault_exit();
        self.fb.ins().jump(exit, &[]);
        self.dead_end();
        Abort
    }
    fn raise_trap(&mut self, vector: u8) -> Abort {
        // A trap retires the instruction: leave with the current state and the next RIP.
        self.store_exception(vector, None, true);
        let here = self.fb.ins().iconst(types::I64, self.insn.ip() as i64);
        self.state_store(offsets::TRAP_RIP, here);
        self.flush();
        let next = self.fb.ins().iconst(types::I64, self.insn.next_ip() as i64);
        self.state_store(offsets::RIP, next);
        self.store_icount(self.ctx.index + 1);
        self.return_outcome(Outcome::Trap);
        self.dead_end();
        Abort
    }
    fn unimplemented(&mut self) -> Abort {
        // The interpreter raises #UD and counts it; compiled code just hands over.
        let z = self.iconst(0);
        let _ = self.call(Helper::Interpret, [z, z, z]);
        // The interpreter cannot retire an unimplemented instruction, so this is unreachable.
        self.return_outcome(Outcome::Fault);
        self.dead_end();
        Abort
    }
    fn raise_if(&mut self, cond: Value, vector: u8, error_code: Option<u32>) -> R<()> {
        let raise = self.fb.create_block();
        let cont = self.fb.create_block();
        self.fb.ins().brif(cond, raise, &[], cont, &[]);
        self.fb.set_cold_block(raise);
        self.fb.switch_to_block(raise);
        self.store_exception(vector, error_code, false);
        let exit = self.fault_exit();
        self.fb.ins().jump(exit, &[]);
        self.fb.switch_to_block(cont);
        Ok(())
    }
    fn call(&mut self, h: Helper, args: [Value; 3]) -> R<Value> {
        debug_assert!(
            self.ctx.written == 0,
            "{:?} called after the instruction wrote registers: faults would not be precise",
            h
        );
        self.flush();
        let cpu = self.cpu;
        if matches!(h, Helper::Interpret | Helper::System) {
            self.ctx.stored = true;
            self.block_stores = true;
            // The interpreter runs the whole instruction and updates RIP and the count itself.
            self.sync_position();
            let p = self.sym(Sym::Insn(self.ctx.index), 0);
            let status = self.call_fn(self.refs.helpers.interpret, &[cpu, p]);
            let exit = self.fb.create_block();
            let cont = self.fb.create_block();
            self.fb.ins().brif(status, exit, &[], cont, &[]);
            self.fb.set_cold_block(exit);
            self.fb.switch_to_block(exit);
            self.return_outcome(Outcome::Fault);
            self.fb.switch_to_block(cont);
            self.forget();
            // What the fault exit of this instruction must restore is now in the state.
            self.ctx.snapshot.clear();
            self.ctx.flags_dirty = false;
            if h == Helper::System {
                // The interpreter has set RIP: the next instruction or a computed target.
                return Ok(self.state_load(offsets::RIP));
            }
            return Ok(self.iconst(0));
        }
        let id = self.iconst(h.id());
        let r = self.call_fn(
            self.refs.helpers.helper,
            &[cpu, id, args[0], args[1], args[2]],
        );
        let status = self.state_load(offsets::HELPER_STATUS);
        // The helper saw the flushed state, which equals the instruction-start state (no
        // register was written before the call), so the fault exit needs nothing extra.
        self.ctx.snapshot.clear();
        self.ctx.flags_dirty = false;
        self.check_status_after_call(status);
        self.forget();
        Ok(r)
    }
    fn pure(&mut self, f: crate::helpers::pure::PureFn, args: [Value; 4]) -> (Value, Value) {
        let callee = self.sym(Sym::pure(f), 0);
        let call = self
            .fb
            .ins()
            .call_indirect(self.refs.pure_sig, callee, &args);
        let r = self.fb.inst_results(call);
        (r[0], r[1])
    }
    fn halt(&mut self) -> Abort {
        unreachable!("system instructions are handed to the interpreter before they halt")
    }
    fn commit(&mut self) {}
    fn flow(&mut self, f: Flow<Value>, cond: Option<Value>) {
        self.flow = Some((f, cond));
    }
}
