//! gdb's `monitor` commands (gdbstub's `MonitorCmd` extension): system
//! registers, the virtual clock and named in-memory snapshots. Every reply is
//! text gdb prints; a bad command or a failing machine call is an error line,
//! never the end of the session.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::target::GdbTarget;
use crate::machine::watch::Via;
use crate::machine::{Machine, MachineError};
use crate::report::format_ns;
use crate::snapshot::Snapshot;

/// The help text of `monitor help`.
const HELP: &str = "\
lunavm monitor commands:
  monitor help                     this list
  monitor regs                     general, segment, control and descriptor-table registers, and MSRs
  monitor clock                    virtual time, guest-caused exits, next timer deadline
  monitor snapshot take NAME       snapshot the machine in memory as NAME (replaces an older NAME)
  monitor snapshot restore NAME    restore snapshot NAME
  monitor snapshot list            list the snapshots of this gdb session
  monitor snapshot drop NAME       forget snapshot NAME
  monitor watches                  the watches (gdb's watchpoints), the mechanism each uses, and the KVM memory slots
  monitor userdebug                user-mode breakpoints and steps: the host probe, the guest #BP/#DB handler breakpoints, counts
  monitor record on|off            keep checkpoints for reverse-stepi and reverse-continue (off by default)
  monitor record                   whether recording is on, and the checkpoints kept
  monitor lua CODE                 run Lua against the stopped machine (the scenario API:
                                   cpu, mem, vm, ...); prints what it printed and returned
";

/// The MSRs `monitor regs` shows: index and name.
const MSRS: [(u32, &str); 11] = [
    (0x1b, "IA32_APIC_BASE"),
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "FMASK"),
    (0xc000_0100, "FS_BASE"),
    (0xc000_0101, "GS_BASE"),
    (0xc000_0102, "KERNEL_GS_BASE"),
];

/// A snapshot of a gdb session, and whether the machine was stopped at a
/// breakpoint when it was taken (then the next run steps over it again).
pub(super) struct SessionSnapshot {
    snap: Snapshot,
    at_breakpoint: bool,
}

/// The named snapshots of one gdb session.
pub(super) type Snapshots = BTreeMap<String, SessionSnapshot>;

impl MonitorCmd for GdbTarget {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(cmd);
        let reply = self.monitor(&cmd);
        out.write_raw(reply.as_bytes());
        Ok(())
    }
}

impl GdbTarget {
    /// Runs monitor command `cmd`; returns the text for gdb (ending in a
    /// newline).
    pub(super) fn monitor(&mut self, cmd: &str) -> String {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if words.first() == Some(&"lua") {
            return self.lua_cmd(cmd.trim_start().trim_start_matches("lua"));
        }
        let result: Result<String, String> = match words.as_slice() {
            [] | ["help"] => Ok(HELP.to_string()),
            ["regs"] => self
                .machine()
                .map_err(|e| e.to_string())
                .and_then(|m| regs_text(&m).map_err(|e| e.to_string())),
            ["clock"] => self
                .machine()
                .map(|m| clock_text(&m))
                .map_err(|e| e.to_string()),
            ["snapshot", rest @ ..] => Ok(self.snapshot_cmd(rest)),
            ["watches"] => self
                .machine()
                .map(|m| watches_text(&m))
                .map_err(|e| e.to_string()),
            ["userdebug"] => self
                .machine()
                .map(|m| userdebug_text(&m))
                .map_err(|e| e.to_string()),
            ["record"] => Ok(self.record_text()),
            ["record", "on"] => {
                self.recording = true;
                Ok("recording on: checkpoints from the next resume on, for reverse-stepi and reverse-continue\n".into())
            }
            ["record", "off"] => {
                self.recording = false;
                self.forget_history();
                Ok("recording off; history dropped\n".into())
            }
            _ => Ok(format!(
                "error: unknown monitor command `{}`; try `monitor help`\n",
                cmd.trim()
            )),
        };
        result.unwrap_or_else(|e| format!("error: {e}\n"))
    }

    /// `monitor record`: the history and what the last reverse operation
    /// cost.
    fn record_text(&self) -> String {
        let h = &self.history;
        let c = h.cost;
        let position = match self.machine() {
            Ok(m) => {
                let steps = h
                    .steps()
                    .map_or_else(|| "steps not counted".to_string(), |s| format!("{s} steps"));
                format!(
                    "; at exit {} ({steps} after the last checkpoint)",
                    m.clock().guest_exits()
                )
            }
            Err(_) => String::new(),
        };
        format!(
            "recording {}; {} checkpoints kept ({} dropped for space), {} exits recorded, {} KiB{position}\nthe last reverse operation replayed {} exits natively and {} single steps from {} checkpoint restores ({} pages copied)\n",
            if self.recording { "on" } else { "off" },
            h.len(),
            h.dropped,
            h.exits_recorded(),
            h.bytes() / 1024,
            c.exits,
            c.steps,
            c.restores,
            c.pages
        )
    }

