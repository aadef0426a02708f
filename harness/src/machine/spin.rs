//! Spin waits found at kicks. A guest that runs 20 ms of host time without
//! an exit is kicked ([`super::kick`]); it is either computing (then it needs
//! nothing and must not be disturbed: an interrupt injected at a host-timed
//! point of a computation is what makes runs differ) or waiting for a timer
//! in a loop that changes nothing (`while (ticks == jiffies);`, a user-mode
//! `pause; jmp`). lunavm tells them apart by single-stepping the guest (at
//! most [`MAX_STEPS`] harness-caused steps, no virtual time) and looking for
//! a cycle: a state (RIP, RFLAGS, the general registers) it has been in
//! before, with no instruction of the cycle writing memory. Such a loop is a
//! fixed point of the whole machine (nothing but the vCPU changes memory
//! between exits), so every run that reaches it is in the same state whichever
//! iteration the kick interrupted. lunavm steps on to the cycle's canonical
//! state (the smallest by RIP, then registers) and only then moves virtual
//! time to the next timer deadline: the interrupt arrives at the same state
//! in every run, and the spin wait is deterministic.
//!
//! Probes single-step only in kernel mode (CPL0): on software-nested KVM a
//! single step of user-mode code raises #DB in the guest instead of exiting
//! (Linux then kills the process with SIGTRAP). In user mode lunavm reads
//! the loop instead ([`static_cycle`]): when the code from RIP is a cycle of
//! at most [`MAX_STATIC`] instructions that change nothing but RIP (`pause`,
//! `nop`, unconditional relative `jmp`: an idle `for (;;) pause();`), every
//! iteration is the same state; lunavm moves RIP to the cycle's lowest
//! address and virtual time to the deadline, a spin wait like the kernel's.
//! Any other user-mode code at a kick is taken for a computation and left
//! alone, as in kernel mode.
//!
//! A kick that finds no such loop changes nothing (the guest is computing).
//! Only when [`FALLBACK_KICKS`] kicks in a row found no guest-caused exit and
//! no spin (a wait loop that counts, or one longer than the probe) does
//! virtual time jump where the guest happens to be: the old host-timed kick,
//! counted as a determinism hole.

use iced_x86::{
    Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
};
use kvm_bindings::{kvm_regs, kvm_sregs, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP};

use super::trace::ExitKind;
use super::{Machine, MachineError};
use crate::vm::access;
use crate::vm::regs::{code_bitness, paging_regs, RFLAGS_RF, RFLAGS_TF};

/// Most single steps a probe takes looking for a cycle.
pub const MAX_STEPS: usize = 64;

/// Most instructions of a user-mode loop [`static_cycle`] follows.
pub const MAX_STATIC: usize = 16;

/// Kicks in a row without a guest-caused exit (about this many times 20 ms
/// of host time) after which virtual time jumps even though no spin wait was
/// found: the host-timed fallback that keeps a guest waiting in a loop that
/// counts (e.g. Linux's `calibrate_delay` without `lpj=`) going.
pub const FALLBACK_KICKS: u32 = 500;

/// The state a probe compares between steps: RIP first (the canonical state
/// is the smallest), RFLAGS without TF and RF, the 16 general registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct State([u64; 18]);

impl State {
    /// The state in `r`.
    pub fn of(r: &kvm_regs) -> State {
        State([
            r.rip,
            r.rflags & !(RFLAGS_TF | RFLAGS_RF),
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            r.rsp,
            r.rbp,
            r.r8,
            r.r9,
            r.r10,
            r.r11,
            r.r12,
            r.r13,
            r.r14,
            r.r15,
        ])
    }

    /// Its RIP.
    pub fn rip(&self) -> u64 {
        self.0[0]
    }
}

/// What a probe concluded after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Step again.
    Continue,
    /// The guest is in a spin wait, at the cycle's canonical state.
    Spin,
    /// No spin wait (no cycle within [`MAX_STEPS`], or one that writes memory).
    NotSpin,
}

/// One probe: the states seen since the kick.
#[derive(Clone, Debug)]
pub struct Probe {
    states: Vec<State>,
    /// The canonical state, once a cycle was found: step until the guest is in it.
    target: Option<State>,
    /// Steps taken.
    steps: usize,
}

impl Probe {
    /// A probe starting in `first` (the state at the kick).
    pub fn new(first: State) -> Probe {
        Probe {
            states: vec![first],
            target: None,
            steps: 0,
        }
    }

