//! Command-line interface, in Cloud Hypervisor's spelling.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use vmkit_vcpu::MAX_VCPUS;

/// The default guest RAM size.
#[cfg(test)]
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// vmkit's reference VMM: boots a Linux kernel (bzImage or vmlinux), a PVH firmware or any PVH
/// ELF on KVM.
///
/// With no arguments it boots its built-in `hello` guest.
#[derive(Debug, Parser)]
#[command(name = "reference-vmm", version, about, long_about = None)]
pub struct Cli {
    /// A kernel to boot: a Linux bzImage, a vmlinux or any PVH ELF, told apart by the file's
    /// contents (default: the built-in `hello` guest).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// An initramfs (or initrd) for the kernel: the bzImage's ramdisk, or the first PVH module.
    #[arg(long, value_name = "PATH", conflicts_with = "firmware")]
    pub initramfs: Option<PathBuf>,

    /// A PVH ELF firmware that boots from the disks (such as rust-hypervisor-firmware), instead
    /// of a kernel.
    #[arg(long, value_name = "PATH", conflicts_with = "kernel")]
    pub firmware: Option<PathBuf>,

    /// Boot a built-in guest instead of a kernel: `hello` (the default), `exits` (port-I/O and
    /// MMIO round trips through the test device; add --testdev) or `assist` (ring-0 checks of
    /// the instructions the emulation assist completes).
    #[arg(
        long,
        value_name = "NAME",
        value_enum,
        conflicts_with_all = ["kernel", "firmware"]
    )]
    pub builtin: Option<BuiltinGuest>,

    /// Disks, each a virtio-blk PCI device: `path=<file>[,readonly=on|off]`. Repeat the flag or
    /// give several values.
    #[arg(
        long = "disk",
        value_name = "path=FILE[,readonly=on]",
        value_parser = parse_disk,
        num_args = 1..,
        action = clap::ArgAction::Append
    )]
    pub disks: Vec<DiskConfig>,

    /// The kernel command line.
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,

    /// Guest memory: `size=<bytes>[K|M|G]`.
    #[arg(long, value_name = "size=SIZE", default_value = "size=512M", value_parser = parse_memory)]
    pub memory: MemoryConfig,

    /// vCPUs: `boot=<n>`.
    #[arg(long, value_name = "boot=N", default_value = "boot=1", value_parser = parse_cpus)]
    pub cpus: CpusConfig,

    /// Where the guest's COM1 goes: `tty` (stdin/stdout), `file=<path>[,limit=<size>]` (at
    /// most `size` bytes, K/M/G/T suffixes allowed, appended), `null` or `off`. Output the host
    /// does not take in time is dropped and counted (--stats), never waited for.
    #[arg(long, value_name = "MODE", default_value = "tty", value_parser = parse_serial)]
    pub serial: SerialConfig,

    /// Stop the VM after this many seconds (fractions allowed, at most 1e9).
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,

    /// Print the exit statistics, the disks', COM1's and the log's counters and the boot
    /// timeline on stderr when the VM ends: `--stats` or `--stats=text` as a table,
    /// `--stats=json` as one JSON document on one line.
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text"
    )]
    pub stats: Option<StatsFormat>,

    /// Log more: `-v` info, `-vv` debug, `-vvv` trace (default: warnings and errors, or
    /// `VMKIT_LOG`'s level when no `-v` is given).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write the log lines to this file (appended, created; a regular file or a character
    /// device) instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Add QEMU's `pc-testdev` test device: scratch register at ports 0xe0-0xeb, interrupt
    /// lines at ports 0x2000-0x2017, 64 KiB of scratch memory at 0xff000000.
    #[arg(long)]
    pub testdev: bool,

    /// Record every exit and the VMM's answer to FILE (created or truncated), in vmkit-exits'
    /// recording format: each exit's sequence number, vCPU, kind, address, data written or
    /// returned and action, and what the devices did meanwhile (interrupts and MSIs raised, CMOS
    /// clock readings, the guest memory and disk data virtio-blk read or wrote, disk data stored
    /// once by content hash). A summary line says what was written when the VM ends.
    #[arg(long, value_name = "FILE")]
    pub record_exits: Option<PathBuf>,

    /// The most bytes --record-exits writes (K/M/G/T suffixes; default 1G). A recording that
    /// reaches it ends with a truncation marker; the VM runs on.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "record_exits")]
    pub record_limit: Option<u64>,

    /// Replay FILE, a recording made by --record-exits, instead of running a guest: the devices
    /// the recording's facts describe are built anew, without a hypervisor, and each recorded
    /// exit is handed to them; every answer (the bytes returned, who answered, the action) and
    /// every side effect (interrupts, MSIs, clock readings, disk calls, guest memory written) is
    /// compared with the recording's. Status 0 when all match; 103 and one line naming the
    /// first exit that differs otherwise.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "kernel", "initramfs", "firmware", "builtin", "disks", "testdev", "record_exits"
        ]
    )]
    pub replay: Option<PathBuf>,

    /// Confine each VMM thread to the system calls it needs (seccomp): `true` (a call outside
    /// its list ends the VMM with status 159), `log` (allowed, and logged by the kernel) or
    /// `false`.
    #[arg(
        long,
        value_name = "true|false|log",
        default_value = "true",
        value_parser = reference_vmm_seccomp::parse_mode
    )]
    pub seccomp: reference_vmm_seccomp::SeccompMode,
}

