//! What the ACPI builder refuses, and that it writes nothing then. The tables themselves are read
//! back and checked by an independent reader (and `iasl`) in `tests/acpi.rs`.

use vm_memory::GuestMemoryMmap;
use vmkit_memory::{AddressRange, PortRange};

use super::*;

fn platform() -> AcpiPlatform {
    AcpiPlatform {
        oem_table_id: "TEST".into(),
        vcpus: 2,
        local_apic_address: 0xfee0_0000,
        ioapic: IoApic {
            id: 0,
            address: 0xfec0_0000,
            gsi_base: 0,
        },
        interrupt_overrides: vec![InterruptOverride::new(0, 2)],
        power: PowerRegisters {
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 1,
            s5_sleep_type: 5,
        },
        serial_ports: vec![IsaDevice {
            ports: PortRange::new(0x3f8, 8),
            irq: 4,
        }],
        i8042: None,
        rtc: Some(IsaDevice {
            ports: PortRange::new(0x70, 2),
            irq: 8,
        }),
        pci: Some(PciHostBridge {
            segment: 0,
            buses: 0..=255,
            ecam_base: 0xc000_0000,
            io_windows: vec![PortRange::new(0x1000, 0xf000)],
            mmio32_window: AddressRange::new(GuestAddress(0xd000_0000), 0x1000_0000),
            mmio64_window: None,
            interrupt_routes: vec![],
        }),
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

/// The error `platform` gets, after checking that nothing was written.
fn refused(platform: &AcpiPlatform) -> AcpiError {
    let mem = memory();
    let err = write_acpi_tables(&mem, platform).unwrap_err();
    let mut window = vec![0u8; ACPI_TABLES_SIZE as usize];
    mem.read_slice(&mut window, GuestAddress(ACPI_TABLES_START))
        .unwrap();
    assert!(window.iter().all(|&b| b == 0), "written despite {err}");
    err
}

fn refused_pci(change: impl FnOnce(&mut PciHostBridge)) -> &'static str {
    let mut p = platform();
    change(p.pci.as_mut().unwrap());
    match refused(&p) {
        AcpiError::BadPciHostBridge(reason) => reason,
        other => panic!("{other}"),
    }
}

#[test]
fn a_valid_platform_is_written_at_the_start_of_the_window() {
    let tables = write_acpi_tables(&memory(), &platform()).unwrap();
    assert_eq!(tables.rsdp, GuestAddress(0xe_0000));
    assert_eq!(tables.used.start, ACPI_TABLES_START);
    assert!(tables.used.end <= ACPI_TABLES_END);
}

#[test]
fn the_oem_table_id_is_1_to_8_printable_characters() {
    for id in ["", "NINECHARS", "TAB\t", "ÄÖ"] {
        let p = AcpiPlatform {
            oem_table_id: id.into(),
            ..platform()
        };
        assert!(matches!(refused(&p), AcpiError::BadOemTableId(ref s) if s == id));
    }
    assert_eq!(oem_table_id_bytes("A B"), *b"A B     ");
    assert_eq!(oem_table_id_bytes("EIGHTCHR"), *b"EIGHTCHR");
}

fn oem_table_id_bytes(id: &str) -> [u8; 8] {
    AcpiPlatform {
        oem_table_id: id.into(),
        ..platform()
    }
    .validate()
    .unwrap()
}

#[test]
fn the_vcpu_count_must_fit_the_madt() {
    for vcpus in [0, 256, usize::MAX] {
        let p = AcpiPlatform {
            vcpus,
            ..platform()
        };
        assert!(matches!(
            refused(&p),
            AcpiError::BadVcpuCount { count, max: 255 } if count == vcpus
        ));
    }
}

#[test]
fn overrides_name_each_isa_irq_once() {
    for (overrides, irq) in [
        (vec![InterruptOverride::new(16, 16)], 16),
        (
            vec![InterruptOverride::new(0, 2), InterruptOverride::new(0, 0)],
            0,
        ),
    ] {
        let p = AcpiPlatform {
            interrupt_overrides: overrides,
            ..platform()
        };
        assert!(matches!(refused(&p), AcpiError::BadInterruptOverride(i) if i == irq));
    }
    let flags = InterruptOverride {
        isa_irq: 9,
        gsi: 9,
        polarity: Polarity::ActiveHigh,
        trigger: Trigger::Edge,
    }
    .flags();
    assert_eq!(flags, 0b0101);
}

#[test]
fn the_sleep_type_fits_three_bits() {
    let mut p = platform();
    p.power.s5_sleep_type = 8;
    assert!(matches!(refused(&p), AcpiError::BadSleepType(8)));
    p.power.s5_sleep_type = 7;
    write_acpi_tables(&memory(), &p).unwrap();
}

#[test]
fn serial_ports_are_com1_to_com4() {
    let port = |start| IsaDevice {
        ports: PortRange::new(start, 8),
        irq: 4,
    };
    let mut p = platform();
    p.serial_ports = vec![port(0x3f8), port(0x2f8), port(0x3e8), port(0x2e8)];
    let aml = dsdt::dsdt_aml(&p);
    for name in ["COM1", "COM2", "COM3", "COM4"] {
        assert!(aml.windows(4).any(|w| w == name.as_bytes()), "{name}");
    }
    write_acpi_tables(&memory(), &p).unwrap();
    p.serial_ports.push(port(0x2e0));
    assert!(matches!(
        refused(&p),
        AcpiError::TooManySerialPorts { count: 5, max: 4 }
    ));
}

#[test]
fn isa_port_ranges_fit_an_io_descriptor() {
    for ports in [
        PortRange::new(0x3f8, 0),
        PortRange::new(0x3f8, 256),
        PortRange::new(0xfffc, 8),
    ] {
        let mut p = platform();
        p.serial_ports[0].ports = ports;
        assert!(matches!(
            refused(&p),
            AcpiError::BadIsaPorts { device: "COM1", start, count }
                if start == ports.start && count == ports.size
        ));
        let mut p = platform();
        p.rtc = Some(IsaDevice { ports, irq: 8 });
        assert!(matches!(
            refused(&p),
            AcpiError::BadIsaPorts { device: "RTC", .. }
        ));
    }
    // The last port of the space is fine.
    let mut p = platform();
    p.serial_ports[0].ports = PortRange::new(0xffff, 1);
    write_acpi_tables(&memory(), &p).unwrap();
}

#[test]
fn the_pci_host_bridge_is_checked() {
    #[allow(clippy::reversed_empty_ranges)]
    let empty_buses = 5..=4;
    assert!(refused_pci(|pci| pci.buses = empty_buses).contains("bus range"));
    assert!(refused_pci(|pci| pci.ecam_base = 0xc008_0000).contains("ECAM"));
    assert!(refused_pci(|pci| pci.ecam_base = u64::MAX - 0xf_ffff).contains("ECAM"));
    for window in [PortRange::new(0x1000, 0), PortRange::new(0xc00, 0x100)] {
        assert!(refused_pci(|pci| pci.io_windows.push(window)).contains("I/O window"));
    }
    for window in [
        AddressRange::new(GuestAddress(0xd000_0000), 0),
        AddressRange::new(GuestAddress(0xffff_f000), 0x2000),
    ] {
        assert!(refused_pci(|pci| pci.mmio32_window = window).contains("32-bit"));
    }
    for window in [
        AddressRange::new(GuestAddress(1 << 40), 0),
        AddressRange::new(GuestAddress(u64::MAX), 2),
    ] {
        assert!(refused_pci(|pci| pci.mmio64_window = Some(window)).contains("64-bit"));
    }
    let route = |device, pin| PciInterruptRoute {
        device,
        pin,
        gsi: 16,
    };
    assert!(
        refused_pci(|pci| pci.interrupt_routes = vec![route(32, PciInterruptPin::IntA)])
            .contains("interrupt route")
    );
    let twice = vec![
        route(3, PciInterruptPin::IntB),
        route(3, PciInterruptPin::IntB),
    ];
    assert!(refused_pci(|pci| pci.interrupt_routes = twice).contains("interrupt route"));

    // Windows that touch the configuration ports and 4 GiB are fine.
    let mut p = platform();
    let pci = p.pci.as_mut().unwrap();
    pci.io_windows = vec![PortRange::new(0, 0xcf8), PortRange::new(0xd00, 0xf300)];
    pci.mmio32_window = AddressRange::new(GuestAddress(0xffff_f000), 0x1000);
    pci.interrupt_routes = vec![
        route(31, PciInterruptPin::IntD),
        route(3, PciInterruptPin::IntA),
        route(3, PciInterruptPin::IntC),
    ];
    write_acpi_tables(&memory(), &p).unwrap();
}

#[test]
fn tables_that_do_not_fit_their_window_are_refused() {
    let window = ACPI_TABLES_START..ACPI_TABLES_START + 0x100;
    match build(&platform(), window).unwrap_err() {
        AcpiError::TablesDoNotFit {
            size,
            available: 0x100,
        } => assert!(size > 0x100),
        other => panic!("{other}"),
    }
    // Exactly the size the tables take is enough.
    let placed = build(&platform(), ACPI_TABLES_START..ACPI_TABLES_END).unwrap();
    build(&platform(), ACPI_TABLES_START..placed.end).unwrap();
}

#[test]
fn the_window_must_be_backed_by_guest_memory() {
    // Memory from 1 MiB only, and memory ending inside the window.
    for ranges in [
        [(GuestAddress(0x10_0000), 0x10_0000)],
        [(GuestAddress(0), 0xe_8000)],
    ] {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        assert!(matches!(
            write_acpi_tables(&mem, &platform()).unwrap_err(),
            AcpiError::WindowOutOfMemory {
                start: 0xe_0000,
                end: 0xf_0000
            }
        ));
    }
}

#[test]
fn marking_fails_when_the_memory_map_is_full() {
    let mut layout = GuestLayout::new(64 << 20).unwrap();
    let mut addr = 0x20_0000;
    // Alternate single NVS pages with RAM until the map holds no more entries.
    while layout
        .set_memory_kind(GuestAddress(addr), 0x1000, MemoryKind::Nvs)
        .is_ok()
    {
        addr += 0x2000;
    }
    assert!(matches!(
        mark_acpi_memory(&mut layout),
        Err(AcpiError::MemoryMap(_))
    ));
}

#[test]
fn header_bytes_are_set_with_a_fresh_checksum() {
    let mut table = vec![7u8; 48];
    set_header_bytes(&mut table, 40, &[1, 2, 3, 4]);
    assert_eq!(&table[40..44], &[1, 2, 3, 4]);
    assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
}
