//! Guest images built from `guests/` by the build script and embedded in the binary.

/// The `hello` PVH guest: an ELF64 image with a PVH entry note, linked at 1 MiB. It prints a
/// banner and the memory map over COM1 and ends the VM through the debug-exit port (port `0xf4`)
/// with status 0; status 2 means a bad `hvm_start_info`, status 3 a guest panic.
pub const HELLO_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello.elf"));

/// The `exits` PVH guest: `n` port-I/O and `n` MMIO round trips through the `pc-testdev` test
/// device (`exits.n=N` on the command line, default 100), reported over COM1; status 0 when every
/// value read back as written, 1 on a mismatch (no test device), 4 on a malformed `exits.n`.
pub const EXITS_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exits.elf"));

/// The `assist` PVH guest: runs in ring 0 the instructions a backend may fail to emulate
/// (`int3`, `cmpxchg8b`/`cmpxchg16b`, the XSAVE family, `popcnt`/`lzcnt`/`tzcnt`, `stac`/`clac`,
/// `fwait`, `ldmxcsr`/`stmxcsr`) and prints one line per check over COM1; status 0 when every
/// result matches the architecture, 1 on a mismatch, 4 on an exception no check expected.
pub const ASSIST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/assist.elf"));
