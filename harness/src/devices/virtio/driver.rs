//! A minimal virtio driver on the host side, speaking to a transport through
//! its registers and guest memory exactly as a guest would. Tests, fuzz seeds
//! and benchmarks use it to drive devices without a guest.

use vm_memory::{Bytes, GuestAddress};

use super::mmio::MmioTransport;
use super::{halves, status, to_usize, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::vm::memory::GuestMem;

/// Bytes of guest memory one queue's rings take from its base.
pub const QUEUE_AREA: u64 = 0x3000;

/// Where one queue's rings live, and the driver's position in them.
#[derive(Clone, Copy, Debug)]
struct Ring {
    base: u64,
    size: u16,
    /// Next free descriptor.
    next_desc: u16,
    /// The avail ring's index.
    avail_idx: u16,
    /// Used entries already seen.
    used_seen: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
}

/// One buffer of a request: where, how long, whether the device writes it.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// The driver.
#[derive(Clone)]
pub struct Driver {
    mem: GuestMem,
    rings: Vec<Option<Ring>>,
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn write32(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

impl Driver {
    /// A driver whose rings go in `mem`.
    pub fn new(mem: GuestMem) -> Driver {
        Driver {
            mem,
            rings: Vec::new(),
        }
    }

    /// The guest memory the rings live in.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// Resets the device and negotiates `features` (plus VERSION_1); returns
    /// the status register afterwards (FEATURES_OK clear if refused).
    pub fn negotiate(&mut self, t: &mut MmioTransport, features: u64) -> u32 {
        let features = features | VIRTIO_F_VERSION_1;
        write32(t, 0x70, 0);
        write32(t, 0x70, status::ACKNOWLEDGE);
        write32(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        let (lo, hi) = halves(features);
        write32(t, 0x24, 0);
        write32(t, 0x20, lo);
        write32(t, 0x24, 1);
        write32(t, 0x20, hi);
        write32(
            t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        self.rings.clear();
        read32(t, 0x70)
    }

    /// Sets up queue `index` with `size` entries, rings at `base`
    /// ([`QUEUE_AREA`] bytes).
    pub fn setup_queue(&mut self, t: &mut MmioTransport, index: u16, size: u16, base: u64) {
        let ring = Ring {
            base,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        };
        let zeros = vec![0u8; to_usize(QUEUE_AREA)];
        let _ = self.mem.write_slice(&zeros, GuestAddress(base));
        write32(t, 0x30, u32::from(index));
        write32(t, 0x38, u32::from(size));
        for (reg, addr) in [
            (0x80, ring.desc()),
            (0x90, ring.avail()),
            (0xa0, ring.used()),
        ] {
            let (lo, hi) = halves(addr);
            write32(t, reg, lo);
            write32(t, reg + 4, hi);
        }
        write32(t, 0x44, 1);
        let i = usize::from(index);
        if self.rings.len() <= i {
            self.rings.resize(i + 1, None);
        }
        // A zero-sized queue (a fuzzer's choice) gets its registers written
        // but no ring: there is nothing to post on.
        self.rings[i] = (size > 0).then_some(ring);
    }

    /// Sets DRIVER_OK; returns the status register.
    pub fn start(&mut self, t: &mut MmioTransport) -> u32 {
        let s = read32(t, 0x70);
        write32(t, 0x70, s | status::DRIVER_OK);
        read32(t, 0x70)
    }

    /// Posts a chain of `bufs` on queue `index` without notifying; returns the
    /// head descriptor, or `None` if the queue is not set up.
    pub fn post(&mut self, index: u16, bufs: &[Buf]) -> Option<u16> {
        let mem = self.mem.clone();
        let ring = self.rings.get_mut(usize::from(index))?.as_mut()?;
        let head = ring.next_desc;
        let n = u16::try_from(bufs.len()).unwrap_or(u16::MAX);
        for (i, b) in (0u16..).zip(bufs) {
            let d = head.wrapping_add(i) % ring.size;
            let last = i + 1 == n;
            let flags = u16::from(!last) | if b.write { 2 } else { 0 };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&((d + 1) % ring.size).to_le_bytes());
            let _ = mem.write_slice(&raw, GuestAddress(ring.desc() + u64::from(d) * 16));
        }
        ring.next_desc = head.wrapping_add(n) % ring.size;
        let slot = ring.avail() + 4 + u64::from(ring.avail_idx % ring.size) * 2;
        let _ = mem.write_obj(head, GuestAddress(slot));
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(ring.avail_idx, GuestAddress(ring.avail() + 2));
        Some(head)
    }

    /// Notifies queue `index`.
    pub fn notify(&mut self, t: &mut MmioTransport, index: u16) {
        write32(t, 0x50, u32::from(index));
    }

    /// Posts `bufs` on queue `index` and notifies; returns the head.
    pub fn submit(&mut self, t: &mut MmioTransport, index: u16, bufs: &[Buf]) -> Option<u16> {
        let head = self.post(index, bufs)?;
        self.notify(t, index);
        Some(head)
    }

    /// Used entries (head, bytes written) the device returned since the last
    /// call on queue `index`.
    pub fn used(&mut self, index: u16) -> Vec<(u32, u32)> {
        let mem = self.mem.clone();
        let Some(Some(ring)) = self.rings.get_mut(usize::from(index)) else {
            return Vec::new();
        };
        let idx: u16 = mem
            .read_obj(GuestAddress(ring.used() + 2))
            .unwrap_or(ring.used_seen);
        let mut out = Vec::new();
        while ring.used_seen != idx {
            let at = ring.used() + 4 + u64::from(ring.used_seen % ring.size) * 8;
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
            out.push((id, len));
            ring.used_seen = ring.used_seen.wrapping_add(1);
        }
        out
    }

    /// Reads the interrupt status and acknowledges it.
    pub fn ack_interrupt(&mut self, t: &mut MmioTransport) -> u32 {
        let s = read32(t, 0x60);
        write32(t, 0x64, s);
        s
    }
}
