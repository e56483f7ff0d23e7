//! The differential property: for a scenario, three translations of every access must agree,
//! outcome and memory (accessed/dirty flags) alike:
//!
//! 1. the naive reference;
//! 2. the crate's walk: the native guest walker, or the two-dimensional nested walk;
//! 3. with nested paging, the composition "guest walker followed by the GPA map": the native
//!    guest walker run over guest-physical memory (every entry access a nested translation of
//!    its own), then a nested translation of the final address.
//!
//! Probes (no flag updates) must give the native walk's outcome and never write.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;

use super::naive::{self, Kind, Mode, Nested, Outcome};
use super::scenario::Scenario;
use crate::nested::{self, NestedFault, NestedFormat, NestedKind, Stage};
use crate::{
    Access, AccessKind, BufferMemory, Ept, EptCaps, MemoryError, Npt, PhysMemory, Privilege,
    WalkError, X86Format, X86Paging,
};

/// Decodes `data` into a scenario and checks it; `Err` describes the first disagreement.
pub fn check(data: &[u8]) -> Result<(), String> {
    check_reusing(data, &mut Scratch::default())
}

/// The memories one check works on, kept between checks by [`check_reusing`]: a fuzzer that
/// checks input after input then allocates (and page-faults in) none of them again.
pub struct Scratch {
    /// The scenario's memory, then the reference's.
    words: Vec<u64>,
    /// The crate walk's copy.
    walked: Vec<u64>,
    /// The composition's copy (nested paging only).
    composed: Vec<u64>,
    /// The copy the whole-table fast path walks.
    buffer: BufferMemory,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            words: Vec::new(),
            walked: Vec::new(),
            composed: Vec::new(),
            buffer: BufferMemory::from_words(&[]),
        }
    }
}

/// [`check`] with the memories of `scratch`, left in it for the next input; nothing of one input
/// reaches the next.
pub fn check_reusing(data: &[u8], scratch: &mut Scratch) -> Result<(), String> {
    let mut scenario = Scenario::from_bytes_in(data, core::mem::take(&mut scratch.words));
    let mut reference = naive::Memory {
        words: core::mem::take(&mut scenario.words),
    };
    let result = check_with(&scenario, &mut reference, scratch);
    scratch.words = reference.words;
    result
}

/// The crate's view of a scenario's nested paging.
enum Host {
    None,
    Ept(Ept),
    Npt(Npt),
}

fn guest_paging(scenario: &Scenario) -> X86Paging {
    let g = &scenario.guest;
    X86Paging {
        format: X86Format {
            five_level: g.la57,
            nxe: g.nxe,
            max_phys_bits: g.maxphyaddr,
            gbpages: g.page1gb,
        },
        cr3: g.cr3,
        wp: g.wp,
        smep: g.smep,
        smap: g.smap,
        ac: g.ac,
    }
}

fn host_paging(scenario: &Scenario) -> Host {
    match scenario.nested {
        Nested::None => Host::None,
        Nested::Ept {
            root,
            five_level,
            ad,
            exec_only,
            page1gb,
            maxphyaddr,
        } => Host::Ept(Ept {
            root,
            five_level,
            accessed_dirty: ad,
            caps: EptCaps {
                execute_only: exec_only,
                five_level: true,
                gbpages: page1gb,
                accessed_dirty: true,
                max_phys_bits: maxphyaddr,
            },
        }),
        Nested::Npt {
            root,
            five_level,
            nxe,
            page1gb,
            maxphyaddr,
        } => Host::Npt(Npt {
            ncr3: root,
            five_level,
            nxe,
            max_phys_bits: maxphyaddr,
            gbpages: page1gb,
        }),
    }
}

fn access_of(kind: Kind, mode: Mode) -> Access {
    let kind = match kind {
        Kind::Read => AccessKind::Read,
        Kind::Write => AccessKind::Write,
        Kind::Fetch => AccessKind::Fetch,
    };
    let privilege = match mode {
        Mode::User => Privilege::User,
        Mode::Supervisor => Privilege::Supervisor,
        Mode::Implicit => Privilege::Implicit,
    };
    Access::new(kind, privilege)
}

