//! How one execution ended, and the signature that groups crashes: one bug
//! is one entry however many inputs reach it.

use std::collections::HashMap;

use crate::machine::{Machine, StopReason};
use crate::vm::access;
use crate::vm::regs::paging_regs;

use super::config::FuzzConfig;

/// The class of a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The guest finished normally.
    Ok,
    /// The guest crashed.
    Crash,
    /// The guest used up its exit or virtual-time budget.
    Hang,
}

impl Class {
    /// "ok", "crash" or "hang".
    pub fn name(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Crash => "crash",
            Class::Hang => "hang",
        }
    }
}

/// A crash site the fuzzer set a stop breakpoint on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopSite {
    /// The entry of a guest function (panic, report).
    Symbol(String),
    /// The handler of an exception vector.
    Vector(u8),
}

/// How one execution ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Ok, crash or hang.
    pub class: Class,
    /// What ended it: `exit`, `done`, `triple-fault`, `symbol`, `exception`,
    /// `serial`, `assert`, `emulation`, `budget`, `halt`, `scenario`, `other`.
    pub reason: String,
    /// One line for people.
    pub title: String,
    /// The guest PC the crash is attributed to (0 when none).
    pub pc: u64,
    /// Return addresses, innermost first (for the backtrace and signature).
    pub frames: Vec<u64>,
}

impl Verdict {
    /// A verdict without a location.
    pub fn new(class: Class, reason: &str, title: impl Into<String>) -> Verdict {
        Verdict {
            class,
            reason: reason.into(),
            title: title.into(),
            pc: 0,
            frames: Vec::new(),
        }
    }

    /// The grouping key: class, reason, the PC and the innermost frame (the
    /// caller, read from the stack at a function's entry: frames further
    /// out come from the frame-pointer chain, which a guest built without
    /// frame pointers leaves to chance), or the title when there is no
    /// location; 16 hex digits.
    /// Stable across lunavm versions and hosts (FNV-1a, 64-bit).
    pub fn signature(&self) -> String {
        let mut key = format!("{}/{}", self.class.name(), self.reason);
        if self.frames.is_empty() && self.pc == 0 {
            key.push('/');
            key.push_str(&self.title);
        } else {
            key.push_str(&format!("/{:x}", self.pc));
            for f in self.frames.iter().take(1) {
                key.push_str(&format!("/{f:x}"));
            }
        }
        format!("{:016x}", fnv1a64(key.as_bytes()))
    }
}

