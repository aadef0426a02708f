//! The `lunavm fuzz` subcommand: set up the fuzz point and hand over to
//! libFuzzer, or replay one input (`--repro`), write a regression test
//! (`--to-test`) or plot a campaign's coverage (`--plot`).

use std::path::{Path, PathBuf};

use super::campaign::{self, CampaignError};
use super::config::{CmpFeedback, Coverage};
use super::engine::{create_fuzz_point, Engine, FuzzSession, SESSION_ENV};
use super::plot;
use super::verdict::Class;
use crate::exit_code;

/// The options of `lunavm fuzz`.
#[derive(Clone, Debug, Default)]
pub struct FuzzOptions {
    /// The scenario.
    pub scenario: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The work directory (default `lunavm-fuzz/STEM`).
    pub workdir: Option<PathBuf>,
    /// Re-run `fuzz_setup` even when the work directory has a fuzz point.
    pub fresh: bool,
    /// Machine seed.
    pub seed: u64,
    /// Coverage override.
    pub coverage: Option<Coverage>,
    /// Comparison feedback override.
    pub cmp: Option<CmpFeedback>,
    /// Replay this input.
    pub repro: Option<PathBuf>,
    /// Write a regression test for (input, folder).
    pub to_test: Option<(PathBuf, PathBuf)>,
    /// Write the coverage plot here.
    pub plot: Option<PathBuf>,
    /// libFuzzer's flags and corpus folders.
    pub libfuzzer: Vec<String>,
    /// Record crashes and go on (see [`FuzzSession::keep_going`]).
    pub keep_going: bool,
}

impl FuzzOptions {
    fn workdir(&self) -> PathBuf {
        self.workdir.clone().unwrap_or_else(|| {
            let stem = self
                .scenario
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into());
            PathBuf::from("lunavm-fuzz").join(stem)
        })
    }
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(a), m(b)), (Some(x), Some(y)) if x >= y)
}

/// Prepares the session: reuses the work directory's fuzz point when it is
/// newer than the scenario and was made with the same arguments and seed,
/// else runs `fuzz_setup` and saves a new one.
pub fn prepare(o: &FuzzOptions) -> Result<(FuzzSession, PathBuf), CampaignError> {
    let workdir = o.workdir();
    std::fs::create_dir_all(&workdir).map_err(|e| CampaignError::Io(workdir.clone(), e))?;
    let snapshot = workdir.join("point.snap");
    let session_path = workdir.join("session.json");
    let scenario =
        std::fs::canonicalize(&o.scenario).map_err(|e| CampaignError::Io(o.scenario.clone(), e))?;
    let old = campaign::read_session(&session_path).ok();
    let reuse = !o.fresh
        && newer(&snapshot, &scenario)
        && old
            .as_ref()
            .is_some_and(|s| s.scenario == scenario && s.args == o.args && s.seed == o.seed);
    let ctx = match (&old, reuse) {
        (Some(s), true) => {
            eprintln!(
                "lunavm fuzz: starting from the fuzz point in {}",
                snapshot.display()
            );
            s.ctx.clone()
        }
        _ => {
            eprintln!(
                "lunavm fuzz: running {}'s fuzz_setup to the fuzz point",
                o.scenario.display()
            );
            create_fuzz_point(&scenario, &o.args, o.seed, &snapshot)?
        }
    };
    let session = FuzzSession {
        scenario,
        args: o.args.clone(),
        snapshot,
        ctx,
        seed: o.seed,
        coverage: o.coverage,
        cmp: o.cmp,
        workdir: std::fs::canonicalize(&workdir).unwrap_or(workdir),
        keep_going: o.keep_going,
    };
    let path = campaign::write_session(&session)?;
    Ok((session, path))
}

/// Runs `lunavm fuzz`; returns the exit status.
pub fn run(o: &FuzzOptions) -> u8 {
    match run_inner(o) {
        Ok(code) => code,
        Err(e) => {
            eprintln!(
                "lunavm fuzz: error: {}",
                crate::script::convert::error_chain(&e)
            );
            match e {
                CampaignError::Engine(_) => exit_code::SCRIPT_ERROR,
                _ => exit_code::BAD_INPUT,
            }
        }
    }
}

