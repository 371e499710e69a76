//! The ACPI tables krr's "firmware" leaves in guest RAM for the kernel: how Linux finds the
//! machine's power-management hardware (the PM1a/PM-timer block of `devices/pm.rs`), the sleep
//! types (`\_S5` for power-off), the reset register, the interrupt controllers, the PCI bus
//! and its interrupt routing, and the one CPU.
//!
//! Built with rust-vmm's `acpi_tables` crate and placed in the BIOS area at [`ACPI_BASE`]
//! (0xE0000, reserved in the e820 map), so the kernel finds the RSDP both through
//! `boot_params.acpi_rsdp_addr` and by the legacy scan of 0xE0000-0xFFFFF:
//!
//! * RSDP (revision 2) at [`ACPI_BASE`] -> XSDT -> FADT, MADT;
//! * FADT (6.5, full hardware, not hardware-reduced): FACS and DSDT (64-bit `X_` fields only);
//!   SCI_INT 9; SMI_CMD 0 (always in ACPI mode: PM1_CNT.SCI_EN reads 1); PM1a_EVT_BLK,
//!   PM1a_CNT_BLK and PM_TMR_BLK at the PM block's ports, in both the 32-bit and the `X_` GAS
//!   fields (24-bit timer); no PM1b, PM2 or GPE blocks; C2/C3 not supported (latencies 101 and
//!   1001); the RTC's century byte; IA-PC boot flags: legacy devices, 8042, no VGA; the reset
//!   register (port 0xCF9, value 6); flags WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (no
//!   fixed-feature buttons), FIX_RTC (no RTC wake status), RESET_REG_SUP;
//! * FACS (64 bytes, 64-byte aligned; holds the global lock);
//! * DSDT: `Name (_S5, Package () { S5_SLP_TYP, S5_SLP_TYP, 0, 0 })` (no `_S0`..`_S4`: the
//!   PM block sleeps only into S5; Linux needs no `_S0`), and in `\_SB` the PCI root bridge
//!   `PCI0` (PNP0A03: bus 0-255, the configuration ports, I/O windows around them, the PCI
//!   memory window 0xC0000000-0xFEBFFFFF of `devices/pci.rs`; `_PRT` sends every slot's INTA#
//!   to the link `LNKA`) and `LNKA` (PNP0C0F: ISA IRQ [`PCI_IRQ`] 11, level, active high,
//!   shared, fixed), as QEMU's PIIX board routes PCI interrupts. COM1, the RTC and the 8042
//!   have no ACPI devices: Linux finds them by their legacy probes;
//! * MADT: local APIC address 0xFEE00000, PCAT_COMPAT (the 8259 pair is there), one processor
//!   local APIC (UID 0, APIC ID 0, enabled). Without [`AcpiConfig::with_ioapic`] that is all.
//!   With it (the machine's choice: it models the IO-APIC), as QEMU's PIIX board declares
//!   them (booted with `nolapic noapic`, Linux skips the APIC entries and keeps PIC routing,
//!   SCI on IRQ 9 level-triggered through the ELCR):
//!   - the IO-APIC of `devices/ioapic.rs`: ID [`IOAPIC_ID`] 0, address 0xFEC00000, GSI base 0.
//!     ID 0 is also the local APIC's ID, as on QEMU: IO-APIC and local APIC IDs only had to
//!     differ on the serial APIC bus of P6-era xAPICs; x86-64 Linux (`io_apic_unique_id`)
//!     checks only that IO-APIC IDs differ from each other, and reprograms none with ACPI;
//!   - interrupt source overrides: ISA IRQ0 -> GSI 2 (the PIT, flags 0: conforming to the ISA
//!     bus, i.e. edge, active high), and IRQ9 -> GSI 9 level-triggered, active high (the SCI;
//!     without it Linux would take the SCI as active low, and the IO-APIC model applies
//!     polarity to the line). ISA IRQs without an override are identity-mapped, edge, active
//!     high; IRQ2 has no GSI (GSI 2 is IRQ0's). [`super::devices::ioapic::gsi_for_isa_irq`] is
//!     the same mapping. IRQ11 -> GSI 11 level, active high: the PCI interrupt line (QEMU's
//!     PIIX board declares 5, 10 and 11 so, its PCI lines; krr routes every slot to 11);
//!   - a local APIC NMI structure: all processors (UID 0xFF), flags 0, LINT1.

