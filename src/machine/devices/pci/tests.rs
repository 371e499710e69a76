//! Unit tests of the PCI host: the configuration mechanism, the host bridge, and plugged-in
//! functions driven the way Linux probes them.

use super::super::IrqLines;
use super::*;
use std::cell::RefCell;
use std::rc::Rc;

struct Bus {
    pci: PciHost,
    irq: IrqLines,
    requests: Vec<MachineRequest>,
}

impl Bus {
    fn new() -> Self {
        Self::with(PciHost::new())
    }
    fn with(pci: PciHost) -> Self {
        Bus {
            pci,
            irq: IrqLines::default(),
            requests: Vec::new(),
        }
    }
    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        self.pci.read(port - PCI_BASE, size, &mut ctx)
    }
    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        self.pci.write(port - PCI_BASE, size, value, &mut ctx);
    }
    /// `PCI_CONF1_ADDRESS`.
    fn conf1_address(bus: u32, devfn: u32, reg: u32) -> u32 {
        0x8000_0000 | ((reg & 0xf00) << 16) | (bus << 16) | (devfn << 8) | (reg & 0xfc)
    }
    /// `pci_conf1_read`.
    fn conf_read(&mut self, bus: u32, devfn: u32, reg: u32, len: u8) -> u32 {
        self.io_out(0xcf8, 4, Self::conf1_address(bus, devfn, reg));
        match len {
            1 => self.io_in(0xcfc + (reg & 3) as u16, 1),
            2 => self.io_in(0xcfc + (reg & 2) as u16, 2),
            _ => self.io_in(0xcfc, 4),
        }
    }
    /// `pci_conf1_write`.
    fn conf_write(&mut self, bus: u32, devfn: u32, reg: u32, len: u8, value: u32) {
        self.io_out(0xcf8, 4, Self::conf1_address(bus, devfn, reg));
        match len {
            1 => self.io_out(0xcfc + (reg & 3) as u16, 1, value),
            2 => self.io_out(0xcfc + (reg & 2) as u16, 2, value),
            _ => self.io_out(0xcfc, 4, value),
        }
    }
}

/// `pci_check_type1` and `pci_sanity_check` (arch/x86/pci/direct.c).
#[test]
fn linux_detects_mechanism_1() {
    let mut b = Bus::new();
    b.io_out(0xcfb, 1, 0x01);
    let tmp = b.io_in(0xcf8, 4);
    b.io_out(0xcf8, 4, 0x8000_0000);
    assert_eq!(b.io_in(0xcf8, 4), 0x8000_0000);
    let found = (0..32 * 8).step_by(8).any(|devfn| {
        let class = b.conf_read(0, devfn, 0x0a, 2);
        let vendor = b.conf_read(0, devfn, 0x00, 2);
        class == 0x0600 || vendor == 0x8086
    });
    assert!(found);
    b.io_out(0xcf8, 4, tmp);
    assert_eq!(b.io_in(0xcf8, 4), 0);
    // Mechanism #2's probe must fail (it would need 0 back from 0xCF8 and 0xCFA).
    b.io_out(0xcfb, 1, 0);
    b.io_out(0xcf8, 1, 0);
    b.io_out(0xcfa, 1, 0);
    assert_eq!(b.io_in(0xcf8, 1), 0xff);
    assert_eq!(b.io_in(0xcfa, 1), 0xff);
}

#[test]
fn host_bridge_identity() {
    let mut b = Bus::new();
    assert_eq!(b.conf_read(0, 0, 0x00, 4), 0x1237_8086);
    assert_eq!(b.conf_read(0, 0, 0x00, 2), 0x8086);
    assert_eq!(b.conf_read(0, 0, 0x02, 2), 0x1237);
    assert_eq!(b.conf_read(0, 0, 0x08, 4), 0x0600_0002);
    assert_eq!(b.conf_read(0, 0, 0x0b, 1), 0x06);
    assert_eq!(b.conf_read(0, 0, 0x0e, 1), 0x00);
    assert_eq!(b.conf_read(0, 0, 0x06, 2), u32::from(HOST_BRIDGE_STATUS));
    // No BARs, no capabilities, no interrupt pin.
    for reg in (0x10..0x28).step_by(4) {
        assert_eq!(b.conf_read(0, 0, reg, 4), 0);
    }
    assert_eq!(b.conf_read(0, 0, 0x34, 1), 0);
    assert_eq!(b.conf_read(0, 0, 0x3d, 1), 0);
    // Extended registers (AMD IO-ECS) are absent.
    assert_eq!(b.conf_read(0, 0, 0x100, 4), u32::MAX);
}

