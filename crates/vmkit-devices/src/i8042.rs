//! The i8042 PS/2 controller with a keyboard: enough for guests to probe it, drive the keyboard,
//! receive injected keys and reset the machine.
//!
//! The device decodes absolute ports, so the VMM registers it at [`I8042_DATA_PORT`] and
//! [`I8042_COMMAND_PORT`] (one port each; port 0x61 between them belongs to the PIT/speaker) or
//! as one range covering both; any other port reads [`OPEN_BUS`] and ignores writes.
//!
//! What it models:
//! - status register (output buffer full, system flag, last write was a command, keyboard not
//!   inhibited) and a 16-byte output queue read through the data port;
//! - controller commands: internal RAM read/write 0x20–0x3F / 0x60–0x7F (byte 0 is the command
//!   byte), 0xA7/0xA8 aux disable/enable (the command-byte bit only), 0xA9 aux interface test,
//!   0xAA self-test (answers 0x55), 0xAB keyboard interface test (0x00), 0xAD/0xAE keyboard
//!   disable/enable, 0xC0 read input port, 0xD0/0xD1 read/write output port, 0xD2 write keyboard
//!   output, 0xD3 write aux output, 0xD4 write to aux device, 0xDD/0xDF A20 off/on, and the pulse
//!   commands 0xF0–0xFF: pulsing output bit 0 (0xFE, any even value) resets the machine
//!   ([`StopReason::Reset`]), as does writing the output port with bit 0 clear;
//! - keyboard commands: set LEDs, echo, scancode set, identify (0xAB 0x83), typematic, enable,
//!   disable, defaults, resend, reset (0xAA); unknown bytes are answered with 0xFE (resend);
//! - keys injected by the VMM ([`I8042Device::trigger_ctrl_alt_del`],
//!   [`I8042Device::inject_scancodes`]) raise the keyboard interrupt (IRQ 1, an edge) when the
//!   command byte enables it, and again after each data read that leaves bytes queued.
//!
//! What it does not: there is no auxiliary (mouse) device. Guests see that at once instead of
//! waiting for timeouts: 0xA9 answers 0x01 (clock line stuck), 0xD3 returns its byte on the
//! keyboard channel (without the aux status bit) and 0xD4 drops its byte. Controller responses
//! raise no interrupt (drivers poll for them). A20 is recorded but never gates memory. Scancode
//! translation applies to injected keys only (command responses are not translated).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use log::{debug, warn};
use vmkit_exits::{DeviceAction, PioAddress, PioDevice, StopReason};

use crate::io::{IoCounters, IoStats, OPEN_BUS, read_bytewise, write_bytewise};
use crate::trigger::InterruptTrigger;

/// The data port: output buffer on reads, keyboard data or command parameters on writes.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The command port: status register on reads, controller commands on writes.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// The keyboard interrupt line.
pub const I8042_KEYBOARD_IRQ: u32 = 1;

/// Status bit: the output buffer holds a byte for the guest.
pub const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status bit: the system flag (set after a successful self-test; mirrors command-byte bit 2).
pub const STATUS_SYSTEM: u8 = 0x04;
/// Status bit: the last byte the guest wrote went to the command port.
pub const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Status bit: the keyboard is not inhibited.
pub const STATUS_KEYBOARD_UNLOCKED: u8 = 0x10;
/// Status bit: the output byte came from the auxiliary device (never set here).
pub const STATUS_AUX_DATA: u8 = 0x20;

/// Command-byte bit: raise IRQ 1 when keyboard data arrives.
pub const CTR_KEYBOARD_INTERRUPT: u8 = 0x01;
/// Command-byte bit: the system flag.
pub const CTR_SYSTEM: u8 = 0x04;
/// Command-byte bit: keyboard clock disabled.
pub const CTR_KEYBOARD_DISABLED: u8 = 0x10;
/// Command-byte bit: auxiliary clock disabled.
pub const CTR_AUX_DISABLED: u8 = 0x20;
/// Command-byte bit: translate keyboard scancodes to set 1.
pub const CTR_TRANSLATE: u8 = 0x40;

