//! The small fixed tables: RSDP, XSDT and FACS.

use acpi_tables::facs::FACS;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Length of a revision-2 RSDP.
pub const RSDP_LEN: usize = 36;

/// The RSDP (revision 2) pointing at the XSDT.
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    bytes(&Rsdp::new(OEM_ID, xsdt_addr))
}

/// The XSDT listing `entries` (table addresses).
pub fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &e in entries {
        xsdt.add_entry(e);
    }
    bytes(&xsdt)
}

/// An empty FACS (no waking vector: lunavm has no sleep states).
pub fn facs() -> Vec<u8> {
    bytes(&FACS::new())
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsdp_has_its_fixed_length() {
        let r = rsdp(0xe1234);
        assert_eq!(r.len(), RSDP_LEN);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(facs().len(), 64);
    }
}
