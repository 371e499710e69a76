//! Whole-system CPU tests: small guests with 4-level page tables, a GDT/IDT/TSS, kernel code at
//! CPL0 and user code at CPL3 (see `common` for the machine), run in every engine tier with
//! exceptions delivered through the guest's IDT; every tier must produce the same events,
//! reports, port IO, final CPU state and memory.
//!
//! Expectations come from the Intel SDM (Vol. 3A unless noted) and the AMD APM Vol. 2; where
//! this CPU model is the reference for a behaviour (the engine is not compared against a host
//! CPU here), the section is cited next to the assertion.
//!
//! Tests marked `#[ignore = "krr bug ..."]` hold the architectural expectation for a bug
//! outside the files these tests may fix (the reason names it); run them with `--ignored`.

mod common;

use common::*;
use iced_x86::code_asm::*;
use krr_jit::engine::{Engine, Exit};
use krr_runtime::arch::rflags::{ARITH, IF, RF, TF};
use krr_runtime::arch::vector::{BP, DB, DE, DF, GP, NM, NP, PF, SS, UD};
use krr_runtime::arch::{msr, pf_error};
use krr_runtime::gpr::RBX;

const R8: usize = 8;
const R9: usize = 9;
const R10: usize = 10;
const R12: usize = 12;
const R13: usize = 13;
const R14: usize = 14;

/// #PF error-code bits (SDM 4.7, "Page-Fault Exceptions").
const PF_P: u64 = pf_error::P as u64;
const PF_W: u64 = pf_error::W as u64;
const PF_U: u64 = pf_error::U as u64;
const PF_RSVD: u64 = pf_error::RSVD as u64;
const PF_I: u64 = pf_error::I as u64;

const USER_FLAGS: u32 = 0x202;

fn no_user(_: &mut Asm) -> AsmResult {
    Ok(())
}

fn no_setup(_: &mut Machine) {}

/// Enter CPL3 at `UCODE` with RSP `USTACK_TOP` and RFLAGS 0x202 through IRETQ.
fn enter_user(k: &mut Asm) -> AsmResult {
    iret_to_user(k, UCODE, USTACK_TOP, USER_FLAGS)
}

/// Write RAX to `msr` (clobbers RCX, RDX).
fn wrmsr_rax(a: &mut Asm, msr: u32) -> AsmResult {
    a.mov(rdx, rax)?;
    a.shr(rdx, 32)?;
    a.mov(ecx, msr)?;
    a.wrmsr()
}

/// RDMSR `msr` into RAX as one 64-bit value (clobbers RCX, RDX).
fn rdmsr_rax(a: &mut Asm, msr: u32) -> AsmResult {
    a.mov(ecx, msr)?;
    a.rdmsr()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)
}

/// Set (`on`) or clear bits of CR0/CR4 (clobbers RAX, RCX).
fn set_cr(a: &mut Asm, cr: AsmRegisterCr, bits: u64, on: bool) -> AsmResult {
    a.mov(rax, cr)?;
    a.mov(rcx, if on { bits } else { !bits })?;
    if on {
        a.or(rax, rcx)?;
    } else {
        a.and(rax, rcx)?;
    }
    a.mov(cr, rax)
}

/// The page-table leaf entry of `linear` in the final memory.
fn leaf(r: &Outcome, root: u64, linear: u64, level: u32) -> u64 {
    *walk(r, root, linear, level).last().unwrap()
}

/// Every table entry on the way to `linear`'s leaf at `level`, top first.
fn walk(r: &Outcome, root: u64, linear: u64, level: u32) -> Vec<u64> {
    let mut table = root;
    let mut out = Vec::new();
    for l in (level..4).rev() {
        let e = r.u64_at(table + ((linear >> (12 + 9 * l)) & 0x1ff) * 8);
        out.push(e);
        table = e & pte::ADDR;
    }
    out
}

/// Fault-class exceptions push RFLAGS with RF=1 (SDM 17.3.1.1: "For any fault-class exception
/// except a debug exception generated in response to an instruction breakpoint, the value
/// pushed for RF is 1"); traps and software interrupts push it as it is (0 here).
fn rf_image(v: u8) -> u64 {
    let fault = matches!(v, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19);
    if fault {
        RF
    } else {
        0
    }
}

/// An event taken at CPL3 with RSP `USTACK_TOP` and RFLAGS 0x202: the frame the CPU pushed on
/// the RSP0 stack (SDM 6.14.2, "64-Bit Mode Stack Frame"; the new stack is 16-byte aligned).
fn assert_user_frame(e: &Event, rip: u64) {
    assert_eq!(e.rip, rip, "pushed RIP");
    assert_eq!(e.cs, USER_CS as u64, "pushed CS");
    assert_eq!(e.ss, USER_SS as u64, "pushed SS");
    assert_eq!(e.rsp, USTACK_TOP, "pushed RSP");
    assert_eq!(e.rflags, 0x202 | rf_image(e.vector), "pushed RFLAGS");
    assert_eq!(e.frame, RSP0_TOP - 40, "frame on the RSP0 stack");
    assert_eq!(e.hflags & IF, 0, "an interrupt gate clears IF");
}

// ---------------------------------------------------------------------------------------
// Booting, HLT, descriptor tables

#[test]
fn boot_loads_descriptor_tables() {
    let r = run_all(
        |k| {
            k.mov(rbx, 0x1122_3344_5566_7788u64)?;
            report(k, rbx)?;
            k.sgdt(ptr(KSCRATCH))?;
            k.mov(rax, qword_ptr(KSCRATCH))?;
            report(k, rax)?;
            k.mov(rax, qword_ptr(KSCRATCH + 2))?;
            report(k, rax)?;
            k.sidt(ptr(KSCRATCH))?;
            k.movzx(eax, word_ptr(KSCRATCH))?;
            report(k, rax)?;
            k.mov(rax, qword_ptr(KSCRATCH + 2))?;
            report(k, rax)?;
            k.str(ax)?;
            k.movzx(eax, ax)?;
            report(k, rax)?;
            stop(k)
        },
        no_user,
        no_setup,
    );
    assert_eq!(r.exit, Exit::BusRequest);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports[0], 0x1122_3344_5566_7788);
    assert_eq!(r.reports[1] & 0xffff, 0x37);
    assert_eq!(r.reports[2], GDT);
    assert_eq!(r.reports[3], 0xfff);
    assert_eq!(r.reports[4], IDT);
    assert_eq!(r.reports[5], TSS_SEL as u64);
    assert_eq!(r.cpu.gdtr, (GDT, 0x37));
    assert_eq!(r.cpu.idtr, (IDT, 0xfff));
    assert_eq!(r.cpu.tr.selector, TSS_SEL);
    assert_eq!(r.cpu.tr.base, TSS);
    // LTR marks the TSS descriptor busy (type 9 -> 0xb; SDM LTR).
    assert_eq!(r.bytes(GDT + 0x28 + 5, 1)[0], 0x8b);
    assert_eq!(r.cpu.seg[2].selector, KERNEL_SS);
}

/// An MMIO store after which the bus wants the engine back (a device doorbell: the machine
/// must act at that instruction boundary) ends the run right after the store, in every tier,
/// even inside a compiled block; running again continues with the next instruction.
#[test]
fn mmio_store_that_asks_for_an_exit_returns_right_after_it() {
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                k.mov(ebx, 0)?;
                k.mov(rax, DOORBELL)?;
                k.mov(dword_ptr(rax), 0x55)?;
                k.def("after")?;
                k.inc(ebx)?;
                k.inc(ebx)?;
                report(k, rbx)?;
                stop(k)
            },
            no_user,
        );
        m.pt.map(
            &mut m.mem,
            DOORBELL,
            DOORBELL,
            PageSize::K4,
            pte::RW | pte::NX,
        );
        let after = m.label("after");
        let mut s = m.start(tier);
        let exit = s.run();
        assert_eq!(exit, Exit::BusRequest, "{tier:?}");
        assert_eq!(s.cpu().rip, after, "{tier:?}");
        assert_eq!(s.cpu().gpr[krr_runtime::gpr::RBX], 0, "{tier:?}");
        assert_eq!(
            s.bus.io,
            vec![Io::Out {
                port: 0,
                size: 4,
                value: 0x55
            }]
        );
        let exit = s.run();
        s.finish(exit)
    });
    assert_eq!(r.exit, Exit::BusRequest);
    assert_eq!(r.reports, vec![2]);
}

/// An NMI goes through IDT vector 2 whatever RFLAGS.IF says, and blocks further NMIs until
/// the next IRETQ (SDM 6.7.1), in every tier.
#[test]
fn nmi_is_delivered_and_blocked_until_iret() {
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                k.cli()?;
                // Port IO returns to the dispatcher right after itself: the run ends here.
                k.out(EXIT_PORT as u32, al)?;
                k.mov(ebx, 5)?;
                report(k, rbx)?;
                stop(k)
            },
            no_user,
        );
        m.action(2, 1);
        let mut s = m.start(tier);
        assert_eq!(s.run(), Exit::BusRequest, "{tier:?}");
        assert!(Engine::nmi_deliverable(s.cpu()), "{tier:?}");
        s.engine.inject_nmi(&mut s.core).expect("delivered");
        assert!(
            !Engine::nmi_deliverable(s.cpu()),
            "{tier:?}: blocked in the handler"
        );
        let exit = s.run();
        assert!(
            Engine::nmi_deliverable(s.cpu()),
            "{tier:?}: IRETQ unblocks NMIs"
        );
        s.finish(exit)
    });
    assert_eq!(r.exit, Exit::BusRequest);
    assert_eq!(r.events.len(), 1, "{:#x?}", r.events);
    assert_eq!(r.events[0].vector, 2);
    assert_eq!(r.events[0].rflags & IF, 0, "IF was clear when the NMI came");
    assert_eq!(r.reports, vec![5]);
}

/// XLAT (SDM: AL := [seg: rBX + zero-extended AL]): the whole of RBX plus AL, the sum
/// truncated to 32 bits with an address-size prefix, an FS override adding FS's base, the
/// rest of RAX kept; in every tier.
#[test]
fn xlat_looks_up_al_in_the_table_at_rbx() {
    let table = KSCRATCH;
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                k.mov(rax, 0x1122_3344_5566_77f3u64)?;
                k.mov(rbx, table)?;
                k.xlatb()?;
                report(k, rax)?;
                // Table at RBX + 0x80: index 0x90 reads table[0x110] (no 8-bit wrap).
                k.mov(eax, 0x90)?;
                k.mov(rbx, table + 0x80)?;
                k.xlatb()?;
                report(k, rax)?;
                // addr32: the high half of RBX is dropped.
                k.mov(eax, 0x05)?;
                k.mov(rbx, 0xdead_beef_0000_0000u64 | table)?;
                k.db(&[0x67, 0xd7])?;
                report(k, rax)?;
                // fs: the FS base is added.
                wrmsr(k, msr::FS_BASE, table - 0x1000)?;
                k.mov(eax, 0x07)?;
                k.mov(ebx, 0x1000)?;
                k.db(&[0x64, 0xd7])?;
                report(k, rax)?;
                stop(k)
            },
            no_user,
        );
        let bytes: Vec<u8> = (0..0x200u32)
            .map(|i| (i as u8) ^ 0x5a ^ (i >> 8) as u8)
            .collect();
        m.mem.write(table, &bytes).unwrap();
        m.run(tier)
    });
    let entry = |i: u64| (i as u8 ^ 0x5a ^ (i >> 8) as u8) as u64;
    assert_eq!(
        r.reports,
        vec![
            0x1122_3344_5566_7700 | entry(0xf3),
            entry(0x110),
            entry(0x05),
            entry(0x07),
        ]
    );
}

/// HLT ends `Engine::run` with `Exit::Halt` and RIP past the HLT; running again continues there.
#[test]

fn hlt_exits_with_rip_after_it() {
    let r = all_tiers(|tier| {
        let m = Machine::new(
            |k| {
                k.mov(ebx, 7)?;
                k.hlt()?;
                k.def("after")?;
                report(k, rbx)?;
                stop(k)
            },
            no_user,
        );
        let after = m.label("after");
        let mut s = m.start(tier);
        let exit = s.run();
        assert_eq!(exit, Exit::Halt, "{tier:?}");
        assert_eq!(s.cpu().rip, after, "{tier:?}");
        let exit = s.run();
        s.finish(exit)
    });
    assert_eq!(r.exit, Exit::BusRequest);
    assert_eq!(r.reports, vec![7]);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
}

// ---------------------------------------------------------------------------------------
// Page faults

#[test]
fn pf_not_present_read_write_fetch_from_user() {
    let r = run_all(
        enter_user,
        |u| {
            u.mov(rbx, 0x77u64)?;
            cases(u, 3, |u, i| match i {
                0 => u.mov(rax, qword_ptr(TEST_AREA + 0x18)),
                1 => u.mov(dword_ptr(TEST_AREA + 0x1004), eax),
                _ => {
                    u.mov(rax, TEST_AREA + 0x2000)?;
                    u.def("call")?;
                    u.call(rax)
                }
            })?;
            u.ud2()
        },
        |m| m.resume_at(PF, "next"),
    );
    assert_eq!(r.events.len(), 4, "{:#x?}", r.events);
    // SDM 4.7: P=0 (not present), W/R, U/S=1 (CPL3), I/D=1 for a fetch with EFER.NXE=1.
    let e = r.events[0];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_U, TEST_AREA + 0x18)
    );
    assert_user_frame(&e, r.label("t0"));
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_U | PF_W, TEST_AREA + 0x1004)
    );
    let e = r.events[2];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_U | PF_I, TEST_AREA + 0x2000)
    );
    // A fetch fault reports the target as RIP; the CALL has pushed its return address.
    assert_eq!(e.rip, TEST_AREA + 0x2000);
    assert_eq!(e.rsp, USTACK_TOP - 8);
    assert_eq!(r.events[3].vector, UD);
    assert_eq!(r.cpu.gpr[RBX], 0x77);
    assert_eq!(r.cpu.cr2, TEST_AREA + 0x2000);
    // The handler runs at CPL0 with the null SS a privilege change loads (SDM 6.14.4).
    assert_eq!(r.cpu.seg[1].selector, KERNEL_CS);
    assert_eq!(r.cpu.seg[2].selector, 0);
}

#[test]
fn pf_user_write_to_read_only_page() {
    for wp in [true, false] {
        let r = run_all(
            enter_user,
            |u| {
                u.mov(rbx, qword_ptr(TEST_AREA + 8))?;
                u.def("w")?;
                u.mov(qword_ptr(TEST_AREA + 8), rax)?;
                u.ud2()
            },
            |m| {
                if !wp {
                    m.cr0 &= !cr0::WP;
                }
                m.pt.map(&mut m.mem, TEST_AREA, TEST_AREA, PageSize::K4, pte::US);
                m.mem.write_u64(TEST_AREA + 8, 0x55).unwrap();
            },
        );
        // CR0.WP only matters for supervisor writes (SDM 4.6.1): a user write faults either way.
        let e = r.event();
        assert_eq!(
            (e.vector, e.error_code, e.cr2),
            (PF, PF_P | PF_W | PF_U, TEST_AREA + 8),
            "wp={wp}"
        );
        assert_user_frame(&e, r.label("w"));
        assert_eq!(r.cpu.gpr[RBX], 0x55);
        assert_eq!(r.u64_at(TEST_AREA + 8), 0x55);
        // The read set the accessed bit; the faulting write did not set dirty (SDM 4.8).
        let pte = leaf(&r, PT_POOL.0, TEST_AREA, 0);
        assert_eq!(pte & (pte::A | pte::D), pte::A, "wp={wp}");
    }
}

#[test]
fn pf_supervisor_write_protect_follows_cr0_wp() {
    let r = run_all(
        |k| {
            k.mov(eax, 0x11)?;
            k.def("w1")?;
            k.mov(qword_ptr(TEST_AREA), rax)?;
            k.def("after")?;
            set_cr(k, cr0, cr0::WP, false)?;
            k.mov(qword_ptr(TEST_AREA), 0x22)?;
            k.mov(rbx, qword_ptr(TEST_AREA))?;
            report(k, rbx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.pt.map(&mut m.mem, TEST_AREA, TEST_AREA, PageSize::K4, pte::NX);
            m.resume_at(PF, "after");
        },
    );
    // With CR0.WP=1 a supervisor write to a read-only page faults (P|W, U/S=0); with WP=0 it
    // is allowed (SDM 4.6.1).
    let e = r.event();
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_W, TEST_AREA)
    );
    assert_eq!(e.rip, r.label("w1"));
    assert_eq!(e.rflags, 0x2 | RF, "a fault pushes RF=1 (SDM 17.3.1.1)");
    assert_eq!((e.cs, e.ss), (KERNEL_CS as u64, KERNEL_SS as u64));
    assert_eq!(e.rsp, KSTACK_TOP);
    assert_eq!(
        e.frame,
        KSTACK_TOP - 40,
        "no stack switch without a privilege change"
    );
    assert_eq!(r.reports, vec![0x22]);
    let pte = leaf(&r, PT_POOL.0, TEST_AREA, 0);
    assert_eq!(pte & (pte::A | pte::D), pte::A | pte::D);
    assert_eq!(r.cpu.cr0 & cr0::WP, 0);
}

#[test]
fn pf_execute_from_nx_page() {
    let r = run_all(
        |k| {
            k.mov(rax, TEST_AREA + 0x1000)?;
            k.def("kcall")?;
            k.call(rax)?;
            k.def("k2")?;
            set_action(k, PF, 0)?;
            enter_user(k)
        },
        |u| {
            u.mov(rax, TEST_AREA)?;
            u.call(rax)?;
            u.ud2()
        },
        |m| {
            m.pt.map(
                &mut m.mem,
                TEST_AREA,
                TEST_AREA,
                PageSize::K4,
                pte::US | pte::RW | pte::NX,
            );
            m.pt.map(
                &mut m.mem,
                TEST_AREA + 0x1000,
                TEST_AREA + 0x1000,
                PageSize::K4,
                pte::RW | pte::NX,
            );
            // RET in both pages: executing them must not happen.
            m.mem.write(TEST_AREA, &[0xc3]).unwrap();
            m.mem.write(TEST_AREA + 0x1000, &[0xc3]).unwrap();
            m.resume_at(PF, "k2");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    // Supervisor fetch from an NX page: P|I/D (SDM 4.6.2, 4.7).
    let e = r.events[0];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_I, TEST_AREA + 0x1000)
    );
    assert_eq!(e.rip, TEST_AREA + 0x1000);
    assert_eq!(e.rsp, KSTACK_TOP - 8);
    // User fetch from an NX page: P|U|I/D.
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_U | PF_I, TEST_AREA)
    );
    assert_eq!((e.rip, e.rsp), (TEST_AREA, USTACK_TOP - 8));
    assert_eq!(e.frame, RSP0_TOP - 40);
}

