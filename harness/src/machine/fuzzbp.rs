//! Fuzzing breakpoints: `int3`s the fuzzer writes over guest code to learn
//! what an input did, serviced inside the run loop without stopping it.
//!
//! - A **block** breakpoint marks the first instruction of a basic block. It
//!   is one-shot (Snapchange's method): at its first hit the original byte
//!   goes back, the block's index is recorded, and the guest re-executes the
//!   instruction. The front end also patches its fuzz-point snapshot, so the
//!   block stays uninstrumented in later executions.
//! - A **compare** breakpoint sits on a `cmp` instruction and stays. At each
//!   hit lunavm reads both operands, records them, and executes the `cmp`
//!   itself (RFLAGS and RIP), so the guest never runs the original byte.
//! - A **stop** breakpoint ends the run
//!   (a crash site: a panic function, an exception handler) with
//!   [`StopReason::CrashSite`].
//!
//! They are found where gdb's software breakpoints are: at KVM's emulation
//! failure on `int3` (guest kernel code on software-nested KVM) or at a #BP
//! debug exit (code running natively). Unlike gdb's, they are part of guest
//! memory, snapshots included: the fuzzer instruments its snapshot once.

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Register};
use kvm_bindings::{kvm_regs, kvm_sregs};

use super::{Machine, MachineError, StopReason};
use crate::fuzz::elfmap::{mask as width_mask, CmpKind, CmpSite, OperandSource};
use crate::machine::swbp::INT3;
use crate::vm::access;
use crate::vm::memory;
use crate::vm::regs::{
    code_bitness, linear_rip, paging_regs, register_value, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF,
    RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF,
};

/// What a fuzzing breakpoint does when hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzSiteKind {
    /// One-shot coverage of basic block `index`.
    Block(u32),
    /// A `cmp` whose operands are recorded at every hit.
    Cmp,
    /// Ends the run (a crash site).
    Stop,
}

/// One fuzzing breakpoint (an address can be a block start, a `cmp` and a
/// stop at once).
#[derive(Clone, Copy, Debug)]
struct Site {
    gpa: u64,
    orig: u8,
    /// A block not yet seen in this process.
    block: Option<u32>,
    cmp: bool,
    stop: bool,
}

/// The operands of one guest comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmpEvent {
    /// Address of the `cmp`.
    pub pc: u64,
    /// First operand (masked to the width).
    pub a: u64,
    /// Second operand (masked to the width).
    pub b: u64,
    /// Width in bytes.
    pub size: u8,
    /// Reported by the guest (ucall CMP) rather than seen at a breakpoint.
    pub from_guest: bool,
}

/// The fuzzing breakpoints of a machine and what they saw since the front
/// end last drained them.
#[derive(Clone, Debug, Default)]
pub struct FuzzBreakpoints {
    sites: HashMap<u64, Site>,
    /// Blocks hit (indices), in hit order.
    pub hits: Vec<u32>,
    /// (guest-physical address, original byte, block index) of the
    /// breakpoints taken out: blocks hit (the front end writes them into its
    /// snapshot once it keeps the input) and compare sites lunavm cannot
    /// execute (no index; always written).
    pub removed: Vec<(u64, u8, Option<u32>)>,
    /// Comparisons seen, in order (at most [`MAX_CMPS`] per drain).
    pub cmps: Vec<CmpEvent>,
    /// Hits of each compare site since the last drain.
    cmp_hits: HashMap<u64, u32>,
}

/// Hits of one compare site per execution (drain) before lunavm lifts it
/// for the rest of the execution: a compare in a loop costs an exit per
/// iteration, and its later iterations teach the fuzzer nothing new. The
/// `int3` comes back with the next snapshot restore (the page is dirty).
pub const CMP_HITS_PER_RUN: u32 = 4;

/// What the fuzzing breakpoints saw: block indices hit, breakpoints taken
/// out (see [`FuzzBreakpoints::removed`]) and comparisons.
pub type FuzzFeedback = (Vec<u32>, Vec<(u64, u8, Option<u32>)>, Vec<CmpEvent>);

/// Comparisons kept per execution; more are executed but not recorded.
pub const MAX_CMPS: usize = 4096;

/// Errors of placing fuzzing breakpoints.
#[derive(Debug, thiserror::Error)]
pub enum FuzzBpError {
    /// The address does not translate to RAM.
    #[error("Cannot place a fuzzing breakpoint at {addr:#x}: {reason}")]
    Unmapped {
        /// The address.
        addr: u64,
        /// Why.
        reason: String,
    },
}

