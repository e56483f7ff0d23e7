//! The conversion of KVM's run area into backend-neutral exits.
//!
//! [`convert_exit`] is a plain function over the bytes of a vCPU's run area (the `kvm_run`
//! structure followed by the port-I/O data page): it reads `exit_reason` and the matching member
//! of the exit union and hands out slices of the area for the data. Nothing it reads is trusted:
//! the I/O size, count and data offset, the MMIO length and the instruction-byte count are checked
//! against the area before any slice is formed, and an exit that does not add up is an
//! [`ExitError`], never a panic or a read outside the area. It runs without a vCPU, so it is
//! fuzzed and tested on a buffer ([`RunAreaBuf`]).

use std::mem::{align_of, offset_of, size_of};

use kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR,
    KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN,
    KVM_EXIT_SYSTEM_EVENT, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run,
    kvm_run__bindgen_ty_1__bindgen_ty_6,
};
use vmkit_exits::{InsnBytes, SystemEvent, VmExit};

use crate::run::{Exits, RunExit};

/// Size of the `kvm_run` structure at the start of every run area.
pub const KVM_RUN_SIZE: usize = size_of::<kvm_run>();

/// Offset of the port-I/O data in a KVM run area (`KVM_PIO_PAGE_OFFSET` pages on x86).
pub const PIO_DATA_OFFSET: usize = 4096;

/// Offset in the run area of the MMIO exit's data bytes.
pub const MMIO_DATA_OFFSET: usize =
    offset_of!(kvm_run, __bindgen_anon_1) + offset_of!(kvm_run__bindgen_ty_1__bindgen_ty_6, data);

/// Why a run area does not describe a well-formed exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum ExitError {
    /// the run area of {len} bytes cannot hold a kvm_run structure
    AreaTooSmall {
        /// The area's length.
        len: usize,
    },
    /// the run area is not aligned for a kvm_run structure
    Misaligned,
    /// the port-I/O exit has direction {0}, neither in (0) nor out (1)
    IoDirection(u8),
    /// the port-I/O exit has access size {0}, not 1, 2 or 4
    IoSize(u8),
    /// the port-I/O exit moves no element
    IoCount,
    /// the port-I/O data ({len} bytes at offset {offset:#x}) lies outside the run area's data part
    IoData {
        /// The data offset the exit gave.
        offset: u64,
        /// `size * count`.
        len: u64,
    },
    /// the MMIO exit has length {0}, not 1 to 8
    MmioLength(u32),
}

/// An owned, suitably aligned run area: for replaying recorded exits, tests and fuzzing.
#[derive(Clone, Debug)]
pub struct RunAreaBuf {
    words: Vec<u64>,
    len: usize,
}

impl RunAreaBuf {
    /// A zeroed area of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// An area of `len` bytes starting with `bytes` (cut at `len`) and zero after them.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Self {
        let mut area = Self::new(len);
        let n = bytes.len().min(len);
        area.as_bytes_mut()[..n].copy_from_slice(&bytes[..n]);
        area
    }

    /// The area's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` owns `words.len() * 8 >= len` initialized bytes at 8-byte alignment;
        // every byte of a `u64` is a valid `u8`, and the shared borrow of `self` covers the slice.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// The area's bytes, writable; 8-byte aligned as [`convert_exit`] requires.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`; the exclusive borrow of `self` makes the slice unique, and any
        // bytes written through it form valid `u64`s.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

