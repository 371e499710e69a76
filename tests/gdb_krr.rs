//! gdb on KRR recordings (tests/krr_synth's synthetic kernel, one and two vCPUs), driven by
//! Debian's gdb in batch mode: a breakpoint on a kernel function stops where `--break` stops;
//! `reverse-continue` returns to the earlier arrival with the same count and registers;
//! `stepi`/`reverse-stepi` move one instruction each way; a watchpoint on the timer's
//! `krr_jiffies` stops after the instruction that writes it, forwards and backwards; `monitor
//! icount` shows KRR's count beside krr's; and after all of it the replay still ends where a
//! plain replay ends. The timeline's position is krr's own count of retired instructions,
//! summed over the vCPUs.

mod gdb_session;
mod krr_rec_writer;
mod krr_synth;

use gdb_session::{block, icounts};
use krr_synth::smp::{record_smp, SmpScenario};
use krr_synth::{build_recording, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gdb-krr-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn krr_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_krr"))
}

/// `krr replay --krr` arguments for a recording (krr's host semantics, as it was recorded).
fn krr_args<'a>(snapshot: &'a Path, vmlinux: &'a Path) -> Vec<&'a str> {
    vec![
        "--krr",
        snapshot.to_str().unwrap(),
        "--vmlinux",
        vmlinux.to_str().unwrap(),
        "--profile",
        "host",
    ]
}

/// A plain `krr replay --krr` with `extra`: its stderr (exit status 0 asserted).
fn plain(args: &[&str], extra: &[&str]) -> String {
    let out = Command::new(krr_bin())
        .args(["replay", "-q"])
        .args(args)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}

/// The symbol's address in the synthetic vmlinux.
fn symbol(vmlinux: &Path, name: &str) -> u64 {
    let v = krr::vmlinux::Vmlinux::open(vmlinux).unwrap();
    v.symbol(name)
        .unwrap_or_else(|| panic!("{name} in the synthetic vmlinux"))
        .addr
}

/// The verdict line and the register line after it.
fn verdict(stderr: &str) -> String {
    let at = stderr.find("verdict: ").expect(stderr);
    stderr[at..].lines().take(2).collect::<Vec<_>>().join("\n")
}

