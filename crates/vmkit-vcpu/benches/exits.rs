//! Exit costs: the conversion of a run area into `VmExit`s, and — where `/dev/kvm` is usable — a
//! full `out` exit round trip through KVM (guest `out`, exit, conversion, handler, re-entry) and
//! the host-side cost of raising an interrupt with each ready-made trigger.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vmkit_exits::VcpuState;
use vmkit_exits::{ExitAction, InterruptTrigger, MsiTrigger, VmExit};
use vmkit_memory::GuestLayout;
use vmkit_memory::vm_memory::{Bytes, GuestAddress};
use vmkit_vcpu::kvm::exit::{RunAreaBuf, convert_exit, record};
use vmkit_vcpu::{
    Hypervisor, IrqLine, IrqfdLine, KvmHypervisor, MsiLine, RunExit, Vcpu, Vm, handle_exits,
};

fn conversion(c: &mut Criterion) {
    let mut out = RunAreaBuf::new(record::AREA_SIZE);
    record::io(out.as_bytes_mut(), 1, 1, 0x3f8, 1, 4096, b"A");
    c.bench_function("convert_exit/io_out", |b| {
        b.iter(|| match convert_exit(black_box(out.as_bytes_mut())) {
            Ok(RunExit::Exits(exits)) => black_box(exits.len()),
            _ => 0,
        })
    });

    let mut rep = RunAreaBuf::new(record::AREA_SIZE);
    record::io(rep.as_bytes_mut(), 0, 2, 0x1f0, 256, 4096, &[]);
    let fill = |exit: VmExit<'_>| {
        if let VmExit::IoIn { data, .. } = exit {
            data.fill(0xa5);
        }
        ExitAction::Resume
    };
    c.bench_function("convert_exit/rep_insw_256_handled", |b| {
        b.iter(|| match convert_exit(black_box(rep.as_bytes_mut())) {
            Ok(RunExit::Exits(exits)) => handle_exits(exits, &fill),
            _ => ExitAction::Resume,
        })
    });
}

fn kvm_round_trip(c: &mut Criterion) {
    let Ok(kvm) = KvmHypervisor::new() else {
        eprintln!("kvm/out_round_trip skipped: /dev/kvm is not usable here");
        return;
    };
    let layout = GuestLayout::new(2 << 20).expect("layout");
    let memory = layout.create_guest_memory().expect("memory");
    // Real mode at 0x1000: out 0x80, al; jmp back to the out.
    memory
        .write_slice(&[0xe6, 0x80, 0xeb, 0xfc], GuestAddress(0x1000))
        .expect("code");
    let vm = kvm.create_vm(&layout, &memory).expect("vm");
    let mut vcpu = vm.create_vcpu(0, 1).expect("vcpu");
    let mut sregs = vcpu.special_registers().expect("sregs");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_special_registers(&sregs).expect("sregs");
    let mut regs = vcpu.registers().expect("regs");
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_registers(&regs).expect("regs");
    let handler = |_: VmExit<'_>| ExitAction::Resume;
    c.bench_function("kvm/out_round_trip", |b| {
        b.iter(|| match vcpu.run() {
            Ok(RunExit::Exits(exits)) => handle_exits(exits, &handler),
            _ => ExitAction::Resume,
        })
    });
}

/// What raising an interrupt costs the thread that raises it: an edge on GSI 4 through
/// `KVM_IRQ_LINE` (two ioctls: raise, lower), through an irqfd (one eventfd write; the
/// backend injects it on its own), and an MSI through `KVM_SIGNAL_MSI`. The guest does not run:
/// the IOAPIC pin stays masked and the MSI's vCPU never takes it, so this is the raising
/// thread's cost alone.
fn kvm_triggers(c: &mut Criterion) {
    let Ok(kvm) = KvmHypervisor::new() else {
        eprintln!("kvm/trigger skipped: /dev/kvm is not usable here");
        return;
    };
    let layout = GuestLayout::new(2 << 20).expect("layout");
    let memory = layout.create_guest_memory().expect("memory");
    let vm = Arc::new(kvm.create_vm(&layout, &memory).expect("vm"));
    let _vcpu = vm.create_vcpu(0, 1).expect("vcpu");
    let irq_line = IrqLine::new(vm.clone(), 4);
    c.bench_function("kvm/trigger/irq_line_edge", |b| {
        b.iter(|| irq_line.trigger().expect("KVM_IRQ_LINE"))
    });
    let irqfd = IrqfdLine::edge(vm.clone(), 5).expect("irqfd");
    c.bench_function("kvm/trigger/irqfd_edge", |b| {
        b.iter(|| irqfd.trigger().expect("irqfd write"))
    });
    let msi = MsiLine::new(vm.clone());
    c.bench_function("kvm/trigger/msi", |b| {
        b.iter(|| msi.send(0xfee0_0000, 0x30).expect("KVM_SIGNAL_MSI"))
    });
}

criterion_group!(benches, conversion, kvm_round_trip, kvm_triggers);
criterion_main!(benches);
