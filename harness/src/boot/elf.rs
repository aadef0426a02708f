//! ELF parsing for the loaders (ELF32 and ELF64, x86 only): loadable segments,
//! the entry point, and the Xen PVH entry note.

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// Xen's note type for the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// A loadable segment, by physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical load address (p_paddr).
    pub paddr: u64,
    /// Offset of the file bytes.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zeroed).
    pub memsz: u64,
}

/// What the loaders need from an ELF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELF64 (else ELF32).
    pub is_64: bool,
    /// e_entry.
    pub entry: u64,
    /// PT_LOAD segments with a non-zero memory size.
    pub segments: Vec<Segment>,
    /// The PVH 32-bit entry from the Xen note, if there is one.
    pub pvh_entry: Option<u64>,
    /// A Linux x86-64 vmlinux: ELF64 with Linux's `.head.text` section (where
    /// `startup_64` lives), enterable through the 64-bit boot protocol.
    pub linux_64: bool,
}

/// Errors of parsing an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// object could not parse it.
    #[error("Malformed ELF file: {0}")]
    Malformed(String),
    /// Not little-endian x86.
    #[error("ELF file is for machine {0}, not x86 or x86-64")]
    WrongMachine(u16),
    /// A segment's bytes lie beyond the end of the file.
    #[error("ELF segment at {paddr:#x} needs file bytes {offset:#x}..{end:#x} but the file has {len:#x} bytes (truncated?)")]
    Truncated {
        /// Segment address.
        paddr: u64,
        /// File offset.
        offset: u64,
        /// End of the needed bytes.
        end: u64,
        /// File length.
        len: u64,
    },
    /// p_filesz larger than p_memsz.
    #[error("ELF segment at {0:#x} has a file size larger than its memory size")]
    FileLargerThanMemory(u64),
}

/// Whether `data` starts with the ELF magic.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Parses an ELF32 or ELF64 x86 file.
pub fn parse(data: &[u8]) -> Result<ElfInfo, ElfError> {
    // Byte 4 of the identification is the file class.
    match data.get(4).map(|&c| elf::FileClass(c)) {
        Some(elf::ELFCLASS64) => parse_generic::<elf::FileHeader64<Endianness>>(data),
        Some(elf::ELFCLASS32) => parse_generic::<elf::FileHeader32<Endianness>>(data),
        _ => Err(ElfError::Malformed("unknown ELF class".into())),
    }
}

fn malformed(e: object::Error) -> ElfError {
    ElfError::Malformed(e.to_string())
}

fn parse_generic<H: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfInfo, ElfError> {
    let header = H::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    if endian != Endianness::Little {
        return Err(ElfError::Malformed("big-endian ELF".into()));
    }
    let machine = header.e_machine(endian);
    if machine != elf::EM_386 && machine != elf::EM_X86_64 {
        return Err(ElfError::WrongMachine(machine.0));
    }
    let len = data.len() as u64;
    let mut segments = Vec::new();
    let mut pvh_entry = None;
    for ph in header.program_headers(endian, data).map_err(malformed)? {
        let p_type = ph.p_type(endian);
        if p_type == elf::PT_LOAD {
            let seg = Segment {
                paddr: ph.p_paddr(endian).into(),
                offset: ph.p_offset(endian).into(),
                filesz: ph.p_filesz(endian).into(),
                memsz: ph.p_memsz(endian).into(),
            };
            if seg.memsz == 0 {
                continue;
            }
            if seg.filesz > seg.memsz {
                return Err(ElfError::FileLargerThanMemory(seg.paddr));
            }
            let end = seg.offset.saturating_add(seg.filesz);
            if end > len {
                return Err(ElfError::Truncated {
                    paddr: seg.paddr,
                    offset: seg.offset,
                    end,
                    len,
                });
            }
            segments.push(seg);
        } else if p_type == elf::PT_NOTE && pvh_entry.is_none() {
            if let Some(mut notes) = ph.notes(endian, data).map_err(malformed)? {
                while let Some(note) = notes.next().map_err(malformed)? {
                    if note.name() == b"Xen" && note.n_type(endian).0 == XEN_ELFNOTE_PHYS32_ENTRY {
                        pvh_entry = note_value(note.desc());
                    }
                }
            }
        }
    }
    let linux_64 = header.is_class_64() && has_section(header, endian, data, b".head.text");
    Ok(ElfInfo {
        is_64: header.is_class_64(),
        entry: header.e_entry(endian).into(),
        segments,
        pvh_entry,
        linux_64,
    })
}

/// Whether the file has a section called `name` (false when the section
/// table cannot be read: it is optional for loading).
fn has_section<H: FileHeader<Endian = Endianness>>(
    header: &H,
    endian: Endianness,
    data: &[u8],
    name: &[u8],
) -> bool {
    let Ok(sections) = header.sections(endian, data) else {
        return false;
    };
    sections
        .iter()
        .any(|s| sections.section_name(endian, s).is_ok_and(|n| n == name))
}

/// A note's descriptor read as a little-endian 32- or 64-bit value.
fn note_value(desc: &[u8]) -> Option<u64> {
    match desc.len() {
        4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
        8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(!is_elf(b"MZ"));
        assert!(parse(b"\x7fELF").is_err());
        let mut junk = vec![0u8; 64];
        junk[..4].copy_from_slice(b"\x7fELF");
        junk[4] = 2;
        assert!(parse(&junk).is_err());
    }

    #[test]
    fn note_values() {
        assert_eq!(note_value(&[1, 0, 0x10, 0]), Some(0x10_0001));
        assert_eq!(note_value(&[0; 3]), None);
    }
}