/// Controller command: pulse the reset line.
pub const CMD_RESET_CPU: u8 = 0xFE;
/// Controller command: self-test.
pub const CMD_SELF_TEST: u8 = 0xAA;
/// Self-test answer: passed.
pub const SELF_TEST_PASSED: u8 = 0x55;

/// Keyboard answer: acknowledge.
pub const KBD_ACK: u8 = 0xFA;
/// Keyboard answer: resend (the byte was not understood).
pub const KBD_RESEND: u8 = 0xFE;
/// Keyboard answer: basic assurance test passed (after reset).
pub const KBD_SELF_TEST_PASSED: u8 = 0xAA;

/// The output queue's size, in bytes.
pub const OUTPUT_QUEUE_LEN: usize = 16;

/// The ports as positions of the byte-wise split.
const DATA: u32 = I8042_DATA_PORT as u32;
const COMMAND: u32 = I8042_COMMAND_PORT as u32;
/// The command byte after power-on: keyboard interrupt on, system flag set.
const CTR_DEFAULT: u8 = CTR_KEYBOARD_INTERRUPT | CTR_SYSTEM;
/// Output-port bit 0: the reset line, active low.
const OUTPUT_PORT_RESET_INACTIVE: u8 = 0x01;
/// Output-port bit 1: A20 enabled.
const OUTPUT_PORT_A20: u8 = 0x02;
/// Input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;
/// Aux interface test answer: clock line stuck low (there is no aux port).
const AUX_TEST_NO_PORT: u8 = 0x01;
/// Keyboard identification bytes of an MF2 keyboard.
const KBD_ID: [u8; 2] = [0xAB, 0x83];

/// Ctrl, Alt, Delete pressed then released, in scancode set 2.
const CTRL_ALT_DEL_SET2: &[u8] = &[
    0x14, 0x11, 0xE0, 0x71, 0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14,
];
/// Ctrl, Alt, Delete pressed then released, in scancode set 1 (what translation produces).
const CTRL_ALT_DEL_SET1: &[u8] = &[0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D];

/// Errors of the VMM-side key injection.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum I8042Error {
    /// the i8042 output queue has room for {free} bytes, {needed} were injected
    ///
    /// The output queue has room for fewer bytes than were injected; nothing was queued.
    QueueFull {
        /// Free bytes in the queue.
        free: usize,
        /// Bytes of the injected sequence.
        needed: usize,
    },
    /// the guest disabled keyboard scanning
    ///
    /// The guest disabled keyboard scanning; nothing was queued.
    ScanningDisabled,
    /// could not raise the keyboard interrupt
    ///
    /// The keys were queued but the keyboard interrupt could not be raised.
    Interrupt(#[source] io::Error),
}

/// A controller command waiting for its parameter byte on the data port: what it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Internal RAM byte (0 is the command byte).
    Ram(u8),
    OutputPort,
    /// The output buffer, as if from the keyboard.
    KeyboardOutput,
    /// The output buffer, as if from the (absent) aux device.
    AuxOutput,
    /// A byte sent to the (absent) aux device.
    AuxDevice,
}

#[derive(Debug)]
struct State {
    /// Controller RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    last_was_command: bool,
    pending: Option<Pending>,
    /// A keyboard command waiting for its parameter.
    keyboard_pending: Option<u8>,
    queue: VecDeque<u8>,
    scanning: bool,
    scancode_set: u8,
    leds: u8,
    typematic: u8,
    last_keyboard_byte: u8,
}

impl State {
    fn new() -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            output_port: OUTPUT_PORT_RESET_INACTIVE | OUTPUT_PORT_A20,
            last_was_command: false,
            pending: None,
            keyboard_pending: None,
            queue: VecDeque::with_capacity(OUTPUT_QUEUE_LEN),
            scanning: true,
            scancode_set: 2,
            leds: 0,
            typematic: 0,
            last_keyboard_byte: KBD_ACK,
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_KEYBOARD_UNLOCKED | (self.ctr() & CTR_SYSTEM);
        if !self.queue.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn keyboard_defaults(&mut self) {
        self.scancode_set = 2;
        self.leds = 0;
        self.typematic = 0;
    }