#[test]
fn gdb_on_a_krr_recording_goes_both_ways_and_the_replay_still_ends_the_same() {
    let rec = build_recording(&Scenario::small(), &dir("one"));
    let args = krr_args(&rec.snapshot, &rec.vmlinux);
    let timer = symbol(&rec.vmlinux, "sysvec_apic_timer_interrupt");
    let jiffies = symbol(&rec.vmlinux, "krr_jiffies");
    let end = verdict(&plain(&args, &[]));
    assert!(end.starts_with("verdict: replayed to the end"), "{end}");
    // Where `--break` stops: before instruction N (KRR count C).
    let stop = plain(&args, &["--break", "sysvec_apic_timer_interrupt"]);
    let want = format!(
        "verdict: stopped at breakpoint {timer:#x} (sysvec_apic_timer_interrupt) before instruction "
    );
    let line = stop.lines().find(|l| l.starts_with(&want)).expect(&stop);
    let first: u64 = line[want.len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let c = |s: &str| s.to_string();
    let regs = c("info registers rip rsp rdi rax rflags cr3");
    let mut gdb_args = args.clone();
    gdb_args.extend(["--snapshot-interval", "2000"]);
    let (out, stub_err, code) = gdb_session::under_gdb(
        &krr_bin(),
        &gdb_args,
        &[
            c("monitor icount"),
            format!("break *{timer:#x}"),
            c("continue"),
            c("monitor icount"),
            c("p/x $pc"),
            regs.clone(),
            c("echo ==first-end==\\n"),
            c("continue"),
            c("monitor icount"),
            c("reverse-continue"),
            c("monitor icount"),
            regs.clone(),
            c("echo ==back-end==\\n"),
            c("stepi"),
            c("monitor icount"),
            c("reverse-stepi"),
            c("monitor icount"),
            c("delete"),
            format!("watch *(long *){jiffies:#x}"),
            c("continue"),
            c("monitor icount"),
            c("continue"),
            c("monitor icount"),
            c("reverse-continue"),
            c("monitor icount"),
            c("echo ==watch-back==\\n"),
            c("x/i $pc"),
            c("monitor events"),
            c("delete"),
            c("continue"),
        ],
    );
    let n = icounts(&out);
    assert_eq!(n.len(), 9, "{out}\n{stub_err}");
    assert_eq!(n[0], 0, "gdb attaches before the first instruction: {out}");
    assert_eq!(
        n[1], first,
        "gdb's breakpoint stops where --break does: {out}"
    );
    assert!(out.contains(&format!("$1 = {timer:#x}")), "{out}");
    assert!(n[2] > n[1], "{out}");
    assert_eq!(
        n[3], first,
        "reverse-continue: back to the first arrival: {out}"
    );
    assert_eq!(
        block(&out, "==first-end=="),
        block(&out, "==back-end=="),
        "{out}"
    );
    assert_eq!(
        (n[4], n[5]),
        (first + 1, first),
        "stepi, reverse-stepi: {out}"
    );
    // The timer's writes of krr_jiffies: 0 -> 1, then 1 -> 2, and back to 1.
    assert!(out.contains("Old value = 0\nNew value = 1\n"), "{out}");
    assert!(out.contains("Old value = 1\nNew value = 2\n"), "{out}");
    assert!(out.contains("Old value = 2\nNew value = 1\n"), "{out}");
    assert!(n[6] < n[7], "{out}");
    assert_eq!(
        n[8],
        n[7] - 1,
        "backwards, before the writing instruction: {out}"
    );
    // Backwards, the watchpoint stops at the instruction that stores to krr_jiffies.
    let after = &out[out.find("==watch-back==").unwrap()..];
    let insn = after
        .lines()
        .find(|l| l.starts_with("=> "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        insn.contains(&format!("{jiffies:x}")) && insn.contains("mov"),
        "the writing instruction: {insn}"
    );
    // KRR's own count, beside krr's.
    assert!(out.contains("KRR count "), "{out}");
    assert!(out.contains("> event "), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(verdict(&stub_err), end, "{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
}

/// Two vCPUs: the timeline counts both vCPUs' instructions; `monitor goto` forwards and back
/// across exec-lock hand-overs, a breakpoint that both vCPUs reach, and `reverse-continue`
/// over hand-overs; the end is the plain replay's.
#[test]
fn gdb_on_a_two_vcpu_recording_crosses_hand_overs_both_ways() {
    let rec = record_smp(&SmpScenario::small(), &dir("smp"));
    let args = krr_args(&rec.snapshot, &rec.vmlinux);
    let end_err = plain(&args, &[]);
    let end = verdict(&end_err);
    let vcpus = end_err
        .lines()
        .find(|l| l.starts_with("2 vCPUs: "))
        .expect(&end_err)
        .to_string();
    let total: u64 = end_err
        .lines()
        .find(|l| l.contains(" events replayed; "))
        .and_then(|l| l.split("replayed; ").nth(1))
        .and_then(|l| l.split(' ').next())
        .map(|n| n.parse().unwrap())
        .expect(&end_err);
    let syscall = symbol(&rec.vmlinux, "do_syscall_64");
    let c = |s: &str| s.to_string();
    let regs = c("info registers rip rsp rdi gs_base cr3");
    let mut gdb_args = args.clone();
    gdb_args.extend(["--snapshot-interval", "5000"]);
    let (out, stub_err, code) = gdb_session::under_gdb(
        &krr_bin(),
        &gdb_args,
        &[
            format!("monitor goto {}", total / 2),
            c("monitor icount"),
            format!("monitor goto {}", total / 4),
            c("monitor icount"),
            format!("break *{syscall:#x}"),
            c("continue"),
            c("continue"),
            c("monitor icount"),
            regs.clone(),
            c("echo ==second==\\n"),
            c("continue"),
            c("continue"),
            c("reverse-continue"),
            c("reverse-continue"),
            c("monitor icount"),
            regs.clone(),
            c("echo ==again==\\n"),
            c("delete"),
            c("continue"),
        ],
    );
    // `monitor goto` answers `icount N (...)` too.
    let n = icounts(&out);
    assert_eq!(n.len(), 6, "{out}\n{stub_err}");
    assert_eq!((n[1], n[3]), (total / 2, total / 4), "{out}");
    assert_eq!(
        n[5], n[4],
        "two reverse-continues undo two continues: {out}"
    );
    assert_eq!(block(&out, "==second=="), block(&out, "==again=="), "{out}");
    assert!(
        out.contains("on vCPU 0") || out.contains("on vCPU 1"),
        "{out}"
    );
    assert!(out.contains("exited normally"), "{out}");
    assert_eq!(verdict(&stub_err), end, "{stub_err}");
    assert!(stub_err.contains(&vcpus), "{vcpus}\n{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
}

/// KRR's own spelling: `-kernel-replay NAME -gdb tcp::PORT -S` serves gdb too.
#[test]
fn krrs_command_line_serves_gdb() {
    let rec = build_recording(&Scenario::small(), &dir("qemu"));
    let (out, stub_err, _) = gdb_session::under_gdb(
        &krr_bin(),
        &[
            "-smp",
            "1",
            "-kernel-replay",
            rec.snapshot.to_str().unwrap(),
            "--vmlinux",
            rec.vmlinux.to_str().unwrap(),
            "-gdb",
            "tcp::PORT",
            "-S",
        ],
        &[
            "monitor icount".to_string(),
            "stepi".to_string(),
            "monitor icount".to_string(),
            "kill".to_string(),
        ],
    );
    assert_eq!(icounts(&out), [0, 1], "{out}\n{stub_err}");
    assert!(out.contains("KRR count 1 on vCPU 0"), "{out}");
}

/// A divergence found while gdb is attached stops there with SIGTRAP, the report on krr's
/// stderr, and gdb looks around at that point (the IO_IN's RIP altered: the port input
/// there no longer matches).
#[test]
fn a_divergence_stops_gdb_where_it_happens() {
    use krr::krr_rec::events::{Event, KrrLog};
    let rec = build_recording(&Scenario::small(), &dir("diverge-src"));
    let log = KrrLog::open(&rec.log).unwrap();
    let i = log
        .events
        .iter()
        .position(|e| matches!(e, Event::IoIn(_)))
        .unwrap();
    let d = dir("diverge");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(&rec.snapshot, d.join("test1")).unwrap();
    let mut bytes = std::fs::read(&rec.log).unwrap();
    let at = log.offsets[i] as usize + 4 + 24;
    let rip = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) + 1;
    bytes[at..at + 8].copy_from_slice(&rip.to_le_bytes());
    std::fs::write(d.join("kernel_rr.log"), bytes).unwrap();
    let snapshot = d.join("test1");
    let args = krr_args(&snapshot, &rec.vmlinux);
    let (out, stub_err, code) = gdb_session::under_gdb(
        &krr_bin(),
        &args,
        &[
            "continue".to_string(),
            "monitor icount".to_string(),
            "x/i $pc".to_string(),
            "kill".to_string(),
        ],
    );
    assert!(out.contains("SIGTRAP"), "{out}\n{stub_err}");
    assert!(
        stub_err.contains("krr: the replay diverged at instruction "),
        "{stub_err}"
    );
    assert!(stub_err.contains("recorded at RIP"), "{stub_err}");
    assert_eq!(icounts(&out).len(), 1, "{out}");
    assert!(out.contains("=> 0x"), "{out}");
    assert_ne!(code, 0, "{stub_err}");
}
