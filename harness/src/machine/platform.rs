//! The deterministic PC platform: the 8259 PIC pair, the 8254 PIT and the CMOS
//! RTC, emulated in the VMM and driven only by virtual time. The run loop
//! brings them up to date when virtual time reaches their next deadline and
//! around every access to their ports, and injects the PIC's interrupts at
//! exit boundaries when the guest can take them.

use std::sync::{Arc, Mutex};

use crate::devices::bus::{lock, Bus, BusError};
use crate::devices::pic::Pic;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;

/// IRQ line of the PIT's channel 0.
pub const PIT_IRQ: u8 = 0;
/// IRQ line of the RTC.
pub const RTC_IRQ: u8 = 8;

/// Ports the platform devices decode (sync around accesses to them).
const PORTS: &[(u16, u16)] = &[
    (0x20, 2),
    (0x40, 4),
    (0x61, 1),
    (0x70, 2),
    (0xa0, 2),
    (0x4d0, 2),
];

/// The PIC pair and the PIT, shared with their port devices.
type Timers = (Arc<Mutex<Pic>>, Arc<Mutex<Pit>>);

/// The platform devices. With the in-kernel irqchip, KVM emulates the PIC and
/// PIT and only the RTC is here (its interrupts are then not delivered).
pub struct Platform {
    /// The PIC pair and the PIT (None with the in-kernel irqchip).
    timers: Option<Timers>,
    /// The RTC.
    pub rtc: Arc<Mutex<Rtc>>,
    /// The earliest deadline of the PIT and RTC, cached.
    next_deadline: Option<u64>,
}

impl Platform {
    /// The devices at power-on, the RTC starting at `rtc_start` (Unix
    /// seconds); the PIC and PIT only when `userspace_irqchip`.
    pub fn new(rtc_start: i64, userspace_irqchip: bool) -> Platform {
        Platform {
            timers: userspace_irqchip.then(|| {
                (
                    Arc::new(Mutex::new(Pic::new())),
                    Arc::new(Mutex::new(Pit::new())),
                )
            }),
            rtc: Arc::new(Mutex::new(Rtc::new(rtc_start))),
            next_deadline: None,
        }
    }

    /// Puts the devices on the port bus.
    pub fn install(&self, bus: &mut Bus) -> Result<(), BusError> {
        if let Some((pic, pit)) = &self.timers {
            for (base, len, dev) in Pic::ports(pic) {
                bus.insert(base, len, dev)?;
            }
            for (base, len, dev) in Pit::ports(pit) {
                bus.insert(base, len, dev)?;
            }
        }
        for (base, len, dev) in Rtc::ports(&self.rtc) {
            bus.insert(base, len, dev)?;
        }
        Ok(())
    }

    /// Whether `port` belongs to a platform device.
    pub fn decodes(port: u16) -> bool {
        PORTS
            .iter()
            .any(|&(base, len)| port >= base && port < base + len)
    }

    /// Brings the devices to virtual time `now`: timer edges become IRQs.
    pub fn sync(&mut self, now: u64) {
        let (rtc_edges, rtc_deadline) = {
            let mut rtc = lock(&self.rtc);
            rtc.set_time(now);
            (rtc.take_irq8_edges(), rtc.next_deadline_ns())
        };
        let Some((pic, pit)) = &self.timers else {
            // No PIC to deliver RTC interrupts to: the RTC only keeps time.
            self.next_deadline = None;
            return;
        };
        let (pit_edges, pit_deadline) = {
            let mut pit = lock(pit);
            pit.set_time(now);
            (pit.take_irq0_edges(), pit.next_deadline_ns())
        };
        if pit_edges > 0 || rtc_edges > 0 {
            let mut pic = lock(pic);
            // Edges coalesce into one request, as on hardware when the guest is late.
            if pit_edges > 0 {
                pic.set_irq(PIT_IRQ, true);
                pic.set_irq(PIT_IRQ, false);
            }
            if rtc_edges > 0 {
                pic.set_irq(RTC_IRQ, true);
                pic.set_irq(RTC_IRQ, false);
            }
        }
        self.next_deadline = match (pit_deadline, rtc_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// An edge on ISA line `line` (a device's interrupt), when the PIC is
    /// here; with the in-kernel irqchip the machine raises it in KVM.
    pub fn pulse(&self, line: u8) {
        if let Some((pic, _)) = &self.timers {
            let mut pic = lock(pic);
            pic.set_irq(line, true);
            pic.set_irq(line, false);
        }
    }

    /// Recomputes the cached next deadline from the devices' state (after a
    /// restore), without moving their time or taking their edges: edges a
    /// saved device still holds are delivered at the next sync, as they would
    /// have been without the snapshot.
    pub fn refresh_deadline(&mut self) {
        let rtc = lock(&self.rtc).next_deadline_ns();
        let pit = self
            .timers
            .as_ref()
            .and_then(|(_, pit)| lock(pit).next_deadline_ns());
        self.next_deadline = match (pit, rtc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) if self.timers.is_some() => a.or(b),
            _ => None,
        };
    }

    /// The next virtual time a timer fires, if one is armed.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_deadline
    }

    /// Whether the PIC asserts its interrupt output.
    pub fn pending(&self) -> bool {
        self.timers
            .as_ref()
            .is_some_and(|(pic, _)| lock(pic).has_pending())
    }

    /// The INTA cycle: the vector to inject.
    pub fn acknowledge(&self) -> Option<u8> {
        self.timers
            .as_ref()
            .and_then(|(pic, _)| lock(pic).acknowledge())
    }
}
