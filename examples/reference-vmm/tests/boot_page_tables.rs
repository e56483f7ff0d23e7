//! vmkit-boot's boot page tables under KVM: a VM with vmkit-memory's layout (3 GiB of RAM, so
//! that low RAM reaches the MMIO hole) gets the tables `build_boot_page_tables` makes with the
//! page sizes the backend supports, and a few bytes of 64-bit code entered through vmkit-vcpu's
//! long-mode entry state. The guest reads a quadword near the top of low RAM and the local
//! APIC's version register through the tables, stores a quadword near the top of low RAM, and
//! reports on ports; then every address of a sweep (both sides of each 2 MiB boundary of
//! `[0, 4 GiB)`, each 1 GiB boundary, addresses at and above 4 GiB, pseudo-random ones,
//! non-canonical ones) is translated by vmkit-paging's walker and by `KVM_TRANSLATE`: the
//! guest-physical address and the validity must agree, and the walker must find the identity
//! with the page size the tables report.
//!
//! It needs `/dev/kvm`; without it the test fails, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips it explicitly.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::cell::RefCell;
use std::sync::atomic::AtomicBool;

use common::{Agreed, Random, agree_with_kvm, kvm_available, max_phys_bits};
use vmkit_boot::build_boot_page_tables;
use vmkit_boot::page_tables::{IDENTITY_MAP_END, PAGE_TABLES_END, PAGE_TABLES_START};
use vmkit_exits::{ExitAction, StopReason, VcpuState, VmExit};
use vmkit_memory::GuestLayout;
use vmkit_memory::layout::LAPIC_START;
use vmkit_memory::vm_memory::{Bytes, GuestAddress};
use vmkit_paging::{PageSize, X86Paging};
use vmkit_vcpu::{Hypervisor, KvmHypervisor, LongModeEntry, LoopExit, Vcpu, Vm};

/// Guest RAM: all of low RAM, up to the 32-bit MMIO hole at 3 GiB (lazily populated).
const MEMORY: u64 = 3 << 30;
/// Where the guest code is placed and entered.
const CODE: u64 = 0x10_0000;
/// Where the boot GDT goes (as in Firecracker): below the PVH structures and the tables.
const GDT: u64 = 0x500;
/// The quadword the guest reads, in the last 2 MiB page below the hole.
const HIGH_READ: u64 = 0xbfff_f008;
/// The quadword the guest stores, in another page near the top of low RAM.
const HIGH_WRITE: u64 = 0xbfe0_0ff0;
/// The local APIC's version register.
const LAPIC_VERSION: u64 = LAPIC_START + 0x30;
/// The port the guest sends what it read to (two 32-bit halves).
const DATA_PORT: u16 = 0xf1;
/// The port the guest sends the local APIC version to.
const APIC_PORT: u16 = 0xf2;
/// The port the guest writes its exit status to.
const DONE_PORT: u16 = 0xf4;
/// What the host puts at [`HIGH_READ`].
const PATTERN: u64 = 0x0123_4567_89ab_cdef;

const MIB_2: u64 = 2 << 20;
const GIB: u64 = 1 << 30;

/// The guest: 64-bit code, nine instructions.
fn guest_code() -> Vec<u8> {
    let mut code = vec![0x48, 0xa1]; // movabs rax, [HIGH_READ]
    code.extend_from_slice(&HIGH_READ.to_le_bytes());
    code.extend_from_slice(&[0xe7, DATA_PORT as u8]); // out DATA_PORT, eax
    code.extend_from_slice(&[0x48, 0xa3]); // movabs [HIGH_WRITE], rax
    code.extend_from_slice(&HIGH_WRITE.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xc1, 0xe8, 0x20]); // shr rax, 32
    code.extend_from_slice(&[0xe7, DATA_PORT as u8]); // out DATA_PORT, eax
    code.push(0xa1); // movabs eax, [LAPIC_VERSION]
    code.extend_from_slice(&LAPIC_VERSION.to_le_bytes());
    code.extend_from_slice(&[0xe7, APIC_PORT as u8]); // out APIC_PORT, eax
    code.extend_from_slice(&[0x31, 0xc0, 0xe6, DONE_PORT as u8]); // xor eax, eax; out DONE, al
    code
}

/// The addresses compared, each once.
fn addresses() -> Vec<u64> {
    let mut out = Vec::new();
    // Both sides of every 2 MiB boundary of the map and of the first 2 MiB past it.
    for boundary in (0..=IDENTITY_MAP_END + MIB_2).step_by(MIB_2 as usize) {
        for delta in [1, 8, 0x1000] {
            out.extend(boundary.checked_sub(delta));
            out.push(boundary + delta);
        }
        out.push(boundary);
    }
    // Every page of the first 64 KiB (the tables, the GDT and the PVH structures lie there).
    for page in (0..0x1_0000).step_by(0x1000) {
        out.extend([page, page + 0x7ff, page + 0xfff]);
    }
    out.extend([
        CODE,
        HIGH_READ,
        HIGH_WRITE,
        LAPIC_VERSION,
        IDENTITY_MAP_END - 1,
        5 * GIB,
        512 * GIB,
        0x7fff_ffff_f000,
        0xffff_8000_0000_0000,
        u64::MAX,
        // Non-canonical: just above the lower half, bit 63 alone, an alias of low memory.
        0x8000_0000_0000,
        0x8000_0000_0000_0000,
        0x0001_0000_0000_0000 | CODE,
    ]);
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    for _ in 0..2_000 {
        let r = random.next();
        out.push(r % IDENTITY_MAP_END);
        out.push(r & 0x7fff_ffff_ffff);
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Debug, Default)]
struct Tally {
    compared: usize,
    valid: usize,
    invalid: usize,
    non_canonical: usize,
}

