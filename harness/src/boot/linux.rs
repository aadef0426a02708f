//! Linux's 64-bit boot protocol (the kernel's Documentation/arch/x86/boot.rst,
//! "64-bit boot protocol"): a bzImage, loaded with linux-loader, or an
//! uncompressed vmlinux ELF without a PVH note. Either is entered in long mode
//! with an identity map of the low 4 GiB, `__BOOT_CS`/`__BOOT_DS`, and RSI
//! pointing at `boot_params` (the "zero page") at [`layout::BOOT_INFO_ADDR`],
//! which carries the setup header, the command line, the e820 map from
//! [`layout::memory_map`] and the initrd (the first module).

use std::io::Cursor;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::GuestAddress;

use super::{elf, BootError, LoadedKernel, Module, Protocol};
use crate::layout::{self, RangeKind};
use crate::vm::memory::GuestMem;

/// The setup header's magic, "HdrS".
const HDRS: u32 = 0x5372_6448;
/// Offset of `boot_params.acpi_rsdp_addr`.
const ACPI_RSDP_OFFSET: u64 = 0x70;
/// The 64-bit entry is this far past the protected-mode kernel's start.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader`: "undefined" (0xff), as loaders without an assigned id use.
const LOADER_UNDEFINED: u8 = 0xff;
/// `loadflags`: the protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;

/// Whether `image` is a bzImage (the "HdrS" setup-header magic at 0x202).
pub fn is_bzimage(image: &[u8]) -> bool {
    image
        .get(0x202..0x206)
        .is_some_and(|m| m == HDRS.to_le_bytes())
}

/// Loads a bzImage.
pub fn load_bzimage(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    let loaded = BzImage::load(
        mem,
        None,
        &mut Cursor::new(image),
        Some(GuestAddress(layout::KERNEL_MIN_ADDR)),
    )
    .map_err(|e| BootError::Linux(format!("linux-loader refused the bzImage: {e}")))?;
    let hdr = loaded
        .setup_header
        .ok_or_else(|| BootError::Linux("the bzImage has no setup header".into()))?;
    if hdr.version < 0x0206 {
        return Err(BootError::Linux(format!(
            "boot protocol {}.{:02} is too old: the 64-bit entry needs 2.06 or later",
            hdr.version >> 8,
            hdr.version & 0xff
        )));
    }
    let start = loaded.kernel_load.0;
    // The kernel decompresses itself in place and needs `init_size` bytes
    // from where it runs (its preferred address when relocatable, else here).
    let runs_at = start.max(hdr.pref_address);
    let end = runs_at + u64::from(hdr.init_size).max(loaded.kernel_end - start);
    super::check_range(mem_size, runs_at, end - runs_at)?;
    finish(
        mem,
        mem_size,
        hdr,
        start,
        end,
        start + ENTRY_64_OFFSET,
        cmdline,
        modules,
    )
}

/// Loads an uncompressed vmlinux (ELF64 without a PVH note) at its physical
/// addresses and enters it at `startup_64` (its ELF entry point, physical).
pub fn load_vmlinux(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    info: &elf::ElfInfo,
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    let (start, end) = super::load_segments(mem, mem_size, image, &info.segments)?;
    let hdr = setup_header {
        boot_flag: 0xaa55,
        header: HDRS,
        version: 0x020f,
        loadflags: LOADED_HIGH,
        kernel_alignment: 0x20_0000,
        ..Default::default()
    };
    finish(mem, mem_size, hdr, start, end, info.entry, cmdline, modules)
}