    /// `monitor lua CODE`: runs `code` in the session's Lua state (globals
    /// persist from one command to the next).
    fn lua_cmd(&mut self, code: &str) -> String {
        let code = code.trim();
        if code.is_empty() {
            return "error: usage: monitor lua CODE (e.g. monitor lua cpu.get(\"rip\"))\n".into();
        }
        let text = self.lua.console("monitor lua", code);
        // The chunk may have changed the machine behind the history.
        self.forget_history();
        // The chunk may have run or restored the machine: a stop reached
        // earlier is no longer where the machine is.
        self.finished = None;
        if text.is_empty() {
            "(no value)\n".into()
        } else {
            text
        }
    }

    /// `monitor snapshot ...`.
    fn snapshot_cmd(&mut self, args: &[&str]) -> String {
        let Some(mut machine) = self.lua.machine_mut() else {
            return format!("error: {}\n", super::GdbError::NoMachine);
        };
        match args {
            ["take", name] => match machine.take_snapshot() {
                Ok(snap) => {
                    let entry = SessionSnapshot {
                        snap,
                        at_breakpoint: machine.resume_over_breakpoint,
                    };
                    let replaced = self.snapshots.insert((*name).to_string(), entry).is_some();
                    let what = if replaced { " (replaced)" } else { "" };
                    format!("snapshot `{name}` taken{what}\n")
                }
                Err(e) => format!("error: cannot take snapshot `{name}`: {e}\n"),
            },
            ["restore", name] => {
                let Some(entry) = self.snapshots.get(*name) else {
                    return no_snapshot(name);
                };
                match machine.restore_snapshot(&entry.snap) {
                    Ok(stats) => {
                        // Stopped at a breakpoint as when it was taken: a
                        // continue must not stop at once on the same one.
                        machine.resume_over_breakpoint = entry.at_breakpoint;
                        // The restored machine has not ended its run.
                        self.finished = None;
                        self.history.reset();
                        let kind = if stats.full { "full" } else { "dirty pages" };
                        format!(
                            "snapshot `{name}` restored: {} pages copied ({kind})\n",
                            stats.pages
                        )
                    }
                    Err(e) => format!("error: cannot restore snapshot `{name}`: {e}\n"),
                }
            }
            ["list"] => {
                if self.snapshots.is_empty() {
                    return "no snapshots\n".to_string();
                }
                let mut s = String::new();
                for (name, entry) in &self.snapshots {
                    let snap = &entry.snap;
                    let rip = snap.state.vcpus.first().map(|v| v.regs.rip);
                    let _ = write!(
                        s,
                        "{name}: virtual time {}",
                        format_ns(snap.state.clock.now_ns())
                    );
                    if let Some(rip) = rip {
                        let _ = write!(s, ", rip {rip:#x}");
                    }
                    s.push('\n');
                }
                s
            }
            ["drop", name] => {
                if self.snapshots.remove(*name).is_some() {
                    format!("snapshot `{name}` dropped\n")
                } else {
                    no_snapshot(name)
                }
            }
            _ => "error: usage: monitor snapshot take|restore|drop NAME, or monitor snapshot list; see `monitor help`\n"
                .to_string(),
        }
    }
}

/// The error line for an unknown snapshot name.
fn no_snapshot(name: &str) -> String {
    format!("error: no snapshot named `{name}` (see `monitor snapshot list`)\n")
}

/// One segment register as a line.
fn segment_line(name: &str, s: &kvm_segment) -> String {
    format!(
        "{name:<8} selector={:#06x} base={:#018x} limit={:#010x} type={:#x} s={} dpl={} p={} avl={} l={} db={} g={}{}\n",
        s.selector,
        s.base,
        s.limit,
        s.type_,
        s.s,
        s.dpl,
        s.present,
        s.avl,
        s.l,
        s.db,
        s.g,
        if s.unusable != 0 { " unusable" } else { "" }
    )
}

/// `monitor regs`: the general registers, segments, control registers,
/// descriptor tables and a few MSRs, one per line.
fn regs_text(machine: &Machine) -> Result<String, MachineError> {
    let r = machine.regs()?;
    let s = machine.sregs()?;
    let mut out = String::new();
    general_regs(&mut out, &r);
    system_regs(&mut out, &s);
    for (index, name) in MSRS {
        let line = match machine.rdmsr(index) {
            Ok(v) => format!("{name:<16} ({index:#010x}) {v:#018x}\n"),
            Err(_) => format!("{name:<16} ({index:#010x}) unreadable\n"),
        };
        out.push_str(&line);
    }
    Ok(out)
}

/// The general registers, RIP and RFLAGS.
fn general_regs(out: &mut String, r: &kvm_regs) {
    let gprs = crate::vm::regs::general_regs(r);
    for (name, v) in gprs {
        let _ = writeln!(out, "{name:<8} {v:#018x}");
    }
}

