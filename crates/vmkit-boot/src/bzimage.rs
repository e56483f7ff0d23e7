//! The Linux 64-bit boot protocol: load a bzImage, its command line and initramfs, and write the
//! zero page (`boot_params`).
//!
//! A bzImage is a boot sector and real-mode setup code, then the protected-mode kernel: a
//! decompressor with the compressed kernel inside. With the 64-bit boot protocol (boot protocol
//! 2.12 and later, `XLF_KERNEL_64`) the real-mode part never runs: the loader copies the setup
//! header into a zero page, loads the protected-mode kernel at 1 MiB and starts it at its 64-bit
//! entry, 0x200 bytes in, in long mode with `rsi` pointing at the zero page. This is how
//! Firecracker and Cloud Hypervisor boot a distribution's `vmlinuz`.
//!
//! # Guest physical layout
//!
//! | address | content | size |
//! |---|---|---|
//! | [`BOOT_GDT_ADDR`] `0x500` | kept for the boot GDT, which the vCPU layer writes | [`BOOT_GDT_CAPACITY`] `0x100` bytes (vmkit-vcpu's long-mode GDT takes 48) |
//! | [`ZERO_PAGE_ADDR`] `0x7000` | the zero page (`boot_params`) | [`ZERO_PAGE_SIZE`] 4 KiB |
//! | [`BOOT_STACK_START`] `0x8000` | the initial stack, top at [`BOOT_STACK_POINTER`] `0x8ff0` | 4 KiB |
//! | [`PAGE_TABLES_START`] `0x9000` | nothing: kept free for the [boot page tables](crate::page_tables) | up to [`PAGE_TABLES_END`] `0xf000` |
//! | [`CMDLINE_ADDR`] `0x20000` | command line, NUL-terminated | ≤ [`CMDLINE_CAPACITY`] bytes |
//! | `0xe0000`..`0x100000` | nothing: the ACPI tables and SMBIOS go here, reserved in the memory map | |
//! | [`KERNEL_LOAD_ADDR`] `0x100000` | the protected-mode kernel; 64-bit entry at `+0x200` | the file past the setup sectors |
//! | runtime start | kept free: the kernel decompresses itself here | `init_size` |
//! | top of RAM below `initrd_addr_max` and 4 GiB | the initramfs, 4 KiB aligned | as given |
//!
//! The areas below 1 MiB ([`BOOT_DATA_AREAS`]) lie in conventional memory, usable RAM in the
//! memory map, as in Firecracker (GDT `0x500`, zero page `0x7000`, stack `0x8ff0`, command line
//! `0x20000`); Linux keeps its allocator out of the first MiB and copies the zero page and the
//! command line before it needs the memory. The loader checks that they lie in usable RAM
//! backed by guest memory. Nothing vmkit-boot places lands in the boot page-table window or the
//! legacy BIOS area.
//!
//! The **runtime start** is where the kernel decompresses itself, and `init_size` is how much
//! contiguous memory it needs there before it reads its memory map. The kernel's 64-bit entry
//! code computes it: a relocatable kernel takes its load address aligned up to
//! `kernel_alignment`, but not below `pref_address`; any other kernel takes `pref_address`
//! ([`BzImage::runtime_start`]). For a distribution kernel loaded at 1 MiB that is 16 MiB and
//! `init_size` is eight times the file or more (a Debian kernel of 8 MiB asks for 64 MiB), so a
//! guest needs some 80 MiB of RAM to boot it; a smaller one gets
//! [`BzImageError::DecompressionOutOfMemory`] naming the sizes. The range must lie in usable RAM
//! below 4 GiB and clear of the boot structures; it may overlap the protected-mode kernel (the
//! kernel moves itself out of the way). The initramfs goes as high as the protocol allows
//! (`initrd_addr_max`, and 4 GiB even when `XLF_CAN_BE_LOADED_ABOVE_4G` would allow more), in
//! usable RAM from 1 MiB up, clear of the kernel, its runtime range and the boot structures.
//!
//! # Checks, then writes
//!
//! Everything is checked before a byte of guest memory is written: the image
//! ([`BzImage::parse`]), the command line (at most `cmdline_size` bytes from the header and
//! `CMDLINE_CAPACITY - 1`, no NUL), the memory map (1 to [`MAX_E820_ENTRIES`] entries), the
//! boot structures, the kernel and its runtime range in usable RAM, and a place for the
//! initramfs. Then linux-loader's bzImage loader copies the protected-mode kernel: it reads the
//! header again and checks only the magic, protocol 2.00 and `LOADED_HIGH`, all implied by the
//! checks here, so it runs last and cannot fail half-way on bad input. The initramfs, the
//! command line and the zero page follow.
//!
//! # The zero page
//!
//! All zero, but for: the setup header copied from the image (`0x1F1` up to its end, `0x202`
//! plus the byte at `0x201`), then `type_of_loader` `0xff` (no assigned loader ID), `vid_mode`
//! `0xffff` ("normal"), `CAN_USE_HEAP` cleared (there is no real-mode heap), `code32_start` the
//! load address, `cmd_line_ptr`, `ramdisk_image`/`ramdisk_size` (with their `ext_` high
//! halves), `setup_data` 0 (no list; an image cannot point the kernel at memory of its
//! choosing), `hardware_subarch` PC; the e820 table from the memory map; and `acpi_rsdp_addr`
//! when the kernel speaks protocol 2.14 or later (older kernels find the RSDP by scanning the
//! EBDA and the BIOS area, so the VMM puts it where the first probe finds it).
//!
//! # Entry state
//!
//! [`LinuxBoot`] carries what vmkit-vcpu's `LongModeEntry` needs: the 64-bit entry point
//! (RIP), the zero page (RSI), where to write the boot GDT and the stack pointer. The page
//! tables come from [`build_boot_page_tables`](crate::build_boot_page_tables): they
//! identity-map `[0, 4 GiB)`, which covers the kernel and its runtime range, the zero page, the
//! command line, the GDT and the stack, as the protocol asks.