use super::devices::{ioapic, pci, pm, rtc};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, facs::FACS, Aml};
use krr_runtime::GuestMemory;

/// Where the tables start (the RSDP's address): the BIOS area the kernel scans.
pub const ACPI_BASE: u64 = 0xe0000;
/// The end of the area reserved for the tables (the end of the BIOS area).
pub const ACPI_END: u64 = 0x100000;

/// The ISA IRQ every PCI slot's INTA# is routed to (through `LNKA`).
pub const PCI_IRQ: u8 = 11;
/// The interrupt link device of the PCI slots.
const PCI_LINK: &str = "\\_SB_.LNKA";

/// Identification in every table header.
pub const OEM_ID: [u8; 6] = *b"KRR   ";
pub const OEM_TABLE_ID: [u8; 8] = *b"KRRPC   ";
pub const OEM_REVISION: u32 = 1;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

/// The local APIC's physical address, as the MADT declares it.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// MADT flags: a dual 8259 setup is present.
pub const MADT_PCAT_COMPAT: u32 = 1;
/// Offset of the MADT's flags field (after the header and the local APIC address).
const MADT_FLAGS_OFFSET: usize = 40;
/// Offset of every SDT's length field.
const SDT_LENGTH_OFFSET: usize = 4;

/// The IO-APIC's ID in the MADT (its ID register's value after reset).
pub const IOAPIC_ID: u8 = 0;
/// MADT structure types the crate does not build.
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Their lengths.
const INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
const LOCAL_APIC_NMI_LEN: u8 = 6;
/// Interrupt source override: the bus of the source (0 = ISA).
const BUS_ISA: u8 = 0;
/// MPS INTI flags (interrupt source overrides, NMI structures): polarity in bits 1:0, trigger
/// mode in bits 3:2; 0 in either field means "conforms to the bus".
pub const INTI_CONFORMING: u16 = 0;
pub const INTI_ACTIVE_HIGH: u16 = 0b01;
pub const INTI_ACTIVE_LOW: u16 = 0b11;
pub const INTI_EDGE: u16 = 0b01 << 2;
pub const INTI_LEVEL: u16 = 0b11 << 2;
/// Local APIC NMI: the processor UID meaning "all processors".
pub const ALL_PROCESSORS: u8 = 0xff;
/// Local APIC NMI: the LINT input NMI arrives on.
pub const NMI_LINT: u8 = 1;

/// FADT IAPC_BOOT_ARCH bits.
pub const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
pub const BOOT_ARCH_8042: u16 = 1 << 1;
pub const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// P_LVL2_LAT / P_LVL3_LAT values meaning "C2 / C3 not supported".
pub const C2_NOT_SUPPORTED: u16 = 101;
pub const C3_NOT_SUPPORTED: u16 = 1001;
/// The value written to the reset register (port 0xCF9): system reset + reset CPU.
pub const RESET_VALUE: u8 = pci::RCR_SYS_RST | pci::RCR_RST_CPU;

/// Offsets of the fields the tests check, in the FADT.
#[cfg(test)]
mod fadt_off {
    pub const FIRMWARE_CTRL: usize = 36;
    pub const DSDT: usize = 40;
    pub const SCI_INT: usize = 46;
    pub const SMI_CMD: usize = 48;
    pub const PM1A_EVT_BLK: usize = 56;
    pub const PM1A_CNT_BLK: usize = 64;
    pub const PM_TMR_BLK: usize = 76;
    pub const GPE0_BLK: usize = 80;
    pub const PM1_EVT_LEN: usize = 88;
    pub const PM1_CNT_LEN: usize = 89;
    pub const PM_TMR_LEN: usize = 91;
    pub const CENTURY: usize = 108;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const X_FIRMWARE_CTRL: usize = 132;
    pub const X_DSDT: usize = 140;
    pub const X_PM1A_EVT_BLK: usize = 148;
    pub const X_PM1A_CNT_BLK: usize = 172;
    pub const X_PM_TMR_BLK: usize = 208;
    pub const LENGTH: usize = 276;
}

