//! Builds the VM from the command line, runs it, and turns how it ended into an exit status.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reference_vmm_seccomp::{Filters, ThreadKind};
use vmkit_boot::mark_acpi_memory;
use vmkit_devices::DiskImage;
use vmkit_devices::serial::{COM1_IRQ, SerialDevice};
use vmkit_exits::assist::{AssistReport, EmulationAssist};
use vmkit_exits::dispatch::ExitDispatcher;
use vmkit_exits::record::RecordWriter;
use vmkit_exits::{ExitAction, MsiTrigger, PioDevice, StopReason, VmExit};
use vmkit_memory::Allocators;
use vmkit_memory::GuestLayout;
use vmkit_memory::vm_memory::GuestMemoryMmap;
use vmkit_vcpu::{
    ExitHandler, Hypervisor, IrqLine, Kick, KvmHypervisor, LoopExit, MsiLine, Vcpu, Vm,
};

use crate::boot;
use crate::cli::{BuiltinGuest, Cli, DEFAULT_RECORD_LIMIT, SerialConfig, StatsFormat};
use crate::devices::{self, Devices, Serial, Wiring};
use crate::disks::{self, Disks};
use crate::exit_code;
use crate::files;
use crate::guests::{ASSIST_ELF, EXITS_ELF, HELLO_ELF};
use crate::lifecycle::{self, REPORT_GRACE, STOP_GRACE, Supervised, ThreadPanic};
use crate::recording::{self, Line, Recording};
use crate::serial_output::{self, SerialDrain, SerialOutput};
use crate::stats;
use crate::stderr;
use crate::terminal::{self, RawStdin};

/// What the composition needs of a backend's VM beyond [`Vm`]: devices' interrupt lines hold it
/// on every thread (`Send + Sync`), and each vCPU moves to a thread of its own (`Send`).
pub trait SharedVm: Vm<Vcpu: Send + 'static> + Send + Sync + 'static {}

impl<V> SharedVm for V where V: Vm<Vcpu: Send + 'static> + Send + Sync + 'static {}

/// The two ends of COM1's output buffer: the UART's, and the serial output thread's.
type SerialBuffer = (SerialOutput, SerialDrain);

/// COM1 (unless `--serial off`) and its output buffer (unless its output goes nowhere).
type Com1 = (Option<Arc<Serial>>, Option<SerialBuffer>);

/// The exit handler the vCPUs share: the dispatcher, the emulation assist that completes what
/// the backend could not emulate, and the time of the first exit.
struct Handler {
    dispatcher: ExitDispatcher,
    assist: EmulationAssist,
    first_exit: OnceLock<Instant>,
}

impl ExitHandler for Handler {
    fn handle_exit(&self, exit: VmExit<'_>) -> ExitAction {
        if self.first_exit.get().is_none() {
            let _ = self.first_exit.set(Instant::now());
        }
        self.dispatcher.dispatch(exit)
    }
}

/// The devices' wiring on the backend: its interrupt lines and MSI sender, the host clock, each
/// recorded when there is a recording.
struct HostWiring<'a, V> {
    vm: &'a Arc<V>,
    recording: Option<&'a Recording>,
}

impl<V: SharedVm> Wiring for HostWiring<'_, V> {
    fn line(&self, gsi: u32) -> Line {
        recording::line(IrqLine::new(self.vm.clone(), gsi), gsi, self.recording)
    }

    fn msi(&self) -> Arc<dyn MsiTrigger> {
        recording::msi(MsiLine::new(self.vm.clone()), self.recording)
    }

    fn cmos(&self, low_ram: u64, high_ram: u64) -> Arc<dyn PioDevice> {
        recording::cmos(low_ram, high_ram, self.recording)
    }

    fn block_recorder(&self) -> Option<Arc<RecordWriter>> {
        self.recording.map(|r| r.writer().clone())
    }
}

enum Event {
    VcpuEnded {
        id: u32,
        result: Result<LoopExit, String>,
    },
    Signal(i32),
    Panicked(ThreadPanic),
    /// A thread could not start its work (it could not install its seccomp list).
    Failed(String),
}

enum Outcome {
    Stopped { vcpu: u32, reason: StopReason },
    Timeout(Duration),
    Signal(i32),
    Panicked(ThreadPanic),
}

