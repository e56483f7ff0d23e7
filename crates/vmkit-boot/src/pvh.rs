//! The PVH boot protocol: load a PVH ELF image and write `hvm_start_info`, the memory map, the
//! module list and the command line.
//!
//! # Guest physical layout of the boot structures
//!
//! | address | content | size |
//! |---|---|---|
//! | [`START_INFO_ADDR`] `0x6000` | `hvm_start_info` (version 1) | 56 bytes |
//! | [`MODLIST_ADDR`] `0x6040` | `hvm_modlist_entry` × modules | ≤ [`MAX_MODULES`] × 32 bytes |
//! | [`MEMMAP_ADDR`] `0x7000` | `hvm_memmap_table_entry` × map entries | ≤ [`MAX_MEMMAP_ENTRIES`] × 24 bytes |
//! | [`PAGE_TABLES_START`] `0x9000` | nothing: kept free for the [boot page tables](crate::page_tables) | up to [`PAGE_TABLES_END`] `0xf000` |
//! | [`CMDLINE_ADDR`] `0x20000` | command line, NUL-terminated | ≤ [`CMDLINE_CAPACITY`] bytes |
//! | top of RAM below 4 GiB | modules, 4 KiB-aligned, first module highest | as given |
//!
//! The two fixed areas ([`BOOT_DATA_AREAS`]) lie in conventional memory, which the memory map
//! reports usable, as Cloud Hypervisor and Firecracker place them. They are not reported reserved:
//! the structures are read once at entry, a PVH guest learns their addresses from the start info
//! and owns its RAM from then on (Linux copies what it needs and never allocates below 1 MiB; a
//! firmware reads them before it allocates). The loader checks that they really lie in usable RAM
//! backed by guest memory, and that no segment or module overlaps them. Modules lie in usable
//! RAM too, as an initrd does; the guest finds them through the module list. Modules also skip
//! the boot page-table window, so that nothing vmkit-boot places ever lands on the tables of a
//! 64-bit entry (a PVH guest starts with paging off and needs no tables; its segments may use
//! the window).
//!
//! # Entry state
//!
//! [`PvhBoot`] carries what the vCPU needs: start at [`PvhBoot::entry`] in 32-bit protected mode
//! with paging off, flat 4 GiB code and data segments, interrupts off, and `ebx` =
//! [`PvhBoot::start_info`].

use std::io::Cursor;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use log::debug;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit_memory::MemoryMapEntry;

use crate::boot_data::{BootDataError, UsableRam, check_cmdline, highest_fit, usable_ram};
use crate::elf::{ElfError, ElfImage, LoadSegment};
use crate::page_tables::{PAGE_TABLES_END, PAGE_TABLES_START};

