//! The KVM backend's error.

use std::io;

use kvm_ioctls::Error as KvmError;

use super::exit::ExitError;
use crate::x86::EntryError;

/// An error of the KVM backend; each names the ioctl, register or MSR that failed.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum Error {
    /// opening {path} failed
    OpenKvm {
        /// The KVM device that was opened.
        path: String,
        /// The error.
        #[source]
        source: KvmError,
    },
    /// KVM API version {0} is not the stable version 12
    ApiVersion(i32),
    /// KVM lacks the capability {0}, which this backend needs
    MissingCapability(&'static str),
    /// KVM_GET_SUPPORTED_CPUID failed
    SupportedCpuid(#[source] KvmError),
    /// KVM_GET_VCPU_MMAP_SIZE failed
    VcpuMmapSize(#[source] KvmError),
    /// installing the vCPU kick signal handler failed
    KickSignal(#[source] io::Error),
    /// KVM_CREATE_VM failed
    CreateVm(#[source] KvmError),
    /// the guest memory has {regions} regions, more than the {slots} memory slots KVM offers
    TooManyRegions {
        /// Regions in the guest memory.
        regions: usize,
        /// KVM's slot limit.
        slots: usize,
    },
    /// KVM_SET_USER_MEMORY_REGION for slot {slot} ({size:#x} bytes at {guest_addr:#x}) failed
    SetMemoryRegion {
        /// The slot.
        slot: u32,
        /// Guest-physical start of the region.
        guest_addr: u64,
        /// Size of the region.
        size: u64,
        /// The ioctl's error.
        #[source]
        source: KvmError,
    },
    /// KVM_SET_TSS_ADDR at {addr:#x} failed
    SetTssAddress {
        /// The address.
        addr: u64,
        /// The ioctl's error.
        #[source]
        source: KvmError,
    },
    /// KVM_SET_IDENTITY_MAP_ADDR at {addr:#x} failed
    SetIdentityMap {
        /// The address.
        addr: u64,
        /// The ioctl's error.
        #[source]
        source: KvmError,
    },
    /// KVM_CREATE_IRQCHIP failed
    CreateIrqchip(#[source] KvmError),
    /// KVM_CREATE_PIT2 failed
    CreatePit(#[source] KvmError),
    /// KVM_ENABLE_CAP({cap}) failed
    EnableCap {
        /// The capability.
        cap: &'static str,
        /// The ioctl's error.
        #[source]
        source: KvmError,
    },
    /// vCPU {id} of {count} is out of range (at most 255 vCPUs, IDs below the count)
    VcpuId {
        /// The requested ID.
        id: u32,
        /// The requested vCPU count.
        count: u32,
    },
    /// KVM_CREATE_VCPU for vCPU {id} failed
    CreateVcpu {
        /// The vCPU.
        id: u32,
        /// The ioctl's error.
        #[source]
        source: KvmError,
    },
    /// mapping the vCPU run area failed
    MapRunArea(#[source] io::Error),
    /// KVM_SET_CPUID2 failed
    SetCpuid(#[source] KvmError),
    /// the {what} list has {count} entries, more than KVM accepts
    TooManyEntries {
        /// What the list holds (CPUID, MSR).
        what: &'static str,
        /// Its length.
        count: usize,
    },
    /// {ioctl} failed
    Ioctl {
        /// The ioctl that failed (KVM_GET_REGS, KVM_SET_LAPIC, …).
        ioctl: &'static str,
        /// Its error.
        #[source]
        source: KvmError,
    },
    /// KVM_SET_MSRS refused {name} (MSR {index:#x}) = {value:#x}
    SetMsrs {
        /// The MSR the host refused (the first one it did not set).
        index: u32,
        /// Its architectural name.
        name: &'static str,
        /// The value that was refused.
        value: u64,
    },
    /// exception vector {0} cannot be injected (vectors 0-31 except NMI, 2)
    InvalidException(u8),
    /// the entry state is invalid
    Entry(#[from] EntryError),
    /// the guest's XSAVE area is {0} bytes, more than the 4096 of KVM_GET/SET_XSAVE
    XsaveTooLarge(usize),
    /// an XSAVE area of {0} bytes was given where 4096 are needed
    XsaveSize(usize),
    /// writing the boot GDT to guest memory at {0:#x} failed
    WriteGdt(u64),
    /// KVM_RUN failed
    Run(#[source] io::Error),
    /// the guest accessed guest-physical {gpa:#x} (+{size:#x}), which KVM could not resolve
    MemoryFault {
        /// The faulting address.
        gpa: u64,
        /// The size of the access.
        size: u64,
    },
    /// KVM reported a malformed exit
    MalformedExit(#[from] ExitError),
    /// completing the pending I/O of the last exit produced exit {0} instead of finishing
    ExitDuringCompletion(u32),
}

impl Error {
    pub(crate) fn ioctl(ioctl: &'static str) -> impl FnOnce(KvmError) -> Error {
        move |source| Error::Ioctl { ioctl, source }
    }
}
