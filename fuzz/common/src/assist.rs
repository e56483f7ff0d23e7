//! Fuzz surface `emulation_assist`: arbitrary instruction bytes and vCPU state (mode, privilege,
//! registers, segments, control registers, XCR0/XSS, a queued `#UD`) handed to vmkit-exits'
//! `EmulationAssist` as an emulation failure, on vmkit-vcpu's fake vCPU and a small guest memory
//! (two RAM regions with a hole between them) holding 4-level page tables, some of whose entries
//! come from the input, and sentinel-filled pages.
//!
//! Checked for every input: nothing panics; the assist never fails (the fake vCPU does not);
//! the outcome is exactly one of completed (RIP advanced by the instruction's length, or, for
//! `int3`, `#BP` queued), faulted (an exception queued, RIP and registers unchanged), reflected
//! (`#UD` queued) or stopped (the internal error returned, with a report where there were
//! bytes); only the registers the instruction defines change (RIP, RFLAGS.ZF, RDX:RAX for a
//! failed compare-exchange; CR2 for a `#PF`); and guest memory is unchanged except for the
//! accessed/dirty flags a page walk sets and, for a completed store, the bytes the operand maps
//! to (translated independently with vmkit-paging's probe). A completed compare-exchange is
//! checked against the architecture's result.
//!
//! The input is a small byte format ([`Input::encode`] writes it, [`Input::decode`] reads it;
//! every byte string decodes, missing bytes read as zero), so seeds decode to exactly the
//! intended state.

use iced_x86::{Mnemonic, Register};
use vmkit_exits::decode::{CpuMode, decode_at};
use vmkit_exits::state::{
    Exception, MSR_IA32_XSS, PF_VECTOR, Registers, Segment, SpecialRegisters, XSAVE_AREA_SIZE,
};
use vmkit_exits::{
    AssistVerdict, Assisted, DecodedInsn, EmulationAssist, ExitAction, InsnBytes, SoftExceptionRip,
    StopReason, UD_VECTOR, VcpuState, XsaveLayout,
};
use vmkit_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmkit_paging::x86::{CR0_MP, CR0_TS};
use vmkit_paging::{Access, Privilege, X86Paging};
use vmkit_vcpu::fake::FakeVcpu;

/// The RAM regions: guest-physical start and length. The hole between them is no RAM.
pub const RAM: [(u64, usize); 2] = [(0, 0x3_0000), (0x4_0000, 0x1_0000)];

/// The page tables: PML4, PDPT, PD and PT frames.
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
/// A page mapped read-only (and nowhere else).
const RO_FRAME: u64 = 0x5000;
/// A page mapped for user mode.
const USER_FRAME: u64 = 0x6000;
/// Identity-mapped, writable data pages (PT entries 0x10..0x30).
const DATA: (u64, u64) = (0x1_0000, 0x3_0000);
/// The first PT entry whose value the input gives, and how many it gives.
const FUZZ_PTE: u64 = 0x40;
/// How many PT entries the input gives.
pub const FUZZ_PTES: usize = 8;

/// Non-leaf entry flags: present, writable, user, accessed.
const TABLE: u64 = 0x27;
/// Leaf flags: present, writable, accessed, dirty (so fixed walks change no flag).
const LEAF_RW: u64 = 0x63;

/// Linear addresses register values can be relative to (see [`Value::Region`]).
pub const REGIONS: [u64; 12] = [
    DATA.0,                    // 0: writable data
    0x2_f000,                  // 1: the last data page, the read-only page after it
    0x3_0000,                  // 2: read-only
    0x3_1000,                  // 3: region B, then data again (not contiguous)
    0x3_3000,                  // 4: user page
    0x3_4000,                  // 5: mapped beyond RAM, then into the hole
    FUZZ_PTE << 12,            // 6: the input's PT entries
    0x20_0000,                 // 7: the input's PD entry
    0x4000_0000,               // 8: the input's PDPT entry
    0x80_0000_0000,            // 9: the input's PML4 entry
    0x7fff_ffff_fff0,          // 10: the top of the lower half
    0xffff_8000_0000_0000 - 8, // 11: the bottom of the upper half, non-canonical below
];

/// A register value: raw, or an offset from one of [`REGIONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// This value.
    Raw(u64),
    /// `REGIONS[region % REGIONS.len()] + offset`.
    Region(u8, u16),
}

impl Value {
    /// The value.
    pub fn get(self) -> u64 {
        match self {
            Value::Raw(v) => v,
            Value::Region(r, off) => {
                REGIONS[usize::from(r) % REGIONS.len()].wrapping_add(u64::from(off))
            }
        }
    }
}

/// The vCPU's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 64-bit long mode, CPL 0.
    Long,
    /// 64-bit long mode, CPL 3.
    LongUser,
    /// 32-bit protected mode (paging only with [`Flags::PAGING`]: 32-bit paging, not walked).
    Protected,
    /// Real mode.
    Real,
}

/// Flag bits of [`Input::flags`].
pub struct Flags;

impl Flags {
    /// CR4.OSXSAVE.
    pub const OSXSAVE: u16 = 1;
    /// The backend queued `#UD` with the failure.
    pub const QUEUED_UD: u16 = 1 << 1;
    /// `SoftExceptionRip::BackendAddsLength`.
    pub const BACKEND_ADDS_LENGTH: u16 = 1 << 2;
    /// CR0.WP.
    pub const WP: u16 = 1 << 3;
    /// The policy reflects every instruction the assist does not emulate as `#UD`.
    pub const REFLECT: u16 = 1 << 4;
    /// EFER.NXE.
    pub const NXE: u16 = 1 << 5;
    /// CR0.PG outside long mode (32-bit paging, which the assist does not walk).
    pub const PAGING: u16 = 1 << 6;
    /// CR4.LA57: the tables are walked as 5-level ones.
    pub const LA57: u16 = 1 << 7;
    /// CR4.SMAP.
    pub const SMAP: u16 = 1 << 8;
    /// CR4.SMEP.
    pub const SMEP: u16 = 1 << 9;
    /// A sub-error other than emulation failure.
    pub const OTHER_SUBERROR: u16 = 1 << 10;
    /// No instruction bytes in the failure.
    pub const NO_BYTES: u16 = 1 << 11;
}