#[test]
fn absent_devices_read_all_ones() {
    let mut b = Bus::new();
    assert_eq!(b.conf_read(0, 1 << 3, 0x00, 4), u32::MAX);
    assert_eq!(b.conf_read(0, 1, 0x00, 2), 0xffff); // 00:00.1
    assert_eq!(b.conf_read(1, 0, 0x00, 1), 0xff);
    assert_eq!(b.conf_read(0, 31 << 3 | 7, 0x0a, 2), 0xffff);
    b.conf_write(0, 1 << 3, 0x04, 2, 0x0007);
    assert_eq!(b.conf_read(0, 1 << 3, 0x04, 2), 0xffff);
    // Enable bit clear: nothing is selected.
    b.io_out(0xcf8, 4, 0x0000_0000);
    assert_eq!(b.io_in(0xcfc, 4), u32::MAX);
}

#[test]
fn host_bridge_writes() {
    let mut b = Bus::new();
    // BAR sizing: all-ones written, 0 read back.
    b.conf_write(0, 0, 0x10, 4, u32::MAX);
    assert_eq!(b.conf_read(0, 0, 0x10, 4), 0);
    // The ID is read-only.
    b.conf_write(0, 0, 0x00, 4, 0);
    assert_eq!(b.conf_read(0, 0, 0x00, 4), 0x1237_8086);
    // Command: only the writable bits change.
    b.conf_write(0, 0, 0x04, 2, 0xffff);
    assert_eq!(b.conf_read(0, 0, 0x04, 2), u32::from(COMMAND_WRITABLE));
    b.conf_write(0, 0, 0x04, 2, 0);
    assert_eq!(b.conf_read(0, 0, 0x04, 2), 0);
    // A dword write at 0x04 leaves the status register alone.
    b.conf_write(0, 0, 0x04, 4, 0xffff_0006);
    assert_eq!(
        b.conf_read(0, 0, 0x04, 4),
        u32::from(HOST_BRIDGE_STATUS) << 16 | 0x0006
    );
    // Byte write to the command's high byte.
    b.conf_write(0, 0, 0x05, 1, 0x01);
    assert_eq!(b.conf_read(0, 0, 0x04, 2), 0x0106);
}

#[test]
fn address_register_readback() {
    let mut b = Bus::new();
    b.io_out(0xcf8, 4, 0xffff_ffff);
    assert_eq!(b.io_in(0xcf8, 4), ADDR_WRITABLE);
    // Byte and word writes at 0xCF8 do not touch CONFIG_ADDRESS.
    b.io_out(0xcf8, 2, 0);
    b.io_out(0xcfa, 2, 0);
    assert_eq!(b.io_in(0xcf8, 4), ADDR_WRITABLE);
}

/// `reboot=pci`: `cf9 = inb(0xcf9) & ~code; outb(cf9 | 2, 0xcf9); outb(cf9 | code, 0xcf9)`.
#[test]
fn reset_control_register() {
    let mut b = Bus::new();
    let code = 0x0e;
    let cf9 = b.io_in(0xcf9, 1) & !code;
    b.io_out(0xcf9, 1, cf9 | 2);
    assert!(b.requests.is_empty());
    assert_eq!(b.io_in(0xcf9, 1), 2);
    b.io_out(0xcf9, 1, cf9 | code);
    assert_eq!(b.requests, vec![MachineRequest::Reset]);
    let mut b = Bus::new();
    b.io_out(0xcf9, 1, 0x06);
    assert_eq!(b.requests, vec![MachineRequest::Reset]);
}

/// What a test sees of its [`Fake`] after handing it to the host.
#[derive(Default)]
struct FakeState {
    pending: bool,
    work: bool,
    processed: u32,
    writes: Vec<(usize, u64, u8, u64)>,
}

/// A function with a 64-bit BAR 0 (16 KiB), a 32-bit prefetchable BAR 2 (4 KiB), INTA#.
struct Fake {
    config: ConfigSpace,
    state: Rc<RefCell<FakeState>>,
}

