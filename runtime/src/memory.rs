//! Guest physical memory: one anonymous mapping, committed lazily by the host kernel as the
//! guest touches it, so a large guest costs only what it uses. The mapping holds the RAM
//! windows ([`crate::ram_windows`]) back to back: [`GuestMemory::new`] one window at 0,
//! [`GuestMemory::with_windows`] a layout with holes (QEMU's `pc`: RAM below the 32-bit PCI
//! hole, RAM above 4 GiB, the ivshmem ring high up). Every address taken here is
//! guest-physical; the page bitmaps are indexed by the mapping's page, their methods take
//! guest-physical page numbers.
//!
//! It also keeps the RAM digest that checkpoints compare ([`GuestMemory::digest`]) current
//! cheaply: a bitmap of the pages written since the last digest and each page's hash as of
//! then, so a digest rehashes only what changed. Every writer marks the pages it writes:
//! [`GuestMemory::write`] here, the MMU's slow-path stores and page-table A/D updates, and a
//! TLB write entry marks its page when it is filled (compiled code writes through it without
//! a call); [`crate::Core::ram_hash`] drops those entries when it takes a digest.

use crate::ram_windows::{LayoutError, RamWindow, RamWindows};
use memmap2::{MmapMut, MmapOptions};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map { size: u64, source: std::io::Error },
    #[error(
        "guest physical range {addr:#x}+{len:#x} lies outside the {size:#x}-byte RAM \
         (or crosses a RAM window's end)"
    )]
    OutOfRange { addr: u64, len: u64, size: u64 },
    #[error("bad guest RAM layout: {0}")]
    Layout(#[from] LayoutError),
}

pub struct GuestMemory {
    map: MmapMut,
    /// Where the mapping's bytes lie in guest-physical space.
    windows: RamWindows,
    /// One bit per 4 KiB page: the page holds translated code (writes must invalidate it).
    code_pages: Vec<u64>,
    /// One bit per page: written (or writable through a TLB entry) since the last digest.
    dirty_pages: Vec<u64>,
    /// Each page's [`page_hash`] as of the last digest; current wherever its dirty bit is clear.
    page_hashes: Vec<u64>,
}

/// The hash of one 4 KiB page that the RAM digest combines.
pub fn page_hash(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

/// The RAM digest from each page's hash: xxh3 of the page hashes as little-endian u64s, in
/// page order.
fn combine(page_hashes: &[u64]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for chunk in page_hashes.chunks(512) {
        let mut bytes = [0u8; 512 * 8];
        for (b, v) in bytes.chunks_exact_mut(8).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&bytes[..chunk.len() * 8]);
    }
    h.digest()
}

pub const PAGE_SIZE: u64 = 4096;

