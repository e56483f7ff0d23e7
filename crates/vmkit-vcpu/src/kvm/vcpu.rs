//! The KVM vCPU: set-up of its x86 state, the run call and the state accessors.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_EXIT_HYPERCALL, KVM_EXIT_IO, KVM_EXIT_MEMORY_FAULT, KVM_EXIT_MMIO,
    KVM_EXIT_X86_RDMSR, KVM_EXIT_X86_WRMSR, KVM_EXIT_XEN, KVM_MP_STATE_HALTED,
    KVM_MP_STATE_RUNNABLE, KVMIO, Msrs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_run,
    kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};
use vmkit_exits::VcpuState;
use vmkit_exits::state::{Exception, Registers, SpecialRegisters, XSAVE_AREA_SIZE};
use vmm_sys_util::ioctl_io_nr;

use super::convert::{
    registers_from_kvm, registers_to_kvm, special_registers_from_kvm, special_registers_to_kvm,
};
use super::cpuid::vcpu_cpuid;
use super::exit::convert_exit;
use super::kick::{KickState, KvmKicker, kick_signal};
use super::run_area::RunArea;
use super::{Error, VmShared};
use crate::hypervisor::Vcpu;
use crate::run::RunExit;
use crate::x86::msr::{MsrValue, msr_name};
use crate::x86::{LONG_MODE_GDT, LapicState, LongModeEntry};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);

/// Offset of the local APIC's LVT LINT0 register.
const APIC_LVT0: usize = 0x350;
/// Offset of the local APIC's LVT LINT1 register.
const APIC_LVT1: usize = 0x360;
/// LVT delivery mode NMI.
const APIC_MODE_NMI: u32 = 0b100;
/// LVT delivery mode ExtINT (the 8259 PIC's output).
const APIC_MODE_EXTINT: u32 = 0b111;

/// The most vCPUs a VM may have (vmkit-memory's platform limit: an xAPIC ID has 8 bits and 255
/// is the broadcast ID).
pub use vmkit_memory::layout::MAX_VCPUS;

/// Reads local APIC register `offset` from a `KVM_GET_LAPIC` image.
pub fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(lapic.regs.iter().skip(offset)) {
        *b = *r as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs.iter_mut().skip(offset).zip(value.to_le_bytes()) {
        *r = b as libc::c_char;
    }
}

/// Sets the delivery mode of LVT entry `offset`, keeping its other bits.
fn set_lvt_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = lapic_register(lapic, offset);
    set_lapic_register(lapic, offset, (value & !0x700) | (mode << 8));
}

/// A KVM vCPU.
///
/// `Send` but not `Sync`: it is run, and its state read, from one thread at a time; other threads
/// interrupt it through its [`KvmKicker`].
#[derive(Debug)]
pub struct KvmVcpu {
    // Declared before `vm`, so that the vCPU is closed before the guest memory can be unmapped.
    fd: VcpuFd,
    run: RunArea,
    kick: Arc<KickState>,
    id: u32,
    /// Whether the last `KVM_RUN` ended in an exit whose operation KVM completes on the next
    /// entry (the data of an `in` or an MMIO read, the instruction pointer of an `out`):
    /// [`completes_on_entry`].
    needs_completion: Cell<bool>,
    /// The thread on which the kick signal was last made sure to be unblocked.
    signal_thread: Cell<Option<libc::pthread_t>>,
    vm: Arc<VmShared>,
}

impl KvmVcpu {
    pub(super) fn new(vm: Arc<VmShared>, id: u32, vcpu_count: u32) -> Result<Self, Error> {
        if vcpu_count == 0 || vcpu_count > MAX_VCPUS || id >= vcpu_count {
            return Err(Error::VcpuId {
                id,
                count: vcpu_count,
            });
        }
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|source| Error::CreateVcpu { id, source })?;
        let run = RunArea::map(&fd, vm.run_size).map_err(Error::MapRunArea)?;

