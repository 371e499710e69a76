//! A 16550A UART (the PC's COM1 at 0x3f8 / IRQ4 uses it; this model is port-agnostic and
//! decodes offsets 0..=7 from its base).
//!
//! Emulated, as Linux's 8250 driver sees it:
//! * RBR/THR, IER, IIR (with the FIFO bits 7:6 = 11 while FCR enables the FIFOs), FCR, LCR (DLAB
//!   switches offsets 0/1 to the divisor latch DLL/DLM), MCR (DTR, RTS, OUT1, OUT2, LOOP), LSR
//!   (DR, OE, THRE, TEMT), MSR (status bits and delta bits, read clears the deltas), SCR.
//! * Interrupt identification in the 16550 priority order: receiver line status (overrun),
//!   received data (IIR 0x04 when the FIFO holds at least the trigger level, else the character
//!   timeout 0x0C at once, since there is no real timing), THR empty, modem status.
//! * The THR-empty interrupt as on a real 16550 and QEMU: pending whenever the (always
//!   immediately emptied) THR has just been written, re-armed by a 0→1 edge of IER.ETBEI, cleared
//!   by an IIR read that reports it, by a THR write and by clearing ETBEI. This passes the
//!   driver's "TX enable" and "THRE re-assert" tests in `serial8250_do_startup`.
//! * Loopback (MCR.LOOP): THR bytes go to the receiver (overrun sets LSR.OE when it is full),
//!   MSR shows DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD, and host input is held back.
//! * The PC's IRQ gating: the line is `(an enabled interrupt is pending) && MCR.OUT2`, and low in
//!   loopback mode (the OUT2 pin is forced inactive there, which disconnects the IRQ on a PC).
//!
//! Host side:
//! * Transmit: bytes written to THR (outside loopback) are appended to an internal `Vec<u8>` the
//!   machine drains with [`Serial16550::take_output`]; transmission completes immediately (THRE
//!   and TEMT always read 1).
//! * Receive: [`Serial16550::push_input`] appends bytes to an unbounded host queue that feeds the
//!   receive FIFO (16 bytes with FIFOs on, 1 byte off) as the guest drains it, so host input is
//!   never overrun. FCR's "clear receive FIFO" (and toggling FIFO enable) discards the bytes
//!   already in the FIFO, as the hardware does, so push input once the guest is ready for it.
//!   After `push_input` the IRQ line is stale until the next access or
//!   [`PortDevice::advance`]; [`PortDevice::next_event_ns`] returns `Some(0)` until then.
//!
//! Left out: baud rate / character timing (the divisor is stored and ignored), parity, framing
//! and break errors, the transmit FIFO as a queue, DMA mode, the 16750/16650 extensions (EFR,
//! 64-byte FIFO, IER bit 4..7), and modem-line changes from the host (outside loopback CTS, DSR
//! and DCD are always asserted and RI is not).

use std::collections::VecDeque;

use super::{DeviceCtx, PortDevice};

/// Receive buffer (read, DLAB=0) / transmit holding register (write, DLAB=0) / DLL (DLAB=1).
pub const REG_RBR_THR: u16 = 0;
/// Interrupt enable register (DLAB=0) / DLM (DLAB=1).
pub const REG_IER: u16 = 1;
/// Interrupt identification (read) / FIFO control (write).
pub const REG_IIR_FCR: u16 = 2;
/// Line control register.
pub const REG_LCR: u16 = 3;
/// Modem control register.
pub const REG_MCR: u16 = 4;
/// Line status register.
pub const REG_LSR: u16 = 5;
/// Modem status register.
pub const REG_MSR: u16 = 6;
/// Scratch register.
pub const REG_SCR: u16 = 7;
/// Number of port offsets the UART decodes.
pub const NUM_PORTS: u16 = 8;

/// IER: received data available.
pub const IER_ERBFI: u8 = 0x01;
/// IER: transmit holding register empty.
pub const IER_ETBEI: u8 = 0x02;
/// IER: receiver line status.
pub const IER_ELSI: u8 = 0x04;
/// IER: modem status.
pub const IER_EDSSI: u8 = 0x08;
/// IER bits a 16550A implements (bits 4..7 read 0).
pub const IER_MASK: u8 = 0x0f;

