//! Round trips of KRR's file formats: the test writer (tests/krr_rec_writer, from the spec's
//! layouts) writes every event type, DMA and network logs, checkpoints and migration streams;
//! krr's readers must give back what was written. Also: located errors, the files found
//! beside a snapshot, and `krr info --krr`.

mod krr_rec_writer;

use krr::krr_rec::checkpoint::{self, Checkpoint, CheckpointSeg};
use krr::krr_rec::dma::{DmaEntry, DmaLog, DmaSg};
use krr::krr_rec::events::*;
use krr::krr_rec::migration::Snapshot;
use krr::krr_rec::recording::{Recording, RecordingFiles};
use krr::krr_rec::KrrError;
use krr_rec_writer as w;
use krr_rec_writer::migration as wm;
use std::io::Cursor;
use std::path::{Path, PathBuf};

fn regs(seed: u64) -> KvmRegs {
    KvmRegs {
        rax: seed,
        rbx: seed + 1,
        rcx: seed + 2,
        rdx: seed + 3,
        rsi: seed + 4,
        rdi: seed + 5,
        rsp: seed + 6,
        rbp: seed + 7,
        r: std::array::from_fn(|i| seed + 8 + i as u64),
        rip: 0xffff_ffff_8100_0000 + seed,
        rflags: 0x246,
    }
}

