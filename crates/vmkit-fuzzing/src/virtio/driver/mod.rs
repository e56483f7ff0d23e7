//! The simulated driver: its view of the device (capabilities, queues, chains in flight), the
//! operations, and the checks after each step.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_exits::PciDevice;

use super::ops::{COMMON_FIELDS, Chain, Flaw, Form, Place, QueueSetup, Structure, VirtioOp};
use super::{Completion, DriverView, Msi, Notified, Segment, VirtioFixture, Wiring};
use crate::lines::Lines;

mod chains;
mod memory;

pub(crate) use memory::Guest;

const ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;
pub(super) const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub(super) const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub(super) const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

// Common-configuration offsets (virtio 1.x, 4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
pub(super) const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub(super) const DRIVER_FEATURE: u64 = 0x0C;
const NUM_QUEUES: u64 = 0x12;
pub(super) const DEVICE_STATUS: u64 = 0x14;
pub(super) const QUEUE_SELECT: u64 = 0x16;
pub(super) const QUEUE_SIZE: u64 = 0x18;
pub(super) const QUEUE_MSIX_VECTOR: u64 = 0x1A;
pub(super) const QUEUE_ENABLE: u64 = 0x1C;
const QUEUE_NOTIFY_OFF: u64 = 0x1E;
pub(super) const QUEUE_DESC: u64 = 0x20;
pub(super) const QUEUE_DRIVER: u64 = 0x28;
pub(super) const QUEUE_DEVICE: u64 = 0x30;

/// The most queues the simulator follows.
const MAX_QUEUES: u16 = 64;
/// The most queues that get a place of their own in the ring area.
const RING_SLOTS: u64 = 4;
/// Bytes of the ring area of one queue (a queue of up to 256 entries fits).
const RING_SLOT: u64 = 0x3000;
/// Where the ring area starts in the first region.
const RING_AREA: u64 = 0x1000;
/// The most capabilities the walk follows (a looping list ends there).
const MAX_CAPS: usize = 48;

/// A structure in a BAR: index, offset, length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Window {
    bar: u8,
    offset: u64,
    len: u64,
}

/// What the capability walk found.
#[derive(Clone, Copy, Debug, Default)]
struct Caps {
    common: Option<Window>,
    notify: Option<(Window, u32)>,
    isr: Option<Window>,
    device: Option<Window>,
    /// The configuration-space offset of the PCI configuration access capability.
    pci_cfg: Option<u8>,
    /// The MSI-X capability's offset, its table and its number of entries.
    msix: Option<(u8, Window, u16)>,
}

/// What the capability walk found, kept for the next input on a device built for the same
/// configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walk {
    caps: Caps,
    num_queues: u16,
}

impl Walk {
    /// The structures found, each with its window: BAR index, offset in it, length.
    pub(crate) fn structures(&self) -> Vec<(Structure, u8, u64, u64)> {
        let caps = &self.caps;
        [
            (Structure::Common, caps.common),
            (Structure::Notify, caps.notify.map(|(w, _)| w)),
            (Structure::Isr, caps.isr),
            (Structure::Device, caps.device),
        ]
        .into_iter()
        .filter_map(|(s, w)| w.map(|w| (s, w.bar, w.offset, w.len)))
        .collect()
    }
}

/// A chain in flight.
struct Outstanding {
    head: u16,
    /// Descriptor-table slots it holds.
    slots: Vec<u16>,
    /// Its device-writable buffers (address, length).
    writable: Vec<(u64, u32)>,
    /// The sum of their lengths (saturating).
    writable_len: u32,
    /// Its indirect tables (address, bytes).
    tables: Vec<(u64, u64)>,
    well_formed: bool,
    /// Published since the queue's last notification.
    fresh: bool,
    payload: Vec<u8>,
}

/// A queue the device took at `DRIVER_OK`, as read back from its registers.
struct Live {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify_off: u16,
    avail_idx: u16,
    used_seen: u16,
    taken: Vec<bool>,
    next_slot: u16,
    outstanding: Vec<Outstanding>,
}

