//! Tests of virtio-blk on the PCI host, driven the way Linux's virtio_pci and virtio_blk
//! drivers drive it: configuration cycles through ports 0xCF8/0xCFC, MMIO through the host,
//! guest RAM as a [`VecMemory`] that records every DMA write.

use super::blk::*;
use super::disk::{pattern, TempDir};
use super::queue::*;
use super::*;
use crate::machine::devices::dma::VecMemory;
use crate::machine::devices::pci::{self, PciHost, PCI_MMIO_START};
use crate::machine::devices::{DeviceCtx, IrqLines, PortDevice};

const SLOT: u8 = 1;
const DEVFN: u32 = (SLOT as u32) << 3;
const IRQ: u8 = 11;
const RAM: usize = 1 << 20;
const SECTORS: u64 = 64;
/// Ring layout of the test driver (queue size 256).
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
/// Buffers.
const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const TABLE: u64 = 0x40000;
/// The features Linux's virtio_blk driver asks for that this device may offer.
const LINUX_WANTS: u64 =
    F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1;

/// A machine around one virtio-blk function: host, RAM, IRQ lines, and the driver's state.
struct Rig {
    host: PciHost,
    mem: VecMemory,
    irq: IrqLines,
    requests: Vec<crate::machine::devices::MachineRequest>,
    bar: u64,
    /// The driver's next available index.
    avail_idx: u16,
    _dir: TempDir,
    image: std::path::PathBuf,
}

impl Rig {
    fn new(read_only: bool) -> Rig {
        let dir = TempDir::new("virtio");
        let image = dir.image("disk.img", SECTORS);
        let blk = VirtioBlk::open(&image, None, read_only).expect("open image");
        let mut host = PciHost::new();
        host.add(SLOT, Box::new(VirtioPci::new(blk)), Some(IRQ))
            .expect("plug in");
        let mut rig = Rig {
            host,
            mem: VecMemory::new(RAM),
            irq: IrqLines::default(),
            requests: Vec::new(),
            bar: 0,
            avail_idx: 0,
            _dir: dir,
            image,
        };
        let lo = rig.conf_read(0x10, 4) & !0xf;
        let hi = rig.conf_read(0x14, 4);
        rig.bar = u64::from(hi) << 32 | u64::from(lo);
        rig
    }