const FAKE_SLOT: u8 = 3;
const FAKE_DEVFN: u32 = (FAKE_SLOT as u32) << 3;

impl Fake {
    fn new() -> Self {
        let mut config = ConfigSpace::new(&Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: 0x01_0000,
            subsystem_vendor: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: INTERRUPT_PIN_INTA,
        });
        config.add_bar(
            0,
            Bar {
                size: 0x4000,
                kind: BarKind::Memory64,
                prefetchable: false,
            },
        );
        config.add_bar(
            2,
            Bar {
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: true,
            },
        );
        Fake {
            config,
            state: Rc::default(),
        }
    }
}

impl PciFunction for Fake {
    fn name(&self) -> &str {
        "fake"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, bar: usize, offset: u64, size: u8) -> u64 {
        (bar as u64) << 32 | offset << 8 | u64::from(size)
    }
    fn bar_write(&mut self, bar: usize, offset: u64, size: u8, value: u64) {
        let mut s = self.state.borrow_mut();
        s.writes.push((bar, offset, size, value));
        s.work = true;
    }
    fn interrupt_pending(&self) -> bool {
        self.state.borrow().pending
    }
    fn has_work(&self) -> bool {
        self.state.borrow().work
    }
    fn process(&mut self, _mem: &mut dyn DmaMemory) {
        let mut s = self.state.borrow_mut();
        s.work = false;
        s.processed += 1;
        s.pending = true;
    }
}

/// The host with a [`Fake`] at 00:03.0 wired to IRQ 11.
fn fake_bus() -> (Bus, Rc<RefCell<FakeState>>) {
    let mut pci = PciHost::new();
    let f = Fake::new();
    let state = f.state.clone();
    assert_eq!(pci.add(FAKE_SLOT, Box::new(f), Some(11)), Ok(1));
    (Bus::with(pci), state)
}

/// Linux's `pci_size`.
fn pci_size(base: u64, maxbase: u64, mask: u64) -> u64 {
    let size = mask & maxbase;
    if size == 0 {
        return 0;
    }
    let size = size & !(size - 1);
    if base == maxbase && ((base | (size - 1)) & mask) != mask {
        return 0;
    }
    size
}

/// Linux's `__pci_read_base` for a BAR at `pos`: (address, size, 64-bit). Memory
/// decoding is turned off while the BAR holds all-ones, then restored.
fn linux_read_base(b: &mut Bus, devfn: u32, pos: u32) -> (u64, u64, bool) {
    let orig_cmd = b.conf_read(0, devfn, 0x04, 2);
    if orig_cmd & 0x3 != 0 {
        b.conf_write(0, devfn, 0x04, 2, orig_cmd & !0x3);
    }
    let l = b.conf_read(0, devfn, pos, 4);
    b.conf_write(0, devfn, pos, 4, l | !0);
    let mut sz = b.conf_read(0, devfn, pos, 4);
    b.conf_write(0, devfn, pos, 4, l);
    if sz == u32::MAX {
        sz = 0;
    }
    assert_eq!(l & 1, 0, "memory BAR");
    let is64 = l & 0x6 == 0x4;
    let mut l64 = u64::from(l & !0xf);
    let mut sz64 = u64::from(sz & !0xf);
    let mut mask64 = 0xffff_fff0u64;
    if is64 {
        let l = b.conf_read(0, devfn, pos + 4, 4);
        b.conf_write(0, devfn, pos + 4, 4, !0);
        let sz = b.conf_read(0, devfn, pos + 4, 4);
        b.conf_write(0, devfn, pos + 4, 4, l);
        l64 |= u64::from(l) << 32;
        sz64 |= u64::from(sz) << 32;
        mask64 |= !0u64 << 32;
    }
    if orig_cmd & 0x3 != 0 {
        b.conf_write(0, devfn, 0x04, 2, orig_cmd);
    }
    (l64, pci_size(l64, sz64, mask64), is64)
}

