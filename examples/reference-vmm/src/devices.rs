//! The VM's devices on its buses, built by one function for a run and for a replay of the run's
//! recording, so that a replay answers with the same devices at the same addresses: COM1 (when
//! there is one), the debug-exit port, the i8042, the CMOS RTC, ACPI power management,
//! pc-testdev (`--testdev`), the PCI root and one virtio-blk device per disk, registered in
//! that order.
//!
//! What the devices reach outside their registers — interrupt lines, the MSI sender, the wall
//! clock, and where virtio-blk records its guest-memory accesses — comes from a [`Wiring`]: the
//! backend's (recorded or not) for a run, the recording's for a replay. The disks' backends and
//! COM1 come built, since a run and a replay make them differently.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use vmkit_devices::DiskBackend;
use vmkit_devices::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN, AcpiPmDevice};
use vmkit_devices::cmos::{CMOS_PORT, CMOS_PORT_LEN};
use vmkit_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmkit_devices::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KEYBOARD_IRQ, I8042Device};
use vmkit_devices::pci::PciRoot;
use vmkit_devices::serial::{COM1_PORT, SERIAL_PORT_LEN, SerialDevice};
use vmkit_devices::testdev::{
    IOMEM_BASE, IOMEM_SIZE, IRQ_LINE_COUNT, IRQ_LINE_PORTS, PcTestDev, REGISTER_PORTS,
};
use vmkit_exits::record::RecordWriter;
use vmkit_exits::{IoBus, MmioBus, MsiTrigger, PioDevice};
use vmkit_memory::vm_memory::GuestMemoryMmap;
use vmkit_memory::{Allocators, GuestLayout};

use crate::disks::{self, Disks};
use crate::recording::Line;

/// COM1 on its interrupt line.
pub type Serial = SerialDevice<Line, Box<dyn Write + Send>>;

/// What the devices reach outside their registers.
pub trait Wiring {
    /// Interrupt line `gsi`.
    fn line(&self, gsi: u32) -> Line;
    /// The PCI devices' MSI sender.
    fn msi(&self) -> Arc<dyn MsiTrigger>;
    /// The CMOS RTC of a guest with `low_ram` bytes of RAM below 4 GiB and `high_ram` above.
    fn cmos(&self, low_ram: u64, high_ram: u64) -> Arc<dyn PioDevice>;
    /// Where virtio-blk records its guest-memory accesses, if anywhere.
    fn block_recorder(&self) -> Option<Arc<RecordWriter>>;
}

/// One disk: how messages name it, and its backend.
pub struct Disk {
    /// The image's path (`--disk path=PATH`), or how a replay names it.
    pub path: String,
    /// The backend, its calls recorded or replayed as the wiring is.
    pub backend: Box<dyn DiskBackend>,
}

/// What to build besides the devices every VM has.
pub struct Plan {
    /// COM1, unless `--serial off`.
    pub com1: Option<Arc<Serial>>,
    /// Whether to add pc-testdev.
    pub testdev: bool,
    /// The disks, `vda` first.
    pub disks: Vec<Disk>,
}

/// The devices on their buses.
pub struct Devices {
    /// The port-I/O bus.
    pub io_bus: Arc<IoBus>,
    /// The MMIO bus.
    pub mmio_bus: Arc<MmioBus>,
    /// The disks on the PCI bus.
    pub disks: Disks,
}

/// Builds the devices of `plan` on new buses, wired by `wiring`, for a guest laid out as
/// `layout` in `memory`; the PCI BARs and INTx lines come from `allocators`.
pub fn build(
    wiring: &dyn Wiring,
    plan: Plan,
    layout: &GuestLayout,
    memory: &GuestMemoryMmap,
    allocators: &mut Allocators,
) -> Result<Devices> {
    let io_bus = Arc::new(IoBus::new());
    let mmio_bus = Arc::new(MmioBus::new());
    if let Some(serial) = plan.com1 {
        register(&io_bus, COM1_PORT, SERIAL_PORT_LEN, "com1", serial)?;
    }
    register(
        &io_bus,
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_PORT_LEN,
        "debug-exit",
        Arc::new(DebugExit::new()),
    )?;
    let i8042 = Arc::new(I8042Device::new(wiring.line(I8042_KEYBOARD_IRQ)));
    register(&io_bus, I8042_DATA_PORT, 1, "i8042-data", i8042.clone())?;
    register(&io_bus, I8042_COMMAND_PORT, 1, "i8042-cmd", i8042)?;
    let cmos = wiring.cmos(layout.ram_below_4g(), layout.ram_above_4g());
    register(&io_bus, CMOS_PORT, CMOS_PORT_LEN, "cmos", cmos)?;
    register(
        &io_bus,
        ACPI_PM_PORT,
        ACPI_PM_PORT_LEN,
        "acpi-pm",
        Arc::new(AcpiPmDevice::new()),
    )?;
    if plan.testdev {
        register_testdev(&io_bus, &mmio_bus, wiring)?;
    }

    // PCI: the root complex (0xCF8..0xD00 and ECAM) with its host bridge, and the disks.
    let pci_root = PciRoot::new(&io_bus, &mmio_bus).context("cannot set up the PCI root")?;
    let disks = disks::attach(&pci_root, plan.disks, memory, wiring, allocators)?;
    Ok(Devices {
        io_bus,
        mmio_bus,
        disks,
    })
}

fn register(
    bus: &IoBus,
    base: u16,
    len: u16,
    name: &'static str,
    device: Arc<dyn PioDevice>,
) -> Result<()> {
    bus.register_named(base..base + len, name, device)
        .with_context(|| format!("cannot register {name} at port {base:#x}"))
}

/// QEMU's `pc-testdev`: its register and interrupt-line ports, its interrupt lines wired to the
/// GSIs of the same number, and its scratch memory.
fn register_testdev(io_bus: &IoBus, mmio_bus: &MmioBus, wiring: &dyn Wiring) -> Result<()> {
    let mut testdev = PcTestDev::new();
    for line in 0..IRQ_LINE_COUNT {
        testdev = testdev.with_irq_line(line, wiring.line(u32::from(line)))?;
    }
    let testdev = Arc::new(testdev);
    for (ports, name) in [(REGISTER_PORTS, "testdev"), (IRQ_LINE_PORTS, "testdev-irq")] {
        let len = ports.end - ports.start;
        register(io_bus, ports.start, len, name, testdev.clone())?;
    }
    mmio_bus
        .register_named(
            IOMEM_BASE..IOMEM_BASE + IOMEM_SIZE,
            "testdev-iomem",
            testdev,
        )
        .with_context(|| format!("cannot register testdev-iomem at {IOMEM_BASE:#x}"))
}
