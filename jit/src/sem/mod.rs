//! x86-64 instruction semantics, written once and generic over a [`Builder`].
//!
//! Two builders implement the trait: an interpreter, whose values are plain `u64`s computed on
//! the spot, and a compiler, whose values are SSA values in the function being built. Each
//! instruction's behaviour exists only here; nothing here depends on which builder runs it.
//! Instructions that work on the CPU state as a whole (the system instructions) are not
//! expressed here: the router hands them to [`Helper::System`].
//!
//! Conventions:
//! - every [`Builder::V`] is a 64-bit integer; narrower operands are kept zero-extended;
//! - a method that can raise an exception returns `Result<_, Abort>`; the interpreter returns
//!   `Err(Abort)` when the exception happens, the compiler only when the code after it is
//!   unreachable (an unconditional fault). Semantics propagate it with `?` and never write
//!   architectural state after a possible fault unless the builder can roll it back (both do for
//!   registers and flags, see the builders);
//! - arithmetic flags are lazy ([`FlagState`]): an instruction records the operation and its
//!   operands, and flags are computed only when something reads them.

mod arith;
mod bitops;
mod classify;
mod control;
mod data;
mod dispatch;
mod flagops;
pub mod flags;
mod profile;
mod shift;
pub mod sse;
pub mod string;
mod system;

pub use classify::{
    is_rep_string, is_system_instruction, is_x87_escape, system_family, SystemFamily,
};
pub use flags::{FlagKind, FlagOp, FlagState};

use iced_x86::{Instruction, MemorySize, OpKind, Register};
use krr_runtime::{offsets, seg};

/// The instruction raised an exception (or translation reached unreachable code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort;

pub type R<T> = Result<T, Abort>;

/// Integer comparisons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Ult,
    Ule,
    Ugt,
    Uge,
    Slt,
    Sle,
    Sgt,
    Sge,
}

/// Rust helpers callable from semantics: `extern "C" fn(cpu, a, b, c) -> u64`. They read and
/// write the CPU state directly, so the builder writes cached registers back before the call
/// and reloads them after. A helper reports an exception by returning with
/// `cpu.exception` set and a non-zero `cpu.helper_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// Runs the whole current instruction in the interpreter: what a compiler emits for an
    /// instruction it does not lower inline (the semantics never call it).
    Interpret,
    /// A system instruction (see [`is_system_instruction`]), run on the CPU state: `a` = the
    /// linear address of its memory operand, `b` = RFLAGS before it, `c` = 1 if it has a memory
    /// operand. Returns the RIP execution continues at. Besides faults it may end in a trap
    /// (INT n, INTO, INT1) or HLT, which retire the instruction.
    System,
    Cpuid,
    /// 128-bit by 64-bit unsigned / signed division of RDX:RAX (size in `a`, divisor in `b`).
    Div,
    Idiv,
    /// An SSE..SSE4.2, AES-NI, PCLMULQDQ or CRC32 instruction run by the host itself
    /// (`helpers::host_exec`): `a` = the stub id, `b` = destination XMM index | other XMM
    /// index << 4, `c` = the value of a GPR operand 0; the r/m operand is in the scratch slot.
    SseHost,
    /// PDEP / PEXT of `a` with the mask `b` (operands zero-extended).
    Pdep,
    Pext,
}

/// Where execution goes after an instruction whose next RIP is not simply the next one.
#[derive(Clone, Copy, Debug)]
pub enum Flow<V> {
    /// A computed target after an instruction that may have changed the mode, paging,
    /// interrupt or debug state: compiled code leaves through the dispatcher.
    Jump(V),
    /// A near indirect JMP, CALL or RET: nothing but RIP changed, so compiled code may find
    /// the target in the jump cache itself.
    Indirect(V),
    /// A direct jump to a constant target.
    Direct(u64),
    /// A two-way conditional branch between constant targets.
    Branch { taken: u64, not_taken: u64 },
}

/// The operations x86 semantics are written in.
pub trait Builder {
    type V: Copy;
    type B: Copy;

    /// The instruction being executed or translated.
    fn insn(&self) -> &Instruction;
    /// The behaviour profile: a constant of the block being translated, the engine's (through
    /// `cpu.exec.profile`) in the interpreter. See [`profile`].
    fn profile(&self) -> krr_runtime::Profile;
    /// The block mode (`crate::mode`: CPL, compatibility mode, stack width): a constant of
    /// the block in compiled code, the CPU's current one in the interpreter.
    fn mode(&self) -> u32;
    /// Its memory operand, decoded (the interpreter has it cached).
    fn mem_operand(&self) -> MemOperand {
        MemOperand::new(self.insn())
    }

