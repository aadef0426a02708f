//! A pcap capture of a network card's frames (the classic libpcap format with
//! nanosecond timestamps, link type Ethernet), stamped with virtual time, so
//! two runs of one scenario write the same file. A write error is counted and
//! never stops the guest.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// pcap magic for nanosecond-resolution timestamps.
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;
/// Largest frame recorded.
const SNAPLEN: u32 = 65_535;

/// Virtual time as devices see it: the run loop stores the clock here before
/// each MMIO access and each host-side device call.
#[derive(Debug, Default)]
pub struct DeviceClock(AtomicU64);

impl DeviceClock {
    /// A clock at zero.
    pub fn new() -> Arc<DeviceClock> {
        Arc::new(DeviceClock::default())
    }

    /// Sets the current virtual time.
    pub fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::Relaxed);
    }

    /// The current virtual time in nanoseconds.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An open capture file.
pub struct Pcap {
    file: File,
    clock: Arc<DeviceClock>,
    errors: u64,
}

impl Pcap {
    /// Creates `path` and writes the file header.
    pub fn create(path: &Path, clock: Arc<DeviceClock>) -> std::io::Result<Pcap> {
        let mut file = File::create(path)?;
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_NS.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        file.write_all(&h)?;
        Ok(Pcap {
            file,
            clock,
            errors: 0,
        })
    }

    /// Appends one frame, stamped with the current virtual time.
    pub fn record(&mut self, frame: &[u8]) {
        let ns = self.clock.now();
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let kept = len.min(SNAPLEN);
        let secs = u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX);
        let frac = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
        let mut rec = Vec::with_capacity(16 + frame.len());
        rec.extend_from_slice(&secs.to_le_bytes());
        rec.extend_from_slice(&frac.to_le_bytes());
        rec.extend_from_slice(&kept.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&frame[..super::to_usize(u64::from(kept))]);
        if self.file.write_all(&rec).is_err() {
            self.errors += 1;
        }
    }

    /// Frames that could not be written.
    pub fn errors(&self) -> u64 {
        self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_records_follow_the_format() {
        let dir = std::env::temp_dir().join(format!("lunavm-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let clock = DeviceClock::new();
        let mut p = Pcap::create(&path, clock.clone()).unwrap();
        clock.set(1_500_000_123);
        p.record(b"abcdef");
        drop(p);
        let b = std::fs::read(&path).unwrap();
        assert_eq!(&b[0..4], &MAGIC_NS.to_le_bytes());
        assert_eq!(&b[20..24], &1u32.to_le_bytes());
        assert_eq!(&b[24..28], &1u32.to_le_bytes(), "seconds");
        assert_eq!(&b[28..32], &500_000_123u32.to_le_bytes(), "nanoseconds");
        assert_eq!(&b[32..36], &6u32.to_le_bytes());
        assert_eq!(&b[40..], b"abcdef");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
