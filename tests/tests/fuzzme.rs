//! The `fuzzme` demonstration guest: each planted bug really triggers, through
//! both packet sources, and `fuzzme_cov` reports its coverage map and
//! comparisons. The packets are the ones documented at the top of
//! harness/guests/guests/fuzzme.c; a Lua script (tests/fixtures/fuzzme/packet.lua)
//! delivers them.

mod common;

use common::{lunavm, require_kvm};
use object::{Object, ObjectSymbol};
use std::path::PathBuf;

/// A benign SET: register 3 = 0x1122334455667788.
const BENIGN: &str = "4c554e4101000c0000000000030000008877665544332211";
/// Bug 1: a payload length (0xffff) beyond the packet.
const BUG1: &str = "4c554e410100ffff00000000";
/// Bug 2: SET of register 8, one past the end, over the stats pointer.
const BUG2: &str = "4c554e4101000c0000000000080000004141414141414141";
/// Bug 3: CTRL "RS" (reset) with a valid FNV-1a checksum.
const BUG3: &str = "4c554e410200020012e6046e5253";

/// FNV-1a (32-bit), the packet checksum.
fn fnv(p: &[u8]) -> u32 {
    p.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/fuzzme/packet.lua")
        .display()
        .to_string()
}

/// Address and size of `sym` in the built-in guest `guest`.
fn symbol(guest: &str, sym: &str) -> (u64, u64) {
    let elf = lunavm::guests::find(guest).expect("built-in guest").elf;
    let file = object::File::parse(elf).expect("guest ELF");
    let s = file
        .symbols()
        .find(|s| s.name() == Ok(sym))
        .unwrap_or_else(|| panic!("{guest} has no symbol {sym}"));
    (s.address(), s.size())
}

/// Delivers `hex` to `guest` through `src` ("port" or "buffer") and returns
/// the script's output: stop reason, ucalls, coverage, serial.
fn deliver(guest: &str, src: &str, hex: &str) -> String {
    require_kvm();
    let (len_addr, _) = symbol(guest, "lunavm_fuzz_input_len");
    let len_addr = format!("{len_addr:#x}");
    let run = lunavm(&["run", &script(), guest, src, hex, &len_addr]);
    assert_eq!(
        run.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// The ucall lines of an output, by command.
fn ucalls<'a>(out: &'a str, cmd: &str) -> Vec<&'a str> {
    let prefix = format!("ucall {cmd}");
    out.lines().filter(|l| l.starts_with(&prefix)).collect()
}

