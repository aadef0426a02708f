//! The ucall convention: how a guest calls the harness.
//!
//! The guest executes a 32-bit `out` to port [`UCALL_PORT`] with the command in
//! EAX and the guest-virtual address of a [`UCALL_STRUCT_SIZE`]-byte struct in
//! RDI/EDI (0 when there is none). The harness translates the address through the
//! vCPU's page tables. Layout (little-endian, identical in 32- and 64-bit guests;
//! `harness/guests/runtime/ucall.h` is the C side):
//!
//! ```text
//! 0   u32 magic    LUNAVM_UCALL_MAGIC
//! 4   u16 version  1
//! 6   u16 cmd      same as EAX
//! 8   u32 nargs    <= 6
//! 12  u32 msg_len  <= 255
//! 16  u64 args[6]
//! 64  char msg[256], NUL-terminated
//! ```

pub use crate::devices::UCALL_PORT;

/// Magic number at the start of the struct ("LCUL" read as little-endian u32).
pub const UCALL_MAGIC: u32 = 0x4c55_434c;
/// The struct version this harness understands.
pub const UCALL_VERSION: u16 = 1;
/// Size of the struct.
pub const UCALL_STRUCT_SIZE: usize = 320;
/// Maximum number of arguments.
pub const UCALL_MAX_ARGS: usize = 6;

/// The ucall commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Command {
    /// The guest is done; args[0] is its status.
    Done,
    /// A guest assertion failed; msg is "file:line: expression", args are
    /// (line, left, right).
    Assert,
    /// Print msg through the harness.
    Print,
    /// A synchronisation point for scripts; args[0] is its id.
    Sync,
    /// The fuzz point; args are (input buffer address, capacity).
    FuzzPoint,
    /// A coverage map; args are (address, size).
    CovMap,
    /// A comparison's operands; args are (a, b, size, pc).
    Cmp,
}

impl Command {
    /// Every command, in number order.
    pub const ALL: [Command; 7] = [
        Command::Done,
        Command::Assert,
        Command::Print,
        Command::Sync,
        Command::FuzzPoint,
        Command::CovMap,
        Command::Cmp,
    ];

    /// The command for number `n`.
    pub fn from_number(n: u32) -> Option<Command> {
        let i = usize::try_from(n.checked_sub(1)?).ok()?;
        Command::ALL.get(i).copied()
    }

    /// Its number (the value in EAX).
    pub fn number(self) -> u32 {
        match self {
            Command::Done => 1,
            Command::Assert => 2,
            Command::Print => 3,
            Command::Sync => 4,
            Command::FuzzPoint => 5,
            Command::CovMap => 6,
            Command::Cmp => 7,
        }
    }

    /// Its name as scripts and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Command::Done => "DONE",
            Command::Assert => "ASSERT",
            Command::Print => "PRINT",
            Command::Sync => "SYNC",
            Command::FuzzPoint => "FUZZ_POINT",
            Command::CovMap => "COV_MAP",
            Command::Cmp => "CMP",
        }
    }
}

/// A decoded ucall.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ucall {
    /// The command.
    pub cmd: Command,
    /// The valid arguments.
    pub args: Vec<u64>,
    /// The message (lossily decoded as UTF-8).
    pub msg: String,
}

/// A ucall the harness could not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum UcallError {
    /// EAX holds no known command.
    #[error("Unknown ucall command {0}")]
    UnknownCommand(u32),
    /// RDI could not be translated or read.
    #[error("ucall struct at {addr:#x} cannot be read: {reason}")]
    Unreadable {
        /// The guest-virtual address.
        addr: u64,
        /// Why.
        reason: String,
    },
    /// The struct's magic number is wrong.
    #[error("ucall struct at {addr:#x} has bad magic {magic:#010x}")]
    BadMagic {
        /// The guest-virtual address.
        addr: u64,
        /// The magic found.
        magic: u32,
    },
    /// The struct has a version this harness does not know.
    #[error(
        "ucall struct at {addr:#x} has version {version}; this lunavm understands {UCALL_VERSION}"
    )]
    BadVersion {
        /// The guest-virtual address.
        addr: u64,
        /// The version found.
        version: u16,
    },
    /// EAX and the struct disagree on the command.
    #[error("ucall command {eax} in EAX but {field} in the struct")]
    CommandMismatch {
        /// EAX.
        eax: u32,
        /// The struct's cmd field.
        field: u16,
    },
}

