//! The naive reference: x86-64 paging, EPT and NPT written out level by level from the SDM and
//! the APM, with plain bit arithmetic. It shares no code with the crate's formats or walker (not
//! even the bit constants) so that the differential tests compare two independent readings of
//! the manuals.

use alloc::vec::Vec;

/// How many times a translation restarts when an entry changed between its read and its
/// accessed/dirty update (written out again here on purpose; the crate's value must match).
pub const RETRIES: u32 = 8;

/// Physical memory as plain words from address 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    /// Word `i` holds bytes `8 * i .. 8 * i + 8`.
    pub words: Vec<u64>,
}

impl Memory {
    fn read(&self, addr: u64) -> Result<u64, Outcome> {
        usize::try_from(addr / 8)
            .ok()
            .and_then(|i| self.words.get(i))
            .copied()
            .ok_or(Outcome::Memory { addr })
    }

    fn write(&mut self, addr: u64, value: u64) -> Result<(), Outcome> {
        let slot = usize::try_from(addr / 8)
            .ok()
            .and_then(|i| self.words.get_mut(i))
            .ok_or(Outcome::Memory { addr })?;
        *slot = value;
        Ok(())
    }
}

/// Read, write or fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Fetch,
}

/// The privilege of an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// CPL 3.
    User,
    /// CPL < 3, explicit.
    Supervisor,
    /// Implicit supervisor access.
    Implicit,
}

/// The guest's paging controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest {
    /// CR3.
    pub cr3: u64,
    /// CR4.LA57.
    pub la57: bool,
    /// EFER.NXE.
    pub nxe: bool,
    /// CR0.WP.
    pub wp: bool,
    /// CR4.SMEP.
    pub smep: bool,
    /// CR4.SMAP.
    pub smap: bool,
    /// RFLAGS.AC.
    pub ac: bool,
    /// MAXPHYADDR.
    pub maxphyaddr: u8,
    /// CPUID.80000001H:EDX.Page1GB.
    pub page1gb: bool,
}

/// The nested paging in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nested {
    /// No nested paging: guest-physical is host-physical.
    None,
    /// Intel EPT.
    Ept {
        /// The EPT PML4/PML5 address.
        root: u64,
        /// 5-level walk.
        five_level: bool,
        /// EPTP bit 6.
        ad: bool,
        /// Execute-only supported.
        exec_only: bool,
        /// 1 GiB pages supported.
        page1gb: bool,
        /// Host MAXPHYADDR.
        maxphyaddr: u8,
    },
    /// AMD NPT.
    Npt {
        /// nCR3.
        root: u64,
        /// 5-level nested tables.
        five_level: bool,
        /// Host EFER.NXE.
        nxe: bool,
        /// 1 GiB pages supported.
        page1gb: bool,
        /// Host MAXPHYADDR.
        maxphyaddr: u8,
    },
}

/// The result of one translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Translated {
        /// The guest-physical address.
        gpa: u64,
        /// The host-physical address (= gpa without nested paging).
        hpa: u64,
        /// The level of the guest leaf entry (1, 2 or 3).
        guest_level: u8,
        /// Entries read.
        refs: u32,
    },
    /// Guest #PF.
    PageFault {
        /// Error code.
        error_code: u32,
        /// CR2.
        cr2: u64,
    },
    /// Guest #GP for a non-canonical address.
    NonCanonical {
        /// The address.
        addr: u64,
    },
    /// EPT violation or misconfiguration, or #VMEXIT(NPF).
    NestedFault {
        /// The guest-physical address.
        gpa: u64,
        /// Exit qualification (EPT violation), 0 (EPT misconfiguration) or EXITINFO1 (NPF).
        info: u64,
        /// EPT misconfiguration.
        misconfig: bool,
    },
    /// An access outside memory.
    Memory {
        /// The host-physical address.
        addr: u64,
    },
    /// Too many restarts.
    Contended,
}

fn bit(value: u64, n: u32) -> bool {
    (value >> n) & 1 == 1
}

fn any_bit(value: u64, from: u32, to: u32) -> bool {
    (from..=to).any(|n| bit(value, n))
}

/// Bits 51:12 of an entry.
fn frame(entry: u64) -> u64 {
    entry & 0x000f_ffff_ffff_f000
}

