//! A range claimed by a front end (a device written in Lua): the run loop
//! intercepts every access there, so this model only supplies defaults.

use super::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// Reads all-ones, drops writes; the front end decides what really happens.
#[derive(Debug)]
pub struct Placeholder {
    name: &'static str,
}

impl Placeholder {
    /// A placeholder named `name` in reports.
    pub fn new(name: &'static str) -> Self {
        Placeholder { name }
    }
}

impl BusDevice for Placeholder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<DeviceEvent> {
        None
    }

    /// The front end saves its device's state itself.
    fn save(&self) -> DeviceState {
        DeviceState::Null
    }

    fn restore(&mut self, _state: &DeviceState) -> Result<(), DeviceStateError> {
        Ok(())
    }
}
