//! The memory-virtualization table: shadow paging against nested and native walks, the cost of
//! keeping shadows in step with a guest that writes its tables, and a tagged TLB's hit rates.
//!
//! Run: `cargo bench -p vmkit-paging --bench mmu` (prints one table; no criterion).

use std::hint::black_box;
use std::time::Instant;

use vmkit_paging::tlb::{Tag, Tlb, TlbConfig, TlbEntry};
use vmkit_paging::{
    Access, BufferMemory, BumpAllocator, Ept, EptCaps, EptFlags, GpaRanges, PageSize, PageSizes,
    PhysMemory, Privilege, PteFlags, ShadowConfig, ShadowError, ShadowMmu, SyncPolicy,
    TableBuilder, X86Format, X86Paging, nested,
};

const MIB: u64 = 1 << 20;
const READ: Access = Access::read(Privilege::User);
const WRITE: Access = Access::write(Privilege::User);
/// Guest RAM: 64 MiB of guest-physical memory; the host backs it at `HOST`.
const RAM: u64 = 64 * MIB;
const HOST: u64 = 1 << 32;
/// Guest data: GVA 0..16 MiB maps GPA 16..32 MiB.
const DATA: u64 = 16 * MIB;

fn addresses(count: usize, span: u64, seed: u64) -> Vec<u64> {
    let mut state = seed | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % span) & !7
        })
        .collect()
}

fn only(size: PageSize) -> PageSizes {
    PageSizes::of(&[size])
}

/// Guest tables in `mem` (frames from `frames`) mapping GVA 0..16 MiB to GPA 16..32 MiB with
/// `size` pages, user-writable.
fn guest_tables(mem: &BufferMemory, size: PageSize, frames: (u64, u64)) -> X86Paging {
    let mut builder = TableBuilder::new(
        X86Format::default(),
        mem,
        BumpAllocator::new(frames.0, frames.1),
        only(size),
    )
    .expect("root");
    builder
        .map(0, DATA, DATA, PteFlags::WRITABLE | PteFlags::USER)
        .expect("data");
    X86Paging::new(builder.root())
}

/// Nanoseconds per call of `f` over `addrs`, best of five rounds.
fn time(addrs: &[u64], mut f: impl FnMut(u64) -> u64) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut sum = 0u64;
        for &addr in addrs {
            sum = sum.wrapping_add(f(addr));
        }
        black_box(sum);
        best = best.min(start.elapsed().as_nanos() as f64 / addrs.len() as f64);
    }
    best
}

/// Part 1: one translation, shadow hit against the native and the two-dimensional walk.
fn per_translation() {
    println!("## Per translation (4096 random addresses in 16 MiB, warm tables)\n");
    println!("| pages | walk | memory refs | ns |");
    println!("|---|---|---:|---:|");
    for size in [PageSize::Size4K, PageSize::Size2M] {
        // Guest-physical = host-physical memory for the native and nested walks (identity EPT).
        let mem = BufferMemory::new(0, RAM).expect("memory");
        let paging = guest_tables(&mem, size, (60 * MIB, 62 * MIB));
        let ept_format = Ept::new(0, EptCaps::all(46));
        let mut ept = TableBuilder::new(
            ept_format,
            &mem,
            BumpAllocator::new(62 * MIB, RAM),
            PageSizes::UP_TO_2M,
        )
        .expect("ept");
        ept.identity_map(0, RAM, EptFlags::RAM).expect("ept map");
        let ept = Ept {
            root: ept.root(),
            ..ept_format
        };
        let map = GpaRanges::new().with(0, RAM, HOST).expect("map");
        let mut shadow = ShadowMmu::new(paging, ShadowConfig::default());
        let addrs = addresses(4096, DATA, 7);
        let walker = paging.walker();
        for &addr in &addrs {
            nested::translate(&paging, &ept, &mem, addr, READ).expect("nested");
            shadow.translate(&mem, &map, addr, READ).expect("shadow");
        }
        let native_refs = walker.probe(&mem, addrs[0], READ).expect("native").refs;
        let nested_refs = nested::probe(&paging, &ept, &mem, addrs[0], READ)
            .expect("nested")
            .refs;
        let shadow_refs = shadow.translate(&mem, &map, addrs[0], READ).expect("hit");
        assert!(!shadow_refs.filled);
        let native = time(&addrs, |a| {
            walker.probe(&mem, a, READ).map_or(0, |t| t.address)
        });
        let two_d = time(&addrs, |a| {
            nested::probe(&paging, &ept, &mem, a, READ).map_or(0, |t| t.hpa)
        });
        let hit = time(&addrs, |a| {
            shadow.translate(&mem, &map, a, READ).map_or(0, |t| t.hpa)
        });
        for (what, refs, ns) in [
            ("native walk (GVA→GPA)", native_refs, native),
            (
                "nested 2-D walk (GVA→HPA, EPT with 2 MiB pages)",
                nested_refs,
                two_d,
            ),
            ("shadow hit (GVA→HPA)", shadow_refs.refs, hit),
        ] {
            println!("| {size} | {what} | {refs} | {ns:.1} |");
        }
    }
    println!();
}

