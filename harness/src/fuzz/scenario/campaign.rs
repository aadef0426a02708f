//! `lunavm fuzz`: a campaign's files, libFuzzer's callback, crash grouping,
//! the progress line, and `--repro`.
//!
//! The work directory holds `point.snap` (the machine at the fuzz point),
//! `session.json` (what every process needs to start from it), `corpus/`,
//! `artifacts/` (libFuzzer's crash files), `crashes/SIGNATURE.json` (one
//! record per bug), `hangs/` and `progress.log` (for `--plot`).

use std::cell::RefCell;
use std::ffi::c_int;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::engine::{Engine, EngineError, Execution, FuzzSession, SESSION_ENV};
use super::libfuzzer;
use super::verdict::{Class, Verdict};

/// Counter ranges: blocks, the guest's own map, comparison distances.
const BLOCK_COUNTERS: usize = 1 << 16;
const MAP_BASE: usize = BLOCK_COUNTERS;
const MAP_COUNTERS: usize = 1 << 15;
const CMP_BASE: usize = MAP_BASE + MAP_COUNTERS;
const CMP_COUNTERS: usize = libfuzzer::COUNTERS - CMP_BASE;

/// Errors of a campaign's files.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// A file or folder of the work directory.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The session file is not one lunavm wrote.
    #[error("{0} is not a lunavm fuzz session: {1}")]
    Session(PathBuf, String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CampaignError + '_ {
    move |e| CampaignError::Io(path.to_owned(), e)
}

/// Writes the session file in `s.workdir` and returns its path.
pub fn write_session(s: &FuzzSession) -> Result<PathBuf, CampaignError> {
    std::fs::create_dir_all(&s.workdir).map_err(io(&s.workdir))?;
    let path = s.workdir.join("session.json");
    let json = serde_json::to_vec_pretty(s).unwrap_or_default();
    std::fs::write(&path, json).map_err(io(&path))?;
    Ok(path)
}

/// Reads a session file.
pub fn read_session(path: &Path) -> Result<FuzzSession, CampaignError> {
    let data = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&data)
        .map_err(|e| CampaignError::Session(path.to_owned(), e.to_string()))
}

/// A crash record, `crashes/SIGNATURE.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CrashRecord {
    /// The grouping signature.
    pub signature: String,
    /// The verdict of the first input that reached it.
    pub verdict: Verdict,
    /// Its frames, symbolised.
    pub backtrace: Vec<String>,
    /// The input, in hex.
    pub input_hex: String,
    /// Whether a replay of the input reached another verdict.
    pub flaky: bool,
    /// The replay's verdict when it differed.
    pub replay: Option<Verdict>,
    /// Kicks that moved virtual time host-timed during the run that found
    /// it (nonzero: a likely cause of a flaky record).
    #[serde(default)]
    pub host_timed_kicks: u64,
    /// Seconds from the start of the process that found it.
    pub found_after_secs: f64,
    /// Executions that process ran until it found it.
    pub found_after_execs: u64,
    /// The input file (`--keep-going`; otherwise libFuzzer's artifact).
    pub input_file: Option<PathBuf>,
}

/// Counts of one process.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Inputs run.
    pub execs: u64,
    /// Crashes (all, including known signatures).
    pub crashes: u64,
    /// Crash signatures this process found first.
    pub unique: u64,
    /// Hangs.
    pub hangs: u64,
    /// Guest exits of all inputs.
    pub exits: u64,
    /// Wall time spent restoring (ns).
    pub restore_ns: u128,
    /// Pages restored.
    pub pages: u64,
}