#[cfg(any(test, feature = "test-utils"))]
mod builder;
mod header;
#[cfg(test)]
mod tests;

use std::io::Cursor;
use std::ops::Range;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{E820_MAX_ENTRIES_ZEROPAGE, boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage as BzImageLoader;
use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit_memory::MemoryMapEntry;
use vmkit_memory::layout::{BIOS_AREA_START, EBDA_START, HIGH_MEMORY_START};

#[cfg(any(test, feature = "test-utils"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
pub use builder::BzImageBuilder;
pub(crate) use header::has_bzimage_magic;
pub use header::{
    BzImage, CAN_USE_HEAP, KERNEL_64_ENTRY_OFFSET, LOADED_HIGH, MIN_BOOT_PROTOCOL,
    MIN_SETUP_HEADER_END, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64,
};

use crate::boot_data::{BootDataError, UsableRam, check_cmdline, highest_fit, usable_ram};
use crate::page_tables::{IDENTITY_MAP_END, PAGE_TABLES_END, PAGE_TABLES_START};
use crate::pvh::{self, write_cmdline};

/// Why a bzImage could not be loaded ([`load_bzimage`]). Every problem with the image or the
/// configuration is found before anything is written to guest memory; only the last three
/// variants (writing guest memory) can leave a partial load.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum BzImageError {
    /// the image is not a bzImage: it lacks the boot sector signature 0xAA55 at 0x1FE or the "HdrS"
    /// magic at 0x202
    NotBzImage,
    /// the bzImage speaks boot protocol {major}.{minor:02}; the 64-bit boot protocol needs 2.12 or
    /// later
    BootProtocolTooOld {
        /// The major version: the high byte of the header's `version`.
        major: u8,
        /// The minor version: the low byte of the header's `version`.
        minor: u8,
    },
    /// the bzImage's setup header ends at {end:#x}, past the end of the {len}-byte image
    SetupHeaderOutOfFile {
        /// One past the header's last byte.
        end: usize,
        /// Size of the image in bytes.
        len: usize,
    },
    /// the bzImage's setup header ends at {end:#x} (0x202 plus the signed byte at 0x201), before
    /// the end of init_size at 0x264
    SetupHeaderTooShort {
        /// One past the header's last byte.
        end: usize,
    },
    /// the bzImage has no 64-bit entry point: XLF_KERNEL_64 is clear in xloadflags {xloadflags:#x}
    No64BitEntry {
        /// The header's `xloadflags`.
        xloadflags: u16,
    },
    /// the bzImage's kernel does not load at 1 MiB: LOADED_HIGH is clear in loadflags
    /// {loadflags:#x}
    NotLoadedHigh {
        /// The header's `loadflags`.
        loadflags: u8,
    },
    /// the bzImage holds {kernel_size:#x} bytes of protected-mode kernel after {setup_size:#x}
    /// bytes of setup; its 64-bit entry at offset 0x200 needs more
    KernelTooShort {
        /// Boot sector and setup sectors, in bytes.
        setup_size: usize,
        /// What is left of the image for the protected-mode kernel.
        kernel_size: usize,
    },
    /// the bzImage's init_size {init_size:#x} is smaller than its protected-mode kernel
    /// ({kernel_size:#x} bytes), which the runtime range must hold
    InitSizeTooSmall {
        /// The header's `init_size`.
        init_size: u32,
        /// Size of the protected-mode kernel in bytes.
        kernel_size: usize,
    },
    /// the relocatable bzImage's kernel_alignment {alignment:#x} is not a power of two
    BadKernelAlignment {
        /// The header's `kernel_alignment`.
        alignment: u32,
    },
    /// the protected-mode kernel ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that the
    /// memory map reports usable
    KernelOutOfMemory {
        /// The load address.
        addr: u64,
        /// Size of the protected-mode kernel.
        size: u64,
    },
    /// the kernel needs {size:#x} bytes (init_size) of usable guest RAM below 4 GiB from {start:#x}
    /// to decompress itself; {available:#x} are there
    DecompressionOutOfMemory {
        /// The kernel's runtime start.
        start: u64,
        /// The header's `init_size`.
        size: u64,
        /// Bytes of usable RAM below 4 GiB from `start` on.
        available: u64,
    },
    /// the kernel's runtime range ({size:#x} bytes from {start:#x}) overlaps the boot structures or
    /// the boot page tables
    DecompressionOverlapsBootData {
        /// The kernel's runtime start.
        start: u64,
        /// The header's `init_size`.
        size: u64,
    },
    /// the initramfs is empty
    EmptyInitramfs,
    /// the initramfs ({size:#x} bytes) does not fit in free usable guest RAM between 1 MiB and
    /// {limit:#x}
    InitramfsDoesNotFit {
        /// Size of the initramfs in bytes.
        size: u64,
        /// The initramfs must end at or below this address: `initrd_addr_max + 1`, at most
        /// 4 GiB.
        limit: u64,
    },
    /// the command line, the memory map or the boot structures do not fit
    BootData(#[from] BootDataError),
    /// the kernel loader failed
    Loader(#[source] linux_loader::loader::Error),
    /// writing the boot structures failed
    BootParams(#[source] linux_loader::configurator::Error),
    /// writing guest memory failed
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Where the protected-mode kernel is loaded: 1 MiB, where a bzImage loads (`LOADED_HIGH`).
pub const KERNEL_LOAD_ADDR: GuestAddress = GuestAddress(HIGH_MEMORY_START);
/// Guest physical address of the zero page (`boot_params`), passed in `rsi`.
pub const ZERO_PAGE_ADDR: GuestAddress = GuestAddress(0x7000);
/// Size of the zero page.
pub const ZERO_PAGE_SIZE: u64 = 0x1000;
/// Guest physical address kept for the boot GDT, which the vCPU layer writes.
pub const BOOT_GDT_ADDR: GuestAddress = GuestAddress(0x500);
/// Bytes kept for the boot GDT: 32 descriptors (vmkit-vcpu's long-mode GDT takes 48 bytes).
pub const BOOT_GDT_CAPACITY: u64 = 0x100;
/// First byte of the initial stack's page.
pub const BOOT_STACK_START: u64 = 0x8000;
/// The initial stack pointer (`rsp`): 16 bytes below the top of the stack page.
pub const BOOT_STACK_POINTER: GuestAddress = GuestAddress(0x8ff0);
/// Guest physical address of the NUL-terminated command line: where PVH puts it too.
pub const CMDLINE_ADDR: GuestAddress = pvh::CMDLINE_ADDR;
/// Bytes kept for the command line, including its NUL. The kernel's own `cmdline_size` (2047
/// bytes for current kernels) is usually the tighter limit.
pub const CMDLINE_CAPACITY: usize = pvh::CMDLINE_CAPACITY;
/// The most memory-map entries the zero page's e820 table holds.
pub const MAX_E820_ENTRIES: usize = E820_MAX_ENTRIES_ZEROPAGE;
/// Alignment of the initramfs in guest memory.
pub const INITRAMFS_ALIGN: u64 = pvh::MODULE_ALIGN;
/// The initramfs lies below this address (and below `initrd_addr_max`).
pub const INITRAMFS_LIMIT: u64 = 1 << 32;
/// `type_of_loader`: a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `vid_mode` "normal": keep the current video mode.
pub const VID_MODE_NORMAL: u16 = 0xffff;
/// The fixed areas of the boot structures below 1 MiB, as `(first address, size)`: the boot
/// GDT, the zero page, the stack and the command line.
pub const BOOT_DATA_AREAS: [(u64, u64); 4] = [
    (BOOT_GDT_ADDR.0, BOOT_GDT_CAPACITY),
    (ZERO_PAGE_ADDR.0, ZERO_PAGE_SIZE),
    (BOOT_STACK_START, 0x1000),
    (CMDLINE_ADDR.0, CMDLINE_CAPACITY as u64),
];

const _: () = {
    assert!(size_of::<boot_params>() as u64 == ZERO_PAGE_SIZE);
    assert!(BOOT_GDT_CAPACITY >= 48);
    assert!(BOOT_STACK_START < BOOT_STACK_POINTER.0);
    assert!(BOOT_STACK_POINTER.0 < BOOT_STACK_START + 0x1000);
    assert!(BOOT_STACK_POINTER.0.is_multiple_of(16));
    assert!(INITRAMFS_LIMIT <= IDENTITY_MAP_END);
    // The areas are sorted, disjoint, in conventional memory, and clear of the page tables.
    let mut i = 0;
    while i < BOOT_DATA_AREAS.len() {
        let (addr, size) = BOOT_DATA_AREAS[i];
        assert!(addr + size <= PAGE_TABLES_START || PAGE_TABLES_END <= addr);
        assert!(addr + size <= EBDA_START && EBDA_START < BIOS_AREA_START);
        if i > 0 {
            let (previous, previous_size) = BOOT_DATA_AREAS[i - 1];
            assert!(previous + previous_size <= addr);
        }
        i += 1;
    }
};

/// What to pass to a Linux kernel besides its image.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxConfig<'a> {
    /// The command line: no NUL, at most the kernel's `cmdline_size` and
    /// `CMDLINE_CAPACITY - 1` bytes.
    pub cmdline: &'a str,
    /// The initramfs (or initrd), if any; not empty.
    pub initramfs: Option<&'a [u8]>,
    /// Guest physical address of the ACPI RSDP, if the VMM wrote ACPI tables.
    pub rsdp: Option<GuestAddress>,
}

impl<'a> LinuxConfig<'a> {
    /// A configuration with a command line, no initramfs and no ACPI tables.
    pub fn new(cmdline: &'a str) -> Self {
        LinuxConfig {
            cmdline,
            ..Self::default()
        }
    }
}

/// A loaded Linux kernel: the entry state of the 64-bit boot protocol and where everything went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// The 64-bit entry point (RIP): the load address plus 0x200.
    pub entry: GuestAddress,
    /// The zero page (`boot_params`), passed in RSI.
    pub boot_params: GuestAddress,
    /// Where the vCPU layer writes the boot GDT ([`BOOT_GDT_CAPACITY`] bytes are kept).
    pub gdt: GuestAddress,
    /// The initial stack pointer (RSP).
    pub stack_pointer: GuestAddress,
    /// The NUL-terminated command line.
    pub cmdline: GuestAddress,
    /// Where the protected-mode kernel was loaded.
    pub kernel: Range<u64>,
    /// The range kept free for the kernel to decompress into: `init_size` bytes from its
    /// runtime start.
    pub runtime: Range<u64>,
    /// Where the initramfs was placed, if one was given.
    pub initramfs: Option<Range<u64>>,
    /// The image's boot protocol version, `(major << 8) | minor`.
    pub protocol_version: u16,
}

/// Loads the bzImage `image` into `guest_mem` for the 64-bit boot protocol, with the command
/// line and initramfs of `config`, and writes the zero page.
///
/// `memory_map` is the guest's memory map (for example
/// [`GuestLayout::memory_map`](vmkit_memory::GuestLayout::memory_map), with the ACPI tables
/// marked); it becomes the zero page's e820 table, and the kernel, its runtime range, the boot
/// structures and the initramfs must lie in RAM it reports usable (and that `guest_mem` backs).
///
/// Everything is validated before anything is written (see the
/// [module documentation](crate::bzimage)); every problem is a [`BzImageError`] naming it. The
/// image is taken as bytes so that what is validated is exactly what is loaded.
pub fn load_bzimage<M: GuestMemoryBackend>(
    guest_mem: &M,
    memory_map: &[MemoryMapEntry],
    image: &[u8],
    config: &LinuxConfig<'_>,
) -> Result<LinuxBoot, BzImageError> {
    let result = load(guest_mem, memory_map, image, config);
    match &result {
        Ok(boot) => debug!(
            "bzImage loaded: protocol {:#06x}, kernel {:#x}..{:#x}, runtime {:#x}..{:#x}, \
             initramfs {:x?}",
            boot.protocol_version,
            boot.kernel.start,
            boot.kernel.end,
            boot.runtime.start,
            boot.runtime.end,
            boot.initramfs
        ),
        Err(error) => debug!("bzImage rejected: {error}"),
    }
    result
}

fn load<M: GuestMemoryBackend>(
    guest_mem: &M,
    memory_map: &[MemoryMapEntry],
    image: &[u8],
    config: &LinuxConfig<'_>,
) -> Result<LinuxBoot, BzImageError> {
    let bz = BzImage::parse(image)?;
    check_kernel_cmdline(config.cmdline, bz.cmdline_size())?;
    if config.initramfs.is_some_and(<[u8]>::is_empty) {
        return Err(BzImageError::EmptyInitramfs);
    }
    let ram = usable_ram(memory_map, MAX_E820_ENTRIES, guest_mem, &BOOT_DATA_AREAS)?;
    let kernel_size = bz.kernel_size();
    if !ram.contains(KERNEL_LOAD_ADDR.0, kernel_size) {
        return Err(BzImageError::KernelOutOfMemory {
            addr: KERNEL_LOAD_ADDR.0,
            size: kernel_size,
        });
    }
    let kernel = KERNEL_LOAD_ADDR.0..KERNEL_LOAD_ADDR.0 + kernel_size;
    let runtime = runtime_range(&bz, &ram)?;
    let initramfs = match config.initramfs {
        Some(bytes) => {
            let taken: Vec<(u64, u64)> = BOOT_DATA_AREAS
                .iter()
                .map(|&(addr, size)| (addr, addr + size))
                .chain([
                    (PAGE_TABLES_START, PAGE_TABLES_END),
                    (kernel.start, kernel.end),
                    (runtime.start, runtime.end),
                ])
                .collect();
            Some(place_initramfs(&ram, &bz, bytes.len() as u64, &taken)?)
        }
        None => None,
    };

    // Everything is validated: write guest memory.
    BzImageLoader::load(
        guest_mem,
        Some(KERNEL_LOAD_ADDR),
        &mut Cursor::new(image),
        None,
    )
    .map_err(BzImageError::Loader)?;
    if let (Some(range), Some(bytes)) = (&initramfs, config.initramfs) {
        guest_mem
            .write_slice(bytes, GuestAddress(range.start))
            .map_err(BzImageError::GuestMemory)?;
    }
    write_cmdline(guest_mem, config.cmdline).map_err(BzImageError::GuestMemory)?;
    let params = zero_page(&bz, image, memory_map, initramfs.as_ref(), config.rsdp);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, ZERO_PAGE_ADDR), guest_mem)
        .map_err(BzImageError::BootParams)?;

    Ok(LinuxBoot {
        entry: GuestAddress(KERNEL_LOAD_ADDR.0 + KERNEL_64_ENTRY_OFFSET),
        boot_params: ZERO_PAGE_ADDR,
        gdt: BOOT_GDT_ADDR,
        stack_pointer: BOOT_STACK_POINTER,
        cmdline: CMDLINE_ADDR,
        kernel,
        runtime,
        initramfs,
        protocol_version: bz.protocol_version(),
    })
}

