//! Lua scenarios: one Lua 5.4 state per scenario or test, with the API
//! namespaces (`vm`, `mem`, `cpu`, `pio`, `mmio`, `dev`, `hook`, `serial`,
//! `clock`, `t`, `virtio`, `fuzz`, `sym`) bound to one machine, and the `lunavm test` runner.

mod clock;
pub mod convert;
mod cpu;
mod dev;
mod fuzz;
mod io;
mod mem;
pub mod runner;
mod serial;
pub mod session;
pub mod snapshot;
mod sym;
mod t;
mod virtio;
mod vm;

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use mlua::{Function, Lua, Table, Value};

use crate::machine::Machine;
use convert::{describe, Shared};
use session::Session;

/// Every namespace the API registers, in reference order.
pub const NAMESPACES: &[&str] = &[
    "vm", "mem", "cpu", "pio", "mmio", "dev", "hook", "serial", "clock", "t", "virtio", "fuzz",
    "sym",
];

/// The helper library shipped with lunavm, preloaded as `require("lunavm.NAME")`.
const LIBRARY: &[(&str, &str)] = &[
    (
        "lunavm.guest",
        include_str!("../../../scripts/lib/guest.lua"),
    ),
    ("lunavm.hex", include_str!("../../../scripts/lib/hex.lua")),
    (
        "lunavm.linux",
        include_str!("../../../scripts/lib/linux.lua"),
    ),
    ("lunavm.net", include_str!("../../../scripts/lib/net.lua")),
];

/// Errors of loading or running a scenario.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script file cannot be read.
    #[error("Cannot read script {path}: {source}")]
    Read {
        /// Its path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Lua reported an error (syntax or runtime); the message names file and line.
    #[error("{0}")]
    Lua(String),
}

impl ScriptError {
    fn lua(e: &mlua::Error) -> Self {
        ScriptError::Lua(describe(e))
    }
}

/// Options of a scenario's Lua state.
#[derive(Clone, Debug, Default)]
pub struct ScenarioOptions {
    /// Seed `vm.boot` uses when the script gives none.
    pub seed: u64,
    /// Virtual-time budget of the whole scenario (None: unlimited).
    pub vtime_budget: Option<u64>,
    /// Arguments for the global `arg` table (`arg[0]` is the script).
    pub args: Vec<String>,
}

/// A Lua state with the lunavm API bound to one (not yet booted) machine.
pub struct Scenario {
    lua: Lua,
    session: Shared,
}

impl Scenario {
    /// A fresh Lua state with every namespace registered.
    pub fn new(opts: &ScenarioOptions) -> Result<Scenario, ScriptError> {
        let lua = Lua::new();
        let session: Shared = Rc::new(RefCell::new(Session::new(opts.seed, opts.vtime_budget)));
        let reg = || -> mlua::Result<()> {
            vm::register(&lua, &session)?;
            mem::register(&lua, &session)?;
            cpu::register(&lua, &session)?;
            io::register(&lua, &session)?;
            dev::register(&lua, &session)?;
            serial::register(&lua, &session)?;
            clock::register(&lua, &session)?;
            snapshot::register(&lua, &session)?;
            t::register(&lua, &session)?;
            virtio::register(&lua, &session)?;
            fuzz::register(&lua, &session)?;
            sym::register(&lua, &session)?;
            let preload: Table = lua.globals().get::<Table>("package")?.get("preload")?;
            for (name, src) in LIBRARY {
                let chunk = lua
                    .load(*src)
                    .set_name(format!("@{name}"))
                    .into_function()?;
                preload.set(*name, chunk)?;
            }
            let arg = lua.create_table()?;
            for (i, a) in opts.args.iter().enumerate() {
                arg.set(i, a.as_str())?;
            }
            lua.globals().set("arg", arg)
        };
        reg().map_err(|e| ScriptError::lua(&e))?;
        Ok(Scenario { lua, session })
    }

