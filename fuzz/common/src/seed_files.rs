//! The committed seed files of each fuzz target (`fuzz/seeds/<target>/`), shared by the modules'
//! tests: replaying them on stable in every `cargo test`, and regenerating them.

use std::collections::HashSet;
use std::path::PathBuf;

use vmkit_fuzzing::VirtioFuzzer;
use vmkit_fuzzing::virtio::{VirtioFixture, VirtioOp};

/// `fuzz/seeds/<target>/`.
pub(crate) fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../seeds")
        .join(target)
}

/// Runs `run` over every committed seed of `target` and checks that at least the `generated`
/// ones are there; with `check_current`, also that each generated seed equals its committed file.
pub(crate) fn replay(
    target: &str,
    generated: &[(&str, Vec<u8>)],
    check_current: bool,
    run: impl Fn(&[u8]),
) {
    let mut count = 0;
    for entry in std::fs::read_dir(dir(target)).unwrap() {
        run(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count >= generated.len());
    if check_current {
        for (name, bytes) in generated {
            let committed = std::fs::read(dir(target).join(name)).unwrap();
            assert_eq!(&committed, bytes, "{name} is stale: rerun write_seeds");
        }
    }
}

/// Runs `run` over inputs no generator makes: empty, all ones, every byte value in order, and
/// each tag alone and followed by a few bytes (each must run without a panic).
pub(crate) fn odd_inputs(run: impl Fn(&[u8])) {
    run(&[]);
    run(&[0xff; 64]);
    run(&(0..=255).collect::<Vec<u8>>());
    for tag in 0..=255u8 {
        run(&[tag]);
        run(&[tag, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }
}

/// Writes the `generated` seeds of `target`.
pub(crate) fn write(target: &str, generated: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir(target)).unwrap();
    for (name, bytes) in generated {
        std::fs::write(dir(target).join(name), bytes).unwrap();
    }
}

/// The longest seed made from a recording, in bytes: as long as the target's longest written
/// seed, within these bounds. libFuzzer starts a run with its longest seed's length as the
/// limit of the inputs it makes (and raises it as it goes): recorded seeds longer than the
/// written ones would make every input of a run longer, and runs fewer.
pub(crate) const RECORDED_SEED_LEN: std::ops::RangeInclusive<usize> = 64..=256;

/// The longest seed a target with the `written` seeds takes from a recording.
pub(crate) fn recorded_seed_len(written: &[(&str, Vec<u8>)]) -> usize {
    let longest = written.iter().map(|(_, bytes)| bytes.len()).max();
    longest
        .unwrap_or(0)
        .clamp(*RECORDED_SEED_LEN.start(), *RECORDED_SEED_LEN.end())
}

/// The most seeds one recording gives one target: the first ones, which hold the drivers'
/// set-up; what follows is mostly the same accesses again.
pub(crate) const RECORDED_SEEDS_PER_RECORDING: usize = 8;

/// The committed recordings of the project guests (`guests/recordings/*.vmrec`), each with its
/// guest's name (the file's stem), in name order.
pub(crate) fn recordings() -> Vec<(String, vmkit_fuzzing::Recording)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../guests/recordings");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "vmrec"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let guest = path.file_stem().unwrap().to_string_lossy().into_owned();
            let recording = vmkit_fuzzing::Recording::read(std::fs::File::open(&path).unwrap());
            (guest, recording.unwrap())
        })
        .collect()
}

/// The seeds a target takes from the committed recordings: `inputs` makes a recording's seed
/// inputs (none when it does not touch the target's devices), of which the first
/// [`RECORDED_SEEDS_PER_RECORDING`] are named `recorded-<guest>-<n>`.
pub(crate) fn recorded(
    inputs: impl Fn(&vmkit_fuzzing::Recording) -> Vec<Vec<u8>>,
) -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (guest, recording) in recordings() {
        let inputs = inputs(&recording);
        for (n, input) in inputs
            .into_iter()
            .take(RECORDED_SEEDS_PER_RECORDING)
            .enumerate()
        {
            assert!(
                input.len() <= *RECORDED_SEED_LEN.end(),
                "recorded-{guest}-{n}"
            );
            seeds.push((format!("recorded-{guest}-{n}"), input));
        }
    }
    seeds
}

