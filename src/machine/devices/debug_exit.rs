//! QEMU's isa-debug-exit device: a write of `v` to its port ends the run with status
//! `(v << 1) | 1` ([`MachineRequest::Exit`]), so a guest can report success or failure.
//!
//! Port convention: base 0xF4 ([`DEBUG_EXIT_PORT`], QEMU's default `iobase`), one port (offset
//! 0; QEMU's default `iosize` is 1). The value is taken at the access width (a byte write of
//! 0x01 exits with 3; a dword write uses all 32 bits, the top one shifted out). Reads return
//! all-ones; other offsets are ignored. Nothing else is modelled.

use super::{DeviceCtx, MachineRequest, PortDevice};

/// QEMU's default port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// The one decoded offset.
pub const OFFSET_EXIT: u16 = 0;

/// The exit status a guest write of `value` produces.
pub fn exit_status(value: u32) -> u32 {
    (value << 1) | 1
}

/// The isa-debug-exit port; see the module documentation.
#[derive(Debug, Default)]
pub struct DebugExit;

impl DebugExit {
    pub fn new() -> Self {
        DebugExit
    }
}

fn size_mask(size: u8) -> u32 {
    match size {
        0 => 0,
        1 => 0xff,
        2 => 0xffff,
        3 => 0xff_ffff,
        _ => u32::MAX,
    }
}

impl PortDevice for DebugExit {
    fn read(&mut self, _offset: u16, size: u8, _ctx: &mut DeviceCtx) -> u32 {
        size_mask(size)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        if offset == OFFSET_EXIT {
            let status = exit_status(value & size_mask(size));
            ctx.requests.push(MachineRequest::Exit(status));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::IrqLines;
    use super::*;

    fn write(offset: u16, size: u8, value: u32) -> Vec<MachineRequest> {
        let mut irq = IrqLines::default();
        let mut requests = Vec::new();
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut irq,
            requests: &mut requests,
        };
        DebugExit::new().write(offset, size, value, &mut ctx);
        requests
    }

    #[test]
    fn write_exits_with_shifted_status() {
        // outb(0, 0xf4) → 1, outb(1, 0xf4) → 3, as under QEMU.
        assert_eq!(write(0, 1, 0), vec![MachineRequest::Exit(1)]);
        assert_eq!(write(0, 1, 1), vec![MachineRequest::Exit(3)]);
        assert_eq!(write(0, 1, 0x10), vec![MachineRequest::Exit(0x21)]);
        // The access width bounds the value.
        assert_eq!(write(0, 1, 0x1234), vec![MachineRequest::Exit(0x69)]);
        assert_eq!(write(0, 2, 0x1234), vec![MachineRequest::Exit(0x2469)]);
        assert_eq!(write(0, 4, 0x8000_0001), vec![MachineRequest::Exit(3)]);
        assert!(write(1, 1, 0).is_empty());
    }

    #[test]
    fn reads_do_nothing() {
        let mut irq = IrqLines::default();
        let mut requests = Vec::new();
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut irq,
            requests: &mut requests,
        };
        assert_eq!(DebugExit::new().read(0, 1, &mut ctx), 0xff);
        assert!(requests.is_empty());
        assert_eq!(irq, IrqLines::default());
    }
}
