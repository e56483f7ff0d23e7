use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::codec::{TAG_EXIT, put_u64};
use super::*;
use crate::action::StopReason;

/// A sink the test can read back, and tell to fail.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    fail: Arc<Mutex<Option<io::ErrorKind>>>,
}

impl Sink {
    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(kind) = *self.fail.lock().unwrap() {
            return Err(kind.into());
        }
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        match *self.fail.lock().unwrap() {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

fn insn() -> Option<InsnBytes> {
    Some(InsnBytes::new(&[0xf0, 0x0f, 0xc7, 0x0e]))
}

fn exit(seq: u64, exit: RecordedExit, route: Route, action: ExitAction) -> Record {
    Record::Exit(ExitRecord {
        seq,
        vcpu: 3,
        exit,
        route,
        action,
    })
}

/// One record of every kind and form.
fn every_record() -> Vec<Record> {
    let at = Attribution::Exit(7);
    let outside = Attribution::Outside { exits_before: 9 };
    let hash = ContentHash::of(b"sector");
    let stops = [
        StopReason::GuestExit(0x31),
        StopReason::Reset,
        StopReason::PowerOff,
        StopReason::TripleFault,
        StopReason::Crash,
        StopReason::EntryFailed(u64::MAX),
        StopReason::InternalError {
            suberror: 1,
            insn: insn(),
        },
        StopReason::InternalError {
            suberror: 2,
            insn: None,
        },
        StopReason::Unhandled(u32::MAX),
    ];
    let mut records = vec![
        Record::Meta {
            key: "guest".into(),
            value: "hello ✓".into(),
        },
        exit(
            0,
            RecordedExit::IoIn {
                port: 0x3fd,
                data: vec![0x60],
            },
            Route::Device,
            ExitAction::Resume,
        ),
        exit(
            1,
            RecordedExit::IoOut {
                port: u16::MAX,
                data: vec![1, 2, 3],
            },
            Route::BadSize,
            ExitAction::Resume,
        ),
        exit(
            2,
            RecordedExit::MmioRead {
                addr: u64::MAX,
                data: vec![0xff; 8],
            },
            Route::Unclaimed,
            ExitAction::Resume,
        ),
        exit(
            3,
            RecordedExit::MmioWrite {
                addr: 0xfee0_0000,
                data: vec![],
            },
            Route::BadSize,
            ExitAction::Resume,
        ),
        exit(4, RecordedExit::Hlt, Route::NotAnAccess, ExitAction::Halt),
        exit(
            u64::MAX >> 1,
            RecordedExit::TripleFault,
            Route::NotAnAccess,
            ExitAction::Stop(StopReason::TripleFault),
        ),
        exit(
            6,
            RecordedExit::FailEntry {
                reason: 0x21,
                cpu: 2,
            },
            Route::NotAnAccess,
            ExitAction::Stop(StopReason::EntryFailed(0x21)),
        ),
        exit(
            7,
            RecordedExit::InternalError {
                suberror: 1,
                insn: insn(),
            },
            Route::NotAnAccess,
            ExitAction::Resume,
        ),
        exit(
            8,
            RecordedExit::InternalError {
                suberror: 3,
                insn: None,
            },
            Route::NotAnAccess,
            ExitAction::Resume,
        ),
        exit(
            9,
            RecordedExit::Debug {
                pc: 0x1000,
                exception: 1,
            },
            Route::NotAnAccess,
            ExitAction::Resume,
        ),
        exit(
            10,
            RecordedExit::Other { reason: 42 },
            Route::NotAnAccess,
            ExitAction::Stop(StopReason::Unhandled(42)),
        ),
        Record::Interrupt {
            at,
            line: 4,
            event: LineEvent::Edge,
            ok: true,
        },
        Record::Interrupt {
            at: outside,
            line: u32::MAX,
            event: LineEvent::Assert,
            ok: false,
        },
        Record::Interrupt {
            at,
            line: 16,
            event: LineEvent::Deassert,
            ok: true,
        },
        Record::Msi {
            at,
            address: 0xfee0_0000,
            data: u32::MAX,
            ok: true,
        },
        Record::Clock {
            at: outside,
            since_epoch: Duration::new(1_700_000_000, 999_999_999),
        },
        Record::Memory {
            at,
            gpa: 0x1000,
            direction: Direction::Read,
            data: Data::Inline(vec![1; 16]),
        },
        Record::Memory {
            at,
            gpa: 0x2000,
            direction: Direction::Write,
            data: Data::Stored { hash, len: 512 },
        },
        Record::Disk {
            at,
            disk: 1,
            op: DiskOp::Read,
            offset: 4096,
            len: 512,
            hash: Some(hash),
            ok: true,
        },
        Record::Disk {
            at,
            disk: 0,
            op: DiskOp::Flush,
            offset: 0,
            len: 0,
            hash: None,
            ok: false,
        },
        Record::Disk {
            at,
            disk: 0,
            op: DiskOp::Write,
            offset: 0,
            len: 512,
            hash: Some(hash),
            ok: true,
        },
        Record::Payload {
            hash,
            bytes: b"sector".to_vec(),
        },
        Record::Truncated { at: outside },
    ];
    for (i, event) in [
        SystemEvent::Reset,
        SystemEvent::PowerOff,
        SystemEvent::Crash,
        SystemEvent::Other(77),
    ]
    .into_iter()
    .enumerate()
    {
        records.push(exit(
            20 + i as u64,
            RecordedExit::SystemEvent(event),
            Route::NotAnAccess,
            ExitAction::Stop(stops[i + 1]),
        ));
    }
    for (i, stop) in stops.into_iter().enumerate() {
        records.push(exit(
            30 + i as u64,
            RecordedExit::IoOut {
                port: 0xf4,
                data: vec![i as u8],
            },
            Route::Device,
            ExitAction::Stop(stop),
        ));
    }
    records
}

fn file_of(records: &[Record]) -> Vec<u8> {
    let mut bytes = header().to_vec();
    for record in records {
        record.encode(&mut bytes);
    }
    bytes
}

fn read(bytes: &[u8]) -> Result<Vec<Record>, ReadError> {
    RecordReader::new(bytes)?.read_all()
}

#[test]
fn every_record_round_trips() {
    let records = every_record();
    assert_eq!(read(&file_of(&records)).unwrap(), records);
    // One record at a time too: each payload is consumed exactly.
    for record in &records {
        let one = std::slice::from_ref(record);
        assert_eq!(read(&file_of(one)).unwrap(), one);
    }
}

#[test]
fn a_port_exit_takes_about_a_dozen_bytes() {
    let mut bytes = Vec::new();
    exit(
        1_000_000,
        RecordedExit::IoOut {
            port: 0x3f8,
            data: vec![b'h'],
        },
        Route::Device,
        ExitAction::Resume,
    )
    .encode(&mut bytes);
    assert_eq!(bytes.len(), 13, "{bytes:x?}");
}

#[test]
fn recorded_exits_convert_both_ways() {
    for record in every_record() {
        let Record::Exit(mut exit) = record else {
            continue;
        };
        let kind = exit.exit.kind();
        let copy = exit.exit.clone();
        let back = exit.exit.as_exit();
        assert_eq!(back.kind(), kind);
        assert_eq!(RecordedExit::from_exit(&back), copy);
    }
}

#[test]
fn attributions_and_names() {
    for record in every_record() {
        match &record {
            Record::Meta { .. } | Record::Payload { .. } => assert_eq!(record.attribution(), None),
            Record::Exit(e) => assert_eq!(record.attribution(), Some(Attribution::Exit(e.seq))),
            _ => assert!(record.attribution().is_some()),
        }
    }
    let hash = ContentHash::of(b"");
    assert_eq!(hash.to_string(), "e3b0c44298fc1c14");
    assert_eq!(Data::Stored { hash, len: 9 }.len(), 9);
    assert!(Data::Inline(vec![]).is_empty());
}

#[test]
fn headers_are_checked() {
    assert!(matches!(read(b""), Err(ReadError::BadMagic)));
    assert!(matches!(read(b"VMKITRE"), Err(ReadError::BadMagic)));
    assert!(matches!(
        read(b"NOTAREC\0\x01\0\0\0"),
        Err(ReadError::BadMagic)
    ));
    assert!(matches!(
        read(b"VMKITREC\x01\0"),
        Err(ReadError::Truncated { offset: 0 })
    ));
    let err = read(b"VMKITREC\x02\0\0\0").unwrap_err();
    assert!(matches!(err, ReadError::UnsupportedVersion(2)));
    assert_eq!(
        err.to_string(),
        "recording format version 2 is not supported (this reader reads version 1)"
    );
    assert_eq!(read(&header()).unwrap(), []);
}

#[test]
fn bad_records_are_typed_errors_at_their_offset() {
    let with = |tail: &[u8]| {
        let mut bytes = header().to_vec();
        bytes.extend_from_slice(tail);
        read(&bytes).unwrap_err()
    };
    let at = HEADER_LEN as u64;
    assert!(matches!(with(&[TAG_EXIT]), ReadError::Truncated { offset } if offset == at));
    assert!(matches!(
        with(&[TAG_EXIT, 5, 1]),
        ReadError::Truncated { .. }
    ));
    assert!(matches!(
        with(&[TAG_EXIT, 0x80]),
        ReadError::Truncated { .. }
    ));
    let err = with(&[0x42, 0]);
    assert!(matches!(err, ReadError::UnknownTag { tag: 0x42, .. }));
    assert_eq!(
        err.to_string(),
        "the record at byte 12 has unknown tag 0x42"
    );
    let mut huge = vec![TAG_EXIT];
    put_u64(&mut huge, MAX_RECORD_LEN + 1);
    assert!(matches!(with(&huge), ReadError::TooLong { .. }));
    let mut overflow = vec![TAG_EXIT];
    overflow.extend_from_slice(&[0xff; 9]);
    overflow.push(0x02);
    assert!(matches!(with(&overflow), ReadError::Malformed { .. }));
    let err = with(&[TAG_EXIT, 1, 0]);
    assert!(
        err.to_string()
            .ends_with("a field runs past the end of the record"),
        "{err}"
    );
    // Fields outside their ranges.
    for (payload, reason) in [
        (&[0, 0, 11, 0][..], "unknown exit kind"),
        (&[0, 0, 0, 9], "unknown route"),
        (&[0, 0, 0, 0, 0xff, 0xff, 0x04, 0], "port exceeds 16 bits"),
        (&[0, 0, 0, 0, 0, 0, 3], "unknown exit action"),
        (&[0, 0, 0, 0, 0, 0, 2, 9], "unknown stop reason"),
        (&[0, 0, 6, 3, 9], "unknown system event"),
        (
            &[0, 0, 4, 3, 1, 2],
            "bytes left over after the record's fields",
        ),
        (&[0, 0, 8, 3, 1, 2, 0], "flag is neither 0 nor 1"),
        (
            &[0, 0, 8, 3, 1, 1, 16],
            "a field runs past the end of the record",
        ),
        (
            &[0, 0xff, 0xff, 0xff, 0xff, 0x10, 4, 3, 0],
            "vCPU id exceeds 32 bits",
        ),
    ] {
        let mut tail = vec![TAG_EXIT, payload.len() as u8];
        tail.extend_from_slice(payload);
        let err = with(&tail);
        assert!(err.to_string().ends_with(reason), "{err} for {payload:x?}");
    }
    let mut long_insn = vec![0, 0, 8, 3, 1, 1, 16];
    long_insn.extend_from_slice(&[0x90; 16]);
    let mut tail = vec![TAG_EXIT, long_insn.len() as u8];
    tail.extend_from_slice(&long_insn);
    assert!(with(&tail).to_string().contains("longer than 15 bytes"));
    for (tag, payload, reason) in [
        (codec::TAG_META, &[1, 0xff, 0][..], "text is not UTF-8"),
        (codec::TAG_INTERRUPT, &[0, 0, 3, 1], "unknown line event"),
        (
            codec::TAG_CLOCK,
            &[0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03],
            "exceed 10^9",
        ),
        (codec::TAG_MEMORY, &[0, 0, 2], "unknown memory direction"),
        (codec::TAG_MEMORY, &[0, 0, 0, 2], "unknown data form"),
        (codec::TAG_DISK, &[0, 0, 3], "unknown disk operation"),
        (
            codec::TAG_MSI,
            &[0, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 1],
            "MSI data exceeds 32 bits",
        ),
    ] {
        let mut tail = vec![tag, payload.len() as u8];
        tail.extend_from_slice(payload);
        let err = with(&tail);
        assert!(err.to_string().ends_with(reason), "{err}");
    }
}

#[test]
fn the_reader_stops_at_the_first_error() {
    let mut bytes = file_of(&every_record()[..3]);
    bytes.push(0x42);
    bytes.push(0);
    let mut reader = RecordReader::new(&bytes[..]).unwrap();
    assert!(reader.by_ref().take(3).all(|r| r.is_ok()));
    assert!(reader.next().unwrap().is_err());
    assert!(reader.next().is_none());
    assert!(reader.next().is_none());
}

/// A reader whose input fails after its first bytes.
struct Failing(usize);

impl io::Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("device gone"));
        }
        let bytes = header();
        let n = buf.len().min(self.0).min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn input_errors_are_reported() {
    assert!(matches!(
        RecordReader::new(Failing(0)),
        Err(ReadError::Io(_))
    ));
    let mut reader = RecordReader::new(Failing(HEADER_LEN)).unwrap();
    let err = reader.next().unwrap().unwrap_err();
    assert_eq!(err.to_string(), "cannot read the recording");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn the_writer_writes_what_the_reader_reads() {
    let sink = Sink::default();
    let writer = RecordWriter::new(sink.clone(), u64::MAX);
    let records = every_record();
    for record in &records {
        writer.write(record);
    }
    assert!(sink.bytes().is_empty(), "buffered");
    writer.flush();
    assert_eq!(read(&sink.bytes()).unwrap(), records);
    let stats = writer.finish();
    assert_eq!(stats.records, records.len() as u64);
    assert_eq!(stats.bytes, sink.bytes().len() as u64);
    assert_eq!(stats.dropped, 0);
    assert!(stats.to_string().ends_with(" bytes written"), "{stats}");
    // After finish, records are dropped and counted.
    writer.write(&records[0]);
    assert_eq!(writer.stats().dropped, 1);
    assert!(format!("{writer:?}").contains("RecordWriter"));
}

#[test]
fn payloads_are_stored_once_before_their_first_use() {
    let sink = Sink::default();
    let writer = RecordWriter::new(sink.clone(), u64::MAX);
    let sector = vec![0xa5u8; 512];
    let first = writer.store_payload(&sector);
    assert_eq!(writer.store_payload(&sector), first);
    let other = writer.store_payload(&[1, 2, 3]);
    assert_ne!(first, other);
    let stats = writer.finish();
    assert_eq!((stats.records, stats.payloads), (2, 2));
    let records = read(&sink.bytes()).unwrap();
    assert_eq!(
        records[0],
        Record::Payload {
            hash: first,
            bytes: sector
        }
    );
}

#[test]
fn exits_are_sequenced_and_attributed_on_their_thread() {
    let writer = RecordWriter::new(io::sink(), u64::MAX);
    assert_eq!(
        writer.attribution(),
        Attribution::Outside { exits_before: 0 }
    );
    let seq = writer.begin_exit();
    {
        let _scope = ExitScope::enter(seq);
        assert_eq!(current_exit(), Some(seq));
        assert_eq!(writer.attribution(), Attribution::Exit(seq));
        {
            let _inner = ExitScope::enter(seq + 5);
            assert_eq!(current_exit(), Some(seq + 5));
        }
        assert_eq!(current_exit(), Some(seq));
        // Another thread handles no exit.
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(current_exit(), None);
                assert_eq!(current_vcpu(), 0);
                set_current_vcpu(4);
                assert_eq!(current_vcpu(), 4);
                assert_eq!(
                    writer.attribution(),
                    Attribution::Outside { exits_before: 1 }
                );
            });
        });
    }
    assert_eq!(current_exit(), None);
    assert_eq!(writer.exits(), 1);
}

