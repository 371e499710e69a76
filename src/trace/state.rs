//! Machine state in a trace: the CPU image, the RAM image, and the hashes checkpoints compare.

use super::bytes::{Put, Reader};
use krr_runtime::cpu::{DescriptorTable, Segment};
use krr_runtime::{rflags, ArchState, GuestMemory};

/// The hash checkpoints and the final state compare: general registers, RIP, RFLAGS, the
/// control registers, segment selectors and bases, and the XMM registers.
pub fn regs_hash(cpu: &ArchState) -> u64 {
    let flags = cpu.rflags_value();
    let mut v: Vec<u8> = Vec::with_capacity(512);
    for r in cpu.gpr {
        v.put_u64(r);
    }
    for x in [cpu.rip, flags, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer] {
        v.put_u64(x);
    }
    for s in cpu.seg {
        v.put_u16(s.selector);
        v.put_u64(s.base);
    }
    v.put_u64(cpu.kernel_gs_base);
    for x in cpu.xmm {
        v.put_u64(x[0]);
        v.put_u64(x[1]);
    }
    xxhash_rust::xxh3::xxh3_64(&v)
}

/// A hash of all guest RAM.
pub fn ram_hash(mem: &GuestMemory) -> u64 {
    match mem.slice(0, mem.size() as usize) {
        Ok(ram) => xxhash_rust::xxh3::xxh3_64(ram),
        Err(_) => 0,
    }
}

fn put_seg(v: &mut Vec<u8>, s: &Segment) {
    v.put_u16(s.selector);
    v.put_u16(s.attrs);
    v.put_u32(s.limit);
    v.put_u64(s.base);
}

fn get_seg(r: &mut Reader) -> Result<Segment, String> {
    Ok(Segment {
        selector: r.u16()?,
        attrs: r.u16()?,
        limit: r.u32()?,
        base: r.u64()?,
    })
}

fn put_table(v: &mut Vec<u8>, t: &DescriptorTable) {
    v.put_u64(t.base);
    v.put_u16(t.limit);
}

fn get_table(r: &mut Reader) -> Result<DescriptorTable, String> {
    Ok(DescriptorTable {
        base: r.u64()?,
        limit: r.u16()?,
    })
}

/// The architectural CPU state, field by field (the layout is in docs/TRACE-FORMAT.md).
pub fn encode_cpu(cpu: &ArchState) -> Vec<u8> {
    let flags = cpu.rflags_value();
    let mut v = Vec::with_capacity(1024);
    for r in cpu.gpr {
        v.put_u64(r);
    }
    v.put_u64(cpu.rip);
    v.put_u64(flags);
    v.put_u64(cpu.icount);
    v.put_u64(cpu.irq_shadow_at);
    for s in cpu.seg.iter().chain([&cpu.ldtr, &cpu.tr]) {
        put_seg(&mut v, s);
    }
    put_table(&mut v, &cpu.gdtr);
    put_table(&mut v, &cpu.idtr);
    for x in [
        cpu.cr0, cpu.cr2, cpu.cr3, cpu.cr4, cpu.cr8, cpu.efer, cpu.xcr0,
    ] {
        v.put_u64(x);
    }
    for x in cpu.dr {
        v.put_u64(x);
    }
    for x in [
        cpu.kernel_gs_base,
        cpu.star,
        cpu.lstar,
        cpu.cstar,
        cpu.sfmask,
        cpu.tsc_aux,
        cpu.pat,
        cpu.apic_base,
        cpu.misc_enable,
        cpu.spec_ctrl,
        cpu.sysenter_cs,
        cpu.sysenter_esp,
        cpu.sysenter_eip,
    ] {
        v.put_u64(x);
    }
    for x in cpu.mtrr {
        v.put_u64(x);
    }
    v.put_u32(cpu.mxcsr);
    for x in cpu.xmm {
        v.put_u64(x[0]);
        v.put_u64(x[1]);
    }
    let x = &cpu.x87;
    v.put_u16(x.fcw);
    v.put_u16(x.fsw);
    v.put_u8(x.ftw);
    v.put_u16(x.fop);
    v.put_u64(x.fip);
    v.put_u64(x.fdp);
    for st in x.st {
        v.extend_from_slice(&st);
    }
    v
}

