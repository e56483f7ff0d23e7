//! The `mkdisk` binary, cross-checked with independent tools: `sgdisk` (Debian's `gdisk`) reads
//! the partition table and `mtools` the FAT file system. Both are installed by
//! `scripts/setup.sh`; a missing tool fails the test, naming the package.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MKDISK: &str = env!("CARGO_BIN_EXE_mkdisk");

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mkdisk-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkdisk(args: &[&str]) -> Output {
    Command::new(MKDISK).args(args).output().unwrap()
}

fn tool(program: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install Debian's {package} (scripts/setup.sh does)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `image@@offset`, mtools' spelling of a partition at a byte offset.
fn mtools_target(image: &Path) -> String {
    format!("{}@@{}", image.display(), 2048 * 512)
}

#[test]
fn built_image_passes_sgdisk_and_mtools() {
    let dir = TempDir::new("cross");
    let kernel: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let kernel_path = dir.0.join("vmlinuz");
    std::fs::write(&kernel_path, &kernel).unwrap();
    let image = dir.0.join("disk.img");
    let out = mkdisk(&[
        "--out",
        image.to_str().unwrap(),
        "--size",
        "64M",
        "--esp-file",
        &format!("vmlinuz={}", kernel_path.display()),
        "--esp-text",
        "loader/loader.conf=default linux",
        "--esp-text",
        "loader/entries/linux.conf=linux /vmlinuz\noptions console=ttyS0",
    ]);
    assert!(out.status.success(), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("ESP sectors 2048..=131038"), "{summary}");
    assert!(summary.contains("FAT16, 3 files"), "{summary}");

    // sgdisk verifies both headers, the CRCs and the partition and finds the ESP.
    let verify = tool("sgdisk", "gdisk", &["--verify", image.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let info = tool("sgdisk", "gdisk", &["--info=1", image.to_str().unwrap()]);
    assert!(
        info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B (EFI system partition)"),
        "{info}"
    );
    assert!(info.contains("First sector: 2048 "), "{info}");
    assert!(info.contains("Last sector: 131038 "), "{info}");
    assert!(
        info.contains("Partition name: 'EFI System Partition'"),
        "{info}"
    );

    // mtools reads the files back through its own FAT implementation.
    let target = mtools_target(&image);
    let listing = tool(
        "mdir",
        "mtools",
        &["-i", &target, "-b", "::/loader/entries"],
    );
    assert!(listing.contains("linux.conf"), "{listing}");
    let entry = tool(
        "mtype",
        "mtools",
        &["-i", &target, "::/loader/entries/linux.conf"],
    );
    assert_eq!(entry, "linux /vmlinuz\noptions console=ttyS0\n");
    let conf = tool("mtype", "mtools", &["-i", &target, "::/loader/loader.conf"]);
    assert_eq!(conf, "default linux\n");
    let copy = dir.0.join("copy");
    tool(
        "mcopy",
        "mtools",
        &["-i", &target, "::/vmlinuz", copy.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&copy).unwrap(), kernel);
}

#[test]
fn errors_are_one_line_with_status_one_or_two() {
    let dir = TempDir::new("errors");
    let image = dir.0.join("disk.img");
    let img = image.to_str().unwrap();
    let missing = dir.0.join("missing");
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (vec!["--size".into(), "1M".into()], 1, "is too small"),
        (vec!["--size".into(), "64Q".into()], 2, "invalid size"),
        (
            vec![
                "--size".into(),
                "8M".into(),
                "--esp-file".into(),
                format!("k={}", missing.display()),
            ],
            1,
            "cannot read",
        ),
        (
            vec![
                "--size".into(),
                "8M".into(),
                "--esp-text".into(),
                "a/../b=x".into(),
            ],
            2,
            "invalid ESP path",
        ),
        (
            vec!["--size".into(), "8M".into(), "--fat".into(), "32".into()],
            1,
            "not the requested FAT32",
        ),
        (
            vec![
                "--size".into(),
                "8M".into(),
                "--label".into(),
                "much too long".into(),
            ],
            1,
            "invalid volume label",
        ),
        (
            vec![
                "--size".into(),
                "8M".into(),
                "--esp-text".into(),
                "A=1".into(),
                "--esp-text".into(),
                "a=2".into(),
            ],
            1,
            "given twice",
        ),
        (vec!["--bogus".into()], 2, "--bogus"),
    ];
    for (extra, status, needle) in cases {
        let mut args = vec!["--out", img];
        args.extend(extra.iter().map(String::as_str));
        let out = mkdisk(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("mkdisk: "), "{stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr} lacks {needle:?}"
        );
        assert!(!image.exists(), "{args:?} left an image");
    }

    // An existing image needs --force.
    assert!(mkdisk(&["--out", img, "--size", "4M"]).status.success());
    let again = mkdisk(&["--out", img, "--size", "4M"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(
        mkdisk(&["--out", img, "--size", "4M", "--force"])
            .status
            .success()
    );
}

#[test]
fn help_and_version_exit_zero() {
    let help = mkdisk(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--out",
        "--size",
        "--esp-file",
        "--esp-text",
        "--fat",
        "--force",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
    assert_eq!(mkdisk(&["--version"]).status.code(), Some(0));
}
