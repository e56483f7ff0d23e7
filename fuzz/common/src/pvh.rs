//! Fuzz surface `pvh_loader`: [`vmkit_boot::load_pvh`] on ELF-ish bytes into a small guest.
//!
//! The image is either raw input bytes or, to get deep quickly, a valid PVH ELF skeleton (two
//! loadable segments, one with BSS, and a note segment with a foreign note and the PVH note)
//! with patches applied: each patch writes a 1-, 2-, 4- or 8-byte little-endian value at an
//! offset, so one patch can replace any header field. The command line, the modules and the
//! RSDP address vary too.
//!
//! Checked: nothing panics; `ElfImage::parse` and `load_pvh` agree on whether the image itself
//! is valid; a rejected load writes nothing (sentinels at the start info, the command line and
//! every segment stay); a successful load puts the entry point in the file bytes of a segment,
//! every segment in usable RAM clear of the boot structures, the file bytes at each segment's
//! address, zeroes in every BSS (the guest memory is reused and dirty between runs), modules in
//! usable RAM below 4 GiB disjoint from each other, the segments and the boot structures, and a
//! start info, command line and module list that say exactly that.
//!
//! The input format: `flags: u8` (bit 0 raw image, bit 1 NUL in the command line, bit 2 an
//! RSDP address), `cmdline length: u16`, `module count: u8` (taken modulo 4), one `u16` per
//! module (its size in 256-byte units), then either the raw image or 11-byte patches
//! (`offset: u16`, `width: u8`, `value: u64`), all little-endian; [`encode`] writes seeds.

use std::cell::RefCell;

pub use crate::patched_image::{Image, MAX_PATCHES, Patch};
use crate::patched_image::{u8_at, u16_at};
use vmkit_boot::elf::{ElfBuilder, ElfImage, XEN_ELFNOTE_PHYS32_ENTRY};
use vmkit_boot::pvh::{BOOT_DATA_AREAS, CMDLINE_ADDR, MODLIST_ADDR, MODULE_LIMIT, START_INFO_ADDR};
use vmkit_boot::{PvhConfig, PvhError, load_pvh};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_memory::{GuestLayout, MemoryKind};

/// Guest RAM of the fuzzed guest: small, so BSS zeroing stays cheap and large images miss.
pub const RAM_SIZE: u64 = 2 << 20;
/// Longest command line generated (past the accepted maximum of 4095 bytes).
pub const MAX_CMDLINE: usize = 5000;

const TEXT: u64 = 0x10_0000;
const DATA: u64 = 0x10_3000;
const SENTINEL: u32 = 0x5e17_1e15;
/// Module sizes are capped at this many 256-byte units: just past the guest's RAM.
const MODULE_UNITS_CAP: u16 = (RAM_SIZE / 256) as u16 + 1;

/// Bytes modules are cut from: a pattern long enough for the largest module at any index.
fn module_pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..usize::from(MODULE_UNITS_CAP) * 256 + 32)
            .map(|i| (i % 251) as u8)
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
    /// Module sizes in 256-byte units.
    pub modules: Vec<u16>,
    /// The image.
    pub image: Image,
}

/// The valid PVH image the patches start from: header 0 text (entry at its start, BSS after
/// the code), header 1 data with a larger BSS, header 2 the notes.
pub fn skeleton() -> Vec<u8> {
    // `xor eax, eax; out 0xf4, eax; hlt`
    let code = [0x31, 0xc0, 0xe7, 0xf4, 0xf4, 0x90, 0x90, 0x90];
    ElfBuilder::new()
        .segment(GuestAddress(TEXT), &code, 0x2000)
        .segment(GuestAddress(DATA), &[0x11; 16], 0x4000)
        .note("GNU", 3, &[0xab; 8])
        .note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, &TEXT.to_le_bytes())
        .build()
}

/// Decodes an input; missing bytes read as zero.
pub fn parse(data: &[u8]) -> Input {
    let mut pos = 0;
    let flags = u8_at(data, &mut pos);
    let cmdline_len = u16_at(data, &mut pos) % (MAX_CMDLINE as u16 + 1);
    let count = u8_at(data, &mut pos) % 4;
    let modules = (0..count).map(|_| u16_at(data, &mut pos)).collect();
    let rest = data.get(pos..).unwrap_or(&[]);
    let image = Image::decode(flags & 1 != 0, rest);
    Input {
        cmdline_len,
        cmdline_nul: flags & 2 != 0,
        rsdp: flags & 4 != 0,
        modules,
        image,
    }
}

