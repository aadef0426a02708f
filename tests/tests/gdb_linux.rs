//! gdb on the Linux test-suite kernel (scripts/linux): the real gdb, in batch
//! mode, loads the kernel's vmlinux (DWARF debug info, frame pointers, no
//! KASLR) and debugs the kernel by function and variable names.
//!
//! One boot serves the whole test: the first session starts at the kernel's
//! first instruction (`lunavm run --kernel bzImage --gdb`), breaks on
//! `start_kernel` (a software breakpoint at an address the decompressor has
//! not mapped yet) and on `load_elf_binary` (the exec of /init, the end of the
//! boot), steps, prints and finishes there, and saves the machine with
//! `monitor lua`; the second session restores that snapshot file in a new
//! process (`lunavm run --restore FILE --gdb`: in gdb in about a second) and
//! follows a timer tick and a write watchpoint on `jiffies`.
//!
//! The kernel, its initramfs and vmlinux come from `scripts/linux/build-kernel.sh`
//! and `build-initramfs.sh` (cached per machine; `scripts/test` builds them):
//! missing files fail the test, as a missing /dev/kvm does.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{lunavm_bin, require_kvm};

/// Wall-clock limit of each step. A boot takes 25-40 s on the project's
/// software-nested KVM (over a minute while other work shares the machine).
const LIMIT: Duration = Duration::from_secs(600);

/// The deterministic platform's command line (`linux.CMDLINE` in
/// scripts/lib/linux.lua); lunavm puts `nokaslr` in front.
const CMDLINE: &str = "console=ttyS0 nolapic noapic tsc=unstable panic=-1";

/// The test kernel's files.
struct LinuxFiles {
    bzimage: PathBuf,
    vmlinux: PathBuf,
    system_map: PathBuf,
    initramfs: PathBuf,
}

/// Where scripts/linux leaves its output, as `linux.out_dir()` finds it:
/// `$LUNAVM_LINUX_DIR`, else `$LUNAVM_CACHE/linux/out`, else
/// `~/.cache/lunavm/linux/out`. Fails when a file is missing.
fn linux_files() -> LinuxFiles {
    let nonempty = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let out = nonempty("LUNAVM_LINUX_DIR").map_or_else(
        || {
            let cache = nonempty("LUNAVM_CACHE").map_or_else(
                || PathBuf::from(nonempty("HOME").unwrap_or_default()).join(".cache/lunavm"),
                PathBuf::from,
            );
            cache.join("linux/out")
        },
        PathBuf::from,
    );
    let files = LinuxFiles {
        bzimage: out.join("lunavm/bzImage"),
        vmlinux: out.join("lunavm/vmlinux"),
        system_map: out.join("lunavm/System.map"),
        initramfs: out.join("initramfs-idle.cpio"),
    };
    for f in [
        &files.bzimage,
        &files.vmlinux,
        &files.system_map,
        &files.initramfs,
    ] {
        assert!(
            f.exists(),
            "\n\n*** The Linux test kernel is missing ({}): run scripts/linux/build-kernel.sh and ***\n\
             *** scripts/linux/build-initramfs.sh (scripts/test does), or set LUNAVM_LINUX_DIR.  ***\n",
            f.display()
        );
    }
    files
}

