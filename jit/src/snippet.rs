//! Run a short piece of user-mode (CPL3, 64-bit) code in the engine from a given architectural
//! state: the engine side of the differential tests against the host CPU and of the benchmarks.
//!
//! The snippet's code is mapped read+execute at `code_addr` and followed by an INT3; each
//! region is mapped read+write(+no-execute) at its page-aligned address, everything else is
//! unmapped. The run ends at the INT3 after the code (reported as [`SnippetEnd::Completed`]), at
//! the first exception (reported with its vector, error code and faulting RIP), or after
//! `max_instructions` (the final INT3 counts against that budget too).

/// Which execution tier runs the snippet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// The precise interpreter only.
    Interpreter,
    /// Cranelift-compiled multi-instruction blocks from the first execution (no interpreter).
    Jit,
    /// Cranelift-compiled blocks of one instruction each.
    JitSingleStep,
    /// The default tiered engine (interpreter first, background compilation after the hot
    /// threshold) with a hot threshold of [`TIERED_HOT_THRESHOLD`] and batches of one block, so
    /// that a snippet's blocks do get compiled: the snippet is run [`TIERED_RUNS`] times in one
    /// engine from the same initial state (run 1 interpreted, run 2 makes the blocks hot and
    /// queues them, the compile thread is then drained, and the last run executes the compiled,
    /// chained blocks). The result is the last run's; the runs must end the same way.
    Tiered,
}

/// [`Tier::Tiered`]'s hot threshold.
pub const TIERED_HOT_THRESHOLD: u32 = 2;
/// How often [`Tier::Tiered`] runs a snippet.
pub const TIERED_RUNS: usize = 3;

/// User-visible architectural state compared between the engine and the host CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UserState {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub xmm: [u128; 16],
    /// Bits 255:128 of YMM0-15.
    pub ymm_hi: [u128; 16],
    pub mxcsr: u32,
    pub fs_base: u64,
    pub gs_base: u64,
    /// The x87/MMX state (FXSAVE's FCW, FSW, abridged tag word, FOP, FIP, FDP, ST0-7/MM0-7);
    /// the default is FNINIT's.
    pub x87: krr_runtime::X87State,
}

/// A page-aligned memory region given to the snippet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub addr: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct Snippet {
    pub code_addr: u64,
    pub code: Vec<u8>,
    pub regions: Vec<Region>,
}

/// How a snippet run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnippetEnd {
    /// Reached the INT3 placed after the code; `rip` is just past that INT3, as natively.
    Completed,
    /// An exception was raised at `rip` (the faulting instruction).
    Exception {
        vector: u8,
        error_code: Option<u32>,
        address: u64,
        rip: u64,
    },
    /// `max_instructions` retired first.
    OutOfBudget,
}

#[derive(Clone, Debug)]
pub struct SnippetResult {
    pub state: UserState,
    /// Final contents of each region, in the order given.
    pub regions: Vec<Region>,
    pub outcome: SnippetEnd,
    /// Instructions retired (the INT3 not included).
    pub instructions: u64,
    /// What the engine did (blocks, compile time, code size), over all [`Tier::runs`] runs.
    pub stats: crate::engine::EngineStats,
}

use crate::engine::{Engine, EngineConfig, Exit, TierPolicy};
use krr_runtime::{mmu::pte, rflags, seg, Core, GuestMemory, PageTableBuilder};

const RAM: u64 = 64 << 20;
const PT_POOL: (u64, u64) = (0x10_0000, 0x20_0000);
const PAGE_POOL_START: u64 = 0x20_0000;

impl Tier {
    pub fn engine_config(self) -> EngineConfig {
        let d = EngineConfig::default();
        match self {
            Tier::Interpreter => EngineConfig {
                policy: TierPolicy::Interpret,
                ..d
            },
            Tier::Jit => EngineConfig {
                policy: TierPolicy::CompileAll,
                ..d
            },
            Tier::JitSingleStep => EngineConfig {
                policy: TierPolicy::CompileAll,
                max_block_insns: 1,
                ..d
            },
            Tier::Tiered => EngineConfig {
                policy: TierPolicy::Tiered,
                hot_threshold: TIERED_HOT_THRESHOLD,
                batch: 1,
                background_compile: true,
                ..d
            },
        }
    }

    /// Runs of a snippet in one engine (see [`Tier::Tiered`]).
    pub fn runs(self) -> usize {
        match self {
            Tier::Tiered => TIERED_RUNS,
            _ => 1,
        }
    }
}

/// Pages mapped for a snippet: linear page -> physical page.
struct Layout {
    pages: Vec<(u64, u64)>,
}

