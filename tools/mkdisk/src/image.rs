//! Writing a [`DiskSpec`] onto a device: protective MBR, GPT with the ESP, FAT, files.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::{GptConfig, partition_types};

use crate::error::Error;
use crate::slice::PartitionSlice;
use crate::spec::{Contents, DiskSpec, EspFile, Fat};
use crate::{ESP_FIRST_LBA, ESP_PARTITION_NAME, SECTOR_SIZE};

/// Bytes copied per step from a host file to the ESP.
const COPY_CHUNK: usize = 64 << 10;

/// Where things ended up on a disk [`write_disk`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLayout {
    /// The disk's size in sectors.
    pub disk_sectors: u64,
    /// The ESP's first sector (always [`ESP_FIRST_LBA`]).
    pub esp_first_lba: u64,
    /// The ESP's last sector (the GPT's last usable sector).
    pub esp_last_lba: u64,
    /// The ESP's FAT type.
    pub fat: Fat,
    /// The ESP's cluster size in bytes.
    pub cluster_size: u32,
    /// Bytes left free on the ESP.
    pub esp_free: u64,
}

/// Writes `spec` onto `device`, whose length must be `spec.size`: a protective MBR, a GPT
/// (128 entries) whose one partition, "EFI System Partition" of type
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B, spans LBA 2048 to the last usable sector, the FAT
/// volume on it, and the files with the directories they need.
///
/// Everything is checked that can be before the first byte is written: the spec, the device's
/// length, the host files (they must exist and be readable) and whether they fit.
pub fn write_disk<D>(device: &mut D, spec: &DiskSpec) -> Result<DiskLayout, Error>
where
    D: Read + Write + Seek + Debug,
{
    spec.validate()?;
    let label = spec.volume_label()?;
    let actual = device.seek(SeekFrom::End(0)).map_err(Error::Device)?;
    if actual != spec.size {
        return Err(Error::DeviceSize {
            expected: spec.size,
            actual,
        });
    }
    let sizes = spec
        .files
        .iter()
        .map(source_len)
        .collect::<Result<Vec<u64>, Error>>()?;
    let disk_sectors = spec.size / SECTOR_SIZE;

    // LBA 0: the protective MBR covers the whole disk (or as much as 32 bits count).
    let mbr = ProtectiveMBR::with_lb_size(u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(device).map_err(Error::Mbr)?;

    // The GPT, primary and backup.
    let mut gpt = GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *device, None)
        .map_err(Error::Gpt)?;
    let esp_last_lba = gpt.header().last_usable;
    let esp_sectors = esp_last_lba + 1 - ESP_FIRST_LBA;
    gpt.add_partition_at(
        ESP_PARTITION_NAME,
        1,
        ESP_FIRST_LBA,
        esp_sectors,
        partition_types::EFI,
        0,
    )
    .map_err(Error::Gpt)?;
    gpt.write().map_err(Error::Gpt)?;

    // The FAT volume.
    let start = ESP_FIRST_LBA * SECTOR_SIZE;
    let mut esp = PartitionSlice::new(&mut *device, start, esp_sectors * SECTOR_SIZE)
        .map_err(Error::Device)?;
    let mut options = FormatVolumeOptions::new().volume_label(label);
    if let Some(fat) = spec.fat {
        options = options.fat_type(fat.into());
    }
    fatfs::format_volume(&mut esp, options).map_err(Error::Format)?;
    esp.seek(SeekFrom::Start(0)).map_err(Error::Device)?;
    let fs = FileSystem::new(&mut esp, FsOptions::new()).map_err(Error::Format)?;
    let fat = Fat::from(fs.fat_type());
    if let Some(requested) = spec.fat.filter(|&requested| requested != fat) {
        return Err(Error::FatMismatch {
            requested,
            got: fat,
        });
    }

    // Will the files fit? Each takes whole clusters, and so does each new directory.
    let stats = fs.stats().map_err(Error::Format)?;
    let cluster_size = stats.cluster_size();
    let cluster = u64::from(cluster_size);
    let directories: BTreeSet<String> = spec
        .files
        .iter()
        .flat_map(|f| {
            let parents = f.path.parents();
            (1..=parents.len()).map(move |depth| parents[..depth].join("/").to_uppercase())
        })
        .collect();
    let needed = sizes
        .iter()
        .map(|len| len.div_ceil(cluster) * cluster)
        .sum::<u64>()
        + directories.len() as u64 * cluster;
    let available = u64::from(stats.free_clusters()) * cluster;
    if needed > available {
        return Err(Error::EspFull { needed, available });
    }

    for file in &spec.files {
        write_file(&fs, file)?;
    }
    let esp_free = u64::from(fs.stats().map_err(Error::Device)?.free_clusters()) * cluster;
    fs.unmount().map_err(Error::Device)?;
    device.flush().map_err(Error::Device)?;
    Ok(DiskLayout {
        disk_sectors,
        esp_first_lba: ESP_FIRST_LBA,
        esp_last_lba,
        fat,
        cluster_size,
        esp_free,
    })
}

