//! Tiny guests under KVM: machine code written into guest memory, run through the traits.
//!
//! These tests need `/dev/kvm`; without it they fail, naming the reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` skips them explicitly.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{CODE, DONE_PORT, Machine, REAL_MODE_CODE, Recorder, START_INFO, Seen};
use vmkit_exits::state::Exception;
use vmkit_exits::{
    DeviceAction, ExitAction, ExitDispatcher, IoBus, MmioAddress, MmioBus, MmioDevice, PioAddress,
    PioDevice, StopReason, VcpuState, VmExit,
};
use vmkit_vcpu::EventFd;
use vmkit_vcpu::GuestAddress;
use vmkit_vcpu::x86::msr::{self, MsrValue};
use vmkit_vcpu::x86::{LONG_MODE_GDT, LONG_MODE_GDT_SIZE, PageSize, SELECTOR_CODE};
use vmkit_vcpu::{
    DataMatch, Error, Hypervisor, IoEventAddress, Kick, KvmVcpu, LongModeEntry, LoopExit, RunExit,
    Vcpu, Vm,
};

/// `mov al, 0; out DONE_PORT, al`.
const DONE: [u8; 4] = [0xb0, 0x00, 0xe6, DONE_PORT as u8];

fn run(vcpu: &mut KvmVcpu, recorder: &Recorder) -> LoopExit {
    let stop = AtomicBool::new(false);
    vcpu.run_loop(&|exit: VmExit<'_>| recorder.handle(exit), &stop)
        .unwrap()
}

/// Runs `vcpu` on another thread until `stop_after` has passed, then sets the stop flag and kicks
/// it; fails the test if the vCPU does not come back within ten seconds.
fn run_then_kick(
    mut vcpu: KvmVcpu,
    handler: impl Fn(VmExit<'_>) -> ExitAction + Send + 'static,
    stop_after: Duration,
) -> (KvmVcpu, LoopExit, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let kicker = vcpu.kicker();
    let (tx, rx) = mpsc::channel();
    let thread_stop = stop.clone();
    thread::spawn(move || {
        let result = vcpu.run_loop(&handler, &thread_stop);
        tx.send((vcpu, result)).unwrap();
    });
    thread::sleep(stop_after);
    let kicked_at = Instant::now();
    stop.store(true, Ordering::Release);
    kicker.kick();
    let (vcpu, result) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the kick did not bring the vCPU out of KVM_RUN");
    (vcpu, result.unwrap(), kicked_at.elapsed())
}

#[test]
fn real_mode_serial_out_then_hlt_is_stopped_by_a_kick() {
    let Some(m) = Machine::new() else { return };
    // mov dx, 0x3f8; mov al, 'A'; out dx, al; hlt
    let vcpu = m.real_mode_vcpu(&[0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xf4]);
    let out = Arc::new(Mutex::new(Vec::new()));
    let seen = out.clone();
    let handler = move |exit: VmExit<'_>| match exit {
        VmExit::IoOut { port: 0x3f8, data } => {
            seen.lock().unwrap().extend_from_slice(data);
            ExitAction::Resume
        }
        other => panic!("unexpected exit {other:?}"),
    };
    // The in-kernel LAPIC handles the hlt, so only the kick ends the run.
    let (vcpu, result, _) = run_then_kick(vcpu, handler, Duration::from_millis(200));
    assert_eq!(result, LoopExit::StopRequested);
    assert_eq!(*out.lock().unwrap(), b"A");
    assert_eq!(
        vcpu.registers().unwrap().rip,
        REAL_MODE_CODE + 7,
        "halted after the hlt"
    );
}

#[test]
fn kick_from_another_thread_ends_cli_hlt() {
    let Some(m) = Machine::new() else { return };
    // cli; hlt: no interrupt can ever wake this vCPU.
    let vcpu = m.real_mode_vcpu(&[0xfa, 0xf4]);
    let handler = |exit: VmExit<'_>| panic!("unexpected exit {exit:?}");
    let (vcpu, result, latency) = run_then_kick(vcpu, handler, Duration::from_millis(300));
    assert_eq!(result, LoopExit::StopRequested);
    eprintln!("kick latency: {latency:?}");
    let regs = vcpu.registers().unwrap();
    assert_eq!(regs.rip, REAL_MODE_CODE + 2);
    assert_eq!(regs.rflags & (1 << 9), 0, "interrupts stayed off");
}

#[test]
fn a_kick_before_the_run_is_delivered_once() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = m.real_mode_vcpu(&DONE);
    let kicker = vcpu.kicker();
    kicker.kick();
    kicker.kick();
    assert!(matches!(vcpu.run().unwrap(), RunExit::Kicked));
    match vcpu.run().unwrap() {
        RunExit::Exits(mut exits) => {
            assert_eq!(
                exits.next(),
                Some(VmExit::IoOut {
                    port: DONE_PORT,
                    data: &[0]
                })
            );
        }
        RunExit::Kicked => panic!("the kick was delivered twice"),
    }
}

