//! ELF64 executables: the validation applied before any loader touches guest memory, and a
//! minimal writer for test images.
//!
//! linux-loader's ELF loader trusts the headers it reads: it checks neither the class nor the
//! machine, loads segments wherever their physical addresses point, and leaves the BSS as it
//! finds it. [`ElfImage::parse`] checks everything the loader relies on first, so a malformed
//! image gets a [`ElfError`] naming the problem instead of a partial load.
//!
//! Accepted images are **ELF64, little-endian, x86-64** executables (`ET_EXEC`, or `ET_DYN`
//! loaded at its link addresses). ELF64 is what PVH images are in practice: Linux's `vmlinux`,
//! Cloud Hypervisor's and QEMU's firmware, and the guests of this project. ELF32 images are
//! rejected with [`ElfError::WrongClass`] (linux-loader parses only ELF64 headers).
//!
//! Notes are parsed with 4-byte padding of name and descriptor, as Linux writes them and as
//! linux-loader and QEMU read them.

use vm_memory::GuestAddress;

/// Why an image is not a loadable ELF64 x86-64 executable ([`ElfImage::parse`]). Images are
/// untrusted input: every malformed one gets one of these, naming the problem.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum ElfError {
    /// the image is not an ELF file: it is shorter than an ELF header or lacks the ELF magic
    NotElf,
    /// the image is an ELF file of class {0}, not ELF64 (class 2)
    WrongClass(u8),
    /// the image's data encoding is {0}, not little-endian (1)
    WrongByteOrder(u8),
    /// the image's ELF version is {0}, not 1
    WrongVersion(u32),
    /// the image's ELF type is {0}, not an executable (ET_EXEC or ET_DYN)
    NotExecutable(u16),
    /// the image is for machine {0}, not x86-64 (62)
    WrongMachine(u16),
    /// the image's program header entries are {0} bytes, not 56
    BadProgramHeaderSize(u16),
    /// the image has {0} program headers; at most 128 are accepted
    TooManyProgramHeaders(u16),
    /// the program header table ({count} entries at offset {offset:#x}) does not lie in the file
    /// after the ELF header
    ProgramHeadersOutOfFile {
        /// `e_phoff`.
        offset: u64,
        /// `e_phnum`.
        count: u16,
    },
    /// segment {index} ({size:#x} bytes at file offset {offset:#x}) extends past the end of the
    /// file
    SegmentOutOfFile {
        /// Program header index.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        size: u64,
    },
    /// segment {index} has more bytes in the file ({file_size:#x}) than in memory ({mem_size:#x})
    FileSizeExceedsMemorySize {
        /// Program header index.
        index: usize,
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        mem_size: u64,
    },
    /// the image has no loadable segment
    NoLoadableSegment,
    /// segment {index} ({size:#x} bytes at {addr:#x}) runs past the end of the address space
    SegmentWraps {
        /// Program header index.
        index: usize,
        /// `p_paddr`.
        addr: u64,
        /// `p_memsz`.
        size: u64,
    },
    /// segments {first} and {second} overlap in guest memory
    OverlappingSegments {
        /// Program header index of the lower segment.
        first: usize,
        /// Program header index of the other segment.
        second: usize,
    },
    /// the notes of segment {index} are malformed (a note does not fit in its segment)
    BadNote {
        /// Program header index of the `PT_NOTE` segment.
        index: usize,
    },
    /// the PVH entry note's descriptor is not a 32-bit address (4 bytes, or 8 with the upper half
    /// zero)
    InvalidPvhNote,
    /// the image has more than one PVH entry note
    DuplicatePvhNote,
}

/// Size of the ELF64 file header.
pub const ELF_HEADER_SIZE: usize = 64;
/// Size of an ELF64 program header.
pub const PROGRAM_HEADER_SIZE: usize = 56;
/// The most program headers an accepted image may have (`vmlinux` has about five).
pub const MAX_PROGRAM_HEADERS: usize = 128;
/// The ELF note type of the PVH 32-bit physical entry point (Xen's `elfnote.h`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
#[cfg(any(test, feature = "test-utils"))]
const PF_X: u32 = 1;
#[cfg(any(test, feature = "test-utils"))]
const PF_W: u32 = 2;
#[cfg(any(test, feature = "test-utils"))]
const PF_R: u32 = 4;
const NOTE_HEADER_SIZE: usize = 12;
const NOTE_ALIGN: usize = 4;
/// Owner of the PVH note, with its terminating NUL.
const XEN_NOTE_NAME: &[u8; 4] = b"Xen\0";
/// Xen's `XEN_ELFNOTE_GUEST_OS` note type: the guest's operating system, as a string.
const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// Owner of Linux's own notes (build salt, version), with its terminating NUL.
const LINUX_NOTE_NAME: &[u8; 6] = b"Linux\0";

