//! The fuzzing benchmark: `cargo bench -p lunavm --bench fuzz [-- --quick]`.
//!
//! On the built-in `fuzzme` guest and scripts/fuzz/fuzzme.lua, on this machine:
//! (a) executions per second of the shallow path (a packet with the wrong
//!     magic: restore, inject through the Lua packet device, run to DONE,
//!     verdict, feedback), with and without breakpoint coverage and compare
//!     feedback, against the floor: a snapshot restore plus the same number
//!     of guest exits with nothing else (the `exits` guest), and restores per
//!     second;
//! (b) time and executions to find each planted bug (the magic-guarded
//!     panic, the off-by-one, the checksum-guarded triple fault): `lunavm
//!     fuzz --keep-going` campaigns of LUNAVM_FUZZ_BENCH_SECS seconds (default
//!     60) with seeds 1..=LUNAVM_FUZZ_BENCH_RUNS (default 5), with coverage on
//!     and off and with comparison feedback on and off; medians over the
//!     runs that found the bug (a bug found in fewer than half the runs has
//!     no median);
//! (c) the coverage-over-time plot of the first campaign,
//!     `target/bench-fuzz-coverage.svg` (`lunavm fuzz --plot`).
//!
//! Writes `target/bench-fuzz.json` as well.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{machine_info, Stats, Table};
use lunavm::fuzz::scenario::config::{CmpFeedback, Coverage};
use lunavm::fuzz::scenario::engine::{Engine, FuzzSession};
use lunavm::machine::{Machine, MachineConfig, StopCondition, StopReason};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn session(coverage: bool, cmp: bool) -> FuzzSession {
    FuzzSession {
        scenario: repo().join("scripts/fuzz/fuzzme.lua"),
        args: Vec::new(),
        snapshot: PathBuf::new(),
        ctx: Value::Null,
        seed: lunavm::entropy::DEFAULT_SEED,
        coverage: Some(Coverage {
            blocks: coverage,
            guest_map: coverage,
        }),
        cmp: Some(CmpFeedback {
            breakpoints: cmp,
            guest: cmp,
        }),
        workdir: std::env::temp_dir(),
        keep_going: false,
    }
}

/// The shallow path: 16 bytes whose magic is wrong.
const SHALLOW: &[u8] = b"XXXXXXXXXXXXXXXX";

/// Executions per second of the shallow path, per batch; and its exits.
fn engine_rate(
    coverage: bool,
    cmp: bool,
    batches: usize,
    per: usize,
) -> Result<(Vec<f64>, u64), Error> {
    let mut e = Engine::open_from(&session(coverage, cmp), false)?;
    let mut exits = 0;
    for _ in 0..200 {
        exits = e.execute(SHALLOW)?.exits;
    }
    let mut rates = Vec::new();
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..per {
            let x = e.execute(SHALLOW)?;
            assert_eq!(x.verdict.class.name(), "ok", "{}", x.verdict.title);
        }
        rates.push(per as f64 / t.elapsed().as_secs_f64());
    }
    Ok((rates, exits))
}

/// The floor: restore a snapshot of the `exits` guest and run `exits` port
/// exits, per second; and restores alone per second.
fn floor(exits: u64, batches: usize, per: usize) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let elf = lunavm::guests::find("exits").ok_or("no exits guest")?.elf;
    let mut m = Machine::new(MachineConfig::default())?;
    m.load_kernel(elf, "count=100000000", &[])?;
    m.run(&StopCondition {
        max_exits: Some(100),
        ..StopCondition::default()
    })?;
    let snap = m.take_snapshot()?;
    let cond = StopCondition {
        max_exits: Some(exits),
        ..StopCondition::default()
    };
    let (mut run, mut restore) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..per {
            m.restore_snapshot(&snap)?;
            let stop = m.run(&cond)?;
            assert!(matches!(stop, StopReason::ExitBudget { .. }), "{stop:?}");
        }
        run.push(per as f64 / t.elapsed().as_secs_f64());
        // Restores alone, each after the same exits (the same dirty pages).
        let mut spent = 0.0;
        for _ in 0..per {
            m.run(&cond)?;
            let t = Instant::now();
            m.restore_snapshot(&snap)?;
            spent += t.elapsed().as_secs_f64();
        }
        restore.push(per as f64 / spent);
    }
    Ok((run, restore))
}

