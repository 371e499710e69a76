//! The interpreter: a [`Builder`] whose values are computed on the spot against the CPU state.
//!
//! Register, state and flag writes are logged so that an instruction that faults part-way
//! leaves no trace (faults are precise); memory stores happen only after their translation
//! succeeded, and semantics order stores before register updates.

use crate::helpers;
use crate::sem::{self, Abort, Builder, Cmp, FlagOp, FlagState, Flow, Helper, MemOperand, R};
use iced_x86::Instruction;
use krr_runtime::gpr::{RAX, RCX, RDI, RSI};
use krr_runtime::{mmu, offsets, CpuState, ExceptionRecord, Outcome};

/// An instruction with no operands, for helpers that use the interpreter without one.
static NO_INSN: std::sync::LazyLock<Instruction> = std::sync::LazyLock::new(Instruction::default);

pub struct Interp<'a> {
    cpu: &'a mut CpuState,
    // A reference, not a copy: copying the 40-byte instruction on every step costs a
    // store-forwarding stall when semantics read it back.
    insn: &'a Instruction,
    /// Its memory operand, decoded.
    mem: &'a MemOperand,
    /// What the current instruction's writes replaced.
    undo: &'a mut Undo,
    /// GPRs the current instruction wrote (bit r; their old values are in `undo.gprs`).
    gprs_written: u16,
    /// `undo.flags` holds the lazy flags from before the current instruction.
    flags_saved: bool,
    /// Where the current instruction continues (its `next_ip` unless it branched).
    next_rip: u64,
    /// `TRAP`, `UNIMPLEMENTED`, `HALTED` bits of the current instruction.
    status: u8,
}

/// The undo records of the instruction being interpreted, kept by the caller between
/// instructions so that they are allocated and initialised once.
#[derive(Default)]
pub struct Undo {
    /// (state offset, old value) of every non-GPR state write.
    log: Vec<(i32, u64)>,
    /// Values of the written GPRs before the instruction's first write to each.
    gprs: [u64; 16],
    /// The lazy-flags fields before the instruction's first flag write.
    flags: [u64; 5],
}

impl Undo {
    pub fn new() -> Undo {
        Undo {
            log: Vec::with_capacity(32),
            ..Default::default()
        }
    }
}

const TRAP: u8 = 1;
const UNIMPLEMENTED: u8 = 2;
const HALTED: u8 = 4;
/// A REP string instruction paused between iterations (`ExecContext::rep_pause_rip`).
const REP_PAUSED: u8 = 8;

/// Execute one instruction (see [`Interp::step`]).
pub fn step(cpu: &mut CpuState, insn: &Instruction) -> Outcome {
    cpu.exec.helper_status = Outcome::Continue;
    let mut undo = Undo::default();
    let mem = MemOperand::new(insn);
    Interp::new(cpu, &mut undo).step(insn, &mem)
}

/// Compute the arithmetic flags from the lazy state, store them back in concrete form and
/// return them as RFLAGS bits.
pub fn materialize_flags(cpu: &mut CpuState) -> u64 {
    // The runtime's concrete reading of the lazy state (checked equal to `sem::flags` for
    // every kind and size): compiled single-instruction blocks call this for every
    // conditional jump, and the generic builder path cost several times more.
    let bits = cpu.arith_flags();
    cpu.cc_op = FlagOp::CONCRETE.encode();
    cpu.cc_res = bits;
    bits
}

/// The same reading through the generic `sem::flags` code, which compiled blocks and the
/// interpreter's conditions use (the runtime's reading is tested against this one).
pub fn materialize_flags_generic(cpu: &mut CpuState) -> u64 {
    let mut undo = Undo::default();
    let mut it = Interp::new(cpu, &mut undo);
    let f = it.flags();
    crate::sem::flags::materialize(&mut it, &f)
}