/// The default of `--record-limit`.
pub const DEFAULT_RECORD_LIMIT: u64 = 1 << 30;

/// `--builtin`: the guests built into the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BuiltinGuest {
    /// Prints its boot information and exits with status 0.
    Hello,
    /// Port-I/O and MMIO round trips through the test device (`exits.n=N` on the command line).
    Exits,
    /// Ring-0 checks of the instructions the emulation assist completes (add --stats to see
    /// which ones it did).
    Assist,
}

/// `--stats[=FORMAT]`: how the statistics are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    /// An aligned table and a few lines, for people.
    Text,
    /// One JSON document on one line, for programs (fields in the README).
    Json,
}

/// `--memory`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
}

/// `--cpus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs started at boot.
    pub boot: u8,
}

/// `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file (or block device).
    pub path: PathBuf,
    /// Whether the guest may only read it (the image is then shared-locked, so other read-only
    /// users may open it too).
    pub readonly: bool,
}

/// The most disks: one PCI slot each, every slot of the root bus but the host bridge's.
pub const MAX_DISKS: usize = vmkit_devices::pci::MAX_ENDPOINTS;

/// `--serial`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin.
    Tty,
    /// Output appended to a file.
    File {
        /// The file.
        path: PathBuf,
        /// The most bytes this run appends; the rest is dropped and counted.
        limit: Option<u64>,
    },
    /// Output discarded; the UART still exists.
    Null,
    /// No UART at all.
    Off,
}

/// Splits `key=value[,key=value...]` into pairs, rejecting unknown keys.
fn options<'a>(s: &'a str, known: &[&str]) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            bail!("expected key=value, got {part:?}");
        };
        if !known.contains(&k) {
            bail!("unknown option {k:?} (known: {})", known.join(", "));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Parses a size with an optional K/M/G/T suffix (powers of 1024).
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => bail!("unknown size suffix {c:?} in {s:?} (use K, M, G or T)"),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("invalid size {s:?}"))?;
    n.checked_mul(1u64 << shift)
        .with_context(|| format!("size {s:?} is too large"))
}

fn parse_memory(s: &str) -> anyhow::Result<MemoryConfig> {
    let mut size = None;
    for (_, v) in options(s, &["size"])? {
        size = Some(parse_size(v)?);
    }
    let size = size.context("missing size=")?;
    Ok(MemoryConfig { size })
}

fn parse_cpus(s: &str) -> anyhow::Result<CpusConfig> {
    let mut boot = None;
    for (_, v) in options(s, &["boot"])? {
        let n: u32 = v
            .parse()
            .with_context(|| format!("invalid vCPU count {v:?}"))?;
        // One vCPU per xAPIC ID: the limit is the platform's, as the backend enforces it.
        if n == 0 || n > MAX_VCPUS {
            bail!("vCPU count must be 1..={MAX_VCPUS}, got {n}");
        }
        boot = Some(u8::try_from(n).with_context(|| format!("vCPU count {n} is too large"))?);
    }
    Ok(CpusConfig {
        boot: boot.context("missing boot=")?,
    })
}

fn parse_disk(s: &str) -> anyhow::Result<DiskConfig> {
    let mut path = None;
    let mut readonly = false;
    for (k, v) in options(s, &["path", "readonly"])? {
        match k {
            "path" if v.is_empty() => bail!("empty path="),
            "path" => path = Some(PathBuf::from(v)),
            _ => {
                readonly = match v {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => bail!("readonly must be on or off, got {v:?}"),
                }
            }
        }
    }
    Ok(DiskConfig {
        path: path.context("missing path=")?,
        readonly,
    })
}