/// A guest whose page tables live in guest memory it can write through a mapping of them
/// (the self-map of a kernel), so that its table writes reach the shadow MMU as writes.
struct Guest {
    mem: BufferMemory,
    map: GpaRanges,
    mmu: ShadowMmu,
    /// GVA of the table area (GPA `TABLES`).
    window: u64,
}

/// Guest tables live at GPA 48..56 MiB, mapped at GVA 1 GiB.
const TABLES: u64 = 48 * MIB;
const WINDOW: u64 = 1 << 30;

impl Guest {
    /// A parent address space mapping 4 MiB of data with 4 KiB pages, and the table window.
    fn new(policy: SyncPolicy) -> (Guest, u64) {
        let mem = BufferMemory::new(0, RAM).expect("memory");
        let mut builder = TableBuilder::new(
            X86Format::default(),
            &mem,
            BumpAllocator::new(TABLES, TABLES + 4 * MIB),
            PageSizes::SMALL,
        )
        .expect("root");
        let flags = PteFlags::WRITABLE | PteFlags::USER;
        builder.map(0, DATA, 4 * MIB, flags).expect("data");
        builder.map(WINDOW, TABLES, 8 * MIB, flags).expect("window");
        let root = builder.root();
        let config = ShadowConfig {
            policy,
            ..ShadowConfig::default()
        };
        let mmu = ShadowMmu::new(X86Paging::new(root), config);
        let map = GpaRanges::new().with(0, RAM, HOST).expect("map");
        (
            Guest {
                mem,
                map,
                mmu,
                window: WINDOW,
            },
            root,
        )
    }

    /// A guest store of `value` to the table word at `gpa`: a write through the window, which
    /// the MMU either lets through or reports as a page-table write to emulate.
    fn store(&mut self, gpa: u64, value: u64) {
        let gva = self.window + (gpa - TABLES);
        match self.mmu.translate(&self.mem, &self.map, gva, WRITE) {
            Ok(t) => self.mem.write_u64(t.gpa, value).expect("store"),
            Err(ShadowError::PageTableWrite { gpa, .. }) => self
                .mmu
                .write_guest(&self.mem, gpa, value)
                .expect("emulated"),
            Err(err) => panic!("store to {gva:#x}: {err}"),
        }
    }

    fn touch(&mut self, pages: u64, access: Access) {
        for page in 0..pages {
            self.mmu
                .translate(&self.mem, &self.map, page << 12, access)
                .expect("data");
        }
    }
}

/// fork()'s table copy: `table` (at `level`) and the tables below it copied to frames from
/// `next` on with guest stores, every data PTE made read-only (copy-on-write) in both copies.
/// Returns the copy.
fn copy_tables(g: &mut Guest, next: &mut u64, table: u64, level: u8) -> u64 {
    let new = *next;
    *next += 4096;
    for i in 0..512u64 {
        let entry = g.mem.read_u64(table + i * 8).expect("entry");
        if entry & 1 == 0 {
            continue;
        }
        let addr = entry & 0x000f_ffff_ffff_f000;
        let value = if level > 1 && (TABLES..TABLES + 4 * MIB).contains(&addr) {
            copy_tables(g, next, addr, level - 1) | (entry & 0xfff)
        } else if level == 1 && addr < TABLES {
            g.store(table + i * 8, entry & !2);
            entry & !2
        } else {
            entry
        };
        g.store(new + i * 8, value);
    }
    new
}