impl Layout {
    fn phys_of(&self, linear: u64) -> Option<u64> {
        let page = linear & !0xfff;
        self.pages
            .iter()
            .find(|&&(l, _)| l == page)
            .map(|&(_, p)| p + (linear & 0xfff))
    }
}

fn map_range(
    mem: &mut GuestMemory,
    pt: &mut PageTableBuilder,
    layout: &mut Layout,
    next_phys: &mut u64,
    addr: u64,
    data: &[u8],
    flags: u64,
) -> Result<(), String> {
    let first = addr & !0xfff;
    let end = addr + data.len().max(1) as u64;
    let mut page = first;
    while page < end {
        if layout.pages.iter().any(|&(l, _)| l == page) {
            return Err(format!("snippet page {page:#x} is mapped twice"));
        }
        let phys = *next_phys;
        if phys + 4096 > RAM {
            return Err("snippet does not fit in the test machine's RAM".into());
        }
        *next_phys += 4096;
        pt.map_4k(mem, page, phys, flags);
        layout.pages.push((page, phys));
        page += 4096;
    }
    let mut done = 0;
    while done < data.len() {
        let linear = addr + done as u64;
        let len = (4096 - (linear & 0xfff) as usize).min(data.len() - done);
        let phys = layout.phys_of(linear).expect("just mapped");
        mem.write(phys, &data[done..done + len])
            .map_err(|e| e.to_string())?;
        done += len;
    }
    Ok(())
}

/// Less common ways to run a snippet.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnippetOptions {
    /// Map the code pages writable too (self-modifying code).
    pub writable_code: bool,
    /// The engine's behaviour profile.
    pub profile: krr_runtime::Profile,
    /// The engine's code cache directory (off by default).
    pub code_cache: Option<&'static std::path::Path>,
}

/// Run `snippet` from `initial` in the engine with the given tier.
pub fn run_snippet(
    snippet: &Snippet,
    initial: &UserState,
    tier: Tier,
    max_instructions: u64,
) -> Result<SnippetResult, String> {
    run_snippet_with(
        snippet,
        initial,
        tier,
        max_instructions,
        SnippetOptions::default(),
    )
}

/// [`run_snippet`] with options.
pub fn run_snippet_with(
    snippet: &Snippet,
    initial: &UserState,
    tier: Tier,
    max_instructions: u64,
    options: SnippetOptions,
) -> Result<SnippetResult, String> {
    let mut mem = GuestMemory::new(RAM).map_err(|e| e.to_string())?;
    let mut pt = PageTableBuilder::new(&mut mem, PT_POOL.0, PT_POOL.1);
    let mut layout = Layout { pages: Vec::new() };
    let mut next_phys = PAGE_POOL_START;
    let mut code = snippet.code.clone();
    code.push(0xcc);
    map_range(
        &mut mem,
        &mut pt,
        &mut layout,
        &mut next_phys,
        snippet.code_addr,
        &code,
        if options.writable_code {
            pte::US | pte::RW
        } else {
            pte::US
        },
    )?;
    for r in &snippet.regions {
        map_range(
            &mut mem,
            &mut pt,
            &mut layout,
            &mut next_phys,
            r.addr,
            &r.data,
            pte::US | pte::RW | pte::NX,
        )?;
    }
    let mut core = Core::with_memory(mem);
    let [components, ..] = core.cpu().cpuid.query(0xd, 0, 0, 0);
    let cpu = core.arch_mut();
    cpu.cr3 = pt.cr3;
    cpu.gpr = initial.gpr;
    cpu.rip = initial.rip;
    cpu.rflags = (initial.rflags & !rflags::ARITH) | rflags::FIXED1;
    cpu.cc_op = crate::sem::FlagOp::CONCRETE.encode();
    cpu.cc_res = initial.rflags & rflags::ARITH;
    for (i, x) in initial.xmm.iter().enumerate() {
        cpu.xmm[i] = [*x as u64, (*x >> 64) as u64];
    }
    for (i, x) in initial.ymm_hi.iter().enumerate() {
        cpu.ymm_hi[i] = [*x as u64, (*x >> 64) as u64];
    }
    // As a user program finds it under Linux: XSAVE enabled, XCR0 with every component the
    // CPU model offers (AVX among them when it reports AVX).
    cpu.cr4 |= krr_runtime::arch::cr4::OSXSAVE;
    cpu.xcr0 = components as u64 & krr_runtime::cpuid::XCR0_SUPPORTED;
    cpu.mxcsr = initial.mxcsr;
    cpu.x87 = initial.x87;
    // Linux's user data selectors in 64-bit processes (SS keeps its 0x2b): what the native
    // side of the differential tests has, and what FNSTENV/FNSAVE store as FDS.
    for s in [seg::DS, seg::ES, seg::FS, seg::GS] {
        cpu.seg[s].selector = 0;
    }
    cpu.seg[seg::FS].base = initial.fs_base;
    cpu.seg[seg::GS].base = initial.gs_base;
    core.set_icount_limit(max_instructions);
    let mut engine = Engine::new(EngineConfig {
        profile: options.profile,
        code_cache: options.code_cache,
        ..tier.engine_config()
    })
    .map_err(|e| e.to_string())?;
    let end = snippet.code_addr + snippet.code.len() as u64;
    // Self-modifying snippets change their code, so they cannot be rerun from the same state.
    let runs = if options.writable_code {
        1
    } else {
        tier.runs()
    };
    let initial_arch = core.arch().clone();
    let mut first_outcome = None;
    for run in 0..runs {
        if run > 0 {
            engine.finish_compiling();
            *core.arch_mut() = initial_arch.clone();
            core.flush_tlb();
            for r in &snippet.regions {
                write_linear(&mut core, &layout, r.addr, &r.data)?;
            }
        }
        let exit = engine.run(&mut core);
        let result = snippet_result(&core, &layout, snippet, exit, end, &engine)?;
        if run + 1 == runs {
            if let Some(first) = first_outcome {
                if first != result.outcome {
                    return Err(format!(
                        "{tier:?}: run 1 ended with {first:?}, run {runs} with {:?}",
                        result.outcome
                    ));
                }
            }
            return Ok(result);
        }
        first_outcome.get_or_insert(result.outcome);
    }
    unreachable!("at least one run")
}