struct State {
    session: FuzzSession,
    cmp_logs: super::i2s::CmpLogs,
    engine: Option<Engine>,
    stats: Stats,
    known: std::collections::HashSet<String>,
    start: Instant,
    last_print: Instant,
    progress: Option<std::fs::File>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The comparisons of `exec` from the sources the configuration enables.
fn enabled_cmps(exec: &Execution, engine: &Engine) -> Vec<crate::machine::fuzzbp::CmpEvent> {
    let cmp = engine.config.cmp;
    exec.cmps
        .iter()
        .filter(|c| {
            if c.from_guest {
                cmp.guest
            } else {
                cmp.breakpoints
            }
        })
        .copied()
        .collect()
}

/// Feeds one execution's coverage and comparisons to libFuzzer.
pub fn feed(exec: &Execution, engine: &Engine) {
    for &b in &exec.new_blocks {
        libfuzzer::bump(b as usize % BLOCK_COUNTERS);
    }
    for (i, &v) in exec.guest_map.iter().enumerate() {
        if v != 0 {
            libfuzzer::set_at_least(MAP_BASE + i % MAP_COUNTERS, v);
        }
    }
    for c in &enabled_cmps(exec, engine) {
        // Equal operands teach the mutator nothing and would crowd out
        // useful pairs in its small table of recent compares.
        if c.a != c.b {
            libfuzzer::trace_cmp(c.a, c.b, c.size);
        }
        // Value profile: each (site, bits still different) pair is a feature.
        let diff = (c.a ^ c.b).count_ones() as usize;
        let site = usize::try_from(c.pc.wrapping_mul(0x9e37_79b9) >> 4).unwrap_or(0);
        libfuzzer::set_at_least(CMP_BASE + (site.wrapping_mul(65) + diff) % CMP_COUNTERS, 1);
    }
}

/// The symbolised frames of a verdict.
pub fn backtrace(v: &Verdict, engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    if v.pc != 0 {
        out.push(engine.symbolize(v.pc));
    }
    out.extend(v.frames.iter().map(|&f| engine.symbolize_return(f)));
    out
}

impl State {
    fn engine(&mut self) -> &mut Engine {
        if self.engine.is_none() {
            match Engine::open(&self.session) {
                Ok(e) => {
                    eprintln!(
                        "lunavm fuzz: at the fuzz point of {}: {} block breakpoints, {} compare breakpoints{}",
                        self.session.scenario.display(),
                        e.blocks.len(),
                        e.cmp_sites,
                        if e.config.coverage.guest_map { ", guest coverage map if the guest registered one" } else { "" }
                    );
                    self.engine = Some(e);
                }
                Err(e) => {
                    eprintln!("lunavm fuzz: error: {e}");
                    std::process::exit(i32::from(crate::exit_code::SCRIPT_ERROR));
                }
            }
        }
        self.engine.as_mut().unwrap_or_else(|| unreachable!())
    }

