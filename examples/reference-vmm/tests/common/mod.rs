//! Helpers shared by the reference VMM's integration tests.

pub mod linux;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Whether the KVM tests run: `false` (with a note) when `VMKIT_SKIP_KVM_TESTS=1` asks to skip
/// them; a panic naming the reason when `/dev/kvm` cannot be opened.
pub fn kvm_available() -> bool {
    if std::env::var_os("VMKIT_SKIP_KVM_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipped: VMKIT_SKIP_KVM_TESTS=1");
        return false;
    }
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test needs /dev/kvm ({e}); set VMKIT_SKIP_KVM_TESTS=1 to skip the KVM tests explicitly"
        );
    }
    true
}

/// How a child process ended and what it printed.
#[derive(Debug)]
pub struct Finished {
    /// The exit status, `None` when a signal ended it.
    pub status: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Runs `command` with stdin closed and its output captured, killing it (and failing the test)
/// when it runs longer than `limit`. A program that cannot be started fails the test with
/// `missing` in the message.
pub fn run_with_limit(command: &mut Command, limit: Duration, missing: &str) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {:?} ({e}): {missing}", command.get_program()));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let joined =
        |reader: thread::JoinHandle<String>| reader.join().expect("a pipe reader panicked");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child failed") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not exit within {limit:?}; stdout so far:\n{}\nstderr:\n{}",
                command.get_program(),
                joined(stdout),
                joined(stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status: status.code(),
        stdout: joined(stdout),
        stderr: joined(stderr),
    }
}

/// The QEMU peer the cross-checks run.
pub const QEMU: &str = "qemu-system-x86_64";

/// How long a cross-check's VM may run before the test fails.
pub const LIMIT: Duration = Duration::from_secs(60);

/// QEMU booting the PVH ELF `kernel` with `cmdline` and `memory_mib` MiB on q35 under KVM, COM1 on
/// stdout and the debug-exit port the project's guests use (0xF4); callers add devices.
pub fn qemu_command(kernel: &str, cmdline: &str, memory_mib: u32) -> Command {
    let mut command = Command::new(QEMU);
    command.args([
        "-machine",
        "q35,accel=kvm",
        "-cpu",
        "host,-arch-capabilities",
    ]);
    command.args(["-nodefaults", "-kernel", kernel, "-append", cmdline]);
    command.arg("-m").arg(format!("{memory_mib}M"));
    command.args(["-serial", "stdio", "-display", "none", "-no-reboot"]);
    command.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    command
}

/// Runs a [`qemu_command`] and puts the guest's status in place of QEMU's: `isa-debug-exit`
/// makes QEMU exit with `(status << 1) | 1`, so an even code (QEMU ended for another reason)
/// fails the test.
pub fn run_qemu(command: &mut Command) -> Finished {
    let mut finished = run_with_limit(
        command,
        LIMIT,
        "install Debian's qemu-system-x86 (scripts/setup.sh does)",
    );
    if let Some(code) = finished.status {
        assert_eq!(
            code & 1,
            1,
            "QEMU exited with {code}, not through the debug-exit port; stdout:\n{}\nstderr:\n{}",
            finished.stdout,
            finished.stderr
        );
        finished.status = Some(code >> 1);
    }
    finished
}

/// xorshift64: a fixed, reproducible sequence.
pub struct Random(pub u64);

impl Random {
    /// The next number of the sequence.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Sign-extends bit 47, as a canonical 4-level address has it.
pub fn canonical(gva: u64) -> u64 {
    ((gva << 16) as i64 >> 16) as u64
}

/// MAXPHYADDR as the vCPUs see it (KVM passes leaf 0x8000_0008 through).
pub fn max_phys_bits(kvm: &vmkit_vcpu::KvmHypervisor) -> u8 {
    kvm.supported_cpuid()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// What the walker and `KVM_TRANSLATE` agreed on for one address.
#[derive(Debug)]
pub enum Agreed {
    /// Both translate it, to the same guest-physical address.
    Valid(vmkit_paging::Translation),
    /// Neither translates it; the walker's page fault.
    Invalid(vmkit_paging::PageFault),
    /// Not canonical: the processor raises #GP before any walk. `KVM_TRANSLATE` does not check
    /// canonicality (it indexes the tables with bits 47:12 alone), so its answer must be the
    /// walk of the sign-extended address; `valid` says whether there is one.
    NonCanonical {
        /// Whether KVM (and the walk of the sign-extended address) translates it.
        valid: bool,
    },
}

/// Translates `gva` as a supervisor read with `paging`'s walker and with `KVM_TRANSLATE` on
/// `vcpu`, asserts that the guest-physical address and the validity agree (KVM reports nothing
/// else faithfully), and says what they agreed on.
pub fn agree_with_kvm(
    vcpu: &vmkit_vcpu::KvmVcpu,
    memory: &vmkit_memory::vm_memory::GuestMemoryMmap,
    paging: &vmkit_paging::X86Paging,
    gva: u64,
) -> Agreed {
    use vmkit_paging::{Access, Privilege, WalkError};
    use vmkit_vcpu::Vcpu;
    let access = Access::read(Privilege::Supervisor);
    let kvm = vcpu
        .translate(gva)
        .unwrap_or_else(|e| panic!("KVM_TRANSLATE of {gva:#x}: {e}"));
    match paging.probe(memory, gva, access) {
        Ok(t) => {
            assert_eq!(
                kvm,
                Some(t.address),
                "{gva:#x}: KVM {kvm:x?}, walker {t:x?}"
            );
            Agreed::Valid(t)
        }
        Err(WalkError::PageFault(fault)) => {
            assert_eq!(kvm, None, "{gva:#x}: KVM {kvm:x?}, walker {fault}");
            Agreed::Invalid(fault)
        }
        Err(WalkError::NonCanonical(_)) => {
            let walked = paging.probe(memory, canonical(gva), access);
            assert_eq!(kvm, walked.ok().map(|t| t.address), "{gva:#x}");
            Agreed::NonCanonical {
                valid: kvm.is_some(),
            }
        }
        Err(other) => panic!("{gva:#x}: {other}"),
    }
}
