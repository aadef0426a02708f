//! Stop conditions for `Machine::run` and the typed reasons a run stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::emulate::FailedInstruction;
use crate::vm::regs::RegisterDump;

/// When `Machine::run` should return, besides the guest ending the run itself.
/// Budgets count from the start of the `run` call.
#[derive(Clone, Debug, Default)]
pub struct StopCondition {
    /// Stop after this many guest-caused exits.
    pub max_exits: Option<u64>,
    /// Stop once this much virtual time (ns) has passed.
    pub max_time_ns: Option<u64>,
    /// Stop at every ucall SYNC.
    pub on_sync: bool,
    /// Stop only at the ucall SYNC with this id (implies `on_sync` for it).
    pub sync_id: Option<u64>,
    /// Stop when this pattern matches the serial output from byte `from` on.
    pub serial: Option<SerialWatch>,
    /// Run exactly one guest instruction (with the breakpoints off) and stop
    /// with [`StopReason::Stepped`], unless the guest ends the run first.
    pub single_step: bool,
    /// Inject no interrupt during this run (a debugger's single step should
    /// not land in an interrupt handler); pending ones wait for the next
    /// run. Userspace platform only: KVM's in-kernel irqchip injects on its
    /// own.
    pub block_interrupts: bool,
    /// Stop with [`StopReason::Interrupted`] once this flag is set (by another
    /// thread: a debugger's Ctrl-C). Checked after every exit; a guest spinning
    /// without exits is reached by the forward-progress kick.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl StopCondition {
    /// Whether the interrupt flag is set.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
    }
}

/// A pattern to watch for on the serial output.
#[derive(Clone, Debug)]
pub struct SerialWatch {
    /// The pattern.
    pub regex: regex::bytes::Regex,
    /// Offset in the output where matching starts.
    pub from: usize,
}

impl StopCondition {
    /// Run until the guest ends the run.
    pub fn forever() -> Self {
        Self::default()
    }
}

/// Why a run stopped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StopReason {
    /// The guest wrote `value` to the debug-exit port.
    GuestExit {
        /// The value written.
        value: u32,
    },
    /// The guest sent ucall DONE.
    Done {
        /// Its status argument.
        status: u64,
    },
    /// The guest sent ucall ASSERT.
    Assert {
        /// "file:line: expression".
        message: String,
        /// The arguments (line, left, right).
        args: Vec<u64>,
    },
    /// The guest sent ucall SYNC and the stop condition asked to stop there.
    Sync {
        /// The sync id.
        id: u64,
    },
    /// An intercepted guest access (a script hook or device handles it).
    Intercepted {
        /// The access.
        access: super::intercept::Access,
    },
    /// An intercepted ucall that did not stop the run by itself.
    Ucall {
        /// The decoded call.
        call: crate::ucall::Ucall,
    },
    /// An instruction was completed and completions are intercepted.
    Completed {
        /// The table entry used.
        entry: crate::emulate::Entry,
    },
    /// The guest reached an execution breakpoint.
    Breakpoint {
        /// The breakpoint's address.
        addr: u64,
    },
    /// The guest reached a fuzzer's stop breakpoint (a crash site: a panic
    /// function, an exception handler); RIP is at it.
    CrashSite {
        /// The breakpoint's address.
        addr: u64,
    },
    /// A guest access hit a watch; the accessing instruction has completed.
    Watch {
        /// The access and the watch it hit.
        hit: super::watch::WatchHit,
    },
    /// A single step (`StopCondition::single_step`) completed.
    Stepped {
        /// RIP after the step (linear: CS base added).
        rip: u64,
    },
    /// The stop condition's interrupt flag was set.
    Interrupted,
    /// The serial pattern of the stop condition matched.
    SerialMatch {
        /// The matched text.
        text: String,
        /// Offset of the end of the match in the serial output.
        end: usize,
    },
    /// The guest halted with nothing that can wake it.
    Halted {
        /// RIP after the `hlt`.
        rip: u64,
        /// RFLAGS.IF at the halt.
        interrupts_enabled: bool,
    },
    /// The guest triple-faulted.
    Shutdown {
        /// Registers at the shutdown.
        regs: RegisterDump,
    },
    /// KVM failed to emulate an instruction and lunavm did not complete it.
    EmulationFailure {
        /// The instruction.
        insn: FailedInstruction,
        /// Why it was not completed.
        reason: String,
        /// Registers at the failure.
        regs: RegisterDump,
    },
    /// The exit budget was used up.
    ExitBudget {
        /// Guest-caused exits in this run call.
        exits: u64,
    },
    /// The virtual-time budget was used up.
    TimeBudget {
        /// Virtual nanoseconds in this run call.
        ns: u64,
    },
    /// KVM could not enter the guest.
    EntryFailure {
        /// The hardware reason code.
        reason: u64,
        /// Registers at the failure.
        regs: RegisterDump,
    },
    /// KVM reported an internal error other than an emulation failure.
    InternalError {
        /// KVM's suberror code.
        suberror: u32,
        /// Registers at the error.
        regs: RegisterDump,
    },
    /// A determinism hole under `--strict` (a host-timed kick).
    DeterminismHole {
        /// What happened.
        what: String,
    },
    /// An exit lunavm does not handle.
    UnexpectedExit {
        /// What it was.
        exit: String,
    },
}

