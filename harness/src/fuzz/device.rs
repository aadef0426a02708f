//! The shared device-fuzz harness: one versioned action type, built with
//! `arbitrary`, drives any device model the way a guest (and a host-side
//! script) would — register accesses, guest-memory contents such as
//! descriptor tables and buffers, driver-style virtqueue requests, interrupt
//! acknowledgements, clock steps — with no guest and no KVM.
//!
//! Oracles beyond "no panic":
//! - no access outside guest memory: guest memory has guard pages on both
//!   sides ([`super::guarded`]), so a stray access faults;
//! - snapshot, then restore into freshly built devices, in the middle of a
//!   sequence gives exactly the same observations (values read, interrupt
//!   edges, final device state, guest memory) as running straight through.
//!
//! An input is one byte [`FORMAT_VERSION`] followed by the actions. When the
//! action type changes, the version goes up and stored corpora are rebuilt:
//! [`decode`] refuses inputs of another version, so CI notices.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use arbitrary::{Arbitrary, Unstructured};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::bus::{lock, Bus, DeviceState};
use crate::devices::debug_exit::DebugExit;
use crate::devices::irq::{IrqEdges, IrqLine};
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::blk::{Blk, Disk};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::driver::{Buf, Driver};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::machine::platform::Platform;
use crate::vm::memory::GuestMem;

/// The input format's version: the first byte of every input.
pub const FORMAT_VERSION: u8 = 1;
/// Guest memory the harness gives devices.
pub const MEM_SIZE: usize = 256 << 10;
/// Actions run per input at most.
pub const MAX_ACTIONS: usize = 512;
/// Where the driver's rings go in guest memory.
const RINGS: u64 = 0x1000;
/// Where the virtio slot sits on the MMIO bus.
const VIRTIO_BASE: u64 = crate::layout::VIRTIO_MMIO_BASE;

/// A device model to fuzz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The 16550A UART.
    Uart,
    /// isa-debug-exit.
    DebugExit,
    /// The 8259 PIC pair (with the rest of the platform behind it).
    Pic,
    /// The 8254 PIT (with the platform).
    Pit,
    /// The CMOS RTC (with the platform).
    Rtc,
    /// The virtio-mmio transport (in front of an entropy device).
    VirtioMmio,
    /// virtio-blk on an in-memory disk.
    VirtioBlk,
    /// virtio-net.
    VirtioNet,
    /// virtio-console.
    VirtioConsole,
    /// virtio-rng.
    VirtioRng,
    /// The ucall port: a 32-bit `out` whose value is the command, decoding
    /// the struct at [`UCALL_STRUCT_ADDR`] in guest memory (the decoder the
    /// run loop uses, after its page walk).
    Ucall,
}

/// Where the ucall target's guest keeps its ucall struct.
pub const UCALL_STRUCT_ADDR: u64 = 0x8000;

impl Target {
    /// Every target, with its name in `fuzz/` and `corpora/`.
    pub const ALL: [(Target, &'static str); 11] = [
        (Target::Uart, "uart"),
        (Target::DebugExit, "debug_exit"),
        (Target::Pic, "pic"),
        (Target::Pit, "pit"),
        (Target::Rtc, "rtc"),
        (Target::VirtioMmio, "virtio_mmio"),
        (Target::VirtioBlk, "virtio_blk"),
        (Target::VirtioNet, "virtio_net"),
        (Target::VirtioConsole, "virtio_console"),
        (Target::VirtioRng, "virtio_rng"),
        (Target::Ucall, "ucall"),
    ];

    /// The target called `name`.
    pub fn named(name: &str) -> Option<Target> {
        Target::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(t, _)| *t)
    }

    /// The address windows actions reach, as (MMIO?, base, len).
    fn windows(self) -> &'static [(bool, u64, u64)] {
        match self {
            Target::Uart => &[(false, 0x3f8, 8)],
            Target::DebugExit => &[(false, 0xf4, 4)],
            Target::Pic => &[(false, 0x20, 2), (false, 0xa0, 2), (false, 0x4d0, 2)],
            Target::Pit => &[(false, 0x40, 4), (false, 0x61, 1)],
            Target::Rtc => &[(false, 0x70, 2)],
            Target::Ucall => &[(false, crate::devices::UCALL_PORT as u64, 4)],
            _ => &[(true, VIRTIO_BASE, 0x200)],
        }
    }

    fn virtio_device(self) -> Option<Box<dyn VirtioDevice>> {
        Some(match self {
            Target::VirtioMmio | Target::VirtioRng => Box::new(Rng::new(1)),
            Target::VirtioBlk => Box::new(Blk::new(Disk::in_memory(64 << 10), "fuzz", false)),
            Target::VirtioNet => Box::new(Net::new([2, 0, 0, 0, 0, 1])),
            Target::VirtioConsole => Box::new(Console::new()),
            _ => return None,
        })
    }
}

