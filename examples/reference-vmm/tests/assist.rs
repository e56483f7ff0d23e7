//! The `assist` guest under the reference VMM and under QEMU TCG: every check both run must print
//! the same line, both must end with status 0, and `--stats` says which instructions the
//! emulation assist completed on this host (the rest the host ran itself).
//!
//! The guest runs in ring 0 the instructions a hardware-assisted backend may fail to emulate
//! (`int3`, `cmpxchg8b`/`cmpxchg16b`, the XSAVE family, `popcnt`/`lzcnt`/`tzcnt`, `stac`/`clac`,
//! `fwait`, `ldmxcsr`/`stmxcsr`); where KVM fails on one, the assist completes it. TCG is the
//! reference because it runs every instruction itself. It runs with two vCPUs and multi-threaded
//! TCG so that `lock cmpxchg16b` takes TCG's atomic path, which checks for a write before it
//! reads as the processor does (single-threaded TCG loads first, and reports a not-present
//! operand as a read fault). The second vCPU waits for a SIPI that never comes.
//!
//! A group of checks whose feature one VMM's CPUID lacks prints `<group> skipped: ...` there;
//! those groups are compared against the architecture alone (the guest's `ok`), under the VMM
//! that ran them. Needs `/dev/kvm` (`VMKIT_SKIP_KVM_TESTS=1` skips) and `qemu-system-x86_64`.

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Finished, LIMIT, QEMU, kvm_available, run_qemu, run_with_limit};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// The guest image the build script built (the bytes `--builtin assist` embeds).
const ASSIST_ELF: &str = concat!(env!("OUT_DIR"), "/assist.elf");
const MEMORY_MIB: u32 = 128;
const PREFIX: &str = "vmkit assist: ";

/// The groups of checks that depend on a CPUID bit (`<group>` or `<group>-...`).
const OPTIONAL_GROUPS: &[&str] = &[
    "xsave",
    "xsavec",
    "xsaves",
    "popcnt",
    "lzcnt",
    "tzcnt",
    "stac-clac",
    "fwait-mf",
];

/// Every instruction the guest runs that the assist can complete, with the group of checks
/// that runs it.
const INSTRUCTIONS: &[(&str, &str)] = &[
    ("int3", "int3"),
    ("cmpxchg16b", "cmpxchg16b"),
    ("cmpxchg8b", "cmpxchg8b"),
    ("xsave", "xrstor"),
    ("xrstor", "xrstor"),
    ("xsavec", "xsavec"),
    ("xsaves", "xsaves"),
    ("xrstors", "xsaves"),
    ("popcnt", "popcnt"),
    ("lzcnt", "lzcnt"),
    ("tzcnt", "tzcnt"),
    ("stac", "stac-clac"),
    ("clac", "stac-clac"),
    ("fwait", "fwait"),
    ("ldmxcsr", "ldmxcsr"),
    ("stmxcsr", "ldmxcsr"),
];

fn reference_vmm() -> Finished {
    let memory = format!("size={MEMORY_MIB}M");
    run_with_limit(
        Command::new(VMM).args(["--builtin", "assist", "--stats", "--memory", &memory]),
        LIMIT,
        "the reference VMM binary is missing",
    )
}

fn qemu_tcg() -> Finished {
    let mut command = Command::new(QEMU);
    command.args(["-accel", "tcg,thread=multi", "-smp", "2", "-cpu", "max"]);
    command.arg("-m").arg(format!("{MEMORY_MIB}M"));
    command.args(["-nodefaults", "-kernel", ASSIST_ELF]);
    command.args(["-serial", "stdio", "-display", "none", "-no-reboot"]);
    command.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    run_qemu(&mut command)
}

/// The guest's lines, without the prefix.
fn lines(run: &Finished, who: &str) -> Vec<String> {
    run.stdout
        .lines()
        .map(|line| {
            line.strip_prefix(PREFIX)
                .unwrap_or_else(|| panic!("{who}: not the assist guest's line: {line:?}\n{run:?}"))
                .to_string()
        })
        .collect()
}

/// The check a line reports (its first word).
fn check_of(line: &str) -> &str {
    line.split(' ').next().unwrap_or_default()
}

fn in_group(check: &str, group: &str) -> bool {
    check == group
        || check
            .strip_prefix(group)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// The groups a run skipped for lack of a CPUID bit.
fn skipped(lines: &[String], who: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|line| line.split_once(" skipped: ").map(|(group, _)| group))
        .inspect(|group| {
            assert!(
                OPTIONAL_GROUPS.contains(group),
                "{who} skipped {group}, which is not optional"
            )
        })
        .map(str::to_string)
        .collect()
}

/// The `assist <mnemonic> <count>` rows of `--stats`.
fn assist_rows(stderr: &str) -> BTreeMap<String, u64> {
    stderr
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("assist")).then_some(())?;
            let name = words.next()?;
            let count = words.last()?.parse().ok()?;
            Some((name.to_string(), count))
        })
        .collect()
}

