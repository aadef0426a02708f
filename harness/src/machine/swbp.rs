//! Software breakpoints: `int3` (0xCC) written over the first byte of an
//! instruction, the original byte kept here.
//!
//! Where the guest meets one:
//! - code KVM's instruction emulator runs (guest kernel code on
//!   software-nested KVM) fails to emulate `int3`: the run loop sees an
//!   emulation failure at a breakpoint address and stops instead of
//!   completing the instruction (see `emulate`);
//! - code that runs natively gets a #BP, which KVM reports as a debug exit
//!   while software breakpoints are set (`KVM_GUESTDBG_USE_SW_BP`); a #BP at
//!   an address without a breakpoint is the guest's own and is re-injected.
//!
//! Either way RIP stays at the breakpoint, as gdb expects. The original bytes
//! are put back while the vCPU single-steps (a step over a breakpoint, or a
//! requested step) and while a snapshot is taken, so snapshots never hold an
//! `int3` of ours; a restore writes the breakpoints into the restored memory
//! again. Front ends hide them from memory reads with [`Machine::hide_sw_breakpoints`].
//! A guest reading its own code sees the `int3`s.

use super::debug::Owner;
use super::{Machine, MachineError};
use crate::vm::access::{self, AccessError};
use crate::vm::memory;
use crate::vm::paging::{self, PagingMode};
use crate::vm::regs::paging_regs;

/// The `int3` opcode.
pub const INT3: u8 = 0xcc;

/// One software breakpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwBreakpoint {
    /// Its guest-virtual (linear) address.
    pub addr: u64,
    /// The guest-physical address it was written at.
    pub gpa: u64,
    /// The byte the `int3` replaced.
    pub orig: u8,
    /// Who set it.
    pub owner: Owner,
    /// Whether its page was user-accessible (paging on) when it was set.
    pub user: bool,
}

/// Errors of setting software breakpoints.
#[derive(Debug, thiserror::Error)]
pub enum SwBreakpointError {
    /// The address does not translate to RAM.
    #[error("Cannot set a software breakpoint at {addr:#x}")]
    Unmapped {
        /// The address.
        addr: u64,
        /// Why.
        #[source]
        source: AccessError,
    },
}

/// The software breakpoints of a machine.
#[derive(Clone, Debug, Default)]
pub struct SwBreakpoints {
    list: Vec<SwBreakpoint>,
    /// The original bytes are in memory (during a step or a snapshot).
    lifted: bool,
}

impl SwBreakpoints {
    /// The breakpoints, in the order they were set.
    pub fn list(&self) -> &[SwBreakpoint] {
        &self.list
    }

    /// Whether one is set at `addr`.
    pub fn at(&self, addr: u64) -> bool {
        self.list.iter().any(|b| b.addr == addr)
    }

    /// Whether `owner` holds one at `addr`.
    pub fn held_by(&self, addr: u64, owner: Owner) -> bool {
        self.list.iter().any(|b| b.addr == addr && b.owner == owner)
    }
}

impl Machine {
    /// Writes an `int3` at guest-virtual `addr` for `owner`.
    pub fn add_sw_breakpoint(&mut self, addr: u64, owner: Owner) -> Result<(), MachineError> {
        if self.sw_breakpoints.held_by(addr, owner) {
            return Ok(());
        }
        let paging = paging_regs(&self.sregs()?);
        let unmapped = |source| SwBreakpointError::Unmapped { addr, source };
        let gpa = access::phys_ranges(&self.vm.mem, &paging, addr, 1)
            .map_err(unmapped)?
            .first()
            .map_or(0, |r| r.0);
        // A second owner at the same address shares the first one's byte.
        let orig = match self.sw_breakpoints.list.iter().find(|b| b.addr == addr) {
            Some(b) => b.orig,
            None => {
                let mut b = [0u8];
                access::read_virt(&self.vm.mem, &paging, addr, &mut b).map_err(unmapped)?;
                b[0]
            }
        };
        let user = paging.mode() != PagingMode::Off
            && paging::translate(&self.vm.mem, &paging, addr).is_ok_and(|t| t.user);
        let first = self.sw_breakpoints.list.is_empty();
        self.sw_breakpoints.list.push(SwBreakpoint {
            addr,
            gpa,
            orig,
            owner,
            user,
        });
        if !self.sw_breakpoints.lifted {
            memory::write_phys(&self.vm.mem, gpa, &[INT3]);
        }
        if first {
            self.apply_debug_regs()?;
        }
        Ok(())
    }

