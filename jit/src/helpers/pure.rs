//! Pure host functions: integer SIMD instructions that neither read nor write MXCSR or any
//! other CPU state (PSHUFB, PCLMULQDQ, AES rounds, CRC32), run as the host instruction itself
//! through `core::arch` intrinsics. The semantics call them with [`Builder::pure`]: the
//! interpreter directly, compiled code with a plain System V call from the block, without
//! flushing guest registers or checking a status (they cannot fail). Much cheaper than the
//! general host path (`host_exec`: stub, context copy, MXCSR switch) for CRC and crypto
//! loops, and exact for the same reason: the host is the reference. The lazy flags' reading
//! ([`Pure::ArithFlags`]) is one too: it reads only its arguments.
//!
//! [`Builder::pure`]: crate::sem::Builder::pure

use iced_x86::ConditionCode;
use std::arch::x86_64::*;

/// Two 64-bit results (RAX:RDX under System V, as Cranelift's two `i64` returns).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub lo: u64,
    pub hi: u64,
}

/// A pure function of up to four 64-bit arguments (unused ones are ignored).
pub type PureFn = extern "C" fn(u64, u64, u64, u64) -> Pair;

/// The operations, with what they compute from (a, b, c, d).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pure {
    /// PSHUFB: bytes of (a, b) selected by the control bytes (c, d).
    Pshufb,
    /// PCLMULQDQ of the quadwords a and c (the instruction's immediate picks them).
    Clmul,
    /// AESENC/AESENCLAST/AESDEC/AESDECLAST of the state (a, b) with the round key (c, d).
    AesEnc,
    AesEncLast,
    AesDec,
    AesDecLast,
    /// AESIMC of (c, d).
    AesImc,
    /// CRC32 of the accumulator a (32 bits) and the low 1, 2, 4 or 8 bytes of c.
    Crc32x8,
    Crc32x16,
    Crc32x32,
    Crc32x64,
    /// The six arithmetic flags of the lazy state: a = `cc_op` | (`cc_aux` & 1) << 8, b =
    /// `cc_res`, c = `cc_a`, d = `cc_b` (the runtime's concrete reading). Compiled blocks
    /// that test flags an earlier block set call it (in single-step mode, every Jcc).
    ArithFlags,
    /// Whether condition `(a >> 16) & 15` (x86's numbering, [`cond_code_number`]) holds for
    /// the lazy state given as for [`Pure::ArithFlags`]: 0 or 1.
    CondOfLazy,
}

impl Pure {
    /// Every operation (the code cache names them by their index here).
    pub const ALL: [Pure; 13] = [
        Pure::Pshufb,
        Pure::Clmul,
        Pure::AesEnc,
        Pure::AesEncLast,
        Pure::AesDec,
        Pure::AesDecLast,
        Pure::AesImc,
        Pure::Crc32x8,
        Pure::Crc32x16,
        Pure::Crc32x32,
        Pure::Crc32x64,
        Pure::ArithFlags,
        Pure::CondOfLazy,
    ];

    /// The function, if this host has the instruction (never call one it lacks).
    pub fn func(self) -> Option<PureFn> {
        let (has, f): (bool, PureFn) = match self {
            Pure::Pshufb => (is_x86_feature_detected!("ssse3"), pshufb),
            Pure::Clmul => (is_x86_feature_detected!("pclmulqdq"), clmul),
            Pure::AesEnc => (is_x86_feature_detected!("aes"), aesenc),
            Pure::AesEncLast => (is_x86_feature_detected!("aes"), aesenclast),
            Pure::AesDec => (is_x86_feature_detected!("aes"), aesdec),
            Pure::AesDecLast => (is_x86_feature_detected!("aes"), aesdeclast),
            Pure::AesImc => (is_x86_feature_detected!("aes"), aesimc),
            Pure::Crc32x8 => (is_x86_feature_detected!("sse4.2"), crc32x8),
            Pure::Crc32x16 => (is_x86_feature_detected!("sse4.2"), crc32x16),
            Pure::Crc32x32 => (is_x86_feature_detected!("sse4.2"), crc32x32),
            Pure::Crc32x64 => (is_x86_feature_detected!("sse4.2"), crc32x64),
            Pure::ArithFlags => (true, arith_flags),
            Pure::CondOfLazy => (true, cond_of_lazy),
        };
        has.then_some(f)
    }
}

fn pack(lo: u64, hi: u64) -> __m128i {
    // SAFETY: SSE2 is part of x86-64.
    unsafe { _mm_set_epi64x(hi as i64, lo as i64) }
}

fn unpack(v: __m128i) -> Pair {
    // SAFETY: __m128i and [u64; 2] have the same size and any bits are valid for both.
    let [lo, hi]: [u64; 2] = unsafe { std::mem::transmute(v) };
    Pair { lo, hi }
}

extern "C" fn arith_flags(op_aux: u64, res: u64, a: u64, b: u64) -> Pair {
    Pair {
        lo: krr_runtime::lazy_flags::arith_flags(op_aux & 0xff, res, a, b, op_aux >> 8),
        hi: 0,
    }
}

extern "C" fn cond_of_lazy(packed: u64, res: u64, a: u64, b: u64) -> Pair {
    let flags = krr_runtime::lazy_flags::arith_flags(packed & 0xff, res, a, b, packed >> 8 & 1);
    Pair {
        lo: condition_holds(flags, (packed >> 16) as u8 & 15) as u64,
        hi: 0,
    }
}

