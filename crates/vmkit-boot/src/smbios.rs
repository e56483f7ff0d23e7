//! SMBIOS 3.0 tables: a 64-bit `_SM3_` entry point and the structures that name the machine, its
//! BIOS, its processor and its memory.
//!
//! # What the tables say
//!
//! The VMM fills an [`SmbiosDescription`]; [`write_smbios_tables`] writes these structures, each
//! a formatted area and its string set, handles `type << 8`:
//!
//! | type | structure | content |
//! |---|---|---|
//! | 0 | BIOS information | vendor, version, release date; characteristics "not supported" (bit 3), extension byte 2 bit 4 "virtual machine" |
//! | 1 | System information | manufacturer, product name, version, serial number, UUID, wake-up type "power switch" |
//! | 3 | System enclosure | manufacturer, type "other", states "safe" |
//! | 4 | Processor | one central processor, "CPU 0", with as many cores and threads as vCPUs, enabled |
//! | 16 | Physical memory array | system memory of the RAM size |
//! | 17 | Memory device | one device of the RAM size (in MiB, rounded up), "DIMM 0" |
//! | 32 | System boot information | no errors |
//! | 127 | End of table | |
//!
//! Linux prints the system manufacturer and product name, and the BIOS version and date, at boot
//! (`DMI: vmkit reference-vmm, BIOS 0.1.0 01/01/2025`).
//!
//! # Where they go
//!
//! The entry point (24 bytes) goes at [`SMBIOS_START`] `0xf0000`, the structure table right
//! after it at `0xf0020`, both in the upper half of the legacy BIOS area, which the memory map
//! reports reserved. Without EFI, Linux (`dmi_scan_machine`) searches `0xf0000..0x100000` on
//! 16-byte boundaries for `_SM3_` before `_SM_`, so it finds this entry point on its first
//! probe. It checks the anchor, a length of 24 to 32, the checksum over that length, and reads
//! the version, the table's maximum size and its 64-bit address; then it walks the structures
//! up to the type-127 terminator.
//!
//! # Checks
//!
//! Before anything is written: no string holds a NUL byte (an empty string is "no string"), the
//! vCPU count is 1 to 255 (as in the MADT), the RAM size is not zero, the tables fit
//! `[SMBIOS_START, SMBIOS_END)`, and guest memory backs that window. Each problem is a
//! [`SmbiosError`].

use std::ops::Range;

use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::acpi::MAX_VCPUS;

/// Why the SMBIOS tables could not be built or written ([`write_smbios_tables`]). The description
/// is checked before anything is written.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum SmbiosError {
    /// {count} vCPUs were described; between 1 and {max} are accepted
    BadVcpuCount {
        /// Number of vCPUs described.
        count: usize,
        /// The most the tables describe.
        max: usize,
    },
    /// the SMBIOS string {field} contains a NUL byte
    StringHasNul {
        /// The field of the SMBIOS description.
        field: &'static str,
    },
    /// the SMBIOS description gives no RAM (a RAM size of 0)
    NoRam,
    /// the SMBIOS tables take {size:#x} bytes; their window holds {available:#x}
    TablesDoNotFit {
        /// Bytes the tables take, with alignment.
        size: u64,
        /// Bytes in the window.
        available: u64,
    },
    /// the SMBIOS table window {start:#x}..{end:#x} is not backed by guest memory
    WindowOutOfMemory {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// writing guest memory failed
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Guest-physical address of the SMBIOS 3.0 entry point.
pub const SMBIOS_START: u64 = 0xf_0000;
/// One past the last byte of the SMBIOS window: the end of the legacy BIOS area.
pub const SMBIOS_END: u64 = 0x10_0000;
/// Guest-physical address of the structure table, right after the entry point.
pub const SMBIOS_TABLE_START: u64 = SMBIOS_START + 0x20;

/// Size of the 64-bit entry point.
const ENTRY_POINT_SIZE: u8 = 24;
/// The SMBIOS version the tables follow: 3.0.0.
const VERSION: (u8, u8, u8) = (3, 0, 0);
/// Handle meaning "no such structure" (no error information).
const NO_ERROR_INFORMATION: u16 = 0xfffe;
/// Handle meaning "not provided" (a cache).
const NOT_PROVIDED: u16 = 0xffff;
/// Handle of the physical memory array, which the memory device names.
const MEMORY_ARRAY_HANDLE: u16 = 16 << 8;

const _: () = assert!(SMBIOS_START >= crate::acpi::ACPI_TABLES_END);
const _: () = assert!(SMBIOS_TABLE_START >= SMBIOS_START + ENTRY_POINT_SIZE as u64);
const _: () = assert!(SMBIOS_END <= vmkit_memory::layout::HIGH_MEMORY_START);

/// What the SMBIOS tables say about the machine. Empty strings are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmbiosDescription {
    /// BIOS vendor (type 0), for example `"vmkit"`.
    pub bios_vendor: String,
    /// BIOS version (type 0), for example `"0.1.0"`.
    pub bios_version: String,
    /// BIOS release date (type 0), `mm/dd/yyyy`.
    pub bios_release_date: String,
    /// System manufacturer (types 1, 3, 4 and 17), for example `"vmkit"`.
    pub manufacturer: String,
    /// System product name (type 1), for example `"reference-vmm"`.
    pub product_name: String,
    /// System version (type 1).
    pub version: String,
    /// System serial number (type 1).
    pub serial_number: String,
    /// System UUID (type 1), in the byte order of its text form (`00112233-4455-...` is
    /// `[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, ...]`); written with its first three fields
    /// little-endian, as SMBIOS 2.6 and later specify. All zeros means "not set".
    pub uuid: [u8; 16],
    /// Number of vCPUs, 1 to 255: the cores and threads of the one processor.
    pub vcpus: usize,
    /// Guest RAM in bytes (not zero): the physical memory array and its memory device.
    pub ram_size: u64,
}

