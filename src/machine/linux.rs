//! Direct Linux boot through the 64-bit boot protocol (Documentation/arch/x86/boot.rst): the
//! bzImage's protected-mode part is loaded at its preferred address, a zero page
//! (`struct boot_params`) describes memory (e820), the command line and the initrd, and the
//! CPU starts in long mode at `startup_64` (load address + 0x200) with RSI pointing at the
//! zero page, identity-mapped page tables and a flat GDT.
//!
//! Hand-written rather than rust-vmm's `linux-loader`: that crate loads through `vm-memory`'s
//! `GuestMemory` trait, while krr's guest memory is its own mapping, and the part of the
//! protocol needed here is a few dozen field writes.

use krr_runtime::arch::{cr0, cr4, efer, pte};
use krr_runtime::{seg, ArchState, DescriptorTable, GuestMemory, Segment};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: not a bzImage (no \"HdrS\" boot header at offset 0x202)")]
    NotBzImage { path: String },
    #[error("{path}: boot protocol {version:#x} is too old (need 2.12 or newer for 64-bit entry)")]
    OldProtocol { path: String, version: u16 },
    #[error("{path}: the kernel does not support the 64-bit entry point (xloadflags bit 0 clear)")]
    No64BitEntry { path: String },
    #[error("{path}: truncated ({len} bytes, the header says {need})")]
    Truncated {
        path: String,
        len: usize,
        need: usize,
    },
    #[error("guest memory of {mem} MiB is too small for the kernel ({need} MiB needed at least)")]
    TooLittleMemory { mem: u64, need: u64 },
    #[error("the initrd ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooLarge { size: usize, limit: u64 },
    #[error("the command line is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("guest memory: {0}")]
    Memory(#[from] krr_runtime::MemoryError),
}

/// Fixed guest-physical layout of the boot structures (all below 1 MiB).
const GDT_ADDR: u64 = 0x500;
const BOOT_PARAMS_ADDR: u64 = 0x7000;
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
/// Four page directories of 2 MiB pages: the first 4 GiB identity-mapped.
const PD_ADDR: u64 = 0xb000;
const CMDLINE_ADDR: u64 = 0x20000;
/// Base memory ends here (the EBDA-style reserved tail up to 640 KiB).
const LOW_MEM_END: u64 = 0x9fc00;

// Offsets inside struct boot_params.
const BP_ACPI_RSDP_ADDR: usize = 0x70;
const BP_EXT_RAMDISK_IMAGE: usize = 0xc0;
const BP_EXT_RAMDISK_SIZE: usize = 0xc4;
const BP_EXT_CMD_LINE_PTR: usize = 0xc8;
const BP_E820_ENTRIES: usize = 0x1e8;
const BP_SETUP_HEADER: usize = 0x1f1;
const BP_TYPE_OF_LOADER: usize = 0x210;
const BP_LOADFLAGS: usize = 0x211;
const BP_RAMDISK_IMAGE: usize = 0x218;
const BP_RAMDISK_SIZE: usize = 0x21c;
const BP_CMD_LINE_PTR: usize = 0x228;
const BP_E820_TABLE: usize = 0x2d0;

// Offsets inside the bzImage (setup header fields).
const HDR_SETUP_SECTS: usize = 0x1f1;
const HDR_MAGIC: usize = 0x202;
const HDR_VERSION: usize = 0x206;
const HDR_INITRD_ADDR_MAX: usize = 0x22c;
const HDR_XLOADFLAGS: usize = 0x236;
const HDR_CMDLINE_SIZE: usize = 0x238;
const HDR_PREF_ADDRESS: usize = 0x258;
const HDR_INIT_SIZE: usize = 0x260;
/// The setup header ends at 0x202 + the byte at 0x201 (its length field).
const HDR_END_BYTE: usize = 0x201;

const LOADED_HIGH: u8 = 1;
const CAN_USE_HEAP: u8 = 0x80;
const XLF_KERNEL_64: u16 = 1;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// What was loaded where.
#[derive(Debug, Clone)]
pub struct BootInfo {
    pub kernel_addr: u64,
    pub entry: u64,
    pub initrd: Option<(u64, usize)>,
}

