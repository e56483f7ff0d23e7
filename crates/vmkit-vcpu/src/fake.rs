//! An in-memory backend that replays scripted exits, for testing code written against the traits
//! without `/dev/kvm`.
//!
//! A [`FakeVcpu`] returns the exits pushed with [`FakeVcpu::push`] one run at a time and keeps
//! its registers in memory. It mirrors KVM's completion rule: the data a handler puts into a
//! single `in` or MMIO read lands in the low bytes of RAX when the vCPU runs again or its
//! registers are read.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::collections::BTreeMap;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use vmkit_exits::state::{Exception, Registers, SpecialRegisters, XSAVE_AREA_SIZE};
use vmkit_exits::{InsnBytes, SystemEvent, VcpuState, VmExit};
use vmkit_memory::GuestLayout;
use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::{DataMatch, Hypervisor, IoEventAddress, Kick, Vcpu, Vm};
use crate::run::{Exits, RunExit};
use crate::x86::msr::MsrValue;
use crate::x86::state::{APIC_ID, APIC_LVT0, APIC_LVT1, IA32_PAT};
use crate::x86::{LapicState, LongModeEntry, PageSizes};

/// The offset bits of a 4 KiB page.
const PAGE_MASK: u64 = 0xfff;
/// `IA32_PAT` after reset: write-back, write-through, uncached-, uncached, twice.
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// CR0.PG.
const CR0_PG: u64 = 1 << 31;

/// The fake backend's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum FakeError {
    /// the vCPU ran past the end of its script
    ScriptEnded,
    /// the script asked this run to fail
    Scripted,
    /// the scripted port I/O has an access size other than 1, 2 or 4, or no element
    BadIo,
    /// exception vector {0} cannot be injected
    InvalidException(u8),
    /// an XSAVE area of {0} bytes was given where 4096 are needed
    XsaveSize(usize),
    /// the entry state is invalid
    Entry(#[from] crate::x86::EntryError),
}

/// One scripted outcome of [`FakeVcpu::run`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptedExit {
    /// `count` `in`s of `size` bytes from `port` (a `rep insb`/`insw`/`insd` when `count > 1`).
    IoIn {
        /// The port.
        port: u16,
        /// Access size: 1, 2 or 4.
        size: u8,
        /// Elements.
        count: u32,
    },
    /// `out`s of `size`-byte elements of `data` to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// Access size: 1, 2 or 4.
        size: u8,
        /// The bytes written (a whole number of elements).
        data: Vec<u8>,
    },
    /// An MMIO read of `len` bytes.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access size (1 to 8).
        len: u8,
    },
    /// An MMIO write.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: Vec<u8>,
    },
    /// `hlt`.
    Hlt,
    /// The shutdown state (triple fault).
    TripleFault,
    /// A system event.
    SystemEvent(SystemEvent),
    /// An entry failure.
    FailEntry {
        /// Hardware reason.
        reason: u64,
        /// Physical CPU.
        cpu: u32,
    },
    /// An internal error.
    InternalError {
        /// Sub-error.
        suberror: u32,
        /// Instruction bytes.
        insn: Option<InsnBytes>,
    },
    /// A debug exit.
    Debug {
        /// Instruction pointer.
        pc: u64,
        /// Vector.
        exception: u32,
    },
    /// Another exit.
    Other {
        /// Raw reason.
        reason: u32,
    },
    /// The run returns [`RunExit::Kicked`].
    Kicked,
    /// The run fails with [`FakeError::Scripted`].
    Fail,
}

/// Kicks a [`FakeVcpu`].
#[derive(Clone, Debug, Default)]
pub struct FakeKicker {
    pending: Arc<AtomicBool>,
}

impl Kick for FakeKicker {
    fn kick(&self) {
        self.pending.store(true, Ordering::Release);
    }
}

/// A vCPU that replays a script.
#[derive(Debug, Default)]
pub struct FakeVcpu {
    id: u32,
    script: VecDeque<ScriptedExit>,
    buffer: Vec<u8>,
    /// Bytes of the last single read whose data lands in RAX on completion.
    pending_read: Cell<Option<usize>>,
    regs: Cell<Registers>,
    sregs: SpecialRegisters,
    injected: Vec<Exception>,
    pending: Option<Exception>,
    xsave: Option<Vec<u8>>,
    xcr0: Option<u64>,
    msrs: BTreeMap<u32, u64>,
    lapic: LapicState,
    /// Guest-virtual page → guest-physical page, for [`Vcpu::translate`] with paging on.
    pages: BTreeMap<u64, u64>,
    halts: usize,
    runs: usize,
    kicker: FakeKicker,
}

