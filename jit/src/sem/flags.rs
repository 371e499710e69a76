//! Lazy arithmetic flags: an instruction records what it did ([`FlagOp`]) and its operands;
//! CF/PF/AF/ZF/SF/OF are computed only when read. Within a compiled block the operation is a
//! compile-time constant, so `cmp; jcc` becomes one host compare and flags nobody reads are
//! never computed (dead-flag elimination for free). Across blocks the operation and operands
//! are stored in the CPU state (`cc_op`, `cc_res`, `cc_a`, `cc_b`, `cc_aux`).

use super::{bits, Builder, Cmp};
use iced_x86::ConditionCode;
use krr_runtime::rflags;

// The encoding is the runtime's, which reads the flags without an interpreter.
pub use krr_runtime::lazy_flags::{FlagKind, FlagOp};

/// The lazy flags: an operation and its (zero-extended) operands.
#[derive(Clone, Copy, Debug)]
pub struct FlagState<V> {
    pub op: FlagOp,
    pub res: V,
    pub a: V,
    pub b: V,
    pub aux: V,
}

impl<V: Copy> FlagState<V> {
    pub fn new(kind: FlagKind, size: u32, res: V, a: V, b: V, aux: V) -> Self {
        FlagState {
            op: FlagOp { kind, size },
            res,
            a,
            b,
            aux,
        }
    }
}

fn msb<B: Builder>(b: &mut B, v: B::V, size: u32) -> B::B {
    let sh = b.c(bits(size) as u64 - 1);
    let s = b.shr(v, sh);
    let one = b.c(1);
    let s = b.and(s, one);
    let zero = b.c(0);
    b.icmp(Cmp::Ne, s, zero)
}

fn bit_set<B: Builder>(b: &mut B, v: B::V, mask: u64) -> B::B {
    let m = b.c(mask);
    let x = b.and(v, m);
    let zero = b.c(0);
    b.icmp(Cmp::Ne, x, zero)
}

pub fn cf<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    use FlagKind::*;
    match f.op.kind {
        Concrete => bit_set(b, f.res, rflags::CF),
        Add => b.icmp(Cmp::Ult, f.res, f.a),
        Adc => {
            let lt = b.icmp(Cmp::Ult, f.res, f.a);
            let eq = b.icmp(Cmp::Eq, f.res, f.a);
            let cin = bit_set(b, f.aux, 1);
            let x = b.band(eq, cin);
            b.bor(lt, x)
        }
        Sub => b.icmp(Cmp::Ult, f.a, f.b),
        Sbb => {
            let lt = b.icmp(Cmp::Ult, f.a, f.b);
            let eq = b.icmp(Cmp::Eq, f.a, f.b);
            let cin = bit_set(b, f.aux, 1);
            let x = b.band(eq, cin);
            b.bor(lt, x)
        }
        Logic => b.bconst(false),
        Inc | Dec => bit_set(b, f.aux, 1),
        Shl => {
            // The last bit shifted out: bit (size*8 - count) of the original value.
            let w = b.c(bits(f.op.size) as u64);
            let n = b.sub(w, f.b);
            // For counts above the width the bit comes from beyond the operand: zero.
            let big = b.icmp(Cmp::Ugt, f.b, w);
            let s = b.shr(f.a, n);
            let one = b.c(1);
            let bit = b.and(s, one);
            let zero = b.c(0);
            let bit = b.select(big, zero, bit);
            b.icmp(Cmp::Ne, bit, zero)
        }
        Shr => {
            let one = b.c(1);
            let n = b.sub(f.b, one);
            let s = b.shr(f.a, n);
            let bit = b.and(s, one);
            let zero = b.c(0);
            b.icmp(Cmp::Ne, bit, zero)
        }
        Sar => {
            let one = b.c(1);
            let n = b.sub(f.b, one);
            let a = b.sext(f.a, bits(f.op.size));
            let s = b.sar(a, n);
            let bit = b.and(s, one);
            let zero = b.c(0);
            b.icmp(Cmp::Ne, bit, zero)
        }
    }
}

pub fn zf<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    if f.op.kind == FlagKind::Concrete {
        return bit_set(b, f.res, rflags::ZF);
    }
    let zero = b.c(0);
    b.icmp(Cmp::Eq, f.res, zero)
}

pub fn sf<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    if f.op.kind == FlagKind::Concrete {
        return bit_set(b, f.res, rflags::SF);
    }
    msb(b, f.res, f.op.size)
}

pub fn pf<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    if f.op.kind == FlagKind::Concrete {
        return bit_set(b, f.res, rflags::PF);
    }
    let low = b.zext(f.res, 8);
    let n = b.popcnt(low);
    let one = b.c(1);
    let odd = b.and(n, one);
    let zero = b.c(0);
    b.icmp(Cmp::Eq, odd, zero)
}

pub fn af<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    use FlagKind::*;
    match f.op.kind {
        Concrete => bit_set(b, f.res, rflags::AF),
        Add | Adc | Sub | Sbb => {
            let x = b.xor(f.a, f.b);
            let x = b.xor(x, f.res);
            bit_set(b, x, 0x10)
        }
        Inc => {
            let low = b.zext(f.res, 4);
            let zero = b.c(0);
            b.icmp(Cmp::Eq, low, zero)
        }
        Dec => {
            let low = b.zext(f.res, 4);
            let f15 = b.c(15);
            b.icmp(Cmp::Eq, low, f15)
        }
        Logic | Shl | Shr | Sar => b.bconst(false),
    }
}

