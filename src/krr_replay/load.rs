//! Setting up a KRR replay (krr-spec 3.1): the recording's files read, the vmlinux checked
//! against the snapshot and its trap points resolved, the snapshot's RAM and vCPU loaded
//! into a krr `Core`, the ring holding the log's initial header, and the engine configured
//! to stop at trap points and before user mode.

use super::bus::ReplayBus;
use super::devices::Devices;
use super::driver::Driver;
use super::queue::Queue;
use super::ring::Ring;
use crate::krr_rec::recording::{Recording, RecordingFiles};
use crate::krr_rec::Snapshot;
use crate::vmlinux::traps::{kaslr_slide, SourceLine, TrapPoints};
use crate::vmlinux::Vmlinux;
use krr_jit::{Engine, EngineConfig};
use krr_runtime::Core;
use std::path::PathBuf;

pub struct Options {
    pub snapshot: PathBuf,
    pub vmlinux: PathBuf,
    /// `kernel_rr.log` when not beside the snapshot.
    pub events: Option<PathBuf>,
    /// The CPU model (`--cpu`): KRR replays with `-cpu Broadwell`.
    pub cpu: String,
    /// The behaviour profile (`--profile`): `krr-compat` by default, KRR's TCG quirks, which
    /// KRR's recordings were verified against.
    pub profile: krr_jit::Profile,
    pub engine: EngineConfig,
    /// `-m` / `-smp` of KRR's command line, checked against the snapshot.
    pub expect_mem: Option<u64>,
    pub expect_vcpus: Option<u32>,
}

/// What the replay report says about the recording.
pub struct Loaded {
    pub driver: Driver,
    pub recording: String,
    pub notes: Vec<String>,
    /// Loaded events by type (the `=== Event Stats ===` counts).
    pub loaded: [u64; 15],
    pub slide: u64,
    /// The vmlinux's symbols at their run-time addresses (the slide applied), for reports.
    pub symbols: crate::symbols::SymbolTable,
}

/// The vmlinux at `path` checked against snapshot `s` (KASLR slide from IA32_LSTAR, checked
/// with `linux_banner` through the snapshot's page tables) and its trap points.
pub fn check_vmlinux(
    s: &Snapshot,
    path: &std::path::Path,
) -> Result<(Vmlinux, TrapPoints), String> {
    use super::virt::read_virt;
    let v = Vmlinux::open(path).map_err(|e| e.to_string())?;
    let cpu = &s
        .vcpus
        .first()
        .ok_or_else(|| format!("{}: the snapshot has no vCPU", path.display()))?
        .cpu;
    // Under page-table isolation a user-mode CR3 maps little of the kernel; the kernel's own
    // tables are the 4 KiB below (PTI's user PGD is the kernel's with bit 12 set).
    let roots = [cpu.cr3, cpu.cr3 & !0x1000];
    let read = |va: u64, buf: &mut [u8]| roots.iter().any(|&r| read_virt(&s.ram, r, va, buf));
    let slide = kaslr_slide(&v, cpu.lstar, read).map_err(|e| e.to_string())?;
    let traps = TrapPoints::resolve(
        &v,
        slide,
        s.vcpus.len() > 1,
        &SourceLine::krr_lock_release(),
    )
    .map_err(|e| e.to_string())?;
    Ok((v, traps))
}

