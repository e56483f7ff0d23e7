//! vmkit-paging's walker against KVM's on page tables a guest built for itself: the `paging`
//! guest builds its tables inside the VM with vmkit-paging's `TableBuilder` (4 KiB and 2 MiB
//! pages, 1 GiB pages only where the backend supports them; identity, non-identity and
//! higher-half mappings, a region whose ends are 4 KiB pages and whose middle is a 2 MiB page,
//! read-only, user and execute-disable pages, holes), loads CR3, checks its aliases and
//! announces the tables on a port. With the vCPU stopped there, every address of a sweep (each
//! page boundary, and bytes beside it, in and around every mapping and hole; addresses just past
//! each mapping; pseudo-random canonical addresses of both halves; non-canonical ones) is
//! translated by `X86Paging` (built from the vCPU's CR0/CR3/CR4/EFER) and by `KVM_TRANSLATE`:
//! the guest-physical address and the validity must agree (KVM reports nothing else
//! faithfully). The walker must also give exactly the layout the guest documents (page sizes
//! included, so mixed sizes cannot silently degrade) and the rights it asked for, CR3 must
//! have left guest-rt's static tables, and the guest must then exit with status 0.
//!
//! The guest is booted the way the reference VMM boots one (vmkit-memory layout and memory,
//! vmkit-boot's PVH loader, vmkit-vcpu's KVM backend in the PVH entry state, a COM1 and a
//! debug-exit device on an `ExitDispatcher`); the test handles the guest's ready port itself.
//!
//! It needs `/dev/kvm`; without it the test fails, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips it explicitly.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Agreed, Random, agree_with_kvm, canonical, kvm_available, max_phys_bits};
use vmkit_boot::{PvhConfig, load_pvh};
use vmkit_devices::CountingTrigger;
use vmkit_devices::debug_exit::{DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_LEN, DebugExit};
use vmkit_devices::serial::{COM1_PORT, SERIAL_PORT_LEN, SerialDevice};
use vmkit_exits::{ExitAction, ExitDispatcher, IoBus, MmioBus, StopReason, VcpuState, VmExit};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_memory::{GuestLayout, MemoryKind};
use vmkit_paging::{
    Access, PageFault, PageSize, Privilege, PteFlags, Translation, WalkError, X86Paging,
};
use vmkit_vcpu::{ExitHandler, Hypervisor, Kick, KvmHypervisor, KvmVcpu, LoopExit, Vcpu, Vm};

/// The guest image the build script built.
const PAGING_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/paging.elf"));
/// Guest memory.
const MEMORY: u64 = 32 << 20;
/// How long the guest may run in all before the test fails.
const LIMIT: Duration = Duration::from_secs(60);

// The guest's layout, as guests/paging/src/main.rs documents it. `W` (the work area) is the
// root table's address; the data pages start at `D = W + DATA_OFFSET`.
/// The port the guest writes the root's address to once its tables are live.
const READY_PORT: u16 = 0x500;
const IMAGE_START: u64 = 0x10_0000;
const WORK_LEN: u64 = 8 << 20;
const DATA_OFFSET: u64 = 2 << 20;
const MIXED: u64 = 0x2_003f_f000;
const MIXED_DATA: u64 = 0x1f_f000;
const MIXED_LEN: u64 = 0x20_2000;
const READ_ONLY: u64 = 0x7fff_ffff_b000;
const RO_DATA: u64 = 0x1000;
const HOLE: u64 = 0x7fff_ffff_c000;
const USER: u64 = 0x7fff_ffff_d000;
const USER_DATA: u64 = 0x2000;
const USER_LEN: u64 = 0x3000;
const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
const DIRECT_MAP_LEN: u64 = 1 << 30;
const TOP: u64 = 0xffff_ffff_ffe0_0000;
const TOP_LEN: u64 = 2 << 20;
/// The guest writes `ALIAS_PATTERN + i` through the first address of its alias check `i`.
const ALIAS_PATTERN: u64 = 0x5041_4749_4e47_0000;

const PAGE: u64 = 0x1000;
const MIB_2: u64 = 2 << 20;
/// Offsets probed in every page: each side of both boundaries and the middle.
const PAGE_OFFSETS: [u64; 4] = [0, 1, 0x800, 0xfff];
/// Pseudo-random addresses of each kind.
const RANDOM_PER_KIND: usize = 1000;

