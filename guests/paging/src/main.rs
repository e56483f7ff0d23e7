//! `paging`: a guest that builds its own page tables with vmkit-paging's `TableBuilder` (the
//! crate's `no_std` core, running inside the guest), switches to them, proves they are live and
//! tells the host, which then cross-checks vmkit-paging's walker against the hypervisor's.
//!
//! It takes a work area from the PVH memory map: the first 2 MiB-aligned 8 MiB of usable RAM
//! above its image and the boot structures and below 1 GiB (`W`; it refuses to run when the VMM
//! placed modules, which lie in usable RAM). The table frames come from `[W, W + 2 MiB)`; data
//! pages lie from `D = W + 2 MiB`. The tables it builds (4-level, EFER.NXE and CR0.WP set):
//!
//! | virtual | physical | length | rights | pages |
//! |---|---|---|---|---|
//! | `0` | — | 4 KiB | hole (null page) | — |
//! | `0x1000` | same | 1 MiB − 4 KiB | W, NX | 4 KiB (the boot structures) |
//! | `0x10_0000` | same | the image | W | 4 KiB (code, data, stack) |
//! | `W` | same | 8 MiB | W, NX | 2 MiB (tables and data) |
//! | `0x2_003f_f000` | `D + 0x1f_f000` | 2 MiB + 8 KiB | W, NX | 4 KiB, 2 MiB, 4 KiB |
//! | `0x7fff_ffff_b000` | `D + 0x1000` | 4 KiB | NX (read-only) | 4 KiB |
//! | `0x7fff_ffff_c000` | — | 4 KiB | hole | — |
//! | `0x7fff_ffff_d000` | `D + 0x2000` | 12 KiB, to the top of the lower half | U, W, NX | 4 KiB |
//! | `0xffff_8880_0000_0000` | `0` | 1 GiB (a direct map) | W, NX | 1 GiB with `paging.1g=1`, else 2 MiB |
//! | `0xffff_ffff_ffe0_0000` | `D` | 2 MiB, to the top of the address space | NX (read-only) | 2 MiB |
//!
//! 1 GiB pages are used only when the command line says `paging.1g=1`: a CPU may report them
//! (CPUID `pdpe1gb`) where the hypervisor cannot back them, so the VMM decides. After loading
//! CR3 the guest writes through each alias and reads back through another mapping of the same
//! word (seven pairs), then announces the tables with a 32-bit `out` of `W` (the root table's
//! address) to port **`0x500`**, which no vmkit device uses (QEMU's `q35` ignores it too), and
//! exits with status 0. A VMM that ignores the port just sees the guest exit.
//!
//! ```text
//! vmkit paging: sizes=4K,2M maxphyaddr=48 work=0x200000
//! vmkit paging: tables=14 root=0x200000
//! vmkit paging: cr3 switched, 7 alias checks ok
//! ```
//!
//! | status | meaning |
//! |---|---|
//! | 0 | tables built and live, every alias read back what was written |
//! | 1 | a value read through an alias differs from the one written, or CR3 did not change |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | `paging.1g=` is neither `0` nor `1` |
//! | 5 | no room for the work area, or the VMM placed modules |
//! | 6 | the CPU lacks NX, or `paging.1g=1` but it lacks 1 GiB pages |
//! | 7 | building the tables failed (the line names the mapping and the error) |

#![no_std]
#![no_main]

mod cpu;
mod ram;

use core::ptr::{read_volatile, write_volatile};

use guest_rt::port::outl;
use guest_rt::{Console, EXIT_OK, StartInfo};
use vmkit_paging::{
    BuildError, BumpAllocator, PageSize, PageSizes, PteFlags, TableBuilder, X86Format,
};

use cpu::Features;
use ram::{GuestRam, NoWorkArea};

guest_rt::entry!("paging", main);

/// The port the guest writes the root table's address to once its tables are live.
const READY_PORT: u16 = 0x500;

