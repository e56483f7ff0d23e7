//! One exit round trip, three ways: through vmkit's full path (with seccomp off, and on a thread
//! confined by the reference VMM's vCPU list), and through a raw kvm-ioctls loop.
//!
//! All run the same guest code ([`exit_loop`](crate::guest::exit_loop)) in the same kind of
//! VM (vmkit-memory's guest memory, an in-kernel irqchip, one vCPU in the PVH entry state).
//!
//! - [`FullPath`]: vmkit-vcpu's `KvmVcpu` run loop (`run_until_stop`: `Vcpu::run`, which
//!   converts the run area into `VmExit`s, then `handle_exits`) → `ExitDispatcher` (exit
//!   statistics always on) → `IoBus`/`MmioBus` → the `PcTestDev` registered on it.
//! - [`RawPath`]: `VcpuFd::run()` in a loop matching `VcpuExit::IoOut`/`MmioWrite` and keeping
//!   the byte written, the least a VMM can do.
//! - [`ConfinedFullPath`]: the full path on a thread of its own that has installed the reference
//!   VMM's vCPU seccomp list (`--seccomp true`), as every vCPU thread of the VMM does.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use reference_vmm_seccomp::{Filters, SeccompMode, ThreadKind};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmkit_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmkit_devices::testdev::{IOMEM_BASE, IOMEM_SIZE, PcTestDev, REGISTER_PORTS, TestDevStats};
use vmkit_exits::VcpuState;
use vmkit_exits::dispatch::ExitDispatcher;
use vmkit_exits::{ExitStats, IoBus, MmioBus, StopReason};
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::{KVM_TSS_START, MIN_RAM_SIZE};
use vmkit_vcpu::x86::pvh_registers;
use vmkit_vcpu::{Hypervisor, KvmHypervisor, KvmVcpu, KvmVm, LoopExit, Vcpu, Vm};

use crate::BenchError;
use crate::guest::CODE_ADDR;

/// The smallest guest vmkit-memory lays out: the code at 1 MiB fits in it.
fn guest_memory() -> Result<(GuestLayout, GuestMemoryMmap), BenchError> {
    let layout = GuestLayout::new(MIN_RAM_SIZE).map_err(|e| BenchError::Memory(e.to_string()))?;
    let memory = layout
        .create_guest_memory()
        .map_err(|e| BenchError::Memory(e.to_string()))?;
    Ok((layout, memory))
}

fn write_code(memory: &GuestMemoryMmap, code: &[u8]) -> Result<(), BenchError> {
    memory
        .write_slice(code, GuestAddress(CODE_ADDR))
        .map_err(|e| BenchError::Memory(e.to_string()))
}

/// vmkit's full exit path around one vCPU.
pub struct FullPath {
    // Declared first: the vCPU and VM close before the memory is unmapped.
    vcpu: KvmVcpu,
    _vm: KvmVm,
    memory: GuestMemoryMmap,
    dispatcher: ExitDispatcher,
    testdev: Arc<PcTestDev>,
    stop: AtomicBool,
}

impl FullPath {
    /// A VM with the test device and the debug-exit port on its buses, and one vCPU.
    pub fn new(kvm: &KvmHypervisor) -> Result<Self, BenchError> {
        let (layout, memory) = guest_memory()?;
        let vm = kvm.create_vm(&layout, &memory)?;
        let vcpu = vm.create_vcpu(0, 1)?;
        let io_bus = Arc::new(IoBus::new());
        let mmio_bus = Arc::new(MmioBus::new());
        let testdev = Arc::new(PcTestDev::new());
        io_bus.register_named(REGISTER_PORTS, "testdev", testdev.clone())?;
        io_bus.register_named(
            DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + DEBUG_EXIT_PORT_LEN,
            "debug-exit",
            Arc::new(DebugExit::new()),
        )?;
        mmio_bus.register_named(
            IOMEM_BASE..IOMEM_BASE + IOMEM_SIZE,
            "testdev-iomem",
            testdev.clone(),
        )?;
        Ok(Self {
            vcpu,
            _vm: vm,
            memory,
            dispatcher: ExitDispatcher::new(io_bus, mmio_bus),
            testdev,
            stop: AtomicBool::new(false),
        })
    }

    /// Runs `code` from the PVH entry state until it writes 0 to the debug-exit port; returns
    /// the time from the first entry to the stop.
    pub fn run(&mut self, code: &[u8]) -> Result<Duration, BenchError> {
        write_code(&self.memory, code)?;
        self.vcpu
            .setup_pvh(GuestAddress(CODE_ADDR), GuestAddress(0))?;
        self.run_loop()
    }