fn error_outcome(err: WalkError) -> Outcome {
    match err {
        WalkError::PageFault(fault) => Outcome::PageFault {
            error_code: fault.error_code,
            cr2: fault.address,
        },
        WalkError::NonCanonical(addr) => Outcome::NonCanonical { addr },
        WalkError::Nested(fault) => Outcome::NestedFault {
            gpa: fault.gpa,
            info: fault.info,
            misconfig: fault.is_ept_misconfig(),
        },
        WalkError::Memory(err) => Outcome::Memory {
            addr: err.address(),
        },
        WalkError::Contended => Outcome::Contended,
    }
}

/// Memory as plain words from address 0, shared through cells: fast to copy and compare.
struct CellMemory<'a>(&'a [Cell<u64>]);

impl CellMemory<'_> {
    fn cell(&self, addr: u64) -> Result<&Cell<u64>, MemoryError> {
        if !addr.is_multiple_of(8) {
            return Err(MemoryError::Misaligned(addr));
        }
        usize::try_from(addr / 8)
            .ok()
            .and_then(|i| self.0.get(i))
            .ok_or(MemoryError::OutOfRange(addr))
    }
}

impl PhysMemory for CellMemory<'_> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        Ok(self.cell(addr)?.get())
    }

    fn write_u64(&self, addr: u64, value: u64) -> Result<(), MemoryError> {
        self.cell(addr)?.set(value);
        Ok(())
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        let cell = self.cell(addr)?;
        let value = cell.get();
        if value != current {
            return Ok(Err(value));
        }
        cell.set(new);
        Ok(Ok(value))
    }
}

fn without_refs(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Translated {
            gpa,
            hpa,
            guest_level,
            ..
        } => Outcome::Translated {
            gpa,
            hpa,
            guest_level,
            refs: 0,
        },
        other => other,
    }
}

/// Memory that records any attempt to write it.
struct ReadOnly<'a, M> {
    mem: &'a M,
    wrote: Cell<bool>,
}

impl<M: PhysMemory> PhysMemory for ReadOnly<'_, M> {
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        self.mem.read_u64(addr)
    }

    fn write_u64(&self, addr: u64, _value: u64) -> Result<(), MemoryError> {
        self.wrote.set(true);
        self.mem.read_u64(addr).map(|_| ())
    }

    fn compare_exchange_u64(
        &self,
        addr: u64,
        current: u64,
        _new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        self.wrote.set(true);
        let value = self.mem.read_u64(addr)?;
        Ok(if value == current {
            Ok(value)
        } else {
            Err(value)
        })
    }
}

/// The crate's walk: native, or two-dimensional.
fn crate_walk<M: PhysMemory>(
    guest: &X86Paging,
    host: &Host,
    mem: &M,
    gva: u64,
    access: Access,
    update: bool,
) -> Outcome {
    let native = |result: Result<crate::Translation, WalkError>| match result {
        Ok(t) => Outcome::Translated {
            gpa: t.address,
            hpa: t.address,
            guest_level: t.page_size.level(),
            refs: t.refs,
        },
        Err(err) => error_outcome(err),
    };
    let two_d = |result: Result<crate::NestedTranslation, WalkError>| match result {
        Ok(t) => Outcome::Translated {
            gpa: t.gpa,
            hpa: t.hpa,
            guest_level: t.guest.page_size.level(),
            refs: t.refs,
        },
        Err(err) => error_outcome(err),
    };
    match (host, update) {
        (Host::None, true) => native(guest.translate(mem, gva, access)),
        (Host::None, false) => native(guest.probe(mem, gva, access)),
        (Host::Ept(ept), true) => two_d(nested::translate(guest, ept, mem, gva, access)),
        (Host::Ept(ept), false) => two_d(nested::probe(guest, ept, mem, gva, access)),
        (Host::Npt(npt), true) => two_d(nested::translate(guest, npt, mem, gva, access)),
        (Host::Npt(npt), false) => two_d(nested::probe(guest, npt, mem, gva, access)),
    }
}

