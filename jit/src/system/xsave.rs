//! Extended state: XGETBV/XSETBV, FXSAVE/FXRSTOR, XSAVE/XSAVEOPT/XRSTOR, and the x87 control
//! instructions (FNINIT, FNSTCW, FLDCW, FNSTSW, FNCLEX, WAIT).

use super::*;
use krr_runtime::arch::xcr0;
use krr_runtime::cpuid::{MXCSR_MASK, XSAVE_LEGACY_AND_HEADER, XSAVE_YMM_SIZE};
use krr_runtime::Profile;

/// What KRR's replay leaves at offset 0 of an FXSAVE/XSAVE area when it saves MXCSR: it
/// writes MXCSR there and then this value over it (`fpu_helper.c` `do_xsave_mxcsr`).
const KRR_OFFSET0: u32 = 0x0000_ffff;

/// XCR0's BNDCSR component (MPX), which KRR's replay drops from XSAVE's RFBM (krr's CPU model
/// never enables it).
const XCR0_BNDCSR: u64 = 1 << 4;

/// The xsave instructions.
pub(super) fn execute(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    let cpl = cpu.cpl();
    let priv0 = cpl == 0;
    let mem_addr = || addr.expect("memory operand present");
    match insn.mnemonic() {
        M::Xgetbv => {
            if cpu.cr4 & cr4::OSXSAVE == 0 {
                return ud();
            }
            let v = match cpu.gpr[RCX] as u32 {
                0 => cpu.xcr0,
                _ => return gp0(),
            };
            cpu.gpr[RAX] = v & 0xffff_ffff;
            cpu.gpr[RDX] = v >> 32;
            SysResult::Done(None)
        }
        M::Xsetbv => {
            if cpu.cr4 & cr4::OSXSAVE == 0 {
                return ud();
            }
            let v = (cpu.gpr[RAX] & 0xffff_ffff) | (cpu.gpr[RDX] << 32);
            if !priv0
                || cpu.gpr[RCX] as u32 != 0
                || v & xcr0::X87 == 0
                || v & !xcr0_supported(cpu) != 0
                || (v & xcr0::AVX != 0 && v & xcr0::SSE == 0)
            {
                return gp0();
            }
            cpu.xcr0 = v;
            SysResult::Done(None)
        }
        M::Fxsave | M::Fxsave64 | M::Fxrstor | M::Fxrstor64 => fxsave(cpu, insn, mem_addr()),
        M::Xsave
        | M::Xsave64
        | M::Xsaveopt
        | M::Xsaveopt64
        | M::Xrstor
        | M::Xrstor64
        | M::Xsavec
        | M::Xsavec64
        | M::Xsaves
        | M::Xsaves64
        | M::Xrstors
        | M::Xrstors64 => xsave(cpu, insn, mem_addr()),
        M::Fninit | M::Fnstcw | M::Fnstsw | M::Fnclex | M::Wait => x87_control(cpu, insn, addr),
        _ => unreachable!("routed here by system::execute"),
    }
}

/// XCR0 components the CPU model exposes (CPUID leaf 0xD, within what the engine implements).
pub(super) fn xcr0_supported(cpu: &CpuState) -> u64 {
    let [eax, _, _, edx] = cpu.cpuid.query(0xd, 0, cpu.cr4, cpu.xcr0);
    (eax as u64 | (edx as u64) << 32) & krr_runtime::cpuid::XCR0_SUPPORTED
}

pub(super) fn fpu_check(cpu: &CpuState, wait: bool) -> Option<SysResult> {
    if wait {
        // FWAIT faults only when both MP and TS are set.
        if cpu.cr0 & cr0::MP != 0 && cpu.cr0 & cr0::TS != 0 {
            return Some(SysResult::Fault(fault(vector::NM, None)));
        }
        return None;
    }
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Some(SysResult::Fault(fault(vector::NM, None)));
    }
    None
}

