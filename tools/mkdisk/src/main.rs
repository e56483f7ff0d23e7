//! `mkdisk`: builds a GPT disk image whose EFI system partition holds the given files.
//!
//! Exit status: 0 when the image was written, 1 when it could not be (one line on stderr says
//! why, and no partial image is left), 2 for a malformed command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use mkdisk::{DiskSpec, EspFile, Fat, create_image, parse_size};

/// Builds a GPT disk image with one FAT EFI system partition holding the given files.
///
/// Example (a Boot Loader Specification entry booting a Linux kernel):
///
///   mkdisk --out disk.img --size 64M --esp-file vmlinuz=/boot/vmlinuz
///   --esp-text loader/loader.conf='default linux'
///   --esp-text loader/entries/linux.conf="$(printf 'linux /vmlinuz\noptions console=ttyS0')"
#[derive(Debug, Parser)]
#[command(name = "mkdisk", version, about, verbatim_doc_comment)]
struct Cli {
    /// The image to write.
    #[arg(long, value_name = "PATH")]
    out: PathBuf,

    /// Disk size in bytes, with an optional K/M/G/T suffix (powers of 1024); a multiple of 512.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    size: u64,

    /// Copy the host file SOURCE to DEST on the ESP (directories are created); repeatable.
    #[arg(long = "esp-file", value_name = "DEST=SOURCE", value_parser = host_file)]
    esp_files: Vec<EspFile>,

    /// Write TEXT (plus a final newline if it has none) to DEST on the ESP; repeatable.
    #[arg(long = "esp-text", value_name = "DEST=TEXT", value_parser = text_file)]
    esp_texts: Vec<EspFile>,

    /// The ESP's FAT type; `auto` lets the partition's size choose.
    #[arg(long, value_name = "TYPE", default_value = "auto")]
    fat: FatArg,

    /// The ESP's volume label (up to 11 of A-Z, 0-9, space, '_' and '-').
    #[arg(long, value_name = "LABEL", default_value = "ESP")]
    label: String,

    /// Replace PATH if it exists (only a regular file is ever replaced).
    #[arg(long)]
    force: bool,
}

/// `--fat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FatArg {
    /// Chosen by the partition's size.
    Auto,
    /// FAT12.
    #[value(name = "12")]
    Fat12,
    /// FAT16.
    #[value(name = "16")]
    Fat16,
    /// FAT32.
    #[value(name = "32")]
    Fat32,
}

impl FatArg {
    fn fat(self) -> Option<Fat> {
        match self {
            FatArg::Auto => None,
            FatArg::Fat12 => Some(Fat::Fat12),
            FatArg::Fat16 => Some(Fat::Fat16),
            FatArg::Fat32 => Some(Fat::Fat32),
        }
    }
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn host_file(s: &str) -> Result<EspFile, String> {
    EspFile::parse_host(s).map_err(|e| e.to_string())
}

fn text_file(s: &str) -> Result<EspFile, String> {
    EspFile::parse_text(s).map_err(|e| e.to_string())
}

impl Cli {
    fn spec(self) -> (PathBuf, DiskSpec, bool) {
        let mut spec = DiskSpec::new(self.size);
        spec.fat = self.fat.fat();
        spec.label = self.label;
        spec.files = self.esp_files;
        spec.files.extend(self.esp_texts);
        (self.out, spec, self.force)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("mkdisk: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    let (out, spec, force) = cli.spec();
    match create_image(&out, &spec, force) {
        Ok(layout) => {
            println!(
                "{}: {} bytes, GPT, ESP sectors {}..={} ({}, {} files, {} bytes free)",
                out.display(),
                spec.size,
                layout.esp_first_lba,
                layout.esp_last_lba,
                layout.fat,
                spec.files.len(),
                layout.esp_free
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mkdisk: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_become_a_spec() {
        let cli = Cli::try_parse_from([
            "mkdisk",
            "--out",
            "d.img",
            "--size",
            "8M",
            "--esp-file",
            "vmlinuz=/k",
            "--esp-text",
            "loader/loader.conf=default linux",
            "--fat",
            "16",
            "--label",
            "boot",
            "--force",
        ])
        .unwrap();
        let (out, spec, force) = cli.spec();
        assert_eq!(out, PathBuf::from("d.img"));
        assert!(force);
        assert_eq!(spec.size, 8 << 20);
        assert_eq!(spec.fat, Some(Fat::Fat16));
        assert_eq!(spec.label, "boot");
        assert_eq!(spec.files.len(), 2);
        assert_eq!(spec.files[0].path.relative(), "vmlinuz");
        assert_eq!(spec.files[1].path.relative(), "loader/loader.conf");
    }

    #[test]
    fn fat_choices_and_bad_arguments() {
        assert_eq!(FatArg::Auto.fat(), None);
        assert_eq!(FatArg::Fat12.fat(), Some(Fat::Fat12));
        assert_eq!(FatArg::Fat32.fat(), Some(Fat::Fat32));
        let base = ["mkdisk", "--out", "d.img"];
        for extra in [
            &["--size", "8Q"][..],
            &["--size", "8M", "--esp-file", "novalue"],
            &["--size", "8M", "--esp-text", "a:b=c"],
            &["--size", "8M", "--fat", "64"],
            &[],
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }
}
