//! The DSDT's AML: the devices that cannot be enumerated (serial ports, i8042, RTC), the PCI
//! host bridge with its resources and interrupt routing, the motherboard resource holding the
//! ECAM window, and the `_S5` soft-off package.
//!
//! In ASL, for a platform with everything (values from the description):
//!
//! ```text
//! Device (\_SB.COM1) { Name (_HID, EisaId ("PNP0501")) Name (_UID, 0) Name (_DDN, "COM1")
//!     Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) Interrupt (...) {4} }) }
//! Device (\_SB.KBD_) { Name (_HID, EisaId ("PNP0303"))
//!     Name (_CRS, ResourceTemplate () { IO (0x60) IO (0x64) Interrupt (...) {1} }) }
//! Device (\_SB.RTC_) { Name (_HID, EisaId ("PNP0B00"))
//!     Name (_CRS, ResourceTemplate () { IO (Decode16, 0x70, 0x70, 1, 2) Interrupt (...) {8} }) }
//! Device (\_SB.PCI0) { Name (_HID, EisaId ("PNP0A08")) Name (_CID, EisaId ("PNP0A03"))
//!     Name (_SEG, 0) Name (_BBN, 0) Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { WordBusNumber (0-255) IO (0xCF8, 8)
//!         WordIO (windows) DWordMemory (32-bit window) QWordMemory (64-bit window) })
//!     Name (_PRT, Package () { Package () { 0x0001FFFF, 0, 0, 16 }, ... }) }
//! Device (\_SB.MBRD) { Name (_HID, EisaId ("PNP0C02")) Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { QWordMemory (ECAM window) }) }
//! Name (_S5, Package () { 5, 0, 0, 0 })
//! ```
//!
//! ISA interrupts are edge-triggered and active high, exclusive; the `_PRT` routes INTx pins
//! straight to GSIs (source 0), which the guest programs level-triggered and active low.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt, Name, Package,
    ResourceTemplate,
};

use super::platform::{
    AcpiPlatform, I8042, IsaDevice, PCI_CONFIG_PORTS, PciHostBridge, SERIAL_PORT_NAMES,
};

/// The AML of the DSDT's definition block for `platform` (validated).
pub(super) fn dsdt_aml(platform: &AcpiPlatform) -> Vec<u8> {
    let mut aml = Vec::new();
    for (uid, (port, name)) in platform
        .serial_ports
        .iter()
        .zip(SERIAL_PORT_NAMES)
        .enumerate()
    {
        serial_port(&mut aml, name, uid as u8, port);
    }
    if let Some(i8042) = &platform.i8042 {
        keyboard_controller(&mut aml, i8042);
    }
    if let Some(rtc) = &platform.rtc {
        real_time_clock(&mut aml, rtc);
    }
    if let Some(pci) = &platform.pci {
        pci_host_bridge(&mut aml, pci);
        motherboard_resources(&mut aml, pci);
    }
    let s5 = platform.power.s5_sleep_type;
    Name::new("_S5_".into(), &Package::new(vec![&s5, &0u8, &0u8, &0u8])).to_aml_bytes(&mut aml);
    aml
}

/// An edge-triggered, active-high, exclusive interrupt consumed by an ISA device.
fn isa_interrupt(gsi: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, gsi)
}

/// An I/O port descriptor for `count` ports at the fixed address `port`.
fn fixed_ports(port: u16, count: u8) -> IO {
    IO::new(port, port, 1, count)
}

fn serial_port(aml: &mut Vec<u8>, name: &'static str, uid: u8, port: &IsaDevice) {
    // Validated: 1 to 255 ports.
    let count = u8::try_from(port.ports.size).unwrap_or(u8::MAX);
    let io = fixed_ports(port.ports.start, count);
    let irq = isa_interrupt(port.irq);
    Device::new(
        format!("_SB_.{name}").as_str().into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &uid),
            &Name::new("_DDN".into(), &name),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq])),
        ],
    )
    .to_aml_bytes(aml);
}

