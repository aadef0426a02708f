//! The MC146818 CMOS real-time clock at ports 0x70 (index, with the NMI mask in
//! bit 7) and 0x71 (data): 128 bytes of CMOS, the clock registers, registers
//! A-D and the periodic, alarm and update-ended interrupts on IRQ8.
//!
//! # Time
//!
//! The clock never reads host time. It starts at a fixed date
//! ([`Rtc::new`]; lunavm's default is [`DEFAULT_START`], 2025-01-01T00:00:00Z)
//! at virtual time 0 and advances with the virtual time the run loop passes to
//! [`Rtc::set_time`] before every access and whenever time moves. The clock
//! registers are computed from that time on each read, in the format register
//! B selects at the moment of the read (BCD or binary, 24- or 12-hour).
//!
//! # IRQ8
//!
//! As in the PIT, the interface counts rising edges of the interrupt line:
//! IRQ8 is high while register C's IRQF is set, IRQF rises when an enabled
//! flag (PF, AF, UF) gets set, and only reading register C lowers it again. So
//! a guest that does not read register C gets no further interrupts, as on
//! hardware. [`Rtc::take_irq8_edges`] returns the rising edges up to the time
//! last set, [`Rtc::next_deadline_ns`] the time of the next one,
//! [`Rtc::irq8_level`] the level.
//!
//! # Wiring
//!
//! One device at 0x70, length 2 ([`RTC_PORT`], [`RTC_PORT_LEN`]): the `Rtc`
//! itself implements `BusDevice` and carries its whole state in snapshots.
//! The run loop keeps it as `Arc<Mutex<Rtc>>` and inserts a clone on the port
//! bus ([`Rtc::ports`] gives the entry), as it does the UART.
//!
//! # Model
//!
//! - Register A: UIP is set for the last 244 µs of every second of virtual
//!   time (the update itself takes no time); DV = 11x holds the divider in
//!   reset (the clock stops; the first update comes 500 ms after the reset is
//!   released); any other DV value runs the clock normally; RS selects the
//!   periodic rate (RS 1 and 2 give 256 Hz and 128 Hz as with a 32.768 kHz
//!   crystal).
//! - Register B: SET stops updates, freezes the clock registers so the guest
//!   can write them, and clears UIE; clearing SET takes the written time, and
//!   the next update follows the divider's phase (less than a second later).
//!   DM and 24/12 select the format; PIE, AIE, UIE enable the interrupts. SQWE
//!   and DSE are kept but do nothing (no square-wave pin, no daylight saving).
//! - Register C: IRQF, PF, AF, UF; reading it clears them all. PF is set at
//!   every periodic tick, UF at every update, AF at an update whose new time
//!   matches the alarm registers (a value 0xC0-0xFF is "don't care"), whether
//!   or not their interrupts are enabled.
//! - Register D: VRT = 1.
//! - Writing a clock register while SET is clear sets the clock at once and
//!   keeps the sub-second phase. Day of week is its own counter, as on the
//!   chip: changing the date does not change it; it advances at midnight.
//! - Invalid register contents (bad BCD digits, month 13) are taken at face
//!   value where arithmetic allows; the month is clamped to 1-12. Years are
//!   century * 100 + year, 0-9999.
//! - Port 0x70 is write-only and reads all-ones; [`Rtc::nmi_masked`] keeps
//!   the NMI mask bit for the machine.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// lunavm's default start of the clock: 2025-01-01T00:00:00Z.
pub const DEFAULT_START: i64 = 1_735_689_600;
/// The index port (the data port is the next one).
pub const RTC_PORT: u16 = 0x70;
/// Number of ports the RTC decodes.
pub const RTC_PORT_LEN: u16 = 2;
/// How long before each update register A's UIP flag is set.
pub const UIP_NS: u64 = 244_000;
/// Size of the CMOS.
pub const CMOS_SIZE: usize = 128;

const DEVICE: &str = "rtc";
const NS_PER_SEC: i128 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
const DIVIDER_HZ: i128 = 32_768;

const REG_SECONDS: u8 = 0x00;
const REG_SECONDS_ALARM: u8 = 0x01;
const REG_MINUTES: u8 = 0x02;
const REG_MINUTES_ALARM: u8 = 0x03;
const REG_HOURS: u8 = 0x04;
const REG_HOURS_ALARM: u8 = 0x05;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// CMOS index of the century byte (the FADT's `CENTURY` field names it).
pub const REG_CENTURY: u8 = 0x32;

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
const D_VRT: u8 = 0x80;

fn is_clock_reg(index: u8) -> bool {
    matches!(
        index,
        REG_SECONDS
            | REG_MINUTES
            | REG_HOURS
            | REG_DAY_OF_WEEK
            | REG_DAY
            | REG_MONTH
            | REG_YEAR
            | REG_CENTURY
    )
}

/// Errors of the RTC's host-side interface.
#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    /// The byte is a clock or control register, or past the CMOS.
    #[error(
        "CMOS byte {0:#04x} is not general-purpose RAM: use 0x0e-0x7f except the century byte 0x32"
    )]
    NotRam(usize),
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Leap years in [1, year - 1] (negative for years before 1, consistently).
fn leaps_before(year: i64) -> i64 {
    let y = year - 1;
    y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)
}

