//! virtio-rng: an entropy source whose bytes come from the run's seed, so two
//! runs with the same seed see the same "random" bytes.

use serde::{Deserialize, Serialize};

use super::{device_type, len32, read_config_bytes, to_usize, Queues, VirtioDevice, VirtioError};
use crate::devices::bus::DeviceState;
use crate::entropy::Entropy;

/// Salt mixed into the seed so the device's stream differs from the other
/// users of the run's seed.
const SALT: u64 = 0x7669_7274_696f_726e;

/// The entropy device.
pub struct Rng {
    state: RngState,
}

#[derive(Clone, Serialize, Deserialize)]
struct RngState {
    stream: Entropy,
    /// Bytes handed to the guest.
    bytes: u64,
}

impl Rng {
    /// A device drawing from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: RngState {
                stream: Entropy::new(seed ^ SALT),
                bytes: 0,
            },
        }
    }

    /// Bytes handed to the guest so far.
    pub fn bytes_served(&self) -> u64 {
        self.state.bytes
    }
}

impl VirtioDevice for Rng {
    fn name(&self) -> &'static str {
        "virtio-rng"
    }

    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data);
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        while let Some(chain) = queues.pop(index)? {
            let mut w = chain.writer(queues.mem());
            // At most 64 KiB a request: a driver asking for more gets a short read.
            let want = to_usize(w.remaining().min(64 << 10));
            let mut buf = Vec::with_capacity(want + 8);
            while buf.len() < want {
                buf.extend_from_slice(&self.state.stream.next_u64().to_le_bytes());
            }
            let n = w.write(&buf[..want]);
            self.state.bytes += n as u64;
            queues.complete(index, chain.head, len32(n as u64))?;
        }
        Ok(())
    }

    fn reset(&mut self) {}

    fn save(&self) -> DeviceState {
        super::save_json(&self.state)
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        self.state = super::restore_json(state)?;
        Ok(())
    }

    super::impl_as_any!();
}
