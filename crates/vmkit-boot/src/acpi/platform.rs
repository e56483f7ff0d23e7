//! The platform description the ACPI tables are built from, and its validation.
//!
//! vmkit-boot knows no devices: the VMM fills an [`AcpiPlatform`] with the ports, interrupts,
//! register blocks and windows of the machine it composed, and the tables say exactly that.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use vmkit_memory::{AddressRange, PortRange};

use crate::acpi::AcpiError;

/// The most vCPUs the tables describe: vmkit-memory's platform limit
/// ([`vmkit_memory::layout::MAX_VCPUS`]), as a count. xAPIC ids are 8 bits and `0xff` is the
/// broadcast id (and, as an ACPI processor UID, means "all processors" in the LAPIC NMI
/// structure).
pub const MAX_VCPUS: usize = vmkit_memory::layout::MAX_VCPUS as usize;
/// The most serial ports described: `COM1` to `COM4`.
pub const MAX_SERIAL_PORTS: usize = 4;
/// The DSDT names of the serial ports, in order.
pub(super) const SERIAL_PORT_NAMES: [&str; MAX_SERIAL_PORTS] = ["COM1", "COM2", "COM3", "COM4"];
/// Number of ISA IRQs (`0..=15`), the sources an interrupt source override may name.
const ISA_IRQS: u8 = 16;
/// PCI configuration mechanism #1: the address and data ports `0xcf8..=0xcff` the host bridge
/// consumes. No I/O window may include them.
pub const PCI_CONFIG_PORTS: PortRange = PortRange::new(0xcf8, 8);
/// Devices on a PCI bus.
const PCI_DEVICES_PER_BUS: u8 = 32;
/// Bytes of ECAM configuration space per bus: 32 devices × 8 functions × 4 KiB.
pub(super) const ECAM_BUS_SIZE: u64 = 1 << 20;

/// What the ACPI tables describe: the machine the VMM composed. Every field is checked by
/// [`write_acpi_tables`](super::write_acpi_tables) before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiPlatform {
    /// The OEM table id of every table header, naming the VMM: 1 to 8 printable ASCII
    /// characters, padded with spaces (for example `"VMKITREF"`). It is also the FADT's
    /// hypervisor vendor identity.
    pub oem_table_id: String,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`]. vCPU `i` has APIC id and ACPI processor UID `i`.
    pub vcpus: usize,
    /// Guest-physical address of the local APICs (`0xfee0_0000` on every PC).
    pub local_apic_address: u32,
    /// The IOAPIC.
    pub ioapic: IoApic,
    /// The ISA interrupts that do not reach the IOAPIC pin of their own number, or not with ISA
    /// polarity and trigger. A PC has at least IRQ 0 → GSI 2 (the timer); the list must match the
    /// interrupt routing the VMM set up.
    pub interrupt_overrides: Vec<InterruptOverride>,
    /// The registers of the hardware-reduced ACPI power management.
    pub power: PowerRegisters,
    /// The 16550 serial ports, `COM1` first; at most [`MAX_SERIAL_PORTS`].
    pub serial_ports: Vec<IsaDevice>,
    /// The i8042 keyboard controller, if the machine has one. Without it the FADT says no 8042
    /// is present and Linux does not probe for one.
    pub i8042: Option<I8042>,
    /// The CMOS real-time clock, if the machine has one (its index and data ports, IRQ 8).
    pub rtc: Option<IsaDevice>,
    /// The PCI host bridge, if the machine has PCI: the DSDT describes it and the MCFG gives its
    /// ECAM window.
    pub pci: Option<PciHostBridge>,
}

/// An I/O APIC, as the MADT gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Its APIC id.
    pub id: u8,
    /// Guest-physical address of its register window (`0xfec0_0000` on every PC).
    pub address: u32,
    /// The GSI of its first input pin.
    pub gsi_base: u32,
}

/// Polarity of an interrupt in an interrupt source override (MPS INTI flags, bits 0-1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Polarity {
    /// As the bus specifies (ISA: active high).
    #[default]
    Conforming = 0,
    /// Active high.
    ActiveHigh = 1,
    /// Active low.
    ActiveLow = 3,
}

/// Trigger mode of an interrupt in an interrupt source override (MPS INTI flags, bits 2-3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trigger {
    /// As the bus specifies (ISA: edge).
    #[default]
    Conforming = 0,
    /// Edge-triggered.
    Edge = 1,
    /// Level-triggered.
    Level = 3,
}

/// An ISA interrupt source override: ISA IRQ `isa_irq` arrives at GSI `gsi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptOverride {
    /// The ISA IRQ, 0 to 15; each at most once in a platform.
    pub isa_irq: u8,
    /// The GSI it is delivered to.
    pub gsi: u32,
    /// Its polarity.
    pub polarity: Polarity,
    /// Its trigger mode.
    pub trigger: Trigger,
}

