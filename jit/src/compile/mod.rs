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
pub(crate) mod reloc;
mod shims;
mod worker;

use crate::block::Block;
use crate::block_id::BlockId;
use crate::code_cache::{self, StoredCode};
use crate::jump_cache::JumpEntry;
use cranelift_codegen::ir::{types, MemFlagsData, Signature, Type};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITModule;
use cranelift_module::{FuncId, Module};
use iced_x86::Instruction;
use krr_runtime::{CpuState, Outcome};
use shims::HelperRefs;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use worker::{MachineCode, Worker};

// Compiled code tests a helper's status word with a branch on non-zero.
const _: () = assert!(Outcome::Continue.as_u64() == 0);

/// A compiled block: its code and the chaining slots its exits jump through.
pub(crate) struct CompiledBlock {
    pub code: *const u8,
    pub code_size: usize,
    /// Installed from the code cache, not compiled.
    pub from_cache: bool,
    /// Exit slots (taken / not-taken). Boxed so compiled code can hold their address.
    _slots: Box<[u64; 2]>,
}

/// A block declared in the module whose code is not installed yet: what its code's
/// relocations point to, and its code-cache key.
struct Pending {
    block_id: BlockId,
    slots: Box<[u64; 2]>,
    /// The block's decoded instructions (`krr_interpret`'s argument); they stay where they
    /// are while the block exists.
    insns: *const Instruction,
    insn_count: usize,
    /// The code cache's key material, when the cache is on.
    material: Option<Vec<u8>>,
}

/// A block defined in the module, waiting for the next finalize.
struct Defined {
    block_id: BlockId,
    id: FuncId,
    size: usize,
    slots: Box<[u64; 2]>,
    from_cache: bool,
}

/// The host-convention entry into compiled code: `(cpu, code) -> exit`.
type Trampoline = extern "C" fn(*mut CpuState, *const u8) -> u64;

/// The Cranelift JIT: the module compiled code lives in, the shims and trampoline made at
/// start-up, the background compile thread once it is needed, and the code cache if on.
pub(crate) struct Jit {
    /// Freed explicitly when the `Jit` is dropped (a dropped `JITModule` keeps its code
    /// mappings, so every engine made and dropped, e.g. one per differential test case,
    /// would leak them).
    module: ManuallyDrop<JITModule>,
    isa: OwnedTargetIsa,
    worker: Option<Worker>,
    /// Blocks defined in the module, not yet finalized.
    defined: Vec<Defined>,
    /// When the oldest of `defined` arrived.
    defined_since: Instant,
    /// Blocks being compiled (their code refers to their slots and instructions).
    pending: HashMap<FuncId, Pending>,
    ctx: Context,
    fctx: FunctionBuilderContext,
    trampoline: Trampoline,
    block_sig: Signature,
    /// What block code refers to: the helper shims' addresses and the jump cache's.
    refs: HelperRefs,
    cache: Option<Arc<Mutex<code_cache::Store>>>,
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
    /// engine's jump cache (`JUMP_CACHE` entries that stay at this address), with the code
    /// cache of directory `cache_dir` if given.
    pub(crate) fn new(
        jump_cache: *const JumpEntry,
        cache_dir: Option<&Path>,
    ) -> Result<Jit, String> {
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
        let cache = cache_dir.and_then(|dir| {
            let id = code_cache::file_id(&*isa)?;
            Some(code_cache::Store::open(dir, id))
        });
        Ok(Jit {
            module: ManuallyDrop::new(module),
            isa,
            worker: None,
            defined: Vec::new(),
            defined_since: Instant::now(),
            pending: HashMap::new(),
            ctx,
            fctx,
            trampoline,
            block_sig,
            refs,
            cache,
        })
    }

    /// Run compiled code starting at `code` until a block returns to the host.
    pub(crate) fn enter(&self, cpu: &mut CpuState, code: *const u8) -> u64 {
        (self.trampoline)(cpu as *mut CpuState, code)
    }

