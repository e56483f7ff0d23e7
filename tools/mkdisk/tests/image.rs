//! Images built by the library, read back with the same crates (`gpt`, `fatfs`).

#![allow(clippy::unwrap_used)]

use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use mkdisk::{
    Contents, DiskSpec, ESP_FIRST_LBA, ESP_PARTITION_NAME, ESP_TYPE_GUID, Error, EspPath, Fat,
    MIN_DISK_SIZE, PartitionSlice, create_image, write_disk,
};

fn path(p: &str) -> EspPath {
    EspPath::parse(p).unwrap()
}

fn bytes(b: &[u8]) -> Contents {
    Contents::Bytes(b.to_vec())
}

/// Deterministic, non-repeating-looking content.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mkdisk-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the ESP of `disk` after checking the partition table.
fn open_esp<D: Read + Write + Seek + std::fmt::Debug>(
    disk: &mut D,
) -> fatfs::FileSystem<PartitionSlice<&mut D>> {
    let size = disk.seek(SeekFrom::End(0)).unwrap();
    let (header, esp) = {
        let gpt = gpt::GptConfig::new().open_from_device(&mut *disk).unwrap();
        assert!(gpt.backup_header().is_ok());
        let parts = gpt.partitions();
        assert_eq!(parts.len(), 1);
        (gpt.primary_header().unwrap().clone(), parts[&1].clone())
    };
    assert_eq!(header.first_usable, 34);
    assert_eq!(header.num_parts, 128);
    assert_eq!(header.backup_lba, size / 512 - 1);
    assert_eq!(esp.part_type_guid, gpt::partition_types::EFI);
    assert_eq!(
        esp.part_type_guid.guid.to_string().to_uppercase(),
        ESP_TYPE_GUID
    );
    assert_eq!(esp.name, ESP_PARTITION_NAME);
    assert_eq!(esp.first_lba, ESP_FIRST_LBA);
    assert_eq!(esp.last_lba, header.last_usable);
    let mbr =
        gpt::mbr::ProtectiveMBR::from_disk(&mut *disk, gpt::disk::LogicalBlockSize::Lb512).unwrap();
    assert_eq!(mbr.partition(0).unwrap().os_type, 0xEE);
    let start = esp.first_lba * 512;
    let len = (esp.last_lba + 1) * 512 - start;
    let slice = PartitionSlice::new(disk, start, len).unwrap();
    fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap()
}

fn read_file<D: Read + Write + Seek>(fs: &fatfs::FileSystem<D>, p: &str) -> Vec<u8> {
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(p)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn boot_loader_spec_disk_reads_back() {
    let dir = TempDir::new("bls");
    let kernel = pattern(3 << 20, 1);
    let initrd = pattern(1_234_567, 2);
    let kernel_path = dir.0.join("vmlinuz");
    let initrd_path = dir.0.join("initrd.img");
    std::fs::write(&kernel_path, &kernel).unwrap();
    std::fs::write(&initrd_path, &initrd).unwrap();
    let entry = b"title Linux\nlinux /vmlinuz\ninitrd /initrd.img\noptions console=ttyS0\n";
    let spec = DiskSpec::new(64 << 20)
        .with_file(path("vmlinuz"), Contents::Host(kernel_path))
        .with_file(path("/initrd.img"), Contents::Host(initrd_path))
        .with_file(path("loader/loader.conf"), bytes(b"default linux\n"))
        .with_file(path("loader/entries/linux.conf"), bytes(entry))
        .with_file(path(r"\EFI\BOOT\BOOTX64.EFI"), bytes(b"MZ"));
    let image = dir.0.join("disk.img");
    let layout = create_image(&image, &spec, false).unwrap();
    assert_eq!(layout.disk_sectors, 64 << 11);
    assert_eq!(layout.esp_first_lba, 2048);
    assert_eq!(layout.esp_last_lba, (64 << 11) - 34);
    assert_eq!(layout.fat, Fat::Fat16);
    assert!(layout.esp_free > 50 << 20);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
    // No temporary file is left beside the image.
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 3);

    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let fs = open_esp(&mut file);
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat16);
    assert_eq!(fs.volume_label(), "ESP");
    assert_eq!(read_file(&fs, "vmlinuz"), kernel);
    assert_eq!(read_file(&fs, "initrd.img"), initrd);
    assert_eq!(read_file(&fs, "loader/loader.conf"), b"default linux\n");
    assert_eq!(read_file(&fs, "loader/entries/linux.conf"), entry);
    assert_eq!(read_file(&fs, "EFI/BOOT/BOOTX64.EFI"), b"MZ");
    let names: Vec<String> = fs
        .root_dir()
        .open_dir("loader/entries")
        .unwrap()
        .iter()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "." && n != "..")
        .collect();
    assert_eq!(names, ["linux.conf"]);
}

