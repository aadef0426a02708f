//! `fuzz`: helpers for fuzz scenarios and the regression tests `lunavm fuzz
//! --to-test` writes.

use mlua::{Lua, Table, Value};

use super::convert::{add_fn, to_lua_int, Shared};
use crate::fuzz::scenario::engine::{Engine, FuzzSession};

/// Registers the `fuzz` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(
        lua,
        &t,
        st,
        "fuzz",
        "replay",
        |lua, st, (scenario, input, opts): (String, mlua::LuaString, Option<Table>)| {
            let args: Vec<String> = match &opts {
                Some(o) => o
                    .get::<Option<Vec<String>>>("args")
                    .map_err(|_| "args= must be a list of strings")?
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            let session = FuzzSession {
                scenario: scenario.clone().into(),
                args,
                snapshot: Default::default(),
                ctx: serde_json::Value::Null,
                seed: st.borrow().default_seed,
                coverage: None,
                cmp: None,
                workdir: std::env::temp_dir(),
                keep_going: false,
            };
            let mut engine =
                Engine::open_from(&session, false).map_err(|e| format!("{scenario}: {e}"))?;
            let exec = engine
                .execute(&input.as_bytes())
                .map_err(|e| format!("{scenario}: {e}"))?;
            let v = &exec.verdict;
            let r = lua.create_table()?;
            r.set("class", v.class.name())?;
            r.set("reason", v.reason.as_str())?;
            r.set("title", v.title.as_str())?;
            r.set("signature", v.signature())?;
            r.set("pc", to_lua_int(v.pc))?;
            r.set("serial", lua.create_string(&exec.serial)?)?;
            r.set("exits", exec.exits)?;
            r.set("blocks", exec.new_blocks.len())?;
            r.set("vtime", exec.vtime_ns)?;
            Ok(Value::Table(r))
        },
    )?;
    add_fn(lua, &t, st, "fuzz", "point", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        match m.ucalls().last.get("FUZZ_POINT") {
            Some(call) => {
                let r = lua.create_table()?;
                r.set(
                    "buffer",
                    to_lua_int(call.args.first().copied().unwrap_or(0)),
                )?;
                r.set(
                    "capacity",
                    to_lua_int(call.args.get(1).copied().unwrap_or(0)),
                )?;
                Ok(Value::Table(r))
            }
            None => Ok(Value::Nil),
        }
    })?;
    lua.globals().set("fuzz", t)
}