#[test]
fn smep_blocks_supervisor_fetch_from_user_page() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::SMEP, true)?;
            k.mov(rbx, UCODE)?;
            k.def("c1")?;
            k.call(rbx)?;
            k.def("k2")?;
            set_cr(k, cr4, cr4::SMEP, false)?;
            k.call(rbx)?;
            report(k, r8)?;
            stop(k)
        },
        |u| {
            u.mov(r8d, 0x5ee)?;
            u.ret()
        },
        |m| m.resume_at(PF, "k2"),
    );
    // SMEP: a supervisor-mode fetch from a user page faults with P|I/D (SDM 4.6.1, 4.7).
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.cr2), (PF, PF_P | PF_I, UCODE));
    assert_eq!((e.rip, e.cs), (UCODE, KERNEL_CS as u64));
    assert_eq!(r.reports, vec![0x5ee]);
}

#[test]
fn smap_blocks_supervisor_data_access_unless_ac() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::SMAP, true)?;
            cases(k, 4, |k, i| match i {
                0 => k.mov(rbx, qword_ptr(UDATA)),
                1 => {
                    k.stac()?;
                    k.mov(rbx, qword_ptr(UDATA))?;
                    k.clac()?;
                    report(k, rbx)
                }
                2 => k.mov(qword_ptr(UDATA + 8), rbx),
                _ => {
                    k.stac()?;
                    k.mov(qword_ptr(UDATA + 16), rbx)?;
                    k.clac()
                }
            })?;
            // Instruction fetches are not data accesses: SMAP does not stop a call into user
            // code (SMEP is off).
            k.mov(rax, UCODE)?;
            k.call(rax)?;
            report(k, r8)?;
            stop(k)
        },
        |u| {
            u.mov(r8d, 0x99)?;
            u.ret()
        },
        |m| {
            m.mem.write_u64(UDATA, 0x1234).unwrap();
            m.resume_at(PF, "next");
        },
    );
    // SMAP: supervisor data accesses to user pages fault unless RFLAGS.AC=1 (SDM 4.6.1).
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.cr2), (PF, PF_P, UDATA));
    assert_eq!(e.rip, r.label("t0"));
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_W, UDATA + 8)
    );
    assert_eq!(e.rip, r.label("t2"));
    assert_eq!(r.reports, vec![0x1234, 0x99]);
    assert_eq!(r.u64_at(UDATA + 8), 0);
    assert_eq!(r.u64_at(UDATA + 16), 0x1234);
}

#[test]
fn pf_user_access_to_supervisor_page() {
    let r = run_all(
        enter_user,
        |u| {
            cases(u, 3, |u, i| match i {
                0 => u.mov(rax, qword_ptr(KDATA)),
                1 => u.mov(qword_ptr(KSCRATCH), rax),
                _ => {
                    u.mov(rax, KCODE)?;
                    u.jmp(rax)
                }
            })?;
            u.ud2()
        },
        |m| m.resume_at(PF, "next"),
    );
    assert_eq!(r.events.len(), 4, "{:#x?}", r.events);
    // U/S=0 pages are not accessible at CPL3, whatever the access (SDM 4.6.1).
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.cr2), (PF, PF_P | PF_U, KDATA));
    assert_user_frame(&e, r.label("t0"));
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_W | PF_U, KSCRATCH)
    );
    let e = r.events[2];
    assert_eq!(
        (e.vector, e.error_code, e.cr2, e.rip),
        (PF, PF_P | PF_U | PF_I, KCODE, KCODE)
    );
    assert_eq!(r.events[3].vector, UD);
    assert_eq!(r.u64_at(KSCRATCH), 0);
}

#[test]
fn pf_reserved_bit_in_large_page_entry() {
    let r = run_all(
        |k| {
            k.mov(rax, 0x4000_0000u64)?;
            k.def("f")?;
            k.mov(rbx, qword_ptr(rax + 0x10))?;
            stop(k)
        },
        no_user,
        |m| {
            // A 2-MiB PDE with bit 13 set: bits 20:13 are reserved (SDM 4.5, Table 4-17).
            m.pt.map(
                &mut m.mem,
                0x4000_0000,
                0x60_0000 | (1 << 13),
                PageSize::M2,
                pte::RW | pte::NX,
            );
        },
    );
    let e = r.event();
    assert_eq!(
        (e.vector, e.error_code, e.cr2),
        (PF, PF_P | PF_RSVD, 0x4000_0010)
    );
    assert_eq!(e.rip, r.label("f"));
}

#[test]
fn large_pages_and_accessed_dirty_bits() {
    const M2: u64 = 0x4000_0000;
    const G1: u64 = 0x80_0000_0000;
    let r = run_all(
        |k| {
            k.mov(rsi, M2)?;
            k.mov(rbx, qword_ptr(rsi + 0x1238))?;
            report(k, rbx)?;
            k.mov(rsi, G1)?;
            k.mov(rbx, qword_ptr(rsi + (KSCRATCH + 8) as i32))?;
            report(k, rbx)?;
            k.mov(rax, 0xefu64)?;
            k.mov(qword_ptr(rsi + (KSCRATCH + 0x10) as i32), rax)?;
            k.mov(rbx, qword_ptr(KSCRATCH + 0x10))?;
            report(k, rbx)?;
            k.mov(rbx, qword_ptr(TEST_AREA))?;
            k.mov(qword_ptr(TEST_AREA + 0x1000), rbx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.pt.map(&mut m.mem, M2, 0x60_0000, PageSize::M2, pte::RW | pte::NX);
            m.pt.map(&mut m.mem, G1, 0, PageSize::G1, pte::RW | pte::NX);
            for p in [TEST_AREA, TEST_AREA + 0x1000] {
                m.pt.map(&mut m.mem, p, p, PageSize::K4, pte::RW | pte::NX);
            }
            m.mem.write_u64(0x60_1238, 0xab).unwrap();
            m.mem.write_u64(KSCRATCH + 8, 0xcd).unwrap();
        },
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![0xab, 0xcd, 0xef]);
    // SDM 4.8: the accessed flag is set in every paging-structure entry used, the dirty flag
    // in the entry that maps the page, on a write.
    let m2 = walk(&r, PT_POOL.0, M2, 1);
    assert!(m2.iter().all(|e| e & pte::A != 0), "{m2:#x?}");
    assert_eq!(m2[2] & pte::D, 0, "read only: 2-MiB PDE stays clean");
    let g1 = walk(&r, PT_POOL.0, G1, 2);
    assert!(g1.iter().all(|e| e & pte::A != 0), "{g1:#x?}");
    assert_ne!(g1[1] & pte::D, 0, "written: 1-GiB PDPTE is dirty");
    let x = walk(&r, PT_POOL.0, TEST_AREA, 0);
    assert!(x.iter().all(|e| e & pte::A != 0), "{x:#x?}");
    assert_eq!(x[3] & pte::D, 0);
    let y = walk(&r, PT_POOL.0, TEST_AREA + 0x1000, 0);
    assert!(y.iter().all(|e| e & pte::A != 0), "{y:#x?}");
    assert_ne!(y[3] & pte::D, 0);
}

// ---------------------------------------------------------------------------------------
// #GP, #SS, #DE, #UD

#[test]
fn non_canonical_addresses() {
    let r = run_all(
        |k| {
            k.mov(rsi, 0x8000_0000_0000u64)?;
            cases(k, 3, |k, i| match i {
                0 => k.mov(rbx, qword_ptr(rsi)),
                1 => {
                    k.mov(rbp, rsi)?;
                    k.def("ss_access")?;
                    k.mov(rbx, qword_ptr(rbp + 8))
                }
                _ => k.jmp(rsi),
            })?;
            stop(k)
        },
        no_user,
        |m| {
            m.resume_at(GP, "next");
            m.resume_at(SS, "next");
        },
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    // A non-canonical data address is #GP(0), through RBP/RSP (SS) #SS(0) (SDM 6.15, #GP and
    // #SS, "64-bit mode"); CR2 is not touched.
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.cr2), (GP, 0, 0));
    assert_eq!(e.rip, r.label("t0"));
    let e = r.events[1];
    assert_eq!((e.vector, e.error_code), (SS, 0));
    assert_eq!(e.rip, r.label("ss_access"));
    // A branch to a non-canonical target faults on the branch (SDM JMP, 64-bit mode #GP(0)).
    let e = r.events[2];
    assert_eq!((e.vector, e.error_code), (GP, 0));
    assert_eq!(e.rip, r.label("t2"));
}

/// Privileged instructions at CPL3 raise #GP(0) without doing anything (SDM 5.9; each
/// instruction's "Protected Mode Exceptions"); CLI/STI and IN/OUT are IOPL-sensitive (IOPL=0).
#[test]
fn privileged_instructions_at_cpl3() {
    const N: usize = 17;
    let r = run_all(
        enter_user,
        |u| {
            cases(u, N, |u, i| match i {
                0 => u.hlt(),
                1 => u.mov(rax, cr3),
                2 => u.mov(cr3, rax),
                3 => u.wrmsr(),
                4 => u.rdmsr(),
                5 => u.cli(),
                6 => u.sti(),
                7 => u.lgdt(ptr(UDATA)),
                8 => u.lidt(ptr(UDATA)),
                9 => u.invlpg(ptr(UDATA)),
                10 => u.swapgs(),
                11 => u.out(0x80, al),
                12 => u.in_(al, 0x60),
                13 => u.clts(),
                14 => u.mov(rax, dr7),
                15 => u.wbinvd(),
                _ => u.mov(cr8, rax),
            })?;
            u.def("end")?;
            u.ud2()
        },
        |m| m.resume_at(GP, "next"),
    );
    assert_eq!(r.events.len(), N + 1, "{:#x?}", r.events);
    for (i, e) in r.events[..N].iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "case {i}: {e:#x?}");
        assert_eq!(e.rip, r.label(&format!("t{i}")), "case {i}");
        assert_eq!((e.cs, e.ss), (USER_CS as u64, USER_SS as u64), "case {i}");
        assert_ne!(e.rflags & IF, 0, "case {i}: CLI must not have taken effect");
    }
    assert_eq!(r.events[N].vector, UD);
    assert_eq!(r.events[N].rip, r.label("end"));
    assert!(r.io.is_empty(), "{:?}", r.io);
    assert_eq!(r.cpu.idtr, (IDT, 0xfff));
}

/// With IOPL=3, CPL3 code may use CLI/STI and port IO (SDM 18.2, 2.8.1 / Vol. 1 18.2.1).
#[test]
fn iopl3_allows_cli_sti_and_port_io() {
    let r = run_all(
        |k| iret_to_user(k, UCODE, USTACK_TOP, 0x3202),
        |u| {
            u.cli()?;
            u.pushfq()?;
            u.pop(r8)?;
            u.mov(al, 0x5a)?;
            u.out(0x80, al)?;
            u.in_(al, 0x61)?;
            u.movzx(r9d, al)?;
            u.sti()?;
            u.ud2()
        },
        no_setup,
    );
    let e = r.event();
    assert_eq!(e.vector, UD);
    assert_eq!(e.rflags & (IF | 0x3000), IF | 0x3000);
    assert_eq!(r.cpu.gpr[R8] & (IF | 0x3000), 0x3000);
    assert_eq!(
        r.io,
        vec![
            Io::Out {
                port: 0x80,
                size: 1,
                value: 0x5a
            },
            Io::In {
                port: 0x61,
                size: 1,
                value: 0x61
            }
        ]
    );
    assert_eq!(r.cpu.gpr[R9], 0x61);
}

#[test]
fn divide_error_and_invalid_opcode() {
    let r = run_all(
        |k| {
            cases(k, 2, |k, i| match i {
                0 => {
                    k.xor(edx, edx)?;
                    k.mov(eax, 1)?;
                    k.xor(ecx, ecx)?;
                    k.def("div")?;
                    k.div(ecx)
                }
                _ => k.ud2(),
            })?;
            set_action(k, DE, 0)?;
            set_action(k, UD, 0)?;
            enter_user(k)
        },
        |u| {
            u.mov(rcx, 0xffff_ffff_ffff_ffffu64)?;
            u.mov(rax, 0x8000_0000_0000_0000u64)?;
            u.cqo()?;
            u.def("idiv")?;
            u.idiv(rcx)?;
            u.ud2()
        },
        |m| {
            m.resume_at(DE, "next");
            m.resume_at(UD, "next");
        },
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    // #DE and #UD are faults without an error code (SDM 6.15): the frame's RIP is the
    // instruction; the stub pushed a 0 in place of the error code.
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.rip), (DE, 0, r.label("div")));
    assert_eq!(e.cs, KERNEL_CS as u64);
    let e = r.events[1];
    assert_eq!((e.vector, e.error_code, e.rip), (UD, 0, r.label("t1")));
    // IDIV overflow (INT64_MIN / -1) is #DE as well, here from CPL3.
    let e = r.events[2];
    assert_eq!(e.vector, DE);
    assert_user_frame_no_flags(&e, r.label("idiv"));
}

/// As [`assert_user_frame`] without the RFLAGS check (the user code changed flags).
fn assert_user_frame_no_flags(e: &Event, rip: u64) {
    assert_eq!(e.rip, rip, "pushed RIP");
    assert_eq!(
        (e.cs, e.ss, e.rsp),
        (USER_CS as u64, USER_SS as u64, USTACK_TOP)
    );
    assert_eq!(e.frame, RSP0_TOP - 40);
}

// ---------------------------------------------------------------------------------------
// Software interrupts, gates, stacks

