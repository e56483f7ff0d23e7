//! Hands the guests' linker script to the build scripts of the guests that depend on this crate
//! (as `DEP_GUEST_RT_LINKER_SCRIPT`, an absolute path); a library cannot pass link arguments to
//! the binaries that use it.

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:linker_script={manifest_dir}/linker.ld");
}
