//! `hostile`: a guest that attacks what a guest can reach, then checks that an honest disk on
//! the same VM still serves correct data.
//!
//! It needs two modern virtio-blk devices on PCI bus 0: the first is attacked, the second is
//! honest and holds the `blk` guest's pattern (the little-endian 64-bit word `k` of the disk is
//! `k * 0x9e3779b97f4a7c15 ^ 0x0123456789abcdef`, wrapping). Before any attack it checks block
//! 0 of the honest disk (a block is 4 KiB, 8 sectors) and writes the inverted pattern to block 1
//! (sectors 8..16), reading it back; after each attack it reads a pseudo-random block of the
//! honest disk and checks it. The attacks, in this order (see [`queue_attacks`] and [`storms`]):
//!
//! | attack | what it does | what must hold |
//! |---|---|---|
//! | `ring` | a read whose device-written buffer covers its own header and the available ring, so that each completion publishes the next read (the guest first writes the attacked disk's first 32 MiB, one sector per value of the 16-bit ring index, so the chain of reads never ends) | each notification completes exactly one request |
//! | `indirect` | indirect tables of 65535 chained entries (and 65534, whose last `next` leaves the table), a full queue of them per notification | every published chain is given back |
//! | `heads` | full rings of head indices at or above the queue size | a read afterwards completes with status 0 |
//! | `notify` | notifications with nothing published, repeated for one request, at the offsets of missing queues and misaligned, after a reset | nothing completes twice or from nothing |
//! | `serial` | a 4 KiB COM1 flood that never waits for the transmitter, then random UART register accesses | the console works afterwards |
//! | `ports` | random port I/O of every width | the VM runs on |
//! | `mmio` | random MMIO to the attacked disk's BARs, to ECAM and to the rest of the 32-bit hole | the VM runs on |
//! | `config` | random CONFIG_ADDRESS/CONFIG_DATA accesses | the VM runs on |
//!
//! The storms avoid what legitimately ends the VM (the debug-exit port, the ACPI sleep and
//! reset registers, the i8042 command port, the `0xcf9` reset) and the honest disk.
//!
//! Command line:
//!
//! - `hostile.attack=<name>[,<name>...]`: the attacks to run (`all`, the default, for every one);
//! - `hostile.seed=<n>`: the seed of the generator behind the storms and the honest checks
//!   (default 1); the same seed gives the same accesses and the same report;
//! - `hostile.rounds=<n>|forever`: how often to run them (default 1); `forever` keeps attacking
//!   until the VM is stopped from outside.
//!
//! The report names no address:
//!
//! ```text
//! vmkit hostile: attacks=ring,indirect,heads,notify,serial,ports,mmio,config rounds=1 seed=1
//! vmkit hostile: disks: attacked capacity=65536 honest capacity=2048
//! vmkit hostile: honest: block 0 ok, block 1 written inverted and read back
//! vmkit hostile: ring: notifies=64 completions=64 ok
//! vmkit hostile: honest: block 122 ok
//! ...
//! vmkit hostile: done rounds=1 ok
//! ```
//!
//! | status | meaning |
//! |---|---|
//! | 0 | every attack ran and every check passed |
//! | 1 | a check failed (the line says which) |
//! | 2 | the start-info pointer or magic is wrong |
//! | 3 | panic (the message is printed first) |
//! | 4 | the command line names an unknown attack or a bad seed or round count |
//! | 5 | fewer than two usable virtio-blk devices, or an attacked disk too small for `ring` |
//! | 6 | a request was not completed in time |
//! | 7 | the memory map has no RAM at 4..6 MiB for the attacks' rings and tables |

#![no_std]
#![no_main]

// The `blk` guest's PCI discovery and virtio-blk driver; this guest uses part of them.
#[allow(dead_code)]
#[path = "../../blk/src/pci.rs"]
mod pci;
#[allow(dead_code)]
#[path = "../../blk/src/virtio.rs"]
mod virtio;

