//! The persistent code cache: compiled blocks kept on disk, so a second replay or run of the
//! same kernel installs them instead of compiling them again.
//!
//! - What is stored: a block's machine code as Cranelift produced it, with krr's relocations
//!   (`compile::reloc`: every process-specific address in block code is one, patched when the
//!   code is installed) and its alignment.
//! - The key ([`key_of`]): everything the lowering reads from the block, written out in full
//!   (the entry holds it and a hit compares it byte for byte, the 128-bit hash only finds the
//!   entry): the linear start address, the block mode, the behaviour profile, each
//!   instruction's length and iced-x86 code (what the CPUID gate made of it) and the
//!   instructions' bytes. The rest that code depends on is the file's: krr's build (a hash of
//!   its executable), the host ISA Cranelift compiles for and which pure host functions the
//!   host has ([`file_id`]); a file of another build or host is another file.
//! - Safety: a file is read whole and checked (magic, version, file id, every entry's
//!   checksum and bounds) before any of it is used; anything wrong and the file is ignored
//!   (logged) and rewritten from this run's blocks. Writes go to a temporary file renamed
//!   over the old one, so concurrent krr processes never see a partial file (the last writer
//!   wins; entries it did not have are compiled again by the next run).
//! - Size: at most [`MAX_BYTES`] in the directory; the entries used least recently, then
//!   other builds' files (oldest first), go.
//!
//! One [`Store`] per directory and process, shared by every engine (one per vCPU).

mod file;

use crate::block::Block;
use crate::compile::reloc::KrrReloc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use file::MAX_BYTES;

/// A stored block: its code, alignment and relocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredCode {
    pub code: Vec<u8>,
    pub align: u64,
    pub relocs: Vec<KrrReloc>,
}

/// An entry: the key material it was compiled from, its code, when it was last used (Unix
/// seconds).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub material: Vec<u8>,
    pub code: StoredCode,
    pub used: u64,
}

/// What determines a block's code: see the module documentation.
pub(crate) fn key_material(block: &Block) -> Vec<u8> {
    let mut m = Vec::with_capacity(24 + 4 * block.insns.len() + block.bytes.len());
    m.extend_from_slice(&block.start.to_le_bytes());
    m.extend_from_slice(&block.mode.to_le_bytes());
    m.extend_from_slice(block.profile.name().as_bytes());
    m.push(0);
    m.extend_from_slice(&(block.insns.len() as u32).to_le_bytes());
    for i in &block.insns {
        m.extend_from_slice(&(i.code() as u16).to_le_bytes());
        m.extend_from_slice(&(i.len() as u16).to_le_bytes());
        // A host-executed SIMD form is called by its stub's number, which this process gave
        // out in the order forms were first lowered: code compiled under another numbering
        // would run another instruction (found when a replay started at a snapshot).
        if crate::helpers::host_exec::is_host_form(i.code()) {
            let id = crate::helpers::host_exec::host_form(i).map_or(u32::MAX, |f| f.id);
            m.extend_from_slice(&id.to_le_bytes());
        }
    }
    m.extend_from_slice(&block.bytes);
    m
}

/// The hash a block's entry is found by.
pub(crate) fn key_of(material: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(material)
}

/// The identity of what compiled code depends on besides the block: krr's build (its
/// executable's bytes), the host ISA's Cranelift flags, the pure host functions present.
/// `None` when the executable cannot be read (the cache is then off).
pub(crate) fn file_id(isa: &dyn cranelift_codegen::isa::TargetIsa) -> Option<u128> {
    static EXE: OnceLock<Option<u128>> = OnceLock::new();
    let exe = (*EXE.get_or_init(|| {
        let path = std::env::current_exe().ok()?;
        match hash_file(&path) {
            Ok(h) => Some(h),
            Err(e) => {
                log::warn!("code cache off: cannot read {}: {e}", path.display());
                None
            }
        }
    }))?;
    let mut m = Vec::new();
    m.extend_from_slice(&exe.to_le_bytes());
    m.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    m.extend_from_slice(isa.triple().to_string().as_bytes());
    for v in isa.flags().iter().chain(isa.isa_flags()) {
        m.extend_from_slice(format!("|{v}").as_bytes());
    }
    for p in crate::helpers::pure::Pure::ALL {
        m.push(p.func().is_some() as u8);
    }
    Some(xxhash_rust::xxh3::xxh3_128(&m))
}

/// The xxh3-128 of a file's contents, read in pieces (an executable with debug information
/// is tens of megabytes).
fn hash_file(path: &Path) -> std::io::Result<u128> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.digest128());
        }
        h.update(&buf[..n]);
    }
}

/// The cache of one directory in this process.
pub(crate) struct Store {
    path: PathBuf,
    id: u128,
    entries: HashMap<u128, Entry>,
    /// Keys added since the file was last written.
    added: usize,
    pub hits: u64,
}

/// Now, in Unix seconds.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// The store for `dir` and file id `id`, shared with this process's other engines; its
    /// file is read the first time.
    pub(crate) fn open(dir: &Path, id: u128) -> Arc<Mutex<Store>> {
        type Registry = Mutex<Vec<(PathBuf, Arc<Mutex<Store>>)>>;
        static OPEN: OnceLock<Registry> = OnceLock::new();
        let path = dir.join(format!("blocks-{:016x}.krrcc", id as u64));
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = open.iter().find(|(p, _)| *p == path) {
            return s.clone();
        }
        let entries = file::read(&path, id);
        log::info!("code cache {}: {} blocks", path.display(), entries.len());
        let store = Arc::new(Mutex::new(Store {
            path: path.clone(),
            id,
            entries,
            added: 0,
            hits: 0,
        }));
        open.push((path, store.clone()));
        store
    }

    /// The stored code for a block with key material `material`, if any.
    pub(crate) fn get(&mut self, material: &[u8]) -> Option<&StoredCode> {
        let e = self.entries.get_mut(&key_of(material))?;
        if e.material != material {
            return None;
        }
        e.used = now();
        self.hits += 1;
        Some(&e.code)
    }

    /// Keep `code`, compiled from key material `material`.
    pub(crate) fn insert(&mut self, material: Vec<u8>, code: StoredCode) {
        let key = key_of(&material);
        self.entries.insert(
            key,
            Entry {
                material,
                code,
                used: now(),
            },
        );
        self.added += 1;
    }

    /// Write the file if blocks were added (merged with what another process wrote since).
    pub(crate) fn save(&mut self) {
        if self.added == 0 {
            return;
        }
        for (k, e) in file::read_quiet(&self.path, self.id) {
            self.entries.entry(k).or_insert(e);
        }
        match file::write(&self.path, self.id, &self.entries) {
            Ok(()) => {
                self.added = 0;
                log::info!(
                    "code cache {}: {} blocks written",
                    self.path.display(),
                    self.entries.len()
                );
            }
            Err(e) => log::warn!("code cache {}: not written: {e}", self.path.display()),
        }
    }
}

/// The default cache directory: `$KRR_CODE_CACHE` (`off` turns the cache off), else
/// `$XDG_CACHE_HOME/krr`, else `$HOME/.cache/krr`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("KRR_CODE_CACHE") {
        return (v != "off" && !v.is_empty()).then(|| PathBuf::from(v));
    }
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty());
    let base = xdg
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("krr"))
}

#[cfg(test)]
mod tests;
