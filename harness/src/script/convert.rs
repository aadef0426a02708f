//! Conversions and error helpers shared by the Lua bindings: every error a
//! binding raises names the script file and line and the function.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{FromLuaMulti, IntoLuaMulti, Lua, MultiValue, Table, Value};

use super::session::Session;
use crate::machine::MachineError;
use crate::units;

/// The session shared by every binding of one Lua state.
pub type Shared = Rc<RefCell<Session>>;

/// An error raised by a binding.
#[derive(Debug)]
pub enum ApiError {
    /// A message; the file, line and function name are added.
    Msg(String),
    /// An error that already carries its context (raised by Lua code a binding
    /// called, e.g. a hook).
    Lua(mlua::Error),
}

impl From<MachineError> for ApiError {
    fn from(e: MachineError) -> Self {
        ApiError::Msg(error_chain(&e))
    }
}

impl From<mlua::Error> for ApiError {
    fn from(e: mlua::Error) -> Self {
        ApiError::Lua(e)
    }
}

impl From<String> for ApiError {
    fn from(s: String) -> Self {
        ApiError::Msg(s)
    }
}

impl From<&str> for ApiError {
    fn from(s: &str) -> Self {
        ApiError::Msg(s.to_string())
    }
}

/// A binding's result.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The innermost message of a Lua error, without mlua's wrapping and tracebacks.
pub fn describe(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => describe(cause),
        // Lua appends a traceback to runtime errors; the first line names the
        // file and line, which is what people need.
        mlua::Error::RuntimeError(m) => m
            .split("\nstack traceback:")
            .next()
            .unwrap_or(m)
            .to_string(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::BadArgument {
            pos, name, cause, ..
        } => {
            let n = name
                .as_deref()
                .map(|n| format!(" '{n}'"))
                .unwrap_or_default();
            format!("bad argument #{pos}{n}: {}", describe(cause))
        }
        mlua::Error::FromLuaConversionError { from, to, message } => {
            let m = message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            format!("expected {}, got {from}{m}", lua_type_name(to))
        }
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", describe(cause)),
        other => other.to_string(),
    }
}

/// The Lua name of a Rust type mlua converts to.
fn lua_type_name(rust: &str) -> &str {
    match rust {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "an integer"
        }
        "f32" | "f64" => "a number",
        "String" | "LuaString" | "string" => "a string",
        "Table" | "table" => "a table",
        "Function" | "function" => "a function",
        "bool" => "a boolean",
        other => other,
    }
}

/// "file:line" of the Lua code that called the running Rust function.
pub fn location(lua: &Lua) -> String {
    for level in 0..10 {
        let found = lua.inspect_stack(level, |d| {
            let line = d.current_line()?;
            let src = d.source().short_src.map(|s| s.into_owned())?;
            // Skip C functions and lunavm's own wrapper chunk.
            (src != "[C]" && src != "lunavm").then(|| format!("{src}:{line}"))
        });
        if let Some(Some(loc)) = found {
            return loc;
        }
    }
    "?".into()
}

/// A runtime error with location and function name.
pub fn lua_error(lua: &Lua, func: &str, msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::RuntimeError(format!("{}: {func}: {msg}", location(lua)))
}

/// Lua code wrapping a binding so the errors it raises are plain strings (mlua
/// raises its errors as userdata, which `pcall` callers cannot `:find`). The
/// binding returns the sentinel and a message instead of raising; the wrapper
/// raises the message as a string, without adding a position (the message
/// already names the script's file and line).
const STRINGIFY: &str = r#"
local sentinel = ...
local error, pack, unpack = error, table.pack, table.unpack
return function(impl)
  return function(...)
    local r = pack(impl(...))
    if r[1] == sentinel then error(r[2], 0) end
    return unpack(r, 1, r.n)
  end
end
"#;

