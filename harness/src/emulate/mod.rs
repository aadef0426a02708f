//! Completing instructions KVM's emulator cannot run.
//!
//! On software-nested KVM, guest kernel-mode code runs in KVM's instruction
//! emulator, which stops with an emulation failure on a few instructions. This
//! module is the one explicit table of what lunavm finishes in their place, each
//! entry counted and individually switchable off (`--no-complete`):
//!
//! | entry        | what lunavm does                                              |
//! |--------------|---------------------------------------------------------------|
//! | `int3`       | advance RIP past it, inject #BP                               |
//! | `intn`       | `int imm8`: advance RIP, inject the software interrupt        |
//! | `fwait`      | no pending x87 exception: step over; pending and CR0.NE: #MF  |
//! | `cmpxchg16b` | perform the compare-exchange on guest memory (one vCPU)       |
//! | `xgetbv`     | ECX=0: return XCR0; CR4.OSXSAVE clear: #UD                    |
//! | `rdrand`     | a value from the run's seed, CF=1                             |
//! | `rdseed`     | a value from the run's seed, CF=1                             |
//! | `clac`       | `clac`/`stac`: clear or set RFLAGS.AC                         |
//! | `invalid`    | an encoding the decoder rejects: inject #UD, as hardware would |
//! | `syscall`    | SYSCALL from user mode left at CPL3 by the host: finish the   |
//! |              | switch to CPL0 (not an emulation failure: see                 |
//! |              | `machine::syscall_compat`)                                    |
//!
//! An instruction whose feature the effective CPUID (measured in the guest) lacks
//! gets #UD, as hardware would; an invalid encoding gets #UD; anything else stops
//! the run with a clear report.

mod ops;

use std::collections::BTreeMap;

use iced_x86::{Decoder, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

use crate::entropy::Entropy;
use crate::vm::cpu_probe::EffectiveCpuid;
use crate::vm::memory::GuestMem;

/// One entry of the completion table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// `int3`.
    Int3,
    /// `int imm8`.
    IntN,
    /// `fwait`/`wait`.
    Fwait,
    /// `cmpxchg16b m128`.
    Cmpxchg16b,
    /// `xgetbv`.
    Xgetbv,
    /// `rdrand r`.
    Rdrand,
    /// `rdseed r`.
    Rdseed,
    /// `clac` and `stac`.
    Clac,
    /// An invalid encoding (#UD injected).
    Invalid,
    /// A SYSCALL from user mode that the host left at CPL3, finished by
    /// `machine::syscall_compat` (it never reaches [`Completer::complete`]).
    Syscall,
}

impl Entry {
    /// Every entry, in table order.
    pub const ALL: [Entry; 10] = [
        Entry::Int3,
        Entry::IntN,
        Entry::Fwait,
        Entry::Cmpxchg16b,
        Entry::Xgetbv,
        Entry::Rdrand,
        Entry::Rdseed,
        Entry::Clac,
        Entry::Invalid,
        Entry::Syscall,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Entry::Int3 => "int3",
            Entry::IntN => "intn",
            Entry::Fwait => "fwait",
            Entry::Cmpxchg16b => "cmpxchg16b",
            Entry::Xgetbv => "xgetbv",
            Entry::Rdrand => "rdrand",
            Entry::Rdseed => "rdseed",
            Entry::Clac => "clac",
            Entry::Invalid => "invalid",
            Entry::Syscall => "syscall",
        }
    }

    /// The entry named `name`.
    pub fn from_name(name: &str) -> Option<Entry> {
        Entry::ALL.into_iter().find(|e| e.name() == name)
    }

    fn for_mnemonic(m: Mnemonic) -> Option<Entry> {
        Some(match m {
            Mnemonic::Int3 => Entry::Int3,
            Mnemonic::Int => Entry::IntN,
            Mnemonic::Wait => Entry::Fwait,
            Mnemonic::Cmpxchg16b => Entry::Cmpxchg16b,
            Mnemonic::Xgetbv => Entry::Xgetbv,
            Mnemonic::Rdrand => Entry::Rdrand,
            Mnemonic::Rdseed => Entry::Rdseed,
            Mnemonic::Clac | Mnemonic::Stac => Entry::Clac,
            _ => return None,
        })
    }
}

/// What was done about an emulation failure.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The instruction was completed (or its architectural exception injected).
    Completed {
        /// The table entry used.
        entry: Entry,
        /// The exception injected instead of completing, if any (6 = #UD, ...).
        injected: Option<u8>,
    },
    /// Not completed: the run stops.
    Unhandled {
        /// Why, in words.
        reason: String,
    },
}

/// The decoded failing instruction, for reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FailedInstruction {
    /// Linear address of the instruction.
    pub linear_rip: u64,
    /// The bytes read at RIP (up to 15; fewer if the page ends unmapped).
    pub bytes: Vec<u8>,
    /// Intel-syntax disassembly, or "(invalid)" / "(unreadable)".
    pub disasm: String,
    /// Code bitness (16, 32 or 64).
    pub bitness: u32,
}

