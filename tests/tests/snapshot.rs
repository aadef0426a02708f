//! Snapshots through the real binary: a run interrupted by a snapshot and
//! restored (in memory, and from a file in a new process) ends exactly like an
//! uninterrupted one; bad snapshot files are refused with clear messages.

mod common;

use common::{lunavm, require_kvm, temp_file};
use serde_json::Value;

/// Runs `lunavm run ARGS --report R` and returns (run, report).
fn run_report(args: &[&str]) -> (common::Run, Value) {
    require_kvm();
    let (dir, _) = temp_file("unused", b"");
    let report = dir.path().join("report.json");
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--report", report.to_str().unwrap(), "-q"]);
    let run = lunavm(&all);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", run.stderr));
    (run, serde_json::from_str(&text).unwrap())
}

/// The guest's full run, and the same run stopped at `exits` and saved.
fn full_and_saved(guest: &str, cmdline: &str, exits: &str, snap: &str) -> (common::Run, Value) {
    let full = run_report(&["run", "--guest", guest, "--cmdline", cmdline]);
    let (mid, report) = run_report(&[
        "run",
        "--guest",
        guest,
        "--cmdline",
        cmdline,
        "--max-exits",
        exits,
        "--save",
        snap,
    ]);
    assert_eq!(mid.code, Some(73), "{}", mid.stderr);
    assert_eq!(report["stop"]["kind"], "exit_budget");
    full
}

#[test]
fn restoring_from_a_file_in_a_new_process_ends_like_the_uninterrupted_run() {
    let (dir, _) = temp_file("unused", b"");
    let snap = dir.path().join("mid.snap");
    let snap_s = snap.to_str().unwrap();
    for (guest, cmdline, exits) in [
        ("scribble", "rounds=8", "300"),
        ("exits", "count=3000", "1500"),
        ("ucall", "", "20"),
        // Mid-way through timer interrupts: PIC, PIT and virtual time restored.
        ("timer", "k=1", "5000"),
        ("timer", "mode=hlt ticks=10", "40"),
    ] {
        let (full_run, full) = full_and_saved(guest, cmdline, exits, snap_s);
        let (rest_run, rest) = run_report(&["run", "--restore", snap_s, "--verify-restore"]);
        assert_eq!(
            rest_run.code, full_run.code,
            "{guest}: exit status\n{}",
            rest_run.stderr
        );
        for key in [
            "stop",
            "guest_exits",
            "virtual_time_ns",
            "post_code",
            "serial_bytes",
            "state_hash",
            "exit_code",
        ] {
            assert_eq!(rest[key], full[key], "{guest}: {key}");
        }
        assert_eq!(
            rest["ucalls"]["counts"], full["ucalls"]["counts"],
            "{guest}: ucalls"
        );
        // The restored process prints only what the guest writes after the snapshot.
        assert!(
            full_run.stdout.ends_with(&rest_run.stdout),
            "{guest}: serial tail"
        );
        assert!(!rest_run.stdout.is_empty() || full_run.stdout.is_empty());
    }
}

