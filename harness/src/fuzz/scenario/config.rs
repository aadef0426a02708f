//! What a fuzz scenario declares in its global `fuzz_config` table, and the
//! command line's overrides.

use mlua::{Table, Value};

use crate::units;

/// Errors of reading `fuzz_config`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has the wrong type or value.
    #[error("fuzz_config.{field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Sources of guest coverage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Coverage {
    /// One-shot breakpoints on the basic blocks of the guest ELF.
    pub blocks: bool,
    /// The map the guest fills itself (ucall COV_MAP, -fsanitize-coverage).
    pub guest_map: bool,
}

/// Sources of comparison feedback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CmpFeedback {
    /// Breakpoints on the `cmp` instructions of the guest ELF.
    pub breakpoints: bool,
    /// ucall CMP from a guest built with -fsanitize-coverage=trace-cmp.
    pub guest: bool,
}

/// A scenario's fuzzing configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FuzzConfig {
    /// Guest-caused exits per execution before it is a hang.
    pub max_exits: u64,
    /// Virtual time per execution before it is a hang (ns).
    pub max_time_ns: u64,
    /// Guest functions whose entry is a crash (a panic or report function).
    pub crash_symbols: Vec<String>,
    /// A regex on the serial output after the fuzz point that is a crash.
    pub crash_serial: Option<String>,
    /// Exit values (debug-exit port or ucall DONE) that are a normal end;
    /// any other value is a crash.
    pub ok_status: Vec<u64>,
    /// Exception vectors whose handler entry (from the guest IDT at the
    /// fuzz point) is a crash.
    pub fatal_vectors: Vec<u8>,
    /// Report hangs as crashes (libFuzzer saves them); otherwise they are
    /// counted and saved as `hang-*` files.
    pub hang_is_crash: bool,
    /// The budget is the normal end of a run (a kernel that idles once it
    /// has handled the input never finishes by itself): reaching it is ok.
    pub done_at_budget: bool,
    /// The guest ELF for symbols and breakpoint coverage: `guest:NAME` for
    /// a built-in guest, or a path.
    pub elf: Option<String>,
    /// Coverage sources.
    pub coverage: Coverage,
    /// Comparison feedback sources.
    pub cmp: CmpFeedback,
    /// A regex on function names: only their blocks and compares are
    /// instrumented (None: every function of the ELF).
    pub instrument: Option<String>,
}

impl Default for FuzzConfig {
    fn default() -> Self {
        FuzzConfig {
            max_exits: 100_000,
            max_time_ns: 1_000_000_000,
            crash_symbols: Vec::new(),
            crash_serial: None,
            ok_status: vec![0],
            fatal_vectors: Vec::new(),
            hang_is_crash: false,
            done_at_budget: false,
            elf: None,
            coverage: Coverage {
                blocks: true,
                guest_map: true,
            },
            cmp: CmpFeedback {
                breakpoints: true,
                guest: true,
            },
            instrument: None,
        }
    }
}

fn field_err(field: &'static str, reason: impl ToString) -> ConfigError {
    ConfigError::Field {
        field,
        reason: reason.to_string(),
    }
}

fn strings(t: &Table, field: &'static str) -> Result<Vec<String>, ConfigError> {
    match t.get::<Value>(field).map_err(|e| field_err(field, e))? {
        Value::Nil => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.to_string_lossy()]),
        Value::Table(list) => list
            .sequence_values::<String>()
            .map(|v| v.map_err(|_| field_err(field, "expected a list of strings")))
            .collect(),
        _ => Err(field_err(field, "expected a string or a list of strings")),
    }
}

fn ints(t: &Table, field: &'static str) -> Result<Option<Vec<u64>>, ConfigError> {
    match t.get::<Value>(field).map_err(|e| field_err(field, e))? {
        Value::Nil => Ok(None),
        Value::Integer(i) => Ok(Some(vec![crate::script::convert::from_lua_int(i)])),
        Value::Table(list) => list
            .sequence_values::<i64>()
            .map(|v| {
                v.map(crate::script::convert::from_lua_int)
                    .map_err(|_| field_err(field, "expected a list of integers"))
            })
            .collect::<Result<Vec<u64>, _>>()
            .map(Some),
        _ => Err(field_err(
            field,
            "expected an integer or a list of integers",
        )),
    }
}

fn sources(
    t: &Table,
    field: &'static str,
    names: [&str; 2],
) -> Result<Option<[bool; 2]>, ConfigError> {
    let list = match t.get::<Value>(field).map_err(|e| field_err(field, e))? {
        Value::Nil => return Ok(None),
        Value::Boolean(b) => return Ok(Some([b, b])),
        _ => strings(t, field)?,
    };
    parse_sources(&list.join(","), names)
        .map(Some)
        .map_err(|e| field_err(field, e))
}

