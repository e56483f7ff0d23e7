//! Input types, target bodies and seed-corpus generators shared by vmkit's fuzz targets.
//!
//! Each module owns one fuzz surface: `run(data: &[u8])` is the target body (the fuzz target in
//! `fuzz_targets/` only calls it), and the module's tests replay the committed seeds in
//! `fuzz/seeds/<target>/` on stable Rust in every `cargo test`.

pub mod acpi_pm;
pub mod assist;
pub mod bzimage;
pub mod dispatch;
pub mod kvm_exit;
pub mod layout;
pub mod legacy;
pub mod ops;
pub mod paging;
pub mod paging_shadow;
pub mod patched_image;
pub mod pci_config;
pub mod pci_function;
pub mod pvh;
pub mod record;
#[cfg(test)]
mod seed_files;
pub mod testdev;
pub mod virtio_blk;
pub mod virtio_pci;
