//! `apic` version 3 (krr-spec.md 2.6) and `ivshmem-plain` (2.7).

use crate::krr_rec::error::KrrError;

use super::src::Src;
use super::vmdesc::DeviceDesc;
use super::vmstate::{read_subsections, Subsection};

/// The local APIC as QEMU's `apic_common` saves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Apic {
    /// IA32_APIC_BASE (low 32 bits).
    pub apicbase: u32,
    pub id: u8,
    pub arb_id: u8,
    pub tpr: u8,
    pub spurious_vec: u32,
    pub log_dest: u8,
    pub dest_mode: u8,
    pub isr: [u32; 8],
    pub tmr: [u32; 8],
    pub irr: [u32; 8],
    /// LVT timer, thermal, perf, LINT0, LINT1, error: 6 entries (QEMU's APIC_LVT_NB; the
    /// spec's `lvt[7]` is one too many, see the stream description of a real QEMU).
    pub lvt: [u32; 6],
    pub esr: u32,
    pub icr: [u32; 2],
    pub divide_conf: u32,
    pub count_shift: i32,
    pub initial_count: u32,
    pub initial_count_load_time: i64,
    pub next_time: i64,
    pub timer_expiry: i64,
    pub subsections: Vec<Subsection>,
}

/// Bytes of the version-3 fields.
pub const APIC_FIELDS_SIZE: u64 = 181;

pub fn read_apic(src: &mut Src, desc: Option<&DeviceDesc>) -> Result<Apic, KrrError> {
    let w = "an apic field";
    let mut a = Apic {
        apicbase: src.be32(w)?,
        id: src.u8(w)?,
        arb_id: src.u8(w)?,
        tpr: src.u8(w)?,
        spurious_vec: src.be32(w)?,
        log_dest: src.u8(w)?,
        dest_mode: src.u8(w)?,
        isr: src.be32s(w)?,
        tmr: src.be32s(w)?,
        irr: src.be32s(w)?,
        lvt: src.be32s(w)?,
        esr: src.be32(w)?,
        icr: src.be32s(w)?,
        divide_conf: src.be32(w)?,
        count_shift: src.be32(w)? as i32,
        initial_count: src.be32(w)?,
        initial_count_load_time: src.be64(w)? as i64,
        next_time: src.be64(w)? as i64,
        timer_expiry: src.be64(w)? as i64,
        ..Apic::default()
    };
    let known = |n: &str| (n == "apic_sipi").then_some(8);
    a.subsections = read_subsections(src, "", desc, &known)?;
    Ok(a)
}

/// The ivshmem-plain device: its PCI config space (BAR2 = the KRR ring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ivshmem {
    /// The section's name, e.g. `0000:00:04.0/ivshmem-plain`.
    pub idstr: String,
    pub config: Vec<u8>,
    pub intrstatus: u32,
    pub intrmask: u32,
}

impl Ivshmem {
    /// BAR2's guest-physical address (a 64-bit memory BAR at config offset 0x18).
    pub fn bar2(&self) -> u64 {
        let dw = |o: usize| {
            u32::from_le_bytes(
                self.config[o..o + 4]
                    .try_into()
                    .expect("config is 256 bytes"),
            ) as u64
        };
        (dw(0x18) & !0xF) | (dw(0x1c) << 32)
    }
}

pub const IVSHMEM_FIELDS_SIZE: u64 = 284;

pub fn read_ivshmem(src: &mut Src, idstr: &str) -> Result<Ivshmem, KrrError> {
    let w = "an ivshmem field";
    let _pci_version = src.be32(w)?;
    let config = src.bytes(256, "the ivshmem PCI config space")?;
    src.skip(16, "the ivshmem PCI irq state")?;
    Ok(Ivshmem {
        idstr: idstr.to_string(),
        config,
        intrstatus: src.be32(w)?,
        intrmask: src.be32(w)?,
    })
}
