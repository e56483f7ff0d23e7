//! Fuzzes the conversion of a KVM run area into exits (`vmkit_vcpu::kvm::exit::convert_exit`).
//!
//! The input is a run area as KVM would leave it: its first `size_of::<kvm_run>()` bytes are the
//! `kvm_run` structure, the rest is the port-I/O data page at offset 4096; the area is
//! [`AREA_SIZE`] bytes, zero where the input ends. The body checks that the conversion never
//! panics, hands out only slices inside the area (port-I/O data past the structure, MMIO data in
//! the exit's own buffer), splits string I/O into `count` elements of `size` bytes, and returns
//! the variant `exit_reason` names — or an error, which only I/O and MMIO exits may produce.

use std::mem::{offset_of, size_of};

use vmkit_exits::{SystemEvent, VmExit};
use vmkit_vcpu::RunExit;
use vmkit_vcpu::kvm::exit::{
    KVM_RUN_SIZE, MMIO_DATA_OFFSET, PIO_DATA_OFFSET, RunAreaBuf, convert_exit, record,
};
use vmkit_vcpu::kvm::kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR,
    KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT,
    KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run,
};

/// Size of the run area the input is placed in: the structure's page and one data page.
pub const AREA_SIZE: usize = record::AREA_SIZE;

const UNION: usize = offset_of!(kvm_run, __bindgen_anon_1);
const REASON: usize = offset_of!(kvm_run, exit_reason);

/// Builds the run area an input describes.
pub fn area_from_input(data: &[u8]) -> RunAreaBuf {
    let (head, tail) = data.split_at(data.len().min(KVM_RUN_SIZE));
    let mut area = RunAreaBuf::from_bytes(head, AREA_SIZE);
    let n = tail.len().min(AREA_SIZE - PIO_DATA_OFFSET);
    area.as_bytes_mut()[PIO_DATA_OFFSET..PIO_DATA_OFFSET + n].copy_from_slice(&tail[..n]);
    area
}

