//! The demo kernel (CPL0), assembled at [`KCODE`]: the boot steps in the order they run
//! (serial port, CPUID, GDT and TSS, IDT, page tables, SYSCALL MSRs, PIC and PIT, idling, the
//! entry to CPL3), then the syscall and interrupt code of [`syscalls`] and [`interrupts`],
//! then the kernel's subroutines.

use super::asm::{Asm, Part, Src, R};
use super::*;
use iced_x86::code_asm::*;
use iced_x86::{Code, Instruction};
use krr_runtime::arch::msr;
use krr_runtime::rflags;
use Part::{Dec, Hex, Text};
use Src::{Abs, Reg};

mod interrupts;
mod syscalls;

/// Labels that several parts of the kernel refer to, created before any code is emitted.
pub(super) struct KernelLabels {
    /// `kputc(AL)`: one byte to COM1.
    pub(super) kputc: CodeLabel,
    /// `kputs(RSI, RCX bytes)`: bytes to COM1.
    pub(super) kputs: CodeLabel,
    /// `set_gate(EDI = vector, RSI = handler, EDX = IST)`.
    pub(super) set_gate: CodeLabel,
    /// `map_pages(RDI = page table, RSI = start, RDX = end, RCX = flags)`.
    pub(super) map_pages: CodeLabel,
    /// What every exception stub jumps to.
    pub(super) exc_common: CodeLabel,
    /// The handler of every vector without its own.
    pub(super) unexpected: CodeLabel,
    /// IRQ0.
    pub(super) timer: CodeLabel,
    /// IRQ7.
    pub(super) spurious: CodeLabel,
    /// LSTAR.
    pub(super) syscall_entry: CodeLabel,
    /// Where `exit` leaves the user program for good.
    pub(super) after_user: CodeLabel,
    /// One stub per exception vector 0-31.
    pub(super) stubs: Vec<CodeLabel>,
}

impl KernelLabels {
    fn new(k: &mut Asm) -> KernelLabels {
        KernelLabels {
            kputc: k.create_label(),
            kputs: k.create_label(),
            set_gate: k.create_label(),
            map_pages: k.create_label(),
            exc_common: k.create_label(),
            unexpected: k.create_label(),
            timer: k.create_label(),
            spurious: k.create_label(),
            syscall_entry: k.create_label(),
            after_user: k.create_label(),
            stubs: (0..32).map(|_| k.create_label()).collect(),
        }
    }
}

/// The kernel, assembled at [`KCODE`].
pub(super) fn kernel() -> Result<Vec<u8>, IcedError> {
    let mut k = Asm::new()?;
    let mut l = KernelLabels::new(&mut k);
    serial_port_and_greeting(&mut k, &l)?;
    cpuid(&mut k, &l)?;
    gdt_and_tss(&mut k)?;
    idt(&mut k, &l)?;
    page_tables_and_protection(&mut k, &l)?;
    syscall_msrs(&mut k, &l)?;
    pic_and_pit(&mut k, &l)?;
    idle_then_enter_user(&mut k, &l)?;
    syscalls::entry_and_handlers(&mut k, &mut l)?;
    syscalls::report_and_power_off(&mut k, &mut l)?;
    interrupts::timer_and_spurious(&mut k, &mut l)?;
    interrupts::exceptions(&mut k, &mut l)?;
    console_output(&mut k, &mut l)?;
    set_gate(&mut k, &mut l)?;
    map_pages(&mut k, &mut l)?;
    k.finish(KCODE)
}

/// Boot: the stack, the serial port (COM1 at 115200 8N1, FIFOs on), a greeting.
fn serial_port_and_greeting(k: &mut Asm, l: &KernelLabels) -> R {
    k.mov(rsp, KSTACK_TOP)?;
    k.outb(COM1 + 1, 0x00)?; // IER: no UART interrupts
    k.outb(COM1 + 3, 0x80)?; // LCR: DLAB
    k.outb(COM1, 0x01)?; // DLL: 115200 baud
    k.outb(COM1 + 1, 0x00)?; // DLM
    k.outb(COM1 + 3, 0x03)?; // LCR: 8N1
    k.outb(COM1 + 2, 0xc7)?; // FCR: FIFOs on and cleared
    k.outb(COM1 + 4, 0x03)?; // MCR: DTR RTS
    k.kprint(
        l.kputs,
        &[Text(
            "krr demo guest: kernel started at CPL0 in long mode\n",
        )],
    )?;
    Ok(())
}

