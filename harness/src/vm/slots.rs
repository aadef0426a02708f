//! KVM memory slots over the RAM regions, with single pages carved out of
//! them: made read-only (the guest's writes there exit to the VMM as MMIO) or
//! absent (every guest access there exits as MMIO). Watchpoints are built on
//! this where the debug registers do not fire.
//!
//! Without carved pages each RAM region is one slot whose number is the
//! region's index, as [`super::memory`] registers them; carving splits a
//! region's slot into pieces, and removing the last carved page of a region
//! puts its single slot back exactly. Every piece keeps dirty logging on.
//! KVM forgets a slot's dirty log when the slot is deleted, so before a slot
//! goes its log is moved into the VMM's own write bitmap: snapshot restores
//! still see every page the guest wrote.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use super::memory::GuestMem;
use crate::layout::PAGE_SIZE;

/// How a carved page is mapped for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageMode {
    /// Mapped read-only: writes exit as MMIO.
    ReadOnly,
    /// Not mapped: reads, writes and fetches exit as MMIO.
    Absent,
}

/// Errors of changing the slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The page is not guest RAM.
    #[error("Physical address {0:#x} is not guest RAM")]
    NotRam(u64),
    /// KVM refused a slot change.
    #[error("KVM refused to {what} memory slot {slot} at {base:#x}")]
    Kvm {
        /// "create" or "delete".
        what: &'static str,
        /// The slot number.
        slot: u32,
        /// Its guest-physical base.
        base: u64,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM could not report the dirty log of a slot about to be replaced.
    #[error("KVM refused to report the dirty log of slot {0}")]
    DirtyLog(u32, #[source] kvm_ioctls::Error),
}

/// A part of a region mapped as one KVM slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The KVM slot number.
    pub slot: u32,
    /// The RAM region (index into the guest memory's regions).
    pub region: usize,
    /// First page, counted from the region's start.
    pub first_page: u64,
    /// Number of pages.
    pub pages: u64,
    /// Mapped read-only.
    pub readonly: bool,
}

/// The slot layout of a VM.
#[derive(Debug, Default)]
pub struct Slots {
    /// The slots now registered with KVM.
    active: Vec<Piece>,
    /// Carved pages by guest-physical page address.
    carved: BTreeMap<u64, PageMode>,
}

/// The desired pieces for `carved` (slot numbers not yet assigned).
fn layout(mem: &GuestMem, carved: &BTreeMap<u64, PageMode>) -> Vec<Piece> {
    let mut out = Vec::new();
    for (index, region) in mem.iter().enumerate() {
        let base = region.start_addr().0;
        let pages = region.len() / PAGE_SIZE;
        let mut next = 0;
        for (&page, &mode) in carved.range(base..base + region.len()) {
            let at = (page - base) / PAGE_SIZE;
            if at > next {
                out.push(piece(index, next, at - next, false));
            }
            if mode == PageMode::ReadOnly {
                out.push(piece(index, at, 1, true));
            }
            next = at + 1;
        }
        if next < pages {
            out.push(piece(index, next, pages - next, false));
        }
    }
    out
}

fn piece(region: usize, first_page: u64, pages: u64, readonly: bool) -> Piece {
    Piece {
        slot: 0,
        region,
        first_page,
        pages,
        readonly,
    }
}

/// Whether two pieces map the same pages the same way (slot numbers aside).
fn same(a: &Piece, b: &Piece) -> bool {
    a.region == b.region
        && a.first_page == b.first_page
        && a.pages == b.pages
        && a.readonly == b.readonly
}

impl Slots {
    /// Registers every RAM region as one dirty-logged slot (slot number =
    /// region index).
    pub fn register(vm: &VmFd, mem: &GuestMem) -> Result<Slots, SlotError> {
        let mut slots = Slots::default();
        let mut pieces = layout(mem, &slots.carved);
        for (i, p) in pieces.iter_mut().enumerate() {
            p.slot = u32::try_from(i).unwrap_or(u32::MAX);
            set_slot(vm, mem, p, false)?;
        }
        slots.active = pieces;
        Ok(slots)
    }

    /// The slots now registered with KVM.
    pub fn pieces(&self) -> &[Piece] {
        &self.active
    }

    /// How the page holding `gpa` is carved, if it is.
    pub fn mode(&self, gpa: u64) -> Option<PageMode> {
        if self.carved.is_empty() {
            return None;
        }
        self.carved.get(&(gpa & !(PAGE_SIZE - 1))).copied()
    }

    /// Slots with `carved` pages recorded but no KVM slot (for unit tests of
    /// the code that completes accesses).
    #[cfg(test)]
    pub(crate) fn with_carved(carved: BTreeMap<u64, PageMode>) -> Slots {
        Slots {
            active: Vec::new(),
            carved,
        }
    }

    /// Whether any page is carved.
    pub fn any_carved(&self) -> bool {
        !self.carved.is_empty()
    }