/// What a thread of the VMM does when it panics: tells the main loop, which ends the VM.
fn report_panic(tx: mpsc::Sender<Event>) -> impl FnOnce(ThreadPanic) + Send + 'static {
    move |panic| {
        let _ = tx.send(Event::Panicked(panic));
    }
}

/// An error and its causes, joined with ": " as anyhow's `{:#}` joins them: the message of each
/// level names its own step only, so a thread's error keeps its OS error when sent as text.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Confines the calling thread to `kind`'s seccomp list, the first thing every thread does; when
/// it cannot, tells the main loop (which ends the VM) and returns `false`.
fn confine(filters: &Filters, kind: ThreadKind, tx: &mpsc::Sender<Event>) -> bool {
    match filters.apply(kind) {
        Ok(()) => true,
        Err(e) => {
            let thread = thread::current().name().unwrap_or("unnamed").to_string();
            let _ = tx.send(Event::Failed(format!("thread {thread}: {}", chain(&e))));
            false
        }
    }
}

/// Boots the VM `cli` describes and waits until it ends; returns the process exit status.
///
/// The steps, each a function of its own: [`load`] reads what the command line names and lays
/// out guest memory, [`open_backend`] opens the hypervisor, [`Vmm::build`] wires devices, loads
/// the guest and creates the vCPUs, [`Vmm::start`] runs every thread, [`Running::wait`] waits for
/// the VM to end and [`Running::shutdown`] stops it and says how it ended.
pub fn run(cli: &Cli, process_start: Instant) -> Result<u8> {
    crate::logger::init(cli.verbose, cli.log_file.as_deref(), process_start)?;
    // The backend is opened once the files are read and checked (bad input is reported the
    // same with or without /dev/kvm), and before guest memory is laid out for its
    // physical-address width.
    let mut backend = None;
    let loaded = load(cli, || Ok(backend.insert(open_backend()?).phys_bits()))?;
    let Some(hypervisor) = backend else {
        anyhow::bail!("the hypervisor backend was not opened");
    };
    let vmm = Vmm::build(cli, loaded, &hypervisor)?;
    let running = vmm.start(cli)?;
    let ended = running.wait(cli.timeout);
    running.shutdown(ended, cli.stats, process_start)
}

/// The hypervisor backend the VMM runs on: the one place that names KVM.
///
/// Everything else in this module is generic over `vmkit_vcpu::{Hypervisor, Vm, Vcpu}`. KVM stays
/// named here for two reasons: opening a backend is not part of the trait family (each has its
/// own device and constructor), and the seccomp lists (`src/seccomp.rs`) allow KVM's ioctls by
/// request number, so another backend needs lists of its own before it can run confined.
fn open_backend() -> Result<KvmHypervisor> {
    KvmHypervisor::new().context("cannot use KVM")
}

/// What the command line names, read and checked before any hypervisor is opened: the guest
/// image, the initramfs, the disk images, and the guest's memory.
struct Loaded {
    kernel_name: String,
    kernel: Cow<'static, [u8]>,
    initramfs: Option<Vec<u8>>,
    disk_images: Vec<DiskImage>,
    layout: GuestLayout,
    allocators: Allocators,
    memory: GuestMemoryMmap,
    recording: Option<Recording>,
}

