//! Process-level measurements of the reference VMM binary: start-up latency and memory overhead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::BenchError;

/// The longest a measured VMM process may live before it is killed.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// CLOCK_MONOTONIC now, as the time since the clock's origin (what `Instant` reads on Linux).
pub fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux, and
    // on the impossible failure `now` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

/// The boot timeline the reference VMM prints with `--stats=json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// When `main` started, on CLOCK_MONOTONIC.
    pub process_start: Duration,
    /// From `main` to the first guest exit the VMM handled.
    pub first_exit: Duration,
}

/// The version of the `--stats=json` document this module reads.
const STATS_VERSION: u32 = 1;

/// The fields of the reference VMM's `--stats=json` document that the start-up benchmark reads
/// (the others are ignored).
#[derive(Debug, Deserialize)]
struct StatsDocument {
    version: u32,
    timeline: StatsTimeline,
}

#[derive(Debug, Deserialize)]
struct StatsTimeline {
    first_guest_exit_ms: Option<f64>,
    process_start_monotonic_ns: Option<u64>,
}

/// Reads the timeline from the VMM's stderr with `--stats=json`: the last line that is a JSON
/// document of the known version (log lines, and the line saying how the VM ended, may come
/// before and after it). `None` without one, or when it lacks the first exit or the start.
pub fn parse_timeline(stderr: &str) -> Option<Timeline> {
    let document = stderr
        .lines()
        .rev()
        .filter(|line| line.starts_with('{'))
        .find_map(|line| serde_json::from_str::<StatsDocument>(line).ok())
        .filter(|document| document.version == STATS_VERSION)?;
    let timeline = document.timeline;
    Some(Timeline {
        process_start: Duration::from_nanos(timeline.process_start_monotonic_ns?),
        first_exit: Duration::try_from_secs_f64(timeline.first_guest_exit_ms? / 1e3).ok()?,
    })
}

/// A value in KiB from a `/proc` line such as `VmRSS:    1234 kB`.
fn kib(line: &str, key: &str) -> Option<u64> {
    line.strip_prefix(key)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// `key` (e.g. `VmRSS:`) from `/proc/<pid>/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| kib(line, key))
}

/// The resident KiB (`Rss:`) of the anonymous mapping of exactly `size_kib` in
/// `/proc/<pid>/smaps`: the guest RAM mapping, when the guest has one region of that size.
pub fn mapping_rss_kib(smaps: &str, size_kib: u64) -> Option<u64> {
    let (mut anonymous, mut size_matches) = (false, false);
    for line in smaps.lines() {
        if is_mapping_header(line) {
            // Anonymous: no path after the inode (field 6).
            anonymous = line.split_whitespace().nth(5).is_none();
            size_matches = false;
        } else if let Some(size) = kib(line, "Size:") {
            size_matches = anonymous && size == size_kib;
        } else if let Some(rss) = kib(line, "Rss:").filter(|_| size_matches) {
            return Some(rss);
        }
    }
    None
}

/// Whether an smaps line starts a mapping: `start-end perms offset dev inode [path]`.
fn is_mapping_header(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .and_then(|range| range.split_once('-'))
        .is_some_and(|(start, end)| {
            u64::from_str_radix(start, 16).is_ok() && u64::from_str_radix(end, 16).is_ok()
        })
}

/// The reference VMM binary.
#[derive(Clone, Debug)]
pub struct Vmm {
    path: PathBuf,
}

/// One start of the VMM on a guest whose first instruction exits.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// From right before `spawn` to the VMM's `main` (fork, exec, dynamic loading).
    pub to_main: Duration,
    /// From `main` to the first exit (VMM and VM set-up, first entry).
    pub main_to_first_exit: Duration,
    /// From right before `spawn` to the first exit.
    pub to_first_exit: Duration,
}

/// The memory of an idle VMM process.
#[derive(Clone, Copy, Debug)]
pub struct MemoryUse {
    /// `VmRSS`: every resident page of the process.
    pub vm_rss_kib: u64,
    /// Resident pages of the guest RAM mapping.
    pub guest_rss_kib: u64,
    /// `RssFile`: resident pages of files (the binary, libc).
    pub file_rss_kib: u64,
}

