//! `--record-exits`: the project's guests recorded by the reference VMM under KVM (with seccomp
//! on, the default), the recordings read back with vmkit-exits' reader and checked; and the
//! committed recordings of those guests (`guests/recordings/`), which `--replay` replays without
//! `/dev/kvm`.
//!
//! `VMKIT_UPDATE_RECORDINGS=1 cargo test -p reference-vmm --test record` rewrites the committed
//! recordings from the runs.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Finished, LIMIT, kvm_available, run_with_limit};
use vmkit_exits::record::{
    Attribution, Data, Direction, DiskOp, LineEvent, Record, RecordReader, RecordedExit, Route,
};
use vmkit_exits::{ExitAction, StopReason};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
const OUT_DIR: &str = env!("OUT_DIR");
/// The largest recording of a project guest that may be committed.
const MAX_COMMITTED: u64 = 1 << 20;
/// The project's guests, each recorded by [`guest_run`]; `hello-poweroff` is the hello guest
/// powering off through the ACPI registers (the seeds of the `acpi_pm` fuzz target come from it).
const GUESTS: [&str; 7] = [
    "hello",
    "hello-poweroff",
    "exits",
    "assist",
    "paging",
    "blk",
    "hostile",
];

/// The guest a recording's name names (`hello` for `hello-poweroff`).
fn guest(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

/// How the guest of `name` ends the VM when it exits with `status`.
fn stop(name: &str, status: i32) -> ExitAction {
    match name {
        "hello-poweroff" => ExitAction::Stop(StopReason::PowerOff),
        _ => ExitAction::Stop(StopReason::GuestExit(status as u32)),
    }
}

/// COM1's data port and the debug-exit port.
const COM1: u16 = 0x3f8;
const DEBUG_EXIT: u16 = 0xf4;

/// Files of one test in the temporary directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmkit-record-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The blk guests' disk pattern: word `k` holds `pattern(k)`.
fn pattern_image(sectors: u64) -> Vec<u8> {
    (0..sectors * 64)
        .flat_map(|k: u64| {
            (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef).to_le_bytes()
        })
        .collect()
}

/// The arguments that run guest `name` to its end, with its disks in `scratch`.
fn guest_run(name: &str, scratch: &Scratch) -> Vec<String> {
    let elf = format!("{OUT_DIR}/{name}.elf");
    let disk = |file: &str, bytes: Vec<u8>| {
        let path = scratch.path(file);
        fs::write(&path, bytes).unwrap();
        format!("path={}", path.display())
    };
    let args: Vec<String> = match name {
        "hello" => vec!["--builtin".into(), "hello".into()],
        "hello-poweroff" => vec![
            "--builtin".into(),
            "hello".into(),
            "--cmdline".into(),
            "hello.end=acpi-poweroff".into(),
        ],
        "exits" => vec!["--builtin".into(), "exits".into(), "--testdev".into()],
        "assist" => vec!["--builtin".into(), "assist".into()],
        "paging" => vec!["--kernel".into(), elf],
        "blk" => vec![
            "--kernel".into(),
            elf,
            "--cmdline".into(),
            "blk.test=rw".into(),
            "--disk".into(),
            disk("blk.img", pattern_image(2048)),
        ],
        "hostile" => vec![
            "--kernel".into(),
            elf,
            "--cmdline".into(),
            // Not `ring` (it needs a 32 MiB disk, which it fills) nor `indirect` (its 1024-entry
            // tables, each descriptor read recorded, take most of a mebibyte alone).
            "hostile.attack=heads,notify,serial,ports,mmio,config hostile.rounds=1".into(),
            "--disk".into(),
            disk("attacked.img", vec![0; 1 << 20]),
            "--disk".into(),
            disk("honest.img", pattern_image(2048)),
        ],
        other => panic!("no run for guest {other}"),
    };
    let mut args = args;
    args.extend(["--memory".into(), "size=128M".into()]);
    args
}

/// Runs the VMM with `args` and `--record-exits <path>`.
fn record(args: &[String], path: &Path) -> Finished {
    let mut command = Command::new(VMM);
    command.args(args).arg("--record-exits").arg(path);
    run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing")
}

fn read(path: &Path) -> Vec<Record> {
    RecordReader::new(fs::File::open(path).unwrap())
        .unwrap()
        .read_all()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What every recording of a single-vCPU guest that ended by itself holds: the VM's facts
/// first, exits in strictly increasing sequence, every record attributed to an exit that exists
/// (or to none), every stored payload before its first use, and a last exit that stopped the VM.
fn check(records: &[Record]) -> Vec<(u64, RecordedExit, ExitAction)> {
    assert!(
        matches!(&records[0], Record::Meta { key, value } if key == "vmm" && value.starts_with("reference-vmm")),
        "{:?}",
        records[0]
    );
    let mut exits = Vec::new();
    let mut payloads = BTreeSet::new();
    let mut next = 0;
    for record in records {
        match record {
            Record::Exit(exit) => {
                assert_eq!(exit.seq, next, "sequence numbers increase one by one");
                assert_eq!(exit.vcpu, 0);
                next += 1;
                exits.push((exit.seq, exit.exit.clone(), exit.action));
            }
            Record::Payload { hash, .. } => assert!(payloads.insert(*hash), "stored once"),
            Record::Memory {
                data: Data::Stored { hash, .. },
                ..
            }
            | Record::Disk {
                hash: Some(hash), ..
            } => assert!(payloads.contains(hash), "payload before use"),
            Record::Truncated { .. } => panic!("a complete recording has no truncation marker"),
            _ => {}
        }
        match record.attribution() {
            // A device's record comes before its exit's record.
            Some(Attribution::Exit(seq)) if !matches!(record, Record::Exit(_)) => {
                assert_eq!(seq, next, "{record:?}")
            }
            Some(Attribution::Outside { exits_before }) => assert!(exits_before <= next),
            _ => {}
        }
    }
    let last = exits.last().unwrap();
    assert!(matches!(last.2, ExitAction::Stop(_)), "{last:?}");
    exits
}

/// The bytes the guest wrote to COM1's data register.
fn com1_output(exits: &[(u64, RecordedExit, ExitAction)]) -> Vec<u8> {
    exits
        .iter()
        .filter_map(|(_, exit, _)| match exit {
            RecordedExit::IoOut { port: COM1, data } => Some(data.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn committed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../guests/recordings")
        .join(format!("{name}.vmrec"))
}

#[test]
fn the_hello_guest_recorded_holds_its_serial_output_and_its_exit() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("hello");
    let path = scratch.path("hello.vmrec");
    let out = record(&guest_run("hello", &scratch), &path);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let records = read(&path);
    let exits = check(&records);
    assert_eq!(com1_output(&exits), out.stdout.as_bytes());
    assert!(out.stdout.starts_with("vmkit hello: booted via PVH"));
    // The guest polls LSR before each byte: port reads answered by the UART.
    assert!(exits.iter().any(|(_, exit, _)| matches!(
        exit,
        RecordedExit::IoIn { port: 0x3fd, data } if data.len() == 1
    )));
    let (_, last, action) = exits.last().unwrap();
    assert_eq!(
        *last,
        RecordedExit::IoOut {
            port: DEBUG_EXIT,
            data: vec![0; 4]
        }
    );
    assert_eq!(*action, ExitAction::Stop(StopReason::GuestExit(0)));
    assert!(records.contains(&Record::Meta {
        key: "guest".into(),
        value: "built-in hello guest".into()
    }));
    // The summary line: exits, records and bytes, which the file's size confirms.
    let size = fs::metadata(&path).unwrap().len();
    let summary = format!(
        "reference-vmm: recorded {} exits to {}: {} records (0 payloads), {size} bytes written\n",
        exits.len(),
        path.display(),
        records.len()
    );
    assert_eq!(out.stderr, summary);
}

#[test]
fn every_project_guest_records_under_a_mebibyte() {
    if !kvm_available() {
        return;
    }
    let update = std::env::var_os("VMKIT_UPDATE_RECORDINGS").is_some_and(|v| v == "1");
    let scratch = Scratch::new("guests");
    for name in GUESTS {
        let path = scratch.path(&format!("{name}.vmrec"));
        let out = record(&guest_run(name, &scratch), &path);
        // The assist guest's status counts the CPU's mismatches with the architecture.
        let status = out.status.unwrap_or_else(|| panic!("{name}: killed"));
        assert!(status == 0 || name == "assist", "{name}: {}", out.stderr);
        let records = read(&path);
        let exits = check(&records);
        assert_eq!(exits.last().unwrap().2, stop(name, status), "{name}");
        // Interrupts and MSIs raised during an exit are attributed to it: the hostile guest's
        // serial attack raises COM1's line, its disks answer by MSI-X.
        let signals = records
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Record::Msi {
                        at: Attribution::Exit(_),
                        ok: true,
                        ..
                    } | Record::Interrupt {
                        at: Attribution::Exit(_),
                        event: LineEvent::Edge | LineEvent::Assert | LineEvent::Deassert,
                        ..
                    }
                )
            })
            .count();
        assert!(
            signals > 0 || name != "hostile",
            "{name}: no interrupt recorded"
        );
        assert!(
            com1_output(&exits).starts_with(format!("vmkit {}: ", guest(name)).as_bytes()),
            "{name}"
        );
        let size = fs::metadata(&path).unwrap().len();
        assert!(size < MAX_COMMITTED, "{name}: {size} bytes");
        eprintln!(
            "{name}: {} exits, {} records, {size} bytes",
            exits.len(),
            records.len()
        );
        if update {
            fs::copy(&path, committed(name)).unwrap();
        }
    }
}

#[test]
fn the_blk_guest_recorded_holds_its_disk_and_memory_work() {
    if !kvm_available() {
        return;
    }
    let scratch = Scratch::new("blk");
    let path = scratch.path("blk.vmrec");
    let out = record(&guest_run("blk", &scratch), &path);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let records = read(&path);
    check(&records);
    let image = pattern_image(2048);
    let mut payloads = std::collections::BTreeMap::new();
    let (mut reads, mut writes, mut flushes, mut dma_reads, mut dma_writes) = (0, 0, 0, 0, 0);
    for record in &records {
        match record {
            Record::Payload { hash, bytes } => {
                payloads.insert(*hash, bytes.clone());
            }
            Record::Disk {
                op: DiskOp::Read,
                offset,
                len,
                hash: Some(hash),
                ok: true,
                disk: 0,
                ..
            } => {
                // Reads of sectors the guest did not write hold the image's bytes.
                let range = *offset as usize..(*offset + *len) as usize;
                if *offset < 8 * 512 || *offset >= 16 * 512 && *offset < 2047 * 512 {
                    assert_eq!(payloads[hash], image[range]);
                }
                reads += 1;
            }
            Record::Disk {
                op: DiskOp::Write,
                hash: Some(hash),
                len,
                ..
            } => {
                assert_eq!(payloads[hash].len() as u64, *len);
                writes += 1;
            }
            Record::Disk {
                op: DiskOp::Flush,
                ok: true,
                ..
            } => flushes += 1,
            Record::Memory {
                direction: Direction::Read,
                ..
            } => dma_reads += 1,
            Record::Memory {
                direction: Direction::Write,
                ..
            } => dma_writes += 1,
            _ => {}
        }
    }
    assert!(
        reads >= 3 && writes >= 2 && flushes == 1,
        "{reads} {writes} {flushes}"
    );
    assert!(
        dma_reads > 10 && dma_writes > 10,
        "{dma_reads} {dma_writes}"
    );
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Meta { key, value }
            if key == "disk" && value.starts_with(&format!("0 size={} readonly=off serial=", image.len()))
    )));
}

