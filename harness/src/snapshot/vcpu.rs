//! vCPU state: saved and restored in Firecracker's documented order.

use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::SnapshotError;

/// Everything KVM keeps for one vCPU (no in-kernel LAPIC in lunavm's
/// deterministic platform).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {
    /// Run state (runnable, halted).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/extended state (the legacy 4 KiB XSAVE area).
    pub xsave: kvm_xsave,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers the guest set.
    pub debugregs: kvm_debugregs,
    /// MSRs from KVM's list that can be read.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs, the interrupt shadow.
    pub events: kvm_vcpu_events,
    /// The local APIC, with the in-kernel irqchip.
    #[serde(default)]
    pub lapic: Option<kvm_bindings::kvm_lapic_state>,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { what, source }
}

/// The MSRs of KVM's list that this vCPU lets userspace both read and write
/// back (KVM lists paravirtual MSRs the CPU profile may hide), found by trying
/// them in batches and dropping each one KVM stops at.
pub fn saveable_msrs(kvm_fd: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm_fd.get_msr_index_list().map_err(kvm("list the MSRs"))?;
    let mut readable: Vec<kvm_msr_entry> = Vec::new();
    let mut indices: Vec<u32> = list.as_slice().to_vec();
    while !indices.is_empty() {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::TooManyMsrs)?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("read MSRs"))?;
        readable.extend_from_slice(&msrs.as_slice()[..n]);
        // KVM stopped at indices[n]: it cannot be read; skip it.
        indices.drain(..(n + 1).min(indices.len()));
    }
    // Writing back the values just read changes nothing for the MSRs that take it.
    let mut good = Vec::with_capacity(readable.len());
    while !readable.is_empty() {
        let msrs = Msrs::from_entries(&readable).map_err(|_| SnapshotError::TooManyMsrs)?;
        let n = vcpu.set_msrs(&msrs).map_err(kvm("write MSRs"))?;
        good.extend(readable[..n].iter().map(|m| m.index));
        readable.drain(..(n + 1).min(readable.len()));
    }
    Ok(good)
}

/// Saves a vCPU: mp_state, regs, sregs, xsave, xcrs, debugregs, lapic (with
/// the in-kernel irqchip), msrs, then events last (Firecracker's order).
pub fn save(
    vcpu: &VcpuFd,
    msr_indices: &[u32],
    in_kernel_irqchip: bool,
) -> Result<VcpuState, SnapshotError> {
    let mp_state = vcpu.get_mp_state().map_err(kvm("read the MP state"))?;
    let regs = vcpu.get_regs().map_err(kvm("read registers"))?;
    let sregs = vcpu.get_sregs().map_err(kvm("read special registers"))?;
    let xsave = vcpu.get_xsave().map_err(kvm("read the XSAVE area"))?;
    let xcrs = vcpu.get_xcrs().map_err(kvm("read XCRs"))?;
    let debugregs = vcpu.get_debug_regs().map_err(kvm("read debug registers"))?;
    let lapic = if in_kernel_irqchip {
        Some(vcpu.get_lapic().map_err(kvm("read the local APIC"))?)
    } else {
        None
    };
    let entries: Vec<kvm_msr_entry> = msr_indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::TooManyMsrs)?;
    let n = vcpu.get_msrs(&mut msrs).map_err(kvm("read MSRs"))?;
    if n != entries.len() {
        return Err(SnapshotError::Msr(msr_indices.get(n).copied().unwrap_or(0)));
    }
    let events = vcpu.get_vcpu_events().map_err(kvm("read vCPU events"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        msrs: msrs.as_slice().to_vec(),
        events,
        lapic,
    })
}

/// Restores a vCPU in Firecracker's order: mp_state, regs, sregs, xsave, xcrs,
/// debugregs, msrs, events.
pub fn restore(vcpu: &VcpuFd, st: &VcpuState) -> Result<(), SnapshotError> {
    vcpu.set_mp_state(st.mp_state)
        .map_err(kvm("set the MP state"))?;
    vcpu.set_regs(&st.regs).map_err(kvm("set registers"))?;
    vcpu.set_sregs(&st.sregs)
        .map_err(kvm("set special registers"))?;
    // SAFETY: `st.xsave` is a whole `kvm_xsave` (the legacy 4 KiB area KVM_GET_XSAVE
    // filled), which is what KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave(&st.xsave) }.map_err(kvm("set the XSAVE area"))?;
    vcpu.set_xcrs(&st.xcrs).map_err(kvm("set XCRs"))?;
    vcpu.set_debug_regs(&st.debugregs)
        .map_err(kvm("set debug registers"))?;
    if let Some(lapic) = &st.lapic {
        vcpu.set_lapic(lapic).map_err(kvm("set the local APIC"))?;
    }
    let msrs = Msrs::from_entries(&st.msrs).map_err(|_| SnapshotError::TooManyMsrs)?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("set MSRs"))?;
    if n != st.msrs.len() {
        return Err(SnapshotError::Msr(st.msrs.get(n).map_or(0, |m| m.index)));
    }
    vcpu.set_vcpu_events(&st.events)
        .map_err(kvm("set vCPU events"))?;
    Ok(())
}