/// INT3 is a trap: the pushed RIP is the next instruction (SDM 6.5, 6.15 "#BP"); IRETQ
/// returns there. A trap's RFLAGS image has RF=0, also after IRETQ returned from a fault
/// whose image had RF=1 (SDM 17.3.1.1).
#[test]
fn int3_is_a_trap() {
    let r = run_all(
        enter_user,
        |u| {
            u.def("ud")?;
            u.ud2()?;
            u.def("after_ud")?;
            u.mov(rbx, 1u64)?;
            u.int3()?;
            u.def("after")?;
            u.add(rbx, 1)?;
            u.def("end")?;
            u.mov(rax, qword_ptr(0u64))
        },
        |m| {
            m.gate(
                BP,
                Gate {
                    dpl: 3,
                    ..Gate::default()
                },
            );
            m.action(BP, 1);
            m.resume_at(UD, "after_ud");
        },
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(e.vector, UD);
    assert_user_frame(&e, r.label("ud"));
    assert_eq!(e.rflags & RF, RF);
    let e = r.events[1];
    assert_eq!((e.vector, e.error_code), (BP, 0));
    assert_user_frame(&e, r.label("after"));
    assert_eq!(e.rflags & RF, 0);
    assert_eq!((r.events[2].vector, r.events[2].rip), (PF, r.label("end")));
    assert_eq!(r.cpu.gpr[RBX], 2);
}

/// INT n from CPL3 through a DPL3 gate reaches the handler (a trap: RIP after INT n, the
/// caller's CS/SS/RSP in the frame, the RSP0 stack); IRETQ returns to CPL3 with the
/// interrupted state (SDM 6.12.1, INT n, IRET).
#[test]
fn int_n_through_dpl3_gate_and_iretq_back() {
    let r = run_all(
        enter_user,
        |u| {
            u.mov(rbx, 0x1111u64)?;
            u.mov(r12, 0x2222u64)?;
            u.stc()?;
            u.std()?;
            u.int(0x80)?;
            u.def("after")?;
            u.pushfq()?;
            u.pop(r13)?;
            u.mov(r14, rsp)?;
            u.mov(eax, cs)?;
            u.mov(r8, rax)?;
            u.mov(eax, ss)?;
            u.mov(r9, rax)?;
            u.cld()?;
            u.ud2()
        },
        |m| {
            m.gate(
                0x80,
                Gate {
                    dpl: 3,
                    ..Gate::default()
                },
            );
            m.action(0x80, 1);
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.rip), (0x80, r.label("after")));
    assert_eq!(
        (e.cs, e.ss, e.rsp),
        (USER_CS as u64, USER_SS as u64, USTACK_TOP)
    );
    assert_eq!(
        e.rflags,
        0x202 | 0x400 | 1,
        "IF, DF and CF as the user left them"
    );
    assert_eq!(e.frame, RSP0_TOP - 40);
    assert_eq!(
        e.hflags & (IF | 0x400),
        0x400,
        "the interrupt gate cleared IF, not DF"
    );
    assert_eq!(r.events[1].vector, UD);
    assert_eq!(r.cpu.gpr[RBX], 0x1111);
    assert_eq!(r.cpu.gpr[R12], 0x2222);
    assert_eq!(r.cpu.gpr[R13], 0x202 | 0x400 | 1);
    assert_eq!(r.cpu.gpr[R14], USTACK_TOP);
    assert_eq!(r.cpu.gpr[R8], USER_CS as u64);
    assert_eq!(r.cpu.gpr[R9], USER_SS as u64);
}

/// A trap gate leaves IF set (SDM 6.12.1.3).
#[test]
fn trap_gate_keeps_if() {
    let r = run_all(
        enter_user,
        |u| {
            u.int(0x81)?;
            u.ud2()
        },
        |m| {
            m.gate(
                0x81,
                Gate {
                    dpl: 3,
                    typ: 0xf,
                    ..Gate::default()
                },
            );
        },
    );
    let e = r.event();
    assert_eq!(e.vector, 0x81);
    assert_ne!(e.hflags & IF, 0);
}

/// INT n from CPL3 through a DPL0 gate is #GP with error code vector*8+2 (IDT, EXT=0); INT n
/// faults, so the frame's RIP is the INT instruction (SDM INT n "Operation": `IF software
/// interrupt and gate DPL < CPL THEN #GP(vector_number << 3 + 2)`; 6.12.1.1; 6.13).
#[test]

fn int_n_through_dpl0_gate_from_cpl3_is_gp() {
    // INT n and INT3 (the #BP gate is DPL0 here) each fault on themselves; the handler
    // resumes at the UD2 after them.
    for (name, op) in [("int", 0), ("int3", 1)] {
        let r = run_all(
            enter_user,
            |u| {
                u.def("op")?;
                if op == 0 {
                    u.int(0x81)?;
                } else {
                    u.int3()?;
                }
                u.def("end")?;
                u.ud2()
            },
            |m| m.resume_at(GP, "end"),
        );
        assert_eq!(r.events.len(), 2, "{name}: {:#x?}", r.events);
        let e = r.events[0];
        let vector = if op == 0 { 0x81 } else { 3 };
        assert_eq!((e.vector, e.error_code), (GP, vector * 8 + 2), "{name}");
        assert_user_frame(&e, r.label("op"));
    }
}

/// INT n to a vector beyond the IDT limit or to a not-present gate faults on the INT n:
/// #GP(vector*8+2), #NP(vector*8+2) (SDM INT n "Operation", 6.13).
#[test]

fn int_n_beyond_idt_limit_or_to_not_present_gate() {
    let r = run_all(
        |k| {
            cases(k, 2, |k, i| match i {
                0 => k.int(0x40),
                _ => {
                    k.mov(word_ptr(KSCRATCH), 0x7ff)?;
                    k.mov(rax, IDT)?;
                    k.mov(qword_ptr(KSCRATCH + 2), rax)?;
                    k.lidt(ptr(KSCRATCH))?;
                    k.def("int90")?;
                    k.int(0x90)
                }
            })?;
            stop(k)
        },
        no_user,
        |m| {
            m.gate(
                0x40,
                Gate {
                    present: false,
                    ..Gate::default()
                },
            );
            m.resume_at(GP, "next");
            m.resume_at(NP, "next");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(
        (e.vector, e.error_code, e.rip),
        (NP, 0x40 * 8 + 2, r.label("t0"))
    );
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.rip),
        (GP, 0x90 * 8 + 2, r.label("int90"))
    );
    assert_eq!(r.cpu.idtr, (IDT, 0x7ff));
}

/// A gate with an IST index switches to that TSS stack, with or without a privilege change;
/// the IST takes precedence over RSP0 (SDM 6.14.5).
#[test]
fn ist_stack_switch() {
    let r = run_all(
        |k| {
            k.sub(rsp, 0x100)?;
            k.def("kud")?;
            k.ud2()?;
            k.def("k2")?;
            set_action(k, UD, 0)?;
            enter_user(k)
        },
        |u| {
            u.def("uud")?;
            u.ud2()
        },
        |m| {
            m.gate(
                UD,
                Gate {
                    ist: 1,
                    ..Gate::default()
                },
            );
            m.resume_at(UD, "k2");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(e.rip, r.label("kud"));
    assert_eq!((e.cs, e.ss), (KERNEL_CS as u64, KERNEL_SS as u64));
    assert_eq!(e.rsp, KSTACK_TOP - 0x100);
    assert_eq!(e.frame, IST1_TOP - 40);
    let e = r.events[1];
    assert_eq!(e.rip, r.label("uud"));
    assert_eq!(
        (e.cs, e.ss, e.rsp),
        (USER_CS as u64, USER_SS as u64, USTACK_TOP)
    );
    assert_eq!(e.frame, IST1_TOP - 40);
}

/// A privilege change loads RSP0 from the TSS, and in 64-bit mode the new RSP is aligned down
/// to 16 bytes before the frame is pushed; without a stack switch the current RSP is aligned
/// the same way (SDM 6.14.2).
#[test]
fn stack_alignment_on_delivery() {
    let r = run_all(
        |k| {
            k.sub(rsp, 8)?;
            k.def("kud")?;
            k.ud2()?;
            k.def("k2")?;
            set_action(k, UD, 0)?;
            enter_user(k)
        },
        |u| u.ud2(),
        |m| {
            m.mem.write_u64(TSS + 4, RSP0_TOP - 8).unwrap();
            m.resume_at(UD, "k2");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(e.rsp, KSTACK_TOP - 8);
    assert_eq!(e.frame, KSTACK_TOP - 16 - 40);
    let e = r.events[1];
    assert_eq!(e.rsp, USTACK_TOP);
    assert_eq!(e.frame, RSP0_TOP - 16 - 40);
}

// ---------------------------------------------------------------------------------------
// Double and triple faults

/// A contributory exception (#NP for the not-present #DE gate) while delivering a
/// contributory exception (#DE) is a double fault, error code 0, RIP at the faulting
/// instruction (SDM 6.15 "Interrupt 8", Table 6-5).
#[test]
fn double_fault_contributory() {
    let r = run_all(
        |k| {
            k.xor(ecx, ecx)?;
            k.def("div")?;
            k.div(ecx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.gate(
                DE,
                Gate {
                    present: false,
                    ..Gate::default()
                },
            );
        },
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (DF, 0, r.label("div")));
    assert_eq!(e.cs, KERNEL_CS as u64);
    assert_eq!(e.rflags & RF, 0, "#DF is an abort: RF as it was");
}

/// #PF followed by a contributory exception (#NP: the #PF gate is not present) is a double
/// fault; CR2 holds the page-fault address (SDM Table 6-5).
#[test]
fn double_fault_after_page_fault() {
    let r = run_all(
        enter_user,
        |u| {
            u.def("f")?;
            u.mov(rax, qword_ptr(TEST_AREA))
        },
        |m| {
            m.gate(
                PF,
                Gate {
                    present: false,
                    ..Gate::default()
                },
            );
            // Linux runs #DF on an IST stack.
            m.gate(
                DF,
                Gate {
                    ist: 1,
                    ..Gate::default()
                },
            );
        },
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.cr2), (DF, 0, TEST_AREA));
    assert_eq!(
        (e.rip, e.cs, e.rsp),
        (r.label("f"), USER_CS as u64, USTACK_TOP)
    );
    assert_eq!(e.frame, IST1_TOP - 40);
}

/// A benign exception (#UD) whose gate is not present is not a double fault: #NP is delivered
/// with an error code naming the IDT entry, EXT=1 because it happened while delivering an
/// event external to the program (SDM 6.13 "Error Code": EXT is clear only for INT n, INT3,
/// INTO).
#[test]
fn not_present_gate_for_benign_exception_is_np_with_ext() {
    let r = run_all(
        |k| {
            k.def("ud")?;
            k.ud2()
        },
        no_user,
        |m| {
            m.gate(
                UD,
                Gate {
                    present: false,
                    ..Gate::default()
                },
            );
        },
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code), (NP, UD as u64 * 8 + 2 + 1));
    assert_eq!(e.rip, r.label("ud"));
}

/// A fault while delivering a double fault shuts the machine down.
#[test]
fn triple_fault() {
    let r = run_all(
        |k| {
            k.xor(ecx, ecx)?;
            k.def("div")?;
            k.div(ecx)?;
            stop(k)
        },
        no_user,
        |m| {
            for v in [DE, DF] {
                m.gate(
                    v,
                    Gate {
                        present: false,
                        ..Gate::default()
                    },
                );
            }
        },
    );
    assert_eq!(
        r.exit,
        Exit::TripleFault {
            first: DE,
            second: NP
        }
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.cpu.rip, r.label("div"));
}

// ---------------------------------------------------------------------------------------
// SYSCALL / SYSRET, MSRs, SWAPGS, FS/GS base, CR8, XCR0

/// RFLAGS the kernel hands to SYSRET in R11: CF PF ZF IF DF OF AC ID plus bits SYSRET must
/// drop: 3, 5 (reserved), RF, VM.
const R11_IN: u64 = 0x1
    | 0x4
    | 0x40
    | 0x200
    | 0x400
    | 0x800
    | 0x4_0000
    | 0x20_0000
    | 0x8
    | 0x20
    | 0x1_0000
    | 0x2_0000;
/// What SYSRET loads: `(R11 & 0x3C7FD7) | 2` (SDM SYSRET "Operation").
const USER_RFLAGS: u64 = (R11_IN & 0x3c_7fd7) | 2;
/// Linux's SYSCALL mask: TF DF IF IOPL AC NT.
const SFMASK: u64 = 0x4_7700;

#[test]
fn sysret_to_cpl3_and_syscall_back() {
    let r = run_all(
        |k| {
            let mut entry = k.create_label();
            k.mov(rax, STAR)?;
            wrmsr_rax(k, msr::STAR)?;
            k.lea(rax, ptr(entry))?;
            wrmsr_rax(k, msr::LSTAR)?;
            k.mov(eax, SFMASK as u32)?;
            wrmsr_rax(k, msr::SFMASK)?;
            k.mov(rcx, UCODE)?;
            k.mov(r11, R11_IN)?;
            k.mov(rsp, USTACK_TOP)?;
            k.sysretq()?;
            // The SYSCALL entry: still on the user stack, CPL0.
            k.set_label(&mut entry)?;
            k.name("entry", entry);
            k.pushfq()?;
            k.pop(rbx)?;
            report(k, rcx)?;
            report(k, r11)?;
            report(k, rbx)?;
            k.mov(eax, cs)?;
            report(k, rax)?;
            k.mov(eax, ss)?;
            report(k, rax)?;
            report(k, rsp)?;
            report(k, r12)?;
            report(k, r13)?;
            report(k, r14)?;
            stop(k)
        },
        |u| {
            u.pushfq()?;
            u.pop(r12)?;
            u.mov(eax, cs)?;
            u.mov(r13, rax)?;
            u.mov(eax, ss)?;
            u.mov(r14, rax)?;
            u.syscall()?;
            u.def("after")?;
            u.ud2()
        },
        no_setup,
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(USER_RFLAGS, 0x24_0e47);
    let after = r.label("after");
    // SYSCALL: RCX = next RIP, R11 = RFLAGS, RFLAGS &= ~SFMASK, CS = STAR[47:32],
    // SS = STAR[47:32]+8, RSP unchanged (SDM SYSCALL "Operation").
    assert_eq!(
        r.reports,
        vec![
            after,
            USER_RFLAGS,
            USER_RFLAGS & !SFMASK,
            KERNEL_CS as u64,
            KERNEL_SS as u64,
            USTACK_TOP,
            // In user mode after SYSRET: CS = STAR[63:48]+16 | 3, SS = STAR[63:48]+8 | 3.
            USER_RFLAGS,
            USER_CS as u64,
            USER_SS as u64,
        ]
    );
    assert_eq!(r.cpu.seg[1].attrs, 0xa09b);
    assert_eq!(r.cpu.seg[2].attrs & 0xff, 0x93);
    assert_eq!(r.cpu.star, STAR);
    assert_eq!(r.cpu.lstar, r.label("entry"));
    assert_eq!(r.cpu.sfmask, SFMASK);
}

/// SYSRET to a non-canonical RCX raises #GP(0) at CPL0 (Intel; SDM SYSRET "Operation").
#[test]
fn sysret_to_non_canonical_rip_faults_in_kernel() {
    let r = run_all(
        |k| {
            k.mov(rax, STAR)?;
            wrmsr_rax(k, msr::STAR)?;
            k.mov(rcx, 0x8000_0000_0000u64)?;
            k.mov(r11, 0x202u64)?;
            k.def("sysret")?;
            k.sysretq()
        },
        no_user,
        no_setup,
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (GP, 0, r.label("sysret")));
    assert_eq!((e.cs, e.ss), (KERNEL_CS as u64, KERNEL_SS as u64));
}

/// With EFER.SCE=0, SYSCALL and SYSRET are #UD (SDM SYSCALL/SYSRET "64-Bit Mode Exceptions").
#[test]
fn syscall_without_sce_is_ud() {
    let r = run_all(
        |k| {
            k.mov(eax, 0xd00)?;
            wrmsr_rax(k, msr::EFER)?;
            k.def("sysret")?;
            k.sysretq()?;
            k.def("k2")?;
            set_action(k, UD, 0)?;
            enter_user(k)
        },
        |u| {
            u.def("syscall")?;
            u.syscall()
        },
        |m| m.resume_at(UD, "k2"),
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(
        (e.vector, e.rip, e.cs),
        (UD, r.label("sysret"), KERNEL_CS as u64)
    );
    let e = r.events[1];
    assert_eq!(e.vector, UD);
    assert_user_frame(&e, r.label("syscall"));
    assert_eq!(r.cpu.efer, 0xd00);
}

/// WRMSR then RDMSR returns the value for the MSRs the model has (ARCHITECTURE.md's list);
/// the read-only ones read as documented; an unknown MSR, a write-only MSR read, a reserved
/// bit or a non-canonical address is #GP(0) and changes nothing (SDM RDMSR/WRMSR, Vol. 4).
#[test]
fn msr_round_trip_and_faults() {
    const MSRS: [(u32, u64); 25] = [
        (0x1b, 0xfee0_0900),                     // APIC_BASE (as reset)
        (0x48, 1),                               // SPEC_CTRL
        (0x174, 0x10),                           // SYSENTER_CS
        (0x175, 0xffff_ffff_8200_0000),          // SYSENTER_ESP
        (0x176, 0xffff_ffff_8200_1000),          // SYSENTER_EIP
        (0x1a0, 1),                              // MISC_ENABLE
        (0x200, 0x8000_0006),                    // MTRR_PHYSBASE0
        (0x201, 0xff_8000_0800),                 // MTRR_PHYSMASK0
        (0x20f, 0xff_c000_0800),                 // MTRR_PHYSMASK7
        (0x250, 0x0606_0606_0606_0606),          // MTRR_FIX64K_00000
        (0x258, 0x0606_0606_0606_0606),          // MTRR_FIX16K_80000
        (0x259, 0x0101_0101_0101_0101),          // MTRR_FIX16K_A0000
        (0x268, 0x0505_0505_0505_0505),          // MTRR_FIX4K_C0000
        (0x26f, 0x0505_0505_0505_0505),          // MTRR_FIX4K_F8000
        (0x277, 0x0007_0406_0007_0106),          // PAT
        (0x2ff, 0xc06),                          // MTRR_DEF_TYPE
        (msr::EFER, 0xd01),                      // EFER (unchanged)
        (msr::STAR, 0x0013_0008_1234_5678),      // STAR
        (msr::LSTAR, 0xffff_ffff_8100_0000),     // LSTAR
        (0xc000_0083, 0xffff_ffff_8100_1000),    // CSTAR
        (msr::SFMASK, SFMASK),                   // SFMASK
        (msr::FS_BASE, 0x7fff_1234_5000),        // FS_BASE
        (msr::GS_BASE, 0xffff_8880_0000_0000),   // GS_BASE
        (msr::KERNEL_GS_BASE, 0x1234_5678_9000), // KERNEL_GS_BASE
        (0xc000_0103, 7),                        // TSC_AUX
    ];
    /// Read-only (or reset-value) MSRs: TSC from the bus, PLATFORM_ID, UCODE_REV, MTRRcap
    /// (8 variable ranges, fixed ranges, WC), MCG_CAP (no banks), MCG_STATUS.
    const READS: [(u32, u64); 6] = [
        (0x10, 1000),
        (0x17, 0),
        (0x8b, 0),
        (0xfe, 0x508),
        (0x179, 0),
        (0x17a, 0),
    ];
    let r = run_all(
        |k| {
            for (msr, v) in MSRS {
                k.mov(rax, v)?;
                wrmsr_rax(k, msr)?;
                rdmsr_rax(k, msr)?;
                report(k, rax)?;
            }
            for (msr, _) in READS {
                rdmsr_rax(k, msr)?;
                report(k, rax)?;
            }
            // PRED_CMD is write-only.
            k.mov(eax, 1)?;
            wrmsr_rax(k, 0x49)?;
            cases(k, 6, |k, i| match i {
                0 => {
                    k.mov(ecx, 0x1234)?;
                    k.rdmsr()
                }
                1 => {
                    k.mov(ecx, 0x1234)?;
                    k.wrmsr()
                }
                2 => {
                    // Non-canonical LSTAR.
                    k.mov(rax, 0x8000_0000_0000u64)?;
                    wrmsr_rax(k, msr::LSTAR)
                }
                3 => {
                    // EFER bit 1 is reserved.
                    k.mov(eax, 0xd03)?;
                    wrmsr_rax(k, msr::EFER)
                }
                4 => {
                    // PAT memory type 2 is reserved.
                    k.mov(eax, 2)?;
                    wrmsr_rax(k, 0x277)
                }
                _ => {
                    k.mov(ecx, 0x49)?;
                    k.rdmsr()
                }
            })?;
            stop(k)
        },
        no_user,
        |m| m.resume_at(GP, "next"),
    );
    let want: Vec<u64> = MSRS.iter().chain(&READS).map(|&(_, v)| v).collect();
    assert_eq!(r.reports, want);
    assert_eq!(r.events.len(), 6, "{:#x?}", r.events);
    for e in &r.events {
        assert_eq!((e.vector, e.error_code), (GP, 0), "{e:#x?}");
    }
    assert_eq!(r.cpu.lstar, 0xffff_ffff_8100_0000);
    assert_eq!(r.cpu.efer, 0xd01);
    assert_eq!(r.cpu.star, 0x0013_0008_1234_5678);
    assert_eq!(r.cpu.kernel_gs_base, 0x1234_5678_9000);
    assert_eq!(r.cpu.seg[4].base, 0x7fff_1234_5000);
    assert_eq!(r.cpu.seg[5].base, 0xffff_8880_0000_0000);
}

/// IA32_APIC_BASE (SDM 11.4.4, 11.12.5): the page moves, the APIC disables and enables and
/// enters x2APIC mode (CPUID reports x2APIC); reserved bits (bit 9, above MAXPHYADDR 40),
/// "EXTD without EN", x2APIC -> xAPIC and disabled -> x2APIC are #GP(0) and change nothing.
#[test]
fn apic_base_moves_and_refuses_reserved_bits_and_bad_modes() {
    const VALUES: [u64; 4] = [
        0xfed0_0900, // moved, enabled
        0xfed0_0100, // disabled
        0xfee0_0900, // back at reset
        0xfee0_0d00, // x2APIC
    ];
    let r = run_all(
        |k| {
            for v in VALUES {
                k.mov(rax, v)?;
                wrmsr_rax(k, msr::APIC_BASE)?;
                rdmsr_rax(k, msr::APIC_BASE)?;
                report(k, rax)?;
            }
            cases(k, 5, |k, i| {
                let v: u64 = match i {
                    0 => 0xfee0_0f00,     // bit 9
                    1 => 0x100_fee0_0d00, // bit 40 (MAXPHYADDR 40)
                    2 => 0xfee0_0900,     // x2APIC -> xAPIC
                    3 => 0xfee0_0500,     // EXTD without EN
                    _ => {
                        // Still x2APIC; x2APIC -> disabled is allowed, disabled -> x2APIC
                        // is not.
                        rdmsr_rax(k, msr::APIC_BASE)?;
                        report(k, rax)?;
                        k.mov(rax, 0xfee0_0100u64)?;
                        wrmsr_rax(k, msr::APIC_BASE)?;
                        0xfee0_0d00
                    }
                };
                k.mov(rax, v)?;
                wrmsr_rax(k, msr::APIC_BASE)
            })?;
            rdmsr_rax(k, msr::APIC_BASE)?;
            report(k, rax)?;
            stop(k)
        },
        no_user,
        |m| m.resume_at(GP, "next"),
    );
    let mut want = VALUES.to_vec();
    want.extend([0xfee0_0d00, 0xfee0_0100]);
    assert_eq!(r.reports, want);
    assert_eq!(r.events.len(), 5, "{:#x?}", r.events);
    for e in &r.events {
        assert_eq!((e.vector, e.error_code), (GP, 0), "{e:#x?}");
    }
}

/// SWAPGS exchanges GS.base with IA32_KERNEL_GS_BASE (SDM SWAPGS).
#[test]
fn swapgs_exchanges_gs_bases() {
    let r = run_all(
        |k| {
            k.mov(eax, KSCRATCH as u32)?;
            wrmsr_rax(k, msr::GS_BASE)?;
            k.mov(eax, (KSCRATCH + 0x100) as u32)?;
            wrmsr_rax(k, msr::KERNEL_GS_BASE)?;
            k.mov(rbx, qword_ptr(0u64).gs())?;
            report(k, rbx)?;
            k.swapgs()?;
            k.mov(rbx, qword_ptr(0u64).gs())?;
            report(k, rbx)?;
            rdmsr_rax(k, msr::GS_BASE)?;
            report(k, rax)?;
            rdmsr_rax(k, msr::KERNEL_GS_BASE)?;
            report(k, rax)?;
            stop(k)
        },
        no_user,
        |m| {
            m.mem.write_u64(KSCRATCH, 0xaaaa).unwrap();
            m.mem.write_u64(KSCRATCH + 0x100, 0xbbbb).unwrap();
        },
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![0xaaaa, 0xbbbb, KSCRATCH + 0x100, KSCRATCH]);
    assert_eq!(r.cpu.seg[5].base, KSCRATCH + 0x100);
    assert_eq!(r.cpu.kernel_gs_base, KSCRATCH);
}

/// RDFSBASE/WRFSBASE and friends: #UD unless CR4.FSGSBASE; then usable at any CPL, and a
/// non-canonical base is #GP(0) (SDM RDFSBASE/WRFSBASE).
#[test]
fn fsgsbase_instructions() {
    let r = run_all(
        |k| {
            cases(k, 1, |k, _| k.rdfsbase(rax))?;
            set_cr(k, cr4, cr4::FSGSBASE, true)?;
            k.mov(eax, KSCRATCH as u32)?;
            k.wrfsbase(rax)?;
            k.rdfsbase(rbx)?;
            report(k, rbx)?;
            rdmsr_rax(k, msr::FS_BASE)?;
            report(k, rax)?;
            k.mov(rbx, qword_ptr(0x10u64).fs())?;
            report(k, rbx)?;
            k.mov(rax, 0x8000_0000_0000u64)?;
            k.def("bad")?;
            k.wrgsbase(rax)?;
            k.def("k2")?;
            set_action(k, GP, 0)?;
            set_action(k, UD, 0)?;
            enter_user(k)
        },
        |u| {
            u.mov(eax, UDATA as u32)?;
            u.wrgsbase(rax)?;
            u.rdgsbase(r8)?;
            u.mov(r9, qword_ptr(8u64).gs())?;
            u.ud2()
        },
        |m| {
            m.resume_at(UD, "next");
            m.resume_at(GP, "k2");
            m.mem.write_u64(KSCRATCH + 0x10, 0xf5).unwrap();
            m.mem.write_u64(UDATA + 8, 0x6565).unwrap();
        },
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    assert_eq!((r.events[0].vector, r.events[0].rip), (UD, r.label("t0")));
    assert_eq!(
        (r.events[1].vector, r.events[1].error_code, r.events[1].rip),
        (GP, 0, r.label("bad"))
    );
    assert_eq!(r.events[2].vector, UD);
    assert_eq!(r.reports, vec![KSCRATCH, KSCRATCH, 0xf5]);
    assert_eq!(r.cpu.gpr[R8], UDATA);
    assert_eq!(r.cpu.gpr[R9], 0x6565);
    assert_eq!(r.cpu.seg[5].base, UDATA);
}

/// MOV to/from CR8 (the TPR); bits 63:4 are reserved: #GP(0) (SDM MOV CR, 10.8.6.1).
#[test]
fn cr8_moves() {
    let r = run_all(
        |k| {
            k.mov(eax, 9)?;
            k.mov(cr8, rax)?;
            k.mov(rbx, cr8)?;
            report(k, rbx)?;
            k.mov(eax, 16)?;
            k.def("bad")?;
            k.mov(cr8, rax)?;
            stop(k)
        },
        no_user,
        no_setup,
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (GP, 0, r.label("bad")));
    assert_eq!(r.reports, vec![9]);
    assert_eq!(r.cpu.cr8, 9);
}

/// XGETBV/XSETBV: #UD unless CR4.OSXSAVE; XCR0 bit 0 must stay set, unsupported bits and
/// other XCRs are #GP(0), XSETBV at CPL3 is #GP(0) (SDM XSETBV, 13.3).
#[test]
fn xsetbv_xgetbv() {
    let r = run_all(
        |k| {
            k.xor(ecx, ecx)?;
            cases(k, 1, |k, _| k.xgetbv())?;
            set_cr(k, cr4, cr4::OSXSAVE, true)?;
            k.xor(ecx, ecx)?;
            k.xgetbv()?;
            report(k, rax)?;
            k.mov(eax, 3)?;
            k.xor(edx, edx)?;
            k.xsetbv()?;
            k.xgetbv()?;
            report(k, rax)?;
            k.xor(edx, edx)?;
            cases_tagged(k, "x", 3, |k, i| {
                let (rcx_v, rax_v) = [(0, 2), (0, 0xb), (1, 3)][i];
                k.mov(ecx, rcx_v)?;
                k.mov(eax, rax_v)?;
                k.def(&format!("xsetbv{i}"))?;
                k.xsetbv()
            })?;
            set_action(k, GP, 0)?;
            enter_user(k)
        },
        |u| {
            u.xor(ecx, ecx)?;
            u.xgetbv()?;
            u.mov(r8, rax)?;
            u.mov(eax, 1)?;
            u.xor(edx, edx)?;
            u.def("user_xsetbv")?;
            u.xsetbv()
        },
        |m| {
            m.resume_at(UD, "next");
            m.resume_at(GP, "nextx");
        },
    );
    assert_eq!(r.events.len(), 5, "{:#x?}", r.events);
    assert_eq!(r.events[0].vector, UD);
    for (i, e) in r.events[1..4].iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "case {i}");
        assert_eq!(e.rip, r.label(&format!("xsetbv{i}")), "case {i}");
    }
    let e = r.events[4];
    assert_eq!((e.vector, e.error_code), (GP, 0));
    assert_user_frame_no_flags(&e, r.label("user_xsetbv"));
    assert_eq!(r.reports, vec![1, 3]);
    assert_eq!(r.cpu.gpr[R8], 3, "XGETBV works at CPL3");
    assert_eq!(r.cpu.xcr0, 3);
}

/// Decoding a block may read instruction bytes ahead of what executes, into the next page;
/// the side effects of that look-ahead (the accessed bit of the next page's PTE) must not
/// depend on the tier or block size, or guest-visible memory differs between tiers (and
/// between a recording and a replay that tier differently).
#[test]

fn fetch_ahead_side_effects_are_tier_independent() {
    let r = run_all(
        enter_user,
        |u| {
            for _ in 0..4000 {
                u.nop()?;
            }
            u.ud2()
        },
        |m| {
            // The page after the user code is mapped, but no instruction there runs.
            m.pt.map(
                &mut m.mem,
                UCODE + 0x1000,
                UCODE + 0x1000,
                PageSize::K4,
                pte::US,
            );
        },
    );
    assert_eq!(r.event().vector, UD);
}

// ---------------------------------------------------------------------------------------
// FXSAVE/XSAVE, x87 control, CR0.TS

const SRC: u64 = KSCRATCH + 0xf00;
const XMM0_V: u128 = 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100;
const XMM1_V: u128 = 0x1f1e_1d1c_1b1a_1918_1716_1514_1312_1110;
const XMM15_V: u128 = 0xfffe_fdfc_fbfa_f9f8_f7f6_f5f4_f3f2_f1f0;

/// Load FCW 0x027f, MXCSR 0x1fc0 and XMM0/1/15 from `SRC` (written by [`write_src`]).
fn load_fp_state(k: &mut Asm) -> AsmResult {
    k.fninit()?;
    k.fldcw(word_ptr(SRC))?;
    k.ldmxcsr(dword_ptr(SRC + 4))?;
    k.movdqu(xmm0, xmmword_ptr(SRC + 0x10))?;
    k.movdqu(xmm1, xmmword_ptr(SRC + 0x20))?;
    k.movdqu(xmm15, xmmword_ptr(SRC + 0x30))
}

/// Change every piece of state `load_fp_state` set.
fn clobber_fp_state(k: &mut Asm) -> AsmResult {
    k.pxor(xmm0, xmm0)?;
    k.pxor(xmm1, xmm1)?;
    k.pxor(xmm15, xmm15)?;
    k.ldmxcsr(dword_ptr(SRC + 8))?;
    k.fninit()
}

fn write_src(m: &mut Machine) {
    m.mem.write(SRC, &0x027fu16.to_le_bytes()).unwrap();
    m.mem.write(SRC + 4, &0x1fc0u32.to_le_bytes()).unwrap();
    m.mem.write(SRC + 8, &0x1f80u32.to_le_bytes()).unwrap();
    m.mem.write(SRC + 0x10, &XMM0_V.to_le_bytes()).unwrap();
    m.mem.write(SRC + 0x20, &XMM1_V.to_le_bytes()).unwrap();
    m.mem.write(SRC + 0x30, &XMM15_V.to_le_bytes()).unwrap();
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u128_at(b: &[u8], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().unwrap())
}

/// FXSAVE64 writes the documented layout (SDM Vol. 1 10.5.1, Vol. 2 FXSAVE Table 3-46: FCW
/// at 0, FSW 2, abridged FTW 4, MXCSR 24, MXCSR_MASK 28, ST0 32, XMM0 160, XMM15 400) and
/// FXRSTOR64 restores it; a misaligned area or a reserved MXCSR bit is #GP(0).
#[test]
fn fxsave_fxrstor_layout() {
    const IMG: u64 = KSCRATCH;
    const IMG2: u64 = KSCRATCH + 0x200;
    const BAD: u64 = KSCRATCH + 0x400;
    let r = run_all(
        |k| {
            load_fp_state(k)?;
            k.fxsave64(ptr(IMG))?;
            clobber_fp_state(k)?;
            k.fxrstor64(ptr(IMG))?;
            k.fxsave64(ptr(IMG2))?;
            cases(k, 2, |k, i| match i {
                0 => k.fxsave64(ptr(IMG + 8)),
                _ => k.fxrstor64(ptr(BAD)),
            })?;
            stop(k)
        },
        no_user,
        |m| {
            write_src(m);
            m.mem.write(BAD + 24, &0x1_0000u32.to_le_bytes()).unwrap();
            m.mem.write(IMG + 416, &[0xa5; 96]).unwrap();
            m.resume_at(GP, "next");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    for (i, e) in r.events.iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "case {i}");
        assert_eq!(e.rip, r.label(&format!("t{i}")), "case {i}");
    }
    let img = r.bytes(IMG, 512);
    assert_eq!(u16_at(&img, 0), 0x027f, "FCW");
    assert_eq!(u16_at(&img, 2), 0, "FSW");
    assert_eq!(img[4], 0, "abridged FTW: all empty after FNINIT");
    assert_eq!(u32_at(&img, 24), 0x1fc0, "MXCSR");
    assert_eq!(u32_at(&img, 28) & 0xffbf, 0xffbf, "MXCSR_MASK");
    assert_eq!(u128_at(&img, 160), XMM0_V);
    assert_eq!(u128_at(&img, 176), XMM1_V);
    assert_eq!(u128_at(&img, 400), XMM15_V);
    assert_eq!(
        r.bytes(IMG2, 416),
        img[..416].to_vec(),
        "FXRSTOR restored all"
    );
    assert_eq!(r.cpu.fcw, 0x027f);
    assert_eq!(r.cpu.mxcsr, 0x1fc0);
    assert_eq!(r.cpu.xmm[0], [XMM0_V as u64, (XMM0_V >> 64) as u64]);
    assert_eq!(r.cpu.xmm[15], [XMM15_V as u64, (XMM15_V >> 64) as u64]);
    assert_eq!(
        r.bytes(IMG + 8, 8),
        vec![0; 8],
        "the misaligned FXSAVE wrote nothing"
    );
    assert_eq!(
        r.bytes(IMG + 416, 96),
        vec![0xa5; 96],
        "FXSAVE leaves the reserved and software-available bytes 416-511 alone"
    );
}

/// XSAVE/XRSTOR, standard form (SDM Vol. 1 13.4, 13.7, 13.8): the legacy region as FXSAVE,
/// XSTATE_BV at 512 with a bit per saved component (components not in their initial state
/// must be 1; bits outside RFBM untouched), MXCSR saved and loaded only when RFBM[1] (or
/// RFBM[2]) is set; XRSTOR of a component whose XSTATE_BV bit is clear initialises it.
#[test]
fn xsave_xrstor_layout() {
    const A: u64 = KSCRATCH + 0x800; // full save
    const B: u64 = KSCRATCH + 0xa80; // x87 only into a prefilled area
    const C: u64 = KSCRATCH + 0x1000; // XSTATE_BV = 0: initialise on restore
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::OSXSAVE, true)?;
            k.xor(ecx, ecx)?;
            k.xor(edx, edx)?;
            k.mov(eax, 3)?;
            k.xsetbv()?;
            load_fp_state(k)?;
            k.mov(eax, 3)?;
            k.xsave64(ptr(A))?;
            k.mov(eax, 1)?;
            k.xsave64(ptr(B))?;
            clobber_fp_state(k)?;
            k.mov(eax, 3)?;
            k.xrstor64(ptr(A))?;
            k.movdqu(xmmword_ptr(KSCRATCH), xmm0)?;
            k.stmxcsr(dword_ptr(KSCRATCH + 0x10))?;
            k.fnstcw(word_ptr(KSCRATCH + 0x14))?;
            // Restoring x87 only leaves SSE state (and MXCSR) alone.
            k.mov(eax, 1)?;
            k.xrstor64(ptr(C))?;
            k.movdqu(xmmword_ptr(KSCRATCH + 0x20), xmm0)?;
            k.stmxcsr(dword_ptr(KSCRATCH + 0x30))?;
            k.fnstcw(word_ptr(KSCRATCH + 0x34))?;
            // Both components from an all-init header: XMM zeroed, MXCSR from memory.
            k.mov(eax, 3)?;
            k.xrstor64(ptr(C))?;
            cases(k, 1, |k, _| k.xsave64(ptr(A + 16)))?;
            stop(k)
        },
        no_user,
        |m| {
            write_src(m);
            // B: a pattern everywhere but the header, whose XSTATE_BV has bit 1 set.
            m.mem.write(B, &[0xee; 512]).unwrap();
            m.mem.write_u64(B + 512, 2).unwrap();
            // C: x87 garbage, MXCSR 0x1f00, header all zero.
            m.mem.write(C, &[0x55; 512]).unwrap();
            m.mem.write(C + 24, &0x1f00u32.to_le_bytes()).unwrap();
            m.mem.write(C + 512, &[0; 64]).unwrap();
            m.resume_at(GP, "next");
        },
    );
    let e = r.event();
    assert_eq!(
        (e.vector, e.error_code, e.rip),
        (GP, 0, r.label("t0")),
        "misaligned"
    );
    let a = r.bytes(A, 576);
    assert_eq!(u16_at(&a, 0), 0x027f, "FCW");
    assert_eq!(u32_at(&a, 24), 0x1fc0, "MXCSR");
    assert_eq!(u128_at(&a, 160), XMM0_V, "XMM0");
    assert_eq!(u128_at(&a, 400), XMM15_V, "XMM15");
    assert_eq!(
        u64::from_le_bytes(a[512..520].try_into().unwrap()),
        3,
        "XSTATE_BV"
    );
    let b = r.bytes(B, 576);
    assert_eq!(u16_at(&b, 0), 0x027f, "x87 saved");
    assert_eq!(&b[24..32], &[0xee; 8], "MXCSR not saved without RFBM[1]");
    assert_eq!(&b[160..416], &[0xee; 256][..], "XMM not saved");
    assert_eq!(
        u64::from_le_bytes(b[512..520].try_into().unwrap()),
        3,
        "XSTATE_BV: bit 0 written, bit 1 left as it was"
    );
    let s = r.bytes(KSCRATCH, 0x40);
    assert_eq!(u128_at(&s, 0), XMM0_V, "XRSTOR restored XMM0");
    assert_eq!(u32_at(&s, 0x10), 0x1fc0, "and MXCSR");
    assert_eq!(u16_at(&s, 0x14), 0x027f, "and FCW");
    assert_eq!(u128_at(&s, 0x20), XMM0_V, "x87-only XRSTOR kept XMM0");
    assert_eq!(u32_at(&s, 0x30), 0x1fc0, "and MXCSR");
    assert_eq!(
        u16_at(&s, 0x34),
        0x037f,
        "x87 initialised (XSTATE_BV[0] = 0)"
    );
    assert_eq!(r.cpu.xmm[0], [0, 0], "SSE initialised (XSTATE_BV[1] = 0)");
    assert_eq!(r.cpu.mxcsr, 0x1f00, "MXCSR loaded since RFBM[1] = 1");
    assert_eq!(r.cpu.fcw, 0x037f);
}

/// FNINIT, FNSTCW, FLDCW, FNSTSW (SDM Vol. 1 8.1.5, 8.1.3; FCW bit 6 reads as 1).
#[test]
fn x87_control_word_and_status_word() {
    const IMG: u64 = KSCRATCH;
    let r = run_all(
        |k| {
            // FSW 0x3800 (TOP=7) through FXRSTOR, then read it both ways.
            k.fxrstor64(ptr(IMG))?;
            k.fnstsw(ax)?;
            k.movzx(ebx, ax)?;
            report(k, rbx)?;
            k.fnstsw(word_ptr(KSCRATCH + 0x200))?;
            k.movzx(ebx, word_ptr(KSCRATCH + 0x200))?;
            report(k, rbx)?;
            k.fnstcw(word_ptr(KSCRATCH + 0x200))?;
            k.movzx(ebx, word_ptr(KSCRATCH + 0x200))?;
            report(k, rbx)?;
            k.fninit()?;
            k.fnstsw(ax)?;
            k.movzx(ebx, ax)?;
            report(k, rbx)?;
            k.fnstcw(word_ptr(KSCRATCH + 0x200))?;
            k.movzx(ebx, word_ptr(KSCRATCH + 0x200))?;
            report(k, rbx)?;
            k.mov(word_ptr(KSCRATCH + 0x200), 0x0c7f)?;
            k.fldcw(word_ptr(KSCRATCH + 0x200))?;
            k.fnstcw(word_ptr(KSCRATCH + 0x202))?;
            k.movzx(ebx, word_ptr(KSCRATCH + 0x202))?;
            report(k, rbx)?;
            k.mov(word_ptr(KSCRATCH + 0x200), 0)?;
            k.fldcw(word_ptr(KSCRATCH + 0x200))?;
            k.fnstcw(word_ptr(KSCRATCH + 0x202))?;
            k.movzx(ebx, word_ptr(KSCRATCH + 0x202))?;
            report(k, rbx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.mem.write(IMG, &0x0273u16.to_le_bytes()).unwrap();
            m.mem.write(IMG + 2, &0x3800u16.to_le_bytes()).unwrap();
            m.mem.write(IMG + 24, &0x1f80u32.to_le_bytes()).unwrap();
        },
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(
        r.reports,
        vec![0x3800, 0x3800, 0x0273, 0, 0x037f, 0x0c7f, 0x0040]
    );
    assert_eq!((r.cpu.fcw, r.cpu.fsw), (0x0040, 0));
}

/// CR0.TS=1: SSE instructions, x87 control instructions and FXSAVE raise #NM; WAIT only with
/// CR0.MP=1; CLTS clears TS (SDM 2.5 CR0.TS, 13.1, Table 2-2; CLTS).
#[test]
fn cr0_ts_raises_nm_until_clts() {
    let r = run_all(
        |k| {
            set_cr(k, cr0, cr0::TS, true)?;
            cases(k, 5, |k, i| match i {
                0 => k.movaps(xmm0, xmm1),
                1 => k.addsd(xmm0, xmm1),
                2 => k.fninit(),
                3 => k.fxsave64(ptr(KSCRATCH)),
                _ => k.wait(),
            })?;
            k.clts()?;
            k.mov(rax, cr0)?;
            report(k, rax)?;
            k.movaps(xmm0, xmm1)?;
            k.fninit()?;
            k.wait()?;
            stop(k)
        },
        no_user,
        |m| m.resume_at(NM, "next"),
    );
    assert_eq!(r.events.len(), 5, "{:#x?}", r.events);
    for (i, e) in r.events.iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (NM, 0), "case {i}");
        assert_eq!(e.rip, r.label(&format!("t{i}")), "case {i}");
    }
    assert_eq!(r.reports.len(), 1);
    assert_eq!(r.reports[0] & cr0::TS, 0);
    assert_eq!(r.cpu.cr0 & cr0::TS, 0);
}

/// MOV to CR4 may not clear PAE in IA-32e mode (SDM MOV CR "Protected Mode Exceptions":
/// "#GP(0) if an attempt is made to clear CR4.PAE while in IA-32e mode").
#[test]
fn clearing_cr4_pae_in_long_mode_is_gp() {
    let r = run_all(
        |k| {
            k.mov(rbx, cr4)?;
            k.mov(rax, rbx)?;
            k.btr(rax, 5)?;
            k.def("bad")?;
            k.mov(cr4, rax)?;
            stop(k)
        },
        no_user,
        no_setup,
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (GP, 0, r.label("bad")));
    assert_ne!(r.cpu.cr4 & cr4::PAE, 0);
}

// ---------------------------------------------------------------------------------------
// Interrupts: the STI and MOV SS shadows, injection, EXT

/// Step `s` one instruction at a time until RIP is `rip` (at most `max` steps).
fn step_to(s: &mut Session, rip: u64, max: u32) {
    for _ in 0..max {
        if s.cpu().rip == rip {
            return;
        }
        s.core.set_icount_limit(s.cpu().icount + 1);
        assert_eq!(s.run(), Exit::Budget, "{:?}", s.tier);
    }
    if s.cpu().rip == rip {
        return;
    }
    panic!(
        "{:?}: never reached {rip:#x}; at {:#x}, events {:#x?}",
        s.tier,
        s.cpu().rip,
        s.bus.clone_events()
    );
}

/// After STI (with IF=0 before), interrupts are not recognised until the instruction after
/// STI has completed; the same holds after MOV SS (SDM 6.8.3, STI "Description").
#[test]
fn sti_and_mov_ss_interrupt_shadows() {
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                k.xor(ebx, ebx)?;
                k.def("sti")?;
                k.sti()?;
                k.def("shadow")?;
                k.inc(ebx)?;
                k.def("open")?;
                k.inc(ebx)?;
                k.mov(ax, KERNEL_SS as u32)?;
                k.def("movss")?;
                k.mov(ss, ax)?;
                k.def("ss_shadow")?;
                k.inc(ebx)?;
                k.def("ss_open")?;
                k.inc(ebx)?;
                report(k, rbx)?;
                stop(k)
            },
            no_user,
        );
        m.action(0x30, 1);
        let labels = m.labels.clone();
        let l = |n: &str| labels[n];
        let mut s = m.start(tier);
        step_to(&mut s, l("sti"), 100);
        assert!(!Engine::interrupts_enabled(s.cpu()), "IF=0 before STI");
        step_to(&mut s, l("shadow"), 1);
        assert_ne!(s.cpu().rflags & IF, 0);
        assert!(
            !Engine::interrupts_enabled(s.cpu()),
            "{tier:?}: blocked right after STI"
        );
        step_to(&mut s, l("open"), 1);
        assert!(
            Engine::interrupts_enabled(s.cpu()),
            "{tier:?}: open one instruction later"
        );
        s.engine.inject_interrupt(&mut s.core, 0x30).unwrap();
        step_to(&mut s, l("movss"), 1000);
        assert!(Engine::interrupts_enabled(s.cpu()));
        step_to(&mut s, l("ss_shadow"), 1);
        assert!(
            !Engine::interrupts_enabled(s.cpu()),
            "{tier:?}: blocked after MOV SS"
        );
        step_to(&mut s, l("ss_open"), 1);
        assert!(Engine::interrupts_enabled(s.cpu()));
        s.engine.inject_interrupt(&mut s.core, 0x30).unwrap();
        s.core.set_icount_limit(u64::MAX);
        let exit = s.run();
        s.finish(exit)
    });
    assert_eq!(r.exit, Exit::BusRequest);
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    for (e, at) in r.events.iter().zip(["open", "ss_open"]) {
        assert_eq!((e.vector, e.error_code), (0x30, 0));
        assert_eq!(e.rip, r.label(at), "interrupted before {at}");
        assert_eq!((e.cs, e.ss), (KERNEL_CS as u64, KERNEL_SS as u64));
        assert_ne!(e.rflags & IF, 0);
        assert_eq!(e.hflags & IF, 0);
    }
    assert_eq!(r.reports, vec![4]);
}

