//! A minimal i8042 PS/2 keyboard controller with no keyboard and no mouse attached.
//!
//! Port convention: one device with base port 0x60 ([`BASE_PORT`]) that decodes two offsets,
//! [`OFFSET_DATA`] = 0 (port 0x60) and [`OFFSET_STATUS_COMMAND`] = 4 (port 0x64). Offsets 1..=3
//! are not its own (port 0x61 belongs to the PIT/speaker device), so the machine maps ports 0x60
//! and 0x64 to this device, both with base 0x60; any other offset reads all-ones and ignores
//! writes. Accesses wider than a byte act on the addressed byte (the rest reads all-ones).
//!
//! Emulated, just enough for Linux's i8042 driver (`i8042_controller_check`, `_selftest`,
//! `_init`, `i8042_check_aux`) and for its reboot path:
//! * Status register: OBF, IBF (always 0: commands complete at once), SYS (mirrors the
//!   command byte's SYS bit), CMD/DATA (last write went to 0x64), KEYLOCK (1: not inhibited),
//!   AUXDATA and TIMEOUT for the byte at the head of the output buffer.
//! * Commands 0x20..=0x3f (read command byte / internal RAM), 0x60..=0x7f (write them), 0xA7/0xA8
//!   (disable/enable aux), 0xA9 (aux interface test → 0x00), 0xAA (self test → 0x55), 0xAB
//!   (keyboard interface test → 0x00), 0xAD/0xAE (disable/enable keyboard), 0xD0/0xD1 (read/write
//!   the output port; clearing bit 0 resets the machine, A20 is ignored: always enabled), 0xD2
//!   and 0xD3 (write the keyboard / aux output buffer: the byte comes back as if from that
//!   device, which is Linux's aux loopback and aux IRQ test), 0xD4 (write to the aux device),
//!   0xF0..=0xFF (pulse output lines; an even value pulses the reset line →
//!   [`MachineRequest::Reset`], e.g. Linux's `outb(0xfe, 0x64)`).
//! * No devices: a byte written to the keyboard (port 0x60 without a pending command) or to the
//!   aux port (0xD4) is answered at once with [`RESP_NO_DEVICE`] (0xFE) with the status TIMEOUT
//!   bit set (and AUXDATA for aux), as a controller whose device does not clock: Linux's atkbd
//!   and psmouse probes then fail quickly instead of waiting for their timeouts. No scancode or
//!   mouse packet is ever produced.
//! * IRQ1 is high while a keyboard-side byte (controller responses included, as on real
//!   controllers and QEMU) is in the output buffer and the command byte's KBDINT is set; IRQ12
//!   likewise for an aux byte with AUXINT.
//!
//! Left out: keyboard and mouse devices, scancode translation, the password and
//! keyboard-lock features, the input port (0xC0), controller-specific commands and A20 gating.
//! The output buffer is a short queue (up to [`OUTPUT_QUEUE_LEN`] bytes) rather than one byte.

use std::collections::VecDeque;

use super::{DeviceCtx, MachineRequest, PortDevice};

/// The base port of the device's mapping (the data port).
pub const BASE_PORT: u16 = 0x60;
/// Offset of the data port (0x60).
pub const OFFSET_DATA: u16 = 0;
/// Offset of the status (read) / command (write) port (0x64).
pub const OFFSET_STATUS_COMMAND: u16 = 4;
/// ISA line of the keyboard port.
pub const KBD_IRQ: u8 = 1;
/// ISA line of the aux (mouse) port.
pub const AUX_IRQ: u8 = 12;

/// Status: output buffer full.
pub const STR_OBF: u8 = 0x01;
/// Status: input buffer full (never set here).
pub const STR_IBF: u8 = 0x02;
/// Status: system flag (from the command byte).
pub const STR_SYS: u8 = 0x04;
/// Status: the last write was a command (port 0x64), not data.
pub const STR_CMDDAT: u8 = 0x08;
/// Status: keyboard not inhibited (keylock switch open).
pub const STR_KEYLOCK: u8 = 0x10;
/// Status: the output buffer holds a byte from the aux port.
pub const STR_AUXDATA: u8 = 0x20;
/// Status: timeout talking to a device.
pub const STR_TIMEOUT: u8 = 0x40;
/// Status: parity error (never set).
pub const STR_PARITY: u8 = 0x80;

