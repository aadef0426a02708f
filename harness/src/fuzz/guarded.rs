//! Guest memory with guard pages on both sides: a device model that reads or
//! writes past the end (or before the start) of guest memory through a raw
//! pointer faults at once instead of corrupting the VMM, so the fuzzer sees
//! it as a crash. vm-memory's bounds checks stop ordinary accesses before.

use std::cell::RefCell;

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::vm::memory::{GuestMem, TrackedBitmap};

/// Size of the guard on each side.
const GUARD: usize = 64 << 10;

/// Errors of mapping guarded memory.
#[derive(Debug, thiserror::Error)]
pub enum GuardedError {
    /// mmap failed.
    #[error("Cannot map {0} bytes of guarded fuzzing memory")]
    Mmap(usize, #[source] std::io::Error),
    /// vm-memory refused the mapping.
    #[error("vm-memory refused the guarded mapping: {0}")]
    Region(String),
}

fn map(size: usize) -> Result<GuestMem, GuardedError> {
    let total = size + 2 * GUARD;
    // SAFETY: an anonymous private mapping with no fixed address: it aliases
    // nothing, and the result is checked before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(GuardedError::Mmap(total, std::io::Error::last_os_error()));
    }
    // SAFETY: `base + GUARD` lies inside the mapping made above, and `size`
    // bytes from there end GUARD bytes before its end.
    let inner = unsafe { base.cast::<u8>().add(GUARD) };
    // SAFETY: `inner` is page-aligned and `size` bytes of it belong to the
    // mapping above, which nothing else uses.
    let rc = unsafe { libc::mprotect(inner.cast(), size, libc::PROT_READ | libc::PROT_WRITE) };
    if rc != 0 {
        return Err(GuardedError::Mmap(size, std::io::Error::last_os_error()));
    }
    // SAFETY: `inner..inner + size` is mapped read-write and stays mapped for
    // the life of the process (the mapping is never unmapped), so the region
    // never outlives it; the flags describe how it was mapped.
    let region = unsafe {
        MmapRegion::<TrackedBitmap>::build_raw(
            inner,
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
    }
    .map_err(|e| GuardedError::Region(e.to_string()))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| GuardedError::Region("the region overflows".into()))?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|e| GuardedError::Region(e.to_string()))
}

thread_local! {
    static MEMORY: RefCell<Option<(usize, GuestMem)>> = const { RefCell::new(None) };
}

/// This thread's guarded memory of `size` bytes (a multiple of the page
/// size), zeroed. It is mapped once per thread and size and reused: fuzzing
/// runs millions of iterations.
pub fn zeroed(size: usize) -> Result<GuestMem, GuardedError> {
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        let mem = match m.as_ref() {
            Some((s, mem)) if *s == size => mem.clone(),
            _ => {
                let mem = map(size)?;
                *m = Some((size, mem.clone()));
                mem
            }
        };
        use vm_memory::Bytes;
        let zeros = vec![0u8; size];
        mem.write_slice(&zeros, GuestAddress(0))
            .map_err(|e| GuardedError::Region(e.to_string()))?;
        Ok(mem)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn memory_is_zeroed_and_bounded() {
        let m = zeroed(1 << 16).unwrap();
        m.write_obj(0x55u8, GuestAddress(10)).unwrap();
        let m = zeroed(1 << 16).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(10)).unwrap(), 0);
        assert!(m.write_obj(1u8, GuestAddress(1 << 16)).is_err());
        assert_eq!(m.last_addr(), GuestAddress((1 << 16) - 1));
    }
}
