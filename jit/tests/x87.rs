//! x87 instructions against the host CPU, in every engine tier.
//!
//! Each program starts from FNINIT (and the control word the case gives), works on the
//! case's inputs at [rsi] (f64 a at 0, f64 b at 8, an 80-bit value at 16, i32 at 32, i64 at
//! 40, i16 at 48, packed BCD at 64), stores its results at [rsi + 128 ..] and ends with
//! FXSAVE64 at [rsi + 512]. It runs natively (the same bytes in an executable page, the
//! host's x87 state saved around it) and in the engine's four tiers; the results and the x87
//! part of the FXSAVE image (control, status, abridged tag word, ST0-7) must be the host's.
//! FOP/FIP/FDP are left out: the host's are the addresses of its copy of the code.

use iced_x86::code_asm::*;
use krr_jit::snippet::*;

mod common;
use common::assemble;

const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];
const CODE_ADDR: u64 = 0x1000_0000;
const DATA: u64 = 0x2000_0000;
const BUF: usize = 1024;

#[repr(C, align(64))]
struct Buf([u8; BUF]);

type Prog = fn(&mut CodeAssembler) -> Result<(), IcedError>;

/// Run `code` (ending in `ret`) natively with RSI = the buffer.
fn native(code: &[u8], buf: &mut Buf) {
    let mut m = memmap2::MmapMut::map_anon(4096).unwrap();
    m[..code.len()].copy_from_slice(code);
    m[code.len()] = 0xc3;
    let exec = m.make_exec().unwrap();
    let mut host = Buf([0; BUF]);
    // SAFETY: a test: the code is one of this file's programs (x87 work on [rsi .. rsi +
    // 1024) and a final FXSAVE64 there, then ret); the host's x87/SSE state is saved before
    // and restored after; every register the programs use is declared clobbered.
    unsafe {
        std::arch::asm!(
            "fxsave64 [{host}]",
            "call {f}",
            "fxrstor64 [{host}]",
            host = in(reg) host.0.as_mut_ptr(),
            f = in(reg) exec.as_ptr(),
            in("rsi") buf.0.as_mut_ptr(),
            out("rax") _, out("rcx") _, out("rdx") _, out("r10") _, out("r11") _,
        );
    }
}

/// What the test compares: results and the FXSAVE image's x87 part.
fn observed(b: &[u8]) -> String {
    let hex = |s: &[u8]| s.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let fx = &b[512..];
    let mut s = format!(
        "results {}\nfcw {} fsw {} ftw {}",
        hex(&b[128..256]),
        hex(&fx[0..2]),
        hex(&fx[2..4]),
        hex(&fx[4..5])
    );
    for i in 0..8 {
        s += &format!("\nst{i} {}", hex(&fx[32 + 16 * i..42 + 16 * i]));
    }
    s
}

struct Case {
    a: f64,
    b: f64,
    t: [u8; 10],
    i32: i32,
    i64: i64,
    fcw: u16,
}

fn f80(mant: u64, sign_exp: u16) -> [u8; 10] {
    let mut t = [0u8; 10];
    t[..8].copy_from_slice(&mant.to_le_bytes());
    t[8..].copy_from_slice(&sign_exp.to_le_bytes());
    t
}

fn cases() -> Vec<Case> {
    let t1 = f80(0xc90f_daa2_2168_c235, 0x4000); // pi
    let den = f80(0x0000_0000_0000_1234, 0x0000); // a denormal
    let nan = f80(0xc000_0000_0000_0001, 0x7fff); // a quiet NaN
    let big = f80(0xffff_ffff_ffff_ffff, 0x7ffe); // the largest finite
    let mut v = Vec::new();
    let pairs = [
        (1.5, 2.25),
        (-3.0, 7.0),
        (1e300, 1e-300),
        (0.0, -0.0),
        (f64::INFINITY, 2.0),
        (f64::NAN, 1.0),
        (5e-324, 3.0),
        (0.1, 0.7),
        (-1.0, 0.0),
        (123456789.123, -0.000321),
    ];
    for (k, &(a, b)) in pairs.iter().enumerate() {
        for &fcw in &[0x037f_u16, 0x0f7f, 0x077f, 0x007f, 0x027f, 0x0b7f] {
            v.push(Case {
                a,
                b,
                t: [t1, den, nan, big][k % 4],
                i32: [7, -123456, i32::MIN, 0][k % 4],
                i64: [1 << 40, -5, i64::MAX, 99][k % 4],
                fcw,
            });
        }
    }
    v
}