    fn c(&mut self, v: u64) -> Self::V;
    fn add(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(&mut self, a: Self::V, b: Self::V) -> Self::V;
    /// High 64 bits of the unsigned / signed 128-bit product.
    fn umulh(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn smulh(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn and(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn or(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn xor(&mut self, a: Self::V, b: Self::V) -> Self::V;
    fn not(&mut self, a: Self::V) -> Self::V;
    /// Shifts and rotates of the full 64 bits; the amount is taken modulo 64.
    fn shl(&mut self, a: Self::V, n: Self::V) -> Self::V;
    fn shr(&mut self, a: Self::V, n: Self::V) -> Self::V;
    fn sar(&mut self, a: Self::V, n: Self::V) -> Self::V;
    fn rotl(&mut self, a: Self::V, n: Self::V) -> Self::V;
    fn rotr(&mut self, a: Self::V, n: Self::V) -> Self::V;
    /// Bit counts of the 64-bit value (clz(0) = ctz(0) = 64).
    fn popcnt(&mut self, a: Self::V) -> Self::V;
    fn clz(&mut self, a: Self::V) -> Self::V;
    fn ctz(&mut self, a: Self::V) -> Self::V;
    fn bswap(&mut self, a: Self::V) -> Self::V;
    /// Sign-extend the low `bits` bits to 64.
    fn sext(&mut self, a: Self::V, bits: u32) -> Self::V;
    /// Keep the low `bits` bits.
    fn zext(&mut self, a: Self::V, bits: u32) -> Self::V;

    fn icmp(&mut self, cc: Cmp, a: Self::V, b: Self::V) -> Self::B;
    fn bconst(&mut self, v: bool) -> Self::B;
    fn band(&mut self, a: Self::B, b: Self::B) -> Self::B;
    fn bor(&mut self, a: Self::B, b: Self::B) -> Self::B;
    fn bxor(&mut self, a: Self::B, b: Self::B) -> Self::B;
    fn bnot(&mut self, a: Self::B) -> Self::B;
    /// 0 or 1.
    fn b2v(&mut self, a: Self::B) -> Self::V;
    fn select(&mut self, c: Self::B, t: Self::V, f: Self::V) -> Self::V;

    fn get_gpr(&mut self, r: usize) -> Self::V;
    fn set_gpr(&mut self, r: usize, v: Self::V);
    /// A 64-bit field of the CPU state, by byte offset (segment bases, RFLAGS, XMM halves...).
    fn load_state(&mut self, offset: i32) -> Self::V;
    fn store_state(&mut self, offset: i32, v: Self::V);

    /// The current lazy flags (never [`FlagState::InState`]: builders materialise that).
    fn flags(&mut self) -> FlagState<Self::V>;
    fn set_flags(&mut self, f: FlagState<Self::V>);
    /// Condition `cc` of flags an earlier block left in the CPU state, when this builder has
    /// a cheaper way than materialising them (compiled code, `compile::lower::incoming_flags`);
    /// `None` when it has not, or when the flags were set by this block.
    fn incoming_cond(&mut self, _cc: iced_x86::ConditionCode) -> Option<Self::B> {
        None
    }

    /// Load `size` bytes (1, 2, 4, 8) at a linear address, zero-extended.
    fn load(&mut self, addr: Self::V, size: u32) -> R<Self::V>;
    fn store(&mut self, addr: Self::V, v: Self::V, size: u32) -> R<()>;
    /// Store only if `cond` holds (MASKMOVDQU's byte stores): nothing is accessed otherwise.
    fn store_if(&mut self, cond: Self::B, addr: Self::V, v: Self::V, size: u32) -> R<()>;
    /// Fault as a store of `size` bytes at `addr` would, without storing.
    fn probe_write(&mut self, addr: Self::V, size: u32) -> R<()>;
    /// 16-byte accesses as (low, high) halves, all-or-nothing.
    fn load128(&mut self, addr: Self::V) -> R<(Self::V, Self::V)>;
    fn store128(&mut self, addr: Self::V, lo: Self::V, hi: Self::V) -> R<()>;

    /// The value if it is known at translation time (every value in an interpreter, constants
    /// in a compiler). Only for choosing cheaper code: semantics must be correct whatever this
    /// returns.
    fn const_of(&self, v: Self::V) -> Option<u64>;
    /// A loop whose trip count is known only at run time (a REP prefix): while `test` holds,
    /// run `body`; stop early when `body` returns false. A builder that cannot express it never
    /// gets such an instruction (see [`is_rep_string`]).
    fn repeat_while<T, F>(&mut self, test: T, body: F) -> R<()>
    where
        Self: Sized,
        T: FnMut(&mut Self) -> Self::B,
        F: FnMut(&mut Self) -> R<Self::B>;

    /// The fast path of REP MOVS/STOS: run whole iterations of `op` in bulk while they touch only
    /// RAM pages the data TLB already maps for these accesses, always leaving at least one
    /// iteration (RCX > 0) to the ordinary loop, which meets faults, MMIO and page crossings
    /// one element at a time. RCX/RSI/RDI end as if the iterations had run one by one, and are
    /// committed. A builder without a fast path does nothing here (the loop does all the work).
    fn bulk_string(&mut self, _op: BulkString) {}
    /// Before each REP iteration (`first`: the first of this execution; `a32`: RCX read as
    /// ECX): pause here if the driver asked to ([`krr_runtime::ExecContext::rep_pause_rip`]).
    /// Only the interpreter runs REP loops, so only it can pause.
    fn rep_pause_point(&mut self, _first: bool, _a32: bool) -> R<()> {
        Ok(())
    }

    /// Raise a fault unconditionally (RIP of the instruction is reported); the rest of the
    /// instruction is not executed.
    fn raise(&mut self, vector: u8, error_code: Option<u32>) -> Abort;
    /// Raise a trap (INT3, INTO): reported with the RIP of the next instruction.
    fn raise_trap(&mut self, vector: u8) -> Abort;
    /// The engine does not implement this instruction: #UD, counted and logged.
    fn unimplemented(&mut self) -> Abort;
    /// Raise an exception if `cond` holds.
    fn raise_if(&mut self, cond: Self::B, vector: u8, error_code: Option<u32>) -> R<()>;
    /// Call a Rust helper (see [`Helper`]).
    fn call(&mut self, h: Helper, args: [Self::V; 3]) -> R<Self::V>;
    /// Call a pure host function ([`crate::helpers::pure`]): it reads and writes no CPU state
    /// and cannot fail, so compiled code calls it without flushing guest registers.
    fn pure(&mut self, f: crate::helpers::pure::PureFn, args: [Self::V; 4]) -> (Self::V, Self::V);
    /// HLT: the instruction retires and the engine returns to the driver.
    fn halt(&mut self) -> Abort;
    /// Make everything done so far permanent even if the instruction faults later (used between
    /// REP iterations, which are architecturally visible one by one).
    fn commit(&mut self);
    /// Set where execution continues after this instruction.
    fn flow(&mut self, f: Flow<Self::V>, cond: Option<Self::B>);
}

/// Executes or translates one instruction. `Err(Abort)` means it raised an exception.
pub fn instruction<B: Builder>(b: &mut B) -> R<()> {
    let insn = *b.insn();
    instruction_of(b, &insn)
}

/// [`instruction`], given the builder's current instruction (`insn` is `b.insn()`): the
/// semantics read it without copying it out of the builder first.
#[inline]
pub fn instruction_of<B: Builder>(b: &mut B, insn: &Instruction) -> R<()> {
    debug_assert!(insn.eq_all_bits(b.insn()));
    dispatch::execute(b, insn)
}

// ---- operand access, shared by all instruction families ----

/// Register number and how the named part maps onto the 64-bit register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegPart {
    Low8 = 0,
    High8 = 1,
    W16 = 2,
    D32 = 3,
    Q64 = 4,
}

const NOT_GPR: u8 = 0xff;

/// For every iced `Register` value: `part << 4 | index` for general-purpose registers, else
/// `NOT_GPR`. One load instead of iced's register-info lookups (checked against them in a
/// test).
static GPR_TABLE: [u8; 256] = {
    let mut t = [NOT_GPR; 256];
    let mut i = 0;
    while i < 16 {
        t[Register::AX as usize + i] = (RegPart::W16 as u8) << 4 | i as u8;
        t[Register::EAX as usize + i] = (RegPart::D32 as u8) << 4 | i as u8;
        t[Register::RAX as usize + i] = (RegPart::Q64 as u8) << 4 | i as u8;
        i += 1;
    }
    // AL CL DL BL, AH CH DH BH, SPL BPL SIL DIL, R8L..R15L.
    let mut i = 0;
    while i < 20 {
        t[Register::AL as usize + i] = match i {
            0..=3 => i as u8,
            4..=7 => (RegPart::High8 as u8) << 4 | (i - 4) as u8,
            _ => (i - 4) as u8,
        };
        i += 1;
    }
    t
};

#[cold]
#[inline(never)]
fn not_a_gpr(r: Register) -> ! {
    panic!("{r:?} is not a general-purpose register")
}

#[inline]
pub fn gpr_of(r: Register) -> (usize, RegPart) {
    let e = GPR_TABLE[r as usize];
    if e == NOT_GPR {
        not_a_gpr(r);
    }
    let part = match e >> 4 {
        0 => RegPart::Low8,
        1 => RegPart::High8,
        2 => RegPart::W16,
        3 => RegPart::D32,
        _ => RegPart::Q64,
    };
    ((e & 15) as usize, part)
}

/// Is `r` a general-purpose register (any width)?
#[inline]
pub fn is_gpr(r: Register) -> bool {
    GPR_TABLE[r as usize] != NOT_GPR
}

/// The register's size in bytes (fast for general-purpose registers).
#[inline]
fn reg_size(r: Register) -> u32 {
    match GPR_TABLE[r as usize] >> 4 {
        0 | 1 => 1,
        2 => 2,
        3 => 4,
        4 => 8,
        _ => r.size() as u32,
    }
}

/// Read a general-purpose register (any width), zero-extended.
#[inline]
pub fn read_reg<B: Builder>(b: &mut B, r: Register) -> B::V {
    let (idx, part) = gpr_of(r);
    let full = b.get_gpr(idx);
    match part {
        RegPart::Q64 => full,
        RegPart::D32 => b.zext(full, 32),
        RegPart::W16 => b.zext(full, 16),
        RegPart::Low8 => b.zext(full, 8),
        RegPart::High8 => {
            let k = b.c(8);
            let s = b.shr(full, k);
            b.zext(s, 8)
        }
    }
}

/// [`read_reg`] on register values at hand (`gprs` = the 16 GPRs).
#[inline]
pub fn read_reg_value(gprs: &[u64; 16], r: Register) -> u64 {
    let (idx, part) = gpr_of(r);
    let full = gprs[idx];
    match part {
        RegPart::Q64 => full,
        RegPart::D32 => full & 0xffff_ffff,
        RegPart::W16 => full & 0xffff,
        RegPart::Low8 => full & 0xff,
        RegPart::High8 => (full >> 8) & 0xff,
    }
}

/// [`write_reg`] on register values at hand (`gprs` = the 16 GPRs).
#[inline]
pub fn write_reg_value(gprs: &mut [u64; 16], r: Register, v: u64) {
    let (idx, part) = gpr_of(r);
    let old = gprs[idx];
    gprs[idx] = match part {
        RegPart::Q64 => v,
        RegPart::D32 => v & 0xffff_ffff,
        RegPart::W16 => (old & !0xffff) | (v & 0xffff),
        RegPart::Low8 => (old & !0xff) | (v & 0xff),
        RegPart::High8 => (old & !0xff00) | ((v & 0xff) << 8),
    };
}

/// Write a general-purpose register with x86-64 merge rules (32-bit writes zero the top).
#[inline]
pub fn write_reg<B: Builder>(b: &mut B, r: Register, v: B::V) {
    let (idx, part) = gpr_of(r);
    write_part(b, idx, part, v);
}

/// Write the low `size` bytes (1, 2, 4 or 8) of GPR `idx` as [`write_reg`] does (for RAX: AL,
/// AX, EAX, RAX).
#[inline]
pub fn write_gpr<B: Builder>(b: &mut B, idx: usize, size: u32, v: B::V) {
    let part = match size {
        1 => RegPart::Low8,
        2 => RegPart::W16,
        4 => RegPart::D32,
        _ => RegPart::Q64,
    };
    write_part(b, idx, part, v);
}

#[inline]
fn write_part<B: Builder>(b: &mut B, idx: usize, part: RegPart, v: B::V) {
    let new = match part {
        RegPart::Q64 => v,
        RegPart::D32 => b.zext(v, 32),
        RegPart::W16 | RegPart::Low8 => {
            let bits = if part == RegPart::W16 { 16 } else { 8 };
            let old = b.get_gpr(idx);
            let keep = b.c(!((1u64 << bits) - 1));
            let hi = b.and(old, keep);
            let lo = b.zext(v, bits);
            b.or(hi, lo)
        }
        RegPart::High8 => {
            let old = b.get_gpr(idx);
            let keep = b.c(!0xff00u64);
            let hi = b.and(old, keep);
            let lo = b.zext(v, 8);
            let k = b.c(8);
            let lo = b.shl(lo, k);
            b.or(hi, lo)
        }
    };
    b.set_gpr(idx, new);
}

/// The instruction's memory operand as the address computation needs it, decoded once from
/// iced's fields: the interpreter keeps one with every cached instruction, the compiler
/// decodes it when asked ([`Builder::mem_operand`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// The displacement; for a RIP-relative operand the target itself.
    pub disp: u64,
    /// GPR numbers of the base and the index register, or [`MemOperand::NONE`].
    pub base: u8,
    pub index: u8,
    /// log2 of the index scale.
    pub shift: u8,
    /// [`MemOperand::ADDR32`] and the segment bits [`MemOperand::SS`], [`MemOperand::FS`],
    /// [`MemOperand::GS`] (other segments have no base and no check in 64-bit mode);
    /// [`MemOperand::ADDR16`] and [`MemOperand::COMPAT`] in compatibility mode.
    pub flags: u8,
    /// The segment register number (`krr_runtime::seg`), whose base compatibility mode adds.
    pub seg: u8,
}

impl MemOperand {
    pub const NONE: u8 = 0xff;
    /// 32-bit address size: the address is truncated to 32 bits.
    pub const ADDR32: u8 = 1;
    pub const SS: u8 = 2;
    pub const FS: u8 = 4;
    pub const GS: u8 = 8;
    /// 16-bit address size (compatibility mode with a 0x67 prefix, or 16-bit code).
    pub const ADDR16: u8 = 16;
    /// Compatibility mode: the segment's base is added and the linear address wraps at 4 GiB.
    pub const COMPAT: u8 = 32;

    /// What an instruction without a memory operand gets.
    pub const NO_OPERAND: MemOperand = MemOperand {
        disp: 0,
        base: MemOperand::NONE,
        index: MemOperand::NONE,
        shift: 0,
        flags: 0,
        seg: 0,
    };

    pub fn new(insn: &Instruction) -> MemOperand {
        let (base, index) = (insn.memory_base(), insn.memory_index());
        let gpr = |r: Register| {
            if r.is_gpr() {
                gpr_of(r).0 as u8
            } else {
                MemOperand::NONE
            }
        };
        let disp = match base {
            // RIP-relative: iced keeps the target in the displacement.
            Register::EIP => insn.memory_displacement64() as u32 as u64,
            _ => insn.memory_displacement64(),
        };
        let segment = memory_segment(insn);
        let mut flags = match segment {
            Register::SS => MemOperand::SS,
            Register::FS => MemOperand::FS,
            Register::GS => MemOperand::GS,
            _ => 0,
        };
        if insn.code_size() == iced_x86::CodeSize::Code64 {
            if base.size() == 4 || index.size() == 4 {
                flags |= MemOperand::ADDR32;
            }
        } else {
            flags |= MemOperand::COMPAT;
            // The address size: a register's, else the displacement's ([disp16] / [disp32]).
            let size = base.size().max(index.size()).max(match base {
                Register::EIP => 4,
                _ => insn.memory_displ_size() as usize,
            });
            flags |= if size == 2 {
                MemOperand::ADDR16
            } else {
                MemOperand::ADDR32
            };
        }
        MemOperand {
            disp,
            base: gpr(base),
            index: gpr(index),
            shift: insn.memory_index_scale().trailing_zeros() as u8,
            flags,
            seg: segment_number(segment),
        }
    }
}

/// The linear address of the instruction's memory operand, checked as an access: a
/// non-canonical stack-segment address raises #SS(0) (others fault in the MMU with #GP(0)).
#[inline]
pub fn access_address<B: Builder>(b: &mut B) -> R<B::V> {
    let m = b.mem_operand();
    let a = effective_address_of(b, m);
    if m.flags & MemOperand::SS != 0 {
        stack_canonical(b, a)?;
    }
    Ok(a)
}

/// [`access_address`] of the operand moved by `delta` bytes (BT/BTS/BTR/BTC with a register
/// bit offset): the move is part of the effective address, so it wraps with the address size
/// before the segment base is added.
pub fn access_address_moved<B: Builder>(b: &mut B, delta: B::V) -> R<B::V> {
    let m = b.mem_operand();
    let a = offset_address_of(b, m);
    let a = b.add(a, delta);
    let a = wrap_address_size(b, m, a);
    let a = add_segment_base(b, m, a);
    if m.flags & MemOperand::SS != 0 {
        stack_canonical(b, a)?;
    }
    Ok(a)
}

/// The number (`krr_runtime::seg`) of a segment register.
fn segment_number(r: Register) -> u8 {
    (match r {
        Register::ES => seg::ES,
        Register::CS => seg::CS,
        Register::SS => seg::SS,
        Register::FS => seg::FS,
        Register::GS => seg::GS,
        _ => seg::DS,
    }) as u8
}

/// The segment of the memory operand (`Instruction::memory_segment`, inlined: no prefix and a
/// base other than RSP/RBP is DS).
#[inline]
fn memory_segment(insn: &Instruction) -> Register {
    match insn.segment_prefix() {
        Register::None => match insn.memory_base() {
            Register::BP | Register::EBP | Register::ESP | Register::RBP | Register::RSP => {
                Register::SS
            }
            _ => Register::DS,
        },
        s => s,
    }
}

/// #SS(0) for a non-canonical address if the operand uses the stack segment. Instructions
/// with an alignment requirement check alignment first (#GP(0) wins on this host).
pub fn stack_check<B: Builder>(b: &mut B, addr: B::V) -> R<()> {
    if b.mem_operand().flags & MemOperand::SS != 0 {
        stack_canonical(b, addr)?;
    }
    Ok(())
}

/// The linear address of the instruction's memory operand (no access checks).
pub fn effective_address<B: Builder>(b: &mut B) -> B::V {
    let m = b.mem_operand();
    effective_address_of(b, m)
}

#[inline]
fn effective_address_of<B: Builder>(b: &mut B, m: MemOperand) -> B::V {
    let a = offset_address_of(b, m);
    add_segment_base(b, m, a)
}

/// `a` plus the FS or GS base when the operand names that segment (the others are flat in
/// 64-bit mode); in compatibility mode the operand's segment base, wrapped at 4 GiB.
#[inline]
fn add_segment_base<B: Builder>(b: &mut B, m: MemOperand, a: B::V) -> B::V {
    if m.flags & MemOperand::COMPAT != 0 {
        return compat_linear(b, m.seg as usize, a);
    }
    let s = if m.flags & MemOperand::FS != 0 {
        seg::FS
    } else if m.flags & MemOperand::GS != 0 {
        seg::GS
    } else {
        return a;
    };
    let base = b.load_state(offsets::seg_base(s));
    b.add(a, base)
}

/// base + index*scale + displacement (or the RIP-relative target), truncated to the address
/// size, without any segment base: the effective address LEA computes.
pub fn offset_address<B: Builder>(b: &mut B) -> B::V {
    let m = b.mem_operand();
    offset_address_of(b, m)
}

#[inline]
fn offset_address_of<B: Builder>(b: &mut B, m: MemOperand) -> B::V {
    let mut a = b.c(m.disp);
    if m.base != MemOperand::NONE {
        let v = b.get_gpr(m.base as usize);
        a = b.add(a, v);
    }
    if m.index != MemOperand::NONE {
        let v = b.get_gpr(m.index as usize);
        let v = if m.shift != 0 {
            let s = b.c(m.shift as u64);
            b.shl(v, s)
        } else {
            v
        };
        a = b.add(a, v);
    }
    wrap_address_size(b, m, a)
}

/// An effective address wrapped to the operand's address size.
#[inline]
fn wrap_address_size<B: Builder>(b: &mut B, m: MemOperand, a: B::V) -> B::V {
    if m.flags & MemOperand::ADDR32 != 0 {
        b.zext(a, 32)
    } else if m.flags & MemOperand::ADDR16 != 0 {
        b.zext(a, 16)
    } else {
        a
    }
}

/// The linear address of offset `a` in segment `s` in compatibility mode: the segment's base
/// added, wrapped at 4 GiB (limits are not checked: see ARCHITECTURE.md).
#[inline(never)]
pub fn compat_linear<B: Builder>(b: &mut B, s: usize, a: B::V) -> B::V {
    let base = b.load_state(offsets::seg_base(s));
    let a = b.add(a, base);
    b.zext(a, 32)
}

/// Is the instruction compatibility-mode code (decoded as 32- or 16-bit)?
#[inline]
pub fn is_compat(insn: &Instruction) -> bool {
    insn.code_size() != iced_x86::CodeSize::Code64
}

/// Raise #SS(0) unless `addr` is canonical (stack accesses).
pub fn stack_canonical<B: Builder>(b: &mut B, addr: B::V) -> R<()> {
    let s = b.sext(addr, 48);
    let bad = b.icmp(Cmp::Ne, s, addr);
    b.raise_if(bad, krr_runtime::vector::SS, Some(0))
}

/// Raise #GP(0) at a branch whose target is not canonical (nothing is pushed or jumped).
pub fn branch_target_canonical<B: Builder>(b: &mut B, target: B::V) -> R<()> {
    let s = b.sext(target, 48);
    let bad = b.icmp(Cmp::Ne, s, target);
    b.raise_if(bad, krr_runtime::vector::GP, Some(0))
}

/// Add the segment base where 64-bit mode still applies one (FS and GS); in compatibility
/// mode every segment's, wrapped at 4 GiB.
#[inline]
pub fn segment_base<B: Builder>(b: &mut B, segment: Register, addr: B::V) -> B::V {
    if is_compat(b.insn()) {
        return compat_linear(b, segment_number(segment) as usize, addr);
    }
    let s = match segment {
        Register::FS => seg::FS,
        Register::GS => seg::GS,
        _ => return addr,
    };
    let base = b.load_state(offsets::seg_base(s));
    b.add(addr, base)
}

/// A REP MOVS or STOS instruction as [`Builder::bulk_string`] sees it.
#[derive(Clone, Copy, Debug)]
pub struct BulkString {
    /// STOS (stores RAX's low `size` bytes) rather than MOVS.
    pub store_only: bool,
    /// Element size in bytes.
    pub size: u32,
    /// 32-bit addressing (ESI/EDI/ECX).
    pub a32: bool,
    /// The source's segment (MOVS; FS/GS add their base).
    pub src_seg: Register,
}

/// Operand size in bytes of operand `i` (register or memory).
#[inline]
pub fn op_size(insn: &Instruction, i: u32) -> u32 {
    match insn.op_kind(i) {
        OpKind::Register => reg_size(insn.op_register(i)),
        OpKind::Memory => mem_size(insn.memory_size()),
        OpKind::Immediate8 => 1,
        OpKind::Immediate16 | OpKind::Immediate8to16 => 2,
        OpKind::Immediate32 | OpKind::Immediate8to32 => 4,
        _ => 8,
    }
}

pub fn mem_size(m: MemorySize) -> u32 {
    m.size() as u32
}

/// Read operand `i` with `size` bytes, zero-extended (immediates are truncated to `size`).
#[inline(always)]
pub fn read_op<B: Builder>(b: &mut B, i: u32, size: u32) -> R<B::V> {
    let insn = b.insn();
    match insn.op_kind(i) {
        OpKind::Register => {
            let r = insn.op_register(i);
            Ok(read_reg(b, r))
        }
        OpKind::Memory => load_mem_op(b, size),
        _ => {
            let v = truncate(insn.immediate(i), size);
            Ok(b.c(v))
        }
    }
}

/// Load the memory operand (out of line: register operands are the common case).
#[inline(never)]
fn load_mem_op<B: Builder>(b: &mut B, size: u32) -> R<B::V> {
    let a = access_address(b)?;
    b.load(a, size)
}

/// Store to the memory operand.
#[inline(never)]
fn store_mem_op<B: Builder>(b: &mut B, size: u32, v: B::V) -> R<()> {
    let a = access_address(b)?;
    b.store(a, v, size)
}

/// Write operand `i`.
#[inline(always)]
pub fn write_op<B: Builder>(b: &mut B, i: u32, size: u32, v: B::V) -> R<()> {
    let insn = b.insn();
    match insn.op_kind(i) {
        OpKind::Register => {
            let r = insn.op_register(i);
            write_reg(b, r, v);
            Ok(())
        }
        OpKind::Memory => store_mem_op(b, size, v),
        k => panic!("write to non-writable operand kind {k:?}"),
    }
}

#[inline]
pub fn truncate(v: u64, size: u32) -> u64 {
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (size * 8)) - 1)
    }
}