impl Live {
    fn rings(&self) -> [(u64, u64); 3] {
        let n = u64::from(self.size);
        [
            (self.desc, 16 * n),
            (self.avail, 6 + 2 * n),
            (self.used, 6 + 8 * n),
        ]
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    let end = |(start, len): (u64, u64)| start.saturating_add(len);
    a.0 < end(b) && b.0 < end(a) && a.1 > 0 && b.1 > 0
}

fn contains(range: (u64, u64), addr: u64) -> bool {
    addr >= range.0 && addr - range.0 < range.1
}

/// The fixture's hooks on the devices it built, as the simulator calls them. The simulator
/// sees every fixture through this one type, so that it is compiled once, in this crate, rather
/// than instantiated in each fuzz target: built without coverage instrumentation (see the
/// crate documentation), it then adds no edges of its own to a target's, and libFuzzer's
/// bookkeeping per input follows the device's code alone.
pub(crate) trait Hooks {
    fn request(&self, queue: u16, payload: &[u8], segments: &mut Vec<Segment>);
    fn user_op(&self, tag: u8, data: &[u8]);
    fn before_notify(&self);
    fn after_notify(&self, notified: &Notified);
    fn completed(&self, completion: &Completion<'_>);
    fn check(&self, driver: &DriverView);
    fn max_chains_per_notify(&self) -> u64;
    fn max_line_calls_per_notify(&self) -> u64;
}

/// A fixture with the devices it built for one input.
pub(crate) struct Bound<'f, F: VirtioFixture> {
    pub(crate) fixture: &'f F,
    pub(crate) devices: F::Devices,
}

impl<F: VirtioFixture> Hooks for Bound<'_, F> {
    fn request(&self, queue: u16, payload: &[u8], segments: &mut Vec<Segment>) {
        self.fixture
            .request(&self.devices, queue, payload, segments);
    }
    fn user_op(&self, tag: u8, data: &[u8]) {
        self.fixture.user_op(&self.devices, tag, data);
    }
    fn before_notify(&self) {
        self.fixture.before_notify(&self.devices);
    }
    fn after_notify(&self, notified: &Notified) {
        self.fixture.after_notify(&self.devices, notified);
    }
    fn completed(&self, completion: &Completion<'_>) {
        self.fixture.completed(&self.devices, completion);
    }
    fn check(&self, driver: &DriverView) {
        self.fixture.check(&self.devices, driver);
    }
    fn max_chains_per_notify(&self) -> u64 {
        self.fixture.max_chains_per_notify()
    }
    fn max_line_calls_per_notify(&self) -> u64 {
        self.fixture.max_line_calls_per_notify()
    }
}

/// The wiring of a device to be built on `guest`'s memory.
pub(crate) fn wiring(guest: &Guest) -> Wiring {
    Wiring {
        memory: guest.memory.clone(),
        lines: Lines::default(),
        msi: Arc::new(Msi::default()),
    }
}

pub(crate) struct Sim<'h> {
    hooks: &'h dyn Hooks,
    memory: GuestMemoryMmap,
    guest: Guest,
    regions: Vec<(u64, usize)>,
    device: Arc<dyn PciDevice>,
    wiring: Wiring,
    caps: Caps,
    num_queues: u16,
    live: Vec<Option<Live>>,
    status: u8,
    status_written: u8,
    /// The driver features written since the reset, where every write was followed.
    features: Option<u64>,
    tainted: bool,
    interrupts_failed: bool,
    data_start: u64,
    data_end: u64,
    data_next: u64,
    /// Whether the device was called since the last synchronisation.
    pending: bool,
    /// The fixture's bring-up steps.
    prologue: Vec<VirtioOp>,
    published: u64,
    resets: u64,
}

