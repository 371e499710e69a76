//! The disk behind virtio-blk: a raw image file krr never modifies, plus an overlay of the
//! sectors the guest wrote.
//!
//! * The image is opened read-only; its size must be a non-zero multiple of 512 bytes (the
//!   capacity in sectors). Reads take each sector from the overlay if the guest wrote it,
//!   else from the image.
//! * Without an overlay path the overlay lives in memory (a map of sector -> 512 bytes) and
//!   is gone when krr exits: every run starts from the same image.
//! * With an overlay path, written sectors go to that file, so they survive the run and a
//!   later run with the same overlay sees them. Format ([`OVERLAY_MAGIC`]): a 16-byte header
//!   (the magic, then the image's size in bytes, little-endian u64) and records of a sector
//!   number (little-endian u64) followed by the sector's 512 bytes. A sector written again
//!   is overwritten in place; new sectors are appended. A missing file is created; an
//!   existing one is checked (magic, image size, whole records, sectors inside the image).
//! * A read-only disk takes no writes; an overlay path is then only read (it must exist).
//!
//! Recording does not depend on the overlay's persistence: the trace holds the bytes the
//! device wrote into guest RAM, so replay needs neither the image nor the overlay.
//!
//! Left out: locking the overlay against a second krr using it at the same time, sparse or
//! compressed image formats (qcow2 etc.), block devices as images.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per sector.
pub const SECTOR_SIZE: usize = 512;
/// The first 8 bytes of an overlay file.
pub const OVERLAY_MAGIC: [u8; 8] = *b"KRROVL01";
/// Overlay header: magic, image size.
pub const OVERLAY_HEADER_LEN: u64 = 16;
/// Overlay record: sector number, sector bytes.
pub const OVERLAY_RECORD_LEN: u64 = 8 + SECTOR_SIZE as u64;

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    #[error("disk image {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("disk image {path} is empty")]
    Empty { path: PathBuf },
    #[error("disk image {path} is {size} bytes, not a whole number of 512-byte sectors")]
    NotSectorMultiple { path: PathBuf, size: u64 },
    #[error("disk overlay {path}: {source}")]
    Overlay { path: PathBuf, source: io::Error },
    #[error("disk overlay {path} is not a krr overlay (no {:?} header)", String::from_utf8_lossy(&OVERLAY_MAGIC))]
    OverlayMagic { path: PathBuf },
    #[error("disk overlay {path} belongs to an image of {found} bytes, this one has {expected}")]
    OverlayImageSize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("disk overlay {path} ends in a partial record ({len} bytes in all)")]
    OverlayTruncated { path: PathBuf, len: u64 },
    #[error("disk overlay {path} holds sector {sector}, beyond the image's {sectors}")]
    OverlaySector {
        path: PathBuf,
        sector: u64,
        sectors: u64,
    },
}

/// Where written sectors go.
#[derive(Debug)]
enum Overlay {
    Memory(BTreeMap<u64, Box<[u8; SECTOR_SIZE]>>),
    File {
        file: File,
        /// Sector -> offset of its record.
        index: BTreeMap<u64, u64>,
        /// End of the last record (where new ones go).
        end: u64,
    },
}

/// A disk image with its overlay; see the module documentation.
#[derive(Debug)]
pub struct Disk {
    image: File,
    sectors: u64,
    read_only: bool,
    overlay: Overlay,
}

