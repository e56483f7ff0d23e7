//! The ACPI tables read back from guest memory by a reader of their own (not the builder's
//! code): RSDP → XSDT → each table, checked field by field; then the DSDT and the static tables
//! disassembled with ACPICA's `iasl` and the DSDT recompiled.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_boot::acpi::{
    ACPI_TABLES_END, ACPI_TABLES_SIZE, ACPI_TABLES_START, AcpiPlatform, I8042, InterruptOverride,
    IoApic, IsaDevice, PciHostBridge, PciInterruptPin, PciInterruptRoute, Polarity, PowerRegisters,
    Trigger, mark_acpi_memory, write_acpi_tables,
};
use vmkit_memory::layout::{IOAPIC_START, LAPIC_START, MMIO32_SIZE, MMIO32_START, PCI_ECAM_START};
use vmkit_memory::{AddressRange, GuestLayout, MemoryKind, MemoryMapEntry, PortRange};

/// A platform like the reference VMM's: COM1, i8042, RTC, PCI with two windows and a route.
fn platform(vcpus: usize) -> AcpiPlatform {
    AcpiPlatform {
        oem_table_id: "VMKITREF".into(),
        vcpus,
        local_apic_address: LAPIC_START as u32,
        ioapic: IoApic {
            id: 0,
            address: IOAPIC_START as u32,
            gsi_base: 0,
        },
        interrupt_overrides: vec![
            InterruptOverride::new(0, 2),
            InterruptOverride {
                isa_irq: 9,
                gsi: 9,
                polarity: Polarity::ActiveLow,
                trigger: Trigger::Level,
            },
        ],
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
        i8042: Some(I8042 {
            data_port: 0x60,
            command_port: 0x64,
            irq: 1,
        }),
        rtc: Some(IsaDevice {
            ports: PortRange::new(0x70, 2),
            irq: 8,
        }),
        pci: Some(PciHostBridge {
            segment: 0,
            buses: 0..=255,
            ecam_base: PCI_ECAM_START,
            io_windows: vec![PortRange::new(0, 0xcf8), PortRange::new(0xd00, 0xf300)],
            mmio32_window: AddressRange::new(GuestAddress(MMIO32_START), MMIO32_SIZE),
            mmio64_window: Some(AddressRange::new(
                GuestAddress(0x40_0000_0000),
                0x40_0000_0000,
            )),
            interrupt_routes: vec![PciInterruptRoute {
                device: 1,
                pin: PciInterruptPin::IntA,
                gsi: 16,
            }],
        }),
    }
}

/// A platform without optional devices: no serial port, i8042, RTC or PCI.
fn bare_platform() -> AcpiPlatform {
    AcpiPlatform {
        serial_ports: vec![],
        i8042: None,
        rtc: None,
        pci: None,
        interrupt_overrides: vec![],
        ..platform(1)
    }
}

fn memory() -> GuestMemoryMmap {
    GuestLayout::new(64 << 20)
        .unwrap()
        .create_guest_memory()
        .unwrap()
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes(bytes[offset..offset + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |s, b| s.wrapping_add(*b))
}

/// The tables found from the RSDP at `ACPI_TABLES_START`, by signature, each with its address.
/// Checks the RSDP, and each table's header: length, checksum, OEM id and table id.
fn read_tables(mem: &GuestMemoryMmap) -> BTreeMap<String, (u64, Vec<u8>)> {
    let mut rsdp = [0u8; 36];
    mem.read_slice(&mut rsdp, GuestAddress(ACPI_TABLES_START))
        .unwrap();
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    assert_eq!(&rsdp[9..15], b"VMKIT ");
    assert_eq!(rsdp[15], 2, "RSDP revision");
    assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");

    let read = |addr: u64| -> Vec<u8> {
        assert!((ACPI_TABLES_START..ACPI_TABLES_END).contains(&addr));
        assert_eq!(addr % 8, 0, "tables are aligned");
        let mut header = [0u8; 36];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        let len = u32_at(&header, 4) as usize;
        assert!(len >= 36);
        assert!(addr + len as u64 <= ACPI_TABLES_END);
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        let signature = String::from_utf8_lossy(&table[..4]).into_owned();
        assert_eq!(sum(&table), 0, "{signature} checksum");
        assert_eq!(&table[10..16], b"VMKIT ", "{signature} OEM id");
        assert_eq!(&table[16..24], b"VMKITREF", "{signature} OEM table id");
        table
    };
    let xsdt_addr = u64_at(&rsdp, 24);
    let xsdt = read(xsdt_addr);
    assert_eq!(&xsdt[..4], b"XSDT");
    assert_eq!(xsdt[8], 1, "XSDT revision");
    assert_eq!((xsdt.len() - 36) % 8, 0);
    let mut tables = BTreeMap::new();
    for entry in xsdt[36..].chunks_exact(8) {
        let addr = u64::from_le_bytes(entry.try_into().unwrap());
        let table = read(addr);
        let signature = String::from_utf8_lossy(&table[..4]).into_owned();
        assert!(
            tables.insert(signature, (addr, table)).is_none(),
            "listed twice"
        );
    }
    let dsdt_addr = u64_at(&tables["FACP"].1, 140);
    let dsdt = read(dsdt_addr);
    assert_eq!(&dsdt[..4], b"DSDT");
    tables.insert("DSDT".into(), (dsdt_addr, dsdt));
    tables.insert("XSDT".into(), (xsdt_addr, xsdt));
    tables
}

/// The 12-byte GAS of a one-byte system I/O register at `port`.
fn io_gas(port: u64) -> Vec<u8> {
    let mut gas = vec![1, 8, 0, 1];
    gas.extend_from_slice(&port.to_le_bytes());
    gas
}

#[test]
fn rsdp_leads_to_every_table_in_the_window() {
    let mem = memory();
    let tables = write_acpi_tables(&mem, &platform(2)).unwrap();
    assert_eq!(tables.rsdp, GuestAddress(ACPI_TABLES_START));
    let found = read_tables(&mem);
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["APIC", "DSDT", "FACP", "MCFG", "XSDT"]);
    let end = found
        .values()
        .map(|(addr, bytes)| addr + bytes.len() as u64)
        .max()
        .unwrap();
    assert_eq!(tables.used, ACPI_TABLES_START..end);
    // No two tables overlap.
    let mut spans: Vec<(u64, u64)> = found
        .values()
        .map(|(addr, bytes)| (*addr, addr + bytes.len() as u64))
        .chain([(ACPI_TABLES_START, ACPI_TABLES_START + 36)])
        .collect();
    spans.sort_unstable();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:x?}");
}

