//! A vCPU's architectural state in backend-neutral form: the x87/SSE state, the local APIC's
//! register page, and the whole-vCPU snapshot that [`Vcpu::state`](crate::Vcpu::state) returns
//! and [`Vcpu::set_state`](crate::Vcpu::set_state) applies.

use vm_memory::GuestAddress;
use vmkit_exits::state::{Exception, Registers, SpecialRegisters, XSAVE_AREA_SIZE};

use super::entry::{
    EntryError, LongModeEntry, long_mode_registers, long_mode_special_registers, pvh_registers,
    pvh_special_registers,
};
use super::msr::{
    BOOT_MSRS, CSTAR, IA32_MISC_ENABLE, IA32_MTRR_DEF_TYPE, IA32_SYSENTER_CS, IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP, KERNEL_GS_BASE, LSTAR, MsrValue, STAR, SYSCALL_MASK,
};

/// `IA32_PAT`: the page attribute table.
pub const IA32_PAT: u32 = 0x277;

/// The MSRs a snapshot holds unless a backend lists others
/// ([`Vcpu::snapshot_msrs`](crate::Vcpu::snapshot_msrs)): the system-call entry points, the GS
/// base `SWAPGS` exchanges, and the memory-type set-up. EFER and the APIC base are in
/// [`SpecialRegisters`]. The TSC is left out: it advances while the vCPU is stopped, so a
/// snapshot that held it would never equal the state read back; a restore that must keep time
/// sets `IA32_TSC` itself.
pub const SNAPSHOT_MSRS: [u32; 11] = [
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    STAR,
    LSTAR,
    CSTAR,
    SYSCALL_MASK,
    KERNEL_GS_BASE,
    IA32_MISC_ENABLE,
    IA32_MTRR_DEF_TYPE,
    IA32_PAT,
];

/// The x87 and SSE state, as `FXSAVE` stores it (and KVM's `struct kvm_fpu` holds it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    /// ST0..ST7 (MM0..MM7), 80 bits each in 16-byte slots.
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word: one bit per register, set when it is valid.
    pub ftwx: u8,
    /// Opcode of the last x87 instruction.
    pub last_opcode: u16,
    /// Instruction pointer of the last x87 instruction.
    pub last_ip: u64,
    /// Data pointer of the last x87 instruction.
    pub last_dp: u64,
    /// XMM0..XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control and status.
    pub mxcsr: u32,
}

/// Size of the `FXSAVE` (legacy) region at the start of an XSAVE area.
pub const FXSAVE_SIZE: usize = 512;

impl FpuState {
    /// The state every boot protocol starts with: the x87 unit as `FNINIT` leaves it
    /// (`FCW = 0x37f`) and every SSE exception masked (`MXCSR = 0x1f80`).
    pub fn boot() -> Self {
        Self {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Self::default()
        }
    }

    /// Reads the state from an `FXSAVE` image (the first [`FXSAVE_SIZE`] bytes of an XSAVE
    /// area, 64-bit format); bytes past the end of a shorter `area` read as zero.
    pub fn from_fxsave(area: &[u8]) -> Self {
        let mut image = [0u8; FXSAVE_SIZE];
        for (to, from) in image.iter_mut().zip(area) {
            *to = *from;
        }
        let area = &image;
        let u16_at = |at: usize| u16::from_le_bytes([area[at], area[at + 1]]);
        let u64_at = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&area[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        let mut state = Self {
            fcw: u16_at(0),
            fsw: u16_at(2),
            ftwx: area[4],
            last_opcode: u16_at(6),
            last_ip: u64_at(8),
            last_dp: u64_at(16),
            mxcsr: u32::from_le_bytes([area[24], area[25], area[26], area[27]]),
            ..Self::default()
        };
        for (i, reg) in state.fpr.iter_mut().enumerate() {
            reg.copy_from_slice(&area[32 + 16 * i..48 + 16 * i]);
        }
        for (i, reg) in state.xmm.iter_mut().enumerate() {
            reg.copy_from_slice(&area[160 + 16 * i..176 + 16 * i]);
        }
        state
    }

    /// Writes the state into an `FXSAVE` image, keeping the bytes it does not cover
    /// (`MXCSR_MASK`, the reserved and available ones); `None` (and no change) when `area` is
    /// shorter than [`FXSAVE_SIZE`].
    pub fn write_fxsave(&self, area: &mut [u8]) -> Option<()> {
        let area = area.get_mut(..FXSAVE_SIZE)?;
        area[0..2].copy_from_slice(&self.fcw.to_le_bytes());
        area[2..4].copy_from_slice(&self.fsw.to_le_bytes());
        area[4] = self.ftwx;
        area[6..8].copy_from_slice(&self.last_opcode.to_le_bytes());
        area[8..16].copy_from_slice(&self.last_ip.to_le_bytes());
        area[16..24].copy_from_slice(&self.last_dp.to_le_bytes());
        area[24..28].copy_from_slice(&self.mxcsr.to_le_bytes());
        for (i, reg) in self.fpr.iter().enumerate() {
            area[32 + 16 * i..48 + 16 * i].copy_from_slice(reg);
        }
        for (i, reg) in self.xmm.iter().enumerate() {
            area[160 + 16 * i..176 + 16 * i].copy_from_slice(reg);
        }
        Some(())
    }
}

/// Offset of the XSAVE header's `XSTATE_BV`: which components the area holds (a component
/// whose bit is clear is in its initial state, whatever its bytes say).
pub const XSTATE_BV: usize = 512;
/// The x87 and SSE bits of `XSTATE_BV`.
pub const XSTATE_X87_SSE: u64 = 0b11;

/// Size of the local APIC's register page as backends exchange it.
pub const LAPIC_SIZE: usize = 1024;

/// Offset of the local APIC ID register.
pub const APIC_ID: usize = 0x20;
/// Offset of the LVT LINT0 register.
pub const APIC_LVT0: usize = 0x350;
/// Offset of the LVT LINT1 register.
pub const APIC_LVT1: usize = 0x360;

/// The local APIC's registers: the first [`LAPIC_SIZE`] bytes of its page, each 32-bit register
/// at its architectural offset (KVM's `struct kvm_lapic_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicState {
    /// The register bytes.
    pub regs: [u8; LAPIC_SIZE],
}

