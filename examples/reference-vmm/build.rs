//! Builds the bare-metal guests in `guests/` and places their images in `OUT_DIR`, where
//! `src/guests.rs` embeds them.
//!
//! The guests are their own cargo workspace for `x86_64-unknown-none`. They are built with the
//! same cargo and compiler as this crate (`CARGO`, `RUSTC` and `RUSTUP_TOOLCHAIN` are passed
//! through) but with none of the outer build's compiler flags: coverage instrumentation,
//! sanitizers, clippy's wrapper or host `RUSTFLAGS` must not reach a freestanding image. The
//! guests' own flags come from `guests/.cargo/config.toml` alone.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The guests' target.
const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Guest packages built here, each copied to `$OUT_DIR/<name>.elf`.
const GUESTS: &[&str] = &["hello", "exits", "blk", "paging", "assist", "hostile"];

/// Host crates (relative to the guest workspace) that guests depend on by path: the `paging`
/// guest builds its page tables with vmkit-paging's `no_std` core.
const HOST_CRATES: &[&str] = &["../crates/vmkit-paging"];

/// Environment variables of the outer build that must not reach the guest build.
const REMOVED_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "LLVM_PROFILE_FILE",
];

/// Prefixes of environment variables of the outer build that must not reach the guest build:
/// the outer package's cfg and features, coverage tooling, and profile overrides (the guests
/// choose their own optimisation and panic strategy).
const REMOVED_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_LLVM_COV",
    "CARGO_PROFILE_",
];

fn main() {
    if let Err(message) = run() {
        eprintln!("error: building the guest images failed: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(var("OUT_DIR")?);
    let guests_dir = manifest_dir.join("../../guests");
    let guests_dir = guests_dir.canonicalize().map_err(|e| {
        format!(
            "the guest workspace {} is missing ({e}); it ships with the vmkit sources",
            guests_dir.display()
        )
    })?;

    // `rt` is the crate every guest shares.
    for file in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "rt"] {
        println!("cargo:rerun-if-changed={}", guests_dir.join(file).display());
    }
    // A directory makes cargo watch every file below it.
    for dir in GUESTS.iter().chain(HOST_CRATES) {
        println!("cargo:rerun-if-changed={}", guests_dir.join(dir).display());
    }

    ensure_target_installed()?;

    let target_dir = out_dir.join("guests-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(&guests_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            GUEST_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for guest in GUESTS {
        command.args(["-p", guest]);
    }
    clean_environment(&mut command);
    let output = command
        .output()
        .map_err(|e| format!("cannot run {} ({e})", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build --release --target {GUEST_TARGET}` in {} exited with {}:\n{}\n\
             Build the guests by hand as guests/README.md describes to see the full output.",
            guests_dir.display(),
            output.status,
            stderr_of(&output)
        ));
    }

    for guest in GUESTS {
        let built = target_dir.join(GUEST_TARGET).join("release").join(guest);
        let image = fs::read(&built).map_err(|e| {
            format!(
                "the guest build produced no image at {} ({e})",
                built.display()
            )
        })?;
        if !image.starts_with(b"\x7fELF") {
            return Err(format!("{} is not an ELF image", built.display()));
        }
        let embedded = out_dir.join(format!("{guest}.elf"));
        fs::write(&embedded, &image)
            .map_err(|e| format!("cannot write {} ({e})", embedded.display()))?;
    }
    Ok(())
}

/// Reads an environment variable cargo sets for build scripts.
fn var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("cargo did not set {name}; run this through cargo"))
}

/// Removes the outer build's compiler flags, wrappers and package cfg from the guest build's
/// environment. `CARGO_MAKEFLAGS` stays, so the guest build shares cargo's jobserver, and so do
/// `RUSTC` and `RUSTUP_TOOLCHAIN`, so it uses the same toolchain.
fn clean_environment(command: &mut Command) {
    for name in REMOVED_VARS {
        command.env_remove(name);
    }
    for (name, _) in env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let per_target_flags = name.starts_with("CARGO_TARGET_") && name.ends_with("_RUSTFLAGS");
        if per_target_flags
            || REMOVED_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name);
        }
    }
}

/// The compiler this build uses.
fn rustc() -> OsString {
    env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"))
}

/// Makes sure the guest target's standard library is installed for this build's compiler,
/// installing it with rustup if it is missing.
fn ensure_target_installed() -> Result<(), String> {
    let output = Command::new(rustc())
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run {} ({e})", Path::new(&rustc()).display()))?;
    if !output.status.success() {
        return Err(format!(
            "`rustc --print sysroot` failed: {}",
            stderr_of(&output)
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let target_lib = sysroot.join("lib/rustlib").join(GUEST_TARGET);
    if target_lib.is_dir() {
        return Ok(());
    }

    // A rustup toolchain lives in `<rustup home>/toolchains/<name>`: install into exactly that
    // one, whatever toolchain would be the default in the guests' directory.
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", GUEST_TARGET]);
    let in_rustup_home = sysroot
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|dir| dir == "toolchains");
    if let (true, Some(toolchain)) = (in_rustup_home, sysroot.file_name()) {
        rustup.arg("--toolchain").arg(toolchain);
    }
    let missing = format!(
        "the {GUEST_TARGET} target is not installed for the compiler in {}",
        sysroot.display()
    );
    let output = rustup.output().map_err(|e| {
        format!("{missing}, and rustup cannot be run ({e}); install the target's standard library for this compiler")
    })?;
    if !output.status.success() || !target_lib.is_dir() {
        return Err(format!(
            "{missing}, and `rustup target add {GUEST_TARGET}` failed: {}\nRun it by hand, then build again.",
            stderr_of(&output)
        ));
    }
    println!(
        "cargo:warning=installed the {GUEST_TARGET} target with rustup to build the guest images"
    );
    Ok(())
}

/// The last lines of a command's error output.
fn stderr_of(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
