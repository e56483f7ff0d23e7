//! The scratch memory the attacks lay their rings, tables and buffers out in: [`LEN`] bytes of
//! RAM at [`BASE`], above the image (which ends below 2 MiB) and inside the identity map.
//!
//! The attacked device reads and writes it behind the program's back, so every access is
//! volatile, through the accessors here, which check that the access stays inside the region.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

use guest_rt::StartInfo;

/// Where the scratch memory starts: 4 MiB.
pub const BASE: u64 = 4 << 20;
/// Its length: 2 MiB.
pub const LEN: u64 = 2 << 20;

/// The attacked queue's descriptor table (up to 256 entries).
pub const DESC: u64 = BASE;
/// Its available ring (up to 256 entries), where the ring attack does not move it.
pub const AVAIL: u64 = BASE + 0x1000;
/// Its used ring (up to 256 entries).
pub const USED: u64 = BASE + 0x2000;
/// The ring attack's window: a request header followed by the available ring, 512 bytes that
/// one sector read covers.
pub const WINDOW: u64 = BASE + 0x3000;
/// Status bytes, one per descriptor slot.
pub const STATUS: u64 = BASE + 0x3400;
/// Request headers, 16 bytes each.
pub const HEADERS: u64 = BASE + 0x3800;
/// The data buffer: [`DATA_LEN`] bytes.
pub const DATA: u64 = BASE + 0x1_0000;
/// Bytes of the data buffer: the largest segment the attacked device takes (`size_max`).
pub const DATA_LEN: u64 = 128 << 10;
/// The indirect descriptor table, up to 65535 entries of 16 bytes.
pub const TABLE: u64 = BASE + 0x10_0000;

/// Usable RAM (e820 type 1).
const RAM: u32 = 1;
/// Memory-map entries looked at.
const MAX_MEMMAP: u32 = 128;

/// Set once [`available`] has found the region in the memory map.
static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Whether the memory map has `[BASE, BASE + LEN)` as usable RAM; the region may be used only
/// after this said so.
pub fn available(info: &StartInfo) -> bool {
    let ram = info.memmap(MAX_MEMMAP).is_some_and(|mut entries| {
        entries
            .any(|e| e.kind == RAM && e.addr <= BASE && e.addr.saturating_add(e.size) >= BASE + LEN)
    });
    AVAILABLE.store(ram, Ordering::Relaxed);
    ram
}

/// The pointer to `[addr, addr + size_of::<T>())`; panics when that leaves the region or the
/// region is not known to be RAM.
fn at<T>(addr: u64) -> *mut T {
    let end = addr.checked_add(size_of::<T>() as u64);
    assert!(
        AVAILABLE.load(Ordering::Relaxed)
            && addr >= BASE
            && end.is_some_and(|end| end <= BASE + LEN),
        "scratch access outside the region, or before the memory map was checked"
    );
    addr as usize as *mut T
}

/// Writes `value` at `addr`.
pub fn write<T: Copy>(addr: u64, value: T) {
    // SAFETY: `at` checked that the access lies in the scratch region and that the memory map
    // says the region is RAM (`available`); the identity map covers it and no Rust object
    // occupies it (the image ends below 2 MiB); every `T` used here is a plain integer.
    unsafe { write_volatile(at::<T>(addr), value) }
}

/// Reads the value at `addr`.
pub fn read<T: Copy>(addr: u64) -> T {
    // SAFETY: as for `write`; integers are valid for any bit pattern.
    unsafe { read_volatile(at::<T>(addr)) }
}

/// Writes `value(i)` as a 64-bit word at `addr + i * stride` for each `i` in `0..count`: the
/// bulk fills (zeroing, tables, disk images) check the range once rather than per word.
pub fn store_each(addr: u64, stride: u64, count: u64, mut value: impl FnMut(u64) -> u64) {
    if count == 0 {
        return;
    }
    let first = at::<u64>(addr);
    let last = (count - 1)
        .checked_mul(stride)
        .and_then(|span| addr.checked_add(span));
    at::<u64>(last.unwrap_or(u64::MAX));
    for i in 0..count {
        // SAFETY: the first and the last word are in the region (both checked above) and the
        // words between lie between them; see `write`.
        unsafe { write_volatile(first.byte_add((i * stride) as usize), value(i)) };
    }
}

/// Zeroes `words` 64-bit words from `addr`.
pub fn zero(addr: u64, words: u64) {
    store_each(addr, 8, words, |_| 0);
}

/// Writes descriptor `index` of the table at `table`: `addr`, `len`, `flags`, `next`.
pub fn descriptor(table: u64, index: u32, addr: u64, len: u32, flags: u16, next: u16) {
    let entry = table + u64::from(index) * 16;
    write(entry, addr);
    write(
        entry + 8,
        u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48,
    );
}
