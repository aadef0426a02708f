//! The semantics of each completion-table entry.

use iced_x86::{Code, Instruction, Register};
use kvm_bindings::kvm_regs;

use super::{CompletionError, Context, Entry};
use crate::entropy::Entropy;
use crate::vm::regs::{
    paging_regs, RFLAGS_AC, RFLAGS_AF, RFLAGS_CF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF,
};
use crate::vm::{access, paging};

/// Vector of #UD.
const UD: u8 = 6;
/// Vector of #NM.
const NM: u8 = 7;
/// Vector of #GP.
const GP: u8 = 13;
/// Vector of #PF.
const PF: u8 = 14;
/// Vector of #MF.
const MF: u8 = 16;
/// Vector of #BP.
const BP: u8 = 3;

const CR0_MP: u64 = 1 << 1;
const CR0_TS: u64 = 1 << 3;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR4_OSXSAVE: u64 = 1 << 18;

/// The result of one entry.
pub enum Done {
    /// Completed; `Some(vector)` when an exception was injected instead.
    Completed(Option<u8>),
    /// Cannot be completed soundly.
    Unhandled(String),
}

/// A failed KVM call, before the instruction text is attached.
pub struct KvmFail {
    action: &'static str,
    source: kvm_ioctls::Error,
}

impl KvmFail {
    /// Attaches the instruction.
    pub fn into_error(self, insn: &Instruction) -> CompletionError {
        CompletionError {
            what: format!("{insn}"),
            action: self.action,
            source: self.source,
        }
    }
}

