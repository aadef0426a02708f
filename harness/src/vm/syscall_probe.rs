//! Measures whether the host runs SYSCALL and SYSRET correctly, by executing
//! them in the guest before boot.
//!
//! Some hosts (software-nested KVM) run guest user mode natively but get the
//! SYSCALL transition wrong: the vCPU jumps to LSTAR with RCX, R11 and RFLAGS
//! set as they should be, but stays at CPL3. The probe enters CPL3 in long
//! mode on a scratch identity map (one user-accessible 2 MiB page), executes
//! `syscall`, and at LSTAR `out 0x80` lets the VMM read CS: DPL 0 is right,
//! DPL 3 is the fault. It then returns with `sysretq` (from CPL0, after
//! putting the vCPU there itself if the host did not) to `out 0x81`, which
//! must run at CPL3. IOPL 3 lets both port accesses run at either level; the
//! IDT is empty, so any exception ends the probe with a shutdown, which it
//! reports as such.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::memory::{self, GuestMem};
use super::regs;
use crate::layout::{BOOT_GDT_ADDR, CPU_PROBE_ADDR, SYSCALL_PROBE_TABLES_ADDR};

/// MSR STAR: SYSCALL/SYSRET selectors.
pub const MSR_STAR: u32 = 0xc000_0081;
/// MSR LSTAR: the 64-bit SYSCALL entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// MSR SFMASK (FMASK): the RFLAGS bits SYSCALL clears.
pub const MSR_SFMASK: u32 = 0xc000_0084;

/// Offset of the entry code (LSTAR) in the probe page.
const ENTRY_OFFSET: u64 = 0x40;
/// User code: `syscall; out 0x81, al`.
const USER_CODE: [u8; 4] = [0x0f, 0x05, 0xe6, 0x81];
/// Entry code: `out 0x80, al; sysretq`.
const ENTRY_CODE: [u8; 5] = [0xe6, 0x80, 0x48, 0x0f, 0x07];
/// Linux's selectors: kernel CS 0x10 (SS 0x18), SYSRET base 0x23 (user SS
/// 0x2b, user CS 0x33). Some hosts assume them for user mode.
const STAR: u64 = (0x23 << 48) | (0x10 << 32);
const USER_CS: u16 = 0x33;
const USER_SS: u16 = 0x2b;
/// RFLAGS of the user code: IOPL 3, bit 1.
const USER_RFLAGS: u64 = 0x3002;

/// Errors of probing SYSCALL and SYSRET.
#[derive(Debug, thiserror::Error)]
pub enum SyscallProbeError {
    /// A KVM call failed.
    #[error("SYSCALL probe: KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The scratch pages are not RAM.
    #[error("SYSCALL probe: scratch page {0:#x} is not in guest RAM")]
    Scratch(u64),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SyscallProbeError {
    move |source| SyscallProbeError::Kvm { what, source }
}

/// What one transition did on this host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// It reached the expected privilege level.
    Works,
    /// It reached the next instruction at the wrong privilege level (CPL).
    WrongCpl(u8),
    /// It did not get there: the exit seen instead.
    Failed(String),
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transition::Works => write!(f, "works"),
            Transition::WrongCpl(cpl) => write!(f, "wrong CPL {cpl}"),
            Transition::Failed(exit) => write!(f, "failed: {exit}"),
        }
    }
}

/// What the host does with SYSCALL and SYSRET.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyscallProbe {
    /// SYSCALL from CPL3.
    pub syscall: Transition,
    /// SYSRET from CPL0 (reached after putting the vCPU at CPL0 when SYSCALL
    /// did not).
    pub sysret: Transition,
}

impl SyscallProbe {
    /// Whether SYSCALL from user mode needs the VMM to finish it.
    pub fn syscall_needs_completion(&self) -> bool {
        self.syscall != Transition::Works
    }
}

fn user_seg(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// STAR[47:32] without its RPL: the kernel code selector.
fn star_kernel_selector(star: u64) -> u16 {
    u16::try_from((star >> 32) & 0xfffc).unwrap_or_default()
}

/// The flat 64-bit kernel code segment SYSCALL loads from STAR[47:32].
pub fn kernel_code_segment(star: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: star_kernel_selector(star),
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    }
}

/// The flat kernel stack segment SYSCALL loads (selector STAR[47:32] + 8).
pub fn kernel_stack_segment(star: u64) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: star_kernel_selector(star).wrapping_add(8),
        type_: 0x3,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    }
}

