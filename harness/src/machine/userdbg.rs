//! Software breakpoints and single steps in guest user mode on hosts that
//! deliver them to the guest.
//!
//! On software-nested KVM (measured by [`crate::vm::user_debug_probe`] at
//! startup) user code (CPL3) runs natively: an `int3` raises #BP through the
//! guest's IDT instead of exiting to lunavm, and a `KVM_GUESTDBG_SINGLESTEP`
//! step raises #DB (vector 1) there. Kernel code is emulated and execution
//! breakpoints fire there, on the first instruction of an IDT handler too.
//! So lunavm watches the two handlers:
//!
//! - While software breakpoints are set on user-accessible pages, or a step
//!   starts at CPL3, an execution breakpoint (owner [`Owner::UserDebug`])
//!   sits on each of the guest's #BP and #DB handlers, read from the IDT's
//!   vector-3 and vector-1 gates. The gates are read again at each `run` call and at every exit
//!   while the breakpoints are wanted, so they follow the guest's IDT. They
//!   stay on during lunavm's single steps (the other execution breakpoints
//!   are off then).
//! - At the #BP handler, a 64-bit exception frame from CPL3 (RIP, CS,
//!   RFLAGS, RSP, SS; no error code) whose RIP - 1 holds one of lunavm's
//!   `int3`s is undone: RIP = that address, RSP and RFLAGS from the frame,
//!   CS and SS from the GDT descriptors the frame's selectors name. The
//!   handler has not run, so GS base and the other registers are the user
//!   program's. The stop is a breakpoint at that address.
//! - At the #DB handler while lunavm single-steps, a frame from CPL3 is the
//!   step's trap: undone the same way with RIP = the frame's RIP (past the
//!   instruction) and TF, RF cleared, DR6.BS cleared in the guest's DR6;
//!   the step ends there.
//! - Anything else (the guest's own `int3` or #DB, a frame from CPL0, an
//!   unreadable stack or GDT) goes on to the guest's handler after a single
//!   step over the breakpoint. All of it is harness-caused: no virtual time
//!   passes and no guest exit is counted.
//!
//! A guest whose #BP gate has DPL 0 gets #GP for a user `int3` on hardware
//! that checks it; this host delivers #BP (the `usermode` guest's gate is
//! DPL 0). A 32-bit (compatibility-mode) user program works the same way
//! (its frame is 64-bit too).

use kvm_bindings::kvm_segment;

use super::debug::{Owner, DR6_BS};
use super::{Machine, MachineError};
use crate::vm::access;
use crate::vm::regs::{paging_regs, RFLAGS_RF, RFLAGS_TF};
use crate::vm::user_debug_probe::UserDebugProbe;

/// The #DB vector.
const DB: u8 = 1;
/// The #BP vector.
const BP: u8 = 3;
/// EFER.LMA.
const EFER_LMA: u64 = 1 << 10;

/// The path's state and counters, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UserDebugReport {
    /// What the startup probe measured.
    pub probe: UserDebugProbe,
    /// Whether user-mode `int3`s go through the #BP handler breakpoint.
    pub breakpoints_active: bool,
    /// Whether user-mode steps go through the #DB handler breakpoint.
    pub steps_active: bool,
    /// The guest #BP handler the breakpoint is on, if any.
    pub bp_handler: Option<u64>,
    /// The guest #DB handler the breakpoint is on, if any.
    pub db_handler: Option<u64>,
    /// Breakpoint stops taken back from the guest's #BP handler.
    pub breakpoints: u64,
    /// Single steps taken back from the guest's #DB handler.
    pub steps: u64,
    /// The guest's own #BP or #DB passed on to its handler.
    pub passed: u64,
    /// Whether no debug register was free for a handler breakpoint.
    pub starved: bool,
}

/// The path's state inside the machine.
#[derive(Clone, Debug)]
pub struct UserDebug {
    probe: UserDebugProbe,
    bp_handler: Option<u64>,
    db_handler: Option<u64>,
    /// A requested single step from CPL3 is running.
    stepping: bool,
    breakpoints: u64,
    steps: u64,
    passed: u64,
    starved: bool,
}

impl UserDebug {
    /// The path on a host the probe measured.
    pub fn new(probe: UserDebugProbe) -> Self {
        UserDebug {
            probe,
            bp_handler: None,
            db_handler: None,
            stepping: false,
            breakpoints: 0,
            steps: 0,
            passed: 0,
            starved: false,
        }
    }

    /// Whether `pc` is one of this path's breakpoints.
    pub(crate) fn is_handler(&self, pc: u64) -> bool {
        self.bp_handler == Some(pc) || self.db_handler == Some(pc)
    }

