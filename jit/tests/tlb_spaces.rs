//! The data TLB's address spaces, in every engine tier: after a CR3 load that must invalidate
//! (no PCIDs; a PCID with bit 63 clear), INVLPG, INVPCID or a CR4.PGE toggle, a remapped page's
//! new translation is used; translations of a PCID loaded again with bit 63 set, and of global
//! pages (PTE.G with CR4.PGE) across CR3 loads, are kept (SDM 4.10.2.4, 4.10.4.1: allowed,
//! and what krr does, so these tests pin it: the stale value shows the entry was kept).

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_runtime::arch::pf_error;
use krr_runtime::arch::vector::{GP, PF};

const TLB_X: u64 = TEST_AREA + 0x1_0000;
const PHYS_A: u64 = TEST_AREA + 0x2_0000;
const PHYS_B: u64 = TEST_AREA + 0x3_0000;
/// The INVPCID descriptor.
const DESC: u64 = KSCRATCH;
const A: u64 = 0xaaaa;
const B: u64 = 0xbbbb;

fn no_user(_: &mut Asm) -> AsmResult {
    Ok(())
}

/// Read `[rsi]` 100 times (every tier caches the translation, compiled code too) and report
/// the last value (clobbers RAX, RBX, RCX).
fn read_hot(k: &mut Asm) -> AsmResult {
    let mut l = k.create_label();
    k.mov(ecx, 100)?;
    k.set_label(&mut l)?;
    k.mov(rbx, qword_ptr(rsi))?;
    k.dec(ecx)?;
    k.jnz(l)?;
    report(k, rbx)
}

/// Write RDX to `[rsi + 8]` 100 times (clobbers RCX).
fn write_hot(k: &mut Asm) -> AsmResult {
    let mut l = k.create_label();
    k.mov(ecx, 100)?;
    k.set_label(&mut l)?;
    k.mov(qword_ptr(rsi + 8), rdx)?;
    k.dec(ecx)?;
    k.jnz(l)
}

/// Map TLB_X to PHYS_A (`p` 1) or PHYS_B (`p` 2) by writing its PTE, no invalidation
/// (clobbers RAX, RDI).
fn set_pte(k: &mut Asm, p: usize) -> AsmResult {
    k.mov(rdi, param(0))?;
    k.mov(rax, param(p))?;
    k.mov(qword_ptr(rdi), rax)
}

/// TLB_X maps PHYS_A (holding A) with `flags`; PHYS_B holds B. Parameters: 0 the PTE's
/// address, 1 and 2 the entries for PHYS_A and PHYS_B.
fn setup(m: &mut Machine, flags: u64) {
    let flags = flags | pte::RW | pte::NX | pte::A | pte::D;
    m.pt.map(&mut m.mem, TLB_X, PHYS_A, PageSize::K4, flags);
    let e = m.pt.entry(&m.mem, TLB_X, 0);
    m.param(0, e);
    m.param(1, PHYS_A | pte::P | flags);
    m.param(2, PHYS_B | pte::P | flags);
    m.mem.write_u64(PHYS_A, A).unwrap();
    m.mem.write_u64(PHYS_B, B).unwrap();
}

/// Load CR3 with the current root and `pcid`, keeping that PCID's translations when `keep`
/// (bit 63) (clobbers RAX, RCX).
fn load_cr3_pcid(k: &mut Asm, pcid: u64, keep: bool) -> AsmResult {
    k.mov(rax, cr3)?;
    k.and(rax, -0x1000)?;
    k.mov(rcx, pcid | if keep { 1 << 63 } else { 0 })?;
    k.or(rax, rcx)?;
    k.mov(cr3, rax)
}

/// Reload CR3 unchanged (clobbers RAX).
fn reload_cr3(k: &mut Asm) -> AsmResult {
    k.mov(rax, cr3)?;
    k.mov(cr3, rax)
}

/// INVPCID of `kind` for `pcid` and TLB_X (clobbers RAX).
fn invpcid(k: &mut Asm, kind: u64, pcid: u64) -> AsmResult {
    invpcid_at(k, kind, pcid, None)
}

/// [`invpcid`], the instruction labelled `label`.
fn invpcid_at(k: &mut Asm, kind: u64, pcid: u64, label: Option<&str>) -> AsmResult {
    k.mov(rax, pcid)?;
    k.mov(qword_ptr(DESC), rax)?;
    k.mov(rax, TLB_X)?;
    k.mov(qword_ptr(DESC + 8), rax)?;
    k.mov(rax, kind)?;
    if let Some(l) = label {
        k.def(l)?;
    }
    k.invpcid(rax, xmmword_ptr(DESC))
}

