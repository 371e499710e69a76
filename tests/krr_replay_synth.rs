//! `krr replay --krr` on synthetic KRR recordings (tests/krr_synth): the command's output
//! (KRR's end-of-replay block, krr's verdict), an altered event reported as a divergence at
//! that event, a damaged log refused with its offset, and the instruction log and stop in
//! KRR's count. (The replayed final state is checked in tests/krr_synth_record.rs.)

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::events::{Event, KrrLog};
use krr_synth::{build_recording, Scenario};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("krr-replay-synth-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// `krr replay --krr SNAPSHOT --vmlinux VMLINUX --profile host ARGS` (the recorder runs
/// krr's host semantics).
fn replay(snapshot: &Path, vmlinux: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["replay", "-q", "--krr"])
        .arg(snapshot)
        .arg("--vmlinux")
        .arg(vmlinux)
        .args(["--profile", "host"])
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_command_replays_to_the_end_and_prints_krrs_block() {
    let r = build_recording(&Scenario::small(), &dir("cli"));
    for mode in [&[][..], &["--singlestep"][..]] {
        let out = replay(&r.snapshot, &r.vmlinux, mode);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stdout.contains("Replay finished\nReplay executed in "),
            "{stdout}"
        );
        let block = format!(
            "=== Event Stats ===\nInterrupt: {}\nSyscall: {}\nException: {}\nCFU: {}\nGFU: {}\n",
            r.counts[0],
            r.counts[2],
            r.counts[1],
            r.counts[4],
            r.counts[8] + r.counts[10]
        );
        assert!(stdout.contains(&block), "{block}\n{stdout}");
        assert!(
            stdout.contains(&format!("Total Replay Events: {}\n", r.events)),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("{} of {} events replayed", r.events, r.events)),
            "{stderr}"
        );
        assert!(stderr.contains("profile host"), "{stderr}");
        assert!(stderr.contains("verdict: replayed to the end"), "{stderr}");
    }
}

/// One field of one event changed in `kernel_rr.log`: the replay stops with a divergence
/// naming that event (index, type, file offset), exit 2.
#[test]
fn an_altered_event_is_reported_at_that_event() {
    let r = build_recording(&Scenario::small(), &dir("altered"));
    let log = KrrLog::open(&r.log).unwrap();
    let bytes = std::fs::read(&r.log).unwrap();
    let first = |want: &dyn Fn(&Event) -> bool| log.events.iter().position(want).unwrap();
    let kernel_irq = first(&|e| matches!(e, Event::Interrupt(i) if i.rip >> 63 == 1));
    let cases: Vec<(&str, usize, usize, u64, &str)> = vec![
        // (what, event, byte offset in its payload, value added, message part)
        (
            "IO_IN rip",
            first(&|e| matches!(e, Event::IoIn(_))),
            24,
            1,
            "recorded at RIP",
        ),
        ("kernel interrupt count", kernel_irq, 32, 5000, ""),
        (
            "GFU pointer",
            first(&|e| matches!(e, Event::Gfu(_))),
            16,
            64,
            "",
        ),
        (
            "RDTSC rip",
            first(&|e| matches!(e, Event::Rdtsc(_))),
            24,
            2,
            "RDTSC at RIP",
        ),
    ];
    for (what, i, field, add, part) in cases {
        let d = dir(&format!("altered-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&r.snapshot, d.join("test1")).unwrap();
        let mut b = bytes.clone();
        let at = log.offsets[i] as usize + 4 + field;
        let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap()).wrapping_add(add);
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        std::fs::write(d.join("kernel_rr.log"), b).unwrap();
        let out = replay(&d.join("test1"), &r.vmlinux, &[]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {stdout}{stderr}");
        let named = format!(
            "event {} ({}, file offset {})",
            i + 1,
            log.events[i].kind_name(),
            log.offsets[i]
        );
        let verdict = stderr
            .lines()
            .find(|l| l.starts_with("verdict: DIVERGED"))
            .unwrap_or_else(|| panic!("{what}: {stderr}"));
        assert!(verdict.contains(&named), "{what}: {named}\n{verdict}");
        // The RIP is named after its kernel function (the vmlinux's symbols).
        let rip_part = verdict
            .split("RIP ")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        assert!(rip_part.contains(" ("), "{what}: {verdict}");
        assert!(verdict.contains(part), "{what}: {verdict}");
    }
}

#[test]
fn a_truncated_log_is_refused_with_its_offset() {
    let r = build_recording(&Scenario::small(), &dir("truncated"));
    let bytes = std::fs::read(&r.log).unwrap();
    let last = *KrrLog::open(&r.log).unwrap().offsets.last().unwrap();
    let cut = bytes.len() - 7;
    std::fs::write(&r.log, &bytes[..cut]).unwrap();
    let out = replay(&r.snapshot, &r.vmlinux, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("kernel_rr.log"), "{stderr}");
    // The last event's payload starts after its 4-byte type.
    assert!(stderr.contains(&format!("byte {}", last + 4)), "{stderr}");
    assert!(stderr.contains("truncated"), "{stderr}");
}

/// `--log-bound` and `--stop-at` count in KRR's count: the log's lines carry `inst_cnt=`
/// from the window's start, and the stop comes before the instruction with that count.
#[test]
fn instruction_log_and_stop_in_krrs_count() {
    let r = build_recording(&Scenario::small(), &dir("log"));
    let log_file = r.dir.join("insns.log");
    let lf = log_file.to_str().unwrap();
    let out = replay(
        &r.snapshot,
        &r.vmlinux,
        &[
            "--log-bound",
            "start=1000,end=1010",
            "-D",
            lf,
            "--log-format",
            "krr",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let logged = std::fs::read_to_string(&log_file).unwrap();
    let counts: Vec<&str> = logged
        .lines()
        .filter_map(|l| l.split("inst_cnt=").nth(1))
        .collect();
    let want: Vec<String> = (1000..1010).map(|n| n.to_string()).collect();
    assert_eq!(counts, want, "{logged}");
    assert!(logged.lines().next().unwrap().starts_with("Regs: eflags="));
    let out = replay(&r.snapshot, &r.vmlinux, &["--stop-at", "5000"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let stop = stderr
        .lines()
        .find(|l| l.starts_with("verdict: stopped before KRR count 5000"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        stop.ends_with(')') && stop.contains("), RIP 0x"),
        "named: {stop}"
    );
}
