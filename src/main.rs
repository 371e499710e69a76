//! krr: record and replay x86-64 Linux kernel executions.

mod demo;
mod engine_args;
mod info;
mod info_krr;
mod replay_cmd;
mod replay_krr_cmd;
mod replay_snapshots;
mod run;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "krr",
    version,
    about = "Record and replay x86-64 Linux kernel executions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct BootArgs {
    /// The kernel image (bzImage).
    #[arg(long)]
    kernel: String,
    /// An initramfs (cpio).
    #[arg(long)]
    initrd: Option<String>,
    /// The kernel command line.
    #[arg(long, default_value = run::DEFAULT_APPEND)]
    append: String,
    /// Guest RAM, e.g. 512M or 2G (at most 3G: the PCI window and the APICs sit above).
    #[arg(long, default_value = "512M")]
    mem: String,
    /// A raw disk image, attached as a virtio-blk disk (PCI 00:01.0, /dev/vda in the guest).
    /// krr never modifies it: the guest's writes stay in memory unless --disk-overlay names
    /// a file to keep them in.
    #[arg(long, value_name = "IMAGE")]
    disk: Option<PathBuf>,
    /// Keep the disk's written sectors in this file (created if missing; a later run with
    /// the same image and overlay sees them).
    #[arg(long, value_name = "FILE", requires = "disk")]
    disk_overlay: Option<PathBuf>,
    /// Offer the disk read-only (the guest's writes fail).
    #[arg(long, requires = "disk")]
    disk_read_only: bool,
    #[command(flatten)]
    engine: engine_args::EngineArgs,
    /// The CPU model, as QEMU's -cpu: NAME[,+FEATURE|,-FEATURE]... Models: max (everything
    /// krr implements, the default), baseline (x86-64 v1), broadwell, icelake-client (QEMU's,
    /// as its TCG offers them, with KRR's masking). `--cpu help` lists models and features.
    #[arg(long, value_name = "SPEC", conflicts_with = "cpuid")]
    cpu: Option<String>,
    /// Take the CPUID table from FILE, the output of `cpuid -r` (first CPU) on the recording
    /// host or in the recorded guest, instead of a named model. Refused if it reports a
    /// feature krr does not model.
    #[arg(long, value_name = "FILE")]
    cpuid: Option<PathBuf>,
    /// Stop after this many instructions.
    #[arg(long)]
    max_instructions: Option<u64>,
    /// Use the host clock instead of virtual time (instruction count): a realistic run that
    /// differs each time. Console input is taken from stdin when it is a terminal.
    #[arg(long)]
    host_time: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the built-in guests: compare the engine tiers, record and replay.
    Demo {
        /// Keep the demo's trace in this file (default: a temporary file, removed at the end).
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Boot a Linux kernel (bzImage) on krr's PC, console on stdout.
    Run(BootArgs),
    /// Boot a Linux kernel as `run` does and write a trace of the run.
    Record {
        #[command(flatten)]
        boot: BootArgs,
        /// The trace file to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Instructions between state checkpoints in the trace.
        #[arg(long, default_value_t = krr::record::DEFAULT_CHECKPOINT_INTERVAL)]
        checkpoint_interval: u64,
        /// Instructions between the trace's snapshots, from which `krr replay --jobs N`
        /// replays segments concurrently (0: none; each holds the RAM pages changed since
        /// the previous one).
        #[arg(long, default_value_t = krr::record::DEFAULT_SNAPSHOT_INTERVAL)]
        snapshot_interval: u64,
    },
    /// Replay a trace: only the trace is needed.
    Replay(replay_cmd::ReplayArgs),
    /// Print a trace's header, machine configuration and event statistics.
    Info {
        /// The trace file.
        #[arg(required_unless_present = "krr", conflicts_with = "krr")]
        trace: Option<PathBuf>,
        /// Describe a recording made by KRR instead: its snapshot (a QEMU migration stream);
        /// kernel_rr.log, the DMA and network logs and checkpoint-<cpu> are found beside it.
        #[arg(long, value_name = "SNAPSHOT")]
        krr: Option<PathBuf>,
        /// With --krr: the recorded kernel's vmlinux (with symbols); checks it against the
        /// snapshot (KASLR slide, banner) and prints the trap points the replay will use.
        #[arg(long, value_name = "VMLINUX", requires = "krr")]
        vmlinux: Option<PathBuf>,
        /// Also list the events with index in [FIRST, LAST) (`FIRST..LAST`, `FIRST..` or `..`).
        #[arg(long, value_name = "RANGE")]
        events: Option<String>,
    },
}

fn boot(b: BootArgs, record: Option<(PathBuf, u64, u64)>) -> Result<i32, String> {
    let mem_bytes = run::parse_size(&b.mem)?;
    use krr::cpu_model::{CpuModel, DEFAULT_SPEC};
    let cpu = match (&b.cpu, &b.cpuid) {
        (_, Some(file)) => CpuModel::from_dump_file(file).map_err(|e| format!("--cpuid {e}"))?,
        (spec, None) => {
            let spec = spec.as_deref().unwrap_or(DEFAULT_SPEC);
            CpuModel::parse(spec).map_err(|e| format!("--cpu {spec}: {e}"))?
        }
    };
    cpu.check_host()?;
    for l in cpu.masked_lines() {
        log::info!("CPU model {}: {l}", cpu.spec);
    }
    run::run(run::RunArgs {
        kernel: b.kernel,
        initrd: b.initrd,
        append: b.append,
        mem_bytes,
        engine: b.engine.config(),
        cpu,
        max_instructions: b.max_instructions,
        host_time: b.host_time,
        disk: b.disk.map(|image| run::DiskArgs {
            image,
            overlay: b.disk_overlay,
            read_only: b.disk_read_only,
        }),
        record,
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // `krr run --cpu help` (or record): list the models and features, no kernel needed.
    let args: Vec<String> = std::env::args().collect();
    if args.windows(2).any(|w| w[0] == "--cpu" && w[1] == "help")
        || args.iter().any(|a| a == "--cpu=help")
    {
        print!("{}", krr::cpu_model::help());
        return;
    }
    // `krr replay` with KRR's own (QEMU) command line, as its users' scripts write it.
    if args.get(1).is_some_and(|a| a == "replay") && krr::qemu_args::is_krr_command_line(&args[2..])
    {
        let code = replay_krr_cmd::run_qemu_spelling(&args[2..]).unwrap_or_else(|e| {
            eprintln!("krr: {e}");
            1
        });
        std::process::exit(code);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { trace } => demo::run(trace).map(|()| 0),
        Command::Run(b) => boot(b, None),
        Command::Record {
            boot: b,
            output,
            checkpoint_interval,
            snapshot_interval,
        } => boot(b, Some((output, checkpoint_interval, snapshot_interval))),
        Command::Replay(args) => replay_cmd::run(args),
        Command::Info {
            trace,
            krr,
            vmlinux,
            events,
        } => match (krr, trace) {
            (Some(snapshot), _) => info_krr::run(&snapshot, vmlinux.as_deref()),
            (None, Some(trace)) => info::run(&trace, events.as_deref()),
            (None, None) => Err("info: name a trace or --krr SNAPSHOT".into()),
        },
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("krr: {e}");
            std::process::exit(1);
        }
    }
}
