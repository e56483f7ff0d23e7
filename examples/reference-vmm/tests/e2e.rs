//! End-to-end tests: the reference VMM binary booting real guests under KVM.
//!
//! They need `/dev/kvm`; where it is missing they fail with that reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` asks to skip them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use common::{Finished, kvm_available, run_with_limit};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmkit_boot::bzimage::BzImageBuilder;
use vmkit_boot::elf::ElfBuilder;
use vmkit_memory::vm_memory::GuestAddress;

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
/// Where the test guests are linked (and enter, in 32-bit protected mode with paging off).
const LOAD: u64 = 0x10_0000;

/// Exit statuses documented in the binary's `exit_code` module.
const RESET: i32 = 100;
const TRIPLE_FAULT: i32 = 101;
const TIMEOUT: i32 = 124;
const VMM_ERROR: i32 = 125;
const SIGINT: i32 = 130;
const SIGTERM: i32 = 143;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmkit-e2e-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PVH ELF whose code (32-bit, at [`LOAD`]) is `code`.
fn guest(code: &[u8]) -> Vec<u8> {
    ElfBuilder::new()
        .segment(GuestAddress(LOAD), code, 0x1000)
        .pvh_entry(GuestAddress(LOAD))
        .build()
}

/// `cli; hlt` forever: only a signal or the timeout ends it.
const SPIN_HLT: &[u8] = &[0xFA, 0xF4, 0xEB, 0xFD];

fn vmm(args: &[&str]) -> Command {
    let mut cmd = Command::new(VMM);
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> Output {
    vmm(args).output().unwrap()
}

fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the VMM did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn default_guest_prints_banner_and_exits_zero() {
    if !kvm_available() {
        return;
    }
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("vmkit hello: booted via PVH"),
        "stdout: {stdout:?}"
    );
    assert!(
        stdout.contains("memmap addr=0x100000"),
        "stdout: {stdout:?}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `line` has the log-line shape `reference-vmm: 1.234567ms: <thread> LEVEL:target: msg`.
fn is_log_line(line: &str, level: &str) -> bool {
    let Some(rest) = line.strip_prefix("reference-vmm: ") else {
        return false;
    };
    let Some((elapsed, rest)) = rest.split_once(": <") else {
        return false;
    };
    let Some((_thread, rest)) = rest.split_once("> ") else {
        return false;
    };
    elapsed.ends_with('s')
        && elapsed.starts_with(|c: char| c.is_ascii_digit())
        && rest.starts_with(&format!("{level}:"))
}

#[test]
fn verbosity_chooses_the_log_level_and_wins_over_the_environment() {
    if !kvm_available() {
        return;
    }
    // The default (warn) says nothing for an honest guest; -vv shows the loaders' debug lines,
    // even when VMKIT_LOG asks for none; VMKIT_LOG alone still works.
    let cases: [(&[&str], Option<&str>, bool); 4] = [
        (&[], None, false),
        (&["-vv"], Some("off"), true),
        (&["-v", "-v"], None, true),
        (&[], Some("debug"), true),
    ];
    for (args, env, debug_lines) in cases {
        let mut cmd = vmm(args);
        cmd.env_remove("VMKIT_LOG");
        if let Some(level) = env {
            cmd.env("VMKIT_LOG", level);
        }
        let out = run_with_limit(&mut cmd, Duration::from_secs(60), "the VMM");
        assert_eq!(out.status, Some(0), "{args:?} {env:?}: {out:?}");
        let debug = out
            .stderr
            .lines()
            .filter(|line| is_log_line(line, "DEBUG"))
            .count();
        assert_eq!(debug > 0, debug_lines, "{args:?} {env:?}: {}", out.stderr);
        if debug_lines {
            assert!(
                out.stderr
                    .contains("<main> DEBUG:vmkit_boot::pvh: PVH image loaded")
            );
        } else {
            assert_eq!(out.stderr, "", "{args:?} {env:?}");
        }
    }
}

#[test]
fn log_file_takes_the_lines_stderr_gets_none() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("log-file");
    let log = dir.0.join("vmm.log");
    std::fs::write(&log, "an earlier line\n").unwrap();
    let out = run_with_limit(
        &mut vmm(&["-vv", "--log-file", log.to_str().unwrap()]),
        Duration::from_secs(60),
        "the VMM",
    );
    assert_eq!(out.status, Some(0), "{out:?}");
    assert_eq!(out.stderr, "");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("an earlier line"),
        "appended, not truncated"
    );
    let rest: Vec<&str> = lines.collect();
    assert!(rest.iter().all(|line| is_log_line(line, "DEBUG")), "{text}");
    assert!(text.contains("PVH image loaded"), "{text}");
    // The vCPU thread's lines name it.
    assert!(
        text.contains("<vcpu0> DEBUG:vmkit_devices::debug_exit"),
        "{text}"
    );
    // A character device is a log file too.
    let out = run_with_limit(
        &mut vmm(&["-vv", "--log-file", "/dev/null"]),
        Duration::from_secs(60),
        "the VMM",
    );
    assert_eq!((out.status, out.stderr.as_str()), (Some(0), ""), "{out:?}");
}