impl<'h> Sim<'h> {
    /// A simulation on `device`, built on `wiring` in `guest` memory, with the fixture's
    /// `hooks` on it and its bring-up steps `prologue`. `walk` is the capability walk of the
    /// last input when the device is the same (else the device is walked).
    pub(crate) fn new(
        hooks: &'h dyn Hooks,
        guest: Guest,
        wiring: Wiring,
        device: Arc<dyn PciDevice>,
        walk: Option<Walk>,
        prologue: Vec<VirtioOp>,
    ) -> Self {
        let regions = guest.regions.clone();
        let memory = guest.memory.clone();
        let (first, first_len) = regions.first().copied().unwrap_or((0, 0));
        let mut sim = Sim {
            hooks,
            memory,
            guest,
            device,
            wiring,
            caps: Caps::default(),
            num_queues: 0,
            live: Vec::new(),
            status: 0,
            status_written: 0,
            features: Some(0),
            tainted: false,
            interrupts_failed: false,
            data_start: first,
            data_end: first + first_len as u64,
            data_next: first,
            // The capability walk called the device.
            pending: true,
            prologue,
            published: 0,
            resets: 0,
            regions,
        };
        // The same device for the same configuration: the walk of the last input holds.
        let walk = walk.unwrap_or_else(|| {
            let caps = sim.walk_caps();
            sim.caps = caps;
            Walk {
                caps,
                num_queues: (sim.common_read(NUM_QUEUES, 2) as u16).min(MAX_QUEUES),
            }
        });
        sim.caps = walk.caps;
        sim.num_queues = walk.num_queues;
        // Firmware enables memory decoding and bus mastering.
        let command = sim.config_read16(0x04);
        sim.device
            .config_write(0x04, &(command | 0x6).to_le_bytes());
        sim.live = (0..sim.num_queues).map(|_| None).collect();
        let ring_end = first + RING_AREA + RING_SLOT * u64::from(sim.num_queues).min(RING_SLOTS);
        if ring_end < sim.data_end {
            sim.data_start = ring_end;
        }
        sim.data_next = sim.data_start;
        sim
    }

    /// Runs the fixture's bring-up (again, at a [`VirtioOp::Restart`]).
    pub(crate) fn restart(&mut self) {
        let prologue = std::mem::take(&mut self.prologue);
        for op in &prologue {
            if *op != VirtioOp::Restart {
                self.step(usize::MAX, op);
            }
        }
        self.prologue = prologue;
    }

    /// Ends the simulation: the driver's view, the guest memory for the next input and the
    /// capability walk (the device is dropped).
    pub(crate) fn into_parts(self) -> (DriverView, Guest, Walk) {
        let view = self.view();
        let walk = Walk {
            caps: self.caps,
            num_queues: self.num_queues,
        };
        (view, self.guest, walk)
    }

    fn view(&self) -> DriverView {
        DriverView {
            status: self.status,
            status_written: self.status_written,
            live: self.live.iter().any(Option::is_some),
            tainted: self.tainted,
            interrupts_failed: self.interrupts_failed,
            outstanding: self.outstanding(),
            published: self.published,
            resets: self.resets,
        }
    }

    fn outstanding(&self) -> usize {
        self.live
            .iter()
            .flatten()
            .map(|q| q.outstanding.len())
            .sum()
    }

    // ---- configuration space and capabilities ----

    fn config_read(&self, offset: u8, len: usize) -> u32 {
        let mut data = [0u8; 4];
        self.device.config_read(offset, &mut data[..len.min(4)]);
        u32::from_le_bytes(data)
    }

    fn config_read16(&self, offset: u8) -> u16 {
        self.config_read(offset, 2) as u16
    }

    fn walk_caps(&self) -> Caps {
        let mut caps = Caps::default();
        if self.config_read16(0x06) & 0x10 == 0 {
            return caps;
        }
        let mut at = self.config_read(0x34, 1) as u8 & 0xFC;
        for _ in 0..MAX_CAPS {
            if at < 0x40 {
                break;
            }
            let id = self.config_read(at, 1) as u8;
            match id {
                0x09 => {
                    let kind = self.config_read(at.wrapping_add(3), 1) as u8;
                    let window = Window {
                        bar: self.config_read(at.wrapping_add(4), 1) as u8,
                        offset: u64::from(self.config_read(at.wrapping_add(8), 4)),
                        len: u64::from(self.config_read(at.wrapping_add(12), 4)),
                    };
                    if window.bar < 6 || kind == 5 {
                        match kind {
                            1 => {
                                caps.common.get_or_insert(window);
                            }
                            2 => {
                                let mult = self.config_read(at.wrapping_add(16), 4);
                                caps.notify.get_or_insert((window, mult));
                            }
                            3 => {
                                caps.isr.get_or_insert(window);
                            }
                            4 => {
                                caps.device.get_or_insert(window);
                            }
                            5 => {
                                caps.pci_cfg.get_or_insert(at);
                            }
                            _ => {}
                        }
                    }
                }
                0x11 => {
                    let control = self.config_read16(at.wrapping_add(2));
                    let table = self.config_read(at.wrapping_add(4), 4);
                    let window = Window {
                        bar: (table & 7) as u8,
                        offset: u64::from(table & !7),
                        len: 16 * (u64::from(control & 0x7FF) + 1),
                    };
                    caps.msix.get_or_insert((at, window, (control & 0x7FF) + 1));
                }
                _ => {}
            }
            at = self.config_read(at.wrapping_add(1), 1) as u8 & 0xFC;
        }
        caps
    }

