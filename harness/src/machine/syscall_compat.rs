//! Finishing the SYSCALL transitions the host gets wrong.
//!
//! On software-nested KVM (measured by [`crate::vm::syscall_probe`] at
//! startup) SYSCALL from user mode sets RCX, R11, RFLAGS (masked by SFMASK)
//! and RIP = LSTAR, but leaves the vCPU at CPL3; the first fetch at LSTAR,
//! a supervisor page, then raises a page fault that the host delivers
//! through the guest's IDT. lunavm watches for exactly that fault:
//!
//! - An execution breakpoint (one debug register, owner
//!   [`Owner::SyscallCompat`]) sits on the guest's #PF handler, read from
//!   the IDT's vector-14 gate. The gate is looked up again when the guest
//!   writes LSTAR (an MSR filter makes that write exit to lunavm, which
//!   performs it), at each `run` call, at each interrupt lunavm injects, and
//!   at every exit while no handler is known, so the breakpoint follows the
//!   kernel's IDT changes. What it cannot see: a guest that moves its #PF
//!   handler after writing LSTAR and then reaches user mode and a SYSCALL
//!   with no exit and no interrupt in between (Linux sets its final IDT
//!   before LSTAR).
//! - At a hit, the exception frame on the stack is a SYSCALL that did not
//!   switch when: the error code says a user-mode instruction fetch, the
//!   saved CS has RPL 3, the saved RIP is LSTAR, EFER.SCE is set, and the
//!   two bytes before RCX (the return address) are `syscall` (0f 05).
//! - Then lunavm finishes the transition as the CPU would have: CS and SS
//!   from STAR[47:32] (flat, DPL 0), RIP = LSTAR, RSP = the user RSP from
//!   the frame, RFLAGS = the frame's RFLAGS without SFMASK's bits and RF;
//!   RCX and R11 are already right. The frame the host wrote below the TSS's
//!   RSP0 is left as dead stack. CR2 keeps LSTAR: the value it had before
//!   the fault is not recoverable (Linux reads CR2 only in its #PF entry).
//!   Counted as completion-table entry `syscall`; switched off with
//!   `--no-complete=syscall` or the mode `off`.
//! - Any other #PF goes on to the guest's handler after a single step over
//!   the breakpoint (two harness-caused exits, no virtual time).
//!
//! SYSRET from CPL0 works on that host (the probe checks it too), so it needs
//! nothing here. A user program that jumps to LSTAR itself right after a
//! `syscall` instruction's bytes would be taken for a SYSCALL on a host that
//! needs this path; nothing else would.

use kvm_bindings::{kvm_msr_entry, Msrs};

use super::debug::Owner;
use super::{Machine, MachineError};
use crate::clock::Charge;
use crate::emulate::Entry;
use crate::vm::access;
use crate::vm::regs::{paging_regs, RFLAGS_RF};
use crate::vm::syscall_probe::{self, SyscallProbe, MSR_LSTAR, MSR_SFMASK, MSR_STAR};

/// #PF error code: the access came from user mode.
const PF_USER: u64 = 1 << 2;
/// #PF error code: an instruction fetch.
const PF_FETCH: u64 = 1 << 4;
/// RFLAGS.VM.
const RFLAGS_VM: u64 = 1 << 17;
/// EFER.SCE.
const EFER_SCE: u64 = 1;
/// The `syscall` instruction.
const SYSCALL_BYTES: [u8; 2] = [0x0f, 0x05];

/// When the compatibility path is on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyscallCompatMode {
    /// When the startup probe found that the host needs it (the default).
    #[default]
    Auto,
    /// Always (costs a breakpoint exit per guest page fault).
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for SyscallCompatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SyscallCompatMode::Auto),
            "on" => Ok(SyscallCompatMode::On),
            "off" => Ok(SyscallCompatMode::Off),
            other => Err(format!(
                "unknown syscall compatibility mode '{other}': use auto, on or off"
            )),
        }
    }
}

