//! virtio 1.x devices on the PCI bus: the modern PCI transport ([`VirtioPci`]), split
//! virtqueues ([`queue`]) and the block device ([`blk::VirtioBlk`]) with its disk
//! ([`disk`]).
//!
//! # The transport
//!
//! A non-transitional ("modern only") virtio PCI function: vendor 0x1AF4, device
//! 0x1040 + the virtio device type, revision 1, subsystem 0x1AF4:0x1100, INTA#. One 64-bit
//! memory BAR ([`BAR`], [`BAR_SIZE`] bytes) holds all four structures, each on its own page,
//! which the driver finds through vendor-specific capabilities in configuration space:
//!
//! | capability | BAR offset | length |
//! |---|---|---|
//! | common configuration ([`CAP_COMMON_CFG`]) | [`COMMON_OFFSET`] | [`COMMON_LEN`] |
//! | notifications ([`CAP_NOTIFY_CFG`], `notify_off_multiplier` [`NOTIFY_OFF_MULTIPLIER`]) | [`NOTIFY_OFFSET`] | 4 per queue |
//! | ISR status ([`CAP_ISR_CFG`]) | [`ISR_OFFSET`] | 1 |
//! | device configuration ([`CAP_DEVICE_CFG`]) | [`DEVICE_OFFSET`] | the device's |
//! | PCI configuration access ([`CAP_PCI_CFG`]) | (a window) | |
//!
//! Common configuration: feature select/words (the device offers its features plus
//! VIRTIO_F_VERSION_1; FEATURES_OK sticks only if the driver accepted a subset that includes
//! VERSION_1), `msix_config` and `queue_msix_vector` always read NO_VECTOR (there is no MSI-X,
//! so a vector written is refused the way the spec lets a driver detect), `num_queues`,
//! `device_status` (writing 0 resets the device; status bits cannot be cleared otherwise;
//! DEVICE_NEEDS_RESET is the device's), `config_generation` (always 0: the device
//! configuration never changes), and per queue (`queue_select`) the size, enable (checked
//! then: a power-of-two size up to the maximum, aligned rings), `queue_notify_off` (= the
//! queue index) and the three ring addresses (also as two 32-bit halves). Accesses of any
//! width at any offset reach the fields they cover.
//!
//! ISR status: bit 0 queue interrupt, bit 1 configuration change; reading it returns and
//! clears it. INTx is asserted while it is non-zero (the host applies the command register's
//! INTx disable and mirrors it in the status register).
//!
//! # Notifications and DMA (the contract with the machine)
//!
//! A driver write anywhere in queue N's notification slot only records "queue N kicked"
//! ([`PciFunction::has_work`] becomes true once the driver has set DRIVER_OK). The machine
//! then calls [`PciFunction::process`] (through [`super::pci::PciHost::process`]) at an
//! instruction boundary: the device takes every available chain of each kicked queue,
//! serves it, fills the used ring and sets ISR bit 0 if the driver wants a notification.
//! All guest memory traffic happens there, through [`DmaMemory`], never during an MMIO
//! access, so the trace's DMA Write events sit at instruction boundaries. Per request the
//! writes are: the data (reads), the status byte, the used element; per queue and call
//! then the used index and, with EVENT_IDX, `avail_event`.
//!
//! # Errors
//!
//! Guest mistakes never panic. A malformed queue or chain ([`queue::QueueError`]: a loop,
//! an index outside the table, a buffer outside RAM, a request without header or status
//! byte, ...) stops the device: DEVICE_NEEDS_RESET is set, a configuration change interrupt is
//! raised if the driver had set DRIVER_OK, and further notifications are ignored until the
//! driver resets the device. Protocol slips that need no reset (a write to a read-only
//! register, a feature write after FEATURES_OK, ...) are ignored. Each kind of mistake is
//! logged once per device. A device whose driver set FAILED serves nothing until reset.
//!
//! Left out: the legacy and transitional interfaces, MSI-X, VIRTIO_F_RING_PACKED,
//! VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_RESET (`queue_reset`), VIRTIO_F_ACCESS_PLATFORM,
//! shared memory regions, administration queues.

pub mod blk;
pub mod disk;
pub mod queue;
#[cfg(test)]
mod tests;

pub use blk::VirtioBlk;
pub use disk::{Disk, DiskError};

