//! A small device recorded through vmkit-exits' recorder, replayed against a fresh instance,
//! and the recording mutated so that each comparison has to catch its difference.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmkit_exits::record::{
    Attribution, ContentHash, Data, Direction, DiskOp, ExitRecord, INLINE_MAX, LineEvent, Record,
    RecordReader, RecordWriter, RecordedExit, Route,
};
use vmkit_exits::{
    DeviceAction, ExitAction, ExitDispatcher, ExitKind, InterruptTrigger, IoBus, MmioBus,
    MsiTrigger, NoopTrigger, PioAddress, PioDevice, RecordingLine, RecordingMsi, StopReason,
    VmExit,
};

use super::*;

const BASE: u16 = 0x10;
const LINE: u32 = 5;
const MSI_ADDRESS: u64 = 0xfee0_0000;
/// Where the device's requests are, and where it copies a sector to.
const REQUESTS: u64 = 0x100;
const BUFFER: u64 = 0x1000;
const RAM: usize = 0x2000;
const SECTOR: usize = 512;

/// Guest memory, shared by the device and the replay.
#[derive(Clone)]
struct Ram(Arc<Mutex<Vec<u8>>>);

impl Ram {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(vec![0; RAM])))
    }
}

impl ReplayMemory for Ram {
    fn write(&mut self, gpa: u64, bytes: &[u8]) -> bool {
        let mut ram = self.0.lock().unwrap();
        let Some(target) = ram.get_mut(gpa as usize..gpa as usize + bytes.len()) else {
            return false;
        };
        target.copy_from_slice(bytes);
        true
    }

    fn read(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let ram = self.0.lock().unwrap();
        let Some(source) = ram.get(gpa as usize..gpa as usize + buf.len()) else {
            return false;
        };
        buf.copy_from_slice(source);
        true
    }
}

/// What the device reaches outside its registers.
trait Env: Send + Sync {
    fn now(&self) -> Duration;
    fn disk_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn disk_write(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn disk_flush(&self) -> io::Result<()>;
    fn mem_read(&self, gpa: u64, buf: &mut [u8]);
    fn mem_write(&self, gpa: u64, bytes: &[u8]);
}

/// The host's side, recorded as vmkit-devices' decorators record it.
struct Live {
    recorder: Arc<RecordWriter>,
    secs: AtomicU64,
    disk: Mutex<Vec<u8>>,
    ram: Ram,
}

impl Live {
    fn disk(&self, op: DiskOp, offset: u64, bytes: Option<&[u8]>, ok: bool) {
        let len = bytes.map_or(0, |b| b.len() as u64);
        let hash = bytes
            .filter(|b| ok && !b.is_empty())
            .map(|b| self.recorder.store_payload(b));
        self.recorder.write(&Record::Disk {
            at: self.recorder.attribution(),
            disk: 0,
            op,
            offset,
            len,
            hash,
            ok,
        });
    }

    fn memory(&self, gpa: u64, direction: Direction, bytes: &[u8]) {
        let data = if bytes.len() > INLINE_MAX {
            Data::Stored {
                hash: self.recorder.store_payload(bytes),
                len: bytes.len() as u64,
            }
        } else {
            Data::Inline(bytes.to_vec())
        };
        self.recorder.write(&Record::Memory {
            at: self.recorder.attribution(),
            gpa,
            direction,
            data,
        });
    }
}

impl Env for Live {
    fn now(&self) -> Duration {
        let now = Duration::from_secs(self.secs.fetch_add(1, Ordering::Relaxed));
        self.recorder.write(&Record::Clock {
            at: self.recorder.attribution(),
            since_epoch: now,
        });
        now
    }

    fn disk_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let disk = self.disk.lock().unwrap();
        let result = match disk.get(offset as usize..offset as usize + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::other("past the end")),
        };
        self.disk(DiskOp::Read, offset, Some(buf), result.is_ok());
        result
    }

    fn disk_write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        let result = match disk.get_mut(offset as usize..offset as usize + buf.len()) {
            Some(bytes) => {
                bytes.copy_from_slice(buf);
                Ok(())
            }
            None => Err(io::Error::other("past the end")),
        };
        self.disk(DiskOp::Write, offset, Some(buf), result.is_ok());
        result
    }

    fn disk_flush(&self) -> io::Result<()> {
        self.disk(DiskOp::Flush, 0, None, true);
        Ok(())
    }

    fn mem_read(&self, gpa: u64, buf: &mut [u8]) {
        assert!(self.ram.clone().read(gpa, buf));
        self.memory(gpa, Direction::Read, buf);
    }

    fn mem_write(&self, gpa: u64, bytes: &[u8]) {
        assert!(self.ram.clone().write(gpa, bytes));
        self.memory(gpa, Direction::Write, bytes);
    }
}

