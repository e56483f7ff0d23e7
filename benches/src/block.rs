//! Block reads as a guest sees them: the `blk` guest's 4 KiB reads through the reference VMM's
//! virtio-blk device and through QEMU's `virtio-blk-pci`, on the same image, against the host
//! reading the same blocks of the same file with `pread` (the limit).
//!
//! The guest times its reads with the TSC (`blk.bench=seq,N` / `blk.bench=rand,N` prints
//! `cycles=`), so neither VMM's start-up is counted; the host's TSC rate, calibrated against
//! CLOCK_MONOTONIC, turns cycles into time (under KVM the guest's TSC runs at the host's rate).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::BenchError;
use crate::process::Vmm;
use crate::summary::{Row, Unit};

/// The reference VMM may take at most this long per read compared with QEMU (a ratio of times:
/// ≤ 1 means at least as fast).
pub const READ_RATIO_TARGET: f64 = 1.0;
/// The image size.
pub const IMAGE_BYTES: u64 = 64 << 20;
/// Bytes per read.
pub const BLOCK: u64 = 4096;
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// The longest one guest run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Guest RAM of both VMMs.
const MEMORY_MIB: u32 = 128;
/// The seed of the guest's xorshift generator of random blocks.
const RANDOM_SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// Which blocks the reads visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Blocks 0, 1, 2, ... (wrapping at the end of the image).
    Sequential,
    /// The guest's xorshift sequence, modulo the number of blocks.
    Random,
}

impl Pattern {
    /// The name the guest's command line and report use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sequential => "seq",
            Self::Random => "rand",
        }
    }

    /// The blocks `n` reads visit on a disk of `blocks` blocks, as the guest computes them.
    pub fn blocks(self, blocks: u64, n: u64) -> impl Iterator<Item = u64> {
        let mut state = RANDOM_SEED;
        (0..n).map(move |i| match self {
            Self::Sequential => i % blocks.max(1),
            Self::Random => {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % blocks.max(1)
            }
        })
    }
}

/// The `blk` guest's disk pattern: 64-bit word `k` holds this.
pub fn pattern(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// A disk image holding the guest's pattern, in the temporary directory; removed when dropped.
#[derive(Debug)]
pub struct PatternImage {
    path: PathBuf,
    bytes: u64,
}

impl PatternImage {
    /// Writes an image of `bytes` bytes (a multiple of 8) named after `name`.
    pub fn new(name: &str, bytes: u64) -> Result<Self, BenchError> {
        let path =
            std::env::temp_dir().join(format!("vmkit-bench-{}-{name}.img", std::process::id()));
        let data: Vec<u8> = (0..bytes / 8)
            .flat_map(|k| pattern(k).to_le_bytes())
            .collect();
        std::fs::write(&path, data).map_err(|source| BenchError::WriteImage {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { path, bytes })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whole blocks in the image.
    pub fn blocks(&self) -> u64 {
        self.bytes / BLOCK
    }
}

impl Drop for PatternImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The host reading the blocks `pattern` visits with `pread`, checking each block's first word
/// as the guest does; the time per read.
pub fn host_reads(image: &PatternImage, pattern: Pattern, n: u64) -> Result<Duration, BenchError> {
    let read_error = |source| BenchError::Proc {
        path: image.path().display().to_string(),
        source,
    };
    let file = File::open(image.path()).map_err(read_error)?;
    let mut buffer = vec![0u8; BLOCK as usize];
    let start = Instant::now();
    for block in pattern.blocks(image.blocks(), n) {
        file.read_exact_at(&mut buffer, block * BLOCK)
            .map_err(read_error)?;
        let mut first = [0u8; 8];
        first.copy_from_slice(&buffer[..8]);
        if u64::from_le_bytes(first) != self::pattern(block * BLOCK / 8) {
            return Err(BenchError::Guest(format!(
                "block {block} of the image does not hold the pattern"
            )));
        }
    }
    Ok(start.elapsed() / u32::try_from(n.max(1)).unwrap_or(u32::MAX))
}

/// Host TSC ticks per second, measured against CLOCK_MONOTONIC over `interval`.
pub fn tsc_hz(interval: Duration) -> f64 {
    // SAFETY: `rdtsc` reads the time-stamp counter and has no other effect.
    let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
    let (start, ticks) = (Instant::now(), tsc());
    thread::sleep(interval);
    let (elapsed, ticks) = (start.elapsed(), tsc().wrapping_sub(ticks));
    ticks as f64 / elapsed.as_secs_f64()
}

/// The `cycles=` of the guest's `bench=<pattern> n=<n>` line, if the run ended with `ok`.
pub fn parse_cycles(stdout: &str, pattern: Pattern, n: u64) -> Option<u64> {
    let prefix = format!(
        "vmkit blk: bench={} n={n} block={BLOCK} cycles=",
        pattern.name()
    );
    let mut lines = stdout.lines();
    let cycles = lines.next()?.strip_prefix(prefix.as_str())?.parse().ok()?;
    (lines.next()? == "vmkit blk: ok").then_some(cycles)
}

/// The `blk` guest the reference VMM's build placed next to it: `VMKIT_BLK_GUEST` if set, else
/// the newest `build/reference-vmm-*/out/blk.elf` in the VMM's directory.
pub fn find_guest(vmm: &Path) -> Result<PathBuf, BenchError> {
    if let Some(path) = std::env::var_os("VMKIT_BLK_GUEST") {
        return Ok(PathBuf::from(path));
    }
    let missing = || {
        BenchError::Output(format!(
            "no blk.elf under build/reference-vmm-*/out/ next to {}; build reference-vmm or \
             name the guest in VMKIT_BLK_GUEST",
            vmm.display()
        ))
    };
    let build = vmm.parent().ok_or_else(missing)?.join("build");
    let entries = std::fs::read_dir(&build).map_err(|_| missing())?;
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("reference-vmm-")
        })
        .map(|e| e.path().join("out/blk.elf"))
        .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
        .max()
        .map(|(_, path)| path)
        .ok_or_else(missing)
}

/// Runs `command` with stdout captured, killed after 120 s; its exit code and stdout.
pub fn run_captured(command: &mut Command) -> Result<(Option<i32>, String), BenchError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| BenchError::Spawn {
            path: program.clone(),
            source,
        })?;
    let mut stdout = child.stdout.take();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = stdout.as_mut() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(BenchError::Wait)? {
            break status;
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Output(format!(
                "{program} did not exit within {RUN_LIMIT:?}"
            )));
        }
        thread::sleep(Duration::from_millis(1));
    };
    Ok((status.code(), reader.join().unwrap_or_default()))
}

