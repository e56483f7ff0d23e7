//! Links the guest with its linker script (an absolute path, so the build works from any
//! directory cargo is started in).

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned());
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rustc-link-arg-bins=-T{manifest_dir}/linker.ld");
}
