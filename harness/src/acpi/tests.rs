//! The tables as a guest finds them: written into guest memory, found from
//! the RSDP (and by the BIOS-area scan), parsed back field by field, and
//! disassembled by ACPICA's `iasl` (Debian package acpica-tools; the tests
//! fail, not skip, without it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::*;

fn config(ioapic: bool, cpus: u8, slots: usize) -> AcpiConfig {
    AcpiConfig {
        cpus,
        ioapic,
        pit_gsi: madt::PIT_GSI_KVM_DEFAULT,
        virtio: (0..slots).filter_map(VirtioSlot::from_layout).collect(),
        com1: true,
    }
}

fn read(mem: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    assert!(memory::read_phys(mem, addr, &mut b), "read {addr:#x}");
    b
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// A system description table at `addr`: its length field read, the whole
/// table checksummed.
fn sdt_at(mem: &GuestMem, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let head = read(mem, addr, 36);
    assert_eq!(&head[0..4], signature, "signature at {addr:#x}");
    let len = u32_at(&head, 4) as usize;
    assert!(len >= 36, "{signature:?} length {len}");
    let table = read(mem, addr, len);
    assert_eq!(sum(&table), 0, "{signature:?} checksum");
    table
}

/// Walks RSDP → XSDT → tables → DSDT/FACS the way ACPICA does; returns the
/// tables by signature with their addresses, and the XSDT's entries.
/// Tables found, by signature: (address, bytes).
type Found = BTreeMap<String, (u64, Vec<u8>)>;

fn walk(mem: &GuestMem, rsdp_addr: u64) -> (Found, Vec<u64>) {
    let rsdp = read(mem, rsdp_addr, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], &OEM_ID);

    let mut found = BTreeMap::new();
    let xsdt_addr = u64_at(&rsdp, 24);
    let xsdt = sdt_at(mem, xsdt_addr, b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
    assert_eq!(xsdt.len(), 36 + 8 * entries.len());
    for &e in &entries {
        let sig: [u8; 4] = read(mem, e, 4).try_into().unwrap();
        let t = sdt_at(mem, e, &sig);
        found.insert(String::from_utf8(sig.to_vec()).unwrap(), (e, t));
    }
    let fadt = found.get("FACP").expect("XSDT lists the FADT").1.clone();
    let dsdt_addr = u64_at(&fadt, 140);
    assert_eq!(u32_at(&fadt, 40), 0, "only X_DSDT is set");
    found.insert("DSDT".into(), (dsdt_addr, sdt_at(mem, dsdt_addr, b"DSDT")));
    let facs_addr = u64_at(&fadt, 132);
    if facs_addr != 0 {
        let facs = read(mem, facs_addr, 64);
        assert_eq!(&facs[0..4], b"FACS");
        assert_eq!(u32_at(&facs, 4), 64);
        assert_eq!(facs_addr % 64, 0, "FACS alignment");
        found.insert("FACS".into(), (facs_addr, facs));
    }
    found.insert("XSDT".into(), (xsdt_addr, xsdt));
    (found, entries)
}

fn written(config: &AcpiConfig) -> (GuestMem, u64) {
    let mem = memory::create(4 << 20).unwrap();
    let tables = build(config).unwrap();
    let rsdp = write(&mem, &tables).unwrap();
    assert_eq!(rsdp, tables.rsdp_addr());
    (mem, rsdp)
}

/// The MADT's interrupt controller structures.
fn madt_structures(madt: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = madt::MADT_HEADER_LEN;
    while at < madt.len() {
        let len = madt[at + 1] as usize;
        assert!(len >= 2, "structure length at {at}");
        out.push(madt[at..at + len].to_vec());
        at += len;
    }
    assert_eq!(at, madt.len());
    out
}

/// The FADT fields both modes share: full, SCI, PM blocks, FACS.
fn check_full_fadt(found: &Found) {
    let fadt = &found["FACP"].1;
    assert_eq!(u32_at(fadt, 112) & (1 << 20), 0, "not hardware-reduced");
    assert_eq!(u16_at(fadt, 46), u16::from(fadt::SCI_IRQ));
    assert_eq!(u32_at(fadt, 48), 0, "no SMI_CMD: always in ACPI mode");
    assert_eq!(u32_at(fadt, 56), u32::from(pm::PM1_EVT_PORT));
    assert_eq!(fadt[88], pm::PM1_EVT_LEN);
    assert_eq!(u32_at(fadt, 64), u32::from(pm::PM1_CNT_PORT));
    assert_eq!(fadt[89], pm::PM1_CNT_LEN);
    assert_eq!(u32_at(fadt, 76), 0, "no PM timer");
    assert_eq!(u16_at(fadt, 109), fadt::BOOT_ARCH);
    assert_eq!(fadt[108], crate::devices::rtc::REG_CENTURY);
    assert_eq!(u64_at(fadt, 132), found["FACS"].0);
}

#[test]
fn apic_mode_has_a_madt_matching_kvm_default_routing() {
    let (mem, rsdp) = written(&config(true, 2, 3));
    let (found, entries) = walk(&mem, rsdp);
    let (fadt_addr, _) = &found["FACP"];
    let (madt_addr, madt) = &found["APIC"];
    assert_eq!(entries, vec![*fadt_addr, *madt_addr]);
    check_full_fadt(&found);

    assert_eq!(u64::from(u32_at(madt, 36)), layout::LAPIC_ADDR);
    assert_eq!(u32_at(madt, 40), madt::PCAT_COMPAT);
    let structures = madt_structures(madt);
    assert_eq!(
        structures.len(),
        3,
        "two local APICs and the IOAPIC, no override"
    );
    for (cpu, s) in (0u8..).zip(&structures[..2]) {
        assert_eq!(s[..4], [madt::kind::LOCAL_APIC, 8, cpu, cpu]);
        assert_eq!(u32_at(s, 4), 1, "enabled");
    }
    let io = &structures[2];
    assert_eq!(io[..3], [madt::kind::IO_APIC, 12, 0]);
    assert_eq!(u64::from(u32_at(io, 4)), layout::IOAPIC_ADDR);
    assert_eq!(u32_at(io, 8), 0, "GSI base");
}

#[test]
fn pc_routing_adds_the_irq0_override() {
    let mut c = config(true, 1, 1);
    c.pit_gsi = madt::PIT_GSI_PC;
    let (mem, rsdp) = written(&c);
    let (found, _) = walk(&mem, rsdp);
    let structures = madt_structures(&found["APIC"].1);
    let iso = structures.last().unwrap();
    assert_eq!(iso[..4], [madt::kind::INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0]);
    assert_eq!(u32_at(iso, 4), u32::from(madt::PIT_GSI_PC));
    assert_eq!(u16_at(iso, 8), 0, "conforming polarity and trigger");
}

#[test]
fn pic_mode_has_no_madt() {
    let (mem, rsdp) = written(&config(false, 1, 2));
    let (found, entries) = walk(&mem, rsdp);
    assert_eq!(entries, vec![found["FACP"].0]);
    assert!(!found.contains_key("APIC"));
    check_full_fadt(&found);
}

#[test]
fn bios_area_scan_finds_the_rsdp() {
    let (mem, rsdp) = written(&config(false, 1, 1));
    let area = read(&mem, 0xe_0000, 0x2_0000);
    let hit = (0..area.len())
        .step_by(16)
        .find(|&off| area[off..].starts_with(b"RSD PTR ") && sum(&area[off..off + 20]) == 0)
        .map(|off| 0xe_0000 + off as u64);
    assert_eq!(hit, Some(rsdp));
    assert_eq!(rsdp, layout::ACPI_TABLES_ADDR);
}

#[test]
fn write_clears_stale_tables() {
    let mem = memory::create(4 << 20).unwrap();
    assert!(memory::write_phys(&mem, 0xe_8000, b"RSD PTR stale"));
    write(&mem, &build(&config(true, 1, 0)).unwrap()).unwrap();
    assert_eq!(read(&mem, 0xe_8000, 8), vec![0; 8]);
}

#[test]
fn build_is_deterministic_and_tables_do_not_overlap() {
    let c = config(true, 255, 8);
    let t = build(&c).unwrap();
    assert_eq!(t, build(&c).unwrap());
    let mut ranges: Vec<(u64, u64)> = t
        .tables
        .iter()
        .map(|t| (t.addr, t.addr + t.bytes.len() as u64))
        .collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0));
    let end = layout::ACPI_TABLES_ADDR + layout::ACPI_TABLES_SIZE;
    assert!(ranges
        .iter()
        .all(|r| r.0 >= layout::ACPI_TABLES_ADDR && r.1 <= end));
}

