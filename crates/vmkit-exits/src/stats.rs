//! Exit statistics: always-on counters and their snapshot, printable as a table.
//!
//! Counting costs one relaxed atomic add per exit (its kind) plus one per routed access (the
//! counter sits in the bus entry next to the handler, so no second lookup). Counters of a
//! dispatcher are shared by the vCPU threads that use it; give each vCPU its own
//! [`ExitDispatcher`](crate::ExitDispatcher) over the shared buses to keep the per-kind counters
//! off each other's cache lines.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::assist::Assisted;
use crate::exit::ExitKind;

/// The hit count of one registered bus range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeStats {
    /// The range's first address.
    pub base: u64,
    /// The range's last address.
    pub last: u64,
    /// How many hex digits print an address of the range's space.
    pub hex_digits: usize,
    /// The name given at registration, if any.
    pub name: Option<Arc<str>>,
    /// Accesses routed to the range since it was registered.
    pub hits: u64,
}

/// Counts of accesses by address space and direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessCounts {
    /// Port reads (`in`).
    pub pio_read: u64,
    /// Port writes (`out`).
    pub pio_write: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
}

impl AccessCounts {
    /// The sum of all four counts.
    pub fn total(&self) -> u64 {
        self.pio_read + self.pio_write + self.mmio_read + self.mmio_write
    }

    fn rows(&self) -> [(&'static str, u64); 4] {
        [
            ("pio-read", self.pio_read),
            ("pio-write", self.pio_write),
            ("mmio-read", self.mmio_read),
            ("mmio-write", self.mmio_write),
        ]
    }
}

/// What an [`EmulationAssist`](crate::EmulationAssist) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssistCounts {
    /// Instructions completed, per [`Assisted`] mnemonic (`completed[k as usize]`).
    pub completed: [u64; Assisted::COUNT],
    /// Instructions that raised an exception in the guest instead (`#PF`, `#GP`, `#SS`, `#UD`).
    pub faulted: u64,
    /// Instructions reflected as `#UD` by the policy.
    pub reflected: u64,
    /// Internal errors that stopped the VM.
    pub stopped: u64,
}

impl AssistCounts {
    /// Completed instructions of `kind`.
    pub fn completed(&self, kind: Assisted) -> u64 {
        self.completed[kind as usize]
    }

    fn rows(&self) -> Vec<(&'static str, u64)> {
        let mut rows: Vec<_> = Assisted::ALL
            .iter()
            .map(|k| (k.name(), self.completed(*k)))
            .collect();
        rows.extend([
            ("faulted", self.faulted),
            ("reflected", self.reflected),
            ("stopped", self.stopped),
        ]);
        rows.retain(|(_, n)| *n != 0);
        rows
    }
}

/// The direction and address space of an access, indexing [`AccessCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    PioRead,
    PioWrite,
    MmioRead,
    MmioWrite,
}

impl Access {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Access::PioRead => "port read",
            Access::PioWrite => "port write",
            Access::MmioRead => "MMIO read",
            Access::MmioWrite => "MMIO write",
        }
    }
}

/// Live counters of accesses by [`Access`].
#[derive(Debug, Default)]
pub(crate) struct AccessCounters([AtomicU64; 4]);

