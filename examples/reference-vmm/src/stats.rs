//! `--stats`: what the VMM reports on stderr when the VM has ended, taken once as a [`Report`]
//! and printed as a table (`--stats`, `--stats=text`) or as one JSON document on one line
//! (`--stats=json`, version [`JSON_VERSION`], its fields documented in the README).

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};
use vmkit_exits::{AccessCounts, Assisted, ExitKind, ExitStats, RangeStats};

use crate::disks::{DiskCounters, DiskStats};
use crate::logger::LogStats;
use crate::serial_output::OutputStats;

/// The `version` of the JSON document: raised when a field changes meaning or goes away (new
/// fields may appear without it).
pub const JSON_VERSION: u32 = 1;

/// Everything `--stats` reports.
#[derive(Clone, Debug)]
pub struct Report {
    /// The dispatcher's counters, with the emulation assist's.
    pub exits: ExitStats,
    /// Each disk's counters.
    pub disks: Vec<DiskStats>,
    /// What became of COM1's output (`None` without a serial output thread: `--serial null`
    /// or `off`).
    pub com1: Option<OutputStats>,
    /// Log lines lost.
    pub log: LogStats,
    /// The boot timeline.
    pub timeline: Timeline,
}

/// When things happened, since the process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// The first exit a vCPU handed to the VMM, if any.
    pub first_guest_exit: Option<Duration>,
    /// The guest's first byte on COM1, if any.
    pub first_serial_byte: Option<Duration>,
    /// When the VMM saw the VM end.
    pub guest_exit: Duration,
    /// The process start on CLOCK_MONOTONIC (the time since that clock's origin), for a
    /// harness that timed the spawn; `None` if the clock could not be read.
    pub process_start_monotonic: Option<Duration>,
}

impl Timeline {
    /// The timeline of a process that started at `process_start`.
    pub fn new(
        process_start: Instant,
        first_guest_exit: Option<Instant>,
        first_serial_byte: Option<Instant>,
        guest_exit: Instant,
    ) -> Self {
        let since = |t: Instant| t.saturating_duration_since(process_start);
        Self {
            first_guest_exit: first_guest_exit.map(since),
            first_serial_byte: first_serial_byte.map(since),
            guest_exit: since(guest_exit),
            process_start_monotonic: monotonic_time_of(process_start),
        }
    }
}

