//! Synthetic KRR recordings (tests/krr_synth): the recording builds, every file reads back
//! with krr's readers, the events are what KRR's producers write for this kernel (counts by
//! type as the recorder made them, instruction counts and RIPs where the instructions are,
//! the interrupted REP MOVSB), the recording does not depend on the engine's tier policy, and
//! `krr info --krr` accepts the snapshot with the kernel's vmlinux and prints its trap points;
//! krr's KRR replayer (`krr replay --krr`'s library) reaches the recorded state from the files alone, in both modes.

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::events::{Event, KrrLog};
use krr::krr_rec::recording::{Recording, RecordingFiles};
use krr::vmlinux::Vmlinux;
use krr_synth::machine as m;
use krr_synth::{build_recording, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("krr-synth-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn sym(v: &Vmlinux, name: &str) -> u64 {
    v.symbol(name).unwrap_or_else(|| panic!("{name}")).addr
}

#[test]
fn small_recording_reads_back_as_krr_wrote_it() {
    let r = build_recording(&Scenario::small(), &dir("small"));
    let v = Vmlinux::open(&r.vmlinux).unwrap();
    let rec = Recording::open(RecordingFiles::beside(&r.snapshot).unwrap()).unwrap();
    let log = &rec.log;
    assert_eq!(log.counts(), r.counts);
    assert_eq!(log.events.len() as u64, r.events);
    assert_eq!(log.count_note(), None);
    // Every kind this kernel has, at least once.
    for (t, name) in [
        (0, "INTERRUPT"),
        (1, "EXCEPTION"),
        (2, "SYSCALL"),
        (3, "IO_IN"),
        (4, "CFU"),
        (6, "RDTSC"),
        (8, "GFU"),
        (10, "RDSEED"),
        (14, "PTE"),
    ] {
        assert!(r.counts[t] > 0, "no {name} event: {:?}", r.counts);
    }
    assert!(r.rep_irqs > 0 && r.user_irqs > 0 && r.kernel_irqs > r.rep_irqs);
    assert!(r.kernel_faults > 0);
    assert_eq!(r.counts[0], r.kernel_irqs + r.user_irqs);
    // Headers: the ring as the agent initialised it, recording on; the final one counts all.
    let (initial, fin) = log.headers.unwrap();
    assert_eq!(initial.current_pos, 0);
    assert_eq!(initial.rr_enabled, 1);
    assert_eq!(initial.header_size, 4096);
    assert_eq!(initial.entry_size, 8192);
    assert_eq!(initial.current_byte, 4096);
    assert_eq!(initial.total_size, (2 << 20) - 4096);
    assert_eq!(fin.current_pos as u64, r.events);
    assert_eq!(log.ring_bytes(), Some(2 << 20));

    // The snapshot: one vCPU in user mode, LSTAR at entry_SYSCALL_64, the ring's BAR2.
    let s = &rec.snapshot;
    assert_eq!(s.ram.size, m::RAM_SIZE);
    assert_eq!(s.vcpus.len(), 1);
    let c = &s.vcpus[0].cpu;
    assert_eq!(c.cpl(), 3);
    assert_eq!(c.rip, r.start_rip);
    assert_eq!(c.lstar, sym(&v, "entry_SYSCALL_64"));
    assert_eq!(c.cr3, m::PML4_PA);
    assert_eq!(s.ivshmem.as_ref().unwrap().bar2(), m::BAR2);
    let (arch, notes) = krr::krr_replay::cpu::arch_state(c).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(arch.kernel_gs_base, sym(&v, "krr_percpu"));
    assert_eq!(arch.idtr.base, sym(&v, "krr_idt"));

    // The events' fields where KRR's producers put them.
    let text = |rip: u64| v.bytes(rip, 3).unwrap().to_vec();
    let in_kernel = |rip: u64| rip >= m::KERNEL_VA;
    let mut last_count = 0;
    let mut rep_seen = false;
    for (i, e) in log.events.iter().enumerate() {
        if let Some(n) = e.inst_cnt() {
            assert!(n >= last_count, "event {i}: count {n} < {last_count}");
            last_count = n;
        }
        match e {
            Event::Syscall(s) => {
                assert_eq!(s.regs.rcx, m::USER_CODE + 2, "return RIP in RCX");
                assert_eq!(s.regs.r[3], 0x202, "user RFLAGS in R11");
                assert!(s.regs.rax <= 2);
                assert_eq!(s.cr3, m::PML4_PA);
            }
            Event::IoIn(io) => {
                assert!(
                    matches!(text(io.rip)[0], 0xe4 | 0xec),
                    "IN at {:#x}",
                    io.rip
                );
                assert!(io.value <= 0xff);
            }
            Event::Rdtsc(t) => {
                assert_eq!(t.rip, sym(&v, "krr_rdtsc_insn"));
                assert_eq!(&text(t.rip)[..2], &[0x0f, 0x31]);
            }
            Event::Interrupt(irq) => {
                assert_eq!(irq.vector, m::TIMER_VECTOR as i32);
                assert_eq!((irq.from, irq.ecx, irq.spin_count), (0, 0, 0));
                assert_eq!(irq.regs.rip, irq.rip);
                assert_ne!(irq.regs.rflags & 0x200, 0, "interrupts were enabled");
                if irq.rip == sym(&v, "krr_copy_rep") {
                    rep_seen = true;
                    assert!(irq.regs.rcx > 0, "REP MOVSB with bytes left");
                    // The CFU of that copy was allocated before the REP started.
                    let cfu = log.events[..i].iter().rev().find_map(|e| match e {
                        Event::Cfu(c) => Some(c),
                        _ => None,
                    });
                    let cfu = cfu.expect("a CFU before");
                    let n = cfu.data.len() as u64 - 1;
                    assert!(irq.regs.rcx <= n);
                    assert_eq!(irq.regs.rsi, cfu.src_addr + n - irq.regs.rcx);
                } else if !in_kernel(irq.rip) {
                    assert!(irq.rip == m::USER_CODE || irq.rip == m::USER_CODE + 2);
                    assert_eq!(irq.regs.rflags, 0x202);
                }
            }
            Event::Exception(x) => match x.exception_index {
                14 => {
                    let user = x.regs.rip == m::USER_STORE;
                    assert!(user || in_kernel(x.regs.rip), "{:#x}", x.regs.rip);
                    assert_eq!(x.error_code, if user { 6 } else { 0 });
                    assert!((m::FAULT_BASE..m::FAULT_BASE + 0x10_0000).contains(&x.cr2));
                }
                13 => {
                    assert_eq!(x.regs.rip, m::USER_CLI);
                    assert_eq!((x.error_code, x.cr2), (0, 0));
                }
                v => panic!("exception {v}"),
            },
            Event::Cfu(c) => {
                assert!(c.src_addr < 0x80_0000 && c.dest_addr == sym(&v, "krr_kbuf"));
                assert!(c.data.len() >= 2);
            }
            Event::Gfu(g) => assert_eq!(g.size, 8),
            Event::Pte(p) => {
                assert_ne!(p.val & m::PTE_US, 0, "only user PTEs are recorded");
                assert!(p.ptr >= m::DIRECT_MAP + m::USER_PT_PA);
            }
            Event::Rdseed(_) => {}
            other => panic!("event {i}: {other:?}"),
        }
    }
    assert!(rep_seen);
    assert!(r.final_state.inst_cnt > last_count);
    assert_eq!(r.final_state.checksum_addr, sym(&v, "krr_checksum"));
    assert_eq!(r.final_state.jiffies, r.counts[0]);
}

/// The recording replays with krr's KRR replayer, from its files alone, to the recorder's
/// final state, in multi-instruction blocks and with --singlestep alike; the replay
/// re-creates KVM's ring appends.
#[test]
fn small_recording_replays_to_the_recorded_state() {
    let r = build_recording(&Scenario::small(), &dir("replay"));
    for singlestep in [false, true] {
        let got = krr_synth::replay(&r, singlestep);
        assert_eq!(
            got.end,
            krr::krr_replay::driver::End::Finished,
            "singlestep {singlestep}"
        );
        assert_eq!(got.state, r.final_state, "singlestep {singlestep}");
        assert_eq!(
            got.ring_appends,
            r.counts[0] + r.counts[3],
            "INTERRUPT and IO_IN appends"
        );
    }
}

/// Every input matters: the same recording with one IO_IN, GFU, RDSEED, RDTSC or PTE value
/// or one CFU data byte changed replays to another checksum.
#[test]
fn a_changed_input_changes_the_replayed_state() {
    let r = build_recording(&Scenario::small(), &dir("changed"));
    let log = KrrLog::open(&r.log).unwrap();
    let bytes = std::fs::read(&r.log).unwrap();
    let nth = |t: u32| {
        let i = log
            .events
            .iter()
            .position(|e| e.type_number() == t)
            .unwrap();
        log.offsets[i] as usize
    };
    // (what, byte offset in the file): the value fields, and a CFU's first data byte.
    for (what, at) in [
        ("IO_IN value", nth(3) + 4 + 8),
        ("CFU data", nth(4) + 4 + 48),
        ("GFU value", nth(8) + 4 + 8),
        ("RDSEED value", nth(10) + 4 + 8),
        ("RDTSC value", nth(6) + 4 + 8),
        ("PTE value", nth(14) + 4 + 8),
    ] {
        let d = dir(&format!("changed-{}", what.replace(' ', "-")));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(&r.snapshot, d.join("test1")).unwrap();
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        std::fs::write(d.join("kernel_rr.log"), b).unwrap();
        let got = krr_synth::replay_files(&d.join("test1"), &r.vmlinux, &r.final_state, false);
        assert_ne!(got.state.checksum, r.final_state.checksum, "{what}");
    }
}

#[test]
fn krr_info_accepts_the_recording_and_its_vmlinux() {
    let r = build_recording(&Scenario::small(), &dir("info"));
    let v = Vmlinux::open(&r.vmlinux).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["info", "--krr"])
        .arg(&r.snapshot)
        .arg("--vmlinux")
        .arg(&r.vmlinux)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("KASLR slide 0x0"), "{stdout}");
    assert!(stdout.contains("Linux version 6.1.0-krr-synth"), "{stdout}");
    for (point, name) in [
        ("RR_CFU_BEGIN", "rr_cfu_begin"),
        ("RR_GFU_BEGIN", "rr_gfu_begin"),
        ("RR_PTE_CLEAR", "rr_record_pte_clear"),
        ("RR_PTE_READ_ONCE", "rr_read_pte_once"),
        ("PF_EXEC", "exc_page_fault"),
        ("GP_EXEC", "exc_general_protection"),
    ] {
        let line = format!("{point:<26} {:#x}", sym(&v, name));
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
    assert!(stdout.contains("PF_EXEC_END"), "{stdout}");
    assert!(
        stdout.contains(&format!("Syscall: {}", r.counts[2])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Interrupt: {}", r.counts[0])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("BAR2 at {:#x}", m::BAR2)),
        "{stdout}"
    );
}

/// A longer run: the ring rotates (hypercall 102), and the recording is the same whether
/// the engine interprets or compiles the kernel (the counts and RIPs the bus sees, the
/// budget stops, the stops at the REP and the VMCALL).
#[test]
fn medium_recording_rotates_and_does_not_depend_on_the_tier() {
    let a = build_recording(&Scenario::medium(), &dir("medium-interp"));
    let b = build_recording(
        &Scenario {
            policy: krr_jit::TierPolicy::Tiered,
            ..Scenario::medium()
        },
        &dir("medium-tiered"),
    );
    assert!(a.rotations > 0, "{a:?}");
    assert_eq!(a.final_state, b.final_state);
    assert_eq!(a.counts, b.counts);
    let la = std::fs::read(&a.log).unwrap();
    assert!(la == std::fs::read(&b.log).unwrap(), "the logs differ");
    assert!(std::fs::read(&a.snapshot).unwrap() == std::fs::read(&b.snapshot).unwrap());
    let log = KrrLog::open(&a.log).unwrap();
    assert_eq!(log.counts(), a.counts);
    assert!(log.headers.unwrap().1.rotated_bytes > 0);
    assert_eq!(krr_synth::replay(&a, false).state, a.final_state);
}

/// The benchmark scenario (`cargo test --release --test krr_synth_record -- --ignored`).
#[test]
#[ignore]
fn large_recording() {
    let t = std::time::Instant::now();
    let r = build_recording(&Scenario::large(), &dir("large"));
    eprintln!(
        "{} events, {} kernel instructions, {} rotations, {:?}: {:?}",
        r.events,
        r.final_state.inst_cnt,
        r.rotations,
        t.elapsed(),
        r.counts
    );
    let log = KrrLog::open(&r.log).unwrap();
    assert_eq!(log.counts(), r.counts);
    let t = std::time::Instant::now();
    assert_eq!(krr_synth::replay(&r, false).state, r.final_state);
    eprintln!("replayed (krr_synth::replay) in {:?}", t.elapsed());
}
