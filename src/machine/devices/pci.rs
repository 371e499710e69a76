//! PCI configuration mechanism #1 with a single device, an Intel 440FX host bridge at 00:00.0,
//! plus the PIIX reset control register at 0xCF9 (it sits inside the same 8-port window, so it
//! lives here rather than in a separate device).
//!
//! Port convention: base 0xCF8 ([`PCI_BASE`]), eight ports:
//! * offset 0 ([`OFFSET_ADDRESS`], 0xCF8), 32-bit accesses only: CONFIG_ADDRESS (enable bit 31,
//!   bus 23:16, device 15:11, function 10:8, register 7:2, and bits 27:24 as the extended
//!   register number of AMD's IO-ECS scheme; other bits read 0);
//! * offsets 4..=7 ([`OFFSET_DATA`], 0xCFC..=0xCFF): CONFIG_DATA; a byte, word or dword access at
//!   0xCFC + n reaches configuration byte `register + n` onwards (Linux's `pci_conf1_read`
//!   does `inb(0xCFC + (reg & 3))`, `inw(0xCFC + (reg & 2))`, `inl(0xCFC)`);
//! * offset 1 ([`OFFSET_RESET_CONTROL`], 0xCF9), byte accesses: the reset control register;
//!   writing a value with bit 2 (reset CPU) set, as Linux's `reboot=pci` does with 0x06/0x0E,
//!   requests [`MachineRequest::Reset`]; bits 1 and 3 are stored and read back.
//!
//! Other byte/word accesses in 0xCF8..=0xCFB (e.g. Linux's `outb(0x01, 0xCFB)` and the
//! mechanism #2 probe) read all-ones and are ignored, so mechanism #2 is not detected.
//!
//! Configuration space: 00:00.0 is the host bridge (vendor 0x8086, device 0x1237, revision 2,
//! class 0x060000, header type 0, no BARs, no capabilities, no interrupt pin). Its command
//! register keeps only [`COMMAND_WRITABLE`]; every other register is read-only (the 440FX's
//! chipset registers, PAM/SMRAM/DRB, read 0 and ignore writes). Any other bus, device or
//! function, or a register beyond 0xFF, reads all-ones and ignores writes. With the enable bit
//! clear CONFIG_DATA reads all-ones.

use super::{DeviceCtx, MachineRequest, PortDevice};

/// The base port (CONFIG_ADDRESS).
pub const PCI_BASE: u16 = 0xcf8;
/// Number of ports decoded from the base.
pub const NUM_PORTS: u16 = 8;
/// Offset of CONFIG_ADDRESS (0xCF8).
pub const OFFSET_ADDRESS: u16 = 0;
/// Offset of the reset control register (0xCF9).
pub const OFFSET_RESET_CONTROL: u16 = 1;
/// Offset of CONFIG_DATA (0xCFC).
pub const OFFSET_DATA: u16 = 4;
/// Offset of CONFIG_DATA's last byte (0xCFF).
pub const OFFSET_DATA_LAST: u16 = 7;

/// CONFIG_ADDRESS: enable configuration cycles.
pub const ADDR_ENABLE: u32 = 0x8000_0000;
/// CONFIG_ADDRESS: extended register number (AMD IO-ECS), bits 27:24.
pub const ADDR_EXT_REG_MASK: u32 = 0x0f00_0000;
pub const ADDR_EXT_REG_SHIFT: u32 = 24;
/// CONFIG_ADDRESS: bus number.
pub const ADDR_BUS_SHIFT: u32 = 16;
/// CONFIG_ADDRESS: device number.
pub const ADDR_DEVICE_SHIFT: u32 = 11;
pub const ADDR_DEVICE_MASK: u32 = 0x1f;
/// CONFIG_ADDRESS: function number.
pub const ADDR_FUNCTION_SHIFT: u32 = 8;
pub const ADDR_FUNCTION_MASK: u32 = 0x7;
/// CONFIG_ADDRESS: dword-aligned register number.
pub const ADDR_REG_MASK: u32 = 0xfc;
/// The CONFIG_ADDRESS bits that are stored and read back.
pub const ADDR_WRITABLE: u32 = ADDR_ENABLE | ADDR_EXT_REG_MASK | 0x00ff_ff00 | ADDR_REG_MASK;

/// Reset control: system reset (hard reset when bit 2 is written).
pub const RCR_SYS_RST: u8 = 0x02;
/// Reset control: reset the CPU.
pub const RCR_RST_CPU: u8 = 0x04;
/// Reset control: full reset (power cycle).
pub const RCR_FULL_RST: u8 = 0x08;

/// Configuration registers (offsets into a type-0 header).
pub const CFG_VENDOR_ID: usize = 0x00;
pub const CFG_DEVICE_ID: usize = 0x02;
pub const CFG_COMMAND: usize = 0x04;
pub const CFG_STATUS: usize = 0x06;
pub const CFG_REVISION: usize = 0x08;
pub const CFG_CLASS_PROG_IF: usize = 0x09;
pub const CFG_CLASS_SUBCLASS: usize = 0x0a;
pub const CFG_CLASS_BASE: usize = 0x0b;
pub const CFG_HEADER_TYPE: usize = 0x0e;
/// Size of a conventional configuration space.
pub const CFG_SPACE_SIZE: usize = 256;

/// Command register: I/O space enable.
pub const COMMAND_IO: u16 = 0x0001;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 0x0002;
/// Command register: bus master enable.
pub const COMMAND_MASTER: u16 = 0x0004;
/// Command register: parity error response.
pub const COMMAND_PARITY: u16 = 0x0040;
/// Command register: SERR# enable.
pub const COMMAND_SERR: u16 = 0x0100;
/// The command bits the host bridge lets software change.
pub const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR;

