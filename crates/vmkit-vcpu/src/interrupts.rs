//! Ready-made interrupt triggers: the glue between the device models' trigger traits
//! ([`InterruptTrigger`], [`MsiTrigger`], defined in vmkit-exits) and a [`Vm`]'s interrupt
//! controllers.
//!
//! - [`IrqLine`] drives a GSI with [`Vm::set_irq_line`] (`KVM_IRQ_LINE`): an edge is a raise and
//!   a lower, a level stays raised until the device lowers it. One ioctl per change, from the
//!   thread that handles the device's exit; nothing to poll.
//! - [`IrqfdLine`] drives a GSI through an irqfd: an eventfd write instead of an ioctl, so any
//!   thread (or another process) can raise it. [`IrqfdLine::edge`] pulses the line;
//!   [`IrqfdLine::level`] registers a resample eventfd too (`KVM_IRQFD_FLAG_RESAMPLE`): the
//!   backend holds the line raised until the guest's EOI, then lowers it and signals the resample
//!   fd, and [`IrqfdLine::resample`] raises it again while the device still holds it.
//! - [`MsiLine`] sends MSI/MSI-X messages with [`Vm::signal_msi`] (`KVM_SIGNAL_MSI`).
//!
//! All three are generic over the [`Vm`] trait, so a VMM written against the traits stays so.
//!
//! A device that raises its line from the thread handling its exit is served best by
//! [`IrqLine`]: no descriptors to own, level semantics from the in-kernel IOAPIC with nothing to
//! watch, and the raising thread pays about as much as for an irqfd write (the `kvm/trigger`
//! benchmark of this crate measures both). [`IrqfdLine`] is for lines raised where the VMM
//! cannot make the ioctl (another process, a confined thread).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use log::{debug, warn};
use vmkit_exits::{InterruptTrigger, MsiTrigger};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::hypervisor::Vm;

/// A GSI of the VM's interrupt controllers, driven with [`Vm::set_irq_line`]: an edge is a raise
/// and a lower; a level stays raised until the device lowers it (the in-kernel IOAPIC re-delivers
/// it at EOI while it is high).
///
/// The line remembers its level, so a device that asserts on every event (virtio INTx#, once per
/// completed request) costs one call per change, not one per event: raising a line the
/// controller already holds high changes nothing for either trigger mode.
#[derive(Debug)]
pub struct IrqLine<V> {
    vm: Arc<V>,
    gsi: u32,
    high: AtomicBool,
}

impl<V: Vm> IrqLine<V> {
    /// The line `gsi` of `vm`, low.
    pub fn new(vm: Arc<V>, gsi: u32) -> Self {
        Self {
            vm,
            gsi,
            high: AtomicBool::new(false),
        }
    }

    /// The GSI this line drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    fn set(&self, level: bool) -> io::Result<()> {
        let result = self
            .vm
            .set_irq_line(self.gsi, level)
            .map_err(io::Error::other);
        // On failure the level is unknown: forget it, so the next call reaches the backend.
        self.high.store(level && result.is_ok(), Ordering::Relaxed);
        result
    }
}

impl<V: Vm + Send + Sync> InterruptTrigger for IrqLine<V> {
    fn trigger(&self) -> io::Result<()> {
        self.set(true)?;
        self.set(false)
    }

    fn assert(&self) -> io::Result<()> {
        if self.high.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.set(true)
    }

    fn deassert(&self) -> io::Result<()> {
        self.set(false)
    }
}

/// MSI/MSI-X messages delivered with [`Vm::signal_msi`] (`KVM_SIGNAL_MSI`), from the thread
/// whose exit completed the device's work.
///
/// A message the guest's own programming blocks (no APIC matches its destination) is not an
/// error: it is logged at debug level and the send succeeds.
#[derive(Debug)]
pub struct MsiLine<V> {
    vm: Arc<V>,
}

impl<V: Vm> MsiLine<V> {
    /// Messages for `vm`'s local APICs.
    pub fn new(vm: Arc<V>) -> Self {
        Self { vm }
    }
}

impl<V: Vm + Send + Sync> MsiTrigger for MsiLine<V> {
    fn send(&self, address: u64, data: u32) -> io::Result<()> {
        let delivered = self
            .vm
            .signal_msi(address, data)
            .map_err(io::Error::other)?;
        if !delivered {
            debug!("MSI address={address:#x} data={data:#x} was blocked by the guest's APICs");
        }
        Ok(())
    }
}

