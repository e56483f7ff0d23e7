#![doc = include_str!("../README.md")]

pub mod harness;
pub mod lines;
pub mod ops;
pub mod pci;
pub mod replay;
pub mod seeds;

pub use harness::{Answer, Claimed, DeviceFuzzer, Fixture, Model, NoModel, Region, Setup, Space};
pub use lines::Line;
pub use ops::{Access, Offset, Op, decode, encode};
pub use replay::{Recording, Replay, ReplayError};
pub use seeds::{ops_for_region, ops_for_regions, seed_inputs};
// Re-exports: the foreign crates of this crate's public signatures, so that a fuzz target need
// not pin the same versions.
/// arbitrary, whose `Unstructured` the operation decoders read.
pub use arbitrary;
/// vmkit-exits, whose device traits, buses and triggers the harness drives.
pub use vmkit_exits;

#[cfg(test)]
mod pci_tests;
#[cfg(test)]
mod tests;
