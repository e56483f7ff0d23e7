//! `hello`: the smallest useful PVH guest.
//!
//! Booted through the PVH entry note (see `entry.s`), it checks the `hvm_start_info` magic,
//! prints a banner and the memory map over COM1, and ends the VM through the debug-exit port:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | booted, banner printed |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//!
//! Guest ring-0 code may be emulated instruction by instruction, so the guest does as little as
//! it can: static page tables, no formatting machinery outside the panic path, and one port
//! write per byte after one status read.

#![no_std]
#![no_main]

mod io;

use core::arch::global_asm;
use core::fmt::Write;
use core::panic::PanicInfo;

use io::{Serial, exit};

global_asm!(include_str!("entry.s"), options(att_syntax, raw));

/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`).
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Addresses the entry code identity-maps.
const MAPPED_END: u64 = 4 << 30;
/// The longest command line printed.
const CMDLINE_PRINT_MAX: u64 = 4096;
/// The most memory-map entries printed one per line.
const MEMMAP_PRINT_MAX: u32 = 64;

/// Exit status: booted and printed the banner.
const EXIT_OK: u32 = 0;
/// Exit status: the start-info pointer or magic is wrong.
const EXIT_BAD_START_INFO: u32 = 2;
/// Exit status: panic.
const EXIT_PANIC: u32 = 3;

/// `struct hvm_start_info` (Xen `arch-x86/hvm/start_info.h`), version 1.
#[repr(C)]
#[derive(Clone, Copy)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// Whether `[addr, addr + len)` lies in the identity-mapped range.
fn mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// Reads a `T` at physical address `addr`.
///
/// # Safety
/// `[addr, addr + size_of::<T>())` must be identity-mapped (see [`mapped`]) and `T` valid for
/// any bit pattern.
unsafe fn read_phys<T: Copy>(addr: u64) -> T {
    // SAFETY: the caller guarantees the range is mapped; the read is unaligned-safe and
    // volatile because the memory was written by the VMM, outside the program's knowledge.
    unsafe { core::ptr::read_volatile(addr as usize as *const T) }
}

/// Entered from `entry.s` in long mode with the physical address of `hvm_start_info`.
#[unsafe(no_mangle)]
extern "C" fn rust_main(start_info_addr: u64) -> ! {
    let mut serial = Serial;
    if start_info_addr == 0 || !mapped(start_info_addr, size_of::<StartInfo>() as u64) {
        serial.put_str("vmkit hello: start_info pointer ");
        serial.put_hex(start_info_addr);
        serial.put_str(" is not usable\n");
        exit(EXIT_BAD_START_INFO);
    }
    if !start_info_addr.is_multiple_of(8) {
        serial.put_str("vmkit hello: start_info is misaligned\n");
        exit(EXIT_BAD_START_INFO);
    }
    // SAFETY: the range is mapped and aligned (checked above); every bit pattern is valid.
    let info: StartInfo = unsafe { read_phys(start_info_addr) };
    if info.magic != START_INFO_MAGIC {
        serial.put_str("vmkit hello: bad start_info magic ");
        serial.put_hex(u64::from(info.magic));
        serial.put_str("\n");
        exit(EXIT_BAD_START_INFO);
    }
    // The memory map fields exist from version 1 on.
    let entries = if info.version >= 1 && info.memmap_paddr != 0 {
        info.memmap_entries
    } else {
        0
    };

    serial.put_str("vmkit hello: booted via PVH, start_info at ");
    serial.put_hex(start_info_addr);
    serial.put_str(", ");
    serial.put_dec(u64::from(entries));
    serial.put_str(" memory map entries, cmdline \"");
    print_cmdline(&mut serial, info.cmdline_paddr);
    serial.put_str("\"\n");
    print_memmap(&mut serial, info.memmap_paddr, entries);
    exit(EXIT_OK)
}

/// Prints the NUL-terminated command line at `addr` (printable ASCII as is, other bytes as `?`).
fn print_cmdline(serial: &mut Serial, addr: u64) {
    if addr == 0 {
        return;
    }
    let mut offset = 0;
    while offset < CMDLINE_PRINT_MAX && mapped(addr, offset + 1) {
        // SAFETY: `[addr, addr + offset + 1)` is mapped (loop condition); u8 has no invalid values.
        let byte: u8 = unsafe { read_phys(addr + offset) };
        match byte {
            0 => return,
            b' '..=b'~' => serial.put_byte(byte),
            _ => serial.put_byte(b'?'),
        }
        offset += 1;
    }
}

/// Prints one line per memory-map entry (at most [`MEMMAP_PRINT_MAX`]).
fn print_memmap(serial: &mut Serial, addr: u64, entries: u32) {
    let entry_size = size_of::<MemmapEntry>() as u64;
    let shown = entries.min(MEMMAP_PRINT_MAX);
    if !mapped(addr, u64::from(shown) * entry_size) || !addr.is_multiple_of(8) {
        serial.put_str("vmkit hello: memory map is not readable\n");
        return;
    }
    for index in 0..u64::from(shown) {
        // SAFETY: the whole table of `shown` entries is mapped and aligned (checked above).
        let entry: MemmapEntry = unsafe { read_phys(addr + index * entry_size) };
        serial.put_str("vmkit hello: memmap addr=");
        serial.put_hex(entry.addr);
        serial.put_str(" size=");
        serial.put_hex(entry.size);
        serial.put_str(" type=");
        serial.put_dec(u64::from(entry.kind));
        serial.put_str("\n");
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut serial = Serial;
    // Formatting is only used here: the normal path stays free of `core::fmt`.
    let _ = writeln!(serial, "vmkit hello: panic: {}", info.message());
    if let Some(location) = info.location() {
        let _ = writeln!(serial, "vmkit hello: at {location}");
    }
    exit(EXIT_PANIC)
}
