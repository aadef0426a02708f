//! lunavm's VMM benchmark: `cargo bench -p lunavm --bench vmm [-- --quick]`.
//!
//! One run measures, on this machine:
//!
//! (a) VM creation to the `hello` guest's exit, in-process (`Machine::new` +
//!     `load_kernel` + `run`), next to the raw-KVM floor doing the same.
//! (b) Port-I/O exits per second on the `exits` guest, in-process, against the
//!     floor (`floor.rs`: kvm-ioctls only, no lunavm code) measured in the same
//!     run. Rate = N / (t_run(count=N) - median t_run(count=0)), where t_run is
//!     the time from the first KVM_RUN to the guest's debug-exit write; the
//!     count=0 run takes away the guest's boot and its serial output.
//! (c) The same guest under QEMU with KVM and under the `lunavm` binary, both
//!     spawned as processes: boot-to-exit wall time (spawn to exit, count=0) and
//!     exits per second (the same count=N minus count=0 difference).
//!
//! It prints a table (median, min, max, interquartile range) with ratios and the
//! machine it ran on, and writes everything to `target/bench-vmm.json`.
//!
//! Options after `--`: `--quick` (smaller counts, fewer iterations),
//! `--count N`, `--reps N`, `--no-qemu`, `--json PATH`. Arguments cargo or
//! libtest pass (`--bench`, filters) are ignored.

#[allow(dead_code)]
mod common;
mod floor;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lunavm::machine::{Machine, MachineConfig, StopCondition, StopReason};
use serde_json::{json, Value};

use common::{
    lunavm_binary, machine_info, median_of, ms, qemu_args, spawn_timed, Error, Stats, Table, QEMU,
};

/// Exit-rate target: lunavm's rate over the floor's.
const TARGET_RATIO: f64 = 0.8;

/// How much to measure.
struct Config {
    quick: bool,
    /// Iterations of (a).
    hello_iters: usize,
    /// count=N of the exit-rate runs.
    count: u64,
    /// Repetitions of each exit-rate run (b).
    rate_reps: usize,
    /// Repetitions of each spawned count=N run (c).
    spawn_rate_reps: usize,
    /// Repetitions of each spawned count=0 run (c).
    spawn_boot_reps: usize,
    qemu: bool,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Config, Error> {
    let mut quick = false;
    let mut count = None;
    let mut reps = None;
    let mut qemu = true;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-qemu" => qemu = false,
            "--count" => count = Some(args.next().ok_or("--count needs a value")?.parse::<u64>()?),
            "--reps" => {
                reps = Some(
                    args.next()
                        .ok_or("--reps needs a value")?
                        .parse::<usize>()?,
                )
            }
            "--json" => json = Some(PathBuf::from(args.next().ok_or("--json needs a path")?)),
            "-h" | "--help" => {
                println!(
                    "usage: cargo bench -p lunavm --bench vmm [-- [--quick] [--count N] [--reps N] [--no-qemu] [--json PATH]]"
                );
                std::process::exit(0);
            }
            // `--bench` (from cargo), libtest flags and filters: not ours.
            _ => {}
        }
    }
    let mut c = if quick {
        Config {
            quick,
            hello_iters: 10,
            count: 20_000,
            rate_reps: 3,
            spawn_rate_reps: 3,
            spawn_boot_reps: 5,
            qemu,
            json,
        }
    } else {
        Config {
            quick,
            hello_iters: 30,
            count: 200_000,
            rate_reps: 9,
            spawn_rate_reps: 7,
            spawn_boot_reps: 15,
            qemu,
            json,
        }
    };
    if let Some(n) = count {
        if n == 0 {
            return Err("--count must be positive".into());
        }
        c.count = n;
    }
    if let Some(r) = reps {
        let r = r.max(1);
        c.rate_reps = r;
        c.spawn_rate_reps = r;
    }
    Ok(c)
}

/// Per-run exit rates (exits/s): `count / (t - base)` for each `t` in ms.
fn rates(count: u64, times_ms: &[f64], base_ms: f64) -> Vec<f64> {
    times_ms
        .iter()
        .map(|t| count as f64 / ((t - base_ms) / 1e3))
        .collect()
}

// ---------------------------------------------------------------- (a) and (b)