/// A data segment outside 64-bit mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataSegment {
    /// Base (real mode: the low 16 bits are the selector, base = selector * 16).
    pub base: u32,
    /// Limit (protected mode; real mode: 0xffff).
    pub limit: u32,
    /// Bits 0-3 type, bit 4 not present, bit 5 16-bit (D/B clear), bit 6 unusable, bit 7 also
    /// SS.
    pub attr: u8,
}

/// One fuzz input: the vCPU, the instruction and the memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Mode.
    pub mode: Mode,
    /// [`Flags`] bits.
    pub flags: u16,
    /// The instruction bytes (at most 15 are kept).
    pub insn: Vec<u8>,
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub gprs: [Value; 16],
    /// RIP.
    pub rip: u64,
    /// RFLAGS (bit 1 is always set).
    pub rflags: u32,
    /// FS and GS bases.
    pub fs_gs: [Value; 2],
    /// DS (and maybe SS) outside 64-bit mode.
    pub ds: DataSegment,
    /// XCR0 bits: 0-2 → components 0-2, 3-5 → 5-7, 6 → 9 (PKRU), 7 → 17 (AMX).
    pub xcr0: u8,
    /// IA32_XSS bits 8-15.
    pub xss: u8,
    /// The vCPU's XSAVE area: fill pattern (0: the reset state) and XSTATE_BV.
    pub xsave: (u8, u8),
    /// PML4 entry 1, PDPT entry 1, PD entry 1.
    pub upper: [u64; 3],
    /// PT entries `FUZZ_PTE..FUZZ_PTE + FUZZ_PTES`.
    pub ptes: [u64; FUZZ_PTES],
    /// The fill byte of the data pages (the other pages hold a sentinel pattern).
    pub fill: u8,
    /// Bytes written over the data pages: offset from their start, bytes.
    pub patches: Vec<(u16, Vec<u8>)>,
}

impl Default for Input {
    fn default() -> Self {
        Self {
            mode: Mode::Long,
            flags: 0,
            insn: Vec::new(),
            gprs: [Value::Raw(0); 16],
            rip: 0,
            rflags: 2,
            fs_gs: [Value::Raw(0); 2],
            ds: DataSegment::default(),
            xcr0: 0,
            xss: 0,
            xsave: (0, 0),
            upper: [0; 3],
            ptes: [0; FUZZ_PTES],
            fill: 0,
            patches: Vec::new(),
        }
    }
}

/// Reads the byte format; zeros once the bytes run out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn value(&mut self) -> Value {
        let tag = self.u8();
        if tag & 0x80 == 0 {
            Value::Region(tag, self.u16())
        } else {
            Value::Raw(self.u64())
        }
    }
}