impl FakeVcpu {
    /// A vCPU with ID `id` and an empty script; its local APIC has that ID, LINT0 in ExtINT
    /// and LINT1 in NMI delivery mode, as the KVM backend sets them up.
    pub fn new(id: u32) -> Self {
        let mut lapic = LapicState::default();
        lapic.set_register(APIC_ID, id << 24);
        lapic.set_register(APIC_LVT0, 0b111 << 8);
        lapic.set_register(APIC_LVT1, 0b100 << 8);
        Self {
            id,
            lapic,
            msrs: BTreeMap::from([(IA32_PAT, PAT_RESET)]),
            ..Self::default()
        }
    }

    /// Makes [`Vcpu::translate`] map the 4 KiB page at `gva` to the one at `gpa` while the
    /// guest's paging is on (with paging off every address translates to itself).
    pub fn map_page(&mut self, gva: u64, gpa: u64) -> &mut Self {
        self.pages.insert(gva & !PAGE_MASK, gpa & !PAGE_MASK);
        self
    }

    /// Appends `exit` to the script.
    pub fn push(&mut self, exit: ScriptedExit) -> &mut Self {
        self.script.push_back(exit);
        self
    }

    /// Exits still to come.
    pub fn remaining(&self) -> usize {
        self.script.len()
    }

    /// Exceptions injected so far, oldest first.
    pub fn injected(&self) -> &[Exception] {
        &self.injected
    }

    /// The exception queued for the next entry (the last one injected, unless cleared).
    pub fn pending(&self) -> Option<Exception> {
        self.pending
    }

    /// Queues `exception` as a backend does together with an emulation failure (not recorded
    /// in [`injected`](Self::injected)).
    pub fn queue_exception(&mut self, exception: Exception) {
        self.pending = Some(exception);
    }

    /// How often the vCPU was parked with [`Vcpu::halt`].
    pub fn halts(&self) -> usize {
        self.halts
    }

    /// How often [`Vcpu::run`] was called.
    pub fn runs(&self) -> usize {
        self.runs
    }

    fn complete(&self) {
        if let Some(len) = self.pending_read.take() {
            let mut regs = self.regs.get();
            let mut rax = regs.rax.to_le_bytes();
            let n = len.min(8).min(self.buffer.len());
            rax[..n].copy_from_slice(&self.buffer[..n]);
            regs.rax = u64::from_le_bytes(rax);
            self.regs.set(regs);
        }
    }
}

impl VcpuState for FakeVcpu {
    type Error = FakeError;

    fn registers(&self) -> Result<Registers, FakeError> {
        self.complete();
        Ok(self.regs.get())
    }

    fn set_registers(&mut self, regs: &Registers) -> Result<(), FakeError> {
        self.complete();
        self.regs.set(*regs);
        Ok(())
    }

    fn special_registers(&self) -> Result<SpecialRegisters, FakeError> {
        self.complete();
        Ok(self.sregs)
    }

    fn set_special_registers(&mut self, sregs: &SpecialRegisters) -> Result<(), FakeError> {
        self.complete();
        self.sregs = *sregs;
        Ok(())
    }

    fn inject_exception(&mut self, exception: Exception) -> Result<(), FakeError> {
        if exception.vector > 31 || exception.vector == 2 {
            return Err(FakeError::InvalidException(exception.vector));
        }
        self.injected.push(exception);
        self.pending = Some(exception);
        Ok(())
    }

    fn pending_exception(&self) -> Result<Option<Exception>, FakeError> {
        Ok(self.pending)
    }

    fn clear_pending_exception(&mut self) -> Result<(), FakeError> {
        self.pending = None;
        Ok(())
    }