#[test]
fn assist_guest_matches_tcg_and_the_assist_completes_what_the_host_cannot() {
    if !kvm_available() {
        return;
    }
    let ours = reference_vmm();
    let theirs = qemu_tcg();
    let our_lines = lines(&ours, "reference VMM");
    let their_lines = lines(&theirs, "QEMU TCG");
    let our_skips = skipped(&our_lines, "reference VMM");
    let their_skips = skipped(&their_lines, "QEMU TCG");
    let differing: BTreeSet<&String> = our_skips.symmetric_difference(&their_skips).collect();
    // KVM's instruction emulator runs `tzcnt` as `bsf` (it ignores the F3 prefix); where the
    // host emulates ring 0 (and so never fails on it, leaving the assist out), the guest sees
    // BSF's results. Those lines are reported, not compared; any other mismatch fails.
    let rows = assist_rows(&ours.stderr);
    let mismatches: Vec<&String> = our_lines
        .iter()
        .filter(|l| l.ends_with(" MISMATCH") && check_of(l) != "done")
        .collect();
    let host_tzcnt_is_bsf = !rows.contains_key("tzcnt")
        && !mismatches.is_empty()
        && mismatches.iter().all(|l| in_group(check_of(l), "tzcnt"));
    let compared = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|line| {
                let check = check_of(line);
                !differing.iter().any(|group| in_group(check, group))
                    && !(host_tzcnt_is_bsf && (in_group(check, "tzcnt") || check == "done"))
            })
            .cloned()
            .collect()
    };
    let (ours_compared, theirs_compared) = (compared(&our_lines), compared(&their_lines));
    for (index, (a, b)) in ours_compared.iter().zip(&theirs_compared).enumerate() {
        assert_eq!(
            a, b,
            "line {index} differs (left: reference VMM, right: QEMU TCG)\n\
             reference VMM:\n{}\nQEMU TCG:\n{}",
            ours.stdout, theirs.stdout
        );
    }
    assert_eq!(
        ours_compared.len(),
        theirs_compared.len(),
        "reference VMM:\n{}\nQEMU TCG:\n{}",
        ours.stdout,
        theirs.stdout
    );
    let required: &[&str] = if host_tzcnt_is_bsf {
        &["int3", "cmpxchg16b-equal", "cmpxchg16b-misaligned"]
    } else {
        &["int3", "cmpxchg16b-equal", "cmpxchg16b-misaligned", "done"]
    };
    for required in required {
        assert!(
            ours_compared.iter().any(|l| check_of(l) == *required),
            "no {required} line compared: {ours_compared:?}"
        );
    }
    for group in &differing {
        eprintln!(
            "{group}: CPUID differs between the VMMs; checked against the architecture alone \
             (reference VMM {}, QEMU TCG {})",
            if our_skips.contains(*group) {
                "skipped"
            } else {
                "ran"
            },
            if their_skips.contains(*group) {
                "skipped"
            } else {
                "ran"
            },
        );
    }
    assert_eq!(theirs.status, Some(0), "QEMU TCG: {theirs:?}");
    if host_tzcnt_is_bsf {
        eprintln!(
            "tzcnt: run by the host's KVM emulator as bsf (not by the assist):\n  {}",
            mismatches
                .iter()
                .map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
        // The guest's status counts its mismatches: the tzcnt lines alone.
        assert_eq!(ours.status, Some(1), "reference VMM: {ours:?}");
    } else {
        assert_eq!(ours.status, Some(0), "reference VMM: {ours:?}");
    }

    // Which instructions the assist completed here; the host ran the others itself (and ran
    // them right: their lines match TCG's). This host is known to fail on `int3` and
    // `cmpxchg16b` in ring 0.
    assert_eq!(rows.get("int3"), Some(&1), "{}", ours.stderr);
    assert_eq!(rows.get("cmpxchg16b"), Some(&2), "{}", ours.stderr);
    assert_eq!(rows.get("stopped"), None, "{}", ours.stderr);
    assert_eq!(rows.get("reflected"), None, "{}", ours.stderr);
    for name in rows.keys() {
        assert!(
            name == "faulted" || INSTRUCTIONS.iter().any(|(i, _)| i == name),
            "the assist completed {name}, which the guest does not run: {}",
            ours.stderr
        );
    }
    for (instruction, group) in INSTRUCTIONS {
        let by = match rows.get(*instruction) {
            Some(n) => format!("assisted ({n})"),
            None if our_skips.iter().any(|g| in_group(group, g)) => "not run (CPUID)".into(),
            None => "host".into(),
        };
        eprintln!("{instruction:<12} {by}");
    }
    eprintln!("{:<12} {}", "faulted", rows.get("faulted").unwrap_or(&0));
}
