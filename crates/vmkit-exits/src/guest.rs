//! Memory operands as the processor reaches them: effective address, segmentation (bases,
//! limits, rights), paging through vmkit-paging's walker, and the host mapping of guest memory.
//!
//! Every access is checked in full before any byte is written: a fault or an address outside
//! guest memory leaves memory untouched (the walker may already have set accessed flags, as the
//! processor does). Nothing here reads or writes outside the guest's memory regions.

use iced_x86::{Instruction, Register};
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmkit_paging::{Access, GuestMemoryPhys, Privilege, WalkError, X86Paging};

use crate::decode::CpuMode;
use crate::state::{Exception, Registers, Segment, SpecialRegisters};

use vmkit_paging::x86::{CR0_PE, CR0_PG, CR4_LA57, EFER_LMA};
const PAGE_SIZE: u64 = 4096;

/// The general-protection vector (`#GP`).
pub const GP_VECTOR: u8 = 13;
/// The stack-fault vector (`#SS`).
pub const SS_VECTOR: u8 = 12;
/// The device-not-available vector (`#NM`).
pub const NM_VECTOR: u8 = 7;
/// The x87 floating-point error vector (`#MF`).
pub const MF_VECTOR: u8 = 16;

/// An exception an instruction raises instead of completing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// `#UD`.
    InvalidOpcode,
    /// `#GP(0)`.
    GeneralProtection,
    /// `#SS(0)`.
    StackFault,
    /// `#NM`: a floating-point instruction with CR0.TS set.
    DeviceNotAvailable,
    /// `#MF`: an unmasked x87 exception is pending.
    FloatingPoint,
    /// `#PF` with the error code the processor pushes and the address it loads into CR2.
    PageFault {
        /// CR2.
        address: u64,
        /// The error code.
        error_code: u32,
    },
}

impl GuestFault {
    /// The exception to inject (a page fault's CR2 is set apart).
    pub fn exception(self) -> Exception {
        let (vector, error_code) = match self {
            GuestFault::InvalidOpcode => (crate::assist::UD_VECTOR, None),
            GuestFault::GeneralProtection => (GP_VECTOR, Some(0)),
            GuestFault::StackFault => (SS_VECTOR, Some(0)),
            GuestFault::DeviceNotAvailable => (NM_VECTOR, None),
            GuestFault::FloatingPoint => (MF_VECTOR, None),
            GuestFault::PageFault { error_code, .. } => (crate::state::PF_VECTOR, Some(error_code)),
        };
        Exception { vector, error_code }
    }
}

impl std::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestFault::InvalidOpcode => f.write_str("#UD"),
            GuestFault::GeneralProtection => f.write_str("#GP(0)"),
            GuestFault::StackFault => f.write_str("#SS(0)"),
            GuestFault::DeviceNotAvailable => f.write_str("#NM"),
            GuestFault::FloatingPoint => f.write_str("#MF"),
            GuestFault::PageFault {
                address,
                error_code,
            } => write!(f, "#PF({error_code:#x}) at {address:#x}"),
        }
    }
}

/// Why the assist cannot complete an instruction and stops the VM instead.
#[derive(Clone, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum Unsupported {
    /// the instruction is not one the assist emulates
    Instruction,
    /// the guest runs with 32-bit or PAE paging, which the assist does not walk
    PagingMode,
    /// guest-physical range {0:#x}+{1} is not guest RAM (MMIO or nothing)
    NotRam(u64, usize),
    /// the guest's page walk failed outside the architecture: {0}
    Walk(WalkError),
    /// the atomic operand at {0:#x} spans guest pages that are not contiguous on the host
    Straddle(u64),
    /// the atomic operand at {0:#x} crosses a cache line: the host would take a split lock
    SplitLock(u64),
    /// the host cannot perform the atomic operation
    HostAtomic,
    /// XSAVE state component {0} cannot be represented in the standard XSAVE area
    XsaveComponent(u32),
}

/// How an emulated instruction ends early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abort {
    /// The guest takes an exception.
    Fault(GuestFault),
    /// The VM stops with a report.
    Stop(Unsupported),
}

impl From<GuestFault> for Abort {
    fn from(f: GuestFault) -> Self {
        Abort::Fault(f)
    }
}

impl From<Unsupported> for Abort {
    fn from(u: Unsupported) -> Self {
        Abort::Stop(u)
    }
}

/// One guest-physical piece of a linear range (within one page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) gpa: u64,
    pub(crate) len: usize,
}

/// A linear range translated page by page, every page checked for the access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) linear: u64,
    pub(crate) pieces: Vec<Piece>,
}

/// A vCPU's view of guest memory for one instruction.
pub(crate) struct GuestView<'a, M: ?Sized> {
    pub(crate) mem: &'a M,
    pub(crate) regs: Registers,
    pub(crate) sregs: SpecialRegisters,
    pub(crate) mode: CpuMode,
}