/// Days before the first of `month` (1-12) in a year.
fn days_before_month(month: u8, leap: bool) -> i64 {
    const CUMULATIVE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let m = month.clamp(1, 12);
    CUMULATIVE[usize::from(m - 1)] + i64::from(m > 2 && leap)
}

/// Days from 1970-01-01 to `year`-`month`-`day` in the proleptic Gregorian
/// calendar. The month is clamped to 1-12; a day past the month's end runs
/// into the next month.
pub fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    365 * (year - 1970)
        + (leaps_before(year) - leaps_before(1970))
        + days_before_month(month, is_leap(year))
        + i64::from(day)
        - 1
}

/// The date (year, month 1-12, day 1-31) `days` after 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // An estimate within a year or so, then exact steps.
    let mut year = 1970 + days.saturating_mul(400).div_euclid(146_097);
    while days_from_civil(year, 1, 1) > days {
        year -= 1;
    }
    while days_from_civil(year + 1, 1, 1) <= days {
        year += 1;
    }
    let day_of_year = days - days_from_civil(year, 1, 1);
    let leap = is_leap(year);
    let month = (1..=12u8)
        .rev()
        .find(|&m| days_before_month(m, leap) <= day_of_year)
        .unwrap_or(1);
    let day = day_of_year - days_before_month(month, leap) + 1;
    (year, month, u8::try_from(day).unwrap_or(1))
}

/// A broken-down time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tm {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    min: u8,
    sec: u8,
    /// 0 = Sunday.
    wday: u8,
}

impl Tm {
    fn from_secs(secs: i64) -> Tm {
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let small = |v: i64| u8::try_from(v).unwrap_or(0);
        Tm {
            year,
            month,
            day,
            hour: small(sod / 3600),
            min: small(sod / 60 % 60),
            sec: small(sod % 60),
            // 1970-01-01 was a Thursday.
            wday: small((days + 4).rem_euclid(7)),
        }
    }
}

/// Earliest start the clock accepts: 0000-01-01.
fn min_secs() -> i64 {
    days_from_civil(0, 1, 1) * SECS_PER_DAY
}

/// Latest start the clock accepts: 9999-12-31T23:59:59.
fn max_secs() -> i64 {
    days_from_civil(10_000, 1, 1) * SECS_PER_DAY - 1
}

fn to_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// A port-bus entry: (base, length, device).
type PortEntry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

/// The MC146818 and its CMOS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rtc {
    /// The CMOS bytes: RAM, the alarm registers, and the clock registers
    /// while SET is set (registers A-D live in their own fields).
    cmos: Vec<u8>,
    /// The selected register (port 0x70 bits 6-0).
    index: u8,
    /// Port 0x70 bit 7.
    nmi_masked: bool,
    /// Register A without UIP.
    reg_a: u8,
    /// Register B.
    reg_b: u8,
    /// Register C.
    reg_c: u8,
    /// Clock seconds (Unix) at the divider phase `phase_ns`; the clock itself
    /// while the divider is held in reset.
    base_secs: i64,
    /// A virtual time at which the divider rolls over to a new second.
    phase_ns: i64,
    /// Day of week = computed day of week + this, mod 7.
    dow_adjust: u8,
    /// The virtual time last set.
    now_ns: u64,
    /// Rising edges of IRQ8 not yet taken.
    irq8_edges: u64,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new(DEFAULT_START)
    }
}

impl Rtc {
    /// A clock reading `start_unix_secs` (clamped to years 0-9999) at virtual
    /// time 0, in BCD 24-hour mode at 1024 Hz periodic rate (register A 0x26,
    /// B 0x02), no interrupts enabled, CMOS RAM zeroed.
    pub fn new(start_unix_secs: i64) -> Rtc {
        Rtc {
            cmos: vec![0; CMOS_SIZE],
            index: 0,
            nmi_masked: false,
            reg_a: 0x26,
            reg_b: B_24H,
            reg_c: 0,
            base_secs: start_unix_secs.clamp(min_secs(), max_secs()),
            phase_ns: 0,
            dow_adjust: 0,
            now_ns: 0,
            irq8_edges: 0,
        }
    }

    /// The port device to insert on the port bus, as (base, len, device): the
    /// RTC itself at 0x70 (an array, like `Pic::ports` and `Pit::ports`).
    pub fn ports(rtc: &Arc<Mutex<Rtc>>) -> [PortEntry; 1] {
        let dev: Arc<Mutex<dyn BusDevice>> = rtc.clone();
        [(u64::from(RTC_PORT), u64::from(RTC_PORT_LEN), dev)]
    }

    /// Moves the clock to virtual time `now_ns`, setting the flags of the
    /// periodic ticks, updates and alarms in between. Earlier times are
    /// ignored: virtual time does not go backwards.
    pub fn set_time(&mut self, now_ns: u64) {
        let last = self.now_ns;
        if now_ns <= last {
            return;
        }
        self.now_ns = now_ns;
        if self.divider_reset() {
            return;
        }
        let mut flags = 0;
        if let Some(shift) = self.periodic_shift() {
            if self.periodic_index(last, shift) != self.periodic_index(now_ns, shift) {
                flags |= C_PF;
            }
        }
        if self.reg_b & B_SET == 0 {
            let (s0, s1) = (self.secs_at(last), self.secs_at(now_ns));
            if s1 > s0 {
                flags |= C_UF;
                if self.next_alarm(s0).is_some_and(|a| a <= s1) {
                    flags |= C_AF;
                }
            }
        }
        self.reg_c |= flags;
        self.update_irqf();
    }

