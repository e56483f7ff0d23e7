//! Port I/O: the COM1 16550 UART (transmit only) and the debug-exit port.

use core::arch::asm;

/// COM1 base port.
const COM1: u16 = 0x3f8;
/// Line status register.
const COM1_LSR: u16 = COM1 + 5;
/// LSR: transmitter holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Status reads before a byte is sent anyway (a UART that never drains must not hang the guest).
const THRE_POLLS: u32 = 100_000;
/// The debug-exit port: a 32-bit write of `status` ends the VM with that status.
const DEBUG_EXIT_PORT: u16 = 0xf4;

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no memory effects; the ports used here belong to the UART.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

fn outb(port: u16, value: u8) {
    // SAFETY: port output has no memory effects on this guest's memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

fn outl(port: u16, value: u32) {
    // SAFETY: port output has no memory effects on this guest's memory.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Ends the VM with `status` through the debug-exit port; halts if the port is absent.
pub fn exit(status: u32) -> ! {
    outl(DEBUG_EXIT_PORT, status);
    loop {
        // SAFETY: `hlt` waits for an interrupt; interrupts are off, so this parks the vCPU.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// The COM1 transmitter. It needs no set-up: baud rate and line format do not matter to a
/// virtual UART.
pub struct Serial;

impl Serial {
    /// Sends one byte once the transmitter is empty.
    pub fn put_byte(&mut self, byte: u8) {
        let mut polls = 0;
        while inb(COM1_LSR) & LSR_THRE == 0 && polls < THRE_POLLS {
            polls += 1;
        }
        outb(COM1, byte);
    }

    /// Sends a string.
    pub fn put_str(&mut self, text: &str) {
        for &byte in text.as_bytes() {
            self.put_byte(byte);
        }
    }

    /// Sends `value` in hexadecimal with a `0x` prefix and no leading zeros.
    pub fn put_hex(&mut self, value: u64) {
        self.put_str("0x");
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            let nibble = ((value >> (shift * 4)) & 0xf) as u8;
            self.put_byte(if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            });
        }
    }

    /// Sends `value` in decimal.
    pub fn put_dec(&mut self, mut value: u64) {
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
            self.put_byte(byte);
        }
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        self.put_str(text);
        Ok(())
    }
}
