//! The guest ELF a scenario names (`fuzz_config.elf`): its function symbols
//! for crash sites and symbolised reports, and its blocks and comparison
//! sites (see [`crate::fuzz::elfmap`]) for breakpoint coverage.

use crate::fuzz::elfmap::{CmpKind, ElfMap};
use crate::guests;

/// Errors of loading the guest ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// No built-in guest of that name.
    #[error("fuzz_config.elf: no built-in guest named '{0}'")]
    NoGuest(String),
    /// The file could not be read.
    #[error("fuzz_config.elf: cannot read {0}")]
    Read(String, #[source] std::io::Error),
    /// Not an ELF file lunavm can map.
    #[error("fuzz_config.elf: {0}: {1}")]
    Parse(String, String),
    /// A symbol the scenario named is not in it.
    #[error("{0} has no function '{1}'")]
    NoSymbol(String, String),
}

/// A guest ELF, analysed.
pub struct GuestElf {
    /// Where it came from (`guest:NAME` or a path).
    pub name: String,
    /// Its functions, blocks and comparison sites.
    pub map: ElfMap,
}

impl GuestElf {
    /// Loads `spec`: `guest:NAME` (built-in) or a path.
    pub fn load(spec: &str) -> Result<GuestElf, ElfError> {
        let bytes = match spec.strip_prefix("guest:") {
            Some(name) => guests::find(name)
                .ok_or_else(|| ElfError::NoGuest(name.into()))?
                .elf
                .to_vec(),
            None => std::fs::read(spec).map_err(|e| ElfError::Read(spec.into(), e))?,
        };
        let map = ElfMap::parse(&bytes).map_err(|e| ElfError::Parse(spec.into(), e.to_string()))?;
        Ok(GuestElf {
            name: spec.into(),
            map,
        })
    }

    /// The address of function `name`.
    pub fn lookup(&self, name: &str) -> Result<u64, ElfError> {
        self.map
            .function(name)
            .map(|f| f.addr)
            .ok_or_else(|| ElfError::NoSymbol(self.name.clone(), name.into()))
    }

    /// `name+0xoff (0xaddr)` for `addr`, or the hex address outside every function.
    pub fn symbolize(&self, addr: u64) -> String {
        match self.map.function_at(addr) {
            Some(f) => format!("{}+{:#x} ({addr:#x})", f.name, addr - f.addr),
            None => format!("{addr:#x}"),
        }
    }

    /// `name+0xoff (0xaddr)` for a return address (looked up at `addr - 1`).
    pub fn symbolize_return(&self, addr: u64) -> String {
        match self.map.function_at(addr.wrapping_sub(1)) {
            Some(f) => format!("{}+{:#x} ({addr:#x})", f.name, addr - f.addr),
            None => format!("{addr:#x}"),
        }
    }

    /// The addresses of the `cmp` sites lunavm executes at a breakpoint
    /// (`sub` sites write a register and are left to the guest).
    pub fn cmp_addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.map
            .cmp_sites()
            .iter()
            .filter(|c| c.kind == CmpKind::Cmp)
            .map(|c| c.addr)
    }
}
