//! Random test cases per iced-x86 [`Code`](iced_x86::Code) (one encoding form), for running
//! natively and in the engine from the same state.
//!
//! Memory layout (fixed, only contents change; see [`layout`]): the code lives in the page at
//! [`CODE_PAGE`] (sometimes straddling into the next page), three read/write regions follow at
//! [`DATA0`], [`DATA1`] and [`STACK`] with unmapped gaps between them. Every memory operand is
//! aimed, through random-but-controlled base/index/displacement values, inside a region (or,
//! in roughly one case in [`GenOptions::fault_one_in`], deliberately at an unmapped or
//! non-canonical address). Generated instructions are encoded with iced-x86 and decoded back to
//! check that the bytes are the requested form; their memory accesses are recomputed from the
//! final state and checked to be inside the regions.
//!
//! Initial states: GPRs mix uniform random and edge values (0, 1, -1, sign boundaries, powers
//! of two...), RFLAGS has random CF/PF/AF/ZF/SF/OF/DF plus IF and bit 1, XMM registers mix
//! random bits and float edge values (zeros, denormals, infinities, NaNs, integer-conversion
//! boundaries), MXCSR is 0x1f80. Per-form tuning ([`tuning`], [`GenOptions::hooks`]) steers
//! DIV/IDIV to mostly valid quotients, shift counts to masking edges, CMPXCHG to equal
//! comparands half the time, and so on. Control transfers are followed by a filler whose
//! execution shows in R11, and only target the filler or the end of the code (or, rarely,
//! unmapped/non-canonical addresses).
//!
//! Modules, from the entry points down:
//! - [`cases`]: `n` single-instruction cases of one form; [`block`]: multi-instruction blocks;
//! - [`insn`]: one instruction (generate, tune, encode, check), by way of [`operands`] (with
//!   [`imm`] and [`memory`]), [`string`], [`implicit`] (XLAT, MASKMOVDQU), [`x87`] (the x87
//!   and MMX forms and their initial x87 state, with [`x87_values`]) or, for control
//!   transfers, [`control`]; [`tuning`]: the built-in per-form value tuning;
//! - [`ctx`]: the case under construction and the generation options;
//! - [`forms`]: the covered forms and exclusions; [`regs`], [`values`], [`layout`]: registers,
//!   random values and the fixed memory layout.

mod block;
mod cases;
mod control;
mod ctx;
mod forms;
mod imm;
mod implicit;
mod insn;
mod layout;
mod memory;
mod operands;
mod regs;
mod simd;
mod string;
mod tuning;
mod values;
mod vex;
mod x87;
mod x87_values;

// The generator's interface (not every test binary uses all of it).
#[allow(unused_imports)]
pub use self::{
    block::block_case,
    cases::{cases_for, cases_for_with},
    ctx::{Ctx, GenOptions, Hook},
    forms::{
        block_eligible, covered_codes, covered_vex, exclusion_reason, is_control,
        uncovered_legacy_simd, uncovered_vex,
    },
    layout::{
        layout, CODE_PAGE, DATA0, DATA0_LEN, DATA1, DATA1_LEN, MXCSR_DEFAULT, STACK, STACK_LEN,
    },
    regs::read_reg,
    values::random_gpr,
    x87::{is_x87, is_x87_or_mmx},
};
