//! Far control transfers in 64-bit mode: RETF (the kernel reloads CS with `lretq`), and far
//! JMP/CALL through a memory operand (m16:64/m16:32). Like the other system instructions they
//! run in the interpreter only (compiled code hands them over) and check before writing.
//! Transfers to compatibility-mode code and through call gates are not supported (#GP, logged).

use super::*;
use iced_x86::{Mnemonic as M, OpKind};
use krr_runtime::desc;
use krr_runtime::gpr::RSP;
use krr_runtime::{mmu, seg, vector, CpuState, ExceptionRecord, Segment};

enum Far {
    Done(u64),
    Fault(u8, u32),
    Unbacked(u64),
}

pub fn execute<B: Builder>(b: &mut B) -> R<()> {
    if !b.is_interpreter() {
        let z = b.c(0);
        b.call(Helper::Interpret, [z, z, z])?;
        return Ok(());
    }
    let insn = *b.insn();
    let addr = if insn.op0_kind() == OpKind::Memory {
        let a = access_address(b)?;
        b.const_of(a)
    } else {
        None
    };
    let cpu = b.cpu_mut().expect("the interpreter exposes the CPU");
    match run(cpu, &insn, addr) {
        Far::Done(rip) => {
            let t = b.c(rip);
            b.flow(Flow::Jump(t), None);
            Ok(())
        }
        Far::Fault(v, code) => {
            let has_code = matches!(
                v,
                vector::DF
                    | vector::TS
                    | vector::NP
                    | vector::SS
                    | vector::GP
                    | vector::PF
                    | vector::AC
            );
            Err(b.raise(v, has_code.then_some(code)))
        }
        Far::Unbacked(p) => {
            let cpu = b.cpu_mut().expect("interpreter");
            cpu.unbacked_phys = p;
            cpu.helper_status = crate::helpers::UNBACKED;
            Err(Abort)
        }
    }
}

fn read(cpu: &mut CpuState, addr: u64, buf: &mut [u8]) -> Result<(), Far> {
    let idx = mmu::mmu_index(cpu);
    mmu::load_bytes(cpu, addr, buf, idx).map_err(|f| match f {
        mmu::MemFault::Exception => {
            let e: ExceptionRecord = cpu.exception;
            Far::Fault(e.vector, e.error_code)
        }
        mmu::MemFault::Unbacked { phys } => Far::Unbacked(phys),
    })
}

fn write(cpu: &mut CpuState, addr: u64, data: &[u8]) -> Result<(), Far> {
    let idx = mmu::mmu_index(cpu);
    mmu::store_bytes(cpu, addr, data, idx).map_err(|f| match f {
        mmu::MemFault::Exception => {
            let e: ExceptionRecord = cpu.exception;
            Far::Fault(e.vector, e.error_code)
        }
        mmu::MemFault::Unbacked { phys } => Far::Unbacked(phys),
    })
}

/// Check a code-segment selector for a far transfer at the same privilege level.
fn code_segment(cpu: &mut CpuState, sel: u16, rpl_must_match_cpl: bool) -> Result<Segment, Far> {
    let cpl = cpu.cpl();
    let code = sel as u32 & !3;
    let d = match desc::read_descriptor(cpu, sel) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(Far::Fault(vector::GP, 0)),
        Err(desc::DescFault::Exception(e)) => return Err(Far::Fault(e.vector, e.error_code)),
        Err(desc::DescFault::Unbacked(p)) => return Err(Far::Unbacked(p)),
    };
    let rpl = (sel & 3) as u8;
    let conforming = d.typ() & 4 != 0;
    let dpl_ok = if conforming {
        d.dpl() <= cpl
    } else {
        d.dpl() == cpl
    };
    if !d.is_code() || !dpl_ok || (rpl_must_match_cpl && rpl != cpl) || rpl < cpl {
        return Err(Far::Fault(vector::GP, code));
    }
    if !d.present() {
        return Err(Far::Fault(vector::NP, code));
    }
    if !d.long() {
        log::warn!(
            "far transfer to non-64-bit code segment {sel:#x}: compatibility mode is not supported"
        );
        return Err(Far::Fault(vector::GP, code));
    }
    // The loaded selector carries the CPL as RPL.
    Ok(d.to_segment((sel & !3) | cpl as u16))
}

fn run(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> Far {
    match run_inner(cpu, insn, addr) {
        Ok(rip) | Err(Ok(rip)) => Far::Done(rip),
        Err(Err(f)) => f,
    }
}

/// `Err(Ok(..))` is never produced; the nested Result keeps `?` usable with `Far` errors.
fn run_inner(
    cpu: &mut CpuState,
    insn: &Instruction,
    addr: Option<u64>,
) -> Result<u64, Result<u64, Far>> {
    let far = |f: Far| Err(Err(f));
    match insn.mnemonic() {
        M::Retf => {
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
            if let Err(f) = read(cpu, rsp, &mut b[..2 * size as usize]) {
                return far(f);
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
                return far(Far::Fault(vector::GP, sel as u32 & !3));
            }
            let cs = match code_segment(cpu, sel, false) {
                Ok(s) => s,
                Err(f) => return far(f),
            };
            if !mmu::is_canonical(rip) {
                return far(Far::Fault(vector::GP, 0));
            }
            cpu.seg[seg::CS] = cs;
            cpu.gpr[RSP] = rsp.wrapping_add(2 * size + extra);
            Ok(rip)
        }
        M::Jmp | M::Call => {
            let Some(a) = addr else {
                // Direct far JMP/CALL (ptr16:32) does not exist in 64-bit mode.
                return far(Far::Fault(vector::UD, 0));
            };
            let off_size = match insn.memory_size() {
                iced_x86::MemorySize::SegPtr64 => 8,
                iced_x86::MemorySize::SegPtr32 => 4,
                _ => 2,
            };
            let mut b = [0u8; 10];
            if let Err(f) = read(cpu, a, &mut b[..off_size + 2]) {
                return far(f);
            }
            let mut o = [0u8; 8];
            o[..off_size].copy_from_slice(&b[..off_size]);
            let rip = u64::from_le_bytes(o);
            let sel = u16::from_le_bytes([b[off_size], b[off_size + 1]]);
            let cs = match code_segment(cpu, sel, false) {
                Ok(s) => s,
                Err(f) => return far(f),
            };
            if !mmu::is_canonical(rip) {
                return far(Far::Fault(vector::GP, 0));
            }
            if insn.mnemonic() == M::Call {
                // Push CS then the return RIP, operand-size wide.
                let size = off_size.max(2) as u64;
                let rsp = cpu.gpr[RSP];
                let new = rsp.wrapping_sub(2 * size);
                let mut frame = [0u8; 16];
                frame[..size as usize]
                    .copy_from_slice(&insn.next_ip().to_le_bytes()[..size as usize]);
                frame[size as usize..2 * size as usize].copy_from_slice(
                    &(cpu.seg[seg::CS].selector as u64).to_le_bytes()[..size as usize],
                );
                if let Err(f) = write(cpu, new, &frame[..2 * size as usize]) {
                    return far(f);
                }
                cpu.gpr[RSP] = new;
            }
            cpu.seg[seg::CS] = cs;
            Ok(rip)
        }
        _ => far(Far::Fault(vector::UD, 0)),
    }
}