#[test]
fn in_data_is_in_rax_when_paused_right_behind_the_in() {
    let Some(m) = Machine::new() else { return };
    // mov dx, 0x71; in al, dx; in ax, dx; in eax, dx; <done>
    let mut code = vec![0xba, 0x71, 0x00, 0xec, 0xed, 0x66, 0xed];
    code.extend_from_slice(&DONE);
    let mut vcpu = m.real_mode_vcpu(&code);
    let value = std::cell::Cell::new(0u64);
    // Every `in` pauses the loop right behind it.
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoIn { port: 0x71, data } => {
            let n = data.len();
            data.copy_from_slice(&value.get().to_le_bytes()[..n]);
            ExitAction::Stop(StopReason::GuestExit(n as u32))
        }
        other => panic!("unexpected exit {other:?}"),
    };
    let stop = AtomicBool::new(false);
    for (width, fill, mask, rip) in [
        (1, 0x5a, 0xff, 4),
        (2, 0x1234, 0xffff, 5),
        (4, 0x89ab_cdef, 0xffff_ffff, 7),
    ] {
        value.set(fill);
        let result = vcpu.run_loop(&handler, &stop).unwrap();
        assert_eq!(result, LoopExit::Stopped(StopReason::GuestExit(width)));
        let regs = vcpu.registers().unwrap();
        assert_eq!(regs.rax & mask, fill, "{width}-byte in");
        assert_eq!(regs.rip, REAL_MODE_CODE + rip);
    }
    let recorder = Recorder::new(0);
    assert_eq!(
        run(&mut vcpu, &recorder),
        LoopExit::Stopped(StopReason::GuestExit(0))
    );
}

#[test]
fn string_io_is_handled_element_by_element() {
    let Some(m) = Machine::new() else { return };
    m.write(0x2000, b"hello");
    #[rustfmt::skip]
    let mut code = vec![
        0xbe, 0x00, 0x20, // mov si, 0x2000
        0xb9, 0x05, 0x00, // mov cx, 5
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xf3, 0x6e,       // rep outsb
        0xbf, 0x00, 0x30, // mov di, 0x3000
        0xb9, 0x04, 0x00, // mov cx, 4
        0xba, 0x60, 0x00, // mov dx, 0x60
        0xf3, 0x6c,       // rep insb
    ];
    code.extend_from_slice(&DONE);
    let mut vcpu = m.real_mode_vcpu(&code);
    let out = std::cell::RefCell::new(Vec::new());
    let next_in = std::cell::Cell::new(0x11u8);
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoOut { port: 0x3f8, data } => {
            assert_eq!(data.len(), 1);
            out.borrow_mut().push(data[0]);
            ExitAction::Resume
        }
        VmExit::IoIn { port: 0x60, data } => {
            assert_eq!(data.len(), 1);
            data[0] = next_in.get();
            next_in.set(next_in.get() + 0x11);
            ExitAction::Resume
        }
        VmExit::IoOut {
            port: DONE_PORT, ..
        } => ExitAction::Stop(StopReason::GuestExit(0)),
        other => panic!("unexpected exit {other:?}"),
    };
    let stop = AtomicBool::new(false);
    assert_eq!(
        vcpu.run_loop(&handler, &stop).unwrap(),
        LoopExit::Stopped(StopReason::GuestExit(0))
    );
    assert_eq!(*out.borrow(), b"hello");
    assert_eq!(m.read(0x3000, 4), [0x11, 0x22, 0x33, 0x44]);
}

