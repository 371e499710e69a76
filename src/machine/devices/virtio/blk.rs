//! virtio-blk (virtio 1.x section 5.2) over a [`Disk`]: one request queue of up to
//! [`QUEUE_MAX_SIZE`] entries.
//!
//! Features offered: VIRTIO_BLK_F_SEG_MAX (`seg_max` = queue size - 2, so header, data and
//! status of any request fit the ring), VIRTIO_BLK_F_BLK_SIZE (512), VIRTIO_BLK_F_FLUSH,
//! VIRTIO_BLK_F_RO for a read-only disk, VIRTIO_RING_F_INDIRECT_DESC and
//! VIRTIO_RING_F_EVENT_IDX (plus VIRTIO_F_VERSION_1 from the transport).
//!
//! Requests (a 16-byte header `type, reserved, sector`, data, then a status byte; split into
//! descriptors any way the driver likes):
//! * VIRTIO_BLK_T_IN: read the device-writable data length (a multiple of 512) from `sector`;
//! * VIRTIO_BLK_T_OUT: write the device-readable data after the header; a read-only disk
//!   fails it with IOERR without writing. If the driver did not negotiate FLUSH the write is
//!   made durable before it completes (virtio's rule for a device that offers FLUSH);
//! * VIRTIO_BLK_T_FLUSH: make the overlay file durable (nothing to do for a memory overlay);
//! * VIRTIO_BLK_T_GET_ID: the serial number, 20 bytes, zero-padded ([`VirtioBlk::set_serial`];
//!   [`DEFAULT_SERIAL`] unless set);
//! * anything else (discard, write zeroes, ... which are not offered): UNSUPP.
//!
//! Status: OK, IOERR (data length not whole sectors, sectors beyond the capacity, a host I/O
//! error, a write to a read-only disk), UNSUPP. A request without room for its header or
//! status byte cannot be answered: the transport marks the device as needing a reset.
//!
//! Device configuration: `capacity` (sectors), `seg_max`, `blk_size`; every other field reads
//! 0 (their features are not offered) and nothing is writable (no CONFIG_WCE).
//!
//! Left out: VIRTIO_BLK_F_SIZE_MAX, GEOMETRY, TOPOLOGY, CONFIG_WCE, MQ, DISCARD,
//! WRITE_ZEROES, SECURE_ERASE, LIFETIME, ZONED; capacity changes at run time.

use super::disk::{Disk, DiskError, SECTOR_SIZE};
use super::queue::{Chain, QueueError};
use super::{LogOnce, VirtioDevice, F_EVENT_IDX, F_INDIRECT_DESC};
use crate::machine::devices::dma::DmaMemory;
use std::path::Path;

/// The virtio device type of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// PCI class: mass storage, SCSI (what QEMU's virtio-blk-pci reports).
pub const BLK_PCI_CLASS: u32 = 0x01_0000;

/// Feature: `seg_max` is valid (bit 2).
pub const F_SEG_MAX: u64 = 1 << 2;
/// Feature: the disk is read-only (bit 5).
pub const F_RO: u64 = 1 << 5;
/// Feature: `blk_size` is valid (bit 6).
pub const F_BLK_SIZE: u64 = 1 << 6;
/// Feature: VIRTIO_BLK_T_FLUSH (bit 9).
pub const F_FLUSH: u64 = 1 << 9;

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
/// Request status.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Request header: le32 type, le32 reserved, le64 sector.
pub const REQ_HEADER_LEN: u64 = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// The serial number unless [`VirtioBlk::set_serial`] says otherwise.
pub const DEFAULT_SERIAL: &str = "krr-disk0";

/// The one request queue's maximum size.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// `struct virtio_blk_config` offsets and the length presented (through
/// `write_zeroes_may_unmap` and its padding).
pub const CONFIG_CAPACITY: usize = 0x00;
pub const CONFIG_SEG_MAX: usize = 0x0c;
pub const CONFIG_BLK_SIZE: usize = 0x14;
pub const CONFIG_LEN: usize = 0x3c;

/// Bytes moved per disk access while serving a request.
const CHUNK: u64 = 64 * 1024;

/// A virtio block device; plug it in with [`super::VirtioPci::new`].
#[derive(Debug)]
pub struct VirtioBlk {
    disk: Disk,
    serial: [u8; ID_BYTES],
    logged: LogOnce,
}

impl VirtioBlk {
    /// Open `image` (never modified) with writes going to `overlay` (a file) or to memory.
    pub fn open(
        image: &Path,
        overlay: Option<&Path>,
        read_only: bool,
    ) -> Result<VirtioBlk, DiskError> {
        Ok(Self::new(Disk::open(image, overlay, read_only)?))
    }

    pub fn new(disk: Disk) -> Self {
        let mut blk = VirtioBlk {
            disk,
            serial: [0; ID_BYTES],
            logged: LogOnce::default(),
        };
        blk.set_serial(DEFAULT_SERIAL);
        blk
    }

