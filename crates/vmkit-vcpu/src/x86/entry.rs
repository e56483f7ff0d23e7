//! Register state at the entry point of each boot protocol.
//!
//! Segment registers are set in their hidden (descriptor-cache) form, decoded from the same GDT
//! entries that are written to guest memory, so what the CPU holds and what the guest finds when
//! it reloads a selector agree. Selectors follow the Linux boot protocol: code at `0x10`
//! (`__BOOT_CS`), data at `0x18` (`__BOOT_DS`), the TSS at `0x20`.

use vm_memory::GuestAddress;
use vmkit_exits::state::{DescriptorTable, Registers, Segment, SpecialRegisters};

use vmkit_paging::x86::{CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, RFLAGS_RESERVED};
/// The highest physical address bit x86-64 allows (`MAXPHYADDR` ≤ 52).
const MAX_PHYS_ADDR: u64 = 1 << 52;

/// Selector of the boot code segment (`__BOOT_CS`).
pub const SELECTOR_CODE: u16 = 0x10;
/// Selector of the boot data segment (`__BOOT_DS`).
pub const SELECTOR_DATA: u16 = 0x18;
/// Selector of the boot TSS.
pub const SELECTOR_TSS: u16 = 0x20;

/// Encodes a segment descriptor: `flags` holds the access byte in bits 0..=7 and AVL, L, D/B, G
/// in bits 12..=15; `limit` is the raw 20-bit limit (in 4 KiB units when G is set).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Decodes GDT entry number `index` into the hidden form of a segment register loaded with it.
pub fn segment_from_gdt_entry(entry: u64, index: u16) -> Segment {
    let bit = |n: u32| (entry >> n) & 1 == 1;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    Segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index.wrapping_mul(8),
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 0x3) as u8,
        present: bit(47),
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: !bit(47),
    }
}

/// 64-bit code: present, DPL 0, execute/read, accessed, L, G.
const CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
/// 32-bit code: present, DPL 0, execute/read, accessed, D, G.
const CODE32: u64 = gdt_entry(0xc09b, 0, 0xfffff);
/// Flat data: present, DPL 0, read/write, accessed, B, G.
const DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
/// A busy TSS of 104 bytes at address 0.
const TSS: u64 = gdt_entry(0x008b, 0, 0x67);

/// The GDT of the 64-bit entry, written to guest memory: two null entries, `__BOOT_CS`,
/// `__BOOT_DS` and the 16-byte TSS descriptor (whose upper half is zero for a base below 4 GiB).
pub const LONG_MODE_GDT: [u64; 6] = [0, 0, CODE64, DATA, TSS, 0];

/// Size in bytes of [`LONG_MODE_GDT`] in guest memory.
pub const LONG_MODE_GDT_SIZE: u64 = LONG_MODE_GDT.len() as u64 * 8;

/// What is wrong with an entry state's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, displaydoc::Display, thiserror::Error)]
#[ignore_extra_doc_attributes]
pub enum EntryError {
    /// the page-table address {0:#x} is not a 4 KiB-aligned physical address
    PageTable(u64),
    /// the GDT at {0:#x} does not fit below the top of the physical address space
    Gdt(u64),
}

/// The 64-bit entry state of the Linux boot protocol.
///
/// Paging is on with the caller's page tables (which must identity-map the entry code, the boot
/// parameters, the GDT and the stack), `CS = __BOOT_CS` is 64-bit, `DS = ES = SS = __BOOT_DS`,
/// interrupts are off and `RSI` holds the boot parameters' address. The backend writes
/// [`LONG_MODE_GDT`] to guest memory at [`gdt`](Self::gdt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongModeEntry {
    /// Entry point (RIP; the page tables identity-map it).
    pub entry: GuestAddress,
    /// Guest-physical address of the top-level (PML4) page table (CR3), 4 KiB aligned.
    pub page_table: GuestAddress,
    /// Guest-physical address where the boot GDT ([`LONG_MODE_GDT_SIZE`] bytes) is written.
    pub gdt: GuestAddress,
    /// Address of the boot parameters (the zero page), passed in RSI.
    pub boot_params: GuestAddress,
    /// Initial stack pointer (RSP); the protocol does not require one, 0 leaves it unset.
    pub stack_pointer: GuestAddress,
}

