//! The `lunavm` command line: parse, call the library, map outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use lunavm::exit_code;
use lunavm::launch::{self, KernelSource, RunOptions};
use lunavm::machine::virtio::VirtioSpec;
use lunavm::machine::{IrqchipMode, MachineConfig, StopCondition};
use lunavm::script::runner;
use lunavm::vm::cpuid::CpuProfile;
use lunavm::{entropy, guests, layout, units};

#[derive(Parser)]
#[command(name = "lunavm", version, about = "A scriptable, deterministic KVM harness for testing, debugging and fuzzing guest kernels", after_help = exit_codes_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (or the built-in `hello` guest) and run it to a stop, or run a Lua scenario.
    Run(Box<RunArgs>),
    /// Run Lua scenario tests: every `test_*` function of every `*_test.lua` file under PATHs.
    Test(TestArgs),
    /// Fuzz a guest from a Lua scenario's fuzz point with libFuzzer (see scripts/README.md, "Fuzzing").
    Fuzz(FuzzArgs),
    /// List the built-in guests.
    Guests,
}

#[derive(Args)]
struct FuzzArgs {
    /// The fuzz scenario: defines fuzz_setup, fuzz_inject and optionally fuzz_start,
    /// fuzz_verdict and the fuzz_config table.
    #[arg(value_name = "SCENARIO.lua")]
    scenario: PathBuf,
    /// An argument for the scenario's `arg` table (repeatable).
    #[arg(long = "arg", value_name = "VALUE")]
    args: Vec<String>,
    /// Work directory: fuzz point, corpus, artifacts, crash records (default lunavm-fuzz/STEM).
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Run fuzz_setup again even when the work directory holds a fuzz point.
    #[arg(long)]
    fresh: bool,
    /// Seed of the machine.
    #[arg(long, value_name = "N", default_value_t = entropy::DEFAULT_SEED)]
    seed: u64,
    /// Coverage sources: blocks (breakpoints from the guest ELF), guest (the guest's own
    /// map), all or none; overrides fuzz_config.coverage.
    #[arg(long, value_name = "LIST")]
    coverage: Option<String>,
    /// Comparison feedback: breakpoints, guest (ucall CMP), all or none; overrides fuzz_config.cmp.
    #[arg(long, value_name = "LIST")]
    cmp: Option<String>,
    /// Replay one input from the fuzz point and print its verdict, backtrace and serial output.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to_test", "plot"])]
    repro: Option<PathBuf>,
    /// Write a Lua regression test replaying FILE into DIR.
    #[arg(long, value_names = ["FILE", "DIR"], num_args = 2, conflicts_with = "plot")]
    to_test: Option<Vec<PathBuf>>,
    /// Record each new crash (crashes/SIGNATURE.json, artifacts/crash-SIGNATURE) and go on
    /// fuzzing instead of stopping at the first.
    #[arg(long)]
    keep_going: bool,
    /// Write the campaign's coverage-over-time plot (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// libFuzzer's flags and corpus folders, after `--`.
    #[arg(last = true, value_name = "LIBFUZZER FLAGS")]
    libfuzzer: Vec<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Files and folders to search for `*_test.lua` files (default: the current folder).
    #[arg(value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Run only tests whose `file::test` name contains PATTERN.
    #[arg(long, value_name = "PATTERN")]
    filter: Option<String>,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Run N tests in parallel processes.
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1)]
    jobs: usize,
    /// List the tests found and exit.
    #[arg(long)]
    list: bool,
    /// Seed for every test's machine.
    #[arg(long, value_name = "N", default_value_t = entropy::DEFAULT_SEED)]
    seed: u64,
    /// Internal: run one test in this process (the runner's child).
    #[arg(long, value_name = "FILE", hide = true)]
    worker: Option<PathBuf>,
    /// Internal: the test function for --worker.
    #[arg(long, value_name = "NAME", hide = true)]
    test: Option<String>,
    /// Internal: start the --worker test from this snapshot.
    #[arg(long, value_name = "FILE", hide = true)]
    snapshot: Option<PathBuf>,
    /// Internal: run the --worker file's setup_once and save the machine here.
    #[arg(long, value_name = "FILE", hide = true)]
    setup_once: Option<PathBuf>,
    /// Internal: the virtual-time budget for --worker, in ns.
    #[arg(long, value_name = "NS", hide = true, default_value_t = runner::DEFAULT_VTIME_NS)]
    vtime: u64,
}