use super::dma::DmaMemory;
use super::pci::{
    Bar, BarKind, ConfigSpace, Identity, PciFunction, CAP_ID_VENDOR, INTERRUPT_PIN_INTA,
};
use queue::{Chain, QueueError, Virtqueue};
use std::collections::BTreeSet;

/// PCI identity of virtio devices.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// PCI device ID of a modern device: this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;
/// Non-transitional devices have revision 1 or higher.
pub const VIRTIO_PCI_REVISION: u8 = 1;
pub const VIRTIO_PCI_SUBSYSTEM_VENDOR: u16 = 0x1af4;
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 0x02;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 0x04;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 0x08;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Feature: indirect descriptors (bit 28).
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Feature: `used_event` / `avail_event` notification suppression (bit 29).
pub const F_EVENT_IDX: u64 = 1 << 29;
/// Feature: virtio 1.x (bit 32), required.
pub const F_VERSION_1: u64 = 1 << 32;

/// ISR status: a queue has used buffers.
pub const ISR_QUEUE: u8 = 0x01;
/// ISR status: the device configuration changed (or the device needs a reset).
pub const ISR_CONFIG: u8 = 0x02;
/// MSI-X vector value meaning "none".
pub const NO_VECTOR: u16 = 0xffff;

/// `cfg_type` of the virtio vendor capabilities.
pub const CAP_COMMON_CFG: u8 = 1;
pub const CAP_NOTIFY_CFG: u8 = 2;
pub const CAP_ISR_CFG: u8 = 3;
pub const CAP_DEVICE_CFG: u8 = 4;
pub const CAP_PCI_CFG: u8 = 5;
/// Offsets within `struct virtio_pci_cap` (from the capability ID).
pub const CAP_LEN: usize = 2;
pub const CAP_CFG_TYPE: usize = 3;
pub const CAP_BAR: usize = 4;
pub const CAP_OFFSET: usize = 8;
pub const CAP_LENGTH: usize = 12;
/// `struct virtio_pci_notify_cap`: the multiplier follows the common part.
pub const CAP_NOTIFY_OFF_MULTIPLIER: usize = 16;
/// `struct virtio_pci_cfg_cap`: the data window follows the common part.
pub const CAP_PCI_CFG_DATA: usize = 16;
/// Size of `struct virtio_pci_cap`.
pub const VIRTIO_CAP_SIZE: usize = 16;

/// The memory BAR holding every structure.
pub const BAR: usize = 0;
pub const BAR_SIZE: u64 = 0x4000;
pub const COMMON_OFFSET: u64 = 0x0000;
pub const COMMON_LEN: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 1;
pub const DEVICE_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

/// `struct virtio_pci_common_cfg` field offsets.
pub const COMMON_DFSELECT: u64 = 0x00;
pub const COMMON_DF: u64 = 0x04;
pub const COMMON_GFSELECT: u64 = 0x08;
pub const COMMON_GF: u64 = 0x0c;
pub const COMMON_MSIX: u64 = 0x10;
pub const COMMON_NUMQ: u64 = 0x12;
pub const COMMON_STATUS: u64 = 0x14;
pub const COMMON_CFGGENERATION: u64 = 0x15;
pub const COMMON_Q_SELECT: u64 = 0x16;
pub const COMMON_Q_SIZE: u64 = 0x18;
pub const COMMON_Q_MSIX: u64 = 0x1a;
pub const COMMON_Q_ENABLE: u64 = 0x1c;
pub const COMMON_Q_NOFF: u64 = 0x1e;
pub const COMMON_Q_DESCLO: u64 = 0x20;
pub const COMMON_Q_DESCHI: u64 = 0x24;
pub const COMMON_Q_AVAILLO: u64 = 0x28;
pub const COMMON_Q_AVAILHI: u64 = 0x2c;
pub const COMMON_Q_USEDLO: u64 = 0x30;
pub const COMMON_Q_USEDHI: u64 = 0x34;

