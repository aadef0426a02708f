//! The virtio devices through the real binary and the built-in `virtio`
//! guest: every device probed and used, the disk image left unchanged unless
//! `rw`, interrupts on both irqchips, `--repeat` determinism, a snapshot in
//! the middle of the guest's I/O, and clear errors for bad disk images.

mod common;

use common::{lunavm, require_kvm, scrub, temp_file};
use serde_json::Value;

/// A 1 MiB disk image whose bytes are a fixed function of their offset.
fn image() -> (tempfile::TempDir, std::path::PathBuf) {
    let bytes: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    temp_file("disk.img", &bytes)
}

/// `lunavm run --guest virtio ARGS -q --report R`: (run, report).
fn run_virtio(args: &[&str]) -> (common::Run, Value) {
    let mut all = vec!["--guest", "virtio"];
    all.extend_from_slice(args);
    run_report(&all)
}

/// `lunavm run ARGS -q --report R`: (run, report).
fn run_report(args: &[&str]) -> (common::Run, Value) {
    require_kvm();
    let (dir, _) = temp_file("unused", b"");
    let report = dir.path().join("report.json");
    let mut all = vec!["run", "-q"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--report", report.to_str().unwrap()]);
    let run = lunavm(&all);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", run.stderr));
    (run, serde_json::from_str(&text).unwrap())
}

#[test]
fn the_virtio_guest_drives_every_device() {
    let (_d, disk) = image();
    let disk_s = disk.to_str().unwrap();
    let before = std::fs::read(&disk).unwrap();
    let (run, report) = run_virtio(&["--disk", disk_s, "--net", "--vconsole", "--rng"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    insta::assert_snapshot!("virtio_all_devices", run.stdout);
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        before,
        "the image never changes"
    );
    assert_eq!(report["stop"]["kind"], "guest_exit");
}

#[test]
fn rw_disks_keep_the_guests_writes() {
    let (_d, disk) = image();
    let arg = format!("{},rw", disk.to_str().unwrap());
    let before = std::fs::read(&disk).unwrap();
    let (run, _) = run_virtio(&["--disk", &arg, "--cmdline", "rounds=1"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after[..4096], before[..4096], "round 0 wrote sectors 0-7");
    assert_eq!(after[4096..], before[4096..]);
}

#[test]
fn interrupts_arrive_on_both_irqchips() {
    let (_d, disk) = image();
    for irqchip in ["userspace", "kernel"] {
        let (run, report) = run_virtio(&[
            "--disk",
            disk.to_str().unwrap(),
            "--rng",
            "--irqchip",
            irqchip,
            "--cmdline",
            "irq=1 rounds=2",
        ]);
        assert_eq!(run.code, Some(0), "{irqchip}: {}{}", run.stdout, run.stderr);
        // blk: get-id, sector 0, 2 x (write, read), past-the-end, flush; rng: 1.
        assert!(
            run.stdout.contains("virtio: 9 interrupts\n"),
            "{irqchip}: {}",
            run.stdout
        );
        if irqchip == "userspace" {
            assert!(report["exits"]["interrupts"].as_u64().unwrap() >= 9);
        }
    }
}

#[test]
fn the_virtio_guest_repeats_twenty_times() {
    let (_d, disk) = image();
    let run = lunavm(&[
        "run",
        "--guest",
        "virtio",
        "--disk",
        disk.to_str().unwrap(),
        "--net",
        "--vconsole",
        "--rng",
        "--cmdline",
        "irq=1 rounds=8",
        "--repeat",
        "20",
        "-q",
    ]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("20 runs"), "{}", run.stderr);
}

#[test]
fn a_snapshot_in_the_middle_of_disk_io_restores_and_finishes_identically() {
    let (d, disk) = image();
    let disk_s = disk.to_str().unwrap();
    let snap = d.path().join("mid.snap");
    let snap_s = snap.to_str().unwrap();
    let common = ["--disk", disk_s, "--rng", "--cmdline", "rounds=16"];
    let (full_run, full) = run_virtio(&common);
    assert_eq!(full_run.code, Some(0), "{}", full_run.stderr);
    // Stop half-way through the blk rounds, with overlay blocks written.
    let mut mid_args = common.to_vec();
    mid_args.extend_from_slice(&["--max-exits", "400", "--save", snap_s]);
    let (mid, _) = run_virtio(&mid_args);
    assert_eq!(mid.code, Some(73), "{}", mid.stderr);
    assert!(!mid.stdout.contains("blk: 16 rounds"), "{}", mid.stdout);
    let (rest_run, rest) = run_report(&["--restore", snap_s, "--verify-restore"]);
    assert_eq!(rest_run.code, Some(0), "{}", rest_run.stderr);
    assert!(full_run.stdout.ends_with(&rest_run.stdout));
    assert!(rest_run
        .stdout
        .contains("blk: 16 rounds of 4 KiB, checksum"));
    for key in ["stop", "guest_exits", "virtual_time_ns", "state_hash"] {
        assert_eq!(rest[key], full[key], "{key}");
    }
}

#[test]
fn in_memory_restores_roll_back_the_disk_overlay() {
    require_kvm();
    let (d, disk) = image();
    let script = format!(
        r#"
vm.boot{{guest = "virtio", disk = "{}", cmdline = "rounds=6 sync=1"}}
vm.run{{sync = 2}}
local s = snapshot.take()
local before = virtio.disk_read("blk", 2 * 4096, 4096)
local ev = vm.run{{}}
assert(ev.reason == "exit" and ev.status == 0, ev.reason)
local out, hash = serial.output(), vm.state_hash()
local written = virtio.disk_read("blk", 2 * 4096, 4096)
assert(written ~= before, "round 2 wrote its block")
s:restore{{verify = true}}
assert(virtio.disk_read("blk", 2 * 4096, 4096) == before, "the overlay is rolled back")
vm.run{{}}
assert(serial.output() == out and vm.state_hash() == hash, "the rerun ends the same")
print("ok")
"#,
        disk.to_str().unwrap()
    );
    let path = d.path().join("roll.lua");
    std::fs::write(&path, script).unwrap();
    let run = lunavm(&["run", path.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.ends_with("ok\n"), "{}", run.stdout);
}

#[test]
fn bad_disk_images_are_refused_clearly() {
    require_kvm();
    let (d, odd) = temp_file("odd.img", &[0u8; 1000]);
    let missing = d.path().join("missing.img");
    let run = lunavm(&["run", "--guest", "virtio", "--disk", odd.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let run2 = lunavm(&[
        "run",
        "--guest",
        "virtio",
        "--disk",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(run2.code, Some(2), "{}", run2.stderr);
    let run3 = lunavm(&["run", "--guest", "virtio", "--disk", "x.img,ro"]);
    assert_eq!(run3.code, Some(2), "{}", run3.stderr);
    insta::assert_snapshot!(
        "virtio_bad_disks",
        scrub(
            &format!("{}---\n{}---\n{}", run.stderr, run2.stderr, run3.stderr),
            d.path()
        )
    );
}

#[test]
fn pcap_captures_frames_with_virtual_time_stamps() {
    let (d, _) = temp_file("unused", b"");
    let capture = |name: &str| {
        let path = d.path().join(name);
        let (run, _) = run_virtio(&[
            "--net",
            "--pcap",
            path.to_str().unwrap(),
            "--cmdline",
            "frames=3",
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        std::fs::read(&path).unwrap()
    };
    let a = capture("a.pcap");
    assert_eq!(a[0..4], 0xa1b2_3c4du32.to_le_bytes(), "nanosecond pcap");
    assert_eq!(a[20..24], 1u32.to_le_bytes(), "Ethernet");
    // Three records of 14 + "lunavm frame N" bytes.
    let mut at = 24;
    for n in 0..3 {
        let len = u32::from_le_bytes(a[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &a[at + 16..at + 16 + len];
        assert_eq!(&frame[14..], format!("lunavm frame {n}").as_bytes());
        at += 16 + len;
    }
    assert_eq!(at, a.len());
    assert_eq!(capture("b.pcap"), a, "two runs write the same capture");
}
