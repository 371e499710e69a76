//! `krr replay TRACE --gdb PORT` driven by Debian's gdb in batch mode, on the built-in demo
//! guest's trace: a breakpoint stops where `--break` stops, `monitor icount` and `stepi` agree
//! with the replay's count, registers and memory read through the page tables, the monitor
//! commands answer, writes are refused, and continuing to the end still gives the verdict "matched".

use krr::demo_guest::record_demo_guest;
use krr_jit::EngineConfig;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("krr-gdb-{}-{name}", std::process::id()))
}

fn krr(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free local port (bound then released; the stub binds it again right away).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replay `trace` under `gdb -batch` with `commands`: (gdb's output, krr's stderr, krr's
/// exit status).
fn under_gdb(trace: &str, commands: &[String]) -> (String, String, i32) {
    use std::io::BufRead;
    let port = free_port();
    let mut stub = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["replay", "-q", trace, "--gdb", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // krr's stderr, line by line: gdb starts once the stub says it listens.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = stub.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stub_err = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the stub never said it listens");
        stub_err += &line;
        stub_err.push('\n');
        if line.contains("waiting for gdb") {
            break;
        }
    }
    let mut gdb = Command::new("gdb");
    gdb.args(["-batch", "-nx"])
        .arg("-ex")
        .arg(format!("target remote :{port}"));
    for c in commands {
        gdb.arg("-ex").arg(c);
    }
    let out = gdb
        .output()
        .expect("gdb (Debian package gdb; tests/run.sh installs it)");
    let status = stub.wait().unwrap();
    reader.join().unwrap();
    for line in rx.try_iter() {
        stub_err += &line;
        stub_err.push('\n');
    }
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        stub_err,
        status.code().unwrap_or(-1),
    )
}

#[test]
fn gdb_breaks_steps_reads_and_continues_to_the_verdict() {
    let trace = tmp("trace");
    record_demo_guest(EngineConfig::default(), &trace, false).unwrap();
    let t = trace.to_str().unwrap();
    // A HLT of the demo guest's idle loop, and where `--break` stops at it.
    let log = tmp("log");
    let (ok, err) = krr(&[
        "replay",
        "-q",
        t,
        "--log-bound=start=16000,end=17000",
        "-D",
        log.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let hlt = text.lines().find(|l| l.contains("] hlt |")).unwrap();
    let addr =
        u64::from_str_radix(hlt.split(' ').nth(1).unwrap().trim_start_matches("0x"), 16).unwrap();
    let (ok, err) = krr(&["replay", "-q", t, "--break", &format!("{addr:#x}")]);
    assert!(ok, "{err}");
    let want = format!("Verdict: stopped at breakpoint {addr:#x} before instruction ");
    let line = err.lines().find(|l| l.starts_with(&want)).expect(&err);
    let first: u64 = line[want.len()..].parse().unwrap();

    let c = |s: &str| s.to_string();
    let (out, stub_err, code) = under_gdb(
        t,
        &[
            c("monitor icount"),
            format!("hbreak *{addr:#x}"),
            c("continue"),
            c("monitor icount"),
            c("p/x $pc"),
            c("x/1i $pc"),
            c("p/x $cr0"),
            c("stepi"),
            c("monitor icount"),
            c("monitor events"),
            c("monitor phys 0x1000 32"),
            format!("monitor goto {}", first + 10),
            c("monitor goto 5"),
            c("set $rax = 1"),
            c("delete"),
            c("continue"),
        ],
    );
    assert!(
        out.contains("icount 0\n"),
        "stopped before the first instruction: {out}"
    );
    assert!(out.contains(&format!("icount {first}\n")), "{out}");
    assert!(out.contains(&format!("$1 = {addr:#x}")), "{out}");
    assert!(out.contains("hlt"), "{out}");
    assert!(out.contains(&format!("icount {}\n", first + 1)), "{out}");
    assert!(out.contains("> event "), "the coming events: {out}");
    assert!(
        out.contains("0x1000: ") && out.contains("0x1010: "),
        "{out}"
    );
    assert!(out.contains(&format!("icount {} (", first + 10)), "{out}");
    assert!(
        out.contains("goto backwards needs reverse execution"),
        "{out}"
    );
    assert!(out.contains("Could not write register"), "{out}");
    assert!(stub_err.contains("refused"), "{stub_err}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(stub_err.contains("Verdict: matched"), "{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
    for f in [&trace, &log] {
        let _ = std::fs::remove_file(f);
    }
}
