//! The PC's pair of 8259A programmable interrupt controllers: the master at
//! ports 0x20-0x21 and the slave at 0xA0-0xA1, cascaded on the master's IR2,
//! plus the PIIX edge/level control registers (ELCR) at 0x4D0-0x4D1.
//!
//! # Wiring
//!
//! One [`Pic`] holds both chips and the ELCR. The run loop keeps it as
//! `Arc<Mutex<Pic>>` and drives it with [`Pic::set_irq`], [`Pic::has_pending`]
//! and [`Pic::acknowledge`]; the port bus reaches the same state through three
//! small [`PicPort`] devices built by [`Pic::ports`]:
//!
//! ```ignore
//! let pic = Arc::new(Mutex::new(Pic::new()));
//! for (base, len, port) in Pic::ports(&pic) {
//!     pio_bus.insert(base, len, port)?;
//! }
//! ```
//!
//! The master's port device carries the whole state in snapshots; the slave's
//! and the ELCR's save `null` and ignore what they are given back, so the state
//! is saved once and restored once. Never hold the `Pic` lock while calling the
//! bus: the port devices take it.
//!
//! # Model
//!
//! - Inputs latch into IRR on a rising edge (edge-triggered) or follow the line
//!   (level-triggered). A line is level-triggered when its ELCR bit is set or
//!   the chip was initialised with ICW1.LTIM. The ELCR bits of IRQ0, 1, 2, 8 and
//!   13 are fixed at 0 (edge), as on the PIIX. An edge-triggered request stays
//!   latched in IRR even if the line drops before the acknowledge (the run loop
//!   pulses lines), so a spurious vector only comes from a level-triggered line
//!   that dropped, or from an acknowledge with nothing pending.
//! - ICW1-ICW4, OCW1-OCW3 as in the 8259A data sheet: vector base from ICW2
//!   bits 7-3, single or cascade mode, ICW4 optional, auto-EOI, special fully
//!   nested mode, non-specific/specific EOI, all rotate commands, set priority,
//!   read IRR/ISR, poll, special mask mode. The buffered-mode bits and the
//!   8086/MCS-80 bit are kept and read back but change nothing: vectors are
//!   always delivered 8086-style.
//! - The slave sits on the master's IR2 (the PC wiring). When the master's
//!   ICW3 has bit 2 set, an acknowledge of IR2 takes the vector from the slave.
//!   In cascade mode `set_irq(2, ..)` is ignored: the slave's INT output drives
//!   that input.
//! - Until the master has finished its ICW sequence the pair raises nothing:
//!   [`Pic::has_pending`] is false and [`Pic::acknowledge`] returns `None`.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::bus::{lock, BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// Base port of the master 8259A.
pub const MASTER_PORT: u16 = 0x20;
/// Base port of the slave 8259A.
pub const SLAVE_PORT: u16 = 0xa0;
/// Number of ports each 8259A decodes.
pub const PIC_PORT_LEN: u16 = 2;
/// Base port of the edge/level control registers (0x4D0 master, 0x4D1 slave).
pub const ELCR_PORT: u16 = 0x4d0;
/// Number of ELCR ports.
pub const ELCR_PORT_LEN: u16 = 2;
/// The master input the slave's INT output drives.
pub const CASCADE_IRQ: u8 = 2;

/// Writable ELCR bits per chip: IRQ0-2 and IRQ8, IRQ13 are always edge.
const ELCR_MASK: [u8; 2] = [0xf8, 0xde];

const DEVICE: &str = "pic";

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Chip {
    /// Interrupt request register.
    irr: u8,
    /// In-service register.
    isr: u8,
    /// Interrupt mask register (OCW1).
    imr: u8,
    /// Current input levels (edge detection, level-triggered IRR).
    lines: u8,
    /// Edge/level control register: 1 = level-triggered.
    elcr: u8,
    /// Vector of IR0 (ICW2 & 0xf8).
    vector_base: u8,
    /// Next ICW expected on the data port (2, 3, 4) or 0 when initialised.
    init_step: u8,
    /// The ICW sequence has completed at least once since the last ICW1.
    ready: bool,
    /// ICW1.IC4.
    icw4_needed: bool,
    /// ICW1.SNGL: no cascade.
    single: bool,
    /// ICW1.LTIM: every input level-triggered.
    ltim: bool,
    /// ICW3: slave mask (master) or slave id (slave).
    icw3: u8,
    /// ICW4.uPM (kept, no effect).
    mode_8086: bool,
    /// ICW4.AEOI.
    auto_eoi: bool,
    /// ICW4.SFNM.
    sfnm: bool,
    /// ICW4.BUF and M/S bits (kept, no effect).
    buffered: u8,
    /// OCW3: port 0 reads ISR instead of IRR.
    read_isr: bool,
    /// OCW3: the next read is a poll.
    poll: bool,
    /// OCW3: special mask mode.
    special_mask: bool,
    /// The input with the lowest priority (7 in fixed priority).
    lowest: u8,
    /// OCW2: rotate on automatic EOI.
    rotate_on_aeoi: bool,
}