/// Why an [`IrqfdLine`] could not be set up.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum IrqfdError<E: std::error::Error + 'static> {
    /// creating an eventfd for GSI {gsi} failed
    EventFd {
        /// The GSI the line was for.
        gsi: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// registering the irqfd of GSI {gsi} failed
    Register {
        /// The GSI the line was for.
        gsi: u32,
        /// The backend's error.
        #[source]
        source: E,
    },
}

/// A GSI driven through an irqfd: raising it is a write to an eventfd the backend listens on.
///
/// An [`edge`](Self::edge) line pulses the GSI on each write; [`assert`](InterruptTrigger::assert)
/// is a pulse too and [`deassert`](InterruptTrigger::deassert) does nothing.
///
/// A [`level`](Self::level) line has a resample eventfd as well: a write raises the GSI and the
/// backend keeps it raised until the guest acknowledges the interrupt (EOI), then lowers it and
/// signals [`resample_fd`](Self::resample_fd). [`deassert`](InterruptTrigger::deassert) only
/// records that the device let go (the backend lowers the line at the next EOI); the VMM waits
/// for the resample fd to become readable (an event loop, or a thread blocked on it) and calls
/// [`resample`](Self::resample), which raises the line again if the device still holds it. A
/// level line whose resample fd nobody watches still works for a device that lowers its
/// condition before the guest's EOI (virtio INTx#: the guest reads ISR, which deasserts, and
/// then acknowledges).
///
/// Dropping the line unregisters the irqfd.
#[derive(Debug)]
pub struct IrqfdLine<V: Vm> {
    vm: Arc<V>,
    gsi: u32,
    irqfd: EventFd,
    resample: Option<EventFd>,
    high: AtomicBool,
}

