//! The MC146818 real-time clock and its CMOS RAM (the PC's ports 0x70/0x71, IRQ8).
//!
//! Port convention: base 0x70; offset [`OFFSET_INDEX`] = 0 selects a register (bit 7 is the
//! PC's NMI-disable bit: kept, see [`Rtc::nmi_disabled`], otherwise ignored), offset
//! [`OFFSET_DATA`] = 1 reads/writes it. Wider accesses are split into byte accesses.
//!
//! Deterministic time: the clock reads `start_unix_secs + now_ns / 1e9` (UTC), where the start
//! is a constructor parameter ([`DEFAULT_START_UNIX_SECS`] is 2024-01-01 00:00:00) and `now_ns`
//! the machine's virtual time; seconds tick at whole virtual seconds. A guest write to a time
//! register shifts this offset (so the written value holds and counts on from there).
//!
//! Emulated, as Linux's `mc146818_get_time`/`_set_time` and rtc-cmos use it:
//! * Seconds, minutes, hours, day of week (1 = Sunday, computed from the date), day of month,
//!   month, year (two digits) and the century byte 0x32, in BCD or binary (register B DM bit),
//!   hours in 24- or 12-hour form (bit 7 = PM).
//! * Register A: UIP is set during the last [`UIP_WINDOW_NS`] (244 µs) of each virtual second
//!   while the clock runs; divider bits stored, rate select drives the periodic interrupt.
//! * Register B: SET freezes the clock (and clears UIE); clearing SET resumes from the written
//!   time at the next whole virtual second. PIE/AIE/UIE enable the interrupts; SQWE and DSE are
//!   stored only.
//! * Register C: PF at every periodic-rate boundary, UF at every second update, AF when the
//!   alarm registers match (0xC0..=0xFF = don't care), IRQF when any enabled one is set; a
//!   read returns and clears them. IRQ8's level is IRQF. Flags are computed from virtual time
//!   on every access; [`PortDevice::next_event_ns`]/[`PortDevice::advance`] raise the line on
//!   time when an interrupt is enabled.
//! * Register D: VRT = 1 (valid RAM and time), bit 6 = 0 as Linux checks.
//! * CMOS RAM 0x0E..=0x7F, with memory sizes written at construction: 0x15/0x16 base memory
//!   (640 KiB), 0x17/0x18 and 0x30/0x31 extended memory above 1 MiB in KiB (at most 0xFFFF),
//!   0x34/0x35 memory between 16 MiB and 4 GiB in 64 KiB units, 0x5B..=0x5D memory above 4 GiB in
//!   64 KiB units, and the standard checksum of 0x10..=0x2D at 0x2E/0x2F.
//!
//! Left out: the divider reset/stop states (the clock always runs), daylight-saving switching,
//! the square-wave output, the reserved/invalid register bits, preserving invalid dates (a
//! written day beyond the month's end normalises into the next month), the writable day of
//! week (ignored: always computed), the extended CMOS bank (ports 0x72/0x73).

use super::{DeviceCtx, PortDevice};

/// Offset of the index port (0x70).
pub const OFFSET_INDEX: u16 = 0;
/// Offset of the data port (0x71).
pub const OFFSET_DATA: u16 = 1;
/// Index port: the NMI-disable bit.
pub const INDEX_NMI_DISABLE: u8 = 0x80;
/// Index port: the register number.
pub const INDEX_MASK: u8 = 0x7f;

/// The PC's RTC base port and IRQ.
pub const RTC_BASE: u16 = 0x70;
pub const RTC_IRQ: u8 = 8;

pub const REG_SECONDS: u8 = 0x00;
pub const REG_SECONDS_ALARM: u8 = 0x01;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_MINUTES_ALARM: u8 = 0x03;
pub const REG_HOURS: u8 = 0x04;
pub const REG_HOURS_ALARM: u8 = 0x05;
pub const REG_DAY_OF_WEEK: u8 = 0x06;
pub const REG_DAY_OF_MONTH: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_A: u8 = 0x0a;
pub const REG_B: u8 = 0x0b;
pub const REG_C: u8 = 0x0c;
pub const REG_D: u8 = 0x0d;
/// The century byte (as the ACPI FADT names it on a PC).
pub const REG_CENTURY: u8 = 0x32;

