//! Every built-in guest, run by the real binary: serial output, exit status and
//! the JSON report.

mod common;

use common::{lunavm, require_kvm, run_guest, temp_file};

#[test]
fn hello_prints_and_exits_zero() {
    let (run, report) = run_guest("hello", &[]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    insta::assert_snapshot!("hello_serial", run.stdout);
    assert!(
        run.stderr.contains("guest exited with value 0 (port 0xf4)"),
        "{}",
        run.stderr
    );
    assert_eq!(report["report_version"], 1);
    assert_eq!(report["stop"]["kind"], "guest_exit");
    assert_eq!(report["protocol"], "pvh");
    assert_eq!(report["exit_code"], 0);
}

#[test]
fn run_without_arguments_boots_hello() {
    require_kvm();
    let run = lunavm(&["run"]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.starts_with("Hello from lunavm guest 'hello'!"),
        "{}",
        run.stdout
    );
}

#[test]
fn exit_status_passes_through_and_qemu_mapping_is_available() {
    let (run, _) = run_guest("hello", &["--cmdline", "status=5"]);
    assert_eq!(run.code, Some(5));
    assert!(run.stdout.contains("cmdline: status=5"), "{}", run.stdout);
    let (run, report) = run_guest("hello", &["--cmdline", "status=5", "--qemu-exit-codes"]);
    assert_eq!(run.code, Some(11), "(5 << 1) | 1");
    assert_eq!(report["stop"]["value"], 5);
    let (run, _) = run_guest("hello", &["--cmdline", "status=300"]);
    assert_eq!(
        run.code,
        Some(300 & 0xff),
        "documented truncation to 8 bits"
    );
}

#[test]
fn exits_guest_makes_the_exits_it_is_asked_for() {
    let (run, report) = run_guest("exits", &["--cmdline", "count=2000"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "exits: done 2000\n");
    assert_eq!(report["post_code"][1], 2000, "one port 0x80 write per exit");
    assert!(report["exits"]["pio_out"].as_u64().unwrap() >= 2000);
    // Virtual time moves by the fixed per-exit cost only.
    let exits = report["guest_exits"].as_u64().unwrap();
    assert_eq!(report["virtual_time_ns"].as_u64().unwrap(), exits * 1000);
}

#[test]
fn unclaimed_accesses_read_all_ones_and_are_counted() {
    let (run, report) = run_guest("hello", &["--cmdline", "probe=1"]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(
        run.stdout
            .contains("probe: port 0x510 reads 0xffffffff, mmio 0xd0000000 reads 0xffffffff"),
        "{}",
        run.stdout
    );
    for bus in ["unclaimed_pio", "unclaimed_mmio"] {
        assert_eq!(report[bus]["reads"], 1, "{bus}");
        assert_eq!(report[bus]["writes"], 1, "{bus}");
    }
    assert!(run
        .stderr
        .contains("unclaimed  port reads 1, port writes 1, mmio reads 1, mmio writes 1"));
}

#[test]
fn a_halt_with_nothing_to_wake_the_guest_stops_the_run() {
    let (run, report) = run_guest("hello", &["--cmdline", "halt=1"]);
    assert_eq!(run.code, Some(74), "stderr:\n{}", run.stderr);
    assert_eq!(report["stop"]["kind"], "halted");
    assert_eq!(report["stop"]["interrupts_enabled"], false);
    assert_eq!(report["exits"]["hlt"], 1);
}

#[test]
fn budgets_stop_the_run() {
    let (run, report) = run_guest(
        "exits",
        &["--cmdline", "count=100000", "--max-exits", "500"],
    );
    assert_eq!(run.code, Some(73));
    assert_eq!(report["stop"]["kind"], "exit_budget");
    assert_eq!(report["stop"]["exits"], 500);
    let (run, report) = run_guest(
        "exits",
        &["--cmdline", "count=100000", "--max-time", "300us"],
    );
    assert_eq!(run.code, Some(73));
    assert_eq!(report["stop"]["kind"], "time_budget");
    assert_eq!(report["virtual_time_ns"], 300_000);
}

#[test]
fn faults_guest_handles_a_page_fault_and_int3() {
    let (run, report) = run_guest("faults", &[]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    insta::assert_snapshot!("faults_serial", run.stdout);
    let int3_failures = report["exits"]["emulation_failure"].as_u64().unwrap();
    assert_eq!(
        report["completions"]["int3"].as_u64().unwrap_or(0),
        int3_failures
    );
}

#[test]
fn triple_fault_stops_with_a_register_dump() {
    let (run, report) = run_guest("faults", &["--cmdline", "triple=1"]);
    assert_eq!(run.code, Some(71), "stderr:\n{}", run.stderr);
    assert_eq!(report["stop"]["kind"], "shutdown");
    let summary: String = run
        .stderr
        .lines()
        .take_while(|l| !l.contains("kernel "))
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("triple_fault_report", summary);
}

#[test]
fn ucall_guest_sends_every_command() {
    let (run, report) = run_guest("ucall", &[]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(report["stop"]["kind"], "done");
    for cmd in ["DONE", "PRINT", "SYNC", "FUZZ_POINT", "COV_MAP", "CMP"] {
        assert_eq!(report["ucalls"]["counts"][cmd], 1, "{cmd}");
    }
    assert_eq!(report["ucalls"]["prints"][0], "hello via ucall");
    assert!(
        run.stderr.contains("guest: hello via ucall"),
        "{}",
        run.stderr
    );
    assert_eq!(report["ucalls"]["last"]["CMP"]["args"][0], 0x1234);
    assert_eq!(report["ucalls"]["last"]["CMP"]["args"][1], 0x1234);
    assert_eq!(report["ucalls"]["last"]["FUZZ_POINT"]["args"][1], 64);
    assert_eq!(report["ucalls"]["errors"].as_array().unwrap().len(), 0);
    assert!(run.stdout.contains("ucall: all commands sent"));
}

#[test]
fn ucall_assert_stops_the_run() {
    let (run, report) = run_guest("ucall", &["--cmdline", "assert=1"]);
    assert_eq!(run.code, Some(70), "stderr:\n{}", run.stderr);
    assert_eq!(report["stop"]["kind"], "assert");
    let args = report["stop"]["args"].as_array().unwrap();
    assert_eq!((args[1].as_u64(), args[2].as_u64()), (Some(2), Some(3)));
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("lunavm:"))
        .unwrap_or_default()
        .to_string();
    insta::assert_snapshot!("ucall_assert", line);
}

#[test]
fn multiboot_guest_gets_its_command_line_and_modules() {
    require_kvm();
    let (_d1, m1) = temp_file("first.txt", b"first module text\n");
    let (_d2, m2) = temp_file("second.bin", b"second\0binary");
    let arg1 = format!("{},mod-one arg", m1.display());
    let arg2 = m2.to_str().unwrap().to_string();
    let run = lunavm(&[
        "run",
        "--guest",
        "mb_hello",
        "--cmdline",
        "mb test",
        "--module",
        &arg1,
        "--module",
        &arg2,
    ]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    insta::assert_snapshot!("mb_hello_serial", run.stdout);
    assert!(run.stderr.contains("guest: 32-bit ucall"), "{}", run.stderr);
}

#[test]
fn host_cpu_profile_passes_kvm_supported_cpuid_through() {
    let (run, host) = run_guest("hello", &["--cpu", "host"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(host["cpu"]["profile"], "host");
    let (_, base) = run_guest("hello", &[]);
    // The baseline hides at least what the host profile offers and the guest
    // sees, so it can never report fewer leaks than the host profile.
    let n = |r: &serde_json::Value| r["cpu"]["still_visible"].as_array().unwrap().len();
    assert!(
        n(&base) >= n(&host),
        "baseline {} < host {}",
        n(&base),
        n(&host)
    );
}

#[test]
fn baseline_profile_reports_what_the_guest_still_sees() {
    let (_run, report) = run_guest("hello", &[]);
    assert_eq!(report["cpu"]["profile"], "baseline");
    // Whatever this host leaks, the summary line names exactly the report's list.
    let visible = report["cpu"]["still_visible"].as_array().unwrap();
    for v in visible {
        let name = v.as_str().unwrap();
        assert!(!name.is_empty());
    }
}

#[test]
fn guests_command_lists_every_guest() {
    let run = lunavm(&["guests"]);
    assert_eq!(run.code, Some(0));
    insta::assert_snapshot!("guests_list", run.stdout);
}
