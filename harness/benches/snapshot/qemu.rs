//! (iv) QEMU's own snapshot restore of the same guest, for reference.
//!
//! QEMU 7.2's `savevm`/`loadvm` need a snapshot-capable disk, which the
//! `microvm` machine does not have, so the snapshot is a migration to a file:
//! the source runs the guest into its loop, QMP `stop`, then
//! `migrate exec:cat > FILE`. Each restore spawns a fresh QEMU with the same
//! arguments plus `-incoming defer`, and times, over QMP,
//! `migrate-incoming exec:cat FILE` up to the MIGRATION `completed` event plus
//! `cont` (the restore), apart from spawn → QMP greeting (the process start
//! that a plain `-incoming exec:cat FILE` command line would also pay). The
//! first restore is checked: 100 ms later the guest's round counter has moved
//! on from the snapshot's.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::report::{median, mem_name, Stats};
use crate::{cmdline, Config, ConfigResult, Error, Guest, MIB, QEMU};

/// A QMP connection.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path` (retrying until QEMU listens) and reads the greeting;
    /// returns when QEMU's monitor is up.
    fn connect(path: &Path, child: &mut Child) -> Result<Qmp, Error> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    if let Some(status) = child.try_wait()? {
                        return Err(format!("QEMU exited with {status} before QMP was up").into());
                    }
                    if Instant::now() > deadline {
                        return Err(format!("no QMP socket at {}: {e}", path.display()).into());
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut q = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting {greeting}").into());
        }
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err("QMP connection closed".into());
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn cmd(&mut self, execute: &str, arguments: Value) -> Result<Value, Error> {
        let msg = if arguments.is_null() {
            json!({ "execute": execute })
        } else {
            json!({ "execute": execute, "arguments": arguments })
        };
        self.writer.write_all(format!("{msg}\n").as_bytes())?;
        loop {
            let r = self.read()?;
            if let Some(ret) = r.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = r.get("error") {
                return Err(format!("QMP {execute}: {err}").into());
            }
            self.events.push(r);
        }
    }

    fn hmp(&mut self, line: &str) -> Result<String, Error> {
        let r = self.cmd("human-monitor-command", json!({ "command-line": line }))?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }

    /// Waits for the MIGRATION event with a final status.
    fn wait_migration(&mut self) -> Result<String, Error> {
        loop {
            let ev = if self.events.is_empty() {
                self.read()?
            } else {
                self.events.remove(0)
            };
            if ev.get("event").and_then(Value::as_str) == Some("MIGRATION") {
                let status = ev["data"]["status"].as_str().unwrap_or("").to_string();
                if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                    return Ok(status);
                }
            }
        }
    }

    /// The guest's u64 at physical `addr` (HMP `xp`).
    fn read_u64(&mut self, addr: u64) -> Result<u64, Error> {
        let out = self.hmp(&format!("xp /1gx {addr:#x}"))?;
        let hex = out
            .split(": ")
            .nth(1)
            .map(|s| s.trim().trim_start_matches("0x"))
            .ok_or_else(|| format!("cannot parse xp output {out:?}"))?;
        Ok(u64::from_str_radix(hex, 16)?)
    }
}

