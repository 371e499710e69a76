//! Differential tests against the host CPU: every covered instruction form (iced-x86 `Code`)
//! runs from the same random state natively (a ptrace'd child process) and in each engine tier,
//! and the results must agree modulo architecturally undefined flags and results. Random
//! multi-instruction blocks do the same for code the JIT compiles as one block.
//!
//! Environment:
//! - `KRR_DIFF_CASES`: cases per form (default 40);
//! - `KRR_DIFF_BLOCKS`: number of multi-instruction blocks (default 300);
//! - `KRR_DIFF_SEED`: seed (decimal or 0x-hex; default: from the clock, always printed);
//! - `KRR_DIFF_ONLY`: comma-separated substrings of `Code` names to restrict the forms
//!   (e.g. `Div_rm64,Shl_`), also used as the block pool;
//! - `KRR_DIFF_SHOW`: failing cases printed in full per form (default 3);
//! - `KRR_DIFF_VERBOSE`: `native_generator_sanity` prints per-form outcome statistics and the
//!   forms of covered mnemonics that are excluded, with the reason.

mod difftest;

use difftest::compare::{self, outcome_str};
use difftest::engine;
use difftest::gen::{self, GenOptions, CODE_PAGE, DATA0, STACK};
use difftest::native::NativeRunner;
use difftest::rng::Rng;
use iced_x86::Code;
use krr_jit::snippet::{Region, Snippet, SnippetEnd, SnippetResult, Tier, UserState};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

struct Config {
    cases: usize,
    blocks: usize,
    seed: u64,
    only: Vec<String>,
    show: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let seed = env_u64("KRR_DIFF_SEED").unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        });
        let only = std::env::var("KRR_DIFF_ONLY")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let cfg = Config {
            cases: env_u64("KRR_DIFF_CASES").unwrap_or(40) as usize,
            blocks: env_u64("KRR_DIFF_BLOCKS").unwrap_or(300) as usize,
            seed,
            only,
            show: env_u64("KRR_DIFF_SHOW").unwrap_or(3) as usize,
        };
        eprintln!(
            "diff_cpu: KRR_DIFF_SEED={:#x} (rerun with this to reproduce)",
            cfg.seed
        );
        cfg
    })
}

/// The covered forms, restricted by `KRR_DIFF_ONLY`.
fn selected_codes() -> Vec<Code> {
    let cfg = config();
    gen::covered_codes()
        .into_iter()
        .filter(|c| {
            let name = format!("{c:?}");
            cfg.only.is_empty() || cfg.only.iter().any(|o| name.contains(o.as_str()))
        })
        .collect()
}

/// Failures grouped by form (or "block").
struct Report {
    title: String,
    total: usize,
    groups: BTreeMap<String, (usize, usize, Vec<String>)>,
}

impl Report {
    fn new(title: &str) -> Self {
        Report {
            title: title.to_string(),
            total: 0,
            groups: BTreeMap::new(),
        }
    }

    fn case(&mut self, group: &str) {
        self.total += 1;
        self.groups.entry(group.to_string()).or_default().1 += 1;
    }

    fn fail(&mut self, group: &str, message: String) {
        let show = config().show;
        let g = self.groups.entry(group.to_string()).or_default();
        g.0 += 1;
        if g.2.len() < show {
            g.2.push(message);
        }
    }

    /// Prints the failures (the first few per group in full, then a summary) and panics if
    /// there were any.
    fn finish(self) {
        let failing: Vec<_> = self.groups.iter().filter(|(_, g)| g.0 > 0).collect();
        let failed: usize = failing.iter().map(|(_, g)| g.0).sum();
        if failing.is_empty() {
            println!("{}: all {} cases agree", self.title, self.total);
            return;
        }
        for (name, (_, _, messages)) in failing.iter().take(60) {
            for m in messages {
                println!("==== {}: {name} ====\n{m}", self.title);
            }
        }
        println!(
            "==== {}: summary (seed {:#x}) ====",
            self.title,
            config().seed
        );
        for (name, (bad, n, _)) in &failing {
            println!("  {name:<40} {bad:>4}/{n} cases differ");
        }
        panic!(
            "{}: {failed} of {} cases differ, in {} forms (KRR_DIFF_SEED={:#x})",
            self.title,
            self.total,
            failing.len(),
            config().seed
        );
    }
}

/// Runs a case natively; a failure is recorded in `report` under `group`.
fn run_native(
    native: &mut NativeRunner,
    report: &mut Report,
    group: &str,
    snippet: &Snippet,
    init: &UserState,
) -> Option<SnippetResult> {
    match native.run(snippet, init) {
        Ok(r) => Some(r),
        Err(e) => {
            report.case(group);
            report.fail(
                group,
                format!(
                    "native run failed: {e}\n{}",
                    compare::describe_case(snippet, init)
                ),
            );
            None
        }
    }
}

