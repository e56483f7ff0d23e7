//! End-to-end tests of `--disk` and `--firmware`: guests that find the virtio-blk devices on the
//! PCI bus and read a sector through the queue, and the one-line errors for images that cannot
//! be used.
//!
//! They need `/dev/kvm` (same rule as the other KVM tests: `VMKIT_SKIP_KVM_TESTS=1` skips them),
//! except the error cases caught before the VM exists.

#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Finished, kvm_available, run_with_limit};
use vmkit_boot::elf::ElfBuilder;
use vmkit_memory::vm_memory::GuestAddress;

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
const VMM_ERROR: i32 = 125;
const SIGTERM: i32 = 143;
const LIMIT: Duration = Duration::from_secs(60);

/// Where the test firmware's code is linked and entered (32-bit protected mode, paging off).
const CODE: u32 = 0x10_0000;
/// The shared failure exit: `out 0xf4, eax` with the status the last check left in ESI.
const FAIL: u32 = CODE + 0xF00;
/// The virtqueue and request buffers of the read test, in a data segment.
const DESC: u32 = 0x20_0000;
const AVAIL: u32 = DESC + 0x100;
const USED: u32 = DESC + 0x200;
const HEADER: u32 = 0x20_1000;
const DATA: u32 = 0x20_2000;
const STATUS: u32 = 0x20_3000;
/// Descriptor tables for the MSI-X test: a flat GDT (code 0x10, data 0x18, the PVH selectors),
/// the GDTR and IDTR, and an IDT whose only gate, vector [`MSI_VECTOR`], leads to [`HANDLER`].
const GDT: u32 = 0x20_4000;
const GDTR: u32 = GDT + 0x100;
const IDTR: u32 = GDT + 0x110;
const IDT: u32 = 0x20_5000;
const STACK_TOP: u32 = 0x20_8000;
const MSI_VECTOR: u32 = 0x40;
/// The interrupt handler: ends the VM with status 0 (it does not return: where KVM emulates
/// guest code, its emulator has no protected-mode `iret`).
const HANDLER: u32 = CODE + 0xE00;
/// What the test images hold in their first bytes.
const MAGIC: &[u8; 8] = b"VMKITDSK";

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmkit-disks-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A `sectors`-sector image starting with [`MAGIC`].
    fn image(&self, name: &str, sectors: usize) -> String {
        let mut bytes = vec![0u8; sectors * 512];
        bytes[..MAGIC.len()].copy_from_slice(MAGIC);
        self.file(name, &bytes)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 32-bit machine code with checks that jump to [`FAIL`] with a status.
struct Asm(Vec<u8>);

impl Asm {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn emit(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn imm(&mut self, opcode: &[u8], value: u32) -> &mut Self {
        self.emit(opcode).emit(&value.to_le_bytes())
    }

    /// `mov esi, status`: the status a failing check reports.
    fn status(&mut self, status: u32) -> &mut Self {
        self.imm(&[0xBE], status)
    }

    /// `jcc FAIL` (0x85 jne, 0x84 je).
    fn fail_if(&mut self, cc: u8) -> &mut Self {
        let next = CODE + self.0.len() as u32 + 6;
        self.emit(&[0x0F, cc]);
        let rel = FAIL.wrapping_sub(next);
        self.emit(&rel.to_le_bytes())
    }

    /// `eax = config dword at (slot, register)` through 0xCF8/0xCFC.
    fn config_read(&mut self, slot: u32, register: u32) -> &mut Self {
        self.imm(&[0xB8], 0x8000_0000 | (slot << 11) | register)
            .emit(&[0x66, 0xBA, 0xF8, 0x0C, 0xEF]) // mov dx, 0xcf8; out dx, eax
            .emit(&[0x66, 0xBA, 0xFC, 0x0C, 0xED]) // mov dx, 0xcfc; in eax, dx
    }

    /// Checks that `slot` holds a modern virtio-blk device with a 64-bit BAR 0 below 4 GiB;
    /// leaves the BAR's address in EBX. Statuses `base`, `base + 1`.
    fn find_disk(&mut self, slot: u32, base: u32) -> &mut Self {
        self.status(base)
            .config_read(slot, 0)
            .imm(&[0x3D], 0x1042_1AF4) // cmp eax, 1af4:1042
            .fail_if(0x85)
            .status(base + 1)
            .config_read(slot, 0x14)
            .emit(&[0x85, 0xC0]) // test eax, eax: the high dword is 0
            .fail_if(0x85)
            .config_read(slot, 0x10)
            .emit(&[0x83, 0xE0, 0xF0, 0x89, 0xC3]) // and eax, ~0xf; mov ebx, eax
            .emit(&[0x85, 0xC0])
            .fail_if(0x84)
    }

    /// Checks the device's capacity (sectors, low dword) and read-only feature bit. Statuses
    /// `base`, `base + 1`.
    fn check_disk(&mut self, sectors: u32, readonly: bool, base: u32) -> &mut Self {
        self.status(base)
            .emit(&[0x8B, 0x83, 0x00, 0x20, 0x00, 0x00]) // mov eax, [ebx + 0x2000]
            .imm(&[0x3D], sectors)
            .fail_if(0x85)
            .status(base + 1)
            .emit(&[0xC7, 0x03, 0, 0, 0, 0]) // device_feature_select = 0
            .emit(&[0x8B, 0x43, 0x04]) // mov eax, [ebx + 4]
            .emit(&[0xA8, 0x20]) // test al, VIRTIO_BLK_F_RO
            .fail_if(if readonly { 0x84 } else { 0x85 })
    }

    /// Drives the device at EBX through initialisation and one read of sector 0, polling the
    /// used ring; checks the status byte, the data and the ISR (INTx# mode). Statuses
    /// `base..base + 5`.
    fn read_sector_zero(&mut self, base: u32) -> &mut Self {
        self.init_queue(base, false)
            .notify()
            .status(base + 1)
            .imm(&[0x66, 0x83, 0x3D], USED + 2) // cmp word [used.idx], 1
            .emit(&[1])
            .fail_if(0x85)
            .status(base + 2)
            .imm(&[0x80, 0x3D], STATUS) // cmp byte [status], 0 (VIRTIO_BLK_S_OK)
            .emit(&[0])
            .fail_if(0x85)
            .status(base + 3)
            .imm(&[0x81, 0x3D], DATA) // cmp dword [data], "VMKI"
            .emit(&MAGIC[..4])
            .fail_if(0x85)
            .status(base + 4)
            .emit(&[0x8A, 0x83, 0x00, 0x10, 0x00, 0x00, 0x3C, 0x01]) // cmp byte [ISR], 1
            .fail_if(0x85)
    }

    /// Puts the request in the available ring and notifies queue 0.
    fn notify(&mut self) -> &mut Self {
        self.imm(&[0x66, 0xC7, 0x05], AVAIL + 2) // avail.idx = 1
            .emit(&[1, 0])
            .emit(&[0xC7, 0x83, 0x00, 0x30, 0x00, 0x00, 0, 0, 0, 0]) // notify queue 0
    }

    /// Resets and initialises the device at EBX with queue 0 of 8 entries, mapped to MSI-X
    /// vector 0 when `msix` is set. Status `base`.
    fn init_queue(&mut self, base: u32, msix: bool) -> &mut Self {
        self.emit(&[0xC6, 0x43, 0x14, 0x00]) // status = 0 (reset)
            .emit(&[0xC6, 0x43, 0x14, 0x01]) // ACKNOWLEDGE
            .emit(&[0xC6, 0x43, 0x14, 0x03]) // DRIVER
            .emit(&[0xC7, 0x43, 0x08, 1, 0, 0, 0]) // driver_feature_select = 1
            .emit(&[0xC7, 0x43, 0x0C, 1, 0, 0, 0]) // VIRTIO_F_VERSION_1
            .emit(&[0xC6, 0x43, 0x14, 0x0B]) // FEATURES_OK
            .status(base)
            .emit(&[0x8A, 0x43, 0x14, 0x3C, 0x0B]) // cmp byte [ebx + 0x14], 0x0b
            .fail_if(0x85)
            .emit(&[0x66, 0xC7, 0x43, 0x16, 0, 0]) // queue_select = 0
            .emit(&[0x66, 0xC7, 0x43, 0x18, 8, 0]) // queue_size = 8
            .imm(&[0xC7, 0x43, 0x20], DESC)
            .imm(&[0xC7, 0x43, 0x28], AVAIL)
            .imm(&[0xC7, 0x43, 0x30], USED)
            .emit(&[0x66, 0xC7, 0x43, 0x1A]) // queue_msix_vector = 0 or NO_VECTOR
            .emit(&if msix { [0, 0] } else { [0xFF, 0xFF] })
            .emit(&[0x66, 0xC7, 0x43, 0x1C, 1, 0]) // queue_enable = 1
            .emit(&[0xC6, 0x43, 0x14, 0x0F]) // DRIVER_OK
    }

    /// Enables MSI-X on the device in `slot` (BAR at EBX), its first capability, and points
    /// table entry 0 at the boot APIC with [`MSI_VECTOR`]. Statuses `base`, `base + 1`.
    fn enable_msix(&mut self, slot: u32, base: u32) -> &mut Self {
        self.status(base)
            .config_read(slot, 0x34) // capabilities pointer
            .emit(&[0x25, 0xFC, 0, 0, 0]) // and eax, 0xfc
            .imm(&[0x0D], 0x8000_0000 | (slot << 11)) // or eax, config address
            .emit(&[0x89, 0xC1]) // mov ecx, eax
            .emit(&[0x66, 0xBA, 0xF8, 0x0C, 0xEF]) // mov dx, 0xcf8; out dx, eax
            .emit(&[0x66, 0xBA, 0xFC, 0x0C, 0xED]) // mov dx, 0xcfc; in eax, dx
            .emit(&[0x3C, 0x11]) // cmp al, MSI-X
            .fail_if(0x85)
            .imm(&[0x0D], 0x8000_0000) // or eax, MSI-X enable (message control bit 15)
            .emit(&[0x89, 0xC6]) // mov esi, eax
            .emit(&[0x89, 0xC8, 0x66, 0xBA, 0xF8, 0x0C, 0xEF]) // CONFIG_ADDRESS = ecx
            .emit(&[0x89, 0xF0, 0x66, 0xBA, 0xFC, 0x0C, 0xEF]) // CONFIG_DATA = control
            .imm(&[0xC7, 0x83, 0x00, 0x40, 0x00, 0x00], 0xFEE0_0000) // entry 0 address
            .emit(&[0xC7, 0x83, 0x04, 0x40, 0x00, 0x00, 0, 0, 0, 0]) // address high
            .imm(&[0xC7, 0x83, 0x08, 0x40, 0x00, 0x00], MSI_VECTOR) // data: the vector
            .emit(&[0xC7, 0x83, 0x0C, 0x40, 0x00, 0x00, 0, 0, 0, 0]) // unmask
            .status(base + 1)
    }

    /// Loads the descriptor tables, a stack, and software-enables the local APIC.
    fn interrupt_setup(&mut self) -> &mut Self {
        self.imm(&[0xBC], STACK_TOP) // mov esp, STACK_TOP
            .imm(&[0x0F, 0x01, 0x15], GDTR) // lgdt [GDTR]
            .imm(&[0x0F, 0x01, 0x1D], IDTR) // lidt [IDTR]
            .emit(&[0xC7, 0x05, 0xF0, 0x00, 0xE0, 0xFE, 0xFF, 0x01, 0, 0]) // LAPIC SVR = 0x1ff
    }

    /// `out 0xf4, eax` with status 0, then the [`FAIL`] stub.
    fn finish(&mut self) -> Vec<u8> {
        self.emit(&[0x31, 0xC0, 0x66, 0xBA, 0xF4, 0x00, 0xEF, 0xF4]); // xor eax,eax; out; hlt
        assert!(self.0.len() < (HANDLER - CODE) as usize);
        let mut code = self.0.clone();
        code.resize((HANDLER - CODE) as usize, 0x90);
        code.extend_from_slice(&[0x31, 0xC0, 0x66, 0xBA, 0xF4, 0x00, 0xEF, 0xF4]);
        code.resize((FAIL - CODE) as usize, 0x90);
        code.extend_from_slice(&[0x89, 0xF0, 0x66, 0xBA, 0xF4, 0x00, 0xEF, 0xF4]); // eax = esi
        code
    }
}

/// The tests' data: a three-descriptor chain (header, 512-byte data, status) whose head is
/// the first entry of the available ring, an empty used ring, and the descriptor tables.
fn data_segment() -> Vec<u8> {
    let mut mem = vec![0u8; (IDT + 0x800 - DESC) as usize];
    let mut put = |addr: u32, bytes: &[u8]| {
        let at = (addr - DESC) as usize;
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    };
    for (i, (addr, len, flags, next)) in [
        (HEADER, 16u32, 1u16, 1u16),
        (DATA, 512, 1 | 2, 2),
        (STATUS, 1, 2, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = Vec::new();
        d.extend_from_slice(&u64::from(addr).to_le_bytes());
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        put(DESC + 16 * i as u32, &d);
    }
    put(STATUS, &[0xFF]);
    let gdt: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    for (i, entry) in gdt.iter().enumerate() {
        put(GDT + 8 * i as u32, &entry.to_le_bytes());
    }
    let mut gdtr = 31u16.to_le_bytes().to_vec();
    gdtr.extend_from_slice(&GDT.to_le_bytes());
    put(GDTR, &gdtr);
    let mut idtr = 0x7FFu16.to_le_bytes().to_vec();
    idtr.extend_from_slice(&IDT.to_le_bytes());
    put(IDTR, &idtr);
    let handler = u64::from(HANDLER);
    let gate = (handler & 0xFFFF) | (0x10 << 16) | (0x8E << 40) | ((handler >> 16) << 48);
    put(IDT + 8 * MSI_VECTOR, &gate.to_le_bytes());
    mem
}

fn firmware(dir: &TempDir, code: Vec<u8>) -> String {
    let elf = ElfBuilder::new()
        .segment(GuestAddress(CODE.into()), &code, 0x1000)
        .segment(GuestAddress(DESC.into()), &data_segment(), 0x8000)
        .pvh_entry(GuestAddress(CODE.into()))
        .build();
    dir.file("fw.elf", &elf)
}

fn vmm(args: &[&str]) -> Finished {
    let mut command = Command::new(VMM);
    command.args(args);
    run_with_limit(&mut command, LIMIT, "the reference VMM binary is missing")
}

fn one_line(out: &Finished) -> &str {
    let stderr = out.stderr.as_str();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(stderr.starts_with("reference-vmm: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn firmware_finds_two_disks_and_reads_a_sector() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("probe");
    let a = dir.image("a.img", 64);
    let b = dir.image("b.img", 2048);
    let mut asm = Asm::new();
    asm.find_disk(1, 10)
        .check_disk(64, false, 12)
        .read_sector_zero(20)
        .find_disk(2, 30)
        .check_disk(2048, true, 32)
        .status(40)
        .config_read(3, 0)
        .imm(&[0x3D], 0xFFFF_FFFF) // slot 3 is empty
        .fail_if(0x85);
    let fw = firmware(&dir, asm.finish());
    let out = vmm(&[
        "--firmware",
        &fw,
        "--disk",
        &format!("path={a}"),
        &format!("path={b},readonly=on"),
        "--stats",
        "--serial",
        "off",
    ]);
    let stderr = &out.stderr;
    assert_eq!(out.status, Some(0), "{stderr}");
    for needle in [
        "pci-config",
        "vda-bar0",
        "vdb-bar0",
        "vda: 1 requests (1 reads,",
        "512 bytes read",
        "1 INTx",
        "vdb: 0 requests",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
    }

    // The same counters in `--stats=json`, the document alone on stderr's one line.
    let out = vmm(&[
        "--firmware",
        &fw,
        "--disk",
        &format!("path={a}"),
        &format!("path={b},readonly=on"),
        "--stats=json",
        "--serial",
        "off",
    ]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let stats: serde_json::Value = serde_json::from_str(one_json_line(&out)).unwrap();
    let disks = stats["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{stats}");
    let vda = &disks[0];
    assert_eq!(vda["name"], "vda");
    assert_eq!(vda["busy"], false);
    assert_eq!(vda["requests"], 1);
    assert_eq!(vda["reads"], 1);
    assert_eq!(vda["writes"], 0);
    assert_eq!(vda["errors"], 0);
    assert_eq!(vda["bytes_read"], 512);
    assert_eq!(vda["intx_asserted"], 1);
    assert_eq!(disks[1]["name"], "vdb");
    assert_eq!(disks[1]["requests"], 0);
    let ranges = stats["mmio_ranges"].as_array().unwrap();
    for bar in ["vda-bar0", "vdb-bar0"] {
        assert!(
            ranges.iter().any(|r| r["name"] == bar),
            "no {bar} in {stats}"
        );
    }
}

/// A firmware boot from a disk, recorded: the sector read, its payload stored once, the DMA
/// into guest memory and the INTx line, each attributed to the exit that caused it.
#[test]
fn a_firmware_boot_from_a_disk_is_recorded() {
    use vmkit_exits::record::{
        Attribution, ContentHash, Data, Direction, DiskOp, LineEvent, Record, RecordReader,
        RecordedExit,
    };
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("record");
    let a = dir.image("a.img", 64);
    let mut asm = Asm::new();
    asm.find_disk(1, 10)
        .check_disk(64, false, 12)
        .read_sector_zero(20);
    let fw = firmware(&dir, asm.finish());
    let recording = dir.0.join("fw.vmrec");
    let out = vmm(&[
        "--firmware",
        &fw,
        "--disk",
        &format!("path={a}"),
        "--serial",
        "off",
        "--record-exits",
        recording.to_str().unwrap(),
    ]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let records = RecordReader::new(std::fs::File::open(&recording).unwrap())
        .unwrap()
        .read_all()
        .unwrap();
    let mut sector = vec![0u8; 512];
    sector[..MAGIC.len()].copy_from_slice(MAGIC);
    let hash = ContentHash::of(&sector);
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, Record::Payload { hash: h, bytes } if *h == hash && *bytes == sector))
            .count(),
        1
    );
    let read_at = records
        .iter()
        .find_map(|r| match r {
            Record::Disk {
                at: Attribution::Exit(seq),
                disk: 0,
                op: DiskOp::Read,
                offset: 0,
                len: 512,
                hash: Some(h),
                ok: true,
            } if *h == hash => Some(*seq),
            _ => None,
        })
        .expect("the sector read");
    // The notifying write carried the request: the DMA and the INTx assert happened in it.
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Exit(e) if e.seq == read_at && matches!(e.exit, RecordedExit::MmioWrite { .. })
    )));
    assert!(records.contains(&Record::Memory {
        at: Attribution::Exit(read_at),
        gpa: DATA.into(),
        direction: Direction::Write,
        data: Data::Stored { hash, len: 512 },
    }));
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Memory { at: Attribution::Exit(seq), gpa, direction: Direction::Read, data: Data::Inline(h) }
            if *seq == read_at && *gpa == u64::from(HEADER) && h.len() == 16
    )));
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Interrupt { at: Attribution::Exit(seq), event: LineEvent::Assert, ok: true, .. }
            if *seq == read_at
    )));
    // Reading ISR lowers the line, in a later exit.
    assert!(records.iter().any(|r| matches!(
        r,
        Record::Interrupt { at: Attribution::Exit(seq), event: LineEvent::Deassert, .. }
            if *seq > read_at
    )));

    // The recording replays against devices built anew, without the image: the sector comes
    // from the recording, and the DMA and the line are compared.
    std::fs::remove_file(&a).unwrap();
    let replayed = vmm(&["--replay", recording.to_str().unwrap()]);
    assert_eq!(replayed.status, Some(0), "{}", replayed.stderr);
    let line = one_line(&replayed);
    assert!(
        line.starts_with(&format!(
            "reference-vmm: replayed {}: ",
            recording.display()
        )),
        "{line}"
    );
    assert!(line.contains(" 1 disk calls;"), "{line}");
}