fn set_msrs(vcpu: &VcpuFd, values: &[(u32, u64)]) -> Result<(), SyscallProbeError> {
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| SyscallProbeError::Kvm {
        what: "build the MSR list",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vcpu.set_msrs(&msrs).map_err(kvm("set the SYSCALL MSRs"))?;
    Ok(())
}

/// Which port the vCPU wrote, and its CPL then; or the exit it gave instead.
fn run_to_port(vcpu: &mut VcpuFd) -> Result<Result<(u16, u8), String>, SyscallProbeError> {
    let port = match vcpu.run() {
        Ok(VcpuExit::IoOut(port, _)) => port,
        Ok(other) => return Ok(Err(format!("{other:?}"))),
        Err(e) => return Ok(Err(e.to_string())),
    };
    let sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    Ok(Ok((port, sregs.cs.dpl)))
}

/// Executes SYSCALL from CPL3 and SYSRET from CPL0 in the guest.
///
/// Leaves the vCPU in long mode with clobbered registers and the SYSCALL
/// MSRs zero; the loader sets the full entry state afterwards. The scratch
/// pages are zeroed again.
pub fn probe(vcpu: &mut VcpuFd, mem: &GuestMem) -> Result<SyscallProbe, SyscallProbeError> {
    let pml4 = SYSCALL_PROBE_TABLES_ADDR;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    // Present, writable, user; the PD entry maps 0-2 MiB as one large page.
    let user_rw = 0b111u64;
    let writes: [(u64, &[u8]); 5] = [
        (pml4, &(pdpt | user_rw).to_le_bytes()),
        (pdpt, &(pd | user_rw).to_le_bytes()),
        (pd, &(user_rw | 0x80).to_le_bytes()),
        (CPU_PROBE_ADDR, &USER_CODE),
        (CPU_PROBE_ADDR + ENTRY_OFFSET, &ENTRY_CODE),
    ];
    for (addr, bytes) in writes {
        if !memory::write_phys(mem, addr, bytes) {
            return Err(SyscallProbeError::Scratch(addr));
        }
    }
    let result = run_probe(vcpu, pml4);
    for (addr, bytes) in writes {
        memory::write_phys(mem, addr, &vec![0; bytes.len()]);
    }
    set_msrs(vcpu, &[(MSR_STAR, 0), (MSR_LSTAR, 0), (MSR_SFMASK, 0)])?;
    result
}

fn run_probe(vcpu: &mut VcpuFd, cr3: u64) -> Result<SyscallProbe, SyscallProbeError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    regs::set_long_mode_64(&mut sregs, BOOT_GDT_ADDR, cr3);
    sregs.efer |= 1; // SCE
    sregs.cs = user_seg(USER_CS, true);
    sregs.ss = user_seg(USER_SS, false);
    sregs.ds = user_seg(USER_SS, false);
    sregs.es = user_seg(USER_SS, false);
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    set_msrs(
        vcpu,
        &[
            (MSR_STAR, STAR),
            (MSR_LSTAR, CPU_PROBE_ADDR + ENTRY_OFFSET),
            (MSR_SFMASK, 0),
        ],
    )?;
    let regs = kvm_regs {
        rip: CPU_PROBE_ADDR,
        rsp: CPU_PROBE_ADDR + 0x800,
        rflags: USER_RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set registers"))?;

    let syscall = match run_to_port(vcpu)? {
        Ok((0x80, 0)) => Transition::Works,
        Ok((0x80, cpl)) => Transition::WrongCpl(cpl),
        Ok((port, _)) => Transition::Failed(format!("an exit at port {port:#x}")),
        Err(exit) => Transition::Failed(exit),
    };
    match &syscall {
        Transition::Works => {}
        Transition::WrongCpl(_) => {
            // Finish the transition as lunavm's compatibility path does.
            let mut s = vcpu.get_sregs().map_err(kvm("read sregs"))?;
            s.cs = kernel_code_segment(STAR);
            s.ss = kernel_stack_segment(STAR);
            vcpu.set_sregs(&s).map_err(kvm("set sregs"))?;
        }
        Transition::Failed(_) => {
            return Ok(SyscallProbe {
                syscall,
                sysret: Transition::Failed("not reached".into()),
            })
        }
    }
    let sysret = match run_to_port(vcpu)? {
        Ok((0x81, 3)) => Transition::Works,
        Ok((0x81, cpl)) => Transition::WrongCpl(cpl),
        Ok((port, _)) => Transition::Failed(format!("an exit at port {port:#x}")),
        Err(exit) => Transition::Failed(exit),
    };
    Ok(SyscallProbe { syscall, sysret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_segments_come_from_star() {
        let cs = kernel_code_segment(STAR);
        let ss = kernel_stack_segment(STAR);
        assert_eq!((cs.selector, cs.dpl, cs.l), (0x10, 0, 1));
        assert_eq!((ss.selector, ss.dpl, ss.db), (0x18, 0, 1));
        // An RPL in STAR does not reach the selector.
        assert_eq!(kernel_code_segment(0x13 << 32).selector, 0x10);
    }

    #[test]
    fn only_a_working_syscall_needs_no_completion() {
        let p = |syscall| SyscallProbe {
            syscall,
            sysret: Transition::Works,
        };
        assert!(!p(Transition::Works).syscall_needs_completion());
        assert!(p(Transition::WrongCpl(3)).syscall_needs_completion());
        assert!(p(Transition::Failed("x".into())).syscall_needs_completion());
    }
}
