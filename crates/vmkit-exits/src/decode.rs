//! Instruction decoding for the emulation assist, with iced-x86.
//!
//! [`decode`] turns the bytes a backend failed on into a [`DecodedInsn`]: iced-x86's
//! [`Instruction`] (operands, memory operand with segment, base, index, scale, displacement and
//! RIP-relative target, operand sizes, prefixes) decoded in the vCPU's [`CpuMode`], its length
//! and an Intel-syntax text for reports. What this module adds to iced-x86 is only the mode of a
//! vCPU ([`CpuMode::from_sregs`]) and the error type.

use std::fmt;

use iced_x86::{Decoder, DecoderError, DecoderOptions, Formatter, Instruction, IntelFormatter};

use crate::state::SpecialRegisters;

/// The longest legal x86 instruction, in bytes.
pub const MAX_INSN_LEN: usize = crate::exit::MAX_INSN_LEN;

/// The default operand and address size the code runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// Real mode or 16-bit protected mode.
    Bits16,
    /// 32-bit protected mode or 32-bit compatibility mode.
    Bits32,
    /// 64-bit long mode.
    Bits64,
}

impl CpuMode {
    /// The mode of code running with `sregs`: 64-bit when `EFER.LMA` and `CS.L`, otherwise by
    /// `CS.D` in protected mode, and 16-bit in real mode.
    pub fn from_sregs(sregs: &SpecialRegisters) -> Self {
        use vmkit_paging::x86::{CR0_PE, EFER_LMA};
        if sregs.cr0 & CR0_PE == 0 {
            CpuMode::Bits16
        } else if sregs.efer & EFER_LMA != 0 && sregs.cs.l {
            CpuMode::Bits64
        } else if sregs.cs.db {
            CpuMode::Bits32
        } else {
            CpuMode::Bits16
        }
    }

    /// The bitness iced-x86 decodes with: 16, 32 or 64.
    pub const fn bits(self) -> u32 {
        match self {
            CpuMode::Bits16 => 16,
            CpuMode::Bits32 => 32,
            CpuMode::Bits64 => 64,
        }
    }
}

impl fmt::Display for CpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-bit", self.bits())
    }
}

/// Why bytes could not be decoded into an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum DecodeError {
    /// no instruction bytes
    Empty,
    /// the bytes end before the instruction does
    Truncated,
    /// the bytes are no valid instruction in this mode
    ///
    /// The bytes are no valid instruction in this mode (undefined opcode, over 15 bytes, a
    /// register operand where only memory is allowed, ...).
    Invalid,
}

/// A decoded instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedInsn {
    /// The mnemonic in lower case, with a `lock`/`rep`/`repne` prefix where one is present
    /// (`"lock cmpxchg16b"`, `"rep movsb"`, `"int3"`).
    pub name: String,
    /// The length in bytes (1 to 15).
    pub len: usize,
    /// The mode it was decoded in.
    pub mode: CpuMode,
    /// iced-x86's instruction: operands, memory operand, sizes and prefixes.
    pub instruction: Instruction,
}

impl DecodedInsn {
    /// Whether a `lock` prefix is present.
    pub fn lock(&self) -> bool {
        self.instruction.has_lock_prefix()
    }

    /// The instruction in Intel syntax, prefixes included (`"lock cmpxchg16b [rbp+20h]"`).
    pub fn text(&self) -> String {
        let mut out = String::new();
        IntelFormatter::new().format(&self.instruction, &mut out);
        out
    }
}

impl fmt::Display for DecodedInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len {
            1 => write!(f, "{} (1 byte)", self.text()),
            len => write!(f, "{} ({len} bytes)", self.text()),
        }
    }
}

/// Decodes the instruction at the start of `bytes` (at most [`MAX_INSN_LEN`] of them are read)
/// as code of `mode`.
///
/// ```
/// use vmkit_exits::{CpuMode, decode::decode};
/// // `mov cr3, rax` with a ModRM whose mod field is not 11: the CPU takes the register form.
/// let insn = decode(&[0x0f, 0x22, 0x18, 0x90], CpuMode::Bits64)?;
/// assert_eq!((insn.name.as_str(), insn.len), ("mov", 3));
/// # Ok::<(), vmkit_exits::DecodeError>(())
/// ```
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<DecodedInsn, DecodeError> {
    decode_at(bytes, mode, 0)
}

/// Decodes like [`decode`] an instruction that starts at `rip`: RIP-relative memory operands
/// then hold their target address.
pub fn decode_at(bytes: &[u8], mode: CpuMode, rip: u64) -> Result<DecodedInsn, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(mode.bits(), bytes, rip, DecoderOptions::NONE);
    let instruction = decoder.decode();
    match decoder.last_error() {
        DecoderError::None => {}
        DecoderError::NoMoreBytes => return Err(DecodeError::Truncated),
        _ => return Err(DecodeError::Invalid),
    }
    Ok(DecodedInsn {
        name: name(&instruction),
        len: instruction.len(),
        mode,
        instruction,
    })
}

