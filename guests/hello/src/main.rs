//! `hello`: the smallest useful PVH guest.
//!
//! Booted through the PVH entry note (see `guest-rt`), it checks the `hvm_start_info` magic,
//! prints a banner and the memory map over COM1, and ends the VM the way the command line's
//! `hello.end=` asks:
//!
//! - `debug-exit` (the default): through the debug-exit port, with status 0;
//! - `acpi-poweroff`: through the ACPI sleep control register, entering S5 (see [`acpi`]);
//! - `acpi-reset`: through the ACPI reset register.
//!
//! The ACPI ends print what they found first (`acpi: rsdp at ..., FADT at ..., ...`). When they
//! cannot be taken, or the VM survives them, the guest ends through the debug-exit port:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | booted, banner printed |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | `hello.end=` names no known end |
//! | 5 | the ACPI tables are missing or malformed (the line says why) |
//! | 6 | the VM still runs after the ACPI power-off or reset write |

#![no_std]
#![no_main]

mod acpi;

use guest_rt::{Console, EXIT_OK, StartInfo};

guest_rt::entry!("hello", main);

/// Exit status: `hello.end=` names no known end.
const EXIT_BAD_CMDLINE: u32 = 4;
/// Exit status: the ACPI tables are missing or malformed.
const EXIT_NO_ACPI: u32 = 5;
/// Exit status: the VM still runs after the ACPI power-off or reset write.
const EXIT_STILL_RUNNING: u32 = 6;

/// The most memory-map entries printed one per line.
const MEMMAP_PRINT_MAX: u32 = 64;

/// How the guest ends the VM.
#[derive(Clone, Copy)]
enum End {
    DebugExit,
    Acpi(acpi::Request),
}

/// The end the last `hello.end=` word asks for ([`End::DebugExit`] without one), or `None` for
/// an unknown value.
fn parse_end(cmdline: &[u8]) -> Option<End> {
    let mut end = End::DebugExit;
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(value) = word.strip_prefix(b"hello.end=") {
            end = match value {
                b"debug-exit" => End::DebugExit,
                b"acpi-poweroff" => End::Acpi(acpi::Request::PowerOff),
                b"acpi-reset" => End::Acpi(acpi::Request::Reset),
                _ => return None,
            };
        }
    }
    Some(end)
}

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
    match parse_end(info.cmdline()) {
        Some(End::DebugExit) => EXIT_OK,
        Some(End::Acpi(request)) => acpi::power(console, info, request),
        None => {
            console.line().str(
                "bad command line: hello.end must be debug-exit, acpi-poweroff or acpi-reset\n",
            );
            EXIT_BAD_CMDLINE
        }
    }
}
