//! A structure-aware fuzzer for the trace reader. It records the demo guest (and reads any
//! traces named in `KRR_FUZZ_TRACES`, colon-separated, e.g. a Debian boot trace), then
//! mutates them field by field and byte by byte: section payloads, the event chunk headers,
//! the index, the end record, the config, the decompressed events of a chunk and the
//! decompressed RAM image (recompressed afterwards), whole sections dropped, duplicated or
//! swapped. Every section's length and checksum, the index's chunk offsets and the trailer
//! are recomputed so the mutations reach the decoders. Each case opens the trace, reads the
//! snapshot and decodes every event; a sample also replays a bounded number of instructions.
//! A case must give Ok or a clean Err: no panic, no abort, no hang.
//!
//! Cases: `KRR_FUZZ_CASES` (default 1000) or, when set, `KRR_FUZZ_SECONDS` of fuzzing;
//! `KRR_FUZZ_SEED` picks the random sequence (default: fixed, so CI is reproducible).
//! A failing input is kept in the temporary directory and named in the failure.

mod fuzz_rng;
use fuzz_rng::Rng;
use krr::demo_guest::record_demo_guest;
use krr::replay::{ReplayOptions, Replayer};
use krr::trace::{EventStream, TraceReader};
use krr_jit::EngineConfig;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HEADER_LEN: usize = 16;
const SECTION_HEADER_LEN: usize = 16;
const TRAILER_LEN: usize = 24;
const CHUNK_HEADER_LEN: usize = 40;
/// A case taking longer than this is a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);
/// Replayed cases stop after this many instructions.
const REPLAY_INSNS: u64 = 300_000;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("krr-fuzz-{}-{name}.trace", std::process::id()))
}

type Section = ([u8; 4], Vec<u8>);

/// A trace split into its parts.
#[derive(Clone)]
struct Parts {
    header: Vec<u8>,
    sections: Vec<Section>,
    trailer_magic: Vec<u8>,
}

fn split(bytes: &[u8]) -> Parts {
    let mut sections = Vec::new();
    let mut at = HEADER_LEN;
    while at + SECTION_HEADER_LEN <= bytes.len() - TRAILER_LEN {
        let tag: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
        let len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()) as usize;
        let body = at + SECTION_HEADER_LEN;
        sections.push((tag, bytes[body..body + len].to_vec()));
        at = body + len;
    }
    assert_eq!(at, bytes.len() - TRAILER_LEN, "not a finished trace");
    Parts {
        header: bytes[..HEADER_LEN].to_vec(),
        sections,
        trailer_magic: bytes[bytes.len() - 8..].to_vec(),
    }
}

