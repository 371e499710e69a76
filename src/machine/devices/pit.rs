//! The 8254 programmable interval timer (ports 0x40-0x43) clocked at 1,193,182 Hz from the
//! machine's virtual time, and system control port B (port 0x61: channel 2 gate, speaker
//! enable, refresh toggle, OUT2, NMI status).
//!
//! # Interface for the machine
//!
//! * [`Pit`] implements [`PortDevice`] for ports 0x40-0x43 (offsets 0-3 from [`PIT_BASE`]).
//!   Wider accesses are split into byte accesses at consecutive offsets.
//! * Port 0x61 is served by the same [`Pit`] (it owns the channel 2 gate and reads OUT2):
//!   either call [`Pit::port61_read`] / [`Pit::port61_write`] directly, or, with a bus of
//!   `Box<dyn PortDevice>`, share the Pit with [`Pit::into_shared`] and register the
//!   returned [`PitPorts`] at 0x40 (4 ports) and [`SystemControlB`] at 0x61 (1 port).
//! * Timer: channel 0's OUT is ISA IRQ0. After every access and every [`PortDevice::advance`]
//!   the Pit sets IRQ0 in `ctx.irq` to OUT0's level at `ctx.now_ns`; the PIC detects the
//!   rising edge. [`PortDevice::next_event_ns`] is the virtual time of channel 0's next OUT
//!   transition (falling or rising) after the last access/advance: the machine must advance
//!   the Pit at that time and let the PIC sample the lines, so the one-clock low pulse of
//!   modes 2 and 4 is seen (advancing past an event without sampling can lose an edge).
//!
//! # Time
//!
//! The counters are a pure function of virtual time: the clock edge count at `now_ns` is
//! `floor(now_ns * 1_193_182 / 1e9)` (u128 arithmetic, see [`ticks_at`]), and a channel
//! started at edge `s` has counted `ticks_at(now_ns) - s` clocks. The first nanosecond at
//! which edge `t` has happened is [`ns_of_tick`]`(t) = ceil(t * 1e9 / 1_193_182)`. Reading a
//! counter twice at the same `now_ns` gives the same value.
//!
//! # What is modelled
//!
//! * Channels 0-2, modes 0-5 (mode 6/7 encodings alias 2/3), binary and BCD counting, access
//!   modes LSB only, MSB only and LSB-then-MSB (separate write and read flip-flops, reset by a
//!   control word), the counter latch command, the read-back command (count and/or status of
//!   any set of channels; status = OUT, null count, RW, mode, BCD; a pending latch is not
//!   overwritten), reads of the running counter without a latch.
//! * Count semantics: after a control word OUT takes its initial level (low in mode 0, high
//!   otherwise) and the counter holds its value until a count is written. Mode 0: OUT rises
//!   after N clocks; writing the first byte of a two-byte count stops counting and drops OUT.
//!   Mode 1/5: a gate rising edge (re)triggers; mode 1 OUT is low for N clocks, mode 5 pulses
//!   low for one clock after N clocks. Mode 2: OUT low during the last clock of every N-clock
//!   period. Mode 3: OUT high for ceil(N/2) and low for floor(N/2) clocks, the counter
//!   decrements by two (odd counts load N-1, as the 8254 does). Mode 4: OUT pulses low for one
//!   clock after N clocks (Linux's "pit" oneshot clockevent). After terminal count modes 0, 1,
//!   4, 5 wrap and keep counting. A count of 0 means 65536 (10000 in BCD).
//! * Gate (channel 2 only; channels 0 and 1 have their gate tied high): low pauses modes 0 and
//!   4; low stops modes 2 and 3 and forces OUT high, the rising edge reloads; the rising edge
//!   triggers modes 1 and 5.
//! * Null count: set by a control word, cleared by the first clock edge after a count is
//!   written.
//! * Port 0x61: bits 0-3 read back as written (bit 0 = channel 2 gate, bit 1 = speaker data
//!   enable, bits 2-3 = parity/IOCHK check disables), bit 4 toggles every 15.085 us of
//!   virtual time (refresh request), bit 5 = OUT2, bits 6-7 (IOCHK, SERR NMI status) read 0.
//! * Power-on state as the BIOS/QEMU leave it: every channel in mode 3 with count 65536,
//!   channels 0 and 1 counting from time 0, channel 2 waiting for its gate.
//!
//! # Left out
//!
//! * The one-clock delay between writing a count and loading it into the counting element:
//!   the count is loaded at the clock edge count of the write, so mode 0's OUT rises N clocks
//!   (not N+1) after the write, as in QEMU.
//! * A count rewritten in modes 2/3 without a new control word takes effect immediately (the
//!   8254 waits for the end of the current period / half period). Linux always writes a
//!   control word first.
//! * Counts of 1 in modes 2 and 3 (illegal on the 8254): OUT stays high.
//! * The speaker itself (no audio), and NMI sources (port 0x61 bits 6-7 always read 0).

use std::cell::RefCell;
use std::rc::Rc;

use super::{DeviceCtx, PortDevice};

/// The PIT input clock in Hz.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;

/// First port of the PIT.
pub const PIT_BASE: u16 = 0x40;
/// Number of PIT ports.
pub const PIT_PORT_COUNT: u16 = 4;
/// Offset of channel 0's counter.
pub const REG_CHANNEL0: u16 = 0;
/// Offset of channel 1's counter.
pub const REG_CHANNEL1: u16 = 1;
/// Offset of channel 2's counter.
pub const REG_CHANNEL2: u16 = 2;
/// Offset of the mode/command register (write only).
pub const REG_CONTROL: u16 = 3;
/// Value read from the write-only mode/command register.
pub const CONTROL_READ_VALUE: u8 = 0xff;
/// System control port B.
pub const SYSTEM_CONTROL_B_PORT: u16 = 0x61;

/// The ISA line channel 0's OUT drives.
pub const IRQ_TIMER: u8 = 0;

/// Control word: select counter field (bits 7-6).
pub const CW_SC_SHIFT: u8 = 6;
/// Select counter value for the read-back command.
pub const CW_SC_READ_BACK: u8 = 3;
/// Control word: read/write field (bits 5-4).
pub const CW_RW_SHIFT: u8 = 4;
/// Control word: read/write field mask (after shifting).
pub const CW_RW_MASK: u8 = 0x03;
/// RW field: counter latch command.
pub const RW_LATCH: u8 = 0;
/// RW field: least significant byte only.
pub const RW_LSB: u8 = 1;
/// RW field: most significant byte only.
pub const RW_MSB: u8 = 2;
/// RW field: least then most significant byte.
pub const RW_LSB_MSB: u8 = 3;
/// Control word: mode field (bits 3-1).
pub const CW_MODE_SHIFT: u8 = 1;
/// Control word: mode field mask (after shifting).
pub const CW_MODE_MASK: u8 = 0x07;
/// Control word: BCD counting.
pub const CW_BCD: u8 = 0x01;

