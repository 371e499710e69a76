//! The code cache's file: a header (magic, format version, file id, entry count) and the
//! entries, each with its length and an xxh3 checksum of its body. A file is read whole and
//! every part checked before any entry is used; a damaged, truncated or foreign file is
//! ignored. Written to a temporary file and renamed into place.
//!
//! Entry body: used (u64, Unix seconds), alignment (u64), material length, code length,
//! relocation count (u32 each), the material, the code, the relocations (offset u32, symbol
//! index u32, addend i64). All little-endian.

use super::{Entry, StoredCode};
use crate::compile::reloc::{KrrReloc, Sym};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"KRRCODE\0";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 16 + 4;

/// The most the cache directory holds (bytes): least recently used entries are dropped
/// beyond it, and other builds' files.
pub const MAX_BYTES: u64 = 512 << 20;

/// Read `path` if it is a valid file with id `id`; otherwise no entries, logged (a missing
/// file quietly).
pub(super) fn read(path: &Path, id: u128) -> HashMap<u128, Entry> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return HashMap::new(),
        Err(e) => {
            log::warn!("code cache {}: cannot read: {e}", path.display());
            return HashMap::new();
        }
    };
    parse(&bytes, id).unwrap_or_else(|why| {
        log::warn!(
            "code cache {}: ignored ({why}); it will be rebuilt",
            path.display()
        );
        HashMap::new()
    })
}

/// [`read`] without the log lines (merging before a write).
pub(super) fn read_quiet(path: &Path, id: u128) -> HashMap<u128, Entry> {
    std::fs::read(path)
        .ok()
        .and_then(|b| parse(&b, id).ok())
        .unwrap_or_default()
}

/// A little-endian reader over a byte slice that fails instead of running off its end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
}

/// The entries of a cache file's bytes, or why they cannot be used.
pub(super) fn parse(bytes: &[u8], id: u128) -> Result<HashMap<u128, Entry>, String> {
    let mut c = Cursor(bytes);
    if c.take(8)? != MAGIC {
        return Err("not a krr code cache".into());
    }
    let version = c.u32()?;
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    if c.take(16)? != id.to_le_bytes() {
        return Err("made by another krr build or for another host".into());
    }
    let count = c.u32()?;
    let mut entries = HashMap::with_capacity((count as usize).min(1 << 20));
    for i in 0..count {
        let len = c.u32()? as usize;
        let sum = c.u64()?;
        let body = c.take(len)?;
        if xxhash_rust::xxh3::xxh3_64(body) != sum {
            return Err(format!("entry {i}: checksum mismatch"));
        }
        let e = parse_entry(body).map_err(|e| format!("entry {i}: {e}"))?;
        entries.insert(super::key_of(&e.material), e);
    }
    if !c.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(entries)
}

fn parse_entry(body: &[u8]) -> Result<Entry, String> {
    let mut c = Cursor(body);
    let used = c.u64()?;
    let align = c.u64()?;
    let (m, n, r) = (c.u32()? as usize, c.u32()? as usize, c.u32()? as usize);
    if !align.is_power_of_two() || align > 4096 {
        return Err(format!("alignment {align}"));
    }
    let material = c.take(m)?.to_vec();
    let code = c.take(n)?.to_vec();
    let mut relocs = Vec::with_capacity(r.min(body.len() / 16));
    for _ in 0..r {
        let offset = c.u32()?;
        let sym = Sym::from_index(c.u32()?).ok_or("unknown symbol")?;
        let addend = c.u64()? as i64;
        if offset as usize + 8 > code.len() {
            return Err("relocation outside the code".into());
        }
        relocs.push(KrrReloc {
            offset,
            sym,
            addend,
        });
    }
    if !c.0.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(Entry {
        material,
        code: StoredCode {
            code,
            align,
            relocs,
        },
        used,
    })
}

fn entry_body(e: &Entry) -> Vec<u8> {
    let c = &e.code;
    let mut b = Vec::with_capacity(32 + e.material.len() + c.code.len() + 16 * c.relocs.len());
    b.extend_from_slice(&e.used.to_le_bytes());
    b.extend_from_slice(&c.align.to_le_bytes());
    for n in [e.material.len(), c.code.len(), c.relocs.len()] {
        b.extend_from_slice(&(n as u32).to_le_bytes());
    }
    b.extend_from_slice(&e.material);
    b.extend_from_slice(&c.code);
    for r in &c.relocs {
        b.extend_from_slice(&r.offset.to_le_bytes());
        b.extend_from_slice(&r.sym.index().to_le_bytes());
        b.extend_from_slice(&r.addend.to_le_bytes());
    }
    b
}

/// The file's bytes for `entries`, the most recently used first, as many as fit in `max`.
pub(super) fn serialize(id: u128, entries: &HashMap<u128, Entry>, max: u64) -> Vec<u8> {
    let mut order: Vec<&Entry> = entries.values().collect();
    order.sort_by(|a, b| b.used.cmp(&a.used).then(a.material.cmp(&b.material)));
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count = 0u32;
    for e in order {
        let body = entry_body(e);
        if (out.len() + 12 + body.len()) as u64 > max {
            break;
        }
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        out.extend_from_slice(&body);
        count += 1;
    }
    out[HEADER - 4..HEADER].copy_from_slice(&count.to_le_bytes());
    out
}

/// Write `entries` to `path` (through a temporary file renamed over it), within
/// [`MAX_BYTES`] together with the directory's other cache files, of which the least
/// recently written go if need be.
pub(super) fn write(path: &Path, id: u128, entries: &HashMap<u128, Entry>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let bytes = serialize(id, entries, MAX_BYTES);
    make_room(dir, path, MAX_BYTES.saturating_sub(bytes.len() as u64));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Delete other cache files of `dir`, least recently modified first, until they take at
/// most `room` bytes; and temporary files more than an hour old (a writer that died).
pub(super) fn make_room(dir: &Path, keep: &Path, room: u64) {
    let Ok(list) = std::fs::read_dir(dir) else {
        return;
    };
    let list: Vec<std::fs::DirEntry> = list.flatten().collect();
    for e in &list {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if name.starts_with(".blocks-") && name.ends_with(".tmp") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut others: Vec<(std::time::SystemTime, u64, std::path::PathBuf)> = list
        .iter()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("blocks-") && name.ends_with(".krrcc") && e.path() != keep
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    others.sort();
    let mut total: u64 = others.iter().map(|o| o.1).sum();
    for (_, len, p) in others {
        if total <= room {
            break;
        }
        if std::fs::remove_file(&p).is_ok() {
            log::info!("code cache: removed {} (size bound)", p.display());
        }
        total -= len;
    }
}
