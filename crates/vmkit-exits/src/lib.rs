#![doc = include_str!("../README.md")]

pub mod action;
pub mod address;
pub mod assist;
mod atomic;
pub mod bus;
pub mod decode;
pub mod device;
pub mod dispatch;
pub mod exit;
pub mod guest;
pub mod ratelimit;
pub mod record;
mod simd;
pub mod state;
pub mod stats;
pub mod trigger;
pub mod xsave;

// Re-exports: the foreign crates of this crate's public signatures (the assist reads guest
// memory through vm-memory's `GuestMemoryBackend`; `Registers::gpr` names iced-x86 registers),
// so that callers need not depend on the same versions themselves.
/// iced-x86, whose register names `state::Registers::gpr` takes.
pub use iced_x86;
/// vm-memory, whose `GuestMemoryBackend` the emulation assist reads guest memory through.
pub use vm_memory;

pub use action::{ExitAction, StopReason};
pub use address::{MmioAddress, PioAddress};
pub use assist::{
    AssistError, AssistPolicy, AssistReport, AssistVerdict, Assisted, BP_VECTOR, EmulationAssist,
    ReflectNamed, SoftExceptionRip, StopAlways, UD_VECTOR, inject_ud,
};
pub use bus::{Bus, BusAddress, BusError, BusHandler, BusRange, IoBus, MmioBus, Route};
pub use decode::{CpuMode, DecodeError, DecodedInsn, decode_at, describe_insn};
pub use device::{
    DeviceAction, MmioDevice, MutMmioDevice, MutPciDevice, MutPioDevice, PCI_NUM_BARS, PciBar,
    PciBarKind, PciDevice, PioDevice,
};
pub use dispatch::{ExitDispatcher, UNCLAIMED_BYTE, is_valid_access_size};
pub use exit::{ExitKind, InsnBytes, SystemEvent, VmExit};
pub use guest::{GuestFault, Unsupported};
pub use ratelimit::{Clock, LogLimit, ManualClock, MonotonicClock, RateLimiter};
pub use record::{Record, RecordReader, RecordWriter};
pub use state::VcpuState;
pub use stats::{AccessCounts, AssistCounts, ExitStats, RangeStats};
pub use trigger::{
    CountingTrigger, InterruptTrigger, MsiTrigger, NoopTrigger, RecordingLine, RecordingMsi,
};
pub use xsave::XsaveLayout;