/// The replay's side: the recorded sources and the replay's memory.
struct Replayed {
    clock: RecordedClock,
    disk: RecordedDisk,
    ram: Ram,
}

impl Env for Replayed {
    fn now(&self) -> Duration {
        self.clock.now()
    }
    fn disk_read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.disk.read_exact_at(buf, offset)
    }
    fn disk_write(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.disk.write_all_at(buf, offset)
    }
    fn disk_flush(&self) -> io::Result<()> {
        self.disk.flush()
    }
    fn mem_read(&self, gpa: u64, buf: &mut [u8]) {
        assert!(self.ram.clone().read(gpa, buf));
    }
    fn mem_write(&self, gpa: u64, bytes: &[u8]) {
        assert!(self.ram.clone().write(gpa, bytes));
    }
}

/// Ports `BASE..BASE + 8`: 0 reads a counter; 1 pulses the line; 2 asserts (non-zero) or
/// deasserts it; 3 sends a message with the byte written; 4 reads the clock's seconds; 5 serves
/// request `n` (its first byte names a sector: the sector goes to the buffer, the request to the
/// disk, then a flush, a status byte and an edge); 6 powers off.
struct Probe<E> {
    env: E,
    counter: AtomicU8,
    line: Box<dyn InterruptTrigger>,
    msi: Box<dyn MsiTrigger>,
}

impl<E: Env> Probe<E> {
    fn new(env: E, line: impl InterruptTrigger + 'static, msi: impl MsiTrigger + 'static) -> Self {
        // Built as the CMOS is: reading the clock, outside any exit.
        env.now();
        Self {
            env,
            counter: AtomicU8::new(7),
            line: Box::new(line),
            msi: Box::new(msi),
        }
    }

    fn serve(&self, n: u8) {
        let request = REQUESTS + 4 * u64::from(n);
        let mut header = [0u8; 4];
        self.env.mem_read(request, &mut header);
        let sector = u64::from(header[0]);
        let mut buf = vec![0u8; SECTOR];
        let status = match self.env.disk_read(&mut buf, sector * SECTOR as u64) {
            Ok(()) => {
                self.env.mem_write(BUFFER, &buf);
                0
            }
            Err(_) => 1,
        };
        let _ = self.env.disk_write(&header, 4096 + sector * 4);
        let _ = self.env.disk_flush();
        self.env.mem_write(request + 3, &[status]);
        let _ = self.line.trigger();
    }
}

impl<E: Env> PioDevice for Probe<E> {
    fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
        let value = match offset {
            0 => self.counter.fetch_add(1, Ordering::Relaxed),
            4 => self.env.now().as_secs() as u8,
            _ => 0,
        };
        data.fill(value);
    }

    fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        let value = data.first().copied().unwrap_or(0);
        match offset {
            1 => drop(self.line.trigger()),
            2 if value != 0 => drop(self.line.assert()),
            2 => drop(self.line.deassert()),
            3 => drop(self.msi.send(MSI_ADDRESS, u32::from(value))),
            5 => self.serve(value),
            6 => return DeviceAction::Stop(StopReason::PowerOff),
            _ => {}
        }
        DeviceAction::Resume
    }
}

/// A sink the tests read back.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One step of a recorded run.
#[derive(Clone)]
enum Step {
    In(u16, usize),
    Out(u16, Vec<u8>),
    Mmio(u64, usize),
    Exit(VmExitKind),
    /// The guest writes memory (no exit).
    Poke(u64, Vec<u8>),
    /// Another thread of the VMM raises the line (no exit).
    Host,
}

#[derive(Clone, Copy)]
enum VmExitKind {
    Hlt,
    Debug,
}

fn out(offset: u16, value: u8) -> Step {
    Step::Out(BASE + offset, vec![value])
}

/// Every kind of side effect, a read nobody claims and one of a bad size, host events, and the
/// power-off.
fn scenario() -> Vec<Step> {
    vec![
        Step::In(BASE, 1),
        Step::In(BASE, 4),
        out(1, 0),
        out(2, 1),
        out(2, 0),
        out(3, 0x41),
        Step::In(BASE + 4, 1),
        Step::Poke(REQUESTS, vec![2, 0, 0, 0]),
        Step::Poke(REQUESTS + 4, vec![200, 0, 0, 0]),
        out(5, 0),
        Step::Host,
        out(5, 1),
        Step::In(0x80, 2),
        Step::In(BASE, 3),
        Step::Mmio(0xd000_0000, 4),
        Step::Exit(VmExitKind::Debug),
        Step::Exit(VmExitKind::Hlt),
        out(6, 0),
    ]
}

/// The disk the live device starts with: sector `k` full of `k`.
fn disk_image() -> Vec<u8> {
    (0..16u8)
        .flat_map(|k| [k; SECTOR])
        .chain([0; 4096])
        .collect()
}

