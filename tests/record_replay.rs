//! Record and replay of the built-in system guest (krr::demo_guest: paging, CPL3, timer
//! interrupts, port IO, RDTSC, SYSCALL): determinism of recording, exact replay in every mode,
//! divergence reports for altered traces, rejection of damaged traces, and the replay
//! options (`--log-bound`, `--stop-at`) through the `krr` binary.

use krr::demo_guest::record_demo_guest;
use krr::replay::{ReplayOptions, Replayer, Verdict};
use krr::trace::{Event, EventData, EventStream, TraceReader, TraceWriter};
use krr_jit::{EngineConfig, TierPolicy};
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("krr-rr-{}-{name}.trace", std::process::id()))
}

fn singlestep() -> EngineConfig {
    EngineConfig {
        max_block_insns: 1,
        ..EngineConfig::default()
    }
}

fn interpreter() -> EngineConfig {
    EngineConfig {
        policy: TierPolicy::Interpret,
        ..EngineConfig::default()
    }
}

fn replay(path: &Path, engine: EngineConfig) -> krr::replay::ReplayOutcome {
    let mut r = Replayer::open(
        path,
        ReplayOptions {
            engine,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    r.run(&indicatif::ProgressBar::hidden())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Copy a trace, changing its events with `edit` (event index, event) -> new event.
fn rewrite(src: &Path, dst: &Path, edit: impl Fn(u64, Event) -> Event) {
    rewrite_events(src, dst, |i, e| vec![edit(i, e)]);
}

/// Copy a trace, replacing each event with what `edit` (event index, event) returns.
fn rewrite_events(src: &Path, dst: &Path, edit: impl Fn(u64, Event) -> Vec<Event>) {
    let mut reader = TraceReader::open(src).unwrap();
    let info = reader.info.clone();
    let end = reader.end.clone();
    let snap = reader.snapshot().unwrap();
    let mut w = TraceWriter::create(dst, &info, &snap.cpu_image, &snap.ram_image, 0).unwrap();
    let mut stream = EventStream::new(reader);
    let mut i = 0;
    while let Some(e) = stream.next_event().unwrap() {
        for e in edit(i, e) {
            w.push(&e).unwrap();
        }
        i += 1;
    }
    w.finish(end).unwrap();
}

/// The index of the first event of a kind matching `pick` at or after event 100.
fn find_event(path: &Path, pick: impl Fn(&Event) -> bool) -> (u64, Event) {
    let mut s = EventStream::new(TraceReader::open(path).unwrap());
    let mut i = 0;
    while let Some(e) = s.next_event().unwrap() {
        if i >= 100 && pick(&e) {
            return (i, e);
        }
        i += 1;
    }
    panic!("no such event in {}", path.display());
}

#[test]
fn recording_is_deterministic_and_replays_exactly_in_every_mode() {
    let a = tmp("a");
    let b = tmp("b");
    let (outcome, rec) = record_demo_guest(EngineConfig::default(), &a, false).unwrap();
    // Recording in single-step mode, or with every block compiled at once, must give the very
    // same trace: the trace does not depend on how the engine forms or compiles blocks.
    record_demo_guest(singlestep(), &b, false).unwrap();
    let c = tmp("c");
    record_demo_guest(
        EngineConfig {
            policy: TierPolicy::CompileAll,
            ..EngineConfig::default()
        },
        &c,
        false,
    )
    .unwrap();
    assert!(
        std::fs::read(&c).unwrap() == std::fs::read(&a).unwrap(),
        "recording with every block compiled gave another trace"
    );
    std::fs::remove_file(&c).unwrap();
    let (ta, tb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(ta == tb, "two recordings of the same guest differ");
    let counts = &rec.end_info.counts;
    assert!(
        counts.get(krr::trace::EventKind::Interrupt) > 10,
        "{counts:?}"
    );
    assert!(counts.get(krr::trace::EventKind::Rdtsc) > 0, "{counts:?}");
    assert!(
        counts.get(krr::trace::EventKind::Checkpoint) > 100,
        "{counts:?}"
    );

    let mut hashes = Vec::new();
    for (name, engine) in [
        ("default", EngineConfig::default()),
        ("default again", EngineConfig::default()),
        ("single-step", singlestep()),
        ("interpreter", interpreter()),
        (
            "compiled early, on the dispatcher's thread",
            EngineConfig {
                hot_threshold: 1,
                background_compile: false,
                ..EngineConfig::default()
            },
        ),
        (
            "compiled in the background",
            EngineConfig {
                hot_threshold: 2,
                background_compile: true,
                ..EngineConfig::default()
            },
        ),
    ] {
        let out = replay(&a, engine);
        assert!(
            matches!(out.verdict, Verdict::Matched),
            "{name}: {}",
            out.summary()
        );
        assert_eq!(out.icount, outcome.icount, "{name}");
        assert_eq!(
            out.counts, rec.end_info.counts,
            "{name}: every event consumed"
        );
        hashes.push((out.regs_hash, out.ram_hash));
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    assert_eq!(hashes[0], (rec.end_info.regs_hash, rec.end_info.ram_hash));
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
}

/// Alter one event and check that replay reports the divergence at exactly that event.
fn assert_diverges_at(base: &Path, name: &str, index: u64, edit: impl Fn(Event) -> Event) {
    let bad = tmp(name);
    rewrite(base, &bad, |i, e| if i == index { edit(e) } else { e });
    for engine in [EngineConfig::default(), singlestep()] {
        let out = replay(&bad, engine);
        match &out.verdict {
            Verdict::Diverged(d) => {
                // A checkpoint or the next event may reveal an altered input value later;
                // an altered position is caught at the event itself.
                assert!(d.event_index >= index, "{name}: {}", out.summary());
                if name != "value" {
                    assert_eq!(d.event_index, index, "{name}: {}", out.summary());
                }
                assert!(
                    out.summary().contains("instruction there: ["),
                    "{}",
                    out.summary()
                );
            }
            _ => panic!("{name}: an altered trace replayed as {}", out.summary()),
        }
    }
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn altered_events_are_reported_as_divergences() {
    let base = tmp("base");
    record_demo_guest(EngineConfig::default(), &base, false).unwrap();
    let (port_in, _) = find_event(&base, |e| matches!(e.data, EventData::PortIn { .. }));
    let (irq, _) = find_event(&base, |e| matches!(e.data, EventData::Interrupt { .. }));
    // A different value read from a port: the guest takes another path, which the next
    // events or checkpoints expose.
    assert_diverges_at(&base, "value", port_in, |mut e| {
        if let EventData::PortIn { value, .. } = &mut e.data {
            *value ^= 0x21;
        }
        e
    });
    // The same input claimed at another RIP or instruction count.
    assert_diverges_at(&base, "rip", port_in, |mut e| {
        e.rip += 1;
        e
    });
    assert_diverges_at(&base, "count", port_in, |mut e| {
        e.icount += 1;
        e
    });
    // An interrupt moved one instruction later: its RIP no longer matches.
    assert_diverges_at(&base, "interrupt-rip", irq, |mut e| {
        e.rip ^= 0x10;
        e
    });
    std::fs::remove_file(&base).unwrap();
}

fn krr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krr"))
}

#[test]
fn damaged_traces_are_rejected_before_replay_with_a_clear_error() {
    let good = tmp("good");
    record_demo_guest(EngineConfig::default(), &good, false).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = tmp("damaged");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "truncated",
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated at offset",
        ),
        (
            "corrupt",
            {
                let mut b = bytes.clone();
                let at = b.len() / 2;
                b[at] ^= 0xff;
                b
            },
            "fails its checksum",
        ),
        ("not a trace", b"hello, world\n".to_vec(), "not a krr trace"),
    ];
    for (what, data, expect) in cases {
        std::fs::write(&bad, &data).unwrap();
        for cmd in ["info", "replay"] {
            let out = krr().arg(cmd).arg(&bad).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {what}: {stderr}");
            assert!(stderr.contains(expect), "{cmd} {what}: {stderr}");
            assert_eq!(
                stderr.lines().count(),
                1,
                "{cmd} {what}: one line: {stderr}"
            );
            assert!(out.stdout.is_empty(), "{cmd} {what}: nothing replayed");
        }
    }
    let out = krr().arg("info").arg(&good).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("end: guest powered off at instruction"),
        "{stdout}"
    );
    assert!(stdout.contains("Interrupt: "), "{stdout}");
    std::fs::remove_file(&good).unwrap();
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn log_bound_and_stop_at_are_exact() {
    let path = tmp("log");
    record_demo_guest(EngineConfig::default(), &path, false).unwrap();
    let log_a = tmp("log-a").with_extension("log");
    let log_b = tmp("log-b").with_extension("log");
    // The window straddles timer interrupts (the guest idles in `sti; hlt` early on).
    let (start, end) = (16_000u64, 17_000u64);
    for (log, mode) in [(&log_a, None), (&log_b, Some("--singlestep"))] {
        let mut c = krr();
        c.args(["replay", "-q"])
            .arg(&path)
            .arg(format!("--log-bound=start={start},end={end}"))
            .arg("-D")
            .arg(log);
        if let Some(m) = mode {
            c.arg(m);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = std::fs::read_to_string(&log_a).unwrap();
    let b = std::fs::read_to_string(&log_b).unwrap();
    assert_eq!(a, b, "the log does not depend on the block size");
    let lines: Vec<&str> = a.lines().collect();
    assert_eq!(lines.len() as u64, end - start);
    for (k, l) in lines.iter().enumerate() {
        let count: u64 = l.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(count, start + k as u64);
        assert!(l.contains(" rax=0x") && l.contains(" rflags=0x"), "{l}");
    }
    assert!(a.contains("] hlt |"), "the window holds the idle loop");
    // --stop-at: the state before instruction N is the state the log shows for N.
    let n = start + 500;
    let out = krr()
        .args(["replay", "-q"])
        .arg(&path)
        .arg(format!("--stop-at={n}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Verdict: stopped before instruction {n}")),
        "{stderr}"
    );
    let logged = lines[500];
    let regs = &logged[logged.find("| ").unwrap() + 2..];
    assert!(stderr.contains(regs), "log: {logged}\nstop: {stderr}");
    for f in [&path, &log_a, &log_b] {
        std::fs::remove_file(f).unwrap();
    }
}

/// Replay `path` up to `stop_at` and return the replayer (its RAM) and the verdict.
fn replay_until(path: &Path, stop_at: u64) -> (Replayer, krr::replay::ReplayOutcome) {
    let mut r = Replayer::open(
        path,
        ReplayOptions {
            stop_at: Some(stop_at),
            ..Default::default()
        },
    )
    .unwrap();
    let out = r.run(&indicatif::ProgressBar::hidden()).unwrap();
    (r, out)
}

#[test]
fn dma_writes_land_in_guest_ram_at_their_instruction() {
    // The machine has no DMA device yet, so the event is added to a recording: right after a
    // checkpoint, whose position (instruction count, RIP) replay stops at anyway.
    let base = tmp("dma-base");
    record_demo_guest(EngineConfig::default(), &base, false).unwrap();
    let (index, at) = find_event(&base, |e| matches!(e.data, EventData::Checkpoint { .. }));
    // 15 MiB: RAM the demo guest never touches.
    let phys = 0xf0_0000u64;
    let data: Box<[u8]> = b"written by a device".to_vec().into();
    let with_dma = |dst: &Path, phys: u64| {
        let dma = Event {
            icount: at.icount,
            rip: at.rip,
            data: EventData::DmaWrite {
                phys,
                data: data.clone(),
            },
        };
        rewrite_events(&base, dst, |i, e| {
            if i == index {
                vec![e, dma.clone()]
            } else {
                vec![e]
            }
        });
    };
    let good = tmp("dma");
    with_dma(&good, phys);
    let read = |r: &Replayer| {
        let mut buf = vec![0u8; data.len()];
        r.core.mem().read(phys, &mut buf).unwrap();
        buf
    };
    let (r, out) = replay_until(&good, at.icount - 1);
    assert!(matches!(out.verdict, Verdict::Stopped), "{}", out.summary());
    assert!(
        read(&r).iter().all(|&b| b == 0),
        "written before its instruction"
    );
    let (r, out) = replay_until(&good, at.icount + 1000);
    assert!(matches!(out.verdict, Verdict::Stopped), "{}", out.summary());
    assert_eq!(read(&r), &data[..]);
    assert_eq!(out.counts.get(krr::trace::EventKind::DmaWrite), 1);

    // A DMA write beyond guest RAM is bad input: a clear error when the trace is opened,
    // before anything runs.
    let bad = tmp("dma-bad");
    with_dma(&bad, krr::demo_guest::MEM_BYTES - 4);
    let err = match Replayer::open(&bad, ReplayOptions::default()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a DMA write outside guest RAM was accepted"),
    };
    assert!(err.contains("outside guest RAM"), "{err}");
    for f in [&base, &good, &bad] {
        std::fs::remove_file(f).unwrap();
    }
}