/// How a mapping's pages are sized.
#[derive(Clone, Copy, Debug)]
enum Pages {
    Uniform(PageSize),
    /// A 4 KiB page at each end, 2 MiB pages between.
    MixedEnds,
}

/// One mapping of the guest's tables.
#[derive(Clone, Copy, Debug)]
struct Mapping {
    name: &'static str,
    virt: u64,
    phys: u64,
    len: u64,
    pages: Pages,
    flags: PteFlags,
}

impl Mapping {
    fn contains(&self, gva: u64) -> bool {
        gva.wrapping_sub(self.virt) < self.len
    }

    fn page_size(&self, gva: u64) -> PageSize {
        match self.pages {
            Pages::Uniform(size) => size,
            Pages::MixedEnds => {
                let offset = gva - self.virt;
                if offset < PAGE || offset >= self.len - PAGE {
                    PageSize::Size4K
                } else {
                    PageSize::Size2M
                }
            }
        }
    }
}

/// The guest's mappings, for the work area `work`, an image ending at `image_end`, and 1 GiB
/// pages allowed or not.
fn mappings(work: u64, image_end: u64, gbpages: bool) -> [Mapping; 8] {
    let data = work + DATA_OFFSET;
    let m = |name, virt, phys, len, pages, flags| Mapping {
        name,
        virt,
        phys,
        len,
        pages,
        flags,
    };
    let small = Pages::Uniform(PageSize::Size4K);
    let large = Pages::Uniform(PageSize::Size2M);
    let direct = Pages::Uniform(if gbpages {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    });
    let mixed = Pages::MixedEnds;
    let (ro, rwx) = (PteFlags::NO_EXECUTE, PteFlags::WRITABLE);
    let rw_nx = PteFlags::WRITABLE | PteFlags::NO_EXECUTE;
    let user = PteFlags::USER | rw_nx;
    let image_len = image_end.next_multiple_of(PAGE) - IMAGE_START;
    [
        m("low", PAGE, PAGE, IMAGE_START - PAGE, small, rw_nx),
        m("image", IMAGE_START, IMAGE_START, image_len, small, rwx),
        m("work", work, work, WORK_LEN, large, rw_nx),
        m("mixed", MIXED, data + MIXED_DATA, MIXED_LEN, mixed, rw_nx),
        m("read-only", READ_ONLY, data + RO_DATA, PAGE, small, ro),
        m("user", USER, data + USER_DATA, USER_LEN, small, user),
        m("direct", DIRECT_MAP, 0, DIRECT_MAP_LEN, direct, rw_nx),
        m("top", TOP, data, TOP_LEN, large, ro),
    ]
}

/// The guest's alias checks: (address written, address read back).
fn alias_checks(work: u64) -> [(u64, u64); 7] {
    let data = work + DATA_OFFSET;
    [
        (DIRECT_MAP + data + 0x20, data + 0x20),
        (data + 0x30, TOP + 0x30),
        (MIXED, data + MIXED_DATA),
        (MIXED + PAGE, data + MIXED_DATA + PAGE),
        (MIXED + MIXED_LEN - 8, data + MIXED_DATA + MIXED_LEN - 8),
        (data + RO_DATA + 0x10, READ_ONLY + 0x10),
        (USER + 0x1008, data + USER_DATA + 0x1008),
    ]
}

/// Every probe offset of every page in `[start, end)` (both 4 KiB aligned; `end == 0` means
/// the top of the address space).
fn pages(start: u64, end: u64, out: &mut Vec<u64>) {
    let mut page = start;
    loop {
        out.extend(PAGE_OFFSETS.map(|offset| page + offset));
        page = page.wrapping_add(PAGE);
        if page == end || page == 0 {
            break;
        }
    }
}

