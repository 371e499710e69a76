//! `krr replay --krr SNAPSHOT --vmlinux VMLINUX`: a KRR recording replayed kernel-only, with
//! KRR's end-of-replay block and krr's verdict.

use krr::krr_replay::driver::{End, InsnLog, LogFormat, Pause};
use krr::krr_replay::load::{self, Options};
use krr::symbols::SymbolTable;
use std::path::PathBuf;
use std::time::Instant;

/// What to run and show besides the recording itself.
pub struct Request {
    pub options: Options,
    pub console: bool,
    /// The instruction log window [start, end) in KRR's count, its file (stderr when `None`)
    /// and format.
    pub log: Option<(u64, u64, Option<PathBuf>, LogFormat)>,
    pub stop_at: Option<u64>,
    /// KRR's `-krr-debug`: a line per replayed event.
    pub krr_debug: bool,
    /// `--break SYMBOL|ADDR`: stop there and show the state.
    pub breaks: Vec<String>,
    /// Serve gdb on this port, with this much history.
    pub gdb: Option<(u16, krr::gdb::History)>,
}

pub fn run(r: Request) -> Result<i32, String> {
    let start = Instant::now();
    let o = &r.options;
    let console = r.console;
    let mut l = load::open(o)?;
    if let Some((first, end, file, format)) = &r.log {
        let out: Box<dyn std::io::Write> = match file {
            Some(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| format!("cannot create {}: {e}", p.display()))?,
            )),
            None => Box::new(std::io::stderr()),
        };
        l.driver.log = Some(InsnLog {
            start: *first,
            end: *end,
            format: *format,
            out,
            last: None,
        });
    }
    l.driver.stop_at = r.stop_at;
    l.driver.bus.queue.debug = r.krr_debug;
    eprintln!("replaying {}", l.recording);
    eprintln!("KASLR slide {:#x}", l.slide);
    for n in &l.notes {
        eprintln!("note: {n}");
    }
    let breaks = r
        .breaks
        .iter()
        .map(|b| SymbolTable::resolve(Some(&l.symbols), b).map_err(|e| format!("--break {e}")))
        .collect::<Result<Vec<u64>, String>>()?;
    if !breaks.is_empty() {
        l.driver.set_breakpoints(breaks);
    }
    let total = l.driver.bus.queue.len() as u64;
    let end = if let Some((port, history)) = r.gdb {
        match krr::gdb::serve(&mut l.driver, port, history)? {
            // The end again: the recording's end or the divergence, at once.
            Some(_) => l.driver.run(&mut |_| {})?,
            None => End::Paused(Pause::Reached),
        }
    } else {
        let bar = krr::report::progress(Some(total));
        // KRR prints `Replayed events[n/total]` lines; krr shows the same words on its bar.
        let end = l.driver.run(&mut |done| {
            if done != bar.position() {
                bar.set_position(done);
                bar.set_message(format!("Replayed events[{done}/{total}]"));
            }
        })?;
        bar.finish_and_clear();
        end
    };
    let secs = start.elapsed().as_secs_f64();
    let d = &l.driver;
    if console && !d.bus.devices.console.is_empty() {
        println!("{}", String::from_utf8_lossy(&d.bus.devices.console));
    }
    if end == End::Finished {
        println!("Replay finished");
    }
    println!("Replay executed in {secs:.2} seconds");
    print!("{}", krr::krr_replay::stats::event_stats(&l.loaded));
    let c = d.core.cpu();
    // All vCPUs' (krr's timeline).
    let instructions = d.position();
    let mips = instructions as f64 / secs.max(1e-9) / 1e6;
    let replayed = d.bus.queue.replayed_count() as u64;
    eprintln!(
        "{} of {} events replayed; {instructions} kernel instructions (KRR count {}), {mips:.1} MIPS; {} trap-point stops, {} port-input count resyncs, {} interrupts with corrected registers, {} ring appends",
        replayed,
        total,
        d.bus.count(c),
        d.trap_hits,
        d.bus.io_resyncs,
        d.corrected_interrupts,
        d.bus.ring.as_ref().map_or(0, |r| r.appended),
    );
    if d.vcpus() > 1 {
        let counts: Vec<String> = (0..d.vcpus())
            .filter_map(|v| {
                d.vcpu_state(v)
                    .map(|(_, n)| format!("vCPU {v} at KRR count {n}"))
            })
            .collect();
        eprintln!(
            "{} vCPUs: {}; {} exec-lock hand-overs",
            d.vcpus(),
            counts.join(", "),
            d.handovers
        );
    }
    if d.checkpoint_records() > 0 {
        let t = d.checkpoint_tally;
        eprintln!(
            "checkpoints: {} passed, {} missed, {} skipped (REP), {} with RFLAGS differing (ignored, as KRR does), of {}",
            t.passed,
            t.missed,
            t.skipped,
            t.flags_differ,
            d.checkpoint_records()
        );
    }
    for (m, rip, n) in &d.bus.model_answers {
        eprintln!("warning: {m} executed {n} times (first at RIP {rip:#x}): not recorded by KRR, answered by the CPU model");
    }
    if d.bus.pic_guessed {
        eprintln!("warning: the 8259 mask register was read, but the snapshot has no i8259 state and the kernel had not written it; krr answered 0xff");
    }
    let at = |rip: u64| SymbolTable::suffix(Some(&l.symbols), rip);
    match end {
        End::Paused(pause) => {
            let why = match pause {
                Pause::Breakpoint(b) => format!("at breakpoint {b:#x}{}", at(b)),
                Pause::Reached | Pause::Watch(_) => "where gdb left it".to_string(),
            };
            eprintln!(
                "verdict: stopped {why} before instruction {} (KRR count {}), RIP {:#x}{}",
                d.position(),
                d.bus.count(c),
                c.rip,
                at(c.rip)
            );
            eprintln!("{}", krr::report::regs_line(c));
            Ok(0)
        }
        End::Stopped(count) => {
            eprintln!(
                "verdict: stopped before KRR count {count} (instruction {}), RIP {:#x}{}",
                c.icount,
                c.rip,
                at(c.rip)
            );
            eprintln!("{}", krr::report::regs_line(c));
            Ok(0)
        }
        End::Finished => {
            eprintln!(
                "verdict: replayed to the end of the recording; final RIP {:#x}{}",
                c.rip,
                at(c.rip)
            );
            eprintln!("{}", krr::report::regs_line(c));
            Ok(0)
        }
        End::Diverged(div) => {
            eprintln!(
                "verdict: DIVERGED at instruction {} (KRR count {}), RIP {:#x}{}: {}",
                c.icount,
                d.bus.count(c),
                c.rip,
                at(c.rip),
                div.message
            );
            Ok(2)
        }
    }
}