#[test]
fn bad_configurations_are_refused() {
    let err = |c: AcpiConfig| build(&c).unwrap_err();
    assert!(matches!(err(config(true, 0, 0)), AcpiError::NoCpus));
    let e = err(config(false, 2, 0));
    assert!(matches!(e, AcpiError::SmpNeedsApic(2)));
    assert!(e.to_string().contains("--irqchip kernel"), "{e}");

    let mut c = config(true, 1, 2);
    c.virtio[1].base = c.virtio[0].base + 0x800;
    assert!(matches!(
        err(c),
        AcpiError::SlotOverlap { index: 1, other: 0 }
    ));

    let mut c = config(true, 1, 1);
    c.virtio[0].base = 0x1000;
    assert!(matches!(
        err(c),
        AcpiError::SlotOutsideHole { index: 0, .. }
    ));
    let mut c = config(true, 1, 1);
    c.virtio[0].base = layout::IOAPIC_ADDR - 0x800;
    assert!(matches!(err(c), AcpiError::SlotOutsideHole { .. }));

    for (ioapic, irq, ok) in [
        (false, 9, false),  // the SCI
        (true, 9, false),   // the SCI
        (false, 16, false), // beyond the 8259 pair
        (true, 16, true),   // an IOAPIC pin
        (true, 24, false),  // beyond the IOAPIC
        (true, 4, false),   // COM1
        (true, 0, false),   // the PIT
        (true, 2, false),   // cascade / PIT GSI
        (true, 8, false),   // the RTC
    ] {
        let mut c = config(ioapic, 1, 1);
        c.virtio[0].irq = irq;
        assert_eq!(build(&c).is_ok(), ok, "ioapic {ioapic} irq {irq}");
    }

    let mut c = config(true, 1, 1);
    c.pit_gsi = 24;
    assert!(matches!(err(c), AcpiError::BadPitGsi(24)));
    let mut c = config(true, 1, 1);
    c.pit_gsi = c.virtio[0].irq;
    assert!(err(c).to_string().contains("PIT arrives"));

    let mut c = config(true, 1, 2);
    c.virtio[1].irq = c.virtio[0].irq;
    let e = err(c);
    assert!(e.to_string().contains("virtio slot 0 uses it"), "{e}");
}

