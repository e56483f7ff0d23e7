//! Random but structured paging scenarios decoded from bytes: guest tables (4- or 5-level) and,
//! maybe, EPT or NPT tables in a small host memory, with the perturbations that exercise every
//! rule: not-present entries, R/W, U/S and XD at any level, large pages, reserved bits of every
//! kind, EPT misconfigurations, preset accessed/dirty flags, tables shared between paths, tables
//! that loop back, and tables outside memory. Then a few accesses to translate in order.
//!
//! Every byte string decodes to a scenario; once the bytes run out a generator seeded from them
//! takes over, so short inputs still give full scenarios.

use alloc::vec::Vec;

use super::naive::{Guest, Kind, Mode, Nested};

/// Host memory pages a scenario may use (host-physical addresses `0..PAGES * 4096`); its memory
/// ends after the last page the generator handed out.
pub const PAGES: u64 = 32;

/// One access to translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessSpec {
    /// The linear address.
    pub gva: u64,
    /// Read, write or fetch.
    pub kind: Kind,
    /// User, supervisor or implicit.
    pub mode: Mode,
}

/// A scenario: memory, paging controls, and accesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The initial host memory, as words from address 0.
    pub words: Vec<u64>,
    /// The guest's paging controls.
    pub guest: Guest,
    /// The nested paging.
    pub nested: Nested,
    /// The accesses, translated in order on the same memory.
    pub accesses: Vec<AccessSpec>,
}

/// Bytes, then a generator seeded from them.
struct Source<'a> {
    data: &'a [u8],
    pos: usize,
    state: u64,
}

impl<'a> Source<'a> {
    fn new(data: &'a [u8]) -> Self {
        let seed = data
            .iter()
            .fold(0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
        Source {
            data,
            pos: 0,
            state: seed | 1,
        }
    }

    fn byte(&mut self) -> u8 {
        if let Some(b) = self.data.get(self.pos) {
            self.pos += 1;
            return *b;
        }
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    }

    /// A number below `n` (1..=256).
    fn below(&mut self, n: u32) -> u64 {
        u64::from(u32::from(self.byte()) % n)
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u32) -> bool {
        self.below(n) == 0
    }

    fn word(&mut self) -> u64 {
        (0..8).fold(0, |w, _| (w << 8) | u64::from(self.byte()))
    }
}

/// A guest table page: its guest-physical and host-physical addresses.
#[derive(Debug, Clone, Copy)]
struct Frame {
    gpa: u64,
    hpa: u64,
}

struct Build<'a> {
    src: Source<'a>,
    words: Vec<u64>,
    next_page: u64,
    guest: Guest,
    nested: Nested,
    frames: Vec<Frame>,
    /// Divides the rate of fault-provoking perturbations: 1 (chaotic) to 8 (mostly clean).
    calm: u32,
}

const ADDR: u64 = 0x000f_ffff_ffff_f000;

