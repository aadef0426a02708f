//! Counters of what happened in a run, for the summary and the report.

use std::collections::BTreeMap;

use crate::ucall::{Ucall, UcallError};

/// Exits by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitCounts {
    /// Port reads.
    pub pio_in: u64,
    /// Port writes (including ucalls and debug-exit).
    pub pio_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// HLT exits.
    pub hlt: u64,
    /// Emulation failures (completed or not).
    pub emulation_failure: u64,
    /// KVM_RUN returns that were interrupted (EINTR) and retried.
    pub interrupted: u64,
    /// Forward-progress kicks of a vCPU that ran 20 ms of host time without an exit.
    #[serde(default)]
    pub kicks: u64,
    /// Kicks that moved virtual time to a pending timer deadline where the
    /// guest happened to be (host-timed fallback): determinism holes.
    #[serde(default)]
    pub kick_time_jumps: u64,
    /// Kicks that found the guest in a spin wait (a loop that changes
    /// nothing) and moved virtual time at the loop's canonical state:
    /// deterministic ([`super::spin`]).
    #[serde(default)]
    pub spin_waits: u64,
    /// Interrupts injected.
    #[serde(default)]
    pub interrupts: u64,
}

impl ExitCounts {
    /// All exits counted.
    pub fn total(&self) -> u64 {
        self.pio_in
            + self.pio_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.emulation_failure
    }
}

/// What the guest said through the ucall port.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UcallLog {
    /// Calls per command name.
    pub counts: BTreeMap<String, u64>,
    /// PRINT messages, in order.
    pub prints: Vec<String>,
    /// The last call of each kind other than PRINT (for scripts and reports).
    pub last: BTreeMap<String, Ucall>,
    /// Calls the harness could not decode.
    pub errors: Vec<UcallError>,
}

impl UcallLog {
    /// Records a decoded call.
    pub fn record(&mut self, call: &Ucall) {
        *self.counts.entry(call.cmd.name().to_string()).or_default() += 1;
        if call.cmd == crate::ucall::Command::Print {
            self.prints.push(call.msg.clone());
        } else {
            self.last.insert(call.cmd.name().to_string(), call.clone());
        }
    }
}
