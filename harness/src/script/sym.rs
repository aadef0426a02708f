//! `sym`: guest symbol tables (ELF or System.map) and frame-pointer
//! backtraces of the vCPU, over [`crate::symbols`].

use std::path::Path;
use std::rc::Rc;

use mlua::{AnyUserData, Lua, Table, UserData, UserDataFields, UserDataMethods};

use super::convert::{add_fn, error_chain, from_lua_int, lua_error, to_lua_int, ApiError};
use super::convert::{ApiResult, Shared};
use crate::symbols::{self, FrameRegs, Symbols};

/// Frames a backtrace returns when the script sets no `max=`.
const DEFAULT_MAX_FRAMES: usize = 32;
/// The most frames a backtrace may ask for.
const MAX_FRAMES: usize = 4096;

/// A loaded symbol table.
pub struct SymHandle {
    syms: Rc<Symbols>,
    source: String,
    st: Shared,
}

impl SymHandle {
    fn addr(&self, name: &str) -> ApiResult<i64> {
        self.syms
            .lookup(name)
            .map(to_lua_int)
            .ok_or_else(|| format!("no symbol {name:?} in {}", self.source).into())
    }
}

fn wrap<T>(lua: &Lua, name: &str, r: ApiResult<T>) -> mlua::Result<T> {
    r.map_err(|e| match e {
        ApiError::Msg(m) => lua_error(lua, name, m),
        ApiError::Lua(e) => e,
    })
}

/// `s, name, offset` of a resolved address, or nil.
fn resolve(syms: &Symbols, addr: i64) -> (Option<String>, Option<String>, Option<i64>) {
    match syms.resolve(from_lua_int(addr)) {
        Some(r) => (
            Some(r.to_string()),
            Some(r.name.to_string()),
            Some(to_lua_int(r.offset)),
        ),
        None => (None, None, None),
    }
}

impl UserData for SymHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("count", |_, h| Ok(h.syms.len()));
        fields.add_field_method_get("source", |_, h| Ok(h.source.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("addr", |lua, h, name: String| {
            wrap(lua, "sym:addr", h.addr(&name))
        });
        methods.add_method("lookup", |_, h, name: String| {
            Ok(h.syms.lookup(&name).map(to_lua_int))
        });
        methods.add_method("size", |_, h, name: String| {
            Ok(h.syms.symbol(&name).and_then(|s| s.size).map(to_lua_int))
        });
        methods.add_method("resolve", |_, h, addr: i64| Ok(resolve(&h.syms, addr)));
        methods.add_method("backtrace", |lua, h, opts: Option<Table>| {
            let r = backtrace(lua, &h.st, &h.syms, opts);
            wrap(lua, "sym:backtrace", r)
        });
    }
}

fn handle(h: &AnyUserData) -> ApiResult<mlua::UserDataRef<SymHandle>> {
    h.borrow::<SymHandle>()
        .map_err(|_| "expected a symbol table from sym.load or sym.guest".into())
}

fn int_opt(opts: &Option<Table>, key: &str) -> ApiResult<Option<i64>> {
    match opts {
        Some(t) => t
            .get::<Option<i64>>(key)
            .map_err(|_| format!("option '{key}' must be an integer").into()),
        None => Ok(None),
    }
}

fn backtrace(lua: &Lua, st: &Shared, syms: &Symbols, opts: Option<Table>) -> ApiResult<Table> {
    let max = match int_opt(&opts, "max")? {
        None => DEFAULT_MAX_FRAMES,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_FRAMES)
            .ok_or_else(|| format!("max={n} is not between 0 and {MAX_FRAMES}"))?,
    };
    let frames = {
        let mut s = st.borrow_mut();
        let m = s.machine()?;
        let (rip, rsp, rbp) = (
            int_opt(&opts, "rip")?,
            int_opt(&opts, "rsp")?,
            int_opt(&opts, "rbp")?,
        );
        if rip.is_none() && rsp.is_none() && rbp.is_none() {
            symbols::backtrace(m, syms, max).map_err(|e| error_chain(&e))?
        } else {
            let r = m.regs()?;
            let regs = FrameRegs {
                rip: rip.map_or(r.rip, from_lua_int),
                rsp: rsp.map_or(r.rsp, from_lua_int),
                rbp: rbp.map_or(r.rbp, from_lua_int),
            };
            let pregs = crate::vm::regs::paging_regs(&m.sregs()?);
            symbols::backtrace_from(m.memory(), &pregs, regs, syms, max)
        }
    };
    let out = lua.create_table()?;
    for f in frames {
        let t = lua.create_table()?;
        t.set("addr", to_lua_int(f.addr))?;
        t.set("symbol", f.symbol())?;
        if let Some(name) = &f.function {
            t.set("name", name.as_str())?;
            t.set("offset", to_lua_int(f.offset))?;
        }
        out.push(t)?;
    }
    Ok(out)
}

fn load(st: &Shared, path: &str) -> ApiResult<SymHandle> {
    let syms = Symbols::load(Path::new(path)).map_err(|e| error_chain(&e))?;
    Ok(SymHandle {
        syms: Rc::new(syms),
        source: path.to_string(),
        st: st.clone(),
    })
}

fn guest(st: &Shared, name: &str) -> ApiResult<SymHandle> {
    let g = crate::guests::find(name).ok_or_else(|| format!("no built-in guest {name:?}"))?;
    let syms = Symbols::from_elf(g.elf).map_err(|e| error_chain(&e))?;
    Ok(SymHandle {
        syms: Rc::new(syms),
        source: format!("guest:{name}"),
        st: st.clone(),
    })
}

/// Registers the `sym` namespace.
pub fn register(lua: &Lua, st: &Shared) -> mlua::Result<()> {
    let t = lua.create_table()?;
    add_fn(lua, &t, st, "sym", "load", |_, st, path: String| {
        load(st, &path)
    })?;
    add_fn(lua, &t, st, "sym", "guest", |_, st, name: String| {
        guest(st, &name)
    })?;
    add_fn(
        lua,
        &t,
        st,
        "sym",
        "backtrace",
        |lua, st, (h, opts): (AnyUserData, Option<Table>)| {
            let h = handle(&h)?;
            let syms = h.syms.clone();
            backtrace(lua, st, &syms, opts)
        },
    )?;
    lua.globals().set("sym", t)
}
