//! Where guest RAM lies in the guest-physical address space: a few windows (QEMU's `pc`
//! machine has RAM below the 32-bit PCI hole, RAM above 4 GiB and, for KRR, the ivshmem ring
//! at a high address), laid out back to back in the one host mapping of
//! [`crate::GuestMemory`]. Everything that turns a guest-physical address into a host pointer
//! or a page-bitmap index goes through [`RamWindows::offset`]; an address in no window is not
//! RAM (MMIO for data, `Unbacked` for code fetch and page walks).

/// Most windows a memory may have (the `pc` layout needs three or four).
pub const MAX_WINDOWS: usize = 8;

const PAGE: u64 = 4096;

/// One window of RAM: guest-physical `[gpa, gpa + len)`, stored at byte `offset` of the
/// mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RamWindow {
    pub gpa: u64,
    pub len: u64,
    pub offset: u64,
}

impl RamWindow {
    /// The first guest-physical address past the window.
    pub fn end(&self) -> u64 {
        self.gpa + self.len
    }
}

/// Why a window layout was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no RAM window")]
    Empty,
    #[error("more than {MAX_WINDOWS} RAM windows")]
    TooMany,
    #[error("RAM window {gpa:#x}+{len:#x} is empty or not page-aligned")]
    Unaligned { gpa: u64, len: u64 },
    #[error("RAM window {gpa:#x}+{len:#x} overlaps or precedes the one before it, or wraps")]
    Order { gpa: u64, len: u64 },
}

/// The windows, in guest-physical order, with the first one's end kept apart for the fast
/// path: an address in a first window that starts at 0 costs one compare.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamWindows {
    /// End of the first window if it starts at guest-physical 0, else 0 (no fast path).
    low_end: u64,
    count: u64,
    windows: [RamWindow; MAX_WINDOWS],
}

impl RamWindows {
    /// Check `(gpa, len)` pairs (page-aligned, non-empty, sorted, non-overlapping) and place
    /// them back to back.
    pub fn new(layout: &[(u64, u64)]) -> Result<RamWindows, LayoutError> {
        if layout.is_empty() {
            return Err(LayoutError::Empty);
        }
        if layout.len() > MAX_WINDOWS {
            return Err(LayoutError::TooMany);
        }
        let mut windows = [RamWindow::default(); MAX_WINDOWS];
        let mut offset = 0u64;
        let mut prev_end = 0u64;
        for (i, &(gpa, len)) in layout.iter().enumerate() {
            if len == 0 || gpa % PAGE != 0 || len % PAGE != 0 {
                return Err(LayoutError::Unaligned { gpa, len });
            }
            let end = gpa
                .checked_add(len)
                .ok_or(LayoutError::Order { gpa, len })?;
            if i > 0 && gpa < prev_end {
                return Err(LayoutError::Order { gpa, len });
            }
            windows[i] = RamWindow { gpa, len, offset };
            offset = offset
                .checked_add(len)
                .ok_or(LayoutError::Order { gpa, len })?;
            prev_end = end;
        }
        let low_end = if windows[0].gpa == 0 {
            windows[0].len
        } else {
            0
        };
        Ok(RamWindows {
            low_end,
            count: layout.len() as u64,
            windows,
        })
    }

