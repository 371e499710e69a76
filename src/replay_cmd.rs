//! `krr replay`: the command-line face of the replayer.

use clap::Args;
use krr::replay::{ReplayOptions, Replayer, Verdict};
use krr::symbols::SymbolTable;
use std::path::PathBuf;

#[derive(Args)]
pub struct ReplayArgs {
    /// The trace to replay.
    #[arg(required_unless_present = "krr", conflicts_with = "krr")]
    trace: Option<PathBuf>,
    /// Replay a recording made by KRR: its snapshot file; kernel_rr.log and the DMA,
    /// network and checkpoint files are found beside it.
    #[arg(long, value_name = "SNAPSHOT", requires = "vmlinux")]
    krr: Option<PathBuf>,
    /// The recorded kernel's vmlinux (with symbols): with --krr, for the trap points; for a
    /// krr trace, to name kernel functions (booted with `nokaslr`) as --system-map does.
    #[arg(long, value_name = "VMLINUX")]
    vmlinux: Option<PathBuf>,
    /// The kernel's System.map (Debian ships it in /boot beside vmlinuz; /proc/kallsyms of
    /// a `nokaslr` boot works too): reports, `--stop-at` and the `--log-bound` log name
    /// kernel functions (`func+0xoff`), and `--break` takes symbols.
    #[arg(long, value_name = "FILE", conflicts_with = "krr")]
    system_map: Option<PathBuf>,
    /// Stop before the first instruction at SYMBOL, SYMBOL+OFFSET or 0xADDRESS and print the
    /// state there (repeatable: the first one reached stops). Costs nothing elsewhere.
    #[arg(long = "break", value_name = "SYMBOL|ADDR")]
    breaks: Vec<String>,
    /// Serve gdb's remote protocol on 127.0.0.1:PORT: the replay waits before its first
    /// instruction for `gdb VMLINUX -ex 'target remote :PORT'` (breakpoints, stepi,
    /// continue, registers and memory; writes are refused).
    #[arg(long, value_name = "PORT", conflicts_with_all = ["log_bound", "stop_at"])]
    gdb: Option<u16>,
    /// With gdb: instructions between the snapshots that reverse execution restores (each
    /// step back replays at most this many).
    #[arg(long, value_name = "N", default_value_t = 20_000_000)]
    snapshot_interval: u64,
    /// With gdb: MiB the snapshots may take, the one full copy of guest RAM included; past
    /// it the oldest are merged away and history starts later.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    snapshot_mem: u64,
    /// QEMU's spelling: `--gdb 1234`.
    #[arg(short = 's', conflicts_with_all = ["gdb", "log_bound", "stop_at"])]
    gdb_default_port: bool,
    /// QEMU's spelling of "wait for gdb before running": with --gdb or -s the replay always
    /// waits before its first instruction.
    #[arg(short = 'S')]
    wait_for_gdb: bool,
    /// With --krr: the event log when it is not the snapshot's neighbour kernel_rr.log.
    #[arg(long, value_name = "FILE", requires = "krr")]
    krr_events: Option<PathBuf>,
    /// With --krr: the CPU model the replay answers CPUID with (KRR replays with
    /// `-cpu Broadwell`); see `krr run --cpu help`.
    #[arg(
        long,
        value_name = "MODEL",
        default_value = "broadwell",
        requires = "krr"
    )]
    cpu: String,
    /// With --krr: the behaviour profile for undefined results: `krr-compat` (KRR's QEMU 7.0
    /// TCG, which KRR's recordings were verified against), `intel` or `host`
    /// (docs/PROFILES.md).
    #[arg(
        long,
        value_name = "PROFILE",
        default_value = "krr-compat",
        requires = "krr"
    )]
    profile: String,
    #[command(flatten)]
    engine: crate::engine_args::EngineArgs,
    /// Do not print the guest's console output.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Log each instruction in [N1, N2) with its registers: `start=N1,end=N2` (end optional).
    #[arg(long, value_parser = parse_log_bound)]
    log_bound: Option<(u64, u64)>,
    /// Where `--log-bound` writes (default: stderr).
    #[arg(short = 'D')]
    log_file: Option<PathBuf>,
    /// Stop before instruction N and print the state there (for --krr: KRR's count).
    #[arg(long)]
    stop_at: Option<u64>,
    /// With --krr: the instruction log's lines, `native` (krr's) or `krr` (KRR's `Regs:` /
    /// `inst_cnt=` / disassembly items).
    #[arg(long, value_name = "FORMAT", default_value = "native", value_parser = ["native", "krr"])]
    log_format: String,
    /// With --krr: a line per replayed event (KRR's `-krr-debug`).
    #[arg(long, requires = "krr")]
    krr_debug: bool,
    /// Replay the segments between the trace's snapshots on N threads at once (each checks
    /// the snapshot where it ends); same verdict, statistics and console as one thread.
    #[arg(long, value_name = "N", conflicts_with_all = ["gdb", "gdb_default_port", "log_bound", "stop_at", "krr", "breaks"])]
    jobs: Option<usize>,
    /// Replay only segment K (from the snapshot before it to the one after it, which it
    /// must match): a batch system spreads a long trace's segments over machines this way.
    #[arg(long, value_name = "K", conflicts_with_all = ["jobs", "gdb", "gdb_default_port", "log_bound", "stop_at", "krr", "breaks"])]
    segment: Option<usize>,
    /// Replay once and add a snapshot every N instructions to the trace (for --jobs and
    /// --segment; a trace recorded with `--snapshot-interval 0`, or an older one). The trace
    /// is rewritten in place only if the replay matched.
    #[arg(long, value_name = "N", conflicts_with_all = ["jobs", "segment", "gdb", "gdb_default_port", "log_bound", "stop_at", "krr", "breaks"])]
    save_snapshots: Option<u64>,
    /// Do not hash guest RAM at checkpoints (only the CPU state hash is checked there; the
    /// final RAM hash still is).
    #[arg(long)]
    no_ram_check: bool,
}