/// Reads the exit the run area describes.
///
/// `area` is the whole run area: `kvm_run` at offset 0 (8-byte aligned) followed by the data
/// pages. Port-I/O data is sliced from `area` at the exit's data offset, which must lie past the
/// `kvm_run` structure; MMIO data is the exit's own 8-byte buffer. `KVM_EXIT_INTR` becomes
/// [`RunExit::Kicked`]; exits this crate does not model become [`VmExit::Other`].
pub fn convert_exit(area: &mut [u8]) -> Result<RunExit<'_>, ExitError> {
    if area.len() < KVM_RUN_SIZE {
        return Err(ExitError::AreaTooSmall { len: area.len() });
    }
    if area.as_ptr().align_offset(align_of::<kvm_run>()) != 0 {
        return Err(ExitError::Misaligned);
    }
    // SAFETY: size and alignment for `kvm_run` are checked above; it is plain old data (any bytes
    // are valid), and this shared borrow ends before any slice of `area` is handed out.
    let run = unsafe { &*area.as_ptr().cast::<kvm_run>() };
    let reason = run.exit_reason;
    // Every member of the exit union is plain old data, so any byte pattern is a valid value of
    // whichever member `exit_reason` selects: each union read below copies the member out, and
    // nothing read is trusted before it is checked.
    let exit = match reason {
        KVM_EXIT_IO => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let io = unsafe { run.__bindgen_anon_1.io };
            return convert_io(
                area,
                io.direction,
                io.size,
                io.port,
                io.count,
                io.data_offset,
            );
        }
        KVM_EXIT_MMIO => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let mmio = unsafe { run.__bindgen_anon_1.mmio };
            let len = mmio.len;
            if !(1..=8).contains(&len) {
                return Err(ExitError::MmioLength(len));
            }
            let data = &mut area[MMIO_DATA_OFFSET..MMIO_DATA_OFFSET + len as usize];
            if mmio.is_write != 0 {
                VmExit::MmioWrite {
                    addr: mmio.phys_addr,
                    data,
                }
            } else {
                VmExit::MmioRead {
                    addr: mmio.phys_addr,
                    data,
                }
            }
        }
        KVM_EXIT_HLT => VmExit::Hlt,
        KVM_EXIT_SHUTDOWN => VmExit::TripleFault,
        KVM_EXIT_INTR => return Ok(RunExit::Kicked),
        KVM_EXIT_SYSTEM_EVENT => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let event = unsafe { run.__bindgen_anon_1.system_event };
            VmExit::SystemEvent(match event.type_ {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEvent::PowerOff,
                KVM_SYSTEM_EVENT_RESET => SystemEvent::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEvent::Crash,
                other => SystemEvent::Other(other),
            })
        }
        KVM_EXIT_FAIL_ENTRY => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let fail = unsafe { run.__bindgen_anon_1.fail_entry };
            VmExit::FailEntry {
                reason: fail.hardware_entry_failure_reason,
                cpu: fail.cpu,
            }
        }
        KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let failure = unsafe { run.__bindgen_anon_1.emulation_failure };
            let with_bytes = u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES);
            let insn = (failure.suberror == KVM_INTERNAL_ERROR_EMULATION
                && failure.flags & with_bytes != 0)
                .then(|| {
                    // SAFETY: a plain-old-data union member (see above), copied out.
                    let bytes = unsafe { failure.__bindgen_anon_1.__bindgen_anon_1 };
                    let len = usize::from(bytes.insn_size).min(bytes.insn_bytes.len());
                    InsnBytes::new(&bytes.insn_bytes[..len])
                });
            VmExit::InternalError {
                suberror: failure.suberror,
                insn,
            }
        }
        KVM_EXIT_DEBUG => {
            // SAFETY: a plain-old-data union member (see above), copied out.
            let debug = unsafe { run.__bindgen_anon_1.debug };
            VmExit::Debug {
                pc: debug.arch.pc,
                exception: debug.arch.exception,
            }
        }
        other => VmExit::Other { reason: other },
    };
    Ok(RunExit::Exits(Exits::one(exit)))
}