/// Encodes an input so that [`parse`] returns it.
pub fn encode(input: &Input) -> Vec<u8> {
    let raw = input.image.is_raw();
    let flags = u8::from(raw) | u8::from(input.cmdline_nul) << 1 | u8::from(input.rsdp) << 2;
    let mut out = vec![flags];
    out.extend_from_slice(&input.cmdline_len.to_le_bytes());
    out.push(input.modules.len() as u8);
    for size in &input.modules {
        out.extend_from_slice(&size.to_le_bytes());
    }
    input.image.encode_into(&mut out);
    out
}

/// The image bytes of an input.
pub fn image_bytes(image: &Image) -> Vec<u8> {
    image.bytes(skeleton)
}

struct Guest {
    layout: GuestLayout,
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
    let mut cmdline = "a".repeat(usize::from(input.cmdline_len));
    if input.cmdline_nul && !cmdline.is_empty() {
        cmdline.replace_range(cmdline.len() / 2..cmdline.len() / 2 + 1, "\0");
    }
    // Modules are slices of one pattern, so large ones cost no allocation per run; sizes past
    // the guest's RAM all fail the same way and are capped.
    let pattern = module_pattern();
    let module_refs: Vec<&[u8]> = input
        .modules
        .iter()
        .enumerate()
        .map(|(index, &units)| {
            let size = usize::from(units.min(MODULE_UNITS_CAP)) * 256;
            &pattern[index * 7..index * 7 + size]
        })
        .collect();
    let config = PvhConfig {
        cmdline: &cmdline,
        modules: &module_refs,
        rsdp: input.rsdp.then_some(GuestAddress(0xf_0000)),
    };
    GUEST.with(|guest| {
        let mut guest = guest.borrow_mut();
        let guest = guest.get_or_insert_with(|| {
            let layout = GuestLayout::new(RAM_SIZE).expect("fuzz layout");
            let mem = layout.create_guest_memory().expect("fuzz guest memory");
            Guest { layout, mem }
        });
        check(guest, &image, &config);
    });
}

