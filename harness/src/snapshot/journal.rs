//! Incremental in-memory checkpoints (reverse execution's): one full copy of
//! RAM when the journal starts, then per checkpoint only the pages written
//! since the one before (KVM's dirty log OR'ed with the VMM's bitmap) and the
//! machine's state without memory.
//!
//! The journal knows which checkpoint the machine's RAM derives from (`at`):
//! RAM equals that checkpoint's memory except for pages dirtied since. So
//! restoring checkpoint `k`, checking the machine against it and taking the
//! next one all touch only the "suspect" pages: those dirty now, those some
//! checkpoint between `at` and `k` captured, and those of checkpoints dropped
//! since (`stale`): O(pages written), never O(RAM).

use std::collections::{BTreeSet, HashMap};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::{boxed, MachineState, SnapshotError};
use crate::layout::PAGE_SIZE;
use crate::machine::{Machine, MachineError};
use crate::vm::dirty::{self, DirtyBitmaps};

/// A page: region index in the high half, page index in the low one.
type PageKey = u64;

/// The versions of one page: (checkpoint sequence number, bytes), oldest
/// first.
type Versions = Vec<(u64, Box<[u8]>)>;

/// Bytes of a page (the layout's constant as a length).
const PAGE: usize = 4096;
const _: () = assert!(PAGE_SIZE == PAGE as u64);

/// What a checkpoint's state costs besides the serial output it holds.
const STATE_BYTES: u64 = 16 << 10;

fn key(region: usize, page: usize) -> PageKey {
    ((region as u64) << 32) | page as u64
}

fn unkey(k: PageKey) -> (usize, usize) {
    (
        usize::try_from(k >> 32).unwrap_or(usize::MAX),
        usize::try_from(k & 0xffff_ffff).unwrap_or(usize::MAX),
    )
}

/// The page bookkeeping of a journal, without the machine: which checkpoint
/// holds which version of which page.
#[derive(Default)]
pub struct Pages {
    /// RAM at the oldest checkpoint, per region.
    base: Vec<Vec<u8>>,
    /// Per checkpoint, oldest first: its sequence number and the pages it
    /// captured (the oldest captures none: it is `base`).
    marks: Vec<(u64, Vec<PageKey>)>,
    /// The versions of each captured page: (sequence number, bytes), oldest
    /// first.
    versions: HashMap<PageKey, Versions>,
    /// The checkpoint RAM derives from.
    at: usize,
    /// Pages of dropped checkpoints that RAM may still hold.
    stale: BTreeSet<PageKey>,
    next_seq: u64,
    /// Bytes held in page versions.
    bytes: u64,
}

impl Pages {
    /// Starts with `base` as the first checkpoint's memory.
    pub fn new(base: Vec<Vec<u8>>) -> Self {
        Pages {
            base,
            marks: vec![(0, Vec::new())],
            next_seq: 1,
            ..Pages::default()
        }
    }

    /// The number of checkpoints.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether there is none (never: a journal starts with one).
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Bytes held in page versions (not counting the base copy).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The checkpoint RAM derives from.
    pub fn at(&self) -> usize {
        self.at
    }

    /// Page `k`'s bytes as of checkpoint `index`.
    pub fn content(&self, index: usize, k: PageKey) -> Option<&[u8]> {
        let seq = self.marks.get(index)?.0;
        if let Some(v) = self.versions.get(&k) {
            if let Some((_, bytes)) = v.iter().rev().find(|(s, _)| *s <= seq) {
                return Some(bytes);
            }
        }
        let (region, page) = unkey(k);
        self.base.get(region)?.get(page * PAGE..(page + 1) * PAGE)
    }

    /// The pages RAM may hold differently from checkpoint `index`, given the
    /// pages `dirty` since RAM last matched checkpoint `at`.
    pub fn suspects(&self, index: usize, dirty: &DirtyBitmaps) -> BTreeSet<PageKey> {
        let mut out = self.stale.clone();
        for (region, bits) in dirty.iter().enumerate() {
            dirty::for_each_page(bits, |p| {
                out.insert(key(region, p));
            });
        }
        let (lo, hi) = (self.at.min(index), self.at.max(index));
        for (_, pages) in self.marks.iter().take(hi + 1).skip(lo + 1) {
            out.extend(pages.iter().copied());
        }
        out
    }

