//! Test fixtures: guest memory with a hole, and the test driver ([`super::driver`]) under the
//! short names the tests use.

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub(crate) use super::common_cfg;
pub(crate) use super::driver::{
    Bar0, DEFAULT_AVAIL as AVAIL, DEFAULT_DESC as DESC, DEFAULT_USED as USED,
    DESC_F_INDIRECT as INDIRECT, DESC_F_NEXT as NEXT, DESC_F_WRITE as WRITE, Ring, device_config,
    negotiate, notify, setup_queue,
};
use super::{F_VERSION_1, STATUS_FEATURES_OK};

/// End of the first RAM region; the second follows at once (buffers may straddle them).
pub(crate) const REGION_SPLIT: u64 = 0x10_0000;
/// Start of the unmapped hole.
pub(crate) const HOLE: u64 = 0x20_0000;
/// Start of the RAM above the hole.
pub(crate) const HIGH: u64 = 0x30_0000;
/// End of guest memory.
pub(crate) const MEMORY_END: u64 = 0x40_0000;

pub(crate) fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), REGION_SPLIT as usize),
        (GuestAddress(REGION_SPLIT), (HOLE - REGION_SPLIT) as usize),
        (GuestAddress(HIGH), (MEMORY_END - HIGH) as usize),
    ])
    .unwrap()
}

/// Full initialisation with one queue on `ring`: VERSION_1 | `extra`, which must be accepted.
pub(crate) fn init(dev: &mut impl Bar0, extra: u64, ring: &Ring) {
    let status = super::driver::init(dev, F_VERSION_1 | extra, &[ring.config()]);
    assert!(
        status.is_ok_and(|s| s & STATUS_FEATURES_OK != 0),
        "{status:?}"
    );
}
