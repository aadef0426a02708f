//! The 8254 programmable interval timer at ports 0x40-0x43 (counters 0-2 and
//! the control word register) and system control port B at 0x61 (counter 2's
//! gate, the speaker enable, counter 2's OUT and the refresh toggle).
//!
//! # Time
//!
//! The PIT never reads host time. The run loop calls [`Pit::set_time`] with
//! the virtual time before every access and whenever time moves; the counters
//! run on the 1 193 182 Hz input clock, and the tick count at virtual time `t`
//! is exactly `floor(t_ns * 1193182 / 1e9)` ([`ns_to_ticks`], integer math).
//! Every counter's state is advanced in closed form from tick to tick, so the
//! state at a time does not depend on how often `set_time` was called.
//!
//! # IRQ0
//!
//! Counter 0's OUT drives IRQ0, an edge-triggered PIC input. The PIT counts the
//! rising edges of OUT: [`Pit::take_irq0_edges`] returns how many happened up
//! to the time last set (and resets the count), and the run loop pulses IRQ0
//! once when it is non-zero — edges the guest was too slow for coalesce into
//! one interrupt, as on hardware, and the count says how many were lost.
//! [`Pit::next_deadline_ns`] is the virtual time of the next rising edge, the
//! time a halted vCPU should jump to. An edge count rather than a level keeps
//! the interface exact under coarse time steps: a level sampled after a long
//! jump cannot tell how many periods went by, or whether a one-tick pulse
//! (mode 2, mode 4) happened at all. [`Pit::irq0_level`] gives the level too.
//!
//! # Wiring
//!
//! The run loop keeps the PIT as `Arc<Mutex<Pit>>`; the port bus reaches it
//! through the two [`PitPort`] devices [`Pit::ports`] builds (0x40 len 4 and
//! 0x61 len 1). The counters' device carries the whole state in snapshots;
//! port B's saves `null`. Never hold the `Pit` lock while calling the bus.
//!
//! # Model
//!
//! Modes 0-5 (6 and 7 alias 2 and 3) with the 8254's gate rules, LSB / MSB /
//! LSB-then-MSB access, the counter latch and read-back commands (status and
//! count), BCD counting (a BCD counter counts 9999..0; count digits above 9
//! are taken at face value), initial count 0 meaning 65536 (10000 in BCD). A
//! new count is loaded into the counting element on the clock tick after it is
//! written (so a mode 0 count N raises OUT N + 1 ticks after the write); a
//! two-byte write in mode 0 stops counting at its first byte. Counts of 1 in
//! modes 2 and 3, which the data sheet forbids, keep OUT high. Counters 0 and 1
//! have their gates tied high; counter 1's OUT goes nowhere. Port 0x61 keeps
//! its bits 0-3 as written, reads the refresh toggle in bit 4 (it flips every
//! 15.085 µs of virtual time) and counter 2's OUT in bit 5; bits 6-7 read 0.
//! Reading the control word register returns all-ones (it is write-only).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bus::{lock, BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// The input clock of the counters, in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Base port of the counters and the control word register.
pub const PIT_PORT: u16 = 0x40;
/// Number of ports the 8254 decodes.
pub const PIT_PORT_LEN: u16 = 4;
/// System control port B.
pub const PORT_B: u16 = 0x61;
/// Number of ports port B decodes.
pub const PORT_B_LEN: u16 = 1;
/// Virtual nanoseconds between flips of port B's refresh bit (bit 4).
pub const REFRESH_TOGGLE_NS: u64 = 15_085;

const NS_PER_SEC: u128 = 1_000_000_000;
const DEVICE: &str = "pit";

/// The number of input clock ticks up to virtual time `ns`.
pub fn ns_to_ticks(ns: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(PIT_HZ) / NS_PER_SEC).unwrap_or(u64::MAX)
}

/// The first virtual time at which [`ns_to_ticks`] reaches `tick`.
pub fn tick_to_ns(tick: u64) -> u64 {
    let hz = u128::from(PIT_HZ);
    u64::try_from((u128::from(tick) * NS_PER_SEC).div_ceil(hz)).unwrap_or(u64::MAX)
}

/// Ticks until a down-counter at `ce` reaches 0 (a counter at 0 wraps first).
fn ticks_to_zero(ce: u32, modulus: u32) -> u64 {
    u64::from(if ce == 0 { modulus } else { ce })
}

fn to_bcd(v: u32) -> u16 {
    let d = |p: u32| u16::try_from((v / p) % 10).unwrap_or(0);
    d(1000) << 12 | d(100) << 8 | d(10) << 4 | d(1)
}

fn from_bcd(v: u16) -> u32 {
    let n = |s: u16| u32::from((v >> s) & 0xf);
    n(12) * 1000 + n(8) * 100 + n(4) * 10 + n(0)
}