impl LongModeEntry {
    /// Checks that CR3 can hold the page-table address and that the GDT fits.
    pub fn validate(&self) -> Result<(), EntryError> {
        let page_table = self.page_table.0;
        if !page_table.is_multiple_of(0x1000) || page_table >= MAX_PHYS_ADDR {
            return Err(EntryError::PageTable(page_table));
        }
        match self.gdt.0.checked_add(LONG_MODE_GDT_SIZE) {
            Some(end) if end <= MAX_PHYS_ADDR => Ok(()),
            _ => Err(EntryError::Gdt(self.gdt.0)),
        }
    }
}

fn flat_segments(sregs: &mut SpecialRegisters, code: u64) {
    let data = segment_from_gdt_entry(DATA, SELECTOR_DATA / 8);
    sregs.cs = segment_from_gdt_entry(code, SELECTOR_CODE / 8);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt_entry(TSS, SELECTOR_TSS / 8);
}

/// General-purpose registers at a PVH entry: `EIP = entry`, `EBX = start_info`, `EFLAGS = 0x2`,
/// everything else zero.
pub fn pvh_registers(entry: GuestAddress, start_info: GuestAddress) -> Registers {
    Registers {
        rip: entry.0,
        rbx: start_info.0,
        rflags: RFLAGS_RESERVED,
        ..Registers::default()
    }
}

/// Special registers at a PVH entry, starting from `current` (APIC base and LDT are kept):
/// 32-bit protected mode with paging off, flat 4 GiB code and data segments, `CR0 = PE | ET`,
/// CR3, CR4 and EFER zero, no GDT or IDT loaded (the kernel loads its own before it reloads a
/// selector).
pub fn pvh_special_registers(current: &SpecialRegisters) -> SpecialRegisters {
    let mut sregs = *current;
    flat_segments(&mut sregs, CODE32);
    sregs.gdt = DescriptorTable::default();
    sregs.idt = DescriptorTable::default();
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.cr8 = 0;
    sregs.efer = 0;
    sregs
}

/// General-purpose registers at the 64-bit Linux entry: `RIP = entry`, `RSI = boot_params`,
/// `RSP = stack_pointer`, `RFLAGS = 0x2` (interrupts off).
pub fn long_mode_registers(entry: &LongModeEntry) -> Registers {
    Registers {
        rip: entry.entry.0,
        rsi: entry.boot_params.0,
        rsp: entry.stack_pointer.0,
        rflags: RFLAGS_RESERVED,
        ..Registers::default()
    }
}