/// Reads the guest image (or picks the built-in one), the initramfs and the disk images, and
/// allocates guest memory laid out for `--memory` and the backend's physical-address width,
/// which `phys_bits` gives (it opens the backend).
fn load(cli: &Cli, phys_bits: impl FnOnce() -> Result<u8>) -> Result<Loaded> {
    let image = match (&cli.kernel, &cli.firmware) {
        (Some(path), _) => Some(("kernel", path)),
        (None, Some(path)) => Some(("firmware", path)),
        (None, None) => None,
    };
    let (kernel_name, kernel): (String, Cow<'static, [u8]>) = match image {
        Some((what, path)) => (
            format!("{what} {}", path.display()),
            Cow::Owned(files::read_image(what, path)?),
        ),
        None => match cli.builtin.unwrap_or(BuiltinGuest::Hello) {
            BuiltinGuest::Hello => ("built-in hello guest".to_string(), Cow::Borrowed(HELLO_ELF)),
            BuiltinGuest::Exits => ("built-in exits guest".to_string(), Cow::Borrowed(EXITS_ELF)),
            BuiltinGuest::Assist => (
                "built-in assist guest".to_string(),
                Cow::Borrowed(ASSIST_ELF),
            ),
        },
    };
    let initramfs = match &cli.initramfs {
        Some(path) => {
            let bytes = files::read_image("initramfs", path)?;
            if bytes.is_empty() {
                anyhow::bail!("initramfs {} is empty", path.display());
            }
            Some(bytes)
        }
        None => None,
    };
    let disk_images = disks::open_images(&cli.disks)?;
    let mut layout =
        GuestLayout::with_phys_bits(cli.memory.size, phys_bits()?).context("--memory")?;
    // The ACPI tables' window is reported as ACPI data in every memory map a loader writes.
    mark_acpi_memory(&mut layout).context("cannot reserve the ACPI tables' memory")?;
    let allocators = layout
        .allocators()
        .context("cannot set up the address allocators")?;
    let memory = layout
        .create_guest_memory()
        .context("cannot allocate guest memory")?;
    let recording = match &cli.record_exits {
        Some(path) => Some(Recording::create(
            path,
            cli.record_limit.unwrap_or(DEFAULT_RECORD_LIMIT),
            &recording::Facts {
                // The file's name without its directory: a recording names no host path.
                guest: &match image {
                    Some((what, path)) => format!(
                        "{what} {}",
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    None => kernel_name.clone(),
                },
                memory: cli.memory.size,
                vcpus: cli.cpus.boot,
                cmdline: &cli.cmdline,
                com1: cli.serial != SerialConfig::Off,
                testdev: cli.testdev,
                disks: disk_images.iter().map(recording::DiskFacts::of).collect(),
            },
        )?),
        None => None,
    };
    Ok(Loaded {
        kernel_name,
        kernel,
        initramfs,
        disk_images,
        layout,
        allocators,
        memory,
        recording,
    })
}

/// A VM built and loaded, its vCPUs created and the boot vCPU in its entry state; nothing runs
/// yet.
pub struct Vmm<V: SharedVm> {
    vm: Arc<V>,
    vcpus: Vec<V::Vcpu>,
    memory: GuestMemoryMmap,
    handler: Arc<Handler>,
    serial: Option<Arc<Serial>>,
    serial_buffer: Option<SerialBuffer>,
    disks: Disks,
    recording: Option<Recording>,
}

impl<V: SharedVm> Vmm<V> {
    /// Creates the VM on `hypervisor`, puts the devices `cli` asks for on its buses, writes the
    /// firmware tables and loads the guest, then creates the vCPUs and puts the boot vCPU into
    /// the guest's entry state.
    fn build<H>(cli: &Cli, loaded: Loaded, hypervisor: &H) -> Result<Self>
    where
        H: Hypervisor<Vm = V>,
    {
        let Loaded {
            kernel_name,
            kernel,
            initramfs,
            disk_images,
            layout,
            mut allocators,
            memory,
            recording,
        } = loaded;
        let rec = recording.as_ref();
        let vm = Arc::new(
            hypervisor
                .create_vm(&layout, &memory)
                .context("cannot create the VM")?,
        );

        // The devices, wired to the backend (and recorded, with a recording).
        let wiring = HostWiring {
            vm: &vm,
            recording: rec,
        };
        let (serial, serial_buffer) = serial_device(&cli.serial, &wiring)?;
        let plan = devices::Plan {
            com1: serial.clone(),
            testdev: cli.testdev,
            disks: disk_images
                .into_iter()
                .enumerate()
                .map(|(index, image)| devices::Disk {
                    path: image.path().display().to_string(),
                    backend: recording::disk(image, index, rec),
                })
                .collect(),
        };
        let Devices {
            io_bus,
            mmio_bus,
            disks,
        } = devices::build(&wiring, plan, &layout, &memory, &mut allocators)?;
        let mut dispatcher = ExitDispatcher::new(io_bus, mmio_bus);
        if let Some(recording) = rec {
            dispatcher = dispatcher.with_recorder(recording.writer().clone());
        }
        let handler = Arc::new(Handler {
            dispatcher,
            assist: EmulationAssist::default(),
            first_exit: OnceLock::new(),
        });

        // The machine description, then the guest image that reads it.
        let machine = boot::Machine {
            layout: &layout,
            vcpus: usize::from(cli.cpus.boot),
            com1: serial.is_some(),
            pci_intx: disks.intx_routes().to_vec(),
        };
        let rsdp = boot::write_firmware_tables(&memory, &machine)?;
        let entry = boot::load(
            &memory,
            &layout,
            &boot::Image {
                name: &kernel_name,
                bytes: &kernel,
                firmware: cli.firmware.is_some(),
                cmdline: &cli.cmdline,
                initramfs: initramfs.as_deref(),
            },
            rsdp,
            hypervisor.supported_page_sizes(),
        )?;
        drop(kernel);
        drop(initramfs);

        // vCPUs: the BSP enters at the PVH entry point; application processors wait in the
        // in-kernel LAPIC for INIT/SIPI.
        let mut vcpus = vm
            .create_vcpus(u32::from(cli.cpus.boot))
            .context("cannot create the vCPUs")?;
        if let Some(bsp) = vcpus.first_mut() {
            match entry {
                boot::Entry::Pvh { entry, start_info } => bsp.setup_pvh(entry, start_info),
                boot::Entry::LongMode(entry) => bsp.setup_long_mode(&entry),
            }
            .context("cannot set the boot vCPU's entry state")?;
        }
        Ok(Self {
            vm,
            vcpus,
            memory,
            handler,
            serial,
            serial_buffer,
            disks,
            recording,
        })
    }

    /// Starts every thread, each under its own seccomp list: the serial output thread, one
    /// thread per vCPU, the signal thread and, when COM1 is the terminal, the stdin thread; then
    /// confines the calling thread to the main list.
    fn start(self, cli: &Cli) -> Result<Running<V>> {
        let Self {
            vm,
            vcpus,
            memory,
            handler,
            serial,
            serial_buffer,
            disks,
            recording,
        } = self;
        // One seccomp list per kind of thread: each thread spawned below installs its own first
        // thing, and this thread installs the main list once they all run.
        let filters =
            Filters::new(cli.seccomp, exit_code::SECCOMP_VIOLATION).context("--seccomp")?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        // The guest's serial output, drained to the host by a thread of its own.
        let serial_output = match serial_buffer {
            Some((output, drain)) => {
                let (filters, failed) = (filters.clone(), tx.clone());
                let thread =
                    lifecycle::spawn("serial-out".into(), report_panic(tx.clone()), move || {
                        if confine(&filters, ThreadKind::SerialOutput, &failed) {
                            drain.run()
                        }
                    })
                    .context("cannot start the serial output thread")?;
                Some((output, thread))
            }
            None => None,
        };
        let mut kickers = Vec::with_capacity(vcpus.len());
        let mut vcpu_threads = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            kickers.push(vcpu.kicker());
            let thread = spawn_vcpu_thread(vcpu, &handler, &memory, &stop, &filters, &tx)?;
            vcpu_threads.push(thread);
        }
        spawn_signal_thread(tx.clone(), stop.clone(), filters.clone())?;
        let raw_stdin = match (&cli.serial, &serial) {
            (SerialConfig::Tty, Some(serial)) => {
                spawn_stdin_thread(serial.clone(), tx, filters.clone())?;
                RawStdin::enable()
            }
            _ => None,
        };
        // Last, this thread's own list: every other thread runs under its own by now.
        filters
            .apply(ThreadKind::Main)
            .context("--seccomp: cannot confine the main thread")?;
        Ok(Running {
            _vm: vm,
            handler,
            serial,
            disks,
            recording,
            kickers,
            vcpu_threads,
            serial_output,
            raw_stdin,
            stop,
            events: rx,
        })
    }
}

