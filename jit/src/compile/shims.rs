//! Start-up code generation: the host ISA and its settings, the module's imports of the Rust
//! helpers, the `preserve_all` shims through which compiled blocks call those helpers, the
//! block signature, and the trampoline that enters compiled code from Rust. Everything here
//! runs once, in [`super::Jit::new`].

use super::reloc::Sym;
use super::{state_flags, PASSED_GPRS, PTR};
use crate::helpers;
use crate::jump_cache::JumpEntry;
use cranelift_codegen::ir::{types, AbiParam, InstBuilder, Signature};
use cranelift_codegen::isa::{CallConv, OwnedTargetIsa};
use cranelift_codegen::{settings, settings::Configurable, Context};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module};
use krr_runtime::offsets;

/// How many helpers compiled code calls (one shim each).
const HELPER_COUNT: usize = 7;

/// The helpers compiled code calls: symbol, function and argument count (the CPU pointer
/// included), in the order of [`HelperRefs`]' fields.
fn helper_table() -> [(&'static str, *const u8, usize); HELPER_COUNT] {
    [
        ("krr_load_slow", helpers::krr_load_slow as *const u8, 4),
        ("krr_store_slow", helpers::krr_store_slow as *const u8, 4),
        ("krr_probe_write", helpers::krr_probe_write as *const u8, 3),
        ("krr_load128", helpers::krr_load128 as *const u8, 3),
        ("krr_store128", helpers::krr_store128 as *const u8, 3),
        ("krr_helper", helpers::krr_helper as *const u8, 5),
        ("krr_interpret", helpers::krr_interpret as *const u8, 2),
    ]
}

/// Where this process keeps what block code refers to: each helper's `preserve_all` shim (in
/// [`helper_table`] order), and the jump cache. Code names them with [`Sym`]s, patched in
/// when a block is installed (`reloc`).
#[derive(Clone, Copy)]
pub(super) struct HelperRefs {
    pub(super) shims: [u64; HELPER_COUNT],
    pub(super) jump_cache: u64,
}

impl HelperRefs {
    /// The finalized shims' addresses (`shims` as [`define_shims`] returned them) and the
    /// jump cache's.
    pub(super) fn new(
        module: &JITModule,
        shims: [FuncId; HELPER_COUNT],
        jump_cache: *const JumpEntry,
    ) -> HelperRefs {
        HelperRefs {
            shims: shims.map(|id| module.get_finalized_function(id) as u64),
            jump_cache: jump_cache as u64,
        }
    }
}

/// The symbols of the helpers' shims, by helper. Blocks call the shims by absolute address
/// (`movabs`): code finalized later may lie more than 2 GiB away from them, out of reach of a
/// relative call.
#[derive(Clone, Copy)]
pub(super) struct HelperSyms {
    pub(super) load: Sym,
    pub(super) store: Sym,
    pub(super) probe_write: Sym,
    pub(super) load128: Sym,
    pub(super) store128: Sym,
    pub(super) helper: Sym,
    pub(super) interpret: Sym,
}

/// [`HelperSyms`] in [`helper_table`] order.
pub(super) const HELPER_SYMS: HelperSyms = HelperSyms {
    load: Sym::Shim(0),
    store: Sym::Shim(1),
    probe_write: Sym::Shim(2),
    load128: Sym::Shim(3),
    store128: Sym::Shim(4),
    helper: Sym::Shim(5),
    interpret: Sym::Shim(6),
};

/// The host ISA with krr's Cranelift settings.
pub(super) fn host_isa() -> Result<OwnedTargetIsa, String> {
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
    cranelift_native::builder()
        .map_err(|e| format!("host ISA: {e}"))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| format!("host ISA: {e}"))
}

/// A JIT module for `isa` that resolves the helpers' names to the Rust functions.
pub(super) fn jit_module(isa: &OwnedTargetIsa) -> JITModule {
    let mut jb = JITBuilder::with_isa(isa.clone(), cranelift_module::default_libcall_names());
    for (name, function, _) in helper_table() {
        jb.symbol(name, function);
    }
    JITModule::new(jb)
}