    /// Declare a function for `block` (named `block_id`): what its code will refer to.
    fn prepare(&mut self, block_id: BlockId, block: &Block) -> (FuncId, Pending) {
        let id = self
            .module
            .declare_anonymous_function(&self.block_sig)
            .expect("anonymous function declaration cannot fail");
        let pending = Pending {
            block_id,
            slots: Box::new([0u64; 2]),
            insns: block.insns.as_ptr(),
            insn_count: block.insns.len(),
            material: self.cache.as_ref().map(|_| code_cache::key_material(block)),
        };
        (id, pending)
    }

    /// Lower `block` into `self.ctx.func`.
    fn build_ir(&mut self, block: &Block) {
        self.ctx.func.signature = self.block_sig.clone();
        let fb = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
        let target = self.module.target_config();
        lower::lower_block(fb, &self.block_sig, block, target);
    }

    /// Define function `id` with `code`, its relocations resolved for `pending`'s block.
    fn install(&mut self, id: FuncId, pending: &Pending, code: &MachineCode) -> Result<(), String> {
        let mut bytes = code.bytes.clone();
        let at = reloc::Resolver {
            shims: &self.refs.shims,
            jump_cache: self.refs.jump_cache,
            slots: &pending.slots,
            insns: pending.insns,
            insn_count: pending.insn_count,
        };
        reloc::patch(&mut bytes, &code.krr, &at).ok_or("unresolvable relocation")?;
        self.module
            .define_function_bytes(id, code.align, &bytes, &code.other)
            .map_err(|e| e.to_string())
    }

    /// Install `pending`'s block from the code cache, if it has it; its code size.
    fn install_cached(&mut self, id: FuncId, pending: &Pending) -> Option<usize> {
        let code = self.cached_code(pending.material.as_ref()?)?;
        match self.install(id, pending, &code) {
            Ok(()) => Some(code.bytes.len()),
            Err(e) => {
                log::warn!("code cache: entry not usable ({e}); compiling");
                None
            }
        }
    }

    /// The code cache's code for key material `material`.
    fn cached_code(&self, material: &[u8]) -> Option<MachineCode> {
        let mut store = self
            .cache
            .as_ref()?
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let StoredCode {
            code,
            align,
            relocs,
        } = store.get(material)?;
        Some(MachineCode {
            bytes: code.clone(),
            align: *align,
            krr: relocs.clone(),
            other: Vec::new(),
        })
    }

    /// Install `block` from the code cache if it is there (returned by [`Jit::collect`]
    /// like a compiled one); false if not (nothing done).
    pub(crate) fn submit_cached(&mut self, block_id: BlockId, block: &Block) -> bool {
        if self.cache.is_none() {
            return false;
        }
        let material = code_cache::key_material(block);
        let Some(code) = self.cached_code(&material) else {
            return false;
        };
        let (id, pending) = self.prepare(block_id, block);
        match self.install(id, &pending, &code) {
            Ok(()) => {
                self.mark_defined(id, pending, code.bytes.len(), true);
                true
            }
            Err(e) => {
                log::warn!("code cache: entry not usable ({e})");
                false
            }
        }
    }

    /// Keep freshly compiled `code` of `pending`'s block in the code cache (if on, and if
    /// all its relocations are krr's).
    fn remember(&self, pending: &Pending, code: MachineCode) {
        if let (Some(cache), Some(material)) = (self.cache.as_ref(), pending.material.as_ref()) {
            if code.other.is_empty() {
                let stored = StoredCode {
                    code: code.bytes,
                    align: code.align,
                    relocs: code.krr,
                };
                let mut store = cache.lock().unwrap_or_else(|e| e.into_inner());
                store.insert(material.clone(), stored);
            }
        }
    }

