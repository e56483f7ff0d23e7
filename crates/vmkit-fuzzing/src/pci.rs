//! PCI functions as access targets: how the harness routes accesses to a function's
//! configuration space and BARs, and the invariants the PCI specification asks of every
//! function, checked after every step.
//!
//! A function registered with [`Setup::pci`](crate::Setup::pci) is seven regions: its
//! configuration space ([`Space::PciConfig`](crate::Space::PciConfig)) and one per BAR register
//! ([`Space::PciBar`](crate::Space::PciBar)), whether or not a BAR is there. The harness asks
//! [`PciDevice::bars`] after every configuration write and after every step, and aims BAR
//! accesses at the BARs the function presents *now*.
//!
//! After every step that reached the harness's devices, for every function:
//!
//! - the identity registers (vendor and device ID, revision ID, class code, header type) read
//!   what they read when the function was registered: they are read-only (PCI Local Bus 3.0
//!   §6.2.1), and vendor ID 0xFFFF is no function's;
//! - [`bars`](PciDevice::bars) is well-formed: each size a power of two (at least 16 bytes for
//!   a memory BAR, 4 to 256 ports for an I/O BAR, §6.2.5.1), each address aligned to its size
//!   and, for a 32-bit memory BAR or an I/O BAR, below 4 GiB; a 64-bit BAR leaves the next
//!   register to its upper half (`None`, and it is not the last register); an I/O BAR is not
//!   prefetchable; a BAR decodes exactly when the command register enables its space;
//! - after a step that wrote to the configuration space (and when the function is registered),
//!   the BAR registers agree with `bars()`: each reads back its BAR's address and type bits
//!   (I/O: bit 0 set, bit 1 clear; memory: bit 0 clear, type 00 or 10, prefetchable bit), a
//!   register that holds no BAR reads 0; and the sizing protocol (write all ones, read the
//!   size mask, restore) reads the size's mask with the same type bits (an I/O BAR's upper 16
//!   bits may read as zero, as for a function that decodes 16-bit ports only), a register
//!   without a BAR reads 0, and the restored function presents the same `bars()` as before.
//!
//! Not asserted, because the specification does not forbid it: BARs whose address ranges
//! overlap (the guest can program that; the root keeps two of them off one bus range), BARs
//! whose set or size changes over time (resizable BARs), anything of the capabilities list.
//!
//! The harness's own configuration accesses (identity reads, sizing) are not shown to the
//! fixture's model or its `check_access`: they are no guest's.

use std::cell::Cell;
use std::sync::Arc;

use vmkit_exits::{PCI_NUM_BARS, PciBar, PciBarKind, PciDevice};

/// Offset of the first BAR register.
const BAR0: u8 = 0x10;
/// Offset of the command register.
const COMMAND: u8 = 0x04;
/// Command register: I/O space enable.
const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space enable.
const COMMAND_MEMORY: u16 = 1 << 1;
/// The identity registers: (offset, size).
const IDENTITY: [(u8, usize); 3] = [(0x00, 4), (0x08, 4), (0x0E, 1)];
/// The size of the conventional configuration space.
pub(crate) const CONFIG_SIZE: u64 = 256;

/// The BARs a function presents: what [`PciDevice::bars`] answers.
pub(crate) type Bars = [Option<PciBar>; PCI_NUM_BARS];

/// One registered PCI function, as one instance's setup keeps it.
pub(crate) struct Function {
    pub(crate) name: &'static str,
    pub(crate) device: Arc<dyn PciDevice>,
    /// What `bars()` answered last (after the last configuration write, or the last step).
    pub(crate) bars: Cell<Bars>,
    /// The identity registers as they read at registration.
    identity: [u32; 3],
    /// Whether the configuration space was written since the BAR registers were last checked.
    written: Cell<bool>,
}

impl Function {
    /// Registers `device`: reads its identity and checks its BAR registers.
    pub(crate) fn new(name: &'static str, device: Arc<dyn PciDevice>) -> Self {
        let identity = IDENTITY.map(|(offset, size)| read(device.as_ref(), offset, size));
        let function = Function {
            name,
            bars: Cell::new(device.bars()),
            device,
            identity,
            written: Cell::new(true),
        };
        if identity[0] & 0xFFFF == 0xFFFF {
            function.fail(None, "vendor ID 0xffff is no function's", &identity[0], &0);
        }
        function.check(None);
        function
    }

