//! `Vcpu::state` and `Vcpu::set_state` on KVM: a snapshot loaded into a fresh vCPU of another VM
//! reads back equal, and a register changed in the snapshot is the one the guest then runs with.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicBool;

use common::{CODE, DONE_PORT, Machine, Recorder, START_INFO};
use vmkit_exits::{StopReason, VcpuState, VmExit};
use vmkit_vcpu::x86::msr::{self, MsrValue};
use vmkit_vcpu::{LoopExit, Vcpu, Vm};

/// `mov al, bl; out DONE_PORT, al`: the guest reports BL as its exit status.
const REPORT_BL: [u8; 4] = [0x88, 0xd8, 0xe6, DONE_PORT as u8];

#[test]
fn a_snapshot_loads_into_a_fresh_vcpu_and_reads_back_equal() {
    let Some(source) = Machine::new() else {
        return;
    };
    let mut vcpu = source.pvh_vcpu(&REPORT_BL);
    // Make the state differ from a fresh vCPU's in every part the snapshot holds.
    let mut regs = vcpu.registers().unwrap();
    regs.r15 = 0x0123_4567_89ab_cdef;
    vcpu.set_registers(&regs).unwrap();
    let mut fpu = vcpu.fpu().unwrap();
    fpu.xmm[3] = [0x5a; 16];
    fpu.fcw = 0x27f;
    vcpu.set_fpu(&fpu).unwrap();
    let lstar = MsrValue {
        index: msr::LSTAR,
        value: 0xffff_ffff_8100_0000,
    };
    vcpu.set_msrs(&[lstar]).unwrap();
    let mut lapic = vcpu.lapic().unwrap();
    // The task-priority register.
    lapic.set_register(0x80, 0x20);
    vcpu.set_lapic(&lapic).unwrap();

    let snapshot = vcpu.state().unwrap();
    assert_eq!(snapshot.registers.r15, 0x0123_4567_89ab_cdef);
    assert!(snapshot.msrs.contains(&lstar), "{:?}", snapshot.msrs);
    assert_eq!(snapshot.lapic.register(0x80), 0x20);
    assert_eq!(vcpu.fpu().unwrap().xmm[3], [0x5a; 16]);

    let Some(target) = Machine::new() else {
        return;
    };
    target.write(CODE, &REPORT_BL);
    let mut fresh = target.vm.create_vcpu(0, 1).unwrap();
    assert_ne!(fresh.state().unwrap(), snapshot);
    fresh.set_state(&snapshot).unwrap();
    assert_eq!(fresh.state().unwrap(), snapshot);
    assert_eq!(fresh.fpu().unwrap(), vcpu.fpu().unwrap());

    // A register changed in the snapshot is the one the guest runs with.
    assert_eq!(snapshot.registers.rbx, START_INFO);
    let mut changed = snapshot.clone();
    changed.registers.rbx = 42;
    fresh.set_state(&changed).unwrap();
    assert_eq!(fresh.state().unwrap(), changed);
    let recorder = Recorder::new(0);
    let stop = AtomicBool::new(false);
    let exit = fresh
        .run_loop(&|exit: VmExit<'_>| recorder.handle(exit), &stop)
        .unwrap();
    assert_eq!(exit, LoopExit::Stopped(StopReason::GuestExit(42)));
}