/// SMBIOS tables written to guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmbiosTables {
    /// Guest-physical address of the 64-bit entry point ([`SMBIOS_START`]).
    pub entry_point: GuestAddress,
    /// The structure table, `[start, end)`.
    pub table: Range<u64>,
}

/// Checks `description` and writes the SMBIOS entry point and structure table into
/// `[SMBIOS_START, SMBIOS_END)` of `guest_mem`. See the [module documentation](crate::smbios);
/// nothing is written unless every check passes.
pub fn write_smbios_tables<M: GuestMemoryBackend>(
    guest_mem: &M,
    description: &SmbiosDescription,
) -> Result<SmbiosTables, SmbiosError> {
    let result = write(guest_mem, description, SMBIOS_START..SMBIOS_END);
    match &result {
        Ok(tables) => debug!(
            "SMBIOS entry point at {:#x}, table at {:#x}..{:#x}",
            tables.entry_point.0, tables.table.start, tables.table.end
        ),
        Err(error) => debug!("SMBIOS tables not written: {error}"),
    }
    result
}

fn write<M: GuestMemoryBackend>(
    guest_mem: &M,
    description: &SmbiosDescription,
    window: Range<u64>,
) -> Result<SmbiosTables, SmbiosError> {
    let table = structure_table(description)?;
    let table_start = window.start + (SMBIOS_TABLE_START - SMBIOS_START);
    let table_end = table_start + table.len() as u64;
    if table_end > window.end {
        return Err(SmbiosError::TablesDoNotFit {
            size: table_end - window.start,
            available: window.end - window.start,
        });
    }
    let backed = usize::try_from(window.end - window.start)
        .is_ok_and(|len| guest_mem.check_range(GuestAddress(window.start), len));
    if !backed {
        return Err(SmbiosError::WindowOutOfMemory {
            start: window.start,
            end: window.end,
        });
    }
    let entry_point = entry_point(table_start, table.len() as u32);
    guest_mem
        .write_slice(&entry_point, GuestAddress(window.start))
        .map_err(SmbiosError::GuestMemory)?;
    guest_mem
        .write_slice(&table, GuestAddress(table_start))
        .map_err(SmbiosError::GuestMemory)?;
    Ok(SmbiosTables {
        entry_point: GuestAddress(window.start),
        table: table_start..table_end,
    })
}

/// The 64-bit (`_SM3_`) entry point of a structure table of `size` bytes at `table`.
fn entry_point(table: u64, size: u32) -> [u8; ENTRY_POINT_SIZE as usize] {
    let mut entry = [0u8; ENTRY_POINT_SIZE as usize];
    entry[..5].copy_from_slice(b"_SM3_");
    entry[6] = ENTRY_POINT_SIZE;
    (entry[7], entry[8], entry[9]) = VERSION;
    entry[10] = 1; // entry point revision: SMBIOS 3.0
    entry[12..16].copy_from_slice(&size.to_le_bytes());
    entry[16..24].copy_from_slice(&table.to_le_bytes());
    entry[5] = checksum(&entry);
    entry
}

/// The byte that makes `bytes` sum to zero (with that byte itself zero).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte))
        .wrapping_neg()
}

