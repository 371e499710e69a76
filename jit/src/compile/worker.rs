//! Background compilation: a thread that runs Cranelift's code generation and register
//! allocation (most of the compile cost) while the dispatcher goes on interpreting, and the
//! [`Jit`] methods that hand it blocks and install what it returns. IR is built and code
//! installed on the dispatcher's thread (the `JITModule` stays there); only finished
//! machine code and relocations come back.

use super::reloc::{self, KrrReloc};
use super::{CompiledBlock, Jit};
use crate::block::Block;
use crate::block_id::BlockId;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::Context;
use cranelift_module::{FuncId, ModuleReloc};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A block handed to the compile worker: its IR and where its result goes.
struct Job {
    block_id: BlockId,
    /// The guest block's linear start (for `KRR_DUMP_CODE`).
    start: u64,
    id: FuncId,
    func: cranelift_codegen::ir::Function,
}

/// Machine code as Cranelift made it, ready to be patched (`reloc`) and installed.
pub(super) struct MachineCode {
    pub bytes: Vec<u8>,
    pub align: u64,
    /// krr's relocations (process-specific addresses).
    pub krr: Vec<KrrReloc>,
    /// Any other relocation, for the module (none in practice; such code is not cached).
    pub other: Vec<ModuleReloc>,
}

/// The worker's answer.
struct Done {
    id: FuncId,
    result: Result<MachineCode, String>,
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
                // Ends when the engine drops its sender.
                while let Ok(job) = job_rx.recv() {
                    let dump = dump_wanted(job.start);
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

/// `KRR_DUMP_CODE`: print the IR and machine code of every block compiled (`1`), or only of
/// the block starting at one linear address (`0xffffffff81000000`).
pub(super) fn dump_wanted(start: u64) -> bool {
    static WANTED: std::sync::OnceLock<Option<Option<u64>>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| {
        let v = std::env::var("KRR_DUMP_CODE").ok()?;
        Some(
            v.strip_prefix("0x")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok()),
        )
    });
    match wanted {
        None => false,
        Some(None) => true,
        Some(Some(at)) => *at == start,
    }
}

/// On the compile thread: generate `job`'s machine code in `ctx` (`dump`: print its IR and
/// code, for `KRR_DUMP_CODE`).
fn compile_job(ctx: &mut Context, isa: &OwnedTargetIsa, job: Job, dump: bool) -> Done {
    let t0 = Instant::now();
    ctx.clear();
    ctx.func = job.func;
    if dump {
        eprintln!(
            "IR of the block at {:#x} (tag {:#x}):\n{}",
            job.start,
            job.block_id.index(),
            ctx.func.display()
        );
    }
    Done {
        id: job.id,
        result: generate(ctx, isa, job.id, dump),
        time: t0.elapsed(),
    }
}

/// Generate the machine code of `ctx.func`, function `id` of the module (`dump`: print it).
pub(super) fn generate(
    ctx: &mut Context,
    isa: &OwnedTargetIsa,
    id: FuncId,
    dump: bool,
) -> Result<MachineCode, String> {
    ctx.set_disasm(dump);
    let mut plane = cranelift_codegen::control::ControlPlane::default();
    let alignment = match ctx.compile(&**isa, &mut plane) {
        Ok(code) => {
            if let Some(v) = code.vcode.as_ref() {
                eprintln!("block ({} bytes):\n{v}", code.code_info().total_size);
            }
            code.buffer.alignment as u64
        }
        Err(e) => return Err(format!("{:?}\n{}", e.inner, e.func.display())),
    };
    let code = ctx.compiled_code().expect("just compiled");
    let align = alignment
        .max(isa.function_alignment().minimum as u64)
        .max(isa.symbol_alignment());
    let (krr, other) = reloc::split(code.buffer.relocs(), &ctx.func, id);
    Ok(MachineCode {
        bytes: code.code_buffer().to_vec(),
        align,
        krr,
        other,
    })
}

