//! Fuzz target `virtio_net`: the shared device-fuzz harness (lunavm::fuzz::device)
//! over Target::VirtioNet. Seeds: corpora/virtio_net/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunavm::fuzz::device::{run, DecodeError, OracleError, Target};

fuzz_target!(|data: &[u8]| {
    match run(Target::VirtioNet, data) {
        // Inputs of another format version are not interesting.
        Ok(()) | Err(OracleError::Decode(DecodeError::Version(_) | DecodeError::Empty)) => {}
        Err(e) => panic!("virtio_net: {e}"),
    }
});
