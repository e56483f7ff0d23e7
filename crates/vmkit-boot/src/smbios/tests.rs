//! The SMBIOS tables read back by a parser of their own, and what the builder refuses.

use vm_memory::GuestMemoryMmap;

use super::*;

const MIB: u64 = 1 << 20;

fn description() -> SmbiosDescription {
    SmbiosDescription {
        bios_vendor: "vmkit".into(),
        bios_version: "0.1.0".into(),
        bios_release_date: "01/01/2025".into(),
        manufacturer: "vmkit".into(),
        product_name: "reference-vmm".into(),
        version: "1.0".into(),
        serial_number: String::new(),
        uuid: [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ],
        vcpus: 2,
        ram_size: 64 * MIB,
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
}

/// One structure as read back: type, handle, formatted area (header included), strings.
#[derive(Debug)]
struct Parsed {
    kind: u8,
    handle: u16,
    formatted: Vec<u8>,
    strings: Vec<String>,
}

impl Parsed {
    /// The string a field at `offset` names, or `None` for string number 0.
    fn string(&self, offset: usize) -> Option<&str> {
        match self.formatted[offset] {
            0 => None,
            n => Some(&self.strings[usize::from(n) - 1]),
        }
    }

    fn word(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.formatted[offset], self.formatted[offset + 1]])
    }

    fn dword(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.formatted[offset..offset + 4].try_into().unwrap())
    }

    fn qword(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.formatted[offset..offset + 8].try_into().unwrap())
    }
}

/// Splits a structure table into structures, up to and including the type-127 terminator,
/// which must end the table.
fn parse(table: &[u8]) -> Vec<Parsed> {
    let mut structures = Vec::new();
    let mut at = 0;
    loop {
        let (kind, len) = (table[at], usize::from(table[at + 1]));
        assert!(len >= 4, "structure at {at:#x} has length {len}");
        let formatted = table[at..at + len].to_vec();
        let mut strings = Vec::new();
        let mut next = at + len;
        // The string set ends with a double NUL; an empty set is two NULs.
        if table[next] == 0 {
            assert_eq!(table[next + 1], 0, "empty string set");
            next += 2;
        } else {
            while table[next] != 0 {
                let end = next + table[next..].iter().position(|&b| b == 0).unwrap();
                strings.push(String::from_utf8(table[next..end].to_vec()).unwrap());
                next = end + 1;
            }
            next += 1;
        }
        let handle = u16::from_le_bytes([table[at + 2], table[at + 3]]);
        structures.push(Parsed {
            kind,
            handle,
            formatted,
            strings,
        });
        at = next;
        if kind == 127 {
            assert_eq!(at, table.len(), "bytes after the end-of-table structure");
            return structures;
        }
    }
}

/// Writes the tables of `d`; returns the entry point and the parsed structures.
fn write_and_read(d: &SmbiosDescription) -> ([u8; 24], Vec<Parsed>) {
    let mem = memory();
    let tables = write_smbios_tables(&mem, d).unwrap();
    assert_eq!(tables.entry_point, GuestAddress(0xf_0000));
    let mut entry = [0u8; 24];
    mem.read_slice(&mut entry, tables.entry_point).unwrap();
    let len = u32::from_le_bytes(entry[12..16].try_into().unwrap());
    let addr = u64::from_le_bytes(entry[16..24].try_into().unwrap());
    assert_eq!(tables.table, addr..addr + u64::from(len));
    let mut table = vec![0u8; len as usize];
    mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
    (entry, parse(&table))
}

fn find(structures: &[Parsed], kind: u8) -> &Parsed {
    structures.iter().find(|s| s.kind == kind).unwrap()
}

