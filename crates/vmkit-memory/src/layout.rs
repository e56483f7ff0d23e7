//! Constants of the fixed x86-64 guest physical layout.
//!
//! ```text
//! 0x0000_0000 ─┬─ RAM (usable)                       conventional memory, boot structures
//! 0x0009_FC00 ─┼─ RAM (reserved)   EBDA              last KiB of conventional memory
//! 0x000A_0000 ─┼─ RAM (reserved)   legacy area       VGA window, option ROMs, BIOS (RSDP search)
//! 0x0010_0000 ─┼─ RAM (usable)                       kernels load here; up to 3 GiB
//! 0xC000_0000 ─┼─ reserved         PCI ECAM          256 MiB, buses 0..=255
//! 0xD000_0000 ─┼─ (gap)            MMIO32 window     32-bit PCI BARs, allocated
//! 0xFEC0_0000 ─┼─ reserved         IOAPIC            one page
//! 0xFEE0_0000 ─┼─ reserved         LAPIC             one page
//! 0xFFFB_C000 ─┼─ reserved         KVM identity map  one page
//! 0xFFFB_D000 ─┼─ reserved         KVM TSS           three pages
//! 0x1_0000_0000┼─ RAM (usable)                       the RAM that did not fit below 3 GiB
//! (1 GiB-aligned end of RAM) ─ (gap) MMIO64 window   64-bit PCI BARs, up to the physical width
//! ```
//!
//! The layout follows what firmware of a real PC reports, so an unmodified guest kernel reads the
//! memory map without surprise: the BIOS areas below 1 MiB are RAM-backed but reported reserved
//! (boot code may place firmware tables such as the RSDP or the MP table there), the 32-bit hole is
//! the top GiB below 4 GiB (as in Cloud Hypervisor and QEMU), and the PCI windows are *gaps* in the
//! memory map, which is where a guest kernel looks for room for PCI resources. Everything the
//! guest must never use as RAM or move a BAR over (ECAM, IOAPIC, LAPIC, the KVM pages) is reported
//! reserved.
//!
//! All addresses are guest physical addresses in bytes.

/// Size of a guest page: all RAM sizes and region boundaries are multiples of it.
pub const PAGE_SIZE: u64 = 0x1000;

/// First byte of guest RAM.
pub const RAM_START: u64 = 0;

/// Start of the Extended BIOS Data Area, the last KiB of the 640 KiB of conventional memory.
///
/// The memory map reports `0..EBDA_START` as usable and `EBDA_START..HIGH_MEMORY_START` as
/// reserved, as a PC BIOS does; boot code may keep firmware tables (e.g. the MP table) here.
pub const EBDA_START: u64 = 0x9_FC00;

/// Start of the legacy area above conventional memory (VGA window, option ROMs, system BIOS).
pub const LEGACY_AREA_START: u64 = 0xA_0000;

/// Start of the system BIOS area searched for the ACPI RSDP (`0xE0000..=0xFFFFF`).
pub const BIOS_AREA_START: u64 = 0xE_0000;

/// Start of high memory (1 MiB): usable RAM resumes here, and kernels are loaded here or above.
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// Smallest guest RAM size accepted: 2 MiB.
///
/// The first MiB is the legacy area (boot structures, firmware tables, reserved BIOS ranges); a
/// guest needs usable RAM at or above [`HIGH_MEMORY_START`], where protected-mode and PVH kernels
/// are loaded, and 2 MiB is the smallest size for which the first large page (the unit in which
/// boot page tables identity-map memory) is entirely backed by RAM.
pub const MIN_RAM_SIZE: u64 = 2 << 20;

/// Start of the 32-bit MMIO hole (3 GiB): RAM below 4 GiB ends here.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;

/// Size of the 32-bit MMIO hole (1 GiB, up to 4 GiB).
pub const MMIO_HOLE_SIZE: u64 = 1 << 30;

/// Most RAM that fits below the hole (3 GiB); larger guests get the rest at [`HIGH_RAM_START`].
pub const LOW_RAM_MAX_SIZE: u64 = MMIO_HOLE_START - RAM_START;

/// Start of the RAM above the 32-bit hole (4 GiB).
pub const HIGH_RAM_START: u64 = MMIO_HOLE_START + MMIO_HOLE_SIZE;

/// Start of the PCI Express enhanced configuration space (ECAM, a.k.a. MMCONFIG).
///
/// It opens the hole, like the MMCONFIG area directly below the PCI hole on QEMU's q35, and is
/// aligned to its own size as chipsets require of the `PCIEXBAR`.
pub const PCI_ECAM_START: u64 = MMIO_HOLE_START;

/// Size of the ECAM area: 256 buses × 32 devices × 8 functions × 4 KiB = 256 MiB.
pub const PCI_ECAM_SIZE: u64 = 256 << 20;

/// Start of the window from which 32-bit PCI BARs and other MMIO ranges are allocated.
pub const MMIO32_START: u64 = PCI_ECAM_START + PCI_ECAM_SIZE;

/// Size of the MMIO32 window: everything from the end of ECAM up to the IOAPIC (748 MiB).
pub const MMIO32_SIZE: u64 = IOAPIC_START - MMIO32_START;

/// Base of the IOAPIC's register window (the architectural default).
pub const IOAPIC_START: u64 = 0xFEC0_0000;

/// Size reserved for the IOAPIC (one page).
pub const IOAPIC_SIZE: u64 = PAGE_SIZE;

/// Number of IOAPIC input pins, hence of GSIs routed through it (`0..=23`).
pub const IOAPIC_NUM_PINS: u32 = 24;