/// Runs `vcpu` on a thread of its own until a handler stops the VM, the stop flag is set or the
/// backend fails; the thread then tells the main loop how its vCPU ended.
fn spawn_vcpu_thread<C>(
    mut vcpu: C,
    handler: &Arc<Handler>,
    memory: &GuestMemoryMmap,
    stop: &Arc<AtomicBool>,
    filters: &Filters,
    tx: &mpsc::Sender<Event>,
) -> Result<Supervised>
where
    C: Vcpu + Send + 'static,
{
    let (tx, handler, stop) = (tx.clone(), handler.clone(), stop.clone());
    let memory = memory.clone();
    let filters = filters.clone();
    let id = vcpu.id();
    lifecycle::spawn(format!("vcpu{id}"), report_panic(tx.clone()), move || {
        if !confine(&filters, ThreadKind::Vcpu, &tx) {
            return;
        }
        // The exits this thread dispatches are recorded as this vCPU's.
        vmkit_exits::record::set_current_vcpu(id);
        let result = vcpu
            .run_loop_with_assist(&*handler, &handler.assist, &memory, &stop)
            .map_err(|e| chain(&e));
        let _ = tx.send(Event::VcpuEnded { id, result });
    })
    .context("cannot start a vCPU thread")
}

/// A running VM: its threads, the kickers of its vCPUs and the channel they report on.
pub struct Running<V: SharedVm> {
    /// Kept until the end: the vCPUs and interrupt lines use it.
    _vm: Arc<V>,
    handler: Arc<Handler>,
    serial: Option<Arc<Serial>>,
    disks: Disks,
    recording: Option<Recording>,
    kickers: Vec<<V::Vcpu as Vcpu>::Kicker>,
    vcpu_threads: Vec<Supervised>,
    serial_output: Option<(SerialOutput, Supervised)>,
    raw_stdin: Option<RawStdin>,
    stop: Arc<AtomicBool>,
    events: mpsc::Receiver<Event>,
}

