//! What the replay-debugging tests (tests/gdb_stub.rs, tests/replay_symbols.rs) share: the
//! built-in demo guest's trace, krr run on it, and the HLTs of its idle loop (addresses the
//! replay certainly reaches, more than once).

#![allow(dead_code)]

use krr::demo_guest::record_demo_guest;
use krr_jit::EngineConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary file of this test process.
pub fn tmp(tag: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("krr-{tag}-{}-{name}", std::process::id()))
}

/// Record the demo guest into `path`.
pub fn record(path: &Path) {
    record_demo_guest(EngineConfig::default(), path, false).unwrap();
}

/// `krr` (this test build's) with `args`: (success, stderr).
pub fn krr(args: &[&str]) -> (bool, String) {
    krr_at(Path::new(env!("CARGO_BIN_EXE_krr")), args)
}

/// The `krr` binary at `bin` with `args`: (success, stderr).
pub fn krr_at(bin: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The HLTs the replay of `trace` executes in instructions [16000, 30000), from its
/// `--log-bound` log: (instruction count, address), in order.
pub fn idle_hlts(trace: &str, log: &Path) -> Vec<(u64, u64)> {
    let (ok, err) = krr(&[
        "replay",
        "-q",
        trace,
        "--log-bound=start=16000,end=30000",
        "-D",
        log.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let hlts: Vec<(u64, u64)> = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("] hlt |"))
        .map(|l| {
            let mut f = l.split(' ');
            let n: u64 = f.next().unwrap().parse().unwrap();
            let a = u64::from_str_radix(f.next().unwrap().trim_start_matches("0x"), 16).unwrap();
            (n, a)
        })
        .collect();
    assert!(!hlts.is_empty(), "the window holds the idle loop");
    hlts
}
