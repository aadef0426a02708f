//! Guest-virtual memory access through the page-table walker, page by page.

use super::memory::{self, GuestMem};
use super::paging::{self, PagingRegs, WalkError};

/// Errors of a guest-virtual access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Translation failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The translated physical address is not RAM.
    #[error("Address {vaddr:#x} maps to physical {phys:#x}, which is not guest RAM")]
    NotRam {
        /// The virtual address.
        vaddr: u64,
        /// Its physical address.
        phys: u64,
    },
}

/// Splits `[vaddr, vaddr + len)` at page boundaries and calls `f(phys, range)`
/// for each piece, translating each page once.
fn for_each_page(
    mem: &GuestMem,
    regs: &PagingRegs,
    vaddr: u64,
    len: usize,
    mut f: impl FnMut(u64, std::ops::Range<usize>) -> bool,
) -> Result<(), AccessError> {
    let mut done = 0usize;
    while done < len {
        let va = vaddr.wrapping_add(done as u64);
        let t = paging::translate(mem, regs, va)?;
        let in_page = t.page_size - (t.phys & (t.page_size - 1));
        let n = usize::try_from(in_page)
            .unwrap_or(usize::MAX)
            .min(len - done);
        if !f(t.phys, done..done + n) {
            return Err(AccessError::NotRam {
                vaddr: va,
                phys: t.phys,
            });
        }
        done += n;
    }
    Ok(())
}

/// Reads guest-virtual memory.
pub fn read_virt(
    mem: &GuestMem,
    regs: &PagingRegs,
    vaddr: u64,
    buf: &mut [u8],
) -> Result<(), AccessError> {
    let len = buf.len();
    for_each_page(mem, regs, vaddr, len, |phys, r| {
        memory::read_phys(mem, phys, &mut buf[r])
    })
}

/// Writes guest-virtual memory (ignoring page permissions: this is the
/// harness's access, as a debugger's).
pub fn write_virt(
    mem: &GuestMem,
    regs: &PagingRegs,
    vaddr: u64,
    buf: &[u8],
) -> Result<(), AccessError> {
    for_each_page(mem, regs, vaddr, buf.len(), |phys, r| {
        memory::write_phys(mem, phys, &buf[r])
    })
}

/// The guest-physical pieces `[vaddr, vaddr + len)` maps to, as (address,
/// length), merged where they are contiguous; an error when any byte is
/// unmapped or not RAM.
pub fn phys_ranges(
    mem: &GuestMem,
    regs: &PagingRegs,
    vaddr: u64,
    len: usize,
) -> Result<Vec<(u64, u64)>, AccessError> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for_each_page(mem, regs, vaddr, len, |phys, r| {
        let n = r.len() as u64;
        let mut probe = [0u8; 1];
        if !memory::read_phys(mem, phys, &mut probe)
            || !memory::read_phys(mem, phys + n - 1, &mut probe)
        {
            return false;
        }
        match out.last_mut() {
            Some((a, l)) if *a + *l == phys => *l += n,
            _ => out.push((phys, n)),
        }
        true
    })?;
    Ok(out)
}

/// Reads as many bytes as are mapped, up to `buf.len()`; returns how many.
pub fn read_virt_prefix(mem: &GuestMem, regs: &PagingRegs, vaddr: u64, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        if read_virt(mem, regs, vaddr.wrapping_add(n as u64), &mut buf[n..=n]).is_err() {
            break;
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_off_reads_cross_pages_and_stop_at_ram_end() {
        let mem = memory::create(4 << 20).unwrap();
        let regs = PagingRegs::default();
        write_virt(&mem, &regs, 0xffe, b"abcd").unwrap();
        let mut b = [0u8; 4];
        read_virt(&mem, &regs, 0xffe, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        let end = (4u64 << 20) - 2;
        assert!(matches!(
            read_virt(&mem, &regs, end, &mut b),
            Err(AccessError::NotRam { .. })
        ));
        assert_eq!(read_virt_prefix(&mem, &regs, end, &mut b), 2);
    }
}