#[derive(Args)]
struct RunArgs {
    /// A Lua scenario to run instead of booting a kernel directly; ARGS go to its `arg` table.
    #[arg(value_name = "SCRIPT.lua", conflicts_with_all = ["guest", "kernel"])]
    script: Option<PathBuf>,
    /// Arguments for the scenario.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        requires = "script"
    )]
    args: Vec<String>,
    /// Built-in guest to boot (see `lunavm guests`); the default is `hello`.
    #[arg(long, value_name = "NAME", conflicts_with = "kernel")]
    guest: Option<String>,
    /// Kernel file to boot: a PVH ELF or a multiboot v1 image.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Guest RAM: bytes, or with a K, M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    mem: u64,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "")]
    cmdline: String,
    /// A module for the kernel, optionally with its command line after a comma (repeatable).
    #[arg(long, value_name = "FILE[,CMDLINE]")]
    module: Vec<String>,
    /// Stop after N guest-caused exits.
    #[arg(long, value_name = "N")]
    max_exits: Option<u64>,
    /// Stop after this much virtual time (e.g. 500us, 20ms, 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_time: Option<u64>,
    /// CPU profile: baseline (portable, deterministic) or host.
    #[arg(long, value_name = "PROFILE", default_value = "baseline")]
    cpu: CpuProfile,
    /// Seed for every entropy source of the run.
    #[arg(long, value_name = "N", default_value_t = entropy::DEFAULT_SEED)]
    seed: u64,
    /// Write a JSON report of the run to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Exit with QEMU's isa-debug-exit mapping, (value << 1) | 1.
    #[arg(long)]
    qemu_exit_codes: bool,
    /// Switch off instruction completion: all, or a list such as int3,xgetbv.
    #[arg(long, value_name = "LIST", num_args = 0..=1, default_missing_value = "all")]
    no_complete: Option<String>,
    /// Finish SYSCALLs that the host leaves at CPL3: auto (when the startup probe finds the host needs it), on or off.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    syscall_compat: lunavm::machine::syscall_compat::SyscallCompatMode,
    /// Mechanism of data watches (gdb's watchpoints, Lua's hook.watch{vaddr=}): auto (debug
    /// registers where the startup probe finds that data breakpoints fire for kernel and user
    /// code, else page watches), debugreg (debug registers where a watch fits one; an error on
    /// a host where they never fire) or page.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    watch_mode: lunavm::machine::drwatch::WatchMode,
    /// Print no summary on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Start from a snapshot file (taken with --save or from a scenario) instead of booting.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["guest", "kernel", "module", "script"])]
    restore: Option<PathBuf>,
    /// With --restore: check that the restored memory and vCPU state hash equal the snapshot's.
    #[arg(long, requires = "restore")]
    verify_restore: bool,
    /// When the run stops, save a snapshot of the machine to FILE.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Run N times from scratch and check that every run repeats the first exactly
    /// (exit sequence, serial output, final memory and registers).
    #[arg(long, value_name = "N", conflicts_with_all = ["save", "script"])]
    repeat: Option<u32>,
    /// Stop when the serial output matches REGEX (exit status 0): a fixed point such as
    /// a console line, e.g. for --repeat.
    #[arg(long, value_name = "REGEX")]
    until_serial: Option<String>,
    /// With --repeat: compare the exit sequences and serial output only, not the final
    /// memory and registers (for guests with a known memory-only hole, e.g. Linux mixing
    /// the TSC into its random pool).
    #[arg(long, requires = "repeat")]
    repeat_ignore_state: bool,
    /// Write the exit trace to FILE as JSON lines: every guest-caused exit (kind, port or
    /// address, value, virtual time, RIP) and every kick that moved virtual time. With
    /// --repeat, run N's trace goes to FILE.N.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["script", "gdb"])]
    trace: Option<PathBuf>,
    /// Treat determinism holes (host-timed kicks of a guest spinning without exits) as errors.
    #[arg(long)]
    strict: bool,
    /// Interrupt controllers and PIT: userspace (deterministic, on virtual time) or
    /// kernel (KVM's, faster, host-timed: not deterministic).
    #[arg(long, value_name = "MODE", default_value = "userspace")]
    irqchip: IrqchipMode,
    /// Serve gdb on ADDR:PORT: the guest waits at its first instruction until gdb
    /// connects (`target remote ADDR:PORT`), and runs on to its end after gdb detaches.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with_all = ["repeat", "script"])]
    gdb: Option<String>,
    /// The CMOS clock's date at virtual time zero: Unix seconds or YYYY-MM-DD[THH:MM:SS] (UTC).
    #[arg(long, value_name = "DATE", default_value = "2025-01-01", value_parser = parse_date)]
    rtc_start: i64,
    /// A virtio disk backed by FILE (repeatable). Writes go to an in-memory overlay and the
    /// file never changes; FILE,rw writes to the file.
    #[arg(long, value_name = "FILE[,rw]", value_parser = parse_disk)]
    disk: Vec<VirtioSpec>,
    /// A virtio network card with no host networking: frames go to and from the script.
    #[arg(long)]
    net: bool,
    /// With --net: write every frame, both ways, to a pcap file (virtual-time stamps).
    #[arg(long, value_name = "FILE", requires = "net")]
    pcap: Option<PathBuf>,
    /// A virtio console: a second console stream for the script.
    #[arg(long)]
    vconsole: bool,
    /// A virtio entropy source fed from --seed.
    #[arg(long)]
    rng: bool,
}