fn put_value(out: &mut Vec<u8>, v: Value) {
    match v {
        Value::Region(r, off) => {
            out.push(r & 0x7f);
            out.extend_from_slice(&off.to_le_bytes());
        }
        Value::Raw(v) => {
            out.push(0x80);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The most patches one input carries, and the longest.
const MAX_PATCHES: usize = 4;
const MAX_PATCH: usize = 64;

impl Input {
    /// Decodes `data`: mode, flags (u16), instruction (length byte, bytes), 16 GPR values,
    /// RIP (u64), RFLAGS (u32), FS and GS base values, DS (base u32, limit u32, attr u8), XCR0,
    /// XSS, XSAVE fill and XSTATE_BV bytes, three upper entries and the PT entries (u64 each),
    /// the fill byte, then patches (count byte, then offset u16, length byte, bytes each).
    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader(data);
        let mode = match r.u8() % 4 {
            0 => Mode::Long,
            1 => Mode::LongUser,
            2 => Mode::Protected,
            _ => Mode::Real,
        };
        let flags = r.u16();
        let len = usize::from(r.u8() % 16);
        let insn = (0..len).map(|_| r.u8()).collect();
        let gprs = std::array::from_fn(|_| r.value());
        let rip = r.u64();
        let rflags = r.u32();
        let fs_gs = [r.value(), r.value()];
        let ds = DataSegment {
            base: r.u32(),
            limit: r.u32(),
            attr: r.u8(),
        };
        let (xcr0, xss) = (r.u8(), r.u8());
        let xsave = (r.u8(), r.u8());
        let upper = [r.u64(), r.u64(), r.u64()];
        let ptes = std::array::from_fn(|_| r.u64());
        let fill = r.u8();
        let count = usize::from(r.u8()) % (MAX_PATCHES + 1);
        let patches = (0..count)
            .map(|_| {
                let offset = r.u16();
                let len = usize::from(r.u8()) % (MAX_PATCH + 1);
                (offset, (0..len).map(|_| r.u8()).collect())
            })
            .collect();
        Self {
            mode,
            flags,
            insn,
            gprs,
            rip,
            rflags,
            fs_gs,
            ds,
            xcr0,
            xss,
            xsave,
            upper,
            ptes,
            fill,
            patches,
        }
    }

    /// The bytes [`decode`](Self::decode) reads back as `self` (instruction bytes beyond 15,
    /// patches beyond four or 64 bytes are dropped).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![match self.mode {
            Mode::Long => 0,
            Mode::LongUser => 1,
            Mode::Protected => 2,
            Mode::Real => 3,
        }];
        out.extend_from_slice(&self.flags.to_le_bytes());
        let insn = &self.insn[..self.insn.len().min(15)];
        out.push(insn.len() as u8);
        out.extend_from_slice(insn);
        for v in self.gprs {
            put_value(&mut out, v);
        }
        out.extend_from_slice(&self.rip.to_le_bytes());
        out.extend_from_slice(&self.rflags.to_le_bytes());
        for v in self.fs_gs {
            put_value(&mut out, v);
        }
        out.extend_from_slice(&self.ds.base.to_le_bytes());
        out.extend_from_slice(&self.ds.limit.to_le_bytes());
        out.extend_from_slice(&[
            self.ds.attr,
            self.xcr0,
            self.xss,
            self.xsave.0,
            self.xsave.1,
        ]);
        for e in self.upper.iter().chain(&self.ptes) {
            out.extend_from_slice(&e.to_le_bytes());
        }
        out.push(self.fill);
        let patches = &self.patches[..self.patches.len().min(MAX_PATCHES)];
        out.push(patches.len() as u8);
        for (offset, bytes) in patches {
            let bytes = &bytes[..bytes.len().min(MAX_PATCH)];
            out.extend_from_slice(&offset.to_le_bytes());
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
        out
    }

    fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// The guest memory: page tables, sentinel pages, data pages with the patches.
    pub fn memory(&self) -> GuestMemoryMmap {
        let ranges: Vec<_> = RAM.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).unwrap();
        for &(start, len) in &RAM {
            let sentinel: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ 0xa5)
                .collect();
            mem.write_slice(&sentinel, GuestAddress(start)).unwrap();
        }
        let data = vec![self.fill; (DATA.1 - DATA.0) as usize];
        mem.write_slice(&data, GuestAddress(DATA.0)).unwrap();
        for table in [PML4, PDPT, PD, PT] {
            mem.write_slice(&[0; 4096], GuestAddress(table)).unwrap();
        }
        let entry = |table: u64, index: u64, value: u64| {
            mem.write_obj(value, GuestAddress(table + index * 8))
                .unwrap();
        };
        entry(PML4, 0, PDPT | TABLE);
        entry(PDPT, 0, PD | TABLE);
        entry(PD, 0, PT | TABLE);
        entry(PML4, 1, self.upper[0]);
        entry(PDPT, 1, self.upper[1]);
        entry(PD, 1, self.upper[2]);
        for page in DATA.0 >> 12..DATA.1 >> 12 {
            entry(PT, page, (page << 12) | LEAF_RW);
        }
        entry(PT, 0x30, RO_FRAME | (LEAF_RW & !2));
        entry(PT, 0x31, RAM[1].0 | LEAF_RW);
        entry(PT, 0x32, DATA.0 | LEAF_RW);
        entry(PT, 0x33, USER_FRAME | LEAF_RW | 4);
        entry(PT, 0x34, 0x2_0000_0000 | LEAF_RW);
        entry(PT, 0x35, 0x3_1000 | LEAF_RW);
        for (i, &pte) in self.ptes.iter().enumerate() {
            entry(PT, FUZZ_PTE + i as u64, pte);
        }
        for (offset, bytes) in &self.patches {
            let at = DATA.0 + u64::from(*offset);
            let room = (DATA.1 - at) as usize;
            mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(at))
                .unwrap();
        }
        mem
    }

    /// The vCPU's registers.
    pub fn registers(&self) -> Registers {
        let g = self.gprs.map(Value::get);
        Registers {
            rax: g[0],
            rcx: g[1],
            rdx: g[2],
            rbx: g[3],
            rsp: g[4],
            rbp: g[5],
            rsi: g[6],
            rdi: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: self.rip,
            rflags: u64::from(self.rflags) | 2,
        }
    }

    /// The vCPU's segment and control registers.
    pub fn special_registers(&self) -> SpecialRegisters {
        let mut s = SpecialRegisters::default();
        let flat = Segment {
            limit: 0xffff_ffff,
            present: true,
            type_: 0x3,
            s: true,
            db: true,
            g: true,
            ..Segment::default()
        };
        let a = self.ds.attr;
        let ds = Segment {
            base: u64::from(self.ds.base),
            limit: self.ds.limit,
            type_: a & 0xf,
            present: a & 0x10 == 0,
            db: a & 0x20 == 0,
            unusable: a & 0x40 != 0,
            ..flat
        };
        match self.mode {
            Mode::Long | Mode::LongUser => {
                let dpl = if self.mode == Mode::LongUser { 3 } else { 0 };
                s.cr0 = 0x8000_0011 | if self.has(Flags::WP) { 1 << 16 } else { 0 };
                s.cr3 = PML4;
                s.cr4 = 0x20;
                s.efer = 0x500 | if self.has(Flags::NXE) { 0x800 } else { 0 };
                s.cs = Segment {
                    type_: 0xb,
                    l: true,
                    db: false,
                    dpl,
                    ..flat
                };
                s.ds = flat;
                s.es = flat;
                s.ss = Segment { dpl, ..flat };
                s.fs = Segment {
                    base: self.fs_gs[0].get(),
                    ..flat
                };
                s.gs = Segment {
                    base: self.fs_gs[1].get(),
                    ..flat
                };
            }
            Mode::Protected => {
                s.cr0 = 0x11 | if self.has(Flags::PAGING) { 1 << 31 } else { 0 };
                s.cr3 = PML4;
                s.cs = Segment { type_: 0xb, ..flat };
                s.ds = ds;
                s.es = flat;
                s.fs = flat;
                s.gs = flat;
                s.ss = if a & 0x80 != 0 { ds } else { flat };
            }
            Mode::Real => {
                let real = |base: u64| Segment {
                    base,
                    limit: 0xffff,
                    present: true,
                    type_: 0x3,
                    s: true,
                    ..Segment::default()
                };
                s.cr0 = 0x10;
                s.cs = Segment {
                    type_: 0xb,
                    ..real(0)
                };
                s.ds = real(u64::from(self.ds.base & 0xffff) << 4);
                s.es = real(0);
                s.fs = real(0);
                s.gs = real(0);
                s.ss = real(0);
            }
        }
        for (flag, bit) in [
            (Flags::OSXSAVE, 18),
            (Flags::LA57, 12),
            (Flags::SMAP, 21),
            (Flags::SMEP, 20),
        ] {
            if self.has(flag) {
                s.cr4 |= 1 << bit;
            }
        }
        s
    }

    /// XCR0 as [`xcr0`](Self::xcr0) encodes it.
    pub fn xcr0_value(&self) -> u64 {
        let b = u64::from(self.xcr0);
        1 | (b & 0b110) | ((b & 0b11_1000) << 2) | ((b & 0x40) << 3) | ((b & 0x80) << 10)
    }

    /// The vCPU's XSAVE area.
    pub fn xsave_area(&self) -> Option<Vec<u8>> {
        let (fill, bv) = self.xsave;
        if fill == 0 {
            return None;
        }
        let mut area: Vec<u8> = (0..XSAVE_AREA_SIZE)
            .map(|i| (i as u8).wrapping_mul(fill))
            .collect();
        area[24..32].copy_from_slice(&(0x1f80u64 | (0xffff << 32)).to_le_bytes());
        area[512..576].fill(0);
        area[512] = bv;
        Some(area)
    }
}