/// Checks the command line against the kernel's `cmdline_size` and the command-line area.
fn check_kernel_cmdline(cmdline: &str, cmdline_size: u64) -> Result<(), BootDataError> {
    let max = usize::try_from(cmdline_size)
        .unwrap_or(usize::MAX)
        .min(CMDLINE_CAPACITY - 1);
    check_cmdline(cmdline, max)
}

/// The kernel's runtime range, `init_size` bytes from its runtime start: it must lie in usable
/// RAM below 4 GiB (the boot page tables map it) and clear of the boot structures.
fn runtime_range<M: GuestMemoryBackend>(
    bz: &BzImage,
    ram: &UsableRam<'_, M>,
) -> Result<Range<u64>, BzImageError> {
    let size = bz.init_size();
    // Aligning 1 MiB up to a 32-bit power of two cannot overflow.
    let start = bz.runtime_start(KERNEL_LOAD_ADDR.0).unwrap_or(u64::MAX);
    let end = start
        .checked_add(size)
        .filter(|&end| end <= IDENTITY_MAP_END);
    let Some(end) = end.filter(|_| ram.contains(start, size)) else {
        // How much usable RAM below 4 GiB there is from `start`, for the message.
        let available = ram
            .ranges
            .iter()
            .find(|&&(from, to)| from <= start && start < to)
            .map_or(0, |&(_, to)| to.min(IDENTITY_MAP_END).saturating_sub(start));
        return Err(BzImageError::DecompressionOutOfMemory {
            start,
            size,
            available,
        });
    };
    let overlaps = BOOT_DATA_AREAS
        .iter()
        .map(|&(addr, size)| (addr, addr + size))
        .chain([(PAGE_TABLES_START, PAGE_TABLES_END)])
        .any(|(from, to)| start < to && from < end);
    if overlaps {
        return Err(BzImageError::DecompressionOverlapsBootData { start, size });
    }
    Ok(start..end)
}

