//! The ready-made interrupt triggers under KVM, seen by a guest: an IOAPIC pin raised through
//! `KVM_IRQ_LINE` and through an irqfd with a resample fd, and an MSI, each reaching an IDT
//! handler.
//!
//! These tests need `/dev/kvm`; without it they fail, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips them explicitly.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common::{CODE, DONE_PORT, Machine, Recorder, Seen};
use vmkit_exits::StopReason;
use vmkit_exits::VmExit;
use vmkit_vcpu::x86::SELECTOR_CODE;
use vmkit_vcpu::{
    InterruptTrigger, IrqLine, IrqfdLine, KvmVcpu, KvmVm, LoopExit, MsiLine, MsiTrigger, Vcpu,
};

/// Where the guest's handler is.
const HANDLER: u64 = CODE + 0x100;
/// The IOAPIC's register select and window.
const IOREGSEL: u32 = 0xFEC0_0000;
const IOWIN: u32 = 0xFEC0_0010;

/// `mov dword [addr], value`.
fn mov_to(addr: u32, value: u32) -> Vec<u8> {
    let mut insn = vec![0xc7, 0x05];
    insn.extend_from_slice(&addr.to_le_bytes());
    insn.extend_from_slice(&value.to_le_bytes());
    insn
}

/// A protected-mode guest whose IDT sends `vector` to a handler that reports it on port 0xf1,
/// acknowledges it at the local APIC, reports that on port 0xf2 and ends the test with status 0.
/// The main code enables the local APIC, runs `setup`, asks for the interrupt on port 0xf0 and
/// halts with interrupts on; woken without the interrupt, it ends with status 1.
fn guest(m: &Machine, vector: u8, setup: &[u8]) -> KvmVcpu {
    let gdt: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    for (i, entry) in gdt.iter().enumerate() {
        m.write(0x7000 + i as u64 * 8, &entry.to_le_bytes());
    }
    m.write(0x7100, &[31, 0, 0x00, 0x70, 0, 0]); // GDTR: limit 31, base 0x7000
    m.write(0x7110, &[0xff, 0x07, 0x00, 0x80, 0, 0]); // IDTR: limit 0x7ff, base 0x8000
    let gate = (HANDLER & 0xffff)
        | (u64::from(SELECTOR_CODE) << 16)
        | (0x8e << 40)
        | ((HANDLER >> 16) << 48);
    m.write(0x8000 + u64::from(vector) * 8, &gate.to_le_bytes());
    // No `iret`: where KVM emulates guest code, its emulator has no protected-mode `iret`.
    let mut handler = vec![0xb0, vector, 0xe6, 0xf1]; // mov al, vector; out 0xf1, al
    handler.extend(mov_to(0xFEE0_00B0, 0)); // LAPIC EOI
    handler.extend([0xe6, 0xf2]); // out 0xf2, al
    handler.extend([0xb0, 0x00, 0xe6, DONE_PORT as u8]); // done, status 0
    m.write(HANDLER, &handler);
    #[rustfmt::skip]
    let mut code = vec![
        0xbc, 0x00, 0x90, 0x00, 0x00,                   // mov esp, 0x9000
        0x0f, 0x01, 0x15, 0x00, 0x71, 0x00, 0x00,       // lgdt [0x7100]
        0x0f, 0x01, 0x1d, 0x10, 0x71, 0x00, 0x00,       // lidt [0x7110]
    ];
    code.extend(mov_to(0xFEE0_00F0, 0x1ff)); // LAPIC SVR: enabled
    code.extend_from_slice(setup);
    code.extend([0xe6, 0xf0]); // out 0xf0, al: "send it"
    code.extend([0xfb, 0xf4]); // sti; hlt
    code.extend([0xb0, 0x01, 0xe6, DONE_PORT as u8]); // woken without it: status 1
    m.pvh_vcpu(&code)
}