/// One counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Channel {
    /// Mode bits M2-M0 as written (status byte).
    mode_bits: u8,
    /// RW bits: 1 LSB, 2 MSB, 3 LSB then MSB.
    access: u8,
    /// Counting in BCD.
    bcd: bool,
    /// The count register: the initial count, 1..=65536 (10000 in BCD).
    reload: u32,
    /// The LSB of an LSB-then-MSB write, waiting for its MSB.
    written_lsb: Option<u8>,
    /// The next LSB-then-MSB read returns the MSB.
    read_msb_next: bool,
    /// A latched count (counter latch or read-back).
    count_latch: Option<u16>,
    /// A latched status byte (read-back).
    status_latch: Option<u8>,
    /// A count was written since the control word: the counter runs.
    programmed: bool,
    /// The counting element.
    ce: u32,
    /// The count the counting element was last loaded from.
    phase_n: u32,
    /// The OUT pin.
    out: bool,
    /// Modes 0, 1, 4, 5: the terminal count of this load is still to come.
    armed: bool,
    /// The count register is copied into the counting element on the next tick.
    load_pending: bool,
    /// Status NULL COUNT: a count was written and not loaded yet.
    null_count: bool,
    /// Mode 0: the first byte of a two-byte count stopped counting.
    write_paused: bool,
    /// The GATE input.
    gate: bool,
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            mode_bits: 0,
            access: 3,
            bcd: false,
            reload: 65_536,
            written_lsb: None,
            read_msb_next: false,
            count_latch: None,
            status_latch: None,
            programmed: false,
            ce: 0,
            phase_n: 65_536,
            out: true,
            armed: false,
            load_pending: false,
            null_count: false,
            write_paused: false,
            gate,
        }
    }

    /// The effective mode: 6 and 7 are 2 and 3.
    fn mode(&self) -> u8 {
        match self.mode_bits & 7 {
            m @ 6..=7 => m - 4,
            m => m,
        }
    }

    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    /// The initial count a raw 16-bit write stands for.
    fn decode(&self, raw: u16) -> u32 {
        let m = self.modulus();
        let v = if self.bcd {
            from_bcd(raw) % m
        } else {
            u32::from(raw)
        };
        if v == 0 {
            m
        } else {
            v
        }
    }

    /// The counting element as the guest reads it.
    fn encode(&self, v: u32) -> u16 {
        if self.bcd {
            to_bcd(v % 10_000)
        } else {
            u16::try_from(v & 0xffff).unwrap_or(0)
        }
    }

    fn status(&self) -> u8 {
        u8::from(self.out) << 7
            | u8::from(self.null_count) << 6
            | (self.access & 3) << 4
            | (self.mode_bits & 7) << 1
            | u8::from(self.bcd)
    }

    /// Whether the counting element decrements on a tick.
    fn enabled(&self) -> bool {
        match self.mode() {
            0 | 4 => self.gate && !self.write_paused,
            2 | 3 => self.gate,
            _ => true,
        }
    }

    /// Raises OUT; 1 if that was a rising edge.
    fn rise(&mut self) -> u64 {
        let edge = u64::from(!self.out);
        self.out = true;
        edge
    }

    /// Mode 3: ticks left in the current half period.
    fn half_remaining(&self) -> u64 {
        let extra = self.phase_n % 2 == 1 && self.out;
        (u64::from(self.ce / 2) + u64::from(extra)).max(1)
    }

    /// Advances by `dt` ticks; returns the number of rising edges of OUT.
    fn advance(&mut self, mut dt: u64) -> u64 {
        if dt == 0 || !self.programmed {
            return 0;
        }
        let mut edges = 0;
        let m = self.modulus();
        if self.load_pending {
            self.load_pending = false;
            self.null_count = false;
            let n = self.reload;
            self.phase_n = n;
            match self.mode() {
                0 => {
                    self.ce = n % m;
                    self.armed = true;
                }
                1 => {
                    self.ce = n % m;
                    self.armed = true;
                    self.out = false;
                }
                2 => {
                    self.ce = n;
                    edges += self.rise();
                }
                3 => {
                    self.ce = n & !1;
                    edges += self.rise();
                }
                _ => {
                    self.ce = n % m;
                    self.armed = true;
                    edges += self.rise();
                }
            }
            dt -= 1;
            if dt == 0 {
                return edges;
            }
        }
        let mode = self.mode();
        // A mode 4/5 strobe lasts one tick whatever the gate does.
        if matches!(mode, 4 | 5) && !self.out {
            edges += self.rise();
        }
        if !self.enabled() {
            return edges;
        }
        match mode {
            0 | 1 => {
                if self.armed && dt >= ticks_to_zero(self.ce, m) {
                    self.armed = false;
                    edges += self.rise();
                }
                self.count_down(dt, m);
            }
            4 | 5 => {
                if self.armed {
                    let ttz = ticks_to_zero(self.ce, m);
                    if dt == ttz {
                        self.armed = false;
                        self.out = false;
                    } else if dt > ttz {
                        self.armed = false;
                        edges += 1; // low for one tick, high again
                    }
                }
                self.count_down(dt, m);
            }
            2 => edges += self.advance_rate(dt),
            _ => edges += self.advance_square(dt),
        }
        edges
    }

    fn count_down(&mut self, dt: u64, m: u32) {
        let m64 = u64::from(m);
        let ce = u64::from(self.ce % m);
        let next = (ce + m64 - dt % m64) % m64;
        self.ce = u32::try_from(next).unwrap_or(0);
    }

    /// Mode 2: OUT low while the counting element is 1, reload on the next tick.
    fn advance_rate(&mut self, dt: u64) -> u64 {
        let ce = u64::from(self.ce.max(1));
        if dt < ce {
            self.ce = u32::try_from(ce - dt).unwrap_or(1);
            self.out = !(self.ce == 1 && self.phase_n > 1);
            return 0;
        }
        let mut edges = u64::from(self.phase_n > 1);
        let rem = dt - ce;
        let n = self.reload;
        self.phase_n = n;
        self.null_count = false;
        if n <= 1 {
            self.ce = 1;
            self.out = true;
        } else {
            let n64 = u64::from(n);
            edges += rem / n64;
            self.ce = n - u32::try_from(rem % n64).unwrap_or(0);
            self.out = self.ce != 1;
        }
        edges
    }

    /// Mode 3: half periods of ceil(N/2) ticks high and floor(N/2) ticks low;
    /// the counting element steps by two from N (even) or N - 1 (odd).
    fn advance_square(&mut self, mut dt: u64) -> u64 {
        let mut edges = 0;
        if self.phase_n <= 1 {
            // Count 1: OUT stays high and the count is reloaded every tick.
            dt -= 1;
            self.phase_n = self.reload;
            self.null_count = false;
            self.out = true;
            if self.phase_n <= 1 {
                self.ce = 0;
                return 0;
            }
        } else {
            let rem = self.half_remaining();
            if dt < rem {
                let step = u32::try_from(2 * dt).unwrap_or(u32::MAX);
                self.ce = self.ce.saturating_sub(step);
                return 0;
            }
            dt -= rem;
            let was_low = !self.out;
            self.phase_n = self.reload;
            self.null_count = false;
            if self.phase_n <= 1 {
                self.ce = 0;
                return self.rise();
            }
            self.out = was_low;
            edges += u64::from(was_low);
        }
        // At the start of a half period, `dt` ticks to go.
        let n = u64::from(self.phase_n);
        let high = n.div_ceil(2);
        let low = n / 2;
        let from_period_start = |d: u64| -> (u64, bool, u64) {
            let r = d % n;
            if r < high {
                (d / n, true, r)
            } else {
                (d / n, false, r - high)
            }
        };
        let (more, out, i) = if self.out {
            from_period_start(dt)
        } else if dt < low {
            (0, false, dt)
        } else {
            let (k, out, i) = from_period_start(dt - low);
            (k + 1, out, i)
        };
        edges += more;
        self.out = out;
        let base = u64::from(self.phase_n & !1);
        self.ce = u32::try_from(base.saturating_sub(2 * i)).unwrap_or(0);
        edges
    }

    /// Ticks from now to the next rising edge of OUT, if one will come.
    fn ticks_to_rise(&self) -> Option<u64> {
        if !self.programmed {
            return None;
        }
        if self.load_pending {
            let mut next = self.clone();
            if next.advance(1) > 0 {
                return Some(1);
            }
            return next.ticks_to_rise().map(|t| t.saturating_add(1));
        }
        let mode = self.mode();
        if matches!(mode, 4 | 5) && !self.out {
            return Some(1);
        }
        if !self.enabled() {
            return None;
        }
        let m = self.modulus();
        match mode {
            0 | 1 => self.armed.then(|| ticks_to_zero(self.ce, m)),
            4 | 5 => self.armed.then(|| ticks_to_zero(self.ce, m) + 1),
            2 => {
                let ce = u64::from(self.ce.max(1));
                if self.phase_n > 1 {
                    Some(ce)
                } else {
                    (self.reload > 1).then(|| ce + u64::from(self.reload))
                }
            }
            _ => {
                if self.phase_n <= 1 {
                    (self.reload > 1).then(|| 1 + u64::from(self.reload))
                } else if !self.out {
                    Some(self.half_remaining())
                } else {
                    (self.reload > 1).then(|| self.half_remaining() + u64::from(self.reload / 2))
                }
            }
        }
    }

    /// A control word for this counter (not a latch command); returns rising
    /// edges of OUT.
    fn program(&mut self, v: u8) -> u64 {
        self.access = (v >> 4) & 3;
        self.mode_bits = (v >> 1) & 7;
        self.bcd = v & 1 != 0;
        self.written_lsb = None;
        self.read_msb_next = false;
        self.count_latch = None;
        self.status_latch = None;
        self.programmed = false;
        self.load_pending = false;
        self.armed = false;
        self.write_paused = false;
        self.null_count = true;
        if self.mode() == 0 {
            self.out = false;
            0
        } else {
            self.rise()
        }
    }

    /// A complete count was written.
    fn load_count(&mut self, raw: u16) {
        self.reload = self.decode(raw);
        self.null_count = true;
        self.write_paused = false;
        match self.mode() {
            0 => {
                self.programmed = true;
                self.load_pending = true;
                self.out = false;
            }
            4 => {
                self.programmed = true;
                self.load_pending = true;
            }
            2 | 3 => {
                // A running counter picks the new count up at its next reload.
                if !self.programmed {
                    self.programmed = true;
                    self.load_pending = true;
                }
            }
            // Modes 1 and 5 wait for a gate trigger.
            _ => self.programmed = true,
        }
    }

    fn write_byte(&mut self, v: u8) {
        match self.access {
            1 => self.load_count(u16::from(v)),
            2 => self.load_count(u16::from(v) << 8),
            _ => match self.written_lsb.take() {
                Some(lo) => self.load_count(u16::from_le_bytes([lo, v])),
                None => {
                    self.written_lsb = Some(v);
                    if self.mode() == 0 && self.programmed {
                        self.write_paused = true;
                    }
                }
            },
        }
    }

    fn read_byte(&mut self) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        let latched = self.count_latch.is_some();
        let [lo, hi] = self
            .count_latch
            .unwrap_or_else(|| self.encode(self.ce))
            .to_le_bytes();
        let (byte, done) = match self.access {
            1 => (lo, true),
            2 => (hi, true),
            _ => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    (lo, false)
                } else {
                    (hi, true)
                }
            }
        };
        if latched && done {
            self.count_latch = None;
        }
        byte
    }

    fn latch_count(&mut self) {
        if self.count_latch.is_none() {
            self.count_latch = Some(self.encode(self.ce));
        }
    }

    fn latch_status(&mut self) {
        if self.status_latch.is_none() {
            self.status_latch = Some(self.status());
        }
    }

    /// Drives GATE; returns rising edges of OUT.
    fn set_gate(&mut self, gate: bool) -> u64 {
        if gate == self.gate {
            return 0;
        }
        self.gate = gate;
        match self.mode() {
            2 | 3 if !gate => self.rise(),
            2 | 3 | 1 | 5 if gate && self.programmed => {
                self.load_pending = true;
                0
            }
            _ => 0,
        }
    }

    fn validate(&self) -> Result<(), DeviceStateError> {
        // Binary bounds even in BCD: a control word can switch to BCD while
        // the registers still hold a binary count.
        let m = 65_536;
        if !(1..=3).contains(&self.access)
            || self.mode_bits > 7
            || !(1..=m).contains(&self.reload)
            || self.ce > m
            || self.phase_n > m
        {
            return Err(DeviceStateError::new(
                DEVICE,
                "a counter's state is out of range",
            ));
        }
        Ok(())
    }
}

