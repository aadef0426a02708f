//! Register, MSR and event access to the vCPU, and host-side device access, for
//! front ends (scripts, later gdb). Front ends never call KVM themselves.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};

use super::{Machine, MachineError};
use crate::devices::bus::Unclaimed;
use crate::devices::DeviceEvent;

/// Every register name `Machine::reg` knows, in display order.
pub const REG_NAMES: &[&str] = &[
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "rflags", "cs", "ds", "es", "fs", "gs", "ss", "fs_base", "gs_base", "cr0",
    "cr2", "cr3", "cr4", "cr8", "efer",
];

/// Every segment name `Machine::segment` knows.
pub const SEGMENT_NAMES: &[&str] = &["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"];

fn gpr<'a>(r: &'a mut kvm_regs, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "rax" => &mut r.rax,
        "rbx" => &mut r.rbx,
        "rcx" => &mut r.rcx,
        "rdx" => &mut r.rdx,
        "rsi" => &mut r.rsi,
        "rdi" => &mut r.rdi,
        "rbp" => &mut r.rbp,
        "rsp" => &mut r.rsp,
        "r8" => &mut r.r8,
        "r9" => &mut r.r9,
        "r10" => &mut r.r10,
        "r11" => &mut r.r11,
        "r12" => &mut r.r12,
        "r13" => &mut r.r13,
        "r14" => &mut r.r14,
        "r15" => &mut r.r15,
        "rip" => &mut r.rip,
        "rflags" => &mut r.rflags,
        _ => return None,
    })
}

fn seg<'a>(s: &'a mut kvm_sregs, name: &str) -> Option<&'a mut kvm_segment> {
    Some(match name {
        "cs" => &mut s.cs,
        "ds" => &mut s.ds,
        "es" => &mut s.es,
        "fs" => &mut s.fs,
        "gs" => &mut s.gs,
        "ss" => &mut s.ss,
        "tr" => &mut s.tr,
        "ldt" => &mut s.ldt,
        _ => return None,
    })
}

fn sreg<'a>(s: &'a mut kvm_sregs, name: &str) -> Option<&'a mut u64> {
    Some(match name {
        "fs_base" => &mut s.fs.base,
        "gs_base" => &mut s.gs.base,
        "cr0" => &mut s.cr0,
        "cr2" => &mut s.cr2,
        "cr3" => &mut s.cr3,
        "cr4" => &mut s.cr4,
        "cr8" => &mut s.cr8,
        "efer" => &mut s.efer,
        _ => return None,
    })
}

impl Machine {
    fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> MachineError {
        move |source| MachineError::Kvm { what, source }
    }

    /// General registers of the current vCPU (cached until the vCPU runs).
    pub fn regs(&self) -> Result<kvm_regs, MachineError> {
        if let Some(r) = self.reg_cache.regs.get() {
            return Ok(r);
        }
        let r = self
            .vcpu()
            .get_regs()
            .map_err(Self::kvm_err("read registers"))?;
        self.reg_cache.regs.set(Some(r));
        Ok(r)
    }

    /// Special registers of the current vCPU (cached until the vCPU runs).
    pub fn sregs(&self) -> Result<kvm_sregs, MachineError> {
        if let Some(s) = self.reg_cache.sregs.get() {
            return Ok(s);
        }
        let s = self
            .vcpu()
            .get_sregs()
            .map_err(Self::kvm_err("read special registers"))?;
        self.reg_cache.sregs.set(Some(s));
        Ok(s)
    }

    /// Sets the general registers of the current vCPU.
    pub fn set_regs(&mut self, r: &kvm_regs) -> Result<(), MachineError> {
        self.reg_cache.regs.set(None);
        self.vcpu()
            .set_regs(r)
            .map_err(Self::kvm_err("set registers"))?;
        self.reg_cache.regs.set(Some(*r));
        Ok(())
    }

    /// The x87/SSE state of the current vCPU (not cached: only debuggers read it).
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, MachineError> {
        self.vcpu()
            .get_fpu()
            .map_err(Self::kvm_err("read the FPU state"))
    }

    /// Sets the x87/SSE state of the current vCPU.
    pub fn set_fpu(&mut self, fpu: &kvm_bindings::kvm_fpu) -> Result<(), MachineError> {
        self.vcpu()
            .set_fpu(fpu)
            .map_err(Self::kvm_err("set the FPU state"))
    }

    /// Sets the special registers of the current vCPU.
    pub fn set_sregs(&mut self, s: &kvm_sregs) -> Result<(), MachineError> {
        self.reg_cache.sregs.set(None);
        self.vcpu()
            .set_sregs(s)
            .map_err(Self::kvm_err("set special registers"))?;
        self.reg_cache.sregs.set(Some(*s));
        Ok(())
    }

    /// Reads register `name` (one of [`REG_NAMES`]).
    pub fn reg(&self, name: &str) -> Result<u64, MachineError> {
        let mut r = kvm_regs::default();
        if gpr(&mut r, name).is_some() {
            r = self.regs()?;
            return Ok(gpr(&mut r, name).map_or(0, |v| *v));
        }
        let mut s = self.sregs()?;
        if let Some(v) = sreg(&mut s, name) {
            return Ok(*v);
        }
        match seg(&mut s, name) {
            Some(sg) if name != "tr" && name != "ldt" => Ok(u64::from(sg.selector)),
            _ => Err(MachineError::UnknownRegister(name.to_string())),
        }
    }

