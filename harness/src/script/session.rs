//! The state behind one Lua state's bindings: the machine, the script's devices
//! and hooks, the serial read cursor, the test budget and the test's outcome.
//! `run` is the loop that runs the machine and services intercepted accesses by
//! calling the script's functions while the machine is stopped.

use mlua::{Function, Lua, Table, Value};

use super::convert::{to_lua_int, ApiError, ApiResult, Shared};
use crate::machine::debug::Owner;
use crate::machine::intercept::{Access, Space};
use crate::machine::{Machine, StopCondition, StopReason};
use crate::ucall::Ucall;

/// How a test ended, when a `t` function decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An assertion failed.
    Fail(String),
    /// The test skipped itself.
    Skip(String),
}

/// A result a test reported with `t.result`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubResult {
    /// Its name.
    pub name: String,
    /// "pass", "fail" or "skip".
    pub status: String,
    /// Its message.
    pub message: String,
}

/// A device written in Lua.
pub struct LuaDevice {
    /// Handle id.
    pub id: u64,
    /// The intercept id of its range.
    pub intercept: u64,
    /// Port or MMIO.
    pub space: Space,
    /// First address.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// read(offset, size) -> value.
    pub read: Option<Function>,
    /// write(offset, size, value).
    pub write: Option<Function>,
    /// save() -> value, for snapshots.
    pub save: Option<Function>,
    /// restore(value), for snapshots.
    pub restore: Option<Function>,
    /// Declared to have no state.
    pub stateless: bool,
    /// Its name.
    pub name: String,
}

/// What a hook fires on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// Guest accesses to a range.
    Access {
        /// Port or MMIO.
        space: Space,
        /// First address.
        first: u64,
        /// Last address.
        last: u64,
        /// Fire on reads.
        reads: bool,
        /// Fire on writes.
        writes: bool,
        /// The intercept id.
        intercept: u64,
    },
    /// An execution breakpoint.
    Exec {
        /// Its address.
        addr: u64,
    },
    /// ucalls, of one command or all.
    Ucall {
        /// The command name, or None for all.
        cmd: Option<String>,
    },
    /// A data watch (page watches in the machine).
    Watch {
        /// The machine's watch ids (one per physical range).
        ids: Vec<u64>,
    },
    /// Exits of a kind ("hlt", "emulation"; "pio" and "mmio" are Access hooks).
    Exit {
        /// The kind.
        kind: String,
    },
}

/// A snapshot a script took: (handle id, the machine's snapshot, the Lua
/// devices' saved values by device handle id).
pub type ScriptSnapshot = (u64, crate::snapshot::Snapshot, Vec<(u64, Value)>);

/// A hook written in Lua.
pub struct LuaHook {
    /// Handle id.
    pub id: u64,
    /// What it fires on.
    pub kind: HookKind,
    /// The function.
    pub func: Function,
}

/// The session.
pub struct Session {
    /// The machine, once `vm.boot` ran.
    pub machine: Option<Machine>,
    /// Seed for `vm.boot` when the script gives none.
    pub default_seed: u64,
    /// Where serial.read/expect continue from.
    pub serial_cursor: usize,
    /// A hook asked the current run to stop.
    pub stop_requested: Option<u64>,
    /// The hook or device callback running now, if any.
    pub current_handle: Option<u64>,
    /// Virtual time the test may still use (None: unlimited).
    pub vtime_left: Option<u64>,
    /// The test's whole virtual-time budget, for messages.
    pub vtime_budget: Option<u64>,
    /// Set by `t` functions.
    pub outcome: Option<Outcome>,
    /// Reported by `t.result`.
    pub results: Vec<SubResult>,
    /// Devices written in Lua.
    pub devices: Vec<LuaDevice>,
    /// Hooks.
    pub hooks: Vec<LuaHook>,
    /// Snapshots taken by the script.
    pub snapshots: Vec<ScriptSnapshot>,
    next_handle: u64,
}

impl Session {
    /// A session with no machine.
    pub fn new(default_seed: u64, vtime_budget: Option<u64>) -> Self {
        Session {
            machine: None,
            default_seed,
            serial_cursor: 0,
            stop_requested: None,
            current_handle: None,
            vtime_left: vtime_budget,
            vtime_budget,
            outcome: None,
            results: Vec::new(),
            devices: Vec::new(),
            hooks: Vec::new(),
            snapshots: Vec::new(),
            next_handle: 0,
        }
    }

    /// The machine, or an error that says to boot first.
    pub fn machine(&mut self) -> ApiResult<&mut Machine> {
        self.machine
            .as_mut()
            .ok_or_else(|| ApiError::Msg("the machine is not booted: call vm.boot{} first".into()))
    }

    /// A new handle id.
    pub fn next_id(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle
    }
}

