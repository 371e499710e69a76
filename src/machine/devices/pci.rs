//! PCI configuration mechanism #1 and the functions on bus 0: an Intel 440FX host bridge at
//! 00:00.0 and whatever devices the machine plugs in ([`PciHost::add`]), plus the PIIX reset
//! control register at 0xCF9 (it sits inside the same 8-port window, so it lives here rather
//! than in a separate device).
//!
//! Port convention: base 0xCF8 ([`PCI_BASE`]), eight ports:
//! * offset 0 ([`OFFSET_ADDRESS`], 0xCF8), 32-bit accesses only: CONFIG_ADDRESS (enable bit 31,
//!   bus 23:16, device 15:11, function 10:8, register 7:2, and bits 27:24 as the extended
//!   register number of AMD's IO-ECS scheme; other bits read 0);
//! * offsets 4..=7 ([`OFFSET_DATA`], 0xCFC..=0xCFF): CONFIG_DATA; a byte, word or dword access at
//!   0xCFC + n reaches configuration byte `register + n` onwards (Linux's `pci_conf1_read`
//!   does `inb(0xCFC + (reg & 3))`, `inw(0xCFC + (reg & 2))`, `inl(0xCFC)`); bytes past the
//!   selected dword read 0xFF and are not written;
//! * offset 1 ([`OFFSET_RESET_CONTROL`], 0xCF9), byte accesses: the reset control register;
//!   writing a value with bit 2 (reset CPU) set, as Linux's `reboot=pci` does with 0x06/0x0E,
//!   requests [`MachineRequest::Reset`]; bits 1 and 3 are stored and read back.
//!
//! Other byte/word accesses in 0xCF8..=0xCFB (e.g. Linux's `outb(0x01, 0xCFB)` and the
//! mechanism #2 probe) read all-ones and are ignored, so mechanism #2 is not detected.
//!
//! Configuration space: every function presents a type-0 header ([`config::ConfigSpace`]).
//! 00:00.0 is the host bridge (vendor 0x8086, device 0x1237, revision 2, class 0x060000, no
//! BARs, no capabilities, no interrupt pin); its command register keeps only
//! [`COMMAND_WRITABLE`] and every other register is read-only (the 440FX's chipset registers,
//! PAM/SMRAM/DRB, read 0 and ignore writes). Other functions sit at device numbers 1-31,
//! function 0, single-function. Any other bus, device or function, or a register beyond 0xFF,
//! reads all-ones and ignores writes. With the enable bit clear CONFIG_DATA reads all-ones.
//!
//! # What the host does in place of firmware
//!
//! krr boots Linux without a BIOS, so [`PciHost::add`] leaves each function as SeaBIOS would:
//! its memory BARs assigned in the PCI memory window [`PCI_MMIO_START`]..[`PCI_MMIO_END`]
//! (0xC000_0000-0xFEBF_FFFF, between the top of low RAM, which must stay at or below 3 GiB,
//! and the IO-APIC), bottom-up in slot order, each aligned to its size and to at least a
//! page; memory decoding enabled in the command register (bus mastering left to the
//! driver); and the interrupt line register set to the ISA IRQ the machine wired its INTA#
//! to. Linux keeps these assignments (it reads them back with `pci_read_bases`) unless it
//! chooses to move them.
//!
//! # Interface for the machine
//!
//! * Port IO at 0xCF8..=0xCFF: the [`PortDevice`] impl (which also refreshes the IRQ lines:
//!   a configuration access can change INTx disable or, through a device's own registers,
//!   its interrupt).
//! * MMIO: for a physical address without RAM, [`PciHost::mmio_read`] / [`PciHost::mmio_write`]
//!   answer when a function decodes it now ([`PciHost::mmio_owner`]: BAR addresses change
//!   when software reprograms them, and a function decodes only while its command
//!   register's memory enable is set), and return `None` / `false` otherwise.
//! * IRQs: each function's INTA# is wired to the ISA line given to [`PciHost::add`] (level,
//!   active while the function has an interrupt pending and INTx is not disabled; functions
//!   on the same line are ORed). The line levels are written into the [`IrqLines`] after every
//!   access and after [`PciHost::process`]; the PIC should treat them as level-triggered
//!   (ELCR), as PCI interrupts are.
//! * DMA: an MMIO write may leave work (a virtio queue notification). The machine checks
//!   [`PciHost::has_pending_work`] after MMIO writes and calls [`PciHost::process`] at the next
//!   instruction boundary with guest memory; functions without bus mastering enabled keep
//!   their work until it is.
//!
//! Left out: bridges and buses other than 0, multi-function devices, I/O BARs, expansion
//! ROMs, MSI/MSI-X, PCI Express extended configuration space (and MMCONFIG), config
//! mechanism #2.

