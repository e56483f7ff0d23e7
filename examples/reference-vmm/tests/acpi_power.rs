//! The built-in `hello` guest powers off and resets the VM through the ACPI registers the
//! reference VMM describes: it follows `hvm_start_info.rsdp_paddr` to the RSDP, the XSDT and
//! the FADT, finds the S5 sleep type in the DSDT, and writes the sleep control or reset
//! register, where vmkit-devices' ACPI power-management device stops the VM.
//!
//! They need `/dev/kvm`; where it is missing they fail with that reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` asks to skip them.

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::process::Command;
use std::time::Duration;

use common::{Finished, kvm_available, run_with_limit};
use vmkit_devices::acpi_pm::{
    RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
const LIMIT: Duration = Duration::from_secs(30);

/// The VMM's exit status for a guest reset (the binary's `exit_code` module).
const RESET: i32 = 100;
/// The hello guest's status for a `hello.end=` value it does not know.
const HELLO_BAD_CMDLINE: i32 = 4;

/// Boots the built-in hello guest with `cmdline`.
fn hello(cmdline: &str) -> Finished {
    let mut command = Command::new(VMM);
    command.args(["--cmdline", cmdline]);
    run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing")
}

/// The guest's line saying which tables and registers it found.
fn acpi_line(out: &Finished) -> &str {
    out.stdout
        .lines()
        .find(|line| line.starts_with("vmkit hello: acpi: rsdp at 0x"))
        .unwrap_or_else(|| {
            panic!(
                "no acpi line; stdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )
        })
}

#[test]
fn acpi_poweroff_ends_the_vm_with_status_zero() {
    if !kvm_available() {
        return;
    }
    let out = hello("hello.end=acpi-poweroff");
    let line = acpi_line(&out);
    assert!(
        line.contains(&format!(
            ", sleep control port {SLEEP_CONTROL_PORT:#x}, sleep status port \
             {SLEEP_STATUS_PORT:#x}, S5 type {S5_SLEEP_TYPE}"
        )),
        "{line}"
    );
    // The guest reports and exits with 5 or 6 when the tables or the device let it down, so 0
    // is the power-off.
    assert!(!out.stdout.contains("still running"), "{}", out.stdout);
    assert_eq!(
        out.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn acpi_reset_ends_the_vm_with_the_reset_status() {
    if !kvm_available() {
        return;
    }
    let out = hello("hello.end=acpi-reset");
    let line = acpi_line(&out);
    assert!(
        line.contains(&format!(
            ", reset port {RESET_PORT:#x}, reset value {RESET_VALUE:#x}"
        )),
        "{line}"
    );
    assert_eq!(
        out.status,
        Some(RESET),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn unknown_end_is_refused_by_the_guest() {
    if !kvm_available() {
        return;
    }
    let out = hello("hello.end=acpi-suspend");
    assert!(
        out.stdout.contains("bad command line: hello.end must be"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.status,
        Some(HELLO_BAD_CMDLINE),
        "stderr:\n{}",
        out.stderr
    );
}