/// Why `run` returned.
pub enum RunEnd {
    /// The machine stopped.
    Machine(StopReason),
    /// A hook or device called `vm.stop()`.
    Hook(u64),
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Runs the machine under `cond` (plus the test budget), servicing the
/// script's devices and hooks, until a stop the caller should see.
pub fn run(lua: &Lua, st: &Shared, cond: StopCondition, breakpoints: &[u64]) -> ApiResult<RunEnd> {
    {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        for &bp in breakpoints {
            m.add_breakpoint(bp, Owner::Run)?;
        }
    }
    let result = run_loop(lua, st, cond, breakpoints);
    if let Some(m) = st.borrow_mut().machine.as_mut() {
        m.remove_breakpoints(Owner::Run)?;
    }
    result
}

fn run_loop(
    lua: &Lua,
    st: &Shared,
    mut cond: StopCondition,
    breakpoints: &[u64],
) -> ApiResult<RunEnd> {
    let (user_time, user_exits) = (cond.max_time_ns, cond.max_exits);
    let (mut time_left, mut exits_left) = (user_time, user_exits);
    loop {
        let (stop, budget_limited, used_ns, used_exits) = {
            let mut s = st.borrow_mut();
            let test_left = s.vtime_left;
            cond.max_time_ns = min_opt(time_left, test_left);
            cond.max_exits = exits_left;
            let m = s.machine()?;
            let (t0, e0) = (m.clock().now_ns(), m.clock().guest_exits());
            let stop = m.run(&cond)?;
            let used_ns = m.clock().now_ns() - t0;
            let used_exits = m.clock().guest_exits() - e0;
            if let Some(l) = s.vtime_left.as_mut() {
                *l = l.saturating_sub(used_ns);
            }
            let budget_limited = test_left.is_some_and(|l| time_left.is_none_or(|u| l < u));
            (stop, budget_limited, used_ns, used_exits)
        };
        time_left = time_left.map(|u| u.saturating_sub(used_ns));
        exits_left = exits_left.map(|e| e.saturating_sub(used_exits));
        match stop {
            StopReason::TimeBudget { .. } if budget_limited => {
                let total = st.borrow().vtime_budget.unwrap_or(0);
                return Err(ApiError::Msg(format!(
                    "the test's virtual-time budget ({}) is used up",
                    crate::report::format_ns(total)
                )));
            }
            StopReason::TimeBudget { .. } => {
                return Ok(RunEnd::Machine(StopReason::TimeBudget {
                    ns: user_time.unwrap_or(0),
                }))
            }
            StopReason::ExitBudget { .. } => {
                return Ok(RunEnd::Machine(StopReason::ExitBudget {
                    exits: user_exits.unwrap_or(0),
                }))
            }
            StopReason::Intercepted { access } => service_access(lua, st, access)?,
            StopReason::Breakpoint { addr } if !breakpoints.contains(&addr) => {
                let hooks = matching(
                    st,
                    |k| matches!(k, HookKind::Exec { addr: a } if *a == addr),
                );
                let ev = lua.create_table()?;
                ev.set("addr", to_lua_int(addr))?;
                call_hooks(st, &hooks, &ev)?;
            }
            StopReason::Ucall { call } => ucall_hooks(lua, st, &call)?,
            StopReason::Watch { hit }
                if st.borrow().hooks.iter().any(
                    |h| matches!(&h.kind, HookKind::Watch { ids } if ids.contains(&hit.id)),
                ) =>
            {
                let hooks = matching(
                    st,
                    |k| matches!(k, HookKind::Watch { ids } if ids.contains(&hit.id)),
                );
                let ev = lua.create_table()?;
                ev.set("addr", to_lua_int(hit.gpa))?;
                ev.set("size", hit.size)?;
                ev.set("write", hit.write)?;
                ev.set("value", to_lua_int(hit.value))?;
                if let Some(old) = hit.old {
                    ev.set("old", to_lua_int(old))?;
                }
                call_hooks(st, &hooks, &ev)?;
            }
            StopReason::Completed { entry } => {
                let hooks = matching(
                    st,
                    |k| matches!(k, HookKind::Exit { kind } if kind == "emulation"),
                );
                let ev = lua.create_table()?;
                ev.set("kind", "emulation")?;
                ev.set("entry", entry.name())?;
                call_hooks(st, &hooks, &ev)?;
            }
            other => {
                end_hooks(lua, st, &other)?;
                return Ok(RunEnd::Machine(other));
            }
        }
        if let Some(h) = st.borrow_mut().stop_requested.take() {
            return Ok(RunEnd::Hook(h));
        }
    }
}

fn call_err(e: mlua::Error) -> ApiError {
    ApiError::Lua(e)
}

/// The hooks whose kind satisfies `pred`, in installation order.
fn matching(st: &Shared, pred: impl Fn(&HookKind) -> bool) -> Vec<(u64, Function)> {
    st.borrow()
        .hooks
        .iter()
        .filter(|h| pred(&h.kind))
        .map(|h| (h.id, h.func.clone()))
        .collect()
}

/// Calls hooks with `ev`; returns the last integer a hook returned.
fn call_hooks(st: &Shared, hooks: &[(u64, Function)], ev: &Table) -> ApiResult<Option<i64>> {
    let mut replaced = None;
    for (id, f) in hooks {
        st.borrow_mut().current_handle = Some(*id);
        let r = f.call::<Value>(ev.clone());
        st.borrow_mut().current_handle = None;
        if let Value::Integer(v) = r.map_err(call_err)? {
            replaced = Some(v);
        }
    }
    Ok(replaced)
}

/// Services an intercepted access: the claiming device, then the hooks.
fn service_access(lua: &Lua, st: &Shared, a: Access) -> ApiResult<()> {
    let mut value = a.value;
    let device = {
        let s = st.borrow();
        s.devices
            .iter()
            .find(|d| d.space == a.space && a.addr >= d.base && a.addr < d.base + d.size)
            .map(|d| {
                (
                    d.id,
                    d.base,
                    if a.write {
                        d.write.clone()
                    } else {
                        d.read.clone()
                    },
                )
            })
    };
    if let Some((id, base, Some(f))) = device {
        st.borrow_mut().current_handle = Some(id);
        let r = f.call::<Value>((to_lua_int(a.addr - base), a.size, to_lua_int(a.value)));
        st.borrow_mut().current_handle = None;
        match r.map_err(call_err)? {
            Value::Integer(v) if !a.write => value = super::convert::from_lua_int(v),
            _ => {}
        }
    }
    let hooks = matching(st, |k| match k {
        HookKind::Access {
            space,
            first,
            last,
            reads,
            writes,
            ..
        } => {
            *space == a.space
                && *first <= a.addr
                && a.addr <= *last
                && if a.write { *writes } else { *reads }
        }
        _ => false,
    });
    if !hooks.is_empty() {
        let ev = lua.create_table()?;
        let key = if a.space == Space::Pio {
            "port"
        } else {
            "addr"
        };
        ev.set(key, to_lua_int(a.addr))?;
        ev.set("size", a.size)?;
        ev.set("value", to_lua_int(value))?;
        ev.set("write", a.write)?;
        if let Some(v) = call_hooks(st, &hooks, &ev)? {
            if !a.write {
                value = super::convert::from_lua_int(v);
            }
        }
    }
    if !a.write {
        st.borrow_mut().machine()?.set_read_value(value)?;
    }
    Ok(())
}

/// A Lua table for a ucall.
pub fn ucall_table(lua: &Lua, call: &Ucall) -> mlua::Result<Table> {
    let ev = lua.create_table()?;
    ev.set("cmd", call.cmd.name())?;
    let args = lua.create_table()?;
    for (i, a) in call.args.iter().enumerate() {
        args.set(i + 1, to_lua_int(*a))?;
    }
    ev.set("args", args)?;
    ev.set("msg", call.msg.clone())?;
    Ok(ev)
}

fn ucall_hooks(lua: &Lua, st: &Shared, call: &Ucall) -> ApiResult<()> {
    let name = call.cmd.name();
    let hooks = matching(st, |k| match k {
        HookKind::Ucall { cmd } => cmd.as_deref().is_none_or(|c| c == name),
        _ => false,
    });
    if !hooks.is_empty() {
        let ev = ucall_table(lua, call)?;
        call_hooks(st, &hooks, &ev)?;
    }
    Ok(())
}

/// Hooks on stops that end a run: the DONE/ASSERT/SYNC ucall, a halt, an
/// emulation failure.
fn end_hooks(lua: &Lua, st: &Shared, stop: &StopReason) -> ApiResult<()> {
    match stop {
        StopReason::Done { .. } | StopReason::Assert { .. } | StopReason::Sync { .. } => {
            let last = {
                let mut s = st.borrow_mut();
                let m = s.machine()?;
                let name = match stop {
                    StopReason::Done { .. } => "DONE",
                    StopReason::Assert { .. } => "ASSERT",
                    _ => "SYNC",
                };
                m.ucalls().last.get(name).cloned()
            };
            if let Some(call) = last {
                ucall_hooks(lua, st, &call)?;
            }
        }
        StopReason::Halted { .. } | StopReason::EmulationFailure { .. } => {
            let kind = if matches!(stop, StopReason::Halted { .. }) {
                "hlt"
            } else {
                "emulation"
            };
            let hooks = matching(
                st,
                |k| matches!(k, HookKind::Exit { kind: k2 } if k2 == kind),
            );
            if !hooks.is_empty() {
                let ev = lua.create_table()?;
                ev.set("kind", kind)?;
                call_hooks(st, &hooks, &ev)?;
            }
        }
        _ => {}
    }
    Ok(())
}