impl MemoryUse {
    /// What the VMM costs beyond the guest's own pages.
    pub fn overhead_kib(&self) -> u64 {
        self.vm_rss_kib.saturating_sub(self.guest_rss_kib)
    }
}

/// Waits for `child` to exit, killing it after [`CHILD_LIMIT`]; returns its stderr.
fn finish(mut child: Child) -> Result<String, BenchError> {
    let mut stderr = child.stderr.take();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        if let Some(pipe) = stderr.as_mut() {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    });
    let start = Instant::now();
    while child.try_wait().map_err(BenchError::Wait)?.is_none() {
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::Output(format!(
                "the VMM did not exit within {CHILD_LIMIT:?}"
            )));
        }
        thread::sleep(Duration::from_micros(200));
    }
    Ok(reader.join().unwrap_or_default())
}

impl Vmm {
    /// The binary at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn command(&self, kernel: &Path) -> Command {
        let mut command = Command::new(&self.path);
        command
            .arg("--kernel")
            .arg(kernel)
            .args(["--serial", "off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn spawn(&self, command: &mut Command) -> Result<Child, BenchError> {
        command.spawn().map_err(|source| BenchError::Spawn {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Starts the VMM with `--stats=json` on `kernel` (whose first instruction should exit and end
    /// the VM) and times spawn → `main` → first exit on CLOCK_MONOTONIC.
    pub fn startup(&self, kernel: &Path, memory: &str) -> Result<Startup, BenchError> {
        let mut command = self.command(kernel);
        command.args(["--stats=json", "--memory", memory]);
        let before = monotonic_now();
        let child = self.spawn(&mut command)?;
        let stderr = finish(child)?;
        let timeline = parse_timeline(&stderr)
            .ok_or_else(|| BenchError::Output(format!("no boot timeline in {stderr:?}")))?;
        let to_main = timeline.process_start.saturating_sub(before);
        Ok(Startup {
            to_main,
            main_to_first_exit: timeline.first_exit,
            to_first_exit: to_main + timeline.first_exit,
        })
    }

    /// Starts the VMM with `memory_mib` MiB of guest RAM on `kernel` (which should idle without
    /// exits), waits `settle`, and reads the process's resident memory from `/proc`.
    pub fn memory_use(
        &self,
        kernel: &Path,
        memory_mib: u64,
        settle: Duration,
    ) -> Result<MemoryUse, BenchError> {
        let mut command = self.command(kernel);
        command.args([
            "--memory",
            &format!("size={memory_mib}M"),
            "--timeout",
            "30",
        ]);
        let mut child = self.spawn(&mut command)?;
        thread::sleep(settle);
        let proc = PathBuf::from(format!("/proc/{}", child.id()));
        let read = |name: &str| {
            std::fs::read_to_string(proc.join(name)).map_err(|source| BenchError::Proc {
                path: proc.join(name).display().to_string(),
                source,
            })
        };
        let measured = read("status").and_then(|status| Ok((status, read("smaps")?)));
        let _ = child.kill();
        let stderr = finish(child)?;
        let (status, smaps) = measured?;
        let missing = |what: &str| BenchError::Output(format!("{what} not found; VMM: {stderr}"));
        Ok(MemoryUse {
            vm_rss_kib: status_kib(&status, "VmRSS:").ok_or_else(|| missing("VmRSS"))?,
            file_rss_kib: status_kib(&status, "RssFile:").ok_or_else(|| missing("RssFile"))?,
            guest_rss_kib: mapping_rss_kib(&smaps, memory_mib * 1024)
                .ok_or_else(|| missing("the guest RAM mapping"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `--stats=json` document as the reference VMM prints it (trimmed to a few fields).
    fn document(version: u32, first_exit: &str, start: &str) -> String {
        format!(
            "{{\"version\":{version},\"exits\":{{\"total\":3}},\"timeline\":{{\
             \"first_guest_exit_ms\":{first_exit},\"first_serial_byte_ms\":null,\
             \"guest_exit_ms\":3.5,\"process_start_monotonic_ns\":{start}}}}}"
        )
    }

    #[test]
    fn timeline_is_read_from_stats_json() {
        let stderr = format!(
            "reference-vmm: 1.2ms: <main> WARN:reference_vmm: a log line\n{}\n\
             reference-vmm: timeout after 2s; VM stopped\n",
            document(1, "2.021", "3180943336200")
        );
        let timeline = parse_timeline(&stderr).unwrap();
        assert_eq!(timeline.first_exit, Duration::from_micros(2021));
        assert_eq!(timeline.process_start, Duration::new(3180, 943_336_200));
        // The last document wins.
        let two = format!(
            "{}\n{}\n",
            document(1, "9", "1"),
            document(1, "1.5", "2000000000")
        );
        let timeline = parse_timeline(&two).unwrap();
        assert_eq!(timeline.first_exit, Duration::from_micros(1500));
        assert_eq!(timeline.process_start, Duration::from_secs(2));
    }

    #[test]
    fn a_timeline_that_is_missing_or_unknown_is_none() {
        assert_eq!(parse_timeline(""), None);
        // The text table is not read any more.
        assert_eq!(
            parse_timeline(
                "boot timeline (since process start):\n  first guest exit       2.021 ms\n  \
                 process start at CLOCK_MONOTONIC 3180.943336200 s\n"
            ),
            None
        );
        // No exit yet, no clock, another version, a cut document, strings for numbers.
        assert_eq!(parse_timeline(&document(1, "null", "5")), None);
        assert_eq!(parse_timeline(&document(1, "2.0", "null")), None);
        assert_eq!(parse_timeline(&document(2, "2.0", "5")), None);
        let whole = document(1, "2.0", "5");
        assert_eq!(parse_timeline(&whole[..whole.len() - 1]), None);
        assert_eq!(parse_timeline(&document(1, "\"2.0\"", "5")), None);
        assert_eq!(parse_timeline(&document(1, "-1", "5")), None);
        assert!(parse_timeline(&whole).is_some());
    }

    #[test]
    fn status_and_smaps_are_parsed() {
        let status = "Name:\treference-vmm\nVmRSS:\t    3072 kB\nRssFile:\t    1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(3072));
        assert_eq!(status_kib(status, "RssFile:"), Some(1024));
        assert_eq!(status_kib(status, "RssShmem:"), None);
        let smaps = "\
5600-5700 r-xp 00000000 08:01 123 /usr/bin/reference-vmm
Size:                131072 kB
Rss:                    400 kB
7f00-7f10 rw-p 00000000 00:00 0
Size:                  4096 kB
Rss:                    100 kB
7f10-7f20 rw-p 00000000 00:00 0 
Size:                131072 kB
KernelPageSize:           4 kB
Rss:                    144 kB
Pss:                    144 kB
7f20-7f30 rw-p 00000000 00:00 0 [heap]
Size:                131072 kB
Rss:                      8 kB
";
        assert_eq!(mapping_rss_kib(smaps, 131_072), Some(144));
        assert_eq!(mapping_rss_kib(smaps, 4096), Some(100));
        assert_eq!(mapping_rss_kib(smaps, 1), None);
        let usage = MemoryUse {
            vm_rss_kib: 3000,
            guest_rss_kib: 144,
            file_rss_kib: 1000,
        };
        assert_eq!(usage.overhead_kib(), 2856);
    }

    #[test]
    fn monotonic_clock_matches_instant() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a && a > Duration::ZERO);
    }

    #[test]
    fn a_missing_binary_is_named() {
        let vmm = Vmm::new("/nonexistent/reference-vmm");
        assert_eq!(vmm.path(), Path::new("/nonexistent/reference-vmm"));
        let err = vmm.startup(Path::new("k.elf"), "size=128M").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/reference-vmm"),
            "{err}"
        );
        let err = vmm
            .memory_use(Path::new("k.elf"), 128, Duration::ZERO)
            .unwrap_err();
        assert!(matches!(err, BenchError::Spawn { .. }), "{err}");
    }
}