/// `instant` on the CLOCK_MONOTONIC clock (which `Instant` reads on Linux), as the time since
/// that clock's origin.
fn monotonic_time_of(instant: Instant) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call writes nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    let since = Instant::now().saturating_duration_since(instant);
    let now = Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    );
    now.checked_sub(since)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Report {
    /// The table: the exit statistics, one line per disk, COM1's output, the log lines lost and
    /// the boot timeline.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(out, "{}", self.exits)?;
        for disk in &self.disks {
            match &disk.counters {
                None => writeln!(
                    out,
                    "  {}: busy (held by a thread that did not stop)",
                    disk.name
                )?,
                Some(DiskCounters { block, transport }) => writeln!(
                    out,
                    "  {}: {} requests ({} reads, {} writes, {} flushes, {} errors), \
                     {} bytes read, {} written; {} notifications, {} MSI, {} INTx",
                    disk.name,
                    block.requests,
                    block.reads,
                    block.writes,
                    block.flushes,
                    block.errors,
                    block.bytes_read,
                    block.bytes_written,
                    transport.notifications,
                    transport.msi_sent,
                    transport.intx_asserted
                )?,
            }
        }
        if let Some(o) = &self.com1 {
            writeln!(
                out,
                "  com1 output: {} bytes written, {} dropped ({} while the host did not read, {} \
                 over the limit, {} refused by the host), {} not written by the end",
                o.written,
                o.dropped(),
                o.dropped_full,
                o.dropped_limit,
                o.failed,
                o.pending
            )?;
        }
        writeln!(
            out,
            "  log: {} lines suppressed by the rate limiter, {} not taken by the log output",
            self.log.suppressed, self.log.unwritten
        )?;
        writeln!(out, "boot timeline (since process start):")?;
        let t = &self.timeline;
        for (what, at) in [
            ("first guest exit", t.first_guest_exit),
            ("first serial byte", t.first_serial_byte),
            ("guest exit", Some(t.guest_exit)),
        ] {
            let when = at.map_or_else(
                || "        -   ".to_string(),
                |d| format!("{:>9.3} ms", millis(d)),
            );
            writeln!(out, "  {what:<18} {when}")?;
        }
        // For a harness that timed the spawn: where "since process start" begins on its clock.
        if let Some(start) = t.process_start_monotonic {
            let (secs, nanos) = (start.as_secs(), start.subsec_nanos());
            writeln!(
                out,
                "  process start at CLOCK_MONOTONIC {secs}.{nanos:09} s"
            )?;
        }
        Ok(())
    }

    /// The JSON document, on one line with a newline at its end.
    pub fn to_json_line(&self) -> serde_json::Result<String> {
        let mut line = serde_json::to_string(&self.json())?;
        line.push('\n');
        Ok(line)
    }

    fn json(&self) -> Json<'_> {
        let s = &self.exits;
        let assist = &s.assist;
        Json {
            version: JSON_VERSION,
            exits: Exits {
                total: s.total_exits(),
                by_kind: Named(
                    ExitKind::ALL
                        .iter()
                        .map(|k| (k.name(), s.exits(*k)))
                        .collect(),
                ),
            },
            pio_ranges: s.pio_ranges.iter().map(Range::from).collect(),
            mmio_ranges: s.mmio_ranges.iter().map(Range::from).collect(),
            unclaimed: s.unclaimed.into(),
            bad_size: s.bad_size.into(),
            access_warnings: AccessWarnings {
                logged: s.log_lines,
                suppressed: s.log_suppressed,
            },
            assist: Assist {
                completed: Named(
                    Assisted::ALL
                        .iter()
                        .map(|k| (k.name(), assist.completed(*k)))
                        .collect(),
                ),
                faulted: assist.faulted,
                reflected: assist.reflected,
                stopped: assist.stopped,
            },
            disks: self.disks.iter().map(Disk::from).collect(),
            com1: self.com1.map(|o| Com1 {
                written: o.written,
                dropped: o.dropped(),
                dropped_full: o.dropped_full,
                dropped_limit: o.dropped_limit,
                failed: o.failed,
                pending: o.pending,
            }),
            log: Log {
                suppressed: self.log.suppressed,
                unwritten: self.log.unwritten,
            },
            timeline: JsonTimeline {
                first_guest_exit_ms: self.timeline.first_guest_exit.map(millis),
                first_serial_byte_ms: self.timeline.first_serial_byte.map(millis),
                guest_exit_ms: millis(self.timeline.guest_exit),
                process_start_monotonic_ns: self
                    .timeline
                    .process_start_monotonic
                    .and_then(|d| u64::try_from(d.as_nanos()).ok()),
            },
        }
    }
}

// The JSON document's shape. Field names are part of the interface (README, `--stats=json`).

#[derive(Serialize)]
struct Json<'a> {
    version: u32,
    exits: Exits,
    pio_ranges: Vec<Range<'a>>,
    mmio_ranges: Vec<Range<'a>>,
    unclaimed: Accesses,
    bad_size: Accesses,
    access_warnings: AccessWarnings,
    assist: Assist,
    disks: Vec<Disk<'a>>,
    com1: Option<Com1>,
    log: Log,
    timeline: JsonTimeline,
}

/// Counts by name, as a JSON object in the order given (every name, zeros included).
struct Named(Vec<(&'static str, u64)>);

impl Serialize for Named {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

#[derive(Serialize)]
struct Exits {
    total: u64,
    by_kind: Named,
}

#[derive(Serialize)]
struct Range<'a> {
    base: u64,
    last: u64,
    name: Option<&'a str>,
    hits: u64,
}

impl<'a> From<&'a RangeStats> for Range<'a> {
    fn from(r: &'a RangeStats) -> Self {
        Self {
            base: r.base,
            last: r.last,
            name: r.name.as_deref(),
            hits: r.hits,
        }
    }
}

#[derive(Serialize)]
struct Accesses {
    pio_read: u64,
    pio_write: u64,
    mmio_read: u64,
    mmio_write: u64,
}

impl From<AccessCounts> for Accesses {
    fn from(c: AccessCounts) -> Self {
        Self {
            pio_read: c.pio_read,
            pio_write: c.pio_write,
            mmio_read: c.mmio_read,
            mmio_write: c.mmio_write,
        }
    }
}

#[derive(Serialize)]
struct AccessWarnings {
    logged: u64,
    suppressed: u64,
}

#[derive(Serialize)]
struct Assist {
    completed: Named,
    faulted: u64,
    reflected: u64,
    stopped: u64,
}

#[derive(Serialize)]
struct Disk<'a> {
    name: &'a str,
    busy: bool,
    #[serde(flatten)]
    counters: Option<JsonDiskCounters>,
}

