//! Guest-loop micro-benchmark: the same 8-instruction loop body (2 loads, 1 store, 3 ALU,
//! dec, jnz, plus a JMP or NOP in the middle) run by krr's interpreter, the tiered JIT and the
//! JIT in single-step mode, and natively and under QEMU TCG user mode. Prints per row the
//! guest instructions, median wall and CPU time, MIPS by both, Cranelift's compile time and
//! code size per block, then speed ratios by wall and by CPU time.
//!
//! Every row is one whole process, timed the same way by this parent: wall clock from spawn
//! to exit, and CPU time = user + system of all its threads (getrusage(RUSAGE_CHILDREN) around
//! the wait). Processes because the native and QEMU rows can only be timed that way; so krr's
//! tiers run as processes too (this binary again, with `--child`), each paying its own
//! start-up as QEMU does, with its compile thread's CPU time counted.
//!
//! Usage: krr-bench [loop] [--runs N] [--iterations N] [--interpreter-only]

use iced_x86::code_asm::*;
use krr_jit::snippet::{run_snippet, Region, Snippet, SnippetEnd, Tier, UserState};
use std::process::{Command, Stdio};
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

/// krr's rows: (name, `--child` tier, tier, one-block loop?, iterations divisor).
const KRR_ROWS: [(&str, &str, Tier, bool, u64); 4] = [
    (
        "krr interpreter",
        "interpreter",
        Tier::Interpreter,
        false,
        10,
    ),
    ("krr jit, one-block loop", "jit-loop", Tier::Tiered, true, 1),
    ("krr jit, two chained blocks", "jit", Tier::Tiered, false, 1),
    (
        "krr jit single-step",
        "single-step",
        Tier::JitSingleStep,
        false,
        10,
    ),
];

/// `--child TIER ITERATIONS`: run the loop once in that tier and print `instructions blocks
/// compile-seconds code-bytes`. The tiered engine runs a snippet `Tier::runs()` times in one
/// process (so its blocks get compiled): all of them are counted.
fn child(tier: &str, iterations: u64) {
    let (_, _, tier, one_block, _) = KRR_ROWS
        .iter()
        .find(|r| r.1 == tier)
        .unwrap_or_else(|| panic!("krr-bench: unknown tier `{tier}`"));
    let s = loop_snippet(iterations, !one_block);
    let mut init = UserState {
        rip: CODE,
        rflags: 0x202,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    init.gpr[4] = DATA + 0x800;
    let r = run_snippet(&s, &init, *tier, u64::MAX - 1).expect("benchmark snippet runs");
    assert_eq!(
        r.outcome,
        SnippetEnd::Completed,
        "benchmark loop did not complete under {tier:?}"
    );
    println!(
        "{} {} {} {}",
        r.instructions * tier.runs() as u64,
        r.stats.blocks_compiled,
        r.stats.compile_time.as_secs_f64(),
        r.stats.code_bytes
    );
}

/// CPU time (user + system) of this process's terminated and waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_CHILDREN is a valid `who`.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

struct Row {
    name: String,
    instructions: u64,
    /// Medians over the runs, seconds.
    wall: f64,
    cpu: f64,
    /// Blocks compiled, compile microseconds per block, code bytes per block.
    compile: Option<(u64, f64, f64)>,
}

/// Run `cmd` `runs` times, each a whole process timed by wall clock and CPU time. Its stdout
/// is krr's child line, or empty (then the row has `instructions`). `None` if it cannot run.
fn bench_process(name: &str, cmd: &[String], instructions: u64, runs: usize) -> Option<Row> {
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    let mut last = String::new();
    for _ in 0..runs {
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stderr(Stdio::inherit())
            .output();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = children_cpu() - cpu0;
        match out {
            Ok(o) if o.status.success() => last = String::from_utf8_lossy(&o.stdout).into(),
            Ok(o) => {
                eprintln!("krr-bench: `{}` failed: {}", cmd.join(" "), o.status);
                return None;
            }
            Err(e) => {
                eprintln!("krr-bench: cannot run `{}`: {e}", cmd.join(" "));
                return None;
            }
        }
        walls.push(wall);
        cpus.push(cpu);
    }
    let mut row = Row {
        name: name.to_string(),
        instructions,
        wall: median(&mut walls),
        cpu: median(&mut cpus),
        compile: None,
    };
    let f: Vec<f64> = last
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if let [n, blocks, secs, bytes] = f[..] {
        row.instructions = n as u64;
        if blocks > 0.0 {
            row.compile = Some((blocks as u64, secs * 1e6 / blocks, bytes / blocks));
        }
    }
    Some(row)
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>10} {:>10} {:>15} {:>11}",
        "row",
        "instructions",
        "wall (s)",
        "CPU (s)",
        "MIPS wall",
        "MIPS CPU",
        "compile us/blk",
        "code B/blk"
    );
    for r in rows {
        let (c, b) = match r.compile {
            Some((_, us, bytes)) => (format!("{us:.1}"), format!("{bytes:.0}")),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<28} {:>12} {:>9.3} {:>9.3} {:>10.1} {:>10.1} {:>15} {:>11}",
            r.name,
            r.instructions,
            r.wall,
            r.cpu,
            r.instructions as f64 / r.wall / 1e6,
            r.instructions as f64 / r.cpu.max(1e-9) / 1e6,
            c,
            b
        );
    }
}

