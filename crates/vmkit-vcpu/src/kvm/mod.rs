//! The KVM backend: [`KvmHypervisor`] → [`KvmVm`] → [`KvmVcpu`].
//!
//! A VM gets every region of its guest memory as a memory slot, the in-kernel irqchip (PIC,
//! IOAPIC, local APICs) and PIT (with the PC-speaker port left to the VMM as a dummy), the TSS
//! and identity-map pages the layout reserves for KVM, and — where the host has it —
//! `KVM_CAP_EXIT_ON_EMULATION_FAILURE`, so that an instruction KVM cannot emulate exits with its
//! bytes instead of being turned into a guest `#UD`.

mod convert;
pub mod cpuid;
mod error;
pub mod exit;
mod kick;
mod run_area;
mod vcpu;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{
    KVM_CAP_EXIT_ON_EMULATION_FAILURE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
    kvm_cpuid_entry2, kvm_enable_cap, kvm_msi, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, NoDatamatch, VmFd};
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmkit_memory::GuestLayout;
use vmm_sys_util::eventfd::EventFd;

pub use error::Error;
pub use kick::{KICK_SIGNAL_OFFSET, KvmKicker, kick_signal};
/// The KVM structures and constants this backend speaks, for callers of its KVM-specific API.
pub use kvm_bindings;
/// The ioctl wrappers this backend is built on ([`KvmHypervisor::kvm`] returns one of its handles,
/// and [`Error`] carries its errors).
pub use kvm_ioctls;
pub use vcpu::{KvmVcpu, MAX_VCPUS, lapic_register};

use crate::hypervisor::{DataMatch, Hypervisor, IoEventAddress, Vm};
use crate::x86::{PageSize, PageSizes};

/// The capabilities this backend cannot work without, with their names for the error.
const REQUIRED_CAPS: [(Cap, &str); 7] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Where the KVM device lives.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// The only KVM API version there has ever been a stable ABI for.
const KVM_API_VERSION: i32 = 12;

/// The host's KVM: `/dev/kvm`, its supported CPUID and capabilities.
#[derive(Debug)]
pub struct KvmHypervisor {
    kvm: Kvm,
    supported_cpuid: Vec<kvm_cpuid_entry2>,
    run_size: usize,
    tsc_deadline: bool,
    exit_on_emulation_failure: bool,
}

impl KvmHypervisor {
    /// Opens [`KVM_DEVICE`], checks the API version and the capabilities this backend needs, reads
    /// the supported CPUID and installs the vCPU kick signal handler.
    pub fn new() -> Result<Self, Error> {
        Self::open(Path::new(KVM_DEVICE))
    }

    /// Like [`new`](Self::new), with the KVM device at `path` (a VMM jailed with its own `/dev`,
    /// say).
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open_error = |source| Error::OpenKvm {
            path: path.display().to_string(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| open_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
        let kvm = Kvm::new_with_path(&c_path).map_err(open_error)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(Error::ApiVersion(version));
        }
        if let Some((_, name)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(Error::MissingCapability(name));
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::SupportedCpuid)?
            .as_slice()
            .to_vec();
        let run_size = kvm.get_vcpu_mmap_size().map_err(Error::VcpuMmapSize)?;
        kick::install_kick_handler().map_err(Error::KickSignal)?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let exit_on_emulation_failure =
            kvm.check_extension_raw(u64::from(KVM_CAP_EXIT_ON_EMULATION_FAILURE)) > 0;
        Ok(Self {
            kvm,
            supported_cpuid,
            run_size,
            tsc_deadline,
            exit_on_emulation_failure,
        })
    }

    /// `KVM_GET_SUPPORTED_CPUID`: what vCPUs of this host may report.
    pub fn supported_cpuid(&self) -> &[kvm_cpuid_entry2] {
        &self.supported_cpuid
    }

    /// Whether the guest may use 1 GiB pages (`pdpe1gb` in the supported CPUID).
    pub fn supports_1g_pages(&self) -> bool {
        self.supported_page_sizes().contains(PageSize::Size1G)
    }

    /// Whether KVM emulates the local APIC's TSC-deadline timer mode.
    pub fn supports_tsc_deadline(&self) -> bool {
        self.tsc_deadline
    }

    /// Whether emulation failures exit with their instruction bytes
    /// (`KVM_CAP_EXIT_ON_EMULATION_FAILURE`).
    pub fn exits_on_emulation_failure(&self) -> bool {
        self.exit_on_emulation_failure
    }

    /// The `kvm-ioctls` handle, for what this crate does not wrap.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    fn register_memory(&self, fd: &VmFd, memory: &GuestMemoryMmap) -> Result<(), Error> {
        let slots = self.kvm.get_nr_memslots();
        let regions = memory.num_regions();
        if regions > slots {
            return Err(Error::TooManyRegions { regions, slots });
        }
        for (slot, region) in (0u32..).zip(memory.iter()) {
            let guest_addr = region.start_addr().raw_value();
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| Error::SetMemoryRegion {
                    slot,
                    guest_addr,
                    size,
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                })?;
            let mem_region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: guest_addr,
                memory_size: size,
                userspace_addr: host as u64,
            };
            // SAFETY: `host` starts the region's `size`-byte mapping; the VM and vCPUs hold clones
            // of `memory` and drop them only after closing their fds, so it outlives KVM's use.
            unsafe { fd.set_user_memory_region(mem_region) }.map_err(|source| {
                Error::SetMemoryRegion {
                    slot,
                    guest_addr,
                    size,
                    source,
                }
            })?;
        }
        Ok(())
    }
}

