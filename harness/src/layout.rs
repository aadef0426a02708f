//! The guest-physical memory map, defined once.
//!
//! Every consumer (the loaders' e820/multiboot/PVH maps, the run loop's device
//! placement, the report) reads the map from here, so it exists in one place.
//!
//! ```text
//! 0x0000_0000 - 0x0000_0fff  real-mode IVT/BDA page (RAM, left zero)
//! 0x0000_1000 - 0x0000_1fff  CPU probe scratch page (harness, cleared after use)
//! 0x0000_2000 - 0x0000_4fff  SYSCALL probe page tables (harness, cleared after use)
//! 0x0000_6000 - 0x0000_6fff  boot information page (hvm_start_info / multiboot info)
//! 0x0000_7000 - 0x0000_7fff  memory map and module list
//! 0x0000_8000 - 0x0000_8fff  boot GDT (harness)
//! 0x0000_9000 - 0x0000_efff  identity page tables for Linux's 64-bit entry
//! 0x0002_0000 - 0x0002_ffff  kernel command line (up to 64 KiB)
//! 0x0009_fc00 - 0x000f_ffff  legacy EBDA/VGA/BIOS hole (reserved in the map)
//! 0x000e_0000 - 0x000f_ffff  ACPI tables (RSDP where the BIOS-area scan finds it)
//! 0x0010_0000 - MMIO_START   RAM for the kernel, modules and the guest
//! 0xc000_0000 - 0xffff_ffff  32-bit MMIO hole:
//!     0xd000_0000 -          virtio-mmio slots, one 4 KiB page each
//!     0xfec0_0000            IOAPIC
//!     0xfee0_0000            LAPIC
//! 0x1_0000_0000 -            RAM above 4 GiB when --mem exceeds the hole
//! ```

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Physical page used to probe the effective CPUID before boot; zeroed afterwards.
pub const CPU_PROBE_ADDR: u64 = 0x1000;
/// Three pages of page tables for the SYSCALL probe before boot; zeroed afterwards.
pub const SYSCALL_PROBE_TABLES_ADDR: u64 = 0x2000;
/// Where the boot information block (PVH `hvm_start_info`, multiboot info) goes.
pub const BOOT_INFO_ADDR: u64 = 0x6000;
/// Where the memory map and module list go.
pub const BOOT_TABLES_ADDR: u64 = 0x7000;
/// Size of the memory map / module list area.
pub const BOOT_TABLES_SIZE: u64 = 0x1000;
/// The GDT the harness installs for 32-bit protected-mode entry.
pub const BOOT_GDT_ADDR: u64 = 0x8000;
/// Page tables of Linux's 64-bit entry: PML4, PDPT, then four page
/// directories mapping 0-4 GiB with 2 MiB pages (six pages).
pub const BOOT_PAGE_TABLES_ADDR: u64 = 0x9000;
/// Where the kernel command line is copied.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Maximum command line length, including the terminating NUL.
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// End of conventional low memory usable by the guest (start of the EBDA).
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// First byte a kernel image may be loaded at: everything below belongs to the
/// harness's boot areas and the legacy hole.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_END: u64 = 0x1_0000_0000;
/// Where the ACPI tables go (inside the legacy hole, so the guest's scan of
/// 0xE0000-0xFFFFF for the RSDP finds them).
pub const ACPI_TABLES_ADDR: u64 = 0xe_0000;
/// Size of the ACPI tables area.
pub const ACPI_TABLES_SIZE: u64 = 0x2_0000;
/// Base of the first virtio-mmio slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot (one page, as Firecracker uses).
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// The interrupt lines of the virtio-mmio slots, in slot order: ISA lines the
/// PC platform leaves free (0 PIT, 1 keyboard, 2 cascade, 4 COM1, 8 RTC, 9 the
/// ACPI SCI, 13 FPU are taken). Their number bounds the number of slots.
pub const VIRTIO_MMIO_IRQS: [u8; 8] = [5, 6, 7, 10, 11, 12, 14, 15];
// The virtio slots fit in the MMIO hole below the IOAPIC, and the ACPI area
// in the legacy hole below the kernel.
const _: () = assert!(
    VIRTIO_MMIO_BASE >= MMIO_START
        && VIRTIO_MMIO_BASE + VIRTIO_MMIO_SLOT_SIZE * VIRTIO_MMIO_IRQS.len() as u64 <= IOAPIC_ADDR
        && ACPI_TABLES_ADDR >= LOW_RAM_END
        && ACPI_TABLES_ADDR + ACPI_TABLES_SIZE <= KERNEL_MIN_ADDR
);

