//! The floor: the least a VMM can do to run a built-in PVH guest on KVM.
//!
//! Written against kvm-ioctls/kvm-bindings, std and libc only, with no lunavm
//! code (the bench hands it the guest's ELF bytes). It parses the ELF program
//! headers itself, maps 128 MiB of anonymous memory, writes a minimal
//! `hvm_start_info`, a flat GDT and the 32-bit protected-mode entry state, gives
//! the vCPU KVM's supported CPUID unchanged, and runs KVM_RUN handling only what
//! the test guests do: writes to the POST port 0x80 (counted), writes to COM1
//! 0x3f8..0x3ff (the transmitted bytes kept for checking), reads of any port
//! (all-ones, so the UART's LSR reads "transmitter empty"), and the debug-exit
//! port 0xf4 (the end). Every exit costs the same KVM_RUN round trip lunavm
//! pays, so its exit rate is the lower bound for lunavm's per-exit cost.

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_dtable, kvm_regs, kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Guest RAM size (lunavm's default too).
pub const MEM_SIZE: usize = 128 << 20;

/// Guest-physical addresses of what the floor writes below 1 MiB.
const START_INFO_ADDR: usize = 0x6000;
const GDT_ADDR: usize = 0x8000;
const CMDLINE_ADDR: usize = 0x2_0000;
/// Where KVM may put its real-mode TSS (in the MMIO hole, unused here).
const KVM_TSS_ADDR: usize = 0xfffb_d000;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const HVM_START_MAGIC: u32 = 0x336e_c578;

const POST_PORT: u16 = 0x80;
const COM1: u16 = 0x3f8;
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Selectors of the flat GDT: null, null, code32 (0x10), data (0x18), TSS (0x20).
const SEL_CODE: u16 = 0x10;
const SEL_DATA: u16 = 0x18;
const SEL_TSS: u16 = 0x20;
const GDT: [u64; 5] = [
    0,
    0,
    0x00cf_9b00_0000_ffff, // code, 32-bit, 4 GiB, accessed
    0x00cf_9300_0000_ffff, // data, 4 GiB, accessed
    0x0000_8b00_0000_0067, // 32-bit TSS, busy, base 0, limit 0x67
];

type Error = Box<dyn std::error::Error>;

/// What one floor run measured.
pub struct FloorRun {
    /// KVM open, VM/vCPU creation, memory mapping, ELF load and entry state.
    pub setup: Duration,
    /// From the first KVM_RUN to the debug-exit write.
    pub run: Duration,
    /// Writes to port 0x80.
    pub post_writes: u64,
    /// Value written to the debug-exit port.
    pub exit_value: u32,
    /// Bytes the guest transmitted on COM1.
    pub serial: Vec<u8>,
}

/// The loadable parts of a PVH ELF.
struct Image<'a> {
    /// (paddr, file bytes, memsz) of each PT_LOAD.
    loads: Vec<(usize, &'a [u8], usize)>,
    /// The 32-bit entry from the Xen PVH note.
    entry: u32,
}

fn field<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N], Error> {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("ELF truncated at offset {off:#x}").into())
}
fn u16_at(b: &[u8], off: usize) -> Result<u16, Error> {
    Ok(u16::from_le_bytes(field(b, off)?))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    Ok(u32::from_le_bytes(field(b, off)?))
}
fn usize_at(b: &[u8], off: usize) -> Result<usize, Error> {
    Ok(usize::try_from(u64::from_le_bytes(field(b, off)?))?)
}
fn align4(v: usize) -> usize {
    (v + 3) & !3
}

/// Finds the PVH entry in the notes of one PT_NOTE segment.
fn pvh_entry(notes: &[u8]) -> Result<Option<u32>, Error> {
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = usize::try_from(u32_at(notes, at)?)?;
        let descsz = usize::try_from(u32_at(notes, at + 4)?)?;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at + align4(namesz);
        let name = notes
            .get(name_at..name_at + namesz)
            .ok_or("ELF note name truncated")?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY && descsz >= 4 {
            // 4 or 8 bytes; the entry is 32-bit, so the low dword is it either way.
            return Ok(Some(u32_at(notes, desc_at)?));
        }
        at = desc_at + align4(descsz);
    }
    Ok(None)
}