#[inline]
pub fn bits(size: u32) -> u32 {
    size * 8
}

/// Read-modify-write helper: returns (linear address if memory, current value).
#[inline]
pub fn read_rmw<B: Builder>(b: &mut B, size: u32) -> R<(Option<B::V>, B::V)> {
    let insn = b.insn();
    if insn.op0_kind() == OpKind::Memory {
        let a = access_address(b)?;
        let v = b.load(a, size)?;
        Ok((Some(a), v))
    } else {
        let r = insn.op0_register();
        Ok((None, read_reg(b, r)))
    }
}

#[inline]
pub fn write_rmw<B: Builder>(b: &mut B, addr: Option<B::V>, size: u32, v: B::V) -> R<()> {
    match addr {
        Some(a) => b.store(a, v, size),
        None => {
            let r = b.insn().op0_register();
            write_reg(b, r, v);
            Ok(())
        }
    }
}

/// Stack push of `size` bytes (8 or 2 in 64-bit mode; 4 or 2 in compatibility mode).
pub fn push<B: Builder>(b: &mut B, v: B::V, size: u32) -> R<()> {
    let sp = b.get_gpr(krr_runtime::gpr::RSP);
    let k = b.c(size as u64);
    let nsp = b.sub(sp, k);
    let a = stack_address(b, nsp)?;
    b.store(a, v, size)?;
    let nsp = stack_pointer(b, sp, nsp);
    b.set_gpr(krr_runtime::gpr::RSP, nsp);
    Ok(())
}