fn kvm(action: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmFail {
    move |source| KvmFail { action, source }
}

/// Injects exception `vector` (with `error_code` if it has one), leaving RIP at
/// the faulting instruction. `cr2` is set first for a page fault.
pub fn inject_exception(
    ctx: &Context<'_>,
    vector: u8,
    error_code: Option<u32>,
    _insn: &Instruction,
) -> Result<(), KvmFail> {
    let mut ev = ctx
        .vcpu
        .get_vcpu_events()
        .map_err(kvm("read vCPU events"))?;
    ev.exception.injected = 1;
    ev.exception.nr = vector;
    ev.exception.has_error_code = u8::from(error_code.is_some());
    ev.exception.error_code = error_code.unwrap_or(0);
    ctx.vcpu
        .set_vcpu_events(&ev)
        .map_err(kvm("inject an exception"))
}

fn set_regs(ctx: &Context<'_>, regs: &kvm_regs) -> Result<(), KvmFail> {
    ctx.vcpu.set_regs(regs).map_err(kvm("set registers"))
}

fn advance(ctx: &Context<'_>, insn: &Instruction) -> kvm_regs {
    let mut r = ctx.regs;
    r.rip = r.rip.wrapping_add(insn.len() as u64);
    r
}

fn cpl(ctx: &Context<'_>) -> u8 {
    ctx.sregs.cs.dpl
}

/// Completes `insn` for table entry `entry`.
pub fn complete(
    ctx: &Context<'_>,
    insn: &Instruction,
    entry: Entry,
    entropy: &mut Entropy,
) -> Result<Done, KvmFail> {
    let ud = |ctx: &Context<'_>| -> Result<Done, KvmFail> {
        inject_exception(ctx, UD, None, insn)?;
        Ok(Done::Completed(Some(UD)))
    };
    match entry {
        // Bytes the decoder rejects: hardware would raise #UD.
        Entry::Invalid => ud(ctx),
        // Not an emulation failure: machine::syscall_compat finishes it.
        Entry::Syscall => Ok(Done::Unhandled(
            "syscall is completed at the guest's page-fault entry, not here".into(),
        )),
        Entry::Int3 => {
            // #BP is a trap: the saved RIP is the next instruction.
            set_regs(ctx, &advance(ctx, insn))?;
            inject_exception(ctx, BP, None, insn)?;
            Ok(Done::Completed(None))
        }
        Entry::IntN => {
            set_regs(ctx, &advance(ctx, insn))?;
            let mut ev = ctx
                .vcpu
                .get_vcpu_events()
                .map_err(kvm("read vCPU events"))?;
            ev.interrupt.injected = 1;
            ev.interrupt.nr = insn.immediate8();
            ev.interrupt.soft = 1;
            ctx.vcpu
                .set_vcpu_events(&ev)
                .map_err(kvm("inject a software interrupt"))?;
            Ok(Done::Completed(None))
        }
        Entry::Fwait => {
            if ctx.sregs.cr0 & (CR0_MP | CR0_TS) == (CR0_MP | CR0_TS) {
                inject_exception(ctx, NM, None, insn)?;
                return Ok(Done::Completed(Some(NM)));
            }
            let fpu = ctx.vcpu.get_fpu().map_err(kvm("read the FPU state"))?;
            let pending = fpu.fsw & 0x80 != 0;
            if !pending {
                set_regs(ctx, &advance(ctx, insn))?;
                Ok(Done::Completed(None))
            } else if ctx.sregs.cr0 & CR0_NE != 0 {
                inject_exception(ctx, MF, None, insn)?;
                Ok(Done::Completed(Some(MF)))
            } else {
                Ok(Done::Unhandled(
                    "fwait with a pending x87 exception and CR0.NE clear (legacy FERR# reporting)"
                        .into(),
                ))
            }
        }
        Entry::Cmpxchg16b => cmpxchg16b(ctx, insn),
        Entry::Xgetbv => {
            if ctx.sregs.cr4 & CR4_OSXSAVE == 0 {
                return ud(ctx);
            }
            let ecx = ctx.regs.rcx & 0xffff_ffff;
            if ecx != 0 {
                inject_exception(ctx, GP, Some(0), insn)?;
                return Ok(Done::Completed(Some(GP)));
            }
            let xcrs = ctx.vcpu.get_xcrs().map_err(kvm("read XCRs"))?;
            let nr = usize::try_from(xcrs.nr_xcrs)
                .unwrap_or(0)
                .min(xcrs.xcrs.len());
            let xcr0 = xcrs.xcrs[..nr]
                .iter()
                .find(|x| x.xcr == 0)
                .map_or(1, |x| x.value);
            let mut r = advance(ctx, insn);
            r.rax = xcr0 & 0xffff_ffff;
            r.rdx = xcr0 >> 32;
            set_regs(ctx, &r)?;
            Ok(Done::Completed(None))
        }
        Entry::Rdrand | Entry::Rdseed => {
            let feature = if entry == Entry::Rdrand {
                "rdrand"
            } else {
                "rdseed"
            };
            if !ctx.cpuid.has_named(feature) {
                return ud(ctx);
            }
            let mut r = advance(ctx, insn);
            let value = entropy.next_u64();
            if !write_gpr(&mut r, insn.op0_register(), value) {
                return Ok(Done::Unhandled(format!(
                    "{feature} into {:?}",
                    insn.op0_register()
                )));
            }
            r.rflags &= !(RFLAGS_OF | RFLAGS_SF | RFLAGS_ZF | RFLAGS_AF | RFLAGS_PF);
            r.rflags |= RFLAGS_CF;
            set_regs(ctx, &r)?;
            Ok(Done::Completed(None))
        }
        Entry::Clac => {
            if !ctx.cpuid.has_named("smap") || cpl(ctx) != 0 {
                return ud(ctx);
            }
            let mut r = advance(ctx, insn);
            if insn.code() == Code::Stac {
                r.rflags |= RFLAGS_AC;
            } else {
                r.rflags &= !RFLAGS_AC;
            }
            set_regs(ctx, &r)?;
            Ok(Done::Completed(None))
        }
    }
}

