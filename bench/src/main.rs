//! Guest-loop micro-benchmark: the same 8-instruction loop body (2 loads, 1 store, 3 ALU,
//! dec, jnz, plus a JMP or NOP in the middle) run by the interpreter, the tiered JIT and the JIT in single-step mode. Prints
//! guest MIPS (median of several runs), the ratios between tiers, and Cranelift's compile time
//! and code size per block.
//!
//! Usage: krr-bench [loop] [--runs N] [--iterations N]

use iced_x86::code_asm::*;
use krr_jit::snippet::{run_snippet, Region, Snippet, SnippetEnd, Tier, UserState};
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

/// The same loop as a static Linux ELF (code at CODE, data page at DATA, exit(0) at the end),
/// so QEMU user-mode TCG and the host CPU can run the identical guest work.
fn loop_elf(iterations: u64, chained: bool) -> Vec<u8> {
    let s = loop_snippet(iterations, chained);
    let mut code = s.code.clone();
    // mov eax, 60; xor edi, edi; syscall
    code.extend_from_slice(&[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]);
    let data = &s.regions[0].data;
    let header_len = 64 + 2 * 56;
    let code_off = 0x1000u64;
    let data_off = 0x2000u64;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let u16le = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
    let u32le = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes());
    let u64le = |f: &mut Vec<u8>, v: u64| f.extend_from_slice(&v.to_le_bytes());
    u16le(&mut f, 2); // ET_EXEC
    u16le(&mut f, 62); // EM_X86_64
    u32le(&mut f, 1);
    u64le(&mut f, CODE); // entry
    u64le(&mut f, 64); // phoff
    u64le(&mut f, 0); // shoff
    u32le(&mut f, 0);
    u16le(&mut f, 64);
    u16le(&mut f, 56);
    u16le(&mut f, 2);
    u16le(&mut f, 64);
    u16le(&mut f, 0);
    u16le(&mut f, 0);
    for (off, vaddr, len, flags) in [
        (code_off, CODE, code.len() as u64, 5u32),
        (data_off, DATA, data.len() as u64, 6),
    ] {
        u32le(&mut f, 1); // PT_LOAD
        u32le(&mut f, flags);
        u64le(&mut f, off);
        u64le(&mut f, vaddr);
        u64le(&mut f, vaddr);
        u64le(&mut f, len);
        u64le(&mut f, len);
        u64le(&mut f, 0x1000);
    }
    assert_eq!(f.len(), header_len);
    f.resize(code_off as usize, 0);
    f.extend_from_slice(&code);
    f.resize(data_off as usize, 0);
    f.extend_from_slice(data);
    f
}

/// Wall-clock MIPS of running `cmd` on the loop ELF (median of `runs`).
fn bench_command(
    cmd: &[&str],
    elf: &std::path::Path,
    instructions: u64,
    runs: usize,
) -> Option<f64> {
    let mut mips = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let status = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg(elf)
            .status()
            .ok()?;
        let dt = t0.elapsed().as_secs_f64();
        if !status.success() {
            eprintln!("krr-bench: `{}` failed: {status}", cmd.join(" "));
            return None;
        }
        mips.push(instructions as f64 / dt / 1e6);
    }
    Some(median(&mut mips))
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
    let mut init = UserState {
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
            SnippetEnd::Completed,
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
    let mut interpreter_only = false;
    let mut iterations: u64 = 50_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "loop" => {}
            "--interpreter-only" => interpreter_only = true,
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(iterations)
            }
            other => {
                eprintln!("krr-bench: unknown argument `{other}` (usage: krr-bench [loop] [--runs N] [--iterations N] [--interpreter-only])");
                std::process::exit(2);
            }
        }
    }
    println!("guest loop: 9 instructions per iteration, {iterations} iterations (interpreter: 1/10), median of {runs} runs");
    let interp = bench_tier(Tier::Interpreter, iterations / 10, runs, true);
    if interpreter_only {
        println!("interpreter: {:.1} guest MIPS", interp.mips);
        return;
    }
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

    // The same loop (two-block variant), natively and under QEMU user-mode TCG.
    let dir = std::env::temp_dir().join(format!("krr-bench-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let write = |path: &std::path::Path, n: u64| -> bool {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, loop_elf(n, true)).is_ok()
            && std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).is_ok()
    };
    let elf = dir.join("loop.elf");
    let small = dir.join("loop-small.elf");
    if !write(&elf, iterations) || !write(&small, iterations / 10) {
        return;
    }
    let insns = 3 + 9 * iterations;
    let small_insns = 3 + 9 * (iterations / 10);
    let native = bench_command(&["env"], &elf, insns, runs);
    let qemu = std::env::var("KRR_QEMU_USER").ok();
    let (tcg, tcg_single) = match &qemu {
        Some(q) => (
            bench_command(&[q.as_str()], &elf, insns, runs),
            bench_command(&[q.as_str(), "-singlestep"], &small, small_insns, runs),
        ),
        None => (None, None),
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("the two-block loop side by side (wall time incl. process start-up):");
    println!(
        "{:<24} {:>10}   {:>22}   {:>22}",
        "runner", "guest MIPS", "krr jit (chained) / it", "krr single-step / it"
    );
    let show = |name: &str, v: Option<f64>| match v {
        Some(m) => println!(
            "{:<24} {:>10.1}   {:>21.2}x   {:>21.2}x",
            name,
            m,
            jit.mips / m,
            single.mips / m
        ),
        None => println!("{name:<24} {:>10}", "n/a"),
    };
    show("native (host CPU)", native);
    show("QEMU TCG user", tcg);
    show("QEMU TCG -singlestep", tcg_single);
    if qemu.is_none() {
        println!(
            "(QEMU: set KRR_QEMU_USER to a qemu-x86_64 binary; bench/run.sh fetches Debian's)"
        );
    }
}
