//! The 16550A UART at 0x3f8 (vm-superio). Output is kept in an in-memory log and,
//! when asked, echoed to the host's stdout; input is queued and fed into the
//! UART's receive FIFO as the guest drains it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};

use super::bus::{BusDevice, DeviceEvent, DeviceState, DeviceStateError};

/// The UART's interrupt line: each raise is counted and, once the machine
/// connects it ([`SerialDevice::connect_irq`]), is an edge on ISA line 4
/// for the interrupt controller.
#[derive(Debug, Default, Clone)]
pub struct IrqLine {
    raised: Arc<AtomicU64>,
    line: Option<super::irq::IrqLine>,
    /// Off while the UART is rebuilt from saved state: vm-superio raises the
    /// line again for a pending interrupt then, which is no new edge.
    live: Arc<std::sync::atomic::AtomicBool>,
}

impl IrqLine {
    /// How many times the line was raised.
    pub fn count(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }
}

impl Trigger for IrqLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.raised.fetch_add(1, Ordering::Relaxed);
        if let Some(line) = &self.line {
            if self.live.load(Ordering::Relaxed) {
                line.pulse();
            }
        }
        Ok(())
    }
}

/// Where the guest's serial output goes.
#[derive(Debug, Default)]
pub struct SerialSink {
    log: Vec<u8>,
    echo: bool,
}

impl Write for SerialSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.log.extend_from_slice(buf);
        if self.echo {
            // Losing the echo (closed stdout) must not stop the guest; the log
            // keeps everything.
            let _ = std::io::stdout().write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            let _ = std::io::stdout().flush();
        }
        Ok(())
    }
}

/// The UART device.
pub struct SerialDevice {
    uart: Serial<IrqLine, vm_superio::serial::NoEvents, SerialSink>,
    pending_input: VecDeque<u8>,
}

impl SerialDevice {
    /// A UART whose output is logged and, with `echo`, copied to stdout.
    pub fn new(echo: bool) -> Self {
        SerialDevice {
            uart: Serial::new(
                IrqLine::default(),
                SerialSink {
                    log: Vec::new(),
                    echo,
                },
            ),
            pending_input: VecDeque::new(),
        }
    }

    /// Connects the UART's interrupt output to `line` (COM1's is ISA line 4);
    /// until then its interrupts are only counted.
    pub fn connect_irq(&mut self, line: super::irq::IrqLine) {
        let irq = IrqLine {
            raised: self.uart.interrupt_evt().raised.clone(),
            line: Some(line),
            live: Arc::default(),
        };
        let count = irq.count();
        let state = self.uart.state();
        let sink = std::mem::take(self.uart.writer_mut());
        // Rebuilding from the UART's own valid state cannot fail.
        if let Ok(uart) = Serial::from_state(&state, irq, vm_superio::serial::NoEvents, sink) {
            self.uart = uart;
        }
        let irq = self.uart.interrupt_evt();
        irq.raised.store(count, Ordering::Relaxed);
        irq.live.store(true, Ordering::Relaxed);
    }

    /// Everything the guest has written so far.
    pub fn output(&self) -> &[u8] {
        &self.uart.writer().log
    }

    /// Queues bytes for the guest to read.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending_input.extend(bytes);
        self.refill();
    }

    /// Bytes queued but not yet read by the guest.
    pub fn pending_input(&self) -> usize {
        self.pending_input.len() + (64 - self.uart.fifo_capacity())
    }

    /// How many times the UART raised its interrupt line.
    pub fn interrupts(&self) -> u64 {
        self.uart.interrupt_evt().count()
    }

    /// Flushes echoed output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    fn refill(&mut self) {
        let room = self.uart.fifo_capacity().min(self.pending_input.len());
        if room == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending_input.drain(..room).collect();
        // Cannot fail: the chunk fits the FIFO and the trigger is infallible.
        let _ = self.uart.enqueue_raw_bytes(&chunk);
    }
}

impl BusDevice for SerialDevice {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(reg) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        // The UART's registers are 8 bits wide; wider reads see the register
        // repeated, the way a byte-wide ISA device answers.
        let value = self.uart.read(reg);
        data.fill(value);
        self.refill();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<DeviceEvent> {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            // Errors here only come from the infallible trigger or a full FIFO
            // in loopback mode, where the byte is dropped as on hardware.
            let _ = self.uart.write(reg, value);
        }
        None
    }

    fn save(&self) -> DeviceState {
        let s = self.uart.state();
        serde_json::json!({
            "regs": [s.baud_divisor_low, s.baud_divisor_high, s.interrupt_enable,
                     s.interrupt_identification, s.line_control, s.line_status,
                     s.modem_control, s.modem_status, s.scratch],
            "rx_fifo": s.in_buffer,
            "pending_input": self.pending_input.iter().copied().collect::<Vec<u8>>(),
            "output": self.uart.writer().log,
            "interrupts": self.interrupts(),
        })
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        let err = |e: &dyn std::fmt::Display| DeviceStateError::new("serial", e);
        let bytes = |key: &str| -> Result<Vec<u8>, DeviceStateError> {
            serde_json::from_value(state[key].clone()).map_err(|e| err(&e))
        };
        let regs = bytes("regs")?;
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = regs[..] else {
            return Err(err(&"the register list needs 9 values"));
        };
        let st = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: bytes("rx_fifo")?,
        };
        let echo = self.uart.writer().echo;
        let irq = IrqLine {
            raised: Arc::new(AtomicU64::new(0)),
            line: self.uart.interrupt_evt().line.clone(),
            live: Arc::default(),
        };
        let count = state["interrupts"].as_u64().unwrap_or(0);
        let sink = SerialSink {
            log: bytes("output")?,
            echo,
        };
        self.uart = Serial::from_state(&st, irq.clone(), vm_superio::serial::NoEvents, sink)
            .map_err(|e| err(&format!("{e:?}")))?;
        // vm-superio raises the line again for a pending interrupt while
        // rebuilding: that is not a new interrupt, so the count is set after.
        irq.raised.store(count, Ordering::Relaxed);
        irq.live.store(true, Ordering::Relaxed);
        self.pending_input = bytes("pending_input")?.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_registers_fifo_and_output() {
        let mut s = SerialDevice::new(false);
        s.write(3, &[0x80]); // DLAB
        s.write(0, &[0x0c]); // divisor low
        s.write(3, &[0x03]);
        s.write(7, &[0x5a]); // scratch
        s.write(0, b"x");
        s.feed(b"abc");
        let saved = s.save();
        let mut t = SerialDevice::new(false);
        t.restore(&saved).unwrap();
        let mut b = [0u8; 1];
        t.read(7, &mut b);
        assert_eq!(b, [0x5a]);
        t.read(0, &mut b);
        assert_eq!(b, [b'a']);
        assert_eq!(t.output(), b"x");
        assert!(t.restore(&serde_json::json!({})).is_err());
    }

    #[test]
    fn transmitted_bytes_are_logged() {
        let mut s = SerialDevice::new(false);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(s.output(), b"hi\n");
    }

    #[test]
    fn input_larger_than_the_fifo_is_delivered_in_order() {
        let mut s = SerialDevice::new(false);
        let input: Vec<u8> = (0..200u8).collect();
        s.feed(&input);
        let mut got = Vec::new();
        let mut b = [0u8; 1];
        for _ in 0..200 {
            s.read(5, &mut b);
            assert_ne!(b[0] & 1, 0, "data ready");
            s.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, input);
        s.read(5, &mut b);
        assert_eq!(b[0] & 1, 0, "drained");
        assert_eq!(s.pending_input(), 0);
    }
}
