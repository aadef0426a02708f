//! Measures the CPUID a guest really sees by executing CPUID in it.
//!
//! Reading back what KVM_SET_CPUID2 was given proves nothing: on some hosts
//! (software-nested KVM) kernel-mode CPUID still returns the host's bits for
//! leaves 1, 7 and 0xD. Before the kernel is loaded, the vCPU runs `cpuid; out 0x80, al`
//! in real mode at CPL0 from a scratch page once per probed leaf.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::cpuid::{self, Feature, REPORTED_FEATURES};
use super::memory::{self, GuestMem};
use crate::layout::CPU_PROBE_ADDR;

/// `cpuid; out 0x80, al` — a port exit works with and without an in-kernel
/// irqchip (with one, HLT never reaches the VMM).
const PROBE_CODE: [u8; 4] = [0x0f, 0xa2, 0xe6, 0x80];

/// Errors of probing CPUID in the guest.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A KVM call failed.
    #[error("CPUID probe: KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The probe code did not reach its port exit.
    #[error("CPUID probe of leaf {leaf:#x} stopped with an unexpected exit: {exit}")]
    UnexpectedExit {
        /// The leaf being probed.
        leaf: u32,
        /// The exit seen.
        exit: String,
    },
    /// The scratch page is not RAM.
    #[error("CPUID probe: scratch page {0:#x} is not in guest RAM")]
    Scratch(u64),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ProbeError {
    move |source| ProbeError::Kvm { what, source }
}

/// The CPUID values the guest observed, per (leaf, subleaf).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EffectiveCpuid {
    /// `[eax, ebx, ecx, edx]` per probed (leaf, subleaf).
    pub leaves: BTreeMap<(u32, u32), [u32; 4]>,
}

impl EffectiveCpuid {
    /// The value of a probed leaf.
    pub fn get(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        self.leaves.get(&(leaf, subleaf)).copied()
    }

    /// Whether the guest sees `feat`.
    pub fn has(&self, feat: &Feature) -> bool {
        cpuid::feature_bit(|l, s| self.get(l, s), feat)
    }

    /// Whether the guest sees the feature named `name` (from the reported list).
    pub fn has_named(&self, name: &str) -> bool {
        REPORTED_FEATURES
            .iter()
            .any(|f| f.name == name && self.has(f))
    }
}

/// What the profile asked for against what the guest sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuidComparison {
    /// Features the profile hides that the guest can still see.
    pub still_visible: Vec<&'static str>,
    /// Features the profile offers that the guest cannot see.
    pub missing: Vec<&'static str>,
    /// Whether the guest can still see a hypervisor vendor leaf the profile removed.
    pub paravirt_leaf_visible: bool,
}

/// Compares the requested table with the probed values.
pub fn compare(requested: &CpuId, effective: &EffectiveCpuid) -> CpuidComparison {
    let mut out = CpuidComparison::default();
    for feat in REPORTED_FEATURES {
        let want = cpuid::feature_bit(|l, s| cpuid::lookup(requested, l, s), feat);
        let have = effective.has(feat);
        if !want && have {
            out.still_visible.push(feat.name);
        } else if want && !have {
            out.missing.push(feat.name);
        }
    }
    let want_pv = cpuid::lookup(requested, 0x4000_0000, 0).is_some();
    let have_pv = effective
        .get(0x4000_0000, 0)
        .is_some_and(|r| r[1] == u32::from_le_bytes(*b"KVMK"));
    out.paravirt_leaf_visible = !want_pv && have_pv;
    out
}

/// Executes CPUID in the guest for every leaf in [`cpuid::PROBED_LEAVES`].
///
/// Leaves the vCPU in real mode with clobbered registers; the loader sets the
/// full entry state afterwards. The scratch page is zeroed again.
pub fn probe(vcpu: &mut VcpuFd, mem: &GuestMem) -> Result<EffectiveCpuid, ProbeError> {
    if !memory::write_phys(mem, CPU_PROBE_ADDR, &PROBE_CODE) {
        return Err(ProbeError::Scratch(CPU_PROBE_ADDR));
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;

    let mut out = EffectiveCpuid::default();
    for &(leaf, subleaf) in cpuid::PROBED_LEAVES {
        let regs = kvm_regs {
            rax: u64::from(leaf),
            rcx: u64::from(subleaf),
            rip: CPU_PROBE_ADDR,
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(kvm("set registers"))?;
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x80, _)) => {}
            Ok(other) => {
                return Err(ProbeError::UnexpectedExit {
                    leaf,
                    exit: format!("{other:?}"),
                })
            }
            Err(e) => {
                return Err(ProbeError::UnexpectedExit {
                    leaf,
                    exit: e.to_string(),
                })
            }
        }
        let r = vcpu.get_regs().map_err(kvm("read registers"))?;
        let lo = |v: u64| (v & 0xffff_ffff) as u32;
        out.leaves.insert(
            (leaf, subleaf),
            [lo(r.rax), lo(r.rbx), lo(r.rcx), lo(r.rdx)],
        );
    }
    memory::write_phys(mem, CPU_PROBE_ADDR, &[0; PROBE_CODE.len()]);
    Ok(out)
}
