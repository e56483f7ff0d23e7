//! The backend-neutral trait family: a [`Hypervisor`] creates [`Vm`]s, a `Vm` creates [`Vcpu`]s.
//!
//! The shape follows Cloud Hypervisor's `hypervisor` crate, with associated types instead of
//! trait objects so that a vCPU's exits can borrow its run area without an allocation.

use std::sync::atomic::AtomicBool;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmkit_exits::state::XSAVE_AREA_SIZE;
use vmkit_exits::{AssistPolicy, EmulationAssist, VcpuState};
use vmkit_memory::GuestLayout;
use vmm_sys_util::eventfd::EventFd;

use crate::run::{ExitHandler, LoopExit, RunExit, run_until_stop, run_until_stop_with_assist};
use crate::x86::msr::MsrValue;
use crate::x86::state::{XSTATE_BV, XSTATE_X87_SSE};
use crate::x86::{FpuState, LapicState, LongModeEntry, PageSizes, SNAPSHOT_MSRS, VcpuSnapshot};

/// A hypervisor backend: creates VMs and reports what the host supports.
pub trait Hypervisor {
    /// The backend's VM.
    type Vm: Vm<Error = Self::Error>;
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates a VM over `memory`, laid out as `layout` says (the backend's reserved pages and
    /// interrupt controllers included).
    ///
    /// The VM keeps `memory` mapped for as long as it or any of its vCPUs exists.
    fn create_vm(
        &self,
        layout: &GuestLayout,
        memory: &GuestMemoryMmap,
    ) -> Result<Self::Vm, Self::Error>;

    /// The page sizes guest page tables may use: the boot page-table builder picks the largest.
    fn supported_page_sizes(&self) -> PageSizes;

    /// The guest's physical-address width in bits (`MAXPHYADDR`, as its CPUID reports it): what
    /// [`GuestLayout::with_phys_bits`] takes, so that the layout's high MMIO window ends where
    /// the guest can still address it.
    fn phys_bits(&self) -> u8;
}

/// Where an [`IoEvent`](Vm::register_ioevent) listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    /// A port.
    Pio(u16),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// The value (and with it the access size) a write must carry for an ioevent to fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataMatch {
    /// A 1-byte write of this value.
    U8(u8),
    /// A 2-byte write of this value.
    U16(u16),
    /// A 4-byte write of this value.
    U32(u32),
    /// An 8-byte write of this value.
    U64(u64),
}

/// A virtual machine: guest memory, interrupt controllers and vCPUs.
pub trait Vm {
    /// The backend's vCPU.
    type Vcpu: Vcpu<Error = Self::Error>;
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates vCPU `id` of `vcpu_count`, with CPUID, local APIC and boot MSRs configured.
    ///
    /// `vcpu_count` shapes the topology the vCPU reports (one socket of `vcpu_count` cores);
    /// `id` is also its APIC ID.
    fn create_vcpu(&self, id: u32, vcpu_count: u32) -> Result<Self::Vcpu, Self::Error>;

    /// Creates vCPUs `0..count`.
    fn create_vcpus(&self, count: u32) -> Result<Vec<Self::Vcpu>, Self::Error> {
        (0..count).map(|id| self.create_vcpu(id, count)).collect()
    }

    /// Makes a write to `fd` pulse `gsi` (raise, then lower): an edge-triggered line.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), Self::Error>;

    /// Makes a write to `fd` raise the level-triggered line `gsi` and keep it raised until the
    /// guest acknowledges the interrupt (EOI at its interrupt controller). At that point the
    /// backend lowers the line and signals `resample_fd`; a device whose condition still holds
    /// writes `fd` again. [`IrqfdLine::level`](crate::IrqfdLine::level) does that bookkeeping.
    fn register_irqfd_with_resample(
        &self,
        fd: &EventFd,
        resample_fd: &EventFd,
        gsi: u32,
    ) -> Result<(), Self::Error>;