/// FNV-1a, 64-bit: a small stable hash for signatures and file names.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Reads a little-endian u64 at guest-virtual `addr` with the current page tables.
pub fn read_u64(m: &Machine, addr: u64) -> Option<u64> {
    let sregs = m.sregs().ok()?;
    let mut b = [0u8; 8];
    access::read_virt(m.memory(), &paging_regs(&sregs), addr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Return addresses from the frame-pointer chain starting at `rbp`, at
/// most `max` (stops at a null, unreadable or non-increasing frame).
pub fn frame_chain(m: &Machine, mut rbp: u64, max: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < max && rbp != 0 && rbp % 8 == 0 {
        let (Some(next), Some(ret)) = (read_u64(m, rbp), read_u64(m, rbp.wrapping_add(8))) else {
            break;
        };
        if ret == 0 {
            break;
        }
        out.push(ret);
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    out
}

/// Vectors that push an error code.
fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Guest addresses to names, for verdict titles and backtraces.
pub trait Symbolize {
    /// `name+0xoff (0xaddr)` for an instruction address.
    fn at(&self, addr: u64) -> String;
    /// The same for a return address (looked up at `addr - 1`: a call can
    /// be the last instruction of its function).
    fn ret(&self, addr: u64) -> String;
    /// Whether `addr` is a return address into known code (None: no
    /// symbols to tell).
    fn is_code(&self, addr: u64) -> Option<bool>;
}

/// The default verdict of a stop, before the scenario's `fuzz_verdict`.
pub fn classify(
    m: &Machine,
    stop: &StopReason,
    cfg: &FuzzConfig,
    sites: &HashMap<u64, StopSite>,
    sym: &dyn Symbolize,
) -> Verdict {
    let symbolize = |a: u64| sym.at(a);
    match stop {
        StopReason::GuestExit { value } if cfg.ok_status.contains(&u64::from(*value)) => {
            Verdict::new(Class::Ok, "exit", format!("guest exited with {value}"))
        }
        StopReason::GuestExit { value } => Verdict::new(
            Class::Crash,
            "exit",
            format!("guest exited with value {value:#x}"),
        ),
        StopReason::Done { status } if cfg.ok_status.contains(status) => {
            Verdict::new(Class::Ok, "done", format!("ucall DONE({status})"))
        }
        StopReason::Done { status } => Verdict::new(
            Class::Crash,
            "done",
            format!("ucall DONE with status {status:#x}"),
        ),
        StopReason::Assert { message, .. } => Verdict::new(
            Class::Crash,
            "assert",
            format!("guest assertion: {message}"),
        ),
        StopReason::Shutdown { regs } => {
            let rip = regs.get("rip").unwrap_or(0);
            let mut v = Verdict::new(
                Class::Crash,
                "triple-fault",
                format!("triple fault at {}", symbolize(rip)),
            );
            v.pc = rip;
            v
        }
        StopReason::EmulationFailure { insn, reason, .. } => {
            let mut v = Verdict::new(
                Class::Crash,
                "emulation",
                format!(
                    "KVM could not emulate {} at {}: {reason}",
                    insn.disasm,
                    symbolize(insn.linear_rip)
                ),
            );
            v.pc = insn.linear_rip;
            v
        }
        StopReason::CrashSite { addr } => match sites.get(addr) {
            Some(StopSite::Symbol(name)) => {
                let regs = m.regs().ok();
                let ret = regs.and_then(|r| read_u64(m, r.rsp)).unwrap_or(0);
                let mut frames = vec![ret];
                if let Some(r) = regs {
                    // Without frame pointers the chain is noise: keep what
                    // returns into known code.
                    frames.extend(
                        frame_chain(m, r.rbp, 8)
                            .into_iter()
                            .take_while(|&f| sym.is_code(f).unwrap_or(true)),
                    );
                }
                let mut v = Verdict::new(
                    Class::Crash,
                    "symbol",
                    format!("{name} called from {}", sym.ret(ret)),
                );
                v.pc = *addr;
                v.frames = frames;
                v
            }
            Some(StopSite::Vector(vec)) => {
                let regs = m.regs().ok();
                let off = if has_error_code(*vec) { 8 } else { 0 };
                let rip = regs
                    .and_then(|r| read_u64(m, r.rsp.wrapping_add(off)))
                    .unwrap_or(0);
                let mut v = Verdict::new(
                    Class::Crash,
                    "exception",
                    format!("exception {} at {}", vector_name(*vec), symbolize(rip)),
                );
                v.pc = rip;
                v
            }
            None => {
                let mut v = Verdict::new(
                    Class::Crash,
                    "other",
                    format!("stopped at a breakpoint at {}", symbolize(*addr)),
                );
                v.pc = *addr;
                v
            }
        },
        StopReason::SerialMatch { text, .. } => Verdict::new(
            Class::Crash,
            "serial",
            format!("serial output matched: {}", text.trim()),
        ),
        StopReason::ExitBudget { exits } if cfg.done_at_budget => {
            Verdict::new(Class::Ok, "budget", format!("ran its {exits} exits"))
        }
        StopReason::TimeBudget { ns } if cfg.done_at_budget => Verdict::new(
            Class::Ok,
            "budget",
            format!("ran its {}", crate::report::format_ns(*ns)),
        ),
        StopReason::ExitBudget { exits } => Verdict::new(
            if cfg.hang_is_crash {
                Class::Crash
            } else {
                Class::Hang
            },
            "budget",
            format!("no verdict after {exits} exits"),
        ),
        StopReason::TimeBudget { ns } => Verdict::new(
            if cfg.hang_is_crash {
                Class::Crash
            } else {
                Class::Hang
            },
            "budget",
            format!("no verdict after {}", crate::report::format_ns(*ns)),
        ),
        StopReason::Halted { rip, .. } => {
            let mut v = Verdict::new(
                if cfg.hang_is_crash {
                    Class::Crash
                } else {
                    Class::Hang
                },
                "halt",
                format!("halted for good at {}", symbolize(*rip)),
            );
            v.pc = *rip;
            v
        }
        other => Verdict::new(Class::Crash, "other", other.describe()),
    }
}

/// "#GP (13)" and friends.
pub fn vector_name(v: u8) -> String {
    let name = match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        _ => return format!("vector {v}"),
    };
    format!("{name} ({v})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_groups_by_location_not_title() {
        let mut a = Verdict::new(Class::Crash, "symbol", "panic called from 0x1000");
        a.pc = 0x2000;
        a.frames = vec![0x1000, 0x3000];
        let mut b = a.clone();
        b.title = "panic called from 0x1000 (second input)".into();
        assert_eq!(a.signature(), b.signature());
        b.frames[1] = 0x3008;
        assert_eq!(
            a.signature(),
            b.signature(),
            "outer frames do not split a bug"
        );
        b.frames[0] = 0x1004;
        assert_ne!(a.signature(), b.signature());
        let c = Verdict::new(Class::Crash, "serial", "matched: BUG");
        let d = Verdict::new(Class::Crash, "serial", "matched: Oops");
        assert_ne!(c.signature(), d.signature());
    }

    #[test]
    fn error_code_vectors() {
        assert!(has_error_code(14) && has_error_code(13) && has_error_code(8));
        assert!(!has_error_code(6) && !has_error_code(0) && !has_error_code(3));
        assert_eq!(vector_name(13), "#GP (13)");
        assert_eq!(vector_name(99), "vector 99");
    }
}
