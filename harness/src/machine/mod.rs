//! The machine: one VM with its vCPUs, memory, device buses and virtual clock.
//! Front ends (CLI, scripts, gdb, fuzzers) drive it through `run`; none of them
//! touches KVM directly.

pub mod cpu;
pub mod debug;
pub mod drwatch;
pub mod fuzzbp;
pub mod intercept;
pub mod kick;
pub mod platform;
mod run;
pub mod spin;
pub mod stats;
pub mod stop;
pub mod swbp;
pub mod syscall_compat;
pub mod trace;
pub mod userdbg;
pub mod virtio;
pub mod watch;

use std::sync::{Arc, Mutex};

use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

use crate::boot::{self, BootError, LoadedKernel, Module};
use crate::clock::Clock;
use crate::devices::{
    self, bus::BusError, debug_exit::DebugExit, post_code::PostCode, serial::SerialDevice, Bus,
};
use crate::emulate::{self, Completer};
use crate::entropy::DEFAULT_SEED;
use crate::layout;
use crate::vm::cpu_probe::{self, CpuidComparison, EffectiveCpuid, ProbeError};
use crate::vm::cpuid::{self, CpuProfile};
use crate::vm::{Vm, VmError};

pub use stats::{ExitCounts, UcallLog};
pub use stop::{SerialWatch, StopCondition, StopReason};

/// How to build a machine.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// CPU profile.
    pub cpu: CpuProfile,
    /// Seed for every entropy source.
    pub seed: u64,
    /// Copy serial output to stdout as it is produced.
    pub echo_serial: bool,
    /// Completion-table entries switched off.
    pub no_complete: Vec<emulate::Entry>,
    /// Print ucall PRINT messages on stderr as they arrive.
    pub echo_ucall_prints: bool,
    /// Record every exit (for `--repeat`).
    pub trace_exits: bool,
    /// Treat determinism holes (kicks) as errors.
    pub strict: bool,
    /// Where the interrupt controllers and the PIT live.
    pub irqchip: IrqchipMode,
    /// The RTC's date at virtual time zero (Unix seconds).
    pub rtc_start: i64,
    /// virtio devices, one virtio-mmio slot each, in this order.
    pub virtio: Vec<virtio::VirtioSpec>,
    /// When to finish SYSCALLs the host leaves at CPL3 ([`syscall_compat`]).
    pub syscall_compat: syscall_compat::SyscallCompatMode,
    /// Which mechanism watches may use ([`drwatch`]).
    pub watch_mode: drwatch::WatchMode,
}

/// Where the PIC, PIT (and IOAPIC/LAPIC) are emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrqchipMode {
    /// In the VMM, on virtual time: deterministic (the default).
    Userspace,
    /// KVM's in-kernel irqchip and PIT: faster, driven by host time, not
    /// deterministic.
    Kernel,
}

impl std::str::FromStr for IrqchipMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "userspace" => Ok(IrqchipMode::Userspace),
            "kernel" => Ok(IrqchipMode::Kernel),
            other => Err(format!(
                "unknown irqchip mode '{other}': use userspace or kernel"
            )),
        }
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            mem_size: layout::DEFAULT_MEM_SIZE,
            cpu: CpuProfile::Baseline,
            seed: DEFAULT_SEED,
            echo_serial: false,
            no_complete: Vec::new(),
            echo_ucall_prints: false,
            trace_exits: false,
            strict: false,
            irqchip: IrqchipMode::Userspace,
            rtc_start: crate::devices::rtc::DEFAULT_START,
            virtio: Vec::new(),
            syscall_compat: syscall_compat::SyscallCompatMode::Auto,
            watch_mode: drwatch::WatchMode::Auto,
        }
    }
}