fn guest(name: &str) -> Result<&'static [u8], Error> {
    Ok(lunavm::guests::find(name)
        .ok_or_else(|| format!("no built-in guest '{name}'"))?
        .elf)
}

/// Times of one in-process lunavm run.
struct LunaRun {
    new: Duration,
    load: Duration,
    run: Duration,
    drop: Duration,
}

impl LunaRun {
    fn total(&self) -> Duration {
        self.new + self.load + self.run
    }
}

/// Runs `elf` in-process to its exit; checks exit value 0 and `expect` in the
/// serial output, and (when given) the number of port-0x80 writes.
fn luna_run(
    elf: &[u8],
    cmdline: &str,
    expect: &str,
    post_writes: Option<u64>,
) -> Result<LunaRun, Error> {
    let t0 = Instant::now();
    let mut m = Machine::new(MachineConfig::default())?;
    let t1 = Instant::now();
    m.load_kernel(elf, cmdline, &[])?;
    let t2 = Instant::now();
    let stop = m.run(&StopCondition::forever())?;
    let t3 = Instant::now();
    if stop != (StopReason::GuestExit { value: 0 }) {
        return Err(format!("lunavm: guest stopped with {}", stop.describe()).into());
    }
    let out = String::from_utf8_lossy(&m.serial_output()).into_owned();
    if !out.contains(expect) {
        return Err(format!("lunavm: serial output {out:?} lacks {expect:?}").into());
    }
    if let Some(n) = post_writes {
        let (_, writes) = m.post_code();
        if writes != n {
            return Err(format!("lunavm: {writes} writes to port 0x80, expected {n}").into());
        }
    }
    let t4 = Instant::now();
    drop(m);
    let drop_time = t4.elapsed();
    Ok(LunaRun {
        new: t1 - t0,
        load: t2 - t1,
        run: t3 - t2,
        drop: drop_time,
    })
}

/// Runs `elf` under the floor with the same checks as [`luna_run`].
fn floor_run(
    elf: &[u8],
    cmdline: &str,
    expect: &str,
    post_writes: Option<u64>,
) -> Result<floor::FloorRun, Error> {
    let r = floor::run(elf, cmdline)?;
    if r.exit_value != 0 {
        return Err(format!("floor: guest exited with {}", r.exit_value).into());
    }
    let out = String::from_utf8_lossy(&r.serial).into_owned();
    if !out.contains(expect) {
        return Err(format!("floor: serial output {out:?} lacks {expect:?}").into());
    }
    if let Some(n) = post_writes {
        if r.post_writes != n {
            return Err(
                format!("floor: {} writes to port 0x80, expected {n}", r.post_writes).into(),
            );
        }
    }
    Ok(r)
}

struct HelloResult {
    total: Stats,
    new: Stats,
    load: Stats,
    run: Stats,
    drop: Stats,
    floor_total: Stats,
    floor_setup: Stats,
    floor_run: Stats,
}

fn bench_hello(cfg: &Config) -> Result<HelloResult, Error> {
    let elf = guest("hello")?;
    let expect = "Hello from lunavm guest";
    for _ in 0..2 {
        luna_run(elf, "", expect, None)?;
        floor_run(elf, "", expect, None)?;
    }
    let (mut total, mut new, mut load, mut run, mut drop) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut f_total, mut f_setup, mut f_run) = (vec![], vec![], vec![]);
    for i in 0..cfg.hello_iters {
        // Alternate the order so neither side always runs on a warmer cache.
        let mut one_luna = || -> Result<(), Error> {
            let r = luna_run(elf, "", expect, None)?;
            total.push(ms(r.total()));
            new.push(ms(r.new));
            load.push(ms(r.load));
            run.push(ms(r.run));
            drop.push(ms(r.drop));
            Ok(())
        };
        if i % 2 == 0 {
            one_luna()?;
        }
        let f = floor_run(elf, "", expect, None)?;
        f_total.push(ms(f.setup + f.run));
        f_setup.push(ms(f.setup));
        f_run.push(ms(f.run));
        if i % 2 == 1 {
            one_luna()?;
        }
    }
    Ok(HelloResult {
        total: Stats::of(&total),
        new: Stats::of(&new),
        load: Stats::of(&load),
        run: Stats::of(&run),
        drop: Stats::of(&drop),
        floor_total: Stats::of(&f_total),
        floor_setup: Stats::of(&f_setup),
        floor_run: Stats::of(&f_run),
    })
}

