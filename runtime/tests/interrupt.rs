//! Event delivery through the 64-bit IDT (`interrupt::deliver`) against the Intel SDM Vol. 3A:
//! the stack frame (6.14.2, Figure 6-9), stack switching and the IST (6.14.4, 6.14.5), error
//! codes (6.13), RFLAGS on entry (6.12.1.3) and double/triple faults (Table 6-5, 6.15
//! Interrupt 8).

mod common;

use common::*;
use krr_runtime::arch::{rflags, vector};
use krr_runtime::interrupt::{deliver, DeliveryError, EventKind};
use krr_runtime::{gpr, seg, ExceptionRecord};

const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
/// TSS.RSP0: the kernel stack, pages 0x4000-0x7fff.
const RSP0: u64 = 0x8000;
/// TSS.IST1, deliberately misaligned: pages 0x8000-0x9fff.
const IST1: u64 = 0xa008;
const USER_RSP: u64 = 0x1_0ff8;
const KERNEL_CS: u16 = 0x08;
const KERNEL_SS: u16 = 0x10;
const HANDLER: u64 = 0xffff_ffff_8000_1000;
const RIP: u64 = 0x40_1234;

const INTERRUPT_GATE: u64 = 0xe;
const TRAP_GATE: u64 = 0xf;

/// A machine with a GDT (null, 64-bit kernel code 0x08 and data 0x10, user code 0x20, a
/// non-present code segment 0x28), an
/// empty IDT and a TSS, running user code at CPL3 (`new_flat64`'s CS 0x33, SS 0x2b).
fn machine() -> Machine {
    let mut m = Machine::new();
    for page in (0x1000..0xa000).step_by(0x1000) {
        m.map(page, page, RW | A | D);
    }
    m.map(0x1_0000, 0x1_0000, RW | US | A | D);
    let gdt: [u64; 6] = [
        0,
        0x0020_9a00_0000_0000,
        0x0000_9200_0000_0000,
        0x0000_f200_0000_0000,
        0x0020_fa00_0000_0000,
        // 0x28: 64-bit kernel code, not present.
        0x0020_1a00_0000_0000,
    ];
    for (i, d) in gdt.iter().enumerate() {
        m.mem().write_u64(GDT + 8 * i as u64, *d).unwrap();
    }
    m.mem().write_u64(TSS + 4, RSP0).unwrap();
    m.mem().write_u64(TSS + 0x24, IST1).unwrap();
    m.cpu().gdtr.base = GDT;
    m.cpu().gdtr.limit = 8 * gdt.len() as u16 - 1;
    m.cpu().idtr.base = IDT;
    m.cpu().idtr.limit = 0xfff;
    m.cpu().tr.selector = 0x40;
    m.cpu().tr.base = TSS;
    m.cpu().tr.limit = 0x67;
    m.cpu().gpr[gpr::RSP] = USER_RSP;
    m
}

/// An IDT gate: 64-bit `typ` gate to HANDLER + `v` in the kernel code segment.
fn gate(m: &mut Machine, v: u8, typ: u64, dpl: u64, ist: u64, present: bool) {
    gate_to(m, v, KERNEL_CS, typ, dpl, ist, present);
}

fn gate_to(m: &mut Machine, v: u8, cs: u16, typ: u64, dpl: u64, ist: u64, present: bool) {
    let target = HANDLER + v as u64;
    let lo = (target & 0xffff)
        | (cs as u64) << 16
        | ist << 32
        | typ << 40
        | dpl << 45
        | (present as u64) << 47
        | (target >> 16 & 0xffff) << 48;
    let a = IDT + 16 * v as u64;
    m.mem().write_u64(a, lo).unwrap();
    m.mem().write_u64(a + 8, target >> 32).unwrap();
}

/// The frame at RSP: `n` quadwords, lowest address first.
fn frame(m: &Machine, n: usize) -> Vec<u64> {
    let rsp = m.core.cpu().gpr[gpr::RSP];
    (0..n)
        .map(|i| m.core.mem().read_u64(rsp + 8 * i as u64).unwrap())
        .collect()
}

const USER_FLAGS: u64 = rflags::FIXED1 | rflags::IF | rflags::TF | rflags::DF | rflags::ZF;

/// Deliver #GP(0) raised by user code at `RIP` with `USER_FLAGS`.
fn user_gp0(m: &mut Machine) -> Result<bool, DeliveryError> {
    deliver(
        m.cpu(),
        vector::GP,
        EventKind::Exception,
        Some(0),
        USER_FLAGS,
        RIP,
        RIP,
    )
}

/// Deliver external interrupt `v` from user code at `RIP` with `USER_FLAGS`.
fn external(m: &mut Machine, v: u8) -> Result<bool, DeliveryError> {
    deliver(m.cpu(), v, EventKind::External, None, USER_FLAGS, RIP, RIP)
}