    /// Reset state: FCW 0x37f, MXCSR 0x1f80 with mask 0xffff, every component initial.
    fn xsave(&self) -> Result<Vec<u8>, FakeError> {
        Ok(self.xsave.clone().unwrap_or_else(|| {
            let mut area = vec![0u8; XSAVE_AREA_SIZE];
            area[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
            area[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
            area[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
            area
        }))
    }

    fn set_xsave(&mut self, area: &[u8]) -> Result<(), FakeError> {
        if area.len() != XSAVE_AREA_SIZE {
            return Err(FakeError::XsaveSize(area.len()));
        }
        self.xsave = Some(area.to_vec());
        Ok(())
    }

    /// 1 (x87 only) until set.
    fn xcr0(&self) -> Result<u64, FakeError> {
        Ok(self.xcr0.unwrap_or(1))
    }

    fn set_xcr0(&mut self, value: u64) -> Result<(), FakeError> {
        self.xcr0 = Some(value);
        Ok(())
    }

    fn msr(&self, index: u32) -> Result<Option<u64>, FakeError> {
        Ok(self.msrs.get(&index).copied())
    }

    fn set_msr(&mut self, index: u32, value: u64) -> Result<(), FakeError> {
        self.msrs.insert(index, value);
        Ok(())
    }
}

impl Vcpu for FakeVcpu {
    type Kicker = FakeKicker;

    fn id(&self) -> u32 {
        self.id
    }

    fn run(&mut self) -> Result<RunExit<'_>, FakeError> {
        self.runs += 1;
        self.complete();
        if self.kicker.pending.swap(false, Ordering::AcqRel) {
            return Ok(RunExit::Kicked);
        }
        let next = self.script.pop_front().ok_or(FakeError::ScriptEnded)?;
        let exit = match next {
            ScriptedExit::IoIn { port, size, count } => {
                let size = usize::from(size);
                let len = size.saturating_mul(count as usize);
                self.buffer.clear();
                self.buffer.resize(len, 0);
                // String input goes to memory, not RAX.
                self.pending_read.set((count == 1).then_some(len));
                let exits = Exits::io_in(port, size, &mut self.buffer).ok_or(FakeError::BadIo)?;
                return Ok(RunExit::Exits(exits));
            }
            ScriptedExit::IoOut { port, size, data } => {
                self.buffer = data;
                let exits =
                    Exits::io_out(port, usize::from(size), &self.buffer).ok_or(FakeError::BadIo)?;
                return Ok(RunExit::Exits(exits));
            }
            ScriptedExit::MmioRead { addr, len } => {
                self.buffer.clear();
                self.buffer.resize(usize::from(len), 0);
                self.pending_read.set(Some(usize::from(len)));
                VmExit::MmioRead {
                    addr,
                    data: &mut self.buffer,
                }
            }
            ScriptedExit::MmioWrite { addr, data } => {
                self.buffer = data;
                VmExit::MmioWrite {
                    addr,
                    data: &self.buffer,
                }
            }
            ScriptedExit::Hlt => VmExit::Hlt,
            ScriptedExit::TripleFault => VmExit::TripleFault,
            ScriptedExit::SystemEvent(event) => VmExit::SystemEvent(event),
            ScriptedExit::FailEntry { reason, cpu } => VmExit::FailEntry { reason, cpu },
            ScriptedExit::InternalError { suberror, insn } => {
                VmExit::InternalError { suberror, insn }
            }
            ScriptedExit::Debug { pc, exception } => VmExit::Debug { pc, exception },
            ScriptedExit::Other { reason } => VmExit::Other { reason },
            ScriptedExit::Kicked => return Ok(RunExit::Kicked),
            ScriptedExit::Fail => return Err(FakeError::Scripted),
        };
        Ok(RunExit::Exits(Exits::one(exit)))
    }

    fn kicker(&self) -> FakeKicker {
        self.kicker.clone()
    }

    fn halt(&mut self) -> Result<(), FakeError> {
        self.complete();
        self.halts += 1;
        Ok(())
    }

    /// An MSR never written ends the list, as one the host lacks does on KVM.
    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrValue>, FakeError> {
        Ok(indices
            .iter()
            .map_while(|&index| {
                let value = *self.msrs.get(&index)?;
                Some(MsrValue { index, value })
            })
            .collect())
    }

    fn set_msrs(&mut self, msrs: &[MsrValue]) -> Result<(), FakeError> {
        for m in msrs {
            self.msrs.insert(m.index, m.value);
        }
        Ok(())
    }

    fn lapic(&self) -> Result<LapicState, FakeError> {
        Ok(self.lapic)
    }

    fn set_lapic(&mut self, lapic: &LapicState) -> Result<(), FakeError> {
        self.lapic = *lapic;
        Ok(())
    }

    /// The identity with paging off; with paging on, the pages given to
    /// [`map_page`](FakeVcpu::map_page), `None` elsewhere.
    fn translate(&self, gva: u64) -> Result<Option<u64>, FakeError> {
        if self.sregs.cr0 & CR0_PG == 0 {
            return Ok(Some(gva));
        }
        Ok(self
            .pages
            .get(&(gva & !PAGE_MASK))
            .map(|page| page | (gva & PAGE_MASK)))
    }

    /// The backend-neutral entry state ([`VcpuSnapshot::enter_pvh`](crate::VcpuSnapshot::enter_pvh)),
    /// applied with [`set_state`](Vcpu::set_state).
    fn setup_pvh(
        &mut self,
        entry: GuestAddress,
        start_info: GuestAddress,
    ) -> Result<(), FakeError> {
        let mut state = self.state()?;
        state.enter_pvh(entry, start_info);
        self.set_state(&state)
    }

    /// As [`setup_pvh`](Vcpu::setup_pvh); the fake has no guest memory, so no GDT is written.
    fn setup_long_mode(&mut self, entry: &LongModeEntry) -> Result<(), FakeError> {
        let mut state = self.state()?;
        state.enter_long_mode(entry)?;
        self.set_state(&state)
    }
}

/// A registration a [`FakeVm`] received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeVmEvent {
    /// [`Vm::register_irqfd`] for this GSI.
    IrqfdRegistered(u32),
    /// [`Vm::register_irqfd_with_resample`] for this GSI.
    IrqfdResampleRegistered(u32),
    /// [`Vm::unregister_irqfd`] for this GSI.
    IrqfdUnregistered(u32),
    /// [`Vm::register_ioevent`].
    IoeventRegistered(IoEventAddress, Option<DataMatch>),
    /// [`Vm::unregister_ioevent`].
    IoeventUnregistered(IoEventAddress, Option<DataMatch>),
    /// [`Vm::set_irq_line`].
    IrqLine(u32, bool),
    /// [`Vm::signal_msi`]: address and data.
    Msi(u64, u32),
}

/// A VM that creates [`FakeVcpu`]s, each running the script given for its ID, and records
/// registrations.
#[derive(Debug, Default)]
pub struct FakeVm {
    events: Mutex<Vec<FakeVmEvent>>,
    scripts: Mutex<BTreeMap<u32, Vec<ScriptedExit>>>,
}

impl FakeVm {
    /// Appends `exits` to the script of the vCPU with ID `id` that this VM creates next.
    pub fn script(&self, id: u32, exits: impl IntoIterator<Item = ScriptedExit>) {
        self.scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .extend(exits);
    }