/// This thread's user and system CPU time so far (getrusage; tick-sampled, so
/// only meaningful over long runs).
struct ThreadCpu {
    user: Duration,
    sys: Duration,
}

impl ThreadCpu {
    fn now() -> ThreadCpu {
        // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage for the call to fill in.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        if rc != 0 {
            return ThreadCpu {
                user: Duration::ZERO,
                sys: Duration::ZERO,
            };
        }
        let tv = |t: libc::timeval| {
            let secs = u64::try_from(t.tv_sec).unwrap_or(0);
            let micros = u64::try_from(t.tv_usec).unwrap_or(0);
            Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        ThreadCpu {
            user: tv(ru.ru_utime),
            sys: tv(ru.ru_stime),
        }
    }

    /// Appends the user and system time since `self` (ms) to the two lists.
    fn record(&self, user: &mut Vec<f64>, sys: &mut Vec<f64>) {
        let now = ThreadCpu::now();
        user.push(ms(now.user.saturating_sub(self.user)));
        sys.push(ms(now.sys.saturating_sub(self.sys)));
    }
}

/// Exit-rate measurements of one side.
struct RateSide {
    /// t_run of count=N runs, ms.
    t_n: Vec<f64>,
    /// t_run of count=0 runs, ms.
    t_0: Vec<f64>,
    /// User CPU time of the whole count=N run (setup included), ms.
    user_n: Vec<f64>,
    /// System CPU time of the whole count=N run (setup included), ms.
    sys_n: Vec<f64>,
}

impl RateSide {
    fn new() -> RateSide {
        RateSide {
            t_n: vec![],
            t_0: vec![],
            user_n: vec![],
            sys_n: vec![],
        }
    }
    fn rates(&self, count: u64) -> Stats {
        Stats::of(&rates(count, &self.t_n, median_of(&self.t_0)))
    }
    fn json(&self, count: u64) -> Value {
        let r = self.rates(count);
        json!({
            "exits_per_sec": r.json("exits/s"),
            "us_per_exit": 1e6 / r.median,
            "t_count_n_ms": Stats::of(&self.t_n).json("ms"),
            "t_count_0_ms": Stats::of(&self.t_0).json("ms"),
            "user_cpu_count_n_ms": Stats::of(&self.user_n).json("ms"),
            "sys_cpu_count_n_ms": Stats::of(&self.sys_n).json("ms"),
            "user_cpu_ns_per_exit": median_of(&self.user_n) * 1e6 / count as f64,
        })
    }
}

fn bench_exit_rate(cfg: &Config) -> Result<(RateSide, RateSide), Error> {
    let elf = guest("exits")?;
    let n = cfg.count;
    let (cmd_n, cmd_0) = (format!("count={n}"), "count=0".to_string());
    let (exp_n, exp_0) = (format!("exits: done {n}"), "exits: done 0".to_string());
    let warm = (n / 10).max(1);
    luna_run(
        elf,
        &format!("count={warm}"),
        &format!("exits: done {warm}"),
        Some(warm),
    )?;
    floor_run(
        elf,
        &format!("count={warm}"),
        &format!("exits: done {warm}"),
        Some(warm),
    )?;

    let mut luna = RateSide::new();
    let mut flo = RateSide::new();
    for i in 0..cfg.rate_reps {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                let cpu = ThreadCpu::now();
                let run = luna_run(elf, &cmd_n, &exp_n, Some(n))?.run;
                cpu.record(&mut luna.user_n, &mut luna.sys_n);
                luna.t_n.push(ms(run));
                luna.t_0
                    .push(ms(luna_run(elf, &cmd_0, &exp_0, Some(0))?.run));
            } else {
                let cpu = ThreadCpu::now();
                let run = floor_run(elf, &cmd_n, &exp_n, Some(n))?.run;
                cpu.record(&mut flo.user_n, &mut flo.sys_n);
                flo.t_n.push(ms(run));
                flo.t_0
                    .push(ms(floor_run(elf, &cmd_0, &exp_0, Some(0))?.run));
            }
        }
    }
    Ok((luna, flo))
}