/// IIR: no interrupt pending.
pub const IIR_NO_INT: u8 = 0x01;
/// IIR: interrupt-identification field.
pub const IIR_ID_MASK: u8 = 0x0e;
/// IIR id: modem status.
pub const IIR_MSI: u8 = 0x00;
/// IIR id: transmit holding register empty.
pub const IIR_THRI: u8 = 0x02;
/// IIR id: received data available.
pub const IIR_RDI: u8 = 0x04;
/// IIR id: receiver line status.
pub const IIR_RLSI: u8 = 0x06;
/// IIR id: character timeout (data in the FIFO below the trigger level).
pub const IIR_CTI: u8 = 0x0c;
/// IIR bits 7:6, both set while the FIFOs are enabled.
pub const IIR_FIFOS_ENABLED: u8 = 0xc0;

/// FCR: enable the FIFOs.
pub const FCR_ENABLE_FIFO: u8 = 0x01;
/// FCR: clear the receive FIFO.
pub const FCR_CLEAR_RCVR: u8 = 0x02;
/// FCR: clear the transmit FIFO.
pub const FCR_CLEAR_XMIT: u8 = 0x04;
/// FCR: DMA mode select (stored, no effect).
pub const FCR_DMA_SELECT: u8 = 0x08;
/// FCR: receiver trigger level field (1, 4, 8, 14 bytes).
pub const FCR_TRIGGER_MASK: u8 = 0xc0;
/// FCR bits this model keeps (enable, DMA mode, trigger).
const FCR_STORED: u8 = FCR_ENABLE_FIFO | FCR_DMA_SELECT | FCR_TRIGGER_MASK;

/// LCR: divisor latch access bit.
pub const LCR_DLAB: u8 = 0x80;

/// MCR: data terminal ready.
pub const MCR_DTR: u8 = 0x01;
/// MCR: request to send.
pub const MCR_RTS: u8 = 0x02;
/// MCR: OUT1.
pub const MCR_OUT1: u8 = 0x04;
/// MCR: OUT2 (gates the IRQ line on a PC).
pub const MCR_OUT2: u8 = 0x08;
/// MCR: loopback mode.
pub const MCR_LOOP: u8 = 0x10;
/// MCR bits a 16550A implements.
pub const MCR_MASK: u8 = 0x1f;

/// LSR: data ready.
pub const LSR_DR: u8 = 0x01;
/// LSR: overrun error.
pub const LSR_OE: u8 = 0x02;
/// LSR: parity error (never set).
pub const LSR_PE: u8 = 0x04;
/// LSR: framing error (never set).
pub const LSR_FE: u8 = 0x08;
/// LSR: break interrupt (never set).
pub const LSR_BI: u8 = 0x10;
/// LSR: transmit holding register empty.
pub const LSR_THRE: u8 = 0x20;
/// LSR: transmitter empty.
pub const LSR_TEMT: u8 = 0x40;
/// LSR: error in the receive FIFO (never set: no parity/framing/break errors).
pub const LSR_FIFO_ERR: u8 = 0x80;
/// LSR bits that raise a line-status interrupt and are cleared by reading LSR.
pub const LSR_ERRORS: u8 = LSR_OE | LSR_PE | LSR_FE | LSR_BI;

/// MSR: delta CTS.
pub const MSR_DCTS: u8 = 0x01;
/// MSR: delta DSR.
pub const MSR_DDSR: u8 = 0x02;
/// MSR: trailing edge of RI.
pub const MSR_TERI: u8 = 0x04;
/// MSR: delta DCD.
pub const MSR_DDCD: u8 = 0x08;
/// MSR: the delta bits.
pub const MSR_DELTAS: u8 = 0x0f;
/// MSR: clear to send.
pub const MSR_CTS: u8 = 0x10;
/// MSR: data set ready.
pub const MSR_DSR: u8 = 0x20;
/// MSR: ring indicator.
pub const MSR_RI: u8 = 0x40;
/// MSR: data carrier detect.
pub const MSR_DCD: u8 = 0x80;
/// Modem input lines outside loopback: a connected host that is always ready.
pub const MSR_LINES_CONNECTED: u8 = MSR_CTS | MSR_DSR | MSR_DCD;