/// A virtio device type behind the transport.
pub trait VirtioDevice {
    fn name(&self) -> &str;
    /// The virtio device ID (2 = block).
    fn device_type(&self) -> u16;
    /// PCI class code (base << 16 | subclass << 8 | prog-if).
    fn pci_class(&self) -> u32;
    /// The feature bits the device implements (the transport adds VIRTIO_F_VERSION_1).
    fn features(&self) -> u64;
    fn num_queues(&self) -> u16;
    fn queue_max_size(&self) -> u16;
    /// Length of the device configuration structure.
    fn config_len(&self) -> usize;
    /// Read the device configuration at `offset` into `data` (inside `config_len`).
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// A driver write to the device configuration; false if nothing there is writable.
    fn write_config(&mut self, offset: usize, data: &[u8]) -> bool;
    /// Serve one chain of `queue` with the negotiated `features`: the bytes written from the
    /// start of its device-writable part (the used element's `len`), or the driver's mistake.
    fn handle(
        &mut self,
        queue: u16,
        chain: &Chain,
        mem: &mut dyn DmaMemory,
        features: u64,
    ) -> Result<u32, QueueError>;
}

/// Mistakes already logged, by kind: each is logged once per device.
#[derive(Clone, Debug, Default)]
pub struct LogOnce(BTreeSet<&'static str>);

impl LogOnce {
    /// True the first time `kind` is seen.
    pub fn first(&mut self, kind: &'static str) -> bool {
        self.0.insert(kind)
    }
}

/// A common configuration field (64-bit addresses as two halves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    /// Ring address: 0 descriptors, 1 driver (available), 2 device (used); high half?
    QueueAddr(u8, bool),
}

/// (offset, width, field) for every common configuration field.
const FIELDS: [(u64, u64, Field); 19] = [
    (COMMON_DFSELECT, 4, Field::DeviceFeatureSelect),
    (COMMON_DF, 4, Field::DeviceFeature),
    (COMMON_GFSELECT, 4, Field::DriverFeatureSelect),
    (COMMON_GF, 4, Field::DriverFeature),
    (COMMON_MSIX, 2, Field::ConfigMsixVector),
    (COMMON_NUMQ, 2, Field::NumQueues),
    (COMMON_STATUS, 1, Field::DeviceStatus),
    (COMMON_CFGGENERATION, 1, Field::ConfigGeneration),
    (COMMON_Q_SELECT, 2, Field::QueueSelect),
    (COMMON_Q_SIZE, 2, Field::QueueSize),
    (COMMON_Q_MSIX, 2, Field::QueueMsixVector),
    (COMMON_Q_ENABLE, 2, Field::QueueEnable),
    (COMMON_Q_NOFF, 2, Field::QueueNotifyOff),
    (COMMON_Q_DESCLO, 4, Field::QueueAddr(0, false)),
    (COMMON_Q_DESCHI, 4, Field::QueueAddr(0, true)),
    (COMMON_Q_AVAILLO, 4, Field::QueueAddr(1, false)),
    (COMMON_Q_AVAILHI, 4, Field::QueueAddr(1, true)),
    (COMMON_Q_USEDLO, 4, Field::QueueAddr(2, false)),
    (COMMON_Q_USEDHI, 4, Field::QueueAddr(2, true)),
];

fn field_at(offset: u64) -> Option<(u64, u64, Field)> {
    FIELDS
        .iter()
        .copied()
        .find(|&(start, width, _)| offset >= start && offset < start + width)
}

/// Which structure of the BAR an offset falls in, and the offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Common(u64),
    Isr(u64),
    Device(u64),
    Notify(u64),
    Unmapped,
}

/// The body (after ID and next pointer) of a `struct virtio_pci_cap` plus `extra`.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut body = vec![
        (VIRTIO_CAP_SIZE + extra.len()) as u8,
        cfg_type,
        BAR as u8,
        0,
        0,
        0,
    ];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    body
}

/// A virtio device on the modern PCI transport; see the module documentation.
pub struct VirtioPci<D: VirtioDevice> {
    device: D,
    config: ConfigSpace,
    /// Offset of the PCI configuration access capability.
    pci_cfg_cap: usize,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    /// The driver wrote feature bits above 63 (none exist, so FEATURES_OK must fail).
    driver_features_beyond: bool,
    status: u8,
    queue_select: u16,
    queues: Vec<Virtqueue>,
    isr: u8,
    /// Bit n: queue n was notified and not processed yet.
    kicked: u64,
    /// A malformed queue stopped the device until reset (DEVICE_NEEDS_RESET).
    broken: bool,
    logged: LogOnce,
}