    /// Records a new checkpoint holding `pages` (each with its bytes now);
    /// RAM derives from it from now on. Returns its index.
    pub fn push(&mut self, pages: Vec<(PageKey, Box<[u8]>)>) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut keys = Vec::with_capacity(pages.len());
        for (k, bytes) in pages {
            self.bytes += bytes.len() as u64;
            self.versions.entry(k).or_default().push((seq, bytes));
            keys.push(k);
        }
        self.marks.push((seq, keys));
        self.stale.clear();
        self.at = self.marks.len() - 1;
        self.at
    }

    /// RAM now derives from checkpoint `index` (after a restore or a check).
    pub fn set_at(&mut self, index: usize) {
        self.at = index.min(self.marks.len().saturating_sub(1));
        self.stale.clear();
    }

    /// Drops the checkpoints after `index`; their pages become stale.
    pub fn truncate(&mut self, index: usize) {
        while self.marks.len() > index + 1 {
            let Some((seq, pages)) = self.marks.pop() else {
                break;
            };
            for k in pages {
                if let Some(v) = self.versions.get_mut(&k) {
                    if v.last().is_some_and(|(s, _)| *s == seq) {
                        if let Some((_, b)) = v.pop() {
                            self.bytes -= b.len() as u64;
                        }
                    }
                    if v.is_empty() {
                        self.versions.remove(&k);
                    }
                }
                self.stale.insert(k);
            }
        }
        self.at = self.at.min(index);
    }

    /// Drops the oldest checkpoint, folding the second one's pages into the
    /// base copy. Refused (false) with fewer than two, or while RAM derives
    /// from the oldest.
    pub fn drop_oldest(&mut self) -> bool {
        if self.marks.len() < 2 || self.at == 0 {
            return false;
        }
        let (seq, pages) = std::mem::take(&mut self.marks[1]);
        self.marks[1].0 = seq;
        for k in pages {
            let Some(v) = self.versions.get_mut(&k) else {
                continue;
            };
            if v.first().is_some_and(|(s, _)| *s == seq) {
                let (_, bytes) = v.remove(0);
                self.bytes -= bytes.len() as u64;
                let (region, page) = unkey(k);
                if let Some(dst) = self
                    .base
                    .get_mut(region)
                    .and_then(|r| r.get_mut(page * PAGE..(page + 1) * PAGE))
                {
                    dst.copy_from_slice(&bytes);
                }
            }
            if v.is_empty() {
                self.versions.remove(&k);
            }
        }
        self.marks.remove(0);
        self.at -= 1;
        true
    }
}

/// A journal: the pages and each checkpoint's state without memory.
pub struct Journal {
    /// The page bookkeeping.
    pub pages: Pages,
    /// Each checkpoint's state, parallel to the pages' marks.
    states: Vec<MachineState>,
    /// Serial output held by the states (they copy it).
    state_bytes: u64,
}

impl Journal {
    /// The number of checkpoints.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Memory the checkpoints hold besides the base copy of RAM (pages and
    /// an estimate of the states).
    pub fn bytes(&self) -> u64 {
        self.pages.bytes() + self.state_bytes
    }

    /// The state of checkpoint `index`.
    pub fn state(&self, index: usize) -> Option<&MachineState> {
        self.states.get(index)
    }

    /// Drops the checkpoints after `index`.
    pub fn truncate(&mut self, index: usize) {
        self.pages.truncate(index);
        while self.states.len() > index + 1 {
            if let Some(st) = self.states.pop() {
                self.state_bytes -= state_cost(&st);
            }
        }
    }

    /// Drops the oldest checkpoint (see [`Pages::drop_oldest`]).
    pub fn drop_oldest(&mut self) -> bool {
        if !self.pages.drop_oldest() {
            return false;
        }
        let st = self.states.remove(0);
        self.state_bytes -= state_cost(&st);
        true
    }
}

/// What a state is taken to cost: the serial output it copies (a JSON
/// number per byte, some 32 bytes each) and a fixed amount for the rest.
fn state_cost(st: &MachineState) -> u64 {
    let serial: u64 = st
        .pio
        .iter()
        .filter_map(|(_, _, d)| d.get("output"))
        .filter_map(|o| o.as_array().map(|a| a.len() as u64))
        .sum();
    serial * 32 + STATE_BYTES
}

