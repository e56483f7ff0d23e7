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
    /// The ELF loader failed: {0}.
    #[error("the ELF loader failed: {0}")]
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
}
