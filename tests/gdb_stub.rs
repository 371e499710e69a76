//! `krr replay TRACE --gdb PORT` driven by Debian's gdb in batch mode, on the built-in demo
//! guest's trace: a breakpoint stops where `--break` stops, `monitor icount` and `stepi` agree
//! with the replay's count, registers and memory read through the page tables, the monitor
//! commands answer, writes are refused, and continuing to the end still gives the verdict "matched".

mod demo_trace;
mod gdb_session;
mod guest_boot;

use demo_trace::{idle_hlts, krr};
use gdb_session::{block, icounts};
use std::process::Command;

fn tmp(name: &str) -> std::path::PathBuf {
    demo_trace::tmp("gdb", name)
}

fn under_gdb(trace: &str, extra: &[&str], commands: &[String]) -> (String, String, i32) {
    let args: Vec<&str> = std::iter::once(trace)
        .chain(extra.iter().copied())
        .collect();
    gdb_session::under_gdb(&guest_boot::krr(), &args, commands)
}

#[test]
fn gdb_breaks_steps_reads_and_continues_to_the_verdict() {
    let trace = tmp("trace");
    demo_trace::record(&trace);
    let t = trace.to_str().unwrap();
    // A HLT of the demo guest's idle loop, and where `--break` stops at it.
    let log = tmp("log");
    let addr = idle_hlts(t, &log)[0].1;
    let (ok, err) = krr(&["replay", "-q", t, "--break", &format!("{addr:#x}")]);
    assert!(ok, "{err}");
    let want = format!("Verdict: stopped at breakpoint {addr:#x} before instruction ");
    let line = err.lines().find(|l| l.starts_with(&want)).expect(&err);
    let first: u64 = line[want.len()..].parse().unwrap();

    let c = |s: &str| s.to_string();
    let (out, stub_err, code) = under_gdb(
        t,
        &[],
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
    assert!(out.contains("Could not write register"), "{out}");
    assert!(stub_err.contains("refused"), "{stub_err}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(stub_err.contains("Verdict: matched"), "{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
    for f in [&trace, &log] {
        let _ = std::fs::remove_file(f);
    }
}

/// Reverse execution: back to the previous breakpoint arrival with the same count and
/// registers, `stepi` undone by `reverse-stepi`, the start of history, `monitor goto`
/// backwards, and the verdict still "matched" after all of it (snapshots every 2000
/// instructions, so that several are restored).
#[test]
fn gdb_goes_backwards_and_the_replay_still_matches() {
    let trace = tmp("rtrace");
    demo_trace::record(&trace);
    let t = trace.to_str().unwrap();
    let log = tmp("rlog");
    let hlts = idle_hlts(t, &log);
    let addr = hlts[0].1;
    assert!(
        hlts.iter().filter(|h| h.1 == addr).count() >= 2,
        "the idle HLT runs twice in the window"
    );
    let c = |s: &str| s.to_string();
    let regs = c("info registers rip rsp rax rflags");
    let (out, stub_err, code) = under_gdb(
        t,
        &["--snapshot-interval", "2000"],
        &[
            format!("break *{addr:#x}"),
            c("continue"),
            c("monitor icount"),
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
            c("p/x $pc"),
            c("monitor goto 10"),
            c("monitor goto 0"),
            c("reverse-stepi"),
            c("monitor history"),
            c("delete"),
            c("continue"),
        ],
    );
    let icounts = icounts(&out);
    assert_eq!(icounts.len(), 7, "{out}");
    let (first, second) = (icounts[0], icounts[1]);
    assert!(second > first, "{out}");
    assert_eq!(
        icounts[2], first,
        "reverse-continue goes back to the first arrival: {out}"
    );
    assert_eq!(icounts[3], first + 1, "{out}");
    assert_eq!(icounts[4], first, "reverse-stepi undoes stepi: {out}");
    assert_eq!(icounts[5..], [10, 0], "{out}");
    // The registers at the first arrival, forwards and after coming back, are the same.
    assert_eq!(
        block(&out, "==first-end=="),
        block(&out, "==back-end=="),
        "{out}"
    );
    assert!(out.contains(&format!("$1 = {addr:#x}")), "{out}");
    assert!(out.contains("No more reverse-execution history"), "{out}");
    assert!(out.contains("history from instruction 0:"), "{out}");
    assert!(out.contains("exited normally"), "{out}");
    assert!(stub_err.contains("Verdict: matched"), "{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
    for f in [&trace, &log] {
        let _ = std::fs::remove_file(f);
    }
}

/// The Debian guest (booted `nokaslr`): kernel function addresses from its own
/// /proc/kallsyms, printed by a script the initramfs runs before /init (`rdinit=`).
/// `--break` by symbol and gdb's breakpoint agree; gdb goes from the second arrival at
/// `do_sys_openat2` back to the first with the same registers, steps back and forth, watches
/// `jiffies` (the timer interrupt's write, forwards and backwards), and the replay still
/// matches at the end.
#[test]
fn gdb_on_the_debian_guest_goes_back_to_an_earlier_system_call() {
    let (kernel, initrd) = guest_boot::guest();
    let dir = tmp("debian");
    std::fs::create_dir_all(dir.join("root")).unwrap();
    let script = "#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox grep -E ' (do_sys_openat2|nmi_panic|jiffies)$' /proc/kallsyms | /bin/busybox sed 's/^/KALLSYMS /'\n/bin/busybox umount /proc\nexec /init\n";
    std::fs::write(dir.join("root/kallsyms.sh"), script).unwrap();
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("chmod +x kallsyms.sh && echo kallsyms.sh | cpio -o -H newc --quiet")
        .current_dir(dir.join("root"))
        .output()
        .expect("cpio");
    assert!(cpio.status.success());
    let mut archive = std::fs::read(&initrd).unwrap();
    archive.extend_from_slice(&cpio.stdout);
    let initrd2 = dir.join("initrd.cpio");
    std::fs::write(&initrd2, archive).unwrap();
    let trace = dir.join("boot.trace");
    let (console, log) = guest_boot::krr_ok(&[
        "record",
        "--kernel",
        &kernel,
        "--initrd",
        initrd2.to_str().unwrap(),
        "--append",
        "console=ttyS0 nokaslr panic=-1 rdinit=/kallsyms.sh",
        "-o",
        trace.to_str().unwrap(),
    ]);
    guest_boot::assert_powered_off(&log);
    let map: String = console
        .lines()
        .filter_map(|l| l.strip_prefix("KALLSYMS "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(map.lines().count(), 3, "{console}");
    let jiffies = map
        .lines()
        .find(|l| l.ends_with(" jiffies"))
        .map(|l| u64::from_str_radix(&l[..16], 16).unwrap())
        .unwrap();
    let map_file = dir.join("map");
    std::fs::write(&map_file, &map).unwrap();
    let addr = map
        .lines()
        .find(|l| l.ends_with(" do_sys_openat2"))
        .map(|l| u64::from_str_radix(&l[..16], 16).unwrap())
        .unwrap();
    let t = trace.to_str().unwrap();
    let m = map_file.to_str().unwrap();
    let (ok, err) = demo_trace::krr_at(
        &guest_boot::krr(),
        &[
            "replay",
            "-q",
            t,
            "--system-map",
            m,
            "--break",
            "do_sys_openat2",
        ],
    );
    assert!(ok, "{err}");
    let want =
        format!("Verdict: stopped at breakpoint {addr:#x} (do_sys_openat2) before instruction ");
    let line = err.lines().find(|l| l.starts_with(&want)).expect(&err);
    let first: u64 = line[want.len()..].parse().unwrap();

    let c = |s: &str| s.to_string();
    let regs = c("info registers rip rsp rdi rsi cr3 gs_base");
    let (out, stub_err, code) = under_gdb(
        t,
        &[],
        &[
            format!("break *{addr:#x}"),
            c("continue"),
            c("monitor icount"),
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
            // The timer interrupt's write of jiffies, forwards twice, then backwards.
            c("delete"),
            format!("watch *(long *){jiffies:#x}"),
            c("continue"),
            c("monitor icount"),
            c("continue"),
            c("monitor icount"),
            c("reverse-continue"),
            c("monitor icount"),
            c("delete"),
            c("continue"),
        ],
    );
    let icounts = icounts(&out);
    assert_eq!(icounts.len(), 8, "{out}");
    // Forwards the watchpoint stops after the writing instruction; backwards, before it.
    let (w1, w2, back) = (icounts[5], icounts[6], icounts[7]);
    assert!(first < w1 && w1 < w2, "{out}");
    assert_eq!(back, w2 - 1, "{out}");
    let values: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("New value = "))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(values.len(), 3, "{out}");
    assert_eq!(
        values,
        [values[0], values[0] + 1, values[0]],
        "jiffies counts up by one per tick and back: {out}"
    );
    assert_eq!(
        icounts[0], first,
        "gdb's breakpoint and --break agree: {out}"
    );
    assert!(icounts[1] > first, "{out}");
    assert_eq!(icounts[2..5], [first, first + 1, first], "{out}");
    assert_eq!(
        block(&out, "==first-end=="),
        block(&out, "==back-end=="),
        "{out}"
    );
    assert!(out.contains("exited normally"), "{out}");
    assert!(stub_err.contains("Verdict: matched"), "{stub_err}");
    assert_eq!(code, 0, "{stub_err}");
    let _ = std::fs::remove_dir_all(&dir);
}