    fn port_in(&mut self, port: u16, size: u8) -> u32 {
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        self.host.read(port - pci::PCI_BASE, size, &mut ctx)
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) {
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut self.irq,
            requests: &mut self.requests,
        };
        self.host.write(port - pci::PCI_BASE, size, value, &mut ctx);
    }

    /// `pci_conf1_read` of our function.
    fn conf_read(&mut self, reg: u32, len: u8) -> u32 {
        self.port_out(0xcf8, 4, 0x8000_0000 | DEVFN << 8 | (reg & 0xfc));
        match len {
            1 => self.port_in(0xcfc + (reg & 3) as u16, 1),
            2 => self.port_in(0xcfc + (reg & 2) as u16, 2),
            _ => self.port_in(0xcfc, 4),
        }
    }

    fn conf_write(&mut self, reg: u32, len: u8, value: u32) {
        self.port_out(0xcf8, 4, 0x8000_0000 | DEVFN << 8 | (reg & 0xfc));
        match len {
            1 => self.port_out(0xcfc + (reg & 3) as u16, 1, value),
            2 => self.port_out(0xcfc + (reg & 2) as u16, 2, value),
            _ => self.port_out(0xcfc, 4, value),
        }
    }

    fn read(&mut self, offset: u64, size: u8) -> u64 {
        self.host
            .mmio_read(self.bar + offset, size, &mut self.irq)
            .expect("the BAR decodes")
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        assert!(self
            .host
            .mmio_write(self.bar + offset, size, value, &mut self.irq));
    }

    fn status(&mut self) -> u8 {
        self.read(COMMON_OFFSET + COMMON_STATUS, 1) as u8
    }

    fn set_status(&mut self, value: u8) {
        self.write(COMMON_OFFSET + COMMON_STATUS, 1, u64::from(value));
    }

    /// `vp_get_features`.
    fn device_features(&mut self) -> u64 {
        self.write(COMMON_DFSELECT, 4, 0);
        let lo = self.read(COMMON_DF, 4);
        self.write(COMMON_DFSELECT, 4, 1);
        lo | self.read(COMMON_DF, 4) << 32
    }

    /// `vp_finalize_features` + `virtio_features_ok`: whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool {
        self.write(COMMON_GFSELECT, 4, 0);
        self.write(COMMON_GF, 4, features & 0xffff_ffff);
        self.write(COMMON_GFSELECT, 4, 1);
        self.write(COMMON_GF, 4, features >> 32);
        let s = self.status();
        self.set_status(s | STATUS_FEATURES_OK);
        self.status() & STATUS_FEATURES_OK != 0
    }

    /// Reset, ACKNOWLEDGE, DRIVER (what `register_virtio_device` and `virtio_dev_probe` do
    /// before negotiating).
    fn begin(&mut self) {
        self.set_status(0);
        assert_eq!(self.status(), 0, "reset completes at once");
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    }

    /// `setup_vq` for queue 0 with the test's ring addresses (`vp_modern_queue_address`
    /// writes each address as two 32-bit halves), then enable.
    fn setup_queue(&mut self) {
        self.write(COMMON_Q_SELECT, 2, 0);
        assert_eq!(self.read(COMMON_Q_SIZE, 2), u64::from(QUEUE_MAX_SIZE));
        assert_eq!(self.read(COMMON_Q_ENABLE, 2), 0);
        self.write(COMMON_Q_SIZE, 2, u64::from(QUEUE_MAX_SIZE));
        for (lo, addr) in [
            (COMMON_Q_DESCLO, DESC),
            (COMMON_Q_AVAILLO, AVAIL),
            (COMMON_Q_USEDLO, USED),
        ] {
            self.write(lo, 4, addr & 0xffff_ffff);
            self.write(lo + 4, 4, addr >> 32);
        }
        self.write(COMMON_Q_ENABLE, 2, 1);
        assert_eq!(self.read(COMMON_Q_ENABLE, 2), 1);
    }

    /// The whole probe with `features` accepted, bus mastering on, DRIVER_OK.
    fn probe(&mut self, features: u64) {
        let cmd = self.conf_read(0x04, 2);
        self.conf_write(0x04, 2, cmd | u32::from(pci::COMMAND_MASTER));
        self.begin();
        let offered = self.device_features();
        assert!(self.negotiate(offered & features));
        self.setup_queue();
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        self.avail_idx = 0;
    }

    fn put_desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.poke(table + 16 * u64::from(index), &d);
    }

    /// Put a chain of `(addr, len, device-writable)` buffers into descriptors 0.. and make
    /// its head available.
    fn submit(&mut self, bufs: &[(u64, u32, bool)]) {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags =
                if w { VIRTQ_DESC_F_WRITE } else { 0 } | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            self.put_desc(DESC, i as u16, addr, len, flags, i as u16 + 1);
        }
        self.make_available(0);
    }

    fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_MAX_SIZE);
        self.mem
            .poke(AVAIL + AVAIL_RING + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .poke(AVAIL + AVAIL_IDX, &self.avail_idx.to_le_bytes());
    }

    /// `vp_notify` and the machine's next boundary.
    fn kick(&mut self) {
        self.write(NOTIFY_OFFSET, 2, 0);
        assert!(self.host.has_pending_work());
        self.host.process(&mut self.mem, &mut self.irq);
        assert!(!self.host.has_pending_work());
    }

    fn header(&mut self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.poke(HDR, &h);
        self.mem.poke(STATUS, &[0xee]);
    }

    /// A three-descriptor request: header, data (`len` bytes, device-writable for reads),
    /// status. Returns the status byte.
    fn request(&mut self, kind: u32, sector: u64, len: u32, data_writable: bool) -> u8 {
        self.header(kind, sector);
        self.submit(&[
            (HDR, 16, false),
            (DATA, len, data_writable),
            (STATUS, 1, true),
        ]);
        self.kick();
        self.mem.peek(STATUS, 1)[0]
    }

    fn used_idx(&self) -> u16 {
        u16::from_le_bytes(self.mem.peek(USED + USED_IDX, 2).try_into().unwrap())
    }

    /// Used element `i`: (id, len).
    fn used(&self, i: u16) -> (u32, u32) {
        let at = USED + USED_RING + 8 * u64::from(i % QUEUE_MAX_SIZE);
        let b = self.mem.peek(at, 8);
        (
            u32::from_le_bytes(b[..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..].try_into().unwrap()),
        )
    }

    /// Reading the ISR, as `vp_interrupt` does.
    fn isr(&mut self) -> u8 {
        self.read(ISR_OFFSET, 1) as u8
    }
}