fn index(addr: u64, level: u32) -> u64 {
    (addr >> (12 + 9 * (level - 1))) & 511
}

/// Why a nested access happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    GuestTable,
    Final,
}

struct Machine<'a> {
    mem: &'a mut Memory,
    refs: u32,
}

impl Machine<'_> {
    fn nested(&mut self, nested: &Nested, gpa: u64, kind: Kind, why: Why) -> Result<u64, Outcome> {
        match *nested {
            Nested::None => Ok(gpa),
            Nested::Ept {
                root,
                five_level,
                ad,
                exec_only,
                page1gb,
                maxphyaddr,
            } => self.ept(
                root, five_level, ad, exec_only, page1gb, maxphyaddr, gpa, kind, why,
            ),
            Nested::Npt {
                root,
                five_level,
                nxe,
                page1gb,
                maxphyaddr,
            } => self.npt(root, five_level, nxe, page1gb, maxphyaddr, gpa, kind, why),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ept(
        &mut self,
        root: u64,
        five_level: bool,
        ad: bool,
        exec_only: bool,
        page1gb: bool,
        maxphyaddr: u8,
        gpa: u64,
        kind: Kind,
        why: Why,
    ) -> Result<u64, Outcome> {
        let levels: u32 = if five_level { 5 } else { 4 };
        let violation = |r: bool, w: bool, x: bool| {
            let mut info = match kind {
                Kind::Read => 1,
                Kind::Write => 2,
                Kind::Fetch => 4,
            };
            if r {
                info |= 8;
            }
            if w {
                info |= 16;
            }
            if x {
                info |= 32;
            }
            info |= 1 << 7;
            if why == Why::Final {
                info |= 1 << 8;
            }
            Outcome::NestedFault {
                gpa,
                info,
                misconfig: false,
            }
        };
        let misconfig = Outcome::NestedFault {
            gpa,
            info: 0,
            misconfig: true,
        };
        'attempt: for _ in 0..=RETRIES {
            if gpa >> (12 + 9 * levels) != 0 {
                return Err(violation(false, false, false));
            }
            let mut table = root & 0x000f_ffff_ffff_f000;
            let (mut r, mut w, mut x) = (true, true, true);
            let mut used: Vec<(u64, u64)> = Vec::new();
            let mut level = levels;
            let output = loop {
                let at = table + index(gpa, level) * 8;
                let entry = self.mem.read(at)?;
                self.refs += 1;
                used.push((at, entry));
                r &= bit(entry, 0);
                w &= bit(entry, 1);
                x &= bit(entry, 2);
                if !bit(entry, 0) && !bit(entry, 1) && !bit(entry, 2) {
                    return Err(violation(r, w, x));
                }
                if bit(entry, 1) && !bit(entry, 0) {
                    return Err(misconfig);
                }
                if bit(entry, 2) && !bit(entry, 1) && !bit(entry, 0) && !exec_only {
                    return Err(misconfig);
                }
                if maxphyaddr < 52 && any_bit(entry, u32::from(maxphyaddr), 51) {
                    return Err(misconfig);
                }
                if level >= 4 {
                    if any_bit(entry, 3, 7) {
                        return Err(misconfig);
                    }
                    table = frame(entry);
                    level -= 1;
                    continue;
                }
                if level == 1 || bit(entry, 7) {
                    if level == 3 && !page1gb {
                        return Err(misconfig);
                    }
                    if level == 3 && any_bit(entry, 12, 29) {
                        return Err(misconfig);
                    }
                    if level == 2 && any_bit(entry, 12, 20) {
                        return Err(misconfig);
                    }
                    let memory_type = (entry >> 3) & 7;
                    if memory_type == 2 || memory_type == 3 || memory_type == 7 {
                        return Err(misconfig);
                    }
                    let page_bits = 12 + 9 * (level - 1);
                    let offset_mask = (1u64 << page_bits) - 1;
                    break (frame(entry) & !offset_mask) | (gpa & offset_mask);
                }
                if any_bit(entry, 3, 6) {
                    return Err(misconfig);
                }
                table = frame(entry);
                level -= 1;
            };
            let allowed = match kind {
                Kind::Read => r,
                Kind::Write => w,
                Kind::Fetch => x,
            };
            if !allowed {
                return Err(violation(r, w, x));
            }
            if ad {
                let last = used.len() - 1;
                for (i, &(at, entry)) in used.iter().enumerate() {
                    let mut wanted = entry | (1 << 8);
                    if i == last && kind == Kind::Write {
                        wanted |= 1 << 9;
                    }
                    if wanted != entry {
                        if self.mem.read(at)? != entry {
                            continue 'attempt;
                        }
                        self.mem.write(at, wanted)?;
                    }
                }
            }
            return Ok(output);
        }
        Err(Outcome::Contended)
    }

    #[allow(clippy::too_many_arguments)]
    fn npt(
        &mut self,
        root: u64,
        five_level: bool,
        nxe: bool,
        page1gb: bool,
        maxphyaddr: u8,
        gpa: u64,
        kind: Kind,
        why: Why,
    ) -> Result<u64, Outcome> {
        let levels: u32 = if five_level { 5 } else { 4 };
        // EXITINFO1: the error code of a user access, plus bit 32 or 33.
        let fault = |present: bool, reserved: bool| {
            let mut info = 4;
            if present {
                info |= 1;
            }
            if kind == Kind::Write {
                info |= 2;
            }
            if reserved {
                info |= 8;
            }
            if kind == Kind::Fetch && nxe {
                info |= 16;
            }
            info |= match why {
                Why::Final => 1 << 32,
                Why::GuestTable => 1 << 33,
            };
            Outcome::NestedFault {
                gpa,
                info,
                misconfig: false,
            }
        };
        'attempt: for _ in 0..=RETRIES {
            if gpa >> (12 + 9 * levels) != 0 {
                return Err(fault(false, false));
            }
            let mut table = root & ((1u64 << maxphyaddr) - 1) & !0xfff;
            let (mut user, mut writable, mut no_exec) = (true, true, false);
            let mut used: Vec<(u64, u64)> = Vec::new();
            let mut level = levels;
            let output = loop {
                let at = table + index(gpa, level) * 8;
                let entry = self.mem.read(at)?;
                self.refs += 1;
                used.push((at, entry));
                if !bit(entry, 0) {
                    return Err(fault(false, false));
                }
                let mut reserved = maxphyaddr < 52 && any_bit(entry, u32::from(maxphyaddr), 51);
                reserved |= !nxe && bit(entry, 63);
                let large = bit(entry, 7);
                if level >= 4 {
                    reserved |= large;
                } else if level == 3 && large {
                    reserved |= !page1gb || any_bit(entry, 13, 29);
                } else if level == 2 && large {
                    reserved |= any_bit(entry, 13, 20);
                }
                if reserved {
                    return Err(fault(true, true));
                }
                user &= bit(entry, 2);
                writable &= bit(entry, 1);
                no_exec |= bit(entry, 63);
                if level == 1 || (level <= 3 && large) {
                    let page_bits = 12 + 9 * (level - 1);
                    let offset_mask = (1u64 << page_bits) - 1;
                    break (frame(entry) & !offset_mask) | (gpa & offset_mask);
                }
                table = frame(entry);
                level -= 1;
            };
            let allowed = user
                && match kind {
                    Kind::Read => true,
                    Kind::Write => writable,
                    Kind::Fetch => !no_exec,
                };
            if !allowed {
                return Err(fault(true, false));
            }
            let last = used.len() - 1;
            for (i, &(at, entry)) in used.iter().enumerate() {
                let mut wanted = entry | (1 << 5);
                if i == last && kind == Kind::Write {
                    wanted |= 1 << 6;
                }
                if wanted != entry {
                    if self.mem.read(at)? != entry {
                        continue 'attempt;
                    }
                    self.mem.write(at, wanted)?;
                }
            }
            return Ok(output);
        }
        Err(Outcome::Contended)
    }
}

