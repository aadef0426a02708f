//! Bad input gets a clear error and exit status 2 (or 3 for the host), never a
//! panic: malformed kernels, missing files, bad options, no KVM.

mod common;

use common::{guest_elf, lunavm, lunavm_env, scrub, temp_file};
use std::time::Duration;

/// Runs a kernel file and returns (exit code, first stderr line with the temp
/// path scrubbed).
fn run_kernel(name: &str, bytes: &[u8]) -> (Option<i32>, String) {
    let (dir, path) = temp_file(name, bytes);
    let run = lunavm(&["run", "--kernel", path.to_str().unwrap()]);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    (run.code, scrub(&run.stderr, dir.path()))
}

/// The end of a patched segment depends on the guest's size: redact it.
fn segment_end() -> Vec<(&'static str, &'static str)> {
    vec![(r"\.\.0x[0-9a-f]+ is outside", "..[END] is outside")]
}

/// Patches the p_paddr of the first PT_LOAD of an ELF64 image.
fn with_first_load_at(mut elf: Vec<u8>, paddr: u64) -> Vec<u8> {
    let phoff = usize::try_from(u64::from_le_bytes(elf[32..40].try_into().unwrap())).unwrap();
    let phentsize = usize::from(u16::from_le_bytes(elf[54..56].try_into().unwrap()));
    let phnum = usize::from(u16::from_le_bytes(elf[56..58].try_into().unwrap()));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1 {
            elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            return elf;
        }
    }
    panic!("no PT_LOAD");
}

#[test]
fn empty_kernel() {
    let (code, err) = run_kernel("empty.elf", b"");
    assert_eq!(code, Some(2));
    insta::assert_snapshot!("empty_kernel", err);
}

#[test]
fn garbage_kernel() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let (code, err) = run_kernel("garbage.bin", &garbage);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!("garbage_kernel", err);
}

#[test]
fn truncated_kernels() {
    let elf = guest_elf("hello");
    let (code, err) = run_kernel("header-only.elf", &elf[..40]);
    assert_eq!(code, Some(2));
    insta::assert_snapshot!("truncated_header", err);
    let (code, err) = run_kernel("half.elf", &elf[..elf.len() / 8]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("truncated") || err.contains("Malformed"),
        "{err}"
    );
}

#[test]
fn segment_far_outside_ram() {
    let elf = with_first_load_at(guest_elf("hello"), 0x40_0000_0000);
    let (code, err) = run_kernel("far.elf", &elf);
    assert_eq!(code, Some(2));
    insta::with_settings!({ filters => segment_end() }, {
        insta::assert_snapshot!("segment_outside_ram", err);
    });
}

#[test]
fn segment_over_the_boot_area() {
    let elf = with_first_load_at(guest_elf("hello"), 0x6000);
    let (code, err) = run_kernel("low.elf", &elf);
    assert_eq!(code, Some(2));
    insta::with_settings!({ filters => segment_end() }, {
        insta::assert_snapshot!("segment_over_boot_area", err);
    });
}

#[test]
fn bad_multiboot_checksum() {
    let mut elf = guest_elf("mb_hello");
    let at = elf
        .windows(4)
        .position(|w| w == 0x1bad_b002u32.to_le_bytes())
        .expect("multiboot header");
    elf[at + 8] ^= 0xff;
    let (code, err) = run_kernel("badsum.elf", &elf);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad checksum"), "{err}");
}

#[test]
fn missing_kernel_file_and_unknown_guest() {
    let run = lunavm(&["run", "--kernel", "/nonexistent/kernel.elf"]);
    assert_eq!(run.code, Some(2));
    insta::assert_snapshot!("missing_kernel", run.stderr);
    let run = lunavm(&["run", "--guest", "nope"]);
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("lunavm guests"), "{}", run.stderr);
}

#[test]
fn bad_options() {
    for args in [
        &["run", "--cpu", "skylake"][..],
        &["run", "--mem", "1000"],
        &["run", "--max-time", "5 fortnights"],
        &["run", "--no-complete=bogus"],
        &["run", "--guest", "hello", "--kernel", "x"],
    ] {
        let run = lunavm(args);
        assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
}

#[test]
fn missing_kvm_device_says_how_to_fix_it() {
    let run = lunavm_env(
        &["run"],
        &[("LUNAVM_KVM_DEVICE", "/nonexistent/kvm")],
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(3));
    insta::assert_snapshot!("kvm_missing", run.stderr);
}