/// (cfg_type, bar, offset, length, capability position) of each virtio capability, found
/// the way `virtio_pci_find_capability` walks the list (`pci_find_capability` /
/// `pci_find_next_capability` for PCI_CAP_ID_VNDR).
fn virtio_caps(r: &mut Rig) -> Vec<(u8, u8, u32, u32, u32)> {
    assert_ne!(r.conf_read(0x06, 2) & 0x10, 0, "PCI_STATUS_CAP_LIST");
    let mut caps = Vec::new();
    let mut pos = r.conf_read(0x34, 1);
    let mut ttl = 48;
    while ttl > 0 && pos >= 0x40 {
        ttl -= 1;
        pos &= !3;
        let ent = r.conf_read(pos, 2);
        if ent & 0xff == 0xff {
            break;
        }
        if ent & 0xff == u32::from(crate::machine::devices::pci::CAP_ID_VENDOR) {
            let cfg_type = r.conf_read(pos + 3, 1) as u8;
            let bar = r.conf_read(pos + 4, 1) as u8;
            let offset = r.conf_read(pos + 8, 4);
            let length = r.conf_read(pos + 12, 4);
            caps.push((cfg_type, bar, offset, length, pos));
        }
        pos = ent >> 8;
    }
    caps
}

#[test]
fn linux_probe_finds_the_virtio_capabilities() {
    let mut r = Rig::new(false);
    // pci_setup_device and the virtio_pci_modern id check.
    assert_eq!(r.conf_read(0x00, 4), 0x1042_1af4);
    assert_eq!(r.conf_read(0x08, 1), 1, "revision 1: non-transitional");
    assert_eq!(r.conf_read(0x0b, 1), 0x01, "mass storage");
    assert_eq!(r.conf_read(0x2c, 4), 0x1100_1af4);
    assert_eq!(
        r.conf_read(0x3c, 2),
        0x0100 | u32::from(IRQ),
        "INTA# on IRQ 11"
    );
    assert_eq!(r.conf_read(0x04, 2) & 0x2, 0x2, "memory decoding on");
    // pci_read_bases: BAR 0 is a 64-bit memory BAR of BAR_SIZE at the window's start.
    let l = r.conf_read(0x10, 4);
    r.conf_write(0x10, 4, !0);
    let sz = r.conf_read(0x10, 4);
    r.conf_write(0x10, 4, l);
    assert_eq!(l & 0x7, 0x4, "64-bit memory BAR");
    assert_eq!(!(sz & !0xf) + 1, BAR_SIZE as u32);
    assert_eq!(r.bar, PCI_MMIO_START);
    let caps = virtio_caps(&mut r);
    let types: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(
        types,
        vec![
            CAP_COMMON_CFG,
            CAP_NOTIFY_CFG,
            CAP_ISR_CFG,
            CAP_DEVICE_CFG,
            CAP_PCI_CFG
        ]
    );
    // vp_modern_map_capability's checks: (type, minimum length, alignment).
    for (cfg_type, minlen, align) in [
        (CAP_COMMON_CFG, 0x38, 4),
        (CAP_ISR_CFG, 1, 1),
        (CAP_NOTIFY_CFG, 2, 2),
        (CAP_DEVICE_CFG, 0, 4),
    ] {
        let &(_, bar, offset, length, _) = caps.iter().find(|c| c.0 == cfg_type).unwrap();
        assert_eq!(bar, 0);
        assert!(
            length >= minlen && length > 0,
            "type {cfg_type} length {length}"
        );
        assert_eq!(offset % align, 0);
        assert!(u64::from(offset) + u64::from(length) <= BAR_SIZE);
    }
    let notify = caps.iter().find(|c| c.0 == CAP_NOTIFY_CFG).unwrap();
    assert_eq!(r.conf_read(notify.4 + 16, 4), NOTIFY_OFF_MULTIPLIER);
    assert_eq!(u64::from(notify.2), NOTIFY_OFFSET);
    let device = caps.iter().find(|c| c.0 == CAP_DEVICE_CFG).unwrap();
    assert_eq!(device.3 as usize, CONFIG_LEN);
    // The capabilities are read-only (bar of the common one written, unchanged).
    let common = caps[0].4;
    r.conf_write(common + 4, 1, 3);
    assert_eq!(r.conf_read(common + 4, 1), 0);
}

