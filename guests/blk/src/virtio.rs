//! A polling virtio-blk driver over the modern virtio-pci transport (virtio 1.x): one queue of
//! [`QUEUE_SIZE`] entries and one request in flight, a fixed three-descriptor chain (header,
//! data, status) whose data descriptor is rewritten per request.
//!
//! [`Transport`] is the part below the queue (capabilities, reset, feature negotiation, queue
//! set-up at addresses the caller chooses), for guests that lay out their rings themselves.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

use guest_rt::{Console, StartInfo};

use crate::pci::{self, COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY};

/// virtio's PCI vendor ID.
pub const VENDOR: u16 = 0x1af4;
/// The modern virtio-blk device ID (0x1040 + device type 2).
pub const DEVICE_BLOCK: u16 = 0x1042;
/// Vendor-specific capability ID.
const CAP_VENDOR: u8 = 0x09;
/// `cfg_type`s of the virtio capabilities.
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// Device status bits.
const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;
const DRIVER_OK: u8 = 4;
const FEATURES_OK: u8 = 8;
/// `VIRTIO_F_VERSION_1`.
const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u64 = 1 << 5;

/// Common configuration registers.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
pub const DEVICE_STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE_REG: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// Request types and statuses.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
/// Bytes in a sector.
pub const SECTOR: u64 = 512;
/// Bytes of the data buffer: the largest request.
pub const BUFFER: usize = 4096;
/// Bytes of a device ID.
pub const ID_LEN: usize = 20;

/// Entries of the queue (one request of three descriptors in flight).
const QUEUE_SIZE: u16 = 4;
/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver polls.
pub const AVAIL_NO_INTERRUPT: u16 = 1;
/// TSC cycles a request may take before it counts as lost (2^35: 13 s at 2.6 GHz).
const POLL_CYCLES: u64 = 1 << 35;

/// Why the device could not be used.
#[derive(Clone, Copy)]
pub enum SetupError {
    /// No function with virtio-blk's IDs on bus 0.
    NotFound,
    /// A virtio capability is missing or names an unusable BAR.
    Capability(u8),
    /// The device does not offer `VIRTIO_F_VERSION_1`.
    NoVersion1,
    /// The device refused `FEATURES_OK`.
    FeaturesRefused,
    /// Queue 0 does not exist or is smaller than three descriptors.
    Queue,
}

impl SetupError {
    /// Prints the error as one line.
    pub fn report(self, console: &mut Console) {
        let line = console.line();
        match self {
            Self::NotFound => line.str("no virtio-blk device (1af4:1042) on PCI bus 0\n"),
            Self::Capability(cfg_type) => line
                .str("virtio capability of type ")
                .dec(u64::from(cfg_type))
                .str(" is missing or its BAR is unusable\n"),
            Self::NoVersion1 => line.str("the device does not offer VIRTIO_F_VERSION_1\n"),
            Self::FeaturesRefused => line.str("the device refused FEATURES_OK\n"),
            Self::Queue => line.str("queue 0 is missing or too small\n"),
        };
    }
}

/// A request the device did not complete within [`POLL_CYCLES`] TSC cycles.
pub struct Timeout;

#[repr(C)]
#[derive(Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE as usize],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE as usize],
    avail_event: u16,
}

#[repr(C)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

/// Everything the device reads or writes, in one page-aligned block of `.bss` (identity-mapped,
/// so its addresses are its guest-physical addresses).
#[repr(C, align(4096))]
struct Shared {
    data: [u8; BUFFER],
    desc: [Descriptor; QUEUE_SIZE as usize],
    avail: Avail,
    used: Used,
    header: Header,
    status: u8,
}

static mut SHARED: Shared = Shared {
    data: [0; BUFFER],
    desc: [Descriptor {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE as usize],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; QUEUE_SIZE as usize],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE as usize],
        avail_event: 0,
    },
    header: Header {
        kind: 0,
        reserved: 0,
        sector: 0,
    },
    status: 0,
};

fn shared() -> *mut Shared {
    &raw mut SHARED
}

