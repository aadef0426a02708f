//! The KVM virtual machine: the VM and vCPU file descriptors, guest memory, the
//! CPU model and the page-table walker.

pub mod access;
pub mod cpu_probe;
pub mod cpuid;
pub mod dirty;
pub mod dr_probe;
pub mod irq;
pub mod memory;
pub mod paging;
pub mod regs;
pub mod slots;
pub mod syscall_probe;
pub mod user_debug_probe;

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use memory::GuestMem;

/// Where KVM puts the 3-page TSS it needs for real-mode emulation on Intel hosts
/// (inside the MMIO hole, below the IOAPIC, as Firecracker does).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors of creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm does not exist.
    #[error("Cannot open {0}: it does not exist — load the kvm module (modprobe kvm_intel or kvm_amd) or run on a host with hardware virtualization")]
    KvmMissing(String),
    /// /dev/kvm is not accessible.
    #[error("Cannot open {0}: permission denied — add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again")]
    KvmDenied(String),
    /// /dev/kvm could not be opened for another reason.
    #[error("Cannot open {0}")]
    KvmOpen(String, #[source] kvm_ioctls::Error),
    /// The device answered no KVM ioctl.
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed)")]
    NotKvm(String),
    /// The KVM API version is not the stable one.
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A KVM call needed to build the VM failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Guest memory could not be registered with KVM.
    #[error(transparent)]
    Slots(#[from] slots::SlotError),
    /// The CPU model could not be built.
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
}

impl VmError {
    /// Wraps a failed KVM call.
    pub fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
        move |source| VmError::Kvm { what, source }
    }
}

/// Environment variable that names another KVM device node (for tests of the
/// error path, or hosts with KVM elsewhere). Defaults to /dev/kvm.
pub const KVM_DEVICE_ENV: &str = "LUNAVM_KVM_DEVICE";

/// Opens /dev/kvm with an error that says how to fix the usual problems.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let path = std::env::var_os(KVM_DEVICE_ENV).unwrap_or_else(|| "/dev/kvm".into());
    let shown = path.to_string_lossy().into_owned();
    let c_path = std::ffi::CString::new(path.as_encoded_bytes().to_vec())
        .map_err(|_| VmError::KvmMissing(shown.clone()))?;
    let kvm = Kvm::new_with_path(&c_path).map_err(|e| match e.errno() {
        libc::ENOENT => VmError::KvmMissing(shown.clone()),
        libc::EACCES | libc::EPERM => VmError::KvmDenied(shown.clone()),
        _ => VmError::KvmOpen(shown.clone(), e),
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(VmError::NotKvm(shown));
    }
    if version != 12 {
        return Err(VmError::ApiVersion(version));
    }
    Ok(kvm)
}

/// A VM with its guest memory registered.
pub struct Vm {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
    /// Guest RAM (registered with KVM; the guest never runs once `Vm` is dropped).
    pub mem: GuestMem,
    /// Size of guest RAM in bytes.
    pub mem_size: u64,
    /// How dirty pages are tracked.
    pub dirty: dirty::DirtyTracker,
    /// The KVM memory slots over guest RAM.
    pub slots: slots::Slots,
    /// The VM file descriptor.
    pub fd: VmFd,
}

impl Vm {
    /// Creates a VM with `mem_size` bytes of RAM, every slot dirty-logged.
    pub fn new(mem_size: u64) -> Result<Vm, VmError> {
        let kvm = open_kvm()?;
        let fd = kvm.create_vm().map_err(VmError::kvm("create a VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::kvm("set the TSS address"))?;
        let dirty = dirty::DirtyTracker::enable(&fd);
        let mem = memory::create(mem_size)?;
        let slots = slots::Slots::register(&fd, &mem)?;
        Ok(Vm {
            kvm,
            mem,
            mem_size,
            dirty,
            slots,
            fd,
        })
    }

    /// Creates vCPU `id` with the CPUID table `cpuid`.
    pub fn create_vcpu(&self, id: u64, cpuid: &kvm_bindings::CpuId) -> Result<VcpuFd, VmError> {
        let vcpu = self
            .fd
            .create_vcpu(id)
            .map_err(VmError::kvm("create a vCPU"))?;
        vcpu.set_cpuid2(cpuid)
            .map_err(VmError::kvm("set the vCPU's CPUID"))?;
        Ok(vcpu)
    }
}
