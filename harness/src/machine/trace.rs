//! The exit trace: one record per guest-caused exit (and per kick that moved
//! virtual time), for the `--repeat` determinism check, which compares traces
//! record by record, and for `lunavm run --trace FILE` (JSON lines).

/// What kind of exit a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    /// Port read; `value` is what the guest got.
    PioIn,
    /// Port write.
    PioOut,
    /// MMIO read; `value` is what the guest got.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// ucall; `addr` is the command.
    Ucall,
    /// HLT.
    Hlt,
    /// An instruction lunavm completed; `addr` is its linear RIP.
    Completion,
    /// An interrupt injected; `value` is the vector.
    Interrupt,
    /// A forward-progress kick that moved virtual time (host-timed); `rip`
    /// is where the guest was, `value` the timer deadline virtual time
    /// jumped to.
    Kick,
    /// A spin wait found at a kick (deterministic): `rip` is the loop's
    /// canonical state, `value` the deadline virtual time jumped to.
    SpinWait,
}

/// One exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExitRecord {
    /// Its kind.
    pub kind: ExitKind,
    /// Port, address or command.
    pub addr: u64,
    /// Value read or written.
    pub value: u64,
    /// Virtual time when it happened.
    pub time_ns: u64,
    /// The vCPU's RIP at the exit (the instruction that caused it, or the
    /// next one for exits KVM reports after the instruction).
    pub rip: u64,
}

impl std::fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            ExitKind::PioIn => format!("port read {:#x} -> {:#x}", self.addr, self.value),
            ExitKind::PioOut => format!("port write {:#x} <- {:#x}", self.addr, self.value),
            ExitKind::MmioRead => format!("mmio read {:#x} -> {:#x}", self.addr, self.value),
            ExitKind::MmioWrite => format!("mmio write {:#x} <- {:#x}", self.addr, self.value),
            ExitKind::Ucall => format!("ucall {}", self.addr),
            ExitKind::Hlt => "hlt".to_string(),
            ExitKind::Completion => format!("completion at {:#x}", self.addr),
            ExitKind::Interrupt => format!("interrupt vector {:#x}", self.value),
            ExitKind::Kick => format!("kick (host-timed) to {} ns", self.value),
            ExitKind::SpinWait => format!("spin wait, time to {} ns", self.value),
        };
        write!(f, "{what} at {} ns, rip {:#x}", self.time_ns, self.rip)
    }
}

/// Writes `trace` to `path` as JSON lines, one record per line:
/// `{"kind":"pio_in","addr":1016,"value":96,"time_ns":138000,"rip":...}`.
pub fn write_json_lines(path: &std::path::Path, trace: &[ExitRecord]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in trace {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Where two traces first differ: (index, left record, right record), either
/// side `None` when that trace ended first. `None` when they are equal.
pub fn first_difference(
    a: &[ExitRecord],
    b: &[ExitRecord],
) -> Option<(usize, Option<ExitRecord>, Option<ExitRecord>)> {
    let n = a.len().max(b.len());
    (0..n).find_map(|i| {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        (x != y).then_some((i, x, y))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(kind: ExitKind, value: u64) -> ExitRecord {
        ExitRecord {
            kind,
            addr: 0x80,
            value,
            time_ns: 0,
            rip: 0xffff_ffff_8100_0000,
        }
    }

    #[test]
    fn finds_the_first_difference() {
        let a = vec![r(ExitKind::PioOut, 1), r(ExitKind::PioOut, 2)];
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b[1].value = 3;
        assert_eq!(first_difference(&a, &b).map(|d| d.0), Some(1));
        b.truncate(1);
        assert_eq!(first_difference(&a, &b), Some((1, Some(a[1]), None)));
        assert!(a[1].to_string().contains("port write 0x80 <- 0x2"));
        assert!(a[1].to_string().ends_with("rip 0xffffffff81000000"));
        b = a.clone();
        b[0].rip += 1;
        assert_eq!(first_difference(&a, &b).map(|d| d.0), Some(0));
    }

    #[test]
    fn writes_json_lines() {
        let dir = std::env::temp_dir().join(format!("lunavm-trace-{}", std::process::id()));
        let a = vec![r(ExitKind::PioIn, 0x60), r(ExitKind::Kick, 5_000_000)];
        write_json_lines(&dir, &a).unwrap();
        let text = std::fs::read_to_string(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            r#"{"kind":"pio_in","addr":128,"value":96,"time_ns":0,"rip":18446744071578845184}"#
        );
        assert!(lines[1].starts_with(r#"{"kind":"kick","#));
    }
}
