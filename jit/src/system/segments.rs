//! Descriptor tables and segments: LGDT/LIDT/SGDT/SIDT, LLDT/LTR/SLDT/STR/SMSW, segment
//! register loads (MOV, PUSH/POP), and the selector queries LSL/LAR/VERR/VERW.

use super::*;

/// The segments instructions.
pub(super) fn execute(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
    flags: u64,
) -> SysResult {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    let mem_addr = || addr.expect("memory operand present");
    match insn.mnemonic() {
        M::Push | M::Pop => push_pop_segment(cpu, insn),
        M::Lgdt | M::Lidt => {
            if !priv0 {
                return gp0();
            }
            let mut b = [0u8; 10];
            trym!(read_mem(cpu, mem_addr(), &mut b));
            let t = krr_runtime::DescriptorTable {
                limit: u16::from_le_bytes([b[0], b[1]]),
                base: u64::from_le_bytes(b[2..10].try_into().expect("8 bytes")),
            };
            if insn.mnemonic() == M::Lgdt {
                cpu.gdtr = t;
            } else {
                cpu.idtr = t;
            }
            SysResult::Done(None)
        }
        M::Sgdt | M::Sidt => {
            if cpl > 0 && cpu.cr4 & cr4::UMIP != 0 {
                return gp0();
            }
            let t = if insn.mnemonic() == M::Sgdt {
                cpu.gdtr
            } else {
                cpu.idtr
            };
            let mut b = [0u8; 10];
            b[..2].copy_from_slice(&t.limit.to_le_bytes());
            b[2..].copy_from_slice(&t.base.to_le_bytes());
            trym!(write_mem(cpu, mem_addr(), &b));
            SysResult::Done(None)
        }
        M::Sldt | M::Str | M::Smsw => {
            if cpl > 0 && cpu.cr4 & cr4::UMIP != 0 {
                return gp0();
            }
            let v = match insn.mnemonic() {
                M::Sldt => cpu.ldtr.selector as u64,
                M::Str => cpu.tr.selector as u64,
                _ => cpu.cr0 & 0xffff,
            };
            if insn.op0_kind() == OpKind::Memory {
                trym!(write_mem(cpu, mem_addr(), &(v as u16).to_le_bytes()));
            } else {
                set_reg(cpu, insn.op0_register(), v);
            }
            SysResult::Done(None)
        }
        M::Lldt | M::Ltr => {
            if !priv0 {
                return gp0();
            }
            let sel = trym!(read_u16_operand(cpu, insn, addr));
            let is_tr = insn.mnemonic() == M::Ltr;
            if sel & !3 == 0 {
                if is_tr {
                    return gp0();
                }
                cpu.ldtr = Segment::default();
                return SysResult::Done(None);
            }
            let (d, hi) = tryd!(desc::read_system_descriptor(cpu, sel));
            let want = if is_tr { 9 } else { 2 };
            if d.is_code_or_data() || d.typ() != want {
                return SysResult::Fault(fault(vector::GP, Some(sel as u32 & !3)));
            }
            if !d.present() {
                return SysResult::Fault(fault(vector::NP, Some(sel as u32 & !3)));
            }
            let mut s = d.to_segment(sel);
            s.base |= hi << 32;
            if is_tr {
                tryd!(desc::mark_tss_busy(cpu, sel));
                s.attrs |= 2;
                cpu.tr = s;
            } else {
                cpu.ldtr = s;
            }
            SysResult::Done(None)
        }
        M::Lsl | M::Lar => load_limit_or_rights(cpu, insn, addr, flags),
        M::Verr | M::Verw => verify_segment(cpu, insn, addr, flags),
        _ => unreachable!("routed here by system::execute"),
    }
}

