//! The device reads KRR did not record (krr-spec 3.9): at record they were answered by KVM's
//! in-kernel devices, at replay by QEMU's models loaded from the snapshot. krr serves them
//! with small register files: the 8259s' mask registers, the xAPIC page and the IO-APIC's
//! indirect registers, initialised from the snapshot where it holds them. Everything else
//! that is neither RAM nor the ring reads as an absent device (all ones). The serial port's
//! transmit register is the console.

use crate::krr_rec::migration::devices::{Apic, IoApic, Pic, IOAPIC_PINS};

/// xAPIC register offsets within the 4 KiB page.
mod reg {
    pub const ID: usize = 0x20;
    pub const VERSION: usize = 0x30;
    pub const TPR: usize = 0x80;
    pub const PPR: usize = 0xa0;
    pub const EOI: usize = 0xb0;
    pub const LDR: usize = 0xd0;
    pub const DFR: usize = 0xe0;
    pub const SVR: usize = 0xf0;
    pub const ISR: usize = 0x100;
    pub const TMR: usize = 0x180;
    pub const IRR: usize = 0x200;
    pub const ESR: usize = 0x280;
    pub const ICR: usize = 0x300;
    pub const LVT: usize = 0x320;
    pub const TIMER_INITIAL: usize = 0x380;
    pub const TIMER_DIVIDE: usize = 0x3e0;
}

/// QEMU's local APIC version register: version 0x14, six LVT entries.
const APIC_VERSION: u32 = 0x0005_0014;
/// QEMU's IO-APIC: version 0x20, 24 pins.
const IOAPIC_VERSION: u32 = 0x0017_0020;
const IOAPIC_BASE: u64 = 0xfec0_0000;

#[derive(Clone)]
pub struct Devices {
    /// Interrupt mask registers of the master and slave 8259, from the snapshot's `i8259`
    /// sections (`None`: the snapshot has none and the guest has not written it since; a
    /// read then is reported).
    pub pic_imr: [Option<u8>; 2],
    apic_base: u64,
    /// Each vCPU's xAPIC registers (the page is per CPU); `current` is the running vCPU's.
    apics: Vec<Vec<u32>>,
    pub current: usize,
    ioapic_select: u32,
    ioapic: [u32; 0x40],
    serial_lcr: u8,
    /// Bytes the guest wrote to COM1.
    pub console: Vec<u8>,
}

/// A local APIC's register file from its snapshot state, and its base address.
fn apic_registers(apic: Option<&Apic>) -> (u64, Vec<u32>) {
    {
        let mut regs = vec![0u32; 0x400 / 4];
        let mut set = |off: usize, v: u32| regs[off / 4] = v;
        let mut base = 0xfee0_0000u64;
        if let Some(a) = apic {
            base = (a.apicbase & 0xffff_f000) as u64;
            set(reg::ID, (a.id as u32) << 24);
            set(reg::TPR, a.tpr as u32);
            set(reg::LDR, (a.log_dest as u32) << 24);
            set(reg::DFR, ((a.dest_mode as u32) << 28) | 0x0fff_ffff);
            set(reg::SVR, a.spurious_vec);
            for i in 0..8 {
                set(reg::ISR + 16 * i, a.isr[i]);
                set(reg::TMR + 16 * i, a.tmr[i]);
                set(reg::IRR + 16 * i, a.irr[i]);
            }
            for (i, &lvt) in a.lvt.iter().enumerate() {
                set(reg::LVT + 16 * i, lvt);
            }
            set(reg::ESR, a.esr);
            set(reg::ICR, a.icr[0]);
            set(reg::ICR + 0x10, a.icr[1]);
            set(reg::TIMER_INITIAL, a.initial_count);
            set(reg::TIMER_DIVIDE, a.divide_conf);
        }
        set(reg::VERSION, APIC_VERSION);
        (base, regs)
    }
}

