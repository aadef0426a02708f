//! `lunavm test`: discovers `*_test.lua` files and their `test_*` functions, runs
//! each test in a fresh process (a fresh machine and Lua state), with a
//! virtual-time and a wall-time budget, and reports one line per test.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlua::Value;

use super::convert::describe;
use super::session::{Outcome, SubResult};
use super::{Scenario, ScenarioOptions, ScriptError};
use crate::units;

/// Default virtual-time budget of a test.
pub const DEFAULT_VTIME_NS: u64 = 10_000_000_000;
/// Default wall-time budget of a test.
pub const DEFAULT_WALL: Duration = Duration::from_secs(60);
/// Prefix of the line a worker prints its result on.
pub const RESULT_PREFIX: &str = "LUNAVM-RESULT ";

/// One test to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    /// The file.
    pub file: PathBuf,
    /// The test function.
    pub name: String,
    /// Virtual-time budget.
    pub vtime_ns: u64,
    /// Wall-time budget.
    pub wall: Duration,
    /// The file defines `setup_once`: the test starts from its snapshot.
    pub setup_once: bool,
}

impl TestCase {
    /// "file::test".
    pub fn id(&self) -> String {
        format!("{}::{}", self.file.display(), self.name)
    }
}

/// A test's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed.
    Pass,
    /// An assertion failed.
    Fail,
    /// Skipped itself.
    Skip,
    /// An error other than an assertion (Lua error, budget, crash).
    Error,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
            Status::Error => "ERROR",
        }
    }
}

/// What a worker reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerReport {
    /// The test's own verdict.
    pub status: Status,
    /// Its message (empty on a pass).
    pub message: String,
    /// Results the test reported with `t.result`.
    pub results: Vec<SubResult>,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// "file::test" or "file::test/name".
    pub id: String,
    /// Verdict.
    pub status: Status,
    /// Message.
    pub message: String,
    /// Wall time in milliseconds.
    pub millis: u128,
    /// What the test printed (shown for failures).
    pub output: String,
}

/// Options of a test run.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// Files and folders to search.
    pub paths: Vec<PathBuf>,
    /// Only tests whose "file::test" contains this.
    pub filter: Option<String>,
    /// Write JUnit XML here.
    pub junit: Option<PathBuf>,
    /// Tests in parallel.
    pub jobs: usize,
    /// Only list the tests.
    pub list: bool,
    /// The seed for every test.
    pub seed: u64,
}

/// Errors of the runner itself.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A path does not exist.
    #[error("No such file or folder: {0}")]
    Missing(PathBuf),
    /// A folder could not be read.
    #[error("Cannot read {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The JUnit file could not be written.
    #[error("Cannot write the JUnit report {0}")]
    Junit(PathBuf, #[source] std::io::Error),
}

