//! Reverse execution for gdb (`reverse-stepi`, `reverse-continue`), built on
//! snapshots and deterministic re-execution.
//!
//! Recording is off until `monitor record on` (a checkpoint copies all of
//! guest RAM, too slow to take on every continue unasked). While it is on and
//! gdb drives the machine forward, lunavm keeps checkpoints: an in-memory
//! snapshot at the first resume, before every `continue`, and before the
//! first single step after a continue; further single steps are counted. So
//! each segment between checkpoints is either one continue or a run of gdb's
//! single steps, which inject no interrupts; the replay does the same. A position is
//! (checkpoint, single steps since it). Going back means restoring the
//! checkpoint the position lies after and single-stepping forward again:
//! the machine is deterministic, and harness-caused exits (the steps) move
//! no virtual time, so the replay reaches the same states.
//!
//! - `reverse-stepi`: to the position one step before the current one.
//! - `reverse-continue`: to the last position before the current one where
//!   RIP is at one of gdb's breakpoints; back across checkpoints, and to the
//!   first checkpoint (gdb is told the history begins there) when none is
//!   found.
//!
//! After a `continue` the number of steps from its checkpoint is unknown; it
//! is found by stepping from the checkpoint until the general registers and
//! the guest-exit count match, confirmed by a hash of memory and registers.
//! When a replay reaches the state of a later checkpoint, the hash of the
//! replayed machine is checked against the checkpoint's; on a mismatch, or
//! when the replay passes the recorded exit count without matching, lunavm
//! refuses with a message instead of showing a wrong past. Going back drops
//! the checkpoints after the new position (forward execution makes new
//! ones). So does any change gdb or `monitor lua` makes to the machine. A
//! checkpoint holds a full copy of RAM: they may take [`CHECKPOINT_BUDGET`]
//! bytes in all (at least two are kept), the oldest dropped first (the
//! history then starts later).

use kvm_bindings::kvm_regs;

use crate::machine::debug::Owner;
use crate::machine::{Machine, MachineError, StopCondition, StopReason};
use crate::snapshot::Snapshot;

/// Memory the checkpoints may take (each is a full copy of guest RAM).
pub const CHECKPOINT_BUDGET: u64 = 1 << 30;

/// At most this many single steps in one replay (a runaway guard).
const MAX_REPLAY_STEPS: u64 = 50_000_000;

/// RFLAGS bits single-stepping may change: TF, RF.
const STEP_FLAGS: u64 = (1 << 8) | (1 << 16);

/// Errors of reverse execution.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    /// The machine failed while replaying.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The replay did not reach the recorded state.
    #[error("Replay diverged: {0}; the machine is not deterministic here (see the run's determinism holes), so lunavm cannot go back")]
    Diverged(String),
}

/// One checkpoint.
struct Checkpoint {
    snap: Snapshot,
    /// gdb single-steps from here (interrupts blocked), rather than
    /// continuing.
    stepping: bool,
    /// The machine was stopped at a breakpoint (the next run steps over it).
    at_breakpoint: bool,
    /// Single steps from the previous checkpoint to this one, once known.
    steps_from_previous: Option<u64>,
}

/// The checkpoints of a gdb session and where the machine is among them.
#[derive(Default)]
pub struct History {
    checkpoints: Vec<Checkpoint>,
    /// Single steps from the last checkpoint to the machine's state, when
    /// known.
    steps: Option<u64>,
    /// Checkpoints dropped for space (the history starts later).
    pub dropped: u64,
    /// Single steps the last reverse operation replayed.
    pub replayed: u64,
}

/// Where a reverse operation ended.
pub enum Landing {
    /// At a breakpoint address.
    Breakpoint(u64),
    /// One step back.
    Stepped,
    /// At the start of the history.
    Begin,
}

/// What the replay looks for on the way.
struct Scan {
    /// Steps from the checkpoint to the end state.
    distance: u64,
    /// Positions (steps from the checkpoint) where RIP is at a breakpoint.
    hits: Vec<(u64, u64)>,
}

/// Whether two register sets are the same state (up to the flags single
/// stepping touches).
fn same_regs(a: &kvm_regs, b: &kvm_regs) -> bool {
    let mut a = *a;
    let mut b = *b;
    a.rflags &= !STEP_FLAGS;
    b.rflags &= !STEP_FLAGS;
    a == b
}

impl History {
    /// The number of checkpoints.
    pub fn len(&self) -> usize {
        self.checkpoints.len()
    }

    /// Forgets every checkpoint (the machine changed behind the history).
    pub fn reset(&mut self) {
        self.checkpoints.clear();
        self.steps = None;
    }

