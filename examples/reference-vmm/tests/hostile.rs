//! The `hostile` guest against the reference VMM, with two disks: the attacked one (first) and
//! an honest one with the `blk` guest's pattern (second).
//!
//! Each attack runs in a VM of its own and all of them in one VM: the guest checks a block of
//! the honest disk after every attack, so the VMM must stay responsive throughout, and it must
//! end with status 0 and its report. The VMM's log (stderr) must stay under [`LOG_LIMIT`], and
//! afterwards the honest disk's file must hold exactly what the guest wrote to it. A guest that
//! attacks for ever must be stopped by `--timeout` within the documented bound plus slack.
//!
//! They need `/dev/kvm` (`VMKIT_SKIP_KVM_TESTS=1` skips them). Every VMM is killed, failing the
//! test, after [`LIMIT`].

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::fs::{self, File};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Finished, kvm_available, run_with_limit};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// The guest image the build script built.
const HOSTILE_ELF: &str = concat!(env!("OUT_DIR"), "/hostile.elf");
/// Guest memory: the guest keeps its rings and tables at 4..6 MiB.
const MEMORY: &str = "size=128M";
/// The attacked disk: 32 MiB, the region the ring attack needs (written by the guest itself).
const ATTACKED_BYTES: u64 = 32 << 20;
/// The honest disk: 1 MiB.
const HONEST_SECTORS: u64 = 2048;
const SECTOR: usize = 512;
/// The sectors the guest writes on the honest disk (the inverted pattern) before attacking.
const WRITTEN: Range<u64> = 8..16;
/// Every attack, in the order the guest runs them.
const ATTACKS: [&str; 8] = [
    "ring", "indirect", "heads", "notify", "serial", "ports", "mmio", "config",
];
/// Most bytes the VMM may write to stderr in one run. Every line a guest can cause goes
/// through a rate limiter (about 10 lines of some 100 bytes a second each), so the few seconds
/// of a run log a few KiB, and a slow machine stays far below the limit; a line per guest
/// action (a bad head index makes one without a limiter) goes far above it.
const LOG_LIMIT: usize = 64 << 10;
/// `--timeout` of the runs that end by themselves: a hung VM is stopped by it (and the test
/// fails on the status) before [`LIMIT`] kills it.
const RUN_TIMEOUT: &str = "30";
/// How long a run may take before the test kills the VMM and fails.
const LIMIT: Duration = Duration::from_secs(45);
/// `--timeout` of the runs that attack for ever.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after [`ATTACK_TIMEOUT`] the VMM must have exited: the documented bound of the
/// stop (about a second), with plenty of slack for a loaded machine and the VMM's start-up.
const STOP_SLACK: Duration = Duration::from_secs(10);
/// The VMM's status when `--timeout` stopped the VM.
const TIMEOUT_STATUS: i32 = 124;

/// The honest disk's pattern: word `k` (the guests' `pattern`).
fn pattern(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0123_4567_89ab_cdef
}

/// The honest disk's image: every 64-bit word `k` holds `pattern(k)`, complemented in the
/// sectors of `inverted`.
fn honest_image(inverted: Range<u64>) -> Vec<u8> {
    let words_per_sector = (SECTOR / 8) as u64;
    (0..HONEST_SECTORS * words_per_sector)
        .flat_map(|k| {
            let flip = if inverted.contains(&(k / words_per_sector)) {
                u64::MAX
            } else {
                0
            };
            (pattern(k) ^ flip).to_le_bytes()
        })
        .collect()
}

/// The two disk images in the temporary directory, removed when dropped.
struct Disks {
    attacked: PathBuf,
    honest: PathBuf,
}

impl Disks {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let attacked = dir.join(format!("vmkit-hostile-{id}-{name}-attacked.img"));
        let honest = dir.join(format!("vmkit-hostile-{id}-{name}-honest.img"));
        File::create(&attacked)
            .unwrap()
            .set_len(ATTACKED_BYTES)
            .unwrap();
        fs::write(&honest, honest_image(0..0)).unwrap();
        Self { attacked, honest }
    }

    /// The arguments that attach both, the attacked disk first.
    fn args(&self) -> [String; 4] {
        [
            "--disk".into(),
            format!("path={}", self.attacked.display()),
            "--disk".into(),
            format!("path={}", self.honest.display()),
        ]
    }

    /// Whether the honest disk holds the pattern with [`WRITTEN`] inverted, or (with
    /// `maybe_pristine`, for a VM stopped from outside) the pattern alone.
    fn honest_as_written(&self, maybe_pristine: bool) -> bool {
        let contents = fs::read(&self.honest).unwrap();
        contents == honest_image(WRITTEN) || (maybe_pristine && contents == honest_image(0..0))
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.attacked);
        let _ = fs::remove_file(&self.honest);
    }
}

