//! The simulator on a tiny virtio device written here (not vmkit's): an honest one passes, and
//! each planted bug is caught.

use std::sync::{Arc, Mutex};

use arbitrary::Unstructured;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_exits::{DeviceAction, InterruptTrigger, PCI_NUM_BARS, PciBar, PciBarKind, PciDevice};

use super::*;
use crate::lines::Line;

/// A bug planted in the tiny device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// Writes one byte past each writable buffer.
    WritesPastBuffer,
    /// Returns the last head of a notification a second time.
    HeadTwice,
    /// Returns a head nobody published.
    BogusHead,
    /// Reports one byte more than it wrote.
    LongLength,
    /// Sets `DRIVER_OK` itself when the driver sets `FEATURES_OK`.
    SetsDriverOk,
    /// Leaves the byte of `config_generation` unfilled in reads.
    UnfilledRead,
    /// Keeps its queue enabled across a reset.
    QueueSurvivesReset,
    /// Accepts `FEATURES_OK` whatever the driver accepted.
    AcceptsAnything,
    /// Raises its line once per chain, and five more times.
    IrqStorm,
    /// Keeps serving the old ring after a reset.
    ServesAfterReset,
    /// Writes the last byte of guest memory at every notification, far from any buffer.
    WritesFar,
    /// Writes the first buffer it filled again at the next notification, after its chain was
    /// used.
    WritesAfterUse,
}

const QUEUE_MAX: u16 = 8;
const OFFERED: u64 = 1 << 32 | 1 << 5;

