//! virtio-blk backed by a disk image file. By default the guest writes into an
//! in-memory copy-on-write overlay, so the image on disk never changes and a
//! snapshot restores disk contents too; opened `rw`, writes go to the file.
//! Requests: read, write, flush, get-id and discard.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::Chain;
use super::{
    device_type, hexstate, len32, read_config_bytes, to_usize, Queues, VirtioDevice, VirtioError,
};
use crate::devices::bus::DeviceState;

/// Bytes per sector, as virtio-blk counts.
pub const SECTOR: u64 = 512;
/// Granule of the copy-on-write overlay.
const BLOCK: u64 = 4096;
/// [`BLOCK`] as a buffer length.
const BLOCK_LEN: usize = 4096;
/// The request queue.
const REQ: usize = 0;
/// Feature: `seg_max` is valid.
const F_SEG_MAX: u64 = 1 << 2;
/// Feature: the device is read-only.
const F_RO: u64 = 1 << 5;
/// Feature: flush is supported.
const F_FLUSH: u64 = 1 << 9;
/// Feature: discard is supported.
const F_DISCARD: u64 = 1 << 13;
/// Largest discard, in sectors.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// Request types.
mod req {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
}

/// Request status bytes.
mod st {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Errors of opening a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image cannot be opened.
    #[error("Cannot open disk image {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image's size is not whole sectors.
    #[error("Disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// How the guest's writes reach the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskMode {
    /// Into an in-memory overlay; the file never changes (the default).
    Overlay,
    /// Into the file itself.
    Rw,
}

/// The disk: an image file, or none (an empty disk of a given size), with
/// the overlay.
pub struct Disk {
    file: Option<File>,
    size: u64,
    mode: DiskMode,
    /// Overlay blocks by index; `None` is a discarded (zero) block.
    overlay: BTreeMap<u64, Option<Box<[u8]>>>,
    /// Writes that went to the file since the device was created.
    file_writes: u64,
}

