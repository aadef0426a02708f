//! Descriptor chains, copied out of the descriptor table and checked before a
//! device uses them: every buffer lies in guest RAM, the chain ends, readable
//! buffers come before writable ones, and the total length fits in 32 bits.
//! The device then works on the copy, so a driver that rewrites descriptors
//! while a request is being processed (or points a buffer at the descriptor
//! table itself) cannot change what the device does.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::vm::memory::GuestMem;

/// Descriptor flag: the chain continues at `next`.
const F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
const F_INDIRECT: u16 = 4;
/// Size of one descriptor in bytes.
const DESC_SIZE: u64 = 16;

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor index past the end of its table.
    #[error("descriptor index {index} is outside a table of {size}")]
    BadIndex {
        /// The index.
        index: u16,
        /// The table's size.
        size: u16,
    },
    /// The chain visits more descriptors than its table holds: a loop.
    #[error("the descriptor chain starting at {head} loops (more than {limit} descriptors)")]
    Loop {
        /// The head descriptor.
        head: u16,
        /// Descriptors the table holds.
        limit: u32,
    },
    /// A descriptor or buffer outside guest RAM.
    #[error("a descriptor points outside guest memory: {addr:#x}+{len:#x}")]
    OutsideMemory {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// A readable buffer after a writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    Order,
    /// An indirect table that is malformed or nested.
    #[error("bad indirect descriptor table: {0}")]
    Indirect(&'static str),
    /// The chain's buffers add up to more than 4 GiB.
    #[error("the descriptor chain is longer than 4 GiB")]
    TooLong,
}

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A checked copy of a descriptor chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Index of the head descriptor (what the used ring returns).
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
}

#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMem, table: GuestAddress, index: u16) -> Result<Desc, ChainError> {
    let at = table.0 + u64::from(index) * DESC_SIZE;
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(at))
        .map_err(|_| ChainError::OutsideMemory {
            addr: at,
            len: DESC_SIZE,
        })?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
    Ok(Desc {
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        flags: u16::from_le_bytes([f0, f1]),
        next: u16::from_le_bytes([n0, n1]),
    })
}

/// Whether `[addr, addr + len)` lies wholly in guest RAM.
pub fn in_memory(mem: &GuestMem, addr: u64, len: u64) -> bool {
    len == 0 && mem.address_in_range(GuestAddress(addr))
        || usize::try_from(len).is_ok_and(|n| mem.check_range(GuestAddress(addr), n))
}

impl Chain {
    /// Walks the chain at `head` in the descriptor table at `table` of `size`
    /// entries, following at most one indirect table.
    pub fn walk(
        mem: &GuestMem,
        table: GuestAddress,
        size: u16,
        head: u16,
    ) -> Result<Chain, ChainError> {
        let mut chain = Chain {
            head,
            ..Chain::default()
        };
        let (mut table, mut size, mut index) = (table, size, head);
        let mut indirect = false;
        let mut visited = 0u32;
        let mut total = 0u64;
        loop {
            if index >= size {
                return Err(ChainError::BadIndex { index, size });
            }
            visited += 1;
            if visited > u32::from(size) {
                return Err(ChainError::Loop {
                    head,
                    limit: u32::from(size),
                });
            }
            let d = read_desc(mem, table, index)?;
            if d.flags & F_INDIRECT != 0 {
                if indirect {
                    return Err(ChainError::Indirect("an indirect table inside another"));
                }
                if d.flags & F_NEXT != 0 {
                    return Err(ChainError::Indirect("an indirect descriptor with NEXT set"));
                }
                if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 {
                    return Err(ChainError::Indirect("its length is not a multiple of 16"));
                }
                let entries = u64::from(d.len) / DESC_SIZE;
                let entries =
                    u16::try_from(entries).map_err(|_| ChainError::Indirect("too many entries"))?;
                if !in_memory(mem, d.addr, u64::from(d.len)) {
                    return Err(ChainError::OutsideMemory {
                        addr: d.addr,
                        len: u64::from(d.len),
                    });
                }
                (table, size, index) = (GuestAddress(d.addr), entries, 0);
                indirect = true;
                visited = 0;
                continue;
            }
            if !in_memory(mem, d.addr, u64::from(d.len)) {
                return Err(ChainError::OutsideMemory {
                    addr: d.addr,
                    len: u64::from(d.len),
                });
            }
            total += u64::from(d.len);
            if total > u64::from(u32::MAX) {
                return Err(ChainError::TooLong);
            }
            let buf = Buffer {
                addr: d.addr,
                len: d.len,
            };
            if d.flags & F_WRITE != 0 {
                chain.writable.push(buf);
            } else if chain.writable.is_empty() {
                chain.readable.push(buf);
            } else {
                return Err(ChainError::Order);
            }
            if d.flags & F_NEXT == 0 {
                return Ok(chain);
            }
            index = d.next;
        }
    }

