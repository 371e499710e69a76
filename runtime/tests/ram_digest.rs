//! The incremental RAM digest (`Core::ram_hash`): every way guest RAM gets written marks its
//! page, so the digest always equals one computed from scratch (`GuestMemory::full_digest`).

mod common;

use common::*;
use krr_runtime::mmu::{probe_write, store_slow};

const SUPERVISOR: usize = 0;
const PAGE: u64 = 0x7000_0000;
const PHYS: u64 = 0x20_0000;

fn agrees(m: &mut Machine) -> bool {
    let incremental = m.core.ram_hash();
    incremental == m.core.mem().full_digest()
}

/// What compiled code does on a TLB hit: write through the entry's host address, no call.
fn write_through_tlb(m: &mut Machine, linear: u64, value: u64) -> bool {
    let Some(host) = m.core.cpu().exec.tlb.lookup(SUPERVISOR, true, linear, 8) else {
        return false;
    };
    let host = host as *mut u64;
    // SAFETY: a filled write entry maps this linear page to a page inside the guest RAM
    // mapping, which the core keeps alive; the test writes 8 aligned bytes inside it.
    unsafe { host.write_unaligned(value) };
    true
}

#[test]
fn a_fresh_memory_digests_as_all_zero_pages() {
    let mut m = Machine::new();
    let before = m.core.mem().full_digest();
    // The page tables the builder wrote are the only non-zero pages.
    assert!(m.core.mem().dirty_page_count() > 0);
    assert_eq!(m.core.ram_hash(), before);
    assert_eq!(m.core.mem().dirty_page_count(), 0);
}

#[test]
fn memory_writes_mark_every_page_they_touch() {
    let mut m = Machine::new();
    m.core.ram_hash();
    // Straddles two pages.
    m.mem().write(PHYS + 0xffc, &[0xaa; 8]).unwrap();
    assert_eq!(m.core.mem().dirty_page_count(), 2);
    assert!(agrees(&mut m));
}

#[test]
fn slow_path_stores_and_dirty_bit_updates_are_seen() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW);
    let h0 = m.core.ram_hash();
    store_slow(m.cpu(), PAGE + 8, 0x1234, 8, SUPERVISOR).unwrap();
    // The data page and the page tables whose entries got their A (and D) bits.
    assert!(m.core.mem().dirty_page_count() >= 2);
    let h1 = m.core.ram_hash();
    assert_ne!(h0, h1);
    assert_eq!(h1, m.core.mem().full_digest());
}

#[test]
fn writes_through_a_filled_write_entry_are_seen() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW);
    store_slow(m.cpu(), PAGE, 1, 8, SUPERVISOR).unwrap();
    m.core.ram_hash();
    // The digest dropped the write entry, so the next write misses and marks again.
    assert!(!write_through_tlb(&mut m, PAGE + 16, 7));
    store_slow(m.cpu(), PAGE, 2, 8, SUPERVISOR).unwrap();
    assert!(m.core.ram_hash() == m.core.mem().full_digest());
    // Refill, then write only through the entry, as compiled code does.
    store_slow(m.cpu(), PAGE, 3, 8, SUPERVISOR).unwrap();
    m.core.ram_hash();
    assert!(m.core.mem().dirty_page_count() == 0);
    store_slow(m.cpu(), PAGE, 4, 8, SUPERVISOR).unwrap();
    assert!(write_through_tlb(&mut m, PAGE + 24, 0xdead_beef));
    assert!(agrees(&mut m));
}

#[test]
fn a_probe_that_fills_a_write_entry_marks_its_page() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | A | D);
    m.core.ram_hash();
    // ENTER probes its final stack slot: the entry is filled with nothing written yet.
    probe_write(m.cpu(), PAGE + 0x40, 8, SUPERVISOR).unwrap();
    assert!(write_through_tlb(&mut m, PAGE + 0x40, 0x5555));
    assert!(agrees(&mut m));
}