    /// The path's breakpoint addresses (kept on during single steps).
    pub(crate) fn handlers(&self) -> impl Iterator<Item = u64> {
        self.bp_handler.into_iter().chain(self.db_handler)
    }
}

/// A user-mode exception frame (64-bit, no error code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The saved RIP.
    pub rip: u64,
    /// The saved CS selector.
    pub cs: u16,
    /// The saved RFLAGS.
    pub rflags: u64,
    /// The saved RSP.
    pub rsp: u64,
    /// The saved SS selector.
    pub ss: u16,
}

impl Frame {
    /// Parses the five quadwords at the handler's RSP; None unless the frame
    /// comes from CPL3.
    pub fn parse(raw: &[u8; 40]) -> Option<Frame> {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            u64::from_le_bytes(b)
        };
        let sel = |v: u64| u16::try_from(v & 0xffff).unwrap_or_default();
        let f = Frame {
            rip: word(0),
            cs: sel(word(1)),
            rflags: word(2),
            rsp: word(3),
            ss: sel(word(4)),
        };
        (f.cs & 3 == 3 && f.ss & 3 == 3).then_some(f)
    }
}

/// The segment register a GDT descriptor (`raw`) loads for `selector`;
/// None unless it is a present code or data segment.
pub fn segment_from_descriptor(selector: u16, raw: u64) -> Option<kvm_segment> {
    let bits = |at: u32, n: u32| (raw >> at) & ((1 << n) - 1);
    let byte = |at, n| u8::try_from(bits(at, n)).unwrap_or_default();
    let present = bits(47, 1) == 1;
    let s = bits(44, 1) == 1;
    if !present || !s {
        return None;
    }
    let g = bits(55, 1) == 1;
    let limit = u32::try_from(bits(0, 16) | bits(48, 4) << 16).unwrap_or_default();
    Some(kvm_segment {
        base: bits(16, 24) | bits(56, 8) << 24,
        limit: if g { limit << 12 | 0xfff } else { limit },
        selector,
        // Loading a segment sets its accessed bit (VMX insists on it).
        type_: byte(40, 4) | 1,
        present: 1,
        dpl: byte(45, 2),
        db: byte(54, 1),
        s: 1,
        l: byte(53, 1),
        g: u8::from(g),
        avl: byte(52, 1),
        ..Default::default()
    })
}

/// The registers a CPL3 exception frame gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unwound {
    /// RIP to resume at.
    pub rip: u64,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
}

/// Undoes a #BP (`step` false: RIP back onto the `int3`) or a single-step
/// #DB (`step` true: RIP stays past the instruction, TF cleared).
pub fn unwind(frame: &Frame, step: bool) -> Unwound {
    let mut rflags = frame.rflags & !RFLAGS_RF;
    if step {
        rflags &= !RFLAGS_TF;
    }
    Unwound {
        rip: if step {
            frame.rip
        } else {
            frame.rip.wrapping_sub(1)
        },
        rsp: frame.rsp,
        rflags: rflags | 0x2,
    }
}

/// What a hit at a handler breakpoint was.
pub(crate) enum Hit {
    /// One of lunavm's `int3`s in user mode, undone: stop at this address.
    Breakpoint(u64),
    /// lunavm's single step in user mode, undone: RIP is past the instruction.
    Stepped(u64),
    /// The guest's own exception: step over the breakpoint into its handler.
    Pass,
}

impl Machine {
    /// The path's state, for reports.
    pub fn user_debug(&self) -> UserDebugReport {
        let u = &self.user_debug;
        UserDebugReport {
            probe: u.probe.clone(),
            breakpoints_active: u.probe.int3_needs_idt(),
            steps_active: u.probe.step_needs_idt(),
            bp_handler: u.bp_handler,
            db_handler: u.db_handler,
            breakpoints: u.breakpoints,
            steps: u.steps,
            passed: u.passed,
            starved: u.starved,
        }
    }

    /// Whether the handler breakpoints are wanted now.
    fn user_debug_wanted(&self) -> (bool, bool) {
        let u = &self.user_debug;
        let sw = self.sw_breakpoints.list().iter().any(|b| b.user);
        let bp = sw && u.probe.int3_needs_idt();
        // A step over one of those breakpoints, or a requested step.
        let db = (sw || u.stepping) && u.probe.step_needs_idt();
        (bp, db)
    }

    /// Whether the path wants a handler breakpoint now (the gates are read
    /// again at every exit then).
    pub(crate) fn user_debug_wants(&self) -> bool {
        let (bp, db) = self.user_debug_wanted();
        bp || db
    }

