//! Just enough x86 instruction decoding to name and measure an instruction a backend could not
//! emulate: prefixes, opcode maps (legacy, `0f`, `0f 38`, `0f 3a`, VEX, EVEX), ModRM/SIB,
//! displacement and immediate sizes.
//!
//! It computes lengths for every general-purpose, x87, SSE, VEX and EVEX encoding, and names the
//! general-purpose and system instructions (the ones an emulation failure is about); vector
//! instructions are named by class. It is not an emulator: it never looks at operands' values.
//! Rare AMD-only encodings (XOP, SSE4a immediates) are measured as their Intel counterparts.

use std::fmt;

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
    pub fn from_sregs(sregs: &crate::state::SpecialRegisters) -> Self {
        const CR0_PE: u64 = 1;
        const EFER_LMA: u64 = 1 << 10;
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
}

/// The opcode map an instruction's opcode byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpcodeMap {
    /// One-byte opcodes.
    Legacy,
    /// `0f xx`.
    Map0F,
    /// `0f 38 xx`.
    Map0F38,
    /// `0f 3a xx`.
    Map0F3A,
    /// VEX-encoded (AVX), with the VEX map number (1 = `0f`, 2 = `0f 38`, 3 = `0f 3a`).
    Vex(u8),
    /// EVEX-encoded (AVX-512), with the EVEX map number.
    Evex(u8),
}

/// A repeat prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rep {
    /// `f3`: `rep`/`repe`.
    Rep,
    /// `f2`: `repne`.
    Repne,
}

/// Why bytes could not be decoded into a named instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No instruction bytes.
    #[error("no instruction bytes")]
    Empty,
    /// The bytes end before the opcode.
    #[error("the bytes end before the opcode")]
    Truncated,
    /// The instruction is longer than 15 bytes.
    #[error("the instruction is longer than 15 bytes")]
    TooLong,
    /// The opcode is undefined in this mode.
    #[error("the opcode is undefined in this mode")]
    Invalid,
}

/// A decoded instruction: its name, length and encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedInsn {
    /// The mnemonic, with a `lock`/`rep` prefix where it matters (`"lock cmpxchg16b"`,
    /// `"rep movs"`); vector instructions are named by class (`"sse"`, `"avx (vex)"`).
    pub name: &'static str,
    /// The length in bytes, or `None` when the bytes end before the instruction does.
    pub len: Option<usize>,
    /// The opcode map.
    pub map: OpcodeMap,
    /// The opcode byte within its map.
    pub opcode: u8,
    /// The ModRM byte, for encodings that have one.
    pub modrm: Option<u8>,
    /// Whether a `lock` prefix is present.
    pub lock: bool,
    /// The last repeat prefix, if any.
    pub rep: Option<Rep>,
}

impl fmt::Display for DecodedInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.len {
            Some(1) => write!(f, "{} (1 byte)", self.name),
            Some(len) => write!(f, "{} ({len} bytes)", self.name),
            None => write!(f, "{} (truncated)", self.name),
        }
    }
}

/// The name of the instruction at the start of `bytes`, decoded as 64-bit code; a short
/// description of the problem when it cannot be decoded.
///
/// ```
/// use vmkit_exits::describe_insn;
/// assert_eq!(describe_insn(&[0xcc]), "int3");
/// assert_eq!(describe_insn(&[0xf0, 0x48, 0x0f, 0xc7, 0x0e]), "lock cmpxchg16b");
/// assert_eq!(describe_insn(&[0x0f, 0xae, 0x2f]), "xrstor");
/// ```
pub fn describe_insn(bytes: &[u8]) -> &'static str {
    match decode(bytes, CpuMode::Bits64) {
        Ok(insn) => insn.name,
        Err(DecodeError::Empty) => "no instruction bytes",
        Err(DecodeError::Truncated) => "truncated instruction",
        Err(DecodeError::TooLong) => "over-long instruction",
        Err(DecodeError::Invalid) => "invalid opcode",
    }
}

#[derive(Clone, Copy, Default)]
struct Prefixes {
    opsize: bool,
    addrsize: bool,
    lock: bool,
    rep: Option<Rep>,
    rex_w: bool,
}

/// Immediate operand sizes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Imm {
    None,
    /// A fixed number of bytes.
    Bytes(usize),
    /// 2 or 4 bytes by operand size.
    Z,
    /// 2, 4 or 8 bytes by operand size (`mov r, imm`).
    V,
    /// A relative branch: 4 bytes in 64-bit mode, otherwise 2 or 4 by operand size.
    Rel,
    /// A memory offset of the address size.
    Moffs,
    /// A far pointer: 2 bytes of selector and 2 or 4 of offset.
    Far,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }
}

