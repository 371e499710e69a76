//! The real guest: Debian's 6.1 cloud kernel with a busybox initramfs (tests/guest/) boots
//! under `krr record` to the workload's end marker (also with the CPU QEMU 7.2 TCG has), with
//! the workload's results equal to the same commands run on the host and under QEMU TCG;
//! recordings in the default and single-step modes are byte-identical, the interpreter gives
//! the same run, and the trace replays to the recorded end state in both modes; the guest
//! powers off (ACPI S5). The same image booted under QEMU TCG (Debian's qemu-system-x86,
//! tests/guest/qemu-boot.sh) gives the same workload results. Debian's other current kernels
//! (bookworm generic 6.1; bookworm-backports and trixie, cloud and generic, 6.12) boot with the
//! default command line to the same results and power-off with the local APIC timer ticking,
//! and their traces replay.
//!
//! Needs `apt-get download` (tests/guest/fetch.sh, tests/guest/fetch-qemu.sh) and HTTPS access
//! to deb.debian.org (tests/guest/fetch-kernel.sh); fails loudly when the packages cannot be
//! fetched.

mod guest_boot;

use guest_boot::*;
use std::path::PathBuf;
use std::process::Command;

/// How many times the boot trace is replayed in each mode (all must end in the same state).
const REPLAYS: usize = 5;

fn boot(kernel: &str, initrd: &str, extra: &[&str]) -> (String, String) {
    let mut a = vec!["run", "--kernel", kernel, "--initrd", initrd];
    a.extend_from_slice(extra);
    let (console, log) = krr_ok(&a);
    assert_powered_off(&log);
    (console, log)
}

