//! Debug-register watches: data breakpoints for watches, where the host
//! fires them.
//!
//! The watch mode ([`WatchMode`], `--watch-mode`) decides with the startup
//! probe ([`crate::vm::dr_probe`]) whether watches may use the debug
//! registers: `auto` when data breakpoints fire at both CPL0 and CPL3 (guest
//! code of either level may make the access), `debugreg` when they fire at
//! either (an error when at neither), `page` never. Then a watch set by
//! virtual address ([`Machine::add_watch_virt`]) on 1, 2, 4 or 8 bytes
//! aligned to their size takes a free register from the allocator shared
//! with execution breakpoints ([`super::debug`]); anything else is a page
//! watch.
//!
//! A data breakpoint is a trap: KVM exits with DR6 naming the register once
//! the accessing instruction has completed, the same point at which a page
//! watch stops. A write watch is R/W = 01. x86 has no read-only kind, so
//! read and access watches are R/W = 11, and the hit is told apart by the
//! watched bytes: lunavm reads them before every guest entry (a shadow) and
//! at the hit. Changed: a write (a read watch drops it; so a
//! read-modify-write that changes the value counts as a write only).
//! Unchanged: a read (a write of the same value counts as a read). A write
//! hit reports the shadow as its old value. A debug register watches a
//! linear address in whatever address space is current; accesses through
//! another mapping of the same memory, and device DMA, are not seen (page
//! watches see both).

use super::debug::{data_range_fits, DataAccess, DataBreakpoint, DebugRegError, Owner};
use super::watch::{Via, Watch, WatchError, WatchHit, WatchKind, WatchStats};
use super::{Machine, MachineError};
use crate::vm::access;
use crate::vm::dr_probe::DrProbe;
use crate::vm::regs::paging_regs;

/// Which mechanism watches may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// Debug registers when the probe found data breakpoints firing at CPL0
    /// and CPL3, else pages (the default).
    #[default]
    Auto,
    /// Debug registers where a watch fits one (an error on a host where data
    /// breakpoints fire at neither level).
    DebugReg,
    /// Page watches only.
    Page,
}

impl WatchMode {
    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WatchMode::Auto => "auto",
            WatchMode::DebugReg => "debugreg",
            WatchMode::Page => "page",
        }
    }

    /// Whether watches use debug registers in this mode on a host the
    /// probe measured.
    pub fn uses_debug_regs(self, probe: &DrProbe) -> Result<bool, WatchError> {
        match self {
            WatchMode::Auto => Ok(probe.cpl0.fires() && probe.cpl3.fires()),
            WatchMode::Page => Ok(false),
            WatchMode::DebugReg if probe.cpl0.fires() || probe.cpl3.fires() => Ok(true),
            WatchMode::DebugReg => Err(WatchError::DebugRegsSilent {
                probe: probe.to_string(),
            }),
        }
    }
}

impl std::str::FromStr for WatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WatchMode::Auto),
            "debugreg" => Ok(WatchMode::DebugReg),
            "page" => Ok(WatchMode::Page),
            other => Err(format!(
                "unknown watch mode '{other}': use auto, debugreg or page"
            )),
        }
    }
}

/// The watch mechanism chosen for a machine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WatchSetup {
    pub(crate) mode: WatchMode,
    pub(crate) probe: &'static DrProbe,
    pub(crate) debug_regs: bool,
}

/// The watch mechanism and its counters, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WatchReport {
    /// The requested mode.
    pub mode: WatchMode,
    /// What the startup probe measured.
    pub probe: DrProbe,
    /// Whether watches use debug registers where they fit.
    pub debug_regs: bool,
    /// What was set and hit.
    #[serde(flatten)]
    pub stats: WatchStats,
}