#[test]
fn the_area_limit_is_enforced() {
    let mut area = Area::new();
    area.place(16, 16).unwrap();
    let e = area
        .place(crate::boot::to_usize(layout::ACPI_TABLES_SIZE), 8)
        .unwrap_err();
    assert!(matches!(e, AcpiError::TooLarge { .. }), "{e}");
}

/// Disassembles `bytes` with `iasl -d`, then compiles the result again;
/// returns the disassembly. Panics when iasl is missing.
fn iasl(name: &str, bytes: &[u8]) -> String {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "lunavm-acpi-{}-{name}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.dat")), bytes).unwrap();
    let run = |args: &[&str]| {
        let out = match Command::new("iasl").args(args).current_dir(&dir).output() {
            Ok(out) => out,
            Err(e) => panic!(
                "cannot run iasl ({e}): the ACPI tests need it to disassemble the tables — \
                 install Debian's acpica-tools (scripts/test installs it)"
            ),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "iasl {args:?} failed:\n{text}");
        text
    };
    run(&["-d", &format!("{name}.dat")]);
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
    if name == "dsdt" {
        let compiled = run(&["-p", "recompiled", "dsdt.dsl"]);
        assert!(compiled.contains("0 Errors, 0 Warnings"), "{compiled}");
    }
    std::fs::remove_dir_all(&dir).ok();
    dsl
}