/// CPUID: the vendor string and leaf 7 (SMEP, SMAP), printed.
fn cpuid(k: &mut Asm, l: &KernelLabels) -> R {
    k.xor(eax, eax)?;
    k.cpuid()?;
    k.mov(dword_ptr(KV_VENDOR), ebx)?;
    k.mov(dword_ptr(KV_VENDOR + 4), edx)?;
    k.mov(dword_ptr(KV_VENDOR + 8), ecx)?;
    k.mov(dword_ptr(KV_VENDOR + 12), 0)?;
    k.mov(eax, 7)?;
    k.xor(ecx, ecx)?;
    k.cpuid()?;
    k.mov(dword_ptr(KV_LEAF7_EBX), ebx)?;
    k.mov(r9, KV_VENDOR)?;
    k.kprint(
        l.kputs,
        &[
            Text("kernel: CPUID vendor "),
            Part::Ptr(r9),
            Text(", leaf 7 EBX "),
            Hex(Abs(KV_LEAF7_EBX)),
            Text("\n"),
        ],
    )?;
    Ok(())
}

/// GDT: null, kernel code/data, user data/code, the TSS (16 bytes); then the TSS itself,
/// GDTR, CS reloaded with a far return, the data segments and TR.
fn gdt_and_tss(k: &mut Asm) -> R {
    let descriptors: [(u64, u64); 5] = [
        (0x00, 0),
        (0x08, 0x00af_9b00_0000_ffff), // kernel code, 64-bit, DPL0
        (0x10, 0x00cf_9300_0000_ffff), // kernel data
        (0x18, 0x00cf_f300_0000_ffff), // user data, DPL3
        (0x20, 0x00af_fb00_0000_ffff), // user code, 64-bit, DPL3
    ];
    for (off, d) in descriptors {
        k.mov(rax, d)?;
        k.mov(qword_ptr(GDT + off), rax)?;
    }
    // The TSS descriptor from the TSS's base: limit 0x67, type 9 (available 64-bit TSS), P.
    k.mov(rax, TSS)?;
    k.mov(rdx, rax)?;
    k.and(edx, 0xff_ffff)?;
    k.shl(rdx, 16)?;
    k.or(rdx, 0x67)?;
    k.mov(rcx, 0x89u64 << 40)?;
    k.or(rdx, rcx)?;
    k.mov(rcx, rax)?;
    k.shr(rcx, 24)?;
    k.and(ecx, 0xff)?;
    k.shl(rcx, 56)?;
    k.or(rdx, rcx)?;
    k.mov(qword_ptr(GDT + u64::from(TSS_SEL)), rdx)?;
    k.shr(rax, 32)?;
    k.mov(qword_ptr(GDT + u64::from(TSS_SEL) + 8), rax)?;
    // The TSS: zeroed, RSP0, IST1, no I/O bitmap.
    k.mov(rdi, TSS)?;
    k.xor(eax, eax)?;
    k.mov(ecx, 13)?;
    k.rep().stosq()?;
    k.mov(qword_ptr(TSS + 4), RSP0_TOP as i32)?;
    k.mov(qword_ptr(TSS + 0x24), IST1_TOP as i32)?;
    k.mov(word_ptr(TSS + 0x66), 0x68u32)?;
    // Load GDTR, reload CS with a far return, the data segments, TR.
    k.mov(word_ptr(KV_GDTR), (u64::from(TSS_SEL) + 15) as u32)?;
    k.mov(qword_ptr(KV_GDTR + 2), GDT as i32)?;
    k.lgdt(ptr(KV_GDTR))?;
    let mut reloaded = k.create_label();
    k.push(i32::from(KERNEL_CS))?;
    k.lea(rax, ptr(reloaded))?;
    k.push(rax)?;
    k.add_instruction(Instruction::with(Code::Retfq))?;
    k.set_label(&mut reloaded)?;
    k.mov(eax, u32::from(KERNEL_DS))?;
    k.mov(ds, ax)?;
    k.mov(es, ax)?;
    k.mov(ss, ax)?;
    k.xor(eax, eax)?;
    k.mov(fs, ax)?;
    k.mov(gs, ax)?;
    k.mov(eax, u32::from(TSS_SEL))?;
    k.ltr(ax)?;
    Ok(())
}

