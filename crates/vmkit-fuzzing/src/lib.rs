#![doc = include_str!("../README.md")]

pub mod harness;
pub mod lines;
pub mod ops;
pub mod pci;
pub mod replay;
pub mod seeds;
pub mod virtio;

pub use harness::{Answer, Claimed, DeviceFuzzer, Fixture, Model, NoModel, Region, Setup, Space};
pub use lines::Line;
pub use ops::{Access, Offset, Op, decode, encode};
pub use replay::{Recording, Replay, ReplayError};
pub use seeds::{
    RecordedFunction, ops_for_pci_function, ops_for_region, ops_for_regions, seed_inputs,
};
pub use virtio::{VirtioFixture, VirtioFuzzer};
// Re-exports: the foreign crates of this crate's public signatures, so that a fuzz target need
// not pin the same versions.
/// arbitrary, whose `Unstructured` the operation decoders read.
pub use arbitrary;
/// vm-memory, whose guest memory the virtio simulator hands a fixture's device.
pub use vm_memory;
/// vmkit-exits, whose device traits, buses and triggers the harness drives.
pub use vmkit_exits;

#[cfg(test)]
mod pci_tests;
#[cfg(test)]
mod tests;