/// The compatibility path's state and counters, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SyscallCompatReport {
    /// The requested mode.
    pub mode: SyscallCompatMode,
    /// What the startup probe measured.
    pub probe: SyscallProbe,
    /// Whether the path is on.
    pub active: bool,
    /// The guest #PF handler the breakpoint is on, if any.
    pub handler: Option<u64>,
    /// SYSCALLs finished (also in the completions as `syscall`).
    pub completed: u64,
    /// Other page faults that passed the breakpoint (harness-caused exits).
    pub page_faults: u64,
    /// Whether the path could not get a debug register (all four taken).
    pub starved: bool,
    /// Whether the guest's writes to LSTAR exit to lunavm (an MSR filter).
    pub lstar_trap: bool,
}

/// The path's state inside the machine.
#[derive(Clone, Debug)]
pub struct SyscallCompat {
    mode: SyscallCompatMode,
    probe: SyscallProbe,
    active: bool,
    handler: Option<u64>,
    page_faults: u64,
    starved: bool,
    lstar_trap: bool,
}

impl SyscallCompat {
    /// The path for `mode` on a host the probe measured; `disabled` when the
    /// completion entry is switched off.
    pub fn new(mode: SyscallCompatMode, probe: SyscallProbe, disabled: bool) -> Self {
        let active = !disabled
            && match mode {
                SyscallCompatMode::Auto => probe.syscall_needs_completion(),
                SyscallCompatMode::On => true,
                SyscallCompatMode::Off => false,
            };
        SyscallCompat {
            mode,
            probe,
            active,
            handler: None,
            page_faults: 0,
            starved: false,
            lstar_trap: false,
        }
    }

    /// Makes the guest's writes to LSTAR exit to the VMM (KVM's userspace MSR
    /// exits with a filter denying that one write), when the path is on.
    /// A KVM without them leaves the path to its other triggers.
    pub fn trap_lstar(&mut self, vm: &kvm_ioctls::VmFd) {
        if !self.active {
            return;
        }
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        let deny = [0u8];
        let range = kvm_ioctls::MsrFilterRange {
            flags: kvm_ioctls::MsrFilterRangeFlags::WRITE,
            base: MSR_LSTAR,
            msr_count: 1,
            bitmap: &deny,
        };
        self.lstar_trap = vm.enable_cap(&cap).is_ok()
            && vm
                .set_msr_filter(kvm_ioctls::MsrFilterDefaultAction::ALLOW, &[range])
                .is_ok();
    }

    /// Whether the path is on.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Whether it waits for the guest to install a #PF handler.
    pub(crate) fn unarmed(&self) -> bool {
        self.active && self.handler.is_none() && !self.starved
    }

    /// Whether `pc` is the breakpoint of this path.
    pub(crate) fn is_handler(&self, pc: u64) -> bool {
        self.active && self.handler == Some(pc)
    }
}

/// What a hit at the #PF handler was.
pub(crate) enum Hit {
    /// A SYSCALL, finished: the guest goes on at LSTAR.
    Completed,
    /// A page fault of the guest's own: step over the breakpoint.
    PageFault,
}

impl Machine {
    /// The compatibility path's state, for reports.
    pub fn syscall_compat(&self) -> SyscallCompatReport {
        let c = &self.syscall_compat;
        SyscallCompatReport {
            mode: c.mode,
            probe: c.probe.clone(),
            active: c.active,
            handler: c.handler,
            completed: self
                .completer
                .counts()
                .get(&Entry::Syscall)
                .copied()
                .unwrap_or(0),
            page_faults: c.page_faults,
            starved: c.starved,
            lstar_trap: c.lstar_trap,
        }
    }

