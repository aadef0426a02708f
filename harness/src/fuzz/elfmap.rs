//! Static analysis of a guest ELF for fuzzing feedback without rebuilding
//! the guest: basic-block start addresses (for breakpoint coverage, each with
//! a stable index the harness can use as an extra-counter slot) and
//! comparison sites with decoded operands (for compare feedback read at a
//! breakpoint).
//!
//! One linear decoding pass over every function symbol (`STT_FUNC` with a
//! size, in an executable section) and sorting, nothing quadratic: the
//! project's test vmlinux (76 MB, 15,900 functions, 181,000 blocks, 48,000
//! comparison sites) is mapped in 0.18 s. x86 only: 64-bit ELFs
//! are decoded as 64-bit code, 32-bit ones as 32-bit code. Functions without
//! a size (assembly labels) are not decoded; undecodable bytes end a block
//! and are skipped. Nothing in an ELF says which mode a function runs in, so
//! 32-bit boot code in a 64-bit image (the runtime's `pvh_start32`, Linux's
//! `startup_32`) is decoded as 64-bit code: its blocks are meaningless, and
//! harmless for fuzzing, which starts long after that code ran.

mod cmp;
mod decode;

pub use cmp::{mask, CmpKind, CmpSite, MemOperand, Operand, OperandSource};

use object::{Architecture, Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

/// Why an ELF could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum ElfMapError {
    /// object could not parse the file.
    #[error("Not a readable object file")]
    Parse(#[source] object::Error),
    /// The file is an object file, but not ELF.
    #[error("Not an ELF file ({0:?})")]
    NotElf(object::BinaryFormat),
    /// The ELF is not x86 code.
    #[error("Unsupported architecture {0:?}: only x86 ELFs (64- and 32-bit) can be mapped")]
    Architecture(Architecture),
    /// There is nothing to decode.
    #[error("No function symbols with a size in an executable section: is the ELF stripped?")]
    NoFunctions,
}

/// A function symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// Its virtual address.
    pub addr: u64,
    /// Its size in bytes (only the bytes present in the file are decoded).
    pub size: u64,
}

impl Function {
    /// Whether `addr` lies inside the function.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
}

/// How [`ElfMap::parse_with`] splits blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Also start a block after every call (default: no, a call does not
    /// end a block; fewer breakpoints).
    pub split_at_calls: bool,
}

/// The blocks and comparison sites of a guest ELF.
#[derive(Clone, Debug)]
pub struct ElfMap {
    bitness: u32,
    functions: Vec<Function>,
    blocks: Vec<u64>,
    cmps: Vec<CmpSite>,
}

impl ElfMap {
    /// Maps the ELF in `bytes` with the default [`ParseOptions`].
    pub fn parse(bytes: &[u8]) -> Result<ElfMap, ElfMapError> {
        ElfMap::parse_with(bytes, ParseOptions::default())
    }

    /// Maps the ELF in `bytes`.
    pub fn parse_with(bytes: &[u8], opts: ParseOptions) -> Result<ElfMap, ElfMapError> {
        let file = object::File::parse(bytes).map_err(ElfMapError::Parse)?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(ElfMapError::NotElf(file.format()));
        }
        let bitness = match file.architecture() {
            Architecture::X86_64 => 64,
            Architecture::I386 => 32,
            other => return Err(ElfMapError::Architecture(other)),
        };