/// The addresses compared, each once: around every mapping and hole, just past each one,
/// pseudo-random ones (canonical in both halves, inside each mapping, non-canonical), and
/// listed non-canonical ones.
fn addresses(maps: &[Mapping]) -> Vec<u64> {
    let mut out = Vec::new();
    // Two pages either side of every mapping: the holes between them and what lies just past.
    // The direct map is too large for every page: its ends, and both sides of every 2 MiB
    // boundary inside it.
    for m in maps {
        let start = m.virt.saturating_sub(2 * PAGE);
        let end = m.virt.wrapping_add(m.len);
        let window_end = if end == 0 {
            0
        } else {
            end.saturating_add(2 * PAGE)
        };
        if m.len <= 16 << 20 {
            pages(start, window_end, &mut out);
        } else {
            pages(start, m.virt + 4 * PAGE, &mut out);
            pages(end - 4 * PAGE, window_end, &mut out);
            for boundary in (m.virt + MIB_2..end).step_by(MIB_2 as usize) {
                pages(boundary - PAGE, boundary + PAGE, &mut out);
            }
        }
    }
    // The holes inside mapped tables, and the pages around the null page.
    pages(HOLE - PAGE, HOLE + 2 * PAGE, &mut out);
    pages(0, 3 * PAGE, &mut out);
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..RANDOM_PER_KIND {
        let r = random.next();
        out.push(r & 0x7fff_ffff_ffff);
        out.push(r | 0xffff_8000_0000_0000);
        // Non-canonical: bits 63:48 anything but the sign extension of bit 47.
        let high = random.next() & 0xffff_0000_0000_0000;
        let bad = high | (r & 0xffff_ffff_ffff);
        out.push(if bad == canonical(bad) {
            bad ^ (1 << 60)
        } else {
            bad
        });
        for m in maps {
            out.push(m.virt + random.next() % m.len);
        }
    }
    let mixed_middle = MIXED + PAGE;
    out.extend([
        u64::MAX,
        0x8000_0000_0000,      // just past the user pages: non-canonical
        0xffff_7fff_ffff_ffff, // just below the upper half
        0x8000_0000_0000_0000, // bit 63 alone
        0x0001_0000_0000_0000 | mixed_middle, // the mixed 2 MiB page's indices
        DIRECT_MAP ^ (1 << 52), // the direct map's indices
        USER ^ (0xff << 56),   // the user pages' indices
    ]);
    out.sort_unstable();
    out.dedup();
    out
}

/// Guest output over COM1.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The exit handler: the devices on a dispatcher, plus the pauses the test asks for. A pause
/// sets the stop flag, so that the run loop returns before entering the guest again.
struct Harness {
    dispatcher: ExitDispatcher,
    stop: Arc<AtomicBool>,
    /// Pause after the next exit, whatever it is.
    pause_at_next_exit: AtomicBool,
    /// What the guest wrote to the ready port.
    ready: Mutex<Vec<Vec<u8>>>,
}

impl ExitHandler for Harness {
    fn handle_exit(&self, exit: VmExit<'_>) -> ExitAction {
        if self.pause_at_next_exit.swap(false, Ordering::Relaxed) {
            self.stop.store(true, Ordering::Release);
        }
        if let VmExit::IoOut {
            port: READY_PORT,
            data,
        } = &exit
        {
            self.ready.lock().unwrap().push(data.to_vec());
            self.stop.store(true, Ordering::Release);
            return ExitAction::Resume;
        }
        self.dispatcher.dispatch(exit)
    }
}

/// Stops the vCPU (stop flag and kick) if the test is not done within [`LIMIT`].
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(stop: Arc<AtomicBool>, kicker: impl Kick) -> Self {
        let (done, wait) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(LIMIT) {
                flag.store(true, Ordering::Release);
                stop.store(true, Ordering::Release);
                kicker.kick();
            }
        });
        Self {
            done: Some(done),
            fired,
        }
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    compared: usize,
    valid: usize,
    invalid: usize,
    non_canonical: usize,
    non_canonical_valid: usize,
    /// Valid translations by page size: 4 KiB, 2 MiB, 1 GiB.
    sizes: [usize; 3],
}

/// Compares the walker with KVM and with the guest's documented layout on every address.
fn compare(
    vcpu: &KvmVcpu,
    memory: &GuestMemoryMmap,
    paging: &X86Paging,
    maps: &[Mapping],
) -> Tally {
    let mut tally = Tally::default();
    for gva in addresses(maps) {
        tally.compared += 1;
        match agree_with_kvm(vcpu, memory, paging, gva) {
            Agreed::Valid(t) => {
                let m = maps
                    .iter()
                    .find(|m| m.contains(gva))
                    .unwrap_or_else(|| panic!("{gva:#x} translates ({t:x?}) but is not mapped"));
                assert_eq!(
                    (t.address, t.page_size),
                    (m.phys + (gva - m.virt), m.page_size(gva)),
                    "{gva:#x} in the {} mapping",
                    m.name
                );
                tally.valid += 1;
                tally.sizes[usize::from(t.page_size.level()) - 1] += 1;
            }
            Agreed::Invalid(fault) => {
                assert_eq!(fault.address, gva);
                assert_eq!(
                    fault.error_code, 0,
                    "{gva:#x}: not present, supervisor read"
                );
                let m = maps.iter().find(|m| m.contains(gva));
                assert!(m.is_none(), "{gva:#x} in {m:?} does not translate");
                tally.invalid += 1;
            }
            Agreed::NonCanonical { valid } => {
                tally.non_canonical += 1;
                tally.non_canonical_valid += usize::from(valid);
            }
        }
    }
    tally
}