impl Disk {
    /// Opens `path` in `mode`.
    pub fn open(path: &Path, mode: DiskMode) -> Result<Disk, DiskError> {
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(mode == DiskMode::Rw)
                .open(path)
        };
        let err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = open().map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        if size % SECTOR != 0 {
            return Err(DiskError::Size {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Disk {
            file: Some(file),
            size,
            mode,
            overlay: BTreeMap::new(),
            file_writes: 0,
        })
    }

    /// An empty disk of `size` bytes held only in memory.
    pub fn in_memory(size: u64) -> Disk {
        Disk {
            file: None,
            size: size / SECTOR * SECTOR,
            mode: DiskMode::Overlay,
            overlay: BTreeMap::new(),
            file_writes: 0,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How writes reach the image.
    pub fn mode(&self) -> DiskMode {
        self.mode
    }

    /// Bytes held in the overlay.
    pub fn overlay_bytes(&self) -> u64 {
        self.overlay.values().flatten().count() as u64 * BLOCK
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    fn read_base(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let Some(f) = &self.file else {
            return Ok(());
        };
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break, // past the end of the file: zeros
                n => done += n,
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`, through the overlay.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if self.mode == DiskMode::Rw {
            return self.read_base(offset, buf);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK_LEN - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match self.overlay.get(&block) {
                Some(Some(data)) => out.copy_from_slice(&data[within..within + n]),
                Some(None) => out.fill(0),
                None => self.read_base(at, out)?,
            }
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `offset`: into the overlay, or the file when `rw`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.mode == DiskMode::Rw {
            self.file_writes += 1;
            if let Some(f) = &self.file {
                f.write_all_at(data, offset)?;
            }
            return Ok(());
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (block, within) = (at / BLOCK, (at % BLOCK) as usize);
            let n = (BLOCK_LEN - within).min(data.len() - done);
            if !matches!(self.overlay.get(&block), Some(Some(_))) {
                let mut fresh = vec![0u8; BLOCK_LEN].into_boxed_slice();
                if n < BLOCK_LEN {
                    self.read(block * BLOCK, &mut fresh)?;
                }
                self.overlay.insert(block, Some(fresh));
            }
            if let Some(Some(b)) = self.overlay.get_mut(&block) {
                b[within..within + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `offset` (discard).
    pub fn zero(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let within = at % BLOCK;
            let n = (BLOCK - within).min(end - at);
            if self.mode == DiskMode::Overlay && within == 0 && n == BLOCK {
                self.overlay.insert(at / BLOCK, None);
            } else {
                self.write(at, &vec![0; to_usize(n)])?;
            }
            at += n;
        }
        Ok(())
    }

    fn flush(&self) -> std::io::Result<()> {
        match (&self.file, self.mode) {
            (Some(f), DiskMode::Rw) => f.sync_data(),
            _ => Ok(()),
        }
    }
}

/// The block device.
pub struct Blk {
    disk: Disk,
    id: [u8; 20],
    read_only: bool,
    stats: BlkStats,
}

/// Request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkStats {
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// Discard requests.
    pub discards: u64,
    /// Requests completed with an error status.
    pub errors: u64,
}

#[derive(Serialize, Deserialize)]
struct SavedBlk {
    mode: DiskMode,
    size: u64,
    /// Overlay blocks: index and contents (hex), or null for a zero block.
    overlay: Vec<(u64, Option<String>)>,
    file_writes: u64,
    stats: BlkStats,
}

impl Blk {
    /// A device for `disk` whose get-id answer is `id` (at most 20 bytes kept).
    pub fn new(disk: Disk, id: &str, read_only: bool) -> Blk {
        let mut bytes = [0u8; 20];
        let n = id.len().min(20);
        bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Blk {
            disk,
            id: bytes,
            read_only,
            stats: BlkStats::default(),
        }
    }

    /// The disk, for host-side reads and writes.
    pub fn disk(&mut self) -> &mut Disk {
        &mut self.disk
    }

    /// Counters.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// Carries out one request; returns the status byte and the bytes written
    /// to the guest before it.
    fn request(&mut self, chain: &Chain, queues: &Queues<'_>) -> Result<(u8, u32), VirtioError> {
        let bad = |reason: &str| VirtioError::BadRequest {
            device: "virtio-blk",
            reason: reason.into(),
        };
        let mem = queues.mem();
        let mut r = chain.reader(mem);
        let mut hdr = [0u8; 16];
        if !r.read_exact(&mut hdr) {
            return Err(bad("a request without its 16-byte header"));
        }
        if chain.writable_len() == 0 {
            return Err(bad("a request without a status byte"));
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        let data_in = chain.writable_len() - 1;
        let mut w = chain.writer(mem);
        let io = |e: std::io::Error| VirtioError::BadRequest {
            device: "virtio-blk",
            reason: format!("the disk image failed: {e}"),
        };
        let offset = sector.checked_mul(SECTOR);
        let status = match kind {
            req::IN => {
                self.stats.reads += 1;
                match offset.filter(|&o| data_in % SECTOR == 0 && self.disk.in_range(o, data_in)) {
                    None => st::IOERR,
                    Some(o) => {
                        let mut buf = vec![0; to_usize(data_in).min(1 << 20)];
                        let mut at = o;
                        while w.remaining() > 1 {
                            let n = to_usize(w.remaining() - 1).min(buf.len());
                            self.disk.read(at, &mut buf[..n]).map_err(io)?;
                            w.write(&buf[..n]);
                            at += n as u64;
                        }
                        st::OK
                    }
                }
            }
            req::OUT => {
                self.stats.writes += 1;
                let len = r.remaining();
                match offset.filter(|&o| len % SECTOR == 0 && self.disk.in_range(o, len)) {
                    _ if self.read_only => st::IOERR,
                    None => st::IOERR,
                    Some(o) => {
                        let mut buf = vec![0; to_usize(len).min(1 << 20)];
                        let mut at = o;
                        loop {
                            let n = r.read(&mut buf);
                            if n == 0 {
                                break;
                            }
                            self.disk.write(at, &buf[..n]).map_err(io)?;
                            at += n as u64;
                        }
                        st::OK
                    }
                }
            }
            req::FLUSH => {
                self.stats.flushes += 1;
                self.disk.flush().map_err(io)?;
                st::OK
            }
            req::GET_ID => {
                let n = to_usize(data_in).min(20);
                w.write(&self.id[..n]);
                st::OK
            }
            req::DISCARD => {
                self.stats.discards += 1;
                let mut seg = [0u8; 16];
                let mut status = st::OK;
                while r.read_exact(&mut seg) {
                    let s = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                    let n = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                    let range = s.checked_mul(SECTOR).filter(|&o| {
                        n <= MAX_DISCARD_SECTORS && self.disk.in_range(o, u64::from(n) * SECTOR)
                    });
                    match range {
                        Some(o) if !self.read_only => {
                            self.disk.zero(o, u64::from(n) * SECTOR).map_err(io)?
                        }
                        _ => status = st::IOERR,
                    }
                }
                status
            }
            _ => st::UNSUPP,
        };
        if status != st::OK {
            self.stats.errors += 1;
        }
        // The status byte is the last writable byte.
        let written = w.done();
        let mut w = chain.writer(mem);
        w.skip(chain.writable_len() - 1);
        w.write(&[status]);
        Ok((status, len32(written + 1)))
    }
}

impl VirtioDevice for Blk {
    fn name(&self) -> &'static str {
        "virtio-blk"
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.read_only { F_RO } else { 0 };
        F_SEG_MAX | F_FLUSH | F_DISCARD | ro
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 60];
        cfg[0..8].copy_from_slice(&(self.disk.size / SECTOR).to_le_bytes());
        let seg_max = u32::from(super::QUEUE_MAX_SIZE) - 2;
        cfg[12..16].copy_from_slice(&seg_max.to_le_bytes());
        cfg[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        cfg[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        cfg[44..48].copy_from_slice(&len32(BLOCK / SECTOR).to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn notify(&mut self, index: usize, queues: &mut Queues<'_>) -> Result<(), VirtioError> {
        while let Some(chain) = queues.pop(index)? {
            let (_, len) = self.request(&chain, queues)?;
            queues.complete(REQ, chain.head, len)?;
        }
        Ok(())
    }

    fn reset(&mut self) {}

    fn save(&self) -> DeviceState {
        let overlay = self
            .disk
            .overlay
            .iter()
            .map(|(&i, b)| (i, b.as_ref().map(|b| hexstate::encode(b))))
            .collect();
        super::save_json(&SavedBlk {
            mode: self.disk.mode,
            size: self.disk.size,
            overlay,
            file_writes: self.disk.file_writes,
            stats: self.stats,
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), String> {
        let saved: SavedBlk = super::restore_json(state)?;
        if saved.size != self.disk.size || saved.mode != self.disk.mode {
            return Err(format!(
                "the saved disk is {} bytes ({:?}), this one {} bytes ({:?})",
                saved.size, saved.mode, self.disk.size, self.disk.mode
            ));
        }
        if self.disk.mode == DiskMode::Rw && saved.file_writes != self.disk.file_writes {
            return Err("the disk was opened rw and the guest wrote to the image file since the snapshot: its contents cannot be restored (use the default overlay)".into());
        }
        let mut overlay = BTreeMap::new();
        for (i, b) in saved.overlay {
            let block = match b {
                None => None,
                Some(hex) => {
                    let bytes = hexstate::decode(&hex)?;
                    if bytes.len() as u64 != BLOCK {
                        return Err(format!("overlay block {i} is {} bytes", bytes.len()));
                    }
                    Some(bytes.into_boxed_slice())
                }
            };
            overlay.insert(i, block);
        }
        self.disk.overlay = overlay;
        self.stats = saved.stats;
        Ok(())
    }

    super::impl_as_any!();
}