/// A loadable (`PT_LOAD`) segment of a validated image. Its file range lies in the image, its
/// file size does not exceed its memory size, and its memory range does not wrap around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Index of the segment's program header.
    pub index: usize,
    /// Offset of the segment's bytes in the file (`p_offset`).
    pub file_offset: u64,
    /// Guest physical address the segment is loaded at (`p_paddr`).
    pub addr: GuestAddress,
    /// Bytes copied from the file (`p_filesz`).
    pub file_size: u64,
    /// Bytes the segment occupies in memory (`p_memsz`); the rest after the file bytes is BSS.
    pub mem_size: u64,
}

impl LoadSegment {
    /// One past the segment's last byte in guest memory.
    pub fn end(&self) -> u64 {
        // Cannot overflow: checked by `ElfImage::parse`.
        self.addr.0 + self.mem_size
    }

    /// Whether `addr` lies in the part of the segment loaded from the file.
    pub fn file_backed_contains(&self, addr: u64) -> bool {
        addr >= self.addr.0 && addr - self.addr.0 < self.file_size
    }
}

/// A validated ELF64 x86-64 executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    segments: Vec<LoadSegment>,
    pvh_entry: Option<GuestAddress>,
    elf_entry: u64,
    linux: bool,
}

/// Little-endian field reads from a byte slice whose length the caller has checked.
fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    let mut raw = [0; 2];
    raw.copy_from_slice(&bytes[offset..offset + 2]);
    u16::from_le_bytes(raw)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

/// The file range `[offset, offset + size)` as a slice of `image`, if it lies in it.
fn file_range(image: &[u8], offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(size).ok()?)?;
    image.get(start..end)
}

/// One program header, as read from the file.
struct ProgramHeader {
    kind: u32,
    offset: u64,
    paddr: u64,
    file_size: u64,
    mem_size: u64,
}

impl ProgramHeader {
    fn read(bytes: &[u8]) -> Self {
        ProgramHeader {
            kind: u32_at(bytes, 0),
            offset: u64_at(bytes, 8),
            paddr: u64_at(bytes, 24),
            file_size: u64_at(bytes, 32),
            mem_size: u64_at(bytes, 40),
        }
    }

    /// Appends the header with permission `flags` to `out` (virtual = physical address, no
    /// alignment constraint).
    #[cfg(any(test, feature = "test-utils"))]
    fn write(&self, flags: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.paddr.to_le_bytes()); // p_vaddr
        out.extend_from_slice(&self.paddr.to_le_bytes()); // p_paddr
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&self.mem_size.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes()); // p_align
    }
}

impl ElfImage {
    /// Parses and validates `image`: the ELF header (magic, ELF64, little-endian, version,
    /// executable type, x86-64, program header size), the program header table (in the file,
    /// after the header, at most [`MAX_PROGRAM_HEADERS`] entries), every `PT_LOAD` segment (file
    /// range in the file, `p_filesz ≤ p_memsz`, no address wrap, no overlap with another
    /// segment) and every `PT_NOTE` segment (in the file, each note inside it, at most one PVH
    /// entry note whose descriptor is a 32-bit address).
    ///
    /// Segments with a memory size of zero are ignored. Whether the segments fit the guest's
    /// memory is checked by the loaders, which know the memory map.
    pub fn parse(image: &[u8]) -> Result<Self, ElfError> {
        let header = image.get(..ELF_HEADER_SIZE).ok_or(ElfError::NotElf)?;
        if &header[..4] != ELF_MAGIC {
            return Err(ElfError::NotElf);
        }
        if header[4] != ELFCLASS64 {
            return Err(ElfError::WrongClass(header[4]));
        }
        if header[5] != ELFDATA2LSB {
            return Err(ElfError::WrongByteOrder(header[5]));
        }
        if header[6] != EV_CURRENT {
            return Err(ElfError::WrongVersion(u32::from(header[6])));
        }
        let version = u32_at(header, 20);
        if version != u32::from(EV_CURRENT) {
            return Err(ElfError::WrongVersion(version));
        }
        let kind = u16_at(header, 16);
        if kind != ET_EXEC && kind != ET_DYN {
            return Err(ElfError::NotExecutable(kind));
        }
        let machine = u16_at(header, 18);
        if machine != EM_X86_64 {
            return Err(ElfError::WrongMachine(machine));
        }
        let entry_size = u16_at(header, 54);
        if usize::from(entry_size) != PROGRAM_HEADER_SIZE {
            return Err(ElfError::BadProgramHeaderSize(entry_size));
        }
        let count = u16_at(header, 56);
        if usize::from(count) > MAX_PROGRAM_HEADERS {
            return Err(ElfError::TooManyProgramHeaders(count));
        }
        let table_offset = u64_at(header, 32);
        let table_size = (usize::from(count) * PROGRAM_HEADER_SIZE) as u64;
        let table = file_range(image, table_offset, table_size)
            .filter(|_| table_offset >= ELF_HEADER_SIZE as u64)
            .ok_or(ElfError::ProgramHeadersOutOfFile {
                offset: table_offset,
                count,
            })?;

        let mut segments = Vec::new();
        let mut pvh_entry = None;
        let mut linux = false;
        for (index, raw) in table.chunks_exact(PROGRAM_HEADER_SIZE).enumerate() {
            let header = ProgramHeader::read(raw);
            match header.kind {
                PT_LOAD => {
                    if let Some(segment) = Self::load_segment(image, index, &header)? {
                        segments.push(segment);
                    }
                }
                // An empty note segment has no meaningful offset: loaders read nothing from it.
                PT_NOTE if header.file_size > 0 => {
                    let notes = file_range(image, header.offset, header.file_size).ok_or(
                        ElfError::SegmentOutOfFile {
                            index,
                            offset: header.offset,
                            size: header.file_size,
                        },
                    )?;
                    let found = parse_notes(notes, index)?;
                    linux |= found.linux;
                    if let Some(entry) = found.pvh_entry
                        && pvh_entry.replace(entry).is_some()
                    {
                        return Err(ElfError::DuplicatePvhNote);
                    }
                }
                _ => {}
            }
        }
        if segments.is_empty() {
            return Err(ElfError::NoLoadableSegment);
        }
        check_no_overlap(&mut segments)?;
        Ok(ElfImage {
            segments,
            pvh_entry,
            elf_entry: u64_at(header, 24),
            linux,
        })
    }