impl Chip {
    fn new() -> Chip {
        Chip {
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            vector_base: 0,
            init_step: 0,
            ready: false,
            icw4_needed: false,
            single: false,
            ltim: false,
            icw3: 0,
            mode_8086: false,
            auto_eoi: false,
            sfnm: false,
            buffered: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            lowest: 7,
            rotate_on_aeoi: false,
        }
    }

    fn level_mask(&self) -> u8 {
        self.elcr | if self.ltim { 0xff } else { 0 }
    }

    fn set_line(&mut self, irq: u8, level: bool) {
        let bit = 1u8 << (irq & 7);
        if self.level_mask() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && self.lines & bit == 0 {
            self.irr |= bit;
        }
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
    }

    /// Re-derives IRR for level-triggered inputs after a trigger-mode change.
    fn resync_levels(&mut self) {
        let level = self.level_mask();
        self.irr = (self.irr & !level) | (self.lines & level);
    }

    /// Priority rank of `irq`: 0 is the highest.
    fn rank(&self, irq: u8) -> u8 {
        irq.wrapping_sub(self.lowest).wrapping_sub(1) & 7
    }

    /// The highest-priority input set in `mask`.
    fn highest(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|r| self.lowest.wrapping_add(1).wrapping_add(r) & 7)
            .find(|&irq| mask & (1 << irq) != 0)
    }

    /// The request this chip would raise INT for: the highest unmasked
    /// request that no in-service input of equal or higher priority blocks.
    fn pending(&self, is_master: bool) -> Option<u8> {
        let irq = self.highest(self.irr & !self.imr)?;
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        // Special fully nested mode: a slave in service does not lock out
        // further (higher-priority) requests from the same slave.
        let nested_ok = is_master && self.sfnm && !self.single && irq == CASCADE_IRQ;
        match self.highest(in_service) {
            Some(cur) if self.rank(cur) < self.rank(irq) => None,
            Some(cur) if cur == irq && !nested_ok => None,
            _ => Some(irq),
        }
    }

    /// The INTA (or poll) side of accepting `irq`.
    fn ack(&mut self, irq: u8) {
        let bit = 1u8 << (irq & 7);
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
        if self.auto_eoi {
            if self.rotate_on_aeoi {
                self.lowest = irq & 7;
            }
        } else {
            self.isr |= bit;
        }
    }

    /// The in-service input a non-specific EOI clears.
    fn eoi_target(&self) -> Option<u8> {
        let mut m = self.isr;
        if self.special_mask {
            m &= !self.imr;
        }
        self.highest(m)
    }

    fn write_icw1(&mut self, v: u8) {
        self.icw4_needed = v & 0x01 != 0;
        self.single = v & 0x02 != 0;
        self.ltim = v & 0x08 != 0;
        self.imr = 0;
        self.isr = 0;
        // The edge sense latches reset: an input that is high now must fall
        // and rise again before it requests (level inputs follow the line).
        self.irr = self.lines & self.level_mask();
        self.lowest = 7;
        self.special_mask = false;
        self.read_isr = false;
        self.poll = false;
        self.rotate_on_aeoi = false;
        if !self.icw4_needed {
            self.mode_8086 = false;
            self.auto_eoi = false;
            self.sfnm = false;
            self.buffered = 0;
        }
        self.init_step = 2;
        self.ready = false;
    }

    fn write_ocw2(&mut self, v: u8) {
        let level = v & 7;
        match v >> 5 {
            // Non-specific EOI.
            0b001 => {
                if let Some(irq) = self.eoi_target() {
                    self.isr &= !(1 << irq);
                }
            }
            // Specific EOI.
            0b011 => self.isr &= !(1 << level),
            // Rotate on non-specific EOI.
            0b101 => {
                if let Some(irq) = self.eoi_target() {
                    self.isr &= !(1 << irq);
                    self.lowest = irq;
                }
            }
            // Set / clear rotate in automatic EOI mode.
            0b100 => self.rotate_on_aeoi = true,
            0b000 => self.rotate_on_aeoi = false,
            // Rotate on specific EOI.
            0b111 => {
                self.isr &= !(1 << level);
                self.lowest = level;
            }
            // Set priority.
            0b110 => self.lowest = level,
            // 0b010: no operation.
            _ => {}
        }
    }

    fn write_ocw3(&mut self, v: u8) {
        if v & 0x04 != 0 {
            self.poll = true;
        }
        if v & 0x02 != 0 {
            self.read_isr = v & 0x01 != 0;
        }
        if v & 0x40 != 0 {
            self.special_mask = v & 0x20 != 0;
        }
    }

    /// A write to the data port: an ICW while initialising, else OCW1.
    fn write_data(&mut self, v: u8) {
        let step = self.init_step;
        match step {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_step = if !self.single {
                    3
                } else if self.icw4_needed {
                    4
                } else {
                    0
                };
            }
            3 => {
                self.icw3 = v;
                self.init_step = if self.icw4_needed { 4 } else { 0 };
            }
            4 => {
                self.mode_8086 = v & 0x01 != 0;
                self.auto_eoi = v & 0x02 != 0;
                self.buffered = (v >> 2) & 3;
                self.sfnm = v & 0x10 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
        if step != 0 && self.init_step == 0 {
            self.ready = true;
        }
    }

    fn validate(&self) -> Result<(), DeviceStateError> {
        if self.lowest > 7 || !matches!(self.init_step, 0 | 2 | 3 | 4) || self.buffered > 3 {
            return Err(DeviceStateError::new(
                DEVICE,
                "a chip's state is out of range",
            ));
        }
        Ok(())
    }
}

