//! `--seccomp`: one allow-list of system calls per kind of the reference VMM's threads, which
//! each thread installs on itself. (A library of its own, so that the exit-path benchmark
//! measures the vCPU list the VMM installs.)
//!
//! Filters stack, and a thread inherits the filters of the thread that spawns it. So every thread
//! the VMM spawns installs its own list first thing, and the main thread installs its list last,
//! once it has spawned the others (a thread it spawned later would run under the main list).
//! Each list is what its thread does once the VM runs: everything that builds the VM (opening
//! files, creating the VM and its vCPUs) happens before any filter. `ioctl` is allowed per
//! request number (argument 1), `mmap` and `mprotect` never with `PROT_EXEC`, and every entry
//! says who needs it.
//!
//! A call outside its thread's list never ends that thread alone, which would leave the VM
//! waiting for it: with `--seccomp true` (the default) the kernel traps it (`SIGSYS`), and the
//! handler writes one line naming the thread and the system call number and ends the whole
//! process with the exit status the VMM chose ([`Filters::new`]). With `--seccomp log` the call
//! is allowed and the kernel logs it (to the audit log); with `--seccomp false` no filter is
//! installed. The lists are built with `seccompiler`, which also sets `PR_SET_NO_NEW_PRIVS` on
//! each thread (needed to install a filter without `CAP_SYS_ADMIN`, and a guarantee that nothing
//! the VMM executes gains privileges).
//!
//! Two additions depend on the build, never on the run. With debug assertions, std checks that
//! a descriptor is open before it closes it (`fcntl(F_GETFD)`), so lists with `close` allow that
//! too. A build instrumented for coverage (`cfg(coverage)`, which `cargo llvm-cov` sets) writes
//! its profile when the process exits, from whichever thread ends it, so such a build adds what
//! the profile runtime calls to every list. A release build contains neither.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use libc::{c_int, c_void, siginfo_t};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the lists cannot be built or a thread cannot be confined.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum Error {
    /// seccomp filters are not available
    Unavailable(#[source] std::io::Error),
    /// cannot compile the {list} list
    Compile {
        /// The list ([`ThreadKind::name`]).
        list: &'static str,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// cannot install the SIGSYS handler
    Handler(#[source] std::io::Error),
    /// cannot install the {list} list
    Install {
        /// The list ([`ThreadKind::name`]).
        list: &'static str,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
}

/// `--seccomp`: whether and how the VMM's threads are confined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// `true`, the default: a call outside a thread's list ends the VMM.
    Trap,
    /// `log`: a call outside a thread's list is allowed, and logged by the kernel.
    Log,
    /// `false`: no filter.
    Off,
}

/// Parses `--seccomp`: `true`, `false` or `log`, as Cloud Hypervisor spells them.
pub fn parse_mode(value: &str) -> Result<SeccompMode, String> {
    match value {
        "true" => Ok(SeccompMode::Trap),
        "false" => Ok(SeccompMode::Off),
        "log" => Ok(SeccompMode::Log),
        other => Err(format!("expected true, false or log, got {other:?}")),
    }
}

/// The kinds of thread the VMM runs, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs: waits for the VM to end, stops it, reports.
    Main,
    /// A vCPU: runs the guest and handles its exits, devices included.
    Vcpu,
    /// Feeds stdin to the guest's UART.
    Stdin,
    /// Forwards SIGINT and SIGTERM to the main thread.
    Signal,
    /// Drains the guest's serial output to stdout or a file.
    SerialOutput,
}

impl ThreadKind {
    /// Every kind, in the order of [`Filters`]' programs.
    pub const ALL: [Self; 5] = [
        Self::Main,
        Self::Vcpu,
        Self::Stdin,
        Self::Signal,
        Self::SerialOutput,
    ];

    /// The list's name, as the violation message gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
            Self::Stdin => "stdin",
            Self::Signal => "signal",
            Self::SerialOutput => "serial output",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Main => 0,
            Self::Vcpu => 1,
            Self::Stdin => 2,
            Self::Signal => 3,
            Self::SerialOutput => 4,
        }
    }
}

/// The compiled lists of one VMM, ready for its threads to install; cheap to clone.
#[derive(Clone, Debug)]
pub struct Filters {
    /// One program per [`ThreadKind`], in [`ThreadKind::ALL`]'s order; `None` with seccomp off.
    programs: Option<Arc<[BpfProgram; 5]>>,
}

