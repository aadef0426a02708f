//! A bus of devices decoded by address range, used for port I/O and for MMIO.
//! Unclaimed reads return all-ones and unclaimed writes are dropped; both are
//! counted.

use std::sync::{Arc, Mutex};

/// What a device asks the run loop to do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The guest asked to exit with this value (isa-debug-exit).
    Exit(u32),
}

/// A device's saved state (snapshots); each device defines its own shape.
pub type DeviceState = serde_json::Value;

/// A saved state a device cannot take back.
#[derive(Debug, thiserror::Error)]
#[error("Device {device}: cannot restore its saved state: {reason}")]
pub struct DeviceStateError {
    /// The device.
    pub device: &'static str,
    /// Why.
    pub reason: String,
}

impl DeviceStateError {
    /// An error for `device`.
    pub fn new(device: &'static str, reason: impl std::fmt::Display) -> Self {
        DeviceStateError {
            device,
            reason: reason.to_string(),
        }
    }
}

/// A device model on a bus. `offset` is relative to the device's base.
/// Snapshot support is part of the trait: a device cannot exist without it.
pub trait BusDevice: Send {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Handles a read of `data.len()` bytes.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write; may return an event for the run loop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent>;
    /// Saves the device's whole state.
    fn save(&self) -> DeviceState;
    /// Restores a state `save` produced.
    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError>;
}

/// Errors of building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps an existing device.
    #[error("Device {new} at {base:#x}+{len:#x} overlaps {existing}")]
    Overlap {
        /// The device being added.
        new: &'static str,
        /// Its base.
        base: u64,
        /// Its length.
        len: u64,
        /// The device already there.
        existing: &'static str,
    },
    /// A zero-length range.
    #[error("Device {0} has an empty address range")]
    Empty(&'static str),
}

struct Entry {
    base: u64,
    len: u64,
    name: &'static str,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Counters of accesses nobody claimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unclaimed {
    /// Reads (answered with all-ones).
    pub reads: u64,
    /// Writes (dropped).
    pub writes: u64,
}

/// A set of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
    unclaimed: Unclaimed,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let name = lock(&device).name();
        if len == 0 {
            return Err(BusError::Empty(name));
        }
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| base < e.base + e.len && e.base < base + len)
        {
            return Err(BusError::Overlap {
                new: name,
                base,
                len,
                existing: e.name,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(
            at,
            Entry {
                base,
                len,
                name,
                device,
            },
        );
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr < e.base + e.len).then_some(e)
    }

    /// Reads from the device at `addr`, or all-ones if none claims it.
    /// Returns whether a device claimed the access.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some(e) => {
                let offset = addr - e.base;
                lock(&e.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unclaimed.reads += 1;
                false
            }
        }
    }

    /// Writes to the device at `addr`, or drops the write if none claims it.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Option<DeviceEvent> {
        match self.find(addr) {
            Some(e) => {
                let offset = addr - e.base;
                lock(&e.device).write(offset, data)
            }
            None => {
                self.unclaimed.writes += 1;
                None
            }
        }
    }

    /// Removes the device based at `base`; whether there was one.
    pub fn remove(&mut self, base: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.base != base);
        before != self.entries.len()
    }

    /// The unclaimed-access counters.
    pub fn unclaimed(&self) -> Unclaimed {
        self.unclaimed
    }

    /// Every device's state as (base, name, state), in address order.
    pub fn save(&self) -> Vec<(u64, String, DeviceState)> {
        self.entries
            .iter()
            .map(|e| (e.base, e.name.to_string(), lock(&e.device).save()))
            .collect()
    }

    /// Restores states `save` produced; every device on the bus must have one.
    pub fn restore(&self, states: &[(u64, String, DeviceState)]) -> Result<(), DeviceStateError> {
        for e in &self.entries {
            let (_, _, st) = states
                .iter()
                .find(|(b, n, _)| *b == e.base && n == e.name)
                .ok_or_else(|| DeviceStateError::new(e.name, "the snapshot has no state for it"))?;
            lock(&e.device).restore(st)?;
        }
        Ok(())
    }

    /// The devices on the bus as (base, len, name), in address order.
    pub fn devices(&self) -> impl Iterator<Item = (u64, u64, &'static str)> + '_ {
        self.entries.iter().map(|e| (e.base, e.len, e.name))
    }
}

/// Locks a device, recovering from a poisoned lock (a device that panicked has
/// already been reported; the VMM keeps going).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn name(&self) -> &'static str {
            "reg"
        }
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(u8::try_from(offset).unwrap()));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceEvent> {
            self.0 = data[0];
            None
        }
        fn save(&self) -> DeviceState {
            serde_json::json!(self.0)
        }
        fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
            self.0 = state
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(|| DeviceStateError::new("reg", "bad"))?;
            Ok(())
        }
    }

    #[test]
    fn states_round_trip_and_must_be_complete() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(7)))).unwrap();
        let saved = bus.save();
        bus.write(0x10, &[9]);
        bus.restore(&saved).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x10, &mut b);
        assert_eq!(b, [7]);
        assert!(bus.restore(&[]).is_err());
    }

    #[test]
    fn decodes_ranges_and_counts_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(7)))).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b, [9]);
        assert!(!bus.read(0x14, &mut b));
        assert_eq!(b, [0xff]);
        bus.write(0x10, &[1]);
        bus.write(0x9, &[1]);
        assert!(bus.read(0x10, &mut b));
        assert_eq!(b, [1]);
        assert_eq!(
            bus.unclaimed(),
            Unclaimed {
                reads: 1,
                writes: 1
            }
        );
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(0)))).unwrap();
        assert!(matches!(
            bus.insert(0x13, 2, Arc::new(Mutex::new(Reg(0)))),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(0x14, 2, Arc::new(Mutex::new(Reg(0)))).is_ok());
        assert_eq!(bus.devices().count(), 2);
    }
}
