//! `--record-exits`: the recording of every exit, its answer and what the devices did, in
//! vmkit-exits' recording format. The recorder is created with the file, before anything boots;
//! the VMM then hands it to the dispatcher and wraps the devices' interrupt lines, MSI sender,
//! wall clock, disks and virtio-blk's guest memory in its decorators. Without `--record-exits`
//! none of them is in the way.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use vmkit_devices::cmos::{CmosRtc, RecordingClock, SystemClock};
use vmkit_devices::{DiskBackend, DiskImage, RecordingDisk};
use vmkit_exits::record::{Record, RecordStats, RecordWriter};
use vmkit_exits::{InterruptTrigger, MsiTrigger, PioDevice, RecordingLine, RecordingMsi};

/// An interrupt line as the devices get it: the backend's, or the backend's recorded.
pub type Line = Arc<dyn InterruptTrigger>;

/// The recording of this run, and where it goes.
#[derive(Debug)]
pub struct Recording {
    writer: Arc<RecordWriter>,
    path: PathBuf,
}

/// What the recording says about the VM, for whoever replays it.
pub struct Facts<'a> {
    /// The guest, as the VMM names it.
    pub guest: &'a str,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Whether COM1 exists (`--serial` other than `off`).
    pub com1: bool,
    /// Whether `--testdev` added pc-testdev.
    pub testdev: bool,
    /// The disks, `vda` first.
    pub disks: Vec<DiskFacts>,
}

/// What a replay needs to build a disk as the guest saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskFacts {
    /// Size in bytes.
    pub size: u64,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// The device ID `GET_ID` returns (zero-padded).
    pub serial: [u8; vmkit_devices::virtio::block::SERIAL_LEN],
}

