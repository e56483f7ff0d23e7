//! Pausing a running KVM vCPU from another thread and inspecting it between two entries.
//!
//! This test needs `/dev/kvm`; without it it fails, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips it explicitly.

#![allow(clippy::unwrap_used)]

mod common;

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Machine, REAL_MODE_CODE};
use vmkit_exits::{VcpuState, VmExit};
use vmkit_vcpu::{Inspector, KvmVcpu, LoopExit, Vcpu, run_until_stop_inspected};

/// `inc eax; jmp short -4`: a guest that counts in EAX forever and never exits on its own.
const COUNT_FOREVER: [u8; 4] = [0x66, 0x40, 0xeb, 0xfc];

/// The count the second inspection writes into EAX; far above what the guest counts to in the
/// test's few tens of milliseconds, and far below wrapping around.
const RESUME_COUNT: u64 = 0xc000_0000;

/// What one inspection saw.
#[derive(Debug)]
struct Sample {
    rax: u64,
    rip: u64,
    translated: Option<u64>,
}

/// Three pauses of a guest that never exits: each inspection runs on the vCPU thread with the
/// live state (the count went on between pauses, RIP is inside the loop, KVM_TRANSLATE answers),
/// a register it writes is what the guest resumes with, and the third ends the loop.
#[test]
fn pauses_inspect_a_guest_that_never_exits() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = m.real_mode_vcpu(&COUNT_FOREVER);
    let (samples, received) = mpsc::channel();
    let mut inspections = 0;
    let mut inspector = Inspector::new(move |vcpu: &mut KvmVcpu| {
        inspections += 1;
        let mut regs = vcpu.registers().unwrap();
        let sample = Sample {
            rax: regs.rax,
            rip: regs.rip,
            translated: vcpu.translate(REAL_MODE_CODE + 2).unwrap(),
        };
        samples.send(sample).unwrap();
        if inspections == 2 {
            regs.rax = RESUME_COUNT;
            vcpu.set_registers(&regs).unwrap();
        }
        if inspections == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    let pause = inspector.handle(vcpu.kicker());
    let running = thread::spawn(move || {
        let stop = AtomicBool::new(false);
        let handler = |exit: VmExit<'_>| panic!("the guest exited: {exit:?}");
        run_until_stop_inspected(&mut vcpu, &handler, &stop, &mut inspector)
    });
    let mut seen = Vec::new();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(20));
        pause.pause();
        let sample = received
            .recv_timeout(Duration::from_secs(10))
            .expect("the pause did not bring the vCPU out of KVM_RUN");
        seen.push(sample);
    }
    let exit = running.join().unwrap().unwrap();
    assert_eq!(exit, LoopExit::StopRequested);
    for sample in &seen {
        assert!(
            (REAL_MODE_CODE..REAL_MODE_CODE + 4).contains(&sample.rip),
            "{sample:?}"
        );
        assert_eq!(
            sample.translated,
            Some(REAL_MODE_CODE + 2),
            "paging is off: {sample:?}"
        );
    }
    let count = |i: usize| seen[i].rax as u32;
    assert!(count(0) > 0, "the guest ran before the first pause");
    assert!(count(1) > count(0), "and between pauses: {seen:?}");
    assert!(
        count(1) < RESUME_COUNT as u32 && count(2) > RESUME_COUNT as u32,
        "the guest resumed with the inspection's EAX: {seen:?}"
    );
}