#[test]
fn fadt_describes_a_hardware_reduced_pc() {
    let mem = memory();
    write_acpi_tables(&mem, &platform(2)).unwrap();
    let found = read_tables(&mem);
    let fadt = &found["FACP"].1;
    assert_eq!(fadt.len(), 276);
    assert_eq!((fadt[8], fadt[131]), (6, 5), "revision 6.5");
    let flags = u32_at(fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(
        flags & 0b11_0000,
        0b11_0000,
        "no fixed power and sleep buttons"
    );
    // IAPC_BOOT_ARCH: legacy devices, 8042, no VGA; CMOS RTC present.
    assert_eq!(u16_at(fadt, 109), 0b0111);
    assert_eq!(&fadt[116..128], io_gas(0x602), "RESET_REG");
    assert_eq!(fadt[128], 1, "RESET_VALUE");
    assert_eq!(&fadt[244..256], io_gas(0x600), "SLEEP_CONTROL_REG");
    assert_eq!(&fadt[256..268], io_gas(0x601), "SLEEP_STATUS_REG");
    assert_eq!(u32_at(fadt, 40), 0, "no 32-bit DSDT pointer");
    assert_eq!(u64_at(fadt, 140), found["DSDT"].0, "X_DSDT");
    assert_eq!(u32_at(fadt, 36), 0, "no FACS");
    assert_eq!(&fadt[268..276], b"VMKITREF", "hypervisor vendor identity");

    // Without legacy devices: no 8042, no RTC, and no legacy devices at all.
    let mem = memory();
    write_acpi_tables(&mem, &bare_platform()).unwrap();
    let found = read_tables(&mem);
    assert_eq!(u16_at(&found["FACP"].1, 109), 0b10_0100);
    assert!(!found.contains_key("MCFG"));
}

/// The MADT's interrupt controller structures, as `(type, bytes)`.
fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut offset = 44;
    while offset < madt.len() {
        let (kind, len) = (madt[offset], madt[offset + 1] as usize);
        assert!(len >= 2 && offset + len <= madt.len());
        entries.push((kind, madt[offset..offset + len].to_vec()));
        offset += len;
    }
    entries
}

#[test]
fn madt_has_one_enabled_local_apic_per_vcpu() {
    for vcpus in [1, 2, 255] {
        let mem = memory();
        write_acpi_tables(&mem, &platform(vcpus)).unwrap();
        let found = read_tables(&mem);
        let madt = &found["APIC"].1;
        assert_eq!(madt[8], 5, "revision");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
        let entries = madt_entries(madt);
        let lapics: Vec<&Vec<u8>> = entries
            .iter()
            .filter(|(kind, _)| *kind == 0)
            .map(|(_, e)| e)
            .collect();
        assert_eq!(lapics.len(), vcpus);
        for (index, lapic) in lapics.iter().enumerate() {
            assert_eq!(lapic.len(), 8);
            assert_eq!(
                (lapic[2], lapic[3]),
                (index as u8, index as u8),
                "UID, APIC id"
            );
            assert_eq!(u32_at(lapic, 4), 1, "enabled");
        }
        let rest: Vec<&(u8, Vec<u8>)> = entries.iter().filter(|(kind, _)| *kind != 0).collect();
        assert_eq!(rest.len(), 4);
        let (kind, ioapic) = rest[0];
        assert_eq!((*kind, ioapic.len(), ioapic[2]), (1, 12, 0));
        assert_eq!((u32_at(ioapic, 4), u32_at(ioapic, 8)), (0xfec0_0000, 0));
        // IRQ 0 → GSI 2, bus-conforming; IRQ 9 → GSI 9, active low, level.
        for ((kind, entry), (source, gsi, flags)) in rest[1..3].iter().zip([(0, 2, 0), (9, 9, 0xf)])
        {
            assert_eq!((*kind, entry.len(), entry[2], entry[3]), (2, 10, 0, source));
            assert_eq!((u32_at(entry, 4), u16_at(entry, 8)), (gsi, flags));
        }
        // LINT1 NMI for all processors, edge-triggered and active high.
        let (kind, nmi) = rest[3];
        assert_eq!(
            (*kind, nmi.len(), nmi[2], u16_at(nmi, 3), nmi[5]),
            (4, 6, 0xff, 5, 1)
        );
    }
}