/// Checks `description` and builds the structure table.
fn structure_table(d: &SmbiosDescription) -> Result<Vec<u8>, SmbiosError> {
    for (field, value) in [
        ("bios_vendor", &d.bios_vendor),
        ("bios_version", &d.bios_version),
        ("bios_release_date", &d.bios_release_date),
        ("manufacturer", &d.manufacturer),
        ("product_name", &d.product_name),
        ("version", &d.version),
        ("serial_number", &d.serial_number),
    ] {
        if value.contains('\0') {
            return Err(SmbiosError::StringHasNul { field });
        }
    }
    if d.vcpus == 0 || d.vcpus > MAX_VCPUS {
        return Err(SmbiosError::BadVcpuCount {
            count: d.vcpus,
            max: MAX_VCPUS,
        });
    }
    if d.ram_size == 0 {
        return Err(SmbiosError::NoRam);
    }

    let mut table = Vec::new();
    bios_information(&mut table, d);
    system_information(&mut table, d);
    enclosure(&mut table, d);
    processor(&mut table, d);
    memory(&mut table, d);
    // Type 32, system boot information: six reserved bytes, then "no errors detected".
    Structure::new(32).bytes(&[0; 6]).byte(0).finish(&mut table);
    Structure::new(127).finish(&mut table);
    Ok(table)
}

fn bios_information(table: &mut Vec<u8>, d: &SmbiosDescription) {
    /// Characteristics bit 3: BIOS characteristics are not supported.
    const CHARACTERISTICS_NOT_SUPPORTED: u64 = 1 << 3;
    /// Characteristics extension byte 2, bit 4: the system is a virtual machine.
    const EXTENSION_2_VIRTUAL_MACHINE: u8 = 1 << 4;
    let mut s = Structure::new(0);
    s.string(&d.bios_vendor).string(&d.bios_version);
    s.word(0); // BIOS starting address segment: none, no BIOS image
    s.string(&d.bios_release_date);
    s.byte(0); // ROM size: 64 KiB
    s.qword(CHARACTERISTICS_NOT_SUPPORTED);
    s.byte(0).byte(EXTENSION_2_VIRTUAL_MACHINE);
    // BIOS major and minor release, embedded controller release: not supported.
    s.bytes(&[0xff; 4]).finish(table);
}

fn system_information(table: &mut Vec<u8>, d: &SmbiosDescription) {
    /// Wake-up type: power switch.
    const WAKE_UP_POWER_SWITCH: u8 = 6;
    let mut s = Structure::new(1);
    s.string(&d.manufacturer)
        .string(&d.product_name)
        .string(&d.version)
        .string(&d.serial_number);
    s.bytes(&smbios_uuid(d.uuid)).byte(WAKE_UP_POWER_SWITCH);
    s.string("").string("").finish(table); // SKU number, family
}

/// A UUID in SMBIOS order: time-low, time-mid and time-high little-endian.
fn smbios_uuid(mut uuid: [u8; 16]) -> [u8; 16] {
    uuid[0..4].reverse();
    uuid[4..6].reverse();
    uuid[6..8].reverse();
    uuid
}

fn enclosure(table: &mut Vec<u8>, d: &SmbiosDescription) {
    /// Enclosure type: other.
    const TYPE_OTHER: u8 = 1;
    /// Boot-up, power supply and thermal state: safe.
    const STATE_SAFE: u8 = 3;
    /// Security status: unknown.
    const SECURITY_UNKNOWN: u8 = 2;
    let mut s = Structure::new(3);
    s.string(&d.manufacturer).byte(TYPE_OTHER);
    s.string("").string("").string(""); // version, serial number, asset tag
    s.bytes(&[STATE_SAFE, STATE_SAFE, STATE_SAFE, SECURITY_UNKNOWN]);
    s.dword(0); // OEM-defined
    s.bytes(&[0, 0, 0, 0]); // height, power cords, contained elements and their size
    s.string("").finish(table); // SKU number
}

fn processor(table: &mut Vec<u8>, d: &SmbiosDescription) {
    /// Processor type: central processor.
    const CENTRAL_PROCESSOR: u8 = 3;
    /// Processor family (and family 2): other.
    const FAMILY_OTHER: u8 = 1;
    /// Status: socket populated (bit 6), CPU enabled (1).
    const POPULATED_ENABLED: u8 = 0x41;
    /// Processor upgrade: other.
    const UPGRADE_OTHER: u8 = 1;
    /// Characteristics: 64-bit capable (bit 2), multi-core (bit 3).
    const CAPABLE_64_BIT: u16 = 1 << 2;
    const MULTI_CORE: u16 = 1 << 3;
    // Checked: 1 to 255 vCPUs.
    let cores = d.vcpus as u8;
    let mut characteristics = CAPABLE_64_BIT;
    if cores > 1 {
        characteristics |= MULTI_CORE;
    }
    let mut s = Structure::new(4);
    s.string("CPU 0").byte(CENTRAL_PROCESSOR).byte(FAMILY_OTHER);
    s.string(&d.manufacturer).qword(0); // processor id: not given
    s.string("").byte(0); // version, voltage
    s.word(0).word(0).word(0); // external clock, maximum and current speed: unknown
    s.byte(POPULATED_ENABLED).byte(UPGRADE_OTHER);
    s.word(NOT_PROVIDED).word(NOT_PROVIDED).word(NOT_PROVIDED); // L1, L2, L3 caches
    s.string("").string("").string(""); // serial number, asset tag, part number
    s.bytes(&[cores, cores, cores]); // cores, enabled cores, threads
    s.word(characteristics).word(u16::from(FAMILY_OTHER));
    let cores = u16::from(cores);
    s.word(cores).word(cores).word(cores).finish(table);
}