#[test]
fn cmdline_memory_and_serial_file_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("serial");
    let log = dir.0.join("serial.log");
    let serial = format!("file={}", log.display());
    let out = run(&[
        "--cmdline",
        "console=ttyS0 quiet",
        "--memory",
        "size=5G",
        "--serial",
        &serial,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("cmdline \"console=ttyS0 quiet\""), "{text}");
    // 5 GiB: 3 GiB below the hole, 2 GiB above 4 GiB.
    assert!(
        text.contains("memmap addr=0x100000000 size=0x80000000 type=1"),
        "{text}"
    );
}

#[test]
fn stats_print_the_table_and_the_timeline() {
    if !kvm_available() {
        return;
    }
    // `--stats` alone is the text; a flag may follow it; `--stats=text` says so explicitly.
    for stats in ["--stats", "--stats=text"] {
        let out = run(&[stats, "--serial", "null"]);
        assert_eq!(out.status.code(), Some(0));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in [
            "com1",
            "debug-exit",
            "io-out",
            "first guest exit",
            "first serial byte",
            "guest exit",
            "process start at CLOCK_MONOTONIC",
        ] {
            assert!(stderr.contains(needle), "missing {needle:?} in {stderr}");
        }
        assert!(!stderr.contains('{'), "{stderr}");
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the call writes nothing else.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(status, 0);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The pio range named `name` in a `--stats=json` document.
fn pio_range<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["pio_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no pio range {name:?} in {stats}"))
}

/// `--stats=json` on the default guest: one JSON document on stderr's last line, whose numbers
/// agree with what the guest did (it printed its banner on COM1 and wrote its status to the
/// debug-exit port) and with one another.
#[test]
fn stats_json_reports_the_default_guest() {
    if !kvm_available() {
        return;
    }
    let before = monotonic_ns();
    let out = run(&["--stats=json"]);
    let after = monotonic_ns();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        out.stdout.starts_with(b"vmkit hello: booted via PVH"),
        "{stderr}"
    );
    // The guest ended the VM itself: the document is the only line, and the last.
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    let line = stderr.lines().last().unwrap();
    let stats: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(stats["version"], 1);

    let kinds = stats["exits"]["by_kind"].as_object().unwrap();
    assert_eq!(kinds.len(), 11, "{stats}");
    let sum: u64 = kinds.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(stats["exits"]["total"].as_u64(), Some(sum));
    let io_out = kinds["io-out"].as_u64().unwrap();
    assert!(io_out >= 1, "{stats}");
    // Every byte of the banner is one `out` to COM1, and the status one more to debug-exit.
    let debug_exit = pio_range(&stats, "debug-exit")["hits"].as_u64().unwrap();
    assert!(debug_exit >= 1, "{stats}");
    let com1_hits = pio_range(&stats, "com1")["hits"].as_u64().unwrap();
    assert!(com1_hits >= out.stdout.len() as u64, "{stats}");
    assert!(io_out >= out.stdout.len() as u64 + debug_exit, "{stats}");
    assert_eq!(pio_range(&stats, "debug-exit")["base"], 0xf4);

    let com1 = &stats["com1"];
    let written = com1["written"].as_u64().unwrap();
    assert!(written > 0, "{stats}");
    assert_eq!(written, out.stdout.len() as u64, "{stats}");
    for field in [
        "dropped",
        "dropped_full",
        "dropped_limit",
        "failed",
        "pending",
    ] {
        assert_eq!(com1[field], 0, "{field}: {stats}");
    }
    assert_eq!(stats["disks"], serde_json::json!([]));
    assert_eq!(stats["log"]["suppressed"], 0, "{stats}");
    assert_eq!(stats["log"]["unwritten"], 0, "{stats}");
    assert_eq!(stats["assist"]["stopped"], 0, "{stats}");
    assert!(stats["assist"]["completed"].as_object().unwrap().len() > 20);
    for space in ["unclaimed", "bad_size"] {
        for field in ["pio_read", "pio_write", "mmio_read", "mmio_write"] {
            assert!(stats[space][field].is_u64(), "{space}.{field}: {stats}");
        }
    }

    // The timeline: in order, and the process start between the spawn and the exit.
    let t = &stats["timeline"];
    let first_exit = t["first_guest_exit_ms"].as_f64().unwrap();
    let first_byte = t["first_serial_byte_ms"].as_f64().unwrap();
    let guest_exit = t["guest_exit_ms"].as_f64().unwrap();
    assert!(
        0.0 < first_exit && first_exit <= first_byte && first_byte <= guest_exit,
        "{t}"
    );
    let start = t["process_start_monotonic_ns"].as_u64().unwrap();
    assert!(
        before <= start && start <= after,
        "{before} {start} {after}"
    );
    assert!(start + (guest_exit * 1e6) as u64 <= after, "{t}");
}

