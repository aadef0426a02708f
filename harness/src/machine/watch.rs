//! Data watches: page watches, which work everywhere, and debug-register
//! watches ([`super::drwatch`]) where the host fires data breakpoints.
//!
//! A page-watched page is carved out of its KVM memory slot ([`crate::vm::slots`]):
//! read-only when only writes are watched on it, absent when reads are, so
//! the guest's accesses to it exit to the VMM as MMIO. The run loop completes
//! each such access against guest RAM (the read returns what RAM holds, the
//! write lands in RAM and in the VMM's write bitmap, so snapshots see it) and
//! checks it against the watches. Accesses that hit no watch are invisible
//! to the guest and move no virtual time (the exits are the harness's).
//!
//! The run stops with [`StopReason::Watch`] once the accessing instruction
//! has completed, as after a debug-register data breakpoint (a trap after
//! the access): at once for a write (KVM exits for an MMIO write after the
//! instruction), after a single step for a read (it completes when the vCPU
//! is entered again; no interrupt is injected meanwhile). Watches
//! are on guest-physical ranges; front ends translate virtual addresses when
//! they set one. Removing the last watch of a page restores its slot exactly.
//! A page holding code or page tables cannot be watched for reads (the
//! guest's fetches and walks would have no RAM).
//!
//! [`Machine::add_watch_virt`] (the debugger's and `hook.watch{vaddr=}`)
//! takes a debug register instead when the watch mode says they fire and
//! the range is 1, 2, 4 or 8 naturally aligned bytes, and falls back to
//! page watches otherwise.

use std::collections::BTreeMap;

use super::debug::Owner;
use super::{Machine, MachineError, StopReason};
use crate::layout::PAGE_SIZE;
use crate::vm::memory::{self, GuestMem};
use crate::vm::slots::{PageMode, Slots};

/// The largest range one watch may cover (each page of it is carved).
pub const MAX_WATCH_LEN: u64 = 64 * 1024;

/// What a watch fires on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// Writes.
    Write,
    /// Reads.
    Read,
    /// Reads and writes.
    Access,
}

impl WatchKind {
    fn covers(self, write: bool) -> bool {
        match self {
            WatchKind::Write => write,
            WatchKind::Read => !write,
            WatchKind::Access => true,
        }
    }
}

/// How a watch sees the guest's accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Its pages are carved out of their memory slots.
    Page,
    /// A data breakpoint on a linear address (the debug register is the
    /// allocator's slot for this watch).
    DebugReg {
        /// The watched linear (guest-virtual) address.
        linear: u64,
    },
}

/// One watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Its id.
    pub id: u64,
    /// Who set it.
    pub owner: Owner,
    /// First guest-physical byte.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it fires on.
    pub kind: WatchKind,
    /// Its mechanism.
    pub via: Via,
}

impl Watch {
    fn is_page(&self) -> bool {
        self.via == Via::Page
    }
}

/// A guest access that hit a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WatchHit {
    /// The watch's id.
    pub id: u64,
    /// The watch's kind.
    pub kind: WatchKind,
    /// Guest-physical address of the access.
    pub gpa: u64,
    /// Size of the access in bytes.
    pub size: u8,
    /// Whether it was a write.
    pub write: bool,
    /// The value written, or read.
    pub value: u64,
    /// For a write: the value before it, when known.
    pub old: Option<u64>,
}

/// Errors of setting watches.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The range is empty or too long.
    #[error("A watch covers 1 to {MAX_WATCH_LEN} bytes, not {0}")]
    BadLength(u64),
    /// The virtual range is not mapped.
    #[error("Cannot watch {addr:#x}: {source}")]
    Unmapped {
        /// The virtual address.
        addr: u64,
        /// Why.
        #[source]
        source: crate::vm::access::AccessError,
    },
    /// `--watch-mode debugreg` on a host whose data breakpoints never fire.
    #[error("--watch-mode debugreg: this host's data breakpoints do not fire ({probe}, measured at startup), so debug-register watches would never report a hit; use --watch-mode auto or page")]
    DebugRegsSilent {
        /// What the startup probe measured.
        probe: String,
    },
    /// The slots could not be changed.
    #[error(transparent)]
    Slots(#[from] crate::vm::slots::SlotError),
}