fn facts(recorder: &RecordWriter) {
    for (key, value) in [("guest", "probe"), ("disk", "0 size=12288"), ("disk", "1")] {
        recorder.write(&Record::Meta {
            key: key.into(),
            value: value.into(),
        });
    }
}

/// Records `steps` against a live device.
fn record(steps: &[Step]) -> Vec<Record> {
    let sink = Sink::default();
    let recorder = Arc::new(RecordWriter::new(sink.clone(), u64::MAX));
    facts(&recorder);
    let ram = Ram::new();
    let live = Live {
        recorder: recorder.clone(),
        secs: AtomicU64::new(1_000),
        disk: Mutex::new(disk_image()),
        ram: ram.clone(),
    };
    let line = Arc::new(RecordingLine::new(NoopTrigger, LINE, recorder.clone()));
    let msi = RecordingMsi::new(NoopTrigger, recorder.clone());
    let probe = Arc::new(Probe::new(live, line.clone(), msi));
    let io = Arc::new(IoBus::new());
    io.register(BASE..BASE + 8, probe).unwrap();
    let dispatcher =
        ExitDispatcher::new(io, Arc::new(MmioBus::new())).with_recorder(recorder.clone());
    for step in steps {
        match step {
            Step::In(port, size) => {
                let mut data = vec![0; *size];
                dispatcher.dispatch(VmExit::IoIn {
                    port: *port,
                    data: &mut data,
                });
            }
            Step::Out(port, data) => {
                dispatcher.dispatch(VmExit::IoOut { port: *port, data });
            }
            Step::Mmio(addr, size) => {
                let mut data = vec![0; *size];
                dispatcher.dispatch(VmExit::MmioRead {
                    addr: *addr,
                    data: &mut data,
                });
            }
            Step::Exit(VmExitKind::Hlt) => drop(dispatcher.dispatch(VmExit::Hlt)),
            Step::Exit(VmExitKind::Debug) => drop(dispatcher.dispatch(VmExit::Debug {
                pc: 0x1000,
                exception: 1,
            })),
            Step::Poke(gpa, bytes) => assert!(ram.clone().write(*gpa, bytes)),
            Step::Host => line.trigger().unwrap(),
        }
    }
    recorder.finish();
    let bytes = sink.0.lock().unwrap().clone();
    RecordReader::new(&bytes[..]).unwrap().read_all().unwrap()
}

/// Replays `records` against a fresh device, with the replay's memory unless `memory` is
/// false.
fn replay_with(records: Vec<Record>, memory: bool) -> Result<ReplayReport, ReplayError> {
    let mut bytes = vmkit_exits::record::header().to_vec();
    for record in &records {
        record.encode(&mut bytes);
    }
    let recording = Recording::read(&bytes[..])?;
    assert_eq!(recording.meta("guest"), Some("probe"));
    let disks: Vec<_> = recording.meta_values("disk").collect();
    assert_eq!(disks, ["0 size=12288", "1"]);
    let replay = Replay::new(recording);
    let ram = Ram::new();
    let env = Replayed {
        clock: replay.clock(),
        disk: replay.disk(0),
        ram: ram.clone(),
    };
    let probe = Arc::new(Probe::new(env, replay.line(LINE), replay.msi()));
    let io = Arc::new(IoBus::new());
    io.register(BASE..BASE + 8, probe).unwrap();
    let dispatcher = ExitDispatcher::new(io, Arc::new(MmioBus::new()));
    let replay = if memory {
        replay.with_memory(ram)
    } else {
        replay
    };
    replay.run(&dispatcher)
}

fn replay(records: Vec<Record>) -> Result<ReplayReport, ReplayError> {
    replay_with(records, true)
}

/// The exit record of sequence number `seq`.
fn exit_mut(records: &mut [Record], seq: u64) -> &mut ExitRecord {
    records
        .iter_mut()
        .find_map(|r| match r {
            Record::Exit(exit) if exit.seq == seq => Some(exit),
            _ => None,
        })
        .unwrap()
}

/// The sequence number of the first exit `pick` accepts.
fn seq_of(records: &[Record], pick: impl Fn(&ExitRecord) -> bool) -> u64 {
    records
        .iter()
        .find_map(|r| match r {
            Record::Exit(exit) if pick(exit) => Some(exit.seq),
            _ => None,
        })
        .unwrap()
}

fn is_out(exit: &ExitRecord, offset: u16, value: u8) -> bool {
    exit.exit
        == RecordedExit::IoOut {
            port: BASE + offset,
            data: vec![value],
        }
}

