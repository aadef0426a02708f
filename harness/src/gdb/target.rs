//! The gdbstub [`Target`] over a [`Machine`]: registers, memory, execution
//! control and breakpoints, all through the machine's front-end API.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use gdbstub::common::Signal;
use gdbstub::stub::SingleThreadStopReason;
use gdbstub::target::ext::base::reverse_exec::{
    ReplayLogPosition, ReverseCont, ReverseContOps, ReverseStep, ReverseStepOps,
};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::MonitorCmdOps;
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::arch::{LunaRegs, LunaX86_64};
use super::reverse::Landing;
use super::GdbError;
use crate::launch::exit_code_for;
use crate::machine::debug::Owner;
use crate::machine::watch::WatchKind as MachineWatchKind;
use crate::machine::{Machine, MachineError, StopCondition, StopReason};
use crate::script::{Scenario, ScenarioOptions};
use crate::vm::access;
use crate::vm::regs::paging_regs;

/// IA32_KERNEL_GS_BASE, the MSR behind gdb's `k_gs_base`.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// EINVAL: the error number of a register write KVM refused.
const EINVAL: u8 = 22;

/// EFAULT: the error number of a memory access to an unmapped address.
const EFAULT: u8 = 14;

/// What the next run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Run until a stop.
    Continue,
    /// Run one instruction.
    Step,
    /// Go back one instruction.
    ReverseStep,
    /// Go back to the last breakpoint.
    ReverseContinue,
}

/// A machine as gdb sees it: one thread, x86-64 with SSE and the system
/// registers. The machine lives in a Lua session (for `monitor lua`).
pub struct GdbTarget {
    /// The Lua session that holds the machine.
    pub(super) lua: Scenario,
    /// Map debug-exit values the way QEMU does (for the exit status gdb sees).
    qemu_exit_codes: bool,
    /// What the last resume request asked for.
    resume: Resume,
    /// gdb's watchpoints: (address, length, kind, the machine's watch ids).
    watchpoints: Vec<(u64, u64, WatchKind, Vec<u64>)>,
    /// gdb's software breakpoints held in debug registers: their address was
    /// not mapped when gdb set them (a kernel before it maps itself).
    sw_in_debug_regs: Vec<u64>,
    /// Checkpoints for reverse execution (`monitor record on`).
    pub(super) history: super::reverse::History,
    /// Whether checkpoints are taken.
    pub(super) recording: bool,
    /// The stop that ended the run while gdb was attached.
    pub(super) finished: Option<StopReason>,
    /// The session's named snapshots (`monitor snapshot ...`).
    pub(super) snapshots: super::monitor::Snapshots,
}

impl GdbTarget {
    /// A target over `machine`, held by a fresh Lua session.
    pub fn new(machine: Machine, qemu_exit_codes: bool) -> Result<Self, GdbError> {
        let opts = ScenarioOptions {
            seed: machine.config().seed,
            ..ScenarioOptions::default()
        };
        let lua = Scenario::new(&opts).map_err(GdbError::Lua)?;
        lua.set_machine(machine);
        Ok(Self::with_scenario(lua, qemu_exit_codes))
    }

    /// A target over the machine of an existing Lua session.
    pub fn with_scenario(lua: Scenario, qemu_exit_codes: bool) -> Self {
        GdbTarget {
            lua,
            qemu_exit_codes,
            resume: Resume::Continue,
            watchpoints: Vec::new(),
            sw_in_debug_regs: Vec::new(),
            history: super::reverse::History::default(),
            recording: false,
            finished: None,
            snapshots: super::monitor::Snapshots::new(),
        }
    }

