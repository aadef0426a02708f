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

impl ExitKind {
    /// Whether the guest caused it (it counts as a guest exit and moves
    /// virtual time by its fixed cost).
    pub fn guest_caused(self) -> bool {
        matches!(
            self,
            ExitKind::PioIn
                | ExitKind::PioOut
                | ExitKind::MmioRead
                | ExitKind::MmioWrite
                | ExitKind::Ucall
                | ExitKind::Completion
        )
    }
}

/// RFLAGS bits single-stepping may change (TF, RF): left out of marks, so a
/// stepped exit and a native one compare equal.
pub const STEP_FLAGS: u64 = crate::vm::regs::RFLAGS_TF | crate::vm::regs::RFLAGS_RF;

/// What a mark records of an exit besides the registers.
#[derive(Clone, Copy, Debug)]
pub struct MarkInput {
    /// The guest-exit count with this exit.
    pub index: u64,
    /// Its kind.
    pub kind: ExitKind,
    /// Port, address or command.
    pub addr: u64,
    /// Value read or written.
    pub value: u64,
    /// Virtual time after it.
    pub time_ns: u64,
    /// Interrupts injected so far.
    pub interrupts: u64,
}

/// The mark of one guest-caused exit: what it was and a hash of the state
/// (for reverse execution: a replay must produce the same marks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitMark {
    /// The guest-exit count with this exit (the first exit is 1).
    pub index: u64,
    /// Its kind.
    pub kind: ExitKind,
    /// Port, address or command.
    pub addr: u64,
    /// Value read or written.
    pub value: u64,
    /// Hash of the above, virtual time, the interrupts injected so far and
    /// the general and special registers.
    pub hash: u64,
}

impl ExitMark {
    /// The mark of an exit with the vCPU's registers (None when KVM would
    /// not give them: hashed as absent).
    pub fn new(
        input: MarkInput,
        regs: Option<&kvm_bindings::kvm_regs>,
        sregs: Option<&kvm_bindings::kvm_sregs>,
    ) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (input.index, input.kind as u8, input.addr, input.value).hash(&mut h);
        (input.time_ns, input.interrupts).hash(&mut h);
        if let Some(r) = regs {
            [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15, r.rip,
            ]
            .hash(&mut h);
            (r.rflags & !STEP_FLAGS).hash(&mut h);
        }
        if let Some(s) = sregs {
            for seg in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt] {
                (
                    seg.base,
                    seg.limit,
                    seg.selector,
                    seg.type_,
                    seg.dpl,
                    seg.l,
                    seg.db,
                )
                    .hash(&mut h);
            }
            (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit).hash(&mut h);
            [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer].hash(&mut h);
        }
        ExitMark {
            index: input.index,
            kind: input.kind,
            addr: input.addr,
            value: input.value,
            hash: h.finish(),
        }
    }
}

impl std::fmt::Display for ExitMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = describe(self.kind, self.addr, self.value);
        write!(f, "{what} (state hash {:016x})", self.hash)
    }
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

/// An exit in words (without its time).
fn describe(kind: ExitKind, addr: u64, value: u64) -> String {
    match kind {
        ExitKind::PioIn => format!("port read {addr:#x} -> {value:#x}"),
        ExitKind::PioOut => format!("port write {addr:#x} <- {value:#x}"),
        ExitKind::MmioRead => format!("mmio read {addr:#x} -> {value:#x}"),
        ExitKind::MmioWrite => format!("mmio write {addr:#x} <- {value:#x}"),
        ExitKind::Ucall => format!("ucall {addr}"),
        ExitKind::Hlt => "hlt".to_string(),
        ExitKind::Completion => format!("completion at {addr:#x}"),
        ExitKind::Interrupt => format!("interrupt vector {value:#x}"),
        ExitKind::Kick => format!("kick (host-timed) to {value} ns"),
        ExitKind::SpinWait => format!("spin wait, time to {value} ns"),
    }
}

impl std::fmt::Display for ExitRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = describe(self.kind, self.addr, self.value);
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
