//! `snapshot`: take, restore, drop, save and load machine snapshots.

use mlua::{AnyUserData, Lua, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::convert::{add_fn, lua_error, ApiError, ApiResult, Shared};
use crate::machine::{Machine, MachineConfig};
use crate::snapshot::file;

/// A snapshot handle.
pub struct SnapHandle {
    pub(crate) id: u64,
    st: Shared,
}

impl UserData for SnapHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, h| Ok(h.id));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        let wrap = |lua: &Lua, name: &str, r: ApiResult<Value>| {
            r.map_err(|e| match e {
                ApiError::Msg(m) => lua_error(lua, name, m),
                ApiError::Lua(e) => e,
            })
        };
        methods.add_method("restore", move |lua, h, opts: Option<Table>| {
            wrap(
                lua,
                "snapshot:restore",
                restore(lua, &h.st, h.id, opts).map(Value::Table),
            )
        });
        methods.add_method("drop", move |lua, h, ()| {
            wrap(
                lua,
                "snapshot:drop",
                drop_snap(&h.st, h.id).map(Value::Boolean),
            )
        });
        methods.add_method("save", move |lua, h, path: String| {
            wrap(
                lua,
                "snapshot:save",
                save(&h.st, h.id, &path).map(|()| Value::Nil),
            )
        });
    }
}

fn handle_id(h: &AnyUserData) -> ApiResult<u64> {
    Ok(h.borrow::<SnapHandle>()
        .map_err(|_| "expected a snapshot handle")?
        .id)
}

pub(crate) fn take(st: &Shared) -> ApiResult<SnapHandle> {
    let devices: Vec<(u64, Option<mlua::Function>, bool, String)> = st
        .borrow()
        .devices
        .iter()
        .map(|d| (d.id, d.save.clone(), d.stateless, d.name.clone()))
        .collect();
    let mut states = Vec::new();
    for (id, save, stateless, name) in devices {
        match save {
            Some(f) => states.push((id, f.call::<Value>(())?)),
            None if stateless => {}
            None => {
                return Err(format!(
                    "device '{name}' has no save= and restore= functions and is not declared stateless=true: \
                     its state cannot be snapshotted"
                )
                .into())
            }
        }
    }
    let mut s = st.borrow_mut();
    let snap = s.machine()?.take_snapshot()?;
    let id = s.next_id();
    s.snapshots.push((id, snap, states));
    Ok(SnapHandle { id, st: st.clone() })
}

pub(crate) fn restore(lua: &Lua, st: &Shared, id: u64, opts: Option<Table>) -> ApiResult<Table> {
    let verify = match &opts {
        Some(t) => t
            .get::<Option<bool>>("verify")
            .map_err(|_| "verify= must be a boolean")?
            .unwrap_or(false),
        None => false,
    };
    let (stats, device_states) = {
        let mut guard = st.borrow_mut();
        let s = &mut *guard;
        let (_, snap, dev_states) = s
            .snapshots
            .iter()
            .find(|(i, _, _)| *i == id)
            .ok_or("this snapshot was dropped")?;
        let m = s.machine.as_mut().ok_or("the machine is not booted")?;
        let stats = m.restore_snapshot(snap)?;
        if verify {
            m.verify_against(snap)?;
        }
        (stats, dev_states.clone())
    };
    let restores: Vec<(mlua::Function, Value)> = {
        let s = st.borrow();
        device_states
            .into_iter()
            .filter_map(|(dev, v)| {
                s.devices
                    .iter()
                    .find(|d| d.id == dev)
                    .and_then(|d| d.restore.clone())
                    .map(|f| (f, v))
            })
            .collect()
    };
    for (f, v) in restores {
        f.call::<()>(v)?;
    }
    {
        // Serial output before the snapshot is already read; keep the cursor within it.
        let mut s = st.borrow_mut();
        let len = s.machine()?.serial_output().len();
        s.serial_cursor = s.serial_cursor.min(len);
    }
    let t = lua.create_table()?;
    t.set("pages", stats.pages)?;
    t.set("full", stats.full)?;
    Ok(t)
}

fn drop_snap(st: &Shared, id: u64) -> ApiResult<bool> {
    let mut s = st.borrow_mut();
    let before = s.snapshots.len();
    s.snapshots.retain(|(i, _, _)| *i != id);
    Ok(before != s.snapshots.len())
}

fn save(st: &Shared, id: u64, path: &str) -> ApiResult<()> {
    let s = st.borrow();
    let (_, snap, _) = s
        .snapshots
        .iter()
        .find(|(i, _, _)| *i == id)
        .ok_or("this snapshot was dropped")?;
    file::save(snap, std::path::Path::new(path)).map_err(|e| super::convert::error_chain(&e).into())
}

/// Replaces the session's machine with one restored from a snapshot file.
pub fn load_into(st: &Shared, path: &std::path::Path) -> ApiResult<()> {
    let snap = file::load(path).map_err(|e| super::convert::error_chain(&e))?;
    let mut s = st.borrow_mut();
    if !s.devices.is_empty() || !s.hooks.is_empty() {
        return Err("remove the script's devices and hooks before loading a snapshot file".into());
    }
    let config = MachineConfig {
        seed: s.default_seed,
        ..MachineConfig::default()
    };
    let machine = Machine::from_snapshot(&snap, config)?;
    s.machine = Some(machine);
    s.serial_cursor = s.machine()?.serial_output().len();
    Ok(())
}

/// Registers the `snapshot` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "snapshot", "take", |_, st, ()| take(st))?;
    add_fn(
        lua,
        &t,
        st,
        "snapshot",
        "restore",
        |lua, st, (h, opts): (AnyUserData, Option<Table>)| restore(lua, st, handle_id(&h)?, opts),
    )?;
    add_fn(lua, &t, st, "snapshot", "drop", |_, st, h: AnyUserData| {
        drop_snap(st, handle_id(&h)?)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "snapshot",
        "save",
        |_, st, (h, path): (AnyUserData, String)| save(st, handle_id(&h)?, &path),
    )?;
    add_fn(lua, &t, st, "snapshot", "load", |_, st, path: String| {
        load_into(st, std::path::Path::new(&path))
    })?;
    lua.globals().set("snapshot", t)
}
