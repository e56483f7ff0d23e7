//! `guest-rt`: what every vmkit test guest shares.
//!
//! - the PVH entry (`entry.s`): 32-bit protected mode to long mode with static identity-mapped
//!   page tables, then `rust_main(start_info)`;
//! - the linker script (`linker.ld`, handed to each guest's build script as
//!   `DEP_GUEST_RT_LINKER_SCRIPT`);
//! - [`port`]: port I/O and the debug-exit port ([`exit`]);
//! - [`Console`]: COM1 output, each line prefixed `vmkit <guest>: `;
//! - [`StartInfo`]: the validated `hvm_start_info`, its command line and memory map;
//! - [`entry!`]: defines `rust_main` and the panic handler of a guest.
//!
//! A guest is a `no_main` binary that names its `main`:
//!
//! ```ignore
//! guest_rt::entry!("hello", main);
//!
//! fn main(console: &mut guest_rt::Console, info: &guest_rt::StartInfo) -> u32 {
//!     console.line().str("hi\n");
//!     guest_rt::EXIT_OK
//! }
//! ```
//!
//! Guest ring-0 code may be emulated instruction by instruction, so everything here is kept
//! light: static page tables, no `core::fmt` outside the panic path, one status read and one port
//! write per byte of output.

#![no_std]

mod console;
pub mod port;
mod start_info;

use core::arch::global_asm;
use core::fmt::Write;
use core::panic::PanicInfo;

pub use console::Console;
pub use port::exit;
pub use start_info::{MemmapEntry, StartInfo, StartInfoError};

global_asm!(include_str!("entry.s"), options(att_syntax, raw));

/// Exit status: the guest did what it was built for.
pub const EXIT_OK: u32 = 0;
/// Exit status: the start-info pointer or magic is wrong.
pub const EXIT_BAD_START_INFO: u32 = 2;
/// Exit status: the guest panicked (the message is printed first).
pub const EXIT_PANIC: u32 = 3;

/// Validates the start info at `start_info_addr` and ends the VM with the status `main` returns;
/// a bad start info is reported and ends the VM with [`EXIT_BAD_START_INFO`].
///
/// Called by the `rust_main` that [`entry!`] defines.
pub fn start(
    name: &'static str,
    start_info_addr: u64,
    main: fn(&mut Console, &StartInfo) -> u32,
) -> ! {
    let mut console = Console::new(name);
    match StartInfo::read(start_info_addr) {
        Ok(info) => exit(main(&mut console, &info)),
        Err(error) => {
            error.report(&mut console);
            exit(EXIT_BAD_START_INFO)
        }
    }
}

/// Prints the panic message and location and ends the VM with [`EXIT_PANIC`].
///
/// Called by the panic handler that [`entry!`] defines. Formatting is only used here: the normal
/// path stays free of `core::fmt`.
pub fn panic(name: &'static str, info: &PanicInfo<'_>) -> ! {
    let mut console = Console::new(name);
    console.line();
    let _ = writeln!(console, "panic: {}", info.message());
    if let Some(location) = info.location() {
        console.line();
        let _ = writeln!(console, "at {location}");
    }
    exit(EXIT_PANIC)
}

/// Defines a guest's entry: `entry!("name", main)` with `fn main(&mut Console, &StartInfo) -> u32`
/// makes `rust_main` (called by the PVH entry code) run `main` on a validated start info and end
/// the VM with its status, and defines the panic handler. Output lines start with `vmkit name: `.
#[macro_export]
macro_rules! entry {
    ($name:literal, $main:path) => {
        /// Entered from the PVH entry code in long mode with the physical address of
        /// `hvm_start_info`.
        #[unsafe(no_mangle)]
        extern "C" fn rust_main(start_info: u64) -> ! {
            $crate::start($name, start_info, $main)
        }

        #[panic_handler]
        fn panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::panic($name, info)
        }
    };
}
