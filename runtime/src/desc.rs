//! Segment descriptors: reading them from the GDT/LDT and turning them into the hidden part of
//! a segment register.

use crate::arch::vector;
use crate::cpu::{CpuState, ExceptionRecord, Segment};
use crate::mmu::{self, MemFault};

/// Why a descriptor-table access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescFault {
    /// An exception to raise (already in `cpu.exception` for memory faults, or described here).
    Exception(ExceptionRecord),
    /// The table lies in memory that is not RAM.
    Unbacked(u64),
}

impl DescFault {
    pub fn gp(code: u32) -> DescFault {
        DescFault::Exception(ExceptionRecord::fault(vector::GP, Some(code)))
    }
    pub fn np(code: u32) -> DescFault {
        DescFault::Exception(ExceptionRecord::fault(vector::NP, Some(code)))
    }
    pub fn ss(code: u32) -> DescFault {
        DescFault::Exception(ExceptionRecord::fault(vector::SS, Some(code)))
    }
    pub fn ts(code: u32) -> DescFault {
        DescFault::Exception(ExceptionRecord::fault(vector::TS, Some(code)))
    }
}

/// Read `buf.len()` bytes of a system structure (supervisor access) at a linear address.
pub fn system_read(cpu: &mut CpuState, linear: u64, buf: &mut [u8]) -> Result<(), DescFault> {
    let was = std::mem::replace(&mut cpu.exec.watch.implicit, true);
    let r = mmu::load_bytes(cpu, linear, buf, 0);
    cpu.exec.watch.implicit = was;
    r.map_err(|f| mem_fault(cpu, f))
}

pub fn system_write(cpu: &mut CpuState, linear: u64, data: &[u8]) -> Result<(), DescFault> {
    let was = std::mem::replace(&mut cpu.exec.watch.implicit, true);
    let r = mmu::store_bytes(cpu, linear, data, 0);
    cpu.exec.watch.implicit = was;
    r.map_err(|f| mem_fault(cpu, f))
}

pub fn mem_fault(cpu: &CpuState, f: MemFault) -> DescFault {
    match f {
        MemFault::Exception => DescFault::Exception(cpu.exec.exception),
        MemFault::Unbacked { phys } => DescFault::Unbacked(phys),
    }
}

/// A raw 8-byte descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor(pub u64);

impl Descriptor {
    pub fn present(self) -> bool {
        self.0 & (1 << 47) != 0
    }
    pub fn dpl(self) -> u8 {
        ((self.0 >> 45) & 3) as u8
    }
    /// S bit: code/data (true) or system (false).
    pub fn is_code_or_data(self) -> bool {
        self.0 & (1 << 44) != 0
    }
    pub fn typ(self) -> u8 {
        ((self.0 >> 40) & 0xf) as u8
    }
    pub fn is_code(self) -> bool {
        self.is_code_or_data() && self.typ() & 8 != 0
    }
    pub fn long(self) -> bool {
        self.0 & (1 << 53) != 0
    }
    pub fn base(self) -> u64 {
        ((self.0 >> 16) & 0xff_ffff) | (((self.0 >> 56) & 0xff) << 24)
    }
    pub fn limit(self) -> u32 {
        let raw = ((self.0 & 0xffff) | ((self.0 >> 32) & 0xf_0000)) as u32;
        if self.0 & (1 << 55) != 0 {
            (raw << 12) | 0xfff
        } else {
            raw
        }
    }
    /// Attribute bits in the packed `Segment::attrs` form.
    pub fn attrs(self) -> u16 {
        (((self.0 >> 40) & 0xff) | (((self.0 >> 52) & 0xf) << 12)) as u16
    }
    pub fn to_segment(self, selector: u16) -> Segment {
        Segment {
            selector,
            attrs: self.attrs(),
            limit: self.limit(),
            base: self.base(),
        }
    }
}

/// Read the descriptor `selector` names (GDT or LDT by its TI bit). `None`: a null selector.
pub fn read_descriptor(cpu: &mut CpuState, selector: u16) -> Result<Option<Descriptor>, DescFault> {
    let index = (selector & !7) as u64;
    let (base, limit) = if selector & 4 != 0 {
        (cpu.ldtr.base, cpu.ldtr.limit as u64)
    } else {
        if index == 0 {
            return Ok(None);
        }
        (cpu.gdtr.base, cpu.gdtr.limit as u64)
    };
    if index + 7 > limit {
        return Err(DescFault::gp(selector as u32 & !3));
    }
    let mut b = [0u8; 8];
    system_read(cpu, base.wrapping_add(index), &mut b)?;
    Ok(Some(Descriptor(u64::from_le_bytes(b))))
}

/// Read a 16-byte system descriptor (TSS, LDT in long mode): (low descriptor, base bits 32-63).
pub fn read_system_descriptor(
    cpu: &mut CpuState,
    selector: u16,
) -> Result<(Descriptor, u64), DescFault> {
    let index = (selector & !7) as u64;
    if selector & 4 != 0 || index == 0 || index + 15 > cpu.gdtr.limit as u64 {
        return Err(DescFault::gp(selector as u32 & !3));
    }
    let mut b = [0u8; 16];
    system_read(cpu, cpu.gdtr.base.wrapping_add(index), &mut b)?;
    let lo = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(b[8..].try_into().expect("8 bytes"));
    Ok((Descriptor(lo), hi & 0xffff_ffff))
}

/// Set the busy bit of the TSS descriptor `selector` (LTR).
pub fn mark_tss_busy(cpu: &mut CpuState, selector: u16) -> Result<(), DescFault> {
    let addr = cpu.gdtr.base.wrapping_add((selector & !7) as u64) + 5;
    let mut b = [0u8; 1];
    system_read(cpu, addr, &mut b)?;
    b[0] |= 2;
    system_write(cpu, addr, &b)
}