/// The addresses of `names` in a System.map (a name also matches the
/// compiler's clones of the function, `tick_periodic.constprop.0`).
fn symbols(system_map: &Path, names: &[&str]) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(system_map).expect("System.map is readable");
    let mut found = HashMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let base = name.split('.').next().unwrap_or(name);
        if names.contains(&base) {
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                found.insert(base.to_string(), a);
            }
        }
    }
    for n in names {
        assert!(found.contains_key(*n), "no symbol {n} in System.map");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound, then released for lunavm to take).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Kills `child` when dropped (a failed assertion never leaves it running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `lunavm run ... --gdb`, its stderr lines arriving on a channel.
struct Server {
    /// The process, killed when the server is dropped.
    _child: Reaped,
    lines: mpsc::Receiver<String>,
    seen: String,
}

impl Server {
    /// Starts `lunavm run ARGS --gdb 127.0.0.1:PORT` and waits until it listens.
    fn start(args: &[&str], port: u16) -> Server {
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(lunavm_bin())
            .arg("run")
            .args(args)
            .args(["--gdb", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lunavm starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            _child: Reaped(child),
            lines,
            seen: String::new(),
        };
        server.wait_for_line("waiting for gdb on");
        server
    }

    /// Waits (up to LIMIT) for a stderr line containing `text`.
    fn wait_for_line(&mut self, text: &str) {
        let start = Instant::now();
        while let Some(left) = LIMIT.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if line.contains(text) {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("lunavm never printed {text:?}; stderr:\n{}", self.seen);
    }
}

/// Runs gdb in batch mode on `elf` with `-ex` commands (an error in one does
/// not stop the next), killed after LIMIT. Returns the transcript (stdout,
/// then stderr).
fn run_gdb(elf: &Path, commands: &[String]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx"]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let mut child = cmd
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb starts (is /usr/bin/gdb installed?)");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut child = Reaped(child);
    let start = Instant::now();
    while child.0.try_wait().expect("wait for gdb").is_none() {
        assert!(
            start.elapsed() < LIMIT,
            "gdb did not finish within {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut transcript = t_out.join().unwrap_or_default();
    transcript.push_str(&t_err.join().unwrap_or_default());
    transcript
}

/// gdb settings that keep transcripts independent of where the kernel's
/// sources are: file names without directories, and stops without the
/// source line.
fn preamble(port: u16) -> Vec<String> {
    vec![
        "set filename-display basename".to_string(),
        "set print frame-info location".into(),
        "set pagination off".into(),
        format!("target remote 127.0.0.1:{port}"),
    ]
}

/// The values in `transcript` printed after `prefix` (e.g. "Old value = ").
fn numbers_after(transcript: &str, prefix: &str) -> Vec<u64> {
    transcript
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Pins a transcript with what changes with the kernel build normalised:
/// addresses and pointers (`[ADDR]`), offsets into functions (`+[OFF]`),
/// line numbers (`[LINE]`), `jiffies` values and the kernel's version.
fn assert_transcript(name: &str, transcript: &str) {
    insta::with_settings!({
        filters => vec![
            (r"\b0x[0-9a-f]{7,16}\b", "[ADDR]"),
            (r"<([A-Za-z_][\w.]*)\+\d+>", "<$1+[OFF]>"),
            (r"\.([chS]):\d+", ".$1:[LINE]"),
            (r"line \d+\.", "line [LINE]."),
            (r"(Old|New) value = \d+", "$1 value = [JIFFIES]"),
            (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
            // The kernel's version (Debian's linux-source-6.1 updates).
            (r"\b6\.1\.\d+-lunavm", "6.1.[N]-lunavm"),
        ],
    }, {
        insta::assert_snapshot!(name, transcript);
    });
}

#[test]
fn gdb_debugs_the_linux_test_kernel() {
    require_kvm();
    let files = linux_files();
    let syms = symbols(
        &files.system_map,
        &[
            "start_kernel",
            "load_elf_binary",
            "tick_periodic",
            "do_timer",
        ],
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let snap = dir.path().join("exec.snap");
    let snap_s = snap.to_str().expect("utf-8 path");
    let vmlinux = &files.vmlinux;

    // Session 1: from the first instruction to the exec of /init.
    let port = free_port();
    let mut server = Server::start(
        &[
            "--kernel",
            files.bzimage.to_str().expect("utf-8 path"),
            "--module",
            files.initramfs.to_str().expect("utf-8 path"),
            "--mem",
            "256M",
            "--cmdline",
            CMDLINE,
            "--max-time",
            "3s",
        ],
        port,
    );
    let mut commands = preamble(port);
    commands.extend(
        [
            // The decompressor runs: start_kernel is not mapped yet, so the
            // breakpoint takes a debug register.
            "break start_kernel",
            "continue",
            "bt",
            "break load_elf_binary",
            "continue",
            "bt",
            "print bprm->filename",
            "print current_task->comm",
            "print current_task->pid",
            "next",
            "step",
            "stepi",
            "info registers rip",
            "finish",
            "print init_uts_ns.name.release",
        ]
        .map(String::from),
    );
    commands.push(format!(
        "monitor lua snapshot.save(snapshot.take(), \"{snap_s}\") print(\"saved\")"
    ));
    commands.extend(["delete", "detach"].map(String::from));
    let t1 = Instant::now();
    let transcript = run_gdb(vmlinux, &commands);
    let boot_wall = t1.elapsed();
    server.wait_for_line("gdb detached; running on");
    drop(server);

    // What the normalised snapshot cannot show: the breakpoints are at the
    // System.map's addresses, the stops are where they should be.
    for (n, name) in [(1, "start_kernel"), (2, "load_elf_binary")] {
        let addr = syms[name];
        assert!(
            transcript.contains(&format!("Breakpoint {n} at {addr:#x}: file ")),
            "breakpoint {n} on {name} at {addr:#x}:\n{transcript}"
        );
        assert!(
            transcript.contains(&format!("\nBreakpoint {n}, {name} (")),
            "stopped at {name}:\n{transcript}"
        );
    }
    assert!(
        transcript.contains(" \"/init\"\n"),
        "bprm->filename:\n{transcript}"
    );
    assert!(transcript.contains("$3 = 1\n"), "pid 1:\n{transcript}");
    assert!(
        transcript.contains("<load_elf_binary+"),
        "stepped inside load_elf_binary:\n{transcript}"
    );
    assert!(
        transcript.contains("Value returned is $4 = 0"),
        "load_elf_binary returned 0:\n{transcript}"
    );
    assert!(
        !transcript.contains("Cannot insert"),
        "no errors:\n{transcript}"
    );
    assert!(snap.exists(), "monitor lua saved the snapshot");
    assert_transcript("gdb_linux_boot", &transcript);

    // Session 2: the snapshot in a new process, a timer tick and a watchpoint.
    let port = free_port();
    let mut server = Server::start(&["--restore", snap_s, "--max-time", "3s"], port);
    let mut commands = preamble(port);
    commands.extend(
        [
            "info registers rip",
            "break tick_periodic",
            "continue",
            "bt 4",
            "set $j = jiffies",
            "watch jiffies",
            "continue",
            "print jiffies - $j",
            "delete",
            "hbreak do_timer",
            "continue",
            "print ticks",
            "finish",
            "print jiffies - $j",
            "delete",
            "detach",
        ]
        .map(String::from),
    );
    let t2 = Instant::now();
    let transcript = run_gdb(vmlinux, &commands);
    let restore_wall = t2.elapsed();
    server.wait_for_line("gdb detached; running on");
    drop(server);

    assert!(
        transcript.contains(&format!(
            "Breakpoint 1 at {:#x}: file ",
            syms["tick_periodic"]
        )),
        "tick_periodic breakpoint:\n{transcript}"
    );
    assert!(
        transcript.contains(&format!(
            "Hardware assisted breakpoint 3 at {:#x}: file ",
            syms["do_timer"]
        )),
        "do_timer hbreak:\n{transcript}"
    );
    // The watchpoint saw one tick: jiffies went up by one, twice over.
    let old = numbers_after(&transcript, "Old value = ");
    let new = numbers_after(&transcript, "New value = ");
    assert_eq!(old.len(), 1, "one watchpoint hit:\n{transcript}");
    assert_eq!(new, vec![old[0] + 1], "jiffies + 1:\n{transcript}");
    assert!(transcript.contains("$1 = 1\n"), "one tick:\n{transcript}");
    assert!(transcript.contains("$3 = 2\n"), "two ticks:\n{transcript}");
    assert!(
        !transcript.contains("Cannot insert"),
        "no errors:\n{transcript}"
    );
    assert_transcript("gdb_linux_restored", &transcript);
    eprintln!(
        "gdb on Linux: boot session {:.1} s, restored session {:.1} s",
        boot_wall.as_secs_f64(),
        restore_wall.as_secs_f64()
    );
}
