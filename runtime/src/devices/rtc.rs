//! CMOS RAM and the MC146818 real-time clock: index port 0x70 (bit 7 = NMI disable),
//! data port 0x71.
//!
//! The clock reads the guest's wall time (UTC): the host's wall time at the clock's
//! origin plus virtual time since, plus an offset the guest changes by setting the clock
//! (fields written while register B's SET bit is on take effect when it is cleared). Time
//! and date come in BCD or binary per register B bit 2, in 24- or 12-hour form per bit 1.
//! Register A's update-in-progress bit is set for the last 244 µs of each second, as on
//! the chip. Register C's flags (periodic, alarm, update-ended) are computed when the
//! register is read or the platform polls; IRQ 8 is raised while a flag enabled in
//! register B is set, and reading C clears it. The other bytes are plain battery-backed
//! RAM, with the memory-size bytes a BIOS fills in set from the guest's RAM size.

use super::clock::Nanos;

/// The index port.
pub const RTC_INDEX: u16 = 0x70;
/// The data port.
pub const RTC_DATA: u16 = 0x71;

const SECONDS: u8 = 0x00;
const SECONDS_ALARM: u8 = 0x01;
const MINUTES: u8 = 0x02;
const MINUTES_ALARM: u8 = 0x03;
const HOURS: u8 = 0x04;
const HOURS_ALARM: u8 = 0x05;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// Flag bits of C line up with the enable bits of B.
const INTERRUPT_BITS: u8 = 0x70;
const D_VRT: u8 = 0x80;

const NS: i128 = 1_000_000_000;
/// Length of the update cycle at the end of each second, when UIP reads 1.
const UIP_NS: i128 = 244_000;
/// The time base: a 32.768 kHz crystal.
const XTAL_HZ: u128 = 32_768;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DateTime {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday … 7 = Saturday, as the RTC counts.
    weekday: u8,
}

fn small(v: i64) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, small(month), small(day))
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            hour: small(rem / 3600),
            minute: small(rem / 60 % 60),
            second: small(rem % 60),
            weekday: small((days + 4).rem_euclid(7) + 1),
        }
    }

    /// Seconds since the epoch; out-of-range fields are clamped (a guest may write anything).
    fn to_unix(self) -> i64 {
        let month = self.month.clamp(1, 12);
        let day = self.day.clamp(1, 31);
        let days = days_from_civil(self.year.clamp(0, 9999), month, day);
        days * 86_400
            + i64::from(self.hour.min(23)) * 3600
            + i64::from(self.minute.min(59)) * 60
            + i64::from(self.second.min(59))
    }
}

/// The CMOS RAM and clock.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Rtc {
    index: u8,
    nmi_disabled: bool,
    #[serde(with = "crate::checkpoint::bytes::array")]
    cmos: [u8; 128],
    wall_origin_ns: u64,
    /// Guest wall time minus host wall time.
    offset_ns: i128,
    /// While B.SET is on: the time as the guest has written it so far.
    frozen: Option<DateTime>,
    last_ns: Nanos,
    /// Guest second of the last update-ended check.
    last_second: i64,
    /// Periodic-interrupt period index of the last check.
    last_period: u64,
}