pub mod config;

pub use config::*;

use super::dma::DmaMemory;
use super::{DeviceCtx, IrqLines, MachineRequest, PortDevice};
use std::collections::BTreeSet;

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

/// The command bits the host bridge lets software change.
pub const COMMAND_WRITABLE: u16 =
    COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR;

/// The host bridge's identity (Intel 82441FX, "440FX").
pub const HOST_BRIDGE_VENDOR: u16 = 0x8086;
pub const HOST_BRIDGE_DEVICE: u16 = 0x1237;
pub const HOST_BRIDGE_REVISION: u8 = 0x02;
/// Class code: bridge (0x06), host bridge (0x00), prog-if 0.
pub const HOST_BRIDGE_CLASS: u32 = 0x06_0000;
/// The 440FX's power-on command and status values.
pub const HOST_BRIDGE_COMMAND_RESET: u16 = COMMAND_MEMORY | COMMAND_MASTER;
pub const HOST_BRIDGE_STATUS: u16 = STATUS_DEVSEL_MEDIUM | STATUS_FAST_B2B;

/// The PCI memory window the host assigns BARs from (the machine declares it to the guest:
/// no RAM and no other device may sit in it).
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// End (exclusive) of the window: the IO-APIC's page follows.
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
/// Assigned BARs start on a page boundary at least, so no two share a page.
pub const BAR_MIN_ALIGN: u64 = 0x1000;
/// The device number of the host bridge.
pub const HOST_BRIDGE_SLOT: u8 = 0;
/// Device numbers on a bus.
pub const NUM_SLOTS: u8 = 32;
/// The interrupt line value meaning "not connected" (x86 convention).
pub const INTERRUPT_LINE_NONE: u8 = 0xff;

/// A function on the bus, as the host sees it.
pub trait PciFunction {
    /// A short name for logs.
    fn name(&self) -> &str;
    /// The configuration space as the function keeps it (reading it has no side effects).
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A configuration read by software of `size` bytes at `offset`, within one dword.
    /// Functions with side-effecting registers override it.
    fn config_read(&mut self, offset: usize, size: u8) -> u32 {
        self.config().read(offset, size)
    }
    /// A configuration write by software, within one dword.
    fn config_write(&mut self, offset: usize, size: u8, value: u32) {
        self.config_mut().write(offset, size, value);
    }
    /// A read of `size` bytes (1, 2, 4, 8) at `offset` into memory BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, size: u8) -> u64;
    /// A write of the low `size` bytes of `value` at `offset` into memory BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, size: u8, value: u64);
    /// Whether the function requests an interrupt (before the command's INTx disable).
    fn interrupt_pending(&self) -> bool {
        false
    }
    /// Whether a notification left work for [`PciFunction::process`].
    fn has_work(&self) -> bool {
        false
    }
    /// Do that work, reading and writing guest RAM through `mem` (bus mastering is enabled).
    fn process(&mut self, _mem: &mut dyn DmaMemory) {}
}

/// The 440FX host bridge: identification and a command register.
#[derive(Clone, Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(&Identity {
            vendor: HOST_BRIDGE_VENDOR,
            device: HOST_BRIDGE_DEVICE,
            revision: HOST_BRIDGE_REVISION,
            class: HOST_BRIDGE_CLASS,
            subsystem_vendor: 0,
            subsystem_id: 0,
            interrupt_pin: 0,
        });
        // Only the command register is writable on the bridge.
        config.set_write_mask(CFG_CACHE_LINE_SIZE, 0);
        config.set_write_mask(CFG_INTERRUPT_LINE, 0);
        config.set_command_writable(COMMAND_WRITABLE);
        config.set_command(HOST_BRIDGE_COMMAND_RESET);
        config.set_u16(CFG_STATUS, HOST_BRIDGE_STATUS);
        HostBridge { config }
    }
}

impl PciFunction for HostBridge {
    fn name(&self) -> &str {
        "440FX host bridge"
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    // The bridge has no BARs, so the host never routes an access here.
    fn bar_read(&mut self, bar: usize, offset: u64, _size: u8) -> u64 {
        log::debug!("pci: host bridge has no BAR {bar} (read at {offset:#x})");
        u64::MAX
    }
    fn bar_write(&mut self, bar: usize, offset: u64, _size: u8, _value: u64) {
        log::debug!("pci: host bridge has no BAR {bar} (write at {offset:#x})");
    }
}

/// Why a function could not be plugged in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    #[error("PCI device number {0} is out of range (1-31)")]
    SlotOutOfRange(u8),
    #[error("PCI device number {0} is already in use")]
    SlotInUse(u8),
    #[error("ISA IRQ {0} does not exist (0-15)")]
    BadIrq(u8),
    #[error("the PCI memory window has no room for BAR {bar} ({size:#x} bytes) of {name}")]
    WindowFull { name: String, bar: usize, size: u64 },
}

