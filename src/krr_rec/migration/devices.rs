//! `apic` version 3 (krr-spec.md 2.6), `ivshmem-plain` (2.7), and the interrupt controllers
//! whose registers the kernel reads without KRR recording them: `i8259` version 1 and
//! `ioapic` version 3 (QEMU's `vmstate_pic_common` and `vmstate_ioapic_common`).

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

/// One 8259 (instance 0 = master at 0x20, 1 = slave at 0xa0) as QEMU saves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pic {
    pub last_irr: u8,
    pub irr: u8,
    pub imr: u8,
    pub isr: u8,
    pub priority_add: u8,
    pub irq_base: u8,
    pub read_reg_select: u8,
    pub poll: u8,
    pub special_mask: u8,
    pub init_state: u8,
    pub auto_eoi: u8,
    pub rotate_on_auto_eoi: u8,
    pub special_fully_nested_mode: u8,
    pub init4: u8,
    pub single_mode: u8,
    pub elcr: u8,
}

pub const PIC_FIELDS_SIZE: u64 = 16;

pub fn read_pic(src: &mut Src) -> Result<Pic, KrrError> {
    let b = src.bytes(PIC_FIELDS_SIZE, "the i8259 fields")?;
    Ok(Pic {
        last_irr: b[0],
        irr: b[1],
        imr: b[2],
        isr: b[3],
        priority_add: b[4],
        irq_base: b[5],
        read_reg_select: b[6],
        poll: b[7],
        special_mask: b[8],
        init_state: b[9],
        auto_eoi: b[10],
        rotate_on_auto_eoi: b[11],
        special_fully_nested_mode: b[12],
        init4: b[13],
        single_mode: b[14],
        elcr: b[15],
    })
}

/// Redirection-table entries of QEMU's IO-APIC.
pub const IOAPIC_PINS: usize = 24;

/// The IO-APIC as QEMU saves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub ioregsel: u8,
    pub irr: u32,
    pub ioredtbl: [u64; IOAPIC_PINS],
}

/// id, ioregsel, 8 unused bytes (qemu-kvm's version 2), irr, 24 redirection entries.
pub const IOAPIC_FIELDS_SIZE: u64 = 1 + 1 + 8 + 4 + 8 * IOAPIC_PINS as u64;

pub fn read_ioapic(src: &mut Src) -> Result<IoApic, KrrError> {
    let w = "an ioapic field";
    let id = src.u8(w)?;
    let ioregsel = src.u8(w)?;
    src.skip(8, "the ioapic's unused field")?;
    let irr = src.be32(w)?;
    let mut ioredtbl = [0u64; IOAPIC_PINS];
    for e in &mut ioredtbl {
        *e = src.be64("an ioapic redirection entry")?;
    }
    Ok(IoApic {
        id,
        ioregsel,
        irr,
        ioredtbl,
    })
}
