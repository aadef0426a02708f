//! The one guest page-table walker: paging off, 32-bit (with 4 MiB pages), PAE,
//! 4-level and 5-level long mode, large pages and permission bits. Lua, gdb,
//! ucall and fuzzing all translate guest-virtual addresses through it.

/// CR0.PG: paging enabled.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: physical address extension.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: no-execute bit enabled.
const EFER_NXE: u64 = 1 << 11;

const PTE_P: u64 = 1 << 0;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_PS: u64 = 1 << 7;
const PTE_NX: u64 = 1 << 63;
/// Physical-address bits of a 64-bit entry (bits 12..51).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The paging mode the vCPU is in, from CR0, CR4 and EFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG clear: virtual equals physical (after segmentation).
    Off,
    /// Classic 32-bit two-level paging; `pse` allows 4 MiB pages.
    Bits32 {
        /// CR4.PSE.
        pse: bool,
    },
    /// PAE three-level paging.
    Pae,
    /// 4-level long-mode paging.
    Long4,
    /// 5-level long-mode paging (LA57).
    Long5,
}

/// The control state the walk depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl PagingRegs {
    /// The paging mode these registers select.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.efer & EFER_LMA != 0 {
            if self.cr4 & CR4_LA57 != 0 {
                PagingMode::Long5
            } else {
                PagingMode::Long4
            }
        } else if self.cr4 & CR4_PAE != 0 {
            PagingMode::Pae
        } else {
            PagingMode::Bits32 {
                pse: self.cr4 & CR4_PSE != 0,
            }
        }
    }
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address of the byte.
    pub phys: u64,
    /// Size of the page that maps it.
    pub page_size: u64,
    /// Writable at every level.
    pub writable: bool,
    /// Accessible from user mode at every level.
    pub user: bool,
    /// Executable (no NX bit on the path, or NX disabled).
    pub executable: bool,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The address is not canonical for the paging mode.
    #[error("Address {0:#x} is not canonical")]
    NonCanonical(u64),
    /// A paging-structure entry on the path is not present.
    #[error("Address {vaddr:#x} is not mapped (level {level} entry not present)")]
    NotPresent {
        /// The address being translated.
        vaddr: u64,
        /// The level whose entry was not present (1 = page table).
        level: u8,
    },
    /// A paging structure lies outside guest RAM.
    #[error("Page table for {vaddr:#x} at physical {table:#x} is outside guest memory")]
    TableOutsideRam {
        /// The address being translated.
        vaddr: u64,
        /// The physical address of the entry that could not be read.
        table: u64,
    },
}

/// Physical memory as the walker reads it.
pub trait PhysMemory {
    /// Reads a little-endian u64 at `addr`, or `None` outside RAM.
    fn read_u64(&self, addr: u64) -> Option<u64>;
    /// Reads a little-endian u32 at `addr`, or `None` outside RAM.
    fn read_u32(&self, addr: u64) -> Option<u32>;
}

impl PhysMemory for crate::vm::memory::GuestMem {
    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        crate::vm::memory::read_phys(self, addr, &mut b).then(|| u64::from_le_bytes(b))
    }
    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        crate::vm::memory::read_phys(self, addr, &mut b).then(|| u32::from_le_bytes(b))
    }
}

/// Translates the linear address `vaddr` through the page tables `regs` select.
pub fn translate(
    mem: &impl PhysMemory,
    regs: &PagingRegs,
    vaddr: u64,
) -> Result<Translation, WalkError> {
    let nxe = regs.efer & EFER_NXE != 0;
    match regs.mode() {
        PagingMode::Off => Ok(Translation {
            phys: vaddr & 0xffff_ffff,
            page_size: 1 << 12,
            writable: true,
            user: true,
            executable: true,
        }),
        PagingMode::Bits32 { pse } => walk32(mem, regs.cr3, vaddr & 0xffff_ffff, pse),
        PagingMode::Pae => {
            let vaddr = vaddr & 0xffff_ffff;
            let pdpte_addr = (regs.cr3 & 0xffff_ffe0) + ((vaddr >> 30) & 3) * 8;
            let pdpte = mem.read_u64(pdpte_addr).ok_or(WalkError::TableOutsideRam {
                vaddr,
                table: pdpte_addr,
            })?;
            if pdpte & PTE_P == 0 {
                return Err(WalkError::NotPresent { vaddr, level: 3 });
            }
            // PDPTEs carry no permission bits in PAE mode.
            walk64(mem, pdpte & ADDR_MASK, vaddr, 2, nxe, Perm::ALL)
        }
        PagingMode::Long4 => {
            check_canonical(vaddr, 48)?;
            walk64(mem, regs.cr3 & ADDR_MASK, vaddr, 4, nxe, Perm::ALL)
        }
        PagingMode::Long5 => {
            check_canonical(vaddr, 57)?;
            walk64(mem, regs.cr3 & ADDR_MASK, vaddr, 5, nxe, Perm::ALL)
        }
    }
}

