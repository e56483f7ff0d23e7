//! ACPI tables built from a platform description: RSDP, XSDT, FADT, DSDT, MADT and MCFG, with
//! rust-vmm's [`acpi_tables`].
//!
//! # What the tables say
//!
//! vmkit-boot knows no devices; the VMM describes its machine in an [`AcpiPlatform`] and
//! [`write_acpi_tables`] writes:
//!
//! - **RSDP** (revision 2, both checksums) pointing at the **XSDT**, which lists the FADT, the
//!   MADT and (with PCI) the MCFG.
//! - **FADT** (revision 6.5) of a *hardware-reduced* platform (`HW_REDUCED_ACPI`): no PM1 blocks,
//!   no SCI, no FACS; `SLEEP_CONTROL_REG`, `SLEEP_STATUS_REG` and `RESET_REG` are 8-bit GAS in
//!   system I/O space at the ports of [`PowerRegisters`], with `RESET_VALUE` and `RESET_REG_SUP`;
//!   the power and sleep buttons are not fixed hardware (`PWR_BUTTON`, `SLP_BUTTON`).
//!   `IAPC_BOOT_ARCH` says legacy devices are present (bit 0, when any ISA device is described),
//!   whether an 8042 is (bit 1), that no VGA is (bit 2), and that no CMOS RTC is (bit 5) when
//!   none is described: Linux reads bit 1 and, without it, marks the i8042 absent. `X_DSDT`
//!   points at the DSDT; the hypervisor vendor identity is the OEM table id.
//! - **DSDT** (revision 2: 64-bit integers): the serial ports (`PNP0501`), the i8042 (`PNP0303`)
//!   and the RTC (`PNP0B00`) with their ports and interrupts, the PCI host bridge (`PNP0A08`,
//!   `_CID PNP0A03`) with its bus range, the configuration ports `0xcf8..=0xcff`, its I/O and
//!   memory windows and its `_PRT`, the ECAM window as a motherboard resource (`PNP0C02`), and
//!   the `_S5` package (`{ s5_sleep_type, 0, 0, 0 }`) — see the `dsdt` module.
//! - **MADT** (revision 5, flags `PCAT_COMPAT`): the local APIC address, one enabled Processor
//!   Local APIC per vCPU (APIC id = processor UID = vCPU index), the IOAPIC, the interrupt
//!   source overrides and a local APIC NMI on LINT1 for all processors (UID `0xff`).
//! - **MCFG**: the host bridge's ECAM window (base, segment, first and last bus).
//!
//! Every table carries the OEM id [`OEM_ID`] `"VMKIT "` and the OEM table id the description
//! names (the VMM), and a correct length and checksum.
//!
//! # Where the tables go
//!
//! | address | content |
//! |---|---|
//! | [`ACPI_TABLES_START`] `0xe0000` | RSDP (36 bytes) |
//! | then, each 16-byte aligned | XSDT, FADT, DSDT, MADT, MCFG |
//! | [`ACPI_TABLES_END`] `0xf0000` | end of the window; the SMBIOS tables follow ([`crate::smbios`]) |
//!
//! The window is the lower half of the legacy BIOS area. The RSDP comes first, so a guest that
//! is not handed the RSDP address and scans the BIOS area (on 16-byte boundaries from
//! `0xe0000`) finds it on its first probe; a PVH guest gets it in `hvm_start_info.rsdp_paddr`
//! and a Linux guest booted through the zero page in `acpi_rsdp_addr` ([`AcpiTables::rsdp`]).
//!
//! vmkit-memory's layout reports `0x9fc00..0x100000` as reserved RAM. The VMM reports the
//! window as ACPI data instead (e820 type 3) with [`mark_acpi_memory`], which calls
//! `GuestLayout::set_memory_kind(ACPI_TABLES_START, ACPI_TABLES_SIZE, MemoryKind::Acpi)`, before
//! it hands the memory map to a loader. The whole window is marked, whatever the tables use.
//!
//! # Checks
//!
//! Before anything is written: the OEM table id (1 to 8 printable ASCII characters), the vCPU
//! count (1 to [`MAX_VCPUS`] = 255, what the xAPIC MADT holds), the interrupt source overrides
//! (ISA IRQs 0 to 15, each once), the S5 sleep type (3 bits), the serial ports (at most four)
//! and ISA port ranges (1 to 255 ports), the PCI host bridge (bus range, ECAM alignment, I/O
//! windows clear of the configuration ports, a 32-bit window below 4 GiB, interrupt routes),
//! that the tables fit the window, and that guest memory backs the window. Each problem is a
//! [`AcpiError`].