#[test]
fn user_interrupt_switches_to_rsp0() {
    let mut m = machine();
    gate(&mut m, 0x20, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x20);
    assert_eq!(r, Ok(false));
    // SS, RSP, RFLAGS, CS, RIP pushed on the 16-byte aligned RSP0.
    assert_eq!(m.cpu().gpr[gpr::RSP], RSP0 - 40);
    assert_eq!(frame(&m, 5), [RIP, 0x33, USER_FLAGS, USER_RSP, 0x2b]);
    assert_eq!(m.cpu().rip, HANDLER + 0x20);
    assert_eq!(m.cpu().seg[seg::CS].selector, KERNEL_CS);
    assert_eq!(m.cpu().cpl(), 0);
    // A privilege change loads a null SS with RPL = new CPL.
    assert_eq!(m.cpu().seg[seg::SS].selector, 0);
    // TF, NT, RF, VM and (interrupt gate) IF cleared; the arithmetic flags live in the lazy
    // state and are not stored here.
    assert_eq!(m.cpu().rflags, rflags::FIXED1 | rflags::DF);
}

#[test]
fn same_privilege_trap_gate_keeps_stack_and_if() {
    let mut m = machine();
    m.kernel_mode();
    m.cpu().gpr[gpr::RSP] = 0x7008;
    gate(&mut m, 0x21, TRAP_GATE, 0, 0, true);
    let flags = rflags::FIXED1 | rflags::IF | rflags::RF;
    let r = deliver(m.cpu(), 0x21, EventKind::External, None, flags, RIP, RIP);
    assert_eq!(r, Ok(false));
    // 64-bit mode pushes SS:RSP even without a stack switch, after aligning RSP.
    assert_eq!(m.cpu().gpr[gpr::RSP], 0x7000 - 40);
    assert_eq!(
        frame(&m, 5),
        [RIP, KERNEL_CS as u64, flags, 0x7008, KERNEL_SS as u64]
    );
    assert_eq!(m.cpu().seg[seg::SS].selector, KERNEL_SS);
    assert_eq!(m.cpu().rflags, rflags::FIXED1 | rflags::IF);
}

#[test]
fn ist_stack_and_error_code() {
    let mut m = machine();
    m.kernel_mode();
    m.cpu().gpr[gpr::RSP] = 0x7008;
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 1, true);
    let flags = rflags::FIXED1 | rflags::IF;
    let r = deliver(
        m.cpu(),
        vector::GP,
        EventKind::Exception,
        Some(0x1234),
        flags,
        RIP,
        RIP,
    );
    assert_eq!(r, Ok(false));
    // The IST pointer is used even without a privilege change, aligned down to 16.
    assert_eq!(m.cpu().gpr[gpr::RSP], 0xa000 - 48);
    // A fault pushes RF = 1 (SDM 17.3.1.1).
    assert_eq!(
        frame(&m, 6),
        [
            0x1234,
            RIP,
            KERNEL_CS as u64,
            flags | rflags::RF,
            0x7008,
            KERNEL_SS as u64
        ]
    );
}

#[test]
fn page_fault_writes_cr2() {
    let mut m = machine();
    gate(&mut m, vector::PF, INTERRUPT_GATE, 0, 0, true);
    m.cpu().exec.exception = ExceptionRecord::page_fault(PF_U | PF_W, 0xdead_0008);
    let r = deliver(
        m.cpu(),
        vector::PF,
        EventKind::Exception,
        Some(6),
        USER_FLAGS,
        RIP,
        RIP,
    );
    assert_eq!(r, Ok(false));
    assert_eq!(m.cpu().cr2, 0xdead_0008);
    assert_eq!(m.cpu().gpr[gpr::RSP], RSP0 - 48);
    assert_eq!(frame(&m, 2), [6, RIP]);
}

#[test]
fn exceptions_without_error_code_push_none() {
    let mut m = machine();
    gate(&mut m, vector::UD, INTERRUPT_GATE, 0, 0, true);
    let r = deliver(
        m.cpu(),
        vector::UD,
        EventKind::Exception,
        None,
        USER_FLAGS,
        RIP,
        RIP,
    );
    assert_eq!(r, Ok(false));
    assert_eq!(m.cpu().gpr[gpr::RSP], RSP0 - 40);
    assert_eq!(frame(&m, 2), [RIP, 0x33]);
}

#[test]
fn software_interrupts_check_the_gate_dpl() {
    let mut m = machine();
    gate(&mut m, 0x80, INTERRUPT_GATE, 3, 0, true);
    gate(&mut m, 0x81, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    let next = RIP + 2;
    let flags = rflags::FIXED1 | rflags::IF | rflags::RF;
    // DPL 3: delivered, returning past the INT, RF clear in the image (a trap).
    let r = deliver(m.cpu(), 0x80, EventKind::Software, None, flags, next, RIP);
    assert_eq!(r, Ok(false));
    assert_eq!(m.cpu().rip, HANDLER + 0x80);
    assert_eq!(frame(&m, 3), [next, 0x33, flags & !rflags::RF]);
    // DPL 0 from CPL3: #GP(vector * 8 + 2), EXT clear, reported at the INT itself.
    let mut m = machine();
    gate(&mut m, 0x81, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    let r = deliver(m.cpu(), 0x81, EventKind::Software, None, flags, next, RIP);
    assert_eq!(r, Ok(true));
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::GP, Some(0x81 * 8 + 2))
    );
    assert_eq!(m.cpu().rip, HANDLER + vector::GP as u64);
    assert_eq!(frame(&m, 2), [0x81 * 8 + 2, RIP]);
}