/// Runs a case in `tier` and compares with the native result `n`, recording the outcome in
/// `report` under `group`.
fn check_engine(
    report: &mut Report,
    group: &str,
    tier: Tier,
    snippet: &Snippet,
    init: &UserState,
    n: &SnippetResult,
) {
    report.case(group);
    let e = match engine::run(snippet, init, tier) {
        Ok(r) => r,
        Err(e) => {
            report.fail(
                group,
                format!(
                    "engine ({tier:?}) failed: {e}\n{}native: {}\n",
                    compare::describe_case(snippet, init),
                    outcome_str(&n.outcome)
                ),
            );
            return;
        }
    };
    if let Err(msg) = compare::compare(snippet, init, n, &e) {
        report.fail(group, format!("tier {tier:?}\n{msg}"));
    }
}

fn run_forms(tier: Tier) {
    let cfg = config();
    let start = Instant::now();
    let codes = selected_codes();
    let mut native = NativeRunner::new().expect("start the native runner");
    let mut report = Report::new(&format!("forms/{tier:?}"));
    for &code in &codes {
        let mut rng = Rng::derive(cfg.seed, code as u64);
        let name = format!("{code:?}");
        for (snippet, init) in gen::cases_for(code, &mut rng, cfg.cases) {
            if let Some(n) = run_native(&mut native, &mut report, &name, &snippet, &init) {
                check_engine(&mut report, &name, tier, &snippet, &init, &n);
            }
        }
    }
    println!(
        "covered {} encoding forms (iced Code values), {} cases each, tier {tier:?}, {:.1}s",
        codes.len(),
        cfg.cases,
        start.elapsed().as_secs_f64()
    );
    report.finish();
}

#[test]
fn diff_interpreter() {
    run_forms(Tier::Interpreter);
}

#[test]
fn diff_jit() {
    run_forms(Tier::Jit);
}

#[test]
fn diff_jit_single_step() {
    run_forms(Tier::JitSingleStep);
}

/// Random straight-line blocks of 3-6 covered instructions, in every tier.
#[test]
fn diff_blocks() {
    let cfg = config();
    let start = Instant::now();
    let pool = selected_codes();
    if !pool.iter().any(|c| gen::block_eligible(*c)) {
        println!("no block-eligible forms selected");
        return;
    }
    let mut rng = Rng::derive(cfg.seed, 0xb10c);
    let mut native = NativeRunner::new().expect("start the native runner");
    let mut report = Report::new("blocks");
    let opts = GenOptions::default();
    for _ in 0..cfg.blocks {
        let len = 3 + rng.below(4) as usize;
        let (snippet, init) = gen::block_case(&pool, &mut rng, len, &opts);
        let Some(n) = run_native(&mut native, &mut report, "block/native", &snippet, &init) else {
            continue;
        };
        for tier in [Tier::Interpreter, Tier::Jit, Tier::JitSingleStep] {
            let group = format!("block/{tier:?}");
            check_engine(&mut report, &group, tier, &snippet, &init, &n);
        }
    }
    println!(
        "{} blocks of 3-6 instructions, {:.1}s",
        cfg.blocks,
        start.elapsed().as_secs_f64()
    );
    report.finish();
}

// ---------------------------------------------------------------------------------------------
// Self-checks of the harness (no engine involved).

fn snippet(code: &[u8], regions: Vec<Region>) -> Snippet {
    Snippet {
        code_addr: CODE_PAGE + 0x100,
        code: code.to_vec(),
        regions,
    }
}

fn state() -> UserState {
    UserState {
        rip: CODE_PAGE + 0x100,
        rflags: 0x202,
        mxcsr: gen::MXCSR_DEFAULT,
        ..UserState::default()
    }
}

fn data_region() -> Region {
    Region {
        addr: DATA0,
        data: (0..4096u32).map(|i| i as u8).collect(),
    }
}

