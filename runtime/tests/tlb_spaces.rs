//! The data TLB's address-space tags: entries filled under one key are used only under it,
//! a PCID loaded again without flush finds its entries, global pages (PTE.G with CR4.PGE)
//! survive CR3 loads, and the invalidations drop what the SDM says they drop (4.10.4.1).

mod common;

use common::*;
use krr_runtime::arch::cr4;
use krr_runtime::mmu::{load_slow, store_slow};
use krr_runtime::tlb::DATA_KEY_MASK;

const SUPERVISOR: usize = 0;
const PAGE: u64 = 0x7000_0000;
const GLOBAL: u64 = 0x7000_5000;
const PHYS: u64 = 0x20_0000;
/// PTE.G.
const G: u64 = 1 << 8;

fn cached(m: &Machine, mmu_idx: usize, write: bool, linear: u64) -> bool {
    let tlb = &m.core.cpu().exec.tlb;
    tlb.lookup(mmu_idx, write, linear, 1).is_some()
}

/// A page and a global one, CR4.PGE on.
fn machine() -> Machine {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | A | D);
    m.map(GLOBAL, PHYS + 0x1000, RW | A | D | G);
    m.cpu().cr4 |= cr4::PGE;
    m
}

/// Fill the supervisor read and write entries of `linear`.
fn fill(m: &mut Machine, linear: u64) {
    load_slow(m.cpu(), linear, 8, SUPERVISOR).unwrap();
    store_slow(m.cpu(), linear, 0, 8, SUPERVISOR).unwrap();
    assert!(cached(m, SUPERVISOR, false, linear) && cached(m, SUPERVISOR, true, linear));
}

fn both_cached(m: &Machine, linear: u64) -> bool {
    cached(m, SUPERVISOR, false, linear) && cached(m, SUPERVISOR, true, linear)
}

fn none_cached(m: &Machine, linear: u64) -> bool {
    !cached(m, SUPERVISOR, false, linear) && !cached(m, SUPERVISOR, true, linear)
}

#[test]
fn a_pcid_loaded_again_without_flush_keeps_its_entries() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, PAGE);
    let misses = m.cpu().exec.tlb.misses;
    // Another PCID does not see them.
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    assert!(none_cached(&m, PAGE));
    // Back to PCID 1 with bit 63 set: they are there, no slow path needed.
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(both_cached(&m, PAGE));
    assert_eq!(m.cpu().exec.tlb.misses, misses);
    // Bit 63 clear: gone.
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    m.cpu().exec.tlb.load_cr3(Some(1), true);
    assert!(none_cached(&m, PAGE));
}

#[test]
fn a_cr3_load_without_pcids_keeps_only_global_pages() {
    let mut m = machine();
    fill(&mut m, PAGE);
    fill(&mut m, GLOBAL);
    m.cpu().exec.tlb.load_cr3(None, true);
    assert!(none_cached(&m, PAGE));
    assert!(both_cached(&m, GLOBAL));
    // And the next one too (the global entries moved to the new key).
    m.cpu().exec.tlb.load_cr3(None, true);
    assert!(both_cached(&m, GLOBAL));
    // A refilled slot is no longer global.
    m.cpu().exec.tlb.flush_page(GLOBAL);
    m.set_entry(GLOBAL, 0, (PHYS + 0x1000) | P | RW | A | D);
    fill(&mut m, GLOBAL);
    m.cpu().exec.tlb.load_cr3(None, true);
    assert!(none_cached(&m, GLOBAL));
}

#[test]
fn without_cr4_pge_the_g_bit_means_nothing() {
    let mut m = machine();
    m.cpu().cr4 &= !cr4::PGE;
    fill(&mut m, GLOBAL);
    m.cpu().exec.tlb.load_cr3(None, true);
    assert!(none_cached(&m, GLOBAL));
}

#[test]
fn global_pages_are_shared_by_every_pcid() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, GLOBAL);
    fill(&mut m, PAGE);
    // A new PCID, a flushing load, a single-context INVPCID of the current PCID: the global
    // page stays; the other goes.
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    assert!(both_cached(&m, GLOBAL) && none_cached(&m, PAGE));
    m.cpu().exec.tlb.load_cr3(Some(2), true);
    assert!(both_cached(&m, GLOBAL));
    m.cpu().exec.tlb.flush_pcid(2, true);
    assert!(both_cached(&m, GLOBAL));
    // Back to PCID 1: its page and the global one.
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(both_cached(&m, GLOBAL) && both_cached(&m, PAGE));
}

