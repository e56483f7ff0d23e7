//! vmkit's exit-path benchmarks; prints one table. See the crate's README for what each figure
//! means. `VMKIT_BENCH_QUICK=1` runs a short pass that only checks everything works;
//! `VMKIT_VMM=<path>` names the reference VMM binary to start.

use std::process::ExitCode;

use vmkit_benches::guest::ExitKind;
use vmkit_benches::suite::{self, Sizes};
use vmkit_benches::summary::Table;
use vmkit_vcpu::KvmHypervisor;

fn main() -> ExitCode {
    let quick = std::env::var_os("VMKIT_BENCH_QUICK").is_some_and(|v| v == "1");
    let sizes = if quick { Sizes::QUICK } else { Sizes::FULL };
    let mut table = Table::default();
    let mut failed = false;
    let mut note = |what: &str, result: Result<Vec<_>, _>| match result {
        Ok(rows) => table.rows.extend(rows),
        Err(e) => {
            eprintln!("{what}: {e}");
            failed = true;
        }
    };

    match KvmHypervisor::new() {
        Ok(kvm) => {
            for kind in [ExitKind::PortWrite, ExitKind::MmioWrite] {
                let rows =
                    suite::exit_round_trips(&kvm, kind, sizes.exits_per_run, sizes.exit_runs);
                note(kind.name(), rows);
            }
        }
        Err(e) => note("exit round trips", Err(e.into())),
    }
    match suite::reference_vmm() {
        Ok(vmm) => {
            eprintln!("reference VMM: {}", vmm.path().display());
            note("start-up", suite::startup(&vmm, sizes.startup_runs));
            note("memory", suite::memory_overhead(&vmm, sizes.memory_runs));
        }
        Err(e) => note("process benchmarks", Err(e)),
    }

    println!("{table}");
    if !table.all_targets_met() {
        println!("some targets were missed (marked MISSED)");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
