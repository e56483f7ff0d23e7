//! vmkit-paging's shadow MMU on the page tables of a real guest: Debian's vmlinux booted by PVH
//! (through the reference VMM's own `boot` module) on one vCPU, up to `Memory:`, paused every
//! [`INTERVAL`] through vmkit-vcpu's pause-and-inspect hook.
//!
//! At every pause, on the vCPU's thread, the inspection reads the guest's CR0, CR3, CR4 and EFER
//! and every page-table page reachable from CR3, and replays into a [`ShadowMmu`] what changed
//! since the last pause: each changed table word as a guest page-table write
//! ([`ShadowMmu::write_guest`]) on a mirror of the guest's tables, then the control-register
//! loads. It then translates a broad set of addresses — the first, middle and last byte of the
//! mapped runs (kernel image, direct map, fixmap, vmalloc, user if any), the bytes just outside
//! them, fixed probes of unmapped and non-canonical space, RIP and RSP — three ways:
//! vmkit-paging's walker on guest memory, `KVM_TRANSLATE` on the live vCPU, and the shadow MMU
//! (GPA composed with the host map). All three must agree, faults included, and a second shadow
//! translation of a mapped address must be a hit. The test prints the figures of the crate's
//! `mmu` benchmark that apply (run with `--nocapture`).
//!
//! It needs `/dev/kvm` and the kernel `scripts/fetch-linux.sh` fetches; without `/dev/kvm` it
//! fails, naming the reason, unless `VMKIT_SKIP_KVM_TESTS=1` skips it explicitly.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

/// The reference VMM's machine description and loader, shared rather than copied.
#[allow(dead_code)]
#[path = "../src/boot.rs"]
mod boot;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Agreed, Random, agree_with_kvm, canonical, kvm_available, linux, max_phys_bits};
use vmkit_boot::mark_acpi_memory;
use vmkit_devices::serial::COM1_PORT;
use vmkit_exits::{ExitAction, ExitDispatcher, StopReason, VcpuState, VmExit};
use vmkit_memory::GuestLayout;
use vmkit_memory::vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vmkit_paging::{
    Access, GpaRanges, MemoryError, PageSize, PhysMemory, Privilege, ShadowConfig, ShadowError,
    ShadowMmu, WalkError, X86Paging,
};
use vmkit_vcpu::{
    Hypervisor, Inspector, Kick, KvmHypervisor, KvmVcpu, LoopExit, Vcpu, Vm,
    run_until_stop_with_assist_inspected,
};

/// Guest RAM.
const MEMORY: u64 = 1 << 30;
const CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0";
/// What the kernel prints once its memory management is up: the end of the run.
const DONE: &[u8] = b"Memory:";
/// How often the vCPU is paused and sampled.
const INTERVAL: Duration = Duration::from_millis(500);
/// The bound on the whole boot.
const LIMIT: Duration = Duration::from_secs(300);
/// Where the host map puts guest RAM: every shadow translation must land at `HOST + gpa`.
const HOST: u64 = 1 << 40;
/// COM1's line status register; 0x60 says the transmitter is empty.
const COM1_LSR: u16 = COM1_PORT + 5;

use vmkit_paging::x86::{CR0_PG, CR4_LA57, EFER_LMA};
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;

/// The guest's page tables as the shadow MMU sees them: the table pages the samples found,
/// everything else zero. The MMU's accessed/dirty updates land here, not in the guest.
#[derive(Default)]
struct Mirror(RefCell<BTreeMap<u64, Box<[u64; 512]>>>);

impl Mirror {
    fn slot(addr: u64) -> Result<(u64, usize), MemoryError> {
        if !addr.is_multiple_of(8) {
            return Err(MemoryError::Misaligned(addr));
        }
        Ok((addr & !0xfff, ((addr & 0xfff) / 8) as usize))
    }
}

impl PhysMemory for Mirror {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let (page, slot) = Self::slot(addr)?;
        Ok(self.0.borrow().get(&page).map_or(0, |words| words[slot]))
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        let (page, slot) = Self::slot(addr)?;
        self.0
            .borrow_mut()
            .entry(page)
            .or_insert_with(|| Box::new([0; 512]))[slot] = value;
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        let found = self.read_u64(addr)?;
        if found != current {
            return Ok(Err(found));
        }
        self.write_u64(addr, new)?;
        Ok(Ok(current))
    }
}