pub(super) fn x87_control(cpu: &mut CpuState, insn: &Instruction, addr: Option<u64>) -> SysResult {
    if let Some(f) = fpu_check(cpu, insn.mnemonic() == M::Wait) {
        return f;
    }
    if insn.mnemonic() == M::Wait && cpu.x87.fsw & 0x80 != 0 {
        // A pending unmasked x87 exception (FSW.ES) is taken here (#MF).
        return SysResult::Fault(fault(vector::MF, None));
    }
    match insn.mnemonic() {
        M::Fninit => {
            // The physical registers keep their contents; the state holds them in stack
            // order, which TOP = 0 rotates (the differential harness found them unrotated).
            let top = ((cpu.x87.fsw >> 11) & 7) as usize;
            let mut st = [[0u8; 16]; 8];
            for (i, slot) in st.iter_mut().enumerate() {
                *slot = cpu.x87.st[(i + 8 - top) & 7];
            }
            cpu.x87 = krr_runtime::X87State {
                st,
                ..Default::default()
            };
        }
        M::Fnstcw => trym!(write_mem(
            cpu,
            addr.expect("m16"),
            &cpu.x87.fcw.to_le_bytes()
        )),
        M::Fnstsw => {
            let v = cpu.x87.fsw;
            if insn.op0_kind() == OpKind::Memory {
                trym!(write_mem(cpu, addr.expect("m16"), &v.to_le_bytes()));
            } else {
                cpu.gpr[RAX] = (cpu.gpr[RAX] & !0xffff) | v as u64;
            }
        }
        M::Fnclex => cpu.x87.fsw &= 0x7f00,
        _ => {}
    }
    SysResult::Done(None)
}