/// Special registers at the 64-bit Linux entry, starting from `current` (APIC base and LDT are
/// kept): long mode active, paging on with `CR3 = page_table`, GDTR on [`LONG_MODE_GDT`] at
/// `entry.gdt`, no IDT loaded.
pub fn long_mode_special_registers(
    current: &SpecialRegisters,
    entry: &LongModeEntry,
) -> SpecialRegisters {
    let mut sregs = *current;
    flat_segments(&mut sregs, CODE64);
    sregs.gdt = DescriptorTable {
        base: entry.gdt.0,
        limit: (LONG_MODE_GDT_SIZE - 1) as u16,
    };
    sregs.idt = DescriptorTable::default();
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr2 = 0;
    sregs.cr3 = entry.page_table.0;
    sregs.cr4 = CR4_PAE;
    sregs.cr8 = 0;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_like_the_architecture_says() {
        // The well-known flat descriptors.
        assert_eq!(CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(CODE32, 0x00cf_9b00_0000_ffff);
        assert_eq!(DATA, 0x00cf_9300_0000_ffff);
        assert_eq!(TSS, 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x0093, 0x1234_5678, 0xa_bcde),
            0x120a_9334_5678_bcde
        );
    }

    #[test]
    fn decoding_scales_the_limit_and_reads_every_flag() {
        let code = segment_from_gdt_entry(CODE64, 2);
        assert_eq!(code.selector, 0x10);
        assert_eq!(code.base, 0);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.type_, 0xb);
        assert!(code.s && code.present && code.l && code.g && !code.db && !code.avl);
        assert!(!code.unusable);
        assert_eq!(code.dpl, 0);

        let tss = segment_from_gdt_entry(TSS, 4);
        assert_eq!(
            (tss.limit, tss.type_, tss.s, tss.g),
            (0x67, 0xb, false, false)
        );

        let odd = segment_from_gdt_entry(gdt_entry(0x10f3, 0xdead_beef, 0x12345), 7);
        assert_eq!(odd.base, 0xdead_beef);
        assert_eq!(odd.limit, 0x1_2345);
        assert_eq!(odd.dpl, 3);
        assert!(odd.avl);
        assert_eq!(odd.selector, 0x38);

        let null = segment_from_gdt_entry(0, 0);
        assert!(null.unusable && !null.present);
    }

    #[test]
    fn pvh_state_is_flat_protected_mode_without_paging() {
        let current = SpecialRegisters {
            apic_base: 0xfee0_0900,
            cr0: 0x6000_0010,
            efer: 0x500,
            ..SpecialRegisters::default()
        };
        let s = pvh_special_registers(&current);
        assert_eq!(s.cr0, CR0_PE | CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert_eq!(s.apic_base, 0xfee0_0900);
        assert_eq!(s.cs.selector, SELECTOR_CODE);
        assert!(s.cs.db && !s.cs.l);
        assert_eq!(s.cs.limit, 0xffff_ffff);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, SELECTOR_DATA);
            assert_eq!((seg.base, seg.limit, seg.type_), (0, 0xffff_ffff, 3));
        }
        assert_eq!(s.tr.selector, SELECTOR_TSS);

        let r = pvh_registers(GuestAddress(0x10_0000), GuestAddress(0x6000));
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, 0x6000, 2));
        assert_eq!(r.rsi, 0);
    }

    #[test]
    fn long_mode_state_follows_the_boot_protocol() {
        let entry = LongModeEntry {
            entry: GuestAddress(0x100_0200),
            page_table: GuestAddress(0x9000),
            gdt: GuestAddress(0x500),
            boot_params: GuestAddress(0x7000),
            stack_pointer: GuestAddress(0x8ff0),
        };
        entry.validate().unwrap();
        let s = long_mode_special_registers(&SpecialRegisters::default(), &entry);
        assert_eq!(s.cr0, CR0_PE | CR0_ET | CR0_PG);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(
            s.gdt,
            DescriptorTable {
                base: 0x500,
                limit: 47
            }
        );
        assert!(s.cs.l && !s.cs.db);
        assert_eq!(s.cs, segment_from_gdt_entry(LONG_MODE_GDT[2], 2));
        assert_eq!(s.ds, segment_from_gdt_entry(LONG_MODE_GDT[3], 3));
        assert_eq!(s.tr, segment_from_gdt_entry(LONG_MODE_GDT[4], 4));

        let r = long_mode_registers(&entry);
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100_0200, 0x7000, 0x8ff0, 2)
        );
    }

    #[test]
    fn entry_parameters_are_validated() {
        let ok = LongModeEntry {
            entry: GuestAddress(0),
            page_table: GuestAddress(0x1000),
            gdt: GuestAddress(0),
            boot_params: GuestAddress(0),
            stack_pointer: GuestAddress(0),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad_cr3 = LongModeEntry {
            page_table: GuestAddress(0x1234),
            ..ok
        };
        assert_eq!(bad_cr3.validate(), Err(EntryError::PageTable(0x1234)));
        let huge_cr3 = LongModeEntry {
            page_table: GuestAddress(1 << 52),
            ..ok
        };
        assert!(huge_cr3.validate().is_err());
        let bad_gdt = LongModeEntry {
            gdt: GuestAddress(u64::MAX - 8),
            ..ok
        };
        assert_eq!(bad_gdt.validate(), Err(EntryError::Gdt(u64::MAX - 8)));
        let high_gdt = LongModeEntry {
            gdt: GuestAddress((1 << 52) - 8),
            ..ok
        };
        assert!(high_gdt.validate().is_err());
        assert!(EntryError::Gdt(5).to_string().contains("0x5"));
    }
}