/// The highest [`INITRAMFS_ALIGN`]-aligned place for `size` bytes in usable RAM from 1 MiB,
/// below `initrd_addr_max + 1` and [`INITRAMFS_LIMIT`], clear of `taken`.
fn place_initramfs<M: GuestMemoryBackend>(
    ram: &UsableRam<'_, M>,
    bz: &BzImage,
    size: u64,
    taken: &[(u64, u64)],
) -> Result<Range<u64>, BzImageError> {
    let limit = bz.initrd_addr_max().saturating_add(1).min(INITRAMFS_LIMIT);
    ram.ranges
        .iter()
        .rev()
        .find_map(|&(start, end)| {
            highest_fit(start.max(HIGH_MEMORY_START), end.min(limit), size, taken)
        })
        .filter(|&addr| ram.contains(addr, size))
        .map(|addr| addr..addr + size)
        .ok_or(BzImageError::InitramfsDoesNotFit { size, limit })
}

/// The zero page: the image's setup header with the loader's fields set, the e820 table and the
/// RSDP address.
fn zero_page(
    bz: &BzImage,
    image: &[u8],
    memory_map: &[MemoryMapEntry],
    initramfs: Option<&Range<u64>>,
    rsdp: Option<GuestAddress>,
) -> boot_params {
    let mut params = bz.zero_page(image);
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.vid_mode = VID_MODE_NORMAL;
    params.hdr.loadflags &= !CAN_USE_HEAP;
    // The load address and the command line lie below 4 GiB (checked against the memory map).
    params.hdr.code32_start = KERNEL_LOAD_ADDR.0 as u32;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR.0 as u32;
    params.ext_cmd_line_ptr = 0;
    let (image_addr, size) =
        initramfs.map_or((0, 0), |range| (range.start, range.end - range.start));
    params.hdr.ramdisk_image = image_addr as u32;
    params.hdr.ramdisk_size = size as u32;
    params.ext_ramdisk_image = (image_addr >> 32) as u32;
    params.ext_ramdisk_size = (size >> 32) as u32;
    params.hdr.setup_data = 0;
    params.hdr.hardware_subarch = 0;
    params.hdr.hardware_subarch_data = 0;
    for (slot, entry) in params.e820_table.iter_mut().zip(memory_map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.e820_type(),
        };
    }
    // Checked against MAX_E820_ENTRIES (128).
    params.e820_entries = memory_map.len() as u8;
    if bz.takes_rsdp() {
        params.acpi_rsdp_addr = rsdp.map_or(0, |addr| addr.0);
    }
    params
}