/// One event of every type (and the variants the spec distinguishes).
pub fn all_events() -> Vec<Event> {
    vec![
        Event::Interrupt(Interrupt {
            id: 0,
            vector: 0xec,
            ecx: 0,
            from: 0,
            spin_count: 0,
            inst_cnt: 123_456,
            rip: 0xffff_ffff_8100_1234,
            regs: regs(0x100),
        }),
        Event::Interrupt(Interrupt {
            id: 1,
            vector: 0x22,
            ecx: 7,
            from: 3,
            spin_count: 42,
            inst_cnt: 99,
            rip: 0xffff_ffff_8100_5678,
            regs: regs(0x200),
        }),
        Event::Exception(Exception {
            id: 0,
            exception_index: 14,
            error_code: 6,
            cr2: 0x7f12_3456_7000,
            cr3: 0,
            regs: regs(0x300),
            spin_count: 3,
            inst_cnt: 0,
        }),
        Event::Syscall(Syscall {
            id: 0,
            regs: regs(0x400),
            kernel_gsbase: 0,
            msr_gsbase: 0,
            cr3: 0x1234_5000,
            spin_count: 1,
        }),
        Event::IoIn(IoInput {
            id: 0,
            value: 0x60,
            inst_cnt: 1000,
            rip: 0xffff_ffff_8150_0000,
        }),
        Event::Cfu(Cfu {
            id: 0,
            src_addr: 0x7ffd_0000_1000,
            dest_addr: 0xffff_8880_0100_0000,
            data: b"hello, kernel\0".to_vec(),
        }),
        Event::Cfu(Cfu {
            id: 0,
            src_addr: 0xffff_8880_0200_0000,
            dest_addr: 0,
            data: (0..4096).map(|i| (i % 251) as u8).collect(),
        }),
        Event::Cfu(Cfu {
            id: 0,
            src_addr: 0,
            dest_addr: 0,
            data: vec![],
        }),
        Event::Random(Random {
            id: 0,
            buf: 0x7fff_0000,
            len: 16,
            data: (0..1024).map(|i| i as u8).collect(),
        }),
        Event::Rdtsc(IoInput {
            id: 0,
            value: 0x1234_5678_9abc,
            inst_cnt: 2000,
            rip: 0xffff_ffff_8102_0000,
        }),
        Event::DmaDone { id: 0, inst_cnt: 0 },
        Event::Gfu(Gfu {
            id: 0,
            val: 0xdead,
            ptr: 0x7ffd_0000_2000,
            size: 4,
        }),
        Event::Strnlen((0..48).collect()),
        Event::Rdseed(Gfu {
            id: 0,
            val: 0x0123_4567_89ab_cdef,
            ptr: 0,
            size: 0,
        }),
        Event::Release(Node {
            id: 1,
            spin_count: 5,
            inst_cnt: 77,
        }),
        Event::InstSync(Node {
            id: 0,
            spin_count: 9,
            inst_cnt: 5000,
        }),
        Event::Mmio(IoInput {
            id: 0,
            value: 0x8000_0000,
            inst_cnt: 0,
            rip: 0,
        }),
        Event::Pte(Gfu {
            id: 0,
            val: 0x8000_0000_1234_5067,
            ptr: 0xffff_8880_0300_0ff8,
            size: 8,
        }),
    ]
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("krr-rec-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn spec_layout_offsets() {
    w::assert_spec_layout();
}

#[test]
fn every_event_type_round_trips() {
    let events = all_events();
    // Every type number 0..=14 is covered.
    let mut seen = [false; 15];
    for e in &events {
        seen[e.type_number() as usize] = true;
    }
    assert!(seen.iter().all(|&s| s), "{seen:?}");
    let init = w::header(0, 1);
    let fin = w::header(events.len() as u32, 1);
    let bytes = w::log_bytes(&init, &fin, &events);
    let log = KrrLog::parse(&bytes, Path::new("kernel_rr.log")).unwrap();
    assert_eq!(log.events, events);
    let (i, f) = log.headers.unwrap();
    assert_eq!((i, f), (init, fin));
    assert_eq!(log.ring_bytes(), Some(4 << 30));
    assert_eq!(log.count_note(), None);
    // Each event alone, too, at its offset.
    let mut at = 96;
    for (k, e) in events.iter().enumerate() {
        assert_eq!(log.offsets[k], at);
        at += w::event_bytes(e).len() as u64;
    }
    // The counts by type.
    assert_eq!(log.counts()[0], 2);
    assert_eq!(log.counts()[4], 3);
    // KRR's final header says current_pos events; a disagreement is reported, not fatal.
    let bytes = w::log_bytes(&init, &w::header(events.len() as u32 + 1, 1), &events);
    let log = KrrLog::parse(&bytes, Path::new("kernel_rr.log")).unwrap();
    assert!(log.count_note().unwrap().contains("final header counts 19"));
}

#[test]
fn empty_log_is_zero_events_and_bad_logs_are_located() {
    let log = KrrLog::parse(&[], Path::new("kernel_rr.log")).unwrap();
    assert!(log.events.is_empty() && log.headers.is_none());
    let bytes = w::log_bytes(&w::header(0, 1), &w::header(0, 1), &[]);
    let log = KrrLog::parse(&bytes, Path::new("kernel_rr.log")).unwrap();
    assert!(log.events.is_empty() && log.headers.is_some());
    // An unknown type: file, offset and event index in one line.
    let ev = all_events();
    let mut bytes = w::log_bytes(&w::header(0, 1), &w::header(3, 1), &ev[..3]);
    let at = bytes.len();
    bytes.extend_from_slice(&99u32.to_le_bytes());
    let e = KrrLog::parse(&bytes, Path::new("/r/kernel_rr.log")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("/r/kernel_rr.log: byte {at}, event 3: unknown event type 99")
    );
    // A CFU whose length runs past the end: no allocation of the length, a located error.
    let mut bytes = w::log_bytes(&w::header(0, 1), &w::header(1, 1), &ev[5..6]);
    bytes[96 + 4 + 24..96 + 4 + 32].copy_from_slice(&(16u64 << 30).to_le_bytes());
    let e = KrrLog::parse(&bytes, Path::new("kernel_rr.log")).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("event 0") && s.contains("CFU data needs 17179869184 bytes"),
        "{s}"
    );
    assert!(!s.contains('\n'));
    match e {
        KrrError::Truncated { at, .. } => assert_eq!((at.offset, at.index), (96 + 52, Some(0))),
        other => panic!("{other:?}"),
    }
}

