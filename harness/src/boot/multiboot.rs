//! Multiboot v1: a kernel with a multiboot header in its first 8 KiB is entered in
//! 32-bit protected mode with EAX = 0x2BADB002 and EBX pointing to a multiboot
//! information block (memory sizes, command line, modules, memory map).

use super::{elf::ElfInfo, BootError, LoadedKernel, Module, Protocol};
use crate::layout::{self, RangeKind};
use crate::vm::memory::GuestMem;

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1bad_b002;
/// The value in EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// How far into the file the header may start.
pub const SEARCH_LEN: usize = 8192;
/// Header flag: align modules on page boundaries.
pub const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information wanted.
pub const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: video mode wanted (ignored: there is no display).
pub const FLAG_VIDEO_MODE: u32 = 1 << 2;
/// Header flag: the address fields are valid (a.out kludge).
pub const FLAG_ADDRESS_FIELDS: u32 = 1 << 16;

/// Info flags lunavm sets: mem_lower/upper, cmdline, mods, mmap.
const INFO_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6);

/// Errors of the multiboot header.
#[derive(Debug, thiserror::Error)]
pub enum MultibootError {
    /// The checksum does not cancel out.
    #[error("Multiboot header at offset {0:#x} has a bad checksum")]
    BadChecksum(usize),
    /// Requirement bits lunavm does not know (bits 0-15 must be understood).
    #[error("Multiboot header requires features lunavm does not provide (flags {0:#x})")]
    UnsupportedFlags(u32),
    /// The address fields are inconsistent.
    #[error("Multiboot header address fields are inconsistent: {0}")]
    BadAddressFields(&'static str),
    /// A non-ELF file without address fields.
    #[error("Multiboot kernel is not ELF and its header has no address fields (flag 16)")]
    NoAddressFields,
}

/// A parsed multiboot header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header in the file.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr.
    pub addrs: [u32; 5],
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

/// Finds and checks the multiboot header, if the image has one.
pub fn find_header(image: &[u8]) -> Result<Option<Header>, MultibootError> {
    let limit = image.len().min(SEARCH_LEN);
    for offset in (0..limit.saturating_sub(11)).step_by(4) {
        if u32_at(image, offset) != Some(HEADER_MAGIC) {
            continue;
        }
        let flags = u32_at(image, offset + 4).unwrap_or(0);
        let checksum = u32_at(image, offset + 8).unwrap_or(0);
        if HEADER_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
            return Err(MultibootError::BadChecksum(offset));
        }
        let known = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;
        if flags & 0xffff & !known != 0 {
            return Err(MultibootError::UnsupportedFlags(flags));
        }
        let mut addrs = [0u32; 5];
        if flags & FLAG_ADDRESS_FIELDS != 0 {
            for (i, a) in addrs.iter_mut().enumerate() {
                *a = u32_at(image, offset + 12 + 4 * i)
                    .ok_or(MultibootError::BadAddressFields("header truncated"))?;
            }
        }
        return Ok(Some(Header {
            offset,
            flags,
            addrs,
        }));
    }
    Ok(None)
}

/// Loads a multiboot kernel: by its address fields when flag 16 is set, else as
/// an ELF file.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    header: &Header,
    elf: Option<&ElfInfo>,
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    let (image_start, image_end, entry) = if header.flags & FLAG_ADDRESS_FIELDS != 0 {
        load_by_address_fields(mem, mem_size, image, header)?
    } else {
        let info = elf.ok_or(MultibootError::NoAddressFields)?;
        let (s, e) = super::load_segments(mem, mem_size, image, &info.segments)?;
        (s, e, info.entry)
    };
    let cmdline_addr = super::write_cmdline(mem, cmdline)?;
    let placed = super::place_modules(mem, mem_size, image_end, modules)?;

    // Memory map first in the tables page, then the module list.
    let mut mmap = Vec::new();
    for r in layout::memory_map(mem_size) {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&r.start.to_le_bytes());
        mmap.extend_from_slice(&r.size.to_le_bytes());
        let kind: u32 = if r.kind == RangeKind::Ram { 1 } else { 2 };
        mmap.extend_from_slice(&kind.to_le_bytes());
    }
    super::write(mem, layout::BOOT_TABLES_ADDR, &mmap);
    let mods_addr = layout::BOOT_TABLES_ADDR + super::pvh::MODLIST_OFFSET;
    let mut mods = Vec::new();
    for &(start, end, str_addr) in &placed {
        for v in [start, end, str_addr, 0] {
            mods.extend_from_slice(&lo32(v).to_le_bytes());
        }
    }
    super::write(mem, mods_addr, &mods);

    let low_kib = layout::LOW_RAM_END / 1024;
    let upper_kib = (mem_size.min(layout::MMIO_START) - layout::KERNEL_MIN_ADDR) / 1024;
    let mut info = [0u32; 22];
    info[0] = INFO_FLAGS;
    info[1] = lo32(low_kib);
    info[2] = lo32(upper_kib);
    info[4] = lo32(cmdline_addr);
    info[5] = lo32(placed.len() as u64);
    info[6] = lo32(mods_addr);
    info[11] = lo32(mmap.len() as u64);
    info[12] = lo32(layout::BOOT_TABLES_ADDR);
    let bytes: Vec<u8> = info.iter().flat_map(|v| v.to_le_bytes()).collect();
    super::write(mem, layout::BOOT_INFO_ADDR, &bytes);

    Ok(LoadedKernel {
        protocol: Protocol::Multiboot,
        entry,
        eax: u64::from(BOOTLOADER_MAGIC),
        ebx: layout::BOOT_INFO_ADDR,
        image_start,
        image_end,
        modules: placed.iter().map(|&(s, e, _)| (s, e)).collect(),
    })
}