// ---------------------------------------------------------------- (c) spawned

/// One spawned VMM's measurements.
struct SpawnSide {
    boot: Vec<f64>,
    t_n: Vec<f64>,
}

impl SpawnSide {
    fn rates(&self, count: u64) -> Stats {
        Stats::of(&rates(count, &self.t_n, median_of(&self.boot)))
    }
    fn json(&self, count: u64) -> Value {
        let r = self.rates(count);
        json!({
            "boot_to_exit_ms": Stats::of(&self.boot).json("ms"),
            "t_count_n_ms": Stats::of(&self.t_n).json("ms"),
            "exits_per_sec": r.json("exits/s"),
            "us_per_exit": 1e6 / r.median,
        })
    }
}

struct SpawnResult {
    qemu: SpawnSide,
    luna: SpawnSide,
    qemu_command: String,
}

enum Spawned {
    Done(SpawnResult),
    Skipped(String),
}

fn bench_spawned(cfg: &Config, qemu_version: Option<&str>) -> Result<Spawned, Error> {
    if !cfg.qemu {
        return Ok(Spawned::Skipped("--no-qemu given".into()));
    }
    if qemu_version.is_none() {
        return Ok(Spawned::Skipped(format!(
            "{QEMU} not found (install Debian's qemu-system-x86 to compare with QEMU)"
        )));
    }
    let Some(luna_bin) = lunavm_binary() else {
        return Ok(Spawned::Skipped(
            "the lunavm binary is missing: build it with `cargo build --release -p lunavm`".into(),
        ));
    };
    let dir = std::env::temp_dir().join(format!("lunavm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench_spawned_in(cfg, &dir, &luna_bin);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench_spawned_in(cfg: &Config, dir: &Path, luna_bin: &Path) -> Result<Spawned, Error> {
    let kernel = dir.join("exits.elf");
    std::fs::write(&kernel, guest("exits")?)?;
    let n = cfg.count;
    let qemu = |count: u64| -> Result<f64, Error> {
        let mut c = Command::new(QEMU);
        c.args(qemu_args(&kernel, &format!("count={count}")));
        // isa-debug-exit: QEMU exits with (value << 1) | 1 = 1 for value 0.
        spawn_timed(&mut c, 1, &format!("exits: done {count}"))
    };
    let luna = |count: u64| -> Result<f64, Error> {
        let mut c = Command::new(luna_bin);
        c.args([
            "run",
            "--guest",
            "exits",
            "--cmdline",
            &format!("count={count}"),
            "-q",
        ]);
        spawn_timed(&mut c, 0, &format!("exits: done {count}"))
    };
    let qemu_command = format!(
        "{QEMU} {}",
        qemu_args(&kernel, &format!("count={n}")).join(" ")
    );

    // A trial run: if this QEMU cannot boot the guest, say why and skip.
    if let Err(e) = qemu(1000) {
        return Ok(Spawned::Skipped(format!(
            "QEMU did not run the guest: {e}\n  command: {qemu_command}"
        )));
    }
    luna(1000)?;

    let mut q = SpawnSide {
        boot: vec![],
        t_n: vec![],
    };
    let mut l = SpawnSide {
        boot: vec![],
        t_n: vec![],
    };
    for i in 0..cfg.spawn_boot_reps {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                q.boot.push(qemu(0)?);
            } else {
                l.boot.push(luna(0)?);
            }
        }
    }
    for i in 0..cfg.spawn_rate_reps {
        for side in [i % 2, 1 - i % 2] {
            if side == 0 {
                q.t_n.push(qemu(n)?);
            } else {
                l.t_n.push(luna(n)?);
            }
        }
    }
    Ok(Spawned::Done(SpawnResult {
        qemu: q,
        luna: l,
        qemu_command,
    }))
}

// ---------------------------------------------------------------- main

