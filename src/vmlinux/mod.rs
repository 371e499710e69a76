//! A kernel's `vmlinux` ELF: its symbols, the bytes of its functions and (`lines.rs`) its DWARF
//! line table. KRR recordings are replayed against the vmlinux of the recorded kernel: the trap
//! points KRR's replayer compiles in are found here at start-up instead (`traps.rs`), moved by
//! the KASLR slide read from the snapshot.

mod lines;
pub mod traps;

use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a vmlinux cannot be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an x86-64 ELF kernel image: {msg}")]
    NotElf { path: PathBuf, msg: String },
    #[error("{path}: has no symbol table (a stripped image: use the vmlinux with symbols, e.g. Debian's linux-image-*-dbg)")]
    NoSymbols { path: PathBuf },
    #[error("{path}: no symbol `{name}` ({why})")]
    MissingSymbol {
        path: PathBuf,
        name: String,
        why: &'static str,
    },
    #[error("{path}: {msg}")]
    Lookup { path: PathBuf, msg: String },
}

/// A symbol's link-time address and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    pub size: u64,
}

/// An executable or read-only section's link-time address and contents.
struct Section {
    addr: u64,
    data: Vec<u8>,
}

/// A loaded vmlinux (link-time addresses throughout; the caller adds the KASLR slide).
pub struct Vmlinux {
    path: PathBuf,
    symbols: HashMap<String, Symbol>,
    sections: Vec<Section>,
    /// The DWARF line rows, loaded on first use (`lines.rs`).
    file: Vec<u8>,
}

impl Vmlinux {
    pub fn open(path: &Path) -> Result<Vmlinux, VmlinuxError> {
        let file = std::fs::read(path).map_err(|source| VmlinuxError::Io {
            path: path.into(),
            source,
        })?;
        Vmlinux::parse(path, file)
    }

    /// Parse an ELF image held in memory (`path` names it in messages).
    pub fn parse(path: &Path, file: Vec<u8>) -> Result<Vmlinux, VmlinuxError> {
        let not_elf = |msg: String| VmlinuxError::NotElf {
            path: path.into(),
            msg,
        };
        let elf = object::File::parse(&*file).map_err(|e| not_elf(e.to_string()))?;
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(not_elf(format!("architecture {:?}", elf.architecture())));
        }
        let mut symbols = HashMap::new();
        for s in elf.symbols() {
            if !matches!(
                s.kind(),
                SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown
            ) || s.is_undefined()
            {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            if name.is_empty() {
                continue;
            }
            // The first definition wins: local symbols of the same name (static functions in
            // several files) are ambiguous, and the trap points are all global.
            let global = s.is_global();
            let e = symbols.entry(name.to_string()).or_insert((
                Symbol {
                    addr: s.address(),
                    size: s.size(),
                },
                global,
            ));
            if global && !e.1 {
                *e = (
                    Symbol {
                        addr: s.address(),
                        size: s.size(),
                    },
                    true,
                );
            }
        }
        if symbols.is_empty() {
            return Err(VmlinuxError::NoSymbols { path: path.into() });
        }
        let mut sections = Vec::new();
        for sec in elf.sections() {
            if matches!(
                sec.kind(),
                SectionKind::Text | SectionKind::ReadOnlyData | SectionKind::ReadOnlyString
            ) && sec.address() != 0
            {
                let data = sec
                    .uncompressed_data()
                    .map_err(|e| not_elf(format!("section {:?}: {e}", sec.name())))?;
                sections.push(Section {
                    addr: sec.address(),
                    data: data.into_owned(),
                });
            }
        }
        drop(elf);
        Ok(Vmlinux {
            path: path.into(),
            symbols: symbols.into_iter().map(|(k, (s, _))| (k, s)).collect(),
            sections,
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every symbol: (name, link-time address, size).
    pub fn symbols(&self) -> impl Iterator<Item = (&str, Symbol)> {
        self.symbols.iter().map(|(n, s)| (n.as_str(), *s))
    }

    pub fn symbol(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    /// `name`, or an error saying why it is needed.
    pub fn require(&self, name: &str, why: &'static str) -> Result<Symbol, VmlinuxError> {
        self.symbol(name)
            .ok_or_else(|| VmlinuxError::MissingSymbol {
                path: self.path.clone(),
                name: name.into(),
                why,
            })
    }

    /// The image's bytes at link-time address `addr`, `len` of them, if a loaded (text or
    /// read-only) section holds them all.
    pub fn bytes(&self, addr: u64, len: u64) -> Option<&[u8]> {
        self.sections.iter().find_map(|s| {
            let off = addr.checked_sub(s.addr)?;
            let end = off.checked_add(len)?;
            (end <= s.data.len() as u64).then(|| &s.data[off as usize..end as usize])
        })
    }

    fn lookup_error(&self, msg: String) -> VmlinuxError {
        VmlinuxError::Lookup {
            path: self.path.clone(),
            msg,
        }
    }
}
