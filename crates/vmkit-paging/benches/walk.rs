//! Walk benchmarks.
//!
//! - `like_for_like/*`: translations per second of the walker in read-only mode (`probe`: no
//!   accessed/dirty updates) against the `x86_64` crate's `OffsetPageTable::translate_addr`, on
//!   identical tables (the same entries, copied into page-aligned `PageTable`s for `x86_64`),
//!   and the walker with full semantics (`translate`) timed separately. Both sides prepare
//!   once (an `X86Walker`, an `OffsetPageTable`) and then walk.
//! - `native_vs_nested/*`: time per translation of a native walk and of a two-dimensional walk
//!   through EPT, for 4 KiB, 2 MiB and 1 GiB pages; the memory references of each are printed.
//!
//! Run: `cargo bench -p vmkit-paging --bench walk`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmkit_paging::{
    Access, BufferMemory, BumpAllocator, Ept, EptCaps, EptFlags, PageSize, PageSizes, PhysMemory,
    Privilege, PteFlags, TableBuilder, X86Paging, nested,
};
use x86_64_stable::structures::paging::{OffsetPageTable, PageTable, PageTableFlags, Translate};
use x86_64_stable::{PhysAddr, VirtAddr};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Translations per iteration.
const BATCH: usize = 1024;
const READ: Access = Access::read(Privilege::Supervisor);

/// `BATCH` pseudo-random addresses in `base..base + span`.
fn addresses(base: u64, span: u64) -> Vec<u64> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..BATCH)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            base + state % span
        })
        .collect()
}

/// A name for `size` in benchmark ids.
fn label(size: PageSize) -> &'static str {
    match size {
        PageSize::Size4K => "4KiB",
        PageSize::Size2M => "2MiB",
        PageSize::Size1G => "1GiB",
    }
}

fn only(size: PageSize) -> PageSizes {
    PageSizes::of(&[size])
}

/// Guest tables at 0..8 MiB mapping GVA 0..1 GiB to GPA 0x1_0000_0000.. with `size` pages.
fn guest_tables(mem: &BufferMemory, size: PageSize, phys: u64) -> X86Paging {
    let mut builder = TableBuilder::new(
        X86Paging::default(),
        mem,
        BumpAllocator::new(0, 8 * MIB),
        only(size),
    )
    .expect("root table");
    builder
        .map(0, phys, GIB, PteFlags::WRITABLE)
        .expect("guest mapping");
    X86Paging::new(builder.root())
}

/// The tables of `mem` copied into page-aligned `PageTable`s, entry for entry.
fn copy_for_x86_64(mem: &BufferMemory) -> Vec<PageTable> {
    let mask = 0x000f_ffff_ffff_f000;
    (0..mem.size() / 4096)
        .map(|page| {
            let mut table = PageTable::new();
            for (i, entry) in table.iter_mut().enumerate() {
                let raw = mem.read_u64(page * 4096 + i as u64 * 8).expect("in memory");
                entry.set_addr(
                    PhysAddr::new(raw & mask),
                    PageTableFlags::from_bits_retain(raw & !mask),
                );
            }
            table
        })
        .collect()
}

fn like_for_like(c: &mut Criterion) {
    let mut group = c.benchmark_group("like_for_like");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [PageSize::Size4K, PageSize::Size2M] {
        let mem = BufferMemory::new(0, 8 * MIB).expect("memory");
        let paging = guest_tables(&mem, size, 4 * GIB);
        let walker = paging.walker();
        let addrs = addresses(0, GIB);
        // Set every accessed flag once, so that `translate` below writes nothing.
        for &addr in &addrs {
            paging.translate(&mem, addr, READ).expect("mapped");
        }
        let mut copy = copy_for_x86_64(&mem);
        let offset = VirtAddr::from_ptr(copy.as_ptr());
        let root = &mut copy[(paging.root() / 4096) as usize];
        // SAFETY: `copy` maps all of physical 0..8 MiB, page-aligned, at `offset + address`; the
        // tables reference only addresses inside it, and nothing else touches it while `x86` lives.
        let x86 = unsafe { OffsetPageTable::new(root, offset) };
        for &addr in &addrs {
            let theirs = x86.translate_addr(VirtAddr::new(addr)).map(|p| p.as_u64());
            let ours = paging.probe(&mem, addr, READ).map(|t| t.address).ok();
            assert_eq!(theirs, ours, "both walkers agree on {addr:#x}");
        }
        group.bench_function(BenchmarkId::new("vmkit_probe", label(size)), |b| {
            b.iter(|| {
                for &addr in &addrs {
                    black_box(
                        walker
                            .probe(&mem, black_box(addr), READ)
                            .map(|t| t.address)
                            .ok(),
                    );
                }
            })
        });
        group.bench_function(
            BenchmarkId::new("x86_64_translate_addr", label(size)),
            |b| {
                b.iter(|| {
                    for &addr in &addrs {
                        black_box(x86.translate_addr(VirtAddr::new(black_box(addr))));
                    }
                })
            },
        );
        group.bench_function(BenchmarkId::new("vmkit_translate_full", label(size)), |b| {
            b.iter(|| {
                for &addr in &addrs {
                    black_box(
                        walker
                            .translate(&mem, black_box(addr), READ)
                            .map(|t| t.address)
                            .ok(),
                    );
                }
            })
        });
    }
    group.finish();
}

fn native_vs_nested(c: &mut Criterion) {
    let mut group = c.benchmark_group("native_vs_nested");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G] {
        let mem = BufferMemory::new(0, 16 * MIB).expect("memory");
        // Guest: GVA 0..1 GiB → GPA 0..1 GiB. EPT: GPA 0..1 GiB → HPA 0..1 GiB. Both with
        // `size` pages; guest tables at 0..8 MiB, EPT tables at 8..16 MiB.
        let paging = guest_tables(&mem, size, 0);
        let caps = EptCaps::all(46);
        let mut builder = TableBuilder::new(
            Ept::new(0, caps),
            &mem,
            BumpAllocator::new(8 * MIB, 16 * MIB),
            only(size),
        )
        .expect("EPT root");
        builder
            .identity_map(0, GIB, EptFlags::RAM)
            .expect("EPT mapping");
        let ept = Ept::new(builder.root(), caps);
        let addrs = addresses(0, GIB);
        for &addr in &addrs {
            nested::translate(&paging, &ept, &mem, addr, READ).expect("mapped");
        }
        let native_refs = paging.translate(&mem, addrs[0], READ).expect("mapped").refs;
        let nested_refs = nested::translate(&paging, &ept, &mem, addrs[0], READ)
            .expect("mapped")
            .refs;
        println!(
            "{size}: memory references per translation: native {native_refs}, nested {nested_refs}"
        );
        group.bench_function(BenchmarkId::new("native", label(size)), |b| {
            b.iter(|| {
                for &addr in &addrs {
                    black_box(
                        paging
                            .translate(&mem, black_box(addr), READ)
                            .map(|t| t.address)
                            .ok(),
                    );
                }
            })
        });
        group.bench_function(BenchmarkId::new("nested_2d", label(size)), |b| {
            b.iter(|| {
                for &addr in &addrs {
                    black_box(
                        nested::translate(&paging, &ept, &mem, black_box(addr), READ)
                            .map(|t| t.hpa)
                            .ok(),
                    );
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = like_for_like, native_vs_nested
}
criterion_main!(benches);