    /// The virtual time last set.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The virtual time of the next rising edge of IRQ8, always after the time
    /// last set; `None` while IRQF is already set (register C must be read
    /// first) or when no enabled interrupt will come.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.reg_c & C_IRQF != 0 || self.divider_reset() {
            return None;
        }
        let now = i128::from(self.now_ns);
        let phase = i128::from(self.phase_ns);
        let mut best: Option<i128> = None;
        let mut consider = |t: i128| best = Some(best.map_or(t, |b| b.min(t)));
        if self.reg_b & B_PIE != 0 {
            if let Some(shift) = self.periodic_shift() {
                let tick = (self.periodic_index(self.now_ns, shift) + 1) << shift;
                consider(phase + ceil_div(tick * NS_PER_SEC, DIVIDER_HZ));
            }
        }
        if self.reg_b & B_SET == 0 {
            let secs = self.secs_at(self.now_ns);
            // The time at which the clock turns to `s`.
            let turn = |s: i64| phase + i128::from(s - self.base_secs) * NS_PER_SEC;
            if self.reg_b & B_UIE != 0 {
                consider(turn(secs + 1));
            }
            if self.reg_b & B_AIE != 0 {
                if let Some(a) = self.next_alarm(secs) {
                    consider(turn(a));
                }
            }
        }
        best.filter(|&t| t > now)
            .and_then(|t| u64::try_from(t).ok())
    }

    /// The rising edges of IRQ8 up to the time last set that were not taken
    /// yet; resets the count.
    pub fn take_irq8_edges(&mut self) -> u64 {
        std::mem::take(&mut self.irq8_edges)
    }

    /// The IRQ8 line: register C's IRQF.
    pub fn irq8_level(&self) -> bool {
        self.reg_c & C_IRQF != 0
    }

    /// Port 0x70 bit 7 as last written: NMIs masked.
    pub fn nmi_masked(&self) -> bool {
        self.nmi_masked
    }

    /// The clock as Unix seconds: the running time, or while SET is set the
    /// time the clock registers hold.
    pub fn unix_time(&self) -> i64 {
        if self.reg_b & B_SET != 0 {
            self.parse_clock(|i| self.cmos_byte(i))
        } else {
            self.current_secs()
        }
    }

    /// A CMOS RAM byte (0x0e-0x7f except 0x32).
    pub fn ram(&self, index: usize) -> Result<u8, RtcError> {
        Self::check_ram(index)?;
        Ok(self.cmos.get(index).copied().unwrap_or(0))
    }

    /// Sets a CMOS RAM byte (0x0e-0x7f except 0x32), as firmware would
    /// (memory sizes, equipment bytes).
    pub fn set_ram(&mut self, index: usize, value: u8) -> Result<(), RtcError> {
        Self::check_ram(index)?;
        if let Some(b) = self.cmos.get_mut(index) {
            *b = value;
        }
        Ok(())
    }

    fn check_ram(index: usize) -> Result<(), RtcError> {
        if (0x0e..CMOS_SIZE).contains(&index) && index != usize::from(REG_CENTURY) {
            Ok(())
        } else {
            Err(RtcError::NotRam(index))
        }
    }

    fn cmos_byte(&self, index: u8) -> u8 {
        self.cmos.get(usize::from(index)).copied().unwrap_or(0)
    }

    fn set_cmos_byte(&mut self, index: u8, v: u8) {
        if let Some(b) = self.cmos.get_mut(usize::from(index)) {
            *b = v;
        }
    }

    fn divider_reset(&self) -> bool {
        (self.reg_a >> 4) & 6 == 6
    }

    /// log2 of the periodic period in 32.768 kHz ticks, if the rate is on.
    fn periodic_shift(&self) -> Option<u32> {
        match u32::from(self.reg_a & 0x0f) {
            0 => None,
            rs @ 1..=2 => Some(rs + 6),
            rs => Some(rs - 1),
        }
    }

    /// Nanoseconds from the divider phase to `t`.
    fn elapsed(&self, t: u64) -> i128 {
        i128::from(t) - i128::from(self.phase_ns)
    }

    /// How many periodic ticks the divider has made at `t`.
    fn periodic_index(&self, t: u64, shift: u32) -> i128 {
        (self.elapsed(t) * DIVIDER_HZ).div_euclid(NS_PER_SEC) >> shift
    }

    /// The running clock's seconds at `t` (the divider is not in reset).
    fn secs_at(&self, t: u64) -> i64 {
        to_i64(i128::from(self.base_secs) + self.elapsed(t).div_euclid(NS_PER_SEC))
    }

    fn current_secs(&self) -> i64 {
        if self.divider_reset() {
            self.base_secs
        } else {
            self.secs_at(self.now_ns)
        }
    }

    /// Sets the clock to `secs` now, keeping the divider's phase.
    fn set_current_secs(&mut self, secs: i64) {
        let secs = secs.clamp(min_secs(), max_secs());
        self.base_secs = if self.divider_reset() {
            secs
        } else {
            to_i64(i128::from(secs) - self.elapsed(self.now_ns).div_euclid(NS_PER_SEC))
        };
    }

    fn uip(&self) -> bool {
        !self.divider_reset()
            && self.reg_b & B_SET == 0
            && self.elapsed(self.now_ns).rem_euclid(NS_PER_SEC) >= NS_PER_SEC - i128::from(UIP_NS)
    }

    fn update_irqf(&mut self) {
        let enabled = self.reg_b & (B_PIE | B_AIE | B_UIE);
        let irqf = self.reg_c & enabled & (C_PF | C_AF | C_UF) != 0;
        if irqf && self.reg_c & C_IRQF == 0 {
            self.irq8_edges = self.irq8_edges.saturating_add(1);
        }
        self.reg_c = (self.reg_c & (C_PF | C_AF | C_UF)) | if irqf { C_IRQF } else { 0 };
    }

    fn binary(&self) -> bool {
        self.reg_b & B_BINARY != 0
    }

    fn enc(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            ((v / 10 % 10) << 4) | (v % 10)
        }
    }

    fn dec(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            (v >> 4) * 10 + (v & 0x0f)
        }
    }

    fn enc_hour(&self, hour: u8) -> u8 {
        if self.reg_b & B_24H != 0 {
            self.enc(hour)
        } else {
            let h12 = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.enc(h12) | if hour >= 12 { 0x80 } else { 0 }
        }
    }

    fn dec_hour(&self, v: u8) -> u8 {
        if self.reg_b & B_24H != 0 {
            self.dec(v)
        } else {
            self.dec(v & 0x7f) % 12 + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    fn day_of_week(&self, tm: &Tm) -> u8 {
        (tm.wday + self.dow_adjust) % 7 + 1
    }

    /// A clock register's value for the time `secs`.
    fn clock_reg(&self, index: u8, secs: i64) -> u8 {
        let tm = Tm::from_secs(secs);
        let two_digits = |v: i64| u8::try_from(v.rem_euclid(100)).unwrap_or(0);
        match index {
            REG_SECONDS => self.enc(tm.sec),
            REG_MINUTES => self.enc(tm.min),
            REG_HOURS => self.enc_hour(tm.hour),
            REG_DAY_OF_WEEK => self.enc(self.day_of_week(&tm)),
            REG_DAY => self.enc(tm.day),
            REG_MONTH => self.enc(tm.month),
            REG_YEAR => self.enc(two_digits(tm.year)),
            REG_CENTURY => self.enc(two_digits(tm.year.div_euclid(100))),
            _ => 0,
        }
    }

    /// The time clock registers (read through `reg`) stand for.
    fn parse_clock(&self, reg: impl Fn(u8) -> u8) -> i64 {
        let v = |i| i64::from(self.dec(reg(i)));
        let year = v(REG_CENTURY) * 100 + v(REG_YEAR);
        let month = self.dec(reg(REG_MONTH));
        let day = self.dec(reg(REG_DAY));
        let hour = i64::from(self.dec_hour(reg(REG_HOURS)));
        days_from_civil(year, month, day) * SECS_PER_DAY
            + hour * 3600
            + v(REG_MINUTES) * 60
            + v(REG_SECONDS)
    }

    /// The adjustment that makes the day of week read `dow` (1-7) at `secs`.
    fn dow_adjust_for(&self, dow: u8, secs: i64) -> u8 {
        let wday = i64::from(Tm::from_secs(secs).wday);
        u8::try_from((i64::from(dow) - 1 - wday).rem_euclid(7)).unwrap_or(0)
    }

    /// The next second after `after` at which the clock matches the alarm.
    fn next_alarm(&self, after: i64) -> Option<i64> {
        let wild = |v: u8| v & 0xc0 == 0xc0;
        let (a_sec, a_min, a_hour) = (
            self.cmos_byte(REG_SECONDS_ALARM),
            self.cmos_byte(REG_MINUTES_ALARM),
            self.cmos_byte(REG_HOURS_ALARM),
        );
        let sec = if wild(a_sec) {
            None
        } else {
            Some(i64::from((0..60u8).find(|&s| self.enc(s) == a_sec)?))
        };
        let start = after.checked_add(1)?;
        let day0 = start.div_euclid(SECS_PER_DAY);
        for day in day0..day0 + 2 {
            for minute in 0..24 * 60u16 {
                let hour = u8::try_from(minute / 60).unwrap_or(0);
                let min = u8::try_from(minute % 60).unwrap_or(0);
                if !(wild(a_hour) || self.enc_hour(hour) == a_hour)
                    || !(wild(a_min) || self.enc(min) == a_min)
                {
                    continue;
                }
                let minute_start = day * SECS_PER_DAY + i64::from(minute) * 60;
                let candidate = match sec {
                    None => minute_start.max(start),
                    Some(s) => minute_start + s,
                };
                if candidate >= start && candidate < minute_start + 60 {
                    return Some(candidate);
                }
            }
        }
        None
    }

    fn write_a(&mut self, v: u8) {
        let was_reset = self.divider_reset();
        let secs = self.current_secs();
        self.reg_a = v & !A_UIP;
        match (was_reset, self.divider_reset()) {
            (false, true) => self.base_secs = secs,
            (true, false) => {
                // The first update comes half a second after the release.
                let now = i64::try_from(self.now_ns).unwrap_or(i64::MAX);
                self.phase_ns = now.saturating_sub(500_000_000);
                self.base_secs = secs;
            }
            _ => {}
        }
    }

    fn write_b(&mut self, v: u8) {
        let old = self.reg_b;
        self.reg_b = v;
        if v & B_SET != 0 && old & B_SET == 0 {
            // Freeze the clock registers where the guest can write them.
            let secs = self.current_secs();
            for i in [
                REG_SECONDS,
                REG_MINUTES,
                REG_HOURS,
                REG_DAY_OF_WEEK,
                REG_DAY,
                REG_MONTH,
                REG_YEAR,
                REG_CENTURY,
            ] {
                let value = self.clock_reg(i, secs);
                self.set_cmos_byte(i, value);
            }
            self.reg_b &= !B_UIE;
        } else if v & B_SET == 0 && old & B_SET != 0 {
            let secs = self.parse_clock(|i| self.cmos_byte(i));
            self.set_current_secs(secs);
            let dow = self.dec(self.cmos_byte(REG_DAY_OF_WEEK));
            self.dow_adjust = self.dow_adjust_for(dow, self.current_secs());
        }
        self.update_irqf();
    }

    fn write_clock(&mut self, index: u8, v: u8) {
        if self.reg_b & B_SET != 0 {
            self.set_cmos_byte(index, v);
            return;
        }
        let secs = self.current_secs();
        let dow = if index == REG_DAY_OF_WEEK {
            self.dec(v)
        } else {
            self.dec(self.clock_reg(REG_DAY_OF_WEEK, secs))
        };
        let new = self.parse_clock(|i| {
            if i == index {
                v
            } else {
                self.clock_reg(i, secs)
            }
        });
        self.set_current_secs(new);
        self.dow_adjust = self.dow_adjust_for(dow, self.current_secs());
    }

    fn read_data(&mut self) -> u8 {
        match self.index {
            REG_A => self.reg_a | if self.uip() { A_UIP } else { 0 },
            REG_B => self.reg_b,
            REG_C => {
                let c = self.reg_c;
                self.reg_c = 0;
                c
            }
            REG_D => D_VRT,
            i if is_clock_reg(i) && self.reg_b & B_SET == 0 => {
                self.clock_reg(i, self.current_secs())
            }
            i => self.cmos_byte(i),
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.index {
            REG_A => self.write_a(v),
            REG_B => self.write_b(v),
            REG_C | REG_D => {}
            i if is_clock_reg(i) => self.write_clock(i, v),
            i => self.set_cmos_byte(i, v),
        }
    }

    /// The whole state, including the time bases and untaken edges.
    pub fn save(&self) -> DeviceState {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Restores a state [`Rtc::save`] produced.
    pub fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let rtc: Rtc =
            serde_json::from_value(state.clone()).map_err(|e| DeviceStateError::new(DEVICE, e))?;
        if rtc.cmos.len() != CMOS_SIZE
            || rtc.index > 0x7f
            || rtc.dow_adjust > 6
            || !(min_secs()..=max_secs()).contains(&rtc.base_secs)
        {
            return Err(DeviceStateError::new(DEVICE, "the state is out of range"));
        }
        *self = rtc;
        Ok(())
    }
}

/// `a / b` rounded up, for `b > 0`.
fn ceil_div(a: i128, b: i128) -> i128 {
    -((-a).div_euclid(b))
}

impl BusDevice for Rtc {
    fn name(&self) -> &'static str {
        "rtc"
    }

    /// Port 0x70 is write-only (all-ones); 0x71 reads the selected register.
    /// Wider accesses are split into byte accesses at consecutive ports.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (off, b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            *b = if off == 1 { self.read_data() } else { 0xff };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        for (off, &b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            match off {
                0 => {
                    self.index = b & 0x7f;
                    self.nmi_masked = b & 0x80 != 0;
                }
                1 => self.write_data(b),
                _ => {}
            }
        }
        None
    }

    fn save(&self) -> DeviceState {
        Rtc::save(self)
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        Rtc::restore(self, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn get(r: &mut Rtc, index: u8) -> u8 {
        r.write(0, &[index]);
        let mut b = [0u8];
        r.read(1, &mut b);
        b[0]
    }

    fn put(r: &mut Rtc, index: u8, v: u8) {
        r.write(0, &[index]);
        r.write(1, &[v]);
    }

    /// (century, year, month, day, hours, minutes, seconds, day of week).
    fn clock(r: &mut Rtc) -> [u8; 8] {
        [0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00, 0x06].map(|i| get(r, i))
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29) * SECS_PER_DAY, 1_709_164_800);
        assert_eq!(days_from_civil(2100, 3, 1) * SECS_PER_DAY, 4_107_542_400);
        assert_eq!(days_from_civil(2025, 1, 1) * SECS_PER_DAY, DEFAULT_START);
        assert_eq!(civil_from_days(1_709_164_800 / SECS_PER_DAY), (2024, 2, 29));
        // 2100 is not a leap year: 28 February is followed by 1 March.
        let feb28 = days_from_civil(2100, 2, 28);
        assert_eq!(civil_from_days(feb28 + 1), (2100, 3, 1));
        // 2000 is.
        assert_eq!(
            civil_from_days(days_from_civil(2000, 2, 28) + 1),
            (2000, 2, 29)
        );
        // Year boundary.
        assert_eq!(
            civil_from_days(days_from_civil(2024, 12, 31) + 1),
            (2025, 1, 1)
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in (-800_000..3_000_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        let tm = Tm::from_secs(DEFAULT_START + 86_399);
        assert_eq!((tm.hour, tm.min, tm.sec, tm.wday), (23, 59, 59, 3));
    }

    #[test]
    fn start_date_in_bcd_and_binary() {
        let mut r = Rtc::new(DEFAULT_START);
        // 2025-01-01 00:00:00, a Wednesday (4).
        assert_eq!(
            clock(&mut r),
            [0x20, 0x25, 0x01, 0x01, 0x00, 0x00, 0x00, 0x04]
        );
        assert_eq!(get(&mut r, 0x0b), 0x02);
        assert_eq!(get(&mut r, 0x0d), 0x80);
        put(&mut r, 0x0b, 0x06);
        assert_eq!(clock(&mut r), [20, 25, 1, 1, 0, 0, 0, 4]);
        r.set_time(13 * 3600 * SEC + 5 * SEC);
        assert_eq!(clock(&mut r), [20, 25, 1, 1, 13, 0, 5, 4]);
        // 12-hour mode: 1 PM.
        put(&mut r, 0x0b, 0x04);
        assert_eq!(get(&mut r, 0x04), 0x81);
        put(&mut r, 0x0b, 0x00);
        assert_eq!(get(&mut r, 0x04), 0x81);
        let mut r = Rtc::new(DEFAULT_START);
        put(&mut r, 0x0b, 0x00);
        assert_eq!(get(&mut r, 0x04), 0x12, "midnight is 12 AM");
    }

    #[test]
    fn clock_advances_with_virtual_time() {
        let mut r = Rtc::new(DEFAULT_START);
        r.set_time(SEC - 1);
        assert_eq!(get(&mut r, 0x00), 0x00);
        r.set_time(SEC);
        assert_eq!(get(&mut r, 0x00), 0x01);
        r.set_time(86_400 * SEC);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x25, 0x01, 0x02, 0x00, 0x00, 0x00, 0x05]
        );
        r.set_time(86_400 * SEC - SEC);
        assert_eq!(get(&mut r, 0x07), 0x02, "time does not go backwards");
        r.set_time((365 * 86_400 - 1) * SEC);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x25, 0x12, 0x31, 0x23, 0x59, 0x59, 0x04]
        );
        r.set_time(365 * 86_400 * SEC);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x26, 0x01, 0x01, 0x00, 0x00, 0x00, 0x05]
        );
        assert_eq!(r.unix_time(), DEFAULT_START + 365 * 86_400);
        // The century turns too.
        let mut r = Rtc::new(days_from_civil(2099, 12, 31) * SECS_PER_DAY + 86_399);
        r.set_time(SEC);
        assert_eq!(clock(&mut r)[..4], [0x21, 0x00, 0x01, 0x01]);
    }

    #[test]
    fn uip_covers_the_last_244us_of_each_second() {
        let mut r = Rtc::new(DEFAULT_START);
        assert_eq!(get(&mut r, 0x0a), 0x26);
        r.set_time(SEC - UIP_NS - 1);
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0);
        r.set_time(SEC - UIP_NS);
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0x80);
        assert_eq!(get(&mut r, 0x00), 0x00, "the update has not happened yet");
        r.set_time(SEC - 1);
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0x80);
        r.set_time(SEC);
        assert_eq!(get(&mut r, 0x0a), 0x26);
        assert_eq!(get(&mut r, 0x00), 0x01);
        r.set_time(7 * SEC - 100);
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0x80);
        put(&mut r, 0x0b, 0x82);
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0, "no updates while SET");
    }

    #[test]
    fn set_freezes_and_takes_the_written_time() {
        let mut r = Rtc::new(DEFAULT_START);
        r.set_time(10 * SEC + 300_000_000);
        put(&mut r, 0x0b, 0x12); // UIE
        put(&mut r, 0x0b, 0x92); // SET clears UIE
        assert_eq!(get(&mut r, 0x0b), 0x82);
        assert_eq!(get(&mut r, 0x00), 0x10, "frozen at the time SET was set");
        // 2030-06-15 12:34:56, a Saturday (7).
        for (i, v) in [
            (0x00, 0x56),
            (0x02, 0x34),
            (0x04, 0x12),
            (0x06, 0x07),
            (0x07, 0x15),
            (0x08, 0x06),
            (0x09, 0x30),
        ] {
            put(&mut r, i, v);
        }
        r.set_time(20 * SEC);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x30, 0x06, 0x15, 0x12, 0x34, 0x56, 0x07]
        );
        r.set_time(20 * SEC + 300_000_000);
        put(&mut r, 0x0b, 0x02);
        let written = days_from_civil(2030, 6, 15) * SECS_PER_DAY + 12 * 3600 + 34 * 60 + 56;
        assert_eq!(r.unix_time(), written);
        // The next update follows the divider's phase.
        r.set_time(21 * SEC - 1);
        assert_eq!(get(&mut r, 0x00), 0x56);
        r.set_time(21 * SEC);
        assert_eq!(get(&mut r, 0x00), 0x57);
        r.set_time(21 * SEC + 12 * 3600 * SEC);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x30, 0x06, 0x16, 0x00, 0x34, 0x57, 0x01]
        );
    }

    #[test]
    fn linux_set_time_with_divider_reset() {
        let mut r = Rtc::new(DEFAULT_START);
        r.set_time(5 * SEC + 700_000_000);
        // mc146818_set_time: SET, divider reset, write, restore B, restore A.
        put(&mut r, 0x0b, 0x82);
        put(&mut r, 0x0a, 0x76);
        put(&mut r, 0x00, 0x30);
        put(&mut r, 0x02, 0x45);
        r.set_time(6 * SEC);
        put(&mut r, 0x0b, 0x02);
        r.set_time(9 * SEC);
        assert_eq!(
            get(&mut r, 0x00),
            0x30,
            "held while the divider is in reset"
        );
        assert_eq!(get(&mut r, 0x0a) & 0x80, 0);
        put(&mut r, 0x0a, 0x26);
        r.set_time(9 * SEC + 500_000_000 - 1);
        assert_eq!(get(&mut r, 0x00), 0x30);
        r.set_time(9 * SEC + 500_000_000);
        assert_eq!(
            get(&mut r, 0x00),
            0x31,
            "first update 500 ms after the release"
        );
        assert_eq!(get(&mut r, 0x02), 0x45);
    }

    #[test]
    fn writes_while_running_set_the_clock() {
        let mut r = Rtc::new(DEFAULT_START);
        r.set_time(3 * SEC + 400_000_000);
        put(&mut r, 0x02, 0x20);
        assert_eq!(
            clock(&mut r),
            [0x20, 0x25, 0x01, 0x01, 0x00, 0x20, 0x03, 0x04]
        );
        put(&mut r, 0x07, 0x05); // the date moves, the day of week does not
        assert_eq!(get(&mut r, 0x06), 0x04);
        put(&mut r, 0x06, 0x02);
        assert_eq!(get(&mut r, 0x06), 0x02);
        r.set_time(4 * SEC);
        assert_eq!(get(&mut r, 0x00), 0x04, "sub-second phase kept");
        r.set_time(4 * SEC + 86_400 * SEC);
        assert_eq!(get(&mut r, 0x06), 0x03, "day of week advances at midnight");
        assert_eq!(get(&mut r, 0x07), 0x06);
    }

    #[test]
    fn register_c_clears_on_read() {
        let mut r = Rtc::new(DEFAULT_START);
        put(&mut r, 0x0a, 0x20); // no periodic rate
        put(&mut r, 0x0b, 0x12); // UIE
        assert_eq!(r.next_deadline_ns(), Some(SEC));
        r.set_time(SEC);
        assert!(r.irq8_level());
        assert_eq!(r.take_irq8_edges(), 1);
        assert_eq!(r.next_deadline_ns(), None, "IRQF is still set");
        r.set_time(5 * SEC);
        assert_eq!(r.take_irq8_edges(), 0, "no new edge until C is read");
        assert_eq!(get(&mut r, 0x0c), 0x90);
        assert_eq!(get(&mut r, 0x0c), 0x00);
        assert!(!r.irq8_level());
        assert_eq!(r.next_deadline_ns(), Some(6 * SEC));
        // Flags are set even with their interrupt disabled.
        put(&mut r, 0x0b, 0x02);
        r.set_time(7 * SEC);
        assert_eq!(get(&mut r, 0x0c), 0x10);
        // Enabling an interrupt whose flag is set raises IRQ8 at once.
        r.set_time(8 * SEC);
        put(&mut r, 0x0b, 0x12);
        assert_eq!(r.take_irq8_edges(), 1);
        // Writes to C and D are ignored.
        put(&mut r, 0x0c, 0x00);
        put(&mut r, 0x0d, 0x00);
        assert_eq!(get(&mut r, 0x0c), 0x90);
        assert_eq!(get(&mut r, 0x0d), 0x80);
    }

    #[test]
    fn periodic_interrupt_deadlines() {
        let mut r = Rtc::new(DEFAULT_START);
        assert_eq!(r.next_deadline_ns(), None);
        put(&mut r, 0x0b, 0x42); // PIE at 1024 Hz
                                 // 976562.5 ns per tick.
        assert_eq!(r.next_deadline_ns(), Some(976_563));
        r.set_time(976_562);
        assert_eq!(r.take_irq8_edges(), 0);
        r.set_time(976_563);
        assert_eq!(r.take_irq8_edges(), 1);
        assert_eq!(get(&mut r, 0x0c), 0xc0);
        assert_eq!(r.next_deadline_ns(), Some(1_953_125));
        // A slow guest: many ticks, one edge.
        r.set_time(SEC);
        assert_eq!(r.take_irq8_edges(), 1);
        assert_eq!(get(&mut r, 0x0c), 0xd0, "PF and UF");
        assert_eq!(r.next_deadline_ns(), Some(SEC + 976_563));
        // 2 Hz.
        put(&mut r, 0x0a, 0x2f);
        assert_eq!(r.next_deadline_ns(), Some(SEC + 500_000_000));
        // 8192 Hz: 122070.3125 ns.
        put(&mut r, 0x0a, 0x23);
        assert_eq!(r.next_deadline_ns(), Some(SEC + 122_071));
        // RS = 0 turns it off.
        put(&mut r, 0x0a, 0x20);
        assert_eq!(r.next_deadline_ns(), None);
    }

    #[test]
    fn alarm_interrupts() {
        let mut r = Rtc::new(DEFAULT_START);
        put(&mut r, 0x0a, 0x20);
        put(&mut r, 0x01, 0x05);
        put(&mut r, 0x03, 0x00);
        put(&mut r, 0x05, 0x00);
        put(&mut r, 0x0b, 0x22); // AIE
        assert_eq!(r.next_deadline_ns(), Some(5 * SEC));
        r.set_time(4 * SEC);
        assert_eq!(r.take_irq8_edges(), 0);
        r.set_time(5 * SEC);
        assert_eq!(r.take_irq8_edges(), 1);
        assert_eq!(get(&mut r, 0x0c), 0xb0);
        // Next match a day later.
        assert_eq!(r.next_deadline_ns(), Some((86_400 + 5) * SEC));
        // Every minute at :30 (hours and minutes "don't care").
        put(&mut r, 0x01, 0x30);
        put(&mut r, 0x03, 0xc0);
        put(&mut r, 0x05, 0xff);
        assert_eq!(r.next_deadline_ns(), Some(30 * SEC));
        // An alarm passed over by a long jump still sets AF.
        r.set_time(1000 * SEC);
        assert_eq!(get(&mut r, 0x0c), 0xb0);
        assert_eq!(r.next_deadline_ns(), Some(1050 * SEC), "00:17:30");
        // A value no second can have never matches.
        put(&mut r, 0x01, 0x6a);
        assert_eq!(r.next_deadline_ns(), None);
    }

    #[test]
    fn index_port_keeps_the_nmi_mask() {
        let mut r = Rtc::new(DEFAULT_START);
        r.write(0, &[0x8f]);
        assert!(r.nmi_masked());
        r.write(1, &[0x5a]);
        r.write(0, &[0x0f]);
        assert!(!r.nmi_masked());
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0xff, 0x5a]);
        assert_eq!(r.ram(0x0f).unwrap(), 0x5a);
        r.set_ram(0x34, 0x12).unwrap();
        assert_eq!(get(&mut r, 0x34), 0x12);
        assert!(r.set_ram(0x32, 0).is_err());
        assert!(r.set_ram(0x0b, 0).is_err());
        assert!(r.ram(0x80).is_err());
    }

    #[test]
    fn state_round_trips() {
        let mut r = Rtc::new(DEFAULT_START);
        put(&mut r, 0x40, 0x77);
        put(&mut r, 0x0b, 0x52); // PIE + UIE
        r.set_time(2 * SEC + 123);
        put(&mut r, 0x02, 0x10);
        r.write(0, &[0x85]);
        let saved = BusDevice::save(&r);
        let mut s = Rtc::new(0);
        BusDevice::restore(&mut s, &saved).unwrap();
        assert_eq!(s, r);
        for t in [3 * SEC, 90 * SEC] {
            r.set_time(t);
            s.set_time(t);
            assert_eq!(r.next_deadline_ns(), s.next_deadline_ns());
            assert_eq!(r.take_irq8_edges(), s.take_irq8_edges());
            assert_eq!(clock(&mut r), clock(&mut s));
            assert_eq!(get(&mut r, 0x0c), get(&mut s, 0x0c));
        }
        assert_eq!(get(&mut s, 0x40), 0x77);
        let mut bad = saved.clone();
        bad["cmos"] = serde_json::json!([0, 1]);
        assert!(s.restore(&bad).is_err());
        assert!(s.restore(&serde_json::json!({})).is_err());
    }

    /// A small deterministic generator.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn random_accesses_are_safe_and_independent_of_sync_rate() {
        let mut rng = Lcg(3);
        for start in [DEFAULT_START, 0, i64::MIN, i64::MAX] {
            // `fine` is synced at every step, `coarse` only before accesses.
            let (mut fine, mut coarse) = (Rtc::new(start), Rtc::new(start));
            let mut now = 0u64;
            for _ in 0..3000 {
                now = now.saturating_add(match rng.next(4) {
                    0 => rng.next(2_000_000),
                    1 => rng.next(3 * SEC),
                    2 => rng.next(100_000 * SEC),
                    _ => 0,
                });
                fine.set_time(now);
                if rng.next(3) == 0 {
                    continue;
                }
                coarse.set_time(now);
                let reg = u8::try_from(rng.next(0x40)).unwrap();
                let v = u8::try_from(rng.next(256)).unwrap();
                if rng.next(2) == 0 {
                    put(&mut fine, reg, v);
                    put(&mut coarse, reg, v);
                } else {
                    assert_eq!(get(&mut fine, reg), get(&mut coarse, reg));
                }
                let _ = fine.next_deadline_ns();
                assert_eq!(fine, coarse);
            }
            let saved = fine.save();
            let mut back = Rtc::new(0);
            back.restore(&saved).unwrap();
            assert_eq!(back, fine);
            fine.set_time(u64::MAX);
            let _ = (fine.next_deadline_ns(), clock(&mut fine));
        }
    }
}