/// An external interrupt ignores the gate's DPL (only INT n checks it), and a fault during
/// its delivery has EXT=1 in the error code (SDM 6.12.1.1, 6.13).
#[test]
fn external_interrupts_at_cpl3() {
    let r = all_tiers(|tier| {
        let mut m = Machine::new(enter_user, |u| {
            let mut l = u.create_label();
            u.set_label(&mut l)?;
            u.inc(rbx)?;
            u.jmp(l)
        });
        m.action(0x31, 1);
        m.gate(
            0x32,
            Gate {
                present: false,
                ..Gate::default()
            },
        );
        let mut s = m.start(tier);
        for (limit, v) in [(300u64, 0x31u8), (600, 0x32)] {
            s.core.set_icount_limit(limit);
            assert_eq!(s.run(), Exit::Budget);
            assert_eq!(s.cpu().seg[1].selector, USER_CS, "{tier:?}");
            assert!(Engine::interrupts_enabled(s.cpu()));
            s.engine.inject_interrupt(&mut s.core, v).unwrap();
        }
        s.core.set_icount_limit(u64::MAX);
        let exit = s.run();
        s.finish(exit)
    });
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!(e.vector, 0x31);
    assert_eq!(
        (e.cs, e.ss, e.frame),
        (USER_CS as u64, USER_SS as u64, RSP0_TOP - 40)
    );
    let e = r.events[1];
    assert_eq!((e.vector, e.error_code), (NP, 0x32 * 8 + 2 + 1));
    assert_eq!(e.cs, USER_CS as u64);
}

