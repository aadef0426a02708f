//! One process's fuzzing engine: a Lua scenario holding the machine at the
//! fuzz point, instrumented for coverage, and the loop body each input goes
//! through — restore, inject, run, verdict, feedback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlua::{LuaSerdeExt, Value};

use super::config::{CmpFeedback, ConfigError, Coverage, FuzzConfig};
use super::elf::{ElfError, GuestElf};
use super::verdict::{classify, Class, StopSite, Symbolize, Verdict};
use crate::machine::fuzzbp::{CmpEvent, FuzzSiteKind};
use crate::machine::{MachineError, SerialWatch, StopCondition};
use crate::script::convert::{describe, ApiError};
use crate::script::session::{self, RunEnd};
use crate::script::{snapshot as script_snapshot, Scenario, ScenarioOptions, ScriptError};
use crate::vm::access;
use crate::vm::regs::paging_regs;

/// Errors of setting up or running the engine. Guest misbehaviour is never
/// one of them: it is a [`Verdict`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The scenario could not be loaded or a function of it failed.
    #[error("{0}")]
    Script(String),
    /// `fuzz_config` is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The guest ELF could not be used.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The machine failed (a KVM call, a snapshot).
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The scenario lacks a function it must define.
    #[error("{0} defines no {1}() function (see scripts/README.md, \"Fuzzing\")")]
    Missing(String, &'static str),
}

impl From<ScriptError> for EngineError {
    fn from(e: ScriptError) -> Self {
        EngineError::Script(e.to_string())
    }
}

impl From<ApiError> for EngineError {
    fn from(e: ApiError) -> Self {
        EngineError::Script(match e {
            ApiError::Msg(m) => m,
            ApiError::Lua(e) => describe(&e),
        })
    }
}

impl From<mlua::Error> for EngineError {
    fn from(e: mlua::Error) -> Self {
        EngineError::Script(describe(&e))
    }
}

/// Where the fuzz point is and how this campaign runs: written once by the
/// parent, read by every process libFuzzer starts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FuzzSession {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Its arguments (`arg[1..]`).
    pub args: Vec<String>,
    /// The machine at the fuzz point.
    pub snapshot: PathBuf,
    /// What `fuzz_setup` returned (JSON), passed to the other functions.
    pub ctx: serde_json::Value,
    /// Seed of the machine.
    pub seed: u64,
    /// Command-line override of the coverage sources.
    pub coverage: Option<Coverage>,
    /// Command-line override of the comparison feedback.
    pub cmp: Option<CmpFeedback>,
    /// Where crash records, hangs and the progress log go.
    pub workdir: PathBuf,
    /// Record new crashes and go on fuzzing instead of handing them to
    /// libFuzzer (which ends the process); lunavm saves their inputs.
    #[serde(default)]
    pub keep_going: bool,
}

/// Environment variable naming the session file of a libFuzzer child.
pub const SESSION_ENV: &str = "LUNAVM_FUZZ_SESSION";

/// What one execution did.
#[derive(Clone, Debug)]
pub struct Execution {
    /// Its verdict.
    pub verdict: Verdict,
    /// Serial output since the fuzz point.
    pub serial: Vec<u8>,
    /// Guest-caused exits.
    pub exits: u64,
    /// Virtual time (ns).
    pub vtime_ns: u64,
    /// Blocks seen for the first time in this process (indices).
    pub new_blocks: Vec<u32>,
    /// Comparisons (breakpoint and guest-reported).
    pub cmps: Vec<CmpEvent>,
    /// The guest-filled coverage map after the run (empty when none).
    pub guest_map: Vec<u8>,
    /// Pages the restore before it copied.
    pub restored_pages: u64,
    /// Wall time of that restore (ns).
    pub restore_ns: u128,
    /// Kicks that moved virtual time host-timed during the run (a guest
    /// spinning in a way lunavm could not recognise): nonzero means the
    /// verdict may not reproduce.
    pub host_timed_kicks: u64,
}

