//! Transfers between privilege levels and code segments: SYSCALL/SYSRET, IRETQ, SWAPGS,
//! INT n/INTO/INT1, and the far RET/JMP/CALL.

use super::*;

/// The far instructions.
pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction, flags: u64) -> SysResult {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    match insn.mnemonic() {
        M::Syscall => {
            let compat = in_compat_mode(cpu);
            // Intel CPUs have no SYSCALL in compatibility mode (AMD's enters at CSTAR).
            if cpu.efer & efer::SCE == 0 || (compat && compat::intel_vendor(cpu)) {
                return ud();
            }
            let next = insn.next_ip();
            cpu.gpr[RCX] = next;
            cpu.gpr[11] = flags & !rflags::RF;
            let sel = ((cpu.star >> 32) & 0xfffc) as u16;
            cpu.seg[seg::CS] = Segment::flat(sel, Segment::CODE64_DPL0);
            cpu.seg[seg::SS] = Segment::flat(sel + 8, Segment::DATA_DPL0);
            set_rflags(cpu, flags & !cpu.sfmask & !rflags::RF);
            SysResult::Done(Some(if compat { cpu.cstar } else { cpu.lstar }))
        }
        M::Sysret | M::Sysretq => {
            if cpu.efer & efer::SCE == 0 {
                return ud();
            }
            if !priv0 {
                return gp0();
            }
            let wide = insn.mnemonic() == M::Sysretq;
            let target = if wide {
                cpu.gpr[RCX]
            } else {
                cpu.gpr[RCX] & 0xffff_ffff
            };
            if !mmu::is_canonical(target) {
                return gp0();
            }
            let base = ((cpu.star >> 48) & 0xffff) as u16;
            let (cs_sel, cs_attrs) = if wide {
                (base + 16, 0xa0fb)
            } else {
                (base, 0xc0fb)
            };
            cpu.seg[seg::CS] = Segment::flat(cs_sel | 3, cs_attrs);
            cpu.seg[seg::SS] = Segment::flat((base + 8) | 3, Segment::DATA_DPL3);
            let new_flags =
                (cpu.gpr[11] & rflags::WRITABLE & !(rflags::RF | rflags::VM)) | rflags::FIXED1;
            set_rflags(cpu, new_flags);
            if new_flags & rflags::TF != 0 {
                // SYSRET single-steps by TF as it leaves it: the #DB trap comes right after
                // it, at the user RIP (the engine's checked mode delivers it).
                cpu.pending_db |= dr6::BS;
            }
            SysResult::Done(Some(target))
        }
        M::Iretq | M::Iretd | M::Iret => iret(cpu, insn, flags),
        M::Swapgs => {
            if !priv0 {
                return gp0();
            }
            let arch = &mut cpu.arch;
            std::mem::swap(&mut arch.seg[seg::GS].base, &mut arch.kernel_gs_base);
            SysResult::Done(None)
        }
        M::Int => SysResult::Fault(ExceptionRecord::software(insn.immediate(0) as u8)),
        M::Into => {
            if flags & rflags::OF != 0 {
                SysResult::Fault(ExceptionRecord::software(vector::OF))
            } else {
                SysResult::Done(None)
            }
        }
        // INT1 (ICEBP): a #DB trap past the instruction, without the gate's DPL check and
        // without DR6 bits (SDM INT n/INTO/INT1/INT3 "Description").
        M::Int1 => SysResult::Trap(fault(vector::DB, None)),
        _ => unreachable!("routed here by system::execute"),
    }
}