/// Register A: update in progress (read-only).
pub const A_UIP: u8 = 0x80;
/// Register A: divider control.
pub const A_DV_MASK: u8 = 0x70;
/// Register A: divider for a 32.768 kHz time base (normal operation).
pub const A_DV_32KHZ: u8 = 0x20;
/// Register A: periodic rate select.
pub const A_RS_MASK: u8 = 0x0f;
/// Register A after reset: 32.768 kHz time base, 1024 Hz periodic rate.
pub const A_DEFAULT: u8 = A_DV_32KHZ | 0x06;

/// Register B: halt updates so the time can be set.
pub const B_SET: u8 = 0x80;
/// Register B: periodic interrupt enable.
pub const B_PIE: u8 = 0x40;
/// Register B: alarm interrupt enable.
pub const B_AIE: u8 = 0x20;
/// Register B: update-ended interrupt enable.
pub const B_UIE: u8 = 0x10;
/// Register B: square-wave enable (stored only).
pub const B_SQWE: u8 = 0x08;
/// Register B: data mode binary (else BCD).
pub const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (else 12-hour).
pub const B_24H: u8 = 0x02;
/// Register B: daylight saving enable (stored only).
pub const B_DSE: u8 = 0x01;
/// Register B after reset: BCD, 24-hour.
pub const B_DEFAULT: u8 = B_24H;

/// Register C: interrupt request flag.
pub const C_IRQF: u8 = 0x80;
/// Register C: periodic interrupt flag.
pub const C_PF: u8 = 0x40;
/// Register C: alarm flag.
pub const C_AF: u8 = 0x20;
/// Register C: update-ended flag.
pub const C_UF: u8 = 0x10;

/// Register D: valid RAM and time.
pub const D_VRT: u8 = 0x80;

/// Hours register in 12-hour mode: PM.
pub const HOURS_PM: u8 = 0x80;
/// Alarm registers: a value with both top bits set matches anything.
pub const ALARM_DONT_CARE: u8 = 0xc0;

/// CMOS: base memory in KiB (low, high byte).
pub const CMOS_BASE_MEM_LO: u8 = 0x15;
pub const CMOS_BASE_MEM_HI: u8 = 0x16;
/// CMOS: extended memory above 1 MiB in KiB (low, high byte).
pub const CMOS_EXT_MEM_LO: u8 = 0x17;
pub const CMOS_EXT_MEM_HI: u8 = 0x18;
/// CMOS: extended memory above 1 MiB in KiB, second copy (low, high byte).
pub const CMOS_EXT_MEM2_LO: u8 = 0x30;
pub const CMOS_EXT_MEM2_HI: u8 = 0x31;
/// CMOS: memory between 16 MiB and 4 GiB in 64 KiB units (low, high byte).
pub const CMOS_MEM_ABOVE_16M_LO: u8 = 0x34;
pub const CMOS_MEM_ABOVE_16M_HI: u8 = 0x35;
/// CMOS: memory above 4 GiB in 64 KiB units (3 bytes, little-endian).
pub const CMOS_MEM_ABOVE_4G: u8 = 0x5b;
/// CMOS: checksum of 0x10..=0x2D (high, low byte).
pub const CMOS_CHECKSUM_HI: u8 = 0x2e;
pub const CMOS_CHECKSUM_LO: u8 = 0x2f;
/// CMOS: first and last byte covered by the checksum.
pub const CMOS_CHECKSUM_FIRST: u8 = 0x10;
pub const CMOS_CHECKSUM_LAST: u8 = 0x2d;
/// Size of the CMOS (registers and RAM).
pub const CMOS_SIZE: usize = 128;

/// Base memory reported, in KiB.
pub const BASE_MEMORY_KIB: u16 = 640;
/// 2024-01-01 00:00:00 UTC.
pub const DEFAULT_START_UNIX_SECS: i64 = 1_704_067_200;
/// UIP is set for this long before each second's update.
pub const UIP_WINDOW_NS: u64 = 244_000;
/// The time base of the divider chain.
pub const TIME_BASE_HZ: u64 = 32_768;