    /// The machine (borrowed from the Lua session).
    pub(super) fn machine(&self) -> Result<std::cell::RefMut<'_, Machine>, GdbError> {
        self.lua.machine_mut().ok_or(GdbError::NoMachine)
    }

    /// Removes gdb's breakpoints and watchpoints from the machine.
    pub(super) fn clear_debug_state(&mut self) -> Result<(), GdbError> {
        self.watchpoints.clear();
        self.sw_in_debug_regs.clear();
        let mut m = self.machine()?;
        m.remove_breakpoints(Owner::Gdb)?;
        m.remove_sw_breakpoints(Owner::Gdb)?;
        m.remove_watches(Owner::Gdb)?;
        Ok(())
    }

    /// Takes the machine back from the Lua session.
    pub(super) fn into_machine(self) -> Option<Machine> {
        self.lua.take_machine()
    }

    /// Whether the last resume request was a single step.
    pub(super) fn stepping(&self) -> bool {
        self.resume == Resume::Step
    }

    /// Runs the machine as the last resume request asked, until a stop or
    /// `interrupt` is raised. After the run has ended, returns its end again.
    pub(super) fn run(
        &mut self,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> Result<StopReason, GdbError> {
        if let Some(stop) = &self.finished {
            return Ok(stop.clone());
        }
        let stepping = self.resume == Resume::Step;
        let cond = StopCondition {
            single_step: stepping,
            // gdb's stepi never lands in an interrupt handler.
            block_interrupts: stepping,
            interrupt,
            ..StopCondition::default()
        };
        let mut m = self.lua.machine_mut().ok_or(GdbError::NoMachine)?;
        if self.recording {
            return Ok(self.history.forward(&mut m, &cond)?);
        }
        Ok(m.run(&cond)?)
    }

    /// Whether the last resume request was a reverse one.
    pub(super) fn reversing(&self) -> bool {
        matches!(self.resume, Resume::ReverseStep | Resume::ReverseContinue)
    }

    /// Carries out a reverse resume request; the stop gdb gets.
    pub(super) fn run_reverse(&mut self) -> Result<SingleThreadStopReason<u64>, GdbError> {
        let begin = SingleThreadStopReason::ReplayLog {
            tid: None,
            pos: ReplayLogPosition::Begin,
        };
        if self.finished.is_some() || self.history.is_empty() {
            // No history (recording off, or nothing run yet).
            return Ok(begin);
        }
        let step = self.resume == Resume::ReverseStep;
        let mut m = self.lua.machine_mut().ok_or(GdbError::NoMachine)?;
        let landing = if step {
            self.history.reverse_step(&mut m)?
        } else {
            self.history.reverse_continue(&mut m)?
        };
        Ok(match landing {
            Landing::Stepped => SingleThreadStopReason::DoneStep,
            Landing::Begin => begin,
            Landing::Breakpoint(addr) => {
                if m.sw_breakpoints().held_by(addr, Owner::Gdb)
                    || self.sw_in_debug_regs.contains(&addr)
                {
                    SingleThreadStopReason::SwBreak(())
                } else {
                    SingleThreadStopReason::HwBreak(())
                }
            }
        })
    }

    /// The machine changed behind the history (gdb or Lua wrote to it).
    pub(super) fn forget_history(&mut self) {
        self.history.reset();
    }

    /// The stop reason gdb gets for a machine stop; None for an interrupt
    /// (gdb's Ctrl-C is then handled as incoming data). A stop that ends the
    /// run is remembered in `finished`.
    pub(super) fn stop_reason(&mut self, stop: StopReason) -> Option<SingleThreadStopReason<u64>> {
        let reason = match &stop {
            StopReason::Interrupted => return None,
            StopReason::Stepped { .. } => SingleThreadStopReason::DoneStep,
            StopReason::Watch { hit } => {
                match self.watchpoints.iter().find(|w| w.3.contains(&hit.id)) {
                    Some(&(addr, _, kind, _)) => SingleThreadStopReason::Watch {
                        tid: (),
                        kind,
                        addr,
                    },
                    // Another front end's watch.
                    None => SingleThreadStopReason::Signal(Signal::SIGTRAP),
                }
            }
            StopReason::Breakpoint { addr } => {
                if self.sw_in_debug_regs.contains(addr)
                    || self
                        .machine()
                        .is_ok_and(|m| m.sw_breakpoints().held_by(*addr, Owner::Gdb))
                {
                    SingleThreadStopReason::SwBreak(())
                } else if self
                    .machine()
                    .is_ok_and(|m| m.debug_regs().owners_at(*addr).any(|o| o == Owner::Gdb))
                {
                    SingleThreadStopReason::HwBreak(())
                } else {
                    SingleThreadStopReason::Signal(Signal::SIGTRAP)
                }
            }
            // Stops only other front ends ask for: a plain trap.
            StopReason::Sync { .. }
            | StopReason::Intercepted { .. }
            | StopReason::Ucall { .. }
            | StopReason::Completed { .. }
            | StopReason::CrashSite { .. }
            | StopReason::SerialMatch { .. } => SingleThreadStopReason::Signal(Signal::SIGTRAP),
            StopReason::GuestExit { .. } | StopReason::Done { .. } => {
                SingleThreadStopReason::Exited(exit_code_for(&stop, self.qemu_exit_codes))
            }
            StopReason::Assert { .. } => SingleThreadStopReason::Terminated(Signal::SIGABRT),
            StopReason::Shutdown { .. } => SingleThreadStopReason::Terminated(Signal::SIGSEGV),
            StopReason::EmulationFailure { .. } => {
                SingleThreadStopReason::Terminated(Signal::SIGILL)
            }
            StopReason::Halted { .. }
            | StopReason::ExitBudget { .. }
            | StopReason::TimeBudget { .. }
            | StopReason::EntryFailure { .. }
            | StopReason::InternalError { .. }
            | StopReason::DeterminismHole { .. }
            | StopReason::UnexpectedExit { .. } => {
                SingleThreadStopReason::Terminated(Signal::SIGKILL)
            }
        };
        if matches!(
            reason,
            SingleThreadStopReason::Exited(_) | SingleThreadStopReason::Terminated(_)
        ) {
            self.finished = Some(stop);
        }
        Some(reason)
    }
}