/// Builds `spec` as the image file `path`, atomically: it is written beside `path` under a
/// temporary name and renamed into place only once complete, so a failure leaves no partial
/// image. An existing `path` is an error unless `overwrite` is set, and is never replaced
/// when it is not a regular file (a block device, a directory, a symbolic link). The image is
/// sparse where nothing was written.
pub fn create_image(path: &Path, spec: &DiskSpec, overwrite: bool) -> Result<DiskLayout, Error> {
    spec.validate()?;
    let output_error = |source| Error::WriteOutput {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(_) if !overwrite => return Err(Error::OutputExists(path.to_path_buf())),
        Ok(meta) if !meta.is_file() => return Err(Error::OutputNotRegular(path.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(output_error(e)),
    }
    let partial = partial_path(path).ok_or_else(|| {
        output_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ))
    })?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(output_error)?;
    let result = file
        .set_len(spec.size)
        .map_err(output_error)
        .and_then(|()| write_disk(&mut file, spec))
        .and_then(|layout| {
            file.sync_all().map_err(output_error)?;
            fs::rename(&partial, path).map_err(output_error)?;
            Ok(layout)
        });
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// `dir/.name.<pid>.partial` for `dir/name`.
fn partial_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.{}.partial", std::process::id())))
}

/// The length of a file's contents, checking that a host file can be opened.
fn source_len(file: &EspFile) -> Result<u64, Error> {
    match &file.contents {
        Contents::Bytes(bytes) => Ok(bytes.len() as u64),
        Contents::Host(path) => {
            let read_error = |source| Error::ReadSource {
                path: path.clone(),
                source,
            };
            let meta = File::open(path)
                .and_then(|f| f.metadata())
                .map_err(read_error)?;
            if !meta.is_file() {
                return Err(read_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                )));
            }
            Ok(meta.len())
        }
    }
}

/// Creates `file` (and its directories) on the volume and fills it.
fn write_file<D: Read + Write + Seek>(fs: &FileSystem<D>, file: &EspFile) -> Result<(), Error> {
    let esp_error = |source| Error::WriteEsp {
        path: file.path.to_string(),
        source,
    };
    let mut dir = fs.root_dir();
    for name in file.path.parents() {
        dir = dir.create_dir(name).map_err(esp_error)?;
    }
    let mut out = dir.create_file(file.path.file_name()).map_err(esp_error)?;
    out.truncate().map_err(esp_error)?;
    match &file.contents {
        Contents::Bytes(bytes) => out.write_all(bytes).map_err(esp_error)?,
        Contents::Host(path) => {
            let read_error = |source| Error::ReadSource {
                path: path.clone(),
                source,
            };
            let mut source = File::open(path).map_err(read_error)?;
            let mut buf = vec![0u8; COPY_CHUNK];
            loop {
                let n = match source.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(e)),
                };
                out.write_all(&buf[..n]).map_err(esp_error)?;
            }
        }
    }
    out.flush().map_err(esp_error)
}