    /// Puts the breakpoint on the #PF handler the guest's IDT names now.
    pub(crate) fn sync_syscall_compat(&mut self) -> Result<(), MachineError> {
        if !self.syscall_compat.active {
            return Ok(());
        }
        let target = self.pf_handler()?;
        let current = self.syscall_compat.handler;
        if target == current {
            return Ok(());
        }
        if let Some(old) = current {
            self.remove_breakpoint(old, Owner::SyscallCompat)?;
            self.syscall_compat.handler = None;
        }
        if let Some(new) = target {
            match self.add_breakpoint(new, Owner::SyscallCompat) {
                Ok(_) => {
                    self.syscall_compat.handler = Some(new);
                    self.syscall_compat.starved = false;
                }
                Err(MachineError::DebugRegs(_)) => self.syscall_compat.starved = true,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Performs the guest's write of `value` to LSTAR that the MSR filter
    /// sent here, then looks at the IDT again.
    pub(crate) fn lstar_written(&mut self, value: u64) -> Result<(), MachineError> {
        self.wrmsr(MSR_LSTAR, value)?;
        self.sync_syscall_compat()
    }

    /// The address in the IDT's vector-14 gate, in long mode with a present gate.
    fn pf_handler(&self) -> Result<Option<u64>, MachineError> {
        self.idt_handler(14)
    }

    fn syscall_msrs(&self) -> Result<[u64; 3], MachineError> {
        let entries = [MSR_STAR, MSR_LSTAR, MSR_SFMASK].map(|index| kvm_msr_entry {
            index,
            ..Default::default()
        });
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| MachineError::Msr(MSR_STAR))?;
        let n = self
            .vcpu()
            .get_msrs(&mut msrs)
            .map_err(|source| MachineError::Kvm {
                what: "read the SYSCALL MSRs",
                source,
            })?;
        if n != 3 {
            return Err(MachineError::Msr(MSR_STAR));
        }
        let s = msrs.as_slice();
        Ok([s[0].data, s[1].data, s[2].data])
    }

    /// Handles a stop at the #PF handler breakpoint.
    pub(crate) fn syscall_compat_hit(&mut self) -> Result<Hit, MachineError> {
        let mut regs = self.regs()?;
        let mut sregs = self.sregs()?;
        let pregs = paging_regs(&sregs);
        let mut raw = [0u8; 48];
        let page_fault = |m: &mut Machine| {
            m.syscall_compat.page_faults += 1;
            Ok(Hit::PageFault)
        };
        if sregs.efer & EFER_SCE == 0
            || access::read_virt(&self.vm.mem, &pregs, regs.rsp, &mut raw).is_err()
        {
            return page_fault(self);
        }
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let (error, rip, cs, rflags, rsp) = (word(0), word(1), word(2), word(3), word(4));
        if error & (PF_USER | PF_FETCH) != (PF_USER | PF_FETCH) || cs & 3 != 3 {
            return page_fault(self);
        }
        let [star, lstar, sfmask] = self.syscall_msrs()?;
        let mut insn = [0u8; 2];
        if rip != lstar
            || access::read_virt(&self.vm.mem, &pregs, regs.rcx.wrapping_sub(2), &mut insn).is_err()
            || insn != SYSCALL_BYTES
        {
            return page_fault(self);
        }
        regs.rip = lstar;
        regs.rsp = rsp;
        regs.rflags = (rflags & !sfmask & !(RFLAGS_RF | RFLAGS_VM)) | 0x2;
        sregs.cs = syscall_probe::kernel_code_segment(star);
        sregs.ss = syscall_probe::kernel_stack_segment(star);
        self.set_regs(&regs)?;
        self.set_sregs(&sregs)?;
        self.completer.count(Entry::Syscall);
        self.clock.charge(Charge::Completion);
        self.record(super::trace::ExitKind::Completion, regs.rcx, 0);
        Ok(Hit::Completed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::syscall_probe::Transition;

    fn probe(syscall: Transition) -> SyscallProbe {
        SyscallProbe {
            syscall,
            sysret: Transition::Works,
        }
    }

    #[test]
    fn auto_follows_the_probe_and_off_wins() {
        let broken = probe(Transition::WrongCpl(3));
        let fine = probe(Transition::Works);
        assert!(SyscallCompat::new(SyscallCompatMode::Auto, broken.clone(), false).active());
        assert!(!SyscallCompat::new(SyscallCompatMode::Auto, fine.clone(), false).active());
        assert!(SyscallCompat::new(SyscallCompatMode::On, fine, false).active());
        assert!(!SyscallCompat::new(SyscallCompatMode::Off, broken.clone(), false).active());
        assert!(!SyscallCompat::new(SyscallCompatMode::On, broken.clone(), true).active());
    }

    #[test]
    fn modes_parse() {
        assert_eq!("on".parse(), Ok(SyscallCompatMode::On));
        assert_eq!("auto".parse(), Ok(SyscallCompatMode::Auto));
        assert!("maybe".parse::<SyscallCompatMode>().is_err());
    }
}