/// Hand-picked snippets with hand-computed results.
#[test]
fn native_runner_works() {
    let mut native = NativeRunner::new().expect("start the native runner");
    let code_end = CODE_PAGE + 0x100;

    // add rax, rbx: 5 + 7 = 12 (PF: 0b1100 has even parity; no CF/AF/ZF/SF/OF).
    let mut st = state();
    st.gpr[0] = 5;
    st.gpr[3] = 7;
    st.rflags |= compare::CF | compare::ZF;
    let r = native
        .run(&snippet(&[0x48, 0x01, 0xd8], vec![]), &st)
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.gpr[0], 12);
    assert_eq!(r.state.gpr[3], 7);
    assert_eq!(
        r.state.rip,
        code_end + 3 + 1,
        "rip just past the final INT3"
    );
    assert_eq!(r.state.rflags & !compare::RF, 0x202 | compare::PF);

    // div rcx with rcx = 0: #DE at the DIV, registers unchanged.
    let mut st = state();
    st.gpr[0] = 100;
    st.gpr[2] = 0;
    st.gpr[1] = 0;
    let r = native
        .run(&snippet(&[0x48, 0xf7, 0xf1], vec![]), &st)
        .unwrap();
    assert!(
        matches!(r.outcome, SnippetEnd::Exception { vector: 0, rip, .. } if rip == code_end),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.state.gpr[0], 100);
    assert_eq!(r.state.rip, code_end);

    // div rcx, valid: 100 / 7 = 14 rem 2.
    st.gpr[1] = 7;
    let r = native
        .run(&snippet(&[0x48, 0xf7, 0xf1], vec![]), &st)
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!((r.state.gpr[0], r.state.gpr[2]), (14, 2));

    // mov rax, [rbx] with rbx unmapped: #PF with the address.
    let mut st = state();
    st.gpr[3] = 0x2800_0010;
    let r = native
        .run(&snippet(&[0x48, 0x8b, 0x03], vec![data_region()]), &st)
        .unwrap();
    assert_eq!(
        r.outcome,
        SnippetEnd::Exception {
            vector: 14,
            error_code: None,
            address: 0x2800_0010,
            rip: code_end
        }
    );

    // The same load from the region, then a store: memory is read and written back.
    st.gpr[3] = DATA0 + 0x10;
    let r = native
        .run(&snippet(&[0x48, 0x8b, 0x03], vec![data_region()]), &st)
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.gpr[0], 0x1716_1514_1312_1110);
    st.gpr[0] = 0xdead_beef;
    let r = native
        .run(&snippet(&[0x48, 0x89, 0x03], vec![data_region()]), &st)
        .unwrap();
    assert_eq!(
        &r.regions[0].data[0x10..0x18],
        &0xdead_beefu64.to_le_bytes()
    );
    assert_eq!(r.regions[0].data[0x18], 0x18);

    // A 16-byte load straddling the end of the region: #PF at the first unmapped byte.
    st.gpr[3] = DATA0 + 0x1000 - 8;
    let r = native
        .run(
            &snippet(&[0xf3, 0x0f, 0x6f, 0x03], vec![data_region()]),
            &st,
        )
        .unwrap(); // movdqu xmm0, [rbx]
    assert!(
        matches!(
            r.outcome,
            SnippetEnd::Exception {
                vector: 14,
                address: 0x2000_1000,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );

    // movaps xmm0, [rbx] misaligned: #GP.
    st.gpr[3] = DATA0 + 0x11;
    let r = native
        .run(&snippet(&[0x0f, 0x28, 0x03], vec![data_region()]), &st)
        .unwrap();
    assert!(
        matches!(r.outcome, SnippetEnd::Exception { vector: 13, rip, .. } if rip == code_end),
        "{:?}",
        r.outcome
    );

    // pxor xmm0, xmm1.
    let mut st = state();
    st.xmm[0] = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    st.xmm[1] = 0xffff_0000_ffff_0000_0f0f_0f0f_f0f0_f0f0;
    let r = native
        .run(&snippet(&[0x66, 0x0f, 0xef, 0xc1], vec![]), &st)
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.xmm[0], st.xmm[0] ^ st.xmm[1]);
    assert_eq!(r.state.xmm[1], st.xmm[1]);
    assert_eq!(r.state.mxcsr, gen::MXCSR_DEFAULT);

    // push rax / pop rcx through the stack region.
    let mut st = state();
    st.gpr[0] = 0x1122_3344_5566_7788;
    st.gpr[4] = STACK + 0x800;
    let stack = Region {
        addr: STACK,
        data: vec![0; 0x1000],
    };
    let r = native
        .run(&snippet(&[0x50, 0x59], vec![stack.clone()]), &st)
        .unwrap();
    assert_eq!(r.state.gpr[1], st.gpr[0]);
    assert_eq!(r.state.gpr[4], STACK + 0x800);
    assert_eq!(&r.regions[0].data[0x7f8..0x800], &st.gpr[0].to_le_bytes());
    // call to the end of the code (rel32 0): the return address is pushed.
    let r = native
        .run(&snippet(&[0xe8, 0, 0, 0, 0], vec![stack]), &st)
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.gpr[4], STACK + 0x7f8);
    assert_eq!(
        &r.regions[0].data[0x7f8..0x800],
        &(code_end + 5).to_le_bytes()
    );

    // An INT3 before the end: #BP (a trap: RIP past it).
    let r = native
        .run(&snippet(&[0xcc, 0x90], vec![]), &state())
        .unwrap();
    assert_eq!(
        r.outcome,
        SnippetEnd::Exception {
            vector: 3,
            error_code: None,
            address: 0,
            rip: code_end + 1
        }
    );

    // ud2: #UD.
    let r = native
        .run(&snippet(&[0x0f, 0x0b], vec![]), &state())
        .unwrap();
    assert!(matches!(r.outcome, SnippetEnd::Exception { vector: 6, .. }));

    // Code straddling a page boundary, and a different layout (mappings are changed in the
    // child as needed).
    let mut s = snippet(
        &[0x48, 0x01, 0xd8, 0x48, 0x01, 0xd8],
        vec![Region {
            addr: 0x3000_0000,
            data: vec![1; 8192],
        }],
    );
    s.code_addr = CODE_PAGE + 0xffe;
    let mut st = state();
    st.rip = s.code_addr;
    st.gpr[0] = 1;
    st.gpr[3] = 2;
    let r = native.run(&s, &st).unwrap();
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.gpr[0], 5);
    // The old data region is gone now.
    let mut st = state();
    st.gpr[3] = DATA0;
    let r = native
        .run(&snippet(&[0x48, 0x8b, 0x03], vec![]), &st)
        .unwrap();
    assert!(
        matches!(
            r.outcome,
            SnippetEnd::Exception {
                vector: 14,
                address: DATA0,
                ..
            }
        ),
        "{:?}",
        r.outcome
    );

    // popfq setting NT and ID (which PTRACE_SETREGS cannot change back), then a case that
    // starts with them clear.
    let mut st = state();
    st.gpr[4] = STACK + 0x800;
    let mut stack = Region {
        addr: STACK,
        data: vec![0; 0x1000],
    };
    stack.data[0x800..0x808].copy_from_slice(&(0x202u64 | 1 << 14 | 1 << 21 | 1).to_le_bytes());
    let r = native.run(&snippet(&[0x9d], vec![stack]), &st).unwrap();
    assert_eq!(r.state.rflags & !compare::RF, 0x202 | 1 << 14 | 1 << 21 | 1);
    let r = native.run(&snippet(&[0x90], vec![]), &state()).unwrap();
    assert_eq!(r.state.rflags & !compare::RF, 0x202);

    // jmp $: stopped by the timeout, and the runner keeps working afterwards.
    native.set_timeout_ticks(10);
    let r = native
        .run(&snippet(&[0xeb, 0xfe], vec![]), &state())
        .unwrap();
    assert_eq!(r.outcome, SnippetEnd::OutOfBudget);
    let mut st = state();
    st.gpr[0] = 1;
    st.gpr[3] = 2;
    let r = native
        .run(&snippet(&[0x48, 0x01, 0xd8], vec![]), &st)
        .unwrap();
    assert_eq!(r.state.gpr[0], 3);
}