const NS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A calendar date and time (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday .. 7 = Saturday (the RTC's convention).
    pub weekday: u8,
}

impl DateTime {
    /// Broken-down UTC time of a Unix time.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY);
        // Days to civil date (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        DateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }

    /// The Unix time of this date and time; out-of-range fields carry over (day 31 of a
    /// 30-day month is the 1st of the next). The weekday is ignored.
    pub fn to_unix(&self) -> i64 {
        let month = i64::from(self.month.clamp(1, 12));
        let y = if month <= 2 { self.year - 1 } else { self.year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// The RTC and CMOS; see the module documentation.
#[derive(Debug)]
pub struct Rtc {
    index: u8,
    nmi_disabled: bool,
    /// Registers A, B, the alarm registers and the CMOS RAM; the time registers, C, D and the
    /// century byte are not read from here.
    cmos: [u8; CMOS_SIZE],
    /// While running: RTC Unix time = `offset_secs + now_ns / 1e9`.
    offset_secs: i64,
    /// While register B's SET bit is set: the (frozen, guest-writable) RTC Unix time.
    frozen_secs: Option<i64>,
    /// Register C's PF/AF/UF.
    flags: u8,
    /// The virtual time the flags are up to date with.
    synced_ns: u64,
}

impl Rtc {
    /// An RTC reading `start_unix_secs` at virtual time 0, with the CMOS describing
    /// `ram_below_4g` bytes of RAM from address 0 (including the first MiB) and `ram_above_4g`
    /// bytes from 4 GiB.
    pub fn new(start_unix_secs: i64, ram_below_4g: u64, ram_above_4g: u64) -> Self {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(REG_A)] = A_DEFAULT;
        cmos[usize::from(REG_B)] = B_DEFAULT;

        let mut put16 = |lo: u8, value: u16| {
            let [l, h] = value.to_le_bytes();
            cmos[usize::from(lo)] = l;
            cmos[usize::from(lo) + 1] = h;
        };
        const MIB: u64 = 1 << 20;
        const UNIT_64K: u64 = 64 << 10;
        put16(CMOS_BASE_MEM_LO, BASE_MEMORY_KIB);
        let ext_kib = (ram_below_4g.saturating_sub(MIB) / 1024).min(0xffff) as u16;
        put16(CMOS_EXT_MEM_LO, ext_kib);
        put16(CMOS_EXT_MEM2_LO, ext_kib);
        let above_16m = (ram_below_4g.saturating_sub(16 * MIB) / UNIT_64K).min(0xffff) as u16;
        put16(CMOS_MEM_ABOVE_16M_LO, above_16m);
        let above_4g = (ram_above_4g / UNIT_64K).min(0xff_ffff) as u32;
        let b = above_4g.to_le_bytes();
        let base = usize::from(CMOS_MEM_ABOVE_4G);
        cmos[base..base + 3].copy_from_slice(&b[..3]);

        let sum: u16 = cmos[usize::from(CMOS_CHECKSUM_FIRST)..=usize::from(CMOS_CHECKSUM_LAST)]
            .iter()
            .map(|&x| u16::from(x))
            .sum();
        let [lo, hi] = sum.to_le_bytes();
        cmos[usize::from(CMOS_CHECKSUM_HI)] = hi;
        cmos[usize::from(CMOS_CHECKSUM_LO)] = lo;

        Rtc {
            index: 0,
            nmi_disabled: false,
            cmos,
            offset_secs: start_unix_secs,
            frozen_secs: None,
            flags: 0,
            synced_ns: 0,
        }
    }

    /// Whether the guest last wrote the index port with the NMI-disable bit set.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// The RTC's time (Unix seconds) at virtual time `now_ns`.
    pub fn unix_time(&self, now_ns: u64) -> i64 {
        match self.frozen_secs {
            Some(secs) => secs,
            None => self.offset_secs + (now_ns / NS_PER_SEC) as i64,
        }
    }

    /// A CMOS byte as stored (not for the clock registers).
    pub fn cmos_byte(&self, index: u8) -> u8 {
        self.cmos[usize::from(index & INDEX_MASK)]
    }

    /// The level of IRQ8.
    pub fn irq_level(&self) -> bool {
        self.irqf()
    }

    fn reg_a(&self) -> u8 {
        self.cmos[usize::from(REG_A)]
    }

    fn reg_b(&self) -> u8 {
        self.cmos[usize::from(REG_B)]
    }

    fn irqf(&self) -> bool {
        let b = self.reg_b();
        (self.flags & C_PF != 0 && b & B_PIE != 0)
            || (self.flags & C_AF != 0 && b & B_AIE != 0)
            || (self.flags & C_UF != 0 && b & B_UIE != 0)
    }

    /// The periodic interrupt's period in time-base ticks, if the rate is not 0.
    fn period_ticks(&self) -> Option<u64> {
        match self.reg_a() & A_RS_MASK {
            0 => None,
            // Rates 1 and 2 are 256 Hz and 128 Hz, as rates 8 and 9.
            rs @ 1..=2 => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn ticks(ns: u64) -> u128 {
        u128::from(ns) * u128::from(TIME_BASE_HZ) / u128::from(NS_PER_SEC)
    }

    /// Bring the flags up to `now_ns`.
    fn sync(&mut self, now_ns: u64) {
        let last = self.synced_ns;
        if now_ns <= last {
            return;
        }
        self.synced_ns = now_ns;
        if let Some(p) = self.period_ticks() {
            let p = u128::from(p);
            if Self::ticks(now_ns) / p > Self::ticks(last) / p {
                self.flags |= C_PF;
            }
        }
        if self.frozen_secs.is_some() {
            return;
        }
        let (s_last, s_now) = (last / NS_PER_SEC, now_ns / NS_PER_SEC);
        if s_now > s_last {
            self.flags |= C_UF;
            // The alarm matches at most once a second; a day covers every pattern.
            let first = (s_last + 1).max(s_now.saturating_sub(SECS_PER_DAY as u64 - 1));
            if (first..=s_now).any(|s| self.alarm_matches(self.offset_secs + s as i64)) {
                self.flags |= C_AF;
            }
        }
    }

    fn alarm_matches(&self, secs: i64) -> bool {
        let t = DateTime::from_unix(secs);
        let check = |reg: u8, current: u8| {
            let alarm = self.cmos[usize::from(reg)];
            alarm & ALARM_DONT_CARE == ALARM_DONT_CARE || alarm == current
        };
        check(REG_SECONDS_ALARM, self.encode(t.second))
            && check(REG_MINUTES_ALARM, self.encode(t.minute))
            && check(REG_HOURS_ALARM, self.encode_hours(t.hour))
    }

    fn binary(&self) -> bool {
        self.reg_b() & B_DM_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            self.encode(hour)
        } else {
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            let pm = if hour >= 12 { HOURS_PM } else { 0 };
            self.encode(h12) | pm
        }
    }

    fn decode_hours(&self, v: u8) -> u8 {
        if self.reg_b() & B_24H != 0 {
            self.decode(v).min(23)
        } else {
            let h = self.decode(v & !HOURS_PM).min(12) % 12;
            if v & HOURS_PM != 0 {
                h + 12
            } else {
                h
            }
        }
    }

    fn uip(&self, now_ns: u64) -> bool {
        self.frozen_secs.is_none() && now_ns % NS_PER_SEC >= NS_PER_SEC - UIP_WINDOW_NS
    }

    fn read_register(&mut self, reg: u8, now_ns: u64) -> u8 {
        let t = DateTime::from_unix(self.unix_time(now_ns));
        match reg {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hours(t.hour),
            REG_DAY_OF_WEEK => self.encode(t.weekday),
            REG_DAY_OF_MONTH => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u8),
            REG_A => {
                let uip = if self.uip(now_ns) { A_UIP } else { 0 };
                self.reg_a() | uip
            }
            REG_C => {
                let irqf = if self.irqf() { C_IRQF } else { 0 };
                let c = self.flags | irqf;
                self.flags = 0;
                c
            }
            REG_D => D_VRT,
            _ => self.cmos[usize::from(reg & INDEX_MASK)],
        }
    }

    /// A write to a time register: the clock jumps so that the field reads `value`.
    fn write_time(&mut self, reg: u8, value: u8, now_ns: u64) {
        let secs = self.unix_time(now_ns);
        let mut t = DateTime::from_unix(secs);
        let v = self.decode(value);
        match reg {
            REG_SECONDS => t.second = v.min(59),
            REG_MINUTES => t.minute = v.min(59),
            REG_HOURS => t.hour = self.decode_hours(value),
            REG_DAY_OF_MONTH => t.day = v.clamp(1, 31),
            REG_MONTH => t.month = v.clamp(1, 12),
            REG_YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(v.min(99)),
            REG_CENTURY => t.year = i64::from(v.min(99)) * 100 + t.year.rem_euclid(100),
            _ => return,
        }
        let new = t.to_unix();
        match &mut self.frozen_secs {
            Some(frozen) => *frozen = new,
            None => self.offset_secs += new - secs,
        }
    }

    fn write_register(&mut self, reg: u8, value: u8, now_ns: u64) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_MONTH | REG_MONTH | REG_YEAR
            | REG_CENTURY => self.write_time(reg, value, now_ns),
            // Computed from the date.
            REG_DAY_OF_WEEK => {}
            REG_A => self.cmos[usize::from(REG_A)] = value & !A_UIP,
            REG_B => {
                let mut value = value;
                if value & B_SET != 0 {
                    value &= !B_UIE;
                    if self.frozen_secs.is_none() {
                        self.frozen_secs = Some(self.unix_time(now_ns));
                    }
                } else if let Some(frozen) = self.frozen_secs.take() {
                    self.offset_secs = frozen - (now_ns / NS_PER_SEC) as i64;
                }
                self.cmos[usize::from(REG_B)] = value;
            }
            REG_C | REG_D => {}
            _ => self.cmos[usize::from(reg & INDEX_MASK)] = value,
        }
    }

    fn read_byte(&mut self, offset: u16, now_ns: u64) -> u8 {
        match offset {
            // The index port is write-only on a PC.
            OFFSET_INDEX => 0xff,
            OFFSET_DATA => self.read_register(self.index, now_ns),
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u16, value: u8, now_ns: u64) {
        match offset {
            OFFSET_INDEX => {
                self.index = value & INDEX_MASK;
                self.nmi_disabled = value & INDEX_NMI_DISABLE != 0;
            }
            OFFSET_DATA => self.write_register(self.index, value, now_ns),
            _ => {}
        }
    }

    fn drive_irq(&self, ctx: &mut DeviceCtx) {
        ctx.irq.set(RTC_IRQ, self.irqf());
    }
}

impl PortDevice for Rtc {
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
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            // i < 4, so the cast is exact.
            self.write_byte(offset.wrapping_add(i as u16), *byte, ctx.now_ns);
        }
        self.drive_irq(ctx);
    }

    fn next_event_ns(&self) -> Option<u64> {
        if self.irqf() {
            // The line is up until register C is read.
            return None;
        }
        let b = self.reg_b();
        let mut next: Option<u64> = None;
        if b & B_PIE != 0 {
            if let Some(p) = self.period_ticks() {
                let p = u128::from(p);
                let k = Self::ticks(self.synced_ns) / p + 1;
                let ns = (k * p * u128::from(NS_PER_SEC)).div_ceil(u128::from(TIME_BASE_HZ));
                next = Some(u64::try_from(ns).unwrap_or(u64::MAX));
            }
        }
        if b & (B_UIE | B_AIE) != 0 && self.frozen_secs.is_none() {
            let ns = (self.synced_ns / NS_PER_SEC + 1).saturating_mul(NS_PER_SEC);
            next = Some(next.map_or(ns, |n| n.min(ns)));
        }
        next
    }

    fn advance(&mut self, ctx: &mut DeviceCtx) {
        self.sync(ctx.now_ns);
        self.drive_irq(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{IrqLines, MachineRequest};
    use super::*;

    const MIB: u64 = 1 << 20;
    const SEC: u64 = NS_PER_SEC;

    struct Bus {
        rtc: Rtc,
        now_ns: u64,
        irq: IrqLines,
        requests: Vec<MachineRequest>,
    }

    impl Bus {
        fn new() -> Self {
            Bus {
                rtc: Rtc::new(DEFAULT_START_UNIX_SECS, 512 * MIB, 0),
                now_ns: 0,
                irq: IrqLines::default(),
                requests: Vec::new(),
            }
        }
        /// CMOS_READ.
        fn read(&mut self, reg: u8) -> u8 {
            let mut ctx = DeviceCtx {
                now_ns: self.now_ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.rtc.write(OFFSET_INDEX, 1, u32::from(reg), &mut ctx);
            self.rtc.read(OFFSET_DATA, 1, &mut ctx) as u8
        }
        /// CMOS_WRITE.
        fn write(&mut self, reg: u8, value: u8) {
            let mut ctx = DeviceCtx {
                now_ns: self.now_ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.rtc.write(OFFSET_INDEX, 1, u32::from(reg), &mut ctx);
            self.rtc.write(OFFSET_DATA, 1, u32::from(value), &mut ctx);
        }
        fn advance_to(&mut self, ns: u64) {
            self.now_ns = ns;
            let mut ctx = DeviceCtx {
                now_ns: ns,
                irq: &mut self.irq,
                requests: &mut self.requests,
            };
            self.rtc.advance(&mut ctx);
        }

        /// `mc146818_get_time` (6.1): time registers and the UIP / seconds-revalidation loop,
        /// with `udelay(100)` advancing virtual time. Returns (year, mon, mday, hour, min, sec).
        fn get_time(&mut self) -> (u32, u8, u8, u8, u8, u8) {
            loop {
                assert_eq!(self.read(REG_D) & 0x40, 0);
                let sec = self.read(REG_SECONDS);
                if self.read(REG_A) & A_UIP != 0 {
                    self.now_ns += 100_000;
                    continue;
                }
                let min = self.read(REG_MINUTES);
                let hour = self.read(REG_HOURS);
                let mday = self.read(REG_DAY_OF_MONTH);
                let mon = self.read(REG_MONTH);
                let year = self.read(REG_YEAR);
                let century = self.read(REG_CENTURY);
                let ctrl = self.read(REG_B);
                if sec != self.read(REG_SECONDS) {
                    continue;
                }
                let bcd = |v: u8| (v >> 4) * 10 + (v & 0x0f);
                let (sec, min, hour, mday, mon, year, century) = if ctrl & B_DM_BINARY == 0 {
                    (
                        bcd(sec),
                        bcd(min),
                        bcd(hour),
                        bcd(mday),
                        bcd(mon),
                        bcd(year),
                        bcd(century),
                    )
                } else {
                    (sec, min, hour, mday, mon, year, century)
                };
                let year = u32::from(century) * 100 + u32::from(year);
                return (year, mon, mday, hour, min, sec);
            }
        }
    }

    #[test]
    fn date_conversions() {
        let t = DateTime::from_unix(DEFAULT_START_UNIX_SECS);
        assert_eq!(
            t,
            DateTime {
                year: 2024,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 2, // Monday
            }
        );
        assert_eq!(t.to_unix(), DEFAULT_START_UNIX_SECS);
        for secs in [0, 951_782_400, 1_709_208_000, 4_102_444_799, -86_400] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        let leap = DateTime::from_unix(1_709_208_000); // 2024-02-29 12:00:00 Thursday
        assert_eq!((leap.month, leap.day, leap.weekday), (2, 29, 5));
    }

    #[test]
    fn reads_default_time_in_bcd() {
        let mut b = Bus::new();
        assert_eq!(b.read(REG_SECONDS), 0x00);
        assert_eq!(b.read(REG_HOURS), 0x00);
        assert_eq!(b.read(REG_DAY_OF_WEEK), 0x02);
        assert_eq!(b.read(REG_DAY_OF_MONTH), 0x01);
        assert_eq!(b.read(REG_MONTH), 0x01);
        assert_eq!(b.read(REG_YEAR), 0x24);
        assert_eq!(b.read(REG_CENTURY), 0x20);
        assert_eq!(b.read(REG_D), D_VRT);
        assert_eq!(b.read(REG_B), B_24H);
        // 59 days, 13:45:59.5 later: 2024-02-29 13:45:59.
        b.now_ns = (59 * 86_400 + 13 * 3600 + 45 * 60 + 59) * SEC + SEC / 2;
        assert_eq!(b.get_time(), (2024, 2, 29, 13, 45, 59));
        assert_eq!(b.read(REG_HOURS), 0x13);
        assert_eq!(b.read(REG_MINUTES), 0x45);
        assert_eq!(b.read(REG_SECONDS), 0x59);
        assert_eq!(b.read(REG_DAY_OF_WEEK), 0x05);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut b = Bus::new();
        b.now_ns = (59 * 86_400 + 13 * 3600 + 45 * 60 + 59) * SEC;
        b.write(REG_B, B_24H | B_DM_BINARY);
        assert_eq!(b.get_time(), (2024, 2, 29, 13, 45, 59));
        assert_eq!(b.read(REG_YEAR), 24);
        assert_eq!(b.read(REG_CENTURY), 20);
        assert_eq!(b.read(REG_SECONDS), 59);
        b.write(REG_B, B_DM_BINARY);
        assert_eq!(b.read(REG_HOURS), HOURS_PM | 1);
        b.write(REG_B, 0);
        assert_eq!(b.read(REG_HOURS), HOURS_PM | 0x01);
        b.now_ns = 30 * 60 * SEC; // 00:30 is 12:30 AM
        assert_eq!(b.read(REG_HOURS), 0x12);
        b.now_ns = 12 * 3600 * SEC; // noon is 12 PM
        assert_eq!(b.read(REG_HOURS), HOURS_PM | 0x12);
    }

    #[test]
    fn uip_in_the_last_244us_of_each_second() {
        let mut b = Bus::new();
        for (ns, uip) in [
            (0, false),
            (SEC - UIP_WINDOW_NS - 1, false),
            (SEC - UIP_WINDOW_NS, true),
            (SEC - 1, true),
            (SEC, false),
            (7 * SEC - 100_000, true),
        ] {
            b.now_ns = ns;
            assert_eq!(b.read(REG_A) & A_UIP != 0, uip, "at {ns}");
            assert_eq!(b.read(REG_A) & !A_UIP, A_DEFAULT);
        }
        // get_time polls through the window and sees the new second.
        b.now_ns = 5 * SEC - 200_000;
        assert_eq!(b.get_time(), (2024, 1, 1, 0, 0, 5));
        assert!(b.now_ns >= 5 * SEC);
    }

    #[test]
    fn set_time_like_linux() {
        let mut b = Bus::new();
        b.now_ns = 10 * SEC + 300_000_000;
        // mc146818_set_time: SET, divider reset, fields in BCD, restore.
        let save_control = b.read(REG_B);
        b.write(REG_B, save_control | B_SET);
        let save_freq = b.read(REG_A);
        b.write(REG_A, save_freq | 0x70);
        b.write(REG_YEAR, 0x30);
        b.write(REG_MONTH, 0x06);
        b.write(REG_DAY_OF_MONTH, 0x15);
        b.write(REG_HOURS, 0x12);
        b.write(REG_MINUTES, 0x34);
        b.write(REG_SECONDS, 0x56);
        b.now_ns += 5 * SEC; // frozen while SET
        assert_eq!(b.read(REG_SECONDS), 0x56);
        assert_eq!(b.read(REG_A) & A_UIP, 0);
        b.write(REG_B, save_control);
        b.write(REG_A, save_freq);
        assert_eq!(b.get_time(), (2030, 6, 15, 12, 34, 56));
        b.now_ns += 2 * SEC;
        assert_eq!(b.get_time(), (2030, 6, 15, 12, 34, 58));
        assert_eq!(b.read(REG_DAY_OF_WEEK), 0x07); // a Saturday
                                                   // A write while running shifts the clock too.
        b.write(REG_CENTURY, 0x21);
        assert_eq!(b.get_time(), (2130, 6, 15, 12, 34, 58));
    }

    #[test]
    fn periodic_interrupt() {
        let mut b = Bus::new();
        assert_eq!(b.rtc.next_event_ns(), None);
        b.write(REG_B, B_24H | B_PIE);
        // 1024 Hz: 976562.5 ns.
        assert_eq!(b.rtc.next_event_ns(), Some(976_563));
        b.advance_to(976_562);
        assert!(!b.irq.get(RTC_IRQ));
        b.advance_to(976_563);
        assert!(b.irq.get(RTC_IRQ));
        assert_eq!(b.rtc.next_event_ns(), None, "no events while IRQF is up");
        assert_eq!(b.read(REG_C), C_IRQF | C_PF);
        assert!(!b.irq.get(RTC_IRQ));
        assert_eq!(b.read(REG_C), 0);
        assert_eq!(b.rtc.next_event_ns(), Some(1_953_125));
        // 2 Hz.
        b.write(REG_A, A_DV_32KHZ | 0x0f);
        assert_eq!(b.rtc.next_event_ns(), Some(SEC / 2));
        // Disabling PIE: PF still sets, but no IRQ.
        b.write(REG_B, B_24H);
        b.advance_to(SEC / 2);
        assert!(!b.irq.get(RTC_IRQ));
        assert_eq!(b.read(REG_C) & (C_IRQF | C_PF), C_PF);
    }

    #[test]
    fn update_and_alarm_interrupts() {
        let mut b = Bus::new();
        b.write(REG_A, A_DV_32KHZ); // no periodic flag noise
        b.write(REG_B, B_24H | B_UIE);
        assert_eq!(b.rtc.next_event_ns(), Some(SEC));
        b.advance_to(SEC);
        assert!(b.irq.get(RTC_IRQ));
        assert_eq!(b.read(REG_C), C_IRQF | C_UF);
        assert_eq!(b.rtc.next_event_ns(), Some(2 * SEC));

        // Alarm at hh:mm:05 (hours and minutes don't care).
        b.write(REG_B, B_24H | B_AIE);
        b.write(REG_SECONDS_ALARM, 0x05);
        b.write(REG_MINUTES_ALARM, 0xff);
        b.write(REG_HOURS_ALARM, 0xc0);
        for s in 2..5 {
            b.advance_to(s * SEC);
            assert!(!b.irq.get(RTC_IRQ), "second {s}");
        }
        assert_eq!(b.read(REG_C), C_UF);
        b.advance_to(5 * SEC);
        assert!(b.irq.get(RTC_IRQ));
        assert_eq!(b.read(REG_C), C_IRQF | C_AF | C_UF);
        // A late advance still sees an alarm second it skipped.
        b.advance_to(70 * SEC);
        assert_eq!(b.read(REG_C), C_IRQF | C_AF | C_UF);
        // SET clears UIE and stops updates.
        b.write(REG_B, B_SET | B_UIE | B_24H);
        assert_eq!(b.read(REG_B), B_SET | B_24H);
        assert_eq!(b.rtc.next_event_ns(), None);
    }

    #[test]
    fn cmos_memory_sizes() {
        let mut b = Bus::new();
        let word = |b: &mut Bus, lo: u8| u16::from_le_bytes([b.read(lo), b.read(lo + 1)]);
        assert_eq!(word(&mut b, CMOS_BASE_MEM_LO), 640);
        assert_eq!(word(&mut b, CMOS_EXT_MEM_LO), 0xffff);
        assert_eq!(word(&mut b, CMOS_EXT_MEM2_LO), 0xffff);
        assert_eq!(
            word(&mut b, CMOS_MEM_ABOVE_16M_LO),
            ((512 - 16) * 16) as u16
        );
        assert_eq!(b.read(CMOS_MEM_ABOVE_4G), 0);

        let mut b = Bus::new();
        b.rtc = Rtc::new(DEFAULT_START_UNIX_SECS, 32 * MIB, 5 * 1024 * MIB);
        assert_eq!(word(&mut b, CMOS_EXT_MEM_LO), 31 * 1024);
        assert_eq!(word(&mut b, CMOS_MEM_ABOVE_16M_LO), 16 * 16);
        let above = u32::from_le_bytes([
            b.read(CMOS_MEM_ABOVE_4G),
            b.read(CMOS_MEM_ABOVE_4G + 1),
            b.read(CMOS_MEM_ABOVE_4G + 2),
            0,
        ]);
        assert_eq!(above, 5 * 1024 * 16);
        let sum: u16 = (CMOS_CHECKSUM_FIRST..=CMOS_CHECKSUM_LAST)
            .map(|i| u16::from(b.rtc.cmos_byte(i)))
            .sum();
        assert_eq!(
            u16::from_be_bytes([b.read(CMOS_CHECKSUM_HI), b.read(CMOS_CHECKSUM_LO)]),
            sum
        );
        // Plain RAM is writable.
        b.write(0x40, 0x5a);
        assert_eq!(b.read(0x40), 0x5a);
    }

    #[test]
    fn index_port_nmi_bit_and_access_widths() {
        let mut b = Bus::new();
        let mut ctx = DeviceCtx {
            now_ns: 0,
            irq: &mut b.irq,
            requests: &mut b.requests,
        };
        let rtc = &mut b.rtc;
        rtc.write(
            OFFSET_INDEX,
            1,
            u32::from(INDEX_NMI_DISABLE | REG_D),
            &mut ctx,
        );
        assert!(rtc.nmi_disabled());
        assert_eq!(rtc.read(OFFSET_DATA, 1, &mut ctx), u32::from(D_VRT));
        assert_eq!(rtc.read(OFFSET_INDEX, 1, &mut ctx), 0xff);
        // outw(0x0a | 0x26 << 8, 0x70): index then data.
        rtc.write(OFFSET_INDEX, 2, 0x2500 | u32::from(REG_A), &mut ctx);
        assert_eq!(rtc.read(OFFSET_DATA, 1, &mut ctx), 0x25);
        assert!(!rtc.nmi_disabled());
        // Registers C and D are read-only.
        rtc.write(OFFSET_INDEX, 1, u32::from(REG_D), &mut ctx);
        rtc.write(OFFSET_DATA, 1, 0, &mut ctx);
        assert_eq!(rtc.read(OFFSET_DATA, 1, &mut ctx), u32::from(D_VRT));
    }
}