/// Load a CPU image written by [`encode_cpu`] into `cpu` (the caller flushes the TLB:
/// `Core::flush_tlb`).
pub fn decode_cpu(cpu: &mut ArchState, data: &[u8]) -> Result<(), String> {
    let mut r = Reader::new(data);
    for g in cpu.gpr.iter_mut() {
        *g = r.u64()?;
    }
    cpu.rip = r.u64()?;
    let flags = r.u64()?;
    cpu.rflags = (flags & !rflags::ARITH) | rflags::FIXED1;
    // Concrete flags: `cc_op` 0 means `cc_res` holds the flag bits.
    cpu.cc_op = 0;
    cpu.cc_res = flags & rflags::ARITH;
    cpu.cc_a = 0;
    cpu.cc_b = 0;
    cpu.cc_aux = 0;
    cpu.icount = r.u64()?;
    cpu.irq_shadow_at = r.u64()?;
    for i in 0..6 {
        cpu.seg[i] = get_seg(&mut r)?;
    }
    cpu.ldtr = get_seg(&mut r)?;
    cpu.tr = get_seg(&mut r)?;
    cpu.gdtr = get_table(&mut r)?;
    cpu.idtr = get_table(&mut r)?;
    for x in [
        &mut cpu.cr0,
        &mut cpu.cr2,
        &mut cpu.cr3,
        &mut cpu.cr4,
        &mut cpu.cr8,
        &mut cpu.efer,
        &mut cpu.xcr0,
    ] {
        *x = r.u64()?;
    }
    for x in cpu.dr.iter_mut() {
        *x = r.u64()?;
    }
    for x in [
        &mut cpu.kernel_gs_base,
        &mut cpu.star,
        &mut cpu.lstar,
        &mut cpu.cstar,
        &mut cpu.sfmask,
        &mut cpu.tsc_aux,
        &mut cpu.pat,
        &mut cpu.apic_base,
        &mut cpu.misc_enable,
        &mut cpu.spec_ctrl,
        &mut cpu.sysenter_cs,
        &mut cpu.sysenter_esp,
        &mut cpu.sysenter_eip,
    ] {
        *x = r.u64()?;
    }
    for x in cpu.mtrr.iter_mut() {
        *x = r.u64()?;
    }
    cpu.mxcsr = r.u32()?;
    for x in cpu.xmm.iter_mut() {
        x[0] = r.u64()?;
        x[1] = r.u64()?;
    }
    let x = &mut cpu.x87;
    x.fcw = r.u16()?;
    x.fsw = r.u16()?;
    x.ftw = r.u8()?;
    x.fop = r.u16()?;
    x.fip = r.u64()?;
    x.fdp = r.u64()?;
    for st in x.st.iter_mut() {
        st.copy_from_slice(r.bytes(16)?);
    }
    r.finish()?;
    Ok(())
}

const PAGE: usize = 4096;

/// The RAM image: a bitmap of the non-zero 4 KiB pages, then those pages, zstd-compressed.
pub fn encode_ram(mem: &GuestMemory) -> Result<Vec<u8>, String> {
    let ram = mem
        .slice(0, mem.size() as usize)
        .map_err(|e| e.to_string())?;
    let pages = ram.len() / PAGE;
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    for (i, p) in ram.chunks_exact(PAGE).enumerate() {
        if p.iter().any(|&b| b != 0) {
            bitmap[i / 8] |= 1 << (i % 8);
        }
    }
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).map_err(|e| e.to_string())?;
    use std::io::Write;
    enc.write_all(&bitmap).map_err(|e| e.to_string())?;
    for (i, p) in ram.chunks_exact(PAGE).enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            enc.write_all(p).map_err(|e| e.to_string())?;
        }
    }
    enc.finish().map_err(|e| e.to_string())
}

/// Fill `mem` (all zero, as new) from an image written by [`encode_ram`].
pub fn decode_ram(mem: &mut GuestMemory, data: &[u8]) -> Result<(), String> {
    use std::io::Read;
    let pages = mem.size() as usize / PAGE;
    let mut dec = zstd::stream::Decoder::new(data).map_err(|e| e.to_string())?;
    let mut bitmap = vec![0u8; pages.div_ceil(8)];
    dec.read_exact(&mut bitmap)
        .map_err(|e| format!("RAM image page bitmap: {e}"))?;
    let mut page = vec![0u8; PAGE];
    for i in 0..pages {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            dec.read_exact(&mut page)
                .map_err(|e| format!("RAM image page {i}: {e}"))?;
            mem.write((i * PAGE) as u64, &page)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut rest = [0u8; 1];
    if dec.read(&mut rest).map_err(|e| e.to_string())? != 0 {
        return Err("RAM image has data past its last page".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_image_round_trips_and_keeps_the_hash() {
        let mut cpu = ArchState::flat64();
        for (i, g) in cpu.gpr.iter_mut().enumerate() {
            *g = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
        }
        cpu.rip = 0xffff_ffff_8100_1234;
        cpu.cc_op = 0;
        cpu.cc_res = rflags::CF | rflags::ZF;
        cpu.cr3 = 0x5000;
        cpu.seg[krr_runtime::cpu::seg::GS].base = 0xdead_0000;
        cpu.xmm[3] = [1, 2];
        cpu.x87.st[2][9] = 0x40;
        cpu.icount = 12345;
        let h = regs_hash(&cpu);
        let image = encode_cpu(&cpu);
        let mut cpu2 = ArchState::flat64();
        decode_cpu(&mut cpu2, &image).unwrap();
        assert_eq!(regs_hash(&cpu2), h);
        assert_eq!(cpu2.icount, 12345);
        assert_eq!(cpu2.x87.st[2][9], 0x40);
        assert_eq!(encode_cpu(&cpu2), image);
        assert!(decode_cpu(&mut cpu2, &image[..image.len() - 1]).is_err());
        cpu2.gpr[5] ^= 1;
        assert_ne!(regs_hash(&cpu2), h);
    }

    #[test]
    fn ram_image_round_trips() {
        let mut mem = GuestMemory::new(1 << 20).unwrap();
        mem.write(0x3000, b"kernel").unwrap();
        mem.write(0xf_fff8, &[0xff; 8]).unwrap();
        let image = encode_ram(&mem).unwrap();
        let mut mem2 = GuestMemory::new(1 << 20).unwrap();
        decode_ram(&mut mem2, &image).unwrap();
        assert_eq!(ram_hash(&mem2), ram_hash(&mem));
        assert!(decode_ram(&mut mem2, &image[..image.len() / 2]).is_err());
    }
}