/// Decodes the instruction at the start of `bytes` as code of `mode`.
///
/// Bytes after the instruction are ignored. When the bytes end after the opcode (and ModRM, where
/// the name depends on it) the instruction is still named, with `len: None`.
pub fn decode(bytes: &[u8], mode: CpuMode) -> Result<DecodedInsn, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut cur = Cursor { bytes, pos: 0 };
    let mut p = Prefixes::default();
    let mut rex = false;
    let op = loop {
        if cur.pos >= MAX_INSN_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = cur.next().ok_or(DecodeError::Truncated)?;
        // A REX prefix counts only directly before the opcode; a legacy prefix after it voids it.
        let was_rex = std::mem::take(&mut rex);
        match b {
            0x66 => p.opsize = true,
            0x67 => p.addrsize = true,
            0xf0 => p.lock = true,
            0xf2 => p.rep = Some(Rep::Repne),
            0xf3 => p.rep = Some(Rep::Rep),
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0x40..=0x4f if mode == CpuMode::Bits64 => {
                rex = true;
                p.rex_w = b & 0x08 != 0;
                continue;
            }
            _ => break b,
        }
        if was_rex {
            p.rex_w = false;
        }
    };

    let opsize = match (mode, p.rex_w, p.opsize) {
        (CpuMode::Bits64, true, _) => 8,
        (CpuMode::Bits16, _, false) | (CpuMode::Bits32 | CpuMode::Bits64, false, true) => 2,
        _ => 4,
    };
    let addrsize = match (mode, p.addrsize) {
        (CpuMode::Bits64, false) => 8,
        (CpuMode::Bits16, false) | (CpuMode::Bits32, true) => 2,
        _ => 4,
    };

    // VEX and EVEX reuse LES, LDS and BOUND: outside 64-bit mode only a register-form "ModRM"
    // (top bits 11) makes them prefixes.
    let vex_form = |next: Option<u8>| mode == CpuMode::Bits64 || next.is_some_and(|n| n >= 0xc0);
    let (map, opcode, has_modrm, imm) = match op {
        0x0f => {
            let b = cur.next().ok_or(DecodeError::Truncated)?;
            match b {
                0x38 => {
                    let o = cur.next().ok_or(DecodeError::Truncated)?;
                    (OpcodeMap::Map0F38, o, true, Imm::None)
                }
                0x3a => {
                    let o = cur.next().ok_or(DecodeError::Truncated)?;
                    (OpcodeMap::Map0F3A, o, true, Imm::Bytes(1))
                }
                _ => {
                    if invalid_0f(b) {
                        return Err(DecodeError::Invalid);
                    }
                    (OpcodeMap::Map0F, b, modrm_0f(b), imm_0f(b, &p))
                }
            }
        }
        0xc4 | 0xc5 if vex_form(cur.peek()) => {
            let map = if op == 0xc5 {
                cur.next().ok_or(DecodeError::Truncated)?;
                1
            } else {
                let p0 = cur.next().ok_or(DecodeError::Truncated)?;
                cur.next().ok_or(DecodeError::Truncated)?;
                p0 & 0x1f
            };
            let o = cur.next().ok_or(DecodeError::Truncated)?;
            vector_map(OpcodeMap::Vex(map), map, o, &p)?
        }
        0x62 if vex_form(cur.peek()) => {
            let p0 = cur.next().ok_or(DecodeError::Truncated)?;
            cur.next().ok_or(DecodeError::Truncated)?;
            cur.next().ok_or(DecodeError::Truncated)?;
            let map = p0 & 0x07;
            let o = cur.next().ok_or(DecodeError::Truncated)?;
            vector_map(OpcodeMap::Evex(map), map, o, &p)?
        }
        _ => {
            if mode == CpuMode::Bits64 && invalid_in_64(op) {
                return Err(DecodeError::Invalid);
            }
            (OpcodeMap::Legacy, op, modrm_legacy(op), imm_legacy(op))
        }
    };

    let modrm = if has_modrm { cur.next() } else { None };
    let name = name(map, opcode, modrm, &p, mode);
    let mut insn = DecodedInsn {
        name,
        len: None,
        map,
        opcode,
        modrm,
        lock: p.lock,
        rep: p.rep,
    };
    if has_modrm && modrm.is_none() {
        return Ok(insn);
    }
    let Some(operands) = operand_bytes(&mut cur, modrm, addrsize) else {
        return Ok(insn);
    };
    let reg = modrm.map_or(0, |m| (m >> 3) & 7);
    let imm = match (map, opcode) {
        // test r/m, imm is the only member of its group with an immediate.
        (OpcodeMap::Legacy, 0xf6) if reg < 2 => Imm::Bytes(1),
        (OpcodeMap::Legacy, 0xf7) if reg < 2 => Imm::Z,
        _ => imm,
    };
    let imm_len = match imm {
        Imm::None => 0,
        Imm::Bytes(n) => n,
        Imm::Z => opsize.min(4),
        Imm::V => opsize,
        Imm::Rel if mode == CpuMode::Bits64 => 4,
        Imm::Rel => opsize.min(4),
        Imm::Moffs => addrsize,
        Imm::Far => 2 + opsize.min(4),
    };
    let len = cur.pos + operands + imm_len;
    if len > MAX_INSN_LEN {
        return Err(DecodeError::TooLong);
    }
    insn.len = (len <= bytes.len()).then_some(len);
    Ok(insn)
}

/// The bytes of SIB and displacement after `modrm`, or `None` when the SIB byte is missing.
fn operand_bytes(cur: &mut Cursor<'_>, modrm: Option<u8>, addrsize: usize) -> Option<usize> {
    let Some(m) = modrm else { return Some(0) };
    let (md, rm) = (m >> 6, m & 7);
    if md == 3 {
        return Some(0);
    }
    if addrsize == 2 {
        return Some(match (md, rm) {
            (0, 6) | (2, _) => 2,
            (0, _) => 0,
            _ => 1,
        });
    }
    let mut base = rm;
    if rm == 4 {
        base = cur.next()? & 7;
    }
    Some(match (md, base) {
        (0, 5) => 4,
        (0, _) => 0,
        (1, _) => 1,
        _ => 4,
    })
}

/// Length facts of a VEX/EVEX opcode in `map`.
fn vector_map(
    map: OpcodeMap,
    number: u8,
    opcode: u8,
    p: &Prefixes,
) -> Result<(OpcodeMap, u8, bool, Imm), DecodeError> {
    let imm = match number {
        1 => imm_0f(opcode, p),
        3 => Imm::Bytes(1),
        2 | 5 | 6 => Imm::None,
        _ => return Err(DecodeError::Invalid),
    };
    // vzeroupper/vzeroall is the one VEX instruction without ModRM.
    let has_modrm = !(matches!(map, OpcodeMap::Vex(1)) && opcode == 0x77);
    Ok((map, opcode, has_modrm, imm))
}

fn invalid_in_64(op: u8) -> bool {
    matches!(
        op,
        0x06 | 0x07
            | 0x0e
            | 0x16
            | 0x17
            | 0x1e
            | 0x1f
            | 0x27
            | 0x2f
            | 0x37
            | 0x3f
            | 0x60
            | 0x61
            | 0x82
            | 0x9a
            | 0xce
            | 0xd4
            | 0xd5
            | 0xd6
            | 0xea
    )
}