#[derive(Serialize)]
struct JsonDiskCounters {
    requests: u64,
    reads: u64,
    writes: u64,
    flushes: u64,
    errors: u64,
    bytes_read: u64,
    bytes_written: u64,
    notifications: u64,
    msi_sent: u64,
    intx_asserted: u64,
}

impl<'a> From<&'a DiskStats> for Disk<'a> {
    fn from(d: &'a DiskStats) -> Self {
        Self {
            name: &d.name,
            busy: d.counters.is_none(),
            counters: d
                .counters
                .map(|DiskCounters { block, transport }| JsonDiskCounters {
                    requests: block.requests,
                    reads: block.reads,
                    writes: block.writes,
                    flushes: block.flushes,
                    errors: block.errors,
                    bytes_read: block.bytes_read,
                    bytes_written: block.bytes_written,
                    notifications: transport.notifications,
                    msi_sent: transport.msi_sent,
                    intx_asserted: transport.intx_asserted,
                }),
        }
    }
}

#[derive(Serialize)]
struct Com1 {
    written: u64,
    dropped: u64,
    dropped_full: u64,
    dropped_limit: u64,
    failed: u64,
    pending: u64,
}

#[derive(Serialize)]
struct Log {
    suppressed: u64,
    unwritten: u64,
}

#[derive(Serialize)]
struct JsonTimeline {
    first_guest_exit_ms: Option<f64>,
    first_serial_byte_ms: Option<f64>,
    guest_exit_ms: f64,
    process_start_monotonic_ns: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use serde_json::{Value, json};
    use vmkit_devices::virtio::VirtioPciStats;
    use vmkit_devices::virtio::block::BlockStats;
    use vmkit_exits::{ExitDispatcher, IoBus, MmioBus, VmExit};

    fn sample() -> Report {
        // Per-kind counts come only from dispatching: two `out`s nobody claims and a `hlt`.
        let dispatcher = ExitDispatcher::new(Arc::new(IoBus::new()), Arc::new(MmioBus::new()));
        for exit in [
            VmExit::IoOut {
                port: 0x80,
                data: &[1],
            },
            VmExit::IoOut {
                port: 0x80,
                data: &[2],
            },
            VmExit::Hlt,
        ] {
            dispatcher.dispatch(exit);
        }
        let mut exits = dispatcher.stats();
        exits.pio_ranges = vec![
            RangeStats {
                base: 0x3f8,
                last: 0x3ff,
                hex_digits: 4,
                name: Some(Arc::from("com1")),
                hits: 1234,
            },
            RangeStats {
                base: 0xf4,
                last: 0xf7,
                hex_digits: 4,
                // Escaped in JSON, whatever a name holds.
                name: Some(Arc::from("odd \"name\"\n\\")),
                hits: 1,
            },
        ];
        exits.unclaimed.pio_read = 2;
        exits.log_lines = 1;
        exits.log_suppressed = 5;
        exits.assist.completed[Assisted::Xgetbv as usize] = 7;
        exits.assist.faulted = 1;
        Report {
            exits,
            disks: vec![
                DiskStats {
                    name: "vda".into(),
                    counters: Some(DiskCounters {
                        block: BlockStats {
                            requests: 10,
                            reads: 8,
                            writes: 1,
                            flushes: 1,
                            bytes_read: 4096,
                            bytes_written: 512,
                            ..BlockStats::default()
                        },
                        transport: VirtioPciStats {
                            notifications: 9,
                            msi_sent: 10,
                            ..VirtioPciStats::default()
                        },
                    }),
                },
                DiskStats {
                    name: "vdb".into(),
                    counters: None,
                },
            ],
            com1: Some(OutputStats {
                written: 100,
                dropped_full: 3,
                dropped_limit: 2,
                failed: 1,
                pending: 4,
            }),
            log: LogStats {
                suppressed: 6,
                unwritten: 2,
            },
            timeline: Timeline {
                first_guest_exit: Some(Duration::from_micros(2021)),
                first_serial_byte: None,
                guest_exit: Duration::from_millis(30),
                process_start_monotonic: Some(Duration::new(3180, 943_336_200)),
            },
        }
    }

