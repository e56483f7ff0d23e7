//! The PCI checks against functions that break each rule: the harness must catch every one.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use vmkit_exits::{MutPciDevice, PCI_NUM_BARS, PciBar, PciBarKind};

use crate::{Access, Answer, Claimed, DeviceFuzzer, Fixture, NoModel, Offset, Op, Setup};

/// What each function gets wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// Leaves the last byte of configuration reads past the header as it found it.
    UnfilledConfig,
    /// Leaves the last byte of BAR reads as it found it.
    UnfilledBar,
    /// Lets the guest write its device ID.
    WritableDeviceId,
    /// Reports BAR 0, once moved, 0x80 bytes past where its register puts it: misaligned.
    MisalignedBar,
    /// Says BAR 0 is prefetchable; its register says otherwise.
    PrefetchMismatch,
    /// Sizes its I/O BAR as 4 ports while `bars()` says 32.
    WrongIoSizeMask,
    /// Presents a BAR at the upper register of its 64-bit BAR.
    UpperRegisterBar,
    /// Decodes its BARs whatever the command register says.
    DecodesAlways,
    /// Lets the guest write register 1, which holds no BAR.
    UnimplementedBarWritable,
    /// Panics on a configuration access past the end of the space.
    PanicsPastEnd,
}

const VENDOR_DEVICE: u32 = 0x5678_1234;
const REVISION_CLASS: u32 = 0xFF00_0001;
const BAR0_SIZE: u64 = 0x100;
const BAR2_SIZE: u64 = 0x1000;
const BAR4_SIZE: u64 = 0x20;

/// A function with a 256-byte scratch 32-bit memory BAR 0, a prefetchable 64-bit memory BAR 2
/// and a 32-port I/O BAR 4 that decodes 16-bit ports.
struct Tiny {
    config: [u8; 256],
    writable: [u8; 256],
    scratch: [u8; BAR0_SIZE as usize],
    flaw: Flaw,
}

fn put(bytes: &mut [u8; 256], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

impl Tiny {
    fn new(flaw: Flaw) -> Self {
        let mut config = [0u8; 256];
        put(&mut config, 0x00, VENDOR_DEVICE);
        put(&mut config, 0x08, REVISION_CLASS);
        put(&mut config, 0x18, 0b1100);
        put(&mut config, 0x20, 0b01);
        let mut writable = [0u8; 256];
        writable[0x04] = 0x03;
        put(&mut writable, 0x10, !(BAR0_SIZE as u32 - 1));
        if flaw == Flaw::UnimplementedBarWritable {
            put(&mut writable, 0x14, u32::MAX);
        }
        put(&mut writable, 0x18, !(BAR2_SIZE as u32 - 1));
        put(&mut writable, 0x1C, u32::MAX);
        let io = match flaw {
            Flaw::WrongIoSizeMask => 0xFFFC,
            _ => 0xFFFF & !(BAR4_SIZE as u32 - 1),
        };
        put(&mut writable, 0x20, io);
        if flaw == Flaw::WritableDeviceId {
            writable[0x02] = 0xFF;
        }
        writable[0x3C] = 0xFF;
        Tiny {
            config,
            writable,
            scratch: [0; BAR0_SIZE as usize],
            flaw,
        }
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.config[offset..offset + 4]);
        u32::from_le_bytes(bytes)
    }
}

impl MutPciDevice for Tiny {
    fn config_read(&mut self, offset: u8, data: &mut [u8]) {
        let offset = usize::from(offset);
        if self.flaw == Flaw::PanicsPastEnd && offset + data.len() > 256 {
            panic!("configuration read past the end");
        }
        let len = data.len();
        for (i, byte) in data.iter_mut().enumerate() {
            if self.flaw == Flaw::UnfilledConfig && offset >= 0x40 && i == len - 1 {
                continue;
            }
            *byte = self.config.get(offset + i).copied().unwrap_or(0);
        }
    }