impl<'a, M: GuestMemoryBackend + ?Sized> GuestView<'a, M> {
    pub(crate) fn new(mem: &'a M, regs: Registers, sregs: SpecialRegisters, mode: CpuMode) -> Self {
        Self {
            mem,
            regs,
            sregs,
            mode,
        }
    }

    /// The current privilege level: SS.DPL in protected mode, 0 in real mode.
    pub(crate) fn cpl(&self) -> u8 {
        if self.sregs.cr0 & CR0_PE == 0 {
            0
        } else {
            self.sregs.ss.dpl & 3
        }
    }

    fn segment(&self, reg: Register) -> Option<&Segment> {
        Some(match reg {
            Register::ES => &self.sregs.es,
            Register::CS => &self.sregs.cs,
            Register::SS => &self.sregs.ss,
            Register::DS => &self.sregs.ds,
            Register::FS => &self.sregs.fs,
            Register::GS => &self.sregs.gs,
            _ => return None,
        })
    }

    /// Writes general-purpose register `reg` as an instruction does (see
    /// [`Registers::set_gpr`]).
    pub(crate) fn set_gpr(&mut self, reg: Register, value: u64) -> Option<()> {
        self.regs.set_gpr(reg, value)
    }

    /// Reads general-purpose register `reg` (64-, 32- or 16-bit), zero-extended.
    pub(crate) fn gpr(&self, reg: Register) -> Option<u64> {
        self.regs.gpr(reg)
    }

    /// The linear address of `insn`'s memory operand `operand` for an access of `size` bytes,
    /// with the segmentation checks of the mode: canonical form in 64-bit mode (FS/GS bases
    /// added, others ignored), limits and rights elsewhere. `#SS(0)` for stack-segment
    /// references, `#GP(0)` for the others.
    pub(crate) fn linear(
        &self,
        insn: &Instruction,
        operand: u32,
        size: u64,
        write: bool,
    ) -> Result<u64, Abort> {
        let seg_reg = insn.memory_segment();
        let fault = if seg_reg == Register::SS {
            GuestFault::StackFault
        } else {
            GuestFault::GeneralProtection
        };
        let ea = insn
            .virtual_address(operand, 0, |reg, _, _| {
                if reg.is_segment_register() {
                    Some(0)
                } else {
                    self.gpr(reg)
                }
            })
            .ok_or(Unsupported::Instruction)?;
        let seg = self.segment(seg_reg).ok_or(Unsupported::Instruction)?;
        if self.mode == CpuMode::Bits64 {
            let base = match seg_reg {
                Register::FS | Register::GS => seg.base,
                _ => 0,
            };
            let la = base.wrapping_add(ea);
            let last = la.wrapping_add(size.saturating_sub(1));
            if !self.is_canonical(la) || !self.is_canonical(last) {
                return Err(fault.into());
            }
            return Ok(la);
        }
        // Protected or real mode: the segment must be usable, writable for writes, and hold the
        // whole operand.
        let protected = self.sregs.cr0 & CR0_PE != 0;
        if protected {
            let code = seg.type_ & 0b1000 != 0;
            let writable = !code && seg.type_ & 0b0010 != 0;
            let readable = !code || seg.type_ & 0b0010 != 0;
            if seg.unusable || !seg.present || (write && !writable) || (!write && !readable) {
                return Err(fault.into());
            }
        }
        let last = ea.checked_add(size.saturating_sub(1)).ok_or(fault)?;
        let expand_down = seg.type_ & 0b1100 == 0b0100 && protected;
        let limit = u64::from(seg.limit);
        let within = if expand_down {
            let top = if seg.db { 0xffff_ffff } else { 0xffff };
            ea > limit && last <= top
        } else {
            last <= limit
        };
        if !within {
            return Err(fault.into());
        }
        Ok(seg.base.wrapping_add(ea) & 0xffff_ffff)
    }

    fn is_canonical(&self, addr: u64) -> bool {
        let unused = if self.sregs.cr4 & CR4_LA57 != 0 {
            7
        } else {
            16
        };
        (((addr << unused) as i64) >> unused) as u64 == addr
    }

