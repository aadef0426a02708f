//! Fuzzing support. [`device`] is the shared device-fuzz harness: libFuzzer
//! targets in `fuzz/` and the corpus replay in the test suite both run
//! device models through it, with no guest.

pub mod device;
pub mod elfmap;
pub mod guarded;
pub mod scenario;