fn dma_sample() -> Vec<DmaEntry> {
    vec![
        DmaEntry {
            inst_cnt: 0,
            rip: 0,
            follow_num: 0,
            cpu_id: 0,
            owner_id: 0,
            dev_type: 0,
            dev_index: 0,
            sgs: vec![
                DmaSg {
                    addr: 0x10_0000,
                    data: vec![1; 512],
                },
                DmaSg {
                    addr: 0x20_0000,
                    data: vec![2; 1024],
                },
            ],
            offset: 0,
        },
        DmaEntry {
            inst_cnt: 12345,
            rip: 0,
            follow_num: 17,
            cpu_id: 1,
            owner_id: 1,
            dev_type: 2,
            dev_index: 0,
            sgs: vec![DmaSg {
                addr: 0x30_0000,
                data: vec![3; 16],
            }],
            offset: 96 + 48 + 512 + 48 + 1024,
        },
        DmaEntry {
            inst_cnt: 5,
            rip: 0,
            follow_num: 0,
            cpu_id: 0,
            owner_id: 0,
            dev_type: 1,
            dev_index: 0,
            sgs: vec![],
            offset: 96 + 48 + 512 + 48 + 1024 + 96 + 48 + 16,
        },
    ]
}

#[test]
fn dma_and_network_logs_round_trip() {
    let entries = dma_sample();
    let bytes = w::dma_bytes(&entries);
    let log = DmaLog::parse(&bytes, Path::new("kernel_rr_dma-9.log")).unwrap();
    assert_eq!(log.entries, entries);
    assert_eq!(log.bytes(), 512 + 1024 + 16);
    assert!(DmaLog::parse(&[], Path::new("x"))
        .unwrap()
        .entries
        .is_empty());
    // A negative SG count, located at its entry.
    let mut bad = bytes.clone();
    let second = entries[1].offset as usize;
    bad[second..second + 4].copy_from_slice(&(-1i32).to_le_bytes());
    let e = DmaLog::parse(&bad, Path::new("kernel_rr_network.log")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("kernel_rr_network.log: byte {second}, event 1: negative SG count -1")
    );
}

fn checkpoint_sample() -> Vec<Checkpoint> {
    (0..3)
        .map(|i| Checkpoint {
            inst_cnt: 1000 * i,
            rip: 0xffff_ffff_8100_0000 + i,
            regs: std::array::from_fn(|r| r as u64 * 0x100 + i),
            cr: [0x8005_0033, 0, 0x7f00_0000, 0x1000 + i, 0x3706f0],
            segs: std::array::from_fn(|s| CheckpointSeg {
                selector: s as u32 * 8,
                base: s as u64 * 0x1000,
                limit: 0xffff_ffff,
                flags: 0xa09b00,
            }),
            eflags: 0x246,
        })
        .collect()
}

#[test]
fn checkpoints_round_trip() {
    let cps = checkpoint_sample();
    let bytes = w::checkpoint_bytes(&cps);
    assert_eq!(bytes.len(), 3 * 344);
    assert_eq!(checkpoint::parse(&bytes, Path::new("c")).unwrap(), cps);
    let e = checkpoint::parse(&bytes[..700], Path::new("checkpoint-0")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("checkpoint-0: byte 688, event 2: truncated"),
        "{e}"
    );
}

fn read_stream(bytes: &[u8]) -> Result<Snapshot, KrrError> {
    Snapshot::read(&mut Cursor::new(bytes.to_vec()), Path::new("test1"))
}

fn check_sample(s: &Snapshot, ram: u64, n: u32) {
    assert_eq!(s.machine, "pc-i440fx-7.0");
    assert_eq!(s.ram.size, ram);
    assert_eq!(s.ram_total, ram + 0x40000 + 0x100_0000);
    assert_eq!(s.ram_blocks.len(), 3);
    assert_eq!(s.vcpus.len(), n as usize);
    for i in 0..n {
        let v = &s.vcpus[i as usize];
        assert_eq!(v.index, i);
        assert_eq!(v.cpu, wm::sample_cpu(i));
        assert_eq!(v.common.as_ref().unwrap().halted, (i > 0) as u32);
        assert_eq!(s.apic(i).unwrap(), &wm::sample_apic(i as u8));
        assert_eq!(v.cpu.tsc_deadline(), Some(0x1234_5678));
        assert_eq!(v.cpu.pkru(), Some(0x5555_5554));
        assert_eq!(v.cpu.cpl(), 0);
    }
    assert_eq!(s.ivshmem.as_ref().unwrap().bar2(), 0xf_0000_0000);
    let [master, slave] = wm::sample_pics();
    assert_eq!((s.pic(0), s.pic(1)), (Some(&master), Some(&slave)));
    assert_eq!(s.ioapic.as_ref(), Some(&wm::sample_ioapic()));
    // Pages: the last copy wins, zero pages with a fill byte, other blocks not kept.
    let mut b = [0u8; 16];
    assert!(s.ram.read_gpa(0, &mut b));
    assert_eq!(b, [0xab; 16]);
    assert!(s.ram.read_gpa(0x2ff8, &mut b));
    assert_eq!(b[..8], [0x5a; 8]);
    assert_eq!(b[8..], [0, 1, 2, 3, 4, 5, 6, 7]);
    assert!(s.ram.read_gpa(0x1000, &mut b));
    assert_eq!(b, [0; 16]);
    // The last page of pc.ram: below 4 GiB for small guests, above for large ones.
    let last = s.ram.gpa_of(ram - 0x1000).unwrap();
    if ram >= 0xE000_0000 {
        assert_eq!(s.ram.below_4g(), 0xC000_0000);
        assert_eq!(last, 0x1_0000_0000 + (ram - 0xC000_0000) - 0x1000);
        assert!(
            !s.ram.read_gpa(0xC000_0000, &mut b),
            "the PCI hole is not RAM"
        );
    } else {
        assert_eq!(last, ram - 0x1000);
    }
    assert!(s.ram.read_gpa(last, &mut b));
    assert_eq!(b, [0xcc; 16]);
    assert_eq!(s.ram.pages.len(), 4);
}

