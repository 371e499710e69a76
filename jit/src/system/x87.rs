//! The x87 instructions (opcodes D8-DF) other than the control ones in `xsave.rs`, run by
//! the host's own FPU, the reference: the guest's x87 state is loaded with FXRSTOR64, the
//! instruction runs once on the host with its memory operand moved to a buffer
//! (`[rsi]`), and the state comes back with FXSAVE64; so results, rounding and precision
//! control, NaN rules, every status flag, C0-C3, the stack fault and the transcendentals are
//! the host's, bit for bit. The host's own x87 state is saved around it.
//!
//! x87 exceptions are deferred: an instruction that raises an unmasked one only sets FSW.ES,
//! and the next waiting x87 instruction (or FWAIT) takes #MF before it runs. That check is
//! made here before the host runs anything, so the host never traps. The last instruction
//! and operand pointers (FIP, FDP, FOP) are krr's: every x87 instruction but the control
//! ones (FNINIT, FNCLEX, FLDCW, FNSTCW, FNSTSW, FNSTENV, FLDENV, FNSAVE, FRSTOR) sets FIP to
//! its RIP and FOP to its opcode, and FDP to its memory operand's offset when it has one
//! (this host's FXSAVE does not reveal them without a pending exception).

use super::{fault, read_mem, write_mem, SysResult};
use crate::exec_mem::ExecArena;
use iced_x86::{Code, Encoder, Instruction, Mnemonic as M, OpKind, Register};
use krr_runtime::arch::{cr0, rflags};
use krr_runtime::gpr::RAX;
use krr_runtime::{seg, vector, CpuState};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// The no-wait instructions: they run even with an unmasked exception pending.
fn non_waiting(m: M) -> bool {
    matches!(
        m,
        M::Fninit
            | M::Fnclex
            | M::Fnstcw
            | M::Fnstsw
            | M::Fnstenv
            | M::Fnsave
            | M::Fneni
            | M::Fndisi
            | M::Fnsetpm
    )
}

/// The control instructions, which leave FIP, FDP and FOP alone.
fn control(m: M) -> bool {
    matches!(
        m,
        M::Fninit
            | M::Fnclex
            | M::Fldcw
            | M::Fnstcw
            | M::Fnstsw
            | M::Fnstenv
            | M::Fldenv
            | M::Fnsave
            | M::Frstor
            | M::Fstcw
            | M::Fstsw
            | M::Fstenv
            | M::Fsave
            | M::Finit
            | M::Fclex
            // 8087/287 controls, no-ops on this CPU: they leave the pointers too (the
            // differential harness found FNENI and FNDISI setting them).
            | M::Fneni
            | M::Fndisi
            | M::Fnsetpm
    )
}

/// Instructions whose memory operand is written (all others read theirs).
fn stores(m: M) -> bool {
    matches!(
        m,
        M::Fst
            | M::Fstp
            | M::Fist
            | M::Fistp
            | M::Fisttp
            | M::Fbstp
            | M::Fnstenv
            | M::Fnsave
            | M::Fnstcw
            | M::Fnstsw
            | M::Fstenv
            | M::Fsave
            | M::Fstcw
            | M::Fstsw
    )
}

/// The environment and state images (FLDENV, FRSTOR, FNSTENV, FNSAVE).
fn images(m: M) -> bool {
    matches!(
        m,
        M::Fldenv | M::Frstor | M::Fnstenv | M::Fnsave | M::Fstenv | M::Fsave
    )
}

/// This host accesses an environment or state image's first field (FCW: 2 bytes in the
/// 16-bit layout, 4 in the 32-bit one) and then its last byte before the rest: one reaching
/// into an inaccessible page faults at that last byte unless the first field already does
/// (found by the differential harness, measured for every offset with a native program).
fn check_ends(cpu: &mut CpuState, a: u64, len: usize, write: bool) -> Result<(), SysResult> {
    let first = if matches!(len, 14 | 94) { 2 } else { 4 };
    let page_left = 0x1000 - (a & 0xfff);
    let checks = [
        (a, first.min(page_left)),
        (a + first.min(page_left), first.saturating_sub(page_left)),
        (a.wrapping_add(len as u64 - 1), 1),
    ];
    for (at, n) in checks.into_iter().filter(|&(_, n)| n > 0) {
        if write {
            super::probe_write(cpu, at, n)?;
        } else {
            read_mem(cpu, at, &mut [0u8; 4][..n as usize])?;
        }
    }
    Ok(())
}

