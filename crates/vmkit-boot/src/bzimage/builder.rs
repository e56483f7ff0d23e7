//! A minimal bzImage writer, for tests and fuzz seeds.

use super::header::{
    BOOT_FLAG, BOOT_FLAG_OFFSET, HEADER_MAGIC, HEADER_MAGIC_OFFSET, KERNEL_64_ENTRY_OFFSET,
    LOADED_HIGH, SECTOR_SIZE, XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64,
};

/// Writes minimal bzImages: a boot sector with the setup header, empty setup sectors and a
/// protected-mode kernel of your choosing. Nothing in them decompresses; they exercise the
/// loader, and the default kernel's 64-bit entry ends the VM through the debug-exit port
/// (`xor eax, eax; out 0xf4, eax; hlt`), so a VMM can run it too.
///
/// The defaults follow a current x86-64 kernel: boot protocol 2.15, four setup sectors, a
/// header ending at `0x26c`, `LOADED_HIGH`, `code32_start` `0x100000`, `initrd_addr_max`
/// `0x7fffffff`, relocatable with `kernel_alignment` 2 MiB, `xloadflags` `XLF_KERNEL_64 |
/// XLF_CAN_BE_LOADED_ABOVE_4G`, `cmdline_size` `0x7ff`, `pref_address` 16 MiB and an
/// `init_size` of 4 MiB.
///
/// ```
/// use vmkit_boot::bzimage::{BzImage, BzImageBuilder};
///
/// let image = BzImageBuilder::new().protocol(0x020c).init_size(1 << 20).build();
/// let parsed = BzImage::parse(&image).unwrap();
/// assert_eq!(parsed.protocol_version(), 0x020c);
/// assert_eq!(parsed.init_size(), 1 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct BzImageBuilder {
    setup_sects: u8,
    header_end_byte: u8,
    version: u16,
    loadflags: u8,
    code32_start: u32,
    initrd_addr_max: u32,
    kernel_alignment: u32,
    relocatable: bool,
    xloadflags: u16,
    cmdline_size: u32,
    pref_address: u64,
    init_size: u32,
    kernel: Vec<u8>,
}

impl Default for BzImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// `xor eax, eax; out 0xf4, eax; hlt`.
const EXIT_CODE: [u8; 5] = [0x31, 0xc0, 0xe7, 0xf4, 0xf4];

impl BzImageBuilder {
    /// A builder with the defaults above and a 4 KiB protected-mode kernel whose 64-bit entry
    /// ends the VM.
    pub fn new() -> Self {
        let mut kernel = vec![0; 0x1000];
        let entry = KERNEL_64_ENTRY_OFFSET as usize;
        kernel[entry..entry + EXIT_CODE.len()].copy_from_slice(&EXIT_CODE);
        BzImageBuilder {
            setup_sects: 4,
            header_end_byte: 0x6a,
            version: 0x020f,
            loadflags: LOADED_HIGH,
            code32_start: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            kernel_alignment: 0x20_0000,
            relocatable: true,
            xloadflags: XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G,
            cmdline_size: 0x7ff,
            pref_address: 0x100_0000,
            init_size: 0x40_0000,
            kernel,
        }
    }

    /// The boot protocol version, `(major << 8) | minor`.
    pub fn protocol(mut self, version: u16) -> Self {
        self.version = version;
        self
    }

    /// The number of setup sectors after the boot sector (0 stands for 4).
    pub fn setup_sects(mut self, sectors: u8) -> Self {
        self.setup_sects = sectors;
        self
    }

    /// The jump displacement at `0x201`: the setup header ends at `0x202` plus this signed byte.
    pub fn header_end_byte(mut self, byte: u8) -> Self {
        self.header_end_byte = byte;
        self
    }

    /// `loadflags`.
    pub fn loadflags(mut self, flags: u8) -> Self {
        self.loadflags = flags;
        self
    }

    /// `xloadflags`.
    pub fn xloadflags(mut self, flags: u16) -> Self {
        self.xloadflags = flags;
        self
    }

    /// `code32_start`.
    pub fn code32_start(mut self, address: u32) -> Self {
        self.code32_start = address;
        self
    }

    /// `initrd_addr_max`.
    pub fn initrd_addr_max(mut self, address: u32) -> Self {
        self.initrd_addr_max = address;
        self
    }

    /// `kernel_alignment`.
    pub fn kernel_alignment(mut self, alignment: u32) -> Self {
        self.kernel_alignment = alignment;
        self
    }

    /// `relocatable_kernel`.
    pub fn relocatable(mut self, relocatable: bool) -> Self {
        self.relocatable = relocatable;
        self
    }

    /// `cmdline_size`.
    pub fn cmdline_size(mut self, size: u32) -> Self {
        self.cmdline_size = size;
        self
    }

    /// `pref_address`.
    pub fn pref_address(mut self, address: u64) -> Self {
        self.pref_address = address;
        self
    }

    /// `init_size`.
    pub fn init_size(mut self, size: u32) -> Self {
        self.init_size = size;
        self
    }

    /// The protected-mode kernel: the bytes after the setup sectors, 64-bit entry at 0x200.
    pub fn kernel(mut self, kernel: &[u8]) -> Self {
        self.kernel = kernel.to_vec();
        self
    }

    /// The image: boot sector with the setup header, zeroed setup sectors, then the kernel.
    pub fn build(&self) -> Vec<u8> {
        let sectors = match self.setup_sects {
            0 => 4,
            sectors => usize::from(sectors),
        };
        let mut image = vec![0; (sectors + 1) * SECTOR_SIZE];
        let mut put = |offset: usize, bytes: &[u8]| {
            image[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0x1f1, &[self.setup_sects]);
        put(
            0x1f4,
            &((self.kernel.len() as u32).div_ceil(16)).to_le_bytes(),
        ); // syssize
        put(BOOT_FLAG_OFFSET, &BOOT_FLAG.to_le_bytes());
        put(0x200, &[0xeb, self.header_end_byte]);
        put(HEADER_MAGIC_OFFSET, &HEADER_MAGIC);
        put(0x206, &self.version.to_le_bytes());
        put(0x211, &[self.loadflags]);
        put(0x214, &self.code32_start.to_le_bytes());
        put(0x22c, &self.initrd_addr_max.to_le_bytes());
        put(0x230, &self.kernel_alignment.to_le_bytes());
        put(0x234, &[u8::from(self.relocatable), 0x15]); // relocatable_kernel, min_alignment
        put(0x236, &self.xloadflags.to_le_bytes());
        put(0x238, &self.cmdline_size.to_le_bytes());
        put(0x258, &self.pref_address.to_le_bytes());
        put(0x260, &self.init_size.to_le_bytes());
        image.extend_from_slice(&self.kernel);
        image
    }
}
