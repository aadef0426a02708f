//! Reverse execution for gdb (`reverse-stepi`, `reverse-continue`), built on
//! incremental checkpoints and deterministic re-execution.
//!
//! **Positions.** A position in a run is (guest-caused exit count, single
//! steps since that exit), the machine's own counter
//! ([`crate::clock::Clock::guest_exits`]): exits lunavm causes (single steps,
//! breakpoints, watch completions, kicks) neither count nor move virtual
//! time. Steps are counted from the later of the exit and the checkpoint the
//! segment starts at, and only when needed: the stop of a `continue` (or a
//! landing on a breakpoint) is known by its exit count and its state, and
//! the steps from the exit to it are found by single-stepping that one exit
//! interval when a `reverse-stepi` needs them.
//!
//! **Recording** (`monitor record on`; off by default). At the first resume
//! the journal ([`crate::snapshot::journal`]) copies RAM once; after that a
//! checkpoint holds the pages written since the one before and the machine
//! state without memory. Checkpoints are taken at resumes (before a
//! `continue`, before the first `stepi` after a continue, and every
//! [`STEP_CHECKPOINT`] gdb steps) and, inside a `continue`, at guest-caused
//! exits: the continue runs in chunks of [`CHECKPOINT_EXITS`] exits and a
//! checkpoint is taken at each chunk's end. So each segment between
//! checkpoints is either native execution or gdb's single steps (which
//! inject no interrupts; their replay neither). At every guest-caused exit
//! the machine hashes the exit (kind, port or address, data), virtual time,
//! the interrupts injected so far and the general and special registers
//! ([`crate::machine::trace::ExitMark`]); the history keeps these marks.
//! Checkpoints and marks may take [`CHECKPOINT_BUDGET`] bytes besides the
//! one copy of RAM; beyond it the oldest checkpoints are folded into that
//! copy (the history then starts later; at least two are kept).
//!
//! **Replay.** Going back restores the nearest checkpoint at or before the
//! target (O(pages written since)) and re-executes: natively (`KVM_RUN`,
//! interrupts injected at exits from virtual time exactly as recorded) up to
//! the target's exit count, and on to the target itself: in gdb's stepping
//! segments by single steps (interrupts blocked, as they were); in a
//! continue's segment natively to a breakpoint at the target's RIP, stopping
//! where the exit count and registers match (single steps there only count
//! the steps of one exit interval: on software-nested KVM a step that
//! delivers an interrupt leaves the trap flag in the guest's frame, so a
//! stepped path may differ in memory from the native one). Every exit
//! of a replay is compared with its recorded mark, and a replay that reaches
//! a checkpoint's state is compared with the checkpoint's memory page by page
//! (the pages written since, exactly) or, for the state gdb stopped at, with
//! a full hash of memory and registers; a difference is refused with
//! "Replay diverged at exit N: ..." rather than showing a wrong past.
//!
//! - `reverse-stepi`: one instruction back; across an exit boundary the step
//!   count within the previous exit interval is found by single-stepping it
//!   from its exit (or checkpoint).
//! - `reverse-continue`: segments are replayed backwards from the current
//!   one, each natively from its checkpoint with gdb's breakpoints armed, up
//!   to its end (a checkpoint, or the state gdb stopped at, reached through a
//!   temporary debug-register breakpoint at its RIP). A breakpoint hit is
//!   identified as (exit count, ordinal of the breakpoint stop within that
//!   exit interval), which the same native replay reproduces exactly; the
//!   last hit before the end is the landing, re-reached natively and checked
//!   against the registers seen at the hit. With no hit in any segment the
//!   machine goes to the first checkpoint and gdb hears that the history
//!   begins there.
//!
//! Going back drops the checkpoints after the new position (forward
//! execution makes new ones); so does any change gdb or `monitor lua` makes
//! to the machine.

use kvm_bindings::kvm_regs;

use crate::machine::debug::Owner;
use crate::machine::trace::{ExitMark, STEP_FLAGS};
use crate::machine::{Machine, MachineError, StopCondition, StopReason};
use crate::snapshot::journal::Journal;

/// Memory the checkpoints (pages, states) and exit marks may take besides
/// the journal's one copy of RAM.
pub const CHECKPOINT_BUDGET: u64 = 256 << 20;

