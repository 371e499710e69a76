//! The real guest: Debian's 6.1 cloud kernel with a busybox initramfs (tests/guest/) boots
//! under `krr run` to the workload's end marker, with the workload's results equal to the same
//! commands run on the host, and powers off (ACPI S5); two runs are identical (deterministic
//! machine), and so are runs with `--singlestep` and with `--interpret` (no JIT).
//!
//! Needs `apt-get download` (tests/guest/fetch.sh); fails loudly when the packages cannot be
//! fetched.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary when tests/run.sh built it (much faster), else the test build's.
fn krr() -> PathBuf {
    let release = root().join("target/release/krr");
    if release.exists() {
        release
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_krr"))
    }
}

fn guest() -> (String, String) {
    let out = Command::new("bash")
        .arg(root().join("tests/guest/fetch.sh"))
        .output()
        .expect("running tests/guest/fetch.sh");
    assert!(
        out.status.success(),
        "tests/guest/fetch.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("paths are UTF-8");
    let mut lines = text.lines();
    let kernel = lines.next().expect("kernel path").to_string();
    let initrd = lines.next().expect("initramfs path").to_string();
    (kernel, initrd)
}

/// The workload's result lines, computed by running the same commands on the host.
fn expected_results() -> Vec<String> {
    let script = r#"
        set -e
        d=$(mktemp -d); cd "$d"
        i=0; while [ $i -lt 200 ]; do echo "$i" > f$i; i=$((i + 1)); done
        cat $(ls f* | LC_ALL=C sort) | md5sum | sed 's/^/files: /'
        dd if=/dev/zero bs=4096 count=256 2>/dev/null | md5sum | sed 's/^/dd: /'
        seq 1 20000 | md5sum | sed 's/^/seq: /'
        echo "count: 200"
        cd /; rm -rf "$d"
    "#;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("host shell");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// A bound on every boot (the workload and power-off take about 1.7e9 instructions).
const MAX_INSTRUCTIONS: &str = "4000000000";

fn boot(kernel: &str, initrd: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new(krr())
        .args(["run", "--kernel", kernel, "--initrd", initrd])
        .args(["--max-instructions", MAX_INSTRUCTIONS])
        .args(extra)
        .output()
        .expect("running krr");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() || out.status.code() == Some(2),
        "krr run failed: {log}\n{console}"
    );
    (console, log)
}

fn workload_lines(console: &str) -> Vec<String> {
    let start = console.find("KRR-WORKLOAD-START").expect("start marker");
    let end = console
        .find("KRR-WORKLOAD-END")
        .expect("end marker (the workload did not finish)");
    console[start..end]
        .lines()
        .skip(1)
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[test]
fn debian_kernel_boots_and_runs_the_workload_deterministically() {
    let (kernel, initrd) = guest();
    let (console, log) = boot(&kernel, &initrd, &[]);
    assert_eq!(workload_lines(&console), expected_results(), "{log}");
    // `poweroff -f` ends the run through ACPI S5.
    assert!(log.contains("krr: guest powered off"), "{log}");
    // A second run is identical: same console output, same instruction count.
    let (console2, log2) = boot(&kernel, &initrd, &[]);
    assert_eq!(console, console2, "two runs of the same guest differ");
    let count = |l: &str| {
        l.split(" instructions in ")
            .next()
            .and_then(|s| s.split_whitespace().last())
            .map(str::to_string)
    };
    assert!(count(&log).is_some(), "no instruction count in: {log}");
    assert_eq!(
        count(&log),
        count(&log2),
        "instruction counts differ:\n{log}\n{log2}"
    );
    // One instruction per block, and the interpreter alone, run the same semantics through
    // other block boundaries and take every interrupt at the same instruction: the console
    // (kernel timestamps included) and the instruction count must not change.
    for mode in ["--singlestep", "--interpret"] {
        let (console_m, log_m) = boot(&kernel, &initrd, &[mode]);
        assert_eq!(console, console_m, "{mode} changed the guest's output");
        assert_eq!(
            count(&log),
            count(&log_m),
            "{mode} changed the instruction count:\n{log}\n{log_m}"
        );
    }
}