/// Errors of the completion path itself (KVM calls).
#[derive(Debug, thiserror::Error)]
#[error("Completing {what}: KVM refused to {action}")]
pub struct CompletionError {
    /// The instruction.
    pub what: String,
    /// The KVM action.
    pub action: &'static str,
    /// The cause.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The completion table's state: which entries are on, and their counts.
#[derive(Clone, Debug)]
pub struct Completer {
    disabled: Vec<Entry>,
    counts: BTreeMap<Entry, u64>,
    entropy: Entropy,
}

/// Everything one completion needs.
pub struct Context<'a> {
    /// The vCPU.
    pub vcpu: &'a VcpuFd,
    /// Guest RAM.
    pub mem: &'a GuestMem,
    /// Registers at the failure.
    pub regs: kvm_regs,
    /// Special registers at the failure.
    pub sregs: kvm_sregs,
    /// The CPUID the guest really sees.
    pub cpuid: &'a EffectiveCpuid,
}

impl Completer {
    /// A table with `disabled` entries switched off, drawing randomness from `seed`.
    pub fn new(disabled: Vec<Entry>, seed: u64) -> Self {
        Completer {
            disabled,
            counts: BTreeMap::new(),
            entropy: Entropy::new(seed),
        }
    }

    /// Whether `entry` is switched off.
    pub fn is_disabled(&self, entry: Entry) -> bool {
        self.disabled.contains(&entry)
    }

    /// Counts one use of `entry` completed outside [`Completer::complete`].
    pub fn count(&mut self, entry: Entry) {
        *self.counts.entry(entry).or_default() += 1;
    }

    /// How often each entry was used.
    pub fn counts(&self) -> &BTreeMap<Entry, u64> {
        &self.counts
    }

    /// The counters and the entropy stream, for snapshots.
    pub fn state(&self) -> (BTreeMap<Entry, u64>, Entropy) {
        (self.counts.clone(), self.entropy.clone())
    }

    /// Restores what `state` returned.
    pub fn set_state(&mut self, counts: BTreeMap<Entry, u64>, entropy: Entropy) {
        self.counts = counts;
        self.entropy = entropy;
    }

    /// Decodes the instruction at RIP from `bytes`.
    pub fn decode(bytes: &[u8], bitness: u32, rip: u64) -> Instruction {
        let mut d = Decoder::with_ip(bitness, bytes, rip, DecoderOptions::NONE);
        d.decode()
    }

    /// Disassembles an instruction in Intel syntax.
    pub fn disassemble(insn: &Instruction, have_bytes: bool) -> String {
        if !have_bytes {
            return "(unreadable)".into();
        }
        if insn.is_invalid() {
            return "(invalid)".into();
        }
        let mut s = String::new();
        IntelFormatter::new().format(insn, &mut s);
        s
    }

    /// Tries to complete `insn`, which KVM failed to emulate.
    pub fn complete(
        &mut self,
        ctx: &Context<'_>,
        insn: &Instruction,
    ) -> Result<Outcome, CompletionError> {
        let entry = if insn.is_invalid() {
            Some(Entry::Invalid)
        } else {
            Entry::for_mnemonic(insn.mnemonic())
        };
        let Some(entry) = entry else {
            return Ok(Outcome::Unhandled {
                reason: format!("no completion for {:?} in lunavm's table", insn.mnemonic()),
            });
        };
        if self.disabled.contains(&entry) {
            return Ok(Outcome::Unhandled {
                reason: format!(
                    "completion of {} is switched off (--no-complete)",
                    entry.name()
                ),
            });
        }
        let result =
            ops::complete(ctx, insn, entry, &mut self.entropy).map_err(|e| e.into_error(insn))?;
        match result {
            ops::Done::Completed(injected) => {
                *self.counts.entry(entry).or_default() += 1;
                Ok(Outcome::Completed { entry, injected })
            }
            ops::Done::Unhandled(reason) => Ok(Outcome::Unhandled { reason }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_round_trip() {
        for e in Entry::ALL {
            assert_eq!(Entry::from_name(e.name()), Some(e));
        }
        assert_eq!(Entry::from_name("nope"), None);
    }

    #[test]
    fn decodes_the_table_instructions() {
        let cases: &[(&[u8], Entry)] = &[
            (&[0xcc], Entry::Int3),
            (&[0xcd, 0x80], Entry::IntN),
            (&[0x9b], Entry::Fwait),
            (&[0xf0, 0x48, 0x0f, 0xc7, 0x0f], Entry::Cmpxchg16b),
            (&[0x0f, 0x01, 0xd0], Entry::Xgetbv),
            (&[0x48, 0x0f, 0xc7, 0xf0], Entry::Rdrand),
            (&[0x48, 0x0f, 0xc7, 0xf8], Entry::Rdseed),
            (&[0x0f, 0x01, 0xca], Entry::Clac),
            (&[0x0f, 0x01, 0xcb], Entry::Clac),
        ];
        for (bytes, entry) in cases {
            let insn = Completer::decode(bytes, 64, 0x1000);
            assert_eq!(
                Entry::for_mnemonic(insn.mnemonic()),
                Some(*entry),
                "{bytes:x?}"
            );
            assert_eq!(insn.len(), bytes.len());
        }
        let bad = Completer::decode(&[0x0f, 0x0b], 64, 0);
        assert_eq!(
            Entry::for_mnemonic(bad.mnemonic()),
            None,
            "ud2 is not completed"
        );
        assert_eq!(
            Completer::disassemble(&Completer::decode(&[0xcd, 0x80], 64, 0), true),
            "int 80h"
        );
    }
}