/// The largest x87 memory operand (FNSAVE/FRSTOR's 108 bytes).
const MEM_MAX: usize = 112;

#[repr(C, align(16))]
struct FxImage([u8; 512]);

#[repr(C, align(16))]
struct MemBuf([u8; MEM_MAX]);

#[derive(Default)]
struct Stubs {
    /// (form, memory operand, the register operands (ST(i), MMX and XMM registers stay in the
    /// stub), imm8).
    by_key: HashMap<(Code, bool, [Register; 3], u8), usize>,
    arena: ExecArena,
}

fn stubs() -> &'static RwLock<Stubs> {
    static S: OnceLock<RwLock<Stubs>> = OnceLock::new();
    S.get_or_init(|| RwLock::new(Stubs::default()))
}

/// The GPR of `base`'s family with `r`'s size.
fn sized(base: Register, r: Register) -> Register {
    use Register as X;
    match (base == X::R8, r.size()) {
        (true, 4) => X::R8D,
        (true, 2) => X::R8W,
        (true, _) => X::R8,
        (false, 4) => X::R9D,
        (false, 2) => X::R9W,
        (false, _) => X::R9,
    }
}

/// The host stub of `insn`: the instruction with its memory operand at `[rsi]` and a GPR
/// operand 0 in r8, another in r9, then `ret`.
fn stub(insn: &Instruction) -> Option<usize> {
    let mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    let reg = |i: u32| match insn.op_kind(i) {
        OpKind::Register => insn.op_register(i),
        _ => Register::None,
    };
    let imm = (0..insn.op_count())
        .find(|&i| insn.op_kind(i) == OpKind::Immediate8)
        .map_or(0, |i| insn.immediate(i) as u8);
    let key = (insn.code(), mem, [reg(0), reg(1), reg(2)], imm);
    if let Some(&a) = stubs().read().ok()?.by_key.get(&key) {
        return Some(a);
    }
    let mut h = *insn;
    if mem {
        crate::exec_mem::memory_at_rsi(&mut h);
    }
    for i in 0..insn.op_count() {
        let r = reg(i);
        if r.is_gpr() && !(r == Register::AX && insn.mnemonic() == M::Fnstsw) {
            h.set_op_register(
                i,
                sized(if i == 0 { Register::R8 } else { Register::R9 }, r),
            );
        }
    }
    let mut e = Encoder::new(64);
    e.encode(&h, 0).ok()?;
    let mut bytes = e.take_buffer();
    bytes.push(0xc3); // ret
    let mut s = stubs().write().ok()?;
    if let Some(&a) = s.by_key.get(&key) {
        return Some(a);
    }
    let a = s.arena.place(&bytes)?;
    s.by_key.insert(key, a);
    Some(a)
}

/// What a stub gets and gives besides the x87/SSE image and the memory buffer.
struct Regs {
    /// AX (FNSTSW AX), a GPR operand 0 (r8) and another GPR operand (r9).
    rax: u64,
    r8: u64,
    r9: u64,
    /// Arithmetic flags: the guest's in (FCMOVcc), the instruction's out (FCOMI).
    flags: u64,
    /// An unmasked SIMD floating-point exception (CVTPI2PS and relatives) trapped.
    faulted: bool,
}

