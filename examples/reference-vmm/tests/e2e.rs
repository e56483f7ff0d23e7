//! End-to-end tests: the reference VMM binary booting real guests under KVM.
//!
//! They need `/dev/kvm`; where it is missing they fail with that reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` asks to skip them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use common::kvm_available;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmkit_boot::bzimage::BzImageBuilder;
use vmkit_boot::elf::ElfBuilder;
use vmkit_memory::vm_memory::GuestAddress;

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// Where the test guests are linked (and enter, in 32-bit protected mode with paging off).
const LOAD: u64 = 0x10_0000;

/// Exit statuses documented in the binary's `exit_code` module.
const RESET: i32 = 100;
const TRIPLE_FAULT: i32 = 101;
const TIMEOUT: i32 = 124;
const VMM_ERROR: i32 = 125;
const SIGINT: i32 = 130;
const SIGTERM: i32 = 143;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmkit-e2e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PVH ELF whose code (32-bit, at [`LOAD`]) is `code`.
fn guest(code: &[u8]) -> Vec<u8> {
    ElfBuilder::new()
        .segment(GuestAddress(LOAD), code, 0x1000)
        .pvh_entry(GuestAddress(LOAD))
        .build()
}

/// `cli; hlt` forever: only a signal or the timeout ends it.
const SPIN_HLT: &[u8] = &[0xFA, 0xF4, 0xEB, 0xFD];

fn vmm(args: &[&str]) -> Command {
    let mut cmd = Command::new(VMM);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    vmm(args).output().unwrap()
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the VMM did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn default_guest_prints_banner_and_exits_zero() {
    if !kvm_available() {
        return;
    }
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("vmkit hello: booted via PVH"),
        "stdout: {stdout:?}"
    );
    assert!(
        stdout.contains("memmap addr=0x100000"),
        "stdout: {stdout:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cmdline_memory_and_serial_file_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("serial");
    let log = dir.0.join("serial.log");
    let serial = format!("file={}", log.display());
    let out = run(&[
        "--cmdline",
        "console=ttyS0 quiet",
        "--memory",
        "size=5G",
        "--serial",
        &serial,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cmdline \"console=ttyS0 quiet\""), "{text}");
    // 5 GiB: 3 GiB below the hole, 2 GiB above 4 GiB.
    assert!(
        text.contains("memmap addr=0x100000000 size=0x80000000 type=1"),
        "{text}"
    );
}

#[test]
fn stats_print_the_table_and_the_timeline() {
    if !kvm_available() {
        return;
    }
    let out = run(&["--stats", "--serial", "null"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "com1",
        "debug-exit",
        "io-out",
        "first guest exit",
        "first serial byte",
        "guest exit",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }
}

#[test]
fn guest_status_and_serial_output_of_a_custom_kernel() {
    if !kvm_available() {
        return;
    }
    let code = [
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'X', // mov al, 'X'
        0xEE, // out dx, al
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xB8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
        0xEF, // out dx, eax
        0xF4, // hlt
    ];
    let dir = TempDir::new("status");
    let kernel = dir.file("k.elf", &guest(&code));
    let out = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.stdout, b"X");
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn i8042_reset_ends_the_vm_with_the_reset_status() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("reset");
    let kernel = dir.file("k.elf", &guest(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4]));
    let out = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(RESET));
    assert!(stderr_line(&out).contains("reset"));
}

#[test]
fn triple_fault_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    // lidt [LOAD + 0x10] (a zero-limit IDT), then ud2: #UD → #GP → #DF → shutdown.
    let mut code = vec![0x0F, 0x01, 0x1D, 0x10, 0x00, 0x10, 0x00, 0x0F, 0x0B];
    code.resize(0x16, 0);
    let dir = TempDir::new("triple");
    let kernel = dir.file("k.elf", &guest(&code));
    let out = run(&["--kernel", kernel.to_str().unwrap(), "--timeout", "20"]);
    assert_eq!(
        out.status.code(),
        Some(TRIPLE_FAULT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stderr_line(&out).contains("triple fault"));
}

