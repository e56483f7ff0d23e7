//! `blk`: a virtio-blk driver test and benchmark guest.
//!
//! It finds the modern virtio-blk device (`1af4:1042`) on PCI bus 0 through ports
//! `0xcf8`/`0xcfc`, follows its virtio capabilities to the common, notify, ISR and device
//! configuration structures (placing the BAR itself when no firmware did), negotiates
//! `VIRTIO_F_VERSION_1` alone, enables one polled queue and runs what the command line asks:
//!
//! - `blk.test=rw`: checks the image's pattern in sectors 0, 16..24 and the last one, writes the
//!   inverted pattern to sectors 8..16 and the last sector and reads them back, then a flush, a
//!   device-ID request, a read past the end (must fail with `IOERR`) and a request of an
//!   unknown type (must answer `UNSUPP`);
//! - `blk.test=ro`: the same reads, then a write that must fail with `IOERR` on a device that
//!   offers `VIRTIO_BLK_F_RO`, and the same flush, device-ID and error requests;
//! - `blk.bench=seq,N` / `blk.bench=rand,N`: `N` reads of 4 KiB, at consecutive or
//!   pseudo-random 4 KiB blocks, each checked by its first word; reports the TSC cycles spent.
//!
//! `blk.place=1` moves the device's BARs as if no firmware had placed them: sized, then put in
//! the largest gap of the memory map below 4 GiB, clear of the other BARs on bus 0.
//!
//! The image's pattern: the little-endian 64-bit word `k` of the disk (byte offset `8 k`) holds
//! `k * 0x9e3779b97f4a7c15 ^ 0x0123456789abcdef` (wrapping).
//!
//! The test report names no address, so it is the same under every VMM given the same image
//! and device ID:
//!
//! ```text
//! vmkit blk: test=rw capacity=2048 ro=0
//! vmkit blk: read sectors=10 ok
//! vmkit blk: write sectors=9 status=0 readback ok
//! vmkit blk: flush status=0
//! vmkit blk: get_id status=0 id="..."
//! vmkit blk: read past end status=1
//! vmkit blk: unknown type status=2
//! vmkit blk: ok
//! ```
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every check passed |
//! | 1 | a check failed (the line says which) |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | the command line has no valid `blk.test=` or `blk.bench=` |
//! | 5 | no usable virtio-blk device |
//! | 6 | a request was not completed within 2^35 TSC cycles |

#![no_std]
#![no_main]

mod pci;
mod virtio;

use guest_rt::{Console, EXIT_OK, StartInfo};
use virtio::{BUFFER, Block, F_RO, ID_LEN, SECTOR, T_FLUSH, T_GET_ID, T_IN, T_OUT, Timeout, rdtsc};

guest_rt::entry!("blk", main);

/// Exit status: a check failed.
const EXIT_CHECK: u32 = 1;
/// Exit status: bad command line.
const EXIT_BAD_CMDLINE: u32 = 4;
/// Exit status: no usable device.
const EXIT_NO_DEVICE: u32 = 5;
/// Exit status: a request timed out.
const EXIT_TIMEOUT: u32 = 6;

/// `VIRTIO_BLK_S_OK`, `VIRTIO_BLK_S_IOERR`, `VIRTIO_BLK_S_UNSUPP`.
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// A request type no virtio-blk device implements.
const T_UNKNOWN: u32 = 0xff;
/// Sectors in a 4 KiB block.
const BLOCK_SECTORS: u64 = BUFFER as u64 / SECTOR;
/// The smallest image the test runs on.
const MIN_TEST_SECTORS: u64 = 32;

/// The pattern's word `k`.
fn pattern(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// What the command line asks for.
enum Mode {
    Test { read_only: bool },
    Bench { random: bool, n: u64 },
}

fn parse_mode(cmdline: &[u8]) -> Option<Mode> {
    let mut mode = None;
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(value) = word.strip_prefix(b"blk.test=") {
            mode = Some(match value {
                b"rw" => Mode::Test { read_only: false },
                b"ro" => Mode::Test { read_only: true },
                _ => return None,
            });
        } else if let Some(value) = word.strip_prefix(b"blk.bench=") {
            let (random, n) = match value {
                [b's', b'e', b'q', b',', n @ ..] => (false, n),
                [b'r', b'a', b'n', b'd', b',', n @ ..] => (true, n),
                _ => return None,
            };
            mode = Some(Mode::Bench {
                random,
                n: parse_decimal(n)?,
            });
        }
    }
    mode
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?
            .checked_add(u64::from(char::from(d).to_digit(10)?))
    })
}

