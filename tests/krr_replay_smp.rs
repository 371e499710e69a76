//! A two-vCPU synthetic KRR recording (tests/krr_synth/smp.rs; krr-spec 5): what it holds
//! (both vCPUs' events, exec-lock spin counts, lock waits with INST_SYNC, RELEASE events,
//! INTERRUPT `from` = 3, hand-overs both ways), krr's replay of it in blocks and one
//! instruction at a time to both vCPUs' recorded state, and a divergence named at the event
//! when an INST_SYNC's count, a RELEASE's vCPU or a `from` = 3 interrupt's RIP is altered.

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::events::{Event, KrrLog};
use krr::krr_rec::layout::ty;
use krr::krr_replay::driver::End;
use krr_synth::smp::{record_smp, replay_smp, replay_smp_files, SmpRecording, SmpScenario};
use std::path::{Path, PathBuf};

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("krr-smp-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn events(rec: &SmpRecording) -> Vec<Event> {
    KrrLog::open(&rec.log).unwrap().events
}

/// The vCPU an event names (the events whose `id` KRR's producers fill).
fn vcpu_of(e: &Event) -> Option<i32> {
    match e {
        Event::Interrupt(i) => Some(i.id),
        Event::Exception(x) => Some(x.id),
        Event::Syscall(s) => Some(s.id),
        Event::IoIn(x) => Some(x.id),
        Event::InstSync(n) | Event::Release(n) => Some(n.id),
        _ => None,
    }
}

#[test]
fn two_vcpu_recording_replays_to_both_vcpus_state() {
    let rec = record_smp(&SmpScenario::small(), &dir("small"));
    let ev = events(&rec);
    eprintln!(
        "{} events {:?}, {} kernel / {} user interrupts, {} cross-calls, final {:?}",
        rec.events, rec.counts, rec.kernel_irqs, rec.user_irqs, rec.xcalls, rec.final_state
    );
    assert_eq!(ev.len() as u64, rec.events);
    assert!(
        (200..5000).contains(&rec.events),
        "{} events: {:?}",
        rec.events,
        rec.counts
    );
    // Both vCPUs' system calls, interrupts in kernel and user mode, lock waits.
    for v in 0..2 {
        let n = |f: &dyn Fn(&Event) -> bool| {
            ev.iter().filter(|e| vcpu_of(e) == Some(v) && f(e)).count()
        };
        assert!(n(&|e| matches!(e, Event::Syscall(_))) > 5, "vCPU {v}");
        assert!(
            n(&|e| matches!(e, Event::Interrupt(i) if i.from == 0)) > 0,
            "vCPU {v}: no kernel-mode interrupt"
        );
        assert!(
            n(&|e| matches!(e, Event::Interrupt(i) if i.from == 3 && i.rip < 1 << 63)) > 0,
            "vCPU {v}: no INTERRUPT from=3 in user mode"
        );
        assert!(
            n(&|e| matches!(e, Event::Interrupt(i) if i.from == 3 && i.rip >= 1 << 63)) > 0,
            "vCPU {v}: no INTERRUPT from=3 in kernel mode (idle)"
        );
        assert!(
            n(&|e| matches!(e, Event::InstSync(_))) > 0,
            "vCPU {v}: no INST_SYNC"
        );
        assert!(
            n(&|e| matches!(e, Event::Release(_))) > 0,
            "vCPU {v}: no RELEASE"
        );
    }
    // Spin counts: some acquisitions waited (in entry events and in INST_SYNC).
    let spins =
        |f: &dyn Fn(&Event) -> Option<u64>| ev.iter().filter_map(f).filter(|&s| s > 0).count();
    assert!(
        spins(&|e| match e {
            Event::Syscall(s) => Some(s.spin_count),
            _ => None,
        }) > 0
    );
    assert!(
        spins(&|e| match e {
            Event::InstSync(n) => Some(n.spin_count),
            _ => None,
        }) > 0
    );
    assert!(
        spins(&|e| match e {
            Event::Interrupt(i) if i.from == 3 => Some(i.spin_count),
            _ => None,
        }) > 0
    );
    assert!(
        spins(&|e| match e {
            Event::Exception(x) => Some(x.spin_count),
            _ => None,
        }) > 0
    );
    // KVM's appends carry no spin count; kernel-mode page faults (copy_from_user) and REP
    // MOVSB interrupts happen under the lock too.
    assert!(ev.iter().all(|e| match e {
        Event::Interrupt(i) if i.from == 0 => i.spin_count == 0,
        _ => true,
    }));
    assert!(rec.rep_irqs > 0);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Exception(x) if x.regs.rip >= 1 << 63)));
    // Hand-overs both ways: the vCPU named by consecutive events changes in both directions.
    let owners: Vec<i32> = ev.iter().filter_map(vcpu_of).collect();
    let ways = |a, b| owners.windows(2).filter(|w| w[0] == a && w[1] == b).count();
    assert!(ways(0, 1) > 3 && ways(1, 0) > 3);
    assert!(rec.xcalls > 0);
    assert!(rec.checkpoints.iter().all(|c| c.len() > 10));
    for singlestep in [false, true] {
        let r = replay_smp(&rec, singlestep);
        assert_eq!(r.end, End::Finished, "singlestep {singlestep}");
        assert_eq!(
            r.state.without_rf(),
            rec.final_state.without_rf(),
            "singlestep {singlestep}"
        );
        eprintln!("singlestep {singlestep}: {} hand-overs", r.handovers);
        assert!(r.handovers > 6);
        assert_eq!(r.corrected_interrupts, 0);
        assert_eq!(r.io_resyncs, 0);
        // Both vCPUs' checkpoint files, each compared where the vCPU's count reaches it.
        let t = r.checkpoints;
        eprintln!("singlestep {singlestep}: checkpoints {t:?}");
        assert_eq!(t.missed, 0, "{t:?}");
        assert!(
            (t.passed + t.skipped) as usize >= due_checkpoints(&rec, &ev),
            "{t:?}"
        );
        assert!(t.passed > 20, "{t:?}");
    }
}

