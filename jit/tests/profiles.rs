//! The behaviour profiles (`docs/PROFILES.md`): each rule of `KrrCompat` and `Intel`, and the
//! host's results where the profiles leave them alone, in every tier with identical results.
//!
//! Flags: one user-mode snippet per profile runs a few hundred cases of MUL/IMUL, the shifts
//! and BSF/BSR, each from its own operands and RFLAGS (through POPFQ, so blocks of every
//! length see lazy and concrete flags), and records RAX, RDX, the pushed RFLAGS and five SETcc
//! results; a model written here from the rules says what each must be. Events and XSAVE run
//! in the small whole-system machine of `common`.

mod common;
mod splitmix;

use common::*;
use iced_x86::code_asm::*;
use krr_jit::snippet::{run_snippet_with, Region, Snippet, SnippetEnd, SnippetOptions, UserState};
use krr_jit::Profile;
use krr_runtime::arch::rflags::{self, AF, ARITH, CF, IF, OF, PF, RF, SF, ZF};
use krr_runtime::arch::vector::{BP, DB, DE, GP, PF as PF_VEC, UD};
use splitmix::SplitMix;

const CODE: u64 = 0x0100_0000;
const OUT: u64 = 0x3000_0000;
const STACK: u64 = 0x2000_0000;
/// Bytes of results per case: RAX, RDX, pushed RFLAGS, SETO/SETZ/SETS/SETB/SETP.
const STRIDE: u64 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Mul,
    Imul1,
    Imul2,
    Imul3(i32),
    /// A shift by an immediate (`Some`) or by CL.
    Shl(Option<u8>),
    Sal(Option<u8>),
    Shr(Option<u8>),
    Sar(Option<u8>),
    Bsf,
    Bsr,
    Rol(Option<u8>),
    Ror(Option<u8>),
    Rcl(Option<u8>),
    Rcr(Option<u8>),
    Tzcnt,
    Lzcnt,
    /// SHLD/SHRD RAX, RBX by an immediate or CL.
    Shld(Option<u8>),
    Shrd(Option<u8>),
}

#[derive(Clone, Copy, Debug)]
struct Case {
    form: Form,
    size: u32,
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    flags: u64,
}

/// A value biased towards zero, small values and the edges of `size`-byte operands.
fn value(rng: &mut SplitMix, size: u32) -> u64 {
    let r = rng.next();
    let top = 1u64 << (size * 8 - 1);
    match r % 8 {
        0 => 0,
        1 => r >> 60,
        2 => top | (r >> 62),
        3 => top >> (r % 4),
        4 => 1u64 << (r % 64),
        _ => rng.next(),
    }
}

fn mask(size: u32) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (size * 8)) - 1
    }
}

fn msb(v: u64, size: u32) -> bool {
    v >> (size * 8 - 1) & 1 != 0
}

fn sext(v: u64, size: u32) -> i64 {
    let s = 64 - size * 8;
    ((v << s) as i64) >> s
}

fn bit(on: bool, f: u64) -> u64 {
    if on {
        f
    } else {
        0
    }
}

/// SF, ZF and PF of `res` (`size` bytes).
fn szp(res: u64, size: u32) -> u64 {
    let r = res & mask(size);
    bit(msb(r, size), SF) | bit(r == 0, ZF) | bit((r & 0xff).count_ones().is_multiple_of(2), PF)
}

/// Write `v` to RAX's `size`-byte part as x86 does (32-bit writes zero-extend; AH not used).
fn write_part(old: u64, v: u64, size: u32) -> u64 {
    match size {
        4 => v & 0xffff_ffff,
        8 => v,
        _ => (old & !mask(size)) | (v & mask(size)),
    }
}