fn parse_elf(elf: &[u8]) -> Result<Image<'_>, Error> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian ELF64 file".into());
    }
    let phoff = usize_at(elf, 0x20)?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    let mut loads = Vec::new();
    let mut entry = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = u32_at(elf, ph)?;
        let offset = usize_at(elf, ph + 8)?;
        let paddr = usize_at(elf, ph + 24)?;
        let filesz = usize_at(elf, ph + 32)?;
        let memsz = usize_at(elf, ph + 40)?;
        let bytes = elf
            .get(offset..offset + filesz)
            .ok_or("ELF segment outside the file")?;
        match kind {
            PT_LOAD => loads.push((paddr, bytes, memsz)),
            PT_NOTE if entry.is_none() => entry = pvh_entry(bytes)?,
            _ => {}
        }
    }
    let entry = entry.ok_or("ELF has no Xen PVH entry note")?;
    Ok(Image { loads, entry })
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, Error> {
        // SAFETY: an anonymous private mapping at an address the kernel picks
        // touches no existing memory; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Copies `bytes` to guest-physical `addr`.
    fn write(&mut self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let end = addr.checked_add(bytes.len()).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(
                format!("write at {addr:#x}+{:#x} is outside guest RAM", bytes.len()).into(),
            );
        }
        // SAFETY: [addr, addr + len) was checked to lie inside the live mapping of
        // `self.len` bytes, which `&mut self` borrows exclusively on the host side;
        // the source is a distinct host slice.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(addr), bytes.len()) };
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, and nothing
        // uses it after this (the VM that referenced it was dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The VM. Field order is drop order: the vCPU and VM go before their memory.
struct Floor {
    vcpu: VcpuFd,
    _vm: VmFd,
    _kvm: Kvm,
    _mem: Mapping,
}

fn segment(selector: u16, type_: u8, s: u8, db: u8, g: u8, limit: u32) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l: 0,
        g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn setup(elf: &[u8], cmdline: &str) -> Result<Floor, Error> {
    let image = parse_elf(elf)?;

    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(KVM_TSS_ADDR)?;
    let mut mem = Mapping::new(MEM_SIZE)?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: u64::try_from(mem.len)?,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the region is the live anonymous mapping of `memory_size` bytes in
    // `mem`, which `Floor` drops after the VM, and it is the VM's only slot.
    unsafe { vm.set_user_memory_region(region) }?;

    // The mapping is fresh, so everything not written here is already zero
    // (including each segment's bss).
    for &(paddr, bytes, memsz) in &image.loads {
        if paddr.checked_add(memsz).is_none_or(|end| end > MEM_SIZE) {
            return Err(format!("segment at {paddr:#x}+{memsz:#x} does not fit guest RAM").into());
        }
        mem.write(paddr, bytes)?;
    }
    mem.write(CMDLINE_ADDR, cmdline.as_bytes())?;
    mem.write(CMDLINE_ADDR + cmdline.len(), &[0])?;

    // hvm_start_info, version 1, no modules, no memory map (the test guests'
    // runtime reads only the magic and the command line).
    let mut info = [0u8; 56];
    info[0..4].copy_from_slice(&HVM_START_MAGIC.to_le_bytes());
    info[4..8].copy_from_slice(&1u32.to_le_bytes());
    info[24..32].copy_from_slice(&u64::try_from(CMDLINE_ADDR)?.to_le_bytes());
    mem.write(START_INFO_ADDR, &info)?;
    let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &gdt)?;

    let vcpu = vm.create_vcpu(0)?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    vcpu.set_cpuid2(&cpuid)?;

    let mut sregs = vcpu.get_sregs()?;
    sregs.cs = segment(SEL_CODE, 0xb, 1, 1, 1, 0xffff_ffff);
    let data = segment(SEL_DATA, 0x3, 1, 1, 1, 0xffff_ffff);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(SEL_TSS, 0xb, 0, 0, 0, 0x67);
    sregs.ldt = kvm_segment {
        type_: 0x2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt = kvm_dtable {
        base: u64::try_from(GDT_ADDR)?,
        limit: 8 * 5 - 1,
        ..Default::default()
    };
    sregs.idt = kvm_dtable::default();
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&kvm_regs {
        rip: u64::from(image.entry),
        rbx: u64::try_from(START_INFO_ADDR)?,
        rflags: 0x2,
        ..Default::default()
    })?;
    Ok(Floor {
        vcpu,
        _vm: vm,
        _kvm: kvm,
        _mem: mem,
    })
}

/// Boots `elf` with `cmdline` and runs it to the debug-exit write.
pub fn run(elf: &[u8], cmdline: &str) -> Result<FloorRun, Error> {
    let t0 = Instant::now();
    let mut floor = setup(elf, cmdline)?;
    let setup_time = t0.elapsed();

    let mut post_writes = 0u64;
    let mut serial = Vec::new();
    let mut dlab = false;
    let t1 = Instant::now();
    let exit_value = loop {
        match floor.vcpu.run() {
            Ok(VcpuExit::IoOut(POST_PORT, _)) => post_writes += 1,
            Ok(VcpuExit::IoOut(DEBUG_EXIT_PORT, data)) => {
                let mut v = [0u8; 4];
                let n = data.len().min(4);
                v[..n].copy_from_slice(&data[..n]);
                break u32::from_le_bytes(v);
            }
            Ok(VcpuExit::IoOut(port, data)) if (COM1..COM1 + 8).contains(&port) => {
                // Keep THR bytes only (LCR.DLAB clear) so the bench can check the
                // guest's output; everything else the UART would do is ignored.
                let value = data.first().copied().unwrap_or(0);
                match port - COM1 {
                    0 if !dlab => serial.push(value),
                    3 => dlab = value & 0x80 != 0,
                    _ => {}
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(other) => return Err(format!("floor: unexpected exit {other:?}").into()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("floor: KVM_RUN failed: {e}").into()),
        }
    };
    let run_time = t1.elapsed();
    Ok(FloorRun {
        setup: setup_time,
        run: run_time,
        post_writes,
        exit_value,
        serial,
    })
}