    /// Validates one `PT_LOAD` program header; `None` for a segment without memory bytes.
    fn load_segment(
        image: &[u8],
        index: usize,
        header: &ProgramHeader,
    ) -> Result<Option<LoadSegment>, ElfError> {
        if header.file_size > header.mem_size {
            return Err(ElfError::FileSizeExceedsMemorySize {
                index,
                file_size: header.file_size,
                mem_size: header.mem_size,
            });
        }
        if header.mem_size == 0 {
            return Ok(None);
        }
        // A segment without file bytes has no meaningful offset: loaders read nothing from it.
        if header.file_size > 0 && file_range(image, header.offset, header.file_size).is_none() {
            return Err(ElfError::SegmentOutOfFile {
                index,
                offset: header.offset,
                size: header.file_size,
            });
        }
        if header.paddr.checked_add(header.mem_size).is_none() {
            return Err(ElfError::SegmentWraps {
                index,
                addr: header.paddr,
                size: header.mem_size,
            });
        }
        Ok(Some(LoadSegment {
            index,
            file_offset: header.offset,
            addr: GuestAddress(header.paddr),
            file_size: header.file_size,
            mem_size: header.mem_size,
        }))
    }

    /// The loadable segments, sorted by guest address.
    pub fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// The PVH 32-bit entry point, if the image has a PVH entry note.
    pub fn pvh_entry(&self) -> Option<GuestAddress> {
        self.pvh_entry
    }

    /// Whether the image is a Linux kernel: it carries a note owned by `"Linux"` (every
    /// `vmlinux` has them: the build salt, the version) or a Xen `GUEST_OS` note saying
    /// `linux`. A VMM adds Linux command-line options only to such an image.
    pub fn is_linux(&self) -> bool {
        self.linux
    }

    /// The ELF header's entry point (`e_entry`), often a virtual address.
    pub fn elf_entry(&self) -> u64 {
        self.elf_entry
    }

    /// One past the highest byte of any segment in guest memory.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(LoadSegment::end)
            .max()
            .unwrap_or(0)
    }
}

/// Sorts `segments` by address and rejects overlapping neighbours.
fn check_no_overlap(segments: &mut [LoadSegment]) -> Result<(), ElfError> {
    segments.sort_unstable_by_key(|segment| segment.addr);
    for pair in segments.windows(2) {
        if pair[0].end() > pair[1].addr.0 {
            return Err(ElfError::OverlappingSegments {
                first: pair[0].index,
                second: pair[1].index,
            });
        }
    }
    Ok(())
}

/// Rounds `value` up to the note alignment.
fn note_align(value: usize) -> Option<usize> {
    value.checked_next_multiple_of(NOTE_ALIGN)
}

/// What the notes of one `PT_NOTE` segment say.
struct Notes {
    /// The PVH entry note's address, if any.
    pvh_entry: Option<GuestAddress>,
    /// Whether a note names the image a Linux kernel.
    linux: bool,
}

