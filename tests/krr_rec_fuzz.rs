//! Fuzzing of the KRR readers (src/krr_rec/), as tests/trace_fuzz.rs fuzzes krr's own trace
//! reader: inputs written by the test writer (tests/krr_rec_writer: a `kernel_rr.log` with
//! every event type, a DMA log, checkpoints, a migration stream with KRR's second stream and
//! one without a description), then (1) cut at every offset, (2) mutated at random: bytes
//! flipped, fields set to interesting values (0, -1, huge lengths), ranges dropped or
//! duplicated. Every case must give Ok or a located error (file, offset); no panic, no hang
//! (a case slower than `CASE_TIMEOUT` fails the test).
//!
//! `KRR_FUZZ_CASES` (default 2000 per reader) or `KRR_FUZZ_SECONDS` (per reader) set the
//! random cases; `KRR_FUZZ_SEED` the sequence (default fixed). `KRR_FUZZ_KRR_FILES` adds
//! real files, colon-separated, as `KIND=PATH` with KIND one of log, dma, checkpoint,
//! snapshot (e.g. a QEMU 7.2 stream); a failing input is kept in the temporary directory and
//! named in the failure.

mod krr_rec_writer;

mod fuzz_rng;
use fuzz_rng::Rng;
use krr::krr_rec::checkpoint;
use krr::krr_rec::dma::{DmaEntry, DmaLog, DmaSg};
use krr::krr_rec::events::*;
use krr::krr_rec::migration::Snapshot;
use krr::krr_rec::KrrError;
use krr_rec_writer as w;
use krr_rec_writer::migration as wm;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const CASE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Log,
    Dma,
    Checkpoint,
    Snapshot,
}

/// Read `bytes` as `kind`: Ok(()) or a located error; a panic propagates.
fn read(kind: Kind, bytes: &[u8]) -> Result<(), KrrError> {
    let name = Path::new("fuzzed");
    match kind {
        Kind::Log => KrrLog::parse(bytes, name).map(|_| ()),
        Kind::Dma => DmaLog::parse(bytes, name).map(|_| ()),
        Kind::Checkpoint => checkpoint::parse(bytes, name).map(|_| ()),
        Kind::Snapshot => Snapshot::read(&mut Cursor::new(bytes), name).map(|s| {
            // Use what was read: RAM lookups at both ends of every range.
            let mut b = [0u8; 8];
            for (start, len) in s.ram.gpa_ranges() {
                s.ram.read_gpa(start, &mut b);
                s.ram.read_gpa(start + len.saturating_sub(4), &mut b);
            }
            for v in &s.vcpus {
                let _ = (v.cpu.cpl(), v.cpu.fpu_pointers(), v.cpu.tsc_deadline());
            }
            if let Some(i) = &s.ivshmem {
                let _ = i.bar2();
            }
        }),
    }
}

fn check_error(kind: Kind, bytes: &[u8], r: &Result<(), KrrError>) {
    if let Err(e) = r {
        let s = e.to_string();
        assert!(!s.contains('\n'), "{kind:?}: multi-line error: {s}");
        if let Some(at) = e.location() {
            assert!(
                at.offset <= bytes.len() as u64,
                "{kind:?}: error offset {} past the end ({}): {s}",
                at.offset,
                bytes.len()
            );
            assert!(s.starts_with("fuzzed: byte "), "{s}");
        }
    }
}

fn interesting(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << 34,
        3 => 0x7fff_ffff,
        4 => 0x8000_0000,
        5 => 4096,
        6 => rng.below(32) as u64,
        _ => rng.next(),
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            break;
        }
        let at = rng.below(b.len());
        match rng.below(6) {
            0 | 1 => b[at] ^= 1 << rng.below(8),
            2 => b[at] = rng.next() as u8,
            3 => {
                // A 4- or 8-byte field, either byte order.
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let v = interesting(rng);
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let at = at.min(b.len().saturating_sub(width));
                let n = width.min(b.len() - at);
                let src = if bytes[0] == 0 && width == 4 {
                    &bytes[4..]
                } else {
                    &bytes[..]
                };
                b[at..at + n].copy_from_slice(&src[..n]);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                let copy = b[at..end].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, copy);
            }
        }
    }
    b
}