/// Writes the command line, the initrd, the page tables and `boot_params`.
#[allow(clippy::too_many_arguments)]
fn finish(
    mem: &GuestMem,
    mem_size: u64,
    mut hdr: setup_header,
    image_start: u64,
    image_end: u64,
    entry: u64,
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    if modules.len() > 1 {
        return Err(BootError::Linux(format!(
            "{} modules given: a Linux kernel takes one, its initrd",
            modules.len()
        )));
    }
    let cmdline_addr = super::write_cmdline(mem, cmdline)?;
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= LOADED_HIGH;
    hdr.cmd_line_ptr = u32::try_from(cmdline_addr).unwrap_or(0);
    hdr.cmdline_size = u32::try_from(cmdline.len() + 1).unwrap_or(u32::MAX);
    let mut placed = Vec::new();
    if let Some(initrd) = modules.first() {
        let (at, size) = place_initrd(mem, mem_size, &hdr, image_end, &initrd.data)?;
        hdr.ramdisk_image = u32::try_from(at).unwrap_or(0);
        hdr.ramdisk_size = u32::try_from(size).unwrap_or(u32::MAX);
        placed.push((at, at + size));
    }
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    let map = layout::memory_map(mem_size);
    for (slot, r) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: r.start,
            size: r.size,
            r#type: match r.kind {
                RangeKind::Ram => E820_RAM,
                RangeKind::Reserved => E820_RESERVED,
            },
        };
    }
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(0);
    super::write(mem, layout::BOOT_INFO_ADDR, params_bytes(&params));
    write_page_tables(mem);
    Ok(LoadedKernel {
        protocol: Protocol::Linux,
        entry,
        eax: 0,
        ebx: layout::BOOT_INFO_ADDR,
        image_start,
        image_end,
        modules: placed,
    })
}

/// `boot_params` as bytes.
fn params_bytes(p: &boot_params) -> &[u8] {
    use vm_memory::ByteValued;
    p.as_slice()
}

/// Places the initrd as high as the kernel allows, page-aligned, above the
/// kernel's image.
fn place_initrd(
    mem: &GuestMem,
    mem_size: u64,
    hdr: &setup_header,
    image_end: u64,
    data: &[u8],
) -> Result<(u64, u64), BootError> {
    let size = data.len() as u64;
    let max = if hdr.initrd_addr_max == 0 {
        0x37ff_ffff // the protocol's default before 2.03
    } else {
        u64::from(hdr.initrd_addr_max)
    };
    let top = mem_size.min(layout::MMIO_START).min(max + 1);
    let at = top.saturating_sub(size) & !(layout::PAGE_SIZE - 1);
    if at < super::align_up(image_end, layout::PAGE_SIZE)
        || !layout::is_kernel_range(mem_size, at, size.max(1))
    {
        return Err(BootError::ModuleTooLarge {
            index: 0,
            size: data.len(),
        });
    }
    super::write(mem, at, data);
    Ok((at, size))
}

/// The identity map of 0-4 GiB the 64-bit entry runs on: PML4 -> PDPT ->
/// four page directories of 2 MiB pages.
fn write_page_tables(mem: &GuestMem) {
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let base = layout::BOOT_PAGE_TABLES_ADDR;
    let (pml4, pdpt, pd) = (base, base + 0x1000, base + 0x2000);
    super::zero(mem, base, 6 * layout::PAGE_SIZE);
    super::write(mem, pml4, &(pdpt | P_RW).to_le_bytes());
    for i in 0..4u64 {
        let dir = pd + i * 0x1000;
        super::write(mem, pdpt + i * 8, &(dir | P_RW).to_le_bytes());
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|j| (((i << 30) | (j << 21)) | P_RW | PS).to_le_bytes())
            .collect();
        super::write(mem, dir, &entries);
    }
}