    // ---- BAR structures ----

    fn bar_read(&self, window: Option<Window>, offset: u64, data: &mut [u8]) {
        match window {
            Some(w) => self
                .device
                .bar_read(w.bar, w.offset.wrapping_add(offset), data),
            None => data.fill(0),
        }
    }

    fn bar_write(&self, window: Option<Window>, offset: u64, data: &[u8]) {
        if let Some(w) = window {
            let _ = self
                .device
                .bar_write(w.bar, w.offset.wrapping_add(offset), data);
        }
    }

    fn common_read(&self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.bar_read(self.caps.common, offset, &mut data[..len.min(8)]);
        u64::from_le_bytes(data)
    }

    fn common_write(&self, offset: u64, value: u64, len: usize) {
        self.bar_write(self.caps.common, offset, &value.to_le_bytes()[..len.min(8)]);
    }

    fn read_status(&mut self) -> u8 {
        self.status = self.common_read(DEVICE_STATUS, 1) as u8;
        self.status
    }

    // ---- the driver's bookkeeping ----

    fn on_reset(&mut self, step: usize) {
        if self.tainted {
            // What the device wrote while the driver's structures were its own is taken as it
            // is before the checks come back.
            self.check_all(step);
        }
        for q in &mut self.live {
            *q = None;
        }
        self.status_written = 0;
        self.features = Some(0);
        self.tainted = false;
        self.published = 0;
        self.resets += 1;
    }

    /// The driver saw `DRIVER_OK`: reads back what each queue was set to.
    fn go_live(&mut self, step: usize) {
        let mut rings = Vec::new();
        for index in 0..self.num_queues {
            self.common_write(QUEUE_SELECT, u64::from(index), 2);
            let size = self.common_read(QUEUE_SIZE, 2) as u16;
            let enabled = self.common_read(QUEUE_ENABLE, 2) as u16 == 1;
            if !enabled || !size.is_power_of_two() {
                continue;
            }
            let address =
                |sim: &Self, at: u64| sim.common_read(at, 4) | sim.common_read(at + 4, 4) << 32;
            let live = Live {
                size,
                desc: address(self, QUEUE_DESC),
                avail: address(self, QUEUE_DRIVER),
                used: address(self, QUEUE_DEVICE),
                notify_off: self.common_read(QUEUE_NOTIFY_OFF, 2) as u16,
                avail_idx: 0,
                used_seen: 0,
                taken: vec![false; usize::from(size)],
                next_slot: 0,
                outstanding: Vec::new(),
            };
            // Rings the driver did not zero, or that overlap, cannot be followed.
            let zeroed = |addr: u64| self.read_u32(addr) == Some(0);
            if !zeroed(live.avail) || !zeroed(live.used) {
                self.tainted = true;
            }
            rings.extend(live.rings());
            // The used ring becomes the device's to write: what it wrote there before is
            // judged first.
            let (used, used_len) = live.rings()[2];
            self.look(step, used, used_len);
            self.live[usize::from(index)] = Some(live);
        }
        for (i, &a) in rings.iter().enumerate() {
            if rings[i + 1..].iter().any(|&b| overlaps(a, b)) {
                self.tainted = true;
            }
        }
    }