    fn config_write(&mut self, offset: u8, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = usize::from(offset).checked_add(i).filter(|&at| at < 256) else {
                break;
            };
            let mask = self.writable[at];
            self.config[at] = (self.config[at] & !mask) | (value & mask);
        }
    }

    fn bars(&self) -> [Option<PciBar>; PCI_NUM_BARS] {
        let command = self.config[0x04];
        let memory = command & 2 != 0 || self.flaw == Flaw::DecodesAlways;
        let io = command & 1 != 0 || self.flaw == Flaw::DecodesAlways;
        let bar2 = PciBar {
            kind: PciBarKind::Memory64,
            size: BAR2_SIZE,
            address: u64::from(self.u32_at(0x1C)) << 32 | u64::from(self.u32_at(0x18) & !0xF),
            prefetchable: true,
            decoding: memory,
        };
        [
            Some(PciBar {
                kind: PciBarKind::Memory32,
                size: BAR0_SIZE,
                address: match u64::from(self.u32_at(0x10) & !0xF) {
                    0 => 0,
                    moved if self.flaw == Flaw::MisalignedBar => moved + 0x80,
                    moved => moved,
                },
                prefetchable: self.flaw == Flaw::PrefetchMismatch,
                decoding: memory,
            }),
            None,
            Some(bar2),
            (self.flaw == Flaw::UpperRegisterBar).then_some(bar2),
            Some(PciBar {
                kind: PciBarKind::Io,
                size: BAR4_SIZE,
                address: u64::from(self.u32_at(0x20) & !0x3),
                prefetchable: false,
                decoding: io,
            }),
            None,
        ]
    }

    fn bar_read(&mut self, index: u8, offset: u64, data: &mut [u8]) {
        let len = data.len();
        for (i, byte) in data.iter_mut().enumerate() {
            if self.flaw == Flaw::UnfilledBar && i == len - 1 {
                continue;
            }
            let at = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok());
            *byte = match (index, at) {
                (0, Some(at)) => self.scratch.get(at).copied().unwrap_or(0xFF),
                _ => 0,
            };
        }
    }

    fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> vmkit_exits::DeviceAction {
        for (i, &value) in data.iter().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok());
            if let (0, Some(slot)) = (index, at.and_then(|at| self.scratch.get_mut(at))) {
                *slot = value;
            }
        }
        vmkit_exits::DeviceAction::Resume
    }
}

/// The claimed accesses: region, offset, whether a read.
type Log = Arc<Mutex<Vec<(usize, u64, bool)>>>;

/// One `Tiny` with a flaw; with a log, every claimed access.
struct TinyFixture(Flaw, Option<Log>);

impl Fixture for TinyFixture {
    type Devices = ();
    type Model = NoModel;

    fn build(&self, setup: &mut Setup) {
        setup.pci("tiny", Arc::new(Mutex::new(Tiny::new(self.0))));
    }

    fn model(&self) -> NoModel {
        NoModel
    }

    fn check_access(&self, _model: &NoModel, access: &Claimed<'_>) {
        if let Some(log) = &self.1 {
            let read = matches!(access.answer, Answer::Read(_));
            log.lock()
                .unwrap()
                .push((access.region, access.offset, read));
        }
    }
}

const CONFIG: u8 = 0;
const BAR0: u8 = 1;
const BAR4: u8 = 5;

fn config_write(offset: u16, value: u32) -> Op {
    Op::Access(Access::write_at(
        CONFIG,
        Offset::FromStart(offset),
        &value.to_le_bytes(),
    ))
}

/// A guest's set-up and use of the function, with the edges the harness aims at.
fn scenario() -> Vec<Op> {
    vec![
        Op::Access(Access::read_at(CONFIG, Offset::FromStart(0), 4)),
        // BAR 0 before decoding: routed accesses reach nothing.
        Op::Access(Access::read_at(BAR0, Offset::FromStart(0), 4)),
        config_write(0x10, 0xE000_0080),
        config_write(0x14, u32::MAX),
        config_write(0x18, 0xF000_0000),
        config_write(0x1C, 1),
        config_write(0x20, 0xC020),
        Op::Access(Access::write_at(CONFIG, Offset::FromStart(4), &[3, 0])),
        Op::Access(Access::write_at(
            CONFIG,
            Offset::FromStart(2),
            &[0xAA, 0xBB],
        )),
        Op::Access(Access::write_at(BAR0, Offset::FromStart(0x10), &[7; 8])),
        Op::Access(Access::read_at(BAR0, Offset::FromStart(0x10), 8)),
        Op::Access(Access::read_at(BAR0, Offset::BeforeEnd(3), 4)),
        Op::Access(Access::read_at(BAR0, Offset::BeforeEnd(7), 8)),
        Op::Access(Access::read_at(BAR4, Offset::FromStart(2), 2)),
        Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x40), 4)),
        Op::Direct(Access::read_at(CONFIG, Offset::BeforeEnd(1), 8)),
        Op::Direct(Access::write_at(
            CONFIG,
            Offset::Absolute(0x1FE),
            &[1, 2, 3],
        )),
        Op::Burst {
            count: 4,
            access: Access::read_at(BAR0, Offset::FromStart(0x11), 1),
        },
        // The guest's own sizing of BAR 0, left at all ones.
        config_write(0x10, u32::MAX),
        Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x10), 4)),
        Op::Reset,
        Op::Access(Access::read_at(CONFIG, Offset::FromStart(0x41), 2)),
    ]
}

