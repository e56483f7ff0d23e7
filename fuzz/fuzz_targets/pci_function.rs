#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vmkit_fuzz_common::pci_function::run(data);
});