#[test]
fn a_full_disk_or_a_small_limit_never_stops_the_vm() {
    if !kvm_available() {
        return;
    }
    let mut command = Command::new(VMM);
    command.args(["--record-exits", "/dev/full"]);
    let out = run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing");
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.starts_with("vmkit hello:"));
    assert!(
        out.stderr.contains("write failed (no storage space)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let scratch = Scratch::new("limit");
    let path = scratch.path("cut.vmrec");
    let mut command = Command::new(VMM);
    command
        .args(["--record-limit", "2K", "--record-exits"])
        .arg(&path);
    let out = run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing");
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("size limit reached"), "{}", out.stderr);
    let records = read(&path);
    assert!(matches!(records.last(), Some(Record::Truncated { .. })));
    assert!(fs::metadata(&path).unwrap().len() <= 2048);
}

#[test]
fn an_unusable_recording_path_is_one_line_and_status_125() {
    // Refused before the hypervisor is opened: no /dev/kvm needed.
    for (path, reason) in [
        ("/nonexistent/dir/x.vmrec", "No such file or directory"),
        ("/", "Is a directory"),
    ] {
        let out = Command::new(VMM)
            .args(["--record-exits", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(&format!(
                "reference-vmm: --record-exits: cannot create {path}"
            )),
            "{stderr}"
        );
        assert!(stderr.contains(reason), "{stderr}");
    }
}

/// The committed recordings read without `/dev/kvm`: one per project guest, each whole and
/// under a mebibyte, and no host path in them.
#[test]
fn the_committed_recordings_read_back() {
    for name in GUESTS {
        let path = committed(name);
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!((bytes.len() as u64) < MAX_COMMITTED, "{name}");
        let records = read(&path);
        let exits = check(&records);
        assert!(
            com1_output(&exits).starts_with(format!("vmkit {}: ", guest(name)).as_bytes()),
            "{name}"
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("/tmp/") && !text.contains("/target/"),
            "{name}"
        );
        for record in &records {
            if let Record::Exit(exit) = record {
                assert!(exit.route != Route::BadSize, "{name}: {exit:?}");
            }
        }
    }
}

/// `--replay` on a committed recording: no `/dev/kvm`, one line, status 0; and the flags that
/// make no sense with it are refused.
#[test]
fn a_committed_recording_replays_through_the_command_line() {
    let path = committed("exits");
    let out = Command::new(VMM)
        .arg("--replay")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "reference-vmm: replayed {}: 685 exits replayed, every answer as recorded;",
            path.display()
        )),
        "{stderr}"
    );
    let out = Command::new(VMM)
        .args(["--builtin", "hello", "--replay"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
}