/// Load `kernel` (bzImage bytes) and `initrd` into `mem` and set `cpu` up for the 64-bit entry.
pub fn load(
    mem: &mut GuestMemory,
    cpu: &mut ArchState,
    kernel_path: &str,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let path = kernel_path.to_string();
    if kernel.len() < 0x270 || &kernel[HDR_MAGIC..HDR_MAGIC + 4] != b"HdrS" {
        return Err(BootError::NotBzImage { path });
    }
    let version = u16_at(kernel, HDR_VERSION);
    if version < 0x20c {
        return Err(BootError::OldProtocol { path, version });
    }
    if u16_at(kernel, HDR_XLOADFLAGS) & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry { path });
    }
    let setup_sects = match kernel[HDR_SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let pm_offset = (setup_sects + 1) * 512;
    if kernel.len() <= pm_offset {
        return Err(BootError::Truncated {
            path,
            len: kernel.len(),
            need: pm_offset + 1,
        });
    }
    let pm = &kernel[pm_offset..];
    let load_addr = u64_at(kernel, HDR_PREF_ADDRESS).max(0x100000);
    let init_size = u32_at(kernel, HDR_INIT_SIZE) as u64;
    let mem_size = mem.size();
    let need = load_addr + init_size.max(pm.len() as u64);
    if need > mem_size {
        return Err(BootError::TooLittleMemory {
            mem: mem_size >> 20,
            need: need.div_ceil(1 << 20),
        });
    }
    mem.write(load_addr, pm)?;

    // The zero page: the setup header copied from the image, then our fields.
    let mut bp = vec![0u8; 4096];
    let hdr_end = (0x202 + kernel[HDR_END_BYTE] as usize)
        .min(kernel.len())
        .min(4096);
    bp[BP_SETUP_HEADER..hdr_end].copy_from_slice(&kernel[BP_SETUP_HEADER..hdr_end]);
    bp[BP_TYPE_OF_LOADER] = 0xff; // an undefined loader
    bp[BP_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;

    let max_cmdline = u32_at(kernel, HDR_CMDLINE_SIZE) as usize;
    if cmdline.len() > max_cmdline {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: max_cmdline,
        });
    }
    let mut c = cmdline.as_bytes().to_vec();
    c.push(0);
    mem.write(CMDLINE_ADDR, &c)?;
    bp[BP_CMD_LINE_PTR..BP_CMD_LINE_PTR + 4].copy_from_slice(&(CMDLINE_ADDR as u32).to_le_bytes());
    bp[BP_EXT_CMD_LINE_PTR..BP_EXT_CMD_LINE_PTR + 4].copy_from_slice(&0u32.to_le_bytes());

    let initrd_loc = match initrd {
        Some(rd) => Some(place_initrd(mem, &mut bp, kernel, rd, need)?),
        None => None,
    };

    // The firmware's ACPI tables in the BIOS area, found through the zero page (or a scan).
    let rsdp = super::acpi::write_with(mem, super::acpi::AcpiConfig { with_ioapic: true })?;
    bp[BP_ACPI_RSDP_ADDR..BP_ACPI_RSDP_ADDR + 8].copy_from_slice(&rsdp.to_le_bytes());

    // e820: low memory, the legacy hole, the BIOS area (ACPI tables), everything from 1 MiB up.
    let e820 = [
        (0u64, LOW_MEM_END, E820_RAM),
        (LOW_MEM_END, 0xa0000 - LOW_MEM_END, E820_RESERVED),
        (
            super::acpi::ACPI_BASE,
            super::acpi::ACPI_END - super::acpi::ACPI_BASE,
            E820_RESERVED,
        ),
        (0x100000, mem_size - 0x100000, E820_RAM),
    ];
    bp[BP_E820_ENTRIES] = e820.len() as u8;
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        let o = BP_E820_TABLE + i * 20;
        bp[o..o + 8].copy_from_slice(&addr.to_le_bytes());
        bp[o + 8..o + 16].copy_from_slice(&size.to_le_bytes());
        bp[o + 16..o + 20].copy_from_slice(&kind.to_le_bytes());
    }
    mem.write(BOOT_PARAMS_ADDR, &bp)?;

    let gdt_limit = write_page_tables_and_gdt(mem)?;

    let entry = load_addr + 0x200;
    enter_flat_long_mode(
        cpu,
        DescriptorTable {
            base: GDT_ADDR,
            limit: gdt_limit,
        },
        (0x10, 0x18),
        PML4_ADDR,
        entry,
    );
    cpu.gpr[krr_runtime::gpr::RSI] = BOOT_PARAMS_ADDR;
    Ok(BootInfo {
        kernel_addr: load_addr,
        entry,
        initrd: initrd_loc,
    })
}

