//! Guest RAM: vm-memory mmap regions with the VMM's own write bitmap (registered
//! with KVM by [`super::slots`], dirty logging on every slot).

use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, RefSlice, WithBitmapSlice};
use vm_memory::{Bytes, GuestAddress, GuestRegionMmap, MmapRegion};

use crate::layout;

/// Guest RAM as the rest of lunavm sees it. The bitmap records the VMM's own
/// writes (devices, scripts, loaders); KVM's dirty log records the guest's.
pub type GuestMem = vm_memory::GuestMemoryMmap<TrackedBitmap>;

/// vm-memory's page bitmap plus a flag saying whether anything was marked
/// since the last reset, so collecting the VMM's writes costs nothing when
/// there were none (the usual case between two snapshot restores) instead of
/// a pass over the whole bitmap.
#[derive(Debug, Default)]
pub struct TrackedBitmap {
    pages: AtomicBitmap,
    any: AtomicBool,
}

impl TrackedBitmap {
    /// The dirty bits as u64 words (bit i = page i), reset; `None` when no
    /// write was marked since the last call.
    pub fn take(&self) -> Option<Vec<u64>> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(self.pages.get_and_reset())
    }
}

impl<'a> WithBitmapSlice<'a> for TrackedBitmap {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for TrackedBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if len > 0 {
            self.any.store(true, Ordering::Release);
        }
        self.pages.mark_dirty(offset, len);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.pages.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for TrackedBitmap {
    fn with_len(len: usize) -> Self {
        TrackedBitmap {
            pages: AtomicBitmap::with_len(len),
            any: AtomicBool::new(false),
        }
    }
}

/// Errors of creating and registering guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is not usable.
    #[error(
        "Guest memory size {0:#x} is invalid: it must be a multiple of 4 KiB and at least 2 MiB"
    )]
    BadSize(u64),
    /// mmap of guest RAM failed.
    #[error("Cannot map {size:#x} bytes of guest memory")]
    Mmap {
        /// Size of the mapping.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory refused the regions.
    #[error("Cannot build the guest memory map")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// Allocates `mem_size` bytes of guest RAM laid out by [`layout::ram_ranges`].
pub fn create(mem_size: u64) -> Result<GuestMem, MemoryError> {
    if mem_size < layout::MIN_MEM_SIZE || mem_size % layout::PAGE_SIZE != 0 {
        return Err(MemoryError::BadSize(mem_size));
    }
    let mut regions = Vec::new();
    for (base, size) in layout::ram_ranges(mem_size) {
        let len = usize::try_from(size).map_err(|_| MemoryError::BadSize(mem_size))?;
        let mmap = MmapRegion::<TrackedBitmap>::new(len)
            .map_err(|source| MemoryError::Mmap { size, source })?;
        let region =
            GuestRegionMmap::new(mmap, GuestAddress(base)).ok_or(MemoryError::BadSize(mem_size))?;
        regions.push(region);
    }
    GuestMem::from_regions(regions).map_err(MemoryError::Regions)
}

/// Reads `buf.len()` bytes of guest-physical memory; `false` if any byte is not RAM.
pub fn read_phys(mem: &GuestMem, addr: u64, buf: &mut [u8]) -> bool {
    mem.read_slice(buf, GuestAddress(addr)).is_ok()
}

/// Writes `buf` to guest-physical memory; `false` if any byte is not RAM.
pub fn write_phys(mem: &GuestMem, addr: u64, buf: &[u8]) -> bool {
    mem.write_slice(buf, GuestAddress(addr)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_odd_sizes() {
        assert!(matches!(create(12345), Err(MemoryError::BadSize(_))));
        assert!(matches!(create(4096), Err(MemoryError::BadSize(_))));
    }

    #[test]
    fn reads_and_writes_within_ram_only() {
        let mem = create(4 << 20).unwrap();
        assert!(write_phys(&mem, 0x1000, b"abc"));
        let mut b = [0u8; 3];
        assert!(read_phys(&mem, 0x1000, &mut b));
        assert_eq!(&b, b"abc");
        assert!(!read_phys(&mem, (4 << 20) - 1, &mut b));
    }
}