    /// Reads the used rings: checks every new entry and retires its chain. Returns the entries
    /// found on each queue.
    fn collect_used(&mut self, step: usize) -> u64 {
        if self.tainted {
            return 0;
        }
        let mut total = 0;
        for index in 0..self.live.len() {
            let Some(q) = &self.live[index] else {
                continue;
            };
            let Some(idx) = self.read_u16(q.used.wrapping_add(2)) else {
                continue;
            };
            let new = idx.wrapping_sub(q.used_seen);
            if new == 0 {
                continue;
            }
            if usize::from(new) > q.outstanding.len() {
                panic!(
                    "step {step}: queue {index}: the used index moved by {new}, with {} chains \
                     outstanding",
                    q.outstanding.len()
                );
            }
            for i in 0..new {
                let Some(q) = self.live[index].as_mut() else {
                    break;
                };
                let slot = u64::from(q.used_seen.wrapping_add(i) % q.size);
                let elem = q.used.wrapping_add(4 + 8 * slot);
                let (id, len) = match (
                    self.memory.read_obj::<u32>(GuestAddress(elem)),
                    self.memory
                        .read_obj::<u32>(GuestAddress(elem.wrapping_add(4))),
                ) {
                    (Ok(id), Ok(len)) => (id, len),
                    _ => break,
                };
                let Some(at) = q.outstanding.iter().position(|o| u32::from(o.head) == id) else {
                    panic!(
                        "step {step}: queue {index}: used entry {} names head {id}, which is not \
                         outstanding (never published, or used already)",
                        q.used_seen.wrapping_add(i)
                    );
                };
                let chain = q.outstanding.remove(at);
                if len > chain.writable_len {
                    panic!(
                        "step {step}: queue {index}: head {id} used with length {len}, more than \
                         its {} device-writable bytes",
                        chain.writable_len
                    );
                }
                for &slot in &chain.slots {
                    q.taken[usize::from(slot)] = false;
                }
                self.hooks.completed(&Completion {
                    queue: index as u16,
                    head: chain.head,
                    len,
                    well_formed: chain.well_formed,
                    payload: &chain.payload,
                    writable: &chain.writable,
                });
            }
            if let Some(q) = self.live[index].as_mut() {
                q.used_seen = idx;
            }
            total += u64::from(new);
        }
        total
    }

    /// The checks after a step that called the device. What the device did to guest memory
    /// and the used rings is checked at the next synchronisation: before the driver writes
    /// guest memory or changes what the device may write (a reset, `DRIVER_OK`), around each
    /// notification, and at the end of the input.
    fn check(&mut self, step: usize, called: bool) {
        self.pending |= called;
        let status = self.read_status();
        let allowed = self.status_written | NEEDS_RESET;
        if status & !allowed != 0 {
            panic!(
                "step {step}: the status reads {status:#04x}, with bits the driver never wrote \
                 since the reset (it wrote {:#04x})",
                self.status_written
            );
        }
        let live = self.live.iter().any(Option::is_some);
        if status == 0 && (live || self.status_written != 0) {
            self.sync(step);
            self.on_reset(step);
        } else if status & DRIVER_OK != 0 && !live {
            self.sync(step);
            self.go_live(step);
        }
        self.hooks.check(&self.view());
    }

    fn healthy(&self) -> bool {
        // A driver that set FAILED gave up on the device: whether the device still serves its
        // queues is the device's choice.
        self.status & DRIVER_OK != 0 && self.status & (NEEDS_RESET | FAILED) == 0 && !self.tainted
    }

    // ---- the operations ----

