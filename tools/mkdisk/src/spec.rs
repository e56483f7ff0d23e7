//! What goes on the disk: its size, the ESP's FAT type and label, and the files, with the
//! parsers the command line uses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use crate::error::Error;
use crate::{ESP_FIRST_LBA, GPT_BACKUP_SECTORS, MIN_ESP_SECTORS, SECTOR_SIZE};

/// The smallest disk: the primary GPT and alignment gap, a minimal ESP, the backup GPT.
pub const MIN_DISK_SIZE: u64 = (ESP_FIRST_LBA + MIN_ESP_SECTORS + GPT_BACKUP_SECTORS) * SECTOR_SIZE;
/// The largest disk: an ESP of 2^32 - 1 sectors (the most a FAT volume counts) plus the GPT.
pub const MAX_DISK_SIZE: u64 = (ESP_FIRST_LBA + u32::MAX as u64 + GPT_BACKUP_SECTORS) * SECTOR_SIZE;
/// The longest name of one path component (a FAT long file name).
pub const MAX_NAME_LEN: usize = 255;
/// Characters a FAT long file name may not hold (besides control characters).
const FORBIDDEN_CHARS: &[char] = &['"', '*', ':', '<', '>', '?', '|'];

/// A FAT variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fat {
    /// FAT12: up to 4084 clusters.
    Fat12,
    /// FAT16: 4085 to 65524 clusters.
    Fat16,
    /// FAT32: 65525 clusters and more (at least about 32 MiB of ESP).
    Fat32,
}

impl fmt::Display for Fat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fat::Fat12 => "FAT12",
            Fat::Fat16 => "FAT16",
            Fat::Fat32 => "FAT32",
        })
    }
}

impl From<fatfs::FatType> for Fat {
    fn from(fat: fatfs::FatType) -> Self {
        match fat {
            fatfs::FatType::Fat12 => Fat::Fat12,
            fatfs::FatType::Fat16 => Fat::Fat16,
            fatfs::FatType::Fat32 => Fat::Fat32,
        }
    }
}

impl From<Fat> for fatfs::FatType {
    fn from(fat: Fat) -> Self {
        match fat {
            Fat::Fat12 => fatfs::FatType::Fat12,
            Fat::Fat16 => fatfs::FatType::Fat16,
            Fat::Fat32 => fatfs::FatType::Fat32,
        }
    }
}

/// A validated path on the ESP: one or more names separated by `/` (or `\`, as UEFI spells
/// them), each a legal FAT long file name. A leading separator is optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspPath {
    components: Vec<String>,
}

impl EspPath {
    /// Parses and validates `path`.
    pub fn parse(path: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidEspPath {
            path: path.to_string(),
            reason,
        };
        let trimmed = path.strip_prefix(['/', '\\']).unwrap_or(path);
        if trimmed.is_empty() {
            return Err(invalid("it names no file"));
        }
        let mut components = Vec::new();
        for name in trimmed.split(['/', '\\']) {
            if name.is_empty() {
                return Err(invalid("empty component"));
            }
            if name == "." || name == ".." {
                return Err(invalid("'.' and '..' are not allowed"));
            }
            if name.chars().count() > MAX_NAME_LEN {
                return Err(invalid("a component is longer than 255 characters"));
            }
            if name
                .chars()
                .any(|c| c.is_control() || FORBIDDEN_CHARS.contains(&c))
            {
                return Err(invalid(
                    "FAT names cannot hold control characters or any of \" * : < > ? |",
                ));
            }
            if name.ends_with(['.', ' ']) {
                return Err(invalid("FAT names cannot end with '.' or a space"));
            }
            components.push(name.to_string());
        }
        Ok(Self { components })
    }

    /// The names, outermost directory first, the file last.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The directories that hold the file, outermost first (empty for a file in the root).
    pub fn parents(&self) -> &[String] {
        &self.components[..self.components.len() - 1]
    }

    /// The file's own name.
    pub fn file_name(&self) -> &str {
        // `parse` never builds a path without components.
        self.components.last().map_or("", String::as_str)
    }

    /// The path relative to the root, `/`-separated (as fatfs takes it).
    pub fn relative(&self) -> String {
        self.components.join("/")
    }

    /// The FAT-equivalent form: names compare without regard to case.
    fn key(components: &[String]) -> String {
        components.join("/").to_uppercase()
    }
}

impl fmt::Display for EspPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.relative())
    }
}

/// Where a file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// A file on the host, read while the image is written.
    Host(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// One file to place on the ESP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EspFile {
    /// Where it goes.
    pub path: EspPath,
    /// What it holds.
    pub contents: Contents,
}

