//! Snapshots: the whole machine — vCPUs, devices, virtual clock, counters,
//! entropy, memory — captured and restored. In memory, restoring the snapshot
//! the machine last took or restored copies back only the pages written since
//! (KVM's dirty log OR'ed with the VMM's own write bitmap): O(dirty pages),
//! not O(RAM). On disk, see [`file`].

pub mod file;
pub mod journal;
pub mod vcpu;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::boot::LoadedKernel;
use crate::clock::Clock;
use crate::devices::bus::{DeviceState, DeviceStateError};
use crate::emulate::Entry;
use crate::entropy::Entropy;
use crate::layout::PAGE_SIZE;
use crate::machine::{ExitCounts, Machine, UcallLog};
use crate::vm::cpuid::CpuProfile;
use crate::vm::dirty::{self, DirtyError};
use vcpu::VcpuState;

/// Schema version of [`MachineState`]; bumped on incompatible changes.
pub const STATE_VERSION: u32 = 1;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Errors of taking or restoring snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A KVM call failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MSR list does not fit KVM's limit.
    #[error("Too many MSRs for one KVM call")]
    TooManyMsrs,
    /// An MSR could not be read or written.
    #[error("MSR {0:#x} could not be saved or restored")]
    Msr(u32),
    /// Dirty tracking failed.
    #[error(transparent)]
    Dirty(#[from] DirtyError),
    /// A device refused its state.
    #[error(transparent)]
    Device(#[from] DeviceStateError),
    /// The snapshot does not fit this machine.
    #[error("The snapshot does not fit this machine: {0}")]
    Mismatch(String),
    /// --verify-restore found a different state.
    #[error(
        "Restored state differs from the snapshot (hash {found:#018x}, expected {expected:#018x})"
    )]
    Verify {
        /// The snapshot's hash.
        expected: u64,
        /// The restored machine's hash.
        found: u64,
    },
    /// The snapshot file is unusable.
    #[error(transparent)]
    File(#[from] file::FileError),
}

/// Everything but memory, serialisable.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct MachineState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Guest RAM size.
    pub mem_size: u64,
    /// The CPU profile the machine was built with.
    pub cpu: CpuProfile,
    /// The run's seed.
    pub seed: u64,
    /// The CPUID the guest was measured to see: (leaf, subleaf, [eax, ebx, ecx, edx]).
    pub effective_cpuid: Vec<(u32, u32, [u32; 4])>,
    /// The loaded kernel.
    pub kernel: Option<LoadedKernel>,
    /// Every vCPU.
    pub vcpus: Vec<VcpuState>,
    /// Port-bus devices as (base, name, state).
    pub pio: Vec<(u64, String, DeviceState)>,
    /// MMIO-bus devices as (base, name, state).
    pub mmio: Vec<(u64, String, DeviceState)>,
    /// Virtual time.
    pub clock: Clock,
    /// Exit counters.
    pub exits: ExitCounts,
    /// ucall log.
    pub ucalls: UcallLog,
    /// Completion counters.
    pub completions: BTreeMap<Entry, u64>,
    /// The entropy stream.
    pub entropy: Entropy,
    /// In-kernel VM state, with `--irqchip kernel`.
    #[serde(default)]
    pub kernel_irqchip: Option<KernelIrqchip>,
    /// The virtio devices, in slot order (a restore recreates them; disk
    /// images must still be at their paths).
    #[serde(default)]
    pub virtio: Vec<crate::machine::virtio::VirtioSpec>,
}

/// KVM's in-kernel interrupt controllers, PIT and clock.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct KernelIrqchip {
    /// PIC master, PIC slave, IOAPIC.
    pub chips: Vec<kvm_bindings::kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_bindings::kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_bindings::kvm_clock_data,
}

/// A snapshot held in memory.
pub struct Snapshot {
    id: u64,
    /// Everything but memory.
    pub state: MachineState,
    /// A full copy of each RAM region, in region order.
    pub memory: Vec<Vec<u8>>,
}

/// What a restore did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Pages copied back.
    pub pages: u64,
    /// Whether all of RAM was copied (first restore of this snapshot).
    pub full: bool,
}

impl Snapshot {
    /// A snapshot from a state and memory (e.g. read from a file).
    pub fn new(state: MachineState, memory: Vec<Vec<u8>>) -> Snapshot {
        Snapshot {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            state,
            memory,
        }
    }

    /// The hash `--verify-restore` compares: memory and vCPU registers.
    pub fn state_hash(&self) -> u64 {
        state_hash(self.memory.iter().map(Vec::as_slice), &self.state.vcpus)
    }
}

