//! The built-in system guest of `krr demo`: a tiny kernel and user program assembled at run
//! time with iced-x86's code assembler (nothing downloaded, no files), run on krr's PC
//! ([`Machine`]) with its real devices.
//!
//! [`load`] plays the boot loader: like the Linux 64-bit boot protocol it leaves the CPU in
//! long mode at CPL0 with interrupts off, a flat boot GDT and boot page tables identity-mapping
//! the first 8 MiB with supervisor 2 MiB pages. From there the guest does everything itself:
//!
//! * kernel (CPL0): initialises COM1; reads CPUID (vendor, leaf 7 for SMEP/SMAP); builds and
//!   loads its own GDT (kernel and user 64-bit code/data, a TSS with RSP0 and IST1), reloads
//!   CS with a far return, loads TR; builds a 256-gate IDT (a reporting stub for each of the 32
//!   exception vectors, #DF on IST1, the PIT timer at 0x20, a spurious-IRQ7 handler, a
//!   catch-all for the rest); builds 4-level page tables (kernel pages supervisor-only with
//!   read-only code and NX data, a user code page and user data/stack pages, page 0 and
//!   everything else unmapped), enables EFER.NXE/SCE, loads CR3, sets CR0.WP and CR4.SMEP/SMAP;
//!   sets STAR/LSTAR/SFMASK for SYSCALL; remaps the 8259 pair to vectors 0x20-0x2f with only
//!   IRQ0 unmasked; starts 8254 channel 0 as a rate generator at about 10 kHz; waits for
//!   [`BOOT_TICKS`] ticks in an STI;HLT idle loop; enters CPL3 through IRETQ.
//! * timer interrupt: counts ticks (and those that interrupted CPL3), EOI to port 0x20.
//! * syscalls (SYSCALL/SYSRET, Linux numbering where one exists): `write(buf, len)` (only from
//!   the user data pages, else -EFAULT; the bytes go to COM1 by polling LSR.THRE, with
//!   STAC/CLAC around the user access), `sleep(ticks)` (STI;HLT until the tick count is
//!   reached, returns the tick count), `time()` (the kernel's RDTSC), `exit(status)`; any
//!   other number returns -ENOSYS.
//! * user (CPL3): for each of [`ROUNDS`] rounds, a sieve of Eratosthenes below
//!   `SIEVE_BASE << round` over a user buffer, the prime count, the largest prime and an
//!   FNV-1a hash of the buffer folded into a checksum, then `sleep(SLEEP_TICKS)` and a `write`
//!   of the round's line (numbers formatted in user mode); then an unknown syscall and a
//!   `write` from a kernel address (both must fail), `time()`, RDTSC at CPL3, and
//!   `exit(checksum)`.
//! * the kernel then prints a report (timer ticks, syscalls, the checksum, the TSC at user
//!   entry and exit) and powers off through the ACPI PM1a control register (SLP_TYP = S5,
//!   SLP_EN), which ends [`Machine::run`] with [`RunEnd::PowerOff`].
//!
//! Any exception prints its vector, name, error code, RIP, CS, RSP and CR2 on COM1 and ends the
//! run through the isa-debug-exit port with status `FAIL_EXCEPTION + vector`
//! ([`RunEnd::DebugExit`]); an unexpected interrupt vector exits with `FAIL_UNEXPECTED`.
//!
//! Everything the guest sees is a function of the instruction count (the TSC and the PIT run
//! on virtual time), so the console text, including the TSC values, is the same in every run
//! and every engine tier.

use crate::machine::{BusCounters, Machine, MachineConfig, RunEnd};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction};
use krr_jit::{EngineConfig, EngineStats};
use krr_runtime::{rflags, DescriptorTable};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Guest RAM.
pub const MEM_BYTES: u64 = 16 << 20;
/// A run that goes past this many instructions has gone wrong.
pub const MAX_INSTRUCTIONS: u64 = 100_000_000;

// Guest-physical layout; the kernel's own tables map it 1:1 (linear = physical).
/// Boot GDT and boot page tables written by [`load`] (the "boot loader"), unmapped later.
const BOOT_GDT: u64 = 0x500;
const BOOT_PML4: u64 = 0x1000;
const BOOT_PDPT: u64 = 0x2000;
const BOOT_PD: u64 = 0x3000;
/// Kernel variables and the kernel's line buffer.
pub const KDATA: u64 = 0x8000;
const KV_TICKS: u64 = KDATA;
const KV_USER_TICKS: u64 = KDATA + 0x08;
const KV_SYSCALLS: u64 = KDATA + 0x10;
const KV_SPURIOUS: u64 = KDATA + 0x18;
const KV_USER_RSP: u64 = KDATA + 0x20;
const KV_EXIT_STATUS: u64 = KDATA + 0x28;
const KV_TSC_ENTER: u64 = KDATA + 0x30;
const KV_TSC_EXIT: u64 = KDATA + 0x38;
const KV_SMAP: u64 = KDATA + 0x40;
const KV_LEAF7_EBX: u64 = KDATA + 0x48;
const KV_GDTR: u64 = KDATA + 0x50;
const KV_IDTR: u64 = KDATA + 0x60;
const KV_VENDOR: u64 = KDATA + 0x70;
const KV_BUF: u64 = KDATA + 0x100;
const GDT: u64 = 0x9000;
const IDT: u64 = 0xa000;
const TSS: u64 = 0xb000;
/// Kernel stack (boot, then SYSCALL), 16 KiB.
const KSTACK_TOP: u64 = 0x10000;
/// TSS.RSP0: interrupts from CPL3.
const RSP0_TOP: u64 = 0x14000;
/// TSS.IST1: #DF.
const IST1_TOP: u64 = 0x16000;
/// Kernel data pages: [KDATA, KDATA_END).
const KDATA_END: u64 = 0x16000;
/// The guest's page tables.
const PT_POOL: u64 = 0x20000;
const PML4: u64 = PT_POOL;
const PDPT: u64 = PT_POOL + 0x1000;
const PD: u64 = PT_POOL + 0x2000;
/// Maps 0..2 MiB (kernel, supervisor-only).
const PT_LOW: u64 = PT_POOL + 0x3000;
/// Maps 4..6 MiB (user).
const PT_USER: u64 = PT_POOL + 0x4000;
const PT_POOL_END: u64 = PT_POOL + 0x5000;
/// Kernel code (and its strings), read-only and executable, supervisor.
pub const KCODE: u64 = 0x10_0000;
const KCODE_MAX: u64 = 0x4000;
/// User code (and its strings): the entry point.
pub const UCODE: u64 = 0x40_0000;
const UCODE_MAX: u64 = 0x2000;
/// User data: the sieve buffer, the line buffer, the stack.
const UDATA: u64 = 0x41_0000;
const UBUF: u64 = UDATA;
const UBUF_SIZE: u64 = 0x1_0000;
const ULINE: u64 = UBUF + UBUF_SIZE;
const USTACK_TOP: u64 = ULINE + 0x5000;
const UDATA_END: u64 = USTACK_TOP;