/// The 512-byte FXSAVE image of the x87/SSE state.
pub(super) fn fxsave_image(cpu: &CpuState) -> [u8; 512] {
    let mut b = [0u8; 512];
    let x = &cpu.x87;
    b[0..2].copy_from_slice(&x.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&x.fsw.to_le_bytes());
    b[4] = x.ftw;
    b[6..8].copy_from_slice(&x.fop.to_le_bytes());
    b[8..16].copy_from_slice(&x.fip.to_le_bytes());
    b[16..24].copy_from_slice(&x.fdp.to_le_bytes());
    b[24..28].copy_from_slice(&cpu.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for (i, st) in x.st.iter().enumerate() {
        b[32 + 16 * i..32 + 16 * i + 10].copy_from_slice(&st[..10]);
    }
    for (i, r) in cpu.xmm.iter().enumerate() {
        b[160 + 16 * i..168 + 16 * i].copy_from_slice(&r[0].to_le_bytes());
        b[168 + 16 * i..176 + 16 * i].copy_from_slice(&r[1].to_le_bytes());
    }
    b
}

pub(super) fn load_x87(cpu: &mut CpuState, b: &[u8]) {
    let x = &mut cpu.x87;
    x.fcw = u16::from_le_bytes([b[0], b[1]]);
    x.fsw = u16::from_le_bytes([b[2], b[3]]);
    x.ftw = b[4];
    x.fop = u16::from_le_bytes([b[6], b[7]]) & 0x7ff;
    x.fip = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    x.fdp = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    for i in 0..8 {
        x.st[i] = [0; 16];
        x.st[i][..10].copy_from_slice(&b[32 + 16 * i..42 + 16 * i]);
    }
}

pub(super) fn load_xmm(cpu: &mut CpuState, b: &[u8]) {
    for i in 0..16 {
        cpu.xmm[i][0] =
            u64::from_le_bytes(b[160 + 16 * i..168 + 16 * i].try_into().expect("8 bytes"));
        cpu.xmm[i][1] =
            u64::from_le_bytes(b[168 + 16 * i..176 + 16 * i].try_into().expect("8 bytes"));
    }
}

pub(super) fn fxsave(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> SysResult {
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return SysResult::Fault(fault(vector::NM, None));
    }
    if addr & 15 != 0 {
        return gp0();
    }
    if matches!(insn.mnemonic(), M::Fxsave | M::Fxsave64) {
        // Bytes 416-511 (reserved, and available to software) are not written; the XMM
        // registers only with CR4.OSFXSR (SDM FXSAVE "Description").
        let mut img = fxsave_image(cpu);
        let len = if cpu.cr4 & cr4::OSFXSR != 0 { 416 } else { 160 };
        if cpu.exec.profile == Profile::KrrCompat {
            // KRR's replay (`do_fxsave` -> `do_xsave_mxcsr`): the MXCSR and MXCSR_MASK slots
            // are not written (they keep what memory held), and with CR4.OSFXSR MXCSR and
            // then 0x0000FFFF go to offset 0, over FCW/FSW.
            trym!(read_mem(cpu, addr + 24, &mut img[24..32]));
            if cpu.cr4 & cr4::OSFXSR != 0 {
                img[0..4].copy_from_slice(&KRR_OFFSET0.to_le_bytes());
            }
        }
        trym!(write_mem(cpu, addr, &img[..len]));
    } else {
        let mut img = [0u8; 512];
        trym!(read_mem(cpu, addr, &mut img));
        let mxcsr = u32::from_le_bytes(img[24..28].try_into().expect("4 bytes"));
        if mxcsr & !MXCSR_MASK != 0 {
            return gp0();
        }
        load_x87(cpu, &img);
        cpu.mxcsr = mxcsr;
        load_xmm(cpu, &img);
    }
    SysResult::Done(None)
}

/// Where component 2 (the YMM upper halves) lies in either format: right after the header
/// (the first extended component of the compacted format; krr offers no other).
const YMM_OFFSET: usize = XSAVE_LEGACY_AND_HEADER as usize;
const AREA_MAX: usize = YMM_OFFSET + XSAVE_YMM_SIZE as usize;
/// XCOMP_BV bit 63: the area is in the compacted format.
const COMPACTED: u64 = 1 << 63;

fn ymm_image(cpu: &CpuState) -> [u8; XSAVE_YMM_SIZE as usize] {
    let mut b = [0u8; XSAVE_YMM_SIZE as usize];
    for (i, r) in cpu.ymm_hi.iter().enumerate() {
        b[16 * i..16 * i + 8].copy_from_slice(&r[0].to_le_bytes());
        b[16 * i + 8..16 * i + 16].copy_from_slice(&r[1].to_le_bytes());
    }
    b
}

fn load_ymm_hi(cpu: &mut CpuState, b: &[u8]) {
    for i in 0..16 {
        let q = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        cpu.ymm_hi[i] = [q(16 * i), q(16 * i + 8)];
    }
}

/// XSAVE, XSAVEOPT, XSAVEC, XSAVES and XRSTOR, XRSTORS: the x87 and SSE components in the
/// legacy region, the YMM upper halves (component 2) at offset 576 in both formats.
pub(super) fn xsave(cpu: &mut CpuState, insn: &Instruction, addr: u64) -> SysResult {
    if cpu.cr4 & cr4::OSXSAVE == 0 {
        return ud();
    }
    let m = insn.mnemonic();
    let supervisor = matches!(m, M::Xsaves | M::Xsaves64 | M::Xrstors | M::Xrstors64);
    if supervisor && cpu.cpl() != 0 {
        return gp0();
    }
    if cpu.cr0 & cr0::TS != 0 {
        return SysResult::Fault(fault(vector::NM, None));
    }
    if addr & 63 != 0 {
        return gp0();
    }
    // IA32_XSS is always 0: XSAVES/XRSTORS manage the XCR0 components.
    let rfbm = ((cpu.gpr[RDX] << 32) | (cpu.gpr[RAX] & 0xffff_ffff)) & cpu.xcr0;
    match m {
        M::Xrstor | M::Xrstor64 | M::Xrstors | M::Xrstors64 => xrstor(cpu, addr, rfbm, supervisor),
        M::Xsavec | M::Xsavec64 | M::Xsaves | M::Xsaves64 => xsave_compacted(cpu, addr, rfbm),
        _ => xsave_standard(cpu, addr, rfbm),
    }
}

fn xsave_standard(cpu: &mut CpuState, addr: u64, mut rfbm: u64) -> SysResult {
    let krr = cpu.exec.profile == Profile::KrrCompat;
    if krr {
        // KRR's replay (`do_xsave`) drops x87, YMM and BNDCSR from RFBM.
        rfbm &= !(xcr0::X87 | xcr0::AVX | XCR0_BNDCSR);
    }
    // Legacy area (the parts RFBM selects) and the header's XSTATE_BV; the rest of the
    // legacy area is left as it was in memory, as hardware does.
    let len = if rfbm & xcr0::AVX != 0 {
        AREA_MAX
    } else {
        YMM_OFFSET
    };
    let mut area = [0u8; AREA_MAX];
    trym!(read_mem(cpu, addr, &mut area[..len]));
    let img = fxsave_image(cpu);
    if rfbm & xcr0::X87 != 0 {
        area[0..24].copy_from_slice(&img[0..24]);
        area[32..160].copy_from_slice(&img[32..160]);
    }
    if rfbm & xcr0::SSE != 0 {
        area[160..416].copy_from_slice(&img[160..416]);
    }
    // MXCSR and MXCSR_MASK belong to SSE state: saved when RFBM[1] (or RFBM[2], AVX) is
    // set (SDM Vol. 1 13.7).
    if krr {
        // KRR (`do_xsave_mxcsr`): with SSE saved, MXCSR and then 0x0000FFFF are written
        // to offset 0 of the area, not to the MXCSR/MXCSR_MASK slots.
        if rfbm & xcr0::SSE != 0 {
            area[0..4].copy_from_slice(&KRR_OFFSET0.to_le_bytes());
        }
    } else if rfbm & (xcr0::SSE | xcr0::AVX) != 0 {
        area[24..32].copy_from_slice(&img[24..32]);
    }
    if rfbm & xcr0::AVX != 0 {
        area[YMM_OFFSET..AREA_MAX].copy_from_slice(&ymm_image(cpu));
    }
    let mut bv = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
    // Components in use are reported as 1 (hardware may report 1 for initial state too).
    bv = (bv & !rfbm) | rfbm;
    area[512..520].copy_from_slice(&bv.to_le_bytes());
    trym!(write_mem(cpu, addr, &area[..len]));
    SysResult::Done(None)
}

/// XSAVEC and XSAVES: the compacted format (SDM Vol. 1 13.10, 13.11). Every component is
/// reported in use (XSTATE_BV = RFBM, which the architecture allows); only the parts of the
/// legacy region RFBM selects, XSTATE_BV, XCOMP_BV and the selected extended components are
/// written.
fn xsave_compacted(cpu: &mut CpuState, addr: u64, rfbm: u64) -> SysResult {
    let len = if rfbm & xcr0::AVX != 0 {
        AREA_MAX
    } else {
        YMM_OFFSET
    };
    let mut area = [0u8; AREA_MAX];
    trym!(read_mem(cpu, addr, &mut area[..len]));
    let img = fxsave_image(cpu);
    if rfbm & xcr0::X87 != 0 {
        area[0..24].copy_from_slice(&img[0..24]);
        area[32..160].copy_from_slice(&img[32..160]);
    }
    if rfbm & xcr0::SSE != 0 {
        area[160..416].copy_from_slice(&img[160..416]);
    }
    if rfbm & (xcr0::SSE | xcr0::AVX) != 0 {
        area[24..32].copy_from_slice(&img[24..32]);
    }
    if rfbm & xcr0::AVX != 0 {
        area[YMM_OFFSET..AREA_MAX].copy_from_slice(&ymm_image(cpu));
    }
    area[512..520].copy_from_slice(&rfbm.to_le_bytes());
    area[520..528].copy_from_slice(&(COMPACTED | rfbm).to_le_bytes());
    trym!(write_mem(cpu, addr, &area[..len]));
    SysResult::Done(None)
}

/// XRSTOR (standard or compacted format) and XRSTORS (compacted only): every check before
/// the first change (SDM XRSTOR/XRSTORS "Protected Mode Exceptions").
fn xrstor(cpu: &mut CpuState, addr: u64, rfbm: u64, xrstors: bool) -> SysResult {
    let mut area = [0u8; AREA_MAX];
    trym!(read_mem(cpu, addr, &mut area[..YMM_OFFSET]));
    let bv = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
    let comp = u64::from_le_bytes(area[520..528].try_into().expect("8 bytes"));
    let compacted = comp & COMPACTED != 0;
    let has_xsavec = cpu.cpuid.lookup(0xd, 1)[0] & krr_runtime::cpuid::XSAVEC != 0;
    if xrstors || compacted {
        // The compacted form: XCOMP_BV names enabled components only, XSTATE_BV a subset
        // of them; bytes 16-63 of the header are 0.
        if !compacted
            || (!xrstors && !has_xsavec)
            || comp & !COMPACTED & !cpu.xcr0 != 0
            || bv & !comp != 0
            || area[528..576].iter().any(|&b| b != 0)
        {
            return gp0();
        }
    } else if comp != 0 || bv & !cpu.xcr0 != 0 || area[528..536].iter().any(|&b| b != 0) {
        // The standard form: XCOMP_BV and the next 8 header bytes must be 0, XSTATE_BV only
        // enabled components.
        return gp0();
    }
    // Where component 2 is: at 576 in the standard format, and in the compacted one too
    // when XCOMP_BV has it (it is the first extended component).
    let ymm_present = rfbm & bv & xcr0::AVX != 0;
    if ymm_present {
        if compacted && comp & xcr0::AVX == 0 {
            return gp0();
        }
        trym!(read_mem(
            cpu,
            addr + YMM_OFFSET as u64,
            &mut area[YMM_OFFSET..]
        ));
    }
    let mxcsr = u32::from_le_bytes(area[24..28].try_into().expect("4 bytes"));
    // The standard form loads MXCSR whenever RFBM[1] or RFBM[2] is set, whatever
    // XSTATE_BV says (SDM Vol. 1 13.8.1); the compacted form with XSTATE_BV[1] and
    // initialises it otherwise (13.8.2).
    let load_mxcsr = if compacted {
        rfbm & bv & xcr0::SSE != 0
    } else {
        rfbm & (xcr0::SSE | xcr0::AVX) != 0
    };
    if load_mxcsr && mxcsr & !MXCSR_MASK != 0 {
        return gp0();
    }
    if rfbm & xcr0::X87 != 0 {
        if bv & xcr0::X87 != 0 {
            load_x87(cpu, &area);
        } else {
            cpu.x87 = krr_runtime::X87State::default();
        }
    }
    if rfbm & xcr0::SSE != 0 {
        if bv & xcr0::SSE != 0 {
            load_xmm(cpu, &area);
        } else {
            cpu.xmm = [[0; 2]; 16];
        }
    }
    if rfbm & xcr0::AVX != 0 {
        if ymm_present {
            load_ymm_hi(cpu, &area[YMM_OFFSET..]);
        } else {
            cpu.ymm_hi = [[0; 2]; 16];
        }
    }
    if load_mxcsr {
        cpu.mxcsr = mxcsr;
    } else if compacted && rfbm & xcr0::SSE != 0 {
        cpu.mxcsr = krr_runtime::arch::mxcsr::INIT;
    }
    SysResult::Done(None)
}