impl<D: VirtioDevice> VirtioPci<D> {
    pub fn new(device: D) -> Self {
        let num_queues = device.num_queues().min(64);
        let mut config = ConfigSpace::new(&Identity {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE + device.device_type(),
            revision: VIRTIO_PCI_REVISION,
            class: device.pci_class(),
            subsystem_vendor: VIRTIO_PCI_SUBSYSTEM_VENDOR,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: INTERRUPT_PIN_INTA,
        });
        config.add_bar(
            BAR,
            Bar {
                size: BAR_SIZE,
                kind: BarKind::Memory64,
                prefetchable: false,
            },
        );
        let vendor_cap = |config: &mut ConfigSpace, body: Vec<u8>, writable: &[u8]| {
            config.add_capability(CAP_ID_VENDOR, &body, writable)
        };
        vendor_cap(
            &mut config,
            virtio_cap(CAP_COMMON_CFG, COMMON_OFFSET, COMMON_LEN, &[]),
            &[],
        );
        let notify_len = u64::from(num_queues) * u64::from(NOTIFY_OFF_MULTIPLIER);
        let multiplier = NOTIFY_OFF_MULTIPLIER.to_le_bytes();
        let notify = virtio_cap(CAP_NOTIFY_CFG, NOTIFY_OFFSET, notify_len, &multiplier);
        vendor_cap(&mut config, notify, &[]);
        vendor_cap(
            &mut config,
            virtio_cap(CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, &[]),
            &[],
        );
        let config_len = device.config_len() as u64;
        if config_len > 0 {
            let body = virtio_cap(CAP_DEVICE_CFG, DEVICE_OFFSET, config_len, &[]);
            vendor_cap(&mut config, body, &[]);
        }
        // cap.bar, cap.offset, cap.length and pci_cfg_data are the driver's to write.
        let mut writable = [0u8; VIRTIO_CAP_SIZE + 4 - 2];
        writable[CAP_BAR - 2] = 0xff;
        writable[CAP_OFFSET - 2..].fill(0xff);
        let body = virtio_cap(CAP_PCI_CFG, 0, 0, &[0; 4]);
        let pci_cfg_cap = vendor_cap(&mut config, body, &writable);
        let queues = (0..num_queues)
            .map(|_| Virtqueue::new(device.queue_max_size()))
            .collect();
        VirtioPci {
            device,
            config,
            pci_cfg_cap,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            driver_features_beyond: false,
            status: 0,
            queue_select: 0,
            queues,
            isr: 0,
            kicked: 0,
            broken: false,
            logged: LogOnce::default(),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// The ISR status (without clearing it).
    pub fn isr(&self) -> u8 {
        self.isr
    }

    /// What the device offers: its own features plus VERSION_1.
    pub fn offered_features(&self) -> u64 {
        self.device.features() | F_VERSION_1
    }

    /// The features the driver accepted (valid once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The driver finished setting up and the device has no unrecovered error.
    fn live(&self) -> bool {
        let ready = STATUS_DRIVER_OK | STATUS_FEATURES_OK;
        self.status & ready == ready && self.status & STATUS_FAILED == 0 && !self.broken
    }

    /// Write 0 to `device_status`: back to the power-on state (the disk keeps its data).
    fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.status = 0;
        self.queue_select = 0;
        self.queues.iter_mut().for_each(Virtqueue::reset);
        self.isr = 0;
        self.kicked = 0;
        self.broken = false;
    }

    /// A malformed queue: DEVICE_NEEDS_RESET, and a configuration interrupt once live.
    fn fail(&mut self, error: QueueError) {
        if self.logged.first("needs-reset") {
            log::warn!(
                "{}: {error}; the device stops until the driver resets it (logged once)",
                self.device.name()
            );
        }
        self.broken = true;
        self.kicked = 0;
        self.status |= STATUS_NEEDS_RESET;
        if self.status & STATUS_DRIVER_OK != 0 {
            self.isr |= ISR_CONFIG;
        }
    }

    fn ignored(&mut self, kind: &'static str, what: impl FnOnce() -> String) {
        if self.logged.first(kind) {
            log::info!("{}: {} (ignored; logged once)", self.device.name(), what());
        }
    }

    fn features_acceptable(&self) -> bool {
        !self.driver_features_beyond
            && self.driver_features & !self.offered_features() == 0
            && self.driver_features & F_VERSION_1 != 0
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let sticky = old & !STATUS_NEEDS_RESET;
        if sticky & !value != 0 {
            self.ignored("status-clear", || {
                format!(
                    "driver cleared status bits {:#x} without a reset",
                    sticky & !value
                )
            });
        }
        let mut new = ((value | sticky) & !STATUS_NEEDS_RESET) | (old & STATUS_NEEDS_RESET);
        if new & STATUS_FEATURES_OK != 0
            && old & STATUS_FEATURES_OK == 0
            && !self.features_acceptable()
        {
            new &= !STATUS_FEATURES_OK;
            let (driver, offered) = (self.driver_features, self.offered_features());
            self.ignored("features-refused", || {
                format!("FEATURES_OK refused: driver features {driver:#x}, offered {offered:#x} (VERSION_1 required)")
            });
        }
        if new & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
            self.ignored("driver-ok-early", || {
                "DRIVER_OK without FEATURES_OK: the device stays idle".to_string()
            });
        }
        self.status = new;
    }

