//! Privileged control: HLT, CLI/STI, CLAC/STAC, MOV to and from control and debug registers,
//! LMSW/CLTS, and TLB and cache maintenance (INVLPG, INVPCID, WBINVD, CLFLUSH).

use super::segments::{mov_segment, read_u16_operand};
use super::*;
use krr_runtime::arch::cr0;

/// The control instructions.
pub(super) fn execute(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
    flags: u64,
) -> SysResult {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    let iopl = ((flags >> 12) & 3) as u8;
    let mem_addr = || addr.expect("memory operand present");
    match insn.mnemonic() {
        M::Hlt => {
            if !priv0 {
                return gp0();
            }
            SysResult::Halt
        }
        M::Cli | M::Sti => cli_sti(cpu, insn.mnemonic() == M::Sti, cpl, iopl, flags),
        M::Clac | M::Stac => {
            if !priv0 {
                return ud();
            }
            if insn.mnemonic() == M::Stac {
                cpu.rflags |= rflags::AC;
            } else {
                cpu.rflags &= !rflags::AC;
            }
            SysResult::Done(None)
        }
        M::Mov => mov_special(cpu, insn, addr),
        M::Lmsw => {
            if !priv0 {
                return gp0();
            }
            let v = trym!(read_u16_operand(cpu, insn, addr)) as u64;
            // LMSW sets PE but never clears it, and only touches the low four bits.
            cpu.cr0 = (cpu.cr0 & !(cr0::MP | cr0::EM | cr0::TS))
                | (v & (cr0::PE | cr0::MP | cr0::EM | cr0::TS))
                | (cpu.cr0 & cr0::PE);
            SysResult::Done(None)
        }
        M::Clts => {
            if !priv0 {
                return gp0();
            }
            cpu.cr0 &= !cr0::TS;
            SysResult::Done(None)
        }
        M::Invlpg => {
            if !priv0 {
                return gp0();
            }
            cpu.exec.tlb.flush_page(mem_addr());
            SysResult::Done(None)
        }
        M::Invpcid => {
            if !priv0 {
                return gp0();
            }
            let kind = reg_value(cpu, insn.op0_register());
            let mut d = [0u8; 16];
            trym!(read_mem(cpu, mem_addr(), &mut d));
            let pcid = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
            let linear = u64::from_le_bytes(d[8..].try_into().expect("8 bytes"));
            // Without PCIDs only PCID 0 is cached: types 0 and 1 name no other.
            let pcide = cpu.cr4 & cr4::PCIDE != 0;
            if kind > 3 || pcid > 0xfff || (kind <= 1 && !pcide && pcid != 0) {
                return gp0();
            }
            match kind {
                0 => {
                    if !mmu::is_canonical(linear) {
                        return gp0();
                    }
                    // Drops the page for every PCID, global translations too (more than
                    // required).
                    cpu.exec.tlb.flush_page(linear);
                }
                1 => {
                    let current_pcid = if pcide { cpu.cr3 & 0xfff } else { 0 };
                    cpu.exec.tlb.flush_pcid(pcid as u16, current_pcid == pcid);
                }
                2 => cpu.exec.tlb.flush(),
                _ => cpu.exec.tlb.flush_non_global(),
            }
            SysResult::Done(None)
        }
        M::Wbinvd | M::Invd | M::Wbnoinvd => {
            // Memory is coherent and uncached in this model: nothing to write back.
            if !priv0 {
                return gp0();
            }
            SysResult::Done(None)
        }
        M::Clflush | M::Clflushopt | M::Clwb => {
            // Faults like a byte read of the line; there is no cache to flush.
            let mut b = [0u8; 1];
            trym!(read_mem(cpu, mem_addr(), &mut b));
            SysResult::Done(None)
        }
        _ => unreachable!("routed here by system::execute"),
    }
}

/// CLI (`sti` false) and STI in protected mode, which here is always 64-bit mode (SDM CLI and
/// STI "Operation" and their decision tables: "protected mode" there "includes compatibility
/// mode and 64-bit mode"; EFLAGS.VM is always 0 in IA-32e mode, SDM Vol. 3A 2.3.1, so the
/// virtual-8086 rows, and with them CR4.VME, never apply):
/// - IOPL >= CPL: IF := 0 / IF := 1;
/// - else in PVI mode (CPL = 3 and CR4.PVI = 1; SDM Vol. 3 "8086 Emulation", "Protected-Mode
///   Virtual Interrupts"): CLI clears VIF; STI sets VIF if VIP = 0 and is #GP(0) if VIP = 1.
///   IF is untouched either way;
/// - else #GP(0).
///
/// Only STI that sets IF (from IF = 0) blocks interrupts for one instruction (SDM STI
/// "Description"); setting VIF changes nothing the processor acts on, so it opens no shadow.
fn cli_sti(cpu: &mut CpuState, sti: bool, cpl: u8, iopl: u8, flags: u64) -> SysResult {
    if cpl <= iopl {
        if sti {
            if flags & rflags::IF == 0 {
                // Interrupts stay blocked until the instruction after STI has retired.
                cpu.irq_shadow_at = cpu.icount + 1;
            }
            cpu.rflags |= rflags::IF;
        } else {
            cpu.rflags &= !rflags::IF;
        }
        return SysResult::Done(None);
    }
    let pvi_mode = cpl == 3 && cpu.cr4 & cr4::PVI != 0;
    if !pvi_mode || (sti && flags & rflags::VIP != 0) {
        return gp0();
    }
    if sti {
        cpu.rflags |= rflags::VIF;
    } else {
        cpu.rflags &= !rflags::VIF;
    }
    SysResult::Done(None)
}