impl Rtc {
    /// CMOS for a machine with `ram_bytes` of RAM, the clock reading the wall time
    /// `wall_origin_ns` (ns since the Unix epoch) at virtual time 0.
    pub fn new(ram_bytes: u32, wall_origin_ns: u64) -> Self {
        let mut cmos = [0u8; 128];
        cmos[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        cmos[usize::from(REG_B)] = B_24H; // BCD, 24-hour
        cmos[usize::from(REG_D)] = D_VRT;
        cmos[0x14] = 0x02; // equipment: FPU present, no floppy, no display adapter BIOS
        let ram_kib = ram_bytes / 1024;
        let base_kib = ram_kib.min(640);
        let ext_kib = ram_kib.saturating_sub(1024).min(0xffff);
        let above_16m = (ram_bytes.saturating_sub(16 << 20) / 65_536).min(0xffff);
        for (at, v) in [
            (0x15, base_kib),
            (0x17, ext_kib),
            (0x30, ext_kib),
            (0x34, above_16m),
        ] {
            let [lo, hi, ..] = v.to_le_bytes();
            cmos[at] = lo;
            cmos[at + 1] = hi;
        }
        let sum: u16 = cmos[0x10..=0x2d].iter().map(|&b| u16::from(b)).sum();
        let [lo, hi] = sum.to_le_bytes();
        cmos[0x2e] = hi;
        cmos[0x2f] = lo;
        let mut rtc = Self {
            index: 0,
            nmi_disabled: false,
            cmos,
            wall_origin_ns,
            offset_ns: 0,
            frozen: None,
            last_ns: 0,
            last_second: 0,
            last_period: 0,
        };
        rtc.last_second = rtc.unix_secs(0);
        rtc.last_period = rtc.period_index(0).unwrap_or(0);
        rtc
    }

    /// Guest read of `port` (0x70, 0x71) at virtual time `now`.
    pub fn read(&mut self, now: Nanos, port: u16) -> u8 {
        match port {
            RTC_DATA => {
                self.advance(now);
                self.read_reg(self.index)
            }
            // The index register is write-only.
            _ => 0xff,
        }
    }

    /// Guest write of `v` to `port` (0x70, 0x71) at virtual time `now`.
    pub fn write(&mut self, now: Nanos, port: u16, v: u8) {
        match port {
            RTC_INDEX => {
                self.index = v & 0x7f;
                self.nmi_disabled = v & 0x80 != 0;
            }
            RTC_DATA => {
                self.advance(now);
                self.write_reg(self.index, v);
            }
            _ => {}
        }
    }

    /// The RESET pin (machine reset): interrupt enables and flags cleared; time, the other
    /// registers and the RAM are battery-backed and kept.
    pub fn reset(&mut self) {
        let b = self.reg(REG_B) & !(B_PIE | B_AIE | B_UIE | 0x08);
        self.set_reg(REG_B, b);
        self.set_reg(REG_C, 0);
    }

    /// After a restore in a new process: the clock's wall time at virtual time 0 is
    /// `wall_origin_ns` (the host's wall time now, less the virtual time so far), so
    /// the guest's wall clock reads the host's again, plus whatever offset the guest
    /// set. The time a checkpoint spent on disk shows here, and only here.
    pub fn resume_wall_clock(&mut self, wall_origin_ns: u64) {
        self.wall_origin_ns = wall_origin_ns;
    }

    /// IRQ 8: a flag in C whose interrupt is enabled in B.
    pub fn interrupt_pending(&self) -> bool {
        self.reg(REG_C) & C_IRQF != 0
    }

    /// Whether the guest disabled NMIs through port 0x70 bit 7 (no NMI source exists).
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    /// Brings register C's flags up to `now` (periodic, update-ended, alarm).
    pub fn advance(&mut self, now: Nanos) {
        let now = now.max(self.last_ns);
        self.last_ns = now;
        if let Some(period) = self.period_index(now) {
            if period > self.last_period {
                self.set_flags(C_PF);
            }
            self.last_period = period;
        }
        if self.reg(REG_B) & B_SET == 0 {
            let second = self.unix_secs(now);
            if second > self.last_second {
                self.set_flags(C_UF);
                if self.alarm_matches(DateTime::from_unix(second)) {
                    self.set_flags(C_AF);
                }
            }
            self.last_second = second;
        }
    }

    /// When the next interrupt can be raised, if one is enabled and not already pending.
    pub fn next_deadline(&self) -> Option<Nanos> {
        let b = self.reg(REG_B);
        if self.interrupt_pending() {
            return None;
        }
        let periodic = (b & B_PIE != 0)
            .then(|| self.period_shift())
            .flatten()
            .map(|shift| {
                let ticks = u128::from(self.last_period + 1) << shift;
                u64::try_from((ticks * NS as u128).div_ceil(XTAL_HZ)).unwrap_or(u64::MAX)
            });
        let per_second = (b & (B_UIE | B_AIE) != 0 && b & B_SET == 0).then(|| {
            let target = i128::from(self.last_second + 1) * NS;
            let at = target - i128::from(self.wall_origin_ns) - self.offset_ns;
            u64::try_from(at.max(0)).unwrap_or(u64::MAX)
        });
        match (periodic, per_second) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn reg(&self, r: u8) -> u8 {
        self.cmos[usize::from(r & 0x7f)]
    }

    fn set_reg(&mut self, r: u8, v: u8) {
        self.cmos[usize::from(r & 0x7f)] = v;
    }

    fn set_flags(&mut self, flags: u8) {
        let c = self.reg(REG_C) | flags;
        self.set_reg(REG_C, c);
        self.update_irqf();
    }

    /// IRQF = PF·PIE + AF·AIE + UF·UIE.
    fn update_irqf(&mut self) {
        let c = self.reg(REG_C) & !C_IRQF;
        let irqf = if c & self.reg(REG_B) & INTERRUPT_BITS != 0 {
            C_IRQF
        } else {
            0
        };
        self.set_reg(REG_C, c | irqf);
    }

    fn wall_ns(&self, now: Nanos) -> i128 {
        i128::from(self.wall_origin_ns) + i128::from(now) + self.offset_ns
    }

    fn unix_secs(&self, now: Nanos) -> i64 {
        i64::try_from(self.wall_ns(now).div_euclid(NS)).unwrap_or(0)
    }

    fn now_datetime(&self) -> DateTime {
        self.frozen
            .unwrap_or_else(|| DateTime::from_unix(self.unix_secs(self.last_ns)))
    }

    /// log2 of the periodic interrupt's period in crystal clocks (None: rate 0, off).
    fn period_shift(&self) -> Option<u32> {
        match self.reg(REG_A) & 0x0f {
            0 => None,
            1 => Some(7), // 256 Hz, as rate 8
            2 => Some(8), // 128 Hz, as rate 9
            r => Some(u32::from(r) - 1),
        }
    }

    fn period_index(&self, now: Nanos) -> Option<u64> {
        let shift = self.period_shift()?;
        let ticks = u128::from(now) * XTAL_HZ / NS as u128;
        Some(u64::try_from(ticks >> shift).unwrap_or(u64::MAX))
    }

    fn binary(&self) -> bool {
        self.reg(REG_B) & B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10 % 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.encode(h);
        }
        let (h12, pm) = match h {
            0 => (12, false),
            1..=11 => (h, false),
            12 => (12, true),
            _ => (h - 12, true),
        };
        self.encode(h12) | if pm { 0x80 } else { 0 }
    }

    fn decode_hour(&self, v: u8) -> u8 {
        if self.reg(REG_B) & B_24H != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7f) % 12;
        if v & 0x80 != 0 {
            h + 12
        } else {
            h
        }
    }