#[test]
fn mcfg_gives_the_ecam_window() {
    let mem = memory();
    let mut described = platform(1);
    let pci = described.pci.as_mut().unwrap();
    pci.segment = 3;
    pci.buses = 2..=17;
    write_acpi_tables(&mem, &described).unwrap();
    let mcfg = &read_tables(&mem)["MCFG"].1;
    assert_eq!(mcfg.len(), 36 + 8 + 16);
    assert_eq!(u64_at(mcfg, 36), 0, "reserved");
    assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
    assert_eq!((u16_at(mcfg, 52), mcfg[54], mcfg[55]), (3, 2, 17));
}

#[test]
fn the_acpi_window_is_reported_as_acpi_data() {
    let mut layout = GuestLayout::new(64 << 20).unwrap();
    mark_acpi_memory(&mut layout).unwrap();
    let map = layout.memory_map();
    let acpi = MemoryMapEntry {
        addr: ACPI_TABLES_START,
        size: ACPI_TABLES_SIZE,
        kind: MemoryKind::Acpi,
    };
    assert!(map.contains(&acpi), "{map:x?}");
    // The rest of the legacy area stays reserved.
    assert!(
        map.iter()
            .any(|e| e.addr == ACPI_TABLES_END && e.kind == MemoryKind::Reserved)
    );
}

/// A fresh directory for one test's `iasl` files.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vmkit-boot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `iasl` with `args` in `dir`; returns its status and output.
fn iasl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run iasl ({error}): install ACPICA's compiler, Debian package \
                 acpica-tools (apt-get install acpica-tools)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Disassembles every table with `iasl -d` and recompiles the DSDT; returns the DSDT's ASL.
fn disassemble_and_recompile(name: &str, described: &AcpiPlatform) -> String {
    let mem = memory();
    write_acpi_tables(&mem, described).unwrap();
    let dir = scratch_dir(name);
    for (signature, (_, bytes)) in read_tables(&mem) {
        let file = format!("{}.dat", signature.to_lowercase());
        std::fs::write(dir.join(&file), bytes).unwrap();
        let (ok, output) = iasl(&dir, &["-d", &file]);
        assert!(ok, "iasl -d {file}:\n{output}");
        let lower = output.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("warning"),
            "iasl -d {file}:\n{output}"
        );
    }
    let (ok, output) = iasl(&dir, &["dsdt.dsl"]);
    assert!(ok, "iasl dsdt.dsl:\n{output}");
    assert!(
        output.contains(" 0 Errors, 0 Warnings"),
        "iasl dsdt.dsl:\n{output}"
    );
    let asl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    asl
}

#[test]
fn iasl_disassembles_the_tables_and_recompiles_the_dsdt() {
    let asl = disassemble_and_recompile("full", &platform(4));
    for expected in [
        "Device (_SB.COM1)",
        "EisaId (\"PNP0501\")",
        "0x03F8,             // Range Minimum",
        "Device (_SB.KBD)",
        "EisaId (\"PNP0303\")",
        "Device (_SB.RTC)",
        "EisaId (\"PNP0B00\")",
        "Device (_SB.PCI0)",
        "EisaId (\"PNP0A08\")",
        "EisaId (\"PNP0A03\")",
        "Name (_SEG, Zero)",
        "Name (_BBN, Zero)",
        "WordBusNumber (ResourceProducer",
        "0x0CF8,             // Range Minimum",
        "DWordMemory (ResourceProducer",
        "QWordMemory (ResourceProducer",
        "Name (_PRT, Package (0x01)",
        "0x0001FFFF",
        "EisaId (\"PNP0C02\")",
        "0x00000000C0000000, // Range Minimum",
        "0x00000000CFFFFFFF, // Range Maximum",
        "Name (_S5, Package (0x04)",
    ] {
        assert!(asl.contains(expected), "{expected:?} missing from:\n{asl}");
    }
}

#[test]
fn iasl_accepts_a_platform_without_optional_devices() {
    let asl = disassemble_and_recompile("bare", &bare_platform());
    assert!(asl.contains("Name (_S5, Package (0x04)"), "{asl}");
    for absent in ["PNP0501", "PNP0303", "PNP0B00", "PNP0A08", "PNP0C02"] {
        assert!(!asl.contains(absent), "{absent} in:\n{asl}");
    }
}
