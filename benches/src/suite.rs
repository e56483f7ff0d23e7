//! The three benchmarks, each returning its rows of the table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmkit_vcpu::KvmHypervisor;

use crate::BenchError;
use crate::exit_path::{ConfinedFullPath, FullPath, RawPath};
use crate::guest::{ExitKind, exit_loop, first_out_elf, idle_elf};
use crate::process::Vmm;
use crate::summary::{Row, Unit};

/// The full path may cost at most this much more per exit than raw KVM.
pub const EXIT_RATIO_TARGET: f64 = 1.05;
/// Process start to the first exit, at most.
pub const STARTUP_TARGET_MS: f64 = 5.0;
/// The VMM's own resident memory for a 1-vCPU, 128 MiB guest, at most.
pub const MEMORY_TARGET_MIB: f64 = 5.0;
/// The guest RAM of the memory benchmark.
pub const MEMORY_GUEST_MIB: u64 = 128;
/// The guest RAM of the start-up benchmark (the VMM's default).
pub const STARTUP_MEMORY: &str = "size=512M";
/// How long the idle VMM runs before its memory is read: long enough for the vCPU thread to
/// have entered the guest and halted.
const MEMORY_SETTLE: Duration = Duration::from_millis(300);

/// How many runs of how much work each benchmark does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Exits per timed run of an exit loop.
    pub exits_per_run: u32,
    /// Timed runs of each exit path (interleaved).
    pub exit_runs: usize,
    /// VMM starts timed.
    pub startup_runs: usize,
    /// VMM processes measured for memory.
    pub memory_runs: usize,
}

impl Sizes {
    /// The sizes the reported figures use.
    pub const FULL: Self = Self {
        exits_per_run: 20_000,
        exit_runs: 9,
        startup_runs: 21,
        memory_runs: 5,
    };
    /// A quick pass that checks everything runs.
    pub const QUICK: Self = Self {
        exits_per_run: 1_000,
        exit_runs: 3,
        startup_runs: 3,
        memory_runs: 1,
    };
}

fn micros_per_exit(run: Duration, exits: u32) -> f64 {
    run.as_secs_f64() * 1e6 / f64::from(exits.max(1))
}

/// Exit round trips of `kind` through vmkit's full path (with seccomp off, and on a thread
/// confined by the reference VMM's vCPU list) and through raw KVM, `runs` interleaved runs of
/// `exits` exits each (after one warm-up run of each): per-exit medians and the medians of the
/// per-run ratios full / raw, seccomp off and on.
pub fn exit_round_trips(
    kvm: &KvmHypervisor,
    kind: ExitKind,
    exits: u32,
    runs: usize,
) -> Result<Vec<Row>, BenchError> {
    let mut full = FullPath::new(kvm)?;
    let mut raw = RawPath::new()?;
    let code = exit_loop(kind, exits);
    let mut confined = ConfinedFullPath::start(FullPath::new(kvm)?, &code)?;
    full.run(&code)?;
    raw.run(&code)?;
    confined.run()?;
    let (mut full_us, mut confined_us, mut raw_us) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ratios, mut confined_ratios) = (Vec::new(), Vec::new());
    for run in 0..runs {
        // Rotate which path goes first, so that none always inherits another's caches.
        let (mut times, mut raw_exits) = ([Duration::ZERO; 3], 0);
        for path in 0..3 {
            match (run + path) % 3 {
                0 => times[0] = full.run(&code)?,
                1 => times[1] = confined.run()?,
                _ => (times[2], raw_exits) = raw.run(&code)?,
            }
        }
        let [full_time, confined_time, raw_time] = times;
        if raw_exits != u64::from(exits.max(1)) {
            return Err(BenchError::Guest(format!(
                "the raw loop saw {raw_exits} exits, not {exits}"
            )));
        }
        full_us.push(micros_per_exit(full_time, exits));
        confined_us.push(micros_per_exit(confined_time, exits));
        raw_us.push(micros_per_exit(raw_time, exits));
        ratios.push(full_time.as_secs_f64() / raw_time.as_secs_f64());
        confined_ratios.push(confined_time.as_secs_f64() / raw_time.as_secs_f64());
    }
    let name = kind.name();
    let mut table = rows(
        &format!("{runs} runs × {exits} exits"),
        Unit::Micros,
        [
            (&format!("{name} exit: vmkit full path"), full_us, None),
            (
                &format!("{name} exit: full path, seccomp on"),
                confined_us,
                None,
            ),
            (&format!("{name} exit: raw kvm-ioctls"), raw_us, None),
        ],
    )?;
    let target = (kind == ExitKind::PortWrite).then_some(EXIT_RATIO_TARGET);
    table.extend(rows(
        &format!("{runs} run pairs"),
        Unit::Ratio,
        [
            (&format!("{name} exit: full / raw"), ratios, target),
            (
                &format!("{name} exit: full, seccomp on / raw"),
                confined_ratios,
                target,
            ),
        ],
    )?);
    Ok(table)
}