fn modrm_legacy(op: u8) -> bool {
    matches!(op,
        0x00..=0x03 | 0x08..=0x0b | 0x10..=0x13 | 0x18..=0x1b
        | 0x20..=0x23 | 0x28..=0x2b | 0x30..=0x33 | 0x38..=0x3b
        | 0x62 | 0x63 | 0x69 | 0x6b | 0x80..=0x8f | 0xc0 | 0xc1 | 0xc4..=0xc7
        | 0xd0..=0xd3 | 0xd8..=0xdf | 0xf6 | 0xf7 | 0xfe | 0xff)
}

fn imm_legacy(op: u8) -> Imm {
    match op {
        0x04
        | 0x0c
        | 0x14
        | 0x1c
        | 0x24
        | 0x2c
        | 0x34
        | 0x3c
        | 0x6a
        | 0x6b
        | 0x70..=0x7f
        | 0x80
        | 0x82
        | 0x83
        | 0xa8
        | 0xb0..=0xb7
        | 0xc0
        | 0xc1
        | 0xc6
        | 0xcd
        | 0xd4
        | 0xd5
        | 0xe0..=0xe7
        | 0xeb => Imm::Bytes(1),
        0x05 | 0x0d | 0x15 | 0x1d | 0x25 | 0x2d | 0x35 | 0x3d | 0x68 | 0x69 | 0x81 | 0xa9
        | 0xc7 => Imm::Z,
        0xe8 | 0xe9 => Imm::Rel,
        0xc2 | 0xca => Imm::Bytes(2),
        0xc8 => Imm::Bytes(3),
        0xb8..=0xbf => Imm::V,
        0xa0..=0xa3 => Imm::Moffs,
        0x9a | 0xea => Imm::Far,
        _ => Imm::None,
    }
}

fn invalid_0f(op: u8) -> bool {
    matches!(
        op,
        0x04 | 0x0a | 0x0c | 0x24..=0x27 | 0x36 | 0x39 | 0x3b..=0x3f | 0x7a | 0x7b | 0xa6 | 0xa7
    )
}

fn modrm_0f(op: u8) -> bool {
    !matches!(
        op,
        0x05..=0x09 | 0x0b | 0x0e | 0x30..=0x37 | 0x77 | 0x80..=0x8f | 0xa0..=0xa2 | 0xa8..=0xaa
            | 0xc8..=0xcf
    )
}

fn imm_0f(op: u8, p: &Prefixes) -> Imm {
    match op {
        0x0f | 0x70..=0x73 | 0xa4 | 0xac | 0xba | 0xc2 | 0xc4..=0xc6 => Imm::Bytes(1),
        // AMD SSE4a extrq/insertq with immediates.
        0x78 if p.opsize || p.rep == Some(Rep::Repne) => Imm::Bytes(2),
        0x80..=0x8f => Imm::Rel,
        _ => Imm::None,
    }
}

fn name(map: OpcodeMap, op: u8, modrm: Option<u8>, p: &Prefixes, mode: CpuMode) -> &'static str {
    let base = match map {
        OpcodeMap::Legacy => name_legacy(op, modrm, p, mode),
        OpcodeMap::Map0F => name_0f(op, modrm, p),
        OpcodeMap::Map0F38 => match op {
            0x80 => "invept",
            0x81 => "invvpid",
            0x82 => "invpcid",
            0xf0 | 0xf1 if p.rep == Some(Rep::Repne) => "crc32",
            0xf0 | 0xf1 => "movbe",
            _ => "sse (0f 38)",
        },
        OpcodeMap::Map0F3A => "sse (0f 3a)",
        OpcodeMap::Vex(_) => "avx (vex)",
        OpcodeMap::Evex(_) => "avx-512 (evex)",
    };
    let base = if p.lock { locked(base) } else { base };
    match p.rep {
        Some(rep) => repeated(base, rep),
        None => base,
    }
}

const ALU: [&str; 8] = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"];
const SHIFT: [&str; 8] = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"];
const GROUP3: [&str; 8] = ["test", "test", "not", "neg", "mul", "imul", "div", "idiv"];
const GROUP5: [&str; 8] = [
    "inc", "dec", "call", "call far", "jmp", "jmp far", "push", "(bad)",
];

fn name_legacy(op: u8, modrm: Option<u8>, p: &Prefixes, mode: CpuMode) -> &'static str {
    let reg = modrm.map(|m| usize::from((m >> 3) & 7));
    let by_reg = |table: &[&'static str; 8]| reg.map_or("(group)", |r| table[r]);
    match op {
        0x00..=0x3f if op & 7 < 6 => ALU[usize::from(op >> 3)],
        0x06 | 0x0e | 0x16 | 0x1e => "push seg",
        0x07 | 0x17 | 0x1f => "pop seg",
        0x27 => "daa",
        0x2f => "das",
        0x37 => "aaa",
        0x3f => "aas",
        // 0x26, 0x2e, 0x36, 0x3e, 0x0f never reach here.
        0x00..=0x3f => "(prefix)",
        0x40..=0x47 => "inc",
        0x48..=0x4f => "dec",
        0x50..=0x57 | 0x68 | 0x6a => "push",
        0x58..=0x5f => "pop",
        0x60 => "pusha",
        0x61 => "popa",
        0x62 => "bound",
        0x63 if mode == CpuMode::Bits64 => "movsxd",
        0x63 => "arpl",
        0x69 | 0x6b => "imul",
        0x6c | 0x6d => "ins",
        0x6e | 0x6f => "outs",
        0x70..=0x7f => "jcc",
        0x80..=0x83 => by_reg(&ALU),
        0x84 | 0x85 | 0xa8 | 0xa9 => "test",
        0x86 | 0x87 | 0x91..=0x97 => "xchg",
        0x88..=0x8c | 0x8e | 0xa0..=0xa3 | 0xb0..=0xbf => "mov",
        0x8d => "lea",
        0x8f => "pop",
        0x90 if p.rep == Some(Rep::Rep) => "pause",
        0x90 => "nop",
        0x98 => "cbw",
        0x99 => "cwd",
        0x9a => "call far",
        0x9b => "fwait",
        0x9c => "pushf",
        0x9d => "popf",
        0x9e => "sahf",
        0x9f => "lahf",
        0xa4 | 0xa5 => "movs",
        0xa6 | 0xa7 => "cmps",
        0xaa | 0xab => "stos",
        0xac | 0xad => "lods",
        0xae | 0xaf => "scas",
        0xc0 | 0xc1 | 0xd0..=0xd3 => by_reg(&SHIFT),
        0xc2 | 0xc3 => "ret",
        0xc4 => "les",
        0xc5 => "lds",
        0xc6 if modrm == Some(0xf8) => "xabort",
        0xc7 if modrm == Some(0xf8) => "xbegin",
        0xc6 | 0xc7 => "mov",
        0xc8 => "enter",
        0xc9 => "leave",
        0xca | 0xcb => "ret far",
        0xcc => "int3",
        0xcd => "int",
        0xce => "into",
        0xcf => "iret",
        0xd4 => "aam",
        0xd5 => "aad",
        0xd6 => "salc",
        0xd7 => "xlat",
        0xd8..=0xdf => "x87",
        0xe0 => "loopne",
        0xe1 => "loope",
        0xe2 => "loop",
        0xe3 => "jcxz",
        0xe4 | 0xe5 | 0xec | 0xed => "in",
        0xe6 | 0xe7 | 0xee | 0xef => "out",
        0xe8 => "call",
        0xe9 | 0xeb => "jmp",
        0xea => "jmp far",
        0xf1 => "int1",
        0xf4 => "hlt",
        0xf5 => "cmc",
        0xf6 | 0xf7 => by_reg(&GROUP3),
        0xf8 => "clc",
        0xf9 => "stc",
        0xfa => "cli",
        0xfb => "sti",
        0xfc => "cld",
        0xfd => "std",
        0xfe => match reg {
            Some(0) => "inc",
            Some(1) => "dec",
            Some(_) => "(bad)",
            None => "(group)",
        },
        0xff => by_reg(&GROUP5),
        // Prefix bytes (0x64-0x67, 0xf0, 0xf2, 0xf3) never reach here.
        _ => "(prefix)",
    }
}

