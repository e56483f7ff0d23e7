//! The Linux guest of the Linux boot tests: Debian's kernel and busybox as
//! `scripts/fetch-linux.sh` unpacks them under `target/debian/root/`, the vmlinux inside the
//! bzImage, newc initramfs archives, and a runner that stops the reference VMM as soon as the
//! guest printed the line a test waits for.

// Test helpers unwrap: a failure is the test failing.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

const VMM: &str = env!("CARGO_BIN_EXE_reference-vmm");

/// What to run when the fetched guest is missing.
const FETCH: &str = "run scripts/fetch-linux.sh (scripts/setup.sh does)";

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where `scripts/fetch-linux.sh` puts the downloaded packages and what it derives from them.
fn debian_dir() -> PathBuf {
    workspace_root().join("target/debian")
}

/// The unpacked packages' file tree.
fn debian_root() -> PathBuf {
    debian_dir().join("root")
}

/// Debian's kernel as a bzImage (`boot/vmlinuz-*`); fails naming `scripts/fetch-linux.sh` when it
/// was not fetched.
pub fn bzimage() -> PathBuf {
    let boot = debian_root().join("boot");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&boot)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|name| name.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels
        .pop()
        .unwrap_or_else(|| panic!("no vmlinuz-* in {}: {FETCH}", boot.display()))
}

/// Debian's static busybox; fails naming `scripts/fetch-linux.sh` when it was not fetched.
pub fn busybox() -> PathBuf {
    let path = debian_root().join("bin/busybox");
    assert!(path.is_file(), "no {}: {FETCH}", path.display());
    path
}

/// The vmlinux (an ELF with a PVH entry note) inside [`bzimage`], extracted once and cached under
/// `target/debian/cache/`, keyed by the bzImage's size and modification time.
pub fn vmlinux() -> PathBuf {
    static EXTRACTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = EXTRACTING.lock().unwrap_or_else(|e| e.into_inner());
    let bzimage = bzimage();
    let meta = std::fs::metadata(&bzimage).unwrap();
    let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
    let cache = debian_dir().join("cache");
    let path = cache.join(format!("vmlinux-{}-{}", meta.len(), mtime.as_secs()));
    if path.is_file() {
        return path;
    }
    let vmlinux = extract_vmlinux(&std::fs::read(&bzimage).unwrap());
    std::fs::create_dir_all(&cache).unwrap();
    // Another test process may extract the same kernel: write aside, then rename into place.
    let partial = cache.join(format!(".vmlinux-{}", std::process::id()));
    std::fs::write(&partial, &vmlinux).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// How a bzImage's payload is compressed, known by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `1f 8b`.
    Gzip,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `28 b5 2f fd`.
    Zstd,
    /// `02 21 4c 18` (LZ4's legacy frame).
    Lz4,
}

impl Compression {
    /// The format whose magic `payload` starts with.
    pub fn of(payload: &[u8]) -> Option<Self> {
        let magics: [(&[u8], Compression); 4] = [
            (&[0x1f, 0x8b], Compression::Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            // The legacy frame format the kernel's `lz4 -l` writes.
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
        ];
        magics
            .into_iter()
            .find(|(magic, _)| payload.starts_with(magic))
            .map(|(_, format)| format)
    }

    /// The decompressing command (reading stdin, writing stdout) and its Debian package.
    fn command(self) -> (&'static str, &'static [&'static str], &'static str) {
        match self {
            Compression::Gzip => ("gzip", &["-dc"], "gzip"),
            Compression::Xz => ("xz", &["-dc", "--single-stream"], "xz-utils"),
            Compression::Zstd => ("zstd", &["-dc"], "zstd"),
            Compression::Lz4 => ("lz4", &["-dc"], "lz4"),
        }
    }
}

/// The compressed kernel of a bzImage: `(setup_sects + 1) * 512` bytes of real-mode setup, then
/// the protected-mode part, in which the setup header's `payload_offset` (0x248) and
/// `payload_length` (0x24C) locate the payload. Its last four bytes are the decompressed size.
pub fn bzimage_payload(bzimage: &[u8]) -> &[u8] {
    let le32 = |at: usize| u32::from_le_bytes(bzimage[at..at + 4].try_into().unwrap()) as usize;
    assert!(bzimage.len() > 0x250, "too short for a bzImage");
    assert_eq!(&bzimage[0x202..0x206], b"HdrS", "no setup header");
    let setup_sects = match bzimage[0x1F1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(0x248);
    let end = start + le32(0x24C);
    assert!(end <= bzimage.len(), "payload past the end of the bzImage");
    &bzimage[start..end]
}

/// Decompresses a bzImage's payload: the kernel's ELF (`vmlinux`, stripped, with its relocations
/// appended) with its PVH entry note.
pub fn extract_vmlinux(bzimage: &[u8]) -> Vec<u8> {
    let payload = bzimage_payload(bzimage);
    let format = Compression::of(payload).unwrap_or_else(|| {
        panic!(
            "unknown payload compression (magic {:02x?})",
            &payload[..payload.len().min(6)]
        )
    });
    let (data, size) = payload.split_at(payload.len() - 4);
    let size = u32::from_le_bytes(size.try_into().unwrap()) as usize;
    let (program, args, package) = format.command();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): install Debian's {package}"));
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = thread::spawn(move || stdin.write_all(&data));
    let mut vmlinux = Vec::with_capacity(size);
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut vmlinux)
        .unwrap();
    let status = child.wait().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(status.success(), "{program} failed: {status}");
    assert_eq!(vmlinux.len(), size, "decompressed size");
    assert!(vmlinux.starts_with(b"\x7fELF"), "the payload is not an ELF");
    vmlinux
}

/// A newc (`070701`) cpio archive, the format the kernel unpacks an initramfs from.
pub struct Cpio {
    bytes: Vec<u8>,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Cpio {
            bytes: Vec::new(),
            next_inode: 1,
        }
    }