/// One campaign: (bug → (seconds, execs)).
fn campaign(
    bin: &Path,
    work: &Path,
    seed: u64,
    secs: u64,
    coverage: bool,
    cmp: bool,
) -> Result<Vec<(String, f64, u64)>, Error> {
    let _ = std::fs::remove_dir_all(work);
    let status = Command::new(bin)
        .args([
            "fuzz",
            &repo().join("scripts/fuzz/fuzzme.lua").display().to_string(),
            "--workdir",
            &work.display().to_string(),
            "--keep-going",
            "--coverage",
            if coverage { "all" } else { "none" },
            "--cmp",
            if cmp { "all" } else { "none" },
            "--",
            &format!("-seed={seed}"),
            &format!("-max_total_time={secs}"),
            "-print_final_stats=0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("lunavm fuzz exited with {status}").into());
    }
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir(work.join("crashes")) else {
        return Ok(found);
    };
    for e in dir {
        let rec: Value = serde_json::from_str(&std::fs::read_to_string(e?.path())?)?;
        let bug = match rec["verdict"]["reason"].as_str().unwrap_or("") {
            "symbol" => "bug 1: magic, then the length panic",
            "exception" => "bug 2: off-by-one store",
            "triple-fault" => "bug 3: checksum-guarded reset",
            other => other,
        };
        found.push((
            bug.to_string(),
            rec["found_after_secs"].as_f64().unwrap_or(f64::NAN),
            rec["found_after_execs"].as_u64().unwrap_or(0),
        ));
    }
    Ok(found)
}

fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("LUNAVM_FUZZ_BENCH_SECS", if quick { 10 } else { 60 });
    let runs = env("LUNAVM_FUZZ_BENCH_RUNS", if quick { 1 } else { 5 });
    let (batches, per) = if quick { (3, 200) } else { (7, 1000) };
    let mut table = Table::new();
    let mut out = json!({ "machine": machine_info() });

    table.section("(a) shallow path, executions per second");
    let (full, exits) = engine_rate(true, true, batches, per)?;
    let (bare, _) = engine_rate(false, false, batches, per)?;
    let (floor_run, restores) = floor(exits, batches, per)?;
    let (sf, sb, sfl, sr) = (
        Stats::of(&full),
        Stats::of(&bare),
        Stats::of(&floor_run),
        Stats::of(&restores),
    );
    table.row(
        "lunavm fuzz, coverage and compares on",
        &sf,
        "exec/s",
        1.0,
        0,
    );
    table.row(
        "lunavm fuzz, coverage and compares off",
        &sb,
        "exec/s",
        1.0,
        0,
    );
    table.row(
        &format!("floor: restore + {exits} exits"),
        &sfl,
        "exec/s",
        1.0,
        0,
    );
    table.row(
        "restores alone (after one execution)",
        &sr,
        "restore/s",
        1.0,
        0,
    );
    out["shallow"] = json!({
        "exits_per_exec": exits,
        "on": sf.json("exec/s"), "off": sb.json("exec/s"),
        "floor": sfl.json("exec/s"), "restores": sr.json("restore/s"),
        "ratio_on_to_floor": sf.median / sfl.median,
        "ratio_off_to_floor": sb.median / sfl.median,
    });

    let bin = common::lunavm_binary().ok_or("no lunavm binary")?;
    let target = repo().join("target");
    let work = target.join("bench-fuzz-work");
    let mut bugs = serde_json::Map::new();
    let configs = [(true, true), (true, false), (false, true), (false, false)];
    let mut plotted = false;
    for (coverage, cmp) in configs {
        let label = format!(
            "coverage {}, compares {}",
            if coverage { "on" } else { "off" },
            if cmp { "on" } else { "off" }
        );
        let mut per_bug: std::collections::BTreeMap<String, Vec<(f64, u64)>> = Default::default();
        for seed in 1..=runs {
            for (bug, s, e) in campaign(&bin, &work, seed, secs, coverage, cmp)? {
                per_bug.entry(bug).or_default().push((s, e));
            }
            if !plotted {
                let svg = target.join("bench-fuzz-coverage.svg");
                let _ = Command::new(&bin)
                    .args([
                        "fuzz",
                        &repo().join("scripts/fuzz/fuzzme.lua").display().to_string(),
                    ])
                    .args([
                        "--workdir",
                        &work.display().to_string(),
                        "--plot",
                        &svg.display().to_string(),
                    ])
                    .stderr(std::process::Stdio::null())
                    .status();
                plotted = true;
            }
        }
        table.section(&format!(
            "(b) time to each bug, {label} ({runs} runs of {secs} s; n = runs that found it)"
        ));
        let mut j = serde_json::Map::new();
        for (bug, v) in &per_bug {
            let s = Stats::of(&v.iter().map(|x| x.0).collect::<Vec<_>>());
            let e = Stats::of(&v.iter().map(|x| x.1 as f64).collect::<Vec<_>>());
            if 2 * v.len() as u64 >= runs {
                table.row(&format!("{bug}: seconds"), &s, "s", 1.0, 1);
                table.row(&format!("{bug}: executions"), &e, "execs", 1.0, 0);
            } else {
                table.section(&format!(
                    "  {bug}: found in {} of {runs} runs only",
                    v.len()
                ));
            }
            j.insert(
                bug.clone(),
                json!({ "found_in": v.len(), "secs": s.json("s"), "execs": e.json("execs") }),
            );
        }
        for bug in [
            "bug 1: magic, then the length panic",
            "bug 2: off-by-one store",
            "bug 3: checksum-guarded reset",
        ] {
            if !per_bug.contains_key(bug) {
                table.section(&format!("  {bug}: not found in {runs} runs of {secs} s"));
            }
        }
        bugs.insert(label, Value::Object(j));
    }
    out["bugs"] = Value::Object(bugs);
    out["campaign_secs"] = json!(secs);
    out["runs"] = json!(runs);
    table.print();
    std::fs::write(
        target.join("bench-fuzz.json"),
        serde_json::to_vec_pretty(&out)?,
    )?;
    Ok(())
}
