//! The guest code the benchmarks run: 32-bit protected-mode loops entered in the PVH state, and
//! tiny PVH ELFs for the process-level benchmarks.

use vm_memory::GuestAddress;
use vmkit_boot::elf::ElfBuilder;
use vmkit_devices::debug_exit::DEBUG_EXIT_PORT;
use vmkit_devices::testdev::{IOMEM_BASE, SCRATCH_PORT};

/// Where guest code is placed and entered (1 MiB, where PVH kernels load).
pub const CODE_ADDR: u64 = 0x10_0000;

/// The exit a loop produces, once per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `out dx, al` to the test device's scratch register (port 0xE0): a `KVM_EXIT_IO`.
    PortWrite,
    /// `mov [ebx], al` to the test device's scratch memory (0xFF00_0000): a `KVM_EXIT_MMIO`.
    MmioWrite,
}

impl ExitKind {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::PortWrite => "port-I/O write",
            Self::MmioWrite => "MMIO write",
        }
    }
}

fn le32(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

/// A loop of `iterations` exits of `kind`, then a 32-bit write of 0 to the debug-exit port, then
/// `hlt` forever. 32-bit code for the PVH entry state; `iterations` of 0 is taken as 1 (`loop`
/// with `ecx = 0` would run 2^32 times).
///
/// ```text
/// mov edx, 0xe0 | mov ebx, 0xff000000
/// mov ecx, iterations
/// l: out dx, al | mov [ebx], al
///    loop l
/// mov edx, 0xf4
/// xor eax, eax
/// out dx, eax
/// h: hlt
///    jmp h
/// ```
///
/// `loop` is the one instruction per exit besides the exit itself: guest ring-0 instructions can
/// be emulated one by one (costly on nested hosts), and both paths run the same code.
pub fn exit_loop(kind: ExitKind, iterations: u32) -> Vec<u8> {
    let mut code = Vec::with_capacity(32);
    match kind {
        ExitKind::PortWrite => {
            code.push(0xBA); // mov edx, imm32
            code.extend(le32(u32::from(SCRATCH_PORT)));
        }
        ExitKind::MmioWrite => {
            code.push(0xBB); // mov ebx, imm32
            code.extend(le32(IOMEM_BASE as u32));
        }
    }
    code.push(0xB9); // mov ecx, imm32
    code.extend(le32(iterations.max(1)));
    match kind {
        ExitKind::PortWrite => code.extend([0xEE, 0xE2, 0xFD]), // out dx, al; loop -3
        ExitKind::MmioWrite => code.extend([0x88, 0x03, 0xE2, 0xFC]), // mov [ebx], al; loop -4
    }
    code.push(0xBA); // mov edx, imm32
    code.extend(le32(u32::from(DEBUG_EXIT_PORT)));
    code.extend([0x31, 0xC0, 0xEF, 0xF4, 0xEB, 0xFD]); // xor eax, eax; out dx, eax; hlt; jmp -3
    code
}

/// A PVH ELF whose code, at [`CODE_ADDR`], is `code`.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    ElfBuilder::new()
        .segment(GuestAddress(CODE_ADDR), code, 0x1000)
        .pvh_entry(GuestAddress(CODE_ADDR))
        .build()
}

/// A PVH ELF whose first instruction is `out 0xf4, al`: the first exit is a `KVM_EXIT_IO` to the
/// debug-exit port, which ends the VM (with status `al`, 0 at a PVH entry).
pub fn first_out_elf() -> Vec<u8> {
    pvh_elf(&[0xE6, DEBUG_EXIT_PORT as u8, 0xF4, 0xEB, 0xFD]) // out 0xf4, al; hlt; jmp -3
}

/// A PVH ELF that idles without exits: `cli; hlt` forever (the in-kernel LAPIC keeps the halted
/// vCPU in KVM).
pub fn idle_elf() -> Vec<u8> {
    pvh_elf(&[0xFA, 0xF4, 0xEB, 0xFD]) // cli; hlt; jmp -3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_encode_their_operands() {
        let pio = exit_loop(ExitKind::PortWrite, 0x1234);
        assert_eq!(&pio[..10], &[0xBA, 0xE0, 0, 0, 0, 0xB9, 0x34, 0x12, 0, 0]);
        assert_eq!(&pio[10..13], &[0xEE, 0xE2, 0xFD]);
        assert_eq!(&pio[13..18], &[0xBA, 0xF4, 0, 0, 0]);
        let mmio = exit_loop(ExitKind::MmioWrite, 0);
        assert_eq!(&mmio[..5], &[0xBB, 0, 0, 0, 0xFF]);
        assert_eq!(
            &mmio[5..10],
            &[0xB9, 1, 0, 0, 0],
            "zero iterations run once"
        );
        // Both `loop`s jump back to the exiting instruction at offset 10.
        assert_eq!(&mmio[10..14], &[0x88, 0x03, 0xE2, 0xFC]);
    }

    #[test]
    fn elfs_carry_a_pvh_entry_at_the_code() {
        for elf in [first_out_elf(), idle_elf()] {
            let image = vmkit_boot::elf::ElfImage::parse(&elf).unwrap();
            assert_eq!(image.pvh_entry(), Some(GuestAddress(CODE_ADDR)));
        }
        assert_eq!(kind_names(), ["port-I/O write", "MMIO write"]);
    }

    fn kind_names() -> [&'static str; 2] {
        [ExitKind::PortWrite.name(), ExitKind::MmioWrite.name()]
    }
}