fn name_0f(op: u8, modrm: Option<u8>, p: &Prefixes) -> &'static str {
    let Some(m) = modrm else {
        return name_0f_plain(op, p);
    };
    let reg = usize::from((m >> 3) & 7);
    let mem = m >> 6 != 3;
    match op {
        0x00 => [
            "sldt", "str", "lldt", "ltr", "verr", "verw", "jmpe", "(bad)",
        ][reg],
        0x01 if mem => [
            "sgdt", "sidt", "lgdt", "lidt", "smsw", "rstorssp", "lmsw", "invlpg",
        ][reg],
        0x01 => group7_reg(m),
        0x02 => "lar",
        0x03 => "lsl",
        0x0d | 0x18 => "prefetch",
        0x0f => "3dnow",
        0x10 | 0x11 => match (p.rep, p.opsize) {
            (Some(Rep::Rep), _) => "movss",
            (Some(Rep::Repne), _) => "movsd",
            (None, true) => "movupd",
            (None, false) => "movups",
        },
        0x12 | 0x13 => "movlps",
        0x16 | 0x17 => "movhps",
        0x1e if p.rep == Some(Rep::Rep) && m == 0xfa => "endbr64",
        0x1e if p.rep == Some(Rep::Rep) && m == 0xfb => "endbr32",
        0x19..=0x1f => "nop",
        0x20 | 0x22 => "mov cr",
        0x21 | 0x23 => "mov dr",
        0x28 | 0x29 => "movaps",
        0x2b => "movntps",
        0x40..=0x4f => "cmov",
        0x6e | 0x7e => "movd",
        0x6f | 0x7f => match (p.rep, p.opsize) {
            (Some(Rep::Rep), _) => "movdqu",
            (_, true) => "movdqa",
            _ => "movq",
        },
        0x78 if !p.opsize && p.rep.is_none() => "vmread",
        0x79 if !p.opsize && p.rep.is_none() => "vmwrite",
        0x90..=0x9f => "setcc",
        0xa3 => "bt",
        0xa4 | 0xa5 => "shld",
        0xab => "bts",
        0xac | 0xad => "shrd",
        0xae => group15(reg, mem, p),
        0xaf => "imul",
        0xb0 | 0xb1 => "cmpxchg",
        0xb2 => "lss",
        0xb3 => "btr",
        0xb4 => "lfs",
        0xb5 => "lgs",
        0xb6 | 0xb7 => "movzx",
        0xb8 if p.rep == Some(Rep::Rep) => "popcnt",
        0xb9 => "ud1",
        0xba => [
            "(bad)", "(bad)", "(bad)", "(bad)", "bt", "bts", "btr", "btc",
        ][reg],
        0xbb => "btc",
        0xbc if p.rep == Some(Rep::Rep) => "tzcnt",
        0xbc => "bsf",
        0xbd if p.rep == Some(Rep::Rep) => "lzcnt",
        0xbd => "bsr",
        0xbe | 0xbf => "movsx",
        0xc0 | 0xc1 => "xadd",
        0xc3 => "movnti",
        0xc7 => group9(reg, mem, p),
        0xd6 => "movq",
        0xe7 => "movntdq",
        0xff => "ud0",
        _ => "sse",
    }
}

fn name_0f_plain(op: u8, p: &Prefixes) -> &'static str {
    match op {
        0x05 => "syscall",
        0x06 => "clts",
        0x07 => "sysret",
        0x08 => "invd",
        0x09 => "wbinvd",
        0x0b => "ud2",
        0x0e => "femms",
        0x30 => "wrmsr",
        0x31 => "rdtsc",
        0x32 => "rdmsr",
        0x33 => "rdpmc",
        0x34 => "sysenter",
        0x35 => "sysexit",
        0x37 => "getsec",
        0x77 => "emms",
        0x80..=0x8f => "jcc",
        0xa0 | 0xa8 => "push seg",
        0xa1 | 0xa9 => "pop seg",
        0xa2 => "cpuid",
        0xaa => "rsm",
        0xb8 if p.rep != Some(Rep::Rep) => "jmpe",
        0xc8..=0xcf => "bswap",
        // The bytes ended before a ModRM this opcode needs.
        _ => "(0f opcode)",
    }
}