#[test]
fn pvh_entry_state_reads_back_and_is_what_the_guest_sees() {
    let Some(m) = Machine::new() else { return };
    #[rustfmt::skip]
    let mut code = vec![
        0x66, 0xba, 0xf0, 0x00, // mov dx, 0xf0
        0x89, 0xd8,             // mov eax, ebx
        0xef,                   // out dx, eax
        0x0f, 0x20, 0xc0,       // mov eax, cr0
        0xef,                   // out dx, eax
        0x8c, 0xc8,             // mov eax, cs
        0xef,                   // out dx, eax
    ];
    code.extend_from_slice(&DONE);
    let mut vcpu = m.pvh_vcpu(&code);

    let regs = vcpu.registers().unwrap();
    assert_eq!((regs.rip, regs.rbx, regs.rflags), (CODE, START_INFO, 2));
    let sregs = vcpu.special_registers().unwrap();
    assert_eq!(sregs.cr0 & 0x8000_0011, 0x11, "PE and ET, no paging");
    assert_eq!((sregs.cr3, sregs.cr4, sregs.efer & 0x500), (0, 0, 0));
    for seg in [sregs.cs, sregs.ds, sregs.es, sregs.ss] {
        assert_eq!((seg.base, seg.limit), (0, 0xffff_ffff));
        assert!(seg.present && seg.db);
    }
    assert_eq!(sregs.cs.selector, SELECTOR_CODE);
    assert_eq!(sregs.cs.type_ & 0x8, 0x8, "code");
    let fpu = vcpu.fpu().unwrap();
    assert_eq!(fpu.fcw, 0x37f);
    let msrs = vcpu
        .msrs(&[msr::IA32_MTRR_DEF_TYPE, msr::IA32_SYSENTER_CS, msr::LSTAR])
        .unwrap();
    assert_eq!(
        msrs,
        [
            MsrValue {
                index: msr::IA32_MTRR_DEF_TYPE,
                value: 0x806
            },
            MsrValue {
                index: msr::IA32_SYSENTER_CS,
                value: 0
            },
            MsrValue {
                index: msr::LSTAR,
                value: 0
            },
        ]
    );
    let lapic = vcpu.lapic().unwrap();
    assert_eq!((lapic.register(0x350) >> 8) & 7, 7, "LINT0 ExtINT");
    assert_eq!((lapic.register(0x360) >> 8) & 7, 4, "LINT1 NMI");

    let recorder = Recorder::new(0);
    assert_eq!(
        run(&mut vcpu, &recorder),
        LoopExit::Stopped(StopReason::GuestExit(0))
    );
    let seen = recorder.seen.borrow();
    let words: Vec<u32> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Out(0xf0, d) => Some(u32::from_le_bytes(d[..4].try_into().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(words, [START_INFO as u32, 0x11, u32::from(SELECTOR_CODE)]);
}

fn identity_map_16m(m: &Machine) {
    m.write(0x9000, &(0xa000u64 | 3).to_le_bytes());
    m.write(0xa000, &(0xb000u64 | 3).to_le_bytes());
    for i in 0..8u64 {
        m.write(0xb000 + i * 8, &((i << 21) | 0x83).to_le_bytes());
    }
}

#[test]
fn long_mode_entry_runs_64_bit_code() {
    let Some(m) = Machine::new() else { return };
    identity_map_16m(&m);
    #[rustfmt::skip]
    let mut code = vec![
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // mov rax, imm64
        0x66, 0xba, 0xf0, 0x00, // mov dx, 0xf0
        0xef,                   // out dx, eax
        0x48, 0xc1, 0xe8, 0x20, // shr rax, 32
        0xef,                   // out dx, eax
        0x89, 0xf0,             // mov eax, esi
        0xef,                   // out dx, eax
        0x8c, 0xc8,             // mov eax, cs
        0xef,                   // out dx, eax
    ];
    code.extend_from_slice(&DONE);
    m.write(CODE, &code);
    let mut vcpu = m.vm.create_vcpu(0, 1).unwrap();
    let entry = LongModeEntry {
        entry: GuestAddress(CODE),
        page_table: GuestAddress(0x9000),
        gdt: GuestAddress(0x500),
        boot_params: GuestAddress(0x7000),
        stack_pointer: GuestAddress(0x8ff0),
    };
    vcpu.setup_long_mode(&entry).unwrap();

    let gdt: Vec<u8> = LONG_MODE_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
    assert_eq!(m.read(0x500, LONG_MODE_GDT_SIZE as usize), gdt);
    let sregs = vcpu.special_registers().unwrap();
    assert_eq!(sregs.efer & 0x500, 0x500, "LME and LMA");
    assert_eq!(sregs.cr3, 0x9000);
    assert!(sregs.cs.l);
    let regs = vcpu.registers().unwrap();
    assert_eq!((regs.rip, regs.rsi, regs.rsp), (CODE, 0x7000, 0x8ff0));

    let recorder = Recorder::new(0);
    assert_eq!(
        run(&mut vcpu, &recorder),
        LoopExit::Stopped(StopReason::GuestExit(0))
    );
    let seen = recorder.seen.borrow();
    let words: Vec<u32> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Out(0xf0, d) => Some(u32::from_le_bytes(d[..4].try_into().unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(
        words,
        [0x5566_7788, 0x1122_3344, 0x7000, u32::from(SELECTOR_CODE)]
    );
}

#[test]
fn long_mode_entry_parameters_are_checked() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = m.vm.create_vcpu(0, 1).unwrap();
    let entry = LongModeEntry {
        entry: GuestAddress(CODE),
        page_table: GuestAddress(0x9001),
        gdt: GuestAddress(0x500),
        boot_params: GuestAddress(0),
        stack_pointer: GuestAddress(0),
    };
    assert!(matches!(vcpu.setup_long_mode(&entry), Err(Error::Entry(_))));
    let outside = LongModeEntry {
        page_table: GuestAddress(0x9000),
        gdt: GuestAddress(0xd000_0000),
        ..entry
    };
    let err = vcpu.setup_long_mode(&outside).unwrap_err();
    assert!(matches!(err, Error::WriteGdt(0xd000_0000)), "{err}");
}

struct Scratch {
    writes: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl MmioDevice for Scratch {
    fn mmio_read(&self, _base: MmioAddress, offset: u64, data: &mut [u8]) {
        let value = 0xcafe_f00d_u32.wrapping_add(offset as u32).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = value[i % 4];
        }
    }
    fn mmio_write(&self, _base: MmioAddress, offset: u64, data: &[u8]) -> DeviceAction {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
        DeviceAction::Resume
    }
}

struct DonePort;

impl PioDevice for DonePort {
    fn pio_read(&self, _base: PioAddress, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _base: PioAddress, _offset: u16, data: &[u8]) -> DeviceAction {
        DeviceAction::Stop(StopReason::GuestExit(u32::from(data[0])))
    }
}

#[test]
fn mmio_write_and_read_are_routed_through_the_dispatcher() {
    let Some(m) = Machine::new() else { return };
    #[rustfmt::skip]
    let mut code = vec![
        0xc7, 0x05, 0x00, 0x00, 0x00, 0xd0, 0x78, 0x56, 0x34, 0x12, // mov dword [0xd0000000], imm
        0xa1, 0x04, 0x00, 0x00, 0xd0,                               // mov eax, [0xd0000004]
    ];
    code.extend_from_slice(&[0xb0, 0x07, 0xe6, DONE_PORT as u8]); // mov al, 7; out DONE_PORT, al
    let mut vcpu = m.pvh_vcpu(&code);
    let scratch = Arc::new(Scratch {
        writes: Mutex::new(Vec::new()),
    });
    let mmio = Arc::new(MmioBus::new());
    mmio.register(0xd000_0000..0xd000_1000, scratch.clone())
        .unwrap();
    let pio = Arc::new(IoBus::new());
    pio.register(DONE_PORT..DONE_PORT + 1, Arc::new(DonePort))
        .unwrap();
    let dispatcher = ExitDispatcher::new(pio, mmio);
    let stop = AtomicBool::new(false);
    assert_eq!(
        vcpu.run_loop(&dispatcher, &stop).unwrap(),
        LoopExit::Stopped(StopReason::GuestExit(7))
    );
    assert_eq!(
        *scratch.writes.lock().unwrap(),
        [(0, vec![0x78, 0x56, 0x34, 0x12])]
    );
    let rax = vcpu.registers().unwrap().rax;
    assert_eq!(
        rax & 0xffff_ff00,
        0xcafe_f011 & 0xffff_ff00,
        "read value, then al = 7"
    );
    assert_eq!(rax & 0xff, 7);
}

#[test]
fn triple_fault_is_a_shutdown_exit() {
    let Some(m) = Machine::new() else { return };
    // ud2 with no IDT: #UD cannot be delivered, nor #GP, nor #DF.
    let mut vcpu = m.pvh_vcpu(&[0x0f, 0x0b]);
    let recorder = Recorder::new(0);
    run(&mut vcpu, &recorder);
    assert_eq!(*recorder.seen.borrow(), [Seen::Other("TripleFault".into())]);
}

#[test]
fn an_injected_exception_without_an_idt_shuts_the_guest_down() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = m.pvh_vcpu(&DONE);
    assert!(matches!(
        vcpu.inject_exception(Exception {
            vector: 2,
            error_code: None
        }),
        Err(Error::InvalidException(2))
    ));
    assert!(matches!(
        vcpu.inject_exception(Exception {
            vector: 32,
            error_code: None
        }),
        Err(Error::InvalidException(32))
    ));
    vcpu.inject_exception(Exception {
        vector: 13,
        error_code: Some(0),
    })
    .unwrap();
    let recorder = Recorder::new(0);
    run(&mut vcpu, &recorder);
    assert_eq!(*recorder.seen.borrow(), [Seen::Other("TripleFault".into())]);
}

#[test]
fn emulation_failure_reports_the_instruction_bytes() {
    let Some(m) = Machine::new() else { return };
    // int3 in ring 0, which the emulator of a nested host cannot handle.
    let mut vcpu = m.pvh_vcpu(&[0xcc, 0x90, 0x90]);
    let result = std::cell::RefCell::new(None);
    let stop = AtomicBool::new(false);
    vcpu.run_loop(
        &|exit: VmExit<'_>| {
            *result.borrow_mut() = Some(match exit {
                VmExit::InternalError { suberror, insn } => Ok((suberror, insn)),
                other => Err(format!("{other:?}")),
            });
            ExitAction::Stop(StopReason::Unhandled(0))
        },
        &stop,
    )
    .unwrap();
    match result.into_inner().unwrap() {
        Ok((suberror, insn)) => {
            assert_eq!(suberror, vmkit_exits::exit::INTERNAL_ERROR_EMULATION);
            let insn = insn.expect("the emulation failure carries the instruction bytes");
            assert_eq!(insn.as_slice().first(), Some(&0xcc), "{insn:?}");
        }
        // Where the CPU runs ring-0 code itself, int3 without an IDT is a triple fault.
        Err(other) => {
            assert_eq!(other, "TripleFault");
            eprintln!("int3 ran natively here: the host does not emulate ring-0 code");
        }
    }
}

#[test]
fn ioevents_and_irqfds_are_registered_with_kvm() {
    let Some(m) = Machine::new() else { return };
    // mov al, 1; out 0x80, al; <done>
    let mut code = vec![0xb0, 0x01, 0xe6, 0x80];
    code.extend_from_slice(&DONE);
    let mut vcpu = m.real_mode_vcpu(&code);
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let addr = IoEventAddress::Pio(0x80);
    m.vm.register_ioevent(&event, addr, Some(DataMatch::U8(1)))
        .unwrap();
    let recorder = Recorder::new(0);
    assert_eq!(
        run(&mut vcpu, &recorder),
        LoopExit::Stopped(StopReason::GuestExit(0))
    );
    assert_eq!(event.read().unwrap(), 1, "the out went to the eventfd");
    assert_eq!(*recorder.seen.borrow(), [Seen::Out(DONE_PORT, vec![0])]);
    m.vm.unregister_ioevent(&event, addr, Some(DataMatch::U8(1)))
        .unwrap();
    for datamatch in [
        None,
        Some(DataMatch::U16(2)),
        Some(DataMatch::U32(3)),
        Some(DataMatch::U64(4)),
    ] {
        let mmio = IoEventAddress::Mmio(0xd000_0000);
        m.vm.register_ioevent(&event, mmio, datamatch).unwrap();
        m.vm.unregister_ioevent(&event, mmio, datamatch).unwrap();
    }
    assert!(m.vm.unregister_ioevent(&event, addr, None).is_err());

    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    m.vm.register_irqfd(&irq, 5).unwrap();
    irq.write(1).unwrap();
    m.vm.unregister_irqfd(&irq, 5).unwrap();
    m.vm.set_irq_line(4, true).unwrap();
    m.vm.set_irq_line(4, false).unwrap();
}

#[test]
fn a_halt_action_parks_the_vcpu_until_a_kick() {
    let Some(m) = Machine::new() else { return };
    // cli; out 0x80, al; <done>
    let mut code = vec![0xfa, 0xe6, 0x80];
    code.extend_from_slice(&DONE);
    let vcpu = m.real_mode_vcpu(&code);
    let handler = |exit: VmExit<'_>| match exit {
        VmExit::IoOut { port: 0x80, .. } => ExitAction::Halt,
        other => panic!("the parked vCPU ran on: {other:?}"),
    };
    let (vcpu, result, _) = run_then_kick(vcpu, handler, Duration::from_millis(200));
    assert_eq!(result, LoopExit::StopRequested);
    assert_eq!(vcpu.registers().unwrap().rip, REAL_MODE_CODE + 3);
}

