//! The `blk` guest's virtio-blk driver against the reference VMM's `--disk` and QEMU's
//! `virtio-blk-pci`: the same image, the same report, the same exit status, and the image file
//! changed exactly where the guest wrote (or not at all when the disk is read-only).
//!
//! They need `/dev/kvm` (same rule as the other KVM tests: `VMKIT_SKIP_KVM_TESTS=1` skips them)
//! and `qemu-system-x86_64`; a missing QEMU fails the test, naming it. Every child process is
//! killed after [`LIMIT`].

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Finished, LIMIT, kvm_available, qemu_command, run_qemu, run_with_limit};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// The guest image the build script built.
const BLK_ELF: &str = concat!(env!("OUT_DIR"), "/blk.elf");
/// The longest any VMM may take to run the guest.
const MEMORY_MIB: u32 = 128;
/// Sectors of the test image (1 MiB).
const SECTORS: u64 = 2048;
const SECTOR: usize = 512;
/// The sectors `blk.test=rw` writes (with the inverted pattern): 8..16 and the last one.
const WRITTEN: [std::ops::Range<u64>; 2] = [8..16, SECTORS - 1..SECTORS];

/// The pattern's word `k` (the guest's `pattern`).
fn pattern(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// The image the guest expects: every 64-bit word `k` holds `pattern(k)`, with the sectors in
/// `inverted` holding its complement.
fn image(sectors: u64, inverted: &[std::ops::Range<u64>]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(sectors as usize * SECTOR);
    for k in 0..sectors * (SECTOR as u64 / 8) {
        let sector = k / (SECTOR as u64 / 8);
        let flip = if inverted.iter().any(|r| r.contains(&sector)) {
            u64::MAX
        } else {
            0
        };
        bytes.extend_from_slice(&(pattern(k) ^ flip).to_le_bytes());
    }
    bytes
}

/// A disk image in the temporary directory, removed when dropped.
struct Disk {
    path: PathBuf,
}

impl Disk {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vmkit-blk-test-{}-{name}.img", std::process::id()));
        fs::write(&path, image(SECTORS, &[])).unwrap();
        Self { path }
    }

    /// Writes the pristine pattern back in place (same file, so the same device ID).
    fn reset(&self) {
        fs::write(&self.path, image(SECTORS, &[])).unwrap();
    }

    fn contents(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }

    /// The device ID the reference VMM reports for the file: its device and inode numbers in
    /// hexadecimal, at most 20 bytes. QEMU is given the same one as its `serial`.
    fn serial(&self) -> String {
        let metadata = fs::metadata(&self.path).unwrap();
        let mut id = format!("{:x}{:x}", metadata.dev(), metadata.ino());
        id.truncate(20);
        id
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs the guest under the reference VMM with `disk` (if any) as its virtio-blk disk.
fn reference_vmm(cmdline: &str, disk: Option<(&Disk, bool)>) -> Finished {
    let memory = format!("size={MEMORY_MIB}M");
    let mut command = Command::new(VMM);
    command.args([
        "--kernel",
        BLK_ELF,
        "--cmdline",
        cmdline,
        "--memory",
        &memory,
    ]);
    if let Some((disk, readonly)) = disk {
        let readonly = if readonly { ",readonly=on" } else { "" };
        command
            .arg("--disk")
            .arg(format!("path={}{readonly}", disk.path()));
    }
    run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing")
}

/// Runs the guest under QEMU with `disk` (if any) on `virtio-blk-pci`; the guest's status
/// replaces QEMU's.
fn qemu(cmdline: &str, disk: Option<(&Disk, bool)>) -> Finished {
    let mut command = qemu_command(BLK_ELF, cmdline, MEMORY_MIB);
    if let Some((disk, readonly)) = disk {
        let readonly = if readonly { ",readonly=on" } else { "" };
        command.arg("-drive").arg(format!(
            "if=none,id=d,file={},format=raw{readonly}",
            disk.path()
        ));
        command.arg("-device").arg(format!(
            "virtio-blk-pci,drive=d,disable-legacy=on,serial={}",
            disk.serial()
        ));
    }
    let finished = run_qemu(&mut command);
    assert!(finished.status.is_some(), "QEMU was killed by a signal");
    finished
}

/// The report `blk.test=<mode>` prints on `disk`.
fn expected_report(mode: &str, disk: &Disk) -> String {
    let (ro, write) = match mode {
        "rw" => (0, "write sectors=9 status=0 readback ok"),
        _ => (1, "write status=1"),
    };
    [
        format!("test={mode} capacity={SECTORS} ro={ro}"),
        "read sectors=10 ok".into(),
        write.into(),
        "flush status=0".into(),
        format!("get_id status=0 id=\"{}\"", disk.serial()),
        "read past end status=1".into(),
        "unknown type status=2".into(),
        "ok".into(),
    ]
    .iter()
    .map(|line| format!("vmkit blk: {line}\n"))
    .collect()
}

/// Runs `blk.test=rw` (plus `extra`) under both VMMs on the same file, checking after each run
/// that exactly the written sectors changed.
fn read_write_under_both(extra: &str) {
    let disk = Disk::new(&format!("rw{}", extra.len()));
    let cmdline = format!("blk.test=rw {extra}");
    let written = image(SECTORS, &WRITTEN);
    let expected = expected_report("rw", &disk);

    let ours = reference_vmm(&cmdline, Some((&disk, false)));
    assert_eq!(ours.status, Some(0), "reference VMM: {ours:?}");
    assert_eq!(ours.stdout, expected, "reference VMM: {ours:?}");
    assert!(
        disk.contents() == written,
        "reference VMM: image not as written"
    );

    disk.reset();
    let theirs = qemu(&cmdline, Some((&disk, false)));
    assert_eq!(theirs.status, Some(0), "QEMU: {theirs:?}");
    assert_eq!(theirs.stdout, ours.stdout);
    assert!(disk.contents() == written, "QEMU: image not as written");
}

#[test]
fn read_write_test_reports_the_same_and_lands_in_the_file() {
    if !kvm_available() {
        return;
    }
    read_write_under_both("");
}

#[test]
fn read_write_test_passes_with_bars_placed_by_the_guest() {
    if !kvm_available() {
        return;
    }
    read_write_under_both("blk.place=1");
}

#[test]
fn read_only_disk_refuses_writes_and_stays_byte_identical() {
    if !kvm_available() {
        return;
    }
    let disk = Disk::new("ro");
    let pristine = disk.contents();
    let expected = expected_report("ro", &disk);
    let ours = reference_vmm("blk.test=ro", Some((&disk, true)));
    assert_eq!(ours.status, Some(0), "reference VMM: {ours:?}");
    assert_eq!(ours.stdout, expected, "reference VMM: {ours:?}");
    assert!(
        disk.contents() == pristine,
        "reference VMM changed the image"
    );
    let theirs = qemu("blk.test=ro", Some((&disk, true)));
    assert_eq!(theirs.status, Some(0), "QEMU: {theirs:?}");
    assert_eq!(theirs.stdout, expected);
    assert!(disk.contents() == pristine, "QEMU changed the image");
}

/// A read-only test on a writable disk fails (no `VIRTIO_BLK_F_RO`) before writing anything.
#[test]
fn read_only_test_on_a_writable_disk_fails_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let disk = Disk::new("ro-on-rw");
    let pristine = disk.contents();
    for run in [
        reference_vmm("blk.test=ro", Some((&disk, false))),
        qemu("blk.test=ro", Some((&disk, false))),
    ] {
        assert_eq!(run.status, Some(1), "{run:?}");
        assert_eq!(
            run.stdout,
            "vmkit blk: test=ro capacity=2048 ro=0\n\
             vmkit blk: unexpected capacity or read-only feature\n"
        );
    }
    assert!(disk.contents() == pristine);
}

#[test]
fn benchmark_mode_reads_and_checks_blocks_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let disk = Disk::new("bench");
    for mode in ["seq", "rand"] {
        let cmdline = format!("blk.bench={mode},300");
        for run in [
            reference_vmm(&cmdline, Some((&disk, true))),
            qemu(&cmdline, Some((&disk, true))),
        ] {
            assert_eq!(run.status, Some(0), "{run:?}");
            let lines: Vec<&str> = run.stdout.lines().collect();
            let prefix = format!("vmkit blk: bench={mode} n=300 block=4096 cycles=");
            assert_eq!(lines.len(), 2, "{run:?}");
            let cycles = lines[0].strip_prefix(prefix.as_str()).unwrap();
            assert!(cycles.parse::<u64>().unwrap() > 0, "{run:?}");
            assert_eq!(lines[1], "vmkit blk: ok");
        }
    }
}