/// A port-bus entry: (base, length, device).
type PortEntry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

/// Which registers a [`PicPort`] decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicRegs {
    /// The master 8259A (0x20-0x21); carries the snapshot state.
    Master,
    /// The slave 8259A (0xA0-0xA1).
    Slave,
    /// The two ELCR bytes (0x4D0 master, 0x4D1 slave).
    Elcr,
}

/// The master/slave 8259A pair and its ELCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Default for Pic {
    fn default() -> Self {
        Self::new()
    }
}

impl Pic {
    /// A pair at power-on: not initialised, no requests, all lines low.
    pub fn new() -> Pic {
        Pic {
            master: Chip::new(),
            slave: Chip::new(),
        }
    }

    /// The three port devices to insert on the port bus, as
    /// (base, len, device): master at 0x20, slave at 0xA0, ELCR at 0x4D0.
    pub fn ports(pic: &Arc<Mutex<Pic>>) -> [PortEntry; 3] {
        let port = |regs| -> Arc<Mutex<dyn BusDevice>> {
            Arc::new(Mutex::new(PicPort::new(pic.clone(), regs)))
        };
        [
            (
                u64::from(MASTER_PORT),
                u64::from(PIC_PORT_LEN),
                port(PicRegs::Master),
            ),
            (
                u64::from(SLAVE_PORT),
                u64::from(PIC_PORT_LEN),
                port(PicRegs::Slave),
            ),
            (
                u64::from(ELCR_PORT),
                u64::from(ELCR_PORT_LEN),
                port(PicRegs::Elcr),
            ),
        ]
    }

    fn cascaded(&self) -> bool {
        !self.master.single
    }

    /// Drives input `line` (0-7 master, 8-15 slave) to `level`. Edge-triggered
    /// inputs latch a request on a rising edge; level-triggered ones request
    /// while high. Lines above 15, and line 2 in cascade mode, are ignored.
    pub fn set_irq(&mut self, line: u8, level: bool) {
        match line {
            CASCADE_IRQ if self.cascaded() => return,
            0..=7 => self.master.set_line(line, level),
            8..=15 => self.slave.set_line(line - 8, level),
            _ => return,
        }
        self.update_cascade();
    }

    /// Feeds the slave's INT output into the master's IR2.
    fn update_cascade(&mut self) {
        if self.cascaded() {
            let out = self.slave.ready && self.slave.pending(false).is_some();
            self.master.set_line(CASCADE_IRQ, out);
        }
    }