/// How a debug-register hit on a watch of `kind` is reported, from the
/// watched bytes before (`old`) and after (`new`) the instruction: Some
/// (whether it was a write), or None when a read watch saw a write.
pub(crate) fn classify(kind: WatchKind, old: Option<u64>, new: Option<u64>) -> Option<bool> {
    let changed = matches!((old, new), (Some(o), Some(n)) if o != n);
    match kind {
        WatchKind::Write => Some(true),
        WatchKind::Access => Some(changed),
        WatchKind::Read => (!changed).then_some(false),
    }
}

impl Machine {
    /// The watch mechanism and its counters.
    pub fn watch_report(&self) -> WatchReport {
        WatchReport {
            mode: self.watch_setup.mode,
            probe: self.watch_setup.probe.clone(),
            debug_regs: self.watch_setup.debug_regs,
            stats: self.watches.stats(),
        }
    }

    /// Whether watches use debug registers where they fit.
    pub fn watches_use_debug_regs(&self) -> bool {
        self.watch_setup.debug_regs
    }

    /// Puts a watch on a debug register when the mode allows, the range
    /// fits one and one is free; its id, or None for a page watch.
    /// `ranges` are the physical ranges `addr` maps to now.
    pub(crate) fn try_debug_reg_watch(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
        owner: Owner,
        ranges: &[(u64, u64)],
    ) -> Result<Option<u64>, MachineError> {
        if !self.watch_setup.debug_regs || !data_range_fits(addr, len) {
            return Ok(None);
        }
        let Ok(len8) = u8::try_from(len) else {
            return Ok(None);
        };
        let access = match kind {
            WatchKind::Write => DataAccess::Write,
            WatchKind::Read | WatchKind::Access => DataAccess::ReadWrite,
        };
        let id = self.watches.next_id();
        let bp = DataBreakpoint {
            watch: id,
            len: len8,
            access,
        };
        match self.debug_regs.alloc_data(addr, owner, bp) {
            Ok(_) => {}
            Err(DebugRegError::Full) => {
                self.watches.stats.no_free_debug_reg += 1;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.apply_debug_regs() {
            self.debug_regs.free_data(id);
            let _ = self.apply_debug_regs();
            return Err(e);
        }
        self.watches.list.push(Watch {
            id,
            owner,
            gpa: ranges.first().map_or(0, |r| r.0),
            len,
            kind,
            via: Via::DebugReg { linear: addr },
        });
        let shadow = self.read_linear(addr, len8)?;
        self.watches.shadows.insert(id, shadow);
        self.watches.stats.debug_reg_watches += 1;
        Ok(Some(id))
    }

    /// The `len` bytes at linear `addr` as a little-endian value, through
    /// the current page tables; None when unmapped.
    fn read_linear(&self, addr: u64, len: u8) -> Result<Option<u64>, MachineError> {
        let paging = paging_regs(&self.sregs()?);
        let mut buf = [0u8; 8];
        let n = usize::from(len).min(8);
        Ok(
            access::read_virt(&self.vm.mem, &paging, addr, &mut buf[..n])
                .is_ok()
                .then(|| super::intercept::le_value(&buf[..n])),
        )
    }

    /// Reads every debug-register watch's bytes before the guest runs: what
    /// a hit compares with. (Anything but the guest's accesses through the
    /// watched address — the VMM, devices, other mappings — changes them
    /// only while the guest is out.)
    pub(crate) fn refresh_watch_shadows(&mut self) -> Result<(), MachineError> {
        if self.watches.shadows.is_empty() {
            return Ok(());
        }
        let dr: Vec<(u64, u64, u64)> = self
            .watches
            .list
            .iter()
            .filter_map(|w| match w.via {
                Via::DebugReg { linear } => Some((w.id, linear, w.len)),
                Via::Page => None,
            })
            .collect();
        for (id, linear, len) in dr {
            let v = self.read_linear(linear, u8::try_from(len).unwrap_or(8))?;
            self.watches.shadows.insert(id, v);
        }
        Ok(())
    }

    /// A debug exit with DR6 `dr6`: whether it came from data breakpoints
    /// (then harness-caused). The first reportable hit becomes the pending
    /// watch stop; a read watch's writes are dropped.
    pub(crate) fn data_breakpoint_hit(&mut self, dr6: u64) -> Result<bool, MachineError> {
        let hits: Vec<(u64, u64)> = self
            .debug_regs
            .data_hits(dr6)
            .map(|(_, linear, bp)| (linear, bp.watch))
            .collect();
        if hits.is_empty() {
            return Ok(false);
        }
        for (linear, id) in hits {
            let Some(w) = self.watches.list.iter().find(|w| w.id == id).copied() else {
                continue;
            };
            let len = u8::try_from(w.len).unwrap_or(8);
            let new = self.read_linear(linear, len)?;
            let old = self.watches.shadows.insert(id, new).flatten();
            let Some(write) = classify(w.kind, old, new) else {
                self.watches.stats.filtered_writes += 1;
                continue;
            };
            if self.watches.pending.is_some() {
                continue;
            }
            let paging = paging_regs(&self.sregs()?);
            let gpa = access::phys_ranges(&self.vm.mem, &paging, linear, usize::from(len))
                .ok()
                .and_then(|r| r.first().map(|r| r.0))
                .unwrap_or(w.gpa);
            self.watches.stats.debug_reg_hits += 1;
            self.watches.pending = Some(WatchHit {
                id,
                kind: w.kind,
                gpa,
                size: len,
                write,
                value: new.unwrap_or(0),
                old: if write { old } else { None },
            });
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::dr_probe::{LevelProbe, Outcome};

    fn level(fires: bool) -> LevelProbe {
        let o = if fires {
            Outcome::Fires
        } else {
            Outcome::Silent
        };
        LevelProbe {
            write: o.clone(),
            access_store: o.clone(),
            access_load: o,
        }
    }

    fn probe(cpl0: bool, cpl3: bool) -> DrProbe {
        DrProbe {
            cpl0: level(cpl0),
            cpl3: level(cpl3),
        }
    }

    #[test]
    fn modes_follow_the_probe() {
        use WatchMode::*;
        assert!(Auto.uses_debug_regs(&probe(true, true)).unwrap());
        // Auto wants both levels: either may make the access.
        assert!(!Auto.uses_debug_regs(&probe(false, true)).unwrap());
        assert!(!Auto.uses_debug_regs(&probe(true, false)).unwrap());
        assert!(!Page.uses_debug_regs(&probe(true, true)).unwrap());
        assert!(DebugReg.uses_debug_regs(&probe(false, true)).unwrap());
        let err = DebugReg.uses_debug_regs(&probe(false, false)).unwrap_err();
        assert!(err
            .to_string()
            .contains("data breakpoints do not fire at CPL0 and do not fire at CPL3"));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("debugreg".parse(), Ok(WatchMode::DebugReg));
        assert_eq!("page".parse(), Ok(WatchMode::Page));
        assert_eq!("auto".parse(), Ok(WatchMode::Auto));
        assert!("dr".parse::<WatchMode>().is_err());
        assert_eq!(WatchMode::DebugReg.name(), "debugreg");
    }

    #[test]
    fn hits_are_told_apart_by_the_value() {
        use WatchKind::*;
        // A write watch fires only on writes (R/W = 01).
        assert_eq!(classify(Write, Some(1), Some(1)), Some(true));
        // Access: a changed value is a write, an unchanged one a read.
        assert_eq!(classify(Access, Some(1), Some(2)), Some(true));
        assert_eq!(classify(Access, Some(1), Some(1)), Some(false));
        // Read: writes that change the value are dropped.
        assert_eq!(classify(Read, Some(1), Some(2)), None);
        assert_eq!(classify(Read, Some(1), Some(1)), Some(false));
        // Unreadable bytes: reported (never lose a hit).
        assert_eq!(classify(Read, None, Some(1)), Some(false));
        assert_eq!(classify(Access, Some(1), None), Some(false));
    }
}