impl Build<'_> {
    /// True one time in `n * calm`: a perturbation that may make a walk fail.
    fn perturb(&mut self, n: u32) -> bool {
        let n = n * self.calm;
        if n <= 256 {
            self.src.one_in(n)
        } else {
            self.src.one_in(256) && self.src.one_in(n / 256)
        }
    }

    fn get(&self, addr: u64) -> u64 {
        self.words.get((addr / 8) as usize).copied().unwrap_or(0)
    }

    /// Sets the word at `addr` inside the first `PAGES` pages, growing the memory to its page:
    /// memory holds only the pages written so far, so that a small scenario stays small.
    fn set(&mut self, addr: u64, value: u64) {
        let index = (addr / 8) as usize;
        if addr >= PAGES * 4096 {
            return;
        }
        if index >= self.words.len() {
            self.words.resize((index | 511) + 1, 0);
        }
        self.words[index] = value;
    }

    /// A host page: a fresh one, or now and then (and when memory is full) one in use, which
    /// makes tables share pages and loop.
    fn host_page(&mut self) -> u64 {
        if self.next_page < PAGES && !self.src.one_in(16) {
            self.next_page += 1;
            return (self.next_page - 1) * 4096;
        }
        self.src.below(self.next_page.max(1) as u32) * 4096
    }

    /// A page outside host memory, below every MAXPHYADDR used.
    fn outside_page(&mut self) -> u64 {
        (PAGES + self.src.below(64)) * 4096
    }

    /// A reserved bit among bits 51:maxphyaddr, if there are any.
    fn phys_reserved_bit(&mut self, maxphyaddr: u8) -> Option<u64> {
        let span = 52 - u32::from(maxphyaddr);
        (span > 0).then(|| 1u64 << (u32::from(maxphyaddr) + self.src.below(span) as u32))
    }

    fn nested_levels(&self) -> Option<u32> {
        match self.nested {
            Nested::None => None,
            Nested::Ept { five_level, .. } | Nested::Npt { five_level, .. } => {
                Some(if five_level { 5 } else { 4 })
            }
        }
    }

    fn guest_levels(&self) -> u32 {
        if self.guest.la57 { 5 } else { 4 }
    }

    /// A leaf level: 1 half the time, 2 a third, 3 the rest.
    fn leaf_level(&mut self) -> u32 {
        match self.src.below(12) {
            0..=5 => 1,
            6..=9 => 2,
            _ => 3,
        }
    }

    /// A new guest table page, mapped by the nested tables if any.
    fn new_guest_frame(&mut self) -> Frame {
        let hpa = self.host_page();
        let frame = match self.nested {
            Nested::None => Frame { gpa: hpa, hpa },
            _ => {
                // GPA = region * 1 GiB + HPA, so that a nested page of any size whose base is
                // the region's start maps it to the right host page.
                let gpa = (self.src.below(4) << 30) | hpa;
                self.nested_map(gpa, hpa, false);
                Frame { gpa, hpa }
            }
        };
        self.frames.push(frame);
        frame
    }

    /// Extends the nested tables so that `gpa` maps to `hpa`, with a page of random size
    /// based at `hpa - (gpa & (size - 1))`, unless the tables already decide otherwise.
    fn nested_map(&mut self, gpa: u64, hpa: u64, data: bool) {
        let Some(levels) = self.nested_levels() else {
            return;
        };
        let (root, ept) = match self.nested {
            Nested::Ept { root, .. } => (root, true),
            Nested::Npt { root, .. } => (root, false),
            Nested::None => return,
        };
        let leaf_level = self.leaf_level();
        let mut table = root;
        for level in (1..=levels).rev() {
            let at = table + ((gpa >> (12 + 9 * (level - 1))) & 511) * 8;
            let entry = self.get(at);
            let present = if ept { entry & 7 != 0 } else { entry & 1 != 0 };
            if entry == 0 && level <= leaf_level {
                let size_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
                let base = hpa.wrapping_sub(gpa & size_mask) & ADDR & !size_mask;
                let leaf = if ept {
                    self.ept_leaf(base, level, data)
                } else {
                    self.x86_leaf(base, level, !data)
                };
                self.set(at, leaf);
                return;
            }
            if entry == 0 {
                let next = if self.perturb(60) {
                    self.outside_page()
                } else {
                    self.host_page()
                };
                let link = if ept {
                    self.ept_table(next, level)
                } else {
                    self.x86_table(next, level, true)
                };
                self.set(at, link);
                table = next;
            } else if present && level > 1 && (entry & 0x80 == 0 || level >= 4) {
                table = entry & ADDR;
                if table >= PAGES * 4096 {
                    return;
                }
            } else {
                return;
            }
        }
    }

    fn ept_maxphyaddr(&self) -> u8 {
        match self.nested {
            Nested::Ept { maxphyaddr, .. } | Nested::Npt { maxphyaddr, .. } => maxphyaddr,
            Nested::None => self.guest.maxphyaddr,
        }
    }

    fn ept_table(&mut self, next: u64, level: u32) -> u64 {
        let mut entry = next | 7;
        if self.perturb(48) {
            entry = (entry & !7) | self.src.below(8);
        }
        if self.src.one_in(2) {
            entry |= 1 << 8;
        }
        if self.src.one_in(16) {
            entry |= 1 << (52 + self.src.below(11));
        }
        if self.perturb(60) {
            let low = if level >= 4 {
                3 + self.src.below(5)
            } else {
                3 + self.src.below(4)
            };
            entry |= 1 << low;
        }
        if self.perturb(80) {
            entry |= self.phys_reserved_bit(self.ept_maxphyaddr()).unwrap_or(0);
        }
        entry
    }

    fn ept_leaf(&mut self, base: u64, level: u32, data: bool) -> u64 {
        let mut entry = base | 7 | (6 << 3);
        if level > 1 {
            entry |= 1 << 7;
        }
        if self.perturb(if data { 2 } else { 24 }) {
            entry = (entry & !7) | self.src.below(8);
        }
        if self.perturb(32) {
            entry = (entry & !(7 << 3)) | (self.src.below(8) << 3);
        }
        for flag in [6, 8, 9, 10, 11] {
            if self.src.one_in(2) {
                entry |= 1 << flag;
            }
        }
        if self.perturb(24) {
            let reserved = match level {
                3 => 1 << (12 + self.src.below(18)),
                2 => 1 << (12 + self.src.below(9)),
                _ => self.phys_reserved_bit(self.ept_maxphyaddr()).unwrap_or(0),
            };
            entry |= reserved;
        }
        entry
    }

    fn x86_table(&mut self, next: u64, level: u32, nested: bool) -> u64 {
        let mut entry = next | 0b111;
        if self.perturb(if nested { 40 } else { 16 }) {
            entry &= !1;
        }
        if self.perturb(if nested { 40 } else { 8 }) {
            entry &= !0b10;
        }
        if self.perturb(if nested { 40 } else { 8 }) {
            entry &= !0b100;
        }
        if self.perturb(if nested { 40 } else { 8 }) {
            entry |= 1 << 63;
        }
        for flag in [3, 4, 5, 6, 8, 9, 10, 11] {
            if self.src.one_in(3) {
                entry |= 1 << flag;
            }
        }
        if self.src.one_in(16) {
            entry |= 1 << (52 + self.src.below(11));
        }
        if level >= 4 && self.perturb(24) {
            entry |= 1 << 7;
        }
        if self.perturb(30) {
            let maxphyaddr = if nested {
                self.ept_maxphyaddr()
            } else {
                self.guest.maxphyaddr
            };
            entry |= self.phys_reserved_bit(maxphyaddr).unwrap_or(0);
        }
        entry
    }

    fn x86_leaf(&mut self, base: u64, level: u32, nested: bool) -> u64 {
        let mut entry = base | 1;
        if level > 1 {
            entry |= 1 << 7;
        }
        if !self.perturb(if nested { 24 } else { 4 }) {
            entry |= 0b10;
        }
        if !self.perturb(if nested { 24 } else { 4 }) {
            entry |= 0b100;
        }
        if self.perturb(if nested { 40 } else { 16 }) {
            entry &= !1;
        }
        if self.perturb(if nested { 24 } else { 4 }) {
            entry |= 1 << 63;
        }
        for flag in [3, 4, 5, 6, 8, 9, 10, 11] {
            if self.src.one_in(2) {
                entry |= 1 << flag;
            }
        }
        if level > 1 && self.src.one_in(3) {
            entry |= 1 << 12; // PAT of a large page
        } else if level == 1 && self.src.one_in(3) {
            entry |= 1 << 7; // PAT of a 4 KiB page
        }
        if self.perturb(if nested { 30 } else { 12 }) {
            let maxphyaddr = if nested {
                self.ept_maxphyaddr()
            } else {
                self.guest.maxphyaddr
            };
            let reserved = match level {
                3 => 1 << (13 + self.src.below(17)),
                2 => 1 << (13 + self.src.below(8)),
                _ => self.phys_reserved_bit(maxphyaddr).unwrap_or(0),
            };
            entry |= reserved;
        }
        entry
    }

    /// A guest-physical page for data: in the first 4 GiB, mapped by the nested tables to a
    /// host page that may lie anywhere (it is never accessed).
    fn data_page(&mut self) -> u64 {
        (self.src.below(4) << 30)
            | ((u64::from(self.src.byte()) << 8 | u64::from(self.src.byte())) << 12)
    }

    /// Builds a guest path for a fresh linear address and returns it.
    fn guest_path(&mut self, root: Frame) -> u64 {
        let levels = self.guest_levels();
        let mut gva = 0u64;
        for level in 1..=levels {
            let index = match self.src.below(8) {
                0..=3 => self.src.below(3),
                4 => 511,
                5 => 256,
                _ => self.src.below(256) * 2,
            };
            gva |= index << (12 + 9 * (level - 1));
        }
        let width = 12 + 9 * levels;
        let shift = 64 - width;
        gva = (((gva << shift) as i64) >> shift) as u64;
        let leaf_level = self.leaf_level();
        let target = self.data_page();
        let mut table = root;
        // The leaf reached or written: its level and the page it maps.
        let mut leaf = None;
        for level in (1..=levels).rev() {
            let index = (gva >> (12 + 9 * (level - 1))) & 511;
            let at = table.hpa + index * 8;
            let entry = self.get(at);
            let size_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
            if entry == 0 && level <= leaf_level {
                let page = target & !size_mask;
                let written = self.x86_leaf(page, level, false);
                self.set(at, written);
                leaf = Some((level, page));
                break;
            }
            if entry == 0 {
                let next = if self.perturb(40) {
                    // A table outside memory (native) or a GPA the nested tables do not map.
                    let page = self.outside_page();
                    Frame {
                        gpa: page,
                        hpa: page,
                    }
                } else if !self.frames.is_empty() && self.src.one_in(10) {
                    let pick = self.src.below(self.frames.len().min(256) as u32) as usize;
                    self.frames[pick]
                } else {
                    self.new_guest_frame()
                };
                let link = self.x86_table(next.gpa, level, false);
                self.set(at, link);
                table = next;
                continue;
            }
            if entry & 1 == 0 {
                break;
            }
            if level == 1 || (level <= 3 && entry & 0x80 != 0) {
                leaf = Some((level, entry & ADDR & !size_mask));
                break;
            }
            let linked = entry & ADDR;
            match self.frames.iter().find(|frame| frame.gpa == linked) {
                Some(frame) => table = *frame,
                None => break,
            }
        }
        // Map the final guest-physical page of this address.
        if let (Some((level, page)), false) = (leaf, matches!(self.nested, Nested::None)) {
            let size_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
            let gpa = page | (gva & size_mask & !0xfff);
            let hpa = self.src.below(1 << 8) << 20 | self.src.below(256) << 12;
            self.nested_map(gpa, hpa, true);
        }
        gva
    }
}