impl RunArgs {
    /// The virtio devices asked for, in slot order: disks, then net, console, rng.
    fn virtio(&self) -> Vec<VirtioSpec> {
        let mut v = self.disk.clone();
        v.extend(self.net.then(|| VirtioSpec::Net {
            pcap: self.pcap.clone(),
        }));
        v.extend(self.vconsole.then_some(VirtioSpec::Console));
        v.extend(self.rng.then_some(VirtioSpec::Rng));
        v
    }
}

/// Parses `--disk`.
fn parse_disk(s: &str) -> Result<VirtioSpec, String> {
    VirtioSpec::parse_disk(s)
}

/// Parses `--rtc-start`.
fn parse_date(s: &str) -> Result<i64, String> {
    units::parse_date(s).map_err(|e| e.to_string())
}

fn exit_codes_help() -> String {
    let mut s = String::from("Exit status: the value the guest writes to port 0xf4 (low 8 bits), or one of lunavm's own:\n");
    for e in exit_code::TABLE {
        s.push_str(&format!("  {:>3}  {}\n", e.code, e.meaning));
    }
    s
}

/// Parses a guest memory size for `--mem`.
fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = units::parse_size(s).map_err(|e| e.to_string())?;
    if bytes < layout::MIN_MEM_SIZE || bytes % layout::PAGE_SIZE != 0 {
        return Err(format!(
            "guest memory must be a multiple of 4 KiB and at least 2 MiB, not {bytes} bytes"
        ));
    }
    Ok(bytes)
}

/// Parses a virtual-time duration for `--max-time`.
fn parse_duration(s: &str) -> Result<u64, String> {
    units::parse_duration(s).map_err(|e| e.to_string())
}