#[derive(Default)]
struct Queue {
    size: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

struct State {
    config: [u8; 256],
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    queue: Queue,
    last_avail: u16,
    used_idx: u16,
    /// The ring kept across a reset by [`Bug::ServesAfterReset`].
    stale: Option<(u64, u64, u64, u16)>,
    /// The buffer [`Bug::WritesAfterUse`] writes again.
    used_buffer: Option<u64>,
}

/// A virtio device of one queue of 8 that fills each writable buffer with 0xA5 (at most 64
/// bytes of it) and returns the chain with the length written.
struct Tiny {
    bug: Bug,
    memory: GuestMemoryMmap,
    line: Line,
    state: Mutex<State>,
}

fn vendor_cap(config: &mut [u8; 256], at: usize, next: u8, kind: u8, offset: u32, len: u32) {
    let cap_len = if kind == 2 { 20 } else { 16 };
    config[at..at + 4].copy_from_slice(&[0x09, next, cap_len, kind]);
    config[at + 4] = 0;
    config[at + 8..at + 12].copy_from_slice(&offset.to_le_bytes());
    config[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
}

impl Tiny {
    fn new(bug: Bug, memory: GuestMemoryMmap, line: Line) -> Self {
        let mut config = [0u8; 256];
        config[..4].copy_from_slice(&[0xF4, 0x1A, 0x7F, 0x10]);
        config[6] = 0x10;
        config[0x34] = 0x40;
        vendor_cap(&mut config, 0x40, 0x50, 1, 0x000, 0x38);
        vendor_cap(&mut config, 0x50, 0x68, 2, 0x100, 4);
        vendor_cap(&mut config, 0x68, 0x78, 3, 0x200, 1);
        vendor_cap(&mut config, 0x78, 0x88, 4, 0x300, 4);
        // MSI-X: two entries at BAR 0 offset 0x400; then the PCI configuration access window.
        config[0x88..0x90].copy_from_slice(&[0x11, 0x98, 1, 0, 0x00, 0x04, 0, 0]);
        vendor_cap(&mut config, 0x98, 0x00, 5, 0, 0);
        config[0x98 + 2] = 20;
        let state = State {
            config,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queue: Queue {
                size: QUEUE_MAX,
                ..Queue::default()
            },
            last_avail: 0,
            used_idx: 0,
            stale: None,
            used_buffer: None,
        };
        Tiny {
            bug,
            memory,
            line,
            state: Mutex::new(state),
        }
    }

    fn common(&self, s: &State, offset: u64) -> (u64, u64) {
        let selected = s.queue_select == 0;
        let q = |v: u64| if selected { v } else { 0 };
        match offset {
            0x00..=0x03 => (0, s.device_feature_select.into()),
            0x04..=0x07 => (
                4,
                (OFFERED >> (32 * s.device_feature_select.min(2))) & 0xFFFF_FFFF,
            ),
            0x08..=0x0B => (8, s.driver_feature_select.into()),
            0x0C..=0x0F => (
                0xC,
                (s.driver_features >> (32 * s.driver_feature_select.min(2))) & 0xFFFF_FFFF,
            ),
            0x12..=0x13 => (0x12, 1),
            0x14 => (0x14, s.status.into()),
            0x16..=0x17 => (0x16, s.queue_select.into()),
            0x18..=0x19 => (0x18, q(s.queue.size.into())),
            0x1C..=0x1D => (0x1C, q(s.queue.enabled.into())),
            0x20..=0x27 => (0x20, q(s.queue.desc)),
            0x28..=0x2F => (0x28, q(s.queue.avail)),
            0x30..=0x37 => (0x30, q(s.queue.used)),
            _ => (offset, 0),
        }
    }

    fn reset(&self, s: &mut State) {
        if self.bug == Bug::ServesAfterReset && s.queue.enabled {
            s.stale = Some((s.queue.desc, s.queue.avail, s.queue.used, s.queue.size));
        }
        let enabled = self.bug == Bug::QueueSurvivesReset && s.queue.enabled;
        s.status = 0;
        s.driver_features = 0;
        s.queue = Queue {
            size: QUEUE_MAX,
            enabled,
            ..Queue::default()
        };
        s.last_avail = 0;
        s.used_idx = 0;
    }

    fn write_common(&self, s: &mut State, offset: u64, data: &[u8]) {
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let q_ok = s.queue_select == 0 && s.status & 4 == 0;
        match (offset, data.len()) {
            (0x00, 4) => s.device_feature_select = value as u32,
            (0x08, 4) => s.driver_feature_select = value as u32,
            (0x0C, 4) => match s.driver_feature_select {
                0 => s.driver_features = s.driver_features & !0xFFFF_FFFF | value,
                1 => s.driver_features = s.driver_features & 0xFFFF_FFFF | value << 32,
                _ => {}
            },
            (0x14, 1) => {
                let value = value as u8;
                if value == 0 {
                    return self.reset(s);
                }
                let mut status = value;
                if status & 8 != 0
                    && s.driver_features & !OFFERED != 0
                    && self.bug != Bug::AcceptsAnything
                {
                    status &= !8;
                }
                if status & 8 != 0 && self.bug == Bug::SetsDriverOk {
                    status |= 4;
                }
                s.status = status;
            }
            (0x16, 2) => s.queue_select = value as u16,
            (0x18, 2) if q_ok && (value as u16).is_power_of_two() && value <= 8 => {
                s.queue.size = value as u16
            }
            (0x1C, 2) if q_ok => s.queue.enabled = value == 1,
            (0x20..=0x37, 4) if q_ok => {
                let field = match (offset - 0x20) / 8 {
                    0 => &mut s.queue.desc,
                    1 => &mut s.queue.avail,
                    _ => &mut s.queue.used,
                };
                *field = if offset % 8 == 4 {
                    *field & 0xFFFF_FFFF | value << 32
                } else {
                    *field & !0xFFFF_FFFF | value
                };
            }
            _ => {}
        }
    }

    fn notify(&self, s: &mut State) {
        let (desc, avail, used, size) = match s.stale {
            Some(ring) => ring,
            None if s.status & 4 != 0 && s.queue.enabled => {
                (s.queue.desc, s.queue.avail, s.queue.used, s.queue.size)
            }
            None => return,
        };
        let m = &self.memory;
        if self.bug == Bug::WritesFar {
            let _ = m.write_obj(0x5Au8, GuestAddress(DEFAULT_MEMORY as u64 - 1));
        }
        if let (Bug::WritesAfterUse, Some(addr)) = (self.bug, s.used_buffer) {
            let _ = m.write_obj(0x5Au8, GuestAddress(addr));
        }
        let Ok(idx) = m.read_obj::<u16>(GuestAddress(avail.wrapping_add(2))) else {
            return;
        };
        let mut last_head = None;
        for _ in 0..size {
            if s.last_avail == idx {
                break;
            }
            let slot = u64::from(s.last_avail % size);
            s.last_avail = s.last_avail.wrapping_add(1);
            let Ok(head) = m.read_obj::<u16>(GuestAddress(avail.wrapping_add(4 + 2 * slot))) else {
                return;
            };
            if head >= size {
                continue;
            }
            let mut written = 0u32;
            let mut at = head;
            for _ in 0..size {
                let base = desc.wrapping_add(16 * u64::from(at));
                let (Ok(addr), Ok(len), Ok(flags), Ok(next)) = (
                    m.read_obj::<u64>(GuestAddress(base)),
                    m.read_obj::<u32>(GuestAddress(base.wrapping_add(8))),
                    m.read_obj::<u16>(GuestAddress(base.wrapping_add(12))),
                    m.read_obj::<u16>(GuestAddress(base.wrapping_add(14))),
                ) else {
                    break;
                };
                if flags & 2 != 0 && flags & 4 == 0 {
                    let n = len.min(64);
                    if m.write_slice(&vec![0xA5; n as usize], GuestAddress(addr))
                        .is_ok()
                    {
                        written += n;
                        s.used_buffer.get_or_insert(addr);
                    }
                    if self.bug == Bug::WritesPastBuffer {
                        let _ =
                            m.write_obj(0x5Au8, GuestAddress(addr.wrapping_add(u64::from(len))));
                    }
                }
                if flags & 1 == 0 || next >= size {
                    break;
                }
                at = next;
            }
            let len = written + u32::from(self.bug == Bug::LongLength);
            let id = if self.bug == Bug::BogusHead {
                u32::from(size - 1)
            } else {
                u32::from(head)
            };
            self.put_used(s, used, size, id, len);
            last_head = Some((id, len));
            if self.bug == Bug::IrqStorm {
                let _ = self.line.trigger();
            }
        }
        if let (Bug::HeadTwice, Some((id, len))) = (self.bug, last_head) {
            self.put_used(s, used, size, id, len);
        }
        if last_head.is_some() {
            let _ = self.line.trigger();
            if self.bug == Bug::IrqStorm {
                for _ in 0..5 {
                    let _ = self.line.trigger();
                }
            }
        }
    }

    fn put_used(&self, s: &mut State, used: u64, size: u16, id: u32, len: u32) {
        let elem = used.wrapping_add(4 + 8 * u64::from(s.used_idx % size));
        let _ = self.memory.write_obj(id, GuestAddress(elem));
        let _ = self
            .memory
            .write_obj(len, GuestAddress(elem.wrapping_add(4)));
        s.used_idx = s.used_idx.wrapping_add(1);
        let _ = self
            .memory
            .write_obj(s.used_idx, GuestAddress(used.wrapping_add(2)));
    }
}

impl PciDevice for Tiny {
    fn config_read(&self, offset: u8, data: &mut [u8]) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = s.config.get(usize::from(offset) + i).copied().unwrap_or(0);
        }
    }