/// Lay the parts out again: lengths, checksums, the index's chunk offsets (unless
/// `keep_index_offsets`) and the trailer's offsets recomputed.
fn assemble(p: &Parts, keep_index_offsets: bool) -> Vec<u8> {
    let mut out = p.header.clone();
    let mut offsets = Vec::new();
    let mut chunk_offsets = Vec::new();
    for (tag, payload) in &p.sections {
        let at = out.len() as u64;
        offsets.push(at);
        if tag == b"EVTS" {
            chunk_offsets.push(at);
        }
        let mut payload = payload.clone();
        if tag == b"INDX" && !keep_index_offsets {
            for (i, o) in chunk_offsets.iter().enumerate() {
                let e = 4 + i * 36;
                if e + 8 <= payload.len() {
                    payload[e..e + 8].copy_from_slice(&o.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(tag);
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
    }
    let n = offsets.len();
    let index = offsets.last().copied().unwrap_or(0);
    let end = if n >= 2 { offsets[n - 2] } else { 0 };
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&end.to_le_bytes());
    out.extend_from_slice(&p.trailer_magic);
    out
}

/// The fixed-width fields of a section's payload: (offset, width).
fn fields(tag: &[u8; 4], payload: &[u8]) -> Vec<(usize, usize)> {
    match tag {
        b"CONF" => {
            let mut v = Vec::new();
            let mut at = 0;
            let u32_at = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
            };
            v.push((at, 4));
            at += 4 + u32_at(at);
            v.push((at, 8)); // RAM bytes
            v.push((at + 8, 4)); // ns per instruction
            at += 12;
            v.push((at, 4)); // CPU model length
            at += 4 + u32_at(at);
            v.push((at, 4)); // CPUID entry count
            let n = u32_at(at);
            at += 4 + 24 * n.min(1000);
            v.push((at, 4)); // guest description length
            at += 4 + u32_at(at);
            v.push((at, 4)); // command line length
            at += 4 + u32_at(at);
            v.push((at, 8)); // checkpoint interval
            v
        }
        b"SNAP" => vec![(0, 4)],
        b"EVTS" => vec![(0, 8), (8, 4), (12, 8), (20, 8), (28, 8), (36, 4)],
        b"ENDS" => {
            let mut v = vec![
                (0, 1),
                (1, 4),
                (5, 8),
                (13, 8),
                (21, 8),
                (29, 8),
                (37, 8),
                (45, 4),
            ];
            v.extend((0..krr::trace::EventKind::ALL.len()).map(|i| (49 + 8 * i, 8)));
            v
        }
        b"INDX" => {
            let mut v = vec![(0, 4)];
            let n = (payload.len().saturating_sub(4)) / 36;
            for i in 0..n {
                let e = 4 + 36 * i;
                v.extend([(e, 8), (e + 8, 8), (e + 16, 4), (e + 20, 8), (e + 28, 8)]);
            }
            v
        }
        _ => Vec::new(),
    }
}

fn read_field(b: &[u8], at: usize, width: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..width].copy_from_slice(&b[at..at + width]);
    u64::from_le_bytes(a)
}

fn write_field(b: &mut [u8], at: usize, width: usize, v: u64) {
    if at + width <= b.len() {
        b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
    }
}

/// An interesting replacement for a field holding `orig` in a section of `len` bytes.
fn interesting(rng: &mut Rng, orig: u64, len: usize) -> u64 {
    let table = [
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        16,
        31,
        32,
        0x7f,
        0x80,
        0xff,
        0x100,
        0xfff,
        0x1000,
        0xffff,
        0x1_0000,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_fff0,
        0xffff_ffff,
        1 << 32,
        1 << 40,
        (1 << 40) + 4096,
        i64::MAX as u64,
        u64::MAX - 15,
        u64::MAX,
        len as u64,
        len as u64 + 1,
        orig.wrapping_add(1),
        orig.wrapping_sub(1),
        orig.wrapping_mul(2),
        orig / 2,
        orig ^ (1 << (rng.next() % 64)),
        rng.next(),
    ];
    table[rng.below(table.len())]
}

/// Byte-level damage to a buffer: flips, random bytes, interesting values at any offset,
/// truncation, insertion, deletion, duplication.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                b[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                b[at] = rng.next() as u8;
            }
            2 if len > 0 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(len);
                if at + width <= len {
                    let v = interesting(rng, read_field(b, at, width), len);
                    write_field(b, at, width, v);
                }
            }
            3 => b.truncate(rng.below(len + 1)),
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, fill);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                b.drain(at..at + n);
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = b[at..at + n].to_vec();
                let to = rng.below(len + 1);
                b.splice(to..to, copy);
            }
            _ if len > 0 => {
                let at = rng.below(len);
                b[at] = [0, 0xff, 0x80, 0x7f][rng.below(4)];
            }
            _ => b.push(rng.next() as u8),
        }
    }
}

/// Start offsets of the events in a chunk's raw bytes.
fn event_starts(raw: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        v.push(pos);
        if krr::trace::event::decode(raw, &mut pos, 0).is_err() {
            break;
        }
    }
    v
}