/// What the rules say a case leaves in RAX, RDX and the arithmetic flags.
fn model(p: Profile, c: &Case) -> (u64, u64, u64) {
    let (size, m) = (c.size, mask(c.size));
    let (x, y) = (c.rax & m, c.rbx & m);
    let old_flags = c.flags & ARITH;
    match c.form {
        Form::Mul | Form::Imul1 | Form::Imul2 | Form::Imul3(_) => {
            let signed = c.form != Form::Mul;
            // IMUL r, r/m, imm multiplies the source (RBX) by the immediate.
            let (x, y) = match c.form {
                Form::Imul3(imm) => (y, imm as i64 as u64 & m),
                _ => (x, y),
            };
            let (lo, hi, ov) = if signed {
                let p = sext(x, size) as i128 * sext(y, size) as i128;
                let lo = p as u64 & m;
                (
                    lo,
                    (p >> (size * 8)) as u64 & m,
                    p != sext(lo, size) as i128,
                )
            } else {
                let p = x as u128 * y as u128;
                let hi = (p >> (size * 8)) as u64 & m;
                (p as u64 & m, hi, hi != 0)
            };
            let mut f = szp(lo, size) | bit(ov, CF | OF);
            if p != Profile::Host {
                f &= !ZF;
            }
            let (out_rax, out_rdx) = match (c.form, size) {
                (Form::Mul | Form::Imul1, 1) => ((c.rax & !0xffff) | hi << 8 | lo, c.rdx),
                (Form::Mul | Form::Imul1, _) => {
                    (write_part(c.rax, lo, size), write_part(c.rdx, hi, size))
                }
                _ => (write_part(c.rax, lo, size), c.rdx),
            };
            (out_rax, out_rdx, f)
        }
        Form::Shl(imm) | Form::Sal(imm) | Form::Shr(imm) | Form::Sar(imm) => {
            let raw = imm.map_or(c.rcx, u64::from);
            let n = raw & if size == 8 { 63 } else { 31 };
            if n == 0 {
                // Flags unchanged; a 32-bit destination is still written (zero-extended).
                return (write_part(c.rax, x, size), c.rdx, old_flags);
            }
            let w = u64::from(size * 8);
            let (res, cf, of) = match c.form {
                Form::Shl(_) | Form::Sal(_) => {
                    let res = if n >= w { 0 } else { (x << n) & m };
                    let cf = n <= w && (x >> (w - n)) & 1 != 0;
                    let last_step = cf ^ msb(res, size);
                    let of = match p {
                        Profile::Host => last_step,
                        // OF only for a count of one (KRR's TCG).
                        Profile::KrrCompat => n == 1 && last_step,
                        // The first one-bit step's OF (box64's Intel mode).
                        Profile::Intel => first_step_left(x, size),
                    };
                    (res, cf, of)
                }
                Form::Shr(_) => {
                    let res = if n >= w { 0 } else { x >> n };
                    let cf = n - 1 < w && (x >> (n - 1)) & 1 != 0;
                    // OF = MSB of the original operand, whatever the count, in every profile.
                    (res, cf, msb(x, size))
                }
                _ => {
                    let s = sext(x, size);
                    let res = (s >> n.min(63)) as u64 & m;
                    let cf = (s >> (n - 1).min(63)) & 1 != 0;
                    (res, cf, false)
                }
            };
            let f = szp(res, size) | bit(cf, CF) | bit(of, OF);
            (write_part(c.rax, res, size), c.rdx, f)
        }
        Form::Bsf | Form::Bsr => {
            let zero = y == 0;
            let idx = if c.form == Form::Bsf {
                y.trailing_zeros() as u64
            } else {
                63u64.wrapping_sub(y.leading_zeros() as u64)
            };
            let host_dest = if zero {
                c.rax
            } else {
                write_part(c.rax, idx, size)
            };
            match p {
                Profile::Host => {
                    let f = (old_flags & !ZF) | bit(zero, ZF);
                    (host_dest, c.rdx, f)
                }
                Profile::KrrCompat => {
                    // The index or the old register, written at the operand size.
                    let v = if zero { c.rax } else { idx };
                    let dest = write_part(c.rax, v, size);
                    let f = (szp(dest, size) & !ZF) | bit(x == 0, ZF);
                    (dest, c.rdx, f)
                }
                Profile::Intel => {
                    let f = (szp(if zero { 0 } else { idx }, 1) & PF) | bit(zero, ZF);
                    (host_dest, c.rdx, f)
                }
            }
        }
        Form::Rol(imm) | Form::Ror(imm) | Form::Rcl(imm) | Form::Rcr(imm) => {
            let raw = imm.map_or(c.rcx, u64::from);
            let n = raw & if size == 8 { 63 } else { 31 };
            let w = u64::from(size * 8);
            let cin = old_flags & CF != 0;
            let old_of = old_flags & OF != 0;
            if n == 0 {
                return (write_part(c.rax, x, size), c.rdx, old_flags);
            }
            let (res, cf, host_of, through) = match c.form {
                Form::Rol(_) | Form::Ror(_) => {
                    let r = n % w;
                    let res = if matches!(c.form, Form::Rol(_)) {
                        ((x << r) | (x >> ((w - r) % w))) & m
                    } else {
                        ((x >> r) | (x << ((w - r) % w))) & m
                    };
                    if matches!(c.form, Form::Rol(_)) {
                        let cf = res & 1 != 0;
                        (res, cf, msb(res, size) ^ cf, false)
                    } else {
                        let cf = msb(res, size);
                        (res, cf, cf ^ (res >> (w - 2) & 1 != 0), false)
                    }
                }
                _ => {
                    let r = n % (w + 1);
                    let v = (u128::from(cin) << w) | u128::from(x);
                    let wm = (1u128 << (w + 1)) - 1;
                    let v2 = if matches!(c.form, Form::Rcl(_)) {
                        ((v << r) | (v >> ((w + 1 - r) % (w + 1)))) & wm
                    } else {
                        ((v >> r) | (v << ((w + 1 - r) % (w + 1)))) & wm
                    };
                    let res = v2 as u64 & m;
                    let cf = (v2 >> w) & 1 != 0;
                    let of = if matches!(c.form, Form::Rcl(_)) {
                        msb(res, size) ^ cf
                    } else {
                        msb(res, size) ^ (res >> (w - 2) & 1 != 0)
                    };
                    (res, cf, of, r == 0)
                }
            };
            let of = match p {
                Profile::Host | Profile::KrrCompat => host_of,
                Profile::Intel => match c.form {
                    // A register rotated by an immediate above 1 keeps OF.
                    Form::Rol(Some(_)) | Form::Ror(Some(_)) if n > 1 => old_of,
                    _ if through => old_of,
                    Form::Rol(_) | Form::Rcl(_) => first_step_left(x, size),
                    Form::Ror(_) => msb(x, size) ^ (x & 1 != 0),
                    _ => cin ^ msb(x, size),
                },
            };
            let f = (old_flags & !(CF | OF)) | bit(cf, CF) | bit(of, OF);
            (write_part(c.rax, res, size), c.rdx, f)
        }
        Form::Shld(_) | Form::Shrd(_) => double_shift(p, c),
        Form::Tzcnt | Form::Lzcnt => {
            let w = size * 8;
            let res = if c.form == Form::Tzcnt {
                if y == 0 {
                    w
                } else {
                    y.trailing_zeros()
                }
            } else {
                y.leading_zeros() - (64 - w)
            } as u64;
            let cz = bit(y == 0, CF) | bit(res == 0, ZF);
            let f = match p {
                Profile::Intel => cz,
                _ => (old_flags & !(CF | ZF)) | cz,
            };
            (write_part(c.rax, res, size), c.rdx, f)
        }
    }
}

