//! What the guest boot tests (tests/boot.rs, tests/cpu_models.rs) share: the krr binary, the
//! Debian guest from tests/guest/fetch.sh, the workload's expected results computed on the
//! host, running krr with an instruction bound, and reading its console and summaries.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release binary when tests/run.sh built it (much faster), else the test build's.
pub fn krr() -> PathBuf {
    let release = root().join("target/release/krr");
    if release.exists() {
        release
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_krr"))
    }
}

/// (kernel, initramfs) of the Debian 6.1 cloud guest, fetched and built by tests/guest/fetch.sh.
pub fn guest() -> (String, String) {
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
pub fn expected_results() -> Vec<String> {
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

/// A bound on every boot of the 6.1 cloud guest (the workload and power-off take about 1.7e9
/// instructions).
pub const MAX_INSTRUCTIONS: &str = "4000000000";

/// `krr` with `args`, environment `env` and, for `run` and `record` (but `--cpu help`), the
/// instruction bound `limit`, so a hang cannot run forever: (exit status, stdout, stderr).
pub fn krr_run_with(args: &[&str], env: &[(&str, &str)], limit: &str) -> (i32, String, String) {
    let mut c = Command::new(krr());
    c.args(args);
    c.envs(env.iter().copied());
    if matches!(args[0], "run" | "record") && !args.contains(&"help") {
        c.args(["--max-instructions", limit]);
    }
    let out = c.output().expect("running krr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`krr_run_with`] without environment, bounded by [`MAX_INSTRUCTIONS`].
pub fn krr_run(args: &[&str]) -> (i32, String, String) {
    krr_run_with(args, &[], MAX_INSTRUCTIONS)
}

/// [`krr_ok_with`] without environment.
pub fn krr_ok(args: &[&str]) -> (String, String) {
    krr_ok_with(args, &[])
}

/// [`krr_ok_limited`] with [`MAX_INSTRUCTIONS`].
pub fn krr_ok_with(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    krr_ok_limited(args, env, MAX_INSTRUCTIONS)
}

/// [`krr_run_with`], checking that krr exited with 0: (stdout, stderr).
pub fn krr_ok_limited(args: &[&str], env: &[(&str, &str)], limit: &str) -> (String, String) {
    let (code, stdout, stderr) = krr_run_with(args, env, limit);
    assert_eq!(code, 0, "krr {args:?} failed: {stderr}\n{stdout}");
    (stdout, stderr)
}

/// The run ended with the guest's ACPI power-off (`poweroff -f`), not with a halt, a reset or
/// the instruction limit.
pub fn assert_powered_off(log: &str) {
    assert!(
        log.lines()
            .any(|l| l.starts_with("krr: guest powered off: ")),
        "the guest did not power off: {log}"
    );
}

/// A kernel log line (`[    2.095723] clocksource: ...`): the kernel may print these in the
/// middle of the workload's output (under QEMU, whose clocks follow the host's, the clocksource
/// watchdog does when the host is loaded); they are not the workload's results.
pub fn is_kernel_message(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .is_some_and(|(stamp, _)| stamp.trim().parse::<f64>().is_ok())
}

/// The lines between `start` and `end` markers (exclusive), without the kernel's log lines.
pub fn marked_lines(console: &str, start: &str, end: &str) -> Vec<String> {
    let from = console
        .find(start)
        .unwrap_or_else(|| panic!("no {start} marker"));
    let to = console
        .find(end)
        .unwrap_or_else(|| panic!("no {end} marker (that part of the workload did not finish)"));
    console[from..to]
        .lines()
        .skip(1)
        .filter(|l| !is_kernel_message(l))
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// The workload's result lines (between the markers, without the kernel's log lines).
pub fn workload_lines(console: &str) -> Vec<String> {
    marked_lines(console, "KRR-WORKLOAD-START", "KRR-WORKLOAD-END")
}

/// The instruction count of krr's end-of-run line (`krr: <end>: N instructions in ...`), if
/// there is one.
pub fn count(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.starts_with("krr: "))
        .find_map(|l| l.split_once(" instructions in "))
        .and_then(|(head, _)| head.split_whitespace().last()?.parse().ok())
}

/// The first line of `text` starting with `prefix`.
pub fn line_with<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
}
