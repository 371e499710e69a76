//! The page walker (`mmu::translate`) against the Intel SDM, Vol. 3A chapter 4 (4-level
//! paging): permissions (4.6), #PF error codes (4.7), accessed and dirty flags (4.8) and
//! large pages.

mod common;

use common::*;
use krr_runtime::arch::{cr0, cr4, efer, rflags, vector};
use krr_runtime::mmu::{translate, Access};
use krr_runtime::ExceptionRecord;

const PAGE: u64 = 0x40_0000_0000; // PML4 slot 0, PDPT slot 256: its own tables
const PHYS: u64 = 0x12_3000;

fn pf(m: &mut Machine, linear: u64, access: Access, user: bool) -> u32 {
    match translate(m.cpu(), linear, access, user) {
        Err(e) => {
            assert_eq!(
                (e.vector, e.has_error_code, e.address),
                (vector::PF, true, linear)
            );
            e.error_code
        }
        Ok(t) => panic!(
            "{linear:#x} {access:?} user={user} translated to {:#x}",
            t.phys
        ),
    }
}

fn phys(m: &mut Machine, linear: u64, access: Access, user: bool) -> u64 {
    match translate(m.cpu(), linear, access, user) {
        Ok(t) => t.phys,
        Err(e) => panic!("{linear:#x} {access:?} user={user}: {e:?}"),
    }
}

#[test]
fn present_page_translates_with_offset() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    assert_eq!(phys(&mut m, PAGE + 0x123, Access::Read, true), PHYS + 0x123);
    assert_eq!(
        phys(&mut m, PAGE + 0xfff, Access::Write, true),
        PHYS + 0xfff
    );
    assert_eq!(phys(&mut m, PAGE, Access::Execute, false), PHYS);
}

#[test]
fn not_present_error_codes() {
    let mut m = Machine::new();
    let unmapped = PAGE + 0x5000;
    m.map(PAGE, PHYS, RW | US);
    // P = 0; W for writes, U for user accesses, I for fetches (EFER.NXE is set).
    assert_eq!(pf(&mut m, unmapped, Access::Read, false), 0);
    assert_eq!(pf(&mut m, unmapped, Access::Write, false), PF_W);
    assert_eq!(pf(&mut m, unmapped, Access::Read, true), PF_U);
    assert_eq!(pf(&mut m, unmapped, Access::Write, true), PF_W | PF_U);
    assert_eq!(pf(&mut m, unmapped, Access::Execute, true), PF_U | PF_I);
    // Without NXE and SMEP, fetches do not set I (SDM 4.7).
    m.cpu().efer &= !efer::NXE;
    assert_eq!(pf(&mut m, unmapped, Access::Execute, true), PF_U);
    m.cpu().cr4 |= cr4::SMEP;
    assert_eq!(pf(&mut m, unmapped, Access::Execute, false), PF_I);
    // A non-present upper level (nothing mapped in this PML4 slot).
    assert_eq!(pf(&mut m, 0x7f00_0000_0000, Access::Read, true), PF_U);
}

#[test]
fn non_canonical_is_gp0() {
    let mut m = Machine::new();
    for a in [0x8000_0000_0000u64, 0xffff_7fff_ffff_f000, 1 << 63] {
        let e = translate(m.cpu(), a, Access::Read, false).unwrap_err();
        assert_eq!(e, ExceptionRecord::fault(vector::GP, Some(0)));
    }
}

#[test]
fn read_only_pages_and_cr0_wp() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, US);
    assert_eq!(phys(&mut m, PAGE, Access::Read, true), PHYS);
    assert_eq!(pf(&mut m, PAGE, Access::Write, true), PF_P | PF_W | PF_U);
    // Supervisor writes to read-only pages fault only with CR0.WP (SDM 4.6.1).
    m.cpu().cr0 |= cr0::WP;
    assert_eq!(pf(&mut m, PAGE, Access::Write, false), PF_P | PF_W);
    m.cpu().cr0 &= !cr0::WP;
    let t = translate(m.cpu(), PAGE + 8, Access::Write, false).unwrap();
    assert_eq!(t.phys, PHYS + 8);
    assert!(t.write_ok);
    // CR0.WP does not let user code write.
    assert_eq!(pf(&mut m, PAGE, Access::Write, true), PF_P | PF_W | PF_U);
}

#[test]
fn every_level_must_allow_the_access() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    // A read-only PDE makes the whole 2 MiB read-only; a supervisor PDPTE makes it supervisor.
    let pde = m.entry(PAGE, 1);
    m.set_entry(PAGE, 1, pde & !RW);
    assert_eq!(pf(&mut m, PAGE, Access::Write, true), PF_P | PF_W | PF_U);
    m.set_entry(PAGE, 1, pde);
    let pdpte = m.entry(PAGE, 2);
    m.set_entry(PAGE, 2, pdpte & !US);
    assert_eq!(pf(&mut m, PAGE, Access::Read, true), PF_P | PF_U);
    assert_eq!(phys(&mut m, PAGE, Access::Read, false), PHYS);
}