#[test]
fn a_recording_replays_against_a_fresh_device() {
    let records = record(&scenario());
    let report = replay(records.clone()).unwrap();
    assert_eq!(
        report,
        ReplayReport {
            exits: 15,
            // Edge, assert, deassert, and one edge per request.
            interrupts: 5,
            msis: 1,
            clock_reads: 1,
            // Two requests: a header read, a sector and a status written for the first, a
            // status for the second (whose sector is past the end of the disk).
            memory_accesses: 5,
            // Read, write, flush per request.
            disk_calls: 6,
            // The clock read at build, the line raised by another thread.
            host_events: 2,
            truncated: false,
        }
    );
    assert_eq!(
        report.to_string(),
        "15 exits replayed, every answer as recorded; compared 5 interrupt-line calls, 1 \
         messages, 1 clock readings, 5 guest-memory accesses and 6 disk calls; 2 host events \
         not compared"
    );
    // Without guest memory, the devices read zeroes where the guest had written requests: the
    // first request asks for sector 0 instead of 2.
    let err = replay_with(records, false).unwrap_err();
    let seq = seq_of(&record(&scenario()), |e| is_out(e, 5, 0));
    assert_eq!(err.exit().unwrap().seq, seq);
    assert!(
        matches!(err.mismatch(), Some(Mismatch::Disk { .. })),
        "{err}"
    );
}

#[test]
fn a_flipped_returned_byte_names_its_exit() {
    let mut records = record(&scenario());
    let exit = exit_mut(&mut records, 1);
    let RecordedExit::IoIn { data, .. } = &mut exit.exit else {
        panic!("{exit:?}")
    };
    assert_eq!(data, &[8; 4]);
    data[2] ^= 0x01;
    let err = replay(records).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exit 1 (io-in of 4 bytes at 0x10, vCPU 0) diverges: it returned [08 08 08 08] where \
         the recording has [08 08 09 08]"
    );
    assert_eq!(
        err.exit(),
        Some(&ExitId {
            seq: 1,
            vcpu: 0,
            kind: ExitKind::IoIn,
            addr: Some(0x10),
            size: 4
        })
    );
}

#[test]
fn a_missing_interrupt_names_its_exit() {
    let mut records = record(&scenario());
    let seq = seq_of(&records, |e| is_out(e, 2, 1));
    let at = records
        .iter()
        .position(|r| {
            matches!(
                r,
                Record::Interrupt {
                    event: LineEvent::Assert,
                    ..
                }
            )
        })
        .unwrap();
    records.remove(at);
    let err = replay(records).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "exit {seq} (io-out of 1 byte at 0x12, vCPU 0) diverges: its interrupt-line calls \
             are line 5 assert where the recording has none"
        )
    );
}

#[test]
fn every_answer_and_side_effect_is_compared() {
    let records = record(&scenario());
    let first_request = seq_of(&records, |e| is_out(e, 5, 0));
    let second_request = seq_of(&records, |e| is_out(e, 5, 1));
    type Mutation = Box<dyn Fn(&mut Vec<Record>) -> u64>;
    let cases: Vec<(Mutation, &str)> = vec![
        (
            Box::new(|r| {
                exit_mut(r, 0).route = Route::Unclaimed;
                0
            }),
            "it was answered as Device where the recording has Unclaimed",
        ),
        (
            Box::new(|r| {
                let last = seq_of(r, |e| is_out(e, 6, 0));
                exit_mut(r, last).action = ExitAction::Resume;
                last
            }),
            "it told the vCPU Stop(PowerOff) where the recording has Resume",
        ),
        (
            Box::new(|r| {
                for record in r.iter_mut() {
                    if let Record::Msi { data, .. } = record {
                        *data = 0x42;
                    }
                }
                seq_of(r, |e| is_out(e, 3, 0x41))
            }),
            "its messages are 0xfee00000 <- 0x41 where the recording has 0xfee00000 <- 0x42",
        ),
        (
            Box::new(|r| {
                // A second reading recorded in the exit that read the clock once.
                let at = r
                    .iter()
                    .position(|record| {
                        matches!(
                            record,
                            Record::Clock {
                                at: Attribution::Exit(_),
                                ..
                            }
                        )
                    })
                    .unwrap();
                let extra = r[at].clone();
                r.insert(at, extra);
                seq_of(r, |e| {
                    matches!(e.exit, RecordedExit::IoIn { port: 0x14, .. })
                })
            }),
            "it read the wall clock 1 times where the recording has 2",
        ),
        (
            Box::new(move |r| {
                // The recording says the flush of the first request was a write.
                for record in r.iter_mut() {
                    if let Record::Disk {
                        at: Attribution::Exit(seq),
                        op: op @ DiskOp::Flush,
                        ..
                    } = record
                        && *seq == first_request
                    {
                        *op = DiskOp::Write;
                    }
                }
                first_request
            }),
            "its disk calls are disk 0 read of 512 bytes at 0x400",
        ),
        (
            Box::new(move |r| {
                // The status byte the second request left.
                for record in r.iter_mut() {
                    if let Record::Memory {
                        at: Attribution::Exit(seq),
                        direction: Direction::Write,
                        data: Data::Inline(bytes),
                        ..
                    } = record
                        && *seq == second_request
                    {
                        bytes[0] = 9;
                    }
                }
                second_request
            }),
            "it left [01] at 0x107 in guest memory where the recording has [09]",
        ),
        (
            Box::new(move |r| {
                // The sector the first request copied, as the recording has it.
                let mut changed = vec![2u8; SECTOR];
                changed[100] = 0;
                r.insert(
                    0,
                    Record::Payload {
                        hash: ContentHash::of(&changed),
                        bytes: changed.clone(),
                    },
                );
                for record in r.iter_mut() {
                    if let Record::Memory {
                        direction: Direction::Write,
                        data: Data::Stored { hash, .. },
                        ..
                    } = record
                    {
                        *hash = ContentHash::of(&changed);
                    }
                }
                first_request
            }),
            "at 0x1064 in guest memory where the recording has [00 02 02 02",
        ),
        (
            Box::new(move |r| {
                for record in r.iter_mut() {
                    if let Record::Memory {
                        at: Attribution::Exit(seq),
                        direction: Direction::Read,
                        gpa,
                        ..
                    } = record
                        && *seq == first_request
                    {
                        *gpa = RAM as u64;
                    }
                }
                first_request
            }),
            "the 4 bytes a device read at 0x2000 are not all in the replay's guest memory",
        ),
        (
            Box::new(move |r| {
                for record in r.iter_mut() {
                    if let Record::Memory {
                        at: Attribution::Exit(seq),
                        direction: Direction::Write,
                        gpa,
                        ..
                    } = record
                        && *seq == second_request
                    {
                        *gpa = RAM as u64 - 1;
                    }
                }
                second_request
            }),
            "it left [00] at 0x1fff in guest memory where the recording has [01]",
        ),
        (
            Box::new(move |r| {
                for record in r.iter_mut() {
                    if let Record::Memory {
                        at: Attribution::Exit(seq),
                        direction: Direction::Write,
                        gpa,
                        ..
                    } = record
                        && *seq == second_request
                    {
                        *gpa = RAM as u64;
                    }
                }
                second_request
            }),
            "the 1 bytes a device wrote at 0x2000 are not all in the replay's guest memory",
        ),
    ];
    for (mutate, message) in cases {
        let mut records = records.clone();
        let seq = mutate(&mut records);
        let err = replay(records).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(message), "{text}\nshould say: {message}");
        assert_eq!(err.exit().map(|e| e.seq), Some(seq), "{text}");
    }
}

