//! vmkit-paging's walker against KVM's: page tables with mixed page sizes, non-identity
//! mappings, holes, read-only, execute-disable and user pages, and entries with reserved bits,
//! built in guest memory by `vmkit_paging::TableBuilder` from the host; a 64-bit guest runs on
//! them (reading and writing through non-identity mappings), then every address of a sweep is
//! translated both by `X86Paging` and by `KVM_TRANSLATE`, and the two must agree.
//!
//! These tests need `/dev/kvm`; without it they fail, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips them explicitly.

#![allow(clippy::unwrap_used)]

mod common;

use common::{CODE, DONE_PORT, Machine, Recorder, Seen};
use vmkit_exits::state::SpecialRegisters;
use vmkit_exits::{VcpuState, VmExit};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_paging::{
    Access, BumpAllocator, PageSize, PageSizes, Privilege, PteFlags, TableBuilder, WalkError,
    X86Format, X86Paging,
};
use vmkit_vcpu::{Hypervisor, KvmVcpu, LongModeEntry, LoopExit, Vcpu, Vm};

/// Where the builder takes table frames from.
const TABLES: (u64, u64) = (0x80_0000, 0x90_0000);
/// Where the boot GDT goes.
const GDT: u64 = 0x5000;
/// Entry bits 51:12.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// A higher-half, writable mapping the guest reads from and writes to.
const HIGH: u64 = 0xffff_8000_0000_0000;
/// Its guest-physical start: two 2 MiB pages.
const HIGH_GPA: u64 = 0x60_0000;
/// A region whose ends are 4 KiB pages and whose middle is a 2 MiB page.
const MIXED: u64 = 0x1_001f_f000;
const MIXED_GPA: u64 = 0xbf_f000;
const MIXED_LEN: u64 = 0x20_2000;
/// Read-only 2 MiB page, then user + execute-disable 4 KiB pages after a hole.
const RO_2M: u64 = 0x4000_0000;
const USER_NX: u64 = 0x4020_1000;
/// A 2 MiB page mapping guest-physical addresses above the guest's memory (valid to translate).
const BEYOND: u64 = 0x2_0000_0000;
/// The last page of the lower half.
const TOP_LOW: u64 = 0x7fff_ffff_f000;
/// 4 KiB pages whose second PTE gets an address bit at MAXPHYADDR (reserved).
const RSVD_PTE: u64 = 0x5000_0000;
/// A page under a PML4E with PS set (reserved).
const RSVD_PML4E: u64 = 0x7000_0000_0000;
/// A page under a PDPTE rewritten to map a 1 GiB page (reserved without 1 GiB support).
const GB_PDPTE: u64 = 0x6000_0000_0000;

/// The guest: reads the quadword at `HIGH + 0x10` and sends its low byte to port 0xf1, stores
/// 0x55 at `MIXED + 0x1000` (inside the 2 MiB page), then reports done.
fn guest_code() -> Vec<u8> {
    let mut code = vec![0x48, 0xa1]; // movabs rax, [moffs64]
    code.extend_from_slice(&(HIGH + 0x10).to_le_bytes());
    code.extend_from_slice(&[0xe6, 0xf1]); // out 0xf1, al
    code.extend_from_slice(&[0xb0, 0x55, 0xa2]); // mov al, 0x55; movabs [moffs64], al
    code.extend_from_slice(&(MIXED + 0x1000).to_le_bytes());
    code.extend_from_slice(&[0xb0, 0x00, 0xe6, DONE_PORT as u8]); // done, status 0
    code
}

/// The address of the entry that maps `gva` at `level` (4 = PML4E), following present tables.
fn entry_address(memory: &GuestMemoryMmap, root: u64, gva: u64, level: u32) -> u64 {
    let mut table = root;
    for l in (level..=4).rev() {
        let at = table + ((gva >> (12 + 9 * (l - 1))) & 0x1ff) * 8;
        if l == level {
            return at;
        }
        let entry: u64 = memory.read_obj(GuestAddress(at)).unwrap();
        assert_ne!(entry & 1, 0, "no table for {gva:#x} at level {l}");
        table = entry & ADDRESS;
    }
    unreachable!()
}

fn poke(memory: &GuestMemoryMmap, at: u64, f: impl FnOnce(u64) -> u64) {
    let entry: u64 = memory.read_obj(GuestAddress(at)).unwrap();
    memory.write_obj(f(entry), GuestAddress(at)).unwrap();
}

