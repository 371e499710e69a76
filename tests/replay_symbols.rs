//! `krr replay --system-map FILE --break SYMBOL` on the built-in demo guest's trace: the
//! replay stops before the first instruction at the symbol, in both block modes, at the
//! instruction `--stop-at` and the `--log-bound` log agree on; reports and the log name the
//! function; a breakpoint never reached costs the verdict nothing.

mod demo_trace;

use demo_trace::{idle_hlts, krr};

fn tmp(name: &str) -> std::path::PathBuf {
    demo_trace::tmp("symbols", name)
}

#[test]
fn break_by_symbol_stops_at_the_first_arrival_in_both_modes() {
    let trace = tmp("trace");
    demo_trace::record(&trace);
    let t = trace.to_str().unwrap();
    // The demo guest idles in `sti; hlt` early on: a HLT and its address.
    let log = tmp("log");
    let (hlt_count, addr) = idle_hlts(t, &log)[0];
    // A System.map naming that address (and one more symbol below it).
    let map = tmp("map");
    std::fs::write(
        &map,
        format!(
            "{:016x} T before_idle\n{addr:016x} T idle_hlt\n{:016x} D some_data\n",
            addr - 0x40,
            addr + 0x1000
        ),
    )
    .unwrap();
    let m = map.to_str().unwrap();
    let mut stops = Vec::new();
    for mode in [None, Some("--singlestep")] {
        let mut args = vec!["replay", "-q", t, "--system-map", m, "--break", "idle_hlt"];
        args.extend(mode);
        let (ok, err) = krr(&args);
        assert!(ok, "{err}");
        let verdict = err
            .lines()
            .find(|l| l.starts_with("Verdict: "))
            .expect(&err)
            .to_string();
        let want =
            format!("Verdict: stopped at breakpoint {addr:#x} (idle_hlt) before instruction ");
        assert!(verdict.starts_with(&want), "{verdict}");
        let count: u64 = verdict[want.len()..].parse().unwrap();
        assert!(
            count <= hlt_count,
            "the first arrival is not after the logged one"
        );
        assert!(
            err.contains(&format!("RIP {addr:#x} (idle_hlt): [f4] hlt")),
            "{err}"
        );
        stops.push((count, err));
    }
    assert_eq!(
        stops[0].0, stops[1].0,
        "both block modes stop at one instruction"
    );
    let count = stops[0].0;
    // --stop-at there shows the same registers; the log names the function.
    let (ok, err) = krr(&[
        "replay",
        "-q",
        t,
        "--stop-at",
        &count.to_string(),
        "--system-map",
        m,
    ]);
    assert!(ok, "{err}");
    let regs = |s: &str| s.lines().find(|l| l.contains(" rax=")).map(str::to_string);
    assert_eq!(regs(&err), regs(&stops[0].1));
    let (ok, err) = krr(&[
        "replay",
        "-q",
        t,
        &format!("--log-bound=start={count},end={}", count + 1),
        "--system-map",
        m,
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("{count} {addr:#018x} <idle_hlt> [f4] hlt |")),
        "{err}"
    );
    // An address the guest never executes: the replay runs to its verdict.
    let (ok, err) = krr(&["replay", "-q", t, "--break", "0x1234"]);
    assert!(ok && err.contains("Verdict: matched"), "{err}");
    // Bad names are refused before the replay.
    let (ok, err) = krr(&["replay", "-q", t, "--system-map", m, "--break", "some_data"]);
    assert!(
        !ok && err.contains("`some_data`: no such text symbol"),
        "{err}"
    );
    let (ok, err) = krr(&["replay", "-q", t, "--break", "idle_hlt"]);
    assert!(!ok && err.contains("needs --system-map"), "{err}");
    for f in [&trace, &log, &map] {
        let _ = std::fs::remove_file(f);
    }
}