/// A block the background compiler finished, ready to run.
pub(crate) struct Installed {
    /// The block's id as given to [`Jit::submit`].
    pub block_id: BlockId,
    pub block: CompiledBlock,
}

impl Jit {
    /// Hand `block` to the compile thread (its IR built here); [`Jit::collect`] returns it
    /// compiled, with `block_id`. A block the code cache has is installed from there instead.
    pub(crate) fn submit(&mut self, block_id: BlockId, block: &Block) {
        let (id, pending) = self.prepare(block_id, block);
        if let Some(size) = self.install_cached(id, &pending) {
            self.mark_defined(id, pending, size, true);
            return;
        }
        self.build_ir(block);
        let func = std::mem::replace(&mut self.ctx.func, cranelift_codegen::ir::Function::new());
        self.ctx.clear();
        let isa = self.isa.clone();
        let worker = self.worker.get_or_insert_with(|| Worker::spawn(isa));
        worker
            .jobs
            .send(Job {
                block_id,
                start: block.start,
                id,
                func,
            })
            .expect("the compile thread outlives the engine's sender");
        worker.in_flight += 1;
        self.pending.insert(id, pending);
    }

    /// Blocks compiled in the background (or found in the code cache) so far. Code is
    /// installed (finalized) in batches of at least `batch`, or whatever is ready once
    /// nothing is left in flight; `wait` blocks until everything submitted is installed.
    /// Returns the installed blocks and the compile thread's time spent on them.
    pub(crate) fn collect(&mut self, batch: usize, wait: bool) -> (Vec<Installed>, Duration) {
        let mut time = Duration::ZERO;
        while let Some(worker) = self.worker.as_mut() {
            let next = if wait && worker.in_flight > 0 {
                worker.done.recv().ok()
            } else {
                worker.done.try_recv().ok()
            };
            let Some(done) = next else { break };
            worker.in_flight -= 1;
            time += done.time;
            let pending = self
                .pending
                .remove(&done.id)
                .expect("kept for every submitted block");
            let code = match done.result {
                Ok(r) => r,
                // A lowering bug, not a guest condition: report the block and stop.
                Err(e) => panic!("Cranelift rejected a block: {e}"),
            };
            self.install(done.id, &pending, &code)
                .expect("defining a compiled block");
            let size = code.bytes.len();
            self.remember(&pending, code);
            self.mark_defined(done.id, pending, size, false);
        }
        let worker_idle = self.worker.as_ref().is_none_or(|w| w.in_flight == 0);
        // Each finalize starts a fresh code page: wait for a batch, unless blocks have been
        // ready for a while (a quiet phase) or the caller waits for everything.
        let ready = !self.defined.is_empty()
            && (self.defined.len() >= batch
                || (wait && worker_idle)
                || self.defined_since.elapsed() >= Duration::from_millis(2));
        if !ready {
            return (Vec::new(), time);
        }
        let installed = self
            .finalize()
            .into_iter()
            .map(|(block_id, block)| Installed { block_id, block })
            .collect();
        (installed, time)
    }

    /// With the code cache on, at the end: wait (up to a second) for the blocks still being
    /// compiled and keep their code in the cache (they were hot; the next run installs them instead of
    /// compiling them again). A cold run's compile thread is often behind at the end.
    pub(super) fn drain_into_cache(&mut self) {
        if self.cache.is_none() {
            return;
        }
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        // Bounded: an exit is not held up long by a compile thread far behind.
        let deadline = Instant::now() + Duration::from_secs(1);
        while worker.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(done) = worker.done.recv_timeout(left) else {
                break;
            };
            worker.in_flight -= 1;
            if let (Some(pending), Ok(code)) = (self.pending.remove(&done.id), done.result) {
                self.remember(&pending, code);
            }
        }
    }

    /// Blocks submitted and not yet installed.
    pub(crate) fn in_flight(&self) -> usize {
        self.worker.as_ref().map_or(0, |w| w.in_flight) + self.defined.len()
    }
}