#[test]
fn timeout_stops_a_guest_halted_with_interrupts_off() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("timeout");
    let kernel = dir.file("k.elf", &guest(SPIN_HLT));
    let mut child = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--timeout",
        "0.5",
        "--cpus",
        "boot=2",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(TIMEOUT));
}

fn signal_stops_the_vm(signal: libc::c_int, expected: i32) {
    let dir = TempDir::new(&format!("signal{signal}"));
    let kernel = dir.file("k.elf", &guest(SPIN_HLT));
    let mut child = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "boot=2",
        "--stats",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Let the guest reach its halt loop (the first exit cannot be observed from here).
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: `child.id()` is the pid of a child this test spawned and has not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(expected));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("received; VM stopped"), "{stderr}");
}

#[test]
fn sigterm_stops_the_vm_and_joins_the_vcpus() {
    if kvm_available() {
        signal_stops_the_vm(libc::SIGTERM, SIGTERM);
    }
}

#[test]
fn sigint_stops_the_vm() {
    if kvm_available() {
        signal_stops_the_vm(libc::SIGINT, SIGINT);
    }
}

#[test]
fn four_vcpus_boot_hello_and_exit_promptly() {
    if !kvm_available() {
        return;
    }
    let out = run(&["--cpus", "boot=4"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vmkit hello: booted via PVH"));
    assert_eq!(out.status.code(), Some(0));
}

/// Bad user input: one line on stderr naming the problem, status 125, no panic. No KVM needed.
#[test]
fn bad_input_gets_one_line_and_a_nonzero_status() {
    let dir = TempDir::new("bad");
    let not_elf = dir.file(
        "not-elf",
        b"this is not an ELF image at all, just some text....................",
    );
    let no_note = dir.file(
        "no-note.elf",
        &ElfBuilder::new()
            .segment(GuestAddress(LOAD), SPIN_HLT, 0x1000)
            .build(),
    );
    let old_bzimage = dir.file(
        "old-bzimage",
        &BzImageBuilder::new().protocol(0x020b).build(),
    );
    // A decompressor needing 1 GiB of room from 16 MiB cannot run in 512 MiB of RAM.
    let greedy_bzimage = dir.file(
        "greedy-bzimage",
        &BzImageBuilder::new().init_size(1 << 30).build(),
    );
    let empty = dir.file("empty.cpio", b"");
    let missing = dir.0.join("missing.elf");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", missing.to_str().unwrap()],
            "cannot read kernel",
        ),
        (
            vec!["--kernel", not_elf.to_str().unwrap()],
            "neither an ELF file (vmlinux, PVH) nor a Linux bzImage",
        ),
        (vec!["--kernel", old_bzimage.to_str().unwrap()], "2.11"),
        (
            vec!["--kernel", greedy_bzimage.to_str().unwrap()],
            "init_size",
        ),
        (
            vec!["--initramfs", missing.to_str().unwrap()],
            "cannot read initramfs",
        ),
        (vec!["--initramfs", empty.to_str().unwrap()], "is empty"),
        (vec!["--kernel", no_note.to_str().unwrap()], "PVH"),
        (vec!["--memory", "size=1M"], "--memory"),
        (vec!["--memory", "size=lots"], "--memory"),
        (vec!["--cpus", "boot=0"], "--cpus"),
        (vec!["--timeout", "-1"], "--timeout"),
        (vec!["--serial", "pty"], "--serial"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["stray"], "stray"),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(VMM_ERROR), "{args:?}");
        let line = stderr_line(&out);
        assert!(line.contains(needle), "{args:?}: {line:?} lacks {needle:?}");
        assert!(line.starts_with("reference-vmm: "), "{line}");
    }
}

#[test]
fn help_exits_zero() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--cmdline",
        "--memory",
        "--cpus",
        "--serial",
        "--timeout",
        "--stats",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}