/// Parses a source list such as `blocks,guest`, `all` or `none`.
pub fn parse_sources(s: &str, names: [&str; 2]) -> Result<[bool; 2], String> {
    let mut out = [false; 2];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => out = [true; 2],
            "none" => out = [false; 2],
            p if p == names[0] => out[0] = true,
            p if p == names[1] => out[1] = true,
            p => {
                return Err(format!(
                    "unknown source '{p}' (expected {}, {}, all or none)",
                    names[0], names[1]
                ))
            }
        }
    }
    Ok(out)
}

impl FuzzConfig {
    /// Reads `fuzz_config` (None: the defaults).
    pub fn from_lua(t: Option<&Table>) -> Result<FuzzConfig, ConfigError> {
        let mut c = FuzzConfig::default();
        let Some(t) = t else {
            return Ok(c);
        };
        if let Some(v) = t
            .get::<Option<i64>>("max_exits")
            .map_err(|_| field_err("max_exits", "expected an integer"))?
        {
            c.max_exits = u64::try_from(v).map_err(|_| field_err("max_exits", "negative"))?;
        }
        match t
            .get::<Value>("max_time")
            .map_err(|e| field_err("max_time", e))?
        {
            Value::Nil => {}
            Value::Integer(ns) => c.max_time_ns = crate::script::convert::from_lua_int(ns.max(0)),
            Value::String(s) => {
                c.max_time_ns = units::parse_duration(&s.to_string_lossy())
                    .map_err(|e| field_err("max_time", e))?
            }
            _ => {
                return Err(field_err(
                    "max_time",
                    "expected a duration such as \"20ms\"",
                ))
            }
        }
        c.crash_symbols = strings(t, "crash_symbols")?;
        c.crash_serial = t
            .get::<Option<String>>("crash_serial")
            .map_err(|_| field_err("crash_serial", "expected a regex string"))?;
        if let Some(re) = &c.crash_serial {
            regex::bytes::Regex::new(re).map_err(|e| field_err("crash_serial", e))?;
        }
        if let Some(v) = ints(t, "ok_status")? {
            c.ok_status = v;
        }
        if let Some(v) = ints(t, "fatal_vectors")? {
            c.fatal_vectors = v
                .into_iter()
                .map(|x| {
                    u8::try_from(x).map_err(|_| field_err("fatal_vectors", "vectors are 0..255"))
                })
                .collect::<Result<_, _>>()?;
        }
        c.hang_is_crash = t
            .get::<Option<bool>>("hang_is_crash")
            .map_err(|_| field_err("hang_is_crash", "expected a boolean"))?
            .unwrap_or(false);
        c.done_at_budget = t
            .get::<Option<bool>>("done_at_budget")
            .map_err(|_| field_err("done_at_budget", "expected a boolean"))?
            .unwrap_or(false);
        c.elf = t
            .get::<Option<String>>("elf")
            .map_err(|_| field_err("elf", "expected \"guest:NAME\" or a path"))?;
        c.instrument = t
            .get::<Option<String>>("instrument")
            .map_err(|_| field_err("instrument", "expected a regex on function names"))?;
        if let Some(re) = &c.instrument {
            regex::Regex::new(re).map_err(|e| field_err("instrument", e))?;
        }
        if let Some([blocks, guest_map]) = sources(t, "coverage", ["blocks", "guest"])? {
            c.coverage = Coverage { blocks, guest_map };
        }
        if let Some([breakpoints, guest]) = sources(t, "cmp", ["breakpoints", "guest"])? {
            c.cmp = CmpFeedback { breakpoints, guest };
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_table_overrides_defaults_and_rejects_bad_fields() {
        let lua = mlua::Lua::new();
        let t: Table = lua
            .load(
                r#"return { max_time = "20ms", crash_symbols = "panic", ok_status = {0, 3},
                           coverage = "guest", cmp = false, fatal_vectors = {13, 14} }"#,
            )
            .eval()
            .unwrap();
        let c = FuzzConfig::from_lua(Some(&t)).unwrap();
        assert_eq!(c.max_time_ns, 20_000_000);
        assert_eq!(c.crash_symbols, vec!["panic".to_string()]);
        assert_eq!(c.ok_status, vec![0, 3]);
        assert_eq!(c.fatal_vectors, vec![13, 14]);
        assert_eq!(
            c.coverage,
            Coverage {
                blocks: false,
                guest_map: true
            }
        );
        assert_eq!(c.cmp, CmpFeedback::default());
        let bad: Table = lua.load(r#"return { coverage = "lines" }"#).eval().unwrap();
        let e = FuzzConfig::from_lua(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("unknown source 'lines'"), "{e}");
        let bad: Table = lua.load(r#"return { crash_serial = "(" }"#).eval().unwrap();
        assert!(FuzzConfig::from_lua(Some(&bad)).is_err());
    }
}