fn outcome(flaw: Flaw, ops: &[Op]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        DeviceFuzzer::new(TinyFixture(flaw, None)).run_ops(ops);
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    })
}

#[test]
fn a_correct_function_passes() {
    outcome(Flaw::None, &scenario()).unwrap();
    DeviceFuzzer::new(TinyFixture(Flaw::None, None)).run(&[0x5A; 512]);
    let bytes: Vec<u8> = (0..=255).cycle().take(2048).collect();
    DeviceFuzzer::new(TinyFixture(Flaw::None, None)).run(&bytes);
}

#[test]
fn each_flaw_is_caught_and_named() {
    let cases = [
        (
            Flaw::UnfilledConfig,
            "step 14: read of 4 bytes at address 0x40 (PciConfig region tiny",
        ),
        (
            Flaw::UnfilledBar,
            "step 10: read of 8 bytes at address 0xe0000010 (PciBar(0) region tiny",
        ),
        (
            Flaw::WritableDeviceId,
            "step 8: PCI function tiny: identity registers",
        ),
        (
            Flaw::MisalignedBar,
            "step 2: PCI function tiny: BAR address is not aligned to its size",
        ),
        (
            Flaw::PrefetchMismatch,
            "registration: PCI function tiny: a 32-bit BAR register reads otherwise",
        ),
        (
            Flaw::WrongIoSizeMask,
            "registration: PCI function tiny: an I/O BAR's size mask reads otherwise",
        ),
        (
            Flaw::UpperRegisterBar,
            "registration: PCI function tiny: a 64-bit BAR's upper register",
        ),
        (
            Flaw::DecodesAlways,
            "registration: PCI function tiny: BAR decoding disagrees with the command register",
        ),
        (
            Flaw::UnimplementedBarWritable,
            "registration: PCI function tiny: a register without a BAR is not hardwired to zero",
        ),
        (Flaw::PanicsPastEnd, "configuration read past the end"),
    ];
    let mut wrong = Vec::new();
    for (flaw, expected) in cases {
        let message = outcome(flaw, &scenario()).expect_err(&format!("{flaw:?} is missed"));
        if !message.contains(expected) {
            wrong.push(format!("{flaw:?}: {message}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn bar_accesses_follow_the_bar_and_only_while_it_decodes() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let ops = [
        Op::Access(Access::read_at(BAR0, Offset::FromStart(0), 4)),
        Op::Direct(Access::read_at(BAR0, Offset::FromStart(0), 4)),
        config_write(0x10, 0xE000_0000),
        Op::Access(Access::write_at(CONFIG, Offset::FromStart(4), &[2, 0])),
        Op::Access(Access::read_at(BAR0, Offset::FromStart(4), 4)),
        config_write(0x10, 0xD000_0000),
        Op::Access(Access::read_at(BAR0, Offset::BeforeEnd(3), 4)),
        // Straddling the BAR's end, and a configuration access across a dword: not routed.
        Op::Access(Access::read_at(BAR0, Offset::BeforeEnd(1), 4)),
        Op::Access(Access::read_at(CONFIG, Offset::FromStart(3), 2)),
        // The I/O BAR does not decode: I/O space is off.
        Op::Access(Access::read_at(BAR4, Offset::FromStart(0), 1)),
        // The register without a BAR: nothing routed, but handed over directly.
        Op::Access(Access::read_at(BAR0 + 1, Offset::FromStart(0), 1)),
        Op::Direct(Access::read_at(BAR0 + 1, Offset::FromStart(0), 1)),
    ];
    let fuzzer = DeviceFuzzer::new(TinyFixture(Flaw::None, Some(log.clone())));
    fuzzer.run_ops(&ops);
    let (config, bar0, bar1) = (0, 1, 2);
    assert_eq!(
        *log.lock().unwrap(),
        [
            (bar0, 0, true),
            (config, 0x10, false),
            (config, 4, false),
            (bar0, 4, true),
            (config, 0x10, false),
            (bar0, BAR0_SIZE - 4, true),
            (bar1, 0, true),
        ]
    );
}
