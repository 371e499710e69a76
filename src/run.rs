//! `krr run` and `krr record`: boot a Linux kernel on the machine, console on stdout, and
//! (record) write the trace.

use krr::cpu_model::CpuModel;
use krr::machine::{linux, Machine, MachineConfig, RunEnd};
use krr::record::{record, RecordOptions};
use krr_jit::EngineConfig;
use std::path::PathBuf;
use std::time::Instant;

pub struct RunArgs {
    pub kernel: String,
    pub initrd: Option<String>,
    pub append: String,
    pub mem_bytes: u64,
    pub engine: EngineConfig,
    pub cpu: CpuModel,
    pub max_instructions: Option<u64>,
    /// Host time instead of virtual time.
    pub host_time: bool,
    pub disk: Option<DiskArgs>,
    /// `krr record`: the trace to write and the checkpoint spacing.
    /// The trace, the checkpoint interval and the snapshot interval.
    pub record: Option<(PathBuf, u64, u64)>,
}

/// `--disk IMAGE [--disk-overlay FILE] [--disk-read-only]`.
pub struct DiskArgs {
    pub image: PathBuf,
    pub overlay: Option<PathBuf>,
    pub read_only: bool,
}

/// The most RAM krr's PC holds: everything from 3 GiB up to 4 GiB is the PCI window, the
/// IO-APIC and the local APIC, and RAM is one block from address 0.
pub const MAX_MEM_BYTES: u64 = 3 << 30;

/// The kernel command line krr boots with unless told otherwise: what a user types (the
/// serial console), plus fixed kernel addresses for debugging and a reboot (the end of the
/// run) on panic. The kernel finds the local APIC and IO-APIC in the MADT and uses them.
pub const DEFAULT_APPEND: &str = "console=ttyS0 nokaslr panic=-1";

/// Parse sizes like `512M`, `2G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (use e.g. 512M or 2G)"))
}

pub fn run(args: RunArgs) -> Result<i32, String> {
    let kernel = std::fs::read(&args.kernel)
        .map_err(|e| format!("cannot read kernel {}: {e}", args.kernel))?;
    let initrd = match &args.initrd {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("cannot read initrd {p}: {e}"))?),
        None => None,
    };
    if args.mem_bytes > MAX_MEM_BYTES {
        return Err(format!(
            "--mem: {} MiB is more than krr's PC holds ({} MiB, below the PCI window)",
            args.mem_bytes >> 20,
            MAX_MEM_BYTES >> 20
        ));
    }
    let engine = args.engine;
    let bar = krr::report::progress(None);
    let mut m = Machine::new(
        MachineConfig {
            mem_bytes: args.mem_bytes,
            engine,
        },
        Box::new(krr::report::Console::new(bar.clone())),
    )
    .map_err(|e| e.to_string())?;
    m.set_cpuid(args.cpu.cpuid);
    if let Some(d) = &args.disk {
        m.attach_disk(&d.image, d.overlay.as_deref(), d.read_only)?;
    }
    let (arch, mem) = m.core.arch_and_mem();
    let info = linux::load(
        mem,
        arch,
        &args.kernel,
        &kernel,
        initrd.as_deref(),
        &args.append,
    )
    .map_err(|e| e.to_string())?;
    m.core.flush_tlb();
    log::info!(
        "kernel loaded at {:#x}, entry {:#x}, initrd {:?}",
        info.kernel_addr,
        info.entry,
        info.initrd
    );
    if args.host_time {
        m.use_host_time();
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        m.attach_console_input(stdin_bytes());
    }
    let t0 = Instant::now();
    let mut recorded = None;
    let end = match &args.record {
        None => m.run(args.max_instructions),
        Some((path, checkpoint_interval, snapshot_interval)) => {
            let name = |p: &str| {
                std::path::Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let opts = RecordOptions {
                path,
                checkpoint_interval: *checkpoint_interval,
                snapshot_interval: *snapshot_interval,
                guest: format!(
                    "Linux kernel {}{}",
                    name(&args.kernel),
                    args.initrd
                        .as_deref()
                        .map(|i| format!(", initrd {}", name(i)))
                        .unwrap_or_default()
                ),
                cmdline: args.append.clone(),
                cpu_model: args.cpu.spec.clone(),
                max_instructions: args.max_instructions,
            };
            let r = record(&mut m, &opts, &bar)?;
            let end = r.end.clone();
            recorded = Some(r);
            Ok(end)
        }
    };
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let icount = m.core.cpu().icount;
    let mips = icount as f64 / secs.max(1e-9) / 1e6;
    let stats = &m.engine.stats;
    log::info!("engine: {}", stats.dispatch_summary());
    let state_hash = krr::trace::state::regs_hash(m.core.cpu());
    if log::log_enabled!(log::Level::Debug) {
        log::debug!("final registers: {}", krr::report::regs_line(m.core.cpu()));
        let rip = m.core.cpu().rip;
        let (bytes, text) = krr::report::describe_insn(&mut m.core, rip);
        log::debug!("next instruction: [{bytes}] {text}");
        log::debug!("RAM hash: {:016x}", m.core.ram_hash());
        if let Some(path) = std::env::var_os("KRR_DUMP_RAM") {
            let ram = m
                .core
                .mem()
                .slice(0, m.core.mem().size() as usize)
                .unwrap_or(&[]);
            if let Err(e) = std::fs::write(&path, ram) {
                log::warn!("cannot write the RAM dump: {e}");
            }
        }
    }
    let summary = format!(
        "{icount} instructions in {secs:.2} s ({mips:.1} MIPS), RIP {:#x}, registers hash {state_hash:016x}; {} blocks decoded, {} blocks compiled, {} code bytes, {:.2} s compiling, {} blocks from the code cache, {} interrupts",
        m.core.cpu().rip,
        stats.blocks_decoded,
        stats.blocks_compiled,
        stats.code_bytes,
        stats.compile_time.as_secs_f64(),
        stats.blocks_cached,
        m.board.counters.interrupts
    );
    match end {
        Ok(end) => {
            let (what, code) = match end {
                RunEnd::PowerOff => ("guest powered off".to_string(), 0),
                RunEnd::Reset => ("guest reset the machine".to_string(), 0),
                RunEnd::DebugExit(c) => (
                    format!("guest exited through the debug port with status {c}"),
                    (c & 0xff) as i32,
                ),
                RunEnd::HaltedForever => ("guest halted with interrupts disabled".to_string(), 2),
                RunEnd::InstructionLimit => ("instruction limit reached".to_string(), 3),
            };
            eprintln!("krr: {what}: {summary}");
            if let (Some(r), Some((path, _, _))) = (&recorded, &args.record) {
                eprintln!("=== Event Stats ===");
                for l in r.end_info.counts.lines() {
                    eprintln!("{l}");
                }
                eprintln!("Instructions: {icount}");
                eprintln!("Time(s): {secs:.3}");
                eprintln!(
                    "Trace: {} ({} bytes, registers hash {:016x}, RAM hash {:016x})",
                    path.display(),
                    r.trace_bytes,
                    r.end_info.regs_hash,
                    r.end_info.ram_hash
                );
            }
            Ok(code)
        }
        Err(e) => Err(format!("{e} ({summary})")),
    }
}

/// Bytes typed on the terminal, read on a thread of their own (the terminal's line editing
/// and echo stay on: the guest receives a line when Enter is pressed).
fn stdin_bytes() -> std::sync::mpsc::Receiver<u8> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("krr-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || buf[..n].iter().any(|&b| tx.send(b).is_err()) {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start the stdin thread: {e}");
    }
    rx
}
