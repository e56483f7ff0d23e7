#![doc = include_str!("../README.md")]

pub mod elf;
mod error;
pub mod pvh;

pub use error::BootError;
pub use pvh::{PlacedModule, PvhBoot, PvhConfig, load_pvh};