#[test]
fn feature_negotiation_and_status() {
    let mut r = Rig::new(false);
    r.begin();
    let offered = r.device_features();
    assert_eq!(
        offered,
        F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX | F_VERSION_1
    );
    r.write(COMMON_DFSELECT, 4, 2);
    assert_eq!(r.read(COMMON_DF, 4), 0, "no features above 63");
    assert_eq!(r.read(COMMON_NUMQ, 2), 1);
    assert_eq!(r.read(COMMON_MSIX, 2), u64::from(NO_VECTOR));
    r.write(COMMON_MSIX, 2, 0);
    assert_eq!(
        r.read(COMMON_MSIX, 2),
        u64::from(NO_VECTOR),
        "no MSI-X: refused"
    );
    assert_eq!(r.read(COMMON_CFGGENERATION, 1), 0);
    // Without VERSION_1 (a legacy driver), FEATURES_OK does not stick.
    assert!(!r.negotiate(F_FLUSH));
    assert_eq!(r.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // A feature the device does not offer (VIRTIO_BLK_F_MQ).
    r.begin();
    assert!(!r.negotiate(F_VERSION_1 | 1 << 12));
    // Bits above 63.
    r.begin();
    r.write(COMMON_GFSELECT, 4, 2);
    r.write(COMMON_GF, 4, 1);
    assert!(!r.negotiate(F_VERSION_1));
    // Linux's subset: accepted.
    r.begin();
    assert!(r.negotiate(offered & LINUX_WANTS));
    r.write(COMMON_GFSELECT, 4, 0);
    let low = r.read(COMMON_GF, 4);
    assert_eq!(low, offered & 0xffff_ffff);
    // Feature writes after FEATURES_OK are ignored; status bits cannot be cleared.
    r.write(COMMON_GF, 4, 0);
    assert_eq!(r.read(COMMON_GF, 4), low);
    r.set_status(STATUS_ACKNOWLEDGE);
    assert_eq!(
        r.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
    );
    // The driver cannot set DEVICE_NEEDS_RESET.
    r.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_NEEDS_RESET);
    assert_eq!(r.status() & STATUS_NEEDS_RESET, 0);
    // Reset clears everything.
    r.set_status(0);
    assert_eq!(r.status(), 0);
    r.write(COMMON_GFSELECT, 4, 0);
    assert_eq!(r.read(COMMON_GF, 4), 0);
}

