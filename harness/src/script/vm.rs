//! `vm`: boot the machine and run it to stop conditions.

use mlua::{Lua, Table, Value};

use super::convert::{
    add_fn, duration, from_lua_int, size, to_lua_int, ApiError, ApiResult, Shared,
};
use super::session::{self, RunEnd};
use crate::boot::Module;
use crate::guests;
use crate::machine::{Machine, MachineConfig, SerialWatch, StopCondition, StopReason};
use crate::vm::cpuid::CpuProfile;

/// Registers the `vm` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "vm", "boot", |_, st, opts: Option<Table>| {
        boot(st, opts)
    })?;
    add_fn(lua, &t, st, "vm", "run", |lua, st, opts: Option<Table>| {
        run(lua, st, opts)
    })?;
    add_fn(lua, &t, st, "vm", "gdb", |lua, st, opts: Value| {
        gdb(lua, st, opts)
    })?;
    add_fn(lua, &t, st, "vm", "stop", |_, st, ()| {
        let mut s = st.borrow_mut();
        let id = s.current_handle.ok_or_else(|| {
            ApiError::Msg("vm.stop is only valid inside a hook or device callback".into())
        })?;
        s.stop_requested = Some(id);
        Ok(())
    })?;
    add_fn(lua, &t, st, "vm", "booted", |_, st, ()| {
        Ok(st.borrow().machine.is_some())
    })?;
    add_fn(lua, &t, st, "vm", "state_hash", |_, st, ()| {
        Ok(format!(
            "{:016x}",
            st.borrow_mut().machine()?.current_state_hash()?
        ))
    })?;
    add_fn(lua, &t, st, "vm", "syscall_compat", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let c = s.machine()?.syscall_compat();
        let t = lua.create_table()?;
        let mode = match c.mode {
            crate::machine::syscall_compat::SyscallCompatMode::Auto => "auto",
            crate::machine::syscall_compat::SyscallCompatMode::On => "on",
            crate::machine::syscall_compat::SyscallCompatMode::Off => "off",
        };
        t.set("mode", mode)?;
        t.set("active", c.active)?;
        t.set("probe_syscall", c.probe.syscall.to_string())?;
        t.set("probe_sysret", c.probe.sysret.to_string())?;
        if let Some(h) = c.handler {
            t.set("handler", to_lua_int(h))?;
        }
        t.set("completed", to_lua_int(c.completed))?;
        t.set("page_faults", to_lua_int(c.page_faults))?;
        t.set("starved", c.starved)?;
        t.set("lstar_trap", c.lstar_trap)?;
        Ok(t)
    })?;
    add_fn(lua, &t, st, "vm", "watch_mode", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let r = s.machine()?.watch_report();
        let t = lua.create_table()?;
        t.set("mode", r.mode.name())?;
        t.set("debug_regs", r.debug_regs)?;
        t.set("probe", r.probe.to_string())?;
        t.set("cpl0", r.probe.cpl0.fires())?;
        t.set("cpl3", r.probe.cpl3.fires())?;
        t.set("page_watches", to_lua_int(r.stats.page_watches))?;
        t.set("debug_reg_watches", to_lua_int(r.stats.debug_reg_watches))?;
        t.set("no_free_debug_reg", to_lua_int(r.stats.no_free_debug_reg))?;
        t.set("page_hits", to_lua_int(r.stats.page_hits))?;
        t.set("debug_reg_hits", to_lua_int(r.stats.debug_reg_hits))?;
        t.set("filtered_writes", to_lua_int(r.stats.filtered_writes))?;
        Ok(t)
    })?;
    add_fn(lua, &t, st, "vm", "exits", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        let e = m.exits().clone();
        let (p, mm) = m.unclaimed();
        let t = lua.create_table()?;
        for (k, v) in [
            ("pio_in", e.pio_in),
            ("pio_out", e.pio_out),
            ("mmio_read", e.mmio_read),
            ("mmio_write", e.mmio_write),
            ("hlt", e.hlt),
            ("emulation_failure", e.emulation_failure),
            ("total", e.total()),
            ("unclaimed_pio_reads", p.reads),
            ("unclaimed_pio_writes", p.writes),
            ("unclaimed_mmio_reads", mm.reads),
            ("unclaimed_mmio_writes", mm.writes),
        ] {
            t.set(k, to_lua_int(v))?;
        }
        Ok(t)
    })?;
    lua.globals().set("vm", t)
}

pub(super) fn opt<T: mlua::FromLua>(opts: &Option<Table>, key: &str) -> ApiResult<Option<T>> {
    match opts {
        Some(t) => t.get::<Option<T>>(key).map_err(|e| {
            ApiError::Msg(format!("option '{key}': {}", super::convert::describe(&e)))
        }),
        None => Ok(None),
    }
}