/// Walks the notes of a `PT_NOTE` segment.
fn parse_notes(notes: &[u8], index: usize) -> Result<Notes, ElfError> {
    let bad = || ElfError::BadNote { index };
    let mut entry = None;
    let mut linux = false;
    let mut pos = 0;
    while pos < notes.len() {
        let header = notes.get(pos..pos + NOTE_HEADER_SIZE).ok_or_else(bad)?;
        let name_size = u32_at(header, 0) as usize;
        let desc_size = u32_at(header, 4) as usize;
        let note_type = u32_at(header, 8);
        let name_start = pos + NOTE_HEADER_SIZE;
        let name_end = name_start.checked_add(name_size);
        let desc_start = name_end.and_then(note_align);
        let desc_end = desc_start.and_then(|start| start.checked_add(desc_size));
        let (Some(name_end), Some(desc_start), Some(desc_end)) = (name_end, desc_start, desc_end)
        else {
            return Err(bad());
        };
        if desc_end > notes.len() {
            return Err(bad());
        }
        let name = &notes[name_start..name_end];
        let desc = &notes[desc_start..desc_end];
        linux |= name == LINUX_NOTE_NAME
            || (name == XEN_NOTE_NAME && note_type == XEN_ELFNOTE_GUEST_OS && desc == b"linux\0");
        if note_type == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
            let address = pvh_address(&notes[desc_start..desc_end])?;
            if entry.replace(address).is_some() {
                return Err(ElfError::DuplicatePvhNote);
            }
        }
        // The padding after the last descriptor may be missing.
        pos = note_align(desc_end).ok_or_else(bad)?;
    }
    Ok(Notes {
        pvh_entry: entry,
        linux,
    })
}

/// Decodes the PVH note descriptor: a 32-bit address in 4 bytes, or in 8 with the upper half 0.
fn pvh_address(desc: &[u8]) -> Result<GuestAddress, ElfError> {
    match desc.len() {
        4 => Ok(GuestAddress(u64::from(u32_at(desc, 0)))),
        8 => {
            let address = u64_at(desc, 0);
            if address > u64::from(u32::MAX) {
                return Err(ElfError::InvalidPvhNote);
            }
            Ok(GuestAddress(address))
        }
        _ => Err(ElfError::InvalidPvhNote),
    }
}

/// Writes minimal ELF64 x86-64 executables: loadable segments and notes (a PVH entry note among
/// them).
///
/// Useful to build tiny test guests from machine code without a toolchain:
///
/// ```
/// use vm_memory::GuestAddress;
/// use vmkit_boot::elf::{ElfBuilder, ElfImage};
///
/// // `xor eax, eax; out 0xf4, eax`: end the VM through the debug-exit port with status 0.
/// let code = [0x31, 0xc0, 0xe7, 0xf4];
/// let image = ElfBuilder::new()
///     .segment(GuestAddress(0x10_0000), &code, 0x1000)
///     .pvh_entry(GuestAddress(0x10_0000))
///     .build();
/// let parsed = ElfImage::parse(&image).unwrap();
/// assert_eq!(parsed.pvh_entry(), Some(GuestAddress(0x10_0000)));
/// assert_eq!(parsed.segments()[0].mem_size, 0x1000);
/// ```
#[cfg(any(test, feature = "test-utils"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-utils")))]
#[derive(Clone, Debug, Default)]
pub struct ElfBuilder {
    segments: Vec<(GuestAddress, Vec<u8>, u64)>,
    notes: Vec<u8>,
    entry: Option<u64>,
}

#[cfg(any(test, feature = "test-utils"))]
impl ElfBuilder {
    /// An image without segments or notes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a readable, writable and executable `PT_LOAD` segment holding `bytes` at `addr`,
    /// occupying `mem_size` bytes in memory (at least `bytes.len()`; the rest is BSS).
    pub fn segment(mut self, addr: GuestAddress, bytes: &[u8], mem_size: u64) -> Self {
        let mem_size = mem_size.max(bytes.len() as u64);
        self.segments.push((addr, bytes.to_vec(), mem_size));
        self
    }

    /// Adds a note of type `kind` owned by `owner` (written with its NUL) with descriptor
    /// `desc`. All notes go into one `PT_NOTE` segment, each padded to 4 bytes.
    pub fn note(mut self, owner: &str, kind: u32, desc: &[u8]) -> Self {
        let name_size = owner.len() + 1;
        self.notes
            .extend_from_slice(&(name_size as u32).to_le_bytes());
        self.notes
            .extend_from_slice(&(desc.len() as u32).to_le_bytes());
        self.notes.extend_from_slice(&kind.to_le_bytes());
        self.notes.extend_from_slice(owner.as_bytes());
        self.notes.push(0);
        self.notes
            .resize(self.notes.len().next_multiple_of(NOTE_ALIGN), 0);
        self.notes.extend_from_slice(desc);
        self.notes
            .resize(self.notes.len().next_multiple_of(NOTE_ALIGN), 0);
        self
    }