#[test]
fn missing_device_and_bad_command_lines_fail_the_same_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let ours = reference_vmm("blk.test=rw", None);
    let theirs = qemu("blk.test=rw", None);
    for run in [&ours, &theirs] {
        assert_eq!(run.status, Some(5), "{run:?}");
        assert_eq!(
            run.stdout,
            "vmkit blk: no virtio-blk device (1af4:1042) on PCI bus 0\n"
        );
    }
    let disk = Disk::new("cmdline");
    for cmdline in ["", "blk.test=rx", "blk.bench=seq,", "blk.bench=fast,3"] {
        let ours = reference_vmm(cmdline, Some((&disk, true)));
        assert_eq!(ours.status, Some(4), "{cmdline:?}: {ours:?}");
        assert_eq!(
            ours.stdout,
            "vmkit blk: bad command line: give blk.test=rw|ro or blk.bench=seq|rand,<count>\n"
        );
    }
    let theirs = qemu("blk.bench=seq,x", Some((&disk, true)));
    assert_eq!(theirs.status, Some(4), "{theirs:?}");
}

/// The image helper itself: the inverted sectors are exactly the complement.
#[test]
fn image_pattern_inverts_only_the_named_sectors() {
    let plain = image(4, &[]);
    let inverted = image(4, &[1..2, 7..9]);
    assert_eq!(plain.len(), 4 * SECTOR);
    for (i, (a, b)) in plain.iter().zip(&inverted).enumerate() {
        let in_sector_1 = (SECTOR..2 * SECTOR).contains(&i);
        assert_eq!(*b, if in_sector_1 { !a } else { *a }, "byte {i}");
    }
    assert_eq!(&plain[..8], &pattern(0).to_le_bytes());
    assert!(Path::new(BLK_ELF).exists());
}
