//! Fuzz surface `paging_shadow`: guest page tables written by the guest and the VMM, with
//! INVLPG, INVPCID, CR3 loads (with and without the PCID no-flush bit) and mode changes in
//! between, translated by vmkit-paging's shadow MMU.
//!
//! Checked at every access: a translation served by a shadow fault equals the crate's walker
//! run at that moment composed with the GPA map (outcome, #PF error code, unbacked GPA, and
//! every accessed/dirty flag written); a shadow hit writes nothing and equals the fresh walk,
//! or, with unsync tables, a walk of the tables as they were since the last invalidation that
//! covers the address (the staleness the architecture allows); the shadow stays within its
//! page bound. The decoding and the model live in `vmkit_paging::reference::shadow` (feature
//! `reference`), shared with the crate's property test.
//!
//! Every byte string is a valid input; the first byte chooses the modes (see [`seeds`]), zero
//! bytes decode to a calm guest, and a generator seeded by the input continues when the bytes
//! run out.

use std::cell::RefCell;

use vmkit_paging::reference::shadow::{self, Scratch};

thread_local! {
    /// The guest memory, write logs and shadow MMU of the last input, cleared (the MMU reset)
    /// and reused by the next: cheaper than fresh allocations under the sanitizer.
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Target body: any disagreement with the model is a bug.
pub fn run(data: &[u8]) {
    if let Err(mismatch) = SCRATCH.with_borrow_mut(|scratch| shadow::run_reusing(data, scratch)) {
        panic!("shadow MMU disagrees with the walker: {mismatch}");
    }
}

/// The seed corpus: one input per mode. First byte: bit 0 five-level paging, bit 1 unsync
/// tables, bit 2 PCIDs and global pages.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let tail = |mode: u8, salt: u8| {
        let mut bytes = vec![mode];
        bytes.extend((0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(salt)));
        bytes
    };
    vec![
        ("resync_4level", tail(0, 1)),
        ("resync_5level", tail(1, 2)),
        ("unsync_4level", tail(2, 3)),
        ("unsync_5level_pcid", tail(7, 4)),
        ("resync_pcid", tail(4, 5)),
        ("calm_zeros", vec![0; 48]),
        ("empty_input", vec![]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn seeds_pass() {
        for (_, bytes) in seeds() {
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("paging_shadow", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[0xff; 300]);
        run(&(0..=255).collect::<Vec<u8>>());
        for first in 0..=255u8 {
            run(&[first, first.wrapping_mul(7), first.wrapping_add(3)]);
        }
    }

    #[test]
    #[ignore]
    fn write_paging_shadow_seeds() {
        seed_files::write("paging_shadow", &seeds());
    }
}