/// A machine error as a fatal target error (ends the gdb session).
fn fatal(e: impl Into<GdbError>) -> TargetError<GdbError> {
    TargetError::Fatal(e.into())
}

/// The low 32 bits of `v` (gdb's registers are narrower than KVM's fields).
fn low32(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(u32::MAX)
}

/// The low 16 bits of `v` (selectors and x87 control registers are 16 bits;
/// gdb's wider values are truncated).
fn low16(v: u32) -> u16 {
    u16::try_from(v & 0xffff).unwrap_or(u16::MAX)
}

/// gdb's full x87 tag word from KVM's abridged one (bit set: valid).
fn full_tag(abridged: u8) -> u32 {
    (0..8).fold(0, |tag, i| {
        let empty = abridged & (1 << i) == 0;
        tag | (if empty { 0b11 } else { 0b00 } << (2 * i))
    })
}

/// KVM's abridged x87 tag word from gdb's full one (any tag but empty: valid).
fn abridged_tag(full: u32) -> u8 {
    (0..8).fold(0, |tag, i| {
        let valid = (full >> (2 * i)) & 0b11 != 0b11;
        tag | (u8::from(valid) << i)
    })
}

/// Fills gdb's register set from KVM's.
fn to_gdb(regs: &mut X86_64CoreRegs, r: &kvm_regs, s: &kvm_sregs, f: &kvm_fpu) {
    regs.regs = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    regs.rip = r.rip;
    // EFLAGS is 32 bits wide for gdb; the upper half of RFLAGS is reserved.
    regs.eflags = low32(r.rflags);
    regs.segments.cs = u32::from(s.cs.selector);
    regs.segments.ss = u32::from(s.ss.selector);
    regs.segments.ds = u32::from(s.ds.selector);
    regs.segments.es = u32::from(s.es.selector);
    regs.segments.fs = u32::from(s.fs.selector);
    regs.segments.gs = u32::from(s.gs.selector);
    for (st, fpr) in regs.st.iter_mut().zip(&f.fpr) {
        st.copy_from_slice(&fpr[..10]);
    }
    regs.fpu.fctrl = u32::from(f.fcw);
    regs.fpu.fstat = u32::from(f.fsw);
    regs.fpu.ftag = full_tag(f.ftwx);
    regs.fpu.fiseg = 0;
    regs.fpu.fioff = low32(f.last_ip);
    regs.fpu.foseg = 0;
    regs.fpu.fooff = low32(f.last_dp);
    regs.fpu.fop = u32::from(f.last_opcode);
    for (x, k) in regs.xmm.iter_mut().zip(&f.xmm) {
        *x = u128::from_le_bytes(*k);
    }
    regs.mxcsr = f.mxcsr;
}