impl Filters {
    /// Compiles every list for `mode` and, when a violation is to end the VMM, installs the
    /// `SIGSYS` handler that reports it and exits with `violation_status`. Nothing is installed
    /// on any thread yet.
    pub fn new(mode: SeccompMode, violation_status: u8) -> Result<Self, Error> {
        let mismatch = match mode {
            SeccompMode::Off => return Ok(Self { programs: None }),
            SeccompMode::Trap => SeccompAction::Trap,
            SeccompMode::Log => SeccompAction::Log,
        };
        // A kernel without seccomp filters, or without this action, says so now, before any
        // thread runs, rather than on the first thread that installs its list.
        for action in [SeccompAction::Allow, mismatch.clone()] {
            action_available(u32::from(action)).map_err(Error::Unavailable)?;
        }
        let [main, vcpu, stdin, signal, serial] =
            ThreadKind::ALL.map(|kind| compile(kind, mismatch.clone()));
        let programs = [main?, vcpu?, stdin?, signal?, serial?];
        if mode == SeccompMode::Trap {
            VIOLATION_STATUS.store(violation_status, Ordering::Relaxed);
            install_sigsys_handler().map_err(Error::Handler)?;
        }
        Ok(Self {
            programs: Some(Arc::new(programs)),
        })
    }

    /// Confines the calling thread to `kind`'s list (no-op with seccomp off). The thread's name
    /// is recorded first, for the violation message. A filter cannot be removed.
    pub fn apply(&self, kind: ThreadKind) -> Result<(), Error> {
        let Some(programs) = &self.programs else {
            return Ok(());
        };
        Label::set_current(kind);
        seccompiler::apply_filter(&programs[kind.index()]).map_err(|source| Error::Install {
            list: kind.name(),
            source,
        })
    }
}

/// Whether the kernel implements the filter return value `action` (`SECCOMP_GET_ACTION_AVAIL`).
fn action_available(action: u32) -> std::io::Result<()> {
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which points to `action`
    // for the duration of the call; it changes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The number of system calls `kind`'s list allows (each maybe only with some arguments),
/// the coverage addition included when the build is instrumented.
#[cfg(test)]
pub fn list_len(kind: ThreadKind) -> usize {
    allow_list(kind).0.len()
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, Error> {
    let compile = || -> Result<BpfProgram, seccompiler::Error> {
        let rules = allow_list(kind).into_rules()?;
        let arch = TargetArch::try_from(std::env::consts::ARCH)?;
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
        Ok(BpfProgram::try_from(filter)?)
    };
    compile().map_err(|source| Error::Compile {
        list: kind.name(),
        source,
    })
}

// ioctl request numbers: `_IOC(direction, 0xAE, number, size)` from the kernel's
// include/uapi/linux/kvm.h and include/uapi/asm-generic/ioctl.h; the sizes are those of the
// x86-64 structures (checked against kvm-bindings in the tests).

/// `_IO(KVMIO, nr)`.
const fn kvm_io(nr: u64) -> u64 {
    (0xAE << 8) | nr
}
/// `_IOW(KVMIO, nr, size)`: the kernel reads `size` bytes.
const fn kvm_iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | kvm_io(nr)
}
/// `_IOR(KVMIO, nr, size)`: the kernel writes `size` bytes.
const fn kvm_ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | kvm_io(nr)
}
/// `_IOWR(KVMIO, nr, size)`.
const fn kvm_iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | kvm_io(nr)
}