/// The input that builds `area`: its structure (trailing zeros trimmed when no data follows)
/// and the first `data_len` bytes of its data page.
pub fn input_from_area(area: &RunAreaBuf, data_len: usize) -> Vec<u8> {
    let bytes = area.as_bytes();
    let mut input = bytes[..KVM_RUN_SIZE].to_vec();
    if data_len == 0 {
        let used = input.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        input.truncate(used);
    } else {
        input.extend_from_slice(&bytes[PIO_DATA_OFFSET..PIO_DATA_OFFSET + data_len]);
    }
    input
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

/// Where `slice` lies in the area that starts at `base`.
fn offset_in(base: usize, slice: &[u8]) -> usize {
    (slice.as_ptr() as usize).wrapping_sub(base)
}

/// The target body.
pub fn run(data: &[u8]) {
    let mut area = area_from_input(data);
    let before = area.as_bytes().to_vec();
    let base = area.as_bytes().as_ptr() as usize;
    let reason = u32_at(&before, REASON);
    let exits = match convert_exit(area.as_bytes_mut()) {
        Err(e) => {
            assert!(
                reason == KVM_EXIT_IO || reason == KVM_EXIT_MMIO,
                "exit {reason} cannot be malformed, but: {e}"
            );
            return;
        }
        Ok(RunExit::Kicked) => {
            assert_eq!(reason, KVM_EXIT_INTR);
            return;
        }
        Ok(RunExit::Exits(exits)) => exits,
    };

    if reason == KVM_EXIT_IO {
        let (direction, size) = (before[UNION], usize::from(before[UNION + 1]));
        let port = u16::from_ne_bytes([before[UNION + 2], before[UNION + 3]]);
        let count = u32_at(&before, UNION + 4) as usize;
        let offset = u64_at(&before, UNION + 8) as usize;
        assert_eq!(exits.len(), count);
        for (i, exit) in exits.enumerate() {
            let at = offset + i * size;
            let (got_port, slice_at, len) = match exit {
                VmExit::IoIn { port, data } => {
                    assert_eq!(direction, 0);
                    let found = (port, offset_in(base, data), data.len());
                    data.fill(0xa5);
                    found
                }
                VmExit::IoOut { port, data } => {
                    assert_eq!(direction, 1);
                    assert_eq!(data, &before[at..at + size]);
                    (port, offset_in(base, data), data.len())
                }
                other => panic!("an I/O exit became {other:?}"),
            };
            assert_eq!((got_port, slice_at, len), (port, at, size));
            assert!(at >= KVM_RUN_SIZE && at + size <= AREA_SIZE);
        }
        return;
    }

    assert_eq!(exits.len(), 1);
    for exit in exits {
        match exit {
            VmExit::MmioRead { addr, data } => {
                check_mmio(
                    reason,
                    addr,
                    offset_in(base, data),
                    data.len(),
                    false,
                    &before,
                );
                data.fill(0xa5);
            }
            VmExit::MmioWrite { addr, data } => {
                check_mmio(
                    reason,
                    addr,
                    offset_in(base, data),
                    data.len(),
                    true,
                    &before,
                );
                assert_eq!(
                    data,
                    &before[MMIO_DATA_OFFSET..MMIO_DATA_OFFSET + data.len()]
                );
            }
            other => check_simple(reason, other, &before),
        }
    }
}

fn check_mmio(reason: u32, addr: u64, at: usize, len: usize, write: bool, before: &[u8]) {
    assert_eq!(reason, KVM_EXIT_MMIO);
    assert_eq!(addr, u64_at(before, UNION));
    assert_eq!(write, before[UNION + 20] != 0);
    assert_eq!(at, MMIO_DATA_OFFSET);
    assert_eq!(len, u32_at(before, UNION + 16) as usize);
    assert!((1..=8).contains(&len));
}

fn check_simple(reason: u32, exit: VmExit<'_>, before: &[u8]) {
    match exit {
        VmExit::Hlt => assert_eq!(reason, KVM_EXIT_HLT),
        VmExit::TripleFault => assert_eq!(reason, KVM_EXIT_SHUTDOWN),
        VmExit::SystemEvent(event) => {
            assert_eq!(reason, KVM_EXIT_SYSTEM_EVENT);
            let want = match u32_at(before, UNION) {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::PowerOff,
                KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                other => SystemEvent::Other(other),
            };
            assert_eq!(event, want);
        }
        VmExit::FailEntry { reason: hw, cpu } => {
            assert_eq!(reason, KVM_EXIT_FAIL_ENTRY);
            assert_eq!(
                (hw, cpu),
                (u64_at(before, UNION), u32_at(before, UNION + 8))
            );
        }
        VmExit::InternalError { suberror, insn } => {
            assert_eq!(reason, KVM_EXIT_INTERNAL_ERROR);
            assert_eq!(suberror, u32_at(before, UNION));
            if let Some(insn) = insn {
                assert_eq!(suberror, KVM_INTERNAL_ERROR_EMULATION);
                let len = usize::from(before[UNION + 16]).min(15);
                assert_eq!(insn.as_slice(), &before[UNION + 17..UNION + 17 + len]);
            }
        }
        VmExit::Debug { pc, exception } => {
            assert_eq!(reason, KVM_EXIT_DEBUG);
            assert_eq!(
                (exception, pc),
                (u32_at(before, UNION), u64_at(before, UNION + 8))
            );
        }
        VmExit::Other { reason: raw } => {
            assert_eq!(raw, reason);
            assert!(
                ![
                    KVM_EXIT_IO,
                    KVM_EXIT_MMIO,
                    KVM_EXIT_HLT,
                    KVM_EXIT_SHUTDOWN,
                    KVM_EXIT_INTR,
                    KVM_EXIT_SYSTEM_EVENT,
                    KVM_EXIT_FAIL_ENTRY,
                    KVM_EXIT_INTERNAL_ERROR,
                    KVM_EXIT_DEBUG,
                ]
                .contains(&raw),
                "modelled exit {raw} reported as Other"
            );
        }
        other => panic!("exit {reason} became {other:?}"),
    }
}

const _: () = assert!(size_of::<kvm_run>() == KVM_RUN_SIZE);

/// Seed inputs: one well-formed exit of each kind, string I/O, and malformed I/O and MMIO.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |fill: &dyn Fn(&mut [u8]), data_len: usize| {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        fill(area.as_bytes_mut());
        input_from_area(&area, data_len)
    };
    let off = PIO_DATA_OFFSET as u64;
    vec![
        (
            "io_out_serial",
            seed(&|a| record::io(a, 1, 1, 0x3f8, 1, off, b"A"), 1),
        ),
        (
            "io_in_word",
            seed(&|a| record::io(a, 0, 2, 0x71, 1, off, &[]), 2),
        ),
        (
            "rep_outsw",
            seed(&|a| record::io(a, 1, 2, 0x1f0, 4, off, b"ABCDEFGH"), 8),
        ),
        (
            "rep_insb",
            seed(&|a| record::io(a, 0, 1, 0x60, 16, off, &[]), 16),
        ),
        (
            "io_bad_offset",
            seed(&|a| record::io(a, 0, 4, 0x80, 2, 16, &[]), 0),
        ),
        (
            "io_bad_size",
            seed(&|a| record::io(a, 1, 3, 0x80, 1, off, &[]), 0),
        ),
        (
            "mmio_write",
            seed(
                &|a| record::mmio(a, 0xd000_0000, 4, true, &[0x78, 0x56, 0x34, 0x12]),
                0,
            ),
        ),
        (
            "mmio_read",
            seed(&|a| record::mmio(a, 0xfec0_0010, 8, false, &[]), 0),
        ),
        (
            "mmio_bad_len",
            seed(&|a| record::mmio(a, 0xd000_0000, 16, false, &[]), 0),
        ),
        ("hlt", seed(&|a| record::exit_reason(a, KVM_EXIT_HLT), 0)),
        (
            "shutdown",
            seed(&|a| record::exit_reason(a, KVM_EXIT_SHUTDOWN), 0),
        ),
        ("intr", seed(&|a| record::exit_reason(a, KVM_EXIT_INTR), 0)),
        (
            "system_event_reset",
            seed(&|a| record::system_event(a, KVM_SYSTEM_EVENT_RESET), 0),
        ),
        (
            "emulation_failure_int3",
            seed(&|a| record::emulation_failure(a, Some(&[0xcc, 0x90])), 0),
        ),
        ("unknown_exit", seed(&|a| record::exit_reason(a, 0x7777), 0)),
    ]
}

#[cfg(test)]
mod tests {
    use crate::seed_files;

    use super::*;

    #[test]
    fn seeds_pass_and_round_trip() {
        for (name, bytes) in seeds() {
            let area = area_from_input(&bytes);
            let data_len = bytes.len().saturating_sub(KVM_RUN_SIZE);
            assert_eq!(input_from_area(&area, data_len), bytes, "{name}");
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("exit_conversion", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 64]);
        run(&[0xff; KVM_RUN_SIZE + 5000]);
        let mut io = vec![0u8; 64];
        io[REASON..REASON + 4].copy_from_slice(&KVM_EXIT_IO.to_ne_bytes());
        for b in &mut io[UNION..UNION + 16] {
            *b = 0xff;
        }
        run(&io);
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("exit_conversion", &seeds());
    }
}