    fn config_write(&self, offset: u8, data: &[u8]) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, &byte) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            if (4..6).contains(&at) {
                s.config[at] = byte;
            }
        }
    }

    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        let mut bars = [None; PCI_NUM_BARS];
        bars[0] = Some(PciBar {
            kind: PciBarKind::Memory32,
            size: 0x1000,
            address: 0,
            prefetchable: false,
            decoding: true,
        });
        bars
    }

    fn bar_read(&self, index: u8, offset: u64, data: &mut [u8]) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, byte) in data.iter_mut().enumerate() {
            let o = offset.wrapping_add(i as u64);
            if self.bug == Bug::UnfilledRead && o == 0x15 {
                continue;
            }
            *byte = match (index, o) {
                (0, 0..=0x37) => {
                    let (start, value) = self.common(&s, o);
                    (value >> (8 * (o - start))) as u8
                }
                (0, 0x300..=0x303) => (0x1234u32 >> (8 * (o - 0x300))) as u8,
                _ => 0,
            };
        }
    }

    fn bar_write(&self, index: u8, offset: u64, data: &[u8]) -> DeviceAction {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (index, offset) {
            (0, 0..=0x37) => self.write_common(&mut s, offset, data),
            (0, 0x100) => self.notify(&mut s),
            _ => {}
        }
        DeviceAction::Resume
    }
}

