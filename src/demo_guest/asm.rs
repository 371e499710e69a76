//! The demo guest's assembler: iced-x86's `CodeAssembler` with a string pool, the formatting
//! routines both privilege levels link in (decimal, signed decimal, hex, string copy), and the
//! small instruction sequences the kernel and user program share (print a line, RDTSC, port
//! output, WRMSR, halting).

use super::{DEBUG_EXIT, KV_BUF, SYS_WRITE, ULINE};
use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

pub(super) type R = Result<(), IcedError>;

/// Where a value to print comes from.
#[derive(Clone, Copy)]
pub(super) enum Src {
    Reg(AsmRegister64),
    /// A qword at an absolute address.
    Abs(u64),
    /// A qword at RSP + offset.
    Stack(i32),
}

/// One piece of a printed line.
#[derive(Clone, Copy)]
pub(super) enum Part<'a> {
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
pub(super) struct Asm {
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
    pub(super) fn new() -> Result<Asm, IcedError> {
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
    pub(super) fn text(&mut self, s: &str) -> CodeLabel {
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
    pub(super) fn format(&mut self, buf: u64, parts: &[Part]) -> R {
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
    pub(super) fn finish(mut self, ip: u64) -> Result<Vec<u8>, IcedError> {
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

/// Instruction sequences the kernel and the user program share.
impl Asm {
    /// Print `parts` on COM1 (clobbers RAX, RCX, RDX, RSI, RDI, R8).
    pub(super) fn kprint(&mut self, kputs: CodeLabel, parts: &[Part]) -> R {
        self.format(KV_BUF, parts)?;
        self.a.mov(rcx, rdi)?;
        self.a.mov(rsi, KV_BUF)?;
        self.a.sub(rcx, rsi)?;
        self.a.call(kputs)
    }

    /// `write(1, line)` from user mode (clobbers RAX, RCX, RDX, RSI, RDI, R8, R11).
    pub(super) fn uprint(&mut self, parts: &[Part]) -> R {
        self.format(ULINE, parts)?;
        self.a.mov(rsi, rdi)?;
        self.a.mov(rdi, ULINE)?;
        self.a.sub(rsi, rdi)?;
        self.a.mov(eax, SYS_WRITE as u32)?;
        self.a.syscall()
    }

    /// RDTSC into RAX as one 64-bit value (clobbers RDX).
    pub(super) fn rdtsc64(&mut self) -> R {
        self.a.rdtsc()?;
        self.a.shl(rdx, 32)?;
        self.a.or(rax, rdx)
    }

    /// OUT port <- byte value (clobbers AL, and DX for ports above 0xff).
    pub(super) fn outb(&mut self, port: u16, value: u8) -> R {
        self.a.mov(al, u32::from(value))?;
        if port > 0xff {
            self.a.mov(dx, u32::from(port))?;
            self.a.out(dx, al)
        } else {
            self.a.out(u32::from(port), al)
        }
    }

    /// WRMSR `msr` <- EDX:EAX already set (loads ECX).
    pub(super) fn wrmsr_ecx(&mut self, msr: u32) -> R {
        self.a.mov(ecx, msr)?;
        self.a.wrmsr()
    }

    /// End the run through isa-debug-exit with `code`, and never return.
    pub(super) fn fail(&mut self, code: AsmRegister8) -> R {
        if code != al {
            self.a.mov(al, code)?;
        }
        self.a.out(DEBUG_EXIT as u32, al)?;
        self.halt_forever()
    }

    pub(super) fn halt_forever(&mut self) -> R {
        let mut l = self.a.create_label();
        self.a.set_label(&mut l)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(l)
    }
}
