//! One run from start to finish, as `lunavm run` does it: build the machine,
//! load the kernel, run to a stop, map the stop to an exit code, report.

use std::path::{Path, PathBuf};

use crate::boot::Module;
use crate::emulate;
use crate::exit_code;
use crate::guests;
use crate::machine::virtio::VirtioSetupError;
use crate::machine::{Machine, MachineConfig, MachineError, StopCondition, StopReason};
use crate::report::RunReport;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelSource {
    /// A built-in guest by name.
    Guest(String),
    /// A kernel file.
    File(PathBuf),
}

/// Everything `lunavm run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// What to boot.
    pub kernel: KernelSource,
    /// Kernel command line.
    pub cmdline: String,
    /// Module files with their command lines.
    pub modules: Vec<(PathBuf, String)>,
    /// Machine configuration.
    pub machine: MachineConfig,
    /// Stop condition.
    pub stop: StopCondition,
    /// Map debug-exit values the way QEMU does: (value << 1) | 1.
    pub qemu_exit_codes: bool,
    /// Start from this snapshot file instead of booting `kernel`.
    pub restore: Option<PathBuf>,
    /// After a restore, check the machine's state hash against the snapshot's.
    pub verify_restore: bool,
    /// At the stop, save a snapshot to this file.
    pub save: Option<PathBuf>,
    /// Put the hash of memory and vCPU state at the stop in the report.
    pub state_hash: bool,
    /// Serve gdb on this address (HOST:PORT) before the guest runs: it waits
    /// at its first instruction for gdb to connect.
    pub gdb: Option<String>,
}

/// Errors that stop a run before it produces a stop reason.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No built-in guest of that name.
    #[error("No built-in guest named '{0}': `lunavm guests` lists them")]
    UnknownGuest(String),
    /// A file could not be read.
    #[error("Cannot read {what} {path}")]
    Read {
        /// "kernel" or "module".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image was refused.
    #[error("Cannot load kernel {name}")]
    Load {
        /// The kernel's name or path.
        name: String,
        /// Why.
        #[source]
        source: MachineError,
    },
    /// Building or running the machine failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The gdb server could not listen.
    #[error(transparent)]
    Gdb(crate::gdb::GdbError),
    /// A snapshot file could not be used.
    #[error("Cannot restore snapshot {path}")]
    Restore {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An output file could not be written.
    #[error("Cannot write {what} to {path}")]
    Write {
        /// What the file holds.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot could not be saved.
    #[error("Cannot save a snapshot to {path}")]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl LaunchError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::UnknownGuest(_)
            | LaunchError::Read { .. }
            | LaunchError::Load { .. }
            | LaunchError::Restore { .. }
            | LaunchError::Save { .. }
            | LaunchError::Write { .. } => exit_code::BAD_INPUT,
            LaunchError::Machine(MachineError::Boot(_))
            | LaunchError::Machine(MachineError::Virtio(
                VirtioSetupError::Disk(_) | VirtioSetupError::TooMany(_),
            )) => exit_code::BAD_INPUT,
            LaunchError::Machine(_) | LaunchError::Gdb(_) => exit_code::HOST_ERROR,
        }
    }
}

/// The result of a run.
pub struct RunOutcome {
    /// The report (stop reason, exit code, counters).
    pub report: RunReport,
    /// The machine after the run, for callers that inspect it.
    pub machine: Machine,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LaunchError> {
    std::fs::read(path).map_err(|source| LaunchError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Maps a stop reason to lunavm's process exit code.
pub fn exit_code_for(stop: &StopReason, qemu_exit_codes: bool) -> u8 {
    match stop {
        StopReason::GuestExit { value } => exit_code::from_guest_value(*value, qemu_exit_codes),
        StopReason::Done { status } => (status & 0xff) as u8,
        StopReason::Assert { .. } => exit_code::GUEST_ASSERT,
        StopReason::Halted { .. } => exit_code::HALTED,
        StopReason::Shutdown { .. } => exit_code::SHUTDOWN,
        StopReason::EmulationFailure { .. } => exit_code::EMULATION_FAILURE,
        StopReason::ExitBudget { .. } | StopReason::TimeBudget { .. } => {
            exit_code::BUDGET_EXHAUSTED
        }
        StopReason::DeterminismHole { .. } => exit_code::DIVERGENCE,
        // `--until-serial`: the run reached the point it was asked to.
        StopReason::SerialMatch { .. } => exit_code::SUCCESS,
        StopReason::Sync { .. }
        | StopReason::Intercepted { .. }
        | StopReason::Ucall { .. }
        | StopReason::Completed { .. }
        | StopReason::Breakpoint { .. }
        | StopReason::CrashSite { .. }
        | StopReason::Watch { .. }
        | StopReason::Stepped { .. }
        | StopReason::Interrupted
        | StopReason::EntryFailure { .. }
        | StopReason::InternalError { .. }
        | StopReason::UnexpectedExit { .. } => exit_code::VM_ERROR,
    }
}

/// Parses `--no-complete` values: "all" or a comma-separated list of entries.
pub fn parse_no_complete(list: &str) -> Result<Vec<emulate::Entry>, String> {
    if list == "all" {
        return Ok(emulate::Entry::ALL.to_vec());
    }
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            emulate::Entry::from_name(name).ok_or_else(|| {
                let names: Vec<&str> = emulate::Entry::ALL.iter().map(|e| e.name()).collect();
                format!(
                    "unknown completion '{name}'; use all or some of: {}",
                    names.join(",")
                )
            })
        })
        .collect()
}

/// Builds the machine from a snapshot file.
fn restore(opts: &RunOptions, path: &Path) -> Result<(String, Machine), LaunchError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| LaunchError::Restore {
        path: path.to_owned(),
        source,
    };
    let snap = crate::snapshot::file::load(path).map_err(|e| err(Box::new(e)))?;
    let mut machine =
        Machine::from_snapshot(&snap, opts.machine.clone()).map_err(|e| err(Box::new(e)))?;
    if opts.verify_restore {
        machine
            .verify_against(&snap)
            .map_err(|e| err(Box::new(e)))?;
    }
    Ok((format!("snapshot:{}", path.display()), machine))
}