/// The wrapper factory of [`STRINGIFY`] and its sentinel, made once per Lua state.
fn stringify(lua: &Lua) -> mlua::Result<(mlua::Function, Table)> {
    const FACTORY: &str = "lunavm.stringify";
    const SENTINEL: &str = "lunavm.error";
    if let (Ok(f), Ok(t)) = (
        lua.named_registry_value::<mlua::Function>(FACTORY),
        lua.named_registry_value::<Table>(SENTINEL),
    ) {
        return Ok((f, t));
    }
    let sentinel = lua.create_table()?;
    let f: mlua::Function = lua
        .load(STRINGIFY)
        .set_name("=lunavm")
        .call(sentinel.clone())?;
    lua.set_named_registry_value(FACTORY, f.clone())?;
    lua.set_named_registry_value(SENTINEL, sentinel.clone())?;
    Ok((f, sentinel))
}

/// Registers `ns.name` in `tbl`: arguments are converted with a clear error, and
/// the binding's errors get the file, line and name.
pub fn add_fn<A, R, F>(
    lua: &Lua,
    tbl: &Table,
    st: &Shared,
    ns: &str,
    name: &str,
    f: F,
) -> mlua::Result<()>
where
    A: FromLuaMulti,
    R: IntoLuaMulti,
    F: Fn(&Lua, &Shared, A) -> ApiResult<R> + 'static,
{
    let full = format!("{ns}.{name}");
    let st = st.clone();
    let (factory, sentinel) = stringify(lua)?;
    let func = lua.create_function(move |lua, args: MultiValue| {
        let message = match A::from_lua_multi(args, lua) {
            Err(e) => format!("{}: {full}: bad arguments: {}", location(lua), describe(&e)),
            Ok(a) => match f(lua, &st, a) {
                Ok(r) => return r.into_lua_multi(lua),
                Err(ApiError::Msg(m)) => format!("{}: {full}: {m}", location(lua)),
                // Errors from Lua code the binding called: one clean line.
                Err(ApiError::Lua(e)) => describe(&e),
            },
        };
        (sentinel.clone(), message).into_lua_multi(lua)
    })?;
    let wrapped: mlua::Function = factory.call(func)?;
    tbl.set(name, wrapped)
}

/// A guest value (u64) as a Lua integer (two's complement for values >= 2^63).
pub fn to_lua_int(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A Lua integer as a guest value (negative integers wrap, as hex literals do).
pub fn from_lua_int(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// A duration argument: nanoseconds or a string with a unit.
pub fn duration(v: &Value) -> ApiResult<u64> {
    match v {
        Value::Integer(n) if *n >= 0 => Ok(from_lua_int(*n)),
        Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 => {
            Ok(n.to_string().parse().unwrap_or(u64::MAX))
        }
        Value::String(s) => {
            units::parse_duration(&s.to_string_lossy()).map_err(|e| e.to_string().into())
        }
        other => Err(format!(
            "expected a duration (nanoseconds or \"20ms\"), got {}",
            other.type_name()
        )
        .into()),
    }
}

/// A size argument: bytes or a string with a unit.
pub fn size(v: &Value) -> ApiResult<u64> {
    match v {
        Value::Integer(n) if *n >= 0 => Ok(from_lua_int(*n)),
        Value::String(s) => {
            units::parse_size(&s.to_string_lossy()).map_err(|e| e.to_string().into())
        }
        other => Err(format!(
            "expected a size (bytes or \"64M\"), got {}",
            other.type_name()
        )
        .into()),
    }
}

/// A value for messages: integers in decimal and hex, strings quoted.
pub fn show(v: &Value) -> String {
    match v {
        Value::Integer(n) => format!("{n} ({:#x})", from_lua_int(*n)),
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => format!("{} {:?}", other.type_name(), other.to_pointer()),
    }
}

/// A regex error on one line: the pattern and the parser's last line.
pub fn regex_error(pattern: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .last()
        .unwrap_or(&text)
        .trim_start_matches("error: ");
    format!("bad pattern {pattern:?}: {last}")
}
