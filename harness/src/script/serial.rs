//! `serial`: the 16550 UART's input and output.

use mlua::Lua;

use super::convert::{add_fn, duration, ApiError, Shared};
use super::session::{self, RunEnd};
use crate::machine::{SerialWatch, StopCondition, StopReason};

/// Default `serial.expect` timeout: 1 s of virtual time.
pub const EXPECT_TIMEOUT_NS: u64 = 1_000_000_000;

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(400);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Registers the `serial` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(
        lua,
        &t,
        st,
        "serial",
        "write",
        |_, st, s: mlua::LuaString| {
            st.borrow_mut().machine()?.serial_input(&s.as_bytes());
            Ok(())
        },
    )?;
    add_fn(lua, &t, st, "serial", "output", |lua, st, ()| {
        let out = st.borrow_mut().machine()?.serial_output();
        Ok(lua.create_string(&out)?)
    })?;
    add_fn(lua, &t, st, "serial", "read", |lua, st, ()| {
        let mut s = st.borrow_mut();
        let out = s.machine()?.serial_output();
        let from = s.serial_cursor.min(out.len());
        s.serial_cursor = out.len();
        Ok(lua.create_string(&out[from..])?)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "serial",
        "expect",
        |lua, st, (pattern, timeout): (String, Option<mlua::Value>)| {
            let regex = regex::bytes::Regex::new(&pattern)
                .map_err(|e| super::convert::regex_error(&pattern, &e))?;
            let timeout = match timeout {
                Some(v) => duration(&v)?,
                None => EXPECT_TIMEOUT_NS,
            };
            let from = st.borrow().serial_cursor;
            let cond = StopCondition {
                max_time_ns: Some(timeout),
                serial: Some(SerialWatch { regex, from }),
                ..StopCondition::default()
            };
            let end = session::run(lua, st, cond, &[])?;
            let unread = {
                let mut s = st.borrow_mut();
                let out = s.machine()?.serial_output();
                tail(&out[from.min(out.len())..])
            };
            match end {
                RunEnd::Machine(StopReason::SerialMatch { text, end }) => {
                    st.borrow_mut().serial_cursor = end;
                    Ok(text)
                }
                RunEnd::Machine(StopReason::TimeBudget { .. }) => Err(ApiError::Msg(format!(
                    "/{pattern}/ not seen within {} of virtual time; unread output: {unread:?}",
                    crate::report::format_ns(timeout)
                ))),
                RunEnd::Machine(other) => Err(ApiError::Msg(format!(
                    "the guest stopped ({}) before /{pattern}/ appeared; unread output: {unread:?}",
                    other.describe()
                ))),
                RunEnd::Hook(id) => Err(ApiError::Msg(format!(
                    "hook {id} stopped the run before /{pattern}/ appeared"
                ))),
            }
        },
    )?;
    lua.globals().set("serial", t)
}