#[test]
fn the_entry_point_passes_linux_checks() {
    let (entry, structures) = write_and_read(&description());
    // dmi_smbios3_present: anchor, length 24..=32, checksum over the length, version.
    assert_eq!(&entry[..5], b"_SM3_");
    assert!((24..=32).contains(&entry[6]));
    let sum = entry[..usize::from(entry[6])]
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b));
    assert_eq!(sum, 0);
    assert_eq!((entry[7], entry[8], entry[9]), (3, 0, 0));
    assert_eq!(
        (entry[10], entry[11]),
        (1, 0),
        "entry point revision, reserved"
    );
    let addr = u64::from_le_bytes(entry[16..24].try_into().unwrap());
    assert_eq!(addr, 0xf_0020);

    let kinds: Vec<u8> = structures.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, [0, 1, 3, 4, 16, 17, 32, 127]);
    for s in &structures {
        assert_eq!(s.handle, u16::from(s.kind) << 8);
        let expected_len = match s.kind {
            0 => 0x18,
            1 => 0x1b,
            3 => 0x16,
            4 => 0x30,
            16 => 0x17,
            17 => 0x28,
            32 => 0x0b,
            _ => 4,
        };
        assert_eq!(s.formatted.len(), expected_len, "type {}", s.kind);
    }
}

#[test]
fn linux_prints_the_vmm_in_its_dmi_line() {
    let (_, structures) = write_and_read(&description());
    let (bios, system) = (find(&structures, 0), find(&structures, 1));
    // dmi_format_ids: "<sys vendor> <product>, BIOS <bios version> <bios date>".
    let line = format!(
        "{} {}, BIOS {} {}",
        system.string(4).unwrap(),
        system.string(5).unwrap(),
        bios.string(5).unwrap(),
        bios.string(8).unwrap()
    );
    assert_eq!(line, "vmkit reference-vmm, BIOS 0.1.0 01/01/2025");
}

