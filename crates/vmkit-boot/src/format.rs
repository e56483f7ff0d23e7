//! Telling boot image formats apart by their bytes.

use crate::bzimage::has_bzimage_magic;

/// The format of a boot image, as its bytes say (never its file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// An ELF file (`\x7fELF` at offset 0): a PVH image such as `vmlinux` or a firmware, for
    /// [`load_pvh`](crate::load_pvh).
    Elf,
    /// A Linux bzImage (`0xAA55` at `0x1FE` and `"HdrS"` at `0x202`), such as a distribution's
    /// `vmlinuz`, for [`load_bzimage`](crate::load_bzimage).
    BzImage,
    /// Neither.
    Unknown,
}

/// The format of the boot image `bytes`. Only the magic numbers are looked at: the loader of
/// the format validates the rest.
///
/// ```
/// use vmkit_boot::bzimage::BzImageBuilder;
/// use vmkit_boot::elf::ElfBuilder;
/// use vmkit_boot::{ImageFormat, detect_image};
///
/// assert_eq!(detect_image(&BzImageBuilder::new().build()), ImageFormat::BzImage);
/// assert_eq!(detect_image(&ElfBuilder::new().build()), ImageFormat::Elf);
/// assert_eq!(detect_image(b"MZ"), ImageFormat::Unknown);
/// ```
pub fn detect_image(bytes: &[u8]) -> ImageFormat {
    if bytes.starts_with(b"\x7fELF") {
        ImageFormat::Elf
    } else if has_bzimage_magic(bytes) {
        ImageFormat::BzImage
    } else {
        ImageFormat::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bzimage::BzImageBuilder;

    #[test]
    fn looks_at_magic_numbers_only() {
        let bz = BzImageBuilder::new().build();
        assert_eq!(detect_image(&bz), ImageFormat::BzImage);
        // Enough bytes for the magic numbers and no more.
        assert_eq!(detect_image(&bz[..0x206]), ImageFormat::BzImage);
        assert_eq!(detect_image(&bz[..0x205]), ImageFormat::Unknown);
        // Each magic number alone is not enough.
        let mut no_flag = bz.clone();
        no_flag[0x1fe] = 0;
        assert_eq!(detect_image(&no_flag), ImageFormat::Unknown);
        let mut no_hdrs = bz.clone();
        no_hdrs[0x205] = b's';
        assert_eq!(detect_image(&no_hdrs), ImageFormat::Unknown);
        // An ELF file that happens to carry the bzImage bytes is an ELF file.
        let mut elf = bz;
        elf[..4].copy_from_slice(b"\x7fELF");
        assert_eq!(detect_image(&elf), ImageFormat::Elf);
        assert_eq!(detect_image(b"\x7fEL"), ImageFormat::Unknown);
        assert_eq!(detect_image(&[]), ImageFormat::Unknown);
    }
}
