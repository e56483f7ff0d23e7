//! The committed recordings of the project's guests replayed against the VMM's devices, without
//! `/dev/kvm`; and recordings changed so that the replay must name the exit that differs.

use std::path::PathBuf;

use vmkit_exits::ExitKind;
use vmkit_exits::record::{Attribution, Record, RecordReader, RecordedExit};
use vmkit_fuzzing::replay::Mismatch;

use super::*;

fn recordings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/recordings")
}

fn committed(name: &str) -> PathBuf {
    recordings_dir().join(format!("{name}.vmrec"))
}

fn records(name: &str) -> Vec<Record> {
    RecordReader::new(File::open(committed(name)).unwrap())
        .unwrap()
        .read_all()
        .unwrap()
}

fn replay_records(records: Vec<Record>) -> Result<ReplayReport> {
    replay(Recording::from_records(records).unwrap())
}

/// The replay's divergence.
fn divergence(result: Result<ReplayReport>) -> ReplayError {
    let err = result.unwrap_err();
    match err.downcast::<ReplayError>() {
        Ok(err) => err,
        Err(err) => panic!("not a divergence: {err:#}"),
    }
}

#[test]
fn every_committed_recording_replays_as_recorded() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(recordings_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "vmrec") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let exits = records(&name)
            .iter()
            .filter(|r| matches!(r, Record::Exit(_)))
            .count() as u64;
        let recording = Recording::read(File::open(&path).unwrap()).unwrap();
        let report = replay(recording).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(report.exits, exits, "{name}");
        assert!(!report.truncated, "{name}");
        // The clock reading of the CMOS at build, at least.
        assert!(report.host_events >= 1, "{name}");
        eprintln!("{name}: {report}");
        if name == "blk" || name == "hostile" {
            assert!(
                report.disk_calls > 0 && report.memory_accesses > 0,
                "{name}: {report}"
            );
        }
        if name == "hostile" {
            assert!(report.interrupts > 0, "{name}: {report}");
        }
        names.push(name);
    }
    names.sort();
    for guest in ["assist", "blk", "exits", "hello", "hostile", "paging"] {
        assert!(names.iter().any(|n| n == guest), "no recording of {guest}");
    }
}

#[test]
fn a_flipped_byte_of_a_uart_answer_names_its_exit() {
    let mut records = records("hello");
    // The 10th read of the line status register.
    let (seq, port) = records
        .iter_mut()
        .filter_map(|r| match r {
            Record::Exit(exit) => match &mut exit.exit {
                RecordedExit::IoIn { port, data } => Some((exit.seq, *port, data)),
                _ => None,
            },
            _ => None,
        })
        .nth(9)
        .map(|(seq, port, data)| {
            data[0] ^= 0x20;
            (seq, port)
        })
        .unwrap();
    let err = divergence(replay_records(records));
    let exit = err.exit().unwrap();
    assert_eq!(
        (exit.seq, exit.kind, exit.addr, exit.size),
        (seq, ExitKind::IoIn, Some(u64::from(port)), 1)
    );
    assert!(
        matches!(err.mismatch(), Some(Mismatch::Data { .. })),
        "{err}"
    );
}

#[test]
fn a_missing_interrupt_names_its_exit() {
    // The hostile guest's disks signal by MSI-X and its serial attack raises COM1's line: drop
    // the first interrupt-line call recorded during an exit.
    let mut records = records("hostile");
    let at = records
        .iter()
        .position(|r| {
            matches!(
                r,
                Record::Interrupt {
                    at: Attribution::Exit(_),
                    ..
                }
            )
        })
        .unwrap();
    let Record::Interrupt {
        at: Attribution::Exit(seq),
        line,
        ..
    } = records.remove(at)
    else {
        unreachable!()
    };
    let err = divergence(replay_records(records));
    assert_eq!(err.exit().unwrap().seq, seq);
    let Some(Mismatch::Interrupts { expected, actual }) = err.mismatch() else {
        panic!("{err}")
    };
    assert_eq!(actual.0.len(), expected.0.len() + 1, "{err}");
    assert!(actual.0.iter().any(|call| call.line == line));
}

#[test]
fn a_disk_that_answers_otherwise_names_the_request() {
    // The blk guest's first sector read, served other bytes: the data the device copies to
    // guest memory differs from the recorded DMA.
    let mut records = records("blk");
    let seq = records
        .iter()
        .find_map(|r| match r {
            Record::Disk {
                at: Attribution::Exit(seq),
                op: vmkit_exits::record::DiskOp::Read,
                ..
            } => Some(*seq),
            _ => None,
        })
        .unwrap();
    for record in records.iter_mut() {
        if let Record::Memory {
            at: Attribution::Exit(s),
            direction: vmkit_exits::record::Direction::Write,
            data,
            ..
        } = record
            && *s == seq
            && data.len() == 512
        {
            let bytes = vec![0x5a; 512];
            let hash = vmkit_exits::record::ContentHash::of(&bytes);
            *data = vmkit_exits::record::Data::Stored { hash, len: 512 };
            let payload = Record::Payload { hash, bytes };
            records.insert(0, payload);
            break;
        }
    }
    let err = divergence(replay_records(records));
    assert_eq!(err.exit().unwrap().seq, seq);
    assert!(
        matches!(err.mismatch(), Some(Mismatch::MemoryWrite { .. })),
        "{err}"
    );
}