/// How and when the guest's run ended: [`Running::wait`]'s answer.
struct Ended {
    outcome: Result<Outcome>,
    at: Instant,
}

impl<V: SharedVm> Running<V> {
    /// Waits for the first vCPU to stop the VM, a signal, a panic, or `timeout`. A timeout too
    /// far away to represent (the command line refuses those) is no timeout.
    fn wait(&self, timeout: Option<Duration>) -> Ended {
        let deadline = timeout.and_then(|t| Some((Instant::now().checked_add(t)?, t)));
        let outcome = loop {
            let event = match deadline {
                Some((at, limit)) => {
                    match self
                        .events
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Ok(event) => event,
                        Err(RecvTimeoutError::Timeout) => break Ok(Outcome::Timeout(limit)),
                        Err(RecvTimeoutError::Disconnected) => {
                            break Err(anyhow::anyhow!("every vCPU thread ended"));
                        }
                    }
                }
                None => match self.events.recv() {
                    Ok(event) => event,
                    Err(_) => break Err(anyhow::anyhow!("every vCPU thread ended")),
                },
            };
            match event {
                Event::VcpuEnded {
                    id,
                    result: Ok(LoopExit::Stopped(reason)),
                } => break Ok(Outcome::Stopped { vcpu: id, reason }),
                // Only the stop flag ends a loop this way, and only this thread sets it.
                Event::VcpuEnded {
                    result: Ok(LoopExit::StopRequested),
                    ..
                } => {}
                Event::VcpuEnded { id, result: Err(e) } => {
                    break Err(anyhow::anyhow!("vCPU {id}: {e}"));
                }
                Event::Signal(signal) => break Ok(Outcome::Signal(signal)),
                Event::Panicked(panic) => break Ok(Outcome::Panicked(panic)),
                Event::Failed(e) => break Err(anyhow::anyhow!(e)),
            }
        };
        Ended {
            outcome,
            at: Instant::now(),
        }
    }

    /// Stops the VM and reports how it ended: the abandoned threads, the statistics (`stats`)
    /// and the outcome's line; returns the exit status.
    fn shutdown(
        self,
        ended: Ended,
        stats: Option<StatsFormat>,
        process_start: Instant,
    ) -> Result<u8> {
        let Ended {
            outcome,
            at: guest_end,
        } = ended;
        // Stop every vCPU: set the flag, kick them out of the guest and join them; then let the
        // serial output thread write what the guest left in the buffer. A thread still running
        // at the deadline is abandoned: the process exits without it.
        let stop_by = guest_end.checked_add(STOP_GRACE).unwrap_or(guest_end);
        self.stop.store(true, Ordering::Release);
        for kicker in &self.kickers {
            kicker.kick();
        }
        let mut abandoned = lifecycle::join_until(self.vcpu_threads, stop_by);
        let output_stats = self.serial_output.map(|(output, thread)| {
            output.close();
            abandoned.extend(lifecycle::join_until(vec![thread], stop_by));
            output
        });
        drop(self.raw_stdin);
        // A thread that panicked while the VM stopped ends it as a panic too.
        let outcome = match self.events.try_iter().find_map(|event| match event {
            Event::Panicked(panic) => Some(panic),
            _ => None,
        }) {
            Some(panic) => Ok(Outcome::Panicked(panic)),
            None => outcome,
        };

        // The last lines: abandoned threads, the statistics, how the VM ended, each within the
        // deadline (stderr may be a pipe nobody reads).
        let report_by = Instant::now()
            .checked_add(REPORT_GRACE)
            .unwrap_or_else(Instant::now);
        if !abandoned.is_empty() {
            stderr::line_until(
                format_args!(
                    "abandoned {} (still running {} s after the VM stopped)",
                    abandoned.join(", "),
                    STOP_GRACE.as_secs_f64()
                ),
                report_by,
            );
        }
        if let Some(recording) = &self.recording {
            // Written and closed here, after the vCPUs stopped: its summary comes first.
            stderr::line_until(format_args!("{}", recording.finish()), report_by);
        }
        let handler = &self.handler;
        if let Some(format) = stats {
            let report = stats::Report {
                exits: handler
                    .dispatcher
                    .stats()
                    .with_assist(handler.assist.counts()),
                disks: self.disks.stats(report_by),
                com1: output_stats.as_ref().map(SerialOutput::stats),
                log: crate::logger::stats(),
                timeline: stats::Timeline::new(
                    process_start,
                    handler.first_exit.get().copied(),
                    self.serial.as_deref().and_then(Serial::first_output_at),
                    guest_end,
                ),
            };
            // Written in one call, which holds stderr's lock: no other line of the VMM cuts it.
            let bytes = match format {
                StatsFormat::Text => {
                    let mut text = Vec::new();
                    let _ = report.write_text(&mut text);
                    text
                }
                StatsFormat::Json => match report.to_json_line() {
                    Ok(line) => line.into_bytes(),
                    Err(e) => {
                        format!("reference-vmm: cannot encode the statistics: {e}\n").into_bytes()
                    }
                },
            };
            stderr::write_until(&bytes, report_by);
        }
        let outcome = outcome?;
        Ok(report(&outcome, handler.assist.last_report(), report_by))
    }
}

