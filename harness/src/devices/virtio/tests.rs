//! Transport and device tests, driving devices through their registers and
//! guest memory with the host-side [`Driver`], including drivers that break
//! the protocol.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::blk::{Blk, Disk};
use super::chain::tests::{mem, put_desc};
use super::console::Console;
use super::driver::{Buf, Driver};
use super::mmio::{MmioTransport, INT_CONFIG, INT_VRING};
use super::net::Net;
use super::rng::Rng;
use super::{status, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::devices::irq::{IrqEdges, IrqLine};

const RINGS: u64 = 0x1_0000;
const DATA: u64 = 0x4_0000;

struct Rig {
    t: MmioTransport,
    d: Driver,
    edges: Arc<IrqEdges>,
}

impl Rig {
    fn new(dev: Box<dyn VirtioDevice>) -> Rig {
        let m = mem();
        let edges = IrqEdges::new();
        let t = MmioTransport::new(dev, m.clone(), IrqLine::new(edges.clone(), 5));
        Rig {
            t,
            d: Driver::new(m),
            edges,
        }
    }

    /// A device that is live with all its queues set up (16 entries).
    fn live(dev: Box<dyn VirtioDevice>) -> Rig {
        let queues = dev.queue_count();
        let mut r = Rig::new(dev);
        let s = r.d.negotiate(&mut r.t, 0);
        assert_eq!(s & status::FEATURES_OK, status::FEATURES_OK);
        for q in 0..u16::try_from(queues).unwrap() {
            r.d.setup_queue(&mut r.t, q, 16, RINGS + u64::from(q) * 0x4000);
        }
        assert_eq!(r.d.start(&mut r.t) & status::DRIVER_OK, status::DRIVER_OK);
        r
    }

    fn read32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }

    fn needs_reset(&self) -> bool {
        self.t.status() & status::DEVICE_NEEDS_RESET != 0
    }

    fn mem(&self) -> vm_memory::GuestMemoryMmap<crate::vm::memory::TrackedBitmap> {
        self.d.mem().clone()
    }

    /// Sends one block request with `data`; returns its status byte.
    fn blk(&mut self, kind: u32, sector: u64, data: Option<Buf>) -> u8 {
        let m = self.mem();
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&hdr, GuestAddress(DATA)).unwrap();
        m.write_obj(0xaau8, GuestAddress(DATA + 0x100)).unwrap();
        let mut bufs = vec![Buf {
            addr: DATA,
            len: 16,
            write: false,
        }];
        bufs.extend(data);
        bufs.push(Buf {
            addr: DATA + 0x100,
            len: 1,
            write: true,
        });
        self.d.submit(&mut self.t, 0, &bufs).unwrap();
        m.read_obj(GuestAddress(DATA + 0x100)).unwrap()
    }
}

fn blk(size: u64) -> Box<dyn VirtioDevice> {
    Box::new(Blk::new(Disk::in_memory(size), "lunavm-test", false))
}

fn buf(addr: u64, len: u32, write: bool) -> Buf {
    Buf { addr, len, write }
}

#[test]
fn registers_identify_a_virtio_1_device() {
    let mut r = Rig::new(Box::new(Rng::new(1)));
    assert_eq!(r.read32(0x000), 0x7472_6976);
    assert_eq!(r.read32(0x004), 2);
    assert_eq!(r.read32(0x008), 4);
    r.write32(0x14, 1);
    assert_eq!(r.read32(0x010) & 1, 1, "VERSION_1 is offered");
    r.write32(0x30, 0);
    assert_eq!(r.read32(0x034), 256);
    r.write32(0x30, 7);
    assert_eq!(r.read32(0x034), 0, "no queue 7");
}