/// Guest-physical memory seen through nested tables: each access is a nested translation.
/// A failed translation is kept aside and reported to the walker as an access outside memory.
struct GpaView<'a, N> {
    nested: &'a N,
    mem: &'a CellMemory<'a>,
    failure: Cell<Option<WalkError>>,
}

impl<N: NestedFormat> GpaView<'_, N> {
    fn host(&self, gpa: u64, kind: AccessKind) -> Result<u64, MemoryError> {
        match nested::translate_gpa(self.nested, self.mem, gpa, kind) {
            Ok(t) => Ok(t.address),
            Err(err) => {
                self.failure.set(Some(err));
                Err(MemoryError::OutOfRange(gpa))
            }
        }
    }
}

impl<N: NestedFormat> PhysMemory for GpaView<'_, N> {
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let hpa = self.host(gpa, self.nested.guest_table_access())?;
        self.mem.read_u64(hpa)
    }

    fn write_u64(&self, gpa: u64, value: u64) -> Result<(), MemoryError> {
        let hpa = self.host(gpa, AccessKind::Write)?;
        self.mem.write_u64(hpa, value)
    }

    fn compare_exchange_u64(
        &self,
        gpa: u64,
        current: u64,
        new: u64,
    ) -> Result<Result<u64, u64>, MemoryError> {
        let hpa = self.host(gpa, AccessKind::Write)?;
        self.mem.compare_exchange_u64(hpa, current, new)
    }
}

/// The stage bits a fault from a direct translation gets when it serves `stage`.
fn at_stage(fault: NestedFault, stage: Stage) -> Outcome {
    let stage_bits = match (fault.kind, stage) {
        (NestedKind::Ept, _) if fault.is_ept_misconfig() => 0,
        (NestedKind::Ept, Stage::GuestTable { .. }) => 1 << 7,
        (NestedKind::Ept, Stage::Final) => (1 << 7) | (1 << 8),
        (NestedKind::Npt, Stage::GuestTable { .. }) => 1 << 33,
        (NestedKind::Npt, Stage::Final) => 1 << 32,
        (_, Stage::Direct) => 0,
    };
    Outcome::NestedFault {
        gpa: fault.gpa,
        info: fault.info | stage_bits,
        misconfig: fault.is_ept_misconfig(),
    }
}

/// The guest walker over [`GpaView`], then the nested translation of the final address.
fn composition<N: NestedFormat>(
    guest: &X86Paging,
    nested: &N,
    mem: &CellMemory<'_>,
    gva: u64,
    access: Access,
) -> Outcome {
    let view = GpaView {
        nested,
        mem,
        failure: Cell::new(None),
    };
    let gpa = match guest.translate(&view, gva, access) {
        Ok(t) => t,
        Err(WalkError::Memory(err)) => {
            return match view.failure.take() {
                Some(WalkError::Nested(fault)) => at_stage(fault, Stage::GuestTable { level: 0 }),
                Some(other) => error_outcome(other),
                None => error_outcome(WalkError::Memory(err)),
            };
        }
        Err(err) => return error_outcome(err),
    };
    match nested::translate_gpa(nested, mem, gpa.address, access.kind) {
        Ok(t) => Outcome::Translated {
            gpa: gpa.address,
            hpa: t.address,
            guest_level: gpa.page_size.level(),
            refs: 0,
        },
        Err(WalkError::Nested(fault)) => at_stage(fault, Stage::Final),
        Err(err) => error_outcome(err),
    }
}

/// Checks one scenario; `Err` describes the first disagreement.
pub fn check_scenario(scenario: &Scenario) -> Result<(), String> {
    let mut reference = naive::Memory {
        words: scenario.words.clone(),
    };
    check_with(scenario, &mut reference, &mut Scratch::default())
}