/// MAXPHYADDR as the vCPUs see it (KVM passes leaf 0x8000_0008 through).
fn max_phys_bits(m: &Machine) -> u8 {
    m.kvm
        .supported_cpuid()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Builds the tables in guest memory; returns the root.
fn build_tables(m: &Machine, sizes: PageSizes, format: X86Format) -> u64 {
    let frames = BumpAllocator::new(TABLES.0, TABLES.1);
    let mut b = TableBuilder::new(format, &m.memory, frames, sizes).unwrap();
    // Low memory (code, GDT, tables) identity-mapped, writable, executable.
    b.identity_map(0, 0x20_0000, PteFlags::WRITABLE).unwrap();
    b.identity_map(TABLES.0, TABLES.1 - TABLES.0, PteFlags::WRITABLE)
        .unwrap();
    let data = PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
    b.map(HIGH, HIGH_GPA, 0x40_0000, data).unwrap();
    b.map(MIXED, MIXED_GPA, MIXED_LEN, data).unwrap();
    b.map(RO_2M, 0x20_0000, 0x20_0000, PteFlags::EMPTY).unwrap();
    b.map(
        USER_NX,
        0x40_3000,
        0x3000,
        PteFlags::USER | PteFlags::NO_EXECUTE,
    )
    .unwrap();
    b.map(BEYOND, 0x1_0000_0000, 0x20_0000, PteFlags::WRITABLE)
        .unwrap();
    b.map(TOP_LOW, 0x7000, 0x1000, PteFlags::USER | PteFlags::WRITABLE)
        .unwrap();
    b.map(RSVD_PTE, 0x30_0000, 0x4000, PteFlags::WRITABLE)
        .unwrap();
    b.map(RSVD_PML4E, 0x31_0000, 0x1000, PteFlags::WRITABLE)
        .unwrap();
    b.map(GB_PDPTE, 0x32_0000, 0x1000, PteFlags::WRITABLE)
        .unwrap();
    b.root()
}

/// Sets the reserved bits the builder would never set.
fn corrupt_tables(m: &Machine, root: u64, max_phys_bits: u8) {
    if max_phys_bits < 52 {
        let pte = entry_address(&m.memory, root, RSVD_PTE + 0x1000, 1);
        poke(&m.memory, pte, |e| e | 1 << max_phys_bits);
    }
    let pml4e = entry_address(&m.memory, root, RSVD_PML4E, 4);
    poke(&m.memory, pml4e, |e| e | 1 << 7);
    let pdpte = entry_address(&m.memory, root, GB_PDPTE, 3);
    poke(&m.memory, pdpte, |_| 0x4000_0000 | 0x83);
}

/// The addresses compared: every page of a window around each mapping (at three offsets),
/// page-size and mapping boundaries, and non-canonical addresses.
fn addresses() -> Vec<u64> {
    let windows: [(u64, u64); 11] = [
        (0, 0x20_1000),
        (TABLES.0 - 0x1000, TABLES.1 + 0x1000),
        (HIGH - 0x1000, HIGH + 0x40_1000),
        (MIXED - 0x2000, MIXED + MIXED_LEN + 0x2000),
        (RO_2M - 0x1000, USER_NX + 0x4000),
        (BEYOND - 0x1000, BEYOND + 0x20_1000),
        (TOP_LOW - 0x3000, TOP_LOW + 0x1000),
        (RSVD_PTE - 0x1000, RSVD_PTE + 0x5000),
        (RSVD_PML4E, RSVD_PML4E + 0x2000),
        (GB_PDPTE, GB_PDPTE + 0x2000),
        (0xffff_ffff_ffe0_0000, 0xffff_ffff_ffff_f000),
    ];
    let mut out = Vec::new();
    for (start, end) in windows {
        for page in (start..end).step_by(0x1000) {
            out.extend([page, page + 0x7ff, page + 0xfff]);
        }
    }
    out.extend([
        0x1f_ffff,
        0x20_0000,
        HIGH + 0x1f_ffff,
        HIGH + 0x20_0000,
        u64::MAX,
        // Non-canonical: just above the lower half, just below the upper half, bit 63 alone.
        0x8000_0000_0000,
        0xffff_7fff_ffff_f000,
        0x8000_0000_0000_0000,
        0x0001_0000_0000_0000 | MIXED,
    ]);
    out
}

#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    faults: usize,
    reserved: usize,
    non_canonical: usize,
    sizes: [usize; 2],
}