impl EspFile {
    /// `DEST=SOURCE`: the host file `SOURCE` at ESP path `DEST` (split at the first `=`).
    pub fn parse_host(arg: &str) -> Result<Self, Error> {
        let (dest, source) = split_dest(arg)?;
        if source.is_empty() {
            return Err(Error::MissingEquals(arg.to_string()));
        }
        Ok(Self {
            path: EspPath::parse(dest)?,
            contents: Contents::Host(PathBuf::from(source)),
        })
    }

    /// `DEST=TEXT`: a file at ESP path `DEST` holding `TEXT`, with a final newline added when
    /// `TEXT` lacks one (configuration files end with one).
    pub fn parse_text(arg: &str) -> Result<Self, Error> {
        let (dest, text) = split_dest(arg)?;
        let mut bytes = text.as_bytes().to_vec();
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
        Ok(Self {
            path: EspPath::parse(dest)?,
            contents: Contents::Bytes(bytes),
        })
    }
}

fn split_dest(arg: &str) -> Result<(&str, &str), Error> {
    arg.split_once('=')
        .ok_or_else(|| Error::MissingEquals(arg.to_string()))
}

/// A disk to build: a GPT with one EFI system partition from LBA 2048 (1 MiB) to the last
/// usable sector, formatted FAT and holding `files`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Disk size in bytes: a multiple of 512 in [`MIN_DISK_SIZE`]`..=`[`MAX_DISK_SIZE`].
    pub size: u64,
    /// The ESP's FAT type; `None` lets the partition's size choose (as `mkfs.fat` does).
    pub fat: Option<Fat>,
    /// The ESP's volume label (up to 11 of `A-Z`, `0-9`, space, `_`, `-`; lower case is
    /// raised).
    pub label: String,
    /// The files, created in this order (with their directories).
    pub files: Vec<EspFile>,
}

impl DiskSpec {
    /// An empty disk of `size` bytes, FAT type chosen by size, label `ESP`.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            fat: None,
            label: "ESP".to_string(),
            files: Vec::new(),
        }
    }

    /// Adds a file.
    pub fn with_file(mut self, path: EspPath, contents: Contents) -> Self {
        self.files.push(EspFile { path, contents });
        self
    }

    /// Checks the size, the label and that no two files collide (FAT names ignore case, and
    /// no path may be both a file and a directory).
    pub fn validate(&self) -> Result<(), Error> {
        if !self.size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::SizeNotSectorMultiple(self.size));
        }
        if self.size < MIN_DISK_SIZE {
            return Err(Error::DiskTooSmall {
                size: self.size,
                min: MIN_DISK_SIZE,
            });
        }
        if self.size > MAX_DISK_SIZE {
            return Err(Error::DiskTooLarge {
                size: self.size,
                max: MAX_DISK_SIZE,
            });
        }
        self.volume_label()?;
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for file in &self.files {
            let components = file.path.components();
            let key = EspPath::key(components);
            if files.insert(key.clone(), &file.path).is_some() {
                return Err(Error::DuplicateEspPath(file.path.to_string()));
            }
            for depth in 1..components.len() {
                dirs.insert(EspPath::key(&components[..depth]));
            }
        }
        if let Some(path) = files
            .iter()
            .find_map(|(key, path)| dirs.contains(key).then_some(path))
        {
            return Err(Error::FileDirConflict(path.to_string()));
        }
        Ok(())
    }

    /// The label as the 11 space-padded bytes of the boot sector.
    pub fn volume_label(&self) -> Result<[u8; 11], Error> {
        let upper = self.label.to_ascii_uppercase();
        let ok = upper.len() <= 11
            && upper
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" _-".contains(&b));
        if !ok {
            return Err(Error::InvalidLabel(self.label.clone()));
        }
        let mut label = [b' '; 11];
        label[..upper.len()].copy_from_slice(upper.as_bytes());
        Ok(label)
    }
}