/// Where the instruction's memory operand lies: its guest-physical pieces, translated from the
/// state before the instruction (no accessed/dirty update), for `len` bytes from its linear
/// address; pages that do not translate are left out (nothing may be written there).
fn operand_pieces(
    decoded: &DecodedInsn,
    regs: &Registers,
    sregs: &SpecialRegisters,
    mem: &GuestMemoryMmap,
    len: u64,
) -> Vec<(u64, u64)> {
    let insn = &decoded.instruction;
    let Some(ea) = insn.virtual_address(0, 0, |reg, _, _| {
        if reg.is_segment_register() {
            Some(0)
        } else {
            regs.gpr(reg)
        }
    }) else {
        return Vec::new();
    };
    let long = decoded.mode == CpuMode::Bits64;
    let base = match insn.memory_segment() {
        Register::FS => sregs.fs.base,
        Register::GS => sregs.gs.base,
        _ if long => 0,
        Register::ES => sregs.es.base,
        Register::CS => sregs.cs.base,
        Register::SS => sregs.ss.base,
        _ => sregs.ds.base,
    };
    let la = base.wrapping_add(ea);
    let paging = X86Paging::from_registers(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, 0);
    let access = Access::write(Privilege::Supervisor);
    let mut pieces = Vec::new();
    let mut done = 0;
    while done < len {
        let mut addr = la.wrapping_add(done);
        if !long {
            addr &= 0xffff_ffff;
        }
        let n = (4096 - addr % 4096).min(len - done);
        let gpa = if sregs.cr0 & (1 << 31) != 0 {
            // Supervisor rights are the widest: pages a user access could reach are among them.
            let mut sup = paging;
            sup.wp = false;
            sup.smap = false;
            sup.smep = false;
            sup.probe(mem, addr, access).ok().map(|t| t.address)
        } else {
            Some(addr)
        };
        if let Some(gpa) = gpa {
            pieces.push((gpa, n));
        }
        done += n;
    }
    pieces
}

/// A copy of all guest memory, region by region.
fn snapshot(mem: &GuestMemoryMmap) -> Vec<Vec<u8>> {
    RAM.iter()
        .map(|&(start, len)| {
            let mut buf = vec![0; len];
            mem.read_slice(&mut buf, GuestAddress(start)).unwrap();
            buf
        })
        .collect()
}

/// Whether a byte at `gpa` changed from `before` to `after` only as a page walk changes an
/// entry: the accessed (bit 5) and dirty (bit 6) flags of an entry's low byte, set.
fn is_walk_update(gpa: u64, before: u8, after: u8) -> bool {
    gpa.is_multiple_of(8) && (before ^ after) & !0x60 == 0 && before & !after == 0
}

fn read_bytes(mem: &[Vec<u8>], gpa: u64, len: usize) -> Option<Vec<u8>> {
    RAM.iter().zip(mem).find_map(|(&(start, size), bytes)| {
        let off = usize::try_from(gpa.checked_sub(start)?).ok()?;
        bytes
            .get(off..off.checked_add(len)?.min(size))
            .map(<[u8]>::to_vec)
    })
}

/// The mask of the instruction pointer in `mode`.
fn rip_mask(mode: CpuMode) -> u64 {
    match mode {
        CpuMode::Bits16 => 0xffff,
        CpuMode::Bits32 => 0xffff_ffff,
        CpuMode::Bits64 => u64::MAX,
    }
}

const RFLAGS_ZF: u64 = 1 << 6;

/// Target body.
pub fn run(data: &[u8]) {
    check(&Input::decode(data));
}