/// Guest-caused exits between the checkpoints a `continue` takes.
pub const CHECKPOINT_EXITS: u64 = 1_000;

/// gdb single steps between checkpoints.
pub const STEP_CHECKPOINT: u64 = 1_000;

/// At most this many single steps in one search (a runaway guard).
const MAX_REPLAY_STEPS: u64 = 5_000_000;

/// Errors of reverse execution.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    /// The machine failed while replaying.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The replay did not reproduce the recording.
    #[error("Replay diverged{0}; the machine is not deterministic here (see the run's determinism holes), so lunavm cannot go back")]
    Diverged(String),
    /// A debug register was needed for the replay and gdb holds all four.
    #[error("Reverse execution needs a free debug register to find the state gdb stopped at; delete an hbreak")]
    NoDebugRegister,
}

/// How the machine went forward from a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// gdb's single steps (interrupts blocked).
    Step,
    /// Native execution.
    Continue,
}

/// One checkpoint (its memory and state are in the journal).
struct Checkpoint {
    /// Guest-caused exits at it.
    exits: u64,
    /// How the machine went forward from it.
    mode: Mode,
    /// The machine was stopped at a breakpoint (the next run steps over it).
    at_breakpoint: bool,
    /// Its registers.
    regs: kvm_regs,
    /// Taken at a guest-caused exit inside a continue (a chunk's end).
    at_exit: bool,
    /// gdb's single steps from it to the next checkpoint (step segments).
    steps_to_next: u64,
}

/// The recorded exit marks.
#[derive(Default)]
struct ExitLog {
    /// Exit count of the first mark.
    first: u64,
    marks: Vec<ExitMark>,
}

impl ExitLog {
    /// Appends marks (a mark for an exit already recorded replaces it and
    /// the rest: the run went another way after a reverse operation).
    fn append(&mut self, new: Vec<ExitMark>) {
        for m in new {
            if self.marks.is_empty() || m.index < self.first {
                self.first = m.index;
                self.marks.clear();
            }
            let at = usize::try_from(m.index - self.first).unwrap_or(usize::MAX);
            self.marks.truncate(at);
            if self.marks.len() == at {
                self.marks.push(m);
            }
        }
    }

    /// Checks replayed marks against the recorded ones.
    fn check(&self, replayed: &[ExitMark]) -> Result<(), ReverseError> {
        for m in replayed {
            let Some(at) = m.index.checked_sub(self.first) else {
                continue;
            };
            let Some(rec) = usize::try_from(at).ok().and_then(|i| self.marks.get(i)) else {
                continue;
            };
            if rec != m {
                return Err(ReverseError::Diverged(format!(
                    " at exit {}: recorded {rec}, replayed {m}",
                    m.index
                )));
            }
        }
        Ok(())
    }

    /// Forgets the marks of exits after `exits`.
    fn truncate_after(&mut self, exits: u64) {
        let keep = usize::try_from(exits.saturating_sub(self.first).saturating_add(1))
            .unwrap_or(usize::MAX);
        if exits < self.first {
            self.marks.clear();
        } else {
            self.marks.truncate(keep);
        }
    }

    /// Forgets the marks of exits up to `exits` (before the history).
    fn drop_through(&mut self, exits: u64) {
        let n = usize::try_from((exits + 1).saturating_sub(self.first))
            .unwrap_or(usize::MAX)
            .min(self.marks.len());
        self.marks.drain(..n);
        self.first += n as u64;
    }

    fn bytes(&self) -> u64 {
        (self.marks.len() * std::mem::size_of::<ExitMark>()) as u64
    }
}

/// What the last reverse operation replayed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// Checkpoints restored.
    pub restores: u64,
    /// Pages those restores copied.
    pub pages: u64,
    /// Guest-caused exits re-executed.
    pub exits: u64,
    /// Single steps.
    pub steps: u64,
}

