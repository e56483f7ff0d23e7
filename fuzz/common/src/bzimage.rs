//! Fuzz surface `bzimage_loader`: [`vmkit_boot::load_bzimage`] on bzImage-ish bytes into a small
//! guest.
//!
//! The image is either raw input bytes or, to get deep quickly, a valid bzImage skeleton (one
//! setup sector, a 2 KiB protected-mode kernel, a runtime range of 2 MiB at 4 MiB) with patches
//! applied: each patch writes a 1-, 2-, 4- or 8-byte little-endian value at an offset, so one
//! patch can replace any header field. The command line, the initramfs, the RSDP address and
//! the memory map (with or without a reserved megabyte at 6 MiB) vary too.
//!
//! Checked: nothing panics; `BzImage::parse` and `load_bzimage` agree on whether the image
//! itself is valid; validation is complete (no load fails in linux-loader or on a guest-memory
//! write); a rejected load writes nothing (sentinels every 16 KiB of RAM and at the fixed
//! places stay); a successful load writes only the kernel, the initramfs, the command line and
//! the zero page (every sentinel outside them stays, including those in the runtime range), puts
//! the kernel's bytes at 1 MiB, keeps the runtime range (`init_size` bytes from where the
//! kernel's entry code decompresses) in usable RAM below 4 GiB clear of the boot structures,
//! puts the initramfs in usable RAM from 1 MiB below `initrd_addr_max` and 4 GiB, aligned and
//! clear of everything else, and writes a zero page equal, byte for byte, to one built here from
//! the boot protocol's offsets.
//!
//! The input format: `flags: u8` (bit 0 raw image, bit 1 NUL in the command line, bit 2 an
//! RSDP address, bit 3 an initramfs, bit 4 the memory map with a reserved megabyte),
//! `cmdline length: u16`, `initramfs size: u16` (in 256-byte units), then either the raw image
//! or 11-byte patches (`offset: u16`, `width: u8`, `value: u64`), all little-endian; [`encode`]
//! writes seeds.

use std::cell::RefCell;

pub use crate::patched_image::{Image, MAX_PATCHES, Patch};
use crate::patched_image::{u8_at, u16_at};
use vmkit_boot::bzimage::{
    BOOT_DATA_AREAS, BzImage, BzImageBuilder, CMDLINE_ADDR, CMDLINE_CAPACITY, KERNEL_LOAD_ADDR,
    ZERO_PAGE_ADDR,
};
use vmkit_boot::page_tables::{PAGE_TABLES_END, PAGE_TABLES_START};
use vmkit_boot::{BzImageError, LinuxBoot, LinuxConfig, load_bzimage};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_memory::{GuestLayout, MemoryKind, MemoryMapEntry};

/// Guest RAM of the fuzzed guest: room for the skeleton's runtime range and an initramfs.
pub const RAM_SIZE: u64 = 8 << 20;
/// Longest command line generated (past the accepted maximum of 4095 bytes).
pub const MAX_CMDLINE: usize = 5000;
/// The megabyte the second memory map reports reserved.
pub const RESERVED: (u64, u64) = (6 << 20, 1 << 20);

const SENTINEL: u32 = 0x5e17_1e15;
const SENTINEL_STRIDE: u64 = 0x4000;
const MIB: u64 = 1 << 20;
const GIB_4: u64 = 1 << 32;
/// Initramfs sizes are capped at this many 256-byte units: just past the guest's RAM.
const INITRAMFS_UNITS_CAP: u16 = (RAM_SIZE / 256) as u16 + 1;

/// Bytes the initramfs is cut from.
fn initramfs_pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..usize::from(INITRAMFS_UNITS_CAP) * 256)
            .map(|i| (i % 253) as u8)
            .collect()
    })
}

/// A decoded input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Length of the command line (`'a'` bytes, with a NUL in the middle if `cmdline_nul`).
    pub cmdline_len: u16,
    /// Whether the command line contains a NUL.
    pub cmdline_nul: bool,
    /// Whether an RSDP address is passed.
    pub rsdp: bool,
    /// The initramfs size in 256-byte units, if one is passed.
    pub initramfs: Option<u16>,
    /// Whether the memory map reports [`RESERVED`] reserved.
    pub reserved_hole: bool,
    /// The image.
    pub image: Image,
}

