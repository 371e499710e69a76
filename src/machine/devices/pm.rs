//! A minimal ACPI fixed-hardware power-management block: PM1a event and control registers
//! and the PM timer, just enough for Linux's ACPI (poweroff through S5, the `acpi_pm`
//! clocksource and TSC calibration against the PM timer).
//!
//! Port convention: base 0x600 ([`PM_BASE`]), 12 ports, declared in the FADT
//! (`machine/acpi.rs`) as
//! * PM1a_EVT_BLK = 0x600, length 4: PM1_STS at offset 0 ([`OFFSET_PM1_STS`], 16-bit,
//!   write-1-to-clear) and PM1_EN at offset 2 ([`OFFSET_PM1_EN`]);
//! * PM1a_CNT_BLK = 0x604, length 2 ([`OFFSET_PM1_CNT`]);
//! * PM_TMR_BLK = 0x608, length 4 ([`OFFSET_PM_TMR`]), a 24-bit timer (FADT flag TMR_VAL_EXT
//!   clear); offsets 6 and 7 are unused.
//! * SCI_INT = 9 ([`SCI_IRQ`]), SMI_CMD = 0 (no SMM: the block is always in ACPI mode, so
//!   PM1_CNT.SCI_EN reads 1 and cannot be cleared), no PM1b blocks, no GPE blocks.
//!
//! Sleep: writing PM1_CNT with SLP_EN (bit 13) set and SLP_TYP (bits 12:10) equal to
//! [`S5_SLP_TYP`] = 0 requests [`MachineRequest::PowerOff`]. The DSDT must declare
//! `Name (_S5, Package () { 0, 0, 0, 0 })` to match (QEMU's PIIX4 uses the same value). Other
//! sleep types are ignored (SLP_EN reads 0, nothing happens): S1..S4 are not supported.
//!
//! PM timer: `floor(now_ns * 3579545 / 1e9) mod 2^24`, so it is monotonic in virtual time and
//! wraps every ~4.69 s. PM1_STS.TMR_STS is set whenever the timer's bit 23 changes; with
//! PM1_EN.TMR_EN set it asserts the SCI line (level, high = asserted) through
//! [`PortDevice::next_event_ns`]/[`PortDevice::advance`].
//!
//! Left out: every other status source (power/sleep button, RTC alarm, bus master, global
//! lock, wake), PM1_CNT.GBL_RLS (reads 0, no SMI), PM2 and GPE registers, the 32-bit timer.

use super::{DeviceCtx, MachineRequest, PortDevice};

/// Base port of the block.
pub const PM_BASE: u16 = 0x600;
/// Number of ports decoded.
pub const NUM_PORTS: u16 = 12;
/// PM1a_EVT_BLK: status register (16-bit).
pub const OFFSET_PM1_STS: u16 = 0;
/// PM1a_EVT_BLK: enable register (16-bit).
pub const OFFSET_PM1_EN: u16 = 2;
/// PM1a_CNT_BLK: control register (16-bit).
pub const OFFSET_PM1_CNT: u16 = 4;
/// PM_TMR_BLK: timer (32-bit, 24 bits used).
pub const OFFSET_PM_TMR: u16 = 8;
/// FADT lengths of the three blocks.
pub const PM1_EVT_LEN: u16 = 4;
pub const PM1_CNT_LEN: u16 = 2;
pub const PM_TMR_LEN: u16 = 4;
/// The SCI's ISA line.
pub const SCI_IRQ: u8 = 9;

/// PM1_STS/PM1_EN: timer carry (bit 23 changed).
pub const PM1_TMR: u16 = 1 << 0;
/// PM1_STS: bus master status.
pub const PM1_BM_STS: u16 = 1 << 4;
/// PM1_STS/PM1_EN: global lock release.
pub const PM1_GBL: u16 = 1 << 5;
/// PM1_STS/PM1_EN: power button.
pub const PM1_PWRBTN: u16 = 1 << 8;
/// PM1_STS/PM1_EN: sleep button.
pub const PM1_SLPBTN: u16 = 1 << 9;
/// PM1_STS/PM1_EN: RTC alarm.
pub const PM1_RTC: u16 = 1 << 10;
/// PM1_STS: wake status.
pub const PM1_WAK_STS: u16 = 1 << 15;
/// The PM1_EN bits that exist.
pub const PM1_EN_MASK: u16 = PM1_TMR | PM1_GBL | PM1_PWRBTN | PM1_SLPBTN | PM1_RTC;