    /// The registrations so far, oldest first.
    pub fn events(&self) -> Vec<FakeVmEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, event: FakeVmEvent) -> Result<(), FakeError> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
        Ok(())
    }
}

impl Vm for FakeVm {
    type Vcpu = FakeVcpu;
    type Error = FakeError;

    /// A vCPU with ID `id` whose script is the one given for `id` (taken: a second vCPU with
    /// the same ID starts with an empty script).
    fn create_vcpu(&self, id: u32, _vcpu_count: u32) -> Result<FakeVcpu, FakeError> {
        let mut vcpu = FakeVcpu::new(id);
        let script = self
            .scripts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        for exit in script.into_iter().flatten() {
            vcpu.push(exit);
        }
        Ok(vcpu)
    }

    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IrqfdRegistered(gsi))
    }

    fn register_irqfd_with_resample(
        &self,
        _fd: &EventFd,
        _resample_fd: &EventFd,
        gsi: u32,
    ) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IrqfdResampleRegistered(gsi))
    }

    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IrqfdUnregistered(gsi))
    }

    fn register_ioevent(
        &self,
        _fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IoeventRegistered(addr, datamatch))
    }

    fn unregister_ioevent(
        &self,
        _fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<DataMatch>,
    ) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IoeventUnregistered(addr, datamatch))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<(), FakeError> {
        self.record(FakeVmEvent::IrqLine(gsi, level))
    }

    /// Records the message; it counts as delivered.
    fn signal_msi(&self, address: u64, data: u32) -> Result<bool, FakeError> {
        self.record(FakeVmEvent::Msi(address, data))?;
        Ok(true)
    }
}

/// A hypervisor that creates [`FakeVm`]s, each with the scripts given to
/// [`script`](FakeHypervisor::script), and reports the page sizes it was given.
#[derive(Clone, Debug)]
pub struct FakeHypervisor {
    /// What [`Hypervisor::supported_page_sizes`] returns.
    pub page_sizes: PageSizes,
    /// What [`Hypervisor::phys_bits`] returns (default: vmkit-memory's
    /// [`DEFAULT_PHYS_BITS`](vmkit_memory::layout::DEFAULT_PHYS_BITS)).
    pub phys_bits: u8,
    scripts: BTreeMap<u32, Vec<ScriptedExit>>,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self {
            page_sizes: PageSizes::ALL,
            phys_bits: vmkit_memory::layout::DEFAULT_PHYS_BITS,
            scripts: BTreeMap::new(),
        }
    }
}