    /// Total bytes of the readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total bytes of the writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// A cursor over the readable buffers.
    pub fn reader<'a>(&'a self, mem: &'a GuestMem) -> Cursor<'a> {
        Cursor::new(mem, &self.readable)
    }

    /// A cursor over the writable buffers.
    pub fn writer<'a>(&'a self, mem: &'a GuestMem) -> Cursor<'a> {
        Cursor::new(mem, &self.writable)
    }
}

/// A position in a list of buffers, reading or writing across them.
pub struct Cursor<'a> {
    mem: &'a GuestMem,
    bufs: &'a [Buffer],
    /// Index of the current buffer.
    at: usize,
    /// Offset inside it.
    off: u32,
    /// Bytes moved so far.
    done: u64,
}

impl<'a> Cursor<'a> {
    fn new(mem: &'a GuestMem, bufs: &'a [Buffer]) -> Cursor<'a> {
        Cursor {
            mem,
            bufs,
            at: 0,
            off: 0,
            done: 0,
        }
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self.bufs[self.at.min(self.bufs.len())..]
            .iter()
            .map(|b| u64::from(b.len))
            .sum();
        rest - u64::from(self.off)
    }

    /// Bytes moved so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Moves up to `len` bytes through `f(guest address, chunk length, offset
    /// into the caller's data)`; returns how many moved.
    fn each(&mut self, len: usize, mut f: impl FnMut(u64, usize, usize) -> bool) -> usize {
        let mut moved = 0;
        while moved < len && self.at < self.bufs.len() {
            let b = self.bufs[self.at];
            let n = super::to_usize(u64::from(b.len - self.off)).min(len - moved);
            if n > 0 && !f(b.addr + u64::from(self.off), n, moved) {
                break;
            }
            moved += n;
            self.off += super::len32(n as u64);
            if self.off == b.len {
                self.at += 1;
                self.off = 0;
            }
        }
        self.done += moved as u64;
        moved
    }

    /// Reads into `data`; returns how many bytes were read (fewer at the end
    /// of the buffers).
    pub fn read(&mut self, data: &mut [u8]) -> usize {
        let mem = self.mem;
        self.each(data.len(), |addr, n, at| {
            mem.read_slice(&mut data[at..at + n], GuestAddress(addr))
                .is_ok()
        })
    }

    /// Reads exactly `data.len()` bytes, or returns false.
    pub fn read_exact(&mut self, data: &mut [u8]) -> bool {
        self.read(data) == data.len()
    }

    /// Writes `data`; returns how many bytes were written (fewer at the end of
    /// the buffers).
    pub fn write(&mut self, data: &[u8]) -> usize {
        let mem = self.mem;
        self.each(data.len(), |addr, n, at| {
            mem.write_slice(&data[at..at + n], GuestAddress(addr))
                .is_ok()
        })
    }

    /// Skips `len` bytes.
    pub fn skip(&mut self, len: u64) -> u64 {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.each(len, |_, _, _| true) as u64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// A small guest memory for device tests (1 MiB at 0).
    pub(crate) fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// Writes descriptor `index` of the table at `table`.
    pub(crate) fn put_desc(
        mem: &GuestMem,
        table: u64,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(table + u64::from(index) * 16);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, at).unwrap();
    }

    const T: u64 = 0x1000;

    #[test]
    fn a_chain_splits_into_readable_then_writable() {
        let m = mem();
        put_desc(&m, T, 0, 0x4000, 16, F_NEXT, 1);
        put_desc(&m, T, 1, 0x5000, 512, F_NEXT | F_WRITE, 2);
        put_desc(&m, T, 2, 0x6000, 1, F_WRITE, 0);
        let c = Chain::walk(&m, GuestAddress(T), 8, 0).unwrap();
        assert_eq!(
            c.readable,
            vec![Buffer {
                addr: 0x4000,
                len: 16
            }]
        );
        assert_eq!(c.writable.len(), 2);
        assert_eq!((c.readable_len(), c.writable_len()), (16, 513));
    }

    #[test]
    fn a_loop_is_refused() {
        let m = mem();
        put_desc(&m, T, 0, 0x4000, 16, F_NEXT, 1);
        put_desc(&m, T, 1, 0x4000, 16, F_NEXT, 0);
        let e = Chain::walk(&m, GuestAddress(T), 8, 0).unwrap_err();
        assert_eq!(e, ChainError::Loop { head: 0, limit: 8 });
    }

    #[test]
    fn buffers_outside_memory_are_refused() {
        let m = mem();
        put_desc(&m, T, 0, (1 << 20) - 8, 16, 0, 0);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        put_desc(&m, T, 0, u64::MAX - 4, 16, 0, 0);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::OutsideMemory { .. })
        ));
        // The table itself outside memory.
        assert!(matches!(
            Chain::walk(&m, GuestAddress(1 << 40), 8, 0),
            Err(ChainError::OutsideMemory { .. })
        ));
    }

    #[test]
    fn bad_indices_order_and_length_are_refused() {
        let m = mem();
        assert_eq!(
            Chain::walk(&m, GuestAddress(T), 8, 9),
            Err(ChainError::BadIndex { index: 9, size: 8 })
        );
        put_desc(&m, T, 0, 0x4000, 16, F_NEXT | F_WRITE, 1);
        put_desc(&m, T, 1, 0x5000, 16, 0, 0);
        assert_eq!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::Order)
        );
        put_desc(&m, T, 0, 0x4000, u32::MAX, F_NEXT, 1);
        put_desc(&m, T, 1, 0x4000, 16, 0, 0);
        // u32::MAX bytes at 0x4000 is outside a 1 MiB memory before it is too long.
        assert!(Chain::walk(&m, GuestAddress(T), 8, 0).is_err());
    }

    #[test]
    fn chains_longer_than_4_gib_are_refused() {
        // An indirect table of 4097 descriptors, each the whole 1 MiB memory.
        let m = mem();
        let ind = 0x2_0000;
        let n: u16 = 4097;
        for i in 0..n {
            let flags = if i + 1 < n { F_NEXT } else { 0 };
            put_desc(&m, ind, i, 0, 1 << 20, flags, i + 1);
        }
        put_desc(&m, T, 0, ind, u32::from(n) * 16, F_INDIRECT, 0);
        assert_eq!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::TooLong)
        );
    }

    #[test]
    fn one_indirect_table_is_followed_but_not_nested() {
        let m = mem();
        let ind = 0x2000;
        put_desc(&m, ind, 0, 0x4000, 16, F_NEXT, 1);
        put_desc(&m, ind, 1, 0x5000, 8, F_WRITE, 0);
        put_desc(&m, T, 0, ind, 32, F_INDIRECT, 0);
        let c = Chain::walk(&m, GuestAddress(T), 8, 0).unwrap();
        assert_eq!((c.readable.len(), c.writable.len()), (1, 1));
        put_desc(&m, ind, 1, ind, 32, F_INDIRECT, 0);
        put_desc(&m, ind, 0, 0x4000, 16, F_NEXT, 1);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::Indirect(_))
        ));
        put_desc(&m, T, 0, ind, 20, F_INDIRECT, 0);
        assert!(matches!(
            Chain::walk(&m, GuestAddress(T), 8, 0),
            Err(ChainError::Indirect(_))
        ));
    }

    #[test]
    fn cursors_cross_buffer_boundaries() {
        let m = mem();
        put_desc(&m, T, 0, 0x4000, 3, F_NEXT | F_WRITE, 1);
        put_desc(&m, T, 1, 0x5000, 5, F_WRITE, 0);
        let c = Chain::walk(&m, GuestAddress(T), 8, 0).unwrap();
        let mut w = c.writer(&m);
        assert_eq!(w.write(b"abcdefghij"), 8);
        assert_eq!(w.remaining(), 0);
        let mut out = [0u8; 5];
        m.read_slice(&mut out, GuestAddress(0x5000)).unwrap();
        assert_eq!(&out, b"defgh");
    }

    #[test]
    fn the_copy_does_not_change_when_the_table_is_overwritten() {
        let m = mem();
        // The writable buffer covers the descriptor table itself.
        put_desc(&m, T, 0, T, 32, F_WRITE, 0);
        let c = Chain::walk(&m, GuestAddress(T), 8, 0).unwrap();
        c.writer(&m).write(&[0xff; 32]);
        assert_eq!(c.writable, vec![Buffer { addr: T, len: 32 }]);
    }
}
