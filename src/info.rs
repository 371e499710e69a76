//! `krr info`: describe a trace without replaying it (after checking all of it).

use krr::trace::{TraceReader, VERSION};
use std::path::Path;

pub fn run(path: &Path) -> Result<i32, String> {
    let r = TraceReader::open(path).map_err(|e| e.to_string())?;
    let i = &r.info;
    let e = &r.end;
    println!("trace: {} ({} bytes)", path.display(), r.file_len);
    println!(
        "format: krr trace version {VERSION}, recorded by krr {}",
        i.krr_version
    );
    println!("guest: {}", i.guest);
    println!("command line: {}", i.cmdline);
    println!(
        "machine: {} MiB RAM, CPU model {} ({} CPUID entries), virtual time {} ns per instruction",
        i.mem_bytes >> 20,
        i.cpu_model,
        i.cpuid.len(),
        i.ns_per_insn
    );
    println!(
        "checkpoints: every {} instructions; {} event chunks",
        i.checkpoint_interval,
        r.index.len()
    );
    println!(
        "end: {} at instruction {} RIP {:#x}, guest time {:.3} s",
        e.reason,
        e.icount,
        e.rip,
        e.guest_ns as f64 / 1e9
    );
    println!(
        "final state hash: registers {:016x} RAM {:016x}",
        e.regs_hash, e.ram_hash
    );
    println!("=== Event Stats ===");
    for l in e.counts.lines() {
        println!("{l}");
    }
    println!("Instructions: {}", e.icount);
    Ok(0)
}