impl<V: Vm> IrqfdLine<V> {
    /// An edge-triggered line: each write to the irqfd pulses `gsi` of `vm`.
    pub fn edge(vm: Arc<V>, gsi: u32) -> Result<Self, IrqfdError<V::Error>> {
        let irqfd = new_eventfd(gsi)?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|source| IrqfdError::Register { gsi, source })?;
        Ok(Self {
            vm,
            gsi,
            irqfd,
            resample: None,
            high: AtomicBool::new(false),
        })
    }

    /// A level-triggered line: the irqfd raises `gsi` of `vm` until the guest's EOI, and the
    /// resample fd reports each EOI.
    pub fn level(vm: Arc<V>, gsi: u32) -> Result<Self, IrqfdError<V::Error>> {
        let irqfd = new_eventfd(gsi)?;
        let resample = new_eventfd(gsi)?;
        vm.register_irqfd_with_resample(&irqfd, &resample, gsi)
            .map_err(|source| IrqfdError::Register { gsi, source })?;
        Ok(Self {
            vm,
            gsi,
            irqfd,
            resample: Some(resample),
            high: AtomicBool::new(false),
        })
    }

    /// The GSI this line drives.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }

    /// The eventfd that raises the line (non-blocking): a VMM may hand it to another thread or
    /// process, which raises the line with a write of 1.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The resample eventfd of a level line (non-blocking; `None` for an edge line): readable
    /// after the guest acknowledged the interrupt and the backend lowered the line.
    pub fn resample_fd(&self) -> Option<&EventFd> {
        self.resample.as_ref()
    }

    /// Whether the device holds the line raised (it asserted and has not deasserted since).
    pub fn is_asserted(&self) -> bool {
        self.high.load(Ordering::Acquire)
    }

    /// Handles the resample fd: consumes the EOIs it reports and, if there was one and the device
    /// still holds the line, raises the line again. Returns whether it raised the line. Without
    /// a pending EOI (or on an edge line) it does nothing.
    pub fn resample(&self) -> io::Result<bool> {
        let Some(resample) = &self.resample else {
            return Ok(false);
        };
        match resample.read() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
        if self.is_asserted() {
            self.irqfd.write(1)?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl<V: Vm> Drop for IrqfdLine<V> {
    fn drop(&mut self) {
        if let Err(e) = self.vm.unregister_irqfd(&self.irqfd, self.gsi) {
            warn!("unregistering the irqfd of GSI {} failed: {e}", self.gsi);
        }
    }
}

impl<V: Vm + Send + Sync> InterruptTrigger for IrqfdLine<V> {
    fn trigger(&self) -> io::Result<()> {
        self.irqfd.write(1)
    }

    fn assert(&self) -> io::Result<()> {
        self.high.store(true, Ordering::Release);
        self.irqfd.write(1)
    }

    fn deassert(&self) -> io::Result<()> {
        self.high.store(false, Ordering::Release);
        Ok(())
    }
}

fn new_eventfd<E: std::error::Error + 'static>(gsi: u32) -> Result<EventFd, IrqfdError<E>> {
    EventFd::new(EFD_NONBLOCK).map_err(|source| IrqfdError::EventFd { gsi, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeVm, FakeVmEvent};

    #[test]
    fn irq_line_pulses_edges_and_holds_levels_once() {
        let vm = Arc::new(FakeVm::default());
        let line = IrqLine::new(vm.clone(), 4);
        assert_eq!(line.gsi(), 4);
        line.trigger().unwrap();
        line.assert().unwrap();
        // Already high: no second call.
        line.assert().unwrap();
        line.deassert().unwrap();
        line.assert().unwrap();
        assert_eq!(
            vm.events(),
            [
                FakeVmEvent::IrqLine(4, true),
                FakeVmEvent::IrqLine(4, false),
                FakeVmEvent::IrqLine(4, true),
                FakeVmEvent::IrqLine(4, false),
                FakeVmEvent::IrqLine(4, true),
            ]
        );
    }

    #[test]
    fn msi_line_forwards_address_and_data() {
        let vm = Arc::new(FakeVm::default());
        let msi: Arc<dyn MsiTrigger> = Arc::new(MsiLine::new(vm.clone()));
        msi.send(0xFEE0_1000, 0x4041).unwrap();
        assert_eq!(vm.events(), [FakeVmEvent::Msi(0xFEE0_1000, 0x4041)]);
    }

    #[test]
    fn irqfd_lines_register_and_unregister_their_gsi() {
        let vm = Arc::new(FakeVm::default());
        let edge = IrqfdLine::edge(vm.clone(), 5).unwrap();
        assert!(edge.resample_fd().is_none());
        assert!(!edge.resample().unwrap());
        let level = IrqfdLine::level(vm.clone(), 17).unwrap();
        assert!(level.resample_fd().is_some());
        assert_eq!((edge.gsi(), level.gsi()), (5, 17));
        drop(edge);
        drop(level);
        assert_eq!(
            vm.events(),
            [
                FakeVmEvent::IrqfdRegistered(5),
                FakeVmEvent::IrqfdResampleRegistered(17),
                FakeVmEvent::IrqfdUnregistered(5),
                FakeVmEvent::IrqfdUnregistered(17),
            ]
        );
    }

    #[test]
    fn irqfd_line_writes_its_eventfd_and_resamples_only_while_held() {
        let vm = Arc::new(FakeVm::default());
        let line = IrqfdLine::level(vm, 18).unwrap();
        line.trigger().unwrap();
        assert_eq!(line.irqfd().read().unwrap(), 1);
        line.assert().unwrap();
        assert!(line.is_asserted());
        assert_eq!(line.irqfd().read().unwrap(), 1);
        let resample = line.resample_fd().unwrap();

        // No EOI pending: nothing to do.
        assert!(!line.resample().unwrap());
        // An EOI while the device holds the line: raised again, the EOI consumed.
        resample.write(1).unwrap();
        assert!(line.resample().unwrap());
        assert_eq!(line.irqfd().read().unwrap(), 1);
        assert!(!line.resample().unwrap());
        // An EOI after the device let go: the line stays low.
        line.deassert().unwrap();
        assert!(!line.is_asserted());
        resample.write(1).unwrap();
        assert!(!line.resample().unwrap());
        assert_eq!(
            line.irqfd().read().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn irqfd_errors_name_the_gsi() {
        use std::error::Error;
        let e: IrqfdError<io::Error> = IrqfdError::Register {
            gsi: 7,
            source: io::Error::other("busy"),
        };
        assert_eq!(e.to_string(), "registering the irqfd of GSI 7 failed");
        assert_eq!(e.source().map(ToString::to_string).as_deref(), Some("busy"));
        let e: IrqfdError<io::Error> = IrqfdError::EventFd {
            gsi: 9,
            source: io::Error::other("no fds"),
        };
        assert_eq!(e.to_string(), "creating an eventfd for GSI 9 failed");
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("no fds")
        );
    }

    /// Tests against the host's KVM: the lines' effect on the in-kernel IOAPIC's pin levels.
    mod kvm {
        use std::time::{Duration, Instant};

        use vmkit_memory::GuestLayout;

        use super::*;
        use crate::hypervisor::Hypervisor;
        use crate::kvm::kvm_bindings::{KVM_IRQCHIP_IOAPIC, kvm_irqchip};
        use crate::kvm::{KvmHypervisor, KvmVm};

        /// A VM with the in-kernel irqchip, or `None` when KVM tests are skipped explicitly.
        fn kvm_vm() -> Option<Arc<KvmVm>> {
            if std::env::var_os("VMKIT_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
                eprintln!("SKIPPED: VMKIT_SKIP_KVM_TESTS=1, and this test needs /dev/kvm");
                return None;
            }
            let kvm = KvmHypervisor::new().unwrap_or_else(|e| {
                panic!(
                    "this test needs a usable /dev/kvm, but: {e}. \
                     Set VMKIT_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly."
                )
            });
            let layout = GuestLayout::new(2 << 20).unwrap();
            let memory = layout.create_guest_memory().unwrap();
            Some(Arc::new(kvm.create_vm(&layout, &memory).unwrap()))
        }

        /// Whether the IOAPIC sees `pin` raised. Its redirection entries start masked, so a
        /// raised pin stays in IRR instead of being delivered.
        fn ioapic_pin_high(vm: &KvmVm, pin: u32) -> bool {
            let mut chip = kvm_irqchip {
                chip_id: KVM_IRQCHIP_IOAPIC,
                ..Default::default()
            };
            vm.fd().get_irqchip(&mut chip).unwrap();
            // SAFETY: KVM_GET_IRQCHIP for KVM_IRQCHIP_IOAPIC filled the union's `ioapic` member,
            // a plain-data struct every bit pattern of which is valid.
            let irr = unsafe { chip.chip.ioapic.irr };
            irr & (1 << pin) != 0
        }

        /// Irqfd injection runs in a kernel worker: waits (boundedly) for the pin to read `high`.
        fn wait_for_pin(vm: &KvmVm, pin: u32, high: bool) -> bool {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if ioapic_pin_high(vm, pin) == high {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        }

        #[test]
        fn kvm_irq_line_raises_and_lowers_the_ioapic_pin() {
            let Some(vm) = kvm_vm() else { return };
            let line = IrqLine::new(vm.clone(), 20);
            assert!(!ioapic_pin_high(&vm, 20));
            line.assert().unwrap();
            assert!(ioapic_pin_high(&vm, 20));
            line.deassert().unwrap();
            assert!(!ioapic_pin_high(&vm, 20));
            line.trigger().unwrap();
            assert!(!ioapic_pin_high(&vm, 20), "an edge ends low");
        }

        #[test]
        fn kvm_level_irqfd_holds_the_pin_until_unregistered() {
            let Some(vm) = kvm_vm() else { return };
            let line = IrqfdLine::level(vm.clone(), 21).unwrap();
            // KVM holds the registration: the same eventfd is refused a second time.
            let resample = line.resample_fd().unwrap();
            assert!(
                vm.register_irqfd_with_resample(line.irqfd(), resample, 21)
                    .is_err()
            );
            assert!(!ioapic_pin_high(&vm, 21));
            line.assert().unwrap();
            assert!(wait_for_pin(&vm, 21, true), "the irqfd raised the pin");
            // No EOI yet (no guest): the pin stays raised, nothing to resample.
            assert!(ioapic_pin_high(&vm, 21));
            assert!(!line.resample().unwrap());
            // Unregistering the last resampler of a GSI lowers it.
            drop(line);
            assert!(!ioapic_pin_high(&vm, 21));
        }

        #[test]
        fn kvm_edge_irqfd_is_registered_once_and_pulses() {
            let Some(vm) = kvm_vm() else { return };
            let line = IrqfdLine::edge(vm.clone(), 22).unwrap();
            // The same eventfd (through a duplicate descriptor) is refused while registered.
            let same = line.irqfd().try_clone().unwrap();
            assert!(vm.register_irqfd(&same, 22).is_err());
            line.trigger().unwrap();
            line.assert().unwrap();
            line.deassert().unwrap();
            // A pulse leaves the pin low once KVM has consumed the writes.
            assert!(wait_for_pin(&vm, 22, false));
            // Dropping the line unregistered it: the eventfd is free again.
            drop(line);
            vm.register_irqfd(&same, 22).unwrap();
            vm.unregister_irqfd(&same, 22).unwrap();
        }

        #[test]
        fn kvm_msi_line_accepts_messages_nobody_receives() {
            let Some(vm) = kvm_vm() else { return };
            // No vCPU, so no APIC matches: the guest's doing, not an error.
            let msi = MsiLine::new(vm.clone());
            msi.send(0xFEE0_0000, 0x41).unwrap();
            assert!(!vm.signal_msi(0xFEE0_0000, 0x41).unwrap());
        }
    }
}