/// Depth of the receive FIFO with FIFOs enabled.
pub const FIFO_SIZE: usize = 16;

/// The COM1 base port and IRQ on a PC.
pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_IRQ: u8 = 4;

/// A 16550A UART; see the module documentation.
#[derive(Debug)]
pub struct Serial16550 {
    irq_line: u8,
    ier: u8,
    lcr: u8,
    mcr: u8,
    /// FCR bits kept (enable, DMA mode, trigger level).
    fcr: u8,
    /// Latched error bits of LSR (only OE can happen).
    lsr_errors: u8,
    /// The modem status input lines (MSR bits 7:4) as last computed.
    msr_lines: u8,
    /// MSR delta bits 3:0.
    msr_deltas: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// The THR-empty interrupt condition (see the module doc).
    thr_ipending: bool,
    /// Receive FIFO (capacity 16 with FIFOs enabled, else 1).
    rx_fifo: VecDeque<u8>,
    /// The last byte read from RBR, returned again when the FIFO is empty.
    last_rx: u8,
    /// Host input not yet in the receive FIFO.
    input: VecDeque<u8>,
    /// Transmitted bytes not yet drained by the machine.
    output: Vec<u8>,
    /// The IRQ line level may have changed since it was last driven (after `push_input`).
    irq_stale: bool,
}

impl Serial16550 {
    /// A UART in its reset state, driving ISA line `irq_line` (4 for COM1).
    pub fn new(irq_line: u8) -> Self {
        Serial16550 {
            irq_line,
            ier: 0,
            lcr: 0,
            mcr: 0,
            fcr: 0,
            lsr_errors: 0,
            msr_lines: MSR_LINES_CONNECTED,
            msr_deltas: 0,
            scr: 0,
            // 115200 baud with the PC's 1.8432 MHz clock.
            dll: 1,
            dlm: 0,
            thr_ipending: false,
            rx_fifo: VecDeque::with_capacity(FIFO_SIZE),
            last_rx: 0,
            input: VecDeque::new(),
            output: Vec::new(),
            irq_stale: false,
        }
    }

