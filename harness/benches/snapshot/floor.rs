//! The snapshot-restore floor: the least a VMM can do to put a guest back to a
//! saved point with KVM's dirty log, and run it to its next exit.
//!
//! Written against kvm-ioctls, kvm-bindings, vmm-sys-util, std and libc only,
//! with no lunavm code (the bench hands it the guest's ELF bytes). It boots a
//! PVH guest the way `benches/floor.rs` does (its own ELF parsing, a minimal
//! `hvm_start_info`, a flat GDT, the 32-bit entry state, KVM's supported CPUID
//! unchanged), but with RAM of any size registered as one slot with
//! `KVM_MEM_LOG_DIRTY_PAGES` after turning on
//! `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (as lunavm does).
//!
//! A snapshot is a copy of all of RAM plus the vCPU state. A restore is:
//! `KVM_GET_DIRTY_LOG` (kvm-ioctls' wrapper, as lunavm uses), a `memcpy` of
//! each dirty page from the copy, `KVM_CLEAR_DIRTY_LOG` of exactly the
//! reported pages (only when there are some, as lunavm does), then the vCPU
//! state: in the default mode only `KVM_SET_REGS` + `KVM_SET_SREGS` — enough
//! for this guest, which changes nothing else between two exits, but not a
//! general restore — or, in [`VcpuRestore::Firecracker`], the same eight
//! calls lunavm makes in Firecracker's order (mp_state, regs, sregs, xsave,
//! xcrs, debugregs, msrs, events), to price that difference; or, in
//! [`VcpuRestore::FirecrackerSyncRegs`], the same state with regs, sregs and
//! events handed to KVM in the `kvm_run` sync area (KVM_CAP_SYNC_REGS), to
//! price a change lunavm could make.

use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_debugregs, kvm_dtable, kvm_enable_cap, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_segment, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_CAP_SYNC_REGS,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;

/// The ioctl kvm-ioctls does not wrap.
mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_clear_dirty_log;
    use vmm_sys_util::ioctl_iowr_nr;

    /// KVMIO, the KVM ioctl type.
    const KVMIO: u32 = 0xAE;
    ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
}
use ioctls::KVM_CLEAR_DIRTY_LOG;

const PAGE: usize = 4096;

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

/// The port the `dirty` guest writes once per round.
pub const POST_PORT: u16 = 0x80;
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

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Which vCPU state a restore sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRestore {
    /// KVM_SET_REGS + KVM_SET_SREGS: the minimum for this guest.
    RegsSregs,
    /// The eight calls lunavm makes, in Firecracker's order.
    Firecracker,
    /// The same state, but regs, sregs and events through the `kvm_run` sync
    /// area (KVM_CAP_SYNC_REGS, applied on the next KVM_RUN): five ioctls.
    FirecrackerSyncRegs,
}

/// The times of one restore + run-to-exit.
#[derive(Clone, Copy, Debug, Default)]
pub struct Iteration {
    /// KVM_GET_DIRTY_LOG (with its bitmap allocation).
    pub get_log: Duration,
    /// The page copies.
    pub copy: Duration,
    /// KVM_CLEAR_DIRTY_LOG (zero when no page was dirty).
    pub clear: Duration,
    /// The vCPU state calls.
    pub vcpu: Duration,
    /// KVM_RUN to the next port-0x80 exit.
    pub run: Duration,
    /// Pages copied back.
    pub pages: u64,
    /// The value the guest wrote to port 0x80 at that exit.
    pub post_value: u8,
}

impl Iteration {
    /// The restore alone.
    pub fn restore(&self) -> Duration {
        self.get_log + self.copy + self.clear + self.vcpu
    }
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

// SAFETY: the mapping is plain memory owned by this value; moving the owner to
// another thread moves the only host-side handle to it.
unsafe impl Send for Mapping {}

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
        if addr.checked_add(bytes.len()).is_none_or(|e| e > self.len) {
            return Err(
                format!("write at {addr:#x}+{:#x} is outside guest RAM", bytes.len()).into(),
            );
        }
        // SAFETY: [addr, addr + len) was checked to lie inside the live mapping of
        // `self.len` bytes; the source is a distinct host slice. The guest may
        // write the same memory only while KVM_RUN runs, which needs `&mut Floor`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(addr), bytes.len()) };
        Ok(())
    }

    /// All of guest RAM, while the vCPU is not running.
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes for as long as
        // `self` lives; the vCPU only runs inside `&mut Floor` methods, so it does
        // not write while this shared borrow exists.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, and nothing
        // uses it after this (the VM that referenced it was dropped first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Everything KVM keeps for the vCPU that lunavm restores.
