//! Snapshot fuzzing of guest code with Lua scenarios (`lunavm fuzz`): the
//! guest runs to a fuzz point once, lunavm snapshots it, and libFuzzer's
//! engine drives executions that restore the snapshot, inject an input and
//! run the guest to a verdict.

pub mod campaign;
pub mod command;
pub mod config;
pub mod elf;
pub mod engine;
pub mod i2s;
pub mod libfuzzer;
pub mod plot;
pub mod totest;
pub mod verdict;