    /// Undoes [`register_irqfd`](Vm::register_irqfd) or
    /// [`register_irqfd_with_resample`](Vm::register_irqfd_with_resample).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), Self::Error>;

    /// Makes a guest write to `addr` (matching `datamatch`, if given) signal `fd` instead of
    /// exiting to the VMM.
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), Self::Error>;

    /// Undoes [`register_ioevent`](Vm::register_ioevent) (same arguments).
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), Self::Error>;

    /// Drives interrupt line `gsi` to `level`.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), Self::Error>;

    /// Delivers a message-signalled interrupt (MSI or MSI-X): the write of `data` to `address`
    /// that a device's message table holds, as the guest programmed it. On x86 the address
    /// (0xFEEx_xxxx) selects the destination APIC and mode, the data the vector and delivery
    /// mode.
    ///
    /// Returns `true` when the interrupt reached a local APIC and `false` when the guest's
    /// interrupt controllers blocked it (no enabled APIC matched the destination, say). Both
    /// values come from guest-programmed messages, so neither is a VMM failure; an error is.
    fn signal_msi(&self, address: u64, data: u32) -> Result<bool, Self::Error>;
}

/// Interrupts a vCPU's run from another thread.
///
/// A kick makes the vCPU's current [`run`](Vcpu::run), or its next one if it is not in the guest
/// right now, return [`RunExit::Kicked`]. Kicks do not queue: several before a run count as one.
pub trait Kick: Clone + Send + Sync + 'static {
    /// Kicks the vCPU.
    fn kick(&self);
}

/// A virtual CPU.
///
/// The [`VcpuState`] accessors see the architectural state *after* the last exit completed: when
/// the vCPU stopped behind an `in` or an MMIO read, the backend first hands the handler's data to
/// the guest, so the destination register holds the device's value.
pub trait Vcpu: VcpuState {
    /// The backend's kicker.
    type Kicker: Kick;

    /// The vCPU's index (and APIC ID).
    fn id(&self) -> u32;

    /// Enters the guest until it exits or the run is kicked.
    fn run(&mut self) -> Result<RunExit<'_>, Self::Error>;

    /// A kicker for this vCPU, usable from any thread.
    fn kicker(&self) -> Self::Kicker;

    /// Parks the vCPU: the next [`run`](Vcpu::run) waits for an interrupt or a kick before the
    /// guest executes again.
    fn halt(&mut self) -> Result<(), Self::Error>;

    /// Puts the vCPU into the PVH entry state: 32-bit protected mode with paging off, flat 4 GiB
    /// code and data segments, `CR0 = PE | ET`, `EIP = entry`, `EBX = start_info` (the
    /// `hvm_start_info` address), `EFLAGS = 0x2`; FPU and boot MSRs reset.
    fn setup_pvh(
        &mut self,
        entry: GuestAddress,
        start_info: GuestAddress,
    ) -> Result<(), Self::Error>;

    /// Puts the vCPU into the 64-bit entry state of the Linux boot protocol (see
    /// [`LongModeEntry`]); FPU and boot MSRs reset.
    fn setup_long_mode(&mut self, entry: &LongModeEntry) -> Result<(), Self::Error>;

    /// Reads the MSRs `indices`, in order; an MSR the vCPU does not have ends the list early.
    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrValue>, Self::Error>;

    /// Writes `msrs` in order; the first one the vCPU refuses is an error.
    fn set_msrs(&mut self, msrs: &[MsrValue]) -> Result<(), Self::Error>;

    /// The local APIC's registers.
    fn lapic(&self) -> Result<LapicState, Self::Error>;

    /// Loads the local APIC's registers.
    fn set_lapic(&mut self, lapic: &LapicState) -> Result<(), Self::Error>;

    /// The x87 and SSE state: the legacy region of the [`xsave`](VcpuState::xsave) area, so
    /// what the guest sees (a component the area marks as initial reads as initial).
    fn fpu(&self) -> Result<FpuState, Self::Error> {
        Ok(FpuState::from_fxsave(&self.xsave()?))
    }