/// The one line on stderr, a JSON document (`--stats=json` of a VM that ended by itself).
fn one_json_line(out: &Finished) -> &str {
    let stderr = out.stderr.as_str();
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.starts_with('{') && stderr.ends_with("}\n"),
        "{stderr}"
    );
    stderr.trim_end()
}

#[test]
fn a_completed_request_raises_its_msix_vector() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("msix");
    let image = dir.image("msix.img", 8);
    let mut asm = Asm::new();
    asm.interrupt_setup()
        .find_disk(1, 10)
        .enable_msix(1, 20)
        .init_queue(30, true)
        .status(31)
        .emit(&[0x66, 0x83, 0x7B, 0x1A, 0x00]) // cmp word [queue_msix_vector], 0
        .fail_if(0x85)
        .notify()
        .emit(&[0xFB, 0xF4]) // sti; hlt: the handler ends the VM
        .status(32)
        .emit(&[0x31, 0xC0, 0x40, 0x85, 0xC0]) // xor eax, eax; inc eax; test eax, eax
        .fail_if(0x85); // woken without the interrupt
    let fw = firmware(&dir, asm.finish());
    let out = vmm(&[
        "--firmware",
        &fw,
        "--disk",
        &format!("path={image}"),
        "--stats",
        "--serial",
        "off",
        "--timeout",
        "20",
    ]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("1 MSI, 0 INTx"), "{}", out.stderr);
}