/// Speed ratios (MIPS of the first row / MIPS of the second) by wall and by CPU time, for the
/// pairs whose rows ran.
fn print_ratios(rows: &[Row], pairs: &[(&str, &str)]) {
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    let per = |r: &Row, t: f64| r.instructions as f64 / t;
    let lines: Vec<String> = pairs
        .iter()
        .filter_map(|(a, b)| Some((find(a)?, find(b)?)))
        .map(|(a, b)| {
            format!(
                "{:<62} {:>6.2}x {:>6.2}x",
                format!("{} / {}", a.name, b.name),
                per(a, a.wall) / per(b, b.wall),
                per(a, a.cpu) / per(b, b.cpu)
            )
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<62} {:>7} {:>7}",
        "speed ratio, MIPS / MIPS (above 1: the first is faster)", "wall", "CPU"
    );
    for l in lines {
        println!("{l}");
    }
}

/// The loop ELFs (full and a tenth of the iterations) in a fresh directory.
fn write_elfs(iterations: u64) -> std::io::Result<(std::path::PathBuf, [String; 2])> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("krr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut paths = [String::new(), String::new()];
    for (i, (file, n)) in [
        ("loop.elf", iterations),
        ("loop-small.elf", iterations / 10),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(file);
        std::fs::write(&path, loop_elf(n, true))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        paths[i] = path.to_string_lossy().into_owned();
    }
    Ok((dir, paths))
}

fn main() {
    let mut runs = 5;
    let mut interpreter_only = false;
    let mut iterations: u64 = 50_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "loop" => {}
            "--child" => {
                let tier = args.next().unwrap_or_default();
                let n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(iterations);
                return child(&tier, n);
            }
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
    println!("guest loop: 9 instructions per iteration, {iterations} iterations (interpreter and single-step rows: 1/10), median of {runs} runs");
    println!("every row is one whole process (start-up included); CPU = user + system, all threads; the tiered jit rows run the loop {} times in one process", Tier::Tiered.runs());
    let me = std::env::current_exe()
        .expect("the benchmark's own path")
        .to_string_lossy()
        .into_owned();
    let mut rows = Vec::new();
    for (name, tier, _, _, div) in KRR_ROWS {
        if interpreter_only && tier != "interpreter" {
            continue;
        }
        let cmd = [&me, "--child", tier, &(iterations / div).to_string()].map(String::from);
        rows.extend(bench_process(name, &cmd, 0, runs));
    }
    if !interpreter_only {
        rows.extend(other_rows(iterations, runs));
    }
    print_rows(&rows);
    print_ratios(
        &rows,
        &[
            ("krr jit, two chained blocks", "krr interpreter"),
            ("krr jit, two chained blocks", "QEMU TCG user"),
            ("krr jit single-step", "QEMU TCG user -singlestep"),
            ("krr jit, two chained blocks", "native (host CPU)"),
        ],
    );
    if std::env::var_os("KRR_QEMU_USER").is_none() && !interpreter_only {
        println!(
            "(QEMU: set KRR_QEMU_USER to a qemu-x86_64 binary; bench/run.sh fetches Debian's)"
        );
    }
}

/// The two-block loop as a Linux ELF, natively and under QEMU TCG user mode (`KRR_QEMU_USER`).
fn other_rows(iterations: u64, runs: usize) -> Vec<Row> {
    let (dir, [elf, small]) = match write_elfs(iterations) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("krr-bench: cannot write the loop ELF: {e}");
            return Vec::new();
        }
    };
    let insns = 3 + 9 * iterations;
    let small_insns = 3 + 9 * (iterations / 10);
    let mut rows = Vec::new();
    rows.extend(bench_process(
        "native (host CPU)",
        std::slice::from_ref(&elf),
        insns,
        runs,
    ));
    if let Ok(q) = std::env::var("KRR_QEMU_USER") {
        rows.extend(bench_process(
            "QEMU TCG user",
            &[q.clone(), elf],
            insns,
            runs,
        ));
        let single = [q, "-singlestep".into(), small];
        rows.extend(bench_process(
            "QEMU TCG user -singlestep",
            &single,
            small_insns,
            runs,
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}
