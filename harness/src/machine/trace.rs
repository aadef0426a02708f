//! The exit trace: one record per guest-caused exit (and per kick), for the
//! `--repeat` determinism check, which compares traces record by record.

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
    /// A forward-progress kick (host-timed).
    Kick,
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
            ExitKind::Kick => "kick (host-timed)".to_string(),
        };
        write!(f, "{what} at {} ns", self.time_ns)
    }
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
    }
}
