//! The COM1 console: the 16550 UART's transmitter, lines prefixed with the guest's name.

use crate::port::{inb, outb};

/// COM1 base port.
const COM1: u16 = 0x3f8;
/// Line status register.
const COM1_LSR: u16 = COM1 + 5;
/// LSR: transmitter holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Status reads before a byte is sent anyway (a UART that never drains must not hang the guest).
const THRE_POLLS: u32 = 100_000;

/// Output over COM1. It needs no set-up: baud rate and line format do not matter to a virtual
/// UART. The methods return `&mut Self`, so one line is one chain of calls.
pub struct Console {
    name: &'static str,
}

impl Console {
    /// The console of the guest called `name`.
    pub const fn new(name: &'static str) -> Self {
        Self { name }
    }

    /// Starts a line: sends `vmkit <name>: `.
    pub fn line(&mut self) -> &mut Self {
        let name = self.name;
        self.str("vmkit ").str(name).str(": ")
    }

    /// Sends one byte once the transmitter is empty.
    pub fn byte(&mut self, byte: u8) -> &mut Self {
        let mut polls = 0;
        while inb(COM1_LSR) & LSR_THRE == 0 && polls < THRE_POLLS {
            polls += 1;
        }
        outb(COM1, byte);
        self
    }

    /// Sends a string.
    pub fn str(&mut self, text: &str) -> &mut Self {
        for &byte in text.as_bytes() {
            self.byte(byte);
        }
        self
    }

    /// Sends `value` in hexadecimal with a `0x` prefix and no leading zeros.
    pub fn hex(&mut self, value: u64) -> &mut Self {
        self.str("0x");
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            let nibble = ((value >> (shift * 4)) & 0xf) as u8;
            self.byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
        self
    }

    /// Sends `value` in decimal.
    pub fn dec(&mut self, mut value: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for &byte in &buf[start..] {
            self.byte(byte);
        }
        self
    }
}

impl core::fmt::Write for Console {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.str(text);
        Ok(())
    }
}