/// Translates `gva` for an access of `kind` with `mode`, with `guest` paging on top of `nested`
/// paging, updating `mem` as the processor would.
pub fn translate(
    mem: &mut Memory,
    guest: &Guest,
    nested: &Nested,
    gva: u64,
    kind: Kind,
    mode: Mode,
) -> Outcome {
    let mut machine = Machine { mem, refs: 0 };
    match translate_in(&mut machine, guest, nested, gva, kind, mode) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

fn translate_in(
    machine: &mut Machine<'_>,
    guest: &Guest,
    nested: &Nested,
    gva: u64,
    kind: Kind,
    mode: Mode,
) -> Result<Outcome, Outcome> {
    let levels: u32 = if guest.la57 { 5 } else { 4 };
    let high = if guest.la57 { gva >> 56 } else { gva >> 47 };
    let all_ones = if guest.la57 { 0xff } else { 0x1_ffff };
    if high != 0 && high != all_ones {
        return Err(Outcome::NonCanonical { addr: gva });
    }
    let table_kind = match nested {
        Nested::Ept { ad: false, .. } => Kind::Read,
        _ => Kind::Write,
    };
    // The error code of a page fault.
    let page_fault = |present: bool, reserved: bool| {
        let mut error_code = 0;
        if present {
            error_code |= 1;
        }
        if kind == Kind::Write {
            error_code |= 2;
        }
        if mode == Mode::User {
            error_code |= 4;
        }
        if reserved {
            error_code |= 8;
        }
        if kind == Kind::Fetch && (guest.nxe || guest.smep) {
            error_code |= 16;
        }
        Outcome::PageFault {
            error_code,
            cr2: gva,
        }
    };
    let mut translated = None;
    'attempt: for _ in 0..=RETRIES {
        let mut table = guest.cr3 & ((1u64 << guest.maxphyaddr) - 1) & !0xfff;
        let (mut user, mut writable, mut no_exec) = (true, true, false);
        let mut used: Vec<(u64, u64)> = Vec::new();
        let mut level = levels;
        let gpa = loop {
            let at = table + index(gva, level) * 8;
            let host = machine.nested(nested, at, table_kind, Why::GuestTable)?;
            let entry = machine.mem.read(host)?;
            machine.refs += 1;
            used.push((at, entry));
            if !bit(entry, 0) {
                return Err(page_fault(false, false));
            }
            let mut reserved =
                guest.maxphyaddr < 52 && any_bit(entry, u32::from(guest.maxphyaddr), 51);
            reserved |= !guest.nxe && bit(entry, 63);
            let large = bit(entry, 7);
            if level >= 4 {
                reserved |= large;
            } else if level == 3 && large {
                reserved |= !guest.page1gb || any_bit(entry, 13, 29);
            } else if level == 2 && large {
                reserved |= any_bit(entry, 13, 20);
            }
            if reserved {
                return Err(page_fault(true, true));
            }
            user &= bit(entry, 2);
            writable &= bit(entry, 1);
            no_exec |= guest.nxe && bit(entry, 63);
            if level == 1 || (level <= 3 && large) {
                let page_bits = 12 + 9 * (level - 1);
                let offset_mask = (1u64 << page_bits) - 1;
                break (frame(entry) & !offset_mask) | (gva & offset_mask);
            }
            table = frame(entry);
            level -= 1;
        };
        // SDM Vol. 3A, 4.6.1.
        let smap_allows = !(user && guest.smap) || (mode == Mode::Supervisor && guest.ac);
        let allowed = match (mode, kind) {
            (Mode::User, Kind::Read) => user,
            (Mode::User, Kind::Write) => user && writable,
            (Mode::User, Kind::Fetch) => user && !no_exec,
            (_, Kind::Fetch) => !(no_exec || (user && guest.smep)),
            (_, Kind::Read) => smap_allows,
            (_, Kind::Write) => smap_allows && (writable || !guest.wp),
        };
        if !allowed {
            return Err(page_fault(true, false));
        }
        let last = used.len() - 1;
        for (i, &(at, entry)) in used.iter().enumerate() {
            let mut wanted = entry | (1 << 5);
            if i == last && kind == Kind::Write {
                wanted |= 1 << 6;
            }
            if wanted != entry {
                let host = machine.nested(nested, at, Kind::Write, Why::GuestTable)?;
                if machine.mem.read(host)? != entry {
                    continue 'attempt;
                }
                machine.mem.write(host, wanted)?;
            }
        }
        translated = Some((gpa, level));
        break;
    }
    let (gpa, guest_level) = translated.ok_or(Outcome::Contended)?;
    let hpa = machine.nested(nested, gpa, kind, Why::Final)?;
    Ok(Outcome::Translated {
        gpa,
        hpa,
        guest_level: guest_level as u8,
        refs: machine.refs,
    })
}
