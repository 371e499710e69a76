//! Model-specific registers (RDMSR/WRMSR and the MSRs the model has) and the FS/GS base
//! instructions (RDFSBASE and friends).

use super::*;

/// The msr instructions.
pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    match insn.mnemonic() {
        M::Rdmsr | M::Wrmsr => {
            if !priv0 {
                return gp0();
            }
            let index = cpu.gpr[RCX] as u32;
            if insn.mnemonic() == M::Rdmsr {
                let v = match read_msr(cpu, index) {
                    Some(v) => v,
                    None => {
                        log::debug!(
                            "RDMSR of unknown MSR {index:#x} at RIP {:#x}: #GP",
                            insn.ip()
                        );
                        return gp0();
                    }
                };
                cpu.gpr[RAX] = v & 0xffff_ffff;
                cpu.gpr[RDX] = v >> 32;
            } else {
                let v = (cpu.gpr[RAX] & 0xffff_ffff) | (cpu.gpr[RDX] << 32);
                if !write_msr(cpu, index, v) {
                    log::debug!("WRMSR {index:#x} <- {v:#x} at RIP {:#x}: #GP", insn.ip());
                    return gp0();
                }
            }
            SysResult::Done(None)
        }
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => {
            if cpu.cr4 & CR4_FSGSBASE == 0 {
                return ud();
            }
            let s = if matches!(insn.mnemonic(), M::Rdfsbase | M::Wrfsbase) {
                seg::FS
            } else {
                seg::GS
            };
            let r = insn.op0_register();
            if matches!(insn.mnemonic(), M::Rdfsbase | M::Rdgsbase) {
                let v = cpu.seg[s].base;
                set_reg(cpu, r, v);
            } else {
                let v = reg_value(cpu, r);
                if !mmu::is_canonical(v) {
                    return gp0();
                }
                cpu.seg[s].base = v;
            }
            SysResult::Done(None)
        }
        _ => unreachable!("routed here by system::execute"),
    }
}

pub(super) const MSR_TSC: u32 = 0x10;
pub(super) const MSR_PLATFORM_ID: u32 = 0x17;
pub(super) const MSR_APIC_BASE: u32 = 0x1b;
pub(super) const MSR_SPEC_CTRL: u32 = 0x48;
pub(super) const MSR_PRED_CMD: u32 = 0x49;
pub(super) const MSR_UCODE_REV: u32 = 0x8b;
pub(super) const MSR_MTRRCAP: u32 = 0xfe;
pub(super) const MSR_SYSENTER_CS: u32 = 0x174;
pub(super) const MSR_SYSENTER_ESP: u32 = 0x175;
pub(super) const MSR_SYSENTER_EIP: u32 = 0x176;
pub(super) const MSR_MCG_CAP: u32 = 0x179;
pub(super) const MSR_MCG_STATUS: u32 = 0x17a;
pub(super) const MSR_MISC_ENABLE: u32 = 0x1a0;
pub(super) const MSR_PAT: u32 = 0x277;
pub(super) const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub(super) const MSR_EFER: u32 = 0xc000_0080;
pub(super) const MSR_STAR: u32 = 0xc000_0081;
pub(super) const MSR_LSTAR: u32 = 0xc000_0082;
pub(super) const MSR_CSTAR: u32 = 0xc000_0083;
pub(super) const MSR_SFMASK: u32 = 0xc000_0084;
pub(super) const MSR_FS_BASE: u32 = 0xc000_0100;
pub(super) const MSR_GS_BASE: u32 = 0xc000_0101;
pub(super) const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub(super) const MSR_TSC_AUX: u32 = 0xc000_0103;

/// Index into `cpu.mtrr` for the MTRR MSRs: 8 variable pairs (0x200-0x20f), 11 fixed, default.
pub(super) fn mtrr_slot(index: u32) -> Option<usize> {
    match index {
        0x200..=0x20f => Some((index - 0x200) as usize),
        0x250 => Some(16),
        0x258 => Some(17),
        0x259 => Some(18),
        0x268..=0x26f => Some(19 + (index - 0x268) as usize),
        MSR_MTRR_DEF_TYPE => Some(27),
        _ => None,
    }
}