/// Runs the scenario's `fuzz_setup` in a fresh Lua state and saves the
/// machine it leaves at `snapshot`; returns what `fuzz_setup` returned.
pub fn create_fuzz_point(
    scenario: &Path,
    args: &[String],
    seed: u64,
    snapshot: &Path,
) -> Result<serde_json::Value, EngineError> {
    let sc = open_scenario(scenario, args, seed)?;
    let setup = function(&sc, scenario, "fuzz_setup")?;
    let ret: Value = setup.call(())?;
    let ctx: serde_json::Value = match ret {
        Value::Nil => serde_json::Value::Null,
        v => sc.lua().from_value(v).map_err(|e| {
            EngineError::Script(format!(
                "fuzz_setup must return nothing or a table of plain values (numbers, strings, booleans, tables): {e}"
            ))
        })?,
    };
    if sc.session().machine.is_none() {
        return Err(EngineError::Script(
            "fuzz_setup returned without booting a machine (call vm.boot and run to the fuzz point)".into(),
        ));
    }
    sc.save_machine(snapshot)?;
    Ok(ctx)
}

fn open_scenario(path: &Path, args: &[String], seed: u64) -> Result<Scenario, EngineError> {
    let mut all = vec![path.display().to_string()];
    all.extend(args.iter().cloned());
    let sc = Scenario::new(&ScenarioOptions {
        seed,
        vtime_budget: None,
        args: all,
    })?;
    sc.exec_file(path)?;
    Ok(sc)
}

fn function(sc: &Scenario, path: &Path, name: &'static str) -> Result<mlua::Function, EngineError> {
    match sc.lua().globals().get::<Value>(name)? {
        Value::Function(f) => Ok(f),
        _ => Err(EngineError::Missing(path.display().to_string(), name)),
    }
}

/// The engine of one process.
pub struct Engine {
    sc: Scenario,
    ctx: Value,
    inject: mlua::Function,
    verdict_fn: Option<mlua::Function>,
    /// The configuration in effect.
    pub config: FuzzConfig,
    elf: Option<GuestElf>,
    sites: HashMap<u64, StopSite>,
    snap_id: u64,
    /// Block index → address.
    pub blocks: Vec<u64>,
    /// Blocks seen so far in this process.
    pub blocks_seen: usize,
    /// Compare breakpoints placed.
    pub cmp_sites: usize,
    guest_map: Option<(u64, usize)>,
    serial_re: Option<regex::bytes::Regex>,
}

impl Engine {
    /// Opens the session's scenario at its fuzz point (from the session's
    /// snapshot file) and instruments it.
    pub fn open(s: &FuzzSession) -> Result<Engine, EngineError> {
        Engine::open_from(s, true)
    }

    /// Like [`Engine::open`], but runs the scenario's `fuzz_setup` in this
    /// process instead of loading the snapshot file when `from_file` is
    /// false (replays in regression tests).
    pub fn open_from(s: &FuzzSession, from_file: bool) -> Result<Engine, EngineError> {
        let sc = open_scenario(&s.scenario, &s.args, s.seed)?;
        let mut config = FuzzConfig::from_lua(sc.global_table("fuzz_config").as_ref())?;
        if let Some(c) = s.coverage {
            config.coverage = c;
        }
        if let Some(c) = s.cmp {
            config.cmp = c;
        }
        let inject = function(&sc, &s.scenario, "fuzz_inject")?;
        let verdict_fn = match sc.lua().globals().get::<Value>("fuzz_verdict")? {
            Value::Function(f) => Some(f),
            _ => None,
        };
        let ctx = if from_file {
            sc.load_snapshot(&s.snapshot)?;
            sc.lua().to_value(&s.ctx)?
        } else {
            let setup = function(&sc, &s.scenario, "fuzz_setup")?;
            let ctx: Value = setup.call(())?;
            if sc.session().machine.is_none() {
                return Err(EngineError::Script(
                    "fuzz_setup returned without booting a machine".into(),
                ));
            }
            ctx
        };
        if let Value::Function(start) = sc.lua().globals().get::<Value>("fuzz_start")? {
            start.call::<()>(ctx.clone())?;
        }
        let elf = config.elf.as_deref().map(GuestElf::load).transpose()?;
        let serial_re = match &config.crash_serial {
            Some(re) => Some(regex::bytes::Regex::new(re).map_err(|e| {
                EngineError::Config(ConfigError::Field {
                    field: "crash_serial",
                    reason: e.to_string(),
                })
            })?),
            None => None,
        };
        let mut engine = Engine {
            sc,
            ctx,
            inject,
            verdict_fn,
            config,
            elf,
            sites: HashMap::new(),
            snap_id: 0,
            blocks: Vec::new(),
            blocks_seen: 0,
            cmp_sites: 0,
            guest_map: None,
            serial_re,
        };
        engine.instrument()?;
        let handle = script_snapshot::take(engine.sc.shared())?;
        engine.snap_id = handle.id;
        Ok(engine)
    }

