//! `krr run`: boot a Linux kernel on the machine, console on stdout.

use krr::machine::{linux, Machine, MachineConfig, RunEnd};
use krr_jit::{EngineConfig, TierPolicy};
use std::time::Instant;

pub struct RunArgs {
    pub kernel: String,
    pub initrd: Option<String>,
    pub append: String,
    pub mem_bytes: u64,
    pub singlestep: bool,
    pub interpret: bool,
    pub max_instructions: Option<u64>,
}

/// The kernel command line krr boots with unless told otherwise: serial console, no ACPI or
/// local APIC (the machine models neither yet), deterministic timing.
pub const DEFAULT_APPEND: &str =
    "console=ttyS0 earlyprintk=serial acpi=off nolapic noapic nokaslr tsc=reliable no_timer_check panic=-1";

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
    let engine = EngineConfig {
        policy: if args.interpret {
            TierPolicy::Interpret
        } else {
            TierPolicy::Tiered
        },
        max_block_insns: if args.singlestep {
            1
        } else {
            EngineConfig::default().max_block_insns
        },
        ..EngineConfig::default()
    };
    let mut m = Machine::new(
        MachineConfig {
            mem_bytes: args.mem_bytes,
            engine,
        },
        Box::new(std::io::stdout()),
    )
    .map_err(|e| e.to_string())?;
    let info = linux::load(
        &mut m.mem,
        &mut m.cpu,
        &args.kernel,
        &kernel,
        initrd.as_deref(),
        &args.append,
    )
    .map_err(|e| e.to_string())?;
    log::info!(
        "kernel loaded at {:#x}, entry {:#x}, initrd {:?}",
        info.kernel_addr,
        info.entry,
        info.initrd
    );
    let t0 = Instant::now();
    let end = m.run(args.max_instructions);
    let secs = t0.elapsed().as_secs_f64();
    let icount = m.cpu.icount;
    let mips = icount as f64 / secs.max(1e-9) / 1e6;
    let stats = &m.engine.stats;
    let state_hash = {
        let arith = krr_jit::interp::materialize_flags(&mut m.cpu);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let flags = (m.cpu.rflags & !krr_runtime::rflags::ARITH) | arith;
        for v in m.cpu.gpr.iter().chain([m.cpu.rip, flags].iter()) {
            for b in v.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        h
    };
    if log::log_enabled!(log::Level::Debug) {
        let c = &m.cpu;
        let regs: Vec<String> = (0..16)
            .map(|i| format!("{}={:#x}", krr_runtime::gpr::NAMES[i], c.gpr[i]))
            .collect();
        log::debug!(
            "final state: rip={:#x} rflags={:#x} cc_op={:#x} cc_res={:#x} cc_a={:#x} cc_b={:#x} cc_aux={:#x} {}",
            c.rip, c.rflags, c.cc_op, c.cc_res, c.cc_a, c.cc_b, c.cc_aux, regs.join(" ")
        );
        let mut bytes = [0u8; 16];
        let rip = m.cpu.rip;
        let n = krr_runtime::mmu::fetch_code(&mut m.cpu, rip, &mut bytes).unwrap_or(0);
        let mut d = iced_x86::Decoder::with_ip(64, &bytes[..n], m.cpu.rip, 0);
        log::debug!("next instruction: {}", d.decode());
        let ram = m.mem.slice(0, m.mem.size() as usize).unwrap_or(&[]);
        let mut h: u64 = 0;
        for chunk in ram.chunks_exact(8) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            h = (h.rotate_left(5) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        log::debug!("memory hash: {h:016x}");
        if let Some(path) = std::env::var_os("KRR_DUMP_RAM") {
            if let Err(e) = std::fs::write(&path, ram) {
                log::warn!("cannot write the RAM dump: {e}");
            }
        }
    }
    let summary = format!(
        "{icount} instructions in {secs:.2} s ({mips:.1} MIPS), RIP {:#x}, registers hash {state_hash:016x}; {} blocks decoded, {} compiled ({:.2} s compiling), {} interrupts",
        m.cpu.rip,
        stats.blocks_decoded,
        stats.blocks_compiled,
        stats.compile_time.as_secs_f64(),
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
            Ok(code)
        }
        Err(e) => Err(format!("{e} ({summary})")),
    }
}