    /// Runs a script file's top-level code; returns what it returned.
    pub fn exec_file(&self, path: &Path) -> Result<Value, ScriptError> {
        let src = std::fs::read(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.lua
            .load(src)
            .set_name(format!("@{}", path.display()))
            .call::<Value>(())
            .map_err(|e| ScriptError::lua(&e))
    }

    /// Runs a chunk of Lua source (for tests and `monitor lua` later).
    pub fn exec_str(&self, name: &str, src: &str) -> Result<Value, ScriptError> {
        self.lua
            .load(src)
            .set_name(format!("={name}"))
            .call::<Value>(())
            .map_err(|e| ScriptError::lua(&e))
    }

    /// Runs `src` the way an interactive console does and returns its text:
    /// as an expression when it is one (`return SRC`), else as statements;
    /// what `print` printed, then each value returned on a line (integers in
    /// decimal and hex, strings quoted), or `error: MESSAGE` (file and line
    /// named `name`). Used by gdb's `monitor lua`.
    pub fn console(&self, name: &str, src: &str) -> String {
        let printed = Rc::new(RefCell::new(String::new()));
        let result = self.console_inner(name, src, &printed);
        let mut text = printed.take();
        match result {
            Ok(values) => {
                for v in &values {
                    text.push_str(&convert::show(v));
                    text.push('\n');
                }
            }
            Err(e) => {
                text.push_str("error: ");
                text.push_str(&describe(&e));
                text.push('\n');
            }
        }
        text
    }

    fn console_inner(
        &self,
        name: &str,
        src: &str,
        printed: &Rc<RefCell<String>>,
    ) -> mlua::Result<mlua::MultiValue> {
        let sink = printed.clone();
        let print = self
            .lua
            .create_function(move |lua, args: mlua::Variadic<Value>| {
                let mut line = Vec::new();
                for v in args.iter() {
                    let s: mlua::LuaString = lua.globals().get::<Function>("tostring")?.call(v)?;
                    line.push(s.to_string_lossy());
                }
                let mut out = sink.borrow_mut();
                out.push_str(&line.join("\t"));
                out.push('\n');
                Ok(())
            })?;
        let globals = self.lua.globals();
        let old: Value = globals.get("print")?;
        globals.set("print", print)?;
        let chunk_name = format!("={name}");
        let result = match self
            .lua
            .load(format!("return {src}"))
            .set_name(chunk_name.clone())
            .into_function()
        {
            Ok(f) => f.call::<mlua::MultiValue>(()),
            Err(_) => self
                .lua
                .load(src)
                .set_name(chunk_name)
                .call::<mlua::MultiValue>(()),
        };
        globals.set("print", old)?;
        result
    }

    /// A handle on an existing Lua state and its session (for a binding that
    /// hands them to the gdb server).
    pub(crate) fn from_parts(lua: Lua, session: Shared) -> Scenario {
        Scenario { lua, session }
    }

    /// The Lua state.
    pub(crate) fn lua(&self) -> &Lua {
        &self.lua
    }

    /// The session behind the bindings.
    pub(crate) fn shared(&self) -> &Shared {
        &self.session
    }

    /// Makes `machine` the session's machine (as if `vm.boot` had built it).
    pub fn set_machine(&self, machine: Machine) {
        let mut s = self.session.borrow_mut();
        s.serial_cursor = machine.serial_output().len();
        s.machine = Some(machine);
    }

    /// The session's machine, borrowed mutably; None before `vm.boot`.
    pub fn machine_mut(&self) -> Option<std::cell::RefMut<'_, Machine>> {
        std::cell::RefMut::filter_map(self.session.borrow_mut(), |s| s.machine.as_mut()).ok()
    }

    /// Takes the session's machine out (the session has none afterwards).
    pub fn take_machine(&self) -> Option<Machine> {
        self.session.borrow_mut().machine.take()
    }

    /// The global functions whose names start with `test_`, in definition order.
    pub fn test_names(&self) -> Vec<String> {
        let mut found: Vec<(usize, String)> = Vec::new();
        for pair in self.lua.globals().pairs::<Value, Value>() {
            let Ok((Value::String(k), Value::Function(f))) = pair else {
                continue;
            };
            let name = k.to_string_lossy();
            if name.starts_with("test_") {
                let line = f.info().line_defined.unwrap_or(0);
                found.push((line, name));
            }
        }
        found.sort();
        found.into_iter().map(|(_, n)| n).collect()
    }