/// Base of the IOAPIC's MMIO window (reserved for later issues).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Base of the local APIC's MMIO window (reserved for later issues).
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Default guest RAM size.
pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;
/// Smallest guest RAM size lunavm accepts (room for the boot areas and a kernel).
pub const MIN_MEM_SIZE: u64 = 2 << 20;

/// Kinds of ranges in the guest-physical map, as the e820 map reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RangeKind {
    /// Usable RAM.
    Ram,
    /// Reserved: not RAM the guest may use.
    Reserved,
}

/// One range in the guest-physical map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapRange {
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// What it is.
    pub kind: RangeKind,
}

/// The RAM slots backing `mem_size` bytes of guest RAM: below the MMIO hole,
/// then above 4 GiB for whatever does not fit.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_START), (MMIO_END, mem_size - MMIO_START)]
    }
}

/// The e820-style map the guest is told about for `mem_size` bytes of RAM.
pub fn memory_map(mem_size: u64) -> Vec<MapRange> {
    let mut map = vec![
        MapRange {
            start: 0,
            size: LOW_RAM_END,
            kind: RangeKind::Ram,
        },
        MapRange {
            start: LOW_RAM_END,
            size: KERNEL_MIN_ADDR - LOW_RAM_END,
            kind: RangeKind::Reserved,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (KERNEL_MIN_ADDR, size - KERNEL_MIN_ADDR)
        } else {
            (start, size)
        };
        map.push(MapRange {
            start,
            size,
            kind: RangeKind::Ram,
        });
    }
    map.push(MapRange {
        start: IOAPIC_ADDR,
        size: MMIO_END - IOAPIC_ADDR,
        kind: RangeKind::Reserved,
    });
    map.sort_by_key(|r| r.start);
    map
}

/// Whether `[start, start + len)` lies wholly in guest RAM available to a kernel
/// image (at or above [`KERNEL_MIN_ADDR`], outside the MMIO hole).
pub fn is_kernel_range(mem_size: u64, start: u64, len: u64) -> bool {
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    start >= KERNEL_MIN_ADDR
        && ram_ranges(mem_size)
            .iter()
            .any(|&(s, size)| start >= s && end <= s + size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_slot() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_memory_splits_around_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_START), (MMIO_END, (4 << 30) - MMIO_START)]);
    }

    #[test]
    fn kernel_ranges_are_checked() {
        let mem = 128 << 20;
        assert!(is_kernel_range(mem, 0x10_0000, 0x1000));
        assert!(!is_kernel_range(mem, 0x8000, 0x1000), "boot area");
        assert!(
            !is_kernel_range(mem, mem - 0x800, 0x1000),
            "crosses the end of RAM"
        );
        assert!(!is_kernel_range(mem, u64::MAX - 4, 0x10), "overflow");
    }

    #[test]
    fn memory_map_is_sorted_and_has_ram_above_one_mib() {
        let map = memory_map(128 << 20);
        assert!(map.windows(2).all(|w| w[0].start + w[0].size <= w[1].start));
        assert!(map
            .iter()
            .any(|r| r.kind == RangeKind::Ram && r.start == KERNEL_MIN_ADDR));
    }
}