impl Hypervisor for KvmHypervisor {
    type Vm = KvmVm;
    type Error = Error;

    fn create_vm(&self, layout: &GuestLayout, memory: &GuestMemoryMmap) -> Result<KvmVm, Error> {
        let fd = self.kvm.create_vm().map_err(Error::CreateVm)?;
        self.register_memory(&fd, memory)?;
        let tss = layout.kvm_tss_address().raw_value();
        let tss_offset = usize::try_from(tss).map_err(|_| Error::SetTssAddress {
            addr: tss,
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        fd.set_tss_address(tss_offset)
            .map_err(|source| Error::SetTssAddress { addr: tss, source })?;
        let identity = layout.kvm_identity_map_address().raw_value();
        fd.set_identity_map_address(identity)
            .map_err(|source| Error::SetIdentityMap {
                addr: identity,
                source,
            })?;
        fd.create_irq_chip().map_err(Error::CreateIrqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(Error::CreatePit)?;
        if self.exit_on_emulation_failure {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_EXIT_ON_EMULATION_FAILURE,
                ..Default::default()
            };
            cap.args[0] = 1;
            fd.enable_cap(&cap).map_err(|source| Error::EnableCap {
                cap: "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
                source,
            })?;
        }
        Ok(KvmVm {
            shared: Arc::new(VmShared {
                fd,
                memory: memory.clone(),
                cpuid: self.supported_cpuid.clone(),
                run_size: self.run_size,
                tsc_deadline: self.tsc_deadline,
            }),
        })
    }

    fn supported_page_sizes(&self) -> PageSizes {
        cpuid::page_sizes(&self.supported_cpuid)
    }

    fn phys_bits(&self) -> u8 {
        cpuid::phys_bits(&self.supported_cpuid)
    }
}

/// What a VM's vCPUs share with it.
#[derive(Debug)]
struct VmShared {
    // Declared first so that it is closed before the memory below is unmapped.
    fd: VmFd,
    memory: GuestMemoryMmap,
    cpuid: Vec<kvm_cpuid_entry2>,
    run_size: usize,
    tsc_deadline: bool,
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct KvmVm {
    shared: Arc<VmShared>,
}

impl KvmVm {
    /// The `kvm-ioctls` VM handle, for what this crate does not wrap (GSI routing, dirty
    /// logging).
    pub fn fd(&self) -> &VmFd {
        &self.shared.fd
    }

    /// The guest memory the VM's slots map.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.shared.memory
    }
}

fn ioevent_address(addr: IoEventAddress) -> kvm_ioctls::IoEventAddress {
    match addr {
        IoEventAddress::Pio(port) => kvm_ioctls::IoEventAddress::Pio(u64::from(port)),
        IoEventAddress::Mmio(gpa) => kvm_ioctls::IoEventAddress::Mmio(gpa),
    }
}

impl Vm for KvmVm {
    type Vcpu = KvmVcpu;
    type Error = Error;

    fn create_vcpu(&self, id: u32, vcpu_count: u32) -> Result<KvmVcpu, Error> {
        KvmVcpu::new(self.shared.clone(), id, vcpu_count)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), Error> {
        self.shared
            .fd
            .register_irqfd(fd, gsi)
            .map_err(Error::ioctl("KVM_IRQFD"))
    }

    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample_fd: &EventFd,
        gsi: u32,
    ) -> Result<(), Error> {
        self.shared
            .fd
            .register_irqfd_with_resample(fd, resample_fd, gsi)
            .map_err(Error::ioctl("KVM_IRQFD(resample)"))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), Error> {
        self.shared
            .fd
            .unregister_irqfd(fd, gsi)
            .map_err(Error::ioctl("KVM_IRQFD(deassign)"))
    }

    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), Error> {
        let vm = &self.shared.fd;
        let addr = ioevent_address(addr);
        match datamatch {
            None => vm.register_ioevent(fd, &addr, NoDatamatch),
            Some(DataMatch::U8(v)) => vm.register_ioevent(fd, &addr, v),
            Some(DataMatch::U16(v)) => vm.register_ioevent(fd, &addr, v),
            Some(DataMatch::U32(v)) => vm.register_ioevent(fd, &addr, v),
            Some(DataMatch::U64(v)) => vm.register_ioevent(fd, &addr, v),
        }
        .map_err(Error::ioctl("KVM_IOEVENTFD"))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), Error> {
        let vm = &self.shared.fd;
        let addr = ioevent_address(addr);
        match datamatch {
            None => vm.unregister_ioevent(fd, &addr, NoDatamatch),
            Some(DataMatch::U8(v)) => vm.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U16(v)) => vm.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U32(v)) => vm.unregister_ioevent(fd, &addr, v),
            Some(DataMatch::U64(v)) => vm.unregister_ioevent(fd, &addr, v),
        }
        .map_err(Error::ioctl("KVM_IOEVENTFD(deassign)"))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), Error> {
        self.shared
            .fd
            .set_irq_line(gsi, level)
            .map_err(Error::ioctl("KVM_IRQ_LINE"))
    }

    fn signal_msi(&self, address: u64, data: u32) -> Result<bool, Error> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        // KVM answers > 0 when an APIC took the interrupt, 0 when the guest masked it, and
        // EPERM when no APIC matched the destination: the guest's doing, not an error.
        match self.shared.fd.signal_msi(msi) {
            Ok(delivered) => Ok(delivered > 0),
            Err(e) if e.errno() == libc::EPERM => Ok(false),
            Err(e) => Err(Error::ioctl("KVM_SIGNAL_MSI")(e)),
        }
    }
}
