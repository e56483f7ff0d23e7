//! Links the guest with the linker script shared by every guest (see `guest-rt`).

fn main() {
    match std::env::var("DEP_GUEST_RT_LINKER_SCRIPT") {
        Ok(script) => println!("cargo:rustc-link-arg-bins=-T{script}"),
        Err(_) => panic!("guest-rt did not pass its linker script; depend on guest-rt"),
    }
}