/// With a line after it (how the VM ended), the document is still one whole line.
#[test]
fn stats_json_comes_before_the_line_saying_how_the_vm_ended() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("stats-json-timeout");
    let kernel = dir.file("k.elf", &guest(SPIN_HLT));
    let out = run(&[
        "--stats=json",
        "--kernel",
        kernel.to_str().unwrap(),
        "--serial",
        "off",
        "--timeout",
        "0.5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(TIMEOUT), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr:?}");
    assert_eq!(lines[1], "reference-vmm: timeout after 0.5s; VM stopped");
    let stats: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(stats["com1"], serde_json::Value::Null, "{stats}");
    assert_eq!(
        stats["timeline"]["first_serial_byte_ms"],
        serde_json::Value::Null
    );
    // A halted vCPU waits in the kernel's LAPIC: whether any exit came, the timeline agrees.
    let total = stats["exits"]["total"].as_u64().unwrap();
    assert_eq!(
        stats["timeline"]["first_guest_exit_ms"].is_null(),
        total == 0,
        "{stats}"
    );
    assert!(
        stats["timeline"]["guest_exit_ms"].as_f64().unwrap() >= 500.0,
        "{stats}"
    );
}

#[test]
fn guest_status_and_serial_output_of_a_custom_kernel() {
    if !kvm_available() {
        return;
    }
    let code = [
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'X', // mov al, 'X'
        0xEE, // out dx, al
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xB8, 0x07, 0x00, 0x00, 0x00, // mov eax, 7
        0xEF, // out dx, eax
        0xF4, // hlt
    ];
    let dir = TempDir::new("status");
    let kernel = dir.file("k.elf", &guest(&code));
    let out = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.stdout, b"X");
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn i8042_reset_ends_the_vm_with_the_reset_status() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("reset");
    let kernel = dir.file("k.elf", &guest(&[0xB0, 0xFE, 0xE6, 0x64, 0xF4]));
    let out = run(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(RESET));
    assert!(stderr_line(&out).contains("reset"));
}

#[test]
fn triple_fault_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    // lidt [LOAD + 0x10] (a zero-limit IDT), then ud2: #UD → #GP → #DF → shutdown.
    let mut code = vec![0x0F, 0x01, 0x1D, 0x10, 0x00, 0x10, 0x00, 0x0F, 0x0B];
    code.resize(0x16, 0);
    let dir = TempDir::new("triple");
    let kernel = dir.file("k.elf", &guest(&code));
    let out = run(&["--kernel", kernel.to_str().unwrap(), "--timeout", "20"]);
    assert_eq!(
        out.status.code(),
        Some(TRIPLE_FAULT),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stderr_line(&out).contains("triple fault"));
}