/// Status register: fast back-to-back capable.
pub const STATUS_FAST_B2B: u16 = 0x0080;
/// Status register: DEVSEL timing medium.
pub const STATUS_DEVSEL_MEDIUM: u16 = 0x0200;

/// The host bridge's identity (Intel 82441FX, "440FX").
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE: u16 = 0x1237;
pub const HOST_BRIDGE_REVISION: u8 = 0x02;
/// Class code: bridge (0x06), host bridge (0x00), prog-if 0.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_0000;
/// The 440FX's power-on command and status values.
pub const HOST_BRIDGE_COMMAND_RESET: u16 = COMMAND_MEMORY | COMMAND_MASTER;
pub const HOST_BRIDGE_STATUS: u16 = STATUS_DEVSEL_MEDIUM | STATUS_FAST_B2B;

/// The PCI configuration ports and host bridge; see the module documentation.
#[derive(Debug)]
pub struct PciHost {
    address: u32,
    reset_control: u8,
    bridge: [u8; CFG_SPACE_SIZE],
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    pub fn new() -> Self {
        let mut bridge = [0u8; CFG_SPACE_SIZE];
        let mut put16 = |off: usize, v: u16| bridge[off..off + 2].copy_from_slice(&v.to_le_bytes());
        put16(CFG_VENDOR_ID, HOST_BRIDGE_VENDOR);
        put16(CFG_DEVICE_ID, HOST_BRIDGE_DEVICE);
        put16(CFG_COMMAND, HOST_BRIDGE_COMMAND_RESET);
        put16(CFG_STATUS, HOST_BRIDGE_STATUS);
        let [prog_if, subclass, base, _] = HOST_BRIDGE_CLASS.to_le_bytes();
        bridge[CFG_REVISION] = HOST_BRIDGE_REVISION;
        bridge[CFG_CLASS_PROG_IF] = prog_if;
        bridge[CFG_CLASS_SUBCLASS] = subclass;
        bridge[CFG_CLASS_BASE] = base;
        bridge[CFG_HEADER_TYPE] = 0;
        PciHost {
            address: 0,
            reset_control: 0,
            bridge,
        }
    }

    /// The current CONFIG_ADDRESS.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// The configuration byte offset CONFIG_ADDRESS selects on the host bridge, or None when
    /// it selects nothing that exists (disabled, another device, an extended register).
    fn selected_bridge_register(&self) -> Option<usize> {
        let a = self.address;
        let bus = (a >> ADDR_BUS_SHIFT) & 0xff;
        let device = (a >> ADDR_DEVICE_SHIFT) & ADDR_DEVICE_MASK;
        let function = (a >> ADDR_FUNCTION_SHIFT) & ADDR_FUNCTION_MASK;
        let ext = (a & ADDR_EXT_REG_MASK) >> ADDR_EXT_REG_SHIFT;
        if a & ADDR_ENABLE == 0 || bus != 0 || device != 0 || function != 0 || ext != 0 {
            return None;
        }
        Some((a & ADDR_REG_MASK) as usize)
    }

    fn write_bridge_byte(&mut self, offset: usize, value: u8) {
        let [lo_mask, hi_mask] = COMMAND_WRITABLE.to_le_bytes();
        let mask = match offset {
            o if o == CFG_COMMAND => lo_mask,
            o if o == CFG_COMMAND + 1 => hi_mask,
            _ => return,
        };
        let slot = &mut self.bridge[offset];
        *slot = (*slot & !mask) | (value & mask);
    }

    fn read_data(&self, offset: u16, size: u8) -> u32 {
        let reg = self.selected_bridge_register();
        let lane = usize::from(offset - OFFSET_DATA);
        let mut value = 0u32;
        for i in 0..usize::from(size.min(4)) {
            let byte = match reg {
                Some(reg) if lane + i < 4 => self.bridge[reg + lane + i],
                _ => 0xff,
            };
            value |= u32::from(byte) << (8 * i);
        }
        value
    }

    fn write_data(&mut self, offset: u16, size: u8, value: u32) {
        let Some(reg) = self.selected_bridge_register() else {
            return;
        };
        let lane = usize::from(offset - OFFSET_DATA);
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            if lane + i < 4 {
                self.write_bridge_byte(reg + lane + i, *byte);
            }
        }
    }
}

/// All-ones of an access's width.
fn all_ones(size: u8) -> u32 {
    match size {
        0 => 0,
        1 => 0xff,
        2 => 0xffff,
        3 => 0xff_ffff,
        _ => u32::MAX,
    }
}

impl PortDevice for PciHost {
    fn read(&mut self, offset: u16, size: u8, _ctx: &mut DeviceCtx) -> u32 {
        match (offset, size) {
            (OFFSET_ADDRESS, 4) => self.address,
            (OFFSET_RESET_CONTROL, 1) => u32::from(self.reset_control),
            (OFFSET_DATA..=OFFSET_DATA_LAST, _) => self.read_data(offset, size),
            _ => all_ones(size),
        }
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        match (offset, size) {
            (OFFSET_ADDRESS, 4) => self.address = value & ADDR_WRITABLE,
            (OFFSET_RESET_CONTROL, 1) => {
                let value = value.to_le_bytes()[0];
                // The reset bit itself does not stick.
                self.reset_control = value & (RCR_SYS_RST | RCR_FULL_RST);
                if value & RCR_RST_CPU != 0 {
                    ctx.requests.push(MachineRequest::Reset);
                }
            }
            (OFFSET_DATA..=OFFSET_DATA_LAST, _) => self.write_data(offset, size, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::IrqLines;
    use super::*;

    struct Bus {
        pci: PciHost,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
    }

    impl Bus {
        fn new() -> Self {
            Bus {
                pci: PciHost::new(),
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
}
