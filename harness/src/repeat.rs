//! `lunavm run --repeat N`: the determinism check. Runs the same machine N
//! times from scratch and compares every run with the first — the exit
//! sequence record by record, the serial output, the final memory and
//! registers — and says where the first difference is.

use crate::exit_code;
use crate::launch::{self, LaunchError, RunOptions};
use std::path::{Path, PathBuf};

/// The result of `--repeat`.
pub struct RepeatSummary {
    /// What to print on stderr.
    pub text: String,
    /// The process exit code: the first run's, or DIVERGENCE.
    pub exit_code: u8,
}

/// What one repeated run produced.
struct Digest {
    trace: Vec<crate::machine::trace::ExitRecord>,
    serial: Vec<u8>,
    state_hash: String,
    exit_code: u8,
    kicks: u64,
}

fn digest(opts: &RunOptions) -> Result<Digest, LaunchError> {
    let out = launch::run(opts)?;
    Ok(Digest {
        trace: out.machine.exit_trace().to_vec(),
        serial: out.machine.serial_output(),
        state_hash: out.report.state_hash.clone().unwrap_or_default(),
        exit_code: out.report.exit_code,
        kicks: out.machine.exits().kick_time_jumps,
    })
}

/// Where run `i`'s exit trace goes with `--trace FILE`: `FILE.i`.
pub fn trace_path(base: &Path, i: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn write_trace(trace: Option<&Path>, i: u32, d: &Digest) -> Result<(), LaunchError> {
    let Some(base) = trace else { return Ok(()) };
    let path = trace_path(base, i);
    crate::machine::trace::write_json_lines(&path, &d.trace).map_err(|source| LaunchError::Write {
        what: "the exit trace",
        path,
        source,
    })
}

/// Runs `opts` `n` times from scratch and compares every run with the first:
/// the exit sequence, the serial output and the final state hash. Says where
/// the first difference is. With `trace`, run `i`'s exit trace is written to
/// [`trace_path`]`(trace, i)` (JSON lines), up to the first run that differs.
/// With `ignore_state`, the final memory and registers are not compared.
pub fn run_repeated(
    opts: &RunOptions,
    n: u32,
    trace: Option<&Path>,
    ignore_state: bool,
) -> Result<RepeatSummary, LaunchError> {
    let mut opts = opts.clone();
    opts.state_hash = true;
    opts.machine.trace_exits = true;
    let first = digest(&opts)?;
    write_trace(trace, 1, &first)?;
    opts.machine.echo_serial = false;
    opts.machine.echo_ucall_prints = false;
    let mut kicks = first.kicks;
    for i in 2..=n.max(1) {
        let d = digest(&opts)?;
        write_trace(trace, i, &d)?;
        kicks += d.kicks;
        let diff = if let Some((at, a, b)) =
            crate::machine::trace::first_difference(&first.trace, &d.trace)
        {
            let show = |r: Option<crate::machine::trace::ExitRecord>| {
                r.map_or("(no more exits)".to_string(), |r| r.to_string())
            };
            Some(format!(
                "exit #{at}: run 1: {}; run {i}: {}",
                show(a),
                show(b)
            ))
        } else if d.serial != first.serial {
            Some("the serial output differs with the same exits".to_string())
        } else if !ignore_state && d.state_hash != first.state_hash {
            Some(format!(
                "the final memory and registers differ (hash {} vs {})",
                first.state_hash, d.state_hash
            ))
        } else {
            None
        };
        if let Some(what) = diff {
            return Ok(RepeatSummary {
                text: format!("lunavm: repeat: run {i} differs from run 1 at {what}\n  kicks that moved virtual time (host-timed determinism holes) so far: {kicks}\n"),
                exit_code: exit_code::DIVERGENCE,
            });
        }
    }
    Ok(RepeatSummary {
        text: format!(
            "lunavm: repeat: {} runs identical: {} exits, {} serial bytes, state hash {}, exit status {}; kicks that moved virtual time: {kicks}\n",
            n.max(1),
            first.trace.len(),
            first.serial.len(),
            if ignore_state { "not compared" } else { &first.state_hash },
            first.exit_code
        ),
        exit_code: first.exit_code,
    })
}
