//! The machine's virtio devices: one virtio-mmio slot each, in the order the
//! configuration lists them, at the addresses and interrupt lines the layout
//! fixes; the kernel command-line entries that announce them; and delivery of
//! the edges their transports raise.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{IrqchipMode, Machine, MachineError};
use crate::devices::bus::{lock, Bus, BusError};
use crate::devices::irq::{IrqEdges, IrqLine};
use crate::devices::virtio::blk::{Blk, Disk, DiskError, DiskMode};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::pcap::{DeviceClock, Pcap};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDevice;
use crate::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_IRQS, VIRTIO_MMIO_SLOT_SIZE};
use crate::vm::memory::GuestMem;

/// A virtio device the machine should have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum VirtioSpec {
    /// A disk backed by an image file.
    Blk {
        /// The image.
        path: PathBuf,
        /// Overlay (the image never changes) or rw.
        mode: DiskMode,
    },
    /// A network card with no host networking.
    Net {
        /// Capture every frame to this pcap file (not kept in snapshots: a
        /// restored machine captures only when asked again).
        #[serde(skip)]
        pcap: Option<PathBuf>,
    },
    /// A second console.
    Console,
    /// An entropy source fed from the run's seed.
    Rng,
}

impl VirtioSpec {
    /// The device kind's short name ("blk", "net", "console", "rng").
    pub fn kind(&self) -> &'static str {
        match self {
            VirtioSpec::Blk { .. } => "blk",
            VirtioSpec::Net { .. } => "net",
            VirtioSpec::Console => "console",
            VirtioSpec::Rng => "rng",
        }
    }

    /// Parses a `--disk` argument: `FILE` or `FILE,rw`.
    pub fn parse_disk(arg: &str) -> Result<VirtioSpec, String> {
        let (path, mode) = match arg.rsplit_once(',') {
            Some((p, "rw")) => (p, DiskMode::Rw),
            Some((_, opt)) => {
                return Err(format!(
                    "unknown disk option '{opt}': the form is FILE or FILE,rw"
                ))
            }
            None => (arg, DiskMode::Overlay),
        };
        if path.is_empty() {
            return Err("a disk needs a file: --disk FILE[,rw]".into());
        }
        Ok(VirtioSpec::Blk {
            path: path.into(),
            mode,
        })
    }
}

/// Errors of creating the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    /// More devices than slots.
    #[error("{0} virtio devices asked for; lunavm has {max} slots", max = VIRTIO_MMIO_IRQS.len())]
    TooMany(usize),
    /// A disk image could not be used.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A slot could not be placed on the MMIO bus.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The pcap file could not be created.
    #[error("Cannot create the pcap file {path}")]
    Pcap {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One populated virtio-mmio slot.
pub struct VirtioSlot {
    /// What was asked for.
    pub spec: VirtioSpec,
    /// Guest-physical base of the registers.
    pub base: u64,
    /// Interrupt line.
    pub irq: u8,
    /// The transport, shared with the MMIO bus.
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl VirtioSlot {
    /// The kernel command-line entry that announces the slot, as Linux's
    /// virtio_mmio driver reads it: `virtio_mmio.device=4K@0xd0000000:5`.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            VIRTIO_MMIO_SLOT_SIZE >> 10,
            self.base,
            self.irq
        )
    }
}

fn make_device(
    spec: &VirtioSpec,
    index: usize,
    seed: u64,
    clock: &Arc<DeviceClock>,
) -> Result<Box<dyn VirtioDevice>, VirtioSetupError> {
    Ok(match spec {
        VirtioSpec::Blk { path, mode } => {
            let disk = Disk::open(path, *mode)?;
            Box::new(Blk::new(disk, &format!("lunavm-disk{index}"), false))
        }
        VirtioSpec::Net { pcap } => {
            let last = u8::try_from(index).unwrap_or(u8::MAX);
            let mut net = Net::new([0x02, 0x4c, 0x55, 0x4e, 0x41, last]);
            if let Some(path) = pcap {
                let p =
                    Pcap::create(path, clock.clone()).map_err(|source| VirtioSetupError::Pcap {
                        path: path.clone(),
                        source,
                    })?;
                net.capture(p);
            }
            Box::new(net)
        }
        VirtioSpec::Console => Box::new(Console::new()),
        VirtioSpec::Rng => Box::new(Rng::new(seed)),
    })
}

/// Creates the slots for `specs` and puts them on `bus`.
pub fn create(
    specs: &[VirtioSpec],
    mem: &GuestMem,
    edges: &Arc<IrqEdges>,
    clock: &Arc<DeviceClock>,
    seed: u64,
    bus: &mut Bus,
) -> Result<Vec<VirtioSlot>, VirtioSetupError> {
    if specs.len() > VIRTIO_MMIO_IRQS.len() {
        return Err(VirtioSetupError::TooMany(specs.len()));
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let base = VIRTIO_MMIO_BASE + i as u64 * VIRTIO_MMIO_SLOT_SIZE;
            let irq = VIRTIO_MMIO_IRQS[i];
            let device = make_device(spec, i, seed, clock)?;
            let transport = Arc::new(Mutex::new(MmioTransport::new(
                device,
                mem.clone(),
                IrqLine::new(edges.clone(), irq),
            )));
            bus.insert(base, VIRTIO_MMIO_SLOT_SIZE, transport.clone())?;
            Ok(VirtioSlot {
                spec: spec.clone(),
                base,
                irq,
                transport,
            })
        })
        .collect()
}

impl Machine {
    /// The virtio slots, in slot order.
    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    /// The command-line entries announcing every virtio slot, space-separated.
    pub fn virtio_cmdline(&self) -> String {
        self.virtio
            .iter()
            .map(VirtioSlot::cmdline_entry)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs `f` on the device in slot `index` (host-side access from a
    /// script), then lets the device deliver what became possible.
    pub fn with_virtio<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut dyn VirtioDevice) -> R,
    ) -> Option<R> {
        let slot = self.virtio.get(index)?;
        self.device_clock.set(self.clock.now_ns());
        let r = lock(&slot.transport).host(f);
        Some(r)
    }

    /// Delivers the edges devices raised to the interrupt controller.
    pub(crate) fn deliver_irq_edges(&mut self) -> Result<(), MachineError> {
        let edges = self.irq_edges.take();
        if edges == 0 {
            return Ok(());
        }
        for line in (0..16u8).filter(|l| edges & (1 << l) != 0) {
            match self.config.irqchip {
                IrqchipMode::Userspace => self.platform.pulse(line),
                IrqchipMode::Kernel => {
                    for level in [true, false] {
                        self.vm
                            .fd
                            .set_irq_line(u32::from(line), level)
                            .map_err(|source| MachineError::Kvm {
                                what: "raise a device's interrupt line",
                                source,
                            })?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_arguments_parse() {
        assert_eq!(
            VirtioSpec::parse_disk("a.img").unwrap(),
            VirtioSpec::Blk {
                path: "a.img".into(),
                mode: DiskMode::Overlay
            }
        );
        assert_eq!(
            VirtioSpec::parse_disk("dir,x/a.img,rw").unwrap(),
            VirtioSpec::Blk {
                path: "dir,x/a.img".into(),
                mode: DiskMode::Rw
            }
        );
        assert!(VirtioSpec::parse_disk("a.img,ro").is_err());
        assert!(VirtioSpec::parse_disk(",rw").is_err());
    }
}
