//! Comparison sites: `cmp` and `sub` instructions whose operands the fuzzer
//! reads at a breakpoint (before the instruction runs) to learn which values
//! the guest compares its input with.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};

/// Which instruction a comparison site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpKind {
    /// `cmp a, b`.
    Cmp,
    /// `sub a, b` (the flags are those of `cmp`; the stack pointer is skipped).
    Sub,
}

/// A memory operand, decoded: the address is
/// `segment base + base + index * scale + displacement`, truncated to the
/// address size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// The segment (DS/SS/... have base 0 in 64-bit mode; FS and GS do not).
    pub segment: Register,
    /// The base register, or [`Register::None`] (also for RIP-relative
    /// operands, whose displacement is then the absolute address).
    pub base: Register,
    /// The index register, or [`Register::None`].
    pub index: Register,
    /// The index scale: 1, 2, 4 or 8.
    pub scale: u32,
    /// The displacement, sign-extended (the absolute address when
    /// RIP-relative).
    pub displacement: u64,
    /// The address size in bytes (8, or 4 with 32-bit addressing).
    pub address_size: u8,
}

/// One operand of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// A general-purpose register as the instruction names it (`eax`,
    /// `r8w`, ...): its value is the full register masked to the width.
    Reg(Register),
    /// An immediate, sign-extended as the instruction does and masked to the
    /// operand width.
    Imm(u64),
    /// A memory operand of the site's width.
    Mem(MemOperand),
}

/// A `cmp`/`sub` of 2, 4 or 8 bytes, or a 1-byte `cmp` with a constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CmpSite {
    /// Virtual address of the instruction.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u8,
    /// `cmp` or `sub`.
    pub kind: CmpKind,
    /// Operand width in bytes: 1 (a `cmp` with a constant only), 2, 4 or 8.
    pub width: u8,
    /// The first (destination) operand.
    pub lhs: Operand,
    /// The second (source) operand.
    pub rhs: Operand,
}

/// Where [`CmpSite::evaluate`] gets register values and memory from: the
/// stopped vCPU, in the harness.
pub trait OperandSource {
    /// The full 64-bit value of a general-purpose register (`RAX`...`R15`,
    /// `RSP`, `RBP`; [`CmpSite::evaluate`] only asks for full registers), or
    /// None if unknown.
    fn reg(&self, r: Register) -> Option<u64>;

    /// `len` bytes at guest-virtual `addr`, or None if unmapped.
    fn read_virt(&self, addr: u64, len: usize) -> Option<Vec<u8>>;

    /// The base of segment `seg`. The default knows the flat segments (0)
    /// and nothing about FS and GS, whose operands then do not evaluate.
    fn segment_base(&self, seg: Register) -> Option<u64> {
        match seg {
            Register::FS | Register::GS => None,
            _ => Some(0),
        }
    }
}

/// All-ones in the low `width` bytes.
pub fn mask(width: u8) -> u64 {
    match width {
        8.. => u64::MAX,
        w => (1u64 << (u32::from(w) * 8)) - 1,
    }
}

impl CmpSite {
    /// Decodes `instr` as a comparison site, or None when it is none: not a
    /// two-operand `cmp`/`sub`, 1-byte operands other than a `cmp` with a
    /// constant (a parser's dispatch on a type byte is one; byte loops are
    /// not), `sub` of the stack pointer or of a register from itself, or
    /// operands of other kinds.
    pub(crate) fn from_instruction(instr: &Instruction) -> Option<CmpSite> {
        let kind = match instr.mnemonic() {
            Mnemonic::Cmp => CmpKind::Cmp,
            Mnemonic::Sub => CmpKind::Sub,
            _ => return None,
        };
        if instr.op_count() != 2 {
            return None;
        }
        let width = match instr.op_kind(0) {
            OpKind::Register => instr.op0_register().size(),
            OpKind::Memory => instr.memory_size().size(),
            _ => return None,
        };
        let width = u8::try_from(width)
            .ok()
            .filter(|w| matches!(w, 1 | 2 | 4 | 8))?;
        let lhs = operand(instr, 0, width)?;
        let rhs = operand(instr, 1, width)?;
        if width == 1 && (kind != CmpKind::Cmp || !matches!(rhs, Operand::Imm(_))) {
            return None;
        }
        if kind == CmpKind::Sub {
            if let Operand::Reg(r) = lhs {
                if r.full_register() == Register::RSP || Operand::Reg(r) == rhs {
                    return None;
                }
            }
        }
        Some(CmpSite {
            addr: instr.ip(),
            len: u8::try_from(instr.len()).ok()?,
            kind,
            width,
            lhs,
            rhs,
        })
    }

