//! The `ram` section (krr-spec.md 2.3): the block list of the START section and the page
//! records of all its sections. Only `pc.ram` pages are kept, sparsely (pages never sent or
//! sent as zero are zero); other blocks (BIOS, option ROMs, VGA memory, ACPI tables) are
//! listed and their pages skipped.

use crate::krr_rec::error::KrrError;
use std::collections::BTreeMap;

use super::src::Src;

pub const PAGE_SIZE: u64 = 4096;
const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
/// QEMU 8's multifd flush marker: carries nothing.
const FLAG_MULTIFD_FLUSH: u64 = 0x200;

/// The guest RAM block.
pub const MAIN_BLOCK: &str = "pc.ram";

/// A RAM block of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamBlock {
    pub name: String,
    pub used_length: u64,
    /// Pages sent for it (data or zero).
    pub pages_sent: u64,
}

/// Guest RAM (`pc.ram`) as sparse pages keyed by offset in the block.
#[derive(Debug, Clone, Default)]
pub struct GuestRam {
    /// `pc.ram`'s length: the guest's RAM size.
    pub size: u64,
    pub pages: BTreeMap<u64, Box<[u8]>>,
}

impl GuestRam {
    /// The part of RAM below 4 GiB on QEMU's i440fx `pc` machine: all of it if smaller
    /// than 3.5 GiB, else 3 GiB (gigabyte-aligned); the rest sits at 4 GiB.
    pub fn below_4g(&self) -> u64 {
        if self.size >= 0xE000_0000 {
            0xC000_0000
        } else {
            self.size
        }
    }
    /// The guest-physical address of an offset in `pc.ram`.
    pub fn gpa_of(&self, offset: u64) -> Option<u64> {
        let low = self.below_4g();
        if offset < low {
            Some(offset)
        } else if offset < self.size {
            Some(0x1_0000_0000 + (offset - low))
        } else {
            None
        }
    }
    /// The offset in `pc.ram` of a guest-physical address (None: not RAM).
    pub fn offset_of(&self, gpa: u64) -> Option<u64> {
        let low = self.below_4g();
        if gpa < low {
            Some(gpa)
        } else if gpa >= 0x1_0000_0000 && gpa - 0x1_0000_0000 < self.size - low {
            Some(low + (gpa - 0x1_0000_0000))
        } else {
            None
        }
    }
    /// Read guest-physical memory (zero where no page was sent); false if not all RAM.
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            let Some(off) = gpa.checked_add(i as u64).and_then(|a| self.offset_of(a)) else {
                return false;
            };
            let page = off & !(PAGE_SIZE - 1);
            *b = self
                .pages
                .get(&page)
                .map_or(0, |p| p[(off - page) as usize]);
        }
        true
    }
    /// Guest-physical ranges of RAM: (start, length).
    pub fn gpa_ranges(&self) -> Vec<(u64, u64)> {
        let low = self.below_4g();
        let mut v = vec![(0, low)];
        if self.size > low {
            v.push((0x1_0000_0000, self.size - low));
        }
        v
    }
}

/// The RAM state collected over the `ram` sections.
#[derive(Debug, Clone, Default)]
pub struct RamState {
    /// The total announced by the START section (all blocks).
    pub total: u64,
    pub blocks: Vec<RamBlock>,
    pub main: GuestRam,
    /// The block the last record named (records with CONTINUE use it).
    current: Option<usize>,
}

impl RamState {
    /// Read one `ram` section body (START, PART or END), up to its EOS.
    pub fn read_body(&mut self, src: &mut Src) -> Result<(), KrrError> {
        loop {
            let at = src.offset();
            let h = src.be64("a RAM record header")?;
            let addr = h & !(PAGE_SIZE - 1);
            let flags = h & (PAGE_SIZE - 1);
            if flags & FLAG_MEM_SIZE != 0 {
                self.read_blocks(src, addr, at)?;
                continue;
            }
            if flags & FLAG_EOS != 0 {
                return Ok(());
            }
            if flags == FLAG_MULTIFD_FLUSH {
                continue;
            }
            let kind = flags & !FLAG_CONTINUE;
            if kind != FLAG_ZERO && kind != FLAG_PAGE {
                return Err(src.ctx.unsupported(
                    at,
                    format!("RAM record flags {flags:#x} (XBZRLE, compression, RDMA hooks are not read)"),
                ));
            }
            let block = if flags & FLAG_CONTINUE != 0 {
                self.current.ok_or_else(|| {
                    src.ctx
                        .invalid(at, "RAM record continues a block, but none was named yet")
                })?
            } else {
                let name_at = src.offset();
                let name = src.str8("a RAM block name")?;
                let i = self
                    .blocks
                    .iter()
                    .position(|b| b.name == name)
                    .ok_or_else(|| {
                        src.ctx
                            .invalid(name_at, format!("RAM block `{name}` was not announced"))
                    })?;
                self.current = Some(i);
                i
            };
            let b = &mut self.blocks[block];
            if addr >= b.used_length || b.used_length - addr < PAGE_SIZE {
                return Err(src.ctx.invalid(
                    at,
                    format!(
                        "page at {addr:#x} is outside RAM block `{}` ({:#x} bytes)",
                        b.name, b.used_length
                    ),
                ));
            }
            b.pages_sent += 1;
            let main = b.name == MAIN_BLOCK;
            if kind == FLAG_ZERO {
                let fill = src.u8("a zero page's fill byte")?;
                if main {
                    if fill == 0 {
                        self.main.pages.remove(&addr);
                    } else {
                        let page = vec![fill; PAGE_SIZE as usize].into_boxed_slice();
                        self.main.pages.insert(addr, page);
                    }
                }
            } else if main {
                let data = src.bytes(PAGE_SIZE, "a RAM page")?;
                if data.iter().all(|&x| x == 0) {
                    self.main.pages.remove(&addr);
                } else {
                    self.main.pages.insert(addr, data.into_boxed_slice());
                }
            } else {
                src.skip(PAGE_SIZE, "a RAM page")?;
            }
        }
    }

    /// The block list after a MEM_SIZE record: blocks until their lengths add up to `total`.
    fn read_blocks(&mut self, src: &mut Src, total: u64, at: u64) -> Result<(), KrrError> {
        if !self.blocks.is_empty() {
            return Err(src.ctx.invalid(at, "a second RAM block list"));
        }
        self.total = total;
        let mut left = total;
        while left > 0 {
            let bat = src.offset();
            let name = src.str8("a RAM block name")?;
            let used_length = src.be64("a RAM block length")?;
            if used_length > left {
                return Err(src.ctx.invalid(
                    bat,
                    format!("RAM block `{name}` ({used_length:#x} bytes) exceeds the announced total {total:#x}"),
                ));
            }
            if self.blocks.iter().any(|b| b.name == name) {
                return Err(src.ctx.invalid(bat, format!("RAM block `{name}` twice")));
            }
            left -= used_length;
            if name == MAIN_BLOCK {
                self.main.size = used_length;
            }
            self.blocks.push(RamBlock {
                name,
                used_length,
                pages_sent: 0,
            });
        }
        Ok(())
    }
}
