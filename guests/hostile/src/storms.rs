//! Storms of accesses a guest can make without any driver: a COM1 flood, random port I/O,
//! random MMIO and random PCI configuration accesses, from the seeded generator.
//!
//! None may end the VM, so the storms leave alone what legitimately does: the debug-exit port,
//! the ACPI sleep and reset registers, the i8042's command port (reset pulses, output-port
//! writes) and a byte write to `0xcf9` (the reset control register of PC chipsets). Nor do they
//! touch what would only test the hypervisor's in-kernel devices or break the guest's own
//! footing: the PIC, PIT and ELCR (programming them only makes host timers fire), the IOAPIC,
//! HPET and local APIC pages, COM1 outside the flood (the console), the honest disk (its
//! configuration space, ECAM page and BARs), and the attacked disk's device-status register
//! (a random `DRIVER_OK` would let the device write to random guest memory). The attacked
//! function's configuration header is put back after the storms that may change it.

use guest_rt::Console;
use guest_rt::port::{inb, outb, outl};

use crate::io::{MMIO_TOP, port_read, port_write};
use crate::platform::{Extent, SavedHeader};
use crate::{Ctx, Stop};

/// COM1's base port.
const COM1: u16 = 0x3f8;
/// Bytes of the COM1 flood, written without waiting for the transmitter.
const FLOOD_BYTES: u64 = 4096;
/// Random accesses to COM1's other registers after the flood.
const UART_POKES: u64 = 512;
/// Random port accesses.
const PORT_OPS: u64 = 3000;
/// Random MMIO accesses.
const MMIO_OPS: u64 = 3000;
/// Random configuration accesses through CONFIG_ADDRESS/CONFIG_DATA.
const CONFIG_OPS: u64 = 2000;

/// UART registers (offsets from COM1) and bits the flood restores.
const IER: u16 = 1;
const LCR: u16 = 3;
const MCR: u16 = 4;
const LSR: u16 = 5;
const LSR_DATA_READY: u8 = 1;
/// Bytes read from the receive buffer at most when draining it.
const RX_DRAIN_MAX: u32 = 64;

/// CONFIG_ADDRESS and CONFIG_DATA.
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Port ranges `[start, end)` no storm access touches.
const PORTS_UNTOUCHED: [(u32, u32); 4] = [
    (0x3f8, 0x400), // COM1: the console (the flood has its own attack)
    (0xf4, 0xf8),   // debug exit: ends the VM
    (0x600, 0x604), // ACPI sleep control/status and reset registers
    (0xcf8, 0xd00), // PCI configuration mechanism (the config storm's), 0xcf9 reset control
];
/// Port ranges `[start, end)` the storm reads but never writes.
const PORTS_READ_ONLY: [(u32, u32); 5] = [
    (0x64, 0x65), // i8042 command: 0xfe and friends pulse reset, 0xd1 arms an output-port write
    (0x20, 0x22), // PIC 1 (in-kernel)
    (0xa0, 0xa2), // PIC 2 (in-kernel)
    (0x40, 0x44), // PIT (in-kernel)
    (0x4d0, 0x4d2), // ELCR (in-kernel)
];

/// A COM1 flood: [`FLOOD_BYTES`] printable bytes in lines of 64 written without looking at
/// the line status, then random reads and writes of the other UART registers (divisor latch,
/// loopback, interrupt enables, FIFO control, scratch), after which the line control, modem
/// control and interrupt enable registers are put back and the receive buffer drained.
pub fn serial(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let saved = [IER, LCR, MCR].map(|reg| (reg, inb(COM1 + reg)));
    for i in 0..FLOOD_BYTES {
        let byte = if i % 64 == 63 {
            b'\n'
        } else {
            b'!' + ctx.rng.below(94) as u8
        };
        outb(COM1, byte);
    }
    for _ in 0..UART_POKES {
        let reg = 1 + ctx.rng.below(7) as u16;
        if ctx.rng.below(2) == 0 {
            inb(COM1 + reg);
        } else {
            outb(COM1 + reg, ctx.rng.word() as u8);
        }
    }
    // The line control register before the interrupt enable register: with its divisor latch
    // bit set, offset 1 is the divisor's high byte.
    let [(_, ier), (_, lcr), (_, mcr)] = saved;
    outb(COM1 + LCR, lcr);
    outb(COM1 + IER, ier);
    outb(COM1 + MCR, mcr);
    for _ in 0..RX_DRAIN_MAX {
        if inb(COM1 + LSR) & LSR_DATA_READY == 0 {
            break;
        }
        inb(COM1);
    }
    console.str("\n");
    console
        .line()
        .str("serial: flood=")
        .dec(FLOOD_BYTES)
        .str(" pokes=")
        .dec(UART_POKES)
        .str(" ok\n");
    Ok(())
}

