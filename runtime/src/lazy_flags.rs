//! The lazy arithmetic flags' encoding: an instruction records what it did ([`FlagOp`], packed
//! into `CpuState::cc_op`) and its operands (`cc_res`, `cc_a`, `cc_b`, `cc_aux`); CF, PF, AF,
//! ZF, SF and OF are computed only when read. The jit's `sem::flags` builds the same
//! computation generically (for compiled code and the interpreter); [`arith_flags`] is its
//! concrete reading for code that only holds the state, such as trace hashing. A jit test
//! checks the two agree for every kind and size.

use crate::arch::rflags;

/// What the last flag-setting instruction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlagKind {
    /// `res` holds the six flag bits themselves.
    Concrete = 0,
    /// res = a + b
    Add,
    /// res = a + b + aux (aux = carry in, 0/1)
    Adc,
    /// res = a - b (also CMP, NEG with a = 0)
    Sub,
    /// res = a - b - aux
    Sbb,
    /// AND/OR/XOR/TEST: CF = OF = 0.
    Logic,
    /// INC/DEC: aux = the preserved CF.
    Inc,
    Dec,
    /// Shifts by a non-zero count b of the value a.
    Shl,
    Shr,
    Sar,
}

impl FlagKind {
    /// Every kind, in encoding order.
    pub const ALL: [FlagKind; 11] = {
        use FlagKind::*;
        [Concrete, Add, Adc, Sub, Sbb, Logic, Inc, Dec, Shl, Shr, Sar]
    };
}

/// A flag-setting operation and its operand size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagOp {
    pub kind: FlagKind,
    pub size: u32,
}

impl FlagOp {
    pub const CONCRETE: FlagOp = FlagOp {
        kind: FlagKind::Concrete,
        size: 8,
    };

    /// The `cc_op` value: kind in bits 4 and up, size in bits 0-3.
    pub fn encode(self) -> u64 {
        ((self.kind as u64) << 4) | self.size as u64
    }

    #[inline]
    pub fn decode(v: u64) -> Option<FlagOp> {
        let kind = *FlagKind::ALL.get((v >> 4) as usize)?;
        if kind == FlagKind::Concrete {
            return Some(FlagOp::CONCRETE);
        }
        // Sizes 1, 2, 4 and 8.
        let size = (v & 15) as u32;
        (0x116u32 >> size & 1 != 0).then_some(FlagOp { kind, size })
    }
}

/// The six arithmetic flags as RFLAGS bits, from the lazy state `cc_op` (a [`FlagOp`]
/// encoding) and its operands. An undecodable `cc_op` (only a corrupt snapshot has one) reads
/// as concrete, as in the jit; concrete state returns `res` as stored.
pub fn arith_flags(cc_op: u64, res: u64, a: u64, b: u64, aux: u64) -> u64 {
    let op = FlagOp::decode(cc_op).unwrap_or(FlagOp::CONCRETE);
    if op.kind == FlagKind::Concrete {
        return res;
    }
    let l = Lazy {
        kind: op.kind,
        bits: op.size * 8,
        res,
        a,
        b,
        aux,
    };
    let cf = l.cf();
    let bit = |on: bool, flag: u64| if on { flag } else { 0 };
    bit(cf, rflags::CF)
        | bit((res & 0xff).count_ones().is_multiple_of(2), rflags::PF)
        | bit(l.af(), rflags::AF)
        | bit(res == 0, rflags::ZF)
        | bit(msb(res, l.bits), rflags::SF)
        | bit(l.of(cf), rflags::OF)
}

/// The top bit of a `bits`-wide value.
fn msb(v: u64, bits: u32) -> bool {
    (v >> ((bits - 1) & 63)) & 1 != 0
}

/// A non-concrete lazy state with its width in bits.
struct Lazy {
    kind: FlagKind,
    bits: u32,
    res: u64,
    a: u64,
    b: u64,
    aux: u64,
}

impl Lazy {
    fn cf(&self) -> bool {
        use FlagKind::*;
        let (res, a, b) = (self.res, self.a, self.b);
        let carry_in = self.aux & 1 != 0;
        match self.kind {
            Concrete => res & rflags::CF != 0,
            Add => res < a,
            Adc => res < a || (res == a && carry_in),
            Sub => a < b,
            Sbb => a < b || (a == b && carry_in),
            Logic => false,
            Inc | Dec => carry_in,
            Shl => {
                // The last bit shifted out: bit (width - count) of the original value; for
                // counts above the width it comes from beyond the operand: zero. The shift
                // amount is taken mod 64, as the generic code's shifts do.
                let w = self.bits as u64;
                b <= w && (a >> (w.wrapping_sub(b) & 63)) & 1 != 0
            }
            Shr => (a >> (b.wrapping_sub(1) & 63)) & 1 != 0,
            Sar => {
                let a = sext(a, self.bits) as i64;
                (a >> (b.wrapping_sub(1) & 63)) & 1 != 0
            }
        }
    }

