//! isa-debug-exit: a write ends the run with the value written.

use super::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// The debug-exit device (QEMU's isa-debug-exit at port 0xf4).
#[derive(Debug, Default)]
pub struct DebugExit {
    last: Option<u32>,
}

impl DebugExit {
    /// A device that has seen no write yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last value written, if any.
    pub fn last_value(&self) -> Option<u32> {
        self.last
    }
}

impl BusDevice for DebugExit {
    fn name(&self) -> &'static str {
        "debug-exit"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(v);
        self.last = Some(value);
        Some(DeviceEvent::Exit(value))
    }

    fn save(&self) -> DeviceState {
        serde_json::json!({ "last": self.last })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        self.last = serde_json::from_value::<Option<u32>>(state["last"].clone())
            .map_err(|e| DeviceStateError::new("debug-exit", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_width_write_exits_with_its_value() {
        let mut d = DebugExit::new();
        assert_eq!(d.write(0, &[3]), Some(DeviceEvent::Exit(3)));
        assert_eq!(d.write(0, &[0x34, 0x12]), Some(DeviceEvent::Exit(0x1234)));
        assert_eq!(
            d.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]),
            Some(DeviceEvent::Exit(0x0403_0201))
        );
        assert_eq!(d.last_value(), Some(0x0403_0201));
    }
}
