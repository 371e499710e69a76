//! The hot tier: guest blocks compiled to host code with Cranelift, one function per block,
//! chained to its successors by tail calls. [`Jit`] is the face the dispatcher sees (set up,
//! compile now or in the background, enter compiled code); the work is split by concern:
//! - `shims`: set-up: the host ISA, the `preserve_all` shims through which blocks call the
//!   Rust helpers, and the trampoline that enters compiled code;
//! - `worker`: the background compile thread and installing what it returns;
//! - `lower`: the [`crate::sem::Builder`] that lowers the shared semantics to Cranelift IR,
//!   with its exits (`lower::exits`) and inline TLB paths (`lower::memory`).
//!
//! Shape of a compiled block (`tail` calling convention, `fn(cpu) -> u64`, the `u64` an
//! [`Outcome`]):
//! - entry: load `icount`; if the whole block does not fit in the budget, return
//!   [`Outcome::Budget`] before executing anything (the dispatcher then interprets up to the
//!   limit);
//! - body: guest GPRs live in Cranelift variables, loaded on first use and written back at
//!   exits; flags stay lazy with the producing operation known at compile time;
//! - memory: an inline TLB lookup (index, tag compare, add) with a cold helper call on a miss;
//! - faults: a cold exit per instruction stores the registers as they were when that
//!   instruction started, its RIP and the instruction count, and returns [`Outcome::Fault`]
//!   (when a helper failed, `cpu.helper_status` says how: it may also be `Unbacked`, `Halt`
//!   or `Trap`); an inline trap (INT3, INTO) retires the instruction and returns
//!   [`Outcome::Trap`];
//! - exits: to a constant target through a per-exit slot: if the slot holds the target's code
//!   the block tail-calls it (`return_call_indirect`), else it returns [`Outcome::Continue`] with
//!   `cpu.exit_slot` pointing at the slot for the dispatcher to fill.

mod lower;
mod shims;
mod worker;

use crate::block::Block;
use crate::block_id::BlockId;
use crate::jump_cache::JumpEntry;
use cranelift_codegen::ir::{types, MemFlagsData, Signature, Type};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Module};
use krr_runtime::{CpuState, Outcome};
use shims::HelperRefs;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::time::Instant;
use worker::Worker;

// Compiled code tests a helper's status word with a branch on non-zero.
const _: () = assert!(Outcome::Continue.as_u64() == 0);

/// A compiled block: its code and the chaining slots its exits jump through.
pub(crate) struct CompiledBlock {
    pub code: *const u8,
    pub code_size: usize,
    /// Exit slots (taken / not-taken). Boxed so compiled code can hold their address.
    _slots: Box<[u64; 2]>,
}

/// The host-convention entry into compiled code: `(cpu, code) -> exit`.
type Trampoline = extern "C" fn(*mut CpuState, *const u8) -> u64;

/// The Cranelift JIT: the module compiled code lives in, the shims and trampoline made at
/// start-up, and the background compile thread once it is needed.
pub(crate) struct Jit {
    /// Freed explicitly when the `Jit` is dropped (a dropped `JITModule` keeps its code
    /// mappings, so every engine made and dropped, e.g. one per differential test case,
    /// would leak them).
    module: ManuallyDrop<JITModule>,
    isa: OwnedTargetIsa,
    worker: Option<Worker>,
    /// Blocks compiled by the worker and defined in the module, not yet finalized.
    defined: Vec<(BlockId, FuncId, usize, Box<[u64; 2]>)>,
    /// When the oldest of `defined` arrived.
    defined_since: Instant,
    /// Exit slots of blocks being compiled (their code refers to them).
    pending_slots: HashMap<FuncId, Box<[u64; 2]>>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    trampoline: Trampoline,
    block_sig: Signature,
    /// What block code refers to: the helper shims' addresses and the jump cache's.
    refs: HelperRefs,
}

const PTR: Type = types::I64;

/// Guest registers passed between chained blocks as arguments (in host registers) instead of
/// through the CPU state: RAX and RCX, the accumulator and the counter, most often carried
/// around a loop. The `tail` convention has six integer argument registers (the CPU pointer
/// and the instruction count take two); passing four (with RDX and RSP) measured no faster on
/// the boot and slower on the chained-loop benchmark: the extra live values push block code
/// into callee-saved registers, saved and restored at every block.
const PASSED_GPRS: [usize; 2] = [0, 1];

