//! The attacks on the attacked disk's virtqueue: the ring attack, maximal indirect tables,
//! out-of-range head indices and notification storms.
//!
//! Each checks what a device that bounds its work per notification must do: serve the chains
//! published before the notification, each exactly once, give every published chain back, and
//! keep the queue usable for an honest request afterwards.

use guest_rt::Console;

use crate::queue::{DESC_INDIRECT, F_INDIRECT_DESC, Queue};
use crate::virtio::{
    AVAIL_NO_INTERRUPT, DESC_NEXT, DESC_WRITE, DEVICE_STATUS, SECTOR, T_IN, T_OUT,
};
use crate::{Ctx, Stop, scratch};

/// Sectors of the ring attack's disk region: one per value of a 16-bit ring index, so the
/// chain of reads never repeats a state with a different index.
pub const RING_SECTORS: u64 = 1 << 16;
/// Entries of the ring attack's queue.
const RING_QUEUE: u16 = 4;
/// Notifications of the ring attack, each of which must complete exactly one request.
const RING_NOTIFIES: u16 = 64;
/// Sectors written per request while preparing the region.
const CHUNK_SECTORS: u64 = scratch::DATA_LEN / SECTOR;

/// Entries of the largest indirect table (a table's length is a 32-bit byte count of 16-byte
/// descriptors, and a chain may not name more than 65535 of them).
const TABLE_ENTRIES: u32 = 0xffff;
/// Entries of the indirect attack's queue: all of them indirect.
const INDIRECT_QUEUE: u16 = 8;
/// Notifications of the indirect attack, each publishing [`INDIRECT_QUEUE`] chains.
const INDIRECT_ROUNDS: u16 = 4;

/// Entries of the head-index attack's queue.
const HEADS_QUEUE: u16 = 128;
/// Notifications of the head-index attack, each publishing a full ring of bad heads.
const HEADS_ROUNDS: u16 = 32;

/// Entries of the notification storm's queue.
const NOTIFY_QUEUE: u16 = 8;
/// Notifications with nothing published, with one request published, at offsets of queues
/// that do not exist or are misaligned, and while the device is reset.
const NOTIFY_EMPTY: u32 = 1000;
const NOTIFY_REPEATED: u32 = 1000;
const NOTIFY_BAD_OFFSET: u32 = 500;
const NOTIFY_AFTER_RESET: u32 = 500;

/// Sets up a three-descriptor request at head 0: the header at [`scratch::HEADERS`], `len`
/// bytes of [`scratch::DATA`] (device-written for reads), the status byte at
/// [`scratch::STATUS`].
fn simple_request(kind: u32, sector: u64, len: u32) {
    scratch::write(scratch::HEADERS, u64::from(kind));
    scratch::write(scratch::HEADERS + 8, sector);
    scratch::write(scratch::STATUS, 0xffu8);
    let data_flags = if kind == T_OUT {
        DESC_NEXT
    } else {
        DESC_NEXT | DESC_WRITE
    };
    scratch::descriptor(scratch::DESC, 0, scratch::HEADERS, 16, DESC_NEXT, 1);
    scratch::descriptor(scratch::DESC, 1, scratch::DATA, len, data_flags, 2);
    scratch::descriptor(scratch::DESC, 2, scratch::STATUS, 1, DESC_WRITE, 0);
}

/// Submits head 0 and requires one completion with status 0; prints `what` on failure.
fn submit_ok(console: &mut Console, queue: &mut Queue, what: &str) -> Result<(), Stop> {
    if let Err(used) = queue.submit(0) {
        console
            .line()
            .str(what)
            .str(": request not completed (used.idx=")
            .dec(u64::from(used))
            .str(")\n");
        return Err(Stop::Timeout);
    }
    let status: u8 = scratch::read(scratch::STATUS);
    if status != 0 {
        console
            .line()
            .str(what)
            .str(": request failed with status ")
            .dec(u64::from(status))
            .str("\n");
        return Err(Stop::Failed);
    }
    Ok(())
}

/// Writes the ring attack's disk region: sector `j` holds what the window must hold after the
/// read of step `j` (header: a read of sector `j + 1`; available ring: flags
/// `NO_INTERRUPT`, `idx = j + 2`, every entry head 0), indices modulo 2^16.
fn write_ring_region(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let mut queue = Queue::open(ctx.attacked, ctx.info, ctx.mmio, 4, scratch::AVAIL, 0)?;
    scratch::zero(scratch::DATA, scratch::DATA_LEN / 8);
    let stride = SECTOR;
    for chunk in 0..RING_SECTORS / CHUNK_SECTORS {
        let first = chunk * CHUNK_SECTORS;
        scratch::store_each(scratch::DATA + 8, stride, CHUNK_SECTORS, |k| {
            (first + k + 1) & 0xffff
        });
        scratch::store_each(scratch::DATA + 16, stride, CHUNK_SECTORS, |k| {
            u64::from(AVAIL_NO_INTERRUPT) | ((first + k + 2) & 0xffff) << 16
        });
        simple_request(T_OUT, first, scratch::DATA_LEN as u32);
        submit_ok(console, &mut queue, "ring: writing the region")?;
    }
    ctx.ring_written = true;
    Ok(())
}

