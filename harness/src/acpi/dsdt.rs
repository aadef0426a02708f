//! The DSDT: under `\_SB`, one `LNRO0005` device per virtio-mmio slot (the
//! ACPI ID Linux's `virtio_mmio` driver matches) and COM1 as `PNP0501`.
//!
//! Each virtio device's `_CRS` has its register window (`Memory32Fixed`) and
//! its line as an extended `Interrupt` descriptor, edge-triggered and active
//! high: the device pulses the line, as Firecracker's do.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use super::{low32, AcpiConfig, VirtioSlot, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::devices::{SERIAL_PORT, SERIAL_PORT_LEN};

/// COM1's interrupt line on the PC.
pub const COM1_IRQ: u8 = 4;
/// `_HID` of a virtio-mmio device.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// `_HID` of a 16550A-compatible UART (an EISA ID).
pub const UART_HID: &str = "PNP0501";
/// DSDT revision: 2 and above make AML integers 64 bits wide.
pub const DSDT_REVISION: u8 = 2;

/// The DSDT for `config` (slots already validated to sit below 4 GiB).
pub fn build(config: &AcpiConfig) -> Vec<u8> {
    let mut devices = Vec::new();
    for (index, slot) in config.virtio.iter().enumerate() {
        virtio_device(index, slot).to_aml_bytes(&mut devices);
    }
    if config.com1 {
        com1(&mut devices);
    }
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    if !devices.is_empty() {
        dsdt.append_slice(&Scope::raw(Path::new("\\_SB_"), devices));
    }
    dsdt.as_slice().to_vec()
}

/// The AML name of slot `index`: `V000`, `V001`, ...
pub fn virtio_name(index: usize) -> String {
    format!("V{:03X}", index & 0xfff)
}

/// One virtio-mmio slot as an AML device.
fn virtio_device(index: usize, slot: &VirtioSlot) -> VirtioAml {
    VirtioAml {
        name: virtio_name(index),
        uid: u32::try_from(index).unwrap_or(u32::MAX),
        mem: Memory32Fixed::new(true, low32(slot.base), low32(slot.size)),
        irq: Interrupt::new(true, true, false, false, u32::from(slot.irq)),
    }
}

/// The parts of a virtio device, owned so the AML tree can borrow them.
struct VirtioAml {
    name: String,
    uid: u32,
    mem: Memory32Fixed,
    irq: Interrupt,
}

impl Aml for VirtioAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let hid = Name::new(Path::new("_HID"), &VIRTIO_MMIO_HID);
        let uid = Name::new(Path::new("_UID"), &self.uid);
        let crs_template = ResourceTemplate::new(vec![&self.mem, &self.irq]);
        let crs = Name::new(Path::new("_CRS"), &crs_template);
        Device::new(Path::new(&self.name), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
    }
}

/// COM1: `PNP0501` decoding [`SERIAL_PORT`] with [`COM1_IRQ`].
fn com1(sink: &mut Vec<u8>) {
    let len = u8::try_from(SERIAL_PORT_LEN).unwrap_or(u8::MAX);
    let io = IO::new(SERIAL_PORT, SERIAL_PORT, 0, len);
    let irq = Interrupt::new(true, true, false, false, u32::from(COM1_IRQ));
    let crs_template = ResourceTemplate::new(vec![&io, &irq]);
    let hid = Name::new(Path::new("_HID"), &EISAName::new(UART_HID));
    let uid = Name::new(Path::new("_UID"), &0u8);
    let crs = Name::new(Path::new("_CRS"), &crs_template);
    Device::new(Path::new("COM1"), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn names_each_slot_and_com1() {
        let config = AcpiConfig {
            cpus: 1,
            ioapic: false,
            pit_gsi: 0,
            virtio: (0..3).filter_map(VirtioSlot::from_layout).collect(),
            com1: true,
        };
        let b = build(&config);
        assert_eq!(&b[0..4], b"DSDT");
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        for name in ["V000", "V001", "V002", "COM1", "LNRO0005"] {
            assert!(contains(&b, name.as_bytes()), "{name}");
        }
        assert!(!contains(&b, b"V003"));
    }

    #[test]
    fn empty_config_is_a_bare_header() {
        let config = AcpiConfig {
            cpus: 1,
            ioapic: true,
            pit_gsi: 0,
            virtio: Vec::new(),
            com1: false,
        };
        assert_eq!(build(&config).len(), 36);
    }

    #[test]
    fn names_are_four_characters() {
        assert_eq!(virtio_name(0), "V000");
        assert_eq!(virtio_name(10), "V00A");
    }
}
