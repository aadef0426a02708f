//! The virtio-mmio transport, virtio 1.x ("version 2") register layout
//! (virtio 1.1, 4.2.2): feature negotiation, queue setup, notifications,
//! interrupt status, reset, and DEVICE_NEEDS_RESET for a driver that breaks
//! the protocol.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;

use super::{halves, status, Queues, VirtioDevice, VirtioError, QUEUE_MAX_SIZE};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC};
use crate::devices::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};
use crate::devices::irq::IrqLine;
use crate::vm::memory::GuestMem;

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The register layout version of virtio 1.x.
pub const VERSION: u32 = 2;
/// Vendor id: "LUNA" in little-endian.
pub const VENDOR_ID: u32 = 0x414e_554c;

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Interrupt status bit: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration (or the device status) changed.
pub const INT_CONFIG: u32 = 2;

/// Counters and the last protocol violation, for scripts and reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportStats {
    /// Queue notifications the device acted on.
    pub notifications: u64,
    /// Notifications ignored (device not live, queue not ready).
    pub ignored_notifications: u64,
    /// Interrupts signalled.
    pub interrupts: u64,
    /// Feature sets refused at FEATURES_OK.
    pub features_refused: u64,
    /// Protocol violations (each sets DEVICE_NEEDS_RESET).
    pub violations: u64,
    /// What the last violation was.
    pub last_violation: Option<String>,
    /// Driver resets.
    pub resets: u64,
}

/// The transport around one device, at one MMIO slot.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMem,
    irq: IrqLine,
    queues: Vec<Queue>,
    regs: Registers,
    stats: TransportStats,
}

/// The driver-visible registers that are not queue state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Registers {
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
}

/// The transport's saved state.
#[derive(Serialize, Deserialize)]
struct Saved {
    regs: Registers,
    queues: Vec<SavedQueue>,
    stats: TransportStats,
    device: DeviceState,
}

/// virtio-queue's `QueueState`, in a serializable shape.
#[derive(Serialize, Deserialize)]
struct SavedQueue {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

fn new_queues(n: usize) -> Vec<Queue> {
    (0..n)
        .map(|_| Queue::new(QUEUE_MAX_SIZE).expect("QUEUE_MAX_SIZE is a power of two"))
        .collect()
}

impl MmioTransport {
    /// `device` on `mem`, interrupting through `irq`.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMem, irq: IrqLine) -> MmioTransport {
        let queues = new_queues(device.queue_count());
        MmioTransport {
            device,
            mem,
            irq,
            queues,
            regs: Registers::default(),
            stats: TransportStats::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.regs.status
    }

    /// The interrupt status register.
    pub fn interrupt_status(&self) -> u32 {
        self.regs.interrupt_status
    }