/// Where an MMIO address lands: function (index in the host, 0 = host bridge), BAR, offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioTarget {
    pub function: usize,
    pub bar: usize,
    pub offset: u64,
}

/// One plugged-in function.
struct Slot {
    device: u8,
    function: Box<dyn PciFunction>,
    /// The ISA IRQ its INTA# is wired to.
    irq: Option<u8>,
    /// Work held back because bus mastering is off (logged once).
    held_logged: bool,
}

/// The PCI configuration ports, the functions on bus 0 and their BARs; see the module
/// documentation.
pub struct PciHost {
    address: u32,
    reset_control: u8,
    slots: Vec<Slot>,
    /// Next free address in the memory window.
    next_mmio: u64,
}

impl Default for PciHost {
    fn default() -> Self {
        Self::new()
    }
}

impl PciHost {
    /// The host with only the host bridge.
    pub fn new() -> Self {
        PciHost {
            address: 0,
            reset_control: 0,
            slots: vec![Slot {
                device: HOST_BRIDGE_SLOT,
                function: Box::new(HostBridge::new()),
                irq: None,
                held_logged: false,
            }],
            next_mmio: PCI_MMIO_START,
        }
    }

    /// Plug `function` in at 00:`device`.0 with its INTA# wired to ISA IRQ `irq`, and do the
    /// firmware's part (see the module documentation). Returns the function's index for
    /// [`MmioTarget`] and [`PciHost::function_mut`].
    pub fn add(
        &mut self,
        device: u8,
        mut function: Box<dyn PciFunction>,
        irq: Option<u8>,
    ) -> Result<usize, PciError> {
        if device == HOST_BRIDGE_SLOT || device >= NUM_SLOTS {
            return Err(PciError::SlotOutOfRange(device));
        }
        if self.slots.iter().any(|s| s.device == device) {
            return Err(PciError::SlotInUse(device));
        }
        if let Some(irq) = irq.filter(|&i| i >= 16) {
            return Err(PciError::BadIrq(irq));
        }
        let mut next = self.next_mmio;
        let config = function.config_mut();
        for bar in 0..NUM_BARS {
            let Some(b) = config.bar(bar) else { continue };
            let align = b.size.max(BAR_MIN_ALIGN);
            let base = next.next_multiple_of(align);
            if base
                .checked_add(b.size)
                .is_none_or(|end| end > PCI_MMIO_END)
            {
                let name = function.name().to_string();
                return Err(PciError::WindowFull {
                    name,
                    bar,
                    size: b.size,
                });
            }
            config.set_bar_address(bar, base);
            next = base + b.size;
        }
        if config.u8(CFG_INTERRUPT_PIN) != 0 {
            config.set_u8(CFG_INTERRUPT_LINE, irq.unwrap_or(INTERRUPT_LINE_NONE));
        }
        if (0..NUM_BARS).any(|b| config.bar(b).is_some()) {
            let command = config.command();
            config.set_command(command | COMMAND_MEMORY);
        }
        self.next_mmio = next;
        self.slots.push(Slot {
            device,
            function,
            irq,
            held_logged: false,
        });
        Ok(self.slots.len() - 1)
    }

    /// The function at `index` (0 is the host bridge).
    pub fn function(&self, index: usize) -> Option<&dyn PciFunction> {
        self.slots.get(index).map(|s| s.function.as_ref())
    }

    pub fn function_mut(&mut self, index: usize) -> Option<&mut (dyn PciFunction + 'static)> {
        self.slots.get_mut(index).map(|s| s.function.as_mut())
    }

    /// The current CONFIG_ADDRESS.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Which function decodes physical address `phys` now. Overlapping BARs (software's
    /// mistake) resolve to the first function and BAR in order.
    pub fn mmio_owner(&self, phys: u64) -> Option<MmioTarget> {
        self.slots.iter().enumerate().find_map(|(i, s)| {
            s.function
                .config()
                .decoded_bars()
                .find(|&(_, base, size)| phys >= base && phys - base < size)
                .map(|(bar, base, _)| MmioTarget {
                    function: i,
                    bar,
                    offset: phys - base,
                })
        })
    }

