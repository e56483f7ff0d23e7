//! What one entry into the guest returns, and the loop that drives a vCPU until it stops.
//!
//! [`Vcpu::run`] enters the guest once and returns a [`RunExit`]: either the
//! run was [kicked](RunExit::Kicked) or the guest exited. An exit is handed out as [`Exits`], an
//! iterator of [`VmExit`]s, because one string I/O instruction (`rep insb`, `rep outsw`, …) moves
//! several elements in one exit: each element becomes its own `VmExit` with its own slice of the
//! backend's data buffer, so device models only ever see single accesses of 1, 2 or 4 bytes.
//!
//! [`run_until_stop`] is the driver: it runs the vCPU, hands every exit to an [`ExitHandler`]
//! (the `vmkit-exits` dispatcher, or any closure), parks the vCPU on [`ExitAction::Halt`] and
//! returns when a handler stops the VM or the caller's stop flag is set.
//! [`run_until_stop_inspected`] and [`run_until_stop_with_assist_inspected`] also pause the vCPU
//! between two entries whenever another thread asks, for an [`Inspector`]'s inspection (see
//! [`pause`](crate::pause)).

use std::ops::ControlFlow;
use std::slice::{ChunksExact, ChunksExactMut};
use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::GuestMemoryBackend;
use vmkit_exits::{AssistPolicy, EmulationAssist, ExitAction, StopReason, VmExit};

use crate::hypervisor::Vcpu;
use crate::pause::Inspector;

/// How one entry into the guest ended.
#[derive(Debug)]
pub enum RunExit<'a> {
    /// The run was interrupted by a kick (or another signal) before or while the guest ran.
    ///
    /// Nothing is to be handled; an operation the previous exit left pending has been completed.
    Kicked,
    /// The guest exited: handle every exit in order before entering again.
    Exits(Exits<'a>),
}

/// The exits of one guest exit, in order: one for most exits, one per element for string I/O.
///
/// Each item borrows its own part of the backend's data buffer; for reads the handler fills it and
/// the backend hands the data to the guest on the next entry.
#[derive(Debug)]
pub struct Exits<'a> {
    inner: Inner<'a>,
}

#[derive(Debug)]
enum Inner<'a> {
    One(Option<VmExit<'a>>),
    IoIn {
        port: u16,
        chunks: ChunksExactMut<'a, u8>,
    },
    IoOut {
        port: u16,
        chunks: ChunksExact<'a, u8>,
    },
}

/// The access sizes port I/O instructions have.
fn is_io_size(size: usize) -> bool {
    matches!(size, 1 | 2 | 4)
}

impl<'a> Exits<'a> {
    /// A single exit.
    pub fn one(exit: VmExit<'a>) -> Self {
        Self {
            inner: Inner::One(Some(exit)),
        }
    }

    /// `data.len() / size` consecutive `in`s of `size` bytes from `port`, one exit per element.
    ///
    /// Returns `None` unless `size` is 1, 2 or 4 and `data` holds a whole, non-zero number of
    /// elements.
    pub fn io_in(port: u16, size: usize, data: &'a mut [u8]) -> Option<Self> {
        if !is_io_size(size) || data.is_empty() || !data.len().is_multiple_of(size) {
            return None;
        }
        Some(Self {
            inner: Inner::IoIn {
                port,
                chunks: data.chunks_exact_mut(size),
            },
        })
    }

    /// `data.len() / size` consecutive `out`s of `size` bytes to `port`, one exit per element.
    ///
    /// Returns `None` unless `size` is 1, 2 or 4 and `data` holds a whole, non-zero number of
    /// elements.
    pub fn io_out(port: u16, size: usize, data: &'a [u8]) -> Option<Self> {
        if !is_io_size(size) || data.is_empty() || !data.len().is_multiple_of(size) {
            return None;
        }
        Some(Self {
            inner: Inner::IoOut {
                port,
                chunks: data.chunks_exact(size),
            },
        })
    }
}

impl<'a> Iterator for Exits<'a> {
    type Item = VmExit<'a>;