    /// Negotiated features (what the driver accepted).
    pub fn driver_features(&self) -> u64 {
        self.regs.driver_features
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// The interrupt line.
    pub fn irq_line(&self) -> u8 {
        self.irq.line()
    }

    /// virtio-queue's view of queue `index`.
    pub fn queue_state(&self, index: usize) -> Option<QueueState> {
        self.queues.get(index).map(|q| q.state())
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn live(&self) -> bool {
        self.regs.status & status::DRIVER_OK != 0
            && self.regs.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Runs host-side work on the device (a script queued frames or input),
    /// then lets it deliver what the driver has buffers for.
    pub fn host<R>(&mut self, f: impl FnOnce(&mut dyn VirtioDevice) -> R) -> R {
        let r = f(self.device.as_mut());
        if self.live() {
            let mut q = Queues::new(&mut self.queues, &self.mem);
            let result = self.device.poll(&mut q);
            let used = q.used_mask();
            self.finish(used, result);
        }
        r
    }

    /// Signals used buffers and handles a device error.
    fn finish(&mut self, used: u32, result: Result<(), VirtioError>) {
        if used != 0 {
            let wants = (0..self.queues.len())
                .filter(|i| used & (1 << i) != 0)
                .any(|i| self.queues[i].needs_notification(&self.mem).unwrap_or(true));
            if wants {
                self.interrupt(INT_VRING);
            }
        }
        if let Err(e) = result {
            self.needs_reset(e.to_string());
        }
    }

    fn interrupt(&mut self, bit: u32) {
        self.regs.interrupt_status |= bit;
        self.stats.interrupts += 1;
        self.irq.pulse();
    }

    /// The driver broke the protocol: DEVICE_NEEDS_RESET, and a configuration
    /// interrupt if the driver is live (virtio 1.1, 2.1.2).
    fn needs_reset(&mut self, why: String) {
        self.stats.violations += 1;
        self.stats.last_violation = Some(why);
        if self.regs.status & status::DEVICE_NEEDS_RESET == 0 {
            self.regs.status |= status::DEVICE_NEEDS_RESET;
            if self.regs.status & status::DRIVER_OK != 0 {
                self.interrupt(INT_CONFIG);
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.queues = new_queues(self.device.queue_count());
        self.regs = Registers {
            config_generation: self.regs.config_generation,
            ..Registers::default()
        };
        self.stats.resets += 1;
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.regs.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.regs.queue_sel as usize);
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let (lo, hi) = halves(self.offered_features());
                match self.regs.device_features_sel {
                    0 => lo,
                    1 => hi,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.regs.interrupt_status,
            reg::STATUS => self.regs.status,
            // No shared memory regions: their length reads as all-ones.
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.regs.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.regs.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.regs.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.regs.queue_sel = v,
            reg::QUEUE_NUM
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_config(offset, v),
            reg::QUEUE_READY => self.write_queue_ready(v),
            reg::QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.regs.interrupt_status &= !v,
            reg::STATUS => self.write_status(v),
            _ => self.needs_reset(format!(
                "write to read-only or unknown register {offset:#x}"
            )),
        }
    }

    fn write_driver_features(&mut self, v: u32) {
        if self.regs.status & status::FEATURES_OK != 0 || self.regs.status & status::DRIVER == 0 {
            return self.needs_reset("driver features written outside feature negotiation".into());
        }
        match self.regs.driver_features_sel {
            0 => {
                self.regs.driver_features =
                    (self.regs.driver_features & !0xffff_ffff) | u64::from(v)
            }
            1 => {
                self.regs.driver_features =
                    (self.regs.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
            }
            // Feature words past 63 do not exist: the driver may only write zeros.
            _ if v == 0 => {}
            sel => self.needs_reset(format!("driver features word {sel} set to {v:#x}")),
        }
    }

    fn write_queue_config(&mut self, offset: u64, v: u32) {
        if self.regs.status & status::FEATURES_OK == 0 {
            return self.needs_reset("queue set up before FEATURES_OK".into());
        }
        let sel = self.regs.queue_sel;
        let Some(q) = self.selected_queue() else {
            return self.needs_reset(format!("queue {sel} does not exist"));
        };
        if q.ready() {
            return self.needs_reset(format!("queue {sel} changed while ready"));
        }
        let set_low = |old: u64| (old & !0xffff_ffff) | u64::from(v);
        let set_high = |old: u64| (old & 0xffff_ffff) | (u64::from(v) << 32);
        let result = match offset {
            reg::QUEUE_NUM => u16::try_from(v)
                .map_err(|_| virtio_queue::Error::InvalidSize)
                .and_then(|n| q.try_set_size(n)),
            reg::QUEUE_DESC_LOW => {
                q.try_set_desc_table_address(GuestAddress(set_low(q.desc_table())))
            }
            reg::QUEUE_DESC_HIGH => {
                q.try_set_desc_table_address(GuestAddress(set_high(q.desc_table())))
            }
            reg::QUEUE_DRIVER_LOW => {
                q.try_set_avail_ring_address(GuestAddress(set_low(q.avail_ring())))
            }
            reg::QUEUE_DRIVER_HIGH => {
                q.try_set_avail_ring_address(GuestAddress(set_high(q.avail_ring())))
            }
            reg::QUEUE_DEVICE_LOW => {
                q.try_set_used_ring_address(GuestAddress(set_low(q.used_ring())))
            }
            _ => q.try_set_used_ring_address(GuestAddress(set_high(q.used_ring()))),
        };
        if let Err(e) = result {
            self.needs_reset(format!("queue {sel}: register {offset:#x} = {v:#x}: {e}"));
        }
    }

    fn write_queue_ready(&mut self, v: u32) {
        let sel = self.regs.queue_sel;
        let mem = self.mem.clone();
        let Some(q) = self.selected_queue() else {
            return self.needs_reset(format!("queue {sel} does not exist"));
        };
        if v == 0 {
            q.set_ready(false);
            return;
        }
        // virtio-queue checks the rings only of a ready queue.
        q.set_ready(true);
        if !q.is_valid(&mem) {
            q.set_ready(false);
            self.needs_reset(format!(
                "queue {sel} made ready with rings outside guest memory or misaligned"
            ));
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            return self.reset();
        }
        let old = self.regs.status;
        // The driver writes back what it read, NEEDS_RESET included; that bit
        // is the device's to set and stays as it is.
        let allowed = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED | DEVICE_NEEDS_RESET;
        let keep = old & !DEVICE_NEEDS_RESET;
        if v & !allowed != 0 || v & keep != keep {
            return self.needs_reset(format!(
                "status written {v:#x} over {old:#x}: bits may only be added"
            ));
        }
        let mut new = (v & !DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET);
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 {
            let offered = self.offered_features();
            let asked = self.regs.driver_features;
            if asked & !offered != 0 || asked & VIRTIO_F_VERSION_1 == 0 {
                // Refused the way the spec says: FEATURES_OK stays clear.
                self.stats.features_refused += 1;
                new &= !FEATURES_OK;
            }
        }
        if new & DRIVER_OK != 0 && new & FEATURES_OK == 0 {
            self.regs.status = new & !DRIVER_OK;
            return self.needs_reset("DRIVER_OK set without FEATURES_OK".into());
        }
        self.regs.status = new;
        if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            // Host-side work queued before the driver was ready can go now.
            self.host(|_| ());
        }
    }

    fn notify(&mut self, v: u32) {
        let index = v as usize;
        if !self.live() || !self.queues.get(index).is_some_and(|q| q.ready()) {
            self.stats.ignored_notifications += 1;
            return;
        }
        self.stats.notifications += 1;
        let mut q = Queues::new(&mut self.queues, &self.mem);
        let result = self.device.notify(index, &mut q);
        let used = q.used_mask();
        self.finish(used, result);
    }
}

impl BusDevice for MmioTransport {
    fn name(&self) -> &'static str {
        self.device.name()
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            return self.device.read_config(offset - reg::CONFIG, data);
        }
        if data.len() != 4 || offset % 4 != 0 {
            data.fill(0);
            return self.needs_reset(format!(
                "{}-byte read of register {offset:#x} (registers are 32-bit)",
                data.len()
            ));
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return None;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(b) if offset % 4 == 0 => self.write_reg(offset, u32::from_le_bytes(b)),
            _ => self.needs_reset(format!(
                "{}-byte write of register {offset:#x} (registers are 32-bit)",
                data.len()
            )),
        }
        None
    }

    fn save(&self) -> DeviceState {
        let queues = self
            .queues
            .iter()
            .map(|q| SavedQueue {
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                next_avail: q.next_avail(),
                next_used: q.next_used(),
            })
            .collect();
        serde_json::to_value(Saved {
            regs: self.regs.clone(),
            queues,
            stats: self.stats.clone(),
            device: self.device.save(),
        })
        .unwrap_or_default()
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let name = self.device.name();
        let saved: Saved =
            serde_json::from_value(state.clone()).map_err(|e| DeviceStateError::new(name, e))?;
        if saved.queues.len() != self.device.queue_count() {
            return Err(DeviceStateError::new(name, "the saved queue count differs"));
        }
        let queues = saved
            .queues
            .iter()
            .map(|s| {
                Queue::try_from(QueueState {
                    max_size: QUEUE_MAX_SIZE,
                    next_avail: s.next_avail,
                    next_used: s.next_used,
                    event_idx_enabled: false,
                    size: s.size,
                    ready: s.ready,
                    desc_table: s.desc,
                    avail_ring: s.avail,
                    used_ring: s.used,
                })
                .map_err(|e| DeviceStateError::new(name, format!("a saved queue: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.device
            .restore(&saved.device)
            .map_err(|e| DeviceStateError::new(name, e))?;
        self.queues = queues;
        self.regs = saved.regs;
        self.stats = saved.stats;
        Ok(())
    }
}