/// MMIO accessors. Every address passed comes from a BAR of the device plus an offset inside
/// the structure a capability describes, below 4 GiB, so inside the identity map.
fn read8(addr: u64) -> u8 {
    // SAFETY: see above; a volatile access of the register's width.
    unsafe { read_volatile(addr as usize as *const u8) }
}
fn write8(addr: u64, value: u8) {
    // SAFETY: as for `read8`.
    unsafe { write_volatile(addr as usize as *mut u8, value) }
}
fn read16(addr: u64) -> u16 {
    // SAFETY: as for `read8`.
    unsafe { read_volatile(addr as usize as *const u16) }
}
fn write16(addr: u64, value: u16) {
    // SAFETY: as for `read8`.
    unsafe { write_volatile(addr as usize as *mut u16, value) }
}
fn read32(addr: u64) -> u32 {
    // SAFETY: as for `read8`.
    unsafe { read_volatile(addr as usize as *const u32) }
}
fn write32(addr: u64, value: u32) {
    // SAFETY: as for `read8`.
    unsafe { write_volatile(addr as usize as *mut u32, value) }
}
/// A 64-bit register written as two 32-bit halves, low first (as Linux does).
fn write64(addr: u64, value: u64) {
    write32(addr, value as u32);
    write32(addr + 4, (value >> 32) as u32);
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads the time-stamp counter and has no other effect.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The virtio structures of a virtio-blk function, found through its capabilities, with the
/// device reset and its features negotiated (status `FEATURES_OK`); a driver then sets up its
/// queue with [`Transport::start`].
pub struct Transport {
    /// The common configuration structure.
    pub common: u64,
    /// The notification structure.
    pub notify: u64,
    /// `notify_off_multiplier`: bytes between the notify addresses of consecutive queues.
    pub multiplier: u64,
    /// The device configuration structure.
    pub device_cfg: u64,
    /// The features the device offers.
    pub features: u64,
}

impl Transport {
    /// Finds the virtio structures of `f` (placing its BARs with `place`, see
    /// [`pci::memory_bar`]), enables memory decode and bus mastering, resets the device and
    /// negotiates `VIRTIO_F_VERSION_1` plus whichever of the features in `wanted` it offers.
    pub fn open(
        f: pci::Function,
        info: &StartInfo,
        place: bool,
        wanted: u64,
    ) -> Result<Self, SetupError> {
        let mut bars = [None; 6];
        let mut region = |cfg_type: u8| -> Result<(u64, u8), SetupError> {
            let error = SetupError::Capability(cfg_type);
            let (cap, _) = f
                .capabilities()
                .find(|&(cap, id)| id == CAP_VENDOR && f.read_u8(cap + 3) == cfg_type)
                .ok_or(error)?;
            let bar = f.read_u8(cap + 4);
            let slot = bars.get_mut(usize::from(bar)).ok_or(error)?;
            let base = match *slot {
                Some(base) => base,
                None => pci::memory_bar(f, bar, info, place).ok_or(error)?,
            };
            *slot = Some(base);
            Ok((base + u64::from(f.read(cap + 8)), cap))
        };
        let (common, _) = region(CFG_COMMON)?;
        let (notify, notify_cap) = region(CFG_NOTIFY)?;
        region(CFG_ISR)?;
        let (device_cfg, _) = region(CFG_DEVICE)?;
        let multiplier = u64::from(f.read(notify_cap + 16));
        let command = f.read(COMMAND) & 0xffff;
        f.write(COMMAND, command | COMMAND_MEMORY | COMMAND_BUS_MASTER);

        write8(common + DEVICE_STATUS, 0);
        while read8(common + DEVICE_STATUS) != 0 {}
        write8(common + DEVICE_STATUS, ACKNOWLEDGE);
        write8(common + DEVICE_STATUS, ACKNOWLEDGE | DRIVER);
        let mut features = 0;
        for half in 0..2u32 {
            write32(common + DEVICE_FEATURE_SELECT, half);
            features |= u64::from(read32(common + DEVICE_FEATURE)) << (32 * half);
        }
        if features & F_VERSION_1 == 0 {
            return Err(SetupError::NoVersion1);
        }
        let negotiated = F_VERSION_1 | (features & wanted);
        for half in 0..2u32 {
            write32(common + DRIVER_FEATURE_SELECT, half);
            write32(common + DRIVER_FEATURE, (negotiated >> (32 * half)) as u32);
        }
        write8(common + DEVICE_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if read8(common + DEVICE_STATUS) & FEATURES_OK == 0 {
            return Err(SetupError::FeaturesRefused);
        }
        Ok(Self {
            common,
            notify,
            multiplier,
            device_cfg,
            features,
        })
    }

    /// Sets up queue 0 with `size` entries whose descriptor table, available ring and used
    /// ring are at the guest-physical addresses `desc`, `avail` and `used`, enables it and
    /// sets `DRIVER_OK`; returns queue 0's notify address.
    pub fn start(&self, size: u16, desc: u64, avail: u64, used: u64) -> Result<u64, SetupError> {
        let common = self.common;
        write16(common + QUEUE_SELECT, 0);
        if read16(common + QUEUE_SIZE_REG) < size {
            return Err(SetupError::Queue);
        }
        write16(common + QUEUE_SIZE_REG, size);
        write64(common + QUEUE_DESC, desc);
        write64(common + QUEUE_DRIVER, avail);
        write64(common + QUEUE_DEVICE, used);
        write16(common + QUEUE_ENABLE, 1);
        let notify = self.notify + u64::from(read16(common + QUEUE_NOTIFY_OFF)) * self.multiplier;
        write8(
            common + DEVICE_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
        );
        Ok(notify)
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        read8(self.common + DEVICE_STATUS)
    }
}

/// A set-up virtio-blk device.
pub struct Block {
    transport: Transport,
    notify: u64,
    next_avail: u16,
}

impl Block {
    /// Finds the first virtio-blk device on bus 0 and opens it (see [`Block::open_function`]).
    pub fn open(info: &StartInfo, place: bool) -> Result<Self, SetupError> {
        let f = pci::find(VENDOR, DEVICE_BLOCK).ok_or(SetupError::NotFound)?;
        Self::open_function(f, info, place)
    }

    /// Brings the virtio-blk device at `f` to `DRIVER_OK` with `VIRTIO_F_VERSION_1` alone
    /// negotiated and queue 0 enabled, polled. With `place`, the device's BARs are moved as if
    /// no firmware had placed them (see [`pci::memory_bar`]).
    pub fn open_function(
        f: pci::Function,
        info: &StartInfo,
        place: bool,
    ) -> Result<Self, SetupError> {
        let transport = Transport::open(f, info, place, F_VERSION_1)?;
        let s = shared();
        // SAFETY: `s` points at the static `SHARED`, which only this single-threaded guest
        // touches (the device only after `queue_enable`); raw field pointers make no references.
        let (desc, avail, used) = unsafe {
            let header = &raw mut (*s).header;
            let data = &raw mut (*s).data;
            let status = &raw mut (*s).status;
            (*s).desc[0] = Descriptor {
                addr: header as u64,
                len: size_of::<Header>() as u32,
                flags: DESC_NEXT,
                next: 1,
            };
            (*s).desc[1] = Descriptor {
                addr: data as u64,
                len: 0,
                flags: DESC_NEXT,
                next: 2,
            };
            (*s).desc[2] = Descriptor {
                addr: status as u64,
                len: 1,
                flags: DESC_WRITE,
                next: 0,
            };
            (*s).avail.flags = AVAIL_NO_INTERRUPT;
            (
                &raw const (*s).desc as u64,
                &raw const (*s).avail as u64,
                &raw const (*s).used as u64,
            )
        };
        let notify = transport.start(QUEUE_SIZE, desc, avail, used)?;
        Ok(Self {
            transport,
            notify,
            next_avail: 0,
        })
    }

    /// The features the device offers.
    pub fn features(&self) -> u64 {
        self.transport.features
    }

    /// The capacity in sectors (`virtio_blk_config.capacity`).
    pub fn capacity(&self) -> u64 {
        let device_cfg = self.transport.device_cfg;
        u64::from(read32(device_cfg)) | u64::from(read32(device_cfg + 4)) << 32
    }

    /// The device status register.
    pub fn status(&self) -> u8 {
        self.transport.status()
    }

    /// The data buffer the requests move data through.
    pub fn buffer(&mut self) -> &mut [u8; BUFFER] {
        // SAFETY: the device writes the buffer only while a request is in flight, and
        // `request` takes `&mut self`, so no reference handed out here is alive then.
        unsafe { &mut (*shared()).data }
    }

    /// Sends a request of type `kind` at `sector` with `len` bytes of the data buffer (none when
    /// 0; the device writes them for reads and device IDs) and waits for it; returns its status.
    pub fn request(&mut self, kind: u32, sector: u64, len: u32) -> Result<u8, Timeout> {
        let s = shared();
        let avail = self.next_avail.wrapping_add(1);
        // SAFETY: as in `open`; the device reads these fields only after the notify below.
        unsafe {
            (*s).header.kind = kind;
            (*s).header.sector = sector;
            (*s).status = 0xff;
            if len == 0 {
                (*s).desc[0].next = 2;
            } else {
                (*s).desc[0].next = 1;
                (*s).desc[1].len = len;
                (*s).desc[1].flags = if kind == T_OUT {
                    DESC_NEXT
                } else {
                    DESC_NEXT | DESC_WRITE
                };
            }
            (*s).avail.ring[usize::from(self.next_avail % QUEUE_SIZE)] = 0;
            fence(Ordering::Release);
            write_volatile(&raw mut (*s).avail.idx, avail);
        }
        self.next_avail = avail;
        fence(Ordering::SeqCst);
        write16(self.notify, 0);
        // SAFETY: as in `open`; the device writes `used.idx`, so it is read volatile.
        let done = || unsafe { read_volatile(&raw const (*s).used.idx) } == avail;
        // A device that completes requests inside the notify is done at the first look; the
        // clock is read only while waiting.
        if !done() {
            let start = rdtsc();
            while !done() {
                if rdtsc().wrapping_sub(start) > POLL_CYCLES {
                    return Err(Timeout);
                }
            }
        }
        fence(Ordering::Acquire);
        // SAFETY: as above; the device wrote the status before it published the used entry.
        Ok(unsafe { read_volatile(&raw const (*s).status) })
    }
}
