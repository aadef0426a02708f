//! CPU profiles: the CPUID a guest is given, filtered from what KVM supports.
//!
//! `baseline` (the default) is a fixed, portable x86-64 feature set that hides
//! nondeterministic features (RDRAND/RDSEED, RDTSCP, KVM's paravirtual leaves and
//! kvmclock) and what software-nested KVM cannot emulate in kernel mode (CX16, the
//! XSAVE family, AVX and the SSE extensions beyond SSE3). `host` passes through
//! everything KVM supports.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// A named CPU profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuProfile {
    /// Portable, deterministic baseline (default).
    Baseline,
    /// Everything KVM supports on this host.
    Host,
}

impl CpuProfile {
    /// Every profile name, for help texts and errors.
    pub const NAMES: &'static [&'static str] = &["baseline", "host"];

    /// The profile's name.
    pub fn name(self) -> &'static str {
        match self {
            CpuProfile::Baseline => "baseline",
            CpuProfile::Host => "host",
        }
    }
}

impl std::str::FromStr for CpuProfile {
    type Err = CpuidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "baseline" => Ok(CpuProfile::Baseline),
            "host" => Ok(CpuProfile::Host),
            other => Err(CpuidError::UnknownProfile(other.to_string())),
        }
    }
}

/// Errors of building a CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The profile name is not known.
    #[error("Unknown CPU profile '{0}': use one of baseline, host")]
    UnknownProfile(String),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("Cannot read the CPUID KVM supports")]
    Supported(#[source] kvm_ioctls::Error),
    /// Rebuilding the table failed.
    #[error("Cannot build the CPUID table")]
    Build(#[source] vmm_sys_util::fam::Error),
}

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// A named feature bit, for reporting what a guest sees.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    /// Linux's name for it (as in /proc/cpuinfo and `clearcpuid=`).
    pub name: &'static str,
    /// CPUID leaf.
    pub leaf: u32,
    /// CPUID subleaf.
    pub subleaf: u32,
    /// Register.
    pub reg: Reg,
    /// Bit.
    pub bit: u32,
}

const fn f(name: &'static str, leaf: u32, subleaf: u32, reg: Reg, bit: u32) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Features the run summary reports on: everything `baseline` hides that a guest
/// could care about. Each is checked against the CPUID the guest really sees.
pub const REPORTED_FEATURES: &[Feature] = &[
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("pcid", 1, 0, Reg::Ecx, 17),
    f("sse4_1", 1, 0, Reg::Ecx, 19),
    f("sse4_2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("tsc_deadline_timer", 1, 0, Reg::Ecx, 24),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("adx", 7, 0, Reg::Ebx, 19),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("clflushopt", 7, 0, Reg::Ebx, 23),
    f("clwb", 7, 0, Reg::Ebx, 24),
    f("sha_ni", 7, 0, Reg::Ebx, 29),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("gfni", 7, 0, Reg::Ecx, 8),
    f("vaes", 7, 0, Reg::Ecx, 9),
    f("la57", 7, 0, Reg::Ecx, 16),
    f("rdpid", 7, 0, Reg::Ecx, 22),
    f("xsaveopt", 0xd, 1, Reg::Eax, 0),
    f("xsavec", 0xd, 1, Reg::Eax, 1),
    f("xsaves", 0xd, 1, Reg::Eax, 3),
    f("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    f("abm", 0x8000_0001, 0, Reg::Ecx, 5),
];

/// The leaves the CPU probe executes in the guest.
pub const PROBED_LEAVES: &[(u32, u32)] = &[
    (0, 0),
    (1, 0),
    (7, 0),
    (0xd, 0),
    (0xd, 1),
    (0x4000_0000, 0),
    (0x8000_0001, 0),
];

// Leaf 1 EDX: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat
// pse36 clflush mmx fxsr sse sse2.
const BASE_1_EDX: u32 = 0x078bfbff;
// Leaf 1 ECX: sse3 and the hypervisor bit.
const BASE_1_ECX: u32 = (1 << 0) | (1 << 31);
// Leaf 7.0 EBX: smep, erms.
const BASE_7_EBX: u32 = (1 << 7) | (1 << 9);
// Leaf 0x8000_0001 ECX: lahf_lm. EDX: syscall, nx, pdpe1gb, lm.
const BASE_EXT_ECX: u32 = 1 << 0;
const BASE_EXT_EDX: u32 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 29);

/// Builds the CPUID table for `profile` from what KVM supports.
pub fn build(kvm: &Kvm, profile: CpuProfile) -> Result<CpuId, CpuidError> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)?;
    match profile {
        CpuProfile::Host => Ok(supported),
        CpuProfile::Baseline => {
            let entries: Vec<kvm_cpuid_entry2> = supported
                .as_slice()
                .iter()
                .filter_map(|e| baseline_entry(*e))
                .collect();
            CpuId::from_entries(&entries).map_err(CpuidError::Build)
        }
    }
}

