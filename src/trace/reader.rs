//! Reading a trace: [`TraceReader::open`] checks the whole file's framing before anything is
//! executed (header, every section's length and checksum, the trailer, the section order, the
//! index against the event chunks); then the snapshot and event chunks are read on demand,
//! and [`EventStream`] yields the events in order.

use super::bytes::Reader;
use super::delta::{DeltaEntry, DeltaSnapshot};
use super::{
    event, ChunkEntry, EndInfo, Event, MachineInfo, Tag, TraceError, CHUNK_HEADER_LEN, HEADER_LEN,
    MAGIC, OLDEST_VERSION, SECTION_HEADER_LEN, TRAILER_LEN, TRAILER_MAGIC, VERSION,
};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// A trace opened for reading. `open` checks the header, the trailer, every section's
/// framing and checksum, and that the index matches the event chunks, before anything is
/// executed.
pub struct TraceReader {
    path: String,
    file: BufReader<File>,
    pub info: MachineInfo,
    pub end: EndInfo,
    pub index: Vec<ChunkEntry>,
    /// The delta snapshots, in order.
    pub deltas: Vec<DeltaEntry>,
    pub file_len: u64,
    snapshot_offset: u64,
    end_offset: u64,
}

/// The initial state a trace starts from.
pub struct Snapshot {
    pub cpu_image: Vec<u8>,
    pub ram_image: Vec<u8>,
}

impl TraceReader {
    pub fn open(path: &Path) -> Result<TraceReader, TraceError> {
        let mut opening = Opening {
            path: path.display().to_string(),
            file_len: 0,
        };
        let file = File::open(path).map_err(|e| opening.io(e))?;
        let mut file = BufReader::with_capacity(1 << 20, file);
        opening.file_len = file.get_ref().metadata().map_err(|e| opening.io(e))?.len();
        opening.check_header(&mut file)?;
        let (sections, offset) = opening.walk_sections(&mut file)?;
        opening.check_trailer(&mut file, offset, &sections)?;
        let (info, end, index) = opening.read_metadata(&mut file, &sections)?;
        opening.check_index(&sections, &index, &end)?;
        let deltas = opening.read_deltas(&mut file, &sections, &end)?;
        let mut reader = TraceReader {
            path: opening.path,
            file,
            info,
            end,
            index,
            deltas,
            file_len: opening.file_len,
            snapshot_offset: sections[1].1,
            end_offset: sections[sections.len() - 2].1,
        };
        reader.check_snapshot()?;
        reader.check_events()?;
        Ok(reader)
    }