/// SHLD/SHRD (16-bit forms only with counts up to 16, where the result is defined).
fn double_shift(p: Profile, c: &Case) -> (u64, u64, u64) {
    let (size, m) = (c.size, mask(c.size));
    let (x, y) = (c.rax & m, c.rbx & m);
    let w = u64::from(size * 8);
    let left = matches!(c.form, Form::Shld(_));
    let n = match c.form {
        Form::Shld(imm) | Form::Shrd(imm) => imm.map_or(c.rcx, u64::from),
        _ => unreachable!(),
    } & if size == 8 { 63 } else { 31 };
    assert!(size > 2 || n <= 16);
    if n == 0 {
        return (write_part(c.rax, x, size), c.rdx, c.flags & ARITH);
    }
    let (res, cf) = if left {
        let res = ((x << n) | if n == w { y } else { y >> (w - n) }) & m;
        (if n == w { y } else { res }, (x >> (w - n)) & 1 != 0)
    } else {
        let res = ((x >> (n % w)) | if n == w { 0 } else { y << (w - n) }) & m;
        (if n == w { y } else { res }, (x >> (n - 1)) & 1 != 0)
    };
    let of = match p {
        Profile::Intel if left => first_step_left(x, size),
        Profile::Intel => msb(x, size) ^ ((res >> (w - n % w)) & 1 != 0),
        _ => msb(x, size) ^ msb(res, size),
    };
    let f = szp(res, size) | bit(cf, CF) | bit(of, OF);
    (write_part(c.rax, res, size), c.rdx, f)
}

