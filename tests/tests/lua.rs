//! Lua scenarios through the real binary: `lunavm test` output for passing,
//! failing and erroring scenarios, `lunavm run SCRIPT.lua`, and the error
//! message of each kind of bad input.

mod common;

use common::{lunavm, require_kvm, temp_file};
use std::path::PathBuf;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lua")
        .join(name);
    p.to_str().unwrap().to_string()
}

/// Replaces the fixture directory with a stable name.
fn scrub(text: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lua/");
    text.replace(dir.to_str().unwrap(), "")
}

#[test]
fn passing_scenario() {
    require_kvm();
    let run = lunavm(&["test", &fixture("passing_test.lua")]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    insta::assert_snapshot!("runner_passing", scrub(&run.stdout));
}

#[test]
fn failing_scenario() {
    require_kvm();
    let run = lunavm(&["test", &fixture("failing_test.lua")]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    insta::assert_snapshot!("runner_failing", scrub(&run.stdout));
}

#[test]
fn erroring_scenario_reports_each_error_and_carries_on() {
    require_kvm();
    let run = lunavm(&["test", &fixture("erroring_test.lua")]);
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains("panicked") && !run.stderr.contains("panicked"));
    insta::assert_snapshot!("runner_erroring", scrub(&run.stdout));
}

#[test]
fn syntax_error_is_reported_and_other_files_still_run() {
    require_kvm();
    let run = lunavm(&[
        "test",
        &fixture("syntax_error_test.lua"),
        &fixture("passing_test.lua"),
    ]);
    assert_eq!(run.code, Some(1));
    insta::assert_snapshot!("runner_syntax_error", scrub(&run.stdout));
}

#[test]
fn filter_list_parallel_and_junit() {
    require_kvm();
    let run = lunavm(&["test", "--list", &fixture("passing_test.lua")]);
    assert_eq!(scrub(&run.stdout).lines().count(), 3);
    let run = lunavm(&["test", "--filter", "serial", &fixture("passing_test.lua")]);
    assert!(
        run.stdout.ends_with("1 passed, 0 failed\n"),
        "{}",
        run.stdout
    );
    let (dir, _) = temp_file("unused", b"");
    let junit = dir.path().join("junit.xml");
    let run = lunavm(&[
        "test",
        "-j",
        "2",
        "--junit",
        junit.to_str().unwrap(),
        &fixture("passing_test.lua"),
        &fixture("failing_test.lua"),
    ]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.ends_with("5 passed, 1 failed, 2 skipped\n"),
        "{}",
        run.stdout
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"8\" failures=\"1\" errors=\"0\" skipped=\"2\""),
        "{xml}"
    );
    assert!(xml.contains("name=\"test_wrong_status\""));
}

