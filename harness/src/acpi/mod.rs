//! ACPI tables, so that unmodified distribution kernels whose `virtio_mmio`
//! driver is a module without `virtio_mmio.device=` entries (Debian's cloud
//! kernel) find the virtio-mmio devices, the way Firecracker's guests do: a
//! DSDT with one `LNRO0005` device per slot (the ACPI ID Linux's
//! `virtio_mmio` driver matches) and COM1 as `PNP0501`.
//!
//! [`build`] is pure: it lays out RSDP (revision 2), XSDT, FADT, MADT (with
//! the in-kernel irqchip), DSDT and FACS in the area at
//! [`layout::ACPI_TABLES_ADDR`] and returns their bytes and addresses.
//! [`write()`] copies them into guest memory; the RSDP comes first, on a
//! 16-byte boundary at the start of the area, so Linux's scan of
//! 0xE0000-0xFFFFF finds it even without a boot protocol that passes its
//! address (PVH does: [`crate::boot::pvh::set_rsdp`]). Whenever it writes
//! tables, the VMM must also install [`pm::PmRegisters`] at
//! [`pm::PM1_EVT_PORT`] ([`pm::PM_PORT_LEN`] ports) on the port-I/O bus.
//!
//! # The FADT: full, not hardware-reduced, in both modes
//!
//! Firecracker sets `HW_REDUCED_ACPI`. On x86, Linux answers a
//! hardware-reduced FADT by replacing the legacy PIC with a null PIC and
//! skipping the platform timer setup (`x86_init.timers.timer_init` becomes a
//! no-op: no PIT or HPET clockevent) — `acpi_reduced_hw_init()`, called from
//! `early_acpi_boot_init()` in Linux's `arch/x86/kernel/acpi/boot.c` (newer
//! kernels do it through `acpi_generic_reduced_hw_init()`).
//! - With lunavm's userspace PIC and PIT (`ioapic: false`, the deterministic
//!   default) there is no local APIC or IOAPIC (KVM only emulates them after
//!   `KVM_CREATE_IRQCHIP`): that would leave Linux with no interrupt
//!   controller and no timer at all.
//! - With the in-kernel irqchip it is not enough either, measured here:
//!   Debian's 6.1 cloud kernel under `--irqchip kernel` on this project's
//!   software-nested KVM hangs after "tsc: Marking TSC unstable due to could
//!   not calculate TSC khz". The TSC cannot be calibrated against the PIT
//!   under KVM's CPL0 instruction emulator, the baseline CPU profile hides
//!   kvmclock, there is no HPET or PM timer, and with no PIT clockevent
//!   jiffies never advance, so the local APIC timer cannot be calibrated
//!   either. With the full FADT the same kernel boots on, ticking on the PIT.
//!
//! So the FADT is a full one:
//! - SCI on IRQ [`fadt::SCI_IRQ`] (the line [`layout::VIRTIO_MMIO_IRQS`]
//!   leaves free for it); nothing raises it.
//! - `SMI_CMD` = 0: the machine is always in ACPI mode, so the OS never
//!   switches modes (ACPICA's `hwacpi.c`: "if SMI_CMD in FADT is zero, the
//!   system does not support mode transition, it must be in ACPI mode at all
//!   times").
//! - A PM1a event block and a PM1a control block at [`pm::PM1_EVT_PORT`] /
//!   [`pm::PM1_CNT_PORT`], served by [`pm::PmRegisters`]. They cannot be left
//!   out: ACPICA marks both blocks required (`fadt_info_table` in
//!   `tbfadt.c`), its fixed-event initialization writes PM1 enable during
//!   `acpi_enable_subsystem()`, a zero register address fails with
//!   `AE_BAD_ADDRESS` (`acpi_hw_validate_register()` in `hwregs.c`), and
//!   Linux then prints "Unable to enable ACPI" and disables ACPI altogether
//!   (`acpi_early_init()` in `drivers/acpi/bus.c`) — no DSDT devices. Left
//!   unclaimed (reads of all-ones) they half work: under QEMU, which has no
//!   device there, Linux logs "Could not disable RealTimeClock events".
//! - No PM timer (optional since ACPI 5.0A, as `tbfadt.c` notes; a
//!   free-running 3.58 MHz counter would be one more time source to make
//!   deterministic), no GPE blocks, C2/C3 declared unsupported, and a FACS
//!   (required when the FADT is not hardware-reduced).
//! - `IAPC_BOOT_ARCH`: legacy (ISA) devices present, no 8042 (Linux then does
//!   not probe for one: `acpi_parse_fadt()`), no VGA, no MSI, no ASPM
//!   control; the CMOS RTC is present and has a century byte.
//!
//! # The MADT: only with the in-kernel irqchip
//!
//! **In-kernel irqchip (`ioapic: true`)**: one enabled Processor Local APIC
//! per vCPU (APIC ID = ACPI processor UID = vCPU index), the IOAPIC at
//! [`layout::IOAPIC_ADDR`] with GSI base 0, the local APIC address
//! [`layout::LAPIC_ADDR`], the `PCAT_COMPAT` flag (KVM's 8259 pair exists),
//! and an interrupt source override ISA IRQ 0 → GSI [`AcpiConfig::pit_gsi`]
//! when that is not 0. The override must say what the VMM's GSI routing does.
//! lunavm keeps KVM's default routing (`default_routing` in KVM's
//! `irq_comm.c`), which wires KVM GSI *n* to IOAPIC pin *n*, so the in-kernel
//! PIT (KVM GSI 0) arrives on pin 0 and the right table has no override
//! ([`madt::PIT_GSI_KVM_DEFAULT`]). Measured with the same kernel: with the
//! PC convention's override IRQ 0 → GSI 2 (QEMU's tables, true under QEMU's
//! own routing) but KVM's default routing, Linux reports "MP-BIOS bug: 8254
//! timer not connected to IO-APIC" and falls back to an ExtINT timer; without
//! it the timer comes straight through pin 0 ("..TIMER: vector=0x30 apic1=0
//! pin1=0"). A VMM that installs QEMU-style routing (KVM GSI 0 → IOAPIC
//! pin 2) passes [`madt::PIT_GSI_PC`].
//!
//! **Userspace PIC + PIT (`ioapic: false`)**: no MADT. Linux then stays in the
//! PIC interrupt model ("ACPI found no MADT, and so ACPI wants UP PIC mode",
//! `acpi_process_madt()` in `boot.c`), maps `_CRS` interrupts one to one onto
//! 8259 lines (`acpi_gsi_to_irq()` in PIC mode) and sets up the PIT as on any
//! PC. A MADT would be wrong (it would promise APICs that do not exist) and is
//! ignored anyway when CPUID has no APIC bit (`acpi_parse_madt()`). Without
//! APICs there is one CPU, so [`build`] refuses `cpus > 1` in this mode.
//!
//! # Checked with real kernels (by hand, not in CI)
//!
//! - lunavm, Debian's 6.1 cloud kernel (PVH entry, `CONFIG_VIRTIO_MMIO=m`
//!   without command-line devices), tables written and [`pm::PmRegisters`]
//!   installed: with the userspace PIC ("nolapic noapic") Linux reports
//!   "ACPI: Interpreter enabled", "Using PIC for interrupt routing", "PnP
//!   ACPI: found 1 devices" (COM1), probes no 8042, and logs no ACPI error;
//!   with `--irqchip kernel` it reports "Using IOAPIC for interrupt routing"
//!   and the timer on pin 0 as above.
//! - QEMU 7.2 TCG, `-machine microvm,acpi=off,auto-kernel-cmdline=off`, the
//!   same kernel with an initramfs loading `virtio_mmio` and `virtio_blk`,
//!   the tables (describing microvm's slots) loaded at 0xE0000 with
//!   `-device loader`: every slot becomes an `LNRO0005:nn` platform device,
//!   `virtio_mmio` binds the occupied one and a virtio-blk read completes, its
//!   interrupt counted on the 8259 ("XT-PIC", `-cpu qemu64,-apic`, no MADT)
//!   or on the IOAPIC ("IO-APIC 12-edge", MADT with [`madt::PIT_GSI_PC`],
//!   which matches QEMU's routing).