/// OF of a one-bit left shift of `x`: its top two bits differ.
fn first_step_left(x: u64, size: u32) -> bool {
    let w = size * 8;
    (x >> (w - 1) & 1) != (x >> (w - 2) & 1)
}

fn flag_cases() -> Vec<Case> {
    let mut rng = SplitMix(0x9f0f_11e5);
    let mut out = Vec::new();
    let counts = [
        0u64, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255,
    ];
    let mut push = |form: Form, size: u32, rng: &mut SplitMix, n: usize| {
        for i in 0..n {
            let v_rax =
                value(rng, size) | (rng.next().checked_shl(size * 8).unwrap_or(0) & !mask(size));
            let v_rbx = value(rng, size);
            let v_rcx = match form {
                Form::Shl(None)
                | Form::Sal(None)
                | Form::Shr(None)
                | Form::Sar(None)
                | Form::Rol(None)
                | Form::Ror(None)
                | Form::Rcl(None)
                | Form::Rcr(None)
                | Form::Shld(None)
                | Form::Shrd(None) => counts[i % counts.len()],
                _ => rng.next(),
            };
            out.push(Case {
                form,
                size,
                rax: v_rax,
                rbx: v_rbx,
                rcx: v_rcx,
                rdx: rng.next(),
                flags: rng.next() & ARITH,
            });
        }
    };
    for size in [1u32, 2, 4, 8] {
        push(Form::Mul, size, &mut rng, 8);
        push(Form::Imul1, size, &mut rng, 8);
        for imm in [1u8, 2, 3, 5, 8, 31] {
            push(Form::Shl(Some(imm)), size, &mut rng, 2);
            push(Form::Shr(Some(imm)), size, &mut rng, 2);
            push(Form::Sar(Some(imm)), size, &mut rng, 1);
        }
        push(Form::Sal(Some(4)), size, &mut rng, 2);
        push(Form::Shl(None), size, &mut rng, 17);
        push(Form::Sal(None), size, &mut rng, 5);
        push(Form::Shr(None), size, &mut rng, 17);
        push(Form::Sar(None), size, &mut rng, 17);
        for imm in [1u8, 2, 5, 9, 17] {
            push(Form::Rol(Some(imm)), size, &mut rng, 1);
            push(Form::Ror(Some(imm)), size, &mut rng, 1);
            push(Form::Rcl(Some(imm)), size, &mut rng, 1);
            push(Form::Rcr(Some(imm)), size, &mut rng, 1);
        }
        push(Form::Rol(None), size, &mut rng, 17);
        push(Form::Ror(None), size, &mut rng, 17);
        push(Form::Rcl(None), size, &mut rng, 17);
        push(Form::Rcr(None), size, &mut rng, 17);
        if size > 1 {
            for imm in [1u8, 3, 15, 16] {
                push(Form::Shld(Some(imm)), size, &mut rng, 1);
                push(Form::Shrd(Some(imm)), size, &mut rng, 1);
            }
            let n = if size == 2 { 9 } else { 17 };
            push(Form::Shld(None), size, &mut rng, n);
            push(Form::Shrd(None), size, &mut rng, n);
            push(Form::Tzcnt, size, &mut rng, 6);
            push(Form::Lzcnt, size, &mut rng, 6);
            push(Form::Imul2, size, &mut rng, 6);
            push(Form::Imul3(-3), size, &mut rng, 3);
            push(Form::Imul3(0x4000), size, &mut rng, 3);
            push(Form::Bsf, size, &mut rng, 10);
            push(Form::Bsr, size, &mut rng, 10);
        }
    }
    // Zero products (ZF), and BSF/BSR with zero sources and zero old destinations.
    for size in [1u32, 2, 4, 8] {
        let flags = ZF | PF | AF | SF;
        for form in [Form::Mul, Form::Imul1] {
            out.push(Case {
                form,
                size,
                rax: 0xdead_0000_0000_0000 & !mask(size),
                rbx: 7,
                rcx: 0,
                rdx: 1,
                flags,
            });
        }
        if size > 1 {
            for (form, old, src) in [
                (Form::Bsf, 0xffff_ffff_0000_0000u64, 0u64),
                (Form::Bsf, 0x1234_5678_9abc_def0, 0),
                (Form::Bsr, 0x8000_0000_8000_8000, 0),
                (Form::Bsr, 0, 0x10),
                (Form::Bsf, 0, 0x8000),
            ] {
                out.push(Case {
                    form,
                    size,
                    rax: old,
                    rbx: src,
                    rcx: 0,
                    rdx: 0,
                    flags: CF | OF | AF | PF | SF,
                });
            }
        }
    }
    out
}