impl<'a> Interp<'a> {
    /// An interpreter on `cpu`; `undo` is scratch space for the undo records, kept by the
    /// caller so that it is allocated once.
    pub fn new(cpu: &'a mut CpuState, undo: &'a mut Undo) -> Interp<'a> {
        undo.log.clear();
        Interp {
            cpu,
            insn: &NO_INSN,
            mem: &MemOperand::NO_OPERAND,
            undo,
            gprs_written: 0,
            flags_saved: false,
            next_rip: 0,
            status: 0,
        }
    }

    pub fn cpu(&mut self) -> &mut CpuState {
        self.cpu
    }

    /// Execute one instruction, whose memory operand is `mem` (`MemOperand::new(insn)`), and
    /// say how it ended: [`Outcome::Continue`] (retired; `cpu.rip` is the next instruction),
    /// `Fault` (RIP at it), `Trap` (retired, RIP past it), `Unbacked` (nothing retired) or
    /// `Halt` (retired); the payload is where [`Outcome`] says. An instruction the engine lacks
    /// raises #UD and counts in `cpu.exec.unimplemented_count`.
    /// `cpu.helper_status` must be `Continue` (it stays so).
    #[inline]
    pub fn step(&mut self, insn: &'a Instruction, mem: &'a MemOperand) -> Outcome {
        debug_assert_eq!(*mem, MemOperand::new(insn));
        self.insn = insn;
        self.mem = mem;
        self.next_rip = insn.next_ip();
        match sem::instruction_of(self, insn) {
            Ok(()) => {
                debug_assert_eq!(self.cpu.exec.helper_status, Outcome::Continue);
                self.cpu.rip = self.next_rip;
                self.cpu.icount += 1;
                self.forget_undo();
                Outcome::Continue
            }
            Err(Abort) => self.aborted(insn),
        }
    }

    /// The end of an instruction that left through `Err(Abort)`: roll back unless it retired
    /// (HLT), and say how it ended. Leaves the interpreter ready for the next step.
    #[cold]
    #[inline(never)]
    fn aborted(&mut self, insn: &Instruction) -> Outcome {
        let status = std::mem::take(&mut self.status);
        if status & HALTED != 0 {
            // HLT retired; the engine returns to the driver.
            self.forget_undo();
            self.cpu.rip = insn.next_ip();
            self.cpu.icount += 1;
            return Outcome::Halt;
        }
        self.rollback();
        if status & REP_PAUSED != 0 {
            // The iterations before the pause are committed; the instruction has not retired.
            self.cpu.rip = insn.ip();
            return Outcome::Budget;
        }
        let unbacked = self.cpu.exec.helper_status == Outcome::Unbacked;
        self.cpu.exec.helper_status = Outcome::Continue;
        if unbacked {
            self.cpu.rip = insn.ip();
            return Outcome::Unbacked;
        }
        if status & UNIMPLEMENTED != 0 {
            self.cpu.exec.unimplemented_count += 1;
        }
        if status & TRAP != 0 {
            self.cpu.rip = insn.next_ip();
            self.cpu.icount += 1;
            Outcome::Trap
        } else {
            self.cpu.rip = insn.ip();
            Outcome::Fault
        }
    }
}