#[test]
fn migration_stream_round_trips() {
    for (ram, n) in [(512u64 << 20, 1), (2 << 30, 2), (4 << 30, 2), (6 << 30, 1)] {
        let st = wm::sample_stream(ram, n);
        let bytes = st.bytes();
        let s = read_stream(&bytes).unwrap();
        check_sample(&s, ram, n);
        assert!(s.described);
        // Stream A ends before KRR's second stream.
        let mut a = st.clone();
        a.second_stream = false;
        assert_eq!(s.end, a.bytes().len() as u64);
        assert!(s.end < s.file_len);
        assert_eq!(s.sections.iter().filter(|x| !x.read).count(), 3);
    }
}

#[test]
fn migration_stream_without_description_or_footers() {
    // Without the JSON only the known sections can be read.
    let mut st = wm::sample_stream(1 << 30, 2);
    st.vmdesc = false;
    let e = read_stream(&st.bytes()).unwrap_err().to_string();
    assert!(
        e.contains("device section `timer` instance 0: its layout is not known"),
        "{e}"
    );
    st.devices
        .retain(|d| !d.subsections.iter().any(|s| s.name.ends_with("/sub")));
    let s = read_stream(&st.bytes()).unwrap();
    check_sample(&s, 1 << 30, 2);
    assert!(!s.described);
    // Older machine types have no footers.
    st.footers = false;
    check_sample(&read_stream(&st.bytes()).unwrap(), 1 << 30, 2);
}

#[test]
fn migration_stream_errors_are_located() {
    let st = wm::sample_stream(1 << 30, 1);
    let bytes = st.bytes();
    // Bad magic.
    let mut b = bytes.clone();
    b[0] = 0;
    assert_eq!(
        read_stream(&b).unwrap_err().to_string(),
        "test1: byte 0: not a QEMU migration stream (magic 0x0045564d)"
    );
    // A description that disagrees with krr's layout of a known section.
    let mut st2 = st.clone();
    let cpu = st2.devices.iter_mut().find(|d| d.name == "cpu").unwrap();
    cpu.fields.push(0);
    let e = read_stream(&st2.bytes()).unwrap_err().to_string();
    // (1818 bytes of fields and 78 of subsections described; krr reads 1817 and finds no
    // subsection after them.)
    assert!(
        e.contains("section `cpu` instance 0: 1817 bytes read, the stream's description says 1896"),
        "{e}"
    );
    // A description that gives a skipped section the wrong size: caught at its footer.
    let mut plain = st.clone();
    plain.vmdesc = false;
    plain.second_stream = false;
    let mut bytes4 = plain.bytes();
    let mut wrong = st.clone();
    let timer = wrong
        .devices
        .iter_mut()
        .find(|d| d.name == "timer")
        .unwrap();
    timer.fields.push(0x42);
    let json = wrong.json();
    bytes4.push(0x06);
    bytes4.extend_from_slice(&(json.len() as u32).to_be_bytes());
    bytes4.extend_from_slice(json.as_bytes());
    let e = read_stream(&bytes4).unwrap_err().to_string();
    assert!(
        e.contains("has no footer where the stream's other sections have one"),
        "{e}"
    );
    // A page outside its block.
    let mut st3 = st.clone();
    st3.pages
        .push(("pc.bios".into(), 0x40000, wm::Page::Zero(0)));
    let e = read_stream(&st3.bytes()).unwrap_err().to_string();
    assert!(
        e.contains("page at 0x40000 is outside RAM block `pc.bios`"),
        "{e}"
    );
    // Truncated: names the offset.
    let e = read_stream(&bytes[..100]).unwrap_err();
    assert!(e.location().unwrap().offset <= 100);
    assert!(e.to_string().starts_with("test1: byte "), "{e}");
}

