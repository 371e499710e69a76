//! `krr demo`: a guest program built into the binary (assembled with iced-x86's code
//! assembler, nothing downloaded), run by each execution tier of the engine. The tiers must
//! agree on every register, flag and byte of memory; the demo prints what each did.
//!
//! Then the system guest of [`krr::demo_guest`] runs on the whole machine (devices, interrupts,
//! paging, CPL3) in the default and the single-step mode, which must agree exactly; then it is
//! recorded to a trace and the trace replayed in both modes, which must match the recording.
//!
//! The user-mode guest: a sieve of Eratosthenes over 2..N in a byte array, then an FNV-1a hash of the
//! array, the prime count and the largest prime found, with the hash and count left in RAX/RBX.

use iced_x86::code_asm::*;
use krr::demo_guest::{run_demo_guest, DemoOutcome};
use krr::machine::RunEnd;
use krr_jit::snippet::{run_snippet, Region, Snippet, SnippetEnd, Tier, UserState};
use krr_jit::EngineConfig;
use krr_runtime::arch::{mxcsr, rflags};
use std::time::Instant;

const CODE: u64 = 0x40_0000;
const DATA: u64 = 0x100_0000;
/// Sieve size (bytes of guest memory used).
const N: u64 = 1 << 20;

fn guest() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut next = a.create_label();
    let mut done_sieve = a.create_label();
    let mut hash_loop = a.create_label();
    let mut count_loop = a.create_label();
    let mut not_prime = a.create_label();
    // Mark 2..N as candidates (1): REP STOSB.
    a.mov(rdi, DATA)?;
    a.mov(rcx, N)?;
    a.mov(al, 1)?;
    a.rep().stosb()?;
    a.mov(byte_ptr(DATA), 0)?;
    a.mov(byte_ptr(DATA + 1), 0)?;
    // for i in 2.. while i*i < N: if sieve[i] { for j in (i*i..N).step_by(i) sieve[j] = 0 }
    a.mov(rsi, 2u64)?;
    a.set_label(&mut outer)?;
    a.mov(rax, rsi)?;
    a.imul_2(rax, rsi)?;
    a.cmp(rax, N as i32)?;
    a.jae(done_sieve)?;
    a.cmp(byte_ptr(rsi + DATA as i32), 0)?;
    a.je(next)?;
    a.set_label(&mut inner)?;
    a.mov(byte_ptr(rax + DATA as i32), 0)?;
    a.add(rax, rsi)?;
    a.cmp(rax, N as i32)?;
    a.jb(inner)?;
    a.set_label(&mut next)?;
    a.inc(rsi)?;
    a.jmp(outer)?;
    a.set_label(&mut done_sieve)?;
    // FNV-1a over the array, 8 bytes at a time.
    a.mov(rax, 0xcbf2_9ce4_8422_2325u64)?;
    a.mov(rdx, 0x100_0000_01b3u64)?;
    a.mov(rsi, DATA)?;
    a.mov(rcx, N / 8)?;
    a.set_label(&mut hash_loop)?;
    a.xor(rax, qword_ptr(rsi))?;
    a.imul_2(rax, rdx)?;
    a.add(rsi, 8)?;
    a.dec(rcx)?;
    a.jnz(hash_loop)?;
    // Count the primes and remember the largest.
    a.xor(ebx, ebx)?;
    a.xor(r8d, r8d)?;
    a.mov(rcx, N - 1)?;
    a.set_label(&mut count_loop)?;
    a.movzx(r9d, byte_ptr(rcx + DATA as i32))?;
    a.test(r9d, r9d)?;
    a.jz(not_prime)?;
    a.inc(rbx)?;
    a.cmp(r8, 0)?;
    a.cmove(r8, rcx)?;
    a.set_label(&mut not_prime)?;
    a.loop_(count_loop)?;
    a.assemble(CODE)
}

pub fn run(keep_trace: Option<std::path::PathBuf>) -> Result<(), String> {
    let code = guest().map_err(|e| format!("assembling the demo guest: {e}"))?;
    let snippet = Snippet {
        code_addr: CODE,
        code,
        regions: vec![Region {
            addr: DATA,
            data: vec![0; N as usize],
        }],
    };
    let init = UserState {
        rip: CODE,
        rflags: rflags::IF | rflags::FIXED1,
        mxcsr: mxcsr::INIT,
        ..Default::default()
    };
    println!("krr demo: a sieve of Eratosthenes over {N} bytes and an FNV-1a hash, run by each engine tier");
    println!(
        "{:<26} {:>14} {:>10} {:>12} {:>8} {:>10}",
        "tier", "instructions", "seconds", "guest MIPS", "blocks", "compiled"
    );
    let mut reference: Option<krr_jit::snippet::SnippetResult> = None;
    for (name, tier) in [
        ("interpreter", Tier::Interpreter),
        ("tiered jit (default)", Tier::Tiered),
        ("jit single-step", Tier::JitSingleStep),
    ] {
        let t0 = Instant::now();
        let r = run_snippet(&snippet, &init, tier, u64::MAX - 1)?;
        let dt = t0.elapsed().as_secs_f64();
        if r.outcome != SnippetEnd::Completed {
            return Err(format!(
                "the demo guest did not complete under the {name}: {:?}",
                r.outcome
            ));
        }
        println!(
            "{:<26} {:>14} {:>10.3} {:>12.1} {:>8} {:>10}",
            name,
            r.instructions,
            dt,
            r.instructions as f64 / dt / 1e6,
            r.stats.blocks_decoded,
            r.stats.blocks_compiled
        );
        match &reference {
            None => reference = Some(r),
            Some(first) => {
                if first.state != r.state
                    || first.regions != r.regions
                    || first.instructions != r.instructions
                {
                    return Err(format!(
                        "the {name} disagrees with the interpreter: the tiers diverged"
                    ));
                }
            }
        }
    }
    let r = reference.expect("three tiers ran");
    println!(
        "result: {} primes below {N}, largest {}, FNV-1a of the sieve {:#018x}; all tiers agree",
        r.state.gpr[3], r.state.gpr[8], r.state.gpr[0]
    );
    println!();
    system_guest(keep_trace)
}

