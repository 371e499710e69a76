//! Snapshots in the middle of a trace (DESIGN.md section 8), from which a replay can start
//! and at which a replay that came from earlier is checked: the recorder writes one every
//! `--snapshot-interval` instructions, `krr replay --save-snapshots` adds them to a trace that
//! has none, and `krr replay --jobs N` replays the segments between them concurrently.
//!
//! A delta snapshot holds the CPU image, the number of events consumed before that point and
//! their per-kind counts, the state hashes (the checkpoints' hashes) and only the RAM pages
//! that changed since the previous snapshot (the RAM image's encoding: a page bitmap, then
//! those pages, zstd-compressed). The state at snapshot k is the initial snapshot with the
//! pages of snapshots 0..=k applied in order and snapshot k's CPU image.

use super::bytes::{Put, Reader};
use super::EventCounts;
use super::TraceReader;
use krr_runtime::GuestMemory;

/// A snapshot's place, read when the trace is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaEntry {
    /// File offset of its section.
    pub offset: u64,
    /// Instructions retired before it.
    pub icount: u64,
    /// Events consumed before it.
    pub events: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaSnapshot {
    pub icount: u64,
    pub events: u64,
    pub regs_hash: u64,
    pub ram_hash: u64,
    pub counts: EventCounts,
    pub cpu_image: Vec<u8>,
    /// Pages changed since the previous snapshot.
    pub ram_image: Vec<u8>,
}

/// Bytes before the variable part: icount and events (what `open` reads of each).
pub const PREFIX: usize = 16;

impl DeltaSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.cpu_image.len() + self.ram_image.len());
        for x in [self.icount, self.events, self.regs_hash, self.ram_hash] {
            v.put_u64(x);
        }
        v.put_u32(self.counts.0.len() as u32);
        for c in self.counts.0 {
            v.put_u64(c);
        }
        v.put_u32(self.cpu_image.len() as u32);
        v.extend_from_slice(&self.cpu_image);
        v.extend_from_slice(&self.ram_image);
        v
    }

    pub fn decode(data: &[u8]) -> Result<DeltaSnapshot, String> {
        let mut r = Reader::new(data);
        let (icount, events, regs_hash, ram_hash) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let n = r.u32()? as usize;
        let mut counts = EventCounts::default();
        if n != counts.0.len() {
            return Err(format!("{n} event kinds, expected {}", counts.0.len()));
        }
        for c in counts.0.iter_mut() {
            *c = r.u64()?;
        }
        if counts.total() != events {
            return Err(format!(
                "its event counts add up to {}, not its {events} events",
                counts.total()
            ));
        }
        let cpu_len = r.u32()? as usize;
        let cpu_image = r.bytes(cpu_len)?.to_vec();
        let ram_image = data[r.consumed()..].to_vec();
        Ok(DeltaSnapshot {
            icount,
            events,
            regs_hash,
            ram_hash,
            counts,
            cpu_image,
            ram_image,
        })
    }

    /// Its icount and event count from the first [`PREFIX`] bytes.
    pub fn decode_prefix(data: &[u8]) -> Result<(u64, u64), String> {
        let mut r = Reader::new(data);
        Ok((r.u64()?, r.u64()?))
    }
}

/// Which RAM pages changed since the page hashes in `last` (updated to now): the memory's
/// page hashes must be current (`Core::ram_hash` brings them up to date).
pub fn changed_pages(mem: &GuestMemory, last: &mut [u64]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, (&now, was)) in mem.page_hashes().iter().zip(last.iter_mut()).enumerate() {
        if now != *was {
            *was = now;
            out.push(i);
        }
    }
    out
}

/// Makes a trace's delta snapshots one after the other, remembering the page hashes of the
/// previous one.
pub struct Writer {
    last_hashes: Vec<u64>,
}

impl Writer {
    /// For a replay or recording whose RAM is now as the trace's initial snapshot has it.
    pub fn new(core: &mut krr_runtime::Core) -> Writer {
        core.ram_hash();
        Writer {
            last_hashes: core.mem().page_hashes().to_vec(),
        }
    }

    /// The snapshot of `core` here, `events` events into the trace.
    pub fn take(
        &mut self,
        core: &mut krr_runtime::Core,
        events: u64,
        counts: &EventCounts,
    ) -> Result<DeltaSnapshot, String> {
        let ram_hash = core.ram_hash();
        let pages = changed_pages(core.mem(), &mut self.last_hashes);
        Ok(DeltaSnapshot {
            icount: core.cpu().icount,
            events,
            regs_hash: super::state::regs_hash(core.cpu()),
            ram_hash,
            counts: counts.clone(),
            cpu_image: super::state::encode_cpu(core.cpu()),
            ram_image: super::state::encode_ram_pages(core.mem(), &pages)?,
        })
    }
}

/// Add `snapshots` to the trace at `path` (which has none): its bytes up to the end record,
/// the snapshots, the end record and index as they were, and a trailer pointing at them;
/// written to a temporary file beside it and renamed over it, so the trace is never half
/// written. The event chunks keep their offsets, so the index stays valid.
pub fn add_to_trace(
    path: &std::path::Path,
    reader: &TraceReader,
    snapshots: &[DeltaSnapshot],
) -> Result<(), String> {
    use std::io::Write;
    if !reader.deltas.is_empty() {
        return Err(format!(
            "{}: the trace has snapshots already",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 != reader.file_len {
        return Err(format!(
            "{}: the trace changed while it was replayed",
            path.display()
        ));
    }
    let end_at = reader.end_offset() as usize;
    let tail_at = bytes.len() - super::TRAILER_LEN as usize;
    let index_at = u64::from_le_bytes(bytes[tail_at..tail_at + 8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..end_at]);
    // Version 4 traces become version 5 (which allows snapshot sections).
    out[8..12].copy_from_slice(&super::VERSION.to_le_bytes());
    for d in snapshots {
        let payload = d.encode();
        out.extend_from_slice(&super::Tag::Delta.bytes());
        out.put_u64(payload.len() as u64);
        out.put_u32(crc32fast::hash(&payload));
        out.extend_from_slice(&payload);
    }
    let moved = (out.len() - end_at) as u64;
    out.extend_from_slice(&bytes[end_at..tail_at]);
    out.put_u64(index_at + moved);
    out.put_u64(end_at as u64 + moved);
    out.extend_from_slice(super::TRAILER_MAGIC);
    let tmp = path.with_extension("krr-snapshots.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot rewrite the trace: {e}", path.display())
    })
}