fn cmpxchg16b(ctx: &Context<'_>, insn: &Instruction) -> Result<Done, KvmFail> {
    if !ctx.cpuid.has_named("cx16") {
        inject_exception(ctx, UD, None, insn)?;
        return Ok(Done::Completed(Some(UD)));
    }
    let Some(ea) = insn.virtual_address(0, 0, |reg, _, _| read_reg(ctx, reg)) else {
        return Ok(Done::Unhandled(
            "cannot compute the cmpxchg16b memory operand".into(),
        ));
    };
    if ea % 16 != 0 {
        inject_exception(ctx, GP, Some(0), insn)?;
        return Ok(Done::Completed(Some(GP)));
    }
    let pregs = paging_regs(&ctx.sregs);
    let user = cpl(ctx) == 3;
    let fault = match paging::translate(ctx.mem, &pregs, ea) {
        Err(paging::WalkError::NotPresent { .. }) => Some(0b10u32),
        Err(e) => return Ok(Done::Unhandled(format!("cmpxchg16b operand {ea:#x}: {e}"))),
        Ok(t) if (!t.writable && (user || ctx.sregs.cr0 & CR0_WP != 0)) || (user && !t.user) => {
            Some(0b11)
        }
        Ok(_) => None,
    };
    if let Some(mut code) = fault {
        if user {
            code |= 0b100;
        }
        let mut sregs = ctx.sregs;
        sregs.cr2 = ea;
        ctx.vcpu.set_sregs(&sregs).map_err(kvm("set CR2"))?;
        inject_exception(ctx, PF, Some(code), insn)?;
        return Ok(Done::Completed(Some(PF)));
    }
    let mut cur = [0u8; 16];
    if let Err(e) = access::read_virt(ctx.mem, &pregs, ea, &mut cur) {
        return Ok(Done::Unhandled(format!("cmpxchg16b operand {ea:#x}: {e}")));
    }
    let lo = u64::from_le_bytes(cur[..8].try_into().unwrap_or_default());
    let hi = u64::from_le_bytes(cur[8..].try_into().unwrap_or_default());
    let mut r = advance(ctx, insn);
    if lo == r.rax && hi == r.rdx {
        let mut new = [0u8; 16];
        new[..8].copy_from_slice(&r.rbx.to_le_bytes());
        new[8..].copy_from_slice(&r.rcx.to_le_bytes());
        if let Err(e) = access::write_virt(ctx.mem, &pregs, ea, &new) {
            return Ok(Done::Unhandled(format!("cmpxchg16b operand {ea:#x}: {e}")));
        }
        r.rflags |= RFLAGS_ZF;
    } else {
        r.rax = lo;
        r.rdx = hi;
        r.rflags &= !RFLAGS_ZF;
    }
    set_regs(ctx, &r)?;
    Ok(Done::Completed(None))
}

/// A register's value for effective-address computation (segments: their base).
fn read_reg(ctx: &Context<'_>, reg: Register) -> Option<u64> {
    crate::vm::regs::register_value(&ctx.regs, &ctx.sregs, reg)
}

/// Writes a general register of 16, 32 or 64 bits with x86's merge rules.
fn write_gpr(r: &mut kvm_regs, reg: Register, value: u64) -> bool {
    let slot = match reg.full_register() {
        Register::RAX => &mut r.rax,
        Register::RBX => &mut r.rbx,
        Register::RCX => &mut r.rcx,
        Register::RDX => &mut r.rdx,
        Register::RSI => &mut r.rsi,
        Register::RDI => &mut r.rdi,
        Register::RBP => &mut r.rbp,
        Register::RSP => &mut r.rsp,
        Register::R8 => &mut r.r8,
        Register::R9 => &mut r.r9,
        Register::R10 => &mut r.r10,
        Register::R11 => &mut r.r11,
        Register::R12 => &mut r.r12,
        Register::R13 => &mut r.r13,
        Register::R14 => &mut r.r14,
        Register::R15 => &mut r.r15,
        _ => return false,
    };
    *slot = match reg.size() {
        8 => value,
        4 => value & 0xffff_ffff,
        2 => (*slot & !0xffff) | (value & 0xffff),
        _ => return false,
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpr_writes_follow_x86_merge_rules() {
        let mut r = kvm_regs {
            rax: u64::MAX,
            rbx: u64::MAX,
            ..Default::default()
        };
        assert!(write_gpr(&mut r, Register::EAX, 0x1_2345_6789));
        assert_eq!(r.rax, 0x2345_6789, "32-bit writes zero-extend");
        assert!(write_gpr(&mut r, Register::BX, 0x1234));
        assert_eq!(r.rbx, 0xffff_ffff_ffff_1234, "16-bit writes merge");
        assert!(write_gpr(&mut r, Register::R9, 7));
        assert_eq!(r.r9, 7);
        assert!(!write_gpr(&mut r, Register::AL, 1));
    }
}
