//! Execution breakpoints through the debug registers, from one allocator shared
//! by every front end (scripts, gdb).

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};

use super::{Machine, MachineError};

/// Number of hardware breakpoint slots (DR0-DR3).
pub const SLOTS: usize = 4;

/// Who holds a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A script's `hook.exec`.
    Hook(u64),
    /// A breakpoint stop condition of one `run` call.
    Run,
    /// The debugger.
    Gdb,
    /// The SYSCALL compatibility path (on the guest's page-fault entry).
    SyscallCompat,
    /// Reverse execution's replay (where the state to reach is).
    Replay,
}

/// The debug-register allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugRegs {
    slots: [Option<(u64, Owner)>; SLOTS],
}

/// Errors of the allocator.
#[derive(Debug, thiserror::Error)]
pub enum DebugRegError {
    /// All four slots are taken.
    #[error("All {SLOTS} hardware breakpoint slots are in use")]
    Full,
}

impl DebugRegs {
    /// Takes a slot for `addr`.
    pub fn alloc(&mut self, addr: u64, owner: Owner) -> Result<usize, DebugRegError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(DebugRegError::Full)?;
        self.slots[slot] = Some((addr, owner));
        Ok(slot)
    }

    /// Frees every slot `owner` holds; whether it held any.
    pub fn free(&mut self, owner: Owner) -> bool {
        let mut freed = false;
        for s in &mut self.slots {
            if s.is_some_and(|(_, o)| o == owner) {
                *s = None;
                freed = true;
            }
        }
        freed
    }

    /// Frees the slot `owner` holds at `addr`; whether it held one.
    pub fn free_at(&mut self, addr: u64, owner: Owner) -> bool {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|(a, o)| a == addr && o == owner));
        match slot {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// Who holds a breakpoint at `addr`.
    pub fn owners_at(&self, addr: u64) -> impl Iterator<Item = Owner> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(move |(a, _)| *a == addr)
            .map(|(_, o)| *o)
    }

    /// The addresses `owner` holds breakpoints at.
    pub fn addresses(&self, owner: Owner) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .flatten()
            .filter(move |(_, o)| *o == owner)
            .map(|(a, _)| *a)
    }

    /// The KVM_SET_GUEST_DEBUG argument for the current slots.
    fn guest_debug(&self) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        let mut dr7 = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some((addr, _)) = s {
                dbg.arch.debugreg[i] = *addr;
                // Local enable; R/W = 00 (execute) and LEN = 00 are zero bits.
                dr7 |= 1 << (2 * i);
            }
        }
        if dr7 != 0 {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[7] = dr7;
        }
        dbg
    }
}

impl Machine {
    /// Sets an execution breakpoint at guest-virtual `addr` for `owner`.
    pub fn add_breakpoint(&mut self, addr: u64, owner: Owner) -> Result<usize, MachineError> {
        let slot = self.debug_regs.alloc(addr, owner)?;
        self.apply_debug_regs()?;
        Ok(slot)
    }

    /// Removes every breakpoint `owner` holds (no KVM call when it holds none).
    pub fn remove_breakpoints(&mut self, owner: Owner) -> Result<(), MachineError> {
        if self.debug_regs.free(owner) {
            self.apply_debug_regs()?;
        }
        Ok(())
    }

    /// Removes the breakpoint `owner` holds at `addr`; whether there was one.
    pub fn remove_breakpoint(&mut self, addr: u64, owner: Owner) -> Result<bool, MachineError> {
        let freed = self.debug_regs.free_at(addr, owner);
        if freed {
            self.apply_debug_regs()?;
        }
        Ok(freed)
    }

    /// The allocator, for front ends that show it.
    pub fn debug_regs(&self) -> &DebugRegs {
        &self.debug_regs
    }

    /// Arms a single step with every breakpoint off, to step over the
    /// instruction a breakpoint stopped at (RFLAGS.RF is not honoured by every
    /// KVM). The next exit, whatever it is, re-arms the breakpoints.
    /// Software breakpoints are lifted from memory for the step.
    pub(crate) fn arm_step_over(&mut self) -> Result<(), MachineError> {
        self.lift_sw_breakpoints();
        let dbg = kvm_guest_debug {
            control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
            ..Default::default()
        };
        for vcpu in &self.vcpus {
            vcpu.set_guest_debug(&dbg)
                .map_err(|source| MachineError::Kvm {
                    what: "single-step over a breakpoint",
                    source,
                })?;
        }
        Ok(())
    }

    /// Puts the breakpoints back after a step over.
    pub(crate) fn disarm_step_over(&mut self) -> Result<(), MachineError> {
        self.insert_sw_breakpoints();
        self.apply_debug_regs()
    }

    /// Hands the breakpoints to KVM (#BP exits too while software
    /// breakpoints are set).
    pub(crate) fn apply_debug_regs(&mut self) -> Result<(), MachineError> {
        let mut dbg = self.debug_regs.guest_debug();
        if !self.sw_breakpoints.list().is_empty() || !self.fuzz_bps.is_empty() {
            dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        }
        // A spin-wait probe single-steps with the breakpoints on.
        dbg.control |= self.probe_debug_flags();
        for vcpu in &self.vcpus {
            vcpu.set_guest_debug(&dbg)
                .map_err(|source| MachineError::Kvm {
                    what: "set guest debug registers",
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_slots_then_full_and_free_by_owner() {
        let mut d = DebugRegs::default();
        for i in 0..4 {
            d.alloc(0x1000 + i, Owner::Hook(i)).unwrap();
        }
        assert!(matches!(
            d.alloc(0x9000, Owner::Run),
            Err(DebugRegError::Full)
        ));
        assert!(!d.free_at(0x1002, Owner::Hook(1)));
        assert!(d.free_at(0x1001, Owner::Hook(1)));
        assert_eq!(d.alloc(0x2000, Owner::Gdb).unwrap(), 1);
        assert!(d.free(Owner::Hook(2)));
        assert!(!d.free(Owner::Hook(2)));
        assert_eq!(d.alloc(0x9000, Owner::Run).unwrap(), 2);
        assert_eq!(d.owners_at(0x9000).collect::<Vec<_>>(), vec![Owner::Run]);
        let dbg = d.guest_debug();
        assert_eq!(dbg.arch.debugreg[2], 0x9000);
        assert_eq!(dbg.arch.debugreg[7], 0b0101_0101);
        assert_ne!(dbg.control & KVM_GUESTDBG_USE_HW_BP, 0);
    }

    #[test]
    fn no_breakpoints_disables_guest_debug() {
        assert_eq!(DebugRegs::default().guest_debug().control, 0);
    }
}
