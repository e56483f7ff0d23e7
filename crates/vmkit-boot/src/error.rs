//! Errors of image validation, loading and boot page-table building.

/// Why an image could not be loaded or boot page tables not built. Boot images are untrusted
/// input: every malformed image gets one of these, naming the problem, before anything is
/// written to guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image is not an ELF file: it is shorter than an ELF header or lacks the ELF magic.
    #[error(
        "the image is not an ELF file: it is shorter than an ELF header or lacks the ELF magic"
    )]
    NotElf,
    /// The image is an ELF file of class {0}, not ELF64 (class 2).
    #[error("the image is an ELF file of class {0}, not ELF64 (class 2)")]
    WrongClass(u8),
    /// The image's data encoding is {0}, not little-endian (1).
    #[error("the image's data encoding is {0}, not little-endian (1)")]
    WrongByteOrder(u8),
    /// The image's ELF version is {0}, not 1.
    #[error("the image's ELF version is {0}, not 1")]
    WrongVersion(u32),
    /// The image's ELF type is {0}, not an executable (`ET_EXEC` or `ET_DYN`).
    #[error("the image's ELF type is {0}, not an executable (ET_EXEC or ET_DYN)")]
    NotExecutable(u16),
    /// The image is for machine {0}, not x86-64 (62).
    #[error("the image is for machine {0}, not x86-64 (62)")]
    WrongMachine(u16),
    /// The image's program header entries are {0} bytes, not 56.
    #[error("the image's program header entries are {0} bytes, not 56")]
    BadProgramHeaderSize(u16),
    /// The image has {0} program headers; at most 128 are accepted.
    #[error("the image has {0} program headers; at most 128 are accepted")]
    TooManyProgramHeaders(u16),
    /// The program header table ({count} entries at offset {offset:#x}) does not lie in the file
    /// after the ELF header.
    #[error(
        "the program header table ({count} entries at offset {offset:#x}) does not lie in the \
         file after the ELF header"
    )]
    ProgramHeadersOutOfFile {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
    },
    /// Segment {index} ({size:#x} bytes at file offset {offset:#x}) extends past the end of the
    /// file.
    #[error(
        "segment {index} ({size:#x} bytes at file offset {offset:#x}) extends past the end of the file"
    )]
    SegmentOutOfFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// Segment {index} has more bytes in the file ({file_size:#x}) than in memory
    /// ({mem_size:#x}).
    #[error(
        "segment {index} has more bytes in the file ({file_size:#x}) than in memory ({mem_size:#x})"
    )]
    FileSizeExceedsMemorySize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// The image has no loadable segment.
    #[error("the image has no loadable segment")]
    NoLoadableSegment,
    /// Segment {index} ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that the memory
    /// map reports usable.
    #[error(
        "segment {index} ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that the memory \
         map reports usable"
    )]
    SegmentOutOfMemory {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// Segments {first} and {second} overlap in guest memory.
    #[error("segments {first} and {second} overlap in guest memory")]
    OverlappingSegments {
        /// Program header index of the lower segment.
        first: usize,
        /// Program header index of the other segment.
        second: usize,
    },
    /// Segment {index} ({size:#x} bytes at {addr:#x}) overlaps the boot structures.
    #[error("segment {index} ({size:#x} bytes at {addr:#x}) overlaps the boot structures")]
    SegmentOverlapsBootData {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// The notes of segment {index} are malformed (a note does not fit in its segment).
    #[error("the notes of segment {index} are malformed (a note does not fit in its segment)")]
    BadNote {
        /// Program header index of the `PT_NOTE` segment.
        index: usize,
    },
    /// The image has no PVH entry note (`XEN_ELFNOTE_PHYS32_ENTRY`): it does not support the
    /// PVH boot protocol.
    #[error(
        "the image has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): it does not support the PVH \
         boot protocol"
    )]
    NoPvhNote,
    /// The PVH entry note's descriptor is not a 32-bit address (4 bytes, or 8 with the upper half
    /// zero).
    #[error(
        "the PVH entry note's descriptor is not a 32-bit address (4 bytes, or 8 with the upper \
         half zero)"
    )]
    InvalidPvhNote,
    /// The image has more than one PVH entry note.
    #[error("the image has more than one PVH entry note")]
    DuplicatePvhNote,
    /// The PVH entry point {0:#x} does not lie in the file-backed part of a loadable segment.
    #[error(
        "the PVH entry point {0:#x} does not lie in the file-backed part of a loadable segment"
    )]
    EntryOutsideSegments(u64),
    /// The command line is {len} bytes; at most {max} fit.
    #[error("the command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Length of the command line in bytes.
        len: usize,
        /// The most bytes accepted, without the terminating NUL.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("the command line contains a NUL byte")]
    CmdlineHasNul,
    /// The memory map has {count} entries; between 1 and {max} are accepted.
    #[error("the memory map has {count} entries; between 1 and {max} are accepted")]
    BadMemoryMapSize {
        /// Number of entries given.
        count: usize,
        /// The most entries the boot structures hold.
        max: usize,
    },
    /// {count} modules were given; at most {max} are accepted.
    #[error("{count} modules were given; at most {max} are accepted")]
    TooManyModules {
        /// Number of modules given.
        count: usize,
        /// The most modules the module list holds.
        max: usize,
    },
    /// Module {index} is empty.
    #[error("module {index} is empty")]
    EmptyModule {
        /// Index of the module.
        index: usize,
    },
    /// Module {index} ({size:#x} bytes) does not fit in free guest RAM below 4 GiB.
    #[error("module {index} ({size:#x} bytes) does not fit in free guest RAM below 4 GiB")]
    ModuleDoesNotFit {
        /// Index of the module.
        index: usize,
        /// Size of the module in bytes.
        size: u64,
    },
    /// The boot structures ({size:#x} bytes at {addr:#x}) do not lie in guest RAM that the memory
    /// map reports usable.
    #[error(
        "the boot structures ({size:#x} bytes at {addr:#x}) do not lie in guest RAM that the \
         memory map reports usable"
    )]
    BootDataOutOfMemory {
        /// First address of the boot structure area.
        addr: u64,
        /// Size of the area.
        size: u64,
    },
    /// The image is not a bzImage: it lacks the boot sector signature 0xAA55 at 0x1FE or the
    /// "HdrS" magic at 0x202.
    #[error(
        "the image is not a bzImage: it lacks the boot sector signature 0xAA55 at 0x1FE or the \
         \"HdrS\" magic at 0x202"
    )]
    NotBzImage,
    /// The bzImage speaks boot protocol {major}.{minor:02}; the 64-bit boot protocol needs 2.12
    /// or later.
    #[error(
        "the bzImage speaks boot protocol {}.{:02}; the 64-bit boot protocol needs 2.12 or later",
        .version >> 8,
        .version & 0xff
    )]
    BootProtocolTooOld {
        /// The header's `version`, `(major << 8) | minor`.
        version: u16,
    },
    /// The bzImage's setup header ends at {end:#x}, past the end of the {len}-byte image.
    #[error("the bzImage's setup header ends at {end:#x}, past the end of the {len}-byte image")]
    SetupHeaderOutOfFile {
        /// One past the header's last byte.
        end: usize,
        /// Size of the image in bytes.
        len: usize,
    },
    /// The bzImage's setup header ends at {end:#x} (0x202 plus the signed byte at 0x201), before
    /// the end of `init_size` at 0x264.
    #[error(
        "the bzImage's setup header ends at {end:#x} (0x202 plus the signed byte at 0x201), \
         before the end of init_size at 0x264"
    )]
    SetupHeaderTooShort {
        /// One past the header's last byte.
        end: usize,
    },
    /// The bzImage has no 64-bit entry point: `XLF_KERNEL_64` is clear in xloadflags
    /// {xloadflags:#x}.
    #[error(
        "the bzImage has no 64-bit entry point: XLF_KERNEL_64 is clear in xloadflags \
         {xloadflags:#x}"
    )]
    No64BitEntry {
        /// The header's `xloadflags`.
        xloadflags: u16,
    },
    /// The bzImage's kernel does not load at 1 MiB: `LOADED_HIGH` is clear in loadflags
    /// {loadflags:#x}.
    #[error(
        "the bzImage's kernel does not load at 1 MiB: LOADED_HIGH is clear in loadflags \
         {loadflags:#x}"
    )]
    NotLoadedHigh {
        /// The header's `loadflags`.
        loadflags: u8,
    },
    /// The bzImage holds {kernel_size:#x} bytes of protected-mode kernel after {setup_size:#x}
    /// bytes of setup; its 64-bit entry at offset 0x200 needs more.
    #[error(
        "the bzImage holds {kernel_size:#x} bytes of protected-mode kernel after {setup_size:#x} \
         bytes of setup; its 64-bit entry at offset 0x200 needs more"
    )]
    KernelTooShort {
        /// Boot sector and setup sectors, in bytes.
        setup_size: usize,
        /// What is left of the image for the protected-mode kernel.
        kernel_size: usize,
    },
    /// The bzImage's init_size {init_size:#x} is smaller than its protected-mode kernel
    /// ({kernel_size:#x} bytes), which the runtime range must hold.
    #[error(
        "the bzImage's init_size {init_size:#x} is smaller than its protected-mode kernel \
         ({kernel_size:#x} bytes), which the runtime range must hold"
    )]
    InitSizeTooSmall {
        /// The header's `init_size`.
        init_size: u32,
        /// Size of the protected-mode kernel in bytes.
        kernel_size: usize,
    },
    /// The relocatable bzImage's kernel_alignment {alignment:#x} is not a power of two.
    #[error("the relocatable bzImage's kernel_alignment {alignment:#x} is not a power of two")]
    BadKernelAlignment {
        /// The header's `kernel_alignment`.
        alignment: u32,
    },
    /// The protected-mode kernel ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that
    /// the memory map reports usable.
    #[error(
        "the protected-mode kernel ({size:#x} bytes at {addr:#x}) does not lie in guest RAM that \
         the memory map reports usable"
    )]
    KernelOutOfMemory {
        /// The load address.
        addr: u64,
        /// Size of the protected-mode kernel.
        size: u64,
    },
    /// The kernel needs {size:#x} bytes (init_size) of usable guest RAM below 4 GiB from
    /// {start:#x} to decompress itself; {available:#x} are there.
    #[error(
        "the kernel needs {size:#x} bytes (init_size) of usable guest RAM below 4 GiB from \
         {start:#x} to decompress itself; {available:#x} are there"
    )]
    DecompressionOutOfMemory {
        /// The kernel's runtime start.
        start: u64,
        /// The header's `init_size`.
        size: u64,
        /// Bytes of usable RAM below 4 GiB from `start` on.
        available: u64,
    },
    /// The kernel's runtime range ({size:#x} bytes from {start:#x}) overlaps the boot
    /// structures or the boot page tables.
    #[error(
        "the kernel's runtime range ({size:#x} bytes from {start:#x}) overlaps the boot \
         structures or the boot page tables"
    )]
    DecompressionOverlapsBootData {
        /// The kernel's runtime start.
        start: u64,
        /// The header's `init_size`.
        size: u64,
    },
    /// The initramfs is empty.
    #[error("the initramfs is empty")]
    EmptyInitramfs,
    /// The initramfs ({size:#x} bytes) does not fit in free usable guest RAM between 1 MiB and
    /// {limit:#x}.
    #[error(
        "the initramfs ({size:#x} bytes) does not fit in free usable guest RAM between 1 MiB and \
         {limit:#x}"
    )]
    InitramfsDoesNotFit {
        /// Size of the initramfs in bytes.
        size: u64,
        /// The initramfs must end at or below this address: `initrd_addr_max + 1`, at most
        /// 4 GiB.
        limit: u64,
    },
    /// The kernel loader failed: {0}.
    #[error("the kernel loader failed: {0}")]
    Loader(#[source] linux_loader::loader::Error),
    /// Writing the boot structures failed: {0}.
    #[error("writing the boot structures failed: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Writing guest memory failed: {0}.
    #[error("writing guest memory failed: {0}")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
    /// No page size is allowed for the boot page tables: the set of page sizes is empty.
    #[error("no page size is allowed for the boot page tables: the set of page sizes is empty")]
    NoPageSize,
    /// The page-table window {start:#x}..{end:#x} is empty or not 4 KiB aligned.
    #[error("the page-table window {start:#x}..{end:#x} is empty or not 4 KiB aligned")]
    BadPageTableWindow {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// The page-table window {start:#x}..{end:#x} does not lie in guest RAM backed by guest
    /// memory.
    #[error(
        "the page-table window {start:#x}..{end:#x} does not lie in guest RAM backed by guest \
         memory"
    )]
    PageTablesOutOfMemory {
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// Boot page tables with {page_size} pages take {needed} frames; the window holds
    /// {available}.
    #[error(
        "boot page tables with {page_size} pages take {needed} frames; the window holds {available}"
    )]
    PageTablesDoNotFit {
        /// The page size the tables would use.
        page_size: vmkit_paging::PageSize,
        /// 4 KiB frames the tables take.
        needed: u64,
        /// 4 KiB frames in the window.
        available: u64,
    },
    /// Building the boot page tables failed: {0}
    #[error("building the boot page tables failed: {0}")]
    PageTables(#[source] vmkit_paging::BuildError),
    /// {count} vCPUs were described; between 1 and {max} are accepted.
    #[error("{count} vCPUs were described; between 1 and {max} are accepted")]
    BadVcpuCount {
        /// Number of vCPUs described.
        count: usize,
        /// The most the tables describe.
        max: usize,
    },
    /// The OEM table id {0:?} is not 1 to 8 printable ASCII characters.
    #[error("the OEM table id {0:?} is not 1 to 8 printable ASCII characters")]
    BadOemTableId(String),
    /// The interrupt source override of IRQ {0} is not for an ISA IRQ (0 to 15) or is given
    /// twice.
    #[error(
        "the interrupt source override of IRQ {0} is not for an ISA IRQ (0 to 15) or is given twice"
    )]
    BadInterruptOverride(u8),
    /// The S5 sleep type {0} does not fit the 3-bit SLP_TYP field (0 to 7).
    #[error("the S5 sleep type {0} does not fit the 3-bit SLP_TYP field (0 to 7)")]
    BadSleepType(u8),
    /// {count} serial ports were described; at most {max} are accepted.
    #[error("{count} serial ports were described; at most {max} are accepted")]
    TooManySerialPorts {
        /// Number of serial ports described.
        count: usize,
        /// The most the DSDT names (COM1 to COM4).
        max: usize,
    },
    /// The {device} ports ({count} from {start:#x}) are none, more than 255, or run past port
    /// 0xffff.
    #[error(
        "the {device} ports ({count} from {start:#x}) are none, more than 255, or run past port \
         0xffff"
    )]
    BadIsaPorts {
        /// The device's DSDT name.
        device: &'static str,
        /// First port.
        start: u16,
        /// Number of ports.
        count: u16,
    },
    /// The PCI host bridge description is invalid: {0}.
    #[error("the PCI host bridge description is invalid: {0}")]
    BadPciHostBridge(&'static str),
    /// The {tables} tables take {size:#x} bytes; their window holds {available:#x}.
    #[error("the {tables} tables take {size:#x} bytes; their window holds {available:#x}")]
    FirmwareTablesDoNotFit {
        /// Which tables: ACPI or SMBIOS.
        tables: &'static str,
        /// Bytes the tables take, with alignment.
        size: u64,
        /// Bytes in the window.
        available: u64,
    },
    /// The {tables} table window {start:#x}..{end:#x} is not backed by guest memory.
    #[error("the {tables} table window {start:#x}..{end:#x} is not backed by guest memory")]
    FirmwareTablesOutOfMemory {
        /// Which tables: ACPI or SMBIOS.
        tables: &'static str,
        /// First address of the window.
        start: u64,
        /// One past the last address of the window.
        end: u64,
    },
    /// The memory map could not report the ACPI tables: {0}.
    #[error("the memory map could not report the ACPI tables: {0}")]
    AcpiMemoryMap(#[source] vmkit_memory::LayoutError),
    /// The SMBIOS string {field} contains a NUL byte.
    #[error("the SMBIOS string {field} contains a NUL byte")]
    SmbiosStringHasNul {
        /// The field of the SMBIOS description.
        field: &'static str,
    },
    /// The SMBIOS description gives no RAM (a RAM size of 0).
    #[error("the SMBIOS description gives no RAM (a RAM size of 0)")]
    SmbiosNoRam,
}
