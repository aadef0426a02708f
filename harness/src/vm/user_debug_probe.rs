//! Measures whether a software breakpoint (`int3`) and a single step in guest
//! user mode (CPL3) exit to the VMM on this host.
//!
//! Some hosts (software-nested KVM) run user code natively and deliver its
//! #BP and its single-step #DB through the guest's IDT even when
//! `KVM_SET_GUEST_DEBUG` asks for `KVM_GUESTDBG_USE_SW_BP` or
//! `KVM_GUESTDBG_SINGLESTEP`. The probe reuses the debug-register probe's
//! throw-away VM ([`super::dr_probe`]) with an empty IDT, runs
//! `int3; out 0x80, al` at CPL3 with software breakpoints on, then
//! `nop; out 0x80, al` at CPL3 single-stepping. Right: a debug exit (#BP at
//! the `int3`; a step ending at the `out`). Wrong: anything else (with the
//! empty IDT, a delivery through the guest's IDT ends in a shutdown). The
//! result is measured once per process ([`cached`]).

use std::sync::OnceLock;

use kvm_bindings::{kvm_guest_debug, kvm_regs};
use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_SW_BP};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::dr_probe::{self, DrProbeError};
use super::memory;

/// `int3; out 0x80, al`.
const INT3_CODE: [u8; 3] = [0xcc, 0xe6, 0x80];
/// `nop; out 0x80, al`.
const STEP_CODE: [u8; 3] = [0x90, 0xe6, 0x80];
/// Where they go (inside the probe VM's identity-mapped user page).
const INT3_ADDR: u64 = 0x1100;
const STEP_ADDR: u64 = 0x1110;
/// RFLAGS: IOPL 3, bit 1.
const RFLAGS: u64 = 0x3002;
/// Where RSP points.
const STACK_TOP: u64 = 0x8000;
/// #BP as KVM reports it.
const BP_VECTOR: u32 = 3;
/// #DB as KVM reports it.
const DB_VECTOR: u32 = 1;

/// What one trial did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A debug exit where it belongs.
    Exits,
    /// A debug exit with another vector or RIP: the values seen.
    Garbled {
        /// The exception KVM reported.
        exception: u32,
        /// RIP at the exit.
        pc: u64,
    },
    /// No debug exit: the exit seen instead (the guest got the exception).
    ToGuest(String),
    /// The trial could not run.
    Failed(String),
}

impl Outcome {
    /// Whether the exception reached the VMM.
    pub fn exits(&self) -> bool {
        *self == Outcome::Exits
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exits => write!(f, "exits to lunavm"),
            Outcome::Garbled { exception, pc } => {
                write!(f, "garbled (vector {exception}, rip {pc:#x})")
            }
            Outcome::ToGuest(exit) => write!(f, "goes to the guest ({exit})"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What the host does with CPL3 `int3` and single steps under guest debug.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserDebugProbe {
    /// An `int3` at CPL3 with `KVM_GUESTDBG_USE_SW_BP`.
    pub int3: Outcome,
    /// A single step at CPL3 with `KVM_GUESTDBG_SINGLESTEP`.
    pub step: Outcome,
}

impl UserDebugProbe {
    /// Whether user-mode software breakpoints need lunavm's IDT path.
    pub fn int3_needs_idt(&self) -> bool {
        !self.int3.exits()
    }

    /// Whether user-mode single steps need lunavm's IDT path.
    pub fn step_needs_idt(&self) -> bool {
        !self.step.exits()
    }
}

impl std::fmt::Display for UserDebugProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a CPL3 int3 {}; a CPL3 single step {}",
            self.int3, self.step
        )
    }
}

/// The probe's result for this process (measured at the first call).
pub fn cached() -> &'static UserDebugProbe {
    static PROBE: OnceLock<UserDebugProbe> = OnceLock::new();
    PROBE.get_or_init(probe)
}

/// Measures the host now, on a VM of its own.
pub fn probe() -> UserDebugProbe {
    let failed = |why: String| UserDebugProbe {
        int3: Outcome::Failed(why.clone()),
        step: Outcome::Failed(why),
    };
    let (vm, mut vcpu) = match dr_probe::setup() {
        Ok(v) => v,
        Err(e) => return failed(e.to_string()),
    };
    for (addr, code) in [(INT3_ADDR, INT3_CODE), (STEP_ADDR, STEP_CODE)] {
        if !memory::write_phys(&vm.mem, addr, &code) {
            return failed(format!("cannot write the probe code at {addr:#x}"));
        }
    }
    let run = |vcpu: &mut VcpuFd, addr, control, want| {
        trial(vcpu, addr, control, want).unwrap_or_else(|e| Outcome::Failed(e.to_string()))
    };
    let int3 = run(
        &mut vcpu,
        INT3_ADDR,
        KVM_GUESTDBG_USE_SW_BP,
        (BP_VECTOR, INT3_ADDR),
    );
    let step = run(
        &mut vcpu,
        STEP_ADDR,
        KVM_GUESTDBG_SINGLESTEP,
        (DB_VECTOR, STEP_ADDR + 1),
    );
    drop(vm);
    UserDebugProbe { int3, step }
}

/// Runs the code at `addr` at CPL3 with guest debug `control`; a debug exit
/// with vector and RIP `want` is right.
fn trial(
    vcpu: &mut VcpuFd,
    addr: u64,
    control: u32,
    want: (u32, u64),
) -> Result<Outcome, DrProbeError> {
    let kvm = |what| move |source| DrProbeError::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    sregs.cs = dr_probe::segment(0x10, true, 3);
    let data = dr_probe::segment(0x18, false, 3);
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    let r = kvm_regs {
        rip: addr,
        rsp: STACK_TOP,
        rflags: RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&r).map_err(kvm("set registers"))?;
    let dbg = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | control,
        ..Default::default()
    };
    vcpu.set_guest_debug(&dbg).map_err(kvm("set guest debug"))?;
    let outcome = match vcpu.run() {
        Ok(VcpuExit::Debug(arch)) if (arch.exception, arch.pc) == want => Outcome::Exits,
        Ok(VcpuExit::Debug(arch)) => Outcome::Garbled {
            exception: arch.exception,
            pc: arch.pc,
        },
        Ok(other) => Outcome::ToGuest(format!("{other:?}")),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    vcpu.set_guest_debug(&kvm_guest_debug::default())
        .map_err(kvm("clear guest debug"))?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exits_need_nothing() {
        let p = |int3, step| UserDebugProbe { int3, step };
        let ok = p(Outcome::Exits, Outcome::Exits);
        assert!(!ok.int3_needs_idt() && !ok.step_needs_idt());
        let bad = p(
            Outcome::ToGuest("Shutdown".into()),
            Outcome::Garbled {
                exception: 1,
                pc: 0,
            },
        );
        assert!(bad.int3_needs_idt() && bad.step_needs_idt());
        assert_eq!(
            bad.to_string(),
            "a CPL3 int3 goes to the guest (Shutdown); a CPL3 single step garbled (vector 1, rip 0x0)"
        );
    }
}