#[test]
fn invlpg_drops_the_page_in_every_address_space_global_or_not() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, PAGE);
    fill(&mut m, GLOBAL);
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    // Under PCID 2, INVLPG of PCID 1's page and of the global page.
    m.cpu().exec.tlb.flush_page(PAGE + 0x10);
    m.cpu().exec.tlb.flush_page(GLOBAL + 0x20);
    assert!(none_cached(&m, GLOBAL));
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(none_cached(&m, PAGE) && none_cached(&m, GLOBAL));
}

#[test]
fn single_context_invpcid_of_another_pcid_spares_the_current_one() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, PAGE);
    // Another slot than PAGE's.
    let other = PAGE + 0x20_1000;
    m.map(other, PHYS + 0x2000, RW | A | D);
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    fill(&mut m, other);
    m.cpu().exec.tlb.flush_pcid(1, false);
    // PCID 2's entry stays; PCID 1 starts empty.
    assert!(both_cached(&m, other));
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(none_cached(&m, PAGE));
}

#[test]
fn all_context_invpcid_with_and_without_globals() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, PAGE);
    fill(&mut m, GLOBAL);
    m.cpu().exec.tlb.load_cr3(Some(2), false);
    // Type 3: every PCID's non-global translations; the global ones stay.
    m.cpu().exec.tlb.flush_non_global();
    assert!(both_cached(&m, GLOBAL));
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(none_cached(&m, PAGE) && both_cached(&m, GLOBAL));
    // Type 2 (and CR0/CR4 changes): everything.
    fill(&mut m, PAGE);
    m.cpu().exec.tlb.flush();
    assert!(none_cached(&m, PAGE) && none_cached(&m, GLOBAL));
}

#[test]
fn invlpg_in_a_large_page_drops_all_of_it() {
    let mut m = machine();
    // A 2 MiB page at 0x4000_0000 (its page table replaced by a PS entry).
    const LARGE: u64 = 0x4000_0000;
    m.map(LARGE, 0, RW);
    m.set_entry(LARGE, 1, P | RW | PS | A | D);
    fill(&mut m, LARGE + 0x3000);
    fill(&mut m, LARGE + 0x1f_f000);
    fill(&mut m, PAGE);
    m.cpu().exec.tlb.flush_page(LARGE + 0x10_0000);
    assert!(none_cached(&m, LARGE + 0x3000) && none_cached(&m, LARGE + 0x1f_f000));
}

#[test]
fn data_keys_run_out_into_a_full_flush() {
    let mut m = machine();
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    fill(&mut m, PAGE);
    fill(&mut m, GLOBAL);
    let mut keys = std::collections::HashSet::new();
    for _ in 0..2 * DATA_KEY_MASK {
        m.cpu().exec.tlb.load_cr3(Some(2), true);
        let t = &m.cpu().exec.tlb;
        assert!(t.data_key != 0 && t.data_key != DATA_KEY_MASK);
        assert_eq!(t.data_key, t.space & DATA_KEY_MASK);
        assert!(keys.insert(t.space), "a key given twice");
    }
    // The data keys started over: nothing from before may match, PCID 1 included.
    assert!(none_cached(&m, GLOBAL));
    m.cpu().exec.tlb.load_cr3(Some(1), false);
    assert!(none_cached(&m, PAGE));
}

#[test]
fn smap_user_entries_live_only_while_ac_is_set() {
    use krr_runtime::arch::rflags;
    let mut m = machine();
    const USER_PAGE: u64 = 0x7000_9000;
    m.map(USER_PAGE, PHYS + 0x3000, RW | US | A | D);
    m.cpu().cr4 |= cr4::SMAP;
    m.cpu().rflags |= rflags::AC;
    fill(&mut m, USER_PAGE);
    fill(&mut m, PAGE);
    assert!(m.cpu().exec.tlb.smap_user_any);
    m.cpu().exec.tlb.drop_smap_user();
    assert!(none_cached(&m, USER_PAGE));
    assert!(both_cached(&m, PAGE));
    assert!(!m.cpu().exec.tlb.smap_user_any);
    // Without SMAP they are ordinary entries.
    m.cpu().cr4 &= !cr4::SMAP;
    fill(&mut m, USER_PAGE);
    assert!(!m.cpu().exec.tlb.smap_user_any);
}