/// [`check_scenario`] with the scenario's memory given apart as `reference` (`scenario.words` is
/// not used), and the other memories built in `scratch`.
fn check_with(
    scenario: &Scenario,
    reference: &mut naive::Memory,
    scratch: &mut Scratch,
) -> Result<(), String> {
    let guest = guest_paging(scenario);
    let host = host_paging(scenario);
    let walked_words = &mut scratch.walked;
    walked_words.clear();
    walked_words.extend_from_slice(&reference.words);
    // The composition runs only with nested paging.
    let composed_words = &mut scratch.composed;
    composed_words.clear();
    if !matches!(host, Host::None) {
        composed_words.extend_from_slice(&reference.words);
    }
    let walked = CellMemory(Cell::from_mut(walked_words.as_mut_slice()).as_slice_of_cells());
    let composed = CellMemory(Cell::from_mut(composed_words.as_mut_slice()).as_slice_of_cells());
    // The same memory as a `BufferMemory`, whose walks take the whole-table fast path
    // (`PhysMemory::table`), when it can have exactly the same extent.
    let buffered = reference.words.len().is_multiple_of(512).then(|| {
        scratch.buffer.load_words(&reference.words);
        &scratch.buffer
    });
    for (step, spec) in scenario.accesses.iter().enumerate() {
        let access = access_of(spec.kind, spec.mode);
        let expected = naive::translate(
            reference,
            &scenario.guest,
            &scenario.nested,
            spec.gva,
            spec.kind,
            spec.mode,
        );

        let read_only = ReadOnly {
            mem: &walked,
            wrote: Cell::new(false),
        };
        let probed = crate_walk(&guest, &host, &read_only, spec.gva, access, false);
        if read_only.wrote.get() {
            return Err(format!("step {step}: probe of {spec:?} wrote memory"));
        }
        let got = crate_walk(&guest, &host, &walked, spec.gva, access, true);
        if let Some(buffer) = &buffered {
            let fast_probe = crate_walk(&guest, &host, buffer, spec.gva, access, false);
            let fast = crate_walk(&guest, &host, buffer, spec.gva, access, true);
            if fast_probe != probed || fast != got {
                return Err(format!(
                    "step {step}: {spec:?}\n  buffer probe: {fast_probe:?}\n  probe: {probed:?}\n  \
                     buffer walk: {fast:?}\n  walk: {got:?}"
                ));
            }
        }
        if got != expected {
            return Err(format!(
                "step {step}: {spec:?}\n  crate walk: {got:?}\n  reference:  {expected:?}"
            ));
        }
        if matches!(host, Host::None)
            && got != Outcome::Contended
            && without_refs(probed) != without_refs(got)
        {
            return Err(format!(
                "step {step}: {spec:?}\n  probe: {probed:?}\n  walk:  {got:?}"
            ));
        }

        let composed_outcome = match &host {
            Host::None => None,
            Host::Ept(ept) => Some(composition(&guest, ept, &composed, spec.gva, access)),
            Host::Npt(npt) => Some(composition(&guest, npt, &composed, spec.gva, access)),
        };
        if let Some(outcome) = composed_outcome
            && outcome != without_refs(expected)
        {
            return Err(format!(
                "step {step}: {spec:?}\n  composition: {outcome:?}\n  reference:   {expected:?}"
            ));
        }
    }
    let walked_words: &[u64] = walked_words;
    if let Some(buffer) = buffered
        && !buffer.holds_words(walked_words)
    {
        return Err(first_difference(
            "buffer walk",
            &buffer.words(),
            walked_words,
        ));
    }
    if walked_words != reference.words {
        return Err(first_difference(
            "crate walk",
            walked_words,
            &reference.words,
        ));
    }
    if !matches!(host, Host::None) && *composed_words != reference.words {
        return Err(first_difference(
            "composition",
            composed_words,
            &reference.words,
        ));
    }
    Ok(())
}

fn first_difference(what: &str, got: &[u64], expected: &[u64]) -> String {
    let at = got
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    format!(
        "{what} memory differs at {:#x}: {:#x}, reference {:#x}",
        at * 8,
        got.get(at).copied().unwrap_or(0),
        expected.get(at).copied().unwrap_or(0)
    )
}