/// Read-back command: do not latch the count (active low COUNT bit).
pub const RB_NO_COUNT: u8 = 0x20;
/// Read-back command: do not latch the status (active low STATUS bit).
pub const RB_NO_STATUS: u8 = 0x10;
/// Read-back command: channel 0 selected (channel n is `RB_CHANNEL0 << n`).
pub const RB_CHANNEL0: u8 = 0x02;

/// Status byte: OUT level.
pub const STATUS_OUT: u8 = 0x80;
/// Status byte: null count (the last count written is not loaded yet).
pub const STATUS_NULL_COUNT: u8 = 0x40;

/// Port 0x61: timer 2 gate.
pub const P61_GATE2: u8 = 0x01;
/// Port 0x61: speaker data enable.
pub const P61_SPEAKER_DATA: u8 = 0x02;
/// Port 0x61: parity (SERR) check disable.
pub const P61_PARITY_CHECK_DISABLE: u8 = 0x04;
/// Port 0x61: I/O channel check disable.
pub const P61_IOCHK_DISABLE: u8 = 0x08;
/// Port 0x61: refresh request toggle (read only).
pub const P61_REFRESH: u8 = 0x10;
/// Port 0x61: timer 2 OUT (read only).
pub const P61_OUT2: u8 = 0x20;
/// Port 0x61: I/O channel check NMI status (read only, always 0 here).
pub const P61_IOCHK_STATUS: u8 = 0x40;
/// Port 0x61: parity error / SERR NMI status (read only, always 0 here).
pub const P61_SERR_STATUS: u8 = 0x80;
/// Port 0x61 bits that read back as written.
pub const P61_WRITABLE: u8 =
    P61_GATE2 | P61_SPEAKER_DATA | P61_PARITY_CHECK_DISABLE | P61_IOCHK_DISABLE;
/// Port 0x61 refresh toggle half period in nanoseconds (15.085 us).
pub const REFRESH_TOGGLE_NS: u64 = 15_085;

/// Binary counter modulus.
const BINARY_MODULUS: u64 = 0x1_0000;
/// BCD counter modulus.
const BCD_MODULUS: u64 = 10_000;

/// The PIT clock edge count at virtual time `ns`: `floor(ns * 1193182 / 1e9)`.
pub fn ticks_at(ns: u64) -> u64 {
    let t = u128::from(ns) * u128::from(PIT_FREQ_HZ) / u128::from(NS_PER_SEC);
    // Never truncates: the quotient is smaller than `ns`.
    t as u64
}

/// The first virtual nanosecond at which clock edge `tick` has happened (the inverse of
/// [`ticks_at`]: `ticks_at(ns_of_tick(t)) == t` and `ticks_at(ns_of_tick(t) - 1) < t`).
pub fn ns_of_tick(tick: u64) -> u64 {
    let ns = (u128::from(tick) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQ_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// How the count register is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    LsbMsb,
}

impl Access {
    fn from_rw(rw: u8) -> Self {
        match rw {
            RW_LSB => Access::Lsb,
            RW_MSB => Access::Msb,
            _ => Access::LsbMsb,
        }
    }

    fn rw(self) -> u8 {
        match self {
            Access::Lsb => RW_LSB,
            Access::Msb => RW_MSB,
            Access::LsbMsb => RW_LSB_MSB,
        }
    }
}

/// What a channel's counting element is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No count since the last control word (or mode 0 between the two bytes of a count):
    /// the counter holds `value`, OUT is at `out`.
    Idle { value: u64, out: bool },
    /// Modes 1 and 5: a count is written, waiting for a gate rising edge; OUT high.
    Armed { value: u64 },
    /// Counting since clock edge `start`.
    Counting { start: u64 },
    /// Gate low in modes 0, 2, 3, 4 after `elapsed` clocks.
    Paused { elapsed: u64 },
}

/// Whether the status byte's null count bit is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NullCount {
    Clear,
    /// Control word written, no count yet.
    UntilCount,
    /// Count written at this clock edge count; loaded at the next edge.
    UntilAfter(u64),
}

/// A latched count being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LatchedCount {
    value: u16,
    /// LSB-then-MSB access: the LSB was read, the MSB is next.
    msb_next: bool,
}

/// One counter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Channel {
    /// The mode field as written (0-7; 6 and 7 alias 2 and 3).
    mode_bits: u8,
    access: Access,
    bcd: bool,
    /// The last complete count written (1..=modulus).
    count_register: u64,
    /// The count of the current counting cycle (1..=modulus).
    count: u64,
    phase: Phase,
    gate: bool,
    null_count: NullCount,
    /// LSB-then-MSB writes: the LSB was written and is held here.
    pending_lsb: Option<u8>,
    /// LSB-then-MSB reads without a latch: the MSB is next.
    read_msb_next: bool,
    latched_count: Option<LatchedCount>,
    latched_status: Option<u8>,
}

impl Channel {
    fn power_on(gate: bool) -> Self {
        Channel {
            mode_bits: 3,
            access: Access::LsbMsb,
            bcd: false,
            count_register: BINARY_MODULUS,
            count: BINARY_MODULUS,
            phase: if gate {
                Phase::Counting { start: 0 }
            } else {
                Phase::Paused { elapsed: 0 }
            },
            gate,
            null_count: NullCount::Clear,
            pending_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
        }
    }

    fn mode(&self) -> u8 {
        match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd {
            BCD_MODULUS
        } else {
            BINARY_MODULUS
        }
    }

    /// The counting element after `d` clocks of the current cycle (not reduced modulo the
    /// counter size).
    fn value_after(&self, d: u64) -> u64 {
        let n = self.count;
        match self.mode() {
            2 => n - d % n,
            3 => {
                let p = d % n;
                if n.is_multiple_of(2) {
                    n - 2 * (p % (n / 2))
                } else {
                    let high = n.div_ceil(2);
                    let j = if p < high { p } else { p - high };
                    n - 1 - 2 * j
                }
            }
            // Modes 0, 1, 4, 5 count down from N and wrap after terminal count.
            _ => {
                let m = self.modulus();
                (n + m - d % m) % m
            }
        }
    }

    /// OUT after `d` clocks of the current cycle.
    fn out_after(&self, d: u64) -> bool {
        let n = self.count;
        match self.mode() {
            0 | 1 => d >= n,
            2 => !(n >= 2 && d % n == n - 1),
            3 => d % n < n.div_ceil(2),
            _ => d != n, // modes 4, 5
        }
    }