/// A failed check: the line is printed, the guest ends with [`EXIT_CHECK`].
struct Failed;

/// Why a test or benchmark stopped early.
enum Stop {
    Failed,
    Timeout,
}

impl From<Timeout> for Stop {
    fn from(_: Timeout) -> Self {
        Self::Timeout
    }
}

impl From<Failed> for Stop {
    fn from(_: Failed) -> Self {
        Self::Failed
    }
}

/// Whether the first `sectors` sectors of the buffer hold the pattern of the disk from
/// `first` (inverted when `inverted`); prints the first mismatch.
fn check(
    console: &mut Console,
    disk: &mut Block,
    first: u64,
    sectors: u64,
    inverted: bool,
) -> Result<(), Failed> {
    let flip = if inverted { u64::MAX } else { 0 };
    let words = (sectors * SECTOR / 8) as usize;
    let base = first * SECTOR / 8;
    for (i, chunk) in disk.buffer().chunks_exact(8).take(words).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        let expected = pattern(base + i as u64) ^ flip;
        if word != expected {
            console
                .line()
                .str("mismatch at sector ")
                .dec(first + i as u64 / (SECTOR / 8))
                .str(" word ")
                .dec(i as u64 % (SECTOR / 8))
                .str(": read ")
                .hex(word)
                .str(" expected ")
                .hex(expected)
                .str("\n");
            return Err(Failed);
        }
    }
    Ok(())
}

/// Fills the first `sectors` sectors of the buffer with the inverted pattern from `first`.
fn fill_inverted(disk: &mut Block, first: u64, sectors: u64) {
    let words = (sectors * SECTOR / 8) as usize;
    let base = first * SECTOR / 8;
    for (i, chunk) in disk.buffer().chunks_exact_mut(8).take(words).enumerate() {
        chunk.copy_from_slice(&(!pattern(base + i as u64)).to_le_bytes());
    }
}

/// Reads `sectors` from `first` and checks them.
fn read_and_check(
    console: &mut Console,
    disk: &mut Block,
    first: u64,
    sectors: u64,
    inverted: bool,
) -> Result<(), Stop> {
    let status = disk.request(T_IN, first, (sectors * SECTOR) as u32)?;
    if status != S_OK {
        console
            .line()
            .str("read of sector ")
            .dec(first)
            .str(" failed: status=")
            .dec(u64::from(status))
            .str("\n");
        return Err(Stop::Failed);
    }
    Ok(check(console, disk, first, sectors, inverted)?)
}

/// Prints `<what> status=<s>` and fails unless `s` is `expected`.
fn expect_status(
    console: &mut Console,
    what: &str,
    status: u8,
    expected: u8,
) -> Result<(), Failed> {
    console
        .line()
        .str(what)
        .str(" status=")
        .dec(u64::from(status));
    if status == expected {
        console.str("\n");
        Ok(())
    } else {
        console.str(" expected ").dec(u64::from(expected)).str("\n");
        Err(Failed)
    }
}

