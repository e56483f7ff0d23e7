//! The interrupt lines a fixture hands its devices: counting lines, allocated in banks and
//! counted per bank, so that an instance with many lines is cheap to build and its calls cheap
//! to count after every access.

use std::fmt;
use std::io;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vmkit_exits::{CountingTrigger, InterruptTrigger, MsiTrigger};

/// How many lines one allocation holds.
const BANK_LINES: usize = 32;

/// Lines allocated together, and the calls made on any of them.
struct Bank {
    lines: [CountingTrigger; BANK_LINES],
    calls: AtomicU64,
}

/// An interrupt line from [`Setup::interrupt`](crate::Setup::interrupt): a [`CountingTrigger`]
/// (it dereferences to one, for its counts, its level and [`set_failing`]) whose every call the
/// harness also counts towards the bound on one access's line calls. Hand devices clones of it.
///
/// [`set_failing`]: CountingTrigger::set_failing
#[derive(Clone)]
pub struct Line {
    bank: Arc<Bank>,
    index: usize,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Line").field(&**self).finish()
    }
}

impl Deref for Line {
    type Target = CountingTrigger;

    fn deref(&self) -> &CountingTrigger {
        &self.bank.lines[self.index]
    }
}

impl InterruptTrigger for Line {
    fn trigger(&self) -> io::Result<()> {
        self.bank.calls.fetch_add(1, Ordering::Relaxed);
        self.bank.lines[self.index].trigger()
    }

    fn assert(&self) -> io::Result<()> {
        self.bank.calls.fetch_add(1, Ordering::Relaxed);
        self.bank.lines[self.index].assert()
    }

    fn deassert(&self) -> io::Result<()> {
        self.bank.calls.fetch_add(1, Ordering::Relaxed);
        self.bank.lines[self.index].deassert()
    }
}

/// A line is also where a device's MSI/MSI-X messages can go: each message is one call and
/// one edge on the line (fails while the line fails), whatever its address and data.
impl MsiTrigger for Line {
    fn send(&self, _address: u64, _data: u32) -> io::Result<()> {
        self.trigger()
    }
}

/// The lines of one instance.
#[derive(Default)]
pub(crate) struct Lines {
    banks: Vec<Arc<Bank>>,
    /// Lines handed out from the last bank.
    used: usize,
}

impl Lines {
    /// A new line.
    pub(crate) fn add(&mut self) -> Line {
        let bank = match self.banks.last() {
            Some(bank) if self.used < BANK_LINES => bank.clone(),
            _ => {
                let bank = Arc::new(Bank {
                    lines: Default::default(),
                    calls: AtomicU64::new(0),
                });
                self.banks.push(bank.clone());
                self.used = 0;
                bank
            }
        };
        self.used += 1;
        Line {
            bank,
            index: self.used - 1,
        }
    }

    /// How many lines were handed out.
    pub(crate) fn len(&self) -> usize {
        (self.banks.len().max(1) - 1) * BANK_LINES + self.used
    }

    /// The calls made on all lines so far, failed ones included.
    pub(crate) fn calls(&self) -> u64 {
        self.banks
            .iter()
            .map(|bank| bank.calls.load(Ordering::Relaxed))
            .sum()
    }

    /// Makes every line fail (`true`) or succeed again.
    pub(crate) fn set_failing(&self, failing: bool) {
        for bank in &self.banks {
            for line in &bank.lines {
                line.set_failing(failing);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_their_calls_per_line_and_together() {
        let mut lines = Lines::default();
        assert_eq!((lines.len(), lines.calls()), (0, 0));
        let handed: Vec<Line> = (0..BANK_LINES + 3).map(|_| lines.add()).collect();
        assert_eq!(lines.len(), BANK_LINES + 3);
        handed[0].trigger().unwrap();
        handed[BANK_LINES + 2].assert().unwrap();
        handed[BANK_LINES + 2].clone().deassert().unwrap();
        assert_eq!(lines.calls(), 3);
        assert_eq!(handed[0].edges(), 1);
        assert_eq!(
            (
                handed[BANK_LINES + 2].asserts(),
                handed[BANK_LINES + 2].deasserts()
            ),
            (1, 1)
        );
        assert_eq!(handed[1].calls(), 0);
        lines.set_failing(true);
        assert!(handed[5].assert().is_err());
        assert!(handed[BANK_LINES].trigger().is_err());
        assert!(!handed[5].is_asserted());
        // Failed calls are calls: the work the device asked of its line.
        assert_eq!(lines.calls(), 5);
        lines.set_failing(false);
        handed[5].assert().unwrap();
        assert!(handed[5].is_asserted());
        assert!(format!("{:?}", handed[5]).starts_with("Line(CountingTrigger"));
        handed[2].send(0xFEE0_0000, 0x41).unwrap();
        assert_eq!((handed[2].edges(), lines.calls()), (1, 7));
    }
}
