//! `--seccomp`: every thread of the VMM runs under its own filter by default, `log` and `false`
//! let the VM run. (What a forbidden call does is tested in the seccomp library's unit tests, in
//! a child process: no guest can make the VMM call what its lists forbid.)
//!
//! They need `/dev/kvm`; where it is missing they fail with that reason, unless
//! `VMKIT_SKIP_KVM_TESTS=1` asks to skip them.

// Test helpers outside #[test] functions unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses part of the shared helpers
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{kvm_available, run_with_limit};
use vmkit_boot::elf::ElfBuilder;
use vmkit_memory::vm_memory::GuestAddress;

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");
const LIMIT: Duration = Duration::from_secs(60);
const VMM_ERROR: i32 = 125;
const SIGTERM: i32 = 143;

/// `cli; hlt; jmp hlt`: a guest that never ends on its own.
const SPIN_HLT: &[u8] = &[0xFA, 0xF4, 0xEB, 0xFD];

/// A PVH ELF running `SPIN_HLT`, written to a file of its own.
struct Guest(PathBuf);

impl Guest {
    fn new(name: &str) -> Self {
        let load = GuestAddress(0x10_0000);
        let elf = ElfBuilder::new()
            .segment(load, SPIN_HLT, 0x1000)
            .pvh_entry(load)
            .build();
        let path =
            std::env::temp_dir().join(format!("vmkit-seccomp-{}-{name}.elf", std::process::id()));
        std::fs::write(&path, elf).unwrap();
        Self(path)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The seccomp state of one thread, from `/proc/<pid>/task/<tid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadState {
    /// `Seccomp`: 0 none, 2 filter.
    mode: u32,
    /// `Seccomp_filters`: how many filters are stacked on the thread.
    filters: u32,
    /// `NoNewPrivs`.
    no_new_privs: u32,
}

/// Every thread of `pid` by name (`comm`), with its seccomp state.
fn threads(pid: u32) -> BTreeMap<String, ThreadState> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(u32::MAX)
        };
        out.insert(
            comm.trim().to_string(),
            ThreadState {
                mode: field("Seccomp:"),
                filters: field("Seccomp_filters:"),
                no_new_privs: field("NoNewPrivs:"),
            },
        );
    }
    out
}

/// The VMM on a guest that never ends, with two vCPUs, the serial console on stdin and stdout
/// (so every kind of thread runs: main, vCPUs, signals, serial output, stdin) and `extra`.
fn spawn_spinning(guest: &Guest, extra: &[&str]) -> Child {
    Command::new(VMM)
        .args(["--kernel", guest.0.to_str().unwrap(), "--cpus", "boot=2"])
        .args(["--serial", "tty", "--timeout", "60"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The thread names of a VMM with two vCPUs and a serial console.
const THREADS: [&str; 6] = [
    "reference-vmm",
    "serial-out",
    "signals",
    "stdin",
    "vcpu0",
    "vcpu1",
];

/// Waits until `pid` has all of [`THREADS`] and `done` holds for their states (or the limit
/// passes); returns what it saw last.
fn wait_for_threads(
    pid: u32,
    done: impl Fn(&BTreeMap<String, ThreadState>) -> bool,
) -> BTreeMap<String, ThreadState> {
    let start = Instant::now();
    loop {
        let seen = threads(pid);
        let all_there = THREADS.iter().all(|name| seen.contains_key(*name));
        if (all_there && done(&seen)) || start.elapsed() > LIMIT {
            return seen;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the VMM with SIGTERM; returns its status.
fn terminate(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on the child's PID, which is ours to signal until we wait for it.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("the VMM did not stop on SIGTERM");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn by_default_every_thread_runs_under_one_filter_of_its_own() {
    if !kvm_available() {
        return;
    }
    let guest = Guest::new("default");
    let child = spawn_spinning(&guest, &[]);
    let confined = |s: &ThreadState| s.mode == 2 && s.no_new_privs == 1;
    let seen = wait_for_threads(child.id(), |seen| seen.values().all(confined));
    let status = terminate(child);
    for name in THREADS {
        let state = seen.get(name);
        assert!(state.is_some_and(confined), "{name}: {state:?} in {seen:?}");
        // One filter each: every thread installed its own list, none inherited the main list.
        assert_eq!(state.map(|s| s.filters), Some(1), "{name}: {seen:?}");
    }
    // A VM stopped by a signal under the filters ends as it does without them.
    assert_eq!(status, Some(SIGTERM));
}

#[test]
fn seccomp_false_installs_no_filter() {
    if !kvm_available() {
        return;
    }
    let guest = Guest::new("false");
    let child = spawn_spinning(&guest, &["--seccomp", "false"]);
    // With `false` nothing ever changes a thread's mode: all threads running is enough.
    let seen = wait_for_threads(child.id(), |_| true);
    assert_eq!(terminate(child), Some(SIGTERM));
    for name in THREADS {
        let state = seen.get(name);
        assert_eq!(state.map(|s| s.mode), Some(0), "{name}: {seen:?}");
    }
}

/// The default guest, which prints its banner and powers off, with `--seccomp mode`.
fn hello_with(mode: &str) -> common::Finished {
    run_with_limit(
        Command::new(VMM).args(["--seccomp", mode, "--serial", "tty"]),
        LIMIT,
        "the reference VMM binary",
    )
}

#[test]
fn seccomp_false_and_log_let_the_vm_run() {
    if !kvm_available() {
        return;
    }
    for mode in ["false", "log", "true"] {
        let run = hello_with(mode);
        assert_eq!(run.status, Some(0), "--seccomp {mode}: {}", run.stderr);
        assert!(run.stdout.contains("vmkit hello"), "--seccomp {mode}");
    }
}

#[test]
fn an_unknown_mode_is_one_line_and_status_125() {
    let run = run_with_limit(
        Command::new(VMM).args(["--seccomp", "on"]),
        LIMIT,
        "the reference VMM binary",
    );
    assert_eq!(run.status, Some(VMM_ERROR));
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("expected true, false or log"),
        "{}",
        run.stderr
    );
}