/// The two VMMs, set up to run the guest on the image.
struct Runner<'a> {
    vmm: &'a Vmm,
    qemu: &'a Path,
    guest: PathBuf,
    image: &'a PatternImage,
    tsc_hz: f64,
}

impl Runner<'_> {
    fn cmdline(pattern: Pattern, n: u64) -> String {
        format!("blk.bench={},{n}", pattern.name())
    }

    fn reference_vmm(&self, pattern: Pattern, n: u64) -> Result<Duration, BenchError> {
        let mut command = Command::new(self.vmm.path());
        command
            .arg("--kernel")
            .arg(&self.guest)
            .args(["--cmdline", &Self::cmdline(pattern, n)])
            .args(["--memory", &format!("size={MEMORY_MIB}M")])
            .arg("--disk")
            .arg(format!("path={},readonly=on", self.image.path().display()));
        self.per_read("the reference VMM", command, pattern, n, 0)
    }

    fn qemu(&self, pattern: Pattern, n: u64) -> Result<Duration, BenchError> {
        let mut command = Command::new(self.qemu);
        command
            .args([
                "-machine",
                "q35,accel=kvm",
                "-cpu",
                "host,-arch-capabilities",
            ])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-m", &format!("{MEMORY_MIB}M")])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-kernel")
            .arg(&self.guest)
            .args(["-append", &Self::cmdline(pattern, n)])
            .arg("-drive")
            .arg(format!(
                "if=none,id=d,file={},format=raw,readonly=on",
                self.image.path().display()
            ))
            .args(["-device", "virtio-blk-pci,drive=d,disable-legacy=on"]);
        // isa-debug-exit: QEMU exits with (status << 1) | 1, so guest status 0 is 1.
        self.per_read("QEMU", command, pattern, n, 1)
    }

    fn per_read(
        &self,
        who: &str,
        mut command: Command,
        pattern: Pattern,
        n: u64,
        success: i32,
    ) -> Result<Duration, BenchError> {
        let (status, stdout) = run_captured(&mut command)?;
        let cycles = parse_cycles(&stdout, pattern, n)
            .filter(|_| status == Some(success))
            .ok_or_else(|| {
                BenchError::Guest(format!(
                    "under {who}, the guest ended with {status:?} and printed {stdout:?}"
                ))
            })?;
        Ok(Duration::from_secs_f64(
            cycles as f64 / self.tsc_hz / n.max(1) as f64,
        ))
    }
}

