//! The hot tier: a [`Builder`] that lowers the shared semantics to Cranelift IR, one function
//! per guest block, chained to its successors by tail calls.
//!
//! Shape of a compiled block (`tail` calling convention, `fn(cpu) -> exit`):
//! - entry: load `icount`; if the whole block does not fit in the budget, return
//!   [`EXIT_BUDGET`] before executing anything (the dispatcher then interprets up to the limit);
//! - body: guest GPRs live in Cranelift variables, loaded on first use and written back at
//!   exits; flags stay lazy with the producing operation known at compile time;
//! - memory: an inline TLB lookup (index, tag compare, add) with a cold helper call on a miss;
//! - faults: a cold exit per instruction stores the registers as they were when that
//!   instruction started, its RIP and the instruction count, and returns [`EXIT_EXCEPTION`];
//! - exits: to a constant target through a per-exit slot: if the slot holds the target's code
//!   the block tail-calls it (`return_call_indirect`), else it returns [`EXIT_NORMAL`] with
//!   `cpu.exit_slot` pointing at the slot for the dispatcher to fill.

use crate::block::Block;
use crate::engine::{jump_slot, JumpEntry, JUMP_CACHE};
use crate::helpers;
use crate::sem::{self, flags::FlagOp, Abort, Builder, Cmp, FlagState, Flow, Helper, R};
use cranelift_codegen::ir::{
    condcodes::{CondCode, IntCC},
    types, AbiParam, BlockArg, InstBuilder, MemFlagsData, SigRef, Signature, Type, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::{settings, settings::Configurable, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};
use iced_x86::Instruction;
use krr_runtime::{mmu, offsets, CpuState, ExceptionRecord};
use std::collections::HashMap;
use std::mem::offset_of;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const EXIT_NORMAL: u64 = 0;
pub const EXIT_BUDGET: u64 = 1;
pub const EXIT_EXCEPTION: u64 = 2;

/// A compiled block: its code and the chaining slots its exits jump through.
pub struct CompiledBlock {
    pub code: *const u8,
    pub code_size: usize,
    /// Exit slots (taken / not-taken). Boxed so compiled code can hold their address.
    _slots: Box<[u64; 2]>,
}

type Trampoline = extern "C" fn(*mut CpuState, *const u8) -> u64;

pub struct Jit {
    module: JITModule,
    isa: OwnedTargetIsa,
    worker: Option<Worker>,
    /// Blocks compiled by the worker and defined in the module, not yet finalized.
    defined: Vec<(u64, FuncId, usize, Box<[u64; 2]>)>,
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

impl Jit {
    /// A JIT whose code looks computed and cross-page targets up in `jump_cache`, the
    /// engine's jump cache (`JUMP_CACHE` entries that stay at this address).
    pub(crate) fn new(jump_cache: *const JumpEntry) -> Result<Jit, String> {
        let mut flags = settings::builder();
        let set = |f: &mut settings::Builder, k: &str, v: &str| {
            f.set(k, v).map_err(|e| format!("setting {k}={v}: {e}"))
        };
        set(&mut flags, "opt_level", "none")?;
        set(&mut flags, "regalloc_algorithm", "backtracking")?;
        set(
            &mut flags,
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        )?;
        set(&mut flags, "preserve_frame_pointers", "true")?;
        set(&mut flags, "is_pic", "false")?;
        let isa = cranelift_native::builder()
            .map_err(|e| format!("host ISA: {e}"))?
            .finish(settings::Flags::new(flags))
            .map_err(|e| format!("host ISA: {e}"))?;
        let mut jb = JITBuilder::with_isa(isa.clone(), cranelift_module::default_libcall_names());
        jb.symbol("krr_load_slow", helpers::krr_load_slow as *const u8);
        jb.symbol("krr_store_slow", helpers::krr_store_slow as *const u8);
        jb.symbol("krr_probe_write", helpers::krr_probe_write as *const u8);
        jb.symbol("krr_load128", helpers::krr_load128 as *const u8);
        jb.symbol("krr_store128", helpers::krr_store128 as *const u8);
        jb.symbol("krr_helper", helpers::krr_helper as *const u8);
        jb.symbol("krr_interpret", helpers::krr_interpret as *const u8);
        let mut module = JITModule::new(jb);
        let cc = module.isa().default_call_conv();
        let sig = |params: usize| {
            let mut s = Signature::new(cc);
            for _ in 0..params {
                s.params.push(AbiParam::new(PTR));
            }
            s.returns.push(AbiParam::new(PTR));
            s
        };
        let declare = |m: &mut JITModule, name: &str, n: usize| {
            m.declare_function(name, Linkage::Import, &sig(n))
                .map_err(|e| e.to_string())
        };
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        // Compiled blocks reach the Rust helpers through shims that preserve every register
        // (`preserve_all`): a slow path then clobbers nothing, so block code keeps its values
        // in caller-saved registers and the fast path saves no callee-saved ones on entry and
        // restores them before each tail call. A shim takes only the CPU pointer (already in
        // the first argument register), reads the other arguments from `cpu.helper_args` and
        // leaves the helper's result in `cpu.helper_value` (that convention has no return
        // values).
        let mut shim = |m: &mut JITModule, name: &str, n: usize| -> Result<FuncId, String> {
            let target = declare(m, name, n)?;
            let mut shim_sig = Signature::new(CallConv::PreserveAll);
            shim_sig.params.push(AbiParam::new(PTR));
            let id = m
                .declare_anonymous_function(&shim_sig)
                .map_err(|e| e.to_string())?;
            ctx.func.signature = shim_sig;
            {
                let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                let target_ref = m.declare_func_in_func(target, fb.func);
                let entry = fb.create_block();
                fb.append_block_params_for_function_params(entry);
                fb.switch_to_block(entry);
                let cpu = fb.block_params(entry)[0];
                let mut args = vec![cpu];
                for i in 0..n as i32 - 1 {
                    let a =
                        fb.ins()
                            .load(types::I64, state_flags(), cpu, offsets::HELPER_ARGS + 8 * i);
                    args.push(a);
                }
                let call = fb.ins().call(target_ref, &args);
                let r = fb.inst_results(call)[0];
                fb.ins().store(state_flags(), r, cpu, offsets::HELPER_VALUE);
                fb.ins().return_(&[]);
                fb.seal_all_blocks();
                fb.finalize(m.target_config());
            }
            m.define_function(id, &mut ctx)
                .map_err(|e| format!("helper shim {name}: {e:?}"))?;
            m.clear_context(&mut ctx);
            Ok(id)
        };
        let shims = [
            shim(&mut module, "krr_load_slow", 4)?,
            shim(&mut module, "krr_store_slow", 4)?,
            shim(&mut module, "krr_probe_write", 3)?,
            shim(&mut module, "krr_load128", 3)?,
            shim(&mut module, "krr_store128", 3)?,
            shim(&mut module, "krr_helper", 5)?,
            shim(&mut module, "krr_interpret", 2)?,
        ];

        // Blocks take the CPU state, the instruction count and the guest registers in
        // `PASSED_GPRS`, which thus stay in host registers along a chain of blocks.
        let mut block_sig = Signature::new(CallConv::Tail);
        block_sig.params.push(AbiParam::new(PTR));
        block_sig.params.push(AbiParam::new(types::I64));
        for _ in PASSED_GPRS {
            block_sig.params.push(AbiParam::new(types::I64));
        }
        block_sig.returns.push(AbiParam::new(PTR));

        // The trampoline: a host-convention function that enters the chain of tail-calling
        // blocks and returns the exit code of the last one.
        ctx.func.signature = sig(2);
        let tramp_id = module
            .declare_anonymous_function(&ctx.func.signature)
            .map_err(|e| e.to_string())?;
        {
            let mut fb = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = fb.create_block();
            fb.append_block_params_for_function_params(entry);
            fb.switch_to_block(entry);
            let cpu = fb.block_params(entry)[0];
            let code = fb.block_params(entry)[1];
            let sref = fb.import_signature(block_sig.clone());
            let icount = fb
                .ins()
                .load(types::I64, state_flags(), cpu, offsets::ICOUNT);
            let mut args = vec![cpu, icount];
            for r in PASSED_GPRS {
                args.push(
                    fb.ins()
                        .load(types::I64, state_flags(), cpu, offsets::gpr(r)),
                );
            }
            let call = fb.ins().call_indirect(sref, code, &args);
            let r = fb.inst_results(call)[0];
            fb.ins().return_(&[r]);
            fb.seal_all_blocks();
            fb.finalize(module.target_config());
        }
        module
            .define_function(tramp_id, &mut ctx)
            .map_err(|e| format!("{e:?}"))?;
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(|e| e.to_string())?;
        let tramp_ptr = module.get_finalized_function(tramp_id);
        // Blocks call the shims by absolute address: code finalized later may lie more than
        // 2 GiB away from them, out of reach of a relative call.
        let [load, store, probe_write, load128, store128, helper, interpret] =
            shims.map(|id| module.get_finalized_function(id) as u64);
        let refs = HelperRefs {
            load,
            store,
            probe_write,
            load128,
            store128,
            helper,
            interpret,
            jump_cache: jump_cache as u64,
        };
        // SAFETY: the trampoline was just compiled with exactly this host signature.
        let trampoline: Trampoline =
            unsafe { std::mem::transmute::<*const u8, Trampoline>(tramp_ptr) };
        Ok(Jit {
            module,
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
    pub fn enter(&self, cpu: &mut CpuState, code: *const u8) -> u64 {
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
        lower_block(fb, self.refs, &self.block_sig, block, &slots, target);
        (id, slots)
    }

    /// Compile a batch of blocks and finalize them together.
    pub fn compile(&mut self, blocks: &[&Block]) -> Vec<CompiledBlock> {
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

/// A block handed to the compile worker: its IR and where its result goes.
struct Job {
    tag: u64,
    id: FuncId,
    func: cranelift_codegen::ir::Function,
}

/// The worker's answer: machine code and relocations, ready for `define_function_bytes`.
struct Done {
    tag: u64,
    id: FuncId,
    result: Result<(Vec<u8>, u64, Vec<ModuleReloc>), String>,
    time: Duration,
}

/// A thread that runs Cranelift's code generation and register allocation (most of the
/// compile cost) while the dispatcher goes on interpreting. The `JITModule` stays on the
/// dispatcher's thread: IR is built there and the code installed there.
struct Worker {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    in_flight: usize,
}

impl Worker {
    fn spawn(isa: OwnedTargetIsa) -> Worker {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        std::thread::Builder::new()
            .name("krr-compile".into())
            .spawn(move || {
                let mut ctx = Context::new();
                let dump = std::env::var_os("KRR_DUMP_CODE").is_some();
                // Ends when the engine drops its sender.
                while let Ok(job) = job_rx.recv() {
                    let t0 = Instant::now();
                    ctx.clear();
                    ctx.func = job.func;
                    ctx.set_disasm(dump);
                    if dump {
                        eprintln!("IR (tag {:#x}):\n{}", job.tag, ctx.func.display());
                    }
                    let mut plane = cranelift_codegen::control::ControlPlane::default();
                    let result = match ctx.compile(&*isa, &mut plane) {
                        Ok(code) => {
                            if let Some(v) = code.vcode.as_ref() {
                                eprintln!("block (tag {:#x}):\n{v}", job.tag);
                            }
                            Ok(code.buffer.alignment as u64)
                        }
                        Err(e) => Err(format!("{:?}\n{}", e.inner, e.func.display())),
                    };
                    let result = result.map(|alignment| {
                        let code = ctx.compiled_code().expect("just compiled");
                        let align = alignment
                            .max(isa.function_alignment().minimum as u64)
                            .max(isa.symbol_alignment());
                        let relocs = code
                            .buffer
                            .relocs()
                            .iter()
                            .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, job.id))
                            .collect();
                        (code.code_buffer().to_vec(), align, relocs)
                    });
                    let done = Done {
                        tag: job.tag,
                        id: job.id,
                        result,
                        time: t0.elapsed(),
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the compile thread");
        Worker {
            jobs,
            done,
            in_flight: 0,
        }
    }
}

/// A block the background compiler finished, ready to run.
pub struct Installed {
    /// The caller's tag from [`Jit::submit`].
    pub tag: u64,
    pub block: CompiledBlock,
}

impl Jit {
    /// Build `block`'s IR here and hand it to the compile thread; [`Jit::collect`] returns
    /// it compiled, with `tag`.
    pub fn submit(&mut self, tag: u64, block: &Block) {
        let (id, slots) = self.build_ir(block);
        let func = std::mem::replace(&mut self.ctx.func, cranelift_codegen::ir::Function::new());
        self.module.clear_context(&mut self.ctx);
        let isa = self.isa.clone();
        let worker = self.worker.get_or_insert_with(|| Worker::spawn(isa));
        worker
            .jobs
            .send(Job { tag, id, func })
            .expect("the compile thread outlives the engine's sender");
        worker.in_flight += 1;
        self.pending_slots.insert(id, slots);
    }

    /// Blocks compiled in the background so far. Code is installed (finalized) in batches of
    /// at least `batch`, or whatever is ready once nothing is left in flight; `wait` blocks
    /// until everything submitted is installed. Returns the installed blocks and the compile
    /// thread's time spent on them.
    pub fn collect(&mut self, batch: usize, wait: bool) -> (Vec<Installed>, Duration) {
        let mut time = Duration::ZERO;
        let Some(worker) = self.worker.as_mut() else {
            return (Vec::new(), time);
        };
        loop {
            let next = if wait && worker.in_flight > 0 {
                worker.done.recv().ok()
            } else {
                worker.done.try_recv().ok()
            };
            let Some(done) = next else { break };
            worker.in_flight -= 1;
            time += done.time;
            let slots = self
                .pending_slots
                .remove(&done.id)
                .expect("slots kept for every submitted block");
            let (bytes, align, relocs) = match done.result {
                Ok(r) => r,
                // A lowering bug, not a guest condition: report the block and stop.
                Err(e) => panic!("Cranelift rejected a block: {e}"),
            };
            self.module
                .define_function_bytes(done.id, align, &bytes, &relocs)
                .expect("defining a compiled block");
            if self.defined.is_empty() {
                self.defined_since = Instant::now();
            }
            self.defined.push((done.tag, done.id, bytes.len(), slots));
        }
        // Each finalize starts a fresh code page: wait for a batch, unless blocks have been
        // ready for a while (a quiet phase) or the caller waits for everything.
        let ready = !self.defined.is_empty()
            && (self.defined.len() >= batch
                || (wait && worker.in_flight == 0)
                || self.defined_since.elapsed() >= Duration::from_millis(2));
        if !ready {
            return (Vec::new(), time);
        }
        self.module
            .finalize_definitions()
            .expect("finalizing compiled blocks");
        let installed = std::mem::take(&mut self.defined)
            .into_iter()
            .map(|(tag, id, code_size, slots)| Installed {
                tag,
                block: CompiledBlock {
                    code: self.module.get_finalized_function(id),
                    code_size,
                    _slots: slots,
                },
            })
            .collect();
        (installed, time)
    }

    /// Blocks submitted and not yet installed.
    pub fn in_flight(&self) -> usize {
        self.worker.as_ref().map_or(0, |w| w.in_flight) + self.defined.len()
    }
}

/// Addresses block code refers to: each helper's `preserve_all` shim, and the jump cache.
#[derive(Clone, Copy)]
struct HelperRefs {
    load: u64,
    store: u64,
    probe_write: u64,
    load128: u64,
    store128: u64,
    helper: u64,
    interpret: u64,
    jump_cache: u64,
}

struct Refs {
    helpers: HelperRefs,
    /// The shims' signature (`preserve_all`, the CPU pointer only).
    shim_sig: SigRef,
    block_sig: SigRef,
}

fn state_flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

fn guest_flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
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

struct PendingExit {
    block: cranelift_codegen::ir::Block,
    snapshot: Vec<(usize, Value)>,
    flags: Option<FlagState<Value>>,
    rip: u64,
    index: u32,
}

struct Lower<'a> {
    pending_exits: Vec<PendingExit>,
    fb: FunctionBuilder<'a>,
    refs: Refs,
    cpu: Value,
    icount: Value,
    insn: Instruction,
    insn_ptr: *const Instruction,
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
}

fn lower_block(
    mut fb: FunctionBuilder<'_>,
    helpers: HelperRefs,
    block_sig: &Signature,
    block: &Block,
    slots: &[u64; 2],
    target: cranelift_codegen::isa::TargetFrontendConfig,
) {
    let mut shim_sig = Signature::new(CallConv::PreserveAll);
    shim_sig.params.push(AbiParam::new(PTR));
    let refs = Refs {
        helpers,
        shim_sig: fb.import_signature(shim_sig),
        block_sig: fb.import_signature(block_sig.clone()),
    };
    let entry = fb.create_block();
    fb.append_block_params_for_function_params(entry);
    fb.switch_to_block(entry);
    let cpu = fb.block_params(entry)[0];
    let icount = fb.block_params(entry)[1];
    let passed: Vec<Value> = fb.block_params(entry)[2..].to_vec();
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
    for (&r, &v) in PASSED_GPRS.iter().zip(&passed) {
        fb.ins().store(state_flags(), v, cpu, offsets::gpr(r));
    }
    let code = fb.ins().iconst(types::I64, EXIT_BUDGET as i64);
    fb.ins().return_(&[code]);
    fb.switch_to_block(body);
    let regs: [Variable; 16] = std::array::from_fn(|_| fb.declare_var(types::I64));
    // The passed registers arrive in host registers; the state's copies are stale.
    for (&r, &v) in PASSED_GPRS.iter().zip(&passed) {
        fb.def_var(regs[r], v);
    }
    // User code uses MMU index 1, with alignment checking the checked index 3 (every access
    // takes the slow path, which raises #AC).
    let mmu_idx = ((block.mode & 3) == 3) as u64
        | if block.mode & crate::engine::MODE_ALIGNMENT_CHECK != 0 {
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
        insn_ptr: std::ptr::null(),
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
            l.emit_flow(flow, cond, i as u32 + 1, slots);
            l.terminated = true;
            break;
        }
        if l.ctx.stored && i + 1 < block.insns.len() {
            l.smc_check(insn.next_ip(), i as u32 + 1);
        }
    }
    if !l.terminated {
        let last = block.insns.last().expect("blocks are never empty");
        l.emit_flow(
            Flow::Direct(last.next_ip()),
            None,
            block.insns.len() as u32,
            slots,
        );
    }
    l.emit_pending_exits();
    l.fb.seal_all_blocks();
    l.fb.finalize(target);
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
    /// Compile a block that branches to itself as a real loop: the registers in `regs` (the
    /// ones it uses) stay in host registers across iterations and only the budget is checked
    /// on the back edge. Any other register it writes after all is stored on the back edge.
    fn begin_self_loop(&mut self, start: u64, regs: u16) {
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
    fn exit_to(&mut self, target: u64, retired: u32, slot: *const u64) {
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
                let code = self.fb.ins().iconst(types::I64, EXIT_NORMAL as i64);
                self.fb.ins().return_(&[code]);
                return;
            }
        }
        self.flush_except(PASSED_MASK);
        self.chain_exit(target, retired, slot);
    }

    fn begin_insn(&mut self, index: u32, insn: &Instruction) {
        self.insn = *insn;
        self.insn_ptr = insn as *const Instruction;
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

    /// The cold block that leaves with the state as of the current instruction's start. Its
    /// body is emitted at the end of the function (Cranelift wants the current block filled
    /// before switching away).
    fn fault_exit(&mut self) -> cranelift_codegen::ir::Block {
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

    fn emit_pending_exits(&mut self) {
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
            let code = self.fb.ins().iconst(types::I64, EXIT_EXCEPTION as i64);
            self.fb.ins().return_(&[code]);
        }
    }

    fn store_exception(&mut self, vector: u8, error_code: Option<u32>, software: bool) {
        let base = offset_of!(CpuState, exception) as i32;
        let rec = ExceptionRecord {
            vector,
            has_error_code: error_code.is_some(),
            software: false,
            error_code: error_code.unwrap_or(0),
            address: 0,
        };
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
    fn dead_end(&mut self) {
        let b = self.fb.create_block();
        self.fb.switch_to_block(b);
        self.terminated = true;
    }

    fn check_status_after_call(&mut self, status: Value) {
        let exit = self.fault_exit();
        let cont = self.fb.create_block();
        self.fb.ins().brif(status, exit, &[], cont, &[]);
        self.fb.switch_to_block(cont);
    }

    fn emit_flow(
        &mut self,
        flow: Flow<Value>,
        cond: Option<Value>,
        retired: u32,
        slots: &[u64; 2],
    ) {
        match flow {
            Flow::Jump(t) => {
                self.flush();
                self.state_store(offsets::RIP, t);
                self.store_icount(retired);
                let z = self.fb.ins().iconst(types::I64, 0);
                self.state_store(offsets::EXIT_SLOT, z);
                let code = self.fb.ins().iconst(types::I64, EXIT_NORMAL as i64);
                self.fb.ins().return_(&[code]);
            }
            Flow::Indirect(t) => {
                self.flush_except(PASSED_MASK);
                self.lookup_exit(t, retired);
            }
            Flow::Direct(t) => self.exit_to(t, retired, &slots[0] as *const u64),
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
                self.exit_to(taken, retired, &slots[0] as *const u64);
                (self.dirty, self.loaded, self.flags, self.flags_dirty) =
                    (dirty, loaded, flags, flags_dirty);
                self.fb.switch_to_block(nb);
                self.exit_to(not_taken, retired, &slots[1] as *const u64);
            }
        }
    }

    /// After an instruction that wrote memory: if it wrote a page holding translated code,
    /// leave (with that instruction retired) so the dispatcher invalidates stale blocks before
    /// the next instruction runs.
    fn smc_check(&mut self, next_rip: u64, retired: u32) {
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
        let code = self.fb.ins().iconst(types::I64, EXIT_NORMAL as i64);
        self.fb.ins().return_(&[code]);
        (self.dirty, self.loaded, self.flags, self.flags_dirty) =
            (dirty, loaded, flags, flags_dirty);
        self.fb.switch_to_block(cont);
    }

    /// Leave towards a constant target: tail-call it through its slot when linked, else
    /// return to the dispatcher with the slot's address so it can link it.
    fn chain_exit(&mut self, target: u64, retired: u32, slot: *const u64) {
        if target & !0xfff != self.block_start & !0xfff {
            // Links stay within a page (see the engine's `link`): look other pages up.
            let t = self.iconst(target);
            self.lookup_exit(t, retired);
            return;
        }
        let args = self.next_block_args(retired);
        let slot_addr = self.fb.ins().iconst(types::I64, slot as i64);
        let f = self.fb.ins().load(types::I64, state_flags(), slot_addr, 0);
        let linked = self.fb.ins().icmp_imm_u(IntCC::NotEqual, f, 0);
        self.tail_call_if(linked, f, &args);
        let rip = self.fb.ins().iconst(types::I64, target as i64);
        self.state_store(offsets::RIP, rip);
        self.state_store(offsets::ICOUNT, args[1]);
        self.state_store(offsets::EXIT_SLOT, slot_addr);
        let from = self.fb.ins().iconst(types::I64, self.block_start as i64);
        self.state_store(offsets::EXIT_FROM, from);
        let code = self.fb.ins().iconst(types::I64, EXIT_NORMAL as i64);
        self.fb.ins().return_(&[code]);
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
        let base = self.refs.helpers.jump_cache;
        let entry = match self.const_of(target) {
            Some(t) => self
                .fb
                .ins()
                .iconst(types::I64, (base + 32 * jump_slot(t) as u64) as i64),
            None => {
                let hi = self.fb.ins().ushr_imm_u(target, 12);
                let h = self.fb.ins().bxor(target, hi);
                let idx = self.fb.ins().band_imm_s(h, (JUMP_CACHE - 1) as i64);
                let off = self.fb.ins().ishl_imm_u(idx, 5);
                self.fb.ins().iadd_imm_s(off, base as i64)
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
        let code = self.fb.ins().iconst(types::I64, EXIT_NORMAL as i64);
        self.fb.ins().return_(&[code]);
    }

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
        f: u64,
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

    /// Call a helper through its register-preserving shim at `shim`; returns the helper's
    /// result.
    fn call_fn(&mut self, shim: u64, args: &[Value]) -> Value {
        debug_assert!(args[0] == self.cpu && args.len() <= 5);
        for (i, &a) in args[1..].iter().enumerate() {
            self.state_store(offsets::HELPER_ARGS + 8 * i as i32, a);
        }
        let cpu = self.cpu;
        let callee = self.fb.ins().iconst(types::I64, shim as i64);
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
        let id = self.iconst(helpers::helper_id(Helper::MaterializeFlags));
        let z = self.iconst(0);
        let cpu = self.cpu;
        let bits = self.call_fn(self.refs.helpers.helper, &[cpu, id, z, z, z]);
        let f = FlagState {
            op: FlagOp::CONCRETE,
            res: bits,
            a: z,
            b: z,
            aux: z,
        };
        // The helper left the state holding exactly these concrete flags.
        self.flags = Some(f);
        self.flags_dirty = false;
        if !self.ctx.flags_dirty {
            self.ctx.flags = Some(f);
        }
        f
    }
    fn set_flags(&mut self, f: FlagState<Value>) {
        self.flags = Some(f);
        self.flags_dirty = true;
    }
    fn load(&mut self, addr: Value, size: u32) -> R<Value> {
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
    fn store(&mut self, addr: Value, v: Value, size: u32) -> R<()> {
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
    fn probe_write(&mut self, addr: Value, size: u32) -> R<()> {
        let (hit, _) = self.tlb_probe(addr, size, true);
        let slow = self.fb.create_block();
        let join = self.fb.create_block();
        self.fb.ins().brif(hit, join, &[], slow, &[]);
        let f = self.refs.helpers.probe_write;
        self.store_slow_path(slow, f, addr, None, size, join);
        Ok(())
    }
    fn load128(&mut self, addr: Value) -> R<(Value, Value)> {
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
    fn store128(&mut self, addr: Value, lo: Value, hi: Value) -> R<()> {
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
        let code = self.fb.ins().iconst(types::I64, EXIT_EXCEPTION as i64);
        self.fb.ins().return_(&[code]);
        self.dead_end();
        Abort
    }
    fn unimplemented(&mut self) -> Abort {
        // The interpreter raises #UD and counts it; compiled code just hands over.
        let z = self.iconst(0);
        let _ = self.call(Helper::Interpret, [z, z, z]);
        // The interpreter cannot retire an unimplemented instruction, so this is unreachable.
        let code = self.fb.ins().iconst(types::I64, EXIT_EXCEPTION as i64);
        self.fb.ins().return_(&[code]);
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
            let p = self.fb.ins().iconst(types::I64, self.insn_ptr as i64);
            let status = self.call_fn(self.refs.helpers.interpret, &[cpu, p]);
            let exit = self.fb.create_block();
            let cont = self.fb.create_block();
            self.fb.ins().brif(status, exit, &[], cont, &[]);
            self.fb.set_cold_block(exit);
            self.fb.switch_to_block(exit);
            let code = self.fb.ins().iconst(types::I64, EXIT_EXCEPTION as i64);
            self.fb.ins().return_(&[code]);
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
        let id = self.iconst(helpers::helper_id(h));
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
    fn halt(&mut self) -> Abort {
        unreachable!("system instructions are handed to the interpreter before they halt")
    }
    fn commit(&mut self) {}
    fn flow(&mut self, f: Flow<Value>, cond: Option<Value>) {
        self.flow = Some((f, cond));
    }
}
