//! One linear pass over a function's bytes: basic-block leaders and
//! comparison sites.

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, OpKind};

use super::cmp::CmpSite;

/// Buffers reused from one function to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// Addresses of the instructions decoded, ascending.
    boundaries: Vec<u64>,
    /// Leader candidates.
    leaders: Vec<u64>,
}

/// Decodes the function at `start` (bytes `code`) with `bitness` 32 or 64
/// and appends its block leaders to `blocks` and its comparison sites to
/// `cmps`.
///
/// Leaders: the function start, every direct branch target inside the
/// function, and the instruction after a conditional branch, a jump, a
/// return, an exception or interrupt instruction (`ud2`, `int3`), undecodable
/// bytes and, with `split_at_calls`, a call. A leader that is not the start
/// of a decoded instruction (a jump into the middle of one, or past the
/// end) is dropped, so every leader is a safe breakpoint address.
pub(super) fn scan_function(
    bitness: u32,
    start: u64,
    code: &[u8],
    split_at_calls: bool,
    scratch: &mut Scratch,
    blocks: &mut Vec<u64>,
    cmps: &mut Vec<CmpSite>,
) {
    let Ok(mut decoder) = Decoder::try_with_ip(bitness, code, start, DecoderOptions::NONE) else {
        return;
    };
    let end = start.saturating_add(code.len() as u64);
    let inside = |a: u64| a >= start && a < end;
    scratch.boundaries.clear();
    scratch.leaders.clear();
    scratch.leaders.push(start);

    let mut instr = Instruction::default();
    let mut block_ended = false;
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            // Resynchronise one byte further: the decoder may have consumed
            // more than the undecodable byte.
            block_ended = true;
            let next = instr.ip().wrapping_add(1);
            let Some(pos) = usize::try_from(next.wrapping_sub(start)).ok() else {
                break;
            };
            if decoder.set_position(pos).is_err() {
                break;
            }
            decoder.set_ip(next);
            continue;
        }
        let ip = instr.ip();
        scratch.boundaries.push(ip);
        if block_ended {
            scratch.leaders.push(ip);
        }
        block_ended = match instr.flow_control() {
            FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch => {
                if matches!(
                    instr.op0_kind(),
                    OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
                ) && inside(instr.near_branch_target())
                {
                    scratch.leaders.push(instr.near_branch_target());
                }
                true
            }
            FlowControl::IndirectBranch
            | FlowControl::Return
            | FlowControl::Exception
            | FlowControl::Interrupt => true,
            FlowControl::Call | FlowControl::IndirectCall => split_at_calls,
            FlowControl::Next | FlowControl::XbeginXabortXend => false,
        };
        if let Some(site) = CmpSite::from_instruction(&instr) {
            cmps.push(site);
        }
    }
    // The instruction after the last one is past the end: never pushed.
    let boundaries = &scratch.boundaries;
    blocks.extend(
        scratch
            .leaders
            .iter()
            .copied()
            .filter(|a| boundaries.binary_search(a).is_ok()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::elfmap::cmp::Operand;

    /// ```text
    /// 1000: 83 ff 0a        cmp edi, 0xa
    /// 1003: 7f 06           jg 0x100b
    /// 1005: e8 00 00 00 00  call 0x100a
    /// 100a: c3              ret
    /// 100b: 89 f8           mov eax, edi
    /// 100d: eb f1           jmp 0x1000
    /// 100f: 75 f0           jne 0x1001 (the middle of the cmp)
    /// 1011: 06              (invalid in 64-bit mode)
    /// 1012: c3              ret
    /// ```
    const CODE: &[u8] = &[
        0x83, 0xff, 0x0a, 0x7f, 0x06, 0xe8, 0, 0, 0, 0, 0xc3, 0x89, 0xf8, 0xeb, 0xf1, 0x75, 0xf0,
        0x06, 0xc3,
    ];

    fn scan(code: &[u8], split_at_calls: bool) -> (Vec<u64>, Vec<CmpSite>) {
        let (mut blocks, mut cmps) = (Vec::new(), Vec::new());
        let mut scratch = Scratch::default();
        scan_function(
            64,
            0x1000,
            code,
            split_at_calls,
            &mut scratch,
            &mut blocks,
            &mut cmps,
        );
        blocks.sort_unstable();
        blocks.dedup();
        (blocks, cmps)
    }

    #[test]
    fn leaders_of_a_hand_assembled_function() {
        let (blocks, cmps) = scan(CODE, false);
        assert_eq!(blocks, [0x1000, 0x1005, 0x100b, 0x100f, 0x1012]);
        assert_eq!(cmps.len(), 1);
        assert_eq!((cmps[0].addr, cmps[0].width), (0x1000, 4));
        assert_eq!(cmps[0].rhs, Operand::Imm(10));

        let (blocks, _) = scan(CODE, true);
        assert_eq!(blocks, [0x1000, 0x1005, 0x100a, 0x100b, 0x100f, 0x1012]);
    }

    #[test]
    fn truncated_and_garbage_code_is_survived() {
        // Cut inside the call: it is undecodable, so no leader there.
        let (blocks, cmps) = scan(&CODE[..7], false);
        assert_eq!(blocks, [0x1000]);
        assert_eq!(cmps.len(), 1);
        // Nothing decodable at all: not even the start is a leader.
        let (blocks, cmps) = scan(&[0x06, 0x07, 0x27], false);
        assert!(blocks.is_empty() && cmps.is_empty());
        let (blocks, _) = scan(&[], false);
        assert!(blocks.is_empty());
    }

    #[test]
    fn bad_bitness_is_no_panic() {
        let (mut blocks, mut cmps) = (Vec::new(), Vec::new());
        scan_function(
            17,
            0,
            CODE,
            false,
            &mut Scratch::default(),
            &mut blocks,
            &mut cmps,
        );
        assert!(blocks.is_empty() && cmps.is_empty());
    }
}