pub mod dsdt;
pub mod fadt;
pub mod madt;
pub mod pm;
mod tables;
#[cfg(test)]
mod tests;

use crate::layout;
use crate::machine::platform::{PIT_IRQ, RTC_IRQ};
use crate::vm::memory::{self, GuestMem};

/// OEM ID written in every table header.
pub const OEM_ID: [u8; 6] = *b"LUNAVM";
/// OEM table ID written in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"LUNAVM  ";
/// OEM revision written in every table header.
pub const OEM_REVISION: u32 = 1;

/// One virtio-mmio slot as the DSDT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Guest-physical base of its register page.
    pub base: u64,
    /// Size of its register window.
    pub size: u64,
    /// Its interrupt line (an 8259 line, or an IOAPIC pin with the in-kernel
    /// irqchip); the device pulses it (edge, active high), as Firecracker's do.
    pub irq: u8,
}

impl VirtioSlot {
    /// Slot `index` of the layout's virtio-mmio window
    /// ([`layout::VIRTIO_MMIO_BASE`], [`layout::VIRTIO_MMIO_IRQS`]); `None`
    /// past the last slot.
    pub fn from_layout(index: usize) -> Option<VirtioSlot> {
        let irq = *layout::VIRTIO_MMIO_IRQS.get(index)?;
        Some(VirtioSlot {
            base: layout::VIRTIO_MMIO_BASE + layout::VIRTIO_MMIO_SLOT_SIZE * index as u64,
            size: layout::VIRTIO_MMIO_SLOT_SIZE,
            irq,
        })
    }
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (one local APIC each with the in-kernel irqchip).
    pub cpus: u8,
    /// The in-kernel irqchip: local APICs and an IOAPIC exist, so there is a
    /// MADT. `false`: lunavm's userspace PIC and PIT, no MADT.
    pub ioapic: bool,
    /// With `ioapic`: the IOAPIC pin the VMM's GSI routing delivers the PIT
    /// (KVM GSI 0) to — [`madt::PIT_GSI_KVM_DEFAULT`] (0, no override) with
    /// KVM's default routing, [`madt::PIT_GSI_PC`] (2) with QEMU-style
    /// routing. Ignored without `ioapic`.
    pub pit_gsi: u8,
    /// The virtio-mmio slots, in order (`_UID` is the index).
    pub virtio: Vec<VirtioSlot>,
    /// Describe the COM1 UART (`PNP0501` at port 0x3f8, IRQ [`dsdt::COM1_IRQ`]).
    pub com1: bool,
}