/// Boots and runs one kernel (or restores a snapshot) to a stop.
pub fn run(opts: &RunOptions) -> Result<RunOutcome, LaunchError> {
    let (name, mut machine) = match &opts.restore {
        Some(path) => restore(opts, path)?,
        None => boot(opts)?,
    };
    let stop = match &opts.gdb {
        Some(addr) => {
            let (m, stop) = run_with_gdb(machine, opts, addr)?;
            machine = m;
            stop
        }
        None => machine.run(&opts.stop)?,
    };
    if let Some(path) = &opts.save {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| LaunchError::Save {
            path: path.clone(),
            source,
        };
        let snap = machine.take_snapshot().map_err(|e| err(Box::new(e)))?;
        crate::snapshot::file::save(&snap, path).map_err(|e| err(Box::new(e)))?;
    }
    let code = exit_code_for(&stop, opts.qemu_exit_codes);
    let mut report = RunReport::new(&machine, name, opts.cmdline.clone(), stop, code);
    if opts.state_hash {
        report.state_hash = Some(format!("{:016x}", machine.current_state_hash()?));
    }
    Ok(RunOutcome { report, machine })
}

/// Serves gdb until it detaches or the run ends; after a detach the guest
/// runs on under `opts.stop` (whose budgets count from there).
fn run_with_gdb(
    machine: Machine,
    opts: &RunOptions,
    addr: &str,
) -> Result<(Machine, StopReason), LaunchError> {
    use crate::gdb::{self, GdbError, SessionEnd};
    let (machine, end) = gdb::serve(machine, addr, opts.qemu_exit_codes);
    let end = match end {
        Ok(end) => end,
        Err(GdbError::Machine(e)) => return Err(LaunchError::Machine(e)),
        Err(e) => return Err(LaunchError::Gdb(e)),
    };
    let mut machine = machine.ok_or(LaunchError::Gdb(GdbError::NoMachine))?;
    let stop = match end {
        SessionEnd::Finished(stop) => stop,
        SessionEnd::Detached => machine.run(&opts.stop)?,
    };
    Ok((machine, stop))
}

/// Boots the kernel `opts` names.
fn boot(opts: &RunOptions) -> Result<(String, Machine), LaunchError> {
    let (name, image): (String, std::borrow::Cow<'static, [u8]>) = match &opts.kernel {
        KernelSource::Guest(g) => {
            let guest = guests::find(g).ok_or_else(|| LaunchError::UnknownGuest(g.clone()))?;
            (format!("guest:{}", guest.name), guest.elf.into())
        }
        KernelSource::File(p) => (p.display().to_string(), read("kernel", p)?.into()),
    };
    let modules = opts
        .modules
        .iter()
        .map(|(p, cmdline)| {
            Ok(Module {
                data: read("module", p)?,
                cmdline: cmdline.clone(),
            })
        })
        .collect::<Result<Vec<_>, LaunchError>>()?;

    let mut machine = Machine::new(opts.machine.clone())?;
    machine
        .load_kernel(&image, &opts.cmdline, &modules)
        .map_err(|source| LaunchError::Load {
            name: name.clone(),
            source,
        })?;
    Ok((name, machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_complete_lists_parse() {
        assert_eq!(
            parse_no_complete("all").unwrap().len(),
            emulate::Entry::ALL.len()
        );
        assert_eq!(
            parse_no_complete("int3,xgetbv").unwrap(),
            vec![emulate::Entry::Int3, emulate::Entry::Xgetbv]
        );
        assert!(parse_no_complete("bogus").unwrap_err().contains("bogus"));
    }

    #[test]
    fn stop_reasons_map_to_fixed_codes() {
        assert_eq!(exit_code_for(&StopReason::GuestExit { value: 3 }, false), 3);
        assert_eq!(exit_code_for(&StopReason::GuestExit { value: 3 }, true), 7);
        assert_eq!(
            exit_code_for(&StopReason::ExitBudget { exits: 1 }, false),
            exit_code::BUDGET_EXHAUSTED
        );
        assert_eq!(
            exit_code_for(
                &StopReason::Halted {
                    rip: 0,
                    interrupts_enabled: false
                },
                false
            ),
            exit_code::HALTED
        );
    }
}
