//! The composition on vmkit-vcpu's fake backend: `load` → `Vmm::build` → `start` → `wait` →
//! `shutdown` with the built-in guest loaded into guest memory and a scripted boot vCPU standing
//! in for it, so the wiring (buses, COM1 and its output thread, the debug-exit port, the exit
//! status) is checked without `/dev/kvm`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use vmkit_devices::debug_exit::DEBUG_EXIT_PORT;
use vmkit_devices::serial::COM1_PORT;
use vmkit_vcpu::Hypervisor;
use vmkit_vcpu::fake::{FakeHypervisor, ScriptedExit};

use super::{Vmm, load};
use crate::cli::Cli;
use crate::exit_code;

/// A file for COM1's output, unique to this process and `test`.
fn serial_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "reference-vmm-{}-{test}.serial",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// Builds, starts and waits for the VM `args` describe on `hypervisor`, shuts it down and
/// returns its exit status.
fn run_on(hypervisor: &FakeHypervisor, args: &[&str]) -> anyhow::Result<u8> {
    let cli = Cli::try_parse_from(
        ["reference-vmm", "--seccomp", "false", "--timeout", "60"]
            .iter()
            .chain(args),
    )?;
    let loaded = load(&cli, || Ok(hypervisor.phys_bits()))?;
    let vmm = Vmm::build(&cli, loaded, hypervisor)?;
    let running = vmm.start(&cli)?;
    let ended = running.wait(cli.timeout);
    running.shutdown(ended, None, Instant::now())
}

#[test]
fn guest_output_reaches_the_serial_file_and_the_debug_exit_is_the_status() {
    let path = serial_file("debug-exit");
    let serial = format!("file={}", path.display());
    let hypervisor = FakeHypervisor::default().script(
        0,
        [
            // `rep outsb` of a line to COM1's data register, then the status to debug-exit.
            ScriptedExit::IoOut {
                port: COM1_PORT,
                size: 1,
                data: b"hello from a fake vCPU\n".to_vec(),
            },
            ScriptedExit::IoOut {
                port: DEBUG_EXIT_PORT,
                size: 1,
                data: vec![7],
            },
        ],
    );
    let status = run_on(&hypervisor, &["--serial", &serial]).unwrap();
    assert_eq!(status, 7);
    let output = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(output, "hello from a fake vCPU\n");
}

#[test]
fn a_triple_fault_has_its_status() {
    let hypervisor = FakeHypervisor::default().script(0, [ScriptedExit::TripleFault]);
    let status = run_on(&hypervisor, &["--serial", "null"]).unwrap();
    assert_eq!(status, exit_code::TRIPLE_FAULT);
}

#[test]
fn a_failing_vcpu_is_an_error_naming_it() {
    // The script ends: the backend's next run fails.
    let hypervisor = FakeHypervisor::default().script(
        0,
        [ScriptedExit::IoOut {
            port: COM1_PORT,
            size: 1,
            data: b"x".to_vec(),
        }],
    );
    let err = run_on(&hypervisor, &["--serial", "off"]).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "vCPU 0: the vCPU ran past the end of its script"
    );
}