/// IRETQ, IRETD, IRET: in 64-bit mode the frame is RIP, CS, RFLAGS, RSP, SS (each of the
/// operand size); in compatibility mode SS:ESP are in it only when returning to an outer
/// privilege level (a same-level IRET pops EIP, CS, EFLAGS). The return goes to 64-bit or
/// compatibility-mode code, by the CS descriptor's L bit.
pub(super) fn iret(cpu: &mut CpuState, insn: &Instruction, flags: u64) -> SysResult {
    let size: usize = match insn.mnemonic() {
        M::Iretq => 8,
        M::Iretd => 4,
        _ => 2,
    };
    let cpl = cpu.cpl();
    let rsp = cpu.gpr[RSP];
    let mut frame = [0u8; 40];
    for i in 0..3 {
        let at = stack_linear(cpu, rsp.wrapping_add((i * size) as u64));
        trym!(read_mem(cpu, at, &mut frame[i * size..(i + 1) * size]));
    }
    let word = |frame: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w[..size].copy_from_slice(&frame[i * size..(i + 1) * size]);
        u64::from_le_bytes(w)
    };
    let (rip, cs_sel) = (word(&frame, 0), word(&frame, 1) as u16);
    let rpl = (cs_sel & 3) as u8;
    if rpl < cpl {
        return SysResult::Fault(fault(vector::GP, Some(cs_sel as u32 & !3)));
    }
    // 16/32-bit IRET keeps RFLAGS' upper bits (and for IRET the upper 16 of EFLAGS).
    let new_flags = (flags & !(u64::MAX >> (64 - 8 * size))) | word(&frame, 2);
    let pops_stack = !in_compat_mode(cpu) || rpl > cpl;
    let (new_rsp, ss_sel) = if pops_stack {
        for i in 3..5 {
            let at = stack_linear(cpu, rsp.wrapping_add((i * size) as u64));
            trym!(read_mem(cpu, at, &mut frame[i * size..(i + 1) * size]));
        }
        (word(&frame, 3), word(&frame, 4) as u16)
    } else {
        let popped = stack_pointer(cpu, rsp, rsp.wrapping_add(3 * size as u64));
        (popped, cpu.seg[seg::SS].selector)
    };
    let Some(cs) = tryd!(desc::read_descriptor(cpu, cs_sel)) else {
        return gp0();
    };
    if !cs.is_code()
        || (cs.typ() & 4 == 0 && cs.dpl() != rpl)
        || (cs.typ() & 4 != 0 && cs.dpl() > rpl)
    {
        return SysResult::Fault(fault(vector::GP, Some(cs_sel as u32 & !3)));
    }
    if !cs.present() {
        return SysResult::Fault(fault(vector::NP, Some(cs_sel as u32 & !3)));
    }
    let new_cs = cs.to_segment(cs_sel);
    if !code_base_supported(&new_cs) {
        return SysResult::Fault(fault(vector::GP, Some(cs_sel as u32 & !3)));
    }
    if !target_in_segment(&new_cs, rip) {
        return gp0();
    }
    // Validate SS before changing anything.
    let new_ss = if !pops_stack {
        cpu.seg[seg::SS]
    } else if ss_sel & !3 == 0 {
        // A null SS is allowed only for a 64-bit return below CPL3.
        if rpl == 3 || !cs.long() {
            return gp0();
        }
        Segment {
            selector: ss_sel,
            attrs: 0,
            limit: 0,
            base: 0,
        }
    } else {
        let Some(d) = tryd!(desc::read_descriptor(cpu, ss_sel)) else {
            return gp0();
        };
        let writable_data = d.is_code_or_data() && !d.is_code() && d.typ() & 2 != 0;
        if (ss_sel & 3) as u8 != rpl || d.dpl() != rpl || !writable_data {
            return SysResult::Fault(fault(vector::GP, Some(ss_sel as u32 & !3)));
        }
        if !d.present() {
            return SysResult::Fault(fault(vector::SS, Some(ss_sel as u32 & !3)));
        }
        d.to_segment(ss_sel)
    };
    // Which flags the old privilege level may change. RF is loaded from the frame: the next
    // instruction then ignores instruction breakpoints and clears it when it completes (the
    // engine runs an instruction with RF=1 in its checked mode, which does that).
    let mut changeable =
        rflags::ARITH | rflags::TF | rflags::DF | rflags::NT | rflags::RF | rflags::AC | rflags::ID;
    if cpl == 0 {
        changeable |= rflags::IOPL | rflags::VIF | rflags::VIP;
    }
    let iopl = ((flags >> 12) & 3) as u8;
    if cpl <= iopl {
        changeable |= rflags::IF;
    }
    let merged = (flags & !changeable) | (new_flags & changeable);
    // IRET ends an NMI handler: NMIs are deliverable again (SDM 6.7.1).
    cpu.nmi_blocked = 0;
    cpu.seg[seg::CS] = new_cs;
    cpu.seg[seg::SS] = new_ss;
    cpu.gpr[RSP] = new_rsp;
    set_rflags(cpu, merged);
    if rpl > cpl {
        // Returning outward: data segments the new level may not use become null.
        for s in [seg::ES, seg::DS, seg::FS, seg::GS] {
            let a = cpu.seg[s].attrs;
            let dpl = ((a >> 5) & 3) as u8;
            let conforming_code = a & 0x1c == 0x1c;
            if a & 0x80 != 0 && !conforming_code && dpl < rpl {
                let base = cpu.seg[s].base;
                cpu.seg[s] = Segment {
                    selector: 0,
                    attrs: 0,
                    limit: 0,
                    base: if s >= seg::FS { base } else { 0 },
                };
            }
        }
    }
    SysResult::Done(Some(rip))
}
/// Can code segment `cs` run at `rip`? 64-bit code: a canonical RIP; compatibility-mode
/// code: within the segment's limit (which also keeps EIP below 4 GiB).
fn target_in_segment(cs: &Segment, rip: u64) -> bool {
    if cs.attrs & Segment::ATTR_LONG != 0 {
        mmu::is_canonical(rip)
    } else {
        rip <= cs.limit as u64
    }
}