impl StopReason {
    /// One line for the summary.
    pub fn describe(&self) -> String {
        match self {
            StopReason::GuestExit { value } => {
                format!("guest exited with value {value} (port 0xf4)")
            }
            StopReason::Done { status } => {
                format!("guest finished with status {status} (ucall DONE)")
            }
            StopReason::Assert { message, args } => {
                let vals = match args.as_slice() {
                    [_, l, r, ..] => format!(" (left {l:#x}, right {r:#x})"),
                    _ => String::new(),
                };
                format!("guest assertion failed: {message}{vals}")
            }
            StopReason::Sync { id } => format!("guest reached sync point {id}"),
            StopReason::Intercepted { access } => format!(
                "intercepted {} {} of {} bytes at {:#x}",
                if access.space == super::intercept::Space::Pio {
                    "port"
                } else {
                    "mmio"
                },
                if access.write { "write" } else { "read" },
                access.size,
                access.addr
            ),
            StopReason::Ucall { call } => format!("intercepted ucall {}", call.cmd.name()),
            StopReason::Completed { entry } => format!("completed {}", entry.name()),
            StopReason::Breakpoint { addr } => format!("breakpoint at {addr:#x}"),
            StopReason::CrashSite { addr } => format!("crash site at {addr:#x}"),
            StopReason::Watch { hit } => format!(
                "watch {} hit: {} of {} bytes at physical {:#x} (value {:#x})",
                hit.id,
                if hit.write { "write" } else { "read" },
                hit.size,
                hit.gpa,
                hit.value
            ),
            StopReason::Stepped { rip } => format!("single step to {rip:#x}"),
            StopReason::Interrupted => "interrupted".into(),
            StopReason::SerialMatch { text, .. } => format!("serial output matched {text:?}"),
            StopReason::Halted {
                rip,
                interrupts_enabled,
            } => format!(
                "guest halted at rip {rip:#x} with interrupts {} and no interrupt source",
                if *interrupts_enabled {
                    "enabled"
                } else {
                    "disabled"
                }
            ),
            StopReason::Shutdown { regs } => format!(
                "guest triple-faulted (shutdown) at rip {:#x}",
                regs.get("rip").unwrap_or(0)
            ),
            StopReason::EmulationFailure { insn, reason, .. } => format!(
                "emulation failure at {:#x}: {} [{}]: {reason}",
                insn.linear_rip,
                insn.disasm,
                hex_bytes(&insn.bytes)
            ),
            StopReason::ExitBudget { exits } => format!("exit budget used up after {exits} exits"),
            StopReason::TimeBudget { ns } => format!("virtual-time budget used up after {ns} ns"),
            StopReason::EntryFailure { reason, .. } => {
                format!("KVM could not enter the guest (hardware reason {reason:#x})")
            }
            StopReason::InternalError { suberror, .. } => {
                format!("KVM internal error (suberror {suberror})")
            }
            StopReason::UnexpectedExit { exit } => format!("unexpected exit: {exit}"),
            StopReason::DeterminismHole { what } => {
                format!("determinism hole under --strict: {what}")
            }
        }
    }

    /// The registers recorded with this stop, if any.
    pub fn regs(&self) -> Option<&RegisterDump> {
        match self {
            StopReason::Shutdown { regs }
            | StopReason::EmulationFailure { regs, .. }
            | StopReason::EntryFailure { regs, .. }
            | StopReason::InternalError { regs, .. } => Some(regs),
            _ => None,
        }
    }
}

/// Formats bytes as space-separated hex.
pub fn hex_bytes(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