fn qemu_args(kernel: &Path, mem: u64, pages: u64, qmp: &Path) -> Vec<String> {
    [
        "-machine",
        "microvm,acpi=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("{}M", mem / MIB)])
    .chain(
        [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string()),
    )
    .chain([
        kernel.display().to_string(),
        "-append".into(),
        cmdline(pages),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ])
    .collect()
}

/// A QEMU process, killed on drop if still running.
struct QemuProc {
    child: Child,
}

impl QemuProc {
    fn spawn(args: &[String], log: &Path) -> Result<QemuProc, Error> {
        let child = Command::new(QEMU)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        Ok(QemuProc { child })
    }

    fn quit(mut self, q: &mut Qmp) -> Result<(), Error> {
        // QEMU may close the socket before answering.
        let _ = q.cmd("quit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                return Err("QEMU did not quit".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

impl Drop for QemuProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub struct QemuResult {
    /// spawn → QMP greeting (process start), ms.
    pub start_ms: Vec<f64>,
    /// migrate-incoming → MIGRATION completed, ms.
    pub load_ms: Vec<f64>,
    /// cont → running, ms.
    pub cont_ms: Vec<f64>,
    /// load + cont, ms.
    pub restore_ms: Vec<f64>,
    /// spawn → running, ms.
    pub spawn_to_running_ms: Vec<f64>,
    /// Size of the migration file.
    pub file_bytes: u64,
    /// Buffer page 0 at the snapshot (the guest's round).
    round_at_snapshot: u64,
    /// The same after the first restore and 100 ms of running.
    round_after_restore: u64,
}

impl QemuResult {
    pub fn json(&self) -> Value {
        json!({
            "restore_ms": Stats::of(&self.restore_ms).json("ms"),
            "migrate_incoming_to_completed_ms": Stats::of(&self.load_ms).json("ms"),
            "cont_ms": Stats::of(&self.cont_ms).json("ms"),
            "process_start_ms": Stats::of(&self.start_ms).json("ms"),
            "spawn_to_running_ms": Stats::of(&self.spawn_to_running_ms).json("ms"),
            "restores_per_sec_median": 1e3 / median(&self.restore_ms),
            "migration_file_bytes": self.file_bytes,
            "guest_round_at_snapshot": self.round_at_snapshot,
            "guest_round_100ms_after_restore": self.round_after_restore,
        })
    }
}

/// Boots the guest in QEMU, stops it inside its loop and migrates it to a
/// file; then restores that file `reps` times into fresh processes.
fn qemu_measure(
    cfg: &Config,
    dir: &Path,
    guest: &Guest,
    mem: u64,
    pages: u64,
) -> Result<QemuResult, Error> {
    let kernel = dir.join("dirty.elf");
    let file = dir.join(format!("snap-{}-{pages}.bin", mem / MIB));
    let log = dir.join("qemu.log");
    let src_sock = dir.join("src.sock");
    let _ = std::fs::remove_file(&src_sock);
    let mut src = QemuProc::spawn(&qemu_args(&kernel, mem, pages, &src_sock), &log)?;
    let mut q = Qmp::connect(&src_sock, &mut src.child)?;
    q.cmd("qmp_capabilities", Value::Null)?;
    // Wait until the guest is in its loop (round >= 1 in buffer page 0; the
    // .bss clear before it takes about a second here).
    let deadline = Instant::now() + Duration::from_secs(60);
    while pages > 0 && q.read_u64(guest.buffer)? == 0 {
        if Instant::now() > deadline {
            return Err("QEMU: the guest did not reach its loop within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    q.cmd("stop", Value::Null)?;
    let round_at_snapshot = q.read_u64(guest.buffer)?;
    q.cmd(
        "migrate",
        json!({ "uri": format!("exec:cat > {}", file.display()) }),
    )?;
    loop {
        let r = q.cmd("query-migrate", Value::Null)?;
        match r["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => {
                return Err(format!("QEMU: migration to a file failed: {r}").into())
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    src.quit(&mut q)?;
    let file_bytes = std::fs::metadata(&file)?.len();

    let mut r = QemuResult {
        start_ms: vec![],
        load_ms: vec![],
        cont_ms: vec![],
        restore_ms: vec![],
        spawn_to_running_ms: vec![],
        file_bytes,
        round_at_snapshot,
        round_after_restore: 0,
    };
    let dst_sock = dir.join("dst.sock");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // One untimed restore first (page cache, QEMU's binary).
    for rep in 0..=cfg.qemu_reps {
        let _ = std::fs::remove_file(&dst_sock);
        let mut args = qemu_args(&kernel, mem, pages, &dst_sock);
        args.extend(["-incoming".to_string(), "defer".to_string()]);
        let t0 = Instant::now();
        let mut dst = QemuProc::spawn(&args, &log)?;
        let mut q = Qmp::connect(&dst_sock, &mut dst.child)?;
        let t1 = Instant::now();
        q.cmd("qmp_capabilities", Value::Null)?;
        q.cmd(
            "migrate-set-capabilities",
            json!({ "capabilities": [{ "capability": "events", "state": true }] }),
        )?;
        let t2 = Instant::now();
        q.cmd(
            "migrate-incoming",
            json!({ "uri": format!("exec:cat {}", file.display()) }),
        )?;
        let status = q.wait_migration()?;
        let t3 = Instant::now();
        if status != "completed" {
            return Err(
                format!("QEMU: incoming migration {status} (see {})", log.display()).into(),
            );
        }
        q.cmd("cont", Value::Null)?;
        let t4 = Instant::now();
        let st = q.cmd("query-status", Value::Null)?;
        if st["status"].as_str() != Some("running") {
            return Err(format!("QEMU: not running after restore: {st}").into());
        }
        if rep == 1 && pages > 0 {
            // The guest went on from the snapshot's round (a fresh boot would
            // still be clearing .bss, at round 0).
            std::thread::sleep(Duration::from_millis(100));
            r.round_after_restore = q.read_u64(guest.buffer)?;
            if r.round_after_restore <= round_at_snapshot {
                return Err(format!(
                    "QEMU: buffer page 0 holds {} 100 ms after the restore, snapshot had {}",
                    r.round_after_restore, round_at_snapshot
                )
                .into());
            }
        }
        dst.quit(&mut q)?;
        if rep > 0 {
            r.start_ms.push(ms(t1 - t0));
            r.load_ms.push(ms(t3 - t2));
            r.cont_ms.push(ms(t4 - t3));
            r.restore_ms.push(ms(t4 - t2));
            r.spawn_to_running_ms.push(ms(t4 - t0));
        }
    }
    let _ = std::fs::remove_file(&file);
    Ok(r)
}

pub enum QemuStatus {
    /// Measured.
    Ran,
    /// Not measured, and why.
    Skipped(String),
}

/// Measures QEMU for each configuration in `results` (all, or only 16 dirty
/// pages unless `cfg.qemu_all`), filling in their `qemu`.
pub fn qemu_all(
    cfg: &Config,
    guest: &Guest,
    qemu_version: Option<&str>,
    results: &mut [ConfigResult],
) -> Result<QemuStatus, Error> {
    if !cfg.qemu {
        return Ok(QemuStatus::Skipped("--no-qemu given".into()));
    }
    if qemu_version.is_none() {
        return Ok(QemuStatus::Skipped(format!(
            "{QEMU} not found (install Debian's qemu-system-x86 to compare with QEMU)"
        )));
    }
    let dir = std::env::temp_dir().join(format!("lunavm-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("dirty.elf"), guest.elf)?;
    let mut status = QemuStatus::Ran;
    for r in results.iter_mut() {
        if !cfg.qemu_all && r.pages != 16 {
            continue;
        }
        eprintln!(
            "(iv) QEMU, {} RAM, {} dirty pages…",
            mem_name(r.mem),
            r.pages
        );
        match qemu_measure(cfg, &dir, guest, r.mem, r.pages) {
            Ok(q) => r.qemu = Some(q),
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
                status = QemuStatus::Skipped(format!(
                    "QEMU migration/restore did not work: {e}; QEMU said: {}",
                    log.trim()
                ));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(status)
}
