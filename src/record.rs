//! The recorder: run a loaded machine and stream its inputs to a trace file.

use crate::machine::{Machine, MachineError, RecordItem, RecordPeriods, RunEnd};
use crate::trace::{state, EndInfo, EndReason, MachineInfo, TraceWriter};
use indicatif::ProgressBar;
use std::path::Path;
use std::time::Instant;

/// Default recorder checkpoint spacing, in instructions.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10_000_000;

/// Default spacing of the trace's delta snapshots (parallel replay's segments), in
/// instructions: a Debian boot gets about eight.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 200_000_000;

pub struct RecordOptions<'a> {
    pub path: &'a Path,
    pub checkpoint_interval: u64,
    /// A delta snapshot every so many instructions (0: none), for parallel replay.
    pub snapshot_interval: u64,
    /// What was booted, for `krr info`.
    pub guest: String,
    pub cmdline: String,
    /// The CPU model's name (`--cpu` spec); the table itself is read from the CPU.
    pub cpu_model: String,
    pub max_instructions: Option<u64>,
}

pub struct Recorded {
    pub end: RunEnd,
    /// The end record as written, event counts included.
    pub end_info: EndInfo,
    pub trace_bytes: u64,
}

pub fn end_reason(end: &RunEnd) -> EndReason {
    match *end {
        RunEnd::PowerOff => EndReason::PowerOff,
        RunEnd::Reset => EndReason::Reset,
        RunEnd::DebugExit(c) => EndReason::DebugExit(c),
        RunEnd::HaltedForever => EndReason::HaltedForever,
        RunEnd::InstructionLimit => EndReason::InstructionLimit,
    }
}

/// Record `m` (already holding its guest) from its current state until the guest ends the
/// run. On a machine error the trace is left unfinished (readers reject it as truncated)
/// and the error is returned.
pub fn record(
    m: &mut Machine,
    opts: &RecordOptions,
    bar: &ProgressBar,
) -> Result<Recorded, String> {
    let cpuid = m.core.cpu().cpuid.entries[..m.core.cpu().cpuid.len as usize].to_vec();
    let info = MachineInfo {
        krr_version: env!("CARGO_PKG_VERSION").to_string(),
        mem_bytes: m.core.mem().size(),
        ns_per_insn: 1,
        cpu_model: opts.cpu_model.clone(),
        cpuid,
        guest: opts.guest.clone(),
        cmdline: opts.cmdline.clone(),
        checkpoint_interval: opts.checkpoint_interval,
    };
    let cpu_image = state::encode_cpu(m.core.cpu());
    let ram_image = state::encode_ram(m.core.mem())?;
    let mut writer = TraceWriter::create(
        opts.path,
        &info,
        &cpu_image,
        &ram_image,
        m.core.cpu().icount,
    )
    .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut last_draw = Instant::now();
    let mut snapshots = crate::trace::delta::Writer::new(&mut m.core);
    let mut sink = |item: RecordItem| {
        let (events, cpu) = match item {
            RecordItem::Events(events, cpu) => (events, cpu),
            RecordItem::Snapshot(core) => {
                let d = snapshots.take(core, writer.events(), writer.counts())?;
                return writer.snapshot(&d).map_err(|e| e.to_string());
            }
        };
        for e in events.iter() {
            writer.push(e).map_err(|e| e.to_string())?;
        }
        if last_draw.elapsed().as_millis() >= 200 {
            last_draw = Instant::now();
            let secs = t0.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "{} instructions, {} events, {:.0} MIPS",
                cpu.icount,
                writer.counts().total(),
                cpu.icount as f64 / secs / 1e6
            ));
        }
        Ok(())
    };
    let periods = RecordPeriods {
        checkpoint: opts.checkpoint_interval,
        snapshot: opts.snapshot_interval,
    };
    let end = m.run_recorded(opts.max_instructions, periods, &mut sink);
    let end = match end {
        Ok(end) => end,
        Err(e @ MachineError::Record(_)) => return Err(e.to_string()),
        Err(e) => {
            return Err(format!(
                "{e}; the trace {} is unfinished",
                opts.path.display()
            ))
        }
    };
    let end_info = EndInfo {
        reason: end_reason(&end),
        icount: m.core.cpu().icount,
        rip: m.core.cpu().rip,
        regs_hash: state::regs_hash(m.core.cpu()),
        ram_hash: m.core.ram_hash(),
        guest_ns: m.board.guest_ns(m.core.cpu()),
        counts: writer.counts().clone(),
    };
    let trace_bytes = writer.finish(end_info.clone()).map_err(|e| e.to_string())?;
    Ok(Recorded {
        end,
        end_info,
        trace_bytes,
    })
}
