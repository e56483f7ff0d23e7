//! Port I/O and MMIO of any width, for the storms and the attacked queue's notifications.
//!
//! MMIO goes only to addresses that no RAM backs: [`Mmio`] is built from the memory map and
//! refuses addresses below the end of the last RAM or ACPI entry under 4 GiB and at or above
//! [`MMIO_TOP`], where the platform's fixed devices (IOAPIC, HPET, local APIC) and the
//! hypervisor's own pages live.

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use guest_rt::StartInfo;
use guest_rt::port::{inb, inl, outb, outl};

/// The first address left alone: the IOAPIC's page at `0xfec0_0000` and everything above.
pub const MMIO_TOP: u64 = 0xfec0_0000;
/// Memory-map entries looked at.
const MAX_MEMMAP: u32 = 128;
/// e820 types whose ranges may be backed by memory: RAM, ACPI reclaimable, ACPI NVS.
const MEMORY_KINDS: [u32; 3] = [1, 3, 4];

/// Reads `width` (1, 2 or 4) bytes from `port`.
pub fn port_read(port: u16, width: u8) -> u32 {
    match width {
        1 => u32::from(inb(port)),
        2 => {
            let value: u16;
            // SAFETY: port input touches no memory of this guest; the storms never read a port
            // whose read would end the VM or confuse the console.
            unsafe {
                asm!("in ax, dx", out("ax") value, in("dx") port, options(nomem, nostack, preserves_flags))
            };
            u32::from(value)
        }
        _ => inl(port),
    }
}

/// Writes the low `width` (1, 2 or 4) bytes of `value` to `port`.
pub fn port_write(port: u16, width: u8, value: u32) {
    match width {
        1 => outb(port, value as u8),
        2 => {
            // SAFETY: port output touches no memory of this guest; the storms never write a
            // port that would end the VM.
            unsafe {
                asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack, preserves_flags))
            };
        }
        _ => outl(port, value),
    }
}

/// The physical addresses MMIO may go to: `[floor, MMIO_TOP)`.
#[derive(Clone, Copy)]
pub struct Mmio {
    floor: u64,
}

impl Mmio {
    /// The window above every memory-backed entry of the memory map below 4 GiB (at least
    /// 1 MiB), or `None` when the map is unreadable or leaves no window.
    pub fn new(info: &StartInfo) -> Option<Self> {
        let floor = info
            .memmap(MAX_MEMMAP)?
            .filter(|e| MEMORY_KINDS.contains(&e.kind) && e.addr < MMIO_TOP)
            .map(|e| e.addr.saturating_add(e.size))
            .fold(1 << 20, u64::max);
        (floor < MMIO_TOP).then_some(Self { floor })
    }

    /// The lowest address of the window.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Whether `[addr, addr + width)` lies in the window.
    pub fn contains(&self, addr: u64, width: u8) -> bool {
        addr >= self.floor && addr.saturating_add(u64::from(width)) <= MMIO_TOP
    }

    /// Reads `width` (1, 2, 4 or 8) bytes at `addr`; panics outside the window.
    pub fn read(&self, addr: u64, width: u8) -> u64 {
        assert!(self.contains(addr, width), "MMIO read outside the window");
        let p = addr as usize;
        // SAFETY: the address is identity-mapped (below 4 GiB) and no memory backs it (it lies
        // above every memory-backed entry of the map, checked above), so the access is an MMIO
        // exit or reads nothing the program owns; a volatile access of the given width.
        unsafe {
            match width {
                1 => u64::from(read_volatile(p as *const u8)),
                2 => u64::from(read_volatile(p as *const u16)),
                4 => u64::from(read_volatile(p as *const u32)),
                _ => read_volatile(p as *const u64),
            }
        }
    }

    /// Writes the low `width` (1, 2, 4 or 8) bytes of `value` at `addr`; panics outside the
    /// window.
    pub fn write(&self, addr: u64, width: u8, value: u64) {
        assert!(self.contains(addr, width), "MMIO write outside the window");
        let p = addr as usize;
        // SAFETY: as for `read`: no memory of the program is behind the address.
        unsafe {
            match width {
                1 => write_volatile(p as *mut u8, value as u8),
                2 => write_volatile(p as *mut u16, value as u16),
                4 => write_volatile(p as *mut u32, value as u32),
                _ => write_volatile(p as *mut u64, value),
            }
        }
    }
}