    fn af(&self) -> bool {
        use FlagKind::*;
        match self.kind {
            Add | Adc | Sub | Sbb => (self.a ^ self.b ^ self.res) & 0x10 != 0,
            Inc => self.res & 0xf == 0,
            Dec => self.res & 0xf == 0xf,
            Concrete | Logic | Shl | Shr | Sar => false,
        }
    }

    fn of(&self, cf: bool) -> bool {
        use FlagKind::*;
        let (res, a, b, bits) = (self.res, self.a, self.b, self.bits);
        let top = 1u64 << (bits - 1);
        match self.kind {
            Concrete => res & rflags::OF != 0,
            Add | Adc => msb((a ^ res) & (b ^ res), bits),
            Sub | Sbb => msb((a ^ b) & (a ^ res), bits),
            Logic | Sar => false,
            Inc => res == top,
            Dec => res == top - 1,
            Shl => cf ^ msb(res, bits),
            Shr => msb(a, bits),
        }
    }
}

/// Sign-extend the low `bits` bits of `a`.
fn sext(a: u64, bits: u32) -> u64 {
    if bits >= 64 {
        a
    } else {
        (((a << (64 - bits)) as i64) >> (64 - bits)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(kind: FlagKind, size: u32, res: u64, a: u64, b: u64, aux: u64) -> u64 {
        arith_flags(FlagOp { kind, size }.encode(), res, a, b, aux)
    }

    #[test]
    fn encoding_round_trips() {
        for kind in FlagKind::ALL[1..].iter().copied() {
            for size in [1, 2, 4, 8] {
                let op = FlagOp { kind, size };
                assert_eq!(FlagOp::decode(op.encode()), Some(op));
            }
            for size in [0, 3, 5, 6, 7, 9, 15] {
                assert_eq!(FlagOp::decode((kind as u64) << 4 | size), None);
            }
        }
        assert_eq!(FlagOp::decode(0), Some(FlagOp::CONCRETE));
        assert_eq!(FlagOp::decode(11 << 4 | 8), None);
        assert_eq!(FlagOp::decode(u64::MAX), None);
    }

    #[test]
    fn concrete_and_corrupt_read_res_as_stored() {
        assert_eq!(arith_flags(0, 0x8d5, 1, 2, 3), 0x8d5);
        assert_eq!(arith_flags(u64::MAX, 0x41, 1, 2, 3), 0x41);
    }

    #[test]
    fn known_results() {
        use rflags::*;
        // add al: 0x7f + 1 = 0x80: OF SF AF.
        assert_eq!(flags(FlagKind::Add, 1, 0x80, 0x7f, 1, 0), OF | SF | AF);
        // add al: 0xff + 1 = 0: CF ZF PF AF.
        assert_eq!(flags(FlagKind::Add, 1, 0, 0xff, 1, 0), CF | ZF | PF | AF);
        // cmp eax: 1 - 2 = 0xffffffff: CF SF PF AF.
        assert_eq!(
            flags(FlagKind::Sub, 4, 0xffff_ffff, 1, 2, 0),
            CF | SF | PF | AF
        );
        // sub rax: i64::MIN - 1 overflows.
        let m = 1u64 << 63;
        assert_eq!(flags(FlagKind::Sub, 8, m - 1, m, 1, 0), OF | AF | PF);
        // inc ax to 0x8000 keeps the old CF (aux) and sets OF.
        assert_eq!(
            flags(FlagKind::Inc, 2, 0x8000, 0x7fff, 1, 1),
            CF | OF | SF | PF | AF
        );
        // dec to 0x7f.
        assert_eq!(flags(FlagKind::Dec, 1, 0x7f, 0x80, 1, 0), OF | AF);
        // shl al, 1 of 0xc0 = 0x80: CF, SF; OF = CF ^ SF = 0.
        assert_eq!(flags(FlagKind::Shl, 1, 0x80, 0xc0, 1, 0), CF | SF);
        // shr al, 1 of 0x81 = 0x40: CF, OF = old msb.
        assert_eq!(flags(FlagKind::Shr, 1, 0x40, 0x81, 1, 0), CF | OF);
        // sar al, 2 of 0x82 = 0xe0: CF = bit 1, SF.
        assert_eq!(flags(FlagKind::Sar, 1, 0xe0, 0x82, 2, 0), CF | SF);
        // and: 0 result.
        assert_eq!(flags(FlagKind::Logic, 8, 0, 5, 2, 0), ZF | PF);
    }
}