impl Devices {
    /// The devices of a machine whose vCPUs have local APICs `apics` (in vCPU order), with
    /// the snapshot's 8259s (master, slave) and IO-APIC where it holds them.
    pub fn new(apics: &[Option<&Apic>], pics: [Option<&Pic>; 2], io: Option<&IoApic>) -> Devices {
        let files: Vec<(u64, Vec<u32>)> = apics.iter().map(|a| apic_registers(*a)).collect();
        let base = files.first().map_or(0xfee0_0000, |f| f.0);
        let regs: Vec<Vec<u32>> = files.into_iter().map(|f| f.1).collect();
        let mut ioapic = [0u32; 0x40];
        ioapic[1] = IOAPIC_VERSION;
        for pin in 0..IOAPIC_PINS {
            ioapic[0x10 + 2 * pin] = 1 << 16; // masked
        }
        let mut ioapic_select = 0;
        if let Some(io) = io {
            ioapic[0] = (io.id as u32) << 24;
            for (pin, e) in io.ioredtbl.iter().enumerate() {
                ioapic[0x10 + 2 * pin] = *e as u32;
                ioapic[0x11 + 2 * pin] = (*e >> 32) as u32;
            }
            ioapic_select = io.ioregsel as u32;
        }
        Devices {
            pic_imr: pics.map(|p| p.map(|p| p.imr)),
            apic_base: base,
            apics: regs,
            current: 0,
            ioapic_select,
            ioapic,
            serial_lcr: 0,
            console: Vec::new(),
        }
    }

    /// A read KRR serves from a model: `Some(value)`, or `None` when it comes from the log.
    /// PIC IMR reads of 8 and 32 bits only (QEMU's replay helpers test those sizes).
    pub fn port_in(&self, port: u16, size: u8) -> Option<Option<u32>> {
        let chip = match port {
            0x21 => 0,
            0xa1 => 1,
            _ => return None,
        };
        (size == 1 || size == 4).then(|| self.pic_imr[chip].map(|v| v as u32))
    }

    pub fn port_out(&mut self, port: u16, value: u32) {
        match port {
            // OCW1 (a data-port write outside an ICW sequence; Linux writes ICWs only at
            // boot, before any recording starts).
            0x21 => self.pic_imr[0] = Some(value as u8),
            0xa1 => self.pic_imr[1] = Some(value as u8),
            0x3fb => self.serial_lcr = value as u8,
            0x3f8 if self.serial_lcr & 0x80 == 0 => self.console.push(value as u8),
            _ => {}
        }
    }

    /// An MMIO read of the APIC or IO-APIC; `None` when neither is there.
    pub fn mmio_read(&self, phys: u64, size: u8) -> Option<u64> {
        if phys & !0xfff == self.apic_base {
            let off = (phys & 0xff0) as usize;
            let v = match off {
                reg::PPR => self.apics[self.current][reg::TPR / 4] & 0xf0,
                // The current count: no timer runs in replay (QEMU's callback is a no-op).
                0x390 => 0,
                _ => self.apics[self.current][off / 4],
            };
            return Some(sized(v, phys, size));
        }
        if phys & !0xfff == IOAPIC_BASE {
            let v = match phys & 0xff {
                0x00 => self.ioapic_select,
                0x10 => self.ioapic[(self.ioapic_select & 0x3f) as usize],
                _ => 0,
            };
            return Some(sized(v, phys, size));
        }
        None
    }

    /// An MMIO write; false when no model is there.
    pub fn mmio_write(&mut self, phys: u64, value: u64) -> bool {
        if phys & !0xfff == self.apic_base {
            let off = (phys & 0xff0) as usize;
            let apic = &mut self.apics[self.current];
            match off {
                reg::EOI => {
                    // Clear the highest in-service vector.
                    if let Some(i) = (0..8).rev().find(|&i| apic[(reg::ISR + 16 * i) / 4] != 0) {
                        let w = &mut apic[(reg::ISR + 16 * i) / 4];
                        *w &= !(1 << (31 - w.leading_zeros()));
                    }
                }
                reg::ID | reg::TPR | reg::LDR | reg::DFR | reg::SVR | reg::ESR => {
                    apic[off / 4] = value as u32
                }
                _ if off == reg::ICR || off == reg::ICR + 0x10 => apic[off / 4] = value as u32,
                _ if (reg::LVT..reg::LVT + 0x60).contains(&off) => apic[off / 4] = value as u32,
                reg::TIMER_INITIAL | reg::TIMER_DIVIDE => apic[off / 4] = value as u32,
                _ => {}
            }
            return true;
        }
        if phys & !0xfff == IOAPIC_BASE {
            match phys & 0xff {
                0x00 => self.ioapic_select = value as u32,
                0x10 => {
                    let r = (self.ioapic_select & 0x3f) as usize;
                    if r >= 0x10 || r == 0 {
                        self.ioapic[r] = value as u32;
                    }
                }
                _ => {}
            }
            return true;
        }
        false
    }
}

