//! Guest RAM in windows with holes between them (QEMU's `pc` layout): `GuestMemory` reads and
//! writes by guest-physical address, the MMU walks page tables in a high window, fills the TLB
//! and takes slow paths through every window, and an address in the hole is not RAM.

use krr_runtime::arch::pte::{A, D, NX, RW};
use krr_runtime::mmu::{fetch_code, load_slow, store_slow, MemFault};
use krr_runtime::{
    seg, Core, CpuState, GuestMemory, MemoryError, PageTableBuilder, RamWindow, Segment,
};

const LOW: (u64, u64) = (0, 2 << 20);
const HIGH: (u64, u64) = (1 << 32, 2 << 20);
const RING: (u64, u64) = (0xf_0000_0000, 1 << 20);
const LAYOUT: [(u64, u64); 3] = [LOW, HIGH, RING];
/// Page tables live in the ring window.
const PT_POOL: (u64, u64) = (RING.0 + 0x8_0000, RING.0 + 0x10_0000);
const SUPERVISOR: usize = 0;

fn core() -> (Core, PageTableBuilder) {
    let mut core = Core::with_windows(&LAYOUT).unwrap();
    // CPL0, so that supervisor pages can be fetched from.
    core.arch_mut().seg[seg::CS] = Segment::flat(0x08, Segment::CODE64_DPL0);
    let pt = PageTableBuilder::new(core.mem_mut(), PT_POOL.0, PT_POOL.1);
    core.arch_mut().cr3 = pt.cr3;
    (core, pt)
}

fn cpu(core: &mut Core) -> &mut CpuState {
    // SAFETY: the tests read and write fields only; they never move or replace the state.
    unsafe { core.state_mut() }
}

#[test]
fn windows_are_laid_out_back_to_back() {
    let mem = GuestMemory::with_windows(&LAYOUT).unwrap();
    assert_eq!(mem.size(), 5 << 20);
    let w: Vec<RamWindow> = mem.windows().collect();
    assert_eq!(
        w,
        [
            RamWindow {
                gpa: 0,
                len: 2 << 20,
                offset: 0
            },
            RamWindow {
                gpa: 1 << 32,
                len: 2 << 20,
                offset: 2 << 20
            },
            RamWindow {
                gpa: 0xf_0000_0000,
                len: 1 << 20,
                offset: 4 << 20
            },
        ]
    );
    assert!(mem.contains(RING.0, RING.1));
    assert!(!mem.contains(RING.0, RING.1 + 1));
    assert!(!mem.contains(2 << 20, 1));
    // `new` is one window at 0.
    let one = GuestMemory::new(3 << 20).unwrap();
    let w: Vec<RamWindow> = one.windows().collect();
    assert_eq!(
        w,
        [RamWindow {
            gpa: 0,
            len: 3 << 20,
            offset: 0
        }]
    );
    assert!(matches!(
        GuestMemory::with_windows(&[HIGH, LOW]),
        Err(MemoryError::Layout(_))
    ));
}

#[test]
fn guest_memory_reads_and_writes_every_window() {
    let mut mem = GuestMemory::with_windows(&LAYOUT).unwrap();
    for (gpa, len) in LAYOUT {
        mem.write_u64(gpa, gpa | 1).unwrap();
        mem.write_u64(gpa + len - 8, gpa | 2).unwrap();
        assert_eq!(mem.read_u64(gpa).unwrap(), gpa | 1);
        assert_eq!(mem.read_u64(gpa + len - 8).unwrap(), gpa | 2);
        assert_eq!(
            mem.slice(gpa + len - 8, 8).unwrap(),
            (gpa | 2).to_le_bytes()
        );
        // Across the window's end, and in the hole past it.
        assert!(matches!(
            mem.read_u64(gpa + len - 4),
            Err(MemoryError::OutOfRange { .. })
        ));
        assert!(mem.write(gpa + len - 1, &[0, 0]).is_err());
        assert!(mem.slice(gpa + len, 1).is_err());
        assert!(mem.read_u64(gpa + len).is_err());
    }
    // Nothing spilled into a neighbour: the mapping holds the windows in order.
    let (w, bytes) = mem.window_bytes().nth(1).unwrap();
    assert_eq!(w.gpa, HIGH.0);
    assert_eq!(bytes[..8], (HIGH.0 | 1).to_le_bytes());
    assert!(mem.read_u64(u64::MAX - 3).is_err());
}

