//! Seed inputs for every target: short, meaningful sequences (a driver's
//! initialisation, a request of each kind) from which the fuzzer mutates.
//! `corpora/TARGET/seed-*` hold them encoded; a test keeps the files and
//! this list in step (`LUNAVM_WRITE_SEEDS=1` rewrites the files).

use super::{Action, BufSpec, HostOp, Target, Width};

fn w(at: u16, width: Width, value: u64) -> Action {
    Action::Write { at, width, value }
}

fn r(at: u16, width: Width) -> Action {
    Action::Read { at, width }
}

fn w8(at: u16, value: u64) -> Action {
    w(at, Width::B1, value)
}

fn mem(addr: u32, bytes: &[u8]) -> Action {
    Action::Memory {
        addr,
        bytes: bytes.to_vec(),
    }
}

fn req(queue: u8, bufs: &[(u32, u16, bool)]) -> Action {
    Action::Request {
        queue,
        bufs: bufs
            .iter()
            .map(|&(addr, len, write)| BufSpec { addr, len, write })
            .collect(),
        notify: true,
    }
}

fn setup(features: u64) -> Action {
    Action::Setup { features, size: 16 }
}

/// A virtio-blk request header for `kind` at `sector`.
fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// The seeds of `target`, as (name, actions).
pub fn seeds(target: Target) -> Vec<(&'static str, Vec<Action>)> {
    use Width::*;
    match target {
        Target::Uart => vec![
            (
                "init-and-echo",
                vec![
                    w8(3, 0x80),
                    w8(0, 1),
                    w8(1, 0),
                    w8(3, 3),
                    w8(2, 7),
                    w8(1, 1),
                    w8(4, 0x0b),
                    w8(0, u64::from(b'A')),
                    r(5, B1),
                    Action::Host(HostOp::Input(b"hi".to_vec())),
                    r(5, B1),
                    r(0, B1),
                    r(2, B1),
                    w8(4, 0x10),
                    w8(0, u64::from(b'x')),
                    r(0, B1),
                ],
            ),
            (
                "scratch-and-msr",
                vec![w8(7, 0x5a), r(7, B1), r(6, B1), r(5, B4)],
            ),
        ],
        Target::DebugExit => vec![
            ("exit-0", vec![w(0, B4, 0)]),
            ("byte-and-read", vec![w8(0, 3), r(0, B1), r(2, B2)]),
        ],
        Target::Pic => vec![(
            "init-mask-ack-eoi",
            vec![
                w8(0, 0x11),
                w8(1, 0x20),
                w8(1, 4),
                w8(1, 1),
                w8(2, 0x11),
                w8(3, 0x28),
                w8(3, 2),
                w8(3, 1),
                w8(1, 0xfe),
                w8(3, 0xff),
                w8(4, 0x20),
                r(4, B1),
                Action::Clock(1000),
                Action::Ack,
                w8(0, 0x0b),
                r(0, B1),
                w8(0, 0x20),
                w8(0, 0x0a),
                r(0, B1),
                r(1, B1),
            ],
        )],
        Target::Pit => vec![
            (
                "channel0-rate",
                vec![
                    w8(3, 0x34),
                    w8(0, 0xa9),
                    w8(0, 0x04),
                    Action::Clock(500),
                    w8(3, 0x00),
                    r(0, B1),
                    r(0, B1),
                    Action::Clock(2000),
                    w8(3, 0xe2),
                    r(0, B1),
                ],
            ),
            (
                "channel2-oneshot",
                vec![
                    w8(4, 1),
                    w8(3, 0xb0),
                    w8(2, 0xff),
                    w8(2, 0xff),
                    r(4, B1),
                    Action::Clock(60000),
                    r(4, B1),
                ],
            ),
        ],
        Target::Rtc => vec![(
            "read-time-periodic",
            vec![
                w8(0, 0x0a),
                r(1, B1),
                w8(0, 0x00),
                r(1, B1),
                w8(0, 0x04),
                r(1, B1),
                w8(0, 0x0b),
                w8(1, 0x46),
                w8(0, 0x0a),
                w8(1, 0x26),
                Action::Clock(5000),
                w8(0, 0x0c),
                r(1, B1),
                w8(0, 0x32),
                r(1, B1),
            ],
        )],
        Target::VirtioMmio => vec![
            (
                "probe-and-request",
                vec![
                    r(0x000, B4),
                    r(0x004, B4),
                    r(0x008, B4),
                    w(0x014, B4, 1),
                    r(0x010, B4),
                    setup(0),
                    req(0, &[(0x10000, 64, true)]),
                    r(0x060, B4),
                    Action::Ack,
                    w(0x070, B4, 0),
                ],
            ),
            (
                "protocol-violations",
                vec![
                    w(0x070, B4, 4),
                    r(0x070, B2),
                    w(0x070, B4, 0),
                    setup(1 << 40),
                    w(0x038, B4, 3),
                    w(0x020, B4, 0),
                ],
            ),
            (
                "hostile-chain",
                vec![
                    setup(0),
                    // A descriptor that points at itself.
                    mem(0x1000, &[0, 0, 1, 0, 0, 0, 0, 0, 16, 0, 0, 0, 3, 0, 0, 0]),
                    mem(0x2000, &[0, 0, 1, 0, 0, 0]),
                    w(0x050, B4, 0),
                    r(0x070, B4),
                ],
            ),
        ],
        Target::VirtioBlk => {
            let mut write = blk_header(1, 2);
            write.resize(16, 0);
            vec![
                (
                    "write-read-flush-id",
                    vec![
                        setup(1 << 9),
                        mem(0x10000, &blk_header(1, 2)),
                        mem(0x11000, &[0x5a; 512]),
                        req(
                            0,
                            &[
                                (0x10000, 16, false),
                                (0x11000, 512, false),
                                (0x12000, 1, true),
                            ],
                        ),
                        mem(0x10000, &blk_header(0, 2)),
                        req(
                            0,
                            &[
                                (0x10000, 16, false),
                                (0x13000, 512, true),
                                (0x12000, 1, true),
                            ],
                        ),
                        mem(0x10000, &blk_header(4, 0)),
                        req(0, &[(0x10000, 16, false), (0x12000, 1, true)]),
                        mem(0x10000, &blk_header(8, 0)),
                        req(
                            0,
                            &[
                                (0x10000, 16, false),
                                (0x13000, 20, true),
                                (0x12000, 1, true),
                            ],
                        ),
                        Action::Ack,
                    ],
                ),
                (
                    "discard-and-errors",
                    vec![
                        setup(1 << 13),
                        mem(0x10000, &blk_header(11, 0)),
                        mem(0x11000, &[0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0]),
                        req(
                            0,
                            &[
                                (0x10000, 16, false),
                                (0x11000, 16, false),
                                (0x12000, 1, true),
                            ],
                        ),
                        mem(0x10000, &blk_header(0, 1 << 40)),
                        req(
                            0,
                            &[
                                (0x10000, 16, false),
                                (0x13000, 512, true),
                                (0x12000, 1, true),
                            ],
                        ),
                        req(0, &[(0x10000, 8, false)]),
                        Action::Host(HostOp::DiskWrite {
                            offset: 0,
                            bytes: write,
                        }),
                    ],
                ),
            ]
        }
        Target::VirtioNet => {
            let mut tx = vec![0u8; 12];
            tx.extend_from_slice(&[0xff; 6]);
            tx.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
            tx.extend_from_slice(b"seed frame");
            vec![(
                "both-directions",
                vec![
                    setup((1 << 5) | (1 << 16)),
                    r(0x100, B4),
                    r(0x106, B2),
                    req(0, &[(0x20000, 1526, true)]),
                    req(0, &[(0x21000, 64, true)]),
                    Action::Host(HostOp::Input(vec![0xab; 60])),
                    Action::Host(HostOp::Input(vec![0xcd; 200])),
                    mem(0x10000, &tx),
                    req(1, &[(0x10000, 40, false)]),
                    Action::Host(HostOp::TakeOutput),
                    Action::Ack,
                ],
            )]
        }
        Target::VirtioConsole => vec![(
            "both-directions",
            vec![
                setup(0),
                mem(0x10000, b"hello console"),
                req(1, &[(0x10000, 13, false)]),
                Action::Host(HostOp::TakeOutput),
                req(0, &[(0x11000, 4, true)]),
                Action::Host(HostOp::Input(b"typed".to_vec())),
                req(0, &[(0x12000, 8, true)]),
                Action::Ack,
            ],
        )],
        Target::Ucall => {
            use crate::ucall::{UCALL_MAGIC, UCALL_STRUCT_SIZE, UCALL_VERSION};
            let ucall = |cmd: u16, args: &[u64], msg: &str| {
                let mut b = vec![0u8; UCALL_STRUCT_SIZE];
                b[0..4].copy_from_slice(&UCALL_MAGIC.to_le_bytes());
                b[4..6].copy_from_slice(&UCALL_VERSION.to_le_bytes());
                b[6..8].copy_from_slice(&cmd.to_le_bytes());
                let n = u32::try_from(args.len()).unwrap_or(0);
                b[8..12].copy_from_slice(&n.to_le_bytes());
                for (i, a) in args.iter().enumerate() {
                    b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
                }
                b[64..64 + msg.len()].copy_from_slice(msg.as_bytes());
                b
            };
            let at = u32::try_from(super::UCALL_STRUCT_ADDR).unwrap_or(0);
            vec![(
                "print-sync-assert",
                vec![
                    mem(at, &ucall(3, &[], "hello")),
                    w(0, B4, 3),
                    mem(at, &ucall(4, &[7], "")),
                    w(0, B4, 4),
                    mem(at, &ucall(2, &[1, 2], "x == y")),
                    w(0, B4, 2),
                    w(0, B4, 99),
                ],
            )]
        }
        Target::VirtioRng => vec![(
            "read",
            vec![
                setup(0),
                req(0, &[(0x10000, 64, true)]),
                req(0, &[(0x10000, 8, true), (0x11000, 8, true)]),
                Action::Ack,
            ],
        )],
    }
}
