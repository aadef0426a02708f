//! The four debug registers, from one allocator shared by every front end
//! (scripts, gdb) and the SYSCALL path: execution breakpoints, and data
//! breakpoints for watches where the host fires them ([`super::watch`]).

use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};

use super::{Machine, MachineError};

/// Number of hardware breakpoint slots (DR0-DR3).
pub const SLOTS: usize = 4;

/// DR6.BS: the debug exception came from a single step.
pub const DR6_BS: u64 = 1 << 14;

/// Who holds a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A script's `hook.exec` or `hook.watch`.
    Hook(u64),
    /// A breakpoint stop condition of one `run` call.
    Run,
    /// The debugger.
    Gdb,
    /// The SYSCALL compatibility path (on the guest's page-fault entry).
    SyscallCompat,
    /// Reverse execution's replay (where the state to reach is).
    Replay,
    /// User-mode breakpoints and steps (on the guest's #BP and #DB entries).
    UserDebug,
}

/// What a data breakpoint fires on (DR7's R/W field; x86 has no read-only
/// kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataAccess {
    /// Writes (R/W = 01).
    Write,
    /// Reads and writes (R/W = 11).
    ReadWrite,
}

/// A data breakpoint: the watch it serves and what it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataBreakpoint {
    /// The watch's id.
    pub watch: u64,
    /// Length in bytes: 1, 2, 4 or 8, at an address aligned to it.
    pub len: u8,
    /// What it fires on.
    pub access: DataAccess,
}

/// One taken debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    addr: u64,
    owner: Owner,
    /// None for an execution breakpoint.
    data: Option<DataBreakpoint>,
}

/// The debug-register allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugRegs {
    slots: [Option<Slot>; SLOTS],
}

/// Errors of the allocator.
#[derive(Debug, thiserror::Error)]
pub enum DebugRegError {
    /// All four slots are taken.
    #[error("All {SLOTS} hardware breakpoint slots are in use")]
    Full,
    /// A data breakpoint covers 1, 2, 4 or 8 naturally aligned bytes.
    #[error(
        "A data breakpoint covers 1, 2, 4 or 8 bytes aligned to their size, not {len} at {addr:#x}"
    )]
    BadDataRange {
        /// The address.
        addr: u64,
        /// The length.
        len: u64,
    },
}

/// DR7's LEN field for a data breakpoint of `len` bytes.
fn len_bits(len: u8) -> u64 {
    match len {
        1 => 0b00,
        2 => 0b01,
        8 => 0b10,
        _ => 0b11,
    }
}

/// Whether a data breakpoint can cover `len` bytes at `addr`.
pub fn data_range_fits(addr: u64, len: u64) -> bool {
    matches!(len, 1 | 2 | 4 | 8) && addr % len == 0
}

/// DR7's bits for slot `i`: its local enable, and for a data breakpoint its
/// R/W and LEN fields (an execution breakpoint's are zero).
fn dr7_bits(i: usize, data: Option<&DataBreakpoint>) -> u64 {
    let mut bits = 1 << (2 * i);
    if let Some(d) = data {
        let rw: u64 = match d.access {
            DataAccess::Write => 0b01,
            DataAccess::ReadWrite => 0b11,
        };
        bits |= (rw | len_bits(d.len) << 2) << (16 + 4 * i);
    }
    bits
}

impl DebugRegs {
    fn take(&mut self, slot: Slot) -> Result<usize, DebugRegError> {
        let i = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(DebugRegError::Full)?;
        self.slots[i] = Some(slot);
        Ok(i)
    }

    /// Takes a slot for an execution breakpoint at `addr`.
    pub fn alloc(&mut self, addr: u64, owner: Owner) -> Result<usize, DebugRegError> {
        self.take(Slot {
            addr,
            owner,
            data: None,
        })
    }

    /// Takes a slot for a data breakpoint at linear `addr`.
    pub fn alloc_data(
        &mut self,
        addr: u64,
        owner: Owner,
        data: DataBreakpoint,
    ) -> Result<usize, DebugRegError> {
        if !data_range_fits(addr, u64::from(data.len)) {
            return Err(DebugRegError::BadDataRange {
                addr,
                len: u64::from(data.len),
            });
        }
        self.take(Slot {
            addr,
            owner,
            data: Some(data),
        })
    }

    /// The execution breakpoints' slots.
    fn exec(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter().flatten().filter(|s| s.data.is_none())
    }