fn print_error(err: &dyn std::error::Error) {
    eprintln!("lunavm: error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

fn cmd_test(args: TestArgs) -> u8 {
    if let Some(file) = &args.worker {
        let job = match (&args.setup_once, &args.test) {
            (Some(snapshot), _) => runner::WorkerJob::SetupOnce {
                snapshot: snapshot.clone(),
            },
            (None, Some(name)) => runner::WorkerJob::Test {
                name: name.clone(),
                snapshot: args.snapshot.clone(),
            },
            (None, None) => {
                eprintln!("lunavm: error: --worker needs --test or --setup-once");
                return exit_code::BAD_INPUT;
            }
        };
        return runner::worker_main(file, &job, args.vtime, args.seed);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("lunavm: error: cannot find my own executable to run tests: {e}");
            return exit_code::HOST_ERROR;
        }
    };
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths
    };
    let opts = runner::TestOptions {
        paths,
        filter: args.filter,
        junit: args.junit,
        jobs: args.jobs,
        list: args.list,
        seed: args.seed,
    };
    match runner::run_tests(&opts, &exe) {
        Ok(results) => {
            let failed = results
                .iter()
                .any(|r| matches!(r.status, runner::Status::Fail | runner::Status::Error));
            if failed {
                exit_code::TEST_FAILED
            } else {
                exit_code::SUCCESS
            }
        }
        Err(e) => {
            print_error(&e);
            exit_code::BAD_INPUT
        }
    }
}

fn cmd_run(args: RunArgs) -> u8 {
    if let Some(script) = &args.script {
        let (code, err) = runner::run_script(script, &args.args, args.seed);
        if let Some(e) = err {
            eprintln!("lunavm: {e}");
        }
        return code;
    }
    let no_complete = match args
        .no_complete
        .as_deref()
        .map(launch::parse_no_complete)
        .transpose()
    {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => {
            eprintln!("lunavm: error: --no-complete: {e}");
            return exit_code::BAD_INPUT;
        }
    };
    let virtio = args.virtio();
    let until_serial = match args.until_serial.as_deref().map(regex::bytes::Regex::new) {
        None => None,
        Some(Ok(regex)) => Some(lunavm::machine::stop::SerialWatch { regex, from: 0 }),
        Some(Err(e)) => {
            eprintln!("lunavm: error: --until-serial: {e}");
            return exit_code::BAD_INPUT;
        }
    };
    let kernel = match (args.kernel, args.guest) {
        (Some(path), _) => KernelSource::File(path),
        (None, Some(name)) => KernelSource::Guest(name),
        (None, None) => KernelSource::Guest("hello".into()),
    };
    let modules = args
        .module
        .iter()
        .map(|m| match m.split_once(',') {
            Some((path, cmdline)) => (PathBuf::from(path), cmdline.to_string()),
            None => (PathBuf::from(m), m.clone()),
        })
        .collect();
    let opts = RunOptions {
        kernel,
        cmdline: args.cmdline,
        modules,
        machine: MachineConfig {
            mem_size: args.mem,
            cpu: args.cpu,
            seed: args.seed,
            echo_serial: true,
            no_complete,
            echo_ucall_prints: !args.quiet,
            trace_exits: args.repeat.is_some() || args.trace.is_some(),
            strict: args.strict,
            irqchip: args.irqchip,
            rtc_start: args.rtc_start,
            virtio,
            syscall_compat: args.syscall_compat,
            watch_mode: args.watch_mode,
        },
        stop: StopCondition {
            max_exits: args.max_exits,
            max_time_ns: args.max_time,
            serial: until_serial,
            ..StopCondition::default()
        },
        qemu_exit_codes: args.qemu_exit_codes,
        restore: args.restore,
        verify_restore: args.verify_restore,
        state_hash: args.report.is_some(),
        save: args.save,
        gdb: args.gdb,
    };
    if let Some(n) = args.repeat {
        return match lunavm::repeat::run_repeated(
            &opts,
            n,
            args.trace.as_deref(),
            args.repeat_ignore_state,
        ) {
            Ok(summary) => {
                eprint!("{}", summary.text);
                summary.exit_code
            }
            Err(e) => {
                print_error(&e);
                e.exit_code()
            }
        };
    }
    let outcome = match launch::run(&opts) {
        Ok(o) => o,
        Err(e) => {
            print_error(&e);
            return e.exit_code();
        }
    };
    let report = &outcome.report;
    if !args.quiet {
        eprint!("{}", report.summary());
    }
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!(
                "lunavm: error: cannot write the report to {}: {e}",
                path.display()
            );
            return exit_code::BAD_INPUT;
        }
    }
    if let Some(path) = &args.trace {
        let trace = outcome.machine.exit_trace();
        if let Err(e) = lunavm::machine::trace::write_json_lines(path, trace) {
            eprintln!(
                "lunavm: error: cannot write the exit trace to {}: {e}",
                path.display()
            );
            return exit_code::BAD_INPUT;
        }
    }
    report.exit_code
}