/// Access width.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// 1 byte.
    B1,
    /// 2 bytes.
    B2,
    /// 4 bytes.
    B4,
    /// 8 bytes.
    B8,
}

impl Width {
    fn bytes(self) -> usize {
        match self {
            Width::B1 => 1,
            Width::B2 => 2,
            Width::B4 => 4,
            Width::B8 => 8,
        }
    }
}

/// One buffer of a driver-style request.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufSpec {
    /// Guest-physical address, taken modulo twice the memory size: half of
    /// the values fall outside guest memory.
    pub addr: u32,
    /// Length.
    pub len: u16,
    /// Device-writable.
    pub write: bool,
}

/// A host-side operation (what a script does).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum HostOp {
    /// Queue a frame for the guest (virtio-net) or input bytes (console, UART).
    Input(Vec<u8>),
    /// Take what the guest sent (frames, console output).
    TakeOutput,
    /// Write the disk at a byte offset (virtio-blk).
    DiskWrite {
        /// Offset.
        offset: u16,
        /// Bytes.
        bytes: Vec<u8>,
    },
}

/// One step of a fuzz input.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A guest read of a device register (`at` modulo the target's windows).
    Read {
        /// Offset into the target's windows.
        at: u16,
        /// Width.
        width: Width,
    },
    /// A guest write of a device register.
    Write {
        /// Offset into the target's windows.
        at: u16,
        /// Width.
        width: Width,
        /// Value (little-endian, truncated to the width).
        value: u64,
    },
    /// Guest memory contents (descriptor tables, rings, buffers).
    Memory {
        /// Address modulo the memory size.
        addr: u32,
        /// Bytes written there (cut at the end of memory).
        bytes: Vec<u8>,
    },
    /// A virtio driver's setup: reset, negotiate `features`, set up every
    /// queue with `size` entries, DRIVER_OK.
    Setup {
        /// Features asked for (VERSION_1 is added).
        features: u64,
        /// Queue size (the device refuses what is not a power of two).
        size: u16,
    },
    /// A virtio request: a chain of buffers posted on a queue.
    Request {
        /// Queue index.
        queue: u8,
        /// The chain.
        bufs: Vec<BufSpec>,
        /// Notify after posting.
        notify: bool,
    },
    /// A host-side operation.
    Host(HostOp),
    /// Interrupt acknowledgement: the virtio ISR read and acked, or the
    /// PIC's INTA cycle.
    Ack,
    /// Virtual time moves by this many microseconds.
    Clock(u16),
}

/// Errors of decoding an input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty input.
    #[error("the input is empty")]
    Empty,
    /// Another format version.
    #[error("the input is format version {0}, this harness reads version {FORMAT_VERSION}")]
    Version(u8),
    /// arbitrary could not build the actions.
    #[error("the actions do not decode: {0}")]
    Actions(String),
}

