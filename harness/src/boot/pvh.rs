//! The Xen PVH boot protocol: an ELF kernel with a `XEN_ELFNOTE_PHYS32_ENTRY`
//! note is entered in 32-bit protected mode with paging off and EBX pointing to
//! an `hvm_start_info` block (command line, memory map, modules).

use super::{elf::ElfInfo, BootError, LoadedKernel, Module, Protocol};
use crate::layout::{self, RangeKind};
use crate::vm::memory::GuestMem;

/// `hvm_start_info.magic`.
pub const HVM_START_MAGIC: u32 = 0x336e_c578;
/// Version of `hvm_start_info` written (1 has the memory map fields).
pub const HVM_START_VERSION: u32 = 1;
/// Memory map entry type for RAM.
pub const E820_RAM: u32 = 1;
/// Memory map entry type for reserved ranges.
pub const E820_RESERVED: u32 = 2;
/// Most modules the boot tables hold.
pub const MAX_MODULES: usize = 64;
/// Where in the boot-tables page the module list starts (the memory map first).
pub const MODLIST_OFFSET: u64 = 0x400;
/// Offset of `rsdp_paddr` in `hvm_start_info`.
pub const RSDP_PADDR_OFFSET: u64 = 32;

/// Sets `hvm_start_info.rsdp_paddr` of the PVH kernel [`load`] prepared, so
/// the kernel finds the ACPI tables without scanning for them (0 leaves it to
/// the scan). Call it after [`load`]; other protocols have no such field.
pub fn set_rsdp(mem: &GuestMem, rsdp_paddr: u64) {
    super::write(
        mem,
        layout::BOOT_INFO_ADDR + RSDP_PADDR_OFFSET,
        &rsdp_paddr.to_le_bytes(),
    );
}

/// Serialises the e820 map as `hvm_memmap_table_entry` records.
pub fn memmap_bytes(mem_size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for r in layout::memory_map(mem_size) {
        out.extend_from_slice(&r.start.to_le_bytes());
        out.extend_from_slice(&r.size.to_le_bytes());
        let kind = if r.kind == RangeKind::Ram {
            E820_RAM
        } else {
            E820_RESERVED
        };
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    out
}

/// Loads a PVH kernel whose segments are in `info`.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    info: &ElfInfo,
    entry: u64,
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    let (image_start, image_end) = super::load_segments(mem, mem_size, image, &info.segments)?;
    let cmdline_paddr = super::write_cmdline(mem, cmdline)?;
    let placed = super::place_modules(mem, mem_size, image_end, modules)?;

    let memmap = memmap_bytes(mem_size);
    let memmap_entries = memmap.len() / 24;
    super::write(mem, layout::BOOT_TABLES_ADDR, &memmap);

    let modlist_paddr = layout::BOOT_TABLES_ADDR + MODLIST_OFFSET;
    let mut modlist = Vec::new();
    for &(start, end, str_addr) in &placed {
        modlist.extend_from_slice(&start.to_le_bytes());
        modlist.extend_from_slice(&(end - start).to_le_bytes());
        modlist.extend_from_slice(&str_addr.to_le_bytes());
        modlist.extend_from_slice(&0u64.to_le_bytes());
    }
    super::write(mem, modlist_paddr, &modlist);

    let mut info_block = Vec::with_capacity(56);
    info_block.extend_from_slice(&HVM_START_MAGIC.to_le_bytes());
    info_block.extend_from_slice(&HVM_START_VERSION.to_le_bytes());
    info_block.extend_from_slice(&0u32.to_le_bytes()); // flags
    info_block.extend_from_slice(
        &u32::try_from(placed.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    info_block
        .extend_from_slice(&(if placed.is_empty() { 0 } else { modlist_paddr }).to_le_bytes());
    info_block.extend_from_slice(&cmdline_paddr.to_le_bytes());
    debug_assert_eq!(info_block.len() as u64, RSDP_PADDR_OFFSET);
    info_block.extend_from_slice(&0u64.to_le_bytes()); // rsdp_paddr: see set_rsdp
    info_block.extend_from_slice(&layout::BOOT_TABLES_ADDR.to_le_bytes());
    info_block.extend_from_slice(
        &u32::try_from(memmap_entries)
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    info_block.extend_from_slice(&0u32.to_le_bytes());
    super::write(mem, layout::BOOT_INFO_ADDR, &info_block);

    Ok(LoadedKernel {
        protocol: Protocol::Pvh,
        entry,
        eax: 0,
        ebx: layout::BOOT_INFO_ADDR,
        image_start,
        image_end,
        modules: placed.iter().map(|&(s, e, _)| (s, e)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memmap_fits_before_the_module_list() {
        let bytes = memmap_bytes(8 << 30);
        assert_eq!(bytes.len() % 24, 0);
        assert!((bytes.len() as u64) <= MODLIST_OFFSET);
        assert!((MODLIST_OFFSET + 32 * MAX_MODULES as u64) <= layout::BOOT_TABLES_SIZE);
    }

    #[test]
    fn set_rsdp_fills_the_start_info_field() {
        let mem = crate::vm::memory::create(4 << 20).unwrap();
        set_rsdp(&mem, 0xe_0000);
        let mut b = [0u8; 8];
        let at = layout::BOOT_INFO_ADDR + RSDP_PADDR_OFFSET;
        assert!(crate::vm::memory::read_phys(&mem, at, &mut b));
        assert_eq!(u64::from_le_bytes(b), 0xe_0000);
    }
}