/// Stack pop; RSP is updated by the caller through the returned new value so that a later
/// fault in the same instruction leaves RSP unchanged.
pub fn pop<B: Builder>(b: &mut B, size: u32) -> R<(B::V, B::V)> {
    let sp = b.get_gpr(krr_runtime::gpr::RSP);
    let a = stack_address(b, sp)?;
    let v = b.load(a, size)?;
    let k = b.c(size as u64);
    let nsp = b.add(sp, k);
    let nsp = stack_pointer(b, sp, nsp);
    Ok((v, nsp))
}

/// The linear address of the stack location `sp` (RSP arithmetic already done), checked: in
/// 64-bit mode #SS(0) unless canonical; in compatibility mode `sp` is wrapped to the stack's
/// width (ESP or SP, by SS.B) and SS's base added.
pub fn stack_address<B: Builder>(b: &mut B, sp: B::V) -> R<B::V> {
    let width = stack_width(b);
    if width == 8 {
        stack_canonical(b, sp)?;
        return Ok(sp);
    }
    let off = b.zext(sp, width * 8);
    Ok(compat_linear(b, seg::SS, off))
}

/// The stack's address size in bytes: 8 for 64-bit code (decided by the instruction, without
/// asking the builder), else by SS.B through the block mode.
#[inline]
fn stack_width<B: Builder>(b: &B) -> u32 {
    if is_compat(b.insn()) {
        crate::mode::stack_bytes(b.mode())
    } else {
        8
    }
}

