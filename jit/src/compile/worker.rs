//! Background compilation: a thread that runs Cranelift's code generation and register
//! allocation (most of the compile cost) while the dispatcher goes on interpreting, and the
//! [`Jit`] methods that hand it blocks and install what it returns. IR is built and code
//! installed on the dispatcher's thread (the `JITModule` stays there); only finished
//! machine code and relocations come back.

use super::{CompiledBlock, Jit};
use crate::block::Block;
use crate::block_id::BlockId;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::Context;
use cranelift_module::{FuncId, Module, ModuleReloc};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A block handed to the compile worker: its IR and where its result goes.
struct Job {
    block_id: BlockId,
    id: FuncId,
    func: cranelift_codegen::ir::Function,
}

/// The worker's answer: machine code and relocations, ready for `define_function_bytes`.
struct Done {
    block_id: BlockId,
    id: FuncId,
    result: Result<(Vec<u8>, u64, Vec<ModuleReloc>), String>,
    time: Duration,
}

/// A thread that runs Cranelift's code generation and register allocation (most of the
/// compile cost) while the dispatcher goes on interpreting. The `JITModule` stays on the
/// dispatcher's thread: IR is built there and the code installed there.
pub(super) struct Worker {
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
                    let done = compile_job(&mut ctx, &isa, job, dump);
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

/// On the compile thread: generate `job`'s machine code in `ctx` (`dump`: print its IR and
/// code, for `KRR_DUMP_CODE`).
fn compile_job(ctx: &mut Context, isa: &OwnedTargetIsa, job: Job, dump: bool) -> Done {
    let t0 = Instant::now();
    ctx.clear();
    ctx.func = job.func;
    ctx.set_disasm(dump);
    if dump {
        eprintln!(
            "IR (tag {:#x}):\n{}",
            job.block_id.index(),
            ctx.func.display()
        );
    }
    let mut plane = cranelift_codegen::control::ControlPlane::default();
    let result = match ctx.compile(&**isa, &mut plane) {
        Ok(code) => {
            if let Some(v) = code.vcode.as_ref() {
                eprintln!("block (tag {:#x}):\n{v}", job.block_id.index());
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
    Done {
        block_id: job.block_id,
        id: job.id,
        result,
        time: t0.elapsed(),
    }
}

/// A block the background compiler finished, ready to run.
pub(crate) struct Installed {
    /// The block's id as given to [`Jit::submit`].
    pub block_id: BlockId,
    pub block: CompiledBlock,
}

impl Jit {
    /// Build `block`'s IR here and hand it to the compile thread; [`Jit::collect`] returns
    /// it compiled, with `block_id`.
    pub(crate) fn submit(&mut self, block_id: BlockId, block: &Block) {
        let (id, slots) = self.build_ir(block);
        let func = std::mem::replace(&mut self.ctx.func, cranelift_codegen::ir::Function::new());
        self.module.clear_context(&mut self.ctx);
        let isa = self.isa.clone();
        let worker = self.worker.get_or_insert_with(|| Worker::spawn(isa));
        worker
            .jobs
            .send(Job { block_id, id, func })
            .expect("the compile thread outlives the engine's sender");
        worker.in_flight += 1;
        self.pending_slots.insert(id, slots);
    }

    /// Blocks compiled in the background so far. Code is installed (finalized) in batches of
    /// at least `batch`, or whatever is ready once nothing is left in flight; `wait` blocks
    /// until everything submitted is installed. Returns the installed blocks and the compile
    /// thread's time spent on them.
    pub(crate) fn collect(&mut self, batch: usize, wait: bool) -> (Vec<Installed>, Duration) {
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
            self.defined
                .push((done.block_id, done.id, bytes.len(), slots));
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
            .map(|(block_id, id, code_size, slots)| Installed {
                block_id,
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
    pub(crate) fn in_flight(&self) -> usize {
        self.worker.as_ref().map_or(0, |w| w.in_flight) + self.defined.len()
    }
}