/// A 32-bit multiboot field. Everything multiboot describes lies below the MMIO
/// hole (the image and its modules share the low RAM slot), so nothing saturates.
fn lo32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn load_by_address_fields(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    h: &Header,
) -> Result<(u64, u64, u64), BootError> {
    let [header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr] = h.addrs.map(u64::from);
    let bad = |m| BootError::Multiboot(MultibootError::BadAddressFields(m));
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_start = (h.offset as u64)
        .checked_sub(header_addr - load_addr)
        .ok_or(bad("load_addr is before the start of the file"))?;
    let load_len = if load_end_addr == 0 {
        image.len() as u64 - file_start
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or(bad("load_end_addr is below load_addr"))?
    };
    if file_start + load_len > image.len() as u64 {
        return Err(bad("load_end_addr is beyond the end of the file"));
    }
    let end = if bss_end_addr == 0 {
        load_addr + load_len
    } else {
        bss_end_addr
    };
    if end < load_addr + load_len {
        return Err(bad("bss_end_addr is below load_end_addr"));
    }
    super::check_range(mem_size, load_addr, end - load_addr)?;
    if entry_addr < load_addr || entry_addr >= end {
        return Err(bad("entry_addr is outside the loaded image"));
    }
    let (s, n) = (super::to_usize(file_start), super::to_usize(load_len));
    super::write(mem, load_addr, &image[s..s + n]);
    super::zero(mem, load_addr + load_len, end - load_addr - load_len);
    Ok((load_addr, end, entry_addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;

    fn header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
        let mut v = vec![0u8; 16];
        let mut h = vec![
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ];
        if let Some(a) = addrs {
            h.extend_from_slice(&a);
        }
        v.extend(h.iter().flat_map(|x| x.to_le_bytes()));
        v
    }

    #[test]
    fn finds_and_validates_headers() {
        assert_eq!(find_header(&[0; 100]).unwrap(), None);
        let img = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, None);
        assert_eq!(find_header(&img).unwrap().unwrap().offset, 16);
        let mut bad = img.clone();
        bad[24] ^= 1;
        assert!(matches!(
            find_header(&bad),
            Err(MultibootError::BadChecksum(16))
        ));
        let img = header(1 << 5, None);
        assert!(matches!(
            find_header(&img),
            Err(MultibootError::UnsupportedFlags(_))
        ));
    }

    #[test]
    fn loads_by_address_fields() {
        let mem = memory::create(4 << 20).unwrap();
        // Header at file offset 16 maps to 0x100010: the file loads at 0x100000.
        let mut img = header(
            FLAG_ADDRESS_FIELDS,
            Some([0x10_0010, 0x10_0000, 0, 0x10_2000, 0x10_0040]),
        );
        img.resize(0x100, 0x90);
        let h = find_header(&img).unwrap().unwrap();
        let k = load(&mem, 4 << 20, &img, &h, None, "hi", &[]).unwrap();
        assert_eq!(
            (k.entry, k.image_start, k.image_end),
            (0x10_0040, 0x10_0000, 0x10_2000)
        );
        assert_eq!(k.eax, u64::from(BOOTLOADER_MAGIC));
        let mut b = [0u8; 1];
        memory::read_phys(&mem, 0x10_00ff, &mut b);
        assert_eq!(b[0], 0x90);

        let bad_entry = header(
            FLAG_ADDRESS_FIELDS,
            Some([0x10_0010, 0x10_0000, 0, 0, 0x50_0000]),
        );
        let h = find_header(&bad_entry).unwrap().unwrap();
        assert!(load(&mem, 4 << 20, &bad_entry, &h, None, "", &[]).is_err());
        let low = header(FLAG_ADDRESS_FIELDS, Some([0x8010, 0x8000, 0, 0, 0x8010]));
        let h = find_header(&low).unwrap().unwrap();
        assert!(matches!(
            load(&mem, 4 << 20, &low, &h, None, "", &[]),
            Err(BootError::SegmentOutsideRam { .. })
        ));
    }
}