/// What the guest did.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Out(u16, Vec<u8>),
    Other(String),
}

#[test]
fn guest_runs_on_boot_page_tables_and_the_walker_agrees_with_kvm() {
    if !kvm_available() {
        return;
    }
    let kvm = KvmHypervisor::new().unwrap();
    let sizes = kvm.supported_page_sizes();
    let gbpages = sizes.contains(PageSize::Size1G);
    let layout = GuestLayout::new(MEMORY).unwrap();
    let memory = layout.create_guest_memory().unwrap();
    let vm = kvm.create_vm(&layout, &memory).unwrap();

    let tables = build_boot_page_tables(&memory, &layout, sizes).unwrap();
    let (page_size, frames) = if gbpages {
        (PageSize::Size1G, 2)
    } else {
        (PageSize::Size2M, 6)
    };
    assert_eq!(tables.page_size, page_size, "{sizes:?}");
    assert_eq!(tables.frame_count(), frames);
    assert_eq!(tables.cr3, PAGE_TABLES_START);
    assert!(tables.frames.end <= PAGE_TABLES_END);

    memory.write_obj(PATTERN, GuestAddress(HIGH_READ)).unwrap();
    memory
        .write_slice(&guest_code(), GuestAddress(CODE))
        .unwrap();
    let mut vcpu = vm.create_vcpu(0, 1).unwrap();
    vcpu.setup_long_mode(&LongModeEntry {
        entry: GuestAddress(CODE),
        page_table: GuestAddress(tables.cr3),
        gdt: GuestAddress(GDT),
        boot_params: GuestAddress(0),
        stack_pointer: GuestAddress(0),
    })
    .unwrap();

    let seen = RefCell::new(Vec::new());
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoOut {
            port: DONE_PORT,
            data,
        } => ExitAction::Stop(StopReason::GuestExit(u32::from(data[0]))),
        VmExit::IoOut { port, data } => {
            seen.borrow_mut().push(Seen::Out(port, data.to_vec()));
            ExitAction::Resume
        }
        other => {
            seen.borrow_mut().push(Seen::Other(format!("{other:?}")));
            ExitAction::Stop(StopReason::Unhandled(u32::MAX))
        }
    };
    let stop = AtomicBool::new(false);
    let end = vcpu.run_loop(&handler, &stop).unwrap();
    let seen = seen.into_inner();
    assert_eq!(
        end,
        LoopExit::Stopped(StopReason::GuestExit(0)),
        "{seen:x?}"
    );

    // The guest read near the top of low RAM and the local APIC through the tables, and
    // stored through them.
    let low = (PATTERN as u32).to_le_bytes().to_vec();
    let high = ((PATTERN >> 32) as u32).to_le_bytes().to_vec();
    assert_eq!(seen.len(), 3, "{seen:x?}");
    assert_eq!(seen[0], Seen::Out(DATA_PORT, low));
    assert_eq!(seen[1], Seen::Out(DATA_PORT, high));
    let Seen::Out(APIC_PORT, version) = &seen[2] else {
        panic!("{seen:x?}");
    };
    assert_eq!(version[0], 0x14, "local APIC version {version:x?}");
    let stored: u64 = memory.read_obj(GuestAddress(HIGH_WRITE)).unwrap();
    assert_eq!(stored, PATTERN);

    // The vCPU is in long mode on the tables; take the paging state from it.
    let sregs = vcpu.special_registers().unwrap();
    assert_eq!(sregs.cr3, tables.cr3);
    assert_ne!(sregs.cr0 & (1 << 31), 0, "paging on");
    assert_ne!(sregs.efer & (1 << 10), 0, "long mode active");
    let rflags = vcpu.registers().unwrap().rflags;
    let paging = X86Paging::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, rflags)
        .with_max_phys_bits(max_phys_bits(&kvm))
        .with_gbpages(gbpages);

    let mut tally = Tally::default();
    for gva in addresses() {
        tally.compared += 1;
        match agree_with_kvm(&vcpu, &memory, &paging, gva) {
            Agreed::Valid(t) => {
                assert!(gva < IDENTITY_MAP_END, "{gva:#x} translates: {t:x?}");
                assert_eq!((t.address, t.page_size), (gva, page_size), "{gva:#x}");
                assert!(t.rights.write && t.rights.execute && !t.rights.user);
                tally.valid += 1;
            }
            Agreed::Invalid(fault) => {
                assert!(gva >= IDENTITY_MAP_END, "{gva:#x} faults: {fault}");
                assert_eq!((fault.address, fault.error_code), (gva, 0));
                tally.invalid += 1;
            }
            Agreed::NonCanonical { .. } => tally.non_canonical += 1,
        }
    }
    eprintln!(
        "{page_size} pages, {} frames: {tally:?}",
        tables.frame_count()
    );
    assert!(tally.valid > 15_000, "{tally:?}");
    assert!(tally.invalid > 1_500, "{tally:?}");
    assert!(tally.non_canonical >= 3, "{tally:?}");
}