/// What the snapshots pin: the stop line and the serial output, without
/// the ucall lines (buffer addresses, checked by the tests) and with the
/// exception's RIP replaced (checked separately), so a change elsewhere in
/// the guest does not churn them.
fn pinned(out: &str) -> String {
    out.lines()
        .filter(|l| !l.starts_with("ucall "))
        .map(|l| match l.split_once("rip=0x") {
            Some((head, _)) => format!("{head}rip=[RIP]\n"),
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn packets_are_well_formed() {
    // The constants above, decoded: lengths and checksum as fuzzme.c says.
    let bytes = |h: &str| -> Vec<u8> {
        (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    };
    for h in [BENIGN, BUG1, BUG2, BUG3] {
        assert_eq!(h.len() % 2, 0, "{h}");
        assert_eq!(&bytes(h)[..4], b"LUNA");
    }
    assert_eq!(bytes(BENIGN).len(), 12 + 12);
    assert_eq!(bytes(BUG2).len(), 12 + 12);
    let b3 = bytes(BUG3);
    assert_eq!(b3.len(), 14);
    assert_eq!(
        u32::from_le_bytes(b3[8..12].try_into().unwrap()),
        fnv(&b3[12..])
    );
}

#[test]
fn benign_packet_finishes_with_done_0() {
    for src in ["port", "buffer"] {
        let out = deliver("fuzzme", src, BENIGN);
        assert!(out.starts_with("stop: done 0x0\n"), "{src}:\n{out}");
        assert!(
            out.contains("fuzzme: reg 3 = 0x1122334455667788\n"),
            "{out}"
        );
        let fp = ucalls(&out, "FUZZ_POINT");
        assert_eq!(fp.len(), 1, "{out}");
        let cap = if src == "port" { "0x400" } else { "0x1000" };
        assert!(fp[0].ends_with(&format!(" {cap}")), "{}", fp[0]);
        insta::assert_snapshot!(format!("benign_{src}"), pinned(&out));
    }
}

#[test]
fn bug1_panics_with_0x66() {
    let (panic_addr, _) = symbol("fuzzme", "fuzzme_panic");
    assert_ne!(panic_addr, 0);
    for src in ["port", "buffer"] {
        let out = deliver("fuzzme", src, BUG1);
        assert!(out.starts_with("stop: exit 0x66\n"), "{src}:\n{out}");
        assert!(
            out.ends_with("fuzzme panic: payload length beyond the packet\n"),
            "{out}"
        );
    }
    insta::assert_snapshot!("bug1", pinned(&deliver("fuzzme", "buffer", BUG1)));
}

#[test]
fn bug2_corrupts_a_pointer_and_raises_gp_in_the_driver() {
    let (parse, parse_size) = symbol("fuzzme", "parse");
    for src in ["port", "buffer"] {
        let out = deliver("fuzzme", src, BUG2);
        assert!(out.starts_with("stop: exit 0x7d\n"), "{src}:\n{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("lunavm: unexpected exception 13 (#GP)"))
            .unwrap_or_else(|| panic!("no #GP line:\n{out}"));
        let rip = line.split("rip=0x").nth(1).expect("rip");
        let rip = u64::from_str_radix(rip.trim(), 16).expect("hex rip");
        assert!(
            (parse..parse + parse_size).contains(&rip),
            "#GP at {rip:#x}, outside parse {parse:#x}+{parse_size:#x}"
        );
    }
    insta::assert_snapshot!("bug2", pinned(&deliver("fuzzme", "buffer", BUG2)));
}

#[test]
fn bug3_triple_faults() {
    for src in ["port", "buffer"] {
        let out = deliver("fuzzme", src, BUG3);
        assert!(out.starts_with("stop: shutdown\n"), "{src}:\n{out}");
        assert!(out.ends_with("fuzzme: reset requested\n"), "{out}");
    }
    // One checksum byte off: rejected, no reset.
    let bad = BUG3.replace("12e6046e", "12e6046f");
    let out = deliver("fuzzme", "buffer", &bad);
    assert!(out.starts_with("stop: done 0x0\n"), "{out}");
    assert!(out.contains("fuzzme: rejected: bad checksum\n"), "{out}");
    insta::assert_snapshot!("bug3", pinned(&deliver("fuzzme", "buffer", BUG3)));
}

#[test]
fn fuzzme_cov_reports_its_map_and_comparisons() {
    let (map, map_size) = symbol("fuzzme_cov", "lunavm_sancov_map");
    // A packet with the wrong magic: the compare with "LUNA" is reported.
    let out = deliver("fuzzme_cov", "buffer", "585858580100000000000000");
    assert!(out.starts_with("stop: done 0x0\n"), "{out}");
    let cov = ucalls(&out, "COV_MAP");
    assert_eq!(
        cov,
        [format!("ucall COV_MAP {map:#x} {map_size:#x}")],
        "{out}"
    );
    assert_eq!(map_size, 8192);
    let cmps = ucalls(&out, "CMP");
    assert!(
        cmps.iter()
            .any(|l| l.starts_with("ucall CMP 0x414e554c 0x58585858 0x4 ")),
        "{out}"
    );
    // Only comparisons of 2 bytes or more, with differing operands.
    for l in &cmps {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 6, "{l}");
        assert_ne!(f[2], f[3], "{l}");
        assert!(["0x2", "0x4", "0x8"].contains(&f[4]), "{l}");
    }
    // COV_MAP comes before the fuzz point.
    let pos = |p: &str| out.find(p).unwrap();
    assert!(pos("ucall COV_MAP") < pos("ucall FUZZ_POINT"));

    // A bad checksum: the computed and the received value are compared.
    let bad = BUG3.replace("12e6046e", "00000000");
    let out_csum = deliver("fuzzme_cov", "buffer", &bad);
    assert!(
        ucalls(&out_csum, "CMP")
            .iter()
            .any(|l| l.contains(" 0x6e04e612 ") && l.contains(" 0x0 ")),
        "{out_csum}"
    );

    // A CTRL op matching no case: the switch reports the nearest cases,
    // ping (0x4750) below and reset (0x5352) above the operand 0x5000.
    let ctrl = format!(
        "4c554e4102000200{:08x}0050",
        fnv(&[0x00, 0x50]).swap_bytes()
    );
    let out = deliver("fuzzme_cov", "buffer", &ctrl);
    assert!(out.contains("fuzzme: rejected: unknown CTRL op\n"), "{out}");
    let switch = ucalls(&out, "CMP");
    assert!(
        switch
            .iter()
            .any(|l| l.starts_with("ucall CMP 0x4750 0x5000 ")),
        "{out}"
    );
    assert!(
        switch
            .iter()
            .any(|l| l.starts_with("ucall CMP 0x5352 0x5000 ")),
        "{out}"
    );

    // A long CTRL payload: the checksum loop's compare is reported twice,
    // not until the budget is gone, so the checksum compare still arrives.
    let payload: Vec<u8> = (0..200u8).collect();
    let long = format!(
        "4c554e410200c80000000000{}",
        payload
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let out = deliver("fuzzme_cov", "buffer", &long);
    let cmps = ucalls(&out, "CMP");
    assert!(cmps.len() <= 64, "{out}");
    let mut per_pc = std::collections::HashMap::new();
    for l in &cmps {
        *per_pc.entry(l.rsplit(' ').next().unwrap()).or_insert(0) += 1;
    }
    assert!(per_pc.values().all(|&n| n <= 2), "{per_pc:?}");
    let want = format!(" {:#x} ", fnv(&payload));
    assert!(
        cmps.iter()
            .any(|l| l.contains(&want) && l.contains(" 0x0 ")),
        "no checksum compare ({want}):\n{out}"
    );

    // Deeper packets cover more blocks; the map holds this packet's blocks
    // only (the guest clears it at the fuzz point).
    let covered = |out: &str| -> u32 {
        out.lines()
            .find_map(|l| l.strip_prefix("covered: "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no coverage line:\n{out}"))
    };
    let shallow = covered(&deliver("fuzzme_cov", "buffer", "00"));
    let deep = covered(&deliver("fuzzme_cov", "buffer", BENIGN));
    assert!(shallow > 0 && deep > shallow, "{shallow} vs {deep}");

    // The bugs are the same bugs in the instrumented build.
    assert!(deliver("fuzzme_cov", "port", BUG1).starts_with("stop: exit 0x66\n"));
    assert!(deliver("fuzzme_cov", "port", BUG2).starts_with("stop: exit 0x7d\n"));
    assert!(deliver("fuzzme_cov", "port", BUG3).starts_with("stop: shutdown\n"));
}

#[test]
fn without_a_packet_device_the_guest_finishes() {
    require_kvm();
    let run = lunavm(&["run", "--guest", "fuzzme"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("fuzzme: no packet device at 0x5f0\n"),
        "{}",
        run.stdout
    );
    let run = lunavm(&["run", "--guest", "fuzzme", "--cmdline", "src=disk"]);
    assert_eq!(run.code, Some(0x5f), "{}", run.stderr);
}