pub fn of<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::B {
    use FlagKind::*;
    let size = f.op.size;
    match f.op.kind {
        Concrete => bit_set(b, f.res, rflags::OF),
        Add | Adc => {
            let x = b.xor(f.a, f.res);
            let y = b.xor(f.b, f.res);
            let z = b.and(x, y);
            msb(b, z, size)
        }
        Sub | Sbb => {
            let x = b.xor(f.a, f.b);
            let y = b.xor(f.a, f.res);
            let z = b.and(x, y);
            msb(b, z, size)
        }
        Logic | Sar => b.bconst(false),
        Inc => {
            let m = b.c(1u64 << (bits(size) - 1));
            b.icmp(Cmp::Eq, f.res, m)
        }
        Dec => {
            let m = b.c((1u64 << (bits(size) - 1)) - 1);
            b.icmp(Cmp::Eq, f.res, m)
        }
        Shl => {
            let c = cf(b, f);
            let s = msb(b, f.res, size);
            b.bxor(c, s)
        }
        Shr => msb(b, f.a, size),
    }
}

/// All six arithmetic flags as RFLAGS bits.
pub fn materialize<B: Builder>(b: &mut B, f: &FlagState<B::V>) -> B::V {
    if f.op.kind == FlagKind::Concrete {
        return f.res;
    }
    let parts = [
        (cf(b, f), 0u32),
        (pf(b, f), 2),
        (af(b, f), 4),
        (zf(b, f), 6),
        (sf(b, f), 7),
        (of(b, f), 11),
    ];
    let mut acc = b.c(0);
    for (flag, pos) in parts {
        let v = b.b2v(flag);
        let v = if pos == 0 {
            v
        } else {
            let k = b.c(pos as u64);
            b.shl(v, k)
        };
        acc = b.or(acc, v);
    }
    acc
}

/// Concrete flags state from RFLAGS bits.
pub fn concrete<B: Builder>(b: &mut B, bits: B::V) -> FlagState<B::V> {
    let m = b.c(rflags::ARITH);
    let res = b.and(bits, m);
    let z = b.c(0);
    FlagState {
        op: FlagOp::CONCRETE,
        res,
        a: z,
        b: z,
        aux: z,
    }
}

/// Evaluate a condition code, with direct compares for the common producer/consumer pairs.
pub fn cond<B: Builder>(b: &mut B, cc: ConditionCode) -> B::B {
    use ConditionCode as C;
    if cc == C::None {
        return b.bconst(true);
    }
    if let Some(c) = b.incoming_cond(cc) {
        return c;
    }
    let f = b.flags();
    let size = f.op.size;
    match f.op.kind {
        FlagKind::Sub => {
            let direct = match cc {
                C::e => Some((Cmp::Eq, false)),
                C::ne => Some((Cmp::Ne, false)),
                C::b => Some((Cmp::Ult, false)),
                C::ae => Some((Cmp::Uge, false)),
                C::be => Some((Cmp::Ule, false)),
                C::a => Some((Cmp::Ugt, false)),
                C::l => Some((Cmp::Slt, true)),
                C::ge => Some((Cmp::Sge, true)),
                C::le => Some((Cmp::Sle, true)),
                C::g => Some((Cmp::Sgt, true)),
                _ => None,
            };
            if let Some((cmp, signed)) = direct {
                let (x, y) = if signed {
                    (b.sext(f.a, bits(size)), b.sext(f.b, bits(size)))
                } else {
                    (f.a, f.b)
                };
                return b.icmp(cmp, x, y);
            }
        }
        FlagKind::Logic => {
            let r = b.sext(f.res, bits(size));
            let zero = b.c(0);
            match cc {
                C::e | C::be => return b.icmp(Cmp::Eq, r, zero),
                C::ne | C::a => return b.icmp(Cmp::Ne, r, zero),
                C::s | C::l => return b.icmp(Cmp::Slt, r, zero),
                C::ns | C::ge => return b.icmp(Cmp::Sge, r, zero),
                C::le => return b.icmp(Cmp::Sle, r, zero),
                C::g => return b.icmp(Cmp::Sgt, r, zero),
                C::b | C::o => return b.bconst(false),
                C::ae | C::no => return b.bconst(true),
                _ => {}
            }
        }
        _ => {}
    }
    match cc {
        C::o => of(b, &f),
        C::no => {
            let x = of(b, &f);
            b.bnot(x)
        }
        C::b => cf(b, &f),
        C::ae => {
            let x = cf(b, &f);
            b.bnot(x)
        }
        C::e => zf(b, &f),
        C::ne => {
            let x = zf(b, &f);
            b.bnot(x)
        }
        C::be | C::a => {
            let c = cf(b, &f);
            let z = zf(b, &f);
            let x = b.bor(c, z);
            if cc == C::a {
                b.bnot(x)
            } else {
                x
            }
        }
        C::s => sf(b, &f),
        C::ns => {
            let x = sf(b, &f);
            b.bnot(x)
        }
        C::p => pf(b, &f),
        C::np => {
            let x = pf(b, &f);
            b.bnot(x)
        }
        C::l | C::ge => {
            let s = sf(b, &f);
            let o = of(b, &f);
            let x = b.bxor(s, o);
            if cc == C::ge {
                b.bnot(x)
            } else {
                x
            }
        }
        C::le | C::g => {
            let s = sf(b, &f);
            let o = of(b, &f);
            let x = b.bxor(s, o);
            let z = zf(b, &f);
            let x = b.bor(x, z);
            if cc == C::g {
                b.bnot(x)
            } else {
                x
            }
        }
        C::None => b.bconst(true),
    }
}