fn memory(table: &mut Vec<u8>, d: &SmbiosDescription) {
    /// Physical memory array location: other; use: system memory; error correction: none.
    const LOCATION_OTHER: u8 = 1;
    const USE_SYSTEM_MEMORY: u8 = 3;
    const ECC_NONE: u8 = 3;
    /// Maximum capacity meaning "see the extended maximum capacity".
    const USE_EXTENDED_CAPACITY: u32 = 0x8000_0000;
    /// Memory device size meaning "see the extended size".
    const USE_EXTENDED_SIZE: u16 = 0x7fff;
    /// Memory device: form factor DIMM, type RAM, type detail "other".
    const FORM_DIMM: u8 = 9;
    const TYPE_RAM: u8 = 7;
    const DETAIL_OTHER: u16 = 1 << 1;

    let kib = d.ram_size.div_ceil(1 << 10);
    let (capacity, extended_capacity) = match u32::try_from(kib) {
        Ok(kib) if kib < USE_EXTENDED_CAPACITY => (kib, 0),
        _ => (USE_EXTENDED_CAPACITY, d.ram_size),
    };
    let mut s = Structure::new(16);
    s.bytes(&[LOCATION_OTHER, USE_SYSTEM_MEMORY, ECC_NONE]);
    s.dword(capacity).word(NO_ERROR_INFORMATION).word(1);
    s.qword(extended_capacity).finish(table);

    let mib = d.ram_size.div_ceil(1 << 20);
    let (size, extended_size) = match u16::try_from(mib) {
        Ok(mib) if mib < USE_EXTENDED_SIZE => (mib, 0),
        // The extended size holds 31 bits of MiB (2 PiB), more than x86-64 addresses.
        _ => (USE_EXTENDED_SIZE, mib.min(0x7fff_ffff) as u32),
    };
    let mut s = Structure::new(17);
    s.word(MEMORY_ARRAY_HANDLE).word(NO_ERROR_INFORMATION);
    s.word(NOT_PROVIDED).word(NOT_PROVIDED); // total and data width: unknown
    s.word(size).byte(FORM_DIMM).byte(0); // size, form factor, device set: none
    s.string("DIMM 0").string(""); // device and bank locator
    s.byte(TYPE_RAM).word(DETAIL_OTHER).word(0); // type, detail, speed: unknown
    s.string(&d.manufacturer).string("").string("").string("");
    s.byte(0).dword(extended_size); // attributes: unknown rank
    s.word(0).word(0).word(0).word(0).finish(table); // configured speed, voltages: unknown
}

/// One SMBIOS structure being built: its formatted area and its strings.
struct Structure<'s> {
    formatted: Vec<u8>,
    strings: Vec<&'s str>,
}

impl<'s> Structure<'s> {
    /// A structure of type `kind` with handle `kind << 8`; the length is filled in by
    /// [`finish`](Self::finish).
    fn new(kind: u8) -> Self {
        let handle = u16::from(kind) << 8;
        let mut formatted = vec![kind, 0];
        formatted.extend_from_slice(&handle.to_le_bytes());
        Structure {
            formatted,
            strings: Vec::new(),
        }
    }

    fn byte(&mut self, value: u8) -> &mut Self {
        self.formatted.push(value);
        self
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.formatted.extend_from_slice(value);
        self
    }

    fn word(&mut self, value: u16) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    fn dword(&mut self, value: u32) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    fn qword(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// A string field: the number of `value` in the string set, or 0 (none) if it is empty.
    fn string(&mut self, value: &'s str) -> &mut Self {
        if value.is_empty() {
            return self.byte(0);
        }
        self.strings.push(value);
        // At most a dozen string fields per structure.
        let number = self.strings.len() as u8;
        self.byte(number)
    }

    /// Appends the structure to `table`: the formatted area with its length, each string with
    /// its NUL, and the NUL that ends the set (two NULs for an empty set).
    fn finish(&mut self, table: &mut Vec<u8>) {
        // Every formatted area here is well under 256 bytes.
        self.formatted[1] = self.formatted.len() as u8;
        table.extend_from_slice(&self.formatted);
        for string in &self.strings {
            table.extend_from_slice(string.as_bytes());
            table.push(0);
        }
        if self.strings.is_empty() {
            table.push(0);
        }
        table.push(0);
    }
}

#[cfg(test)]
mod tests;
