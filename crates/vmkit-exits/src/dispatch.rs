//! The trap-and-emulate dispatcher: turns a [`VmExit`] into device calls and an [`ExitAction`].

use std::sync::Arc;

use log::warn;

use crate::action::{ExitAction, StopReason};
use crate::address::{MmioAddress, PioAddress};
use crate::bus::{IoBus, MmioBus};
use crate::device::DeviceAction;
use crate::exit::{SystemEvent, VmExit};
use crate::ratelimit::{Clock, LogLimit, MonotonicClock, RateLimiter, Suppressed};
use crate::record::{self, ExitRecord, ExitScope, Record, RecordWriter, RecordedExit, Route};
use crate::stats::{Access, DispatchCounters, ExitStats};

/// What a read nobody claims returns: all ones, as an undecoded bus floats high.
pub const UNCLAIMED_BYTE: u8 = 0xff;

/// Whether `size` is an access size the dispatcher routes: 1, 2, 4 or 8 bytes.
pub const fn is_valid_access_size(size: usize) -> bool {
    matches!(size, 1 | 2 | 4 | 8)
}

/// Routes exits to the devices on its buses and decides what the vCPU does next.
///
/// - `IoIn`/`IoOut`/`MmioRead`/`MmioWrite` go to the range that holds the whole access; reads
///   fill `data` (bytes a device leaves unwritten read as [`UNCLAIMED_BYTE`]); a device's
///   [`DeviceAction::Stop`] stops the VM. Accesses nobody claims, and accesses whose size is not
///   1, 2, 4 or 8, are answered as hardware answers them: reads return all ones, writes are
///   dropped. They are counted and logged at `warn` level, rate-limited per dispatcher.
/// - `Hlt` → [`ExitAction::Halt`]; `TripleFault` → stop with [`StopReason::TripleFault`];
///   system events `Reset`/`PowerOff`/`Crash` → stop with `Reset`/`PowerOff`/`Crash`, and an
///   unknown event type `t` → stop with `Unhandled(t)`.
/// - `FailEntry` → stop with `EntryFailed`; `InternalError` → stop with `InternalError` (which
///   [`EmulationAssist::resolve`](crate::EmulationAssist::resolve) may turn into an injected
///   `#UD`); `Debug` → resume (no debugger is attached; the exit is counted); `Other` → stop
///   with `Unhandled`.
///
/// Every exit is counted by kind; see [`stats`](Self::stats). With a recorder
/// ([`with_recorder`](Self::with_recorder)) every exit and its answer is also recorded.
#[derive(Debug)]
pub struct ExitDispatcher {
    pio: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    counters: DispatchCounters,
    log: RateLimiter,
    recorder: Option<Arc<RecordWriter>>,
}

impl ExitDispatcher {
    /// A dispatcher over `pio` and `mmio` that logs bad accesses at the default
    /// [`LogLimit`] on the monotonic clock.
    pub fn new(pio: Arc<IoBus>, mmio: Arc<MmioBus>) -> Self {
        Self {
            pio,
            mmio,
            counters: DispatchCounters::default(),
            log: RateLimiter::new(LogLimit::default(), Arc::new(MonotonicClock)),
            recorder: None,
        }
    }

    /// This dispatcher with bad-access logging limited to `limit`, timed by `clock`.
    pub fn with_log_limit(mut self, limit: LogLimit, clock: Arc<dyn Clock>) -> Self {
        self.log = RateLimiter::new(limit, clock);
        self
    }

    /// The port-I/O bus.
    pub fn io_bus(&self) -> &Arc<IoBus> {
        &self.pio
    }

    /// The MMIO bus.
    pub fn mmio_bus(&self) -> &Arc<MmioBus> {
        &self.mmio
    }