impl GuestMemory {
    /// `size` bytes (rounded up to a page) of zeroed RAM at guest-physical 0: one window.
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        GuestMemory::with_windows(&[(0, size)])
    }

    /// Zeroed RAM in the windows `(gpa, len)` (page-aligned, sorted, non-overlapping, at
    /// most [`crate::ram_windows::MAX_WINDOWS`]), back to back in one mapping; addresses in
    /// no window are not RAM.
    pub fn with_windows(windows: &[(u64, u64)]) -> Result<GuestMemory, MemoryError> {
        let windows = RamWindows::new(windows)?;
        let size = windows.total();
        let map = MmapOptions::new()
            .len(size as usize)
            .map_anon()
            .map_err(|source| MemoryError::Map { size, source })?;
        let pages = size / PAGE_SIZE;
        // A fresh anonymous mapping is all zeros: every page's hash is the zero page's.
        let zero_hash = page_hash(&[0; PAGE_SIZE as usize]);
        Ok(GuestMemory {
            map,
            windows,
            code_pages: vec![0; pages.div_ceil(64) as usize],
            dirty_pages: vec![0; pages.div_ceil(64) as usize],
            page_hashes: vec![zero_hash; pages as usize],
        })
    }

    /// Bytes of RAM in all windows (the mapping's length). For [`GuestMemory::new`]'s one
    /// window at 0 that is also where RAM ends.
    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes of guest RAM the host holds in memory (pages the guest, a snapshot or a check
    /// touched; the rest of the mapping costs nothing), by `mincore`. 0 if the host will not
    /// say.
    pub fn resident_bytes(&self) -> u64 {
        let pages = self.map.len().div_ceil(PAGE_SIZE as usize);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this mapping, page-aligned (mmap returns page-aligned memory)
        // and `vec` has one byte per page of it, which is what mincore writes.
        let r = unsafe {
            libc::mincore(
                self.map.as_ptr() as *mut libc::c_void,
                self.map.len(),
                vec.as_mut_ptr(),
            )
        };
        if r != 0 {
            return 0;
        }
        vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * PAGE_SIZE
    }

    /// The RAM windows in guest-physical order (`offset`: where each lies in the mapping).
    pub fn windows(&self) -> impl Iterator<Item = RamWindow> + '_ {
        self.windows.iter()
    }

    /// Each window with its bytes (snapshot writers, digests of one window).
    pub fn window_bytes(&self) -> impl Iterator<Item = (RamWindow, &[u8])> + '_ {
        self.windows
            .iter()
            .map(|w| (w, &self.map[w.offset as usize..(w.offset + w.len) as usize]))
    }

    /// The layout, for the CPU context.
    pub(crate) fn ram_windows(&self) -> &RamWindows {
        &self.windows
    }

    /// Is `[addr, addr + len)` RAM, all inside one window?
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.windows.offset(addr, len).is_some()
    }

    /// Where the mapping starts in the host's address space (what TLB addends are built from).
    pub fn host_address(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// The mapping's base, for the CPU context: writes through it must mark their pages
    /// ([`crate::CpuState::mark_dirty_page`]).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// The mapping's bytes of guest-physical `[addr, addr + len)`, which must lie in one
    /// window.
    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        match self.windows.offset(addr, len as u64) {
            Some(off) => Ok(off as usize..off as usize + len),
            None => Err(MemoryError::OutOfRange {
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
        self.mark_dirty_range(r.clone());
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

    /// Does guest-physical page `page` (a page number) hold translated code?
    pub fn is_code_page(&self, page: u64) -> bool {
        self.windows.page_index(page).is_some_and(|i| {
            self.code_pages
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        })
    }

    /// Mark or unmark guest-physical page `page` as holding translated code (no effect
    /// outside RAM).
    pub fn set_code_page(&mut self, page: u64, on: bool) {
        let Some(i) = self.windows.page_index(page) else {
            return;
        };
        if let Some(w) = self.code_pages.get_mut((i / 64) as usize) {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// Raw view of the code-page bitmap for helpers that only hold a `*mut CpuState`: one
    /// bit per page of the mapping (not per guest-physical page; see [`GuestMemory::windows`]).
    pub fn code_page_bitmap(&mut self) -> (*mut u64, usize) {
        (self.code_pages.as_mut_ptr(), self.code_pages.len())
    }

    /// Raw view of the dirty-page bitmap (same shape as the code-page bitmap), for the MMU.
    pub(crate) fn dirty_page_bitmap(&mut self) -> *mut u64 {
        self.dirty_pages.as_mut_ptr()
    }

    /// Note that `len` bytes at guest-physical `addr` were written (the pages inside RAM).
    pub fn mark_dirty(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = addr.saturating_add(len - 1);
        let windows = self.windows;
        for w in windows.iter() {
            let (lo, hi) = (addr.max(w.gpa), last.min(w.end() - 1));
            if lo <= hi {
                let start = (w.offset + lo - w.gpa) as usize;
                self.mark_dirty_range(start..(w.offset + hi - w.gpa) as usize + 1);
            }
        }
    }

    /// Mark the mapping's pages under byte range `r` (non-empty ranges only).
    fn mark_dirty_range(&mut self, r: std::ops::Range<usize>) {
        if r.is_empty() {
            return;
        }
        let page = PAGE_SIZE as usize;
        for i in r.start / page..=(r.end - 1) / page {
            self.dirty_pages[i / 64] |= 1 << (i % 64);
        }
    }

    /// Each page's hash (mapping order) as of the last digest ([`crate::Core::ram_hash`]
    /// brings it up to date): a debugger's snapshots find the pages that changed.
    pub fn page_hashes(&self) -> &[u64] {
        &self.page_hashes
    }

    /// The guest-physical address of the mapping's page `index`.
    pub fn page_gpa(&self, index: usize) -> u64 {
        let off = index as u64 * PAGE_SIZE;
        self.windows
            .iter()
            .find(|w| off >= w.offset && off < w.offset + w.len)
            .map(|w| w.gpa + (off - w.offset))
            .expect("a page of the mapping")
    }

    /// Pages written since the last digest.
    pub fn dirty_page_count(&self) -> u64 {
        self.dirty_pages.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The RAM digest: rehash the pages written since the last one, then combine every page's
    /// hash. Only sound while no TLB write entry lets a page be written unmarked, which is why
    /// the public way in is [`crate::Core::ram_hash`].
    pub(crate) fn digest(&mut self) -> u64 {
        for (word_index, word) in self.dirty_pages.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let page = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let start = page * PAGE_SIZE as usize;
                self.page_hashes[page] = page_hash(&self.map[start..start + PAGE_SIZE as usize]);
            }
        }
        combine(&self.page_hashes)
    }

    /// The RAM digest computed from scratch (every page hashed again), to check the
    /// incremental one against.
    pub fn full_digest(&self) -> u64 {
        let hashes: Vec<u64> = self.map.chunks(PAGE_SIZE as usize).map(page_hash).collect();
        combine(&hashes)
    }
}