    /// Writes register `name`; segment names set the selector only.
    pub fn set_reg(&mut self, name: &str, value: u64) -> Result<(), MachineError> {
        let mut r = self.regs()?;
        if let Some(v) = gpr(&mut r, name) {
            *v = value;
            return self.set_regs(&r);
        }
        let mut s = self.sregs()?;
        if let Some(v) = sreg(&mut s, name) {
            *v = value;
        } else {
            match seg(&mut s, name) {
                Some(sg) if name != "tr" && name != "ldt" => {
                    sg.selector = u16::try_from(value).map_err(|_| MachineError::BadValue {
                        what: name.to_string(),
                        value,
                    })?;
                }
                _ => return Err(MachineError::UnknownRegister(name.to_string())),
            }
        }
        self.set_sregs(&s)
    }

    /// A segment register in full.
    pub fn segment(&self, name: &str) -> Result<kvm_segment, MachineError> {
        let mut s = self.sregs()?;
        seg(&mut s, name)
            .copied()
            .ok_or_else(|| MachineError::UnknownRegister(name.to_string()))
    }

    /// Replaces a segment register.
    pub fn set_segment(&mut self, name: &str, value: kvm_segment) -> Result<(), MachineError> {
        let mut s = self.sregs()?;
        *seg(&mut s, name).ok_or_else(|| MachineError::UnknownRegister(name.to_string()))? = value;
        self.set_sregs(&s)
    }

    /// Reads MSR `index`.
    pub fn rdmsr(&self, index: u32) -> Result<u64, MachineError> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|_| MachineError::Msr(index))?;
        let n = self
            .vcpu()
            .get_msrs(&mut msrs)
            .map_err(Self::kvm_err("read an MSR"))?;
        if n != 1 {
            return Err(MachineError::Msr(index));
        }
        Ok(msrs.as_slice()[0].data)
    }

    /// Writes MSR `index`.
    pub fn wrmsr(&mut self, index: u32, data: u64) -> Result<(), MachineError> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|_| MachineError::Msr(index))?;
        let n = self
            .vcpu()
            .set_msrs(&msrs)
            .map_err(Self::kvm_err("write an MSR"))?;
        if n != 1 {
            return Err(MachineError::Msr(index));
        }
        Ok(())
    }

    /// Injects exception `vector` (0-31), delivered when the guest next runs.
    pub fn inject_exception(
        &mut self,
        vector: u8,
        error_code: Option<u32>,
    ) -> Result<(), MachineError> {
        if vector >= 32 {
            return Err(MachineError::BadValue {
                what: "exception vector".into(),
                value: u64::from(vector),
            });
        }
        let mut ev = self
            .vcpu()
            .get_vcpu_events()
            .map_err(Self::kvm_err("read vCPU events"))?;
        ev.exception.injected = 1;
        ev.exception.nr = vector;
        ev.exception.has_error_code = u8::from(error_code.is_some());
        ev.exception.error_code = error_code.unwrap_or(0);
        self.vcpu()
            .set_vcpu_events(&ev)
            .map_err(Self::kvm_err("inject an exception"))
    }

    /// Injects external interrupt `vector` (32-255); the guest must have
    /// interrupts enabled and no interrupt shadow.
    pub fn inject_interrupt(&mut self, vector: u8) -> Result<(), MachineError> {
        if vector < 32 {
            return Err(MachineError::BadValue {
                what: "interrupt vector".into(),
                value: u64::from(vector),
            });
        }
        if self.regs()?.rflags & (1 << 9) == 0 {
            return Err(MachineError::InterruptsDisabled);
        }
        let mut ev = self
            .vcpu()
            .get_vcpu_events()
            .map_err(Self::kvm_err("read vCPU events"))?;
        if ev.interrupt.shadow != 0 || ev.interrupt.injected != 0 {
            return Err(MachineError::InterruptsDisabled);
        }
        ev.interrupt.injected = 1;
        ev.interrupt.nr = vector;
        ev.interrupt.soft = 0;
        self.vcpu()
            .set_vcpu_events(&ev)
            .map_err(Self::kvm_err("inject an interrupt"))
    }

    /// Reads a port from the host side (no guest involved).
    pub fn io_read(&mut self, port: u16, size: u8) -> u64 {
        let mut data = [0u8; 8];
        self.pio_bus
            .read(u64::from(port), &mut data[..usize::from(size.min(8))]);
        super::intercept::le_value(&data[..usize::from(size.min(8))])
    }

    /// Writes a port from the host side; returns a device event (a debug-exit write).
    pub fn io_write(&mut self, port: u16, size: u8, value: u64) -> Option<DeviceEvent> {
        let bytes = value.to_le_bytes();
        self.pio_bus
            .write(u64::from(port), &bytes[..usize::from(size.min(8))])
    }

    /// Reads MMIO from the host side.
    pub fn mmio_read(&mut self, addr: u64, size: u8) -> u64 {
        let mut data = [0u8; 8];
        self.mmio_bus
            .read(addr, &mut data[..usize::from(size.min(8))]);
        super::intercept::le_value(&data[..usize::from(size.min(8))])
    }

    /// Writes MMIO from the host side.
    pub fn mmio_write(&mut self, addr: u64, size: u8, value: u64) -> Option<DeviceEvent> {
        let bytes = value.to_le_bytes();
        self.mmio_bus
            .write(addr, &bytes[..usize::from(size.min(8))])
    }

    /// Unclaimed accesses of both buses, (pio, mmio).
    pub fn unclaimed(&self) -> (Unclaimed, Unclaimed) {
        (self.pio_bus.unclaimed(), self.mmio_bus.unclaimed())
    }
}
