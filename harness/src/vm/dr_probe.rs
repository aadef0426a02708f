//! Measures whether the debug registers' data breakpoints fire on this host,
//! for guest code at CPL0 and at CPL3.
//!
//! Some hosts (software-nested KVM) run guest kernel code in KVM's
//! instruction emulator, which does not check data breakpoints, while user
//! code runs natively and does. The probe builds a throw-away VM (2 MiB of
//! RAM, one vCPU, one identity-mapped user-accessible 2 MiB page), puts a
//! data breakpoint in DR0 through `KVM_SET_GUEST_DEBUG` and runs a store
//! (`mov [rdi], rax; out 0x80, al`) with a write breakpoint, the same store
//! with a read/write breakpoint, and a load (`mov rax, [rdi]; out 0x80, al`)
//! with a read/write breakpoint, once at CPL0 and once at CPL3 (CS and SS of
//! DPL 3 set directly; IOPL 3 lets the port access run there). A breakpoint
//! fires when the vCPU exits with `KVM_EXIT_DEBUG`, DR6.B0 set and RIP at the
//! `out` (a trap after the access); it stays silent when the vCPU reaches the
//! port instead. Six short runs: about a millisecond with the VM. The result
//! is measured once per process ([`cached`]).

use std::sync::OnceLock;

use kvm_bindings::{kvm_guest_debug, kvm_regs, kvm_segment, kvm_sregs};
use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_USE_HW_BP};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::cpuid::{self, CpuProfile};
use super::memory;
use super::regs;
use super::Vm;
use crate::layout::MIN_MEM_SIZE;

/// Where the probe's code goes (the store; the load at +[`LOAD_OFFSET`]).
const CODE_ADDR: u64 = 0x1000;
/// Offset of the load in the code page.
const LOAD_OFFSET: u64 = 0x10;
/// `mov [rdi], rax; out 0x80, al`.
const STORE_CODE: [u8; 5] = [0x48, 0x89, 0x07, 0xe6, 0x80];
/// `mov rax, [rdi]; out 0x80, al`.
const LOAD_CODE: [u8; 5] = [0x48, 0x8b, 0x07, 0xe6, 0x80];
/// Length of the data access instruction (the `out` follows it).
const ACCESS_LEN: u64 = 3;
/// The page tables: PML4, PDPT, PD.
const TABLES_ADDR: u64 = 0x2000;
/// The GDT (the probe loads segments from the register state only).
const GDT_ADDR: u64 = 0x5000;
/// The watched quadword.
const DATA_ADDR: u64 = 0x6008;
/// Where RSP points (nothing is pushed).
const STACK_TOP: u64 = 0x8000;
/// RFLAGS: IOPL 3, bit 1.
const RFLAGS: u64 = 0x3002;
/// DR7: L0, and DR0's R/W and LEN fields (LEN 10 = 8 bytes).
const DR7_L0: u64 = 1;
const DR7_RW0_WRITE: u64 = 0b01 << 16;
const DR7_RW0_ACCESS: u64 = 0b11 << 16;
const DR7_LEN0_8: u64 = 0b10 << 18;
/// DR6.B0.
const DR6_B0: u64 = 1;

/// Errors of setting up the probe (they end up in [`Outcome::Failed`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum DrProbeError {
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] super::VmError),
    /// A KVM call failed.
    #[error("KVM refused to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// The probe's pages could not be written.
    #[error("cannot write the probe page {0:#x}")]
    Scratch(u64),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> DrProbeError {
    move |source| DrProbeError::Kvm { what, source }
}

/// What one data breakpoint did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A debug exit after the access, with DR6 naming the register.
    Fires,
    /// A debug exit, but DR6 did not name the register or RIP was not past
    /// the access: the values seen.
    Garbled {
        /// DR6 as KVM reported it.
        dr6: u64,
        /// RIP at the exit.
        pc: u64,
    },
    /// The code ran to its port access without a debug exit.
    Silent,
    /// Something else happened (an exit, or a KVM error).
    Failed(String),
}

impl Outcome {
    /// Whether the breakpoint fired as it should.
    pub fn fires(&self) -> bool {
        *self == Outcome::Fires
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Fires => write!(f, "fires"),
            Outcome::Garbled { dr6, pc } => write!(f, "garbled (dr6 {dr6:#x}, rip {pc:#x})"),
            Outcome::Silent => write!(f, "silent"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The data breakpoints at one privilege level.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LevelProbe {
    /// A write breakpoint (R/W = 01) on a store.
    pub write: Outcome,
    /// A read/write breakpoint (R/W = 11) on a store.
    pub access_store: Outcome,
    /// A read/write breakpoint on a load.
    pub access_load: Outcome,
}

impl LevelProbe {
    /// Whether every kind of data breakpoint fired.
    pub fn fires(&self) -> bool {
        self.write.fires() && self.access_store.fires() && self.access_load.fires()
    }

    fn failed(why: &str) -> Self {
        let f = Outcome::Failed(why.to_string());
        LevelProbe {
            write: f.clone(),
            access_store: f.clone(),
            access_load: f,
        }
    }

    /// One word for the summary: fires, silent, or mixed.
    pub fn verdict(&self) -> &'static str {
        let all = [&self.write, &self.access_store, &self.access_load];
        if all.iter().all(|o| o.fires()) {
            "fire"
        } else if all.iter().all(|o| **o == Outcome::Silent) {
            "do not fire"
        } else if all.iter().any(|o| matches!(o, Outcome::Failed(_))) {
            "could not be measured"
        } else {
            "fire only partly"
        }
    }
}

/// What the host does with data breakpoints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DrProbe {
    /// Guest code at CPL0 (kernel mode).
    pub cpl0: LevelProbe,
    /// Guest code at CPL3 (user mode).
    pub cpl3: LevelProbe,
}

impl std::fmt::Display for DrProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "data breakpoints {} at CPL0 and {} at CPL3",
            self.cpl0.verdict(),
            self.cpl3.verdict()
        )
    }
}