struct TinyFixture(Bug);

impl VirtioFixture for TinyFixture {
    type Devices = Arc<Tiny>;
    type Config = ();

    fn config(&self, _u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        Ok(())
    }

    fn encode_config(&self, _config: &(), _out: &mut Vec<u8>) {}

    fn build(&self, _config: &(), wiring: &mut Wiring) -> (Arc<dyn PciDevice>, Arc<Tiny>) {
        let line = wiring.interrupt();
        let tiny = Arc::new(Tiny::new(self.0, wiring.memory().clone(), line));
        (tiny.clone(), tiny)
    }

    fn max_line_calls_per_notify(&self) -> u64 {
        1
    }

    fn max_chains_per_notify(&self) -> u64 {
        u64::from(QUEUE_MAX)
    }
}

fn bring_up() -> Vec<VirtioOp> {
    vec![
        VirtioOp::Negotiate { mask: u64::MAX },
        VirtioOp::Queue(QueueSetup::honest(0)),
        VirtioOp::DriverOk,
    ]
}

fn requests(n: u8) -> Vec<VirtioOp> {
    let mut ops = bring_up();
    for i in 0..n {
        ops.push(VirtioOp::Chain(Chain::direct(0, &[i; 10])));
    }
    ops.push(VirtioOp::Notify(0));
    ops
}

fn run(bug: Bug, ops: &[VirtioOp]) -> DriverView {
    VirtioFuzzer::new(TinyFixture(bug)).run_ops_then(&(), ops, |_, view| *view)
}

#[test]
fn an_honest_device_completes_chains_and_passes() {
    let view = run(Bug::None, &requests(3));
    assert!(view.live && !view.tainted, "{view:?}");
    assert_eq!(view.outstanding, 0, "every chain used");
    assert_eq!(view.status, 0xF);
    let fuzzer = VirtioFuzzer::new(TinyFixture(Bug::None));
    // Every kind of operation, flawed chains and resets in flight.
    let mut ops = requests(2);
    for (i, flaw) in [
        Flaw::Loop,
        Flaw::NextOutOfRange(3),
        Flaw::HeadOutOfRange(1),
        Flaw::Overlapping,
        Flaw::OverRings(16),
        Flaw::ZeroLength(1),
        Flaw::HugeLength(0),
    ]
    .into_iter()
    .enumerate()
    {
        for form in [Form::Direct, Form::Indirect, Form::Chained, Form::Nested] {
            ops.push(VirtioOp::Chain(Chain {
                queue: 0,
                form,
                split: i % 2 == 0,
                merge: i % 3 == 0,
                flaw,
                payload: vec![7; i * 9],
            }));
        }
        ops.push(VirtioOp::Notify(0));
    }
    ops.extend([
        VirtioOp::Chain(Chain::direct(0, b"in flight")),
        VirtioOp::Reset,
        VirtioOp::Read {
            at: Structure::Common,
            offset: 0,
            size: 8,
        },
        VirtioOp::Read {
            at: Structure::Device,
            offset: 1,
            size: 4,
        },
        VirtioOp::ConfigRead {
            offset: 0x40,
            size: 3,
        },
        VirtioOp::Status(4),
        VirtioOp::FailInterrupts(true),
    ]);
    ops.extend(requests(1));
    fuzzer.run_ops(&(), &ops);
    // The bytes of seeds and random bytes are inputs too.
    fuzzer.run(&fuzzer.encode(&(), &ops));
    let mut state = 0x9E37_79B9u32;
    for len in [0usize, 1, 7, 64, 300, 1000] {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        fuzzer.run(&data);
    }
}

