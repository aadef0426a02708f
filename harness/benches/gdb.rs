//! The gdb benchmark: `cargo bench -p lunavm --bench gdb [-- --quick]`.
//!
//! Runs the `lunavm` binary with `--gdb` on the built-in `watch` guest and
//! measures, on this machine:
//! (a) single steps per second through the remote protocol, spoken by this
//!     bench itself (`s` and its stop reply; then `s` followed by `g`, the
//!     register read gdb makes at every stop at least);
//! (b) the latency of continue-to-breakpoint: a breakpoint on `bump`, which
//!     the guest calls once per round, and `c` until the next stop, as a
//!     hardware breakpoint (`Z1`, a debug register) and as a software one
//!     (`Z0`, an `int3` lunavm must step over on every continue);
//! (c) single steps per second as the real gdb sees them: `stepi N` in
//!     `gdb -batch`, timed inside gdb (with its Python);
//! (d) the cost of `reverse-continue` against its distance, with recording
//!     on: (1) on `watch`, stop at the first `bump`, continue to the final
//!     `printf` (R rounds later, no guest exit between), then
//!     reverse-continue to the last `bump`: lunavm replays natively from the
//!     checkpoint with the breakpoint armed (R breakpoint stops) and again to
//!     land; (2) on `timer` (`k=1`: a port exit per loop iteration, no tick),
//!     stop at `guest_main`, continue to the final `printf` (W iterations and
//!     exits later), then reverse-continue to `guest_main`: lunavm replays the
//!     checkpoints (one per 1,000 exits) backwards, each natively and checked
//!     exit by exit. `monitor record` tells how many exits and single steps
//!     were replayed.
//!
//! Each figure is the median of several runs. Writes `target/bench-gdb.json`
//! as well.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use object::{Object, ObjectSymbol};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A free port on 127.0.0.1.
fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `lunavm run --guest watch --cmdline rounds=N --gdb 127.0.0.1:PORT`,
/// returned once it listens.
fn start_lunavm(rounds: u64, port: u16) -> Result<Child, Error> {
    start_guest("watch", &format!("rounds={rounds}"), port)
}

fn start_guest(guest: &str, cmdline: &str, port: u16) -> Result<Child, Error> {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lunavm"))
        .args(["run", "-q", "--guest", guest, "--cmdline", cmdline])
        .arg("--gdb")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("waiting for gdb on") => break,
            Some(Ok(_)) => {}
            _ => return Err("lunavm ended before it listened for gdb".into()),
        }
    }
    // Keep draining so lunavm never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok(child)
}

/// Connects to the server.
fn connect(port: u16) -> Result<TcpStream, Error> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A minimal remote-protocol client (acknowledgement mode, as gdb starts).
struct Rsp {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Rsp {
    /// Sends one packet and returns the reply's body.
    fn call(&mut self, body: &str) -> Result<String, Error> {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        self.s.write_all(format!("${body}#{sum:02x}").as_bytes())?;
        let reply = self.packet()?;
        self.s.write_all(b"+")?;
        Ok(reply)
    }