/// `pci_read_bases(dev, 6, PCI_ROM_ADDRESS)` plus the header fields `pci_setup_device`
/// reads: the firmware-style assignment comes back as Linux sees it.
#[test]
fn linux_reads_bases_of_a_plugged_function() {
    let (mut b, _) = fake_bus();
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x00, 4), 0x1042_1af4);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x08, 4), 0x0100_0001);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x0e, 1), 0);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x2c, 4), 0x1100_1af4);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x3c, 1), 11, "interrupt line");
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x3d, 1), 1, "INTA#");
    let cmd = b.conf_read(0, FAKE_DEVFN, 0x04, 2);
    assert_eq!(
        cmd,
        u32::from(COMMAND_MEMORY),
        "memory decoding on, no bus master"
    );
    let mut bars = Vec::new();
    let mut pos = 0;
    while pos < 6 {
        let (base, size, is64) = linux_read_base(&mut b, FAKE_DEVFN, 0x10 + 4 * pos);
        bars.push((pos, base, size, is64));
        pos += if is64 { 2 } else { 1 };
    }
    assert_eq!(
        bars,
        vec![
            (0, PCI_MMIO_START, 0x4000, true),
            (2, PCI_MMIO_START + 0x4000, 0x1000, false),
            (3, 0, 0, false),
            (4, 0, 0, false),
            (5, 0, 0, false),
        ]
    );
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x10, 4), 0xc000_0004);
    assert_eq!(
        b.conf_read(0, FAKE_DEVFN, 0x18, 4),
        0xc000_4008,
        "prefetchable"
    );
    // The expansion ROM: all-ones (minus the enable bit) reads back 0, no ROM.
    b.conf_write(0, FAKE_DEVFN, 0x30, 4, 0xffff_f800);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x30, 4), 0);
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x04, 2), cmd, "command restored");
    // Sizing left the assignment alone.
    assert!(b.pci.mmio_owner(PCI_MMIO_START).is_some());
}

#[test]
fn mmio_follows_bars_and_memory_enable() {
    let (mut b, state) = fake_bus();
    let mut irq = IrqLines::default();
    assert_eq!(
        b.pci.mmio_owner(PCI_MMIO_START + 0x3ffc),
        Some(MmioTarget {
            function: 1,
            bar: 0,
            offset: 0x3ffc
        })
    );
    assert_eq!(
        b.pci.mmio_owner(PCI_MMIO_START + 0x4000).map(|t| t.bar),
        Some(2)
    );
    assert_eq!(b.pci.mmio_owner(PCI_MMIO_START + 0x5000), None);
    assert_eq!(b.pci.mmio_owner(PCI_MMIO_START - 1), None);
    assert_eq!(
        b.pci.mmio_read(PCI_MMIO_START + 0x4010, 4, &mut irq),
        Some(2 << 32 | 0x10 << 8 | 4)
    );
    assert!(b.pci.mmio_write(PCI_MMIO_START + 0x20, 2, 0xabcd, &mut irq));
    assert_eq!(state.borrow().writes, vec![(0, 0x20, 2, 0xabcd)]);
    // Memory decoding off: nothing answers.
    b.conf_write(0, FAKE_DEVFN, 0x04, 2, 0);
    assert_eq!(b.pci.mmio_owner(PCI_MMIO_START), None);
    assert_eq!(b.pci.mmio_read(PCI_MMIO_START, 4, &mut irq), None);
    assert!(!b.pci.mmio_write(PCI_MMIO_START, 4, 0, &mut irq));
    assert!(b.pci.mmio_ranges().is_empty());
    // Linux moves BAR 0 above 4 GiB and BAR 2 elsewhere, then turns decoding back on.
    b.conf_write(0, FAKE_DEVFN, 0x10, 4, 0x0000_8000);
    b.conf_write(0, FAKE_DEVFN, 0x14, 4, 0x1);
    b.conf_write(0, FAKE_DEVFN, 0x18, 4, 0xd000_0123);
    b.conf_write(0, FAKE_DEVFN, 0x04, 2, u32::from(COMMAND_MEMORY));
    assert_eq!(
        b.conf_read(0, FAKE_DEVFN, 0x18, 4),
        0xd000_0008,
        "low bits read-only"
    );
    assert_eq!(
        b.pci.mmio_ranges(),
        vec![(1, 0, 0x1_0000_8000, 0x4000), (1, 2, 0xd000_0000, 0x1000)]
    );
    assert_eq!(b.pci.mmio_owner(PCI_MMIO_START), None);
    assert_eq!(
        b.pci.mmio_owner(0x1_0000_8004),
        Some(MmioTarget {
            function: 1,
            bar: 0,
            offset: 4
        })
    );
    // A BAR at 0 decodes nothing.
    b.conf_write(0, FAKE_DEVFN, 0x18, 4, 0);
    assert_eq!(b.pci.mmio_owner(0x10), None);
    assert_eq!(b.pci.mmio_ranges().len(), 1);
}