/// Whether `[start, start + width)` overlaps a range of `ranges`.
fn overlaps(ranges: &[(u32, u32)], start: u32, width: u8) -> bool {
    let end = start + u32::from(width);
    ranges.iter().any(|&(s, e)| start < e && s < end)
}

/// Random port I/O: [`PORT_OPS`] reads and writes of 1, 2 or 4 bytes at random ports (misaligned
/// and wrapping past `0xffff` included) with random values.
pub fn ports(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let mut done = 0;
    while done < PORT_OPS {
        let port = ctx.rng.word() as u16;
        let width = [1u8, 2, 4][ctx.rng.below(3) as usize];
        let write = ctx.rng.below(2) == 0;
        if overlaps(&PORTS_UNTOUCHED, port.into(), width)
            || (write && overlaps(&PORTS_READ_ONLY, port.into(), width))
        {
            continue;
        }
        if write {
            port_write(port, width, ctx.rng.word() as u32);
        } else {
            port_read(port, width);
        }
        done += 1;
    }
    console
        .line()
        .str("ports: accesses=")
        .dec(PORT_OPS)
        .str(" ok\n");
    Ok(())
}

/// A random memory BAR of the attacked disk, if it has one.
fn attacked_bar(ctx: &mut Ctx<'_>) -> Option<Extent> {
    let bars = ctx.attacked_bars;
    let count = bars.iter().filter(|b| b.len != 0).count() as u64;
    if count == 0 {
        return None;
    }
    let pick = ctx.rng.below(count) as usize;
    bars.into_iter().filter(|b| b.len != 0).nth(pick)
}

/// Where an MMIO access of the storm goes: the attacked disk's BARs, ECAM (mostly bus 0, often
/// the attacked function), or anywhere between the end of RAM and [`MMIO_TOP`].
fn mmio_target(ctx: &mut Ctx<'_>, width: u8) -> u64 {
    let w = u64::from(width);
    match ctx.rng.below(5) {
        0 | 1 => {
            if let Some(bar) = attacked_bar(ctx) {
                return bar.start + ctx.rng.below(bar.len) / w * w;
            }
        }
        2 => {
            if let Some(ecam) = ctx.ecam {
                let bus = match ctx.rng.below(4) {
                    0 => ecam.first_bus.wrapping_add(ctx.rng.word() as u8),
                    _ => ecam.first_bus,
                };
                let bus = bus.clamp(ecam.first_bus, ecam.last_bus);
                let (device, function) = match ctx.rng.below(3) {
                    0 => (ctx.attacked.slot, ctx.attacked.function),
                    _ => (ctx.rng.below(32) as u8, ctx.rng.below(8) as u8),
                };
                let page = ecam.function(bus, device, function);
                return page.start + ctx.rng.below(page.len) / w * w;
            }
        }
        _ => {}
    }
    let floor = ctx.mmio.floor();
    floor + ctx.rng.below(MMIO_TOP - floor) / w * w
}