/// Runs one input through the assist and checks the invariants (see the module overview).
pub fn check(input: &Input) {
    let mem = input.memory();
    let mut vcpu = FakeVcpu::new(0);
    let regs = input.registers();
    let sregs = input.special_registers();
    vcpu.set_registers(&regs).unwrap();
    vcpu.set_special_registers(&sregs).unwrap();
    vcpu.set_xcr0(input.xcr0_value()).unwrap();
    vcpu.set_msr(MSR_IA32_XSS, u64::from(input.xss) << 8)
        .unwrap();
    if let Some(area) = input.xsave_area() {
        vcpu.set_xsave(&area).unwrap();
    }
    let queued = Exception {
        vector: UD_VECTOR,
        error_code: None,
    };
    if input.has(Flags::QUEUED_UD) {
        vcpu.queue_exception(queued);
    }
    let xsave_before = vcpu.xsave().unwrap();
    let before = snapshot(&mem);

    let reflect = input.has(Flags::REFLECT);
    let strategy = if input.has(Flags::BACKEND_ADDS_LENGTH) {
        SoftExceptionRip::BackendAddsLength
    } else {
        SoftExceptionRip::AdvanceRip
    };
    let assist = EmulationAssist::new(move |_: &DecodedInsn| {
        if reflect {
            AssistVerdict::InjectUd
        } else {
            AssistVerdict::Stop
        }
    })
    .with_soft_exception_rip(strategy)
    // One instruction per exit: the oracle models one instruction (runs of vector
    // instructions have their own unit tests).
    .with_max_vector_run(0)
    .with_xsave_layout(XsaveLayout::default());
    let suberror = if input.has(Flags::OTHER_SUBERROR) {
        3
    } else {
        1
    };
    let insn = (!input.has(Flags::NO_BYTES)).then(|| InsnBytes::new(&input.insn));
    let failure = ExitAction::Stop(StopReason::InternalError { suberror, insn });
    let action = assist
        .resolve(&mut vcpu, &mem, failure)
        .expect("the fake vCPU never fails");

    let after = snapshot(&mem);
    let regs_after = vcpu.registers().unwrap();
    let sregs_after = vcpu.special_registers().unwrap();
    let pending = vcpu.pending_exception().unwrap();
    let counts = assist.counts();
    let completed: Vec<Assisted> = Assisted::ALL
        .into_iter()
        .filter(|&k| counts.completed(k) != 0)
        .collect();
    let total = completed.len() as u64 + counts.faulted + counts.reflected + counts.stopped;
    assert_eq!(total, 1, "exactly one outcome: {counts:?}");
    let mode = CpuMode::from_sregs(&sregs);
    let decoded = insn.and_then(|b| decode_at(b.as_slice(), mode, regs.rip).ok());

    // Which bytes the instruction may have written.
    let mut allowed: Vec<(u64, u64)> = Vec::new();
    match (action, completed.first()) {
        (ExitAction::Resume, Some(&kind)) => {
            let decoded = decoded.as_ref().expect("a completed instruction decoded");
            check_completed(input, kind, decoded, &regs, &regs_after, pending, &vcpu);
            assert_eq!(sregs_after, sregs, "{kind:?} changes no special register");
            let len = match kind {
                Assisted::Cmpxchg8b => 8,
                Assisted::Cmpxchg16b => 16,
                Assisted::Xsave | Assisted::Xsaveopt | Assisted::Xsavec | Assisted::Xsaves => {
                    XSAVE_AREA_SIZE as u64
                }
                // The others write registers only.
                _ => 0,
            };
            if len != 0 {
                allowed = operand_pieces(decoded, &regs, &sregs, &mem, len);
            }
            if matches!(kind, Assisted::Cmpxchg8b | Assisted::Cmpxchg16b) {
                check_cmpxchg(kind, &allowed, &before, &after, &regs, &regs_after);
            }
            if !matches!(kind, Assisted::Xrstor | Assisted::Xrstors) {
                assert_eq!(vcpu.xsave().unwrap(), xsave_before, "{kind:?} keeps XSAVE");
            }
        }
        (ExitAction::Resume, None) => {
            assert_eq!(regs_after, regs, "a fault changes no register");
            let e = pending.expect("a fault or #UD is queued");
            if counts.reflected == 1 {
                assert!(reflect);
                assert_eq!(e, queued, "reflected as #UD");
            } else {
                let cr0_ts = sregs.cr0 & CR0_TS != 0;
                // `#MF` only at an fwait, when the x87 status word (bytes 2..4 of the XSAVE
                // area) has its exception-summary bit and no `#NM` comes first.
                let fsw_es = xsave_before.get(2).is_some_and(|b| b & 0x80 != 0);
                let nm_first = cr0_ts && sregs.cr0 & CR0_MP != 0;
                let is_fwait = decoded
                    .as_ref()
                    .is_some_and(|d| d.instruction.mnemonic() == Mnemonic::Wait);
                assert!(
                    match (e.vector, e.error_code) {
                        (6, None) | (12, Some(0)) | (13, Some(0)) | (PF_VECTOR, Some(_)) => true,
                        (7, None) => cr0_ts,
                        (16, None) => is_fwait && fsw_es && !nm_first,
                        _ => false,
                    },
                    "{e:?}"
                );
            }
            let mut expected = sregs;
            if e.vector == PF_VECTOR {
                expected.cr2 = sregs_after.cr2;
            }
            assert_eq!(sregs_after, expected, "only CR2 changes, on #PF");
            assert_eq!(vcpu.xsave().unwrap(), xsave_before);
        }
        (
            ExitAction::Stop(StopReason::InternalError {
                suberror: s,
                insn: i,
            }),
            None,
        ) => {
            assert_eq!(
                (s, i),
                (suberror, insn),
                "the failure is returned unchanged"
            );
            assert_eq!(regs_after, regs);
            assert_eq!(sregs_after, sregs);
            assert_eq!(vcpu.xsave().unwrap(), xsave_before);
            if input.has(Flags::QUEUED_UD) {
                assert_eq!(pending, Some(queued), "the backend's event is left alone");
            }
            if suberror == 1 && insn.is_some() {
                let report = assist
                    .last_report()
                    .expect("a stop with bytes has a report");
                assert_eq!(report.regs, regs);
                let _ = report.to_string();
            }
        }
        (action, kinds) => panic!("impossible outcome {action:?} with {kinds:?}"),
    }

    // Guest memory: unchanged except the operand and page-walk flag updates.
    for ((&(start, _), b), a) in RAM.iter().zip(&before).zip(&after) {
        for (i, (&x, &y)) in b.iter().zip(a).enumerate() {
            if x == y {
                continue;
            }
            let gpa = start + i as u64;
            let in_operand = allowed.iter().any(|&(p, n)| gpa >= p && gpa - p < n);
            assert!(
                in_operand || is_walk_update(gpa, x, y),
                "byte at {gpa:#x} changed from {x:#04x} to {y:#04x} outside the operand \
                 {allowed:x?}"
            );
        }
    }
}