    /// Queue bytes from the host for the guest to receive.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.input.extend(bytes.iter().copied());
        self.refill_rx();
        self.irq_stale = true;
    }

    /// Host input not yet moved into the receive FIFO.
    pub fn pending_input(&self) -> usize {
        self.input.len()
    }

    /// The transmitted bytes not yet drained.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Drain the transmitted bytes.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The level this UART drives on its IRQ line.
    pub fn irq_level(&self) -> bool {
        self.pending_interrupt().is_some() && self.mcr & MCR_OUT2 != 0 && self.mcr & MCR_LOOP == 0
    }

    /// The divisor latch (DLM:DLL).
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE_FIFO != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn rx_trigger(&self) -> usize {
        match self.fcr & FCR_TRIGGER_MASK {
            0x00 => 1,
            0x40 => 4,
            0x80 => 8,
            _ => 14,
        }
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    /// Move host input into the receive FIFO while it has room (not in loopback: the serial
    /// input pin is disconnected there).
    fn refill_rx(&mut self) {
        if self.loopback() {
            return;
        }
        let cap = self.rx_capacity();
        while self.rx_fifo.len() < cap {
            match self.input.pop_front() {
                Some(b) => self.rx_fifo.push_back(b),
                None => break,
            }
        }
    }

    /// A byte arriving at the receiver from the loopback path.
    fn receive_loopback(&mut self, byte: u8) {
        if self.rx_fifo.len() < self.rx_capacity() {
            self.rx_fifo.push_back(byte);
        } else {
            self.lsr_errors |= LSR_OE;
        }
    }

    /// The highest-priority enabled pending interrupt, as an IIR id.
    fn pending_interrupt(&self) -> Option<u8> {
        if self.ier & IER_ELSI != 0 && self.lsr_errors & LSR_ERRORS != 0 {
            Some(IIR_RLSI)
        } else if self.ier & IER_ERBFI != 0 && !self.rx_fifo.is_empty() {
            if self.fifo_enabled() && self.rx_fifo.len() < self.rx_trigger() {
                Some(IIR_CTI)
            } else {
                Some(IIR_RDI)
            }
        } else if self.ier & IER_ETBEI != 0 && self.thr_ipending {
            Some(IIR_THRI)
        } else if self.ier & IER_EDSSI != 0 && self.msr_deltas != 0 {
            Some(IIR_MSI)
        } else {
            None
        }
    }

    /// The modem status input lines implied by MCR.
    fn modem_lines(&self) -> u8 {
        if self.loopback() {
            let mut lines = 0;
            if self.mcr & MCR_RTS != 0 {
                lines |= MSR_CTS;
            }
            if self.mcr & MCR_DTR != 0 {
                lines |= MSR_DSR;
            }
            if self.mcr & MCR_OUT1 != 0 {
                lines |= MSR_RI;
            }
            if self.mcr & MCR_OUT2 != 0 {
                lines |= MSR_DCD;
            }
            lines
        } else {
            MSR_LINES_CONNECTED
        }
    }

    fn update_modem_lines(&mut self) {
        let new = self.modem_lines();
        let changed = new ^ self.msr_lines;
        if changed & MSR_CTS != 0 {
            self.msr_deltas |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            self.msr_deltas |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            self.msr_deltas |= MSR_DDCD;
        }
        if self.msr_lines & MSR_RI != 0 && new & MSR_RI == 0 {
            self.msr_deltas |= MSR_TERI;
        }
        self.msr_lines = new;
    }

    fn read_byte(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            REG_RBR_THR if dlab => self.dll,
            REG_RBR_THR => {
                if let Some(b) = self.rx_fifo.pop_front() {
                    self.last_rx = b;
                }
                self.refill_rx();
                self.last_rx
            }
            REG_IER if dlab => self.dlm,
            REG_IER => self.ier,
            REG_IIR_FCR => {
                let fifo_bits = if self.fifo_enabled() {
                    IIR_FIFOS_ENABLED
                } else {
                    0
                };
                match self.pending_interrupt() {
                    Some(id) => {
                        if id == IIR_THRI {
                            self.thr_ipending = false;
                        }
                        id | fifo_bits
                    }
                    None => IIR_NO_INT | fifo_bits,
                }
            }
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => {
                let mut lsr = LSR_THRE | LSR_TEMT | self.lsr_errors;
                if !self.rx_fifo.is_empty() {
                    lsr |= LSR_DR;
                }
                self.lsr_errors = 0;
                lsr
            }
            REG_MSR => {
                let msr = self.msr_lines | self.msr_deltas;
                self.msr_deltas = 0;
                msr
            }
            REG_SCR => self.scr,
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            REG_RBR_THR if dlab => self.dll = value,
            REG_RBR_THR => {
                if self.loopback() {
                    self.receive_loopback(value);
                } else {
                    self.output.push(value);
                }
                // The byte leaves at once: THR is empty again and signals it.
                self.thr_ipending = true;
            }
            REG_IER if dlab => self.dlm = value,
            REG_IER => {
                let new = value & IER_MASK;
                let changed = new ^ self.ier;
                self.ier = new;
                if changed & IER_ETBEI != 0 {
                    // A 0->1 edge of ETBEI with THR empty (always, here) signals THRE again.
                    self.thr_ipending = new & IER_ETBEI != 0;
                }
            }
            REG_IIR_FCR => {
                let old_enable = self.fcr & FCR_ENABLE_FIFO;
                if (value ^ old_enable) & FCR_ENABLE_FIFO != 0 {
                    // Switching the FIFOs on or off clears them.
                    self.rx_fifo.clear();
                } else if value & FCR_CLEAR_RCVR != 0 {
                    self.rx_fifo.clear();
                }
                // FCR_CLEAR_XMIT: the transmitter is always empty.
                self.fcr = value & FCR_STORED;
                self.refill_rx();
            }
            REG_LCR => self.lcr = value,
            REG_MCR => {
                self.mcr = value & MCR_MASK;
                self.update_modem_lines();
                self.refill_rx();
            }
            // LSR and MSR are read-only (factory test writes are ignored).
            REG_LSR | REG_MSR => {}
            REG_SCR => self.scr = value,
            _ => {}
        }
    }

    fn drive_irq(&mut self, ctx: &mut DeviceCtx) {
        ctx.irq.set(self.irq_line, self.irq_level());
        self.irq_stale = false;
    }
}