#[test]
fn not_present_gate_raises_np_with_idt_error_code() {
    let mut m = machine();
    gate(&mut m, 0x22, INTERRUPT_GATE, 0, 0, false);
    gate(&mut m, vector::NP, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x22);
    assert_eq!(r, Ok(false));
    // IDT bit (1) and EXT (0: an external event) set.
    let code = 0x22 * 8 + 2 + 1;
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::NP, Some(code))
    );
    assert_eq!(m.cpu().rip, HANDLER + vector::NP as u64);
    assert_eq!(frame(&m, 2), [code as u64, RIP]);
}

#[test]
fn contributory_during_contributory_is_a_double_fault() {
    let mut m = machine();
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, false);
    gate(&mut m, vector::DF, INTERRUPT_GATE, 0, 0, true);
    let r = user_gp0(&mut m);
    assert_eq!(r, Ok(false));
    assert_eq!(m.cpu().rip, HANDLER + vector::DF as u64);
    // #DF pushes an error code of 0.
    assert_eq!(m.cpu().gpr[gpr::RSP], RSP0 - 48);
    assert_eq!(frame(&m, 6), [0, RIP, 0x33, USER_FLAGS, USER_RSP, 0x2b]);
}

#[test]
fn page_fault_during_page_fault_is_a_double_fault() {
    let mut m = machine();
    // RSP0 points at an unmapped page: pushing the #GP frame faults, then the #PF frame.
    m.mem().write_u64(TSS + 4, 0x2_0000).unwrap();
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::PF, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::DF, INTERRUPT_GATE, 0, 1, true);
    let r = user_gp0(&mut m);
    assert_eq!(r, Ok(false));
    // #GP then #PF is handled serially; #PF then #PF is a double fault.
    assert_eq!(m.cpu().rip, HANDLER + vector::DF as u64);
    // CR2: the first push (SS) at RSP0 - 8, a supervisor write to a non-present page.
    assert_eq!(m.cpu().cr2, 0x1_fff8);
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::page_fault(PF_W, 0x1_fff8)
    );
    assert_eq!(m.cpu().gpr[gpr::RSP], 0xa000 - 48);
    assert_eq!(frame(&m, 6), [0, RIP, 0x33, USER_FLAGS, USER_RSP, 0x2b]);
}

#[test]
fn fault_during_double_fault_is_a_triple_fault() {
    let mut m = machine();
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, false);
    gate(&mut m, vector::DF, INTERRUPT_GATE, 0, 0, false);
    gate(&mut m, vector::NP, INTERRUPT_GATE, 0, 0, true);
    let r = user_gp0(&mut m);
    assert_eq!(
        r,
        Err(DeliveryError::TripleFault {
            first: vector::GP,
            second: vector::NP
        })
    );
}

#[test]
fn gate_outside_the_idt_limit_is_gp() {
    let mut m = machine();
    m.cpu().idtr.limit = 16 * 0x30 - 1;
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x30);
    assert_eq!(r, Ok(false));
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::GP, Some(0x30 * 8 + 3))
    );
}

#[test]
fn handler_segment_checks() {
    // A non-present handler CS: #NP(selector + EXT) (SDM INT n, 64-bit mode).
    let mut m = machine();
    gate_to(&mut m, 0x23, 0x28, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::NP, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x23);
    assert_eq!(r, Ok(false));
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::NP, Some(0x29))
    );
    assert_eq!(m.cpu().rip, HANDLER + vector::NP as u64);
    // A data segment as handler CS: #GP(selector + EXT).
    let mut m = machine();
    gate_to(&mut m, 0x24, KERNEL_SS, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x24);
    assert_eq!(r, Ok(false));
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::GP, Some(0x11))
    );
    // A null selector: #GP(EXT).
    let mut m = machine();
    gate_to(&mut m, 0x25, 0, INTERRUPT_GATE, 0, 0, true);
    gate(&mut m, vector::GP, INTERRUPT_GATE, 0, 0, true);
    let r = external(&mut m, 0x25);
    assert_eq!(r, Ok(false));
    assert_eq!(
        m.cpu().exec.exception,
        ExceptionRecord::fault(vector::GP, Some(1))
    );
}

#[test]
fn trap_gate_from_user_keeps_if() {
    let mut m = machine();
    gate(&mut m, 0x26, TRAP_GATE, 0, 0, true);
    let r = external(&mut m, 0x26);
    assert_eq!(r, Ok(false));
    assert_eq!(m.cpu().rflags, rflags::FIXED1 | rflags::IF | rflags::DF);
    assert_eq!(m.cpu().gpr[gpr::RSP], RSP0 - 40);
}
