//! The persistent code cache through the `krr` binary: a second replay of a trace compiles
//! nothing (every block comes from the cache) and still matches; a damaged cache file is
//! ignored with a warning, the replay still matches and the file is rebuilt;
//! `--no-code-cache` neither reads nor writes one.

mod demo_trace;

use std::path::Path;
use std::process::Command;

/// `krr replay -q TRACE ARGS...`: (success, stdout + stderr).
fn replay(trace: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["replay", "-q", trace.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// (blocks compiled, blocks from the code cache) of a replay's summary.
fn engine_counts(text: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|l| l.starts_with("Engine: "))
        .unwrap_or_else(|| panic!("no engine line in:\n{text}"));
    let num = |after: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words
            .windows(3)
            .position(|w| format!("{} {}", w[1], w[2]) == after)
            .unwrap_or_else(|| panic!("`{after}` in {line}"));
        words[i].parse().unwrap()
    };
    (num("blocks compiled"), num("blocks from"))
}

fn assert_matched(ok: bool, text: &str) {
    assert!(ok && text.contains("Verdict: matched"), "{text}");
}

#[test]
fn a_second_replay_compiles_nothing_it_compiled_before() {
    let trace = demo_trace::tmp("ccache", "demo.trace");
    demo_trace::record(&trace);
    let dir = demo_trace::tmp("ccache", "dir");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ["--code-cache", dir.to_str().unwrap()];

    let (ok, cold) = replay(&trace, &cache);
    assert_matched(ok, &cold);
    let (compiled, cached) = engine_counts(&cold);
    assert!(compiled > 0, "{cold}");
    assert_eq!(cached, 0, "{cold}");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one cache file");
    let file = files[0].path();

    let (ok, warm) = replay(&trace, &cache);
    assert_matched(ok, &warm);
    let (compiled2, cached2) = engine_counts(&warm);
    assert_eq!(compiled2, 0, "{warm}");
    assert!(cached2 >= compiled, "{warm}");

    // A damaged file: ignored (with a warning), the replay compiles again and matches, and
    // the file is written anew.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&file, &bytes).unwrap();
    let (ok, damaged) = replay(&trace, &cache);
    assert_matched(ok, &damaged);
    assert!(damaged.contains("ignored"), "{damaged}");
    let (compiled3, cached3) = engine_counts(&damaged);
    assert_eq!((compiled3, cached3), (compiled, 0), "{damaged}");
    let (ok, rebuilt) = replay(&trace, &cache);
    assert_matched(ok, &rebuilt);
    assert_eq!(engine_counts(&rebuilt).0, 0, "{rebuilt}");

    // Off: nothing read (everything compiled), nothing written.
    let other = demo_trace::tmp("ccache", "unused-dir");
    let _ = std::fs::remove_dir_all(&other);
    let (ok, off) = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["replay", "-q", trace.to_str().unwrap(), "--no-code-cache"])
        .env("KRR_CODE_CACHE", &other)
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.success(), t)
        })
        .unwrap();
    assert_matched(ok, &off);
    assert_eq!(engine_counts(&off), (compiled, 0), "{off}");
    assert!(!other.exists());

    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&trace).unwrap();
}
