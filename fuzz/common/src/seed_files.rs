//! The committed seed files of each fuzz target (`fuzz/seeds/<target>/`), shared by the modules'
//! tests: replaying them on stable in every `cargo test`, and regenerating them.

use std::path::PathBuf;

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

/// Writes the `generated` seeds of `target`.
pub(crate) fn write(target: &str, generated: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir(target)).unwrap();
    for (name, bytes) in generated {
        std::fs::write(dir(target).join(name), bytes).unwrap();
    }
}