/// IDT: every vector to the catch-all, then the exceptions, the timer, IRQ7.
fn idt(k: &mut Asm, l: &KernelLabels) -> R {
    k.xor(ebx, ebx)?;
    k.lea(r12, ptr(l.unexpected))?;
    let mut fill = k.create_label();
    k.set_label(&mut fill)?;
    k.mov(edi, ebx)?;
    k.mov(rsi, r12)?;
    k.xor(edx, edx)?;
    k.call(l.set_gate)?;
    k.inc(ebx)?;
    k.cmp(ebx, 256)?;
    k.jb(fill)?;
    for (v, stub) in l.stubs.iter().enumerate() {
        k.mov(edi, v as u32)?;
        k.lea(rsi, ptr(*stub))?;
        k.mov(edx, u32::from(v == 8))?; // #DF on IST1
        k.call(l.set_gate)?;
    }
    for (v, handler) in [(0x20u32, l.timer), (0x27, l.spurious)] {
        k.mov(edi, v)?;
        k.lea(rsi, ptr(handler))?;
        k.xor(edx, edx)?;
        k.call(l.set_gate)?;
    }
    k.mov(word_ptr(KV_IDTR), 0xfffu32)?;
    k.mov(qword_ptr(KV_IDTR + 2), IDT as i32)?;
    k.lidt(ptr(KV_IDTR))?;
    Ok(())
}

/// Page tables (the upper levels of the kernel's half are supervisor-only too), then
/// EFER.NXE/SCE, CR3, CR0.WP and CR4.SMEP/SMAP as CPUID allows; the control registers printed.
fn page_tables_and_protection(k: &mut Asm, l: &KernelLabels) -> R {
    k.mov(rdi, PT_POOL)?;
    k.xor(eax, eax)?;
    k.mov(ecx, ((PT_POOL_END - PT_POOL) / 8) as u32)?;
    k.rep().stosq()?;
    k.mov(qword_ptr(PML4), (PDPT | P | RW | US) as i32)?;
    k.mov(qword_ptr(PDPT), (PD | P | RW | US) as i32)?;
    k.mov(qword_ptr(PD), (PT_LOW | P | RW) as i32)?;
    k.mov(
        qword_ptr(PD + 8 * (UCODE >> 21)),
        (PT_USER | P | RW | US) as i32,
    )?;
    for (pt, start, end, flags) in [
        (PT_LOW, KDATA, KDATA_END, P | RW | NX),
        (PT_LOW, PT_POOL, PT_POOL_END, P | RW | NX),
        (PT_LOW, KCODE, KCODE + KCODE_MAX, P),
        (PT_USER, UCODE, UCODE + UCODE_MAX, P | US),
        (PT_USER, UDATA, UDATA_END, P | RW | US | NX),
    ] {
        k.mov(rdi, pt)?;
        k.mov(rsi, start)?;
        k.mov(rdx, end)?;
        k.mov(rcx, flags)?;
        k.call(l.map_pages)?;
    }
    // EFER.NXE (the tables use NX) and SCE, then CR3, CR0.WP, CR4.SMEP/SMAP as CPUID allows.
    k.mov(ecx, msr::EFER)?;
    k.rdmsr()?;
    k.or(eax, 0x801)?;
    k.wrmsr()?;
    k.mov(rax, PML4)?;
    k.mov(cr3, rax)?;
    k.mov(rax, cr0)?;
    k.bts(rax, 16)?;
    k.mov(cr0, rax)?;
    k.mov(rax, cr4)?;
    k.mov(edx, dword_ptr(KV_LEAF7_EBX))?;
    let mut no_smep = k.create_label();
    let mut no_smap = k.create_label();
    k.bt(edx, 7)?;
    k.jnc(no_smep)?;
    k.bts(rax, 20)?;
    k.set_label(&mut no_smep)?;
    k.bt(edx, 20)?;
    k.jnc(no_smap)?;
    k.bts(rax, 21)?;
    k.mov(byte_ptr(KV_SMAP), 1)?;
    k.set_label(&mut no_smap)?;
    k.mov(cr4, rax)?;
    k.mov(rbx, cr0)?;
    k.mov(rbp, cr3)?;
    k.mov(r12, cr4)?;
    k.mov(ecx, msr::EFER)?;
    k.rdmsr()?;
    k.mov(r13d, eax)?;
    k.kprint(
        l.kputs,
        &[
            Text("kernel: own GDT, TSS, IDT and page tables loaded: CR0 "),
            Hex(Reg(rbx)),
            Text(" CR3 "),
            Hex(Reg(rbp)),
            Text(" CR4 "),
            Hex(Reg(r12)),
            Text(" EFER "),
            Hex(Reg(r13)),
            Text("\n"),
        ],
    )?;
    Ok(())
}