/// The work area: table frames, then data pages.
const WORK_LEN: u64 = 8 << 20;
/// The table frames at the start of the work area.
const TABLES_LEN: u64 = 2 << 20;
/// Where the data pages start in the work area (`D - W`).
const DATA_OFFSET: u64 = TABLES_LEN;

/// Where the image is linked (guest-rt's linker script).
const IMAGE_START: u64 = 0x10_0000;
/// A region whose ends are 4 KiB pages and whose middle is a 2 MiB page.
const MIXED: u64 = 0x2_003f_f000;
const MIXED_DATA: u64 = 0x1f_f000;
const MIXED_LEN: u64 = 0x20_2000;
/// A read-only page, a hole, and user pages up to the top of the lower half.
const READ_ONLY: u64 = 0x7fff_ffff_b000;
const READ_ONLY_DATA: u64 = 0x1000;
const USER: u64 = 0x7fff_ffff_d000;
const USER_DATA: u64 = 0x2000;
const USER_LEN: u64 = 0x3000;
/// A direct map of guest-physical `[0, 1 GiB)` in the higher half, as Linux has one.
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
const DIRECT_MAP_LEN: u64 = 1 << 30;
/// A read-only 2 MiB page at the top of the address space.
const TOP: u64 = 0xffff_ffff_ffe0_0000;
const TOP_LEN: u64 = 2 << 20;

/// Values written through the aliases: this plus the check's index.
const ALIAS_PATTERN: u64 = 0x5041_4749_4e47_0000;

/// The command-line option that allows 1 GiB pages.
const GB_OPTION: &[u8] = b"paging.1g=";

/// Exit status: an alias read back a different value.
const EXIT_MISMATCH: u32 = 1;
/// Exit status: `paging.1g=` is malformed.
const EXIT_BAD_CMDLINE: u32 = 4;
/// Exit status: no work area.
const EXIT_NO_ROOM: u32 = 5;
/// Exit status: a CPU feature is missing.
const EXIT_NO_FEATURE: u32 = 6;
/// Exit status: the builder failed.
const EXIT_BUILD_FAILED: u32 = 7;

unsafe extern "C" {
    /// The end of the image, stack included (guest-rt's linker script).
    static __image_end: u8;
}

/// One mapping the guest builds.
struct Mapping {
    name: &'static str,
    virt: u64,
    phys: u64,
    len: u64,
    flags: PteFlags,
}

/// The mappings, for the work area at `work` and an image ending at `image_end`.
fn mappings(work: u64, image_end: u64) -> [Mapping; 8] {
    let data = work + DATA_OFFSET;
    let rw_nx = PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
    let image_len = image_end.next_multiple_of(0x1000) - IMAGE_START;
    [
        Mapping {
            name: "low",
            virt: 0x1000,
            phys: 0x1000,
            len: IMAGE_START - 0x1000,
            flags: rw_nx,
        },
        Mapping {
            name: "image",
            virt: IMAGE_START,
            phys: IMAGE_START,
            len: image_len,
            flags: PteFlags::WRITABLE,
        },
        Mapping {
            name: "work",
            virt: work,
            phys: work,
            len: WORK_LEN,
            flags: rw_nx,
        },
        Mapping {
            name: "mixed",
            virt: MIXED,
            phys: data + MIXED_DATA,
            len: MIXED_LEN,
            flags: rw_nx,
        },
        Mapping {
            name: "read-only",
            virt: READ_ONLY,
            phys: data + READ_ONLY_DATA,
            len: 0x1000,
            flags: PteFlags::NO_EXECUTE,
        },
        Mapping {
            name: "user",
            virt: USER,
            phys: data + USER_DATA,
            len: USER_LEN,
            flags: PteFlags::USER | rw_nx,
        },
        Mapping {
            name: "direct",
            virt: DIRECT_MAP,
            phys: 0,
            len: DIRECT_MAP_LEN,
            flags: rw_nx,
        },
        Mapping {
            name: "top",
            virt: TOP,
            phys: data,
            len: TOP_LEN,
            flags: PteFlags::NO_EXECUTE,
        },
    ]
}

