//! The deterministic platform: timer interrupts on virtual time, the RTC's
//! configured date, kicks counted as determinism holes, and `--repeat` proving
//! that runs repeat exactly (and failing when they do not).

mod common;

use common::{lunavm, require_kvm, run_guest};

/// `lunavm run --guest G --cmdline C --repeat N -q`.
fn repeat(guest: &str, cmdline: &str, n: &str) -> common::Run {
    require_kvm();
    lunavm(&[
        "run",
        "--guest",
        guest,
        "--cmdline",
        cmdline,
        "--repeat",
        n,
        "-q",
    ])
}

#[test]
fn every_deterministic_guest_repeats_twenty_times() {
    // Every built-in guest but `nondet` (which reads the TSC on purpose).
    // `emulate` runs without its rdrand/rdseed checks: where the host executes
    // RDRAND in the guest without an exit (software-nested KVM), it is a
    // determinism hole lunavm cannot close, and the README says so.
    let cases = [
        ("hello", ""),
        ("exits", "count=2000"),
        ("faults", ""),
        ("ucall", ""),
        ("mb_hello", ""),
        ("poke", ""),
        ("scribble", "rounds=2"),
        ("timer", "k=1"),
        ("timer", "mode=hlt"),
        ("rtc", ""),
        ("dirty", "pages=4 rounds=10"),
        ("mb_paging", "mode=off"),
        ("spin", ""),
        ("emulate", "only=int3"),
        ("emulate", "only=intn"),
        ("emulate", "only=fwait"),
        ("emulate", "only=cmpxchg16b"),
        ("emulate", "only=xgetbv"),
        ("emulate", "only=clac"),
        ("emulate", "only=badenc"),
    ];
    for (guest, cmdline) in cases {
        let run = repeat(guest, cmdline, "20");
        assert!(
            run.stderr.contains("lunavm: repeat: 20 runs identical"),
            "{guest} {cmdline}: {}",
            run.stderr
        );
        assert!(
            run.code == Some(0) || guest == "mb_paging",
            "{guest}: exit {:?}",
            run.code
        );
        if guest == "timer" {
            assert!(
                run.stderr.ends_with("kicks that moved virtual time: 0\n"),
                "{}",
                run.stderr
            );
        }
    }
}

#[test]
fn nondet_makes_repeat_fail_and_names_the_first_differing_exit() {
    // The TSC read at CPL3 changes the exits; a few runs are enough for two
    // of them to differ (its low bits vary between runs).
    let run = repeat("nondet", "rounds=8", "10");
    assert_eq!(run.code, Some(75), "{}", run.stderr);
    assert!(
        run.stderr.contains("differs from run 1 at exit #"),
        "{}",
        run.stderr
    );
}

#[test]
fn timer_interrupts_arrive_on_virtual_time() {
    let (run, report) = run_guest("timer", &["--cmdline", "mode=hlt ticks=10 hz=1000"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("timer: 10 ticks via hlt"),
        "{}",
        run.stdout
    );
    assert!(report["exits"]["interrupts"].as_u64().unwrap() >= 10);
    assert_eq!(report["exits"]["hlt"], 10);
    // Ten 1 kHz ticks: virtual time jumped to each deadline.
    let t = report["virtual_time_ns"].as_u64().unwrap();
    assert!((10_000_000..11_000_000).contains(&t), "virtual time {t}");
    assert_eq!(report["exits"]["kicks"], 0);
}

#[test]
fn computing_timer_trace_is_pinned() {
    let (run, _) = run_guest("timer", &["--cmdline", "k=1"]);
    assert_eq!(run.code, Some(0));
    insta::assert_snapshot!("timer_trace", run.stdout);
}

#[test]
fn rtc_reads_the_configured_date() {
    let (run, _) = run_guest("rtc", &["--rtc-start", "2024-02-29T23:59:59"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "rtc: 2024-02-29 23:59:59\n");
    let (run, _) = run_guest("rtc", &[]);
    assert_eq!(
        run.stdout, "rtc: 2025-01-01 00:00:00\n",
        "the documented default"
    );
}

#[test]
fn spin_is_kicked_into_a_deterministic_spin_wait() {
    // The guest waits for ticks in a loop that changes nothing: each kick's
    // probe finds the loop, and virtual time moves at its canonical state,
    // not where the kick happened to land (no host-timed jump at all).
    let (run, report) = run_guest("spin", &["--cmdline", "ticks=5"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "spin: 5 ticks\n");
    assert!(
        report["exits"]["spin_waits"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(report["exits"]["kick_time_jumps"], 0, "{report}");
    assert!(
        run.stderr
            .contains("found a spin wait: virtual time moved deterministically"),
        "{}",
        run.stderr
    );
    // Not a determinism hole: --strict lets it run to its end.
    let (run, report) = run_guest("spin", &["--strict"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(report["exits"]["kick_time_jumps"], 0, "{report}");
}

#[test]
fn in_kernel_irqchip_runs_the_timer_guest() {
    let (run, report) = run_guest(
        "timer",
        &["--cmdline", "mode=hlt ticks=5", "--irqchip", "kernel"],
    );
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("timer: 5 ticks via hlt"),
        "{}",
        run.stdout
    );
    // KVM delivered them; lunavm saw no HLT exits and injected nothing.
    assert_eq!(report["exits"]["hlt"], 0);
    assert_eq!(report["exits"]["interrupts"], 0);
}