    pub(crate) fn step(&mut self, step: usize, op: &VirtioOp) {
        // Each arm says whether it called the device (all but the driver's own steps).
        let called = match op {
            VirtioOp::Status(value) => {
                self.write_status(step, *value);
                true
            }
            VirtioOp::Negotiate { mask } => {
                self.negotiate(step, *mask);
                true
            }
            VirtioOp::Features { select, value } => {
                self.common_write(DRIVER_FEATURE_SELECT, u64::from(*select), 4);
                self.common_write(DRIVER_FEATURE, u64::from(*value), 4);
                self.features = match (self.features, select) {
                    (Some(f), 0) => Some(f & !0xFFFF_FFFF | u64::from(*value)),
                    (Some(f), 1) => Some(f & 0xFFFF_FFFF | u64::from(*value) << 32),
                    (f, _) if *value == 0 => f,
                    _ => None,
                };
                true
            }
            VirtioOp::Queue(setup) => {
                self.setup_queue(step, setup);
                true
            }
            VirtioOp::DriverOk => {
                let status = self.read_status();
                self.write_status(step, status | DRIVER_OK);
                true
            }
            VirtioOp::Chain(chain) => {
                self.chain(step, chain);
                return;
            }
            VirtioOp::Notify(queue) => {
                // Checked inside, before and after the notification.
                self.notify(step, *queue);
                false
            }
            VirtioOp::Reset => {
                self.reset(step);
                false
            }
            VirtioOp::Common { field, value } => {
                let (offset, width) = COMMON_FIELDS[usize::from(*field) % COMMON_FIELDS.len()];
                self.common_write(offset, *value, usize::from(width));
                self.raw_common_write(offset, &value.to_le_bytes()[..usize::from(width)]);
                true
            }
            VirtioOp::Read { at, offset, size } => {
                self.read(step, *at, *offset, usize::from(*size).min(8));
                true
            }
            VirtioOp::Write { at, offset, data } => {
                self.write(*at, *offset, &data[..data.len().min(8)]);
                true
            }
            VirtioOp::ConfigRead { offset, size } => {
                self.config_read_checked(step, *offset, *size);
                true
            }
            VirtioOp::ConfigWrite { offset, data } => {
                let size = data.len().min(4 - usize::from(*offset) % 4);
                self.device.config_write(*offset, &data[..size]);
                if let Some(cap) = self.caps.pci_cfg {
                    // The access window reaches any register: the driver loses track.
                    if overlaps((u64::from(*offset), size as u64), (u64::from(cap) + 16, 4)) {
                        self.status_written = 0xFF;
                        self.features = None;
                        if self.live.iter().any(Option::is_some) {
                            self.tainted = true;
                        }
                    }
                }
                true
            }
            VirtioOp::Msix {
                entry,
                address,
                data,
                masked,
            } => {
                if let Some((_, table, entries)) = self.caps.msix {
                    let base = 16 * u64::from(entry % entries);
                    let words = [
                        *address as u32,
                        (*address >> 32) as u32,
                        *data,
                        u32::from(*masked),
                    ];
                    for (i, word) in (0u64..).zip(words) {
                        self.bar_write(Some(table), base + 4 * i, &word.to_le_bytes());
                    }
                }
                true
            }
            VirtioOp::Interrupts(mode) => {
                if let Some((cap, _, _)) = self.caps.msix {
                    let control = self.config_read16(cap.wrapping_add(2)) & !0xC000;
                    let control = control | u16::from(mode & 1) << 15 | u16::from(mode & 2) << 13;
                    self.device
                        .config_write(cap.wrapping_add(2), &control.to_le_bytes());
                }
                let command = self.config_read16(0x04) & !0x400;
                let command = command | u16::from(mode & 4) << 8;
                self.device.config_write(0x04, &command.to_le_bytes());
                true
            }
            VirtioOp::Memory {
                queue,
                area,
                offset,
                data,
            } => {
                let base = match (area, self.live_queue(*queue)) {
                    (0..=2, Some(q)) => q.rings()[usize::from(*area)].0,
                    _ => self.regions.first().map_or(0, |r| r.0),
                };
                let data = &data[..data.len().min(super::ops::MAX_DATA)];
                let addr = base.wrapping_add(u64::from(*offset));
                // `used_event`, at the end of the available ring, is the driver's to write.
                let used_event = match (area, self.live_queue(*queue)) {
                    (1, Some(q)) => q.avail.wrapping_add(4 + 2 * u64::from(q.size)),
                    _ => u64::MAX,
                };
                let own = addr == used_event && data.len() <= 2;
                self.sync(step);
                self.write_mem(step, addr, data, own);
                return;
            }
            VirtioOp::FailInterrupts(failing) => {
                self.wiring.set_failing(*failing);
                self.interrupts_failed |= *failing;
                return;
            }
            VirtioOp::User { tag, data } => {
                self.hooks.user_op(*tag, data);
                true
            }
            VirtioOp::Restart => {
                self.write_status(step, 0);
                self.restart();
                true
            }
        };
        self.check(step, called);
    }

    fn live_queue(&self, queue: u8) -> Option<&Live> {
        self.live.get(usize::from(queue)).and_then(Option::as_ref)
    }

    /// Bookkeeping of a register write the driver made as it is (not through its own steps).
    fn raw_common_write(&mut self, offset: u64, data: &[u8]) {
        let range = (offset, data.len() as u64);
        if contains(range, DEVICE_STATUS) {
            self.status_written |= data[(DEVICE_STATUS - offset) as usize];
        }
        if overlaps(range, (DRIVER_FEATURE_SELECT, 8)) {
            self.features = None;
        }
        if overlaps(range, (QUEUE_SIZE, 0x20)) && self.live.iter().any(Option::is_some) {
            self.tainted = true;
        }
    }