    /// The two operand values, each masked to the width, or None when a
    /// register, segment base or memory read is unavailable. Call it with
    /// the vCPU stopped at [`CmpSite::addr`], before the instruction runs.
    pub fn evaluate(&self, src: &dyn OperandSource) -> Option<(u64, u64)> {
        Some((self.value(&self.lhs, src)?, self.value(&self.rhs, src)?))
    }

    fn value(&self, op: &Operand, src: &dyn OperandSource) -> Option<u64> {
        let m = mask(self.width);
        match *op {
            Operand::Reg(r) => {
                let full = src.reg(r.full_register())?;
                let high = matches!(r, Register::AH | Register::BH | Register::CH | Register::DH);
                Some(if high { full >> 8 } else { full } & m)
            }
            Operand::Imm(v) => Some(v & m),
            Operand::Mem(mem) => {
                let addr = mem.address(src)?;
                let bytes = src.read_virt(addr, usize::from(self.width))?;
                let mut buf = [0u8; 8];
                let n = bytes.len().min(8);
                if n < usize::from(self.width) {
                    return None;
                }
                buf[..n].copy_from_slice(&bytes[..n]);
                Some(u64::from_le_bytes(buf) & m)
            }
        }
    }
}

impl MemOperand {
    /// The effective address, or None when a register or the segment base
    /// is unavailable.
    pub fn address(&self, src: &dyn OperandSource) -> Option<u64> {
        let reg = |r: Register| -> Option<u64> {
            if r == Register::None {
                Some(0)
            } else {
                Some(src.reg(r.full_register())? & mask(u8::try_from(r.size()).ok()?))
            }
        };
        let offset = reg(self.base)?
            .wrapping_add(reg(self.index)?.wrapping_mul(u64::from(self.scale)))
            .wrapping_add(self.displacement)
            & mask(self.address_size);
        Some(src.segment_base(self.segment)?.wrapping_add(offset))
    }
}