// ---------------------------------------------------------------------------------------
// Port IO

/// IN/OUT reach the bus with the port, size and value; IN AL/AX keep the rest of RAX, IN EAX
/// zero-extends (SDM IN, OUT; Vol. 1 3.4.1.1).
#[test]
fn in_and_out_reach_the_bus() {
    let r = run_all(
        |k| {
            k.mov(rax, -1i64)?;
            k.in_(al, 0x60)?;
            k.mov(r8, rax)?;
            k.mov(dx, 0x1f0)?;
            k.in_(ax, dx)?;
            k.mov(r9, rax)?;
            k.in_(eax, dx)?;
            k.mov(r10, rax)?;
            k.mov(al, 0x11)?;
            k.out(0x80, al)?;
            k.mov(ax, 0x2233)?;
            k.out(dx, ax)?;
            k.mov(eax, 0x4455_6677)?;
            k.out(dx, eax)?;
            stop(k)
        },
        no_user,
        no_setup,
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(
        r.io,
        vec![
            Io::In {
                port: 0x60,
                size: 1,
                value: 0x60
            },
            Io::In {
                port: 0x1f0,
                size: 2,
                value: 0x56f1
            },
            Io::In {
                port: 0x1f0,
                size: 4,
                value: 0x1234_56f2
            },
            Io::Out {
                port: 0x80,
                size: 1,
                value: 0x11
            },
            Io::Out {
                port: 0x1f0,
                size: 2,
                value: 0x2233
            },
            Io::Out {
                port: 0x1f0,
                size: 4,
                value: 0x4455_6677
            },
        ]
    );
    assert_eq!(r.cpu.gpr[R8], 0xffff_ffff_ffff_ff60);
    assert_eq!(r.cpu.gpr[R9], 0xffff_ffff_ffff_56f1);
    assert_eq!(r.cpu.gpr[R10], 0x1234_56f2);
}

/// REP INSB / REP OUTSB: one port access per iteration, RDI/RSI stepping by the size (down
/// with DF=1), RCX counting to zero; a #PF in the middle leaves the completed iterations done
/// and RCX/RDI pointing at the faulting one (SDM INS, OUTS, REP).
#[test]
fn rep_insb_and_outsb() {
    let r = run_all(
        |k| {
            k.mov(edi, KSCRATCH as u32)?;
            k.mov(ecx, 4)?;
            k.mov(dx, 0x70)?;
            k.rep().insb()?;
            report(k, rdi)?;
            report(k, rcx)?;
            k.mov(esi, (KSCRATCH + 0x100) as u32)?;
            k.mov(ecx, 3)?;
            k.mov(dx, 0x71)?;
            k.rep().outsb()?;
            report(k, rsi)?;
            report(k, rcx)?;
            k.std()?;
            k.mov(esi, (KSCRATCH + 0x102) as u32)?;
            k.outsw()?;
            k.cld()?;
            report(k, rsi)?;
            cases(k, 1, |k, _| {
                k.mov(edi, (TEST_AREA + 0xffe) as u32)?;
                k.mov(ecx, 4)?;
                k.mov(dx, 0x72)?;
                k.def("ins")?;
                k.rep().insb()
            })?;
            report(k, rdi)?;
            report(k, rcx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.mem.write(KSCRATCH + 0x100, b"abc").unwrap();
            m.pt.map(
                &mut m.mem,
                TEST_AREA,
                TEST_AREA,
                PageSize::K4,
                pte::RW | pte::NX,
            );
            m.resume_at(PF, "next");
        },
    );
    let e = r.event();
    assert_eq!(
        (e.vector, e.error_code, e.cr2, e.rip),
        (PF, PF_W, TEST_AREA + 0x1000, r.label("ins"))
    );
    let ins = |port: u16, n: u32| Io::In {
        port,
        size: 1,
        value: (0x1234_5600 | port as u32).wrapping_add(n) & 0xff,
    };
    let out = |port: u16, size: u8, value: u32| Io::Out { port, size, value };
    assert_eq!(
        r.io,
        vec![
            ins(0x70, 0),
            ins(0x70, 1),
            ins(0x70, 2),
            ins(0x70, 3),
            out(0x71, 1, b'a' as u32),
            out(0x71, 1, b'b' as u32),
            out(0x71, 1, b'c' as u32),
            out(0x71, 2, u16::from_le_bytes([b'c', 0]) as u32),
            ins(0x72, 4),
            ins(0x72, 5),
        ]
    );
    assert_eq!(r.bytes(KSCRATCH, 4), vec![0x70, 0x71, 0x72, 0x73]);
    assert_eq!(r.bytes(TEST_AREA + 0xffe, 2), vec![0x76, 0x77]);
    assert_eq!(
        r.reports,
        vec![
            KSCRATCH + 4,
            0,
            KSCRATCH + 0x103,
            0,
            KSCRATCH + 0x100,
            TEST_AREA + 0x1000,
            2
        ]
    );
}

// ---------------------------------------------------------------------------------------
// TLB invalidation. The architecture allows a stale translation to be used until it is
// invalidated but does not require it (SDM 4.10.4), so these tests check only the required
// direction: after INVLPG, a CR3 load or a CR4.PGE toggle the new entry must be used.

const TLB_X: u64 = TEST_AREA + 0x1_0000;
const PHYS_A: u64 = TEST_AREA + 0x2_0000;
const PHYS_B: u64 = TEST_AREA + 0x3_0000;

/// Read `[rsi]` 100 times (so every tier has cached the translation, in compiled code too)
/// and report the last value (clobbers RAX, RBX, RCX).
fn read_hot(k: &mut Asm) -> AsmResult {
    let mut l = k.create_label();
    k.mov(ecx, 100)?;
    k.set_label(&mut l)?;
    k.mov(rbx, qword_ptr(rsi))?;
    k.dec(ecx)?;
    k.jnz(l)?;
    report(k, rbx)
}

/// Point the PTE whose address is parameter 0 at the entry in parameter `p` (clobbers RAX,
/// RDI).
fn set_pte(k: &mut Asm, p: usize) -> AsmResult {
    k.mov(rdi, param(0))?;
    k.mov(rax, param(p))?;
    k.mov(qword_ptr(rdi), rax)
}

fn tlb_setup(m: &mut Machine, flags: u64) {
    m.pt.map(&mut m.mem, TLB_X, PHYS_A, PageSize::K4, flags);
    let e = m.pt.entry(&m.mem, TLB_X, 0);
    m.param(0, e);
    m.param(1, PHYS_A | pte::P | flags);
    m.param(2, PHYS_B | pte::P | flags);
    m.mem.write_u64(PHYS_A, 0xaaaa).unwrap();
    m.mem.write_u64(PHYS_B, 0xbbbb).unwrap();
}

#[test]
fn tlb_invlpg_and_cr3_load_use_the_new_mapping() {
    let r = run_all(
        |k| {
            k.mov(rsi, TLB_X)?;
            read_hot(k)?;
            set_pte(k, 2)?;
            k.invlpg(ptr(rsi))?;
            read_hot(k)?;
            set_pte(k, 1)?;
            k.mov(rax, cr3)?;
            k.mov(cr3, rax)?;
            read_hot(k)?;
            stop(k)
        },
        no_user,
        |m| tlb_setup(m, pte::RW | pte::NX),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![0xaaaa, 0xbbbb, 0xaaaa]);
}

/// Global pages survive a CR3 load (allowed, not tested), but INVLPG and a change of CR4.PGE
/// invalidate them (SDM 4.10.4.1).
#[test]
fn tlb_global_page_invalidation() {
    let r = run_all(
        |k| {
            k.mov(rsi, TLB_X)?;
            read_hot(k)?;
            set_pte(k, 2)?;
            k.invlpg(ptr(rsi))?;
            read_hot(k)?;
            set_pte(k, 1)?;
            set_cr(k, cr4, cr4::PGE, false)?;
            set_cr(k, cr4, cr4::PGE, true)?;
            read_hot(k)?;
            stop(k)
        },
        no_user,
        |m| tlb_setup(m, pte::RW | pte::NX | pte::G),
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![0xaaaa, 0xbbbb, 0xaaaa]);
}

/// No TLB entry is created for a not-present translation, so making a page present needs no
/// invalidation (SDM 4.10.2.3: "processors do not cache ... not-present translations");
/// after making a read-only page writable and INVLPG, writes succeed; a write to a page whose
/// D bit is clear sets it even after reads cached the translation (SDM 4.8).
#[test]
fn tlb_not_present_then_present_and_write_upgrade() {
    let r = run_all(
        |k| {
            k.mov(rsi, TLB_X)?;
            cases(k, 2, |k, i| match i {
                0 => k.mov(rbx, qword_ptr(rsi)),
                _ => {
                    set_pte(k, 1)?;
                    k.mov(rbx, qword_ptr(rsi))?;
                    report(k, rbx)?;
                    k.def("w")?;
                    k.mov(qword_ptr(rsi), rbx)
                }
            })?;
            set_pte(k, 2)?;
            k.invlpg(ptr(rsi))?;
            read_hot(k)?;
            k.mov(qword_ptr(rsi + 8), rbx)?;
            stop(k)
        },
        no_user,
        |m| {
            tlb_setup(m, pte::NX);
            // Start not present; parameter 1 maps PHYS_A read-only, 2 PHYS_B writable.
            let e = m.param_value(0);
            m.mem.write_u64(e, 0).unwrap();
            m.param(2, PHYS_B | pte::P | pte::RW | pte::NX);
            m.resume_at(PF, "next");
        },
    );
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.cr2), (PF, 0, TLB_X));
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.rip),
        (PF, PF_P | PF_W, r.label("w"))
    );
    assert_eq!(r.reports, vec![0xaaaa, 0xbbbb]);
    assert_eq!(r.u64_at(PHYS_B + 8), 0xbbbb);
    let pte = r.u64_at(r.u64_at(PARAMS));
    assert_eq!(pte & (pte::A | pte::D), pte::A | pte::D);
}