impl Interp<'_> {
    /// Make the current instruction's writes permanent.
    #[inline]
    fn forget_undo(&mut self) {
        if !self.undo.log.is_empty() {
            self.undo.log.clear();
        }
        self.gprs_written = 0;
        self.flags_saved = false;
    }

    fn rollback(&mut self) {
        while let Some((off, old)) = self.undo.log.pop() {
            self.write_raw(off, old);
        }
        let mut written = std::mem::take(&mut self.gprs_written);
        while written != 0 {
            let r = written.trailing_zeros() as usize;
            self.cpu.gpr[r] = self.undo.gprs[r];
            written &= written - 1;
        }
        if std::mem::take(&mut self.flags_saved) {
            let [op, res, a, b, aux] = self.undo.flags;
            self.cpu.cc_op = op;
            self.cpu.cc_res = res;
            self.cpu.cc_a = a;
            self.cpu.cc_b = b;
            self.cpu.cc_aux = aux;
        }
    }

    fn read_raw(&self, off: i32) -> u64 {
        assert!(off >= 0 && off as usize + 8 <= std::mem::size_of::<CpuState>());
        // SAFETY: the offset is inside the CpuState (checked above); fields are u64-aligned
        // where semantics use them, and read_unaligned tolerates the rest.
        unsafe {
            std::ptr::read_unaligned(
                (self.cpu as *const CpuState as *const u8).add(off as usize) as *const u64
            )
        }
    }

    fn write_raw(&mut self, off: i32, v: u64) {
        assert!(off >= 0 && off as usize + 8 <= std::mem::size_of::<CpuState>());
        // SAFETY: as in read_raw.
        unsafe {
            std::ptr::write_unaligned(
                (self.cpu as *mut CpuState as *mut u8).add(off as usize) as *mut u64,
                v,
            )
        }
    }

    fn log(&mut self, off: i32) {
        let old = self.read_raw(off);
        self.undo.log.push((off, old));
    }

    /// A helper reported failure in `cpu.helper_status`: a fault or unbacked access (left for
    /// [`Interp::aborted`]), or a trap or HLT of a system instruction, which retire it.
    #[cold]
    #[inline(never)]
    fn helper_failed(&mut self) -> Abort {
        match self.cpu.exec.helper_status {
            Outcome::Trap => {
                self.cpu.exec.helper_status = Outcome::Continue;
                self.status |= TRAP;
                self.cpu.exec.trap_rip = self.insn.ip();
                Abort
            }
            Outcome::Halt => {
                self.cpu.exec.helper_status = Outcome::Continue;
                self.halt()
            }
            _ => Abort,
        }
    }

    fn mmu_index(&self) -> usize {
        mmu::mmu_index(self.cpu)
    }

    fn fault(&mut self, f: mmu::MemFault) -> Abort {
        if let mmu::MemFault::Unbacked { phys } = f {
            self.cpu.exec.unbacked_phys = phys;
            self.cpu.exec.helper_status = Outcome::Unbacked;
        }
        Abort
    }

    /// One page's worth of a REP MOVS/STOS fast path ([`Builder::bulk_string`]): copies or
    /// fills the iterations that lie within the current source and destination pages, when
    /// both pages hit in the data TLB (RAM only; a write entry means the page holds no
    /// translated code and is already dirty), and returns how many, leaving RCX > 0. The
    /// registers are the caller's to advance.
    fn bulk_string_chunk(&mut self, op: sem::BulkString) -> Option<u64> {
        const PAGE: u64 = 0x1000;
        if op.a32 {
            return None;
        }
        let size = op.size as u64;
        let down = self.cpu.rflags & krr_runtime::rflags::DF != 0;
        // Whole elements from `addr` to the end of its page in the direction of travel.
        let room = |addr: u64| {
            let off = addr & (PAGE - 1);
            if down {
                (off + size) / size
            } else {
                (PAGE - off) / size
            }
        };
        let dst = self.cpu.gpr[RDI];
        let src = if op.store_only {
            None
        } else {
            let base = match op.src_seg {
                iced_x86::Register::FS => self.read_raw(offsets::seg_base(krr_runtime::seg::FS)),
                iced_x86::Register::GS => self.read_raw(offsets::seg_base(krr_runtime::seg::GS)),
                _ => 0,
            };
            Some(self.cpu.gpr[RSI].wrapping_add(base))
        };
        let mut n = (self.cpu.gpr[RCX].saturating_sub(1)).min(room(dst));
        // A pause armed inside this instruction (rep_pause_point) must still be met: at most
        // RCX - target - 1 here, so the ordinary iteration lands on the target.
        let e = &self.cpu.exec;
        if e.rep_pause_rip == self.insn.ip() && e.rep_pause_rcx < self.cpu.gpr[RCX] {
            n = n.min(self.cpu.gpr[RCX] - e.rep_pause_rcx - 1);
        }
        if let Some(src) = src {
            n = n.min(room(src));
        }
        if n == 0 {
            return None;
        }
        let len = n * size;
        // The lowest byte of the run starting at `addr` (the run goes down under DF=1).
        let lowest = |addr: u64| if down { addr - (len - size) } else { addr };
        let d = self.tlb_host(lowest(dst), len, true)?;
        match src {
            None => {
                let v = self.cpu.gpr[RAX].to_le_bytes();
                // SAFETY: the write TLB entry maps the whole run [lowest(dst), +len) inside one
                // RAM page (tag checked on its last byte, `room` kept it in the first one).
                unsafe {
                    if size == 1 {
                        std::ptr::write_bytes(d, v[0], len as usize);
                    } else {
                        for i in 0..n as usize {
                            std::ptr::copy_nonoverlapping(
                                v.as_ptr(),
                                d.add(i * size as usize),
                                size as usize,
                            );
                        }
                    }
                }
            }
            Some(src) => {
                let s = self.tlb_host(lowest(src), len, false)?;
                // Element by element in the direction of travel when the destination starts
                // inside the part of the source still to be read (the pattern repeats, as the
                // CPU's iterations make it); otherwise that equals one memmove.
                let overlap_hazard = if down {
                    (d as u64) < (s as u64) && (d as u64) + len > (s as u64)
                } else {
                    (d as u64) > (s as u64) && (d as u64) < (s as u64) + len
                };
                // SAFETY: both runs lie inside RAM pages the TLB maps (read for the source,
                // write for the destination), each within one page as above.
                unsafe {
                    if !overlap_hazard {
                        std::ptr::copy(s, d, len as usize);
                    } else {
                        let size = size as usize;
                        for e in 0..n as usize {
                            let at = if down {
                                (n as usize - 1 - e) * size
                            } else {
                                e * size
                            };
                            let mut element = [0u8; 8];
                            std::ptr::copy_nonoverlapping(s.add(at), element.as_mut_ptr(), size);
                            std::ptr::copy_nonoverlapping(element.as_ptr(), d.add(at), size);
                        }
                    }
                }
            }
        }
        Some(n)
    }

    /// TLB fast path, as compiled code does it inline.
    fn tlb_host(&self, addr: u64, size: u64, write: bool) -> Option<*mut u8> {
        let tlb = &self.cpu.exec.tlb;
        let host = tlb.lookup(self.mmu_index(), write, addr, size)?;
        Some(host as *mut u8)
    }
}