    /// Calls global function `name` if it exists; Ok(false) if it does not.
    pub fn call_global(&self, name: &str) -> Result<bool, mlua::Error> {
        match self.lua.globals().get::<Value>(name)? {
            Value::Function(f) => f.call::<()>(()).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Whether the script defined global function `name`.
    pub fn has_function(&self, name: &str) -> bool {
        matches!(
            self.lua.globals().get::<Value>(name),
            Ok(Value::Function(_))
        )
    }

    /// Replaces the machine with one restored from a snapshot file.
    pub fn load_snapshot(&self, path: &Path) -> Result<(), ScriptError> {
        snapshot::load_into(&self.session, path).map_err(|e| match e {
            convert::ApiError::Msg(m) => ScriptError::Lua(m),
            convert::ApiError::Lua(e) => ScriptError::lua(&e),
        })
    }

    /// Saves the machine (not the Lua state) to a snapshot file.
    pub fn save_machine(&self, path: &Path) -> Result<(), ScriptError> {
        let mut s = self.session.borrow_mut();
        let m = s
            .machine
            .as_mut()
            .ok_or_else(|| ScriptError::Lua("the machine is not booted".into()))?;
        let snap = m
            .take_snapshot()
            .map_err(|e| ScriptError::Lua(convert::error_chain(&e)))?;
        crate::snapshot::file::save(&snap, path)
            .map_err(|e| ScriptError::Lua(convert::error_chain(&e)))
    }

    /// A global table, if the script defined one (e.g. `budget`).
    pub fn global_table(&self, name: &str) -> Option<Table> {
        self.lua.globals().get::<Option<Table>>(name).ok().flatten()
    }

    /// The session (machine, outcome, results).
    pub fn session(&self) -> std::cell::Ref<'_, Session> {
        self.session.borrow()
    }

    /// Every API function registered, as "ns.name", sorted.
    pub fn api_functions(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ns in NAMESPACES {
            if let Ok(t) = self.lua.globals().get::<Table>(*ns) {
                for (k, _) in t.pairs::<String, Function>().flatten() {
                    out.push(format!("{ns}.{k}"));
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::new(&ScenarioOptions::default()).unwrap()
    }

    #[test]
    fn every_namespace_is_registered() {
        let s = scenario();
        let fns = s.api_functions();
        for ns in NAMESPACES {
            assert!(fns.iter().any(|f| f.starts_with(&format!("{ns}."))), "{ns}");
        }
        assert!(fns.contains(&"mem.vread32".to_string()));
    }

    #[test]
    fn errors_name_the_chunk_and_line() {
        let s = scenario();
        let e = s
            .exec_str("probe.lua", "\n\nmem.read32(0)")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "probe.lua:3: mem.read32: the machine is not booted: call vm.boot{} first"
        );
        let e = s
            .exec_str("probe.lua", "mem.read32('x')")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("probe.lua:1: mem.read32: bad arguments:"),
            "{e}"
        );
        let e = s.exec_str("probe.lua", "x = = 1").unwrap_err().to_string();
        assert!(e.starts_with("probe.lua:1:"), "{e}");
    }

    #[test]
    fn assertions_record_the_outcome() {
        let s = scenario();
        let e = s.exec_str("a.lua", "t.eq(1, 2)").unwrap_err().to_string();
        assert_eq!(e, "a.lua:1: t.eq failed: left 1 (0x1), right 2 (0x2)");
        assert!(matches!(
            s.session().outcome,
            Some(session::Outcome::Fail(_))
        ));
    }

    #[test]
    fn tests_are_listed_in_definition_order() {
        let s = scenario();
        s.exec_str(
            "x.lua",
            "function test_b() end\nfunction test_a() end\nfunction helper() end",
        )
        .unwrap();
        assert_eq!(s.test_names(), vec!["test_b", "test_a"]);
    }

    #[test]
    fn the_library_is_preloaded() {
        let s = scenario();
        s.exec_str(
            "x.lua",
            "local hex = require('lunavm.hex'); assert(hex.u64(-1) == '0xffffffffffffffff')",
        )
        .unwrap();
    }
}
