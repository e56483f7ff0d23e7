#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`DiskSpec`], [`EspFile`], [`EspPath`], [`Contents`], [`Fat`] describe the disk, and
//!   [`parse_size`], [`EspFile::parse_host`] and [`EspFile::parse_text`] read the command
//!   line's spelling of them.
//! - [`write_disk`] writes a spec onto any `Read + Write + Seek` device; [`create_image`]
//!   builds an image file atomically.
//! - [`PartitionSlice`] shows a file system one partition of a device as a whole volume.
//!
//! The partition table comes from the `gpt` crate and the file system from `fatfs`; this crate
//! only lays them out and copies the files.

mod error;
mod image;
mod slice;
mod spec;

pub use error::Error;
pub use image::{DiskLayout, create_image, write_disk};
pub use slice::PartitionSlice;
pub use spec::{
    Contents, DiskSpec, EspFile, EspPath, Fat, MAX_DISK_SIZE, MAX_NAME_LEN, MIN_DISK_SIZE,
    parse_size,
};

/// Bytes per logical sector.
pub const SECTOR_SIZE: u64 = 512;
/// The ESP's first sector: 1 MiB, the alignment partitioning tools use.
pub const ESP_FIRST_LBA: u64 = 2048;
/// The fewest sectors an ESP gets (1 MiB).
pub const MIN_ESP_SECTORS: u64 = 2048;
/// Sectors at the end of the disk for the backup GPT: 32 of partition entries and the header.
pub const GPT_BACKUP_SECTORS: u64 = 33;
/// The ESP's name in the partition table.
pub const ESP_PARTITION_NAME: &str = "EFI System Partition";
/// The ESP's partition type GUID.
pub const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