struct FullVcpu {
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    msrs: Msrs,
    events: kvm_vcpu_events,
}

/// The saved point: all of RAM and the vCPU.
struct Saved {
    memory: Vec<u8>,
    vcpu: FullVcpu,
}

/// A booted guest. Field order is drop order: the vCPU and VM go before their
/// memory.
pub struct Floor {
    vcpu: VcpuFd,
    vm: VmFd,
    kvm: Kvm,
    mem: Mapping,
    saved: Option<Saved>,
    /// Bytes the guest sent to COM1 (THR writes).
    pub serial: Vec<u8>,
    /// Whether KVM_CAP_SYNC_REGS covers regs, sregs and events here.
    pub sync_regs: bool,
    dlab: bool,
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

/// KVM's MSR list, reduced to the MSRs this vCPU lets userspace read and
/// write back (lunavm's rule, so both save the same set).
fn saveable_msrs(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut indices: Vec<u32> = kvm.get_msr_index_list()?.as_slice().to_vec();
    let mut readable = Vec::new();
    while !indices.is_empty() {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)?;
        let n = vcpu.get_msrs(&mut msrs)?;
        readable.extend_from_slice(&msrs.as_slice()[..n]);
        indices.drain(..(n + 1).min(indices.len()));
    }
    let mut good = Vec::new();
    while !readable.is_empty() {
        let n = vcpu.set_msrs(&Msrs::from_entries(&readable)?)?;
        good.extend_from_slice(&readable[..n]);
        readable.drain(..(n + 1).min(readable.len()));
    }
    Ok(good)
}