/// Segments, control registers, EFER and the descriptor tables.
fn system_regs(out: &mut String, s: &kvm_sregs) {
    let segs = [
        ("cs", &s.cs),
        ("ds", &s.ds),
        ("es", &s.es),
        ("fs", &s.fs),
        ("gs", &s.gs),
        ("ss", &s.ss),
        ("tr", &s.tr),
        ("ldt", &s.ldt),
    ];
    for (name, seg) in segs {
        out.push_str(&segment_line(name, seg));
    }
    let ctrl = [
        ("cr0", s.cr0),
        ("cr2", s.cr2),
        ("cr3", s.cr3),
        ("cr4", s.cr4),
        ("cr8", s.cr8),
        ("efer", s.efer),
    ];
    for (name, v) in ctrl {
        let _ = writeln!(out, "{name:<8} {v:#018x}");
    }
    for (name, t) in [("gdt", &s.gdt), ("idt", &s.idt)] {
        let _ = writeln!(
            out,
            "{name:<8} base={:#018x} limit={:#06x}",
            t.base, t.limit
        );
    }
}

/// `monitor watches`: the mechanism, the watches (each with its own) and
/// the memory slots page watches carved.
/// `monitor userdebug`: the user-mode breakpoint path.
fn userdebug_text(machine: &Machine) -> String {
    let u = machine.user_debug();
    let at = |h: Option<u64>| h.map_or_else(|| "none".to_string(), |a| format!("{a:#x}"));
    let path = if u.breakpoints_active || u.steps_active {
        format!(
            "on: #BP handler breakpoint {}, #DB handler breakpoint {}{}",
            at(u.bp_handler),
            at(u.db_handler),
            if u.starved {
                " (no debug register was free for one)"
            } else {
                ""
            }
        )
    } else {
        "off: KVM reports them itself".to_string()
    };
    format!(
        "host: {}\nuser-mode path {path}\ntaken back: {} breakpoints, {} steps; the guest's own #BP/#DB passed: {}\n",
        u.probe, u.breakpoints, u.steps, u.passed
    )
}

fn watches_text(machine: &Machine) -> String {
    let mut out = String::new();
    let r = machine.watch_report();
    let _ = writeln!(
        out,
        "mechanism: {} (--watch-mode {}; {})",
        if r.debug_regs {
            "debug registers where a watch fits one, else pages"
        } else {
            "page watches"
        },
        r.mode.name(),
        r.probe
    );
    let watches = machine.watches().list();
    if watches.is_empty() {
        out.push_str("no watches\n");
    }
    for w in watches {
        let (at, via) = match w.via {
            Via::Page => (format!("physical {:#x}", w.gpa), "page watch".to_string()),
            Via::DebugReg { linear } => (
                format!("linear {linear:#x}"),
                format!(
                    "debug register DR{} (physical {:#x} when set)",
                    machine
                        .debug_regs()
                        .data_slot(w.id)
                        .map_or("?".to_string(), |s| s.to_string()),
                    w.gpa
                ),
            ),
        };
        let _ = writeln!(
            out,
            "watch {}: {:?} of {} bytes at {at} ({:?}): {via}",
            w.id, w.kind, w.len, w.owner
        );
    }
    for p in machine.memory_slots() {
        let _ = writeln!(
            out,
            "slot {}: region {} pages {:#x}..{:#x} {}",
            p.slot,
            p.region,
            p.first_page,
            p.first_page + p.pages,
            if p.readonly {
                "read-only"
            } else {
                "read-write"
            }
        );
    }
    out
}

/// `monitor clock`: virtual time, guest-caused exits and the next timer
/// deadline.
fn clock_text(machine: &Machine) -> String {
    let clock = machine.clock();
    let now = clock.now_ns();
    let mut out = format!("virtual time     {now} ns ({})\n", format_ns(now));
    let _ = writeln!(out, "guest exits      {}", clock.guest_exits());
    match machine.next_timer_deadline() {
        Some(d) if d >= now => {
            let _ = writeln!(
                out,
                "next timer       {d} ns ({}, in {})",
                format_ns(d),
                format_ns(d - now)
            );
        }
        Some(d) => {
            let _ = writeln!(out, "next timer       {d} ns ({}, due now)", format_ns(d));
        }
        None => out.push_str("next timer       none armed\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_lines_show_all_fields() {
        let s = kvm_segment {
            selector: 0x10,
            base: 0,
            limit: 0xffff_ffff,
            type_: 0xb,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let line = segment_line("cs", &s);
        assert!(line.starts_with("cs       selector=0x0010 base=0x0000000000000000"));
        assert!(line.contains("limit=0xffffffff type=0xb s=1 dpl=0 p=1 avl=0 l=1 db=0 g=1\n"));
    }
}