/// Filters one supported entry through the baseline profile; `None` drops it.
fn baseline_entry(mut e: kvm_cpuid_entry2) -> Option<kvm_cpuid_entry2> {
    match e.function {
        1 => {
            e.ecx &= BASE_1_ECX;
            e.edx &= BASE_1_EDX;
        }
        6 | 0xa | 0xd | 0x12 | 0x14 | 0x8000_0007 => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        7 => {
            if e.index == 0 {
                e.eax = 0;
                e.ebx &= BASE_7_EBX;
            } else {
                e.ebx = 0;
                e.eax = 0;
            }
            e.ecx = 0;
            e.edx = 0;
        }
        0x4000_0000..=0x4fff_ffff => return None,
        0x8000_0001 => {
            e.ecx &= BASE_EXT_ECX;
            e.edx &= BASE_EXT_EDX;
        }
        _ => {}
    }
    Some(e)
}

/// Reads one feature bit out of a table of `(leaf, subleaf) -> [eax, ebx, ecx, edx]`.
pub fn feature_bit(lookup: impl Fn(u32, u32) -> Option<[u32; 4]>, feat: &Feature) -> bool {
    let Some(regs) = lookup(feat.leaf, feat.subleaf) else {
        return false;
    };
    let v = match feat.reg {
        Reg::Eax => regs[0],
        Reg::Ebx => regs[1],
        Reg::Ecx => regs[2],
        Reg::Edx => regs[3],
    };
    v & (1 << feat.bit) != 0
}

/// Looks a leaf up in a KVM CPUID table.
pub fn lookup(cpuid: &CpuId, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == leaf && (e.index == subleaf || e.flags & 1 == 0))
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    #[test]
    fn baseline_hides_nondeterministic_and_unemulated_features() {
        let e = baseline_entry(entry(1, 0, [0x806f8, 0, u32::MAX, u32::MAX])).unwrap();
        let get = |l, s| (l == 1 && s == 0).then_some([e.eax, e.ebx, e.ecx, e.edx]);
        for name in ["rdrand", "xsave", "cx16", "avx", "popcnt", "aes"] {
            let feat = REPORTED_FEATURES.iter().find(|f| f.name == name).unwrap();
            assert!(!feature_bit(get, feat), "{name} must be hidden");
        }
        assert_eq!(e.ecx & 1, 1, "sse3 stays");
        assert_eq!(e.eax, 0x806f8, "signature untouched");
        let e7 = baseline_entry(entry(7, 0, [2, u32::MAX, u32::MAX, u32::MAX])).unwrap();
        assert_eq!(e7.ebx & (1 << 18), 0, "rdseed hidden");
        assert_eq!((e7.eax, e7.ecx, e7.edx), (0, 0, 0));
        assert!(
            baseline_entry(entry(0x4000_0001, 0, [u32::MAX; 4])).is_none(),
            "kvmclock leaf"
        );
        let ext = baseline_entry(entry(0x8000_0001, 0, [0, 0, u32::MAX, u32::MAX])).unwrap();
        assert_eq!(ext.edx & (1 << 27), 0, "rdtscp hidden");
        assert_ne!(ext.edx & (1 << 29), 0, "long mode stays");
    }

    #[test]
    fn profile_names_parse() {
        assert_eq!("host".parse::<CpuProfile>().unwrap(), CpuProfile::Host);
        assert!("skylake".parse::<CpuProfile>().is_err());
    }
}