/// The alias checks: a word written at the first address must read back at the second, a
/// different mapping of the same guest-physical word.
fn alias_checks(work: u64) -> [(u64, u64); 7] {
    let data = work + DATA_OFFSET;
    [
        // The direct map (a 1 GiB or 2 MiB page) against the identity map.
        (DIRECT_MAP + data + 0x20, data + 0x20),
        // The identity map against the read-only page at the top of the address space.
        (data + 0x30, TOP + 0x30),
        // The mixed region's first 4 KiB page, its 2 MiB page and its last 4 KiB page.
        (MIXED, data + MIXED_DATA),
        (MIXED + 0x1000, data + MIXED_DATA + 0x1000),
        (MIXED + MIXED_LEN - 8, data + MIXED_DATA + MIXED_LEN - 8),
        // The identity map against the read-only 4 KiB page.
        (data + READ_ONLY_DATA + 0x10, READ_ONLY + 0x10),
        // A user page (a supervisor write: SMAP is off) against the identity map.
        (USER + 0x1008, data + USER_DATA + 0x1008),
    ]
}

/// Whether 1 GiB pages are allowed: the value of the last `paging.1g=` word (default no), or
/// `None` when it is neither `0` nor `1`.
fn parse_gb_option(cmdline: &[u8]) -> Option<bool> {
    let mut allowed = false;
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(value) = word.strip_prefix(GB_OPTION) {
            allowed = match value {
                b"0" => false,
                b"1" => true,
                _ => return None,
            };
        }
    }
    Some(allowed)
}

fn main(console: &mut Console, info: &StartInfo) -> u32 {
    let Some(gb_allowed) = parse_gb_option(info.cmdline()) else {
        console
            .line()
            .str("bad command line: paging.1g must be 0 or 1\n");
        return EXIT_BAD_CMDLINE;
    };
    let features = Features::read();
    if !features.nx {
        console.line().str("the CPU lacks execute-disable (NX)\n");
        return EXIT_NO_FEATURE;
    }
    if gb_allowed && !features.gbpages {
        console
            .line()
            .str("paging.1g=1, but the CPU lacks 1 GiB pages (pdpe1gb)\n");
        return EXIT_NO_FEATURE;
    }
    let image_end = &raw const __image_end as u64;
    let work = match ram::find_work_area(info, image_end, WORK_LEN, DIRECT_MAP_LEN) {
        Ok(work) => work,
        Err(NoWorkArea::Modules(count)) => {
            console
                .line()
                .dec(u64::from(count))
                .str(" modules in usable RAM: this guest takes that RAM for itself\n");
            return EXIT_NO_ROOM;
        }
        Err(NoWorkArea::NoRoom) => {
            console
                .line()
                .str("no 8 MiB of usable RAM above the image and boot data, below 1 GiB\n");
            return EXIT_NO_ROOM;
        }
    };
    let sizes = if gb_allowed {
        PageSizes::ALL
    } else {
        PageSizes::UP_TO_2M
    };
    console.line().str("sizes=4K,2M");
    if sizes.contains(PageSize::Size1G) {
        console.str(",1G");
    }
    console
        .str(" maxphyaddr=")
        .dec(u64::from(features.max_phys_bits))
        .str(" work=")
        .hex(work)
        .str("\n");

    // `[work, work + TABLES_LEN)` lies in usable RAM (the memory map says so, and the VMM
    // placed no module), above the image and the boot structures and below 1 GiB, so guest-rt's
    // tables identity-map it writable and the tables built here map it the same way. The alias
    // checks use the data pages after it.
    // SAFETY: the range is identity-mapped RAM that nothing else in the program touches.
    let ram = unsafe { GuestRam::new(work, work + TABLES_LEN) };
    let root = match build_tables(&ram, work, image_end, sizes, &features) {
        Ok((root, tables)) => {
            console
                .line()
                .str("tables=")
                .dec(tables as u64)
                .str(" root=")
                .hex(root)
                .str("\n");
            root
        }
        Err((name, error)) => {
            report_build_error(console, name, error);
            return EXIT_BUILD_FAILED;
        }
    };

    cpu::enable_nx_and_write_protect();
    // The tables map the image (code, statics, the stack) and the boot structures below it to
    // themselves; the console is port I/O. NXE is set (the tables use execute-disable), and the
    // image is writable and executable as under guest-rt's tables.
    // SAFETY: so every address the program uses from now on keeps its physical address.
    unsafe { cpu::load_cr3(root) };
    if cpu::cr3() != root {
        console.line().str("CR3 did not take the new root\n");
        return EXIT_MISMATCH;
    }

    let checks = alias_checks(work);
    for (index, &(write, read)) in (0u64..).zip(checks.iter()) {
        let value = ALIAS_PATTERN + index;
        // The live tables map `write` (writable to the supervisor, CR0.WP honoured) and `read`,
        // both 8-byte aligned, to the same word of the work area's data pages.
        // SAFETY: that word is guest-owned RAM that nothing else in the program references.
        let got = unsafe {
            write_volatile(write as usize as *mut u64, value);
            read_volatile(read as usize as *const u64)
        };
        if got != value {
            console
                .line()
                .str("wrote ")
                .hex(value)
                .str(" at ")
                .hex(write)
                .str(", read ")
                .hex(got)
                .str(" at ")
                .hex(read)
                .str("\n");
            return EXIT_MISMATCH;
        }
    }
    console
        .line()
        .str("cr3 switched, ")
        .dec(checks.len() as u64)
        .str(" alias checks ok\n");
    // The root lies below 1 GiB (in the work area), so it fits the port's 32 bits.
    outl(READY_PORT, root as u32);
    EXIT_OK
}