/// A port-bus entry: (base, length, device).
type PortEntry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

/// Which registers a [`PitPort`] decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitRegs {
    /// Counters 0-2 and the control word (0x40-0x43); carries the snapshot state.
    Counters,
    /// System control port B (0x61).
    PortB,
}

/// The 8254 and port B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pit {
    channels: [Channel; 3],
    /// Port B bits 0-3 as written.
    port_b: u8,
    /// The virtual time last set.
    now_ns: u64,
    /// Rising edges of counter 0's OUT not yet taken.
    irq0_edges: u64,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// A PIT at virtual time 0 with no counter programmed and counter 2's
    /// gate low. The OUTs start high (the data sheet leaves them undefined), so
    /// a guest's first mode 2 or 3 control word raises no stray IRQ0 edge.
    pub fn new() -> Pit {
        Pit {
            channels: [Channel::new(true), Channel::new(true), Channel::new(false)],
            port_b: 0,
            now_ns: 0,
            irq0_edges: 0,
        }
    }

    /// The two port devices to insert on the port bus, as (base, len, device):
    /// the counters at 0x40 and port B at 0x61.
    pub fn ports(pit: &Arc<Mutex<Pit>>) -> [PortEntry; 2] {
        let port = |regs| -> Arc<Mutex<dyn BusDevice>> {
            Arc::new(Mutex::new(PitPort::new(pit.clone(), regs)))
        };
        [
            (
                u64::from(PIT_PORT),
                u64::from(PIT_PORT_LEN),
                port(PitRegs::Counters),
            ),
            (
                u64::from(PORT_B),
                u64::from(PORT_B_LEN),
                port(PitRegs::PortB),
            ),
        ]
    }

    /// Moves the PIT to virtual time `now_ns`. Earlier times are ignored:
    /// virtual time does not go backwards.
    pub fn set_time(&mut self, now_ns: u64) {
        if now_ns <= self.now_ns {
            return;
        }
        let dt = ns_to_ticks(now_ns) - ns_to_ticks(self.now_ns);
        self.now_ns = now_ns;
        for i in 0..3 {
            let edges = self.channels[i].advance(dt);
            self.note_edges(i, edges);
        }
    }

    /// The virtual time last set.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn note_edges(&mut self, channel: usize, edges: u64) {
        if channel == 0 {
            self.irq0_edges = self.irq0_edges.saturating_add(edges);
        }
    }

    /// The virtual time of the next rising edge of counter 0's OUT (IRQ0),
    /// always after the time last set; `None` when none will come without a
    /// new register write.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let ticks = self.channels[0].ticks_to_rise()?;
        Some(tick_to_ns(ns_to_ticks(self.now_ns).saturating_add(ticks)))
    }

    /// The rising edges of counter 0's OUT up to the time last set that were
    /// not taken yet; resets the count.
    pub fn take_irq0_edges(&mut self) -> u64 {
        std::mem::take(&mut self.irq0_edges)
    }

    /// Counter 0's OUT, the IRQ0 line level.
    pub fn irq0_level(&self) -> bool {
        self.channels[0].out
    }

    /// The OUT pin of `channel` (0-2); false for other numbers.
    pub fn out(&self, channel: usize) -> bool {
        self.channels.get(channel).is_some_and(|c| c.out)
    }

    /// Port B as the guest reads it.
    pub fn port_b(&self) -> u8 {
        let refresh = (self.now_ns / REFRESH_TOGGLE_NS) % 2 == 1;
        (self.port_b & 0x0f) | u8::from(refresh) << 4 | u8::from(self.channels[2].out) << 5
    }

    /// Whether the guest drives the speaker (port B bits 0 and 1 set).
    pub fn speaker_on(&self) -> bool {
        self.port_b & 3 == 3
    }

    fn write_port_b(&mut self, v: u8) {
        self.port_b = v & 0x0f;
        let edges = self.channels[2].set_gate(v & 1 != 0);
        self.note_edges(2, edges);
    }

    fn write_control(&mut self, v: u8) {
        let select = usize::from(v >> 6);
        if select == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear statuses.
            for (i, ch) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        ch.latch_count();
                    }
                    if v & 0x10 == 0 {
                        ch.latch_status();
                    }
                }
            }
            return;
        }
        let Some(ch) = self.channels.get_mut(select) else {
            return;
        };
        if (v >> 4) & 3 == 0 {
            ch.latch_count();
        } else {
            let edges = ch.program(v);
            self.note_edges(select, edges);
        }
    }

    fn read_reg(&mut self, regs: PitRegs, offset: u64) -> u8 {
        match (regs, offset) {
            (PitRegs::Counters, 0..=2) => usize::try_from(offset)
                .ok()
                .and_then(|i| self.channels.get_mut(i))
                .map_or(0xff, Channel::read_byte),
            (PitRegs::PortB, 0) => self.port_b(),
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, regs: PitRegs, offset: u64, v: u8) {
        match (regs, offset) {
            (PitRegs::Counters, 0..=2) => {
                if let Some(ch) = usize::try_from(offset)
                    .ok()
                    .and_then(|i| self.channels.get_mut(i))
                {
                    ch.write_byte(v);
                }
            }
            (PitRegs::Counters, 3) => self.write_control(v),
            (PitRegs::PortB, 0) => self.write_port_b(v),
            _ => {}
        }
    }

    /// The whole state, including the virtual time and untaken edges.
    pub fn save(&self) -> DeviceState {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Restores a state [`Pit::save`] produced.
    pub fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let pit: Pit =
            serde_json::from_value(state.clone()).map_err(|e| DeviceStateError::new(DEVICE, e))?;
        for ch in &pit.channels {
            ch.validate()?;
        }
        if !pit.channels[0].gate || !pit.channels[1].gate {
            return Err(DeviceStateError::new(
                DEVICE,
                "counters 0 and 1 must have their gates high",
            ));
        }
        *self = pit;
        Ok(())
    }
}