fn parse_serial(s: &str) -> anyhow::Result<SerialConfig> {
    Ok(match s {
        "tty" => SerialConfig::Tty,
        "null" => SerialConfig::Null,
        "off" => SerialConfig::Off,
        _ if s.starts_with("file=") => {
            let (mut path, mut limit) = (None, None);
            for (k, v) in options(s, &["file", "limit"])? {
                match k {
                    "file" if v.is_empty() => bail!("empty file="),
                    "file" => path = Some(PathBuf::from(v)),
                    _ => match parse_size(v)? {
                        0 => bail!("limit must be at least 1 byte (--serial null drops all)"),
                        n => limit = Some(n),
                    },
                }
            }
            SerialConfig::File {
                path: path.context("missing file=")?,
                limit,
            }
        }
        _ => bail!("expected tty, null, off or file=<path>[,limit=<size>], got {s:?}"),
    })
}

/// The longest `--timeout`, in seconds (about 31 years): any later deadline is representable.
pub const MAX_TIMEOUT_SECS: u64 = 1_000_000_000;

fn parse_timeout(s: &str) -> anyhow::Result<Duration> {
    let secs: f64 = s
        .parse()
        .with_context(|| format!("invalid number of seconds {s:?}"))?;
    if secs > MAX_TIMEOUT_SECS as f64 {
        bail!("timeout must be at most {MAX_TIMEOUT_SECS} seconds, got {s:?}");
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("timeout must be a positive number of seconds, got {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn memory_and_cpus() {
        assert_eq!(parse_memory("size=1G").unwrap().size, 1 << 30);
        assert!(parse_memory("1G").is_err());
        assert!(parse_memory("sizes=1G").is_err());
        assert_eq!(parse_cpus("boot=4").unwrap().boot, 4);
        assert!(parse_cpus("boot=0").is_err());
        assert_eq!(parse_cpus("boot=255").unwrap().boot, 255);
        assert!(parse_cpus("boot=256").is_err());
        assert!(parse_cpus("boot=x").is_err());
        assert!(parse_cpus("max=2").is_err());
    }

    #[test]
    fn serial_and_timeout() {
        assert_eq!(parse_serial("tty").unwrap(), SerialConfig::Tty);
        assert_eq!(parse_serial("off").unwrap(), SerialConfig::Off);
        assert_eq!(parse_serial("null").unwrap(), SerialConfig::Null);
        assert_eq!(
            parse_serial("file=/tmp/x").unwrap(),
            SerialConfig::File {
                path: "/tmp/x".into(),
                limit: None
            }
        );
        assert_eq!(
            parse_serial("file=/tmp/x,limit=2M").unwrap(),
            SerialConfig::File {
                path: "/tmp/x".into(),
                limit: Some(2 << 20)
            }
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("file=x,limit=0").is_err());
        assert!(parse_serial("file=x,limit=lots").is_err());
        assert!(parse_serial("file=x,limit=99999999999T").is_err());
        assert!(parse_serial("file=x,size=1M").is_err());
        assert!(parse_serial("pty").is_err());
        assert_eq!(parse_timeout("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-3").is_err());
        assert!(parse_timeout("inf").is_err());
        assert!(parse_timeout("nan").is_err());
        // Past the limit: `Instant + Duration` would overflow.
        assert!(parse_timeout("1e19").is_err());
        assert!(parse_timeout("1e300").is_err());
        assert!(parse_timeout("1000000001").is_err());
        assert_eq!(
            parse_timeout("1000000000").unwrap(),
            Duration::from_secs(MAX_TIMEOUT_SECS)
        );
    }

    #[test]
    fn defaults_parse() {
        let cli = Cli::try_parse_from(["reference-vmm"]).unwrap();
        assert_eq!(cli.memory.size, DEFAULT_MEMORY);
        assert_eq!(cli.cpus.boot, 1);
        assert_eq!(cli.serial, SerialConfig::Tty);
        assert!(cli.kernel.is_none());
        assert!(cli.builtin.is_none());
        assert!(cli.firmware.is_none());
        assert!(cli.disks.is_empty());
        assert!(!cli.testdev);
        assert!(cli.initramfs.is_none());
    }

    #[test]
    fn initramfs_goes_with_a_kernel_not_a_firmware() {
        let cli =
            Cli::try_parse_from(["reference-vmm", "--kernel", "k", "--initramfs", "i"]).unwrap();
        assert_eq!(cli.initramfs, Some(PathBuf::from("i")));
        assert!(
            Cli::try_parse_from(["reference-vmm", "--firmware", "f", "--initramfs", "i"]).is_err()
        );
    }

    #[test]
    fn disks_and_firmware() {
        assert_eq!(
            parse_disk("path=/d.img").unwrap(),
            DiskConfig {
                path: "/d.img".into(),
                readonly: false
            }
        );
        assert!(parse_disk("path=a,readonly=on").unwrap().readonly);
        assert!(parse_disk("readonly=true,path=a").unwrap().readonly);
        assert!(!parse_disk("path=a,readonly=off").unwrap().readonly);
        assert!(parse_disk("path=a,readonly=yes").is_err());
        assert!(parse_disk("path=").is_err());
        assert!(parse_disk("readonly=on").is_err());
        assert!(parse_disk("/d.img").is_err());
        assert!(parse_disk("path=a,cache=none").is_err());

        let cli = Cli::try_parse_from([
            "reference-vmm",
            "--firmware",
            "fw",
            "--disk",
            "path=a",
            "path=b,readonly=on",
            "--disk",
            "path=c",
        ])
        .unwrap();
        assert_eq!(cli.firmware, Some(PathBuf::from("fw")));
        let paths: Vec<_> = cli.disks.iter().map(|d| d.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("a"), "b".into(), "c".into()]);
        assert!(cli.disks[1].readonly);
        for conflict in [
            &["--firmware", "fw", "--kernel", "k"][..],
            &["--firmware", "fw", "--builtin", "hello"],
        ] {
            let args = std::iter::once("reference-vmm").chain(conflict.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{conflict:?}");
        }
    }

    #[test]
    fn stats_format_is_optional_and_needs_an_equals_sign() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("reference-vmm").chain(args.iter().copied()))
        };
        assert_eq!(parse(&[]).unwrap().stats, None);
        assert_eq!(parse(&["--stats"]).unwrap().stats, Some(StatsFormat::Text));
        assert_eq!(
            parse(&["--stats=text"]).unwrap().stats,
            Some(StatsFormat::Text)
        );
        assert_eq!(
            parse(&["--stats=json"]).unwrap().stats,
            Some(StatsFormat::Json)
        );
        // A flag after a bare --stats is a flag, not the format.
        let cli = parse(&["--stats", "--serial", "null"]).unwrap();
        assert_eq!(cli.stats, Some(StatsFormat::Text));
        assert_eq!(cli.serial, SerialConfig::Null);
        let cli = parse(&["--stats=json", "--timeout", "2"]).unwrap();
        assert_eq!(cli.stats, Some(StatsFormat::Json));
        assert_eq!(cli.timeout, Some(Duration::from_secs(2)));
        // A bare word after --stats is not taken as its value: it stays a (stray) positional.
        let err = parse(&["--stats", "json"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument, "{err}");
        assert!(err.to_string().contains("'json'"), "{err}");
        let err = parse(&["--stats=yaml"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{err}");
        assert!(parse(&["--stats="]).is_err());
    }

    #[test]
    fn record_exits_takes_a_file_and_an_optional_limit() {
        let cli = Cli::try_parse_from(["reference-vmm", "--record-exits", "x.vmrec"]).unwrap();
        assert_eq!(cli.record_exits, Some(PathBuf::from("x.vmrec")));
        assert_eq!(cli.record_limit, None);
        let cli = Cli::try_parse_from([
            "reference-vmm",
            "--record-exits",
            "x",
            "--record-limit",
            "4M",
        ])
        .unwrap();
        assert_eq!(cli.record_limit, Some(4 << 20));
        assert!(Cli::try_parse_from(["reference-vmm", "--record-limit", "4M"]).is_err());
        assert!(Cli::try_parse_from(["reference-vmm", "--record-exits"]).is_err());
    }

    #[test]
    fn builtin_guests_and_testdev() {
        let cli =
            Cli::try_parse_from(["reference-vmm", "--builtin", "exits", "--testdev"]).unwrap();
        assert_eq!(cli.builtin, Some(BuiltinGuest::Exits));
        assert!(cli.testdev);
        assert!(Cli::try_parse_from(["reference-vmm", "--builtin", "nope"]).is_err());
        assert!(
            Cli::try_parse_from(["reference-vmm", "--builtin", "hello", "--kernel", "k"]).is_err()
        );
    }
}