/// Parses a size: a number of bytes with an optional `K`, `M`, `G` or `T` suffix (powers of
/// 1024, either case).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let invalid = || Error::InvalidSize(s.to_string());
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 10),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 20),
        Some(b'g' | b'G') => (&t[..t.len() - 1], 30),
        Some(b't' | b'T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    n.checked_mul(1 << shift).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size(" 2k ").unwrap(), 2048);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("3T").unwrap(), 3 << 40);
        for bad in ["", "M", "-1M", "1.5M", "12Q", "0x10", "99999999999T", "1 M"] {
            let err = parse_size(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSize(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn esp_paths_validate_like_fat_names() {
        let p = EspPath::parse("/loader/entries/linux.conf").unwrap();
        assert_eq!(p.components(), ["loader", "entries", "linux.conf"]);
        assert_eq!(p.parents(), ["loader", "entries"]);
        assert_eq!(p.file_name(), "linux.conf");
        assert_eq!(p.relative(), "loader/entries/linux.conf");
        assert_eq!(p.to_string(), "/loader/entries/linux.conf");
        let uefi = EspPath::parse(r"\EFI\BOOT\BOOTX64.EFI").unwrap();
        assert_eq!(uefi.relative(), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(EspPath::parse("vmlinuz").unwrap().parents().len(), 0);
        let long = "x".repeat(256);
        for bad in [
            "",
            "/",
            "a//b",
            "a/",
            "./a",
            "a/../b",
            "a:b",
            "a*",
            "a?",
            "a|b",
            "a<b",
            "a\"b",
            "tab\there",
            "dot.",
            "space ",
            &long,
        ] {
            let err = EspPath::parse(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidEspPath { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(EspPath::parse(&"y".repeat(255)).is_ok());
    }

    #[test]
    fn file_arguments_split_at_the_first_equals() {
        let f = EspFile::parse_host("vmlinuz=/boot/vmlinuz-6.1").unwrap();
        assert_eq!(f.path.relative(), "vmlinuz");
        assert_eq!(f.contents, Contents::Host("/boot/vmlinuz-6.1".into()));
        let f = EspFile::parse_host("a=b=c").unwrap();
        assert_eq!(f.contents, Contents::Host("b=c".into()));
        assert!(matches!(
            EspFile::parse_host("vmlinuz"),
            Err(Error::MissingEquals(_))
        ));
        assert!(matches!(
            EspFile::parse_host("vmlinuz="),
            Err(Error::MissingEquals(_))
        ));
        assert!(matches!(
            EspFile::parse_host("=x"),
            Err(Error::InvalidEspPath { .. })
        ));

        let t = EspFile::parse_text("loader/loader.conf=default linux").unwrap();
        assert_eq!(t.contents, Contents::Bytes(b"default linux\n".to_vec()));
        let t = EspFile::parse_text("empty=").unwrap();
        assert_eq!(t.contents, Contents::Bytes(b"\n".to_vec()));
        let t = EspFile::parse_text("two=a\nb\n").unwrap();
        assert_eq!(t.contents, Contents::Bytes(b"a\nb\n".to_vec()));
        assert!(EspFile::parse_text("no-equals").is_err());
    }

    #[test]
    fn specs_reject_bad_sizes_labels_and_collisions() {
        let ok = DiskSpec::new(MIN_DISK_SIZE);
        ok.validate().unwrap();
        assert_eq!(&ok.volume_label().unwrap(), b"ESP        ");
        assert!(matches!(
            DiskSpec::new(MIN_DISK_SIZE + 1).validate(),
            Err(Error::SizeNotSectorMultiple(_))
        ));
        assert!(matches!(
            DiskSpec::new(MIN_DISK_SIZE - 512).validate(),
            Err(Error::DiskTooSmall { .. })
        ));
        assert!(matches!(
            DiskSpec::new(MAX_DISK_SIZE + 512).validate(),
            Err(Error::DiskTooLarge { .. })
        ));
        DiskSpec::new(MAX_DISK_SIZE).validate().unwrap();

        let mut labelled = DiskSpec::new(MIN_DISK_SIZE);
        labelled.label = "boot_2-a".into();
        assert_eq!(&labelled.volume_label().unwrap(), b"BOOT_2-A   ");
        for bad in ["TWELVE CHARS", "é", "a.b"] {
            labelled.label = bad.into();
            assert!(matches!(labelled.validate(), Err(Error::InvalidLabel(_))));
        }

        let bytes = || Contents::Bytes(Vec::new());
        let path = |p| EspPath::parse(p).unwrap();
        let dup = DiskSpec::new(MIN_DISK_SIZE)
            .with_file(path("EFI/BOOT/BOOTX64.EFI"), bytes())
            .with_file(path("efi/boot/bootx64.efi"), bytes());
        assert!(matches!(dup.validate(), Err(Error::DuplicateEspPath(_))));
        let conflict = DiskSpec::new(MIN_DISK_SIZE)
            .with_file(path("loader/entries"), bytes())
            .with_file(path("Loader/Entries/linux.conf"), bytes());
        let err = conflict.validate().unwrap_err();
        assert!(matches!(err, Error::FileDirConflict(ref p) if p == "/loader/entries"));
        let fine = DiskSpec::new(MIN_DISK_SIZE)
            .with_file(path("loader/loader.conf"), bytes())
            .with_file(path("loader/entries/linux.conf"), bytes());
        fine.validate().unwrap();
    }

    #[test]
    fn fat_types_convert_and_display() {
        for fat in [Fat::Fat12, Fat::Fat16, Fat::Fat32] {
            assert_eq!(Fat::from(fatfs::FatType::from(fat)), fat);
        }
        assert_eq!(Fat::Fat32.to_string(), "FAT32");
        assert_eq!(Fat::Fat16.to_string(), "FAT16");
        assert_eq!(Fat::Fat12.to_string(), "FAT12");
    }
}