    /// A second handle on the same trace (its own file position), for a thread that reads
    /// ahead. The file must still be the one opened (same length).
    pub(super) fn reopen(&self) -> Result<TraceReader, TraceError> {
        let io = |err| TraceError::Io {
            path: self.path.clone(),
            err,
        };
        let file = File::open(&self.path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len != self.file_len {
            return Err(TraceError::Truncated {
                path: self.path.clone(),
                offset: len,
                what: format!(
                    "the file changed size since it was opened ({} bytes)",
                    self.file_len
                ),
            });
        }
        Ok(TraceReader {
            path: self.path.clone(),
            file: BufReader::with_capacity(1 << 20, file),
            info: self.info.clone(),
            end: self.end.clone(),
            index: self.index.clone(),
            deltas: self.deltas.clone(),
            file_len: self.file_len,
            snapshot_offset: self.snapshot_offset,
            end_offset: self.end_offset,
        })
    }

    /// The snapshot's RAM image decompresses to a page bitmap for the config's RAM size and
    /// exactly the pages it marks (streamed: nothing larger than a page is allocated).
    fn check_snapshot(&mut self) -> Result<(), TraceError> {
        use std::io::Read;
        let at = self.snapshot_offset;
        let snap = self.snapshot()?;
        let bad = |w: String| malformed(&self.path, "snapshot", at, w);
        let pages = (self.info.mem_bytes / PAGE as u64) as usize;
        let mut dec = zstd::stream::Decoder::new(&snap.ram_image[..])
            .map_err(|e| bad(format!("RAM image: {e}")))?;
        let mut bitmap = vec![0u8; pages.div_ceil(8)];
        dec.read_exact(&mut bitmap)
            .map_err(|e| bad(format!("RAM image page bitmap: {e}")))?;
        if !pages.is_multiple_of(8) && bitmap[pages / 8] >> (pages % 8) != 0 {
            return Err(bad(
                "RAM image bitmap marks pages past the end of RAM".into()
            ));
        }
        let mut page = [0u8; PAGE];
        for i in 0..pages {
            if bitmap[i / 8] & (1 << (i % 8)) != 0 {
                dec.read_exact(&mut page)
                    .map_err(|e| bad(format!("RAM image page {i}: {e}")))?;
            }
        }
        let mut rest = [0u8; 1];
        match dec.read(&mut rest) {
            Ok(0) => Ok(()),
            Ok(_) => Err(bad("RAM image has data past its last page".into())),
            Err(e) => Err(bad(format!("RAM image: {e}"))),
        }
    }

    /// Decode every event chunk once: each event's kind and fields (see [`check_event`]),
    /// instruction counts non-decreasing across chunks and within the end record's count,
    /// the index's instruction counts, and the per-kind counts of the end record.
    fn check_events(&mut self) -> Result<(), TraceError> {
        let mut counts = super::EventCounts::default();
        let mut prev_icount = 0u64;
        for i in 0..self.index.len() {
            let c = self.index[i];
            let events = self.chunk(i)?;
            let bad = |w: String| malformed(&self.path, "event chunk", c.offset, w);
            if events.first().map(|e| e.icount) != Some(c.first_icount)
                || events.last().map(|e| e.icount) != Some(c.last_icount)
            {
                return Err(malformed(
                    &self.path,
                    "index",
                    c.offset,
                    "instruction counts disagree with the chunk's".into(),
                ));
            }
            if c.first_icount < prev_icount {
                return Err(bad(format!(
                    "event {}: instruction count {} is before the previous chunk's last, {prev_icount}",
                    c.first_event, c.first_icount
                )));
            }
            if c.last_icount > self.end.icount {
                return Err(bad(format!(
                    "instruction count {} is past the end record's, {}",
                    c.last_icount, self.end.icount
                )));
            }
            prev_icount = c.last_icount;
            for e in &events {
                counts.add(e.kind());
            }
        }
        if counts != self.end.counts {
            return Err(malformed(
                &self.path,
                "end record",
                self.end_offset,
                "its per-kind event counts disagree with the chunks".into(),
            ));
        }
        Ok(())
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn malformed(&self, section: &'static str, offset: u64, what: String) -> TraceError {
        malformed(&self.path, section, offset, what)
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
        let left = self.file_len.saturating_sub(at + SECTION_HEADER_LEN);
        if len > left {
            return Err(TraceError::Truncated {
                path,
                offset: self.file_len,
                what: format!("the section at offset {at} says it holds {len} bytes, the file has {left} left"),
            });
        }
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

    /// Decode delta snapshot `k`.
    pub fn delta(&mut self, k: usize) -> Result<DeltaSnapshot, TraceError> {
        let d = self.deltas[k];
        let p = self.read_payload(d.offset)?;
        DeltaSnapshot::decode(&p).map_err(|w| self.malformed("delta snapshot", d.offset, w))
    }

    /// Where the end record's section starts (what follows it is the index and trailer).
    pub fn end_offset(&self) -> u64 {
        self.end_offset
    }

    /// Decode event chunk `i` of the index.
    pub fn chunk(&mut self, i: usize) -> Result<Vec<Event>, TraceError> {
        let c = self.index[i];
        let mem_bytes = self.info.mem_bytes;
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
        let (first_event, count, base, first_icount, last_icount, raw_len) = hdr().map_err(&bad)?;
        if raw_len as usize > MAX_CHUNK_RAW {
            return Err(bad(format!(
                "raw length {raw_len} is over the limit of {MAX_CHUNK_RAW} bytes"
            )));
        }
        if count as usize > raw_len as usize / event::MIN_EVENT_LEN {
            return Err(bad(format!(
                "header claims {count} events, its {raw_len} raw bytes hold at most {}",
                raw_len as usize / event::MIN_EVENT_LEN
            )));
        }
        if first_event != c.first_event || count != c.events {
            return Err(bad("chunk header disagrees with the index".into()));
        }
        let compressed = &p[CHUNK_HEADER_LEN..];
        match zstd::zstd_safe::get_frame_content_size(compressed) {
            Ok(Some(n)) if n == raw_len as u64 => {}
            Ok(Some(n)) => {
                return Err(bad(format!(
                    "compressed frame holds {n} bytes, the header says {raw_len}"
                )))
            }
            _ => return Err(bad("cannot decompress: no valid zstd frame header".into())),
        }
        let raw = zstd::bulk::decompress(compressed, raw_len as usize)
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
                .and_then(|e| check_event(&e, mem_bytes).map(|()| e))
                .map_err(|w| {
                    bad(format!(
                        "event {} (byte {pos} of the chunk's events): {w}",
                        first_event.wrapping_add(k as u64)
                    ))
                })?;
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

/// Largest raw (uncompressed) event chunk a reader accepts: the writer flushes at
/// `CHUNK_BYTES`, so a chunk exceeds it only by its last event.
const MAX_CHUNK_RAW: usize = 16 << 20;
const PAGE: usize = 4096;

/// Field values an event may hold: port sizes 1, 2, 4 (value within the size), MMIO sizes 1,
/// 2, 4, 8, RDRAND sizes 2, 4, 8, DMA writes inside guest RAM. Any interrupt vector is valid:
/// the 8259 delivers whatever base the guest programs, exception vectors included.
fn check_event(e: &Event, mem_bytes: u64) -> Result<(), String> {
    use super::EventData as D;
    match e.data {
        D::PortIn { size, .. } | D::PortOut { size, .. } if !matches!(size, 1 | 2 | 4) => {
            Err(format!("port access size {size}"))
        }
        D::MmioRead { size, .. } | D::MmioWrite { size, .. } if !matches!(size, 1 | 2 | 4 | 8) => {
            Err(format!("MMIO access size {size}"))
        }
        D::Rdrand { size, .. } if !matches!(size, 2 | 4 | 8) => {
            Err(format!("RDRAND/RDSEED size {size}"))
        }
        D::DmaWrite { phys, ref data }
            if phys
                .checked_add(data.len() as u64)
                .is_none_or(|end| end > mem_bytes) =>
        {
            Err(format!(
                "DMA write of {} bytes at {phys:#x} is outside guest RAM",
                data.len()
            ))
        }
        _ => Ok(()),
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

/// The sections of a trace as [`TraceReader::open`] found them: tag, file offset of the
/// section header, payload length.
type SectionList = Vec<(Tag, u64, u64)>;

/// A trace file being opened: its path for error messages and its length.
struct Opening {
    path: String,
    file_len: u64,
}

impl Opening {
    fn io(&self, err: std::io::Error) -> TraceError {
        TraceError::Io {
            path: self.path.clone(),
            err,
        }
    }

    fn truncated(&self, offset: u64, what: &str) -> TraceError {
        TraceError::Truncated {
            path: self.path.clone(),
            offset,
            what: what.to_string(),
        }
    }

    fn malformed(&self, section: &'static str, offset: u64, what: String) -> TraceError {
        malformed(&self.path, section, offset, what)
    }

    /// The 16-byte header: magic, version, flags (which must be 0).
    fn check_header(&self, file: &mut BufReader<File>) -> Result<(), TraceError> {
        let file_len = self.file_len;
        let mut header = [0u8; HEADER_LEN as usize];
        if file_len < 8 {
            let start = read_all_small(file, file_len).map_err(|e| self.io(e))?;
            if MAGIC.starts_with(&start) && file_len > 0 {
                return Err(self.truncated(file_len, "the file ends inside the header"));
            }
            return Err(TraceError::NotATrace {
                path: self.path.clone(),
            });
        }
        file.read_exact(&mut header[..8]).map_err(|e| self.io(e))?;
        if &header[..8] != MAGIC {
            return Err(TraceError::NotATrace {
                path: self.path.clone(),
            });
        }
        if file_len < HEADER_LEN {
            return Err(self.truncated(file_len, "the file ends inside the header"));
        }
        file.read_exact(&mut header[8..]).map_err(|e| self.io(e))?;
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(TraceError::Version {
                path: self.path.clone(),
                found: version,
            });
        }
        let flags = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        if flags != 0 {
            return Err(self.malformed("header", 12, format!("unknown header flags {flags:#x}")));
        }
        Ok(())
    }

    /// Walk every section from the end of the header up to and including the index: framing
    /// and checksums. Returns the sections and the offset just past the index.
    fn walk_sections(&self, file: &mut BufReader<File>) -> Result<(SectionList, u64), TraceError> {
        let file_len = self.file_len;
        let mut offset = HEADER_LEN;
        let mut sections: SectionList = Vec::new();
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
                return Err(self.truncated(file_len, &what));
            }
            let mut h = [0u8; SECTION_HEADER_LEN as usize];
            file.read_exact(&mut h).map_err(|e| self.io(e))?;
            let tag_bytes: [u8; 4] = h[..4].try_into().unwrap_or_default();
            let len = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
            let crc = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default());
            let Some(tag) = Tag::from_bytes(tag_bytes) else {
                return Err(self.malformed(
                    "section header",
                    offset,
                    format!(
                        "unknown section tag {:?}",
                        String::from_utf8_lossy(&tag_bytes)
                    ),
                ));
            };
            let body = offset + SECTION_HEADER_LEN;
            if len > file_len.saturating_sub(body) {
                return Err(self.truncated(
                    file_len,
                    &format!(
                        "the {} at offset {offset} says it holds {len} bytes, the file has {} left",
                        tag.name(),
                        file_len - body
                    ),
                ));
            }
            buf.resize(len as usize, 0);
            file.read_exact(&mut buf).map_err(|e| self.io(e))?;
            if crc32fast::hash(&buf) != crc {
                return Err(TraceError::Checksum {
                    path: self.path.clone(),
                    section: tag.name(),
                    offset,
                });
            }
            sections.push((tag, offset, len));
            offset = body + len;
        }
        Ok((sections, offset))
    }

    /// The trailer right after the index (which ends at `offset`): its length and magic, and
    /// that it points at the index and the end record. Also checks the section order.
    fn check_trailer(
        &self,
        file: &mut BufReader<File>,
        offset: u64,
        sections: &SectionList,
    ) -> Result<(), TraceError> {
        let file_len = self.file_len;
        if file_len != offset + TRAILER_LEN {
            return Err(if file_len < offset + TRAILER_LEN {
                self.truncated(file_len, "the file ends inside the trailer")
            } else {
                self.malformed(
                    "trailer",
                    offset,
                    format!(
                        "{} bytes follow the index, expected {TRAILER_LEN}",
                        file_len - offset
                    ),
                )
            });
        }
        let mut t = [0u8; TRAILER_LEN as usize];
        file.read_exact(&mut t).map_err(|e| self.io(e))?;
        let index_offset = u64::from_le_bytes(t[..8].try_into().unwrap_or_default());
        let end_offset = u64::from_le_bytes(t[8..16].try_into().unwrap_or_default());
        if &t[16..] != TRAILER_MAGIC {
            return Err(self.malformed("trailer", offset, "bad trailer magic".into()));
        }
        self.check_section_order(sections)?;
        let n = sections.len();
        if sections[n - 1].1 != index_offset || sections[n - 2].1 != end_offset {
            return Err(self.malformed(
                "trailer",
                offset,
                "it points elsewhere than the index and end record".into(),
            ));
        }
        Ok(())
    }

    /// The delta snapshots' places: instruction counts increasing, within the recording, and
    /// event counts within the trace's.
    fn read_deltas(
        &self,
        file: &mut BufReader<File>,
        sections: &SectionList,
        end: &EndInfo,
    ) -> Result<Vec<DeltaEntry>, TraceError> {
        let mut out: Vec<DeltaEntry> = Vec::new();
        for &(tag, at, len) in sections.iter().filter(|s| s.0 == Tag::Delta) {
            let head = self.read_section(file, at, len.min(super::delta::PREFIX as u64))?;
            let (icount, events) = DeltaSnapshot::decode_prefix(&head)
                .map_err(|w| self.malformed(tag.name(), at, w))?;
            let prev = out.last().map_or((0, 0), |d| (d.icount, d.events));
            if icount <= prev.0
                || icount > end.icount
                || events < prev.1
                || events > end.counts.total()
            {
                return Err(self.malformed(
                    tag.name(),
                    at,
                    format!("at instruction {icount} after {events} events: out of order or past the end of the recording"),
                ));
            }
            out.push(DeltaEntry {
                offset: at,
                icount,
                events,
            });
        }
        Ok(out)
    }

    /// Section order: CONF SNAP (EVTS | DSNP)* ENDS INDX.
    fn check_section_order(&self, sections: &SectionList) -> Result<(), TraceError> {
        let n = sections.len();
        let order_ok = n >= 4
            && sections[0].0 == Tag::Config
            && sections[1].0 == Tag::Snapshot
            && sections[2..n - 2]
                .iter()
                .all(|s| s.0 == Tag::Events || s.0 == Tag::Delta)
            && sections[n - 2].0 == Tag::End
            && sections[n - 1].0 == Tag::Index;
        if !order_ok {
            let got: Vec<&str> = sections.iter().map(|s| s.0.name()).collect();
            return Err(self.malformed(
                "section list",
                HEADER_LEN,
                format!("sections out of order: {}", got.join(", ")),
            ));
        }
        Ok(())
    }

    /// The payload of the section whose header is at `at`.
    fn read_section(
        &self,
        file: &mut BufReader<File>,
        at: u64,
        len: u64,
    ) -> Result<Vec<u8>, TraceError> {
        file.seek(SeekFrom::Start(at + SECTION_HEADER_LEN))
            .map_err(|e| self.io(e))?;
        let mut b = vec![0u8; len as usize];
        file.read_exact(&mut b).map_err(|e| self.io(e))?;
        Ok(b)
    }

    /// Decode the config, the end record and the index (sections already in order).
    fn read_metadata(
        &self,
        file: &mut BufReader<File>,
        sections: &SectionList,
    ) -> Result<(MachineInfo, EndInfo, Vec<ChunkEntry>), TraceError> {
        let n = sections.len();
        let (_, conf_at, conf_len) = sections[0];
        let info = MachineInfo::decode(&self.read_section(file, conf_at, conf_len)?)
            .map_err(|w| self.malformed("config", conf_at, w))?;
        let (_, end_at, end_len) = sections[n - 2];
        let end = EndInfo::decode(&self.read_section(file, end_at, end_len)?)
            .map_err(|w| self.malformed("end record", end_at, w))?;
        let (_, idx_at, idx_len) = sections[n - 1];
        let index = decode_index(&self.read_section(file, idx_at, idx_len)?)
            .map_err(|w| self.malformed("index", idx_at, w))?;
        Ok((info, end, index))
    }

    /// The index must list exactly the event chunks, in order, with consistent counts.
    fn check_index(
        &self,
        sections: &SectionList,
        index: &[ChunkEntry],
        end: &EndInfo,
    ) -> Result<(), TraceError> {
        let n = sections.len();
        let idx_at = sections[n - 1].1;
        let end_at = sections[n - 2].1;
        let chunks: Vec<&(Tag, u64, u64)> = sections[2..n - 2]
            .iter()
            .filter(|s| s.0 == Tag::Events)
            .collect();
        if chunks.len() != index.len() {
            return Err(self.malformed(
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
                return Err(self.malformed(
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
            return Err(self.malformed(
                "end record",
                end_at,
                format!(
                    "counts {} events, the chunks hold {next_event}",
                    end.counts.total()
                ),
            ));
        }
        Ok(())
    }
}

/// A well-framed section of the trace at `path` whose contents are wrong.
fn malformed(path: &str, section: &'static str, offset: u64, what: String) -> TraceError {
    TraceError::Malformed {
        path: path.to_string(),
        section,
        offset,
        what,
    }
}