#[test]
fn the_recorded_answers_of_the_host_are_given_back() {
    // The replay gives each source the answer the recording holds: a failed line or message
    // fails again, a failed disk call fails again; a call the recording does not hold fails
    // (disks) or succeeds (lines).
    let at = Attribution::Exit(0);
    let disk = |op, offset, len, hash, ok| Record::Disk {
        at,
        disk: 1,
        op,
        offset,
        len,
        hash,
        ok,
    };
    let sector = vec![0x5a; 16];
    let hash = ContentHash::of(&sector);
    let records = vec![
        Record::Payload {
            hash,
            bytes: sector.clone(),
        },
        Record::Interrupt {
            at,
            line: 3,
            event: LineEvent::Edge,
            ok: false,
        },
        Record::Msi {
            at,
            address: 1,
            data: 2,
            ok: false,
        },
        disk(DiskOp::Read, 0, 16, Some(hash), true),
        disk(DiskOp::Read, 16, 16, None, false),
        disk(DiskOp::Write, 32, 16, None, false),
        disk(DiskOp::Write, 48, 16, Some(hash), true),
        disk(DiskOp::Flush, 0, 0, None, false),
        disk(DiskOp::Flush, 0, 0, None, true),
        disk(DiskOp::Read, 64, 0, None, true),
        Record::Exit(ExitRecord {
            seq: 0,
            vcpu: 2,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }),
    ];
    let replay = Replay::new(Recording::from_records(records.clone()).unwrap());
    let (line, msi, disk1) = (replay.line(3), replay.msi(), replay.disk(1));
    assert_eq!(line.line(), 3);
    assert!(format!("{line:?} {msi:?} {disk1:?} {:?}", replay.clock()).contains("Before(0)"));
    assert_eq!(disk1.disk(), 1);
    // Outside any exit: lines and messages succeed, disks refuse.
    line.trigger().unwrap();
    msi.send(9, 9).unwrap();
    assert!(disk1.flush().is_err());
    assert!(format!("{replay:?}").contains("exits: 1"));
    let report = replay
        .run_with(|exit| {
            assert_eq!(exit, VmExit::Hlt);
            assert_eq!(vmkit_exits::record::current_exit(), Some(0));
            assert!(line.trigger().is_err());
            assert!(msi.send(1, 2).is_err());
            let mut buf = [0u8; 16];
            disk1.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf[..], sector[..]);
            assert!(disk1.read_exact_at(&mut buf, 16).is_err());
            assert!(disk1.write_all_at(&[1; 16], 32).is_err());
            disk1.write_all_at(&sector, 48).unwrap();
            assert!(disk1.flush().is_err());
            disk1.flush().unwrap();
            disk1.read_exact_at(&mut [], 64).unwrap();
            ExitAction::Halt
        })
        .unwrap();
    assert_eq!(
        (report.interrupts, report.msis, report.disk_calls),
        (1, 1, 7)
    );

    // Calls the recording does not hold: an extra line call and message succeed (and differ),
    // disk calls fail.
    let replay = Replay::new(Recording::from_records(records).unwrap());
    let (line, disk1) = (replay.line(4), replay.disk(1));
    let err = replay
        .run_with(|_| {
            line.assert().unwrap();
            line.deassert().unwrap();
            let mut buf = [0u8; 16];
            assert!(disk1.read_exact_at(&mut buf, 1).is_err());
            assert!(disk1.write_all_at(&buf, 16).is_err());
            assert!(disk1.flush().is_err());
            ExitAction::Halt
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "exit 0 (hlt, vCPU 2) diverges: its interrupt-line calls are line 4 assert, line 4 \
         deassert where the recording has line 3 edge"
    );
}

