//! The vector instructions the assist completes: the SSE/AVX/AVX-512 moves and the integer
//! operations Linux's ring-0 SIMD code (BLAKE2s for the random-number generator) runs, computed
//! on the vCPU's vector registers as they stand in its standard-format XSAVE area.
//!
//! A register `n` (0..=31) is 64 bytes wide: bytes 0..16 are XMMn (the SSE component, in the
//! legacy region), 16..32 the upper half of YMMn (the AVX component), 32..64 the upper half of
//! ZMMn (the ZMM_Hi256 component) for `n < 16`; ZMM16..31 are whole in the Hi16_ZMM component.
//! A component whose XSTATE_BV bit is clear is in its initial state (zeros); a write sets the
//! bit of every component it touches. A VEX- or EVEX-encoded write of a `len`-byte register
//! clears the bytes above it; a legacy SSE write keeps them.
//!
//! Masked (`{k}`), broadcast and embedded-rounding EVEX forms are not completed: the assist
//! reports them.

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use vm_memory::GuestMemoryBackend;

use crate::guest::{Abort, GuestFault, GuestView, Unsupported};
use crate::xsave::XsaveLayout;

/// Offset of XMM0 in the legacy region.
const XMM_OFFSET: usize = 160;
/// Offset of XSTATE_BV in the XSAVE header.
const XSTATE_BV: usize = 512;
/// The state components holding vector registers.
const SSE: usize = 1;
const AVX: usize = 2;
const OPMASK: usize = 5;
const ZMM_HI256: usize = 6;
const HI16_ZMM: usize = 7;

use vmkit_paging::x86::{CR0_EM, CR0_TS, CR4_OSFXSR, CR4_OSXSAVE};

/// The vector instructions completed, by the operation they compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VectorOp {
    /// An unaligned vector move (`movdqu`, `movups` and their VEX/EVEX forms).
    MoveUnaligned,
    /// An aligned vector move (`movdqa`, `movaps` and their VEX/EVEX forms): `#GP(0)` on a
    /// misaligned memory operand.
    MoveAligned,
    /// `movd`/`movq` between a general-purpose register or memory and a vector register.
    MoveScalar,
    /// Packed 32-bit addition.
    AddDwords,
    /// Packed 64-bit addition.
    AddQwords,
    /// Bitwise exclusive or.
    Xor,
    /// Rotate packed dwords right by an immediate (`vprord`).
    RotateDwordsRight,
    /// Shuffle dwords within each 128-bit lane by an immediate.
    ShuffleDwords,
    /// Permute dwords from two tables (`vpermi2d`).
    PermuteTwoTables,
    /// Extract 128 bits of a 256-bit register (`vextracti128`).
    Extract128,
    /// Zero the bits above 128 of registers 0..=15 (`vzeroupper`).
    ZeroUpper,
}

impl VectorOp {
    /// The operation `mnemonic` computes, if it is one the assist completes.
    pub(crate) fn of(mnemonic: Mnemonic) -> Option<Self> {
        use Mnemonic as M;
        Some(match mnemonic {
            M::Movdqu | M::Vmovdqu | M::Vmovdqu32 | M::Vmovdqu64 | M::Movups | M::Vmovups => {
                VectorOp::MoveUnaligned
            }
            M::Movdqa | M::Vmovdqa | M::Vmovdqa32 | M::Vmovdqa64 | M::Movaps | M::Vmovaps => {
                VectorOp::MoveAligned
            }
            M::Movd | M::Vmovd | M::Movq | M::Vmovq => VectorOp::MoveScalar,
            M::Paddd | M::Vpaddd => VectorOp::AddDwords,
            M::Paddq | M::Vpaddq => VectorOp::AddQwords,
            M::Pxor | M::Vpxor | M::Vpxord | M::Vpxorq => VectorOp::Xor,
            M::Vprord => VectorOp::RotateDwordsRight,
            M::Pshufd | M::Vpshufd => VectorOp::ShuffleDwords,
            M::Vpermi2d => VectorOp::PermuteTwoTables,
            M::Vextracti128 => VectorOp::Extract128,
            M::Vzeroupper => VectorOp::ZeroUpper,
            _ => return None,
        })
    }
}

/// The vector registers in a standard-format XSAVE area.
pub(crate) struct VectorFile<'a> {
    area: &'a mut [u8],
    layout: &'a XsaveLayout,
    /// The components XCR0 enables.
    xcr0: u64,
}

impl<'a> VectorFile<'a> {
    pub(crate) fn new(area: &'a mut [u8], layout: &'a XsaveLayout, xcr0: u64) -> Self {
        Self { area, layout, xcr0 }
    }