    /// Frees every execution breakpoint `owner` holds; whether it held any.
    pub fn free(&mut self, owner: Owner) -> bool {
        let mut freed = false;
        for s in &mut self.slots {
            if s.is_some_and(|s| s.owner == owner && s.data.is_none()) {
                *s = None;
                freed = true;
            }
        }
        freed
    }

    /// Frees the execution breakpoint `owner` holds at `addr`; whether it
    /// held one.
    pub fn free_at(&mut self, addr: u64, owner: Owner) -> bool {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|s| s.addr == addr && s.owner == owner && s.data.is_none()));
        match slot {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// Frees the data breakpoint of watch `watch`; whether there was one.
    pub fn free_data(&mut self, watch: u64) -> bool {
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|s| s.data.is_some_and(|d| d.watch == watch)));
        match slot {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// Who holds an execution breakpoint at `addr`.
    pub fn owners_at(&self, addr: u64) -> impl Iterator<Item = Owner> + '_ {
        self.exec().filter(move |s| s.addr == addr).map(|s| s.owner)
    }

    /// The addresses `owner` holds execution breakpoints at.
    pub fn addresses(&self, owner: Owner) -> impl Iterator<Item = u64> + '_ {
        self.exec()
            .filter(move |s| s.owner == owner)
            .map(|s| s.addr)
    }

    /// Whether any data breakpoint is set.
    pub fn has_data(&self) -> bool {
        self.slots.iter().flatten().any(|s| s.data.is_some())
    }

    /// The data breakpoints DR6 (from a debug exit) says fired, in slot
    /// order: (slot, linear address, breakpoint).
    pub fn data_hits(&self, dr6: u64) -> impl Iterator<Item = (usize, u64, DataBreakpoint)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| dr6 & (1 << i) != 0)
            .filter_map(|(i, s)| s.and_then(|s| s.data.map(|d| (i, s.addr, d))))
    }

    /// The slot of watch `watch`'s data breakpoint.
    pub fn data_slot(&self, watch: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.is_some_and(|s| s.data.is_some_and(|d| d.watch == watch)))
    }

    /// The KVM_SET_GUEST_DEBUG argument for the current slots; with
    /// `data_only`, the data breakpoints alone (for a step over an
    /// execution breakpoint, which must not lose a data hit).
    fn guest_debug(&self, data_only: bool) -> kvm_guest_debug {
        self.guest_debug_keeping(|_, _| !data_only)
    }

    /// The KVM_SET_GUEST_DEBUG argument with the data breakpoints and the
    /// execution breakpoints `keep` accepts (by address and owner).
    fn guest_debug_keeping(&self, keep: impl Fn(u64, Owner) -> bool) -> kvm_guest_debug {
        let mut dbg = kvm_guest_debug::default();
        let mut dr7 = 0u64;
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                if s.data.is_none() && !keep(s.addr, s.owner) {
                    continue;
                }
                dbg.arch.debugreg[i] = s.addr;
                dr7 |= dr7_bits(i, s.data.as_ref());
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

    /// Arms a single step with every execution breakpoint off, to step over the
    /// instruction a breakpoint stopped at (RFLAGS.RF is not honoured by every
    /// KVM). The next exit, whatever it is, re-arms the breakpoints.
    /// Software breakpoints are lifted from memory for the step. The
    /// compatibility paths' handler breakpoints stay on (the step's #DB, or
    /// a stepped `syscall`'s #PF, may go to the guest's handler), unless the
    /// step starts on one.
    pub(crate) fn arm_step_over(&mut self) -> Result<(), MachineError> {
        self.lift_sw_breakpoints();
        let kept = self.user_debug.handlers().next().is_some()
            || self
                .debug_regs
                .addresses(Owner::SyscallCompat)
                .next()
                .is_some();
        let here = if kept {
            Some(crate::vm::regs::linear_rip(&self.regs()?, &self.sregs()?))
        } else {
            None
        };
        // Data breakpoints stay on: the stepped instruction may hit one.
        let mut dbg = self.debug_regs.guest_debug_keeping(|addr, owner| {
            matches!(owner, Owner::UserDebug | Owner::SyscallCompat) && Some(addr) != here
        });
        dbg.control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
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
        let mut dbg = self.debug_regs.guest_debug(false);
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
        let dbg = d.guest_debug(false);
        assert_eq!(dbg.arch.debugreg[2], 0x9000);
        assert_eq!(dbg.arch.debugreg[7], 0b0101_0101);
        assert_ne!(dbg.control & KVM_GUESTDBG_USE_HW_BP, 0);
    }

    #[test]
    fn no_breakpoints_disables_guest_debug() {
        assert_eq!(DebugRegs::default().guest_debug(false).control, 0);
    }

    fn data(watch: u64, len: u8, access: DataAccess) -> DataBreakpoint {
        DataBreakpoint { watch, len, access }
    }

    #[test]
    fn dr7_encodes_enable_rw_and_len_per_slot() {
        assert_eq!(dr7_bits(0, None), 0b1);
        assert_eq!(dr7_bits(3, None), 0b100_0000);
        // Slot 0, write, 8 bytes: L0, R/W0 = 01, LEN0 = 10.
        assert_eq!(
            dr7_bits(0, Some(&data(1, 8, DataAccess::Write))),
            1 | 0b1001 << 16
        );
        // Slot 2, read/write, 4 bytes: L2, R/W2 = 11, LEN2 = 11.
        assert_eq!(
            dr7_bits(2, Some(&data(1, 4, DataAccess::ReadWrite))),
            1 << 4 | 0b1111 << 24
        );
        // Slot 3, write, 1 and 2 bytes.
        assert_eq!(
            dr7_bits(3, Some(&data(1, 1, DataAccess::Write))),
            1 << 6 | 0b0001 << 28
        );
        assert_eq!(
            dr7_bits(1, Some(&data(1, 2, DataAccess::Write))),
            1 << 2 | 0b0101 << 20
        );
    }

    #[test]
    fn data_breakpoints_need_natural_alignment() {
        assert!(data_range_fits(0x1000, 8));
        assert!(data_range_fits(0x1004, 4));
        assert!(data_range_fits(0x1003, 1));
        assert!(!data_range_fits(0x1004, 8));
        assert!(!data_range_fits(0x1001, 2));
        assert!(!data_range_fits(0x1000, 3));
        assert!(!data_range_fits(0x1000, 16));
        let mut d = DebugRegs::default();
        assert!(matches!(
            d.alloc_data(0x1002, Owner::Gdb, data(1, 4, DataAccess::Write)),
            Err(DebugRegError::BadDataRange { .. })
        ));
        assert!(!d.has_data());
    }

    #[test]
    fn execution_and_data_breakpoints_share_the_four_slots() {
        let mut d = DebugRegs::default();
        d.alloc(0x1000, Owner::Gdb).unwrap();
        assert_eq!(
            d.alloc_data(0x2000, Owner::Gdb, data(7, 8, DataAccess::Write))
                .unwrap(),
            1
        );
        d.alloc(0x3000, Owner::Hook(1)).unwrap();
        d.alloc_data(0x4004, Owner::Hook(2), data(9, 4, DataAccess::ReadWrite))
            .unwrap();
        assert!(matches!(
            d.alloc(0x5000, Owner::Gdb),
            Err(DebugRegError::Full)
        ));
        // Execution queries and frees leave the data breakpoints alone.
        assert_eq!(d.owners_at(0x2000).count(), 0);
        assert_eq!(d.addresses(Owner::Gdb).collect::<Vec<_>>(), vec![0x1000]);
        assert!(!d.free_at(0x2000, Owner::Gdb));
        assert!(d.free(Owner::Gdb));
        assert_eq!(d.data_slot(7), Some(1));
        let dbg = d.guest_debug(false);
        assert_eq!(dbg.arch.debugreg[1], 0x2000);
        assert_eq!(dbg.arch.debugreg[3], 0x4004);
        assert_eq!(
            dbg.arch.debugreg[7],
            0b0100 | 0b1001 << 20 | 0b0001_0000 | 0b0100_0000 | 0b1111 << 28
        );
        // A step over keeps only the data breakpoints.
        let step = d.guest_debug(true);
        assert_eq!(step.arch.debugreg[2], 0);
        assert_eq!(
            step.arch.debugreg[7],
            0b0100 | 0b1001 << 20 | 0b0100_0000 | 0b1111 << 28
        );
        // DR6 names the slots that fired; execution slots are not data hits.
        let hits: Vec<_> = d.data_hits(0xffff_0ff0 | 0b1110).collect();
        assert_eq!(
            hits,
            vec![
                (1, 0x2000, data(7, 8, DataAccess::Write)),
                (3, 0x4004, data(9, 4, DataAccess::ReadWrite))
            ]
        );
        assert_eq!(d.data_hits(DR6_BS | 0b0100).count(), 0);
        assert!(d.free_data(7));
        assert!(!d.free_data(7));
        assert_eq!(d.data_slot(7), None);
        assert_eq!(d.alloc(0x6000, Owner::Run).unwrap(), 0);
    }
}