/// The new RSP after moving the stack pointer from `old` to `new`: in compatibility mode only
/// ESP (zero-extended, as every 32-bit register write) or SP changes.
pub fn stack_pointer<B: Builder>(b: &mut B, old: B::V, new: B::V) -> B::V {
    match stack_width(b) {
        8 => new,
        4 => b.zext(new, 32),
        _ => {
            let keep = b.c(!0xffffu64);
            let hi = b.and(old, keep);
            let lo = b.zext(new, 16);
            b.or(hi, lo)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register table agrees with iced's register information for every register.
    #[test]
    fn gpr_table_matches_iced() {
        for r in Register::values() {
            if r.is_gpr() {
                let (idx, part) = gpr_of(r);
                assert_eq!(
                    idx,
                    r.full_register() as usize - Register::RAX as usize,
                    "{r:?}"
                );
                let want = match r.size() {
                    1 if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) => {
                        RegPart::High8
                    }
                    1 => RegPart::Low8,
                    2 => RegPart::W16,
                    4 => RegPart::D32,
                    _ => RegPart::Q64,
                };
                assert_eq!(part, want, "{r:?}");
            } else {
                assert_eq!(GPR_TABLE[r as usize], NOT_GPR, "{r:?}");
            }
            assert_eq!(reg_size(r), r.size() as u32, "{r:?}");
            assert_eq!(is_gpr(r), r.is_gpr(), "{r:?}");
        }
    }
}