fn parse_log_bound(s: &str) -> Result<(u64, u64), String> {
    let (mut start, mut end) = (None, u64::MAX);
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected start=N or end=N"))?;
        let n: u64 = v
            .trim()
            .parse()
            .map_err(|_| format!("`{v}` is not an instruction count"))?;
        match k.trim() {
            "start" => start = Some(n),
            "end" => end = n,
            other => return Err(format!("unknown key `{other}` (use start=N1,end=N2)")),
        }
    }
    let start = start.ok_or("start=N is required")?;
    if end <= start {
        return Err(format!("end ({end}) must be after start ({start})"));
    }
    Ok((start, end))
}

pub fn run(a: ReplayArgs) -> Result<i32, String> {
    let engine = a.engine.config();
    if a.log_file.is_some() && a.log_bound.is_none() {
        return Err("-D FILE needs --log-bound start=N1,end=N2".into());
    }
    if a.wait_for_gdb && a.gdb.is_none() && !a.gdb_default_port {
        return Err("-S waits for gdb: give -s (port 1234) or --gdb PORT too".into());
    }
    let gdb = a.gdb.or(a.gdb_default_port.then_some(1234)).map(|port| {
        let history = krr::gdb::History {
            interval: a.snapshot_interval,
            budget: a.snapshot_mem << 20,
        };
        (port, history)
    });
    if let (Some(snapshot), Some(vmlinux)) = (&a.krr, &a.vmlinux) {
        let options = krr::krr_replay::load::Options {
            snapshot: snapshot.clone(),
            vmlinux: vmlinux.clone(),
            events: a.krr_events.clone(),
            cpu: a.cpu.clone(),
            profile: krr_jit::Profile::from_name(&a.profile)
                .ok_or_else(|| format!("--profile {}: host, krr-compat or intel", a.profile))?,
            engine,
            expect_mem: None,
            expect_vcpus: None,
        };
        let format = match a.log_format.as_str() {
            "krr" => krr::krr_replay::driver::LogFormat::KrrQemu,
            _ => krr::krr_replay::driver::LogFormat::Native,
        };
        return crate::replay_krr_cmd::run(crate::replay_krr_cmd::Request {
            options,
            console: !a.quiet,
            log: a.log_bound.map(|(s, e)| (s, e, a.log_file.clone(), format)),
            stop_at: a.stop_at,
            krr_debug: a.krr_debug,
            breaks: a.breaks.clone(),
            gdb,
        });
    }
    let Some(trace) = a.trace else {
        return Err("replay: name a trace or --krr SNAPSHOT".into());
    };
    let symbols = match (&a.system_map, &a.vmlinux) {
        (Some(_), Some(_)) => return Err("--system-map and --vmlinux: give one of them".into()),
        (Some(map), None) => Some(SymbolTable::from_system_map(map)?),
        (None, Some(v)) => Some(SymbolTable::from_vmlinux(v)?),
        (None, None) => None,
    };
    let breaks = a
        .breaks
        .iter()
        .map(|b| SymbolTable::resolve(symbols.as_ref(), b).map_err(|e| format!("--break {e}")))
        .collect::<Result<Vec<u64>, String>>()?;
    let options = ReplayOptions {
        engine,
        console: !a.quiet,
        log_bound: a.log_bound,
        log_file: a.log_file,
        stop_at: a.stop_at,
        skip_ram_check: a.no_ram_check,
        verify_ram_digest: std::env::var_os("KRR_VERIFY_RAM_DIGEST").is_some_and(|v| v == "1"),
        symbols: symbols.map(std::sync::Arc::new),
        breaks,
        no_read_ahead: false,
    };
    if a.jobs.is_some() || a.segment.is_some() {
        let bar = krr::report::progress(None);
        let quiet = a.quiet;
        let p =
            krr::replay::parallel::replay(&trace, options, a.jobs.unwrap_or(1), a.segment, &bar)
                .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        if !quiet {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&p.console);
        }
        eprint!("{}", p.outcome.summary());
        eprintln!(
            "Parallel: {} segments on {} threads, {} snapshots checked at segment ends",
            p.segments, p.jobs, p.checked
        );
        return Ok(exit_code(&p.outcome.verdict));
    }
    let mut r = Replayer::open(&trace, options).map_err(|e| e.to_string())?;
    if let Some(every) = a.save_snapshots {
        return crate::replay_snapshots::save(r, &trace, every, a.quiet);
    }
    if let Some((port, history)) = gdb {
        if !a.quiet {
            r.set_console(Some(Box::new(std::io::stdout())));
        }
        let run = r.start().map_err(|e| e.to_string())?;
        let mut session = krr::gdb::session::TraceSession::new(r, run);
        krr::gdb::serve(&mut session, port, history)?;
        let krr::gdb::session::TraceSession {
            replayer: mut r,
            run,
            ended,
            ..
        } = session;
        let bar = indicatif::ProgressBar::hidden();
        let verdict = ended.unwrap_or(Verdict::Stopped);
        let outcome = r.finish(run, verdict, &bar).map_err(|e| e.to_string())?;
        eprint!("{}", outcome.summary());
        return Ok(exit_code(&outcome.verdict));
    }
    let bar = krr::report::progress(Some(r.total_instructions()));
    if !a.quiet {
        r.set_console(Some(Box::new(krr::report::Console::new(bar.clone()))));
    }
    let outcome = r.run(&bar).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    eprint!("{}", outcome.summary());
    Ok(exit_code(&outcome.verdict))
}

fn exit_code(v: &Verdict) -> i32 {
    match v {
        Verdict::Matched
        | Verdict::Stopped
        | Verdict::Breakpoint(_)
        | Verdict::SegmentMatched(_) => 0,
        Verdict::Diverged(_) => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_log_bound;

    #[test]
    fn log_bounds_parse() {
        assert_eq!(parse_log_bound("start=5,end=9"), Ok((5, 9)));
        assert_eq!(parse_log_bound("start=5"), Ok((5, u64::MAX)));
        assert!(parse_log_bound("end=9").is_err());
        assert!(parse_log_bound("start=9,end=9").is_err());
        assert!(parse_log_bound("start=x").is_err());
    }
}
