//! The `lunavm` command line: parse, call the library, map outcomes to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use lunavm::exit_code;
use lunavm::launch::{self, KernelSource, RunOptions};
use lunavm::machine::{MachineConfig, StopCondition};
use lunavm::vm::cpuid::CpuProfile;
use lunavm::{entropy, guests, layout};

#[derive(Parser)]
#[command(name = "lunavm", version, about = "A scriptable, deterministic KVM harness for testing, debugging and fuzzing guest kernels", after_help = exit_codes_help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (or the built-in `hello` guest) and run it to a stop.
    Run(RunArgs),
    /// List the built-in guests.
    Guests,
}

#[derive(Args)]
struct RunArgs {
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
    /// Print no summary on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn exit_codes_help() -> String {
    let mut s = String::from("Exit status: the value the guest writes to port 0xf4 (low 8 bits), or one of lunavm's own:\n");
    for e in exit_code::TABLE {
        s.push_str(&format!("  {:>3}  {}\n", e.code, e.meaning));
    }
    s
}

/// Parses "128M", "1G", "4096", "64K" (binary units).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match s[i..].to_ascii_uppercase().as_str() {
                "K" | "KB" | "KIB" => 1 << 10,
                "M" | "MB" | "MIB" => 1 << 20,
                "G" | "GB" | "GIB" => 1 << 30,
                other => return Err(format!("unknown size unit '{other}' (use K, M or G)")),
            };
            (&s[..i], mult)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))?;
    if bytes < layout::MIN_MEM_SIZE || bytes % layout::PAGE_SIZE != 0 {
        return Err(format!(
            "guest memory must be a multiple of 4 KiB and at least 2 MiB, not {bytes} bytes"
        ));
    }
    Ok(bytes)
}

/// Parses "100ns", "5us", "20ms", "2s" into nanoseconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let i = s
        .find(|c: char| c.is_ascii_alphabetic() || c == 'µ')
        .unwrap_or(s.len());
    let n: u64 = s[..i]
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a duration"))?;
    let mult: u64 = match &s[i..] {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" | "" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown duration unit '{other}' (use ns, us, ms or s)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too long"))
}

fn print_error(err: &dyn std::error::Error) {
    eprintln!("lunavm: error: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
}

fn cmd_run(args: RunArgs) -> u8 {
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
        },
        stop: StopCondition {
            max_exits: args.max_exits,
            max_time_ns: args.max_time,
            ..StopCondition::default()
        },
        qemu_exit_codes: args.qemu_exit_codes,
    };
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
    report.exit_code
}

fn cmd_guests() -> u8 {
    for g in guests::all() {
        println!("{:<10} {:<10} {}", g.name, g.protocol, g.description);
    }
    exit_code::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => cmd_run(args),
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
