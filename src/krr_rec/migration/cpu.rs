//! `cpu` (vmstate_x86_cpu version 12, krr-spec.md 2.5) and `cpu_common` (2.4).

use crate::krr_rec::error::KrrError;

use super::src::Src;
use super::vmdesc::DeviceDesc;
use super::vmstate::{read_subsections, Subsection};

/// A segment register with its hidden part (QEMU's `SegmentCache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u32,
    pub base: u64,
    pub limit: u32,
    /// Descriptor-high-dword positions: type 8-11, S 12, DPL 13-14, P 15, L 21, D/B 22, G 23.
    pub flags: u32,
}

impl Segment {
    pub fn dpl(&self) -> u8 {
        ((self.flags >> 13) & 3) as u8
    }
}

/// The x86 CPU state of one vCPU as QEMU saved it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct X86Cpu {
    /// QEMU order: RAX RCX RDX RBX RSP RBP RSI RDI R8..R15.
    pub regs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub hflags: u32,
    pub fpuc: u16,
    pub fpus: u16,
    pub fptag: u16,
    pub fpregs_format: u16,
    /// (mantissa, sign+exponent), physical register order.
    pub fpregs: [(u64, u16); 8],
    /// ES CS SS DS FS GS.
    pub segs: [Segment; 6],
    pub ldt: Segment,
    pub tr: Segment,
    pub gdt: Segment,
    pub idt: Segment,
    pub sysenter_cs: u32,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub dr: [u64; 8],
    pub a20_mask: u32,
    pub mxcsr: u32,
    /// XMM0-15 (q0, q1).
    pub xmm: [[u64; 2]; 16],
    pub efer: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub fmask: u64,
    pub kernelgsbase: u64,
    pub smbase: u32,
    pub pat: u64,
    pub hflags2: u32,
    pub v_tpr: u8,
    pub mtrr_fixed: [u64; 11],
    pub mtrr_deftype: u64,
    /// (base, mask).
    pub mtrr_var: [(u64, u64); 8],
    pub interrupt_injected: i32,
    pub mp_state: u32,
    pub tsc: u64,
    pub exception_nr: i32,
    pub soft_interrupt: u8,
    pub nmi_injected: u8,
    pub nmi_pending: u8,
    pub has_error_code: u8,
    pub sipi_vector: u32,
    pub mcg_cap: u64,
    pub mcg_status: u64,
    pub mcg_ctl: u64,
    pub mce_banks: Vec<u64>,
    pub tsc_aux: u64,
    pub system_time_msr: u64,
    pub wall_clock_msr: u64,
    pub xcr0: u64,
    pub xstate_bv: u64,
    /// YMM upper halves (q2, q3).
    pub ymmh: [[u64; 2]; 16],
    pub subsections: Vec<Subsection>,
}

/// Bytes of the version-12 fields.
pub const CPU_FIELDS_SIZE: u64 = 1817;
const MCE_BANKS: usize = 40;

impl X86Cpu {
    /// CPL = SS.DPL, as QEMU's post_load computes it.
    pub fn cpl(&self) -> u8 {
        self.segs[2].dpl()
    }
    pub fn fs_base(&self) -> u64 {
        self.segs[4].base
    }
    pub fn gs_base(&self) -> u64 {
        self.segs[5].base
    }
    pub fn subsection(&self, name: &str) -> Option<&Subsection> {
        self.subsections.iter().find(|s| s.name == name)
    }
    /// IA32_TSC_DEADLINE when its subsection is present.
    pub fn tsc_deadline(&self) -> Option<u64> {
        self.subsection("cpu/msr_tscdeadline")?.be64(0)
    }
    pub fn misc_enable(&self) -> Option<u64> {
        self.subsection("cpu/msr_ia32_misc_enable")?.be64(0)
    }
    pub fn spec_ctrl(&self) -> Option<u64> {
        self.subsection("cpu/spec_ctrl")?.be64(0)
    }
    pub fn pkru(&self) -> Option<u32> {
        self.subsection("cpu/pkru")?.be32(0)
    }
    pub fn tsc_khz(&self) -> Option<u64> {
        self.subsection("cpu/tsc_khz")?.be64(0)
    }
    /// (fop, fip, fdp).
    pub fn fpu_pointers(&self) -> Option<(u16, u64, u64)> {
        let s = self.subsection("cpu/fpop_ip_dp")?;
        Some((s.be16(0)?, s.be64(2)?, s.be64(10)?))
    }
}

/// Sizes of the `cpu/...` subsections that krr knows without a description (QEMU 7.0's
/// machine.c); others need the stream's description.
pub fn known_cpu_subsection(name: &str) -> Option<u64> {
    Some(match name.strip_prefix("cpu/")? {
        "exception_info" => 11,
        "async_pf_msr"
        | "async_pf_int_msr"
        | "async_pv_eoi_msr"
        | "steal_time_msr"
        | "poll_control_msr"
        | "msr_tsc_adjust"
        | "msr_tscdeadline"
        | "msr_ia32_misc_enable"
        | "msr_ia32_feature_control"
        | "xss"
        | "tsc_khz"
        | "msr_smi_count"
        | "pkrs"
        | "spec_ctrl"
        | "amd_tsc_scale_msr"
        | "mcg_ext_ctl"
        | "virt_ssbd"
        | "msr_tsx_ctrl" => 8,
        "fpop_ip_dp" => 18,
        "msr_architectural_pmu" => 344,
        "mpx" => 88,
        "avx512" => 1600,
        "pkru" => 4,
        "msr_xfd" => 16,
        "pdptrs" => 32,
        _ => return None,
    })
}