/// RIP, flags and the pending event of a completed instruction.
fn check_completed(
    input: &Input,
    kind: Assisted,
    decoded: &DecodedInsn,
    regs: &Registers,
    after: &Registers,
    pending: Option<Exception>,
    vcpu: &FakeVcpu,
) {
    let advanced = regs.rip.wrapping_add(decoded.len as u64) & rip_mask(decoded.mode);
    if kind == Assisted::Int3 {
        let rip = if input.has(Flags::BACKEND_ADDS_LENGTH) {
            regs.rip
        } else {
            advanced
        };
        assert_eq!(after.rip, rip, "int3");
        assert_eq!(pending.map(|e| e.vector), Some(3), "#BP queued");
        assert_eq!(
            Registers {
                rip: regs.rip,
                ..*after
            },
            *regs
        );
        return;
    }
    assert_eq!(after.rip, advanced, "{kind:?} advances RIP by its length");
    assert_eq!(pending, None, "no event after a completed {kind:?}");
    assert!(vcpu.injected().is_empty());
    let mut expected = *regs;
    expected.rip = after.rip;
    match kind {
        Assisted::Cmpxchg8b | Assisted::Cmpxchg16b => {
            expected.rflags = (regs.rflags & !RFLAGS_ZF) | (after.rflags & RFLAGS_ZF);
            if after.rflags & RFLAGS_ZF == 0 {
                (expected.rax, expected.rdx) = (after.rax, after.rdx);
            }
        }
        Assisted::Xsave
        | Assisted::Xsaveopt
        | Assisted::Xsavec
        | Assisted::Xsaves
        | Assisted::Xrstor
        | Assisted::Xrstors => {}
        // The others (bit counts, flag instructions) write the flags and at most one
        // general-purpose register.
        _ => {
            let gprs = |r: &Registers| {
                [
                    r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10,
                    r.r11, r.r12, r.r13, r.r14, r.r15,
                ]
            };
            let changed = gprs(regs)
                .iter()
                .zip(gprs(after))
                .filter(|(a, b)| **a != *b)
                .count();
            assert!(changed <= 1, "{kind:?} writes at most one register");
            expected = *after;
        }
    }
    assert_eq!(*after, expected, "{kind:?} changes only what it defines");
}

/// The architecture's compare-exchange: equal → memory = RCX:RBX, ZF=1; otherwise RDX:RAX =
/// memory (zero-extended halves for 8 bytes), ZF=0, memory unchanged. The old value may differ
/// from the one before the instruction by the accessed/dirty flags of its own walk (an operand
/// inside a page table).
fn check_cmpxchg(
    kind: Assisted,
    pieces: &[(u64, u64)],
    before: &[Vec<u8>],
    after: &[Vec<u8>],
    regs: &Registers,
    regs_after: &Registers,
) {
    let [(gpa, len)] = pieces else {
        panic!("a completed {kind:?} has one contiguous operand: {pieces:x?}");
    };
    let n = *len as usize;
    let old = read_bytes(before, *gpa, n).expect("operand in RAM");
    let new_mem = read_bytes(after, *gpa, n).expect("operand in RAM");
    let (expected, new, seen): (Vec<u8>, Vec<u8>, Vec<u8>) = if kind == Assisted::Cmpxchg16b {
        let cat = |lo: u64, hi: u64| [lo.to_le_bytes(), hi.to_le_bytes()].concat();
        (
            cat(regs.rax, regs.rdx),
            cat(regs.rbx, regs.rcx),
            cat(regs_after.rax, regs_after.rdx),
        )
    } else {
        let cat = |lo: u64, hi: u64| (lo & 0xffff_ffff | hi << 32).to_le_bytes().to_vec();
        if regs_after.rflags & RFLAGS_ZF == 0 {
            // Only a failed comparison writes EDX:EAX (zero-extending both).
            assert_eq!(regs_after.rax >> 32, 0, "EAX zero-extended");
            assert_eq!(regs_after.rdx >> 32, 0, "EDX zero-extended");
        }
        (
            cat(regs.rax, regs.rdx),
            cat(regs.rbx, regs.rcx),
            cat(regs_after.rax, regs_after.rdx),
        )
    };
    let explains = |value: &[u8]| {
        old.iter()
            .zip(value)
            .enumerate()
            .all(|(i, (&o, &v))| o == v || is_walk_update(gpa + i as u64, o, v))
    };
    if regs_after.rflags & RFLAGS_ZF != 0 {
        assert_eq!(new_mem, new, "{kind:?} equal: memory gets RCX:RBX");
        assert!(explains(&expected), "{kind:?} equal: memory held RDX:RAX");
    } else {
        assert_eq!(new_mem, seen, "{kind:?} not equal: RDX:RAX gets memory");
        assert_ne!(seen, expected, "{kind:?} not equal");
        assert!(explains(&seen), "{kind:?} not equal: memory unchanged");
    }
}

/// `lock cmpxchg16b [rsi]`.
const CX16: &[u8] = &[0xf0, 0x48, 0x0f, 0xc7, 0x0e];
/// `lock cmpxchg8b [rdi]`.
const CX8: &[u8] = &[0xf0, 0x0f, 0xc7, 0x0f];

fn long_mode(insn: &[u8]) -> Input {
    Input {
        insn: insn.to_vec(),
        rip: 0xffff_ffff_8100_0000,
        flags: Flags::QUEUED_UD | Flags::OSXSAVE | Flags::WP,
        xcr0: 0b111,
        ..Input::default()
    }
}

fn with_gpr(mut input: Input, index: usize, v: Value) -> Input {
    input.gprs[index] = v;
    input
}