    /// Every memory range decoded now, as `(function, bar, base, size)`.
    pub fn mmio_ranges(&self) -> Vec<(usize, usize, u64, u64)> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter().enumerate() {
            for (bar, base, size) in s.function.config().decoded_bars() {
                out.push((i, bar, base, size));
            }
        }
        out
    }

    /// An MMIO read of `size` bytes (1, 2, 4, 8) at `phys`: `None` if no function decodes it.
    pub fn mmio_read(&mut self, phys: u64, size: u8, irq: &mut IrqLines) -> Option<u64> {
        let t = self.mmio_owner(phys)?;
        let value = self.slots[t.function]
            .function
            .bar_read(t.bar, t.offset, size);
        self.update_irq(irq);
        Some(value)
    }

    /// An MMIO write: `false` if no function decodes `phys`.
    pub fn mmio_write(&mut self, phys: u64, size: u8, value: u64, irq: &mut IrqLines) -> bool {
        let Some(t) = self.mmio_owner(phys) else {
            return false;
        };
        let slot = &mut self.slots[t.function];
        slot.function.bar_write(t.bar, t.offset, size, value);
        if slot.function.has_work() && !slot.function.config().bus_master() && !slot.held_logged {
            slot.held_logged = true;
            log::info!(
                "pci: {} was notified with bus mastering disabled; its DMA waits until the \
                 command register enables it (logged once)",
                slot.function.name()
            );
        }
        self.update_irq(irq);
        true
    }

    /// Whether a function has work for [`PciHost::process`] that it may do now.
    pub fn has_pending_work(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.function.has_work() && s.function.config().bus_master())
    }

    /// Run the pending work of every bus-mastering function (their DMA goes through `mem`),
    /// then refresh the IRQ lines. Call at an instruction boundary.
    pub fn process(&mut self, mem: &mut dyn DmaMemory, irq: &mut IrqLines) {
        for s in &mut self.slots {
            if s.function.has_work() && s.function.config().bus_master() {
                s.function.process(mem);
            }
        }
        self.update_irq(irq);
    }

    /// Drive the ISA lines the functions' INTA# pins are wired to (also updates each
    /// function's status register interrupt bit).
    pub fn update_irq(&mut self, irq: &mut IrqLines) {
        let mut asserted = 0u16;
        let mut wired = BTreeSet::new();
        for s in &mut self.slots {
            let pending = s.function.interrupt_pending();
            let level = s.function.config_mut().intx_level(pending);
            if let Some(line) = s.irq {
                wired.insert(line);
                if level {
                    asserted |= 1 << line;
                }
            }
        }
        for line in wired {
            irq.set(line, asserted & (1 << line) != 0);
        }
    }

    /// The function and configuration byte offset CONFIG_ADDRESS selects, or None when it
    /// selects nothing that exists (disabled, absent device, an extended register).
    fn selected(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> ADDR_BUS_SHIFT) & 0xff;
        let device = (a >> ADDR_DEVICE_SHIFT) & ADDR_DEVICE_MASK;
        let function = (a >> ADDR_FUNCTION_SHIFT) & ADDR_FUNCTION_MASK;
        let ext = (a & ADDR_EXT_REG_MASK) >> ADDR_EXT_REG_SHIFT;
        if a & ADDR_ENABLE == 0 || bus != 0 || function != 0 || ext != 0 {
            return None;
        }
        let index = self
            .slots
            .iter()
            .position(|s| u32::from(s.device) == device)?;
        Some((index, (a & ADDR_REG_MASK) as usize))
    }

    fn read_data(&mut self, offset: u16, size: u8, irq: &mut IrqLines) -> u32 {
        let lane = usize::from(offset - OFFSET_DATA);
        // Bytes past the selected dword are not part of this cycle.
        let n = size.min(4 - lane as u8);
        let ones = all_ones(size) & !all_ones(n);
        let Some((index, reg)) = self.selected() else {
            return all_ones(size);
        };
        // Keep the status register's interrupt bit current before software reads it.
        self.update_irq(irq);
        let value = self.slots[index].function.config_read(reg + lane, n);
        // A read can have side effects (virtio's configuration access window).
        self.update_irq(irq);
        value | ones
    }

    fn write_data(&mut self, offset: u16, size: u8, value: u32, irq: &mut IrqLines) {
        let Some((index, reg)) = self.selected() else {
            return;
        };
        let lane = usize::from(offset - OFFSET_DATA);
        let n = size.min(4 - lane as u8);
        self.slots[index]
            .function
            .config_write(reg + lane, n, value);
        self.update_irq(irq);
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
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        match (offset, size) {
            (OFFSET_ADDRESS, 4) => self.address,
            (OFFSET_RESET_CONTROL, 1) => u32::from(self.reset_control),
            (OFFSET_DATA..=OFFSET_DATA_LAST, _) => self.read_data(offset, size, ctx.irq),
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
            (OFFSET_DATA..=OFFSET_DATA_LAST, _) => self.write_data(offset, size, value, ctx.irq),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