fn convert_io(
    area: &mut [u8],
    direction: u8,
    size: u8,
    port: u16,
    count: u32,
    offset: u64,
) -> Result<RunExit<'_>, ExitError> {
    if !matches!(size, 1 | 2 | 4) {
        return Err(ExitError::IoSize(size));
    }
    if count == 0 {
        return Err(ExitError::IoCount);
    }
    let len = u64::from(size) * u64::from(count);
    let range = offset
        .checked_add(len)
        .filter(|&end| offset >= KVM_RUN_SIZE as u64 && end <= area.len() as u64)
        .and_then(|end| Some(usize::try_from(offset).ok()?..usize::try_from(end).ok()?))
        .ok_or(ExitError::IoData { offset, len })?;
    let data = &mut area[range];
    let size = usize::from(size);
    let exits = match u32::from(direction) {
        KVM_EXIT_IO_IN => Exits::io_in(port, size, data),
        KVM_EXIT_IO_OUT => Exits::io_out(port, size, data),
        _ => return Err(ExitError::IoDirection(direction)),
    };
    // The size is 1, 2 or 4 and the data holds `count >= 1` whole elements, so both succeed.
    exits
        .map(RunExit::Exits)
        .ok_or(ExitError::IoData { offset, len })
}

/// Writers of run areas for tests, benchmarks, fuzz seeds and replay: each fills the fields KVM
/// fills for one kind of exit.
pub mod record {
    use std::mem::{offset_of, size_of};

    use kvm_bindings::{
        KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_SYSTEM_EVENT,
        KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, kvm_run,
    };

    const UNION: usize = offset_of!(kvm_run, __bindgen_anon_1);

    fn put<const N: usize>(area: &mut [u8], at: usize, bytes: [u8; N]) {
        if let Some(dst) = area.get_mut(at..at + N) {
            dst.copy_from_slice(&bytes);
        }
    }

    /// Sets `exit_reason`.
    pub fn exit_reason(area: &mut [u8], reason: u32) {
        put(area, offset_of!(kvm_run, exit_reason), reason.to_ne_bytes());
    }

    /// A port-I/O exit of `count` elements of `size` bytes with data at `data_offset`
    /// (`direction` 0 is in, 1 is out); `data` is copied there when it fits.
    pub fn io(
        area: &mut [u8],
        direction: u8,
        size: u8,
        port: u16,
        count: u32,
        data_offset: u64,
        data: &[u8],
    ) {
        exit_reason(area, KVM_EXIT_IO);
        put(area, UNION, [direction]);
        put(area, UNION + 1, [size]);
        put(area, UNION + 2, port.to_ne_bytes());
        put(area, UNION + 4, count.to_ne_bytes());
        put(area, UNION + 8, data_offset.to_ne_bytes());
        if let Ok(start) = usize::try_from(data_offset)
            && let Some(dst) = area.get_mut(start..start.saturating_add(data.len()))
        {
            dst.copy_from_slice(data);
        }
    }

    /// An MMIO exit of `len` bytes at `addr`; `data` (at most 8 bytes) is copied into the exit.
    pub fn mmio(area: &mut [u8], addr: u64, len: u32, is_write: bool, data: &[u8]) {
        exit_reason(area, KVM_EXIT_MMIO);
        put(area, UNION, addr.to_ne_bytes());
        let n = data.len().min(8);
        if let Some(dst) = area.get_mut(UNION + 8..UNION + 8 + n) {
            dst.copy_from_slice(&data[..n]);
        }
        put(area, UNION + 16, len.to_ne_bytes());
        put(area, UNION + 20, [u8::from(is_write)]);
    }

    /// A system event of `event_type`.
    pub fn system_event(area: &mut [u8], event_type: u32) {
        exit_reason(area, KVM_EXIT_SYSTEM_EVENT);
        put(area, UNION, event_type.to_ne_bytes());
    }

    /// An emulation failure; `insn` (at most 15 bytes) is reported with the instruction-bytes
    /// flag when given.
    pub fn emulation_failure(area: &mut [u8], insn: Option<&[u8]>) {
        exit_reason(area, KVM_EXIT_INTERNAL_ERROR);
        put(area, UNION, KVM_INTERNAL_ERROR_EMULATION.to_ne_bytes());
        if let Some(insn) = insn {
            let n = insn.len().min(15);
            put(area, UNION + 4, 3u32.to_ne_bytes());
            put(
                area,
                UNION + 8,
                u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES).to_ne_bytes(),
            );
            put(area, UNION + 16, [n as u8]);
            if let Some(dst) = area.get_mut(UNION + 17..UNION + 17 + n) {
                dst.copy_from_slice(&insn[..n]);
            }
        }
    }

    /// The size of a run area with one data page, as KVM maps it at the least.
    pub const AREA_SIZE: usize = super::PIO_DATA_OFFSET + 4096;

    const _: () = assert!(size_of::<kvm_run>() <= super::PIO_DATA_OFFSET);
}

