//! Guest-loop micro-benchmark: the same 8-instruction loop body (2 loads, 1 store, 3 ALU,
//! dec, jnz, plus a JMP or NOP in the middle) run by the interpreter, the tiered JIT and the JIT in single-step mode. Prints
//! guest MIPS (median of several runs), the ratios between tiers, and Cranelift's compile time
//! and code size per block.
//!
//! Usage: krr-bench [loop] [--runs N] [--iterations N]

use iced_x86::code_asm::*;
use krr_jit::snippet::{run_snippet, ArchState, Outcome, Region, Snippet, Tier};
use std::time::Instant;

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x60_0000;

/// The loop body is one block that branches to itself, or (`chained`) two blocks joined by a
/// JMP so that every iteration crosses two block boundaries through the chaining slots.
fn loop_snippet(iterations: u64, chained: bool) -> Snippet {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    let mut body = a.create_label();
    let build = |a: &mut CodeAssembler, body: &mut CodeLabel| -> Result<(), IcedError> {
        a.mov(rcx, iterations)?;
        a.mov(rsi, DATA)?;
        a.xor(eax, eax)?;
        a.set_label(body)?;
        a.mov(rdx, qword_ptr(rsi))?;
        a.add(rax, rdx)?;
        a.mov(r8, qword_ptr(rsi + 8))?;
        if chained {
            let mut second = a.create_label();
            a.jmp(second)?;
            a.set_label(&mut second)?;
        } else {
            a.nop()?;
        }
        a.xor(rax, r8)?;
        a.mov(qword_ptr(rsi + 16), rax)?;
        a.add(rax, 3)?;
        a.dec(rcx)?;
        a.jnz(*body)?;
        Ok(())
    };
    build(&mut a, &mut body).expect("assembling the loop");
    let code = a.assemble(CODE).expect("assembling the loop");
    Snippet {
        code_addr: CODE,
        code,
        regions: vec![Region {
            addr: DATA,
            data: vec![7; 4096],
        }],
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

struct TierResult {
    mips: f64,
    blocks_compiled: u64,
    compile_us_per_block: f64,
    code_bytes_per_block: f64,
}

fn bench_tier(tier: Tier, iterations: u64, runs: usize, chained: bool) -> TierResult {
    let s = loop_snippet(iterations, chained);
    let mut init = ArchState {
        rip: CODE,
        rflags: 0x202,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    init.gpr[4] = DATA + 0x800;
    let mut mips = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = run_snippet(&s, &init, tier, u64::MAX - 1).expect("benchmark snippet runs");
        let dt = t0.elapsed().as_secs_f64();
        assert_eq!(
            r.outcome,
            Outcome::Completed,
            "benchmark loop did not complete under {tier:?}"
        );
        mips.push(r.instructions as f64 / dt / 1e6);
        last = Some(r);
    }
    let r = last.expect("at least one run");
    let n = r.stats.blocks_compiled.max(1) as f64;
    TierResult {
        mips: median(&mut mips),
        blocks_compiled: r.stats.blocks_compiled,
        compile_us_per_block: r.stats.compile_time.as_secs_f64() * 1e6 / n,
        code_bytes_per_block: r.stats.code_bytes as f64 / n,
    }
}

fn main() {
    let mut runs = 5;
    let mut iterations: u64 = 50_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "loop" => {}
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(iterations)
            }
            other => {
                eprintln!("krr-bench: unknown argument `{other}` (usage: krr-bench [loop] [--runs N] [--iterations N])");
                std::process::exit(2);
            }
        }
    }
    println!("guest loop: 9 instructions per iteration, {iterations} iterations (interpreter: 1/10), median of {runs} runs");
    let interp = bench_tier(Tier::Interpreter, iterations / 10, runs, true);
    let jit_loop = bench_tier(Tier::Tiered, iterations, runs, false);
    let jit = bench_tier(Tier::Tiered, iterations, runs, true);
    let single = bench_tier(Tier::JitSingleStep, iterations / 10, runs, true);
    println!(
        "{:<22} {:>10} {:>12} {:>16} {:>16}",
        "tier", "guest MIPS", "vs interp", "compile us/blk", "code B/blk"
    );
    let rows = [
        ("interpreter", &interp),
        ("jit, one-block loop", &jit_loop),
        ("jit, two chained blocks", &jit),
        ("jit single-step", &single),
    ];
    for (name, r) in rows {
        let (c, b) = if r.blocks_compiled > 0 {
            (
                format!("{:.1}", r.compile_us_per_block),
                format!("{:.0}", r.code_bytes_per_block),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<22} {:>10.1} {:>11.1}x {:>16} {:>16}",
            name,
            r.mips,
            r.mips / interp.mips,
            c,
            b
        );
    }
}