    /// An alarm byte of 0xc0–0xff matches any value.
    fn alarm_matches(&self, dt: DateTime) -> bool {
        let field = |alarm: u8, current: u8| {
            let a = self.reg(alarm);
            a >= 0xc0 || a == current
        };
        field(SECONDS_ALARM, self.encode(dt.second))
            && field(MINUTES_ALARM, self.encode(dt.minute))
            && field(HOURS_ALARM, self.encode_hour(dt.hour))
    }

    fn update_in_progress(&self) -> bool {
        self.reg(REG_B) & B_SET == 0 && self.wall_ns(self.last_ns).rem_euclid(NS) >= NS - UIP_NS
    }

    fn read_reg(&mut self, r: u8) -> u8 {
        let dt = self.now_datetime();
        match r {
            SECONDS => self.encode(dt.second),
            MINUTES => self.encode(dt.minute),
            HOURS => self.encode_hour(dt.hour),
            WEEKDAY => self.encode(dt.weekday),
            DAY => self.encode(dt.day),
            MONTH => self.encode(dt.month),
            YEAR => self.encode(small(dt.year.rem_euclid(100))),
            CENTURY => self.encode(small(dt.year.div_euclid(100).clamp(0, 99))),
            REG_A => (self.reg(REG_A) & !A_UIP) | if self.update_in_progress() { A_UIP } else { 0 },
            REG_C => {
                let c = self.reg(REG_C);
                self.set_reg(REG_C, 0);
                c
            }
            REG_D => D_VRT,
            _ => self.reg(r),
        }
    }

