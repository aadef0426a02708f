//! End-to-end tests of `lunavm run --gdb`: the real gdb, in batch mode, drives
//! built-in guests (their ELF files carry symbols).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guest_elf, lunavm_bin, require_kvm, temp_file};

/// Wall-clock limit for lunavm and gdb.
const LIMIT: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1 (bound, then released for lunavm to take).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// A running `lunavm run --gdb`, with its stderr collected on a thread.
struct Server {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Each stderr line as it comes.
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Waits (up to LIMIT) for a stderr line containing `text`.
    fn wait_for_line(&self, text: &str) {
        let start = Instant::now();
        while let Some(left) = LIMIT.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("lunavm never printed {text:?}");
    }
}

/// Starts `lunavm run ARGS --gdb 127.0.0.1:PORT` and waits until it listens.
fn start_server(args: &[&str], port: u16) -> Server {
    let addr = format!("127.0.0.1:{port}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--gdb", &addr]);
    spawn_listening(&all)
}

/// Starts `lunavm run ARGS` and waits until it listens for gdb.
fn spawn_listening(args: &[&str]) -> Server {
    let mut child = Command::new(lunavm_bin())
        .args(["run"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lunavm starts");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (lines_tx, lines) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("waiting for gdb on") {
                let _ = ready_tx.send(());
            }
            let _ = lines_tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        let _ = tx.send(all);
    });
    if ready_rx.recv_timeout(LIMIT).is_err() {
        let _ = child.kill();
        let err = rx.recv_timeout(LIMIT).unwrap_or_default();
        panic!("lunavm never listened for gdb; stderr:\n{err}");
    }
    Server {
        child,
        stderr: rx,
        lines,
    }
}

/// Waits for `child` up to LIMIT (killing it after), returning its exit code.
fn wait_limited(child: &mut Child, what: &str) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs gdb in batch mode on `elf` with `-ex` commands (an error in one does
/// not stop the next); `after_start` runs once gdb is started. Returns the
/// transcript (stdout and stderr).
fn run_gdb(elf: &std::path::Path, commands: &[String], after_start: impl FnOnce(u32)) -> String {
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
    // Collect output on threads so a chatty gdb never blocks.
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
    after_start(child.id());
    wait_limited(&mut child, "gdb");
    let mut transcript = t_out.join().unwrap_or_default();
    transcript.push_str(&t_err.join().unwrap_or_default());
    transcript
}

/// Waits for the server to end; returns (exit code, stdout, stderr).
fn finish_server(mut server: Server) -> (Option<i32>, String, String) {
    let code = wait_limited(&mut server.child, "lunavm");
    let mut stdout = String::new();
    if let Some(mut out) = server.child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let stderr = server.stderr.recv_timeout(LIMIT).unwrap_or_default();
    (code, stdout, stderr)
}

/// Pins a gdb transcript with insta, with what varies between builds of the
/// guests normalised: addresses inside the guest image (loaded at 1 MiB,
/// code, data and stack under 1 MiB long) become `[IMAGE]`, their page
/// numbers `[PAGE]`, RIP-relative displacements `[DISP]` and instruction
/// counts `[N]`; everything else (fixed
/// addresses, values) is the same on every run. The debug-register probe's
/// verdict in `monitor watches` becomes `[DR PROBE]` (it is the host's), and
/// so do the lines of `monitor userdebug` (`[HOST]`).
fn assert_transcript(name: &str, transcript: &str) {
    insta::with_settings!({
        filters => vec![
            (r"\b0x0*1[0-9a-f]{5}\b", "[IMAGE]"),
            // Instruction counts change with the compiler.
            (r"replayed \d+ exits natively and \d+ single steps", "replayed [N] exits natively and [N] single steps"),
            (r"\d+ exits recorded, \d+ KiB; at exit \d+ \((\d+ steps|steps not counted)", "[N] exits recorded, [N] KiB; at exit [N] ([N] steps"),
            (r"from \d+ checkpoint restores \(\d+ pages copied\)", "from [N] checkpoint restores ([N] pages copied)"),
            // So do the page numbers of the image's pages.
            (r"\b0x1[0-9a-f]{2}\b", "[PAGE]"),
            // And RIP-relative displacements between them.
            (r"\b0x[0-9a-f]+\(%rip\)", "[DISP](%rip)"),
            // What the startup probe measured of the host's debug registers.
            (r"data breakpoints [a-z ]+ at CPL0 and [a-z ]+ at CPL3", "[DR PROBE]"),
            // What `monitor userdebug` says depends on the host's probe.
            (r"(?m)^(host|user-mode path|taken back):? .*$", "$1 [HOST]"),
        ],
    }, {
        insta::assert_snapshot!(name, transcript);
    });
}

/// guest_main's address from the ELF's symbol table, as `nm` would print it.
fn symbol_address(elf: &[u8], name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(elf).expect("guest ELF parses");
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("no symbol {name}"))
        .address()
}

/// `len` bytes of the ELF's loaded image at virtual address `addr`.
fn code_bytes(elf: &[u8], addr: u64, len: u64) -> Vec<u8> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).expect("guest ELF parses");
    file.sections()
        .find_map(|s| s.data_range(addr, len).ok().flatten())
        .unwrap_or_else(|| panic!("no code at {addr:#x}"))
        .to_vec()
}

