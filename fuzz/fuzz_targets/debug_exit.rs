//! Fuzz target `debug_exit`: the shared device-fuzz harness (lunavm::fuzz::device)
//! over Target::DebugExit. Seeds: corpora/debug_exit/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunavm::fuzz::device::{run, DecodeError, OracleError, Target};

fuzz_target!(|data: &[u8]| {
    match run(Target::DebugExit, data) {
        // Inputs of another format version are not interesting.
        Ok(()) | Err(OracleError::Decode(DecodeError::Version(_) | DecodeError::Empty)) => {}
        Err(e) => panic!("debug_exit: {e}"),
    }
});
