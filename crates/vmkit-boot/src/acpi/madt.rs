//! The MADT: the local APIC address, one enabled Processor Local APIC per vCPU, the IOAPIC, the
//! ISA interrupt source overrides and the LINT1 NMI of every processor.
//!
//! acpi_tables has no type for the interrupt source override (type 2) and the local APIC NMI
//! (type 4), nor a setter for the MADT flags; the two structures are added here through its
//! `add_structure`, and the flags and revision are set on the finished bytes.

use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::{Aml, AmlSink};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{Immutable, IntoBytes};

use super::platform::AcpiPlatform;
use super::{OEM_ID, OEM_REVISION, set_header_bytes};

/// MADT flags: the machine also has dual 8259 PICs (`PCAT_COMPAT`), which the OS must mask
/// before it uses the APICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// The MADT revision written (the one of ACPI 6.2 and later; acpi_tables writes 1).
const MADT_REVISION: u8 = 5;
/// Processor UID meaning "all processors" in a local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// The local APIC input the NMI arrives at: LINT1, as on every PC.
const NMI_LINT: u8 = 1;
/// MPS INTI flags of the NMI: active high (bits 0-1 = 01), edge-triggered (bits 2-3 = 01).
const NMI_FLAGS: u16 = 0x0005;

/// Offset of the revision byte in a table header.
const REVISION_OFFSET: usize = 8;
/// Offset of the flags in the MADT (after the header and the local APIC address).
const FLAGS_OFFSET: usize = 40;

/// MADT structure type 2: an ISA interrupt source override.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32,
    flags: U16,
}

/// MADT structure type 4: a local APIC NMI.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    processor_uid: u8,
    flags: U16,
    lint: u8,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// The MADT of `platform` (validated), complete with its checksum.
pub(super) fn madt(platform: &AcpiPlatform, table_id: [u8; 8]) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        table_id,
        OEM_REVISION,
        LocalInterruptController::Address(platform.local_apic_address),
    );
    // Validated: at most 255 vCPUs, so every index fits a byte.
    for index in 0..platform.vcpus as u8 {
        madt.add_structure(ProcessorLocalApic::new(
            index,
            index,
            EnabledStatus::Enabled,
        ));
    }
    let ioapic = platform.ioapic;
    madt.add_structure(IoApic::new(ioapic.id, ioapic.address, ioapic.gsi_base));
    for o in &platform.interrupt_overrides {
        madt.add_structure(InterruptSourceOverride {
            r#type: 2,
            length: size_of::<InterruptSourceOverride>() as u8,
            bus: 0,
            source: o.isa_irq,
            gsi: o.gsi.into(),
            flags: o.flags().into(),
        });
    }
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: size_of::<LocalApicNmi>() as u8,
        processor_uid: ALL_PROCESSORS,
        flags: NMI_FLAGS.into(),
        lint: NMI_LINT,
    });

    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    set_header_bytes(&mut bytes, REVISION_OFFSET, &[MADT_REVISION]);
    set_header_bytes(&mut bytes, FLAGS_OFFSET, &MADT_PCAT_COMPAT.to_le_bytes());
    bytes
}