    /// Starts a run: `stepping` when it is a requested single step.
    pub(crate) fn user_debug_begin(&mut self, stepping: bool) -> Result<(), MachineError> {
        self.user_debug.stepping =
            stepping && self.user_debug.probe.step_needs_idt() && self.sregs()?.cs.dpl == 3;
        self.sync_user_debug()
    }

    /// Puts the breakpoints on the handlers the guest's IDT names now (or
    /// takes them off when not wanted).
    pub(crate) fn sync_user_debug(&mut self) -> Result<(), MachineError> {
        let (want_bp, want_db) = self.user_debug_wanted();
        let bp = if want_bp { self.idt_handler(BP)? } else { None };
        let db = if want_db { self.idt_handler(DB)? } else { None };
        let old_bp = self.user_debug.bp_handler;
        let old_db = self.user_debug.db_handler;
        if (bp, db) == (old_bp, old_db) {
            return Ok(());
        }
        self.user_debug.bp_handler = self.move_handler_bp(old_bp, bp)?;
        self.user_debug.db_handler = self.move_handler_bp(old_db, db)?;
        Ok(())
    }

    /// Moves one handler breakpoint from `old` to `new`; where it is now.
    fn move_handler_bp(
        &mut self,
        old: Option<u64>,
        new: Option<u64>,
    ) -> Result<Option<u64>, MachineError> {
        if old == new {
            return Ok(old);
        }
        if let Some(old) = old {
            self.remove_breakpoint(old, Owner::UserDebug)?;
        }
        let Some(new) = new else {
            return Ok(None);
        };
        match self.add_breakpoint(new, Owner::UserDebug) {
            Ok(_) => {
                self.user_debug.starved = false;
                Ok(Some(new))
            }
            Err(MachineError::DebugRegs(_)) => {
                self.user_debug.starved = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The address in the IDT's gate for `vector`, in long mode with a
    /// present gate.
    pub(crate) fn idt_handler(&self, vector: u8) -> Result<Option<u64>, MachineError> {
        let sregs = self.sregs()?;
        let offset = u64::from(vector) * 16;
        if sregs.efer & EFER_LMA == 0 || u64::from(sregs.idt.limit) < offset + 15 {
            return Ok(None);
        }
        let mut gate = [0u8; 16];
        let at = sregs.idt.base.wrapping_add(offset);
        if access::read_virt(&self.vm.mem, &paging_regs(&sregs), at, &mut gate).is_err() {
            return Ok(None);
        }
        if gate[5] & 0x80 == 0 {
            return Ok(None);
        }
        let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
        let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
        let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
        Ok(Some(lo | mid << 16 | hi << 32))
    }

    /// The segment the GDT gives `selector` (None for an LDT selector or an
    /// unreadable or unusable descriptor).
    fn gdt_segment(&self, selector: u16) -> Result<Option<kvm_segment>, MachineError> {
        let sregs = self.sregs()?;
        let index = u64::from(selector & !7);
        if selector & 4 != 0 || index == 0 || index + 7 > u64::from(sregs.gdt.limit) {
            return Ok(None);
        }
        let mut raw = [0u8; 8];
        let at = sregs.gdt.base.wrapping_add(index);
        if access::read_virt(&self.vm.mem, &paging_regs(&sregs), at, &mut raw).is_err() {
            return Ok(None);
        }
        Ok(segment_from_descriptor(selector, u64::from_le_bytes(raw)))
    }

    /// Handles a stop at a handler breakpoint at `pc`; `stepping` when
    /// lunavm's single step is armed.
    pub(crate) fn user_debug_hit(&mut self, pc: u64, stepping: bool) -> Result<Hit, MachineError> {
        let at_bp = self.user_debug.bp_handler == Some(pc);
        let at_db = self.user_debug.db_handler == Some(pc) && stepping;
        let unwound = if at_bp || at_db {
            self.user_frame()?
        } else {
            None
        };
        let Some((frame, cs, ss)) = unwound else {
            self.user_debug.passed += 1;
            return Ok(Hit::Pass);
        };
        if at_bp && self.is_sw_breakpoint(frame.rip.wrapping_sub(1)) {
            let u = unwind(&frame, false);
            self.restore_user(&u, cs, ss)?;
            self.user_debug.breakpoints += 1;
            return Ok(Hit::Breakpoint(u.rip));
        }
        if at_db {
            let u = unwind(&frame, true);
            self.restore_user(&u, cs, ss)?;
            self.clear_dr6_bs()?;
            self.user_debug.steps += 1;
            return Ok(Hit::Stepped(u.rip));
        }
        self.user_debug.passed += 1;
        Ok(Hit::Pass)
    }

    /// The CPL3 frame at RSP with its CS and SS segments, when the vCPU is
    /// at CPL0 and all of it is readable.
    fn user_frame(&self) -> Result<Option<(Frame, kvm_segment, kvm_segment)>, MachineError> {
        let regs = self.regs()?;
        let sregs = self.sregs()?;
        if sregs.cs.dpl != 0 {
            return Ok(None);
        }
        let mut raw = [0u8; 40];
        if access::read_virt(&self.vm.mem, &paging_regs(&sregs), regs.rsp, &mut raw).is_err() {
            return Ok(None);
        }
        let Some(frame) = Frame::parse(&raw) else {
            return Ok(None);
        };
        let (Some(cs), Some(ss)) = (self.gdt_segment(frame.cs)?, self.gdt_segment(frame.ss)?)
        else {
            return Ok(None);
        };
        Ok(Some((frame, cs, ss)))
    }

    fn restore_user(
        &mut self,
        u: &Unwound,
        cs: kvm_segment,
        ss: kvm_segment,
    ) -> Result<(), MachineError> {
        let mut sregs = self.sregs()?;
        let mut regs = self.regs()?;
        sregs.cs = cs;
        sregs.ss = ss;
        regs.rip = u.rip;
        regs.rsp = u.rsp;
        regs.rflags = u.rflags;
        self.set_sregs(&sregs)?;
        self.set_regs(&regs)
    }

    /// The step's #DB set DR6.BS in the guest's DR6; it never happened.
    fn clear_dr6_bs(&mut self) -> Result<(), MachineError> {
        let vcpu = self.vcpu();
        let kvm = |what| move |source| MachineError::Kvm { what, source };
        let mut dr = vcpu
            .get_debug_regs()
            .map_err(kvm("read the debug registers"))?;
        if dr.dr6 & DR6_BS != 0 {
            dr.dr6 &= !DR6_BS;
            vcpu.set_debug_regs(&dr)
                .map_err(kvm("write the debug registers"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_frame(rip: u64, cs: u64, rflags: u64, rsp: u64, ss: u64) -> [u8; 40] {
        let mut raw = [0u8; 40];
        for (i, v) in [rip, cs, rflags, rsp, ss].into_iter().enumerate() {
            raw[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        raw
    }

    #[test]
    fn a_breakpoint_frame_unwinds_onto_the_int3() {
        let raw = raw_frame(0x8000_0001, 0x33, 0x603 | RFLAGS_RF, 0x8000_1fc0, 0x2b);
        let f = Frame::parse(&raw).unwrap();
        assert_eq!((f.cs, f.ss), (0x33, 0x2b));
        let u = unwind(&f, false);
        assert_eq!(
            u,
            Unwound {
                rip: 0x8000_0000,
                rsp: 0x8000_1fc0,
                rflags: 0x603
            }
        );
    }

    #[test]
    fn a_step_frame_keeps_rip_and_drops_tf() {
        let raw = raw_frame(0x8000_000a, 0x33, 0x603 | RFLAGS_TF, 0x8000_1fc0, 0x2b);
        let u = unwind(&Frame::parse(&raw).unwrap(), true);
        assert_eq!((u.rip, u.rflags), (0x8000_000a, 0x603));
    }

    #[test]
    fn kernel_frames_are_not_unwound() {
        assert!(Frame::parse(&raw_frame(0x1000, 0x08, 0x2, 0x9000, 0x10)).is_none());
        assert!(Frame::parse(&[0xff; 40]).is_some_and(|f| f.cs == 0xffff));
    }

    #[test]
    fn descriptors_decode_to_segments() {
        // The usermode guest's 64-bit user code and user data descriptors.
        let cs = segment_from_descriptor(0x33, 0x00af_fa00_0000_ffff).unwrap();
        assert_eq!((cs.l, cs.db, cs.dpl, cs.type_, cs.s), (1, 0, 3, 0xb, 1));
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ss = segment_from_descriptor(0x2b, 0x00cf_f200_0000_ffff).unwrap();
        assert_eq!((ss.l, ss.db, ss.dpl, ss.type_), (0, 1, 3, 0x3));
        // Not present, or a system descriptor (a TSS).
        assert!(segment_from_descriptor(0x33, 0x00af_7a00_0000_ffff).is_none());
        assert!(segment_from_descriptor(0x40, 0x0000_8900_0000_0067).is_none());
        // Base and byte-granular limit.
        let s = segment_from_descriptor(0x2b, 0x1240_f256_7800_0fff).unwrap();
        assert_eq!((s.base, s.limit), (0x1256_7800, 0x0_0fff));
    }
}