#[test]
fn device_configuration() {
    let mut r = Rig::new(false);
    // virtio_cread64 of capacity as two 32-bit reads, as Linux's vp_get does.
    let lo = r.read(DEVICE_OFFSET + CONFIG_CAPACITY as u64, 4);
    let hi = r.read(DEVICE_OFFSET + CONFIG_CAPACITY as u64 + 4, 4);
    assert_eq!(hi << 32 | lo, SECTORS);
    assert_eq!(r.read(DEVICE_OFFSET, 8), SECTORS);
    assert_eq!(r.read(DEVICE_OFFSET + CONFIG_SEG_MAX as u64, 4), 254);
    assert_eq!(r.read(DEVICE_OFFSET + CONFIG_BLK_SIZE as u64, 4), 512);
    assert_eq!(
        r.read(DEVICE_OFFSET + 0x20, 1),
        0,
        "writeback: no CONFIG_WCE"
    );
    // Read-only: nothing changes.
    r.write(DEVICE_OFFSET, 4, 0x1234);
    assert_eq!(r.read(DEVICE_OFFSET, 8), SECTORS);
    // A read-only disk offers VIRTIO_BLK_F_RO.
    let mut ro = Rig::new(true);
    assert_ne!(ro.device_features() & F_RO, 0);
}

#[test]
fn queue_setup() {
    let mut r = Rig::new(false);
    r.begin();
    assert!(r.negotiate(F_VERSION_1));
    r.write(COMMON_Q_SELECT, 2, 1);
    assert_eq!(r.read(COMMON_Q_SIZE, 2), 0, "queue 1 does not exist");
    r.write(COMMON_Q_SELECT, 2, 0);
    assert_eq!(r.read(COMMON_Q_NOFF, 2), 0);
    assert_eq!(r.read(COMMON_Q_MSIX, 2), u64::from(NO_VECTOR));
    r.write(COMMON_Q_SIZE, 2, 64);
    assert_eq!(r.read(COMMON_Q_SIZE, 2), 64);
    r.write(COMMON_Q_DESCLO, 4, 0x1234_5000);
    r.write(COMMON_Q_DESCHI, 4, 0x1);
    assert_eq!(r.read(COMMON_Q_DESCLO, 4), 0x1234_5000);
    assert_eq!(r.read(COMMON_Q_DESCHI, 4), 1);
    r.write(COMMON_Q_AVAILLO, 8, 0x2_0000_0002);
    assert_eq!(
        r.read(COMMON_Q_AVAILLO, 8),
        0x2_0000_0002,
        "a 64-bit access"
    );
    r.write(COMMON_Q_ENABLE, 2, 0);
    assert_eq!(r.read(COMMON_Q_ENABLE, 2), 0, "writing 0 is ignored");
    r.write(COMMON_Q_USEDLO, 4, 0x3000);
    r.write(COMMON_Q_ENABLE, 2, 1);
    assert_eq!(r.read(COMMON_Q_ENABLE, 2), 1);
    // Once enabled, the queue's configuration is fixed.
    r.write(COMMON_Q_SIZE, 2, 32);
    r.write(COMMON_Q_USEDLO, 4, 0x8000);
    assert_eq!(r.read(COMMON_Q_SIZE, 2), 64);
    assert_eq!(r.read(COMMON_Q_USEDLO, 4), 0x3000);
    // Reset: the queue is back to its power-on state.
    r.set_status(0);
    assert_eq!(r.read(COMMON_Q_ENABLE, 2), 0);
    assert_eq!(r.read(COMMON_Q_SIZE, 2), u64::from(QUEUE_MAX_SIZE));
    assert_eq!(r.read(COMMON_Q_DESCLO, 4), 0);
    // A size that is not a power of two is refused at enable time.
    r.begin();
    r.write(COMMON_Q_SIZE, 2, 100);
    r.write(COMMON_Q_ENABLE, 2, 1);
    assert_eq!(r.read(COMMON_Q_ENABLE, 2), 0);
    assert_ne!(r.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn read_request_through_a_three_descriptor_chain() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    r.mem.writes.clear();
    assert!(!r.irq.get(IRQ));
    assert_eq!(r.request(T_IN, 2, 1024, true), S_OK);
    assert_eq!(r.mem.peek(DATA, 1024), &pattern(2, 2)[..]);
    assert_eq!(r.used_idx(), 1);
    assert_eq!(r.used(0), (0, 1025), "data and status written");
    // Every byte the device stored went through DmaMemory::write: data, status, the used
    // element, the used index, and avail_event (EVENT_IDX).
    let avail_event = USED + USED_RING + 8 * u64::from(QUEUE_MAX_SIZE);
    let written: Vec<(u64, usize)> = r.mem.writes.iter().map(|(a, d)| (*a, d.len())).collect();
    assert_eq!(
        written,
        vec![
            (DATA, 1024),
            (STATUS, 1),
            (USED + USED_RING, 8),
            (USED + USED_IDX, 2),
            (avail_event, 2)
        ]
    );
    assert_eq!(r.mem.peek(avail_event, 2), &1u16.to_le_bytes());
    // The interrupt: ISR bit 0, INTx asserted until the ISR is read.
    assert!(r.irq.get(IRQ));
    assert_ne!(r.conf_read(0x06, 2) & 0x08, 0, "PCI status interrupt bit");
    assert_eq!(r.isr(), ISR_QUEUE);
    assert!(!r.irq.get(IRQ), "reading the ISR deasserts INTx");
    assert_eq!(r.isr(), 0, "read clears");
    assert_eq!(r.conf_read(0x06, 2) & 0x08, 0);
}

#[test]
fn write_request_then_read_back() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    r.mem.poke(DATA, &[0x5a; 1024]);
    assert_eq!(r.request(T_OUT, 5, 1024, false), S_OK);
    assert_eq!(r.used(0), (0, 1), "only the status byte written");
    r.mem.poke(DATA, &[0; 2048]);
    assert_eq!(r.request(T_IN, 4, 2048, true), S_OK);
    assert_eq!(r.mem.peek(DATA, 512), &pattern(4, 1)[..]);
    assert_eq!(r.mem.peek(DATA + 512, 1024), &[0x5a; 1024][..]);
    assert_eq!(r.mem.peek(DATA + 1536, 512), &pattern(7, 1)[..]);
    assert_eq!(r.used_idx(), 2);
    assert_eq!(
        std::fs::read(&r.image).unwrap(),
        pattern(0, SECTORS as usize),
        "image untouched"
    );
}

