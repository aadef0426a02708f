//! `lunavm fuzz`: snapshot fuzzing of a guest from a Lua scenario. The
//! demonstration guest `fuzzme` and scripts/fuzz/fuzzme.lua: each planted
//! bug's input replays to its verdict with a symbolised backtrace, a short
//! campaign finds a crash and records it once, `--to-test` writes a
//! regression test that fails, libFuzzer's -fork children start from the
//! saved fuzz point, and scenario mistakes get clear errors.

mod common;

use common::{lunavm_bin, lunavm_env, require_kvm};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bug 1: a payload length (0xffff) beyond the packet.
const BUG1: &str = "4c554e410100ffff00000000";
/// Bug 2: SET of register 8, one past the end, over the stats pointer.
const BUG2: &str = "4c554e4101000c0000000000080000004141414141414141";
/// Bug 3: CTRL "RS" (reset) with a valid FNV-1a checksum.
const BUG3: &str = "4c554e410200020012e6046e5253";
/// A benign SET.
const BENIGN: &str = "4c554e4101000c0000000000030000008877665544332211";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn scenario(name: &str) -> String {
    repo().join("scripts/fuzz").join(name).display().to_string()
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzz")
        .join(name)
        .display()
        .to_string()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write input");
    p.display().to_string()
}

fn fuzz(args: &[&str], limit: u64) -> common::Run {
    require_kvm();
    let mut all = vec!["fuzz"];
    all.extend_from_slice(args);
    lunavm_env(&all, &[], Duration::from_secs(limit))
}

/// `--repro` of an input: (exit code, stdout).
fn repro(scn: &str, extra: &[&str], input_hex: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = write(dir.path(), "input", &unhex(input_hex));
    let work = dir.path().join("work").display().to_string();
    let mut args = vec![scn, "--workdir", &work];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--repro", &input]);
    let run = fuzz(&args, 120);
    (run.code, run.stdout)
}

#[test]
fn each_planted_bug_replays_to_its_verdict_and_backtrace() {
    let s = scenario("fuzzme.lua");
    let (code, out) = repro(&s, &[], BENIGN);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("verdict: ok (done)"), "{out}");
    for (name, hex) in [("bug1", BUG1), ("bug2", BUG2), ("bug3", BUG3)] {
        let (code, out) = repro(&s, &[], hex);
        assert_eq!(code, Some(1), "a crash exits 1: {out}");
        assert!(out.contains("reproducible: yes"), "{out}");
        insta::assert_snapshot!(format!("repro_{name}"), out);
    }
}

#[test]
fn the_sancov_build_feeds_its_own_map_and_comparisons() {
    let (code, out) = repro(&scenario("fuzzme.lua"), &["--arg", "fuzzme_cov"], BENIGN);
    assert_eq!(code, Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("coverage:"))
        .expect("coverage line");
    let map: usize = line
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("map count");
    assert!(map > 5, "the guest's map has entries: {line}");
    assert!(
        out.contains(", from the guest)"),
        "ucall CMP reports: {out}"
    );
}

#[test]
fn the_generic_scenario_fuzzes_the_symbol_convention() {
    let g = scenario("generic.lua");
    let args = ["--arg", "guest:fuzzme", "--arg", "src=buffer quiet=1"];
    let (code, out) = repro(&g, &args, BENIGN);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = repro(&g, &args, BUG1);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("verdict: crash (exit): guest exited with value 0x66"),
        "{out}"
    );
    let (code, out) = repro(&g, &args, BUG3);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("verdict: crash (triple-fault)"), "{out}");
}