/// Operand `n` of `instr`, immediates masked to `width`.
fn operand(instr: &Instruction, n: u32, width: u8) -> Option<Operand> {
    match instr.op_kind(n) {
        OpKind::Register => {
            let r = instr.op_register(n);
            r.is_gpr().then_some(Operand::Reg(r))
        }
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(Operand::Imm(instr.immediate(n) & mask(width))),
        OpKind::Memory => {
            let ip_rel = instr.is_ip_rel_memory_operand();
            let base = if ip_rel {
                Register::None
            } else {
                instr.memory_base()
            };
            let index = instr.memory_index();
            if (index != Register::None && !index.is_gpr())
                || (base != Register::None && !base.is_gpr())
            {
                return None;
            }
            let address_size = if instr.memory_base() == Register::EIP {
                4
            } else if base != Register::None {
                u8::try_from(base.size()).ok()?
            } else if index != Register::None {
                u8::try_from(index.size()).ok()?
            } else if instr.code_size() == iced_x86::CodeSize::Code64 {
                8
            } else {
                4
            };
            Some(Operand::Mem(MemOperand {
                segment: instr.memory_segment(),
                base,
                index,
                scale: instr.memory_index_scale(),
                displacement: if ip_rel {
                    instr.ip_rel_memory_address()
                } else {
                    instr.memory_displacement64()
                },
                address_size,
            }))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions};
    use std::collections::HashMap;

    fn site(bytes: &[u8], ip: u64) -> Option<CmpSite> {
        let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
        CmpSite::from_instruction(&d.decode())
    }

    struct Fake {
        regs: HashMap<Register, u64>,
        mem: HashMap<u64, Vec<u8>>,
        fs: Option<u64>,
    }

    impl OperandSource for Fake {
        fn reg(&self, r: Register) -> Option<u64> {
            assert_eq!(r, r.full_register(), "only full registers are asked for");
            self.regs.get(&r).copied()
        }
        fn read_virt(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
            let v = self.mem.get(&addr)?;
            v.get(..len).map(<[u8]>::to_vec)
        }
        fn segment_base(&self, seg: Register) -> Option<u64> {
            match seg {
                Register::FS => self.fs,
                Register::GS => None,
                _ => Some(0),
            }
        }
    }

    fn fake() -> Fake {
        let mut regs = HashMap::new();
        regs.insert(Register::RAX, 0xffff_ffff_8765_4321);
        regs.insert(Register::RSI, 0x1111_2222_3333_4444);
        regs.insert(Register::RDI, 0x10_0000);
        regs.insert(Register::R8, 0xaaaa_bbbb_cccc_dddd);
        regs.insert(Register::RCX, 3);
        let mut mem = HashMap::new();
        mem.insert(0x10_0000, b"LUNA\x01\x00\xff\xff".to_vec());
        mem.insert(0x10_0018, 0x0123_4567_89ab_cdefu64.to_le_bytes().to_vec());
        mem.insert(0x20_1000, 0xdead_beefu32.to_le_bytes().to_vec());
        mem.insert(0x7000_0010, 0x5555u16.to_le_bytes().to_vec());
        Fake {
            regs,
            mem,
            fs: Some(0x7000_0000),
        }
    }

    #[test]
    fn cmp_memory_with_imm32_is_the_magic_compare() {
        // cmp dword [rdi], 0x414e554c
        let s = site(&[0x81, 0x3f, 0x4c, 0x55, 0x4e, 0x41], 0x1000).unwrap();
        assert_eq!(
            (s.addr, s.len, s.kind, s.width),
            (0x1000, 6, CmpKind::Cmp, 4)
        );
        assert_eq!(s.rhs, Operand::Imm(0x414e_554c));
        let Operand::Mem(m) = s.lhs else {
            panic!("{:?}", s.lhs)
        };
        assert_eq!(
            (m.base, m.index, m.displacement),
            (Register::RDI, Register::None, 0)
        );
        assert_eq!(s.evaluate(&fake()), Some((0x414e_554c, 0x414e_554c)));
    }

    #[test]
    fn sub_registers_are_masked_and_imm8_sign_extended() {
        // cmp esi, eax
        let s = site(&[0x39, 0xc6], 0).unwrap();
        assert_eq!(
            (s.lhs, s.rhs),
            (Operand::Reg(Register::ESI), Operand::Reg(Register::EAX))
        );
        assert_eq!(s.evaluate(&fake()), Some((0x3333_4444, 0x8765_4321)));
        // cmp r8w, -2 (imm8 sign-extended to 16 bits)
        let s = site(&[0x66, 0x41, 0x83, 0xf8, 0xfe], 0).unwrap();
        assert_eq!((s.width, s.rhs), (2, Operand::Imm(0xfffe)));
        assert_eq!(s.evaluate(&fake()), Some((0xdddd, 0xfffe)));
        // cmp rax, -1 (imm8 sign-extended to 64 bits)
        let s = site(&[0x48, 0x83, 0xf8, 0xff], 0).unwrap();
        assert_eq!(s.evaluate(&fake()), Some((0xffff_ffff_8765_4321, u64::MAX)));
        // cmp rax, imm32 0x80000000 sign-extends to 0xffffffff80000000
        let s = site(&[0x48, 0x3d, 0x00, 0x00, 0x00, 0x80], 0).unwrap();
        assert_eq!(s.rhs, Operand::Imm(0xffff_ffff_8000_0000));
    }

    #[test]
    fn rip_relative_and_indexed_memory() {
        // cmp rax, [rip + 0xff9] at 0x200000, 7 bytes long: 0x201000.
        let s = site(&[0x48, 0x3b, 0x05, 0xf9, 0x0f, 0x00, 0x00], 0x20_0000).unwrap();
        let Operand::Mem(m) = s.rhs else {
            panic!("{:?}", s.rhs)
        };
        assert_eq!((m.base, m.displacement), (Register::None, 0x20_1000));
        // Only 4 bytes are there: an 8-byte read fails, so no values.
        assert_eq!(s.evaluate(&fake()), None);
        // cmp eax, [rip + 0xff9], 6 bytes long: 0x200fff.
        let s = site(&[0x3b, 0x05, 0xf9, 0x0f, 0x00, 0x00], 0x20_0000).unwrap();
        let Operand::Mem(m) = s.rhs else {
            panic!("{:?}", s.rhs)
        };
        assert_eq!(m.displacement, 0x20_0fff);
        // cmp rsi, [rdi + rcx*8]: 0x100000 + 3*8 = 0x100018
        let s = site(&[0x48, 0x3b, 0x34, 0xcf], 0).unwrap();
        let Operand::Mem(m) = s.rhs else {
            panic!("{:?}", s.rhs)
        };
        assert_eq!((m.index, m.scale, m.address_size), (Register::RCX, 8, 8));
        assert_eq!(
            s.evaluate(&fake()),
            Some((0x1111_2222_3333_4444, 0x0123_4567_89ab_cdef))
        );
    }

    #[test]
    fn segment_bases_come_from_the_source() {
        // cmp word fs:[0x10], 0x5555
        let s = site(
            &[0x64, 0x66, 0x81, 0x3c, 0x25, 0x10, 0, 0, 0, 0x55, 0x55],
            0,
        )
        .unwrap();
        assert_eq!(s.evaluate(&fake()), Some((0x5555, 0x5555)));
        // the same through gs: no base known, no values
        let s = site(
            &[0x65, 0x66, 0x81, 0x3c, 0x25, 0x10, 0, 0, 0, 0x55, 0x55],
            0,
        )
        .unwrap();
        assert_eq!(s.evaluate(&fake()), None);
    }

    #[test]
    fn what_is_not_a_site() {
        assert_eq!(
            site(&[0x38, 0xc8], 0),
            None,
            "cmp al, cl: one byte, no constant"
        );
        assert_eq!(
            site(&[0x2c, 0x4c], 0),
            None,
            "sub al, imm8: one byte, not a cmp"
        );
        // cmp al, 0x4c (a type byte's dispatch) is one
        let s = site(&[0x3c, 0x4c], 0).unwrap();
        assert_eq!((s.width, s.rhs), (1, Operand::Imm(0x4c)));
        assert_eq!(site(&[0x48, 0x83, 0xec, 0x18], 0), None, "sub rsp, 0x18");
        assert_eq!(site(&[0x29, 0xc0], 0), None, "sub eax, eax");
        assert_eq!(site(&[0x85, 0xc0], 0), None, "test eax, eax");
        assert_eq!(site(&[0x90], 0), None, "nop");
        // sub ecx, esi is one
        let s = site(&[0x29, 0xf1], 0).unwrap();
        assert_eq!(s.kind, CmpKind::Sub);
        assert_eq!(s.evaluate(&fake()), Some((3, 0x3333_4444)));
    }

    #[test]
    fn unknown_registers_and_memory_give_none() {
        // cmp edx, ebx: neither is known
        let s = site(&[0x39, 0xda], 0).unwrap();
        assert_eq!(s.evaluate(&fake()), None);
        // cmp dword [rdi + 0x800000], 1: unmapped
        let s = site(&[0x83, 0xbf, 0x00, 0x00, 0x80, 0x00, 0x01], 0).unwrap();
        assert_eq!(s.evaluate(&fake()), None);
    }
}