#[test]
fn code_and_dirty_pages_by_guest_physical_page() {
    let (mut core, _) = core();
    let ring_page = (RING.0 + 0x3000) >> 12;
    let high_page = (HIGH.0 + 0x1000) >> 12;
    core.mem_mut().set_code_page(ring_page, true);
    assert!(core.mem().is_code_page(ring_page));
    assert!(core.cpu().is_code_page(ring_page));
    // The same mapping index in another window, and pages in the hole, are not code pages.
    assert!(!core.cpu().is_code_page(0x3000 >> 12));
    assert!(!core.cpu().is_code_page((2 << 20) >> 12));
    cpu(&mut core).set_code_page(high_page, true);
    cpu(&mut core).set_code_page((3 << 20) >> 12, true); // the hole: ignored
    assert!(core.mem().is_code_page(high_page));
    assert!(!core.mem().is_code_page((3 << 20) >> 12));
    cpu(&mut core).set_code_page(high_page, false);
    assert!(!core.mem().is_code_page(high_page));

    // The digest over the mapping follows writes in any window, however they are made.
    let d = core.ram_hash();
    assert_eq!(d, core.mem().full_digest());
    core.mem_mut().write_u64(RING.0 + 0x10, 7).unwrap();
    assert_eq!(core.ram_hash(), core.mem().full_digest());
    cpu(&mut core).mark_dirty_page(HIGH.0 >> 12);
    core.mem_mut().mark_dirty(HIGH.0 - 8, 16);
    assert_eq!(core.mem().dirty_page_count(), 1);
    core.mem_mut().mark_dirty(0, u64::MAX);
    assert_eq!(core.mem().dirty_page_count(), (5 << 20) / 4096);
    assert_eq!(core.ram_hash(), core.mem().full_digest());
}

/// What compiled code does on a TLB hit: go through the entry's host address, no call.
fn tlb_host(core: &Core, linear: u64, write: bool) -> Option<*mut u8> {
    let host = core.cpu().exec.tlb.lookup(SUPERVISOR, write, linear, 1)?;
    Some(host as *mut u8)
}