impl Builder for Interp<'_> {
    type V = u64;
    type B = bool;

    fn insn(&self) -> &Instruction {
        self.insn
    }
    #[inline]
    fn profile(&self) -> krr_runtime::Profile {
        self.cpu.exec.profile
    }
    #[inline]
    fn mode(&self) -> u32 {
        crate::mode::current(self.cpu)
    }
    #[inline]
    fn mem_operand(&self) -> MemOperand {
        *self.mem
    }
    fn c(&mut self, v: u64) -> u64 {
        v
    }
    fn add(&mut self, a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
    fn sub(&mut self, a: u64, b: u64) -> u64 {
        a.wrapping_sub(b)
    }
    fn mul(&mut self, a: u64, b: u64) -> u64 {
        a.wrapping_mul(b)
    }
    fn umulh(&mut self, a: u64, b: u64) -> u64 {
        ((a as u128 * b as u128) >> 64) as u64
    }
    fn smulh(&mut self, a: u64, b: u64) -> u64 {
        ((a as i64 as i128 * b as i64 as i128) >> 64) as u64
    }
    fn and(&mut self, a: u64, b: u64) -> u64 {
        a & b
    }
    fn or(&mut self, a: u64, b: u64) -> u64 {
        a | b
    }
    fn xor(&mut self, a: u64, b: u64) -> u64 {
        a ^ b
    }
    fn not(&mut self, a: u64) -> u64 {
        !a
    }
    fn shl(&mut self, a: u64, n: u64) -> u64 {
        a << (n & 63)
    }
    fn shr(&mut self, a: u64, n: u64) -> u64 {
        a >> (n & 63)
    }
    fn sar(&mut self, a: u64, n: u64) -> u64 {
        ((a as i64) >> (n & 63)) as u64
    }
    fn rotl(&mut self, a: u64, n: u64) -> u64 {
        a.rotate_left((n & 63) as u32)
    }
    fn rotr(&mut self, a: u64, n: u64) -> u64 {
        a.rotate_right((n & 63) as u32)
    }
    fn popcnt(&mut self, a: u64) -> u64 {
        a.count_ones() as u64
    }
    fn clz(&mut self, a: u64) -> u64 {
        a.leading_zeros() as u64
    }
    fn ctz(&mut self, a: u64) -> u64 {
        a.trailing_zeros() as u64
    }
    fn bswap(&mut self, a: u64) -> u64 {
        a.swap_bytes()
    }
    fn sext(&mut self, a: u64, bits: u32) -> u64 {
        if bits >= 64 {
            a
        } else {
            (((a << (64 - bits)) as i64) >> (64 - bits)) as u64
        }
    }
    fn zext(&mut self, a: u64, bits: u32) -> u64 {
        if bits >= 64 {
            a
        } else {
            a & ((1u64 << bits) - 1)
        }
    }
    fn icmp(&mut self, cc: Cmp, a: u64, b: u64) -> bool {
        let (sa, sb) = (a as i64, b as i64);
        match cc {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Ult => a < b,
            Cmp::Ule => a <= b,
            Cmp::Ugt => a > b,
            Cmp::Uge => a >= b,
            Cmp::Slt => sa < sb,
            Cmp::Sle => sa <= sb,
            Cmp::Sgt => sa > sb,
            Cmp::Sge => sa >= sb,
        }
    }
    fn bconst(&mut self, v: bool) -> bool {
        v
    }
    fn band(&mut self, a: bool, b: bool) -> bool {
        a & b
    }
    fn bor(&mut self, a: bool, b: bool) -> bool {
        a | b
    }
    fn bxor(&mut self, a: bool, b: bool) -> bool {
        a ^ b
    }
    fn bnot(&mut self, a: bool) -> bool {
        !a
    }
    fn b2v(&mut self, a: bool) -> u64 {
        a as u64
    }
    fn select(&mut self, c: bool, t: u64, f: u64) -> u64 {
        if c {
            t
        } else {
            f
        }
    }
    fn get_gpr(&mut self, r: usize) -> u64 {
        self.cpu.gpr[r]
    }
    #[inline]
    fn set_gpr(&mut self, r: usize, v: u64) {
        let old = self.cpu.gpr[r];
        let bit = 1u16 << (r & 15);
        if self.gprs_written & bit == 0 {
            self.gprs_written |= bit;
            self.undo.gprs[r & 15] = old;
        }
        self.cpu.gpr[r] = v;
    }
    fn load_state(&mut self, offset: i32) -> u64 {
        self.read_raw(offset)
    }
    fn store_state(&mut self, offset: i32, v: u64) {
        let in_gprs = offset.wrapping_sub(offsets::GPR) as u32;
        if in_gprs < 16 * 8 && in_gprs.is_multiple_of(8) {
            // GPRs have their own undo record.
            return self.set_gpr(in_gprs as usize / 8, v);
        }
        assert!(
            !(offsets::GPR - 7..offsets::GPR + 16 * 8).contains(&offset),
            "misaligned state write into the GPRs"
        );
        self.log(offset);
        self.write_raw(offset, v);
    }
    fn flags(&mut self) -> FlagState<u64> {
        let c = &self.cpu;
        // An undecodable cc_op can only come from a corrupt snapshot: treat the operands as
        // concrete flag bits rather than guess.
        let op = FlagOp::decode(c.cc_op).unwrap_or(FlagOp::CONCRETE);
        FlagState {
            op,
            res: c.cc_res,
            a: c.cc_a,
            b: c.cc_b,
            aux: c.cc_aux,
        }
    }
    fn set_flags(&mut self, f: FlagState<u64>) {
        let c = &mut *self.cpu;
        if !self.flags_saved {
            self.flags_saved = true;
            self.undo.flags = [c.cc_op, c.cc_res, c.cc_a, c.cc_b, c.cc_aux];
        }
        c.cc_op = f.op.encode();
        c.cc_res = f.res;
        c.cc_a = f.a;
        c.cc_b = f.b;
        c.cc_aux = f.aux;
    }
    fn load(&mut self, addr: u64, size: u32) -> R<u64> {
        if let Some(p) = self.tlb_host(addr, size as u64, false) {
            // SAFETY: a TLB entry only exists for a page that lies wholly in guest RAM, and the
            // tag check above guarantees the access does not leave that page.
            return Ok(unsafe {
                match size {
                    1 => *p as u64,
                    2 => std::ptr::read_unaligned(p as *const u16) as u64,
                    4 => std::ptr::read_unaligned(p as *const u32) as u64,
                    _ => std::ptr::read_unaligned(p as *const u64),
                }
            });
        }
        let idx = self.mmu_index();
        mmu::load_slow(self.cpu, addr, size as usize, idx).map_err(|f| self.fault(f))
    }
    fn store(&mut self, addr: u64, v: u64, size: u32) -> R<()> {
        if let Some(p) = self.tlb_host(addr, size as u64, true) {
            // SAFETY: as in load; write entries exist only for writable, dirty RAM pages.
            unsafe {
                match size {
                    1 => *p = v as u8,
                    2 => std::ptr::write_unaligned(p as *mut u16, v as u16),
                    4 => std::ptr::write_unaligned(p as *mut u32, v as u32),
                    _ => std::ptr::write_unaligned(p as *mut u64, v),
                }
            }
            return Ok(());
        }
        let idx = self.mmu_index();
        mmu::store_slow(self.cpu, addr, v, size as usize, idx).map_err(|f| self.fault(f))
    }
    fn store_if(&mut self, cond: bool, addr: u64, v: u64, size: u32) -> R<()> {
        if cond {
            self.store(addr, v, size)
        } else {
            Ok(())
        }
    }
    fn probe_write(&mut self, addr: u64, size: u32) -> R<()> {
        if self.tlb_host(addr, size as u64, true).is_some() {
            return Ok(());
        }
        let idx = self.mmu_index();
        mmu::probe_write(self.cpu, addr, size as usize, idx).map_err(|f| self.fault(f))
    }
    fn load128(&mut self, addr: u64) -> R<(u64, u64)> {
        let mut buf = [0u8; 16];
        let idx = self.mmu_index();
        mmu::load_bytes(self.cpu, addr, &mut buf, idx).map_err(|f| self.fault(f))?;
        let lo = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(buf[8..].try_into().expect("8 bytes"));
        Ok((lo, hi))
    }
    fn store128(&mut self, addr: u64, lo: u64, hi: u64) -> R<()> {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&lo.to_le_bytes());
        buf[8..].copy_from_slice(&hi.to_le_bytes());
        let idx = self.mmu_index();
        mmu::store_bytes(self.cpu, addr, &buf, idx).map_err(|f| self.fault(f))
    }
    fn const_of(&self, v: u64) -> Option<u64> {
        Some(v)
    }
    #[inline]
    fn repeat_while<T, F>(&mut self, mut test: T, mut body: F) -> R<()>
    where
        T: FnMut(&mut Self) -> bool,
        F: FnMut(&mut Self) -> R<bool>,
    {
        while test(self) {
            if !body(self)? {
                break;
            }
        }
        Ok(())
    }
    fn raise(&mut self, vector: u8, error_code: Option<u32>) -> Abort {
        self.cpu.exec.exception = ExceptionRecord::fault(vector, error_code);
        Abort
    }
    fn raise_trap(&mut self, vector: u8) -> Abort {
        self.status |= TRAP;
        let a = self.raise(vector, None);
        self.cpu.exec.exception.software = true;
        self.cpu.exec.trap_rip = self.insn.ip();
        a
    }
    fn unimplemented(&mut self) -> Abort {
        self.status |= UNIMPLEMENTED;
        self.raise(krr_runtime::vector::UD, None)
    }
    fn raise_if(&mut self, cond: bool, vector: u8, error_code: Option<u32>) -> R<()> {
        if cond {
            Err(self.raise(vector, error_code))
        } else {
            Ok(())
        }
    }
    fn call(&mut self, h: Helper, args: [u64; 3]) -> R<u64> {
        let r = match h {
            Helper::Interpret => unreachable!("the interpreter never calls itself"),
            Helper::System => helpers::system(self.cpu, self.insn, args),
            _ => helpers::run(self.cpu, h, args),
        };
        if self.cpu.exec.helper_status != Outcome::Continue {
            return Err(self.helper_failed());
        }
        Ok(r)
    }
    fn pure(&mut self, f: helpers::pure::PureFn, args: [u64; 4]) -> (u64, u64) {
        let r = f(args[0], args[1], args[2], args[3]);
        (r.lo, r.hi)
    }
    fn halt(&mut self) -> Abort {
        self.status |= HALTED;
        Abort
    }
    fn commit(&mut self) {
        self.forget_undo();
    }
    fn rep_pause_point(&mut self, first: bool, a32: bool) -> R<()> {
        let c = &mut *self.cpu;
        if c.exec.rep_pause_rip != self.insn.ip() {
            return Ok(());
        }
        let rcx = if a32 {
            c.gpr[RCX] as u32 as u64
        } else {
            c.gpr[RCX]
        };
        if rcx != c.exec.rep_pause_rcx {
            return Ok(());
        }
        c.exec.rep_paused_midway = !first;
        self.status |= REP_PAUSED;
        Err(Abort)
    }
    fn bulk_string(&mut self, op: sem::BulkString) {
        while let Some(n) = self.bulk_string_chunk(op) {
            let size = op.size as u64;
            let step = if self.cpu.rflags & krr_runtime::rflags::DF != 0 {
                (n * size).wrapping_neg()
            } else {
                n * size
            };
            let rdi = self.cpu.gpr[RDI].wrapping_add(step);
            self.set_gpr(RDI, rdi);
            if !op.store_only {
                let rsi = self.cpu.gpr[RSI].wrapping_add(step);
                self.set_gpr(RSI, rsi);
            }
            let rcx = self.cpu.gpr[RCX] - n;
            self.set_gpr(RCX, rcx);
            self.forget_undo();
        }
    }
    fn flow(&mut self, f: Flow<u64>, cond: Option<bool>) {
        self.next_rip = match f {
            Flow::Jump(t) | Flow::Indirect(t) => t,
            Flow::Direct(t) => t,
            Flow::Branch { taken, not_taken } => {
                if cond.unwrap_or(true) {
                    taken
                } else {
                    not_taken
                }
            }
        };
    }
}