/// The table pages reachable from a root and the leaves they map.
#[derive(Default)]
struct Tables {
    /// Table pages by guest-physical address.
    pages: BTreeMap<u64, Box<[u64; 512]>>,
    /// Mapped runs `(gva, size)` in address order, one per leaf.
    leaves: Vec<(u64, u64)>,
}

impl Tables {
    /// Reads every table reachable from `root` (`levels` deep) out of `memory`.
    fn read(memory: &GuestMemoryMmap, root: u64, levels: u32, address_mask: u64) -> Tables {
        let mut tables = Tables::default();
        tables.visit(memory, root, levels, 0, address_mask);
        tables.leaves.sort_unstable();
        tables
    }

    fn visit(&mut self, memory: &GuestMemoryMmap, table: u64, level: u32, base: u64, mask: u64) {
        let mut bytes = [0u8; 4096];
        if memory.read_slice(&mut bytes, GuestAddress(table)).is_err() {
            return;
        }
        let words: Box<[u64; 512]> = Box::new(std::array::from_fn(|i| {
            u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap())
        }));
        for (index, &entry) in words.iter().enumerate() {
            if entry & PRESENT == 0 {
                continue;
            }
            let shift = 12 + 9 * (level - 1);
            let gva = base | (index as u64) << shift;
            let leaf = level == 1 || (level <= 3 && entry & PAGE_SIZE_BIT != 0);
            if leaf {
                self.leaves.push((canonical(gva), 1 << shift));
            } else if self.leaves.len() < 1_000_000 {
                self.visit(memory, entry & mask, level - 1, gva, mask);
            }
        }
        self.pages.insert(table, words);
    }
}

/// Where in Linux's x86-64 (4-level) memory map an address lies.
fn region(gva: u64) -> &'static str {
    match gva {
        0..=0x7fff_ffff_ffff => "user",
        0xffff_8880_0000_0000..=0xffff_c87f_ffff_ffff => "direct map",
        0xffff_c900_0000_0000..=0xffff_e8ff_ffff_ffff => "vmalloc/ioremap",
        0xffff_ea00_0000_0000..=0xffff_eaff_ffff_ffff => "vmemmap",
        0xffff_fe00_0000_0000..=0xffff_fe7f_ffff_ffff => "cpu entry area",
        0xffff_ff00_0000_0000..=0xffff_ff7f_ffff_ffff => "espfix stacks",
        0xffff_ffff_8000_0000..=0xffff_ffff_9fff_ffff => "kernel image",
        0xffff_ffff_a000_0000..=0xffff_ffff_feff_ffff => "modules",
        0xffff_ffff_ff00_0000..=u64::MAX => "fixmap",
        0x0000_8000_0000_0000..=0xffff_7fff_ffff_ffff => "non-canonical",
        _ => "other kernel",
    }
}

/// Per-region outcomes of the three-way comparison.
#[derive(Debug, Default, Clone, Copy)]
struct Outcomes {
    valid: u64,
    fault: u64,
    no_backing: u64,
}

/// Averages of memory references per translation, by the guest's page size.
#[derive(Debug, Default, Clone, Copy)]
struct Refs {
    count: u64,
    walk: u64,
    hit: u64,
}

/// Everything the samples keep.
struct Sampler<'a> {
    memory: &'a GuestMemoryMmap,
    map: GpaRanges,
    max_phys_bits: u8,
    gbpages: bool,
    mmu: Option<ShadowMmu>,
    mirror: Mirror,
    /// The table pages as the last sample read them (the guest's own values).
    seen: BTreeMap<u64, Box<[u64; 512]>>,
    /// CR0, CR3, CR4, EFER of the last sample.
    control: (u64, u64, u64, u64),
    random: Random,
    samples: u64,
    samples_before_paging: u64,
    cr3_loads: u64,
    table_writes: u64,
    table_pages: usize,
    addresses: u64,
    regions: BTreeMap<&'static str, Outcomes>,
    refs: BTreeMap<PageSize, Refs>,
    /// Memory references of every successful shadow translation (hits and fills), and their
    /// number.
    shadow_refs: (u64, u64),
}

impl<'a> Sampler<'a> {
    fn new(memory: &'a GuestMemoryMmap, max_phys_bits: u8, gbpages: bool) -> Self {
        let mut map = GpaRanges::new();
        for region in memory.iter() {
            let start = region.start_addr().0;
            map.insert(start, region.len(), HOST + start).unwrap();
        }
        Sampler {
            memory,
            map,
            max_phys_bits,
            gbpages,
            mmu: None,
            mirror: Mirror::default(),
            seen: BTreeMap::new(),
            control: (0, 0, 0, 0),
            random: Random(0x9e37_79b9_7f4a_7c15),
            samples: 0,
            samples_before_paging: 0,
            cr3_loads: 0,
            table_writes: 0,
            table_pages: 0,
            addresses: 0,
            regions: BTreeMap::new(),
            refs: BTreeMap::new(),
            shadow_refs: (0, 0),
        }
    }

