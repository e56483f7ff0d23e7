use super::*;
use vm_memory::{ByteValued, GuestMemoryMmap};
use vmkit_memory::{GuestLayout, MemoryKind};

const RAM: u64 = 64 << 20;
const MIB: u64 = 1 << 20;

fn layout() -> GuestLayout {
    GuestLayout::new(RAM).unwrap()
}

/// Guest memory of `layout` with its first 64 MiB set to 0xff, so every write is visible.
fn dirty_memory(layout: &GuestLayout) -> GuestMemoryMmap {
    let mem = layout.create_guest_memory().unwrap();
    let junk = vec![0xff; RAM.min(layout.ram_size()) as usize];
    mem.write_slice(&junk, GuestAddress(0)).unwrap();
    mem
}

fn ram_entry(addr: u64, size: u64) -> MemoryMapEntry {
    MemoryMapEntry {
        addr,
        size,
        kind: MemoryKind::Ram,
    }
}

/// A kernel whose bytes differ everywhere, so a shifted copy is caught.
fn kernel_bytes(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn load_with(
    map: &[MemoryMapEntry],
    image: &[u8],
    config: &LinuxConfig<'_>,
) -> Result<LinuxBoot, BzImageError> {
    let mem = layout().create_guest_memory().unwrap();
    load_bzimage(&mem, map, image, config)
}

fn load_err(image: &[u8], config: &LinuxConfig<'_>) -> BzImageError {
    load_with(layout().memory_map(), image, config).unwrap_err()
}

fn read_params(mem: &GuestMemoryMmap) -> boot_params {
    mem.read_obj(ZERO_PAGE_ADDR).unwrap()
}

#[test]
fn loads_the_kernel_and_writes_the_zero_page() {
    let layout = layout();
    let mem = dirty_memory(&layout);
    let kernel = kernel_bytes(0x3456);
    let image = BzImageBuilder::new().kernel(&kernel).build();
    let initramfs = vec![0x5a; 0x1800];
    let config = LinuxConfig {
        cmdline: "console=ttyS0 quiet",
        initramfs: Some(&initramfs),
        rsdp: Some(GuestAddress(0xe_0000)),
    };
    let boot = load_bzimage(&mem, layout.memory_map(), &image, &config).unwrap();

    let initramfs_start = RAM - 0x2000;
    assert_eq!(
        boot,
        LinuxBoot {
            entry: GuestAddress(0x10_0200),
            boot_params: ZERO_PAGE_ADDR,
            gdt: BOOT_GDT_ADDR,
            stack_pointer: BOOT_STACK_POINTER,
            cmdline: CMDLINE_ADDR,
            kernel: 0x10_0000..0x10_0000 + 0x3456,
            runtime: 0x100_0000..0x140_0000,
            initramfs: Some(initramfs_start..initramfs_start + 0x1800),
            protocol_version: 0x020f,
        }
    );

    // The protected-mode kernel, and nothing past it.
    let mut loaded = vec![0; kernel.len()];
    mem.read_slice(&mut loaded, KERNEL_LOAD_ADDR).unwrap();
    assert_eq!(loaded, kernel);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(boot.kernel.end)).unwrap(),
        0xff
    );
    // The setup sectors are not loaded anywhere: the byte before the kernel is untouched.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0xf_ffff)).unwrap(), 0xff);

    // The initramfs, and nothing around it.
    let mut placed = vec![0; initramfs.len()];
    mem.read_slice(&mut placed, GuestAddress(initramfs_start))
        .unwrap();
    assert_eq!(placed, initramfs);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(initramfs_start - 1))
            .unwrap(),
        0xff
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(initramfs_start + 0x1800))
            .unwrap(),
        0xff
    );

    // The command line.
    let mut cmdline = [0u8; 21];
    mem.read_slice(&mut cmdline, CMDLINE_ADDR).unwrap();
    assert_eq!(&cmdline, b"console=ttyS0 quiet\0\xff");

    // The zero page: the image's header with the loader's fields.
    let params = read_params(&mem);
    let hdr = params.hdr;
    assert_eq!({ hdr.setup_sects }, 4);
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, 0x020f);
    assert_eq!({ hdr.jump }, 0x6aeb);
    assert_eq!({ hdr.init_size }, 0x40_0000);
    assert_eq!({ hdr.pref_address }, 0x100_0000);
    assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
    assert_eq!({ hdr.relocatable_kernel }, 1);
    assert_eq!(
        { hdr.xloadflags },
        XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
    );
    assert_eq!({ hdr.cmdline_size }, 0x7ff);
    assert_eq!({ hdr.initrd_addr_max }, 0x7fff_ffff);
    assert_eq!({ hdr.loadflags }, LOADED_HIGH);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.vid_mode }, 0xffff);
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.cmd_line_ptr }, 0x2_0000);
    assert_eq!({ hdr.ramdisk_image } as u64, initramfs_start);
    assert_eq!({ hdr.ramdisk_size }, 0x1800);
    assert_eq!({ hdr.setup_data }, 0);
    assert_eq!(
        ({ params.ext_ramdisk_image }, { params.ext_ramdisk_size }, {
            params.ext_cmd_line_ptr
        }),
        (0, 0, 0)
    );
    assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
    assert_eq!(params.e820_entries as usize, layout.memory_map().len());
    for (index, expected) in layout.memory_map().iter().enumerate() {
        let entry = params.e820_table[index];
        assert_eq!(
            ({ entry.addr }, { entry.size }, { entry.r#type }),
            (expected.addr, expected.size, expected.kind.e820_type())
        );
    }
    let unused = params.e820_table[layout.memory_map().len()];
    assert_eq!(
        ({ unused.addr }, { unused.size }, { unused.r#type }),
        (0, 0, 0)
    );
    // Everything before the header but the RSDP and the e820 count is zero, as is the rest.
    let bytes = params.as_slice();
    assert!(bytes[..0x70].iter().all(|&b| b == 0));
    assert!(bytes[0x78..0x1e8].iter().all(|&b| b == 0));
    assert!(bytes[0x1e9..0x1f1].iter().all(|&b| b == 0));
    assert!(bytes[0x26c..0x2d0].iter().all(|&b| b == 0));
}

#[test]
fn the_setup_header_is_copied_to_its_end_only() {
    let mut image = BzImageBuilder::new().header_end_byte(0x62).build();
    // handover_offset and kernel_info_offset lie past this header's end.
    image[0x264..0x26c].copy_from_slice(&[0xee; 8]);
    // Fields a loader owns, set by a hostile image.
    image[0x211] |= CAN_USE_HEAP;
    image[0x218..0x220].copy_from_slice(&[0x77; 8]); // ramdisk_image, ramdisk_size
    image[0x228..0x22c].copy_from_slice(&[0x77; 4]); // cmd_line_ptr
    image[0x23c..0x248].copy_from_slice(&[0x77; 12]); // hardware_subarch(_data)
    image[0x250..0x258].copy_from_slice(&[0x77; 8]); // setup_data
    image[0x210] = 0x77; // type_of_loader
    image[0x1fa..0x1fc].copy_from_slice(&[0x77; 2]); // vid_mode

    let layout = layout();
    let mem = dirty_memory(&layout);
    load_bzimage(&mem, layout.memory_map(), &image, &LinuxConfig::new("")).unwrap();
    let params = read_params(&mem);
    let bytes = params.as_slice();
    assert!(bytes[0x264..0x290].iter().all(|&b| b == 0));
    let hdr = params.hdr;
    assert_eq!({ hdr.loadflags }, LOADED_HIGH);
    assert_eq!(({ hdr.ramdisk_image }, { hdr.ramdisk_size }), (0, 0));
    assert_eq!({ hdr.cmd_line_ptr }, 0x2_0000);
    assert_eq!(
        ({ hdr.hardware_subarch }, { hdr.hardware_subarch_data }),
        (0, 0)
    );
    assert_eq!({ hdr.setup_data }, 0);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.vid_mode }, 0xffff);
    // The rest of the header is the image's, byte for byte.
    assert_eq!(bytes[0x1f1..0x1fa], image[0x1f1..0x1fa]);
    assert_eq!(bytes[0x1fc..0x210], image[0x1fc..0x210]);
    assert_eq!(bytes[0x22c..0x23c], image[0x22c..0x23c]);
    assert_eq!(bytes[0x258..0x264], image[0x258..0x264]);
    // An empty command line is an empty string.
    assert_eq!(mem.read_obj::<u8>(CMDLINE_ADDR).unwrap(), 0);
}

#[test]
fn acpi_rsdp_addr_needs_protocol_2_14() {
    let rsdp = LinuxConfig {
        rsdp: Some(GuestAddress(0xe_0000)),
        ..LinuxConfig::default()
    };
    for (version, expected) in [
        (0x020c, 0),
        (0x020d, 0),
        (0x020e, 0xe_0000),
        (0x020f, 0xe_0000),
    ] {
        let layout = layout();
        let mem = dirty_memory(&layout);
        let image = BzImageBuilder::new().protocol(version).build();
        let boot = load_bzimage(&mem, layout.memory_map(), &image, &rsdp).unwrap();
        assert_eq!(boot.protocol_version, version);
        assert_eq!(
            { read_params(&mem).acpi_rsdp_addr },
            expected,
            "{version:#x}"
        );
    }
    let layout = layout();
    let mem = dirty_memory(&layout);
    let image = BzImageBuilder::new().build();
    load_bzimage(&mem, layout.memory_map(), &image, &LinuxConfig::new("")).unwrap();
    assert_eq!({ read_params(&mem).acpi_rsdp_addr }, 0);
}

#[test]
fn e820_table_carries_every_kind() {
    let map = [
        ram_entry(0, 0x9_fc00),
        MemoryMapEntry {
            addr: 0x9_fc00,
            size: 0x6_0400,
            kind: MemoryKind::Reserved,
        },
        ram_entry(0x10_0000, 0x1f0_0000),
        MemoryMapEntry {
            addr: 0x200_0000,
            size: 0x1000,
            kind: MemoryKind::Acpi,
        },
        MemoryMapEntry {
            addr: 0x200_1000,
            size: 0x1000,
            kind: MemoryKind::Nvs,
        },
        ram_entry(0x200_2000, RAM - 0x200_2000),
    ];
    let mem = dirty_memory(&layout());
    let image = BzImageBuilder::new().build();
    load_bzimage(&mem, &map, &image, &LinuxConfig::new("")).unwrap();
    let params = read_params(&mem);
    assert_eq!(params.e820_entries, 6);
    let types: Vec<u32> = params.e820_table[..6].iter().map(|e| e.r#type).collect();
    assert_eq!(types, [1, 2, 1, 3, 4, 1]);
}

#[test]
fn a_distribution_kernel_needs_its_init_size() {
    // The header of Debian's 6.1 kernel: 39 setup sectors, pref_address 16 MiB, init_size
    // 0x3f98000 (66.7 MB) for an 8 MiB file.
    let image = BzImageBuilder::new()
        .setup_sects(39)
        .xloadflags(0x7f)
        .init_size(0x3f9_8000)
        .kernel(&kernel_bytes(0x7c_0000))
        .build();
    let initramfs = vec![1u8; 0x10_0000];
    let config = LinuxConfig {
        cmdline: "console=ttyS0",
        initramfs: Some(&initramfs),
        rsdp: None,
    };
    let err = load_err(&image, &config);
    assert!(
        matches!(
            err,
            BzImageError::DecompressionOutOfMemory {
                start: 0x100_0000,
                size: 0x3f9_8000,
                available: 0x300_0000,
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the kernel needs 0x3f98000 bytes (init_size) of usable guest RAM below 4 GiB from \
         0x1000000 to decompress itself; 0x3000000 are there"
    );

    let big = GuestLayout::new(128 << 20).unwrap();
    let mem = big.create_guest_memory().unwrap();
    let boot = load_bzimage(&mem, big.memory_map(), &image, &config).unwrap();
    assert_eq!(boot.kernel, 0x10_0000..0x10_0000 + 0x7c_0000);
    assert_eq!(boot.runtime, 0x100_0000..0x4f9_8000);
    // The initramfs goes to the top of RAM, above the runtime range.
    assert_eq!(boot.initramfs, Some((128 << 20) - 0x10_0000..128 << 20));
}

#[test]
fn runtime_start_follows_the_kernel_entry_code() {
    let parse = |builder: BzImageBuilder| BzImage::parse(&builder.build()).unwrap();
    // Relocatable: the load address aligned up, but not below pref_address.
    let low_pref = parse(BzImageBuilder::new().pref_address(0));
    assert_eq!(low_pref.runtime_start(0x10_0000), Some(0x20_0000));
    assert_eq!(low_pref.runtime_start(0x20_0000), Some(0x20_0000));
    assert_eq!(low_pref.runtime_start(u64::MAX), None);
    let fine = parse(
        BzImageBuilder::new()
            .pref_address(0)
            .kernel_alignment(0x1000),
    );
    assert_eq!(fine.runtime_start(0x10_0000), Some(0x10_0000));
    let default = parse(BzImageBuilder::new());
    assert_eq!(default.runtime_start(0x10_0000), Some(0x100_0000));
    assert_eq!(default.runtime_start(0x300_0001), Some(0x320_0000));
    // Not relocatable: pref_address, whatever its alignment says.
    let fixed = parse(
        BzImageBuilder::new()
            .relocatable(false)
            .kernel_alignment(0)
            .pref_address(0x40_0000),
    );
    assert_eq!(fixed.runtime_start(0x10_0000), Some(0x40_0000));

    // A runtime range at 1 MiB overlaps the kernel: the kernel moves itself.
    let image = BzImageBuilder::new()
        .pref_address(0)
        .kernel_alignment(0x1000)
        .build();
    let boot = load_with(layout().memory_map(), &image, &LinuxConfig::default()).unwrap();
    assert_eq!(boot.runtime, 0x10_0000..0x50_0000);
}

#[test]
fn parse_reports_the_header() {
    let image = BzImageBuilder::new()
        .setup_sects(0)
        .cmdline_size(100)
        .initrd_addr_max(0x3fff_ffff)
        .code32_start(0x20_0000)
        .build();
    let bz = BzImage::parse(&image).unwrap();
    assert_eq!(bz.setup_header_range(), 0x1f1..0x26c);
    assert_eq!(bz.kernel_range(), 0xa00..0xa00 + 0x1000);
    assert_eq!(bz.kernel_size(), 0x1000);
    assert_eq!(bz.cmdline_size(), 100);
    assert_eq!(bz.initrd_addr_max(), 0x3fff_ffff);
    assert_eq!({ bz.setup_header().code32_start }, 0x20_0000);
    assert!(bz.takes_rsdp());
    // The loader loads at 1 MiB whatever code32_start says, and says so in the zero page.
    let layout = layout();
    let mem = dirty_memory(&layout);
    load_bzimage(&mem, layout.memory_map(), &image, &LinuxConfig::default()).unwrap();
    assert_eq!({ read_params(&mem).hdr.code32_start }, 0x10_0000);
    // The default builder kernel's 64-bit entry ends the VM through the debug-exit port.
    let mut entry = [0u8; 5];
    mem.read_slice(&mut entry, GuestAddress(0x10_0200)).unwrap();
    assert_eq!(entry, [0x31, 0xc0, 0xe7, 0xf4, 0xf4]);
    assert_eq!(
        BzImageBuilder::default().build(),
        BzImageBuilder::new().build()
    );
}

#[test]
fn rejects_what_is_not_a_bzimage() {
    let good = BzImageBuilder::new().build();
    for image in [&[][..], &good[..0x205], b"\x7fELF"] {
        assert!(matches!(
            BzImage::parse(image),
            Err(BzImageError::NotBzImage)
        ));
    }
    let mut no_flag = good.clone();
    no_flag[0x1ff] = 0;
    assert!(matches!(
        load_err(&no_flag, &LinuxConfig::default()),
        BzImageError::NotBzImage
    ));
    let mut no_magic = good;
    no_magic[0x202] = b'h';
    assert!(matches!(
        load_err(&no_magic, &LinuxConfig::default()),
        BzImageError::NotBzImage
    ));
}

#[test]
fn rejects_bad_setup_headers() {
    let good = BzImageBuilder::new().build();
    let err = |image: &[u8]| BzImage::parse(image).unwrap_err();
    // Cut inside the version, inside the header.
    assert!(matches!(
        err(&good[..0x207]),
        BzImageError::SetupHeaderOutOfFile {
            end: 0x208,
            len: 0x207
        }
    ));
    assert!(matches!(
        err(&good[..0x26b]),
        BzImageError::SetupHeaderOutOfFile {
            end: 0x26c,
            len: 0x26b
        }
    ));
    // Too old a protocol, named as the kernel names it.
    let old = err(&BzImageBuilder::new().protocol(0x020b).build());
    assert!(matches!(
        old,
        BzImageError::BootProtocolTooOld {
            major: 2,
            minor: 11
        }
    ));
    assert_eq!(
        old.to_string(),
        "the bzImage speaks boot protocol 2.11; the 64-bit boot protocol needs 2.12 or later"
    );
    // Headers too short to hold init_size, with a forward and a backward jump.
    assert!(matches!(
        err(&BzImageBuilder::new().header_end_byte(0x61).build()),
        BzImageError::SetupHeaderTooShort { end: 0x263 }
    ));
    assert!(matches!(
        err(&BzImageBuilder::new().header_end_byte(0x80).build()),
        BzImageError::SetupHeaderTooShort { end: 0x182 }
    ));
    // The longest header a jump byte allows is fine.
    BzImage::parse(&BzImageBuilder::new().header_end_byte(0x7f).build()).unwrap();
    assert!(matches!(
        err(&BzImageBuilder::new()
            .xloadflags(XLF_CAN_BE_LOADED_ABOVE_4G)
            .build()),
        BzImageError::No64BitEntry { xloadflags: 2 }
    ));
    assert!(matches!(
        err(&BzImageBuilder::new().loadflags(0x80).build()),
        BzImageError::NotLoadedHigh { loadflags: 0x80 }
    ));
}

#[test]
fn rejects_kernels_without_a_64_bit_entry_or_room() {
    let err = |builder: BzImageBuilder| BzImage::parse(&builder.build()).unwrap_err();
    assert!(matches!(
        err(BzImageBuilder::new().kernel(&[0; 0x200])),
        BzImageError::KernelTooShort {
            setup_size: 0xa00,
            kernel_size: 0x200
        }
    ));
    BzImage::parse(&BzImageBuilder::new().kernel(&[0; 0x201]).build()).unwrap();
    // Setup sectors past the end of the file.
    let mut image = BzImageBuilder::new().build();
    image[0x1f1] = 200;
    assert!(matches!(
        BzImage::parse(&image),
        Err(BzImageError::KernelTooShort {
            setup_size: 0x19200,
            kernel_size: 0
        })
    ));
    assert!(matches!(
        err(BzImageBuilder::new().init_size(0xfff)),
        BzImageError::InitSizeTooSmall {
            init_size: 0xfff,
            kernel_size: 0x1000
        }
    ));
    for alignment in [0, 0x3000] {
        assert!(matches!(
            err(BzImageBuilder::new().kernel_alignment(alignment)),
            BzImageError::BadKernelAlignment { alignment: a } if a == alignment
        ));
    }
    // A kernel that does not relocate ignores its alignment.
    BzImage::parse(
        &BzImageBuilder::new()
            .relocatable(false)
            .kernel_alignment(0x3000)
            .build(),
    )
    .unwrap();
}

#[test]
fn rejects_bad_command_lines() {
    let image = BzImageBuilder::new().cmdline_size(16).build();
    load_with(
        layout().memory_map(),
        &image,
        &LinuxConfig::new(&"a".repeat(16)),
    )
    .unwrap();
    assert!(matches!(
        load_err(&image, &LinuxConfig::new(&"a".repeat(17))),
        BzImageError::BootData(BootDataError::CmdlineTooLong { len: 17, max: 16 })
    ));
    // A kernel taking more than the command-line area gets what the area holds.
    let generous = BzImageBuilder::new().cmdline_size(u32::MAX).build();
    let longest = "a".repeat(CMDLINE_CAPACITY - 1);
    let layout = layout();
    let mem = dirty_memory(&layout);
    load_bzimage(
        &mem,
        layout.memory_map(),
        &generous,
        &LinuxConfig::new(&longest),
    )
    .unwrap();
    let end = GuestAddress(CMDLINE_ADDR.0 + longest.len() as u64);
    assert_eq!(mem.read_obj::<u8>(end).unwrap(), 0);
    assert!(matches!(
        load_err(&generous, &LinuxConfig::new(&"a".repeat(CMDLINE_CAPACITY))),
        BzImageError::BootData(BootDataError::CmdlineTooLong {
            len: 4096,
            max: 4095
        })
    ));
    assert!(matches!(
        load_err(&image, &LinuxConfig::new("a\0b")),
        BzImageError::BootData(BootDataError::CmdlineHasNul)
    ));
}

#[test]
fn rejects_bad_memory_maps() {
    let image = BzImageBuilder::new().build();
    let config = LinuxConfig::default();
    assert!(matches!(
        load_with(&[], &image, &config),
        Err(BzImageError::BootData(BootDataError::BadMemoryMapSize {
            count: 0,
            max: 128
        }))
    ));
    let many: Vec<MemoryMapEntry> = (0..129).map(|i| ram_entry(i << 20, 1 << 20)).collect();
    assert!(matches!(
        load_with(&many, &image, &config),
        Err(BzImageError::BootData(BootDataError::BadMemoryMapSize {
            count: 129,
            ..
        }))
    ));
    // No usable RAM below 1 MiB: the boot structures have nowhere to go.
    let high_only = [ram_entry(MIB, RAM - MIB)];
    assert!(matches!(
        load_with(&high_only, &image, &config),
        Err(BzImageError::BootData(BootDataError::BootDataOutOfMemory {
            addr: 0x500,
            size: 0x100
        }))
    ));
    // RAM for the zero page but not the command line.
    let partial = [ram_entry(0, 0x1_0000), ram_entry(MIB, RAM - MIB)];
    assert!(matches!(
        load_with(&partial, &image, &config),
        Err(BzImageError::BootData(BootDataError::BootDataOutOfMemory {
            addr: 0x2_0000,
            ..
        }))
    ));
}

#[test]
fn the_kernel_must_lie_in_usable_ram() {
    let config = LinuxConfig::default();
    // RAM below 1 MiB only.
    let low_only = [ram_entry(0, 0x9_fc00)];
    let image = BzImageBuilder::new().build();
    assert!(matches!(
        load_with(&low_only, &image, &config),
        Err(BzImageError::KernelOutOfMemory {
            addr: 0x10_0000,
            size: 0x1000
        })
    ));
    // A kernel larger than RAM.
    let huge = BzImageBuilder::new()
        .init_size(u32::MAX)
        .kernel(&vec![0; RAM as usize])
        .build();
    assert!(matches!(
        load_err(&huge, &config),
        BzImageError::KernelOutOfMemory { size: RAM, .. }
    ));
}

#[test]
fn the_runtime_range_must_lie_in_usable_ram_below_4_gib() {
    let config = LinuxConfig::default();
    // Past the end of RAM.
    let past = BzImageBuilder::new().pref_address(RAM - 0x20_0000).build();
    assert!(matches!(
        load_err(&past, &config),
        BzImageError::DecompressionOutOfMemory {
            start: 0x3e0_0000,
            size: 0x40_0000,
            available: 0x20_0000
        }
    ));
    // In the 32-bit hole, and crossing 4 GiB.
    for pref in [0xfec0_0000, 0xffe0_0000] {
        let image = BzImageBuilder::new().pref_address(pref).build();
        assert!(matches!(
            load_err(&image, &config),
            BzImageError::DecompressionOutOfMemory { available: 0, .. }
        ));
    }
    // Above 4 GiB, even where RAM is: the boot page tables do not map it.
    let map = [
        ram_entry(0, 0x9_fc00),
        ram_entry(MIB, 0x20_0000),
        ram_entry(1 << 32, 0x80_0000),
    ];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x30_0000),
        (GuestAddress(1 << 32), 0x80_0000),
    ])
    .unwrap();
    let high = BzImageBuilder::new()
        .pref_address(1 << 32)
        .init_size(0x10_0000)
        .build();
    assert!(matches!(
        load_bzimage(&mem, &map, &high, &config),
        Err(BzImageError::DecompressionOutOfMemory {
            start: 0x1_0000_0000,
            available: 0,
            ..
        })
    ));
    // A runtime start at u64::MAX wraps.
    let wraps = BzImageBuilder::new()
        .relocatable(false)
        .pref_address(u64::MAX)
        .build();
    assert!(matches!(
        load_err(&wraps, &config),
        BzImageError::DecompressionOutOfMemory {
            start: u64::MAX,
            ..
        }
    ));
}

#[test]
fn the_runtime_range_must_not_overlap_the_boot_structures() {
    let config = LinuxConfig::default();
    for pref in [0x0, 0x8000, 0x1_f000, 0xa000] {
        let image = BzImageBuilder::new()
            .relocatable(false)
            .pref_address(pref)
            .init_size(0x2000)
            .build();
        assert!(
            matches!(
                load_err(&image, &config),
                BzImageError::DecompressionOverlapsBootData { start, size: 0x2000 } if start == pref
            ),
            "{pref:#x}"
        );
    }
    // Between them is allowed, if odd.
    let between = BzImageBuilder::new()
        .relocatable(false)
        .pref_address(0x1_0000)
        .init_size(0x1_0000)
        .build();
    let boot = load_with(layout().memory_map(), &between, &config).unwrap();
    assert_eq!(boot.runtime, 0x1_0000..0x2_0000);
}

#[test]
fn places_the_initramfs_below_its_limits_clear_of_the_kernel() {
    let initramfs = [7u8; 0x1000];
    let config = LinuxConfig {
        cmdline: "",
        initramfs: Some(&initramfs),
        rsdp: None,
    };
    let place = |builder: BzImageBuilder| {
        load_with(layout().memory_map(), &builder.build(), &config).map(|boot| boot.initramfs)
    };
    // Below initrd_addr_max: the highest byte may be initrd_addr_max itself.
    assert_eq!(
        place(BzImageBuilder::new().initrd_addr_max(0x1f_ffff)).unwrap(),
        Some(0x1f_f000..0x20_0000)
    );
    // Just above the kernel.
    assert_eq!(
        place(BzImageBuilder::new().initrd_addr_max(0x10_1fff)).unwrap(),
        Some(0x10_1000..0x10_2000)
    );
    assert!(matches!(
        place(BzImageBuilder::new().initrd_addr_max(0x10_1ffe)),
        Err(BzImageError::InitramfsDoesNotFit {
            size: 0x1000,
            limit: 0x10_1fff
        })
    ));
    // Never below 1 MiB, though conventional memory is usable RAM.
    assert!(matches!(
        place(BzImageBuilder::new().initrd_addr_max(0xf_ffff)),
        Err(BzImageError::InitramfsDoesNotFit {
            limit: 0x10_0000,
            ..
        })
    ));
    // Below the runtime range at the top of RAM.
    assert_eq!(
        place(BzImageBuilder::new().pref_address(RAM - 0x40_0000)).unwrap(),
        Some(RAM - 0x40_1000..RAM - 0x40_0000)
    );
    // Too large for RAM.
    let huge = vec![0u8; RAM as usize];
    let config = LinuxConfig {
        initramfs: Some(&huge),
        ..LinuxConfig::default()
    };
    assert!(matches!(
        load_err(&BzImageBuilder::new().build(), &config),
        BzImageError::InitramfsDoesNotFit {
            size: RAM,
            limit: 0x8000_0000
        }
    ));
    // At most 4 GiB, whatever initrd_addr_max says.
    assert!(matches!(
        load_err(
            &BzImageBuilder::new().initrd_addr_max(u32::MAX).build(),
            &config
        ),
        BzImageError::InitramfsDoesNotFit {
            size: RAM,
            limit: 0x1_0000_0000
        }
    ));
    let empty = LinuxConfig {
        initramfs: Some(&[]),
        ..LinuxConfig::default()
    };
    assert!(matches!(
        load_err(&BzImageBuilder::new().build(), &empty),
        BzImageError::EmptyInitramfs
    ));
}

#[test]
fn the_initramfs_skips_reserved_ram_and_needs_backing() {
    let initramfs = [7u8; 0x1000];
    let config = LinuxConfig {
        initramfs: Some(&initramfs),
        ..LinuxConfig::default()
    };
    let image = BzImageBuilder::new().build();
    // The top of RAM is reserved: the initramfs goes below it.
    let mut reserved = layout();
    reserved
        .set_memory_kind(GuestAddress(RAM - MIB), MIB, MemoryKind::Reserved)
        .unwrap();
    let boot = load_with(reserved.memory_map(), &image, &config).unwrap();
    assert_eq!(boot.initramfs, Some(RAM - MIB - 0x1000..RAM - MIB));
    // The map claims RAM up to 64 MiB, but only 32 MiB are backed.
    let map = [ram_entry(0, 0x9_fc00), ram_entry(MIB, RAM - MIB)];
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap();
    assert!(matches!(
        load_bzimage(&mem, &map, &image, &config),
        Err(BzImageError::InitramfsDoesNotFit { .. })
    ));
}

#[test]
fn nothing_is_written_when_validation_fails() {
    let layout = layout();
    let mem = dirty_memory(&layout);
    let huge = vec![0u8; RAM as usize];
    let config = LinuxConfig {
        cmdline: "console=ttyS0",
        initramfs: Some(&huge),
        rsdp: None,
    };
    let image = BzImageBuilder::new().build();
    assert!(load_bzimage(&mem, layout.memory_map(), &image, &config).is_err());
    for addr in [
        KERNEL_LOAD_ADDR,
        ZERO_PAGE_ADDR,
        CMDLINE_ADDR,
        GuestAddress(RAM - 4),
    ] {
        assert_eq!(mem.read_obj::<u32>(addr).unwrap(), u32::MAX, "{addr:?}");
    }
    let mut junk = vec![0; 0x1000];
    mem.read_slice(&mut junk, ZERO_PAGE_ADDR).unwrap();
    assert!(junk.iter().all(|&b| b == 0xff));
}

#[test]
fn image_errors_come_first() {
    let config = LinuxConfig::new("a\0b");
    assert!(matches!(
        load_with(&[], b"MZ", &config),
        Err(BzImageError::NotBzImage)
    ));
    assert!(matches!(
        load_with(&[], &BzImageBuilder::new().build(), &config),
        Err(BzImageError::BootData(BootDataError::CmdlineHasNul))
    ));
}
