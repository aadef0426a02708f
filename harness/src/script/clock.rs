//! `clock`: virtual time.

use mlua::{Lua, Value};

use super::convert::{add_fn, duration, to_lua_int, Shared};

/// Registers the `clock` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "clock", "now", |_, st, ()| {
        Ok(to_lua_int(st.borrow_mut().machine()?.clock().now_ns()))
    })?;
    add_fn(lua, &t, st, "clock", "step", |_, st, d: Value| {
        let ns = duration(&d)?;
        st.borrow_mut().machine()?.clock_step(ns);
        Ok(())
    })?;
    lua.globals().set("clock", t)
}
