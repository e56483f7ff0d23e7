//! The CPUID a KVM vCPU reports: the host's supported CPUID with the usual adjustments.
//!
//! Starting from `KVM_GET_SUPPORTED_CPUID`, each vCPU gets:
//! - the hypervisor bit (leaf 1 ECX bit 31) and, when KVM emulates it, the TSC-deadline timer
//!   (leaf 1 ECX bit 24, which KVM reports as a capability rather than in the supported CPUID);
//! - the KVM signature leaf `0x4000_0000` ("KVMKVMKVM") and its feature leaf;
//! - a topology of one socket with `vcpu_count` single-threaded cores: its APIC ID in leaf 1
//!   EBX\[31:24\] and as x2APIC ID in every sub-leaf of leaves `0xB` and `0x1F`, the logical
//!   processor count in leaf 1 EBX\[23:16\] (with HTT), cores per package in leaf 4, and AMD's core
//!   count in leaf `0x8000_0008` and IDs in leaf `0x8000_001E`.

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

use crate::x86::PageSizes;

/// Leaf 1 ECX: the hypervisor bit.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: TSC-deadline timer.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: HTT, EBX\[23:16\] is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf `0x8000_0001` EDX: 1 GiB pages.
const EXT1_EDX_PDPE1GB: u32 = 1 << 26;

/// The KVM signature leaf.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// The KVM feature leaf.
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Topology level types of leaves `0xB` and `0x1F`.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

fn entry(function: u32, index: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
        padding: [0; 3],
    }
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

/// Bits an APIC ID needs to number `count` cores.
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// The CPUID of vCPU `vcpu_id` of `vcpu_count`, derived from the host's `supported` CPUID.
///
/// `vcpu_count` is clamped to 1..=255 (an xAPIC ID has 8 bits); the caller validates it.
pub fn vcpu_cpuid(
    supported: &[kvm_cpuid_entry2],
    vcpu_id: u32,
    vcpu_count: u32,
    tsc_deadline: bool,
) -> Vec<kvm_cpuid_entry2> {
    let count = vcpu_count.clamp(1, 255);
    let apic_id = vcpu_id & 0xff;
    let max_basic = find(supported, 0, 0).map_or(0, |e| e.eax);
    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !(e.function == 0xb || e.function == 0x1f))
        .copied()
        .collect();

    for e in &mut entries {
        match e.function {
            1 => {
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= LEAF1_ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
                }
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            4 if e.eax & 0x1f != 0 => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1
                // (one for the per-core L1 and L2, all of them for L3 and beyond).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count } else { 1 };
                e.eax = (e.eax & 0x3fff) | (((count - 1).min(63)) << 26) | ((sharing - 1) << 14);
            }
            KVM_SIGNATURE_LEAF => {
                e.eax = e.eax.max(KVM_FEATURES_LEAF);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            0x8000_0008 => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
            }
            0x8000_001e => {
                e.eax = apic_id;
                e.ebx = (e.ebx & !0xffff) | apic_id;
                e.ecx = 0;
            }
            _ => {}
        }
    }

    for leaf in [0xb, 0x1f] {
        if max_basic >= leaf {
            let levels = [
                [0, 1, LEVEL_SMT << 8, apic_id],
                [id_bits(count), count, (LEVEL_CORE << 8) | 1, apic_id],
                [0, 0, 2, apic_id],
            ];
            for (index, regs) in levels.into_iter().enumerate() {
                let mut e = entry(leaf, index as u32, regs);
                e.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
                entries.push(e);
            }
        }
    }

    if find(&entries, KVM_SIGNATURE_LEAF, 0).is_none() {
        let [ebx, ecx, edx] = KVM_SIGNATURE;
        entries.push(entry(
            KVM_SIGNATURE_LEAF,
            0,
            [KVM_FEATURES_LEAF, ebx, ecx, edx],
        ));
    }
    if find(&entries, KVM_FEATURES_LEAF, 0).is_none() {
        entries.push(entry(KVM_FEATURES_LEAF, 0, [0; 4]));
    }
    entries
}

/// The page sizes a guest with this CPUID may map with: 4 KiB and 2 MiB always (long-mode and
/// PAE paging have 2 MiB pages regardless of CPUID), 1 GiB when leaf `0x8000_0001` has
/// `pdpe1gb`.
pub fn page_sizes(entries: &[kvm_cpuid_entry2]) -> PageSizes {
    if find(entries, 0x8000_0001, 0).is_some_and(|e| e.edx & EXT1_EDX_PDPE1GB != 0) {
        PageSizes::ALL
    } else {
        PageSizes::UP_TO_2M
    }
}

/// The physical-address width when leaf `0x8000_0008` is missing: the architectural default of
/// a CPU with PAE (Intel SDM, "MAXPHYADDR").
pub const DEFAULT_PHYS_BITS: u8 = 36;

