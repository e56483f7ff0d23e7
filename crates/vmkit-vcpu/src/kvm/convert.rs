//! Conversions between KVM's register structures and the backend-neutral ones of `vmkit-exits`.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};
use vmkit_exits::state::{DescriptorTable, Registers, Segment, SpecialRegisters};

/// `kvm_regs` → [`Registers`].
pub(crate) fn registers_from_kvm(r: &kvm_regs) -> Registers {
    Registers {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

/// [`Registers`] → `kvm_regs`.
pub(crate) fn registers_to_kvm(r: &Registers) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn segment_from_kvm(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_ & 0xf,
        present: u8::from(s.present),
        dpl: s.dpl & 0x3,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

fn table_from_kvm(t: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit,
    }
}

fn table_to_kvm(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

/// `kvm_sregs` → [`SpecialRegisters`].
pub(crate) fn special_registers_from_kvm(s: &kvm_sregs) -> SpecialRegisters {
    SpecialRegisters {
        cs: segment_from_kvm(&s.cs),
        ds: segment_from_kvm(&s.ds),
        es: segment_from_kvm(&s.es),
        fs: segment_from_kvm(&s.fs),
        gs: segment_from_kvm(&s.gs),
        ss: segment_from_kvm(&s.ss),
        tr: segment_from_kvm(&s.tr),
        ldt: segment_from_kvm(&s.ldt),
        gdt: table_from_kvm(&s.gdt),
        idt: table_from_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
    }
}

/// Writes [`SpecialRegisters`] over `s`, keeping what they do not describe (the pending
/// interrupt bitmap).
pub(crate) fn special_registers_to_kvm(from: &SpecialRegisters, s: &mut kvm_sregs) {
    s.cs = segment_to_kvm(&from.cs);
    s.ds = segment_to_kvm(&from.ds);
    s.es = segment_to_kvm(&from.es);
    s.fs = segment_to_kvm(&from.fs);
    s.gs = segment_to_kvm(&from.gs);
    s.ss = segment_to_kvm(&from.ss);
    s.tr = segment_to_kvm(&from.tr);
    s.ldt = segment_to_kvm(&from.ldt);
    s.gdt = table_to_kvm(&from.gdt);
    s.idt = table_to_kvm(&from.idt);
    s.cr0 = from.cr0;
    s.cr2 = from.cr2;
    s.cr3 = from.cr3;
    s.cr4 = from.cr4;
    s.cr8 = from.cr8;
    s.efer = from.efer;
    s.apic_base = from.apic_base;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_round_trip() {
        let mut r = Registers::default();
        for (i, field) in [
            &mut r.rax,
            &mut r.rbx,
            &mut r.rcx,
            &mut r.rdx,
            &mut r.rsi,
            &mut r.rdi,
            &mut r.rsp,
            &mut r.rbp,
            &mut r.r8,
            &mut r.r9,
            &mut r.r10,
            &mut r.r11,
            &mut r.r12,
            &mut r.r13,
            &mut r.r14,
            &mut r.r15,
            &mut r.rip,
            &mut r.rflags,
        ]
        .into_iter()
        .enumerate()
        {
            *field = 0x1111 * (i as u64 + 1);
        }
        assert_eq!(registers_from_kvm(&registers_to_kvm(&r)), r);
    }

    #[test]
    fn special_registers_round_trip_and_keep_the_interrupt_bitmap() {
        let seg = |n: u64| Segment {
            base: n,
            limit: n as u32 * 3,
            selector: n as u16,
            type_: (n & 0xf) as u8,
            present: n.is_multiple_of(2),
            dpl: (n & 3) as u8,
            db: n.is_multiple_of(3),
            s: true,
            l: n.is_multiple_of(5),
            g: n.is_multiple_of(7),
            avl: n.is_multiple_of(11),
            unusable: n.is_multiple_of(13),
        };
        let sregs = SpecialRegisters {
            cs: seg(1),
            ds: seg(2),
            es: seg(3),
            fs: seg(4),
            gs: seg(5),
            ss: seg(6),
            tr: seg(7),
            ldt: seg(8),
            gdt: DescriptorTable {
                base: 0x500,
                limit: 47,
            },
            idt: DescriptorTable {
                base: 0x600,
                limit: 7,
            },
            cr0: 0x8000_0011,
            cr2: 0xdead,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 5,
            efer: 0x500,
            apic_base: 0xfee0_0900,
        };
        let mut kvm = kvm_sregs {
            interrupt_bitmap: [0xabc, 0, 0, 1],
            ..Default::default()
        };
        special_registers_to_kvm(&sregs, &mut kvm);
        assert_eq!(kvm.interrupt_bitmap, [0xabc, 0, 0, 1]);
        assert_eq!(special_registers_from_kvm(&kvm), sregs);
    }
}
