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

/// What the emulation assist needs from a vCPU: its registers and a way to inject an exception.
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
    /// Queues `exception` for delivery on the next entry.
    fn inject_exception(&mut self, exception: Exception) -> Result<(), Self::Error>;
}
