//! The one error type: each message is a single line naming what was wrong.

use std::io;
use std::path::PathBuf;

use crate::spec::Fat;

/// Why a disk image could not be described or built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid size {0:?}: expected bytes with an optional K, M, G or T suffix (powers of 1024).
    #[error(
        "invalid size {0:?}: expected bytes with an optional K, M, G or T suffix (powers of 1024)"
    )]
    InvalidSize(String),
    /// Disk size {0} is not a multiple of 512 bytes.
    #[error("disk size {0} is not a multiple of 512 bytes")]
    SizeNotSectorMultiple(u64),
    /// Disk size {size} is too small: a GPT disk with an ESP needs at least {min} bytes.
    #[error("disk size {size} is too small: a GPT disk with an ESP needs at least {min} bytes")]
    DiskTooSmall {
        /// The size asked for.
        size: u64,
        /// The smallest size that works.
        min: u64,
    },
    /// Disk size {size} is too large: a FAT ESP holds at most 2^32 - 1 sectors, so the disk at most {max} bytes.
    #[error(
        "disk size {size} is too large: a FAT ESP holds at most 2^32 - 1 sectors, so the disk at most {max} bytes"
    )]
    DiskTooLarge {
        /// The size asked for.
        size: u64,
        /// The largest size that works.
        max: u64,
    },
    /// The device is {actual} bytes long, but the disk was described as {expected} bytes.
    #[error("the device is {actual} bytes long, but the disk was described as {expected} bytes")]
    DeviceSize {
        /// The size in the [`DiskSpec`](crate::DiskSpec).
        expected: u64,
        /// The device's length.
        actual: u64,
    },
    /// Invalid ESP path {path:?}: {reason}.
    #[error("invalid ESP path {path:?}: {reason}")]
    InvalidEspPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Expected DEST=SOURCE, got {0:?}.
    #[error("expected DEST=SOURCE, got {0:?}")]
    MissingEquals(String),
    /// ESP path {0} is given twice (FAT names ignore case).
    #[error("ESP path {0} is given twice (FAT names ignore case)")]
    DuplicateEspPath(String),
    /// ESP path {0} is both a file and a directory.
    #[error("ESP path {0} is both a file and a directory")]
    FileDirConflict(String),
    /// Invalid volume label {0:?}: use up to 11 of A-Z, 0-9, space, '_' and '-'.
    #[error("invalid volume label {0:?}: use up to 11 of A-Z, 0-9, space, '_' and '-'")]
    InvalidLabel(String),
    /// Cannot read {path}: {source}.
    #[error("cannot read {path}: {source}")]
    ReadSource {
        /// The host file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// {0} already exists (pass --force to replace it).
    #[error("{0} already exists (pass --force to replace it)")]
    OutputExists(PathBuf),
    /// {0} exists and is not a regular file; refusing to replace it.
    #[error("{0} exists and is not a regular file; refusing to replace it")]
    OutputNotRegular(PathBuf),
    /// Cannot write {path}: {source}.
    #[error("cannot write {path}: {source}")]
    WriteOutput {
        /// The image being written.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Writing the protective MBR failed: {0}.
    #[error("writing the protective MBR failed: {0}")]
    Mbr(#[source] gpt::mbr::MBRError),
    /// Writing the GPT failed: {0}.
    #[error("writing the GPT failed: {0}")]
    Gpt(#[source] gpt::GptError),
    /// Formatting the ESP failed: {0}.
    #[error("formatting the ESP failed: {0}")]
    Format(#[source] io::Error),
    /// The ESP came out {got}, not the requested {requested} (the partition's size does not suit {requested}).
    #[error(
        "the ESP came out {got}, not the requested {requested} (the partition's size does not suit {requested})"
    )]
    FatMismatch {
        /// The FAT type asked for.
        requested: Fat,
        /// The FAT type the partition's size led to.
        got: Fat,
    },
    /// The files need {needed} bytes of clusters, the ESP has {available} bytes free; make the disk larger.
    #[error(
        "the files need {needed} bytes of clusters, the ESP has {available} bytes free; make the disk larger"
    )]
    EspFull {
        /// Bytes the files and directories take, rounded up to clusters.
        needed: u64,
        /// Free bytes on the freshly formatted ESP.
        available: u64,
    },
    /// Cannot write {path} to the ESP: {source}.
    #[error("cannot write {path} to the ESP: {source}")]
    WriteEsp {
        /// The ESP path.
        path: String,
        /// What the file system said.
        source: io::Error,
    },
    /// I/O error on the disk device: {0}.
    #[error("I/O error on the disk device: {0}")]
    Device(#[source] io::Error),
}