pub(super) fn mov_special(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    let priv0 = cpu.cpl() == 0;
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    if dst.is_segment_register() || src.is_segment_register() {
        return mov_segment(cpu, insn, addr);
    }
    if src.is_dr() || dst.is_dr() {
        return mov_debug(cpu, insn);
    }
    if !priv0 {
        return gp0();
    }
    if src.is_cr() {
        let v = match src {
            Register::CR0 => cpu.cr0,
            Register::CR2 => cpu.cr2,
            Register::CR3 => cpu.cr3,
            Register::CR4 => cpu.cr4,
            Register::CR8 => {
                // CR8 is the local APIC's TPR[7:4]: a machine with an APIC answers (the guest
                // may have changed the TPR through the xAPIC page); CR8 follows.
                if let Some(v) = bus::with_bus(cpu, |bus, cpu| bus.cr8_read(cpu)).flatten() {
                    cpu.cr8 = v & 0xf;
                }
                cpu.cr8
            }
            _ => return ud(),
        };
        cpu.gpr[gpr_of(dst).0] = v;
        return SysResult::Done(None);
    }
    if dst.is_cr() {
        let v = cpu.gpr[gpr_of(src).0];
        match dst {
            Register::CR0 => {
                if v >> 32 != 0 || (v & cr0::PG != 0 && v & cr0::PE == 0) {
                    return gp0();
                }
                // Long mode cannot turn paging off without leaving long mode first.
                if cpu.efer & efer::LMA != 0 && v & cr0::PG == 0 {
                    return gp0();
                }
                if (v ^ cpu.cr0) & (cr0::PG | cr0::PE | cr0::WP) != 0 {
                    cpu.exec.tlb.flush();
                }
                cpu.cr0 = v | cr0::ET; // ET is hardwired to 1
            }
            Register::CR2 => cpu.cr2 = v,
            Register::CR3 => {
                // Bit 63 (PCID no-flush) is not stored.
                let keep = v >> 63 != 0;
                let v = v & !(1 << 63);
                if v >> 52 != 0 {
                    return gp0();
                }
                // With PCIDs, a load with bit 63 set keeps that PCID's translations (SDM
                // 4.10.4.1); without, every load invalidates the non-global ones. Global
                // translations stay either way.
                if cpu.cr4 & cr4::PCIDE != 0 {
                    cpu.exec.tlb.load_cr3(Some((v & 0xfff) as u16), !keep);
                } else {
                    cpu.exec.tlb.load_cr3(None, true);
                }
                cpu.cr3 = v;
            }
            Register::CR4 => {
                // Bits for features CPUID does not report are reserved (SDM MOV CR "#GP(0) If
                // an attempt is made to write a 1 to any reserved bit in CR4").
                if v & !cpu.cpuid.cr4_supported() != 0
                    || (v & cr4::PCIDE != 0 && cpu.cr3 & 0xfff != 0 && cpu.cr4 & cr4::PCIDE == 0)
                    // IA-32e mode cannot run without PAE.
                    || (cpu.efer & efer::LMA != 0 && v & cr4::PAE == 0)
                {
                    return gp0();
                }
                cpu.exec.tlb.flush();
                cpu.cr4 = v;
            }
            Register::CR8 => {
                if v >> 4 != 0 {
                    return gp0();
                }
                cpu.cr8 = v;
                bus::with_bus(cpu, |bus, cpu| bus.cr8_write(cpu, v));
            }
            _ => return ud(),
        }
        return SysResult::Done(None);
    }
    ud()
}

/// MOV to or from DR0-DR7. DR4/DR5 alias DR6/DR7 unless CR4.DE makes them #UD; with DR7.GD
/// set any access is a #DB fault with DR6.BD set (GD is cleared for the handler); then the
/// privilege check (the order of the SDM's MOV DR "Operation" and of Bochs).
pub(super) fn mov_debug(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let (dst, src) = (insn.op0_register(), insn.op1_register());
    let reg = if src.is_dr() { src } else { dst };
    let i = match reg as usize - Register::DR0 as usize {
        4 | 5 if cpu.cr4 & cr4::DE != 0 => return ud(),
        i @ (4 | 5) => i + 2,
        i if i > 7 => return ud(),
        i => i,
    };
    if cpu.dr[7] & dr7::GD != 0 {
        cpu.dr[6] |= dr6::BD;
        cpu.dr[7] &= !dr7::GD;
        return SysResult::Fault(fault(vector::DB, None));
    }
    if cpu.cpl() != 0 {
        return gp0();
    }
    if src.is_dr() {
        cpu.gpr[gpr_of(dst).0] = cpu.dr[i];
        return SysResult::Done(None);
    }
    let v = cpu.gpr[gpr_of(src).0];
    if (i == 6 || i == 7) && v >> 32 != 0 {
        return gp0();
    }
    cpu.dr[i] = match i {
        // Only B0-B3, BD, BS and BT are writable.
        6 => (v & (dr6::B_MASK | dr6::BD | dr6::BS | dr6::BT)) | dr6::FIXED1,
        7 => (v & !dr7::RESERVED0) | dr7::FIXED1,
        _ => v,
    };
    if i == 7 && cpu.cr4 & cr4::DE != 0 && (0..4).any(|b| debugreg::kind(v, b) == 2) {
        static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "guest set an I/O breakpoint (DR7={v:#x}, CR4.DE=1); krr does not model I/O \
                 breakpoints: they never trigger"
            );
        }
    }
    // A breakpoint enabled now takes effect from the next instruction on: the instruction
    // ends its block and the dispatcher switches to its checked mode (engine::debug).
    SysResult::Done(None)
}