fn boot(st: &Shared, opts: Option<Table>) -> ApiResult<()> {
    if st.borrow().machine.is_some() {
        return Err("the machine is already booted".into());
    }
    let guest: Option<String> = opt(&opts, "guest")?;
    let kernel: Option<String> = opt(&opts, "kernel")?;
    let (name, image): (String, std::borrow::Cow<'static, [u8]>) = match (guest, kernel) {
        (Some(_), Some(_)) => return Err("give guest= or kernel=, not both".into()),
        (_, Some(path)) => {
            let data =
                std::fs::read(&path).map_err(|e| format!("cannot read kernel {path}: {e}"))?;
            (path, data.into())
        }
        (g, None) => {
            let g = g.unwrap_or_else(|| "hello".into());
            let guest = guests::find(&g).ok_or_else(|| format!("no built-in guest named '{g}'"))?;
            (g, guest.elf.into())
        }
    };
    let mut config = MachineConfig {
        seed: st.borrow().default_seed,
        ..MachineConfig::default()
    };
    if let Some(v) = opt::<Value>(&opts, "mem")? {
        config.mem_size = size(&v)?;
    }
    if let Some(cpu) = opt::<String>(&opts, "cpu")? {
        config.cpu = cpu.parse::<CpuProfile>().map_err(|e| e.to_string())?;
    }
    if let Some(seed) = opt::<i64>(&opts, "seed")? {
        config.seed = from_lua_int(seed);
    }
    if let Some(mode) = opt::<String>(&opts, "syscall_compat")? {
        config.syscall_compat = mode.parse()?;
    }
    if let Some(mode) = opt::<String>(&opts, "watch_mode")? {
        config.watch_mode = mode.parse()?;
    }
    config.virtio = super::virtio::boot_devices(&opts)?;
    let cmdline: String = opt(&opts, "cmdline")?.unwrap_or_default();
    let mut modules = Vec::new();
    if let Some(list) = opt::<Table>(&opts, "modules")? {
        for item in list.sequence_values::<Value>() {
            let (path, cmdline) = match item.map_err(|e| e.to_string())? {
                Value::String(s) => {
                    let p = s.to_string_lossy();
                    (p.clone(), p)
                }
                Value::Table(t) => {
                    let p: String = t.get("path").map_err(|_| "a module table needs path=")?;
                    let c: Option<String> = t.get("cmdline").unwrap_or(None);
                    (p.clone(), c.unwrap_or(p))
                }
                other => {
                    return Err(format!(
                        "a module is a path or {{path=, cmdline=}}, not {}",
                        other.type_name()
                    )
                    .into())
                }
            };
            let data =
                std::fs::read(&path).map_err(|e| format!("cannot read module {path}: {e}"))?;
            modules.push(Module { data, cmdline });
        }
    }
    let mut machine = Machine::new(config)?;
    machine
        .load_kernel(&image, &cmdline, &modules)
        .map_err(|e| {
            format!(
                "cannot load kernel {name}: {}",
                super::convert::error_chain(&e)
            )
        })?;
    st.borrow_mut().machine = Some(machine);
    Ok(())
}

fn run(lua: &Lua, st: &Shared, opts: Option<Table>) -> ApiResult<Table> {
    let mut cond = StopCondition::default();
    if let Some(n) = opt::<i64>(&opts, "exits")? {
        cond.max_exits = Some(u64::try_from(n).map_err(|_| "exits must be >= 0")?);
    }
    if let Some(v) = opt::<Value>(&opts, "time")? {
        cond.max_time_ns = Some(duration(&v)?);
    }
    match opt::<Value>(&opts, "sync")? {
        None | Some(Value::Boolean(false)) => {}
        Some(Value::Boolean(true)) => cond.on_sync = true,
        Some(Value::Integer(id)) => cond.sync_id = Some(from_lua_int(id)),
        Some(other) => {
            return Err(format!("sync= takes true or an id, not {}", other.type_name()).into())
        }
    }
    if let Some(pattern) = opt::<String>(&opts, "serial")? {
        let regex = regex::bytes::Regex::new(&pattern)
            .map_err(|e| super::convert::regex_error(&pattern, &e))?;
        cond.serial = Some(SerialWatch {
            regex,
            from: st.borrow().serial_cursor,
        });
    }
    let mut breakpoints = Vec::new();
    match opt::<Value>(&opts, "breakpoint")? {
        None => {}
        Some(Value::Integer(a)) => breakpoints.push(from_lua_int(a)),
        Some(Value::Table(t)) => {
            for a in t.sequence_values::<i64>() {
                breakpoints.push(from_lua_int(a.map_err(|e| e.to_string())?));
            }
        }
        Some(other) => {
            return Err(format!(
                "breakpoint= takes an address or a list, not {}",
                other.type_name()
            )
            .into())
        }
    }
    let end = session::run(lua, st, cond, &breakpoints)?;
    event(lua, st, end)
}