#[test]
fn two_read_only_users_share_an_image() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("shared");
    let image = dir.image("shared.img", 16);
    let mut asm = Asm::new();
    asm.find_disk(1, 10).check_disk(16, true, 12);
    let fw = firmware(&dir, asm.finish());
    let disk = format!("path={image},readonly=on");
    // The first VMM holds its shared lock while the second runs to the end.
    let mut first = Command::new(VMM)
        .args(["--firmware", &fw, "--disk", &disk, "--timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = vmm(&["--firmware", &fw, "--disk", &disk]);
    assert_eq!(second.status, Some(0), "{}", second.stderr);
    let _ = first.kill();
    let _ = first.wait();
}

/// `cli; hlt` after printing `R`: a guest that holds its disks until stopped.
fn ready_then_halt(dir: &TempDir) -> String {
    let code = vec![
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'R', 0xEE, // mov al, 'R'; out dx, al
        0xFA, 0xF4, 0xEB, 0xFD, // cli; hlt; jmp back
    ];
    firmware(dir, code)
}

#[test]
fn a_second_vmm_on_a_writable_image_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("locked");
    let image = dir.image("locked.img", 16);
    let fw = ready_then_halt(&dir);
    let disk = format!("path={image}");
    let mut first = Command::new(VMM)
        .args(["--firmware", &fw, "--disk", &disk, "--timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The guest runs only after the disks were opened and locked.
    let mut ready = [0u8; 1];
    first
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"R");

    for second_disk in [disk.clone(), format!("{disk},readonly=on")] {
        let out = vmm(&["--firmware", &fw, "--disk", &second_disk]);
        assert_eq!(out.status, Some(VMM_ERROR), "{second_disk}");
        let line = one_line(&out);
        assert!(line.contains("is locked by another process"), "{line}");
        assert!(line.contains("locked.img"), "{line}");
    }

    let pid = first.id() as libc::pid_t;
    // SAFETY: `pid` is a child this test spawned and has not yet reaped, so it names that
    // process; kill only sends it a signal.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    assert_eq!(first.wait().unwrap().code(), Some(SIGTERM));
}

/// Images that cannot be used: one line naming the image and the problem, status 125, before
/// the VM exists (so no KVM is needed).
#[test]
fn unusable_images_get_one_line_and_status_125() {
    let dir = TempDir::new("bad");
    let odd = dir.file("odd.img", &[0u8; 1000]);
    let fw = ready_then_halt(&dir);
    let missing = dir.0.join("missing.img");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("path={}", missing.display()),
            "missing.img does not exist",
        ),
        (
            format!("path={}", dir.0.display()),
            "cannot be opened or read",
        ),
        (
            format!("path={odd}"),
            "is 1000 bytes, not a multiple of 512",
        ),
        ("path=".to_string(), "empty path"),
        ("readonly=on".to_string(), "missing path"),
        (
            "path=x,readonly=maybe".to_string(),
            "readonly must be on or off",
        ),
        ("path=x,cache=off".to_string(), "unknown option"),
    ];
    for (disk, needle) in cases {
        let out = vmm(&["--firmware", &fw, "--disk", &disk]);
        assert_eq!(out.status, Some(VMM_ERROR), "{disk}");
        let line = one_line(&out);
        assert!(line.contains(needle), "{disk}: {line:?} lacks {needle:?}");
        assert!(line.contains("--disk"), "{line}");
    }

    let out = vmm(&["--firmware", &fw, "--kernel", &fw]);
    assert_eq!(out.status, Some(VMM_ERROR));
    assert!(one_line(&out).contains("--firmware"));
    let missing_fw = dir.0.join("nofw.elf");
    let out = vmm(&["--firmware", missing_fw.to_str().unwrap()]);
    assert_eq!(out.status, Some(VMM_ERROR));
    assert!(one_line(&out).contains("cannot read firmware"));
}

#[test]
fn help_lists_the_disk_and_firmware_flags() {
    let out = vmm(&["--help"]);
    assert_eq!(out.status, Some(0));
    for needle in ["--disk", "path=FILE[,readonly=on]", "--firmware"] {
        assert!(out.stdout.contains(needle), "help lacks {needle}");
    }
}
