//! The demo kernel's interrupt and exception handlers: the PIT timer (IRQ0), spurious IRQ7,
//! a reporting stub per exception vector and the catch-all for every other vector.

use super::KernelLabels;
use crate::demo_guest::asm::{Asm, Part, Src, R};
use crate::demo_guest::*;
use iced_x86::code_asm::*;
use Part::{Dec, Hex, Text};
use Src::{Reg, Stack};

/// The timer (IRQ0) and spurious IRQ7 handlers.
pub(super) fn timer_and_spurious(k: &mut Asm, l: &mut KernelLabels) -> R {
    // Timer (IRQ0): count, note whether it interrupted CPL3, EOI.
    k.set_label(&mut l.timer)?;
    k.push(rax)?;
    k.inc(qword_ptr(KV_TICKS))?;
    let mut from_kernel = k.create_label();
    k.test(byte_ptr(rsp + 16), 3)?; // the frame's CS
    k.jz(from_kernel)?;
    k.inc(qword_ptr(KV_USER_TICKS))?;
    k.set_label(&mut from_kernel)?;
    k.outb(0x20, 0x20)?; // non-specific EOI
    k.pop(rax)?;
    k.iretq()?;
    // Spurious IRQ7: no EOI.
    k.set_label(&mut l.spurious)?;
    k.inc(qword_ptr(KV_SPURIOUS))?;
    k.iretq()?;
    Ok(())
}

/// The exception stubs, their common handler, and the handler of any other vector.
pub(super) fn exceptions(k: &mut Asm, l: &mut KernelLabels) -> R {
    // Exceptions: each stub pushes a zero error code if the CPU pushes none, then passes its
    // vector (EDI) and name (RSI).
    for (v, stub) in l.stubs.iter_mut().enumerate() {
        k.set_label(stub)?;
        if !has_error_code(v as u8) {
            k.push(0)?;
        }
        k.mov(edi, v as u32)?;
        let name = k.text(EXCEPTION_NAMES[v]);
        k.lea(rsi, ptr(name))?;
        k.jmp(l.exc_common)?;
    }
    // Stack: error code, RIP, CS, RFLAGS, RSP, SS.
    k.set_label(&mut l.exc_common)?;
    k.mov(r12, rdi)?;
    k.mov(r13, rsi)?;
    k.mov(r14, cr2)?;
    k.kprint(
        l.kputs,
        &[
            Text("\n*** kernel: exception "),
            Dec(Reg(r12)),
            Text(" ("),
            Part::Ptr(r13),
            Text("), error code "),
            Hex(Stack(0)),
            Text(", RIP "),
            Hex(Stack(8)),
            Text(", CS "),
            Hex(Stack(16)),
            Text(", RSP "),
            Hex(Stack(32)),
            Text(", CR2 "),
            Hex(Reg(r14)),
            Text("\n"),
        ],
    )?;
    k.mov(eax, r12d)?;
    k.add(eax, i32::from(FAIL_EXCEPTION))?;
    k.fail(al)?;
    // Any other vector.
    k.set_label(&mut l.unexpected)?;
    k.kprint(
        l.kputs,
        &[
            Text("\n*** kernel: unexpected interrupt vector, RIP "),
            Hex(Stack(0)),
            Text("\n"),
        ],
    )?;
    k.mov(al, u32::from(FAIL_UNEXPECTED))?;
    k.fail(al)?;
    Ok(())
}

fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

const EXCEPTION_NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 floating-point error",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating-point exception",
    "#VE virtualization exception",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security exception",
    "reserved",
];
