//! lunavm's gdb architecture: x86-64 with SSE (as `gdbstub_arch`'s
//! `X86_64_SSE`), plus FS/GS base, the kernel GS base, the control registers
//! and EFER, described to gdb in a target description of our own.
//!
//! gdb numbers registers in the order of the description: the core and SSE
//! features as gdb's built-in amd64 description (`org.gnu.gdb.i386.core`,
//! `org.gnu.gdb.i386.sse`), then `org.gnu.gdb.i386.segments` (`fs_base`,
//! `gs_base`, which gdb knows by these names), then lunavm's
//! `org.lunavm.x86.sys` (`k_gs_base`, `cr0`, `cr2`, `cr3`, `cr4`, `cr8`,
//! `efer`, in gdb's `system` register group as QEMU's stub has them).

use std::fmt::Write as _;
use std::sync::OnceLock;

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;

/// Size of the core and SSE registers in gdb's `g` packet.
const CORE_LEN: usize = 0x218;

/// The system registers after the core ones, in description order.
pub const SYSTEM_REGS: [&str; 9] = [
    "fs_base",
    "gs_base",
    "k_gs_base",
    "cr0",
    "cr2",
    "cr3",
    "cr4",
    "cr8",
    "efer",
];

/// x86-64 with SSE and the system registers.
pub enum LunaX86_64 {}

impl Arch for LunaX86_64 {
    type Usize = u64;
    type Registers = LunaRegs;
    type RegId = ();
    type BreakpointKind = usize;

    fn target_description_xml() -> Option<&'static str> {
        static XML: OnceLock<String> = OnceLock::new();
        Some(XML.get_or_init(description).as_str())
    }
}

/// The register set gdb reads and writes with `g`/`G`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LunaRegs {
    /// General, segment-selector, x87 and SSE registers.
    pub core: X86_64CoreRegs,
    /// `SYSTEM_REGS`, in that order.
    pub system: [u64; 9],
}

impl LunaRegs {
    /// The system register called `name`.
    pub fn system(&self, name: &str) -> Option<u64> {
        let i = SYSTEM_REGS.iter().position(|n| *n == name)?;
        self.system.get(i).copied()
    }
}

impl Registers for LunaRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for v in self.system {
            for b in v.to_le_bytes() {
                write_byte(Some(b));
            }
        }
    }

    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        if bytes.len() < CORE_LEN + 8 * SYSTEM_REGS.len() {
            return Err(());
        }
        self.core.gdb_deserialize(&bytes[..CORE_LEN])?;
        for (v, chunk) in self
            .system
            .iter_mut()
            .zip(bytes[CORE_LEN..].chunks_exact(8))
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *v = u64::from_le_bytes(b);
        }
        Ok(())
    }
}

