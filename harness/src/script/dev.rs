//! `dev` (devices written in Lua) and `hook` (observe and steer the guest), and
//! the handles both return.

use mlua::{Function, Lua, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::convert::{add_fn, from_lua_int, lua_error, ApiError, ApiResult, Shared};
use super::session::{HookKind, LuaDevice, LuaHook};
use crate::machine::debug::Owner;
use crate::machine::intercept::{Direction, Space};

/// A handle to a hook or device; `:remove()` removes it.
pub struct Handle {
    id: u64,
    st: Shared,
}

impl UserData for Handle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, h| Ok(h.id));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("remove", |lua, h, ()| {
            remove(&h.st, h.id).map_err(|e| match e {
                ApiError::Msg(m) => lua_error(lua, "handle:remove", m),
                ApiError::Lua(e) => e,
            })
        });
    }
}

/// Removes hook or device `id`; whether it existed.
fn remove(st: &Shared, id: u64) -> ApiResult<bool> {
    let mut s = st.borrow_mut();
    if let Some(i) = s.devices.iter().position(|d| d.id == id) {
        let d = s.devices.remove(i);
        if let Some(m) = s.machine.as_mut() {
            m.release_range(d.space, d.base, d.intercept);
        }
        return Ok(true);
    }
    let Some(i) = s.hooks.iter().position(|h| h.id == id) else {
        return Ok(false);
    };
    let h = s.hooks.remove(i);
    let ucalls = s
        .hooks
        .iter()
        .any(|h| matches!(h.kind, HookKind::Ucall { .. }));
    let completions = s
        .hooks
        .iter()
        .any(|h| matches!(&h.kind, HookKind::Exit { kind } if kind == "emulation"));
    if let Some(m) = s.machine.as_mut() {
        match h.kind {
            HookKind::Access { intercept, .. } => {
                m.intercepts_mut().remove(intercept);
            }
            HookKind::Exec { .. } => m.remove_breakpoints(Owner::Hook(id))?,
            HookKind::Watch { .. } => m.remove_watches(Owner::Hook(id))?,
            _ => {}
        }
        m.intercepts_mut().ucalls = ucalls;
        m.intercepts_mut().completions = completions;
    }
    Ok(true)
}

fn range(v: Value, what: &str) -> ApiResult<(u64, u64)> {
    match v {
        Value::Integer(a) => Ok((from_lua_int(a), from_lua_int(a))),
        Value::Table(t) => {
            let first: i64 = t
                .get(1)
                .map_err(|_| format!("{what} = {{FIRST, LAST}} needs two integers"))?;
            let last: i64 = t
                .get(2)
                .map_err(|_| format!("{what} = {{FIRST, LAST}} needs two integers"))?;
            let (f, l) = (from_lua_int(first), from_lua_int(last));
            if f > l {
                return Err(format!("{what} range {f:#x}..{l:#x} is empty").into());
            }
            Ok((f, l))
        }
        other => Err(format!(
            "{what} must be an address or {{FIRST, LAST}}, not {}",
            other.type_name()
        )
        .into()),
    }
}