fn input(c: &Case) -> Buf {
    let mut b = Buf([0; BUF]);
    b.0[0..8].copy_from_slice(&c.a.to_le_bytes());
    b.0[8..16].copy_from_slice(&c.b.to_le_bytes());
    b.0[16..26].copy_from_slice(&c.t);
    b.0[32..36].copy_from_slice(&c.i32.to_le_bytes());
    b.0[40..48].copy_from_slice(&c.i64.to_le_bytes());
    b.0[48..50].copy_from_slice(&(c.i32 as i16).to_le_bytes());
    b.0[64..74].copy_from_slice(&[0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0, 0, 0x80]);
    b.0[80..82].copy_from_slice(&c.fcw.to_le_bytes());
    b
}

/// The prologue: FNINIT and the case's control word.
fn start(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.fninit()?;
    a.fldcw(word_ptr(rsi + 80))
}

fn end(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.fxsave64(ptr(rsi + 512))
}

/// User mode at the program, RSI at the data.
fn initial_state() -> UserState {
    let mut state = UserState {
        rip: CODE_ADDR,
        rflags: 0x202,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    state.gpr[6] = DATA;
    state
}

fn check(name: &str, prog: Prog) {
    let code = assemble(
        |a| {
            start(a)?;
            prog(a)?;
            end(a)
        },
        CODE_ADDR,
    );
    for (k, c) in cases().iter().enumerate() {
        let mut want = input(c);
        native(&code, &mut want);
        let want = observed(&want.0);
        let init = input(c);
        let snippet = Snippet {
            code_addr: CODE_ADDR,
            code: code.clone(),
            regions: vec![Region {
                addr: DATA,
                data: init.0.to_vec(),
            }],
        };
        let state = initial_state();
        for tier in TIERS {
            let r = run_snippet(&snippet, &state, tier, 10_000).unwrap();
            assert_eq!(r.outcome, SnippetEnd::Completed, "{name} case {k} {tier:?}");
            let got = observed(&r.regions[0].data);
            assert_eq!(
                got, want,
                "{name} case {k} (a={} b={} fcw={:#x}) {tier:?}",
                c.a, c.b, c.fcw
            );
        }
    }
}

#[test]
fn arithmetic_and_stores() {
    check("arith", |a| {
        a.fld(qword_ptr(rsi))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fadd_2(st0, st1)?;
        a.fld(st0)?;
        a.fstp(tword_ptr(rsi + 128))?;
        a.fmul(qword_ptr(rsi))?;
        a.fst(qword_ptr(rsi + 144))?;
        a.fdivr_2(st0, st1)?;
        a.fst(dword_ptr(rsi + 152))?;
        a.fsub(dword_ptr(rsi + 32))?;
        a.fsqrt()?;
        a.fstp(tword_ptr(rsi + 160))?;
        a.fld(tword_ptr(rsi + 16))?;
        a.fmulp(st1, st0)?;
        a.fld(st0)?;
        // The same forms on other registers (each has its own host stub).
        a.fld(st2)?;
        a.fadd_2(st0, st2)?;
        a.fxch(st0, st2)?;
        a.fstp(st1)?;
        a.fdiv(qword_ptr(rsi + 8))?;
        a.fsubrp(st1, st0)?;
        a.fnstsw(word_ptr(rsi + 176))?;
        a.fchs()?;
        a.fabs()?;
        a.fnstsw(ax)?;
        a.mov(word_ptr(rsi + 178), ax)
    });
}

#[test]
fn transcendentals_and_constants() {
    check("transcendental", |a| {
        a.fld(qword_ptr(rsi))?;
        a.fsin()?;
        a.fstp(qword_ptr(rsi + 128))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fcos()?;
        a.fstp(tword_ptr(rsi + 136))?;
        a.fld(qword_ptr(rsi))?;
        a.fsincos()?;
        a.fstp(tword_ptr(rsi + 146))?;
        a.fptan()?;
        a.fpatan()?;
        a.fstp(tword_ptr(rsi + 156))?;
        a.fldln2()?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fabs()?;
        a.fyl2x()?;
        a.fstp(qword_ptr(rsi + 166))?;
        a.fld1()?;
        a.fld(qword_ptr(rsi))?;
        a.fyl2xp1()?;
        a.fldl2e()?;
        a.fldl2t()?;
        a.fldlg2()?;
        a.fldpi()?;
        a.fldz()?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fscale()?;
        a.f2xm1()?;
        a.fnstsw(word_ptr(rsi + 176))
    });
}

#[test]
fn integers_bcd_and_rounding() {
    check("integer", |a| {
        a.fild(dword_ptr(rsi + 32))?;
        a.fild(qword_ptr(rsi + 40))?;
        a.fild(word_ptr(rsi + 48))?;
        a.fbld(tword_ptr(rsi + 64))?;
        a.fld(qword_ptr(rsi))?;
        a.fld(st0)?;
        a.frndint()?;
        a.fist(dword_ptr(rsi + 128))?;
        a.fistp(qword_ptr(rsi + 132))?;
        a.fld(st0)?;
        a.fisttp(dword_ptr(rsi + 140))?;
        a.fld(st0)?;
        a.fistp(word_ptr(rsi + 144))?;
        a.fbstp(tword_ptr(rsi + 146))?;
        a.fiadd(dword_ptr(rsi + 32))?;
        a.fimul(word_ptr(rsi + 48))?;
        a.fidivr(dword_ptr(rsi + 32))?;
        a.fisub(word_ptr(rsi + 48))?;
        a.fxtract()?;
        a.fstp(tword_ptr(rsi + 160))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fprem()?;
        a.fnstsw(word_ptr(rsi + 170))?;
        a.fprem1()?;
        a.fnstsw(word_ptr(rsi + 172))
    });
}

#[test]
fn compares_moves_and_the_stack() {
    check("compare", |a| {
        a.fld(qword_ptr(rsi))?;
        a.fld(qword_ptr(rsi + 8))?;
        a.fcomi(st0, st1)?;
        // The arithmetic flags (FCOMI sets ZF, PF and CF and clears OF, SF and AF).
        a.lahf()?;
        a.mov(byte_ptr(rsi + 128), ah)?;
        a.seto(byte_ptr(rsi + 128 + 1))?;
        a.fucomi(st0, st1)?;
        a.fcmovb(st0, st1)?;
        a.fcmovnbe(st0, st1)?;
        a.fcmovu(st0, st1)?;
        a.fcom(qword_ptr(rsi))?;
        a.fnstsw(ax)?;
        a.mov(word_ptr(rsi + 136), ax)?;
        a.fucom(st0, st1)?;
        a.fnstsw(word_ptr(rsi + 138))?;
        a.ftst()?;
        a.fxam()?;
        a.fnstsw(word_ptr(rsi + 140))?;
        a.ficom(dword_ptr(rsi + 32))?;
        a.fnstsw(word_ptr(rsi + 142))?;
        a.fxch(st0, st1)?;
        a.fcomip(st0, st1)?;
        // The arithmetic flags (FCOMI sets ZF, PF and CF and clears OF, SF and AF).
        a.lahf()?;
        a.mov(byte_ptr(rsi + 144), ah)?;
        a.seto(byte_ptr(rsi + 144 + 1))?;
        a.ffree(st3)?;
        a.fincstp()?;
        a.fdecstp()?;
        a.fnop()?;
        // Eight more loads overflow the stack (IE and SF, a masked stack fault).
        for _ in 0..8 {
            a.fld(tword_ptr(rsi + 16))?;
        }
        a.fnstsw(word_ptr(rsi + 152))?;
        a.fnclex()?;
        a.fucompp()
    });
}

#[test]
fn environment_and_state_images() {
    check("environment", |a| {
        a.fld(qword_ptr(rsi))?;
        a.fld(tword_ptr(rsi + 16))?;
        a.fdiv(qword_ptr(rsi + 8))?;
        a.fnstenv(ptr(rsi + 128))?;
        // The instruction and operand pointers differ from the host's: keep the rest.
        a.xor(eax, eax)?;
        a.mov(dword_ptr(rsi + 128 + 12), eax)?;
        a.mov(dword_ptr(rsi + 128 + 16), eax)?;
        a.mov(dword_ptr(rsi + 128 + 20), eax)?;
        a.mov(dword_ptr(rsi + 128 + 24), eax)?;
        a.fldenv(ptr(rsi + 128))?;
        a.fnsave(ptr(rsi + 256))?;
        a.frstor(ptr(rsi + 256))?;
        a.xor(eax, eax)?;
        for off in [12, 16, 20, 24] {
            a.mov(dword_ptr(rsi + 256 + off), eax)?;
        }
        // The saved registers, in the results area.
        a.fld(tword_ptr(rsi + 256 + 28))?;
        a.fstp(tword_ptr(rsi + 160))
    });
}

/// An unmasked exception (the zero divide, with ZM clear) only sets ES; the next waiting
/// instruction takes #MF before it runs; a no-wait one (FNSTSW) runs.
#[test]
fn an_unmasked_exception_is_taken_at_the_next_waiting_instruction() {
    let code = assemble(
        |a| {
            a.fninit()?;
            a.mov(word_ptr(rsi + 80), 0x037b)?;
            a.fldcw(word_ptr(rsi + 80))?;
            a.fld1()?;
            a.fldz()?;
            a.fdivp(st1, st0)?;
            a.fnstsw(word_ptr(rsi + 128))?;
            a.wait()
        },
        CODE_ADDR,
    );
    let snippet = Snippet {
        code_addr: CODE_ADDR,
        code: code.clone(),
        regions: vec![Region {
            addr: DATA,
            data: vec![0; BUF],
        }],
    };
    let state = initial_state();
    let fwait = CODE_ADDR + code.len() as u64 - 1;
    for tier in TIERS {
        let r = run_snippet(&snippet, &state, tier, 1000).unwrap();
        match r.outcome {
            SnippetEnd::Exception { vector, rip, .. } => {
                assert_eq!((vector, rip), (16, fwait), "{tier:?}");
            }
            other => panic!("{tier:?}: {other:?}"),
        }
        let fsw = u16::from_le_bytes([r.regions[0].data[128], r.regions[0].data[129]]);
        // ZE and ES (and B) set.
        assert_eq!(fsw & 0x8084, 0x8084, "{tier:?}: {fsw:#x}");
    }
}

/// MMX (and the SSE/SSSE3 forms on MMX registers, the MMX<->XMM moves and conversions): the
/// x87 registers they alias, TOP and the tag word as the host leaves them, then EMMS.
#[test]
fn mmx_on_the_x87_registers() {
    check("mmx", |a| {
        a.fld(qword_ptr(rsi))?;
        a.movq(mm0, qword_ptr(rsi + 8))?;
        a.movq(mm1, qword_ptr(rsi + 16))?;
        a.paddb(mm0, mm1)?;
        a.pmullw(mm0, qword_ptr(rsi + 40))?;
        a.psllq(mm1, 7)?;
        a.pshufw(mm2, mm0, 0x1b)?;
        a.pavgb(mm2, mm1)?;
        a.pmovmskb(eax, mm2)?;
        a.mov(dword_ptr(rsi + 128), eax)?;
        a.movd(ecx, mm1)?;
        a.mov(dword_ptr(rsi + 132), ecx)?;
        a.mov(edx, dword_ptr(rsi + 32))?;
        a.pinsrw(mm3, edx, 3)?;
        a.pextrw(r10d, mm3, 3)?;
        a.mov(dword_ptr(rsi + 136), r10d)?;
        a.movq(r11, mm0)?;
        a.mov(qword_ptr(rsi + 140), r11)?;
        a.movq(mm4, r11)?;
        a.pshufb(mm4, mm1)?;
        a.palignr(mm4, mm2, 3)?;
        a.movdqu(xmm1, xmmword_ptr(rsi))?;
        a.cvtps2pi(mm5, xmm1)?;
        a.cvtpi2ps(xmm1, mm0)?;
        a.movdqu(xmmword_ptr(rsi + 148), xmm1)?;
        a.movq2dq(xmm2, mm4)?;
        a.movdqu(xmmword_ptr(rsi + 164), xmm2)?;
        a.movdq2q(mm6, xmm1)?;
        a.pcmpgtw(mm6, mm5)?;
        a.movq(qword_ptr(rsi + 180), mm6)?;
        a.movntq(qword_ptr(rsi + 188), mm5)?;
        a.movd(dword_ptr(rsi + 196), mm4)?;
        a.fnstsw(word_ptr(rsi + 200))?;
        a.fxsave64(ptr(rsi + 512))?;
        // What the tag word and TOP look like after MMX, and after EMMS.
        a.mov(ax, word_ptr(rsi + 516))?;
        a.mov(word_ptr(rsi + 202), ax)?;
        a.emms()?;
        a.fld1()
    });
}
