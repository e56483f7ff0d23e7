//! Backend-neutral VM exits, port-I/O and MMIO buses, the trap-and-emulate dispatcher and exit
//! statistics.

pub mod action;
pub mod device;
pub mod exit;
pub mod state;

pub use action::{ExitAction, StopReason};
pub use device::{DeviceAction, MmioDevice, PioDevice};
pub use exit::{InsnBytes, SystemEvent, VmExit};
pub use state::VcpuState;