#[test]
fn blk_writes_then_reads_back_through_the_overlay() {
    let mut r = Rig::live(blk(1 << 20));
    let m = r.mem();
    m.write_slice(&[0x5a; 1024], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(r.blk(1, 3, Some(buf(DATA + 0x1000, 1024, false))), 0);
    assert_eq!(r.blk(0, 3, Some(buf(DATA + 0x2000, 1024, true))), 0);
    let mut back = [0u8; 1024];
    m.read_slice(&mut back, GuestAddress(DATA + 0x2000))
        .unwrap();
    assert_eq!(back, [0x5a; 1024]);
    assert_eq!(r.d.used(0).len(), 2);
    assert!(r.edges.take() & (1 << 5) != 0, "used buffers interrupt");
    assert_eq!(r.d.ack_interrupt(&mut r.t), INT_VRING);
}

#[test]
fn blk_errors_complete_with_a_status_not_a_reset() {
    let mut r = Rig::live(blk(1 << 20));
    // Past the end of the disk.
    assert_eq!(r.blk(0, 2048, Some(buf(DATA + 0x2000, 512, true))), 1);
    // Not whole sectors.
    assert_eq!(r.blk(1, 0, Some(buf(DATA + 0x2000, 100, false))), 1);
    // Unknown request type.
    assert_eq!(r.blk(99, 0, None), 2);
    // get-id
    assert_eq!(r.blk(8, 0, Some(buf(DATA + 0x3000, 20, true))), 0);
    let mut id = [0u8; 11];
    r.mem()
        .read_slice(&mut id, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(&id, b"lunavm-test");
    assert!(!r.needs_reset());
}

#[test]
fn blk_discard_zeroes_and_flush_succeeds() {
    let mut r = Rig::live(blk(1 << 20));
    let m = r.mem();
    m.write_slice(&[0x11; 8192], GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(r.blk(1, 0, Some(buf(DATA + 0x1000, 8192, false))), 0);
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&2u64.to_le_bytes());
    seg[8..12].copy_from_slice(&12u32.to_le_bytes());
    m.write_slice(&seg, GuestAddress(DATA + 0x3000)).unwrap();
    assert_eq!(r.blk(11, 0, Some(buf(DATA + 0x3000, 16, false))), 0);
    assert_eq!(r.blk(0, 0, Some(buf(DATA + 0x5000, 8192, true))), 0);
    let mut back = vec![0u8; 8192];
    m.read_slice(&mut back, GuestAddress(DATA + 0x5000))
        .unwrap();
    assert!(back[..1024].iter().all(|&b| b == 0x11));
    assert!(back[1024..7168].iter().all(|&b| b == 0));
    assert!(back[7168..].iter().all(|&b| b == 0x11));
    assert_eq!(r.blk(4, 0, None), 0);
}

#[test]
fn a_blk_request_without_a_status_byte_needs_reset() {
    let mut r = Rig::live(blk(1 << 20));
    r.d.submit(&mut r.t, 0, &[buf(DATA, 16, false)]).unwrap();
    assert!(r.needs_reset());
    assert!(r.t.interrupt_status() & INT_CONFIG != 0);
    // Further notifications are ignored until the driver resets.
    r.d.submit(
        &mut r.t,
        0,
        &[buf(DATA, 16, false), buf(DATA + 0x100, 1, true)],
    );
    assert_eq!(r.t.stats().ignored_notifications, 1);
    r.write32(0x70, 0);
    assert_eq!(r.read32(0x70), 0);
}

#[test]
fn rng_bytes_follow_the_seed() {
    let take = |seed| {
        let mut r = Rig::live(Box::new(Rng::new(seed)));
        r.d.submit(&mut r.t, 0, &[buf(DATA, 64, true)]).unwrap();
        assert_eq!(r.d.used(0), vec![(0, 64)]);
        let mut b = [0u8; 64];
        r.mem().read_slice(&mut b, GuestAddress(DATA)).unwrap();
        b
    };
    assert_eq!(take(7), take(7));
    assert_ne!(take(7), take(8));
}

#[test]
fn net_frames_go_both_ways() {
    let mut r = Rig::live(Box::new(Net::new([2, 0, 0, 0, 0, 1])));
    let m = r.mem();
    // Guest to host: a 12-byte header, then the frame.
    m.write_slice(&[0u8; 12], GuestAddress(DATA)).unwrap();
    m.write_slice(b"hello frame", GuestAddress(DATA + 12))
        .unwrap();
    r.d.submit(&mut r.t, 1, &[buf(DATA, 23, false)]).unwrap();
    let frame =
        r.t.host(|d| d.as_any_mut().downcast_mut::<Net>().unwrap().recv());
    assert_eq!(frame.as_deref(), Some(&b"hello frame"[..]));
    // Host to guest, queued before the guest posts a buffer.
    r.t.host(|d| {
        d.as_any_mut()
            .downcast_mut::<Net>()
            .unwrap()
            .send(b"to guest")
    });
    assert!(r.d.used(0).is_empty());
    r.d.submit(&mut r.t, 0, &[buf(DATA + 0x1000, 1526, true)])
        .unwrap();
    assert_eq!(r.d.used(0), vec![(0, 20)]);
    let mut b = [0u8; 8];
    m.read_slice(&mut b, GuestAddress(DATA + 0x1000 + 12))
        .unwrap();
    assert_eq!(&b, b"to guest");
    // MAC in the configuration space.
    let mut mac = [0u8; 6];
    r.t.read(0x100, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
}

#[test]
fn console_streams_both_ways() {
    let mut r = Rig::live(Box::new(Console::new()));
    let m = r.mem();
    m.write_slice(b"from guest", GuestAddress(DATA)).unwrap();
    r.d.submit(&mut r.t, 1, &[buf(DATA, 10, false)]).unwrap();
    r.d.submit(&mut r.t, 0, &[buf(DATA + 0x1000, 4, true)])
        .unwrap();
    let out = r.t.host(|d| {
        let c = d.as_any_mut().downcast_mut::<Console>().unwrap();
        c.queue_input(b"typed");
        c.take_output()
    });
    assert_eq!(out, b"from guest");
    // Four bytes fit the posted buffer; the fifth waits for the next one.
    assert_eq!(r.d.used(0), vec![(0, 4)]);
    r.d.submit(&mut r.t, 0, &[buf(DATA + 0x2000, 4, true)])
        .unwrap();
    assert_eq!(r.d.used(0), vec![(1, 1)]);
}

#[test]
fn bad_feature_sequences_are_refused() {
    // Features the device does not offer: FEATURES_OK stays clear.
    let mut r = Rig::new(Box::new(Rng::new(1)));
    let s = r.d.negotiate(&mut r.t, 1 << 40);
    assert_eq!(s & status::FEATURES_OK, 0);
    assert_eq!(r.t.stats().features_refused, 1);
    // DRIVER_OK without FEATURES_OK.
    r.write32(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert!(r.needs_reset());
    // Driver features after FEATURES_OK.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.write32(0x20, 0);
    assert!(r.needs_reset());
    // Clearing a status bit without a reset.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.write32(0x70, status::ACKNOWLEDGE);
    assert!(r.needs_reset());
}

#[test]
fn wrong_width_register_access_needs_reset() {
    let mut r = Rig::live(Box::new(Rng::new(1)));
    let mut b = [0u8; 2];
    r.t.read(0x70, &mut b);
    assert!(r.needs_reset());
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.t.write(0x50, &[0]);
    assert!(r.needs_reset());
    // Configuration space takes any width.
    let mut r = Rig::live(Box::new(Net::new([0; 6])));
    r.t.read(0x101, &mut b);
    assert!(!r.needs_reset());
}

#[test]
fn queues_outside_memory_or_changed_while_ready_need_reset() {
    let mut r = Rig::new(Box::new(Rng::new(1)));
    r.d.negotiate(&mut r.t, 0);
    r.write32(0x30, 0);
    r.write32(0x38, 16);
    r.write32(0x80, 0);
    r.write32(0x84, 0x100); // far outside the 1 MiB guest
    r.write32(0x44, 1);
    assert!(r.needs_reset());
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.write32(0x38, 8);
    assert!(r.needs_reset());
    let mut r = Rig::new(Box::new(Rng::new(1)));
    r.d.negotiate(&mut r.t, 0);
    r.write32(0x38, 3); // not a power of two
    assert!(r.needs_reset());
}

#[test]
fn hostile_chains_need_reset_and_touch_nothing_outside() {
    // A loop.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    let m = r.mem();
    r.d.post(0, &[buf(DATA, 8, true), buf(DATA + 8, 8, true)]);
    put_desc(&m, RINGS, 1, DATA + 8, 8, 1 | 2, 0);
    r.d.notify(&mut r.t, 0);
    assert!(r.needs_reset());
    assert!(r
        .t
        .stats()
        .last_violation
        .as_deref()
        .unwrap()
        .contains("loops"));
    // A buffer past the end of memory.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.d.submit(&mut r.t, 0, &[buf((1 << 20) - 16, 64, true)]);
    assert!(r.needs_reset());
    assert!(r.d.used(0).is_empty());
    // An available index far ahead of the queue.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.mem()
        .write_obj(100u16, GuestAddress(RINGS + 0x1000 + 2))
        .unwrap();
    r.d.notify(&mut r.t, 0);
    assert!(r.needs_reset());
    // A head index past the table.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.d.post(0, &[buf(DATA, 8, true)]);
    r.mem()
        .write_obj(200u16, GuestAddress(RINGS + 0x1000 + 4))
        .unwrap();
    r.d.notify(&mut r.t, 0);
    assert!(r.needs_reset());
}

#[test]
fn a_buffer_over_the_descriptor_table_cannot_change_the_request() {
    // The rng writes its bytes over its own descriptor table: the device
    // works on its copy of the chain and completes it once.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.d.submit(&mut r.t, 0, &[buf(RINGS, 0x100, true)]);
    assert!(!r.needs_reset());
    assert_eq!(r.d.used(0), vec![(0, 0x100)]);
    // Over the available ring too: the next look at the ring finds garbage
    // and the device stops, without touching anything outside the guest.
    let mut r = Rig::live(Box::new(Rng::new(1)));
    r.d.submit(&mut r.t, 0, &[buf(RINGS, 0x1008, true)]);
    assert!(r.needs_reset());
}

#[test]
fn save_and_restore_in_the_middle_of_a_sequence_changes_nothing() {
    let run = |snapshot: bool| {
        let mut r = Rig::live(blk(1 << 20));
        let m = r.mem();
        m.write_slice(&[7; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        r.blk(1, 1, Some(buf(DATA + 0x1000, 512, false)));
        if snapshot {
            // The whole "machine": device, driver and guest memory.
            let (device, driver) = (r.t.save(), r.d.clone());
            let mut memory = vec![0u8; 1 << 20];
            m.read_slice(&mut memory, GuestAddress(0)).unwrap();
            // Something different happens, then the restore takes it back.
            m.write_slice(&[9; 512], GuestAddress(DATA + 0x1000))
                .unwrap();
            r.blk(1, 1, Some(buf(DATA + 0x1000, 512, false)));
            r.t.restore(&device).unwrap();
            r.d = driver;
            m.write_slice(&memory, GuestAddress(0)).unwrap();
        }
        r.blk(0, 1, Some(buf(DATA + 0x2000, 512, true)));
        let mut back = [0u8; 512];
        m.read_slice(&mut back, GuestAddress(DATA + 0x2000))
            .unwrap();
        (back, r.t.save())
    };
    let (a, sa) = run(false);
    let (b, sb) = run(true);
    assert_eq!(a, [7; 512]);
    assert_eq!(a, b);
    assert_eq!(sa, sb);
}