/// Finds `*_test.lua` files under `paths`, in name order.
pub fn find_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RunnerError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            walk(p, &mut out)?;
        } else {
            return Err(RunnerError::Missing(p.clone()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RunnerError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RunnerError::Io(dir.to_owned(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_test.lua"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads a budget table's `time` and `wall` entries.
fn budget_of(t: &mlua::Table, vtime: &mut u64, wall: &mut Duration) -> Result<(), String> {
    if let Ok(v) = t.get::<Value>("time") {
        if !v.is_nil() {
            *vtime = super::convert::duration(&v).map_err(|e| match e {
                super::convert::ApiError::Msg(m) => m,
                super::convert::ApiError::Lua(e) => describe(&e),
            })?;
        }
    }
    if let Ok(v) = t.get::<Value>("wall") {
        match v {
            Value::Nil => {}
            Value::String(s) => {
                *wall = Duration::from_nanos(
                    units::parse_duration(&s.to_string_lossy()).map_err(|e| e.to_string())?,
                )
            }
            Value::Integer(n) => {
                *wall = Duration::from_nanos(u64::try_from(n).map_err(|_| "wall must be >= 0")?)
            }
            other => {
                return Err(format!(
                    "budget wall= must be a duration, not {}",
                    other.type_name()
                ))
            }
        }
    }
    Ok(())
}

/// Loads a test file and lists its tests with their budgets. A file that does
/// not load becomes one erroring entry.
pub fn discover_file(file: &Path, seed: u64) -> Result<Vec<TestCase>, CaseResult> {
    let load_error = |message: String| CaseResult {
        id: format!("{}::(load)", file.display()),
        status: Status::Error,
        message,
        millis: 0,
        output: String::new(),
    };
    let scenario = Scenario::new(&ScenarioOptions {
        seed,
        ..Default::default()
    })
    .map_err(|e| load_error(e.to_string()))?;
    scenario
        .exec_file(file)
        .map_err(|e| load_error(e.to_string()))?;
    let budget = scenario.global_table("budget");
    let setup_once = scenario.has_function("setup_once");
    let mut cases = Vec::new();
    for name in scenario.test_names() {
        let (mut vtime, mut wall) = (DEFAULT_VTIME_NS, DEFAULT_WALL);
        if let Some(b) = &budget {
            budget_of(b, &mut vtime, &mut wall).map_err(|m| load_error(format!("budget: {m}")))?;
            if let Ok(Some(per)) = b.get::<Option<mlua::Table>>(name.as_str()) {
                budget_of(&per, &mut vtime, &mut wall)
                    .map_err(|m| load_error(format!("budget.{name}: {m}")))?;
            }
        }
        cases.push(TestCase {
            file: file.to_owned(),
            name,
            vtime_ns: vtime,
            wall,
            setup_once,
        });
    }
    Ok(cases)
}

/// What a worker does: one test (starting from a `setup_once` snapshot when
/// given one), or a file's `setup_once`, saving the machine to a snapshot.
#[derive(Clone, Debug)]
pub enum WorkerJob {
    /// Run test function `name`.
    Test {
        /// The test function.
        name: String,
        /// The snapshot `setup_once` left, to start from.
        snapshot: Option<PathBuf>,
    },
    /// Run `setup_once` and save the machine here.
    SetupOnce {
        /// Where the snapshot goes.
        snapshot: PathBuf,
    },
}

fn error_report(message: String) -> WorkerReport {
    WorkerReport {
        status: Status::Error,
        message,
        results: Vec::new(),
    }
}

/// Runs one job in this process (the worker side): for a test, setup, the
/// test, teardown.
pub fn run_in_process(file: &Path, job: &WorkerJob, vtime_ns: u64, seed: u64) -> WorkerReport {
    let opts = ScenarioOptions {
        seed,
        vtime_budget: Some(vtime_ns),
        args: vec![file.display().to_string()],
    };
    let scenario = match Scenario::new(&opts) {
        Ok(s) => s,
        Err(e) => {
            return WorkerReport {
                status: Status::Error,
                message: e.to_string(),
                results: Vec::new(),
            }
        }
    };
    if let Err(e) = scenario.exec_file(file) {
        return error_report(e.to_string());
    }
    let test = match job {
        WorkerJob::SetupOnce { snapshot } => return setup_once(&scenario, file, snapshot),
        WorkerJob::Test {
            name,
            snapshot: Some(path),
        } => {
            if let Err(e) = scenario.load_snapshot(path) {
                return error_report(format!("cannot start from the setup_once snapshot: {e}"));
            }
            name
        }
        WorkerJob::Test {
            name,
            snapshot: None,
        } => name,
    };
    let mut result = scenario.call_global("setup").and_then(|_| {
        scenario.call_global(test).and_then(|found| {
            if found {
                Ok(())
            } else {
                Err(mlua::Error::RuntimeError(format!(
                    "{}: no test function {test}",
                    file.display()
                )))
            }
        })
    });
    if let Err(e) = scenario.call_global("teardown") {
        if result.is_ok() {
            result = Err(e);
        }
    }
    let session = scenario.session();
    // A recorded t.fail/t.skip decides the verdict only if it is what ended
    // the test (a caught one followed by another error does not).
    let (status, message) = match (&result, &session.outcome) {
        (Ok(()), _) => (Status::Pass, String::new()),
        (Err(e), Some(Outcome::Fail(m))) if describe(e) == *m => (Status::Fail, m.clone()),
        (Err(e), Some(Outcome::Skip(m))) if describe(e) == *m => (Status::Skip, m.clone()),
        (Err(e), _) => (Status::Error, describe(e)),
    };
    WorkerReport {
        status,
        message,
        results: session.results.clone(),
    }
}

/// Runs `setup_once` and saves the machine it leaves.
fn setup_once(scenario: &Scenario, file: &Path, path: &Path) -> WorkerReport {
    if let Err(e) = scenario.call_global("setup_once") {
        let session = scenario.session();
        return match &session.outcome {
            Some(Outcome::Fail(m) | Outcome::Skip(m)) => error_report(format!("setup_once: {m}")),
            None => error_report(format!("setup_once: {}", describe(&e))),
        };
    }
    match scenario.save_machine(path) {
        Ok(()) => WorkerReport {
            status: Status::Pass,
            message: String::new(),
            results: Vec::new(),
        },
        Err(e) => error_report(format!(
            "{}: setup_once left no machine to snapshot: {e}",
            file.display()
        )),
    }
}

/// Runs one job in this process and prints its report for the parent.
pub fn worker_main(file: &Path, job: &WorkerJob, vtime_ns: u64, seed: u64) -> u8 {
    let report = run_in_process(file, job, vtime_ns, seed);
    let json = serde_json::to_string(&report).unwrap_or_default();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "\n{RESULT_PREFIX}{json}");
    let _ = out.flush();
    u8::from(report.status != Status::Pass && report.status != Status::Skip)
}

struct Running {
    index: usize,
    child: Child,
    start: Instant,
    case: TestCase,
}

/// Reads the child's output and builds its results.
fn collect(r: Running, killed_for_wall: bool) -> Vec<CaseResult> {
    let millis = r.start.elapsed().as_millis();
    let id = r.case.id();
    let out = r.child.wait_with_output();
    let (stdout, stderr) = match &out {
        Ok(o) => (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    };
    let mut output = String::new();
    let mut report = None;
    for line in stdout.lines() {
        match line.strip_prefix(RESULT_PREFIX) {
            Some(json) => report = serde_json::from_str::<WorkerReport>(json).ok(),
            None => {
                output.push_str(line);
                output.push('\n');
            }
        }
    }
    output.push_str(&stderr);
    let output = output.trim().to_string();
    let report = match (killed_for_wall, report) {
        (true, _) => WorkerReport {
            status: Status::Error,
            message: format!(
                "wall-time budget ({:?}) used up: the test was stopped",
                r.case.wall
            ),
            results: Vec::new(),
        },
        (false, Some(rep)) => rep,
        (false, None) => WorkerReport {
            status: Status::Error,
            message: format!(
                "the test process ended without a result ({})",
                out.map(|o| o.status.to_string())
                    .unwrap_or_else(|e| e.to_string())
            ),
            results: Vec::new(),
        },
    };
    let mut results = vec![CaseResult {
        id: id.clone(),
        status: report.status,
        message: report.message,
        millis,
        output,
    }];
    for sub in report.results {
        let status = match sub.status.as_str() {
            "pass" => Status::Pass,
            "skip" => Status::Skip,
            _ => Status::Fail,
        };
        results.push(CaseResult {
            id: format!("{id}/{}", sub.name),
            status,
            message: sub.message,
            millis: 0,
            output: String::new(),
        });
    }
    results
}

/// Prints one result line (and the output of a test that did not pass).
pub fn print_result(r: &CaseResult) {
    let mut line = format!("{:<5} {}", r.status.label(), r.id);
    if !r.message.is_empty() && r.status != Status::Pass {
        line.push_str(" — ");
        line.push_str(&r.message);
    }
    println!("{line}");
    if matches!(r.status, Status::Fail | Status::Error) && !r.output.is_empty() {
        for l in r.output.lines() {
            println!("      | {l}");
        }
    }
}

/// The closing line: "N passed, M failed[, K skipped]".
pub fn summary_line(results: &[CaseResult]) -> String {
    let count = |f: &dyn Fn(Status) -> bool| results.iter().filter(|r| f(r.status)).count();
    let passed = count(&|s| s == Status::Pass);
    let failed = count(&|s| matches!(s, Status::Fail | Status::Error));
    let skipped = count(&|s| s == Status::Skip);
    let mut s = format!("{passed} passed, {failed} failed");
    if skipped > 0 {
        s.push_str(&format!(", {skipped} skipped"));
    }
    s
}

/// Runs the tests in child processes of `exe`; prints results as they finish,
/// in discovery order. Returns every result.
pub fn run_tests(opts: &TestOptions, exe: &Path) -> Result<Vec<CaseResult>, RunnerError> {
    let files = find_files(&opts.paths)?;
    let mut results: Vec<CaseResult> = Vec::new();
    let mut cases = Vec::new();
    for f in &files {
        match discover_file(f, opts.seed) {
            Ok(c) => cases.extend(c),
            Err(load_error) => {
                print_result(&load_error);
                results.push(load_error);
            }
        }
    }
    if let Some(pat) = &opts.filter {
        cases.retain(|c| c.id().contains(pat.as_str()));
    }
    if opts.list {
        for c in &cases {
            println!("{}", c.id());
        }
        return Ok(results);
    }
    // Each file with a setup_once boots once: its snapshot starts every test.
    let snap_dir = std::env::temp_dir().join(format!("lunavm-test-{}", std::process::id()));
    let mut setups: std::collections::HashMap<PathBuf, Result<(), String>> =
        std::collections::HashMap::new();
    for case in cases.iter().filter(|c| c.setup_once) {
        if setups.contains_key(&case.file) {
            continue;
        }
        let _ = std::fs::create_dir_all(&snap_dir);
        let result = run_setup_once(exe, case, &snapshot_path(&snap_dir, &case.file), opts.seed);
        setups.insert(case.file.clone(), result);
    }
    let mut queue: VecDeque<(usize, TestCase)> = cases.into_iter().enumerate().collect();
    let total = queue.len();
    let mut done: Vec<Option<Vec<CaseResult>>> = vec![None; total];
    let mut next_to_print = 0;
    let mut running: Vec<Running> = Vec::new();
    let jobs = opts.jobs.max(1);
    while next_to_print < total {
        while running.len() < jobs {
            let Some((index, case)) = queue.pop_front() else {
                break;
            };
            if case.setup_once {
                if let Some(Err(msg)) = setups.get(&case.file) {
                    done[index] = Some(vec![CaseResult {
                        id: case.id(),
                        status: Status::Error,
                        message: msg.clone(),
                        millis: 0,
                        output: String::new(),
                    }]);
                    continue;
                }
            }
            let mut cmd = worker_command(exe, &case.file, case.vtime_ns, opts.seed);
            cmd.arg("--test").arg(&case.name);
            if case.setup_once {
                cmd.arg("--snapshot")
                    .arg(snapshot_path(&snap_dir, &case.file));
            }
            let child = cmd.spawn();
            match child {
                Ok(child) => running.push(Running {
                    index,
                    child,
                    start: Instant::now(),
                    case,
                }),
                Err(e) => {
                    done[index] = Some(vec![CaseResult {
                        id: case.id(),
                        status: Status::Error,
                        message: format!("cannot start the test process: {e}"),
                        millis: 0,
                        output: String::new(),
                    }]);
                }
            }
        }
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let finished = matches!(r.child.try_wait(), Ok(Some(_)));
            let over = !finished && r.start.elapsed() > r.case.wall;
            if finished || over {
                let mut r = running.swap_remove(i);
                if over {
                    let _ = r.child.kill();
                }
                let index = r.index;
                done[index] = Some(collect(r, over));
            } else {
                i += 1;
            }
        }
        while next_to_print < total {
            let Some(rs) = done[next_to_print].take() else {
                break;
            };
            for r in &rs {
                print_result(r);
            }
            results.extend(rs);
            next_to_print += 1;
        }
        if next_to_print < total {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let _ = std::fs::remove_dir_all(&snap_dir);
    println!("{}", summary_line(&results));
    if let Some(path) = &opts.junit {
        std::fs::write(path, junit_xml(&results))
            .map_err(|e| RunnerError::Junit(path.clone(), e))?;
    }
    Ok(results)
}

/// The snapshot file of `file`'s setup_once in `dir`.
fn snapshot_path(dir: &Path, file: &Path) -> PathBuf {
    let flat: String = file
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{flat}.snap"))
}

/// The command line of a worker process.
fn worker_command(exe: &Path, file: &Path, vtime_ns: u64, seed: u64) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("test")
        .arg("--worker")
        .arg(file)
        .arg("--vtime")
        .arg(vtime_ns.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a file's setup_once in a worker that saves its machine to `path`.
fn run_setup_once(exe: &Path, case: &TestCase, path: &Path, seed: u64) -> Result<(), String> {
    let mut cmd = worker_command(exe, &case.file, case.vtime_ns, seed);
    cmd.arg("--setup-once").arg(path);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the setup_once process: {e}"))?;
    let mut running = Running {
        index: 0,
        child,
        start: Instant::now(),
        case: case.clone(),
    };
    let over = loop {
        match running.child.try_wait() {
            Ok(Some(_)) => break false,
            Ok(None) if running.start.elapsed() > case.wall => {
                let _ = running.child.kill();
                break true;
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    };
    let results = collect(running, over);
    match results.first() {
        Some(c) if c.status == Status::Pass => Ok(()),
        Some(c) if over => Err(format!("setup_once: {}", c.message)),
        Some(c) => Err(c.message.clone()),
        None => Err("setup_once reported nothing".into()),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The results as JUnit XML.
pub fn junit_xml(results: &[CaseResult]) -> String {
    let failures = results.iter().filter(|r| r.status == Status::Fail).count();
    let errors = results.iter().filter(|r| r.status == Status::Error).count();
    let skipped = results.iter().filter(|r| r.status == Status::Skip).count();
    let secs: f64 = results.iter().map(|r| r.millis as f64 / 1000.0).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"lunavm\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{secs:.3}\">\n",
        results.len()
    );
    for r in results {
        let (class, name) = r.id.split_once("::").unwrap_or(("", &r.id));
        x.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(class),
            xml_escape(name),
            r.millis as f64 / 1000.0
        ));
        let body = match r.status {
            Status::Pass => None,
            Status::Fail => Some(format!("<failure message=\"{}\"/>", xml_escape(&r.message))),
            Status::Error => Some(format!("<error message=\"{}\"/>", xml_escape(&r.message))),
            Status::Skip => Some(format!("<skipped message=\"{}\"/>", xml_escape(&r.message))),
        };
        match body {
            None => x.push_str("/>\n"),
            Some(b) => {
                x.push('>');
                x.push_str(&b);
                if !r.output.is_empty() {
                    x.push_str(&format!(
                        "<system-out>{}</system-out>",
                        xml_escape(&r.output)
                    ));
                }
                x.push_str("</testcase>\n");
            }
        }
    }
    x.push_str("</testsuite>\n</testsuites>\n");
    x
}

/// Runs a scenario script once (`lunavm run SCRIPT.lua`): 0 on success (or the
/// integer the script returns), 1 on a failed assertion, 77 on a script error.
pub fn run_script(path: &Path, args: &[String], seed: u64) -> (u8, Option<String>) {
    let mut all = vec![path.display().to_string()];
    all.extend_from_slice(args);
    let scenario = match Scenario::new(&ScenarioOptions {
        seed,
        vtime_budget: None,
        args: all,
    }) {
        Ok(s) => s,
        Err(e) => return (crate::exit_code::SCRIPT_ERROR, Some(e.to_string())),
    };
    match scenario.exec_file(path) {
        Ok(Value::Integer(n)) => (u8::try_from(n & 0xff).unwrap_or(0), None),
        Ok(_) => (0, None),
        Err(e @ ScriptError::Read { .. }) => (crate::exit_code::BAD_INPUT, Some(e.to_string())),
        Err(e) => {
            let code = match scenario.session().outcome {
                Some(Outcome::Fail(_)) => crate::exit_code::TEST_FAILED,
                Some(Outcome::Skip(_)) => 0,
                None => crate::exit_code::SCRIPT_ERROR,
            };
            (code, Some(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, status: Status) -> CaseResult {
        CaseResult {
            id: id.into(),
            status,
            message: "m <x>".into(),
            millis: 5,
            output: String::new(),
        }
    }

    #[test]
    fn summary_counts_errors_as_failures() {
        let rs = vec![
            r("a", Status::Pass),
            r("b", Status::Fail),
            r("c", Status::Error),
        ];
        assert_eq!(summary_line(&rs), "1 passed, 2 failed");
        let rs = vec![r("a", Status::Pass), r("d", Status::Skip)];
        assert_eq!(summary_line(&rs), "1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn junit_escapes_and_counts() {
        let x = junit_xml(&[
            r("f.lua::test_a", Status::Fail),
            r("f.lua::test_b", Status::Pass),
        ]);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("classname=\"f.lua\" name=\"test_a\""));
        assert!(x.contains("m &lt;x&gt;"));
    }
}