        let entries = vcpu_cpuid(&vm.cpuid, id, vcpu_count, vm.tsc_deadline);
        let cpuid = CpuId::from_entries(&entries).map_err(|_| Error::TooManyEntries {
            what: "CPUID",
            count: entries.len(),
        })?;
        fd.set_cpuid2(&cpuid).map_err(Error::SetCpuid)?;

        let mut lapic = fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))?;
        set_lvt_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        fd.set_lapic(&lapic)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))?;

        Ok(Self {
            fd,
            run,
            kick: Arc::new(KickState::default()),
            id,
            needs_completion: Cell::new(false),
            signal_thread: Cell::new(None),
            vm,
        })
    }

    /// The `kvm-ioctls` vCPU handle, for state this crate does not wrap (XSAVE, debug registers,
    /// nested state).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    fn set_mp_state(&self, mp_state: u32) -> Result<(), Error> {
        self.fd
            .set_mp_state(kvm_mp_state { mp_state })
            .map_err(Error::ioctl("KVM_SET_MP_STATE"))
    }

    /// Finishes the operation the last exit left pending, so that the registers show its result.
    ///
    /// KVM completes an `in`, an MMIO read (and the instruction pointer of an `out` or an MMIO
    /// write) only when `KVM_RUN` is entered again. Entering with `immediate_exit` set completes
    /// it and returns `EINTR` without running a single guest instruction.
    fn complete_pending(&self) -> Result<(), Error> {
        if !self.needs_completion.replace(false) {
            return Ok(());
        }
        let immediate_exit = self.run.immediate_exit();
        // SAFETY: the run area is mapped while `self` lives; outside the kick window only this
        // thread touches the byte.
        unsafe { immediate_exit.set(1) };
        // SAFETY: KVM_RUN takes no argument; `self.fd` is a vCPU file descriptor whose run area
        // is mapped, and no reference into that area is alive (they all borrow `self` mutably).
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_RUN(), 0) };
        let err = io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { immediate_exit.set(0) };
        if ret >= 0 {
            return Err(Error::ExitDuringCompletion(self.run.exit_reason()));
        }
        match err.raw_os_error() {
            Some(libc::EINTR) => Ok(()),
            _ => Err(Error::Run(err)),
        }
    }

    /// Refuses XSAVE state larger than `struct kvm_xsave` (AMX tiles enabled for the guest):
    /// KVM_SET_XSAVE would read past it.
    fn check_xsave_size(&self) -> Result<(), Error> {
        let size = self.vm.fd.check_extension_int(kvm_ioctls::Cap::Xsave2);
        match usize::try_from(size) {
            Ok(size) if size > XSAVE_AREA_SIZE => Err(Error::XsaveTooLarge(size)),
            _ => Ok(()),
        }
    }

    /// Makes sure the kick signal is not blocked on the calling thread (checked once per thread).
    fn prepare_thread(&self) {
        // SAFETY: `pthread_self` has no preconditions.
        let me = unsafe { libc::pthread_self() };
        if self.signal_thread.get() != Some(me) {
            if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
                log::warn!("vCPU {}: cannot unblock the kick signal: {e}", self.id);
            }
            self.signal_thread.set(Some(me));
        }
    }

    fn memory_fault(&mut self) -> Option<Error> {
        if self.run.exit_reason() != KVM_EXIT_MEMORY_FAULT {
            return None;
        }
        let area = self.run.bytes_mut();
        // SAFETY: the page-aligned area holds a whole plain-old-data `kvm_run` (checked when
        // mapped), and the union member read matches the exit reason just read.
        let fault = unsafe {
            (*area.as_ptr().cast::<kvm_run>())
                .__bindgen_anon_1
                .memory_fault
        };
        Some(Error::MemoryFault {
            gpa: fault.gpa,
            size: fault.size,
        })
    }
}