// Selectors (Linux's order, so that one STAR value serves SYSCALL and SYSRET).
const KERNEL_CS: u16 = 0x08;
const KERNEL_DS: u16 = 0x10;
const USER_DS: u16 = 0x1b;
const USER_CS: u16 = 0x23;
const TSS_SEL: u16 = 0x28;

// Page-table entry bits.
const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;

/// The user program's work: rounds of sieving below `SIEVE_BASE << round`.
pub const ROUNDS: u64 = 4;
pub const SIEVE_BASE: u64 = 8192;
/// PIT channel 0 divisor: 1,193,182 / 119 = about 10 kHz.
pub const PIT_DIVISOR: u16 = 119;
/// Timer ticks the kernel idles for before entering user mode.
pub const BOOT_TICKS: u64 = 3;
/// Timer ticks the user program sleeps for after each round.
pub const SLEEP_TICKS: u64 = 2;

/// Syscall numbers (RAX).
pub const SYS_WRITE: u64 = 1;
pub const SYS_SLEEP: u64 = 35;
pub const SYS_EXIT: u64 = 60;
pub const SYS_TIME: u64 = 201;
/// A number the kernel does not implement.
pub const SYS_BOGUS: u64 = 999;
const ENOSYS: i32 = 38;
const EFAULT: i32 = 14;

/// isa-debug-exit values the guest writes when it fails (the run ends with
/// [`RunEnd::DebugExit`]`((value << 1) | 1)`).
pub const FAIL_EXCEPTION: u8 = 0x40;
pub const FAIL_UNEXPECTED: u8 = 0x3f;

const COM1: u16 = 0x3f8;
const PM1A_CNT: u16 =
    crate::machine::devices::pm::PM_BASE + crate::machine::devices::pm::OFFSET_PM1_CNT;
const PM1_CNT_S5: u16 = (crate::machine::devices::pm::S5_SLP_TYP
    << crate::machine::devices::pm::CNT_SLP_TYP_SHIFT)
    | crate::machine::devices::pm::CNT_SLP_EN;
const DEBUG_EXIT: u16 = crate::machine::devices::debug_exit::DEBUG_EXIT_PORT;

const MSR_EFER: u32 = 0xc000_0080;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SFMASK: u32 = 0xc000_0084;
/// SYSCALL clears TF, DF, IF, IOPL, NT and AC (as Linux does).
const SFMASK: u32 = 0x4_7700;

type R = Result<(), IcedError>;

/// Where a value to print comes from.
#[derive(Clone, Copy)]
enum Src {
    Reg(AsmRegister64),
    /// A qword at an absolute address.
    Abs(u64),
    /// A qword at RSP + offset.
    Stack(i32),
}

/// One piece of a printed line.
#[derive(Clone, Copy)]
enum Part<'a> {
    Text(&'a str),
    /// A NUL-terminated string the register points to.
    Ptr(AsmRegister64),
    Dec(Src),
    SignedDec(Src),
    Hex(Src),
}
use Part::{Dec, Hex, SignedDec, Text};
use Src::{Abs, Reg, Stack};

/// Entry points of the formatting routines (emitted into each privilege level's code).
#[derive(Clone, Copy)]
struct Fmt {
    /// RAX as unsigned decimal.
    dec: CodeLabel,
    /// RAX as signed decimal.
    sdec: CodeLabel,
    /// RAX as `0x` and 16 hex digits.
    hex: CodeLabel,
    /// Copy the NUL-terminated string at RSI.
    str_: CodeLabel,
}

/// An assembler with its string pool and formatting routines.
struct Asm {
    a: CodeAssembler,
    strings: Vec<(CodeLabel, Vec<u8>)>,
    fmt: Fmt,
}

impl std::ops::Deref for Asm {
    type Target = CodeAssembler;
    fn deref(&self) -> &CodeAssembler {
        &self.a
    }
}
impl std::ops::DerefMut for Asm {
    fn deref_mut(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }
}

