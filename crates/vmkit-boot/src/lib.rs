#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod acpi;
mod boot_data;
pub mod bzimage;
pub mod elf;
mod format;
pub mod page_tables;
pub mod pvh;
pub mod smbios;

pub use acpi::{AcpiError, AcpiPlatform, AcpiTables, mark_acpi_memory, write_acpi_tables};
pub use boot_data::BootDataError;
pub use bzimage::{BzImageError, LinuxBoot, LinuxConfig, load_bzimage};
pub use elf::ElfError;
pub use format::{ImageFormat, detect_image};
pub use page_tables::{
    BootPageTables, PageTableError, build_boot_page_tables, build_boot_page_tables_in,
};
pub use pvh::{PlacedModule, PvhBoot, PvhConfig, PvhError, load_pvh};
pub use smbios::{SmbiosDescription, SmbiosError, SmbiosTables, write_smbios_tables};
// Re-exports: the foreign crates and types of this crate's public signatures, so that callers
// need not depend on the same versions themselves.
/// linux-loader, whose boot-protocol structures (`setup_header`, `boot_params`) the bzImage
/// header exposes.
pub use linux_loader;
/// vm-memory, whose guest memory (`GuestMemoryBackend`) every loader and table writer fills.
pub use vm_memory;
/// The guest-physical address type of every load result (vm-memory's, as vmkit-vcpu's entry
/// set-up takes it), re-exported so that callers need not pin the same vm-memory version.
pub use vm_memory::GuestAddress;
