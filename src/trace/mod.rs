//! krr's trace file (docs/TRACE-FORMAT.md): a header, then length-prefixed, CRC-checked
//! sections: machine config, initial snapshot, event chunks (streamed while recording), the
//! end record, an index of the chunks, and a fixed trailer that points at the index.

pub mod bytes;
pub mod delta;
pub mod event;
mod reader;
pub mod state;
mod stream;
mod writer;

use bytes::{Put, Reader};
pub use event::{Event, EventCounts, EventData, EventKind};
use krr_runtime::cpuid::CpuidEntry;
pub use reader::{Snapshot, TraceReader};
pub use stream::{EventStream, StreamMark};
pub use writer::TraceWriter;

pub const MAGIC: &[u8; 8] = b"KRRTRACE";
pub const VERSION: u32 = 5;
/// The oldest version this krr reads (version 4 has no delta snapshots).
pub const OLDEST_VERSION: u32 = 4;
const HEADER_LEN: u64 = 16;
const TRAILER_MAGIC: &[u8; 8] = b"KRRTRAIL";
const TRAILER_LEN: u64 = 24;
/// tag + payload length + CRC32.
const SECTION_HEADER_LEN: u64 = 16;
/// Raw event bytes per chunk before it is compressed and written.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Config,
    Snapshot,
    Events,
    End,
    Index,
    Delta,
}

impl Tag {
    fn bytes(self) -> [u8; 4] {
        *match self {
            Tag::Config => b"CONF",
            Tag::Snapshot => b"SNAP",
            Tag::Events => b"EVTS",
            Tag::End => b"ENDS",
            Tag::Index => b"INDX",
            Tag::Delta => b"DSNP",
        }
    }
    fn from_bytes(b: [u8; 4]) -> Option<Tag> {
        [
            Tag::Config,
            Tag::Snapshot,
            Tag::Events,
            Tag::End,
            Tag::Index,
            Tag::Delta,
        ]
        .into_iter()
        .find(|t| t.bytes() == b)
    }
    pub fn name(self) -> &'static str {
        match self {
            Tag::Config => "config",
            Tag::Snapshot => "snapshot",
            Tag::Events => "event chunk",
            Tag::End => "end record",
            Tag::Index => "index",
            Tag::Delta => "delta snapshot",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: not a krr trace (bad magic)")]
    NotATrace { path: String },
    #[error("{path}: trace format version {found}, this krr reads versions {OLDEST_VERSION} to {VERSION} (re-record the trace with this krr)")]
    Version { path: String, found: u32 },
    #[error("{path}: truncated at offset {offset}: {what}")]
    Truncated {
        path: String,
        offset: u64,
        what: String,
    },
    #[error("{path}: {section} at offset {offset} fails its checksum (corrupt)")]
    Checksum {
        path: String,
        section: &'static str,
        offset: u64,
    },
    #[error("{path}: malformed {section} at offset {offset}: {what}")]
    Malformed {
        path: String,
        section: &'static str,
        offset: u64,
        what: String,
    },
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

/// What the recorded machine was: enough for replay and for `krr info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineInfo {
    pub krr_version: String,
    pub mem_bytes: u64,
    /// Virtual time: nanoseconds per retired instruction.
    pub ns_per_insn: u32,
    pub cpu_model: String,
    pub cpuid: Vec<CpuidEntry>,
    /// What was booted: free text (`kernel FILE, initrd FILE`, `built-in demo guest`).
    pub guest: String,
    pub cmdline: String,
    /// Recorder instructions between checkpoints.
    pub checkpoint_interval: u64,
}

impl MachineInfo {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.put_str(&self.krr_version);
        v.put_u64(self.mem_bytes);
        v.put_u32(self.ns_per_insn);
        v.put_str(&self.cpu_model);
        v.put_u32(self.cpuid.len() as u32);
        for e in &self.cpuid {
            for x in [e.leaf, e.subleaf, e.eax, e.ebx, e.ecx, e.edx] {
                v.put_u32(x);
            }
        }
        v.put_str(&self.guest);
        v.put_str(&self.cmdline);
        v.put_u64(self.checkpoint_interval);
        v
    }
    fn decode(data: &[u8]) -> Result<MachineInfo, String> {
        let mut r = Reader::new(data);
        let krr_version = r.string()?;
        let mem_bytes = r.u64()?;
        let ns_per_insn = r.u32()?;
        let cpu_model = r.string()?;
        let n = r.u32()? as usize;
        if n > krr_runtime::cpuid::CPUID_CAPACITY {
            return Err(format!(
                "{n} CPUID entries, at most {} fit",
                krr_runtime::cpuid::CPUID_CAPACITY
            ));
        }
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(CpuidEntry {
                leaf: r.u32()?,
                subleaf: r.u32()?,
                eax: r.u32()?,
                ebx: r.u32()?,
                ecx: r.u32()?,
                edx: r.u32()?,
            });
        }
        let info = MachineInfo {
            krr_version,
            mem_bytes,
            ns_per_insn,
            cpu_model,
            cpuid,
            guest: r.string()?,
            cmdline: r.string()?,
            checkpoint_interval: r.u64()?,
        };
        r.finish()?;
        if info.mem_bytes == 0 || !info.mem_bytes.is_multiple_of(4096) || info.mem_bytes > 1 << 40 {
            return Err(format!("RAM size {:#x} is not usable", info.mem_bytes));
        }
        Ok(info)
    }
}

