//! Guest physical memory: one anonymous mapping, committed lazily by the host kernel as the
//! guest touches it, so a large guest costs only what it uses.

use memmap2::{MmapMut, MmapOptions};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map { size: u64, source: std::io::Error },
    #[error("guest physical range {addr:#x}+{len:#x} lies outside the {size:#x}-byte RAM")]
    OutOfRange { addr: u64, len: u64, size: u64 },
}

pub struct GuestMemory {
    map: MmapMut,
    /// One bit per 4 KiB page: the page holds translated code (writes must invalidate it).
    code_pages: Vec<u64>,
}

pub const PAGE_SIZE: u64 = 4096;

impl GuestMemory {
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let map = MmapOptions::new()
            .len(size as usize)
            .map_anon()
            .map_err(|source| MemoryError::Map { size, source })?;
        let pages = size / PAGE_SIZE;
        Ok(GuestMemory {
            map,
            code_pages: vec![0; pages.div_ceil(64) as usize],
        })
    }

    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let end = addr.checked_add(len as u64);
        match end {
            Some(end) if end <= self.size() => Ok(addr as usize..end as usize),
            _ => Err(MemoryError::OutOfRange {
                addr,
                len: len as u64,
                size: self.size(),
            }),
        }
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.map[r]);
        Ok(())
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, data.len())?;
        self.map[r].copy_from_slice(data);
        Ok(())
    }

    pub fn slice(&self, addr: u64, len: usize) -> Result<&[u8], MemoryError> {
        let r = self.range(addr, len)?;
        Ok(&self.map[r])
    }

    pub fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write_u64(&mut self, addr: u64, v: u64) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }

    pub fn is_code_page(&self, page: u64) -> bool {
        self.code_pages
            .get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }

    pub fn set_code_page(&mut self, page: u64, on: bool) {
        if let Some(w) = self.code_pages.get_mut((page / 64) as usize) {
            if on {
                *w |= 1 << (page % 64);
            } else {
                *w &= !(1 << (page % 64));
            }
        }
    }

    /// Raw view of the code-page bitmap for helpers that only hold a `*mut CpuState`.
    pub fn code_page_bitmap(&mut self) -> (*mut u64, usize) {
        (self.code_pages.as_mut_ptr(), self.code_pages.len())
    }
}