/// The walker's verdict on `access` to `gva`.
fn walk(memory: &GuestMemoryMmap, paging: &X86Paging, gva: u64, access: Access) -> Translation {
    paging
        .probe(memory, gva, access)
        .unwrap_or_else(|e| panic!("{gva:#x} {access:?}: {e}"))
}

/// The error code of the page fault that `access` to `gva` raises.
fn fault(memory: &GuestMemoryMmap, paging: &X86Paging, gva: u64, access: Access) -> u32 {
    match paging.probe(memory, gva, access) {
        Err(WalkError::PageFault(fault)) => fault.error_code,
        other => panic!("{gva:#x} {access:?}: {other:x?}, expected a page fault"),
    }
}

/// The rights the guest asked for, as the walker sees them (KVM_TRANSLATE reports none).
fn check_rights(memory: &GuestMemoryMmap, paging: &X86Paging, maps: &[Mapping]) {
    use PageFault as F;
    let fetch = Access::fetch(Privilege::Supervisor);
    let write = Access::write(Privilege::Supervisor);
    let user_read = Access::read(Privilege::User);
    for m in maps {
        let at = m.virt + m.len / 2;
        if m.flags.contains(PteFlags::NO_EXECUTE) {
            let code = fault(memory, paging, at, fetch);
            assert_eq!(code, F::PRESENT | F::FETCH, "{}", m.name);
        } else {
            walk(memory, paging, at, fetch);
        }
        if m.flags.contains(PteFlags::WRITABLE) {
            walk(memory, paging, at, write);
        } else {
            // CR0.WP is set: supervisor writes honour R/W.
            let code = fault(memory, paging, at, write);
            assert_eq!(code, F::PRESENT | F::WRITE, "{}", m.name);
        }
        if m.flags.contains(PteFlags::USER) {
            walk(memory, paging, at, user_read);
        } else {
            let code = fault(memory, paging, at, user_read);
            assert_eq!(code, F::PRESENT | F::USER, "{}", m.name);
        }
    }
}