#[test]
fn fat_type_follows_size_or_request() {
    for (size, fat, expected) in [
        (MIN_DISK_SIZE, None, Fat::Fat12),
        (8 << 20, None, Fat::Fat16),
        (8 << 20, Some(Fat::Fat12), Fat::Fat12),
        (8 << 20, Some(Fat::Fat16), Fat::Fat16),
        (40 << 20, Some(Fat::Fat32), Fat::Fat32),
    ] {
        let mut spec = DiskSpec::new(size).with_file(path("a/b/c.txt"), bytes(b"deep"));
        spec.fat = fat;
        spec.label = "vmkit".into();
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        let layout = write_disk(&mut disk, &spec).unwrap();
        assert_eq!(layout.fat, expected, "{size} {fat:?}");
        let fs = open_esp(&mut disk);
        assert_eq!(Fat::from(fs.fat_type()), expected);
        assert_eq!(fs.volume_label(), "VMKIT");
        assert_eq!(read_file(&fs, "A/B/C.TXT"), b"deep");
    }
}

#[test]
fn impossible_fat_requests_and_full_esps_are_refused() {
    let mut spec = DiskSpec::new(8 << 20);
    spec.fat = Some(Fat::Fat32);
    let mut disk = Cursor::new(vec![0u8; 8 << 20]);
    let err = write_disk(&mut disk, &spec).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FatMismatch {
                requested: Fat::Fat32,
                ..
            }
        ),
        "{err}"
    );

    let spec = DiskSpec::new(4 << 20).with_file(path("big"), Contents::Bytes(vec![1; 4 << 20]));
    let mut disk = Cursor::new(vec![0u8; 4 << 20]);
    let err = write_disk(&mut disk, &spec).unwrap_err();
    assert!(matches!(err, Error::EspFull { .. }), "{err}");
    assert!(err.to_string().contains("make the disk larger"));
}