    /// Function `id` of `pending`'s block is defined: finalize it with the next batch.
    fn mark_defined(&mut self, id: FuncId, pending: Pending, size: usize, from_cache: bool) {
        if self.defined.is_empty() {
            self.defined_since = Instant::now();
        }
        self.defined.push(Defined {
            block_id: pending.block_id,
            id,
            size,
            slots: pending.slots,
            from_cache,
        });
    }

    /// Finalize every defined block.
    fn finalize(&mut self) -> Vec<(BlockId, CompiledBlock)> {
        self.module
            .finalize_definitions()
            .expect("finalizing compiled blocks");
        std::mem::take(&mut self.defined)
            .into_iter()
            .map(|d| {
                (
                    d.block_id,
                    CompiledBlock {
                        code: self.module.get_finalized_function(d.id),
                        code_size: d.size,
                        from_cache: d.from_cache,
                        _slots: d.slots,
                    },
                )
            })
            .collect()
    }

    /// Compile a batch of blocks (or take them from the code cache) and finalize them
    /// together, on this thread. (An engine uses either this or [`Jit::submit`].)
    pub(crate) fn compile(&mut self, blocks: &[&Block]) -> Vec<CompiledBlock> {
        assert!(self.defined.is_empty(), "no background blocks waiting");
        for block in blocks {
            let dump = worker::dump_wanted(block.start);
            let (id, pending) = self.prepare(BlockId::from_index(0), block);
            if std::env::var_os("KRR_CODE_CACHE_VERIFY").is_some() {
                if let Some(stored) = pending.material.as_ref().and_then(|m| self.cached_code(m)) {
                    self.build_ir(block);
                    let fresh = worker::generate(&mut self.ctx, &self.isa, id, false)
                        .expect("compiling for the check");
                    self.ctx.clear();
                    if fresh.bytes != stored.bytes || fresh.krr != stored.krr {
                        let at = fresh
                            .bytes
                            .iter()
                            .zip(&stored.bytes)
                            .position(|(a, b)| a != b);
                        eprintln!(
                            "  first difference at {at:?}: fresh {:02x?} stored {:02x?}; relocs equal: {}; insns {:?}",
                            at.map(|i| &fresh.bytes[i.saturating_sub(4)..(i + 12).min(fresh.bytes.len())]),
                            at.map(|i| &stored.bytes[i.saturating_sub(4)..(i + 12).min(stored.bytes.len())]),
                            fresh.krr == stored.krr,
                            block.insns.iter().map(|i| i.to_string()).collect::<Vec<_>>()
                        );
                        eprintln!(
                            "code cache check: block {:#x} ({} insns): cached code differs from a fresh compile ({} vs {} bytes)",
                            block.start,
                            block.insns.len(),
                            stored.bytes.len(),
                            fresh.bytes.len()
                        );
                    }
                }
            }
            if let Some(size) = self.install_cached(id, &pending) {
                self.mark_defined(id, pending, size, true);
                continue;
            }
            self.build_ir(block);
            let code = worker::generate(&mut self.ctx, &self.isa, id, dump).unwrap_or_else(|e| {
                // A lowering bug, not a guest condition: report the block and stop.
                panic!("Cranelift rejected block at {:#x}: {e}", block.start)
            });
            self.ctx.clear();
            self.install(id, &pending, &code)
                .expect("defining a compiled block");
            let size = code.bytes.len();
            self.remember(&pending, code);
            self.mark_defined(id, pending, size, false);
        }
        self.finalize().into_iter().map(|(_, b)| b).collect()
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        self.drain_into_cache();
        if let Some(cache) = self.cache.take() {
            cache.lock().unwrap_or_else(|e| e.into_inner()).save();
        }
        // SAFETY: the module is taken once, here, and never used again. Its code is
        // unreachable once the `Jit` goes: only the engine that owns this `Jit` enters
        // compiled code (through `enter`), and its block table and jump cache, which hold
        // the code pointers, are dropped with it; the compile worker never points into
        // the module's memory.
        unsafe { ManuallyDrop::take(&mut self.module).free_memory() }
    }
}