impl FakeHypervisor {
    /// Appends `exits` to the script of vCPU `id` of every VM this hypervisor creates: code that
    /// builds its VM itself (a VMM's composition) runs on scripted vCPUs.
    pub fn script(mut self, id: u32, exits: impl IntoIterator<Item = ScriptedExit>) -> Self {
        self.scripts.entry(id).or_default().extend(exits);
        self
    }
}

impl Hypervisor for FakeHypervisor {
    type Vm = FakeVm;
    type Error = FakeError;

    fn create_vm(
        &self,
        _layout: &GuestLayout,
        _memory: &GuestMemoryMmap,
    ) -> Result<FakeVm, FakeError> {
        Ok(FakeVm {
            scripts: Mutex::new(self.scripts.clone()),
            ..FakeVm::default()
        })
    }

    fn supported_page_sizes(&self) -> PageSizes {
        self.page_sizes
    }

    fn phys_bits(&self) -> u8 {
        self.phys_bits
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use vmkit_exits::{ExitAction, StopReason};

    use super::*;
    use crate::run::{LoopExit, run_until_stop};
    use crate::x86::state::XSTATE_BV;

    fn only(exit: RunExit<'_>) -> VmExit<'_> {
        match exit {
            RunExit::Exits(mut exits) => {
                let e = exits.next().unwrap();
                assert!(exits.next().is_none());
                e
            }
            RunExit::Kicked => panic!("kicked"),
        }
    }

    #[test]
    fn a_single_in_lands_in_rax_on_the_next_state_read() {
        let mut vcpu = FakeVcpu::new(0);
        vcpu.set_registers(&Registers {
            rax: 0xffff_ffff_ffff_ffff,
            ..Registers::default()
        })
        .unwrap();
        vcpu.push(ScriptedExit::IoIn {
            port: 0x71,
            size: 2,
            count: 1,
        });
        match only(vcpu.run().unwrap()) {
            VmExit::IoIn { port: 0x71, data } => data.copy_from_slice(&[0x34, 0x12]),
            other => panic!("{other:?}"),
        }
        assert_eq!(vcpu.registers().unwrap().rax, 0xffff_ffff_ffff_1234);
    }

    #[test]
    fn mmio_reads_complete_on_the_next_run_and_string_input_does_not_touch_rax() {
        let mut vcpu = FakeVcpu::new(1);
        assert_eq!(vcpu.id(), 1);
        vcpu.push(ScriptedExit::MmioRead {
            addr: 0xd000_0000,
            len: 4,
        })
        .push(ScriptedExit::IoIn {
            port: 0x60,
            size: 1,
            count: 3,
        })
        .push(ScriptedExit::Hlt);
        match only(vcpu.run().unwrap()) {
            VmExit::MmioRead {
                addr: 0xd000_0000,
                data,
            } => data.copy_from_slice(&[1, 2, 3, 4]),
            other => panic!("{other:?}"),
        }
        match vcpu.run().unwrap() {
            RunExit::Exits(exits) => {
                assert_eq!(exits.len(), 3);
                for exit in exits {
                    match exit {
                        VmExit::IoIn { data, .. } => data[0] = 0xee,
                        other => panic!("{other:?}"),
                    }
                }
            }
            RunExit::Kicked => panic!("kicked"),
        }
        assert_eq!(
            vcpu.registers().unwrap().rax,
            0x0403_0201,
            "the MMIO read, not the ins"
        );
        assert_eq!(only(vcpu.run().unwrap()), VmExit::Hlt);
        assert_eq!(vcpu.run().unwrap_err(), FakeError::ScriptEnded);
        assert_eq!(vcpu.runs(), 4);
    }

    #[test]
    fn every_scripted_exit_replays() {
        let insn = InsnBytes::new(&[0xcc]);
        let cases = [
            (ScriptedExit::TripleFault, VmExit::TripleFault),
            (
                ScriptedExit::SystemEvent(SystemEvent::Reset),
                VmExit::SystemEvent(SystemEvent::Reset),
            ),
            (
                ScriptedExit::FailEntry { reason: 7, cpu: 1 },
                VmExit::FailEntry { reason: 7, cpu: 1 },
            ),
            (
                ScriptedExit::InternalError {
                    suberror: 1,
                    insn: Some(insn),
                },
                VmExit::InternalError {
                    suberror: 1,
                    insn: Some(insn),
                },
            ),
            (
                ScriptedExit::Debug {
                    pc: 0x10,
                    exception: 3,
                },
                VmExit::Debug {
                    pc: 0x10,
                    exception: 3,
                },
            ),
            (
                ScriptedExit::Other { reason: 99 },
                VmExit::Other { reason: 99 },
            ),
        ];
        let mut vcpu = FakeVcpu::new(0);
        for (scripted, want) in cases {
            vcpu.push(scripted);
            assert_eq!(only(vcpu.run().unwrap()), want);
        }
        vcpu.push(ScriptedExit::MmioWrite {
            addr: 8,
            data: vec![1, 2],
        });
        assert_eq!(
            only(vcpu.run().unwrap()),
            VmExit::MmioWrite {
                addr: 8,
                data: &[1, 2]
            }
        );
        vcpu.push(ScriptedExit::IoOut {
            port: 1,
            size: 2,
            data: vec![1, 2, 3, 4],
        });
        assert_eq!(
            vcpu.run()
                .map(|r| matches!(r, RunExit::Exits(e) if e.len() == 2)),
            Ok(true)
        );
        vcpu.push(ScriptedExit::IoOut {
            port: 1,
            size: 3,
            data: vec![1, 2, 3],
        });
        assert_eq!(vcpu.run().unwrap_err(), FakeError::BadIo);
        vcpu.push(ScriptedExit::IoIn {
            port: 1,
            size: 1,
            count: 0,
        });
        assert_eq!(vcpu.run().unwrap_err(), FakeError::BadIo);
        vcpu.push(ScriptedExit::Kicked);
        assert!(matches!(vcpu.run(), Ok(RunExit::Kicked)));
        assert_eq!(vcpu.remaining(), 0);
    }

    #[test]
    fn the_loop_resumes_halts_and_stops() {
        let mut vcpu = FakeVcpu::new(0);
        vcpu.push(ScriptedExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: b"hi".to_vec(),
        })
        .push(ScriptedExit::Kicked)
        .push(ScriptedExit::Hlt)
        .push(ScriptedExit::TripleFault)
        .push(ScriptedExit::Hlt);
        let out = std::cell::RefCell::new(Vec::new());
        let handler = |exit: VmExit<'_>| match exit {
            VmExit::IoOut { data, .. } => {
                out.borrow_mut().extend_from_slice(data);
                ExitAction::Resume
            }
            VmExit::Hlt => ExitAction::Halt,
            VmExit::TripleFault => ExitAction::Stop(StopReason::TripleFault),
            other => panic!("{other:?}"),
        };
        let stop = AtomicBool::new(false);
        assert_eq!(
            vcpu.run_loop(&handler, &stop),
            Ok(LoopExit::Stopped(StopReason::TripleFault))
        );
        assert_eq!(*out.borrow(), b"hi");
        assert_eq!(vcpu.halts(), 1);
        assert_eq!(vcpu.remaining(), 1);

        // A set stop flag returns before the vCPU runs again.
        stop.store(true, Ordering::Release);
        assert_eq!(
            run_until_stop(&mut vcpu, &handler, &stop),
            Ok(LoopExit::StopRequested)
        );
        assert_eq!(vcpu.remaining(), 1);
    }