pub fn open(o: &Options) -> Result<Loaded, String> {
    let mut files = RecordingFiles::beside(&o.snapshot).map_err(|e| e.to_string())?;
    if let Some(ev) = &o.events {
        files.events = Some(ev.clone());
    }
    // The log is read once: parsed here, and its bytes kept for the ring appends' payloads.
    let events = files.events.take();
    let log_bytes = match &events {
        Some(p) => std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => Vec::new(),
    };
    let mut rec = Recording::open(files).map_err(|e| e.to_string())?;
    if let Some(p) = events {
        rec.log =
            crate::krr_rec::events::KrrLog::parse(&log_bytes, &p).map_err(|e| e.to_string())?;
        rec.files.events = Some(p);
    }
    let s = &rec.snapshot;
    if let Some(m) = o.expect_mem {
        if m != s.ram.size {
            return Err(format!(
                "-m {} MiB, but the recording's guest has {} MiB",
                m >> 20,
                s.ram.size >> 20
            ));
        }
    }
    if let Some(n) = o.expect_vcpus {
        if n as usize != s.vcpus.len() {
            return Err(format!(
                "-smp {n}, but the recording has {} vCPUs",
                s.vcpus.len()
            ));
        }
    }
    let (vmlinux, traps) = check_vmlinux(s, &o.vmlinux)?;
    let slide = traps.slide;
    let symbols = crate::symbols::SymbolTable::of_vmlinux(&vmlinux).shifted(slide);
    drop(vmlinux);
    // RAM as QEMU's pc machine lays it out (krr-spec 2.3): below the PCI hole, and the rest
    // from 4 GiB; the hole is MMIO.
    let ring_at = match (&rec.log.headers, &s.ivshmem) {
        (Some((_, fin)), Some(iv)) => Some((iv.bar2(), fin.ring_bytes())),
        (Some(_), None) => {
            return Err(format!(
                "{}: the snapshot has no ivshmem device, where KRR's ring lives",
                o.snapshot.display()
            ))
        }
        (None, _) => None,
    };
    let mut windows = s.ram.gpa_ranges();
    if let Some((gpa, size)) = ring_at {
        windows.push((gpa, size.div_ceil(4096) * 4096));
        windows.sort();
    }
    let mut core = Core::with_windows(&windows).map_err(|e| {
        format!(
            "{}: guest memory {windows:x?} (RAM and the ring at BAR2): {e}",
            o.snapshot.display()
        )
    })?;
    for (&offset, page) in &s.ram.pages {
        let gpa = s.ram.gpa_of(offset).ok_or_else(|| {
            format!(
                "{}: RAM page at offset {offset:#x} has no address",
                o.snapshot.display()
            )
        })?;
        core.mem_mut().write(gpa, page).map_err(|e| e.to_string())?;
    }
    let vcpu = &s.vcpus[0].cpu;
    let (arch, mut notes) = super::cpu::arch_state(vcpu)?;
    let model = crate::cpu_model::CpuModel::parse(&o.cpu)?;
    model.check_host()?;
    *core.cpuid_mut() = model.cpuid;
    *core.arch_mut() = arch;
    core.flush_tlb();
    let ring = match (ring_at, &rec.log.headers) {
        (Some((gpa, size)), Some((initial, _))) => {
            let r = Ring::new(gpa, size);
            r.init(core.mem_mut(), initial)?;
            Some(r)
        }
        _ => None,
    };
    if let Some(n) = rec.log.count_note() {
        notes.push(format!(
            "{n}: krr replays every event the file holds (KRR's loader drops the last one, krr-spec 10.12)"
        ));
    }
    let loaded = rec.log.counts();
    let queue = Queue::new(&rec.log, &log_bytes);
    let apics: Vec<_> = s.vcpus.iter().map(|v| s.apic(v.index)).collect();
    let devices = Devices::new(&apics, [s.pic(0), s.pic(1)], s.ioapic.as_ref());
    let mut bus = ReplayBus::new(queue, ring, devices);
    bus.ide = ide_dma(&o.snapshot, s, &rec.dma)?;
    if let Some(config) = pci_config(&o.snapshot, s, "/e1000")? {
        let bar0 = u32::from_le_bytes(config[0x10..0x14].try_into().expect("4 bytes"));
        if bar0 & 1 == 0 && bar0 & !0xf != 0 {
            bus.e1000_bar = Some(((bar0 & !0xf) as u64, 0x2_0000));
        }
    }
    let mut streams = Vec::new();
    if let Some(net) = &rec.network {
        streams.push(super::dma::Stream::new(
            super::dma::Kind::E1000,
            net.entries.clone(),
        ));
    }
    for (_, log) in &rec.dma {
        let nvme: Vec<_> = log
            .entries
            .iter()
            .filter(|e| e.dev_type == 1)
            .cloned()
            .collect();
        if !nvme.is_empty() {
            streams.push(super::dma::Stream::new(super::dma::Kind::Nvme, nvme));
        }
    }
    // KVM fills an RDTSC event's RIP only when RDTSC exits (krr-spec 7.1).
    bus.rdtsc_exiting = rec
        .log
        .events
        .iter()
        .any(|e| matches!(e, crate::krr_rec::events::Event::Rdtsc(r) if r.rip != 0));
    let engine = Engine::new(EngineConfig {
        deliver_exceptions: true,
        profile: o.profile,
        // The kernel chose its instructions on the recording host (krr-spec 7.2): the replay
        // runs them whatever the model's CPUID says.
        cpuid_gate: false,
        ..o.engine
    })
    .map_err(|e| e.to_string())?;
    let recording = format!(
        "{} ({}, {} MiB, {} vCPU(s), {} events, CPU model {}, profile {})",
        o.snapshot.display(),
        s.machine,
        s.ram.size >> 20,
        s.vcpus.len(),
        rec.log.events.len(),
        model.spec,
        o.profile.name()
    );
    let mut others = Vec::new();
    for v in &s.vcpus[1..] {
        let (arch, n) = super::cpu::arch_state(&v.cpu)?;
        others.push(arch);
        notes.extend(n.into_iter().map(|n| format!("vCPU {}: {n}", v.index)));
    }
    let mut driver = Driver::new(core, engine, bus, traps, others);
    driver.dma_streams = streams;
    for (cpu, cps) in &rec.checkpoints {
        driver.set_checkpoints(*cpu as usize, cps.clone())?;
    }
    Ok(Loaded {
        driver,
        recording,
        notes,
        loaded,
        slide,
        symbols,
    })
}

