//! Differential tests against the host CPU: every covered instruction form (iced-x86 `Code`)
//! runs from the same random state natively (a ptrace'd child process) and in each engine tier,
//! and the results must agree modulo architecturally undefined flags and results. Random
//! multi-instruction blocks do the same for code the JIT compiles as one block.
//!
//! Environment:
//! - `KRR_DIFF_CASES`: cases per form (default 40, at least [`MIN_CASES_PER_FORM`]);
//! - `KRR_DIFF_BLOCKS`: number of multi-instruction blocks (default 300, at least
//!   [`MIN_BLOCKS`]);
//! - `KRR_DIFF_SEED`: seed (decimal or 0x-hex). Unset or `random`: sweep mode, a fresh seed
//!   from the clock. The seed and the exact environment to rerun are always printed (CI pins
//!   one in tests/run.sh);
//! - `KRR_DIFF_ONLY`: comma-separated substrings of `Code` names to restrict the forms
//!   (e.g. `Div_rm64,Shl_`), also used as the block pool. Cases are derived from the seed and
//!   the form, so a failing form's cases are reproduced with `KRR_DIFF_ONLY=<form>`; `@x87`
//!   selects every x87 and MMX form;
//! - `KRR_DIFF_MIN_FORMS`: required with `KRR_DIFF_ONLY`: how many forms the filter must
//!   select (the only way to lower the form minimum below the whole covered list);
//!
//! Minimums (a run below them fails, so a typo in a filter or `KRR_DIFF_CASES=0` cannot pass
//! as "all 0 cases agree"): every tier must compare `forms × KRR_DIFF_CASES` cases, where
//! `forms` is every form of [`gen::covered_codes`] on this host (and at least
//! [`MIN_COVERED_FORMS`]) or, with `KRR_DIFF_ONLY`, `KRR_DIFF_MIN_FORMS`; every one of those
//! forms must have had all its cases compared; `diff_blocks` must compare `KRR_DIFF_BLOCKS`
//! blocks per tier.
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
    /// Forms that must be covered (see the module documentation).
    min_forms: usize,
}

/// Least `KRR_DIFF_CASES`.
const MIN_CASES_PER_FORM: usize = 1;
/// Least `KRR_DIFF_BLOCKS`.
const MIN_BLOCKS: usize = 1;
/// Least number of covered forms without a filter (the development host covers 949 legacy
/// forms, 251 x87 and MMX and 653 VEX vector forms; a host without AVX has no VEX forms, which
/// `tests/diff_vex.rs` checks on its own; a smaller list means the generator's exclusions or
/// the host-feature check went wrong).
const MIN_COVERED_FORMS: usize = 1150;

/// Every tier compared; the multi-instruction blocks run in each.
const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

/// The environment that reruns exactly this configuration.
fn rerun_env(only: Option<&str>) -> String {
    let cfg = config();
    let mut s = format!(
        "KRR_DIFF_SEED={:#x} KRR_DIFF_CASES={} KRR_DIFF_BLOCKS={}",
        cfg.seed, cfg.cases, cfg.blocks
    );
    match only {
        Some(only) => s += &format!(" KRR_DIFF_ONLY='{only}' KRR_DIFF_MIN_FORMS=1"),
        None if !cfg.only.is_empty() => {
            s += &format!(
                " KRR_DIFF_ONLY='{}' KRR_DIFF_MIN_FORMS={}",
                cfg.only.join(","),
                cfg.min_forms
            )
        }
        None => {}
    }
    s
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
        let sweep = match std::env::var("KRR_DIFF_SEED") {
            Err(_) => true,
            Ok(v) => v.trim().is_empty() || v.trim().eq_ignore_ascii_case("random"),
        };
        let seed = if sweep {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
        } else {
            env_u64("KRR_DIFF_SEED").expect("set")
        };
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
            min_forms: 0,
        };
        let min_forms = if cfg.only.is_empty() {
            gen::covered_codes().len().max(MIN_COVERED_FORMS)
        } else {
            env_u64("KRR_DIFF_MIN_FORMS").unwrap_or_else(|| {
                panic!(
                    "KRR_DIFF_ONLY restricts the forms: state how many it must select with \
                     KRR_DIFF_MIN_FORMS (at least 1)"
                )
            }) as usize
        };
        assert!(
            min_forms >= 1,
            "KRR_DIFF_MIN_FORMS=0: at least one form must be covered"
        );
        let cfg = Config { min_forms, ..cfg };
        eprintln!(
            "diff_cpu: {}KRR_DIFF_SEED={:#x}; minimum {} forms x {} cases per tier; rerun with: {}",
            if sweep { "sweep mode, fresh seed " } else { "" },
            cfg.seed,
            cfg.min_forms,
            cfg.cases,
            {
                let only = (!cfg.only.is_empty()).then(|| cfg.only.join(","));
                let mut s = format!(
                    "KRR_DIFF_SEED={:#x} KRR_DIFF_CASES={} KRR_DIFF_BLOCKS={}",
                    cfg.seed, cfg.cases, cfg.blocks
                );
                if let Some(only) = only {
                    s += &format!(" KRR_DIFF_ONLY='{only}' KRR_DIFF_MIN_FORMS={min_forms}");
                }
                s
            }
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
            cfg.only.is_empty()
                || cfg
                    .only
                    .iter()
                    .any(|o| name.contains(o.as_str()) || (o == "@x87" && gen::is_x87_or_mmx(*c)))
        })
        .collect()
}