    /// Runs the code the last [`FullPath::run`] loaded again, from its first instruction: only
    /// the registers are reset (`KVM_SET_REGS`, which a vCPU's seccomp list allows; the rest of
    /// the entry state is as the guest left it, as [`RawPath::run`] does it).
    pub fn rerun(&mut self) -> Result<Duration, BenchError> {
        self.vcpu
            .set_registers(&pvh_registers(GuestAddress(CODE_ADDR), GuestAddress(0)))?;
        self.run_loop()
    }

    fn run_loop(&mut self) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let exit = self.vcpu.run_loop(&self.dispatcher, &self.stop)?;
        let elapsed = start.elapsed();
        match exit {
            LoopExit::Stopped(StopReason::GuestExit(0)) => Ok(elapsed),
            other => Err(BenchError::Guest(format!("the loop ended with {other:?}"))),
        }
    }

    /// The test device's access counts.
    pub fn device_stats(&self) -> TestDevStats {
        self.testdev.stats()
    }

    /// The dispatcher's exit statistics.
    pub fn exit_stats(&self) -> ExitStats {
        self.dispatcher.stats()
    }
}

/// The status a call outside the vCPU list ends the benchmark with: the reference VMM's
/// (128 + SIGSYS).
pub const SECCOMP_VIOLATION_STATUS: u8 = 159;

/// vmkit's full path on a thread confined by the reference VMM's vCPU seccomp list, which
/// cannot be lifted: the thread is this path's for its whole life, and runs when told to.
pub struct ConfinedFullPath {
    go: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<Result<Duration, BenchError>>,
    worker: Option<JoinHandle<()>>,
}

