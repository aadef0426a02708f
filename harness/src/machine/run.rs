//! The run loop: enter the guest, handle each exit, stop when a condition holds.

use kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;
use kvm_ioctls::VcpuExit;

use super::intercept::{le_value, Access, Space};
use super::platform::Platform;
use super::syscall_compat;
use super::trace::ExitKind;
use super::userdbg;
use super::{Machine, MachineError, StopCondition, StopReason};
use crate::clock::Charge;
use crate::devices::{bus::lock, DeviceEvent, SERIAL_PORT, SERIAL_PORT_LEN, UCALL_PORT};
use crate::emulate::{Completer, Context, FailedInstruction, Outcome};
use crate::ucall::{self, Command, UCALL_STRUCT_SIZE};
use crate::vm::access;
use crate::vm::regs::{code_bitness, linear_rip, paging_regs, RegisterDump, RFLAGS_TF};

/// What an exit left to do after the vCPU borrow ends.
enum Pending {
    None,
    Write {
        port: u16,
        data: [u8; 8],
        len: usize,
    },
    Ucall {
        eax: u32,
    },
    MmioWrite {
        addr: u64,
        data: [u8; 8],
        len: usize,
    },
    ReadIntercepted(Access),
    Halt,
    Shutdown,
    Emulation,
    Debug {
        pc: u64,
        exception: u32,
        dr6: u64,
    },
    /// A debug exit from data breakpoints (watches), handled: the
    /// instruction has completed.
    DataHit {
        pc: u64,
    },
    Internal(u32),
    /// The guest wrote LSTAR (the SYSCALL path's MSR filter sent it here).
    LstarWrite(u64),
    FailEntry(u64),
    Kicked,
    /// A guest access to a watched page, completed (the harness's exit).
    Watched {
        write: bool,
    },
    Unexpected(String),
}

/// The #BP exception vector, as KVM reports it in a debug exit.
const BP_VECTOR: u32 = 3;
/// The #DB exception vector, as KVM reports it in a debug exit.
const DB_VECTOR: u32 = 1;
/// The #BP exception vector, for injection.
const BP_VECTOR_U8: u8 = 3;

/// The stop a device event causes.
fn device_stop(event: DeviceEvent) -> StopReason {
    match event {
        DeviceEvent::Exit(value) => StopReason::GuestExit { value },
    }
}

fn copy8(src: &[u8]) -> ([u8; 8], usize) {
    let mut d = [0u8; 8];
    let n = src.len().min(8);
    d[..n].copy_from_slice(&src[..n]);
    (d, n)
}

fn size_u8(len: usize) -> u8 {
    u8::try_from(len).unwrap_or(u8::MAX)
}

impl Machine {
    /// Runs the guest until it ends the run or `cond` holds.
    pub fn run(&mut self, cond: &StopCondition) -> Result<StopReason, MachineError> {
        self.kicker.enter();
        let reason = self.run_inner(cond);
        self.kicker.leave();
        lock(&self.serial).flush();
        reason
    }

    /// A kick interrupted KVM_RUN. Harmless unless a timer deadline is pending:
    /// then the guest is presumably waiting for it without exits, and virtual
    /// time jumps to the deadline — a host-timed event, so a determinism hole
    /// (counted, traced, and an error under `--strict`).
    fn kicked(&mut self) -> Result<Option<StopReason>, MachineError> {
        self.exits.kicks += 1;
        // A probe still running (its steps stopped coming): start over.
        self.end_probe()?;
        let Some(deadline) = self.next_timer_deadline() else {
            return Ok(None);
        };
        if deadline <= self.clock.now_ns() {
            return Ok(None);
        }
        // Look for a spin wait first; jump host-timed only as a fallback.
        let Some(deadline) = self.kick_with_deadline(deadline)? else {
            return Ok(None);
        };
        self.exits.kick_time_jumps += 1;
        // The record's RIP is where the guest spun; its value the deadline.
        self.record(ExitKind::Kick, 0, deadline);
        if self.config.strict {
            return Ok(Some(StopReason::DeterminismHole {
                what: "the guest ran without an exit and without a spin wait lunavm could recognise for a second of host time while a timer was due, and virtual time was moved"
                    .into(),
            }));
        }
        self.clock.advance(deadline - self.clock.now_ns());
        Ok(None)
    }