    fn write_reg(&mut self, r: u8, v: u8) {
        match r {
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY => {
                self.set_field(r, v)
            }
            REG_A => {
                self.set_reg(REG_A, v & !A_UIP);
                self.last_period = self.period_index(self.last_ns).unwrap_or(0);
            }
            REG_B => self.write_b(v),
            REG_C | REG_D => {} // read-only
            _ => self.set_reg(r, v),
        }
    }

    fn write_b(&mut self, v: u8) {
        let old = self.reg(REG_B);
        // Setting SET clears UIE.
        let v = if v & B_SET != 0 { v & !B_UIE } else { v };
        if old & B_SET == 0 && v & B_SET != 0 {
            self.frozen = Some(self.now_datetime());
        }
        self.set_reg(REG_B, v);
        if old & B_SET != 0 && v & B_SET == 0 {
            if let Some(dt) = self.frozen.take() {
                self.set_time(dt);
            }
        }
        self.update_irqf();
    }

    fn set_field(&mut self, r: u8, v: u8) {
        let mut dt = self.now_datetime();
        let d = self.decode(v);
        match r {
            SECONDS => dt.second = d,
            MINUTES => dt.minute = d,
            HOURS => dt.hour = self.decode_hour(v),
            WEEKDAY => dt.weekday = d,
            DAY => dt.day = d,
            MONTH => dt.month = d,
            YEAR => dt.year = dt.year - dt.year.rem_euclid(100) + i64::from(d % 100),
            _ => dt.year = i64::from(d) * 100 + dt.year.rem_euclid(100),
        }
        if self.frozen.is_some() {
            self.frozen = Some(dt);
        } else {
            self.set_time(dt);
        }
    }