/// The command line lunavm gives a Linux kernel: `nokaslr` (so symbols hold;
/// left out when the user's line says `kaslr`), and for every CPU feature
/// the CPU profile hides but the host's KVM still shows the guest (the
/// profile's CPUID mask is ignored on some hosts, see the README),
/// `clearcpuid=` with Linux's names for them, plus `noxsave` and
/// `nofsgsbase` for the two Linux also needs switched off by their own
/// options. Then the user's line, which can add to all of this.
///
/// Linux reads only the last `clearcpuid=` and only its first 127
/// characters (6.1), so a `clearcpuid=` in the user's line is merged into
/// lunavm's, the user's features first (e.g. `clearcpuid=tsc` for the
/// deterministic Linux command line), and features Linux clears itself with
/// their parent ([`IMPLIED_BY`]: AVX and its family go with XSAVE) are left
/// out.
pub fn compat_cmdline(user: &str, still_visible: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !user
        .split_whitespace()
        .any(|w| w == "kaslr" || w == "nokaslr")
    {
        parts.push("nokaslr".into());
    }
    let mut clear: Vec<&str> = Vec::new();
    let mut rest: Vec<&str> = Vec::new();
    for w in user.split_whitespace() {
        match w.strip_prefix("clearcpuid=") {
            Some(list) => clear.extend(list.split(',').filter(|f| !f.is_empty())),
            None => rest.push(w),
        }
    }
    let implied = |f: &str| {
        IMPLIED_BY
            .iter()
            .any(|(child, parent)| *child == f && still_visible.contains(parent))
    };
    for f in still_visible {
        if !implied(f) {
            clear.push(f);
        }
    }
    let mut seen = std::collections::HashSet::new();
    clear.retain(|f| seen.insert(*f));
    if !clear.is_empty() {
        parts.push(format!("clearcpuid={}", clear.join(",")));
    }
    for (feature, option) in [("xsave", "noxsave"), ("fsgsbase", "nofsgsbase")] {
        if still_visible.contains(&feature) {
            parts.push(option.into());
        }
    }
    parts.extend(rest.iter().map(|w| w.to_string()));
    parts.join(" ").trim().to_string()
}

/// (feature, parent): Linux clears the feature itself when the parent is
/// cleared (arch/x86/kernel/cpu/cpuid-deps.c), so `clearcpuid=` need not
/// name it.
pub const IMPLIED_BY: &[(&str, &str)] = &[
    ("xsaveopt", "xsave"),
    ("xsavec", "xsave"),
    ("xsaves", "xsave"),
    ("avx", "xsave"),
    ("fma", "xsave"),
    ("vaes", "xsave"),
    ("avx2", "xsave"),
    ("avx512f", "xsave"),
];

