//! Linux under the reference VMM: Debian's kernel (fetched and unpacked by
//! `scripts/fetch-linux.sh`, which `scripts/setup.sh` runs) booted once per boot path, each run
//! bounded by the VMM's `--timeout` and ended as soon as the kernel printed the line the test
//! waits for.
//!
//! - the vmlinux by PVH on two vCPUs with an initramfs, up to `Memory:`: the platform the kernel
//!   sees (memory map, command line, ACPI tables, SMBIOS, CPUs, initramfs placement);
//! - the bzImage on one vCPU, up to its decompressor's first message.
//!
//! The KVM tests need `/dev/kvm`; where it is missing they fail with that reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` asks to skip them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::kvm_available;
use common::linux::{self, E820Line, Scratch, VmmRun, e820_lines, mem_range, run_until};
use vmkit_boot::acpi::{ACPI_TABLES_END, ACPI_TABLES_START};
use vmkit_boot::mark_acpi_memory;
use vmkit_boot::pvh::{MODULE_ALIGN, MODULE_LIMIT};
use vmkit_memory::{GuestLayout, MemoryKind, MemoryMapEntry};

/// The guest RAM of the PVH boot.
const PVH_MEMORY: u64 = 2 << 30;
const PVH_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0";
const BZIMAGE_CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr";

/// The ACPI tables the kernel must list (besides the RSDP).
const ACPI_TABLES: [&str; 5] = ["XSDT", "FACP", "DSDT", "APIC", "MCFG"];

/// Collects the failed expectations of one boot, so that a failure names all of them.
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn new() -> Self {
        Checks { failed: Vec::new() }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failed.push(what());
        }
    }

    fn finish(self, run: &VmmRun) {
        assert!(
            self.failed.is_empty(),
            "{} failed:\n- {}\n{}",
            self.failed.len(),
            self.failed.join("\n- "),
            run.describe()
        );
    }
}

/// How Linux names an e820 type.
fn e820_name(kind: MemoryKind) -> &'static str {
    match kind {
        MemoryKind::Ram => "usable",
        MemoryKind::Reserved => "reserved",
        MemoryKind::Acpi => "ACPI data",
        MemoryKind::Nvs => "ACPI NVS",
    }
}

fn as_e820_lines(map: &[MemoryMapEntry]) -> Vec<E820Line> {
    map.iter()
        .map(|e| E820Line {
            start: e.addr,
            last: e.end() - 1,
            kind: e820_name(e.kind).to_string(),
        })
        .collect()
}

/// Where the loader puts a module of `size` bytes: the highest [`MODULE_ALIGN`]-aligned address
/// below [`MODULE_LIMIT`] at which it fits in usable RAM.
fn module_placement(map: &[MemoryMapEntry], size: u64) -> Option<u64> {
    map.iter()
        .filter(|e| e.kind == MemoryKind::Ram && e.addr < MODULE_LIMIT)
        .filter_map(|e| {
            let start = e.end().min(MODULE_LIMIT).checked_sub(size)? / MODULE_ALIGN * MODULE_ALIGN;
            (start >= e.addr).then_some(start)
        })
        .max()
}

/// The address of the table `signature` in the kernel's `ACPI: SIG 0xADDRESS ...` line.
fn acpi_table_address(run: &VmmRun, signature: &str) -> Option<u64> {
    let needle = format!("ACPI: {signature} 0x");
    let line = run.line(&needle)?;
    let digits = line.split_once(&needle)?.1.split_whitespace().next()?;
    u64::from_str_radix(digits, 16).ok()
}