    #[test]
    fn a_kick_interrupts_one_run_and_errors_propagate() {
        let mut vcpu = FakeVcpu::new(0);
        vcpu.push(ScriptedExit::Fail);
        let kicker = vcpu.kicker();
        kicker.kick();
        assert!(matches!(vcpu.run(), Ok(RunExit::Kicked)));
        let stop = AtomicBool::new(false);
        let handler = |_: VmExit<'_>| ExitAction::Resume;
        assert_eq!(vcpu.run_loop(&handler, &stop), Err(FakeError::Scripted));
        assert_eq!(vcpu.run_loop(&handler, &stop), Err(FakeError::ScriptEnded));
    }

    #[test]
    fn entry_states_and_injection() {
        let mut vcpu = FakeVcpu::new(0);
        vcpu.setup_pvh(GuestAddress(0x10_0000), GuestAddress(0x6000))
            .unwrap();
        let regs = vcpu.registers().unwrap();
        assert_eq!((regs.rip, regs.rbx), (0x10_0000, 0x6000));
        assert_eq!(vcpu.special_registers().unwrap().cr0, 0x11);

        let entry = LongModeEntry {
            entry: GuestAddress(0x20_0000),
            page_table: GuestAddress(0x9000),
            gdt: GuestAddress(0x500),
            boot_params: GuestAddress(0x7000),
            stack_pointer: GuestAddress(0),
        };
        vcpu.setup_long_mode(&entry).unwrap();
        assert_eq!(vcpu.special_registers().unwrap().cr3, 0x9000);
        assert_eq!(vcpu.registers().unwrap().rsi, 0x7000);
        let bad = LongModeEntry {
            page_table: GuestAddress(1),
            ..entry
        };
        assert!(matches!(
            vcpu.setup_long_mode(&bad),
            Err(FakeError::Entry(_))
        ));

        let mut sregs = vcpu.special_registers().unwrap();
        sregs.cr2 = 0x1234;
        vcpu.set_special_registers(&sregs).unwrap();
        assert_eq!(vcpu.special_registers().unwrap().cr2, 0x1234);

        let ud = Exception {
            vector: 6,
            error_code: None,
        };
        vcpu.inject_exception(ud).unwrap();
        assert_eq!(vcpu.injected(), &[ud]);
        for vector in [2, 32] {
            assert_eq!(
                vcpu.inject_exception(Exception {
                    vector,
                    error_code: None
                }),
                Err(FakeError::InvalidException(vector))
            );
        }
        vcpu.halt().unwrap();
        assert_eq!(vcpu.halts(), 1);
    }

