//! virtio benchmark: `cargo bench -p lunavm --bench virtio [-- --quick]`.
//!
//! The built-in `virtio` guest, one ELF file, booted by the `lunavm` binary
//! and by QEMU (microvm, virtio-mmio devices with
//! `-global virtio-mmio.force-legacy=off`, KVM) in the same run:
//!
//! - blk: 4 KiB writes and reads (`only=blk rounds=N verify=0`: each round
//!   writes 4 KiB and reads it back, polling, no guest-side copying), as
//!   operations per second = 2N / (t(N) - t(0)), so boot and exit cancel out.
//! - net: round trips per second (`netecho=N`: a frame out, the same frame
//!   back). lunavm reflects frames from a Lua hook on the transmit queue
//!   (`hook.virtio`, `virtio.recv`, `virtio.send`): a script in the loop, as
//!   users drive the card. QEMU reflects them with a UDP socket netdev sent
//!   to itself. Rate = N / (t(N) - t(0)).
//!
//! Each VMM announces its own slots with `virtio_mmio.device=` entries of the
//! same form (lunavm appends them; QEMU's are given explicitly, with
//! `auto-kernel-cmdline=off`, at the addresses microvm uses), and the guest
//! finds its devices from them. Prints medians, IQR and the lunavm/QEMU
//! ratios with the machine, and writes `target/bench-virtio.json`.
//!
//! Options after `--`: `--quick`, `--count N`, `--reps N`, `--json PATH`.

#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{lunavm_binary, machine_info, median_of, qemu_args, spawn_timed, Error, Stats, Table};
use serde_json::json;

/// The Lua scenario that reflects every frame the guest sends.
const ECHO_LUA: &str = r#"
local guest_elf, cmdline = arg[1], arg[2]
vm.boot{kernel = guest_elf, net = true, cmdline = "only=net frames=0 " .. cmdline}
hook.virtio{dev = "net", fn = function()
  local f = virtio.recv("net")
  while f do
    virtio.send("net", f)
    f = virtio.recv("net")
  end
end}
local ev = vm.run{}
io.write(serial.output())
os.exit(ev.status or 1)
"#;

/// QEMU microvm's first virtio-mmio slots (512 bytes each, counting down
/// from 0xfeb00e00, IRQs from 12 down), as it announces them itself.
const QEMU_BLK_SLOT: &str = "virtio_mmio.device=512@0xfeb00e00:12";

struct Config {
    count: u64,
    reps: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Config, Error> {
    let mut cfg = Config {
        count: 2000,
        reps: 5,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => {
                cfg.count = 300;
                cfg.reps = 3;
            }
            "--count" => cfg.count = args.next().ok_or("--count N")?.parse()?,
            "--reps" => cfg.reps = args.next().ok_or("--reps N")?.parse()?,
            "--json" => cfg.json = Some(args.next().ok_or("--json PATH")?.into()),
            "--help" | "-h" => {
                println!("usage: cargo bench -p lunavm --bench virtio [-- [--quick] [--count N] [--reps N] [--json PATH]]");
                std::process::exit(0);
            }
            _ => {} // cargo's and libtest's own arguments
        }
    }
    Ok(cfg)
}

/// A free UDP port on the loopback interface for QEMU's reflecting netdev.
fn free_udp_port() -> Result<u16, Error> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Files {
    elf: PathBuf,
    disk: PathBuf,
    echo: PathBuf,
}

fn lunavm_blk(bin: &Path, f: &Files, n: u64) -> Result<f64, Error> {
    spawn_timed(
        Command::new(bin).args([
            "run",
            "--kernel",
            &f.elf.display().to_string(),
            "--disk",
            &f.disk.display().to_string(),
            "-q",
            "--cmdline",
            &format!("only=blk rounds={n} verify=0"),
        ]),
        0,
        "all checks passed",
    )
}

fn lunavm_net(bin: &Path, f: &Files, n: u64) -> Result<f64, Error> {
    spawn_timed(
        Command::new(bin).args([
            "run",
            &f.echo.display().to_string(),
            &f.elf.display().to_string(),
            &format!("netecho={n}"),
        ]),
        0,
        "all checks passed",
    )
}

fn qemu_blk(f: &Files, n: u64) -> Result<f64, Error> {
    let mut args = qemu_args(
        &f.elf,
        &format!("{QEMU_BLK_SLOT} only=blk rounds={n} verify=0"),
    );
    args[1] = "microvm,acpi=off,auto-kernel-cmdline=off".into();
    args.extend(
        [
            "-global",
            "virtio-mmio.force-legacy=off",
            "-drive",
            &format!(
                "id=d0,file={},format=raw,if=none,cache=unsafe",
                f.disk.display()
            ),
            "-device",
            "virtio-blk-device,drive=d0",
        ]
        .map(String::from),
    );
    spawn_timed(
        Command::new(common::QEMU).args(args),
        1,
        "all checks passed",
    )
}