/// The system guest (`krr::demo_guest`) on the whole machine, in the default tiered mode (its
/// console shown as it runs) and in single-step mode; both must agree exactly.
fn system_guest(keep_trace: Option<std::path::PathBuf>) -> Result<(), String> {
    println!("krr demo: a tiny kernel and user program on krr's PC (GDT/IDT/TSS, paging, 8259 + 8254 timer interrupts, SYSCALL/SYSRET, COM1, ACPI power-off)");
    println!("--- guest console (default mode) ---");
    let modes = [
        ("default (tiered JIT)", EngineConfig::default(), true),
        (
            "single-step",
            EngineConfig {
                max_block_insns: 1,
                ..EngineConfig::default()
            },
            false,
        ),
    ];
    let mut reference: Option<DemoOutcome> = None;
    for (name, engine, echo) in modes {
        let o = run_demo_guest(engine, echo)?;
        if echo {
            println!("--- end of guest console ---");
        }
        if o.end != RunEnd::PowerOff {
            return Err(format!(
                "the system guest ended with {:?} instead of powering off in {name} mode; its console:\n{}",
                o.end, o.console
            ));
        }
        println!("{name:<22} {}", o.summary());
        match &reference {
            None => reference = Some(o),
            Some(first) => {
                let c = (&first.counters, &o.counters);
                if first.console != o.console
                    || first.icount != o.icount
                    || c.0.interrupts != c.1.interrupts
                    || c.0.port_in != c.1.port_in
                    || c.0.port_out != c.1.port_out
                    || c.0.rdtsc != c.1.rdtsc
                {
                    return Err(format!(
                        "the system guest differs between default and {name} mode: {} vs {} instructions, counters {:?} vs {:?}; {name} console:\n{}",
                        first.icount, o.icount, c.0, c.1, o.console
                    ));
                }
            }
        }
    }
    println!("both modes agree: same console, instruction count, interrupts, port IO and RDTSC");
    println!();
    match keep_trace {
        Some(path) => record_and_replay(&path),
        None => {
            let path = std::env::temp_dir().join(format!("krr-demo-{}.trace", std::process::id()));
            let result = record_and_replay(&path);
            let _ = std::fs::remove_file(&path);
            result
        }
    }
}

/// Console bytes collected from a replay.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Record the system guest, then replay the trace in the default and single-step modes.
fn record_and_replay(path: &std::path::Path) -> Result<(), String> {
    println!("krr demo: recording the system guest to {}", path.display());
    let (o, rec) = krr::demo_guest::record_demo_guest(EngineConfig::default(), path, false)?;
    println!("=== Record: Event Stats ===");
    for l in rec.end_info.counts.lines() {
        println!("{l}");
    }
    println!(
        "Instructions: {}\nTime(s): {:.3}\nTrace: {} bytes, final registers hash {:016x}",
        o.icount,
        o.wall.as_secs_f64(),
        rec.trace_bytes,
        rec.end_info.regs_hash
    );
    for (name, engine) in [
        ("default", EngineConfig::default()),
        (
            "single-step",
            EngineConfig {
                max_block_insns: 1,
                ..EngineConfig::default()
            },
        ),
    ] {
        println!();
        println!("krr demo: replaying the trace ({name} mode)");
        let mut r = krr::replay::Replayer::open(
            path,
            krr::replay::ReplayOptions {
                engine,
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let console = SharedBuf::default();
        r.set_console(Some(Box::new(console.clone())));
        let out = r
            .run(&indicatif::ProgressBar::hidden())
            .map_err(|e| e.to_string())?;
        print!("{}", out.summary());
        let replayed = console.0.lock().map(|v| v.clone()).unwrap_or_default();
        if !matches!(out.verdict, krr::replay::Verdict::Matched) {
            return Err(format!("the {name} replay did not match the recording"));
        }
        if out.icount != rec.end_info.icount || replayed != o.console.as_bytes() {
            return Err(format!(
                "the {name} replay matched its checkpoints but its console or instruction count differs ({} vs {} instructions)",
                out.icount, rec.end_info.icount
            ));
        }
        println!("replayed console output is identical to the recorded run's");
    }
    Ok(())
}
