//! Frame-pointer backtraces: the chain of saved RBP values on the guest's
//! stack, read through the vCPU's page tables, each return address resolved
//! with a [`Symbols`] table.
//!
//! The walk expects code built with frame pointers (Linux with
//! `CONFIG_FRAME_POINTER`, `gcc -fno-omit-frame-pointer`): every function
//! starts with `push %rbp; mov %rsp,%rbp`, so `[rbp]` is the caller's RBP and
//! `[rbp + 8]` the return address into the caller. When RIP is at the very
//! start of a function (a breakpoint on a function by name), or just after
//! its `push %rbp`, the frame is not built yet: the return address is read
//! at `[rsp]` (or `[rsp + 8]`) instead, so the immediate caller is not lost.
//!
//! The walk stops at a zero, misaligned or unreadable RBP, at one that does
//! not move up the stack, at a zero return address, or after the frame
//! limit. It does not cross exception or interrupt frames that do not save
//! RBP in a chain (Linux marks those with an odd RBP, where the walk stops).

use super::Symbols;
use crate::machine::{Machine, MachineError};
use crate::vm::access;
use crate::vm::memory::GuestMem;
use crate::vm::paging::PagingRegs;
use crate::vm::regs::paging_regs;

/// Errors of taking a backtrace of the machine.
#[derive(Debug, thiserror::Error)]
pub enum BacktraceError {
    /// The vCPU's registers could not be read.
    #[error("Cannot read the vCPU registers for a backtrace")]
    Registers(#[source] MachineError),
}

/// The registers a walk starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameRegs {
    /// The instruction pointer (frame 0).
    pub rip: u64,
    /// The stack pointer.
    pub rsp: u64,
    /// The frame pointer.
    pub rbp: u64,
}

/// One frame of a backtrace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The frame's code address: RIP for frame 0, a return address after.
    pub addr: u64,
    /// The function, when the address resolves.
    pub function: Option<String>,
    /// The offset of `addr` into `function` (0 without one).
    pub offset: u64,
}

impl Frame {
    /// `function+0x12` (`function` at offset 0), or the address in hex when
    /// it resolves to no symbol.
    pub fn symbol(&self) -> String {
        match &self.function {
            Some(f) if self.offset == 0 => f.clone(),
            Some(f) => format!("{f}+{:#x}", self.offset),
            None => format!("{:#x}", self.addr),
        }
    }
}

impl std::fmt::Display for Frame {
    /// `0xffffffff81307125 panic`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#018x} {}", self.addr, self.symbol())
    }
}

/// A frame for code address `addr`. A return address is resolved from
/// `addr - 1` (the call instruction, which may be the last of its function:
/// a call to a noreturn function), its offset still counted to `addr`.
fn frame(syms: &Symbols, addr: u64, is_return: bool) -> Frame {
    let look = if is_return {
        addr.wrapping_sub(1)
    } else {
        addr
    };
    match syms.resolve(look) {
        Some(r) => Frame {
            addr,
            function: Some(r.name.to_string()),
            offset: addr - r.addr,
        },
        None => Frame {
            addr,
            function: None,
            offset: 0,
        },
    }
}