/// What the tables describe beyond the fixed PC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Declare the IO-APIC in the MADT, with the ISA interrupt source overrides and the local
    /// APIC NMI. Off (the default) for the machine without an IO-APIC.
    pub with_ioapic: bool,
}

/// The tables as one image to copy to [`AcpiTables::base`], and where each one is.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub base: u64,
    pub image: Vec<u8>,
    pub rsdp: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub facs: u64,
    pub dsdt: u64,
    pub madt: u64,
}

/// Lays tables out one after another from [`ACPI_BASE`].
struct Layout {
    image: Vec<u8>,
}

impl Layout {
    fn addr(&self) -> u64 {
        ACPI_BASE + self.image.len() as u64
    }
    /// Pad to `align` and return the address the next table goes to.
    fn align(&mut self, align: usize) -> u64 {
        let len = self.image.len().next_multiple_of(align);
        self.image.resize(len, 0);
        self.addr()
    }
    fn put(&mut self, align: usize, table: &dyn Aml) -> u64 {
        let at = self.align(align);
        table.to_aml_bytes(&mut self.image);
        at
    }
    fn put_bytes(&mut self, align: usize, table: &[u8]) -> u64 {
        let at = self.align(align);
        self.image.extend_from_slice(table);
        at
    }
}

/// A system-IO generic address of `bits` bits accessed `access` at a time.
fn io_gas(port: u16, bits: u8, access: AccessSize) -> GAS {
    GAS::new(AddressSpace::SystemIo, bits, 0, access, u64::from(port))
}

/// The 8-bit sum that makes `table` sum to zero, written at offset 9 (every SDT's checksum).
fn fix_checksum(table: &mut [u8]) {
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = sum.wrapping_neg();
}

fn dsdt() -> Sdt {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let s5 = pm::S5_SLP_TYP as u8;
    // _S5: SLP_TYPa, SLP_TYPb, two reserved elements.
    let package = aml::Package::new(vec![&s5, &s5, &0u8, &0u8]);
    let mut body = Vec::new();
    aml::Name::new("_S5_".into(), &package).to_aml_bytes(&mut body);
    system_bus(&mut body);
    dsdt.append_slice(&body);
    dsdt
}

fn as_aml<T: Aml>(items: &[T]) -> Vec<&dyn Aml> {
    items.iter().map(|i| i as &dyn Aml).collect()
}

