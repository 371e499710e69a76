//! A PCI function's 256-byte configuration space with a type-0 header, as every function on
//! krr's bus presents it.
//!
//! Each byte has a write mask: software changes only the bits its mask allows, the rest are
//! read-only. BAR sizing follows from the masks alone: a memory BAR of size `s` lets software
//! write only the address bits above `s - 1`, so writing all-ones reads back `!(s - 1)` with the
//! read-only type bits, which is what Linux's `__pci_read_base` decodes.
//!
//! Modelled: vendor/device/revision/class, command (memory space, bus master, parity and SERR
//! enables stored, INTx disable), status (capabilities list, interrupt status), cache line
//! size (stored), header type 0, six BAR slots with 32-bit and 64-bit memory BARs, subsystem
//! vendor/ID, the capability list, interrupt line (stored for software) and pin.
//!
//! Left out: I/O BARs (the IO enable bit is hardwired 0), an expansion ROM (its BAR reads 0,
//! so sizing finds none), BIST, Min_Gnt/Max_Lat, the latency timer (hardwired 0: no bus
//! arbitration), the status register's error bits (nothing reports parity, abort or system
//! errors, so they read 0 and there is nothing to clear), multi-function headers.

/// Configuration registers (offsets into a type-0 header).
pub const CFG_VENDOR_ID: usize = 0x00;
pub const CFG_DEVICE_ID: usize = 0x02;
pub const CFG_COMMAND: usize = 0x04;
pub const CFG_STATUS: usize = 0x06;
pub const CFG_REVISION: usize = 0x08;
pub const CFG_CLASS_PROG_IF: usize = 0x09;
pub const CFG_CLASS_SUBCLASS: usize = 0x0a;
pub const CFG_CLASS_BASE: usize = 0x0b;
pub const CFG_CACHE_LINE_SIZE: usize = 0x0c;
pub const CFG_LATENCY_TIMER: usize = 0x0d;
pub const CFG_HEADER_TYPE: usize = 0x0e;
pub const CFG_BIST: usize = 0x0f;
/// The first of six base address registers, 4 bytes each.
pub const CFG_BAR0: usize = 0x10;
pub const CFG_CARDBUS_CIS: usize = 0x28;
pub const CFG_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const CFG_SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM base address (absent: reads 0).
pub const CFG_ROM_ADDRESS: usize = 0x30;
/// Offset of the first capability (0: none).
pub const CFG_CAPABILITY_LIST: usize = 0x34;
pub const CFG_INTERRUPT_LINE: usize = 0x3c;
pub const CFG_INTERRUPT_PIN: usize = 0x3d;
pub const CFG_MIN_GNT: usize = 0x3e;
pub const CFG_MAX_LAT: usize = 0x3f;
/// Size of the type-0 header: capabilities start at or above it.
pub const CFG_HEADER_SIZE: usize = 0x40;
/// Size of a conventional configuration space.
pub const CFG_SPACE_SIZE: usize = 256;
/// Number of BAR slots in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 0x0001;
/// Command register: memory space enable (the function decodes its memory BARs).
pub const COMMAND_MEMORY: u16 = 0x0002;
/// Command register: bus master enable (the function may DMA).
pub const COMMAND_MASTER: u16 = 0x0004;
/// Command register: parity error response.
pub const COMMAND_PARITY: u16 = 0x0040;
/// Command register: SERR# enable.
pub const COMMAND_SERR: u16 = 0x0100;
/// Command register: INTx emulation disable (the pin stays deasserted).
pub const COMMAND_INTX_DISABLE: u16 = 0x0400;

/// Status register: INTx pending in the function (whatever the command's INTx disable).
pub const STATUS_INTERRUPT: u16 = 0x0008;
/// Status register: the capability list at [`CFG_CAPABILITY_LIST`] is valid.
pub const STATUS_CAP_LIST: u16 = 0x0010;
/// Status register: fast back-to-back capable.
pub const STATUS_FAST_B2B: u16 = 0x0080;
/// Status register: DEVSEL timing medium.
pub const STATUS_DEVSEL_MEDIUM: u16 = 0x0200;

/// Memory BAR: bits 2:1 = 10, a 64-bit BAR spanning this slot and the next.
pub const BAR_MEM_TYPE_64: u32 = 0x4;
/// Memory BAR: prefetchable.
pub const BAR_MEM_PREFETCH: u32 = 0x8;
/// Memory BAR: the address bits (the low four are type bits).
pub const BAR_MEM_ADDR_MASK: u32 = !0xf;