#[test]
fn run_script_exit_codes() {
    require_kvm();
    let (_d, ok) = temp_file(
        "ok.lua",
        b"vm.boot{guest='hello', cmdline='status=7'}\nlocal ev = vm.run{}\nprint(arg[1], ev.status)\nreturn ev.status",
    );
    let run = lunavm(&["run", ok.to_str().unwrap(), "first-arg"]);
    assert_eq!(run.code, Some(7), "{}", run.stderr);
    assert_eq!(run.stdout, "first-arg\t7\n");
    let (_d, fail) = temp_file("fail.lua", b"t.eq(1, 2)");
    let run = lunavm(&["run", fail.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("fail.lua:1: t.eq failed: left 1 (0x1), right 2 (0x2)"),
        "{}",
        run.stderr
    );
}

/// Runs a one-line script and returns its error message (file name only).
fn script_error(name: &str, src: &str) -> String {
    let (dir, path) = temp_file(name, src.as_bytes());
    let run = lunavm(&["run", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(77), "{name}: {}", run.stderr);
    run.stderr
        .replace(&format!("{}/", dir.path().display()), "")
}

#[test]
fn bad_input_messages_name_file_and_line() {
    require_kvm();
    let cases = [
        ("syntax.lua", "local x = = 1\n"),
        ("runtime.lua", "local t = nil\nprint(t.x)\n"),
        ("wrong_type.lua", "vm.boot{}\nmem.write8({}, 1)\n"),
        (
            "outside_memory.lua",
            "vm.boot{mem = '4M'}\n\nmem.write64(0x7fffffff0000, 1)\n",
        ),
        ("wrong_state.lua", "cpu.set('rax', 1)\n"),
        ("bad_option.lua", "vm.boot{guest = 'nope'}\n"),
        ("bad_pattern.lua", "vm.boot{}\nserial.expect('(unclosed')\n"),
    ];
    let mut all = String::new();
    for (name, src) in cases {
        all.push_str(&script_error(name, src));
    }
    insta::assert_snapshot!("script_bad_input", all);
}

#[test]
fn missing_script_is_bad_input() {
    let run = lunavm(&["run", "/nonexistent/scenario.lua"]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr
            .contains("Cannot read script /nonexistent/scenario.lua"),
        "{}",
        run.stderr
    );
}

/// Every function registered in Lua, as "ns.name".
fn registered_functions() -> Vec<String> {
    let s = lunavm::script::Scenario::new(&lunavm::script::ScenarioOptions::default()).unwrap();
    s.api_functions()
}

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_registered_function_is_in_the_reference() {
    let reference = repo_file("scripts/README.md");
    let missing: Vec<String> = registered_functions()
        .into_iter()
        .filter(|f| {
            !["(", "{"]
                .iter()
                .any(|open| reference.contains(&format!("{f}{open}")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "functions missing from scripts/README.md: {missing:?}"
    );
}

#[test]
fn every_registered_function_is_in_the_luals_annotations() {
    let meta = repo_file("scripts/lunavm.lua");
    assert!(
        meta.starts_with("---@meta"),
        "scripts/lunavm.lua must be a LuaLS ---@meta file"
    );
    let registered = registered_functions();
    let missing: Vec<&String> = registered
        .iter()
        .filter(|f| !meta.contains(&format!("function {f}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "functions missing from scripts/lunavm.lua: {missing:?}"
    );
    // And nothing annotated that does not exist.
    let extra: Vec<String> = meta
        .lines()
        .filter_map(|l| l.strip_prefix("function "))
        .filter_map(|l| l.split('(').next())
        .filter(|name| name.contains('.') && !name.contains(':'))
        .filter(|name| {
            lunavm::script::NAMESPACES
                .iter()
                .any(|ns| name.starts_with(&format!("{ns}.")))
        })
        .filter(|name| !registered.iter().any(|r| r == name))
        .map(str::to_string)
        .collect();
    assert!(extra.is_empty(), "annotated but not registered: {extra:?}");
}

#[test]
fn the_readme_example_is_the_shipped_example() {
    let readme = repo_file("README.md");
    let example = repo_file("scripts/examples/readme_test.lua");
    assert!(
        readme.contains(&format!("-- scripts/examples/readme_test.lua\n{example}")),
        "README's Lua example differs from scripts/examples/readme_test.lua"
    );
}

/// The address of symbol `name` in built-in guest `guest`.
fn guest_symbol(guest: &str, name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let elf = common::guest_elf(guest);
    let file = object::File::parse(&*elf).expect("guest ELF parses");
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name}"))
        .address()
}

#[test]
fn hook_watch_sees_guest_kernel_writes_and_reads_and_goes_away() {
    require_kvm();
    // `watched` in the watch guest: counter at +0, input at +8.
    let watched = guest_symbol("watch", "watched");
    let script = r#"
local base = tonumber(arg[1])
vm.boot{guest = "watch", cmdline = "rounds=3"}
local writes, reads = {}, 0
local w = hook.watch{vaddr = base, size = 8, fn = function(ev)
  writes[#writes + 1] = ev.value
  t.eq(ev.write, true)
end}
local r = hook.watch{addr = base + 8, size = 8, on = "read", fn = function(ev)
  reads = reads + 1
  t.eq(ev.value, 5)
end}
local ev = vm.run{}
t.eq(ev.reason, "exit")
t.eq(#writes, 3)
t.eq(writes[1], 0x11)
t.eq(writes[3], 0x33)
t.eq(reads, 3)
w:remove()
r:remove()
-- The guest's own output: the completed accesses were right.
assert(serial.output():find("watch: counter 0x33, sum 15", 1, true))
print("hook.watch: ok")
"#;
    let (_dir, path) = temp_file("watch_hook.lua", script.as_bytes());
    let path = path.to_string_lossy().into_owned();
    let run = lunavm(&["run", &path, &watched.to_string()]);
    assert!(
        run.stdout.contains("hook.watch: ok"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
}

/// `hook.watch{vaddr=}` through a debug register on a CPL3 store (the
/// `usermode` guest's user code storing CS in its result page), and
/// `vm.watch_mode()`. On a host whose data breakpoints fire at neither level
/// (this project's software-nested KVM), `watch_mode = "debugreg"` is refused
/// with a clear error and the test checks that instead.
#[test]
fn hook_watch_through_a_debug_register_sees_a_user_mode_store() {
    require_kvm();
    let sysret = guest_symbol("usermode", "um_sysret_user");
    let script = r#"
local sysret = tonumber(arg[1])
local opts = {guest = "usermode", cmdline = "only=sysret", watch_mode = "debugreg"}
local ok, err = pcall(vm.boot, opts)
if not ok then
  assert(tostring(err):find("--watch-mode debugreg: this host's data breakpoints do not fire", 1, true), tostring(err))
  opts.watch_mode = "page"
  vm.boot(opts)
  local m = vm.watch_mode()
  t.eq(m.mode, "page")
  t.eq(m.debug_regs, false)
  t.eq(m.cpl0, false)
  t.eq(m.cpl3, false)
  print("debugreg refused: " .. m.probe)
  return
end
t.eq(vm.watch_mode().debug_regs, true)
local ev = vm.run{breakpoint = sysret}
t.eq(ev.reason, "breakpoint")
local hits = {}
local w = hook.watch{vaddr = 0x8000002008, size = 8, fn = function(e) hits[#hits + 1] = e end}
ev = vm.run{}
t.eq(ev.reason, "exit")
t.eq(#hits, 1)
t.eq(hits[1].write, true)
t.eq(hits[1].value, 0x33)
t.eq(hits[1].old, 0)
local m = vm.watch_mode()
t.eq(m.debug_reg_watches, 1)
t.eq(m.debug_reg_hits, 1)
w:remove()
print("debugreg watch: ok")
"#;
    let (_dir, path) = temp_file("drwatch.lua", script.as_bytes());
    let path = path.to_string_lossy().into_owned();
    let run = lunavm(&["run", &path, &sysret.to_string()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let probe = lunavm::vm::dr_probe::probe();
    let expected = if probe.cpl0.fires() || probe.cpl3.fires() {
        "debugreg watch: ok".to_string()
    } else {
        format!("debugreg refused: {probe}")
    };
    assert!(
        run.stdout.contains(&expected),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

/// Page watches report the value a write replaced (`ev.old`) and count in
/// `vm.watch_mode()`.
#[test]
fn hook_watch_reports_the_old_value_of_a_write() {
    require_kvm();
    let watched = guest_symbol("watch", "watched");
    let script = r#"
local base = tonumber(arg[1])
vm.boot{guest = "watch", cmdline = "rounds=2", watch_mode = "page"}
local olds = {}
hook.watch{addr = base, size = 8, fn = function(ev) olds[#olds + 1] = ev.old end}
t.eq(vm.run{}.reason, "exit")
t.eq(olds[1], 0)
t.eq(olds[2], 0x11)
local m = vm.watch_mode()
t.eq(m.page_watches, 1)
t.eq(m.page_hits, 2)
t.eq(m.debug_reg_watches, 0)
print("old values: ok")
"#;
    let (_dir, path) = temp_file("oldwatch.lua", script.as_bytes());
    let path = path.to_string_lossy().into_owned();
    let run = lunavm(&["run", &path, &watched.to_string()]);
    assert!(
        run.stdout.contains("old values: ok"),
        "{}{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
}
