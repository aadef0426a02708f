//! Dirty-page tracking: KVM's dirty log (the guest's writes) OR'ed with
//! vm-memory's bitmap (the VMM's own writes: devices, scripts, loaders).
//!
//! With `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`, `KVM_GET_DIRTY_LOG` only reads the
//! log and `KVM_CLEAR_DIRTY_LOG` re-arms exactly the pages that were reported,
//! which keeps the cost proportional to the dirty pages. Without the capability
//! KVM's `GET_DIRTY_LOG` clears and re-protects the whole slot itself (the
//! fallback, slower on large guests).

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_enable_cap, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::memory::GuestMem;
use super::slots::Piece;
use crate::layout::PAGE_SIZE;

/// The ioctl kvm-ioctls does not wrap.
mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_clear_dirty_log;
    use vmm_sys_util::ioctl_iowr_nr;

    /// KVMIO, the KVM ioctl type.
    const KVMIO: u32 = 0xAE;
    ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
}
use ioctls::KVM_CLEAR_DIRTY_LOG;

/// Errors of dirty tracking.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// KVM_GET_DIRTY_LOG failed.
    #[error("KVM refused to report the dirty log of slot {0}")]
    Get(u32, #[source] kvm_ioctls::Error),
    /// KVM_CLEAR_DIRTY_LOG failed.
    #[error("KVM refused to clear the dirty log of slot {0}")]
    Clear(u32, #[source] std::io::Error),
}

/// The dirty pages of every RAM region: one bitmap (u64 words) per region, in
/// region order, bit i = page i of the region.
pub type DirtyBitmaps = Vec<Vec<u64>>;

/// How dirty pages are tracked on this VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DirtyTracker {
    /// Whether KVM's manual dirty-log protection is on.
    pub manual_protect: bool,
}

impl DirtyTracker {
    /// Turns on manual dirty-log protection when KVM has it. Call before the
    /// memory slots are registered.
    pub fn enable(vm: &VmFd) -> Self {
        let supported =
            vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) > 0;
        let manual_protect = supported && {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                ..Default::default()
            };
            cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
            vm.enable_cap(&cap).is_ok()
        };
        DirtyTracker { manual_protect }
    }

    /// The pages written since the last call (guest and VMM), and re-arms
    /// tracking for them. `slots` are the KVM slots over the regions (one per
    /// region unless pages are carved out for watchpoints).
    pub fn collect(
        &self,
        vm: &VmFd,
        mem: &GuestMem,
        slots: &[Piece],
    ) -> Result<DirtyBitmaps, DirtyError> {
        let mut out = Vec::new();
        for (index, region) in mem.iter().enumerate() {
            let pages = usize::try_from(region.len() / PAGE_SIZE).unwrap_or(usize::MAX);
            let mut bitmap = vec![0u64; pages.div_ceil(64)];
            for p in slots.iter().filter(|p| p.region == index) {
                let log = self.slot_log(vm, p)?;
                if p.first_page == 0 && log.len() == bitmap.len() {
                    for (b, l) in bitmap.iter_mut().zip(&log) {
                        *b |= l;
                    }
                } else {
                    let first = usize::try_from(p.first_page).unwrap_or(usize::MAX);
                    for_each_page(&log, |i| {
                        let page = first + i;
                        if let Some(w) = bitmap.get_mut(page / 64) {
                            *w |= 1 << (page % 64);
                        }
                    });
                }
            }
            if let Some(vmm) = region.get_mmap().bitmap().take() {
                for (k, v) in bitmap.iter_mut().zip(vmm) {
                    *k |= v;
                }
            }
            out.push(bitmap);
        }
        Ok(out)
    }

    /// The dirty log of one slot, re-armed.
    fn slot_log(&self, vm: &VmFd, p: &Piece) -> Result<Vec<u64>, DirtyError> {
        let slot = p.slot;
        let len = usize::try_from(p.pages * PAGE_SIZE).unwrap_or(usize::MAX);
        let mut kvm = vm
            .get_dirty_log(slot, len)
            .map_err(|e| DirtyError::Get(slot, e))?;
        if self.manual_protect && kvm.iter().any(|w| *w != 0) {
            let clear = kvm_clear_dirty_log {
                slot,
                num_pages: u32::try_from(p.pages).unwrap_or(u32::MAX),
                first_page: 0,
                __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                    dirty_bitmap: kvm.as_mut_ptr().cast(),
                },
            };
            // SAFETY: `clear` points to a bitmap of `num_pages` bits that lives
            // until the call returns; KVM only reads it.
            let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
            if ret != 0 {
                return Err(DirtyError::Clear(slot, std::io::Error::last_os_error()));
            }
        }
        Ok(kvm)
    }
}

/// Number of set bits.
pub fn count(bitmaps: &DirtyBitmaps) -> u64 {
    bitmaps
        .iter()
        .flatten()
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

/// Calls `f(page_index)` for each set bit of one region's bitmap.
pub fn for_each_page(bitmap: &[u64], mut f: impl FnMut(usize)) {
    for (wi, &word) in bitmap.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            let bit = w.trailing_zeros() as usize;
            f(wi * 64 + bit);
            w &= w - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterates_set_bits_in_order() {
        let mut seen = Vec::new();
        for_each_page(&[0b1010, 1 << 63], |p| seen.push(p));
        assert_eq!(seen, vec![1, 3, 127]);
        assert_eq!(count(&vec![vec![0b1010, 1 << 63]]), 3);
    }
}