/// Removes every blank so that iasl's column alignment does not matter.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn iasl_disassembles_the_dsdt() {
    let c = config(false, 1, 3);
    let tables = build(&c).unwrap();
    let dsl = squash(&iasl("dsdt", &tables.get("DSDT").unwrap().bytes));
    assert_eq!(dsl.matches("Name(_HID,\"LNRO0005\")").count(), 3, "{dsl}");
    for (index, slot) in c.virtio.iter().enumerate() {
        let device = format!("Device({})", dsdt::virtio_name(index));
        let at = dsl
            .find(&device)
            .unwrap_or_else(|| panic!("{device}: {dsl}"));
        let body = &dsl[at..];
        let memory = format!(
            "Memory32Fixed(ReadWrite,0x{:08X},//AddressBase0x{:08X},//AddressLength)",
            slot.base, slot.size
        );
        assert!(body.starts_with(&format!("{device}{{")), "{body}");
        let end = body[1..].find("Device(").map_or(body.len(), |e| e + 1);
        let body = &body[..end];
        assert!(body.contains(&memory), "{memory} in {body}");
        let irq = format!(
            "Interrupt(ResourceConsumer,Edge,ActiveHigh,Exclusive,,,){{0x{:08X},}}",
            slot.irq
        );
        assert!(body.contains(&irq), "{irq} in {body}");
    }
    assert!(dsl.contains("Device(COM1)"), "{dsl}");
    assert!(dsl.contains("EisaId(\"PNP0501\")"), "{dsl}");
    assert!(
        dsl.contains("IO(Decode16,0x03F8,//RangeMinimum0x03F8,//RangeMaximum"),
        "{dsl}"
    );
    assert!(dsl.contains("{0x00000004,}"), "COM1 IRQ 4: {dsl}");
}

#[test]
fn iasl_decodes_fadt_and_madt() {
    let mut c = config(true, 2, 1);
    c.pit_gsi = madt::PIT_GSI_PC;
    let apic = build(&c).unwrap();
    let fadt = squash(&iasl("facp", &apic.get("FACP").unwrap().bytes));
    assert!(fadt.contains("HardwareReduced(V5):0"), "{fadt}");
    assert!(fadt.contains("8042Presentonports60/64(V2):0"), "{fadt}");
    assert!(fadt.contains("PM1AEventBlockAddress:0000B000"), "{fadt}");
    assert!(fadt.contains("PM1AControlBlockAddress:0000B004"), "{fadt}");
    assert!(fadt.contains("SCIInterrupt:0009"), "{fadt}");
    let madt = squash(&iasl("apic", &apic.get("APIC").unwrap().bytes));
    assert_eq!(madt.matches("[ProcessorLocalAPIC]").count(), 2, "{madt}");
    assert!(madt.contains("Address:FEC00000"), "{madt}");
    let iso = madt
        .split("[InterruptSourceOverride]")
        .nth(1)
        .unwrap_or_else(|| panic!("no override: {madt}"));
    assert!(iso.contains("Source:00"), "{iso}");
    assert!(iso.contains("Interrupt:00000002"), "{iso}");

    let pic = build(&config(false, 1, 1)).unwrap();
    let facs = squash(&iasl("facs", &pic.get("FACS").unwrap().bytes));
    assert!(facs.contains("Signature:\"FACS\""), "{facs}");
}