/// Why a PVH image could not be loaded ([`load_pvh`]). Every problem with the image or the
/// configuration is found before anything is written to guest memory; only the last three
/// variants (writing guest memory) can leave a partial load.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum PvhError {
    /// the image is not a loadable ELF file
    Elf(#[from] ElfError),
    /// the image has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): it does not support the PVH boot
    /// protocol
    NoPvhNote,
    /// the PVH entry point {0:#x} does not lie in the file-backed part of a loadable segment
    EntryOutsideSegments(u64),
    /// segment {index} ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that the memory map
    /// reports usable
    SegmentOutOfMemory {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// segment {index} ({size:#x} bytes at {addr:#x}) overlaps the boot structures
    SegmentOverlapsBootData {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// the command line, the memory map or the boot structures do not fit
    BootData(#[from] BootDataError),
    /// {count} modules were given; at most {max} are accepted
    TooManyModules {
        /// Number of modules given.
        count: usize,
        /// The most modules the module list holds.
        max: usize,
    },
    /// module {index} is empty
    EmptyModule {
        /// Index of the module.
        index: usize,
    },
    /// module {index} ({size:#x} bytes) does not fit in free guest RAM below 4 GiB
    ModuleDoesNotFit {
        /// Index of the module.
        index: usize,
        /// Size of the module in bytes.
        size: u64,
    },
    /// the kernel loader failed
    Loader(#[source] linux_loader::loader::Error),
    /// writing the boot structures failed
    BootParams(#[source] linux_loader::configurator::Error),
    /// writing guest memory failed
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// Guest physical address of `hvm_start_info`.
pub const START_INFO_ADDR: GuestAddress = GuestAddress(0x6000);
/// Guest physical address of the module list (`hvm_modlist_entry` array).
pub const MODLIST_ADDR: GuestAddress = GuestAddress(0x6040);
/// The most modules the module list holds.
pub const MAX_MODULES: usize = 64;
/// Guest physical address of the memory map (`hvm_memmap_table_entry` array).
pub const MEMMAP_ADDR: GuestAddress = GuestAddress(0x7000);
/// The most memory-map entries the table holds: as many as a memory map may have.
pub const MAX_MEMMAP_ENTRIES: usize = vmkit_memory::layout::MAX_MEMORY_MAP_ENTRIES;
/// Guest physical address of the NUL-terminated command line.
pub const CMDLINE_ADDR: GuestAddress = GuestAddress(0x2_0000);
/// Bytes reserved for the command line, including its terminating NUL: command lines of up to
/// `CMDLINE_CAPACITY - 1` bytes are accepted. (Linux on x86 keeps the first 2047 bytes.)
pub const CMDLINE_CAPACITY: usize = 0x1000;
/// Alignment of modules in guest memory.
pub const MODULE_ALIGN: u64 = 0x1000;
/// Modules are placed below this address, so a 32-bit entry can reach them.
pub const MODULE_LIMIT: u64 = 1 << 32;
/// The fixed areas holding the boot structures, as `(first address, size)`: the start info,
/// module list and memory map page pair, and the command line.
pub const BOOT_DATA_AREAS: [(u64, u64); 2] = [
    (START_INFO_ADDR.0, 0x2000),
    (CMDLINE_ADDR.0, CMDLINE_CAPACITY as u64),
];

const START_INFO_SIZE: u64 = size_of::<hvm_start_info>() as u64;
const MODLIST_ENTRY_SIZE: u64 = size_of::<hvm_modlist_entry>() as u64;
const MEMMAP_ENTRY_SIZE: u64 = size_of::<hvm_memmap_table_entry>() as u64;
const _: () = {
    assert!(START_INFO_ADDR.0 + START_INFO_SIZE <= MODLIST_ADDR.0);
    assert!(MODLIST_ADDR.0 + MAX_MODULES as u64 * MODLIST_ENTRY_SIZE <= MEMMAP_ADDR.0);
    assert!(
        MEMMAP_ADDR.0 + MAX_MEMMAP_ENTRIES as u64 * MEMMAP_ENTRY_SIZE
            <= BOOT_DATA_AREAS[0].0 + BOOT_DATA_AREAS[0].1
    );
    // No boot structure overlaps the boot page-table window.
    let mut i = 0;
    while i < BOOT_DATA_AREAS.len() {
        let (addr, size) = BOOT_DATA_AREAS[i];
        assert!(addr + size <= PAGE_TABLES_START || PAGE_TABLES_END <= addr);
        i += 1;
    }
};

/// What to pass to a PVH guest besides its image.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvhConfig<'a> {
    /// The command line (at most `CMDLINE_CAPACITY - 1` bytes, no NUL).
    pub cmdline: &'a str,
    /// Modules (for Linux, the first is the initrd), at most [`MAX_MODULES`], none empty.
    pub modules: &'a [&'a [u8]],
    /// Guest physical address of the ACPI RSDP, if the VMM wrote ACPI tables.
    pub rsdp: Option<GuestAddress>,
}

impl<'a> PvhConfig<'a> {
    /// A configuration with a command line, no modules and no ACPI tables.
    pub fn new(cmdline: &'a str) -> Self {
        PvhConfig {
            cmdline,
            ..Self::default()
        }
    }
}

/// Where a module was placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedModule {
    /// First guest physical address of the module.
    pub addr: GuestAddress,
    /// Size of the module in bytes.
    pub size: u64,
}

/// A loaded PVH guest: where the vCPU starts and what it finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvhBoot {
    /// The 32-bit entry point (from the image's PVH note): the vCPU starts here in 32-bit
    /// protected mode with paging off.
    pub entry: GuestAddress,
    /// Guest physical address of `hvm_start_info`, to be passed in `ebx`.
    pub start_info: GuestAddress,
    /// One past the highest byte of the loaded image (BSS included).
    pub image_end: GuestAddress,
    /// Where each module was placed, in the order given.
    pub modules: Vec<PlacedModule>,
}

/// Loads the PVH ELF `image` into `guest_mem` and writes the PVH boot structures.
///
/// `memory_map` is the guest's memory map (for example
/// [`GuestLayout::memory_map`](vmkit_memory::GuestLayout::memory_map)); it is written to the
/// guest as the PVH memory map, and segments, boot structures and modules must lie in RAM it
/// reports usable (and that `guest_mem` backs).
///
/// The image is validated completely ([`ElfImage::parse`], the PVH note, the segments against
/// the memory map and the boot structures, the command line and modules) before anything is
/// written; then linux-loader's ELF loader copies the segments, the BSS is zeroed, and the
/// modules, command line, memory map, module list and start info are written. The image is
/// taken as bytes so that what is validated is exactly what is loaded.
pub fn load_pvh<M: GuestMemoryBackend>(
    guest_mem: &M,
    memory_map: &[MemoryMapEntry],
    image: &[u8],
    config: &PvhConfig<'_>,
) -> Result<PvhBoot, PvhError> {
    let result = load(guest_mem, memory_map, image, config);
    match &result {
        Ok(boot) => debug!(
            "PVH image loaded: entry {:#x}, image end {:#x}, {} modules",
            boot.entry.0,
            boot.image_end.0,
            boot.modules.len()
        ),
        Err(error) => debug!("PVH image rejected: {error}"),
    }
    result
}

fn load<M: GuestMemoryBackend>(
    guest_mem: &M,
    memory_map: &[MemoryMapEntry],
    image: &[u8],
    config: &PvhConfig<'_>,
) -> Result<PvhBoot, PvhError> {
    let elf = ElfImage::parse(image)?;
    let entry = elf.pvh_entry().ok_or(PvhError::NoPvhNote)?;
    if !elf
        .segments()
        .iter()
        .any(|s| s.file_backed_contains(entry.0))
    {
        return Err(PvhError::EntryOutsideSegments(entry.0));
    }
    check_cmdline(config.cmdline, CMDLINE_CAPACITY - 1)?;
    if config.modules.len() > MAX_MODULES {
        return Err(PvhError::TooManyModules {
            count: config.modules.len(),
            max: MAX_MODULES,
        });
    }
    let ram = usable_ram(memory_map, MAX_MEMMAP_ENTRIES, guest_mem, &BOOT_DATA_AREAS)?;
    for segment in elf.segments() {
        check_segment(&ram, segment)?;
    }
    let mut taken: Vec<(u64, u64)> = BOOT_DATA_AREAS
        .iter()
        .map(|&(addr, size)| (addr, addr + size))
        .chain([(PAGE_TABLES_START, PAGE_TABLES_END)])
        .chain(elf.segments().iter().map(|s| (s.addr.0, s.end())))
        .collect();
    let modules = place_modules(&ram, &mut taken, config.modules)?;

    // Everything is validated: write guest memory.
    Elf::load(guest_mem, None, &mut Cursor::new(image), None).map_err(PvhError::Loader)?;
    for segment in elf.segments() {
        zero(
            guest_mem,
            segment.addr.0 + segment.file_size,
            segment.mem_size - segment.file_size,
        )?;
    }
    for (module, bytes) in modules.iter().zip(config.modules) {
        guest_mem
            .write_slice(bytes, module.addr)
            .map_err(PvhError::GuestMemory)?;
    }
    write_cmdline(guest_mem, config.cmdline).map_err(PvhError::GuestMemory)?;
    write_boot_params(guest_mem, memory_map, &modules, config.rsdp)?;

    Ok(PvhBoot {
        entry,
        start_info: START_INFO_ADDR,
        image_end: GuestAddress(elf.end()),
        modules,
    })
}

/// Checks that a segment lies in usable RAM and clear of the boot structures.
fn check_segment<M: GuestMemoryBackend>(
    ram: &UsableRam<'_, M>,
    segment: &LoadSegment,
) -> Result<(), PvhError> {
    let (addr, size) = (segment.addr.0, segment.mem_size);
    if !ram.contains(addr, size) {
        return Err(PvhError::SegmentOutOfMemory {
            index: segment.index,
            addr,
            size,
        });
    }
    if BOOT_DATA_AREAS
        .iter()
        .any(|&(area, area_size)| addr < area + area_size && area < segment.end())
    {
        return Err(PvhError::SegmentOverlapsBootData {
            index: segment.index,
            addr,
            size,
        });
    }
    Ok(())
}

/// Places each module, in order, at the highest [`MODULE_ALIGN`]-aligned address below
/// [`MODULE_LIMIT`] where it lies in usable RAM without overlapping `taken` (the boot structures,
/// the boot page-table window, the segments and the modules placed before it).
fn place_modules<M: GuestMemoryBackend>(
    ram: &UsableRam<'_, M>,
    taken: &mut Vec<(u64, u64)>,
    modules: &[&[u8]],
) -> Result<Vec<PlacedModule>, PvhError> {
    let mut placed = Vec::with_capacity(modules.len());
    for (index, module) in modules.iter().enumerate() {
        let size = module.len() as u64;
        if size == 0 {
            return Err(PvhError::EmptyModule { index });
        }
        let addr = ram
            .ranges
            .iter()
            .rev()
            .find_map(|&(start, end)| highest_fit(start, end.min(MODULE_LIMIT), size, taken))
            .filter(|&addr| ram.contains(addr, size))
            .ok_or(PvhError::ModuleDoesNotFit { index, size })?;
        taken.push((addr, addr + size));
        placed.push(PlacedModule {
            addr: GuestAddress(addr),
            size,
        });
    }
    Ok(placed)
}

/// Zeroes `size` bytes of guest memory from `addr`.
fn zero<M: GuestMemoryBackend>(guest_mem: &M, addr: u64, size: u64) -> Result<(), PvhError> {
    static ZEROES: [u8; 0x1_0000] = [0; 0x1_0000];
    let mut done = 0;
    while done < size {
        let chunk = (size - done).min(ZEROES.len() as u64);
        guest_mem
            .write_slice(&ZEROES[..chunk as usize], GuestAddress(addr + done))
            .map_err(PvhError::GuestMemory)?;
        done += chunk;
    }
    Ok(())
}

pub(crate) fn write_cmdline<M: GuestMemoryBackend>(
    guest_mem: &M,
    cmdline: &str,
) -> Result<(), vm_memory::GuestMemoryError> {
    guest_mem
        .write_slice(cmdline.as_bytes(), CMDLINE_ADDR)
        .and_then(|()| {
            guest_mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR.0 + cmdline.len() as u64))
        })
}

