//! The MADT ("APIC"), written only with the in-kernel irqchip: one local APIC
//! per vCPU, the IOAPIC, and an ISA IRQ 0 override when the VMM routes the PIT
//! to an IOAPIC pin other than 0.
//!
//! acpi_tables 0.2 builds the local APIC and IOAPIC structures but has no
//! interrupt source override and no setter for the MADT flags, so the table
//! is assembled with its generic [`Sdt`] builder, which keeps the length and
//! checksum right.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{low32, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::layout;
use crate::machine::platform::PIT_IRQ;

/// MADT revision (ACPI 6.2 and later use 5).
pub const MADT_REVISION: u8 = 5;
/// MADT flag: the PC-AT dual 8259 also exists (KVM_CREATE_IRQCHIP makes one).
pub const PCAT_COMPAT: u32 = 1;
/// Pins of KVM's IOAPIC (`KVM_IOAPIC_NUM_PINS`).
pub const IOAPIC_PINS: u8 = 24;
/// The IOAPIC pin the PIT (KVM GSI 0) reaches with KVM's default GSI routing
/// (`default_routing` in KVM's `irq_comm.c`: KVM GSI *n* → IOAPIC pin *n*),
/// which lunavm keeps: ISA IRQ 0 is identity-mapped and needs no override.
pub const PIT_GSI_KVM_DEFAULT: u8 = 0;
/// The IOAPIC pin the PIT reaches with QEMU-style routing (KVM GSI 0 → IOAPIC
/// pin 2), the PC convention: the MADT then says so with an override.
pub const PIT_GSI_PC: u8 = 2;
/// Offset of the first interrupt controller structure.
pub const MADT_HEADER_LEN: usize = 44;
/// Interrupt controller structure types used here (ACPI 6.5, MADT).
pub mod kind {
    /// Processor Local APIC.
    pub const LOCAL_APIC: u8 = 0;
    /// I/O APIC.
    pub const IO_APIC: u8 = 1;
    /// Interrupt Source Override.
    pub const INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
}

/// An Interrupt Source Override structure (ACPI 6.5, MADT): ISA IRQ `source`
/// arrives on GSI `gsi`. `flags` 0 means polarity and trigger conform to the
/// ISA bus (active high, edge).
struct InterruptSourceOverride {
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(kind::INTERRUPT_SOURCE_OVERRIDE);
        sink.byte(10); // length
        sink.byte(0); // bus: ISA
        sink.byte(self.source);
        sink.dword(self.gsi);
        sink.word(self.flags);
    }
}

/// The MADT for `cpus` vCPUs (APIC ID and ACPI processor UID = vCPU index)
/// with the PIT on IOAPIC pin `pit_gsi` (an override when it is not 0).
pub fn build(cpus: u8, pit_gsi: u8) -> Vec<u8> {
    let header_len = u32::try_from(MADT_HEADER_LEN).unwrap_or(u32::MAX);
    let mut madt = Sdt::new(
        *b"APIC",
        header_len,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, low32(layout::LAPIC_ADDR));
    madt.write_u32(40, PCAT_COMPAT);
    for cpu in 0..cpus {
        append(
            &mut madt,
            &ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled),
        );
    }
    append(&mut madt, &IoApic::new(0, low32(layout::IOAPIC_ADDR), 0));
    if pit_gsi != PIT_IRQ {
        append(
            &mut madt,
            &InterruptSourceOverride {
                source: PIT_IRQ,
                gsi: u32::from(pit_gsi),
                flags: 0,
            },
        );
    }
    madt.as_slice().to_vec()
}

fn append(sdt: &mut Sdt, structure: &dyn Aml) {
    let mut bytes = Vec::new();
    structure.to_aml_bytes(&mut bytes);
    sdt.append_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_follow_the_header() {
        assert_eq!(
            build(2, PIT_GSI_KVM_DEFAULT).len(),
            MADT_HEADER_LEN + 2 * 8 + 12
        );
        let b = build(2, PIT_GSI_PC);
        assert_eq!(&b[0..4], b"APIC");
        let len = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, b.len());
        assert_eq!(len, MADT_HEADER_LEN + 2 * 8 + 12 + 10);
        assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0);
        assert_eq!(b[MADT_HEADER_LEN], kind::LOCAL_APIC);
        assert_eq!(b[MADT_HEADER_LEN + 16], kind::IO_APIC);
        assert_eq!(b[MADT_HEADER_LEN + 28], kind::INTERRUPT_SOURCE_OVERRIDE);
    }
}
