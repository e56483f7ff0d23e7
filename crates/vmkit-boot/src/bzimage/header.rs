//! The setup header of a bzImage: the checks applied before anything is loaded.

use std::ops::Range;

use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::ByteValued;

use crate::bzimage::BzImageError;

/// Offset of the setup header in the image and in the zero page (`setup_sects`).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the boot sector signature `0xAA55` (`boot_flag`).
pub const BOOT_FLAG_OFFSET: usize = 0x1fe;
/// The boot sector signature.
pub const BOOT_FLAG: u16 = 0xaa55;
/// Offset of the `"HdrS"` magic (`header`).
pub const HEADER_MAGIC_OFFSET: usize = 0x202;
/// The setup header magic.
pub const HEADER_MAGIC: [u8; 4] = *b"HdrS";
/// The oldest boot protocol accepted: 2.12 brought `xloadflags` and its `XLF_KERNEL_64` bit,
/// which says the kernel has the 64-bit entry point.
pub const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// The shortest setup header accepted: it must reach the end of `init_size` (`0x264`), the last
/// field the loader reads.
pub const MIN_SETUP_HEADER_END: usize = 0x264;
/// Size of a setup sector.
pub const SECTOR_SIZE: usize = 512;
/// The number of setup sectors a `setup_sects` of 0 stands for.
pub const DEFAULT_SETUP_SECTS: u8 = 4;
/// Offset of the 64-bit entry point in the protected-mode kernel.
pub const KERNEL_64_ENTRY_OFFSET: u64 = 0x200;