    fn room(&self) -> usize {
        OUTPUT_QUEUE_LEN - self.queue.len()
    }
}

/// An i8042 PS/2 controller with a keyboard.
#[derive(Debug)]
pub struct I8042Device<T: InterruptTrigger> {
    state: Mutex<State>,
    keyboard_irq: T,
    counters: IoCounters,
    interrupt_errors: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl<T: InterruptTrigger> I8042Device<T> {
    /// A controller whose keyboard raises `keyboard_irq` (IRQ 1, an edge line).
    pub fn new(keyboard_irq: T) -> Self {
        Self {
            state: Mutex::new(State::new()),
            keyboard_irq,
            counters: IoCounters::default(),
            interrupt_errors: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Presses and releases Ctrl+Alt+Delete (in scancode set 1 if the guest turned translation
    /// on, set 2 otherwise): the guest's conventional request to reboot or shut down.
    pub fn trigger_ctrl_alt_del(&self) -> Result<(), I8042Error> {
        let mut state = self.state();
        let codes = if state.ctr() & CTR_TRANSLATE != 0 {
            CTRL_ALT_DEL_SET1
        } else {
            CTRL_ALT_DEL_SET2
        };
        self.inject(&mut state, codes)
    }

    /// Queues raw scancode bytes as if typed on the keyboard, all or nothing.
    pub fn inject_scancodes(&self, codes: &[u8]) -> Result<(), I8042Error> {
        let mut state = self.state();
        self.inject(&mut state, codes)
    }

    fn inject(&self, state: &mut State, codes: &[u8]) -> Result<(), I8042Error> {
        if !state.scanning {
            return Err(I8042Error::ScanningDisabled);
        }
        if codes.len() > state.room() {
            return Err(I8042Error::QueueFull {
                free: state.room(),
                needed: codes.len(),
            });
        }
        if codes.is_empty() {
            return Ok(());
        }
        state.queue.extend(codes);
        self.raise_keyboard_interrupt(state)
            .map_err(I8042Error::Interrupt)
    }

    /// Whether the guest's output port enables the A20 line.
    pub fn a20_enabled(&self) -> bool {
        self.state().output_port & OUTPUT_PORT_A20 != 0
    }

    /// The LED bits the guest last set (bit 0 scroll, 1 num, 2 caps lock).
    pub fn leds(&self) -> u8 {
        self.state().leds
    }

    /// Counts of the guest's accesses.
    pub fn stats(&self) -> IoStats {
        self.counters.snapshot()
    }

    /// Keyboard interrupts the line failed to deliver.
    pub fn interrupt_errors(&self) -> u64 {
        self.interrupt_errors.load(Ordering::Relaxed)
    }

    /// Bytes dropped because the output queue was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes.load(Ordering::Relaxed)
    }

    fn raise_keyboard_interrupt(&self, state: &State) -> io::Result<()> {
        if state.ctr() & CTR_KEYBOARD_INTERRUPT == 0 {
            return Ok(());
        }
        self.keyboard_irq.trigger().inspect_err(|err| {
            self.interrupt_errors.fetch_add(1, Ordering::Relaxed);
            warn!("i8042: keyboard interrupt not delivered: {err}");
        })
    }

    fn push(&self, state: &mut State, byte: u8) {
        if state.queue.len() < OUTPUT_QUEUE_LEN {
            state.queue.push_back(byte);
        } else {
            self.dropped_bytes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A controller response: replaces whatever is queued, raises no interrupt.
    fn respond(&self, state: &mut State, byte: u8) {
        state.queue.clear();
        self.push(state, byte);
    }

    /// A keyboard response: replaces whatever is queued and interrupts.
    fn keyboard_respond(&self, state: &mut State, bytes: &[u8]) {
        state.queue.clear();
        for &byte in bytes {
            self.push(state, byte);
        }
        if let Some(&last) = bytes.last() {
            state.last_keyboard_byte = last;
        }
        // A failure is counted and logged; the guest still finds the bytes by polling.
        let _ = self.raise_keyboard_interrupt(state);
    }

    fn read_port(&self, state: &mut State, port: u32) -> u8 {
        match port {
            COMMAND => state.status(),
            DATA => {
                let byte = state.queue.pop_front().unwrap_or(0);
                if !state.queue.is_empty() {
                    let _ = self.raise_keyboard_interrupt(state);
                }
                byte
            }
            _ => {
                self.counters.ignored();
                OPEN_BUS
            }
        }
    }

    fn write_port(&self, state: &mut State, port: u32, value: u8) -> Option<DeviceAction> {
        match port {
            COMMAND => {
                state.last_was_command = true;
                self.command(state, value)
            }
            DATA => {
                state.last_was_command = false;
                self.data(state, value)
            }
            _ => {
                self.counters.ignored();
                None
            }
        }
    }

    fn command(&self, state: &mut State, command: u8) -> Option<DeviceAction> {
        // A new command abandons one still waiting for its parameter.
        state.pending = None;
        match command {
            0x20..=0x3F => {
                let byte = state.ram[usize::from(command - 0x20)];
                self.respond(state, byte);
            }
            0x60..=0x7F => state.pending = Some(Pending::Ram(command - 0x60)),
            0xA7 => state.ram[0] |= CTR_AUX_DISABLED,
            0xA8 => state.ram[0] &= !CTR_AUX_DISABLED,
            0xA9 => self.respond(state, AUX_TEST_NO_PORT),
            CMD_SELF_TEST => {
                state.ram[0] |= CTR_SYSTEM;
                self.respond(state, SELF_TEST_PASSED);
            }
            0xAB => self.respond(state, 0x00),
            0xAD => state.ram[0] |= CTR_KEYBOARD_DISABLED,
            0xAE => state.ram[0] &= !CTR_KEYBOARD_DISABLED,
            0xC0 => self.respond(state, INPUT_PORT),
            0xD0 => {
                let port = state.output_port;
                self.respond(state, port);
            }
            0xD1 => state.pending = Some(Pending::OutputPort),
            0xD2 => state.pending = Some(Pending::KeyboardOutput),
            0xD3 => state.pending = Some(Pending::AuxOutput),
            0xD4 => state.pending = Some(Pending::AuxDevice),
            0xDD => state.output_port &= !OUTPUT_PORT_A20,
            0xDF => state.output_port |= OUTPUT_PORT_A20,
            // Pulse the output-port bits whose low-nibble bit is 0; bit 0 is the reset line.
            0xF0..=0xFF if command & 1 == 0 => {
                debug!("i8042: guest pulsed the reset line ({command:#x})");
                return Some(DeviceAction::Stop(StopReason::Reset));
            }
            0xF0..=0xFF => {}
            _ => {
                debug!("i8042: ignored controller command {command:#x}");
                self.counters.ignored();
            }
        }
        None
    }

    fn data(&self, state: &mut State, value: u8) -> Option<DeviceAction> {
        match state.pending.take() {
            Some(Pending::Ram(index)) => state.ram[usize::from(index)] = value,
            Some(Pending::OutputPort) => {
                state.output_port = value;
                if value & OUTPUT_PORT_RESET_INACTIVE == 0 {
                    debug!("i8042: guest asserted the reset line through the output port");
                    return Some(DeviceAction::Stop(StopReason::Reset));
                }
            }
            Some(Pending::KeyboardOutput) => self.keyboard_respond(state, &[value]),
            Some(Pending::AuxOutput) => self.respond(state, value),
            Some(Pending::AuxDevice) => {
                debug!("i8042: byte {value:#x} for the absent aux device dropped");
                self.counters.ignored();
            }
            None => self.keyboard(state, value),
        }
        None
    }

    fn keyboard(&self, state: &mut State, byte: u8) {
        // Command bytes (0xED and up) start a new command even when a parameter was expected.
        let parameter_for = state.keyboard_pending.take().filter(|_| byte < 0xED);
        if let Some(command) = parameter_for {
            match command {
                0xED => state.leds = byte & 0x07,
                0xF3 => state.typematic = byte & 0x7F,
                // 0xF0: scancode set; 0 asks for the current one.
                _ if byte == 0 => {
                    let set = state.scancode_set;
                    return self.keyboard_respond(state, &[KBD_ACK, set]);
                }
                _ if byte <= 3 => state.scancode_set = byte,
                _ => self.counters.ignored(),
            }
            return self.keyboard_respond(state, &[KBD_ACK]);
        }
        match byte {
            0xED | 0xF0 | 0xF3 => {
                state.keyboard_pending = Some(byte);
                self.keyboard_respond(state, &[KBD_ACK]);
            }
            0xEE => self.keyboard_respond(state, &[0xEE]),
            0xF2 => self.keyboard_respond(state, &[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            0xF4 => {
                state.scanning = true;
                self.keyboard_respond(state, &[KBD_ACK]);
            }
            0xF5 => {
                state.scanning = false;
                state.keyboard_defaults();
                self.keyboard_respond(state, &[KBD_ACK]);
            }
            0xF6 => {
                state.keyboard_defaults();
                self.keyboard_respond(state, &[KBD_ACK]);
            }
            0xFE => {
                let last = state.last_keyboard_byte;
                self.keyboard_respond(state, &[last]);
            }
            0xFF => {
                state.keyboard_defaults();
                state.scanning = true;
                self.keyboard_respond(state, &[KBD_ACK, KBD_SELF_TEST_PASSED]);
            }
            0xF7..=0xFD => self.keyboard_respond(state, &[KBD_ACK]),
            _ => {
                debug!("i8042: unknown keyboard command {byte:#x}");
                self.counters.ignored();
                self.keyboard_respond(state, &[KBD_RESEND]);
            }
        }
    }
}

impl<T: InterruptTrigger> PioDevice for I8042Device<T> {
    fn pio_read(&self, base: PioAddress, offset: u16, data: &mut [u8]) {
        self.counters.read();
        let mut state = self.state();
        read_bytewise(u32::from(base.0) + u32::from(offset), data, |port| {
            self.read_port(&mut state, port)
        });
    }

    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) -> DeviceAction {
        self.counters.write();
        let mut state = self.state();
        write_bytewise(
            u32::from(base.0) + u32::from(offset),
            data,
            |port, value| self.write_port(&mut state, port, value),
        )
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::CountingTrigger;
    use std::sync::Arc;

    fn device() -> (Arc<CountingTrigger>, I8042Device<Arc<CountingTrigger>>) {
        let line = Arc::new(CountingTrigger::new());
        (Arc::clone(&line), I8042Device::new(line))
    }

    fn read(dev: &impl PioDevice, port: u16) -> u8 {
        let mut data = [0u8];
        dev.pio_read(PioAddress(port), 0, &mut data);
        data[0]
    }

    fn write(dev: &impl PioDevice, port: u16, value: u8) -> DeviceAction {
        dev.pio_write(PioAddress(port), 0, &[value])
    }

    fn command(dev: &impl PioDevice, value: u8) -> DeviceAction {
        write(dev, I8042_COMMAND_PORT, value)
    }

    fn drain(dev: &impl PioDevice) -> Vec<u8> {
        let mut out = Vec::new();
        while read(dev, I8042_COMMAND_PORT) & STATUS_OUTPUT_FULL != 0 {
            out.push(read(dev, I8042_DATA_PORT));
        }
        out
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (_, dev) = device();
        assert_eq!(
            command(&dev, CMD_RESET_CPU),
            DeviceAction::Stop(StopReason::Reset)
        );
        // Other even pulse commands also pulse bit 0; odd ones do not.
        assert_eq!(command(&dev, 0xF0), DeviceAction::Stop(StopReason::Reset));
        assert_eq!(command(&dev, 0xFF), DeviceAction::Resume);
        assert_eq!(command(&dev, 0xF1), DeviceAction::Resume);
        // 0xFE on the data port is a keyboard command (resend), not a reset.
        assert_eq!(
            write(&dev, I8042_DATA_PORT, CMD_RESET_CPU),
            DeviceAction::Resume
        );
    }

    #[test]
    fn output_port_write_with_reset_bit_clear_resets() {
        let (_, dev) = device();
        assert!(dev.a20_enabled());
        command(&dev, 0xD0);
        assert_eq!(drain(&dev), [0x03]);
        command(&dev, 0xD1);
        assert_eq!(write(&dev, I8042_DATA_PORT, 0x01), DeviceAction::Resume);
        assert!(!dev.a20_enabled());
        command(&dev, 0xDF);
        assert!(dev.a20_enabled());
        command(&dev, 0xDD);
        assert!(!dev.a20_enabled());
        command(&dev, 0xD1);
        assert_eq!(
            write(&dev, I8042_DATA_PORT, 0x02),
            DeviceAction::Stop(StopReason::Reset)
        );
    }

    #[test]
    fn self_tests_and_status() {
        let (line, dev) = device();
        assert_eq!(
            read(&dev, I8042_COMMAND_PORT),
            STATUS_KEYBOARD_UNLOCKED | STATUS_SYSTEM
        );
        command(&dev, CMD_SELF_TEST);
        let status = read(&dev, I8042_COMMAND_PORT);
        assert_eq!(
            status,
            STATUS_OUTPUT_FULL | STATUS_SYSTEM | STATUS_LAST_WAS_COMMAND | STATUS_KEYBOARD_UNLOCKED
        );
        assert_eq!(drain(&dev), [SELF_TEST_PASSED]);
        command(&dev, 0xAB);
        assert_eq!(drain(&dev), [0x00]);
        command(&dev, 0xA9);
        assert_eq!(drain(&dev), [AUX_TEST_NO_PORT]);
        command(&dev, 0xC0);
        assert_eq!(drain(&dev), [INPUT_PORT]);
        // Controller responses raise no interrupt.
        assert_eq!(line.edges(), 0);
        // Reading an empty buffer yields 0.
        assert_eq!(read(&dev, I8042_DATA_PORT), 0);
    }

    #[test]
    fn command_byte_and_ram_round_trip() {
        let (_, dev) = device();
        command(&dev, 0x20);
        assert_eq!(drain(&dev), [CTR_DEFAULT]);
        command(&dev, 0x60);
        assert_ne!(read(&dev, I8042_COMMAND_PORT) & STATUS_LAST_WAS_COMMAND, 0);
        write(&dev, I8042_DATA_PORT, 0x47);
        assert_eq!(read(&dev, I8042_COMMAND_PORT) & STATUS_LAST_WAS_COMMAND, 0);
        command(&dev, 0x20);
        assert_eq!(drain(&dev), [0x47]);
        command(&dev, 0x7F);
        write(&dev, I8042_DATA_PORT, 0x99);
        command(&dev, 0x3F);
        assert_eq!(drain(&dev), [0x99]);
        command(&dev, 0xA7);
        command(&dev, 0xAD);
        command(&dev, 0x20);
        assert_eq!(
            drain(&dev),
            [0x47 | CTR_AUX_DISABLED | CTR_KEYBOARD_DISABLED]
        );
        command(&dev, 0xA8);
        command(&dev, 0xAE);
        command(&dev, 0x20);
        assert_eq!(
            drain(&dev),
            [0x47 & !CTR_AUX_DISABLED & !CTR_KEYBOARD_DISABLED]
        );
        // Clearing the system flag clears the status bit.
        command(&dev, 0x60);
        write(&dev, I8042_DATA_PORT, 0x00);
        assert_eq!(read(&dev, I8042_COMMAND_PORT) & STATUS_SYSTEM, 0);
    }

    #[test]
    fn a_new_command_abandons_a_pending_parameter() {
        let (_, dev) = device();
        command(&dev, 0x60);
        command(&dev, 0x20);
        assert_eq!(drain(&dev), [CTR_DEFAULT]);
        // The data byte now goes to the keyboard: an unknown command.
        write(&dev, I8042_DATA_PORT, 0x10);
        assert_eq!(drain(&dev), [KBD_RESEND]);
        command(&dev, 0x20);
        assert_eq!(drain(&dev), [CTR_DEFAULT]);
    }

    #[test]
    fn keyboard_commands_are_answered_with_interrupts() {
        let (line, dev) = device();
        write(&dev, I8042_DATA_PORT, 0xF2);
        assert_eq!(line.edges(), 1);
        // Each read that leaves bytes queued raises the interrupt again.
        assert_eq!(drain(&dev), [KBD_ACK, 0xAB, 0x83]);
        assert_eq!(line.edges(), 3);

        write(&dev, I8042_DATA_PORT, 0xFF);
        assert_eq!(drain(&dev), [KBD_ACK, KBD_SELF_TEST_PASSED]);
        write(&dev, I8042_DATA_PORT, 0xEE);
        assert_eq!(drain(&dev), [0xEE]);
        write(&dev, I8042_DATA_PORT, 0xFE);
        assert_eq!(drain(&dev), [0xEE]);

        write(&dev, I8042_DATA_PORT, 0xED);
        assert_eq!(drain(&dev), [KBD_ACK]);
        write(&dev, I8042_DATA_PORT, 0x07);
        assert_eq!(drain(&dev), [KBD_ACK]);
        assert_eq!(dev.leds(), 7);

        write(&dev, I8042_DATA_PORT, 0xF3);
        write(&dev, I8042_DATA_PORT, 0x20);
        assert_eq!(drain(&dev), [KBD_ACK]);

        write(&dev, I8042_DATA_PORT, 0xF0);
        write(&dev, I8042_DATA_PORT, 0x00);
        assert_eq!(drain(&dev), [KBD_ACK, 2]);
        write(&dev, I8042_DATA_PORT, 0xF0);
        write(&dev, I8042_DATA_PORT, 0x03);
        write(&dev, I8042_DATA_PORT, 0xF0);
        write(&dev, I8042_DATA_PORT, 0x00);
        assert_eq!(drain(&dev), [KBD_ACK, 3]);
        write(&dev, I8042_DATA_PORT, 0xF0);
        write(&dev, I8042_DATA_PORT, 0x09);
        assert_eq!(drain(&dev), [KBD_ACK]);

        // A command byte where a parameter was expected starts a new command.
        write(&dev, I8042_DATA_PORT, 0xED);
        write(&dev, I8042_DATA_PORT, 0xF2);
        assert_eq!(drain(&dev), [KBD_ACK, 0xAB, 0x83]);

        write(&dev, I8042_DATA_PORT, 0xF6);
        assert_eq!(drain(&dev), [KBD_ACK]);
        assert_eq!(dev.leds(), 0);
        write(&dev, I8042_DATA_PORT, 0xFA);
        assert_eq!(drain(&dev), [KBD_ACK]);
        write(&dev, I8042_DATA_PORT, 0x42);
        assert_eq!(drain(&dev), [KBD_RESEND]);
    }

    #[test]
    fn keyboard_interrupt_follows_the_command_byte() {
        let (line, dev) = device();
        command(&dev, 0x60);
        write(&dev, I8042_DATA_PORT, 0x00);
        write(&dev, I8042_DATA_PORT, 0xF2);
        assert_eq!(drain(&dev), [KBD_ACK, 0xAB, 0x83]);
        assert_eq!(line.edges(), 0);
    }

    #[test]
    fn ctrl_alt_del_in_both_scancode_sets() {
        let (line, dev) = device();
        dev.trigger_ctrl_alt_del().unwrap();
        assert_eq!(line.edges(), 1);
        assert_eq!(drain(&dev), CTRL_ALT_DEL_SET2);
        command(&dev, 0x60);
        write(&dev, I8042_DATA_PORT, CTR_DEFAULT | CTR_TRANSLATE);
        dev.trigger_ctrl_alt_del().unwrap();
        assert_eq!(drain(&dev), CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn injection_is_all_or_nothing() {
        let (_, dev) = device();
        dev.inject_scancodes(&[]).unwrap();
        dev.inject_scancodes(&[0x1C; 10]).unwrap();
        let err = dev.trigger_ctrl_alt_del().unwrap_err();
        assert!(matches!(
            err,
            I8042Error::QueueFull {
                free: 6,
                needed: 11
            }
        ));
        assert!(err.to_string().contains("room for 6"));
        assert_eq!(drain(&dev), [0x1C; 10]);
    }

    #[test]
    fn injection_refused_while_scanning_is_disabled() {
        let (_, dev) = device();
        write(&dev, I8042_DATA_PORT, 0xF5);
        drain(&dev);
        assert!(matches!(
            dev.inject_scancodes(&[0x1C]),
            Err(I8042Error::ScanningDisabled)
        ));
        write(&dev, I8042_DATA_PORT, 0xF4);
        drain(&dev);
        dev.inject_scancodes(&[0x1C]).unwrap();
        assert_eq!(drain(&dev), [0x1C]);
    }

    #[test]
    fn interrupt_failures_are_reported_and_keys_kept() {
        let (line, dev) = device();
        line.set_failing(true);
        assert!(matches!(
            dev.inject_scancodes(&[1, 2]),
            Err(I8042Error::Interrupt(_))
        ));
        assert_eq!(drain(&dev), [1, 2]);
        write(&dev, I8042_DATA_PORT, 0xEE);
        assert_eq!(drain(&dev), [0xEE]);
        assert_eq!(dev.interrupt_errors(), 3);
    }

    #[test]
    fn aux_commands_report_no_device() {
        let (_, dev) = device();
        command(&dev, 0xD3);
        write(&dev, I8042_DATA_PORT, 0x5A);
        let status = read(&dev, I8042_COMMAND_PORT);
        assert_eq!(
            status & (STATUS_OUTPUT_FULL | STATUS_AUX_DATA),
            STATUS_OUTPUT_FULL
        );
        assert_eq!(drain(&dev), [0x5A]);
        command(&dev, 0xD4);
        write(&dev, I8042_DATA_PORT, 0xF2);
        assert!(drain(&dev).is_empty());
        command(&dev, 0xD2);
        write(&dev, I8042_DATA_PORT, 0x33);
        assert_eq!(drain(&dev), [0x33]);
    }

    #[test]
    fn unknown_ports_commands_and_sizes_are_defined() {
        let (_, dev) = device();
        for port in [0x61, 0x62, 0x63, 0x65, 0, u16::MAX] {
            assert_eq!(read(&dev, port), OPEN_BUS);
            assert_eq!(write(&dev, port, CMD_RESET_CPU), DeviceAction::Resume);
        }
        assert_eq!(command(&dev, 0x00), DeviceAction::Resume);
        assert_eq!(dev.stats().ignored, 13);
        // One range covering 0x60..=0x64: offset 4 is the command port.
        assert_eq!(
            dev.pio_write(PioAddress(I8042_DATA_PORT), 4, &[CMD_RESET_CPU]),
            DeviceAction::Stop(StopReason::Reset)
        );
        // A 4-byte read at 0x64 covers the status and three unbacked ports.
        let mut data = [0u8; 4];
        dev.pio_read(PioAddress(I8042_COMMAND_PORT), 0, &mut data);
        assert_eq!(&data[1..], [OPEN_BUS; 3]);
        for size in [0usize, 2, 8] {
            let mut data = vec![0u8; size];
            dev.pio_read(PioAddress(I8042_DATA_PORT), 0, &mut data);
            assert_eq!(data.len(), size);
        }
        // A reset in the middle of a wide write wins over the bytes around it.
        assert_eq!(
            dev.pio_write(PioAddress(0x62), 0, &[0, 0, CMD_RESET_CPU, 0]),
            DeviceAction::Stop(StopReason::Reset)
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (_, dev) = device();
        let mut state = dev.state();
        for byte in 0..20 {
            dev.push(&mut state, byte);
        }
        assert_eq!(state.queue.len(), OUTPUT_QUEUE_LEN);
        drop(state);
        assert_eq!(dev.dropped_bytes(), 4);
    }
}