/// Decodes a ucall from EAX and the struct bytes (`None` when RDI was 0).
pub fn decode(
    eax: u32,
    addr: u64,
    bytes: Option<&[u8; UCALL_STRUCT_SIZE]>,
) -> Result<Ucall, UcallError> {
    let cmd = Command::from_number(eax).ok_or(UcallError::UnknownCommand(eax))?;
    let Some(b) = bytes else {
        return Ok(Ucall {
            cmd,
            args: Vec::new(),
            msg: String::new(),
        });
    };
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let magic = u32_at(0);
    if magic != UCALL_MAGIC {
        return Err(UcallError::BadMagic { addr, magic });
    }
    let version = u16_at(4);
    if version != UCALL_VERSION {
        return Err(UcallError::BadVersion { addr, version });
    }
    let field = u16_at(6);
    if u32::from(field) != eax {
        return Err(UcallError::CommandMismatch { eax, field });
    }
    let nargs = usize::try_from(u32_at(8))
        .unwrap_or(usize::MAX)
        .min(UCALL_MAX_ARGS);
    let args = (0..nargs)
        .map(|i| {
            let o = 16 + 8 * i;
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        })
        .collect();
    let msg_area = &b[64..];
    let end = msg_area
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(msg_area.len());
    let msg = String::from_utf8_lossy(&msg_area[..end]).into_owned();
    Ok(Ucall { cmd, args, msg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(cmd: u16, args: &[u64], msg: &str) -> [u8; UCALL_STRUCT_SIZE] {
        let mut b = [0u8; UCALL_STRUCT_SIZE];
        b[0..4].copy_from_slice(&UCALL_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&UCALL_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&cmd.to_le_bytes());
        b[8..12].copy_from_slice(&u32::try_from(args.len()).unwrap().to_le_bytes());
        b[12..16].copy_from_slice(&u32::try_from(msg.len()).unwrap().to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        b[64..64 + msg.len()].copy_from_slice(msg.as_bytes());
        b
    }

    #[test]
    fn decodes_a_well_formed_call() {
        let b = raw(2, &[12, 2, 3], "t.c:12: a == b");
        let u = decode(2, 0x1000, Some(&b)).unwrap();
        assert_eq!(u.cmd, Command::Assert);
        assert_eq!(u.args, vec![12, 2, 3]);
        assert_eq!(u.msg, "t.c:12: a == b");
    }

    #[test]
    fn rejects_bad_structs() {
        let mut b = raw(3, &[], "x");
        assert!(matches!(
            decode(9, 0, Some(&b)),
            Err(UcallError::UnknownCommand(9))
        ));
        assert!(matches!(
            decode(4, 0, Some(&b)),
            Err(UcallError::CommandMismatch { .. })
        ));
        b[4] = 9;
        assert!(matches!(
            decode(3, 0, Some(&b)),
            Err(UcallError::BadVersion { version: 9, .. })
        ));
        b[0] = 0;
        assert!(matches!(
            decode(3, 0, Some(&b)),
            Err(UcallError::BadMagic { .. })
        ));
    }

    #[test]
    fn null_struct_and_unterminated_message() {
        assert_eq!(decode(1, 0, None).unwrap().args, Vec::<u64>::new());
        let mut b = raw(3, &[], "");
        b[64..].fill(b'A');
        assert_eq!(decode(3, 0, Some(&b)).unwrap().msg.len(), 256);
    }

    #[test]
    fn numbers_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_number(c.number()), Some(c));
        }
        assert_eq!(Command::from_number(0), None);
    }
}