/// How the recorded run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    PowerOff,
    Reset,
    DebugExit(u32),
    HaltedForever,
    InstructionLimit,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::PowerOff => write!(f, "guest powered off"),
            EndReason::Reset => write!(f, "guest reset the machine"),
            EndReason::DebugExit(c) => {
                write!(f, "guest exited through the debug port with status {c}")
            }
            EndReason::HaltedForever => write!(f, "guest halted with interrupts disabled"),
            EndReason::InstructionLimit => write!(f, "instruction limit reached"),
        }
    }
}

/// The end record: where the recording stopped and the state it stopped in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndInfo {
    pub reason: EndReason,
    pub icount: u64,
    pub rip: u64,
    pub regs_hash: u64,
    pub ram_hash: u64,
    /// Virtual time at the end (instructions plus time spent halted), in nanoseconds.
    pub guest_ns: u64,
    pub counts: EventCounts,
}

impl EndInfo {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let (code, arg) = match self.reason {
            EndReason::PowerOff => (1, 0),
            EndReason::Reset => (2, 0),
            EndReason::DebugExit(c) => (3, c),
            EndReason::HaltedForever => (4, 0),
            EndReason::InstructionLimit => (5, 0),
        };
        v.put_u8(code);
        v.put_u32(arg);
        for x in [
            self.icount,
            self.rip,
            self.regs_hash,
            self.ram_hash,
            self.guest_ns,
        ] {
            v.put_u64(x);
        }
        v.put_u32(self.counts.0.len() as u32);
        for c in self.counts.0 {
            v.put_u64(c);
        }
        v
    }
    fn decode(data: &[u8]) -> Result<EndInfo, String> {
        let mut r = Reader::new(data);
        let code = r.u8()?;
        let arg = r.u32()?;
        let reason = match code {
            1 => EndReason::PowerOff,
            2 => EndReason::Reset,
            3 => EndReason::DebugExit(arg),
            4 => EndReason::HaltedForever,
            5 => EndReason::InstructionLimit,
            c => return Err(format!("unknown end reason {c}")),
        };
        let mut f = [0u64; 5];
        for x in f.iter_mut() {
            *x = r.u64()?;
        }
        let n = r.u32()? as usize;
        let mut counts = EventCounts::default();
        if n != counts.0.len() {
            return Err(format!("{n} event kinds, expected {}", counts.0.len()));
        }
        for c in counts.0.iter_mut() {
            *c = r.u64()?;
        }
        r.finish()?;
        Ok(EndInfo {
            reason,
            icount: f[0],
            rip: f[1],
            regs_hash: f[2],
            ram_hash: f[3],
            guest_ns: f[4],
            counts,
        })
    }
}

/// One event chunk as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// File offset of the chunk's section header.
    pub offset: u64,
    pub first_event: u64,
    pub events: u32,
    pub first_icount: u64,
    pub last_icount: u64,
}