/// The checkpoints of a gdb session and where the machine is among them.
#[derive(Default)]
pub struct History {
    journal: Option<Journal>,
    checkpoints: Vec<Checkpoint>,
    log: ExitLog,
    /// gdb single steps from the last checkpoint to the machine's state;
    /// None after native execution (the state is known, not its steps).
    steps: Option<u64>,
    /// Checkpoints dropped for space (the history starts later).
    pub dropped: u64,
    /// What the last reverse operation replayed.
    pub cost: Cost,
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

/// The state a replay must reach.
struct End {
    exits: u64,
    regs: kvm_regs,
    check: EndCheck,
}

/// How the reached state is confirmed.
#[derive(Clone, Copy)]
enum EndCheck {
    /// Checkpoint `n`'s memory, page by page.
    Checkpoint(usize),
    /// A checkpoint taken at an exit: reached by the exit count.
    Exit(usize),
    /// The state gdb stopped at: a hash of memory and registers.
    Hash(u64),
}

/// A breakpoint hit found by a replay.
#[derive(Clone, Copy)]
struct Hit {
    /// Guest-caused exits at it.
    exits: u64,
    /// Breakpoint stops since the segment's checkpoint, this one included
    /// (with `exits`: the ordinal within the exit interval).
    ordinal: u64,
    /// Single steps from the checkpoint (step segments).
    steps: Option<u64>,
    addr: u64,
    regs: kvm_regs,
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

    /// Whether there is any history.
    pub fn is_empty(&self) -> bool {
        self.checkpoints.is_empty()
    }

    /// Memory the history holds besides the copy of RAM.
    pub fn bytes(&self) -> u64 {
        self.journal.as_ref().map_or(0, Journal::bytes) + self.log.bytes()
    }

    /// Guest-caused exits recorded.
    pub fn exits_recorded(&self) -> usize {
        self.log.marks.len()
    }

    /// gdb single steps since the last checkpoint, when counted.
    pub fn steps(&self) -> Option<u64> {
        self.steps
    }

    /// Forgets every checkpoint (the machine changed behind the history).
    pub fn reset(&mut self) {
        self.journal = None;
        self.checkpoints.clear();
        self.log = ExitLog::default();
        self.steps = None;
    }

    /// Runs the machine forward as `cond` asks, recording: checkpoints at
    /// the resume and, in a continue, every [`CHECKPOINT_EXITS`] exits, and
    /// the mark of every exit.
    pub fn forward(
        &mut self,
        m: &mut Machine,
        cond: &StopCondition,
    ) -> Result<StopReason, ReverseError> {
        self.before_forward(m, cond.single_step)?;
        m.exit_marks = Some(Vec::new());
        let result = self.forward_inner(m, cond);
        self.drain(m);
        m.exit_marks = None;
        result
    }

    fn forward_inner(
        &mut self,
        m: &mut Machine,
        cond: &StopCondition,
    ) -> Result<StopReason, ReverseError> {
        if cond.single_step {
            let stop = m.run(cond)?;
            self.steps = match stop {
                StopReason::Stepped { .. } | StopReason::Watch { .. } => self.steps.map(|s| s + 1),
                _ => None,
            };
            return Ok(stop);
        }
        loop {
            let last = self.checkpoints.last().map_or(0, |c| c.exits);
            let due = (last + CHECKPOINT_EXITS)
                .saturating_sub(m.clock().guest_exits())
                .max(1);
            let chunk = StopCondition {
                max_exits: Some(cond.max_exits.map_or(due, |x| x.min(due))),
                ..cond.clone()
            };
            let stop = m.run(&chunk)?;
            self.steps = None;
            if !matches!(stop, StopReason::ExitBudget { .. }) || cond.max_exits.is_some() {
                return Ok(stop);
            }
            self.drain(m);
            self.checkpoint(m, Mode::Continue, true)?;
        }
    }

    /// Moves the marks the machine made into the log.
    fn drain(&mut self, m: &mut Machine) {
        if let Some(marks) = m.exit_marks.as_mut().map(std::mem::take) {
            self.log.append(marks);
        }
    }

    /// Before a forward run: a checkpoint here, unless the machine is at one
    /// or gdb is stepping on from a recent one.
    fn before_forward(&mut self, m: &mut Machine, stepping: bool) -> Result<(), ReverseError> {
        let mode = if stepping { Mode::Step } else { Mode::Continue };
        if self.journal.is_none() {
            self.journal = Some(m.journal_start()?);
            self.checkpoints = vec![Checkpoint {
                exits: m.clock().guest_exits(),
                mode,
                at_breakpoint: m.resume_over_breakpoint,
                regs: m.regs()?,
                at_exit: false,
                steps_to_next: 0,
            }];
            self.log = ExitLog::default();
            self.steps = Some(0);
            return Ok(());
        }
        if self.steps == Some(0) {
            if let Some(c) = self.checkpoints.last_mut() {
                c.mode = mode;
                return Ok(());
            }
        }
        let counting = self
            .checkpoints
            .last()
            .is_some_and(|c| c.mode == Mode::Step);
        if stepping && counting && self.steps.is_some_and(|s| s < STEP_CHECKPOINT) {
            return Ok(());
        }
        self.checkpoint(m, mode, false)
    }