fn seg(src: &mut Src) -> Result<Segment, KrrError> {
    Ok(Segment {
        selector: src.be32("a segment selector")?,
        base: src.be64("a segment base")?,
        limit: src.be32("a segment limit")?,
        flags: src.be32("segment flags")?,
    })
}

pub fn read_cpu(src: &mut Src, desc: Option<&DeviceDesc>) -> Result<X86Cpu, KrrError> {
    let w = "a cpu field";
    let mut c = X86Cpu {
        regs: src.be64s(w)?,
        rip: src.be64(w)?,
        rflags: src.be64(w)?,
        hflags: src.be32(w)?,
        fpuc: src.be16(w)?,
        fpus: src.be16(w)?,
        fptag: src.be16(w)?,
        fpregs_format: src.be16(w)?,
        ..X86Cpu::default()
    };
    for r in c.fpregs.iter_mut() {
        *r = (src.be64(w)?, src.be16(w)?);
    }
    for s in c.segs.iter_mut() {
        *s = seg(src)?;
    }
    c.ldt = seg(src)?;
    c.tr = seg(src)?;
    c.gdt = seg(src)?;
    c.idt = seg(src)?;
    c.sysenter_cs = src.be32(w)?;
    c.sysenter_esp = src.be64(w)?;
    c.sysenter_eip = src.be64(w)?;
    c.cr0 = src.be64(w)?;
    c.cr2 = src.be64(w)?;
    c.cr3 = src.be64(w)?;
    c.cr4 = src.be64(w)?;
    c.dr = src.be64s(w)?;
    c.a20_mask = src.be32(w)?;
    c.mxcsr = src.be32(w)?;
    for x in c.xmm.iter_mut() {
        *x = src.be64s(w)?;
    }
    c.efer = src.be64(w)?;
    c.star = src.be64(w)?;
    c.lstar = src.be64(w)?;
    c.cstar = src.be64(w)?;
    c.fmask = src.be64(w)?;
    c.kernelgsbase = src.be64(w)?;
    c.smbase = src.be32(w)?;
    c.pat = src.be64(w)?;
    c.hflags2 = src.be32(w)?;
    // SVM state: vm_hsave, vm_vmcb, tsc_offset, intercept; the intercept masks.
    src.skip(4 * 8 + 4 * 2 + 4, w)?;
    c.v_tpr = src.u8(w)?;
    c.mtrr_fixed = src.be64s(w)?;
    c.mtrr_deftype = src.be64(w)?;
    for m in c.mtrr_var.iter_mut() {
        *m = (src.be64(w)?, src.be64(w)?);
    }
    c.interrupt_injected = src.be32(w)? as i32;
    c.mp_state = src.be32(w)?;
    c.tsc = src.be64(w)?;
    c.exception_nr = src.be32(w)? as i32;
    c.soft_interrupt = src.u8(w)?;
    c.nmi_injected = src.u8(w)?;
    c.nmi_pending = src.u8(w)?;
    c.has_error_code = src.u8(w)?;
    c.sipi_vector = src.be32(w)?;
    c.mcg_cap = src.be64(w)?;
    c.mcg_status = src.be64(w)?;
    c.mcg_ctl = src.be64(w)?;
    c.mce_banks = src.be64s::<MCE_BANKS>(w)?.to_vec();
    c.tsc_aux = src.be64(w)?;
    c.system_time_msr = src.be64(w)?;
    c.wall_clock_msr = src.be64(w)?;
    c.xcr0 = src.be64(w)?;
    c.xstate_bv = src.be64(w)?;
    for y in c.ymmh.iter_mut() {
        *y = src.be64s(w)?;
    }
    c.subsections = read_subsections(src, "cpu", desc, &known_cpu_subsection)?;
    Ok(c)
}

/// `cpu_common`: the generic CPU state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuCommon {
    pub halted: u32,
    pub interrupt_request: u32,
    pub subsections: Vec<Subsection>,
}

pub fn read_cpu_common(src: &mut Src, desc: Option<&DeviceDesc>) -> Result<CpuCommon, KrrError> {
    let halted = src.be32("cpu_common.halted")?;
    let interrupt_request = src.be32("cpu_common.interrupt_request")?;
    let known = |n: &str| match n {
        "cpu_common/exception_index" => Some(4),
        "cpu_common/crash_occurred" => Some(1),
        _ => None,
    };
    Ok(CpuCommon {
        halted,
        interrupt_request,
        subsections: read_subsections(src, "cpu_common", desc, &known)?,
    })
}
