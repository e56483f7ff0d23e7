#![doc = include_str!("../README.md")]
//!
//! Modules: [`serial`] (16550A UART on vm-superio), [`i8042`] (PS/2 controller and keyboard),
//! [`cmos`] (RTC and NVRAM), [`debug_exit`] (QEMU-compatible debug-exit port), [`acpi_pm`]
//! (hardware-reduced ACPI sleep control, sleep status and reset registers), [`testdev`]
//! (QEMU-compatible pc-testdev), [`pci`] (root complex, host bridge, configuration space),
//! [`virtio`] (modern virtio-pci transport and virtio-blk), [`trigger`] (interrupt lines) and
//! [`io`] (access counters).

pub mod acpi_pm;
pub mod cmos;
pub mod debug_exit;
pub mod i8042;
pub mod io;
pub mod pci;
pub mod serial;
pub mod testdev;
pub mod trigger;
pub mod virtio;

pub use acpi_pm::{AcpiPmDevice, AcpiPmStats};
pub use cmos::{CmosError, CmosRtc, ManualWallClock, SystemClock, WallClock};
pub use debug_exit::DebugExit;
pub use i8042::{I8042Device, I8042Error};
pub use io::IoStats;
pub use pci::{ConfigSpace, PciDevice, PciError, PciRoot};
pub use serial::SerialDevice;
pub use testdev::{PcTestDev, TestDevError, TestDevStats};
pub use trigger::{CountingTrigger, InterruptTrigger, NoopTrigger, SuperioTrigger};
pub use virtio::block::{DiskBackend, DiskError, DiskImage, MemDisk, VirtioBlock};
pub use virtio::{MsiTrigger, VirtioDevice, VirtioPciDevice, VirtioPciInterrupts};