/// krr keeps RIP as the linear address of the code, so a compatibility-mode code segment
/// must have base 0 (Linux's are flat): another base is refused (#GP, logged).
fn code_base_supported(cs: &Segment) -> bool {
    if cs.attrs & Segment::ATTR_LONG == 0 && cs.base != 0 {
        log::warn!(
            "code segment {:#x} has base {:#x}: compatibility-mode code with a non-zero base \
             is not supported",
            cs.selector,
            cs.base
        );
        return false;
    }
    true
}

/// RETF (the kernel reloads CS with `lretq`) and far JMP/CALL through a memory operand
/// (m16:64/m16:32) or, in compatibility mode, direct (ptr16:16/32), to 64-bit or
/// compatibility-mode code. Transfers through call gates are not supported (#GP, logged).
pub(super) fn far_transfer(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    let done = if insn.mnemonic() == M::Retf {
        far_return(cpu, insn)
    } else {
        far_jump_or_call(cpu, insn, addr)
    };
    match done {
        Ok(rip) => SysResult::Done(Some(rip)),
        Err(o) => o,
    }
}

/// A fault of a far transfer: the vector and error code only (no page-fault address), with
/// the error code where the vector has one.
pub(super) fn far_fault(vector: u8, code: u32) -> SysResult {
    SysResult::Fault(fault(
        vector,
        krr_runtime::arch::pushes_error_code(vector).then_some(code),
    ))
}

/// A memory or descriptor-table failure as a far transfer reports it.
pub(super) fn far_outcome(o: SysResult) -> SysResult {
    match o {
        // A page fault keeps its address (CR2).
        SysResult::Fault(e) if e.vector == vector::PF => SysResult::Fault(e),
        SysResult::Fault(e) => far_fault(e.vector, e.error_code),
        other => other,
    }
}

pub(super) fn far_read(cpu: &mut CpuState, addr: u64, buf: &mut [u8]) -> Result<(), SysResult> {
    read_mem(cpu, addr, buf).map_err(far_outcome)
}

pub(super) fn far_write(cpu: &mut CpuState, addr: u64, data: &[u8]) -> Result<(), SysResult> {
    write_mem(cpu, addr, data).map_err(far_outcome)
}

/// Check a code-segment selector for a far transfer at the same privilege level.
pub(super) fn code_segment(cpu: &mut CpuState, sel: u16) -> Result<Segment, SysResult> {
    let cpl = cpu.cpl();
    let code = sel as u32 & !3;
    let d = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(far_fault(vector::GP, 0)),
        Err(f) => return Err(far_outcome(SysResult::from(f))),
    };
    let rpl = (sel & 3) as u8;
    let conforming = d.typ() & 4 != 0;
    let dpl_ok = if conforming {
        d.dpl() <= cpl
    } else {
        d.dpl() == cpl
    };
    if !d.is_code() || !dpl_ok || rpl < cpl {
        return Err(far_fault(vector::GP, code));
    }
    if !d.present() {
        return Err(far_fault(vector::NP, code));
    }
    // The loaded selector carries the CPL as RPL.
    let cs = d.to_segment((sel & !3) | cpl as u16);
    if !code_base_supported(&cs) {
        return Err(far_fault(vector::GP, code));
    }
    Ok(cs)
}