#[test]
fn disk_calls_that_differ_are_refused_and_named() {
    let at = Attribution::Exit(0);
    let payload = vec![1u8; 8];
    let hash = ContentHash::of(&payload);
    let records = |len: u64, stored: bool| {
        let mut records = vec![Record::Disk {
            at,
            disk: 0,
            op: DiskOp::Read,
            offset: 0,
            len,
            hash: Some(hash),
            ok: true,
        }];
        if stored {
            records.insert(
                0,
                Record::Payload {
                    hash,
                    bytes: payload.clone(),
                },
            );
        }
        records.push(Record::Exit(ExitRecord {
            seq: 0,
            vcpu: 0,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }));
        records
    };
    // The payload is missing, or its length is not the read's.
    for (len, stored) in [(8, false), (4, true)] {
        let replay = Replay::new(Recording::from_records(records(len, stored)).unwrap());
        let disk = replay.disk(0);
        let err = replay
            .run_with(|_| {
                let mut buf = vec![0u8; len as usize];
                assert!(disk.read_exact_at(&mut buf, 0).is_err());
                (ExitAction::Halt, Route::NotAnAccess)
            })
            .unwrap_err();
        assert!(
            matches!(err.mismatch(), Some(Mismatch::Disk { .. })),
            "{err}"
        );
        assert!(
            err.to_string().ends_with(&format!(
                "where the recording has disk 0 read of {len} bytes at 0x0 ({hash})"
            )),
            "{err}"
        );
    }
    // A write of other data.
    let records = vec![
        Record::Disk {
            at,
            disk: 0,
            op: DiskOp::Write,
            offset: 0,
            len: 8,
            hash: Some(hash),
            ok: true,
        },
        Record::Exit(ExitRecord {
            seq: 0,
            vcpu: 0,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }),
    ];
    let replay = Replay::new(Recording::from_records(records).unwrap());
    let disk = replay.disk(0);
    let err = replay
        .run_with(|_| {
            assert!(disk.write_all_at(&[2; 8], 0).is_err());
            ExitAction::Halt
        })
        .unwrap_err();
    assert_eq!(
        err.mismatch(),
        Some(&Mismatch::Disk {
            expected: Calls(vec![DiskCall {
                disk: 0,
                op: DiskOp::Write,
                offset: 0,
                len: 8,
                hash: Some(hash)
            }]),
            actual: Calls(vec![DiskCall {
                disk: 0,
                op: DiskOp::Write,
                offset: 0,
                len: 8,
                hash: Some(ContentHash::of(&[2; 8]))
            }]),
        })
    );
}