/// LSL / LAR: the limit or access rights of the descriptor a selector names, with ZF saying
/// whether the selector is valid and visible at this privilege (SDM LSL/LAR). The vDSO's
/// `getcpu` reads the CPU number this way.
pub(super) fn load_limit_or_rights(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
    flags: u64,
) -> SysResult {
    let sel = trym!(selector_operand(cpu, insn, 1, addr));
    let lsl = insn.mnemonic() == M::Lsl;
    let cpl = cpu.cpl();
    let valid = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) => {
            let conforming_code = d.is_code() && d.typ() & 4 != 0;
            let visible = conforming_code || d.dpl() >= cpl.max((sel & 3) as u8);
            // System descriptor types LSL accepts: LDT (2), available/busy TSS (9/11); LAR
            // also accepts call gates (12).
            let type_ok =
                d.is_code_or_data() || matches!((d.typ(), lsl), (2 | 9 | 11, _) | (12, false));
            (visible && type_ok).then_some(d)
        }
        Ok(None) => None,
        // An index beyond the table limit just clears ZF.
        Err(DescFault::Exception(e)) if e.vector == vector::GP => None,
        Err(f) => return SysResult::from(f),
    };
    // The arithmetic flags from before the instruction (nothing above changes them).
    let flags = flags & rflags::ARITH;
    match valid {
        Some(d) => {
            let v = if lsl {
                d.limit() as u64
            } else {
                (d.0 >> 32) & 0x00ff_ff00
            };
            set_reg(cpu, insn.op0_register(), v);
            set_arith(cpu, flags | rflags::ZF);
        }
        None => set_arith(cpu, flags & !rflags::ZF),
    }
    SysResult::Done(None)
}

/// VERR / VERW: ZF says whether the selector names a segment readable / writable at this
/// privilege. Linux executes VERW on every return to user mode (the MDS buffer-clearing idiom).
pub(super) fn verify_segment(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
    flags: u64,
) -> SysResult {
    let sel = trym!(selector_operand(cpu, insn, 0, addr));
    let cpl = cpu.cpl();
    let ok = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) if d.is_code_or_data() => {
            let conforming_code = d.is_code() && d.typ() & 4 != 0;
            let visible = conforming_code || d.dpl() >= cpl.max((sel & 3) as u8);
            let access = if insn.mnemonic() == M::Verr {
                !d.is_code() || d.typ() & 2 != 0
            } else {
                !d.is_code() && d.typ() & 2 != 0
            };
            visible && access
        }
        Ok(_) => false,
        Err(DescFault::Exception(e)) if e.vector == vector::GP => false,
        Err(f) => return SysResult::from(f),
    };
    // The arithmetic flags from before the instruction (nothing above changes them).
    let flags = flags & rflags::ARITH;
    set_arith(
        cpu,
        if ok {
            flags | rflags::ZF
        } else {
            flags & !rflags::ZF
        },
    );
    SysResult::Done(None)
}

pub(super) fn read_u16_operand(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
) -> Result<u16, SysResult> {
    if insn.op0_kind() == OpKind::Memory {
        let mut b = [0u8; 2];
        read_mem(cpu, addr.expect("memory operand"), &mut b)?;
        Ok(u16::from_le_bytes(b))
    } else {
        Ok(reg_value(cpu, insn.op0_register()) as u16)
    }
}

pub(super) fn seg_index(r: Register) -> usize {
    match r {
        Register::ES => seg::ES,
        Register::CS => seg::CS,
        Register::SS => seg::SS,
        Register::DS => seg::DS,
        Register::FS => seg::FS,
        _ => seg::GS,
    }
}

/// Load a data segment register (or SS) in 64-bit mode.
pub(super) fn load_segment(cpu: &mut CpuState, s: usize, sel: u16) -> Result<(), SysResult> {
    let cpl = cpu.cpl();
    let rpl = (sel & 3) as u8;
    let Some(d) = desc::read_descriptor(cpu, sel).map_err(SysResult::from)? else {
        // Null selector: allowed for data segments, and for SS at CPL < 3 in 64-bit mode.
        if s == seg::SS && (cpl == 3 || rpl != cpl || in_compat_mode(cpu)) {
            return Err(gp0());
        }
        let base = if s == seg::FS || s == seg::GS {
            cpu.seg[s].base
        } else {
            0
        };
        cpu.seg[s] = Segment {
            selector: sel,
            attrs: 0,
            limit: 0,
            base,
        };
        return Ok(());
    };
    let code = sel as u32 & !3;
    if s == seg::SS {
        let writable_data = d.is_code_or_data() && !d.is_code() && d.typ() & 2 != 0;
        if rpl != cpl || d.dpl() != cpl || !writable_data {
            return Err(SysResult::Fault(fault(vector::GP, Some(code))));
        }
        if !d.present() {
            return Err(SysResult::Fault(fault(vector::SS, Some(code))));
        }
    } else {
        let readable = d.is_code_or_data() && (!d.is_code() || d.typ() & 2 != 0);
        let conforming = d.is_code() && d.typ() & 4 != 0;
        if !readable || (!conforming && (rpl.max(cpl) > d.dpl())) {
            return Err(SysResult::Fault(fault(vector::GP, Some(code))));
        }
        if !d.present() {
            return Err(SysResult::Fault(fault(vector::NP, Some(code))));
        }
    }
    cpu.seg[s] = d.to_segment(sel);
    Ok(())
}

