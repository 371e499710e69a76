//! SSE/SSE2 instructions against the host CPU.
//!
//! Each test is a list of instruction variants (their machine code, assembled once) and a list
//! of input cases. Every variant runs natively on every case: the same bytes are copied into an
//! executable page between a prologue that loads xmm0-3, RAX/RCX/RDX/R8, RFLAGS and MXCSR from
//! the case and points RSI at the case's memory operand area, and an epilogue that stores them
//! back. The engine runs one snippet holding, per variant, a loop over the same cases with the
//! same prologue and epilogue, in all four tiers; the tiers must agree exactly and every case
//! must match the native result. The host is the reference: no expectation is hand-computed
//! except for exceptions, which cannot be taken natively in-process.

use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, NasmFormatter};
use krr_jit::snippet::*;
use krr_runtime::arch::{mxcsr, rflags};
use std::arch::asm;

mod common;
use common::assemble;

const TIERS: [Tier; 4] = [
    Tier::Interpreter,
    Tier::Jit,
    Tier::JitSingleStep,
    Tier::Tiered,
];

// Layout of one case (input, then output in place).
const CASE: usize = 256;
const XMM: usize = 0; // xmm0-3
const GPR: usize = 64; // rax, rcx, rdx, r8
const FLAGS: usize = 96;
const MXCSR: usize = 104;
const MEM: usize = 128; // 64 bytes; RSI = case + MEM + the variant's offset
const MEM_LEN: usize = 64;
const SAVED: usize = 200;

const ARITH_FLAGS: u64 = 0x8d5;
const CODE_ADDR: u64 = 0x1000_0000;
const TABLE: u64 = 0x2000_0000;
const STACK: u64 = 0x3000_0000;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Case([u8; CASE]);