#[test]
fn the_size_limit_ends_the_recording_with_a_marker() {
    let sink = Sink::default();
    let limit = 200;
    let writer = RecordWriter::new(sink.clone(), limit);
    let record = exit(
        0,
        RecordedExit::IoOut {
            port: 0x3f8,
            data: vec![b'x'],
        },
        Route::Device,
        ExitAction::Resume,
    );
    for _ in 0..100 {
        writer.write(&record);
    }
    writer.store_payload(&[0; 1000]);
    let stats = writer.finish();
    assert!(stats.limit_reached);
    assert!(stats.bytes <= limit, "{stats:?}");
    assert_eq!(stats.records + stats.dropped, 101);
    assert!(stats.to_string().contains("size limit reached"), "{stats}");
    let records = read(&sink.bytes()).unwrap();
    assert_eq!(records.len() as u64, stats.records + 1);
    assert_eq!(
        records.last(),
        Some(&Record::Truncated {
            at: Attribution::Exit(0)
        })
    );
    // A limit below the header is raised to hold the header and a marker.
    let tiny = Sink::default();
    let writer = RecordWriter::new(tiny.clone(), 0);
    writer.write(&record);
    writer.finish();
    let records = read(&tiny.bytes()).unwrap();
    assert!(matches!(records[..], [Record::Truncated { .. }]));
}