/// TLB_X maps PHYS_A, which holds `add ebx, 1; ret`; PHYS_B holds `add ebx, 0x100; ret`.
fn code_pages_setup(m: &mut Machine) {
    tlb_setup(m, 0);
    m.mem
        .write(PHYS_A, &[0x81, 0xc3, 1, 0, 0, 0, 0xc3])
        .unwrap();
    m.mem
        .write(PHYS_B, &[0x81, 0xc3, 0, 1, 0, 0, 0xc3])
        .unwrap();
}

/// At `hot`: a function that clears EBX, calls the function at RSI and the one at `func` (the
/// same one, indirectly and directly) 100 times each, often enough for every tier to compile
/// and link the loop, and reports EBX.
fn hot_calls(k: &mut Asm, hot: &mut CodeLabel, func: u64) -> AsmResult {
    let mut l = k.create_label();
    k.set_label(hot)?;
    k.xor(ebx, ebx)?;
    k.mov(r12d, 100)?;
    k.set_label(&mut l)?;
    k.call(rsi)?;
    k.call(func)?;
    k.dec(r12d)?;
    k.jnz(l)?;
    report(k, rbx)?;
    k.ret()
}

/// Code: after remapping the page of a function that has run often enough to be compiled
/// (called both indirectly and directly from one loop, so that the compiled loop may be
/// linked to it), INVLPG or a CR3 load makes the next call run the new page's code.
#[test]

fn tlb_remapped_code_page() {
    let r = run_all(
        |k| {
            let mut hot = k.create_label();
            k.mov(rsi, TLB_X)?;
            k.call(hot)?;
            set_pte(k, 2)?;
            k.invlpg(ptr(rsi))?;
            k.call(hot)?;
            set_pte(k, 1)?;
            k.mov(rax, cr3)?;
            k.mov(cr3, rax)?;
            k.call(hot)?;
            stop(k)?;
            // The same loop every time.
            hot_calls(k, &mut hot, TLB_X)
        },
        no_user,
        code_pages_setup,
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![200, 200 << 8, 200]);
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

/// PCIDs (CPUID.01H:ECX[17], CR4.PCIDE): a CR3 load with bit 63 clear invalidates that
/// PCID's translations, and translations made under one PCID are never used under another
/// (SDM 4.10.1, 4.10.4.1). The code page of a hot function is remapped after PCID 1 ran it;
/// PCID 2, never used before, must run the new page's code even after a non-flushing load,
/// again after PCID 1 was current (without running it), and so must PCID 1 after a flushing
/// load. (Whether PCID 1 after a non-flushing load still runs the old code is up to the
/// implementation.)
#[test]
fn pcid_tagged_translations() {
    let r = run_all(
        |k| {
            let mut hot = k.create_label();
            k.mov(rsi, TLB_X)?;
            set_cr(k, cr4, cr4::PCIDE, true)?;
            load_cr3_pcid(k, 1, false)?;
            k.call(hot)?;
            set_pte(k, 2)?;
            load_cr3_pcid(k, 2, true)?;
            k.call(hot)?;
            load_cr3_pcid(k, 1, true)?;
            load_cr3_pcid(k, 2, true)?;
            k.call(hot)?;
            load_cr3_pcid(k, 1, false)?;
            k.call(hot)?;
            k.mov(rax, cr3)?;
            k.mov(r8, rax)?;
            report(k, r8)?;
            stop(k)?;
            hot_calls(k, &mut hot, TLB_X)
        },
        no_user,
        code_pages_setup,
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports[..4], [200, 200 << 8, 200 << 8, 200 << 8]);
    // Bit 63 is not stored; the PCID is CR3[11:0].
    assert_eq!(r.reports[4] & 0xfff, 1);
    assert_eq!(r.reports[4] >> 63, 0);
}

/// A function whose first instruction straddles two pages (`add ebx, imm32` with its
/// immediate on the second page): remapping only the second page (INVLPG of it, then a CR3
/// load) makes the next calls use the new page's bytes.
#[test]
fn tlb_remapped_second_page_of_a_straddling_instruction() {
    const PHYS_C: u64 = TEST_AREA + 0x4_0000;
    let func = TLB_X - 2;
    let r = run_all(
        |k| {
            let mut hot = k.create_label();
            k.mov(rsi, func)?;
            k.call(hot)?;
            set_pte(k, 2)?;
            k.mov(rdi, TLB_X)?;
            k.invlpg(ptr(rdi))?;
            k.call(hot)?;
            set_pte(k, 1)?;
            k.mov(rax, cr3)?;
            k.mov(cr3, rax)?;
            k.call(hot)?;
            stop(k)?;
            hot_calls(k, &mut hot, func)
        },
        no_user,
        |m| {
            tlb_setup(m, 0);
            m.pt.map(&mut m.mem, TLB_X - 0x1000, PHYS_C, PageSize::K4, 0);
            // add ebx, imm32 from PHYS_C + 0xffe into the next page; then ret.
            m.mem.write(PHYS_C + 0xffe, &[0x81, 0xc3]).unwrap();
            m.mem.write(PHYS_A, &[1, 0, 0, 0, 0xc3]).unwrap();
            m.mem.write(PHYS_B, &[0, 1, 0, 0, 0xc3]).unwrap();
        },
    );
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, vec![200, 200 << 8, 200]);
}

// ---------------------------------------------------------------------------------------
// More delivery and IRETQ rules

/// A fault while pushing the frame (TSS.RSP0 points at an unmapped page) during delivery of
/// a benign exception is delivered as #PF (SDM Table 6-5: benign then #PF is handled
/// serially), whose own delivery faults again: #PF then #PF is a double fault. CR2 holds the
/// address of the first push, SS at RSP0-8 (SDM 6.14.2: SS is pushed first).
#[test]
fn page_fault_on_the_new_stack_becomes_double_fault() {
    const BAD_STACK_TOP: u64 = TEST_AREA + 0x2000;
    let r = run_all(
        enter_user,
        |u| {
            u.def("ud")?;
            u.ud2()
        },
        |m| {
            m.mem.write_u64(TSS + 4, BAD_STACK_TOP).unwrap();
            m.gate(
                DF,
                Gate {
                    ist: 1,
                    ..Gate::default()
                },
            );
        },
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code), (DF, 0));
    assert_eq!(e.cr2, BAD_STACK_TOP - 8);
    assert_eq!(
        (e.rip, e.cs, e.rsp),
        (r.label("ud"), USER_CS as u64, USTACK_TOP)
    );
    assert_eq!(e.frame, IST1_TOP - 40);
}

/// IRETQ: to an outer level it nulls data segment registers whose DPL is below the new CPL
/// (SDM IRET "RETURN-TO-OUTER-PRIVILEGE-LEVEL"); at CPL3 with IOPL 0 it cannot change IF or
/// IOPL (silently); returning to an inner level (RPL < CPL) is #GP(selector); a
/// non-canonical RIP is #GP(0).
#[test]
fn iretq_rules() {
    let r = run_all(
        |k| {
            k.mov(ax, KERNEL_SS as u32)?;
            k.mov(ds, ax)?;
            k.mov(es, ax)?;
            enter_user(k)
        },
        |u| {
            u.mov(eax, ds)?;
            u.mov(r8, rax)?;
            u.mov(eax, es)?;
            u.mov(r9, rax)?;
            // Same-level IRETQ asking for IF=0 and IOPL=3.
            let mut back = u.create_label();
            u.mov(rax, rsp)?;
            u.push(USER_SS as i32)?;
            u.push(rax)?;
            u.push(0x3002)?;
            u.push(USER_CS as i32)?;
            u.lea(rax, ptr(back))?;
            u.push(rax)?;
            u.iretq()?;
            u.set_label(&mut back)?;
            u.pushfq()?;
            u.pop(r10)?;
            cases(u, 2, |u, i| {
                u.mov(rax, rsp)?;
                u.push(USER_SS as i32)?;
                u.push(rax)?;
                u.push(0x202)?;
                if i == 0 {
                    u.push(KERNEL_CS as i32)?;
                    u.lea(rax, ptr(back))?;
                } else {
                    u.push(USER_CS as i32)?;
                    u.mov(rax, 0x8000_0000_0000u64)?;
                }
                u.push(rax)?;
                u.def(&format!("iret{i}"))?;
                u.iretq()
            })?;
            u.ud2()
        },
        |m| m.resume_at(GP, "next"),
    );
    assert_eq!(r.cpu.gpr[R8], 0, "DS nulled");
    assert_eq!(r.cpu.gpr[R9], 0, "ES nulled");
    assert_eq!(r.cpu.gpr[R10] & (IF | 0x3000), IF, "IF and IOPL unchanged");
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code), (GP, KERNEL_CS as u64));
    assert_eq!(e.rip, r.label("iret0"));
    let e = r.events[1];
    assert_eq!((e.vector, e.error_code), (GP, 0));
    assert_eq!(e.rip, r.label("iret1"));
    assert_eq!(r.events[2].vector, UD);
}

/// Paging permissions combine over all levels: a U/S=0 or R/W=0 in a directory entry
/// restricts the pages below it (SDM 4.6.1).
#[test]
fn upper_level_permissions_apply() {
    const NOUSER: u64 = 0x6000_0000;
    const RO: u64 = 0x6020_0000;
    let r = run_all(
        enter_user,
        |u| {
            cases(u, 3, |u, i| match i {
                0 => u.mov(rax, qword_ptr(NOUSER)),
                1 => {
                    u.mov(rbx, qword_ptr(RO))?;
                    u.def("ro_write")?;
                    u.mov(qword_ptr(RO), rbx)
                }
                _ => u.nop(),
            })?;
            u.ud2()
        },
        |m| {
            let flags = pte::US | pte::RW | pte::NX;
            m.pt.map(&mut m.mem, NOUSER, TEST_AREA, PageSize::K4, flags);
            m.pt.map(&mut m.mem, RO, TEST_AREA, PageSize::K4, flags);
            let pde = m.pt.entry(&m.mem, NOUSER, 1);
            let v = m.mem.read_u64(pde).unwrap();
            m.mem.write_u64(pde, v & !pte::US).unwrap();
            let pde = m.pt.entry(&m.mem, RO, 1);
            let v = m.mem.read_u64(pde).unwrap();
            m.mem.write_u64(pde, v & !pte::RW).unwrap();
            m.mem.write_u64(TEST_AREA, 0x1234).unwrap();
            m.resume_at(PF, "next");
        },
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code, e.cr2), (PF, PF_P | PF_U, NOUSER));
    let e = r.events[1];
    assert_eq!(
        (e.vector, e.error_code, e.cr2, e.rip),
        (PF, PF_P | PF_W | PF_U, RO, r.label("ro_write"))
    );
    assert_eq!(r.events[2].vector, UD);
    assert_eq!(r.cpu.gpr[RBX], 0x1234);
}

/// With CR0.AM=1 and RFLAGS.AC=1, a misaligned data access at CPL3 is #AC(0), a fault (RF=1
/// pushed) (SDM 6.15 "Interrupt 17", Table 6-7): loads, stores and the read of PUSH m64.
/// Aligned accesses, CPL0, 16-byte SSE accesses (Intel: only references "of 8 bytes or less"
/// are checked) and AC=0 are not checked.
#[test]
fn alignment_check_at_cpl3() {
    let r = run_all(
        |k| {
            set_cr(k, cr0, 1 << 18, true)?;
            k.stac()?;
            k.mov(eax, dword_ptr(KSCRATCH + 1))?;
            k.clac()?;
            iret_to_user(k, UCODE, USTACK_TOP, 0x4_0202)
        },
        |u| {
            u.mov(eax, dword_ptr(UDATA + 4))?;
            cases(u, 3, |u, i| match i {
                0 => u.mov(eax, dword_ptr(UDATA + 1)),
                1 => u.mov(word_ptr(UDATA + 3), ax),
                _ => u.push(qword_ptr(UDATA + 4)),
            })?;
            u.movups(xmm0, xmmword_ptr(UDATA + 1))?;
            u.mov(al, byte_ptr(UDATA + 1))?;
            u.pushfq()?;
            u.btr(qword_ptr(rsp), 18)?;
            u.popfq()?;
            u.mov(rax, qword_ptr(UDATA + 3))?;
            u.def("end")?;
            u.ud2()
        },
        |m| m.resume_at(17, "next"),
    );
    assert_eq!(r.events.len(), 4, "{:#x?}", r.events);
    for (i, e) in r.events[..3].iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (17, 0), "case {i}");
        assert_eq!(e.rip, r.label(&format!("t{i}")), "case {i}");
        assert_eq!(e.rflags & (RF | (1 << 18)), RF | (1 << 18), "case {i}");
    }
    assert_eq!((r.events[3].vector, r.events[3].rip), (UD, r.label("end")));
}

/// A gate whose handler address is non-canonical: #GP during delivery, reported at the
/// interrupted instruction (SDM INT n "64-Bit Mode Exceptions": "#GP(0) If the instruction
/// pointer in the 64-bit interrupt gate or 64-bit trap gate is non-canonical"; newer SDM
/// pseudo-code raises it with the EXT bit, which is set here since an exception was being
/// delivered).
#[test]
fn gate_with_non_canonical_target() {
    let r = run_all(
        |k| {
            k.def("ud")?;
            k.ud2()
        },
        no_user,
        |m| {
            m.mem.write_u64(IDT + 16 * UD as u64 + 8, 0x8000).unwrap();
        },
    );
    let e = r.event();
    assert_eq!(e.vector, GP);
    assert_eq!(e.error_code & !1, 0, "no selector in the error code");
    assert_eq!(e.rip, r.label("ud"));
}

// ---------------------------------------------------------------------------------------
// Debug exceptions: single-step, breakpoints, RF

/// Point IDT gate `v` at the kernel label `name` (64-bit interrupt gate, DPL0, no IST).
fn gate_to(m: &mut Machine, v: u8, name: &str) {
    let target = m.label(name);
    let lo = (target & 0xffff)
        | ((KERNEL_CS as u64) << 16)
        | (0xeu64 << 40)
        | (1 << 47)
        | (((target >> 16) & 0xffff) << 48);
    m.mem.write_u64(IDT + 16 * v as u64, lo).unwrap();
    m.mem
        .write_u64(IDT + 16 * v as u64 + 8, target >> 32)
        .unwrap();
}

/// A #DB handler at label `dbh` (install it with `gate_to(m, DB, "dbh")`): reports the pushed
/// RIP, the pushed RFLAGS and DR6, clears DR6, sets RF in the frame (as debuggers do, so that
/// an instruction breakpoint does not fire again on return) and returns.
fn db_handler(k: &mut Asm) -> AsmResult {
    k.def("dbh")?;
    k.push(rax)?;
    k.mov(rax, qword_ptr(rsp + 8))?;
    report(k, rax)?;
    k.mov(rax, qword_ptr(rsp + 24))?;
    report(k, rax)?;
    k.mov(rax, dr6)?;
    report(k, rax)?;
    k.xor(eax, eax)?;
    k.mov(dr6, rax)?;
    k.bts(qword_ptr(rsp + 24), 16)?;
    k.pop(rax)?;
    k.iretq()
}

/// The (RIP, RFLAGS, DR6) triples `db_handler` reported, from `reports[from..]`.
fn db_reports(r: &Outcome, from: usize, n: usize) -> Vec<(u64, u64, u64)> {
    assert!(
        r.reports.len() >= from + 3 * n,
        "expected {n} #DB reports: {:#x?}",
        r.reports
    );
    r.reports[from..from + 3 * n]
        .chunks(3)
        .map(|c| (c[0], c[1], c[2]))
        .collect()
}

/// RFLAGS.TF: a #DB trap after every instruction that starts with TF=1, RIP past it, DR6.BS
/// (SDM 17.3.1.4). The IRETQ that loads TF is not trapped itself ("the processor will not
/// generate this exception after the instruction that sets the TF flag"); the handler runs
/// with TF clear and its IRETQ resumes stepping; the pushed RF is 0 (a trap, 17.3.1.1). A
/// faulting instruction gets its fault (RF=1 pushed) and no trap. PUSHFQ shows TF.
#[test]
fn single_step_traps_after_each_user_instruction() {
    let r = run_all(
        |k| iret_to_user(k, UCODE, USTACK_TOP, 0x302),
        |u| {
            u.mov(eax, 1)?;
            u.def("u1")?;
            u.add(eax, 2)?;
            u.def("u2")?;
            u.pushfq()?;
            u.def("u3")?;
            u.pop(rbx)?;
            u.def("u4")?;
            u.ud2()
        },
        |m| m.action(DB, 1),
    );
    assert_eq!(r.events.len(), 5, "{:#x?}", r.events);
    for (e, (l, stack)) in r.events.iter().zip([
        ("u1", USTACK_TOP),
        ("u2", USTACK_TOP),
        ("u3", USTACK_TOP - 8),
        ("u4", USTACK_TOP),
    ]) {
        assert_eq!((e.vector, e.error_code, e.rip), (DB, 0, r.label(l)), "{l}");
        assert_eq!((e.cs, e.ss, e.rsp), (USER_CS as u64, USER_SS as u64, stack));
        assert_eq!(e.rflags & !ARITH, 0x302, "{l}: TF pushed, RF=0 for a trap");
        assert_eq!(
            e.hflags & (TF | IF),
            0,
            "the handler runs with TF and IF clear"
        );
    }
    let e = r.events[4];
    assert_eq!((e.vector, e.rip), (UD, r.label("u4")));
    assert_eq!(e.rflags & !ARITH, 0x302 | RF);
    assert_eq!(r.cpu.gpr[RBX] & (TF | RF | IF), TF | IF);
}