#[test]
fn walker_agrees_with_kvm_translate_on_tables_the_guest_built() {
    if !kvm_available() {
        return;
    }
    let started = Instant::now();
    let kvm = KvmHypervisor::new().unwrap();
    let gbpages = kvm.supported_page_sizes().contains(PageSize::Size1G);
    let layout = GuestLayout::new(MEMORY).unwrap();
    let memory = layout.create_guest_memory().unwrap();
    let cmdline = format!("paging.1g={}", u8::from(gbpages));
    let boot = load_pvh(
        &memory,
        layout.memory_map(),
        PAGING_ELF,
        &PvhConfig::new(&cmdline),
    )
    .unwrap();
    let vm = kvm.create_vm(&layout, &memory).unwrap();

    let console = Console::default();
    let io_bus = Arc::new(IoBus::new());
    let serial = SerialDevice::new(CountingTrigger::new(), console.clone());
    io_bus
        .register_named(
            COM1_PORT..COM1_PORT + SERIAL_PORT_LEN,
            "com1",
            Arc::new(serial),
        )
        .unwrap();
    let debug_exit = DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + DEBUG_EXIT_PORT_LEN;
    io_bus
        .register_named(debug_exit, "debug-exit", Arc::new(DebugExit::new()))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let harness = Harness {
        dispatcher: ExitDispatcher::new(io_bus, Arc::new(MmioBus::new())),
        stop: stop.clone(),
        pause_at_next_exit: AtomicBool::new(true),
        ready: Mutex::new(Vec::new()),
    };
    let mut vcpu = vm.create_vcpu(0, 1).unwrap();
    vcpu.setup_pvh(boot.entry, boot.start_info).unwrap();
    let watchdog = Watchdog::new(stop.clone(), vcpu.kicker());
    let run = |vcpu: &mut KvmVcpu| {
        let result = vcpu.run_loop(&harness, &stop).unwrap();
        stop.store(false, Ordering::Release);
        assert!(
            !watchdog.fired(),
            "the guest ran longer than {LIMIT:?}: {}",
            console.text()
        );
        result
    };

    // The first exit (the guest's first console byte) comes before it builds anything: the
    // vCPU runs on guest-rt's static tables, which lie in the image and map page 0.
    assert_eq!(run(&mut vcpu), LoopExit::StopRequested);
    let boot_cr3 = vcpu.special_registers().unwrap().cr3;
    assert!(
        (IMAGE_START..boot.image_end.0).contains(&boot_cr3),
        "{boot_cr3:#x} is not in the image"
    );
    assert_eq!(vcpu.translate(0).unwrap(), Some(0));

    // Then it builds its tables, switches to them and says so.
    let building = Instant::now();
    let paused = run(&mut vcpu);
    let build_time = building.elapsed();
    assert_eq!(paused, LoopExit::StopRequested, "{}", console.text());
    let ready = harness.ready.lock().unwrap().clone();
    assert_eq!(
        ready.len(),
        1,
        "ready writes {ready:x?}; console: {}",
        console.text()
    );
    let root = u64::from(u32::from_le_bytes(ready[0].as_slice().try_into().unwrap()));
    let sregs = vcpu.special_registers().unwrap();
    assert_eq!(sregs.cr3, root, "CR3 is the root the guest announced");
    assert_ne!(sregs.cr3, boot_cr3, "the guest left guest-rt's tables");
    assert_eq!(
        vcpu.translate(0).unwrap(),
        None,
        "the null page is a hole now"
    );
    // The root is the first frame of the work area: 2 MiB aligned, above the image, in RAM.
    let work = root;
    assert_eq!(work % MIB_2, 0, "{work:#x}");
    assert!(work >= boot.image_end.0, "{work:#x}");
    assert!(
        layout
            .memory_map()
            .iter()
            .any(|e| e.kind == MemoryKind::Ram && e.addr <= work && work + WORK_LEN <= e.end()),
        "the work area {work:#x} is not usable RAM"
    );

    let rflags = vcpu.registers().unwrap().rflags;
    let paging = X86Paging::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, rflags)
        .with_max_phys_bits(max_phys_bits(&kvm))
        .with_gbpages(gbpages);
    assert!(
        paging.format.nxe && paging.wp && !paging.format.five_level,
        "{paging:?}"
    );
    let maps = mappings(work, boot.image_end.0, gbpages);

    let compare_started = Instant::now();
    let tally = compare(&vcpu, &memory, &paging, &maps);
    let compare_time = compare_started.elapsed();
    eprintln!("guest built its tables in {build_time:?}; compared {tally:?} in {compare_time:?}");
    assert!(tally.valid > 20_000 && tally.invalid > 1_500, "{tally:?}");
    assert!(tally.non_canonical > RANDOM_PER_KIND, "{tally:?}");
    assert!(tally.non_canonical_valid >= 3, "{tally:?}");
    assert!(tally.sizes[0] > 0 && tally.sizes[1] > 0, "{tally:?}");
    assert_eq!(tally.sizes[2] > 0, gbpages, "{tally:?}");
    check_rights(&memory, &paging, &maps);

    // What the guest wrote through each alias is in guest memory where the walker says both
    // addresses of the pair lead.
    let supervisor_read = Access::read(Privilege::Supervisor);
    for (index, (write, read)) in (0u64..).zip(alias_checks(work)) {
        let gpa = walk(&memory, &paging, write, supervisor_read).address;
        assert_eq!(walk(&memory, &paging, read, supervisor_read).address, gpa);
        let value: u64 = memory.read_obj(GuestAddress(gpa)).unwrap();
        assert_eq!(value, ALIAS_PATTERN + index, "alias {write:#x} -> {gpa:#x}");
    }

    // Finally the guest runs to its debug exit.
    let end = run(&mut vcpu);
    let output = console.text();
    assert_eq!(
        end,
        LoopExit::Stopped(StopReason::GuestExit(0)),
        "console: {output}"
    );
    assert!(output.contains("alias checks ok"), "{output}");
    drop(watchdog);
    eprintln!("{output}total {:?}", started.elapsed());
}
