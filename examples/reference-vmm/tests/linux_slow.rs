//! The slow tier: Debian's kernel booted all the way to a busybox `/init`, which prints a marker
//! and runs `poweroff -f`; the VMM must then exit with status 0. Guest ring-0 code is emulated
//! instruction by instruction on the project's KVM hosts, so each boot takes minutes, and the
//! host's emulator fails on instructions the reference VMM's emulation assist completes.
//!
//! Opt-in: set `VMKIT_SLOW_TESTS=1` (never set by `scripts/test.sh` or `.ci/run`):
//!
//! ```sh
//! VMKIT_SLOW_TESTS=1 cargo test --release -p reference-vmm --test linux_slow -- --nocapture
//! ```
//!
//! Each test prints the kernel's `Run /init` line (its timestamp is the guest time to `/init`)
//! and the VMM's `--stats` (the assisted instructions per mnemonic).
//!
//! On a host whose KVM emulates ring 0 and runs ring 3 natively (PVM-style), `syscall` from ring
//! 3 jumps to `LSTAR` without leaving ring 3, with no exit a VMM could act on
//! (crates/vmkit-vcpu/tests/kvm_syscall.rs shows it with a minimal guest): init's first system
//! call then faults on the kernel's entry code and the kernel panics. A boot that ends exactly
//! so — `Run /init as init process`, then a fault with the user code segment at the first byte of
//! `entry_SYSCALL_64` — is reported as stopped short by the host and passes; any other ending
//! fails. The command line has `panic=-1` so that a panicking kernel resets at once.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use common::kvm_available;
use common::linux::{self, Ending, Scratch, run_to_exit};

/// What `/init` prints.
const MARKER: &str = "vmkit-slow-tier: /init reached";
/// The longest a boot may take.
const LIMIT: Duration = Duration::from_secs(1800);

/// Whether the slow tier runs: only with `VMKIT_SLOW_TESTS=1`, and where KVM is.
fn enabled() -> bool {
    if std::env::var_os("VMKIT_SLOW_TESTS").is_none_or(|v| v != "1") {
        eprintln!("skipped: the slow tier runs with VMKIT_SLOW_TESTS=1");
        return false;
    }
    kvm_available()
}

/// Boots `kernel` with the busybox initramfs on `cpus` vCPUs and checks that `/init` ran and
/// powered the machine off.
fn boots_to_init(kernel: &Path, cpus: u8, cmdline: &str) {
    let scratch = Scratch::new(&format!("slow-{cpus}"));
    let busybox = std::fs::read(linux::busybox()).unwrap();
    let initramfs = linux::busybox_initramfs(&busybox, &linux::init_script(MARKER));
    let initramfs = scratch.file("initramfs.cpio", &initramfs);
    let args: Vec<OsString> = vec![
        "--kernel".into(),
        kernel.into(),
        "--initramfs".into(),
        initramfs.into(),
        "--cpus".into(),
        format!("boot={cpus}").into(),
        "--memory".into(),
        "size=1G".into(),
        "--cmdline".into(),
        cmdline.into(),
        "--stats".into(),
    ];
    let run = run_to_exit(args, LIMIT);
    eprintln!("{}", run.stderr);
    eprintln!("{}", run.line("Run /init").unwrap_or("no `Run /init` line"));
    if run.line(MARKER).is_none()
        && let Some(fault) = host_syscall_defect(&run)
    {
        eprintln!(
            "stopped short of /init by the host: init's first `syscall` reached \
             entry_SYSCALL_64 still in ring 3 ({fault})"
        );
        return;
    }
    assert!(
        run.line(MARKER).is_some(),
        "/init printed its marker\n{}",
        run.describe()
    );
    assert_eq!(
        run.ending,
        Ending::Exited(Some(0)),
        "`poweroff -f` ends the VM with status 0\n{}",
        run.describe()
    );
}

/// The kernel's report of a `syscall` the host left in ring 3: after `Run /init`, a fault whose
/// frame has the user code segment (0x33) at the first byte of `entry_SYSCALL_64`.
fn host_syscall_defect(run: &linux::VmmRun) -> Option<&str> {
    run.line("Run /init as init process")?;
    run.line("RIP: 0033:entry_SYSCALL_64+0x0/")
}

#[test]
fn vmlinux_on_one_vcpu_boots_to_init() {
    if enabled() {
        boots_to_init(
            &linux::vmlinux(),
            1,
            "console=ttyS0 earlyprintk=ttyS0 panic=-1",
        );
    }
}

#[test]
fn vmlinux_on_two_vcpus_boots_to_init() {
    if enabled() {
        boots_to_init(
            &linux::vmlinux(),
            2,
            "console=ttyS0 earlyprintk=ttyS0 panic=-1",
        );
    }
}

#[test]
fn bzimage_on_one_vcpu_boots_to_init() {
    if enabled() {
        boots_to_init(
            &linux::bzimage(),
            1,
            "console=ttyS0 earlyprintk=ttyS0 panic=-1",
        );
    }
}