#[test]
fn walker_agrees_with_kvm_translate_on_live_guest_tables() {
    let Some(m) = Machine::new() else { return };
    let sizes = m.kvm.supported_page_sizes();
    assert!(sizes.contains(PageSize::Size4K) && sizes.contains(PageSize::Size2M));
    let max_phys_bits = max_phys_bits(&m);
    let format = X86Format::new()
        .with_max_phys_bits(max_phys_bits)
        .with_gbpages(sizes.contains(PageSize::Size1G));
    let root = build_tables(&m, sizes, format);
    corrupt_tables(&m, root, max_phys_bits);
    m.write(HIGH_GPA + 0x10, &0x1234_5678_9abc_def0_u64.to_le_bytes());
    m.write(CODE, &guest_code());

    let mut vcpu: KvmVcpu = m.vm.create_vcpu(0, 1).unwrap();
    vcpu.setup_long_mode(&LongModeEntry {
        entry: GuestAddress(CODE),
        page_table: GuestAddress(root),
        gdt: GuestAddress(GDT),
        boot_params: GuestAddress(0),
        stack_pointer: GuestAddress(0),
    })
    .unwrap();
    // Execute-disable needs EFER.NXE (else XD is a reserved bit); CR0.WP as kernels run.
    let sregs = vcpu.special_registers().unwrap();
    vcpu.set_special_registers(&SpecialRegisters {
        efer: sregs.efer | 1 << 11,
        cr0: sregs.cr0 | 1 << 16,
        ..sregs
    })
    .unwrap();

    let recorder = Recorder::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let result = vcpu
        .run_loop(&|exit: VmExit<'_>| recorder.handle(exit), &stop)
        .unwrap();
    assert_eq!(
        result,
        LoopExit::Stopped(vmkit_exits::StopReason::GuestExit(0))
    );
    assert_eq!(
        *recorder.seen.borrow(),
        [Seen::Out(0xf1, vec![0xf0]), Seen::Out(DONE_PORT, vec![0])],
        "the guest read through the higher-half mapping"
    );
    let stored = m.read(MIXED_GPA + 0x1000, 1);
    assert_eq!(stored, [0x55], "the guest wrote through the mixed mapping");

    // The vCPU is in long mode on those tables; take the paging state from it.
    let sregs = vcpu.special_registers().unwrap();
    assert_eq!(sregs.cr3, root);
    let rflags = vcpu.registers().unwrap().rflags;
    let paging = X86Paging::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, rflags)
        .with_max_phys_bits(max_phys_bits)
        .with_gbpages(sizes.contains(PageSize::Size1G));
    assert!(paging.format.nxe && paging.wp && !paging.format.five_level);

    let access = Access::read(Privilege::Supervisor);
    let mut tally = Tally::default();
    for gva in addresses() {
        let kvm = vcpu.translate(gva).unwrap();
        let ours = paging.probe(&m.memory, gva, access);
        match ours {
            Ok(t) => {
                assert_eq!(
                    kvm,
                    Some(t.address),
                    "{gva:#x}: KVM {kvm:x?}, walker {t:x?}"
                );
                tally.valid += 1;
                tally.sizes[usize::from(t.page_size == PageSize::Size2M)] += 1;
            }
            Err(WalkError::PageFault(fault)) => {
                assert_eq!(kvm, None, "{gva:#x}: KVM {kvm:x?}, walker {fault}");
                assert_eq!(fault.address, gva);
                tally.faults += 1;
                if fault.error_code & vmkit_paging::PageFault::RESERVED != 0 {
                    tally.reserved += 1;
                }
            }
            Err(WalkError::NonCanonical(_)) => {
                // The processor raises #GP before any walk. KVM_TRANSLATE does not check
                // canonicality: it indexes the tables with bits 47:12 alone, as if bit 47 were
                // sign-extended.
                let canonical = ((gva << 16) as i64 >> 16) as u64;
                let walked = paging.probe(&m.memory, canonical, access);
                assert_eq!(kvm, walked.ok().map(|t| t.address), "{gva:#x}");
                tally.non_canonical += 1;
            }
            Err(other) => panic!("{gva:#x}: {other}"),
        }
    }
    eprintln!("{tally:?}");
    assert!(tally.valid > 2000 && tally.faults > 100, "{tally:?}");
    assert!(tally.sizes[0] > 0 && tally.sizes[1] > 0, "{tally:?}");
    // PML4E with PS, the 1 GiB PDPTE (or not, where the host backs 1 GiB pages), MAXPHYADDR.
    assert!(tally.reserved >= 3, "{tally:?}");
    // The four listed, and the page below the upper half in HIGH's window at three offsets.
    assert_eq!(tally.non_canonical, 7);

    // The guest's own accesses set the accessed and dirty flags the walker would: the leaf
    // of the store is dirty, the leaf of the load only accessed.
    let store_leaf = entry_address(&m.memory, root, MIXED + 0x1000, 2);
    let load_leaf = entry_address(&m.memory, root, HIGH, 2);
    let store: u64 = m.memory.read_obj(GuestAddress(store_leaf)).unwrap();
    let load: u64 = m.memory.read_obj(GuestAddress(load_leaf)).unwrap();
    assert_eq!(store & 0x60, 0x60, "{store:#x}");
    assert_eq!(load & 0x60, 0x20, "{load:#x}");
}