/// How many watches each mechanism took and how many hits it reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchStats {
    /// Watches set as page watches (each carved range counts).
    pub page_watches: u64,
    /// Watches set on a debug register.
    pub debug_reg_watches: u64,
    /// Watches that could have taken a debug register but found none free
    /// (they became page watches).
    pub no_free_debug_reg: u64,
    /// Hits reported by page watches.
    pub page_hits: u64,
    /// Hits reported by debug-register watches.
    pub debug_reg_hits: u64,
    /// Debug-register hits filtered out: writes seen by a read watch.
    pub filtered_writes: u64,
}

/// The watches of a machine and the hit waiting for its instruction to
/// complete.
#[derive(Clone, Debug, Default)]
pub struct Watches {
    pub(crate) list: Vec<Watch>,
    next_id: u64,
    /// A hit whose instruction is completing (single-stepped).
    pub(crate) pending: Option<WatchHit>,
    /// The value of each debug-register watch's bytes before the guest was
    /// last entered (None when unmapped): a hit's old value.
    pub(crate) shadows: BTreeMap<u64, Option<u64>>,
    /// Counters.
    pub(crate) stats: WatchStats,
}

impl Watches {
    /// The watches, in the order they were set.
    pub fn list(&self) -> &[Watch] {
        &self.list
    }

    /// The counters.
    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    /// A fresh watch id.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// How each page must be carved for the watches.
    fn carved(&self) -> BTreeMap<u64, PageMode> {
        let mut out = BTreeMap::new();
        for w in self.list.iter().filter(|w| w.is_page()) {
            let mode = if w.kind == WatchKind::Write {
                PageMode::ReadOnly
            } else {
                PageMode::Absent
            };
            let mut page = w.gpa & !(PAGE_SIZE - 1);
            while page < w.gpa + w.len {
                let e = out.entry(page).or_insert(mode);
                if mode == PageMode::Absent {
                    *e = PageMode::Absent;
                }
                page += PAGE_SIZE;
            }
        }
        out
    }

    /// The first watch a guest access hits.
    fn hit(&self, gpa: u64, size: u64, write: bool) -> Option<&Watch> {
        self.list.iter().find(|w| {
            w.is_page() && w.kind.covers(write) && gpa < w.gpa + w.len && w.gpa < gpa + size
        })
    }

    /// Completes a guest access that exited as MMIO because its page is
    /// carved: a read gets RAM's bytes in `data`, a write goes to RAM.
    /// Returns None when `gpa` is not in a carved page (a device access),
    /// else whether the access hit a watch (then it is pending).
    pub(crate) fn complete_access(
        &mut self,
        slots: &Slots,
        mem: &GuestMem,
        gpa: u64,
        data: &mut [u8],
        write: bool,
    ) -> Option<bool> {
        slots.mode(gpa)?;
        let mut before = [0u8; 8];
        let n = data.len().min(8);
        let old = (write && memory::read_phys(mem, gpa, &mut before[..n]))
            .then(|| super::intercept::le_value(&before[..n]));
        let ok = if write {
            memory::write_phys(mem, gpa, data)
        } else {
            memory::read_phys(mem, gpa, data)
        };
        if !ok {
            // Not RAM after all (a range crossing the end of RAM): reads get
            // all-ones as an unclaimed MMIO read would.
            if !write {
                data.fill(0xff);
            }
        }
        let size = data.len() as u64;
        let Some(w) = self.hit(gpa, size, write) else {
            return Some(false);
        };
        let hit = WatchHit {
            id: w.id,
            kind: w.kind,
            gpa,
            size: u8::try_from(data.len()).unwrap_or(u8::MAX),
            write,
            value: super::intercept::le_value(data),
            old,
        };
        // An instruction with several accesses keeps the first hit.
        if self.pending.is_none() {
            self.stats.page_hits += 1;
            self.pending = Some(hit);
        }
        Some(true)
    }
}