/// `krr replay` with KRR's QEMU command line (`-kernel-replay NAME -singlestep -D FILE
/// -replay-log-bound ... -m ... -smp ... -cpu ...`, as KRR-INTERFACE.md shows it), plus krr's
/// `--vmlinux FILE` (KRR compiles the trap points in; krr reads them from the vmlinux, by
/// default `vmlinux` beside the snapshot) and `-q`.
pub fn run_qemu_spelling(args: &[String]) -> Result<i32, String> {
    let mut rest = Vec::new();
    let mut vmlinux = None;
    let mut quiet = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vmlinux" => {
                vmlinux = Some(PathBuf::from(it.next().ok_or("--vmlinux needs a file")?))
            }
            "-q" | "--quiet" => quiet = true,
            _ => rest.push(a.clone()),
        }
    }
    let c = krr::qemu_args::parse(&rest)?;
    for n in &c.notes {
        eprintln!("note: {n}");
    }
    if let Some(id) = c.restore_snapshot_id {
        return Err(format!(
            "-restore-snapshot-id {id}: krr keeps its replay snapshots in memory, not in files: attach gdb (-s -S) and use `monitor goto N` or reverse execution instead"
        ));
    }
    let gdb = c.gdb.map(|g| {
        let history = krr::gdb::History {
            interval: c.snapshot_period.unwrap_or(20_000_000),
            budget: 2048 << 20,
        };
        (g.port, history)
    });
    if gdb.is_none() && c.snapshot_period.is_some() {
        eprintln!("note: -snapshot-period: krr takes its snapshots in memory while gdb is attached (-s -S); without gdb there is nothing to go back to");
    }
    let snapshot = c
        .snapshot
        .ok_or("KRR's command line names no recording (-kernel-replay NAME)")?;
    let vmlinux = match vmlinux {
        Some(v) => v,
        None => {
            let beside = snapshot
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("vmlinux");
            if !beside.exists() {
                return Err(format!(
                    "the recorded kernel's vmlinux is needed for its trap points: name it with --vmlinux FILE (none at {})",
                    beside.display()
                ));
            }
            beside
        }
    };
    let mut engine = krr_jit::EngineConfig::default();
    if c.singlestep {
        engine.max_block_insns = 1;
    }
    let log = if c.log_every_instruction || c.log_bound.is_some() {
        let (s, e) = c.log_bound.map_or((0, u64::MAX), |b| match b.end {
            Some(end) => (b.start, end),
            // KRR's `end=0`: every instruction counted above start.
            None => (b.start + 1, u64::MAX),
        });
        Some((s, e, c.log_file.clone(), LogFormat::KrrQemu))
    } else {
        None
    };
    let options = Options {
        snapshot,
        vmlinux,
        events: None,
        cpu: c.cpu.unwrap_or_else(|| "broadwell".into()),
        profile: krr_jit::Profile::KrrCompat,
        engine,
        expect_mem: c.mem_bytes,
        expect_vcpus: c.vcpus,
    };
    run(Request {
        options,
        console: !quiet,
        log,
        stop_at: None,
        krr_debug: c.krr_debug,
        breaks: Vec::new(),
        gdb,
    })
}