#[test]
fn restoring_in_memory_repeats_exactly_and_several_snapshots_coexist() {
    require_kvm();
    let script = br#"
vm.boot{guest = "scribble", cmdline = "rounds=8"}
vm.run{exits = 150}
local a = snapshot.take()
local ev = vm.run{}
assert(ev.reason == "exit" and ev.status == 0, ev.reason)
local out, hash = serial.output(), vm.state_hash()
for i = 1, 3 do
  local st = a:restore{verify = true}
  assert(not st.full and st.pages > 0, "dirty pages only")
  ev = vm.run{}
  assert(serial.output() == out, "serial output differs after restore " .. i)
  assert(vm.state_hash() == hash, "state differs after restore " .. i)
end
-- A second snapshot, taken after restoring the first, and both held at once.
a:restore()
vm.run{exits = 200}
local b = snapshot.take()
vm.run{}
assert(vm.state_hash() == hash, "b's run ends like a's")
local st = a:restore()
assert(st.full, "switching snapshots copies all of RAM once")
b:restore{verify = true}
vm.run{}
assert(vm.state_hash() == hash)
-- Writes the VMM makes (here a script's) are rolled back too.
local before = mem.read64(0x200000)
b:restore()
mem.write64(0x200000, before + 12345)
assert(mem.read64(0x200000) == before + 12345)
b:restore()
assert(mem.read64(0x200000) == before, "a VMM write survived a restore")
a:drop()
local ok, err = pcall(snapshot.restore, a)
assert(not ok and err:find("dropped"), err)
print("ok")
"#;
    let (_d, path) = temp_file("mem.lua", script);
    let run = lunavm(&["run", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "ok\n");
}

#[test]
fn lua_devices_need_save_and_restore_or_stateless() {
    require_kvm();
    let script = br#"
vm.boot{guest = "hello"}
local d = dev.pio{base = 0x600, size = 1}
local ok, err = pcall(snapshot.take)
assert(not ok)
print(err)
d:remove()
local count = 0
dev.pio{base = 0x600, size = 1, write = function() count = count + 1 end,
  save = function() return count end, restore = function(v) count = v end}
dev.pio{base = 0x610, size = 1, stateless = true}
local s = snapshot.take()
pio.outb(0x600, 1); pio.outb(0x600, 1)
assert(count == 2)
s:restore()
assert(count == 0, "restore= gave the saved value back")
print("ok")
"#;
    let (dir, path) = temp_file("dev.lua", script);
    let run = lunavm(&["run", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let out = run
        .stdout
        .replace(&format!("{}/", dir.path().display()), "");
    insta::assert_snapshot!("lua_device_without_state", out);
}

/// Patches a snapshot file: `f` edits (header JSON, memory bytes); the CRC is recomputed.
fn patched(file: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let hlen = usize::try_from(u64::from_le_bytes(file[16..24].try_into().unwrap())).unwrap();
    let mut header: Value = serde_json::from_slice(&file[24..24 + hlen]).unwrap();
    f(&mut header);
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = file[..16].to_vec();
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&file[24 + hlen..file.len() - 4]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn bad_snapshot_files_are_refused_clearly() {
    require_kvm();
    let (dir, _) = temp_file("unused", b"");
    let snap = dir.path().join("good.snap");
    full_and_saved("hello", "", "20", snap.to_str().unwrap());
    let good = std::fs::read(&snap).unwrap();

    let mut version = good.clone();
    version[8] = 9;
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x55;
    let truncated = good[..good.len() / 3].to_vec();
    // A guest that saw a feature this host's guest does not (la57 is never
    // visible here; on a host that has it the test picks another).
    let cpu = patched(&good, |h| {
        for leaf in h["effective_cpuid"].as_array_mut().unwrap() {
            if leaf[0] == 7 && leaf[1] == 0 {
                let ecx = leaf[2][2].as_u64().unwrap();
                leaf[2][2] = Value::from(ecx | (1 << 16));
            }
        }
    });
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not_a_snapshot",
            b"hello, world, this is no snapshot file at all".to_vec(),
        ),
        ("other_version", version),
        ("corrupt", corrupt),
        ("truncated", truncated),
        ("cpu_mismatch", cpu),
    ];
    let mut messages = String::new();
    for (name, bytes) in cases {
        let path = dir.path().join(format!("{name}.snap"));
        std::fs::write(&path, bytes).unwrap();
        let run = lunavm(&["run", "--restore", path.to_str().unwrap()]);
        assert_eq!(run.code, Some(2), "{name}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        messages.push_str(
            &run.stderr
                .replace(&format!("{}/", dir.path().display()), ""),
        );
    }
    insta::assert_snapshot!("bad_snapshot_files", messages);
}

#[test]
fn setup_once_boots_once_and_every_test_starts_from_its_machine() {
    require_kvm();
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lua/setup_once_test.lua");
    let run = lunavm(&["test", fixture.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.ends_with("3 passed, 0 failed\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn in_kernel_irqchip_state_is_snapshotted_too() {
    let (dir, _) = temp_file("unused", b"");
    let snap = dir.path().join("kernel.snap");
    let snap_s = snap.to_str().unwrap();
    let (mid, _) = run_report(&[
        "run",
        "--guest",
        "timer",
        "--cmdline",
        "mode=hlt ticks=5",
        "--irqchip",
        "kernel",
        "--max-exits",
        "30",
        "--save",
        snap_s,
    ]);
    assert_eq!(mid.code, Some(73), "{}", mid.stderr);
    let (rest, report) = run_report(&["run", "--restore", snap_s]);
    assert_eq!(rest.code, Some(0), "{}", rest.stderr);
    assert_eq!(report["stop"]["kind"], "guest_exit");
    assert!(rest.stdout.contains("via hlt"), "{}", rest.stdout);
}
