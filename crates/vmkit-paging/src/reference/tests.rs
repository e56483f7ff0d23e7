use super::differential::check;
use super::naive::{self, Memory, Nested, Outcome};
use super::scenario::Scenario;
use alloc::string::String;
use alloc::vec::Vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The crate's walks, the composition and the naive reference agree on random scenarios.
    #[test]
    fn walks_agree_with_the_reference(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(mismatch) = check(&data) {
            prop_assert!(false, "{}", mismatch);
        }
    }

    /// Shadow translations equal fresh walks composed with the GPA map, faults and
    /// accessed/dirty flags included, after random table writes and invalidations.
    #[test]
    fn shadow_translations_agree_with_fresh_walks(
        data in proptest::collection::vec(any::<u8>(), 0..64)
    ) {
        if let Err(mismatch) = super::shadow::check(&data) {
            prop_assert!(false, "{}", mismatch);
        }
    }
}

/// What the scenarios exercise, by outcome: every kind must show up in a few thousand seeds.
#[test]
fn scenarios_cover_every_outcome() {
    use alloc::collections::BTreeMap;
    let mut histogram: BTreeMap<String, u32> = BTreeMap::new();
    for seed in 0..3000u32 {
        let scenario = Scenario::from_bytes(&seed.to_le_bytes());
        let mut mem = Memory {
            words: scenario.words.clone(),
        };
        let nested = match scenario.nested {
            Nested::None => "native",
            Nested::Ept { .. } => "ept",
            Nested::Npt { .. } => "npt",
        };
        for spec in &scenario.accesses {
            let outcome = naive::translate(
                &mut mem,
                &scenario.guest,
                &scenario.nested,
                spec.gva,
                spec.kind,
                spec.mode,
            );
            let key = match outcome {
                Outcome::Translated { guest_level, .. } => {
                    alloc::format!("{nested} ok level {guest_level}")
                }
                Outcome::PageFault { error_code, .. } => {
                    alloc::format!("{nested} #PF {:#x}", error_code & 0x9)
                }
                Outcome::NonCanonical { .. } => alloc::format!("{nested} non-canonical"),
                Outcome::NestedFault {
                    info, misconfig, ..
                } => alloc::format!(
                    "{nested} nested misconfig {misconfig} final {}",
                    info & (1 << 8 | 1 << 32) != 0
                ),
                Outcome::Memory { .. } => alloc::format!("{nested} memory"),
                Outcome::Contended => alloc::format!("{nested} contended"),
            };
            *histogram.entry(key).or_default() += 1;
        }
    }
    let mut expected: Vec<String> = Vec::new();
    for nested in ["native", "ept", "npt"] {
        for level in 1..=3 {
            expected.push(alloc::format!("{nested} ok level {level}"));
        }
        for code in [0, 1, 9] {
            expected.push(alloc::format!("{nested} #PF {code:#x}"));
        }
        expected.push(alloc::format!("{nested} non-canonical"));
        expected.push(alloc::format!("{nested} memory"));
    }
    for nested in ["ept", "npt"] {
        for last in [false, true] {
            expected.push(alloc::format!(
                "{nested} nested misconfig false final {last}"
            ));
        }
    }
    expected.push(String::from("ept nested misconfig true final false"));
    for key in expected {
        let count = histogram.get(&key).copied().unwrap_or(0);
        assert!(
            count >= 10,
            "only {count} scenarios give `{key}`: {histogram:#?}"
        );
    }
}

/// What the shadow inputs exercise: every path of the MMU shows up in a thousand seeds. (Hits
/// of stale entries in unsync tables are rare in random tables; the shadow unit tests make
/// them on purpose.)
#[test]
fn shadow_inputs_reach_every_path() {
    let mut total = super::shadow::Coverage::default();
    let mut unsync_runs = 0;
    for seed in 0..1000u32 {
        let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let bytes: Vec<u8> = (0..24)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let coverage = super::shadow::run(&bytes).unwrap_or_else(|err| panic!("{seed}: {err}"));
        let s = coverage.stats;
        let t = &mut total.stats;
        t.hits += s.hits;
        t.shadow_faults += s.shadow_faults;
        t.write_protect_faults += s.write_protect_faults;
        t.guest_faults += s.guest_faults;
        t.no_backing += s.no_backing;
        t.syncs += s.syncs;
        t.unsyncs += s.unsyncs;
        t.zaps += s.zaps;
        t.evictions += s.evictions;
        total.stale_hits += coverage.stale_hits;
        unsync_runs += u32::from(s.unsyncs > 0);
    }
    let t = total.stats;
    let counts = [
        ("hits", t.hits),
        ("shadow faults", t.shadow_faults),
        ("write-protection faults", t.write_protect_faults),
        ("guest faults", t.guest_faults),
        ("no backing", t.no_backing),
        ("syncs", t.syncs),
        ("unsyncs", t.unsyncs),
        ("zaps", t.zaps),
        ("evictions", t.evictions),
        ("runs with unsync tables", u64::from(unsync_runs)),
    ];
    for (what, count) in counts {
        assert!(count >= 20, "only {count} {what}: {counts:?}");
    }
}

/// The fuzz target reuses its scratch (memory, history, and the MMU, reset) from input to input:
/// every input must run exactly as it does on a fresh scratch, or a crash would not reproduce.
#[test]
fn a_reused_scratch_runs_inputs_as_a_fresh_one() {
    let mut scratch = super::shadow::Scratch::default();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..600u32 {
        let len = (round % 7) as usize * 24;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let fresh = super::shadow::run(&bytes);
        let reused = super::shadow::run_reusing(&bytes, &mut scratch);
        assert_eq!(reused, fresh, "input {bytes:?}");
    }
}

/// Inputs the fuzzer found (also seeds of `paging_shadow`): a store through a PTE that maps
/// its own page, which unsyncs that table and leaves a stale entry between two writes of one
/// step; and setting CR4.PCIDE, which flushes nothing.
#[test]
fn shadow_inputs_found_by_the_fuzzer() {
    let self_mapping_pte: [u8; 54] = [
        3, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0,
        0, 0, 0, 2, 0, 2, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0,
    ];
    let pcide_set: [u8; 44] = [
        2, 3, 40, 77, 39, 114, 151, 188, 225, 6, 207, 43, 90, 117, 154, 187, 229, 83, 233, 196, 46,
        9, 120, 157, 194, 12, 49, 86, 255, 123, 255, 197, 160, 255, 44, 126, 163, 200, 237, 18, 55,
        92, 129, 166,
    ];
    for input in [&self_mapping_pte[..], &pcide_set[..]] {
        if let Err(mismatch) = super::shadow::check(input) {
            panic!("{mismatch}");
        }
    }
}
