//! The harness itself: encoding round-trips, versions are checked, the
//! oracles pass on the seeds and catch a device that forgets state.

use super::encode::encode;
use super::seeds::seeds;
use super::*;

#[test]
fn seeds_round_trip_through_arbitrary() {
    for (target, name) in Target::ALL {
        for (seed, actions) in seeds(target) {
            let bytes = encode(&actions);
            assert_eq!(decode(&bytes).unwrap(), actions, "{name}/{seed}");
        }
    }
}

#[test]
fn every_seed_passes_the_oracles() {
    for (target, name) in Target::ALL {
        for (seed, actions) in seeds(target) {
            check(target, &actions).unwrap_or_else(|e| panic!("{name}/{seed}: {e}"));
        }
    }
}

#[test]
fn other_versions_and_empty_inputs_are_refused() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        decode(&[FORMAT_VERSION + 1, 0]),
        Err(DecodeError::Version(FORMAT_VERSION + 1))
    );
    assert_eq!(decode(&[FORMAT_VERSION]), Ok(Vec::new()));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A fixed pseudo-random stream of inputs through every target.
    let mut x = 0x1234_5678_9abc_def0u64;
    for (target, _) in Target::ALL {
        for _ in 0..40 {
            let mut data = vec![FORMAT_VERSION];
            for _ in 0..300 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.push(x.to_le_bytes()[3]);
            }
            // Decoding always succeeds after the version byte; the oracles
            // must hold for every input.
            let actions = decode(&data).unwrap();
            check(target, &actions).unwrap_or_else(|e| panic!("{target:?}: {e}\n{actions:#?}"));
        }
    }
}

/// The format is pinned: a change to the action type changes this decoding,
/// and then FORMAT_VERSION must go up (and the corpora be rebuilt).
#[test]
fn the_input_format_is_pinned() {
    let data: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(37)).collect();
    let mut input = vec![FORMAT_VERSION];
    input.extend_from_slice(&data);
    let actions = decode(&input).unwrap();
    insta::assert_debug_snapshot!("device_fuzz_format_v1", actions);
}