fn run_inner(o: &FuzzOptions) -> Result<u8, CampaignError> {
    if let Some(out) = &o.plot {
        let log = o.workdir().join("progress.log");
        let text = std::fs::read_to_string(&log).map_err(|e| CampaignError::Io(log.clone(), e))?;
        let svg = plot::coverage_svg(&text, &o.scenario.display().to_string());
        std::fs::write(out, svg).map_err(|e| CampaignError::Io(out.clone(), e))?;
        eprintln!("lunavm fuzz: wrote {}", out.display());
        return Ok(exit_code::SUCCESS);
    }
    let (session, session_path) = prepare(o)?;
    if let Some(file) = o
        .repro
        .clone()
        .or_else(|| o.to_test.as_ref().map(|t| t.0.clone()))
    {
        let input = std::fs::read(&file).map_err(|e| CampaignError::Io(file.clone(), e))?;
        let mut engine = Engine::open(&session)?;
        let r = campaign::repro(&mut engine, &input)?;
        let v = &r.first.verdict;
        println!("verdict: {} ({}): {}", v.class.name(), v.reason, v.title);
        println!("signature: {}", v.signature());
        println!(
            "reproducible: {}",
            if r.reproducible {
                "yes"
            } else {
                "NO (flaky: a second replay differed)"
            }
        );
        println!(
            "exits: {}, virtual time: {}",
            r.first.exits,
            crate::report::format_ns(r.first.vtime_ns)
        );
        if r.first.host_timed_kicks > 0 {
            println!(
                "determinism: {} kicks moved virtual time host-timed in this run (the guest spun in a way lunavm could not recognise): the verdict may not reproduce",
                r.first.host_timed_kicks
            );
        }
        println!(
            "coverage: {} new blocks, {} non-zero bytes in the guest's map, {} comparisons",
            r.first.new_blocks.len(),
            r.first.guest_map.iter().filter(|&&b| b != 0).count(),
            r.first.cmps.len()
        );
        for c in r.first.cmps.iter().take(16) {
            println!(
                "  cmp at {}: {:#x} vs {:#x} ({} bytes{})",
                engine.symbolize(c.pc),
                c.a,
                c.b,
                c.size,
                if c.from_guest { ", from the guest" } else { "" }
            );
        }
        if !r.backtrace.is_empty() {
            println!("backtrace:");
            for f in &r.backtrace {
                println!("  {f}");
            }
        }
        println!("serial output since the fuzz point:");
        print!("{}", String::from_utf8_lossy(&r.first.serial));
        if !r.first.serial.ends_with(b"\n") && !r.first.serial.is_empty() {
            println!();
        }
        if let Some((_, dir)) = &o.to_test {
            let path = super::totest::write(&o.scenario, &o.args, &input, v, dir)
                .map_err(|e| CampaignError::Io(dir.clone(), e))?;
            eprintln!("lunavm fuzz: wrote {}", path.display());
        }
        return Ok(match v.class {
            Class::Ok => exit_code::SUCCESS,
            _ => exit_code::TEST_FAILED,
        });
    }
    let exe = std::env::current_exe().map_err(|e| CampaignError::Io("current_exe".into(), e))?;
    let mut args = vec![exe.display().to_string()];
    let has_positional = o.libfuzzer.iter().any(|a| !a.starts_with('-'));
    if !o
        .libfuzzer
        .iter()
        .any(|a| a.starts_with("-artifact_prefix="))
    {
        let dir = session.workdir.join("artifacts");
        std::fs::create_dir_all(&dir).map_err(|e| CampaignError::Io(dir.clone(), e))?;
        args.push(format!("-artifact_prefix={}/", dir.display()));
    }
    args.extend(o.libfuzzer.iter().cloned());
    if !has_positional {
        let dir = session.workdir.join("corpus");
        std::fs::create_dir_all(&dir).map_err(|e| CampaignError::Io(dir.clone(), e))?;
        args.push(dir.display().to_string());
    }
    // libFuzzer's children (-fork, -jobs, minimisation) run this program
    // with libFuzzer's flags only: the session comes through the environment.
    // (No other thread of this process runs yet.)
    std::env::set_var(SESSION_ENV, &session_path);
    let rc = campaign::run_libfuzzer(&session_path, &args)?;
    Ok(u8::try_from(rc.clamp(0, 255)).unwrap_or(exit_code::VM_ERROR))
}
