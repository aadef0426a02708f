//! `t`: assertions and results. A failed assertion records the test's outcome
//! and raises an error that ends the test; `t.skip` does the same for a skip.

use mlua::{Lua, Table, Value};

use super::convert::{add_fn, location, show, ApiError, ApiResult, Shared};
use super::session::{Outcome, SubResult};

/// Records how the test ends and returns the error that ends it.
fn end(st: &Shared, full: String, outcome: fn(String) -> Outcome) -> ApiResult<()> {
    st.borrow_mut().outcome = Some(outcome(full.clone()));
    Err(ApiError::Lua(mlua::Error::RuntimeError(full)))
}

/// Records a failed assertion of `func` and returns the error that ends the test.
fn fail(lua: &Lua, st: &Shared, func: &str, msg: String) -> ApiResult<()> {
    end(
        st,
        format!("{}: {func} failed: {msg}", location(lua)),
        Outcome::Fail,
    )
}

fn suffix(msg: Option<String>) -> String {
    msg.map(|m| format!(" — {m}")).unwrap_or_default()
}

/// Registers the `t` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(
        lua,
        &t,
        st,
        "t",
        "ok",
        |lua, st, (v, msg): (Value, Option<String>)| {
            if matches!(v, Value::Nil | Value::Boolean(false)) {
                return fail(
                    lua,
                    st,
                    "t.ok",
                    format!("value is {}{}", show(&v), suffix(msg)),
                );
            }
            Ok(())
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "t",
        "eq",
        |lua, st, (a, b, msg): (Value, Value, Option<String>)| {
            if !a.equals(&b)? {
                return fail(
                    lua,
                    st,
                    "t.eq",
                    format!("left {}, right {}{}", show(&a), show(&b), suffix(msg)),
                );
            }
            Ok(())
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "t",
        "neq",
        |lua, st, (a, b, msg): (Value, Value, Option<String>)| {
            if a.equals(&b)? {
                return fail(
                    lua,
                    st,
                    "t.neq",
                    format!("both are {}{}", show(&a), suffix(msg)),
                );
            }
            Ok(())
        },
    )?;
    add_fn(
        lua,
        &t,
        st,
        "t",
        "match",
        |lua, st, (s, pattern, msg): (String, String, Option<String>)| {
            let find: mlua::Function = lua.globals().get::<Table>("string")?.get("find")?;
            if find.call::<Value>((s.as_str(), pattern.as_str()))?.is_nil() {
                return fail(
                    lua,
                    st,
                    "t.match",
                    format!(
                        "{s:?} does not match the pattern {pattern:?}{}",
                        suffix(msg)
                    ),
                );
            }
            Ok(())
        },
    )?;
    add_fn(lua, &t, st, "t", "fail", |lua, st, msg: Option<String>| {
        let msg = msg.unwrap_or_else(|| "t.fail".into());
        end(st, format!("{}: {msg}", location(lua)), Outcome::Fail)
    })?;
    add_fn(lua, &t, st, "t", "skip", |lua, st, msg: Option<String>| {
        let msg = msg.unwrap_or_else(|| "skipped".into());
        end(st, format!("{}: {msg}", location(lua)), Outcome::Skip)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "t",
        "result",
        |_, st, (name, status, msg): (String, String, Option<String>)| {
            if !matches!(status.as_str(), "pass" | "fail" | "skip") {
                return Err(format!(
                    "status must be \"pass\", \"fail\" or \"skip\", not {status:?}"
                )
                .into());
            }
            st.borrow_mut().results.push(SubResult {
                name,
                status,
                message: msg.unwrap_or_default(),
            });
            Ok(())
        },
    )?;
    lua.globals().set("t", t)
}