    /// A directory `name` (a path without a leading `/`).
    pub fn dir(self, name: &str, mode: u32) -> Self {
        self.entry(name, S_IFDIR | mode, (0, 0), b"")
    }

    /// A regular file `name` holding `data`.
    pub fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.entry(name, S_IFREG | mode, (0, 0), data)
    }

    /// A symbolic link `name` to `target`.
    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node `name` with device number `major:minor`.
    pub fn char_device(self, name: &str, mode: u32, major: u32, minor: u32) -> Self {
        self.entry(name, S_IFCHR | mode, (major, minor), b"")
    }

    /// The archive, closed by its trailer.
    pub fn finish(self) -> Vec<u8> {
        let mut this = self;
        this.next_inode = 0;
        this.entry("TRAILER!!!", 0, (0, 0), b"").bytes
    }

    fn entry(
        mut self,
        name: &str,
        mode: u32,
        (rdev_major, rdev_minor): (u32, u32),
        data: &[u8],
    ) -> Self {
        let is_dir = mode & 0o170_000 == S_IFDIR;
        let fields = [
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            if is_dir { 2 } else { 1 },
            0, // mtime
            u32::try_from(data.len()).unwrap(),
            0, // device major
            0, // device minor
            rdev_major,
            rdev_minor,
            u32::try_from(name.len() + 1).unwrap(),
            0, // check
        ];
        if self.next_inode != 0 {
            self.next_inode += 1;
        }
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// A small initramfs: one directory and one file.
pub fn small_initramfs() -> Vec<u8> {
    Cpio::new()
        .dir("etc", 0o755)
        .file(
            "etc/vmkit",
            0o644,
            b"an initramfs for the reference VMM's Linux tests\n",
        )
        .finish()
}

/// An initramfs that boots to `init` (a shell script run by busybox's `sh`): `bin/busybox`,
/// `bin/sh`, `dev/console`, and empty `proc`, `sys` and `tmp`.
pub fn busybox_initramfs(busybox: &[u8], init: &str) -> Vec<u8> {
    Cpio::new()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, busybox)
        .symlink("bin/sh", "busybox")
        .dir("dev", 0o755)
        .char_device("dev/console", 0o600, 5, 1)
        .dir("proc", 0o755)
        .dir("sys", 0o755)
        .dir("tmp", 0o1777)
        .file("init", 0o755, init.as_bytes())
        .finish()
}

/// An `/init` for [`busybox_initramfs`] that prints `marker` on the console and powers the
/// machine off.
pub fn init_script(marker: &str) -> String {
    format!("#!/bin/sh\necho '{marker}'\n/bin/busybox poweroff -f\n")
}

/// A directory under the system's temporary directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `name` and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmkit-linux-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `bytes` to the file `name` in the directory; returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a run of the VMM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The wanted line appeared; the runner sent SIGTERM and the VMM exited with this status
    /// (or its own, when the guest stopped it at the same time).
    Stopped(Option<i32>),
    /// The VMM exited by itself (the guest stopped, its `--timeout`, an error) with this status
    /// before the wanted line was complete.
    Exited(Option<i32>),
    /// The VMM outlived its own `--timeout` by the runner's grace period and was killed.
    Killed,
}

/// What a run of the VMM printed and how it ended.
#[derive(Debug)]
pub struct VmmRun {
    /// The guest's serial output, carriage returns removed.
    pub serial: String,
    /// The VMM's stderr.
    pub stderr: String,
    /// How the VMM ended.
    pub ending: Ending,
    /// Wall time from spawning the VMM to the wanted text, if it appeared (the runner polls every
    /// 20 ms).
    pub reached_after: Option<Duration>,
}

impl VmmRun {
    /// The first serial line containing `needle`.
    pub fn line(&self, needle: &str) -> Option<&str> {
        self.serial.lines().find(|line| line.contains(needle))
    }

    /// Every serial line containing `needle`.
    pub fn lines(&self, needle: &str) -> Vec<&str> {
        self.serial
            .lines()
            .filter(|line| line.contains(needle))
            .collect()
    }

    /// The run, for a failure message: how it ended, the VMM's stderr and the serial log's end.
    pub fn describe(&self) -> String {
        let lines: Vec<&str> = self.serial.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!(
            "ending: {:?}\nVMM stderr:\n{}\nserial (last 40 lines):\n{tail}",
            self.ending, self.stderr
        )
    }
}