/// Command byte: keyboard interrupt (IRQ1) enable.
pub const CTR_KBDINT: u8 = 0x01;
/// Command byte: aux interrupt (IRQ12) enable.
pub const CTR_AUXINT: u8 = 0x02;
/// Command byte: system flag.
pub const CTR_SYS: u8 = 0x04;
/// Command byte: ignore keylock.
pub const CTR_IGNKEYLOCK: u8 = 0x08;
/// Command byte: keyboard interface disabled.
pub const CTR_KBDDIS: u8 = 0x10;
/// Command byte: aux interface disabled.
pub const CTR_AUXDIS: u8 = 0x20;
/// Command byte: scancode translation.
pub const CTR_XLATE: u8 = 0x40;
/// The command byte after reset, as a PC BIOS leaves it: translation, aux disabled, system
/// flag, keyboard interrupt.
pub const CTR_RESET: u8 = CTR_XLATE | CTR_AUXDIS | CTR_SYS | CTR_KBDINT;

/// Command: read internal RAM byte 0 (the command byte); 0x20..=0x3f read bytes 0..=31.
pub const CMD_READ_CTR: u8 = 0x20;
/// Last "read RAM" command.
pub const CMD_READ_RAM_LAST: u8 = 0x3f;
/// Command: write the command byte (next data byte); 0x60..=0x7f write RAM bytes 0..=31.
pub const CMD_WRITE_CTR: u8 = 0x60;
/// Last "write RAM" command.
pub const CMD_WRITE_RAM_LAST: u8 = 0x7f;
/// Command: disable the aux interface.
pub const CMD_AUX_DISABLE: u8 = 0xa7;
/// Command: enable the aux interface.
pub const CMD_AUX_ENABLE: u8 = 0xa8;
/// Command: aux interface test.
pub const CMD_AUX_TEST: u8 = 0xa9;
/// Command: controller self test.
pub const CMD_CTL_TEST: u8 = 0xaa;
/// Command: keyboard interface test.
pub const CMD_KBD_TEST: u8 = 0xab;
/// Command: disable the keyboard interface.
pub const CMD_KBD_DISABLE: u8 = 0xad;
/// Command: enable the keyboard interface.
pub const CMD_KBD_ENABLE: u8 = 0xae;
/// Command: read the output port.
pub const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
/// Command: write the output port (next data byte).
pub const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// Command: write the keyboard output buffer (next data byte).
pub const CMD_WRITE_KBD_OUTBUF: u8 = 0xd2;
/// Command: write the aux output buffer, i.e. aux loopback (next data byte).
pub const CMD_WRITE_AUX_OUTBUF: u8 = 0xd3;
/// Command: write the next data byte to the aux device.
pub const CMD_WRITE_AUX: u8 = 0xd4;
/// First "pulse output lines" command (0xF0..=0xFF; bit n clear pulses line n).
pub const CMD_PULSE_FIRST: u8 = 0xf0;
/// The usual reset command (pulse line 0).
pub const CMD_PULSE_RESET: u8 = 0xfe;
/// In a pulse command, the bit for output line 0 (the reset line); clear = pulse it.
pub const PULSE_LINE_RESET: u8 = 0x01;

/// Self-test passed.
pub const RESP_CTL_TEST_OK: u8 = 0x55;
/// Interface test passed.
pub const RESP_INTERFACE_OK: u8 = 0x00;
/// What a device write is answered with when no device is attached.
pub const RESP_NO_DEVICE: u8 = 0xfe;

/// Output port: reset line (0 asserts the CPU reset).
pub const OUTPORT_RESET: u8 = 0x01;
/// Output port: A20 gate (ignored).
pub const OUTPORT_A20: u8 = 0x02;
/// Output port value after reset.
pub const OUTPORT_DEFAULT: u8 = OUTPORT_RESET | OUTPORT_A20;