impl Default for LapicState {
    fn default() -> Self {
        Self {
            regs: [0; LAPIC_SIZE],
        }
    }
}

impl LapicState {
    /// Register `offset`, little-endian; bytes past the page read as zero.
    pub fn register(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(self.regs.iter().skip(offset)) {
            *b = *r;
        }
        u32::from_le_bytes(bytes)
    }

    /// Writes register `offset`; bytes past the page are dropped.
    pub fn set_register(&mut self, offset: usize, value: u32) {
        for (r, b) in self.regs.iter_mut().skip(offset).zip(value.to_le_bytes()) {
            *r = b;
        }
    }
}

/// Everything [`Vcpu::state`](crate::Vcpu::state) reads and
/// [`Vcpu::set_state`](crate::Vcpu::set_state) writes, in the types the trait family already
/// exchanges. The x87/SSE state is inside `xsave` (its legacy region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuSnapshot {
    /// General-purpose registers, RIP and RFLAGS.
    pub registers: Registers,
    /// Segments, descriptor tables, control registers, EFER and the APIC base.
    pub special_registers: SpecialRegisters,
    /// The standard-format XSAVE area ([`XSAVE_AREA_SIZE`] bytes).
    pub xsave: Vec<u8>,
    /// XCR0.
    pub xcr0: u64,
    /// The MSRs the backend lists ([`Vcpu::snapshot_msrs`](crate::Vcpu::snapshot_msrs)) that
    /// the vCPU has, in that order.
    pub msrs: Vec<MsrValue>,
    /// The local APIC's registers.
    pub lapic: LapicState,
    /// The exception queued for the next entry, if any.
    pub pending_exception: Option<Exception>,
}

impl VcpuSnapshot {
    /// Turns this state into the PVH entry state: 32-bit protected mode with paging off, flat
    /// 4 GiB code and data segments, `CR0 = PE | ET`, `EIP = entry`, `EBX = start_info`,
    /// `EFLAGS = 0x2`; and what every entry resets ([`reset_for_entry`](Self::reset_for_entry)).
    /// The local APIC is left as it is.
    pub fn enter_pvh(&mut self, entry: GuestAddress, start_info: GuestAddress) {
        self.reset_for_entry();
        self.special_registers = pvh_special_registers(&self.special_registers);
        self.registers = pvh_registers(entry, start_info);
    }

    /// Turns this state into the 64-bit entry state of the Linux boot protocol (see
    /// [`LongModeEntry`]), after checking `entry`; and what every entry resets. The GDT the
    /// segments come from ([`LONG_MODE_GDT`](super::LONG_MODE_GDT)) is the caller's to write at
    /// `entry.gdt`: the state holds only the descriptor caches.
    pub fn enter_long_mode(&mut self, entry: &LongModeEntry) -> Result<(), EntryError> {
        entry.validate()?;
        self.reset_for_entry();
        self.special_registers = long_mode_special_registers(&self.special_registers, entry);
        self.registers = long_mode_registers(entry);
        Ok(())
    }

