//! Cost of the device side of PCI and virtio-blk exits: a configuration cycle, and a virtio-blk
//! request from its notifying write to its used-ring entry (what a polling driver waits for).

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_devices::virtio::VirtioPciInterrupts;
use vmkit_devices::{MemDisk, PciRoot, VirtioBlock, VirtioPciDevice};
use vmkit_exits::{IoBus, MmioBus};
use vmkit_memory::GuestLayout;

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x4000;
const STATUS: u64 = 0x5000;
const DATA: u64 = 0x10_0000;

struct Machine {
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    memory: GuestMemoryMmap,
    bar: u64,
    avail_idx: u16,
}

impl Machine {
    fn new() -> Self {
        let layout = GuestLayout::new(64 << 20).expect("layout");
        let memory = layout.create_guest_memory().expect("memory");
        let mut allocators = layout.allocators().expect("allocators");
        let io = Arc::new(IoBus::new());
        let mmio = Arc::new(MmioBus::new());
        let root = PciRoot::new(&io, &mmio).expect("root");
        let blk = VirtioPciDevice::new(
            VirtioBlock::new(MemDisk::new(vec![0x5A; 16 << 20], false)),
            memory.clone(),
            VirtioPciInterrupts::default(),
        )
        .expect("device");
        let slot = root
            .add_device("vda", Arc::new(Mutex::new(blk)), &mut allocators)
            .expect("slot");
        let bar = root.placed_bars(slot)[0].address;
        let m = Self {
            io,
            mmio,
            memory,
            bar,
            avail_idx: 0,
        };
        for (offset, value) in [
            (0x14, &[0u8][..]),
            (0x14, &[3]),
            (0x08, &1u32.to_le_bytes()),
            (0x0C, &1u32.to_le_bytes()),
            (0x14, &[0xB]),
            (0x18, &256u16.to_le_bytes()),
            (0x20, &DESC.to_le_bytes()),
            (0x28, &AVAIL.to_le_bytes()),
            (0x30, &USED.to_le_bytes()),
            (0x1C, &1u16.to_le_bytes()),
            (0x14, &[0xF]),
        ] {
            m.mmio.write(bar + offset, value);
        }
        m
    }

    /// Puts a read of `len` bytes at sector 8 in descriptors 0..=2.
    fn prepare_read(&self, len: u32) {
        let mut header = [0u8; 16];
        header[8..].copy_from_slice(&8u64.to_le_bytes());
        self.memory
            .write_slice(&header, GuestAddress(HDR))
            .expect("header");
        for (i, (addr, size, flags)) in [(HDR, 16, 1u16), (DATA, len, 3), (STATUS, 1, 2)]
            .into_iter()
            .enumerate()
        {
            let base = DESC + 16 * i as u64;
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&size.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            self.memory
                .write_slice(&raw, GuestAddress(base))
                .expect("descriptor");
        }
    }

    /// Publishes the chain at 0 and notifies; the request is complete on return.
    fn submit(&mut self) {
        let slot = u64::from(self.avail_idx % 256);
        self.memory
            .write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * slot))
            .expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .expect("idx");
        self.mmio.write(self.bar + 0x3000, &0u16.to_le_bytes());
    }
}

fn pci_virtio(c: &mut Criterion) {
    let mut m = Machine::new();
    c.bench_function("pci_config_dword_read_cf8_cfc", |b| {
        let mut data = [0u8; 4];
        b.iter(|| {
            m.io.write(0xCF8, &0x8000_0800u32.to_le_bytes());
            m.io.read(0xCFC, black_box(&mut data));
        })
    });
    c.bench_function("virtio_common_cfg_status_read", |b| {
        let mut data = [0u8; 1];
        b.iter(|| m.mmio.read(m.bar + 0x14, black_box(&mut data)))
    });
    let mut group = c.benchmark_group("virtio_blk_read_notify_to_used");
    for len in [512u32, 4096, 65536] {
        m.prepare_read(len);
        group.throughput(Throughput::Bytes(u64::from(len)));
        group.bench_function(format!("{len}B"), |b| b.iter(|| m.submit()));
    }
    group.finish();
    let used: u16 = m.memory.read_obj(GuestAddress(USED + 2)).expect("used");
    assert_eq!(
        used, m.avail_idx,
        "every request completed inside its notification"
    );
}

criterion_group!(benches, pci_virtio);
criterion_main!(benches);