    /// Takes a checkpoint now, from which the machine goes on in `mode`.
    fn checkpoint(
        &mut self,
        m: &mut Machine,
        mode: Mode,
        at_exit: bool,
    ) -> Result<(), ReverseError> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        if let (Some(n), Some(last)) = (self.steps, self.checkpoints.last_mut()) {
            last.steps_to_next = n;
        }
        let at_breakpoint = m.resume_over_breakpoint;
        m.journal_checkpoint(j)?;
        m.resume_over_breakpoint = at_breakpoint;
        self.checkpoints.push(Checkpoint {
            exits: m.clock().guest_exits(),
            mode,
            at_breakpoint,
            regs: m.regs()?,
            at_exit,
            steps_to_next: 0,
        });
        self.steps = Some(0);
        while self.bytes() > CHECKPOINT_BUDGET && self.checkpoints.len() > 2 {
            if !self.journal.as_mut().is_some_and(Journal::drop_oldest) {
                break;
            }
            self.checkpoints.remove(0);
            self.dropped += 1;
            if let Some(first) = self.checkpoints.first() {
                self.log.drop_through(first.exits);
            }
        }
        Ok(())
    }

    /// Goes one instruction back.
    pub fn reverse_step(&mut self, m: &mut Machine) -> Result<Landing, ReverseError> {
        self.cost = Cost::default();
        loop {
            let Some(last) = self.checkpoints.len().checked_sub(1) else {
                return Ok(Landing::Begin);
            };
            let mode = self.checkpoints[last].mode;
            match (mode, self.steps) {
                (_, Some(0)) => {
                    // At the checkpoint: the step before it lies in the
                    // previous segment.
                    let Some(prev) = last.checked_sub(1) else {
                        return Ok(Landing::Begin);
                    };
                    let end = self.checkpoint_end(prev + 1);
                    if self.checkpoints[prev].mode == Mode::Step {
                        let n = self.checkpoints[prev].steps_to_next;
                        self.forget_after(m, prev);
                        self.steps = Some(n);
                        continue;
                    }
                    if self.step_back_in_continue(m, prev, &end)? {
                        return Ok(Landing::Stepped);
                    }
                    self.forget_after(m, prev);
                    self.steps = Some(0);
                }
                (Mode::Step, Some(n)) => {
                    self.seek_steps(m, last, n - 1)?;
                    self.forget_after(m, last);
                    self.steps = Some(n - 1);
                    set_over_breakpoint(m)?;
                    return Ok(Landing::Stepped);
                }
                (_, _) => {
                    let end = self.end_now(m)?;
                    if self.step_back_in_continue(m, last, &end)? {
                        return Ok(Landing::Stepped);
                    }
                    // The machine is at the checkpoint itself.
                    self.steps = Some(0);
                }
            }
        }
    }

    /// Goes back to the last breakpoint before now (or the history's start).
    pub fn reverse_continue(&mut self, m: &mut Machine) -> Result<Landing, ReverseError> {
        let breakpoints = gdb_breakpoints(m);
        self.cost = Cost::default();
        let Some(last) = self.checkpoints.len().checked_sub(1) else {
            return Ok(Landing::Begin);
        };
        let mut seg = last;
        let mut end = self.end_now(m)?;
        let mut steps_to_end = self.steps;
        loop {
            let empty = steps_to_end == Some(0);
            let hits = if empty {
                Vec::new()
            } else {
                self.scan(m, seg, &end, steps_to_end, &breakpoints)?
            };
            if let Some(hit) = hits.last() {
                self.land(m, seg, hit)?;
                return Ok(Landing::Breakpoint(hit.addr));
            }
            let Some(prev) = seg.checked_sub(1) else {
                self.restore(m, 0)?;
                self.forget_after(m, 0);
                self.steps = Some(0);
                return Ok(Landing::Begin);
            };
            end = self.checkpoint_end(seg);
            seg = prev;
            steps_to_end = match self.checkpoints[seg].mode {
                Mode::Step => Some(self.checkpoints[seg].steps_to_next),
                Mode::Continue => None,
            };
        }
    }