pub(super) fn mov_segment(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    if insn.op0_register().is_segment_register() {
        let r = insn.op0_register();
        if r == Register::CS {
            return ud();
        }
        let sel = if insn.op1_kind() == OpKind::Memory {
            let mut b = [0u8; 2];
            trym!(read_mem(cpu, addr.expect("memory operand"), &mut b));
            u16::from_le_bytes(b)
        } else {
            reg_value(cpu, insn.op1_register()) as u16
        };
        trym!(load_segment(cpu, seg_index(r), sel));
        if r == Register::SS {
            // Interrupts and debug traps wait until the next instruction has completed.
            cpu.irq_shadow_at = cpu.icount + 1;
            cpu.db_inhibit_at = cpu.icount + 1;
        }
        SysResult::Done(None)
    } else {
        let sel = cpu.seg[seg_index(insn.op1_register())].selector as u64;
        if insn.op0_kind() == OpKind::Memory {
            trym!(write_mem(
                cpu,
                addr.expect("memory operand"),
                &(sel as u16).to_le_bytes()
            ));
        } else {
            // A 32/64-bit register destination gets the selector zero-extended.
            let r = insn.op0_register();
            let v = if r.size() == 2 { sel } else { sel & 0xffff };
            set_reg(cpu, r, v);
        }
        SysResult::Done(None)
    }
}

pub(super) fn push_pop_segment(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let r = insn.op0_register();
    // The selector is pushed zero-extended to the operand size.
    let size = insn.code().op_code().operand_size() as u64 / 8;
    let rsp = cpu.gpr[RSP];
    if insn.mnemonic() == M::Push {
        let v = cpu.seg[seg_index(r)].selector as u64;
        let new = rsp.wrapping_sub(size);
        let at = stack_linear(cpu, new);
        trym!(write_mem(cpu, at, &v.to_le_bytes()[..size as usize]));
        cpu.gpr[RSP] = stack_pointer(cpu, rsp, new);
    } else {
        // Only POP FS and POP GS exist in 64-bit mode; compatibility mode has POP DS/ES/SS.
        let mut b = [0u8; 8];
        let at = stack_linear(cpu, rsp);
        trym!(read_mem(cpu, at, &mut b[..size as usize]));
        let sel = u16::from_le_bytes([b[0], b[1]]);
        let new = stack_pointer(cpu, rsp, rsp.wrapping_add(size));
        trym!(load_segment(cpu, seg_index(r), sel));
        cpu.gpr[RSP] = new;
        if r == Register::SS {
            // As MOV SS: interrupts and debug traps wait until the next instruction.
            cpu.irq_shadow_at = cpu.icount + 1;
            cpu.db_inhibit_at = cpu.icount + 1;
        }
    }
    SysResult::Done(None)
}

/// The 16-bit selector operand `i` of LSL/LAR/VERR/VERW: from memory at `addr` or a register.
fn selector_operand(
    cpu: &mut CpuState,
    insn: &Instruction,
    i: u32,
    addr: Option<u64>,
) -> Result<u16, SysResult> {
    if insn.op_kind(i) == OpKind::Memory {
        let mut b = [0u8; 2];
        read_mem(cpu, addr.expect("memory operand"), &mut b)?;
        Ok(u16::from_le_bytes(b))
    } else {
        Ok(reg_value(cpu, insn.op_register(i)) as u16)
    }
}
