//! vCPU register helpers: the 32-bit entry state the loaders use, the register
//! dump reports print, and the linear address of CS:RIP.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

use super::paging::PagingRegs;

/// Selector of the flat 32-bit code segment in the boot GDT.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the flat data segment in the boot GDT.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the TSS in the boot GDT.
pub const BOOT_TR: u16 = 0x20;

/// The boot GDT: null, null, 32-bit flat code (0x10), flat data (0x18), TSS (0x20).
pub const BOOT_GDT: [u64; 5] = [
    0,
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

/// The limit of [`BOOT_GDT`] (size in bytes minus one).
const BOOT_GDT_LIMIT: u16 = 8 * 5 - 1;
const _: () = assert!(BOOT_GDT_LIMIT as usize == BOOT_GDT.len() * 8 - 1);

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `sregs` into 32-bit protected mode with paging off, flat segments from
/// [`BOOT_GDT`] at `gdt_addr`, as the PVH and multiboot protocols require.
pub fn set_protected_mode_32(sregs: &mut kvm_sregs, gdt_addr: u64) {
    sregs.cs = flat(BOOT_CS, 0xb);
    let data = flat(BOOT_DS, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: 0,
        limit: 0x67,
        selector: BOOT_TR,
        type_: 0xb,
        present: 1,
        s: 0,
        db: 0,
        g: 0,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        type_: 0x2,
        present: 1,
        ..Default::default()
    };
    sregs.gdt = kvm_dtable {
        base: gdt_addr,
        limit: BOOT_GDT_LIMIT,
        ..Default::default()
    };
    sregs.idt = kvm_dtable {
        base: 0,
        limit: 0,
        ..Default::default()
    };
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// GDT of Linux's 64-bit boot protocol: [`BOOT_GDT`] with `__BOOT_CS`
/// (0x10) a 64-bit code segment; `__BOOT_DS` (0x18) and the TSS as there.
pub const LINUX_GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

/// Long mode with paging on (`cr3` = the identity page tables), the
/// [`LINUX_GDT`] at `gdt_addr` loaded, as Linux's 64-bit entry expects.
pub fn set_long_mode_64(sregs: &mut kvm_sregs, gdt_addr: u64, cr3: u64) {
    set_protected_mode_32(sregs, gdt_addr);
    sregs.cs.l = 1;
    sregs.cs.db = 0;
    sregs.cr0 = 0x8005_0033; // PG | AM | WP | NE | ET | MP | PE
    sregs.cr3 = cr3;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LME | LMA
}

/// Initial general registers: everything zero, RFLAGS reserved bit set.
pub fn entry_regs(rip: u64, rax: u64, rbx: u64) -> kvm_regs {
    kvm_regs {
        rip,
        rax,
        rbx,
        rflags: 0x2,
        ..Default::default()
    }
}

/// The paging-relevant control registers of `sregs`.
pub fn paging_regs(sregs: &kvm_sregs) -> PagingRegs {
    PagingRegs {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
    }
}

/// Code bitness from CS: 64, 32 or 16.
pub fn code_bitness(sregs: &kvm_sregs) -> u32 {
    if sregs.efer & (1 << 10) != 0 && sregs.cs.l == 1 {
        64
    } else if sregs.cs.db == 1 {
        32
    } else {
        16
    }
}

/// The linear address of CS:RIP.
pub fn linear_rip(regs: &kvm_regs, sregs: &kvm_sregs) -> u64 {
    match code_bitness(sregs) {
        64 => regs.rip,
        32 => sregs.cs.base.wrapping_add(regs.rip) & 0xffff_ffff,
        _ => sregs.cs.base.wrapping_add(regs.rip & 0xffff) & 0xf_ffff,
    }
}

/// The general registers, RIP and RFLAGS by name, in display order.
pub fn general_regs(r: &kvm_regs) -> [(&'static str, u64); 18] {
    [
        ("rax", r.rax),
        ("rbx", r.rbx),
        ("rcx", r.rcx),
        ("rdx", r.rdx),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("rbp", r.rbp),
        ("rsp", r.rsp),
        ("r8", r.r8),
        ("r9", r.r9),
        ("r10", r.r10),
        ("r11", r.r11),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
        ("rip", r.rip),
        ("rflags", r.rflags),
    ]
}

/// A register dump for reports: general registers, RIP, RFLAGS, control
/// registers, EFER and segment selectors.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegisterDump {
    /// (name, value) pairs in a fixed order.
    pub regs: Vec<(&'static str, u64)>,
}

impl RegisterDump {
    /// Captures `regs` and `sregs`.
    pub fn new(r: &kvm_regs, s: &kvm_sregs) -> Self {
        let mut regs = general_regs(r).to_vec();
        regs.extend([
            ("cs", u64::from(s.cs.selector)),
            ("ss", u64::from(s.ss.selector)),
            ("ds", u64::from(s.ds.selector)),
            ("es", u64::from(s.es.selector)),
            ("fs", u64::from(s.fs.selector)),
            ("gs", u64::from(s.gs.selector)),
            ("cr0", s.cr0),
            ("cr2", s.cr2),
            ("cr3", s.cr3),
            ("cr4", s.cr4),
            ("efer", s.efer),
            ("gdt.base", s.gdt.base),
            ("idt.base", s.idt.base),
            ("idt.limit", u64::from(s.idt.limit)),
        ]);
        RegisterDump { regs }
    }

    /// The value of register `name`, if dumped.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.regs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

impl std::fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.regs.iter().enumerate() {
            let sep = if i % 4 == 3 || i + 1 == self.regs.len() {
                "\n"
            } else {
                "  "
            };
            write!(f, "{name:>9}={value:016x}{sep}")?;
        }
        Ok(())
    }
}

/// RFLAGS.CF.
pub const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS.PF.
pub const RFLAGS_PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const RFLAGS_AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const RFLAGS_ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const RFLAGS_SF: u64 = 1 << 7;
/// RFLAGS.TF (single-step trap).
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.OF.
pub const RFLAGS_OF: u64 = 1 << 11;
/// RFLAGS.RF (resume: no instruction breakpoint on the next instruction).
pub const RFLAGS_RF: u64 = 1 << 16;
/// RFLAGS.AC.
pub const RFLAGS_AC: u64 = 1 << 18;

/// The value of `reg` as an instruction reads it: a general-purpose
/// register or a narrow view of one (`eax`, `r8w`, `ah`...), RIP, or a
/// segment register's base.
pub fn register_value(r: &kvm_regs, s: &kvm_sregs, reg: iced_x86::Register) -> Option<u64> {
    use iced_x86::Register;
    let v = match reg.full_register() {
        Register::RAX => r.rax,
        Register::RBX => r.rbx,
        Register::RCX => r.rcx,
        Register::RDX => r.rdx,
        Register::RSI => r.rsi,
        Register::RDI => r.rdi,
        Register::RBP => r.rbp,
        Register::RSP => r.rsp,
        Register::R8 => r.r8,
        Register::R9 => r.r9,
        Register::R10 => r.r10,
        Register::R11 => r.r11,
        Register::R12 => r.r12,
        Register::R13 => r.r13,
        Register::R14 => r.r14,
        Register::R15 => r.r15,
        Register::RIP => r.rip,
        Register::ES => s.es.base,
        Register::CS => s.cs.base,
        Register::SS => s.ss.base,
        Register::DS => s.ds.base,
        Register::FS => s.fs.base,
        Register::GS => s.gs.base,
        _ => return None,
    };
    if matches!(
        reg,
        Register::AH | Register::BH | Register::CH | Register::DH
    ) {
        return Some((v >> 8) & 0xff);
    }
    // Narrow views (e.g. ESI in 32-bit addressing) take the low bits.
    Some(match reg.size() {
        1 => v & 0xff,
        2 => v & 0xffff,
        4 => v & 0xffff_ffff,
        _ => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_mode_state_is_flat_32_bit() {
        let mut s = kvm_sregs::default();
        set_protected_mode_32(&mut s, 0x8000);
        assert_eq!(code_bitness(&s), 32);
        assert_eq!(s.cs.selector, BOOT_CS);
        assert_eq!(s.cr0 & 1, 1);
        assert_eq!(s.gdt.limit, 39);
        let r = entry_regs(0x10_0000, 0, 0);
        assert_eq!(linear_rip(&r, &s), 0x10_0000);
    }

    #[test]
    fn gdt_descriptors_match_segments() {
        // Access byte of the code descriptor: present, DPL0, code, type 0xb.
        assert_eq!((BOOT_GDT[2] >> 40) & 0xff, 0x9b);
        assert_eq!((BOOT_GDT[3] >> 40) & 0xff, 0x93);
    }

    #[test]
    fn dump_formats_every_register() {
        let d = RegisterDump::new(
            &kvm_regs {
                rip: 0x1234,
                ..Default::default()
            },
            &kvm_sregs::default(),
        );
        assert_eq!(d.get("rip"), Some(0x1234));
        assert!(d.to_string().contains("rip=0000000000001234"));
    }
}
