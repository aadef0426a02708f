//! `lunavm fuzz --to-test`: a Lua regression test that replays one input
//! with `fuzz.replay` and fails while the bug it found is there.

use std::path::{Path, PathBuf};

use super::verdict::Verdict;

/// `s` as a Lua string literal (printable ASCII kept, the rest escaped).
pub fn lua_literal(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// The test's source.
pub fn source(scenario: &Path, args: &[String], input: &[u8], v: &Verdict) -> String {
    let sig = v.signature();
    let args_lua: Vec<String> = args.iter().map(|a| lua_literal(a.as_bytes())).collect();
    format!(
        "-- Regression test written by `lunavm fuzz {scenario} --to-test`.\n\
         -- Verdict when written: {class} ({reason}): {title}\n\
         -- Signature {sig}. The test fails while the input still crashes or hangs.\n\
         -- The scenario path is the one given to `lunavm fuzz`: run the test from that folder.\n\
         \n\
         local SCENARIO = {scenario_lit}\n\
         local INPUT = {input}\n\
         \n\
         function test_fuzz_{short}()\n\
         \x20 local v = fuzz.replay(SCENARIO, INPUT, {{ args = {{ {args} }} }})\n\
         \x20 t.eq(v.class, \"ok\", v.title)\n\
         end\n",
        scenario = scenario.display(),
        class = v.class.name(),
        reason = v.reason,
        title = v.title.replace('\n', " "),
        scenario_lit = lua_literal(scenario.display().to_string().as_bytes()),
        input = lua_literal(input),
        short = &sig[..8],
        args = args_lua.join(", "),
    )
}

/// Writes `DIR/fuzz_STEM_SIG_test.lua`; returns its path.
pub fn write(
    scenario: &Path,
    args: &[String],
    input: &[u8],
    v: &Verdict,
    dir: &Path,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    let path = dir.join(format!("fuzz_{stem}_{}_test.lua", &v.signature()[..8]));
    std::fs::write(&path, source(scenario, args, input, v))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::scenario::verdict::Class;

    #[test]
    fn literal_escapes_bytes_lua_reads_back() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let lit = lua_literal(&bytes);
        let lua = mlua::Lua::new();
        let back: mlua::LuaString = lua.load(format!("return {lit}")).eval().unwrap();
        assert_eq!(back.as_bytes().to_vec(), bytes);
    }

    #[test]
    fn source_names_the_verdict_and_replays_the_input() {
        let v = Verdict::new(Class::Crash, "symbol", "fuzzme_panic called from parse");
        let src = source(Path::new("scripts/fuzz/fuzzme.lua"), &[], b"LUNA\x01", &v);
        assert!(src.contains("local INPUT = \"LUNA\\x01\""), "{src}");
        assert!(src.contains("fuzz.replay(SCENARIO, INPUT"), "{src}");
        assert!(src.contains("crash (symbol): fuzzme_panic"), "{src}");
        mlua::Lua::new().load(&src).exec().unwrap();
    }
}