/// Errors of building or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// VM creation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Probing the effective CPUID failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// Probing SYSCALL and SYSRET failed.
    #[error(transparent)]
    SyscallProbe(#[from] crate::vm::syscall_probe::SyscallProbeError),
    /// Loading the kernel failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A device could not be placed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KVM_RUN failed.
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// A KVM call of the run loop failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A snapshot could not be taken or restored.
    #[error(transparent)]
    Snapshot(#[from] Box<crate::snapshot::SnapshotError>),
    /// Completing an instruction failed in KVM.
    #[error(transparent)]
    Completion(#[from] emulate::CompletionError),
    /// No such register.
    #[error("Unknown register '{0}'")]
    UnknownRegister(String),
    /// A value out of range.
    #[error("Value {value:#x} is out of range for {what}")]
    BadValue {
        /// What it was for.
        what: String,
        /// The value.
        value: u64,
    },
    /// KVM refused an MSR access.
    #[error("MSR {0:#x} cannot be accessed")]
    Msr(u32),
    /// An interrupt cannot be injected now.
    #[error("Cannot inject an interrupt: the guest has interrupts disabled (RFLAGS.IF = 0, an interrupt shadow, or one already pending)")]
    InterruptsDisabled,
    /// The debug registers are all taken.
    #[error(transparent)]
    DebugRegs(#[from] debug::DebugRegError),
    /// A software breakpoint could not be set.
    #[error(transparent)]
    SwBreakpoint(#[from] swbp::SwBreakpointError),
    /// A fuzzing breakpoint could not be placed.
    #[error(transparent)]
    FuzzBreakpoint(#[from] fuzzbp::FuzzBpError),
    /// A watch could not be set or removed.
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    /// KVM refused an interrupt.
    #[error("KVM refused to inject interrupt vector {0:#x}")]
    Inject(u8, #[source] std::io::Error),
    /// No guest read is waiting for a value.
    #[error("No intercepted guest read is waiting for a value")]
    NoPendingRead,
    /// The virtio devices could not be created.
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioSetupError),
    /// The ACPI tables could not be built or written.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::AcpiError),
}

/// The machine.
pub struct Machine {
    pub(crate) config: MachineConfig,
    /// Every vCPU; the run loop enters the one [`Machine::schedule`] picks.
    pub(crate) vcpus: Vec<VcpuFd>,
    /// Index of the vCPU that ran last (the one registers are read from).
    pub(crate) current: usize,
    pub(crate) vm: Vm,
    pub(crate) requested_cpuid: CpuId,
    pub(crate) effective_cpuid: EffectiveCpuid,
    pub(crate) pio_bus: Bus,
    pub(crate) mmio_bus: Bus,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) post_code: Arc<Mutex<PostCode>>,
    pub(crate) clock: Clock,
    pub(crate) exits: ExitCounts,
    pub(crate) ucalls: UcallLog,
    pub(crate) completer: Completer,
    pub(crate) kernel: Option<LoadedKernel>,
    pub(crate) intercepts: intercept::Intercepts,
    pub(crate) debug_regs: debug::DebugRegs,
    /// Data watches (on carved pages or debug registers).
    pub(crate) watches: watch::Watches,
    /// The watch mechanism the mode and the startup probe chose.
    pub(crate) watch_setup: drwatch::WatchSetup,
    /// `int3` breakpoints written into guest memory.
    pub(crate) sw_breakpoints: swbp::SwBreakpoints,
    /// The fuzzer's breakpoints (coverage, compares, crash sites).
    pub(crate) fuzz_bps: fuzzbp::FuzzBreakpoints,
    /// The last stop was a breakpoint: step over its instruction (with the
    /// breakpoints off) before running on.
    pub(crate) resume_over_breakpoint: bool,
    /// A single step over a breakpoint is armed (breakpoints off).
    pub(crate) step_over_armed: bool,
    /// Registers read since the vCPU last ran (KVM calls are slow on nested hosts).
    pub(crate) reg_cache: RegCache,
    /// The snapshot the guest memory derives from (restores of it copy only
    /// dirty pages).
    pub(crate) snapshot_base: Option<u64>,
    /// MSRs a snapshot saves, found on the first snapshot.
    pub(crate) msr_indices: Option<Vec<u32>>,
    /// The forward-progress watchdog.
    pub(crate) kicker: kick::Kicker,
    /// The exit trace, when `config.trace_exits`.
    pub(crate) trace: Vec<trace::ExitRecord>,
    /// The platform devices (only the RTC with the in-kernel irqchip).
    pub(crate) platform: platform::Platform,
    /// The absolute virtual time the current run call must stop at.
    pub(crate) run_time_limit: Option<u64>,
    /// The virtio slots.
    pub(crate) virtio: Vec<virtio::VirtioSlot>,
    /// Interrupt edges devices raised, delivered before the next entry.
    pub(crate) irq_edges: std::sync::Arc<crate::devices::irq::IrqEdges>,
    /// Virtual time as devices see it (pcap timestamps).
    pub(crate) device_clock: std::sync::Arc<crate::devices::virtio::pcap::DeviceClock>,
    /// The current run call injects no interrupts.
    pub(crate) block_interrupts: bool,
    /// The SYSCALL compatibility path.
    pub(crate) syscall_compat: syscall_compat::SyscallCompat,
    pub(crate) user_debug: userdbg::UserDebug,
    /// Step over the current breakpoint before running on (set by exits the
    /// run loop handles itself, e.g. a page fault at the SYSCALL path's
    /// breakpoint).
    pub(crate) step_over_now: bool,
    /// A spin-wait probe started by a kick ([`spin`]).
    pub(crate) spin: Option<spin::Active>,
    /// Guest-caused exits counted at the last kick.
    pub(crate) kick_mark: u64,
    /// Kicks in a row with no guest-caused exit between them.
    pub(crate) kicks_in_a_row: u32,
    /// When set, a mark (a hash of the state) per guest-caused exit, for
    /// reverse execution's recording and replay checks.
    pub(crate) exit_marks: Option<Vec<trace::ExitMark>>,
    /// When set, the dirty pages every snapshot's collection of the dirty
    /// log saw, kept for the incremental checkpoints of reverse execution
    /// (which would otherwise miss them).
    pub(crate) dirty_carry: Option<crate::vm::dirty::DirtyBitmaps>,
}

/// The current vCPU's registers as last read or written, until it runs again.
#[derive(Default)]
pub(crate) struct RegCache {
    regs: std::cell::Cell<Option<kvm_bindings::kvm_regs>>,
    sregs: std::cell::Cell<Option<kvm_bindings::kvm_sregs>>,
}

impl RegCache {
    pub(crate) fn invalidate(&self) {
        self.regs.set(None);
        self.sregs.set(None);
    }
}

impl Machine {
    /// Creates the VM, its vCPU and devices, and measures the effective CPUID.
    pub fn new(config: MachineConfig) -> Result<Machine, MachineError> {
        let vm = Vm::new(config.mem_size)?;
        if config.irqchip == IrqchipMode::Kernel {
            vm.fd
                .create_irq_chip()
                .map_err(VmError::kvm("create the in-kernel irqchip"))?;
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.fd
                .create_pit2(pit)
                .map_err(VmError::kvm("create the in-kernel PIT"))?;
        }
        let requested_cpuid = cpuid::build(&vm.kvm, config.cpu).map_err(VmError::from)?;
        let mut vcpu = vm.create_vcpu(0, &requested_cpuid)?;
        let effective_cpuid = cpu_probe::probe(&mut vcpu, &vm.mem)?;
        let syscall_probe = crate::vm::syscall_probe::probe(&mut vcpu, &vm.mem)?;
        let dr_probe = crate::vm::dr_probe::cached();
        let watch_setup = drwatch::WatchSetup {
            mode: config.watch_mode,
            probe: dr_probe,
            debug_regs: config
                .watch_mode
                .uses_debug_regs(dr_probe)
                .map_err(MachineError::from)?,
        };

        let serial = Arc::new(Mutex::new(SerialDevice::new(config.echo_serial)));
        let post_code = Arc::new(Mutex::new(PostCode::new()));
        let mut pio_bus = Bus::new();
        pio_bus.insert(
            u64::from(devices::SERIAL_PORT),
            u64::from(devices::SERIAL_PORT_LEN),
            serial.clone(),
        )?;
        pio_bus.insert(
            u64::from(devices::DEBUG_EXIT_PORT),
            u64::from(devices::DEBUG_EXIT_PORT_LEN),
            Arc::new(Mutex::new(DebugExit::new())),
        )?;
        pio_bus.insert(u64::from(devices::POST_CODE_PORT), 1, post_code.clone())?;
        pio_bus.insert(
            u64::from(crate::acpi::pm::PM1_EVT_PORT),
            u64::from(crate::acpi::pm::PM_PORT_LEN),
            Arc::new(Mutex::new(crate::acpi::pm::PmRegisters::new())),
        )?;
        let platform =
            platform::Platform::new(config.rtc_start, config.irqchip == IrqchipMode::Userspace);
        platform.install(&mut pio_bus)?;

        let irq_edges = crate::devices::irq::IrqEdges::new();
        devices::bus::lock(&serial).connect_irq(crate::devices::irq::IrqLine::new(
            irq_edges.clone(),
            devices::SERIAL_IRQ,
        ));
        let mut mmio_bus = Bus::new();
        let device_clock = crate::devices::virtio::pcap::DeviceClock::new();
        let virtio = virtio::create(
            &config.virtio,
            &vm.mem,
            &irq_edges,
            &device_clock,
            config.seed,
            &mut mmio_bus,
        )?;

        let completer = Completer::new(config.no_complete.clone(), config.seed);
        let mut syscall_compat = syscall_compat::SyscallCompat::new(
            config.syscall_compat,
            syscall_probe,
            completer.is_disabled(emulate::Entry::Syscall),
        );
        syscall_compat.trap_lstar(&vm.fd);
        Ok(Machine {
            config,
            vcpus: vec![vcpu],
            current: 0,
            vm,
            requested_cpuid,
            effective_cpuid,
            pio_bus,
            mmio_bus,
            serial,
            post_code,
            clock: Clock::new(),
            exits: ExitCounts::default(),
            ucalls: UcallLog::default(),
            completer,
            kernel: None,
            intercepts: intercept::Intercepts::default(),
            debug_regs: debug::DebugRegs::default(),
            watches: watch::Watches::default(),
            watch_setup,
            sw_breakpoints: swbp::SwBreakpoints::default(),
            fuzz_bps: fuzzbp::FuzzBreakpoints::default(),
            resume_over_breakpoint: false,
            step_over_armed: false,
            reg_cache: RegCache::default(),
            snapshot_base: None,
            msr_indices: None,
            kicker: kick::Kicker::start(),
            trace: Vec::new(),
            platform,
            run_time_limit: None,
            virtio,
            irq_edges,
            device_clock,
            block_interrupts: false,
            syscall_compat,
            user_debug: userdbg::UserDebug::new(crate::vm::user_debug_probe::cached().clone()),
            step_over_now: false,
            spin: None,
            kick_mark: 0,
            kicks_in_a_row: 0,
            exit_marks: None,
            dirty_carry: None,
        })
    }

    /// Loads a kernel image and sets the vCPU to its entry state.
    pub fn load_kernel(
        &mut self,
        image: &[u8],
        cmdline: &str,
        modules: &[Module],
    ) -> Result<&LoadedKernel, MachineError> {
        let mut announced = [cmdline, &self.virtio_cmdline()].join(" ");
        if boot::is_linux(image) {
            let hidden = self.cpuid_comparison().still_visible;
            announced = boot::linux::compat_cmdline(&announced, &hidden);
        }
        let cmdline = announced.trim();
        let kernel = boot::load(&self.vm.mem, self.vm.mem_size, image, cmdline, modules)?;
        let rsdp = self.write_acpi()?;
        match kernel.protocol {
            boot::Protocol::Pvh => boot::pvh::set_rsdp(&self.vm.mem, rsdp),
            boot::Protocol::Linux => boot::linux::set_rsdp(&self.vm.mem, rsdp),
            boot::Protocol::Multiboot => {}
        }
        boot::enter(&self.vcpus[0], &self.vm.mem, &kernel)?;
        self.reg_cache.invalidate();
        Ok(self.kernel.insert(kernel))
    }

    /// Writes the ACPI tables describing this machine (its irqchip mode,
    /// COM1 and the virtio slots) into the ACPI area; returns the RSDP's
    /// address. Guests that do not look for ACPI never see them: the area is
    /// reserved in the memory map.
    fn write_acpi(&self) -> Result<u64, MachineError> {
        let config = crate::acpi::AcpiConfig {
            cpus: 1,
            ioapic: self.config.irqchip == IrqchipMode::Kernel,
            pit_gsi: crate::acpi::madt::PIT_GSI_KVM_DEFAULT,
            virtio: self
                .virtio
                .iter()
                .map(|s| crate::acpi::VirtioSlot {
                    base: s.base,
                    size: layout::VIRTIO_MMIO_SLOT_SIZE,
                    irq: s.irq,
                })
                .collect(),
            com1: true,
        };
        let tables = crate::acpi::build(&config)?;
        Ok(crate::acpi::write(&self.vm.mem, &tables)?)
    }

    /// The intercepts, for front ends that add and remove them.
    pub fn intercepts_mut(&mut self) -> &mut intercept::Intercepts {
        &mut self.intercepts
    }

    /// Replaces the value an intercepted guest read returns.
    pub fn set_read_value(&mut self, value: u64) -> Result<(), MachineError> {
        if intercept::patch_read(&mut self.vcpus[self.current], value) {
            Ok(())
        } else {
            Err(MachineError::NoPendingRead)
        }
    }

    /// Claims `[base, base + len)` on a bus for a front-end device (a script's):
    /// guest accesses there are intercepted, reads default to all-ones.
    /// Returns the intercept id that `release_range` takes.
    pub fn claim_range(
        &mut self,
        space: intercept::Space,
        base: u64,
        len: u64,
        name: &'static str,
    ) -> Result<u64, MachineError> {
        let device = Arc::new(Mutex::new(devices::placeholder::Placeholder::new(name)));
        let bus = match space {
            intercept::Space::Pio => &mut self.pio_bus,
            intercept::Space::Mmio => &mut self.mmio_bus,
        };
        bus.insert(base, len, device)?;
        Ok(self
            .intercepts
            .add(space, base, base + len - 1, intercept::Direction::Both))
    }

    /// Releases a range claimed with `claim_range`.
    pub fn release_range(&mut self, space: intercept::Space, base: u64, id: u64) {
        let bus = match space {
            intercept::Space::Pio => &mut self.pio_bus,
            intercept::Space::Mmio => &mut self.mmio_bus,
        };
        bus.remove(base);
        self.intercepts.remove(id);
    }

    /// Moves virtual time forward by `ns` without running the guest.
    pub fn clock_step(&mut self, ns: u64) {
        self.clock.advance(ns);
    }

    /// The exit trace (empty unless `config.trace_exits`).
    pub fn exit_trace(&self) -> &[trace::ExitRecord] {
        &self.trace
    }

    /// Records an exit in the trace when tracing is on (and marks a
    /// guest-caused one when marks are asked for).
    pub(crate) fn record(&mut self, kind: trace::ExitKind, addr: u64, value: u64) {
        if kind.guest_caused() {
            self.mark_exit(kind, addr, value);
        }
        if self.config.trace_exits {
            let time_ns = self.clock.now_ns();
            let rip = self.regs().map_or(0, |r| r.rip);
            self.trace.push(trace::ExitRecord {
                kind,
                addr,
                value,
                time_ns,
                rip,
            });
        }
    }

    /// Pushes the mark of the guest-caused exit just counted, when marks are
    /// asked for: a hash of its kind, port or address, value, virtual time,
    /// the interrupts injected so far and the general and special registers.
    pub(crate) fn mark_exit(&mut self, kind: trace::ExitKind, addr: u64, value: u64) {
        if self.exit_marks.is_none() {
            return;
        }
        let regs = self.regs().ok();
        let sregs = self.sregs().ok();
        let mark = trace::ExitMark::new(
            trace::MarkInput {
                index: self.clock.guest_exits(),
                kind,
                addr,
                value,
                time_ns: self.clock.now_ns(),
                interrupts: self.exits.interrupts,
            },
            regs.as_ref(),
            sregs.as_ref(),
        );
        if let Some(marks) = &mut self.exit_marks {
            marks.push(mark);
        }
    }

    /// Fills in the RIP of the trace records from index `from` on that the
    /// run loop pushed while the exit's data still borrowed the vCPU.
    pub(crate) fn fill_trace_rips(&mut self, from: usize) {
        if self.trace.len() > from {
            let rip = self.regs().map_or(0, |r| r.rip);
            for r in &mut self.trace[from..] {
                r.rip = rip;
            }
        }
    }

    /// The configuration the machine was built with.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// The loaded kernel, if any.
    pub fn kernel(&self) -> Option<&LoadedKernel> {
        self.kernel.as_ref()
    }

    /// The CPUID the guest was given.
    pub fn requested_cpuid(&self) -> &CpuId {
        &self.requested_cpuid
    }

    /// The CPUID the guest was measured to see.
    pub fn effective_cpuid(&self) -> &EffectiveCpuid {
        &self.effective_cpuid
    }

    /// Requested against effective CPUID.
    pub fn cpuid_comparison(&self) -> CpuidComparison {
        cpu_probe::compare(&self.requested_cpuid, &self.effective_cpuid)
    }

    /// Everything the guest wrote to the serial port.
    pub fn serial_output(&self) -> Vec<u8> {
        devices::bus::lock(&self.serial).output().to_vec()
    }

    /// The serial output from byte `start` on (empty past its end), without
    /// copying what comes before.
    pub fn serial_output_since(&self, start: usize) -> Vec<u8> {
        devices::bus::lock(&self.serial)
            .output()
            .get(start..)
            .unwrap_or(&[])
            .to_vec()
    }

    /// How many bytes the guest has written to the serial port.
    pub fn serial_len(&self) -> usize {
        devices::bus::lock(&self.serial).output().len()
    }

    /// Queues bytes for the guest to read from the serial port.
    pub fn serial_input(&self, bytes: &[u8]) {
        devices::bus::lock(&self.serial).feed(bytes);
    }

    /// The last POST code and how many were written.
    pub fn post_code(&self) -> (u8, u64) {
        let p = devices::bus::lock(&self.post_code);
        (p.last(), p.writes())
    }

    /// The virtual clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Exit counters.
    pub fn exits(&self) -> &ExitCounts {
        &self.exits
    }

    /// What the guest said through the ucall port.
    pub fn ucalls(&self) -> &UcallLog {
        &self.ucalls
    }

    /// Completion-table counters.
    pub fn completions(&self) -> &std::collections::BTreeMap<emulate::Entry, u64> {
        self.completer.counts()
    }

    /// Unclaimed port accesses.
    pub fn unclaimed_pio(&self) -> devices::bus::Unclaimed {
        self.pio_bus.unclaimed()
    }

    /// Unclaimed MMIO accesses.
    pub fn unclaimed_mmio(&self) -> devices::bus::Unclaimed {
        self.mmio_bus.unclaimed()
    }

    /// Guest memory.
    pub fn memory(&self) -> &crate::vm::memory::GuestMem {
        &self.vm.mem
    }

    /// The current vCPU, for front ends that read registers.
    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpus[self.current]
    }

    /// Picks the vCPU to enter next. With one vCPU it is always vCPU 0; SMP
    /// interleaves vCPUs here, at exits, on the caller's thread.
    fn schedule(&self) -> usize {
        self.current % self.vcpus.len()
    }
}
