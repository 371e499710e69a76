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
            // Every checkpoint also checks the dirty-page RAM digest against a full one.
            verify_ram_digest: true,
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
        // The guest touched some of its RAM (its code and data, at least a page), not more
        // than there is; the summary says so.
        assert!(
            out.ram_resident >= 4096 && out.ram_resident <= out.ram_size,
            "{name}: {} of {}",
            out.ram_resident,
            out.ram_size
        );
        assert!(out.summary().contains(&format!(
            "Guest RAM: {} MiB resident of {} MiB",
            out.ram_resident >> 20,
            out.ram_size >> 20
        )));
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

/// An NMI event is delivered at its instruction through IDT vector 2 and leaves NMIs blocked
/// (the demo guest sends none, so the event is added to a recording after a checkpoint); an
/// NMI whose RCX differs from the CPU's there is a divergence at that event.
#[test]
fn nmi_events_are_delivered_at_their_instruction() {
    let base = tmp("nmi-base");
    record_demo_guest(EngineConfig::default(), &base, false).unwrap();
    // A checkpoint after the first timer interrupt: the guest's IDT is loaded by then.
    let (_, irq) = find_event(&base, |e| matches!(e.data, EventData::Interrupt { .. }));
    let (index, at) = find_event(&base, |e| {
        matches!(e.data, EventData::Checkpoint { .. }) && e.icount > irq.icount
    });
    let (r, _) = replay_until(&base, at.icount);
    let rcx = r.core.cpu().gpr[krr_runtime::gpr::RCX];
    drop(r);
    let with_nmi = |dst: &Path, rcx: u64| {
        let nmi = Event {
            icount: at.icount,
            rip: at.rip,
            data: EventData::Nmi { rcx },
        };
        rewrite_events(&base, dst, |i, e| {
            if i == index {
                vec![e, nmi.clone()]
            } else {
                vec![e]
            }
        });
    };
    let good = tmp("nmi");
    with_nmi(&good, rcx);
    let (r, out) = replay_until(&good, at.icount - 1);
    assert!(matches!(out.verdict, Verdict::Stopped), "{}", out.summary());
    assert_eq!(
        r.core.cpu().nmi_blocked,
        0,
        "delivered before its instruction"
    );
    let (r, out) = replay_until(&good, at.icount + 1);
    assert!(matches!(out.verdict, Verdict::Stopped), "{}", out.summary());
    assert_eq!(out.counts.get(krr::trace::EventKind::Nmi), 1);
    assert_eq!(r.core.cpu().nmi_blocked, 1, "the NMI handler runs");
    let bad = tmp("nmi-bad");
    with_nmi(&bad, rcx ^ 1);
    let out = replay(&bad, EngineConfig::default());
    match &out.verdict {
        Verdict::Diverged(d) => {
            assert_eq!(d.event_index, index + 1, "{}", out.summary());
            assert!(d.what.contains("RCX"), "{}", out.summary());
        }
        _ => panic!("an NMI at the wrong RCX was accepted: {}", out.summary()),
    }
    for f in [&base, &good, &bad] {
        std::fs::remove_file(f).unwrap();
    }
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

/// The index of the first event after event `after` at or past instruction `icount` (an event
/// inserted there keeps the trace in order).
fn first_event_at_or_after(path: &Path, after: u64, icount: u64) -> u64 {
    let mut s = EventStream::new(TraceReader::open(path).unwrap());
    let mut i = 0;
    while let Some(e) = s.next_event().unwrap() {
        if i > after && e.icount >= icount {
            return i;
        }
        i += 1;
    }
    panic!("no event after event {after} in {}", path.display());
}

/// Where an altered trace must diverge: exactly at the altered event, or (for an input value
/// replay cannot check when it is taken) after it and no later than the first checkpoint after
/// the value reached guest-visible state.
enum Expect {
    At(u64),
    By { after: u64, checkpoint: u64 },
}

fn replay_altered(bad: &Path, name: &str, expect: &Expect, needle: &str) {
    for (mode, engine) in [
        ("default", EngineConfig::default()),
        ("single-step", singlestep()),
    ] {
        let out = replay(bad, engine);
        let summary = out.summary();
        let d = match &out.verdict {
            Verdict::Diverged(d) => d,
            _ => panic!("{name} ({mode}): an altered trace replayed as {summary}"),
        };
        assert!(summary.contains("Verdict: diverged at event"), "{summary}");
        assert!(summary.contains(needle), "{name} ({mode}): {summary}");
        match *expect {
            Expect::At(i) => assert_eq!(d.event_index, i, "{name} ({mode}): {summary}"),
            Expect::By { after, checkpoint } => assert!(
                d.event_index > after && d.event_index <= checkpoint,
                "{name} ({mode}): expected a divergence in events {}..={checkpoint}: {summary}",
                after + 1
            ),
        }
    }
}

/// A tampering case: name, how to alter the event, where replay must diverge, text the report
/// holds.
type Case = (
    &'static str,
    Box<dyn Fn(&mut EventData)>,
    Expect,
    &'static str,
);

/// For each event kind the demo trace holds and each hash a trace stores, one altered value
/// (the trace rewritten through `TraceWriter`, so its section checksums are recomputed) is
/// reported as a divergence where it must be.
#[test]
fn every_event_kind_and_every_stored_hash_is_checked() {
    use krr::trace::EventKind;
    // KRR_TAMPER_TRACE=path alters a copy of another trace instead (e.g. a Debian boot's).
    let base = tmp("tamper-base");
    match std::env::var_os("KRR_TAMPER_TRACE") {
        Some(p) => drop(std::fs::copy(&p, &base).unwrap()),
        None => drop(record_demo_guest(EngineConfig::default(), &base, false).unwrap()),
    }
    let reference = replay(&base, EngineConfig::default());
    assert!(
        matches!(reference.verdict, Verdict::Matched),
        "{}",
        reference.summary()
    );
    let counts = TraceReader::open(&base).unwrap().end.counts;
    let bad = tmp("tampered");
    let mut kinds_done = Vec::new();
    for kind in EventKind::ALL {
        if counts.get(kind) == 0 {
            continue;
        }
        let (index, e) = find_event(&base, |e| e.kind() == kind);
        // The input's value is in the guest's registers once its instruction retires (for an
        // interrupt, once it is delivered): the reference replay stopped right after shows the
        // point from which the first checkpoint must see a change.
        let visible_at = if kind.is_async() {
            e.icount
        } else {
            e.icount + 1
        };
        let (r, stopped) = replay_until(&base, visible_at);
        assert!(
            matches!(stopped.verdict, Verdict::Stopped),
            "{}",
            stopped.summary()
        );
        let rax = r.core.cpu().gpr[krr_runtime::gpr::RAX];
        // A checkpoint of the unaltered state right where the value became visible, inserted
        // before the first later event at or past that point: an altered value must be caught
        // there at the latest (the trace's own next checkpoint may come after the guest has
        // overwritten the value, as a Debian boot does with most port reads).
        let mut r = r;
        let probe = Event {
            icount: visible_at,
            rip: r.core.cpu().rip,
            data: EventData::Checkpoint {
                regs_hash: krr::trace::state::regs_hash(r.core.cpu()),
                ram_hash: r.core.ram_hash(),
            },
        };
        let probe_at = first_event_at_or_after(&base, index, visible_at);
        // The probe itself is right: with nothing altered, the trace still matches.
        rewrite_events(&base, &bad, |i, e| {
            if i == probe_at {
                vec![probe.clone(), e]
            } else {
                vec![e]
            }
        });
        for engine in [EngineConfig::default(), singlestep()] {
            let out = replay(&bad, engine);
            assert!(
                matches!(out.verdict, Verdict::Matched),
                "{} with a probe checkpoint at event {probe_at}: {}",
                kind.name(),
                out.summary()
            );
        }
        let by = Expect::By {
            after: index,
            checkpoint: probe_at,
        };
        // (name, how to alter the event, where it must diverge, text the report holds)
        let mut cases: Vec<Case> = vec![];
        eprintln!("altering event {index} ({})", kind.name());
        match e.data {
            EventData::Nmi { .. } => cases.push((
                "NMI RCX",
                Box::new(|d| {
                    if let EventData::Nmi { rcx } = d {
                        *rcx ^= 1
                    }
                }),
                Expect::At(index),
                "RCX",
            )),
            EventData::Interrupt { .. } => {
                cases.push((
                    "interrupt RCX",
                    Box::new(|d| {
                        if let EventData::Interrupt { rcx, .. } = d {
                            *rcx ^= 1
                        }
                    }),
                    Expect::At(index),
                    "RCX",
                ));
                // Another vector: an external one, an exception's, NMI's, one the demo's IDT
                // has no gate for. Replay must end (not run the guest off into a loop), and
                // report the divergence no later than the next checkpoint.
                for new_vector in [0x21u8, 0x31, 0x80, 0xff, 0, 2, 8, 14] {
                    cases.push((
                        "interrupt vector",
                        Box::new(move |d| {
                            if let EventData::Interrupt { vector, .. } = d {
                                *vector = new_vector
                            }
                        }),
                        Expect::By {
                            after: index,
                            checkpoint: probe_at,
                        },
                        "diverged",
                    ));
                }
            }
            EventData::PortIn { value, size, .. } => {
                let mask = if size >= 4 {
                    u32::MAX as u64
                } else {
                    (1u64 << (size * 8)) - 1
                };
                assert_eq!(rax & mask, value as u64, "the port's value is in RAX");
                cases.push((
                    "port input value",
                    Box::new(|d| {
                        if let EventData::PortIn { value, .. } = d {
                            *value ^= 0x21
                        }
                    }),
                    by,
                    "diverged",
                ));
                cases.push((
                    "port input port",
                    Box::new(|d| {
                        if let EventData::PortIn { port, .. } = d {
                            *port ^= 1
                        }
                    }),
                    Expect::At(index),
                    "diverged",
                ));
            }
            EventData::PortOut { .. } => cases.push((
                "port output value",
                Box::new(|d| {
                    if let EventData::PortOut { value, .. } = d {
                        *value ^= 1
                    }
                }),
                Expect::At(index),
                "diverged",
            )),
            EventData::MmioRead { .. } | EventData::MmioWrite { .. } => cases.push((
                "MMIO address",
                Box::new(|d| {
                    if let EventData::MmioRead { phys, .. } | EventData::MmioWrite { phys, .. } = d
                    {
                        *phys ^= 8
                    }
                }),
                Expect::At(index),
                "diverged",
            )),
            EventData::Rdtsc { value } => {
                assert_eq!(rax, value & 0xffff_ffff, "the TSC's low half is in RAX");
                cases.push((
                    "RDTSC value",
                    Box::new(|d| {
                        if let EventData::Rdtsc { value } = d {
                            *value ^= 1
                        }
                    }),
                    by,
                    "diverged",
                ));
            }
            EventData::Rdrand { .. } => cases.push((
                "RDRAND value",
                Box::new(|d| {
                    if let EventData::Rdrand { value: Some(v), .. } = d {
                        *v ^= 1
                    }
                }),
                by,
                "diverged",
            )),
            EventData::Checkpoint { .. } => {
                cases.push((
                    "checkpoint CPU state hash",
                    Box::new(|d| {
                        if let EventData::Checkpoint { regs_hash, .. } = d {
                            *regs_hash ^= 1
                        }
                    }),
                    Expect::At(index),
                    "CPU state hash",
                ));
                cases.push((
                    "checkpoint RAM hash",
                    Box::new(|d| {
                        if let EventData::Checkpoint { ram_hash, .. } = d {
                            *ram_hash ^= 1
                        }
                    }),
                    Expect::At(index),
                    "RAM hash",
                ));
            }
            EventData::MsrRead { .. } => {
                cases.push((
                    "MSR read value",
                    Box::new(|d| {
                        if let EventData::MsrRead { value, .. } = d {
                            *value = Some(value.unwrap_or(0) ^ 1)
                        }
                    }),
                    by,
                    "diverged",
                ));
                cases.push((
                    "MSR read index",
                    Box::new(|d| {
                        if let EventData::MsrRead { index, .. } = d {
                            *index ^= 1
                        }
                    }),
                    Expect::At(index),
                    "diverged",
                ));
            }
            EventData::MsrWrite { .. } => cases.push((
                "MSR write value",
                Box::new(|d| {
                    if let EventData::MsrWrite { value, .. } = d {
                        *value ^= 1
                    }
                }),
                Expect::At(index),
                "diverged",
            )),
            EventData::DmaWrite { .. } => cases.push((
                "DMA data",
                Box::new(|d| {
                    if let EventData::DmaWrite { data, .. } = d {
                        data[0] ^= 1
                    }
                }),
                by,
                "diverged",
            )),
        }
        for (name, alter, expect, needle) in cases {
            rewrite_events(&base, &bad, |i, mut e| {
                if i == index {
                    alter(&mut e.data);
                }
                if i == probe_at {
                    vec![probe.clone(), e]
                } else {
                    vec![e]
                }
            });
            replay_altered(&bad, name, &expect, needle);
        }
        kinds_done.push(kind);
    }
    for k in [
        EventKind::Interrupt,
        EventKind::PortIn,
        EventKind::PortOut,
        EventKind::Rdtsc,
        EventKind::Checkpoint,
    ] {
        assert!(
            kinds_done.contains(&k),
            "the demo trace has no {}",
            k.name()
        );
    }
    // The end record's two hashes.
    for (name, alter) in [
        ("final CPU state hash", (1u64, 0u64)),
        ("final RAM hash", (0, 1)),
    ] {
        let mut reader = TraceReader::open(&base).unwrap();
        let info = reader.info.clone();
        let mut end = reader.end.clone();
        end.regs_hash ^= alter.0;
        end.ram_hash ^= alter.1;
        let snap = reader.snapshot().unwrap();
        let mut w = TraceWriter::create(&bad, &info, &snap.cpu_image, &snap.ram_image, 0).unwrap();
        let mut stream = EventStream::new(reader);
        while let Some(e) = stream.next_event().unwrap() {
            w.push(&e).unwrap();
        }
        w.finish(end).unwrap();
        for engine in [EngineConfig::default(), singlestep()] {
            let out = replay(&bad, engine);
            assert!(
                matches!(out.verdict, Verdict::Diverged(_)),
                "{name}: {}",
                out.summary()
            );
            assert!(
                out.summary().contains("final state"),
                "{name}: {}",
                out.summary()
            );
            assert_eq!(out.icount, reference.icount, "{name}: replayed to the end");
        }
    }
    std::fs::remove_file(&base).unwrap();
    std::fs::remove_file(&bad).unwrap();
}

/// The demo trace replayed 100 times in each of the default and single-step modes ends in the
/// same state every time.
#[test]
fn a_hundred_replays_end_in_the_same_state() {
    let path = tmp("hundred");
    let (_, rec) = record_demo_guest(EngineConfig::default(), &path, false).unwrap();
    let want = (rec.end_info.regs_hash, rec.end_info.ram_hash);
    for (mode, engine) in [
        ("default", EngineConfig::default()),
        ("single-step", singlestep()),
    ] {
        for run in 0..100 {
            let out = replay(&path, engine);
            assert!(
                matches!(out.verdict, Verdict::Matched),
                "{mode} run {run}: {}",
                out.summary()
            );
            assert_eq!((out.regs_hash, out.ram_hash), want, "{mode} run {run}");
        }
    }
    std::fs::remove_file(&path).unwrap();
}