/// Run the stub at `code` on the x87/SSE state `img` (FXSAVE64 layout, in and out) with `mem`
/// at `[rsi]` and `r`.
fn run(code: usize, img: &mut FxImage, mem: &mut MemBuf, r: &mut Regs) {
    crate::exec_mem::install_sigfpe();
    let mut host = FxImage([0; 512]);
    let marker: u64;
    // SAFETY: `code` is a stub in an executable chunk that stays mapped and executable while
    // we hold the table's read lock: one x87 instruction (it decoded and re-encoded for this
    // host) that reads and writes only the x87 registers, AX, RFLAGS' arithmetic flags and
    // at most MEM_MAX bytes at [rsi] (the buffer), then `ret`. The host's x87/SSE state is
    // saved first and restored last (both images 16-byte aligned, 512 bytes). The guest's
    // image was made by krr (a valid MXCSR, FXRSTOR accepts it). No exception is pending when
    // a waiting instruction runs (checked by the caller), so nothing traps; FXSAVE64/FXRSTOR64
    // never wait. An unmasked SIMD exception of an MMX/SSE conversion traps on the host:
    // `exec_mem::on_sigfpe` recognises the stub (R11 = IN_STUB, RIP = R10) and resumes after
    // the call with R11 = FAULTED, the destination unchanged. Only the arithmetic flags are
    // changed by the popfq (the others are the host's own); the stack holds the call's
    // return address and the flags words.
    let _lock = stubs().read();
    unsafe {
        std::arch::asm!(
            "fxsave64 [{host}]",
            "fxrstor64 [{img}]",
            "pushfq",
            "and qword ptr [rsp], {keep}",
            "or qword ptr [rsp], {flags}",
            "popfq",
            "call r10",
            "pushfq",
            "pop {flags}",
            "fxsave64 [{img}]",
            "fxrstor64 [{host}]",
            host = in(reg) host.0.as_mut_ptr(),
            img = in(reg) img.0.as_mut_ptr(),
            keep = in(reg) !rflags::ARITH,
            flags = inout(reg) r.flags & rflags::ARITH => r.flags,
            in("r10") code,
            inout("r11") crate::exec_mem::IN_STUB => marker,
            in("rsi") mem.0.as_mut_ptr(),
            inout("rax") r.rax,
            inout("r8") r.r8,
            inout("r9") r.r9,
        );
    }
    r.flags &= rflags::ARITH;
    r.faulted = marker == crate::exec_mem::FAULTED;
}

/// Where the 32-bit (or, with an operand-size prefix, 16-bit) protected-mode environment
/// image FNSTENV/FNSAVE write and FLDENV/FRSTOR read keeps FIP, FCS|FOP, FDP and FDS.
fn env_fields(len: usize) -> (usize, usize, usize, usize, bool) {
    if len == 14 || len == 94 {
        (6, 8, 10, 12, false)
    } else {
        (12, 16, 20, 24, true)
    }
}

pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    let m = insn.mnemonic();
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return SysResult::Fault(fault(vector::NM, None));
    }
    let escape = crate::sem::is_x87_escape(insn);
    // CVTPI2PS/CVTPI2PD from memory use no MMX register: no x87 transition and no #MF (the
    // differential harness found them completing with an exception pending).
    let mmx_reg = (0..insn.op_count())
        .any(|i| insn.op_kind(i) == OpKind::Register && insn.op_register(i).is_mm());
    if !non_waiting(m) && (escape || mmx_reg) && cpu.x87.fsw & 0x80 != 0 {
        // A pending unmasked exception (CR0.NE's #MF; the FERR#/IRQ13 path of CR0.NE = 0 is
        // not modelled and also takes #MF).
        return SysResult::Fault(fault(vector::MF, None));
    }
    if !escape && !host_runs_mmx_form(insn) {
        log::warn!(
            "MMX instruction `{insn}` at RIP {:#x} is not implemented: raising #UD",
            insn.ip()
        );
        cpu.exec.unimplemented_count += 1;
        return SysResult::Fault(fault(vector::UD, None));
    }
    let Some(code) = stub(insn) else {
        log::warn!(
            "x87 instruction `{insn}` at RIP {:#x}: no host form; raising #UD",
            insn.ip()
        );
        cpu.exec.unimplemented_count += 1;
        return SysResult::Fault(fault(vector::UD, None));
    };
    let has_mem = (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory);
    let len = if has_mem {
        insn.memory_size().size().min(MEM_MAX)
    } else {
        0
    };
    // x87 stores by mnemonic; MMX forms store to a memory operand 0.
    let store = has_mem
        && if escape {
            stores(m)
        } else {
            insn.op_kind(0) == OpKind::Memory
        };
    if has_mem && !escape && len == 16 && addr.is_some_and(|a| a & 15 != 0) {
        // CVTPD2PI/CVTTPD2PI's legacy 128-bit memory operand must be aligned (found by the
        // differential harness).
        return super::gp0();
    }
    let mut mem = MemBuf([0; MEM_MAX]);
    if has_mem && !store {
        let a = addr.expect("a memory operand's address");
        if images(m) {
            if let Err(s) = check_ends(cpu, a, len, false) {
                return s;
            }
        }
        if let Err(s) = read_mem(cpu, a, &mut mem.0[..len]) {
            return s;
        }
    }
    let mut img = FxImage(super::xsave::fxsave_image(cpu));
    let gpr_op = |i: u32| {
        let r = insn.op_register(i);
        (insn.op_kind(i) == OpKind::Register
            && r.is_gpr()
            && !(m == M::Fnstsw && r == Register::AX))
            .then_some(r)
    };
    let mut regs = Regs {
        rax: cpu.gpr[RAX],
        r8: gpr_op(0).map_or(0, |r| super::reg_value(cpu, r)),
        r9: (1..insn.op_count())
            .find_map(gpr_op)
            .map_or(0, |r| super::reg_value(cpu, r)),
        flags: cpu.rflags_value(),
        faulted: false,
    };
    let before = (FxImage(img.0), regs.rax, regs.r8, regs.r9, regs.flags);
    run(code, &mut img, &mut mem, &mut regs);
    let mxcsr = u32::from_le_bytes(img.0[24..28].try_into().expect("4 bytes"));
    if regs.faulted {
        // An unmasked SIMD floating-point exception: MXCSR's flags as the hardware set them,
        // the destination unchanged; the x87 state has made the MMX transition (TOP = 0, all
        // tags valid) before the fault, as on the host (found by the differential harness).
        cpu.mxcsr = mxcsr;
        let xmm = cpu.xmm;
        super::xsave::load_x87(cpu, &img.0);
        cpu.xmm = xmm;
        let v = if cpu.cr4 & krr_runtime::arch::cr4::OSXMMEXCPT != 0 {
            vector::XM
        } else {
            vector::UD
        };
        return SysResult::Fault(fault(v, None));
    }
    let (rax, flags) = (regs.rax, regs.flags);
    // The pointers, as krr keeps them.
    let offset = |cpu: &CpuState, a: u64| {
        let s = match insn.memory_segment() {
            Register::FS => seg::FS,
            Register::GS => seg::GS,
            _ => return a,
        };
        a.wrapping_sub(cpu.seg[s].base)
    };
    let (mut fip, mut fdp, mut fop) = (cpu.x87.fip, cpu.x87.fdp, cpu.x87.fop);
    if escape && !control(m) {
        fip = insn.ip();
        fop = guest_fop(insn).unwrap_or(fop);
        if has_mem {
            fdp = offset(cpu, addr.unwrap_or(0));
        }
    }
    if has_mem && matches!(m, M::Fldenv | M::Frstor) {
        let (ip, cs_op, dp, _, wide) = env_fields(len);
        let b = &mem.0;
        if wide {
            fip = u32::from_le_bytes(b[ip..ip + 4].try_into().expect("4")) as u64;
            fop = (u32::from_le_bytes(b[cs_op..cs_op + 4].try_into().expect("4")) >> 16) as u16
                & 0x7ff;
            fdp = u32::from_le_bytes(b[dp..dp + 4].try_into().expect("4")) as u64;
        } else {
            fip = u16::from_le_bytes([b[ip], b[ip + 1]]) as u64;
            fdp = u16::from_le_bytes([b[dp], b[dp + 1]]) as u64;
            // The 16-bit layout has no FOP: the host clears it (found by the differential
            // harness).
            fop = 0;
        }
    }
    if store && matches!(m, M::Fnstenv | M::Fnsave | M::Fstenv | M::Fsave) {
        let (ip, cs_op, dp, ds, wide) = env_fields(len);
        let (cs, dsel) = (cpu.seg[seg::CS].selector, cpu.seg[seg::DS].selector);
        let b = &mut mem.0;
        if wide {
            b[ip..ip + 4].copy_from_slice(&(cpu.x87.fip as u32).to_le_bytes());
            let w = cs as u32 | ((cpu.x87.fop as u32 & 0x7ff) << 16);
            b[cs_op..cs_op + 4].copy_from_slice(&w.to_le_bytes());
            b[dp..dp + 4].copy_from_slice(&(cpu.x87.fdp as u32).to_le_bytes());
            b[ds..ds + 2].copy_from_slice(&dsel.to_le_bytes());
        } else {
            b[ip..ip + 2].copy_from_slice(&(cpu.x87.fip as u16).to_le_bytes());
            b[cs_op..cs_op + 2].copy_from_slice(&cs.to_le_bytes());
            b[dp..dp + 2].copy_from_slice(&(cpu.x87.fdp as u16).to_le_bytes());
            b[ds..ds + 2].copy_from_slice(&dsel.to_le_bytes());
        }
    }
    let mut stored = store;
    let fsw = u16::from_le_bytes([img.0[2], img.0[3]]);
    if store && !non_waiting(m) && fsw & 0x80 != 0 {
        // An unmasked exception (none was pending: a waiting instruction would have taken
        // #MF) may have suppressed the store (invalid, overflow and underflow do; precision
        // does not). Rerun from the same state over a buffer of other contents: a store
        // writes the same bytes into both (the harness found FIST/FST/FBSTP storing anyway).
        let (mut again, rax, r8, r9, flags) = before;
        let mut probe = MemBuf([0xff; MEM_MAX]);
        let mut r = Regs {
            rax,
            r8,
            r9,
            flags,
            faulted: false,
        };
        run(code, &mut again, &mut probe, &mut r);
        stored = probe.0[..len] == mem.0[..len];
        if !stored {
            // The destination is checked all the same, faulting at its first inaccessible
            // byte (the harness found #PF natively).
            let a = addr.expect("a memory operand");
            let first = (0x1000 - (a & 0xfff)).min(len as u64);
            if let Err(s) = super::probe_write(cpu, a, first) {
                return s;
            }
            if first < len as u64 {
                if let Err(s) = super::probe_write(cpu, a + first, len as u64 - first) {
                    return s;
                }
            }
        }
    }
    if store && images(m) {
        if let Err(s) = check_ends(cpu, addr.expect("a memory operand"), len, true) {
            return s;
        }
    }
    if stored {
        let a = addr.expect("a memory operand's address");
        if let Err(s) = write_mem(cpu, a, &mem.0[..len]) {
            // Nothing is committed: the FPU state stays as before the instruction.
            return s;
        }
    }
    super::xsave::load_x87(cpu, &img.0);
    super::xsave::load_xmm(cpu, &img.0);
    cpu.mxcsr = mxcsr;
    if let Some(r) = gpr_op(0) {
        super::set_reg(cpu, r, regs.r8);
    }
    if matches!(m, M::Fnsave | M::Fsave) {
        // FNSAVE reinitialises the FPU after saving it, the pointers too (found by the
        // differential harness).
        (fip, fdp, fop) = (0, 0, 0);
    }
    cpu.x87.fip = fip;
    cpu.x87.fdp = fdp;
    cpu.x87.fop = fop;
    if matches!(m, M::Fnstsw | M::Fstsw) && insn.op_kind(0) == OpKind::Register {
        cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xffff) | (rax & 0xffff);
    }
    if matches!(m, M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip) {
        let other = cpu.rflags_value() & !rflags::ARITH;
        super::set_rflags(cpu, other | flags);
    }
    SysResult::Done(None)
}