    /// The state the machine is in now, as a replay's end.
    fn end_now(&mut self, m: &mut Machine) -> Result<End, ReverseError> {
        Ok(End {
            exits: m.clock().guest_exits(),
            regs: m.regs()?,
            check: EndCheck::Hash(hash_without_breakpoints(m)?),
        })
    }

    /// Checkpoint `index` as a replay's end.
    fn checkpoint_end(&self, index: usize) -> End {
        let c = &self.checkpoints[index];
        End {
            exits: c.exits,
            regs: c.regs,
            check: if c.at_exit {
                EndCheck::Exit(index)
            } else {
                EndCheck::Checkpoint(index)
            },
        }
    }

    /// Replays segment `seg` from its checkpoint to `end` (`steps` gdb steps
    /// for a step segment), noting gdb's breakpoint hits on the way; leaves
    /// the machine at the end, checked.
    fn scan(
        &mut self,
        m: &mut Machine,
        seg: usize,
        end: &End,
        steps: Option<u64>,
        breakpoints: &[u64],
    ) -> Result<Vec<Hit>, ReverseError> {
        self.restore(m, seg)?;
        let mut hits = Vec::new();
        if self.checkpoints[seg].mode == Mode::Step {
            let n = steps.unwrap_or(0);
            for p in 0..n {
                let regs = m.regs()?;
                if breakpoints.contains(&regs.rip) {
                    hits.push(Hit {
                        exits: m.clock().guest_exits(),
                        ordinal: 0,
                        steps: Some(p),
                        addr: regs.rip,
                        regs,
                    });
                }
                self.step(m, true)?;
            }
            if !self.at_end(m, end)? {
                return Err(ReverseError::Diverged(format!(
                    ": {n} steps from checkpoint {seg} did not reach the recorded state"
                )));
            }
            return Ok(hits);
        }
        let mut ordinal = 0u64;
        let mut note =
            |m: &mut Machine, addr: u64, hits: &mut Vec<Hit>| -> Result<(), MachineError> {
                if breakpoints.contains(&addr) {
                    ordinal += 1;
                    hits.push(Hit {
                        exits: m.clock().guest_exits(),
                        ordinal,
                        steps: None,
                        addr,
                        regs: m.regs()?,
                    });
                }
                Ok(())
            };
        if let EndCheck::Exit(_) = end.check {
            self.run_native(m, end.exits, |m, addr| {
                note(m, addr, &mut hits)?;
                Ok(false)
            })?;
            if !self.at_end(m, end)? {
                return Err(ReverseError::Diverged(format!(
                    " at exit {}: the registers differ from checkpoint {}'s",
                    end.exits,
                    seg + 1
                )));
            }
            return Ok(hits);
        }
        // The end lies after exit `end.exits`: stop at its RIP (a gdb
        // breakpoint already, or a debug register of the replay's).
        if m.clock().guest_exits() == end.exits && self.at_end(m, end)? {
            return Ok(hits);
        }
        let temporary = !breakpoints.contains(&end.regs.rip);
        if temporary {
            m.add_breakpoint(end.regs.rip, Owner::Replay)
                .map_err(|_| ReverseError::NoDebugRegister)?;
        }
        let mut reached = false;
        let result = self.run_native(m, end.exits + 1, |m, addr| {
            if addr == end.regs.rip
                && m.clock().guest_exits() == end.exits
                && same_regs(&m.regs()?, &end.regs)
            {
                reached = true;
                return Ok(true);
            }
            note(m, addr, &mut hits)?;
            Ok(false)
        });
        if temporary {
            m.remove_breakpoints(Owner::Replay)?;
        }
        result?;
        if !reached || !self.at_end(m, end)? {
            return Err(ReverseError::Diverged(format!(
                " at exit {}: the replay from checkpoint {seg} passed the recorded state without reaching it",
                end.exits + 1
            )));
        }
        Ok(hits)
    }