    #[test]
    fn text_has_every_section() {
        let mut out = Vec::new();
        sample().write_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "  vda: 10 requests (8 reads, 1 writes, 1 flushes, 0 errors), 4096 bytes read, 512 \
             written; 9 notifications, 10 MSI, 0 INTx",
            "  vdb: busy (held by a thread that did not stop)",
            "  com1 output: 100 bytes written, 6 dropped (3 while the host did not read, 2 over \
             the limit, 1 refused by the host), 4 not written by the end",
            "  log: 6 lines suppressed by the rate limiter, 2 not taken by the log output",
            "boot timeline (since process start):",
            "  first guest exit       2.021 ms",
            "  first serial byte          -   ",
            "  guest exit            30.000 ms",
            "  process start at CLOCK_MONOTONIC 3180.943336200 s",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("assist"), "{text}");
        assert!(text.contains("xgetbv"), "{text}");
    }

    #[test]
    fn json_is_one_line_with_numeric_fields() {
        let line = sample().to_json_line().unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["exits"]["total"], 3);
        // Every kind and every mnemonic is there, zeros included, in declaration order.
        let kinds = v["exits"]["by_kind"].as_object().unwrap();
        assert_eq!(kinds.len(), ExitKind::COUNT);
        assert_eq!(kinds["io-out"], 2);
        assert_eq!(kinds["hlt"], 1);
        assert_eq!(kinds["mmio-read"], 0);
        let completed = v["assist"]["completed"].as_object().unwrap();
        assert_eq!(completed.len(), Assisted::COUNT);
        assert_eq!(completed["xgetbv"], 7);
        assert_eq!(completed["int3"], 0);
        assert_eq!(v["assist"]["faulted"], 1);
        assert!(line.find("\"io-in\"").unwrap() < line.find("\"other\"").unwrap());
        assert_eq!(
            v["pio_ranges"][0],
            json!({"base": 0x3f8, "last": 0x3ff, "name": "com1", "hits": 1234})
        );
        assert_eq!(v["pio_ranges"][1]["name"], "odd \"name\"\n\\");
        assert_eq!(v["mmio_ranges"], json!([]));
        assert_eq!(v["unclaimed"]["pio_read"], 2);
        assert_eq!(v["unclaimed"]["pio_write"], 2);
        assert_eq!(v["bad_size"]["mmio_write"], 0);
        assert_eq!(v["access_warnings"], json!({"logged": 1, "suppressed": 5}));
        assert_eq!(
            v["disks"][0],
            json!({
                "name": "vda", "busy": false, "requests": 10, "reads": 8, "writes": 1,
                "flushes": 1, "errors": 0, "bytes_read": 4096, "bytes_written": 512,
                "notifications": 9, "msi_sent": 10, "intx_asserted": 0
            })
        );
        assert_eq!(v["disks"][1], json!({"name": "vdb", "busy": true}));
        assert_eq!(
            v["com1"],
            json!({
                "written": 100, "dropped": 6, "dropped_full": 3, "dropped_limit": 2,
                "failed": 1, "pending": 4
            })
        );
        assert_eq!(v["log"], json!({"suppressed": 6, "unwritten": 2}));
        let t = &v["timeline"];
        assert!((t["first_guest_exit_ms"].as_f64().unwrap() - 2.021).abs() < 1e-9);
        assert_eq!(t["first_serial_byte_ms"], Value::Null);
        assert_eq!(t["guest_exit_ms"].as_f64(), Some(30.0));
        assert_eq!(t["process_start_monotonic_ns"], 3_180_943_336_200u64);
    }

    #[test]
    fn json_without_com1_output_or_clock() {
        let mut report = sample();
        report.com1 = None;
        report.timeline.process_start_monotonic = None;
        report.disks.clear();
        let v: Value = serde_json::from_str(&report.to_json_line().unwrap()).unwrap();
        assert_eq!(v["com1"], Value::Null);
        assert_eq!(v["disks"], json!([]));
        assert_eq!(v["timeline"]["process_start_monotonic_ns"], Value::Null);
    }

    #[test]
    fn the_timeline_counts_from_the_process_start() {
        let start = Instant::now();
        let t = Timeline::new(
            start,
            Some(start + Duration::from_millis(2)),
            None,
            start + Duration::from_millis(5),
        );
        assert_eq!(t.first_guest_exit, Some(Duration::from_millis(2)));
        assert_eq!(t.first_serial_byte, None);
        assert_eq!(t.guest_exit, Duration::from_millis(5));
        // On Linux, Instant is CLOCK_MONOTONIC: the start is in the clock's past.
        let monotonic = t.process_start_monotonic.unwrap();
        assert!(monotonic > Duration::ZERO);
    }
}
