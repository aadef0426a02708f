//! Shared helpers for the end-to-end tests: build and run the real `lunavm`
//! binary, with a wall-clock limit so a hung guest fails its test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The result of one `lunavm` invocation.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None if killed by a signal).
    pub code: Option<i32>,
    /// Standard output (the guest's serial output for `run`).
    pub stdout: String,
    /// Standard error (lunavm's summary and errors).
    pub stderr: String,
}

/// Path to the `lunavm` binary, built once per test process by cargo.
pub fn lunavm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let run = escargot::CargoBuild::new()
            .package("lunavm")
            .bin("lunavm")
            .current_target()
            .run()
            .expect("cargo builds the lunavm binary");
        run.path().to_path_buf()
    })
}

/// Fails loudly when the host has no usable /dev/kvm: these tests need KVM and
/// must never be skipped silently.
pub fn require_kvm() {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert!(
        ok,
        "\n\n*** /dev/kvm is missing or not accessible: lunavm's end-to-end tests need KVM. ***\n\
         *** Run them on a host with KVM (and access to /dev/kvm).                       ***\n"
    );
}

/// Runs `lunavm ARGS` with extra environment, killing it after `limit`.
pub fn lunavm_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = Command::new(lunavm_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("lunavm starts");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait for lunavm") {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "lunavm {args:?} did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().expect("collect output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `lunavm ARGS` with a 60 s limit.
pub fn lunavm(args: &[&str]) -> Run {
    lunavm_env(args, &[], Duration::from_secs(60))
}

/// Runs a built-in guest and returns the run and its parsed JSON report.
pub fn run_guest(guest: &str, extra: &[&str]) -> (Run, serde_json::Value) {
    require_kvm();
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("report.json");
    let report_s = report.to_str().expect("utf-8 path");
    let mut args = vec!["run", "--guest", guest, "--report", report_s];
    args.extend_from_slice(extra);
    let run = lunavm(&args);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report from {args:?}: {e}\nstderr:\n{}", run.stderr));
    let json = serde_json::from_str(&text).expect("report is JSON");
    (run, json)
}

/// Writes `bytes` to a temp file and returns (dir guard, path).
pub fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write temp file");
    (dir, path)
}

/// The ELF of a built-in guest, as the binary embeds it (read back through
/// the library so tests can corrupt copies of real images).
pub fn guest_elf(name: &str) -> Vec<u8> {
    lunavm::guests::find(name)
        .unwrap_or_else(|| panic!("guest {name}"))
        .elf
        .to_vec()
}

/// Replaces the temp directory in messages so snapshots are stable.
pub fn scrub(text: &str, dir: &Path) -> String {
    text.replace(dir.to_str().unwrap_or("<dir>"), "[TMP]")
}
