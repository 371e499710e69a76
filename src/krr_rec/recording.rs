//! A recording: the snapshot and the log files KRR finds in its working directory, here the
//! directory of the snapshot (krr-spec.md section 1).

use super::checkpoint::{self, Checkpoint};
use super::dma::DmaLog;
use super::error::KrrError;
use super::events::KrrLog;
use super::migration::Snapshot;
use std::path::{Path, PathBuf};

pub const EVENT_LOG: &str = "kernel_rr.log";
pub const NETWORK_LOG: &str = "kernel_rr_network.log";
/// The DMA log's name without a device (as KRR-INTERFACE.md names it).
pub const DMA_LOG: &str = "kernel_rr_dma.log";

/// The log files of a recording, by path (as found or as named).
#[derive(Debug, Clone, Default)]
pub struct RecordingFiles {
    pub snapshot: PathBuf,
    /// `kernel_rr.log`; `None` if absent.
    pub events: Option<PathBuf>,
    /// DMA logs with the device's devfn (`None` for `kernel_rr_dma.log`).
    pub dma: Vec<(Option<u32>, PathBuf)>,
    pub network: Option<PathBuf>,
    /// `checkpoint-<cpu>` files.
    pub checkpoints: Vec<(u32, PathBuf)>,
}

impl RecordingFiles {
    /// The files beside `snapshot`.
    pub fn beside(snapshot: &Path) -> Result<RecordingFiles, KrrError> {
        let dir = match snapshot.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut f = RecordingFiles {
            snapshot: snapshot.to_path_buf(),
            ..RecordingFiles::default()
        };
        let rd = std::fs::read_dir(&dir).map_err(|e| KrrError::Io {
            file: dir.clone(),
            source: e,
        })?;
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if name == EVENT_LOG {
                f.events = Some(path);
            } else if name == NETWORK_LOG {
                f.network = Some(path);
            } else if name == DMA_LOG {
                f.dma.push((None, path));
            } else if let Some(devfn) = name
                .strip_prefix("kernel_rr_dma-")
                .and_then(|s| s.strip_suffix(".log"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                f.dma.push((Some(devfn), path));
            } else if let Some(cpu) = name
                .strip_prefix("checkpoint-")
                .and_then(|s| s.parse::<u32>().ok())
            {
                f.checkpoints.push((cpu, path));
            }
        }
        f.dma.sort();
        f.checkpoints.sort();
        Ok(f)
    }
}

/// Everything of a recording, read.
#[derive(Debug, Clone)]
pub struct Recording {
    pub files: RecordingFiles,
    pub snapshot: Snapshot,
    /// The events; an empty log when `kernel_rr.log` is absent (see `files.events`).
    pub log: KrrLog,
    pub dma: Vec<(Option<u32>, DmaLog)>,
    pub network: Option<DmaLog>,
    pub checkpoints: Vec<(u32, Vec<Checkpoint>)>,
}

impl Recording {
    pub fn open(files: RecordingFiles) -> Result<Recording, KrrError> {
        let snapshot = Snapshot::open(&files.snapshot)?;
        let log = match &files.events {
            Some(p) => KrrLog::open(p)?,
            None => KrrLog::default(),
        };
        let dma = files
            .dma
            .iter()
            .map(|(d, p)| Ok((*d, DmaLog::open(p)?)))
            .collect::<Result<Vec<_>, KrrError>>()?;
        let network = files.network.as_deref().map(DmaLog::open).transpose()?;
        let checkpoints = files
            .checkpoints
            .iter()
            .map(|(c, p)| Ok((*c, checkpoint::open(p)?)))
            .collect::<Result<Vec<_>, KrrError>>()?;
        Ok(Recording {
            files,
            snapshot,
            log,
            dma,
            network,
            checkpoints,
        })
    }
}