    /// A configuration write: hands it over and asks where the BARs are now.
    pub(crate) fn config_write(&self, offset: u8, data: &[u8]) {
        self.device.config_write(offset, data);
        self.bars.set(self.device.bars());
        self.written.set(true);
    }

    /// BAR `index` as the function presented it last.
    pub(crate) fn bar(&self, index: u8) -> Option<PciBar> {
        self.bars.get().get(usize::from(index)).copied().flatten()
    }

    /// Checks the function after step `step`, or at registration (see the [module](self)).
    pub(crate) fn check(&self, step: Option<usize>) {
        let bars = self.device.bars();
        self.bars.set(bars);
        let identity = IDENTITY.map(|(offset, size)| read(self.device.as_ref(), offset, size));
        if identity != self.identity {
            let problem =
                "identity registers (vendor/device ID, revision/class, header type) changed";
            let (found, registered) = (format!("{identity:x?}"), format!("{:x?}", self.identity));
            self.fail(step, problem, &found, &registered);
        }
        let command = read(self.device.as_ref(), COMMAND, 2) as u16;
        self.check_bars(step, &bars, command);
        if self.written.replace(false) {
            self.check_registers(step, &bars);
        }
    }

    fn check_bars(&self, step: Option<usize>, bars: &Bars, command: u16) {
        for (index, bar) in bars.iter().enumerate() {
            let Some(bar) = bar else {
                continue;
            };
            let (sizes, enable) = match bar.kind {
                PciBarKind::Io => (4..=256, COMMAND_IO),
                PciBarKind::Memory32 | PciBarKind::Memory64 => (16..=u64::MAX, COMMAND_MEMORY),
            };
            let fail = |problem: &str| self.fail(step, problem, bar, &index);
            if !bar.size.is_power_of_two() || !sizes.contains(&bar.size) {
                fail("BAR size is not a power of two in the range of its kind");
            }
            if bar.address & (bar.size - 1) != 0 {
                fail("BAR address is not aligned to its size");
            }
            let below_4g = bar
                .address
                .checked_add(bar.size)
                .is_some_and(|end| end <= 1 << 32);
            if bar.kind != PciBarKind::Memory64 && !below_4g {
                fail("a 32-bit BAR reaches past 4 GiB");
            }
            if bar.kind == PciBarKind::Memory64 && bars.get(index + 1).is_none_or(Option::is_some) {
                fail("a 64-bit BAR's upper register is missing or presents a BAR");
            }
            if bar.kind == PciBarKind::Io && bar.prefetchable {
                fail("an I/O BAR is prefetchable");
            }
            if bar.decoding != (command & enable != 0) {
                fail("BAR decoding disagrees with the command register");
            }
        }
    }