    fn xstate_bv(&self) -> u64 {
        self.area
            .get(XSTATE_BV..XSTATE_BV + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    }

    /// Where the parts of register `n` live: `(component, offset in the area, byte range of the
    /// register)`.
    fn parts(&self, n: usize) -> Vec<(usize, usize, std::ops::Range<usize>)> {
        let offset = |c: usize| self.layout.component(c).offset as usize;
        if n < 16 {
            vec![
                (SSE, XMM_OFFSET + 16 * n, 0..16),
                (AVX, offset(AVX) + 16 * n, 16..32),
                (ZMM_HI256, offset(ZMM_HI256) + 32 * n, 32..64),
            ]
        } else {
            vec![(HI16_ZMM, offset(HI16_ZMM) + 64 * (n - 16), 0..64)]
        }
    }

    /// Whether component `c` is enabled and where the standard area can hold it.
    fn enabled(&self, c: usize) -> bool {
        self.xcr0 & (1 << c) != 0 && (c == SSE || self.layout.component(c).size != 0)
    }

    /// The 64 bytes of register `n`; parts in their initial state or not enabled read as 0.
    pub(crate) fn read(&self, n: usize) -> [u8; 64] {
        let mut value = [0u8; 64];
        let bv = self.xstate_bv();
        for (c, at, bytes) in self.parts(n) {
            if bv & (1 << c) == 0 || !self.enabled(c) {
                continue;
            }
            if let Some(src) = self.area.get(at..at + bytes.len()) {
                value[bytes].copy_from_slice(src);
            }
        }
        value
    }

    /// Writes the low `len` bytes of `value` to register `n`; the bytes above are cleared
    /// (`zero_upper`, VEX and EVEX forms) or kept (legacy SSE forms).
    pub(crate) fn write(
        &mut self,
        n: usize,
        value: &[u8; 64],
        len: usize,
        zero_upper: bool,
    ) -> Result<(), Abort> {
        let mut new = if zero_upper { [0u8; 64] } else { self.read(n) };
        new[..len].copy_from_slice(&value[..len]);
        let mut bv = self.xstate_bv();
        for (c, at, bytes) in self.parts(n) {
            if !self.enabled(c) {
                // A register part the guest cannot have: the value must not need it.
                if new[bytes].iter().any(|&b| b != 0) {
                    return Err(Unsupported::Instruction.into());
                }
                continue;
            }
            let dst = self
                .area
                .get_mut(at..at + bytes.len())
                .ok_or(Unsupported::XsaveComponent(c as u32))?;
            dst.copy_from_slice(&new[bytes]);
            bv |= 1 << c;
        }
        if let Some(dst) = self.area.get_mut(XSTATE_BV..XSTATE_BV + 8) {
            dst.copy_from_slice(&bv.to_le_bytes());
        }
        Ok(())
    }
}

/// The register number (0..=31) of a vector register operand, and its width in bytes.
fn vector_register(reg: Register) -> Option<(usize, usize)> {
    let (base, len) = if reg.is_xmm() {
        (Register::XMM0, 16)
    } else if reg.is_ymm() {
        (Register::YMM0, 32)
    } else if reg.is_zmm() {
        (Register::ZMM0, 64)
    } else {
        return None;
    };
    Some(((reg as usize) - (base as usize), len))
}

/// Completes vector instruction `insn` (`op`) on `view`'s registers and memory and the vector
/// registers in `file`. `Err` for a fault the guest gets or a form the assist does not complete.
pub(crate) fn execute<M: GuestMemoryBackend + ?Sized>(
    view: &mut GuestView<'_, M>,
    insn: &Instruction,
    op: VectorOp,
    file: &mut VectorFile<'_>,
) -> Result<(), Abort> {
    check_enabled(view, insn, file.xcr0)?;
    if insn.op_mask() != Register::None || insn.is_broadcast() || insn.suppress_all_exceptions() {
        return Err(Unsupported::Instruction.into());
    }
    let vex = insn.encoding() != iced_x86::EncodingKind::Legacy;
    if op == VectorOp::ZeroUpper {
        for n in 0..16 {
            let low = file.read(n);
            file.write(n, &low, 16, true)?;
        }
        return Ok(());
    }
    let dest = insn.op0_kind();
    match op {
        VectorOp::MoveUnaligned | VectorOp::MoveAligned => {
            let aligned = op == VectorOp::MoveAligned;
            match dest {
                OpKind::Register => {
                    let (n, len) =
                        vector_register(insn.op0_register()).ok_or(Unsupported::Instruction)?;
                    let value = source(view, insn, file, 1, len, aligned)?;
                    file.write(n, &value, len, vex)
                }
                OpKind::Memory => {
                    let (m, len) =
                        vector_register(insn.op1_register()).ok_or(Unsupported::Instruction)?;
                    let value = file.read(m);
                    store(view, insn, 0, &value[..len], aligned)
                }
                _ => Err(Unsupported::Instruction.into()),
            }
        }
        VectorOp::MoveScalar => move_scalar(view, insn, file, vex),
        VectorOp::Extract128 => {
            let (m, _) = vector_register(insn.op1_register()).ok_or(Unsupported::Instruction)?;
            let half = usize::from(insn.immediate8() & 1) * 16;
            let mut value = [0u8; 64];
            value[..16].copy_from_slice(&file.read(m)[half..half + 16]);
            match dest {
                OpKind::Register => {
                    let (n, _) =
                        vector_register(insn.op0_register()).ok_or(Unsupported::Instruction)?;
                    file.write(n, &value, 16, true)
                }
                OpKind::Memory => store(view, insn, 0, &value[..16], false),
                _ => Err(Unsupported::Instruction.into()),
            }
        }
        _ => {
            // dest = f(src1, src2[, imm]); legacy SSE forms have two operands: dest is src1.
            let (n, len) = vector_register(insn.op0_register()).ok_or(Unsupported::Instruction)?;
            let (first, second) = if vex { (1, 2) } else { (0, 1) };
            let a = if op == VectorOp::RotateDwordsRight || op == VectorOp::ShuffleDwords {
                // One source (operand 1) and an immediate.
                source(view, insn, file, 1, len, !vex)?
            } else {
                source(view, insn, file, first, len, false)?
            };
            let b = if matches!(op, VectorOp::RotateDwordsRight | VectorOp::ShuffleDwords) {
                [0u8; 64]
            } else {
                // Legacy SSE memory operands must be aligned.
                source(view, insn, file, second, len, !vex)?
            };
            let value = compute(op, &file.read(n), &a, &b, len, insn.immediate8());
            file.write(n, &value, len, vex)
        }
    }
}

/// `#UD` or `#NM` as the processor raises them before it looks at the operands.
fn check_enabled<M: GuestMemoryBackend + ?Sized>(
    view: &GuestView<'_, M>,
    insn: &Instruction,
    xcr0: u64,
) -> Result<(), Abort> {
    let (cr0, cr4) = (view.sregs.cr0, view.sregs.cr4);
    let needed: u64 = match insn.encoding() {
        iced_x86::EncodingKind::Legacy => {
            if cr0 & CR0_EM != 0 || cr4 & CR4_OSFXSR == 0 {
                return Err(GuestFault::InvalidOpcode.into());
            }
            0
        }
        iced_x86::EncodingKind::VEX => 1 << AVX | 1 << SSE,
        iced_x86::EncodingKind::EVEX => {
            1 << SSE | 1 << AVX | 1 << OPMASK | 1 << ZMM_HI256 | 1 << HI16_ZMM
        }
        _ => return Err(Unsupported::Instruction.into()),
    };
    if needed != 0 && (cr4 & CR4_OSXSAVE == 0 || xcr0 & needed != needed) {
        return Err(GuestFault::InvalidOpcode.into());
    }
    if cr0 & CR0_TS != 0 {
        return Err(GuestFault::DeviceNotAvailable.into());
    }
    Ok(())
}

/// The `len`-byte value of operand `index`: a vector register or memory (`#GP(0)` when
/// `aligned` and the address is not a multiple of `len`).
fn source<M: GuestMemoryBackend + ?Sized>(
    view: &GuestView<'_, M>,
    insn: &Instruction,
    file: &VectorFile<'_>,
    index: u32,
    len: usize,
    aligned: bool,
) -> Result<[u8; 64], Abort> {
    match insn.op_kind(index) {
        OpKind::Register => {
            let (m, _) =
                vector_register(insn.op_register(index)).ok_or(Unsupported::Instruction)?;
            let mut value = file.read(m);
            value[len..].fill(0);
            Ok(value)
        }
        OpKind::Memory => {
            let la = view.linear(insn, index, len as u64, false)?;
            if aligned && la % len as u64 != 0 {
                return Err(GuestFault::GeneralProtection.into());
            }
            let mapped = view.map(la, len, false)?;
            let mut value = [0u8; 64];
            view.read(&mapped, &mut value[..len])?;
            Ok(value)
        }
        _ => Err(Unsupported::Instruction.into()),
    }
}

/// Writes `bytes` to memory operand `index`.
fn store<M: GuestMemoryBackend + ?Sized>(
    view: &GuestView<'_, M>,
    insn: &Instruction,
    index: u32,
    bytes: &[u8],
    aligned: bool,
) -> Result<(), Abort> {
    let la = view.linear(insn, index, bytes.len() as u64, true)?;
    if aligned && la % bytes.len() as u64 != 0 {
        return Err(GuestFault::GeneralProtection.into());
    }
    let mapped = view.map(la, bytes.len(), true)?;
    view.write(&mapped, bytes)
}

/// `movd`/`movq`: 4 or 8 bytes between a general-purpose register or memory and the low end of
/// a vector register (zero-extended to 128 bits when it is the destination; `movq xmm, xmm`
/// copies the low quadword).
fn move_scalar<M: GuestMemoryBackend + ?Sized>(
    view: &mut GuestView<'_, M>,
    insn: &Instruction,
    file: &mut VectorFile<'_>,
    vex: bool,
) -> Result<(), Abort> {
    let width = if insn.mnemonic() == Mnemonic::Movd || insn.mnemonic() == Mnemonic::Vmovd {
        4
    } else {
        8
    };
    let to_vector = insn.op0_kind() == OpKind::Register && insn.op0_register().is_xmm();
    if to_vector {
        let (n, _) = vector_register(insn.op0_register()).ok_or(Unsupported::Instruction)?;
        let mut value = [0u8; 64];
        match insn.op1_kind() {
            OpKind::Register if insn.op1_register().is_xmm() => {
                let (m, _) =
                    vector_register(insn.op1_register()).ok_or(Unsupported::Instruction)?;
                value[..width].copy_from_slice(&file.read(m)[..width]);
            }
            OpKind::Register => {
                let gpr = view
                    .gpr(insn.op1_register())
                    .ok_or(Unsupported::Instruction)?;
                value[..width].copy_from_slice(&gpr.to_le_bytes()[..width]);
            }
            OpKind::Memory => {
                value = source(view, insn, file, 1, width, false)?;
            }
            _ => return Err(Unsupported::Instruction.into()),
        }
        // The destination's bits 128 and up: cleared by VEX, kept by SSE.
        return file.write(n, &value, 16, vex);
    }
    let (m, _) = vector_register(insn.op1_register()).ok_or(Unsupported::Instruction)?;
    let low = file.read(m);
    match insn.op0_kind() {
        OpKind::Register => {
            let mut bytes = [0u8; 8];
            bytes[..width].copy_from_slice(&low[..width]);
            view.set_gpr(insn.op0_register(), u64::from_le_bytes(bytes))
                .ok_or_else(|| Abort::from(Unsupported::Instruction))
        }
        OpKind::Memory => store(view, insn, 0, &low[..width], false),
        _ => Err(Unsupported::Instruction.into()),
    }
}

fn dwords(bytes: &[u8; 64]) -> [u32; 16] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}

