//! Exception and interrupt delivery through the 64-bit IDT: gate checks, privilege-change and
//! IST stack switches, the pushed frame, and the double/triple fault rules.

use crate::arch::{rflags, vector};
use crate::cpu::{seg, CpuState, Segment};
use crate::desc::{self, DescFault};
use crate::Profile;

/// What is being delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A CPU exception (fault or trap); RIP to push is given.
    Exception,
    /// INT n, INT3, INTO: software interrupts, subject to the gate's DPL check.
    Software,
    /// An external interrupt (or NMI).
    External,
}

/// The machine cannot continue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryError {
    /// A fault while delivering a double fault.
    TripleFault { first: u8, second: u8 },
    /// A descriptor table or stack lies in non-RAM memory.
    Unbacked(u64),
}

fn is_contributory(v: u8) -> bool {
    matches!(
        v,
        vector::DE | vector::TS | vector::NP | vector::SS | vector::GP
    )
}

/// Do vectors `first` then `second` (raised while delivering `first`) make a double fault?
fn makes_double_fault(first: u8, second: u8) -> bool {
    (is_contributory(first) && is_contributory(second))
        || (first == vector::PF && (second == vector::PF || is_contributory(second)))
}

/// Fault-class exceptions (SDM Table 6-1). #DB is either (an instruction breakpoint or a
/// general-detect fault, a single-step or data-breakpoint trap) and pushes RF as it is, see
/// `deliver_once`.
fn is_fault(v: u8) -> bool {
    matches!(
        v,
        vector::DE
            | vector::BR
            | vector::UD
            | vector::NM
            | vector::TS
            | vector::NP
            | vector::SS
            | vector::GP
            | vector::PF
            | vector::MF
            | vector::AC
            | vector::XM
            | vector::VE
            | vector::CP
    )
}

/// The RFLAGS image KRR's replayer (QEMU 7.0 TCG with KRR's changes, `seg_helper.c`
/// `do_interrupt64`) pushes: RF = 1 for every event but a software interrupt and vectors 1,
/// 3, 4, 8 and 18 (`exception_is_fault`, so external interrupts and NMIs too), RF as it is for
/// those (QEMU keeps no RF in its flags: it is 0 there; krr's RF is 0 too unless IRETQ loaded
/// a 1), and ZF cleared whenever the frame gets an error code.
fn krr_compat_pushed_flags(v: u8, kind: EventKind, has_error_code: bool, rflags_value: u64) -> u64 {
    let not_fault_like = matches!(
        v,
        vector::DB | vector::BP | vector::OF | vector::DF | vector::MC
    );
    let mut f = rflags_value;
    if kind != EventKind::Software && !not_fault_like {
        f |= rflags::RF;
    }
    if has_error_code {
        f &= !rflags::ZF;
    }
    f
}

/// Deliver an event. `rflags_value` is the full current RFLAGS (with the lazy arithmetic flags
/// read, as [`CpuState::rflags_value`] does); `return_rip` is what the frame gets as RIP. On
/// success `cpu.rip`, CS, SS, RSP and the non-arithmetic RFLAGS bits describe the handler's
/// entry. CR2 is written for page faults.
///
/// `fault_rip` is where a fault raised while delivering the event is reported: the INT n /
/// INT3 / INTO instruction itself for software interrupts (`return_rip` is past it), the same
/// as `return_rip` otherwise. Returns `Ok(true)` when such a fault replaced a software
/// interrupt (so the INT instruction did not retire after all).
pub fn deliver(
    cpu: &mut CpuState,
    vector: u8,
    kind: EventKind,
    error_code: Option<u32>,
    rflags_value: u64,
    return_rip: u64,
    fault_rip: u64,
) -> Result<bool, DeliveryError> {
    let mut current = (vector, kind, error_code);
    let mut first: Option<u8> = None;
    let mut rip = return_rip;
    loop {
        let (v, k, e) = current;
        if v == vector::PF && k == EventKind::Exception {
            cpu.cr2 = cpu.exec.exception.address;
        }
        match deliver_once(cpu, v, k, e, rflags_value, rip) {
            Ok(()) => return Ok(first.is_some() && kind == EventKind::Software),
            Err(DescFault::Unbacked(p)) => return Err(DeliveryError::Unbacked(p)),
            Err(DescFault::Exception(rec)) => {
                let second = rec.vector;
                if v == vector::DF {
                    return Err(DeliveryError::TripleFault {
                        first: first.unwrap_or(v),
                        second,
                    });
                }
                first.get_or_insert(v);
                cpu.exec.exception = rec;
                rip = fault_rip;
                current = if k == EventKind::Exception && makes_double_fault(v, second) {
                    (vector::DF, EventKind::Exception, Some(0))
                } else {
                    let code = rec.has_error_code.then_some(rec.error_code);
                    (second, EventKind::Exception, code)
                };
            }
        }
    }
}