/// PM1_CNT: SCI (rather than SMI) delivery of power-management events.
pub const CNT_SCI_EN: u16 = 1 << 0;
/// PM1_CNT: bus master wakes from C3.
pub const CNT_BM_RLD: u16 = 1 << 1;
/// PM1_CNT: global lock release (write-only, ignored).
pub const CNT_GBL_RLS: u16 = 1 << 2;
/// PM1_CNT: sleep type field.
pub const CNT_SLP_TYP_SHIFT: u16 = 10;
pub const CNT_SLP_TYP_MASK: u16 = 0x7 << CNT_SLP_TYP_SHIFT;
/// PM1_CNT: sleep enable (write-only).
pub const CNT_SLP_EN: u16 = 1 << 13;
/// The PM1_CNT bits stored and read back (besides SCI_EN, always 1).
pub const CNT_STORED: u16 = CNT_BM_RLD | CNT_SLP_TYP_MASK;
/// The SLP_TYP value of S5 (soft off), as the DSDT's `_S5` must declare it.
pub const S5_SLP_TYP: u16 = 0;

/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The timer's width.
pub const PM_TIMER_BITS: u32 = 24;
pub const PM_TIMER_MASK: u32 = (1 << PM_TIMER_BITS) - 1;

const NS_PER_SEC: u64 = 1_000_000_000;

/// The PM1a event/control registers and the PM timer; see the module documentation.
#[derive(Debug, Default)]
pub struct Pm {
    /// PM1_STS bits other than TMR_STS (none can be set by this model; kept for W1C).
    status: u16,
    tmr_sts: bool,
    enable: u16,
    /// PM1_CNT bits in [`CNT_STORED`].
    control: u16,
    /// The virtual time TMR_STS is up to date with.
    synced_ns: u64,
}

impl Pm {
    pub fn new() -> Self {
        Self::default()
    }

    /// The timer's ticks since virtual time 0 (not wrapped).
    fn ticks(now_ns: u64) -> u64 {
        (u128::from(now_ns) * u128::from(PM_TIMER_HZ) / u128::from(NS_PER_SEC)) as u64
    }

    /// The PM timer's value at virtual time `now_ns`.
    pub fn timer(now_ns: u64) -> u32 {
        (Self::ticks(now_ns) as u32) & PM_TIMER_MASK
    }

    fn sync(&mut self, now_ns: u64) {
        if now_ns <= self.synced_ns {
            return;
        }
        if Self::ticks(now_ns) >> (PM_TIMER_BITS - 1)
            > Self::ticks(self.synced_ns) >> (PM_TIMER_BITS - 1)
        {
            self.tmr_sts = true;
        }
        self.synced_ns = now_ns;
    }

    fn pm1_status(&self) -> u16 {
        self.status | if self.tmr_sts { PM1_TMR } else { 0 }
    }

    /// The SCI level.
    pub fn sci_level(&self) -> bool {
        self.pm1_status() & self.enable & PM1_EN_MASK != 0
    }

    fn pm1_control(&self) -> u16 {
        CNT_SCI_EN | self.control
    }

    fn read_byte(&self, offset: u16, now_ns: u64) -> u8 {
        let word = |v: u16, hi: bool| v.to_le_bytes()[usize::from(hi)];
        match offset {
            0 | 1 => word(self.pm1_status(), offset == 1),
            2 | 3 => word(self.enable, offset == 3),
            4 | 5 => word(self.pm1_control(), offset == 5),
            8..=11 => Self::timer(now_ns).to_le_bytes()[usize::from(offset - OFFSET_PM_TMR)],
            _ => 0xff,
        }
    }