/// How long the runner waits past the VMM's own `--timeout` before killing it.
const GRACE: Duration = Duration::from_secs(30);

/// Runs the reference VMM with `args` plus `--serial file=<scratch file>` and `--timeout
/// <timeout>` (and `VMKIT_LOG=info`), watches the serial output, and ends the VMM with SIGTERM
/// as soon as a complete line containing `stop_at` appeared.
pub fn run_until<I, S>(args: I, stop_at: &str, timeout: Duration) -> VmmRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(args, Some(stop_at), timeout)
}

/// Runs the reference VMM like [`run_until`], but until it exits by itself (or its
/// `--timeout`); `reached_after` is the time to the exit.
pub fn run_to_exit<I, S>(args: I, timeout: Duration) -> VmmRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(args, None, timeout)
}

fn run<I, S>(args: I, stop_at: Option<&str>, timeout: Duration) -> VmmRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let scratch = Scratch::new(&format!("serial-{}", unique()));
    let serial_path = scratch.0.join("serial.log");
    File::create(&serial_path).unwrap();
    let mut serial_arg = std::ffi::OsString::from("file=");
    serial_arg.push(&serial_path);
    let start = Instant::now();
    let mut child = Command::new(VMM)
        .args(args)
        .arg("--serial")
        .arg(&serial_arg)
        .arg("--timeout")
        .arg(timeout.as_secs_f64().to_string())
        // What the VMM placed where (the initramfs, for one), on stderr.
        .env("VMKIT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut serial_file = File::open(&serial_path).unwrap();
    let mut serial = Vec::new();
    let needle = stop_at.map(str::as_bytes);
    let found = |serial: &[u8]| needle.is_some_and(|needle| find(serial, needle).is_some());
    let mut reached_after = None;
    let ending = loop {
        serial_file.read_to_end(&mut serial).unwrap();
        if reached_after.is_none() && found(&serial) {
            reached_after = Some(start.elapsed());
        }
        if needle.is_some_and(|needle| has_complete_line(&serial, needle)) {
            break Ending::Stopped(terminate(&mut child));
        }
        if let Some(status) = child.try_wait().unwrap() {
            // Whatever it wrote before it ended: a guest that stops the VM right after the
            // wanted text may not have finished its line.
            serial_file.read_to_end(&mut serial).unwrap();
            if reached_after.is_none() && (found(&serial) || needle.is_none()) {
                reached_after = Some(start.elapsed());
            }
            break Ending::Exited(status.code());
        }
        if start.elapsed() > timeout + GRACE {
            let _ = child.kill();
            let _ = child.wait();
            break Ending::Killed;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let run = VmmRun {
        serial: String::from_utf8_lossy(&serial).replace('\r', ""),
        stderr: stderr.join().unwrap(),
        ending,
        reached_after,
    };
    let what = stop_at.unwrap_or("the VMM's exit");
    match run.reached_after {
        Some(after) => eprintln!("{what:?} after {:.1} s", after.as_secs_f64()),
        None => eprintln!("{what:?} not reached: {:?}", run.ending),
    }
    run
}

/// Where `needle` first occurs in `text`.
fn find(text: &[u8], needle: &[u8]) -> Option<usize> {
    text.windows(needle.len())
        .position(|window| window == needle)
}

/// Whether `text` holds `needle` and the end of the line it is on.
fn has_complete_line(text: &[u8], needle: &[u8]) -> bool {
    find(text, needle).is_some_and(|at| text[at..].contains(&b'\n'))
}

/// SIGTERM, then SIGKILL if the VMM has not exited after a few seconds; its exit status.
fn terminate(child: &mut Child) -> Option<i32> {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) only sends a signal; `pid` is our child, not yet reaped (so not reused).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().unwrap().code()
}

/// A number distinct for each call in this process.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One entry of the memory map the kernel prints (`BIOS-e820: [mem 0xSTART-0xLAST] TYPE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E820Line {
    /// The entry's first byte.
    pub start: u64,
    /// The entry's last byte.
    pub last: u64,
    /// `usable`, `reserved`, `ACPI data`, `ACPI NVS`, ...
    pub kind: String,
}

/// The `BIOS-e820:` lines of a kernel log, in order.
pub fn e820_lines(serial: &str) -> Vec<E820Line> {
    serial
        .lines()
        .filter_map(|line| {
            let rest = line.split_once("BIOS-e820: [mem ")?.1;
            let (range, kind) = rest.split_once("] ")?;
            let (start, last) = range.split_once('-')?;
            Some(E820Line {
                start: hex(start)?,
                last: hex(last)?,
                kind: kind.trim().to_string(),
            })
        })
        .collect()
}

/// The first `[mem 0xSTART-0xLAST]` range of `line`.
pub fn mem_range(line: &str) -> Option<(u64, u64)> {
    let rest = line.split_once("[mem ")?.1;
    let (range, _) = rest.split_once(']')?;
    let (start, last) = range.split_once('-')?;
    Some((hex(start)?, hex(last)?))
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().strip_prefix("0x")?, 16).ok()
}