impl Machine {
    /// The host mapping of each RAM region and its length.
    fn regions(&self) -> Result<Vec<(*mut u8, usize)>, SnapshotError> {
        self.vm
            .mem
            .iter()
            .map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).map_err(|e| {
                    SnapshotError::Mismatch(format!("cannot map guest memory: {e}"))
                })?;
                Ok((host, usize::try_from(r.len()).unwrap_or(0)))
            })
            .collect()
    }

    /// Page `k` of guest RAM as it is now.
    fn page_now(regions: &[(*mut u8, usize)], k: PageKey) -> Option<&[u8]> {
        let (region, page) = unkey(k);
        let &(host, len) = regions.get(region)?;
        let off = page.checked_mul(PAGE)?;
        if off.checked_add(PAGE)? > len {
            return None;
        }
        // SAFETY: `host` maps the region's `len` bytes for the life of
        // `self.vm.mem` (which outlives the borrow the caller holds through
        // `&mut self`); `off + PAGE <= len` was just checked; the vCPU is not
        // running (`&mut self` excludes the run loop), so nothing writes the
        // page while it is read.
        Some(unsafe { std::slice::from_raw_parts(host.add(off).cast_const(), PAGE) })
    }

    /// Starts a journal at the machine's state now (a full copy of RAM).
    pub fn journal_start(&mut self) -> Result<Journal, MachineError> {
        self.settle()?;
        self.lift_sw_breakpoints();
        let result = self.journal_start_inner();
        self.insert_sw_breakpoints();
        result
    }

    fn journal_start_inner(&mut self) -> Result<Journal, MachineError> {
        self.dirty_carry = None;
        self.collect_dirty().map_err(|e| boxed(e.into()))?;
        self.dirty_carry = Some(Vec::new());
        // Other snapshots' restores can no longer trust the dirty log alone.
        self.snapshot_base = None;
        let state = self.machine_state()?;
        let regions = self.regions().map_err(boxed)?;
        let mut base = Vec::new();
        for &(host, len) in &regions {
            // SAFETY: as in `page_now`, for the whole region.
            base.push(unsafe { std::slice::from_raw_parts(host.cast_const(), len) }.to_vec());
        }
        let state_bytes = state_cost(&state);
        Ok(Journal {
            pages: Pages::new(base),
            states: vec![state],
            state_bytes,
        })
    }

    /// The dirty pages since the last collection, with what the snapshots'
    /// collections saw in between.
    fn journal_dirty(&mut self) -> Result<DirtyBitmaps, MachineError> {
        self.collect_dirty().map_err(|e| boxed(e.into()))?;
        self.snapshot_base = None;
        Ok(self.dirty_carry.replace(Vec::new()).unwrap_or_default())
    }

    /// Takes a checkpoint (the next one of `j`, after the one RAM derives
    /// from; later ones must have been dropped): the pages that may have
    /// changed and the state. Returns its index.
    pub fn journal_checkpoint(&mut self, j: &mut Journal) -> Result<usize, MachineError> {
        self.settle()?;
        self.lift_sw_breakpoints();
        let result = self.journal_checkpoint_inner(j);
        self.insert_sw_breakpoints();
        result
    }

    fn journal_checkpoint_inner(&mut self, j: &mut Journal) -> Result<usize, MachineError> {
        // Checkpoints after the one RAM derives from are a past future.
        let at = j.pages.at();
        j.truncate(at);
        let dirty = self.journal_dirty()?;
        let suspects = j.pages.suspects(at, &dirty);
        let regions = self.regions().map_err(boxed)?;
        let pages: Vec<(PageKey, Box<[u8]>)> = suspects
            .into_iter()
            .filter_map(|k| Some((k, Box::from(Self::page_now(&regions, k)?))))
            .collect();
        let state = self.machine_state()?;
        j.state_bytes += state_cost(&state);
        j.states.push(state);
        Ok(j.pages.push(pages))
    }

    /// Restores checkpoint `index` of `j`; returns the pages copied.
    pub fn journal_restore(&mut self, j: &mut Journal, index: usize) -> Result<u64, MachineError> {
        self.settle()?;
        let Some(state) = j.states.get(index) else {
            return Err(boxed(SnapshotError::Mismatch(format!(
                "no checkpoint {index}"
            ))));
        };
        let dirty = self.journal_dirty()?;
        let suspects = j.pages.suspects(index, &dirty);
        let regions = self.regions().map_err(boxed)?;
        let mut copied = 0;
        for k in suspects {
            let Some(src) = j.pages.content(index, k) else {
                continue;
            };
            let (region, page) = unkey(k);
            let Some(&(host, len)) = regions.get(region) else {
                continue;
            };
            let off = page * PAGE;
            if off + PAGE <= len && src.len() == PAGE {
                // SAFETY: `host` maps the region's `len` bytes for the life of
                // `self.vm.mem`; `off + PAGE <= len` was just checked and
                // `src` has PAGE bytes; the two never overlap (one is guest
                // memory, the other a heap buffer); the vCPU is not running.
                // Written straight into the mapping, not through vm-memory,
                // whose write bitmap would count the copy as a VMM write.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host.add(off), PAGE) };
                copied += 1;
            }
        }
        self.restore_state(state).map_err(boxed)?;
        j.pages.set_at(index);
        self.reinsert_sw_breakpoints_after_restore();
        Ok(copied)
    }

    /// Compares the machine's RAM with checkpoint `index` of `j` (on the
    /// suspect pages only: exact, and O(pages written)); when equal, RAM
    /// derives from that checkpoint from now on. Returns the guest-physical
    /// address of the first page that differs, if one does.
    pub fn journal_check(
        &mut self,
        j: &mut Journal,
        index: usize,
    ) -> Result<Option<u64>, MachineError> {
        self.settle()?;
        self.lift_sw_breakpoints();
        let result = self.journal_check_inner(j, index);
        self.insert_sw_breakpoints();
        result
    }

    fn journal_check_inner(
        &mut self,
        j: &mut Journal,
        index: usize,
    ) -> Result<Option<u64>, MachineError> {
        let dirty = self.journal_dirty()?;
        let suspects = j.pages.suspects(index, &dirty);
        let regions = self.regions().map_err(boxed)?;
        for k in suspects {
            let now = Self::page_now(&regions, k);
            if now.is_some() && now != j.pages.content(index, k) {
                let (region, page) = unkey(k);
                let start = self
                    .vm
                    .mem
                    .iter()
                    .nth(region)
                    .map_or(0, |r| vm_memory::Address::raw_value(&r.start_addr()));
                // Stale from now on: RAM no longer derives from anything.
                j.pages.stale.extend(dirty_keys(&dirty));
                return Ok(Some(start + (page * PAGE) as u64));
            }
        }
        j.pages.set_at(index);
        Ok(None)
    }

    /// Stops keeping the dirty pages snapshots collect for a journal.
    pub fn journal_end(&mut self) {
        self.dirty_carry = None;
    }
}

