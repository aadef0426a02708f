//! The process exit codes of `lunavm`, in one table.
//!
//! A guest that writes a value to the debug-exit port (0xf4) makes lunavm exit with
//! that value truncated to its low 8 bits (or with QEMU's `(value << 1) | 1` under
//! `--qemu-exit-codes`). lunavm's own outcomes use the fixed codes below. A guest
//! value can collide with one of them; the JSON report (`--report`) is the
//! unambiguous record.

/// The run ended the way the guest asked, with status 0.
pub const SUCCESS: u8 = 0;
/// A scenario's assertion failed, or `lunavm test` had a failing test.
pub const TEST_FAILED: u8 = 1;
/// Bad input: a malformed or unreadable kernel, a bad option, a bad script.
pub const BAD_INPUT: u8 = 2;
/// The host cannot run guests: /dev/kvm missing or inaccessible, a KVM call failed.
pub const HOST_ERROR: u8 = 3;
/// The guest asserted a failure through the ucall port (`UCALL_ASSERT`).
pub const GUEST_ASSERT: u8 = 70;
/// The guest shut the machine down (triple fault).
pub const SHUTDOWN: u8 = 71;
/// KVM could not emulate an instruction and lunavm could not complete it.
pub const EMULATION_FAILURE: u8 = 72;
/// The exit or virtual-time budget was used up.
pub const BUDGET_EXHAUSTED: u8 = 73;
/// The guest halted with nothing left that could wake it.
pub const HALTED: u8 = 74;
/// Reserved: a `--repeat` determinism check found runs that differ.
pub const DIVERGENCE: u8 = 75;
/// KVM failed to enter the guest (bad vCPU state) or reported an unexpected exit.
pub const VM_ERROR: u8 = 76;
/// A Lua scenario raised an error (syntax, runtime, bad API use).
pub const SCRIPT_ERROR: u8 = 77;

/// One row of the table, for the README and `lunavm --help`.
pub struct Entry {
    /// The code.
    pub code: u8,
    /// What it means.
    pub meaning: &'static str,
}

/// Every code lunavm itself uses.
pub const TABLE: &[Entry] = &[
    Entry {
        code: SUCCESS,
        meaning: "guest finished with status 0",
    },
    Entry {
        code: BAD_INPUT,
        meaning: "bad input (kernel image, option, script)",
    },
    Entry {
        code: HOST_ERROR,
        meaning: "host cannot run guests (/dev/kvm, KVM call failed)",
    },
    Entry {
        code: GUEST_ASSERT,
        meaning: "guest assertion failed (ucall ASSERT)",
    },
    Entry {
        code: SHUTDOWN,
        meaning: "guest triple-faulted (shutdown)",
    },
    Entry {
        code: EMULATION_FAILURE,
        meaning: "instruction KVM could not emulate and lunavm could not complete",
    },
    Entry {
        code: BUDGET_EXHAUSTED,
        meaning: "exit or virtual-time budget used up",
    },
    Entry {
        code: HALTED,
        meaning: "guest halted with nothing to wake it",
    },
    Entry {
        code: DIVERGENCE,
        meaning: "determinism check found differing runs",
    },
    Entry {
        code: VM_ERROR,
        meaning: "KVM could not enter the guest or gave an unexpected exit",
    },
];

/// Maps a guest's debug-exit value to the process exit code.
pub fn from_guest_value(value: u32, qemu_style: bool) -> u8 {
    let v = if qemu_style { (value << 1) | 1 } else { value };
    (v & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_values_truncate() {
        assert_eq!(from_guest_value(0, false), 0);
        assert_eq!(from_guest_value(0x1ff, false), 0xff);
        assert_eq!(from_guest_value(0, true), 1);
        assert_eq!(from_guest_value(3, true), 7);
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<u8> = TABLE.iter().map(|e| e.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), TABLE.len());
    }
}
