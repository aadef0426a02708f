//! `cpu`: registers, segments, MSRs and event injection.

use mlua::{Lua, Table};

use super::convert::{add_fn, from_lua_int, to_lua_int, ApiResult, Shared};
use crate::machine::cpu::{REG_NAMES, SEGMENT_NAMES};

const SEG_FIELDS: &[&str] = &[
    "selector", "base", "limit", "type", "dpl", "present", "db", "s", "l", "g",
];

fn u8_of(v: i64, what: &str) -> ApiResult<u8> {
    u8::try_from(v).map_err(|_| format!("{what} {v} is not in 0..=255").into())
}

/// Registers the `cpu` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "cpu", "get", |_, st, name: String| {
        Ok(to_lua_int(st.borrow_mut().machine()?.reg(&name)?))
    })?;
    add_fn(
        lua,
        &t,
        st,
        "cpu",
        "set",
        |_, st, (name, v): (String, i64)| {
            Ok(st.borrow_mut().machine()?.set_reg(&name, from_lua_int(v))?)
        },
    )?;
    add_fn(lua, &t, st, "cpu", "regs", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        let t = lua.create_table()?;
        for name in REG_NAMES {
            t.set(*name, to_lua_int(m.reg(name)?))?;
        }
        Ok(t)
    })?;
    add_fn(lua, &t, st, "cpu", "segment", |lua, st, name: String| {
        let sg = st.borrow_mut().machine()?.segment(&name)?;
        let t = lua.create_table()?;
        t.set("selector", sg.selector)?;
        t.set("base", to_lua_int(sg.base))?;
        t.set("limit", sg.limit)?;
        t.set("type", sg.type_)?;
        t.set("dpl", sg.dpl)?;
        t.set("present", sg.present)?;
        t.set("db", sg.db)?;
        t.set("s", sg.s)?;
        t.set("l", sg.l)?;
        t.set("g", sg.g)?;
        Ok(t)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "cpu",
        "set_segment",
        |_, st, (name, fields): (String, Table)| {
            let mut s = st.borrow_mut();
            let m = s.machine()?;
            let mut sg = m.segment(&name)?;
            for pair in fields.pairs::<String, i64>() {
                let (k, v) = pair.map_err(|e| e.to_string())?;
                match k.as_str() {
                    "selector" => {
                        sg.selector =
                            u16::try_from(v).map_err(|_| format!("selector {v} out of range"))?
                    }
                    "base" => sg.base = from_lua_int(v),
                    "limit" => {
                        sg.limit =
                            u32::try_from(v).map_err(|_| format!("limit {v} out of range"))?
                    }
                    "type" => sg.type_ = u8_of(v, "type")?,
                    "dpl" => sg.dpl = u8_of(v, "dpl")?,
                    "present" => sg.present = u8_of(v, "present")?,
                    "db" => sg.db = u8_of(v, "db")?,
                    "s" => sg.s = u8_of(v, "s")?,
                    "l" => sg.l = u8_of(v, "l")?,
                    "g" => sg.g = u8_of(v, "g")?,
                    other => {
                        return Err(format!(
                            "unknown segment field '{other}' (fields: {})",
                            SEG_FIELDS.join(" ")
                        )
                        .into())
                    }
                }
            }
            Ok(m.set_segment(&name, sg)?)
        },
    )?;
    add_fn(lua, &t, st, "cpu", "rdmsr", |_, st, index: i64| {
        let idx = u32::try_from(index).map_err(|_| format!("MSR index {index} out of range"))?;
        Ok(to_lua_int(st.borrow_mut().machine()?.rdmsr(idx)?))
    })?;
    add_fn(
        lua,
        &t,
        st,
        "cpu",
        "wrmsr",
        |_, st, (index, v): (i64, i64)| {
            let idx =
                u32::try_from(index).map_err(|_| format!("MSR index {index} out of range"))?;
            Ok(st.borrow_mut().machine()?.wrmsr(idx, from_lua_int(v))?)
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "cpu",
        "inject_exception",
        |_, st, (vector, code): (i64, Option<i64>)| {
            let v = u8_of(vector, "vector")?;
            let code = code
                .map(|c| u32::try_from(c).map_err(|_| format!("error code {c} out of range")))
                .transpose()?;
            Ok(st.borrow_mut().machine()?.inject_exception(v, code)?)
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "cpu",
        "inject_interrupt",
        |_, st, vector: i64| {
            let v = u8_of(vector, "vector")?;
            Ok(st.borrow_mut().machine()?.inject_interrupt(v)?)
        },
    )?;
    debug_assert!(SEGMENT_NAMES.contains(&"cs"));
    lua.globals().set("cpu", t)
}