        // (function, its bytes in the file)
        let mut found: Vec<(Function, &[u8])> = Vec::new();
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text || sym.size() == 0 {
                continue;
            }
            let (Some(index), Ok(name)) = (sym.section_index(), sym.name()) else {
                continue;
            };
            let Ok(section) = file.section_by_index(index) else {
                continue;
            };
            if section.kind() != SectionKind::Text {
                continue;
            }
            let Ok(data) = section.data() else {
                continue;
            };
            let code = sym
                .address()
                .checked_sub(section.address())
                .and_then(|off| usize::try_from(off).ok())
                .and_then(|off| {
                    let len = usize::try_from(sym.size()).unwrap_or(usize::MAX);
                    data.get(off..off.saturating_add(len).min(data.len()))
                })
                .unwrap_or(&[]);
            found.push((
                Function {
                    name: name.to_string(),
                    addr: sym.address(),
                    size: sym.size(),
                },
                code,
            ));
        }
        if found.is_empty() {
            return Err(ElfMapError::NoFunctions);
        }
        found.sort_by(|a, b| (a.0.addr, a.0.size, &a.0.name).cmp(&(b.0.addr, b.0.size, &b.0.name)));

        let mut blocks = Vec::new();
        let mut cmps = Vec::new();
        let mut scratch = decode::Scratch::default();
        let mut last = None;
        for (f, code) in &found {
            // Aliases (several names, same code) are decoded once.
            if last == Some((f.addr, f.size)) {
                continue;
            }
            last = Some((f.addr, f.size));
            decode::scan_function(
                bitness,
                f.addr,
                code,
                opts.split_at_calls,
                &mut scratch,
                &mut blocks,
                &mut cmps,
            );
        }
        blocks.sort_unstable();
        blocks.dedup();
        cmps.sort_by_key(|c| c.addr);
        cmps.dedup_by_key(|c| c.addr);
        Ok(ElfMap {
            bitness,
            functions: found.into_iter().map(|(f, _)| f).collect(),
            blocks,
            cmps,
        })
    }

    /// 64 or 32: how the code was decoded.
    pub fn bitness(&self) -> u32 {
        self.bitness
    }

    /// The function symbols, by address (then size, then name).
    pub fn functions(&self) -> &[Function] {
        &self.functions
    }

    /// The first function named `name` (a linear search).
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The function containing `addr` (of several overlapping ones, the one
    /// starting closest below it).
    pub fn function_at(&self, addr: u64) -> Option<&Function> {
        let end = self.functions.partition_point(|f| f.addr <= addr);
        self.functions[..end]
            .iter()
            .rev()
            .find(|f| f.contains(addr))
    }

    /// Every block start, ascending and unique; a block's index here is its
    /// stable index (the same for the same ELF and options).
    pub fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    /// The index of the block starting at `addr`.
    pub fn block_index(&self, addr: u64) -> Option<usize> {
        self.blocks.binary_search(&addr).ok()
    }

    /// The blocks inside `f`.
    pub fn blocks_in(&self, f: &Function) -> &[u64] {
        let lo = self.blocks.partition_point(|&a| a < f.addr);
        let hi = self
            .blocks
            .partition_point(|&a| a < f.addr.saturating_add(f.size));
        &self.blocks[lo..hi.max(lo)]
    }

    /// Every comparison site, by address.
    pub fn cmp_sites(&self) -> &[CmpSite] {
        &self.cmps
    }

    /// The comparison site at `addr`.
    pub fn cmp_site(&self, addr: u64) -> Option<&CmpSite> {
        let i = self.cmps.binary_search_by_key(&addr, |c| c.addr).ok()?;
        self.cmps.get(i)
    }

    /// The comparison sites inside `f`.
    pub fn cmp_sites_in(&self, f: &Function) -> &[CmpSite] {
        let lo = self.cmps.partition_point(|c| c.addr < f.addr);
        let hi = self
            .cmps
            .partition_point(|c| c.addr < f.addr.saturating_add(f.size));
        &self.cmps[lo..hi.max(lo)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guests;
    use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind, Register};

    fn map(name: &str) -> ElfMap {
        ElfMap::parse(guests::find(name).expect("built-in guest").elf).expect("maps")
    }

    #[test]
    fn fuzzme_parse_has_the_magic_compare() {
        let m = map("fuzzme");
        assert_eq!(m.bitness(), 64);
        let parse = m.function("parse").expect("parse is a function");
        let magic = m
            .cmp_sites_in(parse)
            .iter()
            .find(|c| c.rhs == Operand::Imm(0x414e_554c))
            .expect("the magic compare");
        assert_eq!((magic.kind, magic.width), (CmpKind::Cmp, 4));
        assert!(parse.contains(magic.addr));
        assert_eq!(m.cmp_site(magic.addr), Some(magic));
        // The packet pointer is the first argument: the compare reads memory at rdi.
        let Operand::Mem(mem) = magic.lhs else {
            panic!("{magic:?}")
        };
        assert_eq!(
            (mem.base, mem.index, mem.displacement),
            (Register::RDI, Register::None, 0)
        );
    }

    #[test]
    fn every_function_start_is_a_block_and_indices_are_stable() {
        for name in ["fuzzme", "fuzzme_cov", "hello"] {
            let m = map(name);
            assert!(m.blocks().windows(2).all(|w| w[0] < w[1]), "{name}");
            for f in m.functions() {
                assert!(m.block_index(f.addr).is_some(), "{name}: {}", f.name);
                assert_eq!(m.function_at(f.addr).map(|g| g.addr), Some(f.addr));
            }
            for (i, &b) in m.blocks().iter().enumerate() {
                assert_eq!(m.block_index(b), Some(i));
                assert!(
                    m.function_at(b).is_some(),
                    "{name}: block {b:#x} outside functions"
                );
            }
            let again = map(name);
            assert_eq!(again.blocks(), m.blocks());
            assert_eq!(again.cmp_sites(), m.cmp_sites());
        }
    }

    /// Re-decodes fuzzme's `parse` independently: every conditional branch's
    /// target (inside the function) and fall-through are block starts.
    #[test]
    fn branch_targets_and_fall_throughs_are_blocks() {
        let guest = guests::find("fuzzme").unwrap();
        let m = map("fuzzme");
        let f = m.function("parse").unwrap().clone();
        let file = object::File::parse(guest.elf).unwrap();
        let text = file.section_by_name(".text").unwrap();
        let off = usize::try_from(f.addr - text.address()).unwrap();
        let len = usize::try_from(f.size).unwrap();
        let code = &text.data().unwrap()[off..off + len];
        let mut conditional = 0;
        for i in Decoder::with_ip(64, code, f.addr, DecoderOptions::NONE) {
            if i.flow_control() == FlowControl::ConditionalBranch {
                conditional += 1;
                assert!(m.block_index(i.next_ip()).is_some(), "after {:#x}", i.ip());
                if i.op0_kind() == OpKind::NearBranch64 && f.contains(i.near_branch_target()) {
                    assert!(m.block_index(i.near_branch_target()).is_some());
                }
            }
        }
        assert!(conditional >= 5, "parse has its checks: {conditional}");
        assert!(m.blocks_in(&f).len() > conditional);
        assert!(m.blocks_in(&f).iter().all(|&b| f.contains(b)));
    }

    #[test]
    fn splitting_at_calls_adds_blocks_after_the_coverage_calls() {
        let elf = guests::find("fuzzme_cov").unwrap().elf;
        let plain = ElfMap::parse(elf).unwrap();
        let split = ElfMap::parse_with(
            elf,
            ParseOptions {
                split_at_calls: true,
            },
        )
        .unwrap();
        let f = plain.function("parse").unwrap();
        assert!(split.blocks_in(f).len() > plain.blocks_in(f).len());
        assert!(plain
            .blocks()
            .iter()
            .all(|b| split.block_index(*b).is_some()));
        assert!(plain.function("__sanitizer_cov_trace_pc").is_some());
    }

    #[test]
    fn a_32_bit_guest_is_decoded_as_32_bit_code() {
        let m = map("mb_hello");
        assert_eq!(m.bitness(), 32);
        assert!(!m.blocks().is_empty());
        assert!(m.function("guest_main").is_some());
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(ElfMap::parse(&[]), Err(ElfMapError::Parse(_))));
        assert!(matches!(
            ElfMap::parse(b"\x7fELF garbage"),
            Err(ElfMapError::Parse(_))
        ));
        // hello with e_machine = AArch64 (183)
        let mut elf = guests::find("hello").unwrap().elf.to_vec();
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert!(matches!(
            ElfMap::parse(&elf),
            Err(ElfMapError::Architecture(Architecture::Aarch64))
        ));
        // hello with every symbol's type cleared (st_info of Elf64_Sym at +4).
        let mut elf = guests::find("hello").unwrap().elf.to_vec();
        strip_symbol_types(&mut elf);
        assert!(matches!(ElfMap::parse(&elf), Err(ElfMapError::NoFunctions)));
    }

    /// Sets st_info to 0 (LOCAL, NOTYPE) for every symbol in .symtab.
    fn strip_symbol_types(elf: &mut [u8]) {
        let (off, size) = {
            let file = object::File::parse(&*elf).unwrap();
            let s = file.section_by_name(".symtab").unwrap();
            let (off, size) = s.file_range().unwrap();
            (
                usize::try_from(off).unwrap(),
                usize::try_from(size).unwrap(),
            )
        };
        for sym in elf[off..off + size].chunks_exact_mut(24) {
            sym[4] = 0;
        }
    }
}
