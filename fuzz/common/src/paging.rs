//! Fuzz surface `paging_walk`: random x86-64 page tables (4- or 5-level, maybe under EPT or NPT
//! tables) and accesses, translated by vmkit-paging's walkers and by its naive reference.
//!
//! Checked, for every access of the scenario the input decodes to: the native or
//! two-dimensional walk, the guest walker followed by the GPA map, and the naive reference (plain
//! bit arithmetic written from the SDM and APM, sharing no code with the walker's formats) give
//! the same outcome (translation, #PF error code and CR2, #GP for non-canonical addresses, EPT
//! violation or misconfiguration with its exit qualification, NPF with EXITINFO1, memory error,
//! contention) and leave memory with the same accessed/dirty flags; probes never write and agree
//! with the walk. The decoding, the reference and the comparison live in
//! `vmkit_paging::reference` (feature `reference`), shared with the crate's property test.
//!
//! Every byte string is a valid input: the first bytes choose the paging modes (see
//! [`seeds`]), the rest drive the table generator, which continues from a generator seeded by
//! the input when the bytes run out.

use std::cell::RefCell;

use vmkit_paging::reference::differential::{self, Scratch};

thread_local! {
    /// The memories of the last input, reused by the next: a fresh allocation per input costs
    /// more than the walks under the sanitizer (its quarantine hands out new pages each time).
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// Target body: any disagreement between the walks is a bug.
pub fn run(data: &[u8]) {
    if let Err(mismatch) =
        SCRATCH.with_borrow_mut(|scratch| differential::check_reusing(data, scratch))
    {
        panic!("paging walks disagree: {mismatch}");
    }
}

/// A seed: the mode bytes (`[mode, flags, phys, nested, host_phys]`, see [`seeds`]), then `len`
/// pseudo-random bytes from `tail`.
fn seed(header: [u8; 5], tail: u64, len: usize) -> Vec<u8> {
    let mut bytes = header.to_vec();
    let mut state = tail | 1;
    bytes.extend((0..len).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 32) as u8
    }));
    bytes
}

/// The seed corpus: one input per paging configuration worth reaching.
///
/// Mode byte: `% 3` selects native (0), EPT (1) or NPT (2); bit 2 five-level guest paging; bit 3
/// five-level nested tables. Flags byte: bits 0-4 EFER.NXE, CR0.WP, CR4.SMEP, CR4.SMAP,
/// RFLAGS.AC; bits 5 and 6 both set: no 1 GiB pages. Then MAXPHYADDR (index into 36, 39, 40,
/// 46, 48, 52), the nested flags (EPT: bit 0 accessed/dirty, bit 1 execute-only, bits 2-3 both
/// set: no 1 GiB pages; NPT: bits 4-5 both set: NXE off) and the host MAXPHYADDR.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("native_4level", seed([0, 0x03, 5, 0, 5], 1, 200)),
        ("native_5level_smep_smap", seed([12, 0x0f, 3, 0, 5], 2, 200)),
        ("native_smap_ac_no_wp", seed([0, 0x1d, 5, 0, 5], 3, 200)),
        ("native_no_nxe_no_1g", seed([0, 0x62, 0, 0, 5], 4, 200)),
        ("ept_4level", seed([1, 0x03, 5, 0x00, 3], 5, 240)),
        (
            "ept_accessed_dirty_exec_only",
            seed([1, 0x07, 4, 0x03, 4], 6, 240),
        ),
        (
            "ept_5level_guest_5level",
            seed([13, 0x0b, 5, 0x01, 5], 7, 240),
        ),
        ("ept_no_1g", seed([1, 0x03, 2, 0x0c, 1], 8, 240)),
        ("npt_4level", seed([2, 0x03, 5, 0x00, 5], 9, 240)),
        ("npt_5level_no_nxe", seed([14, 0x1f, 4, 0x30, 3], 10, 240)),
        ("short_input", vec![1]),
        ("empty_input", vec![]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;
    use vmkit_paging::reference::naive::Nested;
    use vmkit_paging::reference::scenario::Scenario;

    #[test]
    fn seeds_decode_to_their_configuration_and_pass() {
        for (name, bytes) in seeds() {
            let scenario = Scenario::from_bytes(&bytes);
            let nested = match scenario.nested {
                Nested::None => "native",
                Nested::Ept { .. } => "ept",
                Nested::Npt { .. } => "npt",
            };
            if !name.ends_with("input") {
                assert!(name.starts_with(nested), "{name}");
                assert_eq!(scenario.guest.la57, name.contains("5level"), "{name}");
            }
            run(&bytes);
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("paging_walk", &seeds(), false, run);
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
    fn write_paging_seeds() {
        seed_files::write("paging_walk", &seeds());
    }
}
