//! Backend-neutral x86-64 CPU state: the entry state of each boot protocol (segments, control
//! registers, the boot GDT), the boot MSRs, the FPU, LAPIC and whole-vCPU snapshot types, and the
//! page sizes guest page tables may use.

mod entry;
pub mod msr;
pub mod state;

pub use entry::{
    EntryError, LONG_MODE_GDT, LONG_MODE_GDT_SIZE, LongModeEntry, SELECTOR_CODE, SELECTOR_DATA,
    SELECTOR_TSS, gdt_entry, long_mode_registers, long_mode_special_registers, pvh_registers,
    pvh_special_registers, segment_from_gdt_entry,
};
pub use state::{FpuState, LapicState, SNAPSHOT_MSRS, VcpuSnapshot};

/// The page sizes a guest's page tables may map with, in `vmkit-paging`'s terms, so that what a
/// backend reports ([`Hypervisor::supported_page_sizes`](crate::Hypervisor::supported_page_sizes))
/// goes straight to the page-table builder. On a backend whose CPUID lacks `pdpe1gb` a 1 GiB
/// mapping faults in the guest, so builders must ask.
pub use vmkit_paging::{PageSize, PageSizes};