    /// Removes `owner`'s software breakpoint at `addr`; whether there was one.
    pub fn remove_sw_breakpoint(&mut self, addr: u64, owner: Owner) -> Result<bool, MachineError> {
        let Some(i) = self
            .sw_breakpoints
            .list
            .iter()
            .position(|b| b.addr == addr && b.owner == owner)
        else {
            return Ok(false);
        };
        let b = self.sw_breakpoints.list.remove(i);
        self.drop_sw_breakpoint(&b)?;
        Ok(true)
    }

    /// Removes every software breakpoint `owner` holds.
    pub fn remove_sw_breakpoints(&mut self, owner: Owner) -> Result<(), MachineError> {
        let (gone, kept): (Vec<SwBreakpoint>, Vec<SwBreakpoint>) = self
            .sw_breakpoints
            .list
            .iter()
            .partition(|b| b.owner == owner);
        self.sw_breakpoints.list = kept;
        for b in &gone {
            self.drop_sw_breakpoint(b)?;
        }
        Ok(())
    }

    /// Puts the original byte back unless another owner still holds a
    /// breakpoint there.
    fn drop_sw_breakpoint(&mut self, b: &SwBreakpoint) -> Result<(), MachineError> {
        if !self.sw_breakpoints.at(b.addr) && !self.sw_breakpoints.lifted {
            memory::write_phys(&self.vm.mem, b.gpa, &[b.orig]);
        }
        if self.sw_breakpoints.list.is_empty() {
            self.apply_debug_regs()?;
        }
        Ok(())
    }

    /// The software breakpoints.
    pub fn sw_breakpoints(&self) -> &SwBreakpoints {
        &self.sw_breakpoints
    }

    /// Replaces the `int3`s in `buf`, read from guest-virtual `addr`, with
    /// the bytes they hide.
    pub fn hide_sw_breakpoints(&self, addr: u64, buf: &mut [u8]) {
        if self.sw_breakpoints.lifted {
            return;
        }
        for b in &self.sw_breakpoints.list {
            let off = b.addr.wrapping_sub(addr);
            if let Some(byte) = usize::try_from(off).ok().and_then(|o| buf.get_mut(o)) {
                *byte = b.orig;
            }
        }
    }

    /// After a front end wrote `len` bytes at guest-virtual `addr`: bytes
    /// under breakpoints become their new original bytes, and the `int3`s
    /// go back.
    pub fn rewrite_sw_breakpoints(&mut self, addr: u64, len: usize) {
        let mut any = false;
        for b in &mut self.sw_breakpoints.list {
            if b.addr.wrapping_sub(addr) < len as u64 {
                let mut byte = [0u8];
                if memory::read_phys(&self.vm.mem, b.gpa, &mut byte) {
                    b.orig = byte[0];
                    any = true;
                }
            }
        }
        if any && !self.sw_breakpoints.lifted {
            for b in &self.sw_breakpoints.list {
                memory::write_phys(&self.vm.mem, b.gpa, &[INT3]);
            }
        }
    }

    /// Puts the original bytes back in memory (for a step or a snapshot).
    pub(crate) fn lift_sw_breakpoints(&mut self) {
        if self.sw_breakpoints.lifted || self.sw_breakpoints.list.is_empty() {
            return;
        }
        for b in self.sw_breakpoints.list.iter().rev() {
            memory::write_phys(&self.vm.mem, b.gpa, &[b.orig]);
        }
        self.sw_breakpoints.lifted = true;
    }

    /// Writes the `int3`s again after [`Machine::lift_sw_breakpoints`].
    pub(crate) fn insert_sw_breakpoints(&mut self) {
        if !self.sw_breakpoints.lifted {
            return;
        }
        for b in &self.sw_breakpoints.list {
            memory::write_phys(&self.vm.mem, b.gpa, &[INT3]);
        }
        self.sw_breakpoints.lifted = false;
    }

    /// After a snapshot restore: the restored memory holds the original
    /// bytes; read them again and write the `int3`s.
    pub(crate) fn reinsert_sw_breakpoints_after_restore(&mut self) {
        self.sw_breakpoints.lifted = false;
        for b in &mut self.sw_breakpoints.list {
            let mut byte = [0u8];
            if memory::read_phys(&self.vm.mem, b.gpa, &mut byte) && byte[0] != INT3 {
                b.orig = byte[0];
            }
        }
        for b in &self.sw_breakpoints.list {
            memory::write_phys(&self.vm.mem, b.gpa, &[INT3]);
        }
    }

    /// Whether the vCPU stopped on one of our `int3`s (at linear `addr`,
    /// the byte there is still ours).
    pub(crate) fn is_sw_breakpoint(&self, addr: u64) -> bool {
        self.sw_breakpoints.list.iter().any(|b| {
            let mut byte = [0u8];
            b.addr == addr && memory::read_phys(&self.vm.mem, b.gpa, &mut byte) && byte[0] == INT3
        })
    }
}