impl Asm {
    fn new() -> Result<Asm, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let fmt = Fmt {
            dec: a.create_label(),
            sdec: a.create_label(),
            hex: a.create_label(),
            str_: a.create_label(),
        };
        Ok(Asm {
            a,
            strings: Vec::new(),
            fmt,
        })
    }

    /// A label for the NUL-terminated `s`, emitted by [`Asm::finish`].
    fn text(&mut self, s: &str) -> CodeLabel {
        let l = self.a.create_label();
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.strings.push((l, b));
        l
    }

    fn load_rax(&mut self, s: Src) -> R {
        match s {
            Reg(r) => {
                // The formatting routines clobber these.
                debug_assert!(![rax, rcx, rdx, rsi, rdi, r8].contains(&r));
                self.a.mov(rax, r)
            }
            Abs(addr) => self.a.mov(rax, qword_ptr(addr)),
            Stack(off) => self.a.mov(rax, qword_ptr(rsp + off)),
        }
    }

    /// Format `parts` into the buffer at `buf`; RDI ends past the last byte. Clobbers RAX,
    /// RCX, RDX, RSI, RDI, R8.
    fn format(&mut self, buf: u64, parts: &[Part]) -> R {
        let f = self.fmt;
        self.a.mov(rdi, buf)?;
        for p in parts {
            match *p {
                Text(s) => {
                    let l = self.text(s);
                    self.a.lea(rsi, ptr(l))?;
                    self.a.call(f.str_)?;
                }
                Part::Ptr(r) => {
                    self.a.mov(rsi, r)?;
                    self.a.call(f.str_)?;
                }
                Dec(s) => {
                    self.load_rax(s)?;
                    self.a.call(f.dec)?;
                }
                SignedDec(s) => {
                    self.load_rax(s)?;
                    self.a.call(f.sdec)?;
                }
                Hex(s) => {
                    self.load_rax(s)?;
                    self.a.call(f.hex)?;
                }
            }
        }
        Ok(())
    }

    /// The formatting routines (value in RAX or string at RSI, output at RDI, RDI advanced;
    /// clobber RAX, RCX, RDX, RSI, R8) and the string pool. Call once, at the end.
    fn finish(mut self, ip: u64) -> Result<Vec<u8>, IcedError> {
        let mut f = self.fmt;
        let a = &mut self.a;
        // Copy a NUL-terminated string.
        a.set_label(&mut f.str_)?;
        let mut done = a.create_label();
        a.lodsb()?;
        a.test(al, al)?;
        a.jz(done)?;
        a.stosb()?;
        a.jmp(f.str_)?;
        a.set_label(&mut done)?;
        a.ret()?;
        // Signed decimal: a minus sign, then the magnitude.
        a.set_label(&mut f.sdec)?;
        a.test(rax, rax)?;
        a.jns(f.dec)?;
        a.neg(rax)?;
        a.mov(byte_ptr(rdi), b'-' as u32)?;
        a.inc(rdi)?;
        // Unsigned decimal: digits pushed least significant first, popped into the buffer.
        a.set_label(&mut f.dec)?;
        a.mov(ecx, 10)?;
        a.xor(r8d, r8d)?;
        let mut digit = a.create_label();
        a.set_label(&mut digit)?;
        a.xor(edx, edx)?;
        a.div(rcx)?;
        a.add(edx, b'0' as i32)?;
        a.push(rdx)?;
        a.inc(r8)?;
        a.test(rax, rax)?;
        a.jnz(digit)?;
        let mut out = a.create_label();
        a.set_label(&mut out)?;
        a.pop(rax)?;
        a.stosb()?;
        a.dec(r8)?;
        a.jnz(out)?;
        a.ret()?;
        // Hex: "0x" and 16 digits, most significant first.
        a.set_label(&mut f.hex)?;
        a.mov(word_ptr(rdi), 0x7830u32)?; // "0x"
        a.add(rdi, 2)?;
        a.mov(ecx, 16)?;
        let mut nibble = a.create_label();
        let mut decimal = a.create_label();
        a.set_label(&mut nibble)?;
        a.rol(rax, 4)?;
        a.mov(edx, eax)?;
        a.and(edx, 15)?;
        a.cmp(edx, 10)?;
        a.jb(decimal)?;
        a.add(edx, (b'a' - b'0' - 10) as i32)?;
        a.set_label(&mut decimal)?;
        a.add(edx, b'0' as i32)?;
        a.mov(byte_ptr(rdi), dl)?;
        a.inc(rdi)?;
        a.dec(ecx)?;
        a.jnz(nibble)?;
        a.ret()?;
        for (mut l, bytes) in std::mem::take(&mut self.strings) {
            self.a.set_label(&mut l)?;
            self.a.db(&bytes)?;
        }
        let r = self.a.assemble_options(ip, BlockEncoderOptions::NONE)?;
        Ok(r.inner.code_buffer)
    }
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

/// Kernel-side helpers: print a line on COM1.
impl Asm {
    /// Print `parts` on COM1 (clobbers RAX, RCX, RDX, RSI, RDI, R8).
    fn kprint(&mut self, kputs: CodeLabel, parts: &[Part]) -> R {
        self.format(KV_BUF, parts)?;
        self.a.mov(rcx, rdi)?;
        self.a.mov(rsi, KV_BUF)?;
        self.a.sub(rcx, rsi)?;
        self.a.call(kputs)
    }

    /// `write(1, line)` from user mode (clobbers RAX, RCX, RDX, RSI, RDI, R8, R11).
    fn uprint(&mut self, parts: &[Part]) -> R {
        self.format(ULINE, parts)?;
        self.a.mov(rsi, rdi)?;
        self.a.mov(rdi, ULINE)?;
        self.a.sub(rsi, rdi)?;
        self.a.mov(eax, SYS_WRITE as u32)?;
        self.a.syscall()
    }

    /// RDTSC into RAX as one 64-bit value (clobbers RDX).
    fn rdtsc64(&mut self) -> R {
        self.a.rdtsc()?;
        self.a.shl(rdx, 32)?;
        self.a.or(rax, rdx)
    }