    /// Loads the x87 and SSE state: writes the legacy region of the XSAVE area and marks both
    /// components as in use, so that the guest's next `XRSTOR` (and [`state`](Vcpu::state))
    /// sees them. (KVM's own `KVM_SET_FPU` leaves the XSAVE header alone, so its values can be
    /// lost.)
    fn set_fpu(&mut self, fpu: &FpuState) -> Result<(), Self::Error> {
        let mut area = self.xsave()?;
        if area.len() < XSAVE_AREA_SIZE {
            area.resize(XSAVE_AREA_SIZE, 0);
        }
        let _ = fpu.write_fxsave(&mut area);
        let mut header = [0u8; 8];
        header.copy_from_slice(&area[XSTATE_BV..XSTATE_BV + 8]);
        let in_use = u64::from_le_bytes(header) | XSTATE_X87_SSE;
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&in_use.to_le_bytes());
        self.set_xsave(&area)
    }

    /// Translates the guest-virtual address `gva` through the vCPU's current paging state as the
    /// backend sees it: `Some(gpa)`, or `None` when the guest's page tables map no page there.
    /// Only the address is reported; for access rights and the exact fault, walk the tables
    /// with `vmkit_paging::X86Paging`.
    fn translate(&self, gva: u64) -> Result<Option<u64>, Self::Error>;

    /// The MSRs [`state`](Vcpu::state) saves: [`SNAPSHOT_MSRS`] unless the backend knows more.
    fn snapshot_msrs(&self) -> &[u32] {
        &SNAPSHOT_MSRS
    }

    /// The vCPU's architectural state, backend-neutral: registers, special registers, XSAVE
    /// area and XCR0, the MSRs [`snapshot_msrs`](Vcpu::snapshot_msrs) lists, the local APIC and
    /// the pending exception.
    fn state(&self) -> Result<VcpuSnapshot, Self::Error> {
        Ok(VcpuSnapshot {
            registers: self.registers()?,
            special_registers: self.special_registers()?,
            xsave: self.xsave()?,
            xcr0: self.xcr0()?,
            msrs: self.msrs(self.snapshot_msrs())?,
            lapic: self.lapic()?,
            pending_exception: self.pending_exception()?,
        })
    }

    /// Loads a state [`state`](Vcpu::state) returned, from this backend or another.
    ///
    /// The order is the one the state depends on: special registers first (EFER and the APIC
    /// base decide what the rest may hold), then the general registers, XCR0 before the XSAVE
    /// area it gates, the MSRs, the local APIC, and last the pending exception.
    fn set_state(&mut self, state: &VcpuSnapshot) -> Result<(), Self::Error> {
        self.set_special_registers(&state.special_registers)?;
        self.set_registers(&state.registers)?;
        self.set_xcr0(state.xcr0)?;
        self.set_xsave(&state.xsave)?;
        self.set_msrs(&state.msrs)?;
        self.set_lapic(&state.lapic)?;
        match state.pending_exception {
            Some(exception) => self.inject_exception(exception),
            None => self.clear_pending_exception(),
        }
    }

    /// Runs until a handler stops the VM or `stop` is set; see [`run_until_stop`].
    fn run_loop<H>(&mut self, handler: &H, stop: &AtomicBool) -> Result<LoopExit, Self::Error>
    where
        H: ExitHandler + ?Sized,
        Self: Sized,
    {
        run_until_stop(self, handler, stop)
    }

    /// Runs like [`run_loop`](Vcpu::run_loop), completing emulation failures with `assist` on
    /// `memory`; see [`run_until_stop_with_assist`].
    fn run_loop_with_assist<H, M, P>(
        &mut self,
        handler: &H,
        assist: &EmulationAssist<P>,
        memory: &M,
        stop: &AtomicBool,
    ) -> Result<LoopExit, Self::Error>
    where
        H: ExitHandler + ?Sized,
        M: GuestMemoryBackend + ?Sized,
        P: AssistPolicy,
        Self: Sized,
    {
        run_until_stop_with_assist(self, handler, assist, memory, stop)
    }
}