/// One table and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Its signature ("RSDP" for the root pointer, whose own is "RSD PTR ").
    pub signature: &'static str,
    /// Guest-physical address.
    pub addr: u64,
    /// Its bytes, checksummed.
    pub bytes: Vec<u8>,
}

/// The tables [`build`] made, in address order, the RSDP first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Every table.
    pub tables: Vec<Table>,
}

impl AcpiTables {
    /// The table with this signature ("RSDP", "XSDT", "FACP", "APIC", "DSDT",
    /// "FACS").
    pub fn get(&self, signature: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.signature == signature)
    }

    /// Where the RSDP goes.
    pub fn rsdp_addr(&self) -> u64 {
        self.get("RSDP")
            .map_or(layout::ACPI_TABLES_ADDR, |t| t.addr)
    }
}

/// Errors of building or writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// No vCPU.
    #[error("ACPI tables need at least one vCPU")]
    NoCpus,
    /// More than one vCPU without local APICs.
    #[error("{0} vCPUs need the in-kernel irqchip (--irqchip kernel): the userspace PIC has no local APICs, so the tables describe one CPU")]
    SmpNeedsApic(u8),
    /// The PIT's IOAPIC pin does not exist.
    #[error("The PIT cannot be on IOAPIC pin {0}: the IOAPIC has 24 pins")]
    BadPitGsi(u8),
    /// A virtio slot outside the MMIO hole below the IOAPIC.
    #[error("Virtio slot {index} at {base:#x} (size {size:#x}) is not inside the 32-bit MMIO hole {start:#x}..{end:#x}")]
    SlotOutsideHole {
        /// Slot index.
        index: usize,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// First usable address.
        start: u64,
        /// End of the usable range.
        end: u64,
    },
    /// Two virtio slots overlap.
    #[error("Virtio slots {index} and {other} overlap")]
    SlotOverlap {
        /// The later slot.
        index: usize,
        /// The earlier slot it overlaps.
        other: usize,
    },
    /// A virtio slot's interrupt line cannot be used.
    #[error("Virtio slot {index} cannot use IRQ {irq}: {reason}")]
    BadIrq {
        /// Slot index.
        index: usize,
        /// The line.
        irq: u8,
        /// Why.
        reason: String,
    },
    /// The tables do not fit their area.
    #[error("ACPI tables need {needed:#x} bytes but the area at {addr:#x} holds {size:#x}; describe fewer devices or vCPUs")]
    TooLarge {
        /// Bytes needed from the start of the area.
        needed: u64,
        /// Start of the area.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// A table lies outside the ACPI area.
    #[error("ACPI table {signature} at {addr:#x} (+{len:#x}) is outside the ACPI area")]
    OutsideArea {
        /// Its signature.
        signature: &'static str,
        /// Its address.
        addr: u64,
        /// Its length.
        len: usize,
    },
    /// Guest RAM does not cover the ACPI area.
    #[error("Cannot write ACPI table {signature} at {addr:#x}: it is not guest RAM")]
    NotRam {
        /// The table.
        signature: &'static str,
        /// Its address.
        addr: u64,
    },
}