fn qemu_net(f: &Files, n: u64) -> Result<f64, Error> {
    let port = free_udp_port()?;
    let mut args = qemu_args(
        &f.elf,
        &format!("{QEMU_BLK_SLOT} only=net frames=0 netecho={n}"),
    );
    args[1] = "microvm,acpi=off,auto-kernel-cmdline=off".into();
    args.extend(
        [
            "-global",
            "virtio-mmio.force-legacy=off",
            "-netdev",
            &format!("socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{port}"),
            "-device",
            "virtio-net-device,netdev=n0",
        ]
        .map(String::from),
    );
    spawn_timed(
        Command::new(common::QEMU).args(args),
        1,
        "all checks passed",
    )
}

/// Rates per second: `ops / (t - base)` for each run time `t` in ms.
fn rates(ops: f64, times: &[f64], base: f64) -> Vec<f64> {
    times.iter().map(|t| ops / ((t - base) / 1e3)).collect()
}

/// Runs `f(0)` and `f(n)` `reps` times each, interleaved; returns the rates.
fn measure(
    reps: usize,
    n: u64,
    ops: f64,
    mut f: impl FnMut(u64) -> Result<f64, Error>,
) -> Result<Stats, Error> {
    let (mut base, mut full) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        base.push(f(0)?);
        full.push(f(n)?);
    }
    Ok(Stats::of(&rates(ops, &full, median_of(&base))))
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("virtio bench: {e}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<(), Error> {
    let cfg = parse_args()?;
    let bin = lunavm_binary().ok_or("the lunavm binary was not built")?;
    let dir = std::env::temp_dir().join(format!("lunavm-bench-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let files = Files {
        elf: dir.join("virtio.elf"),
        disk: dir.join("disk.img"),
        echo: dir.join("echo.lua"),
    };
    let guest = lunavm::guests::find("virtio").ok_or("no built-in guest 'virtio'")?;
    std::fs::write(&files.elf, guest.elf)?;
    std::fs::write(&files.disk, vec![0u8; 16 << 20])?;
    std::fs::write(&files.echo, ECHO_LUA)?;

    let info = machine_info();
    println!("virtio benchmark: the `virtio` guest under lunavm and QEMU");
    println!(
        "  machine: {} ({} CPUs), Linux {}",
        info["cpu_model"].as_str().unwrap_or("?"),
        info["cpus"],
        info["kernel"].as_str().unwrap_or("?")
    );
    println!("  KVM:     {}", info["kvm"].as_str().unwrap_or("?"));
    println!(
        "  QEMU:    {}",
        info["qemu"].as_str().unwrap_or("not found")
    );
    println!(
        "  {} rounds / round trips per run, {} runs each\n",
        cfg.count, cfg.reps
    );

    let n = cfg.count;
    let blk_ops = 2.0 * n as f64;
    let luna_blk = measure(cfg.reps, n, blk_ops, |k| lunavm_blk(&bin, &files, k))?;
    let qemu_blk = measure(cfg.reps, n, blk_ops, |k| qemu_blk(&files, k))?;
    let luna_net = measure(cfg.reps, n, n as f64, |k| lunavm_net(&bin, &files, k))?;
    let qemu_net = measure(cfg.reps, n, n as f64, |k| qemu_net(&files, k))?;

    let mut t = Table::new();
    t.section("virtio-blk: 4 KiB operations per second (write + read back)");
    t.row("lunavm", &luna_blk, "ops/s", 1.0, 0);
    t.row("QEMU microvm", &qemu_blk, "ops/s", 1.0, 0);
    t.section("virtio-net: round trips per second");
    t.row("lunavm (Lua hook reflects)", &luna_net, "rt/s", 1.0, 0);
    t.row(
        "QEMU microvm (UDP socket reflects)",
        &qemu_net,
        "rt/s",
        1.0,
        0,
    );
    t.print();
    let blk_ratio = luna_blk.median / qemu_blk.median;
    let net_ratio = luna_net.median / qemu_net.median;
    println!("\nratios lunavm/QEMU (medians): blk {blk_ratio:.2}, net {net_ratio:.2}");

    let report = json!({
        "machine": info,
        "count": n,
        "reps": cfg.reps,
        "blk_ops_per_s": {"lunavm": luna_blk.json("ops/s"), "qemu": qemu_blk.json("ops/s"), "ratio": blk_ratio},
        "net_round_trips_per_s": {"lunavm": luna_net.json("rt/s"), "qemu": qemu_net.json("rt/s"), "ratio": net_ratio},
    });
    let path = cfg.json.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-virtio.json")
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
