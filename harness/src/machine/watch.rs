//! Page watches: data watchpoints that work where the debug registers do not
//! fire (on this machine's KVM, not for guest code at CPL0).
//!
//! A watched page is carved out of its KVM memory slot ([`crate::vm::slots`]):
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
}

/// Errors of setting watches.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The range is empty or too long.
    #[error("A watch covers 1 to {MAX_WATCH_LEN} bytes, not {0}")]
    BadLength(u64),
    /// The slots could not be changed.
    #[error(transparent)]
    Slots(#[from] crate::vm::slots::SlotError),
}

/// The watches of a machine and the hit waiting for its instruction to
/// complete.
#[derive(Clone, Debug, Default)]
pub struct Watches {
    list: Vec<Watch>,
    next_id: u64,
    /// A hit whose instruction is completing (single-stepped).
    pub(crate) pending: Option<WatchHit>,
}

impl Watches {
    /// The watches, in the order they were set.
    pub fn list(&self) -> &[Watch] {
        &self.list
    }

    /// How each page must be carved for the watches.
    fn carved(&self) -> BTreeMap<u64, PageMode> {
        let mut out = BTreeMap::new();
        for w in &self.list {
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
        self.list
            .iter()
            .find(|w| w.kind.covers(write) && gpa < w.gpa + w.len && w.gpa < gpa + size)
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
        };
        // An instruction with several accesses keeps the first hit.
        self.pending.get_or_insert(hit);
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
        self.watches.next_id += 1;
        let id = self.watches.next_id;
        self.watches.list.push(Watch {
            id,
            owner,
            gpa,
            len,
            kind,
        });
        if let Err(e) = self.apply_watches() {
            self.watches.list.retain(|w| w.id != id);
            // Put the slots back as they were without it.
            let _ = self.apply_watches();
            return Err(e);
        }
        Ok(id)
    }

    /// Removes watch `id`; whether it existed.
    pub fn remove_watch(&mut self, id: u64) -> Result<bool, MachineError> {
        let before = self.watches.list.len();
        self.watches.list.retain(|w| w.id != id);
        if self.watches.list.len() == before {
            return Ok(false);
        }
        self.apply_watches()?;
        Ok(true)
    }

    /// Removes every watch `owner` set.
    pub fn remove_watches(&mut self, owner: Owner) -> Result<(), MachineError> {
        let before = self.watches.list.len();
        self.watches.list.retain(|w| w.owner != owner);
        if self.watches.list.len() != before {
            self.apply_watches()?;
        }
        Ok(())
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
            (hit.id, hit.gpa, hit.size, hit.value),
            (1, 0x3006, 2, 0x0201)
        );
        let mut read = [0u8; 4];
        assert_eq!(
            w.complete_access(&slots, &mem, 0x3004, &mut read, false),
            Some(false)
        );
        assert_eq!(read, [0, 0, 1, 2]);
    }
}