/// Chunk payload header: first event index, event count, the instruction count the first
/// event's delta is taken from, first and last instruction counts, raw (uncompressed) length.
const CHUNK_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 4;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn info() -> MachineInfo {
        MachineInfo {
            krr_version: "test".into(),
            mem_bytes: 1 << 20,
            ns_per_insn: 1,
            cpu_model: "krr-default".into(),
            cpuid: vec![CpuidEntry {
                leaf: 0,
                subleaf: u32::MAX,
                eax: 1,
                ebx: 2,
                ecx: 3,
                edx: 4,
            }],
            guest: "unit test".into(),
            cmdline: "console=ttyS0".into(),
            checkpoint_interval: 1000,
        }
    }

    /// A RAM image for `info()`'s 1 MiB: page 3 holds `fill`, the others are zero.
    fn ram_image(fill: u8) -> Vec<u8> {
        let mut raw = vec![0u8; 256 / 8];
        raw[0] = 1 << 3;
        raw.extend(std::iter::repeat_n(fill, 4096));
        zstd::bulk::compress(&raw, 3).unwrap()
    }

    /// A finished trace with `n` events spread over several chunks.
    fn write_trace(path: &Path, n: u64) -> (Vec<Event>, EndInfo) {
        let mut w = TraceWriter::create(path, &info(), b"cpu image", &ram_image(7), 0).unwrap();
        let mut events = Vec::new();
        for i in 0..n {
            let e = Event {
                icount: i * 3,
                rip: 0x1000 + (i % 7),
                data: if i % 5 == 0 {
                    EventData::Interrupt {
                        vector: 0x20,
                        rcx: i,
                    }
                } else {
                    EventData::PortIn {
                        port: 0x3fd,
                        size: 1,
                        value: (i * 2654435761) as u32,
                    }
                },
            };
            w.push(&e).unwrap();
            events.push(e);
        }
        let end = EndInfo {
            reason: EndReason::PowerOff,
            icount: n * 3,
            rip: 0x2000,
            regs_hash: 1,
            ram_hash: 2,
            guest_ns: n * 4,
            counts: EventCounts::default(),
        };
        w.finish(end.clone()).unwrap();
        (events, end)
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("krr-unit-{}-{name}.trace", std::process::id()))
    }

    #[test]
    fn a_written_trace_reads_back() {
        let path = tmp("roundtrip");
        // Enough events for several chunks.
        let (events, end) = write_trace(&path, 40_000);
        let mut r = TraceReader::open(&path).unwrap();
        assert_eq!(r.info, info());
        assert_eq!(r.end.icount, end.icount);
        assert_eq!(r.end.counts.total(), 40_000);
        assert_eq!(r.end.counts.get(EventKind::Interrupt), 8_000);
        assert!(r.index.len() > 1, "{} chunks", r.index.len());
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.cpu_image, b"cpu image");
        assert_eq!(snap.ram_image, ram_image(7));
        let mut s = EventStream::new(r);
        let mut got = Vec::new();
        while let Some(e) = s.next_event().unwrap() {
            got.push(e);
        }
        assert_eq!(got, events);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_read_ahead_follows_jumps_back_and_forth() {
        let path = tmp("jumps");
        let (events, _) = write_trace(&path, 60_000);
        let r = TraceReader::open(&path).unwrap();
        let chunks = r.index.len();
        assert!(chunks >= 4, "{chunks} chunks");
        let mut s = EventStream::new(r);
        let mut marks = Vec::new();
        for (i, e) in events.iter().enumerate().take(45_000) {
            if i % 10_000 == 0 {
                marks.push((i, s.mark()));
            }
            assert_eq!(s.next_event().unwrap().as_ref(), Some(e));
        }
        // Back to each mark (the read-ahead thread is then at another chunk), then forwards.
        for (i, m) in marks.iter().rev() {
            s.restore(m);
            for e in &events[*i..*i + 14_000] {
                assert_eq!(s.next_event().unwrap().as_ref(), Some(e));
            }
        }
        s.seek(35_000).unwrap();
        for e in &events[35_000..] {
            assert_eq!(s.next_event().unwrap().as_ref(), Some(e));
        }
        assert_eq!(s.next_event().unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_truncation_is_rejected_as_truncated() {
        let path = tmp("full");
        write_trace(&path, 3000);
        let bytes = std::fs::read(&path).unwrap();
        let cut_path = tmp("cut");
        // Every cut in the first and last 300 bytes and every 97th in between.
        let cuts = (1..bytes.len()).filter(|&c| c < 300 || c > bytes.len() - 300 || c % 97 == 0);
        for cut in cuts {
            std::fs::write(&cut_path, &bytes[..cut]).unwrap();
            match TraceReader::open(&cut_path) {
                Err(TraceError::Truncated { offset, .. }) => assert_eq!(offset, cut as u64),
                Err(e) => panic!("cut at {cut}: {e}"),
                Ok(_) => panic!("cut at {cut} was accepted"),
            }
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&cut_path).unwrap();
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let path = tmp("flip");
        write_trace(&path, 200);
        let bytes = std::fs::read(&path).unwrap();
        let bad = tmp("flipped");
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            std::fs::write(&bad, &b).unwrap();
            let err = match TraceReader::open(&bad) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("flipped byte at {at} was accepted"),
            };
            assert!(err.contains(&*bad.display().to_string()), "{err}");
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&bad).unwrap();
    }

    #[test]
    fn wrong_magic_and_version_are_named() {
        let path = tmp("version");
        write_trace(&path, 10);
        let mut b = std::fs::read(&path).unwrap();
        b[8] = 99;
        std::fs::write(&path, &b).unwrap();
        let e = TraceReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("version 99"), "{e}");
        b[0] = b'X';
        std::fs::write(&path, &b).unwrap();
        let e = TraceReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("not a krr trace"), "{e}");
        std::fs::write(&path, b"").unwrap();
        let e = TraceReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("not a krr trace"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    /// The sections of a trace file: tag and payload (header and trailer dropped).
    fn sections(bytes: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        let mut v = Vec::new();
        let mut at = HEADER_LEN as usize;
        while at + (SECTION_HEADER_LEN as usize) < bytes.len() - TRAILER_LEN as usize {
            let tag: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
            let len = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()) as usize;
            let body = at + SECTION_HEADER_LEN as usize;
            v.push((tag, bytes[body..body + len].to_vec()));
            at = body + len;
        }
        v
    }

    /// A trace file from sections: lengths, checksums, index offsets and trailer recomputed.
    fn assemble(bytes: &[u8], sections: &[([u8; 4], Vec<u8>)]) -> (Vec<u8>, Vec<u64>) {
        let mut out = bytes[..HEADER_LEN as usize].to_vec();
        let mut offsets = Vec::new();
        for (tag, payload) in sections {
            offsets.push(out.len() as u64);
            let mut payload = payload.clone();
            if tag == b"INDX" {
                let chunks: Vec<u64> = offsets
                    .iter()
                    .zip(sections)
                    .filter(|(_, s)| &s.0 == b"EVTS")
                    .map(|(o, _)| *o)
                    .collect();
                for (i, o) in chunks.iter().enumerate() {
                    let at = 4 + i * 36;
                    if at + 8 <= payload.len() {
                        payload[at..at + 8].copy_from_slice(&o.to_le_bytes());
                    }
                }
            }
            out.extend_from_slice(tag);
            out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            out.extend_from_slice(&payload);
        }
        let n = offsets.len();
        out.extend_from_slice(&offsets[n - 1].to_le_bytes());
        out.extend_from_slice(&offsets[n - 2].to_le_bytes());
        out.extend_from_slice(TRAILER_MAGIC);
        (out, offsets)
    }

    #[test]
    fn a_huge_event_count_with_valid_checksums_is_a_located_error() {
        let path = tmp("hugecount");
        write_trace(&path, 100);
        let bytes = std::fs::read(&path).unwrap();
        let mut secs = sections(&bytes);
        secs[2].1[8..12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let (bad, offsets) = assemble(&bytes, &secs);
        std::fs::write(&path, &bad).unwrap();
        let e = TraceReader::open(&path).err().unwrap().to_string();
        assert!(
            e.contains(&format!("event chunk at offset {}", offsets[2]))
                && e.contains("header claims 4294967280 events"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_ram_image_is_rejected_at_open() {
        let path = tmp("shortram");
        let full = zstd::bulk::decompress(&ram_image(7), 1 << 20).unwrap();
        for cut in [0, 10, 32, 33, 32 + 4095] {
            let image = zstd::bulk::compress(&full[..cut], 3).unwrap();
            let w = TraceWriter::create(&path, &info(), b"cpu", &image, 0).unwrap();
            w.finish(EndInfo {
                reason: EndReason::PowerOff,
                icount: 0,
                rip: 0,
                regs_hash: 0,
                ram_hash: 0,
                guest_ns: 0,
                counts: EventCounts::default(),
            })
            .unwrap();
            let e = TraceReader::open(&path).err().unwrap().to_string();
            assert!(
                e.contains("malformed snapshot at offset") && e.contains("RAM image"),
                "{e}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_out_of_range_event_kind_is_a_located_error() {
        let path = tmp("badkind");
        write_trace(&path, 100);
        let bytes = std::fs::read(&path).unwrap();
        let mut secs = sections(&bytes);
        let mut chunk = secs[2].1.clone();
        let raw_len = u32::from_le_bytes(chunk[36..40].try_into().unwrap()) as usize;
        let mut raw = zstd::bulk::decompress(&chunk[CHUNK_HEADER_LEN..], raw_len).unwrap();
        // Event 0 is an interrupt: its tag becomes 13 (past the last kind), then 0, then the
        // console bit on an interrupt.
        for tag in [13u8, 0, 0x81] {
            raw[0] = tag;
            chunk.truncate(CHUNK_HEADER_LEN);
            chunk.extend(zstd::bulk::compress(&raw, 3).unwrap());
            secs[2].1 = chunk.clone();
            let (bad, offsets) = assemble(&bytes, &secs);
            std::fs::write(&path, &bad).unwrap();
            let e = TraceReader::open(&path).err().unwrap().to_string();
            assert!(
                e.contains(&format!("event chunk at offset {}", offsets[2]))
                    && e.contains(&format!(
                        "event 0 (byte 0 of the chunk's events): unknown event tag {tag:#x}"
                    )),
                "{e}"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}