/// The seed inputs of a device-harness target from `ops` (a recording's accesses to its
/// regions): cut into inputs of at most `max_len` bytes, keeping only those that
/// make an access no input kept before makes (a place, direction and size; the bytes written
/// aside): a driver printing text through a UART makes the same two accesses for a long time.
pub(crate) fn harness_inputs(ops: &[vmkit_fuzzing::Op], max_len: usize) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    vmkit_fuzzing::seed_inputs(ops, max_len)
        .into_iter()
        .filter(|input| {
            let accesses = vmkit_fuzzing::decode(input).into_iter().map(|op| match op {
                vmkit_fuzzing::Op::Access(access) | vmkit_fuzzing::Op::Burst { access, .. } => {
                    let size = access.read.map_or(access.data.len(), usize::from);
                    format!(
                        "{} {:?} {} {size}",
                        access.region,
                        access.offset,
                        access.read.is_some()
                    )
                }
                other => unreachable!("a recording makes accesses only: {other:?}"),
            });
            novel(&mut seen, accesses)
        })
        .collect()
}

/// The seed inputs of a virtio target from a recorded driver ([`VirtioFuzzer::ops_from_recording`]):
/// the operations up to the first chain or notification (the driver's set-up) start every
/// input if `set_up`, else none; the requests after them (each up to and with its
/// notification) fill inputs in order while an input stays within `max_len` bytes. A request
/// too long for an input alone is left out.
///
/// [`VirtioFuzzer::ops_from_recording`]: vmkit_fuzzing::VirtioFuzzer::ops_from_recording
pub(crate) fn virtio_inputs<F: VirtioFixture>(
    fuzzer: &VirtioFuzzer<F>,
    config: &F::Config,
    ops: &[VirtioOp],
    set_up: bool,
    max_len: usize,
) -> Vec<Vec<u8>> {
    let first = ops
        .iter()
        .position(|op| matches!(op, VirtioOp::Chain(_) | VirtioOp::Notify(_)))
        .unwrap_or(ops.len());
    let prefix = if set_up { &ops[..first] } else { &[][..] };
    let mut inputs = Vec::new();
    let mut input = prefix.to_vec();
    let mut requests = 0;
    for request in ops[first..].split_inclusive(|op| matches!(op, VirtioOp::Notify(_))) {
        let mut longer = input.clone();
        longer.extend_from_slice(request);
        if fuzzer.encode(config, &longer).len() <= max_len {
            (input, requests) = (longer, requests + 1);
            continue;
        }
        if requests > 0 {
            inputs.push(fuzzer.encode(config, &input));
        }
        input = prefix.to_vec();
        input.extend_from_slice(request);
        requests = 1;
        if fuzzer.encode(config, &input).len() > max_len {
            (input, requests) = (prefix.to_vec(), 0);
        }
    }
    if requests > 0 {
        inputs.push(fuzzer.encode(config, &input));
    } else if inputs.is_empty() && !prefix.is_empty() {
        // A driver that set the device up and asked for nothing.
        let input = fuzzer.encode(config, prefix);
        if input.len() <= max_len {
            inputs.push(input);
        }
    }
    inputs
}

/// Whether any of `accesses` is not in `seen`; adds them all.
pub(crate) fn novel(seen: &mut HashSet<String>, accesses: impl Iterator<Item = String>) -> bool {
    accesses.fold(false, |new, access| seen.insert(access) | new)
}

/// A target's written seeds, then its recorded ones.
pub(crate) fn all(
    written: Vec<(&str, Vec<u8>)>,
    recorded: Vec<(String, Vec<u8>)>,
) -> Vec<(String, Vec<u8>)> {
    let written = written
        .into_iter()
        .map(|(name, bytes)| (name.to_string(), bytes));
    written.chain(recorded).collect()
}

/// `seeds` as [`replay`] and [`write`] take them.
pub(crate) fn named(seeds: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    seeds
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.clone()))
        .collect()
}
