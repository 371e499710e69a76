//! x87 and MMX parts of the differential harness that are not per-form comparisons (those run
//! in `tests/diff_cpu.rs` with every other form): the coverage check of the x87 and MMX forms
//! and the transcendental table.
//!
//! `transcendental_ulps` runs FSIN, FCOS, FSINCOS, FPTAN, FPATAN, F2XM1, FYL2X and FYL2XP1 on
//! random operands (the generator's: mostly inside each instruction's domain, the rest edge
//! values of every class, under random precision and rounding control) natively and in every
//! engine tier, and prints the largest difference in units in the last place (of the 64-bit
//! significand) of any register per instruction, with how many results were NaN on one side
//! only and how many status words differed. The engine runs the host's own instruction, so
//! the table must be all zeros. `KRR_X87_ULP_CASES` sets the operands per instruction (default
//! 150), `KRR_X87_ULP_SEED` the seed, `KRR_X87_ULP_TIERS` how many of the tiers run (default
//! all 4; 1: the interpreter only, for long runs such as the table in ARCHITECTURE.md).

mod difftest;

use difftest::gen;
use difftest::native::NativeRunner;
use difftest::rng::Rng;
use iced_x86::{Code, Mnemonic};
use krr_jit::snippet::{SnippetEnd, Tier};
use std::collections::BTreeMap;
use std::time::Instant;

const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim().to_string();
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

/// An 80-bit value as an integer that orders like the value (sign-magnitude folded), so the
/// distance between two of them counts the representable values between them: ulps of the
/// 64-bit significand. `None` for NaNs.
fn ordinal(v: &[u8; 16]) -> Option<i128> {
    let se = u16::from_le_bytes([v[8], v[9]]);
    let mant = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
    let exp = se & 0x7fff;
    if exp == 0x7fff && mant << 1 != 0 {
        return None;
    }
    // The explicit integer bit is implied by the exponent for normals; denormals (exponent
    // 0) continue below the smallest normal.
    let mag = ((exp as i128) << 63) | (mant & !(1 << 63)) as i128;
    let mag = if exp == 0 { mant as i128 } else { mag };
    Some(if se >> 15 != 0 { -mag } else { mag })
}

#[derive(Default)]
struct Row {
    cases: usize,
    max_ulps: i128,
    nan_mismatch: usize,
    fsw_differs: usize,
    faulted: usize,
}

#[test]
fn transcendental_ulps() {
    let n = env_u64("KRR_X87_ULP_CASES", 150) as usize;
    let seed = env_u64("KRR_X87_ULP_SEED", 0x7a11);
    assert!(n >= 1, "KRR_X87_ULP_CASES must be at least 1");
    let start = Instant::now();
    let forms = [
        Code::Fsin,
        Code::Fcos,
        Code::Fsincos,
        Code::Fptan,
        Code::Fpatan,
        Code::F2xm1,
        Code::Fyl2x,
        Code::Fyl2xp1,
    ];
    let tiers = &TIERS[..(env_u64("KRR_X87_ULP_TIERS", 4) as usize).clamp(1, TIERS.len())];
    let mut native = NativeRunner::new().expect("start the native runner");
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for code in forms {
        let mut rng = Rng::derive(seed, code as u64);
        let row = rows.entry(format!("{:?}", code.mnemonic())).or_default();
        for (snippet, init) in gen::cases_for(code, &mut rng, n) {
            let want = native.run(&snippet, &init).expect("native run");
            for &tier in tiers {
                let got =
                    krr_jit::snippet::run_snippet(&snippet, &init, tier, 1000).expect("engine run");
                assert_eq!(
                    got.outcome, want.outcome,
                    "{code:?} {tier:?}: the runs end differently"
                );
                row.cases += 1;
                if want.outcome != SnippetEnd::Completed {
                    row.faulted += 1;
                    continue;
                }
                let (w, g) = (&want.state.x87, &got.state.x87);
                if w.fsw != g.fsw {
                    row.fsw_differs += 1;
                }
                for i in 0..8 {
                    match (ordinal(&w.st[i]), ordinal(&g.st[i])) {
                        (Some(a), Some(b)) => row.max_ulps = row.max_ulps.max((a - b).abs()),
                        (None, None) => {}
                        _ => row.nan_mismatch += 1,
                    }
                }
            }
        }
    }
    println!(
        "x87 transcendentals against this CPU: {n} operands each, {} tiers, seed {seed:#x}, {:.1}s",
        tiers.len(),
        start.elapsed().as_secs_f64()
    );
    println!("| instruction | runs (operands x tiers) | ended in #MF or a fault | max ulps | NaN on one side | FSW differs |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            name.to_uppercase(),
            r.cases - r.faulted,
            r.faulted,
            r.max_ulps,
            r.nan_mismatch,
            r.fsw_differs
        );
    }
    for (name, r) in &rows {
        assert!(
            r.max_ulps == 0 && r.nan_mismatch == 0 && r.fsw_differs == 0,
            "{name}: the engine's results differ from this CPU's (the engine runs the host's \
             instruction, so they must be equal)"
        );
        assert!(r.cases > r.faulted, "{name}: no case completed");
    }
}

