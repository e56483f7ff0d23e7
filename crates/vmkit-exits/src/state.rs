//! The small view of vCPU state that the emulation assist needs, implemented by backends.

/// General-purpose registers, instruction pointer and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl Registers {
    /// The 64-bit field holding general-purpose register `reg` (any width of it), or `None` for
    /// a register that is not one of the sixteen.
    fn full_mut(&mut self, reg: iced_x86::Register) -> Option<&mut u64> {
        use iced_x86::Register as R;
        Some(match reg.full_register() {
            R::RAX => &mut self.rax,
            R::RCX => &mut self.rcx,
            R::RDX => &mut self.rdx,
            R::RBX => &mut self.rbx,
            R::RSP => &mut self.rsp,
            R::RBP => &mut self.rbp,
            R::RSI => &mut self.rsi,
            R::RDI => &mut self.rdi,
            R::R8 => &mut self.r8,
            R::R9 => &mut self.r9,
            R::R10 => &mut self.r10,
            R::R11 => &mut self.r11,
            R::R12 => &mut self.r12,
            R::R13 => &mut self.r13,
            R::R14 => &mut self.r14,
            R::R15 => &mut self.r15,
            _ => return None,
        })
    }

    /// General-purpose register `reg` (64-, 32- or 16-bit), zero-extended; `None` for any
    /// other register.
    pub fn gpr(&self, reg: iced_x86::Register) -> Option<u64> {
        let mut copy = *self;
        let full = *copy.full_mut(reg)?;
        match reg.size() {
            8 => Some(full),
            4 => Some(full & 0xffff_ffff),
            2 => Some(full & 0xffff),
            _ => None,
        }
    }

    /// Writes general-purpose register `reg` as an instruction does: a 32-bit write clears the
    /// upper half, a 16-bit write keeps the other bits. `None` (and no change) for any other
    /// register.
    pub fn set_gpr(&mut self, reg: iced_x86::Register, value: u64) -> Option<()> {
        let full = self.full_mut(reg)?;
        *full = match reg.size() {
            8 => value,
            4 => value & 0xffff_ffff,
            2 => (*full & !0xffff) | (value & 0xffff),
            _ => return None,
        };
        Some(())
    }
}

/// A segment register in its hidden-part (descriptor cache) form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes minus one (already scaled by granularity).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B).
    pub db: bool,
    /// Descriptor type: code/data (`true`) or system (`false`).
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit counted in 4 KiB units.
    pub g: bool,
    /// Available for software.
    pub avl: bool,
    /// Unusable (a null selector was loaded).
    pub unusable: bool,
}

/// A descriptor-table register (GDTR or IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes minus one.
    pub limit: u16,
}

/// Segment, control and system registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// An exception to deliver to the guest on its next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// The vector (0..=31).
    pub vector: u8,
    /// The error code, for vectors that push one.
    pub error_code: Option<u32>,
}

/// The page-fault vector (`#PF`).
pub const PF_VECTOR: u8 = 14;

/// The size of the standard-format XSAVE area the state trait exchanges (`KVM_GET_XSAVE`'s
/// `struct kvm_xsave`): the legacy region, the header and the extended components up to
/// AVX-512 in their standard offsets.
pub const XSAVE_AREA_SIZE: usize = 4096;

/// The `IA32_XSS` MSR: the supervisor state components XSAVES/XRSTORS manage.
pub const MSR_IA32_XSS: u32 = 0xda0;

/// What the emulation assist needs from a vCPU: registers, segments with their bases, control
/// registers, the pending event, the XSAVE state, XCR0 and MSRs, and exception injection.
///
/// vmkit-vcpu implements it for its backends; tests implement it in memory.
pub trait VcpuState {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads the general-purpose registers.
    fn registers(&self) -> Result<Registers, Self::Error>;
    /// Writes the general-purpose registers.
    fn set_registers(&mut self, regs: &Registers) -> Result<(), Self::Error>;
    /// Reads the segment, control and system registers.
    fn special_registers(&self) -> Result<SpecialRegisters, Self::Error>;
    /// Writes the segment, control and system registers.
    fn set_special_registers(&mut self, sregs: &SpecialRegisters) -> Result<(), Self::Error>;
    /// Queues `exception` for delivery on the next entry, replacing any exception already
    /// pending or injected.
    fn inject_exception(&mut self, exception: Exception) -> Result<(), Self::Error>;

    /// Queues a page fault: CR2 gets `address`, then `#PF` with `error_code` is queued.
    fn inject_page_fault(&mut self, address: u64, error_code: u32) -> Result<(), Self::Error> {
        let mut sregs = self.special_registers()?;
        sregs.cr2 = address;
        self.set_special_registers(&sregs)?;
        self.inject_exception(Exception {
            vector: PF_VECTOR,
            error_code: Some(error_code),
        })
    }

    /// The exception queued for the next entry (pending or already injected), if any.
    ///
    /// Some backends queue `#UD` together with an emulation failure; the assist reads it here.
    fn pending_exception(&self) -> Result<Option<Exception>, Self::Error>;

    /// Drops the exception queued for the next entry, if any.
    fn clear_pending_exception(&mut self) -> Result<(), Self::Error>;

    /// The standard-format (non-compacted) XSAVE area: [`XSAVE_AREA_SIZE`] bytes as `XSAVE`
    /// with every component requested would store them.
    fn xsave(&self) -> Result<Vec<u8>, Self::Error>;

    /// Loads a standard-format XSAVE area of [`XSAVE_AREA_SIZE`] bytes.
    fn set_xsave(&mut self, area: &[u8]) -> Result<(), Self::Error>;

    /// XCR0, the user state components XSAVE may manage.
    fn xcr0(&self) -> Result<u64, Self::Error>;

    /// Writes XCR0.
    fn set_xcr0(&mut self, value: u64) -> Result<(), Self::Error>;

    /// Reads MSR `index`; `None` when the vCPU does not have it.
    fn msr(&self, index: u32) -> Result<Option<u64>, Self::Error>;

    /// Writes MSR `index`.
    fn set_msr(&mut self, index: u32, value: u64) -> Result<(), Self::Error>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::Register as R;

    #[test]
    fn general_purpose_registers_by_width() {
        let mut regs = Registers {
            r9: 0x1122_3344_5566_7788,
            ..Registers::default()
        };
        assert_eq!(regs.gpr(R::R9), Some(0x1122_3344_5566_7788));
        assert_eq!(regs.gpr(R::R9D), Some(0x5566_7788));
        assert_eq!(regs.gpr(R::R9W), Some(0x7788));
        assert_eq!(regs.gpr(R::R9L), None, "byte registers are not read");
        assert_eq!(regs.gpr(R::XMM0), None);
        regs.set_gpr(R::R9W, 0xabcd).unwrap();
        assert_eq!(regs.r9, 0x1122_3344_5566_abcd);
        regs.set_gpr(R::R9D, 0xffff_ffff_0000_0001).unwrap();
        assert_eq!(regs.r9, 1, "a 32-bit write clears the upper half");
        regs.set_gpr(R::RSP, u64::MAX).unwrap();
        assert_eq!(regs.rsp, u64::MAX);
        assert_eq!(regs.set_gpr(R::AL, 1), None);
        assert_eq!(regs.set_gpr(R::CR0, 1), None);
        assert_eq!(regs.rax, 0);
    }
}