/// The valid bzImage the patches start from. Offsets: setup header `0x1f1..0x26c`, kernel from
/// `0x400`.
pub fn skeleton() -> Vec<u8> {
    let mut kernel: Vec<u8> = (0..0x800).map(|i| (i % 241) as u8).collect();
    kernel[0x200..0x205].copy_from_slice(&[0x31, 0xc0, 0xe7, 0xf4, 0xf4]);
    BzImageBuilder::new()
        .setup_sects(1)
        .pref_address(0x40_0000)
        .init_size(0x20_0000)
        .kernel(&kernel)
        .build()
}

/// Decodes an input; missing bytes read as zero.
pub fn parse(data: &[u8]) -> Input {
    let mut pos = 0;
    let flags = u8_at(data, &mut pos);
    let cmdline_len = u16_at(data, &mut pos) % (MAX_CMDLINE as u16 + 1);
    let initramfs_units = u16_at(data, &mut pos);
    let rest = data.get(pos..).unwrap_or(&[]);
    let image = Image::decode(flags & 1 != 0, rest);
    Input {
        cmdline_len,
        cmdline_nul: flags & 2 != 0,
        rsdp: flags & 4 != 0,
        initramfs: (flags & 8 != 0).then_some(initramfs_units),
        reserved_hole: flags & 16 != 0,
        image,
    }
}

/// Encodes an input so that [`parse`] returns it.
pub fn encode(input: &Input) -> Vec<u8> {
    let raw = input.image.is_raw();
    let flags = u8::from(raw)
        | u8::from(input.cmdline_nul) << 1
        | u8::from(input.rsdp) << 2
        | u8::from(input.initramfs.is_some()) << 3
        | u8::from(input.reserved_hole) << 4;
    let mut out = vec![flags];
    out.extend_from_slice(&input.cmdline_len.to_le_bytes());
    out.extend_from_slice(&input.initramfs.unwrap_or(0).to_le_bytes());
    input.image.encode_into(&mut out);
    out
}

/// The image bytes of an input.
pub fn image_bytes(image: &Image) -> Vec<u8> {
    image.bytes(skeleton)
}

/// The command line of an input.
pub fn cmdline(input: &Input) -> String {
    let mut cmdline = "a".repeat(usize::from(input.cmdline_len));
    if input.cmdline_nul && !cmdline.is_empty() {
        cmdline.replace_range(cmdline.len() / 2..cmdline.len() / 2 + 1, "\0");
    }
    cmdline
}

/// The layout of an input's guest: plain, or with [`RESERVED`] reserved.
pub fn guest_layout(reserved_hole: bool) -> GuestLayout {
    let mut layout = GuestLayout::new(RAM_SIZE).expect("fuzz layout");
    if reserved_hole {
        layout
            .set_memory_kind(GuestAddress(RESERVED.0), RESERVED.1, MemoryKind::Reserved)
            .expect("reserved megabyte");
    }
    layout
}

struct Guest {
    layouts: [GuestLayout; 2],
    mem: GuestMemoryMmap,
}

thread_local! {
    /// One guest per thread, reused (and so dirty) across runs.
    static GUEST: RefCell<Option<Guest>> = const { RefCell::new(None) };
}

/// Target body.
pub fn run(data: &[u8]) {
    let input = parse(data);
    let image = image_bytes(&input.image);
    let cmdline = cmdline(&input);
    let initramfs = input.initramfs.map(|units| {
        let size = usize::from(units.min(INITRAMFS_UNITS_CAP)) * 256;
        &initramfs_pattern()[..size]
    });
    let config = LinuxConfig {
        cmdline: &cmdline,
        initramfs,
        rsdp: input.rsdp.then_some(GuestAddress(0xe_0000)),
    };
    GUEST.with(|guest| {
        let mut guest = guest.borrow_mut();
        let guest = guest.get_or_insert_with(|| {
            let layouts = [guest_layout(false), guest_layout(true)];
            let mem = layouts[0].create_guest_memory().expect("fuzz guest memory");
            Guest { layouts, mem }
        });
        let layout = &guest.layouts[usize::from(input.reserved_hole)];
        check(&guest.mem, layout.memory_map(), &image, &config);
    });
}

/// Usable RAM of `map`, merged.
fn usable_ranges(map: &[MemoryMapEntry]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.kind == MemoryKind::Ram)
        .map(|e| (e.addr, e.end()))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn is_usable(usable: &[(u64, u64)], start: u64, end: u64) -> bool {
    usable.iter().any(|&(from, to)| from <= start && end <= to)
}

fn disjoint(a: (u64, u64), b: (u64, u64)) -> bool {
    a.1 <= b.0 || b.1 <= a.0
}