fn read_u64(mem: &GuestMem, pregs: &PagingRegs, vaddr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    access::read_virt(mem, pregs, vaddr, &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// The backtrace from `regs`, at most `max` frames (frame 0 is RIP), reading
/// the stack in `mem` through the page tables `pregs` describe.
pub fn backtrace_from(
    mem: &GuestMem,
    pregs: &PagingRegs,
    regs: FrameRegs,
    syms: &Symbols,
    max: usize,
) -> Vec<Frame> {
    let mut frames = Vec::new();
    if max == 0 {
        return frames;
    }
    frames.push(frame(syms, regs.rip, false));
    // In the prologue the caller's return address is still at the stack top.
    let prologue_slot = syms.resolve(regs.rip).and_then(|r| match r.offset {
        0 => Some(regs.rsp),
        1 => {
            let mut op = [0u8; 1];
            let pushed = access::read_virt(mem, pregs, r.addr, &mut op).is_ok() && op[0] == 0x55;
            pushed.then(|| regs.rsp.wrapping_add(8))
        }
        _ => None,
    });
    if let Some(slot) = prologue_slot {
        match read_u64(mem, pregs, slot) {
            Some(ret) if ret != 0 => frames.push(frame(syms, ret, true)),
            _ => return frames,
        }
    }
    let mut rbp = regs.rbp;
    while frames.len() < max {
        if rbp == 0 || rbp % 8 != 0 {
            break;
        }
        let (Some(next), Some(ret)) = (
            read_u64(mem, pregs, rbp),
            read_u64(mem, pregs, rbp.wrapping_add(8)),
        ) else {
            break;
        };
        if ret == 0 {
            break;
        }
        frames.push(frame(syms, ret, true));
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    frames.truncate(max);
    frames
}

/// The backtrace of the machine's vCPU as it stands (its RIP, RSP and RBP,
/// through its current page tables), at most `max` frames.
pub fn backtrace(
    machine: &Machine,
    syms: &Symbols,
    max: usize,
) -> Result<Vec<Frame>, BacktraceError> {
    let r = machine.regs().map_err(BacktraceError::Registers)?;
    let s = machine.sregs().map_err(BacktraceError::Registers)?;
    let regs = FrameRegs {
        rip: r.rip,
        rsp: r.rsp,
        rbp: r.rbp,
    };
    Ok(backtrace_from(
        machine.memory(),
        &paging_regs(&s),
        regs,
        syms,
        max,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::Symbol;
    use crate::vm::memory;

    fn syms() -> Symbols {
        let f = |name: &str, addr: u64, size: u64| Symbol {
            name: name.into(),
            addr,
            size: Some(size),
            code: true,
            global: true,
        };
        Symbols::from_symbols(vec![
            f("leaf", 0x1000, 0x40),
            f("middle", 0x1100, 0x80),
            f("outer", 0x1200, 0x80),
            f("noreturn_caller", 0x1300, 0x10),
        ])
        .unwrap()
    }

    fn put(mem: &GuestMem, addr: u64, v: u64) {
        assert!(memory::write_phys(mem, addr, &v.to_le_bytes()));
    }

    /// A stack (paging off: virtual = physical): outer's frame at 0x8f00
    /// (its RBP saved as 0, the chain's end), middle's at 0x8e00.
    fn stack() -> GuestMem {
        let mem = memory::create(4 << 20).unwrap();
        // middle's frame: saved RBP = outer's frame, return into outer.
        put(&mem, 0x8e00, 0x8f00);
        put(&mem, 0x8e08, 0x1234);
        // outer's frame: saved RBP 0 (end), return into noreturn_caller at
        // its very end (a call to a noreturn function was its last insn).
        put(&mem, 0x8f00, 0);
        put(&mem, 0x8f08, 0x1310);
        // leaf's code starts with push %rbp.
        assert!(memory::write_phys(&mem, 0x1000, &[0x55, 0x48, 0x89, 0xe5]));
        mem
    }

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(Frame::symbol).collect()
    }

    #[test]
    fn walks_the_rbp_chain() {
        let mem = stack();
        let regs = FrameRegs {
            rip: 0x1010,
            rsp: 0x8d00,
            rbp: 0x8e00,
        };
        let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 16);
        // The return address 0x1310 is resolved from 0x130f: noreturn_caller.
        assert_eq!(
            names(&f),
            ["leaf+0x10", "outer+0x34", "noreturn_caller+0x10"]
        );
        assert_eq!(f[1].addr, 0x1234);
        assert_eq!(f[0].to_string(), "0x0000000000001010 leaf+0x10");
        // The limit holds.
        let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 2);
        assert_eq!(names(&f), ["leaf+0x10", "outer+0x34"]);
        assert!(backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 0).is_empty());
    }

    #[test]
    fn at_a_function_entry_the_caller_comes_from_the_stack_top() {
        let mem = stack();
        // A breakpoint on `leaf`: its caller `middle` pushed the return
        // address, RBP is still middle's frame.
        put(&mem, 0x8d00, 0x1150);
        let regs = FrameRegs {
            rip: 0x1000,
            rsp: 0x8d00,
            rbp: 0x8e00,
        };
        let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 16);
        assert_eq!(
            names(&f),
            ["leaf", "middle+0x50", "outer+0x34", "noreturn_caller+0x10"]
        );
        // After the push %rbp: the return address one slot up.
        put(&mem, 0x8cf8, 0x8e00);
        let regs = FrameRegs {
            rip: 0x1001,
            rsp: 0x8cf8,
            rbp: 0x8e00,
        };
        let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 16);
        assert_eq!(
            names(&f),
            [
                "leaf+0x1",
                "middle+0x50",
                "outer+0x34",
                "noreturn_caller+0x10"
            ]
        );
    }

    #[test]
    fn stops_at_bad_frame_pointers_and_unknown_code() {
        let mem = stack();
        // An RBP chain that points down the stack stops the walk.
        put(&mem, 0x8e00, 0x8d00);
        let regs = FrameRegs {
            rip: 0x5000,
            rsp: 0x8d00,
            rbp: 0x8e00,
        };
        let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 16);
        assert_eq!(names(&f), ["0x5000", "outer+0x34"]);
        for rbp in [0, 0x8e01, 0xffff_ffff_0000] {
            let regs = FrameRegs { rbp, ..regs };
            let f = backtrace_from(&mem, &PagingRegs::default(), regs, &syms(), 16);
            assert_eq!(names(&f), ["0x5000"], "rbp {rbp:#x}");
        }
    }
}