/// Size of the internal RAM (byte 0 is the command byte).
pub const RAM_SIZE: usize = 32;
/// Depth of the output buffer queue; bytes beyond it are dropped.
pub const OUTPUT_QUEUE_LEN: usize = 16;

/// What the next byte written to the data port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataTarget {
    /// The keyboard.
    Keyboard,
    /// Internal RAM byte n (n = 0: the command byte).
    Ram(usize),
    OutputPort,
    KbdOutputBuffer,
    AuxOutputBuffer,
    AuxDevice,
}

/// The i8042 controller; see the module documentation.
#[derive(Debug)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte (CTR).
    ram: [u8; RAM_SIZE],
    output_port: u8,
    /// Output buffer: (byte, status bits AUXDATA/TIMEOUT that come with it).
    out: VecDeque<(u8, u8)>,
    /// The last byte read from the data port, read again when the buffer is empty.
    last_data: u8,
    /// The last write went to the command port.
    last_was_command: bool,
    target: DataTarget,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// A controller as a BIOS leaves it (command byte [`CTR_RESET`], empty output buffer).
    pub fn new() -> Self {
        let mut ram = [0; RAM_SIZE];
        ram[0] = CTR_RESET;
        I8042 {
            ram,
            output_port: OUTPORT_DEFAULT,
            out: VecDeque::with_capacity(OUTPUT_QUEUE_LEN),
            last_data: 0,
            last_was_command: false,
            target: DataTarget::Keyboard,
        }
    }

    /// The command byte.
    pub fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    /// The status register (reading it has no side effects).
    pub fn status(&self) -> u8 {
        let mut status = STR_KEYLOCK;
        if self.ram[0] & CTR_SYS != 0 {
            status |= STR_SYS;
        }
        if self.last_was_command {
            status |= STR_CMDDAT;
        }
        if let Some(&(_, flags)) = self.out.front() {
            status |= STR_OBF | flags;
        }
        status
    }

    /// Levels of (IRQ1, IRQ12).
    pub fn irq_levels(&self) -> (bool, bool) {
        match self.out.front() {
            Some(&(_, flags)) if flags & STR_AUXDATA != 0 => (false, self.ram[0] & CTR_AUXINT != 0),
            Some(_) => (self.ram[0] & CTR_KBDINT != 0, false),
            None => (false, false),
        }
    }

    fn queue(&mut self, byte: u8, flags: u8) {
        if self.out.len() < OUTPUT_QUEUE_LEN {
            self.out.push_back((byte, flags));
        } else {
            log::debug!("i8042: output buffer overflow, byte {byte:#04x} dropped");
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.out.pop_front() {
            self.last_data = byte;
        }
        self.last_data
    }

    fn write_output_port(&mut self, value: u8, ctx: &mut DeviceCtx) {
        self.output_port = value;
        if value & OUTPORT_RESET == 0 {
            ctx.requests.push(MachineRequest::Reset);
        }
    }

    fn write_data(&mut self, value: u8, ctx: &mut DeviceCtx) {
        self.last_was_command = false;
        let target = std::mem::replace(&mut self.target, DataTarget::Keyboard);
        match target {
            DataTarget::Keyboard => {
                // No keyboard: the transmission times out.
                self.queue(RESP_NO_DEVICE, STR_TIMEOUT);
            }
            DataTarget::Ram(n) => {
                if let Some(slot) = self.ram.get_mut(n) {
                    *slot = value;
                }
            }
            DataTarget::OutputPort => self.write_output_port(value, ctx),
            DataTarget::KbdOutputBuffer => self.queue(value, 0),
            DataTarget::AuxOutputBuffer => self.queue(value, STR_AUXDATA),
            DataTarget::AuxDevice => {
                // No mouse: the transmission times out.
                self.queue(RESP_NO_DEVICE, STR_AUXDATA | STR_TIMEOUT);
            }
        }
    }

    fn write_command(&mut self, cmd: u8, ctx: &mut DeviceCtx) {
        self.last_was_command = true;
        self.target = DataTarget::Keyboard;
        match cmd {
            CMD_READ_CTR..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(cmd - CMD_READ_CTR)];
                self.queue(byte, 0);
            }
            CMD_WRITE_CTR..=CMD_WRITE_RAM_LAST => {
                self.target = DataTarget::Ram(usize::from(cmd - CMD_WRITE_CTR));
            }
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUXDIS,
            CMD_AUX_TEST | CMD_KBD_TEST => self.queue(RESP_INTERFACE_OK, 0),
            CMD_CTL_TEST => self.queue(RESP_CTL_TEST_OK, 0),
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBDDIS,
            CMD_READ_OUTPUT_PORT => self.queue(self.output_port, 0),
            CMD_WRITE_OUTPUT_PORT => self.target = DataTarget::OutputPort,
            CMD_WRITE_KBD_OUTBUF => self.target = DataTarget::KbdOutputBuffer,
            CMD_WRITE_AUX_OUTBUF => self.target = DataTarget::AuxOutputBuffer,
            CMD_WRITE_AUX => self.target = DataTarget::AuxDevice,
            CMD_PULSE_FIRST..=0xff => {
                if cmd & PULSE_LINE_RESET == 0 {
                    ctx.requests.push(MachineRequest::Reset);
                }
            }
            _ => log::debug!("i8042: unhandled command {cmd:#04x}"),
        }
    }

    fn drive_irqs(&self, ctx: &mut DeviceCtx) {
        let (kbd, aux) = self.irq_levels();
        ctx.irq.set(KBD_IRQ, kbd);
        ctx.irq.set(AUX_IRQ, aux);
    }
}