#[test]
fn a_failing_sink_stops_the_recording_without_a_panic() {
    let sink = Sink::default();
    *sink.fail.lock().unwrap() = Some(io::ErrorKind::StorageFull);
    let writer = RecordWriter::new(sink.clone(), u64::MAX);
    let big = vec![7u8; 70_000];
    writer.store_payload(&big);
    let stats = writer.stats();
    assert_eq!(stats.failure, Some(io::ErrorKind::StorageFull));
    assert_eq!((stats.records, stats.bytes, stats.dropped), (0, 0, 1));
    writer.write(&Record::Meta {
        key: "k".into(),
        value: "v".into(),
    });
    let stats = writer.finish();
    assert_eq!(stats.dropped, 2);
    assert!(stats.to_string().contains("write failed"), "{stats}");
    // A sink that fails only on flush.
    let sink = Sink::default();
    let writer = RecordWriter::new(sink.clone(), u64::MAX);
    *sink.fail.lock().unwrap() = Some(io::ErrorKind::BrokenPipe);
    assert_eq!(writer.finish().failure, Some(io::ErrorKind::BrokenPipe));
    // Over-long records are dropped, not written.
    let writer = RecordWriter::new(io::sink(), u64::MAX);
    writer.write(&Record::Payload {
        hash: ContentHash([0; 32]),
        bytes: vec![0; MAX_RECORD_LEN as usize + 1],
    });
    let stats = writer.finish();
    assert_eq!(stats.dropped, 1);
    assert!(stats.to_string().contains("1 records dropped"), "{stats}");
}