    /// One sample of the paused vCPU.
    fn sample(&mut self, vcpu: &KvmVcpu) {
        let sregs = vcpu.special_registers().unwrap();
        let regs = vcpu.registers().unwrap();
        if sregs.cr0 & CR0_PG == 0 || sregs.efer & EFER_LMA == 0 {
            self.samples_before_paging += 1;
            return;
        }
        assert_eq!(sregs.cr4 & CR4_LA57, 0, "the test reads 4-level tables");
        self.samples += 1;
        let paging =
            X86Paging::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, regs.rflags)
                .with_max_phys_bits(self.max_phys_bits)
                .with_gbpages(self.gbpages);
        let address_mask = ((1u64 << self.max_phys_bits) - 1) & !0xfff;
        let tables = Tables::read(self.memory, sregs.cr3 & address_mask, 4, address_mask);
        self.table_pages = tables.pages.len();
        self.replay(
            &tables,
            paging,
            (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer),
            regs.rflags,
        );
        for gva in self.addresses(&tables, regs.rip, regs.rsp) {
            self.check(vcpu, &paging, gva);
        }
    }

    /// Brings the MMU up to date: the changed table words as guest writes, then the control
    /// registers.
    fn replay(
        &mut self,
        tables: &Tables,
        paging: X86Paging,
        control: (u64, u64, u64, u64),
        rflags: u64,
    ) {
        let (cr0, cr3, cr4, efer) = control;
        let mmu = self
            .mmu
            .get_or_insert_with(|| ShadowMmu::new(paging, ShadowConfig::default()));
        for (&gpa, words) in &tables.pages {
            let before = self.seen.get(&gpa);
            for (slot, &word) in words.iter().enumerate() {
                if before.map_or(0, |old| old[slot]) != word {
                    mmu.write_guest(&self.mirror, gpa + 8 * slot as u64, word)
                        .unwrap();
                    self.table_writes += 1;
                }
            }
            self.seen.insert(gpa, words.clone());
        }
        let last = self.control;
        if cr0 != last.0 {
            mmu.write_cr0(cr0);
        }
        if cr4 != last.2 {
            mmu.write_cr4(cr4);
        }
        if efer != last.3 {
            mmu.write_efer(efer);
        }
        if cr3 != last.1 {
            mmu.write_cr3(cr3);
            self.cr3_loads += 1;
        }
        mmu.set_ac(rflags & (1 << 18) != 0);
        self.control = control;
    }

    /// The addresses one sample compares.
    fn addresses(&mut self, tables: &Tables, rip: u64, rsp: u64) -> Vec<u64> {
        let mut out = vec![
            rip,
            rsp,
            0,
            0x1000,
            0x7fff_ffff_f000,
            0xffff_8000_0000_0000,
            0xffff_c900_0000_0000,
            0xffff_ea00_0000_0000,
            0xffff_ffff_8100_0000,
            0xffff_ffff_ff5f_f000,
            0xffff_ffff_ff60_0000,
            // Non-canonical.
            0x0000_8000_0000_0000,
            0x8000_0000_0000_0000,
        ];
        // The edges of every run of contiguous leaves, and just outside them.
        let mut run: Option<(u64, u64)> = None;
        let mut runs = Vec::new();
        for &(gva, size) in &tables.leaves {
            run = match run {
                Some((start, end)) if end == gva => Some((start, gva.wrapping_add(size))),
                Some(done) => {
                    runs.push(done);
                    Some((gva, gva.wrapping_add(size)))
                }
                None => Some((gva, gva.wrapping_add(size))),
            };
        }
        runs.extend(run);
        for &(start, end) in runs.iter().take(512) {
            out.extend([start.wrapping_sub(1), start, end.wrapping_sub(1), end]);
            out.push(start + (end.wrapping_sub(start)) / 2 / 8 * 8);
        }
        // A spread of leaves, at a random offset inside each.
        let step = tables.leaves.len().div_ceil(1024).max(1);
        for &(gva, size) in tables.leaves.iter().step_by(step) {
            out.push(gva + self.random.next() % size);
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Walker, KVM_TRANSLATE and shadow MMU on one address.
    fn check(&mut self, vcpu: &KvmVcpu, paging: &X86Paging, gva: u64) {
        self.addresses += 1;
        let access = Access::read(Privilege::Supervisor);
        let mmu = self.mmu.as_mut().unwrap();
        let shadow = mmu.translate(&self.mirror, &self.map, gva, access);
        let outcome = self.regions.entry(region(gva)).or_default();
        match agree_with_kvm(vcpu, self.memory, paging, gva) {
            Agreed::Valid(walked) => {
                let backed = self.memory.address_in_range(GuestAddress(walked.address));
                match shadow {
                    Ok(t) => {
                        assert!(backed, "{gva:#x}: shadow {t:x?} for unbacked {walked:x?}");
                        assert_eq!(
                            (t.gpa, t.hpa, t.page_size, t.rights),
                            (
                                walked.address,
                                HOST + walked.address,
                                walked.page_size,
                                walked.rights
                            ),
                            "{gva:#x}: shadow {t:x?}, walker {walked:x?}"
                        );
                        let hit = mmu.translate(&self.mirror, &self.map, gva, access).unwrap();
                        assert!(!hit.filled && hit.hpa == t.hpa, "{gva:#x}: again {hit:x?}");
                        let refs = self.refs.entry(walked.page_size).or_default();
                        refs.count += 1;
                        refs.walk += u64::from(walked.refs);
                        refs.hit += u64::from(hit.refs);
                        self.shadow_refs.0 += u64::from(t.refs + hit.refs);
                        self.shadow_refs.1 += 2;
                        outcome.valid += 1;
                    }
                    Err(ShadowError::NoBacking { gpa, .. }) => {
                        assert!(!backed && gpa == walked.address, "{gva:#x}: {walked:x?}");
                        outcome.no_backing += 1;
                    }
                    Err(err) => panic!("{gva:#x}: shadow {err}, walker {walked:x?}"),
                }
            }
            Agreed::Invalid(fault) => {
                assert_eq!(
                    shadow,
                    Err(ShadowError::GuestPageFault(fault)),
                    "{gva:#x}: walker {fault}"
                );
                outcome.fault += 1;
            }
            Agreed::NonCanonical { .. } => {
                assert_eq!(
                    shadow,
                    Err(ShadowError::Walk(WalkError::NonCanonical(gva))),
                    "{gva:#x}"
                );
                outcome.fault += 1;
            }
        }
    }

    /// The figures of the `mmu` benchmark that a boot gives, as markdown tables.
    fn report(&self, elapsed: Duration) -> String {
        let stats = self.mmu.as_ref().unwrap().stats();
        let per_1000 = |n: u64| 1000.0 * n as f64 / stats.translations.max(1) as f64;
        let mut out = format!(
            "Linux (PVH) to `Memory:` in {:.1} s: {} samples in long mode ({} before), {} CR3 \
             loads, {} table words replayed as guest writes, {} table pages at the last \
             sample, {} addresses compared\n\n",
            elapsed.as_secs_f64(),
            self.samples,
            self.samples_before_paging,
            self.cr3_loads,
            self.table_writes,
            self.table_pages,
            self.addresses,
        );
        out +=
            "| pages | translations | native walk refs | shadow hit refs |\n|---|---:|---:|---:|\n";
        for (size, refs) in &self.refs {
            let n = refs.count.max(1) as f64;
            out += &format!(
                "| {size} | {} | {:.2} | {:.2} |\n",
                refs.count,
                refs.walk as f64 / n,
                refs.hit as f64 / n
            );
        }
        out += "\n| workload | policy | translations | shadow faults | WP faults | syncs | zaps | \
                per 1000: faults | per 1000: syncs | refs per translation |\n\
                |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        out += &format!(
            "| Linux boot to `Memory:` | Resync | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.2} \
             |\n",
            stats.translations,
            stats.shadow_faults,
            stats.write_protect_faults,
            stats.syncs,
            stats.zaps,
            per_1000(stats.shadow_faults),
            per_1000(stats.syncs),
            self.shadow_refs.0 as f64 / self.shadow_refs.1.max(1) as f64,
        );
        out += "\n| region | valid | page fault or non-canonical | no backing (MMIO) |\n|---|---:|---:|---:|\n";
        for (name, o) in &self.regions {
            out += &format!(
                "| {name} | {} | {} | {} |\n",
                o.valid, o.fault, o.no_backing
            );
        }
        out
    }
}

