//! `krr info`: describe a trace without replaying it (after checking all of it).

use krr::trace::{EventStream, TraceReader, VERSION};
use std::path::Path;

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}`: expected FIRST..LAST"))?;
    let num = |x: &str, default: u64| -> Result<u64, String> {
        if x.trim().is_empty() {
            Ok(default)
        } else {
            x.trim()
                .parse()
                .map_err(|_| format!("`{x}` is not an event index"))
        }
    };
    Ok((num(a, 0)?, num(b, u64::MAX)?))
}

pub fn run(path: &Path, events: Option<&str>) -> Result<i32, String> {
    let range = events.map(parse_range).transpose()?;
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
    if let Some((first, last)) = range {
        let mut stream = EventStream::new(r);
        while stream.position < last {
            let index = stream.position;
            match stream.next_event().map_err(|e| e.to_string())? {
                Some(ev) if index >= first => println!("event {index}: {ev}"),
                Some(_) => {}
                None => break,
            }
        }
    }
    Ok(0)
}