/// `\_SB`: the PCI root bridge `PCI0` (bus 0, configuration mechanism #1 at 0xCF8, the I/O
/// ports around it and the PCI memory window as its windows) and the interrupt link `LNKA`
/// every slot's INTA# goes through: ISA IRQ [`PCI_IRQ`], level-triggered, active high, shared,
/// as QEMU's PIIX board routes its PCI interrupts. The routing is fixed (`_SRS` accepts only
/// what `_CRS` says, by doing nothing), and the same in PIC and APIC mode: the IO-APIC sees
/// IRQ 11 on pin 11, which the MADT declares level, active high.
fn system_bus(body: &mut Vec<u8>) {
    use aml::{AddressSpace as Space, AddressSpaceCacheable, Device, Method, Name, Package};
    let bus_numbers = Space::<u16>::new_bus_number(0, 0xff);
    let config_ports = aml::IO::new(pci::PCI_BASE, pci::PCI_BASE, 1, pci::NUM_PORTS as u8);
    let io_below = Space::<u16>::new_io(0, pci::PCI_BASE - 1, None);
    let io_above = Space::<u16>::new_io(0x0d00, 0xffff, None);
    let mmio = Space::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci::PCI_MMIO_START as u32,
        (pci::PCI_MMIO_END - 1) as u32,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![
        &bus_numbers,
        &config_ports,
        &io_below,
        &io_above,
        &mmio,
    ]);
    // _PRT: (slot << 16 | 0xFFFF, pin, source, source index); pin 0 = INTA#.
    let link = aml::Path::new(PCI_LINK);
    let addresses: Vec<u32> = (1..u32::from(pci::NUM_SLOTS))
        .map(|slot| (slot << 16) | 0xffff)
        .collect();
    let entries: Vec<Package> = addresses
        .iter()
        .map(|address| Package::new(vec![address, &0u8, &link, &0u8]))
        .collect();
    let prt = Package::new(entries.iter().map(|e| e as &dyn Aml).collect());
    let pci_hid = aml::EISAName::new("PNP0A03");
    let pci0_names = [
        Name::new("_HID".into(), &pci_hid),
        Name::new("_UID".into(), &0u8),
        Name::new("_ADR".into(), &0u8),
        Name::new("_BBN".into(), &0u8),
        Name::new("_CRS".into(), &crs),
        Name::new("_PRT".into(), &prt),
    ];
    let pci0 = Device::new("PCI0".into(), as_aml(&pci0_names));
    let irq = aml::Interrupt::new(true, false, false, true, u32::from(PCI_IRQ));
    let irq_resources = aml::ResourceTemplate::new(vec![&irq]);
    let link_hid = aml::EISAName::new("PNP0C0F");
    let present_enabled_functioning = 0x0bu8;
    let lnka_names = [
        Name::new("_HID".into(), &link_hid),
        Name::new("_UID".into(), &1u8),
        Name::new("_STA".into(), &present_enabled_functioning),
        Name::new("_PRS".into(), &irq_resources),
        Name::new("_CRS".into(), &irq_resources),
    ];
    let set_resources = Method::new("_SRS".into(), 1, false, vec![]);
    let mut lnka_children = as_aml(&lnka_names);
    lnka_children.push(&set_resources);
    let lnka = Device::new("LNKA".into(), lnka_children);
    aml::Scope::new("\\_SB_".into(), vec![&pci0, &lnka]).to_aml_bytes(body);
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let port = |off: u16| pm::PM_BASE + off;
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs)
        .dsdt_64(dsdt)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc)
        .flag(Flags::ResetRegSup);
    f.sci_int = u16::from(pm::SCI_IRQ).into();
    f.smi_cmd = 0.into();
    f.pm1a_evt_blk = u32::from(port(pm::OFFSET_PM1_STS)).into();
    f.pm1a_cnt_blk = u32::from(port(pm::OFFSET_PM1_CNT)).into();
    f.pm_tmr_blk = u32::from(port(pm::OFFSET_PM_TMR)).into();
    f.pm1_evt_len = pm::PM1_EVT_LEN as u8;
    f.pm1_cnt_len = pm::PM1_CNT_LEN as u8;
    f.pm_tmr_len = pm::PM_TMR_LEN as u8;
    f.p_lvl2_lat = C2_NOT_SUPPORTED.into();
    f.p_lvl3_lat = C3_NOT_SUPPORTED.into();
    f.century = rtc::REG_CENTURY;
    f.iapc_boot_arch = (BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA).into();
    f.reset_reg = io_gas(
        pci::PCI_BASE + pci::OFFSET_RESET_CONTROL,
        8,
        AccessSize::ByteAccess,
    );
    f.reset_value = RESET_VALUE;
    // The 16-bit PM1 registers are accessed a word at a time, the timer a dword.
    f.x_pm1a_evt_blk = io_gas(
        port(pm::OFFSET_PM1_STS),
        (pm::PM1_EVT_LEN * 8) as u8,
        AccessSize::WordAccess,
    );
    f.x_pm1a_cnt_blk = io_gas(
        port(pm::OFFSET_PM1_CNT),
        (pm::PM1_CNT_LEN * 8) as u8,
        AccessSize::WordAccess,
    );
    f.x_pm_tmr_blk = io_gas(
        port(pm::OFFSET_PM_TMR),
        (pm::PM_TMR_LEN * 8) as u8,
        AccessSize::DwordAccess,
    );
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// An interrupt source override: ISA `irq` is GSI `gsi` with the MPS INTI `flags`.
fn source_override(irq: u8, gsi: u8, flags: u16) -> Vec<u8> {
    let mut s = vec![
        MADT_INTERRUPT_SOURCE_OVERRIDE,
        INTERRUPT_SOURCE_OVERRIDE_LEN,
    ];
    s.extend_from_slice(&[BUS_ISA, irq]);
    s.extend_from_slice(&u32::from(gsi).to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// A local APIC NMI structure.
fn local_apic_nmi(processor_uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut s = vec![MADT_LOCAL_APIC_NMI, LOCAL_APIC_NMI_LEN, processor_uid];
    s.extend_from_slice(&flags.to_le_bytes());
    s.push(lint);
    s
}

/// The GSI of an ISA IRQ that has one.
fn isa_gsi(irq: u8) -> u8 {
    ioapic::gsi_for_isa_irq(irq).expect("ISA IRQ with a GSI")
}

fn madt(config: AcpiConfig) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    madt.add_structure(ProcessorLocalApic::new(0, 0, EnabledStatus::Enabled));
    if config.with_ioapic {
        madt.add_structure(IoApic::new(IOAPIC_ID, ioapic::IOAPIC_BASE as u32, 0));
    }
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    if config.with_ioapic {
        // The crate has no interrupt source override or local APIC NMI structure.
        bytes.extend(source_override(0, isa_gsi(0), INTI_CONFORMING));
        let sci = pm::SCI_IRQ;
        bytes.extend(source_override(
            sci,
            isa_gsi(sci),
            INTI_ACTIVE_HIGH | INTI_LEVEL,
        ));
        bytes.extend(source_override(
            PCI_IRQ,
            isa_gsi(PCI_IRQ),
            INTI_ACTIVE_HIGH | INTI_LEVEL,
        ));
        bytes.extend(local_apic_nmi(ALL_PROCESSORS, INTI_CONFORMING, NMI_LINT));
        let len = bytes.len() as u32;
        bytes[SDT_LENGTH_OFFSET..SDT_LENGTH_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
    }
    // The crate leaves the MADT flags 0 and offers no setter.
    bytes[MADT_FLAGS_OFFSET..MADT_FLAGS_OFFSET + 4]
        .copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    fix_checksum(&mut bytes);
    bytes
}

/// Build the tables for krr's PC.
pub fn build(config: AcpiConfig) -> AcpiTables {
    let mut l = Layout { image: Vec::new() };
    // The RSDP first (16-byte aligned, found first by the scan), filled in last.
    let rsdp = l.addr();
    l.image.resize(Rsdp::len(), 0);
    let facs = l.put(64, &FACS::new());
    let dsdt = l.put(16, &dsdt());
    let fadt_addr = l.put_bytes(16, &fadt(facs, dsdt));
    let madt_addr = l.put_bytes(16, &madt(config));
    let mut xsdt_table = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt_table.add_entry(fadt_addr);
    xsdt_table.add_entry(madt_addr);
    let xsdt = l.put(16, &xsdt_table);
    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp_bytes);
    l.image[..rsdp_bytes.len()].copy_from_slice(&rsdp_bytes);
    assert!(ACPI_BASE + l.image.len() as u64 <= ACPI_END);
    AcpiTables {
        base: ACPI_BASE,
        image: l.image,
        rsdp,
        xsdt,
        fadt: fadt_addr,
        facs,
        dsdt,
        madt: madt_addr,
    }
}

/// Write the tables for the default configuration (no IO-APIC) to guest memory; returns the
/// RSDP's address.
pub fn write(mem: &mut GuestMemory) -> Result<u64, krr_runtime::MemoryError> {
    write_with(mem, AcpiConfig::default())
}

/// Write the tables for `config` to guest memory; returns the RSDP's address.
pub fn write_with(
    mem: &mut GuestMemory,
    config: AcpiConfig,
) -> Result<u64, krr_runtime::MemoryError> {
    let t = build(config);
    mem.write(t.base, &t.image)?;
    Ok(t.rsdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at `addr` with its header's length, after checking signature and checksum.
    fn table<'a>(t: &'a AcpiTables, addr: u64, sig: &[u8; 4]) -> &'a [u8] {
        let o = (addr - t.base) as usize;
        assert_eq!(&t.image[o..o + 4], sig);
        let len = u32_at(&t.image, o + 4) as usize;
        let b = &t.image[o..o + len];
        assert_eq!(sum(b), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&b[10..16], &OEM_ID);
        b
    }

    #[test]
    fn rsdp_is_findable_and_points_at_the_xsdt() {
        let t = build(AcpiConfig::default());
        assert_eq!(t.rsdp, ACPI_BASE);
        assert_eq!(t.rsdp % 16, 0);
        assert!((0xe0000..0x100000).contains(&t.rsdp));
        let r = &t.image[..36];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(u32_at(r, 20), 36, "length");
        assert_eq!(u64_at(r, 24), t.xsdt);
        assert!(ACPI_BASE + t.image.len() as u64 <= ACPI_END);
    }

    #[test]
    fn xsdt_lists_fadt_and_madt() {
        let t = build(AcpiConfig::default());
        let x = table(&t, t.xsdt, b"XSDT");
        assert_eq!(x.len(), 36 + 16);
        assert_eq!(u64_at(x, 36), t.fadt);
        assert_eq!(u64_at(x, 44), t.madt);
    }

    #[test]
    fn fadt_describes_the_pm_block() {
        use fadt_off::*;
        let t = build(AcpiConfig::default());
        let f = table(&t, t.fadt, b"FACP");
        assert_eq!(f.len(), LENGTH);
        assert_eq!(f[8], 6, "FADT major version");
        assert_eq!(u32_at(f, FIRMWARE_CTRL), 0);
        assert_eq!(u32_at(f, DSDT), 0);
        assert_eq!(u64_at(f, X_FIRMWARE_CTRL), t.facs);
        assert_eq!(u64_at(f, X_DSDT), t.dsdt);
        assert_eq!(t.facs % 64, 0, "FACS alignment");
        assert_eq!(u16_at(f, SCI_INT), 9);
        assert_eq!(u32_at(f, SMI_CMD), 0);
        assert_eq!(u32_at(f, PM1A_EVT_BLK), 0x600);
        assert_eq!(u32_at(f, PM1A_CNT_BLK), 0x604);
        assert_eq!(u32_at(f, PM_TMR_BLK), 0x608);
        assert_eq!(u32_at(f, GPE0_BLK), 0);
        assert_eq!((f[PM1_EVT_LEN], f[PM1_CNT_LEN], f[PM_TMR_LEN]), (4, 2, 4));
        assert_eq!(f[CENTURY], 0x32);
        assert_eq!(u16_at(f, IAPC_BOOT_ARCH), 0b111);
        let flags = u32_at(f, FLAGS);
        assert_eq!(
            flags & Flags::HwReducedAcpi as u32,
            0,
            "not hardware-reduced"
        );
        assert_eq!(flags & Flags::TmrValExt as u32, 0, "24-bit PM timer");
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // Generic addresses: system IO, width, offset 0, access size, port.
        let gas = |o: usize| (f[o], f[o + 1], f[o + 2], f[o + 3], u64_at(f, o + 4));
        assert_eq!(gas(RESET_REG), (1, 8, 0, 1, 0xcf9));
        assert_eq!(f[RESET_VALUE], 6);
        assert_eq!(gas(X_PM1A_EVT_BLK), (1, 32, 0, 2, 0x600));
        assert_eq!(gas(X_PM1A_CNT_BLK), (1, 16, 0, 2, 0x604));
        assert_eq!(gas(X_PM_TMR_BLK), (1, 32, 0, 3, 0x608));
    }

    #[test]
    fn facs_header() {
        let t = build(AcpiConfig::default());
        let o = (t.facs - t.base) as usize;
        assert_eq!(&t.image[o..o + 4], b"FACS");
        assert_eq!(u32_at(&t.image, o + 4), 64);
    }

    #[test]
    fn dsdt_declares_s5() {
        let t = build(AcpiConfig::default());
        let d = table(&t, t.dsdt, b"DSDT");
        assert_eq!(d[8], DSDT_REVISION);
        // NameOp "_S5_" PackageOp PkgLength(6) NumElements(4) Zero Zero Zero Zero: the sleep
        // type pm.rs powers off on (0 = ZeroOp).
        assert_eq!(pm::S5_SLP_TYP, 0);
        assert_eq!(
            &d[36..48],
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0, 0, 0, 0]
        );
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_declares_the_pci_root_bridge_and_its_interrupt_link() {
        let t = build(AcpiConfig::default());
        let d = table(&t, t.dsdt, b"DSDT");
        // Scope (\_SB_) holding Device (PCI0) and Device (LNKA).
        let scope = find(d, b"\\_SB_").expect("\\_SB_ scope");
        // ScopeOp, then a PkgLength of one to four bytes.
        assert!(d[scope - 5..scope - 1].contains(&0x10), "ScopeOp");
        assert!(find(d, b"PCI0").is_some_and(|i| i > scope));
        assert!(find(d, b"LNKA").is_some_and(|i| i > scope));
        // _HIDs as EISA IDs: PNP0A03 (PCI root bridge), PNP0C0F (PCI interrupt link).
        let eisa = |id: &str| aml_bytes(&aml::EISAName::new(id));
        assert!(find(d, &eisa("PNP0A03")).is_some());
        assert!(find(d, &eisa("PNP0C0F")).is_some());
        // The memory window is the PCI host's: DWord memory descriptor, min and max.
        let mut window = Vec::new();
        window.extend_from_slice(&(pci::PCI_MMIO_START as u32).to_le_bytes());
        window.extend_from_slice(&((pci::PCI_MMIO_END - 1) as u32).to_le_bytes());
        assert!(find(d, &window).is_some(), "memory window");
        // The configuration ports: IO descriptor (16-bit decode) 0xCF8, length 8.
        assert!(find(d, &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]).is_some());
        // The link's interrupt: extended IRQ descriptor, consumer, level, active high,
        // shared (flags 0b1001), one interrupt: PCI_IRQ. In _PRS and _CRS.
        let irq = [0x89, 0x06, 0x00, 0x09, 0x01, PCI_IRQ, 0, 0, 0];
        let first = find(d, &irq).expect("extended IRQ descriptor");
        assert!(find(&d[first + 1..], &irq).is_some(), "_PRS and _CRS");
        // _PRT: one entry per slot 1-31, each (slot << 16 | 0xFFFF, INTA#, \_SB_.LNKA, 0).
        for slot in 1u32..32 {
            // PackageOp, PkgLength 19, four elements, DWordPrefix.
            let mut entry = vec![0x12, 0x13, 0x04, 0x0c];
            entry.extend_from_slice(&((slot << 16) | 0xffff).to_le_bytes());
            entry.extend_from_slice(&[0x00, b'\\', 0x2e]);
            entry.extend_from_slice(b"_SB_LNKA");
            entry.push(0x00);
            assert!(find(d, &entry).is_some(), "_PRT entry for slot {slot}");
        }
    }

    fn aml_bytes(a: &dyn Aml) -> Vec<u8> {
        let mut v = Vec::new();
        a.to_aml_bytes(&mut v);
        v
    }

    #[test]
    fn madt_has_one_enabled_local_apic_and_no_ioapic() {
        let t = build(AcpiConfig::default());
        let m = table(&t, t.madt, b"APIC");
        assert_eq!(u32_at(m, 36), LAPIC_ADDR);
        assert_eq!(u32_at(m, MADT_FLAGS_OFFSET), MADT_PCAT_COMPAT);
        // Type 0 (processor local APIC), length 8, UID 0, APIC ID 0, flags: enabled.
        assert_eq!(&m[44..], &[0, 8, 0, 0, 1, 0, 0, 0]);
    }

    /// The MADT's interrupt controller structures, split by their length bytes.
    fn madt_structures(m: &[u8]) -> Vec<&[u8]> {
        let mut structures = Vec::new();
        let mut o = 44;
        while o < m.len() {
            let len = usize::from(m[o + 1]);
            assert!(
                len >= 2 && o + len <= m.len(),
                "structure at {o} overruns the table"
            );
            structures.push(&m[o..o + len]);
            o += len;
        }
        structures
    }

    #[test]
    fn madt_with_ioapic_declares_overrides_and_nmi() {
        let t = build(AcpiConfig { with_ioapic: true });
        let m = table(&t, t.madt, b"APIC");
        assert_eq!(m[8], 1, "MADT revision");
        assert_eq!(u32_at(m, 36), LAPIC_ADDR);
        assert_eq!(u32_at(m, MADT_FLAGS_OFFSET), MADT_PCAT_COMPAT);
        assert_eq!(m.len(), 44 + 8 + 12 + 10 + 10 + 10 + 6);
        let s = madt_structures(m);
        assert_eq!(s.len(), 6);
        // Processor local APIC: UID 0, APIC ID 0, enabled.
        assert_eq!(s[0], &[0, 8, 0, 0, 1, 0, 0, 0]);
        // IO-APIC: ID 0, reserved, address 0xFEC00000, GSI base 0.
        assert_eq!(s[1], &[1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0]);
        assert_eq!(u64::from(u32_at(s[1], 4)), ioapic::IOAPIC_BASE);
        // Interrupt source override: bus ISA, IRQ0 -> GSI 2, flags 0 (conforming).
        assert_eq!(s[2], &[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
        // IRQ9 (the SCI) -> GSI 9, flags 0x000d: active high (01), level (11).
        assert_eq!(s[3], &[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]);
        // IRQ11 (PCI INTA# through LNKA) -> GSI 11, level, active high, as LNKA's _CRS.
        assert_eq!(s[4], &[2, 10, 0, 11, 11, 0, 0, 0, 0x0d, 0]);
        assert_eq!(PCI_IRQ, 11);
        // Local APIC NMI: all processors, flags 0, LINT1.
        assert_eq!(s[5], &[4, 6, 0xff, 0, 0, 1]);
        // The overrides agree with the IO-APIC model's wiring and the FADT's SCI.
        assert_eq!(ioapic::gsi_for_isa_irq(0), Some(s[2][4]));
        let f = table(&t, t.fadt, b"FACP");
        assert_eq!(u16_at(f, fadt_off::SCI_INT), u16::from(s[3][3]));
        assert_eq!(ioapic::gsi_for_isa_irq(pm::SCI_IRQ), Some(s[3][4]));
        assert_eq!(
            ioapic::IoApic::new().id(),
            IOAPIC_ID,
            "the ID register agrees"
        );
    }

    #[test]
    fn ioapic_option_changes_only_the_madt() {
        let plain = build(AcpiConfig::default());
        let with = build(AcpiConfig { with_ioapic: true });
        assert_eq!(AcpiConfig::default(), AcpiConfig { with_ioapic: false });
        for (addr, sig) in [(plain.fadt, b"FACP"), (plain.dsdt, b"DSDT")] {
            assert_eq!(table(&plain, addr, sig), table(&with, addr, sig));
        }
        assert_eq!((plain.facs, plain.madt), (with.facs, with.madt));
        let x = table(&with, with.xsdt, b"XSDT");
        assert_eq!((u64_at(x, 36), u64_at(x, 44)), (with.fadt, with.madt));
        assert_eq!(madt_structures(table(&plain, plain.madt, b"APIC")).len(), 1);
        assert!(ACPI_BASE + with.image.len() as u64 <= ACPI_END);
    }

    #[test]
    fn write_with_ioapic_puts_that_madt_in_guest_memory() {
        let mut mem = GuestMemory::new(2 << 20).unwrap();
        let config = AcpiConfig { with_ioapic: true };
        assert_eq!(write_with(&mut mem, config).unwrap(), ACPI_BASE);
        let t = build(config);
        let mut image = vec![0; t.image.len()];
        mem.read(t.base, &mut image).unwrap();
        assert_eq!(image, t.image);
    }

    #[test]
    fn write_puts_the_image_in_guest_memory() {
        let mut mem = GuestMemory::new(2 << 20).unwrap();
        let rsdp = write(&mut mem).unwrap();
        let mut sig = [0u8; 8];
        mem.read(rsdp, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
    }
}