#[test]
fn device_and_source_problems_are_reported_before_writing() {
    let spec = DiskSpec::new(8 << 20);
    let mut short = Cursor::new(vec![0u8; 4 << 20]);
    assert!(matches!(
        write_disk(&mut short, &spec),
        Err(Error::DeviceSize {
            expected: 8388608,
            actual: 4194304
        })
    ));

    let dir = TempDir::new("sources");
    let missing = DiskSpec::new(8 << 20).with_file(path("k"), Contents::Host(dir.0.join("nope")));
    let mut disk = Cursor::new(vec![0u8; 8 << 20]);
    let err = write_disk(&mut disk, &missing).unwrap_err();
    assert!(matches!(err, Error::ReadSource { .. }), "{err}");
    assert!(disk.get_ref().iter().all(|&b| b == 0), "nothing written");

    let a_dir = DiskSpec::new(8 << 20).with_file(path("k"), Contents::Host(dir.0.clone()));
    let err = write_disk(&mut disk, &a_dir).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn outputs_are_created_atomically_and_never_clobbered() {
    let dir = TempDir::new("outputs");
    let image = dir.0.join("disk.img");
    let spec = DiskSpec::new(MIN_DISK_SIZE);
    create_image(&image, &spec, false).unwrap();
    let err = create_image(&image, &spec, false).unwrap_err();
    assert!(matches!(err, Error::OutputExists(_)), "{err}");
    assert!(err.to_string().contains("--force"));
    create_image(&image, &DiskSpec::new(4 << 20), true).unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 4 << 20);

    // A directory (and a symbolic link) is never replaced, even with overwrite.
    let err = create_image(&dir.0, &spec, true).unwrap_err();
    assert!(matches!(err, Error::OutputNotRegular(_)), "{err}");
    let link = dir.0.join("link.img");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    assert!(matches!(
        create_image(&link, &spec, true),
        Err(Error::OutputNotRegular(_))
    ));

    // A failure after the temporary file exists leaves nothing behind.
    let failing = DiskSpec::new(8 << 20).with_file(path("k"), Contents::Host(dir.0.join("gone")));
    let target = dir.0.join("failed.img");
    assert!(create_image(&target, &failing, false).is_err());
    assert!(!target.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Invalid specs and unwritable places are refused before anything is created.
    assert!(matches!(
        create_image(&dir.0.join("x.img"), &DiskSpec::new(1000), false),
        Err(Error::SizeNotSectorMultiple(1000))
    ));
    let err = create_image(&dir.0.join("no/such/dir/x.img"), &spec, false).unwrap_err();
    assert!(matches!(err, Error::WriteOutput { .. }), "{err}");
    let err = create_image(std::path::Path::new("/"), &spec, true).unwrap_err();
    assert!(matches!(err, Error::OutputNotRegular(_)), "{err}");
    let err = create_image(std::path::Path::new(".."), &spec, false).unwrap_err();
    assert!(matches!(err, Error::OutputExists(_)), "{err}");
}

/// A device whose writes start failing after `budget` successful ones.
#[derive(Debug)]
struct Failing {
    inner: Cursor<Vec<u8>>,
    budget: usize,
    flushes: usize,
}

impl Failing {
    fn new(size: usize, budget: usize) -> Self {
        Self {
            inner: Cursor::new(vec![0; size]),
            budget,
            flushes: usize::MAX,
        }
    }
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("injected write failure"));
        }
        self.budget -= 1;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.flushes == 0 {
            return Err(io::Error::other("injected flush failure"));
        }
        self.flushes -= 1;
        Ok(())
    }
}

impl Seek for Failing {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn device_failures_surface_as_typed_errors() {
    let spec = DiskSpec::new(8 << 20)
        .with_file(path("dir/file"), Contents::Bytes(vec![7; 100_000]))
        .with_file(path("dir/other"), bytes(b"x"));
    let mut budget = 0;
    let mut seen = Vec::new();
    // Walk the failure point through the whole build: every stage fails cleanly.
    loop {
        let mut device = Failing::new(8 << 20, budget);
        match write_disk(&mut device, &spec) {
            Ok(_) => break,
            Err(e) => {
                let kind = match e {
                    Error::Mbr(_) => "mbr",
                    Error::Gpt(_) => "gpt",
                    Error::Format(_) => "format",
                    Error::WriteEsp { .. } => "esp",
                    Error::Device(_) => "device",
                    other => panic!("unexpected error {other}"),
                };
                if seen.last() != Some(&kind) {
                    seen.push(kind);
                }
            }
        }
        budget += 1;
        assert!(budget < 10_000, "the build never succeeded");
    }
    for stage in ["mbr", "gpt", "format", "esp"] {
        assert!(seen.contains(&stage), "{stage} missing from {seen:?}");
    }

    // Flushes fail too: the last one is the device's own.
    let mut flushes = 0;
    let mut last = None;
    loop {
        let mut flaky = Failing::new(8 << 20, usize::MAX);
        flaky.flushes = flushes;
        match write_disk(&mut flaky, &spec) {
            Ok(_) => break,
            Err(e) => last = Some(e),
        }
        flushes += 1;
        assert!(flushes < 1000, "the build never succeeded");
    }
    assert!(matches!(last, Some(Error::Device(_))), "{last:?}");
}