    /// Translates `len` bytes at linear `la` for a read or a write, page by page, with the
    /// rights of the current privilege level; accessed and dirty flags are set as the processor
    /// sets them. Every page is checked before the caller touches any.
    pub(crate) fn map(&self, la: u64, len: usize, write: bool) -> Result<Mapped, Abort> {
        let privilege = if self.cpl() == 3 {
            Privilege::User
        } else {
            Privilege::Supervisor
        };
        let access = if write {
            Access::write(privilege)
        } else {
            Access::read(privilege)
        };
        let paging = self.sregs.cr0 & CR0_PG != 0;
        if paging && self.sregs.efer & EFER_LMA == 0 {
            return Err(Unsupported::PagingMode.into());
        }
        let walker = X86Paging::from_registers(
            self.sregs.cr0,
            self.sregs.cr3,
            self.sregs.cr4,
            self.sregs.efer,
            self.regs.rflags,
        )
        .walker();
        let phys = GuestMemoryPhys(self.mem);
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let addr = la.wrapping_add(done as u64);
            let addr = if self.mode == CpuMode::Bits64 {
                addr
            } else {
                addr & 0xffff_ffff
            };
            let in_page = (PAGE_SIZE - addr % PAGE_SIZE) as usize;
            let n = in_page.min(len - done);
            let gpa = if paging {
                match walker.translate(&phys, addr, access) {
                    Ok(t) => t.address,
                    Err(WalkError::PageFault(pf)) => {
                        return Err(GuestFault::PageFault {
                            address: pf.address,
                            error_code: pf.error_code,
                        }
                        .into());
                    }
                    Err(WalkError::NonCanonical(_)) => {
                        return Err(GuestFault::GeneralProtection.into());
                    }
                    Err(e) => return Err(Unsupported::Walk(e).into()),
                }
            } else {
                addr
            };
            if self.mem.get_slice(GuestAddress(gpa), n).is_err() {
                return Err(Unsupported::NotRam(gpa, n).into());
            }
            match pieces.last_mut() {
                Some(Piece { gpa: g, len: l }) if g.wrapping_add(*l as u64) == gpa => *l += n,
                _ => pieces.push(Piece { gpa, len: n }),
            }
            done += n;
        }
        Ok(Mapped { linear: la, pieces })
    }

    /// The bytes at RIP up to the longest instruction (15) or the end of RIP's page, whichever
    /// comes first, read through the page tables; `None` when they cannot be read (a fault the
    /// CPU would report on its own fetch).
    pub(crate) fn instruction_bytes_on_page(&self) -> Option<Vec<u8>> {
        let seg_base = match self.mode {
            CpuMode::Bits64 => 0,
            _ => self.sregs.cs.base,
        };
        let la = seg_base.wrapping_add(self.regs.rip);
        let to_page_end = (PAGE_SIZE - la % PAGE_SIZE) as usize;
        let len = to_page_end.min(15);
        let mapped = self.map(la, len, false).ok()?;
        let mut bytes = vec![0u8; len];
        self.read(&mapped, &mut bytes).ok()?;
        Some(bytes)
    }

    /// Reads a mapped range into `buf` (as long as the range).
    pub(crate) fn read(&self, mapped: &Mapped, buf: &mut [u8]) -> Result<(), Abort> {
        let mut at = 0;
        for p in &mapped.pieces {
            let end = at + p.len;
            let dst = buf.get_mut(at..end).ok_or(Unsupported::Instruction)?;
            self.mem
                .read_slice(dst, GuestAddress(p.gpa))
                .map_err(|_| Unsupported::NotRam(p.gpa, p.len))?;
            at = end;
        }
        Ok(())
    }

    /// Writes `buf` (as long as the range) to a mapped range, marking it dirty.
    pub(crate) fn write(&self, mapped: &Mapped, buf: &[u8]) -> Result<(), Abort> {
        let mut at = 0;
        for p in &mapped.pieces {
            let end = at + p.len;
            let src = buf.get(at..end).ok_or(Unsupported::Instruction)?;
            self.mem
                .write_slice(src, GuestAddress(p.gpa))
                .map_err(|_| Unsupported::NotRam(p.gpa, p.len))?;
            at = end;
        }
        Ok(())
    }

    /// Runs `op` on the host address of a mapped atomic operand of `len` bytes, which must lie
    /// in one host range (one guest memory region, contiguous guest-physical pages) and within
    /// one 64-byte cache line; the range is marked dirty afterwards.
    ///
    /// `op` gets a pointer valid for reads and writes of `len` bytes while it runs.
    pub(crate) fn with_host_operand<T>(
        &self,
        mapped: &Mapped,
        len: usize,
        op: impl FnOnce(*mut u8) -> T,
    ) -> Result<T, Abort> {
        let [piece] = mapped.pieces.as_slice() else {
            return Err(Unsupported::Straddle(mapped.linear).into());
        };
        if piece.len != len {
            return Err(Unsupported::Instruction.into());
        }
        if piece.gpa % 64 + len as u64 > 64 {
            return Err(Unsupported::SplitLock(mapped.linear).into());
        }
        let slice = self
            .mem
            .get_slice(GuestAddress(piece.gpa), len)
            .map_err(|_| Unsupported::Straddle(mapped.linear))?;
        let result = {
            let guard = slice.ptr_guard_mut();
            op(guard.as_ptr())
        };
        slice.bitmap().mark_dirty(0, len);
        Ok(result)
    }
}