/// The probe's result for this process (measured at the first call).
pub fn cached() -> &'static DrProbe {
    static PROBE: OnceLock<DrProbe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Measures the host now, on a VM of its own.
pub fn probe() -> DrProbe {
    match setup() {
        Ok((vm, mut vcpu)) => {
            let cpl0 = level(&mut vcpu, 0);
            let cpl3 = level(&mut vcpu, 3);
            drop(vm);
            DrProbe { cpl0, cpl3 }
        }
        Err(e) => {
            let why = e.to_string();
            DrProbe {
                cpl0: LevelProbe::failed(&why),
                cpl3: LevelProbe::failed(&why),
            }
        }
    }
}

/// The throw-away VM: code, page tables and long mode.
pub(super) fn setup() -> Result<(Vm, VcpuFd), DrProbeError> {
    let vm = Vm::new(MIN_MEM_SIZE)?;
    let cpuid = cpuid::build(&vm.kvm, CpuProfile::Host).map_err(super::VmError::from)?;
    let vcpu = vm.create_vcpu(0, &cpuid)?;
    let pml4 = TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    // Present, writable, user; the PD entry maps 0-2 MiB as one large page.
    let user_rw = 0b111u64;
    let writes: [(u64, &[u8]); 6] = [
        (pml4, &(pdpt | user_rw).to_le_bytes()),
        (pdpt, &(pd | user_rw).to_le_bytes()),
        (pd, &(user_rw | 0x80).to_le_bytes()),
        (CODE_ADDR, &STORE_CODE),
        (CODE_ADDR + LOAD_OFFSET, &LOAD_CODE),
        (GDT_ADDR, &[0u8; 8]),
    ];
    for (addr, bytes) in writes {
        if !memory::write_phys(&vm.mem, addr, bytes) {
            return Err(DrProbeError::Scratch(addr));
        }
    }
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    regs::set_long_mode_64(&mut sregs, GDT_ADDR, pml4);
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    Ok((vm, vcpu))
}

pub(super) fn segment(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: selector | u16::from(dpl),
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// The three breakpoints with the vCPU at `cpl`.
fn level(vcpu: &mut VcpuFd, cpl: u8) -> LevelProbe {
    let run = |vcpu: &mut VcpuFd, rw: u64, code: u64| {
        trial(vcpu, cpl, rw, code).unwrap_or_else(|e| Outcome::Failed(e.to_string()))
    };
    LevelProbe {
        write: run(vcpu, DR7_RW0_WRITE, CODE_ADDR),
        access_store: run(vcpu, DR7_RW0_ACCESS, CODE_ADDR),
        access_load: run(vcpu, DR7_RW0_ACCESS, CODE_ADDR + LOAD_OFFSET),
    }
}

/// Runs the access at `code` at `cpl` with DR0 on the data, R/W = `rw`.
fn trial(vcpu: &mut VcpuFd, cpl: u8, rw: u64, code: u64) -> Result<Outcome, DrProbeError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    sregs.cs = segment(0x10, true, cpl);
    let data = segment(0x18, false, cpl);
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    let r = kvm_regs {
        rip: code,
        rdi: DATA_ADDR,
        rax: 0x1122_3344_5566_7788,
        rsp: STACK_TOP,
        rflags: RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&r).map_err(kvm("set registers"))?;
    let mut dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
        ..Default::default()
    };
    dbg.arch.debugreg[0] = DATA_ADDR;
    dbg.arch.debugreg[7] = DR7_L0 | rw | DR7_LEN0_8;
    vcpu.set_guest_debug(&dbg)
        .map_err(kvm("set the debug registers"))?;
    let outcome = match vcpu.run() {
        Ok(VcpuExit::Debug(arch)) => {
            if arch.dr6 & DR6_B0 != 0 && arch.pc == code + ACCESS_LEN {
                Outcome::Fires
            } else {
                Outcome::Garbled {
                    dr6: arch.dr6,
                    pc: arch.pc,
                }
            }
        }
        Ok(VcpuExit::IoOut(0x80, _)) => Outcome::Silent,
        Ok(other) => Outcome::Failed(format!("{other:?}")),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    vcpu.set_guest_debug(&kvm_guest_debug::default())
        .map_err(kvm("clear the debug registers"))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_name_the_mixture() {
        let l = |w: Outcome, s: Outcome, r: Outcome| LevelProbe {
            write: w,
            access_store: s,
            access_load: r,
        };
        use Outcome::*;
        assert_eq!(l(Fires, Fires, Fires).verdict(), "fire");
        assert!(l(Fires, Fires, Fires).fires());
        assert_eq!(l(Silent, Silent, Silent).verdict(), "do not fire");
        assert_eq!(l(Fires, Silent, Fires).verdict(), "fire only partly");
        assert!(!l(Fires, Silent, Fires).fires());
        assert_eq!(
            l(Fires, Failed("x".into()), Fires).verdict(),
            "could not be measured"
        );
    }
}
