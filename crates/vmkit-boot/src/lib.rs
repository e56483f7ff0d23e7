#![doc = include_str!("../README.md")]

pub mod elf;
mod error;
pub mod page_tables;
pub mod pvh;

pub use error::BootError;
pub use page_tables::{BootPageTables, build_boot_page_tables, build_boot_page_tables_in};
pub use pvh::{PlacedModule, PvhBoot, PvhConfig, load_pvh};