fn check(mem: &GuestMemoryMmap, map: &[MemoryMapEntry], image: &[u8], config: &LinuxConfig<'_>) {
    let parsed = BzImage::parse(image);
    let usable = usable_ranges(map);

    // Sentinels that a rejected load must leave alone, and a successful one outside what it
    // writes.
    let mut sentinels: Vec<u64> = (0..RAM_SIZE).step_by(SENTINEL_STRIDE as usize).collect();
    sentinels.extend([ZERO_PAGE_ADDR.0 + 0x1f0, CMDLINE_ADDR.0 + 0x802]);
    if let Ok(bz) = &parsed {
        let kernel_end = KERNEL_LOAD_ADDR.0.saturating_add(bz.kernel_size());
        sentinels.push(kernel_end);
        if let Some(start) = bz.runtime_start(KERNEL_LOAD_ADDR.0) {
            sentinels.push(start);
            sentinels.push(start.saturating_add(bz.init_size()).saturating_sub(4));
        }
    }
    let mut placed: Vec<u64> = Vec::new();
    for addr in sentinels {
        // Sentinels are 4 bytes: one that overlaps another would corrupt it itself.
        if placed.iter().all(|s| s.abs_diff(addr) >= 4)
            && mem.write_obj(SENTINEL, GuestAddress(addr)).is_ok()
        {
            placed.push(addr);
        }
    }

    let result = load_bzimage(mem, map, image, config);
    let boot = match (result, &parsed) {
        (Err(error), _) => {
            assert!(!error.to_string().is_empty());
            assert!(
                !matches!(
                    error,
                    BzImageError::Loader(_)
                        | BzImageError::GuestMemory(_)
                        | BzImageError::BootParams(_)
                ),
                "validation missed a problem: {error}"
            );
            if let Err(parse_error) = &parsed {
                assert_eq!(
                    std::mem::discriminant(&error),
                    std::mem::discriminant(parse_error),
                    "load and parse disagree: {error} / {parse_error}"
                );
            }
            for addr in placed {
                assert_eq!(
                    mem.read_obj::<u32>(GuestAddress(addr)).ok(),
                    Some(SENTINEL),
                    "{error}: {addr:#x} written"
                );
            }
            return;
        }
        (Ok(_), Err(error)) => panic!("loaded an image that does not parse: {error}"),
        (Ok(boot), Ok(bz)) => {
            check_placement(&boot, bz, &usable, config);
            boot
        }
    };
    let Ok(bz) = parsed else { return };

    // Only the kernel, the initramfs, the command line and the zero page are written.
    let mut written = vec![
        (boot.kernel.start, boot.kernel.end),
        (ZERO_PAGE_ADDR.0, ZERO_PAGE_ADDR.0 + 0x1000),
        (
            CMDLINE_ADDR.0,
            CMDLINE_ADDR.0 + config.cmdline.len() as u64 + 1,
        ),
    ];
    written.extend(boot.initramfs.as_ref().map(|r| (r.start, r.end)));
    for addr in placed {
        if written
            .iter()
            .all(|&range| disjoint(range, (addr, addr + 4)))
        {
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(addr)).ok(),
                Some(SENTINEL),
                "{addr:#x} written"
            );
        }
    }

    // The bytes.
    let mut kernel = vec![0; image.len() - bz.kernel_range().start];
    mem.read_slice(&mut kernel, KERNEL_LOAD_ADDR)
        .expect("kernel readable");
    assert_eq!(kernel, &image[bz.kernel_range()]);
    if let (Some(range), Some(bytes)) = (&boot.initramfs, config.initramfs) {
        let mut content = vec![0; bytes.len()];
        mem.read_slice(&mut content, GuestAddress(range.start))
            .expect("initramfs readable");
        assert_eq!(content, bytes);
    }
    let mut line = vec![0xff; config.cmdline.len() + 1];
    mem.read_slice(&mut line, CMDLINE_ADDR)
        .expect("command line readable");
    assert_eq!(&line[..config.cmdline.len()], config.cmdline.as_bytes());
    assert_eq!(line[config.cmdline.len()], 0);

    let mut zero_page = vec![0; 0x1000];
    mem.read_slice(&mut zero_page, ZERO_PAGE_ADDR)
        .expect("zero page readable");
    assert_eq!(
        zero_page,
        expected_zero_page(image, &boot, map, config),
        "zero page"
    );
}