const KVM_CHECK_EXTENSION: u64 = kvm_io(0x03);
const KVM_IRQ_LINE: u64 = kvm_iow(0x61, 8); // struct kvm_irq_level
const KVM_RUN: u64 = kvm_io(0x80);
const KVM_GET_REGS: u64 = kvm_ior(0x81, 144); // struct kvm_regs
const KVM_SET_REGS: u64 = kvm_iow(0x82, 144);
const KVM_GET_SREGS: u64 = kvm_ior(0x83, 312); // struct kvm_sregs
const KVM_SET_SREGS: u64 = kvm_iow(0x84, 312);
const KVM_GET_MSRS: u64 = kvm_iowr(0x88, 8); // struct kvm_msrs (header)
const KVM_SET_MSRS: u64 = kvm_iow(0x89, 8);
const KVM_SET_MP_STATE: u64 = kvm_iow(0x99, 4); // struct kvm_mp_state
const KVM_GET_VCPU_EVENTS: u64 = kvm_ior(0x9F, 64); // struct kvm_vcpu_events
const KVM_SET_VCPU_EVENTS: u64 = kvm_iow(0xA0, 64);
const KVM_GET_XSAVE: u64 = kvm_ior(0xA4, 4096); // struct kvm_xsave
const KVM_SET_XSAVE: u64 = kvm_iow(0xA5, 4096);
const KVM_SIGNAL_MSI: u64 = kvm_iow(0xA5, 32); // struct kvm_msi
const KVM_GET_XCRS: u64 = kvm_ior(0xA6, 392); // struct kvm_xcrs
const KVM_SET_XCRS: u64 = kvm_iow(0xA7, 392);
/// Reads a terminal's attributes (include/uapi/asm-generic/ioctls.h).
const TCGETS: u64 = 0x5401;
/// Sets a terminal's attributes now.
const TCSETS: u64 = 0x5402;
/// `tcsetattr(TCSANOW)`: glibc sets the attributes, then reads them back to check them.
const TCSETATTR: [u64; 2] = [TCSETS, TCGETS];

/// A list under construction: system call → the argument rules it is allowed under (`None`:
/// always).
#[derive(Default)]
struct AllowList(BTreeMap<i64, Option<Vec<Rule>>>);

/// One rule: every condition holds.
type Rule = Vec<Condition>;

/// `(argument, mask, value)`: `argument & mask == value`, on the low 32 bits for ioctl requests
/// and flags, which the kernel takes as `unsigned int`/`int`.
type Condition = (u8, u64, u64);

impl AllowList {
    /// Allows `nr` with any arguments. `_who` says who needs it (kept beside the number so that
    /// no entry comes without its reason).
    fn allow(&mut self, nr: libc::c_long, _who: &str) -> &mut Self {
        self.0.insert(nr, None);
        self
    }

    /// Allows `nr` when one of `rules` holds (unless it is already allowed with any arguments).
    fn allow_if(&mut self, nr: libc::c_long, rules: &[Rule], _who: &str) -> &mut Self {
        let entry = self.0.entry(nr).or_insert_with(|| Some(Vec::new()));
        if let Some(existing) = entry {
            existing.extend(rules.iter().cloned());
        }
        self
    }

    /// Allows `ioctl` with each of `requests`.
    fn ioctls(&mut self, requests: &[u64], who: &str) -> &mut Self {
        let rules: Vec<Rule> = requests.iter().map(|&r| vec![(1, u64::MAX, r)]).collect();
        self.allow_if(libc::SYS_ioctl, &rules, who)
    }