/// All-ones for the bytes of an access beyond the first.
fn widen(byte: u8, size: u8) -> u32 {
    let high = match size {
        0 | 1 => 0,
        2 => 0xff00,
        3 => 0xff_ff00,
        _ => 0xffff_ff00,
    };
    high | u32::from(byte)
}

impl PortDevice for I8042 {
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        let byte = match offset {
            OFFSET_DATA => self.read_data(),
            OFFSET_STATUS_COMMAND => self.status(),
            _ => 0xff,
        };
        self.drive_irqs(ctx);
        widen(byte, size)
    }

    fn write(&mut self, offset: u16, _size: u8, value: u32, ctx: &mut DeviceCtx) {
        let byte = value.to_le_bytes()[0];
        match offset {
            OFFSET_DATA => self.write_data(byte, ctx),
            OFFSET_STATUS_COMMAND => self.write_command(byte, ctx),
            _ => {}
        }
        self.drive_irqs(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::super::IrqLines;
    use super::*;

    struct Bus {
        kbc: I8042,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
    }

    impl Bus {
        fn new() -> Self {
            Bus {
                kbc: I8042::new(),
                irq: IrqLines::default(),
                requests: Vec::new(),
            }
        }
        fn inb(&mut self, port: u16) -> u8 {
            let mut ctx = DeviceCtx {
                now_ns: 0,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.kbc.read(port - BASE_PORT, 1, &mut ctx) as u8
        }
        fn outb(&mut self, port: u16, value: u8) {
            let mut ctx = DeviceCtx {
                now_ns: 0,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.kbc
                .write(port - BASE_PORT, 1, u32::from(value), &mut ctx);
        }

        /// `__i8042_command`: command, parameter bytes, result bytes (None on timeout).
        fn command(&mut self, cmd: u8, params: &[u8], results: usize) -> Option<Vec<u8>> {
            assert_eq!(self.inb(0x64) & STR_IBF, 0);
            self.outb(0x64, cmd);
            for &p in params {
                assert_eq!(self.inb(0x64) & STR_IBF, 0);
                self.outb(0x60, p);
            }
            let mut out = Vec::new();
            for _ in 0..results {
                if self.inb(0x64) & STR_OBF == 0 {
                    return None;
                }
                out.push(self.inb(0x60));
            }
            Some(out)
        }

        /// `i8042_flush`.
        fn flush(&mut self) -> usize {
            let mut n = 0;
            while self.inb(0x64) & STR_OBF != 0 && n < 16 {
                self.inb(0x60);
                n += 1;
            }
            n
        }
    }

    #[test]
    fn linux_probe_sequence() {
        let mut b = Bus::new();
        // i8042_controller_check: the flush finds an empty buffer.
        assert_eq!(b.flush(), 0);
        // i8042_controller_selftest.
        assert_eq!(
            b.command(CMD_CTL_TEST, &[], 1),
            Some(vec![RESP_CTL_TEST_OK])
        );
        // i8042_controller_init: read the CTR twice, must agree.
        let ctr = b.command(CMD_READ_CTR, &[], 1).unwrap()[0];
        assert_eq!(b.command(CMD_READ_CTR, &[], 1).unwrap()[0], ctr);
        assert_eq!(ctr, CTR_RESET);
        assert_ne!(b.inb(0x64) & STR_KEYLOCK, 0, "keyboard not inhibited");
        assert_ne!(b.inb(0x64) & STR_SYS, 0);
        let ctr = (ctr | CTR_KBDDIS) & !CTR_KBDINT;
        b.command(CMD_WRITE_CTR, &[ctr], 0).unwrap();
        assert_eq!(b.kbc.command_byte(), ctr);
        assert_eq!(b.flush(), 0);

        // i8042_check_aux: loopback works, so no AUX_TEST is needed.
        assert_eq!(b.command(CMD_WRITE_AUX_OUTBUF, &[0x5a], 0), Some(vec![]));
        assert_ne!(b.inb(0x64) & STR_AUXDATA, 0);
        assert_eq!(b.inb(0x60), 0x5a);
        // Bit assignment test.
        b.command(CMD_AUX_DISABLE, &[], 0).unwrap();
        let p = b.command(CMD_READ_CTR, &[], 1).unwrap()[0];
        assert_ne!(p & CTR_AUXDIS, 0);
        b.command(CMD_AUX_ENABLE, &[], 0).unwrap();
        let p = b.command(CMD_READ_CTR, &[], 1).unwrap()[0];
        assert_eq!(p & CTR_AUXDIS, 0);
        // AUX IRQ delivery test: enable the aux port and its IRQ, loop 0xa5.
        let ctr = (b.kbc.command_byte() & !CTR_AUXDIS) | CTR_AUXINT;
        b.command(CMD_WRITE_CTR, &[ctr], 0).unwrap();
        assert!(!b.irq.get(AUX_IRQ));
        b.outb(0x64, CMD_WRITE_AUX_OUTBUF);
        b.outb(0x60, 0xa5);
        assert!(b.irq.get(AUX_IRQ), "IRQ12 raised");
        assert!(!b.irq.get(KBD_IRQ));
        // i8042_aux_test_irq.
        let str = b.inb(0x64);
        assert_eq!(str & (STR_OBF | STR_AUXDATA), STR_OBF | STR_AUXDATA);
        assert_eq!(b.inb(0x60), 0xa5);
        assert!(!b.irq.get(AUX_IRQ));
    }

    #[test]
    fn interface_tests() {
        let mut b = Bus::new();
        assert_eq!(b.command(CMD_AUX_TEST, &[], 1), Some(vec![0x00]));
        assert_eq!(b.command(CMD_KBD_TEST, &[], 1), Some(vec![0x00]));
        b.command(CMD_KBD_DISABLE, &[], 0).unwrap();
        assert_ne!(b.kbc.command_byte() & CTR_KBDDIS, 0);
        b.command(CMD_KBD_ENABLE, &[], 0).unwrap();
        assert_eq!(b.kbc.command_byte() & CTR_KBDDIS, 0);
        // Nothing answers a command that has no result.
        assert_eq!(b.command(CMD_AUX_ENABLE, &[], 1), None);
    }

    #[test]
    fn controller_responses_raise_irq1_when_enabled() {
        let mut b = Bus::new();
        assert_ne!(b.kbc.command_byte() & CTR_KBDINT, 0);
        b.outb(0x64, CMD_CTL_TEST);
        assert!(b.irq.get(KBD_IRQ));
        assert_eq!(b.inb(0x60), RESP_CTL_TEST_OK);
        assert!(!b.irq.get(KBD_IRQ));
        b.command(CMD_WRITE_CTR, &[0], 0).unwrap();
        b.outb(0x64, CMD_CTL_TEST);
        assert!(!b.irq.get(KBD_IRQ), "KBDINT clear");
        assert_eq!(b.inb(0x60), RESP_CTL_TEST_OK);
    }

    #[test]
    fn no_keyboard_no_mouse() {
        let mut b = Bus::new();
        // atkbd probe: GETID (0xf2) to the keyboard.
        b.outb(0x60, 0xf2);
        assert!(b.irq.get(KBD_IRQ));
        let str = b.inb(0x64);
        assert_eq!(
            str & (STR_OBF | STR_TIMEOUT | STR_AUXDATA),
            STR_OBF | STR_TIMEOUT
        );
        assert_eq!(b.inb(0x60), RESP_NO_DEVICE);
        assert_eq!(b.inb(0x64) & (STR_OBF | STR_TIMEOUT), 0);
        // psmouse probe: reset (0xff) via 0xd4.
        b.command(CMD_WRITE_CTR, &[CTR_AUXINT | CTR_KBDINT], 0)
            .unwrap();
        b.command(CMD_WRITE_AUX, &[0xff], 0).unwrap();
        assert!(b.irq.get(AUX_IRQ));
        assert!(!b.irq.get(KBD_IRQ));
        let str = b.inb(0x64);
        assert_eq!(
            str & (STR_OBF | STR_TIMEOUT | STR_AUXDATA),
            STR_OBF | STR_TIMEOUT | STR_AUXDATA
        );
        assert_eq!(b.inb(0x60), RESP_NO_DEVICE);
        assert_eq!(b.flush(), 0);
        assert!(b.requests.is_empty());
    }

    #[test]
    fn status_bits_and_ram() {
        let mut b = Bus::new();
        b.outb(0x64, CMD_AUX_ENABLE);
        assert_ne!(b.inb(0x64) & STR_CMDDAT, 0);
        b.command(0x61, &[0x42], 0).unwrap();
        assert_eq!(b.inb(0x64) & STR_CMDDAT, 0);
        assert_eq!(b.command(0x21, &[], 1), Some(vec![0x42]));
        // The SYS flag follows the command byte.
        b.command(CMD_WRITE_CTR, &[0], 0).unwrap();
        assert_eq!(b.inb(0x64) & STR_SYS, 0);
        // Offsets that are not ours.
        assert_eq!(b.inb(0x61), 0xff);
        assert_eq!(b.inb(0x63), 0xff);
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut b.irq,
            requests: &mut b.requests,
        };
        assert_eq!(b.kbc.read(OFFSET_STATUS_COMMAND, 2, &mut ctx) >> 8, 0xff);
    }

    #[test]
    fn reset_by_pulse_and_by_output_port() {
        let mut b = Bus::new();
        b.outb(0x64, 0xff); // pulse nothing
        assert!(b.requests.is_empty());
        b.outb(0x64, CMD_PULSE_RESET);
        assert_eq!(b.requests, vec![MachineRequest::Reset]);

        let mut b = Bus::new();
        assert_eq!(
            b.command(CMD_READ_OUTPUT_PORT, &[], 1),
            Some(vec![OUTPORT_DEFAULT])
        );
        b.command(CMD_WRITE_OUTPUT_PORT, &[OUTPORT_DEFAULT], 0)
            .unwrap();
        assert!(b.requests.is_empty());
        b.command(CMD_WRITE_OUTPUT_PORT, &[OUTPORT_A20], 0).unwrap();
        assert_eq!(b.requests, vec![MachineRequest::Reset]);
    }
}
