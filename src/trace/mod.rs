//! krr's trace file (docs/TRACE-FORMAT.md): a header, then length-prefixed, CRC-checked
//! sections: machine config, initial snapshot, event chunks (streamed while recording), the
//! end record, an index of the chunks, and a fixed trailer that points at the index.

pub mod bytes;
pub mod event;
pub mod state;

use bytes::{Put, Reader};
pub use event::{Event, EventCounts, EventData, EventKind};
use krr_runtime::cpuid::CpuidEntry;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"KRRTRACE";
pub const VERSION: u32 = 1;
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
}

impl Tag {
    fn bytes(self) -> [u8; 4] {
        *match self {
            Tag::Config => b"CONF",
            Tag::Snapshot => b"SNAP",
            Tag::Events => b"EVTS",
            Tag::End => b"ENDS",
            Tag::Index => b"INDX",
        }
    }
    fn from_bytes(b: [u8; 4]) -> Option<Tag> {
        [
            Tag::Config,
            Tag::Snapshot,
            Tag::Events,
            Tag::End,
            Tag::Index,
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: not a krr trace (bad magic)")]
    NotATrace { path: String },
    #[error("{path}: trace format version {found}, this krr reads version {VERSION}")]
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

/// Streams a trace to a file: header, config and snapshot first, then events as they come.
pub struct TraceWriter {
    out: BufWriter<File>,
    path: String,
    offset: u64,
    pending: Vec<u8>,
    pending_events: u32,
    pending_first_icount: u64,
    chunk_base_icount: u64,
    last_icount: u64,
    events: u64,
    counts: EventCounts,
    index: Vec<ChunkEntry>,
}

impl TraceWriter {
    pub fn create(
        path: &Path,
        info: &MachineInfo,
        cpu_image: &[u8],
        ram_image: &[u8],
        start_icount: u64,
    ) -> Result<TraceWriter, TraceError> {
        let p = path.display().to_string();
        let file = File::create(path).map_err(|err| TraceError::Io {
            path: p.clone(),
            err,
        })?;
        let mut w = TraceWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            path: p,
            offset: 0,
            pending: Vec::with_capacity(CHUNK_BYTES + 64),
            pending_events: 0,
            pending_first_icount: start_icount,
            chunk_base_icount: start_icount,
            last_icount: start_icount,
            events: 0,
            counts: EventCounts::default(),
            index: Vec::new(),
        };
        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.put_u32(VERSION);
        header.put_u32(0);
        w.write_raw(&header)?;
        w.section(Tag::Config, &info.encode())?;
        let mut snap = Vec::with_capacity(cpu_image.len() + ram_image.len() + 8);
        snap.put_u32(cpu_image.len() as u32);
        snap.extend_from_slice(cpu_image);
        snap.extend_from_slice(ram_image);
        w.section(Tag::Snapshot, &snap)?;
        Ok(w)
    }

    fn io(&self, err: std::io::Error) -> TraceError {
        TraceError::Io {
            path: self.path.clone(),
            err,
        }
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<(), TraceError> {
        self.out.write_all(b).map_err(|e| self.io(e))?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn section(&mut self, tag: Tag, payload: &[u8]) -> Result<u64, TraceError> {
        let at = self.offset;
        let mut h = Vec::with_capacity(SECTION_HEADER_LEN as usize);
        h.extend_from_slice(&tag.bytes());
        h.put_u64(payload.len() as u64);
        h.put_u32(crc32fast::hash(payload));
        self.write_raw(&h)?;
        self.write_raw(payload)?;
        Ok(at)
    }

    pub fn push(&mut self, e: &Event) -> Result<(), TraceError> {
        if self.pending_events == 0 {
            self.pending_first_icount = e.icount;
        }
        debug_assert!(e.icount >= self.last_icount, "events are pushed in order");
        event::encode(&mut self.pending, self.last_icount, e);
        self.last_icount = e.icount;
        self.pending_events += 1;
        self.events += 1;
        self.counts.add(e.kind());
        if self.pending.len() >= CHUNK_BYTES {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), TraceError> {
        if self.pending_events == 0 {
            return Ok(());
        }
        let compressed = zstd::bulk::compress(&self.pending, 3).map_err(|e| self.io(e))?;
        let mut payload = Vec::with_capacity(CHUNK_HEADER_LEN + compressed.len());
        let first_event = self.events - self.pending_events as u64;
        payload.put_u64(first_event);
        payload.put_u32(self.pending_events);
        payload.put_u64(self.chunk_base_icount);
        payload.put_u64(self.pending_first_icount);
        payload.put_u64(self.last_icount);
        payload.put_u32(self.pending.len() as u32);
        payload.extend_from_slice(&compressed);
        let offset = self.section(Tag::Events, &payload)?;
        self.index.push(ChunkEntry {
            offset,
            first_event,
            events: self.pending_events,
            first_icount: self.pending_first_icount,
            last_icount: self.last_icount,
        });
        self.pending.clear();
        self.pending_events = 0;
        self.chunk_base_icount = self.last_icount;
        Ok(())
    }

    pub fn counts(&self) -> &EventCounts {
        &self.counts
    }

    /// Write the last chunk, the end record, the index and the trailer.
    pub fn finish(mut self, mut end: EndInfo) -> Result<u64, TraceError> {
        self.flush_chunk()?;
        end.counts = self.counts.clone();
        let end_offset = self.section(Tag::End, &end.encode())?;
        let mut idx = Vec::new();
        idx.put_u32(self.index.len() as u32);
        for c in &self.index {
            idx.put_u64(c.offset);
            idx.put_u64(c.first_event);
            idx.put_u32(c.events);
            idx.put_u64(c.first_icount);
            idx.put_u64(c.last_icount);
        }
        let index_offset = self.section(Tag::Index, &idx)?;
        let mut t = Vec::new();
        t.put_u64(index_offset);
        t.put_u64(end_offset);
        t.extend_from_slice(TRAILER_MAGIC);
        self.write_raw(&t)?;
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.offset)
    }
}

/// A trace opened for reading. `open` checks the header, the trailer, every section's
/// framing and checksum, and that the index matches the event chunks, before anything is
/// executed.
pub struct TraceReader {
    path: String,
    file: BufReader<File>,
    pub info: MachineInfo,
    pub end: EndInfo,
    pub index: Vec<ChunkEntry>,
    pub file_len: u64,
    snapshot_offset: u64,
}

/// The initial state a trace starts from.
pub struct Snapshot {
    pub cpu_image: Vec<u8>,
    pub ram_image: Vec<u8>,
}

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let p = path.display().to_string();
        let io = |err| TraceError::Io {
            path: p.clone(),
            err,
        };
        let mut file = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
        let file_len = file.get_ref().metadata().map_err(io)?.len();
        let truncated = |offset: u64, what: &str| TraceError::Truncated {
            path: p.clone(),
            offset,
            what: what.to_string(),
        };
        let mut header = [0u8; HEADER_LEN as usize];
        if file_len < 8 {
            if MAGIC.starts_with(&read_all_small(&mut file, file_len).map_err(io)?) && file_len > 0
            {
                return Err(truncated(file_len, "the file ends inside the header"));
            }
            return Err(TraceError::NotATrace { path: p });
        }
        file.read_exact(&mut header[..8]).map_err(io)?;
        if &header[..8] != MAGIC {
            return Err(TraceError::NotATrace { path: p });
        }
        if file_len < HEADER_LEN {
            return Err(truncated(file_len, "the file ends inside the header"));
        }
        file.read_exact(&mut header[8..]).map_err(io)?;
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(TraceError::Version {
                path: p,
                found: version,
            });
        }
        let flags = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        if flags != 0 {
            return Err(TraceError::Malformed {
                path: p,
                section: "header",
                offset: 12,
                what: format!("unknown header flags {flags:#x}"),
            });
        }
        // Walk every section from the start: framing and checksums.
        let mut offset = HEADER_LEN;
        let mut sections: Vec<(Tag, u64, u64)> = Vec::new();
        let mut buf = Vec::new();
        loop {
            if sections.last().map(|s| s.0) == Some(Tag::Index) {
                break;
            }
            if offset + SECTION_HEADER_LEN > file_len {
                let what = match sections.last() {
                    Some((t, at, _)) => format!(
                        "the file ends after the {} at offset {at}; the trace was not finished (no end record, index or trailer)",
                        t.name()
                    ),
                    None => "the file ends before the first section".to_string(),
                };
                return Err(truncated(file_len, &what));
            }
            let mut h = [0u8; SECTION_HEADER_LEN as usize];
            file.read_exact(&mut h).map_err(io)?;
            let tag_bytes: [u8; 4] = h[..4].try_into().unwrap_or_default();
            let len = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default());
            let Some(tag) = Tag::from_bytes(tag_bytes) else {
                return Err(TraceError::Malformed {
                    path: p,
                    section: "section header",
                    offset,
                    what: format!(
                        "unknown section tag {:?}",
                        String::from_utf8_lossy(&tag_bytes)
                    ),
                });
            };
            let body = offset + SECTION_HEADER_LEN;
            if len > file_len.saturating_sub(body) {
                return Err(truncated(
                    file_len,
                    &format!(
                        "the {} at offset {offset} says it holds {len} bytes, the file has {} left",
                        tag.name(),
                        file_len - body
                    ),
                ));
            }
            buf.resize(len as usize, 0);
            file.read_exact(&mut buf).map_err(io)?;
            if crc32fast::hash(&buf) != crc {
                return Err(TraceError::Checksum {
                    path: p,
                    section: tag.name(),
                    offset,
                });
            }
            sections.push((tag, offset, len));
            offset = body + len;
        }
        if file_len != offset + TRAILER_LEN {
            return Err(if file_len < offset + TRAILER_LEN {
                truncated(file_len, "the file ends inside the trailer")
            } else {
                TraceError::Malformed {
                    path: p,
                    section: "trailer",
                    offset,
                    what: format!(
                        "{} bytes follow the index, expected {TRAILER_LEN}",
                        file_len - offset
                    ),
                }
            });
        }
        let mut t = [0u8; TRAILER_LEN as usize];
        file.read_exact(&mut t).map_err(io)?;
        let malformed = |section: &'static str, offset: u64, what: String| TraceError::Malformed {
            path: p.clone(),
            section,
            offset,
            what,
        };
        let index_offset = u64::from_le_bytes(t[..8].try_into().unwrap_or_default());
        let end_offset = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
        if &t[16..] != TRAILER_MAGIC {
            return Err(malformed("trailer", offset, "bad trailer magic".into()));
        }
        // Section order: CONF SNAP EVTS* ENDS INDX.
        let n = sections.len();
        let order_ok = n >= 4
            && sections[0].0 == Tag::Config
            && sections[1].0 == Tag::Snapshot
            && sections[2..n - 2].iter().all(|s| s.0 == Tag::Events)
            && sections[n - 2].0 == Tag::End
            && sections[n - 1].0 == Tag::Index;
        if !order_ok {
            let got: Vec<&str> = sections.iter().map(|s| s.0.name()).collect();
            return Err(malformed(
                "section list",
                HEADER_LEN,
                format!("sections out of order: {}", got.join(", ")),
            ));
        }
        if sections[n - 1].1 != index_offset || sections[n - 2].1 != end_offset {
            return Err(malformed(
                "trailer",
                offset,
                "it points elsewhere than the index and end record".into(),
            ));
        }
        let read_section =
            |file: &mut BufReader<File>, at: u64, len: u64| -> Result<Vec<u8>, TraceError> {
                file.seek(SeekFrom::Start(at + SECTION_HEADER_LEN))
                    .map_err(io)?;
                let mut b = vec![0u8; len as usize];
                file.read_exact(&mut b).map_err(io)?;
                Ok(b)
            };
        let (_, conf_at, conf_len) = sections[0];
        let info = MachineInfo::decode(&read_section(&mut file, conf_at, conf_len)?)
            .map_err(|w| malformed("config", conf_at, w))?;
        let (_, end_at, end_len) = sections[n - 2];
        let end = EndInfo::decode(&read_section(&mut file, end_at, end_len)?)
            .map_err(|w| malformed("end record", end_at, w))?;
        let (_, idx_at, idx_len) = sections[n - 1];
        let index = decode_index(&read_section(&mut file, idx_at, idx_len)?)
            .map_err(|w| malformed("index", idx_at, w))?;
        // The index must list exactly the event chunks, in order, with consistent counts.
        let chunks: Vec<&(Tag, u64, u64)> = sections[2..n - 2].iter().collect();
        if chunks.len() != index.len() {
            return Err(malformed(
                "index",
                idx_at,
                format!(
                    "lists {} chunks, the file has {}",
                    index.len(),
                    chunks.len()
                ),
            ));
        }
        let mut next_event = 0u64;
        for (c, s) in index.iter().zip(&chunks) {
            if c.offset != s.1 || c.first_event != next_event {
                return Err(malformed(
                    "index",
                    idx_at,
                    format!(
                        "entry for the chunk at offset {} does not match the file",
                        s.1
                    ),
                ));
            }
            next_event += c.events as u64;
        }
        if next_event != end.counts.total() {
            return Err(malformed(
                "end record",
                end_at,
                format!(
                    "counts {} events, the chunks hold {next_event}",
                    end.counts.total()
                ),
            ));
        }
        Ok(TraceReader {
            path: p,
            file,
            info,
            end,
            index,
            file_len,
            snapshot_offset: sections[1].1,
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn malformed(&self, section: &'static str, offset: u64, what: String) -> TraceError {
        TraceError::Malformed {
            path: self.path.clone(),
            section,
            offset,
            what,
        }
    }

    fn read_payload(&mut self, at: u64) -> Result<Vec<u8>, TraceError> {
        let path = self.path.clone();
        let io = |err| TraceError::Io {
            path: path.clone(),
            err,
        };
        self.file.seek(SeekFrom::Start(at)).map_err(&io)?;
        let mut h = [0u8; SECTION_HEADER_LEN as usize];
        self.file.read_exact(&mut h).map_err(&io)?;
        let len = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
        let mut b = vec![0u8; len as usize];
        self.file.read_exact(&mut b).map_err(&io)?;
        Ok(b)
    }

    pub fn snapshot(&mut self) -> Result<Snapshot, TraceError> {
        let at = self.snapshot_offset;
        let p = self.read_payload(at)?;
        let mut r = Reader::new(&p);
        let cpu_len = r.u32().map_err(|w| self.malformed("snapshot", at, w))? as usize;
        let cpu_image = r
            .bytes(cpu_len)
            .map_err(|w| self.malformed("snapshot", at, w))?
            .to_vec();
        let ram_image = p[r.consumed()..].to_vec();
        Ok(Snapshot {
            cpu_image,
            ram_image,
        })
    }

    /// Decode event chunk `i` of the index.
    pub fn chunk(&mut self, i: usize) -> Result<Vec<Event>, TraceError> {
        let c = self.index[i];
        let p = self.read_payload(c.offset)?;
        let bad = |w: String| TraceError::Malformed {
            path: self.path.clone(),
            section: "event chunk",
            offset: c.offset,
            what: w,
        };
        let mut r = Reader::new(&p);
        let mut hdr = || -> Result<(u64, u32, u64, u64, u64, u32), String> {
            Ok((r.u64()?, r.u32()?, r.u64()?, r.u64()?, r.u64()?, r.u32()?))
        };
        let (first_event, count, base, first_icount, last_icount, raw_len) = hdr().map_err(bad)?;
        if first_event != c.first_event || count != c.events {
            return Err(bad("chunk header disagrees with the index".into()));
        }
        let raw = zstd::bulk::decompress(&p[CHUNK_HEADER_LEN..], raw_len as usize)
            .map_err(|e| bad(format!("cannot decompress: {e}")))?;
        if raw.len() != raw_len as usize {
            return Err(bad(format!(
                "decompresses to {} bytes, expected {raw_len}",
                raw.len()
            )));
        }
        let mut events = Vec::with_capacity(count as usize);
        let mut pos = 0;
        let mut prev = base;
        for k in 0..count {
            let e = event::decode(&raw, &mut pos, prev)
                .map_err(|w| bad(format!("event {}: {w}", first_event + k as u64)))?;
            prev = e.icount;
            events.push(e);
        }
        if pos != raw.len() {
            return Err(bad(format!(
                "{} bytes after the last event",
                raw.len() - pos
            )));
        }
        if events.first().map(|e| e.icount) != Some(first_icount)
            || events.last().map(|e| e.icount) != Some(last_icount)
        {
            return Err(bad(
                "instruction counts disagree with the chunk header".into()
            ));
        }
        Ok(events)
    }
}

fn read_all_small(f: &mut BufReader<File>, len: u64) -> std::io::Result<Vec<u8>> {
    let mut b = vec![0u8; len as usize];
    f.read_exact(&mut b)?;
    Ok(b)
}

fn decode_index(data: &[u8]) -> Result<Vec<ChunkEntry>, String> {
    let mut r = Reader::new(data);
    let n = r.u32()? as usize;
    if n > data.len() / 36 {
        return Err(format!("{n} entries do not fit in {} bytes", data.len()));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(ChunkEntry {
            offset: r.u64()?,
            first_event: r.u64()?,
            events: r.u32()?,
            first_icount: r.u64()?,
            last_icount: r.u64()?,
        });
    }
    r.finish()?;
    Ok(v)
}

/// Reads the events of a trace in order, one chunk at a time.
pub struct EventStream {
    reader: TraceReader,
    next_chunk: usize,
    buffered: std::collections::VecDeque<Event>,
    /// Index of the next event `next()` returns.
    pub position: u64,
}

impl EventStream {
    pub fn new(reader: TraceReader) -> EventStream {
        EventStream {
            reader,
            next_chunk: 0,
            buffered: Default::default(),
            position: 0,
        }
    }

    fn fill(&mut self, want: usize) -> Result<(), TraceError> {
        while self.buffered.len() < want && self.next_chunk < self.reader.index.len() {
            let evs = self.reader.chunk(self.next_chunk)?;
            self.next_chunk += 1;
            self.buffered.extend(evs);
        }
        Ok(())
    }

    /// The `k`th event from the current position, without consuming it.
    pub fn peek(&mut self, k: usize) -> Result<Option<&Event>, TraceError> {
        self.fill(k + 1)?;
        Ok(self.buffered.get(k))
    }

    pub fn next_event(&mut self) -> Result<Option<Event>, TraceError> {
        self.fill(1)?;
        let e = self.buffered.pop_front();
        if e.is_some() {
            self.position += 1;
        }
        Ok(e)
    }

    pub fn reader(&self) -> &TraceReader {
        &self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A finished trace with `n` events spread over several chunks.
    fn write_trace(path: &Path, n: u64) -> (Vec<Event>, EndInfo) {
        let mut w = TraceWriter::create(path, &info(), b"cpu image", b"ram image", 0).unwrap();
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
        assert_eq!(snap.ram_image, b"ram image");
        let mut s = EventStream::new(r);
        let mut got = Vec::new();
        while let Some(e) = s.next_event().unwrap() {
            got.push(e);
        }
        assert_eq!(got, events);
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
}