/// TF set by POPF takes effect after the next instruction; POPF clearing TF is still trapped
/// (TF was set when it started); INT3 delivers #BP without a single-step trap (delivery clears
/// TF; the handler's IRETQ restores it); a trap after MOV SS waits for the next instruction,
/// which then traps once (SDM 17.3.1.4, 6.8.3). DR6.BS stays set; B0-B3 are clear.
#[test]
fn single_step_popf_int3_and_mov_ss() {
    let r = run_all(
        |k| {
            k.xor(ebx, ebx)?;
            k.pushfq()?;
            k.bts(qword_ptr(rsp), 8)?;
            k.popfq()?;
            k.inc(ebx)?;
            k.def("s1")?;
            k.int3()?;
            k.def("s2")?;
            k.mov(ax, KERNEL_SS as u32)?;
            k.def("s3")?;
            k.mov(ss, ax)?;
            k.inc(ebx)?;
            k.def("s5")?;
            k.pushfq()?;
            k.def("s6")?;
            k.btr(qword_ptr(rsp), 8)?;
            k.def("s7")?;
            k.popfq()?;
            k.def("s8")?;
            k.inc(ebx)?;
            k.mov(rax, dr6)?;
            report(k, rax)?;
            report(k, rbx)?;
            stop(k)
        },
        no_user,
        |m| {
            m.action(DB, 1);
            m.action(BP, 1);
        },
    );
    let got: Vec<(u8, u64)> = r.events.iter().map(|e| (e.vector, e.rip)).collect();
    let want: Vec<(u8, u64)> = [
        (DB, "s1"),
        (BP, "s2"),
        (DB, "s3"),
        (DB, "s5"),
        (DB, "s6"),
        (DB, "s7"),
        (DB, "s8"),
    ]
    .iter()
    .map(|&(v, l)| (v, r.label(l)))
    .collect();
    assert_eq!(got, want);
    let ev = r.events[1];
    assert_eq!(ev.rflags & (TF | RF), TF, "#BP pushes TF, RF=0");
    assert_eq!(ev.hflags & TF, 0);
    assert_eq!(r.reports, vec![0xffff_4ff0, 3]);
}

/// SYSCALL and SYSRET single-step by TF as they leave it: SYSRET loading TF=1 from R11 traps
/// right after itself (at the user RIP); SYSCALL with TF masked by SFMASK is not trapped, and
/// without it traps at the entry point at CPL0 (kvm-unit-tests x86/syscall.c "syscall TF
/// handling"; Xen XSA-204).
fn syscall_sysret_single_step(sfmask: u64) -> Outcome {
    run_all(
        |k| {
            let mut entry = k.create_label();
            k.mov(rax, STAR)?;
            wrmsr_rax(k, msr::STAR)?;
            k.lea(rax, ptr(entry))?;
            wrmsr_rax(k, msr::LSTAR)?;
            k.mov(eax, sfmask as u32)?;
            wrmsr_rax(k, msr::SFMASK)?;
            k.mov(rcx, UCODE)?;
            k.mov(r11, 0x302u64)?;
            k.mov(rsp, USTACK_TOP)?;
            k.sysretq()?;
            k.set_label(&mut entry)?;
            k.name("entry", entry);
            k.ud2()
        },
        |u| {
            u.nop()?;
            u.def("u1")?;
            u.syscall()
        },
        |m| m.action(DB, 1),
    )
}

#[test]
fn syscall_and_sysret_single_step_by_tf_at_their_end() {
    let r = syscall_sysret_single_step(SFMASK);
    let got: Vec<(u8, u64, u64)> = r.events.iter().map(|e| (e.vector, e.rip, e.cs)).collect();
    let user = USER_CS as u64;
    let kernel = KERNEL_CS as u64;
    let entry = r.label("entry");
    assert_eq!(
        got,
        vec![
            (DB, UCODE, user),
            (DB, r.label("u1"), user),
            (UD, entry, kernel)
        ]
    );
    assert_eq!(r.cpu.gpr[11], 0x302, "R11 has TF, not RF");

    let r = syscall_sysret_single_step(0x200);
    let got: Vec<(u8, u64, u64)> = r.events.iter().map(|e| (e.vector, e.rip, e.cs)).collect();
    assert_eq!(
        got,
        vec![
            (DB, UCODE, user),
            (DB, r.label("u1"), user),
            (DB, entry, kernel),
            (UD, entry, kernel)
        ]
    );
    assert_eq!(r.events[2].rflags & TF, TF);
}

/// A budget stop right after a single-stepped instruction: the #DB trap is delivered before
/// the engine returns, so an external interrupt the driver injects next comes after it
/// (SDM 6.9: traps on the previous instruction before external interrupts), and the count is
/// exact.
#[test]
fn single_step_trap_is_delivered_before_the_budget_stop() {
    all_tiers(|tier| {
        let mut m = Machine::new(
            |k| iret_to_user(k, UCODE, USTACK_TOP, 0x302),
            |u| {
                u.inc(rbx)?;
                u.ud2()
            },
        );
        m.action(DB, 1);
        let stub = m.label("stub1");
        let mut s = m.start(tier);
        step_to(&mut s, UCODE, 100);
        let n = s.cpu().icount;
        s.core.set_icount_limit(n + 1);
        assert_eq!(s.run(), Exit::Budget);
        assert_eq!((s.cpu().icount, s.cpu().rip), (n + 1, stub), "{tier:?}");
        assert_eq!(s.cpu().seg[1].selector, KERNEL_CS);
        assert!(!Engine::interrupts_enabled(s.cpu()));
        s.core.set_icount_limit(u64::MAX);
        let exit = s.run();
        s.finish(exit)
    });
}

/// DR7 breakpoint 0 on execution (R/W=00, LEN=00): a #DB fault before the instruction, RIP
/// at it, DR6.B0, RF pushed as it was (0) (SDM 17.3.1.1, 17.2.4). The handler sets RF in the
/// frame, so the IRETQ back executes the instruction; RF then clears, and the next time round
/// the breakpoint fires again.
#[test]
fn instruction_breakpoint_fault_and_resume_flag() {
    let r = run_all(
        |k| {
            let mut brk = k.create_label();
            k.lea(rax, ptr(brk))?;
            k.mov(dr0, rax)?;
            k.mov(eax, 1)?;
            k.mov(dr7, rax)?;
            k.xor(ebx, ebx)?;
            k.mov(ecx, 2)?;
            k.set_label(&mut brk)?;
            k.name("bp", brk);
            k.inc(ebx)?;
            k.dec(ecx)?;
            k.jnz(brk)?;
            k.xor(eax, eax)?;
            k.mov(dr7, rax)?;
            k.mov(rax, dr7)?;
            report(k, rax)?;
            report(k, rbx)?;
            stop(k)?;
            db_handler(k)
        },
        no_user,
        |m| gate_to(m, DB, "dbh"),
    );
    let at = r.label("bp");
    for (rip, flags, status) in db_reports(&r, 0, 2) {
        assert_eq!(rip, at);
        assert_eq!(
            flags & (RF | TF),
            0,
            "an instruction breakpoint pushes RF=0"
        );
        assert_eq!(status, 0xffff_0ff1);
    }
    assert_eq!(r.reports[6..], [0x400, 2]);
}

/// Data breakpoints (R/W=01 write, 11 read/write; LEN 8 and 4, the address aligned down to
/// LEN): a #DB trap after the accessing instruction with DR6.Bn of every breakpoint it hit
/// (SDM 17.2.4, 17.2.5, 17.3.1.2); reads do not hit a write breakpoint, adjacent bytes do
/// not hit; a read-modify-write traps once; MOVS reading one and writing the other sets both.
#[test]
fn data_breakpoints_trap_after_the_access() {
    const X: u64 = KSCRATCH + 0x100;
    const Y: u64 = KSCRATCH + 0x200;
    // L1 | L2, R/W1=01 LEN1=10 (8 bytes), R/W2=11 LEN2=11 (4 bytes).
    const DR7: u64 = (1 << 2) | (1 << 4) | (1 << 20) | (2 << 22) | (3 << 24) | (3 << 26);
    let r = run_all(
        |k| {
            k.mov(rax, X + 3)?;
            k.mov(dr1, rax)?;
            k.mov(rax, Y)?;
            k.mov(dr2, rax)?;
            k.mov(rax, DR7)?;
            k.mov(dr7, rax)?;
            k.mov(rax, qword_ptr(X))?;
            k.mov(byte_ptr(X + 7), al)?;
            k.def("w2")?;
            k.mov(eax, dword_ptr(Y + 2))?;
            k.def("w3")?;
            k.mov(dword_ptr(Y - 4), eax)?;
            k.mov(dword_ptr(Y + 4), eax)?;
            k.mov(qword_ptr(X + 8), rax)?;
            k.add(dword_ptr(Y), eax)?;
            k.def("w6")?;
            k.mov(esi, Y as u32)?;
            k.mov(edi, X as u32)?;
            k.movsq()?;
            k.def("w7")?;
            k.xor(eax, eax)?;
            k.mov(dr7, rax)?;
            stop(k)?;
            db_handler(k)
        },
        no_user,
        |m| gate_to(m, DB, "dbh"),
    );
    let got: Vec<(u64, u64)> = db_reports(&r, 0, 4)
        .iter()
        .map(|&(rip, _, status)| (rip, status))
        .collect();
    assert_eq!(
        got,
        vec![
            (r.label("w2"), 0xffff_0ff2),
            (r.label("w3"), 0xffff_0ff4),
            (r.label("w6"), 0xffff_0ff4),
            (r.label("w7"), 0xffff_0ff6),
        ]
    );
    assert_eq!(r.reports.len(), 12);
}

/// A data breakpoint hit by MOV SS is held until the next instruction completes (6.8.3): after
/// an ordinary instruction, the trap follows it; after INT3, #BP is delivered first and the
/// #DB arrives at the #BP handler's first instruction (the behaviour behind CVE-2018-8897); a
/// fault (#UD) likewise.
#[test]
fn data_breakpoint_on_mov_ss_is_delayed() {
    const W: u64 = KSCRATCH + 0x300;
    // L0, R/W0=11, LEN0=01 (2 bytes).
    const DR7: u64 = 1 | (3 << 16) | (1 << 18);
    let r = run_all(
        |k| {
            k.mov(rax, W)?;
            k.mov(dr0, rax)?;
            k.mov(eax, DR7 as u32)?;
            k.mov(dr7, rax)?;
            k.xor(ebx, ebx)?;
            k.mov(ss, word_ptr(W))?;
            k.inc(ebx)?;
            k.def("m2")?;
            k.mov(ss, word_ptr(W))?;
            k.int3()?;
            k.def("m4")?;
            k.mov(ss, word_ptr(W))?;
            k.def("m5")?;
            k.ud2()?;
            k.def("m6")?;
            k.xor(eax, eax)?;
            k.mov(dr7, rax)?;
            report(k, rbx)?;
            stop(k)?;
            db_handler(k)
        },
        no_user,
        |m| {
            m.mem.write(W, &KERNEL_SS.to_le_bytes()).unwrap();
            gate_to(m, DB, "dbh");
            m.action(BP, 1);
            m.resume_at(UD, "m6");
        },
    );
    let d = db_reports(&r, 0, 3);
    assert_eq!((d[0].0, d[0].2), (r.label("m2"), 0xffff_0ff1));
    assert_eq!((d[1].0, d[1].2), (r.label("stub3"), 0xffff_0ff1));
    assert_eq!(d[1].1 & IF, 0, "interrupted in the #BP handler (IF clear)");
    assert_eq!((d[2].0, d[2].2), (r.label("stub6"), 0xffff_0ff1));
    let got: Vec<(u8, u64)> = r.events.iter().map(|e| (e.vector, e.rip)).collect();
    assert_eq!(got, vec![(BP, r.label("m4")), (UD, r.label("m5"))]);
    assert_eq!(r.reports[9..], [1]);
}

/// DR7.GD: any debug-register access is a #DB fault with DR6.BD, and GD is cleared for the
/// handler (SDM 17.2.4); the access then runs normally.
#[test]
fn general_detect_faults_debug_register_access() {
    let r = run_all(
        |k| {
            k.mov(eax, 0x2400)?;
            k.mov(dr7, rax)?;
            k.def("g0")?;
            k.mov(rax, dr0)?;
            k.mov(rax, dr7)?;
            report(k, rax)?;
            stop(k)?;
            db_handler(k)
        },
        no_user,
        |m| gate_to(m, DB, "dbh"),
    );
    let d = db_reports(&r, 0, 1);
    assert_eq!((d[0].0, d[0].2), (r.label("g0"), 0xffff_2ff0));
    assert_eq!(r.reports[3..], [0x400]);
}

/// INT1 (ICEBP) is a #DB trap past the instruction, delivered without the gate DPL check that
/// INT n has (SDM INT n/INTO/INT1/INT3), leaving DR6 alone.
#[test]
fn int1_is_a_debug_trap_without_dpl_check() {
    let r = run_all(
        enter_user,
        |u| {
            u.int1()?;
            u.def("after")?;
            u.ud2()
        },
        no_setup,
    );
    let e = r.event();
    assert_eq!((e.vector, e.error_code, e.rip), (DB, 0, r.label("after")));
    assert_eq!((e.cs, e.rflags), (USER_CS as u64, 0x202));
}

// ---------------------------------------------------------------------------------------
// The TSS I/O permission bitmap, CPUID and CR4

/// Outside IOPL (CPL3, IOPL0), IN/OUT/INS/OUTS consult the I/O permission bitmap at the offset
/// the TSS holds at 0x66 (SDM Vol. 1 19.5.2): every bit of the accessed ports must be clear,
/// and both bitmap bytes the CPU reads must lie within the TSS limit; otherwise #GP(0) before
/// any port is touched.
#[test]
fn tss_io_permission_bitmap() {
    const MAP: u64 = 0x68;
    // Ports 0-0x3ff, plus the byte after the map that the CPU may read.
    const LIMIT: u64 = MAP + 0x80;
    let r = run_all(
        enter_user,
        |u| {
            u.mov(edx, 0x400)?;
            cases(u, 7, |u, i| match i {
                0 => u.in_(al, 0x60),
                1 => u.in_(ax, 0x66),
                2 => u.in_(eax, 0x66),
                3 => u.out(0x71, al),
                4 => u.out(0x70, al),
                5 => u.in_(al, dx),
                _ => {
                    u.mov(edx, 0x61)?;
                    u.mov(esi, UDATA as u32)?;
                    u.mov(ecx, 2)?;
                    u.rep().outsb()?;
                    u.mov(edx, 0x3ff)?;
                    u.def("last")?;
                    u.in_(al, dx)
                }
            })?;
            u.def("end")?;
            u.ud2()
        },
        |m| {
            let tss_lo =
                LIMIT | ((TSS & 0xff_ffff) << 16) | (0x89u64 << 40) | (((TSS >> 24) & 0xff) << 56);
            m.mem.write_u64(GDT + 0x28, tss_lo).unwrap();
            m.mem
                .write(TSS + 0x66, &(MAP as u16).to_le_bytes())
                .unwrap();
            let mut map = [0xffu8; 0x81];
            map[0x60 / 8] = 0; // 0x60-0x67 allowed
            map[0x70 / 8] = 0xfe; // 0x70 allowed, 0x71-0x77 not
            m.mem.write(TSS + MAP, &map).unwrap();
            m.resume_at(GP, "next");
        },
    );
    let got: Vec<(u8, u64, u64)> = r
        .events
        .iter()
        .map(|e| (e.vector, e.error_code, e.rip))
        .collect();
    let gp = |l: &str| (GP, 0, r.label(l));
    assert_eq!(
        got,
        vec![
            gp("t2"),
            gp("t3"),
            gp("t5"),
            gp("last"),
            (UD, 0, r.label("end"))
        ]
    );
    let ports: Vec<(bool, u16, u8)> =
        r.io.iter()
            .map(|io| match *io {
                Io::In { port, size, .. } => (true, port, size),
                Io::Out { port, size, .. } => (false, port, size),
            })
            .collect();
    assert_eq!(
        ports,
        vec![
            (true, 0x60, 1),
            (true, 0x66, 2),
            (false, 0x70, 1),
            (false, 0x61, 1),
            (false, 0x61, 1)
        ]
    );
}

