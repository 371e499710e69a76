//! The one error type of the KRR readers: every error names the file, the byte offset and,
//! for `kernel_rr.log` and the DMA logs, the index of the event or entry it is in.

use std::fmt;
use std::path::PathBuf;

/// Where in a file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub offset: u64,
    /// The event (kernel_rr.log), entry (DMA logs) or record (checkpoints) index, from 0.
    pub index: Option<u64>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: byte {}", self.file.display(), self.offset)?;
        if let Some(i) = self.index {
            write!(f, ", event {i}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KrrError {
    /// The file cannot be opened or read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    /// The input ends inside a record.
    #[error("{at}: truncated: {what} needs {needed} bytes, {available} left")]
    Truncated {
        at: Location,
        what: String,
        needed: u64,
        available: u64,
    },
    /// A field holds a value the format does not allow.
    #[error("{at}: {what}")]
    Invalid { at: Location, what: String },
    /// Something the reader cannot read without more knowledge (e.g. a device section of
    /// unknown layout in a stream without its JSON description).
    #[error("{at}: unsupported: {what}")]
    Unsupported { at: Location, what: String },
}

impl KrrError {
    pub fn location(&self) -> Option<&Location> {
        match self {
            KrrError::Io { .. } => None,
            KrrError::Truncated { at, .. }
            | KrrError::Invalid { at, .. }
            | KrrError::Unsupported { at, .. } => Some(at),
        }
    }
}

/// An error message on one line: control characters from the file (names are read from
/// it) escaped.
fn one_line(s: String) -> String {
    if !s.chars().any(char::is_control) {
        return s;
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The file name and (optional) index errors are reported against.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub file: PathBuf,
    pub index: Option<u64>,
}

impl Ctx {
    pub fn new(file: impl Into<PathBuf>) -> Ctx {
        Ctx {
            file: file.into(),
            index: None,
        }
    }
    pub fn at(&self, offset: u64) -> Location {
        Location {
            file: self.file.clone(),
            offset,
            index: self.index,
        }
    }
    pub fn invalid(&self, offset: u64, what: impl Into<String>) -> KrrError {
        KrrError::Invalid {
            at: self.at(offset),
            what: one_line(what.into()),
        }
    }
    pub fn unsupported(&self, offset: u64, what: impl Into<String>) -> KrrError {
        KrrError::Unsupported {
            at: self.at(offset),
            what: one_line(what.into()),
        }
    }
    pub fn truncated(
        &self,
        offset: u64,
        what: impl Into<String>,
        needed: u64,
        available: u64,
    ) -> KrrError {
        KrrError::Truncated {
            at: self.at(offset),
            what: one_line(what.into()),
            needed,
            available,
        }
    }
    pub fn io(&self, source: std::io::Error) -> KrrError {
        KrrError::Io {
            file: self.file.clone(),
            source,
        }
    }
}
