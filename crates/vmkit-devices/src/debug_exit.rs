//! The debug-exit port: a guest ends the VM with a status code by writing it to a port.
//!
//! Compatible with QEMU's `-device isa-debug-exit,iobase=0xf4,iosize=0x04`: a write of value `s`
//! of any size at any offset of the range stops the VM; reads return 0. QEMU exits with status
//! `(s << 1) | 1`; this device reports `s` itself as [`StopReason::GuestExit`] and leaves the
//! process exit status to the VMM ([`qemu_exit_status`] computes QEMU's).

use log::debug;
use vmkit_exits::{DeviceAction, PioAddress, PioDevice, StopReason};

use crate::io::{IoCounters, IoStats, le_u32};

/// The port QEMU test setups conventionally give the debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xF4;
/// The size of the debug-exit port range, in ports.
pub const DEBUG_EXIT_PORT_LEN: u16 = 4;

/// The exit status QEMU's `isa-debug-exit` gives the QEMU process for a guest write of `code`.
pub const fn qemu_exit_status(code: u32) -> u64 {
    ((code as u64) << 1) | 1
}

/// The debug-exit port.
#[derive(Debug, Default)]
pub struct DebugExit {
    counters: IoCounters,
}

impl DebugExit {
    /// A debug-exit device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> IoStats {
        self.counters.snapshot()
    }
}

impl PioDevice for DebugExit {
    /// Reads return 0, as QEMU's device does.
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        self.counters.read();
        data.fill(0);
    }

    /// A write of `s` (little-endian, zero-extended; bytes past the fourth are dropped, QEMU
    /// accepts at most four) stops the VM with [`StopReason::GuestExit`]`(s)`. An empty write
    /// carries no value and is ignored.
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.counters.write();
        if data.is_empty() {
            self.counters.ignored();
            return DeviceAction::Resume;
        }
        let code = le_u32(data);
        debug!(
            "debug-exit: guest wrote {code:#x} at port {:#x}",
            base.0.wrapping_add(offset)
        );
        DeviceAction::Stop(StopReason::GuestExit(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_every_size_stop_with_the_value() {
        let dev = DebugExit::new();
        let cases: [(&[u8], u32); 4] = [
            (&[0x10], 0x10),
            (&[0x34, 0x12], 0x1234),
            (&[0x78, 0x56, 0x34, 0x12], 0x1234_5678),
            (&[1, 0, 0, 0x80, 0xAA, 0xBB, 0xCC, 0xDD], 0x8000_0001),
        ];
        for (data, code) in cases {
            for offset in [0, 1, 3, 100] {
                assert_eq!(
                    dev.pio_write(PioAddress(DEBUG_EXIT_PORT), offset, data),
                    DeviceAction::Stop(StopReason::GuestExit(code))
                );
            }
        }
        assert_eq!(dev.stats().writes, 16);
    }

    #[test]
    fn empty_write_is_ignored() {
        let dev = DebugExit::new();
        assert_eq!(
            dev.pio_write(PioAddress(DEBUG_EXIT_PORT), 0, &[]),
            DeviceAction::Resume
        );
        assert_eq!(dev.stats().ignored, 1);
    }

    #[test]
    fn reads_return_zero_whatever_the_size() {
        let dev = DebugExit::new();
        for size in [1, 2, 4, 8] {
            let mut data = vec![0xAA; size];
            dev.pio_read(PioAddress(DEBUG_EXIT_PORT), 9, &mut data);
            assert!(data.iter().all(|&b| b == 0));
        }
        assert_eq!(dev.stats().reads, 4);
    }

    #[test]
    fn qemu_status_mapping() {
        assert_eq!(qemu_exit_status(0), 1);
        assert_eq!(qemu_exit_status(0x10), 0x21);
        assert_eq!(qemu_exit_status(u32::MAX), 0x1_FFFF_FFFF);
    }
}