/// Failures grouped by form (or "block").
struct Report {
    title: String,
    total: usize,
    groups: BTreeMap<String, (usize, usize, Vec<String>)>,
    /// Cases whose engine result was compared with the native one, per group.
    compared: BTreeMap<String, usize>,
}

/// What a report must have covered to pass.
struct Minimum {
    /// Groups (forms) with at least `per_group` compared cases.
    groups: usize,
    per_group: usize,
}

impl Report {
    fn new(title: &str) -> Self {
        Report {
            title: title.to_string(),
            total: 0,
            groups: BTreeMap::new(),
            compared: BTreeMap::new(),
        }
    }

    fn compared(&mut self, group: &str) {
        *self.compared.entry(group.to_string()).or_default() += 1;
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
    /// Also fails when less than `min` was compared.
    fn finish(self, min: Minimum) {
        let failing: Vec<_> = self.groups.iter().filter(|(_, g)| g.0 > 0).collect();
        let failed: usize = failing.iter().map(|(_, g)| g.0).sum();
        let compared: usize = self.compared.values().sum();
        let full_groups = self
            .compared
            .values()
            .filter(|&&n| n >= min.per_group)
            .count();
        let required = min.groups * min.per_group;
        let coverage = format!(
            "{compared} cases compared in {full_groups} groups with >= {} each (minimum: {} groups x {} = {required} cases)",
            min.per_group, min.groups, min.per_group
        );
        if failing.is_empty() {
            println!("{}: all {} cases agree; {coverage}", self.title, self.total);
            assert!(
                min.per_group >= 1 && compared >= required && full_groups >= min.groups,
                "{}: too little was compared: {coverage} (rerun: {})",
                self.title,
                rerun_env(None)
            );
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
            let form = name.split('/').next().unwrap_or(name);
            println!(
                "  {name:<40} {bad:>4}/{n} cases differ; rerun: {}",
                if form == "block" {
                    rerun_env(None)
                } else {
                    rerun_env(Some(form))
                }
            );
        }
        panic!(
            "{}: {failed} of {} cases differ, in {} forms; {coverage}; rerun: {} cargo test --release --test diff_cpu -- --nocapture",
            self.title,
            self.total,
            failing.len(),
            rerun_env(None)
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
/// `report` under `group`. Returns whether the engine compiled any block.
fn check_engine(
    report: &mut Report,
    group: &str,
    tier: Tier,
    snippet: &Snippet,
    init: &UserState,
    n: &SnippetResult,
) -> bool {
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
            return false;
        }
    };
    report.compared(group);
    if let Err(msg) = compare::compare(snippet, init, n, &e) {
        report.fail(group, format!("tier {tier:?}\n{msg}"));
    }
    e.stats.blocks_compiled > 0
}

fn run_forms(tier: Tier) {
    let cfg = config();
    let start = Instant::now();
    let codes = selected_codes();
    let mut native = NativeRunner::new().expect("start the native runner");
    let mut report = Report::new(&format!("forms/{tier:?}"));
    let mut compiled = 0usize;
    for &code in &codes {
        let mut rng = Rng::derive(cfg.seed, code as u64);
        let name = format!("{code:?}");
        for (snippet, init) in gen::cases_for(code, &mut rng, cfg.cases) {
            if let Some(n) = run_native(&mut native, &mut report, &name, &snippet, &init) {
                compiled += check_engine(&mut report, &name, tier, &snippet, &init, &n) as usize;
            }
        }
    }
    println!(
        "covered {} encoding forms (iced Code values), {} cases each, tier {tier:?}, {} cases ran compiled blocks, {:.1}s",
        codes.len(),
        cfg.cases,
        compiled,
        start.elapsed().as_secs_f64()
    );
    // A compiling tier that compiles (almost) nothing tests the interpreter twice.
    if tier != Tier::Interpreter {
        assert!(
            compiled * 10 >= report.total * 9,
            "tier {tier:?} compiled blocks in only {compiled} of {} cases",
            report.total
        );
    }
    report.finish(Minimum {
        groups: cfg.min_forms,
        per_group: cfg.cases.max(MIN_CASES_PER_FORM),
    });
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

/// The default tiered engine, with its blocks made hot (see [`Tier::Tiered`]).
#[test]
fn diff_tiered() {
    run_forms(Tier::Tiered);
}

/// Random straight-line blocks of 3-6 covered instructions, in every tier.
#[test]
fn diff_blocks() {
    let cfg = config();
    let start = Instant::now();
    let pool = selected_codes();
    if !pool.iter().any(|c| gen::block_eligible(*c)) {
        assert!(
            !cfg.only.is_empty(),
            "no block-eligible forms among all covered forms"
        );
        println!("no block-eligible forms selected by KRR_DIFF_ONLY");
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
        for tier in TIERS {
            let group = format!("block/{tier:?}");
            check_engine(&mut report, &group, tier, &snippet, &init, &n);
        }
    }
    println!(
        "{} blocks of 3-6 instructions, {:.1}s",
        cfg.blocks,
        start.elapsed().as_secs_f64()
    );
    report.finish(Minimum {
        groups: TIERS.len(),
        per_group: cfg.blocks.max(MIN_BLOCKS),
    });
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
            error_code: Some(difftest::native::PF_U),
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

    // Exceptions: vector, #PF address and the observable error-code bits are compared.
    let mut st = state();
    st.gpr[3] = 0x2800_0010;
    let s = snippet(&[0x48, 0x8b, 0x03], vec![data_region()]); // mov rax, [rbx]
    let n = native.run(&s, &st).unwrap();
    let pf = |error_code, address| SnippetEnd::Exception {
        vector: 14,
        error_code,
        address,
        rip: st.rip,
    };
    assert_eq!(n.outcome, pf(Some(difftest::native::PF_U), 0x2800_0010));
    let mut e = n.clone();
    e.outcome = pf(Some(difftest::native::PF_U), 0x2800_0010);
    compare::compare(&s, &st, &n, &e).expect("same #PF");
    e.outcome = pf(Some(difftest::native::PF_U | 2), 0x2800_0010);
    compare::compare(&s, &st, &n, &e).expect("W is not observable natively");
    e.outcome = pf(
        Some(difftest::native::PF_U | difftest::native::PF_P),
        0x2800_0010,
    );
    let msg = compare::compare(&s, &st, &n, &e).unwrap_err();
    assert!(msg.contains("#PF error code"), "{msg}");
    e.outcome = pf(None, 0x2800_0010);
    let msg = compare::compare(&s, &st, &n, &e).unwrap_err();
    assert!(msg.contains("error code"), "{msg}");
    e.outcome = pf(Some(difftest::native::PF_U), 0x2800_0018);
    let msg = compare::compare(&s, &st, &n, &e).unwrap_err();
    assert!(msg.contains("#PF address"), "{msg}");
    // A write to the read-only code page: P is set natively.
    let mut st = state();
    st.gpr[3] = CODE_PAGE;
    let w = snippet(&[0x48, 0x89, 0x03], vec![]); // mov [rbx], rax
    let n = native.run(&w, &st).unwrap();
    assert!(
        matches!(n.outcome, SnippetEnd::Exception { vector: 14, error_code: Some(c), .. }
            if c == difftest::native::PF_OBSERVABLE),
        "{:?}",
        n.outcome
    );
    // #UD pushes no error code; #GP does (its value is not observable natively).
    assert!(compare::error_code_difference(6, None, Some(0)).is_some());
    assert!(compare::error_code_difference(6, None, None).is_none());
    assert!(compare::error_code_difference(13, None, None).is_some());
    assert!(compare::error_code_difference(13, None, Some(0)).is_none());
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
    if codes.len() < cfg.min_forms || cfg.cases < MIN_CASES_PER_FORM {
        problems.push(format!(
            "too little covered: {} forms x {} cases (minimum {} forms x {MIN_CASES_PER_FORM})",
            codes.len(),
            cfg.cases,
            cfg.min_forms
        ));
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

/// Every legacy-encoded SSE..SSE4.2/AES-NI/PCLMULQDQ/CRC32/POPCNT/MOVBE/XLAT form is covered
/// (those on MMX registers and SSE3's x87 FISTTP with the x87 and MMX forms) but MASKMOVQ (#UD
/// by design) and forms this host lacks. `KRR_DIFF_VERBOSE` lists them.
#[test]
fn legacy_simd_forms_are_covered() {
    let (mut mmx, mut x87, mut host, mut unexpected) = (0, 0, 0, Vec::new());
    for (code, why) in gen::uncovered_legacy_simd() {
        let op = code.op_code();
        if op
            .op_kinds()
            .iter()
            .any(|k| format!("{k:?}").starts_with("mm"))
        {
            mmx += 1;
        } else if code.mnemonic() == iced_x86::Mnemonic::Fisttp {
            x87 += 1;
        } else if why == "not supported by this CPU" {
            host += 1;
        } else {
            unexpected.push(format!("{code:?}: {why}"));
        }
        if std::env::var_os("KRR_DIFF_VERBOSE").is_some() {
            println!("not covered: {code:?}: {why}");
        }
    }
    println!(
        "legacy SSE..SSE4.2/AES/PCLMULQDQ/CRC32/POPCNT/MOVBE/XLAT forms not covered: {mmx} with \
         an MMX register operand (MASKMOVQ), {x87} x87 (FISTTP), {host} missing on this host, {} \
         others",
        unexpected.len()
    );
    assert!(unexpected.is_empty(), "not covered: {unexpected:#?}");
    assert!(
        mmx <= 1 && x87 == 0,
        "{mmx} MMX and {x87} x87 forms not covered"
    );
}

/// Cases a sweep found, kept: each runs natively and in every tier with the results compared.
#[test]
fn found_cases_agree() {
    let mut native = NativeRunner::new().expect("start the native runner");
    let data = data_region();
    // BTR [edi], r13 with a 32-bit address size: the bit offset's move (r13 >> 6 qwords) is
    // part of the effective address and wraps at 4 GiB (sweep seed 0x18ee5c01b2d5ef14 found
    // #GP for a non-canonical 64-bit sum where the CPU faults at the wrapped address).
    let btr = [0x67, 0x4c, 0x0f, 0xb3, 0x2f];
    let mut cases = Vec::new();
    for (edi, r13) in [
        // Wraps back into the data page: bit 5 of the same qword.
        (DATA0 + 0x10, (1u64 << 35) + 5),
        // Wraps to an unmapped address: #PF there.
        (DATA0 + 0x12d0, 0x3c76_ba95_0000_0000),
        // A negative offset: the previous qword.
        (DATA0 + 0x18, (-64i64 + 3) as u64),
    ] {
        let mut st = state();
        st.gpr[7] = edi;
        st.gpr[13] = r13;
        cases.push((snippet(&btr, vec![data.clone()]), st));
    }
    let mut failures = Vec::new();
    for (s, st) in &cases {
        let n = native.run(s, st).expect("native run");
        for tier in TIERS {
            let e = engine::run(s, st, tier).expect("engine run");
            if let Err(msg) = compare::compare(s, st, &n, &e) {
                failures.push(format!("tier {tier:?}\n{msg}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