    /// Whether there is any history.
    pub fn is_empty(&self) -> bool {
        self.checkpoints.is_empty()
    }

    /// Before a forward run: a checkpoint here for a continue (or the first
    /// one of the history), unless the machine is at one.
    pub fn before_forward(&mut self, m: &mut Machine, stepping: bool) -> Result<(), MachineError> {
        if self.steps == Some(0) {
            // At a checkpoint, nothing run from it yet.
            if let Some(c) = self.checkpoints.last_mut() {
                c.stepping = stepping;
                return Ok(());
            }
        }
        let counting = self.checkpoints.last().is_some_and(|c| c.stepping);
        if stepping && counting && self.steps.is_some() {
            return Ok(());
        }
        let steps_from_previous = if self.checkpoints.is_empty() {
            None
        } else {
            self.steps
        };
        let snap = m.take_snapshot()?;
        let limit = usize::try_from(CHECKPOINT_BUDGET / m.config().mem_size.max(1))
            .unwrap_or(usize::MAX)
            .max(2);
        if self.checkpoints.len() >= limit {
            self.checkpoints.remove(0);
            if let Some(first) = self.checkpoints.first_mut() {
                first.steps_from_previous = None;
            }
            self.dropped += 1;
        }
        self.checkpoints.push(Checkpoint {
            snap,
            stepping,
            at_breakpoint: m.resume_over_breakpoint,
            steps_from_previous,
        });
        self.steps = Some(0);
        Ok(())
    }

    /// After a forward run: a continue leaves the step count unknown, a
    /// step adds one.
    pub fn after_forward(&mut self, stepped: bool) {
        self.steps = if stepped {
            self.steps.map(|s| s + 1)
        } else {
            None
        };
    }

    /// Goes one instruction back.
    pub fn reverse_step(&mut self, m: &mut Machine) -> Result<Landing, ReverseError> {
        self.replayed = 0;
        loop {
            let Some(last) = self.checkpoints.len().checked_sub(1) else {
                return Ok(Landing::Begin);
            };
            let distance = self.distance_to_now(m, last)?;
            if distance > 0 {
                self.goto(m, last, distance - 1)?;
                return Ok(Landing::Stepped);
            }
            // At the checkpoint itself: the step before it lies in the
            // previous segment.
            if last == 0 {
                return Ok(Landing::Begin);
            }
            self.enter_previous_segment()?;
        }
    }

    /// Goes back to the last breakpoint before now (or the history's start).
    pub fn reverse_continue(&mut self, m: &mut Machine) -> Result<Landing, ReverseError> {
        let breakpoints = gdb_breakpoints(m);
        self.replayed = 0;
        loop {
            let Some(last) = self.checkpoints.len().checked_sub(1) else {
                return Ok(Landing::Begin);
            };
            let end = m.regs()?;
            let end_exits = m.clock().guest_exits();
            let scan = self.scan(m, last, &end, end_exits, &breakpoints, self.steps)?;
            self.steps = Some(scan.distance);
            if let Some(&(pos, addr)) = scan.hits.iter().rev().find(|(p, _)| *p < scan.distance) {
                self.goto(m, last, pos)?;
                return Ok(Landing::Breakpoint(addr));
            }
            if last == 0 {
                self.goto(m, 0, 0)?;
                return Ok(Landing::Begin);
            }
            // Nothing in this segment: the machine is now at its start; look
            // in the previous one.
            self.goto(m, last, 0)?;
            self.enter_previous_segment()?;
        }
    }

    /// Steps from the last checkpoint to the machine's state now.
    fn distance_to_now(&mut self, m: &mut Machine, last: usize) -> Result<u64, ReverseError> {
        if let Some(d) = self.steps {
            return Ok(d);
        }
        let end = m.regs()?;
        let end_exits = m.clock().guest_exits();
        let scan = self.scan(m, last, &end, end_exits, &[], None)?;
        self.steps = Some(scan.distance);
        Ok(scan.distance)
    }

    /// Moves the position to the end of the previous segment (the state of
    /// the last checkpoint, which the machine is at), dropping that
    /// checkpoint.
    fn enter_previous_segment(&mut self) -> Result<(), ReverseError> {
        let Some(gone) = self.checkpoints.pop() else {
            return Ok(());
        };
        self.steps = gone.steps_from_previous;
        Ok(())
    }

