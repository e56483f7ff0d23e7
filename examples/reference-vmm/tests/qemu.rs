//! Cross-checks against QEMU: the project's guests booted by QEMU and by the reference VMM must
//! keep the same contract, and the `exits` guest must print the same report under both.
//!
//! They need `/dev/kvm` (same rule as the other KVM tests: `VMKIT_SKIP_KVM_TESTS=1` skips them)
//! and `qemu-system-x86_64` (Debian's `qemu-system-x86`, which `scripts/setup.sh` installs); a
//! missing QEMU fails the test, naming it. Every child process is killed after [`LIMIT`].

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::process::Command;

use common::{Finished, LIMIT, kvm_available, qemu_command, run_qemu, run_with_limit};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// The guest images the build script built (the same bytes the binary embeds).
const HELLO_ELF: &str = concat!(env!("OUT_DIR"), "/hello.elf");
const EXITS_ELF: &str = concat!(env!("OUT_DIR"), "/exits.elf");
/// The longest any VMM may take to run one of these guests.
const MEMORY_MIB: u32 = 128;

/// Which devices a run adds beyond COM1 and the debug-exit port.
#[derive(Clone, Copy)]
enum TestDev {
    With,
    Without,
}

/// Runs `kernel` under the reference VMM; returns its output and the guest's status.
fn reference_vmm(kernel: &str, cmdline: &str, testdev: TestDev) -> Finished {
    let memory = format!("size={MEMORY_MIB}M");
    let mut command = Command::new(VMM);
    command.args([
        "--kernel",
        kernel,
        "--cmdline",
        cmdline,
        "--memory",
        &memory,
    ]);
    if let TestDev::With = testdev {
        command.arg("--testdev");
    }
    run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing")
}

/// Runs `kernel` under QEMU; returns its output with the guest's status in place of QEMU's.
fn qemu(kernel: &str, cmdline: &str, testdev: TestDev) -> Finished {
    let mut command = qemu_command(kernel, cmdline, MEMORY_MIB);
    if let TestDev::With = testdev {
        command.args(["-device", "pc-testdev"]);
    }
    run_qemu(&mut command)
}

/// What the `hello` guest promises, whatever VMM boots it.
#[derive(Debug, PartialEq)]
struct HelloContract {
    /// The quoted command line of the banner.
    cmdline: String,
    /// Whether RAM at 1 MiB is reported usable (type 1) for at least 1 MiB.
    ram_at_1m: bool,
    /// Whether one `memmap` line follows the banner per entry it announces.
    memmap_complete: bool,
    status: Option<i32>,
}

fn hello_contract(run: &Finished) -> HelloContract {
    let unexpected = || -> ! { panic!("not the hello guest's output: {run:?}") };
    let mut lines = run.stdout.lines();
    let banner = lines.next().unwrap_or_default();
    let Some((entries, cmdline)) = banner
        .strip_prefix("vmkit hello: booted via PVH, start_info at 0x")
        .and_then(|rest| rest.split_once(", "))
        .and_then(|(_, rest)| rest.split_once(" memory map entries, cmdline "))
    else {
        unexpected()
    };
    let entries: usize = entries.parse().unwrap_or_else(|_| unexpected());
    let number = |field: &str| match field.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => field.parse().ok(),
    };
    let memmap: Vec<(u64, u64, u64)> = lines
        .map(|line| {
            let fields = line
                .strip_prefix("vmkit hello: memmap ")
                .unwrap_or_else(|| unexpected());
            let value = |key: &str| {
                fields
                    .split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(number)
                    .unwrap_or_else(|| unexpected())
            };
            (value("addr="), value("size="), value("type="))
        })
        .collect();
    HelloContract {
        cmdline: cmdline.to_string(),
        ram_at_1m: memmap
            .iter()
            .any(|&(addr, size, kind)| kind == 1 && addr <= 0x10_0000 && addr + size >= 0x20_0000),
        memmap_complete: memmap.len() == entries,
        status: run.status,
    }
}

#[test]
fn hello_keeps_its_contract_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let cmdline = "console=ttyS0 vmkit.test=1";
    let ours = reference_vmm(HELLO_ELF, cmdline, TestDev::Without);
    let theirs = qemu(HELLO_ELF, cmdline, TestDev::Without);
    let expected = HelloContract {
        cmdline: format!("\"{cmdline}\""),
        ram_at_1m: true,
        memmap_complete: true,
        status: Some(0),
    };
    assert_eq!(hello_contract(&ours), expected, "reference VMM: {ours:?}");
    assert_eq!(hello_contract(&theirs), expected, "QEMU: {theirs:?}");
}

