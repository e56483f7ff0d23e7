#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`guest`]: the guest code (exit loops, tiny PVH ELFs).
//! - [`exit_path`]: vmkit's full exit path and the raw kvm-ioctls baseline.
//! - [`process`]: the reference VMM as a process: start-up timeline and `/proc` memory figures.
//! - [`summary`]: medians and the printed table.
//! - [`block`]: 4 KiB block reads seen by a guest under the reference VMM and QEMU, and by the
//!   host.
//! - [`suite`]: the three benchmarks, each returning table rows.

pub mod block;
pub mod exit_path;
pub mod guest;
pub mod process;
pub mod suite;
pub mod summary;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// vmkit's KVM backend failed: {0}
    #[error("vmkit's KVM backend failed: {0}")]
    Vmkit(#[from] vmkit_vcpu::Error),
    /// A raw KVM call ({what}) failed: {source}
    #[error("a raw KVM call ({what}) failed: {source}")]
    RawKvm {
        /// The call.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// A device could not be put on a bus: {0}
    #[error("a device could not be put on a bus: {0}")]
    Bus(#[from] vmkit_exits::BusError),
    /// Guest memory could not be set up: {0}
    #[error("guest memory could not be set up: {0}")]
    Memory(String),
    /// The guest did not run as the benchmark expects: {0}
    #[error("the guest did not run as the benchmark expects: {0}")]
    Guest(String),
    /// Cannot run the reference VMM at {path}: {source}
    #[error("cannot run the reference VMM at {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Waiting for the reference VMM failed: {0}
    #[error("waiting for the reference VMM failed: {0}")]
    Wait(std::io::Error),
    /// The reference VMM binary is not at {0}; build it with `cargo build --release -p reference-vmm` or name it in VMKIT_VMM
    #[error(
        "the reference VMM binary is not at {0}; build it with \
         `cargo build --release -p reference-vmm` or name it in VMKIT_VMM"
    )]
    NoVmm(String),
    /// The reference VMM's output is not what the benchmark expects: {0}
    #[error("the reference VMM's output is not what the benchmark expects: {0}")]
    Output(String),
    /// Cannot read {path}: {source}
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Cannot confine a thread with the reference VMM's vCPU seccomp list: {0}
    #[error("cannot confine a thread with the reference VMM's vCPU seccomp list: {0}")]
    Seccomp(String),
    /// Cannot write the guest image {path}: {source}
    #[error("cannot write the guest image {path}: {source}")]
    WriteImage {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// For tests: the host's KVM, `None` (with a note) when `VMKIT_SKIP_KVM_TESTS=1` asks to skip
/// the KVM tests; a panic naming the reason when `/dev/kvm` cannot be used.
#[cfg(test)]
pub(crate) fn kvm_available() -> Option<vmkit_vcpu::KvmHypervisor> {
    if std::env::var_os("VMKIT_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipped: VMKIT_SKIP_KVM_TESTS=1");
        return None;
    }
    match vmkit_vcpu::KvmHypervisor::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => panic!(
            "this test needs /dev/kvm ({e}); set VMKIT_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly"
        ),
    }
}