    /// The windows in guest-physical order.
    pub fn iter(&self) -> impl Iterator<Item = RamWindow> + '_ {
        self.windows[..self.count as usize].iter().copied()
    }

    /// Bytes of RAM in all windows (the mapping's length).
    pub fn total(&self) -> u64 {
        self.iter().map(|w| w.len).sum()
    }

    /// Where `[phys, phys + len)` lies in the mapping, if all of it is inside one window.
    #[inline]
    pub fn offset(&self, phys: u64, len: u64) -> Option<u64> {
        match phys.checked_add(len) {
            // The first window at 0 lies at offset 0 of the mapping.
            Some(end) if end <= self.low_end => Some(phys),
            _ => self.offset_beyond_low(phys, len),
        }
    }

    /// The windows past a first one at 0 (RAM above 4 GiB, the ring): a short scan, kept
    /// out of line so that the fast path stays small.
    #[inline(never)]
    fn offset_beyond_low(&self, phys: u64, len: u64) -> Option<u64> {
        let w = self.iter().find(|w| phys.wrapping_sub(w.gpa) < w.len)?;
        let rel = phys - w.gpa;
        (len <= w.len - rel).then_some(w.offset + rel)
    }

    /// The mapping's page number of guest-physical page `page`, if it is RAM.
    #[inline]
    pub fn page_index(&self, page: u64) -> Option<u64> {
        if page >= 1 << 52 {
            return None;
        }
        self.offset(page << 12, PAGE).map(|o| o >> 12)
    }

    /// The guest-physical address of byte `offset` of the mapping.
    pub fn gpa_of_offset(&self, offset: u64) -> Option<u64> {
        self.iter()
            .find(|w| offset.wrapping_sub(w.offset) < w.len)
            .map(|w| w.gpa + (offset - w.offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_checked() {
        assert_eq!(RamWindows::new(&[]), Err(LayoutError::Empty));
        assert!(matches!(
            RamWindows::new(&[(0, 0x1001)]),
            Err(LayoutError::Unaligned { .. })
        ));
        assert!(matches!(
            RamWindows::new(&[(0x1000, 0)]),
            Err(LayoutError::Unaligned { .. })
        ));
        assert!(matches!(
            RamWindows::new(&[(0, 0x2000), (0x1000, 0x1000)]),
            Err(LayoutError::Order { .. })
        ));
        assert!(matches!(
            RamWindows::new(&[(0x10000, 0x1000), (0, 0x1000)]),
            Err(LayoutError::Order { .. })
        ));
        assert!(matches!(
            RamWindows::new(&[(0xffff_ffff_ffff_f000, 0x2000)]),
            Err(LayoutError::Order { .. })
        ));
        let many: Vec<(u64, u64)> = (0..=MAX_WINDOWS as u64).map(|i| (i << 20, 4096)).collect();
        assert_eq!(RamWindows::new(&many), Err(LayoutError::TooMany));
        // Touching windows are fine.
        assert!(RamWindows::new(&[(0, 0x1000), (0x1000, 0x1000)]).is_ok());
    }

    #[test]
    fn offsets_through_windows() {
        let w =
            RamWindows::new(&[(0, 2 << 20), (1 << 32, 2 << 20), (0xf_0000_0000, 1 << 20)]).unwrap();
        assert_eq!(w.total(), 5 << 20);
        assert_eq!(w.offset(0, 8), Some(0));
        assert_eq!(w.offset((2 << 20) - 8, 8), Some((2 << 20) - 8));
        assert_eq!(
            w.offset((2 << 20) - 4, 8),
            None,
            "across the first window's end"
        );
        assert_eq!(w.offset(2 << 20, 1), None, "the hole");
        assert_eq!(w.offset(0xfee0_0000, 4), None, "the hole");
        assert_eq!(w.offset(1 << 32, 8), Some(2 << 20));
        assert_eq!(w.offset((1 << 32) - 4, 8), None, "into the second window");
        assert_eq!(w.offset(0xf_0000_1234, 4), Some((4 << 20) + 0x1234));
        assert_eq!(w.offset(0xf_0010_0000, 1), None, "past the last window");
        assert_eq!(w.offset(u64::MAX, 2), None);
        assert_eq!(w.page_index(0xf_0000_0000 >> 12), Some(1024));
        assert_eq!(w.page_index(1 << 52), None);
        assert_eq!(w.gpa_of_offset((4 << 20) + 5), Some(0xf_0000_0005));
        assert_eq!(w.gpa_of_offset(5 << 20), None);
        let v: Vec<u64> = w.iter().map(|w| w.offset).collect();
        assert_eq!(v, [0, 2 << 20, 4 << 20]);
    }

    #[test]
    fn first_window_away_from_zero() {
        let w = RamWindows::new(&[(0x10_0000, 0x1000)]).unwrap();
        assert_eq!(w.offset(0, 1), None);
        assert_eq!(w.offset(0x10_0ff8, 8), Some(0xff8));
        assert_eq!(w.offset(0x10_0ff8, 9), None);
    }
}