impl VcpuState for KvmVcpu {
    type Error = Error;

    fn registers(&self) -> Result<Registers, Error> {
        self.complete_pending()?;
        let regs = self.fd.get_regs().map_err(Error::ioctl("KVM_GET_REGS"))?;
        Ok(registers_from_kvm(&regs))
    }

    fn set_registers(&mut self, regs: &Registers) -> Result<(), Error> {
        self.complete_pending()?;
        self.fd
            .set_regs(&registers_to_kvm(regs))
            .map_err(Error::ioctl("KVM_SET_REGS"))
    }

    fn special_registers(&self) -> Result<SpecialRegisters, Error> {
        self.complete_pending()?;
        let sregs = self.fd.get_sregs().map_err(Error::ioctl("KVM_GET_SREGS"))?;
        Ok(special_registers_from_kvm(&sregs))
    }

    fn set_special_registers(&mut self, sregs: &SpecialRegisters) -> Result<(), Error> {
        self.complete_pending()?;
        let mut kvm = self.fd.get_sregs().map_err(Error::ioctl("KVM_GET_SREGS"))?;
        special_registers_to_kvm(sregs, &mut kvm);
        self.fd
            .set_sregs(&kvm)
            .map_err(Error::ioctl("KVM_SET_SREGS"))
    }

    fn pending_exception(&self) -> Result<Option<Exception>, Error> {
        self.complete_pending()?;
        let events = self
            .fd
            .get_vcpu_events()
            .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?;
        let e = events.exception;
        Ok((e.injected != 0 || e.pending != 0).then_some(Exception {
            vector: e.nr,
            error_code: (e.has_error_code != 0).then_some(e.error_code),
        }))
    }

    fn clear_pending_exception(&mut self) -> Result<(), Error> {
        self.complete_pending()?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 0;
        events.exception.pending = 0;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.exception_has_payload = 0;
        events.exception_payload = 0;
        self.fd
            .set_vcpu_events(&events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))
    }

    fn xsave(&self) -> Result<Vec<u8>, Error> {
        self.complete_pending()?;
        self.check_xsave_size()?;
        let xsave = self.fd.get_xsave().map_err(Error::ioctl("KVM_GET_XSAVE"))?;
        Ok(xsave.region.iter().flat_map(|w| w.to_le_bytes()).collect())
    }

    fn set_xsave(&mut self, area: &[u8]) -> Result<(), Error> {
        if area.len() != XSAVE_AREA_SIZE {
            return Err(Error::XsaveSize(area.len()));
        }
        self.complete_pending()?;
        self.check_xsave_size()?;
        let mut xsave = kvm_xsave::default();
        for (w, b) in xsave.region.iter_mut().zip(area.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        // SAFETY: KVM_SET_XSAVE reads the guest's XSAVE size from `xsave`, which
        // `check_xsave_size` has just shown to be at most the 4096 bytes of `kvm_xsave`.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(Error::ioctl("KVM_SET_XSAVE"))
    }

    fn xcr0(&self) -> Result<u64, Error> {
        self.complete_pending()?;
        let xcrs = self.fd.get_xcrs().map_err(Error::ioctl("KVM_GET_XCRS"))?;
        Ok(xcrs
            .xcrs
            .iter()
            .take(xcrs.nr_xcrs as usize)
            .find(|x| x.xcr == 0)
            .map_or(1, |x| x.value))
    }

    fn set_xcr0(&mut self, value: u64) -> Result<(), Error> {
        self.complete_pending()?;
        let mut xcrs = self.fd.get_xcrs().map_err(Error::ioctl("KVM_GET_XCRS"))?;
        xcrs.nr_xcrs = 1;
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = value;
        self.fd
            .set_xcrs(&xcrs)
            .map_err(Error::ioctl("KVM_SET_XCRS"))
    }

    fn msr(&self, index: u32) -> Result<Option<u64>, Error> {
        Ok(self.msrs(&[index])?.first().map(|m| m.value))
    }

    fn set_msr(&mut self, index: u32, value: u64) -> Result<(), Error> {
        self.set_msrs(&[MsrValue { index, value }])
    }

    fn inject_exception(&mut self, exception: Exception) -> Result<(), Error> {
        if exception.vector > 31 || exception.vector == 2 {
            return Err(Error::InvalidException(exception.vector));
        }
        self.complete_pending()?;
        let mut events = self
            .fd
            .get_vcpu_events()
            .map_err(Error::ioctl("KVM_GET_VCPU_EVENTS"))?;
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.exception.nr = exception.vector;
        events.exception.has_error_code = u8::from(exception.error_code.is_some());
        events.exception.error_code = exception.error_code.unwrap_or(0);
        self.fd
            .set_vcpu_events(&events)
            .map_err(Error::ioctl("KVM_SET_VCPU_EVENTS"))
    }
}

