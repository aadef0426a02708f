//! The I/O buses and the device models on them.

pub mod bus;
pub mod debug_exit;
pub mod irq;
pub mod pic;
pub mod pit;
pub mod placeholder;
pub mod post_code;
pub mod rtc;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, DeviceEvent};

/// Port of the 16550A UART (COM1).
pub const SERIAL_PORT: u16 = 0x3f8;
/// Number of ports the UART decodes.
pub const SERIAL_PORT_LEN: u16 = 8;
/// COM1's ISA interrupt line.
pub const SERIAL_IRQ: u8 = 4;
/// Port of isa-debug-exit.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Number of ports isa-debug-exit decodes (as QEMU's `iosize=4`).
pub const DEBUG_EXIT_PORT_LEN: u16 = 4;
/// The POST diagnostic port (also Linux's I/O delay port).
pub const POST_CODE_PORT: u16 = 0x80;
/// The ucall port (see [`crate::ucall`]).
pub const UCALL_PORT: u16 = 0x1000;
