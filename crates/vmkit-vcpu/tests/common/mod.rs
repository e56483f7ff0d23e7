//! Shared set-up of the tests that run tiny guests under KVM.

#![allow(dead_code, clippy::unwrap_used)]

use std::cell::RefCell;

use vmkit_exits::{ExitAction, StopReason, VcpuState, VmExit};
use vmkit_memory::GuestLayout;
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_vcpu::{Hypervisor, KvmHypervisor, KvmVcpu, KvmVm, Vcpu, Vm};

/// The port the test guests write to when they are done; the byte written is the exit status.
pub const DONE_PORT: u16 = 0xf4;
/// Where real-mode test code is placed and entered.
pub const REAL_MODE_CODE: u64 = 0x1000;
/// Where 32- and 64-bit test code is placed and entered.
pub const CODE: u64 = 0x10_0000;
/// The `hvm_start_info` address PVH tests pass in EBX.
pub const START_INFO: u64 = 0x6000;

/// The host's KVM, or `None` when the tests are explicitly skipped with
/// `VMKIT_SKIP_KVM_TESTS=1`. Without that opt-out a missing or unusable `/dev/kvm` fails the
/// test, naming the reason.
pub fn hypervisor() -> Option<KvmHypervisor> {
    if std::env::var_os("VMKIT_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: VMKIT_SKIP_KVM_TESTS=1, and this test needs /dev/kvm");
        return None;
    }
    match KvmHypervisor::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => panic!(
            "this test needs a usable /dev/kvm, but: {e}. \
             Set VMKIT_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly."
        ),
    }
}

/// A VM with guest memory, ready for test code.
pub struct Machine {
    pub kvm: KvmHypervisor,
    pub layout: GuestLayout,
    pub memory: GuestMemoryMmap,
    pub vm: KvmVm,
}

impl Machine {
    /// A 16 MiB machine, or `None` when KVM tests are skipped.
    pub fn new() -> Option<Self> {
        let kvm = hypervisor()?;
        let layout = GuestLayout::new(16 << 20).unwrap();
        let memory = layout.create_guest_memory().unwrap();
        let vm = kvm.create_vm(&layout, &memory).unwrap();
        Some(Self {
            kvm,
            layout,
            memory,
            vm,
        })
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.memory.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.memory
            .read_slice(&mut buf, GuestAddress(addr))
            .unwrap();
        buf
    }

    /// vCPU 0 in real mode at [`REAL_MODE_CODE`] (CS base 0), running `code`.
    pub fn real_mode_vcpu(&self, code: &[u8]) -> KvmVcpu {
        self.write(REAL_MODE_CODE, code);
        let mut vcpu = self.vm.create_vcpu(0, 1).unwrap();
        let mut sregs = vcpu.special_registers().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_special_registers(&sregs).unwrap();
        let mut regs = vcpu.registers().unwrap();
        regs.rip = REAL_MODE_CODE;
        regs.rflags = 2;
        vcpu.set_registers(&regs).unwrap();
        vcpu
    }

    /// vCPU 0 in the PVH entry state at [`CODE`], running 32-bit `code`.
    pub fn pvh_vcpu(&self, code: &[u8]) -> KvmVcpu {
        self.write(CODE, code);
        let mut vcpu = self.vm.create_vcpu(0, 1).unwrap();
        vcpu.setup_pvh(GuestAddress(CODE), GuestAddress(START_INFO))
            .unwrap();
        vcpu
    }
}

/// What a test guest did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Out(u16, Vec<u8>),
    In(u16, usize),
    MmioWrite(u64, Vec<u8>),
    MmioRead(u64, usize),
    Other(String),
}

/// A handler that records every exit, answers reads with `read_value` (little-endian, repeated)
/// and stops on a write to [`DONE_PORT`] with the byte as status, or on anything else unexpected.
pub struct Recorder {
    pub seen: RefCell<Vec<Seen>>,
    pub read_value: u64,
}

impl Recorder {
    pub fn new(read_value: u64) -> Self {
        Self {
            seen: RefCell::new(Vec::new()),
            read_value,
        }
    }

    pub fn handle(&self, exit: VmExit<'_>) -> ExitAction {
        let mut seen = self.seen.borrow_mut();
        let value = self.read_value.to_le_bytes();
        match exit {
            VmExit::IoOut {
                port: DONE_PORT,
                data,
            } => {
                seen.push(Seen::Out(DONE_PORT, data.to_vec()));
                ExitAction::Stop(StopReason::GuestExit(u32::from(data[0])))
            }
            VmExit::IoOut { port, data } => {
                seen.push(Seen::Out(port, data.to_vec()));
                ExitAction::Resume
            }
            VmExit::IoIn { port, data } => {
                seen.push(Seen::In(port, data.len()));
                let n = data.len();
                data.copy_from_slice(&value[..n]);
                ExitAction::Resume
            }
            VmExit::MmioWrite { addr, data } => {
                seen.push(Seen::MmioWrite(addr, data.to_vec()));
                ExitAction::Resume
            }
            VmExit::MmioRead { addr, data } => {
                seen.push(Seen::MmioRead(addr, data.len()));
                let n = data.len();
                data.copy_from_slice(&value[..n]);
                ExitAction::Resume
            }
            other => {
                seen.push(Seen::Other(format!("{other:?}")));
                ExitAction::Stop(StopReason::Unhandled(u32::MAX))
            }
        }
    }
}