fn deliver_once(
    cpu: &mut CpuState,
    v: u8,
    kind: EventKind,
    error_code: Option<u32>,
    rflags_value: u64,
    return_rip: u64,
) -> Result<(), DescFault> {
    // EXT (error-code bit 0) is set for a fault during the delivery of anything but a
    // software interrupt: an external interrupt or an earlier exception (SDM 6.13).
    let ext = (kind != EventKind::Software) as u32;
    let idt_code = (v as u32) * 8 + 2 + ext;
    if (v as u64) * 16 + 15 > cpu.idtr.limit as u64 {
        return Err(DescFault::gp(idt_code));
    }
    let mut g = [0u8; 16];
    desc::system_read(cpu, cpu.idtr.base.wrapping_add(v as u64 * 16), &mut g)?;
    let lo = u64::from_le_bytes(g[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(g[8..].try_into().expect("8 bytes"));
    let typ = (lo >> 40) & 0xf;
    let gate_dpl = ((lo >> 45) & 3) as u8;
    let present = lo & (1 << 47) != 0;
    let cpl = cpu.cpl();
    if typ != 0xe && typ != 0xf {
        return Err(DescFault::gp(idt_code));
    }
    if kind == EventKind::Software && gate_dpl < cpl {
        return Err(DescFault::gp(idt_code));
    }
    if !present {
        return Err(DescFault::np(idt_code));
    }
    let selector = ((lo >> 16) & 0xffff) as u16;
    let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32);
    let ist = (lo >> 32) & 7;
    let Some(cs) = desc::read_descriptor(cpu, selector)? else {
        return Err(DescFault::gp(ext));
    };
    if !cs.is_code() || cs.dpl() > cpl {
        return Err(DescFault::gp((selector as u32 & !3) + ext));
    }
    if !cs.present() {
        return Err(DescFault::np((selector as u32 & !3) + ext));
    }
    if !cs.long() {
        // Only 64-bit handlers are supported (Linux uses nothing else in long mode).
        return Err(DescFault::gp((selector as u32 & !3) + ext));
    }
    // Conforming code segments keep the CPL.
    let new_cpl = if cs.typ() & 4 != 0 { cpl } else { cs.dpl() };
    let old_ss = cpu.seg[seg::SS];
    let old_rsp = cpu.gpr[crate::gpr::RSP];
    let mut rsp = old_rsp;
    let switch = new_cpl < cpl;
    if switch || ist != 0 {
        let offset = if ist != 0 {
            0x24 + (ist - 1) * 8
        } else {
            4 + new_cpl as u64 * 8
        };
        if offset + 7 > cpu.tr.limit as u64 {
            return Err(DescFault::ts(cpu.tr.selector as u32 & !3));
        }
        let mut b = [0u8; 8];
        desc::system_read(cpu, cpu.tr.base.wrapping_add(offset), &mut b)?;
        rsp = u64::from_le_bytes(b);
    }
    if !crate::mmu::is_canonical(rsp) {
        return Err(DescFault::ss(ext));
    }
    rsp &= !0xf;
    // A non-canonical handler address faults here, with the frame describing the
    // interrupted code (SDM INT n, "64-Bit Mode Exceptions").
    if !crate::mmu::is_canonical(target) {
        return Err(DescFault::gp(ext));
    }
    let cs_sel = (selector & !3) | new_cpl as u16;
    let ss_sel = if switch {
        new_cpl as u16
    } else {
        old_ss.selector
    };
    // The RF image: 1 for fault-class exceptions (so that IRET back to the faulting
    // instruction does not retrigger an instruction breakpoint), 0 for software interrupts and
    // traps (RF is clear once an instruction completes), as it is for external interrupts and
    // aborts. #DB pushes RF as it is: 0 for an instruction breakpoint (which RF=1 would have
    // suppressed), and for a trap the value the instruction left (IRETQ may have loaded 1)
    // (SDM 17.3.1.1).
    let has_error_code = kind == EventKind::Exception && crate::arch::pushes_error_code(v);
    let pushed_flags = match cpu.exec.profile {
        Profile::KrrCompat => krr_compat_pushed_flags(v, kind, has_error_code, rflags_value),
        Profile::Host | Profile::Intel => match kind {
            EventKind::Exception if v == vector::DB => rflags_value,
            EventKind::Exception if is_fault(v) => rflags_value | rflags::RF,
            EventKind::Exception | EventKind::Software => rflags_value & !rflags::RF,
            EventKind::External => rflags_value,
        },
    };
    let mut frame: Vec<u64> = vec![
        old_ss.selector as u64,
        old_rsp,
        pushed_flags,
        cpu.seg[seg::CS].selector as u64,
        return_rip,
    ];
    if has_error_code {
        frame.push(error_code.unwrap_or(0) as u64);
    }
    // The CPU pushes SS first, at the top: check the pages in that order so that a fault
    // reports (in CR2) the first push that faults, before anything is written.
    let mut checked_page = None;
    for i in 1..=frame.len() as u64 {
        let a = rsp.wrapping_sub(8 * i);
        if checked_page != Some(a >> 12) {
            checked_page = Some(a >> 12);
            crate::mmu::translate(cpu, a, crate::mmu::Access::Write, false).map_err(|e| {
                cpu.exec.exception = e;
                DescFault::Exception(e)
            })?;
        }
    }
    // Write the frame as the handler will see it (supervisor accesses at the new CPL).
    let bytes: Vec<u8> = frame.iter().rev().flat_map(|w| w.to_le_bytes()).collect();
    let new_rsp = rsp.wrapping_sub(bytes.len() as u64);
    desc::system_write(cpu, new_rsp, &bytes)?;
    cpu.seg[seg::CS] = cs.to_segment(cs_sel);
    if switch {
        // 64-bit mode loads a null SS with RPL = new CPL on a privilege change.
        cpu.seg[seg::SS] = Segment {
            selector: ss_sel,
            attrs: 0,
            limit: 0,
            base: 0,
        };
    }
    cpu.gpr[crate::gpr::RSP] = new_rsp;
    cpu.rip = target;
    let mut f = rflags_value & !(rflags::TF | rflags::NT | rflags::RF | rflags::VM);
    if typ == 0xe {
        f &= !rflags::IF;
    }
    cpu.rflags = (f & !rflags::ARITH) | rflags::FIXED1;
    Ok(())
}
