//! virtio-console: a second console stream beside the UART. What the guest
//! writes collects in an output buffer a script reads; what a script writes
//! is queued and delivered as the guest posts receive buffers.

use serde::{Deserialize, Serialize};

use super::{
    device_type, hexstate, len32, read_config_bytes, to_usize, Queues, VirtioDevice, VirtioError,
};
use crate::devices::bus::DeviceState;

/// receiveq: host to guest.
const RX: usize = 0;
/// transmitq: guest to host.
const TX: usize = 1;
/// Output kept for the script at most; older bytes are dropped (and counted).
const OUTPUT_LIMIT: usize = 16 << 20;

/// The console device.
#[derive(Default)]
pub struct Console {
    state: ConsoleState,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct ConsoleState {
    /// Bytes the guest wrote and no script has taken yet.
    #[serde(with = "hexstate::bytes")]
    output: Vec<u8>,
    /// Bytes a script queued for the guest.
    #[serde(with = "hexstate::bytes")]
    input: Vec<u8>,
    /// Everything the guest ever wrote, in bytes.
    written: u64,
    /// Output bytes dropped because no script took them.
    dropped: u64,
}

impl Console {
    /// A console with nothing queued.
    pub fn new() -> Console {
        Console::default()
    }

    /// Takes what the guest wrote since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.state.output)
    }

    /// What the guest wrote and nobody took yet.
    pub fn output(&self) -> &[u8] {
        &self.state.output
    }

    /// Queues `bytes` for the guest (delivered by [`VirtioDevice::poll`]).
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.state.input.extend_from_slice(bytes);
    }

    /// Input queued but not yet delivered.
    pub fn pending_input(&self) -> usize {
        self.state.input.len()
    }

    fn deliver(&mut self, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        while !self.state.input.is_empty() {
            let Some(chain) = queues.pop(RX)? else {
                break;
            };
            let n = chain.writer(queues.mem()).write(&self.state.input);
            self.state.input.drain(..n);
            queues.complete(RX, chain.head, len32(n as u64))?;
        }
        Ok(())
    }
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "virtio-console"
    }

    fn device_type(&self) -> u32 {
        device_type::CONSOLE
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports: meaningful only with features not offered.
        read_config_bytes(&[0; 8], offset, data);
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        match index {
            TX => {
                while let Some(chain) = queues.pop(TX)? {
                    let len = to_usize(chain.readable_len().min(1 << 20));
                    let mut buf = vec![0; len];
                    let n = chain.reader(queues.mem()).read(&mut buf);
                    let out = &mut self.state.output;
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > OUTPUT_LIMIT {
                        let extra = out.len() - OUTPUT_LIMIT;
                        out.drain(..extra);
                        self.state.dropped += extra as u64;
                    }
                    self.state.written += n as u64;
                    queues.complete(TX, chain.head, 0)?;
                }
                Ok(())
            }
            _ => self.deliver(queues),
        }
    }

    fn poll(&mut self, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        self.deliver(queues)
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