    /// The smallest number of clocks `e > d` after which OUT differs from OUT after `d`.
    fn next_change_after(&self, d: u64) -> Option<u64> {
        let n = self.count;
        match self.mode() {
            0 | 1 => (d < n).then_some(n),
            2 => {
                if n < 2 {
                    return None;
                }
                let p = d % n;
                Some(if p < n - 1 { d + (n - 1 - p) } else { d + 1 })
            }
            3 => {
                let high = n.div_ceil(2);
                if high == n {
                    return None;
                }
                let p = d % n;
                Some(if p < high {
                    d + (high - p)
                } else {
                    d + (n - p)
                })
            }
            _ => {
                if d < n {
                    Some(n)
                } else if d == n {
                    Some(n + 1)
                } else {
                    None
                }
            }
        }
    }

    /// The counting element at clock edge count `t` (not reduced).
    fn raw_value(&self, t: u64) -> u64 {
        match self.phase {
            Phase::Idle { value, .. } | Phase::Armed { value } => value,
            Phase::Counting { start } => self.value_after(t.saturating_sub(start)),
            Phase::Paused { elapsed } => self.value_after(elapsed),
        }
    }

    /// The counter as the guest reads it at clock edge count `t` (BCD encoded in BCD mode).
    fn value(&self, t: u64) -> u16 {
        let v = self.raw_value(t) % self.modulus();
        if self.bcd {
            to_bcd(v)
        } else {
            // v < 0x10000.
            v as u16
        }
    }

    fn out(&self, t: u64) -> bool {
        match self.phase {
            Phase::Idle { out, .. } => out,
            Phase::Armed { .. } => true,
            Phase::Counting { start } => self.out_after(t.saturating_sub(start)),
            Phase::Paused { elapsed } => matches!(self.mode(), 2 | 3) || self.out_after(elapsed),
        }
    }

    /// The clock edge count of OUT's next transition after clock edge count `t`.
    fn next_transition(&self, t: u64) -> Option<u64> {
        match self.phase {
            Phase::Counting { start } => {
                let d = t.saturating_sub(start);
                self.next_change_after(d).map(|e| start + e)
            }
            _ => None,
        }
    }

    fn status(&self, t: u64) -> u8 {
        let null = match self.null_count {
            NullCount::Clear => false,
            NullCount::UntilCount => true,
            NullCount::UntilAfter(edge) => t <= edge,
        };
        (if self.out(t) { STATUS_OUT } else { 0 })
            | (if null { STATUS_NULL_COUNT } else { 0 })
            | (self.access.rw() << CW_RW_SHIFT)
            | (self.mode_bits << CW_MODE_SHIFT)
            | (if self.bcd { CW_BCD } else { 0 })
    }

    /// A control word (not the latch command) for this channel.
    fn program(&mut self, cw: u8, t: u64) {
        let value = self.raw_value(t);
        self.access = Access::from_rw((cw >> CW_RW_SHIFT) & CW_RW_MASK);
        self.mode_bits = (cw >> CW_MODE_SHIFT) & CW_MODE_MASK;
        self.bcd = cw & CW_BCD != 0;
        self.pending_lsb = None;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_count = NullCount::UntilCount;
        self.phase = Phase::Idle {
            value,
            out: self.mode() != 0,
        };
    }

    fn latch_count(&mut self, t: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(LatchedCount {
                value: self.value(t),
                msb_next: false,
            });
        }
    }

    fn latch_status(&mut self, t: u64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status(t));
        }
    }

    fn read(&mut self, t: u64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let [lsb, msb] = match self.latched_count {
            Some(latched) => {
                let bytes = latched.value.to_le_bytes();
                return match self.access {
                    Access::Lsb => {
                        self.latched_count = None;
                        bytes[0]
                    }
                    Access::Msb => {
                        self.latched_count = None;
                        bytes[1]
                    }
                    Access::LsbMsb if latched.msb_next => {
                        self.latched_count = None;
                        bytes[1]
                    }
                    Access::LsbMsb => {
                        self.latched_count = Some(LatchedCount {
                            msb_next: true,
                            ..latched
                        });
                        bytes[0]
                    }
                };
            }
            None => self.value(t).to_le_bytes(),
        };
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::LsbMsb => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lsb
                } else {
                    msb
                }
            }
        }
    }

    fn write(&mut self, byte: u8, t: u64) {
        let raw = match self.access {
            Access::Lsb => u16::from(byte),
            Access::Msb => u16::from(byte) << 8,
            Access::LsbMsb => match self.pending_lsb.take() {
                Some(lsb) => u16::from_le_bytes([lsb, byte]),
                None => {
                    self.pending_lsb = Some(byte);
                    if self.mode() == 0 {
                        // Mode 0: the first byte stops counting and drops OUT.
                        self.phase = Phase::Idle {
                            value: self.raw_value(t),
                            out: false,
                        };
                    }
                    return;
                }
            },
        };
        self.load(raw, t);
    }

    /// A complete count was written at clock edge count `t`.
    fn load(&mut self, raw: u16, t: u64) {
        let decoded = if self.bcd {
            from_bcd(raw) % BCD_MODULUS
        } else {
            u64::from(raw)
        };
        self.count_register = if decoded == 0 {
            self.modulus()
        } else {
            decoded
        };
        self.null_count = NullCount::UntilAfter(t);
        match self.mode() {
            1 | 5 => {
                // The new count is used from the next trigger on.
                if let Phase::Idle { value, .. } = self.phase {
                    self.phase = Phase::Armed { value };
                }
            }
            _ => {
                self.count = self.count_register;
                self.phase = if self.gate {
                    Phase::Counting { start: t }
                } else {
                    Phase::Paused { elapsed: 0 }
                };
            }
        }
    }

    fn set_gate(&mut self, gate: bool, t: u64) {
        if gate == self.gate {
            return;
        }
        self.gate = gate;
        match (self.mode(), self.phase) {
            (0 | 2 | 3 | 4, Phase::Counting { start }) if !gate => {
                self.phase = Phase::Paused {
                    elapsed: t.saturating_sub(start),
                };
            }
            (0 | 4, Phase::Paused { elapsed }) if gate => {
                self.phase = Phase::Counting {
                    start: t.saturating_sub(elapsed),
                };
            }
            (2 | 3, Phase::Paused { .. }) if gate => {
                self.phase = Phase::Counting { start: t };
            }
            (1 | 5, Phase::Armed { .. } | Phase::Counting { .. }) if gate => {
                self.count = self.count_register;
                self.phase = Phase::Counting { start: t };
            }
            _ => {}
        }
    }
}

/// Binary to packed BCD (for `v < 10000`).
fn to_bcd(v: u64) -> u16 {
    let digits = [v % 10, v / 10 % 10, v / 100 % 10, v / 1000 % 10];
    digits
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &d)| acc | ((d as u16) << (4 * i)))
}

/// Packed BCD to binary (nibbles above 9 count with their binary value).
fn from_bcd(raw: u16) -> u64 {
    (0..4)
        .rev()
        .fold(0, |acc, i| acc * 10 + u64::from((raw >> (4 * i)) & 0xf))
}