    /// Places the stop, block and compare breakpoints and finds the guest map.
    fn instrument(&mut self) -> Result<(), EngineError> {
        let st = self.sc.shared().clone();
        let mut guard = st.borrow_mut();
        let m = guard.machine()?;
        if self.config.coverage.guest_map {
            if let Some(call) = m.ucalls().last.get("COV_MAP") {
                let addr = call.args.first().copied().unwrap_or(0);
                let size = usize::try_from(call.args.get(1).copied().unwrap_or(0)).unwrap_or(0);
                if addr != 0 && size > 0 && size <= 1 << 24 {
                    self.guest_map = Some((addr, size));
                    // The map starts empty at the fuzz point.
                    let sregs = m.sregs()?;
                    let zeros = vec![0u8; size];
                    access::write_virt(m.memory(), &paging_regs(&sregs), addr, &zeros).map_err(
                        |e| {
                            EngineError::Script(format!(
                                "cannot clear the guest's coverage map at {addr:#x}: {e}"
                            ))
                        },
                    )?;
                }
            }
        }
        let Some(elf) = &self.elf else {
            if !self.config.crash_symbols.is_empty() {
                return Err(EngineError::Script(
                    "fuzz_config.crash_symbols needs fuzz_config.elf (the guest ELF)".into(),
                ));
            }
            return Ok(());
        };
        for name in &self.config.crash_symbols {
            let addr = elf.lookup(name)?;
            m.add_fuzz_breakpoint(addr, FuzzSiteKind::Stop)?;
            self.sites.insert(addr, StopSite::Symbol(name.clone()));
        }
        if !self.config.fatal_vectors.is_empty() {
            let sregs = m.sregs()?;
            for &v in &self.config.fatal_vectors {
                let mut gate = [0u8; 16];
                let base = sregs.idt.base + u64::from(v) * 16;
                access::read_virt(m.memory(), &paging_regs(&sregs), base, &mut gate).map_err(
                    |e| {
                        EngineError::Script(format!(
                            "cannot read the guest IDT entry of vector {v}: {e}"
                        ))
                    },
                )?;
                let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
                let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
                let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
                let handler = lo | (mid << 16) | (hi << 32);
                if handler == 0 {
                    continue;
                }
                m.add_fuzz_breakpoint(handler, FuzzSiteKind::Stop)?;
                self.sites.insert(handler, StopSite::Vector(v));
            }
        }
        // Only the functions fuzz_config.instrument names (all by default).
        let only = match &self.config.instrument {
            Some(re) => Some(regex::Regex::new(re).map_err(|e| {
                EngineError::Config(ConfigError::Field {
                    field: "instrument",
                    reason: e.to_string(),
                })
            })?),
            None => None,
        };
        let chosen: Vec<&crate::fuzz::elfmap::Function> = elf
            .map
            .functions()
            .iter()
            .filter(|f| only.as_ref().is_none_or(|re| re.is_match(&f.name)))
            .collect();
        if self.config.coverage.blocks {
            let blocks: Vec<u64> = if only.is_some() {
                chosen
                    .iter()
                    .flat_map(|f| elf.map.blocks_in(f))
                    .copied()
                    .collect()
            } else {
                elf.map.blocks().to_vec()
            };
            for addr in blocks {
                if self.sites.contains_key(&addr) {
                    continue;
                }
                let index = u32::try_from(self.blocks.len()).unwrap_or(u32::MAX);
                // Blocks in pages the guest has not mapped are skipped.
                if m.add_fuzz_breakpoint(addr, FuzzSiteKind::Block(index))
                    .is_ok()
                {
                    self.blocks.push(addr);
                }
            }
        }
        if self.config.cmp.breakpoints {
            let cmps: Vec<u64> = if only.is_some() {
                chosen
                    .iter()
                    .flat_map(|f| elf.map.cmp_sites_in(f))
                    .filter(|c| c.kind == crate::fuzz::elfmap::CmpKind::Cmp)
                    .map(|c| c.addr)
                    .collect()
            } else {
                elf.cmp_addresses().collect()
            };
            for addr in cmps {
                if self.sites.contains_key(&addr) {
                    continue;
                }
                if m.add_fuzz_breakpoint(addr, FuzzSiteKind::Cmp).is_ok() {
                    self.cmp_sites += 1;
                }
            }
        }
        Ok(())
    }

