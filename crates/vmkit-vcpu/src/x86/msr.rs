//! The model-specific registers a vCPU is reset to before it enters a boot protocol.
//!
//! The list is Firecracker's boot MSR set: the `SYSENTER`/`SYSCALL` entry points cleared, the TSC
//! at zero, fast string operations enabled and the default memory type write-back with MTRRs on.

/// `IA32_TSC`.
pub const IA32_TSC: u32 = 0x10;
/// `IA32_SYSENTER_CS`.
pub const IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MTRR_DEF_TYPE`.
pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `IA32_STAR`: `SYSCALL`/`SYSRET` segment selectors.
pub const STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`: 64-bit `SYSCALL` entry point.
pub const LSTAR: u32 = 0xc000_0082;
/// `IA32_CSTAR`: compatibility-mode `SYSCALL` entry point.
pub const CSTAR: u32 = 0xc000_0083;
/// `IA32_FMASK`: RFLAGS mask applied by `SYSCALL`.
pub const SYSCALL_MASK: u32 = 0xc000_0084;
/// `IA32_KERNEL_GS_BASE`: the GS base `SWAPGS` exchanges.
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE` bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE` bit 11: MTRRs enabled.
pub const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back.
pub const MTRR_TYPE_WRITE_BACK: u64 = 6;

/// One MSR and the value it is set to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrValue {
    /// The MSR's index.
    pub index: u32,
    /// Its value.
    pub value: u64,
}

/// The boot MSRs and their values, in the order they are written.
pub const BOOT_MSRS: [MsrValue; 11] = [
    MsrValue {
        index: IA32_SYSENTER_CS,
        value: 0,
    },
    MsrValue {
        index: IA32_SYSENTER_ESP,
        value: 0,
    },
    MsrValue {
        index: IA32_SYSENTER_EIP,
        value: 0,
    },
    MsrValue {
        index: STAR,
        value: 0,
    },
    MsrValue {
        index: CSTAR,
        value: 0,
    },
    MsrValue {
        index: KERNEL_GS_BASE,
        value: 0,
    },
    MsrValue {
        index: SYSCALL_MASK,
        value: 0,
    },
    MsrValue {
        index: LSTAR,
        value: 0,
    },
    MsrValue {
        index: IA32_TSC,
        value: 0,
    },
    MsrValue {
        index: IA32_MISC_ENABLE,
        value: MISC_ENABLE_FAST_STRING,
    },
    MsrValue {
        index: IA32_MTRR_DEF_TYPE,
        value: MTRR_ENABLE | MTRR_TYPE_WRITE_BACK,
    },
];

/// The architectural name of MSR `index`, for messages; `"MSR"` for one this module does not know.
pub fn msr_name(index: u32) -> &'static str {
    match index {
        IA32_TSC => "IA32_TSC",
        IA32_SYSENTER_CS => "IA32_SYSENTER_CS",
        IA32_SYSENTER_ESP => "IA32_SYSENTER_ESP",
        IA32_SYSENTER_EIP => "IA32_SYSENTER_EIP",
        IA32_MISC_ENABLE => "IA32_MISC_ENABLE",
        IA32_MTRR_DEF_TYPE => "IA32_MTRR_DEF_TYPE",
        STAR => "IA32_STAR",
        LSTAR => "IA32_LSTAR",
        CSTAR => "IA32_CSTAR",
        SYSCALL_MASK => "IA32_FMASK",
        KERNEL_GS_BASE => "IA32_KERNEL_GS_BASE",
        _ => "MSR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_have_names_and_the_documented_values() {
        for msr in BOOT_MSRS {
            assert_ne!(msr_name(msr.index), "MSR", "{:#x} has a name", msr.index);
        }
        assert_eq!(msr_name(0x1234), "MSR");
        let value = |index| BOOT_MSRS.iter().find(|m| m.index == index).unwrap().value;
        assert_eq!(value(IA32_MTRR_DEF_TYPE), 0x806);
        assert_eq!(value(IA32_MISC_ENABLE), 1);
        assert_eq!(value(LSTAR), 0);
    }
}