/// Damage the events inside a chunk: decompress, change them (a tag, a field of an event,
/// bytes), recompress; the header's raw length usually follows.
fn mutate_events(rng: &mut Rng, chunk: &mut Vec<u8>) -> &'static str {
    if chunk.len() < CHUNK_HEADER_LEN {
        return "short chunk";
    }
    let raw_len = read_field(chunk, 36, 4) as usize;
    let Ok(mut raw) = zstd::bulk::decompress(&chunk[CHUNK_HEADER_LEN..], raw_len) else {
        return "undecompressable chunk";
    };
    let starts = event_starts(&raw);
    let what = if !starts.is_empty() && rng.chance(70) {
        let s = starts[rng.below(starts.len())];
        let end = (s + 40).min(raw.len());
        match rng.below(4) {
            0 => {
                raw[s] = [
                    0,
                    10,
                    11,
                    12,
                    13,
                    0x7f,
                    0x81,
                    0x82,
                    0x83,
                    0x89,
                    0xff,
                    rng.next() as u8,
                ][rng.below(12)];
                "event tag"
            }
            1 => {
                // A field of the event: any width at any offset after the tag.
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = s + 1 + rng.below(end - s);
                if at + width <= raw.len() {
                    let v = interesting(rng, read_field(&raw, at, width), raw.len());
                    write_field(&mut raw, at, width, v);
                }
                "event field"
            }
            2 => {
                // The instruction-count delta: a long varint.
                let n = 1 + rng.below(11);
                let mut v: Vec<u8> = (0..n).map(|_| rng.next() as u8 | 0x80).collect();
                if rng.chance(70) {
                    *v.last_mut().unwrap() &= 0x7f;
                }
                raw.splice(s + 1..(s + 2).min(raw.len()), v);
                "event delta"
            }
            _ => {
                // Swap two events (instruction counts out of order).
                let t = starts[rng.below(starts.len())];
                let (a, b) = (s.min(t), s.max(t));
                if a != b {
                    let next = |x: usize| starts.iter().copied().find(|&y| y > x);
                    let a_end = next(a).unwrap_or(raw.len());
                    let b_end = next(b).unwrap_or(raw.len());
                    let ea = raw[a..a_end].to_vec();
                    let eb = raw[b..b_end].to_vec();
                    let mut r = raw[..a].to_vec();
                    r.extend_from_slice(&eb);
                    r.extend_from_slice(&raw[a_end..b]);
                    r.extend_from_slice(&ea);
                    r.extend_from_slice(&raw[b_end..]);
                    raw = r;
                }
                "event order"
            }
        }
    } else {
        mutate_bytes(rng, &mut raw);
        "event bytes"
    };
    let compressed = zstd::bulk::compress(&raw, 1).unwrap();
    chunk.truncate(CHUNK_HEADER_LEN);
    chunk.extend_from_slice(&compressed);
    if rng.chance(85) {
        write_field(chunk, 36, 4, raw.len() as u64);
    }
    what
}

/// Damage the RAM image's contents (bitmap and pages), recompressed.
fn mutate_ram(rng: &mut Rng, snap: &mut Vec<u8>) -> &'static str {
    if snap.len() < 4 {
        return "short snapshot";
    }
    let cpu_len = read_field(snap, 0, 4) as usize;
    let Some(image) = snap.get(4 + cpu_len..) else {
        return "bad snapshot";
    };
    let Ok(mut raw) = zstd::stream::decode_all(image) else {
        return "undecompressable RAM";
    };
    if rng.chance(50) && !raw.is_empty() {
        // The bitmap (at the start): mark or clear pages, or cut the image.
        let at = rng.below(raw.len().min(1024));
        match rng.below(3) {
            0 => raw[at] = 0xff,
            1 => raw[at] = 0,
            _ => raw.truncate(at),
        }
    } else {
        mutate_bytes(rng, &mut raw);
    }
    let compressed = zstd::bulk::compress(&raw, 1).unwrap();
    snap.truncate(4 + cpu_len);
    snap.extend_from_slice(&compressed);
    "RAM image"
}