    /// Puts the machine at `hit` in segment `seg` (found by [`Self::scan`])
    /// and drops the later checkpoints.
    fn land(&mut self, m: &mut Machine, seg: usize, hit: &Hit) -> Result<(), ReverseError> {
        if let Some(p) = hit.steps {
            self.seek_steps(m, seg, p)?;
            self.forget_after(m, seg);
            self.steps = Some(p);
            set_over_breakpoint(m)?;
            return Ok(());
        }
        self.restore(m, seg)?;
        let breakpoints = gdb_breakpoints(m);
        let mut ordinal = 0;
        let stopped = self.run_native(m, hit.exits + 1, |_, addr| {
            if breakpoints.contains(&addr) {
                ordinal += 1;
            }
            Ok(ordinal == hit.ordinal)
        })?;
        if stopped.is_none()
            || m.clock().guest_exits() != hit.exits
            || !same_regs(&m.regs()?, &hit.regs)
        {
            return Err(ReverseError::Diverged(format!(
                " at exit {}: breakpoint stop {} from checkpoint {seg} is not where the search found it",
                hit.exits, hit.ordinal
            )));
        }
        self.forget_after(m, seg);
        self.steps = None;
        Ok(())
    }

    /// Lands one instruction before `end`, which lies in continue segment
    /// `seg`; false when `end` is the checkpoint's own state (the step back
    /// lies in the segment before).
    ///
    /// The steps are counted by single-stepping the exit interval; the
    /// landing itself is native (a temporary breakpoint at the state's RIP,
    /// stopping when the exit count and registers match), because a single
    /// step that delivers an interrupt leaves the trap flag in the frame the
    /// guest's `iret` restores on software-nested KVM.
    fn step_back_in_continue(
        &mut self,
        m: &mut Machine,
        seg: usize,
        end: &End,
    ) -> Result<bool, ReverseError> {
        let start = self.checkpoints[seg].exits;
        // Steps from the end's exit (or the checkpoint) to the end.
        let (n, before) = self.steps_to(m, seg, end.exits, end)?;
        if let Some(regs) = before {
            self.land_on(m, seg, end.exits, n - 1, &regs)?;
        } else if end.exits == start {
            return Ok(false);
        } else {
            // The end is just after exit `end.exits`: the instruction before
            // is the one that caused it. Count the steps of the exit interval
            // before.
            let base = end.exits - 1;
            self.seek_exit_steps(m, seg, base, 0)?;
            let mut k = 0u64;
            let mut regs = m.regs()?;
            loop {
                if k >= MAX_REPLAY_STEPS {
                    return Err(ReverseError::Diverged(format!(
                        ": {k} steps after exit {base} never reached exit {}",
                        end.exits
                    )));
                }
                self.step(m, false)?;
                k += 1;
                if m.clock().guest_exits() != base {
                    break;
                }
                regs = m.regs()?;
            }
            self.land_on(m, seg, base, k - 1, &regs)?;
        }
        self.forget_after(m, seg);
        self.steps = None;
        set_over_breakpoint(m)?;
        Ok(true)
    }

    /// Puts the machine at the state `steps` single steps after exit
    /// `exits` (or checkpoint `seg`), whose registers are `regs`: natively,
    /// to a temporary breakpoint at its RIP.
    fn land_on(
        &mut self,
        m: &mut Machine,
        seg: usize,
        exits: u64,
        steps: u64,
        regs: &kvm_regs,
    ) -> Result<(), ReverseError> {
        self.seek_exit_steps(m, seg, exits, 0)?;
        if steps == 0 {
            return Ok(());
        }
        let temporary = !gdb_breakpoints(m).contains(&regs.rip);
        if temporary {
            m.add_breakpoint(regs.rip, Owner::Replay)
                .map_err(|_| ReverseError::NoDebugRegister)?;
        }
        let result = self.run_native(m, exits + 1, |m, addr| {
            Ok(addr == regs.rip && m.clock().guest_exits() == exits && same_regs(&m.regs()?, regs))
        });
        if temporary {
            m.remove_breakpoints(Owner::Replay)?;
        }
        if result?.is_none() {
            return Err(ReverseError::Diverged(format!(
                " at exit {}: the native replay passed the state {steps} steps after exit {exits} without reaching it",
                exits + 1
            )));
        }
        Ok(())
    }