fn emit(a: &mut CodeAssembler, c: &Case) -> Result<(), IcedError> {
    macro_rules! sized {
        ($size:expr, |$r:ident, $s:ident| $body:expr) => {
            match $size {
                1 => {
                    let ($r, $s) = (al, bl);
                    $body
                }
                2 => {
                    let ($r, $s) = (ax, bx);
                    $body
                }
                4 => {
                    let ($r, $s) = (eax, ebx);
                    $body
                }
                _ => {
                    let ($r, $s) = (rax, rbx);
                    $body
                }
            }
        };
    }
    match c.form {
        Form::Mul => sized!(c.size, |_r, s| a.mul(s)),
        Form::Imul1 => sized!(c.size, |_r, s| a.imul(s)),
        Form::Imul2 => match c.size {
            2 => a.imul_2(ax, bx),
            4 => a.imul_2(eax, ebx),
            _ => a.imul_2(rax, rbx),
        },
        Form::Imul3(imm) => match c.size {
            2 => a.imul_3(ax, bx, imm),
            4 => a.imul_3(eax, ebx, imm),
            _ => a.imul_3(rax, rbx, imm),
        },
        Form::Shl(n)
        | Form::Sal(n)
        | Form::Shr(n)
        | Form::Sar(n)
        | Form::Rol(n)
        | Form::Ror(n)
        | Form::Rcl(n)
        | Form::Rcr(n) => {
            macro_rules! shift {
                ($op:ident) => {
                    match n {
                        Some(k) => sized!(c.size, |r, _s| a.$op(r, k as u32)),
                        None => sized!(c.size, |r, _s| a.$op(r, cl)),
                    }
                };
            }
            match c.form {
                Form::Shl(_) => shift!(shl),
                Form::Sal(_) => shift!(sal),
                Form::Shr(_) => shift!(shr),
                Form::Sar(_) => shift!(sar),
                Form::Rol(_) => shift!(rol),
                Form::Ror(_) => shift!(ror),
                Form::Rcl(_) => shift!(rcl),
                _ => shift!(rcr),
            }
        }
        Form::Bsf => match c.size {
            2 => a.bsf(ax, bx),
            4 => a.bsf(eax, ebx),
            _ => a.bsf(rax, rbx),
        },
        Form::Bsr => match c.size {
            2 => a.bsr(ax, bx),
            4 => a.bsr(eax, ebx),
            _ => a.bsr(rax, rbx),
        },
        Form::Shld(n) | Form::Shrd(n) => {
            let left = matches!(c.form, Form::Shld(_));
            match (c.size, n, left) {
                (2, Some(k), true) => a.shld(ax, bx, k as u32),
                (2, None, true) => a.shld(ax, bx, cl),
                (4, Some(k), true) => a.shld(eax, ebx, k as u32),
                (4, None, true) => a.shld(eax, ebx, cl),
                (_, Some(k), true) => a.shld(rax, rbx, k as u32),
                (_, None, true) => a.shld(rax, rbx, cl),
                (2, Some(k), false) => a.shrd(ax, bx, k as u32),
                (2, None, false) => a.shrd(ax, bx, cl),
                (4, Some(k), false) => a.shrd(eax, ebx, k as u32),
                (4, None, false) => a.shrd(eax, ebx, cl),
                (_, Some(k), false) => a.shrd(rax, rbx, k as u32),
                (_, None, false) => a.shrd(rax, rbx, cl),
            }
        }
        Form::Tzcnt => match c.size {
            2 => a.tzcnt(ax, bx),
            4 => a.tzcnt(eax, ebx),
            _ => a.tzcnt(rax, rbx),
        },
        Form::Lzcnt => match c.size {
            2 => a.lzcnt(ax, bx),
            4 => a.lzcnt(eax, ebx),
            _ => a.lzcnt(rax, rbx),
        },
    }
}