/// Where things went: the fixed addresses, the kernel, the runtime range, the initramfs.
fn check_placement(boot: &LinuxBoot, bz: &BzImage, usable: &[(u64, u64)], config: &LinuxConfig) {
    let boot_data: Vec<(u64, u64)> = BOOT_DATA_AREAS
        .iter()
        .map(|&(addr, size)| (addr, addr + size))
        .chain([(PAGE_TABLES_START, PAGE_TABLES_END)])
        .collect();
    for &(start, end) in &boot_data[..BOOT_DATA_AREAS.len()] {
        assert!(is_usable(usable, start, end));
    }
    let inside = |addr: u64| boot_data.iter().any(|&(s, e)| s <= addr && addr < e);
    assert!(inside(boot.boot_params.0) && inside(boot.gdt.0) && inside(boot.cmdline.0));
    assert!(inside(boot.stack_pointer.0 - 1));
    assert_eq!(boot.boot_params, ZERO_PAGE_ADDR);
    assert_eq!(boot.cmdline, CMDLINE_ADDR);
    assert!(config.cmdline.len() < CMDLINE_CAPACITY);
    assert!(config.cmdline.len() as u64 <= bz.cmdline_size());
    assert_eq!(boot.protocol_version, bz.protocol_version());

    assert_eq!(boot.entry.0, KERNEL_LOAD_ADDR.0 + 0x200);
    assert_eq!(
        boot.kernel,
        KERNEL_LOAD_ADDR.0..KERNEL_LOAD_ADDR.0 + bz.kernel_size()
    );
    assert!(boot.kernel.contains(&boot.entry.0));
    assert!(is_usable(usable, boot.kernel.start, boot.kernel.end));

    let start = bz.runtime_start(KERNEL_LOAD_ADDR.0).expect("runtime start");
    assert_eq!(boot.runtime, start..start + bz.init_size());
    let runtime = (boot.runtime.start, boot.runtime.end);
    assert!(runtime.1 <= GIB_4 && is_usable(usable, runtime.0, runtime.1));
    assert!(boot_data.iter().all(|&area| disjoint(area, runtime)));

    assert_eq!(boot.initramfs.is_some(), config.initramfs.is_some());
    if let (Some(range), Some(bytes)) = (&boot.initramfs, config.initramfs) {
        let placed = (range.start, range.end);
        assert_eq!(placed.1 - placed.0, bytes.len() as u64);
        assert!(placed.0.is_multiple_of(0x1000) && placed.0 >= MIB);
        assert!(placed.1 <= GIB_4 && placed.1 - 1 <= bz.initrd_addr_max());
        assert!(is_usable(usable, placed.0, placed.1));
        let kernel = (boot.kernel.start, boot.kernel.end);
        for other in boot_data.iter().copied().chain([kernel, runtime]) {
            assert!(
                disjoint(placed, other),
                "initramfs {placed:x?} on {other:x?}"
            );
        }
    }
}