    /// Restores checkpoint `seg`, replays natively to exit `exits` (none
    /// when the checkpoint is at it) and single-steps until the machine is
    /// at `end`: the number of steps and the registers one step before.
    fn steps_to(
        &mut self,
        m: &mut Machine,
        seg: usize,
        exits: u64,
        end: &End,
    ) -> Result<(u64, Option<kvm_regs>), ReverseError> {
        self.seek_exit_steps(m, seg, exits, 0)?;
        let mut n = 0u64;
        let mut before = None;
        loop {
            let regs = m.regs()?;
            // By exit count and registers only: the stepped path's memory
            // may differ from the native one's by the trap flag in an
            // interrupt frame (see `step_back_in_continue`); the landing is
            // native and checked.
            if m.clock().guest_exits() == end.exits && same_regs(&regs, &end.regs) {
                return Ok((n, before));
            }
            if m.clock().guest_exits() > end.exits || n >= MAX_REPLAY_STEPS {
                return Err(ReverseError::Diverged(format!(
                    " at exit {}: {n} steps after exit {exits} never reached the recorded state",
                    m.clock().guest_exits()
                )));
            }
            before = Some(regs);
            self.step(m, false)?;
            n += 1;
        }
    }

    /// Whether the machine is at `end`, confirmed (memory, or for a
    /// checkpoint at an exit, the exit count and registers after the exit
    /// completed).
    fn at_end(&mut self, m: &mut Machine, end: &End) -> Result<bool, ReverseError> {
        if m.clock().guest_exits() != end.exits {
            return Ok(false);
        }
        if let EndCheck::Exit(_) = end.check {
            // The checkpoint completed the exit before reading registers.
            m.settle()?;
        }
        if !same_regs(&m.regs()?, &end.regs) {
            return Ok(false);
        }
        match end.check {
            EndCheck::Hash(h) => Ok(hash_without_breakpoints(m)? == h),
            EndCheck::Checkpoint(index) | EndCheck::Exit(index) => {
                let Some(j) = self.journal.as_mut() else {
                    return Ok(false);
                };
                match m.journal_check(j, index)? {
                    None => Ok(true),
                    Some(gpa) if matches!(end.check, EndCheck::Exit(_)) => {
                        Err(ReverseError::Diverged(format!(
                            " at exit {}: guest memory at {gpa:#x} differs from checkpoint {index}'s",
                            end.exits
                        )))
                    }
                    Some(_) => Ok(false),
                }
            }
        }
    }

    /// Restores checkpoint `seg` and single-steps `n` times (as gdb did).
    fn seek_steps(&mut self, m: &mut Machine, seg: usize, n: u64) -> Result<(), ReverseError> {
        self.restore(m, seg)?;
        for _ in 0..n {
            self.step(m, true)?;
        }
        Ok(())
    }

    /// Restores checkpoint `seg`, replays natively to exit `exits` and
    /// single-steps `n` times with interrupts as a native run has them.
    fn seek_exit_steps(
        &mut self,
        m: &mut Machine,
        seg: usize,
        exits: u64,
        n: u64,
    ) -> Result<(), ReverseError> {
        self.restore(m, seg)?;
        self.run_native(m, exits, |_, _| Ok(false))?;
        for _ in 0..n {
            self.step(m, false)?;
        }
        Ok(())
    }

    /// Runs natively until the guest-exit count reaches `exits`, checking
    /// every exit against its mark. At each breakpoint stop `stop` decides
    /// whether to stop there: the address when it did, None when the exit
    /// count was reached.
    fn run_native(
        &mut self,
        m: &mut Machine,
        exits: u64,
        mut stop: impl FnMut(&mut Machine, u64) -> Result<bool, MachineError>,
    ) -> Result<Option<u64>, ReverseError> {
        loop {
            let now = m.clock().guest_exits();
            if now >= exits {
                return Ok(None);
            }
            let cond = StopCondition {
                max_exits: Some(exits - now),
                ..StopCondition::default()
            };
            let reason = self.checked_run(m, &cond)?;
            match reason {
                StopReason::ExitBudget { .. } | StopReason::Watch { .. } => {}
                StopReason::Breakpoint { addr } => {
                    if stop(m, addr)? {
                        return Ok(Some(addr));
                    }
                }
                other => {
                    return Err(ReverseError::Diverged(format!(
                        " at exit {}: a replayed run ended ({})",
                        m.clock().guest_exits(),
                        other.describe()
                    )))
                }
            }
        }
    }