    /// What every entry mode shares: the x87 and SSE state as after `FNINIT` with SSE
    /// exceptions masked ([`FpuState::boot`]) and every other XSAVE component initial, the boot
    /// MSRs ([`BOOT_MSRS`]: replaced where the state has them, added where not), and no pending
    /// exception.
    pub fn reset_for_entry(&mut self) {
        if self.xsave.len() < XSAVE_AREA_SIZE {
            self.xsave.resize(XSAVE_AREA_SIZE, 0);
        }
        // The legacy region's MXCSR_MASK is the CPU's, not state: keep it.
        let mut legacy = [0u8; FXSAVE_SIZE];
        legacy[28..32].copy_from_slice(&self.xsave[28..32]);
        let _ = FpuState::boot().write_fxsave(&mut legacy);
        self.xsave[..FXSAVE_SIZE].copy_from_slice(&legacy);
        self.xsave[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&XSTATE_X87_SSE.to_le_bytes());
        for boot in BOOT_MSRS {
            match self.msrs.iter_mut().find(|m| m.index == boot.index) {
                Some(m) => m.value = boot.value,
                None => self.msrs.push(boot),
            }
        }
        self.pending_exception = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fxsave_images_round_trip() {
        let mut state = FpuState::boot();
        state.fsw = 0x3800;
        state.ftwx = 0x81;
        state.last_opcode = 0x7ff;
        state.last_ip = 0x1122_3344_5566_7788;
        state.last_dp = 0x8877_6655_4433_2211;
        state.fpr[7] = [0xa5; 16];
        state.xmm[15] = [0x5a; 16];
        let mut area = [0xeeu8; FXSAVE_SIZE + 8];
        state.write_fxsave(&mut area).unwrap();
        assert_eq!(FpuState::from_fxsave(&area), state);
        assert_eq!(&area[28..32], &[0xee; 4], "MXCSR_MASK is kept");
        assert_eq!(area[FXSAVE_SIZE], 0xee, "nothing past the legacy region");
        let short = FpuState::from_fxsave(&area[..25]);
        assert_eq!(
            (short.last_dp, short.mxcsr),
            (state.last_dp, 0x80),
            "zero past the end"
        );
        assert_eq!(state.write_fxsave(&mut [0u8; 16]), None);
    }

    #[test]
    fn lapic_registers_are_little_endian_at_their_offsets() {
        let mut lapic = LapicState::default();
        lapic.set_register(APIC_ID, 3 << 24);
        assert_eq!(lapic.regs[APIC_ID + 3], 3);
        assert_eq!(lapic.register(APIC_ID), 3 << 24);
        lapic.set_register(LAPIC_SIZE - 2, u32::MAX);
        assert_eq!(
            lapic.register(LAPIC_SIZE - 2),
            0xffff,
            "past the page reads as zero"
        );
    }

    #[test]
    fn entering_a_boot_protocol_resets_fpu_msrs_and_events_but_not_the_lapic() {
        use super::super::msr::{IA32_TSC, LSTAR};

        let mut lapic = LapicState::default();
        lapic.set_register(APIC_ID, 1 << 24);
        let mut state = VcpuSnapshot {
            registers: Registers {
                rax: 5,
                ..Registers::default()
            },
            special_registers: SpecialRegisters::default(),
            xsave: vec![0xff; XSAVE_AREA_SIZE],
            xcr0: 7,
            msrs: vec![
                MsrValue {
                    index: IA32_PAT,
                    value: 0x0007_0406_0007_0406,
                },
                MsrValue {
                    index: LSTAR,
                    value: 0xffff_ffff_8100_0000,
                },
            ],
            lapic,
            pending_exception: Some(Exception {
                vector: 13,
                error_code: Some(0),
            }),
        };
        state.enter_pvh(GuestAddress(0x10_0000), GuestAddress(0x6000));
        assert_eq!(
            (state.registers.rip, state.registers.rbx),
            (0x10_0000, 0x6000)
        );
        assert_eq!(state.registers.rax, 0);
        assert_eq!(state.special_registers.cr0 & 1, 1, "protected mode");
        let fpu = FpuState::from_fxsave(&state.xsave);
        assert_eq!(fpu, FpuState::boot());
        assert_eq!(&state.xsave[28..32], &[0xff; 4], "MXCSR_MASK kept");
        assert_eq!(
            state.xsave[XSTATE_BV..XSTATE_BV + 8],
            XSTATE_X87_SSE.to_le_bytes()
        );
        assert_eq!(state.msrs[0].value, 0x0007_0406_0007_0406, "PAT kept");
        assert_eq!(
            state.msrs[1],
            MsrValue {
                index: LSTAR,
                value: 0
            }
        );
        assert!(
            state
                .msrs
                .iter()
                .any(|m| m.index == IA32_TSC && m.value == 0)
        );
        assert_eq!(state.msrs.len(), 2 + BOOT_MSRS.len() - 1, "each MSR once");
        assert_eq!(state.pending_exception, None);
        assert_eq!((state.lapic, state.xcr0), (lapic, 7));

        let bad = LongModeEntry {
            entry: GuestAddress(0x20_0000),
            page_table: GuestAddress(1),
            gdt: GuestAddress(0x500),
            boot_params: GuestAddress(0x7000),
            stack_pointer: GuestAddress(0),
        };
        let before = state.clone();
        assert!(state.enter_long_mode(&bad).is_err());
        assert_eq!(state, before, "a refused entry changes nothing");
        state
            .enter_long_mode(&LongModeEntry {
                page_table: GuestAddress(0x9000),
                ..bad
            })
            .unwrap();
        assert_eq!(
            (state.registers.rsi, state.special_registers.cr3),
            (0x7000, 0x9000)
        );
    }
}