    fn into_rules(self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::Error> {
        let mut out = BTreeMap::new();
        for (nr, rules) in self.0 {
            let compiled = match rules {
                None => Vec::new(),
                Some(rules) => rules
                    .into_iter()
                    .map(|rule| {
                        let conditions = rule
                            .into_iter()
                            .map(|(arg, mask, value)| {
                                let op = if mask == u64::MAX {
                                    SeccompCmpOp::Eq
                                } else {
                                    SeccompCmpOp::MaskedEq(mask)
                                };
                                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        SeccompRule::new(conditions)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            out.insert(nr, compiled);
        }
        Ok(out)
    }
}

/// Argument `arg` (a protection) does not ask for `PROT_EXEC`.
fn no_exec(arg: u8) -> Rule {
    vec![(arg, libc::PROT_EXEC as u64, 0)]
}

/// The list of `kind`.
fn allow_list(kind: ThreadKind) -> AllowList {
    let mut list = AllowList::default();
    common(&mut list);
    if kind != ThreadKind::Main {
        spawned(&mut list);
    }
    match kind {
        ThreadKind::Main => main_thread(&mut list),
        ThreadKind::Vcpu => vcpu_thread(&mut list),
        ThreadKind::Stdin => stdin_thread(&mut list),
        ThreadKind::Signal => signal_thread(&mut list),
        ThreadKind::SerialOutput => serial_output_thread(&mut list),
    }
    if cfg!(any(coverage, coverage_nightly)) {
        coverage_runtime(&mut list);
    }
    list
}

/// What every thread does.
fn common(list: &mut AllowList) {
    list.allow(
        libc::SYS_write,
        "log lines on stderr, the serial output, the SIGSYS handler's message, the \
             --record-exits recording (whichever thread fills its buffer writes it)",
    )
    .allow(
        libc::SYS_poll,
        "log lines wait (bounded) for stderr to take them",
    )
    .allow(libc::SYS_futex, "locks, channels, Once, thread joins")
    .allow(libc::SYS_sched_yield, "std's channels back off with it")
    .allow(
        libc::SYS_clock_gettime,
        "Instant/SystemTime when the vDSO falls back to the system call",
    )
    .allow(
        libc::SYS_rt_sigreturn,
        "returning from any signal handler (kick, SIGINT, SIGTERM)",
    )
    .allow_if(
        libc::SYS_sendto,
        &[vec![(3, u64::MAX, libc::MSG_DONTWAIT as u64)]],
        "signal-hook's SIGINT/SIGTERM handler, which runs on whichever thread the signal \
             lands on, wakes the signal thread",
    )
    .allow_if(libc::SYS_mmap, &[no_exec(2)], "the allocator")
    .allow_if(
        libc::SYS_mprotect,
        &[no_exec(2)],
        "the allocator (glibc grows a thread's arena in place)",
    )
    .allow(libc::SYS_munmap, "the allocator")
    .allow(libc::SYS_mremap, "the allocator (realloc of large blocks)")
    .allow(
        libc::SYS_madvise,
        "the allocator and glibc returning a thread's stack",
    )
    .allow(libc::SYS_brk, "the allocator (the main arena)")
    .allow(
        libc::SYS_exit_group,
        "ending the VMM; the SIGSYS handler's _exit",
    )
    .allow(
        libc::SYS_sigaltstack,
        "the end of a thread, or of the process: Rust removes its stack-overflow signal \
             stack",
    );
}

/// What every thread the main thread spawns does when it ends.
fn spawned(list: &mut AllowList) {
    list.allow(libc::SYS_exit, "the end of the thread").allow(
        libc::SYS_rt_sigprocmask,
        "the end of the thread: glibc blocks signals while it tears the thread down",
    );
}

/// Closing descriptors, which a build with debug assertions checks first (std's `OwnedFd` asks
/// `fcntl(F_GETFD)` whether the descriptor is open).
fn closes(list: &mut AllowList, who: &str) {
    list.allow(libc::SYS_close, who);
    if cfg!(debug_assertions) {
        list.allow_if(
            libc::SYS_fcntl,
            &[vec![(1, u64::MAX, libc::F_GETFD as u64)]],
            "debug builds: std checks a descriptor is open before closing it",
        );
    }
}

/// `thread::sleep` (glibc's `nanosleep` is `clock_nanosleep`).
fn sleeps(list: &mut AllowList, who: &str) {
    list.allow(libc::SYS_clock_nanosleep, who);
}

/// The main thread, from the moment the VM runs: waits (channels, deadlines), kicks the vCPUs,
/// joins the threads, restores the terminal, prints the statistics and its last lines, drops the
/// VM and exits.
fn main_thread(list: &mut AllowList) {
    list.allow(
        libc::SYS_tgkill,
        "kicking a vCPU out of KVM_RUN (pthread_kill)",
    )
    .allow(libc::SYS_getpid, "pthread_kill")
    .allow(
        libc::SYS_rt_sigprocmask,
        "pthread_kill blocks signals around the kick",
    )
    .ioctls(&TCSETATTR, "restoring the terminal stdin was in");
    closes(
        list,
        "dropping the VM: KVM, disk and serial descriptors; closing the --record-exits file",
    );
    sleeps(list, "joining the threads with a deadline");
}

/// A vCPU: `KVM_RUN` and the vCPU state the emulation assist reads and writes, the device
/// models' interrupts, the disks' I/O inside the exit that asked for it.
fn vcpu_thread(list: &mut AllowList) {
    list.ioctls(&[KVM_RUN], "running the guest (vmkit-vcpu's run loop)")
        .ioctls(
            &[KVM_SET_MP_STATE],
            "parking a halted vCPU until an interrupt (Vcpu::halt)",
        )
        .ioctls(
            &[
                KVM_GET_REGS,
                KVM_SET_REGS,
                KVM_GET_SREGS,
                KVM_SET_SREGS,
                KVM_GET_VCPU_EVENTS,
                KVM_SET_VCPU_EVENTS,
                KVM_GET_XSAVE,
                KVM_SET_XSAVE,
                KVM_GET_XCRS,
                KVM_SET_XCRS,
                KVM_GET_MSRS,
                KVM_SET_MSRS,
            ],
            "the emulation assist: the vCPU state it reads and completes (VcpuState)",
        )
        .ioctls(
            &[KVM_CHECK_EXTENSION],
            "the assist's XSAVE access checks the XSAVE size (KVM_CAP_XSAVE2) on the VM",
        )
        .ioctls(
            &[KVM_IRQ_LINE, KVM_SIGNAL_MSI],
            "device interrupts raised from the exit that caused them: vmkit-vcpu's IrqLine \
             (KVM_IRQ_LINE: UART, i8042, pc-testdev and virtio INTx lines) and MsiLine \
             (KVM_SIGNAL_MSI: virtio MSI-X)",
        )
        .allow(libc::SYS_pread64, "virtio-blk reads from a disk image")
        .allow(libc::SYS_pwrite64, "virtio-blk writes to a disk image")
        .allow(libc::SYS_fdatasync, "virtio-blk flushes a disk image")
        .allow(
            libc::SYS_rt_sigprocmask,
            "vmkit-vcpu unblocks the kick signal on its vCPU's thread",
        );
    closes(
        list,
        "dropping the vCPU when its loop ends (its descriptor)",
    );
}

/// The stdin thread: reads stdin, queues the bytes in the UART, raises its interrupt.
fn stdin_thread(list: &mut AllowList) {
    list.allow_if(
        libc::SYS_read,
        &[vec![(0, u64::MAX, libc::STDIN_FILENO as u64)]],
        "reading stdin, and nothing else",
    )
    .ioctls(
        &[KVM_IRQ_LINE],
        "the UART's receive interrupt (vmkit-vcpu's IrqLine)",
    );
    sleeps(list, "waiting while the UART's receive FIFO is full");
    closes(
        list,
        "dropping the UART (its interrupt line's descriptor) when the VM ended first and this \
         thread held the last reference",
    );
}

/// The signal thread: waits on signal-hook's self-pipe and forwards the signals; a second one
/// ends the VMM at once.
fn signal_thread(list: &mut AllowList) {
    list.ioctls(
        &TCSETATTR,
        "a second signal restores the terminal before it ends the VMM",
    )
    .allow_if(
        libc::SYS_recvfrom,
        &[
            vec![(3, u64::MAX, 0)],
            vec![(3, u64::MAX, libc::MSG_DONTWAIT as u64)],
        ],
        "waiting on signal-hook's self-pipe (a socket), and draining it",
    );
}

/// The serial output thread: waits for the guest's bytes and writes them out ([`common`] has
/// `write` and `futex`).
fn serial_output_thread(list: &mut AllowList) {
    closes(
        list,
        "dropping its stdout or file descriptor when the output ends",
    );
}

/// What the coverage profile runtime does when the process exits (on whichever thread ends
/// it): find or create the profile's directory (`mkdir`) and file (`openat`; `getpid` and
/// `uname` for `%p` and `%h` in its name), lock it (`fcntl`, or `flock`), read or map and merge
/// the profile already there, truncate and write it; `prctl` suspends the parent-death signal
/// meanwhile. `mmap`, `munmap` and `write` are on every list already. Only in builds
/// instrumented for coverage.
fn coverage_runtime(list: &mut AllowList) {
    for nr in [
        libc::SYS_openat,
        libc::SYS_mkdir,
        libc::SYS_fcntl,
        libc::SYS_flock,
        libc::SYS_lseek,
        libc::SYS_read,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_ftruncate,
        libc::SYS_getpid,
        libc::SYS_prctl,
        libc::SYS_uname,
        libc::SYS_close,
    ] {
        list.allow(nr, "the coverage profile runtime, at exit");
    }
}

/// The status the `SIGSYS` handler exits with (an atomic: the handler may read it).
static VIOLATION_STATUS: AtomicU8 = AtomicU8::new(u8::MAX);

thread_local! {
    /// The calling thread's name and list, set before it installs its filter, for the `SIGSYS`
    /// handler (a plain thread-local without destructor: reading it is async-signal-safe).
    static LABEL: Cell<Label> = const { Cell::new(Label::UNKNOWN) };
}

/// A thread's name (as much as fits) and list.
#[derive(Clone, Copy)]
struct Label {
    name: [u8; 32],
    len: usize,
    kind: Option<ThreadKind>,
}

impl Label {
    const UNKNOWN: Self = Self {
        name: [0; 32],
        len: 0,
        kind: None,
    };

    /// Records the calling thread's name and `kind`.
    fn set_current(kind: ThreadKind) {
        let mut label = Self {
            kind: Some(kind),
            ..Self::UNKNOWN
        };
        let current = std::thread::current();
        let name = current.name().unwrap_or("unnamed").as_bytes();
        label.len = name.len().min(label.name.len());
        label.name[..label.len].copy_from_slice(&name[..label.len]);
        LABEL.with(|cell| cell.set(label));
    }
}

/// A message assembled without allocating, for the signal handler.
struct Message {
    bytes: [u8; 192],
    len: usize,
}

impl Message {
    fn push(&mut self, part: &[u8]) {
        let room = self.bytes.len() - self.len;
        let n = part.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&part[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

/// The line the handler writes for a violation by the thread `label` of system call `nr`, ending
/// the process with `status`.
fn violation_message(label: &Label, nr: i32, status: u8) -> Message {
    let mut m = Message {
        bytes: [0; 192],
        len: 0,
    };
    m.push(b"reference-vmm: seccomp: thread ");
    if label.len == 0 {
        m.push(b"(unknown)");
    } else {
        m.push(&label.name[..label.len]);
    }
    if let Some(kind) = label.kind {
        m.push(b" (");
        m.push(kind.name().as_bytes());
        m.push(b" list)");
    }
    m.push(b" made forbidden system call ");
    if nr < 0 {
        m.push(b"-");
    }
    m.push_number(u64::from(nr.unsigned_abs()));
    m.push(b"; stopping the VMM (exit status ");
    m.push_number(u64::from(status));
    m.push(b")\n");
    m
}

/// The kernel's `siginfo_t` for `SIGSYS` on x86-64 (include/uapi/asm-generic/siginfo.h): the
/// three `int`s of the header, padding to the union, then `_sigsys`.
#[repr(C)]
#[allow(dead_code)] // The layout matters, not every field.
struct SigsysInfo {
    signo: c_int,
    errno: c_int,
    code: c_int,
    _pad: c_int,
    call_addr: *mut c_void,
    syscall: c_int,
    arch: u32,
}

/// `si_code` of a `SIGSYS` sent by a seccomp filter's trap.
const SYS_SECCOMP: c_int = 1;

/// Reports the forbidden call and ends the process. Only async-signal-safe calls: a read of a
/// thread-local without destructor, `write(2)` and `_exit(2)`.
extern "C" fn on_sigsys(_: c_int, info: *mut siginfo_t, _: *mut c_void) {
    const _: () = assert!(size_of::<SigsysInfo>() <= size_of::<siginfo_t>());
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; `SigsysInfo` is a
    // prefix of its x86-64 layout for SIGSYS (checked smaller above), read only when si_code
    // says a seccomp trap filled the `_sigsys` member.
    let nr = unsafe {
        let info = &*info.cast::<SigsysInfo>();
        if info.code == SYS_SECCOMP {
            info.syscall
        } else {
            -1
        }
    };
    let label = LABEL.try_with(Cell::get).unwrap_or(Label::UNKNOWN);
    let status = VIOLATION_STATUS.load(Ordering::Relaxed);
    let message = violation_message(&label, nr, status);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `message.bytes` is valid for reads
    // of `message.len` bytes (at most its size). A failed write is not actionable here.
    unsafe {
        libc::write(
            libc::STDERR_FILENO,
            message.bytes.as_ptr().cast(),
            message.len,
        );
        libc::_exit(c_int::from(status));
    }
}

/// Installs [`on_sigsys`] for the process.
fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags) that is completed
    // before use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is a valid sigaction whose handler has the SA_SIGINFO signature and only
    // makes async-signal-safe calls; the old action is not asked for.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The status the reference VMM chooses: 128 + SIGSYS.
    const STATUS: u8 = 159;

    #[test]
    fn mode_is_spelled_as_cloud_hypervisor_spells_it() {
        assert_eq!(parse_mode("true"), Ok(SeccompMode::Trap));
        assert_eq!(parse_mode("false"), Ok(SeccompMode::Off));
        assert_eq!(parse_mode("log"), Ok(SeccompMode::Log));
        let err = parse_mode("on").unwrap_err();
        assert!(err.contains("true, false or log"), "{err}");
    }

    #[test]
    fn every_list_compiles_in_every_mode() {
        for mode in [SeccompMode::Trap, SeccompMode::Log, SeccompMode::Off] {
            let filters = Filters::new(mode, STATUS).unwrap();
            assert_eq!(filters.programs.is_some(), mode != SeccompMode::Off);
        }
        for kind in ThreadKind::ALL {
            assert_eq!(ThreadKind::ALL[kind.index()], kind);
            assert!(list_len(kind) > 10, "{}", kind.name());
        }
    }

    #[test]
    fn the_lists_are_what_their_threads_need() {
        let has = |kind, nr| allow_list(kind).0.contains_key(&nr);
        // Only a vCPU runs the guest or touches the disks.
        for kind in ThreadKind::ALL {
            let vcpu = kind == ThreadKind::Vcpu;
            assert_eq!(has(kind, libc::SYS_pwrite64), vcpu, "{}", kind.name());
            assert_eq!(has(kind, libc::SYS_fdatasync), vcpu, "{}", kind.name());
            // No thread starts a program, opens a socket or a file once the VM runs (an
            // instrumented build opens its profile at exit).
            assert!(!has(kind, libc::SYS_execve));
            assert!(!has(kind, libc::SYS_socket));
            assert!(!has(kind, libc::SYS_clone3));
            assert_eq!(
                has(kind, libc::SYS_openat),
                cfg!(any(coverage, coverage_nightly))
            );
        }
        let ioctls = |kind| -> Vec<u64> {
            match allow_list(kind).0.remove(&libc::SYS_ioctl) {
                Some(Some(rules)) => rules.iter().map(|rule| rule[0].2).collect(),
                _ => Vec::new(),
            }
        };
        assert_eq!(ioctls(ThreadKind::Vcpu)[0], KVM_RUN);
        assert_eq!(ioctls(ThreadKind::Vcpu).len(), 17);
        assert_eq!(ioctls(ThreadKind::Stdin), [KVM_IRQ_LINE]);
        assert_eq!(ioctls(ThreadKind::Main), TCSETATTR);
        assert_eq!(ioctls(ThreadKind::Signal), TCSETATTR);
    }

    #[test]
    fn kvm_request_numbers_match_the_kernel_structures() {
        use kvm_bindings::*;
        let size = |n: usize| n as u64;
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_CHECK_EXTENSION, 0xAE03);
        assert_eq!(
            KVM_IRQ_LINE,
            kvm_iow(0x61, size(size_of::<kvm_irq_level>()))
        );
        assert_eq!(KVM_GET_REGS, kvm_ior(0x81, size(size_of::<kvm_regs>())));
        assert_eq!(KVM_SET_REGS, kvm_iow(0x82, size(size_of::<kvm_regs>())));
        assert_eq!(KVM_GET_SREGS, kvm_ior(0x83, size(size_of::<kvm_sregs>())));
        assert_eq!(KVM_SET_SREGS, kvm_iow(0x84, size(size_of::<kvm_sregs>())));
        assert_eq!(KVM_GET_MSRS, kvm_iowr(0x88, size(size_of::<kvm_msrs>())));
        assert_eq!(KVM_SET_MSRS, kvm_iow(0x89, size(size_of::<kvm_msrs>())));
        assert_eq!(
            KVM_SET_MP_STATE,
            kvm_iow(0x99, size(size_of::<kvm_mp_state>()))
        );
        let events = size(size_of::<kvm_vcpu_events>());
        assert_eq!(KVM_GET_VCPU_EVENTS, kvm_ior(0x9F, events));
        assert_eq!(KVM_SET_VCPU_EVENTS, kvm_iow(0xA0, events));
        assert_eq!(KVM_GET_XSAVE, kvm_ior(0xA4, size(size_of::<kvm_xsave>())));
        assert_eq!(KVM_SET_XSAVE, kvm_iow(0xA5, size(size_of::<kvm_xsave>())));
        assert_eq!(KVM_SIGNAL_MSI, kvm_iow(0xA5, size(size_of::<kvm_msi>())));
        assert_eq!(KVM_GET_XCRS, kvm_ior(0xA6, size(size_of::<kvm_xcrs>())));
        assert_eq!(KVM_SET_XCRS, kvm_iow(0xA7, size(size_of::<kvm_xcrs>())));
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_GET_XSAVE, 0x9000_AEA4);
        assert_eq!(TCSETS, libc::TCSETS);
        assert_eq!(TCGETS, libc::TCGETS);
    }

    #[test]
    fn the_violation_message_names_thread_list_and_call() {
        let mut label = Label {
            kind: Some(ThreadKind::Vcpu),
            ..Label::UNKNOWN
        };
        label.name[..5].copy_from_slice(b"vcpu3");
        label.len = 5;
        let m = violation_message(&label, 41, STATUS);
        assert_eq!(
            std::str::from_utf8(&m.bytes[..m.len]).unwrap(),
            "reference-vmm: seccomp: thread vcpu3 (vCPU list) made forbidden system call 41; \
             stopping the VMM (exit status 159)\n"
        );
        let m = violation_message(&Label::UNKNOWN, -1, STATUS);
        let text = std::str::from_utf8(&m.bytes[..m.len]).unwrap();
        assert!(
            text.contains("thread (unknown) made forbidden system call -1;"),
            "{text}"
        );
        let mut long = Message {
            bytes: [0; 192],
            len: 0,
        };
        long.push(&[b'x'; 300]);
        long.push_number(u64::MAX);
        assert_eq!(long.len, 192);
    }

    /// The environment variable that turns [`child`] into the confined process, naming what it
    /// does: `socket`, `ioctl` or `log`.
    const CHILD: &str = "VMKIT_SECCOMP_TEST_CHILD";

    /// Runs this test binary's [`child`] test in a new process with `CHILD=what`.
    fn run_child(what: &str) -> std::process::Output {
        let exe = std::env::current_exe().unwrap();
        Command::new(exe)
            .args(["--exact", "tests::child", "--nocapture"])
            .env(CHILD, what)
            .output()
            .unwrap()
    }

    /// In a child process started by [`run_child`]: a thread named `vcpu0` installs the vCPU
    /// list and makes a call outside it. Without `CHILD` this test does nothing.
    #[test]
    fn child() {
        let Ok(what) = std::env::var(CHILD) else {
            return;
        };
        let mode = if what == "log" {
            SeccompMode::Log
        } else {
            SeccompMode::Trap
        };
        let filters = Filters::new(mode, STATUS).unwrap();
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                filters.apply(ThreadKind::Vcpu).unwrap();
                // SAFETY: socket(2) takes no pointer; TIOCSTI (inject input into a terminal, an
                // ioctl the list does not name) reads one byte from a valid C string, and stdin
                // is /dev/null here (`Command::output`), so it could only fail with ENOTTY.
                unsafe {
                    match what.as_str() {
                        "ioctl" => libc::ioctl(libc::STDIN_FILENO, libc::TIOCSTI, c"x".as_ptr()),
                        _ => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0),
                    }
                }
            })
            .unwrap();
        let ret = thread.join().unwrap();
        // Only `log` gets here: the call went through (or failed on its own).
        println!("child survived a forbidden call (returned {ret})");
    }

    #[test]
    fn a_forbidden_call_on_a_vcpu_thread_ends_the_process_with_the_documented_status() {
        let out = run_child("socket");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(STATUS)), "{stderr}");
        let expected = format!(
            "thread vcpu0 (vCPU list) made forbidden system call {}; stopping the VMM",
            libc::SYS_socket
        );
        assert!(stderr.contains(&expected), "{stderr}");
    }

    #[test]
    fn an_ioctl_request_outside_the_list_ends_the_process_too() {
        let out = run_child("ioctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(STATUS)), "{stderr}");
        let expected = format!("made forbidden system call {}", libc::SYS_ioctl);
        assert!(stderr.contains(&expected), "{stderr}");
    }

    #[test]
    fn log_mode_lets_the_thread_run_on() {
        let out = run_child("log");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("child survived a forbidden call"),
            "{stdout}"
        );
    }
}