    /// Restores checkpoint `index` and replays until the machine is in the
    /// state `end` (registers) with `end_exits` guest exits: the number of
    /// steps (checked against `known` when given, and against the machine's
    /// full state hash) and the breakpoint positions on the way. Leaves the
    /// machine at the end state.
    fn scan(
        &mut self,
        m: &mut Machine,
        index: usize,
        end: &kvm_regs,
        end_exits: u64,
        breakpoints: &[u64],
        known: Option<u64>,
    ) -> Result<Scan, ReverseError> {
        // The state to reach, by hash (memory and registers).
        let end_hash = hash_without_breakpoints(m)?;
        let mut hits = Vec::new();
        let blocked = self.stepping_from(index);
        self.restore(m, index)?;
        let mut steps = 0u64;
        loop {
            let regs = m.regs()?;
            let exits = m.clock().guest_exits();
            let at_end = match known {
                Some(k) => steps == k,
                None => exits == end_exits && same_regs(&regs, end),
            };
            if at_end {
                if hash_without_breakpoints(m)? == end_hash {
                    return Ok(Scan {
                        distance: steps,
                        hits,
                    });
                }
                if known.is_some() {
                    return Err(ReverseError::Diverged(format!(
                        "after {steps} steps from the checkpoint the memory and registers differ from the recorded state"
                    )));
                }
            }
            if breakpoints.contains(&regs.rip) {
                hits.push((steps, regs.rip));
            }
            if exits > end_exits || steps >= MAX_REPLAY_STEPS {
                return Err(ReverseError::Diverged(format!(
                    "{steps} steps from the checkpoint (at {exits} guest exits, {end_exits} recorded) never reached the recorded state"
                )));
            }
            step(m, blocked)?;
            steps += 1;
            self.replayed += 1;
        }
    }

    /// Restores checkpoint `index` and steps `steps` times from it; the
    /// later checkpoints are dropped.
    fn goto(&mut self, m: &mut Machine, index: usize, steps: u64) -> Result<(), ReverseError> {
        let blocked = self.stepping_from(index);
        self.restore(m, index)?;
        for _ in 0..steps {
            step(m, blocked)?;
        }
        self.replayed += steps;
        self.checkpoints.truncate(index + 1);
        self.steps = Some(steps);
        if steps > 0 {
            // A continue from a breakpoint address steps over it first.
            let rip = m.regs()?.rip;
            m.resume_over_breakpoint = gdb_breakpoints(m).contains(&rip);
        }
        Ok(())
    }

    /// Whether gdb single-stepped from checkpoint `index` (so the replay
    /// blocks interrupts too).
    fn stepping_from(&self, index: usize) -> bool {
        self.checkpoints.get(index).is_some_and(|c| c.stepping)
    }

    /// Restores checkpoint `index` (as it was taken).
    fn restore(&mut self, m: &mut Machine, index: usize) -> Result<(), ReverseError> {
        let Some(c) = self.checkpoints.get(index) else {
            return Err(ReverseError::Diverged("no such checkpoint".into()));
        };
        m.restore_snapshot(&c.snap)?;
        m.resume_over_breakpoint = c.at_breakpoint;
        Ok(())
    }
}

/// One single step of the replay (with interrupts blocked when the
/// original was gdb's step).
fn step(m: &mut Machine, block_interrupts: bool) -> Result<(), ReverseError> {
    let cond = StopCondition {
        single_step: true,
        block_interrupts,
        ..StopCondition::default()
    };
    match m.run(&cond)? {
        StopReason::Stepped { .. } | StopReason::Watch { .. } => Ok(()),
        other => Err(ReverseError::Diverged(format!(
            "a replayed step ended the run ({})",
            other.describe()
        ))),
    }
}

/// The state hash of the machine with gdb's `int3`s lifted (checkpoints
/// never hold them).
fn hash_without_breakpoints(m: &mut Machine) -> Result<u64, MachineError> {
    m.lift_sw_breakpoints();
    let h = m.current_state_hash();
    m.insert_sw_breakpoints();
    h
}

/// The addresses of gdb's breakpoints, software and hardware.
fn gdb_breakpoints(m: &Machine) -> Vec<u64> {
    let mut v: Vec<u64> = m
        .sw_breakpoints()
        .list()
        .iter()
        .filter(|b| b.owner == Owner::Gdb)
        .map(|b| b.addr)
        .collect();
    v.extend(m.debug_regs().addresses(Owner::Gdb));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_compare_without_the_step_flags() {
        let a = kvm_regs {
            rip: 0x1000,
            rflags: 0x2,
            ..Default::default()
        };
        let mut b = a;
        b.rflags |= 1 << 16;
        assert!(same_regs(&a, &b));
        b.rax = 1;
        assert!(!same_regs(&a, &b));
    }
}
