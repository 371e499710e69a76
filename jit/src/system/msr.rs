//! Model-specific registers (RDMSR/WRMSR and the MSRs the model has) and the FS/GS base
//! instructions (RDFSBASE and friends).

use super::*;
use krr_runtime::arch::msr;

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
                bus::with_bus(cpu, |bus, cpu| bus.model_answered(cpu, "RDMSR"));
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
            if cpu.cr4 & cr4::FSGSBASE == 0 {
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

/// Index into `cpu.mtrr` for the MTRR MSRs: 8 variable pairs (0x200-0x20f), 11 fixed, default.
pub(super) fn mtrr_slot(index: u32) -> Option<usize> {
    match index {
        0x200..=0x20f => Some((index - 0x200) as usize),
        0x250 => Some(16),
        0x258 => Some(17),
        0x259 => Some(18),
        0x268..=0x26f => Some(19 + (index - 0x268) as usize),
        msr::MTRR_DEF_TYPE => Some(27),
        _ => None,
    }
}

/// The MSRs the CPU model has (documented in ARCHITECTURE.md). `None`: #GP.
pub(super) fn read_msr(cpu: &mut CpuState, index: u32) -> Option<u64> {
    if msr::is_device_msr(index) {
        // No bus (a snippet run): no device, #GP.
        return bus::with_bus(cpu, |bus, cpu| bus.msr_read(cpu, index)).flatten();
    }
    Some(match index {
        msr::TSC => bus::with_bus(cpu, |bus, cpu| bus.rdtsc(cpu))?,
        msr::PLATFORM_ID | msr::UCODE_REV | msr::MCG_CAP | msr::MCG_STATUS => 0,
        msr::APIC_BASE => cpu.apic_base,
        msr::SPEC_CTRL => cpu.spec_ctrl,
        // 8 variable ranges, fixed ranges, write-combining.
        msr::MTRRCAP => 0x508,
        msr::SYSENTER_CS => cpu.sysenter_cs,
        msr::SYSENTER_ESP => cpu.sysenter_esp,
        msr::SYSENTER_EIP => cpu.sysenter_eip,
        msr::MISC_ENABLE => cpu.misc_enable,
        msr::PAT => cpu.pat,
        msr::EFER => cpu.efer,
        msr::STAR => cpu.star,
        msr::LSTAR => cpu.lstar,
        msr::CSTAR => cpu.cstar,
        msr::SFMASK => cpu.sfmask,
        msr::FS_BASE => cpu.seg[seg::FS].base,
        msr::GS_BASE => cpu.seg[seg::GS].base,
        msr::KERNEL_GS_BASE => cpu.kernel_gs_base,
        msr::TSC_AUX => cpu.tsc_aux,
        msr::XSS if has_xsaves(cpu) => 0,
        i => cpu.mtrr[mtrr_slot(i)?],
    })
}

/// May IA32_APIC_BASE become `v` (SDM 11.12.5)? Reserved bits are the low byte, bit 9, the
/// bits at and above MAXPHYADDR and EXTD on a CPU without x2APIC; of the modes (EN, EXTD),
/// "EXTD without EN" is invalid, x2APIC cannot return to xAPIC without passing through
/// disabled, and a disabled APIC cannot enter x2APIC directly.
fn apic_base_allowed(cpu: &CpuState, v: u64) -> bool {
    let max_phys = cpu.cpuid.query(0x8000_0008, 0, cpu.cr4, cpu.xcr0)[0] & 0xff;
    let x2apic = cpu.cpuid.query(1, 0, cpu.cr4, cpu.xcr0)[2] & (1 << 21) != 0;
    krr_runtime::arch::apic_base::check_write(cpu.apic_base, v, max_phys, x2apic).is_ok()
}

/// IA32_XSS exists with XSAVES (CPUID.(0DH,1):EAX[3]).
fn has_xsaves(cpu: &CpuState) -> bool {
    cpu.cpuid.lookup(0xd, 1)[0] & krr_runtime::cpuid::XSAVES != 0
}

/// Write an MSR; `false` means #GP (unknown MSR or a reserved bit set).
pub(super) fn write_msr(cpu: &mut CpuState, index: u32, v: u64) -> bool {
    if msr::is_device_msr(index) {
        return bus::with_bus(cpu, |bus, cpu| bus.msr_write(cpu, index, v)).unwrap_or(false);
    }
    let canonical = mmu::is_canonical(v);
    match index {
        msr::APIC_BASE => {
            if !apic_base_allowed(cpu, v) {
                return false;
            }
            cpu.apic_base = v;
        }
        msr::SPEC_CTRL => {
            if v & !0x7 != 0 {
                return false;
            }
            cpu.spec_ctrl = v;
        }
        msr::PRED_CMD => {
            if v & !1 != 0 {
                return false;
            }
        }
        msr::SYSENTER_CS => cpu.sysenter_cs = v & 0xffff,
        msr::SYSENTER_ESP if canonical => cpu.sysenter_esp = v,
        msr::SYSENTER_EIP if canonical => cpu.sysenter_eip = v,
        msr::MCG_STATUS => {
            if v != 0 {
                return false;
            }
        }
        msr::MISC_ENABLE => cpu.misc_enable = v,
        msr::PAT => {
            // Each byte must be a valid memory type (0, 1, 4, 5, 6, 7).
            if (0..8).any(|i| matches!((v >> (i * 8)) & 0xff, 2 | 3 | 8..=255)) {
                return false;
            }
            cpu.pat = v;
        }
        msr::EFER => {
            if v & !(efer::SCE | efer::LME | efer::LMA | efer::NXE) != 0 {
                return false;
            }
            // LMA is read-only; LME cannot change while paging is on.
            if (v ^ cpu.efer) & efer::LME != 0 && cr0(cpu) & cr0::PG != 0 {
                return false;
            }
            if (v ^ cpu.efer) & efer::NXE != 0 {
                cpu.exec.tlb.flush();
            }
            cpu.efer = (v & !efer::LMA) | (cpu.efer & efer::LMA);
        }
        msr::STAR => cpu.star = v,
        msr::LSTAR if canonical => cpu.lstar = v,
        msr::CSTAR if canonical => cpu.cstar = v,
        msr::SFMASK => cpu.sfmask = v & 0xffff_ffff,
        msr::FS_BASE if canonical => cpu.seg[seg::FS].base = v,
        msr::GS_BASE if canonical => cpu.seg[seg::GS].base = v,
        msr::KERNEL_GS_BASE if canonical => cpu.kernel_gs_base = v,
        msr::TSC_AUX => {
            if v >> 32 != 0 {
                return false;
            }
            cpu.tsc_aux = v;
        }
        // No supervisor state component is offered: only 0 may be written.
        msr::XSS if has_xsaves(cpu) => return v == 0,
        i => match mtrr_slot(i) {
            Some(slot) => cpu.mtrr[slot] = v,
            None => return false,
        },
    }
    true
}