/// A host-convention signature with `params` pointer-sized parameters and one result.
fn host_signature(module: &JITModule, params: usize) -> Signature {
    let mut s = Signature::new(module.isa().default_call_conv());
    for _ in 0..params {
        s.params.push(AbiParam::new(PTR));
    }
    s.returns.push(AbiParam::new(PTR));
    s
}

/// The shims' signature: `preserve_all`, the CPU pointer only.
/// The signature of [`helpers::pure::PureFn`]: four `i64` in, two out, System V.
pub(super) fn pure_signature() -> Signature {
    let mut sig = Signature::new(CallConv::SystemV);
    sig.params.extend([AbiParam::new(types::I64); 4]);
    sig.returns.extend([AbiParam::new(types::I64); 2]);
    sig
}

pub(super) fn shim_signature() -> Signature {
    let mut shim_sig = Signature::new(CallConv::PreserveAll);
    shim_sig.params.push(AbiParam::new(PTR));
    shim_sig
}

/// The blocks' signature: they take the CPU state, the instruction count and the guest
/// registers in `PASSED_GPRS`, which thus stay in host registers along a chain of blocks.
pub(super) fn block_signature() -> Signature {
    let mut block_sig = Signature::new(CallConv::Tail);
    block_sig.params.push(AbiParam::new(PTR));
    block_sig.params.push(AbiParam::new(types::I64));
    for _ in PASSED_GPRS {
        block_sig.params.push(AbiParam::new(types::I64));
    }
    block_sig.returns.push(AbiParam::new(PTR));
    block_sig
}

/// Define a shim for every helper in [`helper_table`], in that order.
///
/// Compiled blocks reach the Rust helpers through shims that preserve every register
/// (`preserve_all`): a slow path then clobbers nothing, so block code keeps its values in
/// caller-saved registers and the fast path saves no callee-saved ones on entry and restores
/// them before each tail call. A shim takes only the CPU pointer (already in the first
/// argument register), reads the other arguments from `cpu.helper_args` and leaves the
/// helper's result in `cpu.helper_value` (that convention has no return values).
pub(super) fn define_shims(
    module: &mut JITModule,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
) -> Result<[FuncId; HELPER_COUNT], String> {
    let mut ids = Vec::with_capacity(HELPER_COUNT);
    for (name, _, params) in helper_table() {
        ids.push(define_shim(module, ctx, fctx, name, params)?);
    }
    Ok(ids.try_into().expect("one shim per helper"))
}

/// Import helper `name` (taking `n` arguments) and define its shim.
fn define_shim(
    m: &mut JITModule,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    name: &str,
    n: usize,
) -> Result<FuncId, String> {
    let target = m
        .declare_function(name, Linkage::Import, &host_signature(m, n))
        .map_err(|e| e.to_string())?;
    let shim_sig = shim_signature();
    let id = m
        .declare_anonymous_function(&shim_sig)
        .map_err(|e| e.to_string())?;
    ctx.func.signature = shim_sig;
    {
        let mut fb = FunctionBuilder::new(&mut ctx.func, fctx);
        let target_ref = m.declare_func_in_func(target, fb.func);
        let entry = fb.create_block();
        fb.append_block_params_for_function_params(entry);
        fb.switch_to_block(entry);
        let cpu = fb.block_params(entry)[0];
        let mut args = vec![cpu];
        for i in 0..n as i32 - 1 {
            let a = fb
                .ins()
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
    m.define_function(id, ctx)
        .map_err(|e| format!("helper shim {name}: {e:?}"))?;
    m.clear_context(ctx);
    Ok(id)
}

/// Define the trampoline: a host-convention function that enters the chain of tail-calling
/// blocks (signature `block_sig`) and returns the exit code of the last one.
pub(super) fn define_trampoline(
    module: &mut JITModule,
    ctx: &mut Context,
    fctx: &mut FunctionBuilderContext,
    block_sig: &Signature,
) -> Result<FuncId, String> {
    ctx.func.signature = host_signature(module, 2);
    let tramp_id = module
        .declare_anonymous_function(&ctx.func.signature)
        .map_err(|e| e.to_string())?;
    {
        let mut fb = FunctionBuilder::new(&mut ctx.func, fctx);
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
        .define_function(tramp_id, ctx)
        .map_err(|e| format!("{e:?}"))?;
    module.clear_context(ctx);
    Ok(tramp_id)
}