/// Builds the tables for `config`, laid out from [`layout::ACPI_TABLES_ADDR`].
pub fn build(config: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    validate(config)?;
    let mut area = Area::new();
    let mut tables = Vec::new();

    let rsdp_addr = area.place(tables::RSDP_LEN, 16)?;
    let facs = tables::facs();
    let facs_addr = area.place(facs.len(), 64)?;
    tables.push(table("FACS", facs_addr, facs));
    let dsdt = dsdt::build(config);
    let dsdt_addr = area.place(dsdt.len(), 8)?;
    tables.push(table("DSDT", dsdt_addr, dsdt));

    let fadt = fadt::build(dsdt_addr, facs_addr);
    let fadt_addr = area.place(fadt.len(), 8)?;
    tables.push(table("FACP", fadt_addr, fadt));
    let mut entries = vec![fadt_addr];

    if config.ioapic {
        let madt = madt::build(config.cpus, config.pit_gsi);
        let madt_addr = area.place(madt.len(), 8)?;
        tables.push(table("APIC", madt_addr, madt));
        entries.push(madt_addr);
    }

    let xsdt = tables::xsdt(&entries);
    let xsdt_addr = area.place(xsdt.len(), 8)?;
    tables.push(table("XSDT", xsdt_addr, xsdt));

    tables.insert(0, table("RSDP", rsdp_addr, tables::rsdp(xsdt_addr)));
    Ok(AcpiTables { tables })
}

/// Writes `tables` into guest memory (the rest of the ACPI area zeroed, so no
/// stale table survives) and returns the RSDP's address.
pub fn write(mem: &GuestMem, tables: &AcpiTables) -> Result<u64, AcpiError> {
    let start = layout::ACPI_TABLES_ADDR;
    let end = start + layout::ACPI_TABLES_SIZE;
    for t in &tables.tables {
        let len = t.bytes.len() as u64;
        if t.addr < start || t.addr.saturating_add(len) > end {
            return Err(AcpiError::OutsideArea {
                signature: t.signature,
                addr: t.addr,
                len: t.bytes.len(),
            });
        }
    }
    let zeros = vec![0u8; crate::boot::to_usize(layout::ACPI_TABLES_SIZE)];
    if !memory::write_phys(mem, start, &zeros) {
        return Err(AcpiError::NotRam {
            signature: "area",
            addr: start,
        });
    }
    for t in &tables.tables {
        if !memory::write_phys(mem, t.addr, &t.bytes) {
            return Err(AcpiError::NotRam {
                signature: t.signature,
                addr: t.addr,
            });
        }
    }
    Ok(tables.rsdp_addr())
}