    /// Sets the carved pages to `carved` (page address to mode) and changes
    /// only the KVM slots that differ.
    pub fn set_carved(
        &mut self,
        vm: &VmFd,
        mem: &GuestMem,
        carved: BTreeMap<u64, PageMode>,
    ) -> Result<(), SlotError> {
        for &page in carved.keys() {
            if mem.find_region(vm_memory::GuestAddress(page)).is_none() {
                return Err(SlotError::NotRam(page));
            }
        }
        if carved == self.carved {
            return Ok(());
        }
        let mut wanted = layout(mem, &carved);
        // Slots that stay as they are keep their numbers.
        let (keep, gone): (Vec<Piece>, Vec<Piece>) = self
            .active
            .iter()
            .partition(|a| wanted.iter().any(|w| same(a, w)));
        for p in &gone {
            harvest_dirty_log(vm, mem, p)?;
            set_slot(vm, mem, p, true)?;
        }
        self.active = keep;
        let regions = u32::try_from(mem.num_regions()).unwrap_or(u32::MAX);
        for w in &mut wanted {
            if let Some(k) = self.active.iter().find(|a| same(a, w)) {
                w.slot = k.slot;
                continue;
            }
            let used = |s: u32| self.active.iter().any(|a| a.slot == s);
            let region_slot = u32::try_from(w.region).unwrap_or(u32::MAX);
            w.slot = if w.first_page == 0 && !used(region_slot) {
                region_slot
            } else {
                (regions..).find(|s| !used(*s)).unwrap_or(u32::MAX)
            };
            set_slot(vm, mem, w, false)?;
            self.active.push(*w);
        }
        self.active = wanted;
        self.carved = carved;
        Ok(())
    }
}

/// Creates (or with `delete`, removes) the KVM slot of `p`.
fn set_slot(vm: &VmFd, mem: &GuestMem, p: &Piece, delete: bool) -> Result<(), SlotError> {
    let region = mem
        .iter()
        .nth(p.region)
        .ok_or(SlotError::NotRam(p.first_page * PAGE_SIZE))?;
    let offset = p.first_page * PAGE_SIZE;
    let base = region.start_addr().0 + offset;
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|_| SlotError::NotRam(base))?;
    let mut flags = KVM_MEM_LOG_DIRTY_PAGES;
    if p.readonly {
        flags |= KVM_MEM_READONLY;
    }
    let desc = kvm_userspace_memory_region {
        slot: p.slot,
        flags,
        guest_phys_addr: base,
        memory_size: if delete { 0 } else { p.pages * PAGE_SIZE },
        userspace_addr: host as u64,
    };
    // SAFETY: `host` points `offset` bytes into a live anonymous mapping owned
    // by `mem` (which outlives the VM), and the piece lies inside the region,
    // so the `memory_size` bytes from there are mapped; pieces never overlap
    // one another or other slots because they partition the regions, whose
    // ranges do not overlap. A deletion (size 0) maps nothing.
    unsafe { vm.set_user_memory_region(desc) }.map_err(|source| SlotError::Kvm {
        what: if delete { "delete" } else { "create" },
        slot: p.slot,
        base,
        source,
    })
}

/// Moves the dirty log of `p`'s slot into the region's VMM write bitmap.
fn harvest_dirty_log(vm: &VmFd, mem: &GuestMem, p: &Piece) -> Result<(), SlotError> {
    let Some(region) = mem.iter().nth(p.region) else {
        return Ok(());
    };
    let bytes = usize::try_from(p.pages * PAGE_SIZE).unwrap_or(usize::MAX);
    let log = vm
        .get_dirty_log(p.slot, bytes)
        .map_err(|e| SlotError::DirtyLog(p.slot, e))?;
    let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
    let first = usize::try_from(p.first_page).unwrap_or(usize::MAX);
    super::dirty::for_each_page(&log, |i| {
        region
            .get_mmap()
            .bitmap()
            .mark_dirty((first + i) * page, page);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carving_splits_a_region_and_absent_pages_get_no_slot() {
        let mem = super::super::memory::create(4 << 20).unwrap();
        let mut carved = BTreeMap::new();
        assert_eq!(layout(&mem, &carved).len(), 1);
        carved.insert(0x3000, PageMode::ReadOnly);
        carved.insert(0x5000, PageMode::Absent);
        carved.insert(0x6000, PageMode::ReadOnly);
        let l = layout(&mem, &carved);
        let shape: Vec<(u64, u64, bool)> = l
            .iter()
            .map(|p| (p.first_page, p.pages, p.readonly))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 3, false),
                (3, 1, true),
                (4, 1, false),
                (6, 1, true),
                (7, 1024 - 7, false)
            ]
        );
        carved.clear();
        carved.insert(0, PageMode::Absent);
        let l = layout(&mem, &carved);
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].first_page, l[0].pages), (1, 1023));
    }
}