/// The recording of a Linux boot stopped by SIGTERM: whole (the VMM finished it while it
/// stopped), one exit per sequence number from 0 (the vCPUs' exits interleave in the file),
/// and COM1's output in its port writes.
fn check_linux_recording(checks: &mut Checks, path: &std::path::Path, run: &VmmRun) {
    use vmkit_exits::record::{Record, RecordReader, RecordedExit};
    let records = std::fs::File::open(path)
        .map_err(|e| e.to_string())
        .and_then(|file| RecordReader::new(file).map_err(|e| e.to_string()))
        .and_then(|reader| reader.read_all().map_err(|e| e.to_string()));
    let records = match records {
        Ok(records) => records,
        Err(e) => {
            checks.check(false, || format!("the recording reads back ({e})"));
            return;
        }
    };
    let mut seqs = Vec::new();
    let mut com1 = Vec::new();
    for record in &records {
        if let Record::Exit(exit) = record {
            seqs.push(exit.seq);
            if let RecordedExit::IoOut { port: 0x3f8, data } = &exit.exit {
                com1.extend_from_slice(data);
            }
        }
    }
    seqs.sort_unstable();
    let whole = seqs.iter().enumerate().all(|(i, seq)| *seq == i as u64);
    checks.check(!seqs.is_empty() && whole, || {
        format!("the recording holds exits 0..{} once each", seqs.len())
    });
    let com1 = String::from_utf8_lossy(&com1);
    checks.check(com1.contains("Linux version"), || {
        "the recorded COM1 writes hold `Linux version`".into()
    });
    checks.check(
        run.stderr.contains("recorded ") && run.stderr.contains("linux.vmrec"),
        || "the VMM's summary line of the recording".into(),
    );

    // The recording replays against the VMM's devices built anew, without /dev/kvm; the exits
    // of the two vCPUs in sequence order.
    let started = std::time::Instant::now();
    let replayed = std::process::Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .arg("--replay")
        .arg(path)
        .output()
        .map(|out| {
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        });
    eprintln!(
        "the Linux boot's replay took {:?}: {replayed:?}",
        started.elapsed()
    );
    checks.check(
        matches!(&replayed, Ok((Some(0), stderr)) if stderr.contains(" exits replayed, every answer as recorded")),
        || format!("the recording replays as recorded ({replayed:?})"),
    );
}

#[test]
fn vmlinux_by_pvh_on_two_vcpus_sees_the_vmms_platform() {
    if !kvm_available() {
        return;
    }
    let gbpages = vmkit_vcpu::KvmHypervisor::new()
        .unwrap()
        .supports_1g_pages();
    let vmlinux = linux::vmlinux();
    let scratch = Scratch::new("pvh");
    let initramfs = linux::small_initramfs();
    let initramfs_path = scratch.file("initramfs.cpio", &initramfs);
    // The boot is recorded too: a Linux boot's recording is made here, never committed.
    let recording = scratch.0.join("linux.vmrec");
    let args: [&OsStr; 12] = [
        "--kernel".as_ref(),
        vmlinux.as_os_str(),
        "--initramfs".as_ref(),
        initramfs_path.as_os_str(),
        "--cpus".as_ref(),
        "boot=2".as_ref(),
        "--memory".as_ref(),
        "size=2G".as_ref(),
        "--cmdline".as_ref(),
        PVH_CMDLINE.as_ref(),
        "--record-exits".as_ref(),
        recording.as_os_str(),
    ];
    let run = run_until(args, "Memory:", Duration::from_secs(300));
    let mut checks = Checks::new();
    check_linux_recording(&mut checks, &recording, &run);
    checks.check(run.reached_after.is_some(), || {
        "the kernel reached `Memory:`".into()
    });
    checks.check(run.line("Linux version").is_some(), || {
        "a `Linux version` line".into()
    });

    // The memory map: exactly the layout's, with the ACPI tables' window as ACPI data.
    let mut layout = GuestLayout::new(PVH_MEMORY).unwrap();
    mark_acpi_memory(&mut layout).unwrap();
    let kernel_map = e820_lines(&run.serial);
    let expected_map = as_e820_lines(layout.memory_map());
    checks.check(kernel_map == expected_map, || {
        format!("the e820 map the kernel prints {kernel_map:#x?} is {expected_map:#x?}")
    });

    // The command line, with `nogbpages` where the backend lacks 1 GiB pages.
    let cmdline: Vec<&str> = run
        .line("Command line: ")
        .and_then(|line| line.split_once("Command line: "))
        .map(|(_, cmdline)| cmdline.split_whitespace().collect())
        .unwrap_or_default();
    checks.check(cmdline.contains(&"console=ttyS0"), || {
        format!("`console=ttyS0` on the command line {cmdline:?}")
    });
    checks.check(cmdline.contains(&"nogbpages") != gbpages, || {
        format!(
            "`nogbpages` on the command line {cmdline:?} exactly when the backend lacks 1 GiB \
             pages (it has them: {gbpages})"
        )
    });
    checks.check(run.stderr.contains("nogbpages") != gbpages, || {
        "the VMM logs that it added `nogbpages` exactly when it did".into()
    });

    // ACPI: every table listed, each in the window the memory map reports as ACPI data.
    for signature in std::iter::once("RSDP").chain(ACPI_TABLES) {
        let addr = acpi_table_address(&run, signature);
        checks.check(addr.is_some(), || format!("an `ACPI: {signature}` line"));
        if let Some(addr) = addr {
            checks.check((ACPI_TABLES_START..ACPI_TABLES_END).contains(&addr), || {
                format!("ACPI {signature} at {addr:#x} lies in the ACPI tables' window")
            });
        }
    }

    checks.check(run.line("DMI: vmkit reference-vmm").is_some(), || {
        "a `DMI: vmkit reference-vmm` line".into()
    });
    checks.check(run.line("smpboot: Allowing 2 CPUs").is_some(), || {
        "a `smpboot: Allowing 2 CPUs` line".into()
    });

    // The initramfs, where the loader's placement rule puts it and the VMM says it put it
    // (`initramfs at START..END`, logged at level info); the kernel prints whole pages.
    let ramdisk = run.line("RAMDISK: [mem ").and_then(mem_range);
    let size = initramfs.len() as u64;
    let placed = module_placement(layout.memory_map(), size);
    let logged = format!(
        "initramfs at {:#x}..{:#x}",
        placed.unwrap_or(0),
        placed.unwrap_or(0) + size
    );
    checks.check(placed.is_some() && run.stderr.contains(&logged), || {
        format!("the VMM logs `{logged}`")
    });
    let expected_ramdisk =
        placed.map(|start| (start, (start + size).next_multiple_of(MODULE_ALIGN) - 1));
    checks.check(ramdisk.is_some() && ramdisk == expected_ramdisk, || {
        format!("`RAMDISK: [mem ...]` at {ramdisk:x?}, expected {expected_ramdisk:x?}")
    });
    checks.finish(&run);
}