#[test]
fn the_capability_walk_finds_the_structures() {
    // The tiny device's structures are not where vmkit's are: notifications at 0x100 reach it.
    let view = run(Bug::None, &requests(1));
    assert_eq!(view.outstanding, 0);
}

#[test]
#[should_panic(expected = "outside every device-writable buffer")]
fn a_write_past_a_buffer_is_caught() {
    run(Bug::WritesPastBuffer, &requests(1));
}

#[test]
#[should_panic(expected = "the device wrote guest memory at 0xffff (by this step at the latest)")]
fn a_write_far_from_every_buffer_is_caught() {
    // Nothing the driver does later looks there: the end of the input does.
    run(Bug::WritesFar, &requests(1));
}

#[test]
#[should_panic(expected = "outside every device-writable buffer")]
fn a_write_to_a_buffer_after_its_chain_was_used_is_caught() {
    let mut ops = requests(1);
    ops.push(VirtioOp::Chain(Chain::direct(0, b"second")));
    ops.push(VirtioOp::Notify(0));
    run(Bug::WritesAfterUse, &ops);
}

#[test]
fn the_writes_the_buggy_devices_make_are_caught_only_with_the_bugs() {
    // The same operations on the honest device pass.
    let mut ops = requests(1);
    ops.push(VirtioOp::Chain(Chain::direct(0, b"second")));
    ops.push(VirtioOp::Notify(0));
    let view = run(Bug::None, &ops);
    assert_eq!(view.outstanding, 0);
}

#[test]
#[should_panic(expected = "the used index moved by 2, with 1 chains outstanding")]
fn a_head_returned_twice_is_caught() {
    run(Bug::HeadTwice, &requests(1));
}

#[test]
#[should_panic(expected = "which is not outstanding")]
fn a_head_nobody_published_is_caught() {
    run(Bug::BogusHead, &requests(1));
}

#[test]
#[should_panic(expected = "more than its 10 device-writable bytes")]
fn a_length_past_the_writable_bytes_is_caught() {
    run(Bug::LongLength, &requests(1));
}

#[test]
#[should_panic(expected = "bits the driver never wrote")]
fn a_device_that_sets_driver_ok_itself_is_caught() {
    run(Bug::SetsDriverOk, &[VirtioOp::Negotiate { mask: 0 }]);
}

#[test]
#[should_panic(expected = "leaves bytes unfilled")]
fn an_unfilled_read_is_caught() {
    run(
        Bug::UnfilledRead,
        &[VirtioOp::Read {
            at: Structure::Common,
            offset: 0x14,
            size: 2,
        }],
    );
}

#[test]
#[should_panic(expected = "queue 0 reads enabled (1) after a reset")]
fn a_queue_that_survives_a_reset_is_caught() {
    let mut ops = requests(1);
    ops.push(VirtioOp::Reset);
    run(Bug::QueueSurvivesReset, &ops);
}

#[test]
#[should_panic(expected = "of which 0x2 it does not offer")]
fn features_accepted_but_not_offered_are_caught() {
    run(
        Bug::AcceptsAnything,
        &[
            VirtioOp::Status(1),
            VirtioOp::Status(3),
            VirtioOp::Features {
                select: 0,
                value: 0x22,
            },
            VirtioOp::Status(0xB),
        ],
    );
}

#[test]
#[should_panic(expected = "interrupt calls, more than the bound of 1")]
fn unbounded_interrupts_per_notification_are_caught() {
    run(Bug::IrqStorm, &requests(2));
}