/// [`run_all`] on a CPU model reporting INVPCID (CPUID.(EAX=07H,ECX=0):EBX[10]).
fn run_all_invpcid(
    kernel: impl Fn(&mut Asm) -> AsmResult,
    setup: impl Fn(&mut Machine),
) -> Outcome {
    all_tiers(|tier| {
        let mut m = Machine::new(&kernel, no_user);
        setup(&mut m);
        let mut s = m.start(tier);
        s.edit_cpuid(|e| {
            if (e.leaf, e.subleaf) == (7, 0) {
                e.ebx |= 1 << 10;
            }
        });
        let exit = s.run();
        s.finish(exit)
    })
}

/// Set or clear bits of CR4 (clobbers RAX, RCX).
fn set_cr4(k: &mut Asm, bits: u64, on: bool) -> AsmResult {
    k.mov(rax, cr4)?;
    k.mov(rcx, if on { bits } else { !bits })?;
    if on {
        k.or(rax, rcx)?;
    } else {
        k.and(rax, rcx)?;
    }
    k.mov(cr4, rax)
}

/// Without PCIDs every CR3 load invalidates the non-global translations: reads and writes
/// through compiled code's entries go to the new page at once.
#[test]
fn a_cr3_load_without_pcids_drops_stale_reads_and_writes() {
    let r = run_all(
        |k| {
            k.mov(rsi, TLB_X)?;
            k.mov(edx, 0x11)?;
            read_hot(k)?;
            write_hot(k)?;
            set_pte(k, 2)?;
            reload_cr3(k)?;
            read_hot(k)?;
            k.mov(edx, 0x22)?;
            write_hot(k)?;
            set_pte(k, 1)?;
            reload_cr3(k)?;
            read_hot(k)?;
            stop(k)
        },
        no_user,
        |m| setup(m, 0),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![A, B, A]);
    assert_eq!((r.u64_at(PHYS_A + 8), r.u64_at(PHYS_B + 8)), (0x11, 0x22));
}

/// With PCIDs: a PCID loaded again with bit 63 set finds its translation (stale here); one
/// loaded with bit 63 clear, or never used, walks the tables; single-context INVPCID of a
/// PCID that is not current drops its translations for its next load. (The TLB is
/// direct-mapped: one page's translations under two PCIDs share a slot, so the PCID not
/// current keeps its translation only while the current one does not touch the page.)
#[test]
fn pcid_translations_are_kept_per_pcid() {
    let r = run_all_invpcid(
        |k| {
            k.mov(rsi, TLB_X)?;
            set_cr4(k, cr4::PCIDE, true)?;
            load_cr3_pcid(k, 1, false)?;
            read_hot(k)?; // A under PCID 1
            set_pte(k, 2)?;
            load_cr3_pcid(k, 2, true)?;
            load_cr3_pcid(k, 1, true)?;
            read_hot(k)?; // A: kept
            load_cr3_pcid(k, 2, true)?;
            read_hot(k)?; // B: PCID 2 never cached it
            set_pte(k, 1)?;
            load_cr3_pcid(k, 2, false)?;
            read_hot(k)?; // A: flushed
            load_cr3_pcid(k, 1, true)?;
            read_hot(k)?; // A: PCID 1's entry went with the slot
            set_pte(k, 2)?;
            load_cr3_pcid(k, 2, true)?;
            invpcid(k, 1, 1)?;
            load_cr3_pcid(k, 1, true)?;
            read_hot(k)?; // B: PCID 1 was invalidated
            set_pte(k, 1)?;
            load_cr3_pcid(k, 2, true)?;
            load_cr3_pcid(k, 1, true)?;
            read_hot(k)?; // B: kept
            load_cr3_pcid(k, 1, false)?;
            read_hot(k)?; // A: flushed
            stop(k)
        },
        |m| setup(m, 0),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![A, A, B, A, A, B, B, A]);
}

/// INVPCID individual-address and single-context invalidation of the current PCID, then the
/// all-context types: 3 keeps global translations, 2 drops them too.
#[test]
fn invpcid_types() {
    let r = run_all_invpcid(
        |k| {
            k.mov(rsi, TLB_X)?;
            set_cr4(k, cr4::PCIDE | cr4::PGE, true)?;
            load_cr3_pcid(k, 1, false)?;
            read_hot(k)?; // A
            set_pte(k, 2)?;
            invpcid(k, 0, 1)?;
            read_hot(k)?; // B: type 0
            set_pte(k, 1)?;
            invpcid(k, 1, 1)?;
            read_hot(k)?; // A: type 1, current PCID
            set_pte(k, 2)?;
            invpcid(k, 3, 0)?;
            read_hot(k)?; // B: type 3 (the page is not global)
            stop(k)
        },
        |m| setup(m, 0),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![A, B, A, B]);
}