fn add_device(st: &Shared, space: Space, spec: Table) -> ApiResult<Handle> {
    let base: i64 = spec
        .get("base")
        .map_err(|_| "base= (an integer) is required")?;
    let size: i64 = spec
        .get("size")
        .map_err(|_| "size= (an integer) is required")?;
    let base = from_lua_int(base);
    let size = u64::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .ok_or("size must be positive")?;
    if space == Space::Pio && base.checked_add(size).is_none_or(|end| end > 0x1_0000) {
        return Err(format!("ports {base:#x}+{size:#x} are outside 0..=0xffff").into());
    }
    if space == Space::Mmio {
        let mem_size = st.borrow_mut().machine()?.config().mem_size;
        let end = base.checked_add(size).ok_or("the MMIO range overflows")?;
        if crate::layout::ram_ranges(mem_size)
            .iter()
            .any(|&(s, len)| base < s + len && s < end)
        {
            return Err(format!(
                "MMIO range {base:#x}..{end:#x} overlaps guest RAM: the guest's accesses there go to RAM, not to a device \
                 (use the MMIO hole, 0xc0000000-0xffffffff)"
            )
            .into());
        }
    }
    let read: Option<Function> = spec.get("read").map_err(|_| "read= must be a function")?;
    let write: Option<Function> = spec.get("write").map_err(|_| "write= must be a function")?;
    let save: Option<Function> = spec.get("save").map_err(|_| "save= must be a function")?;
    let restore: Option<Function> = spec
        .get("restore")
        .map_err(|_| "restore= must be a function")?;
    let stateless = spec
        .get::<Option<bool>>("stateless")
        .map_err(|_| "stateless= must be a boolean")?
        .unwrap_or(false);
    if save.is_some() != restore.is_some() {
        return Err("give both save= and restore=, or neither".into());
    }
    let name: Option<String> = spec.get("name").map_err(|_| "name= must be a string")?;
    let name = name.unwrap_or_else(|| "lua-device".into());
    // Device names live as long as the bus; a script makes few devices.
    let bus_name: &'static str = Box::leak(name.clone().into_boxed_str());
    let mut s = st.borrow_mut();
    let intercept = s.machine()?.claim_range(space, base, size, bus_name)?;
    let id = s.next_id();
    s.devices.push(LuaDevice {
        id,
        intercept,
        space,
        base,
        size,
        read,
        write,
        save,
        restore,
        stateless,
        name,
    });
    Ok(Handle { id, st: st.clone() })
}

/// Adds a `hook.pio`/`hook.mmio`-style access hook from its spec table.
pub(super) fn access_hook(st: &Shared, space: Space, spec: Table) -> ApiResult<Handle> {
    add_access_hook(st, space, spec)
}

fn add_access_hook(st: &Shared, space: Space, spec: Table) -> ApiResult<Handle> {
    let key = if space == Space::Pio { "port" } else { "addr" };
    let (first, last) = range(spec.get::<Value>(key)?, key)?;
    let on: Option<String> = spec.get("on").map_err(|_| "on= must be a string")?;
    let (reads, writes, dir) = match on.as_deref().unwrap_or("both") {
        "read" => (true, false, Direction::Read),
        "write" => (false, true, Direction::Write),
        "both" => (true, true, Direction::Both),
        other => {
            return Err(
                format!("on= must be \"read\", \"write\" or \"both\", not {other:?}").into(),
            )
        }
    };
    let func: Function = spec.get("fn").map_err(|_| "fn= (a function) is required")?;
    let mut s = st.borrow_mut();
    let intercept = s.machine()?.intercepts_mut().add(space, first, last, dir);
    let id = s.next_id();
    let kind = HookKind::Access {
        space,
        first,
        last,
        reads,
        writes,
        intercept,
    };
    Ok(push_hook(st, &mut s, id, kind, func))
}

const EXIT_KINDS: &[&str] = &["pio", "mmio", "hlt", "emulation"];

/// Registers hook `id` in the session and returns its handle.
/// `hook.watch{addr = PHYS or vaddr = VIRT, size = N, on = "write" | "read"
/// | "access", fn = function(ev)}`: a page watch, or with `vaddr` a debug
/// register where the watch mode uses them (see `machine::watch`).
fn add_watch_hook(st: &Shared, spec: Table) -> ApiResult<Handle> {
    use crate::machine::watch::WatchKind;
    let func: Function = spec
        .get::<Option<Function>>("fn")?
        .ok_or("hook.watch needs fn = function(ev) ... end")?;
    let size = spec.get::<Option<u64>>("size")?.unwrap_or(8);
    let kind = match spec.get::<Option<String>>("on")?.as_deref() {
        None | Some("write") => WatchKind::Write,
        Some("read") => WatchKind::Read,
        Some("access") => WatchKind::Access,
        Some(other) => {
            return Err(format!("on = {other:?}: use \"write\", \"read\" or \"access\"").into())
        }
    };
    let phys: Option<i64> = spec.get("addr")?;
    let virt: Option<i64> = spec.get("vaddr")?;
    let mut s = st.borrow_mut();
    let id = s.next_id();
    let m = s.machine()?;
    let ids = match (phys, virt) {
        (Some(p), None) => vec![m.add_watch(from_lua_int(p), size, kind, Owner::Hook(id))?],
        // A debug register where the watch mode uses them and it fits one.
        (None, Some(v)) => m.add_watch_virt(from_lua_int(v), size, kind, Owner::Hook(id))?,
        _ => return Err("hook.watch needs addr = PHYSICAL or vaddr = VIRTUAL".into()),
    };
    Ok(push_hook(st, &mut s, id, HookKind::Watch { ids }, func))
}