    /// Adds a PVH entry note naming `entry` (8-byte descriptor, as Linux writes it) and makes
    /// `entry` the ELF entry point.
    pub fn pvh_entry(mut self, entry: GuestAddress) -> Self {
        self.entry = Some(entry.0);
        self.note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, &entry.0.to_le_bytes())
    }

    /// The image's bytes: ELF header, program headers (segments in the order added, then the
    /// note segment), the notes, then each segment's bytes.
    pub fn build(&self) -> Vec<u8> {
        let has_notes = !self.notes.is_empty();
        let header_count = self.segments.len() + usize::from(has_notes);
        let notes_offset = ELF_HEADER_SIZE + header_count * PROGRAM_HEADER_SIZE;
        let mut data_offset = notes_offset + self.notes.len();
        let entry = self
            .entry
            .or_else(|| self.segments.first().map(|segment| segment.0.0))
            .unwrap_or(0);

        let mut out = Vec::with_capacity(data_offset);
        out.extend_from_slice(ELF_MAGIC);
        out.extend_from_slice(&[ELFCLASS64, ELFDATA2LSB, EV_CURRENT]);
        out.resize(16, 0);
        out.extend_from_slice(&ET_EXEC.to_le_bytes());
        out.extend_from_slice(&EM_X86_64.to_le_bytes());
        out.extend_from_slice(&u32::from(EV_CURRENT).to_le_bytes());
        out.extend_from_slice(&entry.to_le_bytes());
        out.extend_from_slice(&(ELF_HEADER_SIZE as u64).to_le_bytes()); // e_phoff
        out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        out.extend_from_slice(&(ELF_HEADER_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&(PROGRAM_HEADER_SIZE as u16).to_le_bytes());
        out.extend_from_slice(&(header_count as u16).to_le_bytes());
        out.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx

        for (addr, bytes, mem_size) in &self.segments {
            let header = ProgramHeader {
                kind: PT_LOAD,
                offset: data_offset as u64,
                paddr: addr.0,
                file_size: bytes.len() as u64,
                mem_size: *mem_size,
            };
            header.write(PF_R | PF_W | PF_X, &mut out);
            data_offset += bytes.len();
        }
        if has_notes {
            let header = ProgramHeader {
                kind: PT_NOTE,
                offset: notes_offset as u64,
                paddr: 0,
                file_size: self.notes.len() as u64,
                mem_size: 0,
            };
            header.write(PF_R, &mut out);
        }
        out.extend_from_slice(&self.notes);
        for (_, bytes, _) in &self.segments {
            out.extend_from_slice(bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: GuestAddress = GuestAddress(0x10_0000);
    const DATA: GuestAddress = GuestAddress(0x20_0000);

    /// Offset of field `field` of program header `index`.
    fn ph(index: usize, field: usize) -> usize {
        ELF_HEADER_SIZE + index * PROGRAM_HEADER_SIZE + field
    }
    const P_TYPE: usize = 0;
    const P_OFFSET: usize = 8;
    const P_PADDR: usize = 24;
    const P_FILESZ: usize = 32;
    const P_MEMSZ: usize = 40;

    fn put16(image: &mut [u8], offset: usize, value: u16) {
        image[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }
    fn put32(image: &mut [u8], offset: usize, value: u32) {
        image[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    fn put64(image: &mut [u8], offset: usize, value: u64) {
        image[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Text segment (header 0), data segment with BSS (header 1), notes (header 2).
    fn builder() -> ElfBuilder {
        ElfBuilder::new()
            .segment(TEXT, &[0x90; 16], 0x1000)
            .segment(DATA, &[1, 2, 3, 4, 5, 6, 7, 8], 0x3000)
            .pvh_entry(TEXT)
    }

    fn image() -> Vec<u8> {
        builder().build()
    }

    fn parse_err(image: &[u8]) -> ElfError {
        ElfImage::parse(image).unwrap_err()
    }

    #[test]
    fn parses_built_image() {
        let elf = ElfImage::parse(&image()).unwrap();
        assert_eq!(elf.pvh_entry(), Some(TEXT));
        assert_eq!(elf.elf_entry(), TEXT.0);
        assert_eq!(elf.end(), DATA.0 + 0x3000);
        let segments = elf.segments();
        assert_eq!(segments.len(), 2);
        assert_eq!(
            segments[0],
            LoadSegment {
                index: 0,
                file_offset: (ELF_HEADER_SIZE + 3 * PROGRAM_HEADER_SIZE + 24) as u64,
                addr: TEXT,
                file_size: 16,
                mem_size: 0x1000,
            }
        );
        assert_eq!(
            (
                segments[1].addr,
                segments[1].file_size,
                segments[1].mem_size
            ),
            (DATA, 8, 0x3000)
        );
        let data = segments[1].file_offset as usize;
        assert_eq!(&image()[data..data + 8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(segments[0].file_backed_contains(TEXT.0 + 15));
        assert!(!segments[0].file_backed_contains(TEXT.0 + 16));
        assert!(!segments[0].file_backed_contains(TEXT.0 - 1));
    }

    #[test]
    fn segments_are_sorted_by_address() {
        let image = ElfBuilder::new()
            .segment(DATA, &[1], 1)
            .segment(TEXT, &[2], 1)
            .build();
        let elf = ElfImage::parse(&image).unwrap();
        let order: Vec<usize> = elf.segments().iter().map(|s| s.index).collect();
        assert_eq!(order, vec![1, 0]);
        assert_eq!(elf.pvh_entry(), None);
        assert_eq!(elf.elf_entry(), DATA.0);
    }

    #[test]
    fn rejects_non_elf_input() {
        assert!(matches!(parse_err(&[]), ElfError::NotElf));
        assert!(matches!(parse_err(&image()[..63]), ElfError::NotElf));
        let mut bad = image();
        bad[1] = b'F';
        assert!(matches!(parse_err(&bad), ElfError::NotElf));
        assert!(matches!(parse_err(&[0; 4096]), ElfError::NotElf));
    }

    #[test]
    fn rejects_wrong_identification() {
        let mut elf32 = image();
        elf32[4] = 1;
        assert!(matches!(parse_err(&elf32), ElfError::WrongClass(1)));
        let mut big_endian = image();
        big_endian[5] = 2;
        assert!(matches!(
            parse_err(&big_endian),
            ElfError::WrongByteOrder(2)
        ));
        let mut ident_version = image();
        ident_version[6] = 0;
        assert!(matches!(
            parse_err(&ident_version),
            ElfError::WrongVersion(0)
        ));
        let mut version = image();
        put32(&mut version, 20, 2);
        assert!(matches!(parse_err(&version), ElfError::WrongVersion(2)));
    }

    #[test]
    fn accepts_executables_only() {
        let mut relocatable = image();
        put16(&mut relocatable, 16, 1);
        assert!(matches!(
            parse_err(&relocatable),
            ElfError::NotExecutable(1)
        ));
        let mut core = image();
        put16(&mut core, 16, 4);
        assert!(matches!(parse_err(&core), ElfError::NotExecutable(4)));
        let mut position_independent = image();
        put16(&mut position_independent, 16, ET_DYN);
        assert!(ElfImage::parse(&position_independent).is_ok());
    }

    #[test]
    fn rejects_other_machines() {
        let mut i386 = image();
        put16(&mut i386, 18, 3);
        assert!(matches!(parse_err(&i386), ElfError::WrongMachine(3)));
        let mut aarch64 = image();
        put16(&mut aarch64, 18, 183);
        assert!(matches!(parse_err(&aarch64), ElfError::WrongMachine(183)));
    }

    #[test]
    fn rejects_bad_program_header_tables() {
        let mut entry_size = image();
        put16(&mut entry_size, 54, 32);
        assert!(matches!(
            parse_err(&entry_size),
            ElfError::BadProgramHeaderSize(32)
        ));

        let mut too_many = image();
        put16(&mut too_many, 56, 129);
        assert!(matches!(
            parse_err(&too_many),
            ElfError::TooManyProgramHeaders(129)
        ));
        put16(&mut too_many, 56, 0xffff);
        assert!(matches!(
            parse_err(&too_many),
            ElfError::TooManyProgramHeaders(0xffff)
        ));

        for offset in [0, 63, u64::MAX, u64::MAX - 10, 1 << 40] {
            let mut bad = image();
            put64(&mut bad, 32, offset);
            assert!(
                matches!(parse_err(&bad), ElfError::ProgramHeadersOutOfFile { offset: o, count: 3 } if o == offset),
                "offset {offset:#x}"
            );
        }
        // A table that starts in the file but ends past it.
        let mut truncated = image();
        let len = truncated.len() as u64;
        put64(&mut truncated, 32, len - 100);
        assert!(matches!(
            parse_err(&truncated),
            ElfError::ProgramHeadersOutOfFile { .. }
        ));
    }

    #[test]
    fn no_program_headers_means_nothing_to_load() {
        let mut empty = image();
        put16(&mut empty, 56, 0);
        assert!(matches!(parse_err(&empty), ElfError::NoLoadableSegment));
        // Segments that occupy no memory are skipped.
        let mut zero_size = image();
        for index in 0..2 {
            put64(&mut zero_size, ph(index, P_FILESZ), 0);
            put64(&mut zero_size, ph(index, P_MEMSZ), 0);
        }
        assert!(matches!(parse_err(&zero_size), ElfError::NoLoadableSegment));
    }

    #[test]
    fn rejects_segments_outside_the_file() {
        let len = image().len() as u64;
        for (offset, size) in [(len, 1), (len - 4, 8), (u64::MAX, 2), (8, u64::MAX)] {
            let mut bad = image();
            put64(&mut bad, ph(1, P_OFFSET), offset);
            put64(&mut bad, ph(1, P_FILESZ), size);
            put64(&mut bad, ph(1, P_MEMSZ), u64::MAX);
            assert!(
                matches!(parse_err(&bad), ElfError::SegmentOutOfFile { index: 1, offset: o, size: s } if o == offset && s == size),
                "offset {offset:#x} size {size:#x}"
            );
        }
        // A segment without file bytes may name any offset.
        let mut bss_only = image();
        put64(&mut bss_only, ph(1, P_OFFSET), u64::MAX);
        put64(&mut bss_only, ph(1, P_FILESZ), 0);
        let elf = ElfImage::parse(&bss_only).unwrap();
        assert_eq!(elf.segments()[1].file_size, 0);
    }

    #[test]
    fn rejects_file_size_above_memory_size() {
        let mut bad = image();
        put64(&mut bad, ph(0, P_MEMSZ), 8);
        assert!(matches!(
            parse_err(&bad),
            ElfError::FileSizeExceedsMemorySize {
                index: 0,
                file_size: 16,
                mem_size: 8
            }
        ));
        put64(&mut bad, ph(0, P_MEMSZ), 0);
        assert!(matches!(
            parse_err(&bad),
            ElfError::FileSizeExceedsMemorySize { mem_size: 0, .. }
        ));
    }

    #[test]
    fn rejects_wrapping_segments() {
        let mut bad = image();
        put64(&mut bad, ph(1, P_PADDR), u64::MAX - 0x1000);
        assert!(matches!(
            parse_err(&bad),
            ElfError::SegmentWraps {
                index: 1,
                size: 0x3000,
                ..
            }
        ));
    }

    #[test]
    fn rejects_overlapping_segments() {
        let overlapping = ElfBuilder::new()
            .segment(TEXT, &[1; 4], 0x2000)
            .segment(DATA, &[2; 4], 0x10)
            .segment(GuestAddress(TEXT.0 + 0x1fff), &[3; 4], 4)
            .build();
        assert!(matches!(
            parse_err(&overlapping),
            ElfError::OverlappingSegments {
                first: 0,
                second: 2
            }
        ));
        // Touching is fine.
        let touching = ElfBuilder::new()
            .segment(TEXT, &[1; 4], 0x2000)
            .segment(GuestAddress(TEXT.0 + 0x2000), &[3; 4], 4)
            .build();
        assert_eq!(ElfImage::parse(&touching).unwrap().segments().len(), 2);
    }

    #[test]
    fn ignores_other_program_header_types() {
        let mut image = image();
        put32(&mut image, ph(2, P_TYPE), 0x6474_e551); // PT_GNU_STACK
        let elf = ElfImage::parse(&image).unwrap();
        assert_eq!(elf.pvh_entry(), None);
    }

    fn with_notes(notes: &ElfBuilder) -> Result<ElfImage, ElfError> {
        ElfImage::parse(&notes.clone().segment(TEXT, &[0x90; 16], 16).build())
    }

    #[test]
    fn finds_the_pvh_note_among_others() {
        let notes = ElfBuilder::new()
            .note("GNU", 3, &[0xab; 20])
            .note("Xen", 5, b"xen-3.0\0") // another Xen note type
            .note("Linux", XEN_ELFNOTE_PHYS32_ENTRY, &[0xff; 8]) // same type, other owner
            .note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, &0x10_0004u32.to_le_bytes())
            .note("Z", 1, &[1]); // the last descriptor needs padding
        assert_eq!(
            with_notes(&notes).unwrap().pvh_entry(),
            Some(GuestAddress(0x10_0004))
        );
    }

    #[test]
    fn tells_a_linux_kernel_by_its_notes() {
        let pvh =
            ElfBuilder::new().note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, &0x10_0000u32.to_le_bytes());
        assert!(!with_notes(&pvh).unwrap().is_linux());
        // Other owners and other Xen strings say nothing.
        let other = pvh
            .clone()
            .note("Linu", 0x100, &[0; 4])
            .note("Xen", XEN_ELFNOTE_GUEST_OS, b"firmware\0")
            .note("Xen", 5, b"linux\0");
        assert!(!with_notes(&other).unwrap().is_linux());
        // vmlinux carries notes owned by "Linux" and, with Xen support, a GUEST_OS note.
        let salt = pvh.clone().note("Linux", 0x100, &[0; 4]);
        assert!(with_notes(&salt).unwrap().is_linux());
        let guest_os = pvh.note("Xen", XEN_ELFNOTE_GUEST_OS, b"linux\0");
        assert!(with_notes(&guest_os).unwrap().is_linux());
        assert!(!ElfImage::parse(&image()).unwrap().is_linux());
    }

    #[test]
    fn last_note_may_lack_its_padding() {
        let mut image = ElfBuilder::new()
            .note("Q", 1, &[7])
            .segment(TEXT, &[0x90; 16], 16)
            .build();
        // Notes are 12 + 4 + 4 bytes padded; cut the final 3 padding bytes.
        put64(&mut image, ph(1, P_FILESZ), 17);
        let elf = ElfImage::parse(&image).unwrap();
        assert_eq!(elf.pvh_entry(), None);
    }

    #[test]
    fn rejects_pvh_notes_without_a_32_bit_address() {
        for desc in [
            &[1u8, 2][..],
            &[0; 5][..],
            &(1u64 << 32).to_le_bytes()[..],
            &[0; 16][..],
        ] {
            let notes = ElfBuilder::new().note("Xen", XEN_ELFNOTE_PHYS32_ENTRY, desc);
            assert!(
                matches!(with_notes(&notes), Err(ElfError::InvalidPvhNote)),
                "{desc:?}"
            );
        }
        let top = ElfBuilder::new().note(
            "Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &u64::from(u32::MAX).to_le_bytes(),
        );
        assert_eq!(
            with_notes(&top).unwrap().pvh_entry(),
            Some(GuestAddress(0xffff_ffff))
        );
    }

    #[test]
    fn rejects_duplicate_pvh_notes() {
        let same_segment = ElfBuilder::new()
            .pvh_entry(TEXT)
            .pvh_entry(GuestAddress(TEXT.0 + 4));
        assert!(matches!(
            with_notes(&same_segment),
            Err(ElfError::DuplicatePvhNote)
        ));

        // Two PT_NOTE headers pointing at the same PVH note.
        let mut image = image();
        let mut second_note = image[ph(2, 0)..ph(3, 0)].to_vec();
        second_note[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        image[ph(0, 0)..ph(1, 0)].copy_from_slice(&second_note);
        // Keep a loadable segment: header 1 stays.
        assert!(matches!(parse_err(&image), ElfError::DuplicatePvhNote));
    }

    #[test]
    fn rejects_malformed_notes() {
        let base = image();
        let notes_offset = u64::from_le_bytes(
            base[ph(2, P_OFFSET)..ph(2, P_OFFSET) + 8]
                .try_into()
                .unwrap(),
        ) as usize;

        // Header cut short by the segment size.
        let mut short = base.clone();
        put64(&mut short, ph(2, P_FILESZ), 5);
        assert!(matches!(parse_err(&short), ElfError::BadNote { index: 2 }));

        // Name larger than the segment.
        let mut long_name = base.clone();
        put32(&mut long_name, notes_offset, 0xffff_ffff);
        assert!(matches!(
            parse_err(&long_name),
            ElfError::BadNote { index: 2 }
        ));

        // Descriptor larger than the segment.
        let mut long_desc = base.clone();
        put32(&mut long_desc, notes_offset + 4, 0x100);
        assert!(matches!(
            parse_err(&long_desc),
            ElfError::BadNote { index: 2 }
        ));
        put32(&mut long_desc, notes_offset + 4, u32::MAX);
        assert!(matches!(
            parse_err(&long_desc),
            ElfError::BadNote { index: 2 }
        ));

        // Note segment outside the file.
        let mut outside = base.clone();
        put64(&mut outside, ph(2, P_OFFSET), base.len() as u64);
        assert!(matches!(
            parse_err(&outside),
            ElfError::SegmentOutOfFile { index: 2, .. }
        ));

        // An empty note segment is ignored wherever it points.
        let mut empty = base;
        put64(&mut empty, ph(2, P_OFFSET), u64::MAX);
        put64(&mut empty, ph(2, P_FILESZ), 0);
        assert_eq!(ElfImage::parse(&empty).unwrap().pvh_entry(), None);
    }

    #[test]
    fn errors_name_the_problem() {
        let message = ElfError::SegmentOutOfFile {
            index: 2,
            offset: 0x40,
            size: 0x10,
        }
        .to_string();
        assert_eq!(
            message,
            "segment 2 (0x10 bytes at file offset 0x40) extends past the end of the file"
        );
        assert_eq!(
            ElfError::WrongClass(1).to_string(),
            "the image is an ELF file of class 1, not ELF64 (class 2)"
        );
    }

    #[test]
    fn builder_pads_notes_and_sizes_segments() {
        let builder = ElfBuilder::new()
            .note("ab", 1, &[1, 2, 3])
            .segment(TEXT, &[1, 2], 1);
        let image = builder.build();
        // 12-byte header + "ab\0" padded to 4 + 3 descriptor bytes padded to 4.
        assert_eq!(
            u64::from_le_bytes(
                image[ph(1, P_FILESZ)..ph(1, P_FILESZ) + 8]
                    .try_into()
                    .unwrap()
            ),
            20
        );
        // The memory size is at least the file size.
        let elf = ElfImage::parse(&image).unwrap();
        assert_eq!(elf.segments()[0].mem_size, 2);
        assert_eq!(elf.elf_entry(), TEXT.0);
        // No segments: entry 0, no loadable segment.
        assert!(matches!(
            parse_err(&ElfBuilder::new().build()),
            ElfError::NoLoadableSegment
        ));
    }
}
