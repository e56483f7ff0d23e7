//! `hello`: the smallest useful PVH guest.
//!
//! Booted through the PVH entry note (see `guest-rt`), it checks the `hvm_start_info` magic,
//! prints a banner and the memory map over COM1, and ends the VM through the debug-exit port:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | booted, banner printed |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |

#![no_std]
#![no_main]

use guest_rt::{Console, EXIT_OK, StartInfo};

guest_rt::entry!("hello", main);

/// The most memory-map entries printed one per line.
const MEMMAP_PRINT_MAX: u32 = 64;

fn main(console: &mut Console, info: &StartInfo) -> u32 {
    console
        .line()
        .str("booted via PVH, start_info at ")
        .hex(info.address())
        .str(", ")
        .dec(u64::from(info.memmap_entries()))
        .str(" memory map entries, cmdline \"");
    // Printable ASCII as is, other bytes as `?`.
    for &byte in info.cmdline() {
        console.byte(if matches!(byte, b' '..=b'~') {
            byte
        } else {
            b'?'
        });
    }
    console.str("\"\n");
    match info.memmap(MEMMAP_PRINT_MAX) {
        Some(entries) => {
            for entry in entries {
                console
                    .line()
                    .str("memmap addr=")
                    .hex(entry.addr)
                    .str(" size=")
                    .hex(entry.size)
                    .str(" type=")
                    .dec(u64::from(entry.kind))
                    .str("\n");
            }
        }
        None => {
            console.line().str("memory map is not readable\n");
        }
    }
    EXIT_OK
}