    #[test]
    fn vcpus_of_a_scripted_hypervisor_run_their_scripts() {
        let hypervisor = FakeHypervisor::default()
            .script(1, [ScriptedExit::Hlt])
            .script(1, [ScriptedExit::TripleFault]);
        let layout = GuestLayout::new(2 << 20).unwrap();
        let memory = layout.create_guest_memory().unwrap();
        let vm = hypervisor.create_vm(&layout, &memory).unwrap();
        vm.script(0, [ScriptedExit::Kicked]);
        let mut vcpus = vm.create_vcpus(2).unwrap();
        assert_eq!(
            vcpus.iter().map(FakeVcpu::remaining).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(matches!(vcpus[0].run(), Ok(RunExit::Kicked)));
        assert_eq!(only(vcpus[1].run().unwrap()), VmExit::Hlt);
        assert_eq!(only(vcpus[1].run().unwrap()), VmExit::TripleFault);
        // Each VM starts from the hypervisor's scripts; a script is taken by its vCPU.
        let again = hypervisor.create_vm(&layout, &memory).unwrap();
        assert_eq!(again.create_vcpu(1, 2).unwrap().remaining(), 2);
        assert_eq!(again.create_vcpu(1, 2).unwrap().remaining(), 0);
    }

    #[test]
    fn fake_vm_and_hypervisor_record_what_they_are_asked() {
        let hypervisor = FakeHypervisor::default();
        assert_eq!(hypervisor.supported_page_sizes(), PageSizes::ALL);
        assert_eq!(hypervisor.phys_bits(), 39);
        let narrow = FakeHypervisor {
            phys_bits: 36,
            ..FakeHypervisor::default()
        };
        assert_eq!(narrow.phys_bits(), 36);
        let layout = GuestLayout::with_phys_bits(2 << 20, hypervisor.phys_bits()).unwrap();
        let memory = layout.create_guest_memory().unwrap();
        let vm = hypervisor.create_vm(&layout, &memory).unwrap();
        let vcpus = vm.create_vcpus(2).unwrap();
        assert_eq!(vcpus.iter().map(Vcpu::id).collect::<Vec<_>>(), [0, 1]);

        let fd = EventFd::new(0).unwrap();
        let addr = IoEventAddress::Mmio(0x1000);
        vm.register_irqfd(&fd, 5).unwrap();
        vm.unregister_irqfd(&fd, 5).unwrap();
        vm.register_irqfd_with_resample(&fd, &fd, 17).unwrap();
        vm.register_ioevent(&fd, addr, Some(DataMatch::U32(1)))
            .unwrap();
        vm.unregister_ioevent(&fd, addr, None).unwrap();
        vm.set_irq_line(4, true).unwrap();
        assert!(vm.signal_msi(0xFEE0_0000, 0x41).unwrap());
        assert_eq!(
            vm.events(),
            [
                FakeVmEvent::IrqfdRegistered(5),
                FakeVmEvent::IrqfdUnregistered(5),
                FakeVmEvent::IrqfdResampleRegistered(17),
                FakeVmEvent::IoeventRegistered(addr, Some(DataMatch::U32(1))),
                FakeVmEvent::IoeventUnregistered(addr, None),
                FakeVmEvent::IrqLine(4, true),
                FakeVmEvent::Msi(0xFEE0_0000, 0x41),
            ]
        );
        assert!(FakeError::ScriptEnded.to_string().contains("script"));
    }

    #[test]
    fn assist_state_lives_in_memory() {
        let mut v = FakeVcpu::new(0);
        assert_eq!(v.xcr0().unwrap(), 1);
        v.set_xcr0(7).unwrap();
        assert_eq!(v.xcr0().unwrap(), 7);
        let area = v.xsave().unwrap();
        assert_eq!(area.len(), XSAVE_AREA_SIZE);
        assert_eq!(area[0..2], 0x37fu16.to_le_bytes());
        assert_eq!(v.set_xsave(&[0; 8]), Err(FakeError::XsaveSize(8)));
        v.set_xsave(&vec![1; XSAVE_AREA_SIZE]).unwrap();
        assert_eq!(v.xsave().unwrap()[0], 1);
        assert_eq!(v.msr(0xda0).unwrap(), None);
        v.set_msr(0xda0, 5).unwrap();
        assert_eq!(v.msr(0xda0).unwrap(), Some(5));
        assert_eq!(v.pending_exception().unwrap(), None);
        v.inject_page_fault(0x1234, 2).unwrap();
        assert_eq!(v.special_registers().unwrap().cr2, 0x1234);
        assert_eq!(v.pending_exception().unwrap().map(|e| e.vector), Some(14));
        v.clear_pending_exception().unwrap();
        assert_eq!(v.pending(), None);
        assert_eq!(v.injected().len(), 1);
    }

    #[test]
    fn a_snapshot_loads_into_a_fresh_fake_vcpu_and_reads_back_equal() {
        use crate::x86::msr::{LSTAR, STAR};

        let mut v = FakeVcpu::new(2);
        assert_eq!(v.lapic().unwrap().register(APIC_ID), 2 << 24);
        v.setup_pvh(GuestAddress(0x10_0000), GuestAddress(0x6000))
            .unwrap();
        v.set_msrs(&[
            MsrValue {
                index: STAR,
                value: 0x23_0010_0000_0000,
            },
            MsrValue {
                index: LSTAR,
                value: 0xffff_ffff_8100_0000,
            },
        ])
        .unwrap();
        let mut fpu = v.fpu().unwrap();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        fpu.xmm[1] = [7; 16];
        v.set_fpu(&fpu).unwrap();
        assert_eq!(v.fpu().unwrap(), fpu);
        v.inject_exception(Exception {
            vector: 13,
            error_code: Some(0),
        })
        .unwrap();
        let snapshot = v.state().unwrap();
        assert_eq!(snapshot.registers.rip, 0x10_0000);
        assert_eq!(
            snapshot.msrs.iter().map(|m| m.index).collect::<Vec<_>>(),
            crate::x86::SNAPSHOT_MSRS,
            "the boot MSRs and PAT, in the order the backend lists them"
        );
        assert!(snapshot.msrs.contains(&MsrValue {
            index: LSTAR,
            value: 0xffff_ffff_8100_0000
        }));
        assert_eq!(snapshot.xsave[XSTATE_BV] & 0b11, 0b11);

        let mut fresh = FakeVcpu::new(2);
        assert_ne!(fresh.state().unwrap(), snapshot);
        fresh.set_state(&snapshot).unwrap();
        assert_eq!(fresh.state().unwrap(), snapshot);
        assert_eq!(fresh.fpu().unwrap().xmm[1], [7; 16]);

        let mut changed = snapshot.clone();
        changed.registers.rbx = 42;
        changed.pending_exception = None;
        fresh.set_state(&changed).unwrap();
        assert_eq!(fresh.registers().unwrap().rbx, 42);
        assert_eq!(fresh.state().unwrap(), changed);
    }

    #[test]
    fn translation_is_the_identity_until_paging_is_on() {
        let mut v = FakeVcpu::new(0);
        assert_eq!(v.translate(0x1234_5678).unwrap(), Some(0x1234_5678));
        v.map_page(0xffff_8000_0000_1abc, 0x20_0000);
        let mut sregs = v.special_registers().unwrap();
        sregs.cr0 |= CR0_PG;
        v.set_special_registers(&sregs).unwrap();
        assert_eq!(v.translate(0xffff_8000_0000_1008).unwrap(), Some(0x20_0008));
        assert_eq!(v.translate(0x1234_5678).unwrap(), None);
    }
}