#[test]
fn intx_is_wired_to_the_isa_line() {
    let (mut b, state) = fake_bus();
    b.pci.update_irq(&mut b.irq);
    assert!(!b.irq.get(11));
    state.borrow_mut().pending = true;
    b.pci.update_irq(&mut b.irq);
    assert!(b.irq.get(11));
    assert_eq!(
        b.conf_read(0, FAKE_DEVFN, 0x06, 2) & 0x08,
        0x08,
        "status: interrupt"
    );
    // INTx disable masks the pin, not the status bit.
    b.conf_write(
        0,
        FAKE_DEVFN,
        0x04,
        2,
        u32::from(COMMAND_MEMORY | COMMAND_INTX_DISABLE),
    );
    assert!(!b.irq.get(11), "a config write refreshes the line");
    assert_eq!(b.conf_read(0, FAKE_DEVFN, 0x06, 2) & 0x08, 0x08);
    b.conf_write(0, FAKE_DEVFN, 0x04, 2, u32::from(COMMAND_MEMORY));
    assert!(b.irq.get(11));
    // A second function on the same line: the line is the OR.
    let other = Fake::new();
    other.state.borrow_mut().pending = true;
    b.pci.add(4, Box::new(other), Some(11)).unwrap();
    state.borrow_mut().pending = false;
    b.pci.update_irq(&mut b.irq);
    assert!(b.irq.get(11));
    // Other lines are left alone.
    b.irq.set(4, true);
    b.pci.update_irq(&mut b.irq);
    assert!(b.irq.get(4));
}

#[test]
fn dma_waits_for_bus_master() {
    let (mut b, state) = fake_bus();
    let mut mem = crate::machine::devices::dma::VecMemory::new(0x1000);
    assert!(b.pci.mmio_write(PCI_MMIO_START, 2, 0, &mut b.irq));
    assert!(state.borrow().work);
    assert!(!b.pci.has_pending_work(), "no bus master yet");
    b.pci.process(&mut mem, &mut b.irq);
    assert_eq!(state.borrow().processed, 0);
    // pci_set_master.
    let cmd = b.conf_read(0, FAKE_DEVFN, 0x04, 2);
    b.conf_write(0, FAKE_DEVFN, 0x04, 2, cmd | u32::from(COMMAND_MASTER));
    assert!(b.pci.has_pending_work());
    b.pci.process(&mut mem, &mut b.irq);
    assert_eq!(state.borrow().processed, 1);
    assert!(!b.pci.has_pending_work());
    assert!(b.irq.get(11), "process refreshes the line");
}

#[test]
fn add_checks_slot_irq_and_window() {
    let mut pci = PciHost::new();
    assert_eq!(
        pci.add(0, Box::new(Fake::new()), None),
        Err(PciError::SlotOutOfRange(0))
    );
    assert_eq!(
        pci.add(32, Box::new(Fake::new()), None),
        Err(PciError::SlotOutOfRange(32))
    );
    assert_eq!(
        pci.add(1, Box::new(Fake::new()), Some(16)),
        Err(PciError::BadIrq(16))
    );
    assert_eq!(pci.add(1, Box::new(Fake::new()), None), Ok(1));
    assert_eq!(
        pci.add(1, Box::new(Fake::new()), None),
        Err(PciError::SlotInUse(1))
    );
    // No IRQ wired: the line register says "not connected".
    assert_eq!(
        pci.function(1).unwrap().config().u8(CFG_INTERRUPT_LINE),
        INTERRUPT_LINE_NONE
    );
    // The second function's BARs follow the first's.
    assert_eq!(pci.add(2, Box::new(Fake::new()), None), Ok(2));
    assert_eq!(
        pci.function(2).unwrap().config().bar_address(0),
        PCI_MMIO_START + 0x8000
    );
    let mut huge = Fake::new();
    huge.config.add_bar(
        4,
        Bar {
            size: 1 << 32,
            kind: BarKind::Memory64,
            prefetchable: false,
        },
    );
    assert!(matches!(
        pci.add(3, Box::new(huge), None),
        Err(PciError::WindowFull { bar: 4, .. })
    ));
}
