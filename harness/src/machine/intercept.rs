//! Intercepts: guest accesses and events that make `Machine::run` return to its
//! caller (a script's hooks and devices) instead of being handled silently. The
//! caller handles them while the machine is stopped, then runs it again; nothing
//! calls back into a front end from inside the run loop.

use kvm_bindings::{kvm_run, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_MMIO};
use kvm_ioctls::VcpuFd;

/// Which directions of access an intercept covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Reads only.
    Read,
    /// Writes only.
    Write,
    /// Both.
    Both,
}

impl Direction {
    fn covers(self, write: bool) -> bool {
        match self {
            Direction::Read => !write,
            Direction::Write => write,
            Direction::Both => true,
        }
    }
}

/// The address space of an intercept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// Port I/O.
    Pio,
    /// MMIO.
    Mmio,
}

#[derive(Clone, Copy, Debug)]
struct Range {
    id: u64,
    space: Space,
    first: u64,
    last: u64,
    dir: Direction,
}

/// A guest access an intercept caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Access {
    /// Port or MMIO.
    pub space: Space,
    /// Port number or guest-physical address.
    pub addr: u64,
    /// Access size in bytes.
    pub size: u8,
    /// Write (else read).
    pub write: bool,
    /// The value written, or the value the device returned for a read.
    pub value: u64,
}

/// The set of intercepts on a machine.
#[derive(Clone, Debug, Default)]
pub struct Intercepts {
    ranges: Vec<Range>,
    next_id: u64,
    /// Return at every ucall that does not stop the run anyway.
    pub ucalls: bool,
    /// Return after every instruction lunavm completes for KVM.
    pub completions: bool,
}

impl Intercepts {
    /// Intercepts accesses to `[first, last]` in `space`; returns the id.
    pub fn add(&mut self, space: Space, first: u64, last: u64, dir: Direction) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.ranges.push(Range {
            id,
            space,
            first,
            last,
            dir,
        });
        id
    }

    /// Removes the intercept `id`; whether it existed.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.ranges.len();
        self.ranges.retain(|r| r.id != id);
        before != self.ranges.len()
    }

    /// Whether an access is intercepted.
    pub fn matches(&self, space: Space, addr: u64, write: bool) -> bool {
        !self.ranges.is_empty()
            && self.ranges.iter().any(|r| {
                r.space == space && r.first <= addr && addr <= r.last && r.dir.covers(write)
            })
    }
}

/// Little-endian value of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

/// Replaces the data a pending port or MMIO read returns to the guest. Valid
/// between an intercepted read exit and the next KVM_RUN; returns whether there
/// was such a read.
pub fn patch_read(vcpu: &mut VcpuFd, value: u64) -> bool {
    let run: &mut kvm_run = vcpu.get_kvm_run();
    let bytes = value.to_le_bytes();
    match run.exit_reason {
        KVM_EXIT_IO => {
            // SAFETY: exit_reason is KVM_EXIT_IO, so `io` is the union member KVM wrote.
            let io = unsafe { run.__bindgen_anon_1.io };
            if u32::from(io.direction) != KVM_EXIT_IO_IN {
                return false;
            }
            let len = usize::from(io.size).min(8);
            let offset = usize::try_from(io.data_offset).unwrap_or(usize::MAX);
            let base = std::ptr::from_mut(run).cast::<u8>();
            // SAFETY: KVM's ABI places the `size * count` bytes of an IN exit at
            // `data_offset` inside the vCPU's mmap'd run area, which stays mapped
            // while `vcpu` lives; we write at most `size` (<= 8) of them.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset), len) };
            true
        }
        KVM_EXIT_MMIO => {
            // SAFETY: exit_reason is KVM_EXIT_MMIO, so `mmio` is the union member KVM wrote.
            let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
            if mmio.is_write != 0 {
                return false;
            }
            let len = usize::try_from(mmio.len).unwrap_or(8).min(8);
            mmio.data[..len].copy_from_slice(&bytes[..len]);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_by_space_address_and_direction() {
        let mut i = Intercepts::default();
        assert!(!i.matches(Space::Pio, 0x600, false));
        let id = i.add(Space::Pio, 0x600, 0x603, Direction::Read);
        assert!(i.matches(Space::Pio, 0x603, false));
        assert!(!i.matches(Space::Pio, 0x603, true));
        assert!(!i.matches(Space::Mmio, 0x600, false));
        assert!(!i.matches(Space::Pio, 0x604, false));
        assert!(i.remove(id));
        assert!(!i.remove(id));
        assert!(!i.matches(Space::Pio, 0x600, false));
    }

    #[test]
    fn values_are_little_endian() {
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[]), 0);
    }
}