#[test]
#[should_panic(expected = "outside every device-writable buffer")]
fn a_device_serving_chains_after_a_reset_is_caught() {
    let mut ops = bring_up();
    ops.push(VirtioOp::Chain(Chain::direct(0, b"in flight")));
    // Reset with the chain in flight; the driver sets the device up again elsewhere.
    ops.push(VirtioOp::Reset);
    ops.push(VirtioOp::Negotiate { mask: u64::MAX });
    ops.push(VirtioOp::Queue(QueueSetup {
        desc: Place::Ram(0x8000),
        avail: Place::Ram(0x9000),
        used: Place::Ram(0xA000),
        ..QueueSetup::honest(0)
    }));
    ops.push(VirtioOp::DriverOk);
    ops.push(VirtioOp::Notify(0));
    run(Bug::ServesAfterReset, &ops);
}

#[test]
fn every_input_starts_on_zeroed_guest_memory() {
    let fuzzer = VirtioFuzzer::new(TinyFixture(Bug::None));
    let mut dirty = requests(3);
    dirty.push(VirtioOp::Memory {
        queue: 9,
        area: 3,
        offset: 0xFFC0,
        data: vec![0xFF; 64],
    });
    dirty.push(VirtioOp::Chain(Chain::direct(0, &[0xEE; 64])));
    let view = fuzzer.run_ops_then(&(), &dirty, |_, view| *view);
    assert_eq!(view.outstanding, 1, "a chain left in flight");
    let zeroed = fuzzer.run_ops_then(&(), &[], |tiny, _| {
        let mut bytes = vec![0xAAu8; DEFAULT_MEMORY];
        tiny.memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
        bytes.iter().all(|&b| b == 0)
    });
    assert!(zeroed);
    // And the same input runs the same on reused memory.
    assert_eq!(fuzzer.run_ops_then(&(), &dirty, |_, view| *view), view);
}

#[test]
fn every_operation_runs_on_a_device_with_msix_and_the_access_window() {
    let mut ops = requests(1);
    ops.extend(super::ops::tests::every_kind());
    ops.extend([
        VirtioOp::ConfigWrite {
            offset: 0x98 + 16,
            data: vec![1, 2, 3, 4],
        },
        VirtioOp::ConfigRead {
            offset: 0x98 + 16,
            size: 3,
        },
        VirtioOp::Write {
            at: Structure::Common,
            offset: 0x14,
            data: vec![0],
        },
        VirtioOp::Write {
            at: Structure::Bar(0),
            offset: 0x10,
            data: vec![0xF, 0, 0, 0, 0, 0],
        },
        VirtioOp::Common { field: 0, value: 1 },
        VirtioOp::Read {
            at: Structure::Isr,
            offset: 0,
            size: 1,
        },
        VirtioOp::Read {
            at: Structure::Notify,
            offset: 2,
            size: 2,
        },
        VirtioOp::Read {
            at: Structure::Bar(1),
            offset: 0x300,
            size: 4,
        },
    ]);
    ops.extend(requests(2));
    ops.push(VirtioOp::Restart);
    let view = run(Bug::None, &ops);
    assert!(view.interrupts_failed);
    assert_eq!(
        view.status_written, 0,
        "the last step was a restart without a prologue"
    );
}

