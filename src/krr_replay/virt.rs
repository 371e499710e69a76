//! Reading a KRR snapshot's memory at kernel virtual addresses, through the vCPU's 4-level
//! page tables as they are in the snapshot (4 KiB, 2 MiB and 1 GiB pages): what checking a
//! vmlinux against the snapshot needs before any replay runs.

use crate::krr_rec::migration::ram::GuestRam;

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The guest-physical address of `va` under `cr3`, if mapped.
pub fn translate(ram: &GuestRam, cr3: u64, va: u64) -> Option<u64> {
    walk(
        |pa| {
            let mut entry = [0u8; 8];
            ram.read_gpa(pa, &mut entry)
                .then(|| u64::from_le_bytes(entry))
        },
        cr3,
        va,
    )
}

/// The page walk over any physical memory (`read_u64` of an entry: `None` when no RAM is
/// there), as a debugger's access walks it: no permission checks and no accessed/dirty
/// updates, which is how KRR's replayer writes recorded data into guest memory.
pub fn walk(read_u64: impl Fn(u64) -> Option<u64>, cr3: u64, va: u64) -> Option<u64> {
    let mut table = cr3 & ADDR;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (va >> shift) & 0x1ff;
        let e = read_u64(table + index * 8)?;
        if e & PRESENT == 0 {
            return None;
        }
        if level == 0 || (level < 3 && e & LARGE != 0) {
            let size = 1u64 << shift;
            return Some((e & ADDR & !(size - 1)) | (va & (size - 1)));
        }
        table = e & ADDR;
    }
    None
}

/// The (guest-physical address, length) pieces of `len` bytes at `va` under `cr3`, page by
/// page; `None` if any page is unmapped.
pub fn pieces(
    read_u64: impl Fn(u64) -> Option<u64>,
    cr3: u64,
    va: u64,
    len: usize,
) -> Option<Vec<(u64, usize)>> {
    let mut out = Vec::new();
    let mut done = 0usize;
    while done < len {
        let at = va.wrapping_add(done as u64);
        let n = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
        out.push((walk(&read_u64, cr3, at)?, n));
        done += n;
    }
    Some(out)
}

/// Fill `buf` from virtual address `va` (page by page); false if any byte is unmapped.
pub fn read_virt(ram: &GuestRam, cr3: u64, va: u64, buf: &mut [u8]) -> bool {
    let mut done = 0usize;
    while done < buf.len() {
        let at = va.wrapping_add(done as u64);
        let in_page = (0x1000 - (at & 0xfff)) as usize;
        let n = in_page.min(buf.len() - done);
        match translate(ram, cr3, at) {
            Some(pa) if ram.read_gpa(pa, &mut buf[done..done + n]) => done += n,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_with(pages: &[(u64, Vec<u8>)]) -> GuestRam {
        let mut ram = GuestRam {
            size: 64 << 20,
            ..Default::default()
        };
        for (gpa, data) in pages {
            let mut p = vec![0u8; 4096];
            p[..data.len()].copy_from_slice(data);
            ram.pages.insert(*gpa, p.into_boxed_slice());
        }
        ram
    }

    fn entry(addr: u64, flags: u64) -> [u8; 8] {
        (addr | flags).to_le_bytes()
    }

    #[test]
    fn walks_4k_2m_and_1g_pages() {
        // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
        let va4k = 0xffff_ffff_8100_0000u64 + 0x5123;
        let va2m = 0xffff_ffff_8140_0000u64 + 0x1_2345;
        let va1g = 0xffff_8880_0000_0000u64 + 0x20_1234;
        let mut pml4 = vec![0u8; 4096];
        let mut pdpt_hi = vec![0u8; 4096];
        let mut pd = vec![0u8; 4096];
        let mut pt = vec![0u8; 4096];
        let mut pdpt_direct = vec![0u8; 4096];
        let idx = |va: u64, level: u32| ((va >> (12 + 9 * level)) & 0x1ff) as usize * 8;
        pml4[idx(va4k, 3)..][..8].copy_from_slice(&entry(0x2000, 3));
        pml4[idx(va1g, 3)..][..8].copy_from_slice(&entry(0x6000, 3));
        pdpt_hi[idx(va4k, 2)..][..8].copy_from_slice(&entry(0x3000, 3));
        pd[idx(va4k, 1)..][..8].copy_from_slice(&entry(0x4000, 3));
        pt[idx(va4k, 0)..][..8].copy_from_slice(&entry(0x9000, 3));
        pd[idx(va2m, 1)..][..8].copy_from_slice(&entry(0x20_0000, 3 | LARGE));
        pdpt_direct[idx(va1g, 2)..][..8].copy_from_slice(&entry(0, 3 | LARGE));
        let ram = ram_with(&[
            (0x1000, pml4),
            (0x2000, pdpt_hi),
            (0x3000, pd),
            (0x4000, pt),
            (0x6000, pdpt_direct),
            (0x9000, (0..=255u8).cycle().take(4096).collect()),
        ]);
        assert_eq!(translate(&ram, 0x1000, va4k), Some(0x9123));
        assert_eq!(translate(&ram, 0x1000, va2m), Some(0x21_2345));
        assert_eq!(translate(&ram, 0x1000, va1g), Some(0x20_1234));
        // Bytes across the end of the mapped 4 KiB page: the next page is not mapped.
        let mut buf = [0u8; 4];
        assert!(read_virt(&ram, 0x1000, va4k, &mut buf));
        assert_eq!(buf, [0x23, 0x24, 0x25, 0x26]);
        let end = va4k - 0x123 + 0xffe;
        assert!(!read_virt(&ram, 0x1000, end, &mut buf));
        assert_eq!(translate(&ram, 0x1000, 0x40_0000), None);
    }
}
