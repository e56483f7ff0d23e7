#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! - [`hypervisor`]: the [`Hypervisor`] / [`Vm`] / [`Vcpu`] trait family and [`Kick`]; a
//!   vCPU's whole state goes in and out as a [`VcpuSnapshot`] ([`Vcpu::state`],
//!   [`Vcpu::set_state`]).
//! - [`run`]: [`RunExit`] and [`Exits`] (one [`VmExit`](vmkit_exits::VmExit) per string-I/O
//!   element), the [`ExitHandler`] trait, the [`run_until_stop`] driver and
//!   [`run_until_stop_with_assist`], which hands emulation failures to the emulation assist,
//!   and their `_inspected` variants.
//! - [`interrupts`]: ready-made interrupt triggers over any [`Vm`]: [`IrqLine`]
//!   (`KVM_IRQ_LINE`), [`IrqfdLine`] (irqfd, with a resample fd for level lines) and [`MsiLine`]
//!   (`KVM_SIGNAL_MSI`), implementing vmkit-exits' [`InterruptTrigger`] and [`MsiTrigger`].
//! - [`pause`]: [`Inspector`] and [`PauseHandle`], pausing a running vCPU from another thread to
//!   inspect it between two entries (registers, `KVM_TRANSLATE`, guest memory).
//! - [`x86`]: backend-neutral entry state (PVH, 64-bit Linux), boot MSRs, FPU and LAPIC state,
//!   page sizes.
//! - [`kvm`]: the KVM backend, its CPUID, kick protocol and the fuzzable
//!   [`convert_exit`](kvm::exit::convert_exit).
//! - `fake` (feature `test-utils`): an in-memory backend replaying scripted exits, for tests
//!   without `/dev/kvm`.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(test, feature = "test-utils"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub mod fake;
pub mod hypervisor;
pub mod interrupts;
pub mod kvm;
pub mod pause;
pub mod run;
pub mod x86;

pub use hypervisor::{DataMatch, Hypervisor, IoEventAddress, Kick, Vcpu, Vm};
pub use interrupts::{IrqLine, IrqfdError, IrqfdLine, MsiLine};
pub use kvm::{Error, KvmHypervisor, KvmKicker, KvmVcpu, KvmVm, MAX_VCPUS};
pub use pause::{Inspector, PauseHandle};
pub use run::{
    ExitHandler, Exits, LoopExit, RunExit, handle_exits, run_until_stop, run_until_stop_inspected,
    run_until_stop_with_assist, run_until_stop_with_assist_inspected,
};
// Re-exports: the foreign crates and types of this crate's public signatures, so that callers
// need not depend on the same versions themselves (`kvm::kvm_bindings` and `kvm::kvm_ioctls`
// are the KVM backend's).
/// vm-memory, whose guest memory [`Hypervisor::create_vm`] maps.
pub use vm_memory;
/// The guest-physical address type of [`Vcpu::setup_pvh`] and [`LongModeEntry`] (vm-memory's,
/// as vmkit-boot returns it), re-exported so that callers need not pin the same vm-memory version.
pub use vm_memory::GuestAddress;
/// The guest memory [`Hypervisor::create_vm`] maps.
pub use vm_memory::GuestMemoryMmap;
/// The trigger traits the lines in [`interrupts`] implement (defined in vmkit-exits).
pub use vmkit_exits::{InterruptTrigger, MsiTrigger};
/// The eventfd type of [`Vm`]'s irqfd and ioeventfd methods and of [`IrqfdLine`], re-exported so
/// that callers need not depend on the same vmm-sys-util version.
pub use vmm_sys_util::eventfd::EventFd;
pub use x86::{FpuState, LapicState, LongModeEntry, PageSizes, VcpuSnapshot};