#[test]
fn bzimage_decompressor_reads_the_command_line() {
    if !kvm_available() {
        return;
    }
    let bzimage = linux::bzimage();
    let args: [&OsStr; 4] = [
        "--kernel".as_ref(),
        bzimage.as_os_str(),
        "--cmdline".as_ref(),
        BZIMAGE_CMDLINE.as_ref(),
    ];
    let run = run_until(args, "KASLR disabled", Duration::from_secs(120));
    assert!(
        run.line("KASLR disabled: 'nokaslr' on cmdline.").is_some(),
        "the decompressor's `KASLR disabled: 'nokaslr' on cmdline.`\n{}",
        run.describe()
    );
}

#[test]
fn debian_vmlinux_has_a_pvh_entry() {
    let vmlinux = std::fs::read(linux::vmlinux()).unwrap();
    let elf = vmkit_boot::elf::ElfImage::parse(&vmlinux).unwrap();
    assert!(elf.pvh_entry().is_some());
}

/// One entry of a newc archive.
struct NewcEntry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Reads a newc archive back, the trailer excluded.
fn read_newc(mut archive: &[u8]) -> Vec<NewcEntry> {
    let mut entries = Vec::new();
    loop {
        assert_eq!(&archive[..6], b"070701");
        let field = |i: usize| {
            let digits = std::str::from_utf8(&archive[6 + 8 * i..14 + 8 * i]).unwrap();
            u32::from_str_radix(digits, 16).unwrap() as usize
        };
        let (mode, size, name_size) = (field(1), field(6), field(11));
        let rdev = (field(9) as u32, field(10) as u32);
        let name = std::str::from_utf8(&archive[110..110 + name_size - 1]).unwrap();
        assert_eq!(archive[110 + name_size - 1], 0, "name not NUL-terminated");
        let data_start = (110 + name_size).next_multiple_of(4);
        let next = (data_start + size).next_multiple_of(4);
        if name == "TRAILER!!!" {
            assert_eq!(next, archive.len(), "bytes after the trailer");
            return entries;
        }
        let data = archive[data_start..data_start + size].to_vec();
        entries.push(NewcEntry {
            name: name.to_string(),
            mode: mode as u32,
            rdev,
            data,
        });
        archive = &archive[next..];
    }
}

#[test]
fn initramfs_archives_are_newc() {
    let small = read_newc(&linux::small_initramfs());
    let names: Vec<&str> = small.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc", "etc/vmkit"]);
    assert_eq!(small[0].mode, 0o040_755);
    assert_eq!(small[1].mode, 0o100_644);

    let busybox = b"\x7fELF not really busybox";
    let init = linux::init_script("vmkit: init ran");
    let archive = read_newc(&linux::busybox_initramfs(busybox, &init));
    let find = |name: &str| archive.iter().find(|e| e.name == name).unwrap();
    assert_eq!(find("bin/busybox").data, busybox);
    assert_eq!(find("bin/busybox").mode, 0o100_755);
    assert_eq!(find("bin/sh").data, b"busybox");
    assert_eq!(find("bin/sh").mode & 0o170_000, 0o120_000);
    assert_eq!(find("dev/console").rdev, (5, 1));
    assert_eq!(find("init").mode, 0o100_755);
    assert!(init.starts_with("#!/bin/sh\n"));
    assert!(init.contains("vmkit: init ran"));
    assert!(init.contains("poweroff -f"));
    assert_eq!(find("init").data, init.as_bytes());
}
