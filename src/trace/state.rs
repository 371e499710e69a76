//! Machine state in a trace: the CPU image, the RAM image, and the hashes checkpoints compare.

use super::bytes::{Put, Reader};
use krr_runtime::cpu::{DescriptorTable, Segment};
use krr_runtime::{rflags, ArchState, GuestMemory};

/// The hash checkpoints and the final state compare: xxh3 of the CPU image [`encode_cpu`]
/// writes, i.e. every architectural field a snapshot restores (GPRs, RIP, RFLAGS, instruction
/// count, interrupt and MOV SS shadows, pending #DB, all segment registers with their hidden
/// parts, GDTR/IDTR/LDTR/TR, CR0/2/3/4/8, EFER, XCR0, DR0-7, the MSRs, MTRRs, MXCSR, XMM, x87, the YMM upper halves).
/// The test `state_hash_covers_every_field` fails to compile when `ArchState` gains a field
/// it does not perturb.
pub fn regs_hash(cpu: &ArchState) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&encode_cpu(cpu))
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
    v.put_u64(cpu.db_inhibit_at);
    v.put_u64(cpu.pending_db);
    v.put_u64(cpu.nmi_blocked);
    for x in cpu.ymm_hi {
        v.put_u64(x[0]);
        v.put_u64(x[1]);
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
    cpu.db_inhibit_at = r.u64()?;
    cpu.pending_db = r.u64()?;
    cpu.nmi_blocked = match r.u64()? {
        b @ (0 | 1) => b,
        b => return Err(format!("NMI blocking {b:#x} (0 or 1)")),
    };
    // The YMM upper halves came after NMI blocking; images written before them end here
    // (their upper halves are zero).
    cpu.ymm_hi = [[0; 2]; 16];
    if r.remaining() > 0 {
        for x in cpu.ymm_hi.iter_mut() {
            x[0] = r.u64()?;
            x[1] = r.u64()?;
        }
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

/// The pages `pages` (indices, increasing) in the RAM image's encoding (a delta snapshot's).
pub fn encode_ram_pages(mem: &GuestMemory, pages: &[usize]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let n = mem.size() as usize / PAGE;
    let mut bitmap = vec![0u8; n.div_ceil(8)];
    for &i in pages {
        bitmap[i / 8] |= 1 << (i % 8);
    }
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).map_err(|e| e.to_string())?;
    enc.write_all(&bitmap).map_err(|e| e.to_string())?;
    for &i in pages {
        let p = mem
            .slice((i * PAGE) as u64, PAGE)
            .map_err(|e| e.to_string())?;
        enc.write_all(p).map_err(|e| e.to_string())?;
    }
    enc.finish().map_err(|e| e.to_string())
}

/// Fill `mem` (all zero, as new) from an image written by [`encode_ram`]; a delta
/// snapshot's image ([`encode_ram_pages`]) overwrites its pages and leaves the others.
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

    /// Every `ArchState` field, perturbed in turn, changes the state hash. The destructuring has
    /// no `..`: a new field breaks compilation until it is listed here (and, for the hash to
    /// change, written by `encode_cpu`). The lazy-flags fields are one field, RFLAGS, in the
    /// image; `_pad0` is padding.
    #[test]
    fn state_hash_covers_every_field() {
        let base = {
            let mut c = ArchState::flat64();
            c.cc_op = 0;
            c.cc_res = 0;
            c
        };
        let h0 = regs_hash(&base);
        type Perturb = fn(&mut ArchState);
        let ArchState {
            gpr: _,
            rip: _,
            rflags: _,
            cc_op: _,
            cc_res: _,
            cc_a: _,
            cc_b: _,
            cc_aux: _,
            icount: _,
            seg: _,
            ldtr: _,
            tr: _,
            gdtr: _,
            idtr: _,
            cr0: _,
            cr2: _,
            cr3: _,
            cr4: _,
            cr8: _,
            efer: _,
            xcr0: _,
            dr: _,
            kernel_gs_base: _,
            star: _,
            lstar: _,
            cstar: _,
            sfmask: _,
            tsc_aux: _,
            pat: _,
            apic_base: _,
            misc_enable: _,
            spec_ctrl: _,
            sysenter_cs: _,
            sysenter_esp: _,
            sysenter_eip: _,
            mtrr: _,
            mxcsr: _,
            _pad0: _,
            xmm: _,
            ymm_hi: _,
            x87: _,
            irq_shadow_at: _,
            db_inhibit_at: _,
            pending_db: _,
            nmi_blocked: _,
        } = base.clone();
        let mut cases: Vec<(&str, Perturb)> = vec![
            ("rip", |c| c.rip ^= 1),
            ("rflags", |c| c.rflags ^= rflags::DF),
            ("cc_res (arith flags)", |c| c.cc_res ^= rflags::CF),
            ("icount", |c| c.icount ^= 1),
            ("cr0", |c| c.cr0 ^= 1 << 16),
            ("cr2", |c| c.cr2 ^= 1),
            ("cr3", |c| c.cr3 ^= 0x1000),
            ("cr4", |c| c.cr4 ^= 1 << 9),
            ("cr8", |c| c.cr8 ^= 1),
            ("efer", |c| c.efer ^= 1),
            ("xcr0", |c| c.xcr0 ^= 2),
            ("kernel_gs_base", |c| c.kernel_gs_base ^= 1),
            ("star", |c| c.star ^= 1),
            ("lstar", |c| c.lstar ^= 1),
            ("cstar", |c| c.cstar ^= 1),
            ("sfmask", |c| c.sfmask ^= 1),
            ("tsc_aux", |c| c.tsc_aux ^= 1),
            ("pat", |c| c.pat ^= 1),
            ("apic_base", |c| c.apic_base ^= 1 << 12),
            ("misc_enable", |c| c.misc_enable ^= 1),
            ("spec_ctrl", |c| c.spec_ctrl ^= 1),
            ("sysenter_cs", |c| c.sysenter_cs ^= 1),
            ("sysenter_esp", |c| c.sysenter_esp ^= 1),
            ("sysenter_eip", |c| c.sysenter_eip ^= 1),
            ("mxcsr", |c| c.mxcsr ^= 1),
            ("irq_shadow_at", |c| c.irq_shadow_at ^= 1),
            ("db_inhibit_at", |c| c.db_inhibit_at ^= 1),
            ("pending_db", |c| c.pending_db ^= 1),
            ("nmi_blocked", |c| c.nmi_blocked ^= 1),
            ("ldtr.selector", |c| c.ldtr.selector ^= 8),
            ("ldtr.attrs", |c| c.ldtr.attrs ^= 1),
            ("ldtr.limit", |c| c.ldtr.limit ^= 1),
            ("ldtr.base", |c| c.ldtr.base ^= 1),
            ("tr.selector", |c| c.tr.selector ^= 8),
            ("tr.attrs", |c| c.tr.attrs ^= 1),
            ("tr.limit", |c| c.tr.limit ^= 1),
            ("tr.base", |c| c.tr.base ^= 1),
            ("gdtr.base", |c| c.gdtr.base ^= 1),
            ("gdtr.limit", |c| c.gdtr.limit ^= 1),
            ("idtr.base", |c| c.idtr.base ^= 1),
            ("idtr.limit", |c| c.idtr.limit ^= 1),
            ("x87.fcw", |c| c.x87.fcw ^= 1),
            ("x87.fsw", |c| c.x87.fsw ^= 1),
            ("x87.ftw", |c| c.x87.ftw ^= 1),
            ("x87.fop", |c| c.x87.fop ^= 1),
            ("x87.fip", |c| c.x87.fip ^= 1),
            ("x87.fdp", |c| c.x87.fdp ^= 1),
        ];
        // Array fields: every element.
        type Boxed = Box<dyn Fn(&mut ArchState)>;
        let mut arrays: Vec<(String, Boxed)> = Vec::new();
        for i in 0..16 {
            arrays.push((format!("gpr[{i}]"), Box::new(move |c| c.gpr[i] ^= 1)));
            for h in 0..2 {
                arrays.push((
                    format!("xmm[{i}][{h}]"),
                    Box::new(move |c| c.xmm[i][h] ^= 1),
                ));
                arrays.push((
                    format!("ymm_hi[{i}][{h}]"),
                    Box::new(move |c| c.ymm_hi[i][h] ^= 1),
                ));
            }
        }
        for i in 0..6 {
            arrays.push((
                format!("seg[{i}].selector"),
                Box::new(move |c| c.seg[i].selector ^= 8),
            ));
            arrays.push((
                format!("seg[{i}].attrs"),
                Box::new(move |c| c.seg[i].attrs ^= 1),
            ));
            arrays.push((
                format!("seg[{i}].limit"),
                Box::new(move |c| c.seg[i].limit ^= 1),
            ));
            arrays.push((
                format!("seg[{i}].base"),
                Box::new(move |c| c.seg[i].base ^= 1),
            ));
        }
        for i in 0..8 {
            arrays.push((format!("dr[{i}]"), Box::new(move |c| c.dr[i] ^= 1)));
            for b in 0..10 {
                arrays.push((
                    format!("x87.st[{i}][{b}]"),
                    Box::new(move |c| c.x87.st[i][b] ^= 1),
                ));
            }
        }
        for i in 0..28 {
            arrays.push((format!("mtrr[{i}]"), Box::new(move |c| c.mtrr[i] ^= 1)));
        }
        let mut seen = std::collections::HashSet::new();
        seen.insert(h0);
        for (name, f) in cases.drain(..) {
            let mut c = base.clone();
            f(&mut c);
            assert!(
                seen.insert(regs_hash(&c)),
                "perturbing {name} leaves the hash"
            );
        }
        for (name, f) in arrays {
            let mut c = base.clone();
            f(&mut c);
            assert!(
                seen.insert(regs_hash(&c)),
                "perturbing {name} leaves the hash"
            );
        }
        // The image holds the state a snapshot restores: decoding it gives the same image.
        let mut c = base.clone();
        c.pending_db = 0x4000;
        c.db_inhibit_at = 77;
        let mut d = ArchState::flat64();
        decode_cpu(&mut d, &encode_cpu(&c)).unwrap();
        assert_eq!(encode_cpu(&d), encode_cpu(&c));
    }

    #[test]
    fn ram_image_round_trips() {
        let mut mem = GuestMemory::new(1 << 20).unwrap();
        mem.write(0x3000, b"kernel").unwrap();
        mem.write(0xf_fff8, &[0xff; 8]).unwrap();
        let image = encode_ram(&mem).unwrap();
        let mut mem2 = GuestMemory::new(1 << 20).unwrap();
        decode_ram(&mut mem2, &image).unwrap();
        assert_eq!(mem2.full_digest(), mem.full_digest());
        assert!(decode_ram(&mut mem2, &image[..image.len() / 2]).is_err());
    }
}