    /// Returns true if the write set SLP_EN.
    fn write_byte(&mut self, offset: u16, value: u8) -> bool {
        let set_byte = |reg: &mut u16, hi: bool, value: u8| {
            let mut b = reg.to_le_bytes();
            b[usize::from(hi)] = value;
            *reg = u16::from_le_bytes(b);
        };
        match offset {
            0 | 1 => {
                let mut clear = 0u16;
                set_byte(&mut clear, offset == 1, value);
                self.status &= !clear;
                if clear & PM1_TMR != 0 {
                    self.tmr_sts = false;
                }
            }
            2 | 3 => {
                set_byte(&mut self.enable, offset == 3, value);
                self.enable &= PM1_EN_MASK;
            }
            4 | 5 => {
                let mut written = self.control;
                set_byte(&mut written, offset == 5, value);
                self.control = written & CNT_STORED;
                return offset == 5 && written & CNT_SLP_EN != 0;
            }
            // Timer and unused ports are read-only.
            _ => {}
        }
        false
    }

    fn sleep(&mut self, ctx: &mut DeviceCtx) {
        let slp_typ = (self.control & CNT_SLP_TYP_MASK) >> CNT_SLP_TYP_SHIFT;
        if slp_typ == S5_SLP_TYP {
            ctx.requests.push(MachineRequest::PowerOff);
        } else {
            log::debug!("pm: sleep type {slp_typ} not supported, ignored");
        }
    }

    fn drive_irq(&self, ctx: &mut DeviceCtx) {
        ctx.irq.set(SCI_IRQ, self.sci_level());
    }
}

impl PortDevice for Pm {
    fn read(&mut self, offset: u16, size: u8, ctx: &mut DeviceCtx) -> u32 {
        self.sync(ctx.now_ns);
        let mut value = 0u32;
        for i in 0..size.min(4) {
            let byte = self.read_byte(offset.wrapping_add(u16::from(i)), ctx.now_ns);
            value |= u32::from(byte) << (8 * u32::from(i));
        }
        self.drive_irq(ctx);
        value
    }