    /// The BAR registers against `bars`, and the sizing protocol.
    fn check_registers(&self, step: Option<usize>, bars: &Bars) {
        let device = self.device.as_ref();
        let mut index = 0;
        while index < PCI_NUM_BARS {
            // `index` < 6: the offsets fit a byte.
            let offset = BAR0 + 4 * index as u8;
            let value = read(device, offset, 4);
            let Some(bar) = bars[index] else {
                write(device, offset, u32::MAX);
                let mask = read(device, offset, 4);
                write(device, offset, value);
                if value != 0 || mask != 0 {
                    let problem = "a register without a BAR is not hardwired to zero (value, mask)";
                    self.fail(step, problem, &(value, mask), &index);
                }
                index += 1;
                continue;
            };
            let fail = |problem: &str, read: u64| {
                self.fail(step, problem, &format!("{read:#x}"), &bar);
            };
            let size_mask = !(bar.size - 1);
            match bar.kind {
                PciBarKind::Io => {
                    let expected = bar.address as u32 | 1;
                    if value & !2 != expected || value & 2 != 0 {
                        fail("an I/O BAR register reads otherwise", value.into());
                    }
                    write(device, offset, u32::MAX);
                    let mask = read(device, offset, 4);
                    write(device, offset, value);
                    let low = mask & 0xFFFF == (size_mask as u32 & 0xFFFC) | 1;
                    if !low || !matches!(mask >> 16, 0 | 0xFFFF) {
                        fail("an I/O BAR's size mask reads otherwise", mask.into());
                    }
                    index += 1;
                }
                PciBarKind::Memory32 => {
                    let expected = bar.address as u32 | prefetch_bit(&bar);
                    if value != expected {
                        fail("a 32-bit BAR register reads otherwise", value.into());
                    }
                    write(device, offset, u32::MAX);
                    let mask = read(device, offset, 4);
                    write(device, offset, value);
                    if mask != (size_mask as u32 & !0xF) | prefetch_bit(&bar) {
                        fail("a 32-bit BAR's size mask reads otherwise", mask.into());
                    }
                    index += 1;
                }
                PciBarKind::Memory64 => {
                    // The upper register is there: `check_bars` made sure.
                    let high = read(device, offset + 4, 4);
                    let register = u64::from(high) << 32 | u64::from(value);
                    let bits = 0b100 | prefetch_bit(&bar);
                    if register != bar.address | u64::from(bits) {
                        fail("a 64-bit BAR's registers read otherwise", register);
                    }
                    write(device, offset, u32::MAX);
                    write(device, offset + 4, u32::MAX);
                    let mask = u64::from(read(device, offset + 4, 4)) << 32
                        | u64::from(read(device, offset, 4));
                    write(device, offset, value);
                    write(device, offset + 4, high);
                    if mask != (size_mask & !0xF) | u64::from(bits) {
                        fail("a 64-bit BAR's size mask reads otherwise", mask);
                    }
                    index += 2;
                }
            }
        }
        let restored = self.device.bars();
        if restored != *bars {
            self.fail(
                step,
                "sizing the BARs did not restore them",
                &restored,
                bars,
            );
        }
        self.bars.set(restored);
    }

    /// Panics: the function broke a rule.
    #[cold]
    #[inline(never)]
    fn fail<T: std::fmt::Debug + ?Sized, U: std::fmt::Debug + ?Sized>(
        &self,
        step: Option<usize>,
        problem: &str,
        found: &T,
        context: &U,
    ) -> ! {
        let when = step.map_or_else(|| "registration".to_owned(), |s| format!("step {s}"));
        panic!(
            "{when}: PCI function {}: {problem}\n  found: {found:?}\n  about: {context:?}",
            self.name
        )
    }
}

fn prefetch_bit(bar: &PciBar) -> u32 {
    if bar.prefetchable { 1 << 3 } else { 0 }
}

/// A configuration read of `size` (at most 4) bytes at `offset`, little-endian.
fn read(device: &dyn PciDevice, offset: u8, size: usize) -> u32 {
    let mut bytes = [0u8; 4];
    device.config_read(offset, &mut bytes[..size]);
    u32::from_le_bytes(bytes)
}

fn write(device: &dyn PciDevice, offset: u8, value: u32) {
    device.config_write(offset, &value.to_le_bytes());
}

/// Whether the root of a VMM passes a configuration access of `size` bytes at `offset`: 1, 2
/// or 4 bytes inside one dword of the conventional space.
pub(crate) fn config_routable(offset: u64, size: usize) -> bool {
    matches!(size, 1 | 2 | 4) && offset < CONFIG_SIZE && offset % 4 + size as u64 <= 4
}

/// The offset into `bar` of a routed access of `size` bytes at guest address `addr`: only to a
/// decoding BAR that holds the whole access.
pub(crate) fn bar_offset(bar: Option<PciBar>, addr: u64, size: usize) -> Option<u64> {
    let bar = bar.filter(|bar| bar.decoding)?;
    let offset = addr.checked_sub(bar.address)?;
    let last = offset.checked_add((size as u64).checked_sub(1)?)?;
    (last < bar.size && vmkit_exits::is_valid_access_size(size)).then_some(offset)
}