pub(super) fn far_return(cpu: &mut CpuState, insn: &Instruction) -> Result<u64, SysResult> {
    let size: u64 = match insn.code() {
        iced_x86::Code::Retfq | iced_x86::Code::Retfq_imm16 => 8,
        iced_x86::Code::Retfd | iced_x86::Code::Retfd_imm16 => 4,
        _ => 2,
    };
    let extra = if insn.op_count() == 1 {
        insn.immediate(0)
    } else {
        0
    };
    let rsp = cpu.gpr[RSP];
    let mut b = [0u8; 16];
    for i in 0..2 {
        let at = stack_linear(cpu, rsp.wrapping_add(i * size));
        far_read(
            cpu,
            at,
            &mut b[(i * size) as usize..((i + 1) * size) as usize],
        )?;
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w[..size as usize].copy_from_slice(&b[i * size as usize..(i + 1) * size as usize]);
        u64::from_le_bytes(w)
    };
    let (rip, sel) = (word(0), word(1) as u16);
    let cpl = cpu.cpl();
    if ((sel & 3) as u8) > cpl {
        log::warn!(
            "RETF to an outer privilege level at RIP {:#x} is not supported",
            insn.ip()
        );
        return Err(far_fault(vector::GP, sel as u32 & !3));
    }
    let cs = code_segment(cpu, sel)?;
    if !target_in_segment(&cs, rip) {
        return Err(far_fault(vector::GP, 0));
    }
    // RSP moves by the old stack's rules, before CS (and with it the mode) changes.
    cpu.gpr[RSP] = stack_pointer(cpu, rsp, rsp.wrapping_add(2 * size + extra));
    cpu.seg[seg::CS] = cs;
    Ok(rip)
}

pub(super) fn far_jump_or_call(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
) -> Result<u64, SysResult> {
    let (off_size, rip, sel) = match (addr, insn.op0_kind()) {
        // Direct far JMP/CALL (ptr16:16/32, compatibility mode only: #UD in 64-bit mode).
        (_, iced_x86::OpKind::FarBranch32) => {
            (4, insn.far_branch32() as u64, insn.far_branch_selector())
        }
        (_, iced_x86::OpKind::FarBranch16) => {
            (2, insn.far_branch16() as u64, insn.far_branch_selector())
        }
        (None, _) => return Err(far_fault(vector::UD, 0)),
        (Some(a), _) => {
            let off_size = match insn.memory_size() {
                iced_x86::MemorySize::SegPtr64 => 8,
                iced_x86::MemorySize::SegPtr32 => 4,
                _ => 2,
            };
            let mut b = [0u8; 10];
            far_read(cpu, a, &mut b[..off_size + 2])?;
            let mut o = [0u8; 8];
            o[..off_size].copy_from_slice(&b[..off_size]);
            let sel = u16::from_le_bytes([b[off_size], b[off_size + 1]]);
            (off_size, u64::from_le_bytes(o), sel)
        }
    };
    let cs = code_segment(cpu, sel)?;
    if !target_in_segment(&cs, rip) {
        return Err(far_fault(vector::GP, 0));
    }
    if insn.mnemonic() == M::Call {
        // Push CS then the return RIP (below it), operand-size wide, by the old stack's rules.
        let size = off_size.max(2) as u64;
        let rsp = cpu.gpr[RSP];
        let words = [cpu.seg[seg::CS].selector as u64, insn.next_ip()];
        for i in 0..words.len() as u64 {
            let at = stack_linear(cpu, rsp.wrapping_sub((i + 1) * size));
            probe_write(cpu, at, size).map_err(far_outcome)?;
        }
        for (i, w) in words.iter().enumerate() {
            let at = stack_linear(cpu, rsp.wrapping_sub((i as u64 + 1) * size));
            far_write(cpu, at, &w.to_le_bytes()[..size as usize])?;
        }
        cpu.gpr[RSP] = stack_pointer(cpu, rsp, rsp.wrapping_sub(2 * size));
    }
    cpu.seg[seg::CS] = cs;
    Ok(rip)
}