/// `loadflags` bit 0: the protected-mode kernel loads at 1 MiB (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags` bit 7: `heap_end_ptr` is valid (16-bit entry only).
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags` bit 0: the kernel has the 64-bit entry point at offset 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `xloadflags` bit 1: the kernel, boot parameters, command line and ramdisk may lie above
/// 4 GiB.
pub const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;

/// Offset of the jump's displacement byte; the header ends at `0x202` plus this signed byte.
const JUMP_OFFSET_BYTE: usize = 0x201;
/// Offset of `version`.
const VERSION_OFFSET: usize = 0x206;
/// The zero page is as large as its type.
const ZERO_PAGE_LEN: usize = size_of::<boot_params>();

/// A validated bzImage: its setup header, where the protected-mode kernel lies in the file and
/// what the kernel asks of the memory it runs in.
///
/// [`BzImage::parse`] accepts an image when it has the boot sector signature `0xAA55` at
/// `0x1FE` and `"HdrS"` at `0x202`, speaks boot protocol 2.12 or later, has a setup header
/// that reaches `init_size` and lies in the file, says `XLF_KERNEL_64` (a 64-bit entry point)
/// and `LOADED_HIGH` (a bzImage, loaded at 1 MiB), holds a protected-mode kernel past the 64-bit
/// entry at offset 0x200 after its setup sectors, asks for an `init_size` that holds that
/// kernel, and, when relocatable, has a power-of-two `kernel_alignment`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BzImage {
    header: setup_header,
    header_end: usize,
    setup_size: usize,
    image_len: usize,
}

fn u16_at(image: &[u8], offset: usize) -> Option<u16> {
    let bytes = image.get(offset..offset + 2)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// Whether `image` carries the bzImage signatures: `0xAA55` at `0x1FE` and `"HdrS"` at `0x202`.
pub(crate) fn has_bzimage_magic(image: &[u8]) -> bool {
    u16_at(image, BOOT_FLAG_OFFSET) == Some(BOOT_FLAG)
        && image.get(HEADER_MAGIC_OFFSET..HEADER_MAGIC_OFFSET + 4) == Some(&HEADER_MAGIC[..])
}

impl BzImage {
    /// Parses and validates the setup header of `image` (see the [type](BzImage) for what is
    /// checked). Nothing is loaded.
    pub fn parse(image: &[u8]) -> Result<Self, BzImageError> {
        if !has_bzimage_magic(image) {
            return Err(BzImageError::NotBzImage);
        }
        let len = image.len();
        let version = u16_at(image, VERSION_OFFSET).ok_or(BzImageError::SetupHeaderOutOfFile {
            end: VERSION_OFFSET + 2,
            len,
        })?;
        if version < MIN_BOOT_PROTOCOL {
            return Err(BzImageError::BootProtocolTooOld {
                major: (version >> 8) as u8,
                minor: version as u8,
            });
        }
        // The magic check read 0x202..0x206, so the jump's byte is there.
        let displacement = image[JUMP_OFFSET_BYTE] as i8;
        let header_end = HEADER_MAGIC_OFFSET.saturating_add_signed(isize::from(displacement));
        if header_end < MIN_SETUP_HEADER_END {
            return Err(BzImageError::SetupHeaderTooShort { end: header_end });
        }
        if header_end > len {
            return Err(BzImageError::SetupHeaderOutOfFile {
                end: header_end,
                len,
            });
        }
        let mut header = setup_header::default();
        let copied = (header_end - SETUP_HEADER_OFFSET).min(size_of::<setup_header>());
        header.as_mut_slice()[..copied]
            .copy_from_slice(&image[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + copied]);

        let xloadflags = header.xloadflags;
        if xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BzImageError::No64BitEntry { xloadflags });
        }
        let loadflags = header.loadflags;
        if loadflags & LOADED_HIGH == 0 {
            return Err(BzImageError::NotLoadedHigh { loadflags });
        }
        let sectors = match header.setup_sects {
            0 => DEFAULT_SETUP_SECTS,
            sectors => sectors,
        };
        let setup_size = (usize::from(sectors) + 1) * SECTOR_SIZE;
        let kernel_size = len.saturating_sub(setup_size);
        if kernel_size as u64 <= KERNEL_64_ENTRY_OFFSET {
            return Err(BzImageError::KernelTooShort {
                setup_size,
                kernel_size,
            });
        }
        // The kernel moves itself to the end of its runtime range before decompressing, so the
        // range holds at least the protected-mode kernel.
        let init_size = header.init_size;
        if u64::from(init_size) < kernel_size as u64 {
            return Err(BzImageError::InitSizeTooSmall {
                init_size,
                kernel_size,
            });
        }
        let alignment = header.kernel_alignment;
        if header.relocatable_kernel != 0 && !alignment.is_power_of_two() {
            return Err(BzImageError::BadKernelAlignment { alignment });
        }
        Ok(BzImage {
            header,
            header_end,
            setup_size,
            image_len: len,
        })
    }

    /// The setup header as read from the image. Fields past the header's end (shorter headers
    /// of older protocols) are zero.
    pub fn setup_header(&self) -> &setup_header {
        &self.header
    }

    /// The boot protocol version, `(major << 8) | minor`: `0x020f` is 2.15.
    pub fn protocol_version(&self) -> u16 {
        self.header.version
    }

    /// Where the setup header lies in the file: from `0x1F1` to its end, `0x202` plus the
    /// signed byte at `0x201`. The zero page takes these bytes at the same offsets.
    pub fn setup_header_range(&self) -> Range<usize> {
        SETUP_HEADER_OFFSET..self.header_end
    }

    /// Where the protected-mode kernel lies in the file: after the boot sector and the setup
    /// sectors (`(setup_sects + 1) × 512` bytes, `setup_sects` 0 meaning 4), to the end.
    pub fn kernel_range(&self) -> Range<usize> {
        self.setup_size..self.image_len
    }

    /// Size of the protected-mode kernel in bytes.
    pub fn kernel_size(&self) -> u64 {
        (self.image_len - self.setup_size) as u64
    }

    /// `init_size`: the bytes of contiguous memory the kernel needs from its runtime start to
    /// decompress and start itself.
    pub fn init_size(&self) -> u64 {
        u64::from(self.header.init_size)
    }

    /// The most command-line bytes the kernel takes, without the terminating NUL
    /// (`cmdline_size`).
    pub fn cmdline_size(&self) -> u64 {
        u64::from(self.header.cmdline_size)
    }

    /// The highest address the initramfs may occupy (`initrd_addr_max`).
    pub fn initrd_addr_max(&self) -> u64 {
        u64::from(self.header.initrd_addr_max)
    }

    /// Whether the kernel takes `acpi_rsdp_addr` from the zero page: boot protocol 2.14 or later.
    pub fn takes_rsdp(&self) -> bool {
        self.header.version >= 0x020e
    }

    /// Where the kernel decompresses itself when its protected-mode part is loaded at
    /// `load_address`: a relocatable kernel at `load_address` aligned up to `kernel_alignment`,
    /// but not below `pref_address` (the address it was linked for); any other kernel at
    /// `pref_address`. This is what the kernel's 64-bit entry code computes. `None` if aligning
    /// overflows.
    pub fn runtime_start(&self, load_address: u64) -> Option<u64> {
        let preferred = self.header.pref_address;
        if self.header.relocatable_kernel == 0 {
            return Some(preferred);
        }
        let alignment = u64::from(self.header.kernel_alignment);
        Some(
            load_address
                .checked_next_multiple_of(alignment)?
                .max(preferred),
        )
    }

    /// A zero page for this kernel: all zero but the setup header, copied from `image` (the
    /// image this was parsed from) to its end at the same offsets, as the boot protocol asks.
    pub(crate) fn zero_page(&self, image: &[u8]) -> boot_params {
        let mut params = boot_params::default();
        let end = self.header_end.min(ZERO_PAGE_LEN);
        params.as_mut_slice()[SETUP_HEADER_OFFSET..end]
            .copy_from_slice(&image[SETUP_HEADER_OFFSET..end]);
        params
    }
}