#[test]
fn get_id_and_flush() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    r.mem.poke(DATA, &[0xff; 20]);
    assert_eq!(r.request(T_GET_ID, 0, 20, true), S_OK);
    let mut expected = [0u8; 20];
    expected[..DEFAULT_SERIAL.len()].copy_from_slice(DEFAULT_SERIAL.as_bytes());
    assert_eq!(r.mem.peek(DATA, 20), &expected[..]);
    assert_eq!(r.used(0), (0, 21));
    r.header(T_FLUSH, 0);
    r.submit(&[(HDR, 16, false), (STATUS, 1, true)]);
    r.kick();
    assert_eq!(r.mem.peek(STATUS, 1)[0], S_OK);
    assert_eq!(r.used(1), (0, 1));
}

#[test]
fn bad_sectors_are_ioerr_and_unknown_types_unsupp() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    assert_eq!(
        r.request(T_IN, SECTORS - 1, 1024, true),
        S_IOERR,
        "past the end"
    );
    assert_eq!(r.used(0), (0, 0), "nothing written before the status byte");
    assert_eq!(
        r.request(T_IN, u64::MAX, 512, true),
        S_IOERR,
        "sector overflow"
    );
    assert_eq!(r.request(T_OUT, SECTORS, 512, false), S_IOERR);
    assert_eq!(r.request(T_IN, 0, 100, true), S_IOERR, "not whole sectors");
    assert_eq!(
        r.request(11, 0, 16, false),
        S_UNSUPP,
        "discard is not offered"
    );
    // The device carries on.
    assert_eq!(r.request(T_IN, SECTORS - 1, 512, true), S_OK);
    assert_eq!(r.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(r.used_idx(), 6);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut r = Rig::new(true);
    r.probe(LINUX_WANTS);
    r.mem.poke(DATA, &[0x77; 512]);
    assert_eq!(r.request(T_OUT, 0, 512, false), S_IOERR);
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert_eq!(r.mem.peek(DATA, 512), &pattern(0, 1)[..]);
}