impl PortDevice for Serial16550 {
    /// Wider accesses are split into byte accesses at consecutive offsets, as on the ISA bus.
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        let mut value = 0u32;
        for i in 0..size.min(4) {
            let byte = self.read_byte(offset.wrapping_add(u16::from(i)));
            value |= u32::from(byte) << (8 * u32::from(i));
        }
        self.drive_irq(ctx);
        value
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            // i < 4, so the cast is exact.
            self.write_byte(offset.wrapping_add(i as u16), *byte);
        }
        self.drive_irq(ctx);
    }

    fn next_event_ns(&self) -> Option<u64> {
        // After push_input the line must be re-driven: due at once.
        self.irq_stale.then_some(0)
    }

    fn advance(&mut self, ctx: &mut DeviceCtx) {
        self.drive_irq(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IrqLines, MachineRequest};
    use super::*;

    struct Bus {
        uart: Serial16550,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
    }

    impl Bus {
        fn new() -> Self {
            Bus {
                uart: Serial16550::new(COM1_IRQ),
                irq: IrqLines::default(),
                requests: Vec::new(),
            }
        }
        fn inb(&mut self, offset: u16) -> u8 {
            let mut ctx = DeviceCtx {
                now_ns: 0,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.uart.read(offset, 1, &mut ctx) as u8
        }
        fn outb(&mut self, offset: u16, value: u8) {
            let mut ctx = DeviceCtx {
                now_ns: 0,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.uart.write(offset, 1, u32::from(value), &mut ctx);
        }
        fn advance(&mut self) {
            let mut ctx = DeviceCtx {
                now_ns: 0,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.uart.advance(&mut ctx);
        }
        fn line(&self) -> bool {
            self.irq.get(COM1_IRQ)
        }
    }

    /// `autoconfig()` in drivers/tty/serial/8250/8250_port.c, as it runs for COM1.
    #[test]
    fn linux_autoconfig_detects_16550a() {
        let mut b = Bus::new();
        // IER scratch test.
        let scratch = b.inb(REG_IER);
        b.outb(REG_IER, 0);
        let scratch2 = b.inb(REG_IER) & 0x0f;
        b.outb(REG_IER, 0x0f);
        let scratch3 = b.inb(REG_IER) & 0x0f;
        b.outb(REG_IER, scratch);
        assert_eq!((scratch2, scratch3), (0, 0x0f));

        // Loopback test: MCR = LOOP | OUT2 | RTS must show DCD | CTS.
        let save_mcr = b.inb(REG_MCR);
        b.outb(REG_MCR, MCR_LOOP | 0x0a);
        let status1 = b.inb(REG_MSR) & 0xf0;
        b.outb(REG_MCR, save_mcr);
        assert_eq!(status1, 0x90);

        // LCR 0xBF + "EFR" write (FCR on a 16550A), then the FIFO probe.
        b.outb(REG_LCR, 0xbf);
        b.outb(REG_IIR_FCR, 0);
        b.outb(REG_LCR, 0);
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO);
        assert_eq!(b.inb(REG_IIR_FCR) >> 6, 3, "16550A FIFO bits");

        // autoconfig_16550a: no EFR under DLAB or under LCR 0xBF (reads IIR, non-zero).
        b.outb(REG_LCR, 0x80);
        assert_ne!(b.inb(REG_IIR_FCR), 0);
        b.outb(REG_LCR, 0xbf);
        assert_ne!(b.inb(REG_IIR_FCR), 0);
        // National SuperIO probe: EXCR1 (IIR here) must not follow MCR.LOOP.
        b.outb(REG_LCR, 0);
        let mcr = b.inb(REG_MCR);
        b.outb(REG_LCR, 0xe0);
        let s2 = b.inb(REG_IIR_FCR);
        assert_eq!((s2 ^ mcr) & MCR_LOOP, 0);
        b.outb(REG_LCR, 0);
        b.outb(REG_MCR, mcr ^ MCR_LOOP);
        b.outb(REG_LCR, 0xe0);
        let s2 = b.inb(REG_IIR_FCR);
        b.outb(REG_LCR, 0);
        b.outb(REG_MCR, mcr);
        assert_eq!((s2 ^ mcr) & MCR_LOOP, 0, "not an NS16550");
        // TI16750 probe: IIR bit 5 never sets.
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO | 0x20);
        let status1 = b.inb(REG_IIR_FCR) >> 5;
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO);
        b.outb(REG_LCR, 0x80);
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO | 0x20);
        let status2 = b.inb(REG_IIR_FCR) >> 5;
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO);
        b.outb(REG_LCR, 0);
        assert!(!(status1 == 6 && status2 == 7), "not a 16750");
        // XScale UUE probe: IER bit 6 is not writable.
        let iersave = b.inb(REG_IER);
        b.outb(REG_IER, iersave & !0x40);
        assert_eq!(b.inb(REG_IER) & 0x40, 0);
        b.outb(REG_IER, iersave | 0x40);
        assert_eq!(b.inb(REG_IER) & 0x40, 0);
        b.outb(REG_IER, iersave);
        // Reset: clear FIFOs, read RBR, IER 0.
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO);
        b.outb(
            REG_IIR_FCR,
            FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT,
        );
        b.outb(REG_IIR_FCR, 0);
        b.inb(REG_RBR_THR);
        b.outb(REG_IER, 0);
        assert!(!b.line());
    }

    /// The start-up tests of `serial8250_do_startup`.
    #[test]
    fn linux_startup_thre_tests() {
        let mut b = Bus::new();
        // Clear the FIFOs and the interrupt registers; LSR must not read 0xff.
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO);
        b.outb(
            REG_IIR_FCR,
            FCR_ENABLE_FIFO | FCR_CLEAR_RCVR | FCR_CLEAR_XMIT,
        );
        b.outb(REG_IIR_FCR, 0);
        b.inb(REG_LSR);
        b.inb(REG_RBR_THR);
        b.inb(REG_IIR_FCR);
        b.inb(REG_MSR);
        assert_ne!(b.inb(REG_LSR), 0xff);

        // THRE re-assert test (UART_BUG_THRE must stay clear).
        b.outb(REG_IER, IER_ETBEI);
        let iir1 = b.inb(REG_IIR_FCR);
        b.outb(REG_IER, 0);
        b.outb(REG_IER, IER_ETBEI);
        let iir = b.inb(REG_IIR_FCR);
        b.outb(REG_IER, 0);
        assert_eq!(iir1 & IIR_NO_INT, 0);
        assert_eq!(iir & IIR_NO_INT, 0, "THRE re-asserted");

        // LCR 8N1, MCR with OUT2 (and DTR/RTS).
        b.outb(REG_LCR, 0x03);
        b.outb(REG_MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        // TX-enable test (UART_BUG_TXEN must stay clear).
        b.outb(REG_IER, IER_ETBEI);
        let lsr = b.inb(REG_LSR);
        let iir = b.inb(REG_IIR_FCR);
        b.outb(REG_IER, 0);
        assert!(!(lsr & LSR_TEMT != 0 && iir & IIR_NO_INT != 0));
        assert_eq!(iir & IIR_ID_MASK, IIR_THRI);
    }

    #[test]
    fn thre_interrupt_drives_transmission_and_the_line() {
        let mut b = Bus::new();
        b.outb(REG_MCR, MCR_OUT2);
        b.outb(REG_IER, IER_ETBEI);
        assert!(b.line(), "enabling ETBEI with THR empty raises the line");
        assert_eq!(b.inb(REG_IIR_FCR), IIR_THRI);
        assert!(!b.line(), "reading IIR clears THRI");
        assert_eq!(b.inb(REG_IIR_FCR), IIR_NO_INT);
        // The interrupt handler writes bytes; each leaves at once and re-signals THRE.
        for &c in b"hi\n" {
            assert_ne!(b.inb(REG_LSR) & LSR_THRE, 0);
            b.outb(REG_RBR_THR, c);
        }
        assert!(b.line());
        assert_eq!(b.uart.take_output(), b"hi\n");
        assert!(b.uart.output().is_empty());
        // __stop_tx: clearing ETBEI drops the line.
        b.outb(REG_IER, 0);
        assert!(!b.line());
    }

    #[test]
    fn out2_gates_the_irq_line() {
        let mut b = Bus::new();
        b.outb(REG_IER, IER_ETBEI);
        assert!(!b.line());
        assert_eq!(
            b.inb(REG_IIR_FCR) & IIR_ID_MASK,
            IIR_THRI,
            "pending without OUT2"
        );
        b.outb(REG_RBR_THR, b'x');
        assert!(!b.line());
        b.outb(REG_MCR, MCR_OUT2);
        assert!(b.line());
        b.outb(REG_MCR, 0);
        assert!(!b.line());
    }

    #[test]
    fn receive_with_fifo_and_interrupts() {
        let mut b = Bus::new();
        b.outb(REG_LCR, 0x03);
        b.outb(REG_IIR_FCR, FCR_ENABLE_FIFO | 0x80); // trigger 8
        b.outb(REG_MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        b.outb(REG_IER, IER_ERBFI | IER_ELSI);
        assert!(!b.line());
        b.uart.push_input(b"abc");
        assert_eq!(b.uart.next_event_ns(), Some(0));
        b.advance();
        assert_eq!(b.uart.next_event_ns(), None);
        assert!(b.line());
        // Below the trigger level: character timeout.
        assert_eq!(b.inb(REG_IIR_FCR), IIR_FIFOS_ENABLED | IIR_CTI);
        let mut got = Vec::new();
        while b.inb(REG_LSR) & LSR_DR != 0 {
            got.push(b.inb(REG_RBR_THR));
        }
        assert_eq!(got, b"abc");
        assert!(!b.line());
        assert_eq!(b.inb(REG_IIR_FCR), IIR_FIFOS_ENABLED | IIR_NO_INT);

        // More than a FIFO's worth: no overrun, the rest waits in the host queue.
        let data: Vec<u8> = (0..40).collect();
        b.uart.push_input(&data);
        b.advance();
        assert_eq!(b.uart.pending_input(), 40 - FIFO_SIZE);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_FIFOS_ENABLED | IIR_RDI);
        let mut got = Vec::new();
        while b.inb(REG_LSR) & LSR_DR != 0 {
            got.push(b.inb(REG_RBR_THR));
        }
        assert_eq!(got, data);
        assert_eq!(b.inb(REG_LSR) & LSR_OE, 0);
    }

    #[test]
    fn receive_without_fifo_holds_one_byte() {
        let mut b = Bus::new();
        b.outb(REG_MCR, MCR_OUT2);
        b.outb(REG_IER, IER_ERBFI);
        b.uart.push_input(b"xy");
        b.advance();
        assert_eq!(b.inb(REG_IIR_FCR), IIR_RDI);
        assert_eq!(b.uart.pending_input(), 1);
        assert_eq!(b.inb(REG_RBR_THR), b'x');
        assert!(b.line(), "the next byte arrived");
        assert_eq!(b.inb(REG_RBR_THR), b'y');
        assert!(!b.line());
        assert_eq!(b.inb(REG_LSR), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn loopback_echoes_and_overruns() {
        let mut b = Bus::new();
        b.outb(REG_MCR, MCR_LOOP | MCR_OUT2);
        b.outb(REG_IER, IER_ERBFI | IER_ELSI);
        b.uart.push_input(b"host");
        b.outb(REG_RBR_THR, 0x55);
        assert!(b.uart.output().is_empty(), "loopback does not transmit");
        assert!(!b.line(), "OUT2 is forced inactive in loopback");
        assert_eq!(b.inb(REG_IIR_FCR), IIR_RDI);
        // No FIFO: a second byte overruns.
        b.outb(REG_RBR_THR, 0x66);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_RLSI, "line status has top priority");
        assert_eq!(b.inb(REG_LSR), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(b.inb(REG_LSR) & LSR_OE, 0, "reading LSR clears OE");
        assert_eq!(b.inb(REG_RBR_THR), 0x55);
        // Host input was held back; it arrives when loopback ends.
        assert_eq!(b.uart.pending_input(), 4);
        b.outb(REG_MCR, MCR_OUT2);
        assert!(b.line());
        assert_eq!(b.inb(REG_RBR_THR), b'h');
    }

    #[test]
    fn modem_status_deltas_and_interrupt() {
        let mut b = Bus::new();
        assert_eq!(b.inb(REG_MSR), MSR_LINES_CONNECTED);
        b.outb(REG_IER, IER_EDSSI);
        b.outb(REG_MCR, MCR_LOOP | MCR_OUT1 | MCR_DTR);
        // Loopback: RTS and OUT2 low → CTS and DCD drop; DTR → DSR stays.
        assert_eq!(b.inb(REG_IIR_FCR), IIR_MSI);
        b.outb(REG_MCR, MCR_LOOP | MCR_DTR);
        let msr = b.inb(REG_MSR);
        assert_eq!(msr, MSR_DSR | MSR_DCTS | MSR_DDCD | MSR_TERI);
        assert_eq!(b.inb(REG_MSR), MSR_DSR);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_NO_INT);
    }

    #[test]
    fn interrupt_priorities() {
        let mut b = Bus::new();
        b.outb(REG_MCR, MCR_LOOP);
        b.outb(REG_IER, IER_MASK);
        b.outb(REG_RBR_THR, 1);
        b.outb(REG_RBR_THR, 2); // overrun
        b.outb(REG_MCR, MCR_LOOP | MCR_RTS); // modem status delta
        assert_eq!(b.inb(REG_IIR_FCR), IIR_RLSI);
        b.inb(REG_LSR);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_RDI);
        b.inb(REG_RBR_THR);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_THRI);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_MSI);
        b.inb(REG_MSR);
        assert_eq!(b.inb(REG_IIR_FCR), IIR_NO_INT);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let mut b = Bus::new();
        b.outb(REG_LCR, LCR_DLAB | 0x03);
        b.outb(REG_RBR_THR, 0x0c);
        b.outb(REG_IER, 0x00);
        assert_eq!(b.inb(REG_RBR_THR), 0x0c);
        assert_eq!(b.inb(REG_IER), 0x00);
        b.outb(REG_LCR, 0x03);
        assert_eq!(b.uart.divisor(), 12);
        assert_eq!(b.inb(REG_IER), 0, "IER untouched by the DLM write");
        assert!(b.uart.output().is_empty(), "the DLL write did not transmit");
        b.outb(REG_SCR, 0xa5);
        assert_eq!(b.inb(REG_SCR), 0xa5);
        assert_eq!(b.inb(REG_LCR), 0x03);
    }

    #[test]
    fn word_access_is_split_into_bytes() {
        let mut b = Bus::new();
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut b.irq,
            requests: &mut b.requests,
        };
        // LCR (3) = 0x03 and MCR (4) = OUT2 in one 16-bit write.
        b.uart.write(REG_LCR, 2, 0x0803, &mut ctx);
        assert_eq!(b.uart.read(REG_LCR, 2, &mut ctx), 0x0803);
        assert_eq!(b.uart.read(NUM_PORTS, 1, &mut ctx), 0xff);
    }
}
