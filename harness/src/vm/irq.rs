//! Interrupt injection without an in-kernel irqchip: KVM_INTERRUPT, which
//! kvm-ioctls does not wrap.

use kvm_bindings::kvm_interrupt;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_interrupt;
    use vmm_sys_util::ioctl_iow_nr;

    /// KVMIO, the KVM ioctl type.
    const KVMIO: u32 = 0xAE;
    ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}

/// Queues external interrupt `vector` for delivery at the next entry. Valid
/// only when the last exit said `ready_for_interrupt_injection`.
pub fn inject(vcpu: &VcpuFd, vector: u8) -> std::io::Result<()> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` that lives across the call.
    let ret = unsafe { ioctl_with_ref(vcpu, ioctls::KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
