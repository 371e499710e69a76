//! A KRR snapshot's vCPU (QEMU's `cpu` section, [`X86Cpu`]) as krr's [`ArchState`]. QEMU
//! keeps what krr keeps, in other shapes: segment attributes in descriptor-high-dword
//! positions, x87 registers by physical number with an abridged tag word (QEMU's
//! `fptag_vmstate`: bit i set = register i in use), RFLAGS with the arithmetic flags folded
//! in. What krr has no place for (MCE banks, kvmclock MSRs, SMBASE) is dropped; an event
//! QEMU had pending at the snapshot (an injected interrupt, exception or NMI, which QEMU's TCG
//! drops as well: krr-spec open question 14) is reported back so the caller can say so.

use crate::krr_rec::migration::cpu::{Segment as QemuSegment, X86Cpu};
use krr_runtime::arch::rflags;
use krr_runtime::cpu::{DescriptorTable, Segment};
use krr_runtime::ArchState;

/// QEMU's segment cache as krr's: attributes from descriptor bits 8-15 (type, S, DPL, P) and
/// 20-23 (AVL, L, D/B, G), packed as VMX packs them.
fn segment(s: &QemuSegment) -> Segment {
    Segment {
        selector: s.selector as u16,
        attrs: (((s.flags >> 8) & 0xff) | (((s.flags >> 20) & 0xf) << 12)) as u16,
        limit: s.limit,
        base: s.base,
    }
}

fn table(s: &QemuSegment) -> DescriptorTable {
    DescriptorTable {
        base: s.base,
        limit: s.limit as u16,
    }
}

/// krr's state for the vCPU `c`, and notes on what it had pending that the state cannot hold.
pub fn arch_state(c: &X86Cpu) -> Result<(ArchState, Vec<String>), String> {
    if c.fpregs_format != 0 {
        return Err(format!(
            "x87 registers saved in format {} (only QEMU's 80-bit format 0 is read)",
            c.fpregs_format
        ));
    }
    // Every field QEMU saves is set below; the rest (APIC base, MTRRs, CR8) stay at reset values.
    let mut a = ArchState::flat64();
    a.gpr = c.regs;
    a.rip = c.rip;
    // Concrete flags: `cc_op` 0 means `cc_res` holds the arithmetic flag bits.
    a.rflags = (c.rflags & !rflags::ARITH) | rflags::FIXED1;
    a.cc_op = 0;
    a.cc_res = c.rflags & rflags::ARITH;
    // QEMU's order is the architectural one: ES CS SS DS FS GS.
    for (i, s) in c.segs.iter().enumerate() {
        a.seg[i] = segment(s);
    }
    a.ldtr = segment(&c.ldt);
    a.tr = segment(&c.tr);
    a.gdtr = table(&c.gdt);
    a.idtr = table(&c.idt);
    a.cr0 = c.cr0;
    a.cr2 = c.cr2;
    a.cr3 = c.cr3;
    a.cr4 = c.cr4;
    a.efer = c.efer;
    a.xcr0 = if c.xcr0 == 0 { 1 } else { c.xcr0 };
    a.dr = c.dr;
    a.kernel_gs_base = c.kernelgsbase;
    a.star = c.star;
    a.lstar = c.lstar;
    a.cstar = c.cstar;
    a.sfmask = c.fmask;
    a.tsc_aux = c.tsc_aux;
    a.pat = c.pat;
    a.sysenter_cs = c.sysenter_cs as u64;
    a.sysenter_esp = c.sysenter_esp;
    a.sysenter_eip = c.sysenter_eip;
    a.mxcsr = c.mxcsr;
    a.xmm = c.xmm;
    a.x87.fcw = c.fpuc;
    a.x87.fsw = c.fpus;
    a.x87.ftw = c.fptag as u8;
    // FXSAVE's slots are ST(0)..ST(7), counted from TOP; QEMU's by physical register.
    let top = ((c.fpus >> 11) & 7) as usize;
    for (i, slot) in a.x87.st.iter_mut().enumerate() {
        let (mantissa, exponent) = c.fpregs[(top + i) & 7];
        slot[..8].copy_from_slice(&mantissa.to_le_bytes());
        slot[8..10].copy_from_slice(&exponent.to_le_bytes());
    }
    let mut notes = Vec::new();
    if c.interrupt_injected >= 0 {
        notes.push(format!(
            "the snapshot has interrupt {} injected but not delivered; like QEMU's TCG, krr drops it",
            c.interrupt_injected
        ));
    }
    if c.exception_nr >= 0 {
        notes.push(format!(
            "the snapshot has exception {} pending; like QEMU's TCG, krr drops it",
            c.exception_nr
        ));
    }
    if c.nmi_injected != 0 || c.nmi_pending != 0 {
        notes.push("the snapshot has an NMI pending; like QEMU's TCG, krr drops it".into());
    }
    Ok((a, notes))
}
