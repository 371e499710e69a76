//! The demo kernel's syscalls (SYSCALL/SYSRET, Linux numbering where one exists: `write`,
//! `sleep`, `time`, `exit`; anything else is -ENOSYS) and what it does after the user program
//! exits: the report, then power-off through ACPI PM1a.

use super::KernelLabels;
use crate::demo_guest::asm::{Asm, Part, Src, R};
use crate::demo_guest::*;
use iced_x86::code_asm::*;
use Part::{Dec, Hex, Text};
use Src::Abs;

/// The SYSCALL entry (IF is clear through SFMASK; it switches to the kernel stack), the
/// dispatch on RAX, SYSRET, and the handlers.
pub(super) fn entry_and_handlers(k: &mut Asm, l: &mut KernelLabels) -> R {
    k.set_label(&mut l.syscall_entry)?;
    k.mov(qword_ptr(KV_USER_RSP), rsp)?;
    k.mov(rsp, KSTACK_TOP)?;
    for r in [rcx, r11, rdi, rsi, rdx, r8, r9, r10] {
        k.push(r)?;
    }
    // Saved RSI (the second argument) is at [rsp + 32].
    k.inc(qword_ptr(KV_SYSCALLS))?;
    let mut sys_write = k.create_label();
    let mut sys_sleep = k.create_label();
    let mut sys_time = k.create_label();
    let mut sys_exit = k.create_label();
    let mut sys_ret = k.create_label();
    for (n, handler) in [
        (SYS_WRITE, sys_write),
        (SYS_SLEEP, sys_sleep),
        (SYS_TIME, sys_time),
        (SYS_EXIT, sys_exit),
    ] {
        k.cmp(rax, n as i32)?;
        k.je(handler)?;
    }
    k.mov(rax, -i64::from(ENOSYS))?;
    k.set_label(&mut sys_ret)?;
    for r in [r10, r9, r8, rdx, rsi, rdi, r11, rcx] {
        k.pop(r)?;
    }
    k.mov(rsp, qword_ptr(KV_USER_RSP))?;
    k.sysretq()?;

    // write(buf = RDI, len = RSI): only from the user data pages.
    k.set_label(&mut sys_write)?;
    k.mov(rax, -i64::from(EFAULT))?;
    k.mov(rcx, UDATA)?;
    k.cmp(rdi, rcx)?;
    k.jb(sys_ret)?;
    k.cmp(rsi, 4096)?;
    k.ja(sys_ret)?;
    k.lea(rcx, qword_ptr(rdi + rsi))?;
    k.mov(rdx, UDATA_END)?;
    k.cmp(rcx, rdx)?;
    k.ja(sys_ret)?;
    let mut no_stac = k.create_label();
    let mut no_clac = k.create_label();
    k.cmp(byte_ptr(KV_SMAP), 0)?;
    k.je(no_stac)?;
    k.stac()?;
    k.set_label(&mut no_stac)?;
    k.mov(rcx, rsi)?;
    k.mov(rsi, rdi)?;
    k.call(l.kputs)?;
    k.cmp(byte_ptr(KV_SMAP), 0)?;
    k.je(no_clac)?;
    k.clac()?;
    k.set_label(&mut no_clac)?;
    k.mov(rax, qword_ptr(rsp + 32))?;
    k.jmp(sys_ret)?;

    // sleep(ticks = RDI): STI;HLT until the tick count reaches its target; returns it.
    k.set_label(&mut sys_sleep)?;
    k.mov(rsi, qword_ptr(KV_TICKS))?;
    k.add(rsi, rdi)?;
    let mut sleep = k.create_label();
    let mut woke = k.create_label();
    k.set_label(&mut sleep)?;
    k.cmp(qword_ptr(KV_TICKS), rsi)?;
    k.jae(woke)?;
    k.sti()?;
    k.hlt()?;
    k.cli()?;
    k.jmp(sleep)?;
    k.set_label(&mut woke)?;
    k.mov(rax, qword_ptr(KV_TICKS))?;
    k.jmp(sys_ret)?;

    // time(): the TSC.
    k.set_label(&mut sys_time)?;
    k.rdtsc64()?;
    k.jmp(sys_ret)?;

    // exit(status = RDI): back to the kernel for good.
    k.set_label(&mut sys_exit)?;
    k.mov(qword_ptr(KV_EXIT_STATUS), rdi)?;
    k.jmp(l.after_user)?;
    Ok(())
}

/// After the user program: the report, then power off.
pub(super) fn report_and_power_off(k: &mut Asm, l: &mut KernelLabels) -> R {
    k.set_label(&mut l.after_user)?;
    k.mov(rsp, KSTACK_TOP)?;
    k.rdtsc64()?;
    k.mov(qword_ptr(KV_TSC_EXIT), rax)?;
    k.kprint(
        l.kputs,
        &[
            Text("kernel: the user program exited with status "),
            Hex(Abs(KV_EXIT_STATUS)),
            Text("\nkrr demo guest report:\n  timer ticks: "),
            Dec(Abs(KV_TICKS)),
            Text(" ("),
            Dec(Abs(KV_USER_TICKS)),
            Text(" interrupted user mode), spurious interrupts: "),
            Dec(Abs(KV_SPURIOUS)),
            Text("\n  syscalls: "),
            Dec(Abs(KV_SYSCALLS)),
            Text("\n  checksum: "),
            Hex(Abs(KV_EXIT_STATUS)),
            Text("\n  tsc: "),
            Dec(Abs(KV_TSC_ENTER)),
            Text(" at user entry, "),
            Dec(Abs(KV_TSC_EXIT)),
            Text(" at exit\nkernel: powering off\n"),
        ],
    )?;
    k.mov(dx, PM1A_CNT as u32)?;
    k.mov(ax, PM1_CNT_S5 as u32)?;
    k.out(dx, ax)?;
    k.halt_forever()?;
    Ok(())
}