/// Runs the guest with `cmdline` and the first `attached` disks (the attacked one first) under
/// `--timeout timeout`, killing it after `limit`; returns how it ended and how long it took.
fn run_vmm(
    disks: &Disks,
    attached: usize,
    cmdline: &str,
    timeout: &str,
    limit: Duration,
) -> (Finished, Duration) {
    let mut command = Command::new(VMM);
    command.args([
        "--kernel",
        HOSTILE_ELF,
        "--cmdline",
        cmdline,
        "--memory",
        MEMORY,
        "--timeout",
        timeout,
    ]);
    command.args(disks.args().iter().take(2 * attached));
    let start = Instant::now();
    let finished = run_with_limit(&mut command, limit, "the reference VMM binary is missing");
    (finished, start.elapsed())
}

/// The guest's report lines, without the `vmkit hostile: ` prefix (the COM1 flood's lines are
/// left out).
fn report(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("vmkit hostile: "))
        .collect()
}

/// Requires the report of `rounds` rounds of `attacks` that all passed: the set-up lines, then
/// per attack its `<name>: ... ok` line and an `honest: block <n> ok` line, then `done`.
fn assert_passed(run: &Finished, attacks: &[&str], rounds: u64) {
    assert_eq!(run.status, Some(0), "{run:?}");
    let lines = report(&run.stdout);
    let mut expected = vec![
        format!("attacks={} rounds={rounds} seed=1", attacks.join(",")),
        format!(
            "disks: attacked capacity={} honest capacity={HONEST_SECTORS}",
            ATTACKED_BYTES / SECTOR as u64
        ),
        "honest: block 0 ok, block 1 written inverted and read back".to_string(),
    ];
    expected.extend((0..rounds).flat_map(|_| {
        attacks
            .iter()
            .flat_map(|a| [format!("{a}: "), "honest: block ".into()])
    }));
    expected.push(format!("done rounds={rounds} ok"));
    assert_eq!(lines.len(), expected.len(), "{run:?}");
    for (line, want) in lines.iter().zip(&expected) {
        if want.ends_with(": ") || want == "honest: block " {
            assert!(
                line.starts_with(want.as_str()) && line.ends_with(" ok"),
                "{line:?}: {run:?}"
            );
        } else {
            assert_eq!(line, want, "{run:?}");
        }
    }
}

/// Requires the VMM's log to stay under [`LOG_LIMIT`].
fn assert_log_bounded(run: &Finished) {
    assert!(
        run.stderr.len() <= LOG_LIMIT,
        "the VMM logged {} bytes (limit {LOG_LIMIT}); the first lines:\n{}",
        run.stderr.len(),
        run.stderr.lines().take(20).collect::<Vec<_>>().join("\n")
    );
}

/// Runs the attacks `attacks` (a `hostile.attack=` value) for `rounds` rounds in one VM and
/// checks the report, the log and the honest disk.
fn attack(attacks: &str, rounds: u64) {
    if !kvm_available() {
        return;
    }
    let disks = Disks::new(&attacks.replace(',', "-"));
    let cmdline = format!("hostile.attack={attacks} hostile.rounds={rounds}");
    let (run, _) = run_vmm(&disks, 2, &cmdline, RUN_TIMEOUT, LIMIT);
    let names: Vec<&str> = match attacks {
        "all" => ATTACKS.to_vec(),
        _ => attacks.split(',').collect(),
    };
    assert_passed(&run, &names, rounds);
    assert_log_bounded(&run);
    assert!(
        disks.honest_as_written(false),
        "the honest disk's file is not as the guest wrote it"
    );
}

#[test]
fn ring_attack_completes_one_request_per_notification() {
    attack("ring", 1);
}

#[test]
fn maximal_indirect_tables_are_all_given_back() {
    attack("indirect", 1);
}

#[test]
fn out_of_range_heads_leave_the_queue_usable_and_the_log_quiet() {
    attack("heads", 1);
}

#[test]
fn notification_storms_complete_nothing_twice() {
    attack("notify", 1);
}

#[test]
fn serial_flood_leaves_the_console_working() {
    attack("serial", 1);
}