/// KVM's general registers with gdb's values.
fn gprs_from_gdb(regs: &X86_64CoreRegs, old: &kvm_regs) -> kvm_regs {
    let g = &regs.regs;
    kvm_regs {
        rax: g[0],
        rbx: g[1],
        rcx: g[2],
        rdx: g[3],
        rsi: g[4],
        rdi: g[5],
        rbp: g[6],
        rsp: g[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: regs.rip,
        rflags: (old.rflags & !0xffff_ffff) | u64::from(regs.eflags),
    }
}

/// KVM's special registers with gdb's segment selectors (only the selector
/// changes: bases, limits and attributes stay as they are).
fn sregs_from_gdb(regs: &X86_64CoreRegs, old: &kvm_sregs) -> kvm_sregs {
    let mut s = *old;
    let seg = &regs.segments;
    s.cs.selector = low16(seg.cs);
    s.ss.selector = low16(seg.ss);
    s.ds.selector = low16(seg.ds);
    s.es.selector = low16(seg.es);
    s.fs.selector = low16(seg.fs);
    s.gs.selector = low16(seg.gs);
    s
}

/// KVM's FPU state with gdb's values.
fn fpu_from_gdb(regs: &X86_64CoreRegs, old: &kvm_fpu) -> kvm_fpu {
    let mut f = *old;
    for (fpr, st) in f.fpr.iter_mut().zip(&regs.st) {
        fpr[..10].copy_from_slice(st);
    }
    f.fcw = low16(regs.fpu.fctrl);
    f.fsw = low16(regs.fpu.fstat);
    f.ftwx = abridged_tag(regs.fpu.ftag);
    f.last_opcode = low16(regs.fpu.fop);
    f.last_ip = (f.last_ip & !0xffff_ffff) | u64::from(regs.fpu.fioff);
    f.last_dp = (f.last_dp & !0xffff_ffff) | u64::from(regs.fpu.fooff);
    for (k, x) in f.xmm.iter_mut().zip(&regs.xmm) {
        *k = x.to_le_bytes();
    }
    f.mxcsr = regs.mxcsr;
    f
}

/// Whether two FPU states differ in what gdb can change.
fn fpu_differs(a: &kvm_fpu, b: &kvm_fpu) -> bool {
    a.fpr != b.fpr
        || a.fcw != b.fcw
        || a.fsw != b.fsw
        || a.ftwx != b.ftwx
        || a.last_opcode != b.last_opcode
        || a.last_ip != b.last_ip
        || a.last_dp != b.last_dp
        || a.xmm != b.xmm
        || a.mxcsr != b.mxcsr
}

/// The system registers in gdb's order (see `arch::SYSTEM_REGS`).
fn system_to_gdb(s: &kvm_sregs, k_gs_base: u64) -> [u64; 9] {
    [
        s.fs.base, s.gs.base, k_gs_base, s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer,
    ]
}

/// KVM's special registers with gdb's system registers (but `k_gs_base`).
fn system_from_gdb(system: &[u64; 9], s: &mut kvm_sregs) {
    let [fs_base, gs_base, _k_gs_base, cr0, cr2, cr3, cr4, cr8, efer] = *system;
    s.fs.base = fs_base;
    s.gs.base = gs_base;
    s.cr0 = cr0;
    s.cr2 = cr2;
    s.cr3 = cr3;
    s.cr4 = cr4;
    s.cr8 = cr8;
    s.efer = efer;
}

impl Target for GdbTarget {
    type Arch = LunaX86_64;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadBase for GdbTarget {
    fn read_registers(&mut self, regs: &mut LunaRegs) -> TargetResult<(), Self> {
        let m = self.machine().map_err(fatal)?;
        let r = m.regs().map_err(fatal)?;
        let s = m.sregs().map_err(fatal)?;
        let f = m.fpu().map_err(fatal)?;
        to_gdb(&mut regs.core, &r, &s, &f);
        // Shown as 0 when KVM does not let the MSR be read.
        let k_gs_base = m.rdmsr(MSR_KERNEL_GS_BASE).unwrap_or(0);
        regs.system = system_to_gdb(&s, k_gs_base);
        Ok(())
    }

    fn write_registers(&mut self, regs: &LunaRegs) -> TargetResult<(), Self> {
        let mut current = LunaRegs::default();
        self.read_registers(&mut current)?;
        if current != *regs {
            self.forget_history();
        }
        let mut m = self.machine().map_err(fatal)?;
        let old_r = m.regs().map_err(fatal)?;
        let new_r = gprs_from_gdb(&regs.core, &old_r);
        if new_r != old_r {
            m.set_regs(&new_r).map_err(fatal)?;
        }
        let old_s = m.sregs().map_err(fatal)?;
        let mut new_s = sregs_from_gdb(&regs.core, &old_s);
        system_from_gdb(&regs.system, &mut new_s);
        if new_s != old_s {
            // KVM refuses inconsistent control registers: an error reply.
            m.set_sregs(&new_s)
                .map_err(|_| TargetError::Errno(EINVAL))?;
        }
        let k_gs_base = regs.system("k_gs_base").unwrap_or(0);
        if m.rdmsr(MSR_KERNEL_GS_BASE).is_ok_and(|v| v != k_gs_base) {
            m.wrmsr(MSR_KERNEL_GS_BASE, k_gs_base)
                .map_err(|_| TargetError::Errno(EINVAL))?;
        }
        let old_f = m.fpu().map_err(fatal)?;
        let new_f = fpu_from_gdb(&regs.core, &old_f);
        if fpu_differs(&new_f, &old_f) {
            m.set_fpu(&new_f).map_err(fatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start_addr: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let m = self.machine().map_err(fatal)?;
        let sregs = m.sregs().map_err(fatal)?;
        let paging = paging_regs(&sregs);
        let mem = m.memory();
        let n = if access::read_virt(mem, &paging, start_addr, data).is_ok() {
            data.len()
        } else {
            // Part of the range is unmapped: return what is readable, or an
            // error.
            match access::read_virt_prefix(mem, &paging, start_addr, data) {
                0 => return Err(TargetError::Errno(EFAULT)),
                n => n,
            }
        };
        m.hide_sw_breakpoints(start_addr, &mut data[..n]);
        Ok(n)
    }

    fn write_addrs(&mut self, start_addr: u64, data: &[u8]) -> TargetResult<(), Self> {
        self.forget_history();
        let mut m = self.machine().map_err(fatal)?;
        let sregs = m.sregs().map_err(fatal)?;
        access::write_virt(m.memory(), &paging_regs(&sregs), start_addr, data)
            .map_err(|_| TargetError::Errno(EFAULT))?;
        // Bytes written under a software breakpoint are what it hides now.
        m.rewrite_sw_breakpoints(start_addr, data.len());
        Ok(())
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for GdbTarget {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        // Signals have no meaning for a guest kernel: they are dropped.
        self.resume = Resume::Continue;
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }

    fn support_reverse_step(&mut self) -> Option<ReverseStepOps<'_, (), Self>> {
        Some(self)
    }

    fn support_reverse_cont(&mut self) -> Option<ReverseContOps<'_, (), Self>> {
        Some(self)
    }
}

impl ReverseStep<()> for GdbTarget {
    fn reverse_step(&mut self, _tid: ()) -> Result<(), Self::Error> {
        self.resume = Resume::ReverseStep;
        Ok(())
    }
}

impl ReverseCont<()> for GdbTarget {
    fn reverse_cont(&mut self) -> Result<(), Self::Error> {
        self.resume = Resume::ReverseContinue;
        Ok(())
    }
}

impl SingleThreadSingleStep for GdbTarget {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), Self::Error> {
        self.resume = Resume::Step;
        Ok(())
    }
}

impl GdbTarget {
    /// Takes a debug register for a gdb breakpoint; false when all are taken.
    fn add_debug_breakpoint(&mut self, addr: u64) -> TargetResult<bool, Self> {
        let mut m = self.machine().map_err(fatal)?;
        match m.add_breakpoint(addr, Owner::Gdb) {
            Ok(_) => Ok(true),
            Err(MachineError::DebugRegs(_)) => Ok(false),
            Err(e) => Err(fatal(e)),
        }
    }
}

impl Breakpoints for GdbTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

/// Watchpoints are debug registers where the watch mode uses them and the
/// range fits one, else page watches (`machine::watch`, `machine::drwatch`);
/// either way the stop comes once the accessing instruction has completed.
/// The watched range is translated through the page tables when gdb sets it.
impl HwWatchpoint for GdbTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let machine_kind = match kind {
            WatchKind::Write => MachineWatchKind::Write,
            WatchKind::Read => MachineWatchKind::Read,
            WatchKind::ReadWrite => MachineWatchKind::Access,
        };
        let mut m = self.machine().map_err(fatal)?;
        let ids = match m.add_watch_virt(addr, len, machine_kind, Owner::Gdb) {
            Ok(ids) => ids,
            // Unmapped, too long, or the slots refused: gdb reports that it
            // cannot set the watchpoint.
            Err(MachineError::Watch(_) | MachineError::DebugRegs(_)) => return Ok(false),
            Err(e) => return Err(fatal(e)),
        };
        drop(m);
        self.watchpoints.push((addr, len, kind, ids));
        Ok(true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Some(i) = self
            .watchpoints
            .iter()
            .position(|w| w.0 == addr && w.1 == len && w.2 == kind)
        else {
            return Ok(false);
        };
        let (_, _, _, ids) = self.watchpoints.swap_remove(i);
        let mut m = self.machine().map_err(fatal)?;
        for id in ids {
            m.remove_watch(id).map_err(fatal)?;
        }
        Ok(true)
    }
}

/// Software breakpoints are `int3`s written into guest memory
/// (`machine::swbp`), hidden from gdb's memory reads. One at an address the
/// page tables do not map yet (a Linux kernel's `start_kernel` while its
/// decompressor runs) takes a debug register instead, which fires once the
/// address is mapped and executed; gdb sets its breakpoints again at every
/// resume, so it becomes an `int3` at the first resume after the mapping.
impl SwBreakpoint for GdbTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let mut m = self.machine().map_err(fatal)?;
        match m.add_sw_breakpoint(addr, Owner::Gdb) {
            Ok(()) => Ok(true),
            Err(MachineError::SwBreakpoint(_)) => {
                drop(m);
                if self.add_debug_breakpoint(addr)? {
                    self.sw_in_debug_regs.push(addr);
                    Ok(true)
                } else {
                    // Unmapped and no debug register free: gdb reports that
                    // it cannot insert the breakpoint.
                    Err(TargetError::Errno(EFAULT))
                }
            }
            Err(e) => Err(fatal(e)),
        }
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if let Some(i) = self.sw_in_debug_regs.iter().position(|&a| a == addr) {
            self.sw_in_debug_regs.swap_remove(i);
            return self
                .machine()
                .map_err(fatal)?
                .remove_breakpoint(addr, Owner::Gdb)
                .map_err(fatal);
        }
        self.machine()
            .map_err(fatal)?
            .remove_sw_breakpoint(addr, Owner::Gdb)
            .map_err(fatal)
    }
}

impl HwBreakpoint for GdbTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.add_debug_breakpoint(addr)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.machine()
            .map_err(fatal)?
            .remove_breakpoint(addr, Owner::Gdb)
            .map_err(fatal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_words_round_trip() {
        assert_eq!(full_tag(0), 0xffff);
        assert_eq!(full_tag(0xff), 0);
        assert_eq!(full_tag(0b0000_0001), 0xfffc);
        for t in [0u8, 1, 0x80, 0xa5, 0xff] {
            assert_eq!(abridged_tag(full_tag(t)), t);
        }
    }

    #[test]
    fn eflags_write_keeps_the_upper_half() {
        let old = kvm_regs {
            rflags: 0xdead_0000_0000_0002,
            ..Default::default()
        };
        let g = X86_64CoreRegs {
            eflags: 0x246,
            ..Default::default()
        };
        assert_eq!(gprs_from_gdb(&g, &old).rflags, 0xdead_0000_0000_0246);
    }
}