fn write_linear(core: &mut Core, layout: &Layout, addr: u64, data: &[u8]) -> Result<(), String> {
    let mut done = 0;
    while done < data.len() {
        let linear = addr + done as u64;
        let len = (4096 - (linear & 0xfff) as usize).min(data.len() - done);
        let phys = layout.phys_of(linear).expect("mapped");
        core.mem_mut()
            .write(phys, &data[done..done + len])
            .map_err(|e| e.to_string())?;
        done += len;
    }
    Ok(())
}

/// The result of one run that ended with `exit`.
fn snippet_result(
    core: &Core,
    layout: &Layout,
    snippet: &Snippet,
    exit: Exit,
    end: u64,
    engine: &Engine,
) -> Result<SnippetResult, String> {
    let cpu = core.cpu();
    let (outcome, instructions) = match exit {
        Exit::Budget => (SnippetEnd::OutOfBudget, cpu.icount),
        Exit::Exception { trap: true, .. }
            if cpu.exec.exception.vector == krr_runtime::vector::BP && cpu.rip == end + 1 =>
        {
            (SnippetEnd::Completed, cpu.icount - 1)
        }
        Exit::Exception { .. } => {
            let e = cpu.exec.exception;
            (
                SnippetEnd::Exception {
                    vector: e.vector,
                    error_code: e.has_error_code.then_some(e.error_code),
                    address: e.address,
                    rip: cpu.rip,
                },
                cpu.icount,
            )
        }
        Exit::Unbacked { phys } => {
            return Err(format!("access to unbacked physical address {phys:#x}"))
        }
        other => return Err(format!("a user-mode snippet cannot end with {other:?}")),
    };
    let arith = cpu.arith_flags();
    let mut state = UserState {
        gpr: cpu.gpr,
        rip: cpu.rip,
        rflags: (cpu.rflags & !rflags::ARITH) | arith,
        xmm: [0; 16],
        ymm_hi: [0; 16],
        mxcsr: cpu.mxcsr,
        fs_base: cpu.seg[seg::FS].base,
        gs_base: cpu.seg[seg::GS].base,
        x87: cpu.x87,
    };
    for (i, x) in cpu.xmm.iter().enumerate() {
        state.xmm[i] = x[0] as u128 | (x[1] as u128) << 64;
    }
    for (i, x) in cpu.ymm_hi.iter().enumerate() {
        state.ymm_hi[i] = x[0] as u128 | (x[1] as u128) << 64;
    }
    let mut regions = Vec::new();
    for r in &snippet.regions {
        let mut data = vec![0u8; r.data.len()];
        let mut done = 0;
        while done < data.len() {
            let linear = r.addr + done as u64;
            let len = (4096 - (linear & 0xfff) as usize).min(data.len() - done);
            let phys = layout.phys_of(linear).expect("mapped");
            core.mem()
                .read(phys, &mut data[done..done + len])
                .map_err(|e| e.to_string())?;
            done += len;
        }
        regions.push(Region { addr: r.addr, data });
    }
    Ok(SnippetResult {
        state,
        regions,
        outcome,
        instructions,
        stats: engine.stats.clone(),
    })
}
