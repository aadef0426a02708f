//! Kernel loaders: Xen PVH ELF kernels and multiboot v1 kernels, entered in 32-bit
//! protected mode the way QEMU's `-kernel` enters them, and Linux bzImage and
//! vmlinux kernels through Linux's 64-bit boot protocol.

pub mod elf;
pub mod linux;
pub mod multiboot;
pub mod pvh;

use kvm_ioctls::VcpuFd;

use crate::layout;
use crate::vm::memory::{self, GuestMem};
use crate::vm::regs;

/// A module (initrd, data file) handed to the kernel.
#[derive(Clone, Debug)]
pub struct Module {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its command line (multiboot string / PVH module cmdline).
    pub cmdline: String,
}

/// The boot protocol a kernel was loaded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Xen PVH: 32-bit entry, EBX = hvm_start_info.
    Pvh,
    /// Multiboot v1: 32-bit entry, EAX = 0x2BADB002, EBX = multiboot info.
    Multiboot,
    /// Linux's 64-bit boot protocol: long mode, RSI = boot_params.
    Linux,
}

/// A loaded kernel, ready to enter.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadedKernel {
    /// How it is entered.
    pub protocol: Protocol,
    /// 32-bit physical entry point.
    pub entry: u64,
    /// Value for EAX at entry.
    pub eax: u64,
    /// Value for EBX at entry (the boot information block); for
    /// [`Protocol::Linux`], RSI (boot_params).
    pub ebx: u64,
    /// First byte of the loaded image.
    pub image_start: u64,
    /// One past the last byte of the loaded image (including bss).
    pub image_end: u64,
    /// Where the modules went, as (start, end).
    pub modules: Vec<(u64, u64)>,
}

/// Errors of loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The file is empty.
    #[error("Kernel image is empty")]
    Empty,
    /// Neither ELF nor a multiboot image.
    #[error("Kernel image is not an ELF file and has no multiboot header in its first 8 KiB")]
    UnknownFormat,
    /// An ELF file with no entry lunavm can use.
    #[error("ELF kernel has neither a Xen PVH entry note nor a multiboot header, and is not a Linux vmlinux: lunavm boots PVH, multiboot v1 and Linux kernels")]
    NoEntry,
    /// A Linux kernel image lunavm cannot boot.
    #[error("Linux kernel: {0}")]
    Linux(String),
    /// The ELF file is malformed.
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    /// The multiboot header is unusable.
    #[error(transparent)]
    Multiboot(#[from] multiboot::MultibootError),
    /// A segment does not fit guest RAM or overlaps the harness's areas.
    #[error("Kernel segment {start:#x}..{end:#x} is outside the RAM available to kernels ({min:#x}..{ram_end:#x}, below the MMIO hole): {hint}")]
    SegmentOutsideRam {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// Lowest address a kernel may use.
        min: u64,
        /// End of RAM below the MMIO hole.
        ram_end: u64,
        /// What to do about it.
        hint: &'static str,
    },
    /// The image has nothing to load.
    #[error("Kernel image has no loadable segments")]
    NothingToLoad,
    /// The command line does not fit.
    #[error("Command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: u64,
    },
    /// The modules do not fit in RAM.
    #[error("Module {index} ({size} bytes) does not fit in guest RAM after the kernel; give the guest more memory with --mem")]
    ModuleTooLarge {
        /// Which module.
        index: usize,
        /// Its size.
        size: usize,
    },
    /// Too many modules for the boot tables.
    #[error("Too many modules ({0}); at most {max} are supported", max = pvh::MAX_MODULES)]
    TooManyModules(usize),
    /// A KVM call failed while setting the entry state.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The lowest RAM end below the MMIO hole, for messages.
fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(layout::MMIO_START)
}

/// Checks that `[start, start + len)` may hold kernel bytes.
pub(crate) fn check_range(mem_size: u64, start: u64, len: u64) -> Result<(), BootError> {
    if layout::is_kernel_range(mem_size, start, len) {
        return Ok(());
    }
    let hint = if start < layout::KERNEL_MIN_ADDR {
        "it overlaps the harness's boot area below 1 MiB; link the kernel at 1 MiB or above"
    } else {
        "give the guest more memory with --mem, or link the kernel lower"
    };
    Err(BootError::SegmentOutsideRam {
        start,
        end: start.saturating_add(len),
        min: layout::KERNEL_MIN_ADDR,
        ram_end: low_ram_end(mem_size),
        hint,
    })
}