/// The MSRs the CPU model has (documented in ARCHITECTURE.md). `None`: #GP.
pub(super) fn read_msr(cpu: &mut CpuState, index: u32) -> Option<u64> {
    Some(match index {
        MSR_TSC => bus::with_bus(cpu, |bus, cpu| bus.rdtsc(cpu))?,
        MSR_PLATFORM_ID | MSR_UCODE_REV | MSR_MCG_CAP | MSR_MCG_STATUS => 0,
        MSR_APIC_BASE => cpu.apic_base,
        MSR_SPEC_CTRL => cpu.spec_ctrl,
        // 8 variable ranges, fixed ranges, write-combining.
        MSR_MTRRCAP => 0x508,
        MSR_SYSENTER_CS => cpu.sysenter_cs,
        MSR_SYSENTER_ESP => cpu.sysenter_esp,
        MSR_SYSENTER_EIP => cpu.sysenter_eip,
        MSR_MISC_ENABLE => cpu.misc_enable,
        MSR_PAT => cpu.pat,
        MSR_EFER => cpu.efer,
        MSR_STAR => cpu.star,
        MSR_LSTAR => cpu.lstar,
        MSR_CSTAR => cpu.cstar,
        MSR_SFMASK => cpu.sfmask,
        MSR_FS_BASE => cpu.seg[seg::FS].base,
        MSR_GS_BASE => cpu.seg[seg::GS].base,
        MSR_KERNEL_GS_BASE => cpu.kernel_gs_base,
        MSR_TSC_AUX => cpu.tsc_aux,
        i => cpu.mtrr[mtrr_slot(i)?],
    })
}

/// Write an MSR; `false` means #GP (unknown MSR or a reserved bit set).
pub(super) fn write_msr(cpu: &mut CpuState, index: u32, v: u64) -> bool {
    let canonical = mmu::is_canonical(v);
    match index {
        MSR_APIC_BASE => {
            // Only the xAPIC at its default address is modelled.
            if v & !0xffff_f900 != 0 {
                return false;
            }
            cpu.apic_base = v;
        }
        MSR_SPEC_CTRL => {
            if v & !0x7 != 0 {
                return false;
            }
            cpu.spec_ctrl = v;
        }
        MSR_PRED_CMD => {
            if v & !1 != 0 {
                return false;
            }
        }
        MSR_SYSENTER_CS => cpu.sysenter_cs = v & 0xffff,
        MSR_SYSENTER_ESP if canonical => cpu.sysenter_esp = v,
        MSR_SYSENTER_EIP if canonical => cpu.sysenter_eip = v,
        MSR_MCG_STATUS => {
            if v != 0 {
                return false;
            }
        }
        MSR_MISC_ENABLE => cpu.misc_enable = v,
        MSR_PAT => {
            // Each byte must be a valid memory type (0, 1, 4, 5, 6, 7).
            if (0..8).any(|i| matches!((v >> (i * 8)) & 0xff, 2 | 3 | 8..=255)) {
                return false;
            }
            cpu.pat = v;
        }
        MSR_EFER => {
            if v & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) != 0 {
                return false;
            }
            // LMA is read-only; LME cannot change while paging is on.
            if (v ^ cpu.efer) & EFER_LME != 0 && cr0(cpu) & CR0_PG != 0 {
                return false;
            }
            if (v ^ cpu.efer) & EFER_NXE != 0 {
                cpu.exec.tlb.flush();
            }
            cpu.efer = (v & !EFER_LMA) | (cpu.efer & EFER_LMA);
        }
        MSR_STAR => cpu.star = v,
        MSR_LSTAR if canonical => cpu.lstar = v,
        MSR_CSTAR if canonical => cpu.cstar = v,
        MSR_SFMASK => cpu.sfmask = v & 0xffff_ffff,
        MSR_FS_BASE if canonical => cpu.seg[seg::FS].base = v,
        MSR_GS_BASE if canonical => cpu.seg[seg::GS].base = v,
        MSR_KERNEL_GS_BASE if canonical => cpu.kernel_gs_base = v,
        MSR_TSC_AUX => {
            if v >> 32 != 0 {
                return false;
            }
            cpu.tsc_aux = v;
        }
        i => match mtrr_slot(i) {
            Some(slot) => cpu.mtrr[slot] = v,
            None => return false,
        },
    }
    true
}