fn test(console: &mut Console, disk: &mut Block, read_only: bool) -> Result<(), Stop> {
    let capacity = disk.capacity();
    let ro = disk.features() & F_RO != 0;
    console
        .line()
        .str(if read_only { "test=ro" } else { "test=rw" })
        .str(" capacity=")
        .dec(capacity)
        .str(" ro=")
        .dec(u64::from(ro))
        .str("\n");
    if capacity < MIN_TEST_SECTORS || ro != read_only {
        console
            .line()
            .str("unexpected capacity or read-only feature\n");
        return Err(Stop::Failed);
    }
    let last = capacity - 1;
    read_and_check(console, disk, 0, 1, false)?;
    read_and_check(console, disk, 16, BLOCK_SECTORS, false)?;
    read_and_check(console, disk, last, 1, false)?;
    console.line().str("read sectors=10 ok\n");

    if read_only {
        fill_inverted(disk, 8, BLOCK_SECTORS);
        let status = disk.request(T_OUT, 8, BUFFER as u32)?;
        expect_status(console, "write", status, S_IOERR)?;
        read_and_check(console, disk, 8, BLOCK_SECTORS, false)?;
    } else {
        fill_inverted(disk, 8, BLOCK_SECTORS);
        let block = disk.request(T_OUT, 8, BUFFER as u32)?;
        fill_inverted(disk, last, 1);
        let sector = disk.request(T_OUT, last, SECTOR as u32)?;
        console
            .line()
            .str("write sectors=9 status=")
            .dec(u64::from(block | sector));
        if block != S_OK || sector != S_OK {
            console.str(" expected 0\n");
            return Err(Stop::Failed);
        }
        read_and_check(console, disk, 8, BLOCK_SECTORS, true)?;
        read_and_check(console, disk, last, 1, true)?;
        console.str(" readback ok\n");
    }

    let status = disk.request(T_FLUSH, 0, 0)?;
    expect_status(console, "flush", status, S_OK)?;

    disk.buffer()[..ID_LEN].fill(0);
    let status = disk.request(T_GET_ID, 0, ID_LEN as u32)?;
    console
        .line()
        .str("get_id status=")
        .dec(u64::from(status))
        .str(" id=\"");
    for &byte in disk.buffer()[..ID_LEN].iter().take_while(|&&b| b != 0) {
        console.byte(if byte.is_ascii_graphic() { byte } else { b'?' });
    }
    console.str("\"\n");
    if status != S_OK {
        return Err(Stop::Failed);
    }

    let status = disk.request(T_IN, capacity, SECTOR as u32)?;
    expect_status(console, "read past end", status, S_IOERR)?;
    let status = disk.request(T_UNKNOWN, 0, 0)?;
    expect_status(console, "unknown type", status, S_UNSUPP)?;
    Ok(())
}

fn bench(console: &mut Console, disk: &mut Block, random: bool, n: u64) -> Result<(), Stop> {
    let blocks = disk.capacity() / BLOCK_SECTORS;
    if blocks == 0 {
        console.line().str("the disk is smaller than 4 KiB\n");
        return Err(Stop::Failed);
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let start = rdtsc();
    for i in 0..n {
        let block = if random {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % blocks
        } else {
            i % blocks
        };
        let sector = block * BLOCK_SECTORS;
        let status = disk.request(T_IN, sector, BUFFER as u32)?;
        let mut first = [0u8; 8];
        first.copy_from_slice(&disk.buffer()[..8]);
        if status != S_OK || u64::from_le_bytes(first) != pattern(sector * SECTOR / 8) {
            console
                .line()
                .str("bench read of block ")
                .dec(block)
                .str(" failed: status=")
                .dec(u64::from(status))
                .str("\n");
            return Err(Stop::Failed);
        }
    }
    let cycles = rdtsc().wrapping_sub(start);
    console
        .line()
        .str(if random { "bench=rand" } else { "bench=seq" })
        .str(" n=")
        .dec(n)
        .str(" block=4096 cycles=")
        .dec(cycles)
        .str("\n");
    Ok(())
}

fn main(console: &mut Console, info: &StartInfo) -> u32 {
    let Some(mode) = parse_mode(info.cmdline()) else {
        console
            .line()
            .str("bad command line: give blk.test=rw|ro or blk.bench=seq|rand,<count>\n");
        return EXIT_BAD_CMDLINE;
    };
    let place = info
        .cmdline()
        .split(|&b| b == b' ')
        .any(|word| word == b"blk.place=1");
    let mut disk = match Block::open(info, place) {
        Ok(disk) => disk,
        Err(error) => {
            error.report(console);
            return EXIT_NO_DEVICE;
        }
    };
    let outcome = match mode {
        Mode::Test { read_only } => test(console, &mut disk, read_only),
        Mode::Bench { random, n } => bench(console, &mut disk, random, n),
    };
    match outcome {
        Ok(()) => {
            console.line().str("ok\n");
            EXIT_OK
        }
        Err(Stop::Failed) => EXIT_CHECK,
        Err(Stop::Timeout) => {
            console
                .line()
                .str("request not completed; device status ")
                .hex(u64::from(disk.status()))
                .str("\n");
            EXIT_TIMEOUT
        }
    }
}