/// Interrupt pin register: INTA#.
pub const INTERRUPT_PIN_INTA: u8 = 1;
/// Capability ID: vendor specific.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Offsets within a capability: ID, next pointer.
pub const CAP_ID: usize = 0;
pub const CAP_NEXT: usize = 1;

/// The kind of a memory BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR (one slot).
    Memory32,
    /// A 64-bit memory BAR (this slot and the next).
    Memory64,
}

/// A memory BAR a function implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

/// The read-only identity of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class << 16 | subclass << 8 | programming interface.
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem_id: u16,
    /// 0: no interrupt; [`INTERRUPT_PIN_INTA`]: INTA#.
    pub interrupt_pin: u8,
}

/// A function's configuration space. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CFG_SPACE_SIZE],
    /// Per byte, the bits software may change.
    writable: [u8; CFG_SPACE_SIZE],
    bars: [Option<Bar>; NUM_BARS],
    /// Offset of the last capability in the list (its next pointer is 0).
    last_cap: Option<usize>,
    /// Where the next capability goes.
    next_cap: usize,
}

impl ConfigSpace {
    /// A header with `id`, no BARs, no capabilities, everything disabled in the command
    /// register. Software may set bus master, parity, SERR and (with a pin) INTx disable;
    /// [`ConfigSpace::add_bar`] makes memory enable writable.
    pub fn new(id: &Identity) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CFG_SPACE_SIZE],
            writable: [0; CFG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            last_cap: None,
            next_cap: CFG_HEADER_SIZE,
        };
        c.set_u16(CFG_VENDOR_ID, id.vendor);
        c.set_u16(CFG_DEVICE_ID, id.device);
        c.bytes[CFG_REVISION] = id.revision;
        let [prog_if, subclass, base, _] = id.class.to_le_bytes();
        c.bytes[CFG_CLASS_PROG_IF] = prog_if;
        c.bytes[CFG_CLASS_SUBCLASS] = subclass;
        c.bytes[CFG_CLASS_BASE] = base;
        c.set_u16(CFG_SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set_u16(CFG_SUBSYSTEM_ID, id.subsystem_id);
        c.bytes[CFG_INTERRUPT_PIN] = id.interrupt_pin;
        let mut command = COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR;
        if id.interrupt_pin != 0 {
            command |= COMMAND_INTX_DISABLE;
        }
        c.set_command_writable(command);
        c.writable[CFG_CACHE_LINE_SIZE] = 0xff;
        c.writable[CFG_INTERRUPT_LINE] = 0xff;
        c
    }

    /// Replace the set of command bits software may change.
    pub fn set_command_writable(&mut self, mask: u16) {
        let [lo, hi] = mask.to_le_bytes();
        self.writable[CFG_COMMAND] = lo;
        self.writable[CFG_COMMAND + 1] = hi;
    }

    /// Implement memory BAR `index` (address 0: unassigned). A 64-bit BAR also takes slot
    /// `index + 1`. Panics on a layout mistake in the device model (not guest input).
    pub fn add_bar(&mut self, index: usize, bar: Bar) {
        let slots = match bar.kind {
            BarKind::Memory32 => 1,
            BarKind::Memory64 => 2,
        };
        assert!(index + slots <= NUM_BARS, "BAR {index} does not fit");
        assert!(
            bar.size.is_power_of_two() && bar.size >= 16,
            "BAR size {:#x}",
            bar.size
        );
        assert!(
            bar.kind == BarKind::Memory64 || bar.size <= 1 << 31,
            "32-bit BAR too large"
        );
        assert!(
            self.bars[index..index + slots].iter().all(Option::is_none),
            "BAR {index} already in use"
        );
        self.bars[index] = Some(bar);
        let off = CFG_BAR0 + 4 * index;
        let mut flags = 0;
        if bar.kind == BarKind::Memory64 {
            flags |= BAR_MEM_TYPE_64;
        }
        if bar.prefetchable {
            flags |= BAR_MEM_PREFETCH;
        }
        self.set_u32(off, flags);
        let mask = !(bar.size - 1);
        self.set_writable_u32(off, mask as u32 & BAR_MEM_ADDR_MASK);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(off + 4, 0);
            self.set_writable_u32(off + 4, (mask >> 32) as u32);
        }
        let command =
            u16::from_le_bytes([self.writable[CFG_COMMAND], self.writable[CFG_COMMAND + 1]]);
        self.set_command_writable(command | COMMAND_MEMORY);
    }

    /// Append a capability: `body` is everything after its ID and next pointer, `writable`
    /// the write masks of `body` (shorter means the rest is read-only). Returns its offset.
    /// Panics when the capabilities do not fit (a device model mistake).
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        let len = 2 + body.len();
        assert!(off + len <= CFG_SPACE_SIZE, "capabilities overflow");
        assert!(writable.len() <= body.len());
        self.bytes[off + CAP_ID] = id;
        self.bytes[off + CAP_NEXT] = 0;
        self.bytes[off + 2..off + len].copy_from_slice(body);
        self.writable[off + 2..off + 2 + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(prev) => self.bytes[prev + CAP_NEXT] = off as u8,
            None => {
                self.bytes[CFG_CAPABILITY_LIST] = off as u8;
                let status = self.u16(CFG_STATUS) | STATUS_CAP_LIST;
                self.set_u16(CFG_STATUS, status);
            }
        }
        self.last_cap = Some(off);
        // Linux masks the low two bits of each pointer: keep capabilities dword aligned.
        self.next_cap = (off + len + 3) & !3;
        off
    }

    /// A software read of `size` bytes (1, 2, 4) at `offset`; bytes past the space read 0xFF.
    pub fn read(&self, offset: usize, size: u8) -> u32 {
        (0..usize::from(size.min(4))).fold(0, |v, i| {
            let byte = self.bytes.get(offset + i).copied().unwrap_or(0xff);
            v | u32::from(byte) << (8 * i)
        })
    }

    /// A software write: only the writable bits of each byte change.
    pub fn write(&mut self, offset: usize, size: u8, value: u32) {
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            let o = offset + i;
            if o < CFG_SPACE_SIZE {
                let mask = self.writable[o];
                self.bytes[o] = (self.bytes[o] & !mask) | (byte & mask);
            }
        }
    }

    /// The device's own view: a byte, whatever the write masks say.
    pub fn u8(&self, offset: usize) -> u8 {
        self.bytes[offset]
    }
    pub fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }
    pub fn u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(b)
    }
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.bytes[offset] = value;
    }
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    /// Set the bits software may change in byte `offset`.
    pub fn set_write_mask(&mut self, offset: usize, mask: u8) {
        self.writable[offset] = mask;
    }
    fn set_writable_u32(&mut self, offset: usize, mask: u32) {
        self.writable[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    pub fn command(&self) -> u16 {
        self.u16(CFG_COMMAND)
    }

    /// Set the command register as firmware would (only bits software could set).
    pub fn set_command(&mut self, value: u16) {
        self.write(CFG_COMMAND, 2, u32::from(value));
    }

    /// Whether the function may master the bus (DMA).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_MASTER != 0
    }

    /// The INTx pin's level given the function's pending interrupt: the status register's
    /// interrupt bit follows `pending`; the pin is asserted unless INTx is disabled.
    pub fn intx_level(&mut self, pending: bool) -> bool {
        let status = self.u16(CFG_STATUS) & !STATUS_INTERRUPT;
        let bit = if pending { STATUS_INTERRUPT } else { 0 };
        self.set_u16(CFG_STATUS, status | bit);
        pending && self.u8(CFG_INTERRUPT_PIN) != 0 && self.command() & COMMAND_INTX_DISABLE == 0
    }

    /// The BAR a function implements in slot `index` (None for unused and upper-half slots).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address programmed into BAR `index` (0 if none).
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(bar) = self.bar(index) else {
            return 0;
        };
        let off = CFG_BAR0 + 4 * index;
        let low = u64::from(self.u32(off) & BAR_MEM_ADDR_MASK);
        match bar.kind {
            BarKind::Memory32 => low,
            BarKind::Memory64 => low | u64::from(self.u32(off + 4)) << 32,
        }
    }

    /// Program BAR `index` as firmware does (the address must be aligned to the BAR's size).
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bar(index) else {
            return;
        };
        let off = CFG_BAR0 + 4 * index;
        self.write(off, 4, address as u32);
        if bar.kind == BarKind::Memory64 {
            self.write(off + 4, 4, (address >> 32) as u32);
        }
    }

    /// The memory ranges the function decodes now, as `(bar, base, size)`: none while the
    /// command register's memory enable is clear; a BAR at address 0 (unassigned, or being
    /// sized) or one that would wrap past the top of the address space decodes nothing.
    pub fn decoded_bars(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        let enabled = self.command() & COMMAND_MEMORY != 0;
        (0..NUM_BARS).filter_map(move |i| {
            let bar = self.bar(i)?;
            let base = self.bar_address(i);
            (enabled && base != 0 && base.checked_add(bar.size).is_some())
                .then_some((i, base, bar.size))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            vendor: 0x1234,
            device: 0x5678,
            revision: 3,
            class: 0x01_8000,
            subsystem_vendor: 0xabcd,
            subsystem_id: 0x0042,
            interrupt_pin: INTERRUPT_PIN_INTA,
        }
    }

    #[test]
    fn header_fields() {
        let c = ConfigSpace::new(&id());
        assert_eq!(c.read(CFG_VENDOR_ID, 4), 0x5678_1234);
        assert_eq!(c.read(CFG_REVISION, 4), 0x0180_0003);
        assert_eq!(c.read(CFG_SUBSYSTEM_VENDOR_ID, 4), 0x0042_abcd);
        assert_eq!(c.read(CFG_HEADER_TYPE, 1), 0);
        assert_eq!(c.read(CFG_INTERRUPT_PIN, 1), 1);
        assert_eq!(c.read(CFG_STATUS, 2) & u32::from(STATUS_CAP_LIST), 0);
        assert_eq!(
            c.read(0xfe, 4),
            0xffff_0000,
            "bytes past the space read 0xFF"
        );
    }

    #[test]
    fn write_masks() {
        let mut c = ConfigSpace::new(&id());
        c.write(CFG_VENDOR_ID, 4, 0);
        assert_eq!(c.read(CFG_VENDOR_ID, 4), 0x5678_1234);
        c.write(CFG_COMMAND, 2, 0xffff);
        let expected = COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR | COMMAND_INTX_DISABLE;
        assert_eq!(c.command(), expected, "no BARs: memory enable stays 0");
        c.write(CFG_CACHE_LINE_SIZE, 4, 0xffff_ffff);
        assert_eq!(
            c.read(CFG_CACHE_LINE_SIZE, 4),
            0x0000_00ff,
            "latency timer, BIST read 0"
        );
        c.write(CFG_INTERRUPT_LINE, 4, 0xffff_ff0b);
        assert_eq!(c.read(CFG_INTERRUPT_LINE, 4), 0x0000_010b);
        c.write(CFG_ROM_ADDRESS, 4, 0xffff_f800);
        assert_eq!(c.read(CFG_ROM_ADDRESS, 4), 0, "no expansion ROM");
    }

    #[test]
    fn capability_chain() {
        let mut c = ConfigSpace::new(&id());
        let a = c.add_capability(CAP_ID_VENDOR, &[1, 2, 3], &[]);
        let b = c.add_capability(0x05, &[9; 6], &[0xff]);
        assert_eq!(a, CFG_HEADER_SIZE);
        assert_eq!(b, CFG_HEADER_SIZE + 8, "dword aligned");
        assert_eq!(c.u8(CFG_CAPABILITY_LIST), a as u8);
        assert_ne!(c.u16(CFG_STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read(a, 4), 0x0201_4809, "ID, next = 0x48, body");
        assert_eq!(c.read(b, 2), 0x0005);
        c.write(b + 2, 2, 0x0000);
        assert_eq!(
            c.read(b + 2, 2),
            0x0900,
            "only the first body byte is writable"
        );
    }

    #[test]
    fn intx_level_and_status() {
        let mut c = ConfigSpace::new(&id());
        assert!(c.intx_level(true));
        assert_ne!(c.u16(CFG_STATUS) & STATUS_INTERRUPT, 0);
        c.write(CFG_COMMAND, 2, u32::from(COMMAND_INTX_DISABLE));
        assert!(!c.intx_level(true), "masked by INTx disable");
        assert_ne!(
            c.u16(CFG_STATUS) & STATUS_INTERRUPT,
            0,
            "status still shows it"
        );
        assert!(!c.intx_level(false));
        assert_eq!(c.u16(CFG_STATUS) & STATUS_INTERRUPT, 0);
    }
}
