//! Helpers the benchmarks share: statistics, the results table, what machine
//! a run was on, and spawning VMMs (lunavm and QEMU) under a clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Boxed errors, as the bench binaries report them.
pub type Error = Box<dyn std::error::Error>;

/// The QEMU binary compared against.
pub const QEMU: &str = "qemu-system-x86_64";

// ---------------------------------------------------------------- statistics

/// Summary of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    /// Sample size.
    pub n: usize,
    /// Smallest value.
    pub min: f64,
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Largest value.
    pub max: f64,
}

impl Stats {
    /// The statistics of `values`.
    pub fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        // Quartile k/4 by linear interpolation between the closest ranks.
        let q = |k: usize| -> f64 {
            if v.is_empty() {
                return f64::NAN;
            }
            let scaled = k * (v.len() - 1);
            let (i, rem) = (scaled / 4, scaled % 4);
            let j = (i + 1).min(v.len() - 1);
            v[i] + (v[j] - v[i]) * rem as f64 / 4.0
        };
        Stats {
            n: v.len(),
            min: v.first().copied().unwrap_or(f64::NAN),
            q1: q(1),
            median: q(2),
            q3: q(3),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// As JSON, with `unit`.
    pub fn json(&self, unit: &str) -> Value {
        json!({
            "unit": unit, "n": self.n, "median": self.median, "min": self.min,
            "max": self.max, "q1": self.q1, "q3": self.q3,
        })
    }
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of `values`.
pub fn median_of(values: &[f64]) -> f64 {
    Stats::of(values).median
}

// ---------------------------------------------------------------- the table

/// A results table: sections and rows of statistics.
#[derive(Default)]
pub struct Table {
    /// Rows: a section title alone, or a name and six columns.
    pub rows: Vec<[String; 7]>,
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table { rows: Vec::new() }
    }

    /// A section heading.
    pub fn section(&mut self, title: &str) {
        self.rows.push([
            title.to_string(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }

    /// A row of `s` shown in `unit`, each value divided by `div`.
    pub fn row(&mut self, name: &str, s: &Stats, unit: &str, div: f64, decimals: usize) {
        let f = |v: f64| format!("{:.*}", decimals, v / div);
        self.rows.push([
            format!("  {name}"),
            f(s.median),
            f(s.min),
            f(s.max),
            format!("{}–{}", f(s.q1), f(s.q3)),
            unit.to_string(),
            s.n.to_string(),
        ]);
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        let header = ["", "median", "min", "max", "IQR", "unit", "n"];
        let mut w = header.map(|h| h.chars().count());
        for r in &self.rows {
            if r[1].is_empty() {
                continue;
            }
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |r: &[String; 7]| {
            let pad = |s: &str, width: usize, right: bool| {
                let fill = " ".repeat(width.saturating_sub(s.chars().count()));
                if right {
                    format!("{fill}{s}")
                } else {
                    format!("{s}{fill}")
                }
            };
            format!(
                "{}  {}  {}  {}  {}  {}  {}",
                pad(&r[0], w[0], false),
                pad(&r[1], w[1], true),
                pad(&r[2], w[2], true),
                pad(&r[3], w[3], true),
                pad(&r[4], w[4], true),
                pad(&r[5], w[5], false),
                pad(&r[6], w[6], true)
            )
        };
        let head = line(&header.map(String::from));
        println!("{head}");
        println!("{}", "-".repeat(head.chars().count()));
        for r in &self.rows {
            if r[1].is_empty() {
                println!("{}", r[0]);
            } else {
                println!("{}", line(r));
            }
        }
    }
}

// ---------------------------------------------------------------- machine info

/// A file's contents, trimmed.
pub fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// What this machine is: CPU, kernel, KVM flavour, QEMU version, commit.
pub fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu_model = cpu_field("model name").unwrap_or_else(|| "unknown".into());
    let in_vm = cpu_field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let modules: Vec<&str> = ["kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect();
    let kvm = if modules.contains(&"kvm_pvm") {
        "software-nested: kvm_pvm (no VT-x/AMD-V; guest CPL0 code is emulated)".to_string()
    } else if let Some(m) = modules.first() {
        if in_vm {
            format!("{m}, nested (this host is itself a VM)")
        } else {
            format!("{m}, bare metal")
        }
    } else if Path::new("/dev/kvm").exists() {
        "/dev/kvm present, KVM vendor module not identified".to_string()
    } else {
        "no /dev/kvm".to_string()
    };
    let clocksource = read_trim("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    let qemu = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        });
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "cpu_model": cpu_model,
        "cpus": cpus,
        "kernel": kernel,
        "kvm": kvm,
        "kvm_modules": modules,
        "host_is_vm": in_vm,
        "clocksource": clocksource,
        "qemu": qemu,
        "lunavm_commit": git,
    })
}

/// Spawns `cmd` with stdout captured; returns the wall time from spawn to exit.
pub fn spawn_timed(cmd: &mut Command, ok_code: i32, expect: &str) -> Result<f64, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let child = cmd.spawn()?;
    let out = child.wait_with_output()?;
    let t = ms(t0.elapsed());
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() != Some(ok_code) || !stdout.contains(expect) {
        return Err(format!(
            "{:?} exited with {} (wanted {ok_code}); stdout {:?}; stderr {:?}",
            cmd.get_program(),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(t)
}

/// The lunavm binary cargo built for this bench.
pub fn lunavm_binary() -> Option<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_lunavm"));
    if built.exists() {
        return Some(built);
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.parent()?.join("lunavm");
    beside.exists().then_some(beside)
}

/// QEMU's arguments to boot `kernel` with `append`.
pub fn qemu_args(kernel: &Path, append: &str) -> Vec<String> {
    [
        "-machine",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        kernel.display().to_string(),
        "-append".into(),
        append.into(),
    ])
    .collect()
}
