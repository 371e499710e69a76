//! The demo's user program (CPL3), assembled at [`UCODE`]: [`ROUNDS`] rounds of a sieve with
//! a sleep and a line each, the syscalls the kernel must refuse, the clocks, and `exit` with
//! the checksum.

use super::asm::{Asm, Part, Src, R};
use super::*;
use iced_x86::code_asm::*;
use Part::{Dec, Hex, SignedDec, Text};
use Src::Reg;

/// The user program, assembled at [`UCODE`] (its entry point).
pub(super) fn user() -> Result<Vec<u8>, IcedError> {
    let mut u = Asm::new()?;
    let mut sieve = u.create_label();
    main_program(&mut u, sieve)?;
    sieve_subroutine(&mut u, &mut sieve)?;
    u.finish(UCODE)
}

/// The program from its entry point to `exit`; `sieve` is [`sieve_subroutine`].
fn main_program(u: &mut Asm, sieve: CodeLabel) -> R {
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
    Ok(())
}

/// sieve(R12 = n): RBX = primes below n, RBP = the largest, RAX = FNV-1a 64 of buf[..n]
/// read as little-endian qwords. Clobbers RCX, RDX, RSI, RDI.
fn sieve_subroutine(u: &mut Asm, sieve: &mut CodeLabel) -> R {
    u.set_label(sieve)?;
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
    Ok(())
}

// The largest sieve fits the buffer, and the hash reads whole qwords.
const _: () = assert!(SIEVE_BASE << (ROUNDS - 1) <= UBUF_SIZE && SIEVE_BASE.is_multiple_of(8));

pub(super) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(super) const FNV_PRIME: u64 = 0x100_0000_01b3;
