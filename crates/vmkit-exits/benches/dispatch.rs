//! The cost of dispatching an exit (with its always-on statistics) against a bare bus lookup.
//!
//! Both buses hold 32 ranges so the lookups walk a realistic tree.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vmkit_exits::{
    BusRange, DeviceAction, ExitDispatcher, IoBus, MmioAddress, MmioBus, MmioDevice, PioAddress,
    PioDevice, VmExit,
};

/// A device that does nothing.
struct Sink;

impl PioDevice for Sink {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _base: PioAddress, _offset: u16, _data: &[u8]) -> DeviceAction {
        DeviceAction::Resume
    }
}

impl MmioDevice for Sink {
    fn mmio_read(&self, _base: MmioAddress, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _base: MmioAddress, _offset: u64, _data: &[u8]) -> DeviceAction {
        DeviceAction::Resume
    }
}

fn setup() -> ExitDispatcher {
    let pio = Arc::new(IoBus::new());
    let mmio = Arc::new(MmioBus::new());
    let sink = Arc::new(Sink);
    for i in 0..32u16 {
        pio.register(BusRange::new(PioAddress(0x100 + i * 0x10), 8), sink.clone())
            .expect("free");
        mmio.register(
            BusRange::new(MmioAddress(0xd000_0000 + u64::from(i) * 0x1000), 0x1000),
            sink.clone(),
        )
        .expect("free");
    }
    ExitDispatcher::new(pio, mmio)
}

fn bench(c: &mut Criterion) {
    let d = setup();
    let port = 0x100 + 17 * 0x10 + 4;
    c.bench_function("io_bus lookup", |b| {
        b.iter(|| black_box(d.io_bus().lookup(black_box(PioAddress(port)), 1)))
    });
    c.bench_function("dispatch io-out", |b| {
        b.iter(|| {
            d.dispatch(VmExit::IoOut {
                port: black_box(port),
                data: black_box(&[0x41]),
            })
        })
    });
    c.bench_function("dispatch io-in", |b| {
        let mut data = [0u8; 1];
        b.iter(|| {
            d.dispatch(VmExit::IoIn {
                port: black_box(port),
                data: &mut data,
            })
        })
    });
    c.bench_function("dispatch mmio-write", |b| {
        b.iter(|| {
            d.dispatch(VmExit::MmioWrite {
                addr: black_box(0xd001_1008),
                data: black_box(&[1, 2, 3, 4]),
            })
        })
    });
    c.bench_function("dispatch io-out unclaimed", |b| {
        b.iter(|| {
            d.dispatch(VmExit::IoOut {
                port: black_box(0x80),
                data: black_box(&[0]),
            })
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