/// Feeds memory into `h` as one CRC-32 per MiB (fast; the CRCs then go
/// through the 64-bit hasher).
fn hash_memory(h: &mut std::collections::hash_map::DefaultHasher, bytes: &[u8]) {
    bytes.len().hash(h);
    for chunk in bytes.chunks(1 << 20) {
        crc32fast::hash(chunk).hash(h);
    }
}

/// Hash of memory and the architectural vCPU state (registers, segments,
/// control registers, XCRs) — not MSRs, whose TSC moves with host time.
pub fn state_hash<'a>(memory: impl Iterator<Item = &'a [u8]>, vcpus: &[VcpuState]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for region in memory {
        hash_memory(&mut h, region);
    }
    for v in vcpus {
        serde_json::to_vec(&(&v.regs, &v.sregs, &v.xcrs))
            .unwrap_or_default()
            .hash(&mut h);
    }
    h.finish()
}

fn boxed(e: SnapshotError) -> crate::machine::MachineError {
    crate::machine::MachineError::Snapshot(Box::new(e))
}

impl Machine {
    fn vcpu_states(&mut self) -> Result<Vec<VcpuState>, SnapshotError> {
        if self.msr_indices.is_none() {
            self.msr_indices = Some(vcpu::saveable_msrs(&self.vm.kvm, &self.vcpus[0])?);
        }
        let msrs = self.msr_indices.as_deref().unwrap_or(&[]);
        let in_kernel = self.config.irqchip == crate::machine::IrqchipMode::Kernel;
        self.vcpus
            .iter()
            .map(|v| vcpu::save(v, msrs, in_kernel))
            .collect()
    }

    /// The machine's state without memory.
    pub fn machine_state(&mut self) -> Result<MachineState, crate::machine::MachineError> {
        let vcpus = self.vcpu_states().map_err(boxed)?;
        let (completions, entropy) = self.completer.state();
        Ok(MachineState {
            version: STATE_VERSION,
            mem_size: self.vm.mem_size,
            cpu: self.config.cpu,
            seed: self.config.seed,
            effective_cpuid: self
                .effective_cpuid
                .leaves
                .iter()
                .map(|(&(l, s), &r)| (l, s, r))
                .collect(),
            kernel: self.kernel.clone(),
            vcpus,
            pio: self.pio_bus.save(),
            mmio: self.mmio_bus.save(),
            clock: self.clock.clone(),
            exits: self.exits.clone(),
            ucalls: self.ucalls.clone(),
            completions,
            entropy,
            kernel_irqchip: self.save_kernel_irqchip().map_err(boxed)?,
            virtio: self.config.virtio.clone(),
        })
    }

    fn save_kernel_irqchip(&self) -> Result<Option<KernelIrqchip>, SnapshotError> {
        if self.config.irqchip != crate::machine::IrqchipMode::Kernel {
            return Ok(None);
        }
        let kvm = |what| move |source| SnapshotError::Kvm { what, source };
        let mut chips = Vec::new();
        for chip_id in [
            kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
            kvm_bindings::KVM_IRQCHIP_PIC_SLAVE,
            kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.vm
                .fd
                .get_irqchip(&mut chip)
                .map_err(kvm("read the in-kernel irqchip"))?;
            chips.push(chip);
        }
        let pit = self
            .vm
            .fd
            .get_pit2()
            .map_err(kvm("read the in-kernel PIT"))?;
        let clock = self.vm.fd.get_clock().map_err(kvm("read the VM clock"))?;
        Ok(Some(KernelIrqchip { chips, pit, clock }))
    }

    fn restore_kernel_irqchip(&self, k: &KernelIrqchip) -> Result<(), SnapshotError> {
        let kvm = |what| move |source| SnapshotError::Kvm { what, source };
        for chip in &k.chips {
            self.vm
                .fd
                .set_irqchip(chip)
                .map_err(kvm("set the in-kernel irqchip"))?;
        }
        self.vm
            .fd
            .set_pit2(&k.pit)
            .map_err(kvm("set the in-kernel PIT"))?;
        let mut clock = k.clock;
        // The clock's flags are host-side information KVM does not take back.
        clock.flags = 0;
        self.vm
            .fd
            .set_clock(&clock)
            .map_err(kvm("set the VM clock"))?;
        Ok(())
    }

    /// Takes a snapshot. Later restores of it copy only the pages written
    /// after this point.
    pub fn take_snapshot(&mut self) -> Result<Snapshot, crate::machine::MachineError> {
        // Snapshots hold the guest's bytes, not our int3s.
        self.lift_sw_breakpoints();
        let snap = self.take_snapshot_inner();
        self.insert_sw_breakpoints();
        snap
    }