/// Decodes an input into its actions (at most [`MAX_ACTIONS`]).
pub fn decode(data: &[u8]) -> Result<Vec<Action>, DecodeError> {
    let (&version, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let mut u = Unstructured::new(rest);
    let mut actions = Vec::new();
    while !u.is_empty() && actions.len() < MAX_ACTIONS {
        actions.push(Action::arbitrary(&mut u).map_err(|e| DecodeError::Actions(e.to_string()))?);
    }
    Ok(actions)
}

pub mod encode;
pub mod seeds;
#[cfg(test)]
mod tests;

/// The devices of one target, built fresh.
struct World {
    target: Target,
    pio: Bus,
    mmio: Bus,
    mem: GuestMem,
    edges: Arc<IrqEdges>,
    platform: Option<Platform>,
    uart: Option<Arc<Mutex<SerialDevice>>>,
    virtio: Option<Arc<Mutex<MmioTransport>>>,
    driver: Driver,
    now: u64,
}

impl World {
    fn new(target: Target, mem: GuestMem) -> World {
        let edges = IrqEdges::new();
        let (mut pio, mut mmio) = (Bus::new(), Bus::new());
        let mut platform = None;
        let mut uart = None;
        let mut virtio = None;
        match target {
            Target::Uart => {
                let dev = Arc::new(Mutex::new(SerialDevice::new(false)));
                let _ = pio.insert(0x3f8, 8, dev.clone());
                uart = Some(dev);
            }
            Target::DebugExit => {
                let _ = pio.insert(0xf4, 4, Arc::new(Mutex::new(DebugExit::new())));
            }
            Target::Pic | Target::Pit | Target::Rtc => {
                let p = Platform::new(crate::devices::rtc::DEFAULT_START, true);
                let _ = p.install(&mut pio);
                platform = Some(p);
            }
            _ => {
                if let Some(dev) = target.virtio_device() {
                    let t = Arc::new(Mutex::new(MmioTransport::new(
                        dev,
                        mem.clone(),
                        IrqLine::new(edges.clone(), 5),
                    )));
                    let _ = mmio.insert(VIRTIO_BASE, 0x1000, t.clone());
                    virtio = Some(t);
                }
            }
        }
        World {
            target,
            pio,
            mmio,
            driver: Driver::new(mem.clone()),
            mem,
            edges,
            platform,
            uart,
            virtio,
            now: 0,
        }
    }

    /// Maps an action offset onto the target's windows.
    fn address(&self, at: u16) -> (bool, u64) {
        let windows = self.target.windows();
        let total: u64 = windows.iter().map(|w| w.2).sum();
        let mut off = u64::from(at) % total;
        for &(mmio, base, len) in windows {
            if off < len {
                return (mmio, base + off);
            }
            off -= len;
        }
        (windows[0].0, windows[0].1)
    }

    fn bus(&mut self, mmio: bool) -> &mut Bus {
        if mmio {
            &mut self.mmio
        } else {
            &mut self.pio
        }
    }

    /// Brings the platform to the current time around an access to its
    /// ports, as the run loop does.
    fn sync_platform(&mut self, mmio: bool, addr: u64) {
        let port = u16::try_from(addr).ok().filter(|_| !mmio);
        if let (Some(p), Some(port)) = (&mut self.platform, port) {
            if Platform::decodes(port) {
                p.sync(self.now);
            }
        }
    }

    /// Runs one action and appends what the guest would observe to `seen`.
    fn step(&mut self, action: &Action, seen: &mut Vec<u64>) {
        match action {
            Action::Read { at, width } => {
                let (mmio, addr) = self.address(*at);
                let mut data = [0u8; 8];
                self.sync_platform(mmio, addr);
                self.bus(mmio).read(addr, &mut data[..width.bytes()]);
                self.sync_platform(mmio, addr);
                seen.push(u64::from_le_bytes(data));
            }
            Action::Write { value, .. } if self.target == Target::Ucall => {
                seen.push(ucall_digest(&self.mem, *value));
            }
            Action::Write { at, width, value } => {
                let (mmio, addr) = self.address(*at);
                let bytes = value.to_le_bytes();
                self.sync_platform(mmio, addr);
                let event = self.bus(mmio).write(addr, &bytes[..width.bytes()]);
                self.sync_platform(mmio, addr);
                seen.push(u64::from(event.is_some()));
            }
            Action::Memory { addr, bytes } => {
                let start = u64::from(*addr) % MEM_SIZE as u64;
                let room = MEM_SIZE - crate::devices::virtio::to_usize(start);
                let n = bytes.len().min(room);
                let _ = self.mem.write_slice(&bytes[..n], GuestAddress(start));
            }
            Action::Setup { features, size } => {
                if let Some(t) = &self.virtio {
                    let mut t = lock(t);
                    seen.push(u64::from(self.driver.negotiate(&mut t, *features)));
                    for q in 0..u16::try_from(t.device().queue_count()).unwrap_or(0) {
                        let base =
                            RINGS + u64::from(q) * crate::devices::virtio::driver::QUEUE_AREA;
                        self.driver.setup_queue(&mut t, q, *size, base);
                    }
                    seen.push(u64::from(self.driver.start(&mut t)));
                }
            }
            Action::Request {
                queue,
                bufs,
                notify,
            } => {
                if let Some(t) = &self.virtio {
                    let bufs: Vec<Buf> = bufs
                        .iter()
                        .take(64)
                        .map(|b| Buf {
                            addr: u64::from(b.addr) % (2 * MEM_SIZE as u64),
                            len: u32::from(b.len),
                            write: b.write,
                        })
                        .collect();
                    let q = u16::from(*queue % 2);
                    if self.driver.post(q, &bufs).is_some() && *notify {
                        self.driver.notify(&mut lock(t), q);
                    }
                    seen.extend(
                        self.driver
                            .used(q)
                            .iter()
                            .map(|&(id, len)| u64::from(id) << 32 | u64::from(len)),
                    );
                }
            }
            Action::Host(op) => self.host(op, seen),
            Action::Ack => {
                if let Some(t) = &self.virtio {
                    seen.push(u64::from(self.driver.ack_interrupt(&mut lock(t))));
                }
                if let Some(p) = &self.platform {
                    seen.push(p.acknowledge().map_or(0x100, u64::from));
                }
            }
            Action::Clock(us) => {
                self.now += u64::from(*us) * 1000;
                if let Some(p) = &mut self.platform {
                    p.sync(self.now);
                }
            }
        }
        seen.push(u64::from(self.edges.take()));
    }

    fn host(&mut self, op: &HostOp, seen: &mut Vec<u64>) {
        if let (Some(u), HostOp::Input(bytes)) = (&self.uart, op) {
            lock(u).feed(bytes);
        }
        let Some(t) = &self.virtio else {
            return;
        };
        let out = lock(t).host(|d| {
            let any = d.as_any_mut();
            if let Some(n) = any.downcast_mut::<Net>() {
                match op {
                    HostOp::Input(f) => u64::from(n.send(f)),
                    HostOp::TakeOutput => n.recv().map_or(0, |f| hash(&f)),
                    HostOp::DiskWrite { .. } => 0,
                }
            } else if let Some(c) = any.downcast_mut::<Console>() {
                match op {
                    HostOp::Input(b) => {
                        c.queue_input(b);
                        0
                    }
                    HostOp::TakeOutput => hash(&c.take_output()),
                    HostOp::DiskWrite { .. } => 0,
                }
            } else if let Some(b) = any.downcast_mut::<Blk>() {
                match op {
                    HostOp::DiskWrite { offset, bytes } => {
                        let disk = b.disk();
                        let off = u64::from(*offset);
                        let n = bytes.len().min(crate::devices::virtio::to_usize(
                            disk.size().saturating_sub(off),
                        ));
                        u64::from(disk.write(off, &bytes[..n]).is_ok())
                    }
                    _ => 0,
                }
            } else {
                0
            }
        });
        seen.push(out);
    }

    /// Everything a snapshot holds: device states (both buses), guest memory,
    /// the driver's position, virtual time.
    fn save(&self) -> Saved {
        let mut memory = vec![0u8; MEM_SIZE];
        let _ = self.mem.read_slice(&mut memory, GuestAddress(0));
        Saved {
            pio: self.pio.save(),
            mmio: self.mmio.save(),
            memory,
            driver: self.driver.clone(),
            now: self.now,
        }
    }

    /// A fresh world with `saved` restored into it.
    fn restored(target: Target, mem: GuestMem, saved: &Saved) -> Result<World, String> {
        let _ = mem.write_slice(&saved.memory, GuestAddress(0));
        let mut w = World::new(target, mem);
        w.pio.restore(&saved.pio).map_err(|e| e.to_string())?;
        w.mmio.restore(&saved.mmio).map_err(|e| e.to_string())?;
        w.driver = saved.driver.clone();
        w.now = saved.now;
        if let Some(p) = &mut w.platform {
            p.refresh_deadline();
        }
        Ok(w)
    }

    /// The final state: device states and a hash of guest memory.
    fn fingerprint(&self) -> Fingerprint {
        let mut memory = vec![0u8; MEM_SIZE];
        let _ = self.mem.read_slice(&mut memory, GuestAddress(0));
        (self.pio.save(), self.mmio.save(), hash(&memory))
    }
}

/// Device states on both buses and a hash of guest memory.
type Fingerprint = (
    Vec<(u64, String, DeviceState)>,
    Vec<(u64, String, DeviceState)>,
    u64,
);

struct Saved {
    pio: Vec<(u64, String, DeviceState)>,
    mmio: Vec<(u64, String, DeviceState)>,
    memory: Vec<u8>,
    driver: Driver,
    now: u64,
}

/// What the harness learns from a ucall: the decoded call or the error, hashed.
fn ucall_digest(mem: &GuestMem, eax: u64) -> u64 {
    use crate::ucall::{decode, UCALL_STRUCT_SIZE};
    let mut raw = [0u8; UCALL_STRUCT_SIZE];
    let _ = mem.read_slice(&mut raw, GuestAddress(UCALL_STRUCT_ADDR));
    let eax = u32::try_from(eax & 0xffff_ffff).unwrap_or(0);
    let text = match decode(eax, UCALL_STRUCT_ADDR, Some(&raw)) {
        Ok(u) => format!("{:?} {:?} {}", u.cmd, u.args, u.msg),
        Err(e) => e.to_string(),
    };
    hash(text.as_bytes())
}

fn hash(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// What an oracle found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OracleError {
    /// The input does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A saved state would not restore into fresh devices.
    #[error("restoring the snapshot taken after action {at} failed: {reason}")]
    Restore {
        /// Actions run before the snapshot.
        at: usize,
        /// Why.
        reason: String,
    },
    /// The run with a snapshot and restore in the middle differs.
    #[error("snapshot and restore after action {at} changed the run: {what}{detail}")]
    Diverged {
        /// Actions run before the snapshot.
        at: usize,
        /// What differed.
        what: &'static str,
        /// The first difference, when it can be shown.
        detail: String,
    },
    /// Guarded memory could not be mapped (the host, not the device).
    #[error("{0}")]
    Memory(String),
}

/// Runs `actions` on `target` straight through, and again with a snapshot
/// after half of them restored into fresh devices; the observations must
/// agree.
pub fn check(target: Target, actions: &[Action]) -> Result<(), OracleError> {
    let mem = |_| super::guarded::zeroed(MEM_SIZE).map_err(|e| OracleError::Memory(e.to_string()));
    let at = actions.len() / 2;

    let mut straight = World::new(target, mem(())?);
    let mut seen_a = Vec::new();
    for a in actions {
        straight.step(a, &mut seen_a);
    }
    let end_a = straight.fingerprint();
    drop(straight);

    let mut first = World::new(target, mem(())?);
    let mut seen_b = Vec::new();
    for a in &actions[..at] {
        first.step(a, &mut seen_b);
    }
    let saved = first.save();
    drop(first);
    let mut second = World::restored(target, mem(())?, &saved)
        .map_err(|reason| OracleError::Restore { at, reason })?;
    for a in &actions[at..] {
        second.step(a, &mut seen_b);
    }
    let end_b = second.fingerprint();
    let diverged = |what, detail| Err(OracleError::Diverged { at, what, detail });
    if seen_a != seen_b {
        let i = seen_a
            .iter()
            .zip(&seen_b)
            .take_while(|(a, b)| a == b)
            .count();
        return diverged(
            "what the guest observed (values read, interrupts, used buffers)",
            format!(
                ": observation {i}: {:?} straight, {:?} restored",
                seen_a.get(i),
                seen_b.get(i)
            ),
        );
    }
    let states = |e: &Fingerprint| e.0.iter().chain(&e.1).cloned().collect::<Vec<_>>();
    if let Some((a, b)) = states(&end_a)
        .into_iter()
        .zip(states(&end_b))
        .find(|(a, b)| a != b)
    {
        return diverged(
            "the final device state",
            format!(
                ": {} at {:#x}: {} straight, {} restored",
                a.1, a.0, a.2, b.2
            ),
        );
    }
    if end_a.2 != end_b.2 {
        return diverged("guest memory", String::new());
    }
    Ok(())
}

/// Runs one fuzz input on `target`: decodes it and checks the oracles.
pub fn run(target: Target, data: &[u8]) -> Result<(), OracleError> {
    let actions = decode(data)?;
    check(target, &actions)
}