fn cmd_guests() -> u8 {
    for g in guests::all() {
        println!("{:<10} {:<10} {}", g.name, g.protocol, g.description);
    }
    exit_code::SUCCESS
}

fn cmd_fuzz(a: FuzzArgs) -> u8 {
    use lunavm::fuzz::scenario::command::{self, FuzzOptions};
    use lunavm::fuzz::scenario::config::{parse_sources, CmpFeedback, Coverage};
    let coverage = match a
        .coverage
        .as_deref()
        .map(|s| parse_sources(s, ["blocks", "guest"]))
    {
        None => None,
        Some(Ok([blocks, guest_map])) => Some(Coverage { blocks, guest_map }),
        Some(Err(e)) => {
            eprintln!("lunavm: error: --coverage: {e}");
            return exit_code::BAD_INPUT;
        }
    };
    let cmp = match a
        .cmp
        .as_deref()
        .map(|s| parse_sources(s, ["breakpoints", "guest"]))
    {
        None => None,
        Some(Ok([breakpoints, guest])) => Some(CmpFeedback { breakpoints, guest }),
        Some(Err(e)) => {
            eprintln!("lunavm: error: --cmp: {e}");
            return exit_code::BAD_INPUT;
        }
    };
    let to_test = a.to_test.and_then(|v| match v.as_slice() {
        [f, d] => Some((f.clone(), d.clone())),
        _ => None,
    });
    command::run(&FuzzOptions {
        scenario: a.scenario,
        args: a.args,
        workdir: a.workdir,
        fresh: a.fresh,
        seed: a.seed,
        coverage,
        cmp,
        repro: a.repro,
        to_test,
        plot: a.plot,
        libfuzzer: a.libfuzzer,
        keep_going: a.keep_going,
    })
}

/// libFuzzer's custom-mutator hook (found by libFuzzer through a weak
/// symbol): lunavm's input-to-state replacement, then libFuzzer's own
/// mutators. Only `lunavm fuzz` runs libFuzzer.
///
/// # Safety
/// `data` must point to `max_size` writable bytes (libFuzzer's buffer).
#[no_mangle]
pub unsafe extern "C" fn LLVMFuzzerCustomMutator(
    data: *mut u8,
    size: usize,
    max_size: usize,
    seed: std::ffi::c_uint,
) -> usize {
    if data.is_null() || max_size == 0 {
        return 0;
    }
    // SAFETY: libFuzzer passes a buffer of `max_size` writable bytes, the
    // first `size` of them the input, valid for the duration of the call.
    let buf = unsafe { std::slice::from_raw_parts_mut(data, max_size) };
    lunavm::fuzz::scenario::campaign::custom_mutate(buf, size, seed)
}

fn main() -> ExitCode {
    // A libFuzzer child of `lunavm fuzz` (-fork, -jobs, minimisation) gets
    // libFuzzer's flags only; its session is in the environment.
    let argv: Vec<String> = std::env::args().collect();
    if let Some(session) = lunavm::fuzz::scenario::campaign::child_session(&argv) {
        return match lunavm::fuzz::scenario::campaign::run_libfuzzer(&session, &argv) {
            Ok(rc) => ExitCode::from(u8::try_from(rc.clamp(0, 255)).unwrap_or(1)),
            Err(e) => {
                eprintln!("lunavm fuzz: error: {e}");
                ExitCode::from(exit_code::BAD_INPUT)
            }
        };
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => cmd_run(*args),
        Command::Test(args) => cmd_test(args),
        Command::Fuzz(args) => cmd_fuzz(args),
        Command::Guests => cmd_guests(),
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("128M").unwrap(), 128 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert!(parse_size("1000").is_err());
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_duration("20ms").unwrap(), 20_000_000);
        assert_eq!(parse_duration("5us").unwrap(), 5_000);
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
