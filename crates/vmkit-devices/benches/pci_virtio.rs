//! Cost of the device side of PCI and virtio-blk exits: a configuration cycle, and a virtio-blk
//! request from its notifying write to its used-ring entry (what a polling driver waits for).

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vm_memory::{Bytes, GuestAddress};
use vmkit_devices::virtio::driver::{self, BusBar0, DESC_F_NEXT, DESC_F_WRITE, Ring};
use vmkit_devices::virtio::{F_VERSION_1, VirtioPciInterrupts, common_cfg};
use vmkit_devices::{MemDisk, PciRoot, VirtioBlock, VirtioPciDevice};
use vmkit_exits::{IoBus, MmioAddress, MmioBus, PioAddress};
use vmkit_memory::GuestLayout;

const HDR: u64 = 0x4000;
const STATUS: u64 = 0x5000;
const DATA: u64 = 0x10_0000;

struct Machine {
    io: Arc<IoBus>,
    mmio: Arc<MmioBus>,
    ring: Ring,
    bar: u64,
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
        let ring = Ring::new(&memory, 256);
        let mut bar0 = BusBar0 {
            bus: &mmio,
            base: bar,
        };
        driver::init(&mut bar0, F_VERSION_1, &[ring.config()]).expect("features accepted");
        Self {
            io,
            mmio,
            ring,
            bar,
        }
    }

    /// Puts a read of `len` bytes at sector 8 in descriptors 0..=2.
    fn prepare_read(&self, len: u32) {
        let mut header = [0u8; 16];
        header[8..].copy_from_slice(&8u64.to_le_bytes());
        self.ring
            .mem
            .write_slice(&header, GuestAddress(HDR))
            .expect("header");
        self.ring.set_desc(0, HDR, 16, DESC_F_NEXT, 1);
        self.ring
            .set_desc(1, DATA, len, DESC_F_WRITE | DESC_F_NEXT, 2);
        self.ring.set_desc(2, STATUS, 1, DESC_F_WRITE, 3);
    }

    /// Publishes the chain at 0 and notifies; the request is complete on return.
    fn submit(&mut self) {
        self.ring.publish(0);
        let mut bar0 = BusBar0 {
            bus: &self.mmio,
            base: self.bar,
        };
        driver::notify(&mut bar0, 0);
    }
}

fn pci_virtio(c: &mut Criterion) {
    let mut m = Machine::new();
    c.bench_function("pci_config_dword_read_cf8_cfc", |b| {
        let mut data = [0u8; 4];
        b.iter(|| {
            m.io.write(PioAddress(0xCF8), &0x8000_0800u32.to_le_bytes());
            m.io.read(PioAddress(0xCFC), black_box(&mut data));
        })
    });
    c.bench_function("virtio_common_cfg_status_read", |b| {
        let mut data = [0u8; 1];
        b.iter(|| {
            m.mmio.read(
                MmioAddress(m.bar + common_cfg::DEVICE_STATUS),
                black_box(&mut data),
            )
        })
    });
    let mut group = c.benchmark_group("virtio_blk_read_notify_to_used");
    for len in [512u32, 4096, 65536] {
        m.prepare_read(len);
        group.throughput(Throughput::Bytes(u64::from(len)));
        group.bench_function(format!("{len}B"), |b| b.iter(|| m.submit()));
    }
    group.finish();
    assert_eq!(
        m.ring.used_idx(),
        m.ring.avail_idx(),
        "every request completed inside its notification"
    );
}

criterion_group!(benches, pci_virtio);
criterion_main!(benches);