#[test]
fn exits_guest_reports_the_same_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let cmdline = "quiet exits.n=1000";
    let ours = reference_vmm(EXITS_ELF, cmdline, TestDev::With);
    let theirs = qemu(EXITS_ELF, cmdline, TestDev::With);
    assert_eq!(ours.status, Some(0), "reference VMM: {ours:?}");
    assert_eq!(theirs.status, Some(0), "QEMU: {theirs:?}");
    assert_eq!(ours.stdout, theirs.stdout);
    let report: Vec<&str> = ours.stdout.lines().collect();
    assert_eq!(report.len(), 3, "{report:?}");
    assert_eq!(report[0], "vmkit exits: n=1000");
    for (line, kind) in report[1..].iter().zip(["pio", "mmio"]) {
        let prefix = format!("vmkit exits: {kind} writes=1000 reads=1000 checksum=0x");
        assert!(line.starts_with(&prefix) && line.ends_with(" ok"), "{line}");
    }
}

#[test]
fn exits_guest_without_the_test_device_fails_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    let ours = reference_vmm(EXITS_ELF, "exits.n=5", TestDev::Without);
    let theirs = qemu(EXITS_ELF, "exits.n=5", TestDev::Without);
    assert_eq!(ours.status, Some(1), "reference VMM: {ours:?}");
    assert_eq!(theirs.status, Some(1), "QEMU: {theirs:?}");
    // An unclaimed port reads all ones in both; an unclaimed MMIO read is all ones here and
    // zero in QEMU, so only the port line is compared.
    let pio = "vmkit exits: pio writes=1 reads=1 checksum=0xffffffff \
               mismatch at 0: wrote 0x5a5a1234 read 0xffffffff";
    for run in [&ours, &theirs] {
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[..2], ["vmkit exits: n=5", pio], "{run:?}");
        assert!(
            lines[2].starts_with("vmkit exits: mmio writes=1 reads=1 "),
            "{run:?}"
        );
        assert!(lines[2].contains(" mismatch at 0: "), "{run:?}");
    }
}

#[test]
fn malformed_exits_option_is_refused_under_both_vmms() {
    if !kvm_available() {
        return;
    }
    for cmdline in ["exits.n=12x", "exits.n=", "exits.n=4294967296"] {
        let ours = reference_vmm(EXITS_ELF, cmdline, TestDev::With);
        let theirs = qemu(EXITS_ELF, cmdline, TestDev::With);
        assert_eq!(ours.status, Some(4), "reference VMM, {cmdline:?}: {ours:?}");
        assert_eq!(theirs.status, Some(4), "QEMU, {cmdline:?}: {theirs:?}");
        assert_eq!(ours.stdout, theirs.stdout);
        assert_eq!(
            ours.stdout,
            "vmkit exits: bad command line: exits.n must be a decimal number below 2^32\n"
        );
    }
}

/// The reference VMM alone: the built-in `exits` guest is the one the build placed in `OUT_DIR`,
/// and every round trip is one exit that reaches the test device.
#[test]
fn builtin_exits_guest_reaches_the_test_device_once_per_access() {
    if !kvm_available() {
        return;
    }
    let from_file = reference_vmm(EXITS_ELF, "exits.n=50", TestDev::With);
    let builtin = run_with_limit(
        Command::new(VMM).args([
            "--builtin",
            "exits",
            "--testdev",
            "--cmdline",
            "exits.n=50",
            "--stats",
        ]),
        LIMIT,
        "the reference VMM binary is missing",
    );
    assert_eq!(builtin.status, Some(0), "{builtin:?}");
    assert_eq!(builtin.stdout, from_file.stdout);
    let hits = |name: &str| -> u64 {
        let row = builtin
            .stderr
            .lines()
            .find(|line| line.split_whitespace().nth(2) == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in {}", builtin.stderr));
        row.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(hits("testdev"), 100);
    assert_eq!(hits("testdev-iomem"), 100);
    assert_eq!(hits("testdev-irq"), 0);
    assert!(builtin.stderr.contains("mmio-read"), "{}", builtin.stderr);
    assert!(
        builtin.stderr.contains("process start at CLOCK_MONOTONIC "),
        "{}",
        builtin.stderr
    );
}
