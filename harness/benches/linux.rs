//! The Linux boot benchmark: `cargo bench -p lunavm --bench linux [-- --quick]`.
//!
//! Boots the test-suite kernel (scripts/linux, built and cached by
//! `scripts/test`) with the idle initramfs to "Run /init" and measures, on
//! this machine:
//! (a) lunavm, in-process: wall time and virtual time to the marker, on the
//!     deterministic platform with the default Linux command line;
//! (b) QEMU on the same machine, TCG and KVM (`scripts/linux/qemu-boot.sh`:
//!     wall time to the marker on QEMU's console);
//! (c) a scenario from the snapshot of the booted machine against a fresh
//!     boot: restore the saved machine from its file into a new machine and
//!     run 200 ms of virtual time, against (a)'s boot.
//!
//! Medians of LUNAVM_LINUX_BENCH_RUNS runs (default 3; `--quick`: 1). Writes
//! `target/bench-linux.json` as well.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{machine_info, Stats, Table};
use lunavm::boot::Module;
use lunavm::machine::{Machine, MachineConfig, SerialWatch, StopCondition, StopReason};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

/// lunavm's default Linux command line (scripts/lib/linux.lua's `linux.CMDLINE`).
const CMDLINE: &str = "console=ttyS0 nolapic noapic clearcpuid=tsc lpj=10000 panic=-1";
const MARKER: &str = "Run /init as init process";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn linux_dir() -> PathBuf {
    let cache = std::env::var_os("LUNAVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/lunavm")
        });
    cache.join("linux/out")
}

/// Boots to the marker: (machine, wall seconds, virtual seconds).
fn boot(kernel: &[u8], initrd: &[u8]) -> Result<(Machine, f64, f64), Error> {
    let t = Instant::now();
    let mut m = Machine::new(MachineConfig {
        mem_size: 256 << 20,
        ..MachineConfig::default()
    })?;
    m.load_kernel(
        kernel,
        CMDLINE,
        &[Module {
            data: initrd.to_vec(),
            cmdline: "initramfs".into(),
        }],
    )?;
    let stop = m.run(&StopCondition {
        serial: Some(SerialWatch {
            regex: regex::bytes::Regex::new(MARKER)?,
            from: 0,
        }),
        max_time_ns: Some(60_000_000_000),
        ..StopCondition::default()
    })?;
    if !matches!(stop, StopReason::SerialMatch { .. }) {
        return Err(format!(
            "the kernel stopped before \"{MARKER}\": {}",
            stop.describe()
        )
        .into());
    }
    let wall = t.elapsed().as_secs_f64();
    let virt = m.clock().now_ns() as f64 / 1e9;
    Ok((m, wall, virt))
}

/// QEMU's wall seconds to the marker with `accel`, or None when it failed.
fn qemu(accel: &str) -> Option<f64> {
    let out = Command::new(repo().join("scripts/linux/qemu-boot.sh"))
        .args(["--accel", accel, "--tail", "0", "--timeout", "60"])
        .args(["--append", CMDLINE])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("\" after "))?;
    line.split(" after ")
        .nth(1)?
        .split('s')
        .next()?
        .parse()
        .ok()
}

fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs: usize = std::env::var("LUNAVM_LINUX_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let dir = linux_dir();
    let kernel = std::fs::read(dir.join("lunavm/bzImage")).map_err(|e| {
        format!(
            "{}: {e} (build it with scripts/linux/build-kernel.sh)",
            dir.display()
        )
    })?;
    let initrd = std::fs::read(dir.join("initramfs-idle.cpio")).map_err(|e| {
        format!(
            "{}: {e} (build it with scripts/linux/build-initramfs.sh)",
            dir.display()
        )
    })?;

    let (mut walls, mut virts, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let snap_file = repo().join("target/bench-linux-booted.snap");
    for i in 0..runs {
        let (mut m, wall, virt) = boot(&kernel, &initrd)?;
        walls.push(wall);
        virts.push(virt);
        if i == 0 {
            let snap = m.take_snapshot()?;
            lunavm::snapshot::file::save(&snap, &snap_file)?;
        }
        // (c): a new machine from the file, then 200 ms of the booted system.
        let t = Instant::now();
        let snap = lunavm::snapshot::file::load(&snap_file)?;
        let mut r = Machine::from_snapshot(&snap, MachineConfig::default())?;
        r.run(&StopCondition {
            max_time_ns: Some(200_000_000),
            ..StopCondition::default()
        })?;
        restores.push(t.elapsed().as_secs_f64());
    }
    // A boot that fails once (QEMU's KVM cannot run what this host's
    // emulator cannot, e.g. cmpxchg16b) is not tried again.
    let attempts = |accel: &str| -> Vec<f64> {
        let mut v = Vec::new();
        for _ in 0..runs {
            match qemu(accel) {
                Some(s) => v.push(s),
                None => {
                    println!("QEMU {accel}: no \"{MARKER}\" within 60 s (see scripts/linux/qemu-boot.sh --accel {accel})");
                    break;
                }
            }
        }
        v
    };
    let tcg = attempts("tcg");
    let kvm = attempts("kvm");

    let (sw, sv, sr) = (Stats::of(&walls), Stats::of(&virts), Stats::of(&restores));
    let mut table = Table::new();
    table.section("boot of the test kernel to \"Run /init\"");
    table.row("lunavm, wall time", &sw, "s", 1.0, 2);
    table.row("lunavm, virtual time", &sv, "s", 1.0, 2);
    if !tcg.is_empty() {
        table.row("QEMU TCG, wall time", &Stats::of(&tcg), "s", 1.0, 2);
    }
    if !kvm.is_empty() {
        table.row("QEMU KVM, wall time", &Stats::of(&kvm), "s", 1.0, 2);
    }
    table.section("a scenario from the booted snapshot against a fresh boot");
    table.row(
        "restore from the file + 200 ms of virtual time",
        &sr,
        "s",
        1.0,
        2,
    );
    table.print();
    let ratio = sw.median / sr.median;
    println!("\nfresh boot / scenario from the snapshot: {ratio:.0}x");
    let out = json!({
        "machine": machine_info(),
        "lunavm_wall": sw.json("s"), "lunavm_virtual": sv.json("s"),
        "qemu_tcg_wall": Stats::of(&tcg).json("s"), "qemu_kvm_wall": Stats::of(&kvm).json("s"),
        "snapshot_scenario": sr.json("s"), "ratio": ratio,
    });
    std::fs::write(
        repo().join("target/bench-linux.json"),
        serde_json::to_vec_pretty(&out)?,
    )?;
    Ok(())
}