/// The ring attack. A read request whose device-written data buffer covers its own header
/// and the queue's available ring: each completion rewrites the header to read the next sector
/// and raises `avail.idx` by one, publishing the request again. A device that re-read
/// `avail.idx` after each completion would never return from the first notification; one that
/// reads it once per notification completes exactly one request per notification.
pub fn ring(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    if !ctx.ring_written {
        write_ring_region(console, ctx)?;
    }
    let avail = scratch::WINDOW + 16;
    let queue = Queue::open(ctx.attacked, ctx.info, ctx.mmio, RING_QUEUE, avail, 0)?;
    scratch::zero(scratch::WINDOW, SECTOR / 8);
    scratch::write(scratch::WINDOW, u64::from(T_IN));
    scratch::write(scratch::WINDOW + 8, 0u64);
    scratch::descriptor(scratch::DESC, 0, scratch::WINDOW, 16, DESC_NEXT, 1);
    scratch::descriptor(
        scratch::DESC,
        1,
        scratch::WINDOW,
        SECTOR as u32,
        DESC_NEXT | DESC_WRITE,
        2,
    );
    scratch::descriptor(scratch::DESC, 2, scratch::STATUS, 1, DESC_WRITE, 0);
    // Publish head 0 once (ring[0] = 0, idx = 1); the device publishes the rest.
    scratch::write(avail, u32::from(AVAIL_NO_INTERRUPT) | 1 << 16);
    scratch::write(avail + 4, 0u64);
    for notify in 1..=RING_NOTIFIES {
        queue.notify();
        let used = queue.wait_used(notify);
        if used != notify {
            console
                .line()
                .str("ring: after notification ")
                .dec(u64::from(notify))
                .str(" used.idx=")
                .dec(u64::from(used))
                .str(", expected exactly one completion per notification\n");
            return Err(Stop::Failed);
        }
    }
    console
        .line()
        .str("ring: notifies=")
        .dec(u64::from(RING_NOTIFIES))
        .str(" completions=")
        .dec(u64::from(RING_NOTIFIES))
        .str(" ok\n");
    Ok(())
}

/// Fills the indirect table: a header (a read of sector 0), 65533 empty device-writable
/// buffers and the status byte, each entry chained to the next.
fn write_table() {
    let last = u64::from(TABLE_ENTRIES) - 1;
    scratch::store_each(scratch::TABLE, 16, last + 1, |i| match i {
        0 => scratch::HEADERS,
        i if i == last => scratch::STATUS,
        _ => scratch::DATA,
    });
    scratch::store_each(scratch::TABLE + 8, 16, last + 1, |i| {
        let (len, flags) = match i {
            0 => (16, DESC_NEXT),
            i if i == last => (1, DESC_WRITE),
            _ => (0, DESC_NEXT | DESC_WRITE),
        };
        len | u64::from(flags) << 32 | ((i + 1) & 0xffff) << 48
    });
}

/// Maximal indirect tables. Every descriptor of the queue refers to the same table of 65535
/// chained entries (the first half of them) or to its first 65534 entries, whose last `next`
/// then points past the table (the second half); every notification publishes all of them.
/// Each chain is far longer than a request may be, so none may succeed, but each must be
/// given back: nothing published may be left waiting.
pub fn indirect(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    if !ctx.table_written {
        write_table();
        ctx.table_written = true;
    }
    let mut queue = Queue::open(
        ctx.attacked,
        ctx.info,
        ctx.mmio,
        INDIRECT_QUEUE,
        scratch::AVAIL,
        F_INDIRECT_DESC,
    )?;
    if queue.transport().features & F_INDIRECT_DESC == 0 {
        console
            .line()
            .str("indirect: skipped, the device does not offer VIRTIO_F_RING_INDIRECT_DESC\n");
        return Ok(());
    }
    scratch::write(scratch::HEADERS, u64::from(T_IN));
    scratch::write(scratch::HEADERS + 8, 0u64);
    for head in 0..INDIRECT_QUEUE {
        let entries = if head < INDIRECT_QUEUE / 2 {
            TABLE_ENTRIES
        } else {
            TABLE_ENTRIES - 1
        };
        let len = entries * 16;
        scratch::descriptor(
            scratch::DESC,
            head.into(),
            scratch::TABLE,
            len,
            DESC_INDIRECT,
            0,
        );
    }
    for round in 1..=INDIRECT_ROUNDS {
        for head in 0..INDIRECT_QUEUE {
            queue.offer(head);
        }
        queue.publish();
        queue.notify();
        let expected = round * INDIRECT_QUEUE;
        let used = queue.wait_used(expected);
        if used != expected {
            console
                .line()
                .str("indirect: after notification ")
                .dec(u64::from(round))
                .str(" used.idx=")
                .dec(u64::from(used))
                .str(", expected ")
                .dec(u64::from(expected))
                .str(" (every published chain given back)\n");
            return Err(Stop::Failed);
        }
    }
    let chains = u64::from(INDIRECT_ROUNDS * INDIRECT_QUEUE);
    console
        .line()
        .str("indirect: chains=")
        .dec(chains)
        .str(" table=")
        .dec(u64::from(TABLE_ENTRIES))
        .str(" answered=")
        .dec(chains)
        .str(" ok\n");
    Ok(())
}

