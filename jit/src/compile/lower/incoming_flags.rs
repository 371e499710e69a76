//! A condition on flags an earlier block set (`sem::Builder::incoming_cond`): compiled code
//! reads the lazy state (`cc_op` and its operands) and, for the two producers that set almost
//! every flag a conditional jump tests across a block boundary (CMP/SUB and TEST/AND/OR/XOR),
//! computes the condition inline; other producers and conditions call the runtime's reading
//! (`Pure::CondOfLazy`). Nothing is written back: the state keeps its lazy flags. Single-step
//! blocks hit this on every conditional jump.

use super::Lower;
use crate::helpers::pure::{cond_code_number, Pure};
use crate::sem::{flags::FlagKind, Builder};
use cranelift_codegen::ir::{condcodes::IntCC, types, BlockArg, InstBuilder, Value};
use iced_x86::ConditionCode as C;
use krr_runtime::offsets;

/// How a Sub-kind state answers `cc`: (compare, signed), if by one compare of its operands.
fn sub_compare(cc: C) -> Option<(IntCC, bool)> {
    Some(match cc {
        C::e => (IntCC::Equal, false),
        C::ne => (IntCC::NotEqual, false),
        C::b => (IntCC::UnsignedLessThan, false),
        C::ae => (IntCC::UnsignedGreaterThanOrEqual, false),
        C::be => (IntCC::UnsignedLessThanOrEqual, false),
        C::a => (IntCC::UnsignedGreaterThan, false),
        C::l => (IntCC::SignedLessThan, true),
        C::ge => (IntCC::SignedGreaterThanOrEqual, true),
        C::le => (IntCC::SignedLessThanOrEqual, true),
        C::g => (IntCC::SignedGreaterThan, true),
        _ => return None,
    })
}

/// How a Logic-kind state (CF = OF = 0) answers `cc`: the result compared with zero (signed
/// where the sign matters), or a constant.
enum LogicAnswer {
    Compare(IntCC, bool),
    Constant(bool),
}

fn logic_answer(cc: C) -> Option<LogicAnswer> {
    use LogicAnswer::*;
    Some(match cc {
        C::e | C::be => Compare(IntCC::Equal, false),
        C::ne | C::a => Compare(IntCC::NotEqual, false),
        C::s | C::l => Compare(IntCC::SignedLessThan, true),
        C::ns | C::ge => Compare(IntCC::SignedGreaterThanOrEqual, true),
        C::le => Compare(IntCC::SignedLessThanOrEqual, true),
        C::g => Compare(IntCC::SignedGreaterThan, true),
        C::b | C::o => Constant(false),
        C::ae | C::no => Constant(true),
        _ => return None,
    })
}

impl Lower<'_> {
    /// `cc` of the flags in the CPU state, as an `i8` 0/1.
    pub(super) fn cond_of_state_flags(&mut self, cc: C) -> Value {
        let op = self.state_load(offsets::CC_OP);
        let res = self.state_load(offsets::CC_RES);
        let a = self.state_load(offsets::CC_A);
        let b = self.state_load(offsets::CC_B);
        let kind = self.fb.ins().ushr_imm_u(op, 4);
        // The operand width's complement in bits (64 - 8 * size), to sign-extend by shifting.
        let size = self.fb.ins().band_imm_u(op, 15);
        let size_bits = self.fb.ins().ishl_imm_u(size, 3);
        let sixty_four = self.fb.ins().iconst(types::I64, 64);
        let pad = self.fb.ins().isub(sixty_four, size_bits);
        let join = self.fb.create_block();
        let result = self.fb.append_block_param(join, types::I8);
        let slow = self.fb.create_block();
        self.fb.set_cold_block(slow);

        let next_test = |l: &mut Self, kind_is: FlagKind| {
            let hit = l.fb.create_block();
            let miss = l.fb.create_block();
            let is = l.fb.ins().icmp_imm_u(IntCC::Equal, kind, kind_is as i64);
            l.fb.ins().brif(is, hit, &[], miss, &[]);
            l.fb.switch_to_block(hit);
            miss
        };
        let sext = |l: &mut Self, v: Value| {
            let up = l.fb.ins().ishl(v, pad);
            l.fb.ins().sshr(up, pad)
        };

        if let Some((cmp, signed)) = sub_compare(cc) {
            let miss = next_test(self, FlagKind::Sub);
            let (x, y) = if signed {
                (sext(self, a), sext(self, b))
            } else {
                (a, b)
            };
            let v = self.fb.ins().icmp(cmp, x, y);
            self.fb.ins().jump(join, &[BlockArg::Value(v)]);
            self.fb.switch_to_block(miss);
        }
        if let Some(answer) = logic_answer(cc) {
            let miss = next_test(self, FlagKind::Logic);
            let v = match answer {
                LogicAnswer::Compare(cmp, signed) => {
                    let r = if signed { sext(self, res) } else { res };
                    self.fb.ins().icmp_imm_u(cmp, r, 0)
                }
                LogicAnswer::Constant(c) => self.fb.ins().iconst(types::I8, c as i64),
            };
            self.fb.ins().jump(join, &[BlockArg::Value(v)]);
            self.fb.switch_to_block(miss);
        }
        self.fb.ins().jump(slow, &[]);

        // Any other producer or condition: the runtime's reading of all six flags.
        self.fb.switch_to_block(slow);
        let aux = self.state_load(offsets::CC_AUX);
        let carry = self.fb.ins().band_imm_u(aux, 1);
        let carry = self.fb.ins().ishl_imm_u(carry, 8);
        let number = self.iconst(u64::from(cond_code_number(cc)) << 16);
        let packed = self.fb.ins().bor(op, carry);
        let packed = self.fb.ins().bor(packed, number);
        let read = Pure::CondOfLazy.func().expect("available on every host");
        let (holds, _) = self.pure(read, [packed, res, a, b]);
        let v = self.fb.ins().ireduce(types::I8, holds);
        self.fb.ins().jump(join, &[BlockArg::Value(v)]);

        self.fb.switch_to_block(join);
        result
    }
}