fn push_hook(
    st: &Shared,
    s: &mut super::session::Session,
    id: u64,
    kind: HookKind,
    func: Function,
) -> Handle {
    s.hooks.push(LuaHook { id, kind, func });
    Handle { id, st: st.clone() }
}

/// Registers the `dev` and `hook` namespaces.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let dev = lua.create_table()?;
    add_fn(lua, &dev, st, "dev", "pio", |_, st, spec: Table| {
        add_device(st, Space::Pio, spec)
    })?;
    add_fn(lua, &dev, st, "dev", "mmio", |_, st, spec: Table| {
        add_device(st, Space::Mmio, spec)
    })?;
    lua.globals().set("dev", dev)?;

    let hook = lua.create_table()?;
    add_fn(lua, &hook, st, "hook", "pio", |_, st, spec: Table| {
        add_access_hook(st, Space::Pio, spec)
    })?;
    add_fn(lua, &hook, st, "hook", "mmio", |_, st, spec: Table| {
        add_access_hook(st, Space::Mmio, spec)
    })?;
    add_fn(
        lua,
        &hook,
        st,
        "hook",
        "exec",
        |_, st, (addr, func): (i64, Function)| {
            let mut s = st.borrow_mut();
            let id = s.next_id();
            let addr = from_lua_int(addr);
            s.machine()?.add_breakpoint(addr, Owner::Hook(id))?;
            Ok(push_hook(st, &mut s, id, HookKind::Exec { addr }, func))
        },
    )?;
    add_fn(lua, &hook, st, "hook", "watch", |_, st, spec: Table| {
        add_watch_hook(st, spec)
    })?;
    add_fn(
        lua,
        &hook,
        st,
        "hook",
        "ucall",
        |_, st, (cmd, func): (Option<String>, Function)| {
            if let Some(c) = &cmd {
                if !crate::ucall::Command::ALL.iter().any(|k| k.name() == c) {
                    return Err(format!("unknown ucall command {c:?}").into());
                }
            }
            let mut s = st.borrow_mut();
            s.machine()?.intercepts_mut().ucalls = true;
            let id = s.next_id();
            Ok(push_hook(st, &mut s, id, HookKind::Ucall { cmd }, func))
        },
    )?;
    add_fn(
        lua,
        &hook,
        st,
        "hook",
        "exit",
        |lua, st, (kind, func): (String, Function)| match kind.as_str() {
            "pio" | "mmio" => {
                let spec = lua.create_table()?;
                let full = lua.create_table()?;
                full.set(1, 0)?;
                full.set(2, if kind == "pio" { 0xffff_i64 } else { -1_i64 })?;
                spec.set(if kind == "pio" { "port" } else { "addr" }, full)?;
                spec.set("fn", func)?;
                let space = if kind == "pio" {
                    Space::Pio
                } else {
                    Space::Mmio
                };
                add_access_hook(st, space, spec)
            }
            "hlt" | "emulation" => {
                let mut s = st.borrow_mut();
                let m = s.machine()?;
                if kind == "emulation" {
                    m.intercepts_mut().completions = true;
                }
                let id = s.next_id();
                Ok(push_hook(st, &mut s, id, HookKind::Exit { kind }, func))
            }
            other => Err(format!(
                "unknown exit kind {other:?} (kinds: {})",
                EXIT_KINDS.join(", ")
            )
            .into()),
        },
    )?;
    add_fn(
        lua,
        &hook,
        st,
        "hook",
        "remove",
        |_, st, h: mlua::AnyUserData| {
            let id = h
                .borrow::<Handle>()
                .map_err(|_| "hook.remove takes a handle")?
                .id;
            remove(st, id)
        },
    )?;
    lua.globals().set("hook", hook)
}