/// The comparison accepts identical results, masks undefined flags and reports differences.
#[test]
fn compare_self_check() {
    let mut native = NativeRunner::new().expect("start the native runner");
    // mul rbx: SF ZF AF PF undefined.
    let s = snippet(&[0x48, 0xf7, 0xe3], vec![data_region()]);
    let mut st = state();
    st.gpr[0] = 0x1234_5678_9abc_def0;
    st.gpr[3] = 0x0fed_cba9_8765_4321;
    let n = native.run(&s, &st).unwrap();
    compare::compare(&s, &st, &n, &n).unwrap();
    let mut e = n.clone();
    e.state.rflags ^= compare::ZF | compare::AF;
    compare::compare(&s, &st, &n, &e).expect("undefined flags are ignored");
    e.state.rflags ^= compare::CF;
    let msg = compare::compare(&s, &st, &n, &e).unwrap_err();
    assert!(msg.contains("differing: CF"), "{msg}");
    assert!(msg.contains("mul"), "{msg}");
    let mut e = n.clone();
    e.state.gpr[2] ^= 1;
    e.regions[0].data[5] ^= 1;
    let msg = compare::compare(&s, &st, &n, &e).unwrap_err();
    assert!(
        msg.contains("rdx") && msg.contains("mem 0x20000000"),
        "{msg}"
    );
    let mut e = n.clone();
    e.outcome = SnippetEnd::Exception {
        vector: 13,
        error_code: Some(0),
        address: 0,
        rip: st.rip,
    };
    assert!(compare::compare(&s, &st, &n, &e)
        .unwrap_err()
        .contains("outcome"));
}