    /// The master's INT output: an unmasked request that in-service priority
    /// does not block. False until the master is initialised.
    pub fn has_pending(&self) -> bool {
        self.master.ready && self.master.pending(true).is_some()
    }

    /// The INTA cycle: moves the highest-priority request to in-service (not
    /// with auto-EOI), goes through the slave for IR2, and returns the vector.
    /// With nothing pending the master answers with its IR7 vector, and a
    /// slave selected through IR2 with nothing pending answers with its IR7
    /// vector (IRQ15) while the master's IR2 goes in service, as the real
    /// chips do. `None` only while the master is not initialised.
    pub fn acknowledge(&mut self) -> Option<u8> {
        if !self.master.ready {
            return None;
        }
        let Some(irq) = self.master.pending(true) else {
            return Some(self.master.vector_base | 7);
        };
        self.master.ack(irq);
        let through_slave =
            irq == CASCADE_IRQ && self.cascaded() && self.master.icw3 & (1 << CASCADE_IRQ) != 0;
        let vector = if through_slave {
            match self.slave.pending(false).filter(|_| self.slave.ready) {
                Some(s) => {
                    self.slave.ack(s);
                    self.slave.vector_base | s
                }
                None => self.slave.vector_base | 7,
            }
        } else {
            self.master.vector_base | irq
        };
        self.update_cascade();
        Some(vector)
    }

    /// Interrupt request registers: master in bits 0-7, slave in 8-15.
    pub fn irr(&self) -> u16 {
        u16::from_le_bytes([self.master.irr, self.slave.irr])
    }

    /// In-service registers: master in bits 0-7, slave in 8-15.
    pub fn isr(&self) -> u16 {
        u16::from_le_bytes([self.master.isr, self.slave.isr])
    }

    /// Mask registers: master in bits 0-7, slave in 8-15.
    pub fn imr(&self) -> u16 {
        u16::from_le_bytes([self.master.imr, self.slave.imr])
    }

    /// Edge/level control: master in bits 0-7, slave in 8-15; 1 = level.
    pub fn elcr(&self) -> u16 {
        u16::from_le_bytes([self.master.elcr, self.slave.elcr])
    }

    /// Sets the ELCR (as firmware does for PCI interrupts); the bits of IRQ0,
    /// 1, 2, 8 and 13 stay 0.
    pub fn set_elcr(&mut self, value: u16) {
        let [m, s] = value.to_le_bytes();
        self.write_elcr(0, m);
        self.write_elcr(1, s);
    }

    /// The vector bases (ICW2) of the master and the slave.
    pub fn vector_bases(&self) -> (u8, u8) {
        (self.master.vector_base, self.slave.vector_base)
    }

    fn chip(&mut self, slave: bool) -> &mut Chip {
        if slave {
            &mut self.slave
        } else {
            &mut self.master
        }
    }

    fn write_elcr(&mut self, index: usize, v: u8) {
        let Some(&mask) = ELCR_MASK.get(index) else {
            return;
        };
        let chip = self.chip(index == 1);
        chip.elcr = v & mask;
        chip.resync_levels();
        self.update_cascade();
    }

    /// A read of port `offset` (0 or 1) of one chip.
    fn read_chip(&mut self, slave: bool, offset: u64) -> u8 {
        let is_master = !slave;
        let chip = self.chip(slave);
        if chip.poll {
            chip.poll = false;
            let word = match chip.pending(is_master) {
                Some(irq) => {
                    chip.ack(irq);
                    0x80 | irq
                }
                None => 0,
            };
            self.update_cascade();
            return word;
        }
        match (offset, chip.read_isr) {
            (0, true) => chip.isr,
            (0, false) => chip.irr,
            _ => chip.imr,
        }
    }

    /// A write to port `offset` (0 or 1) of one chip.
    fn write_chip(&mut self, slave: bool, offset: u64, v: u8) {
        let chip = self.chip(slave);
        if offset == 0 {
            if v & 0x10 != 0 {
                chip.write_icw1(v);
            } else if v & 0x08 != 0 {
                chip.write_ocw3(v);
            } else {
                chip.write_ocw2(v);
            }
        } else {
            chip.write_data(v);
        }
        self.update_cascade();
    }

