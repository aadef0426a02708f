//! The POST diagnostic port 0x80: firmware writes progress codes there and Linux
//! uses it as an I/O delay. lunavm keeps the last code and the number of writes.

use super::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// The POST code latch.
#[derive(Debug, Default)]
pub struct PostCode {
    last: u8,
    writes: u64,
}

impl PostCode {
    /// A latch holding 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }

    /// How many writes it has seen.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl BusDevice for PostCode {
    fn name(&self) -> &'static str {
        "post-code"
    }

    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if let Some(&b) = data.first() {
            self.last = b;
        }
        self.writes += 1;
        None
    }

    fn save(&self) -> DeviceState {
        serde_json::json!({ "last": self.last, "writes": self.writes })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let bad = || DeviceStateError::new("post-code", "malformed state");
        self.last = state["last"]
            .as_u64()
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(bad)?;
        self.writes = state["writes"].as_u64().ok_or_else(bad)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latches_the_last_code() {
        let mut p = PostCode::new();
        p.write(0, &[0x42]);
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [0x42, 0x42]);
        assert_eq!(p.writes(), 1);
    }
}