#[test]
fn the_mmu_walks_tables_in_a_high_window_and_reaches_every_window() {
    let (mut core, mut pt) = core();
    let data = [
        (0x7000_0000, 0x1000),          // low window
        (0x7000_1000, HIGH.0 + 0x5000), // above 4 GiB
        (0x7000_2000, RING.0 + 0x2000), // the ring
        // An access across these two pages goes from the end of the high window to the ring.
        (0x7000_3000, HIGH.0 + HIGH.1 - 0x1000),
        (0x7000_4000, RING.0),
    ];
    for (linear, phys) in data {
        pt.map_4k(core.mem_mut(), linear, phys, RW | NX);
    }
    let hole = 0x7000_8000;
    pt.map_4k(core.mem_mut(), hole, 0xfee0_0000, RW | NX);
    let code = 0x7001_0000;
    pt.map_4k(core.mem_mut(), code, RING.0 + 0x4000, 0);
    pt.map_4k(core.mem_mut(), code + 0x1000, 0xfed0_0000, 0);
    core.mem_mut()
        .write(RING.0 + 0x4000, &[0x90, 0xc3])
        .unwrap();
    core.mem_mut()
        .write(RING.0 + 0x4ffe, &[0x0f, 0x0b])
        .unwrap();

    for (i, (linear, phys)) in data.iter().take(3).enumerate() {
        let v = 0x1111_0000 + i as u64;
        store_slow(cpu(&mut core), linear + 8, v, 8, SUPERVISOR).unwrap();
        assert_eq!(core.mem().read_u64(phys + 8).unwrap(), v);
        assert_eq!(load_slow(cpu(&mut core), linear + 8, 8, SUPERVISOR), Ok(v));
        // The walk set A and D in the tables of the ring window.
        let pte = core.mem().read_u64(leaf_entry(&core, *linear)).unwrap();
        assert_eq!(pte & (A | D), A | D, "{linear:#x}");
        // The fills point at this window's bytes in the mapping.
        let host = tlb_host(&core, *linear + 8, false).expect("read entry");
        // SAFETY: a filled entry maps the page inside guest RAM, which `core` keeps alive.
        assert_eq!(unsafe { (host as *const u64).read_unaligned() }, v);
    }

    // A page-crossing access from the high window's last page into the ring.
    let across = 0x7000_3ffc;
    store_slow(cpu(&mut core), across, 0x8877_6655_4433_2211, 8, SUPERVISOR).unwrap();
    assert_eq!(
        core.mem().slice(HIGH.0 + HIGH.1 - 4, 4).unwrap(),
        [0x11, 0x22, 0x33, 0x44]
    );
    assert_eq!(
        core.mem().slice(RING.0, 4).unwrap(),
        [0x55, 0x66, 0x77, 0x88]
    );
    assert_eq!(
        load_slow(cpu(&mut core), across, 8, SUPERVISOR),
        Ok(0x8877_6655_4433_2211)
    );
    assert_eq!(core.ram_hash(), core.mem().full_digest());

    // The hole is not RAM: without a bus, data accesses there are unbacked, and nothing is
    // cached for them.
    assert_eq!(
        load_slow(cpu(&mut core), hole + 0x20, 4, SUPERVISOR),
        Err(MemFault::Unbacked { phys: 0xfee0_0020 })
    );
    assert_eq!(
        store_slow(cpu(&mut core), hole, 1, 4, SUPERVISOR),
        Err(MemFault::Unbacked { phys: 0xfee0_0000 })
    );
    assert!(tlb_host(&core, hole, false).is_none());

    // Code fetch from the ring; a fetch into the hole stops there or is unbacked.
    let mut buf = [0u8; 2];
    assert_eq!(fetch_code(cpu(&mut core), code, &mut buf), Ok(2));
    assert_eq!(buf, [0x90, 0xc3]);
    let mut buf = [0u8; 4];
    assert_eq!(fetch_code(cpu(&mut core), code + 0xffe, &mut buf), Ok(2));
    assert_eq!(buf[..2], [0x0f, 0x0b]);
    assert_eq!(
        fetch_code(cpu(&mut core), code + 0x1000, &mut buf),
        Err(MemFault::Unbacked { phys: 0xfed0_0000 })
    );
}

#[test]
fn page_tables_in_the_hole_fault_as_reserved() {
    let (mut core, mut pt) = core();
    pt.map_4k(core.mem_mut(), 0x7000_0000, 0x1000, RW);
    // Point the PML4 entry into the hole: the walk cannot read the table.
    let cr3 = core.arch().cr3;
    let pml4e = core.mem().read_u64(cr3).unwrap();
    core.mem_mut()
        .write_u64(cr3, (pml4e & 0xfff) | 0xc000_0000)
        .unwrap();
    assert_eq!(
        load_slow(cpu(&mut core), 0x7000_0000, 8, SUPERVISOR),
        Err(MemFault::Exception)
    );
    let e = core.cpu().exec.exception;
    assert_ne!(e.error_code & krr_runtime::arch::pf_error::RSVD, 0);
}

/// Physical address of the PTE mapping `linear` (4 KiB pages).
fn leaf_entry(core: &Core, linear: u64) -> u64 {
    let mut table = core.arch().cr3 & 0x000f_ffff_ffff_f000;
    for l in (1..4).rev() {
        let e = core
            .mem()
            .read_u64(table + ((linear >> (12 + 9 * l)) & 0x1ff) * 8)
            .unwrap();
        table = e & 0x000f_ffff_ffff_f000;
    }
    table + ((linear >> 12) & 0x1ff) * 8
}