/// The seed corpus: each instruction the assist completes, in both outcomes where it has two,
/// its faults, the stops, and junk.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    const RAX: usize = 0;
    const RCX: usize = 1;
    const RDX: usize = 2;
    const RBX: usize = 3;
    const RSI: usize = 6;
    const RDI: usize = 7;
    let old16 = [0x1111_2222_3333_4444u64, 0x5555_6666_7777_8888];
    let cx16 = |expected: [u64; 2]| {
        let mut i = long_mode(CX16);
        i.gprs[RSI] = Value::Region(0, 0x100);
        i.gprs[RAX] = Value::Raw(expected[0]);
        i.gprs[RDX] = Value::Raw(expected[1]);
        i.gprs[RBX] = Value::Raw(0xaaaa);
        i.gprs[RCX] = Value::Raw(0xbbbb);
        i.patches = vec![(
            0x100,
            [old16[0].to_le_bytes(), old16[1].to_le_bytes()].concat(),
        )];
        i
    };
    let cx8 = |expected: u64| {
        let mut i = long_mode(CX8);
        i.gprs[RDI] = Value::Region(0, 0x203);
        i.gprs[RAX] = Value::Raw(expected & 0xffff_ffff);
        i.gprs[RDX] = Value::Raw(expected >> 32);
        i.gprs[RBX] = Value::Raw(0x1234_5678);
        i.gprs[RCX] = Value::Raw(0x9abc_def0);
        i.patches = vec![(0x203, 0x0123_4567_89ab_cdefu64.to_le_bytes().to_vec())];
        i
    };
    let xsave_family = |insn: &[u8]| {
        let mut i = long_mode(insn);
        i.gprs[RDI] = Value::Region(0, 0x1040);
        i.gprs[RAX] = Value::Raw(u64::from(u32::MAX));
        i.gprs[RDX] = Value::Raw(u64::from(u32::MAX));
        i.xsave = (7, 0b111);
        i
    };
    let xrstor = |insn: &[u8], xcomp: u64| {
        let mut i = xsave_family(insn);
        i.fill = 0;
        let mut header = vec![0u8; 64];
        header[..8].copy_from_slice(&0b11u64.to_le_bytes());
        header[8..16].copy_from_slice(&xcomp.to_le_bytes());
        i.patches = vec![
            (0x1040 + 24, (0x1f80u32).to_le_bytes().to_vec()),
            (0x1040 + 512, header),
        ];
        i
    };
    let mut seeds: Vec<(&'static str, Input)> = vec![
        ("cmpxchg16b_equal", cx16(old16)),
        ("cmpxchg16b_not_equal", cx16([1, 2])),
        ("cmpxchg8b_equal", cx8(0x0123_4567_89ab_cdef)),
        ("cmpxchg8b_not_equal", cx8(7)),
        ("int3", long_mode(&[0xcc])),
        ("int3_backend_adds_length", {
            let mut i = long_mode(&[0xcc]);
            i.flags |= Flags::BACKEND_ADDS_LENGTH;
            i
        }),
        ("xsave", xsave_family(&[0x0f, 0xae, 0x27])),
        ("fwait", long_mode(&[0x9b])),
        // The x87 status word (XSAVE bytes 2..4) with its exception-summary bit: `#MF`.
        ("fwait_x87_exception_pending", {
            let mut i = long_mode(&[0x9b]);
            i.xsave = (0x40, 1);
            i
        }),
        ("xsaveopt", xsave_family(&[0x0f, 0xae, 0x37])),
        ("xsavec", xsave_family(&[0x0f, 0xc7, 0x27])),
        ("xsaves", xsave_family(&[0x0f, 0xc7, 0x2f])),
        ("xrstor", xrstor(&[0x0f, 0xae, 0x2f], 0)),
        ("xrstors", xrstor(&[0x0f, 0xc7, 0x1f], 1 << 63 | 0b11)),
        ("xrstor_bad_header", xrstor(&[0x0f, 0xae, 0x2f], 1 << 63)),
        ("xsave_no_osxsave", {
            let mut i = xsave_family(&[0x0f, 0xae, 0x27]);
            i.flags &= !Flags::OSXSAVE;
            i
        }),
        ("xsave_amx_component", {
            let mut i = xsave_family(&[0x48, 0x0f, 0xae, 0x27]);
            i.xcr0 = 0x87;
            i
        }),
        ("xsaves_from_user", {
            let mut i = xsave_family(&[0x0f, 0xc7, 0x2f]);
            i.mode = Mode::LongUser;
            i.gprs[RDI] = Value::Region(4, 0);
            i
        }),
        (
            "cmpxchg16b_misaligned",
            with_gpr(cx16(old16), RSI, Value::Region(0, 0x108)),
        ),
        (
            "cmpxchg16b_read_only",
            with_gpr(cx16(old16), RSI, Value::Region(2, 0x10)),
        ),
        (
            "cmpxchg16b_unmapped",
            with_gpr(cx16(old16), RSI, Value::Region(6, 0x7f0)),
        ),
        (
            "cmpxchg16b_non_canonical",
            with_gpr(cx16(old16), RSI, Value::Region(11, 0)),
        ),
        (
            "cmpxchg16b_outside_ram",
            with_gpr(cx16(old16), RSI, Value::Region(5, 0)),
        ),
        (
            "cmpxchg8b_straddles_pages",
            with_gpr(cx8(7), RDI, Value::Region(3, 0xffc)),
        ),
        (
            "cmpxchg8b_split_lock",
            with_gpr(cx8(7), RDI, Value::Region(0, 0x3c)),
        ),
        ("cmpxchg16b_into_page_table", {
            let mut i = cx16([0, 0]);
            i.ptes[0] = PT | 0x03; // the PT itself, without accessed/dirty flags
            i.gprs[RSI] = Value::Region(6, 0x400); // PT entry 0x80: zero
            i
        }),
        ("cmpxchg16b_fuzz_pde_2m", {
            let mut i = cx16([0, 0]);
            i.upper[2] = 0x83; // a 2 MiB page at 0: RAM, the hole, region B
            i.gprs[RSI] = Value::Raw(0x24_0010);
            i
        }),
        ("cmpxchg8b_real_mode", {
            let mut i = cx8(0x0123_4567_89ab_cdef);
            i.mode = Mode::Real;
            i.insn = vec![0xf0, 0x0f, 0xc7, 0x0d]; // lock cmpxchg8b [di]
            i.ds.base = 0x1000; // DS = 0x1000: base 0x10000
            i.gprs[RDI] = Value::Raw(0x203);
            i.rip = 0xfffe;
            i
        }),
        ("cmpxchg8b_protected_limit", {
            let mut i = cx8(7);
            i.mode = Mode::Protected;
            i.ds = DataSegment {
                base: 0x1_0000,
                limit: 0x205,
                attr: 0x3,
            };
            i.gprs[RDI] = Value::Raw(0x200);
            i.rip = 0xffff_fffe;
            i
        }),
        ("protected_32_bit_paging", {
            let mut i = cx8(7);
            i.mode = Mode::Protected;
            i.flags |= Flags::PAGING;
            i.ds = DataSegment {
                base: 0,
                limit: u32::MAX,
                attr: 0x3,
            };
            i
        }),
        ("not_emulated_stop", long_mode(&[0xf4])),
        ("not_emulated_reflected", {
            let mut i = long_mode(&[0x0f, 0x0b]);
            i.flags |= Flags::REFLECT;
            i
        }),
        ("truncated", long_mode(&[0xf0, 0x48, 0x0f, 0xc7])),
        ("no_bytes", {
            let mut i = long_mode(CX16);
            i.flags |= Flags::NO_BYTES;
            i
        }),
        ("other_suberror", {
            let mut i = long_mode(CX16);
            i.flags |= Flags::OTHER_SUBERROR;
            i
        }),
    ];
    seeds.push(("junk", Input::decode(&[0xff; 200])));
    let mut out: Vec<(&'static str, Vec<u8>)> =
        seeds.into_iter().map(|(n, i)| (n, i.encode())).collect();
    out.push(("junk_bytes", (0..=255u8).rev().collect()));
    out.push(("empty", Vec::new()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed_files;

    #[test]
    fn inputs_round_trip() {
        for (name, bytes) in seeds() {
            let input = Input::decode(&bytes);
            if !name.starts_with("junk") && name != "empty" {
                assert_eq!(input.encode(), bytes, "{name}");
            }
        }
        let v = Value::Region(12, 5);
        assert_eq!(v.get(), REGIONS[0] + 5);
    }

    /// Runs `input` and returns the assist's counts of one fresh run, to check that the seeds
    /// reach the outcome they are named after.
    fn outcome(input: &Input) -> (Option<Assisted>, Option<Exception>, bool) {
        check(input);
        let mem = input.memory();
        let mut vcpu = FakeVcpu::new(0);
        vcpu.set_registers(&input.registers()).unwrap();
        vcpu.set_special_registers(&input.special_registers())
            .unwrap();
        vcpu.set_xcr0(input.xcr0_value()).unwrap();
        if let Some(area) = input.xsave_area() {
            vcpu.set_xsave(&area).unwrap();
        }
        let assist = EmulationAssist::new(|_: &DecodedInsn| AssistVerdict::Stop)
            .with_xsave_layout(XsaveLayout::default());
        let failure = ExitAction::Stop(StopReason::InternalError {
            suberror: 1,
            insn: Some(InsnBytes::new(&input.insn)),
        });
        let action = assist.resolve(&mut vcpu, &mem, failure).unwrap();
        let counts = assist.counts();
        let kind = Assisted::ALL
            .into_iter()
            .find(|&k| counts.completed(k) != 0);
        let injected = vcpu.injected().last().copied();
        (kind, injected, action != ExitAction::Resume)
    }

    #[test]
    fn seeds_reach_their_outcome() {
        let all = seeds();
        let get = |name: &str| Input::decode(&all.iter().find(|(n, _)| *n == name).unwrap().1);
        for (name, kind) in [
            ("cmpxchg16b_equal", Assisted::Cmpxchg16b),
            ("cmpxchg16b_not_equal", Assisted::Cmpxchg16b),
            ("cmpxchg8b_equal", Assisted::Cmpxchg8b),
            ("cmpxchg8b_not_equal", Assisted::Cmpxchg8b),
            ("cmpxchg8b_real_mode", Assisted::Cmpxchg8b),
            ("int3", Assisted::Int3),
            ("fwait", Assisted::Fwait),
            ("xsave", Assisted::Xsave),
            ("xsaveopt", Assisted::Xsaveopt),
            ("xsavec", Assisted::Xsavec),
            ("xsaves", Assisted::Xsaves),
            ("xrstor", Assisted::Xrstor),
            ("xrstors", Assisted::Xrstors),
            ("cmpxchg16b_into_page_table", Assisted::Cmpxchg16b),
            ("cmpxchg16b_fuzz_pde_2m", Assisted::Cmpxchg16b),
        ] {
            assert_eq!(outcome(&get(name)).0, Some(kind), "{name}");
        }
        for (name, vector) in [
            ("cmpxchg16b_misaligned", 13),
            ("cmpxchg16b_read_only", 14),
            ("cmpxchg16b_unmapped", 14),
            ("cmpxchg16b_non_canonical", 13),
            ("xrstor_bad_header", 13),
            ("xsave_no_osxsave", 6),
            ("fwait_x87_exception_pending", 16),
            ("xsaves_from_user", 13),
            ("cmpxchg8b_protected_limit", 13),
        ] {
            let (kind, injected, _) = outcome(&get(name));
            assert_eq!(
                (kind, injected.map(|e| e.vector)),
                (None, Some(vector)),
                "{name}"
            );
        }
        for name in [
            "cmpxchg16b_outside_ram",
            "cmpxchg8b_straddles_pages",
            "cmpxchg8b_split_lock",
            "xsave_amx_component",
            "protected_32_bit_paging",
            "not_emulated_stop",
            "truncated",
        ] {
            assert!(outcome(&get(name)).2, "{name} stops");
        }
    }

    #[test]
    fn committed_seeds_replay() {
        seed_files::replay("emulation_assist", &seeds(), true, run);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        run(&[]);
        run(&[0xff; 400]);
        for mode in 0..4u8 {
            for first in [0xcc, 0x0f, 0xf0, 0x48, 0x65] {
                run(&[mode, 0xff, 0xff, 15, first, 0x0f, 0xc7, 0x0e, 0x0f, 0xae]);
            }
        }
    }

    #[test]
    #[ignore]
    fn write_assist_seeds() {
        seed_files::write("emulation_assist", &seeds());
    }
}