/// Validates then copies ELF segments into guest memory. Returns (start, end).
pub(crate) fn load_segments(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    segments: &[elf::Segment],
) -> Result<(u64, u64), BootError> {
    if segments.is_empty() {
        return Err(BootError::NothingToLoad);
    }
    for s in segments {
        check_range(mem_size, s.paddr, s.memsz)?;
    }
    for s in segments {
        let (off, filesz) = (to_usize(s.offset), to_usize(s.filesz));
        let bytes = &image[off..off + filesz];
        write(mem, s.paddr, bytes);
        zero(mem, s.paddr + s.filesz, s.memsz - s.filesz);
    }
    let start = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let end = segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(0);
    Ok((start, end))
}

/// Converts a value already checked against guest RAM or a file length.
pub(crate) fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Writes to a range already checked to be RAM.
pub(crate) fn write(mem: &GuestMem, addr: u64, bytes: &[u8]) {
    let ok = memory::write_phys(mem, addr, bytes);
    debug_assert!(ok, "write to checked range {addr:#x} failed");
}

/// Zeroes a range already checked to be RAM.
pub(crate) fn zero(mem: &GuestMem, addr: u64, len: u64) {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK.len() as u64);
        write(mem, addr + done, &CHUNK[..to_usize(n)]);
        done += n;
    }
}

/// Copies the command line to [`layout::CMDLINE_ADDR`]; returns its address.
pub(crate) fn write_cmdline(mem: &GuestMem, cmdline: &str) -> Result<u64, BootError> {
    if cmdline.len() as u64 + 1 > layout::CMDLINE_MAX / 2 {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: layout::CMDLINE_MAX / 2 - 1,
        });
    }
    write(mem, layout::CMDLINE_ADDR, cmdline.as_bytes());
    write(mem, layout::CMDLINE_ADDR + cmdline.len() as u64, &[0]);
    Ok(layout::CMDLINE_ADDR)
}

/// Places modules page-aligned after `image_end`; writes their command lines in
/// the upper half of the command-line area. Returns (start, end, cmdline address).
pub(crate) fn place_modules(
    mem: &GuestMem,
    mem_size: u64,
    image_end: u64,
    modules: &[Module],
) -> Result<Vec<(u64, u64, u64)>, BootError> {
    if modules.len() > pvh::MAX_MODULES {
        return Err(BootError::TooManyModules(modules.len()));
    }
    let mut next = align_up(image_end, layout::PAGE_SIZE);
    let mut str_at = layout::CMDLINE_ADDR + layout::CMDLINE_MAX / 2;
    let str_end = layout::CMDLINE_ADDR + layout::CMDLINE_MAX;
    let mut out = Vec::new();
    for (index, m) in modules.iter().enumerate() {
        let size = m.data.len() as u64;
        if !layout::is_kernel_range(mem_size, next, size.max(1)) {
            return Err(BootError::ModuleTooLarge {
                index,
                size: m.data.len(),
            });
        }
        write(mem, next, &m.data);
        let s_len = m.cmdline.len() as u64 + 1;
        if str_at + s_len > str_end {
            return Err(BootError::CmdlineTooLong {
                len: m.cmdline.len(),
                max: str_end - str_at - 1,
            });
        }
        write(mem, str_at, m.cmdline.as_bytes());
        write(mem, str_at + s_len - 1, &[0]);
        out.push((next, next + size, str_at));
        str_at += s_len;
        next = align_up(next + size, layout::PAGE_SIZE);
    }
    Ok(out)
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub(crate) fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

/// Whether `image` is a Linux kernel lunavm boots through Linux's own boot
/// protocol or its PVH note (a bzImage, or a vmlinux).
pub fn is_linux(image: &[u8]) -> bool {
    linux::is_bzimage(image) || (elf::is_elf(image) && elf::parse(image).is_ok_and(|i| i.linux_64))
}

/// Loads `image` with the protocol it declares, writes the boot information,
/// and returns how to enter it.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    image: &[u8],
    cmdline: &str,
    modules: &[Module],
) -> Result<LoadedKernel, BootError> {
    if image.is_empty() {
        return Err(BootError::Empty);
    }
    if linux::is_bzimage(image) {
        return linux::load_bzimage(mem, mem_size, image, cmdline, modules);
    }
    let elf_info = if elf::is_elf(image) {
        Some(elf::parse(image)?)
    } else {
        None
    };
    if let Some(info) = &elf_info {
        if let Some(entry) = info.pvh_entry {
            return pvh::load(mem, mem_size, image, info, entry, cmdline, modules);
        }
        if info.linux_64 {
            return linux::load_vmlinux(mem, mem_size, image, info, cmdline, modules);
        }
    }
    match multiboot::find_header(image)? {
        Some(header) => multiboot::load(
            mem,
            mem_size,
            image,
            &header,
            elf_info.as_ref(),
            cmdline,
            modules,
        ),
        None if elf_info.is_some() => Err(BootError::NoEntry),
        None => Err(BootError::UnknownFormat),
    }
}