fn check(guest: &Guest, image: &[u8], config: &PvhConfig<'_>) {
    let (layout, mem) = (&guest.layout, &guest.mem);
    let parsed = ElfImage::parse(image);
    // Sentinels that a rejected load must leave alone.
    let mut sentinels = vec![START_INFO_ADDR, CMDLINE_ADDR];
    if let Ok(elf) = &parsed {
        for addr in elf.segments().iter().map(|s| s.addr) {
            // Sentinels are 4 bytes: one that overlaps another would corrupt it itself.
            let clear = sentinels.iter().all(|s| s.0.abs_diff(addr.0) >= 4);
            if clear && layout.is_ram(addr, 4) {
                sentinels.push(addr);
            }
        }
    }
    for &addr in &sentinels {
        mem.write_obj(SENTINEL, addr).expect("sentinel in RAM");
    }

    let result = load_pvh(mem, layout.memory_map(), image, config);
    let boot = match (result, &parsed) {
        (Err(error), _) => {
            assert!(!error.to_string().is_empty());
            if let Err(parse_error) = &parsed {
                let PvhError::Elf(load_error) = &error else {
                    panic!("the image does not parse but the load failed otherwise: {error}");
                };
                assert_eq!(
                    std::mem::discriminant(load_error),
                    std::mem::discriminant(parse_error),
                    "load and parse disagree: {load_error} / {parse_error}"
                );
            }
            if !matches!(error, PvhError::Loader(_) | PvhError::GuestMemory(_)) {
                for addr in sentinels {
                    assert_eq!(
                        mem.read_obj::<u32>(addr).ok(),
                        Some(SENTINEL),
                        "{error}: {addr:?} written"
                    );
                }
            }
            return;
        }
        (Ok(_), Err(error)) => panic!("loaded an image that does not parse: {error}"),
        (Ok(boot), Ok(_)) => boot,
    };
    let Ok(elf) = parsed else { return };

    // The image.
    assert_eq!(Some(boot.entry), elf.pvh_entry());
    assert!(
        elf.segments()
            .iter()
            .any(|s| s.file_backed_contains(boot.entry.0))
    );
    assert_eq!(boot.image_end.0, elf.end());
    let boot_data: Vec<(u64, u64)> = BOOT_DATA_AREAS
        .iter()
        .map(|&(addr, size)| (addr, addr + size))
        .collect();
    let mut taken = boot_data.clone();
    for segment in elf.segments() {
        assert!(layout.is_ram(segment.addr, segment.mem_size));
        assert!(
            boot_data
                .iter()
                .all(|&(start, end)| segment.end() <= start || end <= segment.addr.0)
        );
        // A segment without file bytes may name any offset.
        let file_start = segment.file_offset as usize;
        let expected = match segment.file_size {
            0 => &[][..],
            size => &image[file_start..file_start + size as usize],
        };
        let mut loaded = vec![0; expected.len()];
        mem.read_slice(&mut loaded, segment.addr)
            .expect("segment readable");
        assert_eq!(loaded, expected, "segment {} bytes", segment.index);
        let mut chunk = [0xffu8; 4096];
        let mut at = segment.addr.0 + segment.file_size;
        while at < segment.end() {
            let len = (segment.end() - at).min(chunk.len() as u64) as usize;
            mem.read_slice(&mut chunk[..len], GuestAddress(at))
                .expect("BSS readable");
            assert!(
                chunk[..len].iter().all(|&b| b == 0),
                "segment {} BSS",
                segment.index
            );
            at += len as u64;
        }
        taken.push((segment.addr.0, segment.end()));
    }

    // The modules.
    assert_eq!(boot.modules.len(), config.modules.len());
    for (index, (placed, bytes)) in boot.modules.iter().zip(config.modules).enumerate() {
        assert_eq!(placed.size, bytes.len() as u64);
        assert!(placed.addr.0 + placed.size <= MODULE_LIMIT);
        assert!(layout.is_ram(placed.addr, placed.size));
        let end = placed.addr.0 + placed.size;
        assert!(
            taken
                .iter()
                .all(|&(start, stop)| end <= start || stop <= placed.addr.0),
            "module {index} overlaps"
        );
        taken.push((placed.addr.0, end));
        let mut content = vec![0; bytes.len()];
        mem.read_slice(&mut content, placed.addr)
            .expect("module readable");
        assert_eq!(&content, bytes, "module {index}");
        let entry = GuestAddress(MODLIST_ADDR.0 + index as u64 * 32);
        assert_eq!(mem.read_obj::<u64>(entry).ok(), Some(placed.addr.0));
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(entry.0 + 8)).ok(),
            Some(placed.size)
        );
    }

    // The start info and what it points to.
    let field = |offset: u64| {
        mem.read_obj::<u64>(GuestAddress(START_INFO_ADDR.0 + offset))
            .ok()
    };
    let word = |offset: u64| {
        mem.read_obj::<u32>(GuestAddress(START_INFO_ADDR.0 + offset))
            .ok()
    };
    assert_eq!(word(0), Some(0x336e_c578));
    assert_eq!(word(4), Some(1));
    assert_eq!(word(12), Some(config.modules.len() as u32));
    assert_eq!(field(24), Some(CMDLINE_ADDR.0));
    assert_eq!(field(32), Some(config.rsdp.map_or(0, |addr| addr.0)));
    assert_eq!(word(48), Some(layout.memory_map().len() as u32));
    let memmap = field(40).expect("memmap address");
    for (index, entry) in layout.memory_map().iter().enumerate() {
        let at = GuestAddress(memmap + index as u64 * 24);
        assert_eq!(mem.read_obj::<u64>(at).ok(), Some(entry.addr));
        let kind = mem.read_obj::<u32>(GuestAddress(at.0 + 16)).ok();
        assert_eq!(kind, Some(entry.kind.e820_type()));
        assert_eq!(entry.kind == MemoryKind::Ram, kind == Some(1));
    }
    let mut cmdline = vec![0xff; config.cmdline.len() + 1];
    mem.read_slice(&mut cmdline, CMDLINE_ADDR)
        .expect("command line readable");
    assert_eq!(&cmdline[..config.cmdline.len()], config.cmdline.as_bytes());
    assert_eq!(cmdline[config.cmdline.len()], 0);
}