impl ConfinedFullPath {
    /// Loads `code` into `full` and sets its vCPU up on this thread (the set-up calls are not
    /// on a vCPU's list), then hands it to a new thread that installs the vCPU list and, on each
    /// [`ConfinedFullPath::run`], runs the code again ([`FullPath::rerun`]).
    pub fn start(mut full: FullPath, code: &[u8]) -> Result<Self, BenchError> {
        write_code(&full.memory, code)?;
        full.vcpu
            .setup_pvh(GuestAddress(CODE_ADDR), GuestAddress(0))?;
        let filters = Filters::new(SeccompMode::Trap, SECCOMP_VIOLATION_STATUS)
            .map_err(|e| BenchError::Seccomp(e.to_string()))?;
        let (go, wait) = mpsc::channel::<()>();
        let (report, done) = mpsc::channel();
        let worker = thread::Builder::new()
            .name("vcpu-seccomp".into())
            .spawn(move || {
                let installed = filters
                    .apply(ThreadKind::Vcpu)
                    .map(|()| Duration::ZERO)
                    .map_err(|e| BenchError::Seccomp(e.to_string()));
                let ok = installed.is_ok();
                if report.send(installed).is_err() || !ok {
                    return;
                }
                while wait.recv().is_ok() {
                    if report.send(full.rerun()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| BenchError::Seccomp(format!("cannot start the thread: {e}")))?;
        let confined = Self {
            go: Some(go),
            done,
            worker: Some(worker),
        };
        confined.wait()?;
        Ok(confined)
    }

    /// Runs the loaded code once on the confined thread; returns the time from the first entry
    /// to the stop.
    pub fn run(&mut self) -> Result<Duration, BenchError> {
        let sent = self.go.as_ref().map(|go| go.send(()));
        if !matches!(sent, Some(Ok(()))) {
            return Err(BenchError::Seccomp("the confined thread has ended".into()));
        }
        self.wait()
    }

    fn wait(&self) -> Result<Duration, BenchError> {
        self.done
            .recv()
            .map_err(|_| BenchError::Seccomp("the confined thread has ended".into()))?
    }
}

impl Drop for ConfinedFullPath {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; the path (vCPU, VM, memory) drops there.
        self.go = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// A raw kvm-ioctls VM and vCPU: the baseline.
pub struct RawPath {
    // Declared first: the vCPU and VM close before the memory is unmapped.
    vcpu: VcpuFd,
    _vm: VmFd,
    memory: GuestMemoryMmap,
}

/// A flat 4 GiB 32-bit segment.
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

impl RawPath {
    /// A VM with the same memory and in-kernel irqchip as [`FullPath`]'s, and one vCPU in 32-bit
    /// protected mode with flat segments (the PVH entry state).
    pub fn new() -> Result<Self, BenchError> {
        let raw = |what: &'static str| move |source| BenchError::RawKvm { what, source };
        let kvm = Kvm::new().map_err(raw("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(raw("KVM_CREATE_VM"))?;
        let (_, memory) = guest_memory()?;
        let host = memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| BenchError::Memory(e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MIN_RAM_SIZE,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` starts `memory`'s one MIN_RAM_SIZE-byte mapping, held in `self` and
        // unmapped only after the VM fd is closed (field order).
        unsafe { vm.set_user_memory_region(region) }.map_err(raw("KVM_SET_USER_MEMORY_REGION"))?;
        vm.set_tss_address(KVM_TSS_START as usize)
            .map_err(raw("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip().map_err(raw("KVM_CREATE_IRQCHIP"))?;
        let vcpu = vm.create_vcpu(0).map_err(raw("KVM_CREATE_VCPU"))?;
        let mut sregs = vcpu.get_sregs().map_err(raw("KVM_GET_SREGS"))?;
        sregs.cs = flat_segment(0x10, 0xB);
        let data = flat_segment(0x18, 0x3);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.cr0 = 0x11; // PE | ET
        vcpu.set_sregs(&sregs).map_err(raw("KVM_SET_SREGS"))?;
        Ok(Self {
            vcpu,
            _vm: vm,
            memory,
        })
    }

    /// Runs `code` until it writes to the debug-exit port; returns the time from the first
    /// entry to that exit and the number of other exits (all port or MMIO writes).
    pub fn run(&mut self, code: &[u8]) -> Result<(Duration, u64), BenchError> {
        write_code(&self.memory, code)?;
        let regs = kvm_regs {
            rip: CODE_ADDR,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu
            .set_regs(&regs)
            .map_err(|source| BenchError::RawKvm {
                what: "KVM_SET_REGS",
                source,
            })?;
        let (mut exits, mut last) = (0u64, 0u8);
        let start = Instant::now();
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::IoOut(DEBUG_EXIT_PORT, _)) => break,
                Ok(VcpuExit::IoOut(_, data) | VcpuExit::MmioWrite(_, data)) => {
                    last = data.first().copied().unwrap_or(0);
                    exits += 1;
                }
                Ok(other) => {
                    return Err(BenchError::Guest(format!("unexpected exit {other:?}")));
                }
                Err(e) if e.errno() == libc::EINTR => {}
                Err(source) => {
                    return Err(BenchError::RawKvm {
                        what: "KVM_RUN",
                        source,
                    });
                }
            }
        }
        let elapsed = start.elapsed();
        black_box(last);
        Ok((elapsed, exits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::{ExitKind, exit_loop};
    use crate::kvm_available;

    /// Not a timing test: both paths see exactly the exits the loop makes.
    #[test]
    fn both_paths_take_every_exit_of_the_loop() {
        let Some(kvm) = kvm_available() else { return };
        let mut full = FullPath::new(&kvm).unwrap();
        let mut raw = RawPath::new().unwrap();
        for kind in [ExitKind::PortWrite, ExitKind::MmioWrite] {
            let code = exit_loop(kind, 25);
            full.run(&code).unwrap();
            let (_, exits) = raw.run(&code).unwrap();
            assert_eq!(exits, 25, "{kind:?}");
        }
        let stats = full.device_stats();
        assert_eq!((stats.pio.writes, stats.mmio.writes), (25, 25));
        let text = full.exit_stats().to_string();
        assert!(text.contains("testdev-iomem"), "{text}");
    }

    /// A call outside the vCPU list would end this process (status 159).
    #[test]
    fn the_full_path_runs_on_a_thread_confined_by_the_vcpu_list() {
        let Some(kvm) = kvm_available() else { return };
        for kind in [ExitKind::PortWrite, ExitKind::MmioWrite] {
            let full = FullPath::new(&kvm).unwrap();
            let mut confined = ConfinedFullPath::start(full, &exit_loop(kind, 25)).unwrap();
            for _ in 0..3 {
                confined.run().unwrap();
            }
        }
    }

    #[test]
    fn a_loop_that_does_not_stop_cleanly_is_an_error() {
        let Some(kvm) = kvm_available() else { return };
        let mut full = FullPath::new(&kvm).unwrap();
        // out 0xf4, al with al = 7: the guest exits with status 7.
        let err = full.run(&[0xB0, 7, 0xE6, 0xF4, 0xF4]).unwrap_err();
        assert!(err.to_string().contains("GuestExit(7)"), "{err}");
        let mut raw = RawPath::new().unwrap();
        // in al, 0x60: an exit the raw loop does not expect.
        let err = raw.run(&[0xE4, 0x60, 0xF4]).unwrap_err();
        assert!(err.to_string().contains("unexpected exit"), "{err}");
    }
}
