//! The FADT ("FACP"): a full, PC-compatible one in both interrupt-controller
//! modes (see the module docs of [`crate::acpi`] for why not hardware-reduced).

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::Aml;

use super::{pm, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::rtc;

/// The SCI's interrupt line (the PC convention, and the line
/// [`crate::layout::VIRTIO_MMIO_IRQS`] leaves free for it).
pub const SCI_IRQ: u8 = 9;

/// `IAPC_BOOT_ARCH` bits (ACPI 6.5, table "IA-PC Boot Architecture Flags").
pub mod boot_arch {
    /// User-visible devices on the ISA/LPC bus (COM1, PIC, PIT, RTC).
    pub const LEGACY_DEVICES: u16 = 1 << 0;
    /// An 8042 keyboard controller exists (lunavm has none: left clear).
    pub const I8042: u16 = 1 << 1;
    /// Do not probe for VGA.
    pub const VGA_NOT_PRESENT: u16 = 1 << 2;
    /// Do not enable MSI.
    pub const MSI_NOT_PRESENT: u16 = 1 << 3;
    /// Do not enable PCIe ASPM.
    pub const PCIE_ASPM_CONTROLS: u16 = 1 << 4;
    /// No CMOS RTC (lunavm has one: left clear).
    pub const CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
}

/// What `IAPC_BOOT_ARCH` says in both modes.
pub const BOOT_ARCH: u16 = boot_arch::LEGACY_DEVICES
    | boot_arch::VGA_NOT_PRESENT
    | boot_arch::MSI_NOT_PRESENT
    | boot_arch::PCIE_ASPM_CONTROLS;

/// `P_LVL2_LAT` above 100 µs means "no C2" (ACPI 6.5, FADT field table).
const NO_C2_LATENCY: u16 = 101;
/// `P_LVL3_LAT` above 1000 µs means "no C3".
const NO_C3_LATENCY: u16 = 1001;

/// The FADT: SCI on [`SCI_IRQ`], no `SMI_CMD`, the [`pm`] register blocks,
/// the FACS and the DSDT (both in the 64-bit fields), no PM timer or GPE
/// blocks, C2/C3 unsupported.
pub fn build(dsdt_addr: u64, facs_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .firmware_ctrl_64(facs_addr)
        // WBINVD works; buttons, if any ever exist, are control-method
        // devices (no fixed button events); the RTC has no wake status in PM1.
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::FixRtc);
    f.iapc_boot_arch = BOOT_ARCH.into();
    f.century = rtc::REG_CENTURY;
    f.sci_int = u16::from(SCI_IRQ).into();
    // SMI_CMD stays 0: always in ACPI mode, no transition.
    f.pm1a_evt_blk = u32::from(pm::PM1_EVT_PORT).into();
    f.pm1_evt_len = pm::PM1_EVT_LEN;
    f.pm1a_cnt_blk = u32::from(pm::PM1_CNT_PORT).into();
    f.pm1_cnt_len = pm::PM1_CNT_LEN;
    f.p_lvl2_lat = NO_C2_LATENCY.into();
    f.p_lvl3_lat = NO_C3_LATENCY.into();
    let mut bytes = Vec::new();
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn full_fadt_points_at_the_pm_blocks() {
        let b = build(0xe1000, 0xe0040);
        assert_eq!(&b[0..4], b"FACP");
        assert_eq!(u32_at(&b, 112) & Flags::HwReducedAcpi as u32, 0);
        assert_eq!(u32_at(&b, 56), u32::from(pm::PM1_EVT_PORT));
        assert_eq!(b[88], 4);
        assert_eq!(u32_at(&b, 64), u32::from(pm::PM1_CNT_PORT));
        assert_eq!(b[89], 2);
        assert_eq!(u32_at(&b, 48), 0, "SMI_CMD");
        assert_eq!(b[46], SCI_IRQ);
        assert_eq!(u64::from_le_bytes(b[132..140].try_into().unwrap()), 0xe0040);
        assert_eq!(u64::from_le_bytes(b[140..148].try_into().unwrap()), 0xe1000);
    }
}