/// The 8254 and port 0x61. See the module documentation for the wiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port 0x61 bits that read back as written.
    port61: u8,
    /// Virtual time of the last access or advance.
    now_ns: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// Power-on state (see the module documentation).
    pub fn new() -> Self {
        Pit {
            channels: [
                Channel::power_on(true),
                Channel::power_on(true),
                Channel::power_on(false),
            ],
            port61: 0,
            now_ns: 0,
        }
    }

    /// Share the Pit between the two port devices that expose it to a `dyn PortDevice` bus.
    pub fn into_shared(self) -> (PitPorts, SystemControlB) {
        let shared = Rc::new(RefCell::new(self));
        (PitPorts(shared.clone()), SystemControlB(shared))
    }

    /// OUT of `channel` (0-2) at `now_ns` (false for other channel numbers).
    pub fn out(&self, channel: usize, now_ns: u64) -> bool {
        self.channels
            .get(channel)
            .is_some_and(|c| c.out(ticks_at(now_ns)))
    }

    /// The counter of `channel` (0-2) at `now_ns`, as an unlatched read would see it (0 for
    /// other channel numbers). No side effects.
    pub fn counter(&self, channel: usize, now_ns: u64) -> u16 {
        self.channels
            .get(channel)
            .map_or(0, |c| c.value(ticks_at(now_ns)))
    }

    /// A read of port 0x61.
    pub fn port61_read(&mut self, ctx: &mut DeviceCtx) -> u8 {
        self.sync(ctx);
        let t = ticks_at(ctx.now_ns);
        let refresh = (ctx.now_ns / REFRESH_TOGGLE_NS) % 2 == 1;
        (self.port61 & P61_WRITABLE)
            | (if refresh { P61_REFRESH } else { 0 })
            | (if self.channels[2].out(t) { P61_OUT2 } else { 0 })
    }

    /// A write of port 0x61.
    pub fn port61_write(&mut self, value: u8, ctx: &mut DeviceCtx) {
        self.sync(ctx);
        self.port61 = value & P61_WRITABLE;
        self.channels[2].set_gate(value & P61_GATE2 != 0, ticks_at(ctx.now_ns));
        self.drive_irq(ctx);
    }

    fn sync(&mut self, ctx: &DeviceCtx) {
        self.now_ns = ctx.now_ns;
    }

    fn drive_irq(&self, ctx: &mut DeviceCtx) {
        let out0 = self.channels[0].out(ticks_at(ctx.now_ns));
        ctx.irq.set(IRQ_TIMER, out0);
    }

    fn read_byte(&mut self, offset: u16, t: u64) -> u8 {
        match offset {
            REG_CHANNEL0 | REG_CHANNEL1 | REG_CHANNEL2 => {
                self.channels[usize::from(offset)].read(t)
            }
            _ => CONTROL_READ_VALUE,
        }
    }

    fn write_byte(&mut self, offset: u16, value: u8, t: u64) {
        match offset {
            REG_CHANNEL0 | REG_CHANNEL1 | REG_CHANNEL2 => {
                self.channels[usize::from(offset)].write(value, t)
            }
            REG_CONTROL => self.write_control(value, t),
            _ => {}
        }
    }

    fn write_control(&mut self, value: u8, t: u64) {
        let select = value >> CW_SC_SHIFT;
        if select == CW_SC_READ_BACK {
            for (i, channel) in self.channels.iter_mut().enumerate() {
                if value & (RB_CHANNEL0 << i) == 0 {
                    continue;
                }
                if value & RB_NO_STATUS == 0 {
                    channel.latch_status(t);
                }
                if value & RB_NO_COUNT == 0 {
                    channel.latch_count(t);
                }
            }
            return;
        }
        let channel = &mut self.channels[usize::from(select)];
        if (value >> CW_RW_SHIFT) & CW_RW_MASK == RW_LATCH {
            channel.latch_count(t);
        } else {
            channel.program(value, t);
        }
    }
}

/// Split a `size`-byte read into byte reads at consecutive offsets (little endian).
fn read_split(offset: u16, size: u8, mut read: impl FnMut(u16) -> u8) -> u32 {
    (0..size.min(4)).fold(0, |acc, i| {
        acc | (u32::from(read(offset.wrapping_add(u16::from(i)))) << (8 * i))
    })
}

/// Split a `size`-byte write into byte writes at consecutive offsets (little endian).
fn write_split(offset: u16, size: u8, value: u32, mut write: impl FnMut(u16, u8)) {
    for (i, byte) in value
        .to_le_bytes()
        .into_iter()
        .take(usize::from(size.min(4)))
        .enumerate()
    {
        // i < 4.
        write(offset.wrapping_add(i as u16), byte);
    }
}

impl PortDevice for Pit {
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        self.sync(ctx);
        let t = ticks_at(ctx.now_ns);
        let value = read_split(offset, size, |o| self.read_byte(o, t));
        self.drive_irq(ctx);
        value
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        self.sync(ctx);
        let t = ticks_at(ctx.now_ns);
        write_split(offset, size, value, |o, b| self.write_byte(o, b, t));
        self.drive_irq(ctx);
    }

    fn next_event_ns(&self) -> Option<u64> {
        self.channels[0]
            .next_transition(ticks_at(self.now_ns))
            .map(ns_of_tick)
    }

    fn advance(&mut self, ctx: &mut DeviceCtx) {
        self.sync(ctx);
        self.drive_irq(ctx);
    }
}

/// Ports 0x40-0x43 of a shared [`Pit`] (see [`Pit::into_shared`]); the machine's timer calls
/// (`next_event_ns`, `advance`) go to this one.
pub struct PitPorts(pub Rc<RefCell<Pit>>);

impl PortDevice for PitPorts {
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        self.0.borrow_mut().read(offset, size, ctx)
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        self.0.borrow_mut().write(offset, size, value, ctx)
    }

    fn next_event_ns(&self) -> Option<u64> {
        self.0.borrow().next_event_ns()
    }

    fn advance(&mut self, ctx: &mut DeviceCtx) {
        self.0.borrow_mut().advance(ctx)
    }
}

/// Port 0x61 (offset 0) of a shared [`Pit`] (see [`Pit::into_shared`]). Bytes beyond offset
/// 0 of a wider access read 0xFF and ignore writes.
pub struct SystemControlB(pub Rc<RefCell<Pit>>);