/// A 32-bit address or size: the APICs' from the layout, and virtio slots
/// [`validate`] checked to lie below the IOAPIC, are all below 4 GiB.
fn low32(v: u64) -> u32 {
    debug_assert!(v <= u64::from(u32::MAX));
    u32::try_from(v).unwrap_or(0)
}

fn table(signature: &'static str, addr: u64, bytes: Vec<u8>) -> Table {
    Table {
        signature,
        addr,
        bytes,
    }
}

/// Hands out aligned addresses in the ACPI area.
struct Area {
    next: u64,
}

impl Area {
    fn new() -> Area {
        Area {
            next: layout::ACPI_TABLES_ADDR,
        }
    }

    fn place(&mut self, len: usize, align: u64) -> Result<u64, AcpiError> {
        let addr = crate::boot::align_up(self.next, align);
        let end = addr + len as u64;
        let area_end = layout::ACPI_TABLES_ADDR + layout::ACPI_TABLES_SIZE;
        if end > area_end {
            return Err(AcpiError::TooLarge {
                needed: end - layout::ACPI_TABLES_ADDR,
                addr: layout::ACPI_TABLES_ADDR,
                size: layout::ACPI_TABLES_SIZE,
            });
        }
        self.next = end;
        Ok(addr)
    }
}

/// Checks vCPUs, slots and interrupt lines before anything is built.
fn validate(config: &AcpiConfig) -> Result<(), AcpiError> {
    if config.cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    if !config.ioapic && config.cpus > 1 {
        return Err(AcpiError::SmpNeedsApic(config.cpus));
    }
    if config.ioapic && config.pit_gsi >= madt::IOAPIC_PINS {
        return Err(AcpiError::BadPitGsi(config.pit_gsi));
    }
    let (start, end) = (layout::MMIO_START, layout::IOAPIC_ADDR);
    for (index, slot) in config.virtio.iter().enumerate() {
        let slot_end = slot.base.saturating_add(slot.size);
        if slot.size == 0 || slot.base < start || slot_end > end {
            return Err(AcpiError::SlotOutsideHole {
                index,
                base: slot.base,
                size: slot.size,
                start,
                end,
            });
        }
        for (other, earlier) in config.virtio[..index].iter().enumerate() {
            if slot.base < earlier.base + earlier.size && earlier.base < slot_end {
                return Err(AcpiError::SlotOverlap { index, other });
            }
            if slot.irq == earlier.irq {
                return Err(AcpiError::BadIrq {
                    index,
                    irq: slot.irq,
                    reason: format!(
                        "virtio slot {other} uses it (the lines are edge-triggered and not shared)"
                    ),
                });
            }
        }
        if let Some(reason) = irq_unusable(config, slot.irq) {
            return Err(AcpiError::BadIrq {
                index,
                irq: slot.irq,
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}

/// Interrupt lines of the 8259 pair.
const PIC_LINES: u8 = 16;

/// Why a device may not have line `irq`, if it may not.
fn irq_unusable(config: &AcpiConfig, irq: u8) -> Option<&'static str> {
    let lines = if config.ioapic {
        madt::IOAPIC_PINS
    } else {
        PIC_LINES
    };
    if irq >= lines {
        return Some(if config.ioapic {
            "the IOAPIC has 24 pins"
        } else {
            "the 8259 pair has 16 lines"
        });
    }
    match irq {
        PIT_IRQ => Some("it is the PIT's line"),
        crate::devices::pic::CASCADE_IRQ => {
            Some("it is the 8259 cascade (and the PIT's GSI with the in-kernel irqchip)")
        }
        RTC_IRQ => Some("it is the RTC's line"),
        dsdt::COM1_IRQ if config.com1 => Some("it is COM1's line"),
        fadt::SCI_IRQ => Some("it is the ACPI SCI"),
        pin if config.ioapic && pin == config.pit_gsi => Some("the PIT arrives on that IOAPIC pin"),
        _ => None,
    }
}