fn json_path(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.json {
        return p.clone();
    }
    // The bench runs as <target>/release/deps/vmm-<hash>.
    let exe = std::env::current_exe().ok();
    let deps = exe
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"));
    let target = deps
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    target
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("bench-vmm.json")
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench vmm: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Error> {
    let cfg = parse_args()?;
    let started = Instant::now();
    let info = machine_info();
    let s = |k: &str| info[k].as_str().unwrap_or("unknown").to_string();
    println!(
        "lunavm VMM benchmark{}",
        if cfg.quick { " (--quick)" } else { "" }
    );
    println!(
        "  CPU:    {} ({} CPUs available)",
        s("cpu_model"),
        info["cpus"]
    );
    println!("  kernel: {}", s("kernel"));
    println!("  KVM:    {}", s("kvm"));
    println!("  QEMU:   {}", info["qemu"].as_str().unwrap_or("not found"));
    println!("  lunavm: commit {}", s("lunavm_commit"));
    println!();

    eprintln!(
        "(a) VM creation to the hello guest's exit, {} iterations…",
        cfg.hello_iters
    );
    let hello = bench_hello(&cfg)?;
    eprintln!(
        "(b) exit rate, count={} × {} per side, in-process vs floor…",
        cfg.count, cfg.rate_reps
    );
    let (luna, flo) = bench_exit_rate(&cfg)?;
    eprintln!("(c) spawned lunavm vs QEMU…");
    let qemu_version = info["qemu"].as_str().map(str::to_string);
    let spawned = bench_spawned(&cfg, qemu_version.as_deref())?;

    let n = cfg.count;
    let mut t = Table::new();
    t.section("(a) VM creation → hello guest exit, in-process");
    t.row(
        "lunavm: new + load_kernel + run",
        &hello.total,
        "ms",
        1.0,
        2,
    );
    t.row(
        "  Machine::new (incl. CPUID probe)",
        &hello.new,
        "ms",
        1.0,
        2,
    );
    t.row("  load_kernel", &hello.load, "ms", 1.0, 3);
    t.row("  run", &hello.run, "ms", 1.0, 2);
    t.row("  (drop, not in total)", &hello.drop, "ms", 1.0, 2);
    t.row(
        "floor: raw KVM setup + run",
        &hello.floor_total,
        "ms",
        1.0,
        2,
    );
    t.row(
        "  setup (open, VM, vCPU, mmap, load)",
        &hello.floor_setup,
        "ms",
        1.0,
        2,
    );
    t.row("  run", &hello.floor_run, "ms", 1.0, 2);
    t.section(&format!(
        "(b) port-I/O exits/s, `exits` guest, in-process: {n} / (t_run(count={n}) - median t_run(count=0))"
    ));
    let (l_rate, f_rate) = (luna.rates(n), flo.rates(n));
    t.row("lunavm Machine::run", &l_rate, "k exits/s", 1e3, 1);
    t.row("floor (kvm-ioctls only)", &f_rate, "k exits/s", 1e3, 1);
    t.row(
        &format!("lunavm t_run(count={n})"),
        &Stats::of(&luna.t_n),
        "ms",
        1.0,
        1,
    );
    t.row("lunavm t_run(count=0)", &Stats::of(&luna.t_0), "ms", 1.0, 2);
    t.row(
        &format!("floor t_run(count={n})"),
        &Stats::of(&flo.t_n),
        "ms",
        1.0,
        1,
    );
    t.row("floor t_run(count=0)", &Stats::of(&flo.t_0), "ms", 1.0, 2);
    t.row(
        &format!("lunavm user CPU, whole count={n} run"),
        &Stats::of(&luna.user_n),
        "ms",
        1.0,
        0,
    );
    t.row(
        &format!("lunavm sys CPU, whole count={n} run"),
        &Stats::of(&luna.sys_n),
        "ms",
        1.0,
        0,
    );
    t.row(
        &format!("floor user CPU, whole count={n} run"),
        &Stats::of(&flo.user_n),
        "ms",
        1.0,
        0,
    );
    t.row(
        &format!("floor sys CPU, whole count={n} run"),
        &Stats::of(&flo.sys_n),
        "ms",
        1.0,
        0,
    );
    if let Spawned::Done(r) = &spawned {
        t.section(
            "(c) spawned processes, same `exits` ELF: boot-to-exit = spawn → exit with count=0",
        );
        t.row("QEMU boot-to-exit", &Stats::of(&r.qemu.boot), "ms", 1.0, 1);
        t.row(
            "lunavm boot-to-exit",
            &Stats::of(&r.luna.boot),
            "ms",
            1.0,
            1,
        );
        t.row(
            &format!("QEMU exits/s (count={n} - count=0)"),
            &r.qemu.rates(n),
            "k exits/s",
            1e3,
            1,
        );
        t.row(
            &format!("lunavm exits/s (count={n} - count=0)"),
            &r.luna.rates(n),
            "k exits/s",
            1e3,
            1,
        );
        t.row(
            &format!("QEMU wall time count={n}"),
            &Stats::of(&r.qemu.t_n),
            "ms",
            1.0,
            0,
        );
        t.row(
            &format!("lunavm wall time count={n}"),
            &Stats::of(&r.luna.t_n),
            "ms",
            1.0,
            0,
        );
    }
    println!();
    t.print();

    let rate_ratio = l_rate.median / f_rate.median;
    let create_ratio = hello.total.median / hello.floor_total.median;
    println!();
    println!("Ratios (of medians):");
    println!(
        "  (b) lunavm / floor exit rate:        {rate_ratio:.3}  (target >= {TARGET_RATIO}: {})  [{:.2} vs {:.2} µs/exit]",
        if rate_ratio >= TARGET_RATIO { "met" } else { "NOT MET" },
        1e6 / l_rate.median,
        1e6 / f_rate.median
    );
    println!(
        "      user CPU per exit (tick-sampled): lunavm {:.0} ns, floor {:.0} ns; the rest is KVM_RUN in the kernel",
        median_of(&luna.user_n) * 1e6 / n as f64,
        median_of(&flo.user_n) * 1e6 / n as f64
    );
    println!("  (a) lunavm / floor create→exit time: {create_ratio:.2}  (> 1: lunavm slower)");
    let spawn_json = match &spawned {
        Spawned::Done(r) => {
            let rate = r.luna.rates(n).median / r.qemu.rates(n).median;
            let boot = median_of(&r.luna.boot) / median_of(&r.qemu.boot);
            println!("  (c) lunavm / QEMU exit rate:         {rate:.3}  (> 1: lunavm faster)");
            println!("  (c) lunavm / QEMU boot-to-exit time: {boot:.3}  (< 1: lunavm faster)");
            println!();
            println!("QEMU command line (count=0 for boot-to-exit; success is exit status 1):");
            println!("  {}", r.qemu_command);
            json!({
                "available": true,
                "command": r.qemu_command,
                "qemu": r.qemu.json(n),
                "lunavm_binary": r.luna.json(n),
                "ratio_exit_rate_lunavm_over_qemu": rate,
                "ratio_boot_to_exit_lunavm_over_qemu": boot,
            })
        }
        Spawned::Skipped(why) => {
            println!();
            println!("(c) skipped: {why}");
            json!({ "available": false, "skipped_reason": why })
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!("Total bench time: {elapsed:.1} s");

    let report = json!({
        "benchmark": "lunavm vmm",
        "quick": cfg.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": info,
        "hello_create_to_exit": {
            "iterations": cfg.hello_iters,
            "lunavm_in_process_ms": hello.total.json("ms"),
            "lunavm_new_ms": hello.new.json("ms"),
            "lunavm_load_kernel_ms": hello.load.json("ms"),
            "lunavm_run_ms": hello.run.json("ms"),
            "lunavm_drop_ms": hello.drop.json("ms"),
            "floor_ms": hello.floor_total.json("ms"),
            "floor_setup_ms": hello.floor_setup.json("ms"),
            "floor_run_ms": hello.floor_run.json("ms"),
            "ratio_lunavm_over_floor": create_ratio,
        },
        "exit_rate_in_process": {
            "count": n,
            "reps": cfg.rate_reps,
            "method": "count / (t_run(count=N) - median t_run(count=0)); t_run = first KVM_RUN to the debug-exit write",
            "lunavm": luna.json(n),
            "floor": flo.json(n),
            "ratio_lunavm_over_floor": rate_ratio,
            "target": TARGET_RATIO,
            "meets_target": rate_ratio >= TARGET_RATIO,
        },
        "spawned": spawn_json,
        "bench_seconds": elapsed,
    });
    let path = json_path(&cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(())
}