/// COM1, and the buffer its output goes through to stdout or a file (drained by the serial
/// output thread, so a host that does not read never blocks the vCPU writing to the UART).
fn serial_device(config: &SerialConfig, wiring: &dyn Wiring) -> Result<Com1> {
    let (sink, limit): (Box<dyn Write + Send>, _) = match config {
        SerialConfig::Off => return Ok((None, None)),
        // An unbuffered handle: guest output appears as the guest writes it.
        SerialConfig::Tty => (
            Box::new(File::from(
                io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .context("cannot duplicate stdout")?,
            )),
            None,
        ),
        SerialConfig::File { path, limit } => (
            Box::new(
                files::open_output(path)
                    .with_context(|| format!("--serial: cannot open {}", path.display()))?,
            ),
            *limit,
        ),
        SerialConfig::Null => {
            let output: Box<dyn Write + Send> = Box::new(io::sink());
            let com1 = SerialDevice::new(wiring.line(COM1_IRQ), output);
            return Ok((Some(Arc::new(com1)), None));
        }
    };
    let (output, drain) = serial_output::channel(sink, serial_output::BUFFER_SIZE, limit);
    let uart_output: Box<dyn Write + Send> = Box::new(output.clone());
    Ok((
        Some(Arc::new(SerialDevice::new(
            wiring.line(COM1_IRQ),
            uart_output,
        ))),
        Some((output, drain)),
    ))
}

/// Forwards SIGINT and SIGTERM to the main loop. A second one, or one that arrives while the VM
/// is already stopping, ends the process at once.
fn spawn_signal_thread(
    tx: mpsc::Sender<Event>,
    stopping: Arc<AtomicBool>,
    filters: Filters,
) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    lifecycle::spawn("signals".into(), report_panic(tx.clone()), move || {
        if !confine(&filters, ThreadKind::Signal, &tx) {
            return;
        }
        let mut forwarded = false;
        for signal in signals.forever() {
            if forwarded || stopping.load(Ordering::Acquire) {
                let (name, code) = signal_status(signal);
                terminal::restore();
                stderr::line(format_args!("{name} received again; exiting at once"));
                std::process::exit(code.into());
            }
            forwarded = true;
            if tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    })
    .context("cannot start the signal thread")?;
    Ok(())
}

