//! Cost of the device side of a port exit: what a guest pays on top of the exit itself.

use std::hint::black_box;
use std::io::sink;

use criterion::{Criterion, criterion_group, criterion_main};
use vmkit_devices::cmos::{CMOS_PORT, REG_SECONDS};
use vmkit_devices::i8042::I8042_COMMAND_PORT;
use vmkit_devices::serial::{COM1_PORT, LSR_OFFSET};
use vmkit_devices::{CmosRtc, DebugExit, I8042Device, NoopTrigger, SerialDevice};
use vmkit_exits::{PioAddress, PioDevice};

fn devices(c: &mut Criterion) {
    let serial = SerialDevice::new(NoopTrigger, sink());
    c.bench_function("serial_thr_write", |b| {
        b.iter(|| serial.pio_write(PioAddress(COM1_PORT), 0, black_box(b"x")))
    });
    c.bench_function("serial_lsr_read", |b| {
        let mut data = [0u8];
        b.iter(|| serial.pio_read(PioAddress(COM1_PORT), LSR_OFFSET, black_box(&mut data)))
    });

    let rtc = CmosRtc::new(1 << 30, 0);
    rtc.pio_write(PioAddress(CMOS_PORT), 0, &[REG_SECONDS]);
    c.bench_function("cmos_seconds_read", |b| {
        let mut data = [0u8];
        b.iter(|| rtc.pio_read(PioAddress(CMOS_PORT), 1, black_box(&mut data)))
    });

    let i8042 = I8042Device::new(NoopTrigger);
    c.bench_function("i8042_status_read", |b| {
        let mut data = [0u8];
        b.iter(|| i8042.pio_read(PioAddress(I8042_COMMAND_PORT), 0, black_box(&mut data)))
    });

    let debug_exit = DebugExit::new();
    c.bench_function("debug_exit_write", |b| {
        b.iter(|| debug_exit.pio_write(PioAddress(0xF4), 0, black_box(&[0, 0, 0, 0])))
    });
}

criterion_group!(benches, devices);
criterion_main!(benches);