impl Disk {
    pub fn open(image: &Path, overlay: Option<&Path>, read_only: bool) -> Result<Disk, DiskError> {
        let image_err = |source| DiskError::Image {
            path: image.to_path_buf(),
            source,
        };
        let file = File::open(image).map_err(image_err)?;
        let meta = file.metadata().map_err(image_err)?;
        if !meta.is_file() {
            return Err(DiskError::NotAFile {
                path: image.to_path_buf(),
            });
        }
        let size = meta.len();
        if size == 0 {
            return Err(DiskError::Empty {
                path: image.to_path_buf(),
            });
        }
        if !size.is_multiple_of(SECTOR_SIZE as u64) {
            return Err(DiskError::NotSectorMultiple {
                path: image.to_path_buf(),
                size,
            });
        }
        let sectors = size / SECTOR_SIZE as u64;
        let overlay = match overlay {
            None => Overlay::Memory(BTreeMap::new()),
            Some(path) => open_overlay(path, size, read_only)?,
        };
        Ok(Disk {
            image: file,
            sectors,
            read_only,
            overlay,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether written sectors go to a file.
    pub fn has_overlay_file(&self) -> bool {
        matches!(self.overlay, Overlay::File { .. })
    }

    /// How many distinct sectors the overlay holds.
    pub fn overlay_sectors(&self) -> usize {
        match &self.overlay {
            Overlay::Memory(map) => map.len(),
            Overlay::File { index, .. } => index.len(),
        }
    }

    /// Whether `count` sectors from `sector` are inside the disk.
    pub fn in_range(&self, sector: u64, count: u64) -> bool {
        sector
            .checked_add(count)
            .is_some_and(|end| end <= self.sectors)
    }

    /// Read whole sectors from `sector` into `buf` (a multiple of 512 bytes, inside the disk).
    pub fn read(&self, sector: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(sector, buf.len())?;
        let count = buf.len() / SECTOR_SIZE;
        let mut i = 0;
        while i < count {
            let at = |n: usize| n * SECTOR_SIZE;
            if self.read_overlay(sector + i as u64, &mut buf[at(i)..at(i + 1)])? {
                i += 1;
                continue;
            }
            // A run of sectors the overlay does not hold: one read from the image.
            let mut j = i + 1;
            while j < count && !self.in_overlay(sector + j as u64) {
                j += 1;
            }
            let offset = (sector + i as u64) * SECTOR_SIZE as u64;
            self.image.read_exact_at(&mut buf[at(i)..at(j)], offset)?;
            i = j;
        }
        Ok(())
    }

    /// Write whole sectors from `sector` (into the overlay; never the image).
    pub fn write(&mut self, sector: u64, data: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the disk is read-only",
            ));
        }
        self.check(sector, data.len())?;
        let sectors = data.chunks(SECTOR_SIZE).enumerate();
        match &mut self.overlay {
            Overlay::Memory(map) => {
                for (i, chunk) in sectors {
                    let mut bytes = Box::new([0u8; SECTOR_SIZE]);
                    bytes.copy_from_slice(chunk);
                    map.insert(sector + i as u64, bytes);
                }
                Ok(())
            }
            Overlay::File { file, index, end } => {
                let mut appended = Vec::new();
                let mut new_sectors = Vec::new();
                for (i, chunk) in sectors {
                    let s = sector + i as u64;
                    match index.get(&s) {
                        Some(&off) => file.write_all_at(chunk, off + 8)?,
                        None => {
                            index.insert(s, *end + appended.len() as u64);
                            new_sectors.push(s);
                            appended.extend_from_slice(&s.to_le_bytes());
                            appended.extend_from_slice(chunk);
                        }
                    }
                }
                if appended.is_empty() {
                    return Ok(());
                }
                if let Err(e) = file.write_all_at(&appended, *end) {
                    // The records may be partly written: forget them, so reads stay correct.
                    for s in new_sectors {
                        index.remove(&s);
                    }
                    return Err(e);
                }
                *end += appended.len() as u64;
                Ok(())
            }
        }
    }

    /// Make written sectors durable (the overlay file's data reaches its storage).
    pub fn flush(&mut self) -> io::Result<()> {
        match &self.overlay {
            Overlay::Memory(_) => Ok(()),
            Overlay::File { file, .. } => file.sync_data(),
        }
    }