#[test]
fn recording_files_beside_the_snapshot() {
    let dir = tmpdir("beside");
    let st = wm::sample_stream(512 << 20, 2);
    std::fs::write(dir.join("test1"), st.bytes()).unwrap();
    let files = RecordingFiles::beside(&dir.join("test1")).unwrap();
    assert!(files.events.is_none());
    // A missing kernel_rr.log: zero events; an empty one: zero events.
    let r = Recording::open(files).unwrap();
    assert!(r.log.events.is_empty());
    std::fs::write(dir.join("kernel_rr.log"), []).unwrap();
    let r = Recording::open(RecordingFiles::beside(&dir.join("test1")).unwrap()).unwrap();
    assert!(r.files.events.is_some() && r.log.events.is_empty());
    // All the files.
    let ev = all_events();
    std::fs::write(
        dir.join("kernel_rr.log"),
        w::log_bytes(&w::header(0, 1), &w::header(ev.len() as u32, 1), &ev),
    )
    .unwrap();
    std::fs::write(
        dir.join("kernel_rr_dma-9.log"),
        w::dma_bytes(&dma_sample()[..1]),
    )
    .unwrap();
    std::fs::write(dir.join("kernel_rr_dma.log"), w::dma_bytes(&[])).unwrap();
    std::fs::write(
        dir.join("kernel_rr_network.log"),
        w::dma_bytes(&dma_sample()[1..2]),
    )
    .unwrap();
    std::fs::write(
        dir.join("checkpoint-0"),
        w::checkpoint_bytes(&checkpoint_sample()),
    )
    .unwrap();
    let r = Recording::open(RecordingFiles::beside(&dir.join("test1")).unwrap()).unwrap();
    assert_eq!(r.log.events, ev);
    assert_eq!(r.dma.len(), 2);
    assert_eq!(r.dma[0].0, None);
    assert_eq!(r.dma[1].0, Some(9));
    assert_eq!(r.dma[1].1.entries.len(), 1);
    assert_eq!(r.network.as_ref().unwrap().entries.len(), 1);
    assert_eq!(r.checkpoints[0].1.len(), 3);
    // `krr info --krr`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["info", "--krr"])
        .arg(dir.join("test1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "machine: pc-i440fx-7.0, 512 MiB RAM",
        "2 vCPU(s)",
        "vCPU 0: RIP 0xffffffff81000000",
        "vCPU 1: RIP 0xffffffff81001000",
        "halted",
        "APIC id 1",
        "ivshmem: 0000:00:04.0/ivshmem-plain BAR2 at 0xf00000000",
        "ring: 4294967296 bytes",
        "Interrupt: 2",
        "CFU: 3",
        "Total Events: 18",
        "instructions: vCPU 0: counts 1000..123456",
        "instructions: vCPU 1: counts 77..99",
        "kernel_rr_dma-9.log: 1 entries, 1536 bytes of data",
        "kernel_rr_network.log: 1 entries, 16 bytes of data",
        "checkpoint-0: 3 checkpoints",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // A broken log: one line naming the file, offset and event.
    let mut b = std::fs::read(dir.join("kernel_rr.log")).unwrap();
    b.truncate(b.len() - 3);
    std::fs::write(dir.join("kernel_rr.log"), b).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_krr"))
        .args(["info", "--krr"])
        .arg(dir.join("test1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel_rr.log: byte ") && err.contains("event 17: truncated"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
