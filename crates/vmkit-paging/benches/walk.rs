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
//! - First, before criterion's groups, a parity table: the same like-for-like walks timed in
//!   interleaved rounds, so that both walkers see the same machine load, with the median of the
//!   per-round ratios (vmkit probe / `x86_64` translate; the target is at most 1.0).
//!
//! Run: `cargo bench -p vmkit-paging --bench walk` (the table alone:
//! `cargo bench -p vmkit-paging --bench walk -- parity`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use vmkit_paging::{
    Access, BufferMemory, BumpAllocator, Ept, EptCaps, EptFlags, PageSize, PageSizes, PhysMemory,
    Privilege, PteFlags, TableBuilder, X86Format, X86Paging, X86Walker, nested,
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
        X86Format::default(),
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

/// One page size's tables, walked by both walkers in the same host memory: vmkit's through
/// the [`BufferMemory`] that holds them, `x86_64`'s through an `OffsetPageTable` whose physical
/// offset points into that buffer (its frames are page-aligned on the host, as `PageTable`s
/// must be). Only the root is a copy, because `OffsetPageTable` wants it as `&mut`.
struct LikeForLike {
    mem: BufferMemory,
    paging: X86Paging,
    addrs: Vec<u64>,
    root: Box<PageTable>,
}

impl LikeForLike {
    fn new(size: PageSize) -> LikeForLike {
        let mem = BufferMemory::new(0, 8 * MIB).expect("memory");
        let paging = guest_tables(&mem, size, 4 * GIB);
        let addrs = addresses(0, GIB);
        // Set every accessed flag once, so that `translate` writes nothing and the tables stay
        // unchanged while `x86_64` reads them.
        for &addr in &addrs {
            paging.translate(&mem, addr, READ).expect("mapped");
        }
        let mask = 0x000f_ffff_ffff_f000;
        let mut root = Box::new(PageTable::new());
        for (i, entry) in root.iter_mut().enumerate() {
            let raw = mem
                .read_u64(paging.root() + i as u64 * 8)
                .expect("in memory");
            entry.set_addr(
                PhysAddr::new(raw & mask),
                PageTableFlags::from_bits_retain(raw & !mask),
            );
        }
        let mut setup = LikeForLike {
            mem,
            paging,
            addrs,
            root,
        };
        let addrs = setup.addrs.clone();
        let (x86, mem) = setup.walkers();
        for &addr in &addrs {
            let theirs = x86.translate_addr(VirtAddr::new(addr)).map(|p| p.as_u64());
            let ours = paging.probe(mem, addr, READ).map(|t| t.address).ok();
            assert_eq!(theirs, ours, "both walkers agree on {addr:#x}");
        }
        setup
    }

    /// The `x86_64` walker and the memory for vmkit's.
    fn walkers(&mut self) -> (OffsetPageTable<'_>, &BufferMemory) {
        assert_eq!(
            self.mem.as_ptr() as usize % 4096,
            0,
            "frames are page-aligned"
        );
        let offset = VirtAddr::from_ptr(self.mem.as_ptr()) - self.mem.base();
        // The tables below the root reference only frames the builder allocated inside `mem`,
        // each at `offset + address` and 4 KiB-aligned as `PageTable` requires; leaf addresses
        // are computed, never read. Every accessed flag is set already, so no walk writes.
        // SAFETY: every table `x86_64` reaches is valid, aligned memory that nothing writes
        // while the returned walker lives (vmkit's walker, the only other user, only reads).
        let x86 = unsafe { OffsetPageTable::new(&mut self.root, offset) };
        (x86, &self.mem)
    }
}

/// vmkit's read-only walk of every address.
#[inline(never)]
fn probe_all(walker: &X86Walker, mem: &BufferMemory, addrs: &[u64]) {
    for &addr in addrs {
        black_box(
            walker
                .probe(mem, black_box(addr), READ)
                .map(|t| t.address)
                .ok(),
        );
    }
}