    /// The GET_ID answer: the first 20 bytes of `serial`, zero-padded.
    pub fn set_serial(&mut self, serial: &str) {
        self.serial = [0; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        self.serial[..n].copy_from_slice(&serial.as_bytes()[..n]);
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[CONFIG_CAPACITY..CONFIG_CAPACITY + 8].copy_from_slice(&self.disk.sectors().to_le_bytes());
        let seg_max = u32::from(QUEUE_MAX_SIZE - 2);
        c[CONFIG_SEG_MAX..CONFIG_SEG_MAX + 4].copy_from_slice(&seg_max.to_le_bytes());
        let blk_size = SECTOR_SIZE as u32;
        c[CONFIG_BLK_SIZE..CONFIG_BLK_SIZE + 4].copy_from_slice(&blk_size.to_le_bytes());
        c
    }

    /// An IOERR status, logged once per kind.
    fn ioerr(&mut self, kind: &'static str, what: impl FnOnce() -> String) -> u8 {
        if self.logged.first(kind) {
            log::warn!(
                "virtio-blk: {}: request fails with IOERR (logged once)",
                what()
            );
        }
        S_IOERR
    }

    /// Whether `len` bytes at `sector` are whole sectors inside the disk; IOERR if not.
    fn check_range(&mut self, sector: u64, len: u64) -> Result<(), u8> {
        if !len.is_multiple_of(SECTOR_SIZE as u64) {
            return Err(self.ioerr("partial-sector", || {
                format!("data of {len} bytes is not whole 512-byte sectors")
            }));
        }
        let sectors = self.disk.sectors();
        if !self.disk.in_range(sector, len / SECTOR_SIZE as u64) {
            return Err(self.ioerr("out-of-range", || {
                format!("{len} bytes at sector {sector} go past the capacity of {sectors} sectors")
            }));
        }
        Ok(())
    }

    /// T_IN: returns the status and the data bytes written.
    fn read_request(
        &mut self,
        chain: &Chain,
        mem: &mut dyn DmaMemory,
        sector: u64,
        len: u64,
    ) -> Result<(u8, u64), QueueError> {
        if let Err(status) = self.check_range(sector, len) {
            return Ok((status, 0));
        }
        let mut buf = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            let first = sector + done / SECTOR_SIZE as u64;
            if let Err(e) = self.disk.read(first, &mut buf[..n]) {
                return Ok((
                    self.ioerr("read", || format!("reading sector {first}: {e}")),
                    done,
                ));
            }
            chain.write(mem, done, &buf[..n])?;
            done += n as u64;
        }
        Ok((S_OK, len))
    }

    /// T_OUT: the data follows the header in the device-readable part.
    fn write_request(
        &mut self,
        chain: &Chain,
        mem: &mut dyn DmaMemory,
        sector: u64,
        len: u64,
        features: u64,
    ) -> Result<u8, QueueError> {
        if self.disk.read_only() {
            return Ok(self.ioerr("read-only", || "write to a read-only disk".to_string()));
        }
        if let Err(status) = self.check_range(sector, len) {
            return Ok(status);
        }
        let mut buf = vec![0u8; len.min(CHUNK) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            chain.read(mem, REQ_HEADER_LEN + done, &mut buf[..n])?;
            let first = sector + done / SECTOR_SIZE as u64;
            if let Err(e) = self.disk.write(first, &buf[..n]) {
                return Ok(self.ioerr("write", || format!("writing sector {first}: {e}")));
            }
            done += n as u64;
        }
        if features & F_FLUSH == 0 {
            return Ok(self.flush());
        }
        Ok(S_OK)
    }

    fn flush(&mut self) -> u8 {
        match self.disk.flush() {
            Ok(()) => S_OK,
            Err(e) => self.ioerr("flush", || format!("flushing the overlay: {e}")),
        }
    }
}

impl VirtioDevice for VirtioBlk {
    fn name(&self) -> &str {
        "virtio-blk"
    }

    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn pci_class(&self) -> u32 {
        BLK_PCI_CLASS
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() { F_RO } else { 0 };
        F_SEG_MAX | F_BLK_SIZE | F_FLUSH | ro | F_INDIRECT_DESC | F_EVENT_IDX
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = c.get(offset + i).copied().unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: usize, _data: &[u8]) -> bool {
        false
    }

    fn handle(
        &mut self,
        _queue: u16,
        chain: &Chain,
        mem: &mut dyn DmaMemory,
        features: u64,
    ) -> Result<u32, QueueError> {
        let writable = chain.writable_len();
        if chain.readable_len() < REQ_HEADER_LEN || writable == 0 {
            return Err(QueueError::BadRequest(
                "a request needs a 16-byte header and a status byte",
            ));
        }
        let mut header = [0u8; REQ_HEADER_LEN as usize];
        chain.read(mem, 0, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..]);
        let sector = u64::from_le_bytes(s);
        // The status byte is the last writable byte; the data comes before it.
        let data_in = writable - 1;
        let data_out = chain.readable_len() - REQ_HEADER_LEN;
        let (status, written) = match kind {
            T_IN => self.read_request(chain, mem, sector, data_in)?,
            T_OUT => (
                self.write_request(chain, mem, sector, data_out, features)?,
                0,
            ),
            T_FLUSH => (self.flush(), 0),
            T_GET_ID => {
                let n = data_in.min(ID_BYTES as u64) as usize;
                chain.write(mem, 0, &self.serial[..n])?;
                (S_OK, n as u64)
            }
            other => {
                if self.logged.first("unsupported") {
                    log::info!(
                        "virtio-blk: request type {other} is not supported (UNSUPP; logged once)"
                    );
                }
                (S_UNSUPP, 0)
            }
        };
        chain.write(mem, data_in, &[status])?;
        // `len` counts bytes written from the start of the writable part: the status byte
        // only when everything before it was written.
        let len = written + u64::from(written == data_in);
        Ok(len.min(u64::from(u32::MAX)) as u32)
    }
}