    /// OUT port <- byte value (clobbers AL, and DX for ports above 0xff).
    fn outb(&mut self, port: u16, value: u8) -> R {
        self.a.mov(al, u32::from(value))?;
        if port > 0xff {
            self.a.mov(dx, u32::from(port))?;
            self.a.out(dx, al)
        } else {
            self.a.out(u32::from(port), al)
        }
    }

    /// WRMSR `msr` <- EDX:EAX already set (loads ECX).
    fn wrmsr_ecx(&mut self, msr: u32) -> R {
        self.a.mov(ecx, msr)?;
        self.a.wrmsr()
    }

    /// End the run through isa-debug-exit with `code`, and never return.
    fn fail(&mut self, code: AsmRegister8) -> R {
        if code != al {
            self.a.mov(al, code)?;
        }
        self.a.out(DEBUG_EXIT as u32, al)?;
        self.halt_forever()
    }

    fn halt_forever(&mut self) -> R {
        let mut l = self.a.create_label();
        self.a.set_label(&mut l)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(l)
    }
}

/// The kernel, assembled at [`KCODE`].
fn kernel() -> Result<Vec<u8>, IcedError> {
    let mut k = Asm::new()?;
    let mut kputc = k.create_label();
    let mut kputs = k.create_label();
    let mut set_gate = k.create_label();
    let mut map_pages = k.create_label();
    let mut exc_common = k.create_label();
    let mut unexpected = k.create_label();
    let mut timer = k.create_label();
    let mut spurious = k.create_label();
    let mut syscall_entry = k.create_label();
    let mut after_user = k.create_label();
    let mut stubs: Vec<CodeLabel> = (0..32).map(|_| k.create_label()).collect();

    // ---- Boot: stack, serial port.
    k.mov(rsp, KSTACK_TOP)?;
    k.outb(COM1 + 1, 0x00)?; // IER: no UART interrupts
    k.outb(COM1 + 3, 0x80)?; // LCR: DLAB
    k.outb(COM1, 0x01)?; // DLL: 115200 baud
    k.outb(COM1 + 1, 0x00)?; // DLM
    k.outb(COM1 + 3, 0x03)?; // LCR: 8N1
    k.outb(COM1 + 2, 0xc7)?; // FCR: FIFOs on and cleared
    k.outb(COM1 + 4, 0x03)?; // MCR: DTR RTS
    k.kprint(
        kputs,
        &[Text(
            "krr demo guest: kernel started at CPL0 in long mode\n",
        )],
    )?;

    // ---- CPUID: vendor string and leaf 7 (SMEP, SMAP).
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
        kputs,
        &[
            Text("kernel: CPUID vendor "),
            Part::Ptr(r9),
            Text(", leaf 7 EBX "),
            Hex(Abs(KV_LEAF7_EBX)),
            Text("\n"),
        ],
    )?;

    // ---- GDT: null, kernel code/data, user data/code, the TSS (16 bytes).
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

    // ---- IDT: every vector to the catch-all, then the exceptions, the timer, IRQ7.
    k.xor(ebx, ebx)?;
    k.lea(r12, ptr(unexpected))?;
    let mut fill = k.create_label();
    k.set_label(&mut fill)?;
    k.mov(edi, ebx)?;
    k.mov(rsi, r12)?;
    k.xor(edx, edx)?;
    k.call(set_gate)?;
    k.inc(ebx)?;
    k.cmp(ebx, 256)?;
    k.jb(fill)?;
    for (v, stub) in stubs.iter().enumerate() {
        k.mov(edi, v as u32)?;
        k.lea(rsi, ptr(*stub))?;
        k.mov(edx, u32::from(v == 8))?; // #DF on IST1
        k.call(set_gate)?;
    }
    for (v, handler) in [(0x20u32, timer), (0x27, spurious)] {
        k.mov(edi, v)?;
        k.lea(rsi, ptr(handler))?;
        k.xor(edx, edx)?;
        k.call(set_gate)?;
    }
    k.mov(word_ptr(KV_IDTR), 0xfffu32)?;
    k.mov(qword_ptr(KV_IDTR + 2), IDT as i32)?;
    k.lidt(ptr(KV_IDTR))?;

    // ---- Page tables. The upper levels of the kernel's half are supervisor-only too.
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
        k.call(map_pages)?;
    }
    // EFER.NXE (the tables use NX) and SCE, then CR3, CR0.WP, CR4.SMEP/SMAP as CPUID allows.
    k.mov(ecx, MSR_EFER)?;
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
    k.mov(ecx, MSR_EFER)?;
    k.rdmsr()?;
    k.mov(r13d, eax)?;
    k.kprint(
        kputs,
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

    // ---- SYSCALL: STAR (kernel CS 0x08 / SS 0x10, SYSRET CS 0x23 / SS 0x1b), LSTAR, SFMASK.
    k.xor(eax, eax)?;
    k.mov(edx, (u32::from(KERNEL_DS) << 16) | u32::from(KERNEL_CS))?;
    k.wrmsr_ecx(MSR_STAR)?;
    k.lea(rax, ptr(syscall_entry))?;
    k.mov(rdx, rax)?;
    k.shr(rdx, 32)?;
    k.wrmsr_ecx(MSR_LSTAR)?;
    k.mov(eax, SFMASK)?;
    k.xor(edx, edx)?;
    k.wrmsr_ecx(MSR_SFMASK)?;

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
    k.kprint(kputs, &[Text(&hz)])?;

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
        kputs,
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

    // ---- SYSCALL entry: IF is clear (SFMASK); switch to the kernel stack.
    k.set_label(&mut syscall_entry)?;
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
    for (n, l) in [
        (SYS_WRITE, sys_write),
        (SYS_SLEEP, sys_sleep),
        (SYS_TIME, sys_time),
        (SYS_EXIT, sys_exit),
    ] {
        k.cmp(rax, n as i32)?;
        k.je(l)?;
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
    k.call(kputs)?;
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
    k.jmp(after_user)?;

    // ---- After the user program: the report, then power off.
    k.set_label(&mut after_user)?;
    k.mov(rsp, KSTACK_TOP)?;
    k.rdtsc64()?;
    k.mov(qword_ptr(KV_TSC_EXIT), rax)?;
    k.kprint(
        kputs,
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

    // ---- Interrupt and exception handlers.
    // Timer (IRQ0): count, note whether it interrupted CPL3, EOI.
    k.set_label(&mut timer)?;
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
    k.set_label(&mut spurious)?;
    k.inc(qword_ptr(KV_SPURIOUS))?;
    k.iretq()?;
    // Exceptions: each stub pushes a zero error code if the CPU pushes none, then passes its
    // vector (EDI) and name (RSI).
    for (v, stub) in stubs.iter_mut().enumerate() {
        k.set_label(stub)?;
        if !has_error_code(v as u8) {
            k.push(0)?;
        }
        k.mov(edi, v as u32)?;
        let name = k.text(EXCEPTION_NAMES[v]);
        k.lea(rsi, ptr(name))?;
        k.jmp(exc_common)?;
    }
    // Stack: error code, RIP, CS, RFLAGS, RSP, SS.
    k.set_label(&mut exc_common)?;
    k.mov(r12, rdi)?;
    k.mov(r13, rsi)?;
    k.mov(r14, cr2)?;
    k.kprint(
        kputs,
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
    k.set_label(&mut unexpected)?;
    k.kprint(
        kputs,
        &[
            Text("\n*** kernel: unexpected interrupt vector, RIP "),
            Hex(Stack(0)),
            Text("\n"),
        ],
    )?;
    k.mov(al, u32::from(FAIL_UNEXPECTED))?;
    k.fail(al)?;

    // ---- Subroutines.
    // kputc(AL): wait for LSR.THRE, then THR. Preserves everything.
    k.set_label(&mut kputc)?;
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
    k.set_label(&mut kputs)?;
    let mut puts_done = k.create_label();
    let mut puts_loop = k.create_label();
    k.test(rcx, rcx)?;
    k.jz(puts_done)?;
    k.set_label(&mut puts_loop)?;
    k.lodsb()?;
    k.call(kputc)?;
    k.dec(rcx)?;
    k.jnz(puts_loop)?;
    k.set_label(&mut puts_done)?;
    k.ret()?;
    // set_gate(EDI = vector, RSI = handler, EDX = IST): a 64-bit interrupt gate, DPL0.
    k.set_label(&mut set_gate)?;
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
    // map_pages(RDI = page table, RSI = start, RDX = end, RCX = flags): identity 4 KiB pages.
    k.set_label(&mut map_pages)?;
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
    k.jmp(map_pages)?;
    k.set_label(&mut map_done)?;
    k.ret()?;

    k.finish(KCODE)
}

/// The user program, assembled at [`UCODE`] (its entry point).
fn user() -> Result<Vec<u8>, IcedError> {
    let mut u = Asm::new()?;
    let mut sieve = u.create_label();

    u.mov(ebx, cs)?;
    u.and(ebx, 3)?;
    u.uprint(&[Text("user: hello from CPL "), Dec(Reg(rbx)), Text("\n")])?;
    // RDTSC at CPL3 (CR4.TSD is clear).
    u.rdtsc64()?;
    u.mov(r15, rax)?;
    u.xor(r14d, r14d)?; // checksum
    u.xor(r13d, r13d)?; // round
    let mut round = u.create_label();
    u.set_label(&mut round)?;
    u.mov(r12d, SIEVE_BASE as u32)?;
    u.mov(ecx, r13d)?;
    u.shl(r12, cl)?;
    u.call(sieve)?;
    u.mov(r10, rax)?;
    // checksum = rotl(checksum, 13) ^ hash ^ (count << 32 | largest)
    u.rol(r14, 13)?;
    u.xor(r14, r10)?;
    u.mov(rdx, rbx)?;
    u.shl(rdx, 32)?;
    u.or(rdx, rbp)?;
    u.xor(r14, rdx)?;
    u.mov(edi, SLEEP_TICKS as u32)?;
    u.mov(eax, SYS_SLEEP as u32)?;
    u.syscall()?;
    u.mov(r9, rax)?;
    u.uprint(&[
        Text("user: round "),
        Dec(Reg(r13)),
        Text(": sieve below "),
        Dec(Reg(r12)),
        Text(": "),
        Dec(Reg(rbx)),
        Text(" primes, largest "),
        Dec(Reg(rbp)),
        Text(", fnv-1a "),
        Hex(Reg(r10)),
        Text("; slept until tick "),
        Dec(Reg(r9)),
        Text("\n"),
    ])?;
    u.inc(r13)?;
    u.cmp(r13, ROUNDS as i32)?;
    u.jb(round)?;
    // What the kernel must refuse.
    u.mov(eax, SYS_BOGUS as u32)?;
    u.syscall()?;
    u.mov(rbx, rax)?;
    u.mov(edi, KDATA as u32)?;
    u.mov(esi, 16)?;
    u.mov(eax, SYS_WRITE as u32)?;
    u.syscall()?;
    u.mov(rbp, rax)?;
    u.uprint(&[
        Text("user: unknown syscall -> "),
        SignedDec(Reg(rbx)),
        Text(", write from a kernel address -> "),
        SignedDec(Reg(rbp)),
        Text("\n"),
    ])?;
    // The kernel's clock and ours.
    u.mov(eax, SYS_TIME as u32)?;
    u.syscall()?;
    u.mov(r12, rax)?;
    u.rdtsc64()?;
    u.mov(r13, rax)?;
    u.sub(rax, r15)?;
    u.mov(rbx, rax)?;
    u.uprint(&[
        Text("user: rdtsc "),
        Dec(Reg(r15)),
        Text(" at start, "),
        Dec(Reg(r13)),
        Text(" at the end ("),
        Dec(Reg(rbx)),
        Text(" ns of virtual time); kernel time() "),
        Dec(Reg(r12)),
        Text("\n"),
    ])?;
    u.mov(rdi, r14)?;
    u.mov(eax, SYS_EXIT as u32)?;
    u.syscall()?;
    u.ud2()?;

    // sieve(R12 = n): RBX = primes below n, RBP = the largest, RAX = FNV-1a 64 of buf[..n]
    // read as little-endian qwords. Clobbers RCX, RDX, RSI, RDI.
    u.set_label(&mut sieve)?;
    u.mov(rdi, UBUF)?;
    u.mov(rcx, r12)?;
    u.mov(al, 1)?;
    u.rep().stosb()?;
    u.mov(byte_ptr(UBUF), 0)?;
    u.mov(byte_ptr(UBUF + 1), 0)?;
    u.mov(esi, 2)?;
    let mut outer = u.create_label();
    let mut inner = u.create_label();
    let mut next = u.create_label();
    let mut sieved = u.create_label();
    u.set_label(&mut outer)?;
    u.mov(rax, rsi)?;
    u.imul_2(rax, rsi)?;
    u.cmp(rax, r12)?;
    u.jae(sieved)?;
    u.cmp(byte_ptr(rsi + UBUF as i32), 0)?;
    u.je(next)?;
    u.set_label(&mut inner)?;
    u.mov(byte_ptr(rax + UBUF as i32), 0)?;
    u.add(rax, rsi)?;
    u.cmp(rax, r12)?;
    u.jb(inner)?;
    u.set_label(&mut next)?;
    u.inc(rsi)?;
    u.jmp(outer)?;
    u.set_label(&mut sieved)?;
    u.xor(ebx, ebx)?;
    u.xor(ebp, ebp)?;
    u.lea(rcx, qword_ptr(r12 - 1))?;
    let mut count = u.create_label();
    let mut composite = u.create_label();
    u.set_label(&mut count)?;
    u.movzx(edx, byte_ptr(rcx + UBUF as i32))?;
    u.test(edx, edx)?;
    u.jz(composite)?;
    u.inc(rbx)?;
    u.test(rbp, rbp)?;
    u.cmove(rbp, rcx)?;
    u.set_label(&mut composite)?;
    u.loop_(count)?;
    u.mov(rax, FNV_OFFSET)?;
    u.mov(rdx, FNV_PRIME)?;
    u.mov(rsi, UBUF)?;
    u.mov(rcx, r12)?;
    u.shr(rcx, 3)?;
    let mut hash = u.create_label();
    u.set_label(&mut hash)?;
    u.xor(rax, qword_ptr(rsi))?;
    u.imul_2(rax, rdx)?;
    u.add(rsi, 8)?;
    u.dec(rcx)?;
    u.jnz(hash)?;
    u.ret()?;

    u.finish(UCODE)
}

// The largest sieve fits the buffer, and the hash reads whole qwords.
const _: () = assert!(SIEVE_BASE << (ROUNDS - 1) <= UBUF_SIZE && SIEVE_BASE.is_multiple_of(8));

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// Write the guest into `m.mem` and set `m.cpu` to the boot state: 64-bit mode, CPL0,
/// interrupts off, a flat boot GDT and boot page tables identity-mapping the first 8 MiB
/// (supervisor, 2 MiB pages), RIP at the kernel's entry.
pub fn load(m: &mut Machine) -> Result<(), String> {
    if m.mem.size() < MEM_BYTES {
        return Err(format!(
            "the demo guest needs {} MiB of RAM, the machine has {}",
            MEM_BYTES >> 20,
            m.mem.size() >> 20
        ));
    }
    let kcode = kernel().map_err(|e| format!("assembling the demo kernel: {e}"))?;
    let ucode = user().map_err(|e| format!("assembling the demo user program: {e}"))?;
    if kcode.len() as u64 > KCODE_MAX || ucode.len() as u64 > UCODE_MAX {
        return Err(format!(
            "demo guest code too large: kernel {} bytes (max {KCODE_MAX}), user {} (max {UCODE_MAX})",
            kcode.len(),
            ucode.len()
        ));
    }
    let mem_err = |e: krr_runtime::MemoryError| format!("writing the demo guest: {e}");
    m.mem.write(KCODE, &kcode).map_err(mem_err)?;
    m.mem.write(UCODE, &ucode).map_err(mem_err)?;
    // The boot loader's part: flat GDT (0x08 code, 0x10 data), identity map of 8 MiB.
    for (i, d) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
        .iter()
        .enumerate()
    {
        m.mem
            .write_u64(BOOT_GDT + 8 * i as u64, *d)
            .map_err(mem_err)?;
    }
    for t in [BOOT_PML4, BOOT_PDPT, BOOT_PD] {
        m.mem.write(t, &[0u8; 4096]).map_err(mem_err)?;
    }
    m.mem
        .write_u64(BOOT_PML4, BOOT_PDPT | P | RW)
        .map_err(mem_err)?;
    m.mem
        .write_u64(BOOT_PDPT, BOOT_PD | P | RW)
        .map_err(mem_err)?;
    for i in 0..4u64 {
        m.mem
            .write_u64(BOOT_PD + 8 * i, (i << 21) | P | RW | PS)
            .map_err(mem_err)?;
    }

    crate::machine::linux::enter_flat_long_mode(
        &mut m.cpu,
        DescriptorTable {
            base: BOOT_GDT,
            limit: 23,
        },
        (KERNEL_CS, KERNEL_DS),
        BOOT_PML4,
        KCODE,
    );
    Ok(())
}

/// The console: kept in memory, optionally echoed to stdout as it comes.
#[derive(Clone, Default)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Capture {
    fn text(&self) -> String {
        let b = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        if self.echo {
            std::io::stdout().lock().write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

/// What a run of the demo guest did.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    pub end: RunEnd,
    /// Everything the guest wrote to COM1.
    pub console: String,
    /// Instructions retired.
    pub icount: u64,
    pub counters: BusCounters,
    pub stats: EngineStats,
    pub wall: Duration,
}

impl DemoOutcome {
    /// One line: instructions, interrupts, port IO, RDTSC, wall time, MIPS.
    pub fn summary(&self) -> String {
        let secs = self.wall.as_secs_f64();
        let c = &self.counters;
        format!(
            "{} instructions, {} interrupts delivered, {} port reads, {} port writes, {} RDTSC, {:.3} s, {:.1} MIPS",
            self.icount,
            c.interrupts,
            c.port_in,
            c.port_out,
            c.rdtsc,
            secs,
            self.icount as f64 / secs.max(1e-9) / 1e6
        )
    }
}

/// A machine with the demo guest loaded, and its console.
fn prepare(engine: EngineConfig, echo: bool) -> Result<(Machine, Capture), String> {
    let console = Capture {
        buf: Arc::default(),
        echo,
    };
    let mut m = Machine::new(
        MachineConfig {
            mem_bytes: MEM_BYTES,
            engine,
        },
        Box::new(console.clone()),
    )
    .map_err(|e| e.to_string())?;
    load(&mut m)?;
    Ok((m, console))
}

/// Run `m` to its end (at most [`MAX_INSTRUCTIONS`]).
fn finish(mut m: Machine, console: Capture) -> Result<DemoOutcome, String> {
    let t0 = Instant::now();
    let end = m.run(Some(MAX_INSTRUCTIONS));
    let wall = t0.elapsed();
    let end = end.map_err(|e| {
        format!(
            "the demo guest stopped the machine: {e}; console so far:\n{}",
            console.text()
        )
    })?;
    Ok(DemoOutcome {
        end,
        console: console.text(),
        icount: m.cpu.icount,
        counters: m.board.counters.clone(),
        stats: m.engine.stats.clone(),
        wall,
    })
}

/// Build a machine with `engine`, load the demo guest and run it to its end; with `echo` the
/// guest's console is copied to stdout as it runs.
pub fn run_demo_guest(engine: EngineConfig, echo: bool) -> Result<DemoOutcome, String> {
    let (m, console) = prepare(engine, echo)?;
    finish(m, console)
}

/// Record the demo guest into `path` (run with `engine`, console echoed with `echo`).
pub fn record_demo_guest(
    engine: EngineConfig,
    path: &std::path::Path,
    echo: bool,
) -> Result<(DemoOutcome, crate::record::Recorded), String> {
    let (mut m, console) = prepare(engine, echo)?;
    let t0 = Instant::now();
    let opts = crate::record::RecordOptions {
        path,
        checkpoint_interval: DEMO_CHECKPOINT_INTERVAL,
        guest: "krr's built-in demo guest".to_string(),
        cmdline: String::new(),
        max_instructions: Some(MAX_INSTRUCTIONS),
    };
    let recorded = crate::record::record(&mut m, &opts, &indicatif::ProgressBar::hidden())
        .map_err(|e| {
            format!(
                "recording the demo guest: {e}; console so far:\n{}",
                console.text()
            )
        })?;
    let outcome = DemoOutcome {
        end: recorded.end.clone(),
        console: console.text(),
        icount: m.cpu.icount,
        counters: m.board.counters.clone(),
        stats: m.engine.stats.clone(),
        wall: t0.elapsed(),
    };
    Ok((outcome, recorded))
}

/// Checkpoints in demo traces: often enough that a small guest has a few hundred.
pub const DEMO_CHECKPOINT_INTERVAL: u64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use krr_jit::TierPolicy;

    /// The user program's work, computed here: per round (n, primes below n, the largest,
    /// FNV-1a of the sieve), and the folded checksum.
    fn model() -> (Vec<(u64, u64, u64, u64)>, u64) {
        let mut rounds = Vec::new();
        let mut checksum = 0u64;
        for r in 0..ROUNDS {
            let n = (SIEVE_BASE << r) as usize;
            let mut s = vec![1u8; n];
            s[0] = 0;
            s[1] = 0;
            let mut i = 2;
            while i * i < n {
                if s[i] != 0 {
                    let mut j = i * i;
                    while j < n {
                        s[j] = 0;
                        j += i;
                    }
                }
                i += 1;
            }
            let count = s.iter().filter(|&&b| b != 0).count() as u64;
            let largest = s.iter().rposition(|&b| b != 0).unwrap_or(0) as u64;
            let mut h = FNV_OFFSET;
            for q in s.chunks_exact(8) {
                h ^= u64::from_le_bytes(q.try_into().unwrap());
                h = h.wrapping_mul(FNV_PRIME);
            }
            checksum = checksum.rotate_left(13) ^ h ^ ((count << 32) | largest);
            rounds.push((n as u64, count, largest, h));
        }
        (rounds, checksum)
    }

    /// Syscalls the user program makes: a greeting, a sleep and a write per round, the
    /// unknown one, the refused write and its report, time() and its report, exit.
    fn expected_syscalls() -> u64 {
        1 + 2 * ROUNDS + 3 + 2 + 1
    }

    fn value_after<'a>(console: &'a str, key: &str) -> &'a str {
        let line = console
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no line starting with {key:?} in:\n{console}"));
        line.split([' ', ',']).next().unwrap()
    }

    fn configs() -> [(&'static str, EngineConfig); 4] {
        [
            ("tiered", EngineConfig::default()),
            (
                "single-step",
                EngineConfig {
                    max_block_insns: 1,
                    ..EngineConfig::default()
                },
            ),
            (
                "interpreter",
                EngineConfig {
                    policy: TierPolicy::Interpret,
                    ..EngineConfig::default()
                },
            ),
            (
                "compile-all",
                EngineConfig {
                    policy: TierPolicy::CompileAll,
                    ..EngineConfig::default()
                },
            ),
        ]
    }

    #[test]
    fn demo_guest_runs_identically_in_every_tier() {
        let (rounds, checksum) = model();
        let mut reference: Option<DemoOutcome> = None;
        for (name, cfg) in configs() {
            let o = run_demo_guest(cfg, false).unwrap();
            let c = &o.console;
            assert_eq!(o.end, RunEnd::PowerOff, "{name}: {c}");
            let ticks: u64 = value_after(c, "  timer ticks: ").parse().unwrap();
            assert!(ticks >= BOOT_TICKS + ROUNDS * SLEEP_TICKS, "{name}: {c}");
            let syscalls: u64 = value_after(c, "  syscalls: ").parse().unwrap();
            assert_eq!(syscalls, expected_syscalls(), "{name}: {c}");
            assert_eq!(
                value_after(c, "  checksum: "),
                format!("0x{checksum:016x}"),
                "{name}"
            );
            for (r, (n, count, largest, h)) in rounds.iter().enumerate() {
                let line = format!(
                    "user: round {r}: sieve below {n}: {count} primes, largest {largest}, fnv-1a 0x{h:016x}; slept until tick "
                );
                assert!(c.contains(&line), "{name}: no {line:?} in:\n{c}");
            }
            assert!(c.contains("user: hello from CPL 3\n"), "{name}: {c}");
            assert!(
                c.contains("user: unknown syscall -> -38, write from a kernel address -> -14\n"),
                "{name}: {c}"
            );
            assert!(c.contains("spurious interrupts: 0\n"), "{name}: {c}");
            assert!(!c.contains("***"), "{name}: {c}");
            let k = &o.counters;
            assert!(k.interrupts >= ticks, "{name}: {k:?}");
            assert!(
                k.port_in > 0 && k.port_out > 0 && k.rdtsc > 0,
                "{name}: {k:?}"
            );
            // Large enough for timer interrupts to land in the middle of the user's loops.
            assert!(o.icount > 500_000, "{name}: {}", o.icount);
            let user_ticks: u64 = value_after(c, &format!("  timer ticks: {ticks} ("))
                .parse()
                .unwrap();
            assert!(user_ticks > 0 && user_ticks < ticks, "{name}: {c}");
            match &reference {
                None => reference = Some(o),
                Some(r) => {
                    assert_eq!(r.console, o.console, "console differs: {name}");
                    assert_eq!(r.icount, o.icount, "instruction count differs: {name}");
                    assert_eq!(r.counters.interrupts, k.interrupts, "{name}");
                    assert_eq!(r.counters.port_in, k.port_in, "{name}");
                    assert_eq!(r.counters.port_out, k.port_out, "{name}");
                    assert_eq!(r.counters.rdtsc, k.rdtsc, "{name}");
                }
            }
        }
    }

    /// Replace the user program's first bytes with `code` and run: the kernel's exception
    /// handler must report `what` and fail the run with its vector.
    fn user_fault(code: &[u8], vector: u8, what: &str) {
        for (name, cfg) in configs() {
            let (mut m, console) = prepare(cfg, false).unwrap();
            m.mem.write(UCODE, code).unwrap();
            let o = finish(m, console).unwrap();
            let c = &o.console;
            assert_eq!(
                o.end,
                RunEnd::DebugExit(crate::machine::devices::debug_exit::exit_status(u32::from(
                    FAIL_EXCEPTION + vector
                ))),
                "{name}: {c}"
            );
            let line = format!("\n*** kernel: exception {vector} ({what}");
            assert!(c.contains(&line), "{name}: no {line:?} in:\n{c}");
            assert!(c.contains(&format!(", RIP 0x{UCODE:016x}, CS 0x0000000000000023")));
        }
    }

    #[test]
    fn user_ud2_is_reported() {
        user_fault(
            &[0x0f, 0x0b],
            6,
            "#UD invalid opcode), error code 0x0000000000000000",
        );
    }

    #[test]
    fn user_read_of_kernel_page_is_a_page_fault() {
        // mov rax, [KDATA]: present, read, user -> error code 5.
        let mut code = vec![0x48, 0x8b, 0x04, 0x25];
        code.extend_from_slice(&(KDATA as u32).to_le_bytes());
        user_fault(&code, 14, "#PF page fault), error code 0x0000000000000005");
    }

    #[test]
    fn user_port_io_is_a_general_protection_fault() {
        // out dx, al at CPL3 with IOPL 0.
        user_fault(
            &[0xee],
            13,
            "#GP general protection), error code 0x0000000000000000",
        );
    }
}