mod dsdt;
mod madt;
mod platform;

use std::ops::Range;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit_memory::{GuestLayout, MemoryKind};

pub use platform::{
    AcpiPlatform, I8042, InterruptOverride, IoApic, IsaDevice, MAX_SERIAL_PORTS, MAX_VCPUS,
    PCI_CONFIG_PORTS, PciHostBridge, PciInterruptPin, PciInterruptRoute, Polarity, PowerRegisters,
    Trigger,
};

/// Why the ACPI tables could not be built or written ([`write_acpi_tables`]), or the memory map
/// not mark them ([`mark_acpi_memory`]). The platform description is checked before anything is
/// written.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum AcpiError {
    /// {count} vCPUs were described; between 1 and {max} are accepted
    BadVcpuCount {
        /// Number of vCPUs described.
        count: usize,
        /// The most the tables describe.
        max: usize,
    },
    /// the OEM table id {0:?} is not 1 to 8 printable ASCII characters
    BadOemTableId(String),
    /// the interrupt source override of IRQ {0} is not for an ISA IRQ (0 to 15) or is given twice
    BadInterruptOverride(u8),
    /// the S5 sleep type {0} does not fit the 3-bit SLP_TYP field (0 to 7)
    BadSleepType(u8),
    /// {count} serial ports were described; at most {max} are accepted
    TooManySerialPorts {
        /// Number of serial ports described.
        count: usize,
        /// The most the DSDT names (COM1 to COM4).
        max: usize,
    },
    /// the {device} ports ({count} from {start:#x}) are none, more than 255, or run past port
    /// 0xffff
    BadIsaPorts {
        /// The device's DSDT name.
        device: &'static str,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
    },
    /// the PCI host bridge description is invalid: {0}
    BadPciHostBridge(&'static str),
    /// the ACPI tables take {size:#x} bytes; their window holds {available:#x}
    TablesDoNotFit {
        /// Bytes the tables take, with alignment.
        size: u64,
        /// Bytes in the window.
        available: u64,
    },
    /// the ACPI table window {start:#x}..{end:#x} is not backed by guest memory
    WindowOutOfMemory {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// the memory map could not report the ACPI tables
    MemoryMap(#[source] vmkit_memory::LayoutError),
    /// writing guest memory failed
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// First guest-physical address of the ACPI table window: the RSDP goes here.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// One past the last byte of the ACPI table window.
pub const ACPI_TABLES_END: u64 = 0xf_0000;
/// Size of the ACPI table window (64 KiB): what [`mark_acpi_memory`] reports as ACPI data.
pub const ACPI_TABLES_SIZE: u64 = ACPI_TABLES_END - ACPI_TABLES_START;
/// The OEM id of every table: the project's name, padded to six bytes.
pub const OEM_ID: [u8; 6] = *b"VMKIT ";
/// The OEM revision of every table.
pub const OEM_REVISION: u32 = 1;

/// Alignment of each table in the window.
const TABLE_ALIGN: u64 = 16;
/// Size of the RSDP (ACPI 2.0 and later).
const RSDP_SIZE: u64 = 36;
/// Size of a system description table header.
const HEADER_SIZE: u64 = 36;
/// Size of the FADT (revision 6.5).
const FADT_SIZE: u64 = 276;
/// DSDT revision 2 and up: AML integers are 64 bits.
const DSDT_REVISION: u8 = 2;
/// Offset of the checksum in a table header.
const CHECKSUM_OFFSET: usize = 9;

/// IAPC_BOOT_ARCH: the platform has user-visible legacy devices (ISA/LPC).
const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: the platform has an 8042 (or equivalent) keyboard controller.
const BOOT_ARCH_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: VGA is not present; the OS must not probe for it.
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// IAPC_BOOT_ARCH: the CMOS RTC is not present.
const BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

const _: () = assert!(ACPI_TABLES_START.is_multiple_of(TABLE_ALIGN));
const _: () = assert!(ACPI_TABLES_START >= vmkit_memory::layout::BIOS_AREA_START);
const _: () = assert!(ACPI_TABLES_END <= vmkit_memory::layout::HIGH_MEMORY_START);

/// ACPI tables written to guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Guest-physical address of the RSDP: for `hvm_start_info.rsdp_paddr`
    /// ([`PvhConfig::rsdp`](crate::PvhConfig::rsdp)) and the Linux zero page's `acpi_rsdp_addr`.
    pub rsdp: GuestAddress,
    /// The bytes the tables use, `[ACPI_TABLES_START, end of the last table)`.
    pub used: Range<u64>,
}

/// Checks `platform` and writes its ACPI tables into the window
/// `[ACPI_TABLES_START, ACPI_TABLES_END)` of `guest_mem`, the RSDP first. See the
/// [module documentation](crate::acpi) for the tables and the checks; nothing is written unless
/// every check passes.
pub fn write_acpi_tables<M: GuestMemoryBackend>(
    guest_mem: &M,
    platform: &AcpiPlatform,
) -> Result<AcpiTables, AcpiError> {
    let result = build(platform, ACPI_TABLES_START..ACPI_TABLES_END)
        .and_then(|tables| write(guest_mem, tables));
    match &result {
        Ok(tables) => debug!(
            "ACPI tables at {:#x}..{:#x}, RSDP at {:#x}",
            tables.used.start, tables.used.end, tables.rsdp.0
        ),
        Err(error) => debug!("ACPI tables not written: {error}"),
    }
    result
}

/// Reports the ACPI table window as ACPI data (e820 type 3) in `layout`'s memory map. Call it
/// before the memory map is handed to a loader.
pub fn mark_acpi_memory(layout: &mut GuestLayout) -> Result<(), AcpiError> {
    layout
        .set_memory_kind(
            GuestAddress(ACPI_TABLES_START),
            ACPI_TABLES_SIZE,
            MemoryKind::Acpi,
        )
        .map_err(AcpiError::MemoryMap)
}

/// The tables of a platform with their addresses, ready to be written.
#[derive(Debug)]
struct PlacedTables {
    window: Range<u64>,
    rsdp: u64,
    end: u64,
    tables: Vec<(u64, Vec<u8>)>,
}

/// Validates `platform` and builds its tables, placed in `window`.
fn build(platform: &AcpiPlatform, window: Range<u64>) -> Result<PlacedTables, AcpiError> {
    let table_id = platform.validate()?;
    let dsdt = dsdt_table(platform, table_id);
    let madt = madt::madt(platform, table_id);
    let mcfg = platform.pci.as_ref().map(|pci| {
        let mut mcfg = MCFG::new(OEM_ID, table_id, OEM_REVISION);
        mcfg.add_ecam(
            pci.ecam_base,
            pci.segment,
            *pci.buses.start(),
            *pci.buses.end(),
        );
        to_bytes(&mcfg)
    });
    let xsdt_entries = if mcfg.is_some() { 3 } else { 2 };

    let mut placer = Placer::new(window.clone());
    let rsdp_addr = placer.take(RSDP_SIZE);
    let xsdt_addr = placer.take(HEADER_SIZE + 8 * xsdt_entries);
    let fadt_addr = placer.take(FADT_SIZE);
    let dsdt_addr = placer.take(dsdt.len() as u64);
    let madt_addr = placer.take(madt.len() as u64);
    let mcfg_addr = mcfg.as_ref().map(|mcfg| placer.take(mcfg.len() as u64));
    let end = placer.end()?;

    let mut xsdt = XSDT::new(OEM_ID, table_id, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut tables = vec![
        (rsdp_addr, to_bytes(&Rsdp::new(OEM_ID, xsdt_addr))),
        (fadt_addr, fadt(platform, table_id, dsdt_addr)),
        (dsdt_addr, dsdt),
        (madt_addr, madt),
    ];
    if let (Some(addr), Some(mcfg)) = (mcfg_addr, mcfg) {
        xsdt.add_entry(addr);
        tables.push((addr, mcfg));
    }
    tables.push((xsdt_addr, to_bytes(&xsdt)));
    Ok(PlacedTables {
        window,
        rsdp: rsdp_addr,
        end,
        tables,
    })
}

/// Writes placed tables after checking that guest memory backs their window.
fn write<M: GuestMemoryBackend>(
    guest_mem: &M,
    placed: PlacedTables,
) -> Result<AcpiTables, AcpiError> {
    let (start, end) = (placed.window.start, placed.window.end);
    let backed = usize::try_from(end - start)
        .is_ok_and(|len| guest_mem.check_range(GuestAddress(start), len));
    if !backed {
        return Err(AcpiError::WindowOutOfMemory { start, end });
    }
    for (addr, bytes) in &placed.tables {
        guest_mem
            .write_slice(bytes, GuestAddress(*addr))
            .map_err(AcpiError::GuestMemory)?;
    }
    Ok(AcpiTables {
        rsdp: GuestAddress(placed.rsdp),
        used: start..placed.end,
    })
}

/// Hands out [`TABLE_ALIGN`]-aligned places in a window, in order.
struct Placer {
    window: Range<u64>,
    next: u64,
    end: u64,
}

impl Placer {
    fn new(window: Range<u64>) -> Self {
        Placer {
            next: window.start,
            end: window.start,
            window,
        }
    }

    /// The address of the next table of `size` bytes.
    fn take(&mut self, size: u64) -> u64 {
        let addr = self.next;
        self.end = addr.saturating_add(size);
        self.next = self
            .end
            .checked_next_multiple_of(TABLE_ALIGN)
            .unwrap_or(u64::MAX);
        addr
    }

    /// The end of the last table, if every table fits the window.
    fn end(&self) -> Result<u64, AcpiError> {
        if self.end > self.window.end {
            return Err(AcpiError::TablesDoNotFit {
                size: self.end - self.window.start,
                available: self.window.end - self.window.start,
            });
        }
        Ok(self.end)
    }
}

/// The DSDT: a header and the AML definition block.
fn dsdt_table(platform: &AcpiPlatform, table_id: [u8; 8]) -> Vec<u8> {
    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_SIZE as u32,
        DSDT_REVISION,
        OEM_ID,
        table_id,
        OEM_REVISION,
    );
    dsdt.append_slice(&dsdt::dsdt_aml(platform));
    dsdt.as_slice().to_vec()
}

/// The FADT of a hardware-reduced platform whose DSDT is at `dsdt`.
fn fadt(platform: &AcpiPlatform, table_id: [u8; 8], dsdt: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, table_id, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // acpi_tables has no setters for these; its builder's fields are public.
    fadt.iapc_boot_arch = iapc_boot_arch(platform).into();
    let power = &platform.power;
    fadt.reset_reg = io_byte_register(power.reset_port);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = io_byte_register(power.sleep_control_port);
    fadt.sleep_status_reg = io_byte_register(power.sleep_status_port);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(table_id).into();
    to_bytes(&fadt.finalize())
}

/// The FADT's IA-PC boot architecture flags for `platform`.
fn iapc_boot_arch(platform: &AcpiPlatform) -> u16 {
    let mut flags = BOOT_ARCH_VGA_NOT_PRESENT;
    if !platform.serial_ports.is_empty() || platform.i8042.is_some() || platform.rtc.is_some() {
        flags |= BOOT_ARCH_LEGACY_DEVICES;
    }
    if platform.i8042.is_some() {
        flags |= BOOT_ARCH_8042;
    }
    if platform.rtc.is_none() {
        flags |= BOOT_ARCH_CMOS_RTC_NOT_PRESENT;
    }
    flags
}

/// A GAS for the one-byte register at `port` in system I/O space.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Overwrites bytes of a finished table at `offset` and fixes its checksum.
fn set_header_bytes(table: &mut [u8], offset: usize, bytes: &[u8]) {
    table[offset..offset + bytes.len()].copy_from_slice(bytes);
    table[CHECKSUM_OFFSET] = 0;
    let sum = table.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    table[CHECKSUM_OFFSET] = sum.wrapping_neg();
}

#[cfg(test)]
mod tests;