#[test]
fn exits_replay_in_sequence_order_and_host_events_are_not_compared() {
    // Two vCPUs: their exits interleave in the file; records of an exit the recording does not
    // hold (cut off) and records outside any exit are host events.
    let exit = |seq, vcpu| {
        Record::Exit(ExitRecord {
            seq,
            vcpu,
            exit: RecordedExit::IoOut {
                port: 0x80,
                data: vec![seq as u8],
            },
            route: Route::Unclaimed,
            action: ExitAction::Resume,
        })
    };
    let reading = |at, secs| Record::Clock {
        at,
        since_epoch: Duration::from_secs(secs),
    };
    let records = vec![
        Record::Meta {
            key: "vcpus".into(),
            value: "2".into(),
        },
        reading(Attribution::Outside { exits_before: 0 }, 5),
        reading(Attribution::Outside { exits_before: 0 }, 6),
        exit(1, 1),
        exit(0, 0),
        reading(Attribution::Outside { exits_before: 2 }, 7),
        reading(Attribution::Outside { exits_before: 3 }, 8),
        Record::Interrupt {
            at: Attribution::Outside { exits_before: 2 },
            line: 4,
            event: LineEvent::Edge,
            ok: true,
        },
        reading(Attribution::Exit(9), 99),
        exit(3, 0),
        Record::Truncated {
            at: Attribution::Exit(4),
        },
    ];
    let recording = Recording::from_records(records).unwrap();
    assert_eq!(recording.meta("vcpus"), Some("2"));
    assert_eq!(recording.meta("disk"), None);
    assert!(recording.is_truncated());
    assert_eq!(recording.host_events(), 6);
    assert_eq!(recording.exits().len(), 3);
    assert!(recording.effects(0).is_none());
    assert!(recording.payloads().is_empty());
    let replay = Replay::new(recording);
    let clock = replay.clock();
    // At build, the first host reading; a second reading takes the next one of the same place.
    assert_eq!(clock.now(), Duration::from_secs(5));
    assert_eq!(clock.now(), Duration::from_secs(6));
    assert_eq!(clock.now(), Duration::from_secs(6));
    let mut seen = Vec::new();
    let report = replay
        .run_with(|exit| {
            let VmExit::IoOut { data, .. } = exit else {
                panic!("{exit:?}")
            };
            seen.push(data[0]);
            (ExitAction::Resume, Route::Unclaimed)
        })
        .unwrap();
    assert_eq!(seen, [0, 1, 3]);
    assert!(report.truncated);
    assert_eq!(report.host_events, 6);
    assert!(
        report
            .to_string()
            .ends_with("; the recording was truncated")
    );

    // After the last exit, the host readings recorded before it are past: the last reading
    // given repeats.
    assert_eq!(clock.now(), Duration::from_secs(6));
}

#[test]
fn host_readings_between_exits_are_given_to_devices_that_read_then() {
    let records = vec![
        Record::Clock {
            at: Attribution::Outside { exits_before: 1 },
            since_epoch: Duration::from_secs(6),
        },
        Record::Exit(ExitRecord {
            seq: 0,
            vcpu: 0,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }),
        Record::Exit(ExitRecord {
            seq: 1,
            vcpu: 0,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }),
    ];
    let replay = Replay::new(Recording::from_records(records).unwrap());
    let clock = replay.clock();
    // Before the first exit, the reading recorded after it is not given yet: a clock read when
    // none was recorded reads the first host reading.
    assert_eq!(clock.now(), Duration::from_secs(6));
    let reader = replay.clock();
    let mut readings = Vec::new();
    let err = replay
        .run_with(|_| {
            readings.push(reader.now());
            ExitAction::Halt
        })
        .unwrap_err();
    // A reading during an exit that recorded none repeats the last one, and differs.
    assert_eq!(readings, [Duration::from_secs(6)]);
    assert_eq!(
        err.mismatch(),
        Some(&Mismatch::ClockReads {
            expected: 0,
            actual: 1
        })
    );
}

#[test]
fn unusable_recordings_are_typed_errors() {
    let err = Replay::read(&b"not a recording"[..]).unwrap_err();
    assert_eq!(err.to_string(), "cannot read the recording");
    assert!(std::error::Error::source(&err).is_some());
    assert!(err.exit().is_none() && err.mismatch().is_none());
    // Cut inside a record.
    let mut bytes = vmkit_exits::record::header().to_vec();
    bytes.extend_from_slice(&[2, 10, 0]);
    assert!(matches!(
        Recording::read(&bytes[..]),
        Err(ReplayError::Read(_))
    ));

    let hlt = Record::Exit(ExitRecord {
        seq: 4,
        vcpu: 0,
        exit: RecordedExit::Hlt,
        route: Route::NotAnAccess,
        action: ExitAction::Halt,
    });
    let err = Recording::from_records([hlt.clone(), hlt.clone()]).unwrap_err();
    assert_eq!(err.to_string(), "the recording holds exit 4 twice");

    let hash = ContentHash::of(b"abc");
    let err = Recording::from_records([Record::Payload {
        hash,
        bytes: b"abd".to_vec(),
    }])
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("payload {hash} does not hash to its name")
    );

    // A memory record whose payload the recording does not hold: found when it is used.
    let memory = |direction| Record::Memory {
        at: Attribution::Exit(4),
        gpa: 0,
        direction,
        data: Data::Stored { hash, len: 3 },
    };
    for direction in [Direction::Read, Direction::Write] {
        let recording = Recording::from_records([memory(direction), hlt.clone()]).unwrap();
        assert_eq!(recording.effects(4).unwrap().memory.len(), 1);
        let err = Replay::new(recording)
            .with_memory(Ram::new())
            .run_with(|_| ExitAction::Halt)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("exit 4 refers to payload {hash}, which the recording does not hold")
        );
    }
}