/// A guest's driver of the tiny device (its BAR 0 at 0xE000_0000), as a recording holds it:
/// the accesses, and at the notification the rings, descriptors and buffers the device read.
fn recorded_driver() -> crate::Recording {
    use vmkit_exits::ExitAction;
    use vmkit_exits::record::{
        Attribution, Data, Direction, ExitRecord, Record, RecordedExit, Route,
    };
    const BAR: u64 = 0xE000_0000;
    let mut records = Vec::new();
    let mut access = |offset: u64, data: &[u8], write: bool, reads: &[(u64, &[u8])]| {
        let seq = records.len() as u64;
        let addr = BAR + offset;
        let data = data.to_vec();
        records.push(Record::Exit(ExitRecord {
            seq,
            vcpu: 0,
            exit: match write {
                true => RecordedExit::MmioWrite { addr, data },
                false => RecordedExit::MmioRead { addr, data },
            },
            route: Route::Device,
            action: ExitAction::Resume,
        }));
        for &(gpa, bytes) in reads {
            records.push(Record::Memory {
                at: Attribution::Exit(seq),
                gpa,
                direction: Direction::Read,
                data: Data::Inline(bytes.to_vec()),
            });
        }
    };
    let mut write = |offset: u64, data: &[u8]| access(offset, data, true, &[]);
    for (offset, data) in [
        (0x14, &[0][..]),
        (0x14, &[1]),
        (0x14, &[3]),
        (0x08, &[0, 0, 0, 0]),
        (0x0C, &[0x20, 0, 0, 0]),
        (0x08, &[1, 0, 0, 0]),
        (0x0C, &[1, 0, 0, 0]),
        (0x14, &[0xB]),
        (0x16, &[0, 0]),
        (0x18, &[4, 0]),
        (0x20, &[0, 0x10, 0, 0]),
        (0x24, &[0, 0, 0, 0]),
        (0x28, &[0, 0x20, 0, 0]),
        (0x2C, &[0, 0, 0, 0]),
        (0x30, &[0, 0x30, 0, 0]),
        (0x34, &[0, 0, 0, 0]),
        (0x1C, &[1, 0]),
        (0x14, &[0xF]),
        // The MSI-X table: no structure.
        (0x400, &[0, 0, 0, 0]),
    ] {
        write(offset, data);
    }
    // The device configuration, the ISR, the status (left out).
    access(0x300, &[0; 4], false, &[]);
    access(0x200, &[1], false, &[]);
    access(0x14, &[0xF], false, &[]);
    // Two chains: head 1 of direct descriptors (a readable buffer, a writable one) and head 3
    // an indirect table (readable, writable).
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        d
    };
    let (d1, d2) = (desc(0x5000, 10, 1, 2), desc(0x6000, 10, 2, 0));
    let (d3, t0, t1) = (
        desc(0x7000, 32, 4, 0),
        desc(0x8000, 4, 1, 1),
        desc(0x9000, 8, 2, 0),
    );
    access(
        0x100,
        &[0, 0],
        true,
        &[
            (0x2002, &[2, 0]),
            (0x2004, &[1, 0]),
            (0x1010, &d1),
            (0x1020, &d2),
            (0x5000, &[7; 10]),
            (0x2006, &[3, 0]),
            (0x1030, &d3),
            (0x7000, &t0),
            (0x7010, &t1),
            (0x8000, &[1, 2, 3, 4]),
        ],
    );
    crate::Recording::from_records(records).unwrap()
}

#[test]
fn a_recorded_driver_becomes_the_operations_it_made() {
    let fuzzer = VirtioFuzzer::new(TinyFixture(Bug::None));
    let ops = fuzzer.ops_from_recording(&(), &recorded_driver(), &[(0, 0xE000_0000)]);
    assert_eq!(
        ops,
        [
            VirtioOp::Reset,
            VirtioOp::Status(1),
            VirtioOp::Status(3),
            VirtioOp::Features {
                select: 0,
                value: 0x20
            },
            VirtioOp::Features {
                select: 1,
                value: 1
            },
            VirtioOp::Status(0xB),
            VirtioOp::Queue(QueueSetup {
                size: 4,
                ..QueueSetup::honest(0)
            }),
            VirtioOp::Status(0xF),
            VirtioOp::Read {
                at: Structure::Device,
                offset: 0,
                size: 4
            },
            VirtioOp::Read {
                at: Structure::Isr,
                offset: 0,
                size: 1
            },
            VirtioOp::Chain(Chain::direct(0, &[7; 10])),
            VirtioOp::Chain(Chain {
                form: Form::Indirect,
                ..Chain::direct(0, &[1, 2, 3, 4])
            }),
            VirtioOp::Notify(0),
        ]
    );
    // The operations drive the device as the guest did: live, both chains used.
    let view = fuzzer.run_ops_then(&(), &ops, |_, view| *view);
    assert!(view.live && !view.tainted, "{view:?}");
    assert_eq!((view.published, view.outstanding), (2, 0));
    // A BAR elsewhere: nothing of the recording is the device's.
    assert_eq!(
        fuzzer.ops_from_recording(&(), &recorded_driver(), &[(0, 0xF000_0000)]),
        []
    );
}