/// Whether an MMIO access may go to `[addr, addr + width)`: never to the honest disk's BARs,
/// and no write to its ECAM page or to the attacked disk's device-status register.
fn mmio_allowed(ctx: &Ctx<'_>, addr: u64, width: u8, write: bool) -> bool {
    if !ctx.mmio.contains(addr, width) || ctx.honest_bars.iter().any(|b| b.overlaps(addr, width)) {
        return false;
    }
    if !write {
        return true;
    }
    let honest_ecam = ctx.ecam.is_some_and(|e| {
        e.function(0, ctx.honest.slot, ctx.honest.function)
            .overlaps(addr, width)
    });
    let status = Extent {
        start: ctx.attacked_status,
        len: 1,
    };
    !honest_ecam && !status.overlaps(addr, width)
}

/// Random MMIO: [`MMIO_OPS`] naturally aligned reads and writes of 1, 2, 4 or 8 bytes with
/// random values, to the attacked disk's BARs, to ECAM and to the rest of the 32-bit hole; the
/// attacked function's header is restored afterwards.
pub fn mmio(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let saved = SavedHeader::save(ctx.attacked);
    let mut done = 0;
    while done < MMIO_OPS {
        let width = 1u8 << ctx.rng.below(4);
        let write = ctx.rng.below(2) == 0;
        let addr = mmio_target(ctx, width);
        if !mmio_allowed(ctx, addr, width, write) {
            continue;
        }
        if write {
            ctx.mmio.write(addr, width, ctx.rng.word());
        } else {
            ctx.mmio.read(addr, width);
        }
        done += 1;
    }
    saved.restore();
    console
        .line()
        .str("mmio: accesses=")
        .dec(MMIO_OPS)
        .str(if ctx.ecam.is_some() {
            " (ecam included) ok\n"
        } else {
            " (no MCFG: ecam left out) ok\n"
        });
    Ok(())
}

/// Random configuration accesses through ports `0xcf8`/`0xcfc`: random CONFIG_ADDRESS values
/// (enable bit mostly set, reserved bits sometimes, bus 0 mostly, the attacked function half
/// the time), then a read or write of 1, 2 or 4 bytes at a random CONFIG_DATA port (accesses
/// that cross `0xd00` included), and reads of CONFIG_ADDRESS in odd widths. Writes never go to
/// the honest function; the attacked function's header is restored afterwards.
pub fn config(console: &mut Console, ctx: &mut Ctx<'_>) -> Result<(), Stop> {
    let saved = SavedHeader::save(ctx.attacked);
    for _ in 0..CONFIG_OPS {
        let rng = &mut ctx.rng;
        let bus = if rng.below(4) == 0 {
            rng.word() as u8
        } else {
            0
        };
        let (device, function) = if rng.below(2) == 0 {
            (ctx.attacked.slot, ctx.attacked.function)
        } else {
            (
                rng.below(32) as u8,
                if rng.below(4) == 0 {
                    rng.below(8) as u8
                } else {
                    0
                },
            )
        };
        let enable = rng.below(16) != 0;
        let reserved = if rng.below(8) == 0 {
            rng.word() as u32 & 0x7f00_0003
        } else {
            0
        };
        let register = rng.word() as u32 & 0xfc;
        let address = u32::from(enable) << 31
            | reserved
            | u32::from(bus) << 16
            | u32::from(device) << 11
            | u32::from(function) << 8
            | register;
        outl(CONFIG_ADDRESS, address);
        let honest =
            enable && bus == 0 && device == ctx.honest.slot && function == ctx.honest.function;
        let port = CONFIG_DATA + rng.below(4) as u16;
        let width = [1u8, 2, 4][rng.below(3) as usize];
        match rng.below(8) {
            0 => {
                port_read(
                    CONFIG_ADDRESS + rng.below(4) as u16,
                    [1u8, 2][rng.below(2) as usize],
                );
            }
            1..=3 if !honest => port_write(port, width, rng.word() as u32),
            _ => {
                port_read(port, width);
            }
        }
    }
    saved.restore();
    console
        .line()
        .str("config: accesses=")
        .dec(CONFIG_OPS)
        .str(" ok\n");
    Ok(())
}