    /// `name+0xoff (0xaddr)` for a guest instruction address.
    pub fn symbolize(&self, addr: u64) -> String {
        Symbols(self.elf.as_ref()).at(addr)
    }

    /// `name+0xoff (0xaddr)` for a guest return address.
    pub fn symbolize_return(&self, addr: u64) -> String {
        Symbols(self.elf.as_ref()).ret(addr)
    }

    /// The scenario (for `--repro` and tests).
    pub fn scenario(&self) -> &Scenario {
        &self.sc
    }

    /// Runs one input from the fuzz point to its verdict.
    pub fn execute(&mut self, input: &[u8]) -> Result<Execution, EngineError> {
        self.run_input(input, true)
    }

    /// Runs `input` for its comparisons only (the input-to-state mutator):
    /// blocks it reaches stay armed, so the input libFuzzer later runs
    /// still gets the credit.
    pub fn probe(&mut self, input: &[u8]) -> Result<Execution, EngineError> {
        self.run_input(input, false)
    }

    fn run_input(&mut self, input: &[u8], credit: bool) -> Result<Execution, EngineError> {
        let lua = self.sc.lua().clone();
        let st = self.sc.shared().clone();
        let t_restore = std::time::Instant::now();
        let restored = script_snapshot::restore(&lua, &st, self.snap_id, None)?;
        let restore_ns = t_restore.elapsed().as_nanos();
        let restored_pages: u64 = restored.get("pages").unwrap_or(0);
        let (serial_start, t0, e0, k0) = {
            let mut g = st.borrow_mut();
            let m = g.machine()?;
            // Feedback of the setup and of the previous input is not this one's.
            m.drain_fuzz_feedback();
            (
                m.serial_len(),
                m.clock().now_ns(),
                m.clock().guest_exits(),
                m.exits().kick_time_jumps,
            )
        };
        let data = lua.create_string(input)?;
        let injected = self.inject.call::<()>((data, self.ctx.clone()));
        let end = match injected {
            Ok(()) => {
                let cond = StopCondition {
                    max_exits: Some(self.config.max_exits),
                    max_time_ns: Some(self.config.max_time_ns),
                    serial: self.serial_re.clone().map(|regex| SerialWatch {
                        regex,
                        from: serial_start,
                    }),
                    ..StopCondition::default()
                };
                Some(session::run(&lua, &st, cond, &[]))
            }
            Err(e) => {
                return Err(EngineError::Script(format!(
                    "fuzz_inject: {}",
                    describe(&e)
                )))
            }
        };
        let mut g = st.borrow_mut();
        let m = g.machine()?;
        let serial = m.serial_output_since(serial_start);
        let exits = m.clock().guest_exits() - e0;
        let vtime_ns = m.clock().now_ns() - t0;
        let host_timed_kicks = m.exits().kick_time_jumps.saturating_sub(k0);
        let (hits, removed, cmps) = m.drain_fuzz_feedback();
        let sym = Symbols(self.elf.as_ref());
        let verdict = match end {
            Some(Ok(RunEnd::Machine(stop))) => classify(m, &stop, &self.config, &self.sites, &sym),
            Some(Ok(RunEnd::Hook(_))) => {
                Verdict::new(Class::Ok, "scenario", "a hook stopped the run")
            }
            Some(Err(e)) => {
                let msg = match e {
                    ApiError::Msg(m) => m,
                    ApiError::Lua(e) => describe(&e),
                };
                return Err(EngineError::Script(format!(
                    "while running the input: {msg}"
                )));
            }
            None => Verdict::new(Class::Ok, "scenario", ""),
        };
        let guest_map = match self.guest_map {
            Some((addr, size)) => {
                let sregs = m.sregs()?;
                let mut buf = vec![0u8; size];
                if access::read_virt(m.memory(), &paging_regs(&sregs), addr, &mut buf).is_ok() {
                    buf
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        };
        drop(g);
        let mut exec = Execution {
            verdict,
            serial,
            exits,
            vtime_ns,
            new_blocks: hits,
            cmps,
            guest_map,
            restored_pages,
            restore_ns,
            host_timed_kicks,
        };
        if let Some(f) = &self.verdict_fn {
            self.apply_verdict_fn(f.clone(), &mut exec)?;
        }
        self.settle_blocks(&mut exec, &removed, credit)?;
        Ok(exec)
    }

    /// One-shot blocks are credited to an input libFuzzer keeps: after an
    /// ok verdict they leave the snapshot too, so later restores keep them
    /// out. After a crash or hang (which the fuzzer does not keep) they are
    /// armed again, so the next input that reaches them is credited.
    fn settle_blocks(
        &mut self,
        exec: &mut Execution,
        removed: &[(u64, u8, Option<u32>)],
        credit: bool,
    ) -> Result<(), EngineError> {
        let keep = credit && exec.verdict.class == Class::Ok;
        let st = self.sc.shared().clone();
        let mut g = st.borrow_mut();
        let s = &mut *g;
        let (Some(m), Some((_, snap, _))) = (
            s.machine.as_mut(),
            s.snapshots.iter_mut().find(|(i, _, _)| *i == self.snap_id),
        ) else {
            return Ok(());
        };
        for &(gpa, byte, block) in removed {
            match block {
                Some(index) if !keep => {
                    if let Some(&addr) = self.blocks.get(index as usize) {
                        m.add_fuzz_breakpoint(addr, FuzzSiteKind::Block(index))?;
                    }
                }
                _ => {
                    m.patch_snapshot(snap, gpa, &[byte]);
                }
            }
        }
        if keep {
            self.blocks_seen += exec.new_blocks.len();
        }
        Ok(())
    }

    /// Lets the scenario's `fuzz_verdict(ev, ctx)` override the verdict: it
    /// returns nothing (keep), or a class and optionally a title.
    fn apply_verdict_fn(&self, f: mlua::Function, exec: &mut Execution) -> Result<(), EngineError> {
        let lua = self.sc.lua();
        let ev = lua.create_table()?;
        ev.set("class", exec.verdict.class.name())?;
        ev.set("reason", exec.verdict.reason.as_str())?;
        ev.set("title", exec.verdict.title.as_str())?;
        ev.set("pc", crate::script::convert::to_lua_int(exec.verdict.pc))?;
        ev.set("serial", lua.create_string(&exec.serial)?)?;
        ev.set("exits", exec.exits)?;
        let (class, title): (Option<String>, Option<String>) = f
            .call((ev, self.ctx.clone()))
            .map_err(|e| EngineError::Script(format!("fuzz_verdict: {}", describe(&e))))?;
        if let Some(c) = class {
            exec.verdict.class = match c.as_str() {
                "ok" => Class::Ok,
                "crash" => Class::Crash,
                "hang" => Class::Hang,
                other => {
                    return Err(EngineError::Script(format!(
                        "fuzz_verdict returned '{other}': expected \"ok\", \"crash\" or \"hang\""
                    )))
                }
            };
            exec.verdict.reason = "scenario".into();
            if let Some(t) = title {
                exec.verdict.title = t;
            }
        }
        Ok(())
    }
}

/// The guest ELF's symbols, when the scenario named one.
struct Symbols<'a>(Option<&'a GuestElf>);

impl Symbolize for Symbols<'_> {
    fn at(&self, addr: u64) -> String {
        self.0
            .map_or_else(|| format!("{addr:#x}"), |e| e.symbolize(addr))
    }

    fn ret(&self, addr: u64) -> String {
        self.0
            .map_or_else(|| format!("{addr:#x}"), |e| e.symbolize_return(addr))
    }

    fn is_code(&self, addr: u64) -> Option<bool> {
        self.0
            .map(|e| e.map.function_at(addr.wrapping_sub(1)).is_some())
    }
}