impl Machine {
    /// Watches `len` bytes of guest-physical memory from `gpa` for `kind`
    /// accesses; returns the watch's id.
    pub fn add_watch(
        &mut self,
        gpa: u64,
        len: u64,
        kind: WatchKind,
        owner: Owner,
    ) -> Result<u64, MachineError> {
        if len == 0 || len > MAX_WATCH_LEN {
            return Err(WatchError::BadLength(len).into());
        }
        let id = self.watches.next_id();
        self.watches.list.push(Watch {
            id,
            owner,
            gpa,
            len,
            kind,
            via: Via::Page,
        });
        if let Err(e) = self.apply_watches() {
            self.watches.list.retain(|w| w.id != id);
            // Put the slots back as they were without it.
            let _ = self.apply_watches();
            return Err(e);
        }
        self.watches.stats.page_watches += 1;
        Ok(id)
    }

    /// Watches `len` bytes from guest-virtual `addr` (translated through the
    /// vCPU's page tables now) for `kind` accesses: one debug register when
    /// the watch mode uses them, the range fits one and one is free, else
    /// page watches on the physical pages the range maps to. Returns the
    /// watches' ids (all set, or none).
    pub fn add_watch_virt(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
        owner: Owner,
    ) -> Result<Vec<u64>, MachineError> {
        if len == 0 || len > MAX_WATCH_LEN {
            return Err(WatchError::BadLength(len).into());
        }
        let paging = crate::vm::regs::paging_regs(&self.sregs()?);
        let n = usize::try_from(len).map_err(|_| WatchError::BadLength(len))?;
        let ranges = crate::vm::access::phys_ranges(&self.vm.mem, &paging, addr, n)
            .map_err(|source| WatchError::Unmapped { addr, source })?;
        if let Some(id) = self.try_debug_reg_watch(addr, len, kind, owner, &ranges)? {
            return Ok(vec![id]);
        }
        let mut ids = Vec::new();
        for (gpa, l) in ranges {
            match self.add_watch(gpa, l, kind, owner) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    for id in ids {
                        self.remove_watch(id)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Removes watch `id`; whether it existed.
    pub fn remove_watch(&mut self, id: u64) -> Result<bool, MachineError> {
        let Some(i) = self.watches.list.iter().position(|w| w.id == id) else {
            return Ok(false);
        };
        let w = self.watches.list.remove(i);
        self.unapply_watch(&w)?;
        Ok(true)
    }

    /// Removes every watch `owner` set.
    pub fn remove_watches(&mut self, owner: Owner) -> Result<(), MachineError> {
        let (gone, kept): (Vec<Watch>, Vec<Watch>) = std::mem::take(&mut self.watches.list)
            .into_iter()
            .partition(|w| w.owner == owner);
        self.watches.list = kept;
        let mut pages = false;
        for w in &gone {
            match w.via {
                Via::Page => pages = true,
                Via::DebugReg { .. } => self.unapply_watch(w)?,
            }
        }
        if pages {
            self.apply_watches()?;
        }
        Ok(())
    }

    /// Gives back what removed watch `w` held.
    fn unapply_watch(&mut self, w: &Watch) -> Result<(), MachineError> {
        match w.via {
            Via::Page => self.apply_watches(),
            Via::DebugReg { .. } => {
                self.watches.shadows.remove(&w.id);
                if self.debug_regs.free_data(w.id) {
                    self.apply_debug_regs()?;
                }
                Ok(())
            }
        }
    }

    /// The watches.
    pub fn watches(&self) -> &Watches {
        &self.watches
    }

    /// The KVM memory slots over guest RAM (one per region unless pages are
    /// carved out for watches).
    pub fn memory_slots(&self) -> &[crate::vm::slots::Piece] {
        self.vm.slots.pieces()
    }

    /// Carves the watched pages out of their slots (and puts back the rest).
    fn apply_watches(&mut self) -> Result<(), MachineError> {
        let carved = self.watches.carved();
        self.vm
            .slots
            .set_carved(&self.vm.fd, &self.vm.mem, carved)
            .map_err(|e| MachineError::from(WatchError::from(e)))
    }

    /// The stop for a pending hit whose instruction has completed.
    pub(crate) fn take_watch_stop(&mut self) -> Option<StopReason> {
        self.watches
            .pending
            .take()
            .map(|hit| StopReason::Watch { hit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watches(list: &[(u64, u64, WatchKind)]) -> Watches {
        let mut w = Watches::default();
        for (i, &(gpa, len, kind)) in list.iter().enumerate() {
            w.list.push(Watch {
                id: i as u64 + 1,
                owner: Owner::Gdb,
                gpa,
                len,
                kind,
                via: Via::Page,
            });
        }
        w
    }

    #[test]
    fn pages_are_read_only_for_writes_and_absent_for_reads() {
        let w = watches(&[
            (0x3ffc, 8, WatchKind::Write),
            (0x5008, 4, WatchKind::Read),
            (0x5010, 4, WatchKind::Write),
        ]);
        let c = w.carved();
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            vec![
                (0x3000, PageMode::ReadOnly),
                (0x4000, PageMode::ReadOnly),
                (0x5000, PageMode::Absent)
            ]
        );
    }

    #[test]
    fn debug_register_watches_carve_nothing_and_hit_no_access() {
        let mut w = watches(&[(0x3000, 8, WatchKind::Access)]);
        w.list[0].via = Via::DebugReg { linear: 0x3000 };
        assert!(w.carved().is_empty());
        assert!(w.hit(0x3000, 8, true).is_none());
    }

    #[test]
    fn accesses_hit_overlapping_watches_of_their_direction() {
        let w = watches(&[
            (0x1000, 4, WatchKind::Write),
            (0x2000, 8, WatchKind::Access),
        ]);
        assert_eq!(w.hit(0x1002, 1, true).map(|w| w.id), Some(1));
        assert!(w.hit(0x1002, 1, false).is_none());
        assert!(w.hit(0x1004, 4, true).is_none());
        assert_eq!(w.hit(0x0ffc, 8, true).map(|w| w.id), Some(1));
        assert_eq!(w.hit(0x2004, 8, false).map(|w| w.id), Some(2));
    }

    #[test]
    fn carved_accesses_go_to_ram_and_report_hits() {
        let mem = crate::vm::memory::create(4 << 20).unwrap();
        let mut w = watches(&[(0x3004, 4, WatchKind::Write)]);
        let mut data = [1u8, 2, 3, 4];
        // Not carved: a device access.
        let none = Slots::default();
        assert_eq!(
            w.complete_access(&none, &mem, 0x3004, &mut data, true),
            None
        );
        let slots = Slots::with_carved([(0x3000, PageMode::ReadOnly)].into());
        // A write beside the watch lands in RAM and hits nothing.
        assert_eq!(
            w.complete_access(&slots, &mem, 0x3000, &mut data, true),
            Some(false)
        );
        assert!(w.pending.is_none());
        let mut back = [0u8; 4];
        assert!(memory::read_phys(&mem, 0x3000, &mut back));
        assert_eq!(back, [1, 2, 3, 4]);
        // A write on it hits; a read does not (a write watch).
        assert_eq!(
            w.complete_access(&slots, &mem, 0x3006, &mut data[..2], true),
            Some(true)
        );
        let hit = w.pending.take().unwrap();
        assert_eq!(
            (hit.id, hit.gpa, hit.size, hit.value, hit.old),
            (1, 0x3006, 2, 0x0201, Some(0))
        );
        let mut read = [0u8; 4];
        assert_eq!(
            w.complete_access(&slots, &mem, 0x3004, &mut read, false),
            Some(false)
        );
        assert_eq!(read, [0, 0, 1, 2]);
    }
}
