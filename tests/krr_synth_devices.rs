//! The device scenario's synthetic KRR recording (tests/krr_synth, `Scenario::devices`):
//! IDE bus-master DMA with DMA_DONE, NVMe completions and e1000 receive DMA in their logs,
//! e1000 MMIO reads, device interrupts, page-map CFUs and the GFU skip rule; the recording
//! replays with krr's KRR replayer to the recorded state in blocks and single steps, and one
//! altered input of each new kind is either reported at its event or, for inputs KRR only
//! applies and never checks (DMA data, MMIO values, page contents), changes the final state.

mod krr_rec_writer;
mod krr_synth;

use krr::krr_rec::dma::DmaLog;
use krr::krr_rec::events::{Event, KrrLog};
use krr::krr_replay::driver::End;
use krr::vmlinux::Vmlinux;
use krr_synth::{build_recording, Recording, Scenario};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn dir(tag: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("krr-synth-dev-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// One recording for every test of this file.
fn recording() -> &'static Recording {
    static R: OnceLock<Recording> = OnceLock::new();
    R.get_or_init(|| build_recording(&Scenario::devices(), &dir("rec")))
}

const IDE_LOG: &str = "kernel_rr_dma-9.log";
const NVME_LOG: &str = "kernel_rr_dma-40.log";
const NET_LOG: &str = "kernel_rr_network.log";

fn sym(v: &Vmlinux, name: &str) -> u64 {
    v.symbol(name).unwrap_or_else(|| panic!("{name}")).addr
}

#[test]
fn the_device_recording_has_every_new_kind() {
    let r = recording();
    let s = &r.devices;
    assert!(
        s.ide_reads > 0
            && s.nvme_polled > 0
            && s.nvme_reads > s.nvme_polled
            && s.packets > s.net_calls + s.user_packets
            && s.user_packets > 0
            && s.page_maps > 0
            && s.strsums > 0,
        "{s:?}"
    );
    let nvme_irqs = s.nvme_reads - s.nvme_polled;
    let net_irqs = s.net_calls + s.user_packets;
    assert_eq!(s.device_irqs, s.ide_reads + nvme_irqs + net_irqs);
    let log = KrrLog::open(&r.log).unwrap();
    assert_eq!(log.counts(), r.counts);
    let v = Vmlinux::open(&r.vmlinux).unwrap();
    // DMA_DONE: one per IDE read, all zero; MMIO: the e1000 handler's two reads each.
    assert_eq!(r.counts[7], s.ide_reads);
    assert_eq!(r.counts[13], 2 * net_irqs);
    let irq_handlers = ["krr_ide_irq", "krr_e1000_irq", "krr_nvme_irq"];
    let _ = irq_handlers.map(|n| sym(&v, n));
    let mut vectors = [0u64; 3];
    let mut page_maps = 0;
    let mut user_irqs = 0;
    for (i, e) in log.events.iter().enumerate() {
        match e {
            Event::DmaDone { id, inst_cnt } => assert_eq!((*id, *inst_cnt), (0, 0)),
            Event::Mmio(m) => {
                assert_eq!((m.id, m.inst_cnt, m.rip), (0, 0, 0));
                // ICR (RXT0 after a packet) or STATUS.
                assert!(m.value == 0x80 || m.value == 0x8008_0783, "{:#x}", m.value);
            }
            Event::Interrupt(irq) if (0x24..=0x26).contains(&irq.vector) => {
                vectors[irq.vector as usize - 0x24] += 1;
                assert_eq!(irq.from, 0);
                // In kernel mode, but packets that arrived while user code ran.
                let user = irq.rip == krr_synth::machine::USER_CODE;
                assert!(user || irq.rip >= 0xffff_ffff_8000_0000, "{:#x}", irq.rip);
                user_irqs += user as u64;
            }
            Event::Cfu(c) if c.dest_addr == 0 => {
                assert_eq!(c.data.len(), 4096);
                assert!(c.src_addr >= 0xffff_8880_0000_0000, "a direct-map VA");
                page_maps += 1;
            }
            Event::Gfu(g) => assert_eq!(g.size, 8, "event {i}"),
            _ => {}
        }
    }
    assert_eq!(vectors, [s.ide_reads, net_irqs, nvme_irqs]);
    assert_eq!(page_maps, s.page_maps);
    assert_eq!(user_irqs, s.user_packets);
    // The DMA logs: IDE entries in DMA_DONE order (two SGs: the PRDs), NVMe and e1000 ones
    // stamped with counts in order.
    let ide = DmaLog::open(&r.dir.join(IDE_LOG)).unwrap();
    assert_eq!(ide.entries.len() as u64, s.ide_reads);
    let buf0 = sym(&v, "krr_ide_buf0") - 0xffff_ffff_8100_0000 + 0x100_0000;
    for e in &ide.entries {
        assert_eq!(e.dev_type, 0);
        assert_eq!(e.sgs.len(), 2);
        assert_eq!((e.sgs[0].addr, e.sgs[0].data.len()), (buf0, 512));
    }
    let nvme = DmaLog::open(&r.dir.join(NVME_LOG)).unwrap();
    assert_eq!(nvme.entries.len() as u64, s.nvme_reads);
    let net = DmaLog::open(&r.dir.join(NET_LOG)).unwrap();
    assert_eq!(net.entries.len() as u64, s.packets);
    for (l, dev_type) in [(&nvme, Some(1)), (&net, None)] {
        let mut last = 0;
        for e in &l.entries {
            assert!(e.inst_cnt > last && e.inst_cnt < r.final_state.inst_cnt);
            last = e.inst_cnt;
            assert_eq!((e.cpu_id, e.sgs.len()), (0, 2));
            assert_eq!(e.sgs[1].data.len(), 16, "the CQE / descriptor write-back");
            if let Some(t) = dev_type {
                assert_eq!(e.dev_type, t);
            }
        }
    }
}

/// krr's KRR replayer (the library `krr replay --krr` runs) from the files alone: the
/// recorded final state in blocks and single steps, every DMA entry applied, and the ring
/// appends of the host side (INTERRUPT, IO_IN, DMA_DONE, MMIO) re-created.
#[test]
fn the_device_recording_replays_to_the_recorded_state() {
    let r = recording();
    for singlestep in [false, true] {
        let got = krr_synth::replay(r, singlestep);
        assert_eq!(got.end, End::Finished, "singlestep {singlestep}");
        assert_eq!(got.state, r.final_state, "singlestep {singlestep}");
        assert_ring_as_recorded(r, &got);
        assert_eq!(
            got.ring_appends,
            r.counts[0] + r.counts[3] + r.counts[7] + r.counts[13],
            "host-side ring appends"
        );
    }
}

/// Each DMA entry is written where krr-spec 3.9 says the replayer applies it: IDE's k-th
/// entry with the log's k-th DMA_DONE (at the bus-master start that consumes it), an NVMe
/// entry at the count it carries (`count >= inst_cnt`: the first boundary there), an e1000
/// entry one instruction before its count (`count == inst_cnt - 1`), in both modes.
#[test]
fn dma_is_placed_where_krr_places_it() {
    let r = recording();
    let log = KrrLog::open(&r.log).unwrap();
    let dones: Vec<usize> = (0..log.events.len())
        .filter(|&i| matches!(log.events[i], Event::DmaDone { .. }))
        .collect();
    let counts = |name: &str| -> Vec<u64> {
        let l = DmaLog::open(&r.dir.join(name)).unwrap();
        l.entries.iter().map(|e| e.inst_cnt).collect()
    };
    let nvme = counts(NVME_LOG);
    let net: Vec<u64> = counts(NET_LOG).iter().map(|n| n - 1).collect();
    for singlestep in [false, true] {
        let got = krr_synth::replay(r, singlestep);
        assert_eq!(got.end, End::Finished);
        assert_eq!(got.ide_placed, dones, "singlestep {singlestep}");
        assert_eq!(got.nvme_placed, nvme, "singlestep {singlestep}");
        assert_eq!(got.net_placed, net, "singlestep {singlestep}");
    }
}

fn krr_replay(snapshot: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["replay", "-q", "--krr"])
        .arg(snapshot)
        .arg("--vmlinux")
        .arg(&recording().vmlinux)
        .args(["--profile", "host"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The command too: its verdict, KRR's stats block (MMIO counted under "IO Input", as KRR's
/// loader does), and a DMA_DONE moved after the event that follows it reported at it (exit 2).
#[test]
fn the_command_replays_the_device_recording() {
    let r = recording();
    let (code, stdout, stderr) = krr_replay(&r.snapshot);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("verdict: replayed to the end"), "{stderr}");
    let io = format!("IO Input: {}\n", r.counts[3] + r.counts[13]);
    assert!(stdout.contains(&io), "{io}{stdout}");

    let log = KrrLog::open(&r.log).unwrap();
    let done = log
        .events
        .iter()
        .rposition(|e| matches!(e, Event::DmaDone { .. }))
        .unwrap();
    let (a, b, end) = (
        log.offsets[done] as usize,
        log.offsets[done + 1] as usize,
        log.offsets[done + 2] as usize,
    );
    let d = altered("cli-dma-done-later", "kernel_rr.log", &|bytes| {
        let moved: Vec<u8> = [&bytes[b..end], &bytes[a..b]].concat();
        bytes[a..end].copy_from_slice(&moved);
    });
    let (code, stdout, stderr) = krr_replay(&d.join("test1"));
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let named = format!(
        "event {} (DMA Done, file offset {})",
        done + 2,
        a + (end - b)
    );
    let verdict = stderr
        .lines()
        .find(|l| l.starts_with("verdict: DIVERGED"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(verdict.contains(&named), "{named}\n{verdict}");
}

/// A copy of the recording in `tag` with `f` applied to the file `name` (bytes).
fn altered(tag: &str, name: &str, f: &dyn Fn(&mut Vec<u8>)) -> PathBuf {
    let r = recording();
    let d = dir(tag);
    std::fs::create_dir_all(&d).unwrap();
    for entry in std::fs::read_dir(&r.dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut b = std::fs::read(d.join(name)).unwrap();
    f(&mut b);
    std::fs::write(d.join(name), b).unwrap();
    d
}

fn replay_dir(d: &Path) -> krr_synth::Replayed {
    let r = recording();
    krr_synth::replay_files(&d.join("test1"), &r.vmlinux, &r.final_state, false)
}

/// The file offset of the first data byte of `log`'s entry `i`'s SG `sg`.
fn sg_data_offset(log: &DmaLog, i: usize, sg: usize) -> usize {
    let e = &log.entries[i];
    let mut at = e.offset as usize + 96;
    for s in &e.sgs[..sg] {
        at += 48 + s.data.len();
    }
    at + 48
}

/// DMA data, MMIO values and page contents are applied, never checked (krr-spec 3.5, 3.9):
/// one byte changed replays to the end with another checksum.
#[test]
fn altered_dma_mmio_and_page_map_inputs_change_the_final_state() {
    let r = recording();
    let log = KrrLog::open(&r.log).unwrap();
    let first = |want: &dyn Fn(&Event) -> bool| log.events.iter().position(want).unwrap();
    let mmio = first(&|e| matches!(e, Event::Mmio(_)));
    let page_map = first(&|e| matches!(e, Event::Cfu(c) if c.dest_addr == 0));
    let cases: Vec<(&str, &str, usize)> = vec![
        ("mmio", "kernel_rr.log", log.offsets[mmio] as usize + 4 + 8),
        (
            "page-map",
            "kernel_rr.log",
            log.offsets[page_map] as usize + 4 + 48 + 1000,
        ),
        (
            "ide-data",
            IDE_LOG,
            sg_data_offset(&DmaLog::open(&r.dir.join(IDE_LOG)).unwrap(), 0, 1) + 7,
        ),
        (
            "nvme-data",
            NVME_LOG,
            sg_data_offset(&DmaLog::open(&r.dir.join(NVME_LOG)).unwrap(), 0, 0) + 100,
        ),
        (
            "net-data",
            NET_LOG,
            sg_data_offset(&DmaLog::open(&r.dir.join(NET_LOG)).unwrap(), 0, 0) + 20,
        ),
    ];
    for (what, file, at) in cases {
        let d = altered(what, file, &|b| b[at] ^= 0x21);
        let got = replay_dir(&d);
        assert_eq!(got.end, End::Finished, "{what}");
        assert_ne!(got.state.checksum, r.final_state.checksum, "{what}");
    }
}

/// Placement: a DMA_DONE moved past the event after it leaves the IDE start without its
/// marker, and the replay stops at the DMA_DONE where the kernel reads a port instead; an
/// e1000 entry whose count is moved past the interrupt that announced it arrives after the
/// kernel looked at the ring (another final state); an NVMe entry placed later likewise.
#[test]
fn misplaced_dma_is_a_divergence_or_another_state() {
    let r = recording();
    let log = KrrLog::open(&r.log).unwrap();
    let done = log
        .events
        .iter()
        .position(|e| matches!(e, Event::DmaDone { .. }))
        .unwrap();
    let (a, b) = (log.offsets[done] as usize, log.offsets[done + 1] as usize);
    let end = log
        .offsets
        .get(done + 2)
        .map_or(std::fs::metadata(&r.log).unwrap().len() as usize, |&o| {
            o as usize
        });
    let d = altered("dma-done-later", "kernel_rr.log", &|bytes| {
        let moved: Vec<u8> = [&bytes[b..end], &bytes[a..b]].concat();
        bytes[a..end].copy_from_slice(&moved);
    });
    let got = replay_dir(&d);
    let End::Diverged(div) = got.end else {
        panic!("{:?}", got.end)
    };
    assert_eq!(div.event, Some(done + 1), "{}", div.message);
    assert!(div.message.contains("DMA"), "{}", div.message);

    for (file, tag) in [(NET_LOG, "net-later"), (NVME_LOG, "nvme-later")] {
        let dl = DmaLog::open(&r.dir.join(file)).unwrap();
        let at = dl.entries[0].offset as usize + 24;
        let d = altered(tag, file, &|bytes| {
            let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            bytes[at..at + 8].copy_from_slice(&(n + 5000).to_le_bytes());
        });
        let got = replay_dir(&d);
        assert_ne!(
            got.state.checksum, r.final_state.checksum,
            "{tag}: {:?}",
            got.end
        );
    }

    // A polled NVMe completion (the second command) 16 instructions late: the kernel spins
    // on its completion queue for more iterations, so every later count is off; the next
    // event that carries one (an interrupt, a port input) is reported.
    let dl = DmaLog::open(&r.dir.join(NVME_LOG)).unwrap();
    let at = dl.entries[1].offset as usize + 24;
    let d = altered("nvme-polled-later", NVME_LOG, &|bytes| {
        let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        bytes[at..at + 8].copy_from_slice(&(n + 16).to_le_bytes());
    });
    let got = replay_dir(&d);
    let End::Diverged(div) = &got.end else {
        panic!("{:?}", got.end)
    };
    let n = dl.entries[1].inst_cnt;
    let after = div.event.expect("an event");
    assert!(
        log.events[after].inst_cnt().is_some_and(|c| c > n),
        "{}",
        div.message
    );
}

/// The replay's ring header at the end is the one QEMU saved last (`current_pos` aside,
/// which the file counts over all rotations): every host append re-created in place, and
/// the ring rotated where the recording's did.
fn assert_ring_as_recorded(r: &Recording, got: &krr_synth::Replayed) {
    let (_, fin) = KrrLog::open(&r.log).unwrap().headers.unwrap();
    let h = got.ring_header.expect("a ring");
    let word = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    assert_eq!(
        (word(24), word(32), word(40)),
        (fin.current_byte, fin.total_size, fin.rotated_bytes),
        "current_byte, total_size, rotated_bytes"
    );
}

/// Other seeds and longer runs of the scenario (device work at other counts, in other
/// orders, the ring rotating under page-map CFUs) replay to their recorded states too.
#[test]
fn other_device_recordings_replay() {
    for seed in 10..15 {
        // The last one long enough for the ring to rotate.
        let (actions, max_copy) = if seed == 14 { (1500, 4096) } else { (120, 512) };
        let sc = Scenario {
            seed,
            actions,
            max_copy,
            ..Scenario::devices()
        };
        let r = build_recording(&sc, &dir(&format!("seed{seed}")));
        for singlestep in [false, true] {
            let got = krr_synth::replay(&r, singlestep);
            assert_eq!(
                got.end,
                End::Finished,
                "seed {seed} singlestep {singlestep}"
            );
            assert_eq!(
                got.state, r.final_state,
                "seed {seed} singlestep {singlestep}"
            );
            assert_ring_as_recorded(&r, &got);
        }
        if seed == 14 {
            assert!(r.rotations > 0, "{r:?}");
            assert!(r.devices.appends_past_full > 0, "{r:?}");
        }
    }
}

/// The device scenario's recording does not depend on the engine's tier: the port and MMIO
/// accesses that start commands, the budget stops where the devices act, and so every file,
/// come out the same when every block of the kernel runs compiled.
#[test]
fn the_device_recording_does_not_depend_on_the_tier() {
    let a = recording();
    let b = build_recording(
        &Scenario {
            policy: krr_jit::TierPolicy::CompileAll,
            ..Scenario::devices()
        },
        &dir("tiered"),
    );
    assert_eq!(a.final_state, b.final_state);
    assert_eq!(a.devices, b.devices);
    for f in ["kernel_rr.log", "test1", IDE_LOG, NVME_LOG, NET_LOG] {
        let same = std::fs::read(a.dir.join(f)).unwrap() == std::fs::read(b.dir.join(f)).unwrap();
        assert!(same, "{f} differs");
    }
}

/// The PTE USER-bit check (krr-spec 3.5 PTE) is exercised: the page-fault handler reads the
/// not-present PTE of the faulting page through `rr_read_pte` (no event: the agent records
/// only PTEs with the USER bit), and a later PTE event has that very pointer (the page
/// unmapped again). A replayer without the check would take that later event at the fault;
/// this recording replays to its state (above), so the check held.
#[test]
fn the_pte_user_bit_check_is_exercised() {
    let r = recording();
    let log = KrrLog::open(&r.log).unwrap();
    let user_pt = krr_synth::machine::DIRECT_MAP + krr_synth::machine::USER_PT_PA;
    let fb = krr_synth::machine::FAULT_BASE;
    let pte_of = |a: u64| user_pt + ((a >> 12) & 511) * 8;
    let cases = log
        .events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            Event::Exception(x) if x.exception_index == 14 && x.cr2 >= fb => Some((i, x.cr2)),
            _ => None,
        })
        .filter(|&(i, cr2)| {
            log.events[i + 1..]
                .iter()
                .any(|e| matches!(e, Event::Pte(p) if p.ptr == pte_of(cr2)))
        })
        .count();
    assert!(cases > 0, "no fault whose PTE is recorded later");
}