fn group7_reg(modrm: u8) -> &'static str {
    match modrm {
        0xc1 => "vmcall",
        0xc2 => "vmlaunch",
        0xc3 => "vmresume",
        0xc4 => "vmxoff",
        0xc5 => "pconfig",
        0xc8 => "monitor",
        0xc9 => "mwait",
        0xca => "clac",
        0xcb => "stac",
        0xcf => "encls",
        0xd0 => "xgetbv",
        0xd1 => "xsetbv",
        0xd4 => "vmfunc",
        0xd5 => "xend",
        0xd6 => "xtest",
        0xd7 => "enclu",
        0xd8 => "vmrun",
        0xd9 => "vmmcall",
        0xda => "vmload",
        0xdb => "vmsave",
        0xdc => "stgi",
        0xdd => "clgi",
        0xde => "skinit",
        0xdf => "invlpga",
        0xe0..=0xe7 => "smsw",
        0xee => "rdpkru",
        0xef => "wrpkru",
        0xf0..=0xf7 => "lmsw",
        0xf8 => "swapgs",
        0xf9 => "rdtscp",
        0xfa => "monitorx",
        0xfb => "mwaitx",
        0xfc => "clzero",
        0xfd => "rdpru",
        _ => "(0f 01 system)",
    }
}

fn group9(reg: usize, mem: bool, p: &Prefixes) -> &'static str {
    match (reg, mem) {
        (1, true) if p.rex_w => "cmpxchg16b",
        (1, true) => "cmpxchg8b",
        (3, true) => "xrstors",
        (4, true) => "xsavec",
        (5, true) => "xsaves",
        (6, true) if p.opsize => "vmclear",
        (6, true) if p.rep == Some(Rep::Rep) => "vmxon",
        (6, true) => "vmptrld",
        (7, true) => "vmptrst",
        (6, false) => "rdrand",
        (7, false) if p.rep == Some(Rep::Rep) => "rdpid",
        (7, false) => "rdseed",
        _ => "(bad)",
    }
}

fn group15(reg: usize, mem: bool, p: &Prefixes) -> &'static str {
    if mem {
        match reg {
            6 if p.opsize => "clwb",
            7 if p.opsize => "clflushopt",
            _ => [
                "fxsave", "fxrstor", "ldmxcsr", "stmxcsr", "xsave", "xrstor", "xsaveopt", "clflush",
            ][reg],
        }
    } else if p.rep == Some(Rep::Rep) {
        [
            "rdfsbase", "rdgsbase", "wrfsbase", "wrgsbase", "(bad)", "incssp", "(bad)", "(bad)",
        ][reg]
    } else {
        [
            "(bad)", "(bad)", "(bad)", "(bad)", "(bad)", "lfence", "mfence", "sfence",
        ][reg]
    }
}