#[test]
fn bios_and_system_information() {
    let (_, structures) = write_and_read(&description());
    let bios = find(&structures, 0);
    assert_eq!(bios.string(4), Some("vmkit"));
    assert_eq!(bios.word(6), 0, "no BIOS segment");
    assert_eq!(bios.qword(0x0a), 1 << 3, "characteristics not supported");
    assert_eq!((bios.formatted[0x12], bios.formatted[0x13]), (0, 1 << 4));
    assert_eq!(&bios.formatted[0x14..0x18], &[0xff; 4]);

    let system = find(&structures, 1);
    assert_eq!(system.string(6), Some("1.0"));
    assert_eq!(system.string(7), None, "an empty serial number is left out");
    assert_eq!(system.strings.len(), 3);
    assert_eq!(
        &system.formatted[8..24],
        &[
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
    assert_eq!(system.formatted[0x18], 6, "wake-up: power switch");
    assert_eq!((system.string(0x19), system.string(0x1a)), (None, None));

    let enclosure = find(&structures, 3);
    assert_eq!(enclosure.string(4), Some("vmkit"));
    assert_eq!(enclosure.formatted[5], 1, "type other");
    assert_eq!(&enclosure.formatted[9..13], &[3, 3, 3, 2]);

    let boot = find(&structures, 32);
    assert_eq!(&boot.formatted[4..], &[0; 7]);
    assert!(boot.strings.is_empty());
}

#[test]
fn one_processor_with_a_core_per_vcpu() {
    for vcpus in [1, 2, 255] {
        let (_, structures) = write_and_read(&SmbiosDescription {
            vcpus,
            ..description()
        });
        let cpu = find(&structures, 4);
        let cores = vcpus as u8;
        assert_eq!(cpu.string(4), Some("CPU 0"));
        assert_eq!((cpu.formatted[5], cpu.formatted[0x18]), (3, 0x41));
        assert_eq!(&cpu.formatted[0x23..0x26], &[cores, cores, cores]);
        let multi_core = if vcpus > 1 { 1 << 3 } else { 0 };
        assert_eq!(cpu.word(0x26), (1 << 2) | multi_core);
        for offset in [0x2a, 0x2c, 0x2e] {
            assert_eq!(cpu.word(offset), u16::from(cores));
        }
        for offset in [0x1a, 0x1c, 0x1e] {
            assert_eq!(cpu.word(offset), 0xffff, "no cache information");
        }
    }
}

#[test]
fn memory_array_and_device_cover_ram() {
    // (RAM, array capacity in KiB, extended capacity, device size, extended size in MiB).
    for (ram, capacity, extended_capacity, size, extended_size) in [
        (64 * MIB, 64 << 10, 0, 64, 0),
        (64 * MIB + 4096, (64 << 10) + 4, 0, 65, 0),
        (64 << 30, 64 << 20, 0, 0x7fff, 64 << 10),
        (4 << 40, 0x8000_0000, 4 << 40, 0x7fff, 4 << 20),
    ] {
        let (_, structures) = write_and_read(&SmbiosDescription {
            ram_size: ram,
            ..description()
        });
        let array = find(&structures, 16);
        assert_eq!(&array.formatted[4..7], &[1, 3, 3]);
        assert_eq!(array.dword(7), capacity);
        assert_eq!((array.word(0x0b), array.word(0x0d)), (0xfffe, 1));
        assert_eq!(array.qword(0x0f), extended_capacity);

        let device = find(&structures, 17);
        assert_eq!(device.word(4), array.handle);
        assert_eq!(device.word(0x0c), size);
        assert_eq!(device.dword(0x1c), extended_size);
        assert_eq!(device.string(0x10), Some("DIMM 0"));
        assert_eq!((device.formatted[0x0e], device.formatted[0x12]), (9, 7));
        assert_eq!(device.string(0x17), Some("vmkit"));
    }
}

/// Picks one string field of a description.
type StringField = fn(&mut SmbiosDescription) -> &mut String;

#[test]
fn strings_with_a_nul_are_refused() {
    let fields: [(&str, StringField); 7] = [
        ("bios_vendor", |d| &mut d.bios_vendor),
        ("bios_version", |d| &mut d.bios_version),
        ("bios_release_date", |d| &mut d.bios_release_date),
        ("manufacturer", |d| &mut d.manufacturer),
        ("product_name", |d| &mut d.product_name),
        ("version", |d| &mut d.version),
        ("serial_number", |d| &mut d.serial_number),
    ];
    for (name, field) in fields {
        let mut d = description();
        *field(&mut d) = "a\0b".into();
        assert!(matches!(
            refused(&d),
            SmbiosError::StringHasNul { field } if field == name
        ));
    }
}

/// The error `d` gets, after checking that nothing was written.
fn refused(d: &SmbiosDescription) -> SmbiosError {
    let mem = memory();
    let err = write_smbios_tables(&mem, d).unwrap_err();
    let mut window = vec![0u8; (SMBIOS_END - SMBIOS_START) as usize];
    mem.read_slice(&mut window, GuestAddress(SMBIOS_START))
        .unwrap();
    assert!(window.iter().all(|&b| b == 0), "written despite {err}");
    err
}

#[test]
fn vcpus_and_ram_are_checked() {
    for vcpus in [0, 256] {
        let d = SmbiosDescription {
            vcpus,
            ..description()
        };
        assert!(matches!(
            refused(&d),
            SmbiosError::BadVcpuCount { count, max: 255 } if count == vcpus
        ));
    }
    let d = SmbiosDescription {
        ram_size: 0,
        ..description()
    };
    assert!(matches!(refused(&d), SmbiosError::NoRam));
}

#[test]
fn tables_must_fit_a_backed_window() {
    let d = SmbiosDescription {
        product_name: "x".repeat(0x1_0000),
        ..description()
    };
    assert!(matches!(
        refused(&d),
        SmbiosError::TablesDoNotFit {
            available: 0x1_0000,
            ..
        }
    ));
    // Memory that ends inside the window.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xf_8000)]).unwrap();
    assert!(matches!(
        write_smbios_tables(&mem, &description()).unwrap_err(),
        SmbiosError::WindowOutOfMemory {
            start: 0xf_0000,
            end: 0x10_0000
        }
    ));
}

#[test]
fn a_description_of_empty_strings_has_no_string_sets() {
    let d = SmbiosDescription {
        vcpus: 1,
        ram_size: MIB,
        ..SmbiosDescription::default()
    };
    let (_, structures) = write_and_read(&d);
    let bios = find(&structures, 0);
    assert!(bios.strings.is_empty());
    assert_eq!(bios.string(4), None);
    // Only the fixed names are left.
    let names: Vec<&str> = structures
        .iter()
        .flat_map(|s| s.strings.iter().map(String::as_str))
        .collect();
    assert_eq!(names, ["CPU 0", "DIMM 0"]);
}