#[test]
fn user_and_supervisor_pages() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW);
    m.map(PAGE + 0x1000, PHYS + 0x1000, RW | US);
    assert_eq!(pf(&mut m, PAGE, Access::Read, true), PF_P | PF_U);
    assert_eq!(pf(&mut m, PAGE, Access::Write, true), PF_P | PF_W | PF_U);
    assert_eq!(pf(&mut m, PAGE, Access::Execute, true), PF_P | PF_U | PF_I);
    // Supervisor access to user pages: allowed unless SMEP (fetch) / SMAP (data, RFLAGS.AC=0).
    let user = PAGE + 0x1000;
    assert_eq!(phys(&mut m, user, Access::Read, false), PHYS + 0x1000);
    assert_eq!(phys(&mut m, user, Access::Execute, false), PHYS + 0x1000);
    m.cpu().cr4 |= cr4::SMEP;
    assert_eq!(pf(&mut m, user, Access::Execute, false), PF_P | PF_I);
    assert_eq!(phys(&mut m, user, Access::Read, false), PHYS + 0x1000);
    m.cpu().cr4 |= cr4::SMAP;
    assert_eq!(pf(&mut m, user, Access::Read, false), PF_P);
    assert_eq!(pf(&mut m, user, Access::Write, false), PF_P | PF_W);
    m.cpu().rflags |= rflags::AC;
    assert_eq!(phys(&mut m, user, Access::Write, false), PHYS + 0x1000);
    // SMAP and SMEP leave supervisor pages and user accesses alone.
    assert_eq!(phys(&mut m, PAGE, Access::Execute, false), PHYS);
    assert_eq!(phys(&mut m, user, Access::Execute, true), PHYS + 0x1000);
}

#[test]
fn no_execute() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US | NX);
    assert_eq!(phys(&mut m, PAGE, Access::Read, true), PHYS);
    assert_eq!(pf(&mut m, PAGE, Access::Execute, true), PF_P | PF_U | PF_I);
    assert_eq!(pf(&mut m, PAGE, Access::Execute, false), PF_P | PF_I);
    // XD in any level counts.
    m.map(PAGE + 0x1000, PHYS, RW | US);
    let pde = m.entry(PAGE, 1);
    m.set_entry(PAGE, 1, pde | NX);
    assert_eq!(
        pf(&mut m, PAGE + 0x1000, Access::Execute, true),
        PF_P | PF_U | PF_I
    );
    // With EFER.NXE clear, bit 63 is reserved: a reserved-bit fault for any access (SDM 4.7),
    // without I (neither NXE nor SMEP).
    m.cpu().efer &= !efer::NXE;
    assert_eq!(
        pf(&mut m, PAGE + 0x1000, Access::Read, true),
        PF_P | PF_U | PF_RSVD
    );
    assert_eq!(pf(&mut m, PAGE, Access::Read, false), PF_P | PF_RSVD);
}

#[test]
fn accessed_and_dirty_flags() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    for level in 0..4 {
        assert_eq!(m.entry(PAGE, level) & (A | D), 0, "level {level}");
    }
    let t = translate(m.cpu(), PAGE, Access::Read, true).unwrap();
    // A read sets A on every level used, D on none; the page cannot be cached for writes yet.
    for level in 0..4 {
        assert_eq!(m.entry(PAGE, level) & (A | D), A, "level {level}");
    }
    assert!(!t.write_ok);
    let t = translate(m.cpu(), PAGE, Access::Write, true).unwrap();
    assert_eq!(m.entry(PAGE, 0) & (A | D), A | D);
    for level in 1..4 {
        assert_eq!(
            m.entry(PAGE, level) & D,
            0,
            "D is for leaves only, level {level}"
        );
    }
    assert!(t.write_ok);
    // Once dirty, a read reports the page cacheable for writes.
    assert!(
        translate(m.cpu(), PAGE, Access::Read, true)
            .unwrap()
            .write_ok
    );
}

#[test]
fn two_mib_pages() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US); // builds the upper levels
    let big = 0x20_0000u64;
    m.set_entry(PAGE, 1, big | P | RW | US | PS);
    let linear = PAGE + 0x1_2345;
    assert_eq!(phys(&mut m, linear, Access::Read, true), big + 0x1_2345);
    assert_eq!(
        phys(&mut m, PAGE + 0x1f_fff8, Access::Write, true),
        big + 0x1f_fff8
    );
    assert_eq!(m.entry(PAGE, 1) & (A | D), A | D);
    // Bits 20:13 of a 2 MiB PDE are reserved (bit 12 is PAT).
    m.set_entry(PAGE, 1, big | 1 << 13 | P | RW | US | PS);
    assert_eq!(
        pf(&mut m, linear, Access::Read, true),
        PF_P | PF_U | PF_RSVD
    );
    m.set_entry(PAGE, 1, big | 1 << 12 | P | RW | US | PS);
    assert_eq!(phys(&mut m, linear, Access::Read, true), big + 0x1_2345);
}

#[test]
fn one_gib_pages() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    let big = 0x4000_0000u64;
    m.set_entry(PAGE, 2, big | P | RW | PS);
    let linear = PAGE + 0x1234_5678;
    assert_eq!(
        phys(&mut m, linear, Access::Write, false),
        big + 0x1234_5678
    );
    assert_eq!(m.entry(PAGE, 2) & (A | D), A | D);
    assert_eq!(pf(&mut m, linear, Access::Read, true), PF_P | PF_U);
    // Bits 29:13 of a 1 GiB PDPTE are reserved.
    m.set_entry(PAGE, 2, big | 1 << 20 | P | RW | PS);
    assert_eq!(pf(&mut m, linear, Access::Read, false), PF_P | PF_RSVD);
}

#[test]
fn ps_in_pml4e_is_reserved() {
    let mut m = Machine::new();
    m.map(PAGE, PHYS, RW | US);
    let pml4e = m.entry(PAGE, 3);
    m.set_entry(PAGE, 3, pml4e | PS);
    assert_eq!(
        pf(&mut m, PAGE, Access::Write, true),
        PF_P | PF_W | PF_U | PF_RSVD
    );
}