    fn next(&mut self) -> Option<VmExit<'a>> {
        match &mut self.inner {
            Inner::One(exit) => exit.take(),
            Inner::IoIn { port, chunks } => {
                chunks.next().map(|data| VmExit::IoIn { port: *port, data })
            }
            Inner::IoOut { port, chunks } => chunks
                .next()
                .map(|data| VmExit::IoOut { port: *port, data }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.inner {
            Inner::One(exit) => usize::from(exit.is_some()),
            Inner::IoIn { chunks, .. } => chunks.len(),
            Inner::IoOut { chunks, .. } => chunks.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Exits<'_> {}

/// Handles one exit and says what the vCPU does next.
///
/// Implemented for `vmkit-exits`' [`ExitDispatcher`](vmkit_exits::dispatch::ExitDispatcher) and
/// for every `Fn(VmExit<'_>) -> ExitAction` closure.
pub trait ExitHandler {
    /// Handles `exit`: fills the data of reads, consumes writes, and returns the next action.
    fn handle_exit(&self, exit: VmExit<'_>) -> ExitAction;
}

impl<F> ExitHandler for F
where
    F: Fn(VmExit<'_>) -> ExitAction + ?Sized,
{
    fn handle_exit(&self, exit: VmExit<'_>) -> ExitAction {
        self(exit)
    }
}

impl ExitHandler for vmkit_exits::dispatch::ExitDispatcher {
    fn handle_exit(&self, exit: VmExit<'_>) -> ExitAction {
        self.dispatch(exit)
    }
}

/// Why [`run_until_stop`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopExit {
    /// A handler stopped the VM.
    Stopped(StopReason),
    /// The caller's stop flag was set (and the vCPU kicked, or it exited on its own).
    StopRequested,
}

/// Hands every exit of one guest exit to `handler`, in order.
///
/// The first [`ExitAction::Stop`] ends the batch (the remaining elements of a string I/O are not
/// performed: the VM stops); otherwise the batch halts if any element asked to halt.
pub fn handle_exits<H>(exits: Exits<'_>, handler: &H) -> ExitAction
where
    H: ExitHandler + ?Sized,
{
    let mut action = ExitAction::Resume;
    for exit in exits {
        match handler.handle_exit(exit) {
            ExitAction::Resume => {}
            ExitAction::Halt => action = ExitAction::Halt,
            stop @ ExitAction::Stop(_) => return stop,
        }
    }
    action
}

/// Runs `vcpu` until a handler stops the VM or `stop` is set.
///
/// `stop` is checked before every entry; a thread that sets it kicks the vCPU
/// ([`Kick::kick`](crate::Kick::kick)) so that a guest that does not exit on its own (a `cli; hlt`
/// guest, say) is interrupted. A kick without `stop` set only makes the loop go round once. On
/// [`ExitAction::Halt`] the vCPU is parked with [`Vcpu::halt`]: the next entry waits for an
/// interrupt or a kick.
///
/// When this returns, an operation the last exit left pending (the data of an `in`) is completed
/// by the backend before the registers are next read or the vCPU runs again.
pub fn run_until_stop<V, H>(
    vcpu: &mut V,
    handler: &H,
    stop: &AtomicBool,
) -> Result<LoopExit, V::Error>
where
    V: Vcpu + ?Sized,
    H: ExitHandler + ?Sized,
{
    drive(vcpu, handler, stop, no_pause, |_, action| Ok(action))
}

/// Runs `vcpu` like [`run_until_stop`], handing every emulation failure to `assist` with the
/// vCPU's state and `memory` (the VM's guest memory): an instruction the assist completes (or
/// turns into a guest exception) resumes the guest; one it cannot handle stops the loop with
/// the internal error, and [`EmulationAssist::last_report`] says why.
pub fn run_until_stop_with_assist<V, H, M, P>(
    vcpu: &mut V,
    handler: &H,
    assist: &EmulationAssist<P>,
    memory: &M,
    stop: &AtomicBool,
) -> Result<LoopExit, V::Error>
where
    V: Vcpu + ?Sized,
    H: ExitHandler + ?Sized,
    M: GuestMemoryBackend + ?Sized,
    P: AssistPolicy,
{
    drive(vcpu, handler, stop, no_pause, |vcpu, action| {
        assist
            .resolve(vcpu, memory, action)
            .map_err(|e| e.into_source())
    })
}

/// The pause check of the loops without an inspector: none.
fn no_pause<V: ?Sized>(_: &mut V) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Runs `vcpu` like [`run_until_stop`], pausing it for `inspector`'s inspection whenever one of
/// its [`PauseHandle`](crate::pause::PauseHandle)s asks: before the next entry, on this thread,
/// with the vCPU's state as the last exit left it (completed). An inspection that returns
/// [`ControlFlow::Break`] ends the loop with [`LoopExit::StopRequested`].
pub fn run_until_stop_inspected<V, H, F>(
    vcpu: &mut V,
    handler: &H,
    stop: &AtomicBool,
    inspector: &mut Inspector<F>,
) -> Result<LoopExit, V::Error>
where
    V: Vcpu + ?Sized,
    H: ExitHandler + ?Sized,
    F: FnMut(&mut V) -> ControlFlow<()>,
{
    drive(
        vcpu,
        handler,
        stop,
        |vcpu| inspector.poll(vcpu),
        |_, action| Ok(action),
    )
}

/// Runs `vcpu` like [`run_until_stop_with_assist`], pausing it for `inspector` as
/// [`run_until_stop_inspected`] does.
pub fn run_until_stop_with_assist_inspected<V, H, M, P, F>(
    vcpu: &mut V,
    handler: &H,
    assist: &EmulationAssist<P>,
    memory: &M,
    stop: &AtomicBool,
    inspector: &mut Inspector<F>,
) -> Result<LoopExit, V::Error>
where
    V: Vcpu + ?Sized,
    H: ExitHandler + ?Sized,
    M: GuestMemoryBackend + ?Sized,
    P: AssistPolicy,
    F: FnMut(&mut V) -> ControlFlow<()>,
{
    drive(
        vcpu,
        handler,
        stop,
        |vcpu| inspector.poll(vcpu),
        |vcpu, action| {
            assist
                .resolve(vcpu, memory, action)
                .map_err(|e| e.into_source())
        },
    )
}

/// The loop every driver shares: check `stop`, let `pause` inspect the vCPU, run, hand the exits
/// to `handler`, let `resolve` look at the resulting action with the vCPU at hand, then resume,
/// park or stop.
fn drive<V, H>(
    vcpu: &mut V,
    handler: &H,
    stop: &AtomicBool,
    mut pause: impl FnMut(&mut V) -> ControlFlow<()>,
    mut resolve: impl FnMut(&mut V, ExitAction) -> Result<ExitAction, V::Error>,
) -> Result<LoopExit, V::Error>
where
    V: Vcpu + ?Sized,
    H: ExitHandler + ?Sized,
{
    loop {
        if stop.load(Ordering::Acquire) || pause(vcpu).is_break() {
            return Ok(LoopExit::StopRequested);
        }
        let action = match vcpu.run()? {
            RunExit::Kicked => continue,
            RunExit::Exits(exits) => handle_exits(exits, handler),
        };
        match resolve(vcpu, action)? {
            ExitAction::Resume => {}
            ExitAction::Halt => vcpu.halt()?,
            ExitAction::Stop(reason) => return Ok(LoopExit::Stopped(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_exits::VcpuState;

    #[test]
    fn one_exit_yields_once() {
        let mut exits = Exits::one(VmExit::Hlt);
        assert_eq!(exits.len(), 1);
        assert_eq!(exits.next(), Some(VmExit::Hlt));
        assert_eq!(exits.len(), 0);
        assert_eq!(exits.next(), None);
    }

    #[test]
    fn string_io_in_yields_one_exit_per_element() {
        let mut buf = [0u8; 6];
        let exits = Exits::io_in(0x60, 2, &mut buf).unwrap();
        assert_eq!(exits.len(), 3);
        for (i, exit) in exits.enumerate() {
            match exit {
                VmExit::IoIn { port, data } => {
                    assert_eq!(port, 0x60);
                    assert_eq!(data.len(), 2);
                    data.copy_from_slice(&[i as u8, 0xa0]);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(buf, [0, 0xa0, 1, 0xa0, 2, 0xa0]);
    }

    #[test]
    fn string_io_out_yields_elements_in_order() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let got: Vec<_> = Exits::io_out(0x3f8, 4, &data)
            .unwrap()
            .map(|e| match e {
                VmExit::IoOut { port, data } => (port, data.to_vec()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![(0x3f8, vec![1, 2, 3, 4]), (0x3f8, vec![5, 6, 7, 8])]
        );
    }

    #[test]
    fn malformed_io_is_refused() {
        let mut buf = [0u8; 6];
        assert!(Exits::io_in(0, 0, &mut buf).is_none());
        assert!(Exits::io_in(0, 3, &mut buf).is_none());
        assert!(Exits::io_in(0, 4, &mut buf).is_none());
        assert!(Exits::io_in(0, 1, &mut []).is_none());
        assert!(Exits::io_out(0, 8, &buf).is_none());
        assert!(Exits::io_out(0, 4, &buf).is_none());
        assert!(Exits::io_out(0, 2, &[]).is_none());
    }

    #[test]
    fn batch_stops_at_first_stop_and_remembers_halt() {
        let data = [1u8, 2, 3];
        let seen = std::cell::Cell::new(0);
        let handler = |exit: VmExit<'_>| {
            seen.set(seen.get() + 1);
            match exit {
                VmExit::IoOut { data: [2], .. } => ExitAction::Stop(StopReason::GuestExit(2)),
                _ => ExitAction::Resume,
            }
        };
        let action = handle_exits(Exits::io_out(1, 1, &data).unwrap(), &handler);
        assert_eq!(action, ExitAction::Stop(StopReason::GuestExit(2)));
        assert_eq!(seen.get(), 2, "the element after the stop is not performed");

        let halting = |exit: VmExit<'_>| match exit {
            VmExit::IoOut { data: [1], .. } => ExitAction::Halt,
            _ => ExitAction::Resume,
        };
        assert_eq!(
            handle_exits(Exits::io_out(1, 1, &data).unwrap(), &halting),
            ExitAction::Halt
        );
        assert_eq!(
            handle_exits(Exits::one(VmExit::Hlt), &|_: VmExit<'_>| ExitAction::Resume),
            ExitAction::Resume
        );
    }

    #[test]
    fn the_assist_completes_emulation_failures_in_the_loop() {
        use crate::fake::{FakeVcpu, ScriptedExit};
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        use vmkit_exits::InsnBytes;
        use vmkit_exits::state::Exception;

        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let assist = EmulationAssist::default();
        let mut vcpu = FakeVcpu::new(0);
        let ud = Exception {
            vector: 6,
            error_code: None,
        };
        vcpu.queue_exception(ud);
        let emulation = |bytes: &[u8]| ScriptedExit::InternalError {
            suberror: 1,
            insn: Some(InsnBytes::new(bytes)),
        };
        vcpu.push(emulation(&[0xcc]))
            .push(ScriptedExit::Hlt)
            .push(emulation(&[0xf4]));
        let stop = AtomicBool::new(false);
        let handler = |exit: VmExit<'_>| {
            vmkit_exits::ExitDispatcher::new(std::sync::Arc::default(), std::sync::Arc::default())
                .dispatch(exit)
        };
        let exit =
            run_until_stop_with_assist(&mut vcpu, &handler, &assist, &memory, &stop).unwrap();
        assert_eq!(
            exit,
            LoopExit::Stopped(StopReason::InternalError {
                suberror: 1,
                insn: Some(InsnBytes::new(&[0xf4]))
            }),
            "hlt is not emulated: stop with a report"
        );
        assert_eq!(vcpu.registers().unwrap().rip, 1, "int3 completed");
        assert_eq!(
            vcpu.pending().map(|e| e.vector),
            Some(3),
            "#BP replaced the queued #UD"
        );
        assert_eq!(vcpu.halts(), 1);
        assert!(assist.last_report().unwrap().to_string().contains("hlt"));
        stop.store(true, Ordering::Release);
        assert_eq!(
            vcpu.run_loop_with_assist(&handler, &assist, &memory, &stop)
                .unwrap(),
            LoopExit::StopRequested
        );
        vcpu.push(ScriptedExit::Fail);
        stop.store(false, Ordering::Release);
        assert!(
            vcpu.run_loop_with_assist(&handler, &assist, &memory, &stop)
                .is_err()
        );
    }

    /// A handler that asks for a pause while it handles an exit (as another thread would while
    /// the guest runs): the inspection runs once, before the next entry, with `&mut` access, and
    /// the loop then goes on; several requests run it once.
    #[test]
    fn a_requested_pause_inspects_the_vcpu_between_two_entries() {
        use crate::fake::{FakeVcpu, ScriptedExit};
        use std::cell::RefCell;

        let mut vcpu = FakeVcpu::new(0);
        vcpu.push(ScriptedExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: vec![b'a'],
        })
        .push(ScriptedExit::IoOut {
            port: 0x3f8,
            size: 1,
            data: vec![b'b'],
        })
        .push(ScriptedExit::TripleFault);
        let events = RefCell::new(Vec::new());
        let mut inspector = Inspector::new(|vcpu: &mut FakeVcpu| {
            let mut regs = vcpu.registers().unwrap();
            events
                .borrow_mut()
                .push(format!("inspect rip={}", regs.rip));
            regs.rip = 0x1234;
            vcpu.set_registers(&regs).unwrap();
            ControlFlow::Continue(())
        });
        let pause = inspector.handle(vcpu.kicker());
        assert!(!pause.is_pending());
        let handler = |exit: VmExit<'_>| match exit {
            VmExit::IoOut { data, .. } => {
                events
                    .borrow_mut()
                    .push(format!("out {}", char::from(data[0])));
                if data == b"a" {
                    pause.pause();
                    pause.pause();
                }
                ExitAction::Resume
            }
            VmExit::TripleFault => ExitAction::Stop(StopReason::TripleFault),
            other => panic!("unexpected {other:?}"),
        };
        let stop = AtomicBool::new(false);
        assert_eq!(
            run_until_stop_inspected(&mut vcpu, &handler, &stop, &mut inspector),
            Ok(LoopExit::Stopped(StopReason::TripleFault))
        );
        assert_eq!(*events.borrow(), ["out a", "inspect rip=0", "out b"]);
        assert!(!pause.is_pending(), "the inspection consumed the request");
        assert_eq!(
            vcpu.registers().unwrap().rip,
            0x1234,
            "inspections may write"
        );
        // The kick that came with the request cost one extra run, no exit.
        assert_eq!(vcpu.runs(), 4);
    }

    /// An inspection that breaks ends the loop before the guest runs again; a set stop flag wins
    /// over a pending request, which stays pending; the assist's loop inspects too.
    #[test]
    fn an_inspection_can_end_the_loop_and_stop_comes_first() {
        use crate::fake::{FakeVcpu, ScriptedExit};
        use vm_memory::{GuestAddress, GuestMemoryMmap};

        let mut vcpu = FakeVcpu::new(0);
        vcpu.push(ScriptedExit::Hlt);
        let mut inspections = 0;
        let mut inspector = Inspector::new(|_: &mut FakeVcpu| {
            inspections += 1;
            ControlFlow::Break(())
        });
        let pause = inspector.handle(vcpu.kicker());
        let handler = |_: VmExit<'_>| ExitAction::Resume;
        let stop = AtomicBool::new(true);
        pause.pause();
        assert_eq!(
            run_until_stop_inspected(&mut vcpu, &handler, &stop, &mut inspector),
            Ok(LoopExit::StopRequested)
        );
        assert!(pause.is_pending(), "stop was checked first");

        stop.store(false, Ordering::Release);
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let assist = EmulationAssist::default();
        assert_eq!(
            run_until_stop_with_assist_inspected(
                &mut vcpu,
                &handler,
                &assist,
                &memory,
                &stop,
                &mut inspector
            ),
            Ok(LoopExit::StopRequested)
        );
        assert!(!pause.is_pending());
        assert_eq!(vcpu.runs(), 0, "the guest never ran");
        assert_eq!(vcpu.remaining(), 1);
        drop(inspector);
        assert_eq!(inspections, 1);
    }

    /// Without a request the inspected loop behaves as the plain one.
    #[test]
    fn an_idle_inspector_changes_nothing() {
        use crate::fake::{FakeVcpu, ScriptedExit};

        let mut vcpu = FakeVcpu::new(0);
        vcpu.push(ScriptedExit::Hlt).push(ScriptedExit::TripleFault);
        let mut inspector = Inspector::new(|_: &mut FakeVcpu| -> ControlFlow<()> {
            panic!("nobody asked for a pause")
        });
        let handler = |exit: VmExit<'_>| match exit {
            VmExit::Hlt => ExitAction::Halt,
            _ => ExitAction::Stop(StopReason::TripleFault),
        };
        let stop = AtomicBool::new(false);
        assert_eq!(
            run_until_stop_inspected(&mut vcpu, &handler, &stop, &mut inspector),
            Ok(LoopExit::Stopped(StopReason::TripleFault))
        );
        assert_eq!((vcpu.runs(), vcpu.halts()), (2, 1));
    }
}