/// Base of the local APIC's register window (the architectural `IA32_APIC_BASE` default).
pub const LAPIC_START: u64 = 0xFEE0_0000;

/// Size reserved for the local APIC (one page).
pub const LAPIC_SIZE: u64 = PAGE_SIZE;

/// The most vCPUs a guest of this platform has: one local APIC each, addressed by an 8-bit xAPIC
/// ID. IDs `0..=254` name vCPUs; `0xFF` is the broadcast ID (and, as an ACPI processor UID,
/// means "all processors"), so it names none. The backend (vmkit-vcpu), the firmware tables
/// (vmkit-boot) and a VMM's command line all take their limit from here.
pub const MAX_VCPUS: u32 = 255;

/// Page KVM uses for the identity-mapped page table of real-mode guests on Intel
/// (`KVM_SET_IDENTITY_MAP_ADDR`).
///
/// This is KVM's own default (`0xFFFB_C000`), directly below the TSS, in the range a PC reserves
/// for its firmware flash just below 4 GiB: it lies outside every allocation window, so no BAR or
/// MMIO range is ever placed over it, and the memory map reports it reserved so a guest does not
/// move a BAR there either.
pub const KVM_IDENTITY_MAP_START: u64 = 0xFFFB_C000;

/// Size of the KVM identity map (one page).
pub const KVM_IDENTITY_MAP_SIZE: u64 = PAGE_SIZE;

/// Start of the three pages KVM needs for the real-mode TSS on Intel (`KVM_SET_TSS_ADDR`); the
/// address Firecracker uses, directly above [`KVM_IDENTITY_MAP_START`].
pub const KVM_TSS_START: u64 = KVM_IDENTITY_MAP_START + KVM_IDENTITY_MAP_SIZE;

/// Size of the KVM TSS area (three pages).
pub const KVM_TSS_SIZE: u64 = 3 * PAGE_SIZE;

/// Alignment of the start of the MMIO64 window (1 GiB), which is also its minimum size.
///
/// The window starts at the first 1 GiB boundary at or above both 4 GiB and the end of RAM, so
/// large BARs get natural alignment and RAM's last gigabyte page is never shared with MMIO.
pub const MMIO64_ALIGNMENT: u64 = 1 << 30;

/// Smallest supported physical address width: every x86-64 CPU implements at least 36 bits.
pub const MIN_PHYS_BITS: u8 = 36;

/// Largest physical address width x86-64 architecturally allows (`MAXPHYADDR` ≤ 52).
pub const MAX_PHYS_BITS: u8 = 52;

/// Physical address width assumed by [`GuestLayout::new`](crate::GuestLayout::new): 39 bits.
///
/// 39 bits is the narrowest `MAXPHYADDR` of current x86-64 CPUs (Intel client parts), so the
/// default layout's MMIO64 window is reachable on every such host and in every guest that is told
/// the host's width. A VMM that knows the host's width (CPUID leaf `0x8000_0008`) passes it to
/// [`GuestLayout::with_phys_bits`](crate::GuestLayout::with_phys_bits) to get a larger window and
/// room for more RAM.
pub const DEFAULT_PHYS_BITS: u8 = 39;

/// First port of the allocatable port-I/O window.
///
/// Ports below `0x1000` belong to fixed ISA and chipset devices (PIT, i8042, CMOS RTC, serial
/// ports, PCI configuration mechanism #1 at `0xCF8`, …) and to the ISA 10-bit aliases PCI I/O BARs
/// have to avoid; PCI-to-PCI bridges forward I/O in 4 KiB units, so PCI I/O space conventionally
/// starts at `0x1000`. Legacy devices use their fixed ports directly, outside the allocator.
pub const PIO_START: u16 = 0x1000;

/// Last port of the allocatable port-I/O window (the top of the 16-bit port space).
pub const PIO_LAST: u16 = 0xFFFF;

/// Number of legacy ISA IRQs (`0..=15`), which keep their fixed assignment (serial 4 and 3,
/// i8042 1 and 12, RTC 8, …) and are not handed out by the GSI allocator.
pub const LEGACY_IRQ_COUNT: u32 = 16;

/// First GSI the allocator hands out: the first IOAPIC pin after the legacy ISA IRQs.
pub const GSI_FIRST: u32 = LEGACY_IRQ_COUNT;

/// Last GSI the allocator hands out: the last IOAPIC pin (`IOAPIC_NUM_PINS - 1`, i.e. 23).
pub const GSI_LAST: u32 = IOAPIC_NUM_PINS - 1;

/// Most entries a memory map may hold: the size of the e820 table of the Linux zero page.
pub const MAX_MEMORY_MAP_ENTRIES: usize = 128;

const _: () = {
    assert!(EBDA_START < LEGACY_AREA_START && LEGACY_AREA_START < BIOS_AREA_START);
    assert!(BIOS_AREA_START < HIGH_MEMORY_START && HIGH_MEMORY_START < MIN_RAM_SIZE);
    assert!(PCI_ECAM_START.is_multiple_of(PCI_ECAM_SIZE));
    assert!(MMIO32_START < IOAPIC_START && IOAPIC_START + IOAPIC_SIZE <= LAPIC_START);
    assert!(LAPIC_START + LAPIC_SIZE <= KVM_IDENTITY_MAP_START);
    assert!(KVM_TSS_START + KVM_TSS_SIZE <= HIGH_RAM_START);
    assert!(HIGH_RAM_START.is_multiple_of(MMIO64_ALIGNMENT));
    assert!(GSI_FIRST <= GSI_LAST);
};