/// vmkit's walk with full semantics (accessed/dirty updates) of every address.
#[inline(never)]
fn translate_all(walker: &X86Walker, mem: &BufferMemory, addrs: &[u64]) {
    for &addr in addrs {
        black_box(
            walker
                .translate(mem, black_box(addr), READ)
                .map(|t| t.address)
                .ok(),
        );
    }
}

/// The `x86_64` crate's walk of every address.
#[inline(never)]
fn x86_64_all(x86: &OffsetPageTable<'_>, addrs: &[u64]) {
    for &addr in addrs {
        black_box(x86.translate_addr(VirtAddr::new(black_box(addr))));
    }
}

fn like_for_like(c: &mut Criterion) {
    let mut group = c.benchmark_group("like_for_like");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [PageSize::Size4K, PageSize::Size2M] {
        let mut setup = LikeForLike::new(size);
        let walker = setup.paging.walker();
        let addrs = setup.addrs.clone();
        let (x86, mem) = setup.walkers();
        group.bench_function(BenchmarkId::new("vmkit_probe", label(size)), |b| {
            b.iter(|| probe_all(&walker, mem, &addrs))
        });
        group.bench_function(
            BenchmarkId::new("x86_64_translate_addr", label(size)),
            |b| b.iter(|| x86_64_all(&x86, &addrs)),
        );
        group.bench_function(BenchmarkId::new("vmkit_translate_full", label(size)), |b| {
            b.iter(|| translate_all(&walker, mem, &addrs))
        });
    }
    group.finish();
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The parity table: probe, `x86_64` and full translate timed in interleaved rounds.
fn parity() {
    const ROUNDS: usize = 401;
    const BATCHES: u32 = 8;
    println!(
        "Like-for-like walks, {BATCH} random addresses in 1 GiB, median of {ROUNDS} interleaved rounds:"
    );
    println!();
    println!(
        "| pages | vmkit probe | x86_64 translate_addr | probe / x86_64 (target <= 1.0) | vmkit translate (full) |"
    );
    println!("|---|---|---|---|---|");
    for size in [PageSize::Size4K, PageSize::Size2M] {
        let mut setup = LikeForLike::new(size);
        let walker = setup.paging.walker();
        let addrs = setup.addrs.clone();
        let (x86, mem) = setup.walkers();
        let (mut ours, mut theirs, mut full, mut ratios) = (vec![], vec![], vec![], vec![]);
        for round in 0..ROUNDS {
            // Alternate which walker goes first, so that neither always follows the other.
            let mut probe = 0.0;
            let mut x86_64 = 0.0;
            for turn in [round % 2, 1 - round % 2] {
                let start = Instant::now();
                for _ in 0..BATCHES {
                    if turn == 0 {
                        probe_all(&walker, mem, &addrs);
                    } else {
                        x86_64_all(&x86, &addrs);
                    }
                }
                let ns = start.elapsed().as_nanos() as f64 / f64::from(BATCHES) / BATCH as f64;
                if turn == 0 {
                    probe = ns;
                } else {
                    x86_64 = ns;
                }
            }
            let start = Instant::now();
            for _ in 0..BATCHES {
                translate_all(&walker, mem, &addrs);
            }
            full.push(start.elapsed().as_nanos() as f64 / f64::from(BATCHES) / BATCH as f64);
            ratios.push(probe / x86_64);
            ours.push(probe);
            theirs.push(x86_64);
        }
        println!(
            "| {} | {:.2} ns | {:.2} ns | {:.3} | {:.2} ns |",
            size,
            median(&mut ours),
            median(&mut theirs),
            median(&mut ratios),
            median(&mut full),
        );
    }
    println!();
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
fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs each criterion benchmark once, and the
    // table would only slow it down.
    let args: Vec<String> = std::env::args().collect();
    let filter = args.iter().skip(1).find(|arg| !arg.starts_with('-'));
    if args.iter().any(|arg| arg == "--bench")
        && filter.is_none_or(|f| "parity".contains(f.as_str()))
    {
        parity();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