/// One row per `(name, samples, target)`, all over the same `n` runs and in `unit`.
fn rows<const N: usize>(
    n: &str,
    unit: Unit,
    specs: [(&str, Vec<f64>, Option<f64>); N],
) -> Result<Vec<Row>, BenchError> {
    specs
        .into_iter()
        .map(|(name, samples, target)| {
            Row::of_samples(name, n, &samples, unit, target)
                .ok_or_else(|| BenchError::Guest(format!("{name}: no runs")))
        })
        .collect()
}

/// A guest image in the temporary directory, removed when dropped.
struct TempImage(PathBuf);

impl TempImage {
    fn new(name: &str, bytes: &[u8]) -> Result<Self, BenchError> {
        let path =
            std::env::temp_dir().join(format!("vmkit-bench-{}-{name}.elf", std::process::id()));
        std::fs::write(&path, bytes).map_err(|source| BenchError::WriteImage {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Process start → first `KVM_EXIT_IO`: `runs` starts of the VMM on a guest whose first
/// instruction is an `out` (after one warm-up start).
pub fn startup(vmm: &Vmm, runs: usize) -> Result<Vec<Row>, BenchError> {
    let image = TempImage::new("first-out", &first_out_elf())?;
    vmm.startup(&image.0, STARTUP_MEMORY)?;
    let mut starts = Vec::with_capacity(runs);
    for _ in 0..runs {
        starts.push(vmm.startup(&image.0, STARTUP_MEMORY)?);
    }
    let ms = |f: fn(&crate::process::Startup) -> Duration| -> Vec<f64> {
        starts.iter().map(|s| f(s).as_secs_f64() * 1e3).collect()
    };
    rows(
        &format!("{runs} starts"),
        Unit::Millis,
        [
            (
                "spawn → first KVM_EXIT_IO",
                ms(|s| s.to_first_exit),
                Some(STARTUP_TARGET_MS),
            ),
            (
                "  spawn → main (fork, exec, loader)",
                ms(|s| s.to_main),
                None,
            ),
            (
                "  main → first exit (VMM + VM set-up)",
                ms(|s| s.main_to_first_exit),
                None,
            ),
        ],
    )
}

/// The VMM's memory beside the guest's: `runs` idle 1-vCPU, 128 MiB VMs.
pub fn memory_overhead(vmm: &Vmm, runs: usize) -> Result<Vec<Row>, BenchError> {
    let image = TempImage::new("idle", &idle_elf())?;
    let mut uses = Vec::with_capacity(runs);
    for _ in 0..runs {
        uses.push(vmm.memory_use(&image.0, MEMORY_GUEST_MIB, MEMORY_SETTLE)?);
    }
    let mib = |f: fn(&crate::process::MemoryUse) -> u64| -> Vec<f64> {
        uses.iter().map(|u| f(u) as f64 / 1024.0).collect()
    };
    rows(
        &format!("{runs} VMs"),
        Unit::Mebibytes,
        [
            (
                "VMM memory: VmRSS − guest RSS",
                mib(|u| u.overhead_kib()),
                Some(MEMORY_TARGET_MIB),
            ),
            (
                "  of which file-backed (RssFile)",
                mib(|u| u.file_rss_kib),
                None,
            ),
            ("  guest RSS (not counted)", mib(|u| u.guest_rss_kib), None),
        ],
    )
}

/// The reference VMM binary: `VMKIT_VMM` if set; else `<target>/release/reference-vmm` of the
/// running benchmark's target directory, first built (or found up to date) with
/// `cargo build --release -p reference-vmm` when the benchmark runs under cargo (which sets
/// `CARGO` and releases its build lock while benchmarks run).
pub fn reference_vmm() -> Result<Vmm, BenchError> {
    if let Some(path) = std::env::var_os("VMKIT_VMM") {
        return Ok(Vmm::new(path));
    }
    let exe = std::env::current_exe().map_err(|source| BenchError::Proc {
        path: "/proc/self/exe".into(),
        source,
    })?;
    // The benchmark runs from `<target>/<profile>/deps/`.
    let target_dir = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| BenchError::NoVmm(exe.display().to_string()))?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "reference-vmm"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .map_err(BenchError::Wait)?;
        if !status.success() {
            return Err(BenchError::Output(format!(
                "`cargo build --release -p reference-vmm` failed ({status})"
            )));
        }
    }
    vmm_in(target_dir)
}

/// `reference-vmm` in the release directory of `target_dir`.
fn vmm_in(target_dir: &Path) -> Result<Vmm, BenchError> {
    let path = target_dir.join("release").join("reference-vmm");
    if path.is_file() {
        Ok(Vmm::new(path))
    } else {
        Err(BenchError::NoVmm(path.display().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_comparison_rows() {
        let Some(kvm) = crate::kvm_available() else {
            return;
        };
        let rows = exit_round_trips(&kvm, ExitKind::PortWrite, 10, 2).unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows[0].name.contains("full path"));
        assert!(rows[1].name.contains("seccomp on") && rows[2].name.contains("raw"));
        assert!(rows[3].name.contains("full / raw") && rows[4].name.contains("seccomp on / raw"));
        assert_eq!(rows[3].target, Some(EXIT_RATIO_TARGET));
        assert_eq!(rows[4].target, Some(EXIT_RATIO_TARGET));
        assert!(rows.iter().all(|r| r.median > 0.0));
        let mmio = exit_round_trips(&kvm, ExitKind::MmioWrite, 10, 1).unwrap();
        assert_eq!((mmio[3].target, mmio[4].target), (None, None));
    }

    #[test]
    fn rows_need_samples() {
        let table = rows("2 runs", Unit::Millis, [("a", vec![1.0, 3.0], Some(5.0))]).unwrap();
        assert_eq!((table[0].median, table[0].target), (2.0, Some(5.0)));
        let err = rows("0 runs", Unit::Millis, [("b", vec![], None)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the guest did not run as the benchmark expects: b: no runs"
        );
    }

    #[test]
    fn per_exit_time_and_sizes() {
        assert_eq!(micros_per_exit(Duration::from_millis(10), 1000), 10.0);
        assert_eq!(micros_per_exit(Duration::from_millis(1), 0), 1000.0);
    }

    #[test]
    fn temp_images_are_removed() {
        let image = TempImage::new("test", b"bytes").unwrap();
        let path = image.0.clone();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        drop(image);
        assert!(!path.exists());
    }

    #[test]
    fn vmm_is_looked_for_in_the_release_directory() {
        let err = vmm_in(Path::new("/nonexistent/target")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/target/release/reference-vmm"),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("vmkit-bench-target-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("release")).unwrap();
        std::fs::write(dir.join("release/reference-vmm"), b"").unwrap();
        let vmm = vmm_in(&dir).unwrap();
        assert_eq!(vmm.path(), dir.join("release/reference-vmm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