/// One snippet running every case: registers and RFLAGS from the case, the instruction, then
/// its results stored at `OUT + STRIDE * i`.
fn program(cases: &[Case]) -> Vec<u8> {
    assemble(
        |a| {
            a.mov(rdi, OUT)?;
            for (i, c) in cases.iter().enumerate() {
                let o = (STRIDE * i as u64) as i32;
                a.mov(rax, c.rax)?;
                a.mov(rbx, c.rbx)?;
                a.mov(rcx, c.rcx)?;
                a.mov(rdx, c.rdx)?;
                a.push((c.flags | IF | rflags::FIXED1) as i32)?;
                a.popfq()?;
                emit(a, c)?;
                a.pushfq()?;
                a.seto(byte_ptr(rdi + o + 24))?;
                a.sete(byte_ptr(rdi + o + 25))?;
                a.sets(byte_ptr(rdi + o + 26))?;
                a.setb(byte_ptr(rdi + o + 27))?;
                a.setp(byte_ptr(rdi + o + 28))?;
                a.pop(qword_ptr(rdi + o + 16))?;
                a.mov(qword_ptr(rdi + o), rax)?;
                a.mov(qword_ptr(rdi + o + 8), rdx)?;
            }
            Ok(())
        },
        CODE,
    )
}

/// Run `cases` under `profile` in every tier (identical results required) and check each
/// against the model.
fn check_flags(profile: Profile) {
    let cases = flag_cases();
    if profile != Profile::Host {
        let differ = cases
            .iter()
            .filter(|c| model(profile, c) != model(Profile::Host, c))
            .count();
        assert!(
            differ >= 40,
            "{profile}: only {differ} cases tell it from the host"
        );
    }
    let snippet = Snippet {
        code_addr: CODE,
        code: program(&cases),
        regions: vec![
            Region {
                addr: OUT,
                data: vec![0; (STRIDE as usize * cases.len()).next_multiple_of(4096)],
            },
            Region {
                addr: STACK,
                data: vec![0; 4096],
            },
        ],
    };
    let mut init = UserState {
        rip: CODE,
        rflags: IF | rflags::FIXED1,
        ..Default::default()
    };
    init.gpr[4] = STACK + 0x800;
    let opts = SnippetOptions {
        profile,
        ..Default::default()
    };
    let mut reference: Option<Vec<u8>> = None;
    for tier in TIERS {
        let r = run_snippet_with(&snippet, &init, tier, 10_000_000, opts).unwrap();
        assert_eq!(r.outcome, SnippetEnd::Completed, "{profile} {tier:?}");
        let out = r.regions[0].data.clone();
        match &reference {
            None => reference = Some(out),
            Some(first) => assert!(
                *first == out,
                "{profile}: {tier:?} differs from the interpreter"
            ),
        }
    }
    let out = reference.unwrap();
    let q = |o: usize| u64::from_le_bytes(out[o..o + 8].try_into().unwrap());
    for (i, c) in cases.iter().enumerate() {
        let o = STRIDE as usize * i;
        let want = model(profile, c);
        let f = want.2;
        let got = (q(o), q(o + 8), q(o + 16) & ARITH);
        assert_eq!(
            got, want,
            "{profile} case {i} {c:x?}: RAX, RDX, flags {:#x} expected {f:#x}",
            got.2
        );
        let sets = &out[o + 24..o + 29];
        let want = [OF, ZF, SF, CF, PF].map(|b| (f & b != 0) as u8);
        assert_eq!(sets, want, "{profile} case {i} {c:x?}: SETO/Z/S/B/P");
    }
}

#[test]
fn host_flags_are_unchanged() {
    check_flags(Profile::Host);
}

#[test]
fn krr_compat_flags() {
    check_flags(Profile::KrrCompat);
}