    /// The guest is in `s` after one more step. `writes_memory(cycle)` says
    /// whether an instruction at one of the cycle's states writes memory.
    pub fn step(&mut self, s: State, writes_memory: impl FnOnce(&[State]) -> bool) -> Verdict {
        self.steps += 1;
        if let Some(target) = self.target {
            // A cycle is at most MAX_STEPS long: the target comes within it.
            return if s == target {
                Verdict::Spin
            } else if self.steps > 2 * MAX_STEPS {
                Verdict::NotSpin
            } else {
                Verdict::Continue
            };
        }
        if let Some(start) = self.states.iter().position(|x| *x == s) {
            let cycle = &self.states[start..];
            if writes_memory(cycle) {
                return Verdict::NotSpin;
            }
            let head = cycle.iter().copied().min().unwrap_or(s);
            if head == s {
                return Verdict::Spin;
            }
            self.target = Some(head);
            return Verdict::Continue;
        }
        if self.steps >= MAX_STEPS {
            return Verdict::NotSpin;
        }
        self.states.push(s);
        Verdict::Continue
    }
}

/// A probe in progress, with what it needs to decode the guest's code.
pub(crate) struct Active {
    probe: Probe,
    sregs: kvm_sregs,
}

/// What the run loop does with an exit while a probe is active.
pub(crate) enum ProbeExit {
    /// The probe's own single step: swallowed (harness-caused, no virtual time).
    Swallowed,
    /// Any other exit: the guest was not spinning without exits; the probe
    /// is over and the exit is handled as usual.
    Pass,
}

impl Machine {
    /// Whether a kick may start a probe: nothing else is stepping the guest
    /// and no interrupt is waiting to be injected (it would have to wait for
    /// the probe, at a host-timed point).
    fn can_probe(&self) -> bool {
        self.spin.is_none()
            && !self.step_over_armed
            && !self.step_over_now
            && !self.resume_over_breakpoint
            && self.watches.pending.is_none()
            && !self.block_interrupts
            && !self.platform.pending()
    }

    /// A kick found no exit for 20 ms of host time while a timer deadline
    /// is pending: look for a spin wait, or after [`FALLBACK_KICKS`] kicks in
    /// a row, move virtual time (host-timed). Returns the fallback jump's
    /// deadline when it is due.
    pub(crate) fn kick_with_deadline(
        &mut self,
        deadline: u64,
    ) -> Result<Option<u64>, MachineError> {
        let exits = self.clock.guest_exits();
        if exits == self.kick_mark {
            self.kicks_in_a_row += 1;
        } else {
            self.kick_mark = exits;
            self.kicks_in_a_row = 1;
        }
        if self.kicks_in_a_row >= FALLBACK_KICKS {
            self.kicks_in_a_row = 0;
            return Ok(Some(deadline));
        }
        let sregs = self.sregs()?;
        if sregs.cs.selector & 3 != 0 {
            // User mode: single steps there reach the guest as #DB on some
            // hosts (software-nested KVM), so no probe; a loop that changes
            // nothing is recognised from its code. Anything else is taken
            // for a computation (on software-nested KVM, user code that
            // page-faults spends its time in the guest kernel's emulated
            // handlers without an exit) and left alone, like a kernel-mode
            // kick that finds no spin wait: only the fallback after
            // FALLBACK_KICKS in a row moves time host-timed.
            if self.can_probe() {
                let mut regs = self.regs()?;
                if let Some(head) = self.user_spin_head(&sregs, regs.rip) {
                    if head != regs.rip {
                        regs.rip = head;
                        self.set_regs(&regs)?;
                    }
                    self.kicks_in_a_row = 0;
                    self.spin_wait_found(head);
                }
            }
            return Ok(None);
        }
        if self.can_probe() {
            let regs = self.regs()?;
            self.spin = Some(Active {
                probe: Probe::new(State::of(&regs)),
                sregs,
            });
            self.apply_debug_regs()?;
        }
        Ok(None)
    }

    /// The guest debug flags the probe adds to the breakpoints' own.
    pub(crate) fn probe_debug_flags(&self) -> u32 {
        if self.spin.is_some() {
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        } else {
            0
        }
    }

    /// Ends the probe and puts the breakpoints' own debug setting back.
    pub(crate) fn end_probe(&mut self) -> Result<(), MachineError> {
        if self.spin.take().is_some() {
            self.apply_debug_regs()?;
        }
        Ok(())
    }