/// The PIIX IDE function of the snapshot (its section `<bus:dev.fn>/ide`): BAR4 (the BMDMA
/// I/O base) from its PCI config, and the DMA log of its devfn (or the unnamed
/// `kernel_rr_dma.log`).
fn ide_dma(
    path: &std::path::Path,
    s: &Snapshot,
    logs: &[(Option<u32>, crate::krr_rec::dma::DmaLog)],
) -> Result<Option<super::bus::IdeDma>, String> {
    let Some(sec) = s.sections.iter().find(|x| x.name.ends_with("/ide")) else {
        return Ok(None);
    };
    let Some(config) = pci_config(path, s, "/ide")? else {
        return Ok(None);
    };
    let bar4 = u32::from_le_bytes(config[0x20..0x24].try_into().expect("4 bytes"));
    if bar4 & 1 == 0 || bar4 & !3 == 0 {
        return Ok(None);
    }
    // "0000:00:01.1/ide": devfn = dev << 3 | fn.
    let devfn = sec.name.split('/').next().and_then(|a| {
        let (dev, func) = a.rsplit(':').next()?.split_once('.')?;
        Some((u32::from_str_radix(dev, 16).ok()? << 3) | func.parse::<u32>().ok()?)
    });
    let log = logs
        .iter()
        .find(|(d, _)| d.is_some() && *d == devfn)
        .or_else(|| logs.iter().find(|(d, _)| d.is_none()));
    Ok(Some(super::bus::IdeDma::new(
        (bar4 & !3) as u16,
        log.map(|(_, l)| l.entries.clone()).unwrap_or_default(),
    )))
}

/// The PCI config space of the device whose section name ends with `suffix`: a PCI
/// device's state opens with a version word and its 256-byte config space.
fn pci_config(
    path: &std::path::Path,
    s: &Snapshot,
    suffix: &str,
) -> Result<Option<Vec<u8>>, String> {
    let Some(sec) = s.sections.iter().find(|x| x.name.ends_with(suffix)) else {
        return Ok(None);
    };
    if sec.size < 4 + 256 {
        return Ok(None);
    }
    let mut body = vec![0u8; 4 + 256];
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::Start(sec.offset))
        .and_then(|_| f.read_exact(&mut body))
        .map_err(|e| {
            format!(
                "{}: the {} section at offset {}: {e}",
                path.display(),
                sec.name,
                sec.offset
            )
        })?;
    Ok(Some(body[4..].to_vec()))
}
