//! Port I/O and the debug-exit port.

use core::arch::asm;

/// The debug-exit port: a 32-bit write of `status` ends the VM with that status.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Reads a byte from `port`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input has no effect on this guest's memory; the devices behind the ports the
    // guests use (UART, test device) have no side effects a read could break.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to `port`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output has no effect on this guest's memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads 32 bits from `port`.
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes 32 bits to `port`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: port output has no effect on this guest's memory.
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
