//! The PC's devices. Each file models one chip behind a narrow register interface
//! (`read`/`write` at an offset from its base port), with named constants for every register
//! and bit, a doc line saying what it emulates and what it leaves out, and unit tests that
//! drive it through its register protocol.
//!
//! Devices never read host time: they see the machine's virtual time ([`DeviceCtx::now_ns`],
//! derived from the instruction count) and raise interrupts by setting ISA IRQ line levels in
//! [`IrqLines`], which the interrupt controller samples.

/// Levels of the 16 ISA interrupt lines (bit n = IRQn asserted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqLines(pub u16);

impl IrqLines {
    pub fn set(&mut self, line: u8, level: bool) {
        if level {
            self.0 |= 1 << line;
        } else {
            self.0 &= !(1 << line);
        }
    }
    pub fn get(&self, line: u8) -> bool {
        self.0 & (1 << line) != 0
    }
}

/// What a device sees of the rest of the machine during an access or a timer tick.
pub struct DeviceCtx<'a> {
    /// Virtual time in nanoseconds since the machine started.
    pub now_ns: u64,
    pub irq: &'a mut IrqLines,
    /// Requests from devices to the machine (reset, power off, exit code).
    pub requests: &'a mut Vec<MachineRequest>,
}

/// Something a device asks of the machine as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineRequest {
    /// CPU reset (i8042 pulse, port 0xcf9): the run ends.
    Reset,
    /// ACPI S5 / power off: the run ends.
    PowerOff,
    /// The isa-debug-exit port: the run ends with this status.
    Exit(u32),
}

/// A device on the port-IO bus.
pub trait PortDevice {
    /// A read of `size` bytes (1, 2, 4) at `offset` from the device's base port.
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32;
    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx);
    /// The next virtual time at which the device changes state on its own (a timer), if any.
    fn next_event_ns(&self) -> Option<u64> {
        None
    }
    /// Bring the device up to `ctx.now_ns` (fire due timers, update IRQ lines).
    fn advance(&mut self, _ctx: &mut DeviceCtx) {}
}

pub mod apic_bus;
pub mod debug_exit;
pub mod dma;
pub mod i8042;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod pm;
pub mod rtc;
pub mod serial;
pub mod virtio;