/// The ulp distance counts representable values.
#[test]
fn ordinal_counts_ulps() {
    let v = |se: u16, m: u64| {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&m.to_le_bytes());
        b[8..10].copy_from_slice(&se.to_le_bytes());
        ordinal(&b).expect("not a NaN")
    };
    let one = v(0x3fff, 1 << 63);
    assert_eq!(v(0x3fff, (1 << 63) + 1) - one, 1);
    // Across a binade: the largest significand below 1.0 is one ulp away.
    assert_eq!(one - v(0x3ffe, u64::MAX), 1);
    // Across zero and the normal/denormal boundary.
    assert_eq!(v(0x0000, 1) - v(0x8000, 1), 2);
    assert_eq!(v(0x0001, 1 << 63) - v(0x0000, (1 << 63) - 1), 1);
    assert_eq!(v(0x7fff, 1 << 63) - v(0x7ffe, u64::MAX), 1);
    let mut nan = [0u8; 16];
    nan[..8].copy_from_slice(&(3u64 << 62).to_le_bytes());
    nan[8..10].copy_from_slice(&0x7fffu16.to_le_bytes());
    assert_eq!(ordinal(&nan), None);
}

/// Every x87 form (escape opcodes D8-DF, FWAIT) and every form on MMX registers is covered by
/// `tests/diff_cpu.rs`, but 3DNow! and MASKMOVQ (#UD by design), the FWAIT-prefixed forms
/// (decoded and run as FWAIT and the no-wait form, both covered), forms invalid in 64-bit mode
/// and forms this host lacks. `KRR_DIFF_VERBOSE` lists every form with its reason.
#[test]
fn x87_mmx_forms_are_covered() {
    let verbose = std::env::var_os("KRR_DIFF_VERBOSE").is_some();
    let (mut x87, mut mmx) = (0, 0);
    let mut by_reason: BTreeMap<&str, Vec<Code>> = BTreeMap::new();
    for code in Code::values().filter(|c| gen::is_x87_or_mmx(*c)) {
        match gen::exclusion_reason(code) {
            None if gen::is_x87(code) => x87 += 1,
            None => mmx += 1,
            Some(why) => by_reason.entry(why).or_default().push(code),
        }
        if verbose {
            println!("{code:?}: {:?}", gen::exclusion_reason(code));
        }
    }
    println!("x87 and MMX forms covered: {x87} x87, {mmx} MMX; not covered:");
    for (why, codes) in &by_reason {
        println!("  {why}: {}", codes.len());
    }
    let unexpected: Vec<_> = by_reason
        .iter()
        .filter(|(why, _)| {
            !why.contains("#UD by design")
                && !why.starts_with("FWAIT + ")
                && **why != "not valid in 64-bit mode"
        })
        .collect();
    assert!(unexpected.is_empty(), "not covered: {unexpected:?}");
    let by_design = by_reason
        .iter()
        .filter(|(why, _)| why.contains("#UD by design"))
        .flat_map(|(_, c)| c.iter())
        .all(|c| {
            c.mnemonic() == Mnemonic::Maskmovq
                || c.mnemonic() == Mnemonic::Femms
                || c.op_code().encoding() == iced_x86::EncodingKind::D3NOW
        });
    assert!(by_design, "only 3DNow! and MASKMOVQ are #UD by design");
    assert!(x87 >= 140 && mmx >= 100, "{x87} x87 and {mmx} MMX forms");
}