/// SYSCALL: STAR (kernel CS 0x08 / SS 0x10, SYSRET CS 0x23 / SS 0x1b), LSTAR, SFMASK.
fn syscall_msrs(k: &mut Asm, l: &KernelLabels) -> R {
    k.xor(eax, eax)?;
    k.mov(edx, (u32::from(KERNEL_DS) << 16) | u32::from(KERNEL_CS))?;
    k.wrmsr_ecx(msr::STAR)?;
    k.lea(rax, ptr(l.syscall_entry))?;
    k.mov(rdx, rax)?;
    k.shr(rdx, 32)?;
    k.wrmsr_ecx(msr::LSTAR)?;
    k.mov(eax, SFMASK)?;
    k.xor(edx, edx)?;
    k.wrmsr_ecx(msr::SFMASK)?;
    Ok(())
}

/// The 8259 pair and 8254 channel 0, then a line saying how they are set.
fn pic_and_pit(k: &mut Asm, l: &KernelLabels) -> R {
    // ---- 8259 pair: ICW1-4 (vectors 0x20 and 0x28, cascade on IR2, 8086 mode), only IRQ0.
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ] {
        k.outb(port, v)?;
    }
    // ---- 8254 channel 0: LSB then MSB, mode 2 (rate generator), binary.
    k.outb(0x43, 0x34)?;
    k.outb(0x40, PIT_DIVISOR as u8)?;
    k.outb(0x40, (PIT_DIVISOR >> 8) as u8)?;
    let hz = format!(
        "kernel: 8259 PIC at vectors 0x20-0x2f (IRQ0 unmasked), 8254 PIT channel 0 at {} Hz; idling for {BOOT_TICKS} ticks\n",
        crate::machine::devices::pit::PIT_FREQ_HZ / u64::from(PIT_DIVISOR)
    );
    k.kprint(l.kputs, &[Text(&hz)])?;
    Ok(())
}

/// Idle until [`BOOT_TICKS`] ticks, then enter CPL3 at [`UCODE`].
fn idle_then_enter_user(k: &mut Asm, l: &KernelLabels) -> R {
    // ---- Idle until BOOT_TICKS ticks: STI;HLT (the STI shadow covers the HLT), CLI, check.
    let mut idle = k.create_label();
    let mut idle_done = k.create_label();
    k.set_label(&mut idle)?;
    k.cmp(qword_ptr(KV_TICKS), BOOT_TICKS as i32)?;
    k.jae(idle_done)?;
    k.sti()?;
    k.hlt()?;
    k.cli()?;
    k.jmp(idle)?;
    k.set_label(&mut idle_done)?;
    k.kprint(
        l.kputs,
        &[
            Text("kernel: "),
            Dec(Abs(KV_TICKS)),
            Text(" timer ticks while idle; entering user mode\n"),
        ],
    )?;

    // ---- Enter CPL3 through IRETQ, interrupts on.
    k.rdtsc64()?;
    k.mov(qword_ptr(KV_TSC_ENTER), rax)?;
    k.push(i32::from(USER_DS))?;
    k.push(USTACK_TOP as i32)?;
    k.push((rflags::FIXED1 | rflags::IF) as i32)?;
    k.push(i32::from(USER_CS))?;
    k.push(UCODE as i32)?;
    k.iretq()?;
    Ok(())
}