mod io;
mod platform;
mod queue;
mod queue_attacks;
mod scratch;
mod storms;

use guest_rt::{Console, EXIT_OK, StartInfo};

use io::Mmio;
use platform::{Ecam, Extent};
use queue::Queue;
use virtio::{BUFFER, Block, DEVICE_BLOCK, DEVICE_STATUS, SECTOR, SetupError, T_IN, T_OUT, VENDOR};

guest_rt::entry!("hostile", main);

/// Exit status: a check failed.
const EXIT_CHECK: u32 = 1;
/// Exit status: bad command line.
const EXIT_BAD_CMDLINE: u32 = 4;
/// Exit status: no usable pair of disks.
const EXIT_NO_DEVICE: u32 = 5;
/// Exit status: a request was not completed in time.
const EXIT_TIMEOUT: u32 = 6;
/// Exit status: no scratch memory.
const EXIT_NO_MEMORY: u32 = 7;

/// Sectors in a block of the honest disk.
const BLOCK_SECTORS: u64 = BUFFER as u64 / SECTOR;
/// The honest disk's block that holds the inverted pattern once the guest has written it.
const WRITTEN_BLOCK: u64 = 1;
/// The seed without `hostile.seed=`.
const DEFAULT_SEED: u64 = 1;

/// The honest disk's pattern: its word `k`.
fn pattern(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// xorshift64*: the generator behind every random choice, seeded from the command line.
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed` (any value, 0 included).
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next number.
    pub fn word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.word() % n
    }
}

/// Why the guest stopped early.
pub enum Stop {
    /// A check failed; the line is printed.
    Failed,
    /// A request was not completed in time; the line is printed.
    Timeout,
    /// The attacked disk could not be set up again.
    Setup(SetupError),
}

impl From<SetupError> for Stop {
    fn from(error: SetupError) -> Self {
        Self::Setup(error)
    }
}

impl From<virtio::Timeout> for Stop {
    fn from(_: virtio::Timeout) -> Self {
        Self::Timeout
    }
}

/// What the attacks work on, and what they keep from one round to the next.
pub struct Ctx<'a> {
    /// The start info (for the memory map the drivers place BARs with).
    pub info: &'a StartInfo,
    /// The attacked disk's function.
    pub attacked: pci::Function,
    /// The honest disk's function.
    pub honest: pci::Function,
    /// Where MMIO may go.
    pub mmio: Mmio,
    /// The attacked disk's memory BARs.
    pub attacked_bars: [Extent; 6],
    /// The honest disk's memory BARs.
    pub honest_bars: [Extent; 6],
    /// The attacked disk's device-status register.
    pub attacked_status: u64,
    /// The ECAM window, when the ACPI tables describe one.
    pub ecam: Option<Ecam>,
    /// The generator.
    pub rng: Rng,
    /// Whether the ring attack's region of the attacked disk is written.
    pub ring_written: bool,
    /// Whether the indirect table is filled.
    pub table_written: bool,
}

/// One attack: its name (on the command line and in the report) and what runs it.
struct Attack {
    name: &'static str,
    run: fn(&mut Console, &mut Ctx<'_>) -> Result<(), Stop>,
}

/// Every attack, in the order a round runs them.
const ATTACKS: [Attack; 8] = [
    Attack {
        name: "ring",
        run: queue_attacks::ring,
    },
    Attack {
        name: "indirect",
        run: queue_attacks::indirect,
    },
    Attack {
        name: "heads",
        run: queue_attacks::heads,
    },
    Attack {
        name: "notify",
        run: queue_attacks::notify,
    },
    Attack {
        name: "serial",
        run: storms::serial,
    },
    Attack {
        name: "ports",
        run: storms::ports,
    },
    Attack {
        name: "mmio",
        run: storms::mmio,
    },
    Attack {
        name: "config",
        run: storms::config,
    },
];
/// The bit of `ring` in [`Options::attacks`].
const RING: u32 = 1;

/// What the command line asks for.
struct Options {
    /// Bit `i` selects `ATTACKS[i]`.
    attacks: u32,
    /// Rounds to run; `None` for ever.
    rounds: Option<u64>,
    seed: u64,
}

impl Options {
    /// The options of `cmdline`, or `None` when a `hostile.` word has a bad value.
    fn parse(cmdline: &[u8]) -> Option<Self> {
        let mut options = Self {
            attacks: (1 << ATTACKS.len()) - 1,
            rounds: Some(1),
            seed: DEFAULT_SEED,
        };
        for word in cmdline.split(|&b| b == b' ') {
            if let Some(value) = word.strip_prefix(b"hostile.attack=") {
                options.attacks = 0;
                for name in value.split(|&b| b == b',') {
                    options.attacks |= match name {
                        b"all" => (1 << ATTACKS.len()) - 1,
                        _ => 1 << ATTACKS.iter().position(|a| a.name.as_bytes() == name)?,
                    };
                }
            } else if let Some(value) = word.strip_prefix(b"hostile.seed=") {
                options.seed = parse_decimal(value)?;
            } else if let Some(value) = word.strip_prefix(b"hostile.rounds=") {
                options.rounds = match value {
                    b"forever" => None,
                    _ => Some(parse_decimal(value).filter(|&n| n > 0)?),
                };
            }
        }
        Some(options)
    }

    /// The selected attacks, in order.
    fn selected(&self) -> impl Iterator<Item = &'static Attack> {
        let attacks = self.attacks;
        ATTACKS
            .iter()
            .enumerate()
            .filter(move |(i, _)| attacks & (1 << i) != 0)
            .map(|(_, attack)| attack)
    }
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

/// Reads block `block` of the honest disk and checks it against the pattern (inverted in
/// [`WRITTEN_BLOCK`] when `written`).
fn check_block(
    console: &mut Console,
    disk: &mut Block,
    block: u64,
    written: bool,
) -> Result<(), Stop> {
    let sector = block * BLOCK_SECTORS;
    let status = disk.request(T_IN, sector, BUFFER as u32)?;
    if status != 0 {
        console
            .line()
            .str("honest: read of block ")
            .dec(block)
            .str(" failed: status=")
            .dec(u64::from(status))
            .str("\n");
        return Err(Stop::Failed);
    }
    let flip = if written && block == WRITTEN_BLOCK {
        u64::MAX
    } else {
        0
    };
    let base = sector * SECTOR / 8;
    for (i, chunk) in disk.buffer().chunks_exact(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let word = u64::from_le_bytes(bytes);
        let expected = pattern(base + i as u64) ^ flip;
        if word != expected {
            console
                .line()
                .str("honest: block ")
                .dec(block)
                .str(" word ")
                .dec(i as u64)
                .str(" is ")
                .hex(word)
                .str(", expected ")
                .hex(expected)
                .str("\n");
            return Err(Stop::Failed);
        }
    }
    Ok(())
}

/// Checks block 0 of the honest disk, writes the inverted pattern to [`WRITTEN_BLOCK`] and
/// reads it back.
fn honest_setup(console: &mut Console, disk: &mut Block) -> Result<(), Stop> {
    check_block(console, disk, 0, false)?;
    let base = WRITTEN_BLOCK * BLOCK_SECTORS * SECTOR / 8;
    for (i, chunk) in disk.buffer().chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(!pattern(base + i as u64)).to_le_bytes());
    }
    let status = disk.request(T_OUT, WRITTEN_BLOCK * BLOCK_SECTORS, BUFFER as u32)?;
    if status != 0 {
        console
            .line()
            .str("honest: write of block 1 failed: status=")
            .dec(u64::from(status))
            .str("\n");
        return Err(Stop::Failed);
    }
    check_block(console, disk, WRITTEN_BLOCK, true)?;
    console
        .line()
        .str("honest: block 0 ok, block 1 written inverted and read back\n");
    Ok(())
}

/// Runs the selected attacks for the rounds asked, checking a random block of the honest disk
/// after each; returns the rounds run.
fn run(
    console: &mut Console,
    ctx: &mut Ctx<'_>,
    disk: &mut Block,
    options: &Options,
) -> Result<u64, Stop> {
    honest_setup(console, disk)?;
    let blocks = disk.capacity() / BLOCK_SECTORS;
    let mut round = 0;
    while options.rounds != Some(round) {
        round += 1;
        for attack in options.selected() {
            (attack.run)(console, ctx)?;
            let block = ctx.rng.below(blocks);
            check_block(console, disk, block, true)?;
            console.line().str("honest: block ").dec(block).str(" ok\n");
        }
    }
    Ok(round)
}

fn main(console: &mut Console, info: &StartInfo) -> u32 {
    let Some(options) = Options::parse(info.cmdline()) else {
        console.line().str(
            "bad command line: give hostile.attack=ring|indirect|heads|notify|serial|ports|mmio|config|all[,...], hostile.seed=<n>, hostile.rounds=<n>|forever\n",
        );
        return EXIT_BAD_CMDLINE;
    };
    console.line().str("attacks=");
    for (i, attack) in options.selected().enumerate() {
        if i > 0 {
            console.str(",");
        }
        console.str(attack.name);
    }
    console.str(" rounds=");
    match options.rounds {
        Some(rounds) => console.dec(rounds),
        None => console.str("forever"),
    };
    console.str(" seed=").dec(options.seed).str("\n");

    let (true, Some(mmio)) = (scratch::available(info), Mmio::new(info)) else {
        console
            .line()
            .str("the memory map has no RAM at 4..6 MiB for the attacks' rings and tables\n");
        return EXIT_NO_MEMORY;
    };
    let mut disks = pci::find_all(VENDOR, DEVICE_BLOCK);
    let (Some(attacked), Some(honest)) = (disks.next(), disks.next()) else {
        console.line().str(
            "two virtio-blk devices (1af4:1042) are needed on PCI bus 0: the attacked one, then the honest one\n",
        );
        return EXIT_NO_DEVICE;
    };
    let attacked_bars = platform::memory_bars(attacked);
    let honest_bars = platform::memory_bars(honest);
    let opened = Queue::open(attacked, info, mmio, 4, scratch::AVAIL, 0)
        .and_then(|probe| Block::open_function(honest, info, false).map(|disk| (probe, disk)));
    let (probe, mut disk) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            error.report(console);
            return EXIT_NO_DEVICE;
        }
    };
    let capacity = probe.capacity();
    console
        .line()
        .str("disks: attacked capacity=")
        .dec(capacity)
        .str(" honest capacity=")
        .dec(disk.capacity())
        .str("\n");
    if options.attacks & RING != 0 && capacity < queue_attacks::RING_SECTORS {
        console
            .line()
            .str("the ring attack needs an attacked disk of 65536 sectors (32 MiB) or more\n");
        return EXIT_NO_DEVICE;
    }
    if disk.capacity() < 2 * BLOCK_SECTORS {
        console
            .line()
            .str("the honest disk needs two blocks (8 KiB) or more\n");
        return EXIT_NO_DEVICE;
    }
    let mut ctx = Ctx {
        info,
        attacked,
        honest,
        mmio,
        attacked_bars,
        honest_bars,
        attacked_status: probe.transport().common + DEVICE_STATUS,
        ecam: platform::ecam(info),
        rng: Rng::new(options.seed),
        ring_written: false,
        table_written: false,
    };
    match run(console, &mut ctx, &mut disk, &options) {
        Ok(rounds) => {
            console.line().str("done rounds=").dec(rounds).str(" ok\n");
            EXIT_OK
        }
        Err(Stop::Failed) => EXIT_CHECK,
        Err(Stop::Timeout) => {
            console.line().str("a request was not completed in time\n");
            EXIT_TIMEOUT
        }
        Err(Stop::Setup(error)) => {
            error.report(console);
            EXIT_NO_DEVICE
        }
    }
}