#[test]
fn refused_msrs_and_bad_vcpu_ids_are_named() {
    let Some(m) = Machine::new() else { return };
    let mut vcpu = m.vm.create_vcpu(0, 1).unwrap();
    let err = vcpu
        .set_msrs(&[
            MsrValue {
                index: msr::IA32_SYSENTER_CS,
                value: 0,
            },
            MsrValue {
                index: 0xdead_0000,
                value: 1,
            },
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SetMsrs {
                index: 0xdead_0000,
                value: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("0xdead0000"));

    for (id, count) in [(1, 1), (0, 0), (0, 256)] {
        assert!(matches!(
            m.vm.create_vcpu(id, count),
            Err(Error::VcpuId { .. })
        ));
    }
    let vcpus = m.vm.create_vcpus(2);
    assert!(
        vcpus.is_err(),
        "vCPU 0 exists already, so KVM refuses a second one"
    );
}

#[test]
fn several_vcpus_report_their_topology() {
    let Some(kvm) = common::hypervisor() else {
        return;
    };
    let layout = vmkit_memory::GuestLayout::new(16 << 20).unwrap();
    let memory = layout.create_guest_memory().unwrap();
    let vm = kvm.create_vm(&layout, &memory).unwrap();
    let vcpus = vm.create_vcpus(3).unwrap();
    for vcpu in &vcpus {
        let cpuid = vcpu.fd().get_cpuid2(256).unwrap();
        let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        assert_eq!(leaf1.ebx >> 24, vcpu.id());
        assert_eq!((leaf1.ebx >> 16) & 0xff, 3);
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(
            leaf1.ecx & (1 << 24) != 0,
            kvm.supports_tsc_deadline(),
            "TSC deadline exactly when KVM emulates it"
        );
    }
}

#[test]
fn page_sizes_come_from_the_supported_cpuid() {
    let Some(kvm) = common::hypervisor() else {
        return;
    };
    let ext = kvm
        .supported_cpuid()
        .iter()
        .find(|e| e.function == 0x8000_0001)
        .expect("leaf 0x8000_0001");
    let pdpe1gb = ext.edx & (1 << 26) != 0;
    let sizes = kvm.supported_page_sizes();
    assert_eq!(sizes.contains(PageSize::Size1G), pdpe1gb);
    assert_eq!(kvm.supports_1g_pages(), pdpe1gb);
    assert!(sizes.contains(PageSize::Size2M) && sizes.contains(PageSize::Size4K));
    eprintln!(
        "page sizes: {:?}; exit on emulation failure: {}; TSC deadline: {}; API via {:?}",
        sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        kvm.exits_on_emulation_failure(),
        kvm.supports_tsc_deadline(),
        kvm.kvm().get_api_version()
    );
}

#[test]
fn phys_bits_are_the_hosts_and_build_a_layout() {
    let Some(kvm) = common::hypervisor() else {
        return;
    };
    let bits = kvm.phys_bits();
    assert!((36..=52).contains(&bits), "implausible MAXPHYADDR {bits}");
    let layout = vmkit_memory::GuestLayout::with_phys_bits(64 << 20, bits).unwrap();
    assert_eq!(layout.phys_bits(), bits);
    assert_eq!(
        layout.mmio64_window().last().map(|a| a.0),
        Some((1u64 << bits) - 1)
    );
    let memory = layout.create_guest_memory().unwrap();
    kvm.create_vm(&layout, &memory).unwrap();
}

#[test]
fn a_storm_of_kicks_neither_stops_nor_wedges_the_loop() {
    let Some(m) = Machine::new() else { return };
    // out 0x80, al; jmp back to the out
    let vcpu = m.real_mode_vcpu(&[0xe6, 0x80, 0xeb, 0xfc]);
    let outs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = outs.clone();
    let handler = move |exit: VmExit<'_>| match exit {
        VmExit::IoOut { port: 0x80, .. } => {
            counted.fetch_add(1, Ordering::Relaxed);
            ExitAction::Resume
        }
        other => panic!("unexpected exit {other:?}"),
    };
    let kicker = vcpu.kicker();
    let storm = thread::spawn(move || {
        for _ in 0..300 {
            kicker.kick();
            thread::sleep(Duration::from_micros(500));
        }
    });
    let (_, result, _) = run_then_kick(vcpu, handler, Duration::from_millis(400));
    storm.join().unwrap();
    assert_eq!(result, LoopExit::StopRequested);
    assert!(
        outs.load(Ordering::Relaxed) > 0,
        "the guest ran between the kicks"
    );
}

#[test]
fn a_missing_kvm_device_is_named_in_the_error() {
    let err =
        vmkit_vcpu::KvmHypervisor::open(std::path::Path::new("/nonexistent/kvm")).unwrap_err();
    assert!(matches!(err, Error::OpenKvm { .. }));
    assert!(err.to_string().contains("/nonexistent/kvm"), "{err}");
}

#[test]
fn a_signalled_msi_reaches_the_guest_idt_handler() {
    let Some(m) = Machine::new() else { return };
    // Flat GDT (code at 0x10, data at 0x18, the PVH selectors) and an IDT whose vector 0x40
    // gate points at the handler, which ends the test itself (no `iret`: where KVM emulates
    // guest code, its emulator has no protected-mode `iret`).
    let handler_at = CODE + 0x100;
    let gdt: [u64; 4] = [0, 0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];
    for (i, entry) in gdt.iter().enumerate() {
        m.write(0x7000 + i as u64 * 8, &entry.to_le_bytes());
    }
    m.write(0x7100, &[31, 0, 0x00, 0x70, 0, 0]); // GDTR: limit 31, base 0x7000
    m.write(0x7110, &[0xff, 0x07, 0x00, 0x80, 0, 0]); // IDTR: limit 0x7ff, base 0x8000
    let gate = (handler_at & 0xffff)
        | (u64::from(SELECTOR_CODE) << 16)
        | (0x8e << 40)
        | ((handler_at >> 16) << 48);
    m.write(0x8000 + 0x40 * 8, &gate.to_le_bytes());
    #[rustfmt::skip]
    let handler = [
        0xb0, 0x40, 0xe6, 0xf1,                                     // mov al, 0x40; out 0xf1, al
        0xc7, 0x05, 0xb0, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, // mov dword [LAPIC EOI], 0
        0xb0, 0x00, 0xe6, DONE_PORT as u8,                          // done, status 0
    ];
    m.write(handler_at, &handler);
    #[rustfmt::skip]
    let code = vec![
        0xbc, 0x00, 0x90, 0x00, 0x00,                               // mov esp, 0x9000
        0x0f, 0x01, 0x15, 0x00, 0x71, 0x00, 0x00,                   // lgdt [0x7100]
        0x0f, 0x01, 0x1d, 0x10, 0x71, 0x00, 0x00,                   // lidt [0x7110]
        0xc7, 0x05, 0xf0, 0x00, 0xe0, 0xfe, 0xff, 0x01, 0x00, 0x00, // LAPIC SVR = 0x1ff (enable)
        0xe6, 0xf0,                                                 // out 0xf0, al: "send it"
        0xfb, 0xf4,                                                 // sti; hlt
        0xb0, 0x01, 0xe6, DONE_PORT as u8,                          // woken without it: status 1
    ];
    let mut vcpu = m.pvh_vcpu(&code);

    let delivered = Mutex::new(Vec::new());
    let recorder = Recorder::new(0);
    let stop = AtomicBool::new(false);
    let handler = |exit: VmExit<'_>| {
        if let VmExit::IoOut { port: 0xf0, .. } = exit {
            // To the boot APIC (ID 0), fixed delivery, vector 0x40; then to an APIC that
            // does not exist, which KVM refuses without it being an error.
            let mut d = delivered.lock().unwrap();
            d.push(m.vm.signal_msi(0xfee0_0000, 0x40).unwrap());
            d.push(m.vm.signal_msi(0xfee0_5000, 0x41).unwrap());
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
    assert_eq!(*delivered.lock().unwrap(), [true, false]);
    assert_eq!(
        *recorder.seen.borrow(),
        [
            Seen::Out(0xf0, vec![0]),
            Seen::Out(0xf1, vec![0x40]),
            Seen::Out(DONE_PORT, vec![0]),
        ]
    );
}