/// The workload between its markers, both markers included.
fn workload_section(console: &str) -> Vec<String> {
    let start = console.find("KRR-WORKLOAD-START").expect("start marker");
    let end = console
        .find("KRR-WORKLOAD-END")
        .expect("end marker (the workload did not finish)");
    console[start..end + "KRR-WORKLOAD-END".len()]
        .lines()
        .filter(|l| !is_kernel_message(l))
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// Boot, record and replay the Debian guest: the workload's results equal the host's; the
/// recording is byte-identical whether the engine runs blocks or single instructions (so the
/// machine is deterministic and every tier takes each input at the same instruction); the
/// interpreter alone gives the same console and instruction count; the trace replays to the
/// recorded end state in the default and single-step modes, [`REPLAYS`] times each, with the
/// same console and final hashes every time.
#[test]
fn debian_kernel_boots_records_and_replays_exactly() {
    let (kernel, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("krr-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("boot.trace");
    let trace_ss = dir.join("boot-singlestep.trace");
    let (t, t_ss) = (trace.to_str().unwrap(), trace_ss.to_str().unwrap());
    let boot_args = ["--kernel", &kernel, "--initrd", &initrd];

    let rec = |out: &str, extra: &[&str]| {
        let mut a = vec!["record"];
        a.extend_from_slice(&boot_args);
        a.extend_from_slice(&["-o", out]);
        a.extend_from_slice(extra);
        krr_ok(&a)
    };
    let (console, log) = rec(t, &[]);
    assert_eq!(workload_lines(&console), expected_results(), "{log}");
    // `poweroff -f` ends the run through ACPI S5.
    assert_powered_off(&log);
    for kind in ["Interrupt: ", "IO Input: ", "RDTSC: ", "Checkpoint: "] {
        let n: u64 = line_with(&log, kind)[kind.len()..].parse().unwrap();
        assert!(n > 0, "no {kind} events: {log}");
    }
    let (console_ss, log_ss) = rec(t_ss, &["--singlestep"]);
    assert_powered_off(&log_ss);
    assert_eq!(
        console, console_ss,
        "--singlestep changed the guest's output"
    );
    assert!(
        std::fs::read(&trace).unwrap() == std::fs::read(&trace_ss).unwrap(),
        "recording twice (default, then --singlestep) gave different traces:\n{log}\n{log_ss}"
    );

    // The interpreter alone: same semantics through other block boundaries.
    let mut a = vec!["run", "--interpret"];
    a.extend_from_slice(&boot_args);
    let (console_i, log_i) = krr_ok(&a);
    assert_eq!(console, console_i, "--interpret changed the guest's output");
    assert_powered_off(&log_i);
    let icount = count(&log).unwrap_or_else(|| panic!("no instruction count in: {log}"));
    assert!(icount > 0, "{log}");
    assert_eq!(count(&log_i), Some(icount), "{log}\n{log_i}");

    // Replay needs only the trace, and gives the same end state every time, in both modes.
    let mut finals = Vec::new();
    for (round, mode) in (0..REPLAYS).flat_map(|r| [(r, None), (r, Some("--singlestep"))]) {
        let mut a = vec!["replay", t];
        a.extend(mode);
        // The first default-mode replay also checks the incremental RAM digest against a
        // full one at every checkpoint.
        let verify: &[(&str, &str)] = match (round, mode) {
            (0, None) => &[("KRR_VERIFY_RAM_DIGEST", "1")],
            _ => &[],
        };
        let (replayed, summary) = krr_ok_with(&a, verify);
        assert!(summary.contains("Verdict: matched"), "{mode:?}: {summary}");
        assert_eq!(replayed, console, "{mode:?}: the replayed console differs");
        assert_eq!(
            line_with(&summary, "Instructions: "),
            format!("Instructions: {icount}"),
            "{summary}"
        );
        finals.push(line_with(&summary, "Final state hash: ").to_string());
    }
    assert!(finals.iter().all(|f| *f == finals[0]), "{finals:#?}");
    // The segments between the trace's snapshots on two threads: the same console, end state
    // and verdict, every snapshot checked.
    let (replayed, summary) = krr_ok(&["replay", t, "--jobs", "2"]);
    assert!(summary.contains("Verdict: matched"), "{summary}");
    assert_eq!(replayed, console, "--jobs 2: the replayed console differs");
    assert_eq!(
        line_with(&summary, "Final state hash: "),
        finals[0],
        "{summary}"
    );
    let snapshots = krr::trace::TraceReader::open(&trace).unwrap().deltas.len();
    assert!(snapshots >= 5, "{snapshots} snapshots in the boot's trace");
    assert!(
        summary.contains(&format!("on 2 threads, {snapshots} snapshots checked")),
        "{summary}"
    );
    let trace_line = line_with(&log, "Trace: ");
    assert!(
        finals[0].contains(&trace_line[trace_line.find("registers hash ").unwrap() + 15..][..16]),
        "{finals:?} vs {trace_line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--cpu max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm` (the CPU bench/boot.sh gives krr beside
/// QEMU 7.2 TCG, which has none of the five): the trace stores the model's name and a CPUID
/// that differs from `max` only in those bits (CPUID.01H:ECX[17, 21, 24], EDX[1],
/// CPUID.07H:EDX[4]); the kernel boots to the
/// same results and power-off with the local APIC timer in one-shot mode instead of
/// TSC-deadline, and the trace replays to the recorded end.
#[test]
fn debian_kernel_records_and_replays_with_the_cpu_qemu_has() {
    const LIKE_QEMU: &str = "max,-pcid,-x2apic,-tsc-deadline,-vme,-fsrm";
    use krr::cpu_model::CpuModel;
    let (kernel, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("krr-boot-nopcid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("nopcid.trace");
    let t = trace.to_str().unwrap();
    let (console, log) = krr_ok(&[
        "record", "--kernel", &kernel, "--initrd", &initrd, "--cpu", LIKE_QEMU, "-o", t,
    ]);
    assert_powered_off(&log);
    assert_eq!(workload_lines(&console), expected_results(), "{log}");

    let info = krr::trace::TraceReader::open(&trace).unwrap().info;
    assert_eq!(info.cpu_model, LIKE_QEMU);
    let mut want = CpuModel::parse("max").unwrap().cpuid;
    want.entries[..want.len as usize]
        .iter_mut()
        .filter(|e| e.leaf == 1)
        .for_each(|e| {
            e.ecx &= !(1 << 17 | 1 << 21 | 1 << 24);
            e.edx &= !(1 << 1);
        });
    want.entries[..want.len as usize]
        .iter_mut()
        .filter(|e| e.leaf == 7)
        .for_each(|e| e.edx &= !(1 << 4));
    assert_eq!(info.cpuid, want.entries[..want.len as usize]);

    assert!(
        !console.contains("TSC deadline timer available"),
        "{console}"
    );
    let (replayed, summary) = krr_ok(&["replay", t]);
    assert!(summary.contains("Verdict: matched"), "{summary}");
    assert_eq!(replayed, console, "the replayed console differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same bzImage and initramfs under QEMU TCG (same memory and kernel command line, a CPU
/// model made like krr's) print the same workload results as under `krr run`.
#[test]
fn debian_kernel_gives_the_same_results_under_qemu_tcg() {
    let (kernel, initrd) = guest();
    let out = Command::new("bash")
        .arg(root().join("tests/guest/qemu-boot.sh"))
        .args([&kernel, &initrd])
        .env("QEMU_BOOT_TIMEOUT", "180")
        .output()
        .expect("running tests/guest/qemu-boot.sh");
    let qemu_console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "QEMU TCG boot failed ({}): {}\n{qemu_console}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let qemu = workload_section(&qemu_console);
    // The four result lines, each with a 32-digit md5 or the file count.
    let results: Vec<&String> = qemu[1..qemu.len() - 1].iter().collect();
    let labels: Vec<&str> = results
        .iter()
        .map(|l| l.split(": ").next().unwrap_or(""))
        .collect();
    assert_eq!(labels, ["files", "dd", "seq", "count"], "{qemu_console}");
    for l in &results[..3] {
        let md5 = l.split_whitespace().nth(1).unwrap_or("");
        assert!(
            md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()),
            "not an md5 line: {l}"
        );
    }
    let (krr_console, log) = boot(&kernel, &initrd, &[]);
    assert_eq!(
        workload_section(&krr_console),
        qemu,
        "krr run and QEMU TCG differ\nkrr: {log}\n{krr_console}\nQEMU:\n{qemu_console}"
    );
}

/// The interrupt paths a kernel may choose: with `noapic` the local APIC timer and 8259
/// routing through LINT0 (virtual wire), with `nolapic noapic` the PIT and the 8259 alone;
/// the default command line uses the IO-APIC and the TSC-deadline timer. Every one boots to
/// the same results and power-off, and the console says which path the kernel took.
#[test]
fn debian_kernel_boots_with_and_without_the_apics() {
    let (kernel, initrd) = guest();
    for (append, says) in [
        (
            "console=ttyS0 nokaslr panic=-1 noapic",
            "Skipping IOAPIC probe due to 'noapic' option.",
        ),
        (
            "console=ttyS0 nokaslr panic=-1 nolapic noapic",
            "APIC: disable apic facility",
        ),
    ] {
        let (console, log) = boot(&kernel, &initrd, &["--append", append]);
        assert_powered_off(&log);
        assert_eq!(
            workload_lines(&console),
            expected_results(),
            "{append}: {log}"
        );
        assert!(
            console.contains(says),
            "{append}: no `{says}` in\n{console}"
        );
    }
}

/// A file tree for the test disk and the lines the guest's disk workload prints for it
/// (tests/guest/init between KRR-DISK-START and KRR-DISK-END, kernel messages left out),
/// computed on the host.
fn disk_fixture(dir: &std::path::Path) -> (PathBuf, Vec<String>) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from the disk\n").unwrap();
    let data: String = (1..=50_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(tree.join("data.bin"), &data).unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .output()
        .expect("mkfs.ext4 (e2fsprogs) is needed to make the test disk");
    assert!(
        mkfs.status.success(),
        "mkfs.ext4 failed: {}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    let script = r#"
        set -e
        cd "$1"
        cat hello.txt
        md5sum data.bin
        seq 1 30000 > written.txt
        md5sum written.txt
        rm written.txt
    "#;
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&tree)
        .output()
        .expect("host shell");
    assert!(out.status.success());
    let mut expected: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // hello.txt, data.bin, written.txt and mkfs's lost+found.
    expected.push("files: 4".to_string());
    (image, expected)
}

/// The disk workload's lines (without the kernel's messages).
fn disk_lines(console: &str) -> Vec<String> {
    marked_lines(console, "KRR-DISK-START", "KRR-DISK-END")
}

/// Apply a krr disk overlay (tests the guest's writes reached the disk): header of 16 bytes,
/// then records of a sector number and its 512 bytes.
fn apply_overlay(image: &[u8], overlay: &[u8]) -> Vec<u8> {
    assert_eq!(&overlay[..8], b"KRROVL01", "overlay magic");
    assert_eq!(
        u64::from_le_bytes(overlay[8..16].try_into().unwrap()),
        image.len() as u64
    );
    let mut disk = image.to_vec();
    let records = &overlay[16..];
    assert_eq!(records.len() % 520, 0, "whole records");
    for r in records.chunks(520) {
        let sector = u64::from_le_bytes(r[..8].try_into().unwrap()) as usize;
        disk[sector * 512..(sector + 1) * 512].copy_from_slice(&r[8..]);
    }
    disk
}

/// `--disk IMAGE`: Debian's kernel loads the virtio modules from the initramfs, mounts an ext4
/// image made here (mkfs.ext4 -d), reads its files, writes one and reads it back from the disk
/// under `krr record`, with the results the same commands give on the host. The image is left
/// untouched, the written file is in the overlay, recording in both modes gives the same trace
/// (the device's DMA lands at the same instructions), and the trace replays to "matched" in
/// both modes without the image. The same disk works with `nolapic noapic` (PIC routing).
#[test]
fn debian_kernel_reads_and_writes_a_virtio_disk_under_record_and_replay() {
    let (kernel, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("krr-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (image, expected) = disk_fixture(&dir);
    let image_bytes = std::fs::read(&image).unwrap();
    let overlay = dir.join("disk.overlay");
    let (trace, trace_ss) = (dir.join("disk.trace"), dir.join("disk-ss.trace"));
    let (img, ovl) = (image.to_str().unwrap(), overlay.to_str().unwrap());
    let (t, t_ss) = (trace.to_str().unwrap(), trace_ss.to_str().unwrap());
    let boot_args = ["--kernel", &kernel, "--initrd", &initrd];

    let mut a = vec!["record"];
    a.extend_from_slice(&boot_args);
    a.extend_from_slice(&["--disk", img, "--disk-overlay", ovl, "-o", t]);
    let (console, log) = krr_ok(&a);
    assert_powered_off(&log);
    assert_eq!(workload_lines(&console), expected_results(), "{log}");
    assert_eq!(disk_lines(&console), expected, "{console}");
    let dma: u64 = line_with(&log, "DMA Write: ")["DMA Write: ".len()..]
        .parse()
        .unwrap();
    assert!(dma > 0, "no DMA events: {log}");
    assert!(
        std::fs::read(&image).unwrap() == image_bytes,
        "krr modified the disk image"
    );
    // `krr info` breaks the events down by source: interrupts by vector (adding up to the
    // interrupt events), the disk's BAR accesses and DMA bytes.
    let (info, _) = krr_ok(&["info", t]);
    let irqs: u64 = line_with(&info, "Interrupt: ")["Interrupt: ".len()..]
        .parse()
        .unwrap();
    let by_vector = &info[info.find("=== Interrupts by vector ===").expect(&info)..];
    let by_vector = &by_vector[..by_vector.find("=== Device accesses ===").expect(&info)];
    let sum: u64 = by_vector
        .lines()
        .skip(1)
        .map(|l| l.split_once(": ").unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, irqs, "{info}");
    for line in ["PCI BARs writes: ", "DMA bytes: "] {
        assert!(info.contains(line), "{info}");
    }
    // The guest's file is on the disk: image + overlay hold written.txt.
    let disk = apply_overlay(&image_bytes, &std::fs::read(&overlay).unwrap());
    let merged = dir.join("merged.img");
    std::fs::write(&merged, disk).unwrap();
    let cat = Command::new("debugfs")
        .args(["-R", "cat /written.txt"])
        .arg(&merged)
        .output()
        .expect("debugfs (e2fsprogs)");
    let written: String = (1..=30_000).map(|i| format!("{i}\n")).collect();
    assert!(
        String::from_utf8_lossy(&cat.stdout) == written,
        "written.txt on the disk differs: {}",
        String::from_utf8_lossy(&cat.stderr)
    );

    // The same run in single-step mode (in-memory overlay) records the same trace.
    let mut a = vec!["record", "--singlestep"];
    a.extend_from_slice(&boot_args);
    a.extend_from_slice(&["--disk", img, "-o", t_ss]);
    let (console_ss, log_ss) = krr_ok(&a);
    assert_eq!(console, console_ss, "{log_ss}");
    assert!(
        std::fs::read(&trace).unwrap() == std::fs::read(&trace_ss).unwrap(),
        "recording with --disk twice (default, then --singlestep) gave different traces"
    );
    std::fs::remove_file(&image).unwrap();
    for mode in [None, Some("--singlestep")] {
        let mut a = vec!["replay", t];
        a.extend(mode);
        let (replayed, summary) = krr_ok(&a);
        assert!(summary.contains("Verdict: matched"), "{mode:?}: {summary}");
        assert_eq!(replayed, console, "{mode:?}: the replayed console differs");
    }

    // PIC routing: the link's IRQ 11 through the 8259 (level-triggered in the ELCR).
    let (image, expected) = disk_fixture(&dir);
    let mut a = vec![
        "run",
        "--append",
        "console=ttyS0 nokaslr panic=-1 nolapic noapic",
    ];
    a.extend_from_slice(&boot_args);
    a.extend_from_slice(&["--disk", image.to_str().unwrap()]);
    let (console, log) = krr_ok(&a);
    assert_powered_off(&log);
    assert_eq!(disk_lines(&console), expected, "{console}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The current kernel of a Debian suite and flavour (`cloud`: linux-image-cloud-amd64,
/// `generic`: linux-image-amd64), fetched by tests/guest/fetch-kernel.sh into
/// tests/guest/cache/kernels; returns (vmlinuz path, `package_version`). Fails the test when
/// the package cannot be fetched.
fn debian_kernel(suite: &str, flavour: &str) -> (String, String) {
    let out = Command::new("bash")
        .arg(root().join("tests/guest/fetch-kernel.sh"))
        .args([suite, flavour])
        .output()
        .expect("running tests/guest/fetch-kernel.sh");
    assert!(
        out.status.success(),
        "tests/guest/fetch-kernel.sh {suite} {flavour} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel = String::from_utf8(out.stdout)
        .expect("path is UTF-8")
        .trim()
        .to_string();
    // .../kernels/SUITE-FLAVOUR/root/boot/vmlinuz-*: the package name is in .../package.
    let package = std::path::Path::new(&kernel)
        .ancestors()
        .nth(3)
        .map(|d| d.join("package"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
        .trim()
        .to_string();
    (kernel, package)
}

/// Bound on the other kernels' boots: bookworm's generic 6.1 kernel is XZ-compressed and its
/// decompressor alone runs about 4.6e9 instructions (the whole boot about 6.3e9).
const MAX_INSTRUCTIONS_OTHER_KERNELS: &str = "10000000000";

/// Linux's LOCAL_TIMER_VECTOR (arch/x86/include/asm/irq_vectors.h): the local APIC timer's
/// interrupt.
const LINUX_LOCAL_TIMER_VECTOR: u8 = 0xec;
/// IA32_TSC_DEADLINE, the local APIC timer's deadline in TSC-deadline mode.
const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// The local APIC timer's initial count register (one-shot and periodic modes): xAPIC MMIO at
/// the default base, x2APIC MSR.
const LAPIC_TMICT_MMIO: u64 = 0xfee0_0380;
const X2APIC_TMICT_MSR: u32 = 0x838;

/// What the local APIC timer did in a trace: (interrupts with Linux's timer vector, accepted
/// IA32_TSC_DEADLINE writes, initial-count writes).
fn local_apic_timer_use(trace: &std::path::Path) -> (u64, u64, u64) {
    use krr::trace::{EventData, EventStream, TraceReader};
    let mut events = EventStream::new(TraceReader::open(trace).unwrap());
    let (mut ticks, mut deadlines, mut counts) = (0, 0, 0);
    while let Some(e) = events.next_event().unwrap() {
        match e.data {
            EventData::Interrupt { vector, .. } if vector == LINUX_LOCAL_TIMER_VECTOR => ticks += 1,
            EventData::MsrWrite {
                index,
                accepted: true,
                ..
            } if index == IA32_TSC_DEADLINE => deadlines += 1,
            EventData::MsrWrite {
                index,
                accepted: true,
                ..
            } if index == X2APIC_TMICT_MSR => counts += 1,
            EventData::MmioWrite { phys, .. } if phys == LAPIC_TMICT_MMIO => counts += 1,
            _ => {}
        }
    }
    (ticks, deadlines, counts)
}

/// The local APIC timer neither failed its calibration nor was turned off.
fn assert_local_apic_timer_not_disabled(console: &str, package: &str) {
    for bad in ["APIC timer disabled", "Disabling APIC timer"] {
        assert!(!console.contains(bad), "{package}: `{bad}` in\n{console}");
    }
}

/// A Debian kernel other than the 6.1 cloud one, with krr's default command line: `krr record`
/// boots it to the workload's results (equal to the host's) and power-off, with the local APIC
/// timer in TSC-deadline mode driving the tick (the guest arms IA32_TSC_DEADLINE and takes the
/// timer vector), and the trace replays to the recorded end with the same console.
fn other_kernel_boots_records_and_replays(suite: &str, flavour: &str) {
    let (kernel, package) = debian_kernel(suite, flavour);
    let (_, initrd) = guest();
    let dir = std::env::temp_dir().join(format!(
        "krr-kernel-{suite}-{flavour}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("boot.trace");
    let t = trace.to_str().unwrap();
    let (console, log) = krr_ok_limited(
        &["record", "--kernel", &kernel, "--initrd", &initrd, "-o", t],
        &[],
        MAX_INSTRUCTIONS_OTHER_KERNELS,
    );
    assert_powered_off(&log);
    assert_eq!(
        workload_lines(&console),
        expected_results(),
        "{package}: {log}\n{console}"
    );
    assert!(
        console.contains("TSC deadline timer available"),
        "{package}:\n{console}"
    );
    assert_local_apic_timer_not_disabled(&console, &package);
    let (ticks, deadlines, _) = local_apic_timer_use(&trace);
    assert!(
        ticks >= 100 && deadlines >= 100,
        "{package}: {ticks} local APIC timer interrupts, {deadlines} IA32_TSC_DEADLINE writes"
    );

    let (replayed, summary) = krr_ok(&["replay", t]);
    assert!(summary.contains("Verdict: matched"), "{package}: {summary}");
    assert_eq!(replayed, console, "{package}: the replayed console differs");
    let icount = count(&log).unwrap_or_else(|| panic!("no instruction count in: {log}"));
    assert_eq!(
        line_with(&summary, "Instructions: "),
        format!("Instructions: {icount}"),
        "{package}: {summary}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// bookworm's linux-image-amd64 (6.1, generic).
#[test]
fn debian_bookworm_generic_kernel_boots_records_and_replays() {
    other_kernel_boots_records_and_replays("bookworm", "generic");
}

/// bookworm-backports' linux-image-cloud-amd64 (6.12).
#[test]
fn debian_bookworm_backports_cloud_kernel_boots_records_and_replays() {
    other_kernel_boots_records_and_replays("bookworm-backports", "cloud");
}

/// bookworm-backports' linux-image-amd64 (6.12).
#[test]
fn debian_bookworm_backports_generic_kernel_boots_records_and_replays() {
    other_kernel_boots_records_and_replays("bookworm-backports", "generic");
}

/// trixie's linux-image-cloud-amd64 (6.12).
#[test]
fn debian_trixie_cloud_kernel_boots_records_and_replays() {
    other_kernel_boots_records_and_replays("trixie", "cloud");
}

/// trixie's linux-image-amd64 (6.12).
#[test]
fn debian_trixie_generic_kernel_boots_records_and_replays() {
    other_kernel_boots_records_and_replays("trixie", "generic");
}

/// Without TSC-deadline (`--cpu max,-tsc-deadline`) the newest kernel calibrates the local
/// APIC timer (against the PM timer) and ticks with it in one-shot mode: the same results and
/// power-off, the timer's initial count written and its interrupts taken.
#[test]
fn debian_trixie_generic_kernel_calibrates_the_local_apic_timer() {
    let (kernel, package) = debian_kernel("trixie", "generic");
    let (_, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("krr-kernel-tmict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("boot.trace");
    let t = trace.to_str().unwrap();
    let (console, log) = krr_ok_limited(
        &[
            "record",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cpu",
            "max,-tsc-deadline",
            "-o",
            t,
        ],
        &[],
        MAX_INSTRUCTIONS_OTHER_KERNELS,
    );
    assert_powered_off(&log);
    assert_eq!(
        workload_lines(&console),
        expected_results(),
        "{package}: {log}\n{console}"
    );
    assert!(
        !console.contains("TSC deadline timer available"),
        "{package}:\n{console}"
    );
    assert_local_apic_timer_not_disabled(&console, &package);
    let (ticks, deadlines, counts) = local_apic_timer_use(&trace);
    assert!(
        ticks >= 100 && counts >= 100 && deadlines == 0,
        "{package}: {ticks} local APIC timer interrupts, {counts} initial-count writes, \
         {deadlines} IA32_TSC_DEADLINE writes"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The code cache and parallel replay together, on a recording with user-mode SIMD work (the
/// init's `krr_long=1` compression job): a replay fills a cache directory, then the
/// segments replayed on two threads and one middle segment alone, each in a new process
/// that lowers SIMD forms in another order, run from that cache and still match. (Cached
/// code once called host SIMD stubs by numbers another process had given out.)
#[test]
fn a_warm_code_cache_serves_segments_replayed_from_snapshots() {
    let (kernel, initrd) = guest();
    let dir = std::env::temp_dir().join(format!("krr-boot-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("long.trace");
    let cache = dir.join("cache");
    let (t, c) = (trace.to_str().unwrap(), cache.to_str().unwrap());
    // The default command line (src/run.rs DEFAULT_APPEND) and the job.
    let append = "console=ttyS0 nokaslr panic=-1 krr_long=1";
    let (console, log) = krr_ok(&[
        "record", "--kernel", &kernel, "--initrd", &initrd, "--append", append, "-o", t,
    ]);
    assert!(console.contains("KRR-LONG-END"), "{log}");
    let (replayed, summary) = krr_ok(&["replay", t, "--code-cache", c]);
    assert!(summary.contains("Verdict: matched"), "{summary}");
    assert_eq!(replayed, console);
    let (replayed, summary) = krr_ok(&["replay", t, "--jobs", "2", "--code-cache", c]);
    assert!(
        summary.contains("Verdict: matched"),
        "--jobs 2, warm: {summary}"
    );
    assert_eq!(replayed, console, "--jobs 2, warm: the console differs");
    let segments = krr::trace::TraceReader::open(&trace).unwrap().deltas.len() + 1;
    assert!(segments >= 12, "{segments} segments");
    for k in [segments / 2, segments - 3] {
        let (_, summary) = krr_ok(&[
            "replay",
            "-q",
            t,
            "--segment",
            &k.to_string(),
            "--code-cache",
            c,
        ]);
        assert!(
            summary.contains(&format!("Verdict: segment {k} (")),
            "segment {k}, warm: {summary}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