#[cfg(test)]
mod tests {
    use super::record::AREA_SIZE;
    use super::*;
    use kvm_bindings::{KVM_EXIT_IRQ_WINDOW_OPEN, KVM_SYSTEM_EVENT_WAKEUP};

    fn single(area: &mut RunAreaBuf) -> VmExit<'_> {
        match convert_exit(area.as_bytes_mut()).unwrap() {
            RunExit::Exits(mut exits) => {
                assert_eq!(exits.len(), 1);
                exits.next().unwrap()
            }
            RunExit::Kicked => panic!("kicked"),
        }
    }

    #[test]
    fn port_out_hands_out_the_data_page() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::io(area.as_bytes_mut(), 1, 1, 0x3f8, 1, 4096, b"A");
        assert_eq!(
            single(&mut area),
            VmExit::IoOut {
                port: 0x3f8,
                data: b"A"
            }
        );
    }

    #[test]
    fn port_in_data_is_written_back_into_the_area() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::io(area.as_bytes_mut(), 0, 2, 0x71, 1, 4096, &[]);
        match single(&mut area) {
            VmExit::IoIn { port: 0x71, data } => data.copy_from_slice(&[0x34, 0x12]),
            other => panic!("{other:?}"),
        }
        assert_eq!(&area.as_bytes()[4096..4098], &[0x34, 0x12]);
    }

    #[test]
    fn string_io_is_split_into_elements() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::io(
            area.as_bytes_mut(),
            1,
            2,
            0x1f0,
            3,
            4096,
            &[1, 2, 3, 4, 5, 6],
        );
        let RunExit::Exits(exits) = convert_exit(area.as_bytes_mut()).unwrap() else {
            panic!("kicked");
        };
        let got: Vec<_> = exits
            .map(|e| match e {
                VmExit::IoOut { port, data } => (port, data.to_vec()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0x1f0, vec![1, 2]),
                (0x1f0, vec![3, 4]),
                (0x1f0, vec![5, 6])
            ]
        );
    }

    #[test]
    fn io_fields_are_never_trusted() {
        let cases: [(u8, u8, u32, u64, ExitError); 7] = [
            (0, 3, 1, 4096, ExitError::IoSize(3)),
            (0, 8, 1, 4096, ExitError::IoSize(8)),
            (1, 1, 0, 4096, ExitError::IoCount),
            (2, 1, 1, 4096, ExitError::IoDirection(2)),
            (
                0,
                4,
                1025,
                4096,
                ExitError::IoData {
                    offset: 4096,
                    len: 4100,
                },
            ),
            (0, 1, 1, 8, ExitError::IoData { offset: 8, len: 1 }),
            (
                1,
                4,
                u32::MAX,
                u64::MAX - 2,
                ExitError::IoData {
                    offset: u64::MAX - 2,
                    len: 4 * u64::from(u32::MAX),
                },
            ),
        ];
        for (direction, size, count, offset, want) in cases {
            let mut area = RunAreaBuf::new(AREA_SIZE);
            record::io(area.as_bytes_mut(), direction, size, 7, count, offset, &[]);
            assert_eq!(convert_exit(area.as_bytes_mut()).unwrap_err(), want);
        }
        // The last byte of the area is reachable, one past it is not.
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::io(area.as_bytes_mut(), 0, 4, 7, 1, AREA_SIZE as u64 - 4, &[]);
        assert!(convert_exit(area.as_bytes_mut()).is_ok());
        record::io(area.as_bytes_mut(), 0, 4, 7, 1, AREA_SIZE as u64 - 3, &[]);
        assert!(convert_exit(area.as_bytes_mut()).is_err());
    }

    #[test]
    fn mmio_read_and_write() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::mmio(area.as_bytes_mut(), 0xd000_0000, 4, true, &[1, 2, 3, 4]);
        assert_eq!(
            single(&mut area),
            VmExit::MmioWrite {
                addr: 0xd000_0000,
                data: &[1, 2, 3, 4]
            }
        );
        record::mmio(area.as_bytes_mut(), 0xd000_0010, 8, false, &[]);
        match single(&mut area) {
            VmExit::MmioRead { addr, data } => {
                assert_eq!(addr, 0xd000_0010);
                assert_eq!(data.len(), 8);
                data.copy_from_slice(&[9; 8]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            &area.as_bytes()[MMIO_DATA_OFFSET..MMIO_DATA_OFFSET + 8],
            &[9; 8]
        );
        for bad in [0, 9, u32::MAX] {
            record::mmio(area.as_bytes_mut(), 0, bad, false, &[]);
            assert_eq!(
                convert_exit(area.as_bytes_mut()).unwrap_err(),
                ExitError::MmioLength(bad)
            );
        }
    }

    #[test]
    fn simple_exits() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        let cases = [
            (KVM_EXIT_HLT, VmExit::Hlt),
            (KVM_EXIT_SHUTDOWN, VmExit::TripleFault),
            (
                KVM_EXIT_IRQ_WINDOW_OPEN,
                VmExit::Other {
                    reason: KVM_EXIT_IRQ_WINDOW_OPEN,
                },
            ),
            (0xdead, VmExit::Other { reason: 0xdead }),
        ];
        for (reason, want) in cases {
            record::exit_reason(area.as_bytes_mut(), reason);
            assert_eq!(single(&mut area), want);
        }
        record::exit_reason(area.as_bytes_mut(), KVM_EXIT_INTR);
        assert!(matches!(
            convert_exit(area.as_bytes_mut()),
            Ok(RunExit::Kicked)
        ));
    }

    #[test]
    fn system_events_map_to_their_kind() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        for (ty, want) in [
            (KVM_SYSTEM_EVENT_SHUTDOWN, SystemEvent::PowerOff),
            (KVM_SYSTEM_EVENT_RESET, SystemEvent::Reset),
            (KVM_SYSTEM_EVENT_CRASH, SystemEvent::Crash),
            (
                KVM_SYSTEM_EVENT_WAKEUP,
                SystemEvent::Other(KVM_SYSTEM_EVENT_WAKEUP),
            ),
        ] {
            record::system_event(area.as_bytes_mut(), ty);
            assert_eq!(single(&mut area), VmExit::SystemEvent(want));
        }
    }

    #[test]
    fn fail_entry_and_debug_carry_their_fields() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        let union = offset_of!(kvm_run, __bindgen_anon_1);
        record::exit_reason(area.as_bytes_mut(), KVM_EXIT_FAIL_ENTRY);
        area.as_bytes_mut()[union..union + 8].copy_from_slice(&0x8000_0021u64.to_ne_bytes());
        area.as_bytes_mut()[union + 8..union + 12].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            single(&mut area),
            VmExit::FailEntry {
                reason: 0x8000_0021,
                cpu: 3
            }
        );

        record::exit_reason(area.as_bytes_mut(), KVM_EXIT_DEBUG);
        area.as_bytes_mut()[union..union + 4].copy_from_slice(&1u32.to_ne_bytes());
        area.as_bytes_mut()[union + 8..union + 16].copy_from_slice(&0x1234u64.to_ne_bytes());
        assert_eq!(
            single(&mut area),
            VmExit::Debug {
                pc: 0x1234,
                exception: 1
            }
        );
    }

    #[test]
    fn emulation_failure_reports_instruction_bytes_only_when_flagged() {
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::emulation_failure(area.as_bytes_mut(), Some(&[0xcc]));
        assert_eq!(
            single(&mut area),
            VmExit::InternalError {
                suberror: KVM_INTERNAL_ERROR_EMULATION,
                insn: Some(InsnBytes::new(&[0xcc])),
            }
        );

        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::emulation_failure(area.as_bytes_mut(), None);
        assert_eq!(
            single(&mut area),
            VmExit::InternalError {
                suberror: KVM_INTERNAL_ERROR_EMULATION,
                insn: None,
            }
        );

        // An oversized byte count is clamped to the 15 bytes the structure has.
        let mut area = RunAreaBuf::new(AREA_SIZE);
        record::emulation_failure(area.as_bytes_mut(), Some(&[0x90; 15]));
        area.as_bytes_mut()[offset_of!(kvm_run, __bindgen_anon_1) + 16] = 200;
        match single(&mut area) {
            VmExit::InternalError {
                insn: Some(insn), ..
            } => assert_eq!(insn.as_slice(), &[0x90; 15]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_or_misaligned_areas_are_refused() {
        let mut area = RunAreaBuf::new(KVM_RUN_SIZE - 1);
        assert_eq!(
            convert_exit(area.as_bytes_mut()).unwrap_err(),
            ExitError::AreaTooSmall {
                len: KVM_RUN_SIZE - 1
            }
        );
        let mut area = RunAreaBuf::new(AREA_SIZE + 1);
        assert_eq!(
            convert_exit(&mut area.as_bytes_mut()[1..]).unwrap_err(),
            ExitError::Misaligned
        );
        // A bare kvm_run without data pages converts non-I/O exits and refuses I/O.
        let mut area = RunAreaBuf::new(KVM_RUN_SIZE);
        record::exit_reason(area.as_bytes_mut(), KVM_EXIT_HLT);
        assert!(convert_exit(area.as_bytes_mut()).is_ok());
        record::io(area.as_bytes_mut(), 0, 1, 0, 1, 4096, &[]);
        assert!(convert_exit(area.as_bytes_mut()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn io_exits_are_accepted_exactly_when_they_fit(
            direction in 0u8..3,
            size in 0u8..9,
            port: u16,
            count in 0u32..3000,
            offset in proptest::prop_oneof![0u64..(AREA_SIZE as u64 + 16), proptest::num::u64::ANY],
        ) {
            let mut area = RunAreaBuf::new(AREA_SIZE);
            record::io(area.as_bytes_mut(), direction, size, port, count, offset, &[]);
            let base = area.as_bytes().as_ptr() as usize;
            let len = u64::from(size) * u64::from(count);
            let fits = matches!(size, 1 | 2 | 4)
                && count > 0
                && direction < 2
                && offset >= KVM_RUN_SIZE as u64
                && offset.checked_add(len).is_some_and(|end| end <= AREA_SIZE as u64);
            match convert_exit(area.as_bytes_mut()) {
                Ok(RunExit::Exits(exits)) => {
                    proptest::prop_assert!(fits);
                    proptest::prop_assert_eq!(exits.len(), count as usize);
                    for (i, exit) in exits.enumerate() {
                        let (p, at, n) = match exit {
                            VmExit::IoIn { port, data } => (port, data.as_ptr() as usize, data.len()),
                            VmExit::IoOut { port, data } => (port, data.as_ptr() as usize, data.len()),
                            _ => (0, 0, 0),
                        };
                        proptest::prop_assert_eq!(p, port);
                        proptest::prop_assert_eq!(n, usize::from(size));
                        proptest::prop_assert_eq!(at - base, offset as usize + i * n);
                    }
                }
                Ok(RunExit::Kicked) => proptest::prop_assert!(false, "an I/O exit became a kick"),
                Err(_) => proptest::prop_assert!(!fits),
            }
        }
    }

    #[test]
    fn buffers_round_trip_their_bytes() {
        let area = RunAreaBuf::from_bytes(&[1, 2, 3], 5);
        assert_eq!(area.as_bytes(), &[1, 2, 3, 0, 0]);
        let area = RunAreaBuf::from_bytes(&[1, 2, 3], 2);
        assert_eq!(area.as_bytes(), &[1, 2]);
        assert!(
            ExitError::IoData { offset: 1, len: 2 }
                .to_string()
                .contains("0x1")
        );
    }
}
