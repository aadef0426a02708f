//! The test-suite Linux kernel (scripts/linux, built and cached by
//! `scripts/test`) boots the same way every time on the deterministic
//! platform: `--repeat 3` through the console line "Run /init as init
//! process" and on to 1 s of virtual time (about 100 timer ticks while the
//! idle /init spins in user mode) sees the same exits (kind, port, value,
//! virtual time, RIP) and the same serial output, with no host-timed kick.
//! The final memory is not compared:
//! Linux mixes the TSC (host time) into its random pool (README,
//! "Determinism").

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{lunavm_env, require_kvm};

/// Where scripts/linux leaves the kernel and initramfs (as lunavm.linux finds them).
fn linux_out() -> PathBuf {
    if let Some(dir) = std::env::var_os("LUNAVM_LINUX_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("LUNAVM_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lunavm")
        });
    cache.join("linux/out")
}

/// linux.CMDLINE from scripts/lib/linux.lua: the test follows the default.
fn default_cmdline() -> String {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lib/linux.lua");
    let text = std::fs::read_to_string(lib).expect("scripts/lib/linux.lua is readable");
    let line = text
        .lines()
        .find(|l| l.starts_with("linux.CMDLINE = \""))
        .expect("linux.lua sets linux.CMDLINE");
    line.trim_start_matches("linux.CMDLINE = \"")
        .trim_end_matches('"')
        .to_string()
}

/// `lunavm run` of the test kernel with `initramfs` (a file in the cache)
/// to `max_time` of virtual time, `repeat` times; asserts that the runs are
/// identical with no host-timed kick, and returns the serial output.
fn repeat_boot(initramfs: &str, max_time: &str, repeat: u32) -> String {
    require_kvm();
    let out = linux_out();
    let (kernel, initramfs) = (out.join("lunavm/bzImage"), out.join(initramfs));
    assert!(
        kernel.exists() && initramfs.exists(),
        "{} or {} is missing: run scripts/linux/build-kernel.sh and scripts/linux/build-initramfs.sh (scripts/test does)",
        kernel.display(),
        initramfs.display()
    );
    let cmdline = default_cmdline();
    assert!(cmdline.contains("clearcpuid=tsc"), "{cmdline}");
    let repeat = repeat.to_string();
    let run = lunavm_env(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--module",
            initramfs.to_str().unwrap(),
            "--mem",
            "256M",
            "--cmdline",
            &cmdline,
            "--max-time",
            max_time,
            "--repeat",
            &repeat,
            "--repeat-ignore-state",
            "-q",
        ],
        &[],
        Duration::from_secs(600),
    );
    // The virtual-time budget ends each run (exit status 73).
    assert_eq!(run.code, Some(73), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("lunavm: repeat: {repeat} runs identical")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.ends_with("kicks that moved virtual time: 0\n"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("Linux version 6.1"), "{}", run.stdout);
    run.stdout
}

#[test]
fn the_linux_boot_repeats_exactly_through_run_init() {
    let stdout = repeat_boot("initramfs-idle.cpio", "1s", 3);
    assert!(
        stdout.trim_end().ends_with("Run /init as init process"),
        "/init ran and printed nothing: {stdout}"
    );
}