    fn take_snapshot_inner(&mut self) -> Result<Snapshot, crate::machine::MachineError> {
        self.collect_dirty().map_err(|e| boxed(e.into()))?;
        let state = self.machine_state()?;
        let mut memory = Vec::new();
        for region in self.vm.mem.iter() {
            let mut copy = vec![0u8; usize::try_from(region.len()).unwrap_or(0)];
            region
                .read_slice(&mut copy, MemoryRegionAddress(0))
                .map_err(|e| {
                    boxed(SnapshotError::Mismatch(format!(
                        "cannot read guest memory: {e}"
                    )))
                })?;
            memory.push(copy);
        }
        let snap = Snapshot::new(state, memory);
        self.snapshot_base = Some(snap.id);
        Ok(snap)
    }

    /// Restores `snap`: O(dirty pages) when it is the snapshot the machine
    /// last took or restored, a full copy otherwise.
    pub fn restore_snapshot(
        &mut self,
        snap: &Snapshot,
    ) -> Result<RestoreStats, crate::machine::MachineError> {
        let stats = self.restore_inner(snap).map_err(boxed)?;
        self.reinsert_sw_breakpoints_after_restore();
        Ok(stats)
    }

    fn restore_inner(&mut self, snap: &Snapshot) -> Result<RestoreStats, SnapshotError> {
        let st = &snap.state;
        if st.version != STATE_VERSION {
            return Err(SnapshotError::Mismatch(format!(
                "state version {} (this lunavm: {STATE_VERSION})",
                st.version
            )));
        }
        if st.mem_size != self.vm.mem_size || snap.memory.len() != self.vm.mem.num_regions() {
            return Err(SnapshotError::Mismatch(format!(
                "{} bytes of RAM in the snapshot, {} in the machine",
                st.mem_size, self.vm.mem_size
            )));
        }
        if st.vcpus.len() != self.vcpus.len() {
            return Err(SnapshotError::Mismatch(format!(
                "{} vCPUs in the snapshot",
                st.vcpus.len()
            )));
        }
        let dirty = self.collect_dirty()?;
        let full = self.snapshot_base != Some(snap.id);
        let mut stats = RestoreStats { pages: 0, full };
        for ((region, copy), bits) in self.vm.mem.iter().zip(&snap.memory).zip(&dirty) {
            if copy.len() as u64 != region.len() {
                return Err(SnapshotError::Mismatch(
                    "a memory region has another size".into(),
                ));
            }
            let len = copy.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| SnapshotError::Mismatch(format!("cannot map guest memory: {e}")))?;
            // Copies `bytes` of the snapshot back to `offset` of the region,
            // straight into its mapping: not through vm-memory, whose write
            // bitmap would record the copy as a VMM write (and cost an atomic
            // per page).
            let write = |offset: usize, n: usize| {
                if offset.checked_add(n).is_some_and(|end| end <= len) {
                    // SAFETY: `host` maps this region's `len` bytes for the life of
                    // `self.vm.mem`; `offset + n <= len` was just checked, `copy`
                    // has `len` bytes too, the two never overlap (one is guest
                    // memory, the other a heap buffer), and the vCPU is not running
                    // (`&mut self` excludes the run loop).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            copy.as_ptr().add(offset),
                            host.add(offset),
                            n,
                        )
                    };
                }
            };
            if full {
                write(0, len);
                stats.pages += region.len() / PAGE_SIZE;
            } else {
                let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
                dirty::for_each_page(bits, |p| {
                    write(p * page, page);
                    stats.pages += 1;
                });
            }
        }
        self.restore_state(st)?;
        self.snapshot_base = Some(snap.id);
        Ok(stats)
    }

    /// The pages written since the last collection (guest and VMM), also
    /// kept in [`Machine::dirty_carry`] when that is on.
    pub(crate) fn collect_dirty(&mut self) -> Result<dirty::DirtyBitmaps, DirtyError> {
        let bits = self
            .vm
            .dirty
            .collect(&self.vm.fd, &self.vm.mem, self.vm.slots.pieces())?;
        if let Some(carry) = &mut self.dirty_carry {
            if carry.len() != bits.len() {
                *carry = bits.iter().map(|b| vec![0; b.len()]).collect();
            }
            for (c, b) in carry.iter_mut().zip(&bits) {
                for (cw, bw) in c.iter_mut().zip(b) {
                    *cw |= bw;
                }
            }
        }
        Ok(bits)
    }

    /// Restores everything but memory from `st` (checked to fit already).
    pub(crate) fn restore_state(&mut self, st: &MachineState) -> Result<(), SnapshotError> {
        let in_kernel = self.config.irqchip == crate::machine::IrqchipMode::Kernel;
        if st.kernel_irqchip.is_some() != in_kernel {
            return Err(SnapshotError::Mismatch(
                "the snapshot and the machine use different irqchip modes (--irqchip)".into(),
            ));
        }
        if let Some(k) = &st.kernel_irqchip {
            self.restore_kernel_irqchip(k)?;
        }
        for (v, s) in self.vcpus.iter().zip(&st.vcpus) {
            vcpu::restore(v, s)?;
        }
        self.pio_bus.restore(&st.pio)?;
        self.mmio_bus.restore(&st.mmio)?;
        self.clock = st.clock.clone();
        self.exits = st.exits.clone();
        self.ucalls = st.ucalls.clone();
        self.completer
            .set_state(st.completions.clone(), st.entropy.clone());
        self.kernel = st.kernel.clone();
        self.reg_cache.invalidate();
        self.resume_over_breakpoint = false;
        // The timers' cached deadline follows their restored state.
        self.platform.refresh_deadline();
        Ok(())
    }

    /// Writes `bytes` at guest-physical `gpa` of `snap`'s copy of memory (the
    /// fuzzer takes its one-shot coverage breakpoints out of its snapshot
    /// this way). Whether the range was in one RAM region.
    pub fn patch_snapshot(&self, snap: &mut Snapshot, gpa: u64, bytes: &[u8]) -> bool {
        for (region, copy) in self.vm.mem.iter().zip(snap.memory.iter_mut()) {
            let start = region.start_addr().raw_value();
            let Some(off) = gpa.checked_sub(start) else {
                continue;
            };
            let Ok(off) = usize::try_from(off) else {
                continue;
            };
            if let Some(dst) = off
                .checked_add(bytes.len())
                .and_then(|end| copy.get_mut(off..end))
            {
                dst.copy_from_slice(bytes);
                return true;
            }
        }
        false
    }

    /// The hash of the machine's memory and vCPU state now (see [`state_hash`]).
    pub fn current_state_hash(&mut self) -> Result<u64, crate::machine::MachineError> {
        let vcpus = self.vcpu_states().map_err(boxed)?;
        let mut slices = Vec::new();
        for region in self.vm.mem.iter() {
            let len = usize::try_from(region.len()).unwrap_or(0);
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| {
                    boxed(SnapshotError::Mismatch(format!(
                        "cannot map guest memory: {e}"
                    )))
                })?;
            // SAFETY: `host` is the start of this region's live mapping of `len`
            // bytes, owned by `self.vm.mem` for the life of the borrow; the vCPU
            // is not running (`&mut self` excludes the run loop), so nothing
            // writes the memory while it is read.
            slices.push(unsafe { std::slice::from_raw_parts(host.cast_const(), len) });
        }
        Ok(state_hash(slices.into_iter(), &vcpus))
    }

    /// Checks the machine now against `snap` (for `--verify-restore`).
    pub fn verify_against(&mut self, snap: &Snapshot) -> Result<(), crate::machine::MachineError> {
        let expected = snap.state_hash();
        let found = self.current_state_hash()?;
        if expected == found {
            Ok(())
        } else {
            Err(boxed(SnapshotError::Verify { expected, found }))
        }
    }
}