#[test]
fn timeout_stops_a_guest_halted_with_interrupts_off() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("timeout");
    let kernel = dir.file("k.elf", &guest(SPIN_HLT));
    let mut child = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--timeout",
        "0.5",
        "--cpus",
        "boot=2",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(TIMEOUT));
}

/// Waits until process `pid` runs a thread named `name` (the VMM's `signals` thread exists once
/// its signal handlers are installed): a signal sent earlier would meet the default action.
fn wait_for_thread(pid: u32, name: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            });
        if found {
            return;
        }
        assert!(start.elapsed() < limit, "no thread {name} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal_stops_the_vm(signal: libc::c_int, expected: i32) {
    let dir = TempDir::new(&format!("signal{signal}"));
    let kernel = dir.file("k.elf", &guest(SPIN_HLT));
    let mut child = vmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "boot=2",
        "--stats",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Let the guest reach its halt loop (the first exit cannot be observed from here), with the
    // VMM's signal handlers installed.
    wait_for_thread(child.id(), "signals", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: `child.id()` is the pid of a child this test spawned and has not yet reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(expected));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("received; VM stopped"), "{stderr}");
}

#[test]
fn sigterm_stops_the_vm_and_joins_the_vcpus() {
    if kvm_available() {
        signal_stops_the_vm(libc::SIGTERM, SIGTERM);
    }
}

#[test]
fn sigint_stops_the_vm() {
    if kvm_available() {
        signal_stops_the_vm(libc::SIGINT, SIGINT);
    }
}

/// Floods COM1: `rep outsb` of 4 KiB (the guest's own code page) to port 0x3f8, forever.
const SERIAL_FLOOD: &[u8] = &[
    0xBE, 0x00, 0x00, 0x10, 0x00, // mov esi, 0x100000
    0xB9, 0x00, 0x10, 0x00, 0x00, // mov ecx, 0x1000
    0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
    0xF3, 0x6E, // rep outsb
    0xEB, 0xEE, // jmp to the start
];

/// The number before `what` in the `com1 output:` line of `--stats`.
fn com1_count(stderr: &str, what: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("com1 output:"))
        .unwrap_or_else(|| panic!("no com1 output line in {stderr}"));
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    let number = line[..at].split_whitespace().last().unwrap();
    number
        .trim_start_matches('(')
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"))
}

/// A VMM whose stdout is a pipe that nobody reads (its read end kept open, and shrunk to one
/// page so that it fills after 4 KiB), with stderr collected by a thread.
struct UnreadStdout {
    child: Child,
    _read_end: std::fs::File,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn_unread_stdout(args: &[&str]) -> UnreadStdout {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nothing else.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: F_SETPIPE_SZ only resizes the pipe behind the open descriptor.
    let resized = unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(resized >= 4096, "F_SETPIPE_SZ: {resized}");
    let mut child = vmm(args)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    UnreadStdout {
        child,
        _read_end: read_end,
        stderr,
    }
}

/// A guest flooding COM1 while nobody reads stdout: the vCPU never waits for the host, so
/// `--timeout` stops the VM on time; the bytes the host did not take are dropped and counted,
/// and the serial output thread, blocked in its write, is abandoned and named.
#[test]
fn serial_flood_nobody_reads_timeout_still_stops_the_vm() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("flood");
    let kernel = dir.file("k.elf", &guest(SERIAL_FLOOD));
    let start = Instant::now();
    let mut vmm = spawn_unread_stdout(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--timeout",
        "2",
        "--stats",
    ]);
    // The timeout, then the documented bound (1 s for the threads, 0.5 s for the last lines),
    // with plenty of slack for a loaded machine and the VMM's start-up.
    let status = wait_with_limit(&mut vmm.child, Duration::from_secs(2 + 10));
    let elapsed = start.elapsed();
    let stderr = vmm.stderr.join().unwrap();
    assert_eq!(status.code(), Some(TIMEOUT), "{stderr}");
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(stderr.contains("timeout after 2s; VM stopped"), "{stderr}");
    assert!(stderr.contains("abandoned serial-out"), "{stderr}");
    assert!(
        com1_count(&stderr, "while the host did not read") > 0,
        "{stderr}"
    );
    assert!(com1_count(&stderr, " dropped") > 0, "{stderr}");
}