#[test]
fn a_campaign_finds_bug1_records_it_once_and_writes_a_failing_test() {
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).expect("corpus dir");
    write(&corpus, "benign", &unhex(BENIGN));
    let work = dir.path().join("work");
    let (work_s, corpus_s) = (work.display().to_string(), corpus.display().to_string());
    let s = scenario("fuzzme.lua");
    let run = fuzz(
        &[
            &s,
            "--workdir",
            &work_s,
            "--keep-going",
            "--",
            "-seed=1",
            "-runs=3000",
            &corpus_s,
        ],
        300,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let records: Vec<serde_json::Value> = std::fs::read_dir(work.join("crashes"))
        .expect("crash records")
        .map(|e| {
            let text = std::fs::read_to_string(e.expect("entry").path()).expect("record");
            serde_json::from_str(&text).expect("record is JSON")
        })
        .collect();
    let bug1: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["verdict"]["title"]
                .as_str()
                .unwrap_or("")
                .starts_with("fuzzme_panic")
        })
        .collect();
    assert_eq!(
        bug1.len(),
        1,
        "one record for bug 1: {records:#?}\n{}",
        run.stderr
    );
    let r = bug1[0];
    assert_eq!(r["flaky"], false);
    assert_eq!(
        r["backtrace"][1].as_str().map(|s| s.starts_with("parse+")),
        Some(true)
    );
    let input = r["input_file"].as_str().expect("input file").to_string();

    // The crash becomes a regression test that fails while the bug is there.
    let tests = dir.path().join("tests");
    let tests_s = tests.display().to_string();
    let run = fuzz(
        &[&s, "--workdir", &work_s, "--to-test", &input, &tests_s],
        120,
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let written: Vec<PathBuf> = std::fs::read_dir(&tests)
        .expect("tests dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(written.len(), 1);
    let test = lunavm_env(
        &["test", &written[0].display().to_string()],
        &[],
        Duration::from_secs(120),
    );
    assert_eq!(test.code, Some(1), "{}\n{}", test.stdout, test.stderr);
    assert!(test.stdout.contains("FAIL"), "{}", test.stdout);
    assert!(
        test.stdout.contains("fuzzme_panic called from parse+"),
        "{}",
        test.stdout
    );
}

#[test]
fn fork_children_start_from_the_saved_fuzz_point() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work").display().to_string();
    let run = fuzz(
        &[
            &scenario("fuzzme.lua"),
            "--workdir",
            &work,
            "--keep-going",
            "--",
            "-fork=2",
            "-max_total_time=20",
            "-seed=3",
        ],
        300,
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("fuzz_setup to the fuzz point").count(),
        1,
        "only the parent runs the setup; the children load point.snap: {}",
        run.stderr
    );
    assert!(run.stderr.contains("INFO: -fork=2"), "{}", run.stderr);
    // The parent merges what its children found: features and a corpus.
    let last = run
        .stderr
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains(" corp: "))
        .unwrap_or_else(|| panic!("no fork progress line: {}", run.stderr));
    let corp: u64 = last
        .split(" corp: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("corpus size");
    assert!(corp > 0, "the children's inputs reach the parent: {last}");
}

#[test]
fn scenario_mistakes_get_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("w1").display().to_string();
    let run = fuzz(
        &[
            &fixture("no_inject.lua"),
            "--workdir",
            &work,
            "--",
            "-runs=1",
        ],
        60,
    );
    assert_eq!(run.code, Some(77), "{}", run.stderr);
    assert!(
        run.stderr.contains("defines no fuzz_inject() function"),
        "{}",
        run.stderr
    );
    let input = write(dir.path(), "bang", b"!boom");
    let work = dir.path().join("w2").display().to_string();
    let run = fuzz(
        &[
            &fixture("inject_error.lua"),
            "--workdir",
            &work,
            "--repro",
            &input,
        ],
        60,
    );
    assert_eq!(run.code, Some(77), "{}", run.stderr);
    assert!(
        run.stderr.contains("fuzz_inject: ") && run.stderr.contains("cannot inject 5 bytes"),
        "{}",
        run.stderr
    );
    let run = fuzz(
        &[
            &scenario("fuzzme.lua"),
            "--coverage",
            "lines",
            "--repro",
            &input,
        ],
        60,
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown source 'lines'"),
        "{}",
        run.stderr
    );
    let _ = lunavm_bin();
}