/// Whether KVM finishes the operation behind an exit of this reason only on the next entry
/// (`complete_userspace_io` in KVM): port I/O, MMIO, the user-space MSR exits and hypercalls.
/// Every other exit (an emulation failure, `hlt`, a debug exit, ...) leaves nothing pending, so
/// reading or writing registers after it needs no extra `KVM_RUN`.
fn completes_on_entry(reason: u32) -> bool {
    matches!(
        reason,
        KVM_EXIT_IO
            | KVM_EXIT_MMIO
            | KVM_EXIT_X86_RDMSR
            | KVM_EXIT_X86_WRMSR
            | KVM_EXIT_HYPERCALL
            | KVM_EXIT_XEN
    )
}

impl Vcpu for KvmVcpu {
    type Kicker = KvmKicker;

    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<RunExit<'_>, Error> {
        self.prepare_thread();
        let fd = self.fd.as_raw_fd();
        let enter = || {
            // SAFETY: KVM_RUN takes no argument; `fd` is this vCPU's file descriptor and its run
            // area is mapped; no reference into the area is alive during the call.
            unsafe { libc::ioctl(fd, KVM_RUN(), 0) }
        };
        // SAFETY: `self.run` stays mapped for the whole call (it is borrowed through `self`).
        let result = unsafe { self.kick.run_window(self.run.immediate_exit(), enter) };
        // Any entry, even one refused with EINTR, completes what the last exit left pending.
        self.needs_completion.set(false);
        if let Err(err) = result {
            return match err.raw_os_error() {
                Some(libc::EINTR) => Ok(RunExit::Kicked),
                Some(libc::EFAULT | libc::EHWPOISON) => {
                    Err(self.memory_fault().unwrap_or(Error::Run(err)))
                }
                _ => Err(Error::Run(err)),
            };
        }
        self.needs_completion
            .set(completes_on_entry(self.run.exit_reason()));
        Ok(convert_exit(self.run.bytes_mut())?)
    }

    fn kicker(&self) -> KvmKicker {
        KvmKicker::new(self.kick.clone())
    }

    fn halt(&mut self) -> Result<(), Error> {
        self.complete_pending()?;
        self.set_mp_state(KVM_MP_STATE_HALTED)
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrValue>, Error> {
        self.complete_pending()?;
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooManyEntries {
            what: "MSR",
            count: entries.len(),
        })?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(Error::ioctl("KVM_GET_MSRS"))?;
        Ok(msrs
            .as_slice()
            .iter()
            .take(n)
            .map(|e| MsrValue {
                index: e.index,
                value: e.data,
            })
            .collect())
    }

    /// The first MSR the host refuses is named in [`Error::SetMsrs`].
    fn set_msrs(&mut self, msrs: &[MsrValue]) -> Result<(), Error> {
        self.complete_pending()?;
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.index,
                data: m.value,
                ..Default::default()
            })
            .collect();
        let list = Msrs::from_entries(&entries).map_err(|_| Error::TooManyEntries {
            what: "MSR",
            count: entries.len(),
        })?;
        let n = self
            .fd
            .set_msrs(&list)
            .map_err(Error::ioctl("KVM_SET_MSRS"))?;
        match msrs.get(n) {
            None => Ok(()),
            Some(refused) => Err(Error::SetMsrs {
                index: refused.index,
                name: msr_name(refused.index),
                value: refused.value,
            }),
        }
    }

    fn lapic(&self) -> Result<LapicState, Error> {
        self.complete_pending()?;
        let kvm = self.fd.get_lapic().map_err(Error::ioctl("KVM_GET_LAPIC"))?;
        let mut lapic = LapicState::default();
        for (b, r) in lapic.regs.iter_mut().zip(kvm.regs.iter()) {
            *b = *r as u8;
        }
        Ok(lapic)
    }

    fn set_lapic(&mut self, lapic: &LapicState) -> Result<(), Error> {
        self.complete_pending()?;
        let mut kvm = kvm_lapic_state::default();
        for (r, b) in kvm.regs.iter_mut().zip(lapic.regs.iter()) {
            *r = *b as libc::c_char;
        }
        self.fd
            .set_lapic(&kvm)
            .map_err(Error::ioctl("KVM_SET_LAPIC"))
    }

    /// `KVM_TRANSLATE` walks as a supervisor read and reports nothing else faithfully (its
    /// writeable and user-mode fields are fixed), so only the address and its validity are
    /// returned; a walk that hits a reserved bit is `None` too.
    fn translate(&self, gva: u64) -> Result<Option<u64>, Error> {
        self.complete_pending()?;
        let translation = self
            .fd
            .translate_gva(gva)
            .map_err(Error::ioctl("KVM_TRANSLATE"))?;
        Ok((translation.valid != 0).then_some(translation.physical_address))
    }

    /// The entry state is computed backend-neutrally ([`VcpuSnapshot::enter_pvh`](crate::VcpuSnapshot::enter_pvh)) and applied
    /// with [`set_state`](Vcpu::set_state); then the vCPU is made runnable, also when it is an
    /// application processor still waiting for SIPI.
    fn setup_pvh(&mut self, entry: GuestAddress, start_info: GuestAddress) -> Result<(), Error> {
        let mut state = self.state()?;
        state.enter_pvh(entry, start_info);
        self.set_state(&state)?;
        self.set_mp_state(KVM_MP_STATE_RUNNABLE)
    }

    /// As [`setup_pvh`](Vcpu::setup_pvh), with
    /// [`VcpuSnapshot::enter_long_mode`](crate::VcpuSnapshot::enter_long_mode); the
    /// backend also writes [`LONG_MODE_GDT`] at `entry.gdt` in guest memory, which the segments'
    /// descriptor caches describe.
    fn setup_long_mode(&mut self, entry: &LongModeEntry) -> Result<(), Error> {
        let mut state = self.state()?;
        state.enter_long_mode(entry)?;
        let mut gdt = Vec::with_capacity(LONG_MODE_GDT.len() * 8);
        for descriptor in LONG_MODE_GDT {
            gdt.extend_from_slice(&descriptor.to_le_bytes());
        }
        self.vm
            .memory
            .write_slice(&gdt, entry.gdt)
            .map_err(|_| Error::WriteGdt(entry.gdt.0))?;
        self.set_state(&state)?;
        self.set_mp_state(KVM_MP_STATE_RUNNABLE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_delivery_mode_keeps_the_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_register(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(lapic_register(&lapic, APIC_LVT0), 0x0001_0400);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_EXTINT);
        assert_eq!(lapic_register(&lapic, APIC_LVT1), 0x700);
        // Offsets at the end of the page read as far as the page goes.
        assert_eq!(lapic_register(&lapic, 1022), 0);
    }
}
