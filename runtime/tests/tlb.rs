//! The software TLB: filled by the MMU slow paths, emptied by the flushes, and the
//! address-space keys the engine tags its lookups with (CR3 loads with and without PCIDs).

mod common;

use common::*;
use krr_runtime::mmu::{load_slow, store_slow};
use krr_runtime::tlb::{tlb_index, Tlb, PAGE_FLUSHES, TLB_INVALID};

const USER: usize = 1;
const SUPERVISOR: usize = 0;
const PAGE: u64 = 0x7000_0000;
const PHYS: u64 = 0x20_0000;

fn entry(m: &Machine, mmu_idx: usize, write: bool, linear: u64) -> (u64, u64) {
    let e = m.core.cpu().exec.tlb.sets[mmu_idx][write as usize][tlb_index(linear)];
    (e.tag, e.addend)
}

fn cached(m: &Machine, mmu_idx: usize, write: bool, linear: u64) -> bool {
    let tlb = &m.core.cpu().exec.tlb;
    tlb.lookup(mmu_idx, write, linear, 1).is_some()
}

fn all_invalid(t: &Tlb) -> bool {
    t.sets[..2]
        .iter()
        .flatten()
        .flatten()
        .all(|e| e.tag == TLB_INVALID)
}

#[test]
fn a_read_miss_fills_the_read_entry() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    m.mem()
        .write_u64(PHYS + 0x10, 0x1122_3344_5566_7788)
        .unwrap();
    assert_eq!(
        load_slow(m.cpu(), PAGE + 0x10, 8, USER),
        Ok(0x1122_3344_5566_7788)
    );
    let (tag, addend) = entry(&m, USER, false, PAGE);
    // The page, and the address space's data key in the low bits.
    assert_eq!(tag, PAGE | m.cpu().exec.tlb.data_key);
    // The addend turns the linear address into the host address of the guest byte.
    assert_eq!(
        addend.wrapping_add(PAGE + 0x10),
        m.core.mem().host_address() + PHYS + 0x10
    );
    // Nothing else: not the write entry (the page is clean), not the other privilege.
    assert!(!cached(&m, USER, true, PAGE));
    assert!(!cached(&m, SUPERVISOR, false, PAGE));
}

#[test]
fn writes_are_cached_only_once_dirty() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    load_slow(m.cpu(), PAGE, 8, USER).unwrap();
    assert!(
        !cached(&m, USER, true, PAGE),
        "a clean page's write entry stays empty"
    );
    assert_eq!(m.entry(PAGE, 0) & D, 0);
    store_slow(m.cpu(), PAGE + 8, 0xabcd, 2, USER).unwrap();
    // The walk set D, so later writes may skip it.
    assert_eq!(m.entry(PAGE, 0) & D, D);
    assert!(cached(&m, USER, true, PAGE));
    assert_eq!(m.mem().read_u64(PHYS + 8).unwrap(), 0xabcd);
}

#[test]
fn read_only_pages_get_no_write_entry() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, US | A | D);
    load_slow(m.cpu(), PAGE, 8, USER).unwrap();
    assert!(cached(&m, USER, false, PAGE));
    assert!(!cached(&m, USER, true, PAGE));
}

#[test]
fn writes_to_code_pages_are_not_cached_and_are_noted() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | A | D);
    m.cpu().set_code_page(PHYS >> 12, true);
    store_slow(m.cpu(), PAGE + 0x20, 0x90, 1, USER).unwrap();
    assert!(!cached(&m, USER, true, PAGE));
    store_slow(m.cpu(), PAGE + 0x21, 0x9090, 2, USER).unwrap();
    // Touching writes merge into one range.
    assert_eq!(m.cpu().exec.smc_count, 1);
    assert_eq!(m.cpu().exec.smc_writes[0], [PHYS + 0x20, PHYS + 0x23]);
    // Reads of code pages are cached as usual.
    load_slow(m.cpu(), PAGE, 8, USER).unwrap();
    assert!(cached(&m, USER, false, PAGE));
}

#[test]
fn checked_indices_are_never_filled() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | A | D);
    for idx in [2, 3] {
        load_slow(m.cpu(), PAGE, 8, idx).unwrap();
        store_slow(m.cpu(), PAGE, 1, 8, idx).unwrap();
        assert!(m.cpu().exec.tlb.sets[idx]
            .iter()
            .flatten()
            .all(|e| e.tag == TLB_INVALID));
    }
}

fn fill_both(m: &mut Machine, linear: u64) {
    load_slow(m.cpu(), linear, 8, USER).unwrap();
    store_slow(m.cpu(), linear, 0, 8, USER).unwrap();
    load_slow(m.cpu(), linear, 8, SUPERVISOR).unwrap();
    assert!(cached(m, USER, false, linear) && cached(m, USER, true, linear));
}

#[test]
fn flush_drops_everything_and_starts_a_fresh_space() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | A | D);
    fill_both(&mut m, PAGE);
    m.cpu().exec.tlb.jump_key = 77;
    let before = m.cpu().exec.tlb.space;
    m.cpu().exec.tlb.flush();
    assert!(all_invalid(&m.cpu().exec.tlb));
    assert_eq!(m.cpu().exec.tlb.jump_key, 0);
    assert_ne!(m.cpu().exec.tlb.space, before);
    assert_eq!(m.cpu().exec.tlb.page_flush_count, 0);
}