    /// Makes the clock read `dt` now, the second starting now.
    fn set_time(&mut self, dt: DateTime) {
        let secs = dt.to_unix();
        let host = i128::from(self.wall_origin_ns) + i128::from(self.last_ns);
        self.offset_ns = i128::from(secs) * NS - host;
        self.last_second = secs;
        tracing::debug!(secs, "guest set the RTC");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29 23:59:58 UTC, a Thursday.
    const LEAP_EVE: u64 = 1_709_251_198;
    const SEC: u64 = 1_000_000_000;

    fn rtc() -> Rtc {
        Rtc::new(128 << 20, LEAP_EVE * SEC)
    }

    fn get(r: &mut Rtc, now: Nanos, idx: u8) -> u8 {
        r.write(now, RTC_INDEX, idx);
        r.read(now, RTC_DATA)
    }

    fn set(r: &mut Rtc, now: Nanos, idx: u8, v: u8) {
        r.write(now, RTC_INDEX, idx);
        r.write(now, RTC_DATA, v);
    }

    fn clock(r: &mut Rtc, now: Nanos) -> [u8; 8] {
        [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY].map(|i| get(r, now, i))
    }

    #[test]
    fn calendar_round_trips() {
        for secs in [
            0,
            951_782_400,
            1_709_251_198,
            4_107_542_400,
            253_402_300_799,
        ] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs);
        }
        let dt = DateTime::from_unix(946_730_096);
        assert_eq!(
            (dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second),
            (2000, 1, 1, 12, 34, 56)
        );
        assert_eq!(dt.weekday, 7, "Saturday");
        assert_eq!(
            DateTime::from_unix(0).weekday,
            5,
            "1970-01-01 was a Thursday"
        );
    }

    #[test]
    fn bcd_time_and_date() {
        let mut r = rtc();
        assert_eq!(
            clock(&mut r, 0),
            [0x58, 0x59, 0x23, 5, 0x29, 0x02, 0x24, 0x20]
        );
        assert_eq!(
            clock(&mut r, 2 * SEC),
            [0x00, 0x00, 0x00, 6, 0x01, 0x03, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_and_12_hour() {
        let mut r = rtc();
        set(&mut r, 0, REG_B, B_BINARY | B_24H);
        assert_eq!(clock(&mut r, 0), [58, 59, 23, 5, 29, 2, 24, 20]);
        set(&mut r, 0, REG_B, B_BINARY);
        assert_eq!(get(&mut r, 0, HOURS), 0x80 | 11, "11 PM");
        assert_eq!(get(&mut r, 2 * SEC, HOURS), 12, "midnight is 12 AM");
        set(&mut r, 0, REG_B, 0);
        assert_eq!(
            get(&mut r, 2 * SEC + 12 * 3600 * SEC, HOURS),
            0x80 | 0x12,
            "noon is 12 PM, BCD"
        );
    }

    #[test]
    fn registers_a_b_c_d() {
        let mut r = rtc();
        assert_eq!(get(&mut r, 0, REG_A), 0x26);
        assert_eq!(get(&mut r, 0, REG_B), 0x02);
        assert_eq!(get(&mut r, 0, REG_C), 0);
        assert_eq!(get(&mut r, 0, REG_D), 0x80);
        set(&mut r, 0, REG_D, 0);
        set(&mut r, 0, REG_C, 0xff);
        assert_eq!(get(&mut r, 0, REG_D), 0x80, "read-only");
        assert_eq!(get(&mut r, 0, REG_C), 0);
        // UIP during the last 244 µs of the second.
        let end = SEC - 244_000;
        assert_eq!(get(&mut r, end - 1, REG_A), 0x26);
        assert_eq!(get(&mut r, end, REG_A), 0xa6);
        assert_eq!(get(&mut r, end, SECONDS), 0x58, "still the old second");
        assert_eq!(get(&mut r, SEC, REG_A), 0x26);
        assert_eq!(get(&mut r, SEC, SECONDS), 0x59);
        // UF was set by the second passing, PF by the 1024 Hz divider (PIE off).
        assert_eq!(get(&mut r, SEC, REG_C), C_UF | C_PF);
        assert_eq!(get(&mut r, SEC, REG_C), 0);
        set(&mut r, SEC, REG_A, 0xff);
        assert_eq!(get(&mut r, SEC, REG_A), 0x7f, "UIP is read-only");
    }

    #[test]
    fn guest_sets_the_clock_with_set_bit() {
        let mut r = rtc();
        set(&mut r, 0, REG_B, B_SET | B_24H | B_UIE);
        assert_eq!(get(&mut r, 0, REG_B), B_SET | B_24H, "SET clears UIE");
        for (idx, v) in [
            (SECONDS, 0x56),
            (MINUTES, 0x34),
            (HOURS, 0x12),
            (DAY, 0x31),
            (MONTH, 0x01),
            (YEAR, 0x00),
            (CENTURY, 0x20),
        ] {
            set(&mut r, 0, idx, v);
        }
        // Frozen while SET is on, whatever the time.
        assert_eq!(clock(&mut r, 5 * SEC)[..3], [0x56, 0x34, 0x12]);
        assert_eq!(get(&mut r, 5 * SEC, REG_A) & A_UIP, 0);
        set(&mut r, 5 * SEC, REG_B, B_24H);
        assert_eq!(
            clock(&mut r, 15 * SEC),
            [0x06, 0x35, 0x12, 2, 0x31, 0x01, 0x00, 0x20],
            "2000-01-31 was a Monday"
        );
        // Without SET a field write takes effect at once.
        set(&mut r, 15 * SEC, MINUTES, 0x00);
        assert_eq!(clock(&mut r, 15 * SEC)[..3], [0x06, 0x00, 0x12]);
    }

    #[test]
    fn cmos_memory_size_bytes() {
        let mut r = rtc();
        let bytes: Vec<u8> = [0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35]
            .iter()
            .map(|&i| get(&mut r, 0, i))
            .collect();
        assert_eq!(bytes, [0x80, 0x02, 0xff, 0xff, 0xff, 0xff, 0x00, 0x07]);
        let mut small = Rtc::new(8 << 20, 0);
        let bytes: Vec<u8> = [0x15, 0x16, 0x17, 0x18, 0x34, 0x35]
            .iter()
            .map(|&i| get(&mut small, 0, i))
            .collect();
        assert_eq!(bytes, [0x80, 0x02, 0x00, 0x1c, 0x00, 0x00]);
        let sum: u16 = (0x10..=0x2d)
            .map(|i| u16::from(get(&mut small, 0, i)))
            .sum();
        assert_eq!(
            u16::from_be_bytes([get(&mut small, 0, 0x2e), get(&mut small, 0, 0x2f)]),
            sum
        );
        let tiny = Rtc::new(512 << 10, 0);
        assert_eq!(tiny.cmos[0x15..0x19], [0x00, 0x02, 0, 0]);
    }

    #[test]
    fn plain_ram_and_index_port() {
        let mut r = rtc();
        set(&mut r, 0, 0x40, 0xa5);
        r.write(0, RTC_INDEX, 0x80 | 0x40); // NMI disable bit does not change the index
        assert!(r.nmi_disabled());
        assert_eq!(r.read(0, RTC_DATA), 0xa5);
        assert_eq!(r.read(0, RTC_INDEX), 0xff);
        set(&mut r, 0, 0x7f, 1);
        assert_eq!(get(&mut r, 0, 0x7f), 1);
    }

    #[test]
    fn periodic_interrupt() {
        let mut r = rtc();
        assert_eq!(r.next_deadline(), None, "no interrupt enabled");
        set(&mut r, 0, REG_B, B_24H | B_PIE);
        let d = r.next_deadline().unwrap();
        assert_eq!(d, 976_563, "1024 Hz");
        r.advance(d - 1);
        assert!(!r.interrupt_pending());
        r.advance(d);
        assert!(r.interrupt_pending());
        assert_eq!(r.next_deadline(), None, "pending until C is read");
        assert_eq!(get(&mut r, d, REG_C), C_IRQF | C_PF);
        assert!(!r.interrupt_pending());
        assert_eq!(r.next_deadline(), Some(1_953_125));
        // Rate 15: 2 Hz.
        set(&mut r, d, REG_A, 0x2f);
        assert_eq!(r.next_deadline(), Some(SEC / 2));
        // PF without PIE does not interrupt.
        set(&mut r, d, REG_B, B_24H);
        r.advance(SEC / 2);
        assert!(!r.interrupt_pending());
        assert_eq!(get(&mut r, SEC / 2, REG_C), C_PF);
    }

    #[test]
    fn update_ended_and_alarm_interrupts() {
        let mut r = rtc();
        set(&mut r, 0, REG_B, B_24H | B_UIE);
        assert_eq!(r.next_deadline(), Some(SEC));
        r.advance(SEC);
        assert!(r.interrupt_pending());
        assert_eq!(get(&mut r, SEC, REG_C), C_IRQF | C_UF | C_PF);
        // Alarm at 00:00:00 (two seconds after the start), hours "don't care".
        set(&mut r, SEC, REG_B, B_24H | B_AIE);
        set(&mut r, SEC, SECONDS_ALARM, 0x00);
        set(&mut r, SEC, MINUTES_ALARM, 0x00);
        set(&mut r, SEC, HOURS_ALARM, 0xc0);
        r.advance(SEC + SEC / 2);
        assert!(!r.interrupt_pending());
        r.advance(2 * SEC);
        assert!(r.interrupt_pending());
        assert_eq!(get(&mut r, 2 * SEC, REG_C), C_IRQF | C_AF | C_UF | C_PF);
        r.advance(3 * SEC);
        assert!(!r.interrupt_pending(), "alarm does not match 00:00:01");
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let mut r = Rtc::new(u32::MAX, u64::MAX);
        for i in 0..=255u8 {
            for v in [0u8, 0x7f, 0x80, 0x99, 0xff, i] {
                set(&mut r, u64::from(i) * SEC, i, v);
                let _ = get(&mut r, u64::from(i) * SEC, i);
                let _ = r.next_deadline();
            }
        }
        set(&mut r, 0, REG_B, B_SET);
        for idx in [SECONDS, MINUTES, HOURS, DAY, MONTH, YEAR, CENTURY] {
            set(&mut r, 0, idx, 0xff);
        }
        set(&mut r, 0, REG_B, 0);
        let _ = clock(&mut r, u64::MAX);
    }
}