/// Subroutines `kputc` and `kputs`: polled output to COM1.
fn console_output(k: &mut Asm, l: &mut KernelLabels) -> R {
    // kputc(AL): wait for LSR.THRE, then THR. Preserves everything.
    k.set_label(&mut l.kputc)?;
    k.push(rdx)?;
    k.push(rax)?;
    let mut wait = k.create_label();
    k.set_label(&mut wait)?;
    k.mov(dx, u32::from(COM1 + 5))?;
    k.in_(al, dx)?;
    k.test(al, 0x20)?;
    k.jz(wait)?;
    k.pop(rax)?;
    k.mov(dx, u32::from(COM1))?;
    k.out(dx, al)?;
    k.pop(rdx)?;
    k.ret()?;
    // kputs(RSI, RCX bytes). Clobbers RAX, RCX, RSI.
    k.set_label(&mut l.kputs)?;
    let mut puts_done = k.create_label();
    let mut puts_loop = k.create_label();
    k.test(rcx, rcx)?;
    k.jz(puts_done)?;
    k.set_label(&mut puts_loop)?;
    k.lodsb()?;
    k.call(l.kputc)?;
    k.dec(rcx)?;
    k.jnz(puts_loop)?;
    k.set_label(&mut puts_done)?;
    k.ret()?;
    Ok(())
}

/// Subroutine `set_gate`: a 64-bit interrupt gate, DPL0.
fn set_gate(k: &mut Asm, l: &mut KernelLabels) -> R {
    // set_gate(EDI = vector, RSI = handler, EDX = IST): a 64-bit interrupt gate, DPL0.
    k.set_label(&mut l.set_gate)?;
    k.mov(rax, rsi)?;
    k.and(eax, 0xffff)?;
    k.or(rax, i32::from(KERNEL_CS) << 16)?;
    k.mov(ecx, edx)?;
    k.and(ecx, 7)?;
    k.shl(rcx, 32)?;
    k.or(rax, rcx)?;
    k.mov(rcx, 0x8eu64 << 40)?; // P, DPL0, type 0xe
    k.or(rax, rcx)?;
    k.mov(rcx, rsi)?;
    k.shr(rcx, 16)?;
    k.and(ecx, 0xffff)?;
    k.shl(rcx, 48)?;
    k.or(rax, rcx)?;
    k.movzx(ecx, dil)?;
    k.shl(ecx, 4)?;
    k.mov(qword_ptr(rcx + IDT as i32), rax)?;
    k.mov(rax, rsi)?;
    k.shr(rax, 32)?;
    k.mov(qword_ptr(rcx + (IDT + 8) as i32), rax)?;
    k.ret()?;
    Ok(())
}

/// Subroutine `map_pages`: identity-map 4 KiB pages.
fn map_pages(k: &mut Asm, l: &mut KernelLabels) -> R {
    // map_pages(RDI = page table, RSI = start, RDX = end, RCX = flags): identity 4 KiB pages.
    k.set_label(&mut l.map_pages)?;
    let mut map_done = k.create_label();
    k.cmp(rsi, rdx)?;
    k.jae(map_done)?;
    k.mov(rax, rsi)?;
    k.shr(rax, 12)?;
    k.and(eax, 511)?;
    k.mov(r8, rsi)?;
    k.or(r8, rcx)?;
    k.mov(qword_ptr(rdi + rax * 8), r8)?;
    k.add(rsi, 4096)?;
    k.jmp(l.map_pages)?;
    k.set_label(&mut map_done)?;
    k.ret()?;
    Ok(())
}