/// The MMX forms (and their SSE/SSSE3 relatives on MMX registers, EMMS, the MMX<->XMM
/// conversions) the host runs: MASKMOVQ's implicit store and 3DNow! are not.
fn host_runs_mmx_form(insn: &Instruction) -> bool {
    use iced_x86::CpuidFeature as F;
    if insn.mnemonic() == M::Maskmovq {
        return false;
    }
    let host = |f: &F| match f {
        F::MMX => std::is_x86_feature_detected!("mmx"),
        F::SSE => std::is_x86_feature_detected!("sse"),
        F::SSE2 => std::is_x86_feature_detected!("sse2"),
        F::SSSE3 => std::is_x86_feature_detected!("ssse3"),
        _ => false,
    };
    let feats = insn.cpuid_features();
    !feats.is_empty() && feats.iter().all(host)
}

/// FOP: the low 3 bits of the escape opcode and the ModRM byte, from the instruction as
/// encoded at its address.
fn guest_fop(insn: &Instruction) -> Option<u16> {
    let mut e = Encoder::new(64);
    e.encode(insn, insn.ip()).ok()?;
    let b = e.take_buffer();
    let i = b.iter().position(|&x| (0xd8..=0xdf).contains(&x))?;
    Some((((b[i] & 7) as u16) << 8) | *b.get(i + 1)? as u16)
}
