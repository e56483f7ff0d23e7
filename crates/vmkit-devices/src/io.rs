//! What every device shares: access counters and the byte-wise split of wide port accesses.
//!
//! The legacy devices are 8-bit ISA devices. A wider access is split into byte accesses at
//! consecutive ports, lowest byte first, the way the chipset (and QEMU's memory core, for devices
//! that implement only byte accesses) does it.

// The counters and the split serve the legacy devices; without them only `IoStats` is used.
#![cfg_attr(not(feature = "legacy"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};

/// What a read of a port no register backs returns: an undriven ISA bus floats high.
pub const OPEN_BUS: u8 = 0xFF;

/// Counts of a device's guest accesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Port reads (one per access, whatever its size).
    pub reads: u64,
    /// Port writes (one per access, whatever its size).
    pub writes: u64,
    /// Bytes of accesses that hit no register or carried a value the device ignores.
    pub ignored: u64,
}

/// The live counters behind [`IoStats`].
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    ignored: AtomicU64,
}

impl IoCounters {
    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ignored(&self) {
        self.ignored.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> IoStats {
        IoStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
        }
    }
}

/// Fills every byte of `data` with `read(start + i)`, lowest byte first. Positions are `u32` so
/// that an access running past port 0xFFFF reaches positions no device backs instead of wrapping.
pub(crate) fn read_bytewise(start: u32, data: &mut [u8], mut read: impl FnMut(u32) -> u8) {
    let mut position = start;
    for byte in data.iter_mut() {
        *byte = read(position);
        position = position.saturating_add(1);
    }
}

/// Calls `write(start + i, data[i])` for every byte, lowest byte first, and returns the first
/// non-`None` result (later bytes are still written).
pub(crate) fn write_bytewise<R>(
    start: u32,
    data: &[u8],
    mut write: impl FnMut(u32, u8) -> Option<R>,
) -> Option<R> {
    let mut first = None;
    let mut position = start;
    for &byte in data {
        let result = write(position, byte);
        if first.is_none() {
            first = result;
        }
        position = position.saturating_add(1);
    }
    first
}

/// The little-endian value of up to the first four bytes of `data`, zero-extended.
pub(crate) fn le_u32(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytewise_read_fills_every_byte_without_wrapping() {
        let mut data = [0u8; 4];
        read_bytewise(0xFFFE, &mut data, |port| (port >> 8) as u8);
        assert_eq!(data, [0xFF, 0xFF, 0x00, 0x00]);
        let mut data = [0u8; 3];
        read_bytewise(u32::MAX, &mut data, |port| (port == u32::MAX).into());
        assert_eq!(data, [1, 1, 1]);
        let mut empty: [u8; 0] = [];
        read_bytewise(0, &mut empty, |_| unreachable!());
    }

    #[test]
    fn bytewise_write_keeps_the_first_result_and_writes_all() {
        let mut seen = Vec::new();
        let first = write_bytewise(4, &[1, 2, 3], |port, value| {
            seen.push((port, value));
            (value > 1).then_some(value)
        });
        assert_eq!(first, Some(2));
        assert_eq!(seen, [(4, 1), (5, 2), (6, 3)]);
    }

    #[test]
    fn le_value_zero_extends_and_truncates() {
        assert_eq!(le_u32(&[]), 0);
        assert_eq!(le_u32(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_u32(&[1, 2, 3, 4, 5, 6, 7, 8]), 0x0403_0201);
    }

    #[test]
    fn counters_snapshot() {
        let counters = IoCounters::default();
        counters.read();
        counters.write();
        counters.write();
        counters.ignored();
        assert_eq!(
            counters.snapshot(),
            IoStats {
                reads: 1,
                writes: 2,
                ignored: 1
            }
        );
    }
}