    fn write_status(&mut self, step: usize, value: u8) {
        self.common_write(DEVICE_STATUS, u64::from(value), 1);
        if value == 0 {
            // What the device did on its way to the reset is checked against what was in
            // flight.
            self.pending = true;
            self.sync(step);
            self.on_reset(step);
            return;
        }
        let before = self.status_written;
        self.status_written |= value;
        if value & FEATURES_OK != 0 && before & FEATURES_OK == 0 {
            let status = self.read_status();
            if let (true, Some(features)) = (status & FEATURES_OK != 0, self.features) {
                let offered = self.offered();
                if features & !offered != 0 {
                    panic!(
                        "step {step}: the device accepted FEATURES_OK for features {features:#x}, \
                         of which {:#x} it does not offer",
                        features & !offered
                    );
                }
            }
        }
    }

    fn offered(&self) -> u64 {
        let mut offered = 0;
        for select in 0..2 {
            self.common_write(DEVICE_FEATURE_SELECT, select, 4);
            offered |= self.common_read(DEVICE_FEATURE, 4) << (32 * select);
        }
        offered
    }

    fn negotiate(&mut self, step: usize, mask: u64) {
        self.write_status(step, 0);
        self.write_status(step, ACKNOWLEDGE);
        self.write_status(step, ACKNOWLEDGE | DRIVER);
        let features = self.offered() & mask;
        for select in 0..2u64 {
            self.common_write(DRIVER_FEATURE_SELECT, select, 4);
            self.common_write(DRIVER_FEATURE, features >> (32 * select), 4);
        }
        self.features = Some(features);
        self.write_status(step, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    }

    fn place(&self, place: Place, queue: u8, area: u64) -> u64 {
        let first = self.regions.first().map_or(0, |r| r.0);
        match place {
            Place::Auto => {
                let slot = u64::from(queue) % u64::from(self.num_queues).clamp(1, RING_SLOTS);
                first + RING_AREA + RING_SLOT * slot + 0x1000 * area
            }
            Place::Ram(offset) => first + u64::from(offset),
            Place::Raw(addr) => addr,
        }
    }

    fn setup_queue(&mut self, step: usize, setup: &QueueSetup) {
        self.sync(step);
        self.common_write(QUEUE_SELECT, u64::from(setup.queue), 2);
        if setup.size != 0 {
            self.common_write(QUEUE_SIZE, u64::from(setup.size), 2);
        }
        let size = u64::from(self.common_read(QUEUE_SIZE, 2) as u16);
        let places = [setup.desc, setup.avail, setup.used];
        let lens = [16 * size, 6 + 2 * size, 6 + 8 * size];
        for (area, (place, offset)) in
            (0u64..).zip(
                places
                    .into_iter()
                    .zip([QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE]),
            )
        {
            let addr = self.place(place, setup.queue, area);
            self.common_write(offset, addr & 0xFFFF_FFFF, 4);
            self.common_write(offset + 4, addr >> 32, 4);
            // The driver zeroes its rings (a size the device refused may be large: at most a
            // page).
            let len = lens[area as usize].min(0x1000) as usize;
            self.write_mem(step, addr, &vec![0u8; len], false);
        }
        if let Some(vector) = setup.vector {
            self.common_write(QUEUE_MSIX_VECTOR, u64::from(vector), 2);
        }
        if setup.enable {
            self.common_write(QUEUE_ENABLE, 1, 2);
        }
        if self.live.iter().any(Option::is_some) {
            // Queue registers written while live (the device should ignore them).
            self.tainted = true;
        }
    }

    fn reset(&mut self, step: usize) {
        self.write_status(step, 0);
        let status = self.read_status();
        if status != 0 {
            panic!("step {step}: status reads {status:#04x} after a reset");
        }
        for index in 0..self.num_queues {
            self.common_write(QUEUE_SELECT, u64::from(index), 2);
            let enabled = self.common_read(QUEUE_ENABLE, 2);
            if enabled != 0 {
                panic!("step {step}: queue {index} reads enabled ({enabled}) after a reset");
            }
        }
    }

    fn notify(&mut self, step: usize, queue: u16) {
        let Some((window, mult)) = self.caps.notify else {
            return;
        };
        // What the device did before (a notification written as a raw register access, say)
        // is checked and retired first.
        self.sync(step);
        let (notify_off, before, well_formed, fresh) = match self
            .live
            .get_mut(usize::from(queue))
            .and_then(Option::as_mut)
        {
            Some(q) => {
                let good = |o: &&Outstanding| o.well_formed;
                let counts = (
                    q.notify_off,
                    q.outstanding.len(),
                    q.outstanding.iter().filter(good).count(),
                    q.outstanding
                        .iter()
                        .filter(good)
                        .filter(|o| o.fresh)
                        .count(),
                );
                for o in &mut q.outstanding {
                    o.fresh = false;
                }
                counts
            }
            None => (queue, 0, 0, 0),
        };
        let healthy = self.healthy();
        self.hooks.before_notify();
        let calls = self.wiring.calls();
        let offset = u64::from(notify_off).wrapping_mul(u64::from(mult));
        self.bar_write(Some(window), offset, &queue.to_le_bytes());
        self.pending = true;
        let used = self.sync(step);
        let bound = self.hooks.max_chains_per_notify();
        if used > bound {
            panic!(
                "step {step}: one notification used {used} chains, more than the bound of {bound}"
            );
        }
        let calls = self.wiring.calls() - calls;
        let bound = self.hooks.max_line_calls_per_notify();
        if calls > bound {
            panic!(
                "step {step}: one notification made {calls} interrupt calls, more than the bound \
                 of {bound}"
            );
        }
        self.read_status();
        let notified = Notified {
            queue,
            used,
            outstanding_before: before,
            well_formed_before: well_formed,
            fresh,
            healthy: healthy && self.healthy(),
        };
        self.hooks.after_notify(&notified);
    }

    fn read(&mut self, step: usize, at: Structure, offset: u16, size: usize) {
        let (window, twice) = match at {
            Structure::Common => (self.caps.common, true),
            Structure::Isr => (self.caps.isr, false),
            Structure::Device => (self.caps.device, true),
            Structure::Notify => (self.caps.notify.map(|n| n.0), false),
            Structure::Bar(n) => (
                Some(Window {
                    bar: n % 6,
                    offset: 0,
                    len: 1 << 16,
                }),
                false,
            ),
        };
        let Some(window) = window else {
            return;
        };
        let offset = u64::from(offset) % window.len.max(1);
        let mut zeroes = [0u8; 8];
        self.bar_read(Some(window), offset, &mut zeroes[..size]);
        if twice {
            let mut ones = [0xFFu8; 8];
            self.bar_read(Some(window), offset, &mut ones[..size]);
            if zeroes[..size] != ones[..size] {
                panic!(
                    "step {step}: a read of {size} bytes at {offset:#x} of the {at:?} structure \
                     leaves bytes unfilled: {:x?} and {:x?}",
                    &zeroes[..size],
                    &ones[..size]
                );
            }
        }
    }

    fn write(&mut self, at: Structure, offset: u16, data: &[u8]) {
        let window = match at {
            Structure::Common => self.caps.common,
            Structure::Isr => self.caps.isr,
            Structure::Device => self.caps.device,
            Structure::Notify => self.caps.notify.map(|n| n.0),
            Structure::Bar(n) => Some(Window {
                bar: n % 6,
                offset: 0,
                len: 1 << 16,
            }),
        };
        let Some(window) = window else {
            return;
        };
        let offset = u64::from(offset) % window.len.max(1);
        self.bar_write(Some(window), offset, data);
        // A write that lands in the common configuration, however it was aimed.
        if let Some(common) = self.caps.common {
            let start = window.offset + offset;
            if window.bar == common.bar
                && overlaps((start, data.len() as u64), (common.offset, common.len))
            {
                let skip = common.offset.saturating_sub(start) as usize;
                let at = start.saturating_sub(common.offset);
                self.raw_common_write(at, &data[skip.min(data.len())..]);
            }
        }
    }

    fn config_read_checked(&mut self, step: usize, offset: u8, size: u8) {
        let size = (usize::from(size) % 4 + 1).min(4 - usize::from(offset) % 4);
        let mut zeroes = [0u8; 4];
        self.device.config_read(offset, &mut zeroes[..size]);
        let window = self.caps.pci_cfg.map(|cap| (u64::from(cap) + 16, 4));
        if window.is_some_and(|w| overlaps((u64::from(offset), size as u64), w)) {
            // The access window reads the BAR: not side-effect free.
            return;
        }
        let mut ones = [0xFFu8; 4];
        self.device.config_read(offset, &mut ones[..size]);
        if zeroes[..size] != ones[..size] {
            panic!(
                "step {step}: a configuration read of {size} bytes at {offset:#x} leaves bytes \
                 unfilled: {:x?} and {:x?}",
                &zeroes[..size],
                &ones[..size]
            );
        }
    }
}