impl InterruptOverride {
    /// ISA IRQ `isa_irq` delivered to `gsi` with ISA polarity and trigger (active high, edge).
    pub fn new(isa_irq: u8, gsi: u32) -> Self {
        InterruptOverride {
            isa_irq,
            gsi,
            polarity: Polarity::Conforming,
            trigger: Trigger::Conforming,
        }
    }

    /// The MPS INTI flags of the override.
    pub(super) fn flags(&self) -> u16 {
        self.polarity as u16 | (self.trigger as u16) << 2
    }
}

/// The power-management registers of a hardware-reduced ACPI platform, each one byte in
/// system I/O space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerRegisters {
    /// The FADT's `SLEEP_CONTROL_REG`: the guest writes `SLP_TYP << 2 | SLP_EN` here.
    pub sleep_control_port: u16,
    /// The FADT's `SLEEP_STATUS_REG`: the guest reads `WAK_STS` (bit 7) here.
    pub sleep_status_port: u16,
    /// The FADT's `RESET_REG`.
    pub reset_port: u16,
    /// The FADT's `RESET_VALUE`: writing it to the reset register resets the machine.
    pub reset_value: u8,
    /// The soft-off sleep type, 0 to 7, as the DSDT's `_S5` package gives it.
    pub s5_sleep_type: u8,
}

/// A legacy ISA device: a block of I/O ports and an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsaDevice {
    /// Its I/O ports: 1 to 255 of them, not past port `0xffff`.
    pub ports: PortRange,
    /// The GSI it raises (an ISA device's own IRQ number unless an override moves it).
    pub irq: u32,
}

/// An i8042 keyboard controller: two single ports and the keyboard interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct I8042 {
    /// The data port (`0x60`).
    pub data_port: u16,
    /// The command and status port (`0x64`).
    pub command_port: u16,
    /// The keyboard GSI (IRQ 1).
    pub irq: u32,
}

/// A PCI Express host bridge with its ECAM window and the windows it forwards to its buses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciHostBridge {
    /// The PCI segment group.
    pub segment: u16,
    /// The bus numbers below the bridge; the first is its `_BBN`.
    pub buses: RangeInclusive<u8>,
    /// Guest-physical address of bus 0's configuration space in the ECAM window (1 MiB
    /// aligned; the MCFG's base address). The window covers the buses in [`buses`](Self::buses).
    pub ecam_base: u64,
    /// The port-I/O windows forwarded to PCI, each non-empty and clear of the configuration
    /// ports [`PCI_CONFIG_PORTS`] (which the bridge consumes itself).
    pub io_windows: Vec<PortRange>,
    /// The 32-bit memory window, non-empty and below 4 GiB.
    pub mmio32_window: AddressRange,
    /// The 64-bit memory window, if any; non-empty and not wrapping.
    pub mmio64_window: Option<AddressRange>,
    /// Where the INTx pins of the devices on the first bus go (the `_PRT`). Empty for a
    /// machine whose PCI devices use MSI/MSI-X only; then the DSDT has no `_PRT`.
    pub interrupt_routes: Vec<PciInterruptRoute>,
}

impl PciHostBridge {
    /// The ECAM range of the bridge's buses, `[start, end)`. Valid after validation.
    pub(super) fn ecam_range(&self) -> (u64, u64) {
        let start = self.ecam_base + u64::from(*self.buses.start()) * ECAM_BUS_SIZE;
        let end = self.ecam_base + (u64::from(*self.buses.end()) + 1) * ECAM_BUS_SIZE;
        (start, end)
    }
}

