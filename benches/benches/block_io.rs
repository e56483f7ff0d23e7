//! Block reads seen by a guest: the `blk` guest's 4 KiB sequential and random reads under the
//! reference VMM and under QEMU (same guest, same image, one run), their ratio, and the host's
//! `pread` of the same blocks; prints one table. See the crate's README. `VMKIT_BENCH_QUICK=1`
//! runs a short pass; `VMKIT_VMM=<path>` names the reference VMM, `VMKIT_BLK_GUEST=<path>` the
//! guest.

use std::path::Path;
use std::process::ExitCode;

use vmkit_benches::block;
use vmkit_benches::suite;
use vmkit_benches::summary::Table;

/// Reads per run and runs (interleaved) of each pattern: full and quick.
const FULL: (u64, usize) = (5_000, 5);
const QUICK: (u64, usize) = (200, 1);

fn main() -> ExitCode {
    let quick = std::env::var_os("VMKIT_BENCH_QUICK").is_some_and(|v| v == "1");
    let (reads, runs) = if quick { QUICK } else { FULL };
    let rows = suite::reference_vmm().and_then(|vmm| {
        eprintln!("reference VMM: {}", vmm.path().display());
        block::block_reads(&vmm, Path::new(block::QEMU), reads, runs)
    });
    match rows {
        Ok(rows) => {
            let table = Table { rows };
            println!("{table}");
            if !table.all_targets_met() {
                println!("some targets were missed (marked MISSED)");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("block reads: {e}");
            ExitCode::FAILURE
        }
    }
}