/// A global page (CR4.PGE) keeps its translation across CR3 loads, with and without PCIDs,
/// flushing or not, and across single-context and all-context-except-global INVPCID; INVLPG,
/// INVPCID individual-address and all-context-including-global, and a CR4.PGE toggle drop it.
#[test]
fn global_translations_survive_cr3_loads() {
    let r = run_all_invpcid(
        |k| {
            k.mov(rsi, TLB_X)?;
            set_cr4(k, cr4::PGE, true)?;
            read_hot(k)?; // A
            set_pte(k, 2)?;
            reload_cr3(k)?;
            read_hot(k)?; // A: kept
            k.invlpg(ptr(rsi))?;
            read_hot(k)?; // B
            set_pte(k, 1)?;
            set_cr4(k, cr4::PCIDE, true)?;
            read_hot(k)?; // A: CR4 changes flush everything
            set_pte(k, 2)?;
            load_cr3_pcid(k, 3, false)?;
            invpcid(k, 1, 3)?;
            invpcid(k, 3, 0)?;
            read_hot(k)?; // A: kept
            invpcid(k, 0, 3)?;
            read_hot(k)?; // B
            set_pte(k, 1)?;
            load_cr3_pcid(k, 4, false)?;
            read_hot(k)?; // B: kept under another PCID
            invpcid(k, 2, 0)?;
            read_hot(k)?; // A
            set_pte(k, 2)?;
            set_cr4(k, cr4::PGE, false)?;
            read_hot(k)?; // B
            set_pte(k, 1)?;
            load_cr3_pcid(k, 4, false)?;
            read_hot(k)?; // A: without PGE the G bit means nothing
            stop(k)
        },
        |m| setup(m, pte::G),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![A, A, B, A, A, B, B, A, B, A]);
}

/// INVPCID faults: a type above 3, a PCID above 0xfff, and without CR4.PCIDE types 0 and 1
/// for any PCID but 0, are #GP(0); types 2 and 3 are allowed.
#[test]
fn invpcid_faults() {
    let r = run_all_invpcid(
        |k| {
            cases(k, 6, |k, i| {
                let at = format!("i{i}");
                let at = Some(at.as_str());
                match i {
                    0 => invpcid_at(k, 4, 0, at),
                    1 => invpcid_at(k, 2, 0x1000, at),
                    2 => invpcid_at(k, 0, 1, at),
                    3 => invpcid_at(k, 1, 1, at),
                    4 => invpcid_at(k, 1, 0, at),
                    _ => invpcid_at(k, 3, 5, at),
                }
            })?;
            stop(k)
        },
        |m| {
            setup(m, 0);
            m.resume_at(GP, "next");
        },
    );
    assert_eq!(r.events.len(), 4, "{:#x?}", r.events);
    for (e, case) in r.events.iter().zip(0..) {
        assert_eq!((e.vector, e.error_code), (GP, 0));
        assert_eq!(e.rip, r.label(&format!("i{case}")), "case {case}");
    }
}

/// SMAP is checked at every supervisor access (SDM 4.6.1): a user page's translation cached
/// while RFLAGS.AC was set is not used once CLAC cleared it.
#[test]
fn smap_applies_after_clac_to_a_page_cached_under_stac() {
    let r = run_all(
        |k| {
            k.mov(rsi, TLB_X)?;
            set_cr4(k, cr4::SMAP, true)?;
            k.stac()?;
            read_hot(k)?;
            cases(k, 2, |k, i| match i {
                0 => {
                    k.clac()?;
                    k.def("smap")?;
                    k.mov(rbx, qword_ptr(rsi))
                }
                _ => {
                    k.stac()?;
                    read_hot(k)
                }
            })?;
            stop(k)
        },
        no_user,
        |m| {
            setup(m, pte::US);
            m.resume_at(PF, "next");
        },
    );
    assert_eq!(r.events.len(), 1, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(
        (e.vector, e.error_code, e.cr2, e.rip),
        (PF, pf_error::P as u64, TLB_X, r.label("smap"))
    );
    assert_eq!(r.reports, vec![A, A]);
}
