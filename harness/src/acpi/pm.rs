//! The PM1 register blocks a full (not hardware-reduced) FADT must point at:
//! the PM1a event block (status, enable) and the PM1a control block. lunavm's
//! FADT is a full one in both interrupt-controller modes; see [`crate::acpi`]
//! for why.
//!
//! Nothing in lunavm raises an ACPI event, so status always reads 0; enable
//! keeps what the guest writes (ACPICA reads enables back to check them);
//! control always reads `SCI_EN` set, because the machine is always in ACPI
//! mode (the FADT has no `SMI_CMD`), and keeps the other bits except the
//! write-only `SLP_EN`. The DSDT has no `\_S5` object, so the guest never
//! asks for a sleep state.
//!
//! One device covers both blocks: events at [`PM1_EVT_PORT`] (4 ports),
//! control at [`PM1_CNT_PORT`] (2 ports), [`PM_PORT_LEN`] ports from
//! [`PM1_EVT_PORT`]. The VMM installs it on the port-I/O bus whenever it
//! writes the ACPI tables (with either irqchip: KVM's in-kernel devices do not
//! decode these ports).

use crate::devices::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// PM1a event block: PM1 status (2 bytes) then PM1 enable (2 bytes). Port
/// 0xb000, as QEMU's PIIX4 PM block once sat; 0x600 would be the modern
/// choice but stays free for scripts' own devices (lunavm's examples use it).
pub const PM1_EVT_PORT: u16 = 0xb000;
/// Length of the PM1a event block.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block.
pub const PM1_CNT_PORT: u16 = PM1_EVT_PORT + PM1_EVT_LEN as u16;
/// Length of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Ports [`PmRegisters`] decodes from [`PM1_EVT_PORT`].
pub const PM_PORT_LEN: u16 = PM1_EVT_LEN as u16 + PM1_CNT_LEN as u16;

/// PM1 control: SCI_EN (ACPI mode).
pub const SCI_EN: u16 = 1 << 0;
/// PM1 control: SLP_EN (write-only: start the sleep transition).
pub const SLP_EN: u16 = 1 << 13;

/// The PM1 status, enable and control registers.
#[derive(Debug, Default)]
pub struct PmRegisters {
    enable: u16,
    control: u16,
}

impl PmRegisters {
    /// Registers in their reset state (no event enabled, ACPI mode).
    pub fn new() -> PmRegisters {
        PmRegisters::default()
    }

    /// The 6-byte register file as the guest reads it.
    fn file(&self) -> [u8; 6] {
        let mut f = [0u8; 6];
        f[2..4].copy_from_slice(&self.enable.to_le_bytes());
        f[4..6].copy_from_slice(&((self.control & !SLP_EN) | SCI_EN).to_le_bytes());
        f
    }
}

impl BusDevice for PmRegisters {
    fn name(&self) -> &'static str {
        "acpi-pm"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let file = self.file();
        for (i, b) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *b = file.get(at).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        for (i, &b) in data.iter().enumerate() {
            let at = offset.saturating_add(i as u64);
            // Status bits are write-one-to-clear and none is ever set.
            let (reg, shift) = match at {
                2 => (&mut self.enable, 0),
                3 => (&mut self.enable, 8),
                4 => (&mut self.control, 0),
                5 => (&mut self.control, 8),
                _ => continue,
            };
            *reg = (*reg & !(0xff << shift)) | (u16::from(b) << shift);
        }
        self.control &= !SLP_EN;
        None
    }

    fn save(&self) -> DeviceState {
        serde_json::json!({ "enable": self.enable, "control": self.control })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let field = |name: &str| {
            state[name]
                .as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| DeviceStateError::new("acpi-pm", format!("bad {name}")))
        };
        self.enable = field("enable")?;
        self.control = field("control")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read16(pm: &mut PmRegisters, offset: u64) -> u16 {
        let mut b = [0u8; 2];
        pm.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    #[test]
    fn always_in_acpi_mode_with_nothing_pending() {
        let mut pm = PmRegisters::new();
        assert_eq!(read16(&mut pm, 0), 0, "status");
        assert_eq!(read16(&mut pm, 4) & SCI_EN, SCI_EN);
        pm.write(4, &0u16.to_le_bytes());
        assert_eq!(read16(&mut pm, 4) & SCI_EN, SCI_EN, "SCI_EN sticks");
        pm.write(0, &0xffffu16.to_le_bytes());
        assert_eq!(read16(&mut pm, 0), 0, "status is write-one-to-clear");
    }

    #[test]
    fn enables_read_back_and_slp_en_does_not() {
        let mut pm = PmRegisters::new();
        pm.write(2, &0x0120u16.to_le_bytes());
        assert_eq!(read16(&mut pm, 2), 0x0120);
        pm.write(4, &(SLP_EN | (5 << 10)).to_le_bytes());
        assert_eq!(read16(&mut pm, 4), (5 << 10) | SCI_EN);
        let mut all = [0u8; 4];
        pm.read(2, &mut all);
        assert_eq!(all, [0x20, 0x01, 0x01, 0x14]);
    }

    #[test]
    fn state_round_trips() {
        let mut pm = PmRegisters::new();
        pm.write(2, &[0x21, 0x00]);
        let saved = pm.save();
        let mut other = PmRegisters::new();
        other.restore(&saved).unwrap();
        assert_eq!(read16(&mut other, 2), 0x21);
        assert!(other.restore(&serde_json::json!({})).is_err());
    }

    #[test]
    fn fits_beside_the_platform_devices() {
        use crate::devices::Bus;
        use std::sync::{Arc, Mutex};
        let mut bus = Bus::new();
        crate::machine::platform::Platform::new(0, true)
            .install(&mut bus)
            .unwrap();
        bus.insert(
            u64::from(PM1_EVT_PORT),
            u64::from(PM_PORT_LEN),
            Arc::new(Mutex::new(PmRegisters::new())),
        )
        .unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(u64::from(PM1_CNT_PORT), &mut b));
        assert_eq!(u16::from_le_bytes(b), SCI_EN);
    }

    #[test]
    fn blocks_are_contiguous() {
        assert_eq!(PM1_CNT_PORT, PM1_EVT_PORT + 4);
        assert_eq!(PM_PORT_LEN, 6);
    }
}