#[derive(Clone, Copy)]
struct Perm {
    writable: bool,
    user: bool,
    executable: bool,
}

impl Perm {
    const ALL: Perm = Perm {
        writable: true,
        user: true,
        executable: true,
    };

    fn and(self, entry: u64, nxe: bool) -> Perm {
        Perm {
            writable: self.writable && entry & PTE_W != 0,
            user: self.user && entry & PTE_U != 0,
            executable: self.executable && !(nxe && entry & PTE_NX != 0),
        }
    }
}

fn check_canonical(vaddr: u64, bits: u32) -> Result<(), WalkError> {
    let shift = 64 - bits;
    let signed = i64::from_ne_bytes(vaddr.to_ne_bytes());
    if (signed << shift) >> shift == signed {
        Ok(())
    } else {
        Err(WalkError::NonCanonical(vaddr))
    }
}

/// Walks 64-bit-entry tables from `level` down (5..1), 9 bits per level.
fn walk64(
    mem: &impl PhysMemory,
    mut table: u64,
    vaddr: u64,
    top_level: u8,
    nxe: bool,
    mut perm: Perm,
) -> Result<Translation, WalkError> {
    for level in (1..=top_level).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let entry_addr = table + ((vaddr >> shift) & 0x1ff) * 8;
        let entry = mem.read_u64(entry_addr).ok_or(WalkError::TableOutsideRam {
            vaddr,
            table: entry_addr,
        })?;
        if entry & PTE_P == 0 {
            return Err(WalkError::NotPresent { vaddr, level });
        }
        perm = perm.and(entry, nxe);
        // Large pages: PS at level 2 (2 MiB) and level 3 (1 GiB).
        if level == 1 || ((level == 2 || level == 3) && entry & PTE_PS != 0) {
            let page_size = 1u64 << shift;
            let base = entry & ADDR_MASK & !(page_size - 1);
            return Ok(Translation {
                phys: base | (vaddr & (page_size - 1)),
                page_size,
                writable: perm.writable,
                user: perm.user,
                executable: perm.executable,
            });
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("the loop returns at level 1")
}

fn walk32(
    mem: &impl PhysMemory,
    cr3: u64,
    vaddr: u64,
    pse: bool,
) -> Result<Translation, WalkError> {
    let pde_addr = (cr3 & 0xffff_f000) + ((vaddr >> 22) & 0x3ff) * 4;
    let pde = u64::from(mem.read_u32(pde_addr).ok_or(WalkError::TableOutsideRam {
        vaddr,
        table: pde_addr,
    })?);
    if pde & PTE_P == 0 {
        return Err(WalkError::NotPresent { vaddr, level: 2 });
    }
    let perm = Perm::ALL.and(pde, false);
    if pse && pde & PTE_PS != 0 {
        // PSE-36: bits 13..20 of the PDE are physical bits 32..39.
        let base = (pde & 0xffc0_0000) | ((pde >> 13) & 0xff) << 32;
        return Ok(Translation {
            phys: base | (vaddr & 0x3f_ffff),
            page_size: 4 << 20,
            writable: perm.writable,
            user: perm.user,
            executable: true,
        });
    }
    let pte_addr = (pde & 0xffff_f000) + ((vaddr >> 12) & 0x3ff) * 4;
    let pte = u64::from(mem.read_u32(pte_addr).ok_or(WalkError::TableOutsideRam {
        vaddr,
        table: pte_addr,
    })?);
    if pte & PTE_P == 0 {
        return Err(WalkError::NotPresent { vaddr, level: 1 });
    }
    let perm = perm.and(pte, false);
    Ok(Translation {
        phys: (pte & 0xffff_f000) | (vaddr & 0xfff),
        page_size: 4096,
        writable: perm.writable,
        user: perm.user,
        executable: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Sparse fake physical memory of u64 words.
    #[derive(Default)]
    struct Fake(HashMap<u64, u8>);

    impl Fake {
        fn put64(&mut self, addr: u64, v: u64) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn put32(&mut self, addr: u64, v: u32) {
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn byte(&self, a: u64) -> Option<u8> {
            if a < 0x100_0000 {
                Some(*self.0.get(&a).unwrap_or(&0))
            } else {
                None
            }
        }
    }

    impl PhysMemory for Fake {
        fn read_u64(&self, addr: u64) -> Option<u64> {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().enumerate() {
                *x = self.byte(addr + i as u64)?;
            }
            Some(u64::from_le_bytes(b))
        }
        fn read_u32(&self, addr: u64) -> Option<u32> {
            let mut b = [0u8; 4];
            for (i, x) in b.iter_mut().enumerate() {
                *x = self.byte(addr + i as u64)?;
            }
            Some(u32::from_le_bytes(b))
        }
    }

    const PG: u64 = CR0_PG | 1;

    fn long4() -> PagingRegs {
        PagingRegs {
            cr0: PG,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: EFER_LMA | EFER_NXE,
        }
    }

    #[test]
    fn paging_off_is_identity() {
        let m = Fake::default();
        let t = translate(&m, &PagingRegs::default(), 0x1234_5678).unwrap();
        assert_eq!(t.phys, 0x1234_5678);
    }

    #[test]
    fn long4_4k_page_with_permissions() {
        let mut m = Fake::default();
        let va: u64 = 0xffff_8000_0040_3123;
        let idx = |l: u32| (va >> (12 + 9 * (l - 1))) & 0x1ff;
        m.put64(0x1000 + idx(4) * 8, 0x2000 | PTE_P | PTE_W);
        m.put64(0x2000 + idx(3) * 8, 0x3000 | PTE_P | PTE_W | PTE_U);
        m.put64(0x3000 + idx(2) * 8, 0x4000 | PTE_P | PTE_W);
        m.put64(0x4000 + idx(1) * 8, 0x9000 | PTE_P | PTE_NX);
        let t = translate(&m, &long4(), va).unwrap();
        assert_eq!(t.phys, 0x9123);
        assert_eq!(t.page_size, 4096);
        assert!(!t.writable && !t.user && !t.executable);
    }

    #[test]
    fn long4_large_pages() {
        let mut m = Fake::default();
        m.put64(0x1000, 0x2000 | PTE_P | PTE_W);
        // 1 GiB page for the first GiB... at PDPT index 1 (va 0x4000_0000).
        m.put64(0x2000 + 8, 0x4000_0000 | PTE_P | PTE_PS);
        // 2 MiB pages under PDPT index 0.
        m.put64(0x2000, 0x3000 | PTE_P | PTE_W);
        m.put64(0x3000 + 8, 0x60_0000 | PTE_P | PTE_W | PTE_PS);
        let t = translate(&m, &long4(), 0x4012_3456).unwrap();
        assert_eq!((t.phys, t.page_size), (0x4012_3456, 1 << 30));
        let t = translate(&m, &long4(), 0x20_1234).unwrap();
        assert_eq!((t.phys, t.page_size), (0x60_1234, 2 << 20));
        assert!(t.writable);
    }

    #[test]
    fn long5_walks_five_levels() {
        let mut m = Fake::default();
        let regs = PagingRegs {
            cr4: CR4_PAE | CR4_LA57,
            ..long4()
        };
        m.put64(0x1000, 0x2000 | PTE_P);
        m.put64(0x2000, 0x3000 | PTE_P);
        m.put64(0x3000, 0x4000 | PTE_P);
        m.put64(0x4000, 0x5000 | PTE_P);
        m.put64(0x5000 + 8, 0x7000 | PTE_P);
        assert_eq!(translate(&m, &regs, 0x1abc).unwrap().phys, 0x7abc);
    }

    #[test]
    fn not_present_and_non_canonical() {
        let m = Fake::default();
        assert_eq!(
            translate(&m, &long4(), 0x1000),
            Err(WalkError::NotPresent {
                vaddr: 0x1000,
                level: 4
            })
        );
        assert_eq!(
            translate(&m, &long4(), 0x0000_8000_0000_0000),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
    }

    #[test]
    fn table_outside_ram() {
        let m = Fake::default();
        let regs = PagingRegs {
            cr3: 0x4000_0000,
            ..long4()
        };
        assert!(matches!(
            translate(&m, &regs, 0x1000),
            Err(WalkError::TableOutsideRam { .. })
        ));
    }

    #[test]
    fn pae_and_bits32() {
        let mut m = Fake::default();
        let pae = PagingRegs {
            cr0: PG,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        m.put64(0x1000 + 8 * 2, 0x2000 | PTE_P); // va 0x8000_0000 region
        m.put64(0x2000 + 8, 0x40_0000 | PTE_P | PTE_PS | PTE_W);
        let t = translate(&m, &pae, 0x8020_0010).unwrap();
        assert_eq!((t.phys, t.page_size), (0x40_0010, 2 << 20));

        let b32 = PagingRegs {
            cr0: PG,
            cr3: 0x5000,
            cr4: CR4_PSE,
            efer: 0,
        };
        m.put32(0x5000 + 4, 0x0080_0000 | 0x83); // 4 MiB page at va 0x40_0000
        m.put32(0x5000 + 8, 0x6000 | 0x7); // page table for va 0x80_0000
        m.put32(0x6000 + 4 * 3, 0xa000 | 0x5); // va 0x80_3000 -> 0xa000 user r/o
        let t = translate(&m, &b32, 0x40_0004).unwrap();
        assert_eq!((t.phys, t.page_size), (0x80_0004, 4 << 20));
        let t = translate(&m, &b32, 0x80_3004).unwrap();
        assert_eq!(t.phys, 0xa004);
        assert!(t.user && !t.writable);
        let no_pse = PagingRegs { cr4: 0, ..b32 };
        // Without PSE the 4 MiB PDE is read as a page-table pointer (to an
        // empty table here).
        assert_eq!(
            translate(&m, &no_pse, 0x40_0004),
            Err(WalkError::NotPresent {
                vaddr: 0x40_0004,
                level: 1
            })
        );
    }
}