impl AccessCounters {
    pub(crate) fn add(&self, access: Access) {
        self.0[access as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> AccessCounts {
        let get = |a: Access| self.0[a as usize].load(Ordering::Relaxed);
        AccessCounts {
            pio_read: get(Access::PioRead),
            pio_write: get(Access::PioWrite),
            mmio_read: get(Access::MmioRead),
            mmio_write: get(Access::MmioWrite),
        }
    }
}

/// The live counters of a dispatcher (the per-range counters live in the buses).
#[derive(Debug, Default)]
pub(crate) struct DispatchCounters {
    exits: [AtomicU64; ExitKind::COUNT],
    pub(crate) unclaimed: AccessCounters,
    pub(crate) bad_size: AccessCounters,
}

impl DispatchCounters {
    pub(crate) fn count_exit(&self, kind: ExitKind) {
        self.exits[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        pio_ranges: Vec<RangeStats>,
        mmio_ranges: Vec<RangeStats>,
        log_lines: u64,
        log_suppressed: u64,
    ) -> ExitStats {
        ExitStats {
            exits: std::array::from_fn(|i| self.exits[i].load(Ordering::Relaxed)),
            pio_ranges,
            mmio_ranges,
            unclaimed: self.unclaimed.snapshot(),
            bad_size: self.bad_size.snapshot(),
            log_lines,
            log_suppressed,
            assist: AssistCounts::default(),
        }
    }
}

/// A snapshot of a dispatcher's statistics.
///
/// `Display` prints an aligned table of every exit kind and bad access seen and every registered
/// range (`kind`, `range`, `name`, `count`). Counters are read one by one while vCPUs may run, so
/// a snapshot taken under load is not one instant's state, but each count is exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStats {
    exits: [u64; ExitKind::COUNT],
    /// Hits per registered port range, in address order.
    pub pio_ranges: Vec<RangeStats>,
    /// Hits per registered MMIO range, in address order.
    pub mmio_ranges: Vec<RangeStats>,
    /// Accesses of a valid size that no range held; answered with all ones / dropped.
    pub unclaimed: AccessCounts,
    /// Accesses rejected for a size other than 1, 2, 4 or 8; answered as unclaimed.
    pub bad_size: AccessCounts,
    /// Warning lines logged about unclaimed or bad accesses.
    pub log_lines: u64,
    /// Warning lines the rate limit suppressed.
    pub log_suppressed: u64,
    /// What the emulation assist did, once added with [`with_assist`](Self::with_assist).
    pub assist: AssistCounts,
}

impl ExitStats {
    /// Exits of `kind` dispatched.
    pub fn exits(&self, kind: ExitKind) -> u64 {
        self.exits[kind as usize]
    }

    /// These statistics with an emulation assist's counts (printed as `assist` rows, one per
    /// completed mnemonic).
    pub fn with_assist(mut self, assist: AssistCounts) -> Self {
        self.assist = assist;
        self
    }

    /// All exits dispatched.
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().sum()
    }

    fn rows(&self) -> Vec<[String; 4]> {
        let mut rows = Vec::new();
        for kind in ExitKind::ALL {
            let n = self.exits(kind);
            if n != 0 {
                rows.push(row("exit", kind.name(), "", n));
            }
        }
        rows.push(row("exit", "total", "", self.total_exits()));
        for (space, ranges) in [("pio", &self.pio_ranges), ("mmio", &self.mmio_ranges)] {
            for r in ranges {
                let w = r.hex_digits;
                let range = format!("{:#0w$x}..={:#0w$x}", r.base, r.last, w = w + 2);
                rows.push(row(space, &range, r.name.as_deref().unwrap_or(""), r.hits));
            }
        }
        for (label, counts) in [("unclaimed", &self.unclaimed), ("bad-size", &self.bad_size)] {
            for (what, n) in counts.rows() {
                if n != 0 {
                    rows.push(row(label, what, "", n));
                }
            }
        }
        for (what, n) in self.assist.rows() {
            rows.push(row("assist", what, "", n));
        }
        if self.log_suppressed != 0 {
            rows.push(row("log", "suppressed", "", self.log_suppressed));
        }
        rows
    }
}

fn row(kind: &str, range: &str, name: &str, count: u64) -> [String; 4] {
    [kind.into(), range.into(), name.into(), count.to_string()]
}

impl fmt::Display for ExitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["kind", "range", "name", "count"].map(String::from);
        let rows = self.rows();
        let mut width = [0usize; 4];
        for r in std::iter::once(&header).chain(&rows) {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.len());
            }
        }
        for r in std::iter::once(&header).chain(&rows) {
            writeln!(
                f,
                "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3]
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ExitStats {
        let c = DispatchCounters::default();
        c.count_exit(ExitKind::IoOut);
        c.count_exit(ExitKind::IoOut);
        c.count_exit(ExitKind::Hlt);
        c.unclaimed.add(Access::PioRead);
        c.bad_size.add(Access::MmioWrite);
        let pio = vec![RangeStats {
            base: 0x3f8,
            last: 0x3ff,
            hex_digits: 4,
            name: Some(Arc::from("serial")),
            hits: 1234,
        }];
        let mmio = vec![RangeStats {
            base: 0xd000_0000,
            last: 0xd000_0fff,
            hex_digits: 8,
            name: None,
            hits: 0,
        }];
        c.snapshot(pio, mmio, 3, 17)
    }

    #[test]
    fn snapshot_counts() {
        let s = sample();
        assert_eq!(s.exits(ExitKind::IoOut), 2);
        assert_eq!(s.exits(ExitKind::Hlt), 1);
        assert_eq!(s.exits(ExitKind::MmioRead), 0);
        assert_eq!(s.total_exits(), 3);
        assert_eq!(s.unclaimed.total(), 1);
        assert_eq!(s.unclaimed.pio_read, 1);
        assert_eq!(s.bad_size.mmio_write, 1);
        assert_eq!((s.log_lines, s.log_suppressed), (3, 17));
    }

    #[test]
    fn display_is_an_aligned_table() {
        let text = sample().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "kind       range                    name    count",
                "exit       io-out                               2",
                "exit       hlt                                  1",
                "exit       total                                3",
                "pio        0x03f8..=0x03ff          serial   1234",
                "mmio       0xd0000000..=0xd0000fff              0",
                "unclaimed  pio-read                             1",
                "bad-size   mmio-write                           1",
                "log        suppressed                          17",
            ]
        );
    }

    #[test]
    fn access_names() {
        assert_eq!(Access::PioRead.describe(), "port read");
        assert_eq!(Access::PioWrite.describe(), "port write");
        assert_eq!(Access::MmioRead.describe(), "MMIO read");
        assert_eq!(Access::MmioWrite.describe(), "MMIO write");
    }
}