/// `vm.gdb{addr = "HOST:PORT"}` (or `vm.gdb("HOST:PORT")`): serves gdb on
/// the stopped machine until gdb detaches (`reason = "detached"`) or the run
/// ends under gdb (the event `vm.run` would give).
fn gdb(lua: &Lua, st: &Shared, opts: Value) -> ApiResult<Table> {
    let addr: String = match &opts {
        Value::String(s) => s.to_string_lossy(),
        Value::Table(t) => t
            .get::<Option<String>>("addr")?
            .ok_or("give the address to listen on: vm.gdb{addr = \"127.0.0.1:1234\"}")?,
        other => {
            return Err(format!(
                "expected an address string or {{addr = ...}}, got {}",
                other.type_name()
            )
            .into())
        }
    };
    st.borrow_mut().machine()?;
    let scenario = super::Scenario::from_parts(lua.clone(), st.clone());
    let end = crate::gdb::serve_scenario(scenario, &addr)
        .map_err(|e| ApiError::Msg(super::convert::error_chain(&e)))?;
    match end {
        crate::gdb::SessionEnd::Finished(stop) => event(lua, st, RunEnd::Machine(stop)),
        crate::gdb::SessionEnd::Detached => {
            let ev = lua.create_table()?;
            let rip = st.borrow_mut().machine()?.regs()?.rip;
            ev.set("reason", "detached")?;
            ev.set("rip", to_lua_int(rip))?;
            Ok(ev)
        }
    }
}

/// Builds the event table for a run's end.
pub fn event(lua: &Lua, st: &Shared, end: RunEnd) -> ApiResult<Table> {
    let ev = lua.create_table()?;
    let rip = st.borrow_mut().machine()?.regs()?.rip;
    ev.set("rip", to_lua_int(rip))?;
    let stop = match end {
        RunEnd::Hook(id) => {
            ev.set("reason", "hook")?;
            ev.set("hook", id)?;
            return Ok(ev);
        }
        RunEnd::Machine(stop) => stop,
    };
    let reason = match &stop {
        StopReason::GuestExit { value } => {
            ev.set("status", *value)?;
            "exit"
        }
        StopReason::Done { status } => {
            ev.set("status", to_lua_int(*status))?;
            "done"
        }
        StopReason::Assert { message, args } => {
            ev.set("message", message.clone())?;
            ev.set(
                "args",
                args.iter().map(|a| to_lua_int(*a)).collect::<Vec<_>>(),
            )?;
            "assert"
        }
        StopReason::Sync { id } => {
            ev.set("id", to_lua_int(*id))?;
            let args = st
                .borrow_mut()
                .machine()?
                .ucalls()
                .last
                .get("SYNC")
                .map(|c| c.args.iter().map(|a| to_lua_int(*a)).collect::<Vec<_>>())
                .unwrap_or_default();
            ev.set("args", args)?;
            "sync"
        }
        StopReason::Breakpoint { addr } => {
            ev.set("addr", to_lua_int(*addr))?;
            "breakpoint"
        }
        StopReason::CrashSite { addr } => {
            ev.set("addr", to_lua_int(*addr))?;
            "crash_site"
        }
        StopReason::Watch { hit } => {
            ev.set("id", to_lua_int(hit.id))?;
            ev.set("addr", to_lua_int(hit.gpa))?;
            ev.set("size", hit.size)?;
            ev.set("write", hit.write)?;
            ev.set("value", to_lua_int(hit.value))?;
            if let Some(old) = hit.old {
                ev.set("old", to_lua_int(old))?;
            }
            "watch"
        }
        StopReason::SerialMatch { text, end } => {
            ev.set("match", text.clone())?;
            st.borrow_mut().serial_cursor = *end;
            "serial"
        }
        StopReason::Halted {
            interrupts_enabled, ..
        } => {
            ev.set("interrupts", *interrupts_enabled)?;
            "halt"
        }
        StopReason::Shutdown { regs } => {
            let t = lua.create_table()?;
            for (k, v) in &regs.regs {
                t.set(*k, to_lua_int(*v))?;
            }
            ev.set("regs", t)?;
            "shutdown"
        }
        StopReason::EmulationFailure { insn, reason, .. } => {
            ev.set("message", format!("{}: {reason}", insn.disasm))?;
            ev.set("bytes", lua.create_string(&insn.bytes)?)?;
            "emulation_failure"
        }
        StopReason::ExitBudget { exits } => {
            ev.set("exits", to_lua_int(*exits))?;
            "exit_budget"
        }
        StopReason::TimeBudget { ns } => {
            ev.set("time", to_lua_int(*ns))?;
            "time_budget"
        }
        other => {
            ev.set("message", other.describe())?;
            "error"
        }
    };
    ev.set("reason", reason)?;
    Ok(ev)
}
