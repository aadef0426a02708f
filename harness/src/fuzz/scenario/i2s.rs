//! Input-to-state replacement (Redqueen's idea), as a libFuzzer custom
//! mutator: the operands of the comparisons an input made are searched for
//! in the input, and one occurrence is replaced by the value it was
//! compared with (or one off it). A magic value or a checksum the guest
//! compares with is then one mutation away, where libFuzzer's own table of
//! recent compares, shared by every input, makes it a lucky draw.

use std::collections::HashMap;

use crate::machine::fuzzbp::CmpEvent;

/// Comparison logs kept (by input hash) before the cache starts over.
const MAX_LOGS: usize = 8192;

/// The comparison logs of recently executed inputs.
#[derive(Debug, Default)]
pub struct CmpLogs {
    logs: HashMap<u64, Vec<(u64, u64, u8)>>,
}

impl CmpLogs {
    /// Records the comparisons `input` made (operand pairs that differ).
    pub fn record(&mut self, input: &[u8], cmps: &[CmpEvent]) {
        if self.logs.len() >= MAX_LOGS {
            self.logs.clear();
        }
        let mut pairs: Vec<(u64, u64, u8)> = cmps
            .iter()
            .filter(|c| c.a != c.b)
            .map(|c| (c.a, c.b, c.size))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        self.logs.insert(super::verdict::fnv1a64(input), pairs);
    }

    /// The logged comparisons of `input`, if it ran recently.
    pub fn get(&self, input: &[u8]) -> Option<&[(u64, u64, u8)]> {
        self.logs
            .get(&super::verdict::fnv1a64(input))
            .map(Vec::as_slice)
    }
}

/// A small deterministic generator (xorshift64*) seeded by libFuzzer.
pub struct Rng(u64);

impl Rng {
    /// From libFuzzer's seed.
    pub fn new(seed: u32) -> Rng {
        Rng(u64::from(seed) | 0x9e37_79b9_0000_0000)
    }

    /// The next value below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(v >> 32).unwrap_or(0) % n.max(1)
    }
}

/// Replaces, in `data`, one occurrence of a compared operand (little- or
/// big-endian, at its width) by the value it was compared with — three
/// times in four exactly, else one off it. The occurrence is drawn among
/// every (pair, direction, byte order, position) that matches, so an input
/// holding one compared field gets it replaced at once. Returns whether it
/// changed anything.
pub fn replace(data: &mut [u8], cmps: &[(u64, u64, u8)], rng: &mut Rng) -> bool {
    let mut found: Vec<(usize, Vec<u8>)> = Vec::new();
    for &(a, b, size) in cmps {
        let w = usize::from(size.clamp(1, 8));
        if w > data.len() {
            continue;
        }
        for (from, to) in [(a, b), (b, a)] {
            for big in [false, true] {
                let bytes = |v: u64| -> Vec<u8> {
                    let mut b = v.to_le_bytes()[..w].to_vec();
                    if big {
                        b.reverse();
                    }
                    b
                };
                let pat = bytes(from);
                if big && pat.iter().rev().eq(pat.iter()) {
                    continue; // a palindrome: the little-endian pass has it
                }
                for i in 0..=data.len() - w {
                    if data[i..i + w] == pat[..] {
                        found.push((i, bytes(to)));
                    }
                }
            }
        }
        if found.len() > 4096 {
            break;
        }
    }
    if found.is_empty() {
        return false;
    }
    let (at, mut rep) = found.swap_remove(rng.below(found.len()));
    if rng.below(4) == 0 {
        // One off, in the value's own byte order: bump the low byte.
        let low = if rep.len() > 1 && rng.below(2) == 1 {
            rep.len() - 1
        } else {
            0
        };
        rep[low] = if rng.below(2) == 0 {
            rep[low].wrapping_add(1)
        } else {
            rep[low].wrapping_sub(1)
        };
    }
    let w = rep.len();
    data[at..at + w].copy_from_slice(&rep);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compared_magic_replaces_the_input_bytes() {
        // The guest compared the input's first word ("XXXX") with "LUNA".
        let cmps = [(
            u64::from(u32::from_le_bytes(*b"XXXX")),
            u64::from(u32::from_le_bytes(*b"LUNA")),
            4,
        )];
        let mut hits = 0;
        for seed in 0..64 {
            let mut data = b"XXXXabcd".to_vec();
            let mut rng = Rng::new(seed);
            if replace(&mut data, &cmps, &mut rng) && &data[..4] == b"LUNA" {
                hits += 1;
            }
            assert_eq!(&data[4..], b"abcd", "only the operand's bytes change");
        }
        assert!(
            hits > 32,
            "the exact value comes up most of the time: {hits}/64"
        );
    }

    #[test]
    fn logs_are_found_by_input_and_drop_equal_pairs() {
        let mut logs = CmpLogs::default();
        let ev = |a, b| CmpEvent {
            pc: 1,
            a,
            b,
            size: 4,
            from_guest: false,
        };
        logs.record(b"in", &[ev(1, 2), ev(3, 3), ev(1, 2)]);
        assert_eq!(logs.get(b"in"), Some(&[(1, 2, 4)][..]));
        assert_eq!(logs.get(b"other"), None);
    }
}