/// Part 2: what keeping shadows in step costs, with and without page-table writes.
fn maintenance() {
    println!("## Shadow maintenance (4 MiB of 4 KiB pages, two address spaces)\n");
    println!(
        "| workload | policy | translations | shadow faults | WP faults | syncs | zaps | \
         per 1000: faults | per 1000: syncs | ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for writes_tables in [true, false] {
        for policy in [SyncPolicy::Resync, SyncPolicy::Unsync] {
            let (mut g, parent) = Guest::new(policy);
            let start = Instant::now();
            g.touch(1024, WRITE);
            let before = g.mmu.stats();
            let child = if writes_tables {
                // fork(): copy the parent's tables to fresh frames (the child shares the
                // data pages copy-on-write), then mark both sides' PTEs read-only.
                let child_base = TABLES + 4 * MIB;
                let mut next = child_base;
                copy_tables(&mut g, &mut next, parent, 4)
            } else {
                parent
            };
            // Both processes run, touching every page, CR3 switching between them.
            for round in 0..4 {
                let cr3 = if round % 2 == 0 { child } else { parent };
                g.mmu.write_cr3(cr3);
                g.touch(1024, READ);
            }
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            let s = g.mmu.stats();
            let translations = s.translations - before.translations;
            let faults = s.shadow_faults + s.write_protect_faults
                - before.shadow_faults
                - before.write_protect_faults;
            let syncs = s.syncs - before.syncs;
            let per = |n: u64| n as f64 * 1000.0 / translations as f64;
            println!(
                "| {} | {policy:?} | {translations} | {} | {} | {syncs} | {} | {:.1} | {:.1} | \
                 {elapsed:.1} |",
                if writes_tables {
                    "fork, then touch"
                } else {
                    "touch only"
                },
                s.shadow_faults - before.shadow_faults,
                s.write_protect_faults - before.write_protect_faults,
                s.zaps - before.zaps,
                per(faults),
                per(syncs),
            );
        }
    }
    println!();
}

/// Part 3: a TLB under a workload switching between two address spaces in each of two VMs.
fn tlb() {
    println!(
        "## Tagged TLB (2 VMs x 2 address spaces, 12 pages each; a CR3 switch every 64 \
         accesses, a VM switch every 8 CR3 switches; misses walk in two dimensions)\n"
    );
    println!("| pages | tagging | hit rate | refs per miss | refs per access |");
    println!("|---|---|---:|---:|---:|");
    for size in [PageSize::Size4K, PageSize::Size2M] {
        let mem = BufferMemory::new(0, RAM).expect("memory");
        let paging = guest_tables(&mem, size, (60 * MIB, 62 * MIB));
        let ept_format = Ept::new(0, EptCaps::all(46));
        let mut ept = TableBuilder::new(
            ept_format,
            &mem,
            BumpAllocator::new(62 * MIB, RAM),
            PageSizes::UP_TO_2M,
        )
        .expect("ept");
        ept.identity_map(0, RAM, EptFlags::RAM).expect("ept map");
        let ept = Ept {
            root: ept.root(),
            ..ept_format
        };
        // Each address space touches 12 pages spread over the 16 MiB.
        let stride = if size == PageSize::Size4K {
            0x5_3000
        } else {
            0x20_0000
        };
        let pages: Vec<u64> = (0..12u64).map(|i| (i * stride) % DATA).collect();
        for (name, vpid, pcid) in [
            ("untagged (flush on every switch)", false, false),
            ("PCID", false, true),
            ("VPID + PCID", true, true),
        ] {
            let mut tlb = Tlb::new(TlbConfig::default()).expect("tlb");
            let mut walked = 0u64;
            let mut misses = 0u64;
            let mut accesses = 0u64;
            let mut state = 0x1234_5678u64;
            for epoch in 0..400u64 {
                let vm = (epoch / 8) % 2;
                let space = epoch % 2;
                // A VM switch is a VM exit and an entry; an address-space switch a CR3 load.
                if epoch % 8 == 0 {
                    tlb.vm_transition(vpid);
                    tlb.vm_transition(vpid);
                }
                let tag = Tag {
                    vpid: if vpid { 1 + vm as u16 } else { 0 },
                    ep4ta: ept.root + vm * 0x1000,
                    pcid: if pcid { 1 + space as u16 } else { 0 },
                };
                // With PCIDs the guest loads CR3 with the no-flush bit.
                tlb.write_cr3(tag, pcid);
                for _ in 0..64 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let gva = (pages[(state % pages.len() as u64) as usize] + (space << 23)) % DATA;
                    accesses += 1;
                    if tlb.lookup(tag, gva).is_none() {
                        misses += 1;
                        let t = nested::probe(&paging, &ept, &mem, gva, READ).expect("mapped");
                        walked += u64::from(t.refs);
                        tlb.insert(
                            tag,
                            gva,
                            TlbEntry {
                                base: t.hpa,
                                size: t.guest.page_size,
                                rights: t.guest.rights,
                                dirty: false,
                                global: false,
                            },
                        );
                    }
                }
            }
            println!(
                "| {size} | {name} | {:.1} % | {:.1} | {:.2} |",
                100.0 * (accesses - misses) as f64 / accesses as f64,
                walked as f64 / misses.max(1) as f64,
                walked as f64 / accesses as f64,
            );
        }
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs the same, once.
    per_translation();
    maintenance();
    tlb();
}