#[test]
fn memory_is_loaded_as_the_guest_left_it_and_checked_as_the_devices_left_it() {
    // Within one exit: a device reads 0x10..0x14, writes 0x12, reads 0x10..0x18 (seeing its
    // own write) and writes 0x12 again. Only the first read's bytes and the part of the second
    // no earlier access covered are loaded; only the last write of 0x12 is compared.
    let at = Attribution::Exit(0);
    let access = |gpa, direction, bytes: &[u8]| Record::Memory {
        at,
        gpa,
        direction,
        data: Data::Inline(bytes.to_vec()),
    };
    let records = vec![
        access(0x10, Direction::Read, &[1, 2, 3, 4]),
        access(0x12, Direction::Write, &[9]),
        access(0x10, Direction::Read, &[1, 2, 9, 4, 5, 6, 7, 8]),
        access(0x12, Direction::Write, &[10]),
        Record::Exit(ExitRecord {
            seq: 0,
            vcpu: 0,
            exit: RecordedExit::Hlt,
            route: Route::NotAnAccess,
            action: ExitAction::Halt,
        }),
    ];
    let ram = Ram::new();
    let device_ram = ram.clone();
    let report = Replay::new(Recording::from_records(records).unwrap())
        .with_memory(ram.clone())
        .run_with(move |_| {
            let mut ram = device_ram.clone();
            let mut buf = [0u8; 8];
            assert!(ram.read(0x10, &mut buf));
            assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
            assert!(ram.write(0x12, &[9]));
            assert!(ram.write(0x12, &[10]));
            ExitAction::Halt
        })
        .unwrap();
    assert_eq!(report.memory_accesses, 4);
    assert_eq!(ram.0.lock().unwrap()[0x10..0x18], [1, 2, 10, 4, 5, 6, 7, 8]);
}

#[test]
fn ranges_say_what_no_earlier_access_covered() {
    let mut ranges = Ranges::default();
    assert_eq!(ranges.uncovered(0, 10), [(0, 10)]);
    ranges.add(4, 6);
    ranges.add(8, 12);
    ranges.add(5, 7);
    assert_eq!(ranges.0, [(4, 7), (8, 12)]);
    assert_eq!(ranges.uncovered(0, 20), [(0, 4), (7, 8), (12, 20)]);
    assert_eq!(ranges.uncovered(5, 6), []);
    assert_eq!(ranges.uncovered(13, 15), [(13, 15)]);
    assert_eq!(ranges.uncovered(0, 2), [(0, 2)]);
    ranges.add(7, 8);
    assert_eq!(ranges.0, [(4, 12)]);
}

#[test]
fn the_parts_of_a_divergence_print_plainly() {
    assert_eq!(Bytes(vec![]).to_string(), "[]");
    assert_eq!(format!("{:?}", Bytes(vec![0xde, 0xad])), "[de ad]");
    assert_eq!(Calls::<LineCall>(vec![]).to_string(), "none");
    let hash = ContentHash::of(b"x");
    let calls = Calls(vec![
        DiskCall {
            disk: 1,
            op: DiskOp::Flush,
            offset: 0,
            len: 0,
            hash: None,
        },
        DiskCall {
            disk: 0,
            op: DiskOp::Read,
            offset: 0x200,
            len: 512,
            hash: Some(hash),
        },
        DiskCall {
            disk: 0,
            op: DiskOp::Write,
            offset: 0,
            len: 1,
            hash: None,
        },
    ]);
    assert_eq!(
        calls.to_string(),
        format!(
            "disk 1 flush, disk 0 read of 512 bytes at 0x200 ({hash}), disk 0 write of 1 bytes at 0x0"
        )
    );
    let lines = Calls(vec![
        LineCall {
            line: 1,
            event: LineEvent::Edge,
        },
        LineCall {
            line: 2,
            event: LineEvent::Deassert,
        },
    ]);
    assert_eq!(lines.to_string(), "line 1 edge, line 2 deassert");
    let mmio = ExitId::of(&ExitRecord {
        seq: 3,
        vcpu: 1,
        exit: RecordedExit::MmioWrite {
            addr: 0xd000_0000,
            data: vec![1],
        },
        route: Route::Device,
        action: ExitAction::Resume,
    });
    assert_eq!(
        mmio.to_string(),
        "exit 3 (mmio-write of 1 byte at 0xd0000000, vCPU 1)"
    );
    let answer: Answer = ExitAction::Halt.into();
    assert_eq!(answer.route, None);
    let mut payloads = PayloadStore::new();
    payloads.insert(hash, b"x".to_vec()).unwrap();
    assert_eq!(payloads.len(), 1);
    assert_eq!(
        payloads.resolve(&Data::Stored { hash, len: 1 }),
        Some(&b"x"[..])
    );
    assert_eq!(payloads.resolve(&Data::Inline(vec![3])), Some(&[3][..]));
}