/// The lower-case mnemonic with its `lock`/`rep`/`repne` prefix.
fn name(instruction: &Instruction) -> String {
    let mut out = String::new();
    let mut formatter = IntelFormatter::new();
    formatter.format_mnemonic(instruction, &mut out);
    out
}

/// The instruction at the start of `bytes` decoded as 64-bit code, in Intel syntax; a short
/// description of the problem when it cannot be decoded.
///
/// ```
/// use vmkit_exits::describe_insn;
/// assert_eq!(describe_insn(&[0xcc]), "int3");
/// assert_eq!(describe_insn(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), "lock cmpxchg16b [rsi]");
/// assert_eq!(describe_insn(&[0x0f, 0xae, 0x2f]), "xrstor [rdi]");
/// assert_eq!(describe_insn(&[0x0f]), "truncated instruction");
/// ```
pub fn describe_insn(bytes: &[u8]) -> String {
    match decode(bytes, CpuMode::Bits64) {
        Ok(insn) => insn.text(),
        Err(DecodeError::Empty) => "no instruction bytes".into(),
        Err(DecodeError::Truncated) => "truncated instruction".into(),
        Err(DecodeError::Invalid) => "invalid instruction".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Segment;
    use iced_x86::{Code, Mnemonic, OpKind, Register};

    #[test]
    fn modes_from_registers() {
        let mut s = SpecialRegisters::default();
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits16);
        s.cr0 = 1;
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits16);
        s.cs = Segment {
            db: true,
            ..Segment::default()
        };
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits32);
        s.efer = 1 << 10;
        s.cs.l = true;
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits64);
        assert_eq!(CpuMode::Bits32.to_string(), "32-bit");
    }

    #[test]
    fn the_instructions_the_assist_handles() {
        let i = decode(&[0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20], CpuMode::Bits64).unwrap();
        assert_eq!(i.name, "lock cmpxchg16b");
        assert_eq!(i.len, 6);
        assert!(i.lock());
        assert_eq!(i.instruction.code(), Code::Cmpxchg16b_m128);
        assert_eq!(i.instruction.op0_kind(), OpKind::Memory);
        assert_eq!(i.instruction.memory_base(), Register::RBP);
        assert_eq!(i.instruction.memory_segment(), Register::SS);
        assert_eq!(i.instruction.memory_displacement64(), 0x20);
        assert_eq!(i.text(), "lock cmpxchg16b [rbp+20h]");
        assert_eq!(i.to_string(), "lock cmpxchg16b [rbp+20h] (6 bytes)");

        let gs = decode(&[0x65, 0x48, 0x0f, 0xc7, 0x0e], CpuMode::Bits64).unwrap();
        assert_eq!(gs.instruction.segment_prefix(), Register::GS);
        assert!(!gs.lock());

        let int3 = decode(&[0xcc, 0x90], CpuMode::Bits32).unwrap();
        assert_eq!((int3.name.as_str(), int3.len), ("int3", 1));
        assert_eq!(int3.to_string(), "int3 (1 byte)");

        let xrstors = decode(&[0x48, 0x0f, 0xc7, 0x1f], CpuMode::Bits64).unwrap();
        assert_eq!(xrstors.instruction.mnemonic(), Mnemonic::Xrstors64);
        let rip_rel = decode(&[0x0f, 0xae, 0x25, 0x10, 0, 0, 0], CpuMode::Bits64).unwrap();
        assert!(rip_rel.instruction.is_ip_rel_memory_operand());
    }

    #[test]
    fn mode_changes_the_meaning() {
        // 0x48 is REX.W in 64-bit code and `dec eax` elsewhere.
        let bytes = [0x48, 0x0f, 0xae, 0x2f];
        assert_eq!(decode(&bytes, CpuMode::Bits64).unwrap().name, "xrstor64");
        assert_eq!(decode(&bytes, CpuMode::Bits32).unwrap().name, "dec");
        // cmpxchg16b does not exist outside 64-bit mode; cmpxchg8b does.
        let cx8 = decode(&[0x0f, 0xc7, 0x0c], CpuMode::Bits16).unwrap();
        assert_eq!(cx8.instruction.code(), Code::Cmpxchg8b_m64);
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[], CpuMode::Bits64), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[0x0f], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x66; 16], CpuMode::Bits64),
            Err(DecodeError::Invalid),
            "over 15 bytes"
        );
        // cmpxchg8b with a register operand is #UD.
        assert_eq!(
            decode(&[0x0f, 0xc7, 0xc8], CpuMode::Bits64),
            Err(DecodeError::Invalid)
        );
        assert_eq!(describe_insn(&[]), "no instruction bytes");
        assert_eq!(describe_insn(&[0x0f, 0x0b]), "ud2");
        assert_eq!(describe_insn(&[0x06; 15]), "invalid instruction");
    }
}
