//! The run summary (stderr) and the versioned JSON report (`--report FILE`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::boot::Protocol;
use crate::devices::bus::Unclaimed;
use crate::machine::drwatch::{WatchMode, WatchReport};
use crate::machine::syscall_compat::SyscallCompatReport;
use crate::machine::userdbg::UserDebugReport;
use crate::machine::{ExitCounts, Machine, StopReason, UcallLog};
use crate::vm::cpuid::CpuProfile;

/// Version of the JSON report's schema. Bumped on incompatible changes.
pub const REPORT_VERSION: u32 = 1;

/// What the guest could see of the CPU model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CpuReport {
    /// The requested profile.
    pub profile: CpuProfile,
    /// Features the profile hides that the guest still sees (host limitation).
    pub still_visible: Vec<&'static str>,
    /// Features the profile offers that the guest does not see.
    pub missing: Vec<&'static str>,
    /// Whether KVM's paravirtual CPUID leaf is still visible.
    pub paravirt_leaf_visible: bool,
}

/// The record of one run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunReport {
    /// Schema version ([`REPORT_VERSION`]).
    pub report_version: u32,
    /// lunavm's version.
    pub lunavm_version: &'static str,
    /// What was booted: `guest:NAME` or the kernel's path.
    pub kernel: String,
    /// Its boot protocol.
    pub protocol: Option<Protocol>,
    /// Its entry point.
    pub entry: Option<u64>,
    /// The command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The run's seed.
    pub seed: u64,
    /// CPU model.
    pub cpu: CpuReport,
    /// Why the run stopped.
    pub stop: StopReason,
    /// The stop in words.
    pub stop_description: String,
    /// The process exit code lunavm returns.
    pub exit_code: u8,
    /// Exits by kind.
    pub exits: ExitCounts,
    /// Guest-caused exits (the run position's first half).
    pub guest_exits: u64,
    /// Virtual time at the stop, in nanoseconds.
    pub virtual_time_ns: u64,
    /// Unclaimed port accesses.
    pub unclaimed_pio: Unclaimed,
    /// Unclaimed MMIO accesses.
    pub unclaimed_mmio: Unclaimed,
    /// Instructions completed for KVM, per table entry.
    pub completions: BTreeMap<&'static str, u64>,
    /// The SYSCALL compatibility path: what the host does, what lunavm did.
    pub syscall_compat: SyscallCompatReport,
    /// User-mode software breakpoints and single steps: what the startup
    /// probe measured, what lunavm took back from the guest's handlers.
    pub user_debug: UserDebugReport,
    /// Data watches: the mechanism, what the startup probe measured of the
    /// debug registers, and what was set and hit.
    pub watches: WatchReport,
    /// ucall traffic.
    pub ucalls: UcallLog,
    /// Last POST code and number of writes to port 0x80.
    pub post_code: (u8, u64),
    /// Bytes written to the serial port.
    pub serial_bytes: usize,
    /// Hash of guest memory and vCPU registers at the stop (with `--report`),
    /// to compare runs: equal hashes, equal machines.
    pub state_hash: Option<String>,
}

