//! The attacked disk's queue 0, laid out in scratch memory: every attack opens it afresh (device
//! reset, features negotiated, rings set up where the attack wants them), so each starts from a
//! known state whatever the previous one left behind.

use core::sync::atomic::{Ordering, fence};

use crate::io::Mmio;
use crate::pci::Function;
use crate::scratch;
use crate::virtio::{AVAIL_NO_INTERRUPT, SetupError, Transport, rdtsc};

/// `VIRTIO_F_RING_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const DESC_INDIRECT: u16 = 4;
/// TSC cycles a completion may take before it counts as missing (2^32: 1.6 s at 2.6 GHz; the
/// reference VMM completes requests inside the notification's exit).
const WAIT_CYCLES: u64 = 1 << 32;

/// An open queue of the attacked disk.
pub struct Queue {
    transport: Transport,
    mmio: Mmio,
    notify: u64,
    size: u16,
    avail: u64,
    next_avail: u16,
}

impl Queue {
    /// Resets the disk at `f` and sets up its queue 0 with `size` entries: the descriptor table
    /// at [`scratch::DESC`], the available ring at `avail` (empty, no interrupts wanted) and the
    /// used ring at [`scratch::USED`]; negotiates `VIRTIO_F_VERSION_1` and what it offers of
    /// `wanted`.
    pub fn open(
        f: Function,
        info: &guest_rt::StartInfo,
        mmio: Mmio,
        size: u16,
        avail: u64,
        wanted: u64,
    ) -> Result<Self, SetupError> {
        let transport = Transport::open(f, info, false, wanted)?;
        scratch::write(avail, u32::from(AVAIL_NO_INTERRUPT));
        scratch::write(scratch::USED, 0u32);
        let notify = transport.start(size, scratch::DESC, avail, scratch::USED)?;
        Ok(Self {
            transport,
            mmio,
            notify,
            size,
            avail,
            next_avail: 0,
        })
    }

    /// The transport under the queue.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The capacity in sectors (`virtio_blk_config.capacity`).
    pub fn capacity(&self) -> u64 {
        let config = self.transport.device_cfg;
        self.mmio.read(config, 4) | self.mmio.read(config + 4, 4) << 32
    }

    /// Queue 0's notify address.
    pub fn notify_address(&self) -> u64 {
        self.notify
    }

    /// Puts `head` in the next slot of the available ring, not yet published.
    pub fn offer(&mut self, head: u16) {
        let slot = u64::from(self.next_avail % self.size);
        scratch::write(self.avail + 4 + 2 * slot, head);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Publishes every offered head (writes `avail.idx`).
    pub fn publish(&self) {
        fence(Ordering::Release);
        scratch::write(self.avail + 2, self.next_avail);
    }

    /// Writes queue 0's notify register.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        self.mmio.write(self.notify, 2, 0);
    }

    /// `used.idx`.
    pub fn used(&self) -> u16 {
        let used = scratch::read(scratch::USED + 2);
        fence(Ordering::Acquire);
        used
    }

    /// The head index of the `n`-th used-ring entry.
    pub fn used_id(&self, n: u16) -> u32 {
        scratch::read(scratch::USED + 4 + 8 * u64::from(n % self.size))
    }

    /// Waits until `used.idx` reaches `target` (or passes it), at most [`WAIT_CYCLES`] TSC
    /// cycles; returns the last `used.idx` seen.
    pub fn wait_used(&self, target: u16) -> u16 {
        let reached = |used: u16| used.wrapping_sub(target) < 0x8000;
        let used = self.used();
        if reached(used) {
            return used;
        }
        let start = rdtsc();
        loop {
            let used = self.used();
            if reached(used) || rdtsc().wrapping_sub(start) > WAIT_CYCLES {
                return used;
            }
        }
    }

    /// Offers and publishes `head`, notifies and waits for one completion; `Err` with the last
    /// `used.idx` seen when it does not come (or more than one does).
    pub fn submit(&mut self, head: u16) -> Result<(), u16> {
        let target = self.used().wrapping_add(1);
        self.offer(head);
        self.publish();
        self.notify();
        let used = self.wait_used(target);
        if used == target { Ok(()) } else { Err(used) }
    }
}