    fn read_reg(&mut self, regs: PicRegs, offset: u64) -> u8 {
        match (regs, offset) {
            (PicRegs::Master, 0 | 1) => self.read_chip(false, offset),
            (PicRegs::Slave, 0 | 1) => self.read_chip(true, offset),
            (PicRegs::Elcr, 0) => self.master.elcr,
            (PicRegs::Elcr, 1) => self.slave.elcr,
            _ => 0xff,
        }
    }

    fn write_reg(&mut self, regs: PicRegs, offset: u64, v: u8) {
        match (regs, offset) {
            (PicRegs::Master, 0 | 1) => self.write_chip(false, offset, v),
            (PicRegs::Slave, 0 | 1) => self.write_chip(true, offset, v),
            (PicRegs::Elcr, 0) => self.write_elcr(0, v),
            (PicRegs::Elcr, 1) => self.write_elcr(1, v),
            _ => {}
        }
    }

    /// The whole state of both chips and the ELCR.
    pub fn save(&self) -> DeviceState {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// Restores a state [`Pic::save`] produced.
    pub fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let mut pic: Pic =
            serde_json::from_value(state.clone()).map_err(|e| DeviceStateError::new(DEVICE, e))?;
        pic.master.validate()?;
        pic.slave.validate()?;
        pic.master.elcr &= ELCR_MASK[0];
        pic.slave.elcr &= ELCR_MASK[1];
        *self = pic;
        Ok(())
    }
}

/// One of the pair's register blocks on the port bus, sharing the [`Pic`].
pub struct PicPort {
    pic: Arc<Mutex<Pic>>,
    regs: PicRegs,
}

impl PicPort {
    /// A port device for `regs` of `pic`.
    pub fn new(pic: Arc<Mutex<Pic>>, regs: PicRegs) -> Self {
        PicPort { pic, regs }
    }
}