/// One of the PIT's register blocks on the port bus, sharing the [`Pit`].
pub struct PitPort {
    pit: Arc<Mutex<Pit>>,
    regs: PitRegs,
}

impl PitPort {
    /// A port device for `regs` of `pit`.
    pub fn new(pit: Arc<Mutex<Pit>>, regs: PitRegs) -> Self {
        PitPort { pit, regs }
    }
}

impl BusDevice for PitPort {
    fn name(&self) -> &'static str {
        match self.regs {
            PitRegs::Counters => "pit",
            PitRegs::PortB => "port-b",
        }
    }

    /// Wider accesses are split into byte accesses at consecutive ports, as
    /// the ISA bus does; bytes past the device read all-ones.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pit = lock(&self.pit);
        for (off, b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            *b = pit.read_reg(self.regs, off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let mut pit = lock(&self.pit);
        for (off, &b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            pit.write_reg(self.regs, off, b);
        }
        None
    }

    /// The counters' device carries the whole PIT; port B saves nothing.
    fn save(&self) -> DeviceState {
        match self.regs {
            PitRegs::Counters => lock(&self.pit).save(),
            PitRegs::PortB => DeviceState::Null,
        }
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        match self.regs {
            PitRegs::Counters => lock(&self.pit).restore(state),
            PitRegs::PortB => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's LATCH for HZ=100: (1193182 + 50) / 100.
    const LATCH_100HZ: u16 = 11_932;

    fn out(p: &mut Pit, port: u16, v: u8) {
        if port == PORT_B {
            p.write_reg(PitRegs::PortB, 0, v);
        } else {
            p.write_reg(PitRegs::Counters, u64::from(port - PIT_PORT), v);
        }
    }

    fn inb(p: &mut Pit, port: u16) -> u8 {
        if port == PORT_B {
            p.read_reg(PitRegs::PortB, 0)
        } else {
            p.read_reg(PitRegs::Counters, u64::from(port - PIT_PORT))
        }
    }

    fn program(p: &mut Pit, channel: u8, mode: u8, count: u16) {
        out(p, 0x43, channel << 6 | 0x30 | mode << 1);
        let [lo, hi] = count.to_le_bytes();
        out(p, 0x40 + u16::from(channel), lo);
        out(p, 0x40 + u16::from(channel), hi);
    }

    /// Latches and reads a counter's 16-bit value.
    fn read_latched(p: &mut Pit, channel: u8) -> u16 {
        out(p, 0x43, channel << 6);
        let lo = inb(p, 0x40 + u16::from(channel));
        let hi = inb(p, 0x40 + u16::from(channel));
        u16::from_le_bytes([lo, hi])
    }

    /// Virtual time of tick `t`.
    fn at(t: u64) -> u64 {
        tick_to_ns(t)
    }

    #[test]
    fn tick_conversion_is_exact() {
        assert_eq!(ns_to_ticks(1_000_000_000), PIT_HZ);
        assert_eq!(ns_to_ticks(3_600_000_000_000), PIT_HZ * 3600);
        for t in [0, 1, 2, 11_932, 11_933, 1_193_182, 987_654_321] {
            assert_eq!(ns_to_ticks(tick_to_ns(t)), t);
            if t > 0 {
                assert_eq!(ns_to_ticks(tick_to_ns(t) - 1), t - 1);
            }
        }
        assert!(ns_to_ticks(u64::MAX) > 0);
        assert_eq!(tick_to_ns(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn mode2_at_linux_hz_fires_every_latch_ticks() {
        let mut p = Pit::new();
        assert_eq!(p.next_deadline_ns(), None);
        program(&mut p, 0, 2, LATCH_100HZ);
        assert!(p.irq0_level());
        let n = u64::from(LATCH_100HZ);
        // Written at tick 0, loaded at tick 1, reload (rising edge) N later.
        assert_eq!(p.next_deadline_ns(), Some(at(n + 1)));
        p.set_time(at(n + 1) - 1);
        assert_eq!(p.take_irq0_edges(), 0);
        assert_eq!(read_latched(&mut p, 0), 1, "OUT low while the count is 1");
        assert!(!p.irq0_level());
        p.set_time(at(n + 1));
        assert_eq!(p.take_irq0_edges(), 1);
        assert!(p.irq0_level());
        assert_eq!(read_latched(&mut p, 0), LATCH_100HZ);
        assert_eq!(p.next_deadline_ns(), Some(at(2 * n + 1)));
        // One virtual second is 100 periods (minus the first tick).
        p.set_time(1_000_000_000);
        assert_eq!(p.take_irq0_edges(), 98);
        assert_eq!(p.next_deadline_ns(), Some(at(100 * n + 1)));
        p.set_time(at(100 * n + 1));
        assert_eq!(p.take_irq0_edges(), 1);
        assert_eq!(p.take_irq0_edges(), 0);
    }

    #[test]
    fn mode3_square_wave_at_linux_hz() {
        let mut p = Pit::new();
        program(&mut p, 0, 3, LATCH_100HZ);
        let n = u64::from(LATCH_100HZ);
        assert_eq!(p.next_deadline_ns(), Some(at(n + 1)));
        p.set_time(at(1));
        assert_eq!(read_latched(&mut p, 0), LATCH_100HZ);
        p.set_time(at(2));
        assert_eq!(read_latched(&mut p, 0), LATCH_100HZ - 2, "steps by two");
        p.set_time(at(n / 2));
        assert!(p.irq0_level());
        p.set_time(at(n / 2 + 1));
        assert!(!p.irq0_level(), "low for the second half");
        assert_eq!(read_latched(&mut p, 0), LATCH_100HZ);
        p.set_time(at(n + 1));
        assert!(p.irq0_level());
        assert_eq!(p.take_irq0_edges(), 1);
        p.set_time(at(10 * n + 1));
        assert_eq!(p.take_irq0_edges(), 9);
        // Odd counts: high for (N + 1) / 2 ticks, low for (N - 1) / 2.
        program(&mut p, 0, 3, 5);
        let t0 = ns_to_ticks(p.now_ns());
        p.set_time(at(t0 + 3));
        assert!(p.irq0_level());
        assert_eq!(read_latched(&mut p, 0), 0);
        p.set_time(at(t0 + 4));
        assert!(!p.irq0_level());
        assert_eq!(read_latched(&mut p, 0), 4);
        assert_eq!(p.next_deadline_ns(), Some(at(t0 + 6)));
    }

    #[test]
    fn mode0_is_a_one_shot() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 1000);
        assert!(!p.irq0_level());
        assert_eq!(p.next_deadline_ns(), Some(at(1001)));
        p.set_time(at(501));
        assert_eq!(read_latched(&mut p, 0), 500);
        p.set_time(at(1001));
        assert!(p.irq0_level());
        assert_eq!(p.take_irq0_edges(), 1);
        assert_eq!(p.next_deadline_ns(), None);
        // The counter keeps counting down through zero; OUT stays high.
        p.set_time(at(1003));
        assert_eq!(read_latched(&mut p, 0), 0xfffe);
        p.set_time(at(1_000_000));
        assert_eq!(p.take_irq0_edges(), 0);
        // A new count lowers OUT and starts again.
        program(&mut p, 0, 0, 10);
        assert!(!p.irq0_level());
        assert_eq!(p.next_deadline_ns(), Some(at(1_000_011)));
    }

    #[test]
    fn mode0_two_byte_write_pauses_counting() {
        let mut p = Pit::new();
        program(&mut p, 0, 0, 100);
        p.set_time(at(11));
        out(&mut p, 0x40, 50); // LSB: counting stops
        p.set_time(at(31));
        assert_eq!(read_latched(&mut p, 0), 90);
        assert_eq!(p.next_deadline_ns(), None);
        out(&mut p, 0x40, 0); // MSB: 50 loaded on the next tick
        assert_eq!(p.next_deadline_ns(), Some(at(31 + 51)));
    }

    #[test]
    fn mode4_strobes_for_one_tick() {
        let mut p = Pit::new();
        program(&mut p, 0, 4, 20);
        assert!(p.irq0_level());
        assert_eq!(p.next_deadline_ns(), Some(at(22)));
        p.set_time(at(21));
        assert!(!p.irq0_level());
        assert_eq!(p.take_irq0_edges(), 0);
        p.set_time(at(22));
        assert!(p.irq0_level());
        assert_eq!(p.take_irq0_edges(), 1);
        assert_eq!(p.next_deadline_ns(), None);
        p.set_time(at(200_000));
        assert_eq!(p.take_irq0_edges(), 0, "one strobe per count");
    }

    #[test]
    fn sixteen_bit_access_modes() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x10); // counter 0, LSB only, mode 0
        out(&mut p, 0x40, 0x34);
        assert_eq!(p.next_deadline_ns(), Some(at(0x35)));
        p.set_time(at(5));
        assert_eq!(inb(&mut p, 0x40), 0x30);
        assert_eq!(inb(&mut p, 0x40), 0x30, "LSB every time");
        out(&mut p, 0x43, 0x24); // MSB only, mode 2
        out(&mut p, 0x40, 0x02);
        p.set_time(at(6));
        assert_eq!(inb(&mut p, 0x40), 0x02);
        p.set_time(at(7));
        assert_eq!(inb(&mut p, 0x40), 0x01, "MSB of 0x1ff");
        // LSB then MSB, with the flip-flop shared by latched and live reads.
        out(&mut p, 0x43, 0x34);
        out(&mut p, 0x40, 0x00);
        out(&mut p, 0x40, 0x10);
        p.set_time(at(8));
        assert_eq!(inb(&mut p, 0x40), 0x00);
        assert_eq!(inb(&mut p, 0x40), 0x10);
        // Count 0 is 65536: it reads as 0 right after the load.
        program(&mut p, 0, 2, 0);
        p.set_time(at(9));
        assert_eq!(read_latched(&mut p, 0), 0);
        assert_eq!(p.next_deadline_ns(), Some(at(9 + 65_536)));
    }

    #[test]
    fn latch_holds_the_count_until_read() {
        let mut p = Pit::new();
        program(&mut p, 0, 2, 1000);
        p.set_time(at(101));
        out(&mut p, 0x43, 0x00);
        p.set_time(at(301));
        out(&mut p, 0x43, 0x00); // a second latch is ignored
        assert_eq!(inb(&mut p, 0x40), u16::to_le_bytes(900)[0]);
        p.set_time(at(401));
        assert_eq!(inb(&mut p, 0x40), u16::to_le_bytes(900)[1]);
        assert_eq!(read_latched(&mut p, 0), 600);
    }

    #[test]
    fn read_back_latches_status_and_count() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0xb6); // counter 2, LSB/MSB, mode 3, binary
        assert_eq!(p.channels[2].status(), 0xf6);
        out(&mut p, 0x42, 0x00);
        out(&mut p, 0x42, 0x01);
        out(&mut p, 0x43, 0xc8); // read-back status + count of counter 2
        assert_eq!(inb(&mut p, 0x42), 0xf6, "NULL COUNT before the load");
        p.set_time(at(50));
        // The count was latched at the command, before its load.
        assert_eq!(inb(&mut p, 0x42), 0x00);
        assert_eq!(inb(&mut p, 0x42), 0x00);
        out(&mut p, 0x43, 0xe8); // status only
        assert_eq!(inb(&mut p, 0x42), 0xb6, "loaded, so NULL COUNT is clear");
        // Status of counter 0 and count of counter 0 and 1 in one command.
        program(&mut p, 0, 2, 500);
        program(&mut p, 1, 2, 18);
        p.set_time(at(51 + 100));
        out(&mut p, 0x43, 0xc2); // counter 0, count + status
        out(&mut p, 0x43, 0xd4); // counter 1, count only
        assert_eq!(inb(&mut p, 0x40), 0xb4);
        assert_eq!(
            u16::from_le_bytes([inb(&mut p, 0x40), inb(&mut p, 0x40)]),
            400
        );
        assert_eq!(
            u16::from_le_bytes([inb(&mut p, 0x41), inb(&mut p, 0x41)]),
            18 - (100 % 18)
        );
    }

    #[test]
    fn bcd_counts_in_decimal() {
        let mut p = Pit::new();
        out(&mut p, 0x43, 0x31); // counter 0, LSB/MSB, mode 0, BCD
        out(&mut p, 0x40, 0x00);
        out(&mut p, 0x40, 0x10); // 1000 decimal
        assert_eq!(p.next_deadline_ns(), Some(at(1001)));
        p.set_time(at(1 + 11));
        assert_eq!(read_latched(&mut p, 0), 0x0989);
        p.set_time(at(1002));
        assert_eq!(read_latched(&mut p, 0), 0x9999, "wraps to 9999");
        out(&mut p, 0x43, 0x35); // mode 2, BCD, count 0 = 10000
        out(&mut p, 0x40, 0x00);
        out(&mut p, 0x40, 0x00);
        let t = ns_to_ticks(p.now_ns());
        assert_eq!(p.next_deadline_ns(), Some(at(t + 10_001)));
    }

    #[test]
    fn channel2_gate_and_out_through_port_b() {
        let mut p = Pit::new();
        // Linux's PIT calibration: gate high, speaker off, mode 0 on counter 2.
        let b = inb(&mut p, PORT_B);
        out(&mut p, PORT_B, (b & !0x02) | 0x01);
        out(&mut p, 0x43, 0xb0);
        out(&mut p, 0x42, 0xff);
        out(&mut p, 0x42, 0xff);
        assert_eq!(inb(&mut p, PORT_B) & 0x20, 0);
        p.set_time(at(0xffff));
        assert_eq!(inb(&mut p, PORT_B) & 0x20, 0);
        p.set_time(at(0x10000));
        assert_eq!(inb(&mut p, PORT_B) & 0x21, 0x21, "OUT2 high, gate kept");
        assert_eq!(p.take_irq0_edges(), 0, "counter 2 is not IRQ0");
        // Gate low stops a mode 0 count.
        out(&mut p, 0x43, 0xb0);
        out(&mut p, 0x42, 100);
        out(&mut p, 0x42, 0);
        let t = ns_to_ticks(p.now_ns());
        p.set_time(at(t + 11));
        out(&mut p, PORT_B, 0x00);
        p.set_time(at(t + 1000));
        assert_eq!(read_latched(&mut p, 2), 90);
        out(&mut p, PORT_B, 0x01);
        p.set_time(at(t + 1090));
        assert_eq!(inb(&mut p, PORT_B) & 0x20, 0x20);
        // Mode 1 waits for a gate trigger; OUT low for the count after it.
        out(&mut p, PORT_B, 0x00);
        out(&mut p, 0x43, 0xb2);
        out(&mut p, 0x42, 10);
        out(&mut p, 0x42, 0);
        let t = ns_to_ticks(p.now_ns());
        p.set_time(at(t + 50));
        assert!(p.out(2));
        out(&mut p, PORT_B, 0x01);
        p.set_time(at(t + 51));
        assert!(!p.out(2));
        p.set_time(at(t + 60));
        assert!(!p.out(2));
        p.set_time(at(t + 61));
        assert!(p.out(2));
        // Mode 2: gate low forces OUT high and the rising gate reloads.
        out(&mut p, 0x43, 0xb4);
        out(&mut p, 0x42, 10);
        out(&mut p, 0x42, 0);
        let t = ns_to_ticks(p.now_ns());
        p.set_time(at(t + 5));
        out(&mut p, PORT_B, 0x00);
        out(&mut p, PORT_B, 0x01);
        p.set_time(at(t + 6));
        assert_eq!(read_latched(&mut p, 2), 10);
    }

    #[test]
    fn refresh_bit_toggles_on_virtual_time() {
        let mut p = Pit::new();
        out(&mut p, PORT_B, 0x03);
        assert!(p.speaker_on());
        assert_eq!(inb(&mut p, PORT_B) & 0x1f, 0x03);
        p.set_time(REFRESH_TOGGLE_NS - 1);
        assert_eq!(inb(&mut p, PORT_B) & 0x10, 0);
        p.set_time(REFRESH_TOGGLE_NS);
        assert_eq!(inb(&mut p, PORT_B) & 0x10, 0x10);
        p.set_time(2 * REFRESH_TOGGLE_NS);
        assert_eq!(inb(&mut p, PORT_B) & 0x10, 0);
    }

    #[test]
    fn state_round_trips_mid_count() {
        let pit = Arc::new(Mutex::new(Pit::new()));
        let mut bus = crate::devices::bus::Bus::new();
        for (base, len, dev) in Pit::ports(&pit) {
            bus.insert(base, len, dev).unwrap();
        }
        bus.write(0x43, &[0x34]);
        bus.write(0x40, &[0x9c]); // 11932
        bus.write(0x40, &[0x2e]);
        bus.write(0x61, &[0x01]);
        lock(&pit).set_time(at(5000));
        bus.write(0x43, &[0x00]); // latch, unread
        let saved = bus.save();
        let reference = {
            let mut p = lock(&pit).clone();
            p.set_time(1_000_000_000);
            (p.take_irq0_edges(), p.next_deadline_ns(), p.read_byte_of(0))
        };
        lock(&pit).set_time(2_000_000_000);
        bus.write(0x43, &[0x30]);
        let pit2 = Arc::new(Mutex::new(Pit::new()));
        let mut bus2 = crate::devices::bus::Bus::new();
        for (base, len, dev) in Pit::ports(&pit2) {
            bus2.insert(base, len, dev).unwrap();
        }
        bus2.restore(&saved).unwrap();
        let mut p = lock(&pit2);
        assert_eq!(p.now_ns(), at(5000));
        p.set_time(1_000_000_000);
        assert_eq!(
            (p.take_irq0_edges(), p.next_deadline_ns(), p.read_byte_of(0)),
            reference
        );
        let mut bad = saved[0].2.clone();
        bad["channels"][1]["access"] = serde_json::json!(0);
        assert!(p.restore(&bad).is_err());
        assert!(p.restore(&serde_json::json!(null)).is_err());
    }

    impl Pit {
        fn read_byte_of(&mut self, channel: u64) -> u8 {
            self.read_reg(PitRegs::Counters, channel)
        }
    }

    /// A small deterministic generator for the consistency checks.
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

    /// Channels in assorted states (every mode, small and odd counts, BCD,
    /// gate low, pending loads, mid-count).
    fn sample_channels() -> Vec<Channel> {
        let mut rng = Lcg(7);
        let mut v = Vec::new();
        for mode in 0..6u8 {
            for count in [0u16, 1, 2, 3, 4, 5, 7, 10, 0x99] {
                for bcd in [false, true] {
                    for gate in [true, false] {
                        let mut c = Channel::new(gate);
                        let mut edges = c.program(0x30 | mode << 1 | u8::from(bcd));
                        c.load_count(count);
                        if matches!(mode, 1 | 5) {
                            c.set_gate(!gate);
                            edges += c.set_gate(true);
                        }
                        let _ = edges;
                        for _ in 0..3 {
                            v.push(c.clone());
                            c.advance(rng.next(40));
                            if rng.next(4) == 0 {
                                c.load_count(u16::try_from(rng.next(9)).unwrap());
                            }
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn advance_composes_tick_by_tick() {
        let mut rng = Lcg(1);
        for start in sample_channels() {
            let total = rng.next(200);
            let mut stepped = start.clone();
            let mut edges = 0;
            for _ in 0..total {
                edges += stepped.advance(1);
            }
            let mut jumped = start.clone();
            let jumped_edges = jumped.advance(total);
            assert_eq!(
                (jumped_edges, &jumped),
                (edges, &stepped),
                "{start:?} by {total}"
            );
            // And in random pieces.
            let mut pieces = start.clone();
            let (mut left, mut e) = (total, 0);
            while left > 0 {
                let d = 1 + rng.next(left);
                e += pieces.advance(d);
                left -= d;
            }
            assert_eq!((e, &pieces), (edges, &stepped));
        }
    }

    #[test]
    fn next_rise_matches_stepping() {
        for start in sample_channels() {
            let expect = {
                let mut c = start.clone();
                (1..=40_000u64).find(|_| c.advance(1) > 0)
            };
            let got = start.ticks_to_rise().filter(|&t| t <= 40_000);
            assert_eq!(got, expect, "{start:?}");
        }
    }

    #[test]
    fn random_accesses_are_safe_and_independent_of_sync_rate() {
        let mut rng = Lcg(11);
        // `fine` is synced at every step, `coarse` only before accesses.
        let (mut fine, mut coarse) = (Pit::new(), Pit::new());
        let (mut now, mut fine_edges, mut coarse_edges) = (0u64, 0, 0);
        for _ in 0..20_000 {
            now = now.saturating_add(match rng.next(4) {
                0 => rng.next(2_000),
                1 => rng.next(100_000),
                2 => rng.next(100_000_000),
                _ => 0,
            });
            fine.set_time(now);
            fine_edges += fine.take_irq0_edges();
            if rng.next(3) == 0 {
                continue;
            }
            coarse.set_time(now);
            coarse_edges += coarse.take_irq0_edges();
            // Bias the writes towards sensible control words.
            let (regs, offset) = match rng.next(8) {
                0 => (PitRegs::PortB, 0),
                _ => (PitRegs::Counters, rng.next(4)),
            };
            let v = u8::try_from(rng.next(256)).unwrap();
            if rng.next(2) == 0 {
                fine.write_reg(regs, offset, v);
                coarse.write_reg(regs, offset, v);
            } else {
                assert_eq!(fine.read_reg(regs, offset), coarse.read_reg(regs, offset));
            }
            assert_eq!(fine.next_deadline_ns(), coarse.next_deadline_ns());
            assert_eq!(fine, coarse);
        }
        assert_eq!(fine_edges, coarse_edges);
        let mut back = Pit::new();
        back.restore(&fine.save()).unwrap();
        assert_eq!(back, fine);
        fine.set_time(u64::MAX);
        let _ = fine.next_deadline_ns();
    }
}