    /// The virtual time (ns) of the platform's next timer event, if any timer
    /// is armed.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.platform.next_deadline()
    }

    /// Completes what KVM left pending at the last exit (a port or MMIO
    /// read's data, an instruction's end) without running the guest: a
    /// `KVM_RUN` with `immediate_exit` set. Taking or restoring the vCPU's
    /// state between an exit and the next entry needs it (KVM's API says so).
    pub(crate) fn settle(&mut self) -> Result<(), MachineError> {
        let vcpu = &mut self.vcpus[self.current];
        vcpu.set_kvm_immediate_exit(1);
        let result = vcpu.run().map(|_| ());
        vcpu.set_kvm_immediate_exit(0);
        self.reg_cache.invalidate();
        match result {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(MachineError::Run(e)),
            Ok(()) => Ok(()),
        }
    }

    /// Before entering the guest: bring the timers up to date when a deadline
    /// has passed, and inject the PIC's interrupt if the guest can take it now,
    /// else ask KVM for an exit as soon as it can (an interrupt window).
    fn prepare_entry(&mut self) -> Result<(), MachineError> {
        self.deliver_irq_edges()?;
        let now = self.clock.now_ns();
        if self.platform.next_deadline().is_some_and(|d| d <= now) {
            self.platform.sync(now);
        }
        // The single step that completes a watched access must run that
        // instruction, not an interrupt handler; so must a debugger's step.
        // A spin-wait probe's steps must not run a handler either.
        if self.watches.pending.is_some() || self.block_interrupts || self.spin.is_some() {
            self.vcpus[self.current]
                .get_kvm_run()
                .request_interrupt_window = 0;
            return Ok(());
        }
        let pending = self.platform.pending();
        let vcpu = &mut self.vcpus[self.current];
        let run = vcpu.get_kvm_run();
        let can_take = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        run.request_interrupt_window = u8::from(pending && !can_take);
        if pending && can_take {
            if let Some(vector) = self.platform.acknowledge() {
                crate::vm::irq::inject(vcpu, vector)
                    .map_err(|e| MachineError::Inject(vector, e))?;
                self.exits.interrupts += 1;
                // The guest's IDT may have changed since the last look.
                self.sync_syscall_compat()?;
                self.record(ExitKind::Interrupt, 0, u64::from(vector));
                // Another request may be waiting behind this one.
                let more = self.platform.pending();
                self.vcpus[self.current]
                    .get_kvm_run()
                    .request_interrupt_window = u8::from(more);
            }
        }
        Ok(())
    }

    /// Brings the platform devices to the current virtual time around an
    /// access to their ports.
    fn sync_platform_port(&mut self, port: u16) {
        if Platform::decodes(port) {
            self.platform.sync(self.clock.now_ns());
        }
    }

    /// A HLT with interrupts enabled waits for the next interrupt: virtual time
    /// jumps to the next timer deadline (not past the run's time limit).
    /// Returns None to keep running, or the stop when nothing can wake it.
    fn halted(&mut self) -> Result<Option<StopReason>, MachineError> {
        let regs = self.regs()?;
        let interrupts_enabled = regs.rflags & (1 << 9) != 0;
        self.deliver_irq_edges()?;
        if interrupts_enabled {
            if self.platform.pending() {
                return Ok(None);
            }
            if let Some(deadline) = self.platform.next_deadline() {
                let now = self.clock.now_ns();
                let target = self
                    .run_time_limit
                    .map_or(deadline, |l| deadline.min(l))
                    .max(now);
                self.clock.advance(target - now);
                self.platform.sync(target);
                return Ok(None);
            }
        }
        Ok(Some(StopReason::Halted {
            rip: regs.rip,
            interrupts_enabled,
        }))
    }

    fn run_inner(&mut self, cond: &StopCondition) -> Result<StopReason, MachineError> {
        let start_exits = self.clock.guest_exits();
        let start_ns = self.clock.now_ns();
        self.run_time_limit = cond.max_time_ns.map(|m| start_ns.saturating_add(m));
        self.block_interrupts = cond.block_interrupts;
        if let Some(stop) = self.check_serial(cond) {
            return Ok(stop);
        }
        self.sync_syscall_compat()?;
        self.user_debug_begin(cond.single_step)?;
        // Step over the instruction a breakpoint stopped at: one single step
        // with the breakpoints off; the exit it ends with re-arms them. A
        // requested single step is the same step, kept armed until its debug
        // exit.
        let was_at_breakpoint = self.resume_over_breakpoint;
        if self.resume_over_breakpoint || cond.single_step {
            self.resume_over_breakpoint = false;
            self.arm_step_over()?;
            self.step_over_armed = true;
        }
        let result = self.run_loop(cond, start_exits, start_ns);
        // A probe cut short by the run's end: the guest state is as stepped.
        self.end_probe()?;
        if self.step_over_armed {
            // Stopped before the step completed: step over next time (a
            // requested step only if it started at a breakpoint).
            self.step_over_armed = false;
            self.disarm_step_over()?;
            self.resume_over_breakpoint = !cond.single_step || was_at_breakpoint;
        }
        result
    }

    fn run_loop(
        &mut self,
        cond: &StopCondition,
        start_exits: u64,
        start_ns: u64,
    ) -> Result<StopReason, MachineError> {
        loop {
            let exits = self.clock.guest_exits() - start_exits;
            if cond.max_exits.is_some_and(|m| exits >= m) {
                return Ok(StopReason::ExitBudget { exits });
            }
            let ns = self.clock.now_ns() - start_ns;
            if cond.max_time_ns.is_some_and(|m| ns >= m) {
                return Ok(StopReason::TimeBudget { ns });
            }

            self.current = self.schedule();
            self.prepare_entry()?;
            self.refresh_watch_shadows()?;
            self.reg_cache.invalidate();
            let traced = self.trace.len();
            // A read's mark, taken once the vCPU borrow ends.
            let mut read_mark = None;
            let vcpu = &mut self.vcpus[self.current];
            self.kicker
                .hold(vcpu.get_kvm_run().request_interrupt_window != 0);
            let pending = match vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.exits.pio_out += 1;
                    if port == UCALL_PORT && data.len() == 4 {
                        let eax = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                        Pending::Ucall { eax }
                    } else {
                        let (data, len) = copy8(data);
                        Pending::Write { port, data, len }
                    }
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.exits.pio_in += 1;
                    self.clock.charge(Charge::Pio);
                    if Platform::decodes(port) {
                        self.platform.sync(self.clock.now_ns());
                    }
                    self.pio_bus.read(u64::from(port), data);
                    read_mark = Some((ExitKind::PioIn, u64::from(port), le_value(data)));
                    if self.config.trace_exits {
                        let time_ns = self.clock.now_ns();
                        let value = le_value(data);
                        self.trace.push(super::trace::ExitRecord {
                            kind: ExitKind::PioIn,
                            addr: u64::from(port),
                            value,
                            time_ns,
                            rip: 0,
                        });
                    }
                    if self.intercepts.matches(Space::Pio, u64::from(port), false) {
                        Pending::ReadIntercepted(Access {
                            space: Space::Pio,
                            addr: u64::from(port),
                            size: size_u8(data.len()),
                            write: false,
                            value: le_value(data),
                        })
                    } else {
                        Pending::None
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data))
                    if self.vm.slots.any_carved() && self.vm.slots.mode(addr).is_some() =>
                {
                    self.watches
                        .complete_access(&self.vm.slots, &self.vm.mem, addr, data, false);
                    Pending::Watched { write: false }
                }
                Ok(VcpuExit::MmioWrite(addr, data))
                    if self.vm.slots.any_carved() && self.vm.slots.mode(addr).is_some() =>
                {
                    let (mut data, len) = copy8(data);
                    self.watches.complete_access(
                        &self.vm.slots,
                        &self.vm.mem,
                        addr,
                        &mut data[..len],
                        true,
                    );
                    Pending::Watched { write: true }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.exits.mmio_read += 1;
                    self.clock.charge(Charge::Mmio);
                    self.device_clock.set(self.clock.now_ns());
                    self.mmio_bus.read(addr, data);
                    read_mark = Some((ExitKind::MmioRead, addr, le_value(data)));
                    if self.config.trace_exits {
                        let time_ns = self.clock.now_ns();
                        let value = le_value(data);
                        self.trace.push(super::trace::ExitRecord {
                            kind: ExitKind::MmioRead,
                            addr,
                            value,
                            time_ns,
                            rip: 0,
                        });
                    }
                    if self.intercepts.matches(Space::Mmio, addr, false) {
                        Pending::ReadIntercepted(Access {
                            space: Space::Mmio,
                            addr,
                            size: size_u8(data.len()),
                            write: false,
                            value: le_value(data),
                        })
                    } else {
                        Pending::None
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.exits.mmio_write += 1;
                    let (data, len) = copy8(data);
                    Pending::MmioWrite { addr, data, len }
                }
                Ok(VcpuExit::Hlt) => Pending::Halt,
                // Our own request: the guest can take the pending interrupt now.
                Ok(VcpuExit::IrqWindowOpen) => Pending::None,
                Ok(VcpuExit::Shutdown) => Pending::Shutdown,
                Ok(VcpuExit::Debug(arch)) => Pending::Debug {
                    pc: arch.pc,
                    exception: arch.exception,
                    dr6: arch.dr6,
                },
                Ok(VcpuExit::InternalError) => {
                    let run = vcpu.get_kvm_run();
                    // SAFETY: KVM set exit_reason to KVM_EXIT_INTERNAL_ERROR, which
                    // means the `internal` member of the union is the one written.
                    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
                    if suberror == KVM_INTERNAL_ERROR_EMULATION {
                        Pending::Emulation
                    } else {
                        Pending::Internal(suberror)
                    }
                }
                Ok(VcpuExit::X86Wrmsr(exit))
                    if exit.index == crate::vm::syscall_probe::MSR_LSTAR =>
                {
                    // Performed below, with KVM_SET_MSRS (filters do not
                    // apply to the VMM's own accesses).
                    *exit.error = 0;
                    Pending::LstarWrite(exit.data)
                }
                Ok(VcpuExit::FailEntry(reason, _cpu)) => Pending::FailEntry(reason),
                Ok(other) => Pending::Unexpected(format!("{other:?}")),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.exits.interrupted += 1;
                    Pending::Kicked
                }
                Err(e) => return Err(MachineError::Run(e)),
            };

            // A port or MMIO access (its instruction completes at the next
            // KVM_RUN), for a requested single step below.
            let access_exit = !matches!(pending, Pending::Kicked | Pending::Watched { .. })
                && matches!(
                    self.vcpus[self.current].get_kvm_run().exit_reason,
                    kvm_bindings::KVM_EXIT_IO | kvm_bindings::KVM_EXIT_MMIO
                );
            self.kicker.progress();
            self.fill_trace_rips(traced);
            if let Some((kind, addr, value)) = read_mark {
                self.mark_exit(kind, addr, value);
            }
            // Data breakpoints (a trap: the instruction has completed); a
            // single step's own exit may carry one too. KVM fills DR6 for
            // #DB exits only (a #BP exit carries a stale one).
            let pending = match pending {
                Pending::Debug {
                    pc,
                    exception: DB_VECTOR,
                    dr6,
                } if self.data_breakpoint_hit(dr6)? => Pending::DataHit { pc },
                p => p,
            };
            // The user-mode path's breakpoints on the guest's #BP and #DB
            // handlers (harness-caused: no virtual time passes).
            let pending = match pending {
                Pending::Debug { pc, exception, .. }
                    if exception != BP_VECTOR
                        && self.spin.is_none()
                        && self.user_debug.is_handler(pc) =>
                {
                    self.user_debug_exit(pc, pending)?
                }
                // A stepped `syscall` the host left at CPL3 faults at LSTAR:
                // finished, the step ends at LSTAR as on hardware.
                Pending::Debug { pc, exception, .. }
                    if exception != BP_VECTOR
                        && self.step_over_armed
                        && self.syscall_compat.is_handler(pc) =>
                {
                    match self.syscall_compat_hit()? {
                        syscall_compat::Hit::Completed => {
                            // The step's TF is lunavm's: not in the saved
                            // RFLAGS (R11) nor in the kernel's.
                            let mut regs = self.regs()?;
                            regs.r11 &= !RFLAGS_TF;
                            regs.rflags &= !RFLAGS_TF;
                            self.set_regs(&regs)?;
                            Pending::Debug {
                                pc: regs.rip,
                                exception: DB_VECTOR,
                                dr6: super::debug::DR6_BS,
                            }
                        }
                        syscall_compat::Hit::PageFault => pending,
                    }
                }
                p => p,
            };
            if self.spin.is_some() {
                let debug = match pending {
                    Pending::Debug { pc, exception, .. } => Some((pc, exception)),
                    _ => None,
                };
                if let super::spin::ProbeExit::Swallowed = self.probe_exit(debug)? {
                    if cond.interrupted() {
                        self.end_probe()?;
                        return Ok(StopReason::Interrupted);
                    }
                    continue;
                }
            }
            let pending = if self.step_over_armed {
                let debug = matches!(pending, Pending::Debug { .. } | Pending::DataHit { .. });
                if cond.single_step {
                    // A requested step stays armed through the exits of its
                    // instruction (port and MMIO accesses) until its own
                    // debug exit. Harness-caused: no virtual time passes.
                    if let Pending::Debug { pc, .. } | Pending::DataHit { pc } = pending {
                        self.step_over_armed = false;
                        self.disarm_step_over()?;
                        if let Some(stop) = self.take_watch_stop() {
                            return Ok(stop);
                        }
                        return Ok(StopReason::Stepped { rip: pc });
                    }
                    pending
                } else {
                    self.step_over_armed = false;
                    self.disarm_step_over()?;
                    // The step's own debug exit is ours: swallow it (it
                    // completed a watched access when a hit is pending).
                    if debug {
                        if let Some(stop) = self.take_watch_stop() {
                            return Ok(stop);
                        }
                        Pending::None
                    } else {
                        pending
                    }
                }
            } else {
                pending
            };
            // A front end's interrupt (Ctrl-C) wins over a kick's time jump:
            // the kick may have been what brought the vCPU back.
            if matches!(pending, Pending::Kicked) && cond.interrupted() {
                return Ok(StopReason::Interrupted);
            }
            // Complete already: a write to a watched page (KVM exits for an
            // MMIO write after the instruction) or a data breakpoint.
            let completed = matches!(
                pending,
                Pending::Watched { write: true } | Pending::DataHit { .. }
            );
            if let Some(stop) = self.finish_exit(pending, cond)? {
                return Ok(stop);
            }
            if std::mem::take(&mut self.step_over_now) && !self.step_over_armed {
                self.arm_step_over()?;
                self.step_over_armed = true;
            }
            if self.syscall_compat.unarmed() {
                self.sync_syscall_compat()?;
            }
            if !self.step_over_armed && self.user_debug_wants() {
                // Follow the guest's IDT (a sync mid-step would cancel the step).
                self.sync_user_debug()?;
            }
            if self.watches.pending.is_some() {
                if completed {
                    // RIP is past the instruction: stop now.
                    if self.step_over_armed {
                        self.step_over_armed = false;
                        self.disarm_step_over()?;
                    }
                    if let Some(stop) = self.take_watch_stop() {
                        return Ok(stop);
                    }
                } else if !self.step_over_armed {
                    // A read completes when the vCPU is entered again:
                    // single-step so it does, then stop (above, at the
                    // step's debug exit).
                    self.arm_step_over()?;
                    self.step_over_armed = true;
                }
            }
            if access_exit
                && cond.single_step
                && self.step_over_armed
                && self.watches.pending.is_none()
            {
                // A requested step whose instruction made a port or MMIO
                // exit: complete the instruction without entering the guest
                // and stop after it. On software-nested KVM the step's own
                // trap comes only after the next instruction, so entering
                // again would run two; on hardware KVM the completion
                // reports the trap (consumed here).
                self.settle()?;
                self.step_over_armed = false;
                self.disarm_step_over()?;
                let rip = self.regs()?.rip;
                return Ok(StopReason::Stepped { rip });
            }
            if cond.interrupted() {
                return Ok(StopReason::Interrupted);
            }
        }
    }

    fn finish_exit(
        &mut self,
        pending: Pending,
        cond: &StopCondition,
    ) -> Result<Option<StopReason>, MachineError> {
        Ok(match pending {
            Pending::None | Pending::Watched { .. } | Pending::DataHit { .. } => None,
            // Harness-caused (the SYSCALL path's filter): no virtual time.
            Pending::LstarWrite(value) => {
                self.lstar_written(value)?;
                None
            }
            Pending::Kicked => self.kicked()?,
            Pending::Write { port, data, len } => {
                self.clock.charge(Charge::Pio);
                let addr = u64::from(port);
                self.record(ExitKind::PioOut, addr, le_value(&data[..len]));
                self.sync_platform_port(port);
                let event = self.pio_bus.write(addr, &data[..len]);
                // A write may reprogram a timer or acknowledge an interrupt.
                self.sync_platform_port(port);
                if let Some(stop) = event.map(device_stop) {
                    return Ok(Some(stop));
                }
                if self.intercepts.matches(Space::Pio, addr, true) {
                    return Ok(Some(StopReason::Intercepted {
                        access: Access {
                            space: Space::Pio,
                            addr,
                            size: size_u8(len),
                            write: true,
                            value: le_value(&data[..len]),
                        },
                    }));
                }
                if (SERIAL_PORT..SERIAL_PORT + SERIAL_PORT_LEN).contains(&port) {
                    self.check_serial(cond)
                } else {
                    None
                }
            }
            Pending::MmioWrite { addr, data, len } => {
                self.clock.charge(Charge::Mmio);
                self.record(ExitKind::MmioWrite, addr, le_value(&data[..len]));
                self.device_clock.set(self.clock.now_ns());
                if let Some(stop) = self.mmio_bus.write(addr, &data[..len]).map(device_stop) {
                    return Ok(Some(stop));
                }
                self.intercepts
                    .matches(Space::Mmio, addr, true)
                    .then(|| StopReason::Intercepted {
                        access: Access {
                            space: Space::Mmio,
                            addr,
                            size: size_u8(len),
                            write: true,
                            value: le_value(&data[..len]),
                        },
                    })
            }
            Pending::ReadIntercepted(access) => Some(StopReason::Intercepted { access }),
            Pending::Ucall { eax } => {
                self.clock.charge(Charge::Ucall);
                self.record(ExitKind::Ucall, u64::from(eax), 0);
                self.handle_ucall(eax, cond)?
            }
            Pending::Halt => {
                self.exits.hlt += 1;
                self.record(ExitKind::Hlt, 0, 0);
                self.halted()?
            }
            Pending::Shutdown => Some(StopReason::Shutdown { regs: self.dump()? }),
            Pending::Debug { pc, exception, .. }
                if exception != BP_VECTOR && self.syscall_compat.is_handler(pc) =>
            {
                self.syscall_compat_stop(pc)?
            }
            Pending::Debug {
                pc,
                exception: BP_VECTOR,
                ..
            } if self.is_fuzz_breakpoint(pc) => {
                // Harness-caused: no virtual time passes.
                self.fuzz_breakpoint_hit(pc)?
            }
            Pending::Debug {
                pc,
                exception: BP_VECTOR,
                ..
            } if !self.is_sw_breakpoint(pc) => {
                // The guest's own int3 (KVM reports every #BP while software
                // breakpoints are set): deliver it as KVM would have.
                self.inject_exception(BP_VECTOR_U8, None)?;
                None
            }
            Pending::Debug { pc, .. } => {
                // A harness-caused exit: no virtual time passes.
                self.resume_over_breakpoint = true;
                Some(StopReason::Breakpoint { addr: pc })
            }
            Pending::Emulation if self.emulated_fuzz_breakpoint()?.is_some() => {
                let pc = self.emulated_fuzz_breakpoint()?.unwrap_or_default();
                self.fuzz_breakpoint_hit(pc)?
            }
            Pending::Emulation => match self.emulated_sw_breakpoint()? {
                // Our int3, which KVM's emulator cannot run: a breakpoint
                // (harness-caused, no virtual time passes).
                Some(addr) => {
                    self.resume_over_breakpoint = true;
                    Some(StopReason::Breakpoint { addr })
                }
                None => {
                    self.exits.emulation_failure += 1;
                    self.handle_emulation_failure()?
                }
            },
            Pending::Internal(suberror) => Some(StopReason::InternalError {
                suberror,
                regs: self.dump()?,
            }),
            Pending::FailEntry(reason) => Some(StopReason::EntryFailure {
                reason,
                regs: self.dump()?,
            }),
            Pending::Unexpected(exit) => Some(StopReason::UnexpectedExit { exit }),
        })
    }

    /// A stop at the SYSCALL path's breakpoint on the guest's #PF handler: a
    /// SYSCALL the host left at CPL3 is finished and the guest runs on; a
    /// page fault of the guest's own goes on to its handler (a breakpoint
    /// stop when a front end has a breakpoint there too).
    fn syscall_compat_stop(&mut self, pc: u64) -> Result<Option<StopReason>, MachineError> {
        Ok(match self.syscall_compat_hit()? {
            syscall_compat::Hit::Completed => None,
            syscall_compat::Hit::PageFault => {
                let shared = self
                    .debug_regs
                    .owners_at(pc)
                    .any(|o| o != super::debug::Owner::SyscallCompat);
                if shared {
                    self.resume_over_breakpoint = true;
                    Some(StopReason::Breakpoint { addr: pc })
                } else {
                    self.step_over_now = true;
                    None
                }
            }
        })
    }

    /// A stop at the user-mode path's breakpoint on a guest #BP or #DB
    /// handler at `pc`: what the exit becomes. An `int3` of ours becomes a
    /// #BP exit at its address, lunavm's step a step's debug exit past the
    /// instruction. The guest's own exception goes on to its handler: while
    /// a step is armed the exit ends the step there; else a front end's
    /// breakpoint at the handler stops, or lunavm steps over its own.
    fn user_debug_exit(&mut self, pc: u64, pending: Pending) -> Result<Pending, MachineError> {
        Ok(match self.user_debug_hit(pc, self.step_over_armed)? {
            userdbg::Hit::Breakpoint(addr) => Pending::Debug {
                pc: addr,
                exception: BP_VECTOR,
                dr6: 0,
            },
            userdbg::Hit::Stepped(rip) => Pending::Debug {
                pc: rip,
                exception: DB_VECTOR,
                dr6: super::debug::DR6_BS,
            },
            userdbg::Hit::Pass => {
                let shared = self
                    .debug_regs
                    .owners_at(pc)
                    .any(|o| o != super::debug::Owner::UserDebug);
                if shared || self.step_over_armed {
                    pending
                } else {
                    self.step_over_now = true;
                    Pending::None
                }
            }
        })
    }

    /// Checks the stop condition's serial pattern against the output.
    fn check_serial(&self, cond: &StopCondition) -> Option<StopReason> {
        let watch = cond.serial.as_ref()?;
        let serial = lock(&self.serial);
        let out = serial.output();
        let from = watch.from.min(out.len());
        let m = watch.regex.find(&out[from..])?;
        Some(StopReason::SerialMatch {
            text: String::from_utf8_lossy(m.as_bytes()).into_owned(),
            end: from + m.end(),
        })
    }

    /// A register dump of the vCPU now.
    pub fn dump(&self) -> Result<RegisterDump, MachineError> {
        Ok(RegisterDump::new(&self.regs()?, &self.sregs()?))
    }

    fn handle_ucall(
        &mut self,
        eax: u32,
        cond: &StopCondition,
    ) -> Result<Option<StopReason>, MachineError> {
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let addr = if code_bitness(&sregs) == 64 {
            regs.rdi
        } else {
            regs.rdi & 0xffff_ffff
        };
        let mut raw = [0u8; UCALL_STRUCT_SIZE];
        let bytes = if addr == 0 {
            None
        } else {
            match access::read_virt(&self.vm.mem, &paging_regs(&sregs), addr, &mut raw) {
                Ok(()) => Some(&raw),
                Err(e) => {
                    self.ucalls.errors.push(ucall::UcallError::Unreadable {
                        addr,
                        reason: e.to_string(),
                    });
                    return Ok(None);
                }
            }
        };
        let call = match ucall::decode(eax, addr, bytes) {
            Ok(c) => c,
            Err(e) => {
                self.ucalls.errors.push(e);
                return Ok(None);
            }
        };
        self.ucalls.record(&call);
        let first = call.args.first().copied().unwrap_or(0);
        let stop = match call.cmd {
            Command::Done => Some(StopReason::Done { status: first }),
            Command::Assert => Some(StopReason::Assert {
                message: call.msg.clone(),
                args: call.args.clone(),
            }),
            Command::Print => {
                if self.config.echo_ucall_prints {
                    eprintln!("guest: {}", call.msg);
                }
                None
            }
            Command::Sync if cond.on_sync || cond.sync_id == Some(first) => {
                Some(StopReason::Sync { id: first })
            }
            Command::Cmp => {
                // A guest built with trace-cmp reports its comparisons: keep
                // them for the fuzzer (bounded; drained per execution).
                if self.fuzz_bps.cmps.len() < super::fuzzbp::MAX_CMPS {
                    let arg = |i: usize| call.args.get(i).copied().unwrap_or(0);
                    self.fuzz_bps.cmps.push(super::fuzzbp::CmpEvent {
                        pc: arg(3),
                        a: arg(0),
                        b: arg(1),
                        size: u8::try_from(arg(2).min(8)).unwrap_or(8),
                        from_guest: true,
                    });
                }
                None
            }
            Command::Sync | Command::FuzzPoint | Command::CovMap => None,
        };
        Ok(match stop {
            Some(s) => Some(s),
            None if self.intercepts.ucalls => Some(StopReason::Ucall { call }),
            None => None,
        })
    }

    /// The address of a fuzzing breakpoint when the instruction KVM failed
    /// to emulate is one.
    fn emulated_fuzz_breakpoint(&self) -> Result<Option<u64>, MachineError> {
        if self.fuzz_bps.is_empty() {
            return Ok(None);
        }
        let lrip = linear_rip(&self.regs()?, &self.sregs()?);
        Ok(self.is_fuzz_breakpoint(lrip).then_some(lrip))
    }

    /// The address of our software breakpoint when the instruction KVM
    /// failed to emulate is one.
    fn emulated_sw_breakpoint(&self) -> Result<Option<u64>, MachineError> {
        if self.sw_breakpoints.list().is_empty() {
            return Ok(None);
        }
        let lrip = linear_rip(&self.regs()?, &self.sregs()?);
        Ok(self.is_sw_breakpoint(lrip).then_some(lrip))
    }

    fn handle_emulation_failure(&mut self) -> Result<Option<StopReason>, MachineError> {
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        let bitness = code_bitness(&sregs);
        let lrip = linear_rip(&regs, &sregs);
        let mut buf = [0u8; 15];
        let n = access::read_virt_prefix(&self.vm.mem, &paging_regs(&sregs), lrip, &mut buf);
        let insn = Completer::decode(&buf[..n], bitness, regs.rip);
        // Report just the instruction's bytes when it decodes, else all we read.
        let shown = if insn.is_invalid() {
            n
        } else {
            insn.len().min(n)
        };
        let failed = FailedInstruction {
            linear_rip: lrip,
            bytes: buf[..shown].to_vec(),
            disasm: Completer::disassemble(&insn, n > 0),
            bitness,
        };
        if n == 0 {
            return Ok(Some(StopReason::EmulationFailure {
                insn: failed,
                reason: "the instruction bytes are not mapped".into(),
                regs: RegisterDump::new(&regs, &sregs),
            }));
        }
        let ctx = Context {
            vcpu: &self.vcpus[self.current],
            mem: &self.vm.mem,
            regs,
            sregs,
            cpuid: &self.effective_cpuid,
        };
        let outcome = self.completer.complete(&ctx, &insn);
        // Completion writes registers behind the cache's back.
        self.reg_cache.invalidate();
        match outcome? {
            Outcome::Completed { entry, .. } => {
                self.clock.charge(Charge::Completion);
                self.record(ExitKind::Completion, lrip, 0);
                Ok(self
                    .intercepts
                    .completions
                    .then_some(StopReason::Completed { entry }))
            }
            Outcome::Unhandled { reason } => Ok(Some(StopReason::EmulationFailure {
                insn: failed,
                reason,
                regs: RegisterDump::new(&regs, &sregs),
            })),
        }
    }
}