/// Builds every mapping; returns the root and the number of tables, or the failing mapping.
fn build_tables(
    ram: &GuestRam,
    work: u64,
    image_end: u64,
    sizes: PageSizes,
    features: &Features,
) -> Result<(u64, usize), (&'static str, BuildError)> {
    let format = X86Format::new()
        .with_max_phys_bits(features.max_phys_bits)
        .with_gbpages(sizes.contains(PageSize::Size1G));
    let frames = BumpAllocator::new(work, work + TABLES_LEN);
    let mut builder =
        TableBuilder::new(format, ram, frames, sizes).map_err(|error| ("root", error))?;
    for m in mappings(work, image_end) {
        builder
            .map(m.virt, m.phys, m.len, m.flags)
            .map_err(|error| (m.name, error))?;
    }
    Ok((builder.root(), builder.tables_allocated()))
}

/// Prints which mapping failed and why.
fn report_build_error(console: &mut Console, name: &str, error: BuildError) {
    let (what, address) = match error {
        BuildError::Misaligned(a) => ("misaligned", Some(a)),
        BuildError::InputOutOfRange(a) => ("input out of range", Some(a)),
        BuildError::OutputOutOfRange(a) => ("output out of range", Some(a)),
        BuildError::NoPageSize(a) => ("no page size fits", Some(a)),
        BuildError::AlreadyMapped(a) => ("already mapped", Some(a)),
        BuildError::InvalidFlags => ("invalid flags", None),
        BuildError::OutOfFrames => ("out of table frames", None),
        BuildError::BadFrame(a) => ("bad frame", Some(a)),
        BuildError::Corrupt(a) => ("corrupt entry", Some(a)),
        BuildError::Memory(e) => ("table memory out of range", Some(e.address())),
    };
    console
        .line()
        .str("mapping ")
        .str(name)
        .str(" failed: ")
        .str(what);
    if let Some(address) = address {
        console.str(" at ").hex(address);
    }
    console.str("\n");
}