    fn write(&mut self, offset: u16, size: u8, value: u32, ctx: &mut DeviceCtx) {
        self.sync(ctx.now_ns);
        let mut sleep = false;
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            // i < 4, so the cast is exact.
            sleep |= self.write_byte(offset.wrapping_add(i as u16), *byte);
        }
        if sleep {
            self.sleep(ctx);
        }
        self.drive_irq(ctx);
    }

    fn next_event_ns(&self) -> Option<u64> {
        if self.enable & PM1_TMR == 0 || self.tmr_sts {
            return None;
        }
        // The next change of bit 23: the next multiple of 2^23 ticks.
        let half = 1u128 << (PM_TIMER_BITS - 1);
        let k = u128::from(Self::ticks(self.synced_ns)) / half + 1;
        let ns = (k * half * u128::from(NS_PER_SEC)).div_ceil(u128::from(PM_TIMER_HZ));
        Some(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn advance(&mut self, ctx: &mut DeviceCtx) {
        self.sync(ctx.now_ns);
        self.drive_irq(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::super::IrqLines;
    use super::*;

    struct Bus {
        pm: Pm,
        now_ns: u64,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
    }

    impl Bus {
        fn new() -> Self {
            Bus {
                pm: Pm::new(),
                now_ns: 0,
                irq: IrqLines::default(),
                requests: Vec::new(),
            }
        }
        fn io_in(&mut self, port: u16, size: u8) -> u32 {
            let mut ctx = DeviceCtx {
                now_ns: self.now_ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.pm.read(port - PM_BASE, size, &mut ctx)
        }
        fn io_out(&mut self, port: u16, size: u8, value: u32) {
            let mut ctx = DeviceCtx {
                now_ns: self.now_ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.pm.write(port - PM_BASE, size, value, &mut ctx);
        }
        fn advance_to(&mut self, ns: u64) {
            self.now_ns = ns;
            let mut ctx = DeviceCtx {
                now_ns: ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.pm.advance(&mut ctx);
        }
    }

    #[test]
    fn pm_timer_rate_and_wrap() {
        let mut b = Bus::new();
        assert_eq!(b.io_in(0x608, 4), 0);
        b.now_ns = 1_000_000_000;
        assert_eq!(b.io_in(0x608, 4), 3_579_545);
        b.now_ns = 1_000_000; // 1 ms
        assert_eq!(b.io_in(0x608, 4), 3_579);
        // 2^24 ticks = 4.687 s: wraps to a small value, upper byte always 0.
        let wrap_ns = ((1u64 << 24) * NS_PER_SEC).div_ceil(PM_TIMER_HZ);
        b.now_ns = wrap_ns - 1;
        assert_eq!(b.io_in(0x608, 4), PM_TIMER_MASK);
        b.now_ns = wrap_ns;
        assert_eq!(b.io_in(0x608, 4), 0);
        assert_eq!(b.io_in(0x60b, 1), 0);
    }

    /// Linux's `acpi_pm_read_verified`/TSC calibration read the timer repeatedly: it never
    /// goes backwards (modulo 2^24) and advances at 3.579545 MHz.
    #[test]
    fn pm_timer_monotonic() {
        let mut b = Bus::new();
        let mut last = b.io_in(0x608, 4);
        let mut elapsed_ticks = 0u64;
        for step in 0..20_000u64 {
            b.now_ns += 1_000 + step % 7 * 333;
            let v = b.io_in(0x608, 4);
            let delta = v.wrapping_sub(last) & PM_TIMER_MASK;
            assert!(delta < 1 << 23, "went backwards at {}", b.now_ns);
            elapsed_ticks += u64::from(delta);
            last = v;
        }
        assert_eq!(elapsed_ticks, Pm::ticks(b.now_ns));
        let expected = b.now_ns as f64 * 3.579545e-3;
        assert!((elapsed_ticks as f64 - expected).abs() < 1.0);
    }

    /// `acpi_hw_legacy_sleep(ACPI_STATE_S5)`: clear WAK_STS, read PM1_CNT, write SLP_TYP, then
    /// SLP_TYP | SLP_EN.
    #[test]
    fn s5_power_off() {
        let mut b = Bus::new();
        b.io_out(0x600, 2, u32::from(PM1_WAK_STS));
        let cnt = b.io_in(0x604, 2) as u16;
        assert_eq!(cnt & CNT_SCI_EN, CNT_SCI_EN);
        let cnt = (cnt & !(CNT_SLP_TYP_MASK | CNT_SLP_EN)) | (S5_SLP_TYP << CNT_SLP_TYP_SHIFT);
        b.io_out(0x604, 2, u32::from(cnt));
        assert!(b.requests.is_empty());
        b.io_out(0x604, 2, u32::from(cnt | CNT_SLP_EN));
        assert_eq!(b.requests, vec![MachineRequest::PowerOff]);
        assert_eq!(b.io_in(0x604, 2) as u16 & CNT_SLP_EN, 0, "SLP_EN reads 0");
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let mut b = Bus::new();
        for typ in 1..8u16 {
            b.io_out(0x604, 2, u32::from(CNT_SLP_EN | typ << CNT_SLP_TYP_SHIFT));
        }
        assert!(b.requests.is_empty());
        assert_eq!(
            b.io_in(0x604, 2) as u16,
            CNT_SCI_EN | (7 << CNT_SLP_TYP_SHIFT)
        );
        // SCI_EN cannot be cleared; a byte write to the high half alone also sleeps.
        b.io_out(0x604, 1, 0);
        assert_eq!(b.io_in(0x604, 1), u32::from(CNT_SCI_EN));
        b.io_out(
            0x605,
            1,
            u32::from((CNT_SLP_EN | S5_SLP_TYP << CNT_SLP_TYP_SHIFT) >> 8),
        );
        assert_eq!(b.requests, vec![MachineRequest::PowerOff]);
    }

    /// What Linux 6.1's ACPI core does to the block from boot to `poweroff -f` (as traced on
    /// the Debian guest): the global lock's GBL_EN must read back (else ACPICA disables the
    /// lock), rtc-cmos toggles RTC_EN, no enable bit raises the SCI without a status, and
    /// S5 is clear-WAK_STS, clear-all-status, read PM1_CNT, write SLP_TYP, write SLP_EN.
    #[test]
    fn linux_acpi_sequence() {
        let mut b = Bus::new();
        for _ in 0..5 {
            // acpi_ev_init / acpi_hw_disable_all_gpes: read-modify-write PM1_EN.
            let en = b.io_in(0x602, 2);
            b.io_out(0x602, 2, en);
        }
        assert_eq!(b.io_in(0x602, 2), 0);
        b.io_out(0x600, 2, u32::from(PM1_GBL));
        let en = b.io_in(0x602, 2) as u16;
        b.io_out(0x602, 2, u32::from(en | PM1_GBL));
        assert_eq!(b.io_in(0x602, 2) as u16, PM1_GBL, "GBL_EN reads back");
        b.io_out(0x600, 2, u32::from(PM1_RTC));
        b.io_out(0x602, 2, u32::from(PM1_GBL | PM1_RTC));
        assert_eq!(b.io_in(0x602, 2) as u16, PM1_GBL | PM1_RTC);
        assert!(!b.irq.get(SCI_IRQ), "no status, no SCI");
        b.io_out(0x602, 2, u32::from(PM1_GBL));
        // The acpi_pm clocksource's monotonicity check: dword reads, the top byte 0.
        b.now_ns = 1_234_567;
        let t0 = b.io_in(0x608, 4);
        b.now_ns += 1_000;
        assert_eq!(b.io_in(0x608, 4), t0 + 3);
        // acpi_hw_legacy_sleep(S5).
        b.io_out(0x600, 2, u32::from(PM1_WAK_STS));
        b.io_out(0x600, 2, 0xc731);
        assert_eq!(b.io_in(0x600, 2), 0);
        let cnt = b.io_in(0x604, 2);
        assert_eq!(cnt, u32::from(CNT_SCI_EN));
        b.io_out(0x604, 2, cnt | u32::from(S5_SLP_TYP << CNT_SLP_TYP_SHIFT));
        assert!(b.requests.is_empty());
        b.io_out(
            0x604,
            2,
            cnt | u32::from(S5_SLP_TYP << CNT_SLP_TYP_SHIFT | CNT_SLP_EN),
        );
        assert_eq!(b.requests, vec![MachineRequest::PowerOff]);
    }

    #[test]
    fn timer_carry_status_and_sci() {
        let mut b = Bus::new();
        assert_eq!(b.pm.next_event_ns(), None);
        b.io_out(0x602, 2, 0xffff);
        assert_eq!(b.io_in(0x602, 2) as u16, PM1_EN_MASK);
        b.io_out(0x602, 2, u32::from(PM1_TMR));
        let carry_ns = ((1u64 << 23) * NS_PER_SEC).div_ceil(PM_TIMER_HZ);
        assert_eq!(b.pm.next_event_ns(), Some(carry_ns));
        b.advance_to(carry_ns - 1);
        assert!(!b.irq.get(SCI_IRQ));
        b.advance_to(carry_ns);
        assert!(b.irq.get(SCI_IRQ));
        assert_eq!(b.io_in(0x600, 2) as u16, PM1_TMR);
        assert_eq!(b.pm.next_event_ns(), None);
        // Write 1 to clear.
        b.io_out(0x600, 2, u32::from(PM1_TMR));
        assert!(!b.irq.get(SCI_IRQ));
        assert_eq!(b.io_in(0x600, 2), 0);
        let second_carry_ns = ((1u64 << 24) * NS_PER_SEC).div_ceil(PM_TIMER_HZ);
        assert_eq!(b.pm.next_event_ns(), Some(second_carry_ns));
        // Without TMR_EN the status still sets, but no SCI.
        b.io_out(0x602, 2, 0);
        b.advance_to(3 * carry_ns);
        assert!(!b.irq.get(SCI_IRQ));
        assert_eq!(b.io_in(0x600, 2) as u16, PM1_TMR);
        assert_eq!(b.io_in(0x606, 2), 0xffff);
    }
}
