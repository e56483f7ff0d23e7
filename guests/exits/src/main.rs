//! `exits`: exercises the exit paths of a VMM through QEMU's `pc-testdev` device.
//!
//! It performs `n` port-I/O round trips on the test device's 32-bit scratch register (port
//! `0xe0`: an `out` of a value, then an `in` that must return it) and `n` MMIO round trips on its
//! scratch memory at `0xff00_0000` (a 32-bit store to slot `i % 16384`, then a load that must
//! return it), so `4 n` exits in all. `n` comes from the command line (`exits.n=1000`; default
//! 100). It reports over COM1, identically under every VMM that has the device:
//!
//! ```text
//! vmkit exits: n=100
//! vmkit exits: pio writes=100 reads=100 checksum=0x... ok
//! vmkit exits: mmio writes=100 reads=100 checksum=0x... ok
//! ```
//!
//! The checksum folds every value read. A read that differs from the value written ends its
//! loop with `mismatch at <i>: wrote <v> read <r>` instead of `ok`. Exit statuses:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every value read back as written |
//! | 1 | a mismatch (no test device, or a broken exit path) |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | `exits.n=` is not a decimal number that fits 32 bits |
//!
//! The loops are a handful of instructions per exit: guest ring-0 code may be emulated
//! instruction by instruction, and the point is to measure the exits.

#![no_std]
#![no_main]

use guest_rt::port::{inl, outl};
use guest_rt::{Console, EXIT_OK, StartInfo};

guest_rt::entry!("exits", main);

/// The test device's scratch register.
const SCRATCH_PORT: u16 = 0xe0;
/// The test device's scratch memory.
const IOMEM_BASE: u64 = 0xff00_0000;
/// 32-bit slots in the 64 KiB scratch memory.
const IOMEM_SLOTS: u32 = 0x1_0000 / 4;
/// Round trips per kind when the command line names none.
const DEFAULT_N: u32 = 100;
/// The command-line option that sets `n`.
const N_OPTION: &[u8] = b"exits.n=";
/// The first value written, and the step between values (odd, so `2^32` values are distinct).
const SEED: u32 = 0x5a5a_1234;
const STEP: u32 = 0x9e37_79b9;

/// Exit status: a value read back differs from the value written.
const EXIT_MISMATCH: u32 = 1;
/// Exit status: `exits.n=` is malformed.
const EXIT_BAD_CMDLINE: u32 = 4;

/// A value read back that differs from the value written.
struct Mismatch {
    index: u32,
    wrote: u32,
    read: u32,
}

/// What one loop did: round trips completed, the checksum of the values read, and a mismatch.
struct Outcome {
    round_trips: u32,
    checksum: u32,
    mismatch: Option<Mismatch>,
}

/// Runs `n` round trips: `write(i, v)` then `read(i)`, which must return `v`.
fn round_trips(n: u32, write: impl Fn(u32, u32), read: impl Fn(u32) -> u32) -> Outcome {
    let mut checksum = 0u32;
    let mut value = SEED;
    for index in 0..n {
        write(index, value);
        let got = read(index);
        checksum = checksum.rotate_left(5) ^ got;
        if got != value {
            return Outcome {
                round_trips: index + 1,
                checksum,
                mismatch: Some(Mismatch {
                    index,
                    wrote: value,
                    read: got,
                }),
            };
        }
        value = value.wrapping_add(STEP);
    }
    Outcome {
        round_trips: n,
        checksum,
        mismatch: None,
    }
}

/// The address of scratch-memory slot `index % IOMEM_SLOTS`.
fn slot(index: u32) -> *mut u32 {
    (IOMEM_BASE + u64::from(index % IOMEM_SLOTS) * 4) as usize as *mut u32
}

fn pio(n: u32) -> Outcome {
    round_trips(
        n,
        |_, value| outl(SCRATCH_PORT, value),
        |_| inl(SCRATCH_PORT),
    )
}

fn mmio(n: u32) -> Outcome {
    round_trips(
        n,
        // SAFETY: the slot lies in the test device's MMIO range, identity-mapped by the entry
        // code and no part of the guest's own memory; an aligned volatile store is one access.
        |index, value| unsafe { core::ptr::write_volatile(slot(index), value) },
        // SAFETY: as above, for an aligned volatile load.
        |index| unsafe { core::ptr::read_volatile(slot(index)) },
    )
}

/// `n` from the command line: the value of the last `exits.n=` word, or [`DEFAULT_N`].
fn parse_n(cmdline: &[u8]) -> Option<u32> {
    let mut n = DEFAULT_N;
    for word in cmdline.split(|&b| b == b' ') {
        if let Some(digits) = word.strip_prefix(N_OPTION) {
            n = parse_decimal(digits)?;
        }
    }
    Some(n)
}

fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        let digit = char::from(d).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

fn report(console: &mut Console, kind: &str, outcome: &Outcome) {
    let count = u64::from(outcome.round_trips);
    console
        .line()
        .str(kind)
        .str(" writes=")
        .dec(count)
        .str(" reads=")
        .dec(count)
        .str(" checksum=")
        .hex(u64::from(outcome.checksum));
    match &outcome.mismatch {
        None => console.str(" ok\n"),
        Some(m) => console
            .str(" mismatch at ")
            .dec(u64::from(m.index))
            .str(": wrote ")
            .hex(u64::from(m.wrote))
            .str(" read ")
            .hex(u64::from(m.read))
            .str("\n"),
    };
}

fn main(console: &mut Console, info: &StartInfo) -> u32 {
    let Some(n) = parse_n(info.cmdline()) else {
        console
            .line()
            .str("bad command line: exits.n must be a decimal number below 2^32\n");
        return EXIT_BAD_CMDLINE;
    };
    console.line().str("n=").dec(u64::from(n)).str("\n");
    let pio = pio(n);
    report(console, "pio", &pio);
    let mmio = mmio(n);
    report(console, "mmio", &mmio);
    if pio.mismatch.is_some() || mmio.mismatch.is_some() {
        EXIT_MISMATCH
    } else {
        EXIT_OK
    }
}