#[test]
fn shadow_mmu_follows_linux_page_tables_while_it_boots() {
    if !kvm_available() {
        return;
    }
    let kvm = KvmHypervisor::new().unwrap();
    let mut layout = GuestLayout::new(MEMORY).unwrap();
    mark_acpi_memory(&mut layout).unwrap();
    let memory = layout.create_guest_memory().unwrap();
    let vm = kvm.create_vm(&layout, &memory).unwrap();
    let machine = boot::Machine {
        layout: &layout,
        vcpus: 1,
        com1: true,
        pci_intx: Vec::new(),
    };
    let rsdp = boot::write_firmware_tables(&memory, &machine).unwrap();
    let kernel = std::fs::read(linux::vmlinux()).unwrap();
    let image = boot::Image {
        name: "vmlinux",
        bytes: &kernel,
        firmware: false,
        cmdline: CMDLINE,
        initramfs: None,
    };
    let entry = boot::load(&memory, &layout, &image, rsdp, kvm.supported_page_sizes()).unwrap();
    let boot::Entry::Pvh { entry, start_info } = entry else {
        panic!("a vmlinux boots by PVH: {entry:?}");
    };
    let mut vcpu = vm.create_vcpu(0, 1).unwrap();
    vcpu.setup_pvh(entry, start_info).unwrap();

    // The console: COM1's data register collected, its line status always "transmitter empty";
    // everything else gets the dispatcher's answer for an empty machine.
    let dispatcher = ExitDispatcher::new(Arc::default(), Arc::default());
    let console = RefCell::new(Vec::new());
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoOut {
            port: COM1_PORT,
            data,
        } => {
            let mut console = console.borrow_mut();
            console.extend_from_slice(data);
            if console.ends_with(DONE) {
                ExitAction::Stop(StopReason::GuestExit(0))
            } else {
                ExitAction::Resume
            }
        }
        VmExit::IoIn {
            port: COM1_LSR,
            data,
        } => {
            data.fill(0x60);
            ExitAction::Resume
        }
        other => dispatcher.dispatch(other),
    };

    let mut sampler = Sampler::new(&memory, max_phys_bits(&kvm), kvm.supports_1g_pages());
    let inspections = Cell::new(0u64);
    let mut inspector = Inspector::new(|vcpu: &mut KvmVcpu| {
        inspections.set(inspections.get() + 1);
        sampler.sample(vcpu);
        ControlFlow::Continue(())
    });
    let pause = inspector.handle(vcpu.kicker());
    let kicker = vcpu.kicker();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let ticker = thread::spawn({
        let (stop, done) = (stop.clone(), done.clone());
        move || {
            while !done.load(Ordering::Acquire) {
                thread::sleep(INTERVAL);
                if started.elapsed() > LIMIT {
                    stop.store(true, Ordering::Release);
                    kicker.kick();
                    return;
                }
                pause.pause();
            }
        }
    });
    let assist = vmkit_exits::EmulationAssist::default();
    let end = run_until_stop_with_assist_inspected(
        &mut vcpu,
        &handler,
        &assist,
        &memory,
        &stop,
        &mut inspector,
    );
    done.store(true, Ordering::Release);
    ticker.join().unwrap();
    drop(inspector);
    let elapsed = started.elapsed();
    let console = String::from_utf8_lossy(&console.into_inner()).into_owned();
    assert_eq!(
        end.unwrap(),
        LoopExit::Stopped(StopReason::GuestExit(0)),
        "no `Memory:` within {LIMIT:?}; console:\n{console}"
    );
    // One more sample where the boot ended.
    sampler.sample(&vcpu);
    eprintln!("{}", sampler.report(elapsed));

    assert!(inspections.get() >= 5, "{} pauses", inspections.get());
    assert!(
        sampler.samples >= 5,
        "{} samples in long mode",
        sampler.samples
    );
    let valid = |name: &str| sampler.regions.get(name).map_or(0, |o| o.valid);
    let faults: u64 = sampler.regions.values().map(|o| o.fault).sum();
    assert!(
        valid("kernel image") > 0 && valid("direct map") > 0,
        "{:?}",
        sampler.regions
    );
    assert!(
        valid("fixmap") + valid("vmalloc/ioremap") + valid("vmemmap") > 0,
        "{:?}",
        sampler.regions
    );
    assert!(faults > 0, "{:?}", sampler.regions);
    let stats = sampler.mmu.as_ref().unwrap().stats();
    assert!(stats.hits > 0 && stats.shadow_faults > 0, "{stats:?}");
    assert!(sampler.table_writes > 0);
}