/// `size` bytes of the 32-bit register `v` read at byte `phys & 3`.
fn sized(v: u32, phys: u64, size: u8) -> u64 {
    let shifted = (v as u64) >> (8 * (phys & 3));
    if size >= 8 {
        shifted
    } else {
        shifted & ((1u64 << (8 * size as u32)) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apic_registers_from_the_snapshot_and_eoi() {
        let a = Apic {
            apicbase: 0xfee0_0900,
            id: 2,
            tpr: 0x20,
            spurious_vec: 0x1ff,
            isr: [0, 0, 0, 0, 0, 0, 0, 1 << 4],
            lvt: [0x10000, 0, 0, 0x700, 0x400, 0xfe],
            ..Default::default()
        };
        let b = Apic { id: 1, ..a.clone() };
        let mut d = Devices::new(&[Some(&a), Some(&b)], [None, None], None);
        assert_eq!(d.mmio_read(0xfee0_0020, 4), Some(2 << 24));
        assert_eq!(d.mmio_read(0xfee0_0030, 4), Some(APIC_VERSION as u64));
        assert_eq!(d.mmio_read(0xfee0_00f0, 4), Some(0x1ff));
        assert_eq!(d.mmio_read(0xfee0_0350, 4), Some(0x700));
        assert_eq!(d.mmio_read(0xfee0_0170, 4), Some(1 << 4));
        assert!(d.mmio_write(0xfee0_00b0, 0));
        assert_eq!(d.mmio_read(0xfee0_0170, 4), Some(0));
        // vCPU 1 has its own page.
        d.current = 1;
        assert_eq!(d.mmio_read(0xfee0_0020, 4), Some(1 << 24));
        assert_eq!(d.mmio_read(0xfee0_0170, 4), Some(1 << 4));
        d.current = 0;
        assert!(d.mmio_write(0xfec0_0000, 0x12));
        assert!(d.mmio_write(0xfec0_0010, 0x31));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(0x31));
        assert!(d.mmio_write(0xfec0_0000, 1));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(IOAPIC_VERSION as u64));
        assert_eq!(d.mmio_read(0xfed0_0000, 4), None);
        assert_eq!(d.port_in(0x21, 1), Some(None));
        d.port_out(0x21, 0xfb);
        assert_eq!(d.port_in(0x21, 1), Some(Some(0xfb)));
        assert_eq!(d.port_in(0x21, 2), None, "16-bit reads come from the log");
        d.port_out(0x3f8, b'k' as u32);
        assert_eq!(d.console, b"k");
    }

    #[test]
    fn pic_masks_and_ioapic_from_the_snapshot() {
        let master = Pic {
            imr: 0xb8,
            ..Pic::default()
        };
        let slave = Pic {
            imr: 0x8f,
            ..Pic::default()
        };
        let mut io = IoApic {
            id: 3,
            ioregsel: 0x12,
            ..IoApic::default()
        };
        io.ioredtbl[1] = 0x0100_0000_0000_0031;
        let mut d = Devices::new(&[None], [Some(&master), Some(&slave)], Some(&io));
        assert_eq!(d.port_in(0x21, 1), Some(Some(0xb8)));
        assert_eq!(d.port_in(0xa1, 1), Some(Some(0x8f)));
        // IOREGSEL as saved: entry 1's low half.
        assert_eq!(d.mmio_read(0xfec0_0000, 4), Some(0x12));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(0x31));
        assert!(d.mmio_write(0xfec0_0000, 0x13));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(0x0100_0000));
        assert!(d.mmio_write(0xfec0_0000, 0));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(3 << 24));
        // Every entry comes from the snapshot, zeros too (not reset's masked entries).
        assert!(d.mmio_write(0xfec0_0000, 0x14));
        assert_eq!(d.mmio_read(0xfec0_0010, 4), Some(0));
    }
}