    /// This dispatcher with every exit recorded to `recorder`: a sequence number taken when the
    /// exit arrives (current on the calling thread while the devices run, see [`ExitScope`]),
    /// then the exit with its data, the route and the answer. Without a recorder the cost is
    /// one check per exit.
    pub fn with_recorder(mut self, recorder: Arc<RecordWriter>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// The recorder, if exits are recorded.
    pub fn recorder(&self) -> Option<&Arc<RecordWriter>> {
        self.recorder.as_ref()
    }

    /// Handles one exit. Never panics, whatever the guest put in it.
    pub fn dispatch(&self, exit: VmExit<'_>) -> ExitAction {
        self.dispatch_routed(exit).0
    }

    /// Handles one exit as [`dispatch`](Self::dispatch) does, and says who answered it: the
    /// [`Route`] a recording holds, which a replay compares.
    pub fn dispatch_routed(&self, exit: VmExit<'_>) -> (ExitAction, Route) {
        match &self.recorder {
            None => self.answer(exit),
            Some(recorder) => self.dispatch_recorded(recorder, exit),
        }
    }

    fn dispatch_recorded(
        &self,
        recorder: &RecordWriter,
        mut exit: VmExit<'_>,
    ) -> (ExitAction, Route) {
        let seq = recorder.begin_exit();
        let scope = ExitScope::enter(seq);
        let (action, route) = self.answer(reborrow(&mut exit));
        drop(scope);
        recorder.write(&Record::Exit(ExitRecord {
            seq,
            vcpu: record::current_vcpu(),
            exit: RecordedExit::from_exit(&exit),
            route,
            action,
        }));
        (action, route)
    }

    /// The answer to `exit` and who gave it.
    fn answer(&self, exit: VmExit<'_>) -> (ExitAction, Route) {
        self.counters.count_exit(exit.kind());
        match exit {
            VmExit::IoIn { port, data } => {
                data.fill(UNCLAIMED_BYTE);
                let route = if !is_valid_access_size(data.len()) {
                    self.bad_size(Access::PioRead, port.into(), data.len())
                } else if !self.pio.read(PioAddress(port), data) {
                    self.unclaimed(Access::PioRead, port.into(), data.len())
                } else {
                    Route::Device
                };
                (ExitAction::Resume, route)
            }
            VmExit::IoOut { port, data } => {
                if !is_valid_access_size(data.len()) {
                    let route = self.bad_size(Access::PioWrite, port.into(), data.len());
                    return (ExitAction::Resume, route);
                }
                match self.pio.write(PioAddress(port), data) {
                    Some(action) => (device_action(action), Route::Device),
                    None => {
                        let route = self.unclaimed(Access::PioWrite, port.into(), data.len());
                        (ExitAction::Resume, route)
                    }
                }
            }
            VmExit::MmioRead { addr, data } => {
                data.fill(UNCLAIMED_BYTE);
                let route = if !is_valid_access_size(data.len()) {
                    self.bad_size(Access::MmioRead, addr, data.len())
                } else if !self.mmio.read(MmioAddress(addr), data) {
                    self.unclaimed(Access::MmioRead, addr, data.len())
                } else {
                    Route::Device
                };
                (ExitAction::Resume, route)
            }
            VmExit::MmioWrite { addr, data } => {
                if !is_valid_access_size(data.len()) {
                    let route = self.bad_size(Access::MmioWrite, addr, data.len());
                    return (ExitAction::Resume, route);
                }
                match self.mmio.write(MmioAddress(addr), data) {
                    Some(action) => (device_action(action), Route::Device),
                    None => {
                        let route = self.unclaimed(Access::MmioWrite, addr, data.len());
                        (ExitAction::Resume, route)
                    }
                }
            }
            other => (answer_event(other), Route::NotAnAccess),
        }
    }

    fn unclaimed(&self, access: Access, addr: u64, size: usize) -> Route {
        self.counters.unclaimed.add(access);
        if let Some(suppressed) = self.log.check() {
            warn!(
                "unclaimed {} of {size} bytes at {addr:#x}{}",
                access.describe(),
                Suppressed(suppressed)
            );
        }
        Route::Unclaimed
    }

    fn bad_size(&self, access: Access, addr: u64, size: usize) -> Route {
        self.counters.bad_size.add(access);
        if let Some(suppressed) = self.log.check() {
            warn!(
                "{} of unsupported size {size} at {addr:#x} answered as unclaimed{}",
                access.describe(),
                Suppressed(suppressed)
            );
        }
        Route::BadSize
    }

    /// A snapshot of the statistics: exits by kind, hits per registered range, bad accesses
    /// and log lines.
    pub fn stats(&self) -> ExitStats {
        self.counters.snapshot(
            self.pio.range_stats(),
            self.mmio.range_stats(),
            self.log.allowed(),
            self.log.suppressed(),
        )
    }
}

/// The answer to an exit that is not an access.
fn answer_event(exit: VmExit<'_>) -> ExitAction {
    match exit {
        VmExit::Hlt => ExitAction::Halt,
        VmExit::TripleFault => ExitAction::Stop(StopReason::TripleFault),
        VmExit::SystemEvent(event) => ExitAction::Stop(match event {
            SystemEvent::Reset => StopReason::Reset,
            SystemEvent::PowerOff => StopReason::PowerOff,
            SystemEvent::Crash => StopReason::Crash,
            SystemEvent::Other(raw) => StopReason::Unhandled(raw),
        }),
        VmExit::FailEntry { reason, .. } => ExitAction::Stop(StopReason::EntryFailed(reason)),
        VmExit::InternalError { suberror, insn } => {
            ExitAction::Stop(StopReason::InternalError { suberror, insn })
        }
        VmExit::Debug { .. } => ExitAction::Resume,
        VmExit::Other { reason } => ExitAction::Stop(StopReason::Unhandled(reason)),
        // Accesses are answered by `answer`; an access here is dropped as a bus would drop it.
        VmExit::IoIn { .. }
        | VmExit::IoOut { .. }
        | VmExit::MmioRead { .. }
        | VmExit::MmioWrite { .. } => ExitAction::Resume,
    }
}

/// `exit` again, borrowing its data from it: the dispatcher fills a read through it and the
/// recorder reads the result from `exit` afterwards.
fn reborrow<'a>(exit: &'a mut VmExit<'_>) -> VmExit<'a> {
    match exit {
        VmExit::IoIn { port, data } => VmExit::IoIn { port: *port, data },
        VmExit::IoOut { port, data } => VmExit::IoOut { port: *port, data },
        VmExit::MmioRead { addr, data } => VmExit::MmioRead { addr: *addr, data },
        VmExit::MmioWrite { addr, data } => VmExit::MmioWrite { addr: *addr, data },
        VmExit::Hlt => VmExit::Hlt,
        VmExit::TripleFault => VmExit::TripleFault,
        VmExit::SystemEvent(event) => VmExit::SystemEvent(*event),
        VmExit::FailEntry { reason, cpu } => VmExit::FailEntry {
            reason: *reason,
            cpu: *cpu,
        },
        VmExit::InternalError { suberror, insn } => VmExit::InternalError {
            suberror: *suberror,
            insn: *insn,
        },
        VmExit::Debug { pc, exception } => VmExit::Debug {
            pc: *pc,
            exception: *exception,
        },
        VmExit::Other { reason } => VmExit::Other { reason: *reason },
    }
}

fn device_action(action: DeviceAction) -> ExitAction {
    match action {
        DeviceAction::Resume => ExitAction::Resume,
        DeviceAction::Stop(reason) => ExitAction::Stop(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusRange;
    use crate::device::{MmioDevice, PioDevice};
    use crate::exit::{ExitKind, InsnBytes};
    use crate::ratelimit::ManualClock;
    use std::sync::Mutex;
    use std::thread::ThreadId;
    use std::time::Duration;

    /// Answers reads with `value` in little-endian; a write of 0xdead.. stops the VM.
    struct Reg {
        value: u64,
        writes: Mutex<Vec<(u64, Vec<u8>)>>,
        partial: bool,
    }

    impl Reg {
        fn new(value: u64) -> Arc<Self> {
            Arc::new(Self {
                value,
                writes: Mutex::new(Vec::new()),
                partial: false,
            })
        }
        fn read(&self, offset: u64, data: &mut [u8]) {
            let bytes = self.value.wrapping_add(offset).to_le_bytes();
            let n = if self.partial { 1 } else { data.len() };
            data[..n].copy_from_slice(&bytes[..n]);
        }
        fn write(&self, offset: u64, data: &[u8]) -> DeviceAction {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
            if data == [0xde, 0xad] {
                DeviceAction::Stop(StopReason::GuestExit(7))
            } else {
                DeviceAction::Resume
            }
        }
    }

    impl PioDevice for Reg {
        fn pio_read(&self, _base: PioAddress, offset: u16, data: &mut [u8]) {
            self.read(offset.into(), data);
        }
        fn pio_write(&self, _base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
            self.write(offset.into(), data)
        }
    }

    impl MmioDevice for Reg {
        fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
            self.read(offset, data);
        }
        fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
            self.write(offset, data)
        }
    }

    fn dispatcher() -> (ExitDispatcher, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let d = ExitDispatcher::new(Arc::new(IoBus::new()), Arc::new(MmioBus::new()))
            .with_log_limit(
                LogLimit {
                    per_second: 5,
                    burst: 5,
                },
                clock.clone(),
            );
        (d, clock)
    }

    #[test]
    fn port_io_reaches_the_device() {
        let (d, _) = dispatcher();
        let reg = Reg::new(0x1122_3344);
        d.io_bus()
            .register_named(0x60..0x64, "kbd", reg.clone())
            .unwrap();
        let mut data = [0u8; 2];
        let action = d.dispatch(VmExit::IoIn {
            port: 0x60,
            data: &mut data,
        });
        assert_eq!(action, ExitAction::Resume);
        assert_eq!(data, [0x44, 0x33]);
        let mut data = [0u8; 1];
        d.dispatch(VmExit::IoIn {
            port: 0x63,
            data: &mut data,
        });
        assert_eq!(data, [0x47], "offset 3");

        assert_eq!(
            d.dispatch(VmExit::IoOut {
                port: 0x61,
                data: &[1, 2, 3, 4]
            }),
            ExitAction::Resume,
            "straddles the end: unclaimed"
        );
        assert_eq!(
            d.dispatch(VmExit::IoOut {
                port: 0x62,
                data: &[9, 8]
            }),
            ExitAction::Resume
        );
        assert_eq!(
            d.dispatch(VmExit::IoOut {
                port: 0x60,
                data: &[0xde, 0xad]
            }),
            ExitAction::Stop(StopReason::GuestExit(7))
        );
        assert_eq!(
            *reg.writes.lock().unwrap(),
            vec![(2, vec![9, 8]), (0, vec![0xde, 0xad])]
        );
        let s = d.stats();
        assert_eq!(s.exits(ExitKind::IoIn), 2);
        assert_eq!(s.exits(ExitKind::IoOut), 3);
        assert_eq!(s.pio_ranges[0].hits, 4);
        assert_eq!(s.unclaimed.pio_write, 1);
        assert_eq!(s.unclaimed.total(), 1);
    }

    #[test]
    fn mmio_reaches_the_device() {
        let (d, _) = dispatcher();
        let reg = Reg::new(0x0102_0304_0506_0708);
        d.mmio_bus()
            .register(BusRange::new(MmioAddress(0xfee0_0000), 0x1000), reg.clone())
            .unwrap();
        let mut data = [0u8; 8];
        d.dispatch(VmExit::MmioRead {
            addr: 0xfee0_0000,
            data: &mut data,
        });
        assert_eq!(u64::from_le_bytes(data), 0x0102_0304_0506_0708);
        assert_eq!(
            d.dispatch(VmExit::MmioWrite {
                addr: 0xfee0_0ffe,
                data: &[0xde, 0xad]
            }),
            ExitAction::Stop(StopReason::GuestExit(7))
        );
        assert_eq!(
            d.dispatch(VmExit::MmioWrite {
                addr: 0xfee0_0ffc,
                data: &[1, 2, 3, 4]
            }),
            ExitAction::Resume
        );
        assert_eq!(reg.writes.lock().unwrap().len(), 2);
        let mut data = [0u8; 4];
        d.dispatch(VmExit::MmioRead {
            addr: 0xfee0_1000,
            data: &mut data,
        });
        assert_eq!(data, [0xff; 4], "unclaimed reads are all ones");
        d.dispatch(VmExit::MmioWrite {
            addr: 0,
            data: &[0],
        });
        let s = d.stats();
        assert_eq!(s.mmio_ranges[0].hits, 3);
        assert_eq!(s.unclaimed.mmio_read, 1);
        assert_eq!(s.unclaimed.mmio_write, 1);
        assert_eq!(s.exits(ExitKind::MmioRead), 2);
        assert_eq!(s.exits(ExitKind::MmioWrite), 3);
    }

    #[test]
    fn bytes_a_device_leaves_unwritten_read_as_ones() {
        let (d, _) = dispatcher();
        let reg = Arc::new(Reg {
            value: 0x42,
            writes: Mutex::new(Vec::new()),
            partial: true,
        });
        d.io_bus().register(0x70..0x72, reg.clone()).unwrap();
        d.mmio_bus().register(0x1000..0x1008, reg).unwrap();
        let mut data = [0u8; 2];
        d.dispatch(VmExit::IoIn {
            port: 0x70,
            data: &mut data,
        });
        assert_eq!(data, [0x42, 0xff]);
        let mut data = [0u8; 4];
        d.dispatch(VmExit::MmioRead {
            addr: 0x1000,
            data: &mut data,
        });
        assert_eq!(data, [0x42, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn bad_sizes_are_rejected_even_inside_a_range() {
        let (d, _) = dispatcher();
        let reg = Reg::new(0);
        d.io_bus().register(0..0x100, reg.clone()).unwrap();
        d.mmio_bus().register(0..0x100, reg.clone()).unwrap();
        for size in [0usize, 3, 5, 6, 7, 9, 16] {
            let mut buf = vec![0u8; size];
            d.dispatch(VmExit::IoIn {
                port: 0x10,
                data: &mut buf,
            });
            assert!(buf.iter().all(|&b| b == 0xff));
            d.dispatch(VmExit::IoOut {
                port: 0x10,
                data: &buf,
            });
            d.dispatch(VmExit::MmioRead {
                addr: 0x10,
                data: &mut buf,
            });
            assert!(buf.iter().all(|&b| b == 0xff));
            assert_eq!(
                d.dispatch(VmExit::MmioWrite {
                    addr: 0x10,
                    data: &buf
                }),
                ExitAction::Resume
            );
        }
        assert!(reg.writes.lock().unwrap().is_empty());
        let s = d.stats();
        assert_eq!(s.bad_size.pio_read, 7);
        assert_eq!(s.bad_size.pio_write, 7);
        assert_eq!(s.bad_size.mmio_read, 7);
        assert_eq!(s.bad_size.mmio_write, 7);
        assert_eq!(s.unclaimed.total(), 0);
        assert_eq!(s.pio_ranges[0].hits + s.mmio_ranges[0].hits, 0);
        for size in [1usize, 2, 4, 8] {
            assert!(is_valid_access_size(size));
        }
    }

    #[test]
    fn non_io_exits_map_to_actions() {
        let (d, _) = dispatcher();
        let insn = Some(InsnBytes::new(&[0x0f, 0x0b]));
        let cases = [
            (VmExit::Hlt, ExitAction::Halt),
            (
                VmExit::TripleFault,
                ExitAction::Stop(StopReason::TripleFault),
            ),
            (
                VmExit::SystemEvent(SystemEvent::Reset),
                ExitAction::Stop(StopReason::Reset),
            ),
            (
                VmExit::SystemEvent(SystemEvent::PowerOff),
                ExitAction::Stop(StopReason::PowerOff),
            ),
            (
                VmExit::SystemEvent(SystemEvent::Crash),
                ExitAction::Stop(StopReason::Crash),
            ),
            (
                VmExit::SystemEvent(SystemEvent::Other(9)),
                ExitAction::Stop(StopReason::Unhandled(9)),
            ),
            (
                VmExit::FailEntry {
                    reason: 0x8000_0021,
                    cpu: 3,
                },
                ExitAction::Stop(StopReason::EntryFailed(0x8000_0021)),
            ),
            (
                VmExit::InternalError { suberror: 1, insn },
                ExitAction::Stop(StopReason::InternalError { suberror: 1, insn }),
            ),
            (
                VmExit::Debug {
                    pc: 0x1000,
                    exception: 1,
                },
                ExitAction::Resume,
            ),
            (
                VmExit::Other { reason: 42 },
                ExitAction::Stop(StopReason::Unhandled(42)),
            ),
        ];
        let n = cases.len() as u64;
        for (exit, action) in cases {
            assert_eq!(d.dispatch(exit), action);
        }
        let s = d.stats();
        assert_eq!(s.total_exits(), n);
        assert_eq!(s.exits(ExitKind::SystemEvent), 4);
        assert_eq!(s.exits(ExitKind::Debug), 1);
    }

    use crate::trigger::InterruptTrigger;

    /// A device that raises its line on every write, through a recording decorator.
    struct Pulser(crate::trigger::RecordingLine<crate::NoopTrigger>);

    impl PioDevice for Pulser {
        fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn pio_write(&self, _base: PioAddress, _offset: u16, _data: &[u8]) -> DeviceAction {
            let _ = self.0.trigger();
            DeviceAction::Resume
        }
    }

    #[test]
    fn recorded_exits_carry_their_data_route_answer_and_what_devices_did() {
        use crate::record::{Attribution, LineEvent, RecordReader, Route};
        let path =
            std::env::temp_dir().join(format!("vmkit-exits-dispatch-{}.vmrec", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let recorder = Arc::new(RecordWriter::new(file, u64::MAX));
        let (d, _) = dispatcher();
        let d = d.with_recorder(recorder.clone());
        assert!(d.recorder().is_some());
        let line = crate::trigger::RecordingLine::new(crate::NoopTrigger, 4, recorder.clone());
        d.io_bus()
            .register(0x3f8..0x400, Arc::new(Pulser(line)))
            .unwrap();
        record::set_current_vcpu(2);
        let mut data = [0u8; 1];
        d.dispatch(VmExit::IoIn {
            port: 0x3f8,
            data: &mut data,
        });
        assert_eq!(data, [0x5a]);
        d.dispatch(VmExit::IoOut {
            port: 0x3f8,
            data: b"h",
        });
        let mut wide = [0u8; 3];
        d.dispatch(VmExit::MmioRead {
            addr: 0x1000,
            data: &mut wide,
        });
        d.dispatch(VmExit::MmioWrite {
            addr: 0x1000,
            data: &[1],
        });
        d.dispatch(VmExit::Hlt);
        recorder.finish();
        let records = RecordReader::new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .read_all()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        let expected = [
            Record::Exit(ExitRecord {
                seq: 0,
                vcpu: 2,
                exit: RecordedExit::IoIn {
                    port: 0x3f8,
                    data: vec![0x5a],
                },
                route: Route::Device,
                action: ExitAction::Resume,
            }),
            Record::Interrupt {
                at: Attribution::Exit(1),
                line: 4,
                event: LineEvent::Edge,
                ok: true,
            },
            Record::Exit(ExitRecord {
                seq: 1,
                vcpu: 2,
                exit: RecordedExit::IoOut {
                    port: 0x3f8,
                    data: b"h".to_vec(),
                },
                route: Route::Device,
                action: ExitAction::Resume,
            }),
            Record::Exit(ExitRecord {
                seq: 2,
                vcpu: 2,
                exit: RecordedExit::MmioRead {
                    addr: 0x1000,
                    data: vec![0xff; 3],
                },
                route: Route::BadSize,
                action: ExitAction::Resume,
            }),
            Record::Exit(ExitRecord {
                seq: 3,
                vcpu: 2,
                exit: RecordedExit::MmioWrite {
                    addr: 0x1000,
                    data: vec![1],
                },
                route: Route::Unclaimed,
                action: ExitAction::Resume,
            }),
            Record::Exit(ExitRecord {
                seq: 4,
                vcpu: 2,
                exit: RecordedExit::Hlt,
                route: Route::NotAnAccess,
                action: ExitAction::Halt,
            }),
        ];
        assert_eq!(records, expected);
        assert_eq!(d.stats().total_exits(), 5);
        // An access reaching `answer_event` (it never does from `dispatch`) is dropped.
        assert_eq!(
            answer_event(VmExit::IoOut {
                port: 1,
                data: &[1]
            }),
            ExitAction::Resume
        );
    }

    #[test]
    fn recorded_dispatch_answers_as_unrecorded_dispatch() {
        let recorder = Arc::new(RecordWriter::new(std::io::sink(), u64::MAX));
        let run = |d: &ExitDispatcher| {
            d.io_bus()
                .register(0x60..0x64, Reg::new(0x1122_3344))
                .unwrap();
            let mut out = Vec::new();
            for port in [0x5f, 0x60, 0x62, 0x63] {
                for size in [1, 2, 3, 4] {
                    let mut data = vec![0u8; size];
                    let action = d.dispatch_routed(VmExit::IoIn {
                        port,
                        data: &mut data,
                    });
                    out.push((action, data));
                    let action = d.dispatch_routed(VmExit::IoOut {
                        port,
                        data: &[0xde, 0xad][..size.min(2)],
                    });
                    out.push((action, vec![]));
                }
            }
            let insn = Some(InsnBytes::new(&[0x0f, 0x0b]));
            for exit in [
                VmExit::TripleFault,
                VmExit::SystemEvent(SystemEvent::Crash),
                VmExit::FailEntry { reason: 1, cpu: 0 },
                VmExit::InternalError { suberror: 1, insn },
                VmExit::Debug {
                    pc: 0,
                    exception: 3,
                },
                VmExit::Other { reason: 9 },
            ] {
                out.push((d.dispatch_routed(exit), vec![]));
            }
            out
        };
        let plain = run(&dispatcher().0);
        let recorded = run(&dispatcher().0.with_recorder(recorder.clone()));
        assert_eq!(plain, recorded);
        // The routes a recording holds: every kind is among the answers.
        for route in [
            Route::Device,
            Route::Unclaimed,
            Route::BadSize,
            Route::NotAnAccess,
        ] {
            assert!(plain.iter().any(|((_, r), _)| *r == route), "{route:?}");
        }
        assert_eq!(recorder.exits(), 38);
        assert_eq!(recorder.finish().records, 38);
    }

    /// Captures `warn!` lines per thread, so parallel tests do not see each other's lines.
    struct Capture(Mutex<Vec<(ThreadId, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((std::thread::current().id(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    fn my_lines() -> Vec<String> {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Warn);
        let me = std::thread::current().id();
        CAPTURE
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn unclaimed_accesses_are_logged_at_a_bounded_rate() {
        assert!(my_lines().is_empty());
        let (d, clock) = dispatcher();
        // 10 000 unclaimed accesses within one simulated second.
        for i in 0..10_000u32 {
            let mut data = [0u8; 1];
            d.dispatch(VmExit::IoIn {
                port: 0x80,
                data: &mut data,
            });
            assert_eq!(data, [0xff]);
            if i % 10 == 9 {
                clock.advance(Duration::from_micros(999));
            }
        }
        let lines = my_lines();
        // burst 5 + 5 a second.
        assert!(lines.len() <= 10, "{}", lines.len());
        assert!(lines.len() >= 5);
        assert_eq!(lines[0], "unclaimed port read of 1 bytes at 0x80");
        assert!(
            lines[5].ends_with("similar lines suppressed)"),
            "{}",
            lines[5]
        );
        let s = d.stats();
        assert_eq!(s.unclaimed.pio_read, 10_000);
        assert_eq!(s.log_lines, lines.len() as u64);
        assert_eq!(s.log_suppressed, 10_000 - lines.len() as u64);

        // Lines resume after a quiet spell, and say how many were suppressed.
        clock.advance(Duration::from_secs(5));
        d.dispatch(VmExit::MmioWrite {
            addr: 0xdead_0000,
            data: &[0; 3],
        });
        let lines = my_lines();
        let last = lines.last().unwrap();
        assert!(
            last.starts_with(
                "MMIO write of unsupported size 3 at 0xdead0000 answered as unclaimed ("
            ),
            "{last}"
        );
        assert!(last.contains("similar lines suppressed"));
        assert!(d.stats().to_string().contains("suppressed"));
    }

    #[test]
    fn new_uses_the_default_limit() {
        let d = ExitDispatcher::new(Arc::new(IoBus::new()), Arc::new(MmioBus::new()));
        for _ in 0..100 {
            d.dispatch(VmExit::IoOut {
                port: 0x80,
                data: &[0],
            });
        }
        let s = d.stats();
        assert!(s.log_lines >= 10 && s.log_lines <= 20, "{}", s.log_lines);
        assert_eq!(s.log_lines + s.log_suppressed, 100);
        assert!(format!("{d:?}").contains("ExitDispatcher"));
    }
}