/// Bit mask of [`PASSED_GPRS`].
const PASSED_MASK: u16 = {
    let mut m = 0u16;
    let mut i = 0;
    while i < PASSED_GPRS.len() {
        m |= 1 << PASSED_GPRS[i];
        i += 1;
    }
    m
};

/// Flags of an access to the CPU state (or another structure of ours): never traps.
fn state_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

impl Jit {
    /// A JIT whose code looks computed and cross-page targets up in `jump_cache`, the
    /// engine's jump cache (`JUMP_CACHE` entries that stay at this address).
    pub(crate) fn new(jump_cache: *const JumpEntry) -> Result<Jit, String> {
        let isa = shims::host_isa()?;
        let mut module = shims::jit_module(&isa);
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let shim_ids = shims::define_shims(&mut module, &mut ctx, &mut fctx)?;
        let block_sig = shims::block_signature();
        let tramp_id = shims::define_trampoline(&mut module, &mut ctx, &mut fctx, &block_sig)?;
        module.finalize_definitions().map_err(|e| e.to_string())?;
        let tramp_ptr = module.get_finalized_function(tramp_id);
        let refs = HelperRefs::new(&module, shim_ids, jump_cache);
        // SAFETY: the trampoline was just compiled with exactly this host signature.
        let trampoline: Trampoline =
            unsafe { std::mem::transmute::<*const u8, Trampoline>(tramp_ptr) };
        Ok(Jit {
            module: ManuallyDrop::new(module),
            isa,
            worker: None,
            defined: Vec::new(),
            defined_since: Instant::now(),
            pending_slots: HashMap::new(),
            ctx,
            fctx,
            trampoline,
            block_sig,
            refs,
        })
    }

    /// Run compiled code starting at `code` until a block returns to the host.
    pub(crate) fn enter(&self, cpu: &mut CpuState, code: *const u8) -> u64 {
        (self.trampoline)(cpu as *mut CpuState, code)
    }

    /// Declare a function for `block` and lower the block into `self.ctx.func`; returns the
    /// function and the exit slots its code will refer to.
    fn build_ir(&mut self, block: &Block) -> (FuncId, Box<[u64; 2]>) {
        let slots = Box::new([0u64; 2]);
        self.ctx.func.signature = self.block_sig.clone();
        let id = self
            .module
            .declare_anonymous_function(&self.block_sig)
            .expect("anonymous function declaration cannot fail");
        let fb = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let target = self.module.target_config();
        lower::lower_block(fb, self.refs, &self.block_sig, block, &slots, target);
        (id, slots)
    }

    /// Compile a batch of blocks and finalize them together.
    pub(crate) fn compile(&mut self, blocks: &[&Block]) -> Vec<CompiledBlock> {
        let mut ids = Vec::with_capacity(blocks.len());
        for block in blocks {
            let (id, slots) = self.build_ir(block);
            let dump = std::env::var_os("KRR_DUMP_CODE").is_some();
            self.ctx.set_disasm(dump);
            if let Err(e) = self.module.define_function(id, &mut self.ctx) {
                // A lowering bug, not a guest condition: report the block and stop.
                panic!(
                    "Cranelift rejected block at {:#x}: {e:?}\n{}",
                    block.start,
                    self.ctx.func.display()
                );
            }
            let size = self
                .ctx
                .compiled_code()
                .map(|c| c.code_info().total_size as usize)
                .unwrap_or(0);
            if dump {
                if let Some(v) = self.ctx.compiled_code().and_then(|c| c.vcode.as_ref()) {
                    eprintln!(
                        "block {:#x} ({} insns, {size} bytes):\n{v}",
                        block.start,
                        block.insns.len()
                    );
                }
            }
            self.module.clear_context(&mut self.ctx);
            ids.push((id, size, slots));
        }
        self.module
            .finalize_definitions()
            .expect("finalizing compiled blocks");
        ids.into_iter()
            .map(|(id, code_size, slots)| CompiledBlock {
                code: self.module.get_finalized_function(id),
                code_size,
                _slots: slots,
            })
            .collect()
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: the module is taken once, here, and never used again. Its code is
        // unreachable once the `Jit` goes: only the engine that owns this `Jit` enters
        // compiled code (through `enter`), and its block table and jump cache, which hold
        // the code pointers, are dropped with it; the compile worker never points into
        // the module's memory.
        unsafe { ManuallyDrop::take(&mut self.module).free_memory() }
    }
}
