//! `krr info --krr SNAPSHOT`: describe a recording made by KRR without replaying it: the
//! machine, the vCPUs, the log files found beside the snapshot, event counts by type and
//! the instruction range.

use krr::krr_rec::events::KIND_NAMES;
use krr::krr_rec::recording::{Recording, RecordingFiles};
use std::collections::BTreeMap;
use std::path::Path;

fn mib(b: u64) -> String {
    if b.is_multiple_of(1 << 20) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b} bytes")
    }
}

pub fn run(snapshot: &Path, vmlinux: Option<&Path>) -> Result<i32, String> {
    let files = RecordingFiles::beside(snapshot).map_err(|e| e.to_string())?;
    let rec = Recording::open(files).map_err(|e| e.to_string())?;
    let s = &rec.snapshot;
    println!(
        "recording: {} ({} bytes; QEMU migration stream of {} bytes{})",
        snapshot.display(),
        s.file_len,
        s.end,
        if s.end < s.file_len {
            ", followed by KRR's device-state stream"
        } else {
            ""
        }
    );
    let ram = &s.ram;
    let low = ram.below_4g();
    print!(
        "machine: {}, {} RAM ({} below 4 GiB",
        s.machine,
        mib(ram.size),
        mib(low)
    );
    if ram.size > low {
        print!(", {} at 4 GiB", mib(ram.size - low));
    }
    println!(
        "), {} vCPU(s); {} non-zero RAM pages in the snapshot",
        s.vcpus.len(),
        ram.pages.len()
    );
    let others: Vec<String> = s
        .ram_blocks
        .iter()
        .filter(|b| b.name != "pc.ram")
        .map(|b| format!("{} ({})", b.name, mib(b.used_length)))
        .collect();
    if !others.is_empty() {
        println!("other RAM blocks (not used): {}", others.join(", "));
    }
    let skipped = s.sections.iter().filter(|x| !x.read).count();
    println!(
        "device sections: {} ({} read, {skipped} skipped by the stream's {})",
        s.sections.len(),
        s.sections.len() - skipped,
        if s.described {
            "description"
        } else {
            "(absent) description"
        }
    );
    for v in &s.vcpus {
        let c = &v.cpu;
        let halted = v.common.as_ref().is_some_and(|c| c.halted != 0);
        println!(
            "vCPU {}: RIP {:#x} RSP {:#x} RFLAGS {:#x} CPL {} CR0 {:#x} CR3 {:#x} CR4 {:#x} EFER {:#x}{}",
            v.index,
            c.rip,
            c.regs[4],
            c.rflags,
            c.cpl(),
            c.cr0,
            c.cr3,
            c.cr4,
            c.efer,
            if halted { " halted" } else { "" }
        );
        println!(
            "  CS {:#x} base {:#x}, GS base {:#x}, KERNEL_GS_BASE {:#x}, LSTAR {:#x}, TSC {}, XCR0 {:#x}",
            c.segs[1].selector,
            c.segs[1].base,
            c.gs_base(),
            c.kernelgsbase,
            c.lstar,
            c.tsc,
            c.xcr0
        );
        if c.interrupt_injected != -1 {
            println!(
                "  note: interrupt {} was being injected at the snapshot (KRR's replay drops it)",
                c.interrupt_injected
            );
        }
        match s.apic(v.index) {
            Some(a) => println!(
                "  APIC id {} base {:#x} TPR {:#x} SVR {:#x}",
                a.id, a.apicbase, a.tpr, a.spurious_vec
            ),
            None => println!("  no APIC section"),
        }
    }
    match &s.ivshmem {
        Some(i) => println!("ivshmem: {} BAR2 at {:#x}", i.idstr, i.bar2()),
        None => println!("ivshmem: absent (KRR's recordings have it)"),
    }
    let f = &rec.files;
    let log = &rec.log;
    match &f.events {
        None => println!("kernel_rr.log: missing beside the snapshot: zero events"),
        Some(p) => println!("events: {} ({} bytes)", p.display(), log.file_len),
    }
    if let Some((init, fin)) = &log.headers {
        println!(
            "ring: {} bytes (log header), entries from byte {}, {} bytes rotated, final header counts {} events{}",
            fin.ring_bytes(),
            init.header_size,
            fin.rotated_bytes,
            fin.current_pos,
            if init.rr_enabled == 1 {
                ""
            } else {
                " (initial header: recording not enabled)"
            }
        );
    }
    if let Some(n) = log.count_note() {
        println!("note: {n}");
    }
    // KRR's own loader reads the final header's current_pos - 1 events (krr-spec open
    // question 12); krr replays them all. Where they end, to give krr the same events.
    if let Some((_, fin)) = &log.headers {
        let n = (fin.current_pos as usize).saturating_sub(1);
        if n < log.events.len() {
            println!(
                "KRR's loader: reads {n} of the {} events, ending at byte {}",
                log.events.len(),
                log.offsets[n]
            );
        }
    }
    println!("=== Event Stats ===");
    let counts = log.counts();
    for (i, name) in KIND_NAMES.iter().enumerate() {
        if counts[i] > 0 {
            println!("{name}: {}", counts[i]);
        }
    }
    println!("Total Events: {}", log.events.len());
    // The instruction range by vCPU, from the events that carry a count.
    let mut range: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for e in &log.events {
        let (Some(n), Some(cpu)) = (e.inst_cnt(), cpu_of(e)) else {
            continue;
        };
        let r = range.entry(cpu).or_insert((n, n));
        r.0 = r.0.min(n);
        r.1 = r.1.max(n);
    }
    if range.is_empty() {
        println!("instructions: no event carries an instruction count");
    }
    for (cpu, (a, b)) in range {
        println!("instructions: vCPU {cpu}: counts {a}..{b} in the events");
    }
    for (devfn, d) in &rec.dma {
        let name = devfn.map_or("kernel_rr_dma.log".to_string(), |d| {
            format!("kernel_rr_dma-{d}.log")
        });
        println!(
            "{name}: {} entries, {} bytes of data",
            d.entries.len(),
            d.bytes()
        );
    }
    if let Some(n) = &rec.network {
        println!(
            "kernel_rr_network.log: {} entries, {} bytes of data",
            n.entries.len(),
            n.bytes()
        );
    }
    for (cpu, c) in &rec.checkpoints {
        println!("checkpoint-{cpu}: {} checkpoints", c.len());
    }
    if let Some(path) = vmlinux {
        describe_vmlinux(&rec.snapshot, path)?;
    }
    Ok(0)
}

/// Check `path` against the snapshot (KASLR slide from IA32_LSTAR, the banner in memory) and
/// print the trap points a replay will use.
fn describe_vmlinux(s: &krr::krr_rec::Snapshot, path: &Path) -> Result<(), String> {
    use krr::vmlinux::traps::banner_text;
    let (v, traps) = krr::krr_replay::load::check_vmlinux(s, path)?;
    let banner = v
        .symbol("linux_banner")
        .and_then(|b| v.bytes(b.addr, b.size))
        .map(banner_text)
        .unwrap_or_default();
    println!(
        "vmlinux: {} (\"{banner}\"), KASLR slide {:#x}",
        path.display(),
        traps.slide
    );
    println!("trap points:");
    for (point, addr) in traps.iter() {
        println!("  {:<26} {addr:#x}", point.name());
    }
    Ok(())
}

fn cpu_of(e: &krr::krr_rec::Event) -> Option<i64> {
    use krr::krr_rec::Event as E;
    Some(match e {
        E::Interrupt(i) => i.id as i64,
        E::IoIn(i) | E::Rdtsc(i) => i.id as i64,
        E::Release(n) | E::InstSync(n) => n.id as i64,
        _ => return None,
    })
}