/// Seed inputs: the skeleton as is, with modules and a command line, with header fields and
/// notes broken in the ways the loader must reject, and raw images.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let patch = |offset: u16, width: u8, value: u64| Patch {
        offset,
        width,
        value,
    };
    // Field offsets in the skeleton.
    const PH: u16 = 64;
    const PH_SIZE: u16 = 56;
    let ph = |index: u16, field: u16| PH + index * PH_SIZE + field;
    let notes = u16::try_from(64 + 3 * 56).unwrap_or(0);
    let patched = |patches: Vec<Patch>| Input {
        cmdline_len: 13,
        cmdline_nul: false,
        rsdp: false,
        modules: Vec::new(),
        image: Image::Patched(patches),
    };
    let mut seeds = vec![
        ("skeleton", patched(vec![])),
        (
            "modules_and_cmdline",
            Input {
                cmdline_len: 300,
                cmdline_nul: false,
                rsdp: true,
                modules: vec![16, 1, 3],
                image: Image::Patched(vec![]),
            },
        ),
        (
            "cmdline_too_long",
            Input {
                cmdline_len: 4096,
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
        (
            "module_too_big",
            Input {
                modules: vec![0xffff],
                ..patched(vec![])
            },
        ),
        ("elf32", patched(vec![patch(4, 0, 1)])),
        ("wrong_machine", patched(vec![patch(18, 1, 3)])),
        ("phoff_out_of_file", patched(vec![patch(32, 3, 0xffff)])),
        (
            "segment_out_of_ram",
            patched(vec![patch(ph(1, 24), 3, 0x3f_f000)]),
        ),
        (
            "segment_on_boot_data",
            patched(vec![patch(ph(1, 24), 3, 0x7000)]),
        ),
        (
            "overlapping_segments",
            patched(vec![patch(ph(1, 24), 3, TEXT + 0x1000)]),
        ),
        ("filesz_above_memsz", patched(vec![patch(ph(0, 40), 3, 4)])),
        ("bss_only_segment", patched(vec![patch(ph(1, 32), 3, 0)])),
        (
            "bss_only_segment_far_offset",
            patched(vec![patch(ph(1, 32), 3, 0), patch(ph(1, 8), 3, 0x4b_4b00)]),
        ),
        ("no_pvh_note", patched(vec![patch(notes + 24 + 8, 2, 19)])),
        (
            "entry_in_bss",
            patched(vec![patch(notes + 24 + 16, 3, TEXT + 0x100)]),
        ),
        (
            "pvh_note_high_bits",
            patched(vec![patch(notes + 24 + 20, 2, 1)]),
        ),
        ("note_too_long", patched(vec![patch(notes + 4, 2, 0x1000)])),
        (
            "empty_raw",
            Input {
                image: Image::Raw(Vec::new()),
                ..patched(vec![])
            },
        ),
        (
            "raw_skeleton_truncated",
            Input {
                image: Image::Raw(skeleton()[..200].to_vec()),
                ..patched(vec![])
            },
        ),
    ];
    seeds.push((
        "raw_skeleton",
        Input {
            image: Image::Raw(skeleton()),
            ..patched(vec![])
        },
    ));
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
        let layout = GuestLayout::new(RAM_SIZE).unwrap();
        let mem = layout.create_guest_memory().unwrap();
        let mut outcomes = Vec::new();
        for (name, bytes) in seeds() {
            let input = parse(&bytes);
            let image = image_bytes(&input.image);
            let cmdline = "a".repeat(usize::from(input.cmdline_len));
            let modules: Vec<Vec<u8>> = input
                .modules
                .iter()
                .map(|&units| vec![1; usize::from(units) * 256])
                .collect();
            let refs: Vec<&[u8]> = modules.iter().map(Vec::as_slice).collect();
            let config = PvhConfig {
                cmdline: if input.cmdline_nul { "a\0b" } else { &cmdline },
                modules: &refs,
                rsdp: None,
            };
            // The variant's name; an ELF problem by the ElfError's variant.
            let outcome = match load_pvh(&mem, layout.memory_map(), &image, &config) {
                Ok(_) => "Ok".to_owned(),
                Err(PvhError::Elf(error)) => format!("{error:?}"),
                Err(PvhError::BootData(error)) => format!("{error:?}"),
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
            ("modules_and_cmdline", "Ok"),
            ("cmdline_too_long", "CmdlineTooLong"),
            ("cmdline_nul", "CmdlineHasNul"),
            ("module_too_big", "ModuleDoesNotFit"),
            ("elf32", "WrongClass"),
            ("wrong_machine", "WrongMachine"),
            ("phoff_out_of_file", "ProgramHeadersOutOfFile"),
            ("segment_out_of_ram", "SegmentOutOfMemory"),
            ("segment_on_boot_data", "SegmentOverlapsBootData"),
            ("overlapping_segments", "OverlappingSegments"),
            ("filesz_above_memsz", "FileSizeExceedsMemorySize"),
            ("bss_only_segment", "Ok"),
            ("bss_only_segment_far_offset", "Ok"),
            ("no_pvh_note", "NoPvhNote"),
            ("entry_in_bss", "EntryOutsideSegments"),
            ("pvh_note_high_bits", "InvalidPvhNote"),
            ("note_too_long", "BadNote"),
            ("empty_raw", "NotElf"),
            ("raw_skeleton_truncated", "ProgramHeadersOutOfFile"),
            ("raw_skeleton", "Ok"),
        ];
        let expected: Vec<(&str, String)> =
            expected.iter().map(|&(n, o)| (n, o.to_owned())).collect();
        assert_eq!(outcomes, expected);
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("pvh_loader", &seeds(), false, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[1]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        let mut raw = vec![1, 0, 0, 0];
        raw.extend_from_slice(&skeleton());
        for cut in 0..raw.len() {
            run(&raw[..cut]);
        }
    }

    #[test]
    #[ignore]
    fn write_pvh_seeds() {
        seed_files::write("pvh_loader", &seeds());
    }
}