/// Out-of-range head indices: full rings of heads at or above the queue size, then one honest
/// read, which must complete with status 0 at the next used-ring entry.
pub fn heads(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let mut queue = Queue::open(
        ctx.attacked,
        ctx.info,
        ctx.mmio,
        HEADS_QUEUE,
        scratch::AVAIL,
        0,
    )?;
    let span = 0x1_0000 - u64::from(HEADS_QUEUE);
    for _ in 0..HEADS_ROUNDS {
        for _ in 0..HEADS_QUEUE {
            let head = u64::from(HEADS_QUEUE) + ctx.rng.below(span);
            queue.offer(head as u16);
        }
        queue.publish();
        queue.notify();
    }
    let before = queue.used();
    simple_request(T_IN, 0, SECTOR as u32);
    submit_ok(console, &mut queue, "heads: the request after them")?;
    let id = queue.used_id(before);
    if id != 0 {
        console
            .line()
            .str("heads: the request after them came back as head ")
            .dec(u64::from(id))
            .str("\n");
        return Err(Stop::Failed);
    }
    console
        .line()
        .str("heads: bad=")
        .dec(u64::from(HEADS_QUEUE) * u64::from(HEADS_ROUNDS))
        .str(", then one request: status=0 ok\n");
    Ok(())
}

/// Requires `used.idx` to be `expected` after a phase of the notification storm.
fn expect_used(
    console: &mut Console,
    queue: &Queue,
    phase: &str,
    expected: u16,
) -> Result<(), Stop> {
    let used = queue.used();
    if used == expected {
        return Ok(());
    }
    console
        .line()
        .str("notify: ")
        .str(phase)
        .str(": used.idx=")
        .dec(u64::from(used))
        .str(", expected ")
        .dec(u64::from(expected))
        .str("\n");
    Err(Stop::Failed)
}

/// Notification storms: notifications with nothing published (nothing may complete), with one
/// request published (it completes exactly once), at the notify offsets of queues that do not
/// exist and at misaligned offsets of queue 0, and after a device reset (ignored).
pub fn notify(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let mut queue = Queue::open(
        ctx.attacked,
        ctx.info,
        ctx.mmio,
        NOTIFY_QUEUE,
        scratch::AVAIL,
        0,
    )?;
    for _ in 0..NOTIFY_EMPTY {
        queue.notify();
    }
    expect_used(console, &queue, "nothing published", 0)?;

    simple_request(T_IN, 0, SECTOR as u32);
    queue.offer(0);
    queue.publish();
    for _ in 0..NOTIFY_REPEATED {
        queue.notify();
    }
    queue.wait_used(1);
    expect_used(console, &queue, "one request published", 1)?;

    let base = queue.notify_address();
    let multiplier = queue.transport().multiplier.max(1);
    for i in 0..NOTIFY_BAD_OFFSET {
        let (offset, width) = match ctx.rng.below(4) {
            // Queues 1..=64, which do not exist.
            0 | 1 => (multiplier * (1 + ctx.rng.below(64)), 2),
            // Misaligned inside queue 0's register, in every width.
            _ => (1 + u64::from(i % 3), [1u8, 2, 4][ctx.rng.below(3) as usize]),
        };
        let addr = base + offset;
        if ctx.mmio.contains(addr, width) {
            ctx.mmio.write(addr, width, ctx.rng.word());
        }
    }
    expect_used(console, &queue, "bad offsets", 1)?;

    let common = queue.transport().common;
    ctx.mmio.write(common + DEVICE_STATUS, 1, 0);
    for _ in 0..NOTIFY_AFTER_RESET {
        queue.notify();
    }
    expect_used(console, &queue, "after reset", 1)?;
    console
        .line()
        .str("notify: empty=")
        .dec(u64::from(NOTIFY_EMPTY))
        .str(" repeated=")
        .dec(u64::from(NOTIFY_REPEATED))
        .str(" bad-offset=")
        .dec(u64::from(NOTIFY_BAD_OFFSET))
        .str(" after-reset=")
        .dec(u64::from(NOTIFY_AFTER_RESET))
        .str(" completions=1 ok\n");
    Ok(())
}