/// Routes IOAPIC `pin` to `vector` on APIC 0, fixed delivery, edge or level, unmasked.
fn route_pin(pin: u32, vector: u8, level: bool) -> Vec<u8> {
    let low = u32::from(vector) | if level { 1 << 15 } else { 0 };
    let mut code = mov_to(IOREGSEL, 0x10 + 2 * pin);
    code.extend(mov_to(IOWIN, low));
    code.extend(mov_to(IOREGSEL, 0x11 + 2 * pin));
    code.extend(mov_to(IOWIN, 0));
    code
}

/// Runs `vcpu`, calling `on_port` on each write to ports 0xf0..=0xf2, and checks that the guest
/// took the interrupt `vector` and acknowledged it.
fn run(vcpu: &mut KvmVcpu, vector: u8, mut on_port: impl FnMut(u16)) {
    let recorder = Recorder::new(0);
    let stop = AtomicBool::new(false);
    let on_port = Mutex::new(&mut on_port);
    let handler = |exit: VmExit<'_>| {
        if let VmExit::IoOut { port, .. } = exit
            && (0xf0..=0xf2).contains(&port)
        {
            (on_port.lock().unwrap())(port);
        }
        recorder.handle(exit)
    };
    let result = vcpu.run_loop(&handler, &stop).unwrap();
    assert_eq!(
        result,
        LoopExit::Stopped(StopReason::GuestExit(0)),
        "{:?}",
        recorder.seen.borrow()
    );
    assert_eq!(
        *recorder.seen.borrow(),
        [
            Seen::Out(0xf0, vec![0]),
            Seen::Out(0xf1, vec![vector]),
            Seen::Out(0xf2, vec![vector]),
            Seen::Out(DONE_PORT, vec![0]),
        ]
    );
}

/// The machine's VM, shared as the triggers take it (the vCPU keeps what it needs).
fn shared(m: Machine) -> Arc<KvmVm> {
    Arc::new(m.vm)
}

#[test]
fn an_irq_line_edge_reaches_the_guest_through_the_ioapic() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = guest(&m, 0x43, &route_pin(20, 0x43, false));
    let line: Box<dyn InterruptTrigger> = Box::new(IrqLine::new(shared(m), 20));
    run(&mut vcpu, 0x43, |port| {
        if port == 0xf0 {
            line.trigger().unwrap();
        }
    });
}

#[test]
fn a_level_irqfd_line_reaches_the_guest_and_is_resampled_after_its_acknowledgement() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = guest(&m, 0x42, &route_pin(21, 0x42, true));
    let line = IrqfdLine::level(shared(m), 21).unwrap();
    let mut raised_again = 0;
    let mut after_deassert = None;
    run(&mut vcpu, 0x42, |port| match port {
        0xf0 => line.assert().unwrap(),
        // KVM lowers the line and signals the resample fd once the guest acknowledged the
        // interrupt: at its EOI write, or (seen under nested virtualization) already when it
        // injected the level interrupt. Either way exactly once by the end of the handler, and
        // the device still holds the line, so it is raised again.
        0xf1 => raised_again += u32::from(line.resample().unwrap()),
        _ => {
            raised_again += u32::from(line.resample().unwrap());
            // The device lets go: a later acknowledgement leaves the line low.
            line.deassert().unwrap();
            line.resample_fd().unwrap().write(1).unwrap();
            after_deassert = Some(line.resample().unwrap());
        }
    });
    assert_eq!(raised_again, 1, "one acknowledgement, one re-raise");
    assert_eq!(after_deassert, Some(false));
}

#[test]
fn an_msi_line_message_reaches_the_guest_idt_handler() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = guest(&m, 0x40, &[]);
    let msi: Arc<dyn MsiTrigger> = Arc::new(MsiLine::new(shared(m)));
    run(&mut vcpu, 0x40, |port| {
        if port == 0xf0 {
            // To the boot APIC (ID 0), fixed delivery, vector 0x40; and to an APIC that does not
            // exist, which the guest's programming blocks without it being an error.
            msi.send(0xfee0_0000, 0x40).unwrap();
            msi.send(0xfee0_5000, 0x41).unwrap();
        }
    });
}
