//! Fuzz target `rtc`: the shared device-fuzz harness (lunavm::fuzz::device)
//! over Target::Rtc. Seeds: corpora/rtc/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunavm::fuzz::device::{run, DecodeError, OracleError, Target};

fuzz_target!(|data: &[u8]| {
    match run(Target::Rtc, data) {
        // Inputs of another format version are not interesting.
        Ok(()) | Err(OracleError::Decode(DecodeError::Version(_) | DecodeError::Empty)) => {}
        Err(e) => panic!("rtc: {e}"),
    }
});
