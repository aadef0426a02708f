//! The inverse of [`super::decode`] for building seed inputs: the byte layout
//! `arbitrary`'s derive reads (integers little-endian, a bool as one byte,
//! an enum variant as a `u32` scaled to the variant count, a `Vec` as
//! "1, element" pairs ended by 0). The round-trip test pins the two together.

use super::{Action, BufSpec, HostOp, Width, FORMAT_VERSION};

/// Bytes that decode to `actions`.
pub fn encode(actions: &[Action]) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    for a in actions {
        action(&mut out, a);
    }
    out
}

/// The u32 whose scaled value picks variant `index` of `count`.
fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let x = (index << 32).div_ceil(count);
    out.extend_from_slice(&u32::try_from(x).unwrap_or(u32::MAX).to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    for &x in b {
        out.push(1);
        out.push(x);
    }
    out.push(0);
}

fn width(out: &mut Vec<u8>, w: Width) {
    let i = match w {
        Width::B1 => 0,
        Width::B2 => 1,
        Width::B4 => 2,
        Width::B8 => 3,
    };
    variant(out, i, 4);
}

fn buf(out: &mut Vec<u8>, b: &BufSpec) {
    out.extend_from_slice(&b.addr.to_le_bytes());
    out.extend_from_slice(&b.len.to_le_bytes());
    out.push(u8::from(b.write));
}

fn action(out: &mut Vec<u8>, a: &Action) {
    const N: u64 = 8;
    match a {
        Action::Read { at, width: w } => {
            variant(out, 0, N);
            out.extend_from_slice(&at.to_le_bytes());
            width(out, *w);
        }
        Action::Write {
            at,
            width: w,
            value,
        } => {
            variant(out, 1, N);
            out.extend_from_slice(&at.to_le_bytes());
            width(out, *w);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Action::Memory { addr, bytes: b } => {
            variant(out, 2, N);
            out.extend_from_slice(&addr.to_le_bytes());
            bytes(out, b);
        }
        Action::Setup { features, size } => {
            variant(out, 3, N);
            out.extend_from_slice(&features.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
        }
        Action::Request {
            queue,
            bufs,
            notify,
        } => {
            variant(out, 4, N);
            out.push(*queue);
            for b in bufs {
                out.push(1);
                buf(out, b);
            }
            out.push(0);
            out.push(u8::from(*notify));
        }
        Action::Host(op) => {
            variant(out, 5, N);
            match op {
                HostOp::Input(b) => {
                    variant(out, 0, 3);
                    bytes(out, b);
                }
                HostOp::TakeOutput => variant(out, 1, 3),
                HostOp::DiskWrite { offset, bytes: b } => {
                    variant(out, 2, 3);
                    out.extend_from_slice(&offset.to_le_bytes());
                    bytes(out, b);
                }
            }
        }
        Action::Ack => variant(out, 6, N),
        Action::Clock(us) => {
            variant(out, 7, N);
            out.extend_from_slice(&us.to_le_bytes());
        }
    }
}
