//! lunavm: a scriptable, deterministic KVM harness for testing, debugging and
//! fuzzing guest kernels and device models.
//!
//! The [`machine::Machine`] owns the VM, its vCPU, guest memory, the device
//! buses and the virtual clock; front ends (the CLI now, Lua scripts, gdb and
//! fuzzers later) drive it through [`machine::Machine::run`].

pub mod acpi;
pub mod boot;
pub mod clock;
pub mod devices;
pub mod emulate;
pub mod entropy;
pub mod exit_code;
pub mod fuzz;
pub mod gdb;
pub mod guests;
pub mod launch;
pub mod layout;
pub mod machine;
pub mod repeat;
pub mod report;
pub mod script;
pub mod snapshot;
pub mod symbols;
pub mod ucall;
pub mod units;
pub mod vm;
