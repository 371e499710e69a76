//! The named CPU models (`--cpu baseline|broadwell|icelake-client`) boot Debian's 6.1 cloud
//! kernel (tests/guest/, as tests/boot.rs) to the workload's results, equal to the host's, and
//! power-off; the kernel sees the model's identity and XSAVE/FXSAVE choice; a `broadwell`
//! recording stores the model and replays; `--cpuid` dumps and specs krr cannot model are
//! refused with one line.
//!
//! The `--cpuid` fixture `src/cpu_model/testdata/qemu-7.2-tcg-broadwell.cpuid` is the CPUID a
//! guest of QEMU 7.2 (tests/guest/cache/qemu, `-accel tcg -cpu Broadwell`) reports, printed in
//! `cpuid -r` format by a static C program (`__cpuid_count` over leaves 0..max, subleaves 0..7
//! of 4/7/0xB/0xD, and 0x80000000..max) run as the initramfs's /init.

mod guest_boot;

use guest_boot::*;

/// Boot (or record into `trace`) under `--cpu spec`; check the results, the power-off, the
/// kernel's `smpboot: CPU0:` line and its FPU line. Returns the console.
fn boot(spec: &str, trace: Option<&str>, cpu0: &str, fpu: &str) -> String {
    let (kernel, initrd) = guest();
    let mut args = vec![
        if trace.is_some() { "record" } else { "run" },
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--cpu",
        spec,
    ];
    if let Some(t) = trace {
        args.extend(["-o", t]);
    }
    let (console, log) = krr_ok(&args);
    assert_powered_off(&log);
    assert_eq!(
        workload_lines(&console),
        expected_results(),
        "{spec}: {log}"
    );
    assert!(
        console
            .lines()
            .any(|l| l.contains("smpboot: CPU0: ") && l.contains(cpu0)),
        "{spec}: no `smpboot: CPU0: {cpu0}` line:\n{console}"
    );
    assert!(console.contains(fpu), "{spec}: no `{fpu}` line:\n{console}");
    console
}

/// XSAVE with krr's x87|SSE state.
const XSAVE_LINE: &str =
    "x86/fpu: Enabled xstate features 0x3, context size is 576 bytes, using 'standard' format.";

#[test]
fn debian_kernel_boots_under_baseline() {
    boot(
        "baseline",
        None,
        "KrrKrrKrrKrr krr baseline x86-64 CPU (family: 0x6, model: 0x55, stepping: 0x4)",
        "x86/fpu: x87 FPU will use FXSAVE",
    );
}

#[test]
fn debian_kernel_boots_under_icelake_client() {
    boot(
        "Icelake-Client",
        None,
        "Intel Core Processor (Icelake) (family: 0x6, model: 0x7e, stepping: 0x0)",
        XSAVE_LINE,
    );
}

#[test]
fn debian_kernel_records_and_replays_under_broadwell() {
    let dir = std::env::temp_dir().join(format!("krr-cpu-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("broadwell.trace");
    let t = trace.to_str().unwrap();
    let console = boot(
        "broadwell",
        Some(t),
        "Intel Core Processor (Broadwell) (family: 0x6, model: 0x3d, stepping: 0x2)",
        XSAVE_LINE,
    );
    let info = krr::trace::TraceReader::open(&trace).unwrap().info;
    assert_eq!(info.cpu_model, "broadwell");
    let want = krr::cpu_model::CpuModel::parse("broadwell").unwrap().cpuid;
    assert_eq!(info.cpuid, want.entries[..want.len as usize]);
    let (out, _) = krr_ok(&["info", t]);
    for want in [
        "CPU model broadwell (",
        "  CPU GenuineIntel family 6 model 61 (0x3d) stepping 2, \"Intel Core Processor (Broadwell)\"",
        "  CPU features (45): fpu de pse tsc",
        // krr models AVX, FMA and F16C now; broadwell hides them as KRR does.
        "  CPU masked (KRR hides): mca mce avx fma f16c avx2",
    ] {
        assert!(out.contains(want), "no `{want}` in krr info:\n{out}");
    }
    let (replayed, summary) = krr_ok(&["replay", t]);
    assert!(summary.contains("Verdict: matched"), "{summary}");
    assert_eq!(replayed, console, "the replayed console differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Refusals are one line on stderr and exit status 1; `--cpu help` needs no kernel.
#[test]
fn unmodelled_specs_and_dumps_are_refused_in_one_line() {
    let fixture = root().join("src/cpu_model/testdata/qemu-7.2-tcg-broadwell.cpuid");
    let bad = std::env::temp_dir().join(format!("krr-bad-{}.cpuid", std::process::id()));
    std::fs::write(&bad, "CPU 0:\n   0x00000000 0x00: eax=0x0000000d\n").unwrap();
    // QEMU's Broadwell dump with AVX-512F (leaf 7 EBX bit 16) added: krr does not model it.
    let avx512 = std::env::temp_dir().join(format!("krr-avx512-{}.cpuid", std::process::id()));
    let dump = std::fs::read_to_string(&fixture).unwrap();
    let leaf7 = "0x00000007 0x00: eax=0x00000000 ebx=0x001803a9";
    assert!(dump.contains(leaf7), "the fixture's leaf 7 changed");
    std::fs::write(
        &avx512,
        dump.replace(leaf7, "0x00000007 0x00: eax=0x00000000 ebx=0x001903a9"),
    )
    .unwrap();
    for (args, want) in [
        (
            vec!["--cpuid", avx512.to_str().unwrap()],
            "the dump advertises 1 feature(s) krr does not model: avx512f",
        ),
        (vec!["--cpuid", bad.to_str().unwrap()], "line 2: expected"),
        (
            vec!["--cpu", "broadwell,+avx512f"],
            "`avx512f` is not modelled by krr",
        ),
        (vec!["--cpu", "skylake"], "unknown CPU model `skylake`"),
    ] {
        let mut all = vec!["run", "--kernel", "/nonexistent"];
        all.extend(args.iter().copied());
        let (code, stdout, stderr) = krr_run(&all);
        assert_eq!(code, 1, "{all:?}: {stderr}");
        assert!(
            stdout.is_empty() && stderr.lines().count() == 1,
            "{all:?}: {stderr}"
        );
        assert!(stderr.contains(want), "{all:?}: {stderr}");
    }
    std::fs::remove_file(&bad).unwrap();
    std::fs::remove_file(&avx512).unwrap();
    let (help, _) = krr_ok(&["record", "--cpu", "help"]);
    assert!(
        help.contains("icelake-client: QEMU 7.0 Icelake-Client"),
        "{help}"
    );
}
