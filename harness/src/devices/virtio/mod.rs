//! virtio 1.x devices on the virtio-mmio transport.
//!
//! The transport ([`mmio::MmioTransport`]) owns the register file, the split
//! virtqueues (rust-vmm's `virtio-queue`) and the interrupt line; a device
//! ([`VirtioDevice`]) sees only its queues, through [`Queues`], and its
//! configuration space. Devices do their work synchronously inside the guest's
//! notification (or a script's host-side call), so a run stays deterministic.
//!
//! A guest that breaks the protocol never makes the VMM panic or touch memory
//! outside the guest: descriptor chains are copied and checked before use
//! ([`chain`]), and a device that cannot go on puts the transport into
//! DEVICE_NEEDS_RESET.

/// The two `as_any` methods of [`VirtioDevice`], the same for every device.
macro_rules! impl_as_any {
    () => {
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use impl_as_any;

pub mod blk;
pub mod chain;
pub mod console;
pub mod driver;
pub mod hexstate;
pub mod mmio;
pub mod net;
pub mod pcap;
pub mod rng;
#[cfg(test)]
mod tests;

use std::any::Any;

use virtio_queue::{Queue, QueueOwnedT, QueueT};

use crate::devices::bus::DeviceState;
use crate::vm::memory::GuestMem;

/// Feature bit: the device conforms to virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Queue size every lunavm device offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Device status bits (virtio 1.1, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Device types (virtio 1.1, 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
}

/// Why a device stopped: the transport reports it and enters NEEDS_RESET.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtioError {
    /// A descriptor chain the driver made is not usable.
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    /// The available ring's index moved further than the queue has entries.
    #[error("queue {queue}: the available ring index is invalid ({reason})")]
    AvailRing {
        /// The queue.
        queue: usize,
        /// virtio-queue's words for it.
        reason: String,
    },
    /// The used ring could not be written.
    #[error("queue {queue}: cannot write the used ring ({reason})")]
    UsedRing {
        /// The queue.
        queue: usize,
        /// virtio-queue's words for it.
        reason: String,
    },
    /// A request that does not follow the device's format.
    #[error("{device}: {reason}")]
    BadRequest {
        /// The device.
        device: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The queues of an activated device, with guest memory: what a device works
/// on. It records which queues got used buffers so the transport can
/// interrupt the driver.
pub struct Queues<'a> {
    queues: &'a mut [Queue],
    mem: &'a GuestMem,
    used: u32,
}

impl<'a> Queues<'a> {
    /// Wraps `queues` over `mem`.
    pub fn new(queues: &'a mut [Queue], mem: &'a GuestMem) -> Queues<'a> {
        Queues {
            queues,
            mem,
            used: 0,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMem {
        self.mem
    }

    /// Whether queue `index` exists and the driver made it ready.
    pub fn ready(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.ready())
    }

    /// Takes the next chain the driver made available on queue `index`,
    /// copied and checked; `None` when the queue is empty or not ready.
    pub fn pop(&mut self, index: usize) -> Result<Option<chain::Chain>, VirtioError> {
        let Some(q) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return Ok(None);
        };
        let (table, size) = (q.desc_table(), q.size());
        let head = {
            let mut iter = q.iter(self.mem).map_err(|e| VirtioError::AvailRing {
                queue: index,
                reason: e.to_string(),
            })?;
            match iter.next() {
                Some(c) => c.head_index(),
                None => return Ok(None),
            }
        };
        Ok(Some(chain::Chain::walk(
            self.mem,
            vm_memory::GuestAddress(table),
            size,
            head,
        )?))
    }

    /// Puts back the chain `pop` took last from queue `index`, for the next
    /// `pop` to return again.
    pub fn unpop(&mut self, index: usize) {
        if let Some(q) = self.queues.get_mut(index) {
            q.set_next_avail(q.next_avail().wrapping_sub(1));
        }
    }

    /// Whether queue `index` has a chain available without taking it.
    pub fn has_available(&mut self, index: usize) -> Result<bool, VirtioError> {
        let Some(q) = self.queues.get_mut(index).filter(|q| q.ready()) else {
            return Ok(false);
        };
        let avail = q
            .avail_idx(self.mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| VirtioError::AvailRing {
                queue: index,
                reason: e.to_string(),
            })?;
        Ok(avail.0 != q.next_avail())
    }

    /// Returns chain `head` to the driver with `len` bytes written.
    pub fn complete(&mut self, index: usize, head: u16, len: u32) -> Result<(), VirtioError> {
        let q = self
            .queues
            .get_mut(index)
            .ok_or_else(|| VirtioError::UsedRing {
                queue: index,
                reason: "no such queue".into(),
            })?;
        q.add_used(self.mem, head, len)
            .map_err(|e| VirtioError::UsedRing {
                queue: index,
                reason: e.to_string(),
            })?;
        self.used |= 1 << index;
        Ok(())
    }

    /// The queues that got used buffers, as a bit mask.
    pub fn used_mask(&self) -> u32 {
        self.used
    }
}

/// A virtio device behind the transport.
pub trait VirtioDevice: Send {
    /// Short name for reports ("virtio-blk", ...).
    fn name(&self) -> &'static str;
    /// The virtio device type ([`device_type`]).
    fn device_type(&self) -> u32;
    /// Features the device offers, besides the transport's
    /// ([`VIRTIO_F_VERSION_1`], [`VIRTIO_RING_F_INDIRECT_DESC`]).
    fn features(&self) -> u64;
    /// How many queues the device has.
    fn queue_count(&self) -> usize;
    /// Reads configuration space at `offset`; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes configuration space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver notified queue `index`.
    fn notify(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), VirtioError>;
    /// Host-side work that became possible (frames or console input a
    /// script queued): deliver what the driver has buffers for.
    fn poll(&mut self, _queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        Ok(())
    }
    /// The driver reset the device: forget the session, keep the backing
    /// (disk contents, frames queued by the host).
    fn reset(&mut self);
    /// The device's whole state.
    fn save(&self) -> DeviceState;
    /// Restores a state `save` produced.
    fn restore(&mut self, state: &DeviceState) -> Result<(), String>;
    /// The device as `Any`, for host-side access to its own methods.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The device as `Any`, read-only.
    fn as_any(&self) -> &dyn Any;
}

/// A device's state as JSON (a snapshot's device state).
pub fn save_json<T: serde::Serialize>(state: &T) -> DeviceState {
    serde_json::to_value(state).unwrap_or_default()
}

/// A device's state back from [`save_json`]'s JSON.
pub fn restore_json<T: serde::de::DeserializeOwned>(state: &DeviceState) -> Result<T, String> {
    serde_json::from_value(state.clone()).map_err(|e| e.to_string())
}

/// `n` as a 32-bit length, saturating (a chain holds at most 4 GiB).
pub fn len32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `n` as a `usize`, saturating.
pub fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// The low and high 32-bit halves of `v`, as 64-bit registers are split.
pub fn halves(v: u64) -> (u32, u32) {
    let b = v.to_le_bytes();
    (
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// Copies `src` into `data` from byte `offset` of a configuration space;
/// bytes past its end read as 0.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < src.len() {
        let n = data.len().min(src.len() - start);
        data[..n].copy_from_slice(&src[start..start + n]);
    }
}