#[test]
fn intel_flags() {
    check_flags(Profile::Intel);
}

#[test]
fn profiles_by_name() {
    for p in Profile::ALL {
        assert_eq!(Profile::from_name(p.name()), Some(p));
    }
    assert_eq!(Profile::from_name("krr-compat"), Some(Profile::KrrCompat));
    assert_eq!(Profile::from_name("intel"), Some(Profile::Intel));
    assert_eq!(Profile::from_name("host"), Some(Profile::Host));
    assert_eq!(Profile::from_name("amd"), None);
    assert_eq!(
        krr_jit::EngineConfig::default().profile,
        Profile::Host,
        "the default is the host's semantics"
    );
}

/// The pushed RFLAGS of exceptions and software interrupts (ZF set before each): the SDM's
/// (host, Intel) RF = 1 for faults only, or KRR's: RF = 1 for everything but software
/// interrupts and vectors 1, 3, 4, 8, 18, and ZF = 0 when the frame has an error code.
#[test]
fn exception_frames() {
    for profile in Profile::ALL {
        let r = run_all(
            |k| {
                cases(k, 6, |k, i| {
                    k.mov(rbx, 0x8000_0000_0000_0000u64)?;
                    k.xor(edx, edx)?;
                    k.xor(ecx, ecx)?;
                    k.xor(eax, eax)?; // ZF = 1
                    match i {
                        0 => k.ud2(),
                        1 => k.mov(rax, qword_ptr(rbx)),
                        2 => k.int3(),
                        3 => k.int(0x40),
                        4 => k.div(ecx),
                        _ => k.mov(rax, qword_ptr(TEST_AREA)),
                    }
                })?;
                stop(k)
            },
            |_| Ok(()),
            |m| {
                m.profile = profile;
                for v in [UD, GP, BP, 0x40, DE, PF_VEC] {
                    m.resume_at(v, "next");
                }
            },
        );
        let krr = profile == Profile::KrrCompat;
        // (vector, fault-class, error code)
        let want = [
            (UD, true, false),
            (GP, true, true),
            (BP, false, false),
            (0x40, false, false),
            (DE, true, false),
            (PF_VEC, true, true),
        ];
        assert_eq!(r.events.len(), want.len(), "{profile}: {:#x?}", r.events);
        for (e, (v, fault, code)) in r.events.iter().zip(want) {
            assert_eq!(e.vector, v, "{profile}");
            let rf = fault; // the same in both rules for these vectors
            let zf = !(krr && code);
            assert_eq!(
                e.rflags & (RF | ZF),
                bit(rf, RF) | bit(zf, ZF),
                "{profile} vector {v}: pushed RFLAGS {:#x}",
                e.rflags
            );
            assert_eq!(e.rflags & PF, PF, "{profile} vector {v}: other flags kept");
        }
    }
}

/// INT1 (a #DB trap), an external interrupt and an NMI: the SDM pushes RF as it is (0 here);
/// KRR pushes RF = 1 for the external interrupt and the NMI, not for #DB.
#[test]
fn external_interrupt_and_debug_frames() {
    for profile in Profile::ALL {
        let r = all_tiers(|tier| {
            let mut m = Machine::new(
                |k| {
                    cases(k, 1, |k, _| {
                        k.xor(eax, eax)?;
                        k.int1()
                    })?;
                    k.sti()?;
                    k.xor(eax, eax)?;
                    let mut l = k.create_label();
                    k.set_label(&mut l)?;
                    k.nop()?;
                    k.jmp(l)
                },
                |_| Ok(()),
            );
            m.profile = profile;
            m.resume_at(DB, "next");
            m.action(0x30, 1);
            m.action(2, 0);
            let mut s = m.start(tier);
            s.core.set_icount_limit(200);
            assert_eq!(s.run(), krr_jit::Exit::Budget, "{profile} {tier:?}");
            s.engine.inject_interrupt(&mut s.core, 0x30).unwrap();
            s.core.set_icount_limit(400);
            assert_eq!(s.run(), krr_jit::Exit::Budget, "{profile} {tier:?}");
            s.engine.inject_nmi(&mut s.core).unwrap();
            s.core.set_icount_limit(u64::MAX);
            let exit = s.run();
            s.finish(exit)
        });
        let krr = profile == Profile::KrrCompat;
        let vectors: Vec<u8> = r.events.iter().map(|e| e.vector).collect();
        assert_eq!(vectors, [DB, 0x30, 2], "{profile}");
        for e in &r.events {
            let rf = krr && e.vector != DB;
            assert_eq!(
                e.rflags & (RF | ZF),
                bit(rf, RF) | ZF,
                "{profile} vector {}: pushed RFLAGS {:#x}",
                e.vector,
                e.rflags
            );
        }
    }
}