const MAXPHYADDRS: [u8; 6] = [36, 39, 40, 46, 48, 52];

impl Scenario {
    /// The scenario `data` describes.
    pub fn from_bytes(data: &[u8]) -> Scenario {
        Self::from_bytes_in(data, Vec::new())
    }

    /// [`from_bytes`](Self::from_bytes) with the scenario's memory built in `words` (cleared
    /// first), so that a caller decoding input after input reuses one allocation.
    pub fn from_bytes_in(data: &[u8], mut words: Vec<u64>) -> Scenario {
        // Room for every page, touched only as pages are written: no regrowth copies.
        words.clear();
        words.reserve((PAGES * 512) as usize);
        let mut src = Source::new(data);
        let mode = src.byte();
        let flags = src.byte();
        let guest = Guest {
            cr3: 0,
            la57: mode & 4 != 0,
            nxe: flags & 1 != 0,
            wp: flags & 2 != 0,
            smep: flags & 4 != 0,
            smap: flags & 8 != 0,
            ac: flags & 16 != 0,
            maxphyaddr: MAXPHYADDRS[src.below(6) as usize],
            page1gb: flags & 0x60 != 0x60,
        };
        let nested_flags = src.byte();
        let host_maxphyaddr = MAXPHYADDRS[src.below(6) as usize];
        let mut build = Build {
            src,
            words,
            next_page: 0,
            guest,
            nested: Nested::None,
            frames: Vec::new(),
            calm: 1,
        };
        build.calm = [1, 2, 4, 8][build.src.below(4) as usize];
        build.nested = match mode % 3 {
            0 => Nested::None,
            1 => Nested::Ept {
                root: build.host_page(),
                five_level: mode & 8 != 0,
                ad: nested_flags & 1 != 0,
                exec_only: nested_flags & 2 != 0,
                page1gb: nested_flags & 0xc != 0xc,
                maxphyaddr: host_maxphyaddr,
            },
            _ => Nested::Npt {
                root: build.host_page(),
                five_level: mode & 8 != 0,
                nxe: nested_flags & 0x30 != 0x30,
                page1gb: nested_flags & 0xc != 0xc,
                maxphyaddr: host_maxphyaddr,
            },
        };
        let root = build.new_guest_frame();
        // PCID bits and other low CR3 bits are not part of the address.
        build.guest.cr3 = root.gpa | build.src.below(4096);
        let paths = 1 + build.src.below(3);
        let mut addresses = Vec::new();
        for _ in 0..paths {
            addresses.push(build.guest_path(root));
        }
        let count = 1 + build.src.below(3);
        let mut accesses = Vec::new();
        for _ in 0..count {
            let gva = if build.src.one_in(12) {
                build.src.word()
            } else {
                let pick = build.src.below(addresses.len() as u32) as usize;
                let page_offset = build.src.below(256) * 16;
                (addresses[pick] & !0xfff) | page_offset
            };
            let kind = match build.src.below(3) {
                0 => Kind::Read,
                1 => Kind::Write,
                _ => Kind::Fetch,
            };
            let mode = match build.src.below(3) {
                0 => Mode::User,
                1 => Mode::Supervisor,
                _ => Mode::Implicit,
            };
            accesses.push(AccessSpec { gva, kind, mode });
        }
        // Memory ends after the last page handed out: the pages above were never linked, and
        // a smaller memory keeps each check cheap (the fuzz target copies and compares it).
        let mut words = build.words;
        words.resize((build.next_page.max(1) * 512) as usize, 0);
        Scenario {
            words,
            guest: build.guest,
            nested: build.nested,
            accesses,
        }
    }
}