/// An INTx pin of a PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PciInterruptPin {
    /// INTA#.
    IntA = 0,
    /// INTB#.
    IntB = 1,
    /// INTC#.
    IntC = 2,
    /// INTD#.
    IntD = 3,
}

/// One `_PRT` entry: pin `pin` of device `device` on the bridge's first bus raises GSI `gsi`
/// (level-triggered, active low, as PCI interrupts are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciInterruptRoute {
    /// The device number, 0 to 31; each (device, pin) at most once.
    pub device: u8,
    /// The pin.
    pub pin: PciInterruptPin,
    /// The GSI.
    pub gsi: u32,
}

impl AcpiPlatform {
    /// Checks the description; returns the OEM table id as the 8 bytes of a table header.
    pub(super) fn validate(&self) -> Result<[u8; 8], AcpiError> {
        let table_id = oem_table_id(&self.oem_table_id)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(AcpiError::BadVcpuCount {
                count: self.vcpus,
                max: MAX_VCPUS,
            });
        }
        let mut sources = HashSet::new();
        for o in &self.interrupt_overrides {
            if o.isa_irq >= ISA_IRQS || !sources.insert(o.isa_irq) {
                return Err(AcpiError::BadInterruptOverride(o.isa_irq));
            }
        }
        if self.power.s5_sleep_type > 7 {
            return Err(AcpiError::BadSleepType(self.power.s5_sleep_type));
        }
        if self.serial_ports.len() > MAX_SERIAL_PORTS {
            return Err(AcpiError::TooManySerialPorts {
                count: self.serial_ports.len(),
                max: MAX_SERIAL_PORTS,
            });
        }
        for (port, name) in self.serial_ports.iter().zip(SERIAL_PORT_NAMES) {
            check_isa_ports(name, port.ports)?;
        }
        if let Some(rtc) = &self.rtc {
            check_isa_ports("RTC", rtc.ports)?;
        }
        if let Some(pci) = &self.pci {
            pci.validate().map_err(AcpiError::BadPciHostBridge)?;
        }
        Ok(table_id)
    }
}

impl PciHostBridge {
    fn validate(&self) -> Result<(), &'static str> {
        let (first_bus, last_bus) = (*self.buses.start(), *self.buses.end());
        if first_bus > last_bus {
            return Err("the bus range is empty");
        }
        if !self.ecam_base.is_multiple_of(ECAM_BUS_SIZE)
            || self
                .ecam_base
                .checked_add((u64::from(last_bus) + 1) * ECAM_BUS_SIZE)
                .is_none()
        {
            return Err("the ECAM base is not 1 MiB aligned or the window runs past 2^64");
        }
        for window in &self.io_windows {
            if window.size == 0 || window.overlaps(&PCI_CONFIG_PORTS) {
                return Err("an I/O window is empty or includes the configuration ports");
            }
        }
        match self.mmio32_window.last() {
            Some(last) if last.0 <= u64::from(u32::MAX) => {}
            _ => return Err("the 32-bit memory window is empty or not below 4 GiB"),
        }
        if self.mmio64_window.is_some_and(|w| w.last().is_none()) {
            return Err("the 64-bit memory window is empty or wraps");
        }
        let mut pins = HashSet::new();
        for route in &self.interrupt_routes {
            if route.device >= PCI_DEVICES_PER_BUS || !pins.insert((route.device, route.pin)) {
                return Err("an interrupt route names a device above 31 or a pin twice");
            }
        }
        Ok(())
    }
}

/// The OEM table id as 8 bytes, padded with spaces.
fn oem_table_id(id: &str) -> Result<[u8; 8], AcpiError> {
    let mut bytes = [b' '; 8];
    if id.is_empty()
        || id.len() > bytes.len()
        || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(AcpiError::BadOemTableId(id.to_owned()));
    }
    bytes[..id.len()].copy_from_slice(id.as_bytes());
    Ok(bytes)
}

/// Checks that an ISA device's ports fit one I/O port descriptor: 1 to 255 ports, none past
/// `0xffff`.
fn check_isa_ports(device: &'static str, ports: PortRange) -> Result<(), AcpiError> {
    if ports.size == 0 || ports.size > u16::from(u8::MAX) || ports.end() > 0x1_0000 {
        return Err(AcpiError::BadIsaPorts {
            device,
            start: ports.start,
            count: ports.size,
        });
    }
    Ok(())
}