#[test]
fn threads_share_one_writer() {
    let sink = Sink::default();
    let writer = Arc::new(RecordWriter::new(sink.clone(), u64::MAX));
    std::thread::scope(|s| {
        for vcpu in 0..4u32 {
            let writer = &writer;
            s.spawn(move || {
                set_current_vcpu(vcpu);
                for _ in 0..1000 {
                    let seq = writer.begin_exit();
                    writer.write(&Record::Exit(ExitRecord {
                        seq,
                        vcpu: current_vcpu(),
                        exit: RecordedExit::Hlt,
                        route: Route::NotAnAccess,
                        action: ExitAction::Halt,
                    }));
                }
            });
        }
    });
    writer.finish();
    let mut seqs: Vec<u64> = read(&sink.bytes())
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Exit(e) => e.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..4000).collect::<Vec<_>>());
}

proptest! {
    /// No input panics the reader, and what it reads encodes back to what it read.
    #[test]
    fn any_bytes_after_a_header_read_without_panic(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = header().to_vec();
        bytes.extend_from_slice(&tail);
        let records: Vec<Record> = RecordReader::new(&bytes[..])
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        prop_assert_eq!(read(&file_of(&records)).unwrap(), records);
    }

    /// Mutating one byte of a valid recording gives records or a typed error, never a panic.
    #[test]
    fn mutated_recordings_read_without_panic(at in any::<usize>(), value in any::<u8>()) {
        let mut bytes = file_of(&every_record());
        let at = at % bytes.len();
        bytes[at] = value;
        if let Ok(reader) = RecordReader::new(&bytes[..]) {
            for record in reader {
                if let Err(e) = record {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
