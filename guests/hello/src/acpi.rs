//! Power-off and reset through the ACPI registers a hardware-reduced platform describes.
//!
//! The walk: `hvm_start_info.rsdp_paddr` → RSDP (signature `"RSD PTR "`, both checksums,
//! revision 2 or later) → XSDT (signature, checksum) → the entry whose signature is `"FACP"`
//! (checksum, length) → its registers:
//!
//! | FADT offset | field | used for |
//! |---|---|---|
//! | 40 / 140 | `DSDT` / `X_DSDT` | the `_S5` package |
//! | 112 | flags: `RESET_REG_SUP` (bit 10), `HW_REDUCED_ACPI` (bit 20) | reset / power-off |
//! | 116 | `RESET_REG` (GAS) | reset |
//! | 128 | `RESET_VALUE` | reset |
//! | 244 | `SLEEP_CONTROL_REG` (GAS) | power-off |
//! | 256 | `SLEEP_STATUS_REG` (GAS) | power-off (WAK_STS cleared first, as an OS does) |
//!
//! Every register must be an 8-bit register in system I/O space. The S5 sleep type is the first
//! element of the package named `_S5_` in the DSDT, found by scanning the AML for
//! `NameOp [\] "_S5_" PackageOp` (the DSDT is read once, without evaluating it). Power-off writes
//! `SLP_TYP << 2 | SLP_EN` to sleep control; reset writes `RESET_VALUE` to the reset register.
//!
//! Memory is read with volatile loads (bytes, and aligned words in the DSDT scan) through the
//! identity map of the first 4 GiB, and only inside the lengths the tables declare (at most
//! 64 KiB per checksummed table, 256 KiB of DSDT); no table is trusted to be well formed.

use guest_rt::Console;
use guest_rt::StartInfo;
use guest_rt::port::outb;

/// What the guest asks the platform for.
#[derive(Clone, Copy)]
pub enum Request {
    /// Enter S5 through the sleep control register.
    PowerOff,
    /// Write the reset value to the reset register.
    Reset,
}

/// The end of what guest-rt's entry code identity-maps.
const MAPPED_END: u64 = 4 << 30;
/// The size of a system description table header.
const HEADER_LEN: u64 = 36;
/// The size of an RSDP of revision 2, and of its ACPI 1.0 part.
const RSDP_LEN: u64 = 36;
const RSDP_V1_LEN: u64 = 20;
/// The longest RSDP, XSDT or FADT checksummed.
const TABLE_LEN_MAX: u64 = 64 << 10;
/// The most XSDT entries looked at.
const XSDT_ENTRIES_MAX: u64 = 64;
/// The most DSDT bytes scanned for `_S5_` (the scan is a byte loop in ring 0).
const DSDT_SCAN_MAX: u64 = 256 << 10;

/// FADT field offsets (ACPI 6.x, Table 5.9).
const FADT_DSDT: u64 = 40;
const FADT_FLAGS: u64 = 112;
const FADT_RESET_REG: u64 = 116;
const FADT_RESET_VALUE: u64 = 128;
const FADT_X_DSDT: u64 = 140;
const FADT_SLEEP_CONTROL_REG: u64 = 244;
const FADT_SLEEP_STATUS_REG: u64 = 256;
/// FADT flag: the reset register is supported.
const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// FADT flag: the platform is hardware-reduced (sleep control and status registers).
const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;

/// GAS address space: system I/O.
const GAS_SYSTEM_IO: u8 = 1;
/// The size of a generic address structure.
const GAS_LEN: u64 = 12;

/// Sleep control: SLP_TYPx position and SLP_EN.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_EN: u8 = 1 << 5;
/// Sleep status: WAK_STS (write 1 to clear).
const WAK_STS: u8 = 1 << 7;

/// AML opcodes met on the way to the `_S5_` package's first element.
const AML_NAME_OP: u8 = 0x08;
const AML_ROOT_CHAR: u8 = b'\\';
const AML_PACKAGE_OP: u8 = 0x12;
const AML_ZERO_OP: u8 = 0x00;
const AML_ONE_OP: u8 = 0x01;
const AML_BYTE_PREFIX: u8 = 0x0A;
const AML_WORD_PREFIX: u8 = 0x0B;
const AML_DWORD_PREFIX: u8 = 0x0C;