/// `--serial file=PATH,limit=SIZE`: the file gets exactly SIZE bytes of the flood, the rest is
/// dropped and counted.
#[test]
fn serial_file_limit_caps_the_output() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("limit");
    let kernel = dir.file("k.elf", &guest(SERIAL_FLOOD));
    let log = dir.0.join("serial.log");
    let serial = format!("file={},limit=10K", log.display());
    let out = run_with_limit(
        &mut vmm(&[
            "--kernel",
            kernel.to_str().unwrap(),
            "--serial",
            &serial,
            "--timeout",
            "1",
            "--stats",
        ]),
        Duration::from_secs(60),
        "the VMM",
    );
    assert_eq!(out.status, Some(TIMEOUT), "{}", out.stderr);
    let written = std::fs::read(&log).unwrap();
    assert_eq!(written.len(), 10 << 10);
    // The guest's code page, repeated.
    assert_eq!(&written[..SERIAL_FLOOD.len()], SERIAL_FLOOD);
    assert_eq!(com1_count(&out.stderr, "bytes written"), 10 << 10);
    assert!(
        com1_count(&out.stderr, "over the limit") > 0,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("abandoned"), "{}", out.stderr);
}

/// A second signal while the VM is stopping ends the VMM at once, with that signal's status.
/// The stop is held up by the serial output thread, blocked on a stdout nobody reads, which the
/// VMM would otherwise wait a second for.
#[test]
fn a_second_signal_ends_the_vmm_at_once() {
    if !kvm_available() {
        return;
    }
    let dir = TempDir::new("second-signal");
    let kernel = dir.file("k.elf", &guest(SERIAL_FLOOD));
    let mut vmm = spawn_unread_stdout(&["--kernel", kernel.to_str().unwrap()]);
    // Let the flood fill the pipe, with the VMM's signal handlers installed.
    wait_for_thread(vmm.child.id(), "signals", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let pid = vmm.child.id() as libc::pid_t;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `pid` is a child this test spawned and has not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
    let status = wait_with_limit(&mut vmm.child, Duration::from_secs(30));
    let stderr = vmm.stderr.join().unwrap();
    // Both signals are pending together: the signal thread may take them in either order, and
    // the one it takes second decides the status.
    let second = if stderr.contains("SIGTERM received again; exiting at once") {
        SIGTERM
    } else {
        assert!(
            stderr.contains("SIGINT received again; exiting at once"),
            "{stderr}"
        );
        SIGINT
    };
    assert_eq!(status.code(), Some(second), "{stderr}");
    // At once: not after the stop's deadline, which would name the threads it abandoned.
    assert!(!stderr.contains("abandon"), "{stderr}");
}

#[test]
fn four_vcpus_boot_hello_and_exit_promptly() {
    if !kvm_available() {
        return;
    }
    let out = run(&["--cpus", "boot=4"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vmkit hello: booted via PVH"));
    assert_eq!(out.status.code(), Some(0));
}

/// One line on stderr, naming the VMM, and no panic.
fn one_line(out: &Finished) -> &str {
    let stderr = out.stderr.as_str();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr, got {stderr:?}"
    );
    assert!(stderr.starts_with("reference-vmm: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that lives for the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Bad user input: one line on stderr naming the problem, status 125, no panic. No KVM needed.
/// Every case runs under a time limit: a special file that made the VMM wait (a FIFO nobody
/// writes) fails the test instead of hanging it.
#[test]
fn bad_input_gets_one_line_and_a_nonzero_status() {
    let dir = TempDir::new("bad");
    let not_elf = dir.file(
        "not-elf",
        b"this is not an ELF image at all, just some text....................",
    );
    let no_note = dir.file(
        "no-note.elf",
        &ElfBuilder::new()
            .segment(GuestAddress(LOAD), SPIN_HLT, 0x1000)
            .build(),
    );
    let old_bzimage = dir.file(
        "old-bzimage",
        &BzImageBuilder::new().protocol(0x020b).build(),
    );
    // A decompressor needing 1 GiB of room from 16 MiB cannot run in 512 MiB of RAM.
    let greedy_bzimage = dir.file(
        "greedy-bzimage",
        &BzImageBuilder::new().init_size(1 << 30).build(),
    );
    let empty = dir.file("empty.cpio", b"");
    let missing = dir.0.join("missing.elf");
    let fifo = dir.0.join("fifo");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    // One byte over the documented 1 GiB limit, sparse: nothing is written, nothing read.
    let huge = dir.0.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let huge = huge.to_str().unwrap();
    let dir_path = dir.0.to_str().unwrap();
    let fifo_disk = format!("path={fifo}");
    let zero_disk = "path=/dev/zero".to_string();
    let serial_limit_zero = format!("file={}/serial.log,limit=0", dir.0.display());
    let serial_limit_huge = format!("file={}/serial.log,limit=99999999999T", dir.0.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", missing.to_str().unwrap()],
            "cannot read kernel",
        ),
        (
            vec!["--kernel", not_elf.to_str().unwrap()],
            "neither an ELF file (vmlinux, PVH) nor a Linux bzImage",
        ),
        (vec!["--kernel", old_bzimage.to_str().unwrap()], "2.11"),
        (
            vec!["--kernel", greedy_bzimage.to_str().unwrap()],
            "init_size",
        ),
        (
            vec!["--initramfs", missing.to_str().unwrap()],
            "cannot read initramfs",
        ),
        (vec!["--initramfs", empty.to_str().unwrap()], "is empty"),
        (vec!["--kernel", no_note.to_str().unwrap()], "PVH"),
        (vec!["--memory", "size=1M"], "--memory"),
        (vec!["--memory", "size=lots"], "--memory"),
        (vec!["--cpus", "boot=0"], "--cpus"),
        (vec!["--timeout", "-1"], "--timeout"),
        (vec!["--serial", "pty"], "--serial"),
        (vec!["--stats=yaml"], "--stats"),
        (vec!["--stats="], "--stats"),
        // A bare word after --stats is not its value.
        (vec!["--stats", "json"], "unexpected argument 'json'"),
        (vec!["--no-such-flag"], "--no-such-flag"),
        (vec!["stray"], "stray"),
        // Special files: refused without reading (a character device never ends) or waiting
        // (a FIFO nobody writes).
        (
            vec!["--kernel", "/dev/zero"],
            "kernel /dev/zero is a character device, not a regular file",
        ),
        (
            vec!["--initramfs", "/dev/zero"],
            "initramfs /dev/zero is a character device",
        ),
        (vec!["--kernel", fifo], "is a FIFO, not a regular file"),
        (vec!["--firmware", fifo], "is a FIFO, not a regular file"),
        (vec!["--initramfs", fifo], "is a FIFO, not a regular file"),
        (
            vec!["--disk", &fifo_disk],
            "is a FIFO, not a regular file or a block device",
        ),
        (
            vec!["--disk", &zero_disk],
            "/dev/zero is a character device, not a regular file or a block device",
        ),
        (vec!["--log-file", fifo], "is a FIFO, not a regular file"),
        (
            vec!["--log-file", dir_path],
            "is a directory, not a regular file",
        ),
        // Over the size limit.
        (vec!["--kernel", huge], "more than the 1073741824 bytes"),
        (vec!["--initramfs", huge], "more than the 1073741824 bytes"),
        // Numbers that overflow are refused when the command line is parsed.
        (vec!["--timeout", "1e19"], "at most 1000000000 seconds"),
        (vec!["--timeout", "inf"], "--timeout"),
        (vec!["--memory", "size=99999999999T"], "too large"),
        (vec!["--serial", &serial_limit_huge], "too large"),
        (
            vec!["--serial", &serial_limit_zero],
            "limit must be at least 1 byte",
        ),
    ];
    for (args, needle) in cases {
        let out = run_with_limit(&mut vmm(&args), Duration::from_secs(60), "the VMM");
        assert_eq!(out.status, Some(VMM_ERROR), "{args:?}: {out:?}");
        let line = one_line(&out);
        assert!(line.contains(needle), "{args:?}: {line:?} lacks {needle:?}");
        // Each cause is printed once: no message repeats its source.
        assert!(
            line.matches("(os error").count() <= 1,
            "{args:?}: {line:?} names an OS error twice"
        );
    }
}

#[test]
fn help_exits_zero() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--cmdline",
        "--memory",
        "--cpus",
        "--serial",
        "--timeout",
        "--stats",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}