/// The initrd goes as high as the kernel allows, page-aligned, above everything the kernel
/// needs (`kernel_end`); its place and size go into the zero page `bp`.
fn place_initrd(
    mem: &mut GuestMemory,
    bp: &mut [u8],
    kernel: &[u8],
    rd: &[u8],
    kernel_end: u64,
) -> Result<(u64, usize), BootError> {
    let limit = (u32_at(kernel, HDR_INITRD_ADDR_MAX) as u64 + 1)
        .min(mem.size())
        .min(1 << 32);
    let addr = limit.checked_sub(rd.len() as u64).map(|a| a & !0xfff);
    match addr {
        Some(a) if a >= kernel_end => {
            mem.write(a, rd)?;
            bp[BP_RAMDISK_IMAGE..BP_RAMDISK_IMAGE + 4].copy_from_slice(&(a as u32).to_le_bytes());
            bp[BP_RAMDISK_SIZE..BP_RAMDISK_SIZE + 4]
                .copy_from_slice(&(rd.len() as u32).to_le_bytes());
            bp[BP_EXT_RAMDISK_IMAGE..BP_EXT_RAMDISK_IMAGE + 4]
                .copy_from_slice(&((a >> 32) as u32).to_le_bytes());
            bp[BP_EXT_RAMDISK_SIZE..BP_EXT_RAMDISK_SIZE + 4]
                .copy_from_slice(&(((rd.len() as u64) >> 32) as u32).to_le_bytes());
            Ok((a, rd.len()))
        }
        _ => Err(BootError::InitrdTooLarge {
            size: rd.len(),
            limit,
        }),
    }
}

/// The identity map of the first 4 GiB with 2 MiB pages at [`PML4_ADDR`], and the boot GDT
/// at [`GDT_ADDR`]; returns the GDT's limit.
fn write_page_tables_and_gdt(mem: &mut GuestMemory) -> Result<u16, BootError> {
    mem.write(PML4_ADDR, &[0u8; 4096])?;
    mem.write(PDPT_ADDR, &[0u8; 4096])?;
    mem.write_u64(PML4_ADDR, PDPT_ADDR | pte::P | pte::RW)?;
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 4096;
        mem.write_u64(PDPT_ADDR + i * 8, pd | pte::P | pte::RW)?;
        for j in 0..512u64 {
            let phys = (i << 30) | (j << 21);
            mem.write_u64(pd + j * 8, phys | pte::P | pte::RW | pte::PS)?;
        }
    }

    // GDT: null, null, 0x10 = 64-bit code, 0x18 = data (the boot protocol's __BOOT_CS/DS).
    let gdt: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_u64(GDT_ADDR + 8 * i as u64, *d)?;
    }
    Ok((gdt.len() * 8 - 1) as u16)
}

/// Put `cpu` in 64-bit mode at CPL0 as a boot loader leaves it: flat code and data segments
/// (`selectors` = code, data) from the GDT `gdt`, no IDT, paging on with the tables at `pml4`,
/// interrupts off, registers zero, at `rip`. The caller flushes the TLB (`Core::flush_tlb`).
pub fn enter_flat_long_mode(
    cpu: &mut ArchState,
    gdt: DescriptorTable,
    selectors: (u16, u16),
    pml4: u64,
    rip: u64,
) {
    cpu.gdtr = gdt;
    cpu.idtr = DescriptorTable { base: 0, limit: 0 };
    cpu.seg[seg::CS] = Segment::flat(selectors.0, Segment::CODE64_DPL0);
    for s in [seg::DS, seg::ES, seg::SS, seg::FS, seg::GS] {
        cpu.seg[s] = Segment::flat(selectors.1, Segment::DATA_DPL0);
    }
    cpu.tr = Segment {
        selector: 0,
        attrs: 0x8b,
        limit: 0xffff,
        base: 0,
    };
    cpu.cr0 = cr0::PG | cr0::NE | cr0::ET | cr0::MP | cr0::PE;
    cpu.cr3 = pml4;
    cpu.cr4 = cr4::PAE;
    cpu.efer = efer::LME | efer::LMA;
    cpu.rflags = krr_runtime::rflags::FIXED1;
    cpu.gpr = [0; 16];
    cpu.rip = rip;
}