impl BusDevice for PicPort {
    fn name(&self) -> &'static str {
        match self.regs {
            PicRegs::Master => "pic-master",
            PicRegs::Slave => "pic-slave",
            PicRegs::Elcr => "elcr",
        }
    }

    /// Wider accesses are split into byte accesses at consecutive ports, as
    /// the ISA bus does; bytes past the device read all-ones.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut pic = lock(&self.pic);
        for (off, b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            *b = pic.read_reg(self.regs, off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let mut pic = lock(&self.pic);
        for (off, &b) in (0u64..).map(|i| offset.saturating_add(i)).zip(data) {
            pic.write_reg(self.regs, off, b);
        }
        None
    }

    /// The master's port carries the whole pair; the others save nothing.
    fn save(&self) -> DeviceState {
        match self.regs {
            PicRegs::Master => lock(&self.pic).save(),
            PicRegs::Slave | PicRegs::Elcr => DeviceState::Null,
        }
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        match self.regs {
            PicRegs::Master => lock(&self.pic).restore(state),
            PicRegs::Slave | PicRegs::Elcr => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::bus::Bus;

    /// A bus with the pair on it, and the shared state.
    fn machine() -> (Bus, Arc<Mutex<Pic>>) {
        let pic = Arc::new(Mutex::new(Pic::new()));
        let mut bus = Bus::new();
        for (base, len, dev) in Pic::ports(&pic) {
            bus.insert(base, len, dev).unwrap();
        }
        (bus, pic)
    }

    fn outb(bus: &mut Bus, port: u16, v: u8) {
        bus.write(u64::from(port), &[v]);
    }

    fn inb(bus: &mut Bus, port: u16) -> u8 {
        let mut b = [0u8];
        bus.read(u64::from(port), &mut b);
        b[0]
    }

    /// The BIOS/Linux sequence: ICW1=0x11, ICW2=0x20/0x28, ICW3=4/2, ICW4=icw4.
    fn init(bus: &mut Bus, icw4: u8) {
        outb(bus, 0x20, 0x11);
        outb(bus, 0x21, 0x20);
        outb(bus, 0x21, 0x04);
        outb(bus, 0x21, icw4);
        outb(bus, 0xa0, 0x11);
        outb(bus, 0xa1, 0x28);
        outb(bus, 0xa1, 0x02);
        outb(bus, 0xa1, icw4);
    }

    fn pulse(pic: &Arc<Mutex<Pic>>, line: u8) {
        let mut p = lock(pic);
        p.set_irq(line, true);
        p.set_irq(line, false);
    }

    fn ack(pic: &Arc<Mutex<Pic>>) -> Option<u8> {
        lock(pic).acknowledge()
    }

    fn pending(pic: &Arc<Mutex<Pic>>) -> bool {
        lock(pic).has_pending()
    }

    #[test]
    fn init_sequence_sets_bases_and_masks() {
        let (mut bus, pic) = machine();
        // Requests before initialisation raise nothing.
        pulse(&pic, 1);
        assert!(!pending(&pic));
        assert_eq!(ack(&pic), None);
        init(&mut bus, 0x01);
        outb(&mut bus, 0x21, 0xfb);
        outb(&mut bus, 0xa1, 0xff);
        assert_eq!(inb(&mut bus, 0x21), 0xfb);
        assert_eq!(inb(&mut bus, 0xa1), 0xff);
        let p = lock(&pic);
        assert_eq!(p.vector_bases(), (0x20, 0x28));
        assert_eq!(p.imr(), 0xfffb);
        // ICW1 cleared the request latched before it.
        assert_eq!(p.irr(), 0);
        assert!(!p.has_pending());
    }

    #[test]
    fn acknowledge_follows_priority_and_eoi() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        pulse(&pic, 3);
        pulse(&pic, 1);
        assert!(pending(&pic));
        assert_eq!(ack(&pic), Some(0x21));
        // IRQ3 has a lower priority than the IRQ1 in service.
        assert!(!pending(&pic));
        assert_eq!(lock(&pic).isr(), 0x0002);
        // A higher-priority request nests.
        pulse(&pic, 0);
        assert_eq!(ack(&pic), Some(0x20));
        assert_eq!(lock(&pic).isr(), 0x0003);
        outb(&mut bus, 0x20, 0x20); // non-specific EOI clears IRQ0
        assert_eq!(lock(&pic).isr(), 0x0002);
        assert!(!pending(&pic));
        outb(&mut bus, 0x20, 0x61); // specific EOI for IRQ1
        assert!(pending(&pic));
        assert_eq!(ack(&pic), Some(0x23));
        outb(&mut bus, 0x20, 0x20);
        assert_eq!(lock(&pic).isr(), 0);
        assert!(!pending(&pic));
    }

    #[test]
    fn masked_requests_wait_for_unmask() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        outb(&mut bus, 0x21, 0x10);
        pulse(&pic, 4);
        assert!(!pending(&pic));
        assert_eq!(lock(&pic).irr(), 0x0010);
        outb(&mut bus, 0x21, 0x00);
        assert_eq!(ack(&pic), Some(0x24));
    }

    #[test]
    fn slave_requests_cascade_through_irq2() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        outb(&mut bus, 0x21, 0xfb);
        outb(&mut bus, 0xa1, 0xef); // only IRQ12
        pulse(&pic, 12);
        pulse(&pic, 14); // masked
        assert!(pending(&pic));
        assert_eq!(ack(&pic), Some(0x2c));
        assert_eq!(lock(&pic).isr(), 0x1004);
        outb(&mut bus, 0xa1, 0xaf); // unmask IRQ14 too
        outb(&mut bus, 0xa0, 0x20);
        // The master still has IR2 in service.
        assert!(!pending(&pic));
        outb(&mut bus, 0x20, 0x20);
        assert!(pending(&pic));
        assert_eq!(ack(&pic), Some(0x2e));
        // set_irq(2) is not a line in cascade mode.
        lock(&pic).set_irq(2, true);
        assert_eq!(lock(&pic).irr() & 0x4, 0);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x03);
        pulse(&pic, 5);
        pulse(&pic, 9);
        assert_eq!(ack(&pic), Some(0x29));
        assert_eq!(ack(&pic), Some(0x25));
        assert_eq!(lock(&pic).isr(), 0);
        assert!(!pending(&pic));
    }

    #[test]
    fn spurious_irq7_and_irq15() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        // Level-triggered IRQ5 and IRQ10 drop before the INTA cycle.
        outb(&mut bus, 0x4d0, 0x20);
        outb(&mut bus, 0x4d1, 0x04);
        assert_eq!(inb(&mut bus, 0x4d0), 0x20);
        lock(&pic).set_irq(5, true);
        assert!(pending(&pic));
        lock(&pic).set_irq(5, false);
        assert_eq!(ack(&pic), Some(0x27));
        assert_eq!(lock(&pic).isr(), 0, "a spurious IRQ7 is not in service");
        lock(&pic).set_irq(10, true);
        assert!(pending(&pic));
        lock(&pic).set_irq(10, false);
        // The master latched IR2 (edge); the slave has nothing left.
        assert_eq!(ack(&pic), Some(0x2f));
        assert_eq!(lock(&pic).isr(), 0x0004, "the master's IR2 needs an EOI");
        // And with nothing at all pending, the master answers IR7.
        outb(&mut bus, 0x20, 0x20);
        assert_eq!(ack(&pic), Some(0x27));
    }

    #[test]
    fn level_inputs_refire_edge_inputs_do_not() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        outb(&mut bus, 0x4d1, 0x08); // IRQ11 level
        outb(&mut bus, 0x4d0, 0x07); // reserved bits stay edge
        assert_eq!(lock(&pic).elcr(), 0x0800);
        lock(&pic).set_irq(11, true);
        lock(&pic).set_irq(4, true);
        // IR2 (the slave) has priority over IR4.
        assert_eq!(ack(&pic), Some(0x2b));
        outb(&mut bus, 0xa0, 0x20);
        outb(&mut bus, 0x20, 0x20);
        // IRQ11 is still high: it requests again.
        assert_eq!(ack(&pic), Some(0x2b));
        lock(&pic).set_irq(11, false);
        outb(&mut bus, 0xa0, 0x20);
        outb(&mut bus, 0x20, 0x20);
        assert_eq!(ack(&pic), Some(0x24));
        outb(&mut bus, 0x20, 0x20);
        assert!(!pending(&pic));
        // IRQ4 is still high, but only a rising edge latches a request.
        lock(&pic).set_irq(4, true);
        assert!(!pending(&pic));
        lock(&pic).set_irq(4, false);
        lock(&pic).set_irq(4, true);
        assert_eq!(ack(&pic), Some(0x24));
    }

    #[test]
    fn ocw3_reads_irr_isr_and_polls() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        pulse(&pic, 6);
        pulse(&pic, 3);
        assert_eq!(inb(&mut bus, 0x20), 0x48, "IRR by default");
        outb(&mut bus, 0x20, 0x0b); // read ISR
        assert_eq!(inb(&mut bus, 0x20), 0x00);
        outb(&mut bus, 0x20, 0x0c); // poll
        assert_eq!(inb(&mut bus, 0x20), 0x83);
        assert_eq!(inb(&mut bus, 0x20), 0x08, "ISR after the poll");
        outb(&mut bus, 0x20, 0x0a); // read IRR
        assert_eq!(inb(&mut bus, 0x20), 0x40);
        outb(&mut bus, 0x20, 0x20);
        outb(&mut bus, 0x20, 0x0c);
        assert_eq!(inb(&mut bus, 0x21), 0x86, "poll reads from either port");
        outb(&mut bus, 0x20, 0x20);
        outb(&mut bus, 0x20, 0x0c);
        assert_eq!(inb(&mut bus, 0x20), 0x00);
    }

    #[test]
    fn rotation_and_set_priority() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        outb(&mut bus, 0x20, 0xc4); // set priority: IRQ4 lowest, IRQ5 highest
        pulse(&pic, 1);
        pulse(&pic, 6);
        assert_eq!(ack(&pic), Some(0x26));
        outb(&mut bus, 0x20, 0xa0); // rotate on non-specific EOI: IRQ6 lowest
        assert_eq!(lock(&pic).isr(), 0);
        pulse(&pic, 6);
        assert_eq!(ack(&pic), Some(0x21));
        outb(&mut bus, 0x20, 0xe1); // rotate on specific EOI 1: IRQ1 lowest
        assert_eq!(ack(&pic), Some(0x26));
        outb(&mut bus, 0x20, 0x66);
        // Rotate in auto-EOI mode.
        let (mut bus, pic) = machine();
        init(&mut bus, 0x03);
        outb(&mut bus, 0x20, 0x80);
        pulse(&pic, 3);
        assert_eq!(ack(&pic), Some(0x23));
        pulse(&pic, 3);
        pulse(&pic, 5);
        assert_eq!(ack(&pic), Some(0x25), "IRQ3 rotated to lowest");
    }

    #[test]
    fn special_mask_mode_lets_lower_priorities_in() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        pulse(&pic, 1);
        assert_eq!(ack(&pic), Some(0x21));
        pulse(&pic, 5);
        assert!(!pending(&pic));
        outb(&mut bus, 0x21, 0x02); // mask the level in service
        outb(&mut bus, 0x20, 0x68); // set special mask mode
        assert!(pending(&pic));
        assert_eq!(ack(&pic), Some(0x25));
        outb(&mut bus, 0x20, 0x48); // reset special mask mode
        outb(&mut bus, 0x20, 0x65);
        outb(&mut bus, 0x20, 0x61);
        assert_eq!(lock(&pic).isr(), 0);
    }

    #[test]
    fn special_fully_nested_mode_nests_slave_requests() {
        let (mut bus, pic) = machine();
        outb(&mut bus, 0x20, 0x11);
        outb(&mut bus, 0x21, 0x20);
        outb(&mut bus, 0x21, 0x04);
        outb(&mut bus, 0x21, 0x11); // SFNM
        outb(&mut bus, 0xa0, 0x11);
        outb(&mut bus, 0xa1, 0x28);
        outb(&mut bus, 0xa1, 0x02);
        outb(&mut bus, 0xa1, 0x01);
        pulse(&pic, 14);
        assert_eq!(ack(&pic), Some(0x2e));
        pulse(&pic, 9);
        assert_eq!(ack(&pic), Some(0x29), "nested through the busy IR2");
    }

    #[test]
    fn single_mode_has_a_real_irq2() {
        let (mut bus, pic) = machine();
        outb(&mut bus, 0x20, 0x13); // single, ICW4
        outb(&mut bus, 0x21, 0x40);
        outb(&mut bus, 0x21, 0x01);
        pulse(&pic, 2);
        assert_eq!(ack(&pic), Some(0x42));
    }

    #[test]
    fn state_round_trips_through_the_bus() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        outb(&mut bus, 0x21, 0xf8);
        outb(&mut bus, 0x4d1, 0x0e);
        pulse(&pic, 12);
        pulse(&pic, 1);
        lock(&pic).set_irq(11, true);
        assert_eq!(ack(&pic), Some(0x21));
        let saved = bus.save();
        let before = lock(&pic).clone();
        // Move on, then come back.
        outb(&mut bus, 0x20, 0x11);
        outb(&mut bus, 0x4d1, 0);
        assert_eq!(ack(&pic), None);
        bus.restore(&saved).unwrap();
        assert_eq!(*lock(&pic), before);
        // And into a fresh pair.
        let (mut bus2, pic2) = machine();
        bus2.restore(&saved).unwrap();
        assert_eq!(*lock(&pic2), before);
        outb(&mut bus2, 0x20, 0x20);
        assert_eq!(ack(&pic2), Some(0x2b));
        assert!(lock(&pic2)
            .restore(&serde_json::json!({"master": 1}))
            .is_err());
        let mut bad = lock(&pic).save();
        bad["master"]["lowest"] = serde_json::json!(9);
        assert!(lock(&pic2).restore(&bad).is_err());
    }

    #[test]
    fn wide_accesses_split_into_bytes() {
        let (mut bus, pic) = machine();
        init(&mut bus, 0x01);
        bus.write(0x4d0, &[0xff, 0xff]);
        assert_eq!(lock(&pic).elcr(), 0xdef8);
        let mut w = [0u8; 2];
        bus.read(0x21, &mut w);
        assert_eq!(w, [0x00, 0xff]);
    }

    #[test]
    fn random_accesses_never_panic_and_round_trip() {
        let (mut bus, pic) = machine();
        let mut x = 5u64;
        let mut next = |bound: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % bound
        };
        let ports = [0x20u16, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];
        for i in 0..50_000 {
            if i % 4000 == 0 {
                init(&mut bus, u8::try_from(next(32)).unwrap());
            }
            let port = ports[usize::try_from(next(6)).unwrap()];
            let v = u8::try_from(next(256)).unwrap();
            match next(6) {
                0 => outb(&mut bus, port, v),
                1 => {
                    inb(&mut bus, port);
                }
                2 | 3 => lock(&pic).set_irq(v % 17, next(2) == 0),
                _ => {
                    if pending(&pic) {
                        assert!(ack(&pic).is_some());
                    }
                }
            }
        }
        let saved = lock(&pic).save();
        let mut back = Pic::new();
        back.restore(&saved).unwrap();
        assert_eq!(back, *lock(&pic));
    }
}