    /// An exit while a probe is active. `debug` is the (pc, exception) of a
    /// debug exit, None for any other exit.
    pub(crate) fn probe_exit(
        &mut self,
        debug: Option<(u64, u32)>,
    ) -> Result<ProbeExit, MachineError> {
        const DB_VECTOR: u32 = 1;
        let ours = match debug {
            Some((pc, DB_VECTOR)) => {
                !self.step_over_armed
                    && self.debug_regs.owners_at(pc).next().is_none()
                    && !self.is_sw_breakpoint(pc)
                    && !self.is_fuzz_breakpoint(pc)
            }
            _ => false,
        };
        if !ours {
            self.end_probe()?;
            return Ok(ProbeExit::Pass);
        }
        let regs = self.regs()?;
        let state = State::of(&regs);
        let verdict = match self.spin.take() {
            Some(mut active) => {
                let sregs = active.sregs;
                let v = active
                    .probe
                    .step(state, |cycle| self.cycle_writes_memory(cycle, &sregs));
                self.spin = Some(active);
                v
            }
            None => Verdict::NotSpin,
        };
        match verdict {
            Verdict::Continue => {}
            Verdict::NotSpin => self.end_probe()?,
            Verdict::Spin => {
                self.end_probe()?;
                self.spin_wait_found(state.rip());
            }
        }
        Ok(ProbeExit::Swallowed)
    }

    /// The guest waits in a spin loop, at its canonical state: virtual time
    /// moves to the next timer deadline (not past the run's time limit).
    fn spin_wait_found(&mut self, _rip: u64) {
        let Some(deadline) = self.next_timer_deadline() else {
            return;
        };
        let now = self.clock.now_ns();
        let target = self
            .run_time_limit
            .map_or(deadline, |l| deadline.min(l))
            .max(now);
        self.exits.spin_waits += 1;
        self.record(ExitKind::SpinWait, 0, target);
        self.clock.advance(target - now);
    }

    /// The lowest address of the side-effect-free loop the user-mode code
    /// at `rip` is in ([`static_cycle`]), reading the code through the
    /// guest's page tables.
    fn user_spin_head(&self, sregs: &kvm_sregs, rip: u64) -> Option<u64> {
        let pregs = paging_regs(sregs);
        let bitness = code_bitness(sregs);
        let cs_base = if bitness == 64 { 0 } else { sregs.cs.base };
        static_cycle(rip, |ip| {
            let mut buf = [0u8; 15];
            let n =
                access::read_virt_prefix(&self.vm.mem, &pregs, ip.wrapping_add(cs_base), &mut buf);
            let insn = Decoder::with_ip(bitness, &buf[..n], ip, DecoderOptions::NONE).decode();
            (n > 0 && !insn.is_invalid()).then_some(insn)
        })
    }

    /// Whether an instruction at one of `cycle`'s states writes memory (or
    /// cannot be read or decoded: then it counts as writing).
    fn cycle_writes_memory(&self, cycle: &[State], sregs: &kvm_sregs) -> bool {
        let pregs = paging_regs(sregs);
        let bitness = code_bitness(sregs);
        let mut info = InstructionInfoFactory::new();
        cycle.iter().any(|s| {
            let mut buf = [0u8; 15];
            // RIP is linear for 64-bit code; other modes add CS.base.
            let rip = if bitness == 64 {
                s.rip()
            } else {
                s.rip().wrapping_add(sregs.cs.base)
            };
            let n = access::read_virt_prefix(&self.vm.mem, &pregs, rip, &mut buf);
            if n == 0 {
                return true;
            }
            let insn = Decoder::with_ip(bitness, &buf[..n], s.rip(), DecoderOptions::NONE).decode();
            if insn.is_invalid() {
                return true;
            }
            info.info(&insn).used_memory().iter().any(|m| {
                matches!(
                    m.access(),
                    OpAccess::Write
                        | OpAccess::CondWrite
                        | OpAccess::ReadWrite
                        | OpAccess::ReadCondWrite
                )
            })
        })
    }
}

/// Whether `insn` changes nothing but RIP: `pause`, a `nop` (any form) or
/// an unconditional near relative `jmp`.
fn changes_only_rip(insn: &Instruction) -> bool {
    match insn.mnemonic() {
        Mnemonic::Pause | Mnemonic::Nop => true,
        Mnemonic::Jmp => matches!(
            insn.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        ),
        _ => false,
    }
}