/// Sets `boot_params.acpi_rsdp_addr`, so the kernel finds the ACPI tables
/// without scanning (protocol 2.14 and later; older kernels scan).
pub fn set_rsdp(mem: &GuestMem, rsdp_paddr: u64) {
    super::write(
        mem,
        layout::BOOT_INFO_ADDR + ACPI_RSDP_OFFSET,
        &rsdp_paddr.to_le_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::memory;
    use vm_memory::Bytes;

    /// Offset of the setup header in a bzImage.
    const SETUP_HEADER_OFFSET: usize = 0x1f1;

    /// A minimal bzImage: a setup header (protocol 2.15, one setup sector)
    /// and 4 KiB of "kernel".
    fn tiny_bzimage() -> Vec<u8> {
        let mut img = vec![0u8; 1024 + 4096];
        img[SETUP_HEADER_OFFSET] = 1; // setup_sects
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(&HDRS.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x260..0x264].copy_from_slice(&0x2_0000u32.to_le_bytes()); // init_size
        img[1024..1028].copy_from_slice(b"KERN");
        img
    }

    #[test]
    fn a_bzimage_gets_boot_params_e820_cmdline_and_initrd() {
        let mem = memory::create(64 << 20).unwrap();
        let img = tiny_bzimage();
        assert!(is_bzimage(&img));
        let initrd = Module {
            data: vec![7; 5000],
            cmdline: String::new(),
        };
        let k = load_bzimage(&mem, 64 << 20, &img, "console=ttyS0", &[initrd]).unwrap();
        assert_eq!(k.protocol, Protocol::Linux);
        assert_eq!(k.entry, 0x10_0200);
        assert_eq!(k.ebx, layout::BOOT_INFO_ADDR);
        let mut kern = [0u8; 4];
        mem.read_slice(&mut kern, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(&kern, b"KERN");
        let zp = layout::BOOT_INFO_ADDR;
        let rd32 = |o: u64| mem.read_obj::<u32>(GuestAddress(zp + o)).unwrap();
        assert_eq!(rd32(0x202), HDRS);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(zp + 0x210)).unwrap(),
            LOADER_UNDEFINED
        );
        assert_eq!(u64::from(rd32(0x228)), layout::CMDLINE_ADDR);
        let (rd_at, rd_size) = (u64::from(rd32(0x218)), rd32(0x21c));
        assert_eq!(rd_size, 5000);
        assert_eq!(rd_at % layout::PAGE_SIZE, 0);
        assert!(rd_at + 5000 <= 64 << 20 && rd_at > 0x20_0000, "{rd_at:#x}");
        assert_eq!(k.modules, vec![(rd_at, rd_at + 5000)]);
        let entries = mem.read_obj::<u8>(GuestAddress(zp + 0x1e8)).unwrap();
        assert_eq!(usize::from(entries), layout::memory_map(64 << 20).len());
        // An identity map: PML4[0] -> PDPT, PDPT[3] -> the fourth directory.
        let pml4 = mem
            .read_obj::<u64>(GuestAddress(layout::BOOT_PAGE_TABLES_ADDR))
            .unwrap();
        assert_eq!(pml4 & !0xfff, layout::BOOT_PAGE_TABLES_ADDR + 0x1000);
        let pde = mem
            .read_obj::<u64>(GuestAddress(layout::BOOT_PAGE_TABLES_ADDR + 0x5000 + 8))
            .unwrap();
        assert_eq!(pde & !0xfff, (3 << 30) | (1 << 21));
    }

    #[test]
    fn the_compat_command_line_hides_what_the_profile_hides() {
        assert_eq!(
            compat_cmdline("console=ttyS0", &[]),
            "nokaslr console=ttyS0"
        );
        assert_eq!(compat_cmdline("kaslr", &[]), "kaslr");
        assert_eq!(
            compat_cmdline("quiet", &["popcnt", "xsave", "fsgsbase"]),
            "nokaslr clearcpuid=popcnt,xsave,fsgsbase noxsave nofsgsbase quiet"
        );
    }

    #[test]
    fn a_users_clearcpuid_is_merged_first_and_implied_features_are_left_out() {
        assert_eq!(
            compat_cmdline(
                "console=ttyS0 clearcpuid=tsc,popcnt lpj=1000",
                &["popcnt", "xsave", "avx", "avx2", "xsavec", "rdrand"]
            ),
            "nokaslr clearcpuid=tsc,popcnt,xsave,rdrand noxsave console=ttyS0 lpj=1000"
        );
        // The profile's list as this project's software-nested host shows it,
        // plus tsc: within the 127 characters Linux 6.1 reads.
        let host = [
            "pclmulqdq",
            "ssse3",
            "sse4_1",
            "sse4_2",
            "movbe",
            "popcnt",
            "aes",
            "xsave",
            "avx",
            "f16c",
            "rdrand",
            "fsgsbase",
            "bmi1",
            "avx2",
            "bmi2",
            "avx512f",
            "rdseed",
            "adx",
            "smap",
            "clflushopt",
            "clwb",
            "sha_ni",
            "umip",
            "gfni",
            "vaes",
            "xsaveopt",
            "xsavec",
        ];
        let line = compat_cmdline("clearcpuid=tsc", &host);
        let list = line.split_whitespace().nth(1).unwrap();
        assert!(list.starts_with("clearcpuid=tsc,pclmulqdq,"), "{list}");
        assert!(!list.contains("avx"), "{list}");
    }

    #[test]
    fn old_or_broken_bzimages_are_refused() {
        let mem = memory::create(64 << 20).unwrap();
        let mut img = tiny_bzimage();
        img[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        let e = load_bzimage(&mem, 64 << 20, &img, "", &[]).unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
        let mut img = tiny_bzimage();
        img.truncate(0x300);
        assert!(load_bzimage(&mem, 64 << 20, &img, "", &[]).is_err());
        let two = vec![
            Module {
                data: vec![1],
                cmdline: String::new()
            };
            2
        ];
        let e = load_bzimage(&mem, 64 << 20, &tiny_bzimage(), "", &two).unwrap_err();
        assert!(e.to_string().contains("initrd"), "{e}");
    }
}