    fn one(&mut self, input: &[u8]) -> c_int {
        let t0 = Instant::now();
        let result = self.engine().execute(input);
        let exec = match result {
            Ok(e) => e,
            Err(e) => {
                let dir = self.session.workdir.join("errors");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("error-{}", short_hash(input)));
                let _ = std::fs::write(&file, input);
                eprintln!(
                    "lunavm fuzz: error: the scenario failed on an input (saved to {}): {e}",
                    file.display()
                );
                std::process::exit(i32::from(crate::exit_code::SCRIPT_ERROR));
            }
        };
        let _ = t0;
        self.stats.execs += 1;
        self.stats.exits += exec.exits;
        self.stats.restore_ns += exec.restore_ns;
        self.stats.pages += exec.restored_pages;
        let engine = self.engine.as_ref().unwrap_or_else(|| unreachable!());
        // Crashes and hangs are not kept (-1): their coverage is not theirs
        // to claim (their one-shot blocks were armed again).
        if exec.verdict.class == Class::Ok {
            feed(&exec, engine);
        }
        let kept = enabled_cmps(&exec, engine);
        if !kept.is_empty() {
            self.cmp_logs.record(input, &kept);
        }
        let verdict = exec.verdict.clone();
        let rc = match verdict.class {
            Class::Ok => 0,
            Class::Hang => {
                self.stats.hangs += 1;
                let dir = self.session.workdir.join("hangs");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("hang-{}", verdict.signature()));
                if !file.exists() {
                    let _ = std::fs::write(&file, input);
                }
                -1
            }
            Class::Crash => self.crash(input, &exec),
        };
        self.progress(false);
        rc
    }

    fn crash(&mut self, input: &[u8], exec: &Execution) -> c_int {
        self.stats.crashes += 1;
        let sig = exec.verdict.signature();
        if self.known.contains(&sig) {
            return -1;
        }
        self.known.insert(sig.clone());
        let dir = self.session.workdir.join("crashes");
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{sig}.json"));
        // Another process (libFuzzer -fork/-jobs) may have found it first.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        let Ok(mut file) = file else {
            if self.session.keep_going {
                return -1;
            }
            // A known bug: libFuzzer still gets the crash (minimisation,
            // replays of artifacts and -fork rely on it), but the record
            // stays the first finder's.
            eprintln!(
                "lunavm fuzz: CRASH {sig} (known: {}): {}",
                path.display(),
                exec.verdict.title
            );
            std::process::abort();
        };
        self.stats.unique += 1;
        // Every crash is replayed once: one that does not reproduce is
        // reported as flaky, never hidden.
        let engine = self.engine();
        let replay = engine.execute(input).ok().map(|e| e.verdict);
        let engine = self.engine.as_ref().unwrap_or_else(|| unreachable!());
        let flaky = replay.as_ref().is_none_or(|r| r.signature() != sig);
        let input_file = self.session.keep_going.then(|| {
            let dir = self.session.workdir.join("artifacts");
            let _ = std::fs::create_dir_all(&dir);
            let f = dir.join(format!("crash-{sig}"));
            let _ = std::fs::write(&f, input);
            f
        });
        let record = CrashRecord {
            signature: sig.clone(),
            verdict: exec.verdict.clone(),
            backtrace: backtrace(&exec.verdict, engine),
            input_hex: hex(input),
            flaky,
            replay: if flaky { replay } else { None },
            host_timed_kicks: exec.host_timed_kicks,
            found_after_secs: self.start.elapsed().as_secs_f64(),
            found_after_execs: self.stats.execs,
            input_file,
        };
        let _ = file.write_all(&serde_json::to_vec_pretty(&record).unwrap_or_default());
        self.progress(true);
        eprintln!(
            "lunavm fuzz: CRASH {sig}{}: {}",
            match (flaky, exec.host_timed_kicks) {
                (false, _) => String::new(),
                (true, 0) => " (FLAKY: the replay differed)".into(),
                (true, k) => format!(
                    " (FLAKY: the replay differed; {k} host-timed kicks moved virtual time in the run)"
                ),
            },
            exec.verdict.title
        );
        for f in &record.backtrace {
            eprintln!("    at {f}");
        }
        let tail = String::from_utf8_lossy(&exec.serial);
        let tail: Vec<&str> = tail.lines().rev().take(5).collect();
        for l in tail.iter().rev() {
            eprintln!("  serial| {l}");
        }
        eprintln!("  record: {}", path.display());
        if self.session.keep_going {
            return -1;
        }
        // libFuzzer saves the input as an artifact on abort.
        std::process::abort();
    }

    fn progress(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_print).as_millis() < 2000 {
            return;
        }
        self.last_print = now;
        let secs = now.duration_since(self.start).as_secs_f64().max(1e-9);
        let Some(e) = self.engine.as_ref() else {
            return;
        };
        let s = &self.stats;
        let restore_secs = (s.restore_ns as f64 / 1e9).max(1e-9);
        eprintln!(
            "lunavm fuzz: {:.0}s execs {} ({:.0}/s) blocks {}/{} crashes {} (new {}) hangs {} exits/exec {:.0} restores/s {:.0} ({:.1} pages)",
            secs,
            s.execs,
            s.execs as f64 / secs,
            e.blocks_seen,
            e.blocks.len(),
            s.crashes,
            s.unique,
            s.hangs,
            s.exits as f64 / s.execs.max(1) as f64,
            s.execs as f64 / restore_secs,
            s.pages as f64 / s.execs.max(1) as f64
        );
        if let Some(f) = self.progress.as_mut() {
            let _ = writeln!(
                f,
                "{} {:.3} {} {} {}",
                std::process::id(),
                secs,
                s.execs,
                e.blocks_seen,
                s.unique
            );
        }
    }
}

/// A short content hash for file names.
pub fn short_hash(b: &[u8]) -> String {
    format!("{:016x}", super::verdict::fnv1a64(b))
}

extern "C" fn test_one_input(data: *const u8, size: usize) -> c_int {
    let input: &[u8] = if data.is_null() || size == 0 {
        &[]
    } else {
        // SAFETY: libFuzzer passes a buffer of `size` readable bytes that
        // stays valid for the duration of this call.
        unsafe { std::slice::from_raw_parts(data, size) }
    };
    STATE.with(|s| match s.borrow_mut().as_mut() {
        Some(st) => st.one(input),
        None => 0,
    })
}