impl RunReport {
    /// Builds the report of `machine` after a run that stopped with `stop`.
    pub fn new(
        machine: &Machine,
        kernel: String,
        cmdline: String,
        stop: StopReason,
        exit_code: u8,
    ) -> Self {
        let cmp = machine.cpuid_comparison();
        let k = machine.kernel();
        RunReport {
            report_version: REPORT_VERSION,
            lunavm_version: env!("CARGO_PKG_VERSION"),
            kernel,
            protocol: k.map(|k| k.protocol),
            entry: k.map(|k| k.entry),
            cmdline,
            mem_size: machine.config().mem_size,
            seed: machine.config().seed,
            cpu: CpuReport {
                profile: machine.config().cpu,
                still_visible: cmp.still_visible,
                missing: cmp.missing,
                paravirt_leaf_visible: cmp.paravirt_leaf_visible,
            },
            stop_description: stop.describe(),
            stop,
            exit_code,
            exits: machine.exits().clone(),
            guest_exits: machine.clock().guest_exits(),
            virtual_time_ns: machine.clock().now_ns(),
            unclaimed_pio: machine.unclaimed_pio(),
            unclaimed_mmio: machine.unclaimed_mmio(),
            completions: machine
                .completions()
                .iter()
                .map(|(e, n)| (e.name(), *n))
                .collect(),
            syscall_compat: machine.syscall_compat(),
            user_debug: machine.user_debug(),
            watches: machine.watch_report(),
            ucalls: machine.ucalls().clone(),
            post_code: machine.post_code(),
            serial_bytes: machine.serial_output().len(),
            state_hash: None,
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The human summary printed on stderr.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "lunavm: {}", self.stop_description);
        if let Some(regs) = self.stop.regs() {
            for line in regs.to_string().lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        let proto = match self.protocol {
            Some(Protocol::Pvh) => "pvh",
            Some(Protocol::Multiboot) => "multiboot",
            Some(Protocol::Linux) => "linux",
            None => "not loaded",
        };
        let _ = writeln!(
            s,
            "  kernel     {} ({proto}, entry {:#x}), {} MiB, seed {:#x}",
            self.kernel,
            self.entry.unwrap_or(0),
            self.mem_size >> 20,
            self.seed
        );
        let e = &self.exits;
        let _ = writeln!(
            s,
            "  exits      {} (pio in {}, pio out {}, mmio read {}, mmio write {}, hlt {}, emulation {}); virtual time {}",
            e.total(),
            e.pio_in,
            e.pio_out,
            e.mmio_read,
            e.mmio_write,
            e.hlt,
            e.emulation_failure,
            format_ns(self.virtual_time_ns)
        );
        if e.interrupts > 0 || e.kicks > 0 {
            let _ = writeln!(
                s,
                "  platform   interrupts injected {}; kicks {} ({} found a spin wait: virtual time moved deterministically; {} moved it host-timed: determinism holes)",
                e.interrupts, e.kicks, e.spin_waits, e.kick_time_jumps
            );
        }
        let (p, m) = (self.unclaimed_pio, self.unclaimed_mmio);
        if p.reads + p.writes + m.reads + m.writes > 0 {
            let _ = writeln!(
                s,
                "  unclaimed  port reads {}, port writes {}, mmio reads {}, mmio writes {}",
                p.reads, p.writes, m.reads, m.writes
            );
        }
        if !self.completions.is_empty() {
            let list: Vec<String> = self
                .completions
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "  completed  {}", list.join(", "));
        }
        let c = &self.syscall_compat;
        if c.active && (c.completed > 0 || c.page_faults > 0 || c.starved) {
            let _ = writeln!(
                s,
                "  user mode  SYSCALLs finished for the host {}, other page faults passed {}{}",
                c.completed,
                c.page_faults,
                if c.starved {
                    "; no debug register was free for the #PF handler breakpoint"
                } else {
                    ""
                }
            );
        }
        let u = &self.user_debug;
        if u.breakpoints + u.steps + u.passed > 0 || u.starved {
            let _ = writeln!(
                s,
                "  user debug breakpoints {} and steps {} taken back from the guest's #BP/#DB handlers, guest's own passed {}{} ({})",
                u.breakpoints,
                u.steps,
                u.passed,
                if u.starved {
                    "; no debug register was free for a handler breakpoint"
                } else {
                    ""
                },
                u.probe
            );
        }
        if let Some(line) = watch_line(&self.watches) {
            let _ = writeln!(s, "  watches    {line}");
        }
        if !self.ucalls.counts.is_empty() || !self.ucalls.errors.is_empty() {
            let list: Vec<String> = self
                .ucalls
                .counts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "  ucalls     {}; undecodable {}",
                list.join(", "),
                self.ucalls.errors.len()
            );
            for err in &self.ucalls.errors {
                let _ = writeln!(s, "    {err}");
            }
        }
        let c = &self.cpu;
        let mut line = format!("  cpu        profile {}", c.profile.name());
        if !c.still_visible.is_empty() || c.paravirt_leaf_visible {
            let mut names = c.still_visible.clone();
            if c.paravirt_leaf_visible {
                names.push("kvm-paravirt-leaves");
            }
            let _ = write!(
                line,
                "; hidden but still visible to the guest (host KVM ignores the mask): {}",
                names.join(" ")
            );
        }
        if !c.missing.is_empty() {
            let _ = write!(line, "; offered but not visible: {}", c.missing.join(" "));
        }
        let _ = writeln!(s, "{line}");
        s
    }
}

/// Formats virtual nanoseconds for people.
pub fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.3} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.3} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// The summary's watch line: when watches were set or the mode was chosen.
fn watch_line(w: &WatchReport) -> Option<String> {
    let st = &w.stats;
    if w.mode == WatchMode::Auto && st.page_watches == 0 && st.debug_reg_watches == 0 {
        return None;
    }
    let mut line = format!(
        "{} (--watch-mode {}; {})",
        if w.debug_regs {
            "debug registers where a watch fits one"
        } else {
            "page watches"
        },
        w.mode.name(),
        w.probe
    );
    if st.page_watches + st.debug_reg_watches > 0 {
        let _ = write!(
            line,
            "; set {} on debug registers, {} as page watches; hits {} by debug registers, {} by page watches",
            st.debug_reg_watches, st.page_watches, st.debug_reg_hits, st.page_hits
        );
        if st.no_free_debug_reg > 0 {
            let _ = write!(
                line,
                "; {} found no free debug register",
                st.no_free_debug_reg
            );
        }
        if st.filtered_writes > 0 {
            let _ = write!(
                line,
                "; {} writes dropped by read watches",
                st.filtered_writes
            );
        }
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations() {
        assert_eq!(format_ns(12), "12 ns");
        assert_eq!(format_ns(1_500), "1.500 µs");
        assert_eq!(format_ns(2_000_000), "2.000 ms");
        assert_eq!(format_ns(3_000_000_000), "3.000 s");
    }
}