#[test]
fn flush_page_drops_one_page() {
    let mut m = Machine::new();
    let other = PAGE + 0x1000;
    m.map(PAGE, PHYS, RW | US | A | D);
    m.map(other, PHYS + 0x1000, RW | US | A | D);
    fill_both(&mut m, PAGE);
    fill_both(&mut m, other);
    m.cpu().exec.tlb.jump_key = 77;
    let space = m.cpu().exec.tlb.space;
    m.cpu().exec.tlb.flush_page(PAGE + 0x123);
    for (idx, write) in [(USER, false), (USER, true), (SUPERVISOR, false)] {
        assert!(!cached(&m, idx, write, PAGE));
        assert!(cached(&m, idx, write, other));
    }
    // The engine learns which page went, and keeps the address-space key.
    assert_eq!(m.cpu().exec.tlb.page_flush_count, 1);
    assert_eq!(m.cpu().exec.tlb.page_flushes[0], PAGE);
    assert_eq!(m.cpu().exec.tlb.space, space);
    assert_eq!(m.cpu().exec.tlb.jump_key, 0);
    // More single-page flushes than fit become a full one for the engine's lookups.
    for i in 1..PAGE_FLUSHES as u64 {
        m.cpu().exec.tlb.flush_page(PAGE + i * 0x1000);
    }
    assert_eq!(m.cpu().exec.tlb.page_flush_count, PAGE_FLUSHES as u64);
    assert_eq!(m.cpu().exec.tlb.space, space);
    m.cpu().exec.tlb.flush_page(PAGE + 0x10_0000);
    assert_eq!(m.cpu().exec.tlb.page_flush_count, 0);
    assert_ne!(m.cpu().exec.tlb.space, space);
}

#[test]
fn flush_writes_keeps_reads() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | A | D);
    fill_both(&mut m, PAGE);
    m.cpu().exec.tlb.flush_writes();
    assert!(cached(&m, USER, false, PAGE));
    assert!(!cached(&m, USER, true, PAGE));
}

#[test]
fn cr3_load_without_pcid_always_gets_a_new_space() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | A | D);
    fill_both(&mut m, PAGE);
    let mut seen = vec![m.cpu().exec.tlb.space];
    for flush in [false, true, false] {
        m.cpu().exec.tlb.jump_key = 77;
        m.cpu().exec.tlb.load_cr3(None, flush);
        assert!(!cached(&m, USER, false, PAGE) && !cached(&m, SUPERVISOR, false, PAGE));
        assert_eq!(m.cpu().exec.tlb.jump_key, 0);
        assert!(!seen.contains(&m.cpu().exec.tlb.space));
        seen.push(m.cpu().exec.tlb.space);
    }
}

#[test]
fn cr3_load_with_pcid_brings_back_that_pcids_space() {
    let mut t = Tlb::new();
    t.load_cr3(Some(1), false);
    let one = t.space;
    t.load_cr3(Some(2), false);
    let two = t.space;
    assert_ne!(one, two);
    // Bit 63 set (no flush): PCID 1's translations are still usable.
    t.load_cr3(Some(1), false);
    assert_eq!(t.space, one);
    // Bit 63 clear: they are not.
    t.load_cr3(Some(1), true);
    assert_ne!(t.space, one);
    let one = t.space;
    // The data entries are tagged with the key: they come back with it.
    t.sets[1][0][0].tag = t.data_key;
    assert!(t.lookup(1, false, 0, 1).is_some());
    t.load_cr3(Some(2), false);
    assert_eq!(t.space, two);
    assert!(t.lookup(1, false, 0, 1).is_none());
    t.load_cr3(Some(1), false);
    assert!(t.lookup(1, false, 0, 1).is_some());
    t.load_cr3(Some(2), false);
    // A full flush invalidates every PCID.
    t.flush();
    t.load_cr3(Some(1), false);
    assert_ne!(t.space, one);
    t.load_cr3(Some(2), false);
    assert_ne!(t.space, two);
}

#[test]
fn flush_pcid_invalidates_one_pcid() {
    let mut t = Tlb::new();
    t.load_cr3(Some(1), false);
    let one = t.space;
    t.load_cr3(Some(2), false);
    let two = t.space;
    // Not current: the current space stays, PCID 1 comes back fresh.
    t.flush_pcid(1, false);
    assert_eq!(t.space, two);
    t.load_cr3(Some(1), false);
    assert_ne!(t.space, one);
    assert_ne!(t.space, two);
    // Current: a fresh key at once, entries unreachable.
    let now = t.space;
    t.sets[0][1][3].tag = 0x3000 | t.data_key;
    t.jump_key = 5;
    t.flush_pcid(1, true);
    assert_ne!(t.space, now);
    assert!(t.lookup(0, true, 0x3000, 1).is_none());
    assert_eq!(t.jump_key, 0);
    // PCID 2 is unaffected.
    t.load_cr3(Some(2), false);
    assert_eq!(t.space, two);
}
