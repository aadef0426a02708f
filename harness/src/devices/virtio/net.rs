//! virtio-net with no host networking: frames the guest sends are queued for
//! the script, frames the script sends are delivered to the guest as it posts
//! receive buffers. Nothing leaves the process, so it is deterministic by
//! construction.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{
    device_type, hexstate, len32, read_config_bytes, to_usize, Queues, VirtioDevice, VirtioError,
};
use crate::devices::bus::DeviceState;

/// receiveq.
const RX: usize = 0;
/// transmitq.
const TX: usize = 1;
/// Feature: the device has a MAC address in its configuration.
const F_MAC: u64 = 1 << 5;
/// Feature: the configuration has a link status.
const F_STATUS: u64 = 1 << 16;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), the header of every frame.
pub const HDR_LEN: usize = 12;
/// Largest frame accepted either way (no offloads are offered).
pub const MAX_FRAME: usize = 65_535;
/// Frames kept in each direction at most; older ones are dropped (and counted).
const QUEUE_LIMIT: usize = 4096;

/// The network card.
pub struct Net {
    state: NetState,
    /// Every frame either way, when capturing.
    pcap: Option<super::pcap::Pcap>,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct NetState {
    mac: [u8; 6],
    /// Frames the guest sent, oldest first.
    #[serde(with = "hexstate::byte_list")]
    sent: VecDeque<Vec<u8>>,
    /// Frames the script queued for the guest, oldest first.
    #[serde(with = "hexstate::byte_list")]
    to_guest: VecDeque<Vec<u8>>,
    stats: NetStats,
}

/// Frame counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStats {
    /// Frames the guest sent.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames dropped: a full queue, a frame larger than the guest's buffer
    /// or than [`MAX_FRAME`], or a frame shorter than the header.
    pub dropped: u64,
}

impl Net {
    /// A card with MAC address `mac`.
    pub fn new(mac: [u8; 6]) -> Net {
        Net {
            state: NetState {
                mac,
                ..NetState::default()
            },
            pcap: None,
        }
    }

    /// Records every frame sent or delivered in `pcap`.
    pub fn capture(&mut self, pcap: super::pcap::Pcap) {
        self.pcap = Some(pcap);
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.state.mac
    }

    /// Queues a frame for the guest; false (and counted as dropped) when it
    /// is larger than [`MAX_FRAME`].
    pub fn send(&mut self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            self.state.stats.dropped += 1;
            return false;
        }
        push_bounded(
            &mut self.state.to_guest,
            frame.to_vec(),
            &mut self.state.stats,
        );
        true
    }

    /// Takes the oldest frame the guest sent.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        self.state.sent.pop_front()
    }

    /// Frames the guest sent and nobody took yet.
    pub fn sent_pending(&self) -> usize {
        self.state.sent.len()
    }

    /// Frames queued for the guest and not yet delivered.
    pub fn to_guest_pending(&self) -> usize {
        self.state.to_guest.len()
    }

    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.state.stats
    }

    fn transmit(&mut self, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        while let Some(chain) = queues.pop(TX)? {
            let len = to_usize(chain.readable_len());
            if !(HDR_LEN..=HDR_LEN + MAX_FRAME).contains(&len) {
                self.state.stats.dropped += 1;
            } else {
                let mut r = chain.reader(queues.mem());
                r.skip(HDR_LEN as u64);
                let mut frame = vec![0; len - HDR_LEN];
                let n = r.read(&mut frame);
                frame.truncate(n);
                self.state.stats.tx_frames += 1;
                if let Some(p) = &mut self.pcap {
                    p.record(&frame);
                }
                push_bounded(&mut self.state.sent, frame, &mut self.state.stats);
            }
            queues.complete(TX, chain.head, 0)?;
        }
        Ok(())
    }

    fn deliver(&mut self, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        while let Some(frame) = self.state.to_guest.front() {
            let Some(chain) = queues.pop(RX)? else {
                break;
            };
            let total = HDR_LEN + frame.len();
            if chain.writable_len() < total as u64 {
                // Too large for the buffers this driver posts: drop the frame and
                // leave the buffer for the next one.
                queues.unpop(RX);
                self.state.to_guest.pop_front();
                self.state.stats.dropped += 1;
                continue;
            }
            let mut hdr = [0u8; HDR_LEN];
            hdr[10] = 1; // num_buffers
            let mut w = chain.writer(queues.mem());
            w.write(&hdr);
            w.write(frame);
            if let Some(p) = &mut self.pcap {
                p.record(frame);
            }
            self.state.to_guest.pop_front();
            self.state.stats.rx_frames += 1;
            queues.complete(RX, chain.head, len32(total as u64))?;
        }
        Ok(())
    }
}

fn push_bounded(q: &mut VecDeque<Vec<u8>>, frame: Vec<u8>, stats: &mut NetStats) {
    if q.len() >= QUEUE_LIMIT {
        q.pop_front();
        stats.dropped += 1;
    }
    q.push_back(frame);
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "virtio-net"
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn features(&self) -> u64 {
        F_MAC | F_STATUS
    }

    fn queue_count(&self) -> usize {
        2
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 8];
        cfg[..6].copy_from_slice(&self.state.mac);
        cfg[6] = 1; // VIRTIO_NET_S_LINK_UP
        read_config_bytes(&cfg, offset, data);
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        match index {
            TX => self.transmit(queues),
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