/// Sets the vCPU to `kernel`'s entry state, with the boot GDT written at
/// [`layout::BOOT_GDT_ADDR`]: 32-bit protected mode for PVH and multiboot,
/// long mode on the identity map for Linux's 64-bit entry.
pub fn enter(vcpu: &VcpuFd, mem: &GuestMem, kernel: &LoadedKernel) -> Result<(), BootError> {
    let linux = kernel.protocol == Protocol::Linux;
    let table: &[u64] = if linux {
        &regs::LINUX_GDT
    } else {
        &regs::BOOT_GDT
    };
    let gdt: Vec<u8> = table.iter().flat_map(|d| d.to_le_bytes()).collect();
    write(mem, layout::BOOT_GDT_ADDR, &gdt);
    let kvm = |what| move |source| BootError::Kvm { what, source };
    let mut sregs = vcpu.get_sregs().map_err(kvm("read sregs"))?;
    let mut r = regs::entry_regs(kernel.entry, kernel.eax, kernel.ebx);
    if linux {
        regs::set_long_mode_64(
            &mut sregs,
            layout::BOOT_GDT_ADDR,
            layout::BOOT_PAGE_TABLES_ADDR,
        );
        r.rsi = kernel.ebx;
        r.rbx = 0;
    } else {
        regs::set_protected_mode_32(&mut sregs, layout::BOOT_GDT_ADDR);
    }
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    vcpu.set_regs(&r).map_err(kvm("set registers"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_unknown_images_are_refused() {
        let mem = memory::create(4 << 20).unwrap();
        assert!(matches!(
            load(&mem, 4 << 20, &[], "", &[]),
            Err(BootError::Empty)
        ));
        assert!(matches!(
            load(&mem, 4 << 20, &[0x55; 100], "", &[]),
            Err(BootError::UnknownFormat)
        ));
    }

    #[test]
    fn ranges_below_one_mib_name_the_boot_area() {
        let err = check_range(128 << 20, 0x7000, 0x100).unwrap_err();
        assert!(err.to_string().contains("boot area"), "{err}");
        let err = check_range(128 << 20, 0x4000_0000, 0x100).unwrap_err();
        assert!(err.to_string().contains("--mem"), "{err}");
    }

    #[test]
    fn modules_are_page_aligned_after_the_image() {
        let mem = memory::create(4 << 20).unwrap();
        let mods = vec![
            Module {
                data: vec![1; 10],
                cmdline: "a".into(),
            },
            Module {
                data: vec![2; 5000],
                cmdline: "b".into(),
            },
        ];
        let placed = place_modules(&mem, 4 << 20, 0x10_0123, &mods).unwrap();
        assert_eq!((placed[0].0, placed[0].1), (0x10_1000, 0x10_100a));
        assert_eq!(placed[1].0, 0x10_2000);
        let huge = vec![Module {
            data: vec![0; 8 << 20],
            cmdline: String::new(),
        }];
        assert!(matches!(
            place_modules(&mem, 4 << 20, 0x10_0000, &huge),
            Err(BootError::ModuleTooLarge { index: 0, .. })
        ));
    }
}