#[test]
fn port_storm_is_answered() {
    attack("ports", 1);
}

#[test]
fn mmio_storm_is_answered() {
    attack("mmio", 1);
}

#[test]
fn config_space_storm_is_answered() {
    attack("config", 1);
}

/// Every attack twice in one VM (the second round reuses the ring region and the indirect
/// table the first one wrote), the honest disk checked after each.
#[test]
fn all_attacks_in_one_vm_leave_the_honest_disk_serving_correct_data() {
    attack("all", 2);
}

/// `--timeout` ends a VM whose guest keeps running `attacks` within the bound, with status 124
/// and a bounded log; the honest disk is intact.
fn timeout_stops(attacks: &str) {
    if !kvm_available() {
        return;
    }
    let disks = Disks::new(&format!("forever-{}", attacks.replace(',', "-")));
    let cmdline = format!("hostile.attack={attacks} hostile.rounds=forever");
    let timeout = ATTACK_TIMEOUT.as_secs().to_string();
    let (run, elapsed) = run_vmm(&disks, 2, &cmdline, &timeout, ATTACK_TIMEOUT + STOP_SLACK);
    assert_eq!(run.status, Some(TIMEOUT_STATUS), "{run:?}");
    assert!(elapsed >= ATTACK_TIMEOUT, "{elapsed:?}");
    assert!(
        report(&run.stdout)
            .iter()
            .any(|l| l.starts_with("honest: block 0 ok")),
        "the guest never got to its attacks: {run:?}"
    );
    assert!(!run.stdout.contains("vmkit hostile: done"), "{run:?}");
    assert_log_bounded(&run);
    assert!(
        disks.honest_as_written(true),
        "the honest disk's file is damaged"
    );
}

/// The ring attack for ever: each notification must return for the stop to reach the vCPU.
#[test]
fn timeout_stops_a_guest_repeating_the_ring_attack() {
    timeout_stops("ring");
}

/// Every other attack for ever.
#[test]
fn timeout_stops_a_guest_repeating_every_other_attack() {
    timeout_stops("indirect,heads,notify,serial,ports,mmio,config");
}

/// Bad command lines, a missing honest disk and an attacked disk too small for the ring attack
/// are reported by the guest with its documented statuses.
#[test]
fn bad_command_lines_and_missing_or_small_disks_are_reported() {
    if !kvm_available() {
        return;
    }
    let disks = Disks::new("setup");
    for cmdline in [
        "hostile.attack=nope",
        "hostile.attack=ring,",
        "hostile.rounds=0",
        "hostile.seed=x",
    ] {
        let (run, _) = run_vmm(&disks, 2, cmdline, RUN_TIMEOUT, LIMIT);
        assert_eq!(run.status, Some(4), "{cmdline:?}: {run:?}");
        assert!(
            report(&run.stdout)[0].starts_with("bad command line"),
            "{run:?}"
        );
    }
    let (run, _) = run_vmm(&disks, 1, "hostile.attack=ports", RUN_TIMEOUT, LIMIT);
    assert_eq!(run.status, Some(5), "{run:?}");
    assert!(
        report(&run.stdout)[1].starts_with("two virtio-blk devices"),
        "{run:?}"
    );

    File::options()
        .write(true)
        .open(&disks.attacked)
        .unwrap()
        .set_len(ATTACKED_BYTES / 2)
        .unwrap();
    let (run, _) = run_vmm(&disks, 2, "hostile.attack=ring", RUN_TIMEOUT, LIMIT);
    assert_eq!(run.status, Some(5), "{run:?}");
    assert!(
        report(&run.stdout)
            .iter()
            .any(|l| l.starts_with("the ring attack needs")),
        "{run:?}"
    );
    assert!(
        fs::read(&disks.honest).unwrap() == honest_image(0..0),
        "the guest wrote the honest disk before refusing to run"
    );
}

/// The image helper itself: only the named sectors are complemented.
#[test]
fn honest_image_inverts_only_the_written_sectors() {
    let plain = honest_image(0..0);
    let written = honest_image(WRITTEN);
    assert_eq!(plain.len(), HONEST_SECTORS as usize * SECTOR);
    let range = WRITTEN.start as usize * SECTOR..WRITTEN.end as usize * SECTOR;
    for (i, (a, b)) in plain.iter().zip(&written).enumerate() {
        assert_eq!(*b, if range.contains(&i) { !a } else { *a }, "byte {i}");
    }
    assert_eq!(&plain[..8], &pattern(0).to_le_bytes());
}