#[test]
fn the_facts_are_read_as_the_recording_wrote_them() {
    let recording = Recording::read(File::open(committed("hostile")).unwrap()).unwrap();
    let vm = RecordedVm::of(&recording).unwrap();
    assert_eq!(vm.memory, 128 << 20);
    assert!(vm.com1 && !vm.testdev);
    assert_eq!(vm.disks.len(), 2);
    assert_eq!(vm.disks[0].size, 1 << 20);
    assert!(!vm.disks[0].read_only);
    assert!(vm.disks[0].serial.starts_with(b"fe009a"));
    let exits = Recording::read(File::open(committed("exits")).unwrap()).unwrap();
    assert!(RecordedVm::of(&exits).unwrap().testdev);

    // What `recording::Recording::create` writes for a read-only disk with a short ID.
    let mut serial = [0u8; SERIAL_LEN];
    serial[..3].copy_from_slice(b"abc");
    assert_eq!(
        parse_disk(1, "1 size=4096 readonly=on serial=abc"),
        Some(DiskFacts {
            size: 4096,
            read_only: true,
            serial
        })
    );
    for bad in [
        "0 size=4096 readonly=on serial=abc",
        "1 size=x readonly=on serial=",
        "1 size=4096 readonly=maybe serial=",
        "1 size=4096 readonly=on serial=\u{100}",
        "1 size=4096 readonly=on serial=abcdefghijklmnopqrstu",
        "1 size=4096",
    ] {
        assert_eq!(parse_disk(1, bad), None, "{bad}");
    }

    let meta = |key: &str, value: &str| Record::Meta {
        key: key.into(),
        value: value.into(),
    };
    let facts = |records: Vec<Record>| {
        let recording = Recording::from_records(records).unwrap();
        RecordedVm::of(&recording).map_err(|e| e.to_string())
    };
    let vmm = meta("vmm", "reference-vmm 0.1.0");
    assert_eq!(
        facts(vec![meta("vmm", "another-vmm 1")]).unwrap_err(),
        "not a recording of the reference VMM (its facts name \"another-vmm 1\")"
    );
    assert_eq!(
        facts(vec![vmm.clone()]).unwrap_err(),
        "the recording does not say the guest's RAM size"
    );
    let memory = meta("memory", "134217728");
    assert_eq!(
        facts(vec![vmm.clone(), memory.clone(), meta("com1", "yes")]).unwrap_err(),
        "the recording's fact com1 is Some(\"yes\"), not on or off"
    );
    let (com1, testdev) = (meta("com1", "off"), meta("testdev", "off"));
    assert_eq!(
        facts(vec![
            vmm.clone(),
            memory.clone(),
            com1.clone(),
            testdev.clone(),
            meta("disk", "0 size=512")
        ])
        .unwrap_err(),
        "the recording's disk 0 is unreadable: \"0 size=512\""
    );
    let vm = facts(vec![vmm.clone(), memory.clone(), com1, testdev]).unwrap();
    assert!(!vm.com1 && vm.disks.is_empty());

    // A RAM size no layout takes is an error before anything is built.
    let err = replay(
        Recording::from_records([
            vmm,
            meta("memory", "12345"),
            meta("com1", "on"),
            meta("testdev", "on"),
        ])
        .unwrap(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").starts_with("the recording's RAM size: "),
        "{err:#}"
    );
}

#[test]
fn the_command_says_how_the_replay_went() {
    assert_eq!(run(&committed("paging")).unwrap(), 0);
    let dir = std::env::temp_dir().join(format!("reference-vmm-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A recording whose last exit did not stop the VM.
    let mut records = records("paging");
    for record in records.iter_mut().rev() {
        if let Record::Exit(exit) = record {
            exit.action = vmkit_exits::ExitAction::Resume;
            break;
        }
    }
    let mut bytes = vmkit_exits::record::header().to_vec();
    for record in &records {
        record.encode(&mut bytes);
    }
    let changed = dir.join("changed.vmrec");
    std::fs::write(&changed, &bytes).unwrap();
    assert_eq!(run(&changed).unwrap(), exit_code::REPLAY_DIVERGED);
    // Not a recording, or a recording of another VMM: an error naming the file.
    let other = dir.join("other.vmrec");
    std::fs::write(&other, b"hello").unwrap();
    let err = run(&other).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        format!(
            "--replay {}: cannot read the recording: not an exit recording (its first bytes \
             are not the recording magic)",
            other.display()
        )
    );
    let mut foreign = vmkit_exits::record::header().to_vec();
    Record::Meta {
        key: "vmm".into(),
        value: "another".into(),
    }
    .encode(&mut foreign);
    std::fs::write(&other, &foreign).unwrap();
    let err = run(&other).unwrap_err();
    assert!(format!("{err:#}").starts_with("--replay "), "{err:#}");
    let err = run(&dir.join("missing.vmrec")).unwrap_err();
    assert!(
        format!("{err:#}").contains("--replay: cannot open"),
        "{err:#}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
