//! Fuzz target `virtio_rng`: the shared device-fuzz harness (lunavm::fuzz::device)
//! over Target::VirtioRng. Seeds: corpora/virtio_rng/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunavm::fuzz::device::{run, DecodeError, OracleError, Target};

fuzz_target!(|data: &[u8]| {
    match run(Target::VirtioRng, data) {
        // Inputs of another format version are not interesting.
        Ok(()) | Err(OracleError::Decode(DecodeError::Version(_) | DecodeError::Empty)) => {}
        Err(e) => panic!("virtio_rng: {e}"),
    }
});
