//! Parallel replay from the trace's snapshots (`krr replay --jobs N`, `--segment K`,
//! `--save-snapshots N`) on the demo guest's trace: the same console, event statistics and
//! verdict as a sequential replay, every snapshot checked, each segment alone matching the
//! snapshot at its end, snapshots added to a trace recorded without them, a damaged
//! snapshot refused or reported where it is, and the segments fanned out by GNU parallel as
//! a batch system would (tests/run.sh installs it).

use krr::demo_guest::record_demo_guest_with;
use krr::trace::TraceReader;
use krr_jit::EngineConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("krr-par-{}-{name}", std::process::id()))
}

fn record(path: &Path, snapshot_interval: u64) {
    record_demo_guest_with(EngineConfig::default(), path, false, snapshot_interval).unwrap();
}

/// `krr ARGS`: (exit code, stdout, stderr).
fn krr(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The summary without the lines that vary between runs (time, speed, compile work) and
/// the parallel replay's own line.
fn stable(summary: &str) -> String {
    summary
        .lines()
        .filter(|l| {
            !["Replay executed", "Guest MIPS", "Engine:", "Parallel:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn parallel_replay_gives_the_sequential_replays_results() {
    let trace = tmp("trace");
    record(&trace, 200_000);
    let t = trace.to_str().unwrap();
    let snapshots = TraceReader::open(&trace).unwrap().deltas.len();
    assert!(snapshots >= 5, "{snapshots} snapshots");
    let (code, console, summary) = krr(&["replay", t]);
    assert_eq!(code, 0, "{summary}");
    assert!(summary.contains("Verdict: matched"), "{summary}");
    for jobs in ["1", "2", "3"] {
        let (code, out, err) = krr(&["replay", t, "--jobs", jobs]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, console, "--jobs {jobs}: the console differs");
        assert_eq!(stable(&err), stable(&summary), "--jobs {jobs}");
        let line = format!(
            "Parallel: {} segments on {jobs} threads, {snapshots} snapshots checked at segment ends",
            snapshots + 1
        );
        assert!(err.contains(&line), "{line}\n{err}");
    }
    // Each segment alone, as a batch system runs them; the last one ends the recording.
    for k in 0..=snapshots {
        let (code, _, err) = krr(&["replay", "-q", t, "--segment", &k.to_string()]);
        assert_eq!(code, 0, "segment {k}: {err}");
        let want = if k < snapshots {
            format!("Verdict: segment {k} (instructions ")
        } else {
            "Verdict: matched".to_string()
        };
        assert!(err.contains(&want), "segment {k}: {err}");
    }
    let (code, _, err) = krr(&["replay", t, "--segment", &(snapshots + 1).to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("segments (0 to"), "{err}");
    let _ = std::fs::remove_file(&trace);
}

#[test]
fn snapshots_are_added_to_a_trace_without_them() {
    let trace = tmp("bare");
    record(&trace, 0);
    let t = trace.to_str().unwrap();
    let (_, info, _) = krr(&["info", t]);
    assert!(info.contains("snapshots: none"), "{info}");
    let (code, _, err) = krr(&["replay", "-q", t, "--jobs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Parallel: 1 segments on 1 threads"), "{err}");
    let (code, _, err) = krr(&["replay", "-q", t, "--save-snapshots", "300000"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("added 5 snapshots (every 300000 instructions)"),
        "{err}"
    );
    let (_, info, _) = krr(&["info", t]);
    assert!(
        info.contains("snapshots: 5, 6 segments (`krr replay --jobs N`, `--segment K`); at instructions 300000 600000 900000 1200000 1500000"),
        "{info}"
    );
    let (code, _, err) = krr(&["replay", "-q", t, "--jobs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Verdict: matched"), "{err}");
    assert!(err.contains("5 snapshots checked"), "{err}");
    // Again: refused before replaying.
    let (code, _, err) = krr(&["replay", "-q", t, "--save-snapshots", "300000"]);
    assert_ne!(code, 0);
    assert!(err.contains("has 5 snapshots already"), "{err}");
    // The snapshots the replay took are the ones the recorder takes.
    let recorded = tmp("recorded");
    record(&recorded, 300_000);
    let (a, b) = (
        TraceReader::open(&trace).unwrap(),
        TraceReader::open(&recorded).unwrap(),
    );
    let at = |r: &TraceReader| {
        r.deltas
            .iter()
            .map(|d| (d.icount, d.events))
            .collect::<Vec<_>>()
    };
    assert_eq!(at(&a), at(&b));
    let (mut a, mut b) = (a, b);
    for k in 0..5 {
        // (Not assert_eq!: a mismatch would print megabytes.)
        assert!(
            a.delta(k).unwrap() == b.delta(k).unwrap(),
            "snapshot {k} differs"
        );
    }
    for f in [&trace, &recorded] {
        let _ = std::fs::remove_file(f);
    }
}

#[test]
fn a_damaged_snapshot_is_refused_or_reported_where_it_is() {
    let trace = tmp("damaged-src");
    record(&trace, 200_000);
    let reader = TraceReader::open(&trace).unwrap();
    let d = reader.deltas[2];
    let bytes = std::fs::read(&trace).unwrap();
    // A flipped byte: the section's checksum names it.
    let flipped = tmp("flipped");
    let mut b = bytes.clone();
    b[d.offset as usize + 16 + 40] ^= 1;
    std::fs::write(&flipped, &b).unwrap();
    let (code, _, err) = krr(&["replay", "-q", flipped.to_str().unwrap(), "--jobs", "2"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "delta snapshot at offset {} fails its checksum",
            d.offset
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A well-framed snapshot whose CPU state hash is another (checksum redone): the segment
    // that ends there reports a divergence at it, the one that starts there refuses it.
    let mut reader = reader;
    let mut snap = reader.delta(2).unwrap();
    snap.regs_hash ^= 1;
    let payload = snap.encode();
    let at = d.offset as usize;
    let old_len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()) as usize;
    assert_eq!(payload.len(), old_len, "same size");
    let mut b = bytes.clone();
    b[at + 12..at + 16].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    b[at + 16..at + 16 + payload.len()].copy_from_slice(&payload);
    let altered = tmp("altered");
    std::fs::write(&altered, &b).unwrap();
    let (code, _, err) = krr(&["replay", "-q", altered.to_str().unwrap(), "--segment", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("snapshot 2 at instruction") && err.contains("CPU state hash"),
        "{err}"
    );
    let (code, _, err) = krr(&["replay", "-q", altered.to_str().unwrap(), "--segment", "3"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("delta snapshot 2: the state it rebuilds hashes to")
            && err.contains("(damaged)"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for f in [&trace, &flipped, &altered] {
        let _ = std::fs::remove_file(f);
    }
}

/// The segments of one trace as a batch system runs them: GNU parallel (here on this machine;
/// with `--sshlogin` on others) runs `krr replay --segment K` for every K.
#[test]
fn gnu_parallel_fans_the_segments_out() {
    let trace = tmp("batch");
    record(&trace, 200_000);
    let t = trace.to_str().unwrap();
    let n = TraceReader::open(&trace).unwrap().deltas.len() + 1;
    let out = Command::new("parallel")
        .args(["--will-cite", "--halt", "now,fail=1", "-j", "2"])
        .arg(format!(
            "{} replay -q {t} --segment {{}}",
            env!("CARGO_BIN_EXE_krr")
        ))
        .arg(":::")
        .args((0..n).map(|k| k.to_string()))
        .output()
        .expect("GNU parallel (Debian package parallel; tests/run.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("Verdict: segment ").count(), n - 1, "{err}");
    assert_eq!(err.matches("Verdict: matched").count(), 1, "{err}");
    let _ = std::fs::remove_file(&trace);
}
