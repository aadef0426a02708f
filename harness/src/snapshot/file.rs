//! The snapshot file format.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "LUNAVMSS"
//! 8       4     format version (u32 LE), FORMAT_VERSION
//! 12      4     reserved, 0
//! 16      8     header length H (u64 LE)
//! 24      H     header: the MachineState as JSON
//! 24+H    ...   memory, sparse: per RAM region, records of
//!                 page index (u64 LE), page count N (u32 LE), N * 4096 bytes,
//!               ending with a record whose count is 0 (index ignored)
//! end-4   4     CRC-32 (IEEE) of every byte before it (u32 LE)
//! ```
//!
//! Only pages that are not all zero are stored. A file of another format
//! version, a truncated or corrupt file is refused with a clear message.

use std::path::Path;

use super::{MachineState, Snapshot};
use crate::layout::PAGE_SIZE;

/// The file's magic number.
pub const MAGIC: &[u8; 8] = b"LUNAVMSS";
/// The format version this lunavm writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A page in bytes, as an index type (4096 always fits).
const PAGE: usize = 4096;
const _: () = assert!(PAGE as u64 == PAGE_SIZE);

/// Errors of reading or writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// I/O on the file failed.
    #[error("Cannot {what} snapshot file {path}")]
    Io {
        /// "read" or "write".
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a lunavm snapshot.
    #[error("{0} is not a lunavm snapshot (bad magic number)")]
    BadMagic(String),
    /// Another format version.
    #[error("{path} is a snapshot of format version {found}; this lunavm reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
    },
    /// The checksum does not match.
    #[error("{0} is corrupt: its checksum does not match its contents")]
    Checksum(String),
    /// The file ends early or a record is malformed.
    #[error("{path} is truncated or malformed: {why}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Serialises a snapshot into the file format.
pub fn encode(snap: &Snapshot) -> Vec<u8> {
    let header = serde_json::to_vec(&snap.state).unwrap_or_default();
    let mut out = Vec::with_capacity(header.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for region in &snap.memory {
        let pages = region.len() / PAGE;
        let mut p = 0;
        while p < pages {
            if region[p * PAGE..(p + 1) * PAGE].iter().all(|&b| b == 0) {
                p += 1;
                continue;
            }
            let start = p;
            while p < pages
                && p - start < u32::MAX as usize
                && region[p * PAGE..(p + 1) * PAGE].iter().any(|&b| b != 0)
            {
                p += 1;
            }
            out.extend_from_slice(&(start as u64).to_le_bytes());
            out.extend_from_slice(&u32::try_from(p - start).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&region[start * PAGE..p * PAGE]);
        }
        out.extend_from_slice(&0u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Writes a snapshot file.
pub fn save(snap: &Snapshot, path: &Path) -> Result<(), FileError> {
    std::fs::write(path, encode(snap)).map_err(|source| FileError::Io {
        what: "write",
        path: path.display().to_string(),
        source,
    })
}

/// Reads a snapshot file: the state and, per region of `region_sizes`
/// (from the header's memory size), the full memory.
pub fn load(path: &Path) -> Result<Snapshot, FileError> {
    let data = std::fs::read(path).map_err(|source| FileError::Io {
        what: "read",
        path: path.display().to_string(),
        source,
    })?;
    decode(&data, &path.display().to_string())
}

/// Parses the bytes of a snapshot file named `name` (for messages).
pub fn decode(data: &[u8], name: &str) -> Result<Snapshot, FileError> {
    let malformed = |why: &str| FileError::Malformed {
        path: name.to_string(),
        why: why.to_string(),
    };
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(FileError::BadMagic(name.to_string()));
    }
    if data.len() < 28 {
        return Err(malformed("shorter than the fixed header"));
    }
    let version = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(FileError::Version {
            path: name.to_string(),
            found: version,
        });
    }
    let body = &data[..data.len() - 4];
    let crc = u32::from_le_bytes(data[data.len() - 4..].try_into().unwrap_or_default());
    if crc32fast::hash(body) != crc {
        return Err(FileError::Checksum(name.to_string()));
    }
    let hlen = usize::try_from(u64::from_le_bytes(
        data[16..24].try_into().unwrap_or_default(),
    ))
    .map_err(|_| malformed("header length"))?;
    let header = body
        .get(24..24usize.saturating_add(hlen))
        .ok_or_else(|| malformed("header runs past the end"))?;
    let state: MachineState =
        serde_json::from_slice(header).map_err(|e| malformed(&format!("header: {e}")))?;
    let mut memory = Vec::new();
    let mut at = 24 + hlen;
    for (_, size) in crate::layout::ram_ranges(state.mem_size) {
        let size = usize::try_from(size).map_err(|_| malformed("memory size"))?;
        let mut region = vec![0u8; size];
        loop {
            let rec = body
                .get(at..at + 12)
                .ok_or_else(|| malformed("memory record runs past the end"))?;
            let index =
                usize::try_from(u64::from_le_bytes(rec[..8].try_into().unwrap_or_default()))
                    .map_err(|_| malformed("page index"))?;
            let count = usize::try_from(u32::from_le_bytes(
                rec[8..12].try_into().unwrap_or_default(),
            ))
            .map_err(|_| malformed("page count"))?;
            at += 12;
            if count == 0 {
                break;
            }
            let bytes = count
                .checked_mul(PAGE)
                .ok_or_else(|| malformed("page count"))?;
            let dst_end = index
                .checked_mul(PAGE)
                .and_then(|o| o.checked_add(bytes))
                .filter(|&e| e <= size);
            let Some(dst_end) = dst_end else {
                return Err(malformed("a memory record lies outside guest RAM"));
            };
            let src = body
                .get(at..at + bytes)
                .ok_or_else(|| malformed("memory pages run past the end"))?;
            region[dst_end - bytes..dst_end].copy_from_slice(src);
            at += bytes;
        }
        memory.push(region);
    }
    if at != body.len() {
        return Err(malformed("trailing bytes after the memory records"));
    }
    Ok(Snapshot::new(state, memory))
}