impl Floor {
    /// Creates the VM with `mem_size` bytes of dirty-logged RAM and loads `elf`
    /// with `cmdline`, ready to enter at its PVH entry.
    pub fn boot(elf: &[u8], cmdline: &str, mem_size: usize) -> Result<Floor, Error> {
        let image = parse_elf(elf)?;
        let kvm = Kvm::new()?;
        let vm = kvm.create_vm()?;
        vm.set_tss_address(KVM_TSS_ADDR)?;

        let sync_regs = vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_SYNC_REGS)) & 7 == 7;
        if vm.check_extension_raw(libc::c_ulong::from(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) <= 0 {
            return Err("KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2".into());
        }
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            ..Default::default()
        };
        cap.args[0] = u64::from(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
        vm.enable_cap(&cap)?;

        let mut mem = Mapping::new(mem_size)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: u64::try_from(mem.len)?,
            userspace_addr: mem.ptr as u64,
        };
        // SAFETY: the region is the live anonymous mapping of `memory_size` bytes
        // in `mem`, which `Floor` drops after the VM, and it is the VM's only slot.
        unsafe { vm.set_user_memory_region(region) }?;

        // The mapping is fresh, so everything not written here is zero.
        for &(paddr, bytes, memsz) in &image.loads {
            if paddr.checked_add(memsz).is_none_or(|end| end > mem_size) {
                return Err(
                    format!("segment at {paddr:#x}+{memsz:#x} does not fit guest RAM").into(),
                );
            }
            mem.write(paddr, bytes)?;
        }
        mem.write(CMDLINE_ADDR, cmdline.as_bytes())?;
        mem.write(CMDLINE_ADDR + cmdline.len(), &[0])?;
        // hvm_start_info, version 1, no modules, no memory map.
        let mut info = [0u8; 56];
        info[0..4].copy_from_slice(&HVM_START_MAGIC.to_le_bytes());
        info[4..8].copy_from_slice(&1u32.to_le_bytes());
        info[24..32].copy_from_slice(&u64::try_from(CMDLINE_ADDR)?.to_le_bytes());
        mem.write(START_INFO_ADDR, &info)?;
        let gdt: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        mem.write(GDT_ADDR, &gdt)?;

        let vcpu = vm.create_vcpu(0)?;
        vcpu.set_cpuid2(&kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?)?;
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
            vm,
            kvm,
            mem,
            saved: None,
            serial: Vec::new(),
            sync_regs,
            dlab: false,
        })
    }

    /// Runs to the next write to port 0x80 and returns the value written.
    /// COM1 writes are kept, port reads return all-ones; a debug-exit write
    /// or any other exit is an error (the `dirty` guest does neither mid-run).
    pub fn run_to_post(&mut self) -> Result<u8, Error> {
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(POST_PORT, data)) => {
                    return Ok(data.first().copied().unwrap_or(0))
                }
                Ok(VcpuExit::IoOut(port, data)) if (COM1..COM1 + 8).contains(&port) => {
                    let value = data.first().copied().unwrap_or(0);
                    match port - COM1 {
                        0 if !self.dlab => self.serial.push(value),
                        3 => self.dlab = value & 0x80 != 0,
                        _ => {}
                    }
                }
                Ok(VcpuExit::IoOut(DEBUG_EXIT_PORT, data)) => {
                    return Err(format!("floor: the guest exited early ({data:?})").into())
                }
                Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
                Ok(other) => return Err(format!("floor: unexpected exit {other:?}").into()),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return Err(format!("floor: KVM_RUN failed: {e}").into()),
            }
        }
    }

    /// Reads the dirty log of slot 0 and re-arms the pages it reports.
    fn get_log(&self) -> Result<Vec<u64>, Error> {
        Ok(self.vm.get_dirty_log(0, self.mem.len)?)
    }

    fn clear_log(&self, bitmap: &mut [u64]) -> Result<(), Error> {
        let clear = kvm_clear_dirty_log {
            slot: 0,
            num_pages: u32::try_from(self.mem.len / PAGE)?,
            first_page: 0,
            __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `clear` points to a bitmap of at least `num_pages` bits that
        // lives until the call returns; KVM only reads it.
        let ret = unsafe { ioctl_with_ref(&self.vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
        if ret != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Takes the snapshot: re-arms dirty logging, copies RAM aside and saves
    /// the vCPU (everything lunavm saves, so either restore mode can run).
    pub fn snapshot(&mut self) -> Result<(), Error> {
        let mut log = self.get_log()?;
        if log.iter().any(|w| *w != 0) {
            self.clear_log(&mut log)?;
        }
        let memory = self.mem.as_slice().to_vec();
        let msrs = saveable_msrs(&self.kvm, &self.vcpu)?;
        let mut msrs = Msrs::from_entries(&msrs)?;
        let n = self.vcpu.get_msrs(&mut msrs)?;
        if n != msrs.as_slice().len() {
            return Err("floor: an MSR could not be read back".into());
        }
        let vcpu = FullVcpu {
            mp_state: self.vcpu.get_mp_state()?,
            regs: self.vcpu.get_regs()?,
            sregs: self.vcpu.get_sregs()?,
            xsave: self.vcpu.get_xsave()?,
            xcrs: self.vcpu.get_xcrs()?,
            debugregs: self.vcpu.get_debug_regs()?,
            msrs,
            events: self.vcpu.get_vcpu_events()?,
        };
        self.saved = Some(Saved { memory, vcpu });
        Ok(())
    }

    /// Number of MSRs the Firecracker-order restore sets.
    pub fn msr_count(&self) -> usize {
        self.saved
            .as_ref()
            .map_or(0, |s| s.vcpu.msrs.as_slice().len())
    }

    /// Restores the snapshot and runs to the next port-0x80 exit, timing each
    /// part.
    pub fn restore_and_run(&mut self, mode: VcpuRestore) -> Result<Iteration, Error> {
        let saved = self.saved.as_ref().ok_or("floor: no snapshot taken")?;
        let t0 = Instant::now();
        let mut log = self.vm.get_dirty_log(0, self.mem.len)?;
        let t1 = Instant::now();
        let mut pages = 0u64;
        for (wi, &word) in log.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                let p = (wi * 64 + w.trailing_zeros() as usize) * PAGE;
                w &= w - 1;
                if p + PAGE <= self.mem.len {
                    // SAFETY: [p, p + PAGE) lies inside both the saved copy (as long
                    // as RAM) and the live mapping; the vCPU is not running.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            saved.memory.as_ptr().add(p),
                            self.mem.ptr.add(p),
                            PAGE,
                        )
                    };
                    pages += 1;
                }
            }
        }
        let t2 = Instant::now();
        if pages != 0 {
            self.clear_log(&mut log)?;
        }
        let t3 = Instant::now();
        let v = &saved.vcpu;
        match mode {
            VcpuRestore::RegsSregs => {
                self.vcpu.set_regs(&v.regs)?;
                self.vcpu.set_sregs(&v.sregs)?;
            }
            VcpuRestore::Firecracker => {
                self.vcpu.set_mp_state(v.mp_state)?;
                self.vcpu.set_regs(&v.regs)?;
                self.vcpu.set_sregs(&v.sregs)?;
                // SAFETY: `v.xsave` is a whole `kvm_xsave` that KVM_GET_XSAVE filled.
                unsafe { self.vcpu.set_xsave(&v.xsave) }?;
                self.vcpu.set_xcrs(&v.xcrs)?;
                self.vcpu.set_debug_regs(&v.debugregs)?;
                if self.vcpu.set_msrs(&v.msrs)? != v.msrs.as_slice().len() {
                    return Err("floor: KVM did not take every MSR".into());
                }
                self.vcpu.set_vcpu_events(&v.events)?;
            }
            VcpuRestore::FirecrackerSyncRegs => {
                if !self.sync_regs {
                    return Err(
                        "floor: KVM lacks KVM_CAP_SYNC_REGS for regs, sregs and events".into(),
                    );
                }
                self.vcpu.set_mp_state(v.mp_state)?;
                // SAFETY: `v.xsave` is a whole `kvm_xsave` that KVM_GET_XSAVE filled.
                unsafe { self.vcpu.set_xsave(&v.xsave) }?;
                self.vcpu.set_xcrs(&v.xcrs)?;
                self.vcpu.set_debug_regs(&v.debugregs)?;
                if self.vcpu.set_msrs(&v.msrs)? != v.msrs.as_slice().len() {
                    return Err("floor: KVM did not take every MSR".into());
                }
                let sync = self.vcpu.sync_regs_mut();
                sync.regs = v.regs;
                sync.sregs = v.sregs;
                sync.events = v.events;
                self.vcpu.set_sync_dirty_reg(SyncReg::Register);
                self.vcpu.set_sync_dirty_reg(SyncReg::SystemRegister);
                self.vcpu.set_sync_dirty_reg(SyncReg::VcpuEvents);
            }
        }
        let t4 = Instant::now();
        let post_value = self.run_to_post()?;
        let t5 = Instant::now();
        Ok(Iteration {
            get_log: t1 - t0,
            copy: t2 - t1,
            clear: t3 - t2,
            vcpu: t4 - t3,
            run: t5 - t4,
            pages,
            post_value,
        })
    }

    /// The little-endian u64 at guest-physical `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Option<u64> {
        let at = usize::try_from(gpa).ok()?;
        let bytes = self.mem.as_slice().get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }

    /// Median time of each vCPU set call alone, setting the saved state, in
    /// Firecracker's order (and a read for scale): `reps` rounds of one call
    /// each, so host noise spreads over all of them alike.
    pub fn vcpu_call_costs(&self, reps: usize) -> Result<Vec<(&'static str, Duration)>, Error> {
        type Call = fn(&VcpuFd, &FullVcpu) -> Result<(), Error>;
        let calls: [(&'static str, Call); 9] = [
            ("set_mp_state", |c, v| Ok(c.set_mp_state(v.mp_state)?)),
            ("set_regs", |c, v| Ok(c.set_regs(&v.regs)?)),
            ("set_sregs", |c, v| Ok(c.set_sregs(&v.sregs)?)),
            ("set_xsave", |c, v| {
                // SAFETY: `v.xsave` is a whole `kvm_xsave` that KVM_GET_XSAVE filled.
                Ok(unsafe { c.set_xsave(&v.xsave) }?)
            }),
            ("set_xcrs", |c, v| Ok(c.set_xcrs(&v.xcrs)?)),
            ("set_debug_regs", |c, v| Ok(c.set_debug_regs(&v.debugregs)?)),
            ("set_msrs", |c, v| Ok(c.set_msrs(&v.msrs).map(|_| ())?)),
            ("set_vcpu_events", |c, v| Ok(c.set_vcpu_events(&v.events)?)),
            ("get_regs (for scale)", |c, _| {
                Ok(c.get_regs().map(|_| ())?)
            }),
        ];
        let v = &self.saved.as_ref().ok_or("floor: no snapshot taken")?.vcpu;
        let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(reps); calls.len()];
        for _ in 0..reps {
            for ((_, call), t) in calls.iter().zip(&mut times) {
                let t0 = Instant::now();
                call(&self.vcpu, v)?;
                t.push(t0.elapsed());
            }
        }
        Ok(calls
            .iter()
            .zip(&mut times)
            .map(|((name, _), t)| {
                t.sort();
                (*name, t.get(t.len() / 2).copied().unwrap_or_default())
            })
            .collect())
    }
}