#[test]
fn gdb_breaks_steps_and_edits_registers_and_memory() {
    require_kvm();
    let elf = guest_elf("hello");
    let main_addr = symbol_address(&elf, "guest_main");
    let (_dir, elf_path) = temp_file("hello.elf", &elf);
    let port = free_port();
    let server = start_server(&["--guest", "hello"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        "set breakpoint auto-hw on".into(),
        format!("target remote 127.0.0.1:{port}"),
        "p/x $rip".into(),
        "hbreak guest_main".into(),
        "continue".into(),
        "p/x $rip".into(),
        "stepi".into(),
        "p/x $rip".into(),
        "set $rbx = 0x1234".into(),
        "p/x $rbx".into(),
        // An unmapped address: an error reply, the session goes on.
        "x/4xb 0xffffffff0000".into(),
        // Memory by virtual address: write below the stack, read it back.
        "set var *(unsigned long *)($rsp - 64) = 0xfeedface".into(),
        "p/x *(unsigned long *)($rsp - 64)".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    // Shown with --nocapture (and on failure).
    eprintln!("{context}");
    assert_transcript("gdb_break_step_registers_memory", &transcript);

    // Stopped at the first instruction, the PVH entry.
    assert!(transcript.contains("$1 = 0x100000"), "{context}");
    assert!(
        transcript.contains("Breakpoint 1, guest_main"),
        "breakpoint hit by name\n{context}"
    );
    assert!(
        transcript.contains(&format!("$2 = {main_addr:#x}")),
        "rip at guest_main ({main_addr:#x})\n{context}"
    );
    let after_step = transcript
        .lines()
        .find_map(|l| l.strip_prefix("$3 = 0x"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no rip after stepi\n{context}"));
    assert!(
        after_step > main_addr && after_step < main_addr + 16,
        "stepi moved rip by one instruction\n{context}"
    );
    assert!(transcript.contains("$4 = 0x1234"), "{context}");
    assert!(transcript.contains("$5 = 0xfeedface"), "{context}");
    assert!(
        transcript.contains("Cannot access memory at address 0xffffffff0000"),
        "{context}"
    );
    assert!(
        transcript.contains("exited normally"),
        "the guest ran to its end under gdb\n{context}"
    );
    assert!(stdout.contains("Hello from lunavm guest"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_ctrl_c_stops_a_guest_spinning_without_exits() {
    require_kvm();
    let (_dir, elf_path) = temp_file("spin.elf", &guest_elf("spin"));
    let port = free_port();
    let server = start_server(
        &["--guest", "spin", "--cmdline", "ticks=1000000 hz=20"],
        port,
    );
    let commands = vec![
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "continue".into(),
        "p/x $rip".into(),
        "detach".into(),
    ];
    let transcript = run_gdb(&elf_path, &commands, |pid| {
        // gdb turns SIGINT into a Ctrl-C on the wire while the guest runs.
        std::thread::sleep(Duration::from_secs(3));
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    });
    let mut server = server;
    // After the detach the guest spins on for a long time: end it.
    let _ = server.child.kill();
    let (_code, _stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stderr:\n{stderr}");
    // Where the guest was when Ctrl-C came varies: keep the rest.
    let mut pinned = String::new();
    let mut stopped = false;
    for l in transcript.lines() {
        if !stopped || l.starts_with("[Inferior") {
            pinned.push_str(l);
            pinned.push('\n');
        }
        stopped |= l.starts_with("Program received signal SIGINT");
    }
    assert_transcript("gdb_ctrl_c", &pinned);
    assert!(
        transcript.contains("Program received signal SIGINT"),
        "{context}"
    );
    assert!(transcript.contains("$1 = 0x"), "{context}");
    assert!(stderr.contains("gdb detached; running on"), "{context}");
}

#[test]
fn gdb_monitor_commands_show_state_and_restore_snapshots() {
    require_kvm();
    let elf = guest_elf("hello");
    let main_addr = symbol_address(&elf, "guest_main");
    let (_dir, elf_path) = temp_file("hello.elf", &elf);
    let port = free_port();
    let server = start_server(&["--guest", "hello"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "monitor help".into(),
        "monitor regs".into(),
        "monitor clock".into(),
        "hbreak guest_main".into(),
        "continue".into(),
        "monitor snapshot take a".into(),
        "monitor snapshot list".into(),
        "stepi".into(),
        "stepi".into(),
        "monitor snapshot restore a".into(),
        // gdb keeps its register cache across a monitor command.
        "maintenance flush register-cache".into(),
        "p/x $rip".into(),
        "monitor snapshot restore nope".into(),
        "monitor bogus".into(),
        "monitor snapshot drop a".into(),
        "monitor snapshot list".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    // Shown with --nocapture (and on failure).
    eprintln!("{context}");

    assert!(
        transcript.contains("monitor snapshot take NAME"),
        "help lists the commands\n{context}"
    );
    let has_line = |prefix: &str| transcript.lines().any(|l| l.starts_with(prefix));
    assert!(has_line("cr0 "), "regs shows cr0\n{context}");
    assert!(has_line("rip "), "regs shows rip\n{context}");
    assert!(has_line("efer "), "regs shows efer\n{context}");
    assert!(has_line("virtual time "), "clock\n{context}");
    assert!(has_line("guest exits "), "clock\n{context}");
    assert!(transcript.contains("snapshot `a` taken"), "{context}");
    assert!(
        transcript.contains("snapshot `a` restored:") && transcript.contains("pages copied"),
        "{context}"
    );
    assert!(
        transcript.contains(&format!("$1 = {main_addr:#x}")),
        "rip back at guest_main ({main_addr:#x}) after the restore\n{context}"
    );
    assert!(
        transcript
            .lines()
            .any(|l| l.starts_with("a: virtual time ")
                && l.ends_with(&format!(", rip {main_addr:#x}"))),
        "{context}"
    );
    assert!(transcript.contains("snapshot `a` dropped"), "{context}");
    assert!(transcript.contains("no snapshots"), "{context}");
    assert!(
        transcript.contains("error: no snapshot named `nope`"),
        "{context}"
    );
    assert!(
        transcript.contains("error: unknown monitor command `bogus`; try `monitor help`"),
        "{context}"
    );
    assert!(
        transcript.contains("exited normally"),
        "the guest ran to its end after the restore\n{context}"
    );
    assert!(stdout.contains("Hello from lunavm guest"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_sees_and_writes_segment_bases_and_control_registers() {
    require_kvm();
    let (_dir, elf_path) = temp_file("hello.elf", &guest_elf("hello"));
    let port = free_port();
    let server = start_server(&["--guest", "hello"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "hbreak guest_main".into(),
        "continue".into(),
        "info registers cr0".into(),
        "info registers efer".into(),
        "p/x $cr3 == $cr3".into(),
        "set $fs_base = 0x1234000".into(),
        "set $gs_base = 0x5678000".into(),
        "p/x $fs_base".into(),
        // The machine sees gdb's writes (read back through Lua, not gdb).
        "monitor lua cpu.get(\"fs_base\")".into(),
        "monitor lua cpu.get(\"gs_base\")".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_system_registers", &transcript);
    let line = |prefix: &str| {
        transcript
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}\n{context}"))
            .to_string()
    };
    let cr0 = line("cr0 ");
    assert!(
        cr0.contains(" PE ") && cr0.contains(" PG "),
        "cr0 with its flags\n{context}"
    );
    assert!(line("efer ").contains(" LMA "), "{context}");
    assert!(transcript.contains("$2 = 0x1234000"), "{context}");
    assert!(transcript.contains("19087360 (0x1234000)"), "{context}");
    assert!(transcript.contains("90669056 (0x5678000)"), "{context}");
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_monitor_lua_runs_against_the_stopped_machine() {
    require_kvm();
    let elf = guest_elf("hello");
    let main_addr = symbol_address(&elf, "guest_main");
    let (_dir, elf_path) = temp_file("hello.elf", &elf);
    let port = free_port();
    let server = start_server(&["--guest", "hello"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "hbreak guest_main".into(),
        "continue".into(),
        "monitor lua cpu.get(\"rip\")".into(),
        "monitor lua x = 41".into(),
        "monitor lua x + 1".into(),
        "monitor lua print(\"from lua\", 7) return 1, \"two\"".into(),
        // Lua changes the machine; gdb sees it once its cache is flushed.
        "monitor lua cpu.set(\"rbx\", 0xabc)".into(),
        "maintenance flush register-cache".into(),
        "p/x $rbx".into(),
        "monitor lua (".into(),
        "monitor lua error(\"boom\")".into(),
        "monitor lua".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert!(
        transcript.contains(&format!("{main_addr} ({main_addr:#x})")),
        "rip from Lua\n{context}"
    );
    assert!(transcript.contains("(no value)"), "{context}");
    assert!(transcript.contains("42 (0x2a)"), "{context}");
    assert!(
        transcript.contains("from lua\t7\n1 (0x1)\n\"two\"\n"),
        "{context}"
    );
    assert!(transcript.contains("$1 = 0xabc"), "{context}");
    assert!(transcript.contains("error: monitor lua:1:"), "{context}");
    assert!(
        transcript.contains("error: monitor lua:1: boom"),
        "{context}"
    );
    assert!(
        transcript.contains("error: usage: monitor lua CODE"),
        "{context}"
    );
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_watchpoints_fire_on_guest_kernel_writes_and_reads() {
    require_kvm();
    let (_dir, elf_path) = temp_file("watch.elf", &guest_elf("watch"));
    let port = free_port();
    // Page watches on every host (auto picks debug registers where they fire).
    let server = start_server(&["--guest", "watch", "--watch-mode", "page"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "hbreak guest_main".into(),
        "continue".into(),
        "monitor snapshot take start".into(),
        "monitor watches".into(),
        // Keep watchpoints inserted while stopped, for `monitor watches`.
        "set breakpoint always-inserted on".into(),
        "watch watched.counter".into(),
        "continue".into(),
        "monitor watches".into(),
        "continue".into(),
        "p/x watched.counter".into(),
        "delete 2".into(),
        "rwatch watched.input".into(),
        "continue".into(),
        "monitor watches".into(),
        "delete 3".into(),
        "monitor watches".into(),
        // Restoring rolls back the writes the watch completed.
        "monitor snapshot restore start".into(),
        "p/x watched.counter".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_watchpoints", &transcript);
    // Each watch names its mechanism.
    assert!(
        transcript.contains("mechanism: page watches (--watch-mode page; data breakpoints "),
        "{context}"
    );
    assert!(
        transcript.contains(" bytes at physical ") && transcript.contains("(Gdb): page watch\n"),
        "{context}"
    );
    assert!(
        transcript.contains("Hardware watchpoint 2: watched.counter"),
        "{context}"
    );
    assert!(
        transcript.contains("Old value = 0\nNew value = 17\n"),
        "first write\n{context}"
    );
    assert!(
        transcript.contains("Old value = 17\nNew value = 34\n"),
        "second write\n{context}"
    );
    // gdb stopped right after the store in bump().
    assert!(transcript.contains("bump (i="), "{context}");
    assert!(transcript.contains("$1 = 0x22"), "{context}");
    assert!(
        transcript.contains("Hardware read watchpoint 3: watched.input\n\nValue = 5"),
        "{context}"
    );
    assert!(transcript.contains("$2 = 0x0"), "restored\n{context}");
    let watched = symbol_address(&guest_elf("watch"), "watched");
    let page = watched / 4096;
    // While a write watch is set, its page is a read-only slot of its own.
    assert!(
        transcript.contains(&format!(
            "region 0 pages {page:#x}..{:#x} read-only",
            page + 1
        )),
        "{context}"
    );
    // A read watch takes the page out: the slots around it leave a gap.
    assert!(
        transcript.contains(&format!(
            "region 0 pages 0x0..{page:#x} read-write\nslot 1: region 0 pages {:#x}..",
            page + 1
        )),
        "{context}"
    );
    // With no watch left, one slot covers the region again, as at the start.
    let whole = "no watches\nslot 0: region 0 pages 0x0..0x8000 read-write\n";
    assert_eq!(transcript.matches(whole).count(), 2, "{context}");
    assert!(stdout.contains("watch: counter 0x33, sum 15"), "{context}");
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

/// The user-mode result word the `usermode` guest's CPL3 code stores CS in
/// (`mov %rax, 8(%rdi)` in um_user_plain, reached by sysretq): 0x33.
const USER_RESULT_CS: u64 = 0x80_0000_2008;

/// `watch` through a debug register, on a store made by CPL3 code. Where the
/// startup probe finds that data breakpoints fire at neither level (this
/// project's software-nested KVM: measured silent at CPL0 and CPL3, for
/// write and read/write breakpoints, stores and loads), `--watch-mode
/// debugreg` must refuse to start with a clear error instead of setting
/// watches that never fire; elsewhere gdb's watchpoint takes a debug
/// register (`monitor watches` says which) and stops after the store.
#[test]
fn gdb_watchpoint_through_a_debug_register_fires_on_a_user_mode_store() {
    require_kvm();
    let probe = lunavm::vm::dr_probe::probe();
    if !probe.cpl0.fires() && !probe.cpl3.fires() {
        let run = common::lunavm(&["run", "--guest", "usermode", "--watch-mode", "debugreg"]);
        assert_eq!(run.code, Some(3), "{}", run.stderr);
        assert!(
            run.stderr.contains(
                "--watch-mode debugreg: this host's data breakpoints do not fire \
                 (data breakpoints do not fire at CPL0 and do not fire at CPL3, measured at startup)"
            ),
            "{}",
            run.stderr
        );
        return;
    }
    assert!(probe.cpl3.fires(), "the usermode store is at CPL3: {probe}");
    let (_dir, elf_path) = temp_file("usermode.elf", &guest_elf("usermode"));
    let port = free_port();
    let server = start_server(
        &[
            "--guest",
            "usermode",
            "--cmdline",
            "only=sysret",
            "--watch-mode",
            "debugreg",
        ],
        port,
    );
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        // The user pages are mapped by then.
        "hbreak um_sysret_user".into(),
        "continue".into(),
        "set breakpoint always-inserted on".into(),
        format!("watch *(unsigned long *){USER_RESULT_CS:#x}"),
        "monitor watches".into(),
        "continue".into(),
        "p/x $cs".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert!(
        transcript.contains(&format!(
            "watch 1: Write of 8 bytes at linear {USER_RESULT_CS:#x}"
        )) && transcript.contains("(Gdb): debug register DR"),
        "{context}"
    );
    // Stopped after the store, in user mode.
    assert!(
        transcript.contains("Old value = 0\nNew value = 51\n"),
        "{context}"
    );
    assert!(transcript.contains("= 0x33"), "{context}");
    assert!(stdout.contains("usermode: sysret: ok"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

/// The first byte of function `name` in the ELF file.
fn first_code_byte(elf: &[u8], name: &str) -> u8 {
    use object::{Object, ObjectSection};
    let addr = symbol_address(elf, name);
    let file = object::File::parse(elf).expect("guest ELF parses");
    file.sections()
        .find(|s| s.address() <= addr && addr < s.address() + s.size())
        .and_then(|s| {
            let offset = usize::try_from(addr - s.address()).ok()?;
            s.data().ok()?.get(offset).copied()
        })
        .unwrap_or_else(|| panic!("no section holds {name}"))
}

#[test]
fn gdb_software_breakpoints_stop_hide_and_step_over_their_int3() {
    require_kvm();
    let elf = guest_elf("watch");
    let bump_addr = symbol_address(&elf, "bump");
    let first = first_code_byte(&elf, "bump");
    let (_dir, elf_path) = temp_file("watch.elf", &elf);
    let port = free_port();
    let server = start_server(&["--guest", "watch"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        // Keep the int3 in memory while stopped, so reads must hide it.
        "set breakpoint always-inserted on".into(),
        "break bump".into(),
        "continue".into(),
        "p/x $pc".into(),
        "x/1xb bump".into(),
        "monitor snapshot take at_bump".into(),
        "continue".into(),
        "info breakpoints".into(),
        "monitor snapshot restore at_bump".into(),
        "maintenance flush register-cache".into(),
        "p i".into(),
        "delete".into(),
        "x/1xb bump".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_software_breakpoints", &transcript);
    assert!(transcript.contains("Breakpoint 1 at "), "{context}");
    assert!(
        !transcript.contains("Hardware assisted breakpoint"),
        "a software breakpoint\n{context}"
    );
    assert!(
        transcript.contains("Breakpoint 1, bump (i=i@entry=1)"),
        "{context}"
    );
    assert!(
        transcript.contains("Breakpoint 1, bump (i=i@entry=2)"),
        "{context}"
    );
    let bp_pc = transcript
        .lines()
        .find_map(|l| l.strip_prefix("$1 = 0x"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no pc\n{context}"));
    // Stopped on the breakpoint (gdb puts it after the prologue, if any).
    assert!(bp_pc >= bump_addr && bp_pc < bump_addr + 16, "{context}");
    // The int3 is hidden from memory reads, inserted or not.
    let shown = format!("<bump>:\t{first:#04x}");
    assert_eq!(transcript.matches(&shown).count(), 2, "{shown}\n{context}");
    assert!(
        transcript.contains("breakpoint already hit 2 times"),
        "{context}"
    );
    assert!(transcript.contains("$2 = 1"), "restored to i=1\n{context}");
    // The guest ran its own code to the end: the int3s are gone.
    assert!(stdout.contains("watch: counter 0x33, sum 15"), "{context}");
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_software_breakpoints_at_unmapped_addresses_take_debug_registers() {
    require_kvm();
    let (_dir, elf_path) = temp_file("hello.elf", &guest_elf("hello"));
    let port = free_port();
    let server = start_server(&["--guest", "hello"], port);
    // Paging is off at the first instruction: addresses above RAM (and
    // below 4 GiB: the 32-bit walker) map to nothing, as a Linux kernel's
    // text does while its decompressor runs.
    // Four such breakpoints fill the debug registers; gdb cannot insert a
    // fifth, and the session goes on.
    let mut commands = vec![
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
    ];
    for i in 0..5 {
        commands.push(format!("break *{:#x}", 0xd000_0000u64 + i * 0x1000));
    }
    commands.extend(
        [
            "continue",
            "delete 5",
            "break guest_main",
            "continue",
            "info breakpoints",
            "delete",
            "continue",
        ]
        .map(String::from),
    );
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    assert_transcript("gdb_unmapped_breakpoints", &transcript);
    assert!(
        transcript.contains("Cannot insert breakpoint 5."),
        "the fifth does not fit\n{context}"
    );
    assert!(
        !transcript.contains("Cannot insert breakpoint 1."),
        "the first four fit\n{context}"
    );
    assert!(transcript.contains("Breakpoint 6, guest_main"), "{context}");
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_killed_or_sending_garbage_leaves_lunavm_waiting_for_the_next_gdb() {
    require_kvm();
    let (_dir, elf_path) = temp_file("spin.elf", &guest_elf("spin"));
    let port = free_port();
    let mut server = start_server(
        &["--guest", "spin", "--cmdline", "ticks=1000000 hz=20"],
        port,
    );
    // 1. A gdb that dies (SIGKILL) while the guest runs under `continue`.
    let first = vec![
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "continue".into(),
    ];
    let _ = run_gdb(&elf_path, &first, |pid| {
        server.wait_for_line("gdb connected");
        // Most likely running by now (if not, it dies stopped: as good).
        std::thread::sleep(Duration::from_secs(2));
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    server.wait_for_line("waiting for gdb again");

    // 2. A client that sends malformed packets, then hangs up.
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        server.wait_for_line("gdb connected");
        // Well-formed packets (right checksums) with malformed contents,
        // then bytes that are no packet at all.
        let bodies: &[&str] = &[
            "qSupported:multiprocess+;swbreak+",
            "m",
            "mzz,yy",
            "Z0,zz",
            "Z2,0,ffffffffffffffffffff,1",
            "p99999999999999999999999",
            "M0,ffffffffffffffff:00",
            "G00",
            "vCont;z",
            "qXfer:features:read:target.xml:zz,1",
            "qRcmd,zz",
        ];
        for body in bodies {
            let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
            let _ = raw.write_all(format!("${body}#{sum:02x}").as_bytes());
        }
        let _ = raw.write_all(b"\xff\xfe$$$###\x00}}}$zz#00");
        let _ = raw.flush();
        let mut sink = [0u8; 4096];
        let _ = raw.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = raw.read(&mut sink);
    }

    // 3. A working gdb after both.
    let last = vec![
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "p/x $cr0".into(),
        "stepi".into(),
        "p 1 + 1".into(),
        "detach".into(),
    ];
    let transcript = run_gdb(&elf_path, &last, |_| {});
    // After the detach the guest spins on for a long time: end it.
    server.wait_for_line("gdb detached; running on");
    let _ = server.child.kill();
    let (_code, _stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    // Both the killed gdb and the garbage ended only their connection.
    assert_eq!(
        stderr.matches("gdb connection lost").count(),
        2,
        "{context}"
    );
    assert_eq!(
        stderr.matches("waiting for gdb again").count(),
        2,
        "{context}"
    );
    assert!(transcript.contains("$1 = 0x"), "cr0 read\n{context}");
    assert!(transcript.contains("$2 = 2"), "{context}");
    assert!(!stderr.contains("panicked"), "{context}");
}

#[test]
fn gdb_reverse_stepi_undoes_a_store() {
    require_kvm();
    let (_dir, elf_path) = temp_file("watch.elf", &guest_elf("watch"));
    let port = free_port();
    let server = start_server(&["--guest", "watch"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        // No history yet: gdb is told so.
        "reverse-stepi".into(),
        "monitor record on".into(),
        "watch watched.counter".into(),
        "continue".into(),
        "p watched.counter".into(),
        "p/x $pc".into(),
        "reverse-stepi".into(),
        "p watched.counter".into(),
        "p/x $pc".into(),
        "x/i $pc".into(),
        "reverse-stepi".into(),
        "stepi".into(),
        "stepi".into(),
        "p watched.counter".into(),
        "p/x $pc".into(),
        "monitor record".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_reverse_stepi", &transcript);
    assert!(
        transcript.contains("No more reverse-execution history."),
        "{context}"
    );
    assert!(transcript.contains("$1 = 17"), "after the store\n{context}");
    assert!(transcript.contains("$3 = 0"), "store undone\n{context}");
    assert!(
        transcript.contains("$5 = 17"),
        "store done again\n{context}"
    );
    let pc = |n: u32| {
        transcript
            .lines()
            .find_map(|l| l.strip_prefix(&format!("${n} = 0x")))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no ${n}\n{context}"))
    };
    assert!(pc(4) < pc(2), "one instruction back\n{context}");
    assert_eq!(pc(6), pc(2), "and forward again\n{context}");
    assert!(transcript.contains("mov"), "the store\n{context}");
    assert!(stdout.contains("watch: counter 0x33, sum 15"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_reverse_continue_crosses_a_timer_interrupt_deterministically() {
    require_kvm();
    let args = ["--guest", "timer", "--cmdline", "hz=10000 work=3000 k=10"];
    // The run without gdb, for comparison.
    let plain = Command::new(lunavm_bin())
        .args(["run", "-q"])
        .args(args)
        .output()
        .expect("lunavm runs");
    let plain_out = String::from_utf8_lossy(&plain.stdout).into_owned();
    assert!(
        plain_out.contains("timer: tick 2 at iteration"),
        "{plain_out}"
    );

    let (_dir, elf_path) = temp_file("timer.elf", &guest_elf("timer"));
    let port = free_port();
    let server = start_server(&args, port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "monitor record on".into(),
        "hbreak irq0_handler".into(),
        "continue".into(),
        "p ticks".into(),
        "p/x $rsp".into(),
        "continue".into(),
        "p ticks".into(),
        // Back across the guest's work between the ticks (thousands of
        // instructions, port exits, the second interrupt's delivery).
        "reverse-continue".into(),
        "monitor record".into(),
        "p ticks".into(),
        "p/x $rsp".into(),
        "x/1xb &ticks".into(),
        "continue".into(),
        "p ticks".into(),
        "reverse-continue".into(),
        "reverse-continue".into(),
        "p ticks".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_reverse_continue", &transcript);
    assert!(transcript.contains("$1 = 0"), "{context}");
    assert!(transcript.contains("$3 = 1"), "second tick\n{context}");
    assert!(
        transcript.contains("$4 = 0"),
        "back at the first\n{context}"
    );
    let rsp = |n: u32| {
        transcript
            .lines()
            .find_map(|l| l.strip_prefix(&format!("${n} = ")))
            .unwrap_or_else(|| panic!("no ${n}\n{context}"))
            .to_string()
    };
    assert_eq!(rsp(2), rsp(5), "the same state\n{context}");
    assert!(transcript.contains("$6 = 1"), "forward again\n{context}");
    assert!(
        transcript.contains("No more reverse-execution history."),
        "{context}"
    );
    assert!(transcript.contains("$7 = 0"), "{context}");
    let replayed: u64 = transcript
        .lines()
        .find_map(|l| l.split("the last reverse operation replayed ").nth(1))
        .and_then(|r| r.split(" exits natively").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no replay count\n{context}"));
    // From the second tick back to the first: 990 iterations of the
    // guest's loop (thousands of instructions) and their port exits, run
    // natively (and again to land on the hit).
    assert!(replayed >= 99, "replayed {replayed} exits\n{context}");
    assert!(
        plain_out.contains("timer: tick 1 at iteration 929")
            && plain_out.contains("timer: tick 2 at iteration 1919"),
        "{plain_out}"
    );
    // A byte of memory (ticks) and a register (rsp, above) as they were.
    assert!(transcript.contains("<ticks>:\t0x00"), "{context}");
    // Going back and forth changed nothing the guest can see.
    assert_eq!(stdout, plain_out, "{context}");
    assert_eq!(code, plain.status.code(), "{context}");
}

#[test]
fn gdb_reverse_stepi_crosses_a_port_exit() {
    require_kvm();
    let args = ["--guest", "timer", "--cmdline", "hz=10000 work=3000 k=10"];
    let elf = guest_elf("timer");
    // The EOI in irq0_handler: `out %al, $0x20` (e6 20); break just after.
    let handler = symbol_address(&elf, "irq0_handler");
    let code = code_bytes(&elf, handler, 64);
    let out = handler
        + code
            .windows(2)
            .position(|w| w == [0xe6, 0x20])
            .expect("the EOI's out in irq0_handler") as u64;
    let after = out + 2;
    let (_dir, elf_path) = temp_file("timer.elf", &elf);
    let port = free_port();
    let server = start_server(&args, port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "monitor record on".into(),
        format!("hbreak *{after:#x}"),
        // Natively to just after the port exit (the second tick's).
        "continue".into(),
        "continue".into(),
        "monitor clock".into(),
        "p/x $pc".into(),
        // One instruction back: the out itself, before its exit.
        "reverse-stepi".into(),
        "p/x $pc".into(),
        "x/i $pc".into(),
        "monitor clock".into(),
        "reverse-stepi".into(),
        "p/x $pc".into(),
        "stepi".into(),
        "p/x $pc".into(),
        // Over the exit again: one instruction, to just after the out.
        "stepi".into(),
        "p/x $pc".into(),
        "monitor clock".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    let value = |n: u32| {
        transcript
            .lines()
            .find_map(|l| l.strip_prefix(&format!("${n} = 0x")))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no ${n}\n{context}"))
    };
    let exits: Vec<u64> = transcript
        .lines()
        .filter_map(|l| l.strip_prefix("guest exits"))
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(value(1), after, "{context}");
    assert_eq!(value(2), out, "at the out\n{context}");
    assert!(transcript.contains("out    %al,$0x20"), "{context}");
    assert!(value(3) < out, "one more back\n{context}");
    assert_eq!(value(4), out, "forward to the out again\n{context}");
    assert_eq!(
        value(5),
        after,
        "a step over the out stops after it\n{context}"
    );
    assert_eq!(exits.len(), 3, "{context}");
    assert_eq!(exits[1] + 1, exits[0], "before the exit\n{context}");
    assert_eq!(exits[2], exits[0], "and after it again\n{context}");
    assert!(stdout.contains("timer: ticks "), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_served_from_a_lua_scenario_shares_its_lua_state() {
    require_kvm();
    let (dir, elf_path) = temp_file("watch.elf", &guest_elf("watch"));
    let script = dir.path().join("serve.lua");
    std::fs::write(
        &script,
        r#"vm.boot{guest = "watch"}
local ev = vm.gdb{addr = arg[1]}
print("lua: gdb ended: " .. ev.reason .. ", set from gdb: " .. tostring(from_gdb))
ev = vm.run{}
print("lua: run ended: " .. ev.reason .. " " .. ev.status)
io.write(serial.output())
"#,
    )
    .expect("write the scenario");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let script_path = script.to_string_lossy().into_owned();
    let server = spawn_listening(&[&script_path, &addr]);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote {addr}"),
        "hbreak bump".into(),
        "continue".into(),
        "p i".into(),
        // The scenario's own Lua state: it sees this after the detach.
        "monitor lua from_gdb = cpu.get(\"rdi\")".into(),
        "detach".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert!(
        transcript.contains("Breakpoint 1, bump (i=i@entry=1)"),
        "{context}"
    );
    assert!(transcript.contains("$1 = 1"), "{context}");
    assert!(
        stdout.contains("lua: gdb ended: detached, set from gdb: 1\n"),
        "{context}"
    );
    assert!(stdout.contains("watch: counter 0x33, sum 15"), "{context}");
    assert!(stdout.contains("lua: run ended: exit 0"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

#[test]
fn gdb_stepi_blocks_interrupts_and_reverse_replays_the_same_way() {
    require_kvm();
    let args = ["--guest", "timer", "--cmdline", "hz=100000 work=2000 k=10"];
    let plain = Command::new(lunavm_bin())
        .args(["run", "-q"])
        .args(args)
        .output()
        .expect("lunavm runs");
    let (_dir, elf_path) = temp_file("timer.elf", &guest_elf("timer"));
    let port = free_port();
    let server = start_server(&args, port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "monitor record on".into(),
        "hbreak irq0_handler".into(),
        "continue".into(),
        "p ticks".into(),
        "monitor clock".into(),
        // Long enough for the next tick to fall due (port exits move time).
        "stepi 20000".into(),
        "p ticks".into(),
        "monitor clock".into(),
        "p/x $pc".into(),
        // Back through the steps, replayed with interrupts blocked as well.
        "reverse-continue".into(),
        "p ticks".into(),
        "monitor record".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_eq!(
        transcript.matches("Breakpoint 1, irq0_handler").count(),
        2,
        "no handler entered while stepping; back at the first hit\n{context}"
    );
    assert!(transcript.contains("$1 = 0"), "{context}");
    assert!(
        transcript.contains("$2 = 1"),
        "the first tick only\n{context}"
    );
    let times: Vec<u64> = transcript
        .lines()
        .filter_map(|l| l.strip_prefix("virtual time"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    // The PIT ticks every 10 µs: more than that passed while stepping, yet
    // no handler ran (the tick waited for the next continue).
    assert_eq!(times.len(), 2, "{context}");
    assert!(
        times[1] - times[0] > 10_000,
        "a tick fell due while stepping\n{context}"
    );
    assert!(
        transcript.contains("$4 = 0"),
        "back at the first hit\n{context}"
    );
    assert!(
        transcript.contains("the last reverse operation replayed "),
        "{context}"
    );
    // The stepping delayed a tick: the guest saw a different interleaving
    // than a plain run, but it ran to its end.
    assert!(stdout.contains("timer: ticks "), "{context}");
    assert_eq!(code, plain.status.code(), "{context}");
}

/// The user-mode VA of um_user_plain in the `usermode` guest (its user code
/// page starts with it): `movabs` (10 bytes), `mov %cs,%eax` (2), `mov
/// %rax,0x8(%rdi)` (4).
const USER_PLAIN: u64 = 0x80_0000_0000;

/// A software breakpoint and single steps in guest user mode (CPL3). On a
/// host that delivers a CPL3 `int3` and single step to the guest's IDT (the
/// startup probe measures it; this project's software-nested KVM does),
/// lunavm takes them back from the guest's #BP and #DB handlers; elsewhere
/// KVM reports them itself. Either way gdb stops on the breakpoint, steps
/// instruction by instruction in user mode, and the guest then runs to its
/// normal end.
#[test]
fn gdb_breaks_and_steps_in_user_mode() {
    require_kvm();
    let (dir, elf_path) = temp_file("usermode.elf", &guest_elf("usermode"));
    let report_path = dir.path().join("report.json");
    let report_arg = report_path.to_str().expect("a UTF-8 path");
    let port = free_port();
    let server = start_server(
        &[
            "--guest",
            "usermode",
            "--cmdline",
            "only=sysret",
            "--report",
            report_arg,
        ],
        port,
    );
    let mut commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        // The user pages are mapped by then.
        "break um_sysret_user".into(),
        "continue".into(),
        format!("break *{USER_PLAIN:#x}"),
        "continue".into(),
        "p/x $pc".into(),
        "p $cs & 3".into(),
        "x/3i $pc".into(),
    ]
    .into_iter()
    .collect();
    for _ in 0..3 {
        commands.extend(["stepi", "p/x $pc", "p $cs & 3"].map(String::from));
    }
    commands.extend(["p/x $rdi", "monitor userdebug", "continue"].map(String::from));
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_transcript("gdb_user_mode_breakpoint_and_steps", &transcript);
    assert!(
        transcript.contains(&format!("Breakpoint 2, {USER_PLAIN:#018x} in ?? ()")),
        "{context}"
    );
    // The breakpoint, then one instruction per stepi, all at CPL3.
    for pc in [
        USER_PLAIN,
        USER_PLAIN + 10,
        USER_PLAIN + 12,
        USER_PLAIN + 16,
    ] {
        assert!(
            transcript.contains(&format!(" = {pc:#x}\n")),
            "{pc:#x}\n{context}"
        );
    }
    assert_eq!(transcript.matches(" = 3\n").count(), 4, "{context}");
    // The movabs ran.
    assert!(transcript.contains("= 0x8000002000\n"), "{context}");
    assert!(stdout.contains("usermode: sysret: ok"), "{context}");
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
    let probe = lunavm::vm::user_debug_probe::cached();
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("lunavm wrote its report"),
    )
    .expect("the report parses");
    let u = &report["user_debug"];
    let taken = |yes: bool, n: u64| if yes { n } else { 0 };
    assert_eq!(
        u["breakpoints"],
        taken(probe.int3_needs_idt(), 1),
        "{u}\n{context}"
    );
    // The three stepi, and the step over the user breakpoint is the first.
    assert_eq!(
        u["steps"],
        taken(probe.step_needs_idt(), 3),
        "{u}\n{context}"
    );
    assert_eq!(u["passed"], 0, "{u}\n{context}");
    if probe.int3_needs_idt() && probe.step_needs_idt() {
        assert!(
            transcript.contains("user-mode path on: #BP handler breakpoint 0x")
                && transcript.contains("taken back: 1 breakpoints, 3 steps;"),
            "{context}"
        );
    }
    // Harness-caused: the guest's exits and virtual time are those of a run
    // without gdb.
    let plain_path = dir.path().join("plain.json");
    let plain = common::lunavm(&[
        "run",
        "--guest",
        "usermode",
        "--cmdline",
        "only=sysret",
        "--report",
        plain_path.to_str().expect("a UTF-8 path"),
    ]);
    assert_eq!(plain.code, Some(0), "{}", plain.stderr);
    let plain: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&plain_path).expect("lunavm wrote its report"),
    )
    .expect("the report parses");
    for key in ["guest_exits", "virtual_time_ns"] {
        assert_eq!(report[key], plain[key], "{key}\n{context}");
    }
}

/// `continue` from a breakpoint in user mode steps over it there, and a
/// `stepi` onto and over a `syscall` (which this project's host leaves at
/// CPL3 for lunavm's SYSCALL path to finish) ends at LSTAR in the kernel.
#[test]
fn gdb_continues_from_a_user_mode_breakpoint_and_steps_over_syscall() {
    require_kvm();
    let elf = guest_elf("usermode");
    let user_syscall =
        USER_PLAIN + symbol_address(&elf, "um_user_syscall") - symbol_address(&elf, "um_user_code");
    let entry = symbol_address(&elf, "um_syscall_entry");
    let (_dir, elf_path) = temp_file("usermode.elf", &elf);
    let port = free_port();
    let server = start_server(
        &["--guest", "usermode", "--cmdline", "only=syscall rounds=3"],
        port,
    );
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "break um_sysret_user".into(),
        "break um_enter_user".into(),
        "continue".into(),
        "delete".into(),
        format!("break *{user_syscall:#x}"),
        "continue".into(),
        // Round 2: from the breakpoint, a step over it in user mode.
        "continue".into(),
        "p/x $pc".into(),
        "stepi".into(),
        "p/x $pc".into(),
        "x/i $pc".into(),
        "stepi".into(),
        "p/x $pc".into(),
        "p $cs & 3".into(),
        "delete".into(),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert_eq!(
        transcript
            .matches(&format!("Breakpoint 3, {user_syscall:#018x} in ?? ()"))
            .count(),
        2,
        "{context}"
    );
    // mov $0x1234,%eax is 5 bytes; then the syscall lands at LSTAR, CPL0.
    assert!(
        transcript.contains(&format!(" = {:#x}\n", user_syscall + 5)),
        "{context}"
    );
    assert!(transcript.contains(":\tsyscall"), "{context}");
    assert!(
        transcript.contains(&format!("$3 = {entry:#x}\n")),
        "{context}"
    );
    assert!(transcript.contains("$4 = 0\n"), "{context}");
    assert_eq!(
        stdout.matches("usermode: syscall: ok").count(),
        3,
        "{context}"
    );
    assert!(transcript.contains("exited normally"), "{context}");
    assert_eq!(code, Some(0), "{context}");
}

/// An `int3` of the guest's own in user mode goes to the guest's #BP
/// handler untouched while lunavm's user-mode path is armed (a software
/// breakpoint elsewhere): the usermode guest has no #BP handler and reports
/// the exception with the RIP past the `int3`.
#[test]
fn gdb_user_mode_int3_of_the_guest_reaches_its_handler() {
    require_kvm();
    let (_dir, elf_path) = temp_file("usermode.elf", &guest_elf("usermode"));
    let port = free_port();
    let server = start_server(&["--guest", "usermode", "--cmdline", "only=sysret"], port);
    let commands: Vec<String> = [
        "set architecture i386:x86-64".to_string(),
        format!("target remote 127.0.0.1:{port}"),
        "break um_sysret_user".into(),
        "continue".into(),
        format!("break *{:#x}", USER_PLAIN + 10),
        format!("set {{unsigned char}}{USER_PLAIN:#x} = 0xcc"),
        "continue".into(),
    ]
    .into_iter()
    .collect();
    let transcript = run_gdb(&elf_path, &commands, |_| {});
    let (code, stdout, stderr) = finish_server(server);
    let context = format!("gdb:\n{transcript}\nlunavm stdout:\n{stdout}\nlunavm stderr:\n{stderr}");
    eprintln!("{context}");
    assert!(
        stdout.contains(&format!(
            "unexpected exception 3 (#BP) error=0x0 rip={:#x}",
            USER_PLAIN + 1
        )),
        "{context}"
    );
    assert!(!transcript.contains("Breakpoint 2,"), "{context}");
    assert_ne!(code, Some(0), "{context}");
    let probe = lunavm::vm::user_debug_probe::cached();
    if probe.int3_needs_idt() {
        assert!(stderr.contains("guest's own passed 1"), "{context}");
    }
}