/// XSAVE/XSAVEOPT/FXSAVE with x87 and SSE enabled. KrrCompat: RFBM without x87 (its bytes and
/// XSTATE_BV bit stay as they were), the MXCSR/MXCSR_MASK slots not written, 0x0000FFFF at
/// offset 0 (FXSAVE: over FCW/FSW, the rest of the x87 image written). Host and Intel: the SDM's
/// layout.
#[test]
fn xsave_mxcsr() {
    const A: u64 = KSCRATCH;
    const B: u64 = KSCRATCH + 0x400;
    const C: u64 = KSCRATCH + 0x800;
    for profile in Profile::ALL {
        let r = run_all(
            |k| {
                k.xor(ecx, ecx)?;
                k.xor(edx, edx)?;
                k.mov(eax, 3)?;
                k.xsetbv()?;
                k.fninit()?;
                k.pcmpeqd(xmm0, xmm0)?;
                k.ldmxcsr(dword_ptr(PARAMS))?;
                k.mov(eax, 3)?;
                k.xsave64(ptr(A))?;
                k.xsaveopt64(ptr(B))?;
                k.fxsave64(ptr(C))?;
                stop(k)
            },
            |_| Ok(()),
            |m| {
                m.profile = profile;
                m.cr4 |= cr4::OSXSAVE;
                m.param(0, 0x1f80 | 0x6000);
                for at in [A, B, C] {
                    m.mem.write(at, &[0xee; 512]).unwrap();
                    m.mem.write(at + 512, &[0; 64]).unwrap();
                }
            },
        );
        let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let bv = |b: &[u8]| u64::from_le_bytes(b[512..520].try_into().unwrap());
        for (name, at) in [("XSAVE", A), ("XSAVEOPT", B)] {
            let a = r.bytes(at, 576);
            assert_eq!(&a[160..176], &[0xff; 16], "{profile} {name}: XMM0 saved");
            if profile == Profile::KrrCompat {
                assert_eq!(u32_at(&a, 0), 0x0000_ffff, "{profile} {name}: offset 0");
                assert_eq!(&a[4..24], &[0xee; 20], "{profile} {name}: no x87");
                assert_eq!(&a[24..32], &[0xee; 8], "{profile} {name}: MXCSR slots");
                assert_eq!(&a[32..160], &[0xee; 128][..], "{profile} {name}: no ST");
                assert_eq!(bv(&a), 2, "{profile} {name}: XSTATE_BV");
            } else {
                assert_eq!(u16_at(&a, 0), 0x037f, "{profile} {name}: FCW");
                assert_eq!(u32_at(&a, 24), 0x7f80, "{profile} {name}: MXCSR");
                assert_eq!(bv(&a), 3, "{profile} {name}: XSTATE_BV");
            }
        }
        let c = r.bytes(C, 512);
        assert_eq!(&c[160..176], &[0xff; 16], "{profile} FXSAVE: XMM0");
        assert_eq!(c[4], 0, "{profile} FXSAVE: abridged FTW written");
        if profile == Profile::KrrCompat {
            assert_eq!(u32_at(&c, 0), 0x0000_ffff, "{profile} FXSAVE: offset 0");
            assert_eq!(&c[24..32], &[0xee; 8], "{profile} FXSAVE: MXCSR slots");
        } else {
            assert_eq!(u16_at(&c, 0), 0x037f, "{profile} FXSAVE: FCW");
            assert_eq!(u32_at(&c, 24), 0x7f80, "{profile} FXSAVE: MXCSR");
        }
        assert_eq!(r.cpu.mxcsr, 0x7f80, "{profile}: MXCSR itself unchanged");
    }
}