impl Machine {
    /// Refuses a snapshot whose guest saw CPU features this host's guest
    /// cannot see (the CPU profile cannot be given here).
    pub fn check_cpu(&self, state: &MachineState) -> Result<(), crate::machine::MachineError> {
        let then = crate::vm::cpu_probe::EffectiveCpuid {
            leaves: state
                .effective_cpuid
                .iter()
                .map(|&(l, s, r)| ((l, s), r))
                .collect(),
        };
        let missing: Vec<&str> = crate::vm::cpuid::REPORTED_FEATURES
            .iter()
            .filter(|f| then.has(f) && !self.effective_cpuid.has(f))
            .map(|f| f.name)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(boxed(SnapshotError::Mismatch(format!(
                "its guest could see CPU features this host's guest cannot ({}); restore it on a host that has them",
                missing.join(" ")
            ))))
        }
    }

    /// Builds a machine for `snap` (its memory size, CPU profile and seed) and
    /// restores it.
    pub fn from_snapshot(
        snap: &Snapshot,
        mut config: crate::machine::MachineConfig,
    ) -> Result<Machine, crate::machine::MachineError> {
        config.mem_size = snap.state.mem_size;
        config.irqchip = if snap.state.kernel_irqchip.is_some() {
            crate::machine::IrqchipMode::Kernel
        } else {
            crate::machine::IrqchipMode::Userspace
        };
        config.cpu = snap.state.cpu;
        config.seed = snap.state.seed;
        config.virtio = snap.state.virtio.clone();
        let mut m = Machine::new(config)?;
        m.check_cpu(&snap.state)?;
        m.restore_snapshot(snap)?;
        Ok(m)
    }
}