    /// One single step of a replay, interrupts blocked for gdb's steps.
    fn step(&mut self, m: &mut Machine, block_interrupts: bool) -> Result<(), ReverseError> {
        let cond = StopCondition {
            single_step: true,
            block_interrupts,
            ..StopCondition::default()
        };
        self.cost.steps += 1;
        match self.checked_run(m, &cond)? {
            StopReason::Stepped { .. } | StopReason::Watch { .. } => Ok(()),
            other => Err(ReverseError::Diverged(format!(
                " at exit {}: a replayed step ended the run ({})",
                m.clock().guest_exits(),
                other.describe()
            ))),
        }
    }

    /// A run of a replay: its exits are checked against the marks.
    fn checked_run(
        &mut self,
        m: &mut Machine,
        cond: &StopCondition,
    ) -> Result<StopReason, ReverseError> {
        m.exit_marks = Some(Vec::new());
        let result = m.run(cond);
        let marks = m.exit_marks.take().unwrap_or_default();
        self.cost.exits += marks.len() as u64;
        self.log.check(&marks)?;
        Ok(result?)
    }

    /// Restores checkpoint `index` (as it was taken).
    fn restore(&mut self, m: &mut Machine, index: usize) -> Result<(), ReverseError> {
        let (Some(j), Some(c)) = (self.journal.as_mut(), self.checkpoints.get(index)) else {
            return Err(ReverseError::Diverged(format!(": no checkpoint {index}")));
        };
        self.cost.pages += m.journal_restore(j, index)?;
        self.cost.restores += 1;
        m.resume_over_breakpoint = c.at_breakpoint;
        Ok(())
    }

    /// Drops the checkpoints after `index` and the marks after the
    /// machine's exit count: the machine is in segment `index` now.
    fn forget_after(&mut self, m: &Machine, index: usize) {
        self.checkpoints.truncate(index + 1);
        if let Some(j) = self.journal.as_mut() {
            j.truncate(index);
        }
        self.log.truncate_after(m.clock().guest_exits());
    }
}

/// After landing by single steps: a continue from a breakpoint address
/// steps over it first.
fn set_over_breakpoint(m: &mut Machine) -> Result<(), MachineError> {
    let rip = m.regs()?.rip;
    m.resume_over_breakpoint = gdb_breakpoints(m).contains(&rip);
    Ok(())
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
    use crate::machine::trace::{ExitKind, MarkInput};

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

    fn mark(index: u64, rax: u64) -> ExitMark {
        let regs = kvm_regs {
            rax,
            rip: 0x1000 + index,
            ..Default::default()
        };
        ExitMark::new(
            MarkInput {
                index,
                kind: ExitKind::PioOut,
                addr: 0x80,
                value: index,
                time_ns: index * 1000,
                interrupts: 0,
            },
            Some(&regs),
            None,
        )
    }

    #[test]
    fn a_replay_that_differs_from_the_record_is_refused() {
        let mut log = ExitLog::default();
        log.append((1..=5).map(|i| mark(i, 7)).collect());
        // The same exits: accepted.
        let same: Vec<_> = (2..=4).map(|i| mark(i, 7)).collect();
        assert!(log.check(&same).is_ok());
        // Exit 3 with another register value: refused, naming the exit.
        let mut tampered = same.clone();
        tampered[1] = mark(3, 8);
        let err = log.check(&tampered).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "Replay diverged at exit 3: recorded port write 0x80 <- 0x3 (state hash "
            ),
            "{err}"
        );
        assert!(
            err.contains("replayed port write 0x80 <- 0x3 (state hash"),
            "{err}"
        );
        // A tampered record is caught the same way.
        log.marks[4].hash ^= 1;
        let err = log.check(&[mark(5, 7)]).unwrap_err().to_string();
        assert!(err.starts_with("Replay diverged at exit 5:"), "{err}");
    }

    #[test]
    fn the_exit_log_follows_the_run() {
        let mut log = ExitLog::default();
        log.append((1..=5).map(|i| mark(i, 0)).collect());
        log.truncate_after(3);
        assert_eq!(log.marks.len(), 3);
        // The run went on another way after exit 3.
        log.append(vec![mark(4, 9)]);
        assert_eq!(log.marks.len(), 4);
        assert_eq!(log.marks[3], mark(4, 9));
        log.drop_through(2);
        assert_eq!(log.first, 3);
        assert_eq!(log.marks.len(), 2);
    }
}