/// SnippetEnd statistics of a natively run batch.
#[derive(Default)]
struct Stats {
    completed: usize,
    exceptions: BTreeMap<u8, usize>,
    timeouts: usize,
}

/// Every covered form generates valid cases that decode to that form and mostly complete
/// natively; blocks run too. Needs no engine.
#[test]
fn native_generator_sanity() {
    let cfg = config();
    let start = Instant::now();
    let codes = selected_codes();
    let mut native = NativeRunner::new().expect("start the native runner");
    let mut problems = Vec::new();
    let mut per_form: Vec<(Code, Stats)> = Vec::new();
    for &code in &codes {
        let mut rng = Rng::derive(cfg.seed, code as u64);
        let mut stats = Stats::default();
        for (snippet, init) in gen::cases_for(code, &mut rng, cfg.cases) {
            let decoded = compare::decode(&snippet);
            if !decoded.iter().any(|i| i.code() == code) {
                problems.push(format!(
                    "{code:?}: snippet does not contain the form:\n{}",
                    compare::describe_case(&snippet, &init)
                ));
            }
            match native.run(&snippet, &init) {
                Ok(SnippetResult {
                    outcome: SnippetEnd::Completed,
                    ..
                }) => stats.completed += 1,
                Ok(SnippetResult {
                    outcome: SnippetEnd::Exception { vector, .. },
                    ..
                }) => *stats.exceptions.entry(vector).or_default() += 1,
                Ok(SnippetResult {
                    outcome: SnippetEnd::OutOfBudget,
                    ..
                }) => stats.timeouts += 1,
                Err(e) => problems.push(format!("{code:?}: native run failed: {e}")),
            }
        }
        if stats.timeouts > 0 || (cfg.cases >= 10 && stats.completed * 2 < cfg.cases) {
            problems.push(format!(
                "{code:?}: only {}/{} cases completed natively (exceptions by vector {:?}, timeouts {})",
                stats.completed, cfg.cases, stats.exceptions, stats.timeouts
            ));
        }
        per_form.push((code, stats));
    }
    let mut rng = Rng::derive(cfg.seed, 0xb10c);
    let mut blocks = Stats::default();
    let pool = codes.clone();
    if pool.iter().any(|c| gen::block_eligible(*c)) {
        for _ in 0..cfg.blocks {
            let len = 3 + rng.below(4) as usize;
            let (snippet, init) = gen::block_case(&pool, &mut rng, len, &GenOptions::default());
            match native.run(&snippet, &init) {
                Ok(SnippetResult {
                    outcome: SnippetEnd::Completed,
                    ..
                }) => blocks.completed += 1,
                Ok(SnippetResult {
                    outcome: SnippetEnd::Exception { vector, .. },
                    ..
                }) => *blocks.exceptions.entry(vector).or_default() += 1,
                Ok(_) => blocks.timeouts += 1,
                Err(e) => problems.push(format!("block: native run failed: {e}")),
            }
        }
    }
    if std::env::var_os("KRR_DIFF_VERBOSE").is_some() {
        for (code, s) in &per_form {
            println!(
                "{code:?}: {} completed, exceptions {:?}",
                s.completed, s.exceptions
            );
        }
        for code in Code::values() {
            if let Some(why) = gen::exclusion_reason(code) {
                if why != "mnemonic not in the covered set" && why != "not valid in 64-bit mode" {
                    println!("excluded {code:?}: {why}");
                }
            }
        }
    }
    let faulting: usize = per_form
        .iter()
        .map(|(_, s)| s.exceptions.values().sum::<usize>())
        .sum();
    println!(
        "covered {} encoding forms (iced Code values); {} cases, {} with an exception; blocks: {} completed, exceptions {:?}, timeouts {}; {:.1}s",
        codes.len(),
        codes.len() * cfg.cases,
        faulting,
        blocks.completed,
        blocks.exceptions,
        blocks.timeouts,
        start.elapsed().as_secs_f64()
    );
    if cfg.blocks >= 20 && blocks.completed * 2 < cfg.blocks {
        problems.push(format!(
            "only {}/{} blocks completed natively",
            blocks.completed, cfg.blocks
        ));
    }
    for p in problems.iter().take(30) {
        println!("{p}");
    }
    assert!(
        problems.is_empty(),
        "{} generator problems (seed {:#x})",
        problems.len(),
        cfg.seed
    );
}