#[test]
fn indirect_descriptors() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    r.header(T_IN, 3);
    // Linux's layout with indirect: one descriptor naming a table of three.
    r.put_desc(TABLE, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    r.put_desc(
        TABLE,
        1,
        DATA,
        512,
        VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
        2,
    );
    r.put_desc(TABLE, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    r.put_desc(DESC, 7, TABLE, 48, VIRTQ_DESC_F_INDIRECT, 0);
    r.make_available(7);
    r.kick();
    assert_eq!(r.mem.peek(STATUS, 1)[0], S_OK);
    assert_eq!(r.mem.peek(DATA, 512), &pattern(3, 1)[..]);
    assert_eq!(r.used(0), (7, 513));
}

/// Each malformed chain stops the device with DEVICE_NEEDS_RESET and a configuration
/// interrupt, without touching guest memory; after a reset it works again.
#[test]
fn malformed_chains_need_reset() {
    type Setup = fn(&mut Rig);
    let cases: [(&str, Setup); 9] = [
        ("descriptor loop", |r| {
            r.header(T_IN, 0);
            r.put_desc(DESC, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
            r.put_desc(DESC, 1, DATA, 512, VIRTQ_DESC_F_NEXT, 0);
            r.make_available(0);
        }),
        ("data beyond RAM", |r| {
            r.header(T_IN, 0);
            r.submit(&[
                (HDR, 16, false),
                (RAM as u64 - 256, 512, true),
                (STATUS, 1, true),
            ]);
        }),
        ("address wraps", |r| {
            r.header(T_IN, 0);
            r.submit(&[
                (HDR, 16, false),
                (u64::MAX - 8, 512, true),
                (STATUS, 1, true),
            ]);
        }),
        ("next outside the table", |r| {
            r.header(T_IN, 0);
            r.put_desc(DESC, 0, HDR, 16, VIRTQ_DESC_F_NEXT, QUEUE_MAX_SIZE);
            r.make_available(0);
        }),
        ("head outside the table", |r| {
            r.make_available(QUEUE_MAX_SIZE + 3)
        }),
        ("readable after writable", |r| {
            r.header(T_IN, 0);
            r.submit(&[(HDR, 16, false), (STATUS, 1, true), (DATA, 512, false)]);
        }),
        ("no status byte", |r| {
            r.header(T_IN, 0);
            r.submit(&[(HDR, 16, false)]);
        }),
        ("indirect inside indirect", |r| {
            r.put_desc(TABLE, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
            r.put_desc(DESC, 0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
            r.make_available(0);
        }),
        ("available index runs ahead", |r| {
            r.avail_idx = QUEUE_MAX_SIZE + 1;
            r.mem.poke(AVAIL + AVAIL_IDX, &r.avail_idx.to_le_bytes());
        }),
    ];
    let mut r = Rig::new(false);
    for (name, setup) in cases {
        r.probe(LINUX_WANTS);
        let _ = r.isr();
        r.mem.writes.clear();
        setup(&mut r);
        r.kick();
        assert_ne!(r.status() & STATUS_NEEDS_RESET, 0, "{name}");
        assert!(r.mem.writes.is_empty(), "{name}: no DMA");
        assert!(r.irq.get(IRQ), "{name}: interrupt");
        assert_eq!(r.isr(), ISR_CONFIG, "{name}");
        // Notifications are ignored until the driver resets the device.
        r.write(NOTIFY_OFFSET, 2, 0);
        assert!(!r.host.has_pending_work(), "{name}");
        r.set_status(0);
        assert_eq!(r.status(), 0, "{name}");
    }
    r.probe(LINUX_WANTS);
    assert_eq!(r.request(T_IN, 1, 512, true), S_OK);
}

#[test]
fn notification_suppression() {
    // EVENT_IDX: used_event in the available ring says when to interrupt.
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    let used_event = AVAIL + AVAIL_RING + 2 * u64::from(QUEUE_MAX_SIZE);
    r.mem.poke(used_event, &5u16.to_le_bytes());
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert_eq!(r.isr(), 0, "used index 0 -> 1 did not pass used_event 5");
    r.mem.poke(used_event, &1u16.to_le_bytes());
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert_eq!(r.isr(), ISR_QUEUE, "entry 1 was used_event");
    // Without EVENT_IDX: VIRTQ_AVAIL_F_NO_INTERRUPT.
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS & !F_EVENT_IDX);
    r.mem.poke(
        AVAIL + AVAIL_FLAGS,
        &VIRTQ_AVAIL_F_NO_INTERRUPT.to_le_bytes(),
    );
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert_eq!(r.isr(), 0);
    let avail_event = USED + USED_RING + 8 * u64::from(QUEUE_MAX_SIZE);
    assert_eq!(
        r.mem.peek(avail_event, 2),
        &[0, 0],
        "no avail_event without EVENT_IDX"
    );
    r.mem.poke(AVAIL + AVAIL_FLAGS, &0u16.to_le_bytes());
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert_eq!(r.isr(), ISR_QUEUE);
}

#[test]
fn intx_follows_isr_and_command_register() {
    let mut r = Rig::new(false);
    r.probe(LINUX_WANTS);
    assert_eq!(r.request(T_IN, 0, 512, true), S_OK);
    assert!(r.irq.get(IRQ));
    let cmd = r.conf_read(0x04, 2);
    r.conf_write(0x04, 2, cmd | u32::from(pci::COMMAND_INTX_DISABLE));
    assert!(!r.irq.get(IRQ), "INTx disabled");
    r.conf_write(0x04, 2, cmd);
    assert!(r.irq.get(IRQ));
    // A reset drops the interrupt.
    r.set_status(0);
    assert!(!r.irq.get(IRQ));
    assert_eq!(r.isr(), 0);
}

#[test]
fn no_dma_before_driver_ok() {
    let mut r = Rig::new(false);
    let cmd = r.conf_read(0x04, 2);
    r.conf_write(0x04, 2, cmd | u32::from(pci::COMMAND_MASTER));
    r.begin();
    let offered = r.device_features();
    assert!(r.negotiate(offered & LINUX_WANTS));
    r.setup_queue();
    r.header(T_IN, 0);
    r.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    r.write(NOTIFY_OFFSET, 2, 0);
    assert!(!r.host.has_pending_work(), "not before DRIVER_OK");
    r.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(r.host.has_pending_work(), "the kick was kept");
    r.host.process(&mut r.mem, &mut r.irq);
    assert_eq!(r.mem.peek(STATUS, 1)[0], S_OK);
}

/// VIRTIO_PCI_CAP_PCI_CFG: BAR registers reached through configuration space.
#[test]
fn pci_configuration_access_window() {
    let mut r = Rig::new(false);
    let caps = virtio_caps(&mut r);
    let pos = caps.iter().find(|c| c.0 == CAP_PCI_CFG).unwrap().4;
    r.conf_write(pos + 4, 1, 0); // cap.bar
    r.conf_write(pos + 12, 4, 1); // cap.length
    r.conf_write(pos + 8, 4, (COMMON_OFFSET + COMMON_STATUS) as u32); // cap.offset
    r.conf_write(pos + 16, 1, u32::from(STATUS_ACKNOWLEDGE)); // pci_cfg_data
    assert_eq!(r.status(), STATUS_ACKNOWLEDGE);
    r.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert_eq!(
        r.conf_read(pos + 16, 1),
        u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
    );
    // A 4-byte window on the device configuration.
    r.conf_write(pos + 12, 4, 4);
    r.conf_write(pos + 8, 4, DEVICE_OFFSET as u32);
    assert_eq!(r.conf_read(pos + 16, 4), SECTORS as u32);
    // An unaligned window does nothing.
    r.conf_write(pos + 8, 4, (DEVICE_OFFSET + 2) as u32);
    assert_eq!(
        r.conf_read(pos + 16, 4),
        SECTORS as u32,
        "stale data, no access"
    );
}