/// Runs libFuzzer's driver in this process over the session in the
/// environment (`LUNAVM_FUZZ_SESSION`): the parent after writing it, and
/// every child libFuzzer starts. `args[0]` is this program.
pub fn run_libfuzzer(session_path: &Path, args: &[String]) -> Result<i32, CampaignError> {
    let session = read_session(session_path)?;
    let progress = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(session.workdir.join("progress.log"))
        .ok();
    let now = Instant::now();
    STATE.with(|s| {
        *s.borrow_mut() = Some(State {
            session,
            cmp_logs: Default::default(),
            engine: None,
            stats: Stats::default(),
            known: Default::default(),
            start: now,
            last_print: now,
            progress,
        })
    });
    Ok(libfuzzer::run_driver(args, test_one_input))
}

/// Whether this process is a libFuzzer child of `lunavm fuzz` (the session
/// is in the environment and the arguments are libFuzzer's).
pub fn child_session(args: &[String]) -> Option<PathBuf> {
    let path = std::env::var_os(SESSION_ENV)?;
    let first = args.get(1)?;
    (first.starts_with('-') && !first.starts_with("--")).then(|| PathBuf::from(path))
}

/// What `--repro` found.
#[derive(Clone, Debug)]
pub struct Repro {
    /// The first run.
    pub first: Execution,
    /// Whether a second run reached the same verdict signature.
    pub reproducible: bool,
    /// The symbolised backtrace.
    pub backtrace: Vec<String>,
}

/// Replays `input` twice from the fuzz point.
pub fn repro(engine: &mut Engine, input: &[u8]) -> Result<Repro, EngineError> {
    let first = engine.execute(input)?;
    let second = engine.execute(input)?;
    let reproducible =
        first.verdict.signature() == second.verdict.signature() && first.serial == second.serial;
    let backtrace = backtrace(&first.verdict, engine);
    Ok(Repro {
        first,
        reproducible,
        backtrace,
    })
}

/// libFuzzer's custom mutator (the `lunavm` binary exports
/// `LLVMFuzzerCustomMutator` and calls this): one time in three, an
/// input-to-state replacement from the comparisons the input made when it
/// ran (see [`super::i2s`]); otherwise, or when that finds nothing,
/// libFuzzer's own mutators. `data` holds `max_size` bytes, `size` in use.
pub fn custom_mutate(data: &mut [u8], size: usize, seed: u32) -> usize {
    let mut rng = super::i2s::Rng::new(seed);
    let size = size.min(data.len());
    if rng.below(3) == 0
        && STATE.with(|s| {
            s.borrow_mut()
                .as_mut()
                .is_some_and(|st| st.i2s(&mut data[..size], &mut rng))
        })
    {
        return size;
    }
    let max = data.len();
    libfuzzer_sys::fuzzer_mutate(data, size, max)
}

impl State {
    /// The comparison log of `data`: cached, else from a probe run.
    fn cmp_log(&mut self, data: &[u8]) -> Option<Vec<(u64, u64, u8)>> {
        if let Some(c) = self.cmp_logs.get(data) {
            return Some(c.to_vec());
        }
        let engine = self.engine.as_mut()?;
        let exec = engine.probe(data).ok()?;
        let kept = enabled_cmps(&exec, engine);
        self.cmp_logs.record(data, &kept);
        self.cmp_logs.get(data).map(<[_]>::to_vec)
    }

    /// Input-to-state: replace an operand from `data`'s comparisons; half
    /// the time, run the result and replace again from its comparisons (a
    /// checksum over a field just replaced needs the second round).
    fn i2s(&mut self, data: &mut [u8], rng: &mut super::i2s::Rng) -> bool {
        let on = self
            .engine
            .as_ref()
            .is_some_and(|e| e.config.cmp.breakpoints || e.config.cmp.guest);
        if !on {
            return false;
        }
        let Some(log) = self.cmp_log(data) else {
            return false;
        };
        if !super::i2s::replace(data, &log, rng) {
            return false;
        }
        if rng.below(2) == 0 {
            if let Some(log) = self.cmp_log(data) {
                super::i2s::replace(data, &log, rng);
            }
        }
        true
    }
}
