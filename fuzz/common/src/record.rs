//! Fuzz surface `record_reader`: vmkit-exits' recording reader on arbitrary bytes, as a replay
//! meets a recording file it did not write (truncated, corrupted or hostile).
//!
//! The input is read twice: as a whole file (magic and version included, so the header checks
//! are reached) and as records after a valid header (so mutations need not keep the header to
//! reach the record decoder). Checked: nothing panics; the reader stops at its first error; and
//! every record it returns encodes to bytes that read back to the same record (decoding accepts
//! nothing the encoder could not have meant).

use vmkit_exits::record::{
    Attribution, ContentHash, Data, Direction, DiskOp, ExitRecord, LineEvent, Record, RecordReader,
    RecordedExit, Route, header,
};
use vmkit_exits::{ExitAction, InsnBytes, StopReason, SystemEvent};

/// Most records taken from one input (a record takes at least two bytes, so inputs bound it).
pub const MAX_RECORDS: usize = 4096;

/// The records `bytes` reads to, and whether reading ended on an error.
fn read(bytes: &[u8]) -> (Vec<Record>, bool) {
    let Ok(reader) = RecordReader::new(bytes) else {
        return (Vec::new(), true);
    };
    let mut records = Vec::new();
    for record in reader.take(MAX_RECORDS) {
        match record {
            Ok(record) => records.push(record),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                return (records, true);
            }
        }
    }
    (records, false)
}

/// A recording of `records`.
pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut bytes = header().to_vec();
    for record in records {
        record.encode(&mut bytes);
    }
    bytes
}

/// The target body.
pub fn run(data: &[u8]) {
    let mut with_header = header().to_vec();
    with_header.extend_from_slice(data);
    for input in [data, &with_header] {
        let (records, _) = read(input);
        let (again, failed) = read(&encode(&records));
        assert!(!failed, "re-encoded records read back");
        assert_eq!(again, records);
    }
}

/// Seeds: a recording of every kind of record (as [`run`] reads it: after the header), the same
/// cut short, and a whole file with a later version.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let at = Attribution::Exit(3);
    let hash = ContentHash::of(&[0xa5; 512]);
    let exit = |seq, exit, route, action| {
        Record::Exit(ExitRecord {
            seq,
            vcpu: 0,
            exit,
            route,
            action,
        })
    };
    let records = vec![
        Record::Meta {
            key: "guest".into(),
            value: "built-in hello guest".into(),
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
            RecordedExit::MmioWrite {
                addr: 0xc000_3000,
                data: vec![0; 4],
            },
            Route::Device,
            ExitAction::Resume,
        ),
        exit(
            2,
            RecordedExit::InternalError {
                suberror: 1,
                insn: Some(InsnBytes::new(&[0x0f, 0x0b])),
            },
            Route::NotAnAccess,
            ExitAction::Stop(StopReason::InternalError {
                suberror: 1,
                insn: None,
            }),
        ),
        exit(
            3,
            RecordedExit::SystemEvent(SystemEvent::Other(9)),
            Route::NotAnAccess,
            ExitAction::Stop(StopReason::Unhandled(9)),
        ),
        Record::Payload {
            hash,
            bytes: vec![0xa5; 512],
        },
        Record::Disk {
            at,
            disk: 0,
            op: DiskOp::Read,
            offset: 512,
            len: 512,
            hash: Some(hash),
            ok: true,
        },
        Record::Memory {
            at,
            gpa: 0x20_2000,
            direction: Direction::Write,
            data: Data::Stored { hash, len: 512 },
        },
        Record::Memory {
            at,
            gpa: 0x20_1000,
            direction: Direction::Read,
            data: Data::Inline(vec![0; 16]),
        },
        Record::Interrupt {
            at,
            line: 16,
            event: LineEvent::Assert,
            ok: true,
        },
        Record::Msi {
            at: Attribution::Outside { exits_before: 4 },
            address: 0xfee0_0000,
            data: 0x41,
            ok: true,
        },
        Record::Clock {
            at,
            since_epoch: std::time::Duration::new(1_700_000_000, 5),
        },
        exit(4, RecordedExit::Hlt, Route::NotAnAccess, ExitAction::Halt),
        Record::Truncated {
            at: Attribution::Exit(5),
        },
    ];
    let records_only = encode(&records)[header().len()..].to_vec();
    let cut = records_only[..records_only.len() / 2].to_vec();
    let mut later = encode(&records);
    later[8] = 2;
    vec![
        ("every_record", records_only),
        ("cut_short", cut),
        ("later_version", later),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_read_as_intended_and_pass() {
        let seeds = seeds();
        for (_, bytes) in &seeds {
            run(bytes);
        }
        let mut whole = header().to_vec();
        whole.extend_from_slice(&seeds[0].1);
        let (records, failed) = read(&whole);
        assert!(!failed);
        assert_eq!(records.len(), 14);
        let mut cut = header().to_vec();
        cut.extend_from_slice(&seeds[1].1);
        assert!(read(&cut).1, "a cut recording ends on an error");
        assert!(read(&seeds[2].1).1, "a later version is refused");
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("record_reader", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 64]);
        run(&(0..=255).collect::<Vec<u8>>());
        for tag in 0..=255u8 {
            run(&[tag]);
            run(&[tag, 0]);
            run(&[tag, 4, 1, 2, 3, 4]);
            run(&[
                tag, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
            ]);
        }
    }

    /// Writes the seed files; run with `cargo test -- --ignored write_seeds`.
    #[test]
    #[ignore]
    fn write_seeds() {
        seed_files::write("record_reader", &seeds());
    }
}