fn keyboard_controller(aml: &mut Vec<u8>, i8042: &I8042) {
    let data = fixed_ports(i8042.data_port, 1);
    let command = fixed_ports(i8042.command_port, 1);
    let irq = isa_interrupt(i8042.irq);
    Device::new(
        "_SB_.KBD_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&data, &command, &irq]),
            ),
        ],
    )
    .to_aml_bytes(aml);
}

fn real_time_clock(aml: &mut Vec<u8>, rtc: &IsaDevice) {
    let count = u8::try_from(rtc.ports.size).unwrap_or(u8::MAX);
    let io = fixed_ports(rtc.ports.start, count);
    let irq = isa_interrupt(rtc.irq);
    Device::new(
        "_SB_.RTC_".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0B00")),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq])),
        ],
    )
    .to_aml_bytes(aml);
}

fn pci_host_bridge(aml: &mut Vec<u8>, pci: &PciHostBridge) {
    let buses =
        AddressSpace::new_bus_number(u16::from(*pci.buses.start()), u16::from(*pci.buses.end()));
    let config_ports = fixed_ports(PCI_CONFIG_PORTS.start, PCI_CONFIG_PORTS.size as u8);
    let io_windows: Vec<AddressSpace<u16>> = pci
        .io_windows
        .iter()
        // Validated: non-empty and not past 0xffff.
        .map(|w| AddressSpace::new_io(w.start, (w.end() - 1) as u16, None))
        .collect();
    // Validated: both windows are non-empty and do not wrap; the 32-bit one ends below 4 GiB.
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32_window.start.0 as u32,
        (pci.mmio32_window.start.0 + (pci.mmio32_window.size - 1)) as u32,
        None,
    );
    let mmio64 = pci.mmio64_window.map(|w| {
        AddressSpace::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            w.start.0,
            w.start.0 + (w.size - 1),
            None,
        )
    });

    let mut resources: Vec<&dyn Aml> = vec![&buses, &config_ports];
    resources.extend(io_windows.iter().map(|w| w as &dyn Aml));
    resources.push(&mmio32);
    resources.extend(mmio64.iter().map(|w| w as &dyn Aml));
    let crs = ResourceTemplate::new(resources);

    let segment = u32::from(pci.segment);
    let first_bus = u32::from(*pci.buses.start());
    let routes: Vec<(u32, u8, u32)> = pci
        .interrupt_routes
        .iter()
        .map(|r| ((u32::from(r.device) << 16) | 0xffff, r.pin as u8, r.gsi))
        .collect();
    let route_packages: Vec<Package> = routes
        .iter()
        .map(|(address, pin, gsi)| Package::new(vec![address, pin, &0u8, gsi]))
        .collect();
    let prt = Package::new(route_packages.iter().map(|p| p as &dyn Aml).collect());
    let prt_name = Name::new("_PRT".into(), &prt);

    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let seg = Name::new("_SEG".into(), &segment);
    let bbn = Name::new("_BBN".into(), &first_bus);
    let uid = Name::new("_UID".into(), &segment);
    let crs_name = Name::new("_CRS".into(), &crs);
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &seg, &bbn, &uid, &crs_name];
    if !routes.is_empty() {
        children.push(&prt_name);
    }
    Device::new("_SB_.PCI0".into(), children).to_aml_bytes(aml);
}

/// The ECAM window as a motherboard resource (`PNP0C02`): Linux uses MMCONFIG only where the
/// firmware reserves it.
fn motherboard_resources(aml: &mut Vec<u8>, pci: &PciHostBridge) {
    let (start, end) = pci.ecam_range();
    let ecam = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        start,
        end - 1,
        None,
    );
    Device::new(
        "_SB_.MBRD".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &0u8),
            &Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam])),
        ],
    )
    .to_aml_bytes(aml);
}