fn from_dwords(values: &[u32; 16]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (chunk, v) in out.chunks_exact_mut(4).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The `len`-byte result of a two-source operation; `dest` is the destination's old value
/// (the index table of `vpermi2d`).
fn compute(
    op: VectorOp,
    dest: &[u8; 64],
    a: &[u8; 64],
    b: &[u8; 64],
    len: usize,
    imm: u8,
) -> [u8; 64] {
    let count = len / 4;
    let (da, db) = (dwords(a), dwords(b));
    let mut out = [0u32; 16];
    match op {
        VectorOp::AddDwords => {
            for i in 0..count {
                out[i] = da[i].wrapping_add(db[i]);
            }
        }
        VectorOp::AddQwords => {
            let mut bytes = [0u8; 64];
            for i in 0..len / 8 {
                let q = |v: &[u8; 64]| {
                    u64::from_le_bytes(v[8 * i..8 * i + 8].try_into().unwrap_or_default())
                };
                bytes[8 * i..8 * i + 8].copy_from_slice(&q(a).wrapping_add(q(b)).to_le_bytes());
            }
            return bytes;
        }
        VectorOp::Xor => {
            for i in 0..count {
                out[i] = da[i] ^ db[i];
            }
        }
        VectorOp::RotateDwordsRight => {
            for i in 0..count {
                out[i] = da[i].rotate_right(u32::from(imm) % 32);
            }
        }
        VectorOp::ShuffleDwords => {
            for lane in 0..count / 4 {
                for i in 0..4 {
                    out[4 * lane + i] = da[4 * lane + usize::from((imm >> (2 * i)) & 3)];
                }
            }
        }
        VectorOp::PermuteTwoTables => {
            let index = dwords(dest);
            let bits = count.trailing_zeros();
            for i in 0..count {
                let selector = index[i] as usize;
                let element = selector & (count - 1);
                out[i] = if selector >> bits & 1 == 0 {
                    da[element]
                } else {
                    db[element]
                };
            }
        }
        _ => {}
    }
    from_dwords(&out)
}
