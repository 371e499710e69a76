//! `krr info`: describe a trace without replaying it (after checking all of it).

use krr::trace::{EventData, EventStream, TraceReader, VERSION};
use std::collections::BTreeMap;
use std::path::Path;

/// `println!` that ends the process quietly when the reader of stdout is gone (`krr info |
/// head`), as a tool killed by SIGPIPE would, instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// What the guest's devices did, by source: interrupts by vector, and the MMIO, device
/// MSR and DMA traffic by the device krr's PC has there.
#[derive(Default)]
struct Breakdown {
    vectors: BTreeMap<u8, u64>,
    /// (device, "reads"/"writes") -> count.
    accesses: BTreeMap<(&'static str, &'static str), u64>,
    dma_bytes: u64,
}

/// The device of krr's PC behind a physical address (the local APIC at its default base).
fn mmio_device(phys: u64) -> &'static str {
    match phys {
        0xfee0_0000..=0xfee0_0fff => "local APIC (xAPIC page)",
        0xfec0_0000..=0xfec0_0fff => "IO-APIC",
        0xc000_0000..=0xfebf_ffff => "PCI BARs",
        _ => "other MMIO",
    }
}

/// The device owning a device MSR event's index.
fn msr_device(index: u32) -> &'static str {
    use krr_runtime::arch::msr;
    match index {
        msr::CR8_EVENT => "CR8 (local APIC TPR)",
        0x6e0 => "IA32_TSC_DEADLINE",
        0x800..=0x8ff => "x2APIC MSRs",
        _ => "other MSRs",
    }
}

impl Breakdown {
    fn add(&mut self, data: &EventData) {
        let mut count = |device, what| *self.accesses.entry((device, what)).or_default() += 1;
        match *data {
            EventData::Interrupt { vector, .. } => *self.vectors.entry(vector).or_default() += 1,
            EventData::MmioRead { phys, .. } => count(mmio_device(phys), "reads"),
            EventData::MmioWrite { phys, .. } => count(mmio_device(phys), "writes"),
            EventData::MsrRead { index, .. } => count(msr_device(index), "reads"),
            EventData::MsrWrite { index, .. } => count(msr_device(index), "writes"),
            EventData::DmaWrite { ref data, .. } => {
                count("DMA", "writes");
                self.dma_bytes += data.len() as u64;
            }
            _ => {}
        }
    }

    fn print(&self) {
        out!("=== Interrupts by vector ===");
        for (v, n) in &self.vectors {
            out!("{v:#04x}: {n}");
        }
        out!("=== Device accesses ===");
        for ((device, what), n) in &self.accesses {
            out!("{device} {what}: {n}");
        }
        if self.dma_bytes > 0 {
            out!("DMA bytes: {}", self.dma_bytes);
        }
    }
}

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
    out!("trace: {} ({} bytes)", path.display(), r.file_len);
    out!(
        "format: krr trace version {VERSION}, recorded by krr {}",
        i.krr_version
    );
    out!("guest: {}", i.guest);
    out!("command line: {}", i.cmdline);
    out!(
        "machine: {} MiB RAM, CPU model {} ({} CPUID entries), virtual time {} ns per instruction",
        i.mem_bytes >> 20,
        i.cpu_model,
        i.cpuid.len(),
        i.ns_per_insn
    );
    match krr_runtime::cpuid::CpuidTable::from_entries(&i.cpuid) {
        Some(t) => {
            for l in krr::cpu_model::describe(&t) {
                out!("  CPU {l}");
            }
        }
        None => out!("  CPU: {} CPUID entries do not fit a table", i.cpuid.len()),
    }
    // A named model's masked features (its spec still parses to the same table).
    if let Ok(m) = krr::cpu_model::CpuModel::parse(&i.cpu_model) {
        if m.cpuid.entries[..m.cpuid.len as usize] == i.cpuid[..] {
            for l in m.masked_lines() {
                out!("  CPU {l}");
            }
        }
    }
    out!(
        "checkpoints: every {} instructions; {} event chunks",
        i.checkpoint_interval,
        r.index.len()
    );
    let at: Vec<String> = r.deltas.iter().map(|d| d.icount.to_string()).collect();
    match at.len() {
        0 => out!("snapshots: none (`krr replay --save-snapshots N` adds them)"),
        n => out!(
            "snapshots: {n}, {} segments (`krr replay --jobs N`, `--segment K`); at instructions {}",
            n + 1,
            at.join(" ")
        ),
    }
    out!(
        "end: {} at instruction {} RIP {:#x}, guest time {:.3} s",
        e.reason,
        e.icount,
        e.rip,
        e.guest_ns as f64 / 1e9
    );
    out!(
        "final state hash: registers {:016x} RAM {:016x}",
        e.regs_hash,
        e.ram_hash
    );
    out!("=== Event Stats ===");
    for l in e.counts.lines() {
        out!("{l}");
    }
    out!("Instructions: {}", e.icount);
    let (first, last) = range.unwrap_or((u64::MAX, u64::MAX));
    let mut breakdown = Breakdown::default();
    let mut stream = EventStream::new(r);
    loop {
        let index = stream.position;
        match stream.next_event().map_err(|e| e.to_string())? {
            Some(ev) => {
                breakdown.add(&ev.data);
                if (first..last).contains(&index) {
                    out!("event {index}: {ev}");
                }
            }
            None => break,
        }
    }
    breakdown.print();
    Ok(0)
}
