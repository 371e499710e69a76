//! Port IO: IN/OUT and INS/OUTS (with REP), with the IOPL and TSS permission-bitmap checks.

use super::inputs::no_bus;
use super::*;

/// Outside IOPL, may the program access the `size` ports from `port`? The I/O permission
/// bitmap of the 64-bit TSS decides: its offset is the word at TSS offset 0x66, and every
/// port's bit must be clear, reading two bytes of the map, all within the TSS limit (SDM Vol. 1
/// 19.5.2 "I/O Permission Bit Map"). These are supervisor reads, whatever the CPL.
pub(super) fn io_permitted(cpu: &mut CpuState, port: u16, size: u8) -> Result<(), SysResult> {
    let (base, limit) = (cpu.tr.base, cpu.tr.limit as u64);
    if limit < 0x67 {
        return Err(gp0());
    }
    let mut b = [0u8; 2];
    desc::system_read(cpu, base.wrapping_add(0x66), &mut b).map_err(SysResult::from)?;
    let byte = u16::from_le_bytes(b) as u64 + port as u64 / 8;
    if byte + 1 > limit {
        return Err(gp0());
    }
    desc::system_read(cpu, base.wrapping_add(byte), &mut b).map_err(SysResult::from)?;
    let bits = u16::from_le_bytes(b) >> (port & 7);
    if bits & ((1u16 << size) - 1) != 0 {
        return Err(gp0());
    }
    Ok(())
}

pub(super) fn port_io(cpu: &mut CpuState, insn: &Instruction) -> SysResult {
    let m = insn.mnemonic();
    let size: u8 = match m {
        M::Insb | M::Outsb => 1,
        M::Insw | M::Outsw => 2,
        M::Insd | M::Outsd => 4,
        M::In => insn.op0_register().size() as u8,
        _ => insn.op1_register().size() as u8,
    };
    let port = |cpu: &CpuState| -> u16 {
        let k = if m == M::In {
            insn.op1_kind()
        } else {
            insn.op0_kind()
        };
        if matches!(k, OpKind::Immediate8) {
            insn.immediate8() as u16
        } else {
            cpu.gpr[RDX] as u16
        }
    };
    let cpl = cpu.cpl();
    let iopl = ((cpu.rflags >> 12) & 3) as u8;
    if cpl > iopl {
        // INS/OUTS use DX, which the REP loop does not change: one check covers every
        // iteration.
        let p = port(cpu);
        trym!(io_permitted(cpu, p, size));
    }
    if !cpu.exec.has_bus() {
        return no_bus(insn);
    }
    match m {
        M::In => {
            let p = port(cpu);
            let v = bus::with_bus(cpu, |bus, cpu| bus.port_in(cpu, p, size)).expect("bus checked");
            set_reg(cpu, insn.op0_register(), v as u64);
            SysResult::Done(None)
        }
        M::Out => {
            let p = port(cpu);
            let v = reg_value(cpu, insn.op1_register()) as u32;
            bus::with_bus(cpu, |bus, cpu| bus.port_out(cpu, p, size, v));
            SysResult::Done(None)
        }
        _ => string_io(cpu, insn, size),
    }
}

/// INS/OUTS, with REP: each iteration is committed as it completes.
pub(super) fn string_io(cpu: &mut CpuState, insn: &Instruction, size: u8) -> SysResult {
    let rep = insn.has_rep_prefix() || insn.has_repne_prefix();
    let input = matches!(insn.mnemonic(), M::Insb | M::Insw | M::Insd);
    let a32 = insn.memory_base().size() == 4 || matches!(insn.op0_kind(), OpKind::MemoryESEDI);
    let a16 = insn.memory_base().size() == 2 || matches!(insn.op0_kind(), OpKind::MemoryESDI);
    let mask = if a32 {
        0xffff_ffff
    } else if a16 {
        0xffff
    } else {
        u64::MAX
    };
    // Compatibility mode adds every segment's base (INS writes through ES) and wraps at 4 GiB.
    let compat = in_compat_mode(cpu);
    let linear = |cpu: &CpuState, s: usize, off: u64| {
        if compat {
            off.wrapping_add(cpu.seg[s].base) & 0xffff_ffff
        } else {
            off
        }
    };
    let step = if cpu.rflags & rflags::DF != 0 {
        (size as u64).wrapping_neg()
    } else {
        size as u64
    };
    let src_seg = segments::seg_index(insn.memory_segment());
    let seg_base = match insn.memory_segment() {
        Register::FS => cpu.seg[seg::FS].base,
        Register::GS => cpu.seg[seg::GS].base,
        _ => 0,
    };
    loop {
        if rep && cpu.gpr[RCX] & mask == 0 {
            break;
        }
        let port = cpu.gpr[RDX] as u16;
        if input {
            let dst = cpu.gpr[RDI] & mask;
            let at = linear(cpu, seg::ES, dst);
            // Check that the destination is writable before reading the port: a port read has
            // side effects, and a fault here is a write fault (#PF with W=1).
            trym!(probe_write(cpu, at, size as u64));
            let v =
                bus::with_bus(cpu, |bus, cpu| bus.port_in(cpu, port, size)).expect("bus checked");
            trym!(write_mem(cpu, at, &v.to_le_bytes()[..size as usize]));
            cpu.gpr[RDI] = (cpu.gpr[RDI] & !mask) | (dst.wrapping_add(step) & mask);
        } else {
            let src = cpu.gpr[RSI] & mask;
            let mut b = [0u8; 4];
            let at = if compat {
                linear(cpu, src_seg, src)
            } else {
                seg_base.wrapping_add(src)
            };
            trym!(read_mem(cpu, at, &mut b[..size as usize]));
            let v = u32::from_le_bytes(b);
            bus::with_bus(cpu, |bus, cpu| bus.port_out(cpu, port, size, v));
            cpu.gpr[RSI] = (cpu.gpr[RSI] & !mask) | (src.wrapping_add(step) & mask);
        }
        if !rep {
            break;
        }
        cpu.gpr[RCX] = (cpu.gpr[RCX] & !mask) | (cpu.gpr[RCX].wrapping_sub(1) & mask);
    }
    SysResult::Done(None)
}
