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