/// Writes the memory map, the module list and `hvm_start_info`.
fn write_boot_params<M: GuestMemoryBackend>(
    guest_mem: &M,
    memory_map: &[MemoryMapEntry],
    modules: &[PlacedModule],
    rsdp: Option<GuestAddress>,
) -> Result<(), PvhError> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind.e820_type(),
            reserved: 0,
        })
        .collect();
    let modlist: Vec<hvm_modlist_entry> = modules
        .iter()
        .map(|module| hvm_modlist_entry {
            paddr: module.addr.0,
            size: module.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        // Both counts were checked against the table sizes.
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            MODLIST_ADDR.0
        },
        cmdline_paddr: CMDLINE_ADDR.0,
        rsdp_paddr: rsdp.map_or(0, |addr| addr.0),
        memmap_paddr: MEMMAP_ADDR.0,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    let mut params = BootParams::new(&start_info, START_INFO_ADDR);
    params.set_sections(&memmap, MEMMAP_ADDR);
    if !modlist.is_empty() {
        params.set_modules(&modlist, MODLIST_ADDR);
    }
    PvhBootConfigurator::write_bootparams(&params, guest_mem).map_err(PvhError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::ElfBuilder;
    use vm_memory::GuestMemoryMmap;
    use vmkit_memory::{GuestLayout, MemoryKind};

    const RAM: u64 = 64 << 20;
    const TEXT: GuestAddress = GuestAddress(0x10_0000);
    const DATA: GuestAddress = GuestAddress(0x20_0000);
    const CODE: [u8; 4] = [0x31, 0xc0, 0xe7, 0xf4];

    fn layout() -> GuestLayout {
        GuestLayout::new(RAM).unwrap()
    }

    /// Guest memory of the default layout with every byte set to 0xff, so zeroing is visible.
    fn dirty_memory(layout: &GuestLayout) -> GuestMemoryMmap {
        let mem = layout.create_guest_memory().unwrap();
        let junk = vec![0xff; 0x40_0000];
        mem.write_slice(&junk, GuestAddress(0)).unwrap();
        mem
    }

    fn image() -> Vec<u8> {
        ElfBuilder::new()
            .segment(TEXT, &CODE, 0x1000)
            .segment(DATA, &[1, 2, 3, 4, 5, 6, 7, 8], 0x2_0000)
            .pvh_entry(TEXT)
            .build()
    }

    fn ram_entry(addr: u64, size: u64) -> MemoryMapEntry {
        MemoryMapEntry {
            addr,
            size,
            kind: MemoryKind::Ram,
        }
    }

    fn load_with(
        map: &[MemoryMapEntry],
        image: &[u8],
        config: &PvhConfig<'_>,
    ) -> Result<PvhBoot, PvhError> {
        let mem = layout().create_guest_memory().unwrap();
        load_pvh(&mem, map, image, config)
    }

    fn load_err(image: &[u8], config: &PvhConfig<'_>) -> PvhError {
        load_with(layout().memory_map(), image, config).unwrap_err()
    }

    #[test]
    fn loads_segments_and_zeroes_bss() {
        let layout = layout();
        let mem = dirty_memory(&layout);
        let boot = load_pvh(&mem, layout.memory_map(), &image(), &PvhConfig::new("")).unwrap();
        assert_eq!(boot.entry, TEXT);
        assert_eq!(boot.start_info, START_INFO_ADDR);
        assert_eq!(boot.image_end, GuestAddress(DATA.0 + 0x2_0000));
        assert!(boot.modules.is_empty());

        let mut text = [0u8; 0x1000];
        mem.read_slice(&mut text, TEXT).unwrap();
        assert_eq!(&text[..4], &CODE);
        assert!(text[4..].iter().all(|&b| b == 0), "text BSS zeroed");
        let mut data = vec![0u8; 0x2_0000];
        mem.read_slice(&mut data, DATA).unwrap();
        assert_eq!(&data[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(data[8..].iter().all(|&b| b == 0), "data BSS zeroed");
        // Nothing past the image was touched.
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(DATA.0 + 0x2_0000)).unwrap(),
            0xff
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(TEXT.0 + 0x1000)).unwrap(),
            0xff
        );
    }

    #[test]
    fn writes_start_info_memory_map_and_cmdline() {
        let layout = layout();
        let mem = dirty_memory(&layout);
        let config = PvhConfig {
            cmdline: "console=ttyS0 quiet",
            modules: &[],
            rsdp: Some(GuestAddress(0xe_0000)),
        };
        load_pvh(&mem, layout.memory_map(), &image(), &config).unwrap();

        let info: hvm_start_info = mem.read_obj(START_INFO_ADDR).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.flags, 0);
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR.0);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        assert_eq!(info.memmap_paddr, MEMMAP_ADDR.0);
        assert_eq!(info.memmap_entries as usize, layout.memory_map().len());
        assert_eq!(info.reserved, 0);

        for (index, expected) in layout.memory_map().iter().enumerate() {
            let addr = GuestAddress(MEMMAP_ADDR.0 + index as u64 * MEMMAP_ENTRY_SIZE);
            let entry: hvm_memmap_table_entry = mem.read_obj(addr).unwrap();
            assert_eq!(
                (entry.addr, entry.size, entry.type_, entry.reserved),
                (expected.addr, expected.size, expected.kind.e820_type(), 0)
            );
        }
        let first: hvm_memmap_table_entry = mem.read_obj(MEMMAP_ADDR).unwrap();
        assert_eq!((first.addr, first.type_), (0, 1));

        let mut cmdline = [0u8; 20];
        mem.read_slice(&mut cmdline, CMDLINE_ADDR).unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn empty_cmdline_is_an_empty_string() {
        let layout = layout();
        let mem = dirty_memory(&layout);
        load_pvh(&mem, layout.memory_map(), &image(), &PvhConfig::default()).unwrap();
        let info: hvm_start_info = mem.read_obj(START_INFO_ADDR).unwrap();
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(info.cmdline_paddr))
                .unwrap(),
            0
        );
    }

    #[test]
    fn places_modules_at_the_top_of_low_ram() {
        let layout = layout();
        let mem = dirty_memory(&layout);
        let initrd = vec![0xaa; 0x1800];
        let second = vec![0xbb; 10];
        let modules: [&[u8]; 2] = [&initrd, &second];
        let config = PvhConfig {
            cmdline: "",
            modules: &modules,
            rsdp: None,
        };
        let boot = load_pvh(&mem, layout.memory_map(), &image(), &config).unwrap();
        assert_eq!(
            boot.modules,
            vec![
                PlacedModule {
                    addr: GuestAddress(RAM - 0x2000),
                    size: 0x1800
                },
                PlacedModule {
                    addr: GuestAddress(RAM - 0x3000),
                    size: 10
                },
            ]
        );
        let info: hvm_start_info = mem.read_obj(START_INFO_ADDR).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (2, MODLIST_ADDR.0));
        for (index, (placed, bytes)) in boot.modules.iter().zip(modules).enumerate() {
            let entry: hvm_modlist_entry = mem
                .read_obj(GuestAddress(
                    MODLIST_ADDR.0 + index as u64 * MODLIST_ENTRY_SIZE,
                ))
                .unwrap();
            assert_eq!(
                (entry.paddr, entry.size, entry.cmdline_paddr, entry.reserved),
                (placed.addr.0, placed.size, 0, 0)
            );
            let mut content = vec![0; bytes.len()];
            mem.read_slice(&mut content, placed.addr).unwrap();
            assert_eq!(content, bytes);
        }
    }

    #[test]
    fn modules_stay_below_4_gib_and_avoid_the_image() {
        // RAM up to 3 GiB and from 4 GiB; a segment at the top of low RAM.
        let map = [
            ram_entry(0, 0x9_fc00),
            ram_entry(0x10_0000, 0x10_0000),
            ram_entry(0x1_0000_0000, 0x10_0000),
        ];
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x20_0000),
            (GuestAddress(0x1_0000_0000), 0x10_0000),
        ])
        .unwrap();
        let image = ElfBuilder::new()
            .segment(GuestAddress(0x1f_f000), &CODE, 0x1000)
            .pvh_entry(GuestAddress(0x1f_f000))
            .build();
        let module = [7u8; 0x1000];
        let config = PvhConfig {
            cmdline: "",
            modules: &[&module],
            rsdp: None,
        };
        let boot = load_pvh(&mem, &map, &image, &config).unwrap();
        assert_eq!(boot.modules[0].addr, GuestAddress(0x1f_e000));
    }

    #[test]
    fn rejects_modules_that_do_not_fit() {
        let huge = vec![0u8; RAM as usize];
        let config = PvhConfig {
            cmdline: "",
            modules: &[&huge],
            rsdp: None,
        };
        assert!(matches!(
            load_err(&image(), &config),
            PvhError::ModuleDoesNotFit {
                index: 0,
                size: RAM
            }
        ));

        let empty: &[u8] = &[];
        let config = PvhConfig {
            cmdline: "",
            modules: &[b"ok", empty],
            rsdp: None,
        };
        assert!(matches!(
            load_err(&image(), &config),
            PvhError::EmptyModule { index: 1 }
        ));

        let one: &[u8] = b"m";
        let many = vec![one; MAX_MODULES + 1];
        let config = PvhConfig {
            cmdline: "",
            modules: &many,
            rsdp: None,
        };
        assert!(matches!(
            load_err(&image(), &config),
            PvhError::TooManyModules { count: 65, max: 64 }
        ));
        let most = vec![one; MAX_MODULES];
        let config = PvhConfig {
            cmdline: "",
            modules: &most,
            rsdp: None,
        };
        assert_eq!(
            load_with(layout().memory_map(), &image(), &config)
                .unwrap()
                .modules
                .len(),
            MAX_MODULES
        );
    }

    #[test]
    fn module_placement_must_be_backed_by_guest_memory() {
        // The map claims RAM up to 64 MiB, but only 32 MiB are backed.
        let map = [
            ram_entry(0, 0x9_fc00),
            ram_entry(0x10_0000, RAM - 0x10_0000),
        ];
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
        let module = [1u8; 16];
        let config = PvhConfig {
            cmdline: "",
            modules: &[&module],
            rsdp: None,
        };
        assert!(matches!(
            load_pvh(&mem, &map, &image(), &config),
            Err(PvhError::ModuleDoesNotFit { .. })
        ));
    }

    #[test]
    fn highest_fit_skips_taken_ranges() {
        let taken = [(0x8000, 0x9000), (0x5800, 0x6000)];
        assert_eq!(highest_fit(0, 0xa000, 0x1000, &taken), Some(0x9000));
        assert_eq!(highest_fit(0, 0x9fff, 0x1000, &taken), Some(0x7000));
        assert_eq!(highest_fit(0, 0x9000, 0x2000, &taken), Some(0x6000));
        assert_eq!(highest_fit(0, 0x9000, 0x2001, &taken), Some(0x3000));
        assert_eq!(highest_fit(0x4000, 0x9000, 0x2001, &taken), None);
        assert_eq!(highest_fit(0, 0x800, 0x1000, &taken), None);
        assert_eq!(highest_fit(0x1000, 0x1fff, 0x10, &[]), Some(0x1000));
        assert_eq!(highest_fit(0x1001, 0x1fff, 0x10, &[]), None);
        assert_eq!(highest_fit(0x1000, 0x2010, 0x10, &[]), Some(0x2000));
    }

    #[test]
    fn requires_a_pvh_entry_in_the_file_bytes_of_a_segment() {
        let no_note = ElfBuilder::new().segment(TEXT, &CODE, 0x1000).build();
        assert!(matches!(
            load_err(&no_note, &PvhConfig::default()),
            PvhError::NoPvhNote
        ));

        let in_bss = ElfBuilder::new()
            .segment(TEXT, &CODE, 0x1000)
            .pvh_entry(GuestAddress(TEXT.0 + 4))
            .build();
        assert!(matches!(
            load_err(&in_bss, &PvhConfig::default()),
            PvhError::EntryOutsideSegments(0x10_0004)
        ));

        let elsewhere = ElfBuilder::new()
            .segment(TEXT, &CODE, 0x1000)
            .pvh_entry(GuestAddress(0x8000))
            .build();
        assert!(matches!(
            load_err(&elsewhere, &PvhConfig::default()),
            PvhError::EntryOutsideSegments(0x8000)
        ));
    }

    #[test]
    fn rejects_bad_command_lines() {
        let longest = "a".repeat(CMDLINE_CAPACITY - 1);
        let layout = layout();
        let mem = dirty_memory(&layout);
        load_pvh(
            &mem,
            layout.memory_map(),
            &image(),
            &PvhConfig::new(&longest),
        )
        .unwrap();
        let end = GuestAddress(CMDLINE_ADDR.0 + longest.len() as u64);
        assert_eq!(mem.read_obj::<u8>(end).unwrap(), 0);

        let too_long = "a".repeat(CMDLINE_CAPACITY);
        assert!(matches!(
            load_err(&image(), &PvhConfig::new(&too_long)),
            PvhError::BootData(BootDataError::CmdlineTooLong {
                len: 4096,
                max: 4095
            })
        ));
        assert!(matches!(
            load_err(&image(), &PvhConfig::new("a\0b")),
            PvhError::BootData(BootDataError::CmdlineHasNul)
        ));
    }

    #[test]
    fn rejects_bad_memory_maps() {
        let err = load_with(&[], &image(), &PvhConfig::default()).unwrap_err();
        assert!(matches!(
            err,
            PvhError::BootData(BootDataError::BadMemoryMapSize { count: 0, max: 128 })
        ));
        let many: Vec<MemoryMapEntry> = (0..129).map(|i| ram_entry(i << 20, 1 << 20)).collect();
        let err = load_with(&many, &image(), &PvhConfig::default()).unwrap_err();
        assert!(matches!(
            err,
            PvhError::BootData(BootDataError::BadMemoryMapSize { count: 129, .. })
        ));

        // No usable RAM below 1 MiB: the boot structures have nowhere to go.
        let high_only = [ram_entry(0x10_0000, RAM - 0x10_0000)];
        let err = load_with(&high_only, &image(), &PvhConfig::default()).unwrap_err();
        assert!(matches!(
            err,
            PvhError::BootData(BootDataError::BootDataOutOfMemory {
                addr: 0x6000,
                size: 0x2000
            })
        ));
        // RAM around the start info but not the command line.
        let partial = [
            ram_entry(0, 0x1_0000),
            ram_entry(0x10_0000, RAM - 0x10_0000),
        ];
        let err = load_with(&partial, &image(), &PvhConfig::default()).unwrap_err();
        assert!(matches!(
            err,
            PvhError::BootData(BootDataError::BootDataOutOfMemory { addr: 0x2_0000, .. })
        ));
    }

    #[test]
    fn segments_must_lie_in_usable_backed_ram() {
        let config = PvhConfig::default();
        // Past the end of RAM.
        let beyond = ElfBuilder::new()
            .segment(GuestAddress(RAM - 0x10), &CODE, 0x20)
            .pvh_entry(GuestAddress(RAM - 0x10))
            .build();
        assert!(matches!(
            load_err(&beyond, &config),
            PvhError::SegmentOutOfMemory {
                index: 0,
                size: 0x20,
                ..
            }
        ));
        // In the reserved legacy area.
        let legacy = ElfBuilder::new()
            .segment(GuestAddress(0xa_0000), &CODE, 4)
            .pvh_entry(GuestAddress(0xa_0000))
            .build();
        assert!(matches!(
            load_err(&legacy, &config),
            PvhError::SegmentOutOfMemory { addr: 0xa_0000, .. }
        ));
        // In the 32-bit hole.
        let hole = ElfBuilder::new()
            .segment(GuestAddress(0xfec0_0000), &CODE, 4)
            .pvh_entry(GuestAddress(0xfec0_0000))
            .build();
        assert!(matches!(
            load_err(&hole, &config),
            PvhError::SegmentOutOfMemory { .. }
        ));
        // Reported as RAM but not backed by guest memory.
        let map = [ram_entry(0, 0x9_fc00), ram_entry(0x10_0000, RAM)];
        let unbacked = ElfBuilder::new()
            .segment(GuestAddress(RAM + 0x1000), &CODE, 4)
            .pvh_entry(GuestAddress(RAM + 0x1000))
            .build();
        assert!(matches!(
            load_with(&map, &unbacked, &config),
            Err(PvhError::SegmentOutOfMemory { .. })
        ));
    }

    #[test]
    fn segments_may_span_touching_ram_entries_given_in_any_order() {
        let map = [
            ram_entry(0x20_0000, RAM - 0x20_0000),
            ram_entry(0, 0x9_fc00),
            ram_entry(0x10_0000, 0x10_0000),
            MemoryMapEntry {
                addr: 0x9_fc00,
                size: 0x6_0400,
                kind: MemoryKind::Reserved,
            },
        ];
        let spanning = ElfBuilder::new()
            .segment(GuestAddress(0x1f_fff0), &CODE, 0x20)
            .pvh_entry(GuestAddress(0x1f_fff0))
            .build();
        let boot = load_with(&map, &spanning, &PvhConfig::default()).unwrap();
        assert_eq!(boot.image_end, GuestAddress(0x20_0010));
    }

    #[test]
    fn segments_must_not_overlap_the_boot_structures() {
        for addr in [0x6000, 0x5ff0, 0x7ffc, 0x2_0000, 0x2_0ff0, 0x1_f000] {
            let image = ElfBuilder::new()
                .segment(GuestAddress(addr), &CODE, 0x1004)
                .pvh_entry(GuestAddress(addr))
                .build();
            let err = load_err(&image, &PvhConfig::default());
            assert!(
                matches!(err, PvhError::SegmentOverlapsBootData { index: 0, .. }),
                "{addr:#x}: {err}"
            );
        }
        // Between the two areas is fine.
        let between = ElfBuilder::new()
            .segment(GuestAddress(0x8000), &CODE, 0x1_8000)
            .pvh_entry(GuestAddress(0x8000))
            .build();
        load_with(layout().memory_map(), &between, &PvhConfig::default()).unwrap();
    }

    #[test]
    fn nothing_is_written_when_validation_fails() {
        let layout = layout();
        let mem = dirty_memory(&layout);
        let too_long = "a".repeat(CMDLINE_CAPACITY);
        let err = load_pvh(
            &mem,
            layout.memory_map(),
            &image(),
            &PvhConfig::new(&too_long),
        );
        assert!(err.is_err());
        assert_eq!(mem.read_obj::<u32>(TEXT).unwrap(), u32::MAX);
        assert_eq!(mem.read_obj::<u32>(START_INFO_ADDR).unwrap(), u32::MAX);
        assert_eq!(mem.read_obj::<u8>(CMDLINE_ADDR).unwrap(), 0xff);
    }

    #[test]
    fn image_errors_come_first() {
        assert!(matches!(
            load_err(b"MZ", &PvhConfig::default()),
            PvhError::Elf(ElfError::NotElf)
        ));
    }
}