/// Feeds stdin to the guest's UART, waiting while its receive FIFO is full.
fn spawn_stdin_thread(
    serial: Arc<Serial>,
    tx: mpsc::Sender<Event>,
    filters: Filters,
) -> Result<()> {
    lifecycle::spawn("stdin".into(), report_panic(tx.clone()), move || {
        if !confine(&filters, ThreadKind::Stdin, &tx) {
            return;
        }
        let mut stdin = io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let taken = serial.enqueue_input(rest);
                rest = &rest[taken..];
                if taken == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    })
    .context("cannot start the stdin thread")?;
    Ok(())
}

/// The name of a stopping signal and its exit status.
fn signal_status(signal: i32) -> (&'static str, u8) {
    if signal == signal_hook::consts::SIGINT {
        ("SIGINT", exit_code::SIGINT)
    } else {
        ("SIGTERM", exit_code::SIGTERM)
    }
}

/// Says on stderr how the VM ended, unless the guest ended it itself, and returns the status.
/// The line is given up if stderr does not take it by `deadline`.
fn report(outcome: &Outcome, assist_report: Option<AssistReport>, deadline: Instant) -> u8 {
    let say = |message: std::fmt::Arguments<'_>| {
        stderr::line_until(message, deadline);
    };
    match outcome {
        Outcome::Stopped { vcpu, reason } => {
            match reason {
                StopReason::GuestExit(_) | StopReason::PowerOff => {}
                StopReason::Reset => say(format_args!(
                    "the guest requested a reset (vCPU {vcpu}); stopping"
                )),
                StopReason::TripleFault => {
                    say(format_args!("vCPU {vcpu} shut down (triple fault)"))
                }
                StopReason::InternalError { .. } => match assist_report {
                    Some(report) => say(format_args!("vCPU {vcpu} stopped the VM: {report}")),
                    None => say(format_args!("vCPU {vcpu} stopped the VM: {reason:?}")),
                },
                other => say(format_args!("vCPU {vcpu} stopped the VM: {other:?}")),
            }
            exit_code::for_stop(reason)
        }
        Outcome::Timeout(limit) => {
            say(format_args!(
                "timeout after {}s; VM stopped",
                limit.as_secs_f64()
            ));
            exit_code::TIMEOUT
        }
        Outcome::Signal(signal) => {
            let (name, code) = signal_status(*signal);
            say(format_args!("{name} received; VM stopped"));
            code
        }
        Outcome::Panicked(panic) => {
            say(format_args!("{panic}; VM stopped"));
            exit_code::VMM_PANIC
        }
    }
}

#[cfg(test)]
mod fake_backend_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_ends_the_vm_with_the_panic_status() {
        let (tx, rx) = mpsc::channel();
        let thread =
            lifecycle::spawn("vcpu1".into(), report_panic(tx), || panic!("a device bug")).unwrap();
        let Ok(Event::Panicked(panic)) = rx.recv_timeout(Duration::from_secs(30)) else {
            panic!("the panic was not reported");
        };
        assert_eq!(panic.thread, "vcpu1");
        assert!(panic.to_string().ends_with("a device bug"), "{panic}");
        // The thread itself ended: nothing is left to abandon.
        let abandoned =
            lifecycle::join_until(vec![thread], Instant::now() + Duration::from_secs(30));
        assert!(abandoned.is_empty());
        let status = report(&Outcome::Panicked(panic), None, Instant::now());
        assert_eq!(status, exit_code::VMM_PANIC);
        assert_ne!(status, exit_code::TRIPLE_FAULT);
    }

    #[test]
    fn each_stopping_signal_has_its_status() {
        assert_eq!(signal_status(libc::SIGINT), ("SIGINT", exit_code::SIGINT));
        assert_eq!(
            signal_status(libc::SIGTERM),
            ("SIGTERM", exit_code::SIGTERM)
        );
    }
}