impl PortDevice for SystemControlB {
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        let mut pit = self.0.borrow_mut();
        read_split(offset, size, |o| {
            if o == 0 {
                pit.port61_read(ctx)
            } else {
                0xff
            }
        })
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        let mut pit = self.0.borrow_mut();
        write_split(offset, size, value, |o, b| {
            if o == 0 {
                pit.port61_write(b, ctx)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::pic::{self, PicPair};
    use super::super::{IrqLines, MachineRequest};
    use super::*;

    /// Linux's PIT_LATCH for HZ=250: (1193182 + 125) / 250.
    const LATCH_HZ250: u16 = 4773;
    /// Linux's CAL_LATCH (10 ms).
    const CAL_LATCH: u16 = 11931;

    /// A port bus around a Pit with a virtual clock.
    struct Bus {
        pit: Pit,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
        now: u64,
    }

    impl Bus {
        fn new(now: u64) -> Self {
            Bus {
                pit: Pit::new(),
                irq: IrqLines::default(),
                requests: Vec::new(),
                now,
            }
        }

        fn ctx(&mut self) -> DeviceCtx<'_> {
            DeviceCtx {
                now_ns: self.now,
                irq: &mut self.irq,
                requests: &mut self.requests,
            }
        }

        fn outb(&mut self, value: u8, port: u16) {
            let mut ctx = DeviceCtx {
                now_ns: self.now,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            if port == SYSTEM_CONTROL_B_PORT {
                self.pit.port61_write(value, &mut ctx);
            } else {
                self.pit
                    .write(port - PIT_BASE, 1, u32::from(value), &mut ctx);
            }
        }

        fn inb(&mut self, port: u16) -> u8 {
            let mut ctx = DeviceCtx {
                now_ns: self.now,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            if port == SYSTEM_CONTROL_B_PORT {
                self.pit.port61_read(&mut ctx)
            } else {
                self.pit.read(port - PIT_BASE, 1, &mut ctx) as u8
            }
        }

        fn advance_to(&mut self, now: u64) {
            self.now = now;
            let mut ctx = DeviceCtx {
                now_ns: self.now,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.pit.advance(&mut ctx);
        }

        fn irq0(&self) -> bool {
            self.irq.get(IRQ_TIMER)
        }

        /// pit_set_periodic.
        fn linux_periodic(&mut self, latch: u16) {
            self.outb(0x34, 0x43);
            self.outb(latch as u8, 0x40);
            self.outb((latch >> 8) as u8, 0x40);
        }

        /// i8253_read's counter read: latch channel 0, read LSB and MSB.
        fn linux_read_ch0(&mut self) -> u16 {
            self.outb(0x00, 0x43);
            let lo = self.inb(0x40);
            let hi = self.inb(0x40);
            u16::from_le_bytes([lo, hi])
        }
    }

    #[test]
    fn tick_conversion_is_exact() {
        assert_eq!(ticks_at(0), 0);
        assert_eq!(ticks_at(NS_PER_SEC), PIT_FREQ_HZ);
        assert_eq!(ticks_at(838), 0);
        assert_eq!(ticks_at(839), 1);
        for t in [
            1,
            2,
            4772,
            4773,
            11931,
            65536,
            PIT_FREQ_HZ,
            10 * PIT_FREQ_HZ + 7,
        ] {
            let ns = ns_of_tick(t);
            assert_eq!(ticks_at(ns), t, "tick {t}");
            assert_eq!(ticks_at(ns - 1), t - 1, "tick {t}");
        }
        // Large times do not overflow.
        let day = 86_400 * NS_PER_SEC;
        assert_eq!(ticks_at(day), 86_400 * PIT_FREQ_HZ);
    }

    #[test]
    fn power_on_channel0_square_wave() {
        let mut bus = Bus::new(0);
        bus.advance_to(0);
        assert!(bus.irq0());
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(32768)));
        bus.advance_to(ns_of_tick(32768));
        assert!(!bus.irq0());
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(65536)));
        // Channel 2 waits for its gate: OUT2 high, counter frozen.
        assert_eq!(bus.inb(0x61) & P61_OUT2, P61_OUT2);
    }

    #[test]
    fn mode2_periodic_hz250_timing() {
        let t0 = 1_234_567; // not on a clock edge
        let mut bus = Bus::new(t0);
        bus.linux_periodic(LATCH_HZ250);
        let start = ticks_at(t0);
        let n = u64::from(LATCH_HZ250);
        assert!(bus.irq0(), "mode 2 OUT starts high");
        let mut rises = Vec::new();
        let mut falls = Vec::new();
        let mut level = true;
        while let Some(event) = bus.pit.next_event_ns() {
            if event > t0 + NS_PER_SEC {
                break;
            }
            assert!(event > bus.now);
            // The level just before the event is unchanged, at the event it flips.
            assert_eq!(bus.pit.out(0, event - 1), level);
            bus.advance_to(event);
            assert_ne!(bus.irq0(), level);
            level = bus.irq0();
            if level {
                rises.push(event);
            } else {
                falls.push(event);
            }
        }
        let end = ticks_at(t0 + NS_PER_SEC);
        let expected_rises = (end - start) / n;
        assert_eq!(rises.len() as u64, expected_rises);
        assert_eq!(expected_rises, 249); // 1193182 / 4773 = 249.98
        for (k, &ns) in rises.iter().enumerate() {
            let k = k as u64 + 1;
            assert_eq!(ns, ns_of_tick(start + k * n));
            assert_eq!(falls[k as usize - 1], ns_of_tick(start + k * n - 1));
        }
        // The period is 4773 clocks = 4.000227 ms of virtual time.
        assert!((4_000_227..=4_000_228).contains(&(rises[1] - rises[0])));
    }

    #[test]
    fn mode2_counter_reads_like_i8253_clocksource() {
        let mut bus = Bus::new(5_000);
        bus.linux_periodic(LATCH_HZ250);
        let start = ticks_at(5_000);
        // Right after the write the counter holds N.
        assert_eq!(bus.linux_read_ch0(), LATCH_HZ250);
        for d in [1u64, 100, 4771, 4772, 4773, 4774, 10_000, 1_000_000] {
            bus.now = ns_of_tick(start + d);
            let expected = 4773 - (d % 4773);
            assert_eq!(
                u64::from(bus.linux_read_ch0()),
                expected,
                "after {d} clocks"
            );
            // Deterministic: a function of now_ns only.
            assert_eq!(u64::from(bus.pit.counter(0, bus.now)), expected);
        }
        // Never above PIT_LATCH (i8253_read's VIA check stays quiet).
        for i in 0..5000u64 {
            bus.now = 5_000 + i * 997;
            assert!(bus.linux_read_ch0() <= LATCH_HZ250);
        }
    }

    #[test]
    fn latch_holds_value_until_read() {
        let mut bus = Bus::new(0);
        bus.linux_periodic(1000);
        bus.now = ns_of_tick(10);
        bus.outb(0x00, 0x43); // latch: 990
        bus.now = ns_of_tick(20);
        bus.outb(0x00, 0x43); // ignored: a latch is pending
        let lo = bus.inb(0x40);
        bus.now = ns_of_tick(30);
        let hi = bus.inb(0x40);
        assert_eq!(u16::from_le_bytes([lo, hi]), 990);
        // Latch released: unlatched reads see the running counter.
        let lo = bus.inb(0x40);
        let hi = bus.inb(0x40);
        assert_eq!(u16::from_le_bytes([lo, hi]), 970);
        bus.outb(0x00, 0x43);
        bus.now = ns_of_tick(40);
        assert_eq!(bus.inb(0x40), (970u16 & 0xff) as u8);
        assert_eq!(bus.inb(0x40), (970u16 >> 8) as u8);
    }

    #[test]
    fn lsb_only_and_msb_only_access() {
        let mut bus = Bus::new(0);
        bus.outb(0x14, 0x43); // channel 0, LSB only, mode 2
        bus.outb(0x80, 0x40);
        bus.now = ns_of_tick(3);
        assert_eq!(bus.inb(0x40), 0x7d);
        assert_eq!(bus.inb(0x40), 0x7d, "no flip-flop in LSB-only mode");
        bus.outb(0x54, 0x43); // channel 1, LSB only, mode 2
        bus.outb(0x24, 0x43); // channel 0, MSB only, mode 2
        bus.outb(0x02, 0x40); // count 0x200
        bus.now = ns_of_tick(3 + 0x101);
        assert_eq!(bus.inb(0x40), 0x00, "0x200 - 0x101 = 0xff: MSB 0");
        bus.outb(0x00, 0x43);
        bus.now = ns_of_tick(3 + 0x200); // reloaded: 0x200
        assert_eq!(bus.inb(0x40), 0x00, "latched MSB");
        assert_eq!(bus.inb(0x40), 0x02, "latch released after one MSB read");
    }

    #[test]
    fn mode4_oneshot_like_linux_clockevent() {
        let t0 = 2_000_000;
        let mut bus = Bus::new(t0);
        bus.advance_to(t0);
        let mut pic = linux_pic(&bus);
        // pit_set_oneshot, then pit_next_event(delta = 1000).
        bus.outb(0x38, 0x43);
        assert!(bus.irq0(), "mode 4 OUT starts high");
        assert_eq!(bus.pit.next_event_ns(), None, "no count yet");
        bus.outb(0xe8, 0x40);
        assert_eq!(bus.pit.next_event_ns(), None, "half a count");
        bus.outb(0x03, 0x40);
        let start = ticks_at(t0);
        pic.update(bus.irq);
        assert!(!pic.pending());
        let fall = ns_of_tick(start + 1000);
        assert_eq!(bus.pit.next_event_ns(), Some(fall));
        bus.advance_to(fall);
        assert!(!bus.irq0());
        pic.update(bus.irq);
        assert!(!pic.pending());
        let rise = ns_of_tick(start + 1001);
        assert_eq!(bus.pit.next_event_ns(), Some(rise));
        bus.advance_to(rise);
        assert!(bus.irq0());
        pic.update(bus.irq);
        assert!(pic.pending());
        assert_eq!(pic.acknowledge(), 0x30);
        pic.write(pic::MASTER_CMD, 0x60);
        assert_eq!(bus.pit.next_event_ns(), None, "one shot");
        // The next pit_next_event restarts the count without a control word.
        bus.now = rise + 50_000;
        bus.outb(100, 0x40);
        bus.outb(0, 0x40);
        let start = ticks_at(bus.now);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(start + 100)));
    }

    #[test]
    fn mode0_oneshot_and_shutdown() {
        let mut bus = Bus::new(0);
        // pit_shutdown: mode 0, count 0 (65536).
        bus.outb(0x30, 0x43);
        assert!(!bus.irq0(), "mode 0 OUT low after the control word");
        bus.outb(0, 0x40);
        assert!(!bus.irq0(), "first byte keeps OUT low");
        bus.outb(0, 0x40);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(65536)));
        // Reprogram: mode 0, count 500 at tick 1000.
        bus.now = ns_of_tick(1000);
        bus.outb(0x30, 0x43);
        bus.outb(0xf4, 0x40);
        bus.outb(0x01, 0x40);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(1500)));
        bus.advance_to(ns_of_tick(1500) - 1);
        assert!(!bus.irq0());
        bus.advance_to(ns_of_tick(1500));
        assert!(bus.irq0());
        assert_eq!(bus.pit.next_event_ns(), None);
        // After terminal count the counter wraps and keeps counting; OUT stays high.
        bus.now = ns_of_tick(1502);
        assert_eq!(bus.linux_read_ch0(), 0xfffe);
        // Writing the first byte of a new count drops OUT immediately.
        bus.outb(0x10, 0x40);
        assert!(!bus.irq0());
        bus.outb(0x00, 0x40);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(1502 + 0x10)));
    }

    #[test]
    fn mode3_square_wave() {
        let mut bus = Bus::new(0);
        bus.outb(0x36, 0x43); // channel 0, LSB/MSB, mode 3
        bus.outb(LATCH_HZ250 as u8, 0x40);
        bus.outb((LATCH_HZ250 >> 8) as u8, 0x40);
        // Odd count: high for 2387 clocks, low for 2386.
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(2387)));
        bus.advance_to(ns_of_tick(2387));
        assert!(!bus.irq0());
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(4773)));
        // Odd count: loads N-1, decrements by two.
        assert_eq!(bus.pit.counter(0, ns_of_tick(0)), 4772);
        assert_eq!(bus.pit.counter(0, ns_of_tick(1)), 4770);
        assert_eq!(bus.pit.counter(0, ns_of_tick(2386)), 0);
        assert_eq!(bus.pit.counter(0, ns_of_tick(2387)), 4772);
        assert_eq!(bus.pit.counter(0, ns_of_tick(4772)), 2);
        // Even count: N, N-2, ..., 2 in each half.
        bus.now = 0;
        bus.outb(0x36, 0x43);
        bus.outb(100, 0x40);
        bus.outb(0, 0x40);
        assert_eq!(bus.pit.counter(0, ns_of_tick(0)), 100);
        assert_eq!(bus.pit.counter(0, ns_of_tick(49)), 2);
        assert_eq!(bus.pit.counter(0, ns_of_tick(50)), 100);
        assert!(bus.pit.out(0, ns_of_tick(49)));
        assert!(!bus.pit.out(0, ns_of_tick(50)));
        assert!(bus.pit.out(0, ns_of_tick(100)));
        // The mode 7 encoding is mode 3.
        bus.outb(0x3e, 0x43);
        bus.outb(100, 0x40);
        bus.outb(0, 0x40);
        assert!(!bus.pit.out(0, ns_of_tick(50)));
    }

    /// pit_calibrate_tsc (via pit_hpet_ptimer_calibrate_cpu): gate high and speaker off
    /// through port 0x61, channel 2 in mode 0 with CAL_LATCH, poll OUT2 in port 0x61.
    #[test]
    fn linux_pit_calibrate_tsc() {
        let t0 = 987_654_321;
        let mut bus = Bus::new(t0);
        let v = bus.inb(0x61);
        bus.outb((v & !P61_SPEAKER_DATA) | P61_GATE2, 0x61);
        bus.outb(0xb0, 0x43);
        bus.outb(CAL_LATCH as u8, 0x42);
        bus.outb((CAL_LATCH >> 8) as u8, 0x42);
        let start = ticks_at(bus.now);
        let expected = ns_of_tick(start + u64::from(CAL_LATCH));
        let step = 97; // virtual ns per loop iteration
        let mut pitcnt = 0u64;
        while bus.inb(0x61) & P61_OUT2 == 0 {
            bus.now += step;
            pitcnt += 1;
        }
        assert!(bus.now >= expected && bus.now < expected + step);
        // 11931 clocks = 9.9993 ms of virtual time.
        assert!((9_999_312..=9_999_313).contains(&(expected - ns_of_tick(start))));
        assert_eq!(pitcnt, (expected - t0).div_ceil(step));
        // OUT2 stays high; the speaker bit is off, the gate on.
        bus.now += 1_000_000;
        assert_eq!(
            bus.inb(0x61) & (P61_OUT2 | P61_SPEAKER_DATA | P61_GATE2),
            0x21
        );
    }

    /// quick_pit_calibrate: channel 2, mode 0, count 0xffff, then unlatched reads of LSB and
    /// MSB (pit_verify_msb) until the MSB changes (pit_expect_msb).
    #[test]
    fn linux_quick_pit_calibrate() {
        let t0 = 3_000_017;
        let mut bus = Bus::new(t0);
        let v = bus.inb(0x61);
        bus.outb((v & !P61_SPEAKER_DATA) | P61_GATE2, 0x61);
        bus.outb(0xb0, 0x43);
        bus.outb(0xff, 0x42);
        bus.outb(0xff, 0x42);
        let start = ticks_at(bus.now);
        let step = 450; // virtual ns per inb
        let inb = |bus: &mut Bus| {
            bus.now += step;
            bus.inb(0x42)
        };
        // pit_verify_msb(0): just a delay.
        inb(&mut bus);
        inb(&mut bus);
        for i in 0..8u8 {
            let val = 0xff - i;
            let mut count = 0;
            loop {
                inb(&mut bus); // LSB, ignored
                if inb(&mut bus) != val {
                    break;
                }
                count += 1;
            }
            assert!(count > 5, "pit_expect_msb({val:#x}) succeeds");
            // The MSB changed at the first read at or after clock 256 * (i + 1).
            let change = ns_of_tick(start + 256 * (u64::from(i) + 1));
            assert!(
                bus.now >= change && bus.now < change + 2 * step,
                "msb {val:#x}"
            );
        }
    }

    #[test]
    fn read_back_status_and_count() {
        let mut bus = Bus::new(0);
        let v = bus.inb(0x61);
        bus.outb(v | P61_GATE2, 0x61);
        bus.outb(0xb0, 0x43);
        // Status only: OUT low, null count, LSB/MSB, mode 0, binary.
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), STATUS_NULL_COUNT | 0x30);
        bus.now = 10_000;
        bus.outb(100, 0x42);
        bus.outb(0, 0x42);
        let start = ticks_at(bus.now);
        // Same clock edge: the count is not loaded yet.
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), STATUS_NULL_COUNT | 0x30);
        // Status and count of channels 0 and 2 at once; status first.
        bus.now = ns_of_tick(start + 40);
        bus.outb(0xc0 | RB_CHANNEL0 | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), 0x30);
        bus.now = ns_of_tick(start + 50);
        assert_eq!(bus.inb(0x42), 60);
        assert_eq!(bus.inb(0x42), 0);
        // Channel 0: power-on mode 3, OUT high.
        assert_eq!(bus.inb(0x40), STATUS_OUT | 0x36);
        let lo = bus.inb(0x40);
        let hi = bus.inb(0x40);
        assert_eq!(
            u16::from_le_bytes([lo, hi]),
            Pit::new().counter(0, ns_of_tick(start + 40))
        );
        // After terminal count: OUT high.
        bus.now = ns_of_tick(start + 100);
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), STATUS_OUT | 0x30);
        // A pending status latch is not overwritten.
        bus.outb(0xb0, 0x43);
        bus.outb(200, 0x42);
        bus.outb(0, 0x42);
        let start = ticks_at(bus.now);
        bus.now = ns_of_tick(start + 10);
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        bus.now = ns_of_tick(start + 300);
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), 0x30, "OUT low when first latched");
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        assert_eq!(bus.inb(0x42), STATUS_OUT | 0x30, "a new latch once read");
        // A control word drops pending latches.
        bus.outb(0xc0 | (RB_CHANNEL0 << 2), 0x43);
        bus.outb(0xb0, 0x43);
        bus.outb(0xc0 | RB_NO_COUNT | (RB_CHANNEL0 << 2), 0x43);
        // Not the old latch (OUT high, count loaded): mode 0 OUT low, null count.
        assert_eq!(bus.inb(0x42), STATUS_NULL_COUNT | 0x30);
    }

    #[test]
    fn gate_pauses_mode0_and_resets_mode2() {
        let mut bus = Bus::new(0);
        bus.outb(P61_GATE2, 0x61);
        bus.outb(0xb0, 0x43);
        bus.outb(100, 0x42);
        bus.outb(0, 0x42);
        bus.now = ns_of_tick(30);
        bus.outb(0, 0x61); // gate low: counting stops at 70
        bus.now = ns_of_tick(80);
        assert_eq!(bus.pit.counter(2, bus.now), 70);
        assert_eq!(bus.inb(0x61) & P61_OUT2, 0);
        bus.outb(P61_GATE2, 0x61);
        // 70 more clocks from clock 80.
        assert!(!bus.pit.out(2, ns_of_tick(149)));
        assert!(bus.pit.out(2, ns_of_tick(150)));
        // Mode 2: gate low forces OUT high and holds the count; the rising edge reloads.
        bus.now = ns_of_tick(200);
        bus.outb(0xb4, 0x43);
        bus.outb(10, 0x42);
        bus.outb(0, 0x42);
        assert!(!bus.pit.out(2, ns_of_tick(209)));
        bus.now = ns_of_tick(209);
        bus.outb(0, 0x61);
        assert!(bus.pit.out(2, bus.now));
        assert_eq!(bus.pit.counter(2, ns_of_tick(300)), 1);
        bus.now = ns_of_tick(300);
        bus.outb(P61_GATE2, 0x61);
        assert_eq!(bus.pit.counter(2, ns_of_tick(300)), 10);
        assert_eq!(bus.pit.counter(2, ns_of_tick(303)), 7);
        assert!(!bus.pit.out(2, ns_of_tick(309)));
    }

    #[test]
    fn modes_1_and_5_trigger_on_gate() {
        let mut bus = Bus::new(0);
        bus.outb(0x92, 0x43); // channel 2, LSB only, mode 1
        bus.outb(10, 0x42);
        bus.now = ns_of_tick(5);
        bus.outb(P61_GATE2, 0x61);
        assert!(!bus.pit.out(2, ns_of_tick(5)));
        assert!(!bus.pit.out(2, ns_of_tick(14)));
        assert!(bus.pit.out(2, ns_of_tick(15)));
        // Retrigger.
        bus.now = ns_of_tick(20);
        bus.outb(0, 0x61);
        bus.outb(P61_GATE2, 0x61);
        assert!(!bus.pit.out(2, ns_of_tick(29)));
        assert!(bus.pit.out(2, ns_of_tick(30)));
        // Mode 5: one-clock low pulse N clocks after the trigger.
        bus.now = ns_of_tick(40);
        bus.outb(0, 0x61);
        bus.outb(0x9a, 0x43);
        bus.outb(10, 0x42);
        assert!(bus.pit.out(2, ns_of_tick(60)), "armed, not triggered");
        bus.now = ns_of_tick(100);
        bus.outb(P61_GATE2, 0x61);
        assert!(bus.pit.out(2, ns_of_tick(109)));
        assert!(!bus.pit.out(2, ns_of_tick(110)));
        assert!(bus.pit.out(2, ns_of_tick(111)));
    }

    #[test]
    fn bcd_counting() {
        let mut bus = Bus::new(0);
        bus.outb(0x31, 0x43); // channel 0, LSB/MSB, mode 0, BCD
        bus.outb(0x00, 0x40);
        bus.outb(0x10, 0x40); // 1000 decimal
        bus.now = ns_of_tick(1);
        assert_eq!(bus.linux_read_ch0(), 0x0999);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(1000)));
        // Wraps to 9999 after terminal count.
        bus.now = ns_of_tick(1001);
        assert_eq!(bus.linux_read_ch0(), 0x9999);
        // Count 0 is 10000.
        bus.outb(0x31, 0x43);
        bus.outb(0, 0x40);
        bus.outb(0, 0x40);
        assert_eq!(bus.pit.next_event_ns(), Some(ns_of_tick(1001 + 10_000)));
    }

    #[test]
    fn port61_bits() {
        let mut bus = Bus::new(0);
        assert_eq!(bus.inb(0x61), P61_OUT2);
        bus.outb(0xff, 0x61);
        assert_eq!(bus.inb(0x61) & !P61_OUT2 & !P61_REFRESH, P61_WRITABLE);
        // Refresh toggles every 15.085 us, deterministically.
        let mut bits = Vec::new();
        for i in 0..6 {
            bus.now = i * REFRESH_TOGGLE_NS + 7;
            let a = bus.inb(0x61) & P61_REFRESH;
            let b = bus.inb(0x61) & P61_REFRESH;
            assert_eq!(a, b);
            bits.push(a);
        }
        assert_eq!(bits, [0, 0x10, 0, 0x10, 0, 0x10]);
        // NMI status bits are never set.
        assert_eq!(bus.inb(0x61) & (P61_IOCHK_STATUS | P61_SERR_STATUS), 0);
    }

    #[test]
    fn shared_wiring_of_port61() {
        let (mut ports, mut port61) = Pit::new().into_shared();
        let mut irq = IrqLines::default();
        let mut requests = Vec::new();
        let mut ctx = DeviceCtx {
            now_ns: 1000,
            irq: &mut irq,
            requests: &mut requests,
        };
        port61.write(0, 1, u32::from(P61_GATE2), &mut ctx);
        ports.write(REG_CONTROL, 1, 0xb0, &mut ctx);
        ports.write(REG_CHANNEL2, 1, 5, &mut ctx);
        ports.write(REG_CHANNEL2, 1, 0, &mut ctx);
        assert_eq!(port61.read(0, 1, &mut ctx) as u8 & P61_OUT2, 0);
        ctx.now_ns = ns_of_tick(ticks_at(1000) + 5);
        assert_eq!(port61.read(0, 1, &mut ctx) as u8 & P61_OUT2, P61_OUT2);
        // Wider accesses split into bytes: 0x61 then 0x62 (not decoded here).
        assert_eq!(port61.read(0, 2, &mut ctx) >> 8, 0xff);
        // 0x42 then 0x43 (write only).
        ports.write(REG_CONTROL, 1, 0xb0, &mut ctx);
        ports.write(REG_CHANNEL2, 1, 0x34, &mut ctx);
        ports.write(REG_CHANNEL2, 1, 0x12, &mut ctx);
        assert_eq!(ports.read(REG_CHANNEL2, 2, &mut ctx), 0xff34);
        ports.advance(&mut ctx);
        assert!(ports.next_event_ns().is_some());
        assert!(ctx.irq.get(IRQ_TIMER));
    }

    #[test]
    fn control_port_reads_and_unknown_offsets() {
        let mut bus = Bus::new(0);
        assert_eq!(bus.inb(0x43), CONTROL_READ_VALUE);
        let before = bus.pit.clone();
        let mut ctx = bus.ctx();
        let mut pit = before.clone();
        pit.write(7, 1, 0x34, &mut ctx);
        assert_eq!(pit.read(9, 1, &mut ctx), 0xff);
        assert_eq!(pit, before);
    }

    /// Linux's init_8259A with IRQ0 unmasked, the lines sampled before it.
    fn linux_pic(bus: &Bus) -> PicPair {
        let mut p = PicPair::new();
        p.update(bus.irq);
        for (port, value) in [
            (pic::MASTER_DATA, 0xff),
            (pic::MASTER_CMD, 0x11),
            (pic::MASTER_DATA, 0x30),
            (pic::MASTER_DATA, 0x04),
            (pic::MASTER_DATA, 0x01),
            (pic::SLAVE_CMD, 0x11),
            (pic::SLAVE_DATA, 0x38),
            (pic::SLAVE_DATA, 0x02),
            (pic::SLAVE_DATA, 0x01),
            (pic::MASTER_DATA, 0xfa),
            (pic::SLAVE_DATA, 0xff),
        ] {
            p.write(port, value);
        }
        p
    }

    /// The machine loop: advance to each PIT event, sample the lines, take interrupts.
    #[test]
    fn periodic_irq0_through_the_pic() {
        let mut bus = Bus::new(0);
        bus.advance_to(0);
        let mut pic = linux_pic(&bus);
        bus.linux_periodic(LATCH_HZ250);
        pic.update(bus.irq);
        let mut taken = Vec::new();
        while taken.len() < 10 {
            let Some(event) = bus.pit.next_event_ns() else {
                panic!("periodic timer stopped");
            };
            bus.advance_to(event);
            pic.update(bus.irq);
            if pic.pending() {
                assert_eq!(pic.acknowledge(), 0x30);
                taken.push(bus.now);
                // mask_and_ack_8259A: specific EOI.
                pic.write(pic::MASTER_CMD, 0x60);
            }
        }
        for (k, &ns) in taken.iter().enumerate() {
            assert_eq!(ns, ns_of_tick((k as u64 + 1) * u64::from(LATCH_HZ250)));
        }
    }
}