/// One mutated trace from `base`, and what was done.
fn mutate(rng: &mut Rng, base: &Parts) -> (Vec<u8>, String) {
    let mut p = base.clone();
    let n = p.sections.len();
    let mut keep_index_offsets = false;
    let i = rng.below(n);
    let tag = String::from_utf8_lossy(&p.sections[i].0).into_owned();
    let what = match rng.below(10) {
        0..=2 => {
            let (t, payload) = &mut p.sections[i];
            let fs = fields(t, payload);
            let fs: Vec<_> = fs
                .into_iter()
                .filter(|&(at, w)| at + w <= payload.len())
                .collect();
            if fs.is_empty() {
                mutate_bytes(rng, payload);
                format!("{tag} bytes")
            } else {
                let (at, w) = fs[rng.below(fs.len())];
                let v = interesting(rng, read_field(payload, at, w), payload.len());
                write_field(payload, at, w, v);
                keep_index_offsets = t == b"INDX";
                format!("{tag} field at {at} ({w} bytes) = {v:#x}")
            }
        }
        3..=5 => {
            let chunks: Vec<usize> = (0..n).filter(|&k| &p.sections[k].0 == b"EVTS").collect();
            if chunks.is_empty() {
                mutate_bytes(rng, &mut p.sections[i].1);
                format!("{tag} bytes")
            } else {
                let k = chunks[rng.below(chunks.len())];
                let w = mutate_events(rng, &mut p.sections[k].1);
                format!("chunk {k}: {w}")
            }
        }
        6 if rng.chance(50) => {
            let w = mutate_ram(rng, &mut p.sections[1].1);
            w.to_string()
        }
        6 => {
            // A chunk's event count changed consistently in the chunk header, the index and
            // the end record's total, so it passes the framing checks.
            let chunks: Vec<usize> = (0..n).filter(|&k| &p.sections[k].0 == b"EVTS").collect();
            if chunks.is_empty() || &p.sections[n - 1].0 != b"INDX" {
                return (assemble(&p, false), "no chunks".into());
            }
            let c = rng.below(chunks.len());
            let k = chunks[c];
            let old = read_field(&p.sections[k].1, 8, 4);
            let new = interesting(rng, old, p.sections[k].1.len()) as u32 as u64;
            write_field(&mut p.sections[k].1, 8, 4, new);
            write_field(&mut p.sections[n - 1].1, 4 + 36 * c + 16, 4, new);
            // Later chunks' first event indexes follow.
            for (j, &kk) in chunks.iter().enumerate().skip(c + 1) {
                let delta = new.wrapping_sub(old);
                let f = read_field(&p.sections[kk].1, 0, 8).wrapping_add(delta);
                write_field(&mut p.sections[kk].1, 0, 8, f);
                write_field(&mut p.sections[n - 1].1, 4 + 36 * j + 8, 8, f);
            }
            let ends = &mut p.sections[n - 2].1;
            let kind = rng.below(krr::trace::EventKind::ALL.len());
            let v = read_field(ends, 49 + 8 * kind, 8).wrapping_add(new.wrapping_sub(old));
            write_field(ends, 49 + 8 * kind, 8, v);
            format!("chunk {k}: event count {old} -> {new} everywhere")
        }
        7 => {
            mutate_bytes(rng, &mut p.sections[i].1);
            format!("{tag} bytes")
        }
        8 => {
            // Structure: drop, duplicate or swap sections; change a tag.
            match rng.below(4) {
                0 => {
                    p.sections.remove(i);
                    format!("{tag} dropped")
                }
                1 => {
                    let s = p.sections[i].clone();
                    p.sections.insert(i, s);
                    format!("{tag} duplicated")
                }
                2 => {
                    let j = rng.below(n);
                    p.sections.swap(i, j);
                    format!("sections {i} and {j} swapped")
                }
                _ => {
                    let tags = [b"CONF", b"SNAP", b"EVTS", b"ENDS", b"INDX"];
                    p.sections[i].0 = *tags[rng.below(5)];
                    format!("{tag} retagged")
                }
            }
        }
        _ => {
            // Header or trailer bytes.
            let mut out = assemble(&p, false);
            let len = out.len();
            let at = if rng.chance(50) {
                rng.below(HEADER_LEN)
            } else {
                len - TRAILER_LEN + rng.below(TRAILER_LEN)
            };
            out[at] ^= 1 << rng.below(8);
            return (out, format!("header/trailer byte {at}"));
        }
    };
    // Sometimes a second, independent change.
    let mut out = assemble(&p, keep_index_offsets);
    let mut what = what;
    if rng.chance(10) {
        let len = out.len();
        let at = rng.below(len);
        out[at] ^= 1 << rng.below(8);
        what.push_str(&format!(", then byte {at} flipped"));
    }
    (out, what)
}