/// x86's number of a condition (Jcc's low opcode nibble: 0 = O, 1 = NO, 2 = B ... 15 = G).
pub fn cond_code_number(cc: ConditionCode) -> u8 {
    use ConditionCode as C;
    match cc {
        C::o => 0,
        C::no => 1,
        C::b => 2,
        C::ae => 3,
        C::e => 4,
        C::ne => 5,
        C::be => 6,
        C::a => 7,
        C::s => 8,
        C::ns => 9,
        C::p => 10,
        C::np => 11,
        C::l => 12,
        C::ge => 13,
        C::le => 14,
        C::g => 15,
        C::None => unreachable!("an unconditional instruction tests no flags"),
    }
}

/// Whether condition number `n` holds for the RFLAGS bits `flags`.
pub fn condition_holds(flags: u64, n: u8) -> bool {
    use krr_runtime::rflags;
    let set = |bit: u64| flags & bit != 0;
    let (cf, zf, sf, of, pf) = (
        set(rflags::CF),
        set(rflags::ZF),
        set(rflags::SF),
        set(rflags::OF),
        set(rflags::PF),
    );
    let base = match n >> 1 {
        0 => of,
        1 => cf,
        2 => zf,
        3 => cf || zf,
        4 => sf,
        5 => pf,
        6 => sf != of,
        _ => zf || sf != of,
    };
    base != (n & 1 != 0)
}

// Each function below is only handed out by `Pure::func` after the host was found to have its
// instruction, which is what the `target_feature` calls inside need.

extern "C" fn pshufb(a: u64, b: u64, c: u64, d: u64) -> Pair {
    #[target_feature(enable = "ssse3")]
    unsafe fn run(x: __m128i, m: __m128i) -> __m128i {
        _mm_shuffle_epi8(x, m)
    }
    // SAFETY: SSSE3 present (see above).
    unpack(unsafe { run(pack(a, b), pack(c, d)) })
}

extern "C" fn clmul(a: u64, _b: u64, c: u64, _d: u64) -> Pair {
    #[target_feature(enable = "pclmulqdq")]
    unsafe fn run(x: __m128i, y: __m128i) -> __m128i {
        _mm_clmulepi64_si128(x, y, 0)
    }
    // SAFETY: PCLMULQDQ present (see above).
    unpack(unsafe { run(pack(a, 0), pack(c, 0)) })
}

macro_rules! aes_round {
    ($name:ident, $intrinsic:ident) => {
        extern "C" fn $name(a: u64, b: u64, c: u64, d: u64) -> Pair {
            #[target_feature(enable = "aes")]
            unsafe fn run(x: __m128i, k: __m128i) -> __m128i {
                $intrinsic(x, k)
            }
            // SAFETY: AES-NI present (see above).
            unpack(unsafe { run(pack(a, b), pack(c, d)) })
        }
    };
}
aes_round!(aesenc, _mm_aesenc_si128);
aes_round!(aesenclast, _mm_aesenclast_si128);
aes_round!(aesdec, _mm_aesdec_si128);
aes_round!(aesdeclast, _mm_aesdeclast_si128);

extern "C" fn aesimc(_a: u64, _b: u64, c: u64, d: u64) -> Pair {
    #[target_feature(enable = "aes")]
    unsafe fn run(x: __m128i) -> __m128i {
        _mm_aesimc_si128(x)
    }
    // SAFETY: AES-NI present (see above).
    unpack(unsafe { run(pack(c, d)) })
}

macro_rules! crc32 {
    ($name:ident, $intrinsic:ident, $t:ty) => {
        extern "C" fn $name(a: u64, _b: u64, c: u64, _d: u64) -> Pair {
            #[target_feature(enable = "sse4.2")]
            unsafe fn run(acc: u32, v: $t) -> u64 {
                $intrinsic(acc as _, v) as u64
            }
            // SAFETY: SSE4.2 present (see above).
            let lo = unsafe { run(a as u32, c as $t) };
            Pair { lo, hi: 0 }
        }
    };
}
crc32!(crc32x8, _mm_crc32_u8, u8);
crc32!(crc32x16, _mm_crc32_u16, u16);
crc32!(crc32x32, _mm_crc32_u32, u32);
crc32!(crc32x64, _mm_crc32_u64, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_a_known_string() {
        // CRC-32C("123456789") = 0xE3069283 (the check value of the Castagnoli polynomial).
        let Some(f) = Pure::Crc32x8.func() else {
            return;
        };
        let mut crc = 0xffff_ffffu64;
        for &byte in b"123456789" {
            crc = f(crc, 0, byte as u64, 0).lo;
        }
        assert_eq!(crc ^ 0xffff_ffff, 0xe306_9283);
    }

    #[test]
    fn clmul_of_small_polynomials() {
        let Some(f) = Pure::Clmul.func() else { return };
        // (x + 1)(x + 1) = x^2 + 1 over GF(2).
        assert_eq!(f(3, 0, 3, 0), Pair { lo: 5, hi: 0 });
        // x^63 * x^63 = x^126.
        assert_eq!(f(1 << 63, 0, 1 << 63, 0), Pair { lo: 0, hi: 1 << 62 });
    }
}