/// The guest's physical-address width: `MAXPHYADDR` from leaf `0x8000_0008` EAX\[7:0\], lowered
/// to EAX\[23:16\] when that is set (KVM reports there the widest guest-physical address its
/// two-dimensional paging maps, which may be narrower than the host's); [`DEFAULT_PHYS_BITS`]
/// without the leaf.
pub fn phys_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    let Some(leaf) = find(entries, 0x8000_0008, 0) else {
        return DEFAULT_PHYS_BITS;
    };
    let [max_phys, _, guest_phys, _] = leaf.eax.to_le_bytes();
    match (max_phys, guest_phys) {
        (0, _) => DEFAULT_PHYS_BITS,
        (max, 0) => max,
        (max, guest) => max.min(guest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x906ea, 0x0010_0800, 0x7ffa_3203, 0x178b_fbff]),
            entry(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(4, 1, [0x1c00_4363, 0x03c0_003f, 0x3ff, 0]),
            entry(4, 2, [0x1c03_c163, 0x03c0_003f, 0x2fff, 0x6]),
            entry(4, 3, [0, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7007, 0]),
            entry(0x8000_001e, 0, [9, 0x0101, 0x0300, 0]),
        ]
    }

    #[test]
    fn phys_bits_come_from_leaf_0x8000_0008() {
        assert_eq!(phys_bits(&host()), 0x30);
        let with = |eax| vec![entry(0x8000_0008, 0, [eax, 0, 0, 0])];
        assert_eq!(phys_bits(&with(0x0030_3034)), 0x30, "guest width narrower");
        assert_eq!(phys_bits(&with(0x0034_3027)), 0x27, "host width narrower");
        assert_eq!(phys_bits(&with(0)), DEFAULT_PHYS_BITS);
        assert_eq!(phys_bits(&[]), DEFAULT_PHYS_BITS);
    }

    fn get(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *find(entries, function, index).unwrap()
    }

    #[test]
    fn leaf_one_gets_identity_hypervisor_bit_and_tsc_deadline() {
        let out = vcpu_cpuid(&host(), 3, 4, true);
        let l1 = get(&out, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC ID");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);

        let single = vcpu_cpuid(&host(), 0, 1, false);
        let l1 = get(&single, 1, 0);
        assert_eq!(l1.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(l1.ebx >> 16, 1);
    }

    #[test]
    fn topology_leaves_carry_the_x2apic_id() {
        let out = vcpu_cpuid(&host(), 5, 6, false);
        for leaf in [0xb, 0x1f] {
            let smt = get(&out, leaf, 0);
            let core = get(&out, leaf, 1);
            let end = get(&out, leaf, 2);
            assert_eq!([smt.eax, smt.ebx, smt.ecx, smt.edx], [0, 1, 0x100, 5]);
            assert_eq!([core.eax, core.ebx, core.ecx, core.edx], [3, 6, 0x201, 5]);
            assert_eq!([end.ebx, end.ecx & 0xff00, end.edx], [0, 0, 5]);
            assert_eq!(smt.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            assert_eq!(out.iter().filter(|e| e.function == leaf).count(), 3);
        }
        // Leaves above the host's maximum basic leaf are not invented.
        let mut low = host();
        low[0].eax = 0xa;
        let out = vcpu_cpuid(&low, 0, 2, false);
        assert!(out.iter().all(|e| e.function != 0xb && e.function != 0x1f));
    }

    #[test]
    fn cache_leaves_report_cores_and_sharing() {
        let out = vcpu_cpuid(&host(), 0, 4, false);
        let l1d = get(&out, 4, 0);
        let l3 = get(&out, 4, 2);
        assert_eq!(l1d.eax >> 26, 3);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax & 0x3fff, 0x0121);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(
            get(&out, 4, 3).eax,
            0,
            "the terminating sub-leaf stays empty"
        );
    }

    #[test]
    fn amd_leaves_and_kvm_signature() {
        let out = vcpu_cpuid(&host(), 2, 3, false);
        let ext8 = get(&out, 0x8000_0008, 0);
        assert_eq!(ext8.ecx & 0xff, 2);
        assert_eq!((ext8.ecx >> 12) & 0xf, 2);
        assert_eq!(ext8.ecx & 0xf0000, 0x7000 & 0xf0000);
        let ext1e = get(&out, 0x8000_001e, 0);
        assert_eq!((ext1e.eax, ext1e.ebx & 0xffff, ext1e.ecx), (2, 2, 0));

        let sig = get(&out, KVM_SIGNATURE_LEAF, 0);
        assert_eq!(
            [sig.eax, sig.ebx, sig.ecx, sig.edx],
            [KVM_FEATURES_LEAF, 0x4b4d_564b, 0x564b_4d56, 0x4d]
        );
        let bytes: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&bytes, b"KVMKVMKVM\0\0\0");
        assert!(find(&out, KVM_FEATURES_LEAF, 0).is_some());

        // A host signature leaf is corrected in place, not duplicated.
        let mut with_sig = host();
        with_sig.push(entry(KVM_SIGNATURE_LEAF, 0, [0x4000_0001, 1, 2, 3]));
        with_sig.push(entry(KVM_FEATURES_LEAF, 0, [0x1234, 0, 0, 0]));
        let out = vcpu_cpuid(&with_sig, 0, 1, false);
        assert_eq!(
            out.iter()
                .filter(|e| e.function == KVM_SIGNATURE_LEAF)
                .count(),
            1
        );
        assert_eq!(get(&out, KVM_SIGNATURE_LEAF, 0).ebx, 0x4b4d_564b);
        assert_eq!(
            get(&out, KVM_FEATURES_LEAF, 0).eax,
            0x1234,
            "KVM features kept"
        );
    }

    #[test]
    fn page_sizes_follow_pdpe1gb() {
        let mut cpuid = host();
        assert_eq!(page_sizes(&cpuid), PageSizes::ALL);
        cpuid[8].edx &= !EXT1_EDX_PDPE1GB;
        assert_eq!(page_sizes(&cpuid), PageSizes::UP_TO_2M);
        assert_eq!(page_sizes(&[]), PageSizes::UP_TO_2M);
    }

    #[test]
    fn id_bits_round_up() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 255].map(id_bits),
            [0, 1, 2, 2, 3, 3, 4, 8]
        );
        assert_eq!(id_bits(0), 0);
    }
}