impl FuzzBreakpoints {
    /// Number of breakpoints in place.
    pub fn len(&self) -> usize {
        self.sites.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

impl Machine {
    /// Writes a fuzzing breakpoint at guest-virtual `addr` (translated with
    /// the current page tables). Placing one where one is does nothing.
    pub fn add_fuzz_breakpoint(
        &mut self,
        addr: u64,
        kind: FuzzSiteKind,
    ) -> Result<(), MachineError> {
        if let Some(site) = self.fuzz_bps.sites.get_mut(&addr) {
            match kind {
                FuzzSiteKind::Block(i) => site.block = site.block.or(Some(i)),
                FuzzSiteKind::Cmp => site.cmp = true,
                FuzzSiteKind::Stop => site.stop = true,
            }
            return Ok(());
        }
        let pregs = paging_regs(&self.sregs()?);
        let ranges = access::phys_ranges(&self.vm.mem, &pregs, addr, 1).map_err(|e| {
            MachineError::FuzzBreakpoint(FuzzBpError::Unmapped {
                addr,
                reason: e.to_string(),
            })
        })?;
        let gpa = ranges.first().map(|r| r.0).unwrap_or(0);
        let mut orig = [0u8];
        if !memory::read_phys(&self.vm.mem, gpa, &mut orig) {
            return Err(MachineError::FuzzBreakpoint(FuzzBpError::Unmapped {
                addr,
                reason: "not RAM".into(),
            }));
        }
        if orig[0] == INT3 {
            // The guest's own int3: leave it alone.
            return Ok(());
        }
        let was_empty = self.fuzz_bps.sites.is_empty();
        memory::write_phys(&self.vm.mem, gpa, &[INT3]);
        self.fuzz_bps.sites.insert(
            addr,
            Site {
                gpa,
                orig: orig[0],
                block: match kind {
                    FuzzSiteKind::Block(i) => Some(i),
                    _ => None,
                },
                cmp: kind == FuzzSiteKind::Cmp,
                stop: kind == FuzzSiteKind::Stop,
            },
        );
        if was_empty {
            self.apply_debug_regs()?;
        }
        Ok(())
    }

    /// The fuzzing breakpoints and what they saw.
    pub fn fuzz_breakpoints(&self) -> &FuzzBreakpoints {
        &self.fuzz_bps
    }

    /// Takes what the fuzzing breakpoints saw since the last call: (block
    /// indices hit, removed (gpa, byte) pairs, comparisons).
    pub fn drain_fuzz_feedback(&mut self) -> FuzzFeedback {
        self.fuzz_bps.cmp_hits.clear();
        (
            std::mem::take(&mut self.fuzz_bps.hits),
            std::mem::take(&mut self.fuzz_bps.removed),
            std::mem::take(&mut self.fuzz_bps.cmps),
        )
    }

    /// Whether linear `pc` holds a fuzzing breakpoint whose `int3` is in memory.
    pub(crate) fn is_fuzz_breakpoint(&self, pc: u64) -> bool {
        self.fuzz_bps.sites.get(&pc).is_some_and(|s| {
            let mut b = [0u8];
            memory::read_phys(&self.vm.mem, s.gpa, &mut b) && b[0] == INT3
        })
    }

    /// Services a hit of the fuzzing breakpoint at linear `pc`: None to go
    /// on running, or the stop for a stop site.
    pub(crate) fn fuzz_breakpoint_hit(
        &mut self,
        pc: u64,
    ) -> Result<Option<StopReason>, MachineError> {
        let Some(site) = self.fuzz_bps.sites.get(&pc).copied() else {
            return Ok(None);
        };
        if site.stop {
            return Ok(Some(StopReason::CrashSite { addr: pc }));
        }
        if let Some(index) = site.block {
            self.fuzz_bps.hits.push(index);
            if !site.cmp {
                // One-shot: the byte goes back here and in the snapshot.
                memory::write_phys(&self.vm.mem, site.gpa, &[site.orig]);
                self.fuzz_bps.sites.remove(&pc);
                self.fuzz_bps
                    .removed
                    .push((site.gpa, site.orig, Some(index)));
                if self.fuzz_bps.sites.is_empty() {
                    self.apply_debug_regs()?;
                }
                return Ok(None);
            }
            // Also a compare site: the int3 stays for the compare.
            if let Some(s) = self.fuzz_bps.sites.get_mut(&pc) {
                s.block = None;
            }
        }
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        match self.execute_cmp(pc, site.orig, &regs, &sregs) {
            Some((ev, new_regs)) => {
                if self.fuzz_bps.cmps.len() < MAX_CMPS {
                    self.fuzz_bps.cmps.push(ev);
                }
                self.set_regs(&new_regs)?;
                let hits = self.fuzz_bps.cmp_hits.entry(pc).or_insert(0);
                *hits += 1;
                if *hits >= CMP_HITS_PER_RUN {
                    memory::write_phys(&self.vm.mem, site.gpa, &[site.orig]);
                }
            }
            None => {
                // Not a cmp lunavm can execute (or its memory operand is
                // unmapped): give the guest its byte back for good.
                memory::write_phys(&self.vm.mem, site.gpa, &[site.orig]);
                self.fuzz_bps.sites.remove(&pc);
                self.fuzz_bps.removed.push((site.gpa, site.orig, None));
            }
        }
        Ok(None)
    }

    /// Decodes the `cmp` at `pc` (its first byte is `orig`), reads its
    /// operands and computes the registers after it.
    fn execute_cmp(
        &self,
        pc: u64,
        orig: u8,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
    ) -> Option<(CmpEvent, kvm_regs)> {
        if linear_rip(regs, sregs) != pc {
            return None;
        }
        let pregs = paging_regs(sregs);
        let mut buf = [0u8; 15];
        let n = access::read_virt_prefix(&self.vm.mem, &pregs, pc, &mut buf);
        if n == 0 {
            return None;
        }
        buf[0] = orig;
        let mut dec = Decoder::with_ip(
            code_bitness(sregs),
            &buf[..n],
            regs.rip,
            DecoderOptions::NONE,
        );
        let insn = dec.decode();
        let site = CmpSite::from_instruction(&insn).filter(|c| c.kind == CmpKind::Cmp)?;
        let (a, b) = site.evaluate(&VcpuOperands {
            machine: self,
            regs,
            sregs,
        })?;
        let mut out = *regs;
        out.rflags = cmp_flags(regs.rflags, a, b, site.width);
        out.rip = insn.next_ip();
        Some((
            CmpEvent {
                pc,
                a,
                b,
                size: site.width,
                from_guest: false,
            },
            out,
        ))
    }
}

/// The stopped vCPU as the source of a compare's operands.
struct VcpuOperands<'a> {
    machine: &'a Machine,
    regs: &'a kvm_regs,
    sregs: &'a kvm_sregs,
}

impl OperandSource for VcpuOperands<'_> {
    fn reg(&self, r: Register) -> Option<u64> {
        register_value(self.regs, self.sregs, r)
    }