    /// Reads up to the next complete packet, skipping acknowledgements.
    fn packet(&mut self) -> Result<String, Error> {
        loop {
            if let Some(start) = self.buf.iter().position(|&b| b == b'$') {
                if let Some(end) = self.buf[start..].iter().position(|&b| b == b'#') {
                    let end = start + end;
                    if self.buf.len() >= end + 3 {
                        let body = String::from_utf8_lossy(&self.buf[start + 1..end]).into_owned();
                        self.buf.drain(..end + 3);
                        return Ok(body);
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Rsp {
    /// A `monitor` command; its console output.
    fn monitor(&mut self, cmd: &str) -> Result<String, Error> {
        let hex: String = cmd.bytes().map(|b| format!("{b:02x}")).collect();
        let mut reply = self.call(&format!("qRcmd,{hex}"))?;
        let mut text = String::new();
        // Console output comes as `O` packets, then `OK`.
        while let Some(out) = reply.strip_prefix('O').filter(|_| reply != "OK") {
            let bytes: Vec<u8> = (0..out.len() / 2)
                .filter_map(|i| u8::from_str_radix(out.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            text.push_str(&String::from_utf8_lossy(&bytes));
            reply = self.packet()?;
            self.s.write_all(b"+")?;
        }
        Ok(text)
    }
}

/// Connects to a fresh server on the `watch` guest.
fn session(rounds: u64) -> Result<(Child, Rsp), Error> {
    let port = free_port()?;
    let child = start_lunavm(rounds, port)?;
    let s = connect(port)?;
    let mut rsp = Rsp { s, buf: Vec::new() };
    rsp.call("qSupported:swbreak+;hwbreak+")?;
    rsp.call("?")?;
    Ok((child, rsp))
}

/// Ends a session: gdb's kill, then the guest runs to its end.
fn finish(mut child: Child, mut rsp: Rsp) -> Result<(), Error> {
    let _ = rsp.s.write_all(b"$k#6b");
    drop(rsp);
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("lunavm ended with {status}").into());
    }
    Ok(())
}

/// (a) single steps per second over the protocol, with or without `g`.
fn steps_per_second(n: u64, read_regs: bool) -> Result<f64, Error> {
    let (child, mut rsp) = session(1)?;
    let start = Instant::now();
    for _ in 0..n {
        let stop = rsp.call("s")?;
        if !stop.starts_with('T') && !stop.starts_with('S') {
            return Err(format!("unexpected reply to s: {stop}").into());
        }
        if read_regs {
            rsp.call("g")?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    finish(child, rsp)?;
    Ok(n as f64 / secs)
}

/// (b) mean latency (seconds) of `c` to a breakpoint on `bump`.
fn continue_latency(n: u64, bump: u64, kind: u8) -> Result<f64, Error> {
    let (child, mut rsp) = session(n + 1)?;
    let reply = rsp.call(&format!("Z{kind},{bump:x},1"))?;
    if reply != "OK" {
        return Err(format!("Z{kind} refused: {reply}").into());
    }
    // The first hit comes after the boot code; not timed.
    rsp.call("c")?;
    let start = Instant::now();
    for _ in 0..n {
        let stop = rsp.call("c")?;
        if !stop.starts_with("T05") {
            return Err(format!("unexpected reply to c: {stop}").into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    rsp.call(&format!("z{kind},{bump:x},1"))?;
    finish(child, rsp)?;
    Ok(secs / n as f64)
}

/// What one reverse-continue cost: seconds, exits and single steps
/// replayed.
type ReverseCost = (f64, u64, u64);

/// (d) a reverse-continue from a stop at `to` back to a breakpoint at
/// `back`, after a stop at `first` (all hardware breakpoints) in a session
/// already started.
fn reverse_continue_in(
    child: Child,
    mut rsp: Rsp,
    first: u64,
    to: u64,
    back: u64,
) -> Result<ReverseCost, Error> {
    rsp.monitor("record on")?;
    rsp.call(&format!("Z1,{first:x},1"))?;
    rsp.call("c")?;
    rsp.call(&format!("z1,{first:x},1"))?;
    rsp.call(&format!("Z1,{to:x},1"))?;
    let stop = rsp.call("c")?;
    if !stop.starts_with("T05") {
        return Err(format!("unexpected reply to c: {stop}").into());
    }
    rsp.call(&format!("z1,{to:x},1"))?;
    rsp.call(&format!("Z1,{back:x},1"))?;
    let start = Instant::now();
    let stop = rsp.call("bc")?;
    let secs = start.elapsed().as_secs_f64();
    if !stop.starts_with("T05") {
        return Err(format!("unexpected reply to bc: {stop}").into());
    }
    let status = rsp.monitor("record")?;
    let replayed = status
        .split("replayed ")
        .nth(1)
        .ok_or_else(|| format!("no replay count in {status:?}"))?;
    let number = |after: &str| -> Result<u64, Error> {
        replayed
            .split(after)
            .next()
            .and_then(|r| r.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("no count before {after:?} in {status:?}").into())
    };
    let exits = number(" exits natively")?;
    let steps = number(" single steps")?;
    rsp.call(&format!("z1,{back:x},1"))?;
    finish(child, rsp)?;
    Ok((secs, exits, steps))
}

/// (d1) over `rounds` rounds of `watch` (no exits between).
fn reverse_rounds(rounds: u64, bump: u64, printf: u64) -> Result<ReverseCost, Error> {
    let (child, rsp) = session(rounds)?;
    reverse_continue_in(child, rsp, bump, printf, bump)
}

/// (d2) over `work` iterations of `timer` with a port exit each.
fn reverse_exits(work: u64, main: u64, printf: u64) -> Result<ReverseCost, Error> {
    let port = free_port()?;
    let child = start_guest("timer", &format!("hz=19 work={work} k=1"), port)?;
    let mut rsp = Rsp {
        s: connect(port)?,
        buf: Vec::new(),
    };
    rsp.call("qSupported:swbreak+;hwbreak+")?;
    rsp.call("?")?;
    reverse_continue_in(child, rsp, main, printf, main)
}

/// (c) single steps per second of `stepi N` in `gdb -batch`, timed inside
/// gdb (its Python) from before the command to after it.
fn gdb_stepi(elf: &std::path::Path, n: u64) -> Result<f64, Error> {
    let port = free_port()?;
    let mut child = start_lunavm(1, port)?;
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set architecture i386:x86-64"])
        .args(["-ex", &format!("target remote 127.0.0.1:{port}")])
        .args(["-ex", "python import time; t0 = time.monotonic()"])
        .args(["-ex", &format!("stepi {n}")])
        .args(["-ex", "python print('ELAPSED', time.monotonic() - t0)"])
        .args(["-ex", "detach"])
        .arg(elf)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    child.wait()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ELAPSED "))
        .ok_or("gdb printed no time (does it have Python?)")?
        .trim()
        .parse()?;
    Ok(n as f64 / secs)
}

fn main() -> Result<(), Error> {
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let steps = if quick { 500 } else { 3000 };
    let conts = if quick { 50 } else { 300 };
    let gdb_steps = if quick { 200 } else { 1000 };

    let guest = lunavm::guests::find("watch").ok_or("no built-in watch guest")?;
    let file = object::File::parse(guest.elf)?;
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .ok_or_else(|| format!("no symbol {name}"))
    };
    let bump = symbol("bump")?;
    let printf = symbol("printf")?;
    let dir = std::env::temp_dir().join(format!("lunavm-bench-gdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let elf = dir.join("watch.elf");
    std::fs::write(&elf, guest.elf)?;

    let run = |what: &str, f: &mut dyn FnMut() -> Result<f64, Error>| {
        let mut v = Vec::new();
        for _ in 0..reps {
            v.push(f()?);
        }
        let m = median(v);
        eprintln!("{what}: {m:.6}");
        Ok::<f64, Error>(m)
    };
    let step = run("steps/s (s)", &mut || steps_per_second(steps, false))?;
    let step_g = run("steps/s (s + g)", &mut || steps_per_second(steps, true))?;
    let hw = run("continue-to-breakpoint, hw (s)", &mut || {
        continue_latency(conts, bump, 1)
    })?;
    let sw = run("continue-to-breakpoint, sw (s)", &mut || {
        continue_latency(conts, bump, 0)
    })?;
    let gdb_rate = run("gdb stepi steps/s", &mut || gdb_stepi(&elf, gdb_steps))?;
    let _ = std::fs::remove_dir_all(&dir);
    let timer = lunavm::guests::find("timer").ok_or("no built-in timer guest")?;
    let timer_file = object::File::parse(timer.elf)?;
    let timer_symbol = |name: &str| {
        timer_file
            .symbols()
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
            .ok_or_else(|| format!("no symbol {name} in timer"))
    };
    let (timer_main, timer_printf) = (timer_symbol("guest_main")?, timer_symbol("printf")?);
    let measure = |what: String, f: &mut dyn FnMut() -> Result<ReverseCost, Error>| {
        let mut times = Vec::new();
        let (mut exits, mut steps) = (0, 0);
        for _ in 0..reps {
            let (t, e, s) = f()?;
            times.push(t);
            (exits, steps) = (e, s);
        }
        let t = median(times);
        eprintln!("reverse-continue {what}: {t:.6} s, {exits} exits, {steps} steps replayed");
        Ok::<_, Error>((what, exits, steps, t))
    };
    let mut reverse = Vec::new();
    let rounds: &[u64] = if quick { &[10, 100] } else { &[10, 100, 1000] };
    for &r in rounds {
        reverse.push(measure(format!("over {r} rounds of watch"), &mut || {
            reverse_rounds(r, bump, printf)
        })?);
    }
    let works: &[u64] = if quick {
        &[1000, 5000]
    } else {
        &[1000, 10_000, 40_000]
    };
    for &w in works {
        reverse.push(measure(
            format!("over {w} port exits of timer"),
            &mut || reverse_exits(w, timer_main, timer_printf),
        )?);
    }

    println!("gdb benchmark ({} runs each, medians)", reps);
    println!("  single steps/s, protocol `s`:          {:>10.0}", step);
    println!("  single steps/s, protocol `s` + `g`:    {:>10.0}", step_g);
    println!(
        "  single steps/s, gdb `stepi N`:         {:>10.0}",
        gdb_rate
    );
    println!(
        "  continue to a hw breakpoint (Z1):      {:>10.1} µs",
        hw * 1e6
    );
    println!(
        "  continue to a sw breakpoint (Z0):      {:>10.1} µs",
        sw * 1e6
    );
    for (what, exits, steps, t) in &reverse {
        println!(
            "  reverse-continue {what:<30} {:>9.1} ms, {exits:>6} exits and {steps:>4} steps replayed",
            t * 1e3
        );
    }
    let report = json!({
        "reverse_continue": reverse
            .iter()
            .map(|(w, e, n, t)| json!({"distance": w, "exits_replayed": e, "steps_replayed": n, "seconds": t}))
            .collect::<Vec<_>>(),
        "steps_per_s": step,
        "steps_per_s_with_g": step_g,
        "gdb_stepi_per_s": gdb_rate,
        "continue_to_hw_breakpoint_us": hw * 1e6,
        "continue_to_sw_breakpoint_us": sw * 1e6,
        "runs": reps,
        "quick": quick,
    });
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(target, std::path::PathBuf::from)
        .join("bench-gdb.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