impl DiskFacts {
    /// The facts of `disk`.
    pub fn of(disk: &impl DiskBackend) -> Self {
        Self {
            size: disk.size(),
            read_only: disk.read_only(),
            serial: disk.serial(),
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

impl Recording {
    /// Creates (or truncates) `path` for a recording of at most `limit` bytes and writes the
    /// facts of the VM first. The file must be a regular file or a character device (such as
    /// `/dev/null`); a FIFO with no reader is refused rather than waited for.
    pub fn create(path: &Path, limit: u64, facts: &Facts<'_>) -> Result<Self> {
        let file = create_output(path)
            .with_context(|| format!("--record-exits: cannot create {}", path.display()))?;
        let writer = Arc::new(RecordWriter::new(file, limit));
        let mut meta = vec![
            (
                "vmm",
                format!("reference-vmm {}", env!("CARGO_PKG_VERSION")),
            ),
            ("guest", facts.guest.to_string()),
            ("memory", facts.memory.to_string()),
            ("vcpus", facts.vcpus.to_string()),
            ("cmdline", facts.cmdline.to_string()),
            ("com1", on_off(facts.com1).to_string()),
            ("testdev", on_off(facts.testdev).to_string()),
        ];
        for (i, disk) in facts.disks.iter().enumerate() {
            let serial = disk.serial.iter().take_while(|&&b| b != 0).copied();
            let serial: String = serial.map(char::from).collect();
            meta.push((
                "disk",
                format!(
                    "{i} size={} readonly={} serial={serial}",
                    disk.size,
                    on_off(disk.read_only)
                ),
            ));
        }
        for (key, value) in meta {
            writer.write(&Record::Meta {
                key: key.to_string(),
                value,
            });
        }
        Ok(Self {
            writer,
            path: path.to_path_buf(),
        })
    }

    /// The writer the dispatcher records to.
    pub fn writer(&self) -> &Arc<RecordWriter> {
        &self.writer
    }

    /// Writes what is left and closes the file (on the calling thread); the summary line.
    pub fn finish(&self) -> String {
        let stats: RecordStats = self.writer.finish();
        format!(
            "recorded {} exits to {}: {stats}",
            self.writer.exits(),
            self.path.display()
        )
    }
}

/// `line`, recorded as GSI `gsi` when there is a recording.
pub fn line(
    line: impl InterruptTrigger + 'static,
    gsi: u32,
    recording: Option<&Recording>,
) -> Line {
    match recording {
        Some(r) => Arc::new(RecordingLine::new(line, gsi, r.writer.clone())),
        None => Arc::new(line),
    }
}

/// `msi`, recorded when there is a recording.
pub fn msi(msi: impl MsiTrigger + 'static, recording: Option<&Recording>) -> Arc<dyn MsiTrigger> {
    match recording {
        Some(r) => Arc::new(RecordingMsi::new(msi, r.writer.clone())),
        None => Arc::new(msi),
    }
}

/// The CMOS RTC on the host clock, its readings recorded when there is a recording.
pub fn cmos(low_ram: u64, high_ram: u64, recording: Option<&Recording>) -> Arc<dyn PioDevice> {
    match recording {
        Some(r) => Arc::new(CmosRtc::with_clock(
            RecordingClock::new(SystemClock, r.writer.clone()),
            low_ram,
            high_ram,
        )),
        None => Arc::new(CmosRtc::new(low_ram, high_ram)),
    }
}

/// Disk `index`'s backend, its calls recorded when there is a recording.
pub fn disk(image: DiskImage, index: usize, recording: Option<&Recording>) -> Box<dyn DiskBackend> {
    match recording {
        Some(r) => Box::new(RecordingDisk::new(
            image,
            u32::try_from(index).unwrap_or(u32::MAX),
            r.writer.clone(),
        )),
        None => Box::new(image),
    }
}

/// Creates or truncates `path` for writing, refusing what a recording cannot go to without
/// blocking (a FIFO, a socket, a directory).
fn create_output(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENXIO) => std::io::Error::other("a FIFO with no reader"),
            _ => e,
        })?;
    let file_type = file.metadata()?.file_type();
    if !(file_type.is_file() || std::os::unix::fs::FileTypeExt::is_char_device(&file_type)) {
        bail!(
            "it is {}, not a regular file or a character device",
            crate::files::kind(file_type)
        );
    }
    crate::files::set_blocking(&file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmkit_exits::record::RecordReader;

    fn facts() -> Facts<'static> {
        Facts {
            guest: "built-in hello guest",
            memory: 512 << 20,
            vcpus: 1,
            cmdline: "",
            com1: true,
            testdev: false,
            disks: vec![DiskFacts {
                size: 1 << 20,
                read_only: true,
                serial: *b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            }],
        }
    }

    #[test]
    fn a_recording_starts_with_the_facts_of_the_vm() {
        let path = std::env::temp_dir().join(format!("vmkit-rec-{}.vmrec", std::process::id()));
        let recording = Recording::create(&path, u64::MAX, &facts()).unwrap();
        let summary = recording.finish();
        assert!(summary.starts_with("recorded 0 exits to "), "{summary}");
        assert!(summary.contains("8 records"), "{summary}");
        let records = RecordReader::new(File::open(&path).unwrap())
            .unwrap()
            .read_all()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(records.contains(&Record::Meta {
            key: "disk".into(),
            value: "0 size=1048576 readonly=on serial=abc".into()
        }));
        assert!(matches!(&records[0], Record::Meta { key, .. } if key == "vmm"));
    }

    #[test]
    fn unusable_paths_are_refused() {
        let dir = std::env::temp_dir();
        let err = Recording::create(&dir, u64::MAX, &facts()).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--record-exits: cannot create"),
            "{err:#}"
        );
        let err = Recording::create(Path::new("/nonexistent/dir/x"), 0, &facts()).unwrap_err();
        assert!(format!("{err:#}").contains("No such file"), "{err:#}");
        // A character device takes a recording.
        let null = Recording::create(Path::new("/dev/null"), u64::MAX, &facts()).unwrap();
        null.finish();
    }
}