/// The `lock`-prefixed name of an instruction that may take `lock`.
fn locked(name: &'static str) -> &'static str {
    match name {
        "add" => "lock add",
        "or" => "lock or",
        "adc" => "lock adc",
        "sbb" => "lock sbb",
        "and" => "lock and",
        "sub" => "lock sub",
        "xor" => "lock xor",
        "inc" => "lock inc",
        "dec" => "lock dec",
        "not" => "lock not",
        "neg" => "lock neg",
        "xchg" => "lock xchg",
        "bts" => "lock bts",
        "btr" => "lock btr",
        "btc" => "lock btc",
        "xadd" => "lock xadd",
        "cmpxchg" => "lock cmpxchg",
        "cmpxchg8b" => "lock cmpxchg8b",
        "cmpxchg16b" => "lock cmpxchg16b",
        other => other,
    }
}

/// The repeated name of a string instruction.
fn repeated(name: &'static str, rep: Rep) -> &'static str {
    match (name, rep) {
        ("movs", _) => "rep movs",
        ("stos", _) => "rep stos",
        ("lods", _) => "rep lods",
        ("ins", _) => "rep ins",
        ("outs", _) => "rep outs",
        ("cmps", Rep::Rep) => "repe cmps",
        ("cmps", Rep::Repne) => "repne cmps",
        ("scas", Rep::Rep) => "repe scas",
        ("scas", Rep::Repne) => "repne scas",
        (other, _) => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Segment, SpecialRegisters};

    fn d64(bytes: &[u8]) -> DecodedInsn {
        decode(bytes, CpuMode::Bits64).unwrap()
    }

    /// (bytes, name, length) in 64-bit mode, checked against the architecture manuals.
    const CASES_64: &[(&[u8], &str, usize)] = &[
        (&[0xcc], "int3", 1),
        (&[0xcd, 0x80], "int", 2),
        (&[0xf4], "hlt", 1),
        (&[0x90], "nop", 1),
        (&[0xf3, 0x90], "pause", 2),
        (&[0x0f, 0x0b], "ud2", 2),
        (&[0x0f, 0xa2], "cpuid", 2),
        (&[0x0f, 0x30], "wrmsr", 2),
        (&[0x0f, 0x01, 0xd9], "vmmcall", 3),
        (&[0x0f, 0x01, 0xc1], "vmcall", 3),
        (&[0x0f, 0x01, 0xd1], "xsetbv", 3),
        (&[0x0f, 0x01, 0xf8], "swapgs", 3),
        (&[0x0f, 0x01, 0x38], "invlpg", 3),
        (&[0x0f, 0x01, 0x10], "lgdt", 3),
        (&[0x0f, 0xae, 0x2f], "xrstor", 3),
        (&[0x48, 0x0f, 0xae, 0x6c, 0x24, 0x40], "xrstor", 6),
        (&[0x0f, 0xae, 0xf0], "mfence", 3),
        (&[0xf3, 0x48, 0x0f, 0xae, 0xc0], "rdfsbase", 5),
        (&[0xf0, 0x48, 0x0f, 0xc7, 0x0e], "lock cmpxchg16b", 5),
        (&[0xf0, 0x0f, 0xc7, 0x0e], "lock cmpxchg8b", 4),
        (&[0x48, 0x0f, 0xc7, 0xf0], "rdrand", 4),
        (&[0xf0, 0x01, 0x03], "lock add", 3),
        (&[0xf0, 0x83, 0x00, 0x01], "lock add", 4),
        (&[0xf0, 0x48, 0x0f, 0xb1, 0x11], "lock cmpxchg", 5),
        (&[0x81, 0x05, 1, 2, 3, 4, 5, 6, 7, 8], "add", 10),
        (&[0x66, 0x81, 0xc0, 0x34, 0x12], "add", 5),
        (&[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8], "mov", 10),
        (&[0xb8, 1, 2, 3, 4], "mov", 5),
        (&[0x66, 0xb8, 1, 2], "mov", 4),
        (&[0x89, 0x07], "mov", 2),
        (&[0x89, 0x44, 0x24, 0x08], "mov", 4),
        (&[0x89, 0x04, 0x25, 0, 0, 0, 0], "mov", 7),
        (&[0x89, 0x05, 0, 0, 0, 0], "mov", 6),
        (&[0x8b, 0x84, 0x24, 0, 1, 0, 0], "mov", 7),
        (&[0x67, 0x8b, 0x40, 0x10], "mov", 4),
        (&[0xa1, 1, 2, 3, 4, 5, 6, 7, 8], "mov", 9),
        (&[0x67, 0xa1, 1, 2, 3, 4], "mov", 6),
        (&[0xc7, 0x00, 1, 2, 3, 4], "mov", 6),
        (&[0x48, 0xc7, 0x40, 0x08, 1, 2, 3, 4], "mov", 8),
        (&[0x66, 0xc7, 0x00, 1, 2], "mov", 5),
        (&[0xc6, 0xf8, 0x01], "xabort", 3),
        (&[0xc7, 0xf8, 0, 0, 0, 0], "xbegin", 6),
        (&[0xf6, 0x00, 0x01], "test", 3),
        (&[0xf7, 0x00, 1, 2, 3, 4], "test", 6),
        (&[0xf7, 0x18], "neg", 2),
        (&[0xf0, 0xf7, 0x18], "lock neg", 3),
        (&[0xf0, 0xfe, 0x00], "lock inc", 3),
        (&[0xfe, 0x08], "dec", 2),
        (&[0xfe, 0x10], "(bad)", 2),
        (&[0xff, 0x15, 0, 0, 0, 0], "call", 6),
        (&[0xe8, 0, 0, 0, 0], "call", 5),
        (&[0x66, 0xe8, 0, 0, 0, 0], "call", 6),
        (&[0x0f, 0x84, 0, 0, 0, 0], "jcc", 6),
        (&[0x74, 0x05], "jcc", 2),
        (&[0xc8, 0x10, 0x00, 0x01], "enter", 4),
        (&[0xc2, 0x08, 0x00], "ret", 3),
        (&[0xe4, 0x60], "in", 2),
        (&[0xec], "in", 1),
        (&[0xe6, 0x80], "out", 2),
        (&[0xee], "out", 1),
        (&[0xf3, 0x6c], "rep ins", 2),
        (&[0xf3, 0x6f], "rep outs", 2),
        (&[0xf3, 0x48, 0xa5], "rep movs", 3),
        (&[0xf3, 0xaa], "rep stos", 2),
        (&[0xf3, 0xac], "rep lods", 2),
        (&[0xf3, 0xa6], "repe cmps", 2),
        (&[0xf2, 0xa6], "repne cmps", 2),
        (&[0xf3, 0xae], "repe scas", 2),
        (&[0xf2, 0xae], "repne scas", 2),
        (&[0x63, 0xc0], "movsxd", 2),
        (&[0xc1, 0xe0, 0x04], "shl", 3),
        (&[0xd3, 0xf8], "sar", 2),
        (&[0x6b, 0xc0, 0x10], "imul", 3),
        (&[0x69, 0xc0, 1, 2, 3, 4], "imul", 6),
        (&[0x0f, 0x20, 0xc0], "mov cr", 3),
        (&[0x0f, 0x23, 0xc0], "mov dr", 3),
        (&[0x0f, 0x10, 0x07], "movups", 3),
        (&[0x66, 0x0f, 0x10, 0x07], "movupd", 4),
        (&[0xf3, 0x0f, 0x10, 0x07], "movss", 4),
        (&[0xf2, 0x0f, 0x10, 0x07], "movsd", 4),
        (&[0x66, 0x0f, 0x6f, 0x07], "movdqa", 4),
        (&[0xf3, 0x0f, 0x7f, 0x07], "movdqu", 4),
        (&[0x0f, 0x6f, 0x07], "movq", 3),
        (&[0x66, 0x0f, 0x70, 0xc1, 0x1b], "sse", 5),
        (&[0x0f, 0xba, 0xe0, 0x03], "bt", 4),
        (&[0xf0, 0x0f, 0xba, 0x28, 0x03], "lock bts", 5),
        (&[0x0f, 0x78, 0xc1], "vmread", 3),
        (&[0x66, 0x0f, 0x78, 0xc1, 1, 2], "sse", 6),
        (&[0x66, 0x0f, 0xc7, 0x30], "vmclear", 4),
        (&[0xf3, 0x0f, 0xc7, 0x30], "vmxon", 4),
        (&[0x0f, 0xc7, 0x30], "vmptrld", 3),
        (&[0x0f, 0xc7, 0x38], "vmptrst", 3),
        (&[0x0f, 0xc7, 0x20], "xsavec", 3),
        (&[0x0f, 0xc7, 0x28], "xsaves", 3),
        (&[0x0f, 0xc7, 0x18], "xrstors", 3),
        (&[0x0f, 0xc7, 0xf8], "rdseed", 3),
        (&[0xf3, 0x0f, 0xc7, 0xf8], "rdpid", 4),
        (&[0x66, 0x0f, 0x38, 0x80, 0x08], "invept", 5),
        (&[0x66, 0x0f, 0x38, 0x82, 0x08], "invpcid", 5),
        (&[0x0f, 0x38, 0xf0, 0x07], "movbe", 4),
        (&[0xf2, 0x0f, 0x38, 0xf1, 0xc1], "crc32", 5),
        (&[0x66, 0x0f, 0x3a, 0x0f, 0xc1, 0x08], "sse (0f 3a)", 6),
        (&[0xc5, 0xf8, 0x77], "avx (vex)", 3),
        (&[0xc5, 0xfd, 0x6f, 0x07], "avx (vex)", 4),
        (&[0xc4, 0xe3, 0x7d, 0x18, 0xc1, 0x01], "avx (vex)", 6),
        (&[0xc4, 0xe2, 0x7d, 0x58, 0x07], "avx (vex)", 5),
        (&[0xc5, 0xf9, 0x70, 0xc1, 0x1b], "avx (vex)", 5),
        (
            &[0x62, 0xf1, 0x7c, 0x48, 0x10, 0x47, 0x01],
            "avx-512 (evex)",
            7,
        ),
        (
            &[0x62, 0xf3, 0x7d, 0x48, 0x39, 0xc1, 0x01],
            "avx-512 (evex)",
            7,
        ),
        (&[0xd9, 0xee], "x87", 2),
        (&[0xdd, 0x05, 0, 0, 0, 0], "x87", 6),
        (&[0xf3, 0x0f, 0x1e, 0xfa], "endbr64", 4),
        (&[0x0f, 0x1f, 0x44, 0x00, 0x00], "nop", 5),
        (&[0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0], "nop", 10),
        (&[0x0f, 0x00, 0xd8], "ltr", 3),
        (&[0x0f, 0x05], "syscall", 2),
        (&[0x0f, 0xff, 0xc0], "ud0", 3),
        (&[0x0f, 0xb9, 0xc0], "ud1", 3),
        (&[0xf3, 0x0f, 0xb8, 0xc1], "popcnt", 4),
        (&[0xf3, 0x0f, 0xbc, 0xc1], "tzcnt", 4),
        (&[0xf3, 0x0f, 0xbd, 0xc1], "lzcnt", 4),
        (&[0x0f, 0xbc, 0xc1], "bsf", 3),
        (&[0x0f, 0x0f, 0xc1, 0xb4], "3dnow", 4),
        (&[0x0f, 0xa4, 0xc1, 0x04], "shld", 4),
        (&[0x0f, 0xc8], "bswap", 2),
        (&[0x48, 0x0f, 0xc1, 0x07], "xadd", 4),
        (&[0xf0, 0x48, 0x0f, 0xc1, 0x07], "lock xadd", 5),
        (&[0xf0, 0x87, 0x07], "lock xchg", 3),
        (&[0x0f, 0xae, 0x38], "clflush", 3),
        (&[0x66, 0x0f, 0xae, 0x38], "clflushopt", 4),
        (&[0x66, 0x0f, 0xae, 0x30], "clwb", 4),
        (&[0x0f, 0xae, 0x00], "fxsave", 3),
        (&[0x0f, 0xae, 0x20], "xsave", 3),
        (&[0x0f, 0xae, 0xe8], "lfence", 3),
    ];

    #[test]
    fn names_and_lengths_in_64_bit_mode() {
        for &(bytes, name, len) in CASES_64 {
            let insn = d64(bytes);
            assert_eq!((insn.name, insn.len), (name, Some(len)), "{bytes:02x?}");
            // Trailing bytes do not change the result.
            let mut longer = bytes.to_vec();
            longer.extend_from_slice(&[0x90; 8]);
            assert_eq!(d64(&longer), insn, "{bytes:02x?} + nops");
            // Cutting the last byte leaves the name (unless a prefix-only cut) but not the length.
            if let Ok(cut) = decode(&bytes[..len - 1], CpuMode::Bits64) {
                assert_eq!(cut.len, None, "{bytes:02x?} cut");
            }
        }
    }

    #[test]
    fn mode_dependent_encodings() {
        let d32 = |b: &[u8]| decode(b, CpuMode::Bits32).unwrap();
        let d16 = |b: &[u8]| decode(b, CpuMode::Bits16).unwrap();
        assert_eq!((d32(&[0x40]).name, d32(&[0x40]).len), ("inc", Some(1)));
        assert_eq!(d32(&[0x48]).name, "dec");
        assert_eq!(d32(&[0x63, 0xc0]).name, "arpl");
        assert_eq!(d32(&[0x06]).name, "push seg");
        assert_eq!(d32(&[0x27]).name, "daa");
        assert_eq!(d32(&[0x60]).name, "pusha");
        assert_eq!(d32(&[0xb8, 1, 2, 3, 4]).len, Some(5));
        assert_eq!(d16(&[0xb8, 1, 2]).len, Some(3));
        assert_eq!(d16(&[0x66, 0xb8, 1, 2, 3, 4]).len, Some(6));
        assert_eq!(d16(&[0xe8, 0, 0]).len, Some(3));
        assert_eq!(d32(&[0x66, 0xe8, 0, 0]).len, Some(4));
        // 16-bit addressing: [bp+si] has no displacement, direct address has disp16.
        assert_eq!(d16(&[0x8b, 0x02]).len, Some(2));
        assert_eq!(d16(&[0x8b, 0x06, 0x34, 0x12]).len, Some(4));
        assert_eq!(d16(&[0x8b, 0x46, 0x02]).len, Some(3));
        assert_eq!(d16(&[0x8b, 0x86, 0x34, 0x12]).len, Some(4));
        assert_eq!(d32(&[0x67, 0x8b, 0x06, 0x34, 0x12]).len, Some(5));
        assert_eq!(
            d16(&[0x67, 0x8b, 0x04, 0x24]).len,
            Some(4),
            "32-bit addressing"
        );
        assert_eq!(d32(&[0xa1, 1, 2, 3, 4]).len, Some(5));
        assert_eq!(d16(&[0xa1, 1, 2]).len, Some(3));
        assert_eq!(d32(&[0x9a, 1, 2, 3, 4, 5, 6]).name, "call far");
        assert_eq!(d32(&[0x9a, 1, 2, 3, 4, 5, 6]).len, Some(7));
        assert_eq!(d16(&[0xea, 1, 2, 3, 4]).len, Some(5));
        // LES/LDS/BOUND with a memory operand are not VEX/EVEX outside 64-bit mode.
        assert_eq!(d32(&[0xc4, 0x07]).name, "les");
        assert_eq!(d32(&[0xc5, 0x07]).name, "lds");
        assert_eq!(d32(&[0x62, 0x07]).name, "bound");
        assert_eq!(d32(&[0xc5, 0xf8, 0x77]).name, "avx (vex)");
        assert_eq!(d32(&[0x62, 0xf1, 0x7c, 0x48, 0x10, 0xc1]).len, Some(6));
        // 0x40 is a REX prefix only in 64-bit mode.
        assert_eq!(d64(&[0x40, 0x90]).len, Some(2));
        assert_eq!(d32(&[0xd6]).name, "salc");
        assert_eq!(d32(&[0xce]).name, "into");
    }

    #[test]
    fn errors() {
        assert_eq!(decode(&[], CpuMode::Bits64), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[0x66], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x0f], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x0f, 0x38], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x0f, 0x3a], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0xc4, 0xe2], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0xc5, 0xf8], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x62, 0xf1, 0x7c], CpuMode::Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&[0x66; 15], CpuMode::Bits64),
            Err(DecodeError::TooLong)
        );
        assert_eq!(
            decode(&[0x66; 20], CpuMode::Bits64),
            Err(DecodeError::TooLong)
        );
        let mut long = vec![0x66; 12];
        long.extend_from_slice(&[0x81, 0x05, 1, 2, 3, 4, 5, 6]);
        assert_eq!(decode(&long, CpuMode::Bits64), Err(DecodeError::TooLong));
        for op in [0x06, 0x27, 0x60, 0x9a, 0xce, 0xd4, 0xd6, 0xea] {
            assert_eq!(
                decode(&[op], CpuMode::Bits64),
                Err(DecodeError::Invalid),
                "{op:#x}"
            );
        }
        assert_eq!(
            decode(&[0x0f, 0x04], CpuMode::Bits64),
            Err(DecodeError::Invalid)
        );
        assert_eq!(
            decode(&[0xc4, 0xe0, 0x7d, 0x10], CpuMode::Bits64),
            Err(DecodeError::Invalid)
        );
        assert_eq!(describe_insn(&[]), "no instruction bytes");
        assert_eq!(describe_insn(&[0xf0]), "truncated instruction");
        assert_eq!(describe_insn(&[0x2e; 16]), "over-long instruction");
        assert_eq!(describe_insn(&[0x06]), "invalid opcode");
        assert_eq!(
            DecodeError::TooLong.to_string(),
            "the instruction is longer than 15 bytes"
        );
    }

    #[test]
    fn truncated_after_the_opcode_still_names() {
        let i = d64(&[0xf0, 0x48, 0x0f, 0xc7]);
        assert_eq!((i.name, i.len, i.modrm), ("(0f opcode)", None, None));
        let i = d64(&[0x0f, 0xae]);
        assert_eq!(i.name, "(0f opcode)");
        let i = d64(&[0x80]);
        assert_eq!((i.name, i.len), ("(group)", None));
        assert_eq!(d64(&[0xf6]).name, "(group)");
        assert_eq!(d64(&[0xfe]).name, "(group)");
        assert_eq!(d64(&[0xc1]).name, "(group)");
        let i = d64(&[0x89, 0x04]);
        assert_eq!((i.name, i.len), ("mov", None), "SIB missing");
        let i = d64(&[0xe8, 0]);
        assert_eq!((i.name, i.len), ("call", None));
        assert_eq!(i.to_string(), "call (truncated)");
        assert_eq!(d64(&[0xcc]).to_string(), "int3 (1 byte)");
        assert_eq!(d64(&[0x0f, 0x0b]).to_string(), "ud2 (2 bytes)");
    }

    #[test]
    fn fields() {
        let i = d64(&[0xf3, 0x0f, 0x10, 0x07]);
        assert_eq!(i.map, OpcodeMap::Map0F);
        assert_eq!(i.opcode, 0x10);
        assert_eq!(i.modrm, Some(0x07));
        assert_eq!(i.rep, Some(Rep::Rep));
        assert!(!i.lock);
        assert_eq!(d64(&[0x0f, 0x38, 0x00, 0xc1]).map, OpcodeMap::Map0F38);
        assert_eq!(
            d64(&[0xc4, 0xe3, 0x7d, 0x18, 0xc1, 1]).map,
            OpcodeMap::Vex(3)
        );
        assert_eq!(
            d64(&[0x62, 0xf1, 0x7c, 0x48, 0x10, 0xc1]).map,
            OpcodeMap::Evex(1)
        );
        // A legacy prefix after REX voids the REX: 66 after 48 gives a 16-bit immediate.
        assert_eq!(d64(&[0x48, 0x66, 0xb8, 1, 2]).len, Some(5));
        assert_eq!(
            d64(&[0x66, 0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8]).len,
            Some(11)
        );
    }

    #[test]
    fn cpu_mode_from_sregs() {
        let mut s = SpecialRegisters::default();
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits16, "real mode");
        s.cr0 = 1;
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits16);
        s.cs = Segment {
            db: true,
            ..Segment::default()
        };
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits32);
        s.efer = 1 << 10;
        s.cs = Segment {
            l: true,
            ..Segment::default()
        };
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits64);
        s.cr0 = 0;
        assert_eq!(CpuMode::from_sregs(&s), CpuMode::Bits16);
    }

    #[test]
    fn every_byte_pattern_is_handled() {
        // Every 1-, 2- and 3-byte prefix/opcode start, in every mode: no panic, sane lengths.
        for mode in [CpuMode::Bits16, CpuMode::Bits32, CpuMode::Bits64] {
            for a in 0..=255u8 {
                for b in 0..=255u8 {
                    for c in [0x00u8, 0x05, 0x24, 0x44, 0x84, 0xc0, 0xf8, 0xff] {
                        let bytes = [a, b, c, 0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        if let Ok(i) = decode(&bytes, mode) {
                            let len = i.len.unwrap();
                            assert!((1..=MAX_INSN_LEN).contains(&len), "{bytes:02x?}");
                            assert!(!i.name.is_empty());
                        }
                    }
                }
            }
        }
    }
}