/// Open, read the snapshot, decode every event; with `replay`, replay a bounded number of
/// instructions. Err is fine; the caller catches panics.
fn exercise(path: &Path, replay: bool) -> Result<u64, String> {
    let mut r = TraceReader::open(path).map_err(|e| e.to_string())?;
    r.snapshot().map_err(|e| e.to_string())?;
    let mut s = EventStream::new(r);
    let mut n = 0u64;
    while s.next_event().map_err(|e| e.to_string())?.is_some() {
        n += 1;
    }
    if replay {
        let mut rp = Replayer::open(
            path,
            ReplayOptions {
                engine: EngineConfig::default(),
                stop_at: Some(REPLAY_INSNS),
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())?;
        rp.run(&indicatif::ProgressBar::hidden())
            .map_err(|e| e.to_string())?;
    }
    Ok(n)
}

#[test]
fn mutated_traces_never_crash_the_reader() {
    let demo = tmp("demo");
    record_demo_guest(EngineConfig::default(), &demo, false).unwrap();
    let mut bases = vec![(demo.clone(), std::fs::read(&demo).unwrap())];
    if let Ok(list) = std::env::var("KRR_FUZZ_TRACES") {
        for p in list.split(':').filter(|p| !p.is_empty()) {
            let b = std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            bases.push((PathBuf::from(p), b));
        }
    }
    let bases: Vec<(PathBuf, Parts)> = bases.into_iter().map(|(p, b)| (p, split(&b))).collect();
    // The unmutated traces read back (the fuzzer's own layout code is right).
    for (p, parts) in &bases {
        let again = tmp("again");
        std::fs::write(&again, assemble(parts, false)).unwrap();
        exercise(&again, false).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }

    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let seconds = env("KRR_FUZZ_SECONDS");
    let cases = env("KRR_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { 1000 });
    let seed = env("KRR_FUZZ_SEED").unwrap_or(0x6b72_7266_757a_7a31);
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));

    // Panics are findings: keep their messages quiet and collected.
    std::panic::set_hook(Box::new(|_| {}));
    let (tx, rx) = mpsc::channel::<(u64, String, Result<Result<u64, String>, String>)>();
    let (job_tx, job_rx) = mpsc::channel::<(u64, String, PathBuf, bool)>();
    let worker = std::thread::spawn(move || {
        for (case, what, path, replay) in job_rx {
            let r = catch_unwind(AssertUnwindSafe(|| exercise(&path, replay))).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into())
            });
            if tx.send((case, what, r)).is_err() {
                break;
            }
        }
    });

    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let start = Instant::now();
    let (mut ok, mut rejected, mut replayed) = (0u64, 0u64, 0u64);
    let mut findings = Vec::new();
    let case_path = tmp("case");
    let mut case = 0u64;
    while case < cases && deadline.is_none_or(|d| Instant::now() < d) {
        let (src, base) = &bases[rng.below(bases.len())];
        let (bytes, what) = mutate(&mut rng, base);
        std::fs::write(&case_path, &bytes).unwrap();
        let replay = case.is_multiple_of(16);
        job_tx
            .send((case, what.clone(), case_path.clone(), replay))
            .unwrap();
        match rx.recv_timeout(CASE_TIMEOUT) {
            Ok((_, _, Ok(Ok(_)))) => ok += 1,
            Ok((_, _, Ok(Err(_)))) => rejected += 1,
            Ok((_, what, Err(msg))) => {
                let keep = tmp(&format!("crash-{case}"));
                std::fs::copy(&case_path, &keep).unwrap();
                findings.push(format!(
                    "case {case} ({}, {what}): panic: {msg}; input kept at {}",
                    src.display(),
                    keep.display()
                ));
            }
            Err(_) => {
                let keep = tmp(&format!("hang-{case}"));
                std::fs::copy(&case_path, &keep).unwrap();
                let _ = std::panic::take_hook();
                panic!(
                    "case {case} ({}, {what}) ran over {CASE_TIMEOUT:?}; input kept at {}",
                    src.display(),
                    keep.display()
                );
            }
        }
        replayed += replay as u64;
        case += 1;
    }
    drop(job_tx);
    worker.join().unwrap();
    let _ = std::panic::take_hook();
    eprintln!(
        "trace fuzz: {case} cases in {:.1} s (seed {seed:#x}): {ok} accepted, {rejected} rejected cleanly, {replayed} with a replay, {} findings",
        start.elapsed().as_secs_f64(),
        findings.len()
    );
    let _ = std::fs::remove_file(&case_path);
    let _ = std::fs::remove_file(&demo);
    assert!(findings.is_empty(), "{}", findings.join("\n"));
}