impl Case {
    fn new() -> Case {
        let mut c = Case([0; CASE]);
        c.set_flags(0x202);
        c.set_mxcsr(0x1f80);
        c
    }
    fn xmm(&self, i: usize) -> u128 {
        u128::from_le_bytes(self.0[XMM + 16 * i..XMM + 16 * i + 16].try_into().unwrap())
    }
    fn set_xmm(&mut self, i: usize, v: u128) {
        self.0[XMM + 16 * i..XMM + 16 * i + 16].copy_from_slice(&v.to_le_bytes());
    }
    fn gpr(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.0[GPR + 8 * i..GPR + 8 * i + 8].try_into().unwrap())
    }
    fn set_gpr(&mut self, i: usize, v: u64) {
        self.0[GPR + 8 * i..GPR + 8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn flags(&self) -> u64 {
        u64::from_le_bytes(self.0[FLAGS..FLAGS + 8].try_into().unwrap())
    }
    fn set_flags(&mut self, v: u64) {
        self.0[FLAGS..FLAGS + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn mxcsr(&self) -> u32 {
        u32::from_le_bytes(self.0[MXCSR..MXCSR + 4].try_into().unwrap())
    }
    fn set_mxcsr(&mut self, v: u32) {
        self.0[MXCSR..MXCSR + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn mem(&self) -> &[u8] {
        &self.0[MEM..MEM + MEM_LEN]
    }
    fn set_mem(&mut self, off: usize, data: &[u8]) {
        self.0[MEM + off..MEM + off + data.len()].copy_from_slice(data);
    }
    /// What the test compares.
    fn observed(&self) -> String {
        let mut s = String::new();
        for i in 0..4 {
            s += &format!("xmm{i}={:032x} ", self.xmm(i));
        }
        for (i, n) in ["rax", "rcx", "rdx", "r8"].iter().enumerate() {
            s += &format!("{n}={:016x} ", self.gpr(i));
        }
        s += &format!(
            "flags={:03x} mxcsr={:04x}\n    mem={}",
            self.flags() & ARITH_FLAGS,
            self.mxcsr(),
            hex(self.mem())
        );
        s
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Variant {
    name: String,
    insn: Vec<u8>,
    mem_off: usize,
}

fn disasm(bytes: &[u8]) -> String {
    let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    let insn = d.decode();
    let mut out = String::new();
    NasmFormatter::new().format(&insn, &mut out);
    out
}

/// A variant from one assembled instruction (RSI points at the memory area + `mem_off`).
fn v(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Variant {
    let insn = assemble(f, 0);
    Variant {
        name: disasm(&insn),
        insn,
        mem_off: 0,
    }
}

/// A variant from raw machine code (for encodings the assembler does not choose).
fn raw(bytes: &[u8]) -> Variant {
    Variant {
        name: format!("{} ({})", disasm(bytes), hex(bytes)),
        insn: bytes.to_vec(),
        mem_off: 0,
    }
}

fn at(mut v: Variant, mem_off: usize) -> Variant {
    v.name += &format!(" [rsi=mem+{mem_off}]");
    v.mem_off = mem_off;
    v
}

fn prologue(a: &mut CodeAssembler, mem_off: usize) -> Result<(), IcedError> {
    a.stmxcsr(dword_ptr(rdi + SAVED as i32))?;
    a.ldmxcsr(dword_ptr(rdi + MXCSR as i32))?;
    a.push(qword_ptr(rdi + FLAGS as i32))?;
    a.popfq()?;
    a.movdqu(xmm0, xmmword_ptr(rdi + XMM as i32))?;
    a.movdqu(xmm1, xmmword_ptr(rdi + XMM as i32 + 16))?;
    a.movdqu(xmm2, xmmword_ptr(rdi + XMM as i32 + 32))?;
    a.movdqu(xmm3, xmmword_ptr(rdi + XMM as i32 + 48))?;
    a.mov(rax, qword_ptr(rdi + GPR as i32))?;
    a.mov(rcx, qword_ptr(rdi + GPR as i32 + 8))?;
    a.mov(rdx, qword_ptr(rdi + GPR as i32 + 16))?;
    a.mov(r8, qword_ptr(rdi + GPR as i32 + 24))?;
    a.lea(rsi, qword_ptr(rdi + (MEM + mem_off) as i32))
}

fn epilogue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.pushfq()?;
    a.pop(qword_ptr(rdi + FLAGS as i32))?;
    a.stmxcsr(dword_ptr(rdi + MXCSR as i32))?;
    a.movdqu(xmmword_ptr(rdi + XMM as i32), xmm0)?;
    a.movdqu(xmmword_ptr(rdi + XMM as i32 + 16), xmm1)?;
    a.movdqu(xmmword_ptr(rdi + XMM as i32 + 32), xmm2)?;
    a.movdqu(xmmword_ptr(rdi + XMM as i32 + 48), xmm3)?;
    a.mov(qword_ptr(rdi + GPR as i32), rax)?;
    a.mov(qword_ptr(rdi + GPR as i32 + 8), rcx)?;
    a.mov(qword_ptr(rdi + GPR as i32 + 16), rdx)?;
    a.mov(qword_ptr(rdi + GPR as i32 + 24), r8)?;
    a.ldmxcsr(dword_ptr(rdi + SAVED as i32))
}

/// Anonymous read+write+execute memory holding `code` (leaked: tests are short-lived).
fn executable(code: &[u8]) -> extern "C" fn(*mut u8) {
    let len = (code.len() + 4095) & !4095;
    let p: i64;
    // SAFETY: a plain mmap system call (PROT_READ|WRITE|EXEC, MAP_PRIVATE|ANONYMOUS).
    unsafe {
        asm!("syscall", inlateout("rax") 9i64 => p, in("rdi") 0u64, in("rsi") len,
             in("rdx") 7u64, in("r10") 0x22u64, in("r8") -1i64, in("r9") 0u64,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    assert!(p > 0, "mmap failed: {p}");
    let ptr = p as *mut u8;
    // SAFETY: the mapping is fresh and `len >= code.len()` bytes long; the code is a complete
    // function (prologue, instruction, epilogue, RET) following the C calling convention and
    // touching only caller-saved registers and the case it is given.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), ptr, code.len());
        std::mem::transmute::<*mut u8, extern "C" fn(*mut u8)>(ptr)
    }
}

fn run_native(v: &Variant, cases: &[Case]) -> Vec<Case> {
    let code = assemble(
        |a| {
            prologue(a, v.mem_off)?;
            a.db(&v.insn)?;
            epilogue(a)?;
            a.ret()
        },
        0,
    );
    let f = executable(&code);
    cases
        .iter()
        .map(|c| {
            let mut c = *c;
            f(c.0.as_mut_ptr());
            c
        })
        .collect()
}

/// Run every variant on every case in the engine (all tiers, which must agree exactly) and
/// natively, and compare.
fn check(variants: &[Variant], cases: &[Case]) {
    let n = cases.len();
    let code = assemble(
        |a| {
            for (k, v) in variants.iter().enumerate() {
                let mut top = a.create_label();
                a.mov(rdi, TABLE + (k * n * CASE) as u64)?;
                a.mov(r9, n as u64)?;
                a.set_label(&mut top)?;
                prologue(a, v.mem_off)?;
                a.db(&v.insn)?;
                epilogue(a)?;
                a.add(rdi, CASE as i32)?;
                a.dec(r9)?;
                a.jnz(top)?;
            }
            Ok(())
        },
        CODE_ADDR,
    );
    let mut table = Vec::with_capacity(variants.len() * n * CASE);
    for _ in variants {
        for c in cases {
            table.extend_from_slice(&c.0);
        }
    }
    let snippet = Snippet {
        code_addr: CODE_ADDR,
        code,
        regions: vec![
            Region {
                addr: TABLE,
                data: table,
            },
            Region {
                addr: STACK,
                data: vec![0; 4096],
            },
        ],
    };
    let init = UserState {
        rip: CODE_ADDR,
        rflags: rflags::IF | rflags::FIXED1,
        mxcsr: mxcsr::INIT,
        gpr: {
            let mut g = [0; 16];
            g[4] = STACK + 0x800;
            g
        },
        ..Default::default()
    };
    let mut results: Vec<SnippetResult> = Vec::new();
    for tier in TIERS {
        let r = run_snippet(&snippet, &init, tier, 10_000_000).unwrap();
        assert_eq!(r.outcome, SnippetEnd::Completed, "{tier:?}");
        if let Some(first) = results.first() {
            assert_eq!(r.state, first.state, "{tier:?} vs Interpreter: state");
            assert_eq!(
                r.instructions, first.instructions,
                "{tier:?}: instruction count"
            );
            if r.regions != first.regions {
                report_tier_difference(variants, n, &first.regions[0].data, &r.regions[0].data);
                panic!("{tier:?} differs from the interpreter");
            }
        }
        results.push(r);
    }
    let out = &results[0].regions[0].data;
    let mut failures = Vec::new();
    for (k, v) in variants.iter().enumerate() {
        let native = run_native(v, cases);
        for (i, want) in native.iter().enumerate() {
            let off = (k * n + i) * CASE;
            let mut got = Case([0; CASE]);
            got.0.copy_from_slice(&out[off..off + CASE]);
            let (w, g) = (want.observed(), got.observed());
            if w != g {
                failures.push(format!(
                    "{}: case {i}\n  input:  {}\n  native: {w}\n  engine: {g}",
                    v.name,
                    cases[i].observed()
                ));
            }
        }
    }
    if !failures.is_empty() {
        let shown: Vec<_> = failures.iter().take(12).cloned().collect();
        panic!(
            "{} mismatches against the host:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
}

fn report_tier_difference(variants: &[Variant], n: usize, a: &[u8], b: &[u8]) {
    for (k, v) in variants.iter().enumerate() {
        for i in 0..n {
            let off = (k * n + i) * CASE;
            if a[off..off + CASE] != b[off..off + CASE] {
                let mut x = Case([0; CASE]);
                let mut y = Case([0; CASE]);
                x.0.copy_from_slice(&a[off..off + CASE]);
                y.0.copy_from_slice(&b[off..off + CASE]);
                eprintln!(
                    "{} case {i}:\n  interp: {}\n  other:  {}",
                    v.name,
                    x.observed(),
                    y.observed()
                );
                return;
            }
        }
    }
}

// ---- inputs ----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    /// A byte biased towards lane-arithmetic edge values.
    fn edge_byte(&mut self) -> u8 {
        match self.next() % 3 {
            0 => self.pick(&[0x00, 0x01, 0x7f, 0x80, 0x81, 0xfe, 0xff]),
            _ => self.next() as u8,
        }
    }
    fn edge128(&mut self) -> u128 {
        match self.next() % 8 {
            0 => self.next() as u128 | (self.next() as u128) << 64,
            1 => 0,
            2 => u128::MAX,
            _ => u128::from_le_bytes(std::array::from_fn(|_| self.edge_byte())),
        }
    }
    /// A 128-bit value sharing some lanes with `x` (for equality compares).
    fn near(&mut self, x: u128) -> u128 {
        let mut b = x.to_le_bytes();
        let keep = self.next();
        for (i, byte) in b.iter_mut().enumerate() {
            if keep >> (i * 3) & 7 == 0 {
                *byte = self.edge_byte();
            }
        }
        if self.next().is_multiple_of(4) {
            self.edge128()
        } else {
            u128::from_le_bytes(b)
        }
    }
    fn f64(&mut self) -> u64 {
        const SPECIAL: &[u64] = &[
            0x0000_0000_0000_0000, // 0
            0x8000_0000_0000_0000, // -0
            0x3ff0_0000_0000_0000, // 1
            0xbff0_0000_0000_0000, // -1
            0x3ff8_0000_0000_0000, // 1.5
            0x3fb9_9999_9999_999a, // 0.1
            0x7fe1_ccf3_85eb_c8a0, // 1e308
            0xffe1_ccf3_85eb_c8a0, // -1e308
            0x7fef_ffff_ffff_ffff, // max
            0x0010_0000_0000_0000, // min normal
            0x0000_0000_0000_0001, // min denormal
            0x800f_ffff_ffff_ffff, // -max denormal
            0x7ff0_0000_0000_0000, // inf
            0xfff0_0000_0000_0000, // -inf
            0x7ff8_0000_0000_0000, // QNaN
            0xfff8_0000_0000_1234, // -QNaN with payload
            0x7ff0_0000_0000_0001, // SNaN
            0xfff4_0000_0000_0000, // -SNaN
            0x43e0_0000_0000_0000, // 2^63
            0xc3e0_0000_0000_0000, // -2^63
            0x43df_ffff_ffff_ffff, // below 2^63
            0xc3e0_0000_0000_0001, // below -2^63
            0x41e0_0000_0000_0000, // 2^31
            0xc1e0_0000_0000_0000, // -2^31
            0xc1e0_0000_0020_0000, // -2^31 - 1
            0x41df_ffff_ffe0_0000, // 2^31 - 1
            0x41df_ffff_fff0_0000, // 2^31 - 0.5
            0x419d_6f34_5487_e5c9, // 123456789.123
            0x3ca0_0000_0000_0000, // 2^-53
            0xbfe0_0000_0000_0000, // -0.5
            0x4004_0000_0000_0000, // 2.5
            0x0010_0000_0000_0001, // just above min normal
            0x000f_ffff_ffff_ffff, // max denormal
            0x3fe0_0000_0000_0000, // 0.5
            0x2000_0000_0000_0000, // 2^-511
        ];
        match self.next() % 3 {
            0 => self.next(),
            _ => self.pick(SPECIAL),
        }
    }
    fn f32(&mut self) -> u32 {
        const SPECIAL: &[u32] = &[
            0x0000_0000, // 0
            0x8000_0000, // -0
            0x3f80_0000, // 1
            0xbf80_0000, // -1
            0x3fc0_0000, // 1.5
            0x3dcc_cccd, // 0.1
            0x7f7f_ffff, // max
            0xff7f_ffff, // -max
            0x0080_0000, // min normal
            0x0000_0001, // min denormal
            0x807f_ffff, // -max denormal
            0x7f80_0000, // inf
            0xff80_0000, // -inf
            0x7fc0_0000, // QNaN
            0xffc0_1234, // -QNaN with payload
            0x7f80_0001, // SNaN
            0xffa0_0000, // -SNaN
            0x5f00_0000, // 2^63
            0xdf00_0000, // -2^63
            0x5eff_ffff, // below 2^63
            0x4f00_0000, // 2^31
            0xcf00_0000, // -2^31
            0x4eff_ffff, // below 2^31
            0xcf00_0001, // below -2^31
            0x3f00_0000, // 0.5
            0xbfc0_0000, // -1.5
            0x4b80_0001, // 2^24 + 2
            0x3380_0000, // 2^-24
            0x0080_0001, // just above min normal
            0x007f_ffff, // max denormal
            0x3f00_0000, // 0.5
            0x1f80_0000, // 2^-64
        ];
        match self.next() % 3 {
            0 => self.next() as u32,
            _ => self.pick(SPECIAL),
        }
    }
    fn int(&mut self) -> u64 {
        const SPECIAL: &[u64] = &[
            0,
            1,
            u64::MAX,
            1 << 63,
            (1 << 63) - 1,
            (1 << 53) + 1,
            (1 << 24) + 1,
            0x8000_0000,
            0x7fff_ffff,
            0xffff_ffff,
            0xffff_ffff_8000_0000,
            0x1234_5678_9abc_def1,
            0x0000_0000_0100_0001,
        ];
        match self.next() % 2 {
            0 => self.next() >> (self.next() % 64),
            _ => self.pick(SPECIAL),
        }
    }
    fn masked_mxcsr(&mut self) -> u32 {
        self.pick(&[
            0x1f80, 0x1f80, 0x1f80, 0x1fbf, 0x3f80, 0x5f80, 0x7f80, 0x9f80, 0x1fc0, 0x9fc0, 0x5fe1,
        ])
    }
}

/// Cases for integer and data-movement instructions.
fn int_cases(seed: u64, n: usize) -> Vec<Case> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let mut c = Case::new();
            let x0 = r.edge128();
            c.set_xmm(0, x0);
            c.set_xmm(1, r.near(x0));
            c.set_xmm(2, r.edge128());
            c.set_xmm(3, r.edge128());
            for i in 0..4 {
                c.set_gpr(i, r.next());
            }
            c.set_flags(0x202 | (r.next() & ARITH_FLAGS));
            if r.next().is_multiple_of(4) {
                c.set_mxcsr(r.masked_mxcsr());
            }
            let m0 = r.near(x0).to_le_bytes();
            let mut mem = [0u8; MEM_LEN];
            for (i, b) in mem.iter_mut().enumerate() {
                *b = if i < 16 { m0[i] } else { r.edge_byte() };
            }
            c.set_mem(0, &mem);
            c
        })
        .collect()
}

/// Cases for floating-point instructions: scalars in the low elements of xmm0-3 and at the
/// start of the memory area, integers in the GPRs.
fn float_cases(seed: u64, n: usize, single: bool) -> Vec<Case> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let mut c = Case::new();
            for i in 0..4 {
                let hi = r.next() as u128 | (r.next() as u128) << 64;
                let v = if single {
                    hi & !0xffff_ffff | r.f32() as u128
                } else {
                    hi & !(u64::MAX as u128) | r.f64() as u128
                };
                c.set_xmm(i, v);
            }
            for i in 0..4 {
                c.set_gpr(i, r.int());
            }
            c.set_flags(0x202 | (r.next() & ARITH_FLAGS));
            c.set_mxcsr(r.masked_mxcsr());
            let mut mem = [0u8; MEM_LEN];
            for b in mem.iter_mut() {
                *b = r.next() as u8;
            }
            if single {
                mem[..4].copy_from_slice(&r.f32().to_le_bytes());
            } else {
                mem[..8].copy_from_slice(&r.f64().to_le_bytes());
            }
            if r.next().is_multiple_of(3) {
                mem[..8].copy_from_slice(&r.int().to_le_bytes());
            }
            c.set_mem(0, &mem);
            c
        })
        .collect()
}

// ---- tests ----

#[test]
fn data_movement() {
    let vs = vec![
        v(|a| a.movaps(xmm0, xmm1)),
        v(|a| a.movaps(xmm0, xmmword_ptr(rsi))),
        v(|a| a.movaps(xmmword_ptr(rsi), xmm1)),
        raw(&[0x0f, 0x29, 0xc8]), // movaps xmm0, xmm1 (store form)
        v(|a| a.movapd(xmm2, xmmword_ptr(rsi + 16))),
        v(|a| a.movapd(xmmword_ptr(rsi + 32), xmm3)),
        v(|a| a.movdqa(xmm3, xmm0)),
        v(|a| a.movdqa(xmm1, xmmword_ptr(rsi))),
        v(|a| a.movdqa(xmmword_ptr(rsi + 16), xmm2)),
        raw(&[0x66, 0x0f, 0x7f, 0xc8]), // movdqa xmm0, xmm1 (store form)
        at(v(|a| a.movups(xmm0, xmmword_ptr(rsi))), 3),
        at(v(|a| a.movups(xmmword_ptr(rsi), xmm1)), 7),
        raw(&[0x0f, 0x11, 0xc8]), // movups xmm0, xmm1 (store form)
        at(v(|a| a.movupd(xmm0, xmmword_ptr(rsi))), 9),
        at(v(|a| a.movupd(xmmword_ptr(rsi), xmm1)), 15),
        at(v(|a| a.movdqu(xmm2, xmmword_ptr(rsi))), 1),
        at(v(|a| a.movdqu(xmmword_ptr(rsi), xmm3)), 8),
        v(|a| a.movdqu(xmm1, xmm2)),
        raw(&[0xf3, 0x0f, 0x7f, 0xc8]), // movdqu xmm0, xmm1 (store form)
        v(|a| a.movntdq(xmmword_ptr(rsi + 16), xmm1)),
        v(|a| a.movntps(xmmword_ptr(rsi), xmm2)),
        v(|a| a.movntpd(xmmword_ptr(rsi + 32), xmm3)),
        at(v(|a| a.movnti(dword_ptr(rsi), ecx)), 1),
        v(|a| a.movnti(qword_ptr(rsi + 8), rdx)),
        // MOVD / MOVQ
        v(|a| a.movd(xmm0, ecx)),
        v(|a| a.movd(xmm1, dword_ptr(rsi + 4))),
        v(|a| a.movd(eax, xmm2)),
        v(|a| a.movd(dword_ptr(rsi + 4), xmm1)),
        v(|a| a.movq(xmm0, rcx)),
        v(|a| a.movq(rax, xmm3)),
        v(|a| a.movq(r8, xmm1)),
        raw(&[0x66, 0x48, 0x0f, 0x6e, 0x06]), // movq xmm0, [rsi]
        raw(&[0x66, 0x48, 0x0f, 0x7e, 0x0e]), // movq [rsi], xmm1
        v(|a| a.movq(xmm0, xmm1)),            // F3 0F 7E
        at(v(|a| a.movq(xmm2, qword_ptr(rsi))), 5),
        at(v(|a| a.movq(qword_ptr(rsi), xmm1)), 3), // 66 0F D6
        raw(&[0x66, 0x0f, 0xd6, 0xc8]),             // movq xmm0, xmm1 (66 0F D6)
        // MOVSS / MOVSD
        v(|a| a.movss(xmm0, xmm1)),
        at(v(|a| a.movss(xmm1, dword_ptr(rsi))), 2),
        at(v(|a| a.movss(dword_ptr(rsi), xmm2)), 6),
        raw(&[0xf3, 0x0f, 0x11, 0xc8]), // movss xmm0, xmm1 (store form)
        v(|a| a.movsd_2(xmm3, xmm0)),
        at(v(|a| a.movsd_2(xmm1, qword_ptr(rsi))), 4),
        at(v(|a| a.movsd_2(qword_ptr(rsi), xmm2)), 12),
        raw(&[0xf2, 0x0f, 0x11, 0xc8]), // movsd xmm0, xmm1 (store form)
        // MOVLPS / MOVHPS / MOVLPD / MOVHPD / MOVHLPS / MOVLHPS
        at(v(|a| a.movlps(xmm0, qword_ptr(rsi))), 1),
        at(v(|a| a.movhps(xmm1, qword_ptr(rsi))), 3),
        at(v(|a| a.movlps(qword_ptr(rsi), xmm2)), 5),
        at(v(|a| a.movhps(qword_ptr(rsi), xmm3)), 7),
        v(|a| a.movlpd(xmm0, qword_ptr(rsi + 8))),
        v(|a| a.movhpd(xmm1, qword_ptr(rsi + 16))),
        v(|a| a.movlpd(qword_ptr(rsi + 8), xmm2)),
        v(|a| a.movhpd(qword_ptr(rsi + 24), xmm3)),
        v(|a| a.movhlps(xmm0, xmm1)),
        v(|a| a.movlhps(xmm2, xmm3)),
        // masks and MXCSR
        v(|a| a.pmovmskb(eax, xmm0)),
        v(|a| a.pmovmskb(rcx, xmm1)),
        v(|a| a.pmovmskb(r8d, xmm2)),
        v(|a| a.movmskps(edx, xmm0)),
        v(|a| a.movmskps(rax, xmm3)),
        v(|a| a.movmskpd(ecx, xmm1)),
        v(|a| a.movmskpd(r8, xmm2)),
        at(v(|a| a.stmxcsr(dword_ptr(rsi))), 1),
    ];
    check(&vs, &int_cases(1, 24));
}

#[test]
fn ldmxcsr_valid_values() {
    let vs = vec![
        at(v(|a| a.ldmxcsr(dword_ptr(rsi))), 2),
        v(|a| a.stmxcsr(dword_ptr(rsi))),
    ];
    let mut cases = int_cases(2, 12);
    let mut r = Rng(99);
    for c in &mut cases {
        let m = (r.next() as u32 & 0xffff) | 0x1f80;
        c.set_mem(2, &m.to_le_bytes());
        c.set_mem(0, &(r.next() as u32).to_le_bytes());
    }
    check(&vs, &cases);
}

#[test]
fn logic_and_lanes() {
    type Asm2 = fn(&mut CodeAssembler, AsmRegisterXmm, AsmRegisterXmm) -> Result<(), IcedError>;
    type AsmM = fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    macro_rules! both {
        ($($m:ident),*) => {{
            let mut out = Vec::new();
            $(
                let f: Asm2 = |a, x, y| a.$m(x, y);
                let g: AsmM = |a, x, m| a.$m(x, m);
                out.push(v(|a| f(a, xmm0, xmm1)));
                out.push(v(|a| f(a, xmm2, xmm2)));
                out.push(v(|a| g(a, xmm3, xmmword_ptr(rsi))));
            )*
            out
        }};
    }
    let vs = both!(
        pxor, por, pand, pandn, xorps, xorpd, andps, andpd, andnps, andnpd, orps, orpd, paddb,
        paddw, paddd, paddq, psubb, psubw, psubd, psubq, pcmpeqb, pcmpeqw, pcmpeqd, pcmpeqq,
        pcmpgtb, pcmpgtw, pcmpgtd, pminub, pmaxub
    );
    check(&vs, &int_cases(3, 32));
}

#[test]
fn shuffles_and_unpacks() {
    let mut vs = Vec::new();
    for imm in [0x00, 0x1b, 0xe4, 0x4e, 0xb1, 0xff, 0x93, 0x27] {
        vs.push(v(|a| a.pshufd(xmm0, xmm1, imm)));
        vs.push(v(|a| a.pshuflw(xmm1, xmm2, imm)));
        vs.push(v(|a| a.pshufhw(xmm2, xmm3, imm)));
        vs.push(v(|a| a.shufps(xmm0, xmm1, imm)));
    }
    for imm in [0, 1, 2, 3] {
        vs.push(v(|a| a.shufpd(xmm3, xmm0, imm)));
    }
    vs.push(v(|a| a.pshufd(xmm3, xmmword_ptr(rsi), 0x6c)));
    vs.push(v(|a| a.pshuflw(xmm3, xmmword_ptr(rsi), 0x6c)));
    vs.push(v(|a| a.pshufhw(xmm3, xmmword_ptr(rsi), 0x6c)));
    vs.push(v(|a| a.shufps(xmm3, xmmword_ptr(rsi), 0x6c)));
    vs.push(v(|a| a.shufps(xmm1, xmm1, 0x39)));
    vs.push(v(|a| a.shufpd(xmm0, xmmword_ptr(rsi), 2)));
    type Asm2 = fn(&mut CodeAssembler, AsmRegisterXmm, AsmRegisterXmm) -> Result<(), IcedError>;
    type AsmM = fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    macro_rules! both {
        ($($m:ident),*) => {
            $(
                let f: Asm2 = |a, x, y| a.$m(x, y);
                let g: AsmM = |a, x, m| a.$m(x, m);
                vs.push(v(|a| f(a, xmm0, xmm1)));
                vs.push(v(|a| f(a, xmm2, xmm2)));
                vs.push(v(|a| g(a, xmm3, xmmword_ptr(rsi))));
            )*
        };
    }
    both!(punpcklbw, punpckhbw, punpcklwd, punpckhwd, punpckldq, punpckhdq, punpcklqdq, punpckhqdq);
    check(&vs, &int_cases(4, 24));
}

#[test]
fn shifts() {
    let mut vs = Vec::new();
    type AsmI = fn(&mut CodeAssembler, AsmRegisterXmm, i32) -> Result<(), IcedError>;
    type Asm2 = fn(&mut CodeAssembler, AsmRegisterXmm, AsmRegisterXmm) -> Result<(), IcedError>;
    type AsmM = fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    macro_rules! shifts {
        ($($m:ident),*) => {
            $(
                let f: AsmI = |a, x, i| a.$m(x, i);
                for imm in [0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 200, 255] {
                    vs.push(v(|a| f(a, xmm0, imm)));
                }
                let g: Asm2 = |a, x, y| a.$m(x, y);
                let h: AsmM = |a, x, m| a.$m(x, m);
                vs.push(v(|a| g(a, xmm0, xmm1)));
                vs.push(v(|a| g(a, xmm1, xmm1)));
                vs.push(v(|a| h(a, xmm2, xmmword_ptr(rsi))));
            )*
        };
    }
    shifts!(psllw, pslld, psllq, psrlw, psrld, psrlq, psraw, psrad);
    let f: AsmI = |a, x, i| a.pslldq(x, i);
    let g: AsmI = |a, x, i| a.psrldq(x, i);
    for imm in [0, 1, 3, 7, 8, 9, 15, 16, 17, 255] {
        vs.push(v(|a| f(a, xmm0, imm)));
        vs.push(v(|a| g(a, xmm1, imm)));
    }
    // Counts in xmm1 and in memory: small, edge and huge values.
    let mut cases = int_cases(5, 24);
    let mut r = Rng(77);
    for (i, c) in cases.iter_mut().enumerate() {
        let count: u64 = match i % 4 {
            0 | 1 => r.next() % 70,
            2 => r.pick(&[
                15,
                16,
                31,
                32,
                63,
                64,
                0x1_0000_0001,
                u64::MAX,
                1 << 63,
                0x100,
            ]),
            _ => r.next(),
        };
        let x1 = c.xmm(1) & !(u64::MAX as u128) | count as u128;
        c.set_xmm(1, x1);
        let count2 = if i % 3 == 0 { count } else { r.next() % 40 };
        c.set_mem(0, &count2.to_le_bytes());
    }
    check(&vs, &cases);
}

fn scalar_variants(single: bool) -> Vec<Variant> {
    type Asm2 = fn(&mut CodeAssembler, AsmRegisterXmm, AsmRegisterXmm) -> Result<(), IcedError>;
    type AsmM = fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    let mut vs = Vec::new();
    macro_rules! both {
        ($ptr:ident, $($m:ident),*) => {
            $(
                let f: Asm2 = |a, x, y| a.$m(x, y);
                let g: AsmM = |a, x, m| a.$m(x, m);
                vs.push(v(|a| f(a, xmm0, xmm1)));
                vs.push(v(|a| f(a, xmm2, xmm2)));
                vs.push(at(v(|a| g(a, xmm3, $ptr(rsi))), 0));
            )*
        };
    }
    if single {
        both!(dword_ptr, addss, subss, mulss, divss, ucomiss, comiss);
    } else {
        both!(qword_ptr, addsd, subsd, mulsd, divsd, ucomisd, comisd);
    }
    vs
}

#[test]
fn scalar_double() {
    let mut cases = float_cases(6, 48, false);
    // Some cases with equal operands (compares, x - x).
    for c in cases.iter_mut().step_by(7) {
        let x = c.xmm(0);
        c.set_xmm(1, c.xmm(1) & !(u64::MAX as u128) | x & u64::MAX as u128);
    }
    check(&scalar_variants(false), &cases);
}

#[test]
fn scalar_single() {
    let mut cases = float_cases(7, 48, true);
    for c in cases.iter_mut().step_by(7) {
        let x = c.xmm(0);
        c.set_xmm(1, c.xmm(1) & !0xffff_ffff | x & 0xffff_ffff);
    }
    check(&scalar_variants(true), &cases);
}

#[test]
fn conversions() {
    let vs = vec![
        v(|a| a.cvtsi2sd(xmm0, eax)),
        v(|a| a.cvtsi2sd(xmm1, rcx)),
        v(|a| a.cvtsi2sd(xmm2, dword_ptr(rsi))),
        v(|a| a.cvtsi2sd(xmm3, qword_ptr(rsi))),
        v(|a| a.cvtsi2ss(xmm0, edx)),
        v(|a| a.cvtsi2ss(xmm1, r8)),
        v(|a| a.cvtsi2ss(xmm2, dword_ptr(rsi))),
        v(|a| a.cvtsi2ss(xmm3, qword_ptr(rsi))),
        v(|a| a.cvttsd2si(eax, xmm0)),
        v(|a| a.cvttsd2si(rcx, xmm1)),
        v(|a| a.cvttsd2si(r8d, qword_ptr(rsi))),
        v(|a| a.cvttsd2si(rdx, qword_ptr(rsi))),
    ];
    let mut cases = float_cases(8, 40, false);
    cases.extend(float_cases(9, 8, true));
    check(&vs, &cases);
    let vs = vec![
        v(|a| a.cvttss2si(eax, xmm0)),
        v(|a| a.cvttss2si(rcx, xmm1)),
        v(|a| a.cvttss2si(r8d, dword_ptr(rsi))),
        v(|a| a.cvttss2si(rdx, dword_ptr(rsi))),
    ];
    check(&vs, &float_cases(10, 40, true));
}

// ---- exceptions (engine only; hardware behaviour from the SDM) ----

fn run_one(
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    init: &UserState,
) -> SnippetResult {
    let code = assemble(f, CODE_ADDR);
    let snippet = Snippet {
        code_addr: CODE_ADDR,
        code,
        regions: vec![Region {
            addr: TABLE,
            data: (0..4096).map(|i| i as u8).collect(),
        }],
    };
    let mut first: Option<SnippetResult> = None;
    for tier in TIERS {
        let r = run_snippet(&snippet, init, tier, 1000).unwrap();
        if let Some(f) = &first {
            assert_eq!(r.state, f.state, "{tier:?}");
            assert_eq!(r.regions, f.regions, "{tier:?}");
            assert_eq!(r.outcome, f.outcome, "{tier:?}");
            assert_eq!(r.instructions, f.instructions, "{tier:?}");
        } else {
            first = Some(r);
        }
    }
    first.unwrap()
}

fn fault_init() -> UserState {
    let mut init = UserState {
        rip: CODE_ADDR,
        rflags: rflags::IF | rflags::FIXED1,
        mxcsr: mxcsr::INIT,
        ..Default::default()
    };
    init.gpr[6] = TABLE + 0x100; // rsi
    for (i, x) in init.xmm.iter_mut().enumerate() {
        *x = 0x1111_2222_3333_4444_5555_6666_7777_8888u128.wrapping_mul(i as u128 + 1);
    }
    init
}

#[track_caller]
fn assert_fault(r: &SnippetResult, vector: u8, error_code: Option<u32>, insn_index: u64) {
    match r.outcome {
        SnippetEnd::Exception {
            vector: v,
            error_code: e,
            rip,
            ..
        } => {
            assert_eq!((v, e), (vector, error_code), "{:?}", r.outcome);
            assert_eq!(r.instructions, insn_index, "faulting instruction");
            assert_eq!(rip, r.state.rip);
        }
        o => panic!("expected exception {vector}, got {o:?}"),
    }
}

#[test]
fn misaligned_m128_faults() {
    let init = fault_init();
    type AsmM = fn(&mut CodeAssembler, AsmRegisterXmm, AsmMemoryOperand) -> Result<(), IcedError>;
    let loads: [AsmM; 8] = [
        |a, x, m| a.movaps(x, m),
        |a, x, m| a.movdqa(x, m),
        |a, x, m| a.movapd(x, m),
        |a, x, m| a.paddb(x, m),
        |a, x, m| a.pxor(x, m),
        |a, x, m| a.punpcklbw(x, m),
        |a, x, m| a.psllw(x, m),
        |a, x, m| a.pcmpeqb(x, m),
    ];
    for f in loads {
        let r = run_one(
            |a| {
                a.mov(rax, 5u64)?;
                f(a, xmm0, xmmword_ptr(rsi + 8))?;
                a.mov(rax, 6u64)
            },
            &init,
        );
        assert_fault(&r, 13, Some(0), 1);
        assert_eq!(r.state.xmm, init.xmm);
        assert_eq!(r.state.gpr[0], 5);
    }
    let r = run_one(|a| a.movaps(xmmword_ptr(rsi + 4), xmm1), &init);
    assert_fault(&r, 13, Some(0), 0);
    assert_eq!(
        r.regions[0].data[0x104..0x114],
        (0x104..0x114).map(|i| i as u8).collect::<Vec<_>>()[..]
    );
    let r = run_one(|a| a.movntdq(xmmword_ptr(rsi + 1), xmm1), &init);
    assert_fault(&r, 13, Some(0), 0);
    // Unaligned forms and scalar memory operands do not fault.
    let r = run_one(
        |a| {
            a.movdqu(xmm0, xmmword_ptr(rsi + 1))?;
            a.movups(xmmword_ptr(rsi + 3), xmm0)?;
            a.addsd(xmm1, qword_ptr(rsi + 5))?;
            a.ucomisd(xmm1, qword_ptr(rsi + 7))?;
            a.movsd_2(xmm2, qword_ptr(rsi + 9))
        },
        &init,
    );
    assert_eq!(r.outcome, SnippetEnd::Completed);
}

#[test]
fn ldmxcsr_reserved_bits_fault() {
    let mut init = fault_init();
    init.gpr[1] = 0x0001_1f80;
    let r = run_one(
        |a| {
            a.mov(dword_ptr(rsi), ecx)?;
            a.ldmxcsr(dword_ptr(rsi))
        },
        &init,
    );
    assert_fault(&r, 13, Some(0), 1);
    assert_eq!(r.state.mxcsr, 0x1f80);
}

#[test]
fn unmasked_exceptions_raise_xm() {
    let mut init = fault_init();
    init.xmm[0] = 1f64.to_bits() as u128 | 0xdead_u128 << 64;
    init.xmm[1] = 0;
    init.xmm[2] = f64::NAN.to_bits() as u128;
    init.xmm[3] = 3f64.to_bits() as u128;
    init.gpr[0] = 0x1234;
    // Divide by zero with ZM clear.
    init.mxcsr = 0x1f80 & !0x200;
    let r = run_one(|a| a.divsd(xmm0, xmm1), &init);
    assert_fault(&r, 19, None, 0);
    assert_eq!(r.state.xmm, init.xmm);
    assert_eq!(r.state.mxcsr, init.mxcsr | 0x4);
    // Inexact with PM clear.
    init.mxcsr = 0x1f80 & !0x1000;
    let r = run_one(|a| a.divsd(xmm0, xmm3), &init);
    assert_fault(&r, 19, None, 0);
    assert_eq!(r.state.xmm, init.xmm);
    assert_eq!(r.state.mxcsr, init.mxcsr | 0x20);
    // Invalid conversion with IM clear: the destination register keeps its value.
    init.mxcsr = 0x1f80 & !0x80;
    let r = run_one(|a| a.cvttsd2si(rax, xmm2), &init);
    assert_fault(&r, 19, None, 0);
    assert_eq!(r.state.gpr[0], 0x1234);
    assert_eq!(r.state.mxcsr, init.mxcsr | 0x1);
    // COMISD with a QNaN is invalid; UCOMISD is not.
    let r = run_one(|a| a.comisd(xmm0, xmm2), &init);
    assert_fault(&r, 19, None, 0);
    let r = run_one(|a| a.ucomisd(xmm0, xmm2), &init);
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.mxcsr, init.mxcsr);
    assert_eq!(r.state.rflags & ARITH_FLAGS, 0x45);
    // Masked: no exception, flags recorded.
    init.mxcsr = 0x1f80;
    let r = run_one(|a| a.divsd(xmm0, xmm1), &init);
    assert_eq!(r.outcome, SnippetEnd::Completed);
    assert_eq!(r.state.mxcsr, 0x1f84);
    assert_eq!(
        r.state.xmm[0],
        f64::INFINITY.to_bits() as u128 | 0xdead_u128 << 64
    );
}

/// MOVSD and CMPSD are also string instructions; those must still work.
#[test]
fn string_movsd_cmpsd() {
    let mut init = fault_init();
    init.gpr[6] = TABLE; // rsi
    init.gpr[7] = TABLE + 0x800; // rdi
    init.gpr[1] = 4; // rcx
    let r = run_one(
        |a| {
            a.rep().movsd()?;
            a.mov(rsi, TABLE)?;
            a.mov(rdi, TABLE + 0x800)?;
            a.cmpsd()?;
            a.movsd_2(xmm0, xmm1)
        },
        &init,
    );
    assert_eq!(r.outcome, SnippetEnd::Completed);
    let d = &r.regions[0].data;
    assert_eq!(d[0x800..0x810], d[0..16]);
    assert_eq!(r.state.gpr[6], TABLE + 4);
    assert_eq!(r.state.gpr[7], TABLE + 0x804);
    assert_eq!(r.state.rflags & 0x40, 0x40, "cmpsd of equal dwords sets ZF");
    assert_eq!(r.state.xmm[0] as u64, init.xmm[1] as u64);
    assert_eq!(r.state.xmm[0] >> 64, init.xmm[0] >> 64);
}
