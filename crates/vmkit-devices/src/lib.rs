#![doc = include_str!("../README.md")]
//!
//! Modules: `serial` (16550A UART on vm-superio), `i8042` (PS/2 controller and keyboard),
//! `cmos` (RTC and NVRAM), `debug_exit` (QEMU-compatible debug-exit port), `acpi_pm`
//! (hardware-reduced ACPI sleep control, sleep status and reset registers), `testdev`
//! (QEMU-compatible pc-testdev), `pci` (root complex, host bridge, configuration space),
//! `virtio` (modern virtio-pci transport and virtio-blk), [`trigger`] (interrupt lines) and
//! [`io`] (access counters).
//!
//! Each module but `trigger` and `io` is behind a feature (see "Features" above); on docs.rs
//! every feature is on and each gated module says which it needs.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod acpi_pm;
#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod cmos;
#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod debug_exit;
#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod i8042;
pub mod io;
#[cfg(feature = "pci")]
#[cfg_attr(docsrs, doc(cfg(feature = "pci")))]
pub mod pci;
#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod serial;
#[cfg(feature = "legacy")]
#[cfg_attr(docsrs, doc(cfg(feature = "legacy")))]
pub mod testdev;
pub mod trigger;
#[cfg(feature = "virtio-blk")]
#[cfg_attr(docsrs, doc(cfg(feature = "virtio-blk")))]
pub mod virtio;

// Re-exports: the foreign crates and types of this crate's public signatures (virtio devices
// take virtio-queue `Queue`s over vm-memory guest memory; `SuperioTrigger` implements
// vm-superio's `Trigger`), so that callers need not depend on the same versions themselves.
/// virtio-queue, whose queues [`VirtioDevice`] activates with.
#[cfg(feature = "virtio-blk")]
pub use virtio_queue;
/// The virtqueue a [`VirtioDevice`] is activated with.
#[cfg(feature = "virtio-blk")]
pub use virtio_queue::Queue;
/// vm-memory, whose guest memory the virtio devices read and write.
#[cfg(feature = "virtio-blk")]
pub use vm_memory;
/// The guest memory the virtio devices read and write.
#[cfg(feature = "virtio-blk")]
pub use vm_memory::GuestMemoryMmap;
/// vm-superio, whose 16550 UART [`SerialDevice`] wraps.
#[cfg(feature = "legacy")]
pub use vm_superio;

#[cfg(feature = "legacy")]
pub use acpi_pm::{AcpiPmDevice, AcpiPmStats};
#[cfg(feature = "legacy")]
pub use cmos::{CmosError, CmosRtc, ManualWallClock, RecordingClock, SystemClock, WallClock};
#[cfg(feature = "legacy")]
pub use debug_exit::DebugExit;
#[cfg(feature = "legacy")]
pub use i8042::{I8042Device, I8042Error};
pub use io::IoStats;
#[cfg(feature = "pci")]
pub use pci::{ConfigSpace, MutPciDevice, PciDevice, PciError, PciRoot};
#[cfg(feature = "legacy")]
pub use serial::SerialDevice;
#[cfg(feature = "legacy")]
pub use testdev::{PcTestDev, TestDevError, TestDevStats};
#[cfg(feature = "legacy")]
pub use trigger::SuperioTrigger;
pub use trigger::{CountingTrigger, InterruptTrigger, MsiTrigger, NoopTrigger};
#[cfg(feature = "file-disk")]
pub use virtio::block::DiskImage;
#[cfg(feature = "virtio-blk")]
pub use virtio::block::{DiskBackend, DiskError, MemDisk, RecordingDisk, VirtioBlock};
#[cfg(feature = "virtio-blk")]
pub use virtio::{VirtioDevice, VirtioPciDevice, VirtioPciInterrupts};