    fn read_virt(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        access::read_virt(
            &self.machine.vm.mem,
            &paging_regs(self.sregs),
            addr,
            &mut bytes,
        )
        .ok()?;
        Some(bytes)
    }

    fn segment_base(&self, seg: Register) -> Option<u64> {
        // In 64-bit mode only FS and GS have a base; in 32-bit code every
        // segment's base counts.
        if code_bitness(self.sregs) == 64 && !matches!(seg, Register::FS | Register::GS) {
            return Some(0);
        }
        register_value(self.regs, self.sregs, seg)
    }
}

/// RFLAGS after `cmp a, b` of `size` bytes: CF, PF, AF, ZF, SF and OF as
/// the CPU sets them (a - b), every other bit kept.
pub fn cmp_flags(rflags: u64, a: u64, b: u64, size: u8) -> u64 {
    let mask = width_mask(size);
    let sign = 1u64 << (u32::from(size) * 8 - 1);
    let (a, b) = (a & mask, b & mask);
    let r = a.wrapping_sub(b) & mask;
    let mut f = rflags & !(RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF);
    if a < b {
        f |= RFLAGS_CF;
    }
    if (r & 0xff).count_ones() % 2 == 0 {
        f |= RFLAGS_PF;
    }
    if (a ^ b ^ r) & 0x10 != 0 {
        f |= RFLAGS_AF;
    }
    if r == 0 {
        f |= RFLAGS_ZF;
    }
    if r & sign != 0 {
        f |= RFLAGS_SF;
    }
    if (a ^ b) & (a ^ r) & sign != 0 {
        f |= RFLAGS_OF;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmp_flags_match_the_cpu_for_edge_cases() {
        // Equal: ZF and PF (0 has even parity).
        assert_eq!(cmp_flags(0x2, 5, 5, 4), 0x2 | 0x40 | 0x4);
        // 0 - 1 (32-bit): CF, SF, AF, PF (0xff has 8 ones).
        assert_eq!(cmp_flags(0x2, 0, 1, 4), 0x2 | 0x1 | 0x80 | 0x10 | 0x4);
        // INT8_MIN - 1: signed overflow, result 0x7f.
        assert_eq!(cmp_flags(0, 0x80, 1, 1), 0x800 | 0x10);
        // Old arithmetic flags go, other bits stay.
        assert_eq!(cmp_flags(0x200 | 0x8d5, 2, 1, 8), 0x200);
    }

    #[test]
    fn sub_registers_are_extracted() {
        let regs = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        let s = kvm_sregs::default();
        assert_eq!(register_value(&regs, &s, Register::EAX), Some(0x5566_7788));
        assert_eq!(register_value(&regs, &s, Register::AX), Some(0x7788));
        assert_eq!(register_value(&regs, &s, Register::AH), Some(0x77));
        assert_eq!(register_value(&regs, &s, Register::AL), Some(0x88));
        assert_eq!(
            register_value(&regs, &s, Register::RAX),
            Some(0x1122_3344_5566_7788)
        );
    }
}