/// Why the ACPI path cannot be taken.
enum Error {
    /// `rsdp_paddr` is 0.
    NoRsdp,
    /// A structure does not lie in the identity map (or starts at 0).
    Unmapped(&'static str, u64),
    /// A structure's signature is wrong.
    BadSignature(&'static str, u64),
    /// A structure's checksum is wrong.
    BadChecksum(&'static str, u64),
    /// A structure's length is too short for what is read from it, or implausibly long.
    BadLength(&'static str, u64),
    /// The RSDP predates the XSDT.
    OldRevision(u8),
    /// No XSDT entry is a FADT.
    NoFadt,
    /// A FADT flag the request needs is clear.
    FlagClear(&'static str),
    /// A register is not an 8-bit register in system I/O space.
    BadRegister(&'static str),
    /// The DSDT names no `_S5_` package.
    NoS5,
    /// The `_S5_` package does not start with a sleep type of three bits.
    BadS5,
}

impl Error {
    fn report(&self, console: &mut Console) {
        console.line().str("acpi: ");
        match *self {
            Self::NoRsdp => console.str("no RSDP in the start info"),
            Self::Unmapped(what, addr) => console
                .str(what)
                .str(" at ")
                .hex(addr)
                .str(" is not mapped"),
            Self::BadSignature(what, addr) => console
                .str(what)
                .str(" at ")
                .hex(addr)
                .str(" has a wrong signature"),
            Self::BadChecksum(what, addr) => console
                .str(what)
                .str(" at ")
                .hex(addr)
                .str(" has a wrong checksum"),
            Self::BadLength(what, len) => console.str(what).str(" has a bad length: ").dec(len),
            Self::OldRevision(revision) => console
                .str("RSDP revision ")
                .dec(u64::from(revision))
                .str(" has no XSDT"),
            Self::NoFadt => console.str("the XSDT lists no FADT"),
            Self::FlagClear(flag) => console.str("FADT flag ").str(flag).str(" is clear"),
            Self::BadRegister(name) => console
                .str(name)
                .str(" is not an 8-bit register in system I/O space"),
            Self::NoS5 => console.str("the DSDT has no _S5_ package"),
            Self::BadS5 => console.str("the _S5_ package has no valid sleep type"),
        };
        console.str("\n");
    }
}

/// `len` bytes of guest-physical memory at `addr`, all inside the identity map.
#[derive(Clone, Copy)]
struct Region {
    addr: u64,
    len: u64,
}

impl Region {
    fn new(what: &'static str, addr: u64, len: u64) -> Result<Self, Error> {
        match addr.checked_add(len) {
            Some(end) if addr != 0 && end <= MAPPED_END => Ok(Self { addr, len }),
            _ => Err(Error::Unmapped(what, addr)),
        }
    }

    /// The byte at `offset`, if inside the region.
    fn u8(&self, offset: u64) -> Option<u8> {
        if offset >= self.len {
            return None;
        }
        let addr = self.addr + offset;
        // A byte load needs no alignment; volatile assumes nothing about what the memory holds.
        // SAFETY: `addr` lies in `[self.addr, self.addr + self.len)`, which `Region::new` checked
        // is inside the identity map guest-rt's entry code sets up.
        Some(unsafe { core::ptr::read_volatile(addr as usize as *const u8) })
    }

    /// The 8 bytes at `offset` in one load, if they are inside the region and 8-byte aligned.
    fn aligned_u64(&self, offset: u64) -> Option<u64> {
        let addr = self.addr + offset;
        if offset.checked_add(8)? > self.len || !addr.is_multiple_of(8) {
            return None;
        }
        // Any bit pattern is a valid `u64`.
        // SAFETY: `[addr, addr + 8)` lies in the region, inside the identity map (`Region::new`);
        // `addr` is 8-byte aligned (both checked above).
        Some(unsafe { core::ptr::read_volatile(addr as usize as *const u64) })
    }

    /// The little-endian value of `N` bytes at `offset` (unaligned), if inside the region.
    fn le<const N: usize>(&self, offset: u64) -> Option<u64> {
        let mut value = 0;
        for i in (0..N as u64).rev() {
            value = value << 8 | u64::from(self.u8(offset + i)?);
        }
        Some(value)
    }

    fn u32(&self, offset: u64) -> Option<u32> {
        self.le::<4>(offset).map(|v| v as u32)
    }

    fn u64(&self, offset: u64) -> Option<u64> {
        self.le::<8>(offset)
    }

    fn starts_with(&self, bytes: &[u8]) -> bool {
        bytes
            .iter()
            .zip(0..)
            .all(|(&b, offset)| self.u8(offset) == Some(b))
    }

    /// Whether the bytes of the region sum to 0 (mod 256).
    fn checksum_ok(&self) -> bool {
        (0..self.len).fold(0u8, |sum, offset| {
            sum.wrapping_add(self.u8(offset).unwrap_or(0))
        }) == 0
    }
}

/// A system description table with a checked signature, length and checksum.
fn table(what: &'static str, addr: u64, signature: &[u8; 4]) -> Result<Region, Error> {
    let header = Region::new(what, addr, HEADER_LEN)?;
    if !header.starts_with(signature) {
        return Err(Error::BadSignature(what, addr));
    }
    let len = u64::from(header.u32(4).unwrap_or(0));
    if !(HEADER_LEN..=TABLE_LEN_MAX).contains(&len) {
        return Err(Error::BadLength(what, len));
    }
    let table = Region::new(what, addr, len)?;
    if !table.checksum_ok() {
        return Err(Error::BadChecksum(what, addr));
    }
    Ok(table)
}

/// RSDP → XSDT → FADT.
fn find_fadt(rsdp_addr: u64) -> Result<Region, Error> {
    if rsdp_addr == 0 {
        return Err(Error::NoRsdp);
    }
    let rsdp = Region::new("RSDP", rsdp_addr, RSDP_LEN)?;
    if !rsdp.starts_with(b"RSD PTR ") {
        return Err(Error::BadSignature("RSDP", rsdp_addr));
    }
    let revision = rsdp.u8(15).unwrap_or(0);
    if revision < 2 {
        return Err(Error::OldRevision(revision));
    }
    let len = u64::from(rsdp.u32(20).unwrap_or(0));
    if !(RSDP_LEN..=TABLE_LEN_MAX).contains(&len) {
        return Err(Error::BadLength("RSDP", len));
    }
    // The first checksum covers the ACPI 1.0 part, the extended one the whole structure.
    let v1 = Region::new("RSDP", rsdp_addr, RSDP_V1_LEN)?;
    let whole = Region::new("RSDP", rsdp_addr, len)?;
    if !v1.checksum_ok() || !whole.checksum_ok() {
        return Err(Error::BadChecksum("RSDP", rsdp_addr));
    }
    let xsdt_addr = rsdp.u64(24).unwrap_or(0);
    let xsdt = table("XSDT", xsdt_addr, b"XSDT")?;
    let entries = ((xsdt.len - HEADER_LEN) / 8).min(XSDT_ENTRIES_MAX);
    for index in 0..entries {
        let entry = xsdt.u64(HEADER_LEN + 8 * index).unwrap_or(0);
        let is_fadt = Region::new("XSDT entry", entry, 4).is_ok_and(|r| r.starts_with(b"FACP"));
        if is_fadt {
            return table("FADT", entry, b"FACP");
        }
    }
    Err(Error::NoFadt)
}

/// The port of the 8-bit system I/O register whose GAS is at `offset` in the FADT.
fn io_register(fadt: &Region, offset: u64, name: &'static str) -> Result<u16, Error> {
    if fadt.len < offset + GAS_LEN {
        return Err(Error::BadLength("FADT", fadt.len));
    }
    let space = fadt.u8(offset);
    let bit_width = fadt.u8(offset + 1);
    let bit_offset = fadt.u8(offset + 2);
    let access_size = fadt.u8(offset + 3).unwrap_or(0xFF);
    let address = fadt.u64(offset + 4).unwrap_or(0);
    match u16::try_from(address) {
        Ok(port)
            if space == Some(GAS_SYSTEM_IO)
                && bit_width == Some(8)
                && bit_offset == Some(0)
                && access_size <= 1
                && port != 0 =>
        {
            Ok(port)
        }
        _ => Err(Error::BadRegister(name)),
    }
}

fn require_flag(fadt: &Region, flag: u32, name: &'static str) -> Result<(), Error> {
    match fadt.u32(FADT_FLAGS) {
        Some(flags) if flags & flag != 0 => Ok(()),
        _ => Err(Error::FlagClear(name)),
    }
}

/// The DSDT the FADT names: `X_DSDT` when set, `DSDT` otherwise.
fn dsdt(fadt: &Region) -> Result<Region, Error> {
    let addr = match fadt.u64(FADT_X_DSDT) {
        Some(addr) if addr != 0 => addr,
        _ => u64::from(fadt.u32(FADT_DSDT).unwrap_or(0)),
    };
    let header = Region::new("DSDT", addr, HEADER_LEN)?;
    if !header.starts_with(b"DSDT") {
        return Err(Error::BadSignature("DSDT", addr));
    }
    let len = u64::from(header.u32(4).unwrap_or(0));
    if len < HEADER_LEN {
        return Err(Error::BadLength("DSDT", len));
    }
    Region::new("DSDT", addr, len.min(DSDT_SCAN_MAX))
}

/// The first element of the DSDT's `_S5_` package: the S5 sleep type.
///
/// The scan looks for the `5` of the name, eight bytes per load where it can: a byte that is
/// rare in AML, so nearly every aligned word is passed over with a handful of instructions.
fn s5_sleep_type(dsdt: &Region) -> Result<u8, Error> {
    // `five` is where the `5` would be: two bytes into a name that starts after the header
    // and is followed by the package opcode and its PkgLength.
    let mut five = HEADER_LEN + 2;
    while five + 3 <= dsdt.len {
        if let Some(word) = dsdt.aligned_u64(five)
            && !has_byte(word, b'5')
        {
            five += 8;
            continue;
        }
        if dsdt.u8(five) == Some(b'5') && is_s5_name(dsdt, five - 2) {
            return s5_first_element(dsdt, five + 3).ok_or(Error::BadS5);
        }
        five += 1;
    }
    Err(Error::NoS5)
}

/// Whether any byte of `word` is `byte`.
fn has_byte(word: u64, byte: u8) -> bool {
    const ONES: u64 = u64::MAX / 0xFF;
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & (ONES << 7) != 0
}

/// Whether `_S5_` at `at` is a `Name` whose object is a package.
fn is_s5_name(dsdt: &Region, at: u64) -> bool {
    let name_op = match dsdt.u8(at - 1) {
        Some(AML_ROOT_CHAR) => dsdt.u8(at - 2),
        before => before,
    };
    name_op == Some(AML_NAME_OP)
        && dsdt.u8(at + 1) == Some(b'S')
        && dsdt.u8(at + 2) == Some(b'5')
        && dsdt.u8(at + 3) == Some(b'_')
        && dsdt.u8(at + 4) == Some(AML_PACKAGE_OP)
}

/// The first element of the package whose PkgLength starts at `at`, as a sleep type.
fn s5_first_element(dsdt: &Region, at: u64) -> Option<u8> {
    // PkgLength: bits 7..6 of the lead byte count the bytes that follow it.
    let following = u64::from(dsdt.u8(at)? >> 6);
    let count_at = at + 1 + following;
    if dsdt.u8(count_at)? == 0 {
        return None;
    }
    let element = count_at + 1;
    let value = match dsdt.u8(element)? {
        AML_ZERO_OP => 0,
        AML_ONE_OP => 1,
        AML_BYTE_PREFIX => u64::from(dsdt.u8(element + 1)?),
        AML_WORD_PREFIX => dsdt.le::<2>(element + 1)?,
        AML_DWORD_PREFIX => dsdt.le::<4>(element + 1)?,
        _ => return None,
    };
    u8::try_from(value).ok().filter(|&t| t <= 7)
}

/// Finds the registers for `request`, prints what it found, and writes the register. Returns
/// only when the tables are unusable ([`crate::EXIT_NO_ACPI`]) or the VM survived the write
/// ([`crate::EXIT_STILL_RUNNING`]).
pub fn power(console: &mut Console, info: &StartInfo, request: Request) -> u32 {
    match act(console, info, request) {
        Ok(()) => {
            console
                .line()
                .str("acpi: still running after the ")
                .str(match request {
                    Request::PowerOff => "power-off",
                    Request::Reset => "reset",
                })
                .str(" write\n");
            crate::EXIT_STILL_RUNNING
        }
        Err(error) => {
            error.report(console);
            crate::EXIT_NO_ACPI
        }
    }
}

fn act(console: &mut Console, info: &StartInfo, request: Request) -> Result<(), Error> {
    let rsdp = info.rsdp_paddr();
    let fadt = find_fadt(rsdp)?;
    match request {
        Request::PowerOff => {
            require_flag(&fadt, FADT_HW_REDUCED_ACPI, "HW_REDUCED_ACPI")?;
            let control = io_register(&fadt, FADT_SLEEP_CONTROL_REG, "SLEEP_CONTROL_REG")?;
            let status = io_register(&fadt, FADT_SLEEP_STATUS_REG, "SLEEP_STATUS_REG")?;
            let sleep_type = s5_sleep_type(&dsdt(&fadt)?)?;
            found(console, rsdp, &fadt)
                .str(", sleep control port ")
                .hex(u64::from(control))
                .str(", sleep status port ")
                .hex(u64::from(status))
                .str(", S5 type ")
                .dec(u64::from(sleep_type))
                .str("\n");
            outb(status, WAK_STS);
            outb(control, sleep_type << SLP_TYP_SHIFT | SLP_EN);
        }
        Request::Reset => {
            require_flag(&fadt, FADT_RESET_REG_SUP, "RESET_REG_SUP")?;
            let port = io_register(&fadt, FADT_RESET_REG, "RESET_REG")?;
            let value = fadt
                .u8(FADT_RESET_VALUE)
                .ok_or(Error::BadLength("FADT", fadt.len))?;
            found(console, rsdp, &fadt)
                .str(", reset port ")
                .hex(u64::from(port))
                .str(", reset value ")
                .hex(u64::from(value))
                .str("\n");
            outb(port, value);
        }
    }
    Ok(())
}

/// Starts the line that says what was found: `acpi: rsdp at <a>, FADT at <f>`.
fn found<'c>(console: &'c mut Console, rsdp: u64, fadt: &Region) -> &'c mut Console {
    console
        .line()
        .str("acpi: rsdp at ")
        .hex(rsdp)
        .str(", FADT at ")
        .hex(fadt.addr)
}