/// The zero page the boot protocol asks for, built from its raw offsets.
fn expected_zero_page(
    image: &[u8],
    boot: &LinuxBoot,
    map: &[MemoryMapEntry],
    config: &LinuxConfig,
) -> Vec<u8> {
    let mut page = vec![0u8; 0x1000];
    let header_end = 0x202 + isize::from(image[0x201] as i8);
    let header_end = usize::try_from(header_end).expect("checked header end");
    page[0x1f1..header_end].copy_from_slice(&image[0x1f1..header_end]);
    let mut put = |offset: usize, bytes: &[u8]| {
        page[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    let (ramdisk, ramdisk_size) = boot
        .initramfs
        .as_ref()
        .map_or((0, 0), |r| (r.start, r.end - r.start));
    put(0x1fa, &0xffffu16.to_le_bytes()); // vid_mode
    put(0x210, &[0xff]); // type_of_loader
    put(0x211, &[image[0x211] & 0x7f]); // loadflags without CAN_USE_HEAP
    put(0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(0x218, &(ramdisk as u32).to_le_bytes());
    put(0x21c, &(ramdisk_size as u32).to_le_bytes());
    put(0x228, &(CMDLINE_ADDR.0 as u32).to_le_bytes());
    put(0x23c, &[0; 12]); // hardware_subarch, hardware_subarch_data
    put(0x250, &[0; 8]); // setup_data
    put(0xc0, &((ramdisk >> 32) as u32).to_le_bytes());
    put(0xc4, &((ramdisk_size >> 32) as u32).to_le_bytes());
    put(0x1e8, &[map.len() as u8]);
    for (index, entry) in map.iter().enumerate() {
        let at = 0x2d0 + index * 20;
        put(at, &entry.addr.to_le_bytes());
        put(at + 8, &entry.size.to_le_bytes());
        put(at + 16, &entry.kind.e820_type().to_le_bytes());
    }
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    if version >= 0x020e {
        put(0x70, &config.rsdp.map_or(0, |a| a.0).to_le_bytes());
    }
    page
}

/// Seed inputs: the skeleton as is, with an initramfs, command line and RSDP, with header
/// fields broken in the ways the loader must reject, and raw images.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let patch = |offset: u16, width: u8, value: u64| Patch {
        offset,
        width,
        value,
    };
    let patched = |patches: Vec<Patch>| Input {
        cmdline_len: 13,
        cmdline_nul: false,
        rsdp: false,
        initramfs: None,
        reserved_hole: false,
        image: Image::Patched(patches),
    };
    // Widths: 0 → 1 byte, 1 → 2, 2 → 4, 3 → 8.
    let seeds = vec![
        ("skeleton", patched(vec![])),
        (
            "initramfs_cmdline_rsdp",
            Input {
                cmdline_len: 300,
                rsdp: true,
                initramfs: Some(64),
                ..patched(vec![])
            },
        ),
        (
            "initramfs_around_reserved",
            Input {
                initramfs: Some(0x1800),
                reserved_hole: true,
                ..patched(vec![])
            },
        ),
        (
            "initramfs_too_big",
            Input {
                initramfs: Some(0x7000),
                ..patched(vec![])
            },
        ),
        (
            "initramfs_empty",
            Input {
                initramfs: Some(0),
                ..patched(vec![])
            },
        ),
        (
            "initrd_addr_max_low",
            Input {
                initramfs: Some(16),
                ..patched(vec![patch(0x22c, 2, 0x10_1fff)])
            },
        ),
        (
            "cmdline_past_cmdline_size",
            Input {
                cmdline_len: 2048,
                ..patched(vec![])
            },
        ),
        (
            "cmdline_nul",
            Input {
                cmdline_nul: true,
                ..patched(vec![])
            },
        ),
        ("protocol_2_11", patched(vec![patch(0x206, 1, 0x020b)])),
        (
            "protocol_2_13",
            Input {
                rsdp: true,
                ..patched(vec![patch(0x206, 1, 0x020d)])
            },
        ),
        ("no_boot_flag", patched(vec![patch(0x1fe, 1, 0)])),
        ("no_64_bit_entry", patched(vec![patch(0x236, 1, 0x2)])),
        ("not_loaded_high", patched(vec![patch(0x211, 0, 0x80)])),
        ("header_too_short", patched(vec![patch(0x201, 0, 0x40)])),
        ("header_backwards", patched(vec![patch(0x201, 0, 0xf0)])),
        ("setup_sects_past_file", patched(vec![patch(0x1f1, 0, 9)])),
        (
            "setup_sects_zero_means_four",
            patched(vec![patch(0x1f1, 0, 0)]),
        ),
        ("init_size_small", patched(vec![patch(0x260, 2, 0x7ff)])),
        ("init_size_huge", patched(vec![patch(0x260, 2, 0x80_0000)])),
        (
            "alignment_not_power",
            patched(vec![patch(0x230, 2, 0x3000)]),
        ),
        (
            "fixed_on_boot_data",
            patched(vec![
                patch(0x234, 0, 0),
                patch(0x258, 3, 0x8000),
                patch(0x260, 2, 0x1000),
            ]),
        ),
        (
            "fixed_at_2_mib",
            patched(vec![patch(0x234, 0, 0), patch(0x258, 3, 0x20_0000)]),
        ),
        (
            "pref_above_4_gib",
            patched(vec![patch(0x258, 3, 0x1_0000_0000)]),
        ),
        (
            "runtime_at_1_mib",
            Input {
                initramfs: Some(4),
                ..patched(vec![patch(0x258, 3, 0), patch(0x230, 2, 0x1000)])
            },
        ),
        (
            "hostile_loader_fields",
            patched(vec![
                patch(0x250, 3, 0x1234_5678),
                patch(0x211, 0, 0xe1),
                patch(0x23c, 2, 2),
                patch(0x218, 3, u64::MAX),
            ]),
        ),
        (
            "empty_raw",
            Input {
                image: Image::Raw(Vec::new()),
                ..patched(vec![])
            },
        ),
        (
            "raw_truncated_header",
            Input {
                image: Image::Raw(skeleton()[..0x240].to_vec()),
                ..patched(vec![])
            },
        ),
        (
            "raw_skeleton",
            Input {
                image: Image::Raw(skeleton()),
                ..patched(vec![])
            },
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, input)| (name, encode(&input)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_round_trip_and_pass() {
        for (name, bytes) in seeds() {
            assert_eq!(encode(&parse(&bytes)), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn seeds_load_or_fail_as_intended() {
        let mem = guest_layout(false).create_guest_memory().unwrap();
        let mut outcomes = Vec::new();
        for (name, bytes) in seeds() {
            let input = parse(&bytes);
            let image = image_bytes(&input.image);
            let cmdline = cmdline(&input);
            let initramfs = input
                .initramfs
                .map(|units| vec![1; usize::from(units) * 256]);
            let config = LinuxConfig {
                cmdline: &cmdline,
                initramfs: initramfs.as_deref(),
                rsdp: None,
            };
            let layout = guest_layout(input.reserved_hole);
            let outcome = match load_bzimage(&mem, layout.memory_map(), &image, &config) {
                Ok(_) => "Ok".to_owned(),
                Err(BzImageError::BootData(error)) => format!("{error:?}"),
                Err(error) => format!("{error:?}"),
            }
            .split([' ', '(', '{'])
            .next()
            .unwrap()
            .to_owned();
            outcomes.push((name, outcome));
        }
        let expected = [
            ("skeleton", "Ok"),
            ("initramfs_cmdline_rsdp", "Ok"),
            ("initramfs_around_reserved", "Ok"),
            ("initramfs_too_big", "InitramfsDoesNotFit"),
            ("initramfs_empty", "EmptyInitramfs"),
            ("initrd_addr_max_low", "Ok"),
            ("cmdline_past_cmdline_size", "CmdlineTooLong"),
            ("cmdline_nul", "CmdlineHasNul"),
            ("protocol_2_11", "BootProtocolTooOld"),
            ("protocol_2_13", "Ok"),
            ("no_boot_flag", "NotBzImage"),
            ("no_64_bit_entry", "No64BitEntry"),
            ("not_loaded_high", "NotLoadedHigh"),
            ("header_too_short", "SetupHeaderTooShort"),
            ("header_backwards", "SetupHeaderTooShort"),
            ("setup_sects_past_file", "KernelTooShort"),
            ("setup_sects_zero_means_four", "KernelTooShort"),
            ("init_size_small", "InitSizeTooSmall"),
            ("init_size_huge", "DecompressionOutOfMemory"),
            ("alignment_not_power", "BadKernelAlignment"),
            ("fixed_on_boot_data", "DecompressionOverlapsBootData"),
            ("fixed_at_2_mib", "Ok"),
            ("pref_above_4_gib", "DecompressionOutOfMemory"),
            ("runtime_at_1_mib", "Ok"),
            ("hostile_loader_fields", "Ok"),
            ("empty_raw", "NotBzImage"),
            ("raw_truncated_header", "SetupHeaderOutOfFile"),
            ("raw_skeleton", "Ok"),
        ];
        let expected: Vec<(&str, String)> =
            expected.iter().map(|&(n, o)| (n, o.to_owned())).collect();
        assert_eq!(outcomes, expected);
    }

    #[test]
    fn the_reserved_megabyte_moves_the_initramfs() {
        let input = parse(&seeds()[2].1);
        let initramfs = vec![1; usize::from(input.initramfs.unwrap()) * 256];
        let config = LinuxConfig {
            initramfs: Some(&initramfs),
            ..LinuxConfig::default()
        };
        let image = image_bytes(&input.image);
        let place = |reserved: bool| {
            let layout = guest_layout(reserved);
            let mem = layout.create_guest_memory().unwrap();
            load_bzimage(&mem, layout.memory_map(), &image, &config)
                .unwrap()
                .initramfs
                .unwrap()
        };
        // 1.5 MiB: at the top of RAM, or below the reserved megabyte and the runtime range.
        assert_eq!(place(false), RAM_SIZE - 0x18_0000..RAM_SIZE);
        assert_eq!(place(true), 0x40_0000 - 0x18_0000..0x40_0000);
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("bzimage_loader", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[1]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        let mut raw = vec![1, 0, 0, 0, 0];
        raw.extend_from_slice(&skeleton());
        for cut in (0..raw.len()).step_by(7) {
            run(&raw[..cut]);
        }
    }

    #[test]
    #[ignore]
    fn write_bzimage_seeds() {
        seed_files::write("bzimage_loader", &seeds());
    }
}