    fn selected_queue(&mut self) -> Option<&mut Virtqueue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn field_read(&self, field: Field) -> u32 {
        let q = self.queues.get(usize::from(self.queue_select));
        let half = |value: u64, high: bool| {
            if high {
                (value >> 32) as u32
            } else {
                value as u32
            }
        };
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select,
            Field::DeviceFeature => match self.device_feature_select {
                s @ 0..=1 => half(self.offered_features(), s == 1),
                _ => 0,
            },
            Field::DriverFeatureSelect => self.driver_feature_select,
            Field::DriverFeature => match self.driver_feature_select {
                s @ 0..=1 => half(self.driver_features, s == 1),
                _ => 0,
            },
            Field::ConfigMsixVector | Field::QueueMsixVector => u32::from(NO_VECTOR),
            Field::NumQueues => self.queues.len() as u32,
            Field::DeviceStatus => u32::from(self.status),
            Field::ConfigGeneration => 0,
            Field::QueueSelect => u32::from(self.queue_select),
            Field::QueueSize => q.map_or(0, |q| u32::from(q.size)),
            Field::QueueEnable => q.map_or(0, |q| u32::from(q.enabled)),
            Field::QueueNotifyOff => q.map_or(0, |_| u32::from(self.queue_select)),
            Field::QueueAddr(which, high) => q.map_or(0, |q| {
                half([q.desc, q.driver, q.device][usize::from(which)], high)
            }),
        }
    }

    fn field_write(&mut self, field: Field, value: u32) {
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select = value,
            Field::DriverFeatureSelect => self.driver_feature_select = value,
            Field::DriverFeature => self.write_driver_features(value),
            Field::DeviceStatus => self.set_status(value as u8),
            Field::QueueSelect => self.queue_select = value as u16,
            Field::QueueSize => match self.selected_queue() {
                Some(q) if !q.enabled => q.size = value as u16,
                _ => self.ignored("queue-size", || {
                    "queue_size written for an absent or enabled queue".to_string()
                }),
            },
            Field::QueueEnable => self.write_queue_enable(value),
            Field::QueueAddr(which, high) => match self.selected_queue() {
                Some(q) if !q.enabled => {
                    let slot = match which {
                        0 => &mut q.desc,
                        1 => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *slot = if high {
                        (*slot & 0xffff_ffff) | u64::from(value) << 32
                    } else {
                        (*slot & !0xffff_ffff) | u64::from(value)
                    };
                }
                _ => self.ignored("queue-addr", || {
                    "ring address written for an absent or enabled queue".to_string()
                }),
            },
            Field::ConfigMsixVector | Field::QueueMsixVector => {
                if value as u16 != NO_VECTOR {
                    self.ignored("msix", || {
                        format!("MSI-X vector {value:#x} refused: no MSI-X (reads NO_VECTOR)")
                    });
                }
            }
            Field::DeviceFeature
            | Field::NumQueues
            | Field::ConfigGeneration
            | Field::QueueNotifyOff => self.ignored("read-only", || {
                format!("write of {value:#x} to read-only {field:?}")
            }),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            self.ignored("features-late", || {
                "driver_feature written after FEATURES_OK".to_string()
            });
            return;
        }
        match self.driver_feature_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features = (self.driver_features & 0xffff_ffff) | u64::from(value) << 32
            }
            _ => self.driver_features_beyond |= value != 0,
        }
    }

    fn write_queue_enable(&mut self, value: u32) {
        let Some(q) = self.selected_queue() else {
            return self.ignored("queue-enable-absent", || {
                "queue_enable written for an absent queue".to_string()
            });
        };
        if value != 1 {
            return self.ignored("queue-enable-value", || {
                format!("queue_enable written with {value} (only 1 enables)")
            });
        }
        if q.enabled {
            return;
        }
        match q.check_layout() {
            Ok(()) => q.enabled = true,
            Err(e) => self.fail(e),
        }
    }

    /// A read of the common configuration: each byte from the field that covers it.
    fn common_read(&self, offset: u64, size: u8) -> u64 {
        (0..u64::from(size)).fold(0, |v, i| match field_at(offset + i) {
            Some((start, _, f)) => {
                let byte = (self.field_read(f) >> (8 * (offset + i - start))) & 0xff;
                v | u64::from(byte) << (8 * i)
            }
            None => v,
        })
    }

    /// A write of the common configuration: each field the access covers gets its bytes
    /// merged into its current value, in offset order.
    fn common_write(&mut self, offset: u64, size: u8, value: u64) {
        let end = offset + u64::from(size);
        let mut at = offset;
        while at < end {
            let Some((start, width, f)) = field_at(at) else {
                at += 1;
                continue;
            };
            let mut v = self.field_read(f);
            for b in at..end.min(start + width) {
                let byte = ((value >> (8 * (b - offset))) & 0xff) as u32;
                let shift = 8 * (b - start);
                v = (v & !(0xff << shift)) | byte << shift;
            }
            self.field_write(f, v);
            at = start + width;
        }
    }

    fn region(&self, offset: u64) -> Region {
        let notify_len = self.queues.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let device_len = self.device.config_len() as u64;
        let inside = |start: u64, len: u64| offset >= start && offset - start < len;
        if inside(COMMON_OFFSET, COMMON_LEN) {
            Region::Common(offset - COMMON_OFFSET)
        } else if inside(ISR_OFFSET, ISR_LEN) {
            Region::Isr(offset - ISR_OFFSET)
        } else if inside(DEVICE_OFFSET, device_len) {
            Region::Device(offset - DEVICE_OFFSET)
        } else if inside(NOTIFY_OFFSET, notify_len) {
            Region::Notify(offset - NOTIFY_OFFSET)
        } else {
            Region::Unmapped
        }
    }

    /// A read of the device configuration; bytes past its end read 0.
    fn device_config_read(&self, offset: u64, size: u8) -> u64 {
        let len = self.device.config_len() as u64;
        let n = (u64::from(size.min(8))).min(len - offset) as usize;
        let mut bytes = [0u8; 8];
        self.device.read_config(offset as usize, &mut bytes[..n]);
        u64::from_le_bytes(bytes)
    }

    /// Serve every available chain of queue `q`; returns whether to notify and the error
    /// that stopped it, if any. Completed chains are published even after an error.
    fn process_queue(&mut self, q: usize, mem: &mut dyn DmaMemory) -> (bool, Option<QueueError>) {
        let features = self.driver_features;
        let event_idx = features & F_EVENT_IDX != 0;
        let vq = &mut self.queues[q];
        let (used_before, avail_before) = (vq.used_idx(), vq.last_avail());
        let mut error = None;
        loop {
            let chain = match vq.pop(mem, features & F_INDIRECT_DESC != 0) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let served = self
                .device
                .handle(q as u16, &chain, mem, features)
                .and_then(|len| vq.push_used(mem, chain.head, len));
            if let Err(e) = served {
                error = Some(e);
                break;
            }
        }
        let mut finish = Ok(());
        if vq.used_idx() != used_before {
            finish = vq.publish_used(mem);
        }
        // A stopped device wants no further notifications.
        if event_idx && vq.last_avail() != avail_before && error.is_none() {
            finish = finish.and_then(|()| vq.set_avail_event(mem));
        }
        match finish.and_then(|()| vq.needs_interrupt(mem, event_idx)) {
            Ok(notify) => (notify, error),
            Err(e) => (false, error.or(Some(e))),
        }
    }

    /// The BAR window the PCI configuration access capability describes, if valid.
    fn cfg_window(&self) -> Option<(u64, u8)> {
        let p = self.pci_cfg_cap;
        let bar = usize::from(self.config.u8(p + CAP_BAR));
        let offset = u64::from(self.config.u32(p + CAP_OFFSET));
        let len = self.config.u32(p + CAP_LENGTH);
        let ok = bar == BAR && matches!(len, 1 | 2 | 4) && offset.is_multiple_of(u64::from(len));
        (ok && offset + u64::from(len) <= BAR_SIZE).then_some((offset, len as u8))
    }

    /// Whether a configuration access touches `pci_cfg_data`.
    fn touches_cfg_data(&self, offset: usize, size: u8) -> bool {
        let data = self.pci_cfg_cap + CAP_PCI_CFG_DATA;
        offset < data + 4 && offset + usize::from(size) > data
    }
}

