#![doc = include_str!("../README.md")]

pub mod acpi;
pub mod bzimage;
pub mod elf;
mod error;
mod format;
pub mod page_tables;
pub mod pvh;
pub mod smbios;

pub use acpi::{AcpiPlatform, AcpiTables, mark_acpi_memory, write_acpi_tables};
pub use bzimage::{LinuxBoot, LinuxConfig, load_bzimage};
pub use error::BootError;
pub use format::{ImageFormat, detect_image};
pub use page_tables::{BootPageTables, build_boot_page_tables, build_boot_page_tables_in};
pub use pvh::{PlacedModule, PvhBoot, PvhConfig, load_pvh};
pub use smbios::{SmbiosDescription, SmbiosTables, write_smbios_tables};
