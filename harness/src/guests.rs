//! The built-in guests, compiled from harness/guests/ by build.rs and embedded.

/// A built-in guest.
#[derive(Clone, Copy, Debug)]
pub struct Guest {
    /// Its name (`--guest NAME`).
    pub name: &'static str,
    /// Its boot protocol ("pvh" or "multiboot").
    pub protocol: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// The ELF image.
    pub elf: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Every built-in guest.
pub fn all() -> &'static [Guest] {
    GUESTS
}

/// The guest named `name`.
pub fn find(name: &str) -> Option<&'static Guest> {
    GUESTS.iter().find(|g| g.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_an_elf_with_a_description() {
        assert!(!all().is_empty());
        for g in all() {
            assert!(g.elf.starts_with(b"\x7fELF"), "{}", g.name);
            assert!(!g.description.is_empty(), "{}", g.name);
        }
        assert!(find("hello").is_some());
    }
}