/// A `<flags>` type: (name, bit) pairs.
fn flags(out: &mut String, id: &str, size: u32, fields: &[(&str, u32)]) {
    let _ = writeln!(out, r#"<flags id="{id}" size="{size}">"#);
    for (name, bit) in fields {
        let _ = writeln!(out, r#"<field name="{name}" start="{bit}" end="{bit}"/>"#);
    }
    out.push_str("</flags>\n");
}

/// One `<reg>`.
fn reg(out: &mut String, name: &str, bits: u32, ty: &str, group: Option<&str>) {
    let group = group.map_or(String::new(), |g| format!(r#" group="{g}""#));
    let _ = writeln!(
        out,
        r#"<reg name="{name}" bitsize="{bits}" type="{ty}"{group}/>"#
    );
}

/// The target description (gdb's core and SSE features with their types,
/// the segment bases, lunavm's system registers).
fn description() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n\
         <target version=\"1.0\">\n<architecture>i386:x86-64</architecture>\n\
         <feature name=\"org.gnu.gdb.i386.core\">\n",
    );
    flags(
        &mut x,
        "i386_eflags",
        4,
        &[
            ("CF", 0),
            ("", 1),
            ("PF", 2),
            ("AF", 4),
            ("ZF", 6),
            ("SF", 7),
            ("TF", 8),
            ("IF", 9),
            ("DF", 10),
            ("OF", 11),
            ("NT", 14),
            ("RF", 16),
            ("VM", 17),
            ("AC", 18),
            ("VIF", 19),
            ("VIP", 20),
            ("ID", 21),
        ],
    );
    for name in [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ] {
        let ty = if name == "rbp" || name == "rsp" {
            "data_ptr"
        } else {
            "int64"
        };
        reg(&mut x, name, 64, ty, None);
    }
    reg(&mut x, "rip", 64, "code_ptr", None);
    reg(&mut x, "eflags", 32, "i386_eflags", None);
    for name in ["cs", "ss", "ds", "es", "fs", "gs"] {
        reg(&mut x, name, 32, "int32", None);
    }
    for i in 0..8 {
        reg(&mut x, &format!("st{i}"), 80, "i387_ext", None);
    }
    for name in [
        "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
    ] {
        reg(&mut x, name, 32, "int", Some("float"));
    }
    x.push_str("</feature>\n<feature name=\"org.gnu.gdb.i386.sse\">\n");
    for (id, ty, count) in [
        ("v4f", "ieee_single", 4),
        ("v2d", "ieee_double", 2),
        ("v16i8", "int8", 16),
        ("v8i16", "int16", 8),
        ("v4i32", "int32", 4),
        ("v2i64", "int64", 2),
    ] {
        let _ = writeln!(x, r#"<vector id="{id}" type="{ty}" count="{count}"/>"#);
    }
    x.push_str("<union id=\"vec128\">\n");
    for (name, ty) in [
        ("v4_float", "v4f"),
        ("v2_double", "v2d"),
        ("v16_int8", "v16i8"),
        ("v8_int16", "v8i16"),
        ("v4_int32", "v4i32"),
        ("v2_int64", "v2i64"),
        ("uint128", "uint128"),
    ] {
        let _ = writeln!(x, r#"<field name="{name}" type="{ty}"/>"#);
    }
    x.push_str("</union>\n");
    flags(
        &mut x,
        "i386_mxcsr",
        4,
        &[
            ("IE", 0),
            ("DE", 1),
            ("ZE", 2),
            ("OE", 3),
            ("UE", 4),
            ("PE", 5),
            ("DAZ", 6),
            ("IM", 7),
            ("DM", 8),
            ("ZM", 9),
            ("OM", 10),
            ("UM", 11),
            ("PM", 12),
            ("FZ", 15),
        ],
    );
    for i in 0..16 {
        reg(&mut x, &format!("xmm{i}"), 128, "vec128", None);
    }
    reg(&mut x, "mxcsr", 32, "i386_mxcsr", Some("vector"));
    x.push_str("</feature>\n<feature name=\"org.gnu.gdb.i386.segments\">\n");
    reg(&mut x, "fs_base", 64, "int", None);
    reg(&mut x, "gs_base", 64, "int", None);
    x.push_str("</feature>\n<feature name=\"org.lunavm.x86.sys\">\n");
    flags(
        &mut x,
        "x64_cr0",
        8,
        &[
            ("PE", 0),
            ("MP", 1),
            ("EM", 2),
            ("TS", 3),
            ("ET", 4),
            ("NE", 5),
            ("WP", 16),
            ("AM", 18),
            ("NW", 29),
            ("CD", 30),
            ("PG", 31),
        ],
    );
    flags(
        &mut x,
        "x64_cr4",
        8,
        &[
            ("VME", 0),
            ("PVI", 1),
            ("TSD", 2),
            ("DE", 3),
            ("PSE", 4),
            ("PAE", 5),
            ("MCE", 6),
            ("PGE", 7),
            ("PCE", 8),
            ("OSFXSR", 9),
            ("OSXMMEXCPT", 10),
            ("UMIP", 11),
            ("LA57", 12),
            ("VMXE", 13),
            ("SMXE", 14),
            ("FSGSBASE", 16),
            ("PCIDE", 17),
            ("OSXSAVE", 18),
            ("SMEP", 20),
            ("SMAP", 21),
            ("PKE", 22),
        ],
    );
    flags(
        &mut x,
        "x64_efer",
        8,
        &[
            ("SCE", 0),
            ("LME", 8),
            ("LMA", 10),
            ("NXE", 11),
            ("SVME", 12),
            ("LMSLE", 13),
            ("FFXSR", 14),
            ("TCE", 15),
        ],
    );
    reg(&mut x, "k_gs_base", 64, "int", Some("system"));
    reg(&mut x, "cr0", 64, "x64_cr0", Some("system"));
    reg(&mut x, "cr2", 64, "int", Some("system"));
    reg(&mut x, "cr3", 64, "int", Some("system"));
    reg(&mut x, "cr4", 64, "x64_cr4", Some("system"));
    reg(&mut x, "cr8", 64, "int", Some("system"));
    reg(&mut x, "efer", 64, "x64_efer", Some("system"));
    x.push_str("</feature>\n</target>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip_through_the_g_packet() {
        let mut r = LunaRegs::default();
        r.core.rip = 0x1234;
        r.core.mxcsr = 0x1f80;
        r.system = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        let mut bytes = Vec::new();
        r.gdb_serialize(|b| bytes.push(b.unwrap_or(0)));
        assert_eq!(bytes.len(), CORE_LEN + 72);
        let mut back = LunaRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.system("cr3"), Some(6));
        assert!(back.gdb_deserialize(&bytes[..CORE_LEN]).is_err());
    }

    #[test]
    fn description_lists_every_register_in_order() {
        let xml = LunaX86_64::target_description_xml().unwrap();
        let names: Vec<&str> = xml
            .lines()
            .filter_map(|l| l.strip_prefix("<reg name=\""))
            .filter_map(|l| l.split('"').next())
            .collect();
        // 40 core, 17 SSE, then the system registers.
        assert_eq!(names.len(), 40 + 17 + SYSTEM_REGS.len());
        assert_eq!(names[16], "rip");
        assert_eq!(names[40], "xmm0");
        assert_eq!(&names[57..], &SYSTEM_REGS);
        assert_eq!(xml.matches("<feature").count(), 4);
    }
}