/// Follows the code from `rip` (`decode` gives the instruction at an
/// address, None when it cannot be read) for at most [`MAX_STATIC`]
/// instructions: when it comes back to `rip` through instructions that
/// change nothing but RIP, the loop is a fixed point of the machine, and the
/// result is its lowest address (the canonical state). None otherwise.
pub fn static_cycle(rip: u64, mut decode: impl FnMut(u64) -> Option<Instruction>) -> Option<u64> {
    let mut ip = rip;
    let mut head = rip;
    for _ in 0..MAX_STATIC {
        let insn = decode(ip)?;
        if !changes_only_rip(&insn) {
            return None;
        }
        ip = if insn.mnemonic() == Mnemonic::Jmp {
            insn.near_branch_target()
        } else {
            insn.next_ip()
        };
        if ip == rip {
            return Some(head);
        }
        head = head.min(ip);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(rip: u64, rax: u64) -> State {
        let mut s = [0u64; 18];
        s[0] = rip;
        s[2] = rax;
        State(s)
    }

    #[test]
    fn a_two_instruction_loop_is_a_spin_at_its_lowest_rip() {
        // pause at 0x1000, jmp at 0x1002; the kick lands on the jmp.
        let mut p = Probe::new(st(0x1002, 7));
        assert_eq!(p.step(st(0x1000, 7), |_| false), Verdict::Continue);
        // Back at the jmp: a cycle {0x1002, 0x1000}; its head is 0x1000.
        assert_eq!(p.step(st(0x1002, 7), |_| false), Verdict::Continue);
        assert_eq!(p.step(st(0x1000, 7), |_| false), Verdict::Spin);
    }

    #[test]
    fn the_kick_on_the_head_is_a_spin_at_once() {
        let mut p = Probe::new(st(0x1000, 1));
        assert_eq!(p.step(st(0x1004, 1), |_| false), Verdict::Continue);
        assert_eq!(p.step(st(0x1000, 1), |c| c.len() != 2), Verdict::Spin);
    }

    #[test]
    fn a_counting_loop_is_not_a_spin() {
        // The register changes every iteration: no state repeats.
        let mut p = Probe::new(st(0x1000, 0));
        let mut v = Verdict::Continue;
        let mut n = 0;
        while v == Verdict::Continue {
            n += 1;
            v = p.step(st(0x1000 + (n % 2) * 4, n / 2), |_| false);
        }
        assert_eq!(v, Verdict::NotSpin);
        assert_eq!(n, MAX_STEPS as u64);
    }

    #[test]
    fn a_loop_that_writes_memory_is_not_a_spin() {
        let mut p = Probe::new(st(0x1000, 0));
        assert_eq!(p.step(st(0x1003, 0), |_| false), Verdict::Continue);
        assert_eq!(p.step(st(0x1000, 0), |_| true), Verdict::NotSpin);
    }

    /// Decodes 64-bit `code` placed at `base`.
    fn decoder(base: u64, code: &[u8]) -> impl FnMut(u64) -> Option<Instruction> + '_ {
        move |ip| {
            let off = usize::try_from(ip.checked_sub(base)?).ok()?;
            let bytes = code.get(off..)?;
            let insn = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE).decode();
            (!bytes.is_empty() && !insn.is_invalid()).then_some(insn)
        }
    }

    #[test]
    fn an_idle_pause_loop_is_a_user_mode_spin_at_its_lowest_address() {
        // 0x400000: pause (f3 90); jmp 0x400000 (eb fc).
        let code = [0xf3, 0x90, 0xeb, 0xfc];
        assert_eq!(
            static_cycle(0x400002, decoder(0x400000, &code)),
            Some(0x400000)
        );
        assert_eq!(
            static_cycle(0x400000, decoder(0x400000, &code)),
            Some(0x400000)
        );
        // jmp $ (eb fe), and a loop through a long jmp back with nops.
        assert_eq!(
            static_cycle(0x1000, decoder(0x1000, &[0xeb, 0xfe])),
            Some(0x1000)
        );
        let long = [0x90, 0x0f, 0x1f, 0x00, 0xe9, 0xf7, 0xff, 0xff, 0xff];
        assert_eq!(static_cycle(0x1004, decoder(0x1000, &long)), Some(0x1000));
    }

    #[test]
    fn loops_that_compute_or_leave_are_not_user_mode_spins() {
        // inc eax; jmp back: the state changes every iteration.
        let inc = [0xff, 0xc0, 0xeb, 0xfc];
        assert_eq!(static_cycle(0x1000, decoder(0x1000, &inc)), None);
        // pause; jne back: a conditional branch (it reads a flag) is not followed.
        let jne = [0xf3, 0x90, 0x75, 0xfc];
        assert_eq!(static_cycle(0x1000, decoder(0x1000, &jne)), None);
        // A straight line of nops that never comes back, and unreadable code.
        assert_eq!(static_cycle(0x1000, decoder(0x1000, &[0x90; 40])), None);
        assert_eq!(static_cycle(0x2000, decoder(0x1000, &[0x90])), None);
        // jmp [rax]: indirect.
        assert_eq!(static_cycle(0x1000, decoder(0x1000, &[0xff, 0x20])), None);
    }

    #[test]
    fn canonical_state_orders_by_rip_then_registers() {
        assert!(st(0x1000, 9) < st(0x1001, 0));
        assert!(st(0x1000, 1) < st(0x1000, 2));
        let mut r = kvm_regs {
            rip: 5,
            rflags: 0x202 | RFLAGS_TF | RFLAGS_RF,
            ..Default::default()
        };
        let a = State::of(&r);
        r.rflags = 0x202;
        assert_eq!(State::of(&r), a, "TF and RF are the debugger's");
        assert_eq!(a.rip(), 5);
    }
}