/// The checkpoints the replay must have compared: those up to the count of the vCPU's last
/// event that carries one (the replay ends with the last event; a vCPU's later records are
/// not reached).
fn due_checkpoints(rec: &SmpRecording, ev: &[Event]) -> usize {
    (0..2)
        .map(|v| {
            let last = ev
                .iter()
                .filter(|e| vcpu_of(e) == Some(v as i32))
                .filter_map(|e| match e {
                    Event::IoIn(x) => Some(x.inst_cnt),
                    Event::Interrupt(i) => Some(i.inst_cnt),
                    Event::InstSync(n) => Some(n.inst_cnt),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            rec.checkpoints[v].iter().filter(|&&c| c <= last).count()
        })
        .sum()
}

/// Each event's file offset (of its type field) in `kernel_rr.log`.
fn event_offsets(log: &[u8]) -> Vec<usize> {
    const SIZE: [usize; 15] = [
        192, 192, 184, 32, 48, 1048, 32, 16, 32, 48, 32, 1088, 1088, 32, 32,
    ];
    let u32_at = |o: usize| u32::from_le_bytes(log[o..o + 4].try_into().unwrap());
    let mut at = 96;
    let mut out = Vec::new();
    while at < log.len() {
        out.push(at);
        let t = u32_at(at) as usize;
        let mut size = SIZE[t];
        if t == ty::CFU as usize {
            size += u64::from_le_bytes(log[at + 4 + 24..at + 4 + 32].try_into().unwrap()) as usize;
        }
        at += 4 + size;
    }
    assert_eq!(at, log.len());
    out
}

/// A copy of the recording whose event `k` is changed by `alter` (its bytes from the type
/// field on), replayed in both modes: the divergence of each.
fn tampered(rec: &SmpRecording, tag: &str, k: usize, alter: impl Fn(&mut [u8])) -> Vec<End> {
    let d = dir(tag);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["test1", "vmlinux"] {
        std::fs::copy(rec.dir.join(f), d.join(f)).unwrap();
    }
    let mut log = std::fs::read(&rec.log).unwrap();
    let at = event_offsets(&log)[k];
    alter(&mut log[at..]);
    std::fs::write(d.join("kernel_rr.log"), &log).unwrap();
    [false, true]
        .map(|singlestep| {
            replay_smp_files(
                &d.join("test1"),
                &d.join("vmlinux"),
                &rec.var_addrs,
                singlestep,
            )
            .end
        })
        .to_vec()
}

fn diverged_at(ends: &[End], k: usize, words: &str) {
    for e in ends {
        match e {
            End::Diverged(d) => {
                assert_eq!(d.event, Some(k), "{}", d.message);
                assert!(d.message.contains(words), "{}", d.message);
            }
            other => panic!("no divergence: {other:?}"),
        }
    }
}

#[test]
fn altered_smp_events_diverge_at_them() {
    let rec = record_smp(&SmpScenario::small(), &dir("tamper-src"));
    let ev = events(&rec);
    let off = event_offsets(&std::fs::read(&rec.log).unwrap());
    assert_eq!(off.len(), ev.len());
    // A RELEASE naming the other vCPU: the releasing vCPU's LOCK_RELEASE finds it.
    let k = ev
        .iter()
        .position(|e| matches!(e, Event::Release(_)))
        .unwrap();
    let ends = tampered(&rec, "release", k, |b| {
        let id = i32::from_le_bytes(b[8..12].try_into().unwrap());
        b[8..12].copy_from_slice(&(1 - id).to_le_bytes());
    });
    diverged_at(&ends, k, "the recorded RELEASE is vCPU");
    // A RELEASE dropped (made a second copy of the event before it... here: its type
    // changed to INST_SYNC's, which the kernel does not ask for at that point).
    let ends = tampered(&rec, "release-gone", k, |b| {
        b[..4].copy_from_slice(&12u32.to_le_bytes())
    });
    diverged_at(&ends, k, "not its RELEASE");
    // A port input recorded on the other vCPU.
    let k = ev.iter().position(|e| matches!(e, Event::IoIn(_))).unwrap();
    let ends = tampered(&rec, "io-in-vcpu", k, |b| {
        let id = i32::from_le_bytes(b[4..8].try_into().unwrap());
        b[4..8].copy_from_slice(&(1 - id).to_le_bytes());
    });
    diverged_at(&ends, k, "recorded on vCPU");
    // An interrupt that ended an idle halt (from = 3, kernel RIP), its RIP moved by one
    // byte: never met.
    let k = ev
        .iter()
        .position(|e| matches!(e, Event::Interrupt(i) if i.from == 3 && i.rip >= 1 << 63))
        .unwrap();
    let ends = tampered(&rec, "idle-irq-rip", k, |b| {
        let rip = u64::from_le_bytes(b[4 + 40..4 + 48].try_into().unwrap());
        b[4 + 40..4 + 48].copy_from_slice(&(rip + 1).to_le_bytes());
    });
    diverged_at(&ends, k, "was not met");
    // An INST_SYNC's count (the count after a lock wait cannot be checked where it is set):
    // the vCPU's next event with a checked count diverges and names the INST_SYNC.
    let checked = |e: &Event| match e {
        Event::IoIn(_) => Some(true),
        Event::Interrupt(i) => Some(i.rip >= 1 << 63),
        _ => None,
    };
    let (k, next) = ev
        .iter()
        .enumerate()
        .filter_map(|(k, e)| match e {
            Event::InstSync(n) => {
                let v = n.id;
                let next = (k + 1..ev.len())
                    .find(|&j| vcpu_of(&ev[j]) == Some(v) && checked(&ev[j]).is_some())?;
                checked(&ev[next]).unwrap().then_some((k, next))
            }
            _ => None,
        })
        .next()
        .expect("an INST_SYNC followed by a count check on its vCPU");
    for (tag, delta) in [("sync-up", 1000i64), ("sync-down", -1000)] {
        let ends = tampered(&rec, tag, k, |b| {
            let at = 4 + 1064;
            let n = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            b[at..at + 8].copy_from_slice(&n.wrapping_add(delta as u64).to_le_bytes());
        });
        let named = format!("last synchronised at event {} (Inst Sync", k + 1);
        for e in &ends {
            let End::Diverged(d) = e else {
                panic!("{tag}: no divergence: {e:?}")
            };
            assert!(
                d.event.is_some_and(|j| j > k && j <= next),
                "{tag}: {}",
                d.message
            );
            assert!(d.message.contains(&named), "{tag}: {}", d.message);
        }
    }
}

#[test]
fn rotating_two_vcpu_recording_replays() {
    for (tag, release_events) in [("medium", true), ("medium-norelease", false)] {
        let sc = SmpScenario {
            release_events,
            ..SmpScenario::medium()
        };
        let rec = record_smp(&sc, &dir(tag));
        eprintln!(
            "{tag}: {} events {:?}, {} rotations",
            rec.events, rec.counts, rec.rotations
        );
        assert!(
            rec.rotations >= 1 || !release_events,
            "{} rotations",
            rec.rotations
        );
        assert_eq!(rec.counts[ty::RELEASE as usize] > 0, release_events);
        for singlestep in [false, true] {
            let r = replay_smp(&rec, singlestep);
            assert_eq!(r.end, End::Finished, "{tag} singlestep {singlestep}");
            assert_eq!(
                r.state.without_rf(),
                rec.final_state.without_rf(),
                "{tag} singlestep {singlestep}"
            );
            assert_eq!(r.io_resyncs, 0);
        }
    }
}

#[test]
fn kvm_append_past_the_ring_end_does_not_rotate() {
    // Seed 15: a KVM append (which never rotates) ends past the ring's total_size; the guest
    // rotates at its next allocation.
    let sc = SmpScenario {
        base: krr_synth::Scenario {
            seed: 15,
            ..SmpScenario::medium().base
        },
        ..SmpScenario::medium()
    };
    let rec = record_smp(&sc, &dir("overrun"));
    assert!(rec.ring_max_end > rec.ring_total, "{rec:?}");
    let r = replay_smp(&rec, false);
    assert_eq!(r.end, End::Finished);
    assert_eq!(r.state.without_rf(), rec.final_state.without_rf());
}

/// `krr replay --krr` (the command) on the two-vCPU recording, in both modes, and `krr info
/// --krr` on it.
#[test]
fn the_command_replays_the_two_vcpu_recording() {
    use std::process::Command;
    let rec = record_smp(&SmpScenario::small(), &dir("cli"));
    for mode in [&[][..], &["--singlestep"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_krr"))
            .args(["replay", "-q", "--krr"])
            .arg(&rec.snapshot)
            .arg("--vmlinux")
            .arg(&rec.vmlinux)
            .args(["--profile", "host"])
            .args(mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stderr.contains(&format!("{} of {} events replayed", rec.events, rec.events)),
            "{stderr}"
        );
        assert!(stderr.contains("verdict: replayed to the end"), "{stderr}");
        assert!(stderr.contains("2 vCPUs: vCPU 0 at KRR count "), "{stderr}");
        let cps = rec.checkpoints[0].len() + rec.checkpoints[1].len();
        assert!(stderr.contains("checkpoints: "), "{stderr}");
        assert!(stderr.contains(&format!(" of {cps}\n")), "{stderr}");
        let sync = format!("Inst Sync: {}\n", rec.counts[ty::INST_SYNC as usize]);
        assert!(stdout.contains(&sync), "{sync}\n{stdout}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["info", "--krr"])
        .arg(&rec.snapshot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("2 vCPU(s)"), "{stdout}");
    for (t, name) in [(ty::RELEASE, "Release"), (ty::INST_SYNC, "Inst Sync")] {
        let line = format!("{name}: {}\n", rec.counts[t as usize]);
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
    for v in 0..2 {
        let line = format!("instructions: vCPU {v}: counts ");
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
}

/// The schedule is in instructions: the recording is the same whatever the engine's tiers.
#[test]
fn two_vcpu_recording_does_not_depend_on_the_tier() {
    let a = record_smp(&SmpScenario::small(), &dir("tier-a"));
    let mut sc = SmpScenario::small();
    sc.base.policy = krr_jit::TierPolicy::Tiered;
    let b = record_smp(&sc, &dir("tier-b"));
    for f in ["kernel_rr.log", "test1"] {
        assert!(
            std::fs::read(a.dir.join(f)).unwrap() == std::fs::read(b.dir.join(f)).unwrap(),
            "{f} differs"
        );
    }
}

/// A SYSCALL's spin count one higher: RR_LOCK_ACQUIRE_RET advances the count by 3 more, and
/// the vCPU's next checked count diverges naming the SYSCALL.
#[test]
fn an_altered_spin_count_is_named() {
    let rec = record_smp(&SmpScenario::small(), &dir("spin-src"));
    let ev = events(&rec);
    // A system call that waited, whose vCPU's next count check is a port input (before any
    // other synchronisation of its count).
    let (k, next) = ev
        .iter()
        .enumerate()
        .filter_map(|(k, e)| match e {
            Event::Syscall(s) if s.spin_count > 0 => {
                let next = (k + 1..ev.len()).find(|&j| {
                    vcpu_of(&ev[j]) == Some(s.id)
                        && matches!(
                            ev[j],
                            Event::IoIn(_) | Event::Interrupt(_) | Event::InstSync(_)
                        )
                })?;
                matches!(ev[next], Event::IoIn(_)).then_some((k, next))
            }
            _ => None,
        })
        .next()
        .expect("a system call that spun, then a port input");
    let ends = tampered(&rec, "spin", k, |b| {
        let at = 4 + 176;
        let n = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        b[at..at + 8].copy_from_slice(&(n + 1).to_le_bytes());
    });
    let named = format!("advanced by the spin count of event {} (Syscall", k + 1);
    for e in &ends {
        let End::Diverged(d) = e else {
            panic!("no divergence: {e:?}")
        };
        assert_eq!(d.event, Some(next), "{}", d.message);
        assert!(d.message.contains(&named), "{}", d.message);
    }
}

/// More schedules: `KRR_SMP_SEEDS` recordings (default 4) from seed `KRR_SMP_SEED0` (100),
/// every other one with RELEASE events, `KRR_SMP_MEDIUM` for the rotating size; each replays
/// in both modes to the recorded state without a count correction.
#[test]
fn other_schedules_replay() {
    let n: u64 = std::env::var("KRR_SMP_SEEDS").map_or(4, |v| v.parse().unwrap());
    let mut bad = Vec::new();
    let first: u64 = std::env::var("KRR_SMP_SEED0").map_or(100, |v| v.parse().unwrap());
    for seed in first..first + n {
        let mut sc = if std::env::var("KRR_SMP_MEDIUM").is_ok() {
            SmpScenario::medium()
        } else {
            SmpScenario::small()
        };
        sc.base.seed = seed;
        sc.release_events = seed % 2 == 0;
        let rec = record_smp(&sc, &dir("sweep"));
        for singlestep in [false, true] {
            let r = replay_smp(&rec, singlestep);
            let t = r.checkpoints;
            let all = due_checkpoints(&rec, &events(&rec));
            if t.missed != 0 || ((t.passed + t.skipped) as usize) < all {
                eprintln!("seed {seed} singlestep {singlestep}: checkpoints {t:?} of {all}");
                bad.push(seed);
            }
            if r.end != End::Finished
                || r.state.without_rf() != rec.final_state.without_rf()
                || r.io_resyncs != 0
            {
                eprintln!(
                    "seed {seed} singlestep {singlestep}: {:?} resyncs {}\n{:?}\n{:?}",
                    r.end, r.io_resyncs, r.state, rec.final_state
                );
                bad.push(seed);
            }
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// vCPU 1's `checkpoint-1` is compared too: its first record with another RAX is a divergence
/// naming it.
#[test]
fn an_altered_checkpoint_of_vcpu_1_diverges() {
    let rec = record_smp(&SmpScenario::small(), &dir("cp-src"));
    let d = dir("cp");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["test1", "vmlinux", "kernel_rr.log", "checkpoint-0"] {
        std::fs::copy(rec.dir.join(f), d.join(f)).unwrap();
    }
    let mut cp = std::fs::read(rec.dir.join("checkpoint-1")).unwrap();
    // Record 0: inst_cnt, rip, then RAX (QEMU's register order).
    cp[16] ^= 1;
    std::fs::write(d.join("checkpoint-1"), &cp).unwrap();
    for singlestep in [false, true] {
        let r = replay_smp_files(
            &d.join("test1"),
            &d.join("vmlinux"),
            &rec.var_addrs,
            singlestep,
        );
        let End::Diverged(div) = r.end else {
            panic!("no divergence: {:?}", r.end)
        };
        assert!(
            div.message.contains("checkpoint-1 record 1 at count") && div.message.contains("rax "),
            "{}",
            div.message
        );
    }
}