impl<D: VirtioDevice> PciFunction for VirtioPci<D> {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    /// A read touching `pci_cfg_data` first reads the BAR window into it.
    fn config_read(&mut self, offset: usize, size: u8) -> u32 {
        if self.touches_cfg_data(offset, size) {
            match self.cfg_window() {
                Some((at, len)) => {
                    let value = self.bar_read(BAR, at, len);
                    let data = self.pci_cfg_cap + CAP_PCI_CFG_DATA;
                    for (i, byte) in value
                        .to_le_bytes()
                        .iter()
                        .take(usize::from(len))
                        .enumerate()
                    {
                        self.config.set_u8(data + i, *byte);
                    }
                }
                None => self.ignored("cfg-window", || {
                    "pci_cfg_data accessed with an invalid bar/offset/length".to_string()
                }),
            }
        }
        self.config.read(offset, size)
    }

    /// A write touching `pci_cfg_data` is passed on to the BAR window.
    fn config_write(&mut self, offset: usize, size: u8, value: u32) {
        self.config.write(offset, size, value);
        if self.touches_cfg_data(offset, size) {
            match self.cfg_window() {
                Some((at, len)) => {
                    let data = self.config.u32(self.pci_cfg_cap + CAP_PCI_CFG_DATA);
                    self.bar_write(BAR, at, len, u64::from(data));
                }
                None => self.ignored("cfg-window", || {
                    "pci_cfg_data accessed with an invalid bar/offset/length".to_string()
                }),
            }
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, size: u8) -> u64 {
        if bar != BAR {
            self.ignored("bar", || format!("read of BAR {bar}, which does not exist"));
            return 0;
        }
        match self.region(offset) {
            Region::Common(o) => self.common_read(o, size),
            Region::Isr(0) => u64::from(std::mem::take(&mut self.isr)),
            Region::Isr(_) => 0,
            Region::Device(o) => self.device_config_read(o, size),
            Region::Notify(_) => {
                self.ignored("notify-read", || {
                    "read of the notification area (reads 0)".to_string()
                });
                0
            }
            Region::Unmapped => {
                self.ignored("unmapped", || {
                    format!("access to BAR offset {offset:#x}, outside every structure (reads 0)")
                });
                0
            }
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, size: u8, value: u64) {
        if bar != BAR {
            return self.ignored("bar", || {
                format!("write to BAR {bar}, which does not exist")
            });
        }
        match self.region(offset) {
            Region::Common(o) => self.common_write(o, size, value),
            Region::Isr(_) => self.ignored("isr-write", || "write to the ISR status".to_string()),
            Region::Device(o) => {
                let bytes = value.to_le_bytes();
                let n = usize::from(size.min(8));
                if !self.device.write_config(o as usize, &bytes[..n]) {
                    self.ignored("config-write", || {
                        format!("write of {value:#x} to read-only device configuration at {o:#x}")
                    });
                }
            }
            Region::Notify(o) => {
                let q = o / u64::from(NOTIFY_OFF_MULTIPLIER);
                if self.broken {
                    self.ignored("kick-broken", || {
                        "notification while the device needs a reset".to_string()
                    });
                } else {
                    self.kicked |= 1 << q;
                }
            }
            Region::Unmapped => self.ignored("unmapped", || {
                format!("access to BAR offset {offset:#x}, outside every structure (reads 0)")
            }),
        }
    }

    fn interrupt_pending(&self) -> bool {
        self.isr != 0
    }

    fn has_work(&self) -> bool {
        self.kicked != 0 && self.live()
    }

    fn process(&mut self, mem: &mut dyn DmaMemory) {
        if !self.live() {
            return;
        }
        let kicked = std::mem::take(&mut self.kicked);
        for q in 0..self.queues.len() {
            if kicked & (1 << q) == 0 || self.broken {
                continue;
            }
            if !self.queues[q].enabled {
                self.ignored("kick-disabled", || {
                    format!("notification for disabled queue {q}")
                });
                continue;
            }
            let (notify, error) = self.process_queue(q, mem);
            if notify {
                self.isr |= ISR_QUEUE;
            }
            if let Some(e) = error {
                self.fail(e);
            }
        }
    }
}