/// 4 KiB reads of each pattern: `runs` interleaved runs of `n` reads under the reference VMM and
/// under QEMU (the binary `qemu`, normally [`QEMU`]) after one warm-up run of each, their
/// medians per read, the median of the per-pair ratios reference VMM / QEMU, and the host's
/// `pread` of the same blocks.
pub fn block_reads(vmm: &Vmm, qemu: &Path, n: u64, runs: usize) -> Result<Vec<Row>, BenchError> {
    block_reads_on(vmm, qemu, n, runs, IMAGE_BYTES)
}

fn block_reads_on(
    vmm: &Vmm,
    qemu: &Path,
    n: u64,
    runs: usize,
    image_bytes: u64,
) -> Result<Vec<Row>, BenchError> {
    let image = PatternImage::new("blk", image_bytes)?;
    let runner = Runner {
        vmm,
        qemu,
        guest: find_guest(vmm.path())?,
        image: &image,
        tsc_hz: tsc_hz(Duration::from_millis(200)),
    };
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let mut rows = Vec::new();
    for pattern in [Pattern::Sequential, Pattern::Random] {
        runner.reference_vmm(pattern, n)?;
        runner.qemu(pattern, n)?;
        let (mut ours, mut theirs, mut ratios, mut host) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let (a, b) = if run % 2 == 0 {
                let a = runner.reference_vmm(pattern, n)?;
                (a, runner.qemu(pattern, n)?)
            } else {
                let b = runner.qemu(pattern, n)?;
                (runner.reference_vmm(pattern, n)?, b)
            };
            ours.push(micros(a));
            theirs.push(micros(b));
            ratios.push(a.as_secs_f64() / b.as_secs_f64());
            host.push(micros(host_reads(&image, pattern, n)?));
        }
        let name = pattern.name();
        let count = format!("{runs} runs × {n} reads");
        let specs = [
            (
                format!("4 KiB {name} read: reference VMM guest"),
                ours,
                Unit::Micros,
                None,
            ),
            (
                format!("4 KiB {name} read: QEMU guest"),
                theirs,
                Unit::Micros,
                None,
            ),
            (
                format!("4 KiB {name} read: reference VMM / QEMU"),
                ratios,
                Unit::Ratio,
                Some(READ_RATIO_TARGET),
            ),
            (
                format!("4 KiB {name} read: host pread (limit)"),
                host,
                Unit::Micros,
                None,
            ),
        ];
        for (row, samples, unit, target) in specs {
            rows.push(
                Row::of_samples(&row, &count, &samples, unit, target)
                    .ok_or_else(|| BenchError::Guest(format!("{row}: no runs")))?,
            );
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_visit_blocks_as_the_guest_does() {
        let seq: Vec<u64> = Pattern::Sequential.blocks(3, 5).collect();
        assert_eq!(seq, [0, 1, 2, 0, 1]);
        let random: Vec<u64> = Pattern::Random.blocks(16384, 1000).collect();
        assert!(random.iter().all(|&b| b < 16384));
        let distinct: std::collections::BTreeSet<_> = random.iter().collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
        assert_eq!(Pattern::Random.blocks(0, 3).count(), 3);
        assert_eq!(
            (Pattern::Sequential.name(), Pattern::Random.name()),
            ("seq", "rand")
        );
    }

    #[test]
    fn images_hold_the_pattern_and_the_host_reads_them() {
        let image = PatternImage::new("unit", 64 << 10).unwrap();
        assert_eq!(image.blocks(), 16);
        let bytes = std::fs::read(image.path()).unwrap();
        assert_eq!(bytes.len(), 64 << 10);
        assert_eq!(bytes[8..16], pattern(1).to_le_bytes());
        for kind in [Pattern::Sequential, Pattern::Random] {
            assert!(host_reads(&image, kind, 100).unwrap() > Duration::ZERO);
        }
        std::fs::write(image.path(), vec![0u8; 64 << 10]).unwrap();
        let err = host_reads(&image, Pattern::Sequential, 1).unwrap_err();
        assert!(err.to_string().contains("block 0"), "{err}");
        let path = image.path().to_path_buf();
        drop(image);
        assert!(!path.exists());
        let gone = PatternImage { path, bytes: 4096 };
        assert!(host_reads(&gone, Pattern::Sequential, 1).is_err());
    }

    #[test]
    fn guest_reports_are_parsed() {
        let report = "vmkit blk: bench=seq n=10 block=4096 cycles=12345\nvmkit blk: ok\n";
        assert_eq!(parse_cycles(report, Pattern::Sequential, 10), Some(12345));
        assert_eq!(parse_cycles(report, Pattern::Random, 10), None);
        assert_eq!(parse_cycles(report, Pattern::Sequential, 11), None);
        let failed = "vmkit blk: bench=seq n=10 block=4096 cycles=12345\n";
        assert_eq!(parse_cycles(failed, Pattern::Sequential, 10), None);
        assert_eq!(parse_cycles("", Pattern::Sequential, 10), None);
    }

    #[test]
    fn tsc_rate_is_plausible() {
        let hz = tsc_hz(Duration::from_millis(20));
        assert!((1e8..1e11).contains(&hz), "{hz}");
    }

    #[test]
    fn guest_is_found_next_to_the_vmm() {
        let dir = std::env::temp_dir().join(format!("vmkit-bench-blk-{}", std::process::id()));
        let vmm = dir.join("release/reference-vmm");
        assert!(find_guest(&vmm).is_err());
        let out = dir.join("release/build/reference-vmm-0123/out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(dir.join("release/build/other-0123/out")).unwrap();
        std::fs::write(out.join("blk.elf"), b"\x7fELF").unwrap();
        assert_eq!(find_guest(&vmm).unwrap(), out.join("blk.elf"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(find_guest(Path::new("/")).is_err());
    }

    #[test]
    fn per_read_time_comes_from_the_guest_report() {
        let image = PatternImage::new("runner", 4096).unwrap();
        let vmm = Vmm::new("/nonexistent/reference-vmm");
        let runner = Runner {
            vmm: &vmm,
            qemu: Path::new("/nonexistent/qemu"),
            guest: PathBuf::from("/nonexistent/blk.elf"),
            image: &image,
            tsc_hz: 1e9,
        };
        let report = |status: i32| {
            let mut command = Command::new("sh");
            command.args([
                "-c",
                &format!(
                    "printf 'vmkit blk: bench=rand n=4 block=4096 cycles=8000\\nvmkit blk: ok\\n'; \
                     exit {status}"
                ),
            ]);
            command
        };
        let per_read = runner.per_read("sh", report(1), Pattern::Random, 4, 1);
        assert_eq!(per_read.unwrap(), Duration::from_micros(2));
        let err = runner
            .per_read("sh", report(0), Pattern::Random, 4, 1)
            .unwrap_err();
        assert!(err.to_string().contains("under sh"), "{err}");
        assert!(runner.reference_vmm(Pattern::Sequential, 1).is_err());
        assert!(runner.qemu(Pattern::Sequential, 1).is_err());
        assert_eq!(Runner::cmdline(Pattern::Random, 7), "blk.bench=rand,7");
    }

    /// A stand-in for a VMM: prints the report the guest would for the pattern its arguments
    /// name, and exits with `status`.
    fn fake_vmm(dir: &Path, name: &str, status: i32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        let script = format!(
            "#!/bin/sh\nfor a; do case $a in *blk.bench=seq,*) p=seq;; *blk.bench=rand,*) p=rand;; \
             esac; done\nprintf 'vmkit blk: bench=%s n=8 block=4096 cycles=80000\\nvmkit blk: ok\\n' \
             $p\nexit {status}\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn block_reads_make_four_rows_per_pattern() {
        let dir = std::env::temp_dir().join(format!("vmkit-bench-fake-{}", std::process::id()));
        let out = dir.join("build/reference-vmm-fake/out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("blk.elf"), b"\x7fELF").unwrap();
        let vmm = Vmm::new(fake_vmm(&dir, "reference-vmm", 0));
        let qemu = fake_vmm(&dir, "qemu", 1);
        let rows = block_reads_on(&vmm, &qemu, 8, 2, 64 << 10).unwrap();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert_eq!(names[2], "4 KiB seq read: reference VMM / QEMU");
        assert_eq!(names[7], "4 KiB rand read: host pread (limit)");
        assert_eq!(rows[2].median, 1.0);
        assert_eq!(rows[2].target, Some(READ_RATIO_TARGET));
        assert_eq!(rows[0].median, rows[1].median);
        assert!(rows.iter().all(|r| r.n == "2 runs × 8 reads"));
        // QEMU ending with guest status 0 means exit code 1; anything else is an error.
        let broken = fake_vmm(&dir, "broken-qemu", 0);
        assert!(block_reads_on(&vmm, &broken, 8, 1, 64 << 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn captured_runs_report_status_and_output() {
        let (status, stdout) =
            run_captured(Command::new("sh").args(["-c", "echo hi; exit 3"])).unwrap();
        assert_eq!((status, stdout.as_str()), (Some(3), "hi\n"));
        let err = run_captured(&mut Command::new("/nonexistent/vmkit-program")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/vmkit-program"),
            "{err}"
        );
    }
}
