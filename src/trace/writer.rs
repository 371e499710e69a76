//! Writing a trace: [`TraceWriter`] streams the header, config and snapshot first, then event
//! chunks as they fill, and at the end the end record, the index and the trailer.

use super::bytes::Put;
use super::{
    event, ChunkEntry, EndInfo, Event, EventCounts, MachineInfo, Tag, TraceError, CHUNK_BYTES,
    CHUNK_HEADER_LEN, MAGIC, SECTION_HEADER_LEN, TRAILER_MAGIC, VERSION,
};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

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

    /// Events pushed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Write a delta snapshot (between event chunks; its event count says where it is).
    pub fn snapshot(&mut self, d: &super::delta::DeltaSnapshot) -> Result<(), TraceError> {
        self.section(Tag::Delta, &d.encode())?;
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