/// Run the cases of one reader in a worker, each within `CASE_TIMEOUT`.
fn fuzz(kind: Kind, base: Vec<u8>, truncate_all: bool) -> usize {
    let seed: u64 = std::env::var("KRR_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x6b72_7266_757a_7a31);
    let cases: usize = std::env::var("KRR_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let seconds: Option<u64> = std::env::var("KRR_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    // The base input reads.
    read(kind, &base).unwrap_or_else(|e| panic!("{kind:?}: the unmutated input: {e}"));
    let current = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Result<usize, String>>();
    let cur = current.clone();
    let worker = std::thread::spawn(move || {
        let mut rng = Rng(seed ^ kind as u64);
        let started = Instant::now();
        let mut n = 0;
        let run = |input: Vec<u8>, n: &mut usize| -> bool {
            *cur.lock().unwrap() = input.clone();
            let r = catch_unwind(AssertUnwindSafe(|| {
                let r = read(kind, &input);
                check_error(kind, &input, &r);
            }));
            *n += 1;
            let ok = r.is_ok();
            let _ = tx.send(if ok {
                Ok(*n)
            } else {
                Err(format!("{kind:?}: case {n} panicked"))
            });
            ok
        };
        if truncate_all {
            for cut in 0..base.len() {
                if !run(base[..cut].to_vec(), &mut n) {
                    return;
                }
            }
        } else {
            // Large inputs: 200 cuts spread over the file.
            for k in 0..200 {
                if !run(base[..base.len() * k / 200].to_vec(), &mut n) {
                    return;
                }
            }
        }
        let mut random = 0;
        loop {
            let more = match seconds {
                Some(s) => started.elapsed() < Duration::from_secs(s),
                None => random < cases,
            };
            if !more {
                break;
            }
            let input = mutate(&mut rng, &base);
            if !run(input, &mut n) {
                return;
            }
            random += 1;
        }
    });
    let mut done = 0;
    loop {
        match rx.recv_timeout(CASE_TIMEOUT) {
            Ok(Ok(n)) => done = n,
            Ok(Err(msg)) => {
                let path = std::env::temp_dir()
                    .join(format!("krr-rec-fuzz-{}-{kind:?}.bin", std::process::id()));
                std::fs::write(&path, &*current.lock().unwrap()).unwrap();
                panic!("{msg}; input kept in {}", path.display());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let path = std::env::temp_dir().join(format!(
                    "krr-rec-fuzz-{}-{kind:?}-hang.bin",
                    std::process::id()
                ));
                std::fs::write(&path, &*current.lock().unwrap()).unwrap();
                panic!(
                    "{kind:?}: a case took over {CASE_TIMEOUT:?} (after {done} cases); input kept in {}",
                    path.display()
                );
            }
        }
    }
    worker.join().unwrap();
    eprintln!("{kind:?}: {done} cases");
    done
}

fn events() -> Vec<Event> {
    let regs = KvmRegs {
        rip: 0xffff_ffff_8100_0000,
        rflags: 0x246,
        ..KvmRegs::default()
    };
    let io = IoInput {
        id: 0,
        value: 0x60,
        inst_cnt: 1000,
        rip: 0xffff_ffff_8150_0000,
    };
    let g = Gfu {
        id: 0,
        val: 1,
        ptr: 0x7ffd_0000_2000,
        size: 4,
    };
    let n = Node {
        id: 0,
        spin_count: 1,
        inst_cnt: 10,
    };
    vec![
        Event::Interrupt(Interrupt {
            id: 0,
            vector: 0xec,
            ecx: 0,
            from: 0,
            spin_count: 0,
            inst_cnt: 5,
            rip: 0xffff_ffff_8100_1234,
            regs,
        }),
        Event::Exception(Exception {
            id: 0,
            exception_index: 14,
            error_code: 6,
            cr2: 0x7f00_0000,
            cr3: 0,
            regs,
            spin_count: 0,
            inst_cnt: 0,
        }),
        Event::Syscall(Syscall {
            id: 0,
            regs,
            kernel_gsbase: 0,
            msr_gsbase: 0,
            cr3: 0x1000,
            spin_count: 0,
        }),
        Event::IoIn(io),
        Event::Cfu(Cfu {
            id: 0,
            src_addr: 0x7ffd_0000_1000,
            dest_addr: 0xffff_8880_0100_0000,
            data: b"fuzz me\0".to_vec(),
        }),
        Event::Random(Random {
            id: 0,
            buf: 0,
            len: 8,
            data: vec![7; 1024],
        }),
        Event::Rdtsc(io),
        Event::DmaDone { id: 0, inst_cnt: 0 },
        Event::Gfu(g),
        Event::Strnlen(vec![0; 48]),
        Event::Rdseed(g),
        Event::Release(n),
        Event::InstSync(n),
        Event::Mmio(io),
        Event::Pte(g),
    ]
}

#[test]
fn fuzzed_kernel_rr_logs_never_crash_the_reader() {
    let ev = events();
    let bytes = w::log_bytes(&w::header(0, 1), &w::header(ev.len() as u32, 1), &ev);
    assert!(fuzz(Kind::Log, bytes, true) > 1000);
}

#[test]
fn fuzzed_dma_logs_never_crash_the_reader() {
    let e = |n: usize| DmaEntry {
        inst_cnt: 1,
        rip: 0,
        follow_num: 2,
        cpu_id: 0,
        owner_id: 0,
        dev_type: 2,
        dev_index: 0,
        sgs: (0..n)
            .map(|i| DmaSg {
                addr: 0x1000 * i as u64,
                data: vec![i as u8; 24 + i],
            })
            .collect(),
        offset: 0,
    };
    let bytes = w::dma_bytes(&[e(2), e(0), e(1)]);
    assert!(fuzz(Kind::Dma, bytes, true) > 1000);
}

#[test]
fn fuzzed_checkpoints_never_crash_the_reader() {
    let cps: Vec<_> = (0..2)
        .map(|i| checkpoint::Checkpoint {
            inst_cnt: i,
            rip: i,
            regs: [i; 16],
            cr: [i; 5],
            segs: [checkpoint::CheckpointSeg::default(); 6],
            eflags: 2,
        })
        .collect();
    assert!(fuzz(Kind::Checkpoint, w::checkpoint_bytes(&cps), true) > 1000);
}

/// A small stream: one vCPU, few pages, 5 GiB of RAM announced (pages above 4 GiB).
fn small_stream() -> wm::Stream {
    let mut st = wm::sample_stream(5 << 30, 1);
    st.pages.retain(|(b, o, p)| {
        b == "pc.bios" || *o == 0x3000 || matches!(p, wm::Page::Zero(_)) || *o == (5 << 30) - 0x1000
    });
    st
}

#[test]
fn fuzzed_migration_streams_never_crash_the_reader() {
    let st = small_stream();
    let bytes = st.bytes();
    assert!(fuzz(Kind::Snapshot, bytes, true) > 1000);
    // Without the description (only known sections), and a real stream's layout of ivshmem.
    let mut st = small_stream();
    st.vmdesc = false;
    st.devices
        .retain(|d| !d.subsections.iter().any(|s| s.name.ends_with("/sub")));
    assert!(fuzz(Kind::Snapshot, st.bytes(), false) > 200);
}

#[test]
fn fuzzed_real_files_never_crash_the_readers() {
    let Ok(list) = std::env::var("KRR_FUZZ_KRR_FILES") else {
        eprintln!("KRR_FUZZ_KRR_FILES not set: no real files fuzzed");
        return;
    };
    for item in list.split(':').filter(|s| !s.is_empty()) {
        let (kind, path) = item.split_once('=').expect("KIND=PATH");
        let kind = match kind {
            "log" => Kind::Log,
            "dma" => Kind::Dma,
            "checkpoint" => Kind::Checkpoint,
            "snapshot" => Kind::Snapshot,
            k => panic!("unknown kind {k}"),
        };
        let bytes = std::fs::read(path).unwrap();
        let small = bytes.len() <= 64 << 10;
        fuzz(kind, bytes, small);
    }
}