    fn check(&self, sector: u64, len: usize) -> io::Result<()> {
        if !len.is_multiple_of(SECTOR_SIZE) || !self.in_range(sector, (len / SECTOR_SIZE) as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{len} bytes at sector {sector} are not whole sectors inside the disk"),
            ));
        }
        Ok(())
    }

    fn in_overlay(&self, sector: u64) -> bool {
        match &self.overlay {
            Overlay::Memory(map) => map.contains_key(&sector),
            Overlay::File { index, .. } => index.contains_key(&sector),
        }
    }

    /// Copy `sector` from the overlay into `buf` if the overlay holds it.
    fn read_overlay(&self, sector: u64, buf: &mut [u8]) -> io::Result<bool> {
        match &self.overlay {
            Overlay::Memory(map) => match map.get(&sector) {
                Some(bytes) => {
                    buf.copy_from_slice(&bytes[..]);
                    Ok(true)
                }
                None => Ok(false),
            },
            Overlay::File { file, index, .. } => match index.get(&sector) {
                Some(&off) => {
                    file.read_exact_at(buf, off + 8)?;
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}

/// Open (or, when writable and missing, create) the overlay file at `path` and index it.
fn open_overlay(path: &Path, image_size: u64, read_only: bool) -> Result<Overlay, DiskError> {
    let err = |source| DiskError::Overlay {
        path: path.to_path_buf(),
        source,
    };
    let file = if read_only {
        File::open(path)
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }
    .map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    let mut header = [0u8; OVERLAY_HEADER_LEN as usize];
    header[..8].copy_from_slice(&OVERLAY_MAGIC);
    header[8..].copy_from_slice(&image_size.to_le_bytes());
    if len == 0 {
        if !read_only {
            file.write_all_at(&header, 0).map_err(err)?;
        }
        return Ok(Overlay::File {
            file,
            index: BTreeMap::new(),
            end: OVERLAY_HEADER_LEN,
        });
    }
    let mut found = [0u8; OVERLAY_HEADER_LEN as usize];
    let magic_ok = len >= 8 && {
        file.read_exact_at(&mut found[..8], 0).map_err(err)?;
        found[..8] == OVERLAY_MAGIC
    };
    if !magic_ok {
        return Err(DiskError::OverlayMagic {
            path: path.to_path_buf(),
        });
    }
    let truncated = || DiskError::OverlayTruncated {
        path: path.to_path_buf(),
        len,
    };
    if len < OVERLAY_HEADER_LEN || !(len - OVERLAY_HEADER_LEN).is_multiple_of(OVERLAY_RECORD_LEN) {
        return Err(truncated());
    }
    file.read_exact_at(&mut found[8..], 8).map_err(err)?;
    let mut size = [0u8; 8];
    size.copy_from_slice(&found[8..]);
    let found_size = u64::from_le_bytes(size);
    if found_size != image_size {
        return Err(DiskError::OverlayImageSize {
            path: path.to_path_buf(),
            expected: image_size,
            found: found_size,
        });
    }
    let index = index_records(&file, path, len, image_size / SECTOR_SIZE as u64)?;
    Ok(Overlay::File {
        file,
        index,
        end: len,
    })
}

/// Read every record's sector number (in blocks of records), checking each is inside the
/// image. A sector recorded twice maps to its last record.
fn index_records(
    file: &File,
    path: &Path,
    len: u64,
    sectors: u64,
) -> Result<BTreeMap<u64, u64>, DiskError> {
    const BLOCK_RECORDS: u64 = 256;
    let mut index = BTreeMap::new();
    let mut block = vec![0u8; (BLOCK_RECORDS * OVERLAY_RECORD_LEN) as usize];
    let mut off = OVERLAY_HEADER_LEN;
    while off < len {
        let n = ((len - off) / OVERLAY_RECORD_LEN).min(BLOCK_RECORDS);
        let bytes = &mut block[..(n * OVERLAY_RECORD_LEN) as usize];
        file.read_exact_at(bytes, off)
            .map_err(|source| DiskError::Overlay {
                path: path.to_path_buf(),
                source,
            })?;
        for record in bytes.chunks(OVERLAY_RECORD_LEN as usize) {
            let mut s = [0u8; 8];
            s.copy_from_slice(&record[..8]);
            let sector = u64::from_le_bytes(s);
            if sector >= sectors {
                return Err(DiskError::OverlaySector {
                    path: path.to_path_buf(),
                    sector,
                    sectors,
                });
            }
            index.insert(sector, off);
            off += OVERLAY_RECORD_LEN;
        }
    }
    Ok(index)
}

/// A directory under the system temporary directory, removed when dropped. For tests.
#[cfg(test)]
pub(super) struct TempDir(pub PathBuf);

#[cfg(test)]
impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("krr-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Write a file of `sectors` sectors where byte i of sector s is `(s * 7 + i) as u8`.
    pub fn image(&self, name: &str, sectors: u64) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, pattern(0, sectors as usize)).expect("write image");
        path
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test image's bytes for `count` sectors from `first`.
#[cfg(test)]
pub(super) fn pattern(first: u64, count: usize) -> Vec<u8> {
    (0..count * SECTOR_SIZE)
        .map(|i| ((first + (i / SECTOR_SIZE) as u64) * 7 + (i % SECTOR_SIZE) as u64) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_are_clear() {
        let t = TempDir::new("disk-open");
        let missing = t.0.join("missing.img");
        let e = Disk::open(&missing, None, false).unwrap_err();
        assert!(
            matches!(&e, DiskError::Image { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("missing.img"), "{e}");
        let e = Disk::open(&t.0, None, false).unwrap_err();
        assert!(matches!(e, DiskError::NotAFile { .. }), "{e}");
        let empty = t.0.join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            Disk::open(&empty, None, false),
            Err(DiskError::Empty { .. })
        ));
        let odd = t.0.join("odd.img");
        std::fs::write(&odd, vec![0u8; 1000]).unwrap();
        let e = Disk::open(&odd, None, false).unwrap_err();
        assert!(
            matches!(e, DiskError::NotSectorMultiple { size: 1000, .. }),
            "{e}"
        );
        // A read-only disk does not create a missing overlay.
        let img = t.image("a.img", 4);
        let e = Disk::open(&img, Some(&t.0.join("none.ovl")), true).unwrap_err();
        assert!(matches!(e, DiskError::Overlay { .. }), "{e}");
    }

    #[test]
    fn memory_overlay_keeps_the_image_unchanged() {
        let t = TempDir::new("disk-mem");
        let img = t.image("a.img", 8);
        let mut d = Disk::open(&img, None, false).unwrap();
        assert_eq!(d.sectors(), 8);
        assert!(!d.has_overlay_file());
        let mut buf = vec![0u8; 3 * SECTOR_SIZE];
        d.read(2, &mut buf).unwrap();
        assert_eq!(buf, pattern(2, 3));
        d.write(3, &[0xaa; SECTOR_SIZE]).unwrap();
        d.read(2, &mut buf).unwrap();
        assert_eq!(buf[..SECTOR_SIZE], pattern(2, 1)[..]);
        assert_eq!(buf[SECTOR_SIZE..2 * SECTOR_SIZE], [0xaa; SECTOR_SIZE]);
        assert_eq!(buf[2 * SECTOR_SIZE..], pattern(4, 1)[..]);
        assert_eq!(d.overlay_sectors(), 1);
        d.flush().unwrap();
        assert_eq!(
            std::fs::read(&img).unwrap(),
            pattern(0, 8),
            "image untouched"
        );
        // Out of range and partial sectors are refused.
        assert!(d.read(7, &mut buf).is_err());
        assert!(d.write(0, &[0; 100]).is_err());
        assert!(d.read(u64::MAX, &mut buf).is_err());
    }

    #[test]
    fn file_overlay_persists_and_is_checked() {
        let t = TempDir::new("disk-file");
        let img = t.image("a.img", 8);
        let ovl = t.0.join("a.ovl");
        let mut d = Disk::open(&img, Some(&ovl), false).unwrap();
        assert!(d.has_overlay_file());
        d.write(1, &[1; 2 * SECTOR_SIZE]).unwrap();
        d.write(2, &[2; SECTOR_SIZE]).unwrap(); // overwritten in place
        d.write(7, &[7; SECTOR_SIZE]).unwrap();
        d.flush().unwrap();
        drop(d);
        let len = std::fs::metadata(&ovl).unwrap().len();
        assert_eq!(len, OVERLAY_HEADER_LEN + 3 * OVERLAY_RECORD_LEN);
        assert_eq!(
            std::fs::read(&img).unwrap(),
            pattern(0, 8),
            "image untouched"
        );
        // Reopened (also read-only): the writes are there.
        for read_only in [false, true] {
            let d = Disk::open(&img, Some(&ovl), read_only).unwrap();
            assert_eq!(d.overlay_sectors(), 3);
            let mut buf = vec![0u8; 8 * SECTOR_SIZE];
            d.read(0, &mut buf).unwrap();
            let mut expected = pattern(0, 8);
            expected[SECTOR_SIZE..2 * SECTOR_SIZE].fill(1);
            expected[2 * SECTOR_SIZE..3 * SECTOR_SIZE].fill(2);
            expected[7 * SECTOR_SIZE..].fill(7);
            assert_eq!(buf, expected);
        }
        let mut ro = Disk::open(&img, Some(&ovl), true).unwrap();
        assert_eq!(
            ro.write(0, &[0; SECTOR_SIZE]).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        // Another image size, a partial record, a foreign file, a sector beyond the image.
        let small = t.image("small.img", 4);
        let e = Disk::open(&small, Some(&ovl), false).unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::OverlayImageSize {
                    expected: 2048,
                    found: 4096,
                    ..
                }
            ),
            "{e}"
        );
        let mut bytes = std::fs::read(&ovl).unwrap();
        bytes.push(0);
        let cut = t.0.join("cut.ovl");
        std::fs::write(&cut, &bytes).unwrap();
        let e = Disk::open(&img, Some(&cut), false).unwrap_err();
        assert!(matches!(e, DiskError::OverlayTruncated { .. }), "{e}");
        let foreign = t.0.join("foreign.ovl");
        std::fs::write(&foreign, b"hello").unwrap();
        let e = Disk::open(&img, Some(&foreign), false).unwrap_err();
        assert!(matches!(e, DiskError::OverlayMagic { .. }), "{e}");
        bytes.pop();
        bytes[16..24].copy_from_slice(&8u64.to_le_bytes());
        let beyond = t.0.join("beyond.ovl");
        std::fs::write(&beyond, &bytes).unwrap();
        let e = Disk::open(&img, Some(&beyond), false).unwrap_err();
        assert!(
            matches!(e, DiskError::OverlaySector { sector: 8, .. }),
            "{e}"
        );
    }
}