/// CPUID reports XSAVE (leaf 1 ECX[26]) and OSXSAVE (ECX[27]) as CR4.OSXSAVE is; leaf 0xD
/// subleaf 0 lists x87 and SSE with the 576-byte standard-format area (EBX for the current
/// XCR0, ECX the maximum), subleaf 1 XSAVEOPT only (SDM CPUID, Vol. 1 13.2, 13.3). CR4 bits
/// of features CPUID does not report are reserved: writing them is #GP(0) (SDM MOV CR): PKE,
/// UMIP. DE, PSE and MCE are reported and may be set (VME and PVI: see
/// `cr4_vme_pvi_follow_cpuid_vme`).
#[test]
fn cpuid_xsave_leaves_and_cr4_reserved_bits() {
    let bits = [22u8, 11];
    let r = run_all(
        |k| {
            let leaf = |k: &mut Asm, l: u32, sub: u32| -> AsmResult {
                k.mov(eax, l)?;
                k.mov(ecx, sub)?;
                k.cpuid()?;
                k.mov(r8, rax)?;
                report(k, r8)?;
                report(k, rbx)?;
                report(k, rcx)?;
                report(k, rdx)
            };
            leaf(k, 0, 0)?;
            leaf(k, 1, 0)?;
            set_cr(k, cr4, cr4::OSXSAVE, true)?;
            leaf(k, 1, 0)?;
            leaf(k, 0xd, 0)?;
            leaf(k, 0xd, 1)?;
            k.mov(rax, cr4)?;
            for (i, b) in bits.iter().enumerate() {
                let r = [r8, r9, r10, r11][i];
                k.mov(r, rax)?;
                k.bts(r, *b as u32)?;
            }
            cases(k, bits.len(), |k, i| k.mov(cr4, [r8, r9, r10, r11][i]))?;
            set_cr(k, cr4, cr4::DE | cr4::PSE | cr4::MCE, true)?;
            stop(k)
        },
        no_user,
        |m| m.resume_at(GP, "next"),
    );
    let q = |i: usize| &r.reports[4 * i..4 * i + 4];
    assert_eq!(q(0)[0], 0xd, "maximum basic leaf");
    let (before, after) = (q(1)[2], q(2)[2]);
    assert_eq!((before >> 26) & 3, 1, "XSAVE, no OSXSAVE yet");
    assert_eq!((after >> 26) & 3, 3, "XSAVE and OSXSAVE");
    assert_eq!(q(1)[3] & (1 << 2), 1 << 2, "DE");
    // x87 | SSE (| AVX when the host has it, so `max` reports it); the size for XCR0 = 1,
    // the largest; XSAVEOPT, XSAVEC and XSAVES with the compacted size for XCR0 = 1.
    let avx = is_x86_feature_detected!("avx");
    assert_eq!(
        q(3),
        [if avx { 7 } else { 3 }, 576, if avx { 832 } else { 576 }, 0]
    );
    assert_eq!(q(4), [0b1011, 576, 0, 0]);
    assert_eq!(r.events.len(), bits.len(), "{:#x?}", r.events);
    for (i, e) in r.events.iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "CR4 bit {}", bits[i]);
        assert_eq!(e.rip, r.label(&format!("t{i}")));
    }
    let set = cr4::DE | cr4::PSE | cr4::MCE | cr4::OSXSAVE;
    assert_eq!(r.cpu.cr4 & set, set);
}

// ---------------------------------------------------------------------------------------
// VME and PVI (CPUID.01H:EDX.VME[bit 1]; CR4.VME, CR4.PVI; RFLAGS.VIF, RFLAGS.VIP)
//
// krr runs only in IA-32e mode, where EFLAGS.VM cannot be set and virtual-8086 mode cannot be
// entered (SDM Vol. 3A 2.3.1, "System Flags and Fields in IA-32e Mode"), so CR4.VME changes
// nothing. CR4.PVI does: the CLI and STI decision tables' "protected mode" "includes
// compatibility mode and 64-bit mode" (SDM CLI, STI). The host CPU cannot be the oracle here
// (CR4 cannot be set from user mode), so each expectation cites the SDM.

use krr_runtime::arch::rflags::{IOPL, VIF, VIP};

const R11: usize = 11;
/// The interrupt-flag bits these tests look at.
const IFS: u64 = IF | VIF | VIP;

/// PUSHFQ; POP `r`.
fn flags_to(a: &mut Asm, r: AsmRegister64) -> AsmResult {
    a.pushfq()?;
    a.pop(r)
}

/// In PVI mode (CR4.PVI = 1, CPL 3, IOPL 0 < CPL) CLI clears RFLAGS.VIF and STI (with VIP = 0)
/// sets it, leaving IF unaffected (SDM CLI and STI "Operation" and decision tables, "Protected,
/// PVI" rows; SDM Vol. 3 "Protected-Mode Virtual Interrupts"). PUSHF pushes VIF and VIP as they
/// are (SDM PUSHF: only VM and RF are cleared in the image; "PUSHF ... is not affected by
/// CR4.PVI"). POPF at CPL 3 > IOPL changes none of IF, VIF, VIP (SDM POPF "Operation": "IF,
/// IOPL, VIP, VIF, VM and all reserved bits are unaffected"); neither does IRETQ at CPL 3 (SDM
/// IRET "Operation": IF only if CPL <= IOPL, VIF and VIP only if CPL = 0). Delivering an
/// exception clears IF (interrupt gate) but not VIF (SDM INT n "Operation" clears only TF, VM,
/// RF, NT and, for an interrupt gate, IF).
#[test]
fn pvi_cli_sti_at_cpl3_change_vif_not_if() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::PVI, true)?;
            // RFLAGS 0x202: IF = 1, IOPL 0, VIF = VIP = 0.
            enter_user(k)
        },
        |u| {
            flags_to(u, r8)?;
            u.sti()?;
            flags_to(u, r9)?;
            u.cli()?;
            flags_to(u, r10)?;
            u.sti()?;
            flags_to(u, r11)?;
            // POPF of an image with IF, VIF and VIP flipped.
            u.mov(rax, r11)?;
            u.mov(rcx, IFS)?;
            u.xor(rax, rcx)?;
            u.push(rax)?;
            u.popfq()?;
            flags_to(u, r12)?;
            // IRETQ to the next instruction (same privilege) with the same flipped image.
            let mut back = u.create_label();
            u.mov(rdx, rsp)?;
            u.push(USER_SS as i32)?;
            u.push(rdx)?;
            u.push(rax)?;
            u.push(USER_CS as i32)?;
            u.lea(rcx, ptr(back))?;
            u.push(rcx)?;
            u.iretq()?;
            u.set_label(&mut back)?;
            flags_to(u, r13)?;
            u.def("end")?;
            u.ud2()
        },
        no_setup,
    );
    let g = &r.cpu.gpr;
    assert_eq!(g[R8] & IFS, IF, "entered with VIF clear");
    assert_eq!(g[R9] & IFS, IF | VIF, "STI set VIF, not IF");
    assert_eq!(g[R10] & IFS, IF, "CLI cleared VIF, not IF");
    assert_eq!(g[R11] & IFS, IF | VIF, "STI set VIF again");
    assert_eq!(
        g[R12] & IFS,
        IF | VIF,
        "POPF at CPL3 changed IF, VIF or VIP"
    );
    assert_eq!(
        g[R13] & IFS,
        IF | VIF,
        "IRETQ at CPL3 changed IF, VIF or VIP"
    );
    let e = r.event();
    assert_eq!(e.vector, UD);
    assert_user_frame_no_flags(&e, r.label("end"));
    assert_eq!(e.rflags & (IFS | IOPL), IF | VIF, "pushed RFLAGS");
    assert_eq!(e.hflags & IFS, VIF, "delivery cleared IF, kept VIF");
    assert_ne!(r.cpu.cr4 & cr4::PVI, 0);
}

/// In PVI mode STI with RFLAGS.VIP = 1 is #GP(0) and changes nothing (SDM STI "Protected Mode
/// Exceptions": "If CPL is greater than IOPL and EFLAGS.VIP = 1"; decision table: "Protected,
/// PVI", IOPL 0-2, VIP 1: #GP fault). CLI does not look at VIP (SDM CLI "Operation"). VIF and
/// VIP come from the IRETQ frame at CPL 0 (SDM IRET "Operation").
#[test]
fn pvi_sti_with_vip_set_is_gp() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::PVI, true)?;
            iret_to_user(k, UCODE, USTACK_TOP, (IF | VIF | VIP | 2) as u32)
        },
        |u| {
            cases(u, 2, |u, i| {
                if i == 1 {
                    u.cli()?;
                    flags_to(u, r8)?;
                    u.def("sti_again")?;
                }
                u.sti()
            })?;
            u.def("end")?;
            u.ud2()
        },
        |m| m.resume_at(GP, "next"),
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    let [first, second, last] = [r.events[0], r.events[1], r.events[2]];
    assert_eq!((first.vector, first.error_code), (GP, 0));
    assert_user_frame_no_flags(&first, r.label("t0"));
    assert_eq!(first.rflags & IFS, IF | VIF | VIP, "STI changed nothing");
    assert_eq!(
        r.cpu.gpr[R8] & IFS,
        IF | VIP,
        "CLI cleared VIF with VIP set"
    );
    assert_eq!((second.vector, second.error_code), (GP, 0));
    assert_user_frame_no_flags(&second, r.label("sti_again"));
    assert_eq!(second.rflags & IFS, IF | VIP, "STI changed nothing");
    assert_eq!(last.vector, UD);
    assert_user_frame_no_flags(&last, r.label("end"));
    assert_eq!(last.rflags & IFS, IF | VIP);
}

/// Without CR4.PVI, CLI and STI at CPL 3 > IOPL are #GP(0) and change nothing, whatever
/// CR4.VME says (SDM CLI/STI decision tables, "Protected, not PVI", IOPL < CPL: #GP fault;
/// CR4.VME acts only in virtual-8086 mode, which IA-32e mode does not have: SDM Vol. 3A 2.3.1).
#[test]
fn cli_sti_at_cpl3_without_pvi_are_gp_even_with_vme() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::VME, true)?;
            iret_to_user(k, UCODE, USTACK_TOP, (IF | VIF | 2) as u32)
        },
        |u| {
            cases(u, 2, |u, i| if i == 0 { u.cli() } else { u.sti() })?;
            flags_to(u, r8)?;
            u.def("end")?;
            u.ud2()
        },
        |m| m.resume_at(GP, "next"),
    );
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    for (i, e) in r.events[..2].iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "case {i}");
        assert_user_frame_no_flags(e, r.label(&format!("t{i}")));
        assert_eq!(e.rflags & IFS, IF | VIF, "case {i} changed a flag");
    }
    assert_eq!(r.events[2].vector, UD);
    assert_eq!(r.cpu.gpr[R8] & IFS, IF | VIF);
    assert_eq!(r.cpu.cr4 & (cr4::VME | cr4::PVI), cr4::VME);
}

/// With IOPL 3 (>= CPL 3) CLI and STI change IF as without PVI and leave VIF alone, PVI or not
/// (SDM CLI/STI "Operation": "IF IOPL >= CPL THEN IF := 0/1"; decision tables, "Protected,
/// PVI", IOPL 3: IF = 0 / IF = 1).
#[test]
fn iopl3_cli_sti_change_if_under_pvi() {
    let r = run_all(
        |k| {
            set_cr(k, cr4, cr4::VME | cr4::PVI, true)?;
            iret_to_user(k, UCODE, USTACK_TOP, (IOPL | IF | VIF | 2) as u32)
        },
        |u| {
            u.cli()?;
            flags_to(u, r8)?;
            u.sti()?;
            flags_to(u, r9)?;
            u.def("end")?;
            u.ud2()
        },
        no_setup,
    );
    let e = r.event();
    assert_eq!(e.vector, UD);
    assert_user_frame_no_flags(&e, r.label("end"));
    assert_eq!(
        r.cpu.gpr[R8] & (IFS | IOPL),
        IOPL | VIF,
        "CLI cleared IF only"
    );
    assert_eq!(r.cpu.gpr[R9] & (IFS | IOPL), IOPL | IF | VIF, "STI set IF");
}

/// STI that sets VIF opens no interrupt shadow: only "If IF = 0, maskable hardware interrupts
/// remain inhibited on the instruction boundary following an execution of STI" (SDM STI
/// "Description"); in PVI mode STI leaves IF unaffected (SDM STI "Operation"). An interrupt
/// injected right after it is taken there, and the frame holds VIF = 1.
#[test]
fn pvi_sti_sets_vif_without_an_interrupt_shadow() {
    let r = all_tiers(|tier| {
        let mut m = Machine::new(
            |k| {
                set_cr(k, cr4, cr4::PVI, true)?;
                enter_user(k)
            },
            |u| {
                u.def("sti")?;
                u.sti()?;
                u.def("after")?;
                u.nop()?;
                u.def("end")?;
                u.ud2()
            },
        );
        m.action(0x30, 1);
        let labels = m.labels.clone();
        let mut s = m.start(tier);
        step_to(&mut s, labels["sti"], 100);
        assert_eq!(s.cpu().rflags & IFS, IF);
        assert!(Engine::interrupts_enabled(s.cpu()));
        step_to(&mut s, labels["after"], 1);
        assert_eq!(s.cpu().rflags & IFS, IF | VIF, "{tier:?}: STI set VIF");
        assert!(
            Engine::interrupts_enabled(s.cpu()),
            "{tier:?}: STI that set VIF blocked interrupts"
        );
        s.engine.inject_interrupt(&mut s.core, 0x30).unwrap();
        s.core.set_icount_limit(u64::MAX);
        let exit = s.run();
        s.finish(exit)
    });
    assert_eq!(r.exit, Exit::BusRequest);
    assert_eq!(r.events.len(), 2, "{:#x?}", r.events);
    let e = r.events[0];
    assert_eq!((e.vector, e.error_code), (0x30, 0));
    assert_user_frame_no_flags(&e, r.label("after"));
    assert_eq!(e.rflags & IFS, IF | VIF);
    assert_eq!(r.events[1].vector, UD);
    assert_user_frame_no_flags(&r.events[1], r.label("end"));
}

/// CPUID.01H:EDX.VME[bit 1] is reported, and with it MOV to CR4 may set VME and PVI (SDM CPUID,
/// "Feature Information Returned in the EDX Register": VME covers CR4.VME, CR4.PVI and
/// EFLAGS.VIF/VIP). With a CPUID table that lacks VME both bits are reserved: MOV to CR4
/// setting either is #GP(0) and CR4 keeps its value (SDM MOV CR "Protected Mode Exceptions":
/// "If an attempt is made to write a 1 to any reserved bit in CR4").
#[test]
fn cr4_vme_pvi_follow_cpuid_vme() {
    let run = |has_vme: bool| {
        all_tiers(|tier| {
            let mut m = Machine::new(
                |k| {
                    k.mov(eax, 1)?;
                    k.xor(ecx, ecx)?;
                    k.cpuid()?;
                    report(k, rdx)?;
                    k.mov(rax, cr4)?;
                    report(k, rax)?;
                    k.mov(rax, cr4)?;
                    k.mov(r8, rax)?;
                    k.bts(r8, 0)?;
                    k.mov(r9, r8)?;
                    k.bts(r9, 1)?;
                    k.mov(r10, rax)?;
                    k.bts(r10, 1)?;
                    // VME, then VME | PVI, then PVI alone.
                    cases(k, 3, |k, i| k.mov(cr4, [r8, r9, r10][i]))?;
                    k.mov(rax, cr4)?;
                    report(k, rax)?;
                    stop(k)
                },
                no_user,
            );
            m.resume_at(GP, "next");
            let mut s = m.start(tier);
            if !has_vme {
                s.edit_cpuid(|e| {
                    if e.leaf == 1 {
                        e.edx &= !(1 << 1)
                    }
                });
            }
            let exit = s.run();
            s.finish(exit)
        })
    };
    let r = run(true);
    assert_eq!(r.reports[0] & 2, 2, "CPUID.01H:EDX.VME");
    let before = r.reports[1];
    assert_eq!(before & (cr4::VME | cr4::PVI), 0);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(
        r.reports[2],
        before | cr4::PVI,
        "the last write sets PVI alone"
    );
    assert_eq!(r.cpu.cr4, before | cr4::PVI);

    let r = run(false);
    assert_eq!(r.reports[0] & 2, 0, "no CPUID.01H:EDX.VME");
    assert_eq!(r.events.len(), 3, "{:#x?}", r.events);
    for (i, e) in r.events.iter().enumerate() {
        assert_eq!((e.vector, e.error_code), (GP, 0), "case {i}");
        assert_eq!(e.rip, r.label(&format!("t{i}")), "case {i}");
    }
    assert_eq!(r.reports[2], before, "CR4 unchanged");
}

/// An instruction of an extension the CPU model does not report raises #UD, as on a CPU
/// without it (SDM: each instruction's "#UD If CPUID.01H:ECX.SSE4_2[bit 20] = 0" and so on);
/// LZCNT and TZCNT run as BSR and BSF there (SDM LZCNT/TZCNT: "on processors that do not
/// support" them the encoding executes as BSR/BSF).
#[test]
fn instructions_follow_the_cpu_models_features() {
    let run = |full: bool| {
        all_tiers(|tier| {
            let mut m = Machine::new(
                |k| {
                    k.mov(rcx, 0x10u64)?;
                    cases(k, 6, |k, i| match i {
                        0 => k.crc32(eax, ecx),
                        1 => k.popcnt(rax, rcx),
                        2 => k.pshufb(xmm0, xmm1),
                        3 => k.aesenc(xmm0, xmm1),
                        4 => k.pclmulqdq(xmm0, xmm1, 0),
                        _ => k.movbe(eax, dword_ptr(KSCRATCH)),
                    })?;
                    k.mov(rcx, 0x10u64)?;
                    k.lzcnt(rax, rcx)?;
                    report(k, rax)?;
                    k.mov(rax, 0x1234u64)?;
                    k.xor(ecx, ecx)?;
                    k.tzcnt(rax, rcx)?;
                    report(k, rax)?;
                    stop(k)
                },
                no_user,
            );
            m.resume_at(UD, "next");
            let mut s = m.start(tier);
            if !full {
                s.edit_cpuid(|e| match (e.leaf, e.subleaf) {
                    // SSE4.2, POPCNT, SSSE3, AES, PCLMULQDQ, MOVBE.
                    (1, _) => e.ecx &= !(1 << 20 | 1 << 23 | 1 << 9 | 1 << 25 | 1 << 1 | 1 << 22),
                    (7, 0) => e.ebx &= !(1 << 3),           // BMI1
                    (0x8000_0001, _) => e.ecx &= !(1 << 5), // LZCNT (ABM)
                    _ => {}
                });
            }
            let exit = s.run();
            s.finish(exit)
        })
    };
    let r = run(true);
    assert!(r.events.is_empty(), "{:#x?}", r.events);
    assert_eq!(r.reports, [59, 64], "LZCNT and TZCNT");

    let r = run(false);
    assert_eq!(r.events.len(), 6, "{:#x?}", r.events);
    for (i, e) in r.events.iter().enumerate() {
        assert_eq!(
            (e.vector, e.rip),
            (UD, r.label(&format!("t{i}"))),
            "case {i}"
        );
    }
    assert_eq!(
        r.reports,
        [4, 0x1234],
        "BSR; BSF of 0 leaves the destination"
    );
}