fn dirty_keys(dirty: &DirtyBitmaps) -> Vec<PageKey> {
    let mut out = Vec::new();
    for (region, bits) in dirty.iter().enumerate() {
        dirty::for_each_page(bits, |p| out.push(key(region, p)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Box<[u8]> {
        vec![b; PAGE].into_boxed_slice()
    }

    fn no_dirty() -> DirtyBitmaps {
        vec![vec![0; 1]]
    }

    #[test]
    fn pages_keep_each_checkpoints_version() {
        let mut p = Pages::new(vec![vec![0u8; 4 * PAGE]]);
        assert_eq!(p.push(vec![(key(0, 1), page(1))]), 1);
        assert_eq!(p.push(vec![(key(0, 1), page(2)), (key(0, 2), page(3))]), 2);
        assert_eq!(p.content(0, key(0, 1)).map(|b| b[0]), Some(0));
        assert_eq!(p.content(1, key(0, 1)).map(|b| b[0]), Some(1));
        assert_eq!(p.content(2, key(0, 1)).map(|b| b[0]), Some(2));
        assert_eq!(p.content(1, key(0, 2)).map(|b| b[0]), Some(0));
        // From checkpoint 2 back to 0: both pages, and a dirty one.
        let mut dirty = no_dirty();
        dirty[0][0] |= 1 << 3;
        let s: Vec<_> = p.suspects(0, &dirty).into_iter().collect();
        assert_eq!(s, vec![key(0, 1), key(0, 2), key(0, 3)]);
        assert_eq!(p.bytes(), 3 * PAGE as u64);
    }

    #[test]
    fn truncating_leaves_the_dropped_pages_suspect() {
        let mut p = Pages::new(vec![vec![0u8; 4 * PAGE]]);
        p.push(vec![(key(0, 1), page(1))]);
        p.push(vec![(key(0, 2), page(2))]);
        p.truncate(1);
        assert_eq!(p.len(), 2);
        assert_eq!(p.at(), 1);
        let s: Vec<_> = p.suspects(1, &no_dirty()).into_iter().collect();
        assert_eq!(s, vec![key(0, 2)], "RAM may still hold checkpoint 2's page");
        assert_eq!(p.bytes(), PAGE as u64);
        p.set_at(1);
        assert!(p.suspects(1, &no_dirty()).is_empty());
    }

    #[test]
    fn dropping_the_oldest_folds_into_the_base() {
        let mut p = Pages::new(vec![vec![0u8; 4 * PAGE]]);
        p.push(vec![(key(0, 1), page(1))]);
        p.push(vec![(key(0, 1), page(2))]);
        assert!(p.drop_oldest());
        assert_eq!(p.len(), 2);
        assert_eq!(p.at(), 1);
        assert_eq!(p.content(0, key(0, 1)).map(|b| b[0]), Some(1));
        assert_eq!(p.content(1, key(0, 1)).map(|b| b[0]), Some(2));
        assert_eq!(p.bytes(), PAGE as u64);
        p.set_at(0);
        assert!(!p.drop_oldest(), "RAM derives from the oldest");
    }
}
